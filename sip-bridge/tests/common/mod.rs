//! A whole deployment on virtual time, in one thread: the bridge's control plane,
//! one media session per call (as the SBC runs them), the WebRTC demultiplexer, a
//! carrier (a real `UserAgent` with PCMU RTP that can play and hear tones), and
//! operators (signalling sessions plus str0m peers as browsers, sending and
//! hearing Opus). Messages and datagrams cross a simulated network with a small
//! delay. Scenario tests drive it and look at what each party saw and heard.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use media_core::analysis::{ToneGenerator, dominant_frequency, goertzel_level_db};
use media_core::codec::g711;
use media_core::codec::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use media_core::dtmf::{DtmfReceiver, DtmfSender, EventPacket, TelephoneEvent};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{ClockRate, Instant, Millis, SampleRate};
use serde_json::Value;
use sip_bridge::bridge::{
    Bridge, BridgeConfig, CallEvent, CallId, DialPlan, LegKey, MediaCommand, MediaEvent,
    NumberConfig, Step, Target, TrunkConfig,
};
use sip_bridge::contract::{RecordChannels, RecordNote, RecordSpec, RecordingId};
use sip_bridge::media::{MediaConfig, MediaSession, MuxUpdate, RecordOut, StreamIo, Via};
use sip_bridge::sdp::{self, AudioCaps, LocalMedia, SessionDescription};
use sip_bridge::signalling::SessionOutput;
use sip_bridge::sip::dialog::{InviteParams, LegId, LocalAddr, UaConfig, UaEvent, UserAgent};
use sip_bridge::sip::message::{Peer, Transport};
use sip_bridge::stream::{AgentMessage, StreamFormat};
use sip_bridge::token::{TokenGrant, TokenIssuer};
use sip_bridge::webrtc::{DtlsIdentity, MuxConfig, WebRtcConfig, WebRtcMux};
use str0m::change::SdpAnswer;
use str0m::format::{Codec as SCodec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

pub const SBC_SIP: &str = "10.0.0.1:5060";
pub const SBC_WEBRTC: &str = "10.0.0.1:3478";
pub const SBC_IP: &str = "10.0.0.1";
pub const CARRIER_SIP: &str = "10.0.0.2:5060";
pub const CARRIER_IP: &str = "10.0.0.2";
/// A SIP phone (not a trunk's address), when a test adds one.
pub const PHONE_SIP: &str = "10.0.0.9:5060";
pub const PHONE_IP: &str = "10.0.0.9";
pub const ONE_WAY: Duration = Duration::from_millis(2);
pub const UNIX: u64 = 1_795_000_000;

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// The test deployment's numbers and trunk.
pub fn config(plan: DialPlan) -> BridgeConfig {
    let trunk = TrunkConfig {
        siprec: None,
        name: "carrier".into(),
        host: "carrier.example".into(),
        peers: vec![addr(CARRIER_SIP)],
        transport: Transport::Udp,
        credentials: None,
        register: None,
        inbound: vec![],
        codecs: vec![
            media_core::codec::Codec::Pcmu,
            media_core::codec::Codec::Pcma,
        ],
        dtmf: sip_bridge::bridge::DtmfMode::Rfc4733,
        ping_interval: None,
        ringback: None,
        session_expires: None,
        late_offer: false,
        require_100rel: false,
        update_offers: false,
        accept_refer: false,
        latch: Default::default(),
        transfer: Default::default(),
    };
    let mut cfg = BridgeConfig::new(
        vec![
            NumberConfig {
                id: "support".into(),
                e164: "+15550100".into(),
                name: "Support".into(),
                plan,
                capabilities: Default::default(),
                room: false,
            },
            NumberConfig {
                id: "sales".into(),
                e164: "+15550200".into(),
                name: "Sales".into(),
                plan: DialPlan::single(vec![Target::Operators], ms(20_000)),
                capabilities: Default::default(),
                room: false,
            },
        ],
        vec![trunk],
        SBC_IP.parse().unwrap(),
    );
    cfg.rtp_ports = (20000, 20200);
    cfg
}

/// A carrier call to `support` (its plan rings the operators), playing
/// `caller_hz`, answered by alice (browser 0), playing `alice_hz`; `others`
/// (operator, numbers) are online first as browsers 1, 2, ... Returns the
/// world, the call and the carrier's leg.
pub fn answered_by_alice_in(
    cfg: BridgeConfig,
    others: &[(&str, &[&str])],
    caller_hz: f64,
    alice_hz: f64,
) -> (World, String, LegId) {
    let mut w = World::new(cfg);
    assert_eq!(w.operator("alice", &["support"]), 0);
    for (i, (op, numbers)) in others.iter().enumerate() {
        assert_eq!(w.operator(op, numbers), i + 1);
    }
    let leg = w.carrier_call("+15550100", caller_hz);
    w.run(ms(200));
    let call = w.last_incoming(0).expect("alice rings");
    w.accept(0, &call);
    w.talk(0, alice_hz);
    w.run(ms(1500));
    assert_eq!(w.got(0, "connected").len(), 1);
    (w, call, leg)
}

/// The call as the REST API shows it (`GET /v1/calls/{call}`).
pub fn get(w: &mut World, call: &str) -> sip_bridge::signalling::CallSummary {
    match w.api(
        &[],
        sip_bridge::bridge::ApiRequest::GetCall { call: call.into() },
    ) {
        Ok(sip_bridge::bridge::ApiReply::Call(c)) => c,
        other => panic!("get {call}: {other:?}"),
    }
}

/// The id of the party with `role` in the call.
pub fn pid(w: &mut World, call: &str, role: &str) -> String {
    let c = get(w, call);
    c.participants
        .iter()
        .find(|p| p.role == role)
        .unwrap_or_else(|| panic!("no {role} in {:?}", c.participants))
        .id
        .clone()
}

pub fn plan(steps: &[(&[&str], u64)]) -> DialPlan {
    DialPlan::new(
        steps
            .iter()
            .map(|(targets, secs)| {
                Step::new(
                    targets.iter().map(|t| t.parse().unwrap()).collect(),
                    Duration::from_secs(*secs),
                )
            })
            .collect(),
    )
}

#[derive(Debug)]
struct Datagram {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Bytes,
}

/// The carrier's side of one call: PCMU RTP at 8 kHz.
#[derive(Debug)]
pub struct CarrierMedia {
    pub local: SocketAddr,
    pub remote: Option<SocketAddr>,
    pub pt: u8,
    pub te: Option<u8>,
    pub tone: Option<ToneGenerator>,
    seq: u16,
    ts: u32,
    ssrc: u32,
    pub heard: Vec<i16>,
    pub digits: Vec<char>,
    dtmf_rx: DtmfReceiver,
    dtmf_tx: DtmfSender,
    pub packets_in: usize,
    /// Every SSRC it received, once each.
    pub ssrcs: Vec<u32>,
    /// When each packet came, and its RTP timestamp.
    pub stamps: Vec<(Instant, u32)>,
}

impl CarrierMedia {
    fn new(local: SocketAddr) -> Self {
        CarrierMedia {
            local,
            remote: None,
            pt: 0,
            te: None,
            tone: None,
            seq: 100,
            ts: 1000,
            ssrc: 0xcafe,
            heard: Vec::new(),
            digits: Vec::new(),
            dtmf_rx: DtmfReceiver::new(),
            dtmf_tx: DtmfSender::new(ClockRate(8000), 10),
            packets_in: 0,
            ssrcs: Vec::new(),
            stamps: Vec::new(),
        }
    }

    fn receive(&mut self, now: Instant, data: &[u8]) {
        let Ok(p) = RtpPacket::parse(Bytes::copy_from_slice(data)) else {
            return;
        };
        self.stamps.push((now, p.timestamp().0));
        if std::env::var("WORLD_DEBUG").is_ok() && p.payload_type().value() != 0 {
            eprintln!("CARRIER RX pt {}", p.payload_type().value());
        }
        self.packets_in += 1;
        if !self.ssrcs.contains(&p.ssrc().0) {
            self.ssrcs.push(p.ssrc().0);
        }
        if Some(p.payload_type().value()) == self.te {
            if let Ok(ev) = TelephoneEvent::parse(p.payload_bytes())
                && let Some(d) = self.dtmf_rx.handle(p.timestamp(), &ev)
            {
                self.digits.push(d.as_char());
            }
            return;
        }
        let mut out = vec![0i16; p.payload_bytes().len()];
        let n = if p.payload_type().value() == 8 {
            g711::alaw_decode(p.payload_bytes(), &mut out)
        } else {
            g711::ulaw_decode(p.payload_bytes(), &mut out)
        };
        self.heard.extend_from_slice(&out[..n]);
    }

    /// One 20 ms frame (tone or silence), plus DTMF events when queued.
    fn frame(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.remote.is_none() {
            return out;
        }
        let mut pcm = [0i16; 160];
        if let Some(t) = self.tone.as_mut() {
            t.fill(&mut pcm);
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
            let n = self.dtmf_tx.tick(RtpTimestamp(self.ts), 160, &mut evs);
            if std::env::var("WORLD_DEBUG").is_ok() {
                eprintln!("CARRIER DTMF TX {n}");
            }
            for e in &evs[..n] {
                let mut payload = [0u8; 4];
                e.event.write(&mut payload);
                let mut w = RtpWriter::new(
                    PayloadType::new(te).unwrap(),
                    SeqNo(self.seq),
                    e.timestamp,
                    Ssrc(self.ssrc),
                );
                w.marker = e.marker;
                let mut buf = [0u8; 64];
                let len = w.write_packet(&payload, &mut buf).unwrap();
                out.push(Bytes::copy_from_slice(&buf[..len]));
                self.seq = self.seq.wrapping_add(1);
            }
            self.ts = self.ts.wrapping_add(160);
            return out;
        }
        let mut payload = [0u8; 160];
        if self.pt == 8 {
            g711::alaw_encode(&pcm, &mut payload);
        } else {
            g711::ulaw_encode(&pcm, &mut payload);
        }
        let w = RtpWriter::new(
            PayloadType::new(self.pt).unwrap(),
            SeqNo(self.seq),
            RtpTimestamp(self.ts),
            Ssrc(self.ssrc),
        );
        let mut buf = [0u8; 200];
        let len = w.write_packet(&payload, &mut buf).unwrap();
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
        out.push(Bytes::copy_from_slice(&buf[..len]));
        out
    }

    pub fn send_dtmf(&mut self, digits: &str) {
        self.dtmf_tx.enqueue(digits, Millis(100)).unwrap();
    }
}

/// The carrier: a UA plus media per call.
pub struct Carrier {
    ip: std::net::IpAddr,
    pub ua: UserAgent,
    pub events: Vec<UaEvent>,
    pub media: HashMap<LegId, CarrierMedia>,
    next_port: u16,
    /// How incoming INVITEs are answered: None leaves them to the test.
    pub auto_answer: Option<Vec<(u16, bool)>>,
    /// Called numbers (Request-URI users) answered with PCMA instead of PCMU.
    pub answer_pcma: Vec<String>,
    /// A SIPREC recording server at the same address: INVITEs that say
    /// `Require: siprec` are its.
    pub srs: Srs,
}

/// A SIPREC recording server (RFC 7866) as the tests need one.
#[derive(Debug, Default)]
pub struct Srs {
    /// How it answers its INVITE: 200 records both labels (PCMU); another
    /// status refuses; `None` never answers.
    pub status: Option<u16>,
    /// Its INVITE as received (headers and body), then the body of every
    /// re-INVITE.
    pub invites: Vec<String>,
    /// Its dialog.
    pub leg: Option<LegId>,
    /// The receivers of labels 1 and 2.
    pub streams: Vec<CarrierMedia>,
    version: u64,
}

impl Carrier {
    fn new() -> Self {
        Carrier::at(CARRIER_IP)
    }

    /// A UA at `ip` (SIP on 5060, media on even ports from 30002).
    fn at(ip: &str) -> Self {
        let ip = ip.parse().unwrap();
        let mut cfg = UaConfig::new(LocalAddr::udp(ip, 5060), 77);
        // It is an SRS too (RFC 7866): recording sessions are its.
        cfg.validation.supported.push("siprec".into());
        cfg.validation.invite_bodies.push("multipart/mixed".into());
        Carrier {
            ip,
            ua: UserAgent::new(cfg),
            events: Vec::new(),
            media: HashMap::new(),
            next_port: 30000,
            auto_answer: None,
            answer_pcma: Vec::new(),
            srs: Srs::default(),
        }
    }

    /// The SRS's answer: both labels `recvonly`, PCMU, on its two ports.
    fn srs_answer(&mut self) -> String {
        if self.srs.streams.is_empty() {
            for _ in 0..2 {
                let mut m = CarrierMedia::new(self.port());
                m.pt = 0;
                self.srs.streams.push(m);
            }
        }
        self.srs.version += 1;
        let mut a = format!(
            "v=0\r\no=srs 7 {} IN IP4 {CARRIER_IP}\r\ns=-\r\nc=IN IP4 {CARRIER_IP}\r\nt=0 0\r\n",
            self.srs.version
        );
        for (i, m) in self.srs.streams.iter().enumerate() {
            a += &format!(
                "m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=label:{}\r\na=recvonly\r\n",
                m.local.port(),
                i + 1
            );
        }
        a
    }

    fn port(&mut self) -> SocketAddr {
        self.next_port += 2;
        SocketAddr::new(self.ip, self.next_port)
    }

    /// An SDP offer (PCMU, PCMA, telephone-event) on a new port, remembered for `leg` later.
    fn offer(&mut self) -> (SocketAddr, String) {
        let local = self.port();
        let mut caps = AudioCaps::standard();
        caps.codecs
            .retain(|c| c.codec != media_core::codec::Codec::Opus);
        let sd = sdp::create_offer(&caps, &LocalMedia::rtp(local.ip(), local.port(), 9));
        (local, sd.to_string())
    }

    /// Answers an INVITE's offer with PCMU (PCMA with `pcma`) on a new port.
    pub fn answer_for(&mut self, leg: LegId, offer: &[u8]) -> String {
        self.answer_with(leg, offer, false)
    }

    fn answer_with(&mut self, leg: LegId, offer: &[u8], pcma: bool) -> String {
        let local = self.port();
        let offer = SessionDescription::parse(std::str::from_utf8(offer).unwrap()).unwrap();
        let mut caps = AudioCaps::standard();
        let codec = if pcma {
            media_core::codec::Codec::Pcma
        } else {
            media_core::codec::Codec::Pcmu
        };
        caps.codecs.retain(|c| c.codec == codec);
        let (answer, n) =
            sdp::answer_audio(&offer, &caps, &LocalMedia::rtp(local.ip(), local.port(), 9))
                .unwrap();
        let mut m = CarrierMedia::new(local);
        m.remote = n.remote;
        m.pt = n.payload_type.value();
        m.te = n.telephone_event.map(|p| p.value());
        self.media.insert(leg, m);
        answer.to_string()
    }
}

/// A browser operator.
pub struct Browser {
    pub op: String,
    pub session: u64,
    pub addr: SocketAddr,
    /// Every signalling message received, in order.
    pub inbox: Vec<Value>,
    pub closed: Option<u16>,
    pub connected_ws: bool,
    pub rtc: Option<Rtc>,
    mid: Option<Mid>,
    pending: Option<str0m::change::SdpPendingOffer>,
    deadline: Instant,
    pub rtc_connected: bool,
    pub call: Option<String>,
    pub heard: Vec<i16>,
    decoder: OpusDecoder,
    encoder: OpusEncoder,
    pub tone: Option<ToneGenerator>,
    ts: u64,
}

/// How a test agent behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    /// Connects at once.
    Up,
    /// Never accepts the connection (the driver gives up after 5 s).
    NeverConnects,
}

