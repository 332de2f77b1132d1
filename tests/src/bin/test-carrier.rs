//! `test-carrier`: a small SIP user agent with PCMU RTP on real sockets, the
//! carrier side of the browser end-to-end tests (`tests/e2e`).
//!
//! ```text
//! test-carrier call   --sbc 127.0.0.1:5060 --to +15550100 [--tone 1000]
//! test-carrier answer --listen 127.0.0.1:5070 [--early-media-tone 700 --early-ms 2000]
//!                     [--tone 600] [--status 486] [--ring-ms 0] [--echo]
//! common: [--rtp-ip 127.0.0.1] [--amplitude 8000] [--report-ms 500]
//!         [--udp-proxy LISTEN=TARGET [--proxy-threshold 20]]
//! ```
//!
//! It reports JSON lines on stdout, each with `event` and `t_ms` (milliseconds on
//! this process's clock):
//!
//! * `ready {sip}`: listening; `proxy {listen, upstream, target}` with `--udp-proxy`
//! * `incoming {leg, from, to}`, `rejected {leg, status}`, `progress {leg, status, sdp}`
//!   (a provisional response received, UAC), `early {leg}` (183 with SDP sent, UAS),
//!   `answered {leg}`, `failed {leg, status, reason}`, `ended {leg, reason}`
//!   (`remote_bye`, `local`, `remote_cancel`, `failed:486`, `no_ack`, `broken:408`)
//! * `media {leg, local, remote, pt, te}` when the far end's RTP address is known
//! * `rtp_started {leg, from}` at the first RTP packet received on a leg
//! * `dtmf {leg, digit, via}` for each digit received, `via` `rfc4733` or `info`
//! * `tone {leg, freq, level_db, rms_db, packets, max_gap_ms, transit_min_ms,
//!   transit_max_ms, markers}` every `--report-ms` while a leg has media: the
//!   dominant frequency (100-3800 Hz) of what it heard
//!   in that window, its level (dB re full-scale sine), the RMS level, the audio
//!   packets received, the longest gap between two and the range of relative
//!   transit (`transit_min_ms`, `transit_max_ms`: arrival minus RTP timestamp,
//!   against the first packet) and `markers` (packets with the marker bit);
//!   `freq` is null when nothing was heard
//! * `onset {leg, level_db, offset}`: audio rose above -35 dBFS after at least
//!   200 ms below -50 dBFS (a click arriving), `offset` the sample in the packet
//! * `proxy_onset {dir, size, baseline}`: with `--udp-proxy`, an RTP datagram at
//!   least `--proxy-threshold` bytes above the smallest recent one, after 300 ms
//!   without one (an encrypted Opus packet carrying a click: `up` is client to
//!   target, `down` target to client); `proxy_stats {dir, packets, max_gap_ms,
//!   transit_min_ms, transit_max_ms}` every `--report-ms`: RTP datagrams relayed,
//!   the longest gap between two, and the range of relative transit (arrival
//!   minus RTP timestamp at 48 kHz, against the stream's first packet) and
//!   `markers`, packets with the marker bit
//! * `reinvite {leg, direction}`, `error {message}`
//!
//! Commands, JSON lines on stdin (applied to every live leg):
//! `{"cmd":"hangup"}`, `{"cmd":"dtmf","digits":"5"}` (RFC 4733; `"via":"info"` for
//! SIP INFO), `{"cmd":"echo","on":true}` (send each received packet straight
//! back), `{"cmd":"tone","hz":600}` (`null`: silence), `{"cmd":"quit"}`, and
//! `{"cmd":"stall","dir":"up"|"down"|"rtp","ms":100}`: hold what the relay
//! forwards that way (`up`, `down`), or our own RTP toward the far end (`rtp`),
//! for `ms`, then send the held burst at once (a network stall; reported as
//! `stall {dir, ms, held}` at the release).
//! End of stdin hangs up and exits.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use media_core::analysis::{ToneGenerator, dominant_frequency, goertzel_level_db, rms_db};
use media_core::codec::{Codec, g711};
use media_core::dtmf::{DtmfReceiver, DtmfSender, EventPacket, TelephoneEvent};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{ClockRate, Millis};
use sbc::clock::Clock;
use sbc::sip::{SipConfig, SipEndpoint, SipHandle};
use serde_json::{Value, json};
use sip_bridge::sdp::{self, AudioCaps, LocalMedia, NegotiatedAudio, SessionDescription};
use sip_bridge::sip::dialog::{EndReason, InviteParams, LegId, UaEvent};
use sip_bridge::sip::dtmf_info;
use sip_bridge::sip::message::{Peer, SipHeaders};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

