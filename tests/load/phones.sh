#!/usr/bin/env bash
# Load test of the sbc's registrar on loopback: N SIP phones (SIPp, one call a
# phone, each from its own address 127.1.x.y) register with digest, refresh
# every --interval seconds and un-register, while a SIPp caller (127.0.0.2, the
# carrier) places calls through the sbc (127.0.0.1) to a SIPp far end
# (127.0.0.3) all along. Reports the sbc's CPU time and RSS per registration
# and per refresh, its registrar counters at each stage, and what the calls did.
# See tests/load/README.md ("Phones: 10,000 registrations"). Needs bash, awk,
# python3 and SIPp.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
scenarios="$repo/tests/sipp"

usage() {
  cat <<EOF
usage: tests/load/phones.sh [options]
  -n, --phones N       phones (accounts 100000.., each its own operator and
                       source address)                       (default 10000)
  -r, --rate R         phones starting to register per second   (default 500)
      --refreshes K    refreshes per phone after registering      (default 2)
      --interval S     seconds between a phone's refreshes       (default 50)
      --expires S      Expires the phones ask for (>= 60)        (default 60)
      --refresh MODE   nonce: a refresh answers the last challenge again with
                       the next nonce count (nc=2, 3..), one REGISTER;
                       challenge: a refresh has no credentials and is
                       challenged first, two REGISTERs        (default nonce)
      --end MODE       unregister: the phones un-REGISTER one interval
                       after their last refresh; lapse: they go quiet after
                       it and the sbc lets the bindings lapse (--expires
                       later)                            (default unregister)
      --call-rate C    carrier calls per second all along, 0: none (default 20)
      --hold S         their talk time in seconds                  (default 1)
      --warmup S       calls alone before the phones (their transactions
                       settle; the CPU of their last 10 s is the baseline
                       taken off the phones' stages)             (default 45)
      --keepalive D    the sbc's [registrar] keepalive ("30s", "0s": off),
                       written only when given (sbc builds from before the
                       keep-alives refuse the key)    (default: not written)
  -b, --sbc PATH       the binary measured        (default target/release/sbc)
      --log LEVEL      the sbc's log level                      (default info)
      --keep           keep the work directory (sbc.toml, logs, SIPp screens,
                       samples)
Ports: SIP 19060, phones 19062 (on each 127.1.x.y), far end 19070, caller 19090,
HTTP 19080, WebRTC 19478, RTP 32000-32699: LOAD_PORT_BASE (default 19000) moves
them all (RTP at base+13000).
EOF
}

phones=10000 rate=500 refreshes=2 interval=50 expires=60 refresh_mode=nonce end_mode=unregister
call_rate=20 hold=1 warmup=45 keepalive="" sbc="$repo/target/release/sbc" log=info keep=0
while (($#)); do
  case "$1" in
    -n|--phones) phones="$2"; shift 2 ;;
    -r|--rate) rate="$2"; shift 2 ;;
    --refreshes) refreshes="$2"; shift 2 ;;
    --interval) interval="$2"; shift 2 ;;
    --expires) expires="$2"; shift 2 ;;
    --refresh) refresh_mode="$2"; shift 2 ;;
    --end) end_mode="$2"; shift 2 ;;
    --call-rate) call_rate="$2"; shift 2 ;;
    --hold) hold="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --keepalive) keepalive="$2"; shift 2 ;;
    -b|--sbc) sbc="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "phones.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