/// A virtual AI agent at a `stream:` URL.
#[derive(Debug)]
pub struct Agent {
    pub format: StreamFormat,
    pub mode: AgentMode,
    /// (call, leg) it talks to.
    pub leg: Option<(CallId, LegKey)>,
    /// JSON messages received.
    pub texts: Vec<Value>,
    /// Caller audio received (24 kHz native, 8 kHz Twilio), decoded.
    pub heard: Vec<i16>,
    pub closed: bool,
    pub connect_at: Option<Instant>,
}

/// The deployment.
pub struct World {
    pub now: Instant,
    epoch: std::time::Instant,
    pub bridge: Bridge,
    pub media: BTreeMap<CallId, MediaSession>,
    port_owner: HashMap<u16, CallId>,
    mux: WebRtcMux<(u64, LegKey)>,
    webrtc: WebRtcConfig,
    net: Vec<Datagram>,
    pub carrier: Carrier,
    /// A SIP phone at [`PHONE_SIP`] ([`World::add_phone`]): it answers and
    /// re-offers as the carrier does.
    pub phone: Option<Carrier>,
    pub browsers: Vec<Browser>,
    pub events: Vec<CallEvent>,
    next_session: u64,
    next_tick: Instant,
    /// Browsers ping like the JS client, every 15 s.
    next_ping: Instant,
    pub media_commands: Vec<(CallId, MediaCommand)>,
    /// Drop every datagram to/from this address (a vanished browser).
    pub blackhole: Option<SocketAddr>,
    /// AI agents by URL.
    pub agents: BTreeMap<String, Agent>,
    /// Hold the media tasks' SDP answers back (a slow media task) until
    /// [`World::release_answers`].
    pub hold_answers: bool,
    held: Vec<(CallId, MediaEvent)>,
    /// The first line of every SIP message the bridge sent the carrier.
    pub sip_to_carrier: Vec<String>,
    /// What the media sessions' recordings gave, as a driver would write it.
    pub recordings: BTreeMap<RecordingId, Recorded>,
}

