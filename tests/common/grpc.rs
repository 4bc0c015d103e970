//! A tonic client for the gRPC tests: connect, one unary call, and the Greeter and Health calls
//! built on it. Shared by the in-process server tests and the tests of the `shardpool` binary.
#![allow(dead_code)] // each test binary compiles this module alone and uses only part of it

use shardpool::server::proto::{HealthCheckRequest, HealthCheckResponse, HelloReply, HelloRequest};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

/// One HTTP/2 connection to `addr` (panics if it cannot connect).
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One unary call of `path` with prost messages; the reply message or the call's status.
pub async fn unary<Req, Resp>(
    ch: Channel,
    path: &'static str,
    req: tonic::Request<Req>,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(req, http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(tonic::Response::into_inner)
}

/// `helloworld.Greeter/SayHello`; the reply's message.
pub async fn say_hello(ch: Channel, name: impl Into<String>) -> Result<String, tonic::Status> {
    let req = tonic::Request::new(HelloRequest { name: name.into() });
    let reply: HelloReply = unary(ch, "/helloworld.Greeter/SayHello", req).await?;
    Ok(reply.message)
}

/// `grpc.health.v1.Health/Check` of `service`; the serving status as its number.
pub async fn health(ch: Channel, service: &str) -> Result<i32, tonic::Status> {
    let req = tonic::Request::new(HealthCheckRequest {
        service: service.into(),
    });
    let r: HealthCheckResponse = unary(ch, "/grpc.health.v1.Health/Check", req).await?;
    Ok(r.status)
}

/// [`say_hello`] on a new connection to `addr`, from a runtime of its own, for tests that are
/// not async; panics if the call takes more than 10 s.
pub fn say_hello_blocking(addr: SocketAddr, name: &str) -> Result<String, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = channel(addr).await;
        tokio::time::timeout(Duration::from_secs(10), say_hello(ch, name))
            .await
            .expect("call took too long")
    })
}
