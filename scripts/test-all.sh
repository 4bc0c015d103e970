#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration + interop tests, doctests, examples,
# the pool core built alone, and the loom models. Installs what the tests need (h2load, grpcio).
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
if ! python3 -c 'import grpc, grpc_tools' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools protobuf
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "the pool core alone (no glommio, hyper or tokio)"
cargo build --no-default-features --lib

step "unit, integration and interop tests"
cargo test --workspace --all-targets

step "doctests (the README's examples included)"
cargo test --doc

step "examples"
cargo run --quiet --example std_threads
cargo run --quiet --example tokio_pool

step "loom models"
./scripts/loom.sh

echo
echo "test-all: every step passed"