/// One recording as the media session gave it.
#[derive(Debug, Default)]
pub struct Recorded {
    pub spec: Option<RecordSpec>,
    /// When its start was polled.
    pub started_at: Instant,
    /// Interleaved PCM16, as written to the file.
    pub pcm: Vec<i16>,
    pub notes: Vec<(Duration, RecordNote)>,
    pub stopped: Option<Duration>,
}

impl Recorded {
    /// Channels in the file.
    pub fn channels(&self) -> usize {
        match self.spec.as_ref().map(|s| s.channels) {
            Some(RecordChannels::Mono) => 1,
            _ => 2,
        }
    }

    pub fn rate(&self) -> u32 {
        self.spec.as_ref().map_or(8000, |s| s.rate)
    }

    /// Channel `c` (0 or 1) from `from_ms` to `to_ms` into the file.
    pub fn channel(&self, c: usize, from_ms: u64, to_ms: u64) -> Vec<i16> {
        let n = self.channels();
        let per_ms = self.rate() as usize / 1000;
        let (a, b) = (from_ms as usize * per_ms, to_ms as usize * per_ms);
        let b = b.min(self.pcm.len() / n);
        self.pcm[(a * n).min(b * n)..b * n]
            .iter()
            .skip(c)
            .step_by(n)
            .copied()
            .collect()
    }

    /// Its length.
    pub fn duration(&self) -> Duration {
        let frames = self.pcm.len() / self.channels();
        Duration::from_micros(frames as u64 * 1_000_000 / u64::from(self.rate()))
    }

    /// The timeline's events in order, as `(ms, event)`.
    pub fn timeline(&self) -> Vec<(u64, String)> {
        self.notes
            .iter()
            .map(|(at, n)| (at.as_millis() as u64, n.event.clone()))
            .collect()
    }
}

impl World {
    pub fn new(cfg: BridgeConfig) -> World {
        #[allow(clippy::disallowed_methods)] // the one clock read: virtual time's epoch
        let epoch = std::time::Instant::now();
        let tokens = TokenIssuer::new(b"test secret test secret test sec");
        let local = LocalAddr::udp(SBC_IP.parse().unwrap(), 5060);
        let mut bridge = Bridge::new(cfg, local, tokens, UNIX);
        bridge.start(Instant::ZERO);
        let webrtc = WebRtcConfig::new(addr(SBC_WEBRTC), DtlsIdentity::generate().unwrap(), epoch);
        World {
            now: Instant::ZERO,
            epoch,
            bridge,
            media: BTreeMap::new(),
            port_owner: HashMap::new(),
            mux: WebRtcMux::new(MuxConfig::default()),
            webrtc,
            net: Vec::new(),
            carrier: Carrier::new(),
            phone: None,
            browsers: Vec::new(),
            events: Vec::new(),
            next_session: 1,
            next_tick: Instant::ZERO,
            next_ping: Instant::from_millis(15_000),
            media_commands: Vec::new(),
            blackhole: None,
            agents: BTreeMap::new(),
            hold_answers: false,
            held: Vec::new(),
            sip_to_carrier: Vec::new(),
            recordings: BTreeMap::new(),
        }
    }

