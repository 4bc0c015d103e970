#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target (fuzz/corpus/<target>/seed-*); rerun after a format change.

Seeds are small valid and near-valid inputs, so the fuzzer starts from the shapes each decoder
accepts. Files a fuzzer found (crashes turned into regressions) live beside them as regress-*.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def grpc(msg, flag=0, declared=None):
    return bytes([flag]) + (len(msg) if declared is None else declared).to_bytes(4, "big") + msg


def frame(payload):
    return len(payload).to_bytes(4, "big") + payload


hello = b"\x0a" + varint(3) + b"Ada"
health = b"\x0a" + varint(20) + b"helloworld.Greeter\x00\x00"[:20]
add = b"\x0a" + varint(14) + b"127.0.0.1:7001"
SEEDS = {
    "grpc_unary": {
        # byte 0: max message size selector (255 = 4 MiB); byte 1: chunking seed
        "hello": b"\xff\x03" + grpc(hello),
        "hello-split": b"\x10\x05" + grpc(hello),
        "empty-message": b"\xff\x00" + grpc(b""),
        "health": b"\xff\x02" + grpc(health),
        "add-backend": b"\xff\x01" + grpc(add),
        "too-large": b"\x04\x01" + grpc(hello),
        "compressed": b"\xff\x01" + grpc(hello, flag=1),
        "bad-flag": b"\xff\x01" + grpc(hello, flag=7),
        "truncated": b"\xff\x01" + grpc(hello, declared=40),
        "two-messages": b"\xff\x06" + grpc(hello) + grpc(hello),
        "short-prefix": b"\xff\x01\x00\x00",
        "bad-varint": b"\xff\x01" + grpc(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
    },
    "grpc_timeout": {
        "ms": b"250m", "hours": b"2H", "max-digits": b"99999999S", "nine-digits": b"123456789S",
        "nanos": b"1n", "micros": b"7u", "minutes": b"3M", "no-unit": b"15", "unit-only": b"S",
        "bad-unit": b"10x", "sign": b"-1S", "empty": b"",
    },
    "origin_frames": {
        "hello-request": frame(b"\x01Ada"),
        "ping-request": frame(b"\x02"),
        "ok-response": frame(b"\x00Hello, Ada!"),
        "bad-request-response": frame(b"\x01unknown op 9"),
        "too-large-response": frame(b"\x02frame length 0"),
        "two-frames": frame(b"\x01a") + frame(b"\x02"),
        "zero-length": b"\x00\x00\x00\x00",
        "huge-length": b"\x00\x01\x00\x01" + b"x" * 8,
        "eof-in-prefix": b"\x00\x00",
        "eof-in-payload": b"\x00\x00\x00\x09\x01ab",
        "not-utf8": frame(b"\x01\xff\xfe"),
        "unknown-op": frame(b"\x09name"),
    },
    "config_toml": {
        "empty": b"",
        "server-knobs": b'listen = "127.0.0.1:50051"\nshards = 2\nrequest_timeout = "5s"\nmax_message_size = "1MiB"\n',
        "limits": b'handshake_timeout = "10s"\nconn_idle_timeout = "off"\nsend_stall_timeout = "30s"\nmax_concurrent_streams = "auto"\nmax_connections_per_shard = "auto"\n',
        "admin": b'admin_listen = "9100"\nadmin_max_connections = 8\nadmin_read_timeout = "2s"\n',
        "upstream": b'[upstream]\nbackends = ["127.0.0.1:7001", "[::1]:7002"]\nlb = "p2c"\npool_max_size = 64\nbackend_allow = "127.0.0.0/8,::1/128"\n',
        "unknown-key": b'listne = "x"\n',
        "bad-value": b'shards = -5\n',
        "upstream-not-table": b'upstream = 3\n',
        "not-toml": b'[[[\n',
        "nested": b'listen = { a = 1 }\n',
    },
    "backends_file": {
        "two": b'backends = ["127.0.0.1:7001", "127.0.0.1:7002"]\n',
        "v6": b'backends = ["[::1]:7001"]\n',
        "empty-list": b'backends = []\n',
        "missing": b'other = 1\n',
        "not-string": b'backends = [7001]\n',
        "bad-addr": b'backends = ["localhost:7001"]\n',
        "not-toml": b'backends = [\n',
    },
    "cli_values": {
        # byte 0 picks the parser (see cli/src/cli/fuzzing.rs), the rest is the value
        "duration": b"\x0030s", "duration-frac": b"\x001.5ms", "positive-zero": b"\x010s",
        "opt-off": b"\x02off", "size": b"\x0364KiB", "size-overflow": b"\x0399999999999GiB",
        "window": b"\x042GiB", "num": b"\x05256", "bool": b"\x06yes", "addr": b"\x07127.0.0.1:1",
        "admin-port": b"\x089100", "streams-auto": b"\x09auto", "count-off": b"\x0aoff",
        "cidr": b"\x0b10.0.0.0/8,::1/128", "cidr-bad": b"\x0b10.0.0.0/33", "unicode-unit": b"\x005\xc2\xb5s",
        "huge-duration": b"\x001e300h",
    },
}

for target, seeds in SEEDS.items():
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, f"seed-{name}"), "wb") as f:
            f.write(data)
print("seeds written:", {t: len(s) for t, s in SEEDS.items()})
