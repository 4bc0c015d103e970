//! gRPC server reflection (`grpc.reflection.v1.ServerReflection` and its pre-release twin
//! `grpc.reflection.v1alpha.ServerReflection`, identical on the wire), so that clients such as
//! grpcurl list and describe the services and call them without `.proto` files.
//!
//! The answers come from the descriptors generated from `proto/` and compiled into the binary
//! ([`crate::proto::FILES`]): the schema of the services, nothing about the server's state.
//! `ServerConfig::reflection` turns the service off (`shardpool serve --reflection off`).
//!
//! `ServerReflectionInfo` is a bidirectional stream: a client such as grpcurl sends one request,
//! waits for its answer, then sends the next. So each answer is sent as soon as its request has
//! arrived: the response body ([`ReflectionStream`]) reads the request body itself when hyper
//! asks it for the next frame, and answers every whole request it finds.
//!
//! # Bounds
//!
//! Like every other input, a reflection stream is bounded: each request message by
//! [`MAX_REQUEST_SIZE`] (and by `max_message_size` when that is smaller), the number of
//! requests per stream by [`MAX_REQUESTS`], and the stream's life by [`STREAM_LIMIT`] (and by the
//! call's deadline when that is shorter). A stream that passes one ends with its status in the
//! trailers (`RESOURCE_EXHAUSTED` or `DEADLINE_EXCEEDED`).
//!
//! ```
//! use shardpool::proto::grpc::reflection::v1::{
//!     ServerReflectionRequest, server_reflection_request::MessageRequest,
//!     server_reflection_response::MessageResponse,
//! };
//! use shardpool::server::reflection::answer;
//!
//! let list = ServerReflectionRequest {
//!     host: String::new(),
//!     message_request: Some(MessageRequest::ListServices(String::new())),
//! };
//! let Some(MessageResponse::ListServicesResponse(services)) = answer(list).message_response
//! else {
//!     panic!("not a list of services");
//! };
//! assert!(services.service.iter().any(|s| s.name == "helloworld.Greeter"));
//! ```

use super::grpc::{Code, Status, request_error, status_trailers};
use crate::grpc_frame;
use crate::proto::grpc::reflection::v1::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse,
    ServerReflectionRequest, ServerReflectionResponse, ServiceResponse,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use crate::proto::{FILES, ProtoFile};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use prost::Message;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The services reflection is served under (the same messages in both).
pub const SERVICES: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Largest reflection request message, bytes. A request names a file or a symbol: a few dozen
/// bytes; 16 KiB leaves room for any name and keeps a stream's buffered input small.
pub const MAX_REQUEST_SIZE: usize = 16 * 1024;

/// Requests answered per stream; the stream then ends `RESOURCE_EXHAUSTED`. grpcurl's `describe`
/// of every service takes about one request per service and per file; 100 is far above that, and
/// bounds the work one stream can ask for (each answer is at most every descriptor, a few KiB).
pub const MAX_REQUESTS: usize = 100;

/// Longest life of a stream (shorter if the call's deadline is); it then ends
/// `DEADLINE_EXCEEDED`. A reflection session of grpcurl takes milliseconds. 10 s also stays below
/// the default `send_stall_timeout` (30 s), which an open stream waiting for its client's next
/// request would otherwise run into.
pub const STREAM_LIMIT: Duration = Duration::from_secs(10);

