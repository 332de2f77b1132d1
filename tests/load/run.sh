#!/usr/bin/env bash
# Load test of the sbc binary on loopback: SIPp caller (127.0.0.2, the carrier)
# -> sbc (127.0.0.1) -> SIPp far end (127.0.0.3; in the conference mode a second
# one, 127.0.0.4), with one of four media modes, and a report of calls, rate,
# retransmissions, and the sbc's CPU time and memory.
# See tests/load/README.md for how to read it. Needs bash, awk, sed, grep, SIPp;
# root (or CAP_NET_RAW) for the media modes (SIPp plays captures on raw sockets).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
scenarios="$repo/tests/sipp"

usage() {
  cat <<EOF
usage: tests/load/run.sh [options]
  -m, --mode MODE    signalling | relay | transcode | conference (default signalling)
                       signalling: PCMU offer and answer, no RTP from the SIPps
                       relay:      PCMA both sides; the caller plays g711a.pcap,
                                   the far end echoes it (-rtp_echo): relayed RTP
                       transcode:  the caller plays PCMA, the far end answers
                                   opus/48000/2 and echoes: PCMA<->Opus each way
                       conference (or three-party): the number rings two far
                                   ends (127.0.0.3 and 127.0.0.4) with join = "all";
                                   both answer PCMA and echo: every call is a
                                   conference of three, mixed by the sbc. The far
                                   ends hang up 1 s after the caller's plays, and
                                   the sbc then ends the caller's side
  -r, --rate CPS     new calls per second            (default 200; media modes 20)
  -d, --hold SECS    talk time per call, decimals ok (default 1; media modes 7.08,
                     rounded to whole plays of the 7.08 s capture; conference:
                     the call lasts 1 s more)
  -n, --calls N      calls in all                    (default 2000; media modes 400)
      --answer-fec   transcode: the far end's answer asks for Opus in-band FEC
                     (a=fmtp:111 useinbandfec=1, as browsers do); without it the
                     answer has no fmtp, and the sbc's Opus encoder sends no FEC
                     (RFC 7587 section 6.1)
      --opus-complexity N  the sbc's [media] opus_complexity, auto or 0-10 (default auto)
      --sip-jitter-buffer  the sbc's [media] sip_jitter_buffer = true: transcoded
                     (and repacketized) calls go through its jitter buffer
      --session-timers SECS  session timers (RFC 4028) on both legs: the callers ask
                       for SECS (Session-Expires, Supported: timer) and the
                       trunk's session_expires asks the far end for it
      --answer-ptime MS  the far end's a=ptime (default 20; relay and conference
                     30, as the capture: equal formats are relayed in place, a
                     ptime that differs makes the sbc repacketize, on arrival or
                     with --sip-jitter-buffer through its jitter buffer)
      --record WHAT  off (default) | on: every call is recorded (the number's
                     record = true, files in the work directory; the report adds
                     the recordings and the disk bytes per call-minute) |
                     compare: the same load twice, without then with recording,
                     and both CPU figures side by side
      --record-format wav|opus  with --record (default wav)
  -b, --sbc PATH     the sbc binary                  (default target/release/sbc)
      --log LEVEL    the sbc's log level             (default info)
      --keep         keep the work directory (configs, logs, samples)
  -h, --help
Environment: SHARED_TESTDATA (default ../shared/testdata next to the checkout),
LOAD_PORT_BASE (default 9000: SIP 9060, far end 9070, second far end 9071,
caller 9090, HTTP 9080, WebRTC 9478; RTP 10000-31999).
EOF
}

mode=signalling rate="" hold="" calls="" answer_ptime="" answer_fec=0 opus_complexity=auto sip_jitter_buffer=false session_timers="" sbc="$repo/target/release/sbc" log=info keep=0
record=off record_format=wav
args=("$@")
while (($#)); do
  case "$1" in
    --record) record="$2"; shift 2 ;;
    --record-format) record_format="$2"; shift 2 ;;
    -m|--mode) mode="$2"; [ "$mode" = three-party ] && mode=conference; shift 2 ;;
    -r|--rate) rate="$2"; shift 2 ;;
    -d|--hold) hold="$2"; shift 2 ;;
    -n|--calls) calls="$2"; shift 2 ;;
    --answer-ptime) answer_ptime="$2"; shift 2 ;;
    --answer-fec) answer_fec=1; shift ;;
    --opus-complexity) opus_complexity="$2"; shift 2 ;;
    --sip-jitter-buffer) sip_jitter_buffer=true; shift ;;
    --session-timers) session_timers="$2"; shift 2 ;;
    -b|--sbc) sbc="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$mode" in
  signalling) : "${rate:=200}" "${hold:=1}" "${calls:=2000}" ;;
  relay|conference) : "${rate:=20}" "${hold:=7.08}" "${calls:=400}" "${answer_ptime:=30}" ;;
  transcode) : "${rate:=20}" "${hold:=7.08}" "${calls:=400}" ;;
  *) echo "run.sh: --mode must be signalling, relay, transcode or conference" >&2; exit 2 ;;
