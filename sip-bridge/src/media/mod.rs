//! One call's media session: its RTP legs toward SIP peers, its WebRTC legs toward
//! browsers, and the pipelines between them (relay when both sides speak the same
//! format, else jitter buffer + transcoding), plus generated tones, echo, mute,
//! hold and DTMF. Sans-IO: the SBC runs one per call in its own task, feeding it
//! datagrams and [`MediaCommand`]s, sending what it polls out and forwarding its
//! [`MediaEvent`]s to the control plane ([`crate::bridge::Bridge`]).
//!
//! RTP legs latch to their peer like rtpengine's strict-source: packets are taken
//! from the signalled address, or, when that is a private or unspecified address
//! (a NATed peer), from the first source with the signalled IP... or the first
//! source at all when the IP cannot match; once latched, other sources are dropped
//! so a stray sender cannot hijack the stream.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use media_core::analysis::ToneGenerator;
use media_core::codec::{Codec, OpusEncoderConfig};
use media_core::jitter::JitterConfig;
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, PipelineEvent, RtpFormat};
use media_core::rtp::{PayloadType, RtpHeader, RtpPacket, Ssrc};
use media_core::{Instant, Millis, SampleRate, SeededRng};

use crate::contract::{Feed, FeedSource, LegKey, MediaCommand, MediaEvent, Tone};
use crate::stream::{AgentMessage, StreamEvent, StreamLeg};
use crate::webrtc::{MuxCredentials, WebRtcConfig, WebRtcEvent, WebRtcLeg};

/// Media session settings.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Browser legs (`None`: this session cannot take [`MediaCommand::AddWebRtc`]).
    pub webrtc: Option<WebRtcConfig>,
    /// No RTP from a connected, unheld SIP leg for this long ends the call.
    pub media_timeout: Duration,
    /// Seeds SSRCs and sequence numbers.
    pub seed: u64,
    /// Our Opus encoders, before each receiver's `fmtp` narrows them.
    pub opus: OpusEncoderConfig,
    /// Transcoding between two SIP legs goes through a jitter buffer too (off by
    /// default: both ends have their own).
    pub sip_jitter_buffer: bool,
}

impl MediaConfig {
    /// Defaults: 60 s media timeout, [`OpusEncoderConfig::default`], no jitter
    /// buffer between SIP legs.
    pub fn new(webrtc: Option<WebRtcConfig>, seed: u64) -> Self {
        MediaConfig {
            webrtc,
            media_timeout: Duration::from_secs(60),
            seed,
            opus: OpusEncoderConfig::default(),
            sip_jitter_buffer: false,
        }
    }
}

/// Which socket a datagram leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The RTP socket on this local port.
    Rtp(u16),
    /// The shared WebRTC socket.
    WebRtc,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaTransmit {
    /// From which socket.
    pub via: Via,
    /// To.
    pub to: SocketAddr,
    /// Payload.
    pub bytes: Bytes,
}

/// Changes for the shared WebRTC port's demultiplexer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MuxUpdate {
    /// Route this leg's ICE ufrag and validated addresses here.
    Insert {
        /// The leg.
        leg: LegKey,
        /// Its ICE credentials.
        credentials: MuxCredentials,
    },
    /// Forget the leg.
    Remove {
        /// The leg.
        leg: LegKey,
    },
}

/// WebSocket work for AI agent legs, for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamIo {
    /// Open the agent's WebSocket; report back with
    /// [`MediaSession::handle_stream_connected`] or
    /// [`MediaSession::handle_stream_closed`].
    Connect {
        /// The leg.
        leg: LegKey,
        /// `ws://` or `wss://` URL.
        url: String,
        /// Extra request headers (authorization...).
        headers: Vec<(String, String)>,
    },
    /// Send a message.
    Send {
        /// The leg.
        leg: LegKey,
        /// The message.
        msg: AgentMessage,
    },
    /// Close the WebSocket (after sending what was queued).
    Close {
        /// The leg.
        leg: LegKey,
    },
}

/// Session counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// RTP packets received on RTP legs.
    pub rtp_in: u64,
    /// RTP packets sent on RTP legs.
    pub rtp_out: u64,
    /// Packets dropped: from a source other than the latched one.
    pub foreign_source: u64,
    /// Packets that were not RTP.
    pub malformed: u64,
    /// Datagrams for a WebRTC leg.
    pub webrtc_in: u64,
    /// RTP bytes received on RTP legs.
    pub rtp_bytes_in: u64,
    /// RTP bytes sent on RTP legs.
    pub rtp_bytes_out: u64,
}

/// Sums over a session's pipelines, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaTotals {
    /// Input packets inferred lost.
    pub lost: u64,
    /// Packets that came too late to play.
    pub late: u64,
    /// Milliseconds of audio concealed.
    pub concealed_ms: u64,
    /// Pipelines that transcode (not relay).
    pub transcoding: u64,
    /// The largest current jitter-buffer delay (ms).
    pub max_jitter_delay_ms: u32,
}

#[derive(Debug)]
enum Kind {
    Rtp {
        port: u16,
        signalled: Option<SocketAddr>,
        latched: Option<SocketAddr>,
        format: RtpFormat,
    },
    WebRtc {
        leg: Box<WebRtcLeg>,
        format: RtpFormat,
    },
    Stream {
        leg: Box<StreamLeg>,
        connected: bool,
    },
}

