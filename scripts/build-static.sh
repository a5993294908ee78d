#!/usr/bin/env bash
# Builds the one static `tidemark` binary into build/tidemark: musl when the
# toolchain has (or can add) the target, else glibc with crt-static.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
musl=x86_64-unknown-linux-musl
mkdir -p build
if rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl" >/dev/null 2>&1; then
    cargo build --release --locked --target "$musl" -p tidemark
    cp "target/$musl/release/tidemark" build/tidemark.new
else
    echo "build: musl target unavailable; linking glibc statically (crt-static)"
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu -p tidemark
    cp target/x86_64-unknown-linux-gnu/release/tidemark build/tidemark.new
fi
mv build/tidemark.new build/tidemark
# The test build: the same code with failpoints compiled in (tests crash or
# fail it at exact points through FAILPOINTS=...) and the tests' hooks
# (support-ssh --assume-console, --seconds). Never shipped.
mkdir -p build/test
if rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
    cargo build --release --locked --target "$musl" -p tidemark --features test-build
    cp "target/$musl/release/tidemark" build/test/tidemark.new
    # Leave the shipped build as the newest artifact of the two.
    cargo build --release --locked --target "$musl" -p tidemark
else
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu -p tidemark --features test-build
    cp target/x86_64-unknown-linux-gnu/release/tidemark build/test/tidemark.new
fi
mv build/test/tidemark.new build/test/tidemark
# Test-only helpers (the WAN emulator) need not be static.
cargo build --release --locked -p wanproxy
file build/tidemark | grep -q "statically linked\|static-pie linked" || { echo "build: build/tidemark is not static" >&2; exit 1; }