#[derive(Parser, Debug)]
#[command(
    name = "test-carrier",
    about = "Test SIP carrier with PCMU media (JSON lines)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Address our RTP sockets bind and advertise.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    rtp_ip: IpAddr,
    /// Peak amplitude of generated tones (16-bit scale).
    #[arg(long, global = true, default_value_t = 8000.0)]
    amplitude: f64,
    /// Tone report interval (ms).
    #[arg(long, global = true, default_value_t = 500)]
    report_ms: u64,
    /// A timestamping UDP relay, `LISTEN=TARGET` (e.g. in front of the SBC's
    /// WebRTC port), reporting `proxy_onset` events.
    #[arg(long, global = true, value_name = "LISTEN=TARGET")]
    udp_proxy: Option<String>,
    /// Size jump (bytes) that makes a relayed RTP datagram an onset.
    #[arg(long, global = true, default_value_t = 20)]
    proxy_threshold: usize,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Place one call to the SBC.
    Call {
        /// The SBC's SIP UDP address.
        #[arg(long)]
        sbc: SocketAddr,
        /// The called number (Request-URI user).
        #[arg(long)]
        to: String,
        /// Our number (From user).
        #[arg(long, default_value = "+15557770123")]
        from: String,
        /// Our SIP UDP address.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// Play this tone (Hz) from the start; silence without it.
        #[arg(long)]
        tone: Option<f64>,
    },
    /// Answer every incoming call.
    Answer {
        /// Our SIP UDP address.
        #[arg(long)]
        listen: SocketAddr,
        /// Send 183 with SDP and play this tone (Hz) before answering.
        #[arg(long)]
        early_media_tone: Option<f64>,
        /// How long the early media plays before the 200.
        #[arg(long, default_value_t = 2000)]
        early_ms: u64,
        /// Without early media: ring (180) this long before the 200.
        #[arg(long, default_value_t = 0)]
        ring_ms: u64,
        /// The tone (Hz) played once answered; silence without it.
        #[arg(long)]
        tone: Option<f64>,
        /// Reject with this final status instead of answering (486, 603...).
        #[arg(long)]
        status: Option<u16>,
        /// Echo received RTP back once answered.
        #[arg(long)]
        echo: bool,
    },
}

// ---------------------------------------------------------------------------
// Output

static CLOCK: OnceLock<Clock> = OnceLock::new();

fn clock() -> Clock {
    *CLOCK.get_or_init(Clock::new)
}

fn now_ms() -> f64 {
    clock().now().as_micros() as f64 / 1000.0
}

/// Prints one JSON line: `event`, `t_ms`, and the fields of `fields`.
fn emit(event: &str, fields: Value) {
    let mut obj = serde_json::Map::new();
    obj.insert("event".into(), json!(event));
    obj.insert("t_ms".into(), json!((now_ms() * 1000.0).round() / 1000.0));
    if let Value::Object(m) = fields {
        obj.extend(m);
    }
    println!("{}", Value::Object(obj));
}

