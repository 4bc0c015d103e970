//! gRPC's message framing, the one copy: the server reads requests and writes responses with
//! it (unary calls and the reflection stream), the load generator writes requests and reads
//! responses. The gateway speaks gRPC to its clients through the server, and its own origin
//! protocol (`upstream::frame`) to backends.
//!
//! A gRPC message on an HTTP/2 stream is a *Length-Prefixed-Message*
//! (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>): one byte that says
//! whether it is compressed, its length as a big-endian `u32`, then the message.
//!
//! ```
//! use bytes::BytesMut;
//! use shardpool::grpc_frame::{self, FrameError};
//! use shardpool::proto::helloworld::HelloRequest;
//!
//! // Not compressed (0), 3 bytes of message, then field 1 (name) = "a".
//! let frame = grpc_frame::encode(&HelloRequest { name: "a".into() });
//! assert_eq!(&frame[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'a']);
//! assert_eq!(grpc_frame::message_of(&frame, 100), Ok(&frame[5..]));
//!
//! // A stream of messages arriving in pieces.
//! let mut buf = BytesMut::from(&frame[..4]);
//! assert_eq!(grpc_frame::next_message(&mut buf, 100), Ok(None));
//! buf.extend_from_slice(&frame[4..]);
//! assert_eq!(grpc_frame::next_message(&mut buf, 100).unwrap().unwrap(), &frame[5..]);
//!
//! // The limit is checked from the prefix alone.
//! assert_eq!(
//!     grpc_frame::message_of(&frame, 2),
//!     Err(FrameError::TooLarge { len: 3, max: 2 })
//! );
//! ```

use crate::wire::Code;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// The length of the prefix: a compressed-flag byte and a big-endian `u32` length.
pub const PREFIX_LEN: usize = 5;

/// Why bytes are not the gRPC message(s) they should be. [`FrameError::code`] is the status a
/// gRPC peer answers with; the text reads after a word saying whose message it was ("request
/// message of 9 bytes is larger than ...").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The compressed flag is set: shardpool speaks `grpc-encoding: identity` only.
    Compressed,
    /// The flag byte is neither 0 nor 1.
    BadFlag(u8),
    /// The prefix declares more than the limit.
    TooLarge {
        /// Declared length, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
    /// The body ended inside a prefix.
    CutPrefix {
        /// Bytes of the prefix that arrived.
        got: usize,
    },
    /// The body ended inside a message.
    CutMessage {
        /// Bytes of the message that arrived.
        got: usize,
        /// Its declared length.
        len: usize,
    },
    /// No message where one was expected.
    Missing,
    /// More than one message where one was expected (a unary call).
    Extra,
}

