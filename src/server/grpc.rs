//! gRPC over HTTP/2 on the server side: status codes, reading a unary request (with the one
//! copy of the 5-byte message framing, [`crate::grpc_frame`]), `grpc-timeout`, `grpc-message`
//! escaping, and the response body: a unary one (message, then trailers) or a stream.
//!
//! Written against the protocol description
//! (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>), with no dependency on a
//! gRPC library.

use crate::grpc_frame::{self, FrameError, PREFIX_LEN};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use crate::wire::Code;

/// The `grpc-status` header value of `code`.
fn status_value(code: Code) -> HeaderValue {
    const VALUES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    HeaderValue::from_static(VALUES[code as usize])
}

/// A gRPC error: a code and a human-readable message (sent as `grpc-message`).
///
/// ```
/// # use shardpool::server::{Code, Status};
/// let s = Status::new(Code::InvalidArgument, "name must not be empty");
/// assert_eq!(s.code(), Code::InvalidArgument);
/// assert_eq!(s.to_string(), "INVALID_ARGUMENT: name must not be empty");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

impl Status {
    /// A status with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for Status {}

/// Reads exactly one unary request message from a request body and returns its payload
/// (without the prefix).
///
/// Errors (never panics): a message longer than `max_len` → `RESOURCE_EXHAUSTED` (detected
/// from the prefix, before the payload is read); compressed flag set → `UNIMPLEMENTED` (this
/// server speaks identity only); a bad flag, a truncated message, no message or more than one
/// → `INTERNAL`; the client going away → `CANCELLED`.
pub async fn read_unary<B>(body: B, max_len: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut buf = Bytes::new();
    let mut acc: Option<BytesMut> = None;
    let mut declared: Option<usize> = None;
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                return Err(Status::new(
                    Code::Cancelled,
                    format!("request body failed: {e}"),
                ));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue, // request trailers carry nothing we use
            },
        };
        if data.is_empty() {
            continue;
        }
        // Zero-copy when the message arrives in one DATA frame; accumulate otherwise.
        match &mut acc {
            Some(a) => a.extend_from_slice(&data),
            None if buf.is_empty() => buf = data,
            None => {
                let mut a = BytesMut::with_capacity(buf.len() + data.len());
                a.extend_from_slice(&buf);
                a.extend_from_slice(&data);
                acc = Some(a);
            }
        }
        let have = acc.as_ref().map_or(buf.len(), |a| a.len());
        if declared.is_none() && have >= PREFIX_LEN {
            let head = acc.as_deref().unwrap_or(&buf);
            declared = Some(grpc_frame::parse_prefix(head, max_len).map_err(request_error)?);
        }
        if let Some(len) = declared {
            if have > PREFIX_LEN + len {
                return Err(request_error(FrameError::Extra));
            }
            // The message is whole: if the body says it has ended (the DATA frame carried
            // END_STREAM), stop here instead of polling again only to be told so.
            if have == PREFIX_LEN + len && body.is_end_stream() {
                break;
            }
        }
    }
    let mut whole = match acc {
        Some(a) => a.freeze(),
        None => buf,
    };
    match declared {
        None if whole.is_empty() => Err(request_error(FrameError::Missing)),
        None => Err(request_error(FrameError::CutPrefix { got: whole.len() })),
        Some(len) if whole.len() < PREFIX_LEN + len => Err(request_error(FrameError::CutMessage {
            got: whole.len() - PREFIX_LEN,
            len,
        })),
        Some(_) => {
            whole.advance(PREFIX_LEN);
            Ok(whole)
        }
    }
}

/// The status for a request body that breaks the framing: the error's code, and its text after
/// "request".
pub fn request_error(e: FrameError) -> Status {
    Status::new(e.code(), format!("request {e}"))
}

/// Parses a `grpc-timeout` header value: 1–8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`).
///
/// ```
/// # use shardpool::server::grpc::parse_timeout;
/// # use std::time::Duration;
/// assert_eq!(parse_timeout(b"250m").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_timeout(b"2H").unwrap(), Duration::from_secs(7200));
/// assert!(parse_timeout(b"123456789S").is_err());
/// ```
pub fn parse_timeout(value: &[u8]) -> Result<Duration, Status> {
    let bad = || {
        Status::new(
            Code::InvalidArgument,
            format!(
                "malformed grpc-timeout `{}`: expected 1-8 digits and a unit H, M, S, m, u or n",
                String::from_utf8_lossy(value)
            ),
        )
    };
    let (&unit, digits) = value.split_last().ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(bad()),
    })
}