fn end_reason(r: &EndReason) -> String {
    match r {
        EndReason::Local => "local".into(),
        EndReason::RemoteBye => "remote_bye".into(),
        EndReason::RemoteCancel => "remote_cancel".into(),
        EndReason::Failed(s) => format!("failed:{s}"),
        EndReason::NoAck => "no_ack".into(),
        EndReason::Broken(s) => format!("broken:{s}"),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Media: one task per leg, PCMU/PCMA RTP on its own socket

#[derive(Debug)]
enum MediaCmd {
    Stall(u64),
    Remote(NegotiatedAudio),
    Tone(Option<f64>),
    Echo(bool),
    Dtmf(String),
    Stop,
}

const FRAME: usize = 160; // 20 ms at 8 kHz

struct Media {
    leg: u64,
    sock: UdpSocket,
    remote: Option<SocketAddr>,
    pt: u8,
    te: Option<u8>,
    tone: Option<ToneGenerator>,
    amplitude: f64,
    echo: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    dtmf_tx: DtmfSender,
    dtmf_rx: DtmfReceiver,
    /// What was heard since the last report.
    heard: Vec<i16>,
    packets: u64,
    total_packets: u64,
    /// Milliseconds of quiet before the current packet (onset detection).
    quiet_ms: f64,
    /// Arrival time of the last audio packet, and the longest gap between two
    /// in this report window (ms).
    last_rx_ms: Option<f64>,
    max_gap_ms: f64,
    /// Our RTP held back (the `stall` command).
    stall: Option<Stall>,
    transit: Transit,
}

impl Media {
    fn new(leg: u64, sock: UdpSocket, amplitude: f64, tone: Option<f64>) -> Media {
        let mut m = Media {
            leg,
            sock,
            remote: None,
            pt: 0,
            te: None,
            tone: None,
            amplitude,
            echo: false,
            seq: 1000 + (leg as u16).wrapping_mul(977),
            ts: 8000u32.wrapping_mul(leg as u32 + 1),
            ssrc: 0x7e57_0000 | leg as u32,
            dtmf_tx: DtmfSender::new(ClockRate(8000), 10),
            dtmf_rx: DtmfReceiver::new(),
            heard: Vec::with_capacity(8000),
            packets: 0,
            total_packets: 0,
            quiet_ms: 0.0,
            last_rx_ms: None,
            max_gap_ms: 0.0,
            stall: None,
            transit: Transit::new(8.0),
        };
        m.set_tone(tone);
        m
    }

    fn set_tone(&mut self, hz: Option<f64>) {
        self.tone = hz.map(|f| ToneGenerator::new(8000, &[(f, self.amplitude)]));
    }

    async fn send(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) {
        let Some(to) = self.remote else { return };
        let Some(pt) = PayloadType::new(pt) else {
            return;
        };
        let mut w = RtpWriter::new(pt, SeqNo(self.seq), RtpTimestamp(ts), Ssrc(self.ssrc));
        w.marker = marker;
        let mut buf = [0u8; 1500];
        if let Ok(len) = w.write_packet(payload, &mut buf) {
            match self.stall.as_mut() {
                Some(st) => st.held.push((buf[..len].to_vec(), to)),
                None => {
                    let _ = self.sock.send_to(&buf[..len], to).await;
                }
            }
            self.seq = self.seq.wrapping_add(1);
        }
    }

    /// One 20 ms tick: DTMF events while queued, else tone or silence. Nothing
    /// while echoing (the echo is the stream).
    async fn tick(&mut self) {
        if self.remote.is_none() {
            return;
        }
        if let Some(te) = self.te
            && !self.dtmf_tx.is_idle()
        {
            let blank = EventPacket {
                marker: false,
                timestamp: RtpTimestamp(0),
                event: TelephoneEvent {
                    event: 0,
                    end: false,
                    volume: 0,
                    duration: 0,
                },
            };
            let mut evs = [blank; 3];
            let n = self
                .dtmf_tx
                .tick(RtpTimestamp(self.ts), FRAME as u32, &mut evs);
            if n > 0 {
                for e in &evs[..n] {
                    let mut payload = [0u8; 4];
                    e.event.write(&mut payload);
                    self.send(te, e.marker, e.timestamp.0, &payload).await;
                }
                self.ts = self.ts.wrapping_add(FRAME as u32);
                return;
            }
        }
        if self.echo {
            return;
        }
        let mut pcm = [0i16; FRAME];
        if let Some(t) = self.tone.as_mut() {
            t.fill(&mut pcm);
        }
        let mut payload = [0u8; FRAME];
        if self.pt == 8 {
            g711::alaw_encode(&pcm, &mut payload);
        } else {
            g711::ulaw_encode(&pcm, &mut payload);
        }
        let (pt, ts) = (self.pt, self.ts);
        self.send(pt, false, ts, &payload).await;
        self.ts = self.ts.wrapping_add(FRAME as u32);
    }

    async fn receive(&mut self, data: &[u8], from: SocketAddr) {
        let Ok(p) = RtpPacket::parse(Bytes::copy_from_slice(data)) else {
            return;
        };
        if self.total_packets == 0 {
            emit(
                "rtp_started",
                json!({"leg": self.leg, "from": from.to_string()}),
            );
        }
        self.total_packets += 1;
        let pt = p.payload_type().value();
        if Some(pt) == self.te {
            if let Ok(ev) = TelephoneEvent::parse(p.payload_bytes())
                && let Some(d) = self.dtmf_rx.handle(p.timestamp(), &ev)
            {
                emit(
                    "dtmf",
                    json!({"leg": self.leg, "digit": d.as_char().to_string(), "via": "rfc4733"}),
                );
            }
            return;
        }
        if pt != 0 && pt != 8 {
            return;
        }
        if self.echo {
            // Straight back, before anything else: the echo adds no delay.
            let payload = p.payload_bytes().to_vec();
            let ts = self.ts;
            self.send(pt, false, ts, &payload).await;
            self.ts = self.ts.wrapping_add(payload.len() as u32);
        }
        self.packets += 1;
        let t = now_ms();
        if let Some(last) = self.last_rx_ms {
            self.max_gap_ms = self.max_gap_ms.max(t - last);
        }
        self.last_rx_ms = Some(t);
        self.transit
            .observe(t, p.ssrc().0, p.timestamp().0, p.marker());
        let mut out = vec![0i16; p.payload_bytes().len()];
        let n = if pt == 8 {
            g711::alaw_decode(p.payload_bytes(), &mut out)
        } else {
            g711::ulaw_decode(p.payload_bytes(), &mut out)
        };
        let frame = &out[..n];
        let level = rms_db(frame);
        if level > -35.0 && self.quiet_ms >= 200.0 {
            let offset = frame.iter().position(|s| s.unsigned_abs() > 1000);
            emit(
                "onset",
                json!({"leg": self.leg, "level_db": round1(level), "offset": offset, "samples": n}),
            );
        }
        if level < -50.0 {
            self.quiet_ms += n as f64 / 8.0;
        } else {
            self.quiet_ms = 0.0;
        }
        self.heard.extend_from_slice(frame);
    }

    /// Reports what was heard since the last report (the analysis runs off the
    /// media task, so it never delays an echo).
    fn report(&mut self) {
        if self.remote.is_none() && self.total_packets == 0 {
            return;
        }
        let take = self.heard.len().min(8000);
        let x = self.heard[self.heard.len() - take..].to_vec();
        let (leg, packets, gap) = (self.leg, self.packets, round1(self.max_gap_ms));
        let (tmin, tmax, markers) = self.transit.take();
        self.heard.clear();
        self.packets = 0;
        self.max_gap_ms = 0.0;
        tokio::task::spawn_blocking(move || {
            let fields = if x.len() >= 400 {
                let f = dominant_frequency(&x, 8000, 100.0, 3800.0);
                json!({
                    "leg": leg,
                    "freq": f,
                    "level_db": round1(goertzel_level_db(&x, 8000, f)),
                    "rms_db": round1(rms_db(&x)),
                    "packets": packets,
                    "max_gap_ms": gap,
                    "transit_min_ms": tmin,
                    "transit_max_ms": tmax,
                    "markers": markers,
                })
            } else {
                json!({"leg": leg, "freq": null, "level_db": null, "rms_db": null, "packets": packets, "max_gap_ms": gap, "markers": markers})
            };
            emit("tone", fields);
        });
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<MediaCmd>, report_ms: u64) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut report = tokio::time::interval(Duration::from_millis(report_ms.max(50)));
        report.set_missed_tick_behavior(MissedTickBehavior::Delay);
        report.tick().await;
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None | Some(MediaCmd::Stop) => break,
                    Some(MediaCmd::Stall(ms)) => {
                        release(&mut self.stall, &self.sock, "rtp").await;
                        self.stall = Some(Stall::new(ms));
                    }
                    Some(MediaCmd::Remote(n)) => {
                        self.remote = n.remote;
                        self.pt = n.payload_type.value();
                        self.te = n.telephone_event.map(|p| p.value());
                        let local = self.sock.local_addr().ok().map(|a| a.to_string());
                        emit("media", json!({
                            "leg": self.leg,
                            "local": local,
                            "remote": n.remote.map(|a| a.to_string()),
                            "pt": self.pt,
                            "te": self.te,
                            "direction": n.direction.as_str(),
                        }));
                    }
                    Some(MediaCmd::Tone(hz)) => self.set_tone(hz),
                    Some(MediaCmd::Echo(on)) => self.echo = on,
                    Some(MediaCmd::Dtmf(d)) => {
                        if let Err(e) = self.dtmf_tx.enqueue(&d, Millis(100)) {
                            emit("error", json!({"message": format!("dtmf {d}: {e}")}));
                        }
                    }
                },
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        let data = buf[..n].to_vec();
                        self.receive(&data, from).await;
                    }
                }
                _ = tick.tick() => self.tick().await,
                _ = report.tick() => self.report(),
                _ = stall_over(&mut self.stall) => release(&mut self.stall, &self.sock, "rtp").await,
            }
        }
        self.report();
    }
}

