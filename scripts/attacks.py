#!/usr/bin/env python3
"""The bounded attack suite: replays attacks on a release `shardpool serve` and checks each is stopped.

Each check starts its own server (gateway mode), runs a normal gRPC client beside the attack and
asserts: no panic in the log, the attack ends with a clear status, reset or close within its
bound, the normal client got 100 % success throughout, and nothing leaked afterwards (the
gateway's pool has live == idle + checked out, and the server's descriptors are back near
their count before the attack). docs/security.md ("Attacks and the limits that stop them") lists
the checks, the limit that stops each and its knob.

Usage:
    scripts/attacks.py [--bin target/release/shardpool] [--only NAME[,NAME]] [--skip NAME[,NAME]] [--list]

Needs: pip install h2 grpcio. Exits 0 when every selected check passed, 1 otherwise. Every
check is bounded (about 10-25 s each; the whole suite about 3 minutes on 2 cores).
"""

import argparse
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

try:
    import grpc
    import h2.config
    import h2.connection
    import h2.events
    import h2.errors
    import h2.exceptions
    import h2.settings
    from hyperframe.frame import ContinuationFrame, HeadersFrame
except ImportError as e:  # a missing tool must fail loudly, never skip
    sys.stderr.write(f"missing Python package ({e}); install with: pip install h2 grpcio\n")
    sys.exit(2)

# The limits under test, set short so each check finishes in seconds. Every flag is a documented
# knob of `shardpool serve` (docs/security.md); the defaults are longer but of the same kind.
SERVER_FLAGS = [
    "--handshake-timeout", "1s",
    "--conn-idle-timeout", "30s",
    "--send-stall-timeout", "2s",
    "--request-timeout", "5s",
    "--health-interval", "200ms",
    "--eject-backoff", "500ms",
]

SAY_HELLO = "/helloworld.Greeter/SayHello"
HEALTH = "/grpc.health.v1.Health/Check"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def hello_request(name: bytes) -> bytes:
    """The protobuf HelloRequest { name = 1 } as bytes (no generated code needed)."""
    return b"\x0a" + varint(len(name)) + name if name else b""


def grpc_frame(msg: bytes) -> bytes:
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


# --------------------------------------------------------------------------------------------
# Processes