/// Percent-encodes a `grpc-message`: bytes outside printable ASCII, and `%`, become `%XX`.
///
/// ```
/// # use shardpool::server::grpc::encode_grpc_message;
/// assert_eq!(encode_grpc_message("50% ok\n"), "50%25 ok%0A");
/// assert_eq!(encode_grpc_message("héllo"), "h%C3%A9llo");
/// ```
pub fn encode_grpc_message(msg: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// A gRPC response body: a unary one (at most one DATA frame, then at most one trailers frame)
/// or a stream ([`GrpcBody::streaming`], e.g. server reflection's answers).
///
/// The stream shares its slot with the trailers, so a unary body is no larger than before
/// streams existed (hyper moves it, and the boxed call future holds it, on every request).
#[derive(Debug, Default)]
pub struct GrpcBody {
    data: Option<Bytes>,
    rest: Option<Rest>,
}

/// What follows the data: trailers, or a streaming body polled instead.
enum Rest {
    Trailers(HeaderMap),
    Stream(Pin<Box<dyn Body<Data = Bytes, Error = Infallible>>>),
}

impl fmt::Debug for Rest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rest::Trailers(t) => f.debug_tuple("Trailers").field(t).finish(),
            Rest::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl GrpcBody {
    /// An empty body (for trailers-only or plain HTTP error responses).
    pub fn empty() -> GrpcBody {
        GrpcBody::default()
    }

    /// A plain body with one chunk and no trailers (the admin HTTP endpoint uses this).
    pub fn bytes(data: impl Into<Bytes>) -> GrpcBody {
        GrpcBody {
            data: Some(data.into()),
            rest: None,
        }
    }

    /// A body that sends what `body` yields (framed messages, then trailers with
    /// `grpc-status`), as it yields it.
    pub fn streaming(body: impl Body<Data = Bytes, Error = Infallible> + 'static) -> GrpcBody {
        GrpcBody {
            data: None,
            rest: Some(Rest::Stream(Box::pin(body))),
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(Rest::Stream(stream)) = &mut self.rest {
            return stream.as_mut().poll_frame(cx);
        }
        Poll::Ready(match self.rest.take() {
            Some(Rest::Trailers(t)) => Some(Ok(Frame::trailers(t))),
            _ => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
            && match &self.rest {
                None => true,
                Some(Rest::Trailers(_)) => false,
                Some(Rest::Stream(s)) => s.is_end_stream(),
            }
    }

    /// Exact (so hyper sends `content-length`) only for plain bodies: a gRPC response has
    /// trailers, and a `content-length` header there would only cost encoding time.
    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        match &self.rest {
            Some(Rest::Stream(s)) => s.size_hint(),
            Some(Rest::Trailers(_)) => {
                let mut hint = SizeHint::new();
                hint.set_lower(len);
                hint
            }
            None => SizeHint::with_exact(len),
        }
    }
}

const GRPC_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/grpc");

// Header names as constants: a `&str` key is parsed and validated on every use.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
/// `grpc-encoding` (request).
pub const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
/// `grpc-timeout` (request).
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A successful unary response: the framed message, then `grpc-status: 0`.
pub fn ok_response<M: prost::Message>(msg: &M) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, status_value(Code::Ok));
    let mut resp = Response::new(GrpcBody {
        data: Some(grpc_frame::encode(msg)),
        rest: Some(Rest::Trailers(trailers)),
    });
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    resp
}

/// A streaming response: HTTP 200, `content-type: application/grpc`, then what `body` yields
/// (messages framed with [`grpc_frame::encode`], then [`status_trailers`]).
pub fn streaming_response(
    body: impl Body<Data = Bytes, Error = Infallible> + 'static,
) -> Response<GrpcBody> {
    let mut resp = Response::new(GrpcBody::streaming(body));
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    resp
}

/// The trailers that end a response with `status`: `grpc-status`, and `grpc-message` when the
/// status has a message.
pub fn status_trailers(status: &Status) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    h.insert(GRPC_STATUS, status_value(status.code));
    if !status.message.is_empty()
        && let Ok(v) = HeaderValue::from_str(&encode_grpc_message(&status.message))
    {
        h.insert(GRPC_MESSAGE, v);
    }
    h
}