    fn std(&self, t: Instant) -> std::time::Instant {
        self.epoch + Duration::from_micros(t.as_micros())
    }

    // ----- operators -----

    /// A browser for `op` that connects and goes online on `numbers`.
    pub fn operator(&mut self, op: &str, numbers: &[&str]) -> usize {
        let i = self.browsers.len();
        let addr = SocketAddr::new(format!("10.0.1.{}", i + 1).parse().unwrap(), 50000);
        self.browsers.push(Browser {
            op: op.into(),
            session: 0,
            addr,
            inbox: Vec::new(),
            closed: None,
            connected_ws: false,
            rtc: None,
            mid: None,
            pending: None,
            deadline: Instant::ZERO,
            rtc_connected: false,
            call: None,
            heard: Vec::new(),
            decoder: OpusDecoder::new(SampleRate::HZ_48000).unwrap(),
            encoder: OpusEncoder::new(OpusEncoderConfig::default()).unwrap(),
            tone: None,
            ts: 0,
        });
        self.connect(i, numbers);
        i
    }

    /// (Re)connects browser `i`'s signalling with a fresh token.
    pub fn connect(&mut self, i: usize, numbers: &[&str]) {
        let sid = self.next_session;
        self.next_session += 1;
        let op = self.browsers[i].op.clone();
        let unix = UNIX + self.now.as_micros() / 1_000_000;
        let (token, _) = self
            .bridge
            .tokens()
            .issue(
                unix,
                &TokenGrant {
                    operator_ref: op.clone(),
                    display_name: op.to_uppercase(),
                    numbers: vec!["support".into(), "sales".into()],
                    ttl_secs: None,
                    capabilities: vec!["monitor".into()],
                },
            )
            .unwrap();
        self.browsers[i].session = sid;
        self.browsers[i].closed = None;
        self.browsers[i].connected_ws = true;
        self.bridge.handle_ws_open(self.now, sid);
        self.send(
            i,
            serde_json::json!({"type": "hello", "token": token, "protocol": 1}),
        );
        if !numbers.is_empty() {
            self.send(i, serde_json::json!({"type": "online", "numbers": numbers}));
        }
    }

    /// Sends a signalling message from browser `i`.
    pub fn send(&mut self, i: usize, msg: Value) {
        let sid = self.browsers[i].session;
        self.bridge.handle_ws_text(self.now, sid, &msg.to_string());
        self.pump();
    }

    /// Drops browser `i`'s WebSocket (the peer connection stays).
    pub fn drop_ws(&mut self, i: usize) {
        let sid = self.browsers[i].session;
        self.browsers[i].connected_ws = false;
        self.bridge.handle_ws_closed(self.now, sid);
        self.pump();
    }

    /// The messages of `type` browser `i` got.
    pub fn got(&self, i: usize, ty: &str) -> Vec<&Value> {
        self.browsers[i]
            .inbox
            .iter()
            .filter(|m| m["type"] == ty)
            .collect()
    }

    pub fn last_incoming(&self, i: usize) -> Option<String> {
        self.got(i, "incoming")
            .last()
            .map(|m| m["callId"].as_str().unwrap().to_string())
    }