esac
case "$record" in
  off|on) ;;
  compare)
    # The same load twice, in this run: without recording, then with it.
    rest=() skip=0
    for a in "${args[@]}"; do
      if ((skip)); then skip=0; continue; fi
      [ "$a" = --record ] && { skip=1; continue; }
      rest+=("$a")
    done
    out_off=$("$0" "${rest[@]}" --record off) || { echo "$out_off"; exit 1; }
    echo "$out_off"
    out_on=$("$0" "${rest[@]}" --record on) || { echo "$out_on"; exit 1; }
    echo "$out_on"
    per_call() { sed -n 's/.*of a core, \([0-9.]*\) % of a core per call$/\1/p' | tail -1; }
    run_call() { sed -n 's/.*CPU per call over the run (CPU s \/ call s): \([0-9.]*\) %.*/\1/p' | tail -1; }
    a=$(per_call <<<"$out_off") b=$(per_call <<<"$out_on")
    c=$(run_call <<<"$out_off") d=$(run_call <<<"$out_on")
    echo
    echo "== recording compared ($mode) =="
    awk -v a="$a" -v b="$b" -v c="$c" -v d="$d" 'BEGIN {
      printf "steady state per call: %.4f %% of a core unrecorded, %.4f %% recorded: %+.1f %%\n", a, b, (a > 0 ? 100 * (b - a) / a : 0)
      printf "over the run per call: %.4f %% unrecorded, %.4f %% recorded: %+.1f %%\n", c, d, (c > 0 ? 100 * (d - c) / c : 0) }'
    exit 0
    ;;
  *) echo "run.sh: --record must be off, on or compare" >&2; exit 2 ;;
esac
case "$record_format" in wav|opus) ;; *) echo "run.sh: --record-format must be wav or opus" >&2; exit 2 ;; esac
num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "run.sh: $2 must be a number, not '$1'" >&2; exit 2; }; }
: "${answer_ptime:=20}"
num "$rate" --rate; num "$hold" --hold; num "$calls" --calls
num "$answer_ptime" --answer-ptime
[ "$opus_complexity" = auto ] || num "$opus_complexity" --opus-complexity
command -v sipp >/dev/null || { echo "run.sh: SIPp is missing: apt-get install -y sip-tester" >&2; exit 2; }
[ -x "$sbc" ] || { echo "run.sh: no sbc binary at $sbc: cargo build --release -p sbc" >&2; exit 2; }
testdata="${SHARED_TESTDATA:-$repo/../shared/testdata}"
pcap="$testdata/rtp-pcaps/g711a.pcap"
if [ "$mode" != signalling ]; then
  [ -r "$pcap" ] || { echo "run.sh: cannot read $pcap (set SHARED_TESTDATA)" >&2; exit 2; }
fi

base="${LOAD_PORT_BASE:-9000}"
sip_port=$((base + 60)) uas_port=$((base + 70)) uas2_port=$((base + 71)) uac_port=$((base + 90))
http_port=$((base + 80)) webrtc_port=$((base + 478))
sbc_ip=127.0.0.1 uac_ip=127.0.0.2 uas_ip=127.0.0.3 uas2_ip=127.0.0.4

# Fails early when a port is taken (ports in /proc/net/* are hex).
port_in_use() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v p="$hex" 'FNR > 1 { split($2, a, ":"); if (a[2] == p && (FILENAME ~ /udp/ || $4 == "0A")) found = 1 } END { exit !found }' \
    /proc/net/udp /proc/net/tcp
}
for p in $sip_port $uas_port $([ "$mode" = conference ] && echo "$uas2_port") $uac_port $http_port $webrtc_port; do
  if port_in_use "$p"; then
    echo "run.sh: port $p is in use (another run?); set LOAD_PORT_BASE" >&2
    exit 2
  fi
