//! The AI agent leg on real sockets: the `sbc` binary (built by `cargo build -p
//! sbc`), the test agent (`integration_tests::agent`, a WebSocket server in this
//! process) and a caller in this process (a SIP UA on the SBC's own SIP stack
//! with PCMU RTP, which timestamps every packet on the same clock as the agent).
//!
//! Each test starts its own sbc on its own loopback address (127.0.0.6x), so
//! tests may run in parallel next to other suites. What is asserted is what the
//! protocol promises (tones at the right frequency, the order of marks and
//! audio, what ends and what stays); timings are printed, and only bounded
//! where a bound is the behaviour (a mark not before its audio has played, the
//! audio after `clear` at most one frame long).
//!
//! `latency` (ignored; run it on a quiet machine) measures the SBC's added
//! latency each way:
//! `cargo build --release -p sbc && cargo test --release -p integration-tests
//! --test agent_stream -- --ignored --nocapture latency`

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::agent::{
    Accept, AgentEvent, AgentOptions, CloseHow, Command, Pace, StreamFormat, TestAgent, dtmf_digit,
    mark_name, now,
};
use integration_tests::sbc_process::{Sbc, SbcSpec, lo};
use media_core::analysis::{ToneGenerator, dominant_frequency, goertzel_level_db, rms_db};
use media_core::codec::{Codec, g711};
use media_core::dtmf::{DtmfSender, EventPacket, TelephoneEvent};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{ClockRate, Millis};
use sbc::sip::{SipConfig, SipEndpoint, SipHandle};
use sip_bridge::sdp::{self, AudioCaps, LocalMedia, SessionDescription};
use sip_bridge::sip::dialog::{EndReason, InviteParams, LegId, UaEvent};
use sip_bridge::sip::message::Peer;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const NUMBER: &str = "+15550100";
const FROM: &str = "+15557770123";
/// How long any single expected thing may take before a test gives up.
const WAIT: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// The caller: a SIP UA with PCMU RTP, recording every packet it gets

/// What the caller sends.
#[derive(Clone, Copy, Debug)]
enum Source {
    Silence,
    Tone(f64),
    /// Every `period` packets, `len` packets of `hz` at -6 dBFS, else silence
    /// (the onset packets' send instants are recorded).
    Clicks {
        period: u32,
        len: u32,
        hz: f64,
    },
}

#[derive(Debug)]
enum MediaCmd {
    Remote(SocketAddr, u8, Option<u8>),
    Source(Source),
    Dtmf(String),
    Stop,
}

#[derive(Clone, Debug)]
struct RxPacket {
    at: Instant,
    pcm: Vec<i16>,
}

#[derive(Clone, Debug, PartialEq)]
enum SipEv {
    Progress(u16),
    Answered,
    Failed(u16),
    Ended(String),
}

#[derive(Debug, Default)]
struct CallLog {
    sip: Vec<(Instant, SipEv)>,
    /// Audio packets received (DTMF events are not audio).
    rx: Vec<RxPacket>,
    /// Send instants of click onsets.
    onsets: Vec<Instant>,
}

struct Caller {
    h: SipHandle,
    leg: LegId,
    log: Arc<Mutex<CallLog>>,
    media: mpsc::UnboundedSender<MediaCmd>,
    invited: Instant,
}

/// The caller's SIP endpoint, bound before the SBC starts (the trunk names it).
struct CallerEndpoint {
    ep: SipEndpoint,
    addr: SocketAddr,
}

impl CallerEndpoint {
    async fn bind(ip: IpAddr) -> CallerEndpoint {
        let ep = SipEndpoint::start(SipConfig {
            udp: Some(SocketAddr::new(ip, 0)),
            tcp: None,
            user_agent: "agent-stream-caller".into(),
            seed: u64::from(std::process::id()),
            ..SipConfig::default()
        })
        .await
        .expect("caller SIP endpoint");
        let addr = ep.udp_addr.expect("caller UDP address");
        CallerEndpoint { ep, addr }
    }
}

fn pcmu_caps() -> AudioCaps {
    let mut caps = AudioCaps::standard();
    caps.codecs.retain(|c| c.codec != Codec::Opus);
    caps
}

