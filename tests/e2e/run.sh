#!/usr/bin/env bash
# Browser end-to-end tests (tests/e2e/README.md): Debian's Chromium, driven by
# playwright-core, against the real `sbc` binary and `test-carrier` SIP peers, on
# loopback. Installs what is missing (as root, with apt-get; npm ci), builds the
# two binaries and runs every scenario. Arguments are passed to `node --test`
# (e.g. a file name to run one scenario).
#
#   tests/e2e/run.sh                        # everything
#   tests/e2e/run.sh 3-outbound.test.mjs    # one scenario
#
# Screenshots and logs go to $E2E_ARTIFACTS (default: a new temp dir, printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
e2e=$root/tests/e2e

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  echo "e2e: installing chromium"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# Node.js 20+ and playwright-core, fetched and checked when missing.
source "$root/tests/tools/node.sh"
ensure_node
e2e_node_modules "$e2e"
# The cross-origin scenarios start the SDK's sample token backend (Express).
sdk_node_modules "$root/sbc/web"

echo "e2e: building sbc and test-carrier"
# --workspace, as tests/ci.sh builds them: the same feature set reuses its artifacts.
cargo build --locked --workspace --bins

export E2E_ARTIFACTS="${E2E_ARTIFACTS:-$(mktemp -d "${TMPDIR:-/tmp}/sbc-e2e-XXXXXX")}"
echo "e2e: screenshots and logs in $E2E_ARTIFACTS"
cd "$e2e"
start=$(date +%s)
status=0
node --test --test-concurrency=1 --test-reporter=spec "$@" || status=$?
echo "e2e: $( ((status == 0)) && echo passed || echo FAILED ) in $(($(date +%s) - start)) s; screenshots and logs in $E2E_ARTIFACTS"
exit $status