/// The answer to one reflection request.
pub fn answer(request: ServerReflectionRequest) -> ServerReflectionResponse {
    let response = match &request.message_request {
        Some(MessageRequest::ListServices(_)) => {
            MessageResponse::ListServicesResponse(ListServiceResponse {
                service: FILES
                    .iter()
                    .flat_map(|f| f.services)
                    .map(|name| ServiceResponse {
                        name: (*name).to_string(),
                    })
                    .collect(),
            })
        }
        Some(MessageRequest::FileByFilename(name)) => {
            match FILES.iter().find(|f| f.name == name.as_str()) {
                Some(file) => files_response(file),
                None => error(Code::NotFound, format!("no file named `{name}`")),
            }
        }
        Some(MessageRequest::FileContainingSymbol(symbol)) => {
            match FILES.iter().find(|f| f.defines(symbol)) {
                Some(file) => files_response(file),
                None => error(Code::NotFound, format!("no symbol named `{symbol}`")),
            }
        }
        Some(MessageRequest::FileContainingExtension(ext)) => error(
            Code::NotFound,
            format!(
                "no extension {} of `{}`: these files define no extensions",
                ext.extension_number, ext.containing_type
            ),
        ),
        Some(MessageRequest::AllExtensionNumbersOfType(ty)) => {
            if FILES.iter().any(|f| f.defines(ty)) {
                MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: ty.strip_prefix('.').unwrap_or(ty).to_string(),
                    extension_number: Vec::new(),
                })
            } else {
                error(Code::NotFound, format!("no type named `{ty}`"))
            }
        }
        None => error(
            Code::InvalidArgument,
            "the request sets none of file_by_filename, file_containing_symbol, \
             file_containing_extension, all_extension_numbers_of_type or list_services",
        ),
    };
    ServerReflectionResponse {
        valid_host: request.host.clone(),
        original_request: Some(request),
        message_response: Some(response),
    }
}

fn error(code: Code, message: impl Into<String>) -> MessageResponse {
    MessageResponse::ErrorResponse(ErrorResponse {
        error_code: code.as_u32() as i32,
        error_message: message.into(),
    })
}

/// `file` and every file it imports, directly or not, `file` first.
fn files_response(file: &ProtoFile) -> MessageResponse {
    let mut chosen: Vec<&ProtoFile> = vec![file];
    let mut i = 0;
    while let Some(f) = chosen.get(i) {
        for dep in f.dependencies {
            if let Some(d) = FILES.iter().find(|x| x.name == *dep)
                && !chosen.iter().any(|c| c.name == d.name)
            {
                chosen.push(d);
            }
        }
        i += 1;
    }
    MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
        file_descriptor_proto: chosen
            .iter()
            .map(|f| Bytes::from_static(f.descriptor))
            .collect(),
    })
}

/// The response body of one `ServerReflectionInfo` stream: reads request messages from the
/// request body `B` as hyper polls it, and yields one framed answer per request, then trailers.
/// `deadline` ends the stream when it completes (see [`STREAM_LIMIT`]).
pub struct ReflectionStream<B> {
    requests: B,
    deadline: Pin<Box<dyn Future<Output = ()>>>,
    /// Request bytes not yet answered.
    buf: BytesMut,
    max_request: usize,
    answered: usize,
    /// Set once the trailers have been yielded.
    done: bool,
}

impl<B> ReflectionStream<B> {
    /// A stream answering the messages of `requests` (each at most `max_request` bytes, capped
    /// at [`MAX_REQUEST_SIZE`]) until they end or `deadline` completes.
    pub fn new(
        requests: B,
        max_request: usize,
        deadline: Pin<Box<dyn Future<Output = ()>>>,
    ) -> ReflectionStream<B> {
        ReflectionStream {
            requests,
            deadline,
            buf: BytesMut::new(),
            max_request: max_request.min(MAX_REQUEST_SIZE),
            answered: 0,
            done: false,
        }
    }

    /// The last frame: trailers with `status`.
    fn finish(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(status_trailers(status)))))
    }
}