/// What feeds a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Nothing,
    Leg(LegKey),
    Tone(Tone),
}

#[derive(Debug)]
struct MLeg {
    kind: Kind,
    source: Source,
    /// Produces what this leg receives.
    to_me: Option<MediaPipeline>,
    tone: Option<(ToneGenerator, Instant)>,
    /// What this leg sends is replaced by silence for the others.
    muted: bool,
    /// Nothing is sent to this leg.
    held: bool,
    last_rx: Instant,
    timed_out: bool,
}

impl MLeg {
    /// What this leg speaks: RTP in a format, or PCM (an agent's stream).
    fn endpoint(&self) -> Endpoint {
        match &self.kind {
            Kind::Rtp { format, .. } | Kind::WebRtc { format, .. } => Endpoint::Rtp(*format),
            Kind::Stream { leg, .. } => Endpoint::Pcm(leg.format().sample_rate()),
        }
    }

    fn telephone_event(&self) -> Option<PayloadType> {
        match self.endpoint() {
            Endpoint::Rtp(f) => f.telephone_event,
            Endpoint::Pcm(_) => None,
        }
    }
}

/// One call's media. See the module docs.
#[derive(Debug)]
pub struct MediaSession {
    cfg: MediaConfig,
    legs: BTreeMap<LegKey, MLeg>,
    by_port: BTreeMap<u16, LegKey>,
    out: Outbox,
    events: VecDeque<MediaEvent>,
    mux: VecDeque<MuxUpdate>,
    stream_io: VecDeque<StreamIo>,
    rng: SeededRng,
    next_tick: Option<Instant>,
    stats: MediaStats,
    stopped: bool,
    pcm: Vec<i16>,
}

/// What a session sends, in order.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<MediaTransmit>,
    /// Transcoded packets are written here and split off as `Bytes`; once the
    /// driver has dropped what it sent, the same block is written again.
    arena: BytesMut,
}

/// Size of an [`Outbox`] block: about 16 Opus or G.711 packets, so a call holds
/// at most this much beyond what is queued.
const ARENA_BLOCK: usize = 4096;

impl Outbox {
    /// Sends `pkt` to the leg of `kind`. An RTP leg queues it as `Bytes`:
    /// `pkt` itself when it is one (the relay's buffer), else a copy split off
    /// the arena; str0m copies what a WebRTC leg sends, so a slice will do there.
    fn send(
        &mut self,
        stats: &mut MediaStats,
        now: Instant,
        held: bool,
        kind: &mut Kind,
        pkt: Packet<'_>,
    ) {
        if held {
            return;
        }
        match kind {
            Kind::Rtp {
                port,
                signalled,
                latched,
                ..
            } => {
                if let Some(to) = latched.or(*signalled) {
                    let bytes = match pkt {
                        Packet::Owned(b) => b,
                        Packet::Borrowed(b) => {
                            if self.arena.capacity() < b.len() {
                                self.arena.reserve(ARENA_BLOCK.max(b.len()));
                            }
                            self.arena.extend_from_slice(b);
                            self.arena.split().freeze()
                        }
                    };
                    stats.rtp_out += 1;
                    stats.rtp_bytes_out += bytes.len() as u64;
                    self.queue.push_back(MediaTransmit {
                        via: Via::Rtp(*port),
                        to,
                        bytes,
                    });
                }
            }
            Kind::WebRtc { leg, .. } => {
                let _ = leg.send_rtp(now, pkt.as_slice());
            }
            // A stream leg takes PCM frames (see `drain`), never packets.
            Kind::Stream { .. } => {}
        }
    }

    /// Queues what WebRTC leg `w` has to send.
    fn webrtc(&mut self, w: &mut WebRtcLeg) {
        while let Some(t) = w.poll_transmit() {
            self.queue.push_back(MediaTransmit {
                via: Via::WebRtc,
                to: t.to,
                bytes: t.bytes,
            });
        }
    }
}

/// A packet on its way out: the relay's own buffer, or a pipeline's output
/// that is only borrowed until the next poll.
enum Packet<'a> {
    Owned(Bytes),
    Borrowed(&'a [u8]),
}

impl Packet<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Packet::Owned(b) => b,
            Packet::Borrowed(b) => b,
        }
    }
}

