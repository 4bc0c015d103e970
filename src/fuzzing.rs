//! Fuzz target bodies for the library's decoders of untrusted input.
//!
//! Each function takes arbitrary bytes, feeds them to one decoder, and asserts the decoder's
//! contract: it never panics, it never accepts what it must refuse, and what it accepts
//! round-trips. The coverage-guided targets in `fuzz/fuzz_targets/` are one-line callers of these
//! (run with `scripts/fuzz.sh`), and the unit tests below replay the committed seed corpus
//! (`fuzz/corpus/<target>/`) on stable Rust, so every crash once found stays a regression test.
//!
//! | target          | decoder                                                                  |
//! |-----------------|--------------------------------------------------------------------------|
//! | `grpc_unary`    | [`crate::server::grpc::read_unary`] over a body split into fuzzed chunks, then protobuf decoding of every request type |
//! | `grpc_timeout`  | [`crate::server::grpc::parse_timeout`]                                   |
//! | `origin_frames` | [`crate::upstream::frame::read_frame`], `decode_request`, `decode_response` |
//!
//! Not a stable API: hidden from the docs.

use crate::server::grpc::{Code, parse_timeout, read_unary};
use crate::upstream::frame::{self, ReadFrame};
use crate::wire::{
    AddBackendRequest, HealthCheckRequest, HelloRequest, ListBackendsRequest, PoolMetricsRequest,
    RemoveBackendRequest,
};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prost::Message;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body that yields the given chunks, each at once.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// `grpc_unary`: byte 0 picks the largest message (0..=255 bytes, or 4 MiB when 255), byte 1
/// seeds how the rest is cut into DATA chunks (empty chunks included).
pub fn grpc_unary(data: &[u8]) {
    let [max_sel, cut, rest @ ..] = data else {
        return;
    };
    let max_len = if *max_sel == 255 {
        4 << 20
    } else {
        usize::from(*max_sel)
    };
    let mut chunks = VecDeque::new();
    let mut at = 0;
    let mut step = usize::from(*cut);
    while at < rest.len() {
        let len = (step % 7).min(rest.len() - at); // 0..=6 bytes: splits prefixes too
        chunks.push_back(Bytes::copy_from_slice(&rest[at..at + len]));
        at += len;
        step = step.wrapping_mul(31).wrapping_add(17);
    }
    match crate::pool::block_on(read_unary(Chunks(chunks), max_len)) {
        Ok(payload) => {
            // Accepted: exactly one uncompressed message, within the limit, and all of the body.
            assert!(payload.len() <= max_len);
            assert_eq!(rest[0], 0);
            assert_eq!(rest.len(), 5 + payload.len());
            let declared = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            assert_eq!(declared, payload.len());
            assert_eq!(&rest[5..], &payload[..]);
            decode_all(&payload);
        }
        Err(status) => {
            assert_ne!(status.code(), Code::Ok);
            assert!(!status.message().is_empty());
        }
    }
}

/// Every request message the server decodes; decoding may fail but never panic, and what
/// decodes re-encodes to something that decodes to the same value.
fn decode_all(payload: &[u8]) {
    fn one<M: Message + Default + PartialEq + std::fmt::Debug>(payload: &[u8]) {
        if let Ok(m) = M::decode(payload) {
            let again =
                M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
            assert_eq!(m, again);
        }
    }
    one::<HelloRequest>(payload);
    one::<HealthCheckRequest>(payload);
    one::<PoolMetricsRequest>(payload);
    one::<AddBackendRequest>(payload);
    one::<RemoveBackendRequest>(payload);
    one::<ListBackendsRequest>(payload);
    one::<crate::proto::grpc::reflection::v1::ServerReflectionRequest>(payload);
}

/// `grpc_timeout`: accepted exactly when 1–8 ASCII digits precede one unit letter, and then the
/// value is the digits times the unit.
pub fn grpc_timeout(data: &[u8]) {
    let well_formed = matches!(data.split_last(), Some((unit, digits))
        if b"HMSmun".contains(unit)
            && (1..=8).contains(&digits.len())
            && digits.iter().all(u8::is_ascii_digit));
    match parse_timeout(data) {
        Ok(d) => {
            assert!(well_formed, "accepted {data:?}");
            let (unit, digits) = data.split_last().unwrap();
            // u128: 99,999,999 hours in nanoseconds does not fit a u64.
            let n: u128 = std::str::from_utf8(digits).unwrap().parse().unwrap();
            let nanos = match unit {
                b'H' => n * 3_600_000_000_000,
                b'M' => n * 60_000_000_000,
                b'S' => n * 1_000_000_000,
                b'm' => n * 1_000_000,
                b'u' => n * 1_000,
                _ => n,
            };
            assert_eq!(d.as_nanos(), nanos);
        }
        Err(status) => {
            assert!(!well_formed, "refused {data:?}");
            assert_eq!(status.code(), Code::InvalidArgument);
        }
    }
}

/// `origin_frames`: the input is a byte stream from a peer of the origin protocol (either
/// direction). Frames are read one by one until the stream ends or goes bad; each payload is
/// decoded as a request and as a response, and what decodes re-encodes to the same frame.
pub fn origin_frames(data: &[u8]) {
    let mut reader = futures_lite::io::Cursor::new(data);
    let mut buf = Vec::new();
    let mut consumed = 0usize;
    loop {
        match crate::pool::block_on(frame::read_frame(&mut reader, &mut buf)) {
            Ok(ReadFrame::Frame) => {
                assert!(!buf.is_empty() && buf.len() <= frame::MAX_FRAME);
                consumed += 4 + buf.len();
                assert_eq!(reader.position() as usize, consumed);
                if let Ok((op, name)) = frame::decode_request(&buf) {
                    let mut again = Vec::new();
                    frame::encode_request(op, name, &mut again);
                    assert_eq!(&again[4..], &buf[..]);
                }
                if let Ok(resp) = frame::decode_response(&buf) {
                    let mut again = Vec::new();
                    frame::encode_response(&resp, &mut again);
                    assert_eq!(&again[4..], &buf[..]);
                }
            }
            Ok(ReadFrame::Eof) => {
                assert_eq!(consumed, data.len());
                return;
            }
            Ok(ReadFrame::BadLength(len)) => {
                assert!(len == 0 || len as usize > frame::MAX_FRAME);
                return;
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
                return;
            }
        }
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/` and the corpus folders call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("grpc_unary", grpc_unary),
    ("grpc_timeout", grpc_timeout),
    ("origin_frames", origin_frames),
];

/// Runs every committed corpus file (seeds and regressions) of each of `targets` through it, on
/// stable Rust: the fallback when no nightly toolchain can run the coverage-guided fuzzer, and
/// the regression test of every input a fuzzer ever found. Panics naming the first file that
/// makes its target fail, or a target with fewer than 3 corpus files.
pub fn replay_corpus(targets: &[(&str, Target)]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in targets {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(
                run.is_ok(),
                "{name}: {} makes the target fail",
                path.display()
            );
            n += 1;
        }
        assert!(n >= 3, "{name}: only {n} corpus files in {}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn corpus_replays_clean() {
        super::replay_corpus(super::TARGETS);
    }
}
