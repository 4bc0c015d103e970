#!/usr/bin/env python3
"""Python grpcio interop client for `shardpool serve`.

Compiles the repository's proto/*.proto with grpc_tools (no system protoc needed) into a temporary
directory, then checks SayHello, Health/Check, Admin/PoolMetrics, error statuses and many
concurrent calls on one channel and on many channels. Exits 0 when every check passed, 1 with
the failing check otherwise.

Needs: pip install grpcio grpcio-tools protobuf

Usage: grpc_client.py --addr 127.0.0.1:50051 --max-message-size 65536 [--expect-pool N]
"""

import argparse
import concurrent.futures
import importlib
import os
import sys
import tempfile

try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # a missing tool must fail loudly, never skip
    sys.stderr.write(f"missing Python package ({e}); install with: pip install grpcio grpcio-tools protobuf\n")
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))
# The .proto files the library is generated from (proto/ at the repository root).
PROTOS = os.path.join(HERE, "..", "..", "proto")
TIMEOUT = 10  # seconds per call


def compile_protos(out_dir):
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = ["helloworld.proto", "health.proto", "shardpool_admin.proto"]
    rc = protoc.main(
        ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + files
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    mods = {}
    for name in ["helloworld", "health", "shardpool_admin"]:
        mods[name] = importlib.import_module(f"{name}_pb2")
        mods[name + "_grpc"] = importlib.import_module(f"{name}_pb2_grpc")
    return mods


def expect_error(fn, code, contains=None):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        if contains is not None:
            assert contains in (e.details() or ""), f"expected {contains!r} in {e.details()!r}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--max-message-size", type=int, required=True)
    ap.add_argument("--expect-pool", type=int, default=None, help="pool shard count, if a pool is attached")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as out:
        m = compile_protos(out)
        hw, hw_grpc = m["helloworld"], m["helloworld_grpc"]
        health, health_grpc = m["health"], m["health_grpc"]
        admin, admin_grpc = m["shardpool_admin"], m["shardpool_admin_grpc"]
        checks = 0

        with grpc.insecure_channel(args.addr) as ch:
            greeter = hw_grpc.GreeterStub(ch)
            r = greeter.SayHello(hw.HelloRequest(name="python"), timeout=TIMEOUT)
            assert r.message == "Hello, python!", r.message
            r = greeter.SayHello(hw.HelloRequest(name="héllo ✓"), timeout=TIMEOUT)
            assert r.message == "Hello, héllo ✓!", r.message
            checks += 2

            health_stub = health_grpc.HealthStub(ch)
            serving = health.HealthCheckResponse.SERVING
            for svc in ["", "helloworld.Greeter", "grpc.health.v1.Health", "shardpool.v1.Admin"]:
                r = health_stub.Check(health.HealthCheckRequest(service=svc), timeout=TIMEOUT)
                assert r.status == serving, (svc, r.status)
                checks += 1
            expect_error(
                lambda: health_stub.Check(health.HealthCheckRequest(service="no.Such"), timeout=TIMEOUT),
                grpc.StatusCode.NOT_FOUND,
                "no.Such",
            )
            checks += 1

            admin_stub = admin_grpc.AdminStub(ch)
            if args.expect_pool is None:
                expect_error(
                    lambda: admin_stub.PoolMetrics(admin.PoolMetricsRequest(), timeout=TIMEOUT),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "no connection pool",
                )
            else:
                r = admin_stub.PoolMetrics(admin.PoolMetricsRequest(), timeout=TIMEOUT)
                assert len(r.shards) == args.expect_pool, r
                assert r.HasField("total") and r.total.shard == args.expect_pool, r
                assert all(s.HasField("cpu") for s in r.shards), r
            checks += 1

            # Unknown method → UNIMPLEMENTED.
            nope = ch.unary_unary(
                "/helloworld.Greeter/SayGoodbye",
                request_serializer=hw.HelloRequest.SerializeToString,
                response_deserializer=hw.HelloReply.FromString,
            )
            expect_error(lambda: nope(hw.HelloRequest(name="x"), timeout=TIMEOUT), grpc.StatusCode.UNIMPLEMENTED)
            # Too large → RESOURCE_EXHAUSTED.
            big = hw.HelloRequest(name="x" * (args.max_message_size + 1))
            expect_error(lambda: greeter.SayHello(big, timeout=TIMEOUT), grpc.StatusCode.RESOURCE_EXHAUSTED)
            # gzip-compressed request: the server speaks identity only → UNIMPLEMENTED.
            expect_error(
                lambda: greeter.SayHello(hw.HelloRequest(name="z"), timeout=TIMEOUT, compression=grpc.Compression.Gzip),
                grpc.StatusCode.UNIMPLEMENTED,
            )
            checks += 3

            # Many concurrent calls on one channel (one HTTP/2 connection).
            futs = [greeter.SayHello.future(hw.HelloRequest(name=f"c{i}"), timeout=TIMEOUT) for i in range(300)]
            for i, f in enumerate(futs):
                assert f.result().message == f"Hello, c{i}!"
            checks += 1

        # Many channels (connections), used from several threads at once.
        def on_own_channel(c):
            # A distinct channel argument keeps grpcio from sharing one subchannel.
            with grpc.insecure_channel(args.addr, options=[("shardpool.test.channel", c)]) as ch2:
                stub = hw_grpc.GreeterStub(ch2)
                futs = [stub.SayHello.future(hw.HelloRequest(name=f"{c}-{i}"), timeout=TIMEOUT) for i in range(25)]
                return all(f.result().message == f"Hello, {c}-{i}!" for i, f in enumerate(futs))

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
            assert all(ex.map(on_own_channel, range(24)))
        checks += 1

        print(f"python grpcio interop: {checks} checks passed against {args.addr}")


if __name__ == "__main__":
    main()