done

work="$(mktemp -d /tmp/sbc-load.XXXXXX)"
sbc_pid="" uas_pid="" uas2_pid="" uac_pid="" sampler_pid=""
cleanup() {
  for p in $sampler_pid $uac_pid $uas_pid $uas2_pid $sbc_pid; do
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if ((keep)); then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ----- mode -----
plays=0 callee_sf=callee.xml uas_hold=()
# The far ends of a conference hang up this long after the caller's plays end.
conf_tail_ms=1000
case "$mode" in
  signalling)
    caller_sf=caller.xml answer_pt=0 answer_codec=PCMU/8000 echo_flag=()
    hold_ms=$(awk -v h="$hold" 'BEGIN { printf "%d", h * 1000 + 0.5 }')
    media_timeout="1h"
    ;;
  relay|transcode|conference)
    caller_sf=caller_rtp.xml echo_flag=(-rtp_echo)
    if [ "$mode" = transcode ]; then answer_pt=111 answer_codec=opus/48000/2; else answer_pt=8 answer_codec=PCMA/8000; fi
    # SIPp sends the key as is; the SDP parser takes a bare LF as a line end.
    ((answer_fec)) && answer_codec=$'opus/48000/2\na=fmtp:111 useinbandfec=1'

    plays=$(awk -v h="$hold" 'BEGIN { p = int(h / 7.08 + 0.5); if (p < 1) p = 1; print p }')
    hold_ms=$((plays * 7080))
    media_timeout="60s"
    if [ "$mode" = conference ]; then
      # Both far ends leave first (1 s after the caller's plays), so that the
      # two that echo are never left alone together; the caller, left alone,
      # gets the sbc's BYE.
      caller_sf=caller_rtp_wait_bye.xml callee_sf=callee_hangup.xml
      uas_hold=(-d $((hold_ms + conf_tail_ms)))
    fi
    ln -s "$(cd "$(dirname "$pcap")" && pwd)/$(basename "$pcap")" "$work/g711a.pcap"
    ;;
esac
hold_s=$(awk -v m="$hold_ms" 'BEGIN { printf "%.2f", m / 1000 }')
# How long a call lasts: the hold, and in a conference the far ends' extra second.
call_s=$hold_s
[ "$mode" = conference ] && call_s=$(awk -v m="$hold_ms" -v t="$conf_tail_ms" 'BEGIN { printf "%.2f", (m + t) / 1000 }')
# SIPp's limit on calls at once: twice what the rate and hold need.
limit=$(awk -v r="$rate" -v h="$call_s" 'BEGIN { l = int(2 * r * (h + 5)); if (l < 100) l = 100; print l }')

# The number's dial plan: one step; in a conference it keeps everyone who
# answers (join = "all"), and the sbc mixes the three parties.
dial="dial = [ { ring = [\"sip:service@$uas_ip:$uas_port\"], timeout = \"30s\" } ]"
[ "$mode" = conference ] &&
  dial="dial = [ { ring = [\"sip:service@$uas_ip:$uas_port\", \"sip:service@$uas2_ip:$uas2_port\"], timeout = \"30s\", join = \"all\" } ]"

cat >"$work/sbc.toml" <<EOF
# tests/load/run.sh, mode $mode
[sip]
udp = "$sbc_ip:$sip_port"
user_agent = "sbc-load"

[media]
rtp_bind = "$sbc_ip"
rtp_ports = "10000-31999"
webrtc = "$sbc_ip:$webrtc_port"
media_timeout = "$media_timeout"
opus_complexity = $([ "$opus_complexity" = auto ] && echo '"auto"' || echo "$opus_complexity")
sip_jitter_buffer = $sip_jitter_buffer

[http]
listen = "$sbc_ip:$http_port"

[auth]
token_secret = "sbc-load-test-token-secret-0123456789abcdef"

[log]
level = "$log"

[limits]
max_calls = 20000
max_cps = 100000

[protection]
# One caller address sends every request of the load: no flood limit.
rate_limit_requests = 10000000
rate_limit_window = "1s"

[[trunks]]
name = "carrier"
host = "carrier.test"
peers = ["$uas_ip:$uas_port"]
inbound = ["$uac_ip/32"]
codecs = ["PCMU", "PCMA"]
$([ -n "$session_timers" ] && echo "session_expires = \"${session_timers}s\"")

