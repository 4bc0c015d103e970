//! Raw bytes on loopback sockets, below any client library: an HTTP/1.1 request, an HTTP/2
//! connection preface and the frame types that come back, and gRPC message framing.
#![allow(dead_code)] // each test binary compiles this module alone and uses only part of it

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// HTTP/2 frame type of a PING.
pub const PING: u8 = 0x6;
/// HTTP/2 frame type of a GOAWAY.
pub const GOAWAY: u8 = 0x7;

/// Sends `request_line` (for example `GET /metrics`) as an HTTP/1.1 request that closes the
/// connection; the whole response, head and body. Panics if nothing complete arrives in 10 s.
#[track_caller]
pub fn http(addr: SocketAddr, request_line: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        format!("{request_line} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Opens a raw HTTP/2 connection (preface + empty SETTINGS) and returns the stream.
#[track_caller]
pub fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    s
}

/// The types of the HTTP/2 frames in `buf`, in order (a frame counts once its 9-byte header is
/// in).
pub fn frame_types(buf: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut pos = 0;
    while pos + 9 <= buf.len() {
        let len = u32::from_be_bytes([0, buf[pos], buf[pos + 1], buf[pos + 2]]) as usize;
        types.push(buf[pos + 3]);
        pos += 9 + len;
    }
    types
}

/// Reads HTTP/2 frames until `done(types so far)`, EOF, an error or `limit`; returns the frame
/// types seen.
pub fn read_frame_types(
    s: &mut TcpStream,
    limit: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while start.elapsed() < limit && !done(&frame_types(&buf)) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    frame_types(&buf)
}

/// One gRPC length-prefixed message: the compressed flag, the length (big-endian u32), `payload`.
pub fn grpc_frame(payload: &[u8], compressed: bool) -> bytes::Bytes {
    let mut v = Vec::with_capacity(5 + payload.len());
    v.push(u8::from(compressed));
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    bytes::Bytes::from(v)
}
