//! tonic's helloworld Greeter, configured as a typical tuned production server: the baseline the
//! shardpool server is measured against (docs/benchmarks.md, "Server").
//!
//! Tuning (as in the issue): TCP keepalive 600 s, TCP_NODELAY, 30 s request timeout, 256 calls
//! per connection, 1 MiB stream and connection windows, 1000 concurrent streams.
//!
//! The service is written out by hand (what `tonic-build` would generate for
//! `helloworld.proto`), so no protoc is needed.
//!
//! ```text
//! cargo run --release --example tonic_greeter -- 127.0.0.1:50052 [worker threads, default 1]
//! ```

use shardpool::server::proto::{HelloReply, HelloRequest};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::{NamedService, UnaryService};

/// `helloworld.Greeter` on tonic.
#[derive(Clone, Copy, Debug, Default)]
struct GreeterServer;

impl NamedService for GreeterServer {
    const NAME: &'static str = "helloworld.Greeter";
}

/// The SayHello method.
struct SayHello;

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<tonic::Response<HelloReply>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        Box::pin(async move {
            let name = request.into_inner().name;
            Ok(tonic::Response::new(HelloReply {
                message: format!("Hello, {name}!"),
            }))
        })
    }
}

impl<B> Service<http::Request<B>> for GreeterServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match req.uri().path() {
            "/helloworld.Greeter/SayHello" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(SayHello, req).await)
            }),
            path => {
                let status = tonic::Status::unimplemented(format!("unknown method {path}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:50052")
        .parse()?;
    let workers: usize = args.next().as_deref().unwrap_or("1").parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    println!("tonic greeter on {addr} with {workers} worker thread(s)");
    rt.block_on(async move {
        tonic::transport::Server::builder()
            .tcp_keepalive(Some(Duration::from_secs(600)))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .concurrency_limit_per_connection(256)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(1 << 20)
            .max_concurrent_streams(1000)
            .add_service(GreeterServer)
            .serve(addr)
            .await
    })?;
    Ok(())
}
