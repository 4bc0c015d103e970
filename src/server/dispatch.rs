//! Routing and answering one call: the method table, the checks on the request head, and the
//! handlers of each service.

use super::{Code, GreetHandler, SERVICES, ServerConfig, ServerCounters, Shard, Status};
use super::{admin, conn, grpc, proto, reflection};
use crate::pool::Stats;
use crate::topology::ShardMap;
use grpc::{GrpcBody, http_error, ok_response, read_unary, status_response};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use prost::Message;
use proto::{
    HealthCheckRequest, HealthCheckResponse, HelloReply, HelloRequest, PoolMetricsRequest,
    PoolMetricsResponse, ShardPoolMetrics,
};
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

/// The hyper service of one connection.
pub(super) struct ConnService<H> {
    pub(super) shard: Rc<Shard<H>>,
    /// Per-connection concurrency limit.
    pub(super) limit: Option<Rc<glommio::sync::Semaphore>>,
    /// Open streams and waiting responses, for the connection's watchdog and its shard's
    /// tracker (a connection with streams open is never shed).
    pub(super) activity: Rc<conn::Activity>,
}

/// A response body that keeps its stream counted as open in the connection's activity.
pub(super) type ConnBody = conn::Tracked<GrpcBody>;

impl<H: GreetHandler> hyper::service::Service<Request<Incoming>> for ConnService<H> {
    type Response = Response<ConnBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ConnBody>, Infallible>>>>;

    /// The head is checked here, before anything is boxed, so the boxed future holds only the
    /// body and the call: it stays under 1 KiB, mimalloc's small-object limit, above which every
    /// allocation takes its slower generic path (callgrind: this allocation cost 390
    /// instructions when the box held the whole request, 144 now).
    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let stream = self.activity.stream_opened();
        match check_head(&self.shard.shared.cfg, &req) {
            Err(refusal) => {
                let (code, resp) = refusal.into_response();
                ServerCounters::bump(&self.shard.counters().calls_by_code[code as usize]);
                Box::pin(std::future::ready(Ok(
                    resp.map(|b| conn::Tracked::new(b, stream))
                )))
            }
            Ok((method, deadline)) => {
                let shard = Rc::clone(&self.shard);
                let limit = self.limit.clone();
                let body = req.into_body();
                Box::pin(async move {
                    let resp = handle(&shard, limit, method, deadline, body).await;
                    Ok(resp.map(|b| conn::Tracked::new(b, stream)))
                })
            }
        }
    }
}

/// The methods this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    SayHello,
    HealthCheck,
    PoolMetrics,
    Backends(admin::BackendRpc),
    /// `ServerReflectionInfo` of either reflection service.
    Reflection,
}

/// The methods of each service in [`SERVICES`], then of the reflection services. The Greeter
/// comes first: [`route`] tries them in order.
pub(super) const METHODS: [(&str, &[(&str, Method)]); SERVICES.len() + reflection::SERVICES.len()] = [
    (SERVICES[0], &[("SayHello", Method::SayHello)]),
    (SERVICES[1], &[("Check", Method::HealthCheck)]),
    (
        SERVICES[2],
        &[
            ("PoolMetrics", Method::PoolMetrics),
            ("AddBackend", Method::Backends(admin::BackendRpc::Add)),
            ("RemoveBackend", Method::Backends(admin::BackendRpc::Remove)),
            ("ListBackends", Method::Backends(admin::BackendRpc::List)),
        ],
    ),
    (
        reflection::SERVICES[0],
        &[("ServerReflectionInfo", Method::Reflection)],
    ),
    (
        reflection::SERVICES[1],
        &[("ServerReflectionInfo", Method::Reflection)],
    ),
];

/// Maps `/service/method` to a [`Method`], or the UNIMPLEMENTED status naming what is unknown.
///
/// This runs on every call, so a known path is matched with prefix comparisons only; the
/// search for the `/` that splits an unknown path happens on the error path.
pub(super) fn route(path: &str) -> Result<Method, Status> {
    let malformed = || Status::new(Code::Unimplemented, format!("malformed gRPC path `{path}`"));
    let rest = path.strip_prefix('/').ok_or_else(malformed)?;
    for (service, methods) in METHODS {
        if let Some(method) = rest.strip_prefix(service).and_then(|m| m.strip_prefix('/')) {
            return methods
                .iter()
                .find(|(n, _)| *n == method)
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    Status::new(
                        Code::Unimplemented,
                        format!("unknown method {method} for service {service}"),
                    )
                });
        }
    }
    match rest.split_once('/') {
        Some((service, _)) => Err(Status::new(
            Code::Unimplemented,
            format!("unknown service {service}"),
        )),
        None => Err(malformed()),
    }
}