int() { [[ "$1" =~ ^[0-9]+$ ]] || { echo "phones.sh: $2 must be a whole number, not '$1'" >&2; exit 2; }; }
num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "phones.sh: $2 must be a number, not '$1'" >&2; exit 2; }; }
int "$phones" --phones; num "$rate" --rate; int "$refreshes" --refreshes; int "$interval" --interval
int "$expires" --expires; num "$call_rate" --call-rate; num "$hold" --hold; int "$warmup" --warmup
((phones >= 1)) || { echo "phones.sh: --phones must be at least 1" >&2; exit 2; }
((expires >= 60)) || { echo "phones.sh: --expires must be at least 60 (the registrar's min_expires)" >&2; exit 2; }
((interval < expires)) || { echo "phones.sh: --interval must be below --expires, or the bindings lapse between refreshes" >&2; exit 2; }
case "$refresh_mode" in nonce) challenge=0 ;; challenge) challenge=1 ;; *) echo "phones.sh: --refresh must be nonce or challenge" >&2; exit 2 ;; esac
case "$end_mode" in unregister) unregister=1 ;; lapse) unregister=0 ;; *) echo "phones.sh: --end must be unregister or lapse" >&2; exit 2 ;; esac
# The stages are told apart by counts (all bound, N refreshes more...): the
# first refresh must not start before the last phone registered.
awk -v n="$phones" -v r="$rate" -v i="$interval" 'BEGIN { exit !(n / r >= i) }' &&
  echo "phones.sh: warning: $phones phones at $rate/s take longer than --interval ($interval s): the first refreshes (or un-REGISTERs) overlap the registrations, and the stages below mix them" >&2
command -v sipp >/dev/null || { echo "phones.sh: SIPp is missing: apt-get install -y sip-tester" >&2; exit 2; }
command -v python3 >/dev/null || { echo "phones.sh: python3 is missing" >&2; exit 2; }
[ -x "$sbc" ] || { echo "phones.sh: no sbc binary at $sbc: cargo build --release -p sbc" >&2; exit 2; }
# SIPp -t ui: a socket per phone.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < phones + 256)); then
  echo "phones.sh: $phones phones need $((phones + 256)) open files; ulimit -n is $(ulimit -n)" >&2
  exit 2
fi

base="${LOAD_PORT_BASE:-19000}"
sip_port=$((base + 60)) phone_port=$((base + 62)) uas_port=$((base + 70)) uac_port=$((base + 90))
http_port=$((base + 80)) webrtc_port=$((base + 478)) rtp_lo=$((base + 13000)) rtp_hi=$((base + 13699))
sbc_ip=127.0.0.1 uac_ip=127.0.0.2 uas_ip=127.0.0.3
realm=sbc password=load-phone-pw

port_in_use() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v p="$hex" 'FNR > 1 { split($2, a, ":"); if (a[2] == p && (FILENAME ~ /udp/ || $4 == "0A")) found = 1 } END { exit !found }' \
    /proc/net/udp /proc/net/tcp
}
for p in $sip_port $phone_port $uas_port $uac_port $http_port $webrtc_port; do
  if port_in_use "$p"; then
    echo "phones.sh: port $p is in use (another run?); set LOAD_PORT_BASE" >&2
    exit 2
  fi
done