    /// A fresh str0m peer for browser `i` with an audio offer (Opus + telephone-event).
    fn new_offer(&mut self, i: usize) -> String {
        let mut cfg = Rtc::builder().clear_codecs().enable_opus(true, false);
        cfg.codec_config().add_config(
            110.into(),
            None,
            SCodec::Tele,
            Frequency::FORTY_EIGHT_KHZ,
            None,
            FormatParams::default(),
        );
        let mut rtc = cfg.build(self.epoch);
        let b = &mut self.browsers[i];
        rtc.add_local_candidate(Candidate::host(b.addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        b.rtc = Some(rtc);
        b.mid = Some(mid);
        b.pending = Some(pending);
        b.rtc_connected = false;
        offer.to_sdp_string()
    }

    pub fn accept(&mut self, i: usize, call: &str) {
        let sdp = self.new_offer(i);
        self.browsers[i].call = Some(call.into());
        self.send(
            i,
            serde_json::json!({"type": "accept", "callId": call, "sdp": sdp}),
        );
    }

    /// Browser `i` asks to add `target` to `call`.
    pub fn add(&mut self, i: usize, call: &str, target: &str) {
        self.send(
            i,
            serde_json::json!({"type": "addParticipant", "callId": call, "target": target, "ref": "add"}),
        );
    }

    /// Browser `i` joins `call` as a supervisor in `mode` with a new peer connection.
    pub fn monitor(&mut self, i: usize, call: &str, mode: &str) {
        let sdp = self.new_offer(i);
        self.browsers[i].call = Some(call.into());
        self.send(
            i,
            serde_json::json!({"type": "monitor", "callId": call, "mode": mode, "sdp": sdp, "ref": "mon"}),
        );
    }

    /// Browser `i` plays a tone of `hz`.
    pub fn talk(&mut self, i: usize, hz: f64) {
        self.browsers[i].tone = Some(ToneGenerator::new(48_000, &[(hz, 8000.0)]));
    }

    /// A request of the REST call control by a key allowed `numbers`.
    pub fn api(
        &mut self,
        numbers: &[&str],
        req: sip_bridge::bridge::ApiRequest,
    ) -> Result<sip_bridge::bridge::ApiReply, sip_bridge::bridge::ApiError> {
        let numbers: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
        let now = self.now;
        let r = self.bridge.handle_api(now, &numbers, req);
        self.pump();
        r
    }

    pub fn dial(&mut self, i: usize, to: &str, caller_id: &str) {
        let sdp = self.new_offer(i);
        self.send(i, serde_json::json!({"type": "dial", "to": to, "callerId": caller_id, "sdp": sdp, "ref": "d1"}));
    }

    /// After a page reload: a new peer connection for the resumed call.
    pub fn reoffer(&mut self, i: usize, call: &str) {
        let sdp = self.new_offer(i);
        self.send(
            i,
            serde_json::json!({"type": "reoffer", "callId": call, "sdp": sdp}),
        );
    }

    fn on_ws(&mut self, sid: u64, out: SessionOutput) {
        let Some(i) = self
            .browsers
            .iter()
            .position(|b| b.session == sid && b.connected_ws)
        else {
            return;
        };
        match out {
            SessionOutput::Send(m) => {
                let v: Value = serde_json::from_str(&m.to_json()).unwrap();
                if v["type"] == "answer" {
                    let sdp = v["sdp"].as_str().unwrap().to_string();
                    let b = &mut self.browsers[i];
                    if b.call.is_none() {
                        b.call = v["callId"].as_str().map(String::from);
                    }
                    if let (Some(rtc), Some(p)) = (b.rtc.as_mut(), b.pending.take()) {
                        rtc.sdp_api()
                            .accept_answer(p, SdpAnswer::from_sdp_string(&sdp).unwrap())
                            .unwrap();
                    }
                }
                self.browsers[i].inbox.push(v);
            }
            SessionOutput::Close { code, .. } => {
                self.browsers[i].closed = Some(code);
                self.browsers[i].connected_ws = false;
                self.bridge.handle_ws_closed(self.now, sid);
            }
        }
    }

    // ----- carrier -----

    /// The carrier calls `to`, playing a tone of `hz` once answered.
    pub fn carrier_call(&mut self, to: &str, hz: f64) -> LegId {
        self.carrier_call_with(to, hz, vec![])
    }

    /// [`World::carrier_call`] with extra headers on the INVITE.
    pub fn carrier_call_with(
        &mut self,
        to: &str,
        hz: f64,
        headers: Vec<(String, String)>,
    ) -> LegId {
        let (local, sdp) = self.carrier.offer();
        let leg = self
            .carrier
            .ua
            .invite(
                self.now,
                InviteParams {
                    body_type: None,
                    contact_params: None,
                    flow: false,
                    request_uri: format!("sip:{to}@{SBC_IP}"),
                    from: "\"Carrier Caller\" <sip:+15550111@10.0.0.2>".into(),
                    to: format!("<sip:{to}@{SBC_IP}>"),
                    peer: Peer::udp(addr(SBC_SIP)),
                    sdp: Some(sdp.into_bytes()),
                    headers,
                    credentials: None,
                },
            )
            .unwrap();
        let mut m = CarrierMedia::new(local);
        m.tone = Some(ToneGenerator::new(8000, &[(hz, 6000.0)]));
        self.carrier.media.insert(leg, m);
        self.pump();
        leg
    }

    /// Adds the SIP phone at [`PHONE_SIP`].
    pub fn add_phone(&mut self) {
        self.phone = Some(Carrier::at(PHONE_IP));
    }

    /// The phone calls `to` as `from` (a `sip:` URI), playing a tone of
    /// `hz`, with `credentials` for the challenge.
    pub fn phone_dials(
        &mut self,
        to: &str,
        from: &str,
        hz: f64,
        credentials: Option<sip_bridge::sip::auth::Credentials>,
    ) -> LegId {
        let now = self.now;
        let phone = self.phone.as_mut().expect("add_phone first");
        let (local, sdp) = phone.offer();
        let leg = phone
            .ua
            .invite(
                now,
                InviteParams {
                    body_type: None,
                    contact_params: None,
                    flow: false,
                    request_uri: format!("sip:{to}@{SBC_IP}"),
                    from: format!("<{from}>"),
                    to: format!("<sip:{to}@{SBC_IP}>"),
                    peer: Peer::udp(addr(SBC_SIP)),
                    sdp: Some(sdp.into_bytes()),
                    headers: vec![],
                    credentials,
                },
            )
            .unwrap();
        let mut m = CarrierMedia::new(local);
        m.tone = Some(ToneGenerator::new(8000, &[(hz, 6000.0)]));
        phone.media.insert(leg, m);
        self.pump();
        leg
    }

    pub fn carrier_events(&self) -> &[UaEvent] {
        &self.carrier.events
    }

    pub fn carrier_incoming(&self) -> Vec<(LegId, Bytes)> {
        self.carrier
            .events
            .iter()
            .filter_map(|e| match e {
                UaEvent::IncomingInvite { leg, request, .. } => {
                    Some((*leg, Bytes::from(request.body.clone())))
                }
                _ => None,
            })
            .collect()
    }

    // ----- running -----

    fn sbc_owned(&self, a: SocketAddr) -> bool {
        a.ip().to_string() == SBC_IP
    }

    /// Moves everything the parties have to say.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut any = false;
            let now = self.now;
            while let Some(t) = self.bridge.poll_sip_transmit() {
                any = true;
                if t.to.addr == addr(CARRIER_SIP) {
                    let line = String::from_utf8_lossy(&t.bytes);
                    self.sip_to_carrier
                        .push(line.lines().next().unwrap_or("").to_string());
                }
                self.net.push(Datagram {
                    at: now + ONE_WAY,
                    from: addr(SBC_SIP),
                    to: t.to.addr,
                    bytes: t.bytes,
                });
            }
            while let Some((sid, o)) = self.bridge.poll_ws_output() {
                any = true;
                self.on_ws(sid, o);
            }
            while let Some((call, cmd)) = self.bridge.poll_media_command() {
                any = true;
                self.media_commands.push((call, cmd.clone()));
                if let MediaCommand::AddRtp { local_port, .. } = &cmd {
                    self.port_owner.insert(*local_port, call);
                }
                let s = self.media.entry(call).or_insert_with(|| {
                    MediaSession::new(MediaConfig::new(Some(self.webrtc.clone()), 5))
                });
                s.handle_command(now, cmd);
            }
            while let Some(e) = self.bridge.poll_event() {
                any = true;
                self.events.push(e);
            }
            // Media sessions.
            let ids: Vec<CallId> = self.media.keys().copied().collect();
            for id in ids {
                let s = self.media.get_mut(&id).unwrap();
                let mut evs = Vec::new();
                while let Some(t) = s.poll_transmit() {
                    any = true;
                    let from = match t.via {
                        Via::Rtp(p) => SocketAddr::new(SBC_IP.parse().unwrap(), p),
                        Via::Rtcp(p) => SocketAddr::new(SBC_IP.parse().unwrap(), p + 1),
                        Via::WebRtc => addr(SBC_WEBRTC),
                    };
                    self.net.push(Datagram {
                        at: now + ONE_WAY,
                        from,
                        to: t.to,
                        bytes: t.bytes,
                    });
                }
                let mut pcm = [0i16; sip_bridge::media::RECORD_FRAME_MAX];
                while let Some(o) = s.poll_record(&mut pcm) {
                    any = true;
                    match o {
                        RecordOut::Started { id, spec } => {
                            let r = self.recordings.entry(id).or_default();
                            r.spec = Some(spec);
                            r.started_at = now;
                        }
                        RecordOut::Frame { id, samples } => {
                            let r = self.recordings.entry(id).or_default();
                            r.pcm.extend_from_slice(&pcm[..samples]);
                        }
                        RecordOut::Note { id, at, note } => {
                            self.recordings
                                .entry(id)
                                .or_default()
                                .notes
                                .push((at, note));
                        }
                        RecordOut::Stopped { id, duration } => {
                            self.recordings.entry(id).or_default().stopped = Some(duration);
                        }
                        _ => {}
                    }
                }
                while let Some(u) = s.poll_mux_update() {
                    any = true;
                    match u {
                        MuxUpdate::Insert { leg, credentials } => {
                            let _ = self.mux.insert((id.0, leg), credentials);
                        }
                        MuxUpdate::Remove { leg } => {
                            self.mux.remove((id.0, leg));
                        }
                    }
                }
                while let Some(io) = s.poll_stream_io() {
                    any = true;
                    match io {
                        StreamIo::Connect { leg, url, .. } => {
                            if let Some(a) = self.agents.get_mut(&url) {
                                a.leg = Some((id, leg));
                                a.closed = false;
                                a.connect_at = Some(match a.mode {
                                    AgentMode::Up => now + ONE_WAY,
                                    AgentMode::NeverConnects => now + ms(5000),
                                });
                            }
                        }
                        StreamIo::Send { leg, msg } => {
                            if let Some(a) =
                                self.agents.values_mut().find(|a| a.leg == Some((id, leg)))
                            {
                                a.receive(msg);
                            }
                        }
                        StreamIo::Close { leg } => {
                            if let Some(a) =
                                self.agents.values_mut().find(|a| a.leg == Some((id, leg)))
                            {
                                a.closed = true;
                            }
                        }
                    }
                }
                while let Some(e) = s.poll_event() {
                    evs.push(e);
                }
                let stopped = s.is_stopped();
                for e in evs {
                    if std::env::var("WORLD_DEBUG").is_ok() {
                        eprintln!("MEDIA EVENT {id} {e:?}");
                    }
                    any = true;
                    if self.hold_answers && matches!(e, MediaEvent::WebRtcAnswer { .. }) {
                        self.held.push((id, e));
                        continue;
                    }
                    self.bridge.handle_media_event(now, id, e);
                }
                if stopped {
                    self.media.remove(&id);
                    self.port_owner.retain(|_, c| *c != id);
                }
            }
            // Carrier.
            while let Some(t) = self.carrier.ua.poll_transmit() {
                any = true;
                self.net.push(Datagram {
                    at: now + ONE_WAY,
                    from: addr(CARRIER_SIP),
                    to: t.to.addr,
                    bytes: t.bytes,
                });
            }
            while let Some(e) = self.carrier.ua.poll_event() {
                any = true;
                self.on_carrier(e);
            }
            if let Some(mut phone) = self.phone.take() {
                while let Some(t) = phone.ua.poll_transmit() {
                    any = true;
                    self.net.push(Datagram {
                        at: now + ONE_WAY,
                        from: addr(PHONE_SIP),
                        to: t.to.addr,
                        bytes: t.bytes,
                    });
                }
                // The phone reacts as the carrier does: its handler, on it.
                std::mem::swap(&mut self.carrier, &mut phone);
                while let Some(e) = self.carrier.ua.poll_event() {
                    any = true;
                    self.on_carrier(e);
                }
                std::mem::swap(&mut self.carrier, &mut phone);
                self.phone = Some(phone);
            }
            // Browsers.
            for i in 0..self.browsers.len() {
                any |= self.browser_poll(i);
            }
            if !any {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn on_carrier(&mut self, e: UaEvent) {
        let now = self.now;
        match &e {
            UaEvent::IncomingInvite { leg, request, .. }
                if request
                    .headers
                    .iter()
                    .any(|h| h.to_string().eq_ignore_ascii_case("Require: siprec")) =>
            {
                let srs = &mut self.carrier.srs;
                srs.invites.push(request.to_string());
                srs.leg = Some(*leg);
                match srs.status {
                    Some(200) => {
                        let a = self.carrier.srs_answer();
                        let _ = self
                            .carrier
                            .ua
                            .respond(now, *leg, 200, Some(a.as_bytes()), &[]);
                    }
                    Some(status) => {
                        let _ = self.carrier.ua.respond(now, *leg, status, None, &[]);
                    }
                    None => {}
                }
            }
            UaEvent::Offer { leg, sdp } if self.carrier.srs.leg == Some(*leg) => {
                self.carrier
                    .srs
                    .invites
                    .push(String::from_utf8_lossy(sdp).into_owned());
                let a = self.carrier.srs_answer();
                let _ = self
                    .carrier
                    .ua
                    .answer_offer(now, *leg, 200, Some(a.as_bytes()));
            }
            UaEvent::IncomingInvite { leg, request, .. } => {
                if let Some(plan) = self.carrier.auto_answer.clone() {
                    let user = request.uri.to_string();
                    let pcma = self
                        .carrier
                        .answer_pcma
                        .iter()
                        .any(|n| user.contains(n.as_str()));
                    let answer = self.carrier.answer_with(*leg, &request.body, pcma);
                    for (status, with_sdp) in plan {
                        let sdp = with_sdp.then_some(answer.as_bytes());
                        let _ = self.carrier.ua.respond(now, *leg, status, sdp, &[]);
                    }
                }
            }
            UaEvent::Answered {
                leg,
                sdp: Some(sdp),
            }
            | UaEvent::Progress {
                leg,
                sdp: Some(sdp),
                ..
            } => {
                if let Some(m) = self.carrier.media.get_mut(leg)
                    && let Ok(sd) = SessionDescription::parse(std::str::from_utf8(sdp).unwrap())
                {
                    let a = sd.audio().unwrap();
                    let c = sd.connection_for(a).unwrap();
                    m.remote = Some(SocketAddr::new(c.ip().unwrap(), a.port));
                    let pt: u8 = a.formats[0].parse().unwrap();
                    m.pt = pt;
                    m.te = a
                        .rtpmaps()
                        .iter()
                        .find(|r| r.encoding.eq_ignore_ascii_case("telephone-event"))
                        .map(|r| r.payload_type);
                }
            }
            UaEvent::Offer { leg, sdp } => {
                // The carrier answers re-INVITEs like a phone: same codec, reversed direction.
                let offer = SessionDescription::parse(std::str::from_utf8(sdp).unwrap()).unwrap();
                let mut caps = AudioCaps::standard();
                caps.codecs
                    .retain(|c| c.codec == media_core::codec::Codec::Pcmu);
                let local = self
                    .carrier
                    .media
                    .get(leg)
                    .map_or(addr("10.0.0.2:39998"), |m| m.local);
                let mut lm = LocalMedia::rtp(local.ip(), local.port(), 9);
                lm.session_version = 2;
                let (answer, _) = sdp::answer_audio(&offer, &caps, &lm).unwrap();
                let _ = self.carrier.ua.answer_offer(
                    now,
                    *leg,
                    200,
                    Some(answer.to_string().as_bytes()),
                );
            }
            UaEvent::Terminated { leg, .. } => {
                if let Some(m) = self.carrier.media.get_mut(leg) {
                    m.tone = None;
                    m.remote = None;
                }
            }
            _ => {}
        }
        self.carrier.events.push(e);
    }

    fn browser_poll(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut any = false;
        let mut out = Vec::new();
        let b = &mut self.browsers[i];
        let Some(rtc) = b.rtc.as_mut() else {
            return false;
        };
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    b.deadline = sip_bridge::webrtc::deadline_from_std(self.epoch, t);
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    any = true;
                    out.push(Datagram {
                        at: now + ONE_WAY,
                        from: t.source,
                        to: t.destination,
                        bytes: Bytes::copy_from_slice(&t.contents),
                    });
                }
                Ok(Output::Event(Event::Connected)) => {
                    any = true;
                    b.rtc_connected = true;
                }
                Ok(Output::Event(Event::MediaData(d))) => {
                    if d.params.spec().codec == SCodec::Opus {
                        let mut pcm = [0i16; 5760];
                        if let Ok(n) = b.decoder.decode(&d.data, &mut pcm) {
                            b.heard.extend_from_slice(&pcm[..n]);
                        }
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(_) => break,
            }
        }
        self.net.extend(out);
        any
    }

    fn deliver(&mut self, d: Datagram) {
        let now = self.now;
        if self.blackhole.is_some_and(|a| a == d.from || a == d.to) {
            return;
        }
        if d.to == addr(SBC_SIP) {
            self.bridge.handle_sip(now, &d.bytes, Peer::udp(d.from));
        } else if d.to == addr(SBC_WEBRTC) {
            if let Some((call, leg)) = self.mux.route(d.from, &d.bytes)
                && let Some(s) = self.media.get_mut(&CallId(call))
            {
                s.handle_webrtc(now, leg, d.from, d.to, &d.bytes);
            }
        } else if self.sbc_owned(d.to) {
            if let Some(call) = self.port_owner.get(&d.to.port()).copied()
                && let Some(s) = self.media.get_mut(&call)
            {
                s.handle_rtp(now, d.to.port(), d.from, BytesMut::from(&d.bytes[..]));
            }
        } else if d.to == addr(PHONE_SIP) {
            if let Some(p) = self.phone.as_mut() {
                p.ua.handle_bytes(now, &d.bytes, Peer::udp(d.from));
            }
        } else if d.to.ip().to_string() == PHONE_IP {
            if let Some(m) = self
                .phone
                .as_mut()
                .and_then(|p| p.media.values_mut().find(|m| m.local == d.to))
            {
                m.receive(now, &d.bytes);
            }
        } else if d.to == addr(CARRIER_SIP) {
            self.carrier
                .ua
                .handle_bytes(now, &d.bytes, Peer::udp(d.from));
        } else if d.to.ip().to_string() == CARRIER_IP {
            if let Some(m) = self
                .carrier
                .media
                .values_mut()
                .chain(self.carrier.srs.streams.iter_mut())
                .find(|m| m.local == d.to)
            {
                m.receive(now, &d.bytes);
            }
        } else if let Some(b) = self.browsers.iter_mut().find(|b| b.addr == d.to) {
            let t = self.epoch + Duration::from_micros(now.as_micros());
            if let (Some(rtc), Ok(r)) = (
                b.rtc.as_mut(),
                Receive::new(Protocol::Udp, d.from, d.to, &d.bytes),
            ) {
                let input = Input::Receive(t, r);
                if rtc.accepts(&input) {
                    let _ = rtc.handle_input(input);
                }
            }
        }
    }

    /// Sends one 20 ms frame from every talking party.
    fn tick_audio(&mut self) {
        let now = self.now;
        let phone = self.phone.iter_mut().flat_map(|p| p.media.values_mut());
        for m in self.carrier.media.values_mut().chain(phone) {
            if m.tone.is_some() || !m.dtmf_tx.is_idle() {
                for pkt in m.frame() {
                    if let Some(to) = m.remote {
                        self.net.push(Datagram {
                            at: now + ONE_WAY,
                            from: m.local,
                            to,
                            bytes: pkt,
                        });
                    }
                }
            }
        }
        let t = self.std(now);
        for b in &mut self.browsers {
            let (Some(rtc), Some(mid)) = (b.rtc.as_mut(), b.mid) else {
                continue;
            };
            if !b.rtc_connected {
                continue;
            }
            let Some(tone) = b.tone.as_mut() else {
                // Quiet: nothing sent, but the media clock goes on (RFC 3550
                // section 5.1), as a browser's after a DTX pause.
                b.ts += 960;
                continue;
            };
            let mut pcm = [0i16; 960];
            tone.fill(&mut pcm);
            let mut payload = [0u8; 1500];
            let n = b.encoder.encode(&pcm, &mut payload).unwrap();
            if let Some(w) = rtc.writer(mid) {
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == SCodec::Opus)
                    .map(|p| p.pt());
                if let Some(pt) = pt {
                    let _ = w.write(
                        pt,
                        t,
                        MediaTime::new(b.ts, Frequency::FORTY_EIGHT_KHZ),
                        payload[..n].to_vec(),
                    );
                }
            }
            b.ts += 960;
        }
    }

    /// Runs the world for `d`.
    /// Delivers the SDP answers held back by `hold_answers`.
    pub fn release_answers(&mut self) {
        self.hold_answers = false;
        let now = self.now;
        for (id, e) in std::mem::take(&mut self.held) {
            self.bridge.handle_media_event(now, id, e);
        }
        self.pump();
    }

    pub fn run(&mut self, d: Duration) {
        let until = self.now + d;
        self.pump();
        for _ in 0..10_000_000 {
            let mut next = until.min(self.next_tick).min(self.next_ping);
            let mut consider = |t: Option<Instant>| {
                if let Some(t) = t {
                    next = next.min(t);
                }
            };
            consider(self.bridge.poll_timeout());
            consider(self.carrier.ua.poll_timeout());
            consider(self.phone.as_ref().and_then(|p| p.ua.poll_timeout()));
            for s in self.media.values() {
                consider(s.poll_timeout());
            }
            for b in &self.browsers {
                if b.rtc.is_some() {
                    consider(Some(b.deadline));
                }
            }
            consider(self.net.iter().map(|d| d.at).min());
            consider(self.agents.values().filter_map(|a| a.connect_at).min());
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let (due, rest): (Vec<Datagram>, Vec<Datagram>) =
                self.net.drain(..).partition(|d| d.at <= now);
            self.net = rest;
            for d in due {
                self.deliver(d);
            }
            if self.bridge.poll_timeout().is_some_and(|t| t <= now) {
                self.bridge.handle_timeout(now);
            }
            if self.carrier.ua.poll_timeout().is_some_and(|t| t <= now) {
                self.carrier.ua.handle_timeout(now);
            }
            if let Some(p) = self.phone.as_mut()
                && p.ua.poll_timeout().is_some_and(|t| t <= now)
            {
                p.ua.handle_timeout(now);
            }
            for s in self.media.values_mut() {
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
            }
            let t = self.std(now);
            for b in &mut self.browsers {
                if let Some(rtc) = b.rtc.as_mut()
                    && b.deadline <= now
                {
                    let _ = rtc.handle_input(Input::Timeout(t));
                }
            }
            let due: Vec<String> = self
                .agents
                .iter()
                .filter(|(_, a)| a.connect_at.is_some_and(|t| t <= now))
                .map(|(u, _)| u.clone())
                .collect();
            for url in due {
                let a = self.agents.get_mut(&url).unwrap();
                a.connect_at = None;
                let mode = a.mode;
                if let Some((call, leg)) = a.leg
                    && let Some(s) = self.media.get_mut(&call)
                {
                    match mode {
                        AgentMode::Up => s.handle_stream_connected(now, leg),
                        AgentMode::NeverConnects => {
                            s.handle_stream_closed(now, leg, "connect timeout")
                        }
                    }
                }
            }
            if self.next_ping <= now {
                self.next_ping = now + ms(15_000);
                for i in 0..self.browsers.len() {
                    if self.browsers[i].connected_ws {
                        let sid = self.browsers[i].session;
                        self.bridge.handle_ws_text(now, sid, r#"{"type":"ping"}"#);
                    }
                }
            }
            if self.next_tick <= now {
                self.tick_audio();
                self.next_tick = now + ms(20);
            }
            self.pump();
            if now >= until {
                break;
            }
        }
        self.now = self.now.max(until);
    }

    // ----- agents -----

    /// An agent at `url`.
    pub fn agent(&mut self, url: &str, format: StreamFormat, mode: AgentMode) {
        self.agents.insert(
            url.to_string(),
            Agent {
                format,
                mode,
                leg: None,
                texts: Vec::new(),
                heard: Vec::new(),
                closed: false,
                connect_at: None,
            },
        );
    }

    /// The agent at `url` sends `msg`.
    pub fn agent_send(&mut self, url: &str, msg: AgentMessage) {
        let now = self.now;
        let Some((call, leg)) = self.agents[url].leg else {
            return;
        };
        if let Some(s) = self.media.get_mut(&call) {
            s.handle_stream_message(now, leg, msg);
        }
        self.pump();
    }

    /// The agent at `url` sends `secs` of a tone at once (faster than real time).
    pub fn agent_tone(&mut self, url: &str, hz: f64, secs: f64) {
        let format = self.agents[url].format;
        let rate = format.sample_rate().hz();
        let mut g = ToneGenerator::new(rate, &[(hz, 8000.0)]);
        let mut pcm = vec![0i16; (f64::from(rate) * secs) as usize];
        g.fill(&mut pcm);
        match format {
            StreamFormat::Pcm24k => {
                let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                self.agent_send(url, AgentMessage::Binary(Bytes::from(bytes)));
            }
            StreamFormat::Twilio => {
                use base64::Engine;
                for chunk in pcm.chunks(160) {
                    let mut ulaw = vec![0u8; chunk.len()];
                    g711::ulaw_encode(chunk, &mut ulaw);
                    let payload = base64::engine::general_purpose::STANDARD.encode(&ulaw);
                    let msg = serde_json::json!({"event": "media", "streamSid": "x", "media": {"payload": payload}});
                    self.agent_send(url, AgentMessage::Text(msg.to_string()));
                }
            }
        }
    }

    /// The agent's WebSocket dies.
    pub fn agent_crash(&mut self, url: &str) {
        let now = self.now;
        let Some((call, leg)) = self.agents[url].leg else {
            return;
        };
        if let Some(s) = self.media.get_mut(&call) {
            s.handle_stream_closed(now, leg, "connection reset");
        }
        self.pump();
    }

    // ----- checks -----

    /// Asserts the last `secs` seconds of `pcm` at `rate` carry a tone of `hz`.
    pub fn assert_tone(pcm: &[i16], rate: u32, hz: f64, what: &str) {
        let take = rate as usize; // the last second
        assert!(
            pcm.len() >= take,
            "{what}: heard only {} samples",
            pcm.len()
        );
        let tail = &pcm[pcm.len() - take..];
        let f = dominant_frequency(tail, rate, 100.0, 3800.0);
        assert!(
            (f - hz).abs() <= 5.0,
            "{what}: dominant {f:.0} Hz, expected {hz} Hz"
        );
        let level = goertzel_level_db(tail, rate, hz);
        assert!(level > -30.0, "{what}: {hz} Hz at only {level:.1} dB");
    }

    /// The level (dB) of `hz` in the last second of `pcm` at `rate`.
    pub fn level(pcm: &[i16], rate: u32, hz: f64) -> f64 {
        let take = (rate as usize).min(pcm.len());
        goertzel_level_db(&pcm[pcm.len() - take..], rate, hz)
    }

    /// Asserts the last second of `pcm` at `rate` carries every tone of `hears`
    /// (at -35 dB or more) and none of `not` (at -45 dB or less, and 25 dB under
    /// the weakest tone heard).
    pub fn assert_hears(pcm: &[i16], rate: u32, hears: &[f64], not: &[f64], what: &str) {
        assert!(
            pcm.len() >= rate as usize,
            "{what}: heard only {} samples",
            pcm.len()
        );
        let mut weakest = f64::MAX;
        for &hz in hears {
            let l = Self::level(pcm, rate, hz);
            assert!(l >= -35.0, "{what}: {hz} Hz at only {l:.1} dB");
            weakest = weakest.min(l);
        }
        for &hz in not {
            let l = Self::level(pcm, rate, hz);
            assert!(
                l <= -45.0 && l <= weakest - 25.0,
                "{what}: {hz} Hz heard at {l:.1} dB (weakest wanted tone {weakest:.1} dB)"
            );
        }
    }

    /// Everything reaped: no calls, no media sessions, no SIP legs or ports.
    pub fn assert_idle(&self) {
        assert_eq!(
            self.bridge.calls(),
            0,
            "calls left: {:?}",
            self.bridge.call_ids()
        );
        assert!(
            self.media.is_empty(),
            "media sessions left: {:?}",
            self.media.keys().collect::<Vec<_>>()
        );
        assert_eq!(self.bridge.ports_in_use(), 0, "RTP ports left");
        assert_eq!(self.bridge.ua().legs(), 0, "SBC SIP legs left");
        assert_eq!(self.bridge.ua().dialogs(), 0, "SBC dialogs left");
    }

    pub fn ended_reason(&self, i: usize, call: &str) -> Option<String> {
        self.got(i, "ended")
            .iter()
            .find(|m| m["callId"] == call)
            .map(|m| m["reason"].as_str().unwrap().to_string())
    }

    pub fn completed(&self) -> Vec<&CallEvent> {
        self.events
            .iter()
            .filter(|e| e.kind == sip_bridge::bridge::CallEventKind::Completed)
            .collect()
    }
}

impl Agent {
    fn receive(&mut self, msg: AgentMessage) {
        match msg {
            AgentMessage::Binary(b) => {
                self.heard
                    .extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
            }
            AgentMessage::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["event"] == "media" {
                    use base64::Engine;
                    let ulaw = base64::engine::general_purpose::STANDARD
                        .decode(v["media"]["payload"].as_str().unwrap())
                        .unwrap();
                    let mut pcm = vec![0i16; ulaw.len()];
                    g711::ulaw_decode(&ulaw, &mut pcm);
                    self.heard.extend(pcm);
                } else {
                    self.texts.push(v);
                }
            }
        }
    }

    /// JSON messages of `kind` (`type` native, `event` Twilio).
    pub fn got(&self, kind: &str) -> Vec<&Value> {
        self.texts
            .iter()
            .filter(|v| v["type"] == kind || v["event"] == kind)
            .collect()
    }
}
