#!/usr/bin/env bash
# Calls per second through the shipped Kamailio front door to three sbc nodes
# of one cluster (a Redis on 127.0.0.1:5079, `[cluster]` on each), signalling
# only (no RTP): SIPp caller (127.0.0.5) -> Kamailio (127.0.0.2,
# sbc/deploy/kamailio/kamailio.cfg, round robin) -> sbc on 127.0.0.11, .12, .13
# -> SIPp far end (127.0.0.6). Steps of RATE calls/s, SECS seconds each, 1 s
# calls; per step: calls, successful, failed, retransmissions at the caller, how
# the calls spread over the nodes, CPU seconds of Kamailio and the nodes, and
# Redis commands per call (heartbeats included).
#
#   cargo build --release -p sbc && tests/cluster/cps.sh [SECS] [RATE...]
#   (default: 20 s at 100 200 300 400 calls/s)
# Needs kamailio, sip-tester, redis-server, and free ports 5070-5073 on those
# addresses and 5079 on 127.0.0.1.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
secs="${1:-20}"
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then rates=("$@"); else rates=(100 200 300 400); fi
bin="$repo/target/release/sbc"
[ -x "$bin" ] || { echo "build it first: cargo build --release -p sbc" >&2; exit 2; }
work="$(mktemp -d /tmp/cps.XXXXXX)"
pids=()
nodes=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
}
trap cleanup EXIT

uas=127.0.0.6:5073
setsid redis-server --bind 127.0.0.1 --port 5079 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
for n in 11 12 13; do
  cat >"$work/sbc-$n.toml" <<EOF
[sip]
udp = "127.0.0.$n:5070"
tcp = "127.0.0.$n:5070"
[media]
rtp_bind = "127.0.0.$n"
rtp_ports = "40000-49999"
webrtc = "127.0.0.$n:5072"
[http]
listen = "127.0.0.$n:5071"
[auth]
token_secret = "0123456789abcdef0123456789abcdef"
[cluster]
node = "sbc-$n"
redis_url = "redis://127.0.0.1:5079/0"
[limits]
max_calls = 5000
max_cps = 1000
[[trunks]]
name = "front"
host = "front.test"
peers = ["$uas"]
inbound = ["127.0.0.2/32"]
[[numbers]]
id = "service"
e164 = "+15550100"
dial = [ { ring = ["sip:service@$uas"], timeout = "20s" } ]
[log]
level = "warn"
EOF
  setsid "$bin" --config "$work/sbc-$n.toml" >"$work/sbc-$n.log" 2>&1 &
  nodes+=($!)
done
pids+=("${nodes[@]}")
printf '1 sip:127.0.0.%s:5070;transport=tcp\n' 11 12 13 >"$work/dispatcher.list"
setsid kamailio -DD -E -m 256 -M 16 -f "$repo/sbc/deploy/kamailio/kamailio.cfg" -Y "$work" \
  -A LISTEN_UDP=udp:127.0.0.2:5070 -A LISTEN_TCP=tcp:127.0.0.2:5070 \
  -A "DISPATCHER_LIST=\"$work/dispatcher.list\"" -A "CTL_SOCKET=\"unix:$work/ctl.sock\"" \
  -A TCP_SOURCE=127.0.0.2 -A 'DS_ALG="4"' 2>"$work/kamailio.log" &
pids+=($!)
kam=$!
setsid sipp -sf "$repo/tests/sipp/callee.xml" -i 127.0.0.6 -p 5073 -bind_local -nostdin \
  -key answer_pt 0 -key answer_codec PCMU/8000 -key answer_ptime 20 >"$work/uas.log" 2>&1 &
pids+=($!)
# The dispatcher marks the nodes active after its first probes.
for _ in $(seq 1 50); do
  [ "$(kamcmd -s "unix:$work/ctl.sock" dispatcher.list 2>/dev/null | grep -c 'FLAGS: AP')" = 3 ] && break
  sleep 0.2
done

cpu() { # utime+stime seconds of a process group's processes
  local t=0
  for p in $(pgrep -g "$1" 2>/dev/null); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
hz=$(getconf CLK_TCK)
metric() { # node ip -> completed calls
  exec 3<>"/dev/tcp/$1/5071"
  printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
  awk '/^sbc_calls_ended_total/ && /completed/ { s += $NF } END { printf "%d", s }' <&3
  exec 3>&-
}

printf '%-6s %-7s %-7s %-7s %-8s %-22s %-10s %-10s %-14s\n' cps calls ok failed retrans "per node (11/12/13)" "kam cpu" "nodes cpu" "redis cmd/call"
for rate in "${rates[@]}"; do
  calls=$((rate * secs))
  before=(); for n in 11 12 13; do before+=("$(metric 127.0.0.$n)"); done
  k0=$(cpu "$kam"); n0=0; for p in "${nodes[@]}"; do n0=$((n0 + $(cpu "$p"))); done
  r0=$(redis-cli -p 5079 info stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }')
  sipp -sf "$repo/tests/sipp/caller_rr.xml" -i 127.0.0.5 -p 5074 -bind_local -nostdin \
    -s +15550100 -r "$rate" -m "$calls" -d 1000 -l $((rate * 4)) -timeout $((secs + 60))s \
    -trace_stat -stf "$work/stat-$rate.csv" 127.0.0.2:5070 >"$work/uac-$rate.log" 2>&1 || true
  k1=$(cpu "$kam"); n1=0; for p in "${nodes[@]}"; do n1=$((n1 + $(cpu "$p"))); done
  r1=$(redis-cli -p 5079 info stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }')
  col() { # the last row's value of SIPp statistics column $1
    awk -F';' -v c="$1" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i } END { print $k }' \
      "$work/stat-$rate.csv"
  }
  ok=$(col 'SuccessfulCall(C)')
  failed=$(col 'FailedCall(C)')
  retrans=$(col 'Retransmissions(C)')
  spread=""; i=0
  for n in 11 12 13; do spread+="$(( $(metric 127.0.0.$n) - before[i] ))/"; i=$((i + 1)); done
  printf '%-6s %-7s %-7s %-7s %-8s %-22s %-10s %-10s %-14s\n' "$rate" "$calls" "$ok" "$failed" "$retrans" \
    "${spread%/}" "$(awk -v t=$((k1 - k0)) -v h="$hz" 'BEGIN{printf "%.1f s", t/h}')" \
    "$(awk -v t=$((n1 - n0)) -v h="$hz" 'BEGIN{printf "%.1f s", t/h}')" \
    "$(awk -v r=$((r1 - r0)) -v c="$calls" 'BEGIN{printf "%.2f", r/c}')"
  sleep 3
done
echo "logs: $work"