work="$(mktemp -d /tmp/sbc-phones.XXXXXX)"
sbc_pid="" uas_pid="" uac_pid="" ph_pid="" sampler_pid=""
cleanup() {
  for p in $sampler_pid $ph_pid $uac_pid $uas_pid $sbc_pid; do
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if ((keep)); then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ----- config: the carrier's calls as tests/load/run.sh -m signalling, and the phones -----
python3 "$here/phones_gen.py" "$phones" 100000 "$realm" "$password" "$work/phones.toml" "$work/users.csv"
min_expires=60
# The carrier sends INVITE, ACK and BYE (3 requests a call) from one address:
# the per-source limit is raised to cover it. Each phone sends 1 or 2 requests
# a refresh from an address of its own, far below either limit.
cat >"$work/sbc.toml" <<EOF
# tests/load/phones.sh: $phones phones, calls at $call_rate/s
[sip]
udp = "$sbc_ip:$sip_port"
user_agent = "sbc-load"

[media]
rtp_bind = "$sbc_ip"
rtp_ports = "$rtp_lo-$rtp_hi"
webrtc = "$sbc_ip:$webrtc_port"
media_timeout = "1h"

[http]
listen = "$sbc_ip:$http_port"

[auth]
token_secret = "sbc-load-test-token-secret-0123456789abcdef"

[log]
level = "$log"

[limits]
max_calls = 20000
max_cps = 100000

[registrar]
realm = "$realm"
min_expires = "${min_expires}s"
max_expires = "1h"
default_expires = "10m"
$([ -n "$keepalive" ] && echo "keepalive = \"$keepalive\"")

[[trunks]]
name = "carrier"
host = "carrier.test"
peers = ["$uas_ip:$uas_port"]
inbound = ["$uac_ip/32"]
codecs = ["PCMU", "PCMA"]

[[numbers]]
id = "load"
e164 = "+15550100"
dial = [ { ring = ["sip:service@$uas_ip:$uas_port"], timeout = "30s" } ]

EOF
cat "$work/phones.toml" >>"$work/sbc.toml"

# ----- helpers (as tests/load/run.sh) -----
http_get() { # path -> body on stdout (bash's /dev/tcp: no curl needed)
  local fd
  exec {fd}<>"/dev/tcp/$sbc_ip/$http_port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: sbc\r\n\r\n' "$1" >&"$fd"
  sed '1,/^\r\{0,1\}$/d' <&"$fd"
  exec {fd}>&-
}
# One read of /metrics: bindings, registrar counters (accepted, challenges,
# auth failures, bans, banned drops, expired), SIP transactions, calls active,
# calls ended completed and otherwise, front-door bans and drops, SIP
# retransmissions; printed between $1 and $2, and nothing when the read failed.
metrics_raw() { # the HTTP response, headers and all (no sed: the sampler forks little)
  local fd
  exec {fd}<>"/dev/tcp/$sbc_ip/$http_port" || return 1
  printf 'GET /metrics HTTP/1.0\r\nHost: sbc\r\n\r\n' >&"$fd"
  cat <&"$fd"
  exec {fd}>&-
}
sampled_metrics() {
  metrics_raw 2>/dev/null | awk -v pre="${1:-}" -v post="${2:-}" '
    /^#/ || !/^sbc_/ { next }
    { seen = 1; split($1, k, "{"); v[k[1]] += $NF }
    k[1] == "sbc_calls_ended_total" { if (index($1, "status=\"completed\"")) ok += $NF; else other += $NF }
    END { if (!seen) exit 1
      printf "%s%.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f%s\n", pre,
      v["sbc_registrations_active"], v["sbc_registrar_accepted_total"], v["sbc_registrar_challenges_total"],
      v["sbc_registrar_auth_failures_total"], v["sbc_registrar_bans_total"], v["sbc_registrar_banned_drops_total"],
      v["sbc_registrations_expired_total"], v["sbc_sip_transactions"], v["sbc_calls_active"], ok, other,
      v["sbc_sip_bans_total"], v["sbc_sip_dropped_total"], v["sbc_sip_retransmissions_total"], post }'
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; } # busy idle
sbc_sip_drops() { # datagrams dropped by the sbc's SIP socket (full receive buffer)
  awk -v sip="$(printf %04X "$sip_port")" 'FNR > 1 { split($2, a, ":"); if (a[1] == "0100007F" && a[2] == sip) d += $NF } END { print d + 0 }' /proc/net/udp
}
hz=$(getconf CLK_TCK)
last_screen() { awk '/Scenario Screen/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$1"; }
stat_value() { # screen, counter name -> cumulative value
  last_screen "$1" | awk -F'|' -v n="$2" 'index($1, n) { v = $3 } END { gsub(/[^0-9.]/, "", v); print v + 0 }'
}
retrans_of() { # sum of the Retrans column of the message table
  last_screen "$1" | awk '
    /---------->|<----------/ {
      for (i = 1; i <= NF; i++) if ($i ~ /^(---------->|<----------)$/) { j = (i == 1) ? i + 2 : i + 1; break }
      if ($j ~ /RTD/) j++
      r += $(j + 1)
    }
    END { print r + 0 }'
}
unexpected_of() { # sum of the Unexpected column (receive lines)
  last_screen "$1" | awk '/<----------/ { u += $(NF) } END { print u + 0 }'
}

# ----- start -----
"$sbc" --config "$work/sbc.toml" --drain 5 >"$work/sbc.out" 2>"$work/sbc.err" &
sbc_pid=$!
for _ in $(seq 300); do
  [ "$(http_get /healthz 2>/dev/null || true)" = ok ] && break
  kill -0 "$sbc_pid" 2>/dev/null || { echo "sbc did not start:" >&2; cat "$work/sbc.err" >&2; exit 1; }
  sleep 0.1
done
[ "$(http_get /healthz 2>/dev/null || true)" = ok ] || { echo "sbc not healthy" >&2; exit 1; }
rss_start=$(status_kb "$sbc_pid" VmRSS)

# Samples every half second: time, sbc CPU ticks, VmRSS kB, the metrics above,
# drops at the sbc's SIP socket (read every 5 s: /proc/net/udp lists every
# phone's socket), the CPU ticks of the three SIPps (phones, caller, far end)
# and the machine's busy and idle ticks (all CPUs): what the rest of the
# machine does during each stage. Bash builtins read /proc (no forks): the
# sampler itself should cost the machine little.
proc_ticks() { # pid -> REPLY: utime + stime, 0 when gone
  local l f
  REPLY=0
  [ -n "$1" ] || return 0
  { read -r l <"/proc/$1/stat"; } 2>/dev/null || return 0
  read -r -a f <<<"${l##*) }"
  REPLY=$((f[11] + f[12]))
}
proc_rss() { # pid -> REPLY: VmRSS kB
  local k v
  REPLY=0
  while read -r k v _; do [ "$k" = VmRSS: ] && { REPLY=$v; return 0; }; done <"/proc/$1/status"
}
(
  i=0 drops=0 ph="" uac="" uas=""
  while kill -0 "$sbc_pid" 2>/dev/null; do
    [ -z "$ph" ] && [ -s "$work/ph.pid" ] && read -r ph <"$work/ph.pid"
    [ -z "$uac" ] && [ -s "$work/uac.pid" ] && read -r uac <"$work/uac.pid"
    [ -z "$uas" ] && [ -s "$work/uas.pid" ] && read -r uas <"$work/uas.pid"
    t=$EPOCHREALTIME
    proc_ticks "$sbc_pid"; c=$REPLY
    proc_rss "$sbc_pid"; m=$REPLY
    proc_ticks "$ph"; p1=$REPLY
    proc_ticks "$uac"; p2=$REPLY
    proc_ticks "$uas"; p3=$REPLY
    read -r _ u n sy id wa irq sirq st _ </proc/stat
    ((i++ % 10 == 0)) && drops=$(sbc_sip_drops)
    sampled_metrics "$t $c $m " " $drops $p1 $p2 $p3 $((u + n + sy + irq + sirq + st)) $((id + wa))" || true
    sleep 0.5
  done
) >"$work/samples" 2>/dev/null &
sampler_pid=$!

# How busy the machine is without us: other jobs disturb every figure.
read -r qb0 qi0 < <(machine_ticks); sleep 2; read -r qb1 qi1 < <(machine_ticks)
quiet_busy=$(( 100 * (qb1 - qb0) / (qb1 - qb0 + qi1 - qi0 + 1) ))

hold_ms=$(awk -v h="$hold" 'BEGIN { printf "%d", h * 1000 + 0.5 }')
calls_on=$(awk -v c="$call_rate" 'BEGIN { print (c > 0) }')
if ((calls_on)); then
  (cd "$work" && exec sipp -sf "$scenarios/callee.xml" -i "$uas_ip" -bind_local -p "$uas_port" -t u1 \
    -key answer_pt 0 -key answer_codec PCMU/8000 -key answer_ptime 20 \
    -nostdin -trace_screen -screen_file "$work/uas.screen" \
    -trace_err -error_file "$work/uas.errors" >"$work/uas.out" 2>&1) &
  uas_pid=$!
  echo "$uas_pid" >"$work/uas.pid"
  for _ in $(seq 100); do
    awk -v p="$(printf '%04X' "$uas_port")" 'NR > 1 { split($2, a, ":"); if (a[2] == p) f = 1 } END { exit !f }' /proc/net/udp && break
    sleep 0.1
  done
  kill -0 "$uas_pid" 2>/dev/null || { echo "SIPp far end did not start:" >&2; cat "$work/uas.out" >&2; exit 1; }
  limit=$(awk -v r="$call_rate" -v h="$hold" 'BEGIN { l = int(2 * r * (h + 5)); if (l < 100) l = 100; print l }')
  (cd "$work" && exec sipp -sf "$scenarios/caller.xml" -i "$uac_ip" -bind_local -p "$uac_port" -t u1 \
    -s +15550100 -r "$call_rate" -l "$limit" -d "$hold_ms" \
    -nostdin -trace_screen -screen_file "$work/uac.screen" -trace_err -error_file "$work/uac.errors" \
    "$sbc_ip:$sip_port" >"$work/uac.out" 2>&1) &
  uac_pid=$!
  echo "$uac_pid" >"$work/uac.pid"
fi
echo "phones: $phones registering at $rate/s from their own addresses, Expires $expires, refreshed every $interval s ($refresh_mode) $refreshes times, then $end_mode; calls: $call_rate/s, hold $hold s; sbc $sbc (pid $sbc_pid)"
t_calls=$(now)
((warmup > 0)) && echo "calls alone for $warmup s (warm-up and CPU baseline) ..."
sleep "$warmup"
t_phones=$(now)

# ----- the phones -----
ph_timeout=$(awk -v n="$phones" -v r="$rate" -v k="$refreshes" -v i="$interval" 'BEGIN { printf "%d", n / r + (k + 2) * i + 180 }')
(cd "$work" && exec sipp -sf "$here/phones_register.xml" -oocsf "$here/phones_options.xml" \
  -inf "$work/users.csv" -t ui -ip_field 2 -p "$phone_port" -key phone_port "$phone_port" -max_socket $((phones + 64)) \
  -key expires "$expires" -set refreshes "$refreshes" -set challenge "$challenge" -set unregister "$unregister" \
  -d $((interval * 1000)) -r "$rate" -m "$phones" -l "$phones" \
  -nostdin -timeout "${ph_timeout}s" -trace_screen -screen_file "$work/phones.screen" \
  -trace_err -error_file "$work/phones.errors" "$sbc_ip:$sip_port" >"$work/phones.out" 2>&1) &
ph_pid=$!
echo "$ph_pid" >"$work/ph.pid"
echo "phones started: $phones at $rate/s; then $refreshes refreshes $interval s apart$( ((unregister)) && echo ", and un-REGISTER $interval s after the last") (about $(awk -v n="$phones" -v r="$rate" -v k="$refreshes" -v i="$interval" -v u="$unregister" 'BEGIN { printf "%d", n / r + (k + u) * i }') s) ..."
ph_rc=0
wait "$ph_pid" || ph_rc=$?
ph_pid=""
t_phones_done=$(now)
if [ "$end_mode" = lapse ]; then
  echo "phones quiet: waiting for their bindings to lapse (up to $((expires + 40)) s) ..."
  for _ in $(seq $(((expires + 40) * 2))); do
    a=$(sampled_metrics | awk '{ print $1 }')
    [ "${a:-1}" = 0 ] && break
    sleep 0.5
  done
fi
sleep 1.5 # a last sample or two

# ----- stop the calls -----
uac_rc="-" uas_rc="-"
if ((calls_on)); then
  kill -USR1 "$uac_pid" 2>/dev/null || true
  uac_rc=0
  for _ in $(seq 300); do kill -0 "$uac_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$uac_pid" 2>/dev/null && echo "SIPp caller still busy 30 s after it was told to stop: killed" >&2
  wait "$uac_pid" || uac_rc=$?
  uac_pid=""
  kill -USR1 "$uas_pid" 2>/dev/null || true
  uas_rc=0
  for _ in $(seq 100); do kill -0 "$uas_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$uas_pid" 2>/dev/null || true
  wait "$uas_pid" || uas_rc=$?
  uas_pid=""
fi
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
hwm=$(status_kb "$sbc_pid" VmHWM)
kill -TERM "$sbc_pid"
wait "$sbc_pid" || true
sbc_pid=""

# ----- SIPp's final screens -----
ph_created=$(stat_value "$work/phones.screen" "Outgoing calls created")
ph_ok=$(stat_value "$work/phones.screen" "Successful call")
ph_failed=$(stat_value "$work/phones.screen" "Failed call")
ph_retrans=$(retrans_of "$work/phones.screen")
ph_unexp=$(unexpected_of "$work/phones.screen")
c_created=0 c_ok=0 c_failed=0 c_retrans=0 f_failed=0 f_retrans=0
if ((calls_on)); then
  c_created=$(stat_value "$work/uac.screen" "Outgoing calls created")
  c_ok=$(stat_value "$work/uac.screen" "Successful call")
  c_failed=$(stat_value "$work/uac.screen" "Failed call")
  c_retrans=$(retrans_of "$work/uac.screen")
  f_failed=$(stat_value "$work/uas.screen" "Failed call")
  f_retrans=$(retrans_of "$work/uas.screen")
fi
ph_errors=$( { grep -o "while expecting[^,]*, received '[^']*" "$work/phones.errors" 2>/dev/null || true; } | sed 's/\r//' | awk '{ sub(/received .SIP\/2.0 /, "got "); print }' | sort | uniq -c | sort -rn | head -5)

awk -v n="$phones" -v rate="$rate" -v k="$refreshes" -v interval="$interval" -v expires="$expires" \
  -v refresh_mode="$refresh_mode" -v end_mode="$end_mode" -v call_rate="$call_rate" -v hold="$hold" \
  -v hz="$hz" -v t_calls="$t_calls" -v t_phones="$t_phones" -v t_done="$t_phones_done" -v warmup="$warmup" \
  -v rss_start="$rss_start" -v hwm="$hwm" -v quiet_busy="$quiet_busy" \
  -v ncpu="$(getconf _NPROCESSORS_ONLN)" -v load="$(cut -d" " -f1-3 /proc/loadavg)" \
  -v ph_rc="$ph_rc" -v ph_created="$ph_created" -v ph_ok="$ph_ok" -v ph_failed="$ph_failed" \
  -v ph_retrans="$ph_retrans" -v ph_unexp="$ph_unexp" \
  -v calls_on="$calls_on" -v uac_rc="$uac_rc" -v uas_rc="$uas_rc" -v c_created="$c_created" -v c_ok="$c_ok" \
  -v c_failed="$c_failed" -v c_retrans="$c_retrans" -v f_failed="$f_failed" -v f_retrans="$f_retrans" \
  -v samples="$work/samples" '
# Sample columns: 1 t, 2 cpu ticks, 3 rss kB, 4 bindings, 5 accepted, 6 challenges,
# 7 auth failures, 8 registrar bans, 9 banned drops, 10 expired, 11 SIP
# transactions, 12 calls active, 13 calls ended completed, 14 ended otherwise,
# 15 front-door bans, 16 front-door drops, 17 SIP retransmissions, 18 drops at
# the SIP socket, 19-21 CPU ticks of the SIPp of the phones, the caller and the far
# end, 22-23 the busy and idle ticks of the machine.
function first_at(col, v, from,   i) { for (i = from; i <= N; i++) if (S[i, col] + 0 >= v) return i; return 0 }
function regs(i) { return S[i, 6] + S[i, 5] + S[i, 9] }   # REGISTERs answered or dropped: challenged + accepted + banned drops
function stage(name, a, b, binding_ref,   dt, cpu, base, net, dr, dacc, drss, active, o) {
  if (!a || !b || b < a) { printf "%-22s (not reached)\n", name; return }
  dt = S[b, 1] - S[a, 1]; cpu = (S[b, 2] - S[a, 2]) / hz; base = calls_cps * dt; net = cpu - base
  dr = regs(b) - regs(a); dacc = S[b, 5] - S[a, 5]; active = S[b, 4]
  drss = S[b, 3] - S[s0, 3]
  printf "%-22s %6.1f %8.2f %7.2f %8.2f %8d %8d %9s %9s %7d %8d %8d %9s %7d %6d %5d\n", name, dt, cpu, base, net, dr, dacc,
    (dr > 0 ? sprintf("%.1f", 1e6 * net / dr) : "-"), (dacc > 0 ? sprintf("%.1f", 1e6 * net / dacc) : "-"),
    active, S[b, 3], drss, (binding_ref > 0 ? sprintf("%.0f", drss * 1024 / binding_ref) : "-"), S[b, 11],
    S[b, 13] - S[a, 13], S[b, 14] - S[a, 14]
  if (!nomark) { MARK[++marks] = b; MNAME[marks] = name; MFROM[marks] = a }
  oth = ((S[b, 22] - S[a, 22]) - (S[b, 2] - S[a, 2]) - (S[b, 19] - S[a, 19]) - (S[b, 20] - S[a, 20]) - (S[b, 21] - S[a, 21])) / hz / dt
  if (oth > max_other) max_other = oth
}
BEGIN {
  while ((getline line < samples) > 0) {
    N++; m = split(line, f, " "); for (j = 1; j <= m; j++) S[N, j] = f[j]
    for (j = 19; j <= 21; j++) if (N > 1 && S[N, j] < S[N - 1, j]) S[N, j] = S[N - 1, j]   # a SIPp that ended keeps its last count
  }
  if (N < 2) { print "phones.sh: no samples"; exit 1 }
  # Stages: the calls alone (warm-up: its last 10 s, or its second half, are
  # the baseline), then
  # the phones: all registered (every binding up), each refresh cycle done
  # (accepted = n initial + j n refreshes), and the end (no binding left).
  w0 = 0; s0 = 0
  for (i = 1; i <= N; i++) { if (!w0 && S[i, 1] >= t_calls + (warmup / 2 > warmup - 10 ? warmup / 2 : warmup - 10)) w0 = i; if (S[i, 1] <= t_phones) s0 = i }
  if (!s0) s0 = 1
  if (!w0 || w0 >= s0) w0 = 1
  calls_cps = (s0 > w0 && warmup > 0) ? (S[s0, 2] - S[w0, 2]) / hz / (S[s0, 1] - S[w0, 1]) : 0
  acc0 = S[s0, 5]
  s1 = first_at(4, n, s0)
  if (!s1) { best = s0; for (i = s0; i <= N; i++) if (S[i, 4] > S[best, 4]) best = i; s1 = best; short = 1 }
  prev = s1
  for (j = 1; j <= k; j++) { R[j] = first_at(5, acc0 + n * (1 + j), prev); if (R[j]) prev = R[j] }
  se = 0
  for (i = prev; i <= N; i++) if (S[i, 4] == 0 && S[i, 1] >= t_done - 1) { se = i; break }
  if (!se) for (i = prev + 1; i <= N; i++) if (S[i, 4] == 0) { se = i; break }

  printf "\n== phones: %d registrations (%s refreshes, %s at the end) with calls at %s/s ==\n", n, refresh_mode, end_mode, call_rate
  printf "phones (SIPp, one call a phone): created %d, successful %d, failed %d, retransmissions %d, unexpected messages %d (exit %s)\n",
    ph_created, ph_ok, ph_failed, ph_retrans, ph_unexp, ph_rc
  if (calls_on) printf "calls (SIPp caller -> sbc -> far end) over the whole run: attempted %d, completed %d, failed %d (caller exit %s, far end exit %s, far end failed %d); retransmissions caller %d, far end %d\n",
    c_created, c_ok, c_failed, uac_rc, uas_rc, f_failed, c_retrans, f_retrans
  printf "sbc: RSS %d kB at start, peak (VmHWM) %d kB; calls alone cost %.1f %% of a core (baseline taken off below: \"calls\")\n", rss_start, hwm, 100 * calls_cps
  printf "machine: %d CPUs, %d %% busy before the run (sbc idle); load average at the end %s\n", ncpu, quiet_busy, load
  if (quiet_busy > 10) printf "  WARNING: other jobs were using the machine (%d %% busy before the run): every figure here is disturbed\n", quiet_busy
  if (short) printf "  NOTE: not every phone registered: at most %d bindings at once\n", S[s1, 4]
  printf "\n%-22s %6s %8s %7s %8s %8s %8s %9s %9s %7s %8s %8s %9s %7s %6s %5s\n", "stage (to its end)", "wall s", "CPU s", "calls", "net CPU", "REGISTER", "200s", "us/REG", "us/200", "binding", "RSS kB", "dRSS kB", "B/binding", "SIP tx", "calls", "c.bad"
  stage("calls alone (baseline)", w0, s0, 0)
  stage("all registered", s0, s1, S[s1, 4])
  for (j = 1; j <= k; j++) stage("refresh " j, (j == 1 ? s1 : R[j - 1]), R[j], S[R[j], 4] > 0 ? S[R[j], 4] : 0)
  if (k > 1) { nomark = 1; stage("refreshes 1.." k, s1, R[k], S[R[k], 4]); nomark = 0 }
  stage(end_mode == "lapse" ? "lapsed (all expired)" : "unregistered", (k > 0 ? R[k] : s1), se, 0)
  if (se && se > (k > 0 ? R[k] : s1)) {
    a = (k > 0 ? R[k] : s1); gone = S[a, 4] - S[se, 4]
    if (gone > 0) printf "  %s: %.1f us of net CPU per binding ended (%d bindings, %s)\n", (end_mode == "lapse" ? "lapse" : "un-REGISTER"), 1e6 * ((S[se, 2] - S[a, 2]) / hz - calls_cps * (S[se, 1] - S[a, 1])) / gone, gone, (end_mode == "lapse" ? "the registrar'"'"'s timer; the stage lasts until the last one lapsed" : "its REGISTER and 200")
  }
  printf "  REGISTER: requests the registrar answered (401s + 200s) in the stage; 200s: bindings made or refreshed; us/REG and us/200: net CPU\n"
  printf "  (the sbc'"'"'s CPU less the calls'"'"' baseline rate) per REGISTER and per 200; RSS kB at the stage'"'"'s end, dRSS against the start of\n"
  printf "  the phones, B/binding = dRSS / bindings then (SIP tx: transactions alive then, each REGISTER'"'"'s for 32 s, Timer J, counted in dRSS);\n"
  printf "  calls / c.bad: calls the sbc ended completed / otherwise in the stage.\n"

  printf "\n%-22s %9s %9s %10s %9s %6s %8s %8s %9s %9s %9s\n", "registrar at", "bindings", "accepted", "challenges", "auth_fail", "bans", "ban_drop", "expired", "fd.bans", "fd.drops", "sip drops"
  MARK[0] = s0; MNAME[0] = "phones start"
  for (j = 0; j <= marks; j++) {
    i = MARK[j]
    printf "%-22s %9d %9d %10d %9d %6d %8d %8d %9d %9d %9d\n", MNAME[j], S[i, 4], S[i, 5], S[i, 6], S[i, 7], S[i, 8], S[i, 9], S[i, 10], S[i, 15], S[i, 16], S[i, 18]
  }
  printf "  (sbc_registrations_active, sbc_registrar_accepted_total, _challenges, _auth_failures, _bans, _banned_drops, sbc_registrations_expired_total;\n"
  printf "   the front door'"'"'s sbc_sip_bans_total and sbc_sip_dropped_total; datagrams dropped at the sbc'"'"'s SIP socket, from /proc/net/udp)\n"

  printf "\n%-22s %8s %9s %8s %8s %8s\n", "machine (% of a core)", "sbc", "phones", "caller", "far end", "others"
  for (j = 1; j <= marks; j++) {
    a = MFROM[j]; b = MARK[j]; dt = S[b, 1] - S[a, 1]
    if (dt <= 0) continue
    printf "%-22s %8.1f %9.1f %8.1f %8.1f %8.1f\n", MNAME[j], 100 * (S[b, 2] - S[a, 2]) / hz / dt, 100 * (S[b, 19] - S[a, 19]) / hz / dt,
      100 * (S[b, 20] - S[a, 20]) / hz / dt, 100 * (S[b, 21] - S[a, 21]) / hz / dt,
      100 * ((S[b, 22] - S[a, 22]) - (S[b, 2] - S[a, 2]) - (S[b, 19] - S[a, 19]) - (S[b, 20] - S[a, 20]) - (S[b, 21] - S[a, 21])) / hz / dt
  }
  printf "  (CPU time over each stage'"'"'s wall time; others: the rest of the machine, this script'"'"'s sampling included)\n"
  if (max_other > 0.25) printf "  WARNING: other jobs used up to %.0f %% of a core during a stage: its figures are disturbed; measure on a quiet machine\n", 100 * max_other
  if (s1 > s0) printf "registration rate achieved: %.0f phones/s (asked %s)\n", (S[s1, 4] - S[s0, 4]) / (S[s1, 1] - S[s0, 1]), rate
  bad = (ph_failed > 0 || ph_rc != 0 || short)
  if (calls_on) bad = bad || c_failed > 0 || f_failed > 0
  exit bad
}' || { echo "(failures: see the work directory)"; [ -n "$ph_errors" ] && echo "phones' errors (most common):" && echo "$ph_errors"; keep=1; }