/// A request refused from its head alone: a plain HTTP error or a gRPC status.
pub(super) enum Refusal {
    Http(StatusCode, Status),
    Grpc(Status),
}

impl Refusal {
    pub(super) fn into_response(self) -> (Code, Response<GrpcBody>) {
        match self {
            Refusal::Http(code, status) => (status.code(), http_error(code, &status)),
            Refusal::Grpc(status) => (status.code(), status_response(&status)),
        }
    }
}

/// Checks the request head; returns the method and the call's deadline, or why it is refused.
pub(super) fn check_head(
    cfg: &ServerConfig,
    req: &Request<Incoming>,
) -> Result<(Method, Option<Duration>), Refusal> {
    if req.method() != http::Method::POST {
        return Err(Refusal::Http(
            StatusCode::METHOD_NOT_ALLOWED,
            Status::new(
                Code::Internal,
                format!("gRPC needs POST, got {}", req.method()),
            ),
        ));
    }
    // One pass over the few request headers instead of three hashed look-ups (this runs on
    // every call); the first value of a repeated header counts, as with `HeaderMap::get`.
    let (mut ct, mut enc, mut timeout) = (None, None, None);
    for (name, value) in req.headers() {
        let slot = if *name == http::header::CONTENT_TYPE {
            &mut ct
        } else if *name == grpc::GRPC_ENCODING {
            &mut enc
        } else if *name == grpc::GRPC_TIMEOUT {
            &mut timeout
        } else {
            continue;
        };
        slot.get_or_insert(value.as_bytes());
    }
    let is_grpc = ct.is_some_and(|ct| {
        ct.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    });
    if !is_grpc {
        let got = ct.map_or("none".into(), |c| String::from_utf8_lossy(c).into_owned());
        return Err(Refusal::Http(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::new(
                Code::Internal,
                format!("content-type must be application/grpc, got {got}"),
            ),
        ));
    }
    let method = route(req.uri().path()).map_err(Refusal::Grpc)?;
    if let Some(enc) = enc
        && enc != b"identity"
    {
        return Err(Refusal::Grpc(Status::new(
            Code::Unimplemented,
            format!(
                "grpc-encoding {} is not supported; this server accepts identity only",
                String::from_utf8_lossy(enc)
            ),
        )));
    }
    let timeout = match timeout {
        Some(v) => Some(grpc::parse_timeout(v).map_err(Refusal::Grpc)?),
        None => None,
    };
    let deadline = match (timeout, cfg.request_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok((method, deadline))
}

/// Runs an accepted call under its deadline and the shard's abort, and counts its outcome.
pub(super) async fn handle<H: GreetHandler>(
    shard: &Shard<H>,
    limit: Option<Rc<glommio::sync::Semaphore>>,
    method: Method,
    deadline: Option<Duration>,
    body: Incoming,
) -> Response<GrpcBody> {
    if matches!(method, Method::Reflection) {
        let (code, resp) = match open_reflection(&shard.shared.cfg, deadline, body) {
            Ok(resp) => (Code::Ok, resp),
            Err(status) => (status.code(), status_response(&status)),
        };
        ServerCounters::bump(&shard.counters().calls_by_code[code as usize]);
        return resp;
    }
    let work = async {
        // A closed semaphore cannot happen (nobody closes it); map it anyway.
        let _permit = match &limit {
            Some(sem) => Some(sem.acquire_permit(1).await.map_err(|e| {
                Status::new(Code::Unavailable, format!("connection is closing: {e}"))
            })?),
            None => None,
        };
        call(shard, method, body).await
    };
    let deadline = async {
        match deadline {
            Some(d) => glommio::timer::sleep(d).await,
            None => std::future::pending().await,
        }
        Err(Status::new(
            Code::DeadlineExceeded,
            "deadline exceeded before the call finished",
        ))
    };
    let abort = async {
        shard.abort.wait().await;
        ServerCounters::bump(&shard.counters().calls_abandoned);
        Err(Status::new(
            Code::Unavailable,
            "server is shutting down and the grace period ended before this call finished",
        ))
    };
    // Pinned in place (no moves of the large call future) and polled in order: a call that
    // completes at once never creates a timer or registers for the abort event.
    let (mut work, mut deadline, mut abort) = (pin!(work), pin!(deadline), pin!(abort));
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = work.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if let Poll::Ready(r) = deadline.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        abort.as_mut().poll(cx)
    });
    let (code, resp) = match first.await {
        Ok(resp) => (Code::Ok, resp),
        Err(status) => (status.code(), status_response(&status)),
    };
    ServerCounters::bump(&shard.counters().calls_by_code[code as usize]);
    resp
}