/// Relative transit of an RTP stream: arrival time minus media time (the RTP
/// timestamp on a `khz` clock, unwrapped), against the stream's first packet.
/// Steady pacing keeps it flat; a stall shows as a bump, a sender whose output
/// runs ahead of or behind its timestamps as a step or a slope. Min and max are
/// per report window.
struct Transit {
    khz: f64,
    /// Packets with the marker bit in this window.
    markers: u64,
    first: Option<(u32, u32, f64)>, // (ssrc, timestamp, arrival ms)
    ext: i64,
    last_ts: u32,
    min: f64,
    max: f64,
}

impl Transit {
    fn new(khz: f64) -> Transit {
        Transit {
            khz,
            markers: 0,
            first: None,
            ext: 0,
            last_ts: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn observe(&mut self, t_ms: f64, ssrc: u32, ts: u32, marker: bool) {
        self.markers += u64::from(marker);
        match self.first {
            Some((s, _, _)) if s == ssrc => {
                self.ext += i64::from(ts.wrapping_sub(self.last_ts) as i32);
            }
            _ => {
                self.first = Some((ssrc, ts, t_ms));
                self.ext = 0;
            }
        }
        self.last_ts = ts;
        let Some((_, _, t0)) = self.first else { return };
        let v = (t_ms - t0) - self.ext as f64 / self.khz;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// `(min, max, markers)` of this window (ms), then a new window.
    fn take(&mut self) -> (Option<f64>, Option<f64>, u64) {
        let r = if self.min.is_finite() {
            (Some(round1(self.min)), Some(round1(self.max)), self.markers)
        } else {
            (None, None, self.markers)
        };
        self.markers = 0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
        r
    }
}

/// A stall in progress: its end, and the datagrams held until then.
struct Stall {
    ms: u64,
    until: Pin<Box<tokio::time::Sleep>>,
    held: Vec<(Vec<u8>, SocketAddr)>,
}

impl Stall {
    fn new(ms: u64) -> Stall {
        Stall {
            ms,
            until: Box::pin(tokio::time::sleep(Duration::from_millis(ms))),
            held: Vec::new(),
        }
    }
}

/// Resolves when the stall in `s` is over (never without one).
async fn stall_over(s: &mut Option<Stall>) {
    match s {
        Some(st) => st.until.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Ends the stall in `s`: sends what it held, in order, on `sock`.
async fn release(s: &mut Option<Stall>, sock: &UdpSocket, dir: &str) {
    if let Some(st) = s.take() {
        for (d, to) in &st.held {
            let _ = sock.send_to(d, *to).await;
        }
        emit(
            "stall",
            json!({"dir": dir, "ms": st.ms, "held": st.held.len()}),
        );
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

// ---------------------------------------------------------------------------
// The timestamping UDP relay

/// Finds RTP datagrams much larger than the recent ones (a click in an
/// encrypted Opus stream: silence encodes small).
struct SizeOnset {
    dir: &'static str,
    recent: VecDeque<usize>,
    last_big_ms: f64,
    threshold: usize,
    /// RTP packets in this report window, the last one's arrival and the longest
    /// gap between two (ms).
    packets: u64,
    last_ms: Option<f64>,
    max_gap_ms: f64,
    /// Opus at 48 kHz (SRTP leaves the RTP header readable).
    transit: Transit,
}

impl SizeOnset {
    fn new(dir: &'static str, threshold: usize) -> Self {
        SizeOnset {
            dir,
            recent: VecDeque::with_capacity(64),
            last_big_ms: f64::MIN,
            threshold,
            packets: 0,
            last_ms: None,
            max_gap_ms: 0.0,
            transit: Transit::new(48.0),
        }
    }

    /// `proxy_stats {dir, packets, max_gap_ms}` for the window, then a new window.
    fn report(&mut self) {
        let (tmin, tmax, markers) = self.transit.take();
        if self.packets > 0 {
            emit(
                "proxy_stats",
                json!({
                    "dir": self.dir,
                    "packets": self.packets,
                    "max_gap_ms": round1(self.max_gap_ms),
                    "transit_min_ms": tmin,
                    "transit_max_ms": tmax,
                    "markers": markers,
                }),
            );
        }
        self.packets = 0;
        self.max_gap_ms = 0.0;
    }

    fn observe(&mut self, t_ms: f64, d: &[u8]) {
        // RTP, not STUN/DTLS (first byte < 128) and not RTCP (PT 192-223).
        let rtp = d.len() >= 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1]);
        if !rtp {
            return;
        }
        let size = d.len();
        self.packets += 1;
        if let Some(last) = self.last_ms {
            self.max_gap_ms = self.max_gap_ms.max(t_ms - last);
        }
        self.last_ms = Some(t_ms);
        let ts = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        self.transit.observe(t_ms, ssrc, ts, d[1] & 0x80 != 0);
        if let Some(&baseline) = self.recent.iter().min()
            && self.recent.len() >= 10
            && size >= baseline + self.threshold
        {
            if t_ms - self.last_big_ms > 300.0 {
                emit(
                    "proxy_onset",
                    json!({"dir": self.dir, "size": size, "baseline": baseline}),
                );
            }
            self.last_big_ms = t_ms;
        }
        if self.recent.len() == 50 {
            self.recent.pop_front();
        }
        self.recent.push_back(size);
    }
}

/// A relay command: stall one direction (`up`: client to target).
#[derive(Debug)]
struct ProxyStall {
    up: bool,
    ms: u64,
}

async fn proxy(
    front: UdpSocket,
    back: UdpSocket,
    target: SocketAddr,
    threshold: usize,
    report_ms: u64,
    mut cmds: mpsc::UnboundedReceiver<ProxyStall>,
) {
    let mut client: Option<SocketAddr> = None;
    let mut stall_up: Option<Stall> = None;
    let mut stall_down: Option<Stall> = None;
    let mut up = SizeOnset::new("up", threshold);
    let mut down = SizeOnset::new("down", threshold);
    let mut b1 = vec![0u8; 2048];
    let mut b2 = vec![0u8; 2048];
    let mut report = tokio::time::interval(Duration::from_millis(report_ms.max(50)));
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = report.tick() => {
                up.report();
                down.report();
            }
            Some(c) = cmds.recv() => {
                if c.up {
                    release(&mut stall_up, &back, "up").await;
                    stall_up = Some(Stall::new(c.ms));
                } else {
                    release(&mut stall_down, &front, "down").await;
                    stall_down = Some(Stall::new(c.ms));
                }
            }
            _ = stall_over(&mut stall_up) => release(&mut stall_up, &back, "up").await,
            _ = stall_over(&mut stall_down) => release(&mut stall_down, &front, "down").await,
            r = front.recv_from(&mut b1) => {
                let Ok((n, from)) = r else { continue };
                let t = now_ms();
                if client != Some(from) {
                    emit("proxy_client", json!({"from": from.to_string()}));
                    client = Some(from);
                }
                match stall_up.as_mut() {
                    Some(st) => st.held.push((b1[..n].to_vec(), target)),
                    None => {
                        let _ = back.send_to(&b1[..n], target).await;
                    }
                }
                up.observe(t, &b1[..n]);
            }
            r = back.recv_from(&mut b2) => {
                let Ok((n, _)) = r else { continue };
                let t = now_ms();
                if let Some(c) = client {
                    match stall_down.as_mut() {
                        Some(st) => st.held.push((b2[..n].to_vec(), c)),
                        None => {
                            let _ = front.send_to(&b2[..n], c).await;
                        }
                    }
                }
                down.observe(t, &b2[..n]);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Calls

struct Leg {
    id: u64,
    media: mpsc::UnboundedSender<MediaCmd>,
    local: SocketAddr,
    /// UAC: our offer.
    offer: Option<SessionDescription>,
    /// UAS: our answer (sent in 183 and 200).
    answer: Option<String>,
    sdp_version: u64,
}

enum Internal {
    Answer(LegId),
}

struct Carrier {
    h: SipHandle,
    common: Common,
    legs: HashMap<LegId, Leg>,
    next_id: u64,
    internal: mpsc::UnboundedSender<Internal>,
    // Answer-mode settings.
    early_tone: Option<f64>,
    early_ms: u64,
    ring_ms: u64,
    tone: Option<f64>,
    status: Option<u16>,
    echo: bool,
    /// Commands to the relay (`--udp-proxy`).
    proxy: Option<mpsc::UnboundedSender<ProxyStall>>,
}

fn pcmu_caps() -> AudioCaps {
    let mut caps = AudioCaps::standard();
    caps.codecs.retain(|c| c.codec != Codec::Opus);
    caps
}

impl Carrier {
    /// A media task on a fresh RTP socket.
    async fn new_media(
        &mut self,
        tone: Option<f64>,
    ) -> std::io::Result<(u64, SocketAddr, mpsc::UnboundedSender<MediaCmd>)> {
        let sock = UdpSocket::bind(SocketAddr::new(self.common.rtp_ip, 0)).await?;
        let local = sock.local_addr()?;
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = mpsc::unbounded_channel();
        let m = Media::new(id, sock, self.common.amplitude, tone);
        tokio::spawn(m.run(rx, self.common.report_ms));
        Ok((id, local, tx))
    }

    async fn place_call(
        &mut self,
        sbc: SocketAddr,
        to: &str,
        from: &str,
        tone: Option<f64>,
    ) -> Result<(), String> {
        let (id, local, media) = self.new_media(tone).await.map_err(|e| e.to_string())?;
        let offer = sdp::create_offer(
            &pcmu_caps(),
            &LocalMedia::rtp(local.ip(), local.port(), 4242 + id),
        );
        let ip = self.common.rtp_ip;
        let p = InviteParams {
            body_type: None,
            contact_params: None,
            flow: false,
            request_uri: format!("sip:{to}@{sbc}"),
            from: format!("<sip:{from}@{ip}>"),
            to: format!("<sip:{to}@{sbc}>"),
            peer: Peer::udp(sbc),
            sdp: Some(offer.to_string().into_bytes()),
            headers: Vec::new(),
            credentials: None,
        };
        let leg = self
            .h
            .call(move |ua, now| ua.invite(now, p))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        emit(
            "calling",
            json!({"leg": id, "to": to, "rtp": local.to_string()}),
        );
        self.legs.insert(
            leg,
            Leg {
                id,
                media,
                local,
                offer: Some(offer),
                answer: None,
                sdp_version: 1,
            },
        );
        Ok(())
    }

    /// UAC: apply an SDP answer (183 or 200).
    fn apply_answer(&mut self, leg: LegId, sdp: &[u8]) {
        let Some(l) = self.legs.get(&leg) else { return };
        let Some(offer) = l.offer.as_ref() else {
            return;
        };
        let parsed = std::str::from_utf8(sdp)
            .map_err(|e| e.to_string())
            .and_then(|t| SessionDescription::parse(t).map_err(|e| format!("{e:?}")))
            .and_then(|a| sdp::negotiated_from_answer(offer, &a).map_err(|e| e.to_string()));
        match parsed {
            Ok(n) => {
                let _ = l.media.send(MediaCmd::Remote(n));
            }
            Err(e) => emit(
                "error",
                json!({"leg": l.id, "message": format!("bad SDP answer: {e}")}),
            ),
        }
    }

    async fn on_event(&mut self, ev: UaEvent) {
        match ev {
            UaEvent::IncomingInvite { leg, request, from } => {
                self.incoming(leg, &request, from).await;
            }
            UaEvent::Progress { leg, status, sdp } => {
                let id = self.legs.get(&leg).map_or(0, |l| l.id);
                emit(
                    "progress",
                    json!({"leg": id, "status": status, "sdp": sdp.is_some()}),
                );
                if let Some(s) = sdp {
                    self.apply_answer(leg, &s);
                }
            }
            UaEvent::Answered { leg, sdp } => {
                let id = self.legs.get(&leg).map_or(0, |l| l.id);
                emit("answered", json!({"leg": id}));
                if let Some(s) = sdp {
                    self.apply_answer(leg, &s);
                }
            }
            UaEvent::Failed {
                leg,
                status,
                reason,
            } => {
                let id = self.legs.get(&leg).map_or(0, |l| l.id);
                emit(
                    "failed",
                    json!({"leg": id, "status": status, "reason": reason}),
                );
            }
            UaEvent::Terminated { leg, reason } => {
                if let Some(l) = self.legs.remove(&leg) {
                    let _ = l.media.send(MediaCmd::Stop);
                    emit("ended", json!({"leg": l.id, "reason": end_reason(&reason)}));
                }
            }
            UaEvent::Info {
                leg,
                content_type,
                body,
            } => {
                let id = self.legs.get(&leg).map_or(0, |l| l.id);
                match dtmf_info::digit(&content_type, &body) {
                    Some(d) => emit(
                        "dtmf",
                        json!({"leg": id, "digit": d.to_string(), "via": "info"}),
                    ),
                    None => emit(
                        "info",
                        json!({"leg": id, "content_type": content_type, "body": String::from_utf8_lossy(&body)}),
                    ),
                }
            }
            UaEvent::Offer { leg, sdp } => self.reoffer(leg, &sdp).await,
            UaEvent::Acked { leg, .. } => {
                let id = self.legs.get(&leg).map_or(0, |l| l.id);
                emit("acked", json!({"leg": id}));
            }
            _ => {}
        }
    }

    async fn incoming(
        &mut self,
        leg: LegId,
        request: &sip_bridge::sip::message::Request,
        _from: Peer,
    ) {
        let from_hdr = request.header_from().unwrap_or("").to_string();
        let to_hdr = request.header_to().unwrap_or("").to_string();
        let uri = request.uri.to_string();
        if let Some(status) = self.status.filter(|s| *s >= 300) {
            emit(
                "incoming",
                json!({"leg": 0, "from": from_hdr, "to": to_hdr, "uri": uri}),
            );
            let _ = self
                .h
                .call(move |ua, now| ua.respond(now, leg, status, None, &[]))
                .await;
            emit("rejected", json!({"status": status}));
            return;
        }
        let early = self.early_tone;
        let (id, local, media) = match self.new_media(early).await {
            Ok(v) => v,
            Err(e) => {
                emit("error", json!({"message": format!("RTP socket: {e}")}));
                let _ = self
                    .h
                    .call(move |ua, now| ua.respond(now, leg, 503, None, &[]))
                    .await;
                return;
            }
        };
        emit(
            "incoming",
            json!({"leg": id, "from": from_hdr, "to": to_hdr, "uri": uri}),
        );
        let answer = std::str::from_utf8(&request.body)
            .map_err(|e| e.to_string())
            .and_then(|t| SessionDescription::parse(t).map_err(|e| format!("{e:?}")))
            .and_then(|offer| {
                let mut caps = pcmu_caps();
                caps.codecs.retain(|c| c.codec == Codec::Pcmu);
                sdp::answer_audio(
                    &offer,
                    &caps,
                    &LocalMedia::rtp(local.ip(), local.port(), 5151 + id),
                )
                .map_err(|e| e.to_string())
            });
        let (answer, negotiated) = match answer {
            Ok(a) => a,
            Err(e) => {
                emit(
                    "error",
                    json!({"leg": id, "message": format!("bad offer: {e}")}),
                );
                let _ = media.send(MediaCmd::Stop);
                let _ = self
                    .h
                    .call(move |ua, now| ua.respond(now, leg, 488, None, &[]))
                    .await;
                return;
            }
        };
        let answer = answer.to_string();
        let _ = media.send(MediaCmd::Remote(negotiated));
        self.legs.insert(
            leg,
            Leg {
                id,
                media,
                local,
                offer: None,
                answer: Some(answer.clone()),
                sdp_version: 1,
            },
        );
        let delay = if early.is_some() {
            let sdp = answer.into_bytes();
            let _ = self
                .h
                .call(move |ua, now| ua.respond(now, leg, 183, Some(&sdp), &[]))
                .await;
            emit("early", json!({"leg": id}));
            self.early_ms
        } else {
            let _ = self
                .h
                .call(move |ua, now| ua.respond(now, leg, 180, None, &[]))
                .await;
            self.ring_ms
        };
        let tx = self.internal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let _ = tx.send(Internal::Answer(leg));
        });
    }

    async fn answer(&mut self, leg: LegId) {
        let Some(l) = self.legs.get(&leg) else { return };
        let Some(sdp) = l.answer.clone() else { return };
        let (id, media) = (l.id, l.media.clone());
        // Reported inside the UA's task, before its loop sends the 200: reported
        // after, a caller behind the sbc could report its own answer first (the
        // e2e fallback test compares the two).
        let r = self
            .h
            .call(move |ua, now| {
                let r = ua.respond(now, leg, 200, Some(sdp.as_bytes()), &[]);
                if r.is_ok() {
                    emit("answered", json!({"leg": id}));
                }
                r
            })
            .await;
        match r {
            Ok(Ok(())) => {
                let _ = media.send(MediaCmd::Tone(self.tone));
                if self.echo {
                    let _ = media.send(MediaCmd::Echo(true));
                }
            }
            Ok(Err(e)) => emit("error", json!({"leg": id, "message": format!("200: {e}")})),
            Err(e) => emit("error", json!({"leg": id, "message": format!("200: {e}")})),
        }
    }

    /// Answers a re-INVITE like a phone: PCMU, the offer's direction reversed.
    async fn reoffer(&mut self, leg: LegId, sdp_bytes: &[u8]) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        l.sdp_version += 1;
        let (id, local, version, media) = (l.id, l.local, l.sdp_version, l.media.clone());
        let offer = std::str::from_utf8(sdp_bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| SessionDescription::parse(t).map_err(|e| format!("{e:?}")));
        let mut caps = pcmu_caps();
        caps.codecs.retain(|c| c.codec == Codec::Pcmu);
        let mut lm = LocalMedia::rtp(local.ip(), local.port(), 5151 + id);
        lm.session_version = version;
        match offer.and_then(|o| sdp::answer_audio(&o, &caps, &lm).map_err(|e| e.to_string())) {
            Ok((answer, n)) => {
                emit(
                    "reinvite",
                    json!({"leg": id, "direction": n.direction.as_str()}),
                );
                let _ = media.send(MediaCmd::Remote(n));
                let body = answer.to_string().into_bytes();
                let _ = self
                    .h
                    .call(move |ua, now| ua.answer_offer(now, leg, 200, Some(&body)))
                    .await;
            }
            Err(e) => {
                emit(
                    "error",
                    json!({"leg": id, "message": format!("re-INVITE: {e}")}),
                );
                let _ = self
                    .h
                    .call(move |ua, now| ua.answer_offer(now, leg, 488, None))
                    .await;
            }
        }
    }

    async fn command(&mut self, line: &str) -> bool {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                emit("error", json!({"message": format!("bad command: {e}")}));
                return true;
            }
        };
        let legs: Vec<(LegId, u64, mpsc::UnboundedSender<MediaCmd>)> = self
            .legs
            .iter()
            .map(|(k, l)| (*k, l.id, l.media.clone()))
            .collect();
        match v["cmd"].as_str().unwrap_or("") {
            "hangup" => {
                for (leg, _, _) in legs {
                    let _ = self.h.call(move |ua, now| ua.hangup(now, leg)).await;
                }
            }
            "dtmf" => {
                let digits = v["digits"].as_str().unwrap_or("").to_string();
                let info = v["via"].as_str() == Some("info");
                for (leg, id, media) in legs {
                    if info {
                        for d in digits.chars() {
                            let body = dtmf_info::body(d).into_bytes();
                            let r = self
                                .h
                                .call(move |ua, now| {
                                    ua.info(now, leg, dtmf_info::CONTENT_TYPE, &body)
                                })
                                .await;
                            if let Ok(Err(e)) = r {
                                emit("error", json!({"leg": id, "message": format!("INFO: {e}")}));
                            }
                        }
                    } else {
                        let _ = media.send(MediaCmd::Dtmf(digits.clone()));
                    }
                }
            }
            "echo" => {
                let on = v["on"].as_bool().unwrap_or(true);
                self.echo = on;
                for (_, _, media) in legs {
                    let _ = media.send(MediaCmd::Echo(on));
                }
            }
            "tone" => {
                let hz = v["hz"].as_f64();
                self.tone = hz;
                for (_, _, media) in legs {
                    let _ = media.send(MediaCmd::Tone(hz));
                }
            }
            "stall" => {
                let ms = v["ms"].as_u64().unwrap_or(100);
                match v["dir"].as_str().unwrap_or("rtp") {
                    "rtp" => {
                        for (_, _, media) in legs {
                            let _ = media.send(MediaCmd::Stall(ms));
                        }
                    }
                    d @ ("up" | "down") => match &self.proxy {
                        Some(p) => {
                            let _ = p.send(ProxyStall { up: d == "up", ms });
                        }
                        None => emit(
                            "error",
                            json!({"message": "stall up/down needs --udp-proxy"}),
                        ),
                    },
                    other => emit(
                        "error",
                        json!({"message": format!("stall: unknown dir `{other}`")}),
                    ),
                }
            }
            "quit" => return false,
            other => emit(
                "error",
                json!({"message": format!("unknown command `{other}`")}),
            ),
        }
        true
    }
}

/// Stdin lines on a thread (tokio's stdin needs a feature this workspace does
/// not enable); `None` at end of input.
fn stdin_lines() -> mpsc::UnboundedReceiver<Option<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) => {
                    let l = line.trim();
                    if !l.is_empty() && tx.send(Some(l.to_string())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn run(cli: Cli) -> Result<(), String> {
    let _ = clock();
    let mut proxy_tx = None;
    if let Some(spec) = &cli.common.udp_proxy {
        let (listen, target) = spec
            .split_once('=')
            .ok_or("--udp-proxy wants LISTEN=TARGET")?;
        let listen: SocketAddr = listen.parse().map_err(|e| format!("--udp-proxy: {e}"))?;
        let target: SocketAddr = target.parse().map_err(|e| format!("--udp-proxy: {e}"))?;
        let front = UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("--udp-proxy bind {listen}: {e}"))?;
        let back = UdpSocket::bind(SocketAddr::new(cli.common.rtp_ip, 0))
            .await
            .map_err(|e| e.to_string())?;
        emit(
            "proxy",
            json!({
                "listen": front.local_addr().map_err(|e| e.to_string())?.to_string(),
                "upstream": back.local_addr().map_err(|e| e.to_string())?.to_string(),
                "target": target.to_string(),
            }),
        );
        let (ptx, prx) = mpsc::unbounded_channel();
        proxy_tx = Some(ptx);
        tokio::spawn(proxy(
            front,
            back,
            target,
            cli.common.proxy_threshold,
            cli.common.report_ms,
            prx,
        ));
    }
    let sip_addr = match &cli.mode {
        Mode::Call { bind, .. } => *bind,
        Mode::Answer { listen, .. } => *listen,
    };
    let mut ep = SipEndpoint::start(SipConfig {
        udp: Some(sip_addr),
        tcp: None,
        user_agent: "test-carrier".into(),
        seed: u64::from(std::process::id()),
        ..SipConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let bound = ep.udp_addr.ok_or("no UDP address")?;
    emit("ready", json!({"sip": bound.to_string()}));
    let (itx, mut irx) = mpsc::unbounded_channel();
    let mut c = Carrier {
        h: ep.handle.clone(),
        common: cli.common.clone(),
        legs: HashMap::new(),
        next_id: 0,
        internal: itx,
        early_tone: None,
        early_ms: 0,
        ring_ms: 0,
        tone: None,
        status: None,
        echo: false,
        proxy: proxy_tx,
    };
    match cli.mode {
        Mode::Call {
            sbc,
            to,
            from,
            tone,
            ..
        } => {
            c.tone = tone;
            c.place_call(sbc, &to, &from, tone).await?;
        }
        Mode::Answer {
            early_media_tone,
            early_ms,
            ring_ms,
            tone,
            status,
            echo,
            ..
        } => {
            c.early_tone = early_media_tone;
            c.early_ms = early_ms;
            c.ring_ms = ring_ms;
            c.tone = tone;
            c.status = status;
            c.echo = echo;
        }
    }
    let mut stdin = stdin_lines();
    loop {
        tokio::select! {
            ev = ep.events.recv() => match ev {
                Some(ev) => c.on_event(ev).await,
                None => return Err("SIP endpoint stopped".into()),
            },
            line = stdin.recv() => match line.flatten() {
                Some(l) => {
                    if !c.command(&l).await {
                        break;
                    }
                }
                None => break,
            },
            Some(msg) = irx.recv() => match msg {
                Internal::Answer(leg) => c.answer(leg).await,
            },
        }
    }
    // Quit: hang up what is left and give the BYEs a moment.
    let legs: Vec<LegId> = c.legs.keys().copied().collect();
    for leg in legs {
        let _ = c.h.call(move |ua, now| ua.hangup(now, leg)).await;
    }
    let deadline = tokio::time::sleep(Duration::from_millis(500));
    tokio::pin!(deadline);
    while !c.legs.is_empty() {
        tokio::select! {
            ev = ep.events.recv() => match ev {
                Some(ev) => c.on_event(ev).await,
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("test-carrier: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            emit("error", json!({"message": e, "fatal": true}));
            eprintln!("test-carrier: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
