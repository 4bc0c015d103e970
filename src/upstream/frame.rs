//! The origin protocol: length-prefixed frames over TCP, many requests per connection, one
//! request in flight per connection (the client waits for the response before the next request).
//!
//! ```text
//! frame    = length:u32 (big-endian, bytes that follow, 1..=MAX_FRAME) payload
//! request  = op:u8 body          op 0x01 HELLO (body = name, UTF-8), 0x02 PING (body empty)
//! response = status:u8 message   status 0x00 OK (message = greeting or "pong"),
//!                                0x01 BAD_REQUEST, 0x02 TOO_LARGE, 0x03 SERVER_ERROR
//!                                (message says why)
//! ```
//!
//! A frame whose length is 0 or above [`MAX_FRAME`] cannot be skipped safely: the origin answers
//! with an error frame and closes the connection. A well-framed but bad request (unknown op,
//! name not UTF-8, a name longer than [`MAX_HELLO_NAME`] whose greeting would not fit one
//! frame) gets a `BAD_REQUEST` frame and the connection stays usable. `SERVER_ERROR` is the
//! origin's own failure (the request was fine): it says something about the backend, where
//! `BAD_REQUEST` and `TOO_LARGE` say something about the request.
//!
//! ```
//! use shardpool::upstream::frame::{self, Op, Response};
//! let mut wire = Vec::new();
//! frame::encode_request(Op::Hello, "Ada", &mut wire);
//! assert_eq!(wire, b"\0\0\0\x04\x01Ada");
//! let mut reply = Vec::new();
//! frame::encode_response(&Response::ok("Hello, Ada!"), &mut reply);
//! assert_eq!(frame::decode_response(&reply[4..]).unwrap(), Response::ok("Hello, Ada!"));
//! ```

use futures_lite::{AsyncRead, AsyncReadExt};
use std::io;

/// Largest payload accepted in either direction, bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// What the greeting puts before the name (see [`hello_reply`]).
const HELLO_PREFIX: &str = "Hello, ";
/// What the greeting puts after the name.
const HELLO_SUFFIX: &str = "!";

/// The longest HELLO name, in bytes, whose reply still fits one frame: the response payload is
/// the status byte plus [`hello_reply`]`(name)`, and must be at most [`MAX_FRAME`] bytes
/// (65,527 with the 64 KiB frame). The request (op byte + name) is always shorter than its reply,
/// so this is the limit of the whole exchange; the gateway refuses longer names before any
/// backend sees them, and the origin answers them `BAD_REQUEST`.
pub const MAX_HELLO_NAME: usize = MAX_FRAME - 1 - HELLO_PREFIX.len() - HELLO_SUFFIX.len();

/// The origin's reply to HELLO `name`: `"Hello, <name>!"`. The one definition of the greeting;
/// it fits one response frame exactly when `name.len() <= MAX_HELLO_NAME`.
///
/// ```
/// use shardpool::upstream::frame::hello_reply;
/// assert_eq!(hello_reply("Ada"), "Hello, Ada!");
/// ```
pub fn hello_reply(name: &str) -> String {
    let mut s = String::with_capacity(HELLO_PREFIX.len() + name.len() + HELLO_SUFFIX.len());
    s.push_str(HELLO_PREFIX);
    s.push_str(name);
    s.push_str(HELLO_SUFFIX);
    s
}

/// True if a response carrying `message` fits one frame (status byte + message ≤ [`MAX_FRAME`]).
pub fn response_fits(message: &str) -> bool {
    message.len() < MAX_FRAME
}

/// A request's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Greet the name in the body.
    Hello = 1,
    /// Health check; the body is empty and the answer is `OK "pong"`.
    Ping = 2,
}

/// A response's status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The request was well framed but invalid (unknown op, name not UTF-8).
    BadRequest = 1,
    /// The frame length was 0 or above [`MAX_FRAME`]; the connection is closed after this.
    TooLarge = 2,
    /// The origin failed on a valid request (its own fault; the connection stays usable).
    ServerError = 3,
}

/// A decoded response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub code: Code,
    /// The greeting, or what went wrong.
    pub message: String,
}

impl Response {
    /// An OK response carrying `message`.
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            code: Code::Ok,
            message: message.into(),
        }
    }

    /// An error response.
    pub fn error(code: Code, message: impl Into<String>) -> Response {
        Response {
            code,
            message: message.into(),
        }
    }
}

/// Appends a request frame for `op` with `name` as body to `out`.
///
/// Names longer than `MAX_FRAME - 1` bytes make a frame the origin refuses (`TooLarge`), and
/// HELLO names longer than [`MAX_HELLO_NAME`] get `BadRequest`; the gateway checks the length
/// first.
pub fn encode_request(op: Op, name: &str, out: &mut Vec<u8>) {
    let len = 1 + name.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(op as u8);
    out.extend_from_slice(name.as_bytes());
}

/// Appends a response frame to `out`. The caller keeps the message within one frame (see
/// [`response_fits`]); a longer one makes a frame the peer refuses.
pub fn encode_response(response: &Response, out: &mut Vec<u8>) {
    let len = 1 + response.message.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(response.code as u8);
    out.extend_from_slice(response.message.as_bytes());
}

/// Decodes a request payload (without its length prefix): the op and the name.
///
/// ```
/// use shardpool::upstream::frame::{decode_request, Op};
/// assert_eq!(decode_request(b"\x01Bob").unwrap(), (Op::Hello, "Bob"));
/// assert!(decode_request(b"\x09").is_err());
/// ```
pub fn decode_request(payload: &[u8]) -> Result<(Op, &str), String> {
    let (&op, body) = payload
        .split_first()
        .ok_or_else(|| "empty request payload".to_string())?;
    let op = match op {
        1 => Op::Hello,
        2 => Op::Ping,
        other => {
            return Err(format!(
                "unknown op 0x{other:02x} (expected 0x01 HELLO or 0x02 PING)"
            ));
        }
    };
    let name = std::str::from_utf8(body).map_err(|e| format!("name is not UTF-8: {e}"))?;
    Ok((op, name))
}

