#!/usr/bin/env bash
# Builds a static plinth-agent for an architecture and copies it to OUT.
#   scripts/build-agent.sh amd64|arm64 OUT
# amd64 uses the machine's Rust toolchain. arm64 uses it too when it has the
# aarch64-unknown-linux-gnu target (rustup target add); otherwise Debian's
# rustc-web, whose ARM64 standard library comes as libstd-rust-web-dev:arm64:
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# Only the agent's own dependencies are built (the `standalone` bin of the
# plinth-agent package), not the server's.
set -euo pipefail
arch=${1:?usage: build-agent.sh amd64|arm64 OUT}
out=${2:?usage: build-agent.sh amd64|arm64 OUT}
repo=$(cd "$(dirname "$0")/.." && pwd)
cargo=cargo
case "$arch" in
  amd64) triple=x86_64-unknown-linux-gnu ;;
  arm64)
    triple=aarch64-unknown-linux-gnu
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    command -v aarch64-linux-gnu-gcc >/dev/null || { echo "needs gcc-aarch64-linux-gnu and libc6-dev-arm64-cross" >&2; exit 1; }
    if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$triple" ]; then
      [ -d /usr/lib/rustlib/$triple ] && [ -x /usr/bin/rustc ] \
        || { echo "no ARM64 Rust standard library: rustup target add $triple, or Debian's rustc-web with libstd-rust-web-dev:arm64" >&2; exit 1; }
      export RUSTC=/usr/bin/rustc
      cargo=/usr/bin/cargo
    fi ;;
  *) echo "unknown architecture $arch (amd64, arm64)" >&2; exit 2 ;;
esac
cd "$repo"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true \
  "$cargo" build --release --locked -q -p plinth-agent --features standalone --bin plinth-agent \
  --target "$triple" --target-dir "target/agent-$arch"
mkdir -p "$(dirname "$out")"
cp "target/agent-$arch/$triple/release/plinth-agent" "$out.tmp"
mv "$out.tmp" "$out"
