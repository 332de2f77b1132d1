#!/usr/bin/env bash
# The cluster's full run (issue 21), on one machine on loopback: Redis,
# Kamailio and haproxy from Debian in front of sbc nodes on 127.0.0.x, SIPp
# and test-carrier as the carrier, headless operators and one Chromium page.
# Each scenario is a system test (tests/tests/cluster.rs, front_door.rs) or a
# browser scenario (tests/e2e/16-cluster.test.mjs) run at full size, then the
# calls-per-second ramp (tests/cluster/cps.sh); a table of what each printed
# closes the run. `tests/ci.sh` runs the same tests at their small default
# sizes (about a minute and a half).
#
#   tests/cluster/run.sh                  # everything (as root: the nftables cut)
#   CLUSTER_RACES=200 tests/cluster/run.sh
#
# Sizes: CLUSTER_RACES (racing accepts, default 1000), CLUSTER_FAILOVER_CALLS
# (calls up when their owner is killed, default 30), CLUSTER_REDIS_OUTAGE_SECS
# (default 10), CPS_SECS and CPS_RATES (default 10 s at 100 200 400).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
export CLUSTER_RACES="${CLUSTER_RACES:-1000}"
export CLUSTER_FAILOVER_CALLS="${CLUSTER_FAILOVER_CALLS:-30}"
export CLUSTER_REDIS_OUTAGE_SECS="${CLUSTER_REDIS_OUTAGE_SECS:-10}"
read -r -a rates <<<"${CPS_RATES:-100 200 400}"
out="$(mktemp -d /tmp/cluster-run.XXXXXX)"
echo "cluster run: logs in $out"

cargo build --locked -p sbc -p integration-tests --bins
ignored=()
if [ "$(id -u)" = 0 ] && command -v nft >/dev/null; then
  ignored=(--include-ignored)
else
  echo "not root or no nft: the Redis-cut scenario is skipped" >&2
fi
status=0
cargo test --locked --no-fail-fast -p integration-tests --test cluster --test front_door -- \
  "${ignored[@]}" --test-threads 1 --nocapture 2>&1 | tee "$out/tests.log" |
  grep -E '^test |cluster race|takeover|redis outage|redis cut|operator node killed|rolling upgrade|haproxy drain|frozen node|test result' ||
  status=1
grep -q 'FAILED\|panicked' "$out/tests.log" && status=1

E2E_ARTIFACTS="$out/e2e" tests/e2e/run.sh 16-cluster.test.mjs 2>&1 |
  tee "$out/e2e.log" | grep -E '✔|✖|ℹ (carrier|page)' || status=1

cargo build --locked --release -p sbc
tests/cluster/cps.sh "${CPS_SECS:-10}" "${rates[@]}" | grep -v '^ *\(Listening\|udp:\|tcp:\|Aliases\)\|^$' |
  tee "$out/cps.log" || status=1

line() { grep -h -o -m1 "$1.*" "$out"/*.log 2>/dev/null | head -1 || echo 'not run, or failed'; }
cat <<EOF

== issue 21 cluster run: $(date -u +%FT%TZ) ==
ringing across nodes, racing accepts : $(line 'cluster race:')
kill -9 during ringing               : $(line 'ringing takeover:')
SIGSTOP/SIGCONT of the ringing owner : $(line 'frozen node:')
kill -9 of the owner mid-call (SIP)  : $(line 'mid-call takeover through Kamailio:')
kill -9 of the owner mid-call (page) : $(line 'carrier hears the page again')
kill -9 of the operator's node       : $(line 'operator node killed:')
Redis stopped                        : $(line 'redis outage:')
a node cut off from Redis (nft)      : $(line 'redis cut:')
rolling upgrade behind Kamailio      : $(line 'rolling upgrade:')
drain behind haproxy (operators)     : $(line 'haproxy drain:')
calls per second through Kamailio    :
$(cat "$out/cps.log")
EOF
exit "$status"