[recording]
dir = "$work/recordings"
max_active = 100000

[[numbers]]
id = "load"
e164 = "+15550100"
$dial
$([ "$record" = on ] && echo "record = { format = \"$record_format\" }")
EOF

# ----- helpers -----
http_get() { # path -> body on stdout (bash's /dev/tcp: no curl needed)
  local fd
  exec {fd}<>"/dev/tcp/$sbc_ip/$http_port" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: sbc\r\n\r\n' "$1" >&"$fd"
  sed '1,/^\r\{0,1\}$/d' <&"$fd"
  exec {fd}>&-
}
metric() { # name [label filter] -> summed value
  http_get /metrics | awk -v n="$1" -v f="${2:-}" '
    /^#/ { next }
    { split($1, k, "{"); if (k[1] == n && index($1, f)) s += $NF }
    END { printf "%.0f", s + 0 }'
}
sampled_metrics() { # one read of /metrics -> calls active, SIP transactions, SIP legs, transcoding pipelines
  http_get /metrics | awk '
    /^#/ { next }
    { split($1, k, "{") }
    k[1] == "sbc_calls_active" { a += $NF }
    k[1] == "sbc_sip_transactions" { t += $NF }
    k[1] == "sbc_sip_legs" { l += $NF }
    k[1] == "sbc_transcoding_pipelines" { p += $NF }
    END { printf "%.0f %.0f %.0f %.0f\n", a, t, l, p }'
}
cpu_ticks() { # utime + stime of a process, or - when it is gone
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo -; return; }
  echo "${s##*) }" | awk '{ print $12 + $13 }'
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
now() { date +%s.%N; }
udp_counters() { awk '/^Udp:/ && ++n == 2 { print $2, $3, $6 }' /proc/net/snmp; } # InDatagrams NoPorts RcvbufErrors
sbc_drops() { # datagrams dropped so far by the sbc's live sockets (SIP, RTP range)
  awk -v lo="$(printf %04X 10000)" -v hi="$(printf %04X 31999)" -v sip="$(printf %04X "$sip_port")" '
    FNR > 1 { split($2, a, ":"); p = "x" a[2]
      if (a[1] == "0100007F" && ((p >= "x" lo && p <= "x" hi) || a[2] == sip)) d += $NF }
    END { print d + 0 }' /proc/net/udp
}
machine_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; } # busy idle
sipp_drops() { # datagrams dropped so far by the caller's and the far ends' sockets
  awk 'FNR > 1 { split($2, a, ":"); if (a[1] == "0200007F") c += $NF; if (a[1] == "0300007F") f += $NF; if (a[1] == "0400007F") g += $NF }
    END { print c + 0, f + 0, g + 0 }' /proc/net/udp
}
hz=$(getconf CLK_TCK)

# ----- start -----
"$sbc" --config "$work/sbc.toml" --drain 5 >"$work/sbc.out" 2>"$work/sbc.err" &
sbc_pid=$!
for _ in $(seq 100); do
  [ "$(http_get /healthz 2>/dev/null || true)" = ok ] && break
  kill -0 "$sbc_pid" 2>/dev/null || { echo "sbc did not start:" >&2; cat "$work/sbc.err" >&2; exit 1; }
  sleep 0.1
done
[ "$(http_get /healthz 2>/dev/null || true)" = ok ] || { echo "sbc not healthy" >&2; exit 1; }

(cd "$work" && exec sipp -sf "$scenarios/$callee_sf" -i "$uas_ip" -bind_local -p "$uas_port" -t u1 \
  -key answer_pt "$answer_pt" -key answer_codec "$answer_codec" -key answer_ptime "$answer_ptime" "${echo_flag[@]}" \
  "${uas_hold[@]}" -m "$calls" -nostdin -trace_screen -screen_file "$work/uas.screen" \
  -trace_err -error_file "$work/uas.errors" >"$work/uas.out" 2>&1) &
uas_pid=$!
if [ "$mode" = conference ]; then
  (cd "$work" && exec sipp -sf "$scenarios/$callee_sf" -i "$uas2_ip" -bind_local -p "$uas2_port" -t u1 \
    -key answer_pt "$answer_pt" -key answer_codec "$answer_codec" -key answer_ptime "$answer_ptime" "${echo_flag[@]}" \
    "${uas_hold[@]}" -m "$calls" -nostdin -trace_screen -screen_file "$work/uas2.screen" \
    -trace_err -error_file "$work/uas2.errors" >"$work/uas2.out" 2>&1) &
  uas2_pid=$!