/// Decodes a response payload (without its length prefix).
pub fn decode_response(payload: &[u8]) -> io::Result<Response> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let (&code, body) = payload
        .split_first()
        .ok_or_else(|| bad("empty response payload".into()))?;
    let code = match code {
        0 => Code::Ok,
        1 => Code::BadRequest,
        2 => Code::TooLarge,
        3 => Code::ServerError,
        other => return Err(bad(format!("unknown response status 0x{other:02x}"))),
    };
    let message = std::str::from_utf8(body)
        .map_err(|e| bad(format!("response is not UTF-8: {e}")))?
        .to_string();
    Ok(Response { code, message })
}

/// What [`read_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadFrame {
    /// A frame; its payload is in the buffer.
    Frame,
    /// The peer closed the connection cleanly between frames.
    Eof,
    /// The length prefix was 0 or above [`MAX_FRAME`] (the value is given); the stream cannot be
    /// resynchronised.
    BadLength(u32),
}

/// Reads one frame's payload into `buf` (cleared first).
///
/// An end of stream inside a frame is an `UnexpectedEof` error.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<ReadFrame> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(ReadFrame::Eof);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let len = u32::from_be_bytes(len);
    if len == 0 || len as usize > MAX_FRAME {
        return Ok(ReadFrame::BadLength(len));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf).await?;
    Ok(ReadFrame::Frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let mut wire = Vec::new();
        encode_request(Op::Ping, "", &mut wire);
        encode_request(Op::Hello, "Zoë", &mut wire);
        let mut r = futures_lite::io::Cursor::new(wire);
        let mut buf = Vec::new();
        futures_lite::future::block_on(async {
            assert_eq!(
                read_frame(&mut r, &mut buf).await.unwrap(),
                ReadFrame::Frame
            );
            assert_eq!(decode_request(&buf).unwrap(), (Op::Ping, ""));
            assert_eq!(
                read_frame(&mut r, &mut buf).await.unwrap(),
                ReadFrame::Frame
            );
            assert_eq!(decode_request(&buf).unwrap(), (Op::Hello, "Zoë"));
            assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), ReadFrame::Eof);
        });
        let mut out = Vec::new();
        let resp = Response::error(Code::BadRequest, "nope");
        encode_response(&resp, &mut out);
        assert_eq!(decode_response(&out[4..]).unwrap(), resp);
    }

    #[test]
    fn bad_frames_are_reported_not_panics() {
        let mut buf = Vec::new();
        futures_lite::future::block_on(async {
            let mut zero = futures_lite::io::Cursor::new(vec![0, 0, 0, 0]);
            assert_eq!(
                read_frame(&mut zero, &mut buf).await.unwrap(),
                ReadFrame::BadLength(0)
            );
            let mut huge = futures_lite::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
            assert_eq!(
                read_frame(&mut huge, &mut buf).await.unwrap(),
                ReadFrame::BadLength(u32::MAX)
            );
            let mut cut = futures_lite::io::Cursor::new(vec![0, 0, 0, 5, 1, b'a']);
            let err = read_frame(&mut cut, &mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            let mut half_len = futures_lite::io::Cursor::new(vec![0, 0]);
            assert!(read_frame(&mut half_len, &mut buf).await.is_err());
        });
        assert!(decode_request(b"").is_err());
        assert!(
            decode_request(b"\x01\xff\xfe")
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(decode_response(b"").is_err());
        assert!(decode_response(b"\x07hi").is_err());
    }

    /// Reads back a HELLO reply to a name of `len` bytes as the gateway would.
    fn hello_round_trip(len: usize) -> io::Result<ReadFrame> {
        let name = "n".repeat(len);
        let mut wire = Vec::new();
        encode_request(Op::Hello, &name, &mut wire);
        let mut buf = Vec::new();
        futures_lite::future::block_on(async {
            let mut r = futures_lite::io::Cursor::new(wire);
            assert_eq!(read_frame(&mut r, &mut buf).await?, ReadFrame::Frame);
            assert_eq!(decode_request(&buf).unwrap(), (Op::Hello, name.as_str()));
            let mut out = Vec::new();
            encode_response(&Response::ok(hello_reply(&name)), &mut out);
            let got = read_frame(&mut futures_lite::io::Cursor::new(out), &mut buf).await?;
            if got == ReadFrame::Frame {
                assert_eq!(decode_response(&buf)?, Response::ok(hello_reply(&name)));
            }
            Ok(got)
        })
    }

    #[test]
    fn the_longest_hello_name_is_derived_from_the_frame_limit() {
        assert_eq!(MAX_HELLO_NAME, 65_527);
        assert_eq!(hello_round_trip(MAX_HELLO_NAME).unwrap(), ReadFrame::Frame);
        assert!(response_fits(&hello_reply(&"n".repeat(MAX_HELLO_NAME))));
        // One byte more: the request still fits a frame, the reply does not.
        assert_eq!(
            hello_round_trip(MAX_HELLO_NAME + 1).unwrap(),
            ReadFrame::BadLength(MAX_FRAME as u32 + 1)
        );
        assert!(!response_fits(&hello_reply(
            &"n".repeat(MAX_HELLO_NAME + 1)
        )));
        let resp = Response::error(Code::ServerError, "disk on fire");
        let mut out = Vec::new();
        encode_response(&resp, &mut out);
        assert_eq!(out[4], 3);
        assert_eq!(decode_response(&out[4..]).unwrap(), resp);
    }
}