impl Caller {
    /// INVITEs `NUMBER` at `sbc`, sending `source` once the SBC's SDP is known.
    async fn call(cep: CallerEndpoint, sbc: SocketAddr, source: Source) -> Caller {
        let CallerEndpoint { ep, addr } = cep;
        let ip = addr.ip();
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).await.expect("RTP");
        let local = sock.local_addr().expect("RTP address");
        let offer = sdp::create_offer(&pcmu_caps(), &LocalMedia::rtp(ip, local.port(), 4242));
        let log = Arc::new(Mutex::new(CallLog::default()));
        let (mtx, mrx) = mpsc::unbounded_channel();
        tokio::spawn(media(sock, source, log.clone(), mrx));
        let p = InviteParams {
            body_type: None,
            contact_params: None,
            flow: false,
            request_uri: format!("sip:{NUMBER}@{sbc}"),
            from: format!("<sip:{FROM}@{ip}>"),
            to: format!("<sip:{NUMBER}@{sbc}>"),
            peer: Peer::udp(sbc),
            sdp: Some(offer.to_string().into_bytes()),
            headers: Vec::new(),
            credentials: None,
        };
        let invited = now();
        let leg = ep
            .handle
            .call(move |ua, now| ua.invite(now, p))
            .await
            .expect("SIP task")
            .expect("INVITE");
        let h = ep.handle.clone();
        tokio::spawn(sip_events(ep, offer, log.clone(), mtx.clone()));
        Caller {
            h,
            leg,
            log,
            media: mtx,
            invited,
        }
    }

    fn source(&self, s: Source) {
        let _ = self.media.send(MediaCmd::Source(s));
    }

    fn dtmf(&self, digits: &str) {
        let _ = self.media.send(MediaCmd::Dtmf(digits.into()));
    }

    async fn hangup(&self) {
        let leg = self.leg;
        let _ = self.h.call(move |ua, now| ua.hangup(now, leg)).await;
    }

    fn sip(&self) -> Vec<(Instant, SipEv)> {
        self.log.lock().unwrap().sip.clone()
    }

    fn answered(&self) -> Vec<Instant> {
        self.sip()
            .into_iter()
            .filter(|(_, e)| *e == SipEv::Answered)
            .map(|(t, _)| t)
            .collect()
    }

    fn ended(&self) -> Option<(Instant, String)> {
        self.sip().into_iter().find_map(|(t, e)| match e {
            SipEv::Ended(r) => Some((t, r)),
            _ => None,
        })
    }

    /// Polls the SIP log until `pred` finds something.
    async fn wait_sip<T>(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[(Instant, SipEv)]) -> Option<T>,
    ) -> T {
        let t0 = now();
        loop {
            if let Some(v) = pred(&self.sip()) {
                return v;
            }
            assert!(
                now() - t0 < timeout,
                "caller: no {what} within {timeout:?}; SIP: {:?}",
                self.sip()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_answered(&self) -> Instant {
        self.wait_sip("200 OK", WAIT, |s| {
            s.iter()
                .find(|(_, e)| *e == SipEv::Answered)
                .map(|(t, _)| *t)
        })
        .await
    }

    async fn wait_ended(&self) -> (Instant, String) {
        self.wait_sip("end of the call", WAIT, |s| {
            s.iter().find_map(|(t, e)| match e {
                SipEv::Ended(r) => Some((*t, r.clone())),
                _ => None,
            })
        })
        .await
    }

    /// Packets received in `[from, to)`.
    fn packets(&self, from: Instant, to: Instant) -> Vec<RxPacket> {
        let log = self.log.lock().unwrap();
        log.rx
            .iter()
            .filter(|p| p.at >= from && p.at < to)
            .cloned()
            .collect()
    }

    fn onsets(&self) -> Vec<Instant> {
        self.log.lock().unwrap().onsets.clone()
    }

    /// Waits until the last 300 ms heard carry `hz` as their dominant tone;
    /// returns when.
    async fn wait_hears(&self, hz: f64, after: Instant, timeout: Duration) -> Instant {
        let t0 = now();
        let mut last = (0.0, -200.0);
        loop {
            let pcm: Vec<i16> = {
                let log = self.log.lock().unwrap();
                let recent: Vec<&RxPacket> = log.rx.iter().rev().take(15).collect();
                if recent.len() == 15 && recent.iter().all(|p| p.at >= after) {
                    recent
                        .iter()
                        .rev()
                        .flat_map(|p| p.pcm.iter().copied())
                        .collect()
                } else {
                    Vec::new()
                }
            };
            if !pcm.is_empty() {
                let f = dominant_frequency(&pcm, 8000, 100.0, 3800.0);
                let l = goertzel_level_db(&pcm, 8000, f);
                last = (f, l);
                if (f - hz).abs() <= 10.0 && l > -30.0 {
                    return now();
                }
            }
            assert!(
                now() - t0 < timeout,
                "the caller did not hear {hz} Hz within {timeout:?} (last: {:.0} Hz at {:.1} dB); SIP: {:?}",
                last.0,
                last.1,
                self.sip()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn sip_events(
    mut ep: SipEndpoint,
    offer: SessionDescription,
    log: Arc<Mutex<CallLog>>,
    media: mpsc::UnboundedSender<MediaCmd>,
) {
    let apply = |sdp: &Option<Bytes>| {
        let Some(b) = sdp else { return };
        let Ok(text) = std::str::from_utf8(b) else {
            return;
        };
        let Ok(answer) = SessionDescription::parse(text) else {
            return;
        };
        if let Ok(n) = sdp::negotiated_from_answer(&offer, &answer)
            && let Some(remote) = n.remote
        {
            let _ = media.send(MediaCmd::Remote(
                remote,
                n.payload_type.value(),
                n.telephone_event.map(|p| p.value()),
            ));
        }
    };
    while let Some(ev) = ep.events.recv().await {
        let at = now();
        let rec = match &ev {
            UaEvent::Progress { status, sdp, .. } => {
                apply(sdp);
                Some(SipEv::Progress(*status))
            }
            UaEvent::Answered { sdp, .. } => {
                apply(sdp);
                Some(SipEv::Answered)
            }
            UaEvent::Failed { status, .. } => Some(SipEv::Failed(*status)),
            UaEvent::Terminated { reason, .. } => {
                let _ = media.send(MediaCmd::Stop);
                Some(SipEv::Ended(match reason {
                    EndReason::RemoteBye => "remote_bye".into(),
                    EndReason::Local => "local".into(),
                    other => format!("{other:?}"),
                }))
            }
            UaEvent::Offer { .. } => Some(SipEv::Progress(0)), // a re-INVITE: not expected
            _ => None,
        };
        if let Some(r) = rec {
            log.lock().unwrap().sip.push((at, r));
        }
    }
}

const FRAME: usize = 160;

async fn media(
    sock: UdpSocket,
    mut source: Source,
    log: Arc<Mutex<CallLog>>,
    mut rx: mpsc::UnboundedReceiver<MediaCmd>,
) {
    let mut remote: Option<(SocketAddr, u8, Option<u8>)> = None;
    let (mut seq, mut ts, ssrc) = (1000u16, 8000u32, 0x7e57_a9e7u32);
    let mut tone: Option<(f64, ToneGenerator)> = None;
    let mut dtmf = DtmfSender::new(ClockRate(8000), 10);
    let mut n_packet = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut buf = vec![0u8; 2048];
    let send = |sock: &UdpSocket,
                to: SocketAddr,
                pt: u8,
                marker: bool,
                seq: u16,
                ts: u32,
                payload: &[u8]| {
        let mut w = RtpWriter::new(
            PayloadType::new(pt).expect("payload type"),
            SeqNo(seq),
            RtpTimestamp(ts),
            Ssrc(ssrc),
        );
        w.marker = marker;
        let mut out = [0u8; 1500];
        if let Ok(len) = w.write_packet(payload, &mut out) {
            let _ = sock.try_send_to(&out[..len], to);
        }
    };
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None | Some(MediaCmd::Stop) => return,
                Some(MediaCmd::Remote(a, pt, te)) => remote = Some((a, pt, te)),
                Some(MediaCmd::Source(s)) => { source = s; n_packet = 0; }
                Some(MediaCmd::Dtmf(d)) => { let _ = dtmf.enqueue(&d, Millis(100)); }
            },
            r = sock.recv_from(&mut buf) => {
                let at = now();
                let Ok((n, _)) = r else { continue };
                let Ok(p) = RtpPacket::parse(Bytes::copy_from_slice(&buf[..n])) else { continue };
                let pt = p.payload_type().value();
                if pt != 0 && pt != 8 {
                    continue;
                }
                let mut pcm = vec![0i16; p.payload_bytes().len()];
                let k = if pt == 8 {
                    g711::alaw_decode(p.payload_bytes(), &mut pcm)
                } else {
                    g711::ulaw_decode(p.payload_bytes(), &mut pcm)
                };
                pcm.truncate(k);
                log.lock().unwrap().rx.push(RxPacket { at, pcm });
            }
            _ = tick.tick() => {
                let Some((to, pt, te)) = remote else { continue };
                if let Some(te) = te && !dtmf.is_idle() {
                    let blank = EventPacket {
                        marker: false,
                        timestamp: RtpTimestamp(0),
                        event: TelephoneEvent { event: 0, end: false, volume: 0, duration: 0 },
                    };
                    let mut evs = [blank; 3];
                    let n = dtmf.tick(RtpTimestamp(ts), FRAME as u32, &mut evs);
                    if n > 0 {
                        for e in &evs[..n] {
                            let mut payload = [0u8; 4];
                            e.event.write(&mut payload);
                            send(&sock, to, te, e.marker, seq, e.timestamp.0, &payload);
                            seq = seq.wrapping_add(1);
                        }
                        ts = ts.wrapping_add(FRAME as u32);
                        continue;
                    }
                }
                let mut pcm = [0i16; FRAME];
                let mut onset = false;
                let hz = match source {
                    Source::Silence => None,
                    Source::Tone(hz) => Some((hz, 8000.0)),
                    Source::Clicks { period, len, hz } => {
                        let k = n_packet % period.max(1);
                        onset = k == 0;
                        (k < len).then_some((hz, 16000.0))
                    }
                };
                if let Some((hz, amp)) = hz {
                    let g = match &mut tone {
                        Some((f, g)) if *f == hz => g,
                        _ => &mut tone.insert((hz, ToneGenerator::new(8000, &[(hz, amp)]))).1,
                    };
                    g.fill(&mut pcm);
                }
                n_packet += 1;
                let mut payload = [0u8; FRAME];
                if pt == 8 {
                    g711::alaw_encode(&pcm, &mut payload);
                } else {
                    g711::ulaw_encode(&pcm, &mut payload);
                }
                send(&sock, to, pt, false, seq, ts, &payload);
                if onset {
                    log.lock().unwrap().onsets.push(now());
                }
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(FRAME as u32);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The world of one test

/// Test `k`'s addresses: its sbc on 127.0.0.(60+k), the callers on 127.0.0.42
/// (the trunk's inbound range).
fn sbc_ip(k: u8) -> IpAddr {
    lo(60 + k)
}
const CALLER_IP: u8 = 42;

/// A plan step as TOML.
fn step(target: &str, secs: u32) -> String {
    format!("{{ ring = [\"{target}\"], timeout = \"{secs}s\" }}")
}

fn config(
    caller: SocketAddr,
    agent_url: &str,
    format: StreamFormat,
    token: &str,
    steps: &[String],
) -> String {
    format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{caller}\"]\n\
         inbound = [\"{ip}/32\"]\n\n\
         [[numbers]]\nid = \"support\"\ne164 = \"{NUMBER}\"\ndial = [ {steps} ]\n\n\
         [[streams]]\nurl = \"{agent_url}\"\nformat = \"{format}\"\n\
         headers = {{ Authorization = \"Bearer {token}\" }}\n",
        ip = caller.ip(),
        steps = steps.join(", "),
        format = format.as_str(),
    )
}

struct World {
    sbc: Sbc,
    agent: TestAgent,
    url: String,
    token: String,
}

impl World {
    /// An agent (`opts`), an sbc whose number rings `stream:URL` for
    /// `agent_secs`, then `then` (more steps), and a caller endpoint.
    async fn start(
        name: &str,
        k: u8,
        format: StreamFormat,
        opts: AgentOptions,
        agent_secs: u32,
        then: &[String],
    ) -> (World, CallerEndpoint) {
        let agent = TestAgent::start(opts).await.expect("agent");
        let url = agent.url(&format!("/agent/{name}?format={}", format.as_str()));
        let token = format!("tok-{name}-{}", format.as_str());
        let cep = CallerEndpoint::bind(lo(CALLER_IP)).await;
        let mut steps = vec![step(&format!("stream:{url}"), agent_secs)];
        steps.extend_from_slice(then);
        let toml = config(cep.addr, &url, format, &token, &steps);
        let mut spec = SbcSpec::new(
            &format!("agent-{name}-{}", format.as_str()),
            // Below the kernel's ephemeral ports (32768-60999), where the
            // harness picks the sbc's own; each test has its own address.
            (20000, 20099),
            toml,
        );
        spec.ip = sbc_ip(k);
        let sbc = tokio::task::spawn_blocking(move || Sbc::start(&spec))
            .await
            .expect("sbc start");
        (
            World {
                sbc,
                agent,
                url,
                token,
            },
            cep,
        )
    }

    /// Waits for the agent's connection and its start message; checks the
    /// request (path, Authorization) and the start message. Returns the
    /// connection and when `start` came.
    async fn agent_started(&mut self, format: StreamFormat) -> (u64, Instant) {
        let connected = self
            .agent
            .find(WAIT, |e| matches!(e, AgentEvent::Connected { .. }))
            .await
            .expect("the SBC opened the agent's WebSocket");
        let AgentEvent::Connected {
            conn,
            path,
            headers,
            ..
        } = connected
        else {
            unreachable!()
        };
        let expected_path = self.url.splitn(4, '/').nth(3).map(|p| format!("/{p}"));
        assert_eq!(Some(path), expected_path, "the request's path");
        let auth = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            auth,
            Some(format!("Bearer {}", self.token).as_str()),
            "the [[streams]] header reached the agent"
        );
        let start = self
            .agent
            .find(WAIT, |e| e.conn() == conn && e.is_message("start"))
            .await
            .expect("start");
        let at = start.at();
        let msg = start.json().cloned().unwrap_or_default();
        match format {
            StreamFormat::Pcm24k => {
                assert_eq!(msg["from"], FROM, "{msg}");
                assert_eq!(msg["to"], NUMBER, "{msg}");
                assert_eq!(msg["number"], "support", "{msg}");
                assert!(
                    msg["callId"].as_str().is_some_and(|c| !c.is_empty()),
                    "{msg}"
                );
                assert_eq!(msg["format"]["encoding"], "pcm16le", "{msg}");
                assert_eq!(msg["format"]["sampleRate"], 24000, "{msg}");
                assert_eq!(msg["format"]["frameMs"], 20, "{msg}");
            }
            StreamFormat::Twilio => {
                let first = self
                    .agent
                    .events()
                    .iter()
                    .find(|e| e.conn() == conn && matches!(e, AgentEvent::Message { .. }))
                    .cloned()
                    .expect("a first message");
                assert!(
                    first.is_message("connected"),
                    "Twilio opens with `connected`: {first:?}"
                );
                let s = &msg["start"];
                assert!(
                    msg["streamSid"].as_str().is_some_and(|c| !c.is_empty()),
                    "{msg}"
                );
                assert_eq!(s["mediaFormat"]["encoding"], "audio/x-mulaw", "{msg}");
                assert_eq!(s["mediaFormat"]["sampleRate"], 8000, "{msg}");
                assert_eq!(s["customParameters"]["from"], FROM, "{msg}");
                assert_eq!(s["customParameters"]["to"], NUMBER, "{msg}");
            }
        }
        (conn, at)
    }

    /// Blocking checks on the sbc from async code.
    fn assert_idle(&self) {
        tokio::task::block_in_place(|| self.sbc.assert_idle(IDLE));
    }

    /// No agent connection is left open (on either side: the agent's tasks
    /// end when the SBC's socket closes).
    async fn assert_agent_closed(&mut self) {
        let t0 = now();
        while !self.agent.live().is_empty() {
            assert!(
                now() - t0 < WAIT,
                "agent connections still open: {:?}",
                self.agent.live()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn rate(format: StreamFormat) -> u32 {
    format.sample_rate().hz()
}

/// Whether a 20 ms packet carries `hz` (Goertzel over the packet).
fn carries(pcm: &[i16], hz: f64) -> bool {
    goertzel_level_db(pcm, 8000, hz) > -40.0
}

// ---------------------------------------------------------------------------
// Tests

/// One call through the whole protocol in `format`: audio both ways, pacing,
/// clear, mark, DTMF, and the agent ending the call.
async fn conversation(format: StreamFormat, k: u8) {
    let name = "conversation";
    let (mut w, cep) = World::start(name, k, format, AgentOptions::default(), 20, &[]).await;
    let caller = Caller::call(cep, w.sbc.sip, Source::Tone(1000.0)).await;
    let (conn, started) = w.agent_started(format).await;
    let answered = caller.wait_answered().await;
    println!(
        "[{format:?}] start {:.0} ms after the INVITE, 200 OK {:.0} ms after start",
        ms(started - caller.invited),
        ms(answered.saturating_duration_since(started))
    );

    // 1. The caller's 1 kHz reaches the agent at the wire's rate, in 20 ms frames
    //    paced in real time.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let from = answered + Duration::from_millis(300);
    let frames = w.agent.frames(conn, from, from + Duration::from_secs(1));
    let (wire, r) = match format {
        StreamFormat::Pcm24k => (960, 24_000),
        StreamFormat::Twilio => (160, 8000),
    };
    let sizes: Vec<usize> = w
        .agent
        .events()
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Audio {
                conn: c,
                wire_bytes,
                rate,
                ..
            } if *c == conn => {
                assert_eq!(*rate, r);
                Some(*wire_bytes)
            }
            _ => None,
        })
        .collect();
    assert!(
        sizes.iter().all(|&b| b == wire),
        "every audio message is one 20 ms frame ({wire} bytes): {:?}",
        &sizes[..sizes.len().min(20)]
    );
    assert!(
        (35..=65).contains(&frames.len()),
        "about 50 frames a second reach the agent, got {}",
        frames.len()
    );
    let pcm: Vec<i16> = frames.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let f = dominant_frequency(&pcm, rate(format), 100.0, 3800.0);
    let level = goertzel_level_db(&pcm, rate(format), 1000.0);
    println!(
        "[{format:?}] the agent hears {f:.0} Hz at {level:.1} dB ({} frames in 1 s)",
        frames.len()
    );
    assert!(
        (f - 1000.0).abs() <= 5.0,
        "the agent hears the caller's 1 kHz, got {f} Hz"
    );
    assert!(
        level > -20.0,
        "at about the level sent (-12 dB), got {level:.1} dB"
    );

    // 2. The agent's 600 Hz reaches the caller: sent at 4x real time, played at 1x.
    let t_tone = now();
    w.agent.command(conn, Command::tone(600.0, 1000));
    caller
        .wait_hears(600.0, t_tone, Duration::from_secs(3))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = caller.packets(t_tone, now());
    let tone_at: Vec<Instant> = got
        .iter()
        .filter(|p| carries(&p.pcm, 600.0))
        .map(|p| p.at)
        .collect();
    let span = ms(*tone_at.last().unwrap() - tone_at[0]);
    let sent = w
        .agent
        .find(WAIT, |e| e.conn() == conn && e.is_sent("audio"))
        .await;
    let sent_span = w
        .agent
        .events()
        .iter()
        .filter(|e| e.conn() == conn && e.is_sent("audio") && e.at() >= t_tone)
        .map(AgentEvent::at)
        .max()
        .map(|last| ms(last - t_tone));
    println!(
        "[{format:?}] 1 s of 600 Hz sent within {sent_span:?} ms, heard by the caller for {span:.0} ms in {} packets",
        tone_at.len()
    );
    assert!(sent.is_some());
    assert!(
        (45..=52).contains(&tone_at.len()) && (800.0..1500.0).contains(&span),
        "1 s of agent audio is played as 50 packets over about 1 s ({} packets, {span:.0} ms)",
        tone_at.len()
    );

    // 3. Barge-in: 4 s of 800 Hz queued (sent at 4x), `clear` once it plays;
    //    the caller's audio goes silent within a frame and stays silent.
    let t_q = now();
    w.agent.command(conn, Command::tone(800.0, 4000));
    caller.wait_hears(800.0, t_q, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.agent.command(conn, Command::Clear);
    let clear = w
        .agent
        .wait_for(WAIT, |e| e.conn() == conn && e.is_sent("clear"))
        .await
        .expect("clear sent");
    let t_clear = clear.at();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = caller.packets(t_clear, now());
    let loud: Vec<&RxPacket> = after.iter().filter(|p| rms_db(&p.pcm) > -50.0).collect();
    let loud_samples: usize = after
        .iter()
        .map(|p| p.pcm.iter().filter(|s| s.unsigned_abs() > 300).count())
        .sum();
    let last_loud = loud.last().map(|p| ms(p.at - t_clear));
    let queued = w
        .agent
        .events()
        .iter()
        .filter(|e| e.conn() == conn && e.is_sent("audio") && e.at() > t_q)
        .map(|e| match e {
            AgentEvent::Sent { frames, .. } => *frames,
            _ => 0,
        })
        .sum::<usize>();
    println!(
        "[{format:?}] clear: {queued} frames had been sent; after clear the caller got {} packets with audio \
         ({loud_samples} loud samples), the last {last_loud:?} ms after clear; then {} silent packets",
        loud.len(),
        after.len() - loud.len()
    );
    assert!(
        queued >= 60,
        "more audio was queued than played when clear came"
    );
    assert!(
        loud_samples <= 200,
        "at most one frame (160 samples, plus the resampler's 2.5 ms tail) after clear, got {loud_samples}"
    );
    assert!(
        after.len() >= 25,
        "the caller keeps receiving (silence): {}",
        after.len()
    );

    // 4. A mark after 1 s of audio comes back when that audio has played.
    let t_m = now();
    let name_m = format!("m-{}", format.as_str());
    w.agent.command(conn, Command::tone(600.0, 1000));
    w.agent.command(conn, Command::Mark(name_m.clone()));
    let mark_sent = w
        .agent
        .wait_for(WAIT, |e| e.conn() == conn && e.is_sent("mark"))
        .await
        .expect("mark sent")
        .at();
    let echo = w
        .agent
        .wait_for(WAIT, |e| {
            e.conn() == conn
                && e.is_message("mark")
                && e.json().and_then(mark_name) == Some(name_m.as_str())
        })
        .await
        .expect("the mark comes back");
    let t_echo = echo.at();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard = caller.packets(t_m, now());
    let before_echo = heard
        .iter()
        .filter(|p| p.at <= t_echo && carries(&p.pcm, 600.0))
        .count();
    let after_echo = heard
        .iter()
        .filter(|p| p.at > t_echo && carries(&p.pcm, 600.0))
        .count();
    println!(
        "[{format:?}] mark: sent {:.0} ms after its audio started, back {:.0} ms after it was sent; \
         the caller heard {before_echo} tone packets before it and {after_echo} after",
        ms(mark_sent - t_m),
        ms(t_echo - mark_sent)
    );
    assert!(
        t_echo - mark_sent >= Duration::from_millis(500),
        "the mark waits for its audio to play ({:.0} ms)",
        ms(t_echo - mark_sent)
    );
    assert!(
        before_echo >= 45,
        "the mark comes back after its audio has played ({before_echo} of 50 packets)"
    );
    assert!(
        after_echo <= 2,
        "and not long after: {after_echo} packets of it came later"
    );

    // 5. DTMF from the caller reaches the agent.
    caller.dtmf("5");
    let d = w
        .agent
        .wait_for(WAIT, |e| e.conn() == conn && e.is_message("dtmf"))
        .await
        .expect("dtmf at the agent");
    assert_eq!(d.json().and_then(dtmf_digit), Some("5"), "{:?}", d.json());

    // 6. The agent ends the call: `hangup` (native); Twilio framing has none, its
    //    agents close the stream, which ends a call whose plan has no next step.
    let t_end = now();
    match format {
        StreamFormat::Pcm24k => {
            w.agent.command(conn, Command::Hangup);
        }
        StreamFormat::Twilio => {
            w.agent.command(conn, Command::Close);
        }
    }
    let (t_bye, reason) = caller.wait_ended().await;
    println!(
        "[{format:?}] BYE {:.0} ms after the agent ended the call",
        ms(t_bye - t_end)
    );
    assert_eq!(reason, "remote_bye", "the caller gets BYE");
    let closed = w
        .agent
        .find(WAIT, |e| {
            e.conn() == conn && matches!(e, AgentEvent::Closed { .. })
        })
        .await
        .expect("the agent's socket closes");
    if format == StreamFormat::Pcm24k {
        assert!(
            matches!(
                closed,
                AgentEvent::Closed {
                    how: CloseHow::CloseFrame,
                    ..
                }
            ),
            "the SBC closes the agent's stream cleanly: {closed:?}"
        );
        assert_eq!(w.agent.messages(conn, "stop").len(), 1, "and says stop");
    }
    assert_eq!(caller.answered().len(), 1);
    w.assert_agent_closed().await;
    w.assert_idle();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_agent_conversation() {
    conversation(StreamFormat::Pcm24k, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twilio_agent_conversation() {
    conversation(StreamFormat::Twilio, 2).await;
}

/// `transfer` hands the caller to another target (here `echo`: the caller hears
/// itself) and ends the agent's leg cleanly; the caller's call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_transfers_the_caller() {
    let format = StreamFormat::Pcm24k;
    let (mut w, cep) = World::start("transfer", 3, format, AgentOptions::default(), 20, &[]).await;
    let caller = Caller::call(cep, w.sbc.sip, Source::Tone(1000.0)).await;
    let (conn, _) = w.agent_started(format).await;
    caller.wait_answered().await;
    let t0 = now();
    w.agent.command(conn, Command::tone(600.0, 400));
    caller.wait_hears(600.0, t0, Duration::from_secs(3)).await;
    // Not yet connected to anything that returns the caller's own tone.
    let before = caller.packets(t0, now());
    assert!(
        !before
            .iter()
            .any(|p| carries(&p.pcm, 1000.0) && goertzel_level_db(&p.pcm, 8000, 1000.0) > -25.0)
    );
    w.agent.command(conn, Command::Transfer("echo".into()));
    let sent = w
        .agent
        .wait_for(WAIT, |e| e.conn() == conn && e.is_sent("transfer"))
        .await
        .expect("transfer sent")
        .at();
    let stop = w
        .agent
        .find(WAIT, |e| e.conn() == conn && e.is_message("stop"))
        .await
        .expect("the agent gets stop");
    let closed = w
        .agent
        .find(WAIT, |e| {
            e.conn() == conn && matches!(e, AgentEvent::Closed { .. })
        })
        .await
        .expect("the agent's socket closes");
    assert!(
        matches!(
            closed,
            AgentEvent::Closed {
                how: CloseHow::CloseFrame,
                ..
            }
        ),
        "cleanly, with a close frame: {closed:?}"
    );
    let echo = caller
        .wait_hears(1000.0, sent, Duration::from_secs(5))
        .await;
    println!(
        "transfer: stop {:.0} ms, close {:.0} ms, the caller hears itself (echo) {:.0} ms after the transfer",
        ms(stop.at() - sent),
        ms(closed.at() - sent),
        ms(echo - sent)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        caller.ended().is_none(),
        "the caller stays: {:?}",
        caller.sip()
    );
    assert_eq!(caller.answered().len(), 1, "answered once, by the agent");
    assert_eq!(w.agent.live(), Vec::<u64>::new());
    caller.hangup().await;
    caller.wait_ended().await;
    w.assert_idle();
}

/// An agent that never completes the WebSocket handshake: after the connect
/// timeout (5 s) the plan's next step (`tone:700`) takes the call.
async fn never_accepts(format: StreamFormat, k: u8) {
    let opts = AgentOptions {
        accept: Accept::Never,
        ..AgentOptions::default()
    };
    let (mut w, cep) = World::start("never", k, format, opts, 20, &[step("tone:700", 20)]).await;
    let caller = Caller::call(cep, w.sbc.sip, Source::Tone(1000.0)).await;
    let tcp = w
        .agent
        .find(WAIT, |e| matches!(e, AgentEvent::Tcp { .. }))
        .await
        .expect("the SBC connects");
    // The caller hears ringback (183) while the agent does not answer.
    caller
        .wait_sip("183", WAIT, |s| {
            s.iter()
                .any(|(_, e)| *e == SipEv::Progress(183))
                .then_some(())
        })
        .await;
    let answered = caller.wait_answered().await;
    let waited = answered - caller.invited;
    let hung_up = w
        .agent
        .find(WAIT, |e| {
            e.conn() == tcp.conn() && matches!(e, AgentEvent::Closed { .. })
        })
        .await
        .expect("the SBC drops the hung connection");
    println!(
        "[{format:?}] never accepts: TCP {:.0} ms after the INVITE, dropped by the SBC {:.0} ms after it, \
         next step answered {:.0} ms after the INVITE",
        ms(tcp.at() - caller.invited),
        ms(hung_up.at() - tcp.at()),
        ms(waited)
    );
    assert!(
        waited >= Duration::from_millis(4500),
        "the SBC waits for the agent's connect timeout (5 s) before moving on: {waited:?}"
    );
    caller
        .wait_hears(700.0, answered, Duration::from_secs(5))
        .await;
    assert!(
        !w.agent
            .events()
            .iter()
            .any(|e| matches!(e, AgentEvent::Connected { .. })),
        "no handshake ever completed"
    );
    assert!(caller.ended().is_none());
    caller.hangup().await;
    caller.wait_ended().await;
    w.assert_idle();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_agent_that_never_accepts_falls_back() {
    never_accepts(StreamFormat::Pcm24k, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twilio_agent_that_never_accepts_falls_back() {
    never_accepts(StreamFormat::Twilio, 5).await;
}

/// An agent that dies mid-call (the TCP connection drops, no close frame): the
/// caller, already answered, stays and gets the plan's next step (`tone:700`).
async fn crashes(format: StreamFormat, k: u8) {
    let (mut w, cep) = World::start(
        "crash",
        k,
        format,
        AgentOptions::default(),
        20,
        &[step("tone:700", 20)],
    )
    .await;
    let caller = Caller::call(cep, w.sbc.sip, Source::Tone(1000.0)).await;
    let (conn, _) = w.agent_started(format).await;
    caller.wait_answered().await;
    let t0 = now();
    w.agent.command(conn, Command::tone(600.0, 5000));
    caller.wait_hears(600.0, t0, Duration::from_secs(3)).await;
    w.agent.command(conn, Command::Crash);
    let crashed = w
        .agent
        .wait_for(WAIT, |e| {
            e.conn() == conn && matches!(e, AgentEvent::Closed { .. })
        })
        .await
        .expect("crashed");
    assert!(matches!(
        crashed,
        AgentEvent::Closed {
            how: CloseHow::Crashed,
            ..
        }
    ));
    let next = caller
        .wait_hears(700.0, crashed.at(), Duration::from_secs(5))
        .await;
    println!(
        "[{format:?}] crash: the caller hears the next step {:.0} ms after the agent died",
        ms(next - crashed.at())
    );
    assert!(
        caller.ended().is_none(),
        "the caller stays: {:?}",
        caller.sip()
    );
    assert_eq!(caller.answered().len(), 1);
    let tcps = w
        .agent
        .events()
        .iter()
        .filter(|e| matches!(e, AgentEvent::Tcp { .. }))
        .count();
    assert_eq!(tcps, 1, "the SBC does not reconnect to a dead agent");
    caller.hangup().await;
    caller.wait_ended().await;
    w.assert_idle();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_agent_crash_falls_back() {
    crashes(StreamFormat::Pcm24k, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twilio_agent_crash_falls_back() {
    crashes(StreamFormat::Twilio, 7).await;
}

/// An agent that stops reading and answering (its socket stays open): the SBC
/// notices (pings unanswered, or its queue full) and moves the caller on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_agent_falls_back() {
    let format = StreamFormat::Pcm24k;
    let (mut w, cep) = World::start(
        "stall",
        8,
        format,
        AgentOptions::default(),
        60,
        &[step("tone:700", 20)],
    )
    .await;
    let caller = Caller::call(cep, w.sbc.sip, Source::Tone(1000.0)).await;
    let (conn, _) = w.agent_started(format).await;
    caller.wait_answered().await;
    let t0 = now();
    w.agent.command(conn, Command::Stall);
    let next = caller.wait_hears(700.0, t0, Duration::from_secs(40)).await;
    println!(
        "stall: the caller hears the next step {:.1} s after the agent stalled",
        (next - t0).as_secs_f64()
    );
    assert!(
        caller.ended().is_none(),
        "the caller stays: {:?}",
        caller.sip()
    );
    w.agent.command(conn, Command::Crash);
    caller.hangup().await;
    caller.wait_ended().await;
    w.assert_idle();
}

// ---------------------------------------------------------------------------
// Measurement

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(label: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label}: all {:?}",
        v.iter()
            .map(|x| (x * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    println!(
        "{label}: n={} min {:.2} p50 {:.2} p95 {:.2} max {:.2} ms",
        v.len(),
        v.first().copied().unwrap_or(f64::NAN),
        percentile(&v, 0.5),
        percentile(&v, 0.95),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

/// Indices of onsets in a sequence of frames: the first loud frame after at
/// least `quiet` quiet ones.
fn onsets<'a>(frames: impl Iterator<Item = (Instant, &'a [i16])>, quiet: usize) -> Vec<Instant> {
    let mut out = Vec::new();
    let mut run = 0usize;
    for (at, f) in frames {
        let peak = f.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        if peak > 2000 {
            if run >= quiet {
                out.push(at);
            }
            run = 0;
        } else if peak < 300 {
            run += 1;
        } else {
            run = 0;
        }
    }
    out
}

/// Matches each arrival to the latest send before it; (send, arrival) pairs.
fn pair(sends: &[Instant], arrivals: &[Instant]) -> Vec<f64> {
    arrivals
        .iter()
        .filter_map(|a| sends.iter().rev().find(|s| *s <= a).map(|s| ms(*a - *s)))
        .collect()
}

/// The SBC's added latency, both ways, on one clock: caller RTP send -> agent
/// frame arrival (minus the jitter buffer's delay from /metrics), and agent
/// frame send -> caller RTP arrival. Prints; asserts only that it measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run with --ignored --nocapture on a quiet machine"]
async fn latency() {
    let format = StreamFormat::Pcm24k;
    let n = 50usize;
    let (mut w, cep) = World::start(
        "latency",
        9,
        format,
        AgentOptions {
            pace: Pace::ALL_AT_ONCE,
            ..AgentOptions::default()
        },
        120,
        &[],
    )
    .await;
    let caller = Caller::call(cep, w.sbc.sip, Source::Silence).await;
    let (conn, _) = w.agent_started(format).await;
    caller.wait_answered().await;
    // Settle (the jitter buffer finds its delay on steady silence).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = now();
    // Clicks each way: 40 ms of 1 kHz every 300 ms from the caller, 20 ms every
    // 310 ms from the agent (so the two drift over each other's phase).
    caller.source(Source::Clicks {
        period: 15,
        len: 2,
        hz: 1000.0,
    });
    let click: Vec<i16> = {
        let mut g = ToneGenerator::new(24_000, &[(1000.0, 16000.0)]);
        let mut v = vec![0i16; 480];
        g.fill(&mut v);
        v
    };
    let mut agent_sends = Vec::new();
    for _ in 0..n {
        w.agent.command(conn, Command::Pcm(click.clone()));
        let s = w
            .agent
            .wait_for(WAIT, |e| e.conn() == conn && e.is_sent("audio"))
            .await
            .expect("click sent");
        agent_sends.push(s.at());
        tokio::time::sleep(Duration::from_millis(310)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t1 = now();
    caller.source(Source::Silence);

    // Caller -> agent.
    let frames = w.agent.frames(conn, t0, t1);
    let gaps: Vec<f64> = frames.windows(2).map(|f| ms(f[1].0 - f[0].0)).collect();
    println!(
        "frames at the agent: {} in {:.1} s, gaps between arrivals: max {:.1} ms, {} under 5 ms, {} over 30 ms",
        frames.len(),
        (t1 - t0).as_secs_f64(),
        gaps.iter().copied().fold(0.0, f64::max),
        gaps.iter().filter(|g| **g < 5.0).count(),
        gaps.iter().filter(|g| **g > 30.0).count()
    );
    let at_agent = onsets(frames.iter().map(|(a, p)| (*a, p.as_slice())), 8);
    let up = pair(&caller.onsets(), &at_agent);
    // Agent -> caller.
    let heard = caller.packets(t0, t1);
    let at_caller = onsets(heard.iter().map(|p| (p.at, p.pcm.as_slice())), 8);
    let down = pair(&agent_sends, &at_caller);

    let m = tokio::task::block_in_place(|| w.sbc.metrics());
    // The histogram's mean, in ms (its buckets are too coarse for a p50 here).
    let j_mean = 1000.0 * m.value("sbc_jitter_delay_seconds_sum", &[])
        / m.value("sbc_jitter_delay_seconds_count", &[]).max(1.0);
    println!(
        "caller clicks sent {}, detected at the agent {}; agent clicks sent {}, detected at the caller {}",
        caller.onsets().len(),
        at_agent.len(),
        agent_sends.len(),
        at_caller.len()
    );
    println!(
        "jitter buffer delay (sbc_jitter_delay_seconds, per second per call): mean {j_mean:.1} ms"
    );
    summary("caller RTP sent -> agent frame received", up.clone());
    summary(
        "  minus the jitter buffer's delay (mean)",
        up.iter().map(|v| v - j_mean).collect(),
    );
    summary(
        "agent frame sent -> caller RTP received (includes the 20 ms playout tick's phase)",
        down.clone(),
    );
    assert!(
        up.len() >= n / 2 && down.len() >= n / 2,
        "too few onsets matched: {} up, {} down",
        up.len(),
        down.len()
    );
    caller.hangup().await;
    caller.wait_ended().await;
    w.assert_idle();
}