/// Opens a reflection stream (counted as one call, OK when it opens): its answers are sent as
/// its requests arrive (see [`reflection`]), for at most the call's deadline or
/// [`reflection::STREAM_LIMIT`].
pub(super) fn open_reflection(
    cfg: &ServerConfig,
    deadline: Option<Duration>,
    body: Incoming,
) -> Result<Response<GrpcBody>, Status> {
    if !cfg.reflection {
        return Err(Status::new(
            Code::Unimplemented,
            "server reflection is turned off on this server (serve --reflection off)",
        ));
    }
    let limit = deadline.map_or(reflection::STREAM_LIMIT, |d| {
        d.min(reflection::STREAM_LIMIT)
    });
    let stream = reflection::ReflectionStream::new(
        body,
        cfg.max_message_size,
        Box::pin(glommio::timer::sleep(limit)),
    );
    Ok(grpc::streaming_response(stream))
}

pub(super) fn decode<M: Message + Default>(bytes: bytes::Bytes, what: &str) -> Result<M, Status> {
    M::decode(bytes)
        .map_err(|e| Status::new(Code::InvalidArgument, format!("cannot decode {what}: {e}")))
}

pub(super) async fn call<H: GreetHandler>(
    shard: &Shard<H>,
    method: Method,
    body: Incoming,
) -> Result<Response<GrpcBody>, Status> {
    let msg = read_unary(body, shard.shared.cfg.max_message_size).await?;
    match method {
        Method::SayHello => {
            let req: HelloRequest = decode(msg, "helloworld.HelloRequest")?;
            let message = shard.greeter.say_hello(req.name).await?;
            Ok(ok_response(&HelloReply { message }))
        }
        Method::HealthCheck => {
            let req: HealthCheckRequest = decode(msg, "grpc.health.v1.HealthCheckRequest")?;
            match shard.shared.health.check(&req.service) {
                Some(status) => Ok(ok_response(&HealthCheckResponse {
                    status: status as i32,
                })),
                None => Err(Status::new(
                    Code::NotFound,
                    format!("unknown service `{}`", req.service),
                )),
            }
        }
        Method::PoolMetrics => {
            let _req: PoolMetricsRequest = decode(msg, "shardpool.v1.PoolMetricsRequest")?;
            let Some(source) = &shard.shared.stats else {
                return Err(Status::new(
                    Code::FailedPrecondition,
                    "no connection pool is attached to this server (serve --upstream none)",
                ));
            };
            Ok(ok_response(&pool_metrics(&source(), &shard.shared.map)))
        }
        // The serving port never changes or reveals the backends: those RPCs are served on the
        // admin listener only (admin::serve).
        Method::Backends(rpc) => Err(admin::refused_on_serving_port(rpc)),
        // A stream, opened by `handle` (or refused by the admin listener) before any request
        // is read; never a unary call.
        Method::Reflection => Err(Status::new(
            Code::Internal,
            "ServerReflectionInfo reached the unary path",
        )),
    }
}

