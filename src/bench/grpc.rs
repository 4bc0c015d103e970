//! The client side of gRPC unary calls over a raw `h2` connection: framing, status codes and
//! the outcome of one call. Hand-written (no tonic) so that the load generator costs little CPU;
//! the message framing is the server's ([`crate::grpc_frame`]).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

use crate::grpc_frame;
use crate::wire::{HelloReply, HelloRequest, SAY_HELLO, encode_frame};

pub use crate::wire::Code;

/// Who decided that a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    /// The server answered with this status.
    Server,
    /// The client gave up: connection error, stream reset, timeout, malformed response.
    Client,
}

impl Side {
    /// `"server"` or `"client"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// How one call ended when it did not end with `OK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The gRPC status (client-side failures use the code a gRPC client library would report).
    pub code: Code,
    /// Who decided.
    pub side: Side,
    /// `grpc-message` or a description of the client-side error.
    pub message: String,
    /// True when the connection is unusable and must be re-dialled.
    pub connection_broken: bool,
}

impl Failure {
    /// A failure decided on the client side.
    pub fn client(code: Code, message: impl Into<String>, connection_broken: bool) -> Self {
        Failure {
            code,
            side: Side::Client,
            message: message.into(),
            connection_broken,
        }
    }

    fn from_h2(context: &str, err: h2::Error) -> Self {
        // A stream-level reset leaves the connection usable; anything else (GOAWAY, I/O,
        // protocol error on the connection) does not.
        let broken = err.is_io() || err.is_go_away() || err.reason().is_none();
        let code = match err.reason() {
            Some(h2::Reason::CANCEL) => Code::Cancelled,
            Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(h2::Reason::NO_ERROR) | None => Code::Unavailable,
            Some(_) => Code::Internal,
        };
        Failure::client(code, format!("{context}: {err}"), broken)
    }
}

/// Decodes exactly one uncompressed gRPC message from a complete response body.
pub fn decode_frame<M: prost::Message + Default>(body: &[u8]) -> Result<M, String> {
    let message = grpc_frame::message_of(body, usize::MAX).map_err(|e| format!("response {e}"))?;
    M::decode(message).map_err(|e| format!("cannot decode the response message: {e}"))
}

/// Percent-decodes `grpc-message` (the spec percent-encodes non-ASCII and `%`).
fn decode_grpc_message(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && i + 2 < raw.len()
            && let Ok(s) = std::str::from_utf8(&raw[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(s, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC status carried by a header block (`grpc-status`, `grpc-message`), if any.
/// A `grpc-status` that is not one of the spec's codes is read as `UNKNOWN`, as gRPC's client
/// libraries do, and the message says what was received.
fn status_in(headers: &HeaderMap) -> Option<(Code, String)> {
    let status = headers.get("grpc-status")?;
    let message = headers
        .get("grpc-message")
        .map(|m| decode_grpc_message(m.as_bytes()))
        .unwrap_or_default();
    let code = std::str::from_utf8(status.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .and_then(Code::from_u32);
    Some(match code {
        Some(code) => (code, message),
        None => (
            Code::Unknown,
            format!(
                "grpc-status {:?} is not a gRPC status code; grpc-message: {message:?}",
                String::from_utf8_lossy(status.as_bytes())
            ),
        ),
    })
}

/// Opens one HTTP/2 (prior knowledge) connection and spawns its driver on the current runtime.
///
/// Must be called inside a tokio runtime with a `LocalSet` or a current-thread runtime: the
/// connection task is spawned with `tokio::task::spawn_local`.
pub async fn connect(addr: SocketAddr) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| {
        let fix = if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ": nothing listens there. Start a server (e.g. `shardpool serve`) or fix --target"
        } else {
            ""
        };
        format!("cannot connect to {addr}: {e}{fix}")
    })?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("cannot set TCP_NODELAY on {addr}: {e}"))?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr} failed: {e} (is it a gRPC server?)"))?;
    tokio::task::spawn_local(async move {
        // The error (if any) surfaces again on the next request on this connection.
        let _ = connection.await;
    });
    Ok(send)
}

/// Builds the request head of a unary call to `path`.
pub fn request_head(authority: &str, path: &str) -> Request<()> {
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| http::Uri::from_static("http://localhost/"));
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("te", http::HeaderValue::from_static("trailers"));
    request
}

/// Makes one unary call and returns the response message bytes (frame removed).
///
/// `head` is cloned per call; `body` is the already framed request message.
pub async fn unary(
    send: &h2::client::SendRequest<Bytes>,
    head: &Request<()>,
    body: Bytes,
) -> Result<Bytes, Failure> {
    let mut send = send
        .clone()
        .ready()
        .await
        .map_err(|e| Failure::from_h2("connection not ready", e))?;
    let mut request = Request::new(());
    *request.method_mut() = head.method().clone();
    *request.uri_mut() = head.uri().clone();
    *request.headers_mut() = head.headers().clone();
    let (response, mut stream) = send
        .send_request(request, false)
        .map_err(|e| Failure::from_h2("sending request headers", e))?;
    stream
        .send_data(body, true)
        .map_err(|e| Failure::from_h2("sending request body", e))?;
    let response = response
        .await
        .map_err(|e| Failure::from_h2("awaiting response", e))?;
    read_response(response).await
}