class Server:
    """A `shardpool serve` process with an admin listener, its log in a temp file."""

    def __init__(self, binary, extra=(), nofile=None, backends=()):
        self.port = free_port()
        self.admin = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="attack-serve-", suffix=".log", delete=False)
        args = [binary, "serve", "--listen", f"127.0.0.1:{self.port}",
                "--admin-listen", f"127.0.0.1:{self.admin}", "--shards", "2"]
        for b in backends:
            args += ["--backend", b]
        args += SERVER_FLAGS + list(extra)
        self.args = args
        self.backends = list(backends)

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=limit)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Failed(f"server exited at start ({self.proc.returncode}):\n{self.log_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", self.admin), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise Failed("server did not start listening within 20 s")
        # The embedded origins and the first health checks settle.
        wait_until(lambda: self.serving(), 10, "the server's health is SERVING after start")

    def addr(self):
        return f"127.0.0.1:{self.port}"

    def log_text(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def client_sockets(self):
        """TCP connections this process holds on its serving port (ss(8) from iproute2)."""
        out = subprocess.run(["ss", "-Htanp", "state", "connected", "sport", "=", f":{self.port}"],
                             capture_output=True, text=True, check=True).stdout
        return sum(1 for line in out.splitlines() if f"pid={self.proc.pid}," in line)

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=3) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            # The pool-wide live count, and the idle connections summed over the shard series.
            m = re.match(r'^shardpool_pool_connections (\d+)$', line)
            if m:
                values["shardpool_pool_live"] = int(m.group(1))
            m = re.match(r'^shardpool_pool_idle\{shard="\d+"\} (\d+)$', line)
            if m:
                values["shardpool_pool_idle"] = values.get("shardpool_pool_idle", 0) + int(m.group(1))
        if values:
            # As the pool's own total did: checked out = live - idle.
            values["shardpool_pool_checked_out"] = max(
                values.get("shardpool_pool_live", 0) - values.get("shardpool_pool_idle", 0), 0)
        return values

    def serving(self):
        try:
            ch = grpc.insecure_channel(self.addr())
            call = ch.unary_unary(HEALTH, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            reply = call(b"", timeout=1)
            ch.close()
            return reply == b"\x08\x01"  # HealthCheckResponse { status: SERVING }
        except grpc.RpcError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def assert_healthy_after(self, fds_before, slack=8):
        """No panic, still running, no leaked pool connection, descriptors back near baseline."""
        check(self.proc.poll() is None, f"server died (exit {self.proc.returncode})")
        check("panicked" not in self.log_text(), "the server's log shows a panic")
        m = wait_until(lambda: self._balanced(), 10, "pool live == idle + checked out")
        check(m, "pool counts do not balance")
        # Client connections to the serving port: all gone once the clients left.
        wait_until(lambda: self.client_sockets() == 0, 15, "every client connection closed",
                   lambda: f"{self.client_sockets()} still open")
        # Upstream connections the pool keeps idle are accounted for, not leaks, until their idle
        # timeout: the connection, its duplicate on a shard that stole it, and with embedded
        # origins the origin's end, all in this process.
        ends = 2 if self.backends else 3
        pooled = lambda: ends * self.metrics().get("shardpool_pool_live", 0)  # noqa: E731
        wait_until(lambda: self.fds() <= fds_before + pooled() + slack, 15,
                   f"descriptors back near the baseline ({fds_before} + pooled + {slack})",
                   lambda: f"now {self.fds()}, pooled {pooled()}")

    def _balanced(self):
        m = self.metrics()
        if not m:
            return True  # no pool (direct Greeter): nothing to balance
        return m.get("shardpool_pool_live", 0) == m.get("shardpool_pool_idle", 0) + m.get(
            "shardpool_pool_checked_out", 0)


class Origin:
    def __init__(self, binary, name):
        self.port = free_port()
        self.proc = subprocess.Popen([binary, "origin", "--listen", f"127.0.0.1:{self.port}", "--id", name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _connects(self.port), 10, f"origin {name} listens")

    def addr(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()


def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_until(pred, seconds, what, detail=lambda: ""):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    raise Failed(f"not within {seconds} s: {what} {detail()}")


class NormalClient:
    """A well-behaved client calling SayHello in a loop on its own channel; every call must succeed."""

    def __init__(self, addr):
        self.addr = addr
        self.ok = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        ch = grpc.insecure_channel(self.addr)
        call = ch.unary_unary(SAY_HELLO, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        while not self._stop.is_set():
            try:
                reply = call(hello_request(b"normal"), timeout=3)
                if b"normal" not in reply:
                    self.failures.append(f"wrong reply {reply!r}")
                else:
                    self.ok += 1
            except grpc.RpcError as e:
                self.failures.append(f"{e.code().name}: {e.details()}")
            time.sleep(0.005)
        ch.close()

    def finish(self):
        self._stop.set()
        self._thread.join(10)
        check(self.ok > 0, "the normal client completed no call")
        check(not self.failures,
              f"the normal client failed {len(self.failures)} of {self.ok + len(self.failures)} calls: "
              f"{sorted(set(self.failures))[:3]}")
        return self.ok


# --------------------------------------------------------------------------------------------
# Raw HTTP/2 connections


class H2:
    """A hand-driven HTTP/2 client connection (the h2 package) for crafting misbehaviour."""

    def __init__(self, addr_port, settings=None, validate=True):
        self.sock = socket.create_connection(("127.0.0.1", addr_port), timeout=5)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                           validate_outbound_headers=validate,
                                           validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()
        self.closed = False
        self.goaway = None
        self.resets = {}
        self.trailers = {}
        self.ended = set()
        self.window_updates = 0

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, stream_id, path=SAY_HELLO, end_stream=False, extra=()):
        self.conn.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "attack"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra,
        ], end_stream=end_stream)

    def pump(self, seconds):
        """Reads and handles events for up to `seconds`; returns False once the connection ended."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        except OSError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Frames after the connection ended on our side (e.g. a PING after GOAWAY).
            self.closed = True
            return False
        for ev in events:
            if isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, h2.events.TrailersReceived):
                self.trailers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.ResponseReceived):
                hs = dict(ev.headers)
                if "grpc-status" in hs:  # trailers-only response
                    self.trailers[ev.stream_id] = hs
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_updates += 1
            elif isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        try:
            self.flush()
        except OSError:
            self.closed = True
            return False
        return True

    def wait_closed(self, seconds):
        """Pumps until the server closes the connection (or sent GOAWAY); False on timeout."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            if not self.pump(min(0.2, max(0.01, deadline - time.time()))) or self.goaway is not None:
                return True
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# The checks. Each takes the binary, returns a one-line summary, and raises Failed.


def attack_rapid_reset(binary):
    srv = Server(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        c = H2(srv.port)
        sid = 1
        try:
            for _ in range(2000):
                c.headers(sid)
                c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                sid += 2
                c.flush()
        except OSError:
            pass  # the server hung up mid-flood: what we want
        check(c.wait_closed(5), "the server neither sent GOAWAY nor closed after 2,000 rapid resets")
        c.close()
        normal.finish()
        srv.assert_healthy_after(before)
        return f"GOAWAY {c.goaway!r} after at most {(sid - 1) // 2} resets"
    finally:
        srv.stop()


def attack_continuation_flood(binary):
    srv = Server(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        sock.sendall(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # empty SETTINGS
        hdr = HeadersFrame(1)
        hdr.data = b"\x82\x86\x84"  # :method GET, :scheme http, :path / (static table)
        sock.sendall(hdr.serialize())
        sent = 0
        block = b"\x40\x05x-bad\x8f" + b"a" * 15  # literal header with a junk value, never ended
        try:
            while sent < 64 * 1024 * 1024:
                cont = ContinuationFrame(1)
                cont.data = block * 800
                sock.sendall(cont.serialize())
                sent += len(cont.data)
        except OSError:
            pass
        sock.settimeout(5)
        closed = False
        try:
            while sock.recv(65536):
                pass
            closed = True
        except (socket.timeout, OSError) as e:
            closed = not isinstance(e, socket.timeout)
        sock.close()
        check(closed or sent < 64 * 1024 * 1024, "the server kept reading a 64 MiB CONTINUATION flood")
        normal.finish()
        srv.assert_healthy_after(before)
        return f"connection closed after {sent // 1024} KiB of CONTINUATION"
    finally:
        srv.stop()


def attack_slowloris(binary):
    srv = Server(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.setblocking(False)
            socks.append(s)
        kinds = {"silent": socks[:70], "drip": socks[70:140], "preface_only": socks[140:]}
        for s in kinds["preface_only"]:
            s.sendall(PREFACE)
        start = time.time()
        open_ = set(range(len(socks)))
        i = 0
        while open_ and time.time() - start < 8:
            for idx in list(open_):
                s = socks[idx]
                try:
                    if 70 <= idx < 140 and i < len(PREFACE):
                        s.send(PREFACE[i:i + 1])
                    if s.recv(4096) == b"":
                        open_.discard(idx)
                except BlockingIOError:
                    pass
                except OSError:
                    open_.discard(idx)
            i += 1
            time.sleep(0.4)
        took = time.time() - start
        for s in socks:
            s.close()
        check(not open_, f"{len(open_)} of 200 slow connections still open after {took:.1f} s "
                         "(handshake timeout 1 s)")
        normal.finish()
        srv.assert_healthy_after(before)
        return f"200 slow connections closed within {took:.1f} s"
    finally:
        srv.stop()


def attack_zero_window(binary):
    srv = Server(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        c = H2(srv.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        streams = list(range(1, 101, 2))  # 50 calls: their requests fit the 64 KiB connection window
        for sid in streams:
            c.headers(sid)
            c.conn.send_data(sid, grpc_frame(hello_request(b"z" * 1000)), end_stream=True)
        c.flush()
        start = time.time()
        # Never acknowledge data: h2 only opens windows when asked, and the initial window is 0.
        c.conn.acknowledge_received_data = lambda *a, **k: None
        done = False
        while time.time() - start < 10:
            if not c.pump(0.2) or c.goaway is not None:
                done = True
                break
            if all(s in c.resets or s in c.trailers for s in streams):
                done = True
                break
        took = time.time() - start
        c.close()
        check(done, f"a zero-window reader kept {len(streams)} answered calls for {took:.1f} s "
                    "(send-stall timeout 2 s)")
        normal.finish()
        srv.assert_healthy_after(before)
        how = f"GOAWAY {c.goaway!r}" if c.goaway is not None else ("closed" if c.closed else "streams reset")
        return f"zero-window reader ended after {took:.1f} s ({how})"
    finally:
        srv.stop()


def attack_bad_frames(binary):
    srv = Server(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        c = H2(srv.port)
        # Stream 1: a length prefix above the largest message (4 MiB default).
        c.headers(1)
        c.conn.send_data(1, b"\x00" + (64 * 1024 * 1024).to_bytes(4, "big") + b"x" * 100, end_stream=True)
        # Stream 3: a prefix promising 100 bytes, then the stream ends after 10.
        c.headers(3)
        c.conn.send_data(3, b"\x00" + (100).to_bytes(4, "big") + b"y" * 10, end_stream=True)
        # Stream 5: a compressed flag the server never negotiated.
        c.headers(5)
        c.conn.send_data(5, b"\x01" + (3).to_bytes(4, "big") + b"abc", end_stream=True)
        c.flush()
        deadline = time.time() + 5
        while time.time() < deadline and not all(s in c.trailers or s in c.resets for s in (1, 3, 5)):
            if not c.pump(0.2):
                break
        c.close()
        got = {}
        for sid, want in ((1, "8"), (3, None), (5, None)):
            t = c.trailers.get(sid)
            check(t is not None, f"stream {sid}: no gRPC status (resets: {c.resets})")
            status = t.get("grpc-status")
            check(status not in (None, "0"), f"stream {sid}: status {status}, wanted an error")
            if want:
                check(status == want, f"stream {sid}: status {status}, wanted {want} (RESOURCE_EXHAUSTED)")
            check(t.get("grpc-message"), f"stream {sid}: status {status} without a message")
            got[sid] = status
        normal.finish()
        srv.assert_healthy_after(before)
        return f"oversized -> {got[1]}, truncated -> {got[3]}, bad compression flag -> {got[5]}"
    finally:
        srv.stop()


def _many_bodies(binary, calls, size):
    srv = Server(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        c = H2(srv.port)
        c.conn.max_outbound_frame_size = 16384
        body = grpc_frame(hello_request(b"b" * (size - 16)))
        streams = [1 + 2 * i for i in range(calls)]
        pending = {}
        for sid in streams:
            try:
                c.headers(sid)
            except h2.exceptions.TooManyStreamsError:
                break  # the server's MAX_CONCURRENT_STREAMS: the rest would be refused by protocol
            pending[sid] = 0
        c.flush()
        opened = len(pending)
        start = time.time()
        # Interleave the bodies fairly, as a multiplexing client does: a chunk per stream in turn,
        # each round starting where the connection window ran out in the last one.
        turn = 0
        while time.time() - start < 20:
            progressed = False
            order = list(pending)
            turn = turn % len(order) if order else 0
            for sid in order[turn:] + order[:turn]:
                turn += 1
                if c.conn.outbound_flow_control_window <= 0:
                    break
                if sid in c.resets or sid in c.trailers:
                    del pending[sid]
                    continue
                off = pending[sid]
                try:
                    room = min(c.conn.local_flow_control_window(sid), 16384, len(body) - off)
                except h2.exceptions.StreamClosedError:
                    del pending[sid]
                    continue
                if room > 0:
                    end = off + room == len(body)
                    c.conn.send_data(sid, body[off:off + room], end_stream=end)
                    pending[sid] = off + room
                    progressed = True
                    if end:
                        del pending[sid]
            c.flush()
            if not c.pump(0.001 if progressed else 0.1):
                break
            if all(s in c.resets or s in c.trailers for s in streams[:opened]):
                break
        took = time.time() - start
        c.close()
        ok = sum(1 for s in streams[:opened] if c.trailers.get(s, {}).get("grpc-status") == "0")
        refused = sum(1 for s in streams[:opened] if c.resets.get(s) == h2.errors.ErrorCodes.REFUSED_STREAM
                      or c.trailers.get(s, {}).get("grpc-status") in ("8", "14"))
        other = opened - ok - refused
        check(other == 0, f"{other} of {opened} calls neither completed nor were refused at once "
                          f"(ok {ok}, refused {refused}, {took:.1f} s; statuses: "
                          f"{sorted({c.trailers.get(s, {}).get('grpc-status') for s in streams[:opened]} - {'0'}, key=str)})")
        normal.finish()
        srv.assert_healthy_after(before)
        return (f"{calls} calls x {size // 1024} KB on one connection: {ok} ok, {refused} refused, "
                f"{calls - opened} beyond MAX_CONCURRENT_STREAMS, {took:.1f} s")
    finally:
        srv.stop()


def attack_deadlock_300(binary):
    return _many_bodies(binary, 300, 60 * 1024)


def attack_deadlock_1000(binary):
    return _many_bodies(binary, 1000, 17 * 1024)


def attack_descriptor_storm(binary):
    limit = 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    srv = Server(binary, nofile=limit, extra=["--upstream", "none"])
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        socks = []
        refused = 0
        for _ in range(limit + 300):
            try:
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
                s.sendall(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                socks.append(s)
            except OSError:
                refused += 1
        time.sleep(2)
        check(srv.serving(), "health is not SERVING during the storm")
        normal_during = NormalClient(srv.addr())
        time.sleep(2)
        normal_during.finish()
        for s in socks:
            s.close()
        normal.finish()
        log = srv.log_text()
        accept_lines = [line for line in log.splitlines() if "accept" in line.lower() and
                        ("WARN" in line or "ERROR" in line)]
        check(len(accept_lines) <= 12, f"{len(accept_lines)} accept warnings in about 5 s")
        srv.assert_healthy_after(before)
        return (f"{len(socks)} idle connections opened under nofile={limit} ({refused} refused); "
                f"normal client served; {len(accept_lines)} accept log lines")
    finally:
        srv.stop()


def _gateway_with_origins(binary):
    origins = [Origin(binary, "a"), Origin(binary, "b")]
    srv = Server(binary, backends=[o.addr() for o in origins],
                 extra=["--upstream-timeout", "500ms", "--eject-after", "1"])
    return origins, srv


def attack_origin_killed(binary):
    origins, srv = _gateway_with_origins(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        time.sleep(1)
        origins[0].proc.kill()
        origins[0].proc.wait()
        time.sleep(2)
        n = normal.finish()
        srv.assert_healthy_after(before)
        return f"origin killed under load: {n} calls, none failed"
    finally:
        srv.stop()
        for o in origins:
            o.stop()


def attack_origin_stalled(binary):
    origins, srv = _gateway_with_origins(binary)
    try:
        before = srv.fds()
        normal = NormalClient(srv.addr())
        time.sleep(1)
        origins[0].proc.send_signal(signal.SIGSTOP)
        time.sleep(3)
        origins[0].proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)
        n = normal.finish()
        srv.assert_healthy_after(before)
        return f"origin stalled 3 s under load: {n} calls, none failed"
    finally:
        srv.stop()
        for o in origins:
            o.stop()


CHECKS = {
    "rapid_reset": attack_rapid_reset,
    "continuation_flood": attack_continuation_flood,
    "slowloris": attack_slowloris,
    "zero_window": attack_zero_window,
    "bad_frames": attack_bad_frames,
    "deadlock_300": attack_deadlock_300,
    "deadlock_1000": attack_deadlock_1000,
    "descriptor_storm": attack_descriptor_storm,
    "origin_killed": attack_origin_killed,
    "origin_stalled": attack_origin_stalled,
}


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(root, "target", "release", "shardpool"))
    p.add_argument("--only", default="")
    p.add_argument("--skip", default="")
    p.add_argument("--list", action="store_true")
    p.add_argument("--server-flags", default=None,
                   help="replace SERVER_FLAGS (space-separated), e.g. to replay against an older build")
    a = p.parse_args()
    if a.list:
        print("\n".join(CHECKS))
        return 0
    names = [n for n in a.only.split(",") if n] or list(CHECKS)
    skip = {n for n in a.skip.split(",") if n}
    unknown = [n for n in names + list(skip) if n not in CHECKS]
    if unknown:
        sys.stderr.write(f"unknown check(s) {unknown}; --list shows them\n")
        return 2
    if not os.access(a.bin, os.X_OK):
        sys.stderr.write(f"no server binary at {a.bin}; build it with: cargo build --release\n")
        return 2
    if a.server_flags is not None:
        SERVER_FLAGS[:] = a.server_flags.split()
    failed = []
    for name in names:
        if name in skip:
            continue
        start = time.time()
        try:
            summary = CHECKS[name](a.bin)
            print(f"pass  {name:20} {time.time() - start:5.1f} s  {summary}", flush=True)
        except Failed as e:
            failed.append(name)
            print(f"FAIL  {name:20} {time.time() - start:5.1f} s  {e}", flush=True)
    print(f"\nattacks: {len(names) - len(skip & set(names)) - len(failed)} passed, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
