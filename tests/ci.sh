#!/usr/bin/env bash
# The project's one test command (README "Run every test"; .ci/run runs exactly it).
# On a fresh Debian machine with only Rust and gcc it installs what is missing
# (as root, with apt-get; Node.js 20 from the npm registry when the machine has no
# Node 20+) and runs every test: format, lints, unit, integration (SIPp, real
# sockets), doc and bench-smoke tests, the fuzz corpus replay, the SDK's node
# tests and the browser end-to-end suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)   # libopus is built by cmake
command -v make >/dev/null || need+=(make)     # cmake's default generator
command -v c++ >/dev/null || need+=(g++)       # libFuzzer (fuzz target build)
command -v sipp >/dev/null || need+=(sip-tester) # SIPp: SIP interop and load tests
command -v baresip >/dev/null || need+=(baresip)        # real UA (caller): tests/tests/real_ua.rs
command -v sox >/dev/null || need+=(sox)                # reads recordings: tests/tests/recording.rs
command -v ffprobe >/dev/null || need+=(ffmpeg)         # checks Ogg Opus recordings (ffprobe, ffmpeg)
command -v opusinfo >/dev/null || need+=(opus-tools)    # checks Ogg Opus recordings (opusinfo)
command -v linphonec >/dev/null || need+=(linphone-cli) # real UA (far end): tests/tests/real_ua.rs
command -v svwar >/dev/null || need+=(sipvicious)       # scanner, cracker: tests/tests/sipvicious.rs
command -v nft >/dev/null || need+=(nftables)           # a phone behind NAT: tests/tests/real_ua.rs
command -v ip >/dev/null || need+=(iproute2)            # its network namespace
command -v kamailio >/dev/null || need+=(kamailio)      # the SIP front door: tests/tests/front_door.rs
command -v haproxy >/dev/null || need+=(haproxy)        # the browsers' front door (its config is checked)
command -v redis-server >/dev/null || need+=(redis-server) # [cluster]: tests/tests/cluster.rs
[ -n "${CHROMIUM:-}" ] || [ -x /usr/bin/chromium ] || need+=(chromium) # browser e2e
command -v curl >/dev/null || need+=(curl ca-certificates) # Node.js, when missing
command -v python3 >/dev/null || need+=(python3)           # checks what curl fetched
# Python packages (the FastAPI sample's unless python3 has them, the OpenAPI
# validator) go into venvs.
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  echo "ci: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Node.js 20+ for the SDK tests and the browser suite (tests/tools/node.sh).
source tests/tools/node.sh
ensure_node

export CARGO_TERM_COLOR=never
# One cold build: incremental artifacts would only cost disk (3 GB) and time.
export CARGO_INCREMENTAL=0
step() { echo; echo "=== $* ($(date +%T))"; }
start=$(date +%s)

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "binaries (sbc, test-carrier, test-agent: the real-socket tests run them)"
cargo build --workspace --bins --locked

step "tests (unit, integration, doc)"
cargo test --workspace --locked

step "rustdoc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "SDK dependencies (npm ci in sbc/web; the FastAPI sample's requirements)"
# The SDK's devDependencies (TypeScript, React, the test renderer, Express): installed
# from the lock file, skipped when node_modules already holds that lock's install.
sdk_node_modules sbc/web
# fastapi, httpx, uvicorn: the machine's python3 when it has them, else a venv in
# target/tools (re-made when requirements.txt changes), first on PATH for the tests.
req=sbc/web/examples/token-fastapi/requirements.txt
if ! python3 -c 'import fastapi, httpx' 2>/dev/null; then
  venv=target/tools/py-samples
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" >"$venv/.requirements.sha256"
  fi
  export PATH="$PWD/$venv/bin:$PATH"
fi

step "OpenAPI document validates (openapi-spec-validator, in a venv in target/tools)"
oreq=tests/tools/openapi-requirements.txt
ovenv=target/tools/py-openapi
want=$(sha256sum "$oreq" | cut -d' ' -f1)
if [ "$(cat "$ovenv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  rm -rf "$ovenv"
  python3 -m venv "$ovenv"
  "$ovenv/bin/pip" install --quiet --disable-pip-version-check -r "$oreq"
  echo "$want" >"$ovenv/.requirements.sha256"
fi
"$ovenv/bin/openapi-spec-validator" sbc/docs/openapi.json

step "SDK and demo page (node; every test must run, none skipped)"
# The TAP copy marks every skipped test or suite with "# SKIP" (the spec summary's
# "skipped" count leaves out skipped suites).
node --test --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination=target/sdk-node-tests.tap sbc/web/test/
if grep -q '# SKIP' target/sdk-node-tests.tap; then
  grep '# SKIP' target/sdk-node-tests.tap >&2
  echo "ci: SDK tests were skipped (reasons above); every one must run" >&2
  exit 1
fi

step "bench smoke (each bench once, debug build)"
cargo test --workspace --benches --locked

step "fuzz targets build"
CARGO_TARGET_DIR=target cargo build --manifest-path fuzz/Cargo.toml --bins --locked

step "browser end-to-end (Chromium against the real sbc)"
tests/e2e/run.sh

step "all passed in $(($(date +%s) - start)) s"