impl FrameError {
    /// The gRPC status code of this error: `UNIMPLEMENTED` for compression, `RESOURCE_EXHAUSTED`
    /// for a message over the limit, `INTERNAL` for the rest (a peer that breaks the framing).
    pub fn code(&self) -> Code {
        match self {
            FrameError::Compressed => Code::Unimplemented,
            FrameError::TooLarge { .. } => Code::ResourceExhausted,
            _ => Code::Internal,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Compressed => f.write_str(
                "message is compressed, which is not supported: only grpc-encoding identity is",
            ),
            FrameError::BadFlag(flag) => {
                write!(
                    f,
                    "message prefix has an invalid compressed-flag byte {flag}"
                )
            }
            FrameError::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes is larger than the maximum of {max} bytes"
            ),
            FrameError::CutPrefix { got } => write!(
                f,
                "body ended inside the {PREFIX_LEN}-byte message prefix ({got} bytes)"
            ),
            FrameError::CutMessage { got, len } => {
                write!(f, "body ended inside a message: got {got} of {len} bytes")
            }
            FrameError::Missing => f.write_str("body has no message"),
            FrameError::Extra => f.write_str("body has more than one message for a unary method"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Frames one protobuf message: `0` (not compressed), its length (`u32`, big-endian), its
/// bytes.
pub fn encode<M: prost::Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u8(0);
    // No message we produce comes near u32::MAX (requests and replies are bounded by the
    // configured size limit); saturate rather than wrap if one ever did.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer reserved for `encoded_len` cannot fail.
    let _ = message.encode(&mut buf);
    buf.freeze()
}

/// Checks a prefix (at least [`PREFIX_LEN`] bytes; the first five are read) and returns the
/// declared length: uncompressed and at most `max_len` bytes.
///
/// ```
/// use shardpool::grpc_frame::{FrameError, parse_prefix};
/// assert_eq!(parse_prefix(&[0, 0, 0, 1, 0], 256), Ok(256));
/// assert_eq!(parse_prefix(&[1, 0, 0, 0, 1], 256), Err(FrameError::Compressed));
/// assert_eq!(parse_prefix(&[0, 0, 0], 256), Err(FrameError::CutPrefix { got: 3 }));
/// ```
pub fn parse_prefix(prefix: &[u8], max_len: usize) -> Result<usize, FrameError> {
    let &[flag, a, b, c, d, ..] = prefix else {
        return Err(FrameError::CutPrefix { got: prefix.len() });
    };
    match flag {
        0 => {}
        1 => return Err(FrameError::Compressed),
        flag => return Err(FrameError::BadFlag(flag)),
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    Ok(len)
}

/// The message of a body that must hold exactly one (a unary request or response), without
/// its prefix.
pub fn message_of(body: &[u8], max_len: usize) -> Result<&[u8], FrameError> {
    if body.is_empty() {
        return Err(FrameError::Missing);
    }
    let len = parse_prefix(body, max_len)?;
    let rest = &body[PREFIX_LEN..];
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::CutMessage {
            got: rest.len(),
            len,
        }),
        std::cmp::Ordering::Greater => Err(FrameError::Extra),
        std::cmp::Ordering::Equal => Ok(rest),
    }
}

/// Takes the first whole message off the front of `buf` (a stream's bytes as they arrive):
/// `Ok(None)` while it is not all there. The prefix is checked as soon as it is, so an
/// oversized message is refused before its bytes arrive.
pub fn next_message(buf: &mut BytesMut, max_len: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < PREFIX_LEN {
        return Ok(None);
    }
    let len = parse_prefix(buf, max_len)?;
    if buf.len() < PREFIX_LEN + len {
        return Ok(None);
    }
    buf.advance(PREFIX_LEN);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn one_message_or_the_reason_why_not() {
        assert_eq!(message_of(&framed(b"abc"), 3), Ok(&b"abc"[..]));
        assert_eq!(message_of(&framed(b""), 0), Ok(&b""[..]));
        assert_eq!(message_of(&[], 3), Err(FrameError::Missing));
        assert_eq!(
            message_of(&[0, 0], 3),
            Err(FrameError::CutPrefix { got: 2 })
        );
        assert_eq!(
            message_of(&framed(b"abc")[..6], 3),
            Err(FrameError::CutMessage { got: 1, len: 3 })
        );
        let mut two = framed(b"a");
        two.extend(framed(b"b"));
        assert_eq!(message_of(&two, 3), Err(FrameError::Extra));
        assert_eq!(
            message_of(&framed(b"abcd"), 3),
            Err(FrameError::TooLarge { len: 4, max: 3 })
        );
        let mut flagged = framed(b"a");
        flagged[0] = 1;
        assert_eq!(message_of(&flagged, 3), Err(FrameError::Compressed));
        flagged[0] = 7;
        assert_eq!(message_of(&flagged, 3), Err(FrameError::BadFlag(7)));
    }

    #[test]
    fn codes_follow_the_grpc_spec() {
        assert_eq!(FrameError::Compressed.code(), Code::Unimplemented);
        assert_eq!(
            FrameError::TooLarge { len: 2, max: 1 }.code(),
            Code::ResourceExhausted
        );
        for e in [
            FrameError::BadFlag(2),
            FrameError::CutPrefix { got: 1 },
            FrameError::CutMessage { got: 1, len: 2 },
            FrameError::Missing,
            FrameError::Extra,
        ] {
            assert_eq!(e.code(), Code::Internal, "{e}");
        }
        assert_eq!(
            format!("request {}", FrameError::TooLarge { len: 9, max: 4 }),
            "request message of 9 bytes is larger than the maximum of 4 bytes"
        );
    }

    #[test]
    fn a_stream_of_messages_is_split_as_it_arrives() {
        let mut wire = framed(b"first");
        wire.extend(framed(b""));
        wire.extend(framed(b"third"));
        // Byte by byte: each message comes out once it is whole, in order.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &wire {
            buf.put_u8(*b);
            while let Some(m) = next_message(&mut buf, 16).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, [&b"first"[..], b"", b"third"]);
        assert!(buf.is_empty());
        // Oversize is refused from the prefix, before the payload arrives.
        let mut big = BytesMut::from(&framed(&[1; 17])[..PREFIX_LEN]);
        assert_eq!(
            next_message(&mut big, 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
    }
}