/// A "trailers-only" error response: HTTP 200 whose headers carry `grpc-status` and
/// `grpc-message`, and no body.
pub fn status_response(status: &Status) -> Response<GrpcBody> {
    let mut resp = Response::new(GrpcBody::empty());
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    h.insert(GRPC_STATUS, status_value(status.code));
    if !status.message.is_empty() {
        // Percent-encoding leaves only visible ASCII, which is always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&encode_grpc_message(&status.message)) {
            h.insert(GRPC_MESSAGE, v);
        }
    }
    if status.code == Code::Unimplemented {
        h.insert(GRPC_ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    resp
}

/// A plain HTTP error (not gRPC-shaped), e.g. 415 for a wrong content-type. It still carries
/// `grpc-status` so that gRPC clients show a useful error.
pub fn http_error(code: StatusCode, grpc: &Status) -> Response<GrpcBody> {
    let mut resp = status_response(grpc);
    *resp.status_mut() = code;
    resp.headers_mut().remove(http::header::CONTENT_TYPE);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: Vec<Vec<u8>>) -> impl Body<Data = Bytes, Error = Infallible> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .into_iter()
            .map(|p| Ok(Frame::data(Bytes::from(p))))
            .collect();
        StreamBody::new(futures_lite::stream::iter(frames))
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn read(parts: Vec<Vec<u8>>, max: usize) -> Result<Bytes, Status> {
        futures_lite::future::block_on(read_unary(chunks(parts), max))
    }

    #[test]
    fn reads_one_message_whole_or_in_pieces() {
        let msg = framed(b"hello world");
        assert_eq!(read(vec![msg.clone()], 100).unwrap(), &b"hello world"[..]);
        let pieces: Vec<Vec<u8>> = msg.iter().map(|b| vec![*b]).collect();
        assert_eq!(read(pieces, 100).unwrap(), &b"hello world"[..]);
        assert_eq!(read(vec![framed(b"")], 0).unwrap(), &b""[..]);
    }

    /// One DATA frame that ends the stream; polling again is a bug in the reader.
    struct Ended(Option<Bytes>);

    impl Body for Ended {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let data = self
                .0
                .take()
                .expect("polled after the body reported its end");
            Poll::Ready(Some(Ok(Frame::data(data))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    #[test]
    fn stops_at_a_whole_message_when_the_body_has_ended() {
        let read_ended = |bytes: Vec<u8>| {
            futures_lite::future::block_on(read_unary(Ended(Some(bytes.into())), 100))
        };
        assert_eq!(read_ended(framed(b"hi")).unwrap(), &b"hi"[..]);
        // A second message in the same frame is still refused.
        let mut two = framed(b"a");
        two.extend(framed(b"b"));
        assert_eq!(read_ended(two).unwrap_err().code(), Code::Internal);
    }

    #[test]
    fn rejects_bad_bodies_with_the_right_code() {
        let code = |parts, max| read(parts, max).unwrap_err().code();
        assert_eq!(code(vec![framed(&[7; 101])], 100), Code::ResourceExhausted);
        // Oversize is caught from the prefix alone, before the payload arrives.
        assert_eq!(
            code(vec![framed(&[7; 101])[..5].to_vec()], 100),
            Code::ResourceExhausted
        );
        let mut compressed = framed(b"x");
        compressed[0] = 1;
        assert_eq!(code(vec![compressed.clone()], 100), Code::Unimplemented);
        compressed[0] = 9;
        assert_eq!(code(vec![compressed], 100), Code::Internal);
        assert_eq!(code(vec![], 100), Code::Internal);
        assert_eq!(code(vec![vec![0, 0]], 100), Code::Internal);
        assert_eq!(
            code(vec![framed(b"abc")[..6].to_vec()], 100),
            Code::Internal
        );
        let mut two = framed(b"a");
        two.extend(framed(b"b"));
        assert_eq!(code(vec![two], 100), Code::Internal);
    }

    #[test]
    fn timeouts_parse_and_reject() {
        assert_eq!(parse_timeout(b"1S").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_timeout(b"3M").unwrap(), Duration::from_secs(180));
        assert_eq!(
            parse_timeout(b"99999999n").unwrap(),
            Duration::from_nanos(99_999_999)
        );
        assert_eq!(parse_timeout(b"7u").unwrap(), Duration::from_micros(7));
        for bad in [&b""[..], b"S", b"10", b"10x", b"-1S", b"1.5S", b" 1S"] {
            assert_eq!(
                parse_timeout(bad).unwrap_err().code(),
                Code::InvalidArgument
            );
        }
    }

    #[test]
    fn responses_have_the_grpc_shape() {
        let resp = ok_response(&"x".to_string());
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = futures_lite::future::block_on(resp.into_body().collect()).unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], &[0, 0, 0, 0, 3, 10, 1, b'x']);

        let err = status_response(&Status::new(Code::Unimplemented, "no such method: é"));
        assert_eq!(err.headers()["grpc-status"], "12");
        assert_eq!(err.headers()["grpc-message"], "no such method: %C3%A9");
        assert!(err.body().is_end_stream());

        let e415 = http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &Status::new(Code::Internal, "bad"),
        );
        assert_eq!(e415.status(), 415);
        for c in Code::ALL {
            assert_eq!(status_value(c), (c as u8).to_string().as_str());
        }
    }
}