/// Frame of generated tones: 20 ms at 8 kHz.
const TONE_RATE: u32 = 8000;
const FRAME: Duration = Duration::from_millis(20);

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_private()
                || v.is_unspecified()
                || v.is_link_local()
                || v.octets()[0] == 100 && (64..128).contains(&v.octets()[1])
        }
        IpAddr::V6(v) => v.is_unspecified() || (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

impl MediaSession {
    /// An empty session.
    pub fn new(cfg: MediaConfig) -> Self {
        let rng = SeededRng::new(cfg.seed ^ 0x3ed1a);
        MediaSession {
            cfg,
            legs: BTreeMap::new(),
            by_port: BTreeMap::new(),
            out: Outbox::default(),
            events: VecDeque::new(),
            mux: VecDeque::new(),
            stream_io: VecDeque::new(),
            rng,
            next_tick: None,
            stats: MediaStats::default(),
            stopped: false,
            pcm: vec![0; 960],
        }
    }

    /// Counters.
    pub fn stats(&self) -> MediaStats {
        self.stats
    }

    /// Loss, concealment and jitter over every pipeline.
    pub fn totals(&self) -> MediaTotals {
        let mut t = MediaTotals::default();
        for l in self.legs.values() {
            if let Some(p) = &l.to_me {
                let s = p.stats();
                t.lost += s.lost;
                t.late += s.late;
                t.concealed_ms += s.concealed_ms;
                t.transcoding += u64::from(!p.is_relay());
                if let Some(j) = p.jitter_stats() {
                    t.max_jitter_delay_ms =
                        t.max_jitter_delay_ms.max(j.current_delay_ms.round() as u32);
                }
            }
        }
        t
    }

    /// Legs.
    pub fn legs(&self) -> usize {
        self.legs.len()
    }

    /// Whether [`MediaCommand::Stop`] came: the driver drops the session.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The local RTP ports in use (the driver binds them).
    pub fn rtp_ports(&self) -> Vec<u16> {
        self.by_port.keys().copied().collect()
    }

    /// Jitter-buffer delay of what leg `leg` receives (ms), for metrics.
    pub fn jitter_delay_ms(&self, leg: LegKey) -> Option<u32> {
        let p = self.legs.get(&leg)?.to_me.as_ref()?;
        p.jitter_stats().map(|s| s.current_delay_ms.round() as u32)
    }

    // ----- commands -----

    /// A command from control.
    pub fn handle_command(&mut self, now: Instant, cmd: MediaCommand) {
        match cmd {
            MediaCommand::AddRtp {
                leg,
                local_port,
                remote,
                format,
            } => {
                self.legs.insert(
                    leg,
                    MLeg {
                        kind: Kind::Rtp {
                            port: local_port,
                            signalled: remote,
                            latched: None,
                            format,
                        },
                        source: Source::Nothing,
                        to_me: None,
                        tone: None,
                        muted: false,
                        held: false,
                        last_rx: now,
                        timed_out: false,
                    },
                );
                self.by_port.insert(local_port, leg);
                self.rebuild_for_source(leg);
            }
            MediaCommand::UpdateRtp {
                leg,
                remote,
                format,
            } => {
                if let Some(l) = self.legs.get_mut(&leg)
                    && let Kind::Rtp {
                        signalled,
                        latched,
                        format: f,
                        ..
                    } = &mut l.kind
                {
                    if *signalled != remote {
                        *latched = None;
                    }
                    *signalled = remote;
                    let changed = *f != format;
                    *f = format;
                    l.last_rx = now;
                    if changed {
                        self.rebuild(leg);
                        self.rebuild_for_source(leg);
                    }
                }
            }
            MediaCommand::AddWebRtc { leg, offer } => self.add_webrtc(now, leg, &offer),
            MediaCommand::AddStream {
                leg,
                url,
                format,
                headers,
                start,
            } => {
                self.legs.insert(
                    leg,
                    MLeg {
                        kind: Kind::Stream {
                            leg: Box::new(StreamLeg::new(format, &start)),
                            connected: false,
                        },
                        source: Source::Nothing,
                        to_me: None,
                        tone: None,
                        muted: false,
                        held: false,
                        last_rx: now,
                        timed_out: false,
                    },
                );
                self.stream_io
                    .push_back(StreamIo::Connect { leg, url, headers });
            }
            MediaCommand::Hear { listener, feeds } => self.hear(now, listener, &feeds),
            MediaCommand::Mute { leg, on } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.muted = on;
                }
                for l in self.legs.values_mut() {
                    if l.source == Source::Leg(leg)
                        && let Some(p) = l.to_me.as_mut()
                    {
                        p.set_muted(on);
                    }
                }
            }
            MediaCommand::Hold { leg, on } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.held = on;
                    l.last_rx = now;
                }
            }
            MediaCommand::SendDtmf { leg, digits } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    match &mut l.kind {
                        Kind::Stream { leg: st, .. } => digits
                            .chars()
                            .filter(|c| *c != ',')
                            .for_each(|d| st.send_dtmf(d)),
                        _ => {
                            if let Some(p) = l.to_me.as_mut() {
                                let _ = p.send_dtmf(&digits, Millis(160));
                            }
                        }
                    }
                }
            }
            MediaCommand::Remove { leg } => self.remove(leg),
            MediaCommand::Stop => {
                let keys: Vec<LegKey> = self.legs.keys().copied().collect();
                for k in keys {
                    self.remove(k);
                }
                self.stopped = true;
            }
        }
        self.drain(now);
    }

    /// `listener` hears `feeds` from now on.
    fn hear(&mut self, now: Instant, listener: LegKey, feeds: &[Feed]) {
        let source = match feeds.first() {
            None => Source::Nothing,
            Some(Feed {
                from: FeedSource::Leg(k),
                ..
            }) => Source::Leg(*k),
            Some(Feed {
                from: FeedSource::Tone(t),
                ..
            }) => Source::Tone(*t),
        };
        let Some(l) = self.legs.get_mut(&listener) else {
            return;
        };
        if l.source == source {
            return;
        }
        l.source = source;
        l.tone = match source {
            Source::Tone(t) => {
                let g = match t {
                    // About -20 dBFS each: the level of a real ringback.
                    Tone::Ringback => {
                        ToneGenerator::new(TONE_RATE, &[(440.0, 3000.0), (480.0, 3000.0)])
                    }
                    Tone::Hz(hz) => ToneGenerator::new(TONE_RATE, &[(f64::from(hz), 8000.0)]),
                };
                Some((g, now))
            }
            _ => None,
        };
        match source {
            Source::Nothing => l.to_me = None,
            _ => self.rebuild(listener),
        }
        if matches!(source, Source::Tone(_)) {
            self.schedule_tick(now);
        }
    }

    fn remove(&mut self, leg: LegKey) {
        if let Some(mut l) = self.legs.remove(&leg) {
            match &mut l.kind {
                Kind::Rtp { port, .. } => {
                    self.by_port.remove(port);
                }
                Kind::WebRtc { leg: w, .. } => {
                    w.close();
                    self.out.webrtc(w);
                    self.mux.push_back(MuxUpdate::Remove { leg });
                }
                Kind::Stream { leg: st, .. } => {
                    st.stop();
                    while let Some(msg) = st.poll_message() {
                        self.stream_io.push_back(StreamIo::Send { leg, msg });
                    }
                    self.stream_io.push_back(StreamIo::Close { leg });
                }
            }
        }
        for l in self.legs.values_mut() {
            if l.source == Source::Leg(leg) {
                l.source = Source::Nothing;
                l.to_me = None;
            }
        }
    }

    fn add_webrtc(&mut self, now: Instant, leg: LegKey, offer: &str) {
        let Some(cfg) = self.cfg.webrtc.clone() else {
            self.events.push_back(MediaEvent::WebRtcFailed {
                leg,
                reason: "browser legs are not enabled".into(),
            });
            return;
        };
        match WebRtcLeg::accept_offer(now, offer, &cfg) {
            Ok((w, answer)) => {
                let pts = w.payload_types();
                let format = RtpFormat {
                    codec: Codec::Opus,
                    payload_type: PayloadType::new(pts.opus).unwrap_or(PayloadType::PCMU),
                    telephone_event: pts.telephone_event_48k.and_then(PayloadType::new),
                    ptime: Millis(20),
                    opus: Some(w.remote_opus_fmtp()),
                };
                self.mux.push_back(MuxUpdate::Insert {
                    leg,
                    credentials: w.mux_credentials(),
                });
                // A re-offer replaces the leg's peer connection, keeping its links.
                let (source, muted, held) =
                    self.legs
                        .remove(&leg)
                        .map_or((Source::Nothing, false, false), |old| {
                            if let Kind::WebRtc { leg: mut ow, .. } = old.kind {
                                ow.close();
                            }
                            (old.source, old.muted, old.held)
                        });
                self.legs.insert(
                    leg,
                    MLeg {
                        kind: Kind::WebRtc {
                            leg: Box::new(w),
                            format,
                        },
                        source,
                        to_me: None,
                        tone: None,
                        muted,
                        held,
                        last_rx: now,
                        timed_out: false,
                    },
                );
                self.rebuild(leg);
                self.rebuild_for_source(leg);
                self.events
                    .push_back(MediaEvent::WebRtcAnswer { leg, sdp: answer });
            }
            Err(e) => self.events.push_back(MediaEvent::WebRtcFailed {
                leg,
                reason: e.to_string(),
            }),
        }
    }

    /// Rebuilds the pipeline that feeds `leg` from its source.
    fn rebuild(&mut self, leg: LegKey) {
        let Some(l) = self.legs.get(&leg) else { return };
        let output = l.endpoint();
        let input = match l.source {
            Source::Nothing => None,
            Source::Tone(_) => Some(Endpoint::Pcm(SampleRate::HZ_8000)),
            Source::Leg(src) => self.legs.get(&src).map(MLeg::endpoint),
        };
        let source_muted = match l.source {
            Source::Leg(src) => self.legs.get(&src).is_some_and(|s| s.muted),
            _ => false,
        };
        let pipeline = input.and_then(|input| {
            let ssrc = Ssrc(self.rng.next_u32());
            let mut cfg = PipelineConfig::new(input, output, ssrc, self.rng.next_u64());
            cfg.opus = self.cfg.opus;
            let is_sip =
                |k: LegKey| matches!(self.legs.get(&k).map(|l| &l.kind), Some(Kind::Rtp { .. }));
            // SIP to SIP, both ends are phones or gateways with jitter buffers of
            // their own: buffering here too only adds delay, so transcoding decodes
            // on arrival, as rtpengine does. A browser on either side, or an agent,
            // gets its input smoothed. (A pipeline that relays ignores the buffer.)
            let sip_to_sip = matches!(l.source, Source::Leg(src) if is_sip(src)) && is_sip(leg);
            if (!sip_to_sip || self.cfg.sip_jitter_buffer)
                && let Endpoint::Rtp(f) = input
            {
                cfg.jitter = Some(JitterConfig::new(f.codec.clock_rate()));
            }
            MediaPipeline::new(cfg).ok()
        });
        if let Some(l) = self.legs.get_mut(&leg) {
            l.to_me = pipeline;
            if let Some(p) = l.to_me.as_mut() {
                p.set_muted(source_muted);
            }
        }
    }

    /// Rebuilds every pipeline fed by `src` (its format changed).
    fn rebuild_for_source(&mut self, src: LegKey) {
        let fed: Vec<LegKey> = self
            .legs
            .iter()
            .filter(|(_, l)| l.source == Source::Leg(src))
            .map(|(k, _)| *k)
            .collect();
        for k in fed {
            self.rebuild(k);
        }
    }

    // ----- AI agent streams -----

    /// The agent's WebSocket opened.
    pub fn handle_stream_connected(&mut self, now: Instant, leg: LegKey) {
        if let Some(l) = self.legs.get_mut(&leg)
            && let Kind::Stream { connected, .. } = &mut l.kind
        {
            *connected = true;
            l.last_rx = now;
            self.events.push_back(MediaEvent::StreamConnected { leg });
            self.schedule_tick(now);
        }
        self.drain(now);
    }

    /// A message from the agent.
    pub fn handle_stream_message(&mut self, now: Instant, leg: LegKey, msg: AgentMessage) {
        if let Some(l) = self.legs.get_mut(&leg)
            && let Kind::Stream { leg: st, .. } = &mut l.kind
        {
            l.last_rx = now;
            let _ = st.handle_agent(msg);
            while let Some(ev) = st.poll_event() {
                self.events.push_back(match ev {
                    StreamEvent::Hangup => MediaEvent::StreamHangup { leg },
                    StreamEvent::Transfer(target) => MediaEvent::StreamTransfer { leg, target },
                });
            }
        }
        self.drain(now);
    }

    /// The agent's WebSocket closed or could not be opened.
    pub fn handle_stream_closed(&mut self, now: Instant, leg: LegKey, reason: &str) {
        if matches!(
            self.legs.get(&leg).map(|l| &l.kind),
            Some(Kind::Stream { .. })
        ) {
            self.events.push_back(MediaEvent::StreamFailed {
                leg,
                reason: reason.into(),
            });
        }
        self.drain(now);
    }

    /// The next WebSocket action for an agent leg.
    pub fn poll_stream_io(&mut self) -> Option<StreamIo> {
        self.stream_io.pop_front()
    }

    // ----- input -----

    /// An RTP datagram on local port `port` from `source`.
    pub fn handle_rtp(&mut self, now: Instant, port: u16, source: SocketAddr, data: BytesMut) {
        let Some(&leg) = self.by_port.get(&port) else {
            return;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Kind::Rtp {
            signalled, latched, ..
        } = &mut l.kind
        else {
            return;
        };
        match (*latched, *signalled) {
            (Some(a), _) if a != source => {
                self.stats.foreign_source += 1;
                return;
            }
            (Some(_), _) => {}
            (None, Some(s)) if s == source => *latched = Some(source),
            (None, Some(s)) if s.ip() == source.ip() || is_private(s.ip()) => {
                *latched = Some(source)
            }
            (None, Some(_)) => {
                self.stats.foreign_source += 1;
                return;
            }
            (None, None) => *latched = Some(source),
        }
        if RtpHeader::parse(&data).is_err() {
            self.stats.malformed += 1;
            return;
        }
        self.stats.rtp_in += 1;
        self.stats.rtp_bytes_in += data.len() as u64;
        l.last_rx = now;
        l.timed_out = false;
        self.deliver(now, leg, data);
        self.drain(now);
    }

    /// A datagram on the shared WebRTC port that the demultiplexer routed to `leg`.
    pub fn handle_webrtc(
        &mut self,
        now: Instant,
        leg: LegKey,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) {
        self.stats.webrtc_in += 1;
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Kind::WebRtc { leg: w, .. } = &mut l.kind else {
            return;
        };
        if !w.accepts(source, datagram) {
            return; // not validated by ICE: dropped (CVE-2023-49786 class)
        }
        let _ = w.handle_input(now, source, destination, datagram);
        self.webrtc_events(now, leg);
        self.drain(now);
    }

    fn webrtc_events(&mut self, now: Instant, leg: LegKey) {
        loop {
            let Some(l) = self.legs.get_mut(&leg) else {
                return;
            };
            let Kind::WebRtc { leg: w, .. } = &mut l.kind else {
                return;
            };
            let Some(ev) = w.poll_event() else { return };
            match ev {
                WebRtcEvent::Connected => {
                    l.last_rx = now;
                    self.events.push_back(MediaEvent::WebRtcConnected { leg });
                }
                WebRtcEvent::Rtp(b) => {
                    l.last_rx = now;
                    // The leg built this packet and holds no other handle on it.
                    let data = b.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]));
                    self.deliver(now, leg, data);
                }
                WebRtcEvent::Disconnected(_) => {
                    self.events.push_back(MediaEvent::WebRtcGone { leg })
                }
                WebRtcEvent::Failed(f) => self.events.push_back(MediaEvent::WebRtcFailed {
                    leg,
                    reason: format!("{f:?}"),
                }),
            }
        }
    }

    /// Hands a packet from `from` to every leg it feeds.
    fn deliver(&mut self, now: Instant, from: LegKey, mut data: BytesMut) {
        let feeds = |l: &MLeg| l.source == Source::Leg(from);
        let n = self.legs.values().filter(|l| feeds(l)).count();
        // Telephone-events are reported even when nothing is connected yet.
        if n == 0 {
            let te = self.legs.get(&from).and_then(MLeg::telephone_event);
            if let (Some(te), Ok(h)) = (te, RtpHeader::parse(&data))
                && h.payload_type == te
                && let Ok(ev) = media_core::dtmf::TelephoneEvent::parse(&data[h.payload_range()])
                && let Some(d) = ev.digit()
            {
                self.events.push_back(MediaEvent::Dtmf {
                    leg: from,
                    digit: d.as_char(),
                    relayed: false,
                });
            }
            return;
        }
        // The last leg fed takes `data` itself (relayed in place, or parsed
        // without a copy); a fan-out copies for the legs before it.
        let mut i = 0;
        for l in self.legs.values_mut().filter(|l| feeds(l)) {
            i += 1;
            let last = i == n;
            let Some(p) = l.to_me.as_mut() else { continue };
            if p.is_relay() && last {
                if let Ok(Some(len)) = p.relay_in_place(now, &mut data) {
                    let pkt = Packet::Owned(data.split_to(len).freeze());
                    self.out
                        .send(&mut self.stats, now, l.held, &mut l.kind, pkt);
                }
            } else {
                let bytes = if last {
                    data.split().freeze()
                } else {
                    Bytes::copy_from_slice(&data)
                };
                if let Ok(pkt) = RtpPacket::parse(bytes) {
                    let _ = p.handle_rtp(now, &pkt);
                }
            }
            let relayed = p.is_relay();
            while let Some(ev) = p.poll_event() {
                if let PipelineEvent::Dtmf { digit, .. } = ev {
                    self.events.push_back(MediaEvent::Dtmf {
                        leg: from,
                        digit: digit.as_char(),
                        relayed,
                    });
                }
            }
        }
    }

    /// Moves pipeline output to the wire.
    fn drain(&mut self, now: Instant) {
        for (k, l) in self.legs.iter_mut() {
            if let Some(p) = l.to_me.as_mut() {
                // A stream leg takes PCM frames, queued for its agent.
                if let Kind::Stream {
                    leg: st,
                    connected: true,
                } = &mut l.kind
                {
                    let mut frame = [0i16; 960];
                    while let Some(n) = p.poll_frame(&mut frame) {
                        if !l.held {
                            st.push_caller_audio(&frame[..n]);
                        }
                    }
                }
                while let Some(o) = p.poll_packet() {
                    self.out.send(
                        &mut self.stats,
                        now,
                        l.held,
                        &mut l.kind,
                        Packet::Borrowed(o.bytes),
                    );
                }
                let relayed = p.is_relay();
                let source = l.source;
                while let Some(ev) = p.poll_event() {
                    if let (PipelineEvent::Dtmf { digit, .. }, Source::Leg(from)) = (ev, source) {
                        self.events.push_back(MediaEvent::Dtmf {
                            leg: from,
                            digit: digit.as_char(),
                            relayed,
                        });
                    }
                }
            }
            if let Kind::WebRtc { leg: w, .. } = &mut l.kind {
                self.out.webrtc(w);
            }
            if let Kind::Stream {
                leg: st,
                connected: true,
            } = &mut l.kind
            {
                while let Some(msg) = st.poll_message() {
                    self.stream_io.push_back(StreamIo::Send { leg: *k, msg });
                }
            }
        }
    }

    fn schedule_tick(&mut self, now: Instant) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now + FRAME);
        }
    }

    /// When [`MediaSession::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_tick;
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for l in self.legs.values() {
            min(l.to_me.as_ref().and_then(|p| p.poll_timeout()));
            if let Kind::WebRtc { leg, .. } = &l.kind {
                min(leg.poll_timeout());
            }
            if matches!(l.kind, Kind::Rtp { .. })
                && l.source != Source::Nothing
                && !l.held
                && !l.timed_out
            {
                min(Some(l.last_rx + self.cfg.media_timeout));
            }
        }
        t
    }

    /// Runs timers: jitter-buffer playout, tones, WebRTC, media timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let keys: Vec<LegKey> = self.legs.keys().copied().collect();
        for k in &keys {
            if let Some(l) = self.legs.get_mut(k) {
                if let Some(p) = l.to_me.as_mut()
                    && p.poll_timeout().is_some_and(|t| t <= now)
                {
                    p.handle_timeout(now);
                }
                if let Kind::WebRtc { leg, .. } = &mut l.kind
                    && leg.poll_timeout().is_some_and(|t| t <= now)
                {
                    leg.handle_timeout(now);
                }
                if matches!(l.kind, Kind::Rtp { .. })
                    && l.source != Source::Nothing
                    && !l.held
                    && !l.timed_out
                    && now >= l.last_rx + self.cfg.media_timeout
                {
                    l.timed_out = true;
                    self.events.push_back(MediaEvent::MediaTimeout { leg: *k });
                }
            }
            self.webrtc_events(now, *k);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.next_tick = None;
            let mut any = false;
            for l in self.legs.values_mut() {
                let Some((tone_gen, started)) = l.tone.as_mut() else {
                    continue;
                };
                let Source::Tone(kind) = l.source else {
                    continue;
                };
                any = true;
                let frame = &mut self.pcm[..(TONE_RATE / 50) as usize];
                tone_gen.fill(frame);
                if kind == Tone::Ringback {
                    // 2 s on, 4 s off.
                    let phase = now.saturating_duration_since(*started).as_millis() % 6000;
                    if phase >= 2000 {
                        frame.fill(0);
                    }
                }
                if let Some(p) = l.to_me.as_mut() {
                    let _ = p.handle_pcm(now, frame);
                }
            }
            // Each connected agent plays one 20 ms frame (or silence) to the legs
            // it feeds: pacing, whatever the agent's bursts.
            let mut frames: Vec<(LegKey, Vec<i16>)> = Vec::new();
            for (k, l) in self.legs.iter_mut() {
                if let Kind::Stream {
                    leg: st,
                    connected: true,
                } = &mut l.kind
                {
                    any = true;
                    let mut f = vec![0i16; st.format().frame_samples()];
                    st.next_frame(&mut f);
                    if !l.muted {
                        frames.push((*k, f));
                    }
                }
            }
            for (from, f) in frames {
                for l in self.legs.values_mut() {
                    if l.source == Source::Leg(from)
                        && let Some(p) = l.to_me.as_mut()
                    {
                        let _ = p.handle_pcm(now, &f);
                    }
                }
            }
            if any {
                self.next_tick = Some(now + FRAME);
            }
        }
        self.drain(now);
    }

    // ----- output -----

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<MediaTransmit> {
        self.out.queue.pop_front()
    }

    /// The next event for control.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// The next change for the WebRTC demultiplexer.
    pub fn poll_mux_update(&mut self) -> Option<MuxUpdate> {
        self.mux.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use media_core::codec::{OpusComplexity, OpusFmtp};
    use media_core::rtp::{RtpTimestamp, RtpWriter, SeqNo};

    fn pcmu() -> RtpFormat {
        RtpFormat::new(Codec::Pcmu, PayloadType::PCMU)
    }

    fn packet(seq: u16) -> BytesMut {
        let w = RtpWriter::new(
            PayloadType::PCMU,
            SeqNo(seq),
            RtpTimestamp(u32::from(seq) * 160),
            Ssrc(5),
        );
        let mut b = BytesMut::zeroed(200);
        let n = w.write_packet(&[0xff; 160], &mut b).unwrap();
        b.truncate(n);
        b
    }

    /// SIP legs 0 (port 20000, `a`) and 1 (port 20002, `b`, at 198.51.100.9:4000),
    /// connected.
    fn connected(
        cfg: MediaConfig,
        a: (RtpFormat, Option<SocketAddr>),
        b: RtpFormat,
    ) -> MediaSession {
        let mut s = MediaSession::new(cfg);
        let now = Instant::ZERO;
        for (leg, local_port, (format, remote)) in [
            (0, 20000, a),
            (1, 20002, (b, Some("198.51.100.9:4000".parse().unwrap()))),
        ] {
            let cmd = MediaCommand::AddRtp {
                leg: LegKey(leg),
                local_port,
                remote,
                format,
            };
            s.handle_command(now, cmd);
        }
        for cmd in MediaCommand::connect(LegKey(0), LegKey(1)) {
            s.handle_command(now, cmd);
        }
        s
    }

    fn two_legs(a_remote: Option<SocketAddr>) -> MediaSession {
        connected(MediaConfig::new(None, 1), (pcmu(), a_remote), pcmu())
    }

    fn sent(s: &mut MediaSession) -> Vec<MediaTransmit> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    #[test]
    fn sip_to_sip_transcoding_is_unbuffered_unless_configured() {
        for buffered in [false, true] {
            let mut cfg = MediaConfig::new(None, 1);
            cfg.sip_jitter_buffer = buffered;
            let pcma = RtpFormat::new(Codec::Pcma, PayloadType::PCMA);
            let s = connected(cfg, (pcmu(), None), pcma);
            for leg in [0, 1] {
                let p = s.legs[&LegKey(leg)].to_me.as_ref().unwrap();
                assert!(!p.is_relay());
                assert_eq!(p.jitter_stats().is_some(), buffered, "leg {leg}");
            }
        }
    }

    #[test]
    fn opus_toward_a_peer_takes_our_settings_and_its_fmtp() {
        let mut cfg = MediaConfig::new(None, 1);
        cfg.opus.complexity = OpusComplexity::Fixed(2);
        let opus = |fmtp: &str| RtpFormat {
            opus: Some(OpusFmtp::parse(fmtp)),
            ..RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap())
        };
        let mut s = connected(cfg, (pcmu(), None), opus(""));
        let (now, remote) = (Instant::ZERO, Some("198.51.100.9:4000".parse().unwrap()));
        let encoder = |s: &MediaSession| {
            *s.legs[&LegKey(1)]
                .to_me
                .as_ref()
                .unwrap()
                .opus_encoder()
                .unwrap()
        };
        let e = encoder(&s);
        assert_eq!(
            e.complexity,
            OpusComplexity::Fixed(2),
            "the configured complexity"
        );
        assert!(!e.inband_fec, "no useinbandfec=1 in the peer's fmtp");
        assert!(
            s.legs[&LegKey(0)]
                .to_me
                .as_ref()
                .unwrap()
                .opus_encoder()
                .is_none()
        );
        // A re-INVITE whose answer asks for FEC rebuilds the encoder with it.
        s.handle_command(
            now,
            MediaCommand::UpdateRtp {
                leg: LegKey(1),
                remote,
                format: opus("useinbandfec=1"),
            },
        );
        let e = encoder(&s);
        assert!(e.inband_fec && e.complexity == OpusComplexity::Fixed(2));
    }

    #[test]
    fn relays_between_rtp_legs_from_our_ports() {
        let mut s = two_legs(Some("203.0.113.5:30000".parse().unwrap()));
        s.handle_rtp(
            Instant::ZERO,
            20000,
            "203.0.113.5:30000".parse().unwrap(),
            packet(1),
        );
        let out = sent(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].via, Via::Rtp(20002));
        assert_eq!(out[0].to, "198.51.100.9:4000".parse().unwrap());
        let h = RtpHeader::parse(&out[0].bytes).unwrap();
        assert_ne!(
            h.ssrc,
            Ssrc(5),
            "our own SSRC on the far side (topology hiding)"
        );
    }

    #[test]
    fn a_leg_feeding_two_legs_reaches_both() {
        // Leg 0 connected to 1, then to 2: 1 still listens to 0 (a fan-out). The
        // last leg fed relays the datagram's own buffer, the one before a copy.
        let a = "203.0.113.5:30000".parse().unwrap();
        let c: SocketAddr = "192.0.2.44:5000".parse().unwrap();
        for format in [pcmu(), RtpFormat::new(Codec::Pcma, PayloadType::PCMA)] {
            let mut s = two_legs(Some(a));
            let cmd = MediaCommand::AddRtp {
                leg: LegKey(2),
                local_port: 20004,
                remote: Some(c),
                format,
            };
            s.handle_command(Instant::ZERO, cmd);
            s.handle_command(
                Instant::ZERO,
                MediaCommand::Hear {
                    listener: LegKey(2),
                    feeds: vec![Feed::leg(LegKey(0))],
                },
            );
            s.handle_rtp(Instant::ZERO, 20000, a, packet(1));
            let mut out = sent(&mut s);
            out.sort_by_key(|t| t.via == Via::Rtp(20004));
            let to: Vec<_> = out.iter().map(|t| (t.via, t.to)).collect();
            assert_eq!(
                to,
                [
                    (Via::Rtp(20002), "198.51.100.9:4000".parse().unwrap()),
                    (Via::Rtp(20004), c)
                ],
                "{:?}",
                format.codec
            );
            // PCMU silence (0xff) as it came, or as PCMA silence (0xd5).
            let silence = if format.codec == Codec::Pcmu {
                0xff
            } else {
                0xd5
            };
            for (t, code) in out.iter().zip([0xff, silence]) {
                let h = RtpHeader::parse(&t.bytes).unwrap();
                let payload = &t.bytes[h.payload_range()];
                assert_eq!(payload.len(), 160);
                assert!(payload.iter().all(|&b| b == code), "{:?}", t.to);
            }
        }
    }

    #[test]
    fn a_stray_source_cannot_hijack_a_latched_stream() {
        let mut s = two_legs(Some("203.0.113.5:30000".parse().unwrap()));
        // Another host first: dropped, the signalled peer latches.
        s.handle_rtp(
            Instant::ZERO,
            20000,
            "192.0.2.66:30000".parse().unwrap(),
            packet(1),
        );
        assert!(sent(&mut s).is_empty());
        s.handle_rtp(
            Instant::ZERO,
            20000,
            "203.0.113.5:30000".parse().unwrap(),
            packet(2),
        );
        assert_eq!(sent(&mut s).len(), 1);
        // Same IP, another port after latching: dropped too.
        s.handle_rtp(
            Instant::ZERO,
            20000,
            "203.0.113.5:30002".parse().unwrap(),
            packet(3),
        );
        assert!(sent(&mut s).is_empty());
        assert_eq!(s.stats().foreign_source, 2);
    }

    #[test]
    fn a_natted_peer_latches_to_its_real_address() {
        // Signalled a private address: the first source is the peer behind NAT.
        let mut s = two_legs(Some("10.1.2.3:4000".parse().unwrap()));
        s.handle_rtp(
            Instant::ZERO,
            20000,
            "203.0.113.77:61000".parse().unwrap(),
            packet(1),
        );
        assert_eq!(sent(&mut s).len(), 1);
        // Replies to leg 0 go where it really is.
        s.handle_rtp(
            Instant::ZERO,
            20002,
            "198.51.100.9:4000".parse().unwrap(),
            packet(1),
        );
        let back = sent(&mut s);
        assert_eq!(back[0].to, "203.0.113.77:61000".parse().unwrap());
    }

    #[test]
    fn media_timeout_and_hold() {
        let mut s = two_legs(Some("203.0.113.5:30000".parse().unwrap()));
        s.handle_rtp(
            Instant::ZERO,
            20000,
            "203.0.113.5:30000".parse().unwrap(),
            packet(1),
        );
        let t = s.poll_timeout().unwrap();
        assert_eq!(t, Instant::from_millis(60_000));
        s.handle_timeout(t);
        let evs: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(evs.contains(&MediaEvent::MediaTimeout { leg: LegKey(0) }));
        // A held leg is not timed out (peers often stop sending on hold).
        let mut s = two_legs(Some("203.0.113.5:30000".parse().unwrap()));
        s.handle_command(
            Instant::ZERO,
            MediaCommand::Hold {
                leg: LegKey(0),
                on: true,
            },
        );
        s.handle_command(
            Instant::ZERO,
            MediaCommand::Hold {
                leg: LegKey(1),
                on: true,
            },
        );
        s.handle_timeout(Instant::from_millis(120_000));
        assert!(std::iter::from_fn(|| s.poll_event()).next().is_none());
    }

    #[test]
    fn stop_releases_everything() {
        let mut s = two_legs(None);
        assert_eq!(s.rtp_ports(), vec![20000, 20002]);
        s.handle_command(Instant::ZERO, MediaCommand::Stop);
        assert!(s.is_stopped());
        assert_eq!(s.legs(), 0);
        assert!(s.rtp_ports().is_empty());
    }
}