async fn read_response(response: Response<h2::RecvStream>) -> Result<Bytes, Failure> {
    let (parts, mut body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        // A proxy or non-gRPC server; the gRPC spec maps the HTTP status to a code.
        let code = status_in(&parts.headers)
            .map(|(code, _)| code)
            .unwrap_or_else(|| Code::from_http_status(parts.status.as_u16()));
        return Err(Failure {
            code,
            side: Side::Server,
            message: format!("HTTP status {}", parts.status),
            connection_broken: false,
        });
    }
    if let Some((code, message)) = status_in(&parts.headers) {
        // Trailers-only response.
        return finish(code, message, Bytes::new());
    }
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| Failure::from_h2("reading response body", e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| Failure::from_h2("reading trailers", e))?;
    match trailers.as_ref().and_then(status_in) {
        Some((code, message)) => finish(code, message, data.freeze()),
        None => Err(Failure::client(
            Code::Internal,
            "response ended without grpc-status",
            false,
        )),
    }
}

fn finish(code: Code, message: String, data: Bytes) -> Result<Bytes, Failure> {
    if code != Code::Ok {
        return Err(Failure {
            code,
            side: Side::Server,
            message,
            connection_broken: false,
        });
    }
    // One whole, uncompressed message; this client sets no size limit of its own.
    match grpc_frame::message_of(&data, usize::MAX) {
        Ok(message) => Ok(data.slice_ref(message)),
        Err(e) => Err(Failure::client(
            e.code(),
            format!("OK status but the response {e}"),
            false,
        )),
    }
}

/// Makes one unary call with a deadline; a call without an answer in time fails with
/// `DEADLINE_EXCEEDED` (client side).
pub async fn unary_with_timeout(
    send: &h2::client::SendRequest<Bytes>,
    head: &Request<()>,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, Failure> {
    match tokio::time::timeout(timeout, unary(send, head, body)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::client(
            Code::DeadlineExceeded,
            format!("no response within {timeout:?} (--timeout)"),
            false,
        )),
    }
}

/// Checks that a Greeter answers at `addr`: one `SayHello` over a fresh connection must end `OK`
/// within `timeout`. Used as the readiness check of servers started by `shardpool compare`.
///
/// Must run inside a tokio `LocalSet` (the connection driver is spawned locally).
pub async fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        let send = connect(addr).await?;
        let head = request_head(&addr.to_string(), SAY_HELLO);
        let body = encode_frame(&HelloRequest {
            name: "probe".into(),
        });
        let reply = unary(&send, &head, body)
            .await
            .map_err(|f| format!("SayHello on {addr} failed: {} {}", f.code, f.message))?;
        decode_message::<HelloReply>(reply).map(|_| ())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("SayHello on {addr}: no answer within {timeout:?}")))
}

/// Decodes a response message whose frame header [`unary`] already removed.
pub fn decode_message<M: prost::Message + Default>(message: Bytes) -> Result<M, String> {
    M::decode(message).map_err(|e| format!("malformed response message: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_outside_the_spec_read_as_unknown_and_say_so() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "4".parse().unwrap());
        assert_eq!(
            status_in(&headers),
            Some((Code::DeadlineExceeded, String::new()))
        );
        headers.insert("grpc-status", "99".parse().unwrap());
        headers.insert("grpc-message", "odd".parse().unwrap());
        let (code, message) = status_in(&headers).unwrap();
        assert_eq!(code, Code::Unknown);
        assert!(
            message.contains("\"99\" is not a gRPC status code"),
            "{message}"
        );
        assert!(message.contains("odd"), "{message}");
        assert_eq!(status_in(&HeaderMap::new()), None);
    }

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let frame = encode_frame(&HelloReply {
            message: "Hello x".into(),
        });
        let reply: HelloReply = decode_frame(&frame).unwrap();
        assert_eq!(reply.message, "Hello x");
        assert!(decode_frame::<HelloReply>(&frame[..frame.len() - 1]).is_err());
        assert!(decode_frame::<HelloReply>(&[0, 0]).is_err());
        let mut compressed = frame.to_vec();
        compressed[0] = 1;
        assert!(decode_frame::<HelloReply>(&compressed).is_err());
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(decode_grpc_message(b"no%20backend%25"), "no backend%");
        assert_eq!(decode_grpc_message(b"50%"), "50%");
        assert_eq!(decode_grpc_message(b"%zz"), "%zz");
    }

    #[test]
    fn status_read_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        headers.insert("grpc-message", "down".parse().unwrap());
        assert_eq!(
            status_in(&headers),
            Some((Code::Unavailable, "down".to_string()))
        );
        headers.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(status_in(&headers).unwrap().0, Code::Unknown);
    }
}