/// Builds the PoolMetrics reply: every pool shard (with its CPU and node when the pool has one
/// shard per server shard) and the total.
pub(super) fn pool_metrics(stats: &Stats, map: &ShardMap) -> PoolMetricsResponse {
    let shards = stats
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut m = ShardPoolMetrics::from_stats(i as u32, s);
            if let Some(p) = map.places().get(i) {
                m.cpu = Some(p.cpu as u32);
                m.numa_node = Some(p.node as u32);
            }
            m
        })
        .collect();
    PoolMetricsResponse {
        shards,
        total: Some(ShardPoolMetrics::from_stats(
            stats.shards.len() as u32,
            &stats.total,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn routes_known_methods_and_names_unknown_ones() {
        assert_eq!(route("/helloworld.Greeter/SayHello"), Ok(Method::SayHello));
        assert_eq!(
            route("/grpc.health.v1.Health/Check"),
            Ok(Method::HealthCheck)
        );
        assert_eq!(
            route("/shardpool.v1.Admin/PoolMetrics"),
            Ok(Method::PoolMetrics)
        );
        let e = route("/helloworld.Greeter/SayGoodbye").unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e.message().contains("SayGoodbye"), "{e}");
        let e = route("/grpc.health.v1.Health/Watch").unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        let e = route("/nope.Svc/X").unwrap_err();
        assert!(e.message().contains("unknown service nope.Svc"), "{e}");
        assert_eq!(route("nothing").unwrap_err().code(), Code::Unimplemented);
        // Prefix matching: a service name that only starts like a known one is unknown, and a
        // path that names no method is malformed.
        let e = route("/helloworld.GreeterX/SayHello").unwrap_err();
        assert!(
            e.message().contains("unknown service helloworld.GreeterX"),
            "{e}"
        );
        let e = route("/helloworld.Greeter").unwrap_err();
        assert!(e.message().contains("malformed gRPC path"), "{e}");
        let e = route("/helloworld.Greeter/SayHello/x").unwrap_err();
        assert!(e.message().contains("unknown method SayHello/x"), "{e}");
        for (service, methods) in METHODS {
            for (name, method) in methods {
                assert_eq!(route(&format!("/{service}/{name}")), Ok(*method));
            }
        }
    }

    /// What reflection lists (the services of proto/) is what the server routes, method by
    /// method: a .proto file and the server cannot drift apart.
    #[test]
    pub(super) fn reflection_lists_exactly_the_routed_services_and_methods() {
        let listed: Vec<&str> = crate::proto::FILES
            .iter()
            .flat_map(|f| f.services.iter().copied())
            .collect();
        let routed: Vec<&str> = METHODS.iter().map(|(s, _)| *s).collect();
        let mut a = listed.clone();
        let mut b = routed.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
        for (service, methods) in METHODS {
            for (name, _) in methods {
                let symbol = format!("{service}.{name}");
                assert!(
                    crate::proto::FILES.iter().any(|f| f.defines(&symbol)),
                    "{symbol} is routed but not in proto/"
                );
            }
        }
    }

    #[test]
    pub(super) fn pool_metrics_maps_every_field_and_placement() {
        use crate::pool::ShardStats;
        use crate::topology::{Placement, Topology};
        let s = |k: u64| ShardStats {
            live: k,
            idle: k + 1,
            checked_out: k + 2,
            local_hits: k + 3,
            steals: k + 4,
            creates: k + 5,
            create_errors: k + 6,
            timeouts: k + 7,
            wait_p50_us: k + 8,
            wait_p90_us: k + 9,
            wait_p99_us: k + 10,
            wait_max_us: k + 11,
            checkouts: k + 12,
            handoffs: k + 13,
            waits: k + 14,
            closes: k + 15,
            ..ShardStats::default()
        };
        let stats = Stats {
            shards: vec![s(100), s(200)],
            total: s(1000),
        };
        let map = Topology::from_nodes(vec![(0, vec![4]), (1, vec![9])])
            .unwrap()
            .place(&Placement::AllCores, None)
            .unwrap();
        let m = pool_metrics(&stats, &map);
        assert_eq!(m.shards.len(), 2);
        let one = &m.shards[1];
        assert_eq!(
            (
                one.shard,
                one.cpu,
                one.numa_node,
                one.live,
                one.idle,
                one.checked_out,
                one.hits
            ),
            (1, Some(9), Some(1), 200, 201, 202, 203)
        );
        assert_eq!(
            (
                one.steals,
                one.creates,
                one.errors,
                one.timeouts,
                one.wait_p50_us,
                one.wait_p90_us
            ),
            (204, 205, 206, 207, 208, 209)
        );
        assert_eq!(
            (
                one.wait_p99_us,
                one.wait_max_us,
                one.checkouts,
                one.handoffs,
                one.waits,
                one.closes
            ),
            (210, 211, 212, 213, 214, 215)
        );
        let total = m.total.unwrap();
        assert_eq!((total.shard, total.live, total.cpu), (2, 1000, None));
    }
}