fi
for port in $uas_port $([ -n "$uas2_pid" ] && echo "$uas2_port"); do
  for _ in $(seq 100); do
    awk -v p="$(printf '%04X' "$port")" 'NR > 1 { split($2, a, ":"); if (a[2] == p) f = 1 } END { exit !f }' /proc/net/udp && break
    sleep 0.1
  done
done
for f in uas $([ -n "$uas2_pid" ] && echo uas2); do
  p=$([ $f = uas ] && echo "$uas_pid" || echo "$uas2_pid")
  kill -0 "$p" 2>/dev/null || { echo "SIPp far end ($f) did not start:" >&2; cat "$work/$f.out" >&2; exit 1; }
done

rss0=$(status_kb "$sbc_pid" VmRSS)
read -r udp_in0 udp_noport0 udp_rcvbuf0 < <(udp_counters)
# How busy the machine is without us (the sbc and the far end idle): other
# jobs disturb every figure below.
read -r qb0 qi0 < <(machine_ticks); sleep 2; read -r qb1 qi1 < <(machine_ticks)
quiet_busy=$(( 100 * (qb1 - qb0) / (qb1 - qb0 + qi1 - qi0 + 1) ))
cpu0=$(cpu_ticks "$sbc_pid")
sipp_extra=()
((plays > 0)) && sipp_extra=(-set plays "$plays")
echo "mode $mode (far end$([ "$mode" = conference ] && echo "s (two) answer" || echo " answers") ${answer_codec//$'\n'/ } ptime $answer_ptime): $calls calls at $rate/s, hold ${hold_s} s$( ((plays > 0)) && echo " ($plays plays of the capture)")$([ "$mode" = conference ] && echo ", far ends hang up after ${call_s} s"); sbc $sbc (pid $sbc_pid)"
t0=$(now)
caller_path="$scenarios/$caller_sf"
if [ -n "$session_timers" ]; then
  # The callers' INVITEs ask for a session timer (we become the side that
  # waits for their refresh: they support timers and name no refresher).
  caller_path="$work/caller-session-timers.xml"
  awk -v se="$session_timers" '{ print } /Max-Forwards: 70/ && !done { sub(/Max-Forwards: 70.*/, ""); print $0 "Session-Expires: " se; print $0 "Supported: timer"; done = 1 }' \
    "$scenarios/$caller_sf" >"$caller_path"
fi
(cd "$work" && exec sipp -sf "$caller_path" -i "$uac_ip" -bind_local -p "$uac_port" -t u1 \
  -s +15550100 -r "$rate" -m "$calls" -l "$limit" -d "$hold_ms" "${sipp_extra[@]}" \
  -nostdin -timeout "$(awk -v n="$calls" -v r="$rate" -v h="$call_s" 'BEGIN { printf "%d", n / r + h + 120 }')s" \
  -trace_screen -screen_file "$work/uac.screen" -trace_err -error_file "$work/uac.errors" \
  "$sbc_ip:$sip_port" >"$work/uac.out" 2>&1) &
uac_pid=$!

# Samples once a second: time, sbc CPU ticks, VmRSS kB, calls active, sbc socket
# drops, SIPp caller and far end CPU ticks, sbc SIP transactions, drops at the
# SIPp caller's, far end's and second far end's sockets, sbc SIP legs, sbc
# transcoding pipelines (a mixed call's decoders count), second far end's CPU
# ticks. The sbc's counters come from one read of /metrics.
(
  while kill -0 "$sbc_pid" 2>/dev/null; do
    t=$(now) c=$(cpu_ticks "$sbc_pid") m=$(status_kb "$sbc_pid" VmRSS)
    read -r active tx legs pipes < <(sampled_metrics 2>/dev/null || echo 0 0 0 0)
    echo "$t $c $m ${active:-0} $(sbc_drops) $(cpu_ticks "$uac_pid") $(cpu_ticks "$uas_pid") ${tx:-0} $(sipp_drops) ${legs:-0} ${pipes:-0} $(cpu_ticks "${uas2_pid:-x}")"
    sleep 1
  done
) >"$work/samples" 2>/dev/null &
sampler_pid=$!