impl<B> Body for ReflectionStream<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        // Checked first, so that a client that keeps sending cannot keep a stream open.
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.finish(&Status::new(
                Code::DeadlineExceeded,
                format!(
                    "reflection stream open longer than its limit (the call's deadline, at most \
                     {STREAM_LIMIT:?})"
                ),
            ));
        }
        loop {
            match grpc_frame::next_message(&mut this.buf, this.max_request) {
                Err(e) => return this.finish(&request_error(e)),
                Ok(Some(msg)) => {
                    if this.answered == MAX_REQUESTS {
                        return this.finish(&Status::new(
                            Code::ResourceExhausted,
                            format!(
                                "more than {MAX_REQUESTS} requests on one reflection stream; \
                                 open a new one"
                            ),
                        ));
                    }
                    let request = match ServerReflectionRequest::decode(msg) {
                        Ok(r) => r,
                        Err(e) => {
                            return this.finish(&Status::new(
                                Code::InvalidArgument,
                                format!(
                                    "cannot decode grpc.reflection.v1.ServerReflectionRequest: {e}"
                                ),
                            ));
                        }
                    };
                    this.answered += 1;
                    let reply = grpc_frame::encode(&answer(request));
                    return Poll::Ready(Some(Ok(Frame::data(reply))));
                }
                Ok(None) => {}
            }
            match Pin::new(&mut this.requests).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    if this.buf.is_empty() {
                        return this.finish(&Status::new(Code::Ok, ""));
                    }
                    // The body ended inside a message (a whole one was taken above).
                    let e = grpc_frame::message_of(&this.buf, usize::MAX)
                        .err()
                        .unwrap_or(grpc_frame::FrameError::Missing);
                    return this.finish(&request_error(e));
                }
                Poll::Ready(Some(Err(e))) => {
                    return this.finish(&Status::new(
                        Code::Cancelled,
                        format!("request body failed: {e}"),
                    ));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Request trailers carry nothing we use.
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::grpc::reflection::v1::ExtensionRequest;
    use http_body_util::{BodyExt, StreamBody};

    fn ask(r: MessageRequest) -> MessageResponse {
        let resp = answer(ServerReflectionRequest {
            host: "h".into(),
            message_request: Some(r.clone()),
        });
        assert_eq!(resp.valid_host, "h");
        assert_eq!(
            resp.original_request.unwrap().message_request,
            Some(r),
            "the request is echoed"
        );
        resp.message_response.unwrap()
    }

    fn file_names(r: MessageResponse) -> Vec<String> {
        let MessageResponse::FileDescriptorResponse(files) = r else {
            panic!("not files: {r:?}");
        };
        files
            .file_descriptor_proto
            .iter()
            .map(|bytes| {
                // FileDescriptorProto.name is field 1.
                #[derive(Clone, PartialEq, prost::Message)]
                struct Name {
                    #[prost(string, tag = "1")]
                    name: String,
                }
                Name::decode(bytes.clone()).unwrap().name
            })
            .collect()
    }

    fn error_code(r: MessageResponse) -> i32 {
        match r {
            MessageResponse::ErrorResponse(e) => {
                assert!(!e.error_message.is_empty());
                e.error_code
            }
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn lists_every_service_of_the_protos() {
        let MessageResponse::ListServicesResponse(list) =
            ask(MessageRequest::ListServices("*".into()))
        else {
            panic!("not a list");
        };
        let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
        for want in [
            "helloworld.Greeter",
            "grpc.health.v1.Health",
            "shardpool.v1.Admin",
            SERVICES[0],
            SERVICES[1],
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
    }

    #[test]
    fn files_by_symbol_and_by_name() {
        for symbol in [
            "helloworld.Greeter",
            ".helloworld.Greeter",
            "helloworld.Greeter.SayHello",
            "helloworld.HelloRequest",
            "helloworld.HelloRequest.name",
        ] {
            assert_eq!(
                file_names(ask(MessageRequest::FileContainingSymbol(symbol.into()))),
                ["helloworld.proto"],
                "{symbol}"
            );
        }
        assert_eq!(
            file_names(ask(MessageRequest::FileContainingSymbol(
                "grpc.health.v1.HealthCheckResponse.SERVING".into()
            ))),
            ["health.proto"]
        );
        assert_eq!(
            file_names(ask(MessageRequest::FileByFilename(
                "shardpool_admin.proto".into()
            ))),
            ["shardpool_admin.proto"]
        );
        let not_found = Code::NotFound.as_u32() as i32;
        assert_eq!(
            error_code(ask(MessageRequest::FileContainingSymbol(
                "helloworld.Nope".into()
            ))),
            not_found
        );
        assert_eq!(
            error_code(ask(MessageRequest::FileByFilename("nope.proto".into()))),
            not_found
        );
        assert_eq!(
            error_code(ask(MessageRequest::FileContainingExtension(
                ExtensionRequest {
                    containing_type: "helloworld.HelloRequest".into(),
                    extension_number: 100,
                }
            ))),
            not_found
        );
        let MessageResponse::AllExtensionNumbersResponse(ext) = ask(
            MessageRequest::AllExtensionNumbersOfType("helloworld.HelloRequest".into()),
        ) else {
            panic!("not extension numbers");
        };
        assert_eq!(ext.base_type_name, "helloworld.HelloRequest");
        assert!(ext.extension_number.is_empty());
        let none = answer(ServerReflectionRequest::default());
        assert_eq!(
            error_code(none.message_response.unwrap()),
            Code::InvalidArgument.as_u32() as i32
        );
    }

    type Chunks = StreamBody<
        futures_lite::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn requests(parts: Vec<Vec<u8>>) -> Chunks {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .into_iter()
            .map(|p| Ok(Frame::data(Bytes::from(p))))
            .collect();
        StreamBody::new(futures_lite::stream::iter(frames))
    }

    fn list_request() -> Vec<u8> {
        grpc_frame::encode(&ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
        .to_vec()
    }

    /// Runs a stream over `parts` to its end: the answers and the trailers' grpc-status.
    fn run(parts: Vec<Vec<u8>>, deadline: Pin<Box<dyn Future<Output = ()>>>) -> (usize, String) {
        let stream = ReflectionStream::new(requests(parts), 1 << 20, deadline);
        let collected = futures_lite::future::block_on(stream.collect()).unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        let status = trailers["grpc-status"].to_str().unwrap().to_string();
        let mut data = BytesMut::from(&collected.to_bytes()[..]);
        let mut answers = 0;
        while let Some(msg) = grpc_frame::next_message(&mut data, usize::MAX).unwrap() {
            ServerReflectionResponse::decode(msg).unwrap();
            answers += 1;
        }
        assert!(data.is_empty());
        (answers, status)
    }

    fn never() -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(std::future::pending())
    }

    #[test]
    fn a_stream_answers_each_request_then_ends_ok() {
        // Three requests, the second split across two DATA frames.
        let one = list_request();
        let (a, b) = one.split_at(3);
        let parts = vec![one.clone(), a.to_vec(), b.to_vec(), one.clone()];
        assert_eq!(run(parts, never()), (3, "0".to_string()));
        assert_eq!(run(vec![], never()), (0, "0".to_string()));
    }

    #[test]
    fn an_answer_is_sent_before_the_request_body_ends() {
        // One request, and a body that then stays open: the answer must come anyway.
        let mut stream = ReflectionStream::new(
            requests(vec![list_request()]).chain_pending(),
            1 << 20,
            never(),
        );
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let first = Pin::new(&mut stream).poll_frame(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(ref f))) if f.is_data()));
        assert!(Pin::new(&mut stream).poll_frame(&mut cx).is_pending());
    }

    #[test]
    fn streams_are_bounded() {
        let too_many = vec![list_request(); MAX_REQUESTS + 1];
        assert_eq!(
            run(too_many, never()),
            (MAX_REQUESTS, (Code::ResourceExhausted.as_u32()).to_string())
        );
        let mut big = vec![0];
        big.extend_from_slice(&((MAX_REQUEST_SIZE + 1) as u32).to_be_bytes());
        assert_eq!(
            run(vec![big], never()),
            (0, Code::ResourceExhausted.as_u32().to_string())
        );
        // A passed deadline ends the stream before anything is read.
        assert_eq!(
            run(vec![list_request()], Box::pin(std::future::ready(()))),
            (0, Code::DeadlineExceeded.as_u32().to_string())
        );
        // Bytes that are not a request: INVALID_ARGUMENT; a cut message: INTERNAL.
        assert_eq!(
            run(vec![vec![0, 0, 0, 0, 2, 0xff, 0xff]], never()),
            (0, Code::InvalidArgument.as_u32().to_string())
        );
        assert_eq!(
            run(vec![list_request()[..6].to_vec()], never()),
            (0, Code::Internal.as_u32().to_string())
        );
    }

    /// A request body that yields its frames, then never ends.
    trait ChainPending: Sized {
        fn chain_pending(self) -> Pending<Self> {
            Pending(self, false)
        }
    }
    impl ChainPending for Chunks {}

    struct Pending<B>(B, bool);

    impl<B: Body<Data = Bytes, Error = Infallible> + Unpin> Body for Pending<B> {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.1 {
                return Poll::Pending;
            }
            match Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(None) => {
                    self.1 = true;
                    Poll::Pending
                }
                other => other,
            }
        }
    }
}