uac_rc=0
wait "$uac_pid" || uac_rc=$?
uac_pid=""
t1=$(now)
read -r udp_in1 udp_noport1 udp_rcvbuf1 < <(udp_counters)
cpu1=$(cpu_ticks "$sbc_pid")
hwm=$(status_kb "$sbc_pid" VmHWM)
retrans_sbc=$(metric sbc_sip_retransmissions_total)
media=$(http_get /metrics | awk '
  /^#/ { next }
  { split($1, k, "{") }
  k[1] == "sbc_rtp_packets_total" && /direction="in"/ { i += $NF }
  k[1] == "sbc_rtp_packets_total" && /direction="out"/ { o += $NF }
  k[1] == "sbc_media_late_packets_total" { l += $NF }
  k[1] == "sbc_media_lost_packets_total" { x += $NF }
  k[1] == "sbc_media_concealed_seconds_total" { c += $NF }
  END { printf "%.0f %.0f %.0f %.0f %.0f", i, o, l, x, c }')
recordings=$(http_get /metrics | awk '
  /^#/ { next }
  { split($1, k, "{") }
  k[1] == "sbc_recordings_total" { match($1, /result="[^"]*"/); r = r sprintf("%s%s=%.0f", r == "" ? "" : " ", substr($1, RSTART + 8, RLENGTH - 9), $NF) }
  k[1] == "sbc_recording_frames_dropped_total" { d += $NF }
  END { printf "%s; frames dropped %.0f", r == "" ? "none" : r, d }')
ended=$(http_get /metrics | awk '/^sbc_calls_ended_total/ { match($1, /status="[^"]*"/); s = substr($1, RSTART + 8, RLENGTH - 9); printf "%s%s=%.0f", sep, s, $NF; sep = " " }')
# A far end is done when its calls are (or give it 15 s).
far_end_rc() { # pid -> far_rc: its exit status, or "killed (calls left)"
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$1" 2>/dev/null; then
    kill "$1"; wait "$1" 2>/dev/null || true; far_rc="killed (calls left)"
  else
    far_rc=0; wait "$1" || far_rc=$?
  fi
}
far_end_rc "$uas_pid"; uas_rc=$far_rc
uas_pid=""
uas2_rc="-"
if [ -n "$uas2_pid" ]; then far_end_rc "$uas2_pid"; uas2_rc=$far_rc; uas2_pid=""; fi
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
kill -TERM "$sbc_pid"
wait "$sbc_pid" || true
sbc_pid=""

# ----- SIPp's final screens -----
last_screen() { awk '/Scenario Screen/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$1"; }
stat_value() { # screen, counter name -> cumulative value
  last_screen "$1" | awk -F'|' -v n="$2" 'index($1, n) { v = $3 } END { gsub(/[^0-9.]/, "", v); print v + 0 }'
}
retrans_of() { # sum of the Retrans column of the message table
  last_screen "$1" | awk '
    /---------->|<----------/ {
      # UAC lines: NAME ARROW [RTD] MESSAGES RETRANS ...; UAS lines: ARROW NAME ...
      for (i = 1; i <= NF; i++) if ($i ~ /^(---------->|<----------)$/) { j = (i == 1) ? i + 2 : i + 1; break }
      if ($j ~ /RTD/) j++
      r += $(j + 1)
    }
    END { print r + 0 }'
}
created=$(stat_value "$work/uac.screen" "Outgoing calls created")
ok=$(stat_value "$work/uac.screen" "Successful call")
failed=$(stat_value "$work/uac.screen" "Failed call")
rx_uac=$(retrans_of "$work/uac.screen")
rx_uas=$(retrans_of "$work/uas.screen")
fe_failed=$(stat_value "$work/uas.screen" "Failed call")
rx_uas2=0 fe2_failed=0
if [ "$mode" = conference ]; then
  rx_uas2=$(retrans_of "$work/uas2.screen")
  fe2_failed=$(stat_value "$work/uas2.screen" "Failed call")
fi
# The sbc's CDR lines (log level info): how many parties each call had (those
# that joined: a parties entry is id:role:who:joined_ms+talk_ms:reason, joined
# "-" when it never did) and their talk time.
cdr=$(cat "$work/sbc.out" "$work/sbc.err" 2>/dev/null | { grep -o 'parties="[^"]*"' || true; } | awk '
  { sub(/^parties="/, ""); sub(/"$/, ""); n = split($0, e, ","); j = 0
    for (i = 1; i <= n; i++) { m = split(e[i], f, ":"); split(f[m - 1], jt, "+"); if (jt[1] != "-") { j++; talk += jt[2]; tn++ } }
    lines++; hist[j]++ }
  END { if (!lines) { print "none"; exit } s = ""; for (j in hist) s = s sprintf("%s%d parties x%d", s == "" ? "" : ", ", j, hist[j]); printf "%d calls (%s), mean talk per party %.2f s", lines, s, talk / (tn ? tn : 1) / 1000 }')

awk -v t0="$t0" -v t1="$t1" -v hold="$call_s" -v created="$created" -v ok="$ok" -v failed="$failed" \
  -v rate="$rate" -v c0="$cpu0" -v c1="$cpu1" -v hz="$hz" -v rss0="$rss0" -v hwm="$hwm" \
  -v rx_uac="$rx_uac" -v rx_uas="$rx_uas" -v rx_sbc="$retrans_sbc" -v ended="$ended" \
  -v udp_in=$((udp_in1 - udp_in0)) -v udp_noport=$((udp_noport1 - udp_noport0)) -v udp_rcvbuf=$((udp_rcvbuf1 - udp_rcvbuf0)) \
  -v media="$media" \
  -v quiet_busy="$quiet_busy" \
  -v ncpu="$(getconf _NPROCESSORS_ONLN)" -v load="$(cut -d" " -f1-3 /proc/loadavg)" \
  -v uac_rc="$uac_rc" -v uas_rc="$uas_rc" -v uas2_rc="$uas2_rc" -v mode="$mode" -v samples="$work/samples" \
  -v rx_uas2="$rx_uas2" -v fe_failed="$fe_failed" -v fe2_failed="$fe2_failed" -v cdr="$cdr" \
  -v record="$record" -v recordings="$recordings" -v rec_bytes="$(du -sb "$work/recordings" 2>/dev/null | cut -f1)" \
  -v rec_files="$(find "$work/recordings" -name "rec-*.$record_format" 2>/dev/null | wc -l)" '
BEGIN {
  wall = t1 - t0; cpu = (c1 - c0) / hz
  gen = wall - hold; if (gen <= 0) gen = wall
  # Steady state: the samples while the calls at once are within 10 % of their peak.
  n = 0
  while ((getline line < samples) > 0) { split(line, f, " "); n++; T[n] = f[1]; C[n] = f[2]; R[n] = f[3]; A[n] = f[4]; if (f[5] > drops) drops = f[5]; if (f[6] != "-" && f[6] != "") uacT = f[6]; if (f[7] != "-" && f[7] != "") uasT = f[7]; if (f[8] > txpeak) txpeak = f[8]; if (f[9] > cdrops) cdrops = f[9]; if (f[10] > fdrops) fdrops = f[10]; if (f[11] > f2drops) f2drops = f[11]; L[n] = f[12]; P[n] = f[13]; if (f[14] != "-" && f[14] != "") uas2T = f[14] }
  peak = 0; for (i = 1; i <= n; i++) if (A[i] > peak) { peak = A[i]; rpeak = R[i] }
  first = 0; last = 0; sum = 0; k = 0
  for (i = 1; i <= n; i++) if (peak > 0 && A[i] >= 0.9 * peak) { if (!first) first = i; last = i }
  for (i = first; first && i <= last; i++) { sum += A[i]; legs += L[i]; pipes += P[i]; k++ }
  conf = (mode == "conference")
  printf "\n== result (%s) ==\n", mode
  if (conf) printf "calls attempted %d, completed %d, failed %d   (SIPp caller exit %s, far ends exit %s and %s, failed calls %d and %d)\n", created, ok, failed, uac_rc, uas_rc, uas2_rc, fe_failed, fe2_failed
  else printf "calls attempted %d, completed %d, failed %d   (SIPp caller exit %s, far end exit %s)\n", created, ok, failed, uac_rc, uas_rc
  printf "sbc calls ended by status: %s\n", ended
  printf "achieved rate: %.1f calls/s (asked %s; %d calls in %.2f s of wall time less the hold)\n", created / gen, rate, created, gen
  if (conf) printf "retransmissions: SIPp caller %d, SIPp far ends %d and %d, sbc %d\n", rx_uac, rx_uas, rx_uas2, rx_sbc
  else printf "retransmissions: SIPp caller %d, SIPp far end %d, sbc %d\n", rx_uac, rx_uas, rx_sbc
  printf "UDP datagrams delivered on this host: %d (%.0f per completed call); to no socket %d; dropped for full buffers %d\n", udp_in, udp_in / (ok > 0 ? ok : 1), udp_noport, udp_rcvbuf
  printf "  dropped by (most seen at once in /proc/net/udp): the sbc sockets %d; the SIPp caller %d (its RTP sink: it does not read); the far end %d", drops, cdrops, fdrops
  if (conf) printf "; the second far end %d", f2drops
  printf "\n"
  split(media, M, " ")
  printf "sbc RTP: %d packets in, %d out (%.0f and %.0f per completed call); late (dropped) %d, lost %d, concealed %d s\n", M[1], M[2], M[1] / (ok > 0 ? ok : 1), M[2] / (ok > 0 ? ok : 1), M[3], M[4], M[5]
  printf "sbc CPU: %.2f s (user+system) in %.2f s wall = %.1f %% of a core on average; %.3f ms per call\n", cpu, wall, 100 * cpu / wall, 1000 * cpu / (ok > 0 ? ok : 1)
  if (conf) printf "SIPp CPU (last 1 s sample): caller %.2f s, far ends %.2f s and %.2f s\n", uacT / hz, uasT / hz, uas2T / hz
  else printf "SIPp CPU (last 1 s sample): caller %.2f s, far end %.2f s\n", uacT / hz, uasT / hz
  printf "machine: %d CPUs, %d %% busy in the 2 s before the run (sbc and SIPps idle); load average now %s\n", ncpu, quiet_busy, load
  if (quiet_busy > 10) printf "  WARNING: other jobs were using the machine (%d %% busy before the run): every figure here is disturbed; measure on a quiet machine\n", quiet_busy
  printf "sbc memory: RSS %d kB before the calls, peak (VmHWM) %d kB; %d calls at once at the peak\n", rss0, hwm, peak
  printf "  SIP transactions alive at most: %d (they outlive their calls: RFC 3261 Timers J/K/I, RFC 6026 L/M)\n", txpeak
  if (peak > 0) printf "  RSS per call at the peak: %.1f kB (VmRSS %d kB at the peak sample), %.1f kB by VmHWM\n", (rpeak - rss0) / peak, rpeak, (hwm - rss0) / peak
  if (hold > 0 && ok > 0) printf "  CPU per call over the run (CPU s / call s): %.4f %% of a core\n", 100 * cpu / (ok * hold)
  if (k >= 3) {
    dcpu = (C[last] - C[first]) / hz; dt = T[last] - T[first]
    printf "steady state: %.1f s at %.0f calls at once (samples %d..%d): %.1f %% of a core, %.4f %% of a core per call\n", dt, sum / k, first, last, 100 * dcpu / dt, 100 * dcpu / dt / (sum / k)
    # Parties: SIP legs of the sbc per call (a call of two has 2), and its
    # transcoding pipelines per call (a relay has none; a mixed call counts a
    # decoder per leg it mixes).
    printf "  parties (sbc_sip_legs per call at once) %.2f; sbc_transcoding_pipelines per call %.2f\n", legs / sum, pipes / sum
    if (conf && legs > 0) printf "  per party: %.4f %% of a core; RSS %.1f kB (per conference of %.2f: %.4f %% of a core, RSS %.1f kB)\n", 100 * dcpu / dt / (legs / k), (rpeak - rss0) / peak / (legs / sum), legs / sum, 100 * dcpu / dt / (sum / k), (rpeak - rss0) / peak
  }
  printf "sbc CDR lines: %s\n", cdr
  if (record == "on") {
    printf "recordings: %s; %d files, %d bytes on disk (with timelines): %.0f bytes per call-minute\n", recordings, rec_files, rec_bytes, rec_bytes / ((ok > 0 ? ok : 1) * hold / 60)
  }
  bad = (failed > 0 || uac_rc != 0)
  if (conf) bad = bad || fe_failed > 0 || fe2_failed > 0 || uas_rc != 0 || uas2_rc != 0
  exit bad
}' || { echo "(failures: see the logs)"; keep=1; }
