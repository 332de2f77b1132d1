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
//! source at all when the IP cannot match; a leg may also trust its peer's SIP
//! address (`latch_from`: a phone behind NAT whose SDP names an address it does
//! not send from, or a trunk set to `Latch::Signalling`); once latched, other
//! sources are dropped so a stray sender cannot hijack the stream. Each RTP leg also speaks RTCP
//! on its port + 1 (`rtcp.rs`): our reports out, the peer's in ([`LegQuality`]).

mod mix;
mod record;
mod rtcp;

pub use record::{RECORD_FRAME_MAX, RecordOut};
pub use rtcp::LegQuality;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use media_core::analysis::ToneGenerator;
use media_core::codec::{Codec, OpusEncoderConfig};
use media_core::jitter::JitterConfig;
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, PipelineEvent, RtpFormat};
use media_core::rtp::{PayloadType, RtpHeader, RtpPacket, RtpTimestamp, Ssrc};
use media_core::{Instant, Millis, SampleRate, SeededRng};

use crate::contract::{
    Feed, FeedSource, LegKey, Level, MediaCommand, MediaEvent, RecordNote, RecordingId, Tone,
};
use crate::stream::{AgentMessage, StreamEvent, StreamLeg};
use crate::webrtc::{MuxCredentials, WebRtcConfig, WebRtcEvent, WebRtcLeg};
use mix::{Mix, Slot};
use record::{Recording, Source};

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
    /// Slots of the call's mix (listeners, the legs and tones they hear).
    pub max_mix: usize,
    /// Wall-clock time (since the Unix epoch) at `Instant::ZERO`, for the NTP
    /// timestamps of RTCP sender reports.
    pub wall_clock_at_zero: Duration,
    /// Our RTCP CNAME (RFC 3550 6.5.1).
    pub cname: String,
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
            max_mix: 40,
            wall_clock_at_zero: Duration::ZERO,
            cname: "sbc".into(),
        }
    }
}

/// Which socket a datagram leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The RTP socket on this local port.
    Rtp(u16),
    /// The RTCP socket beside RTP port this (on the port + 1).
    Rtcp(u16),
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
    /// Ticks of the call clock's mix.
    pub mix_ticks: u64,
    /// Frames the mix's listeners needed encoded: one per output format for
    /// everyone who hears the full mix, one per listener who hears a mix of its
    /// own (a talker, who does not hear itself). Five parties with one talker
    /// and one codec: 2 a tick.
    pub mix_encodes: u64,
    /// Packets handed to another leg as they came (same format: relayed).
    pub relayed: u64,
    /// Packets that went through a transcoding pipeline to another leg.
    pub transcoded: u64,
    /// RTCP compound packets received on SIP legs.
    pub rtcp_in: u64,
    /// RTCP compound packets sent on SIP legs.
    pub rtcp_out: u64,
    /// Datagrams on an RTCP port that were not RTCP.
    pub rtcp_malformed: u64,
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
        /// The peer's SIP address, also trusted for the first packet.
        latch_from: Option<IpAddr>,
        format: RtpFormat,
        rtcp: Box<rtcp::RtcpLeg>,
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

/// How a listener gets what it hears.
#[derive(Debug)]
enum Route {
    /// It hears nothing: nothing is sent to it.
    Nothing,
    /// One leg as it comes (itself: an echo): a relay in place, or one
    /// transcoding pipeline from that leg's format to its own.
    Leg {
        from: LegKey,
        pipeline: Option<MediaPipeline>,
    },
    /// A generated tone through a PCM pipeline (ringback, a test tone).
    Tone {
        tone: Tone,
        generator: ToneGenerator,
        started: Instant,
        pipeline: Option<MediaPipeline>,
    },
    /// Several feeds, or one at another level: its slot's frame of the call's
    /// mix, encoded for it on every tick.
    Mixed { encoder: Option<MediaPipeline> },
}

impl Route {
    fn pipeline(&mut self) -> Option<&mut MediaPipeline> {
        match self {
            Route::Nothing => None,
            Route::Leg { pipeline, .. } | Route::Tone { pipeline, .. } => pipeline.as_mut(),
            Route::Mixed { encoder } => encoder.as_mut(),
        }
    }

    fn pipeline_ref(&self) -> Option<&MediaPipeline> {
        match self {
            Route::Nothing => None,
            Route::Leg { pipeline, .. } | Route::Tone { pipeline, .. } => pipeline.as_ref(),
            Route::Mixed { encoder } => encoder.as_ref(),
        }
    }

    fn source_leg(&self) -> Option<LegKey> {
        match self {
            Route::Leg { from, .. } => Some(*from),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct MLeg {
    kind: Kind,
    /// What it hears (the call's graph).
    feeds: Vec<Feed>,
    route: Route,
    /// What this leg sends is replaced by silence for the others.
    muted: bool,
    /// Nothing is sent to this leg.
    held: bool,
    last_rx: Instant,
    timed_out: bool,
    /// Its stream's SSRC: one stream whatever feeds it (a transfer, a new
    /// mix), so a receiver (an SRS that files per SSRC, a carrier that drops
    /// audio on a new one) sees one stream.
    ssrc: Ssrc,
    /// Where its last pipeline left the stream, and when.
    ended: Option<StreamEnd>,
}

/// Where a leg's stream stood when its pipeline was replaced.
#[derive(Clone, Copy, Debug)]
struct StreamEnd {
    at: Instant,
    seq: u16,
    ts: u32,
}

/// After an RTCP BYE, how long a SIP leg may stay silent before the media
/// timeout: a peer that changes its SSRC says BYE and sends RTP again at once.
const BYE_GRACE: Duration = Duration::from_secs(3);

impl MLeg {
    /// When this leg's silence becomes a media timeout: `timeout` after its
    /// last RTP or RTCP, sooner after an RTCP BYE.
    fn silence_deadline(&self, timeout: Duration) -> Instant {
        let quiet = self.last_rx + timeout;
        match &self.kind {
            Kind::Rtp { rtcp, .. } => rtcp.bye.map_or(quiet, |b| quiet.min(b + BYE_GRACE)),
            _ => quiet,
        }
    }

    fn new(kind: Kind, now: Instant, ssrc: Ssrc) -> MLeg {
        MLeg {
            kind,
            feeds: Vec::new(),
            route: Route::Nothing,
            muted: false,
            held: false,
            last_rx: now,
            timed_out: false,
            ssrc,
            ended: None,
        }
    }

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

    /// Whether it hears through the mix.
    fn mixed(&self) -> bool {
        matches!(self.route, Route::Mixed { .. })
    }
}

/// Whether `feeds` is one feed as it comes (a relay or one transcode will do).
fn single(feeds: &[Feed]) -> Option<FeedSource> {
    match feeds {
        [f] if f.level == Level::UNITY => Some(f.from),
        _ => None,
    }
}

/// One call's media. See the module docs.
#[derive(Debug)]
pub struct MediaSession {
    cfg: MediaConfig,
    legs: BTreeMap<LegKey, MLeg>,
    by_port: BTreeMap<u16, LegKey>,
    /// The call clock's mix, while a listener hears more than one feed.
    mix: Option<Mix>,
    out: Outbox,
    events: VecDeque<MediaEvent>,
    mux: VecDeque<MuxUpdate>,
    stream_io: VecDeque<StreamIo>,
    rng: SeededRng,
    next_tick: Option<Instant>,
    stats: MediaStats,
    stopped: bool,
    pcm: Vec<i16>,
    /// The RTP timestamp of each source's last DTMF event reported (one report
    /// per event, however many pipelines saw it).
    dtmf_seen: BTreeMap<LegKey, RtpTimestamp>,
    /// Peers' RTCP reports on SIP legs, for the driver's metrics.
    qualities: VecDeque<(LegKey, LegQuality)>,
    /// Where our RTCP reports are written (reused).
    rtcp_buf: Vec<u8>,
    /// Sent reports are split off this block, reclaimed once the driver has
    /// dropped them: no allocation per report.
    rtcp_arena: BytesMut,
    /// The call's recordings, each two listeners of the mix.
    recordings: BTreeMap<RecordingId, Recording>,
    /// What they give the driver, in order (a frame's samples wait in its
    /// recording).
    rec_out: VecDeque<RecordOut>,
    /// This tick's frame of each tapped pipeline (by listener leg), and its
    /// rate when it is audio.
    tapped: BTreeMap<LegKey, (Vec<i16>, Option<SampleRate>)>,
}

/// What a session sends, in order.
#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<MediaTransmit>,
    /// Transcoded packets are written here and split off as `Bytes`; once the
    /// driver has dropped what it sent, the same block is written again.
    arena: BytesMut,
    /// The driver has taken everything queued since the last packet was split
    /// off the arena.
    drained: bool,
    /// Bytes split off the arena since the driver last took everything (what
    /// one input or tick sends: a mix sends to every listener at once), and
    /// the most of that so far.
    batch: usize,
    largest_batch: usize,
}

/// Size of an [`Outbox`] block: about 16 Opus or G.711 packets, so a call holds
/// at most this much (or its largest batch) beyond what is queued.
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
                rtcp,
                ..
            } => {
                if let Some(to) = latched.or(*signalled) {
                    let bytes = match pkt {
                        Packet::Owned(b) => b,
                        Packet::Borrowed(b) => {
                            if std::mem::take(&mut self.drained) {
                                // The driver has taken (and sent and dropped)
                                // all that went before: the block is
                                // reclaimed now if this batch may not fit,
                                // not amid it, where this batch's first
                                // packets still hold it and a new one would
                                // be allocated.
                                self.batch = 0;
                                if self.arena.capacity() < self.largest_batch {
                                    self.arena.reserve(ARENA_BLOCK.max(self.largest_batch));
                                }
                            }
                            if self.arena.capacity() < b.len() {
                                self.arena.reserve(ARENA_BLOCK.max(b.len()));
                            }
                            self.batch += b.len();
                            self.largest_batch = self.largest_batch.max(self.batch);
                            self.arena.extend_from_slice(b);
                            self.arena.split().freeze()
                        }
                    };
                    stats.rtp_out += 1;
                    stats.rtp_bytes_out += bytes.len() as u64;
                    rtcp.on_sent(&bytes);
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

/// Frame of generated tones on a direct route: 20 ms at 8 kHz.
const TONE_RATE: u32 = 8000;
const FRAME: Duration = Duration::from_millis(20);
/// Late ticks of the call clock run at once, at most (100 ms).
const CATCH_UP: u32 = 5;
/// How late a clock that packets drive may be before its timer runs it.
const LAZY: Duration = Duration::from_millis(60);

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
            mix: None,
            // Room for a packet to every leg of a small call and its RTCP report
            // at once, so steady state never grows the queue.
            out: Outbox {
                queue: VecDeque::with_capacity(8),
                ..Outbox::default()
            },
            events: VecDeque::new(),
            mux: VecDeque::new(),
            stream_io: VecDeque::new(),
            rng,
            next_tick: None,
            stats: MediaStats::default(),
            stopped: false,
            pcm: vec![0; 960],
            dtmf_seen: BTreeMap::new(),
            qualities: VecDeque::new(),
            rtcp_buf: Vec::with_capacity(128),
            rtcp_arena: {
                // Split once now: the first split turns the block shared (an
                // allocation) here rather than at the first report.
                let mut a = BytesMut::with_capacity(1024);
                drop(a.split());
                a
            },
            recordings: BTreeMap::new(),
            rec_out: VecDeque::with_capacity(8),
            tapped: BTreeMap::new(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> MediaStats {
        self.stats
    }

    /// Loss, concealment and jitter over every pipeline.
    pub fn totals(&self) -> MediaTotals {
        let mut t = MediaTotals::default();
        let direct = self.legs.values().filter_map(|l| l.route.pipeline_ref());
        let decoders = self.mix.iter().flat_map(|m| m.decoders());
        for p in direct.chain(decoders) {
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
        t
    }

    /// Legs.
    pub fn legs(&self) -> usize {
        self.legs.len()
    }

    /// Whether the call's media is mixed on its clock (some listener hears more
    /// than one feed), and how many full-mix encoders it keeps.
    pub fn mixing(&self) -> Option<usize> {
        self.mix.as_ref().map(Mix::shared_encoders)
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
        let p = self.legs.get(&leg)?.route.pipeline_ref()?;
        p.jitter_stats().map(|s| s.current_delay_ms.round() as u32)
    }

    // ----- commands -----

    /// A command from control.
    pub fn handle_command(&mut self, now: Instant, cmd: MediaCommand) {
        // A clock that packets drive is brought up to now first: a recording
        // stopped (or a graph changed) now has every frame before it.
        if self.lazy_clock() {
            self.run_clock(now);
        }
        match cmd {
            MediaCommand::AddRtp {
                leg,
                local_port,
                remote,
                format,
                rtcp_mux,
                latch_from,
            } => {
                let mut rtcp = Box::new(rtcp::RtcpLeg::new(
                    now,
                    format.codec.clock_rate().0,
                    &mut self.rng,
                ));
                rtcp.set_mux(rtcp_mux);
                let kind = Kind::Rtp {
                    port: local_port,
                    signalled: remote,
                    latched: None,
                    latch_from: latch_from.map(|ip| ip.to_canonical()),
                    format,
                    rtcp,
                };
                self.legs
                    .insert(leg, MLeg::new(kind, now, Ssrc(self.rng.next_u32())));
                self.by_port.insert(local_port, leg);
                self.format_changed(now, leg);
            }
            MediaCommand::UpdateRtp {
                leg,
                remote,
                format,
                rtcp_mux,
            } => {
                if let Some(l) = self.legs.get_mut(&leg)
                    && let Kind::Rtp {
                        signalled,
                        latched,
                        format: f,
                        rtcp,
                        ..
                    } = &mut l.kind
                {
                    rtcp.set_clock_rate(format.codec.clock_rate().0);
                    rtcp.set_mux(rtcp_mux);
                    if *signalled != remote {
                        *latched = None;
                    }
                    *signalled = remote;
                    let changed = *f != format;
                    *f = format;
                    l.last_rx = now;
                    if changed {
                        self.format_changed(now, leg);
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
                let kind = Kind::Stream {
                    leg: Box::new(StreamLeg::new(format, &start)),
                    connected: false,
                };
                self.legs
                    .insert(leg, MLeg::new(kind, now, Ssrc(self.rng.next_u32())));
                self.stream_io
                    .push_back(StreamIo::Connect { leg, url, headers });
            }
            MediaCommand::Hear { listener, feeds } => {
                if let Some(l) = self.legs.get_mut(&listener) {
                    l.feeds = feeds;
                    self.reroute(now, listener, false);
                    self.sync_mix(now);
                }
            }
            MediaCommand::Mute { leg, on } => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.muted = on;
                }
                for l in self.legs.values_mut() {
                    if l.route.source_leg() == Some(leg)
                        && let Some(p) = l.route.pipeline()
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
            MediaCommand::StreamTransferState { leg, state } => {
                if let Some(Kind::Stream { leg: st, .. }) =
                    self.legs.get_mut(&leg).map(|l| &mut l.kind)
                {
                    st.send_transfer_state(&state);
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
                            if let Some(p) = l.route.pipeline() {
                                let _ = p.send_dtmf(&digits, Millis(160));
                            }
                        }
                    }
                }
            }
            MediaCommand::Remove { leg } => {
                self.remove(leg);
                self.sync_mix(now);
            }
            MediaCommand::RecordStart { id, spec } => {
                if !self.recordings.contains_key(&id) {
                    self.rec_out.push_back(RecordOut::Started {
                        id,
                        spec: (*spec).clone(),
                    });
                    self.recordings.insert(id, Recording::new(id, *spec));
                    self.sync_mix(now);
                    self.schedule_tick(now);
                }
            }
            MediaCommand::RecordFeeds { id, channels } => {
                if let Some(r) = self.recordings.get_mut(&id).filter(|r| !r.stopped) {
                    r.channels = channels;
                    self.sync_mix(now);
                }
            }
            MediaCommand::RecordPause { id, behavior } => {
                if let Some(r) = self.recordings.get_mut(&id).filter(|r| !r.stopped)
                    && r.paused.is_none()
                {
                    r.paused = Some(behavior);
                    let detail = match behavior {
                        crate::contract::PauseBehavior::Skip => "skip",
                        _ => "silence",
                    };
                    self.note(id, "paused", None, Some(detail.into()));
                }
            }
            MediaCommand::RecordResume { id } => {
                if let Some(r) = self.recordings.get_mut(&id).filter(|r| !r.stopped)
                    && r.paused.take().is_some()
                {
                    self.note(id, "resumed", None, None);
                }
            }
            MediaCommand::RecordNote { id, note } => {
                if self.recordings.get(&id).is_some_and(|r| !r.stopped) {
                    self.note(id, &note.event, note.party, note.detail);
                }
            }
            MediaCommand::RecordStop { id } => {
                self.stop_recording(id);
                self.sync_mix(now);
            }
            MediaCommand::Stop => {
                let keys: Vec<LegKey> = self.legs.keys().copied().collect();
                for k in keys {
                    self.remove(k);
                }
                let recs: Vec<RecordingId> = self.recordings.keys().copied().collect();
                for id in recs {
                    self.stop_recording(id);
                }
                self.mix = None;
                self.stopped = true;
            }
        }
        self.drain(now);
    }

    /// A timeline entry of recording `id` at its offset now.
    fn note(
        &mut self,
        id: RecordingId,
        event: &str,
        party: Option<LegKey>,
        detail: Option<String>,
    ) {
        if let Some(r) = self.recordings.get(&id) {
            self.rec_out.push_back(RecordOut::Note {
                id,
                at: r.at(),
                note: RecordNote {
                    event: event.into(),
                    party,
                    detail,
                },
            });
        }
    }

    /// Recording `id` takes no more frames; it goes once the driver has them.
    fn stop_recording(&mut self, id: RecordingId) {
        if let Some(r) = self.recordings.get_mut(&id).filter(|r| !r.stopped) {
            r.stopped = true;
            self.rec_out.push_back(RecordOut::Stopped {
                id,
                duration: r.at(),
            });
            if !r.has_frames() {
                self.recordings.remove(&id);
            }
        }
    }

    /// Leg `leg` was added or changed format: what it hears and what hears it
    /// are built again.
    fn format_changed(&mut self, now: Instant, leg: LegKey) {
        self.reroute(now, leg, true);
        let fed: Vec<LegKey> = self
            .legs
            .iter()
            .filter(|(_, l)| l.route.source_leg() == Some(leg))
            .map(|(k, _)| *k)
            .collect();
        for k in fed {
            self.reroute(now, k, true);
        }
        if let Some(m) = self.mix.as_mut() {
            m.forget_decoder(leg);
        }
        self.sync_mix(now);
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
        // Whoever heard it alone hears nothing now (control sends the new graph).
        for l in self.legs.values_mut() {
            if l.route.source_leg() == Some(leg) {
                l.route = Route::Nothing;
            }
        }
        self.dtmf_seen.remove(&leg);
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
                // A re-offer's new peer connection has new ICE credentials: the
                // demultiplexer forgets the old ones first (it refuses a second
                // entry for one leg).
                if matches!(
                    self.legs.get(&leg).map(|l| &l.kind),
                    Some(Kind::WebRtc { .. })
                ) {
                    self.mux.push_back(MuxUpdate::Remove { leg });
                }
                self.mux.push_back(MuxUpdate::Insert {
                    leg,
                    credentials: w.mux_credentials(),
                });
                // A re-offer replaces the leg's peer connection, keeping what it
                // hears and its flags.
                let kind = Kind::WebRtc {
                    leg: Box::new(w),
                    format,
                };
                let l = match self.legs.remove(&leg) {
                    Some(mut old) => {
                        if let Kind::WebRtc { leg: mut ow, .. } =
                            std::mem::replace(&mut old.kind, kind)
                        {
                            ow.close();
                        }
                        old.last_rx = now;
                        old.timed_out = false;
                        old
                    }
                    None => MLeg::new(kind, now, Ssrc(self.rng.next_u32())),
                };
                self.legs.insert(leg, l);
                self.format_changed(now, leg);
                self.events
                    .push_back(MediaEvent::WebRtcAnswer { leg, sdp: answer });
            }
            Err(e) => self.events.push_back(MediaEvent::WebRtcFailed {
                leg,
                reason: e.to_string(),
            }),
        }
    }

    /// A pipeline from `input` to leg `to`'s endpoint: with a jitter buffer
    /// toward a browser or an agent, or from one, but between two SIP legs only
    /// if configured (both ends buffer; as rtpengine does).
    fn pipeline_to(
        &mut self,
        to: LegKey,
        input: Endpoint,
        from_sip: bool,
    ) -> Option<MediaPipeline> {
        let l = self.legs.get(&to)?;
        let output = l.endpoint();
        let to_sip = matches!(l.kind, Kind::Rtp { .. });
        // Toward a SIP peer the leg's stream goes on where it stopped; the
        // pipeline moves its timestamp on by the time until its first input,
        // so a recorder's timeline keeps the gap. (A browser's stream is made
        // one by its WebRTC leg, which maps each new SSRC on; an agent's has
        // none.)
        let ssrc = if to_sip {
            l.ssrc
        } else {
            Ssrc(self.rng.next_u32())
        };
        let mut cfg = PipelineConfig::new(input, output, ssrc, self.rng.next_u64());
        if let Some(e) = l.ended.filter(|_| to_sip) {
            cfg.start = Some((e.seq, e.ts));
            cfg.start_at = Some(e.at);
        }
        cfg.opus = self.cfg.opus;
        if (!(from_sip && to_sip) || self.cfg.sip_jitter_buffer)
            && let Endpoint::Rtp(f) = input
        {
            cfg.jitter = Some(JitterConfig::new(f.codec.clock_rate()));
        }
        MediaPipeline::new(cfg).ok()
    }

    /// Notes where `listener`'s stream stands before its pipeline goes.
    fn end_stream(&mut self, now: Instant, listener: LegKey) {
        if let Some(l) = self.legs.get_mut(&listener)
            && let Some((seq, ts)) = l.route.pipeline_ref().and_then(|p| p.next_output())
        {
            l.ended = Some(StreamEnd { at: now, seq, ts });
        }
    }

    /// Builds how `listener` gets what it hears (see [`Route`]). A route that
    /// stays what it was keeps its pipeline (its stream goes on, no new
    /// SSRC, no filter starting from silence), unless `fresh`: the leg's format
    /// changed.
    fn reroute(&mut self, now: Instant, listener: LegKey, fresh: bool) {
        let Some(l) = self.legs.get(&listener) else {
            return;
        };
        let same = match (&l.route, single(&l.feeds)) {
            (Route::Leg { from, pipeline }, Some(FeedSource::Leg(f))) => {
                *from == f && pipeline.is_some()
            }
            (Route::Tone { tone, .. }, Some(FeedSource::Tone(t))) => *tone == t,
            (Route::Mixed { encoder }, None) => encoder.is_some() && !l.feeds.is_empty(),
            _ => false,
        };
        if same && !fresh {
            return;
        }
        if fresh {
            // A new format is a new stream.
            let ssrc = Ssrc(self.rng.next_u32());
            if let Some(l) = self.legs.get_mut(&listener) {
                l.ssrc = ssrc;
                l.ended = None;
            }
        } else {
            self.end_stream(now, listener);
        }
        let Some(l) = self.legs.get(&listener) else {
            return;
        };
        let route = match (single(&l.feeds), l.feeds.is_empty()) {
            (_, true) => Route::Nothing,
            (Some(FeedSource::Leg(from)), _) => {
                let src = self.legs.get(&from);
                let input = src.map(MLeg::endpoint);
                let from_sip = src.is_some_and(|s| matches!(s.kind, Kind::Rtp { .. }));
                let muted = src.is_some_and(|s| s.muted);
                let mut pipeline = input.and_then(|i| self.pipeline_to(listener, i, from_sip));
                if let Some(p) = pipeline.as_mut() {
                    p.set_muted(muted);
                }
                Route::Leg { from, pipeline }
            }
            (Some(FeedSource::Tone(tone)), _) => {
                let input = Endpoint::Pcm(SampleRate::HZ_8000);
                self.schedule_tick(now);
                Route::Tone {
                    tone,
                    generator: mix::tone_generator(tone, SampleRate::HZ_8000),
                    started: now,
                    pipeline: self.pipeline_to(listener, input, false),
                }
            }
            (None, false) => {
                let rate = self.mix.as_ref().map(Mix::rate);
                Route::Mixed {
                    encoder: rate.and_then(|r| self.pipeline_to(listener, Endpoint::Pcm(r), false)),
                }
            }
        };
        if let Some(l) = self.legs.get_mut(&listener) {
            l.route = route;
        }
    }

    /// The mix follows the graph: it exists while some listener is mixed, at the
    /// rate its legs need, with a slot for every mixed listener and every feed
    /// they hear, each listener's row set to its feeds.
    fn sync_mix(&mut self, now: Instant) {
        self.sync_record_sources();
        let mixed: Vec<LegKey> = self
            .legs
            .iter()
            .filter(|(_, l)| l.mixed())
            .map(|(k, _)| *k)
            .collect();
        let taps: Vec<(Slot, Vec<Feed>)> = self
            .recordings
            .values()
            .filter(|r| !r.stopped)
            .flat_map(|r| {
                (0..2u8)
                    .filter(|c| r.sources[*c as usize] == Source::Mix)
                    .map(move |c| (Slot::Tap(r.id, c), r.channels[c as usize].clone()))
            })
            .collect();
        if mixed.is_empty() && taps.is_empty() {
            self.mix = None;
            return;
        }
        let mut slots: Vec<Slot> = mixed.iter().map(|k| Slot::Leg(*k)).collect();
        slots.extend(taps.iter().map(|(s, _)| *s));
        let listeners = mixed
            .iter()
            .map(|k| self.legs[k].feeds.as_slice())
            .chain(taps.iter().map(|(_, f)| f.as_slice()));
        for feeds in listeners {
            for f in feeds {
                let s = match f.from {
                    FeedSource::Leg(src) if self.legs.contains_key(&src) => Slot::Leg(src),
                    FeedSource::Leg(_) => continue,
                    FeedSource::Tone(t) => Slot::Tone(t),
                };
                if !slots.contains(&s) {
                    slots.push(s);
                }
            }
        }
        let wide = slots.iter().any(|s| match s {
            Slot::Leg(k) => mix::wideband(self.legs[k].endpoint()),
            Slot::Tone(_) | Slot::Tap(..) => false,
        });
        let rate = if wide {
            SampleRate::HZ_16000
        } else {
            SampleRate::HZ_8000
        };
        if self.mix.as_ref().map(Mix::rate) != Some(rate) {
            // A new mix (or a new rate): every mixed listener's encoder too.
            self.mix = Mix::new(rate, self.cfg.max_mix);

            for k in &mixed {
                self.end_stream(now, *k);
                let enc = self.pipeline_to(*k, Endpoint::Pcm(rate), false);
                if let Some(l) = self.legs.get_mut(k) {
                    l.route = Route::Mixed { encoder: enc };
                }
            }
            self.schedule_tick(now);
        }
        let Some(m) = self.mix.as_mut() else {
            return;
        };
        m.set_slots(now, &slots);
        for s in &slots {
            let Some(i) = m.slot(*s) else { continue };
            match *s {
                Slot::Leg(k) => {
                    let l = &self.legs[&k];
                    m.set_row(l.mixed(), i, &l.feeds);
                    let heard = mixed
                        .iter()
                        .map(|x| self.legs[x].feeds.as_slice())
                        .chain(taps.iter().map(|(_, f)| f.as_slice()))
                        .any(|feeds| feeds.iter().any(|f| f.from == FeedSource::Leg(k)));
                    if heard {
                        m.ensure_decoder(k, l.endpoint(), &mut self.rng);
                    }
                }
                Slot::Tone(_) => m.set_row(false, i, &[]),
                Slot::Tap(..) => {
                    let feeds = taps
                        .iter()
                        .find(|(t, _)| t == s)
                        .map_or(&[][..], |(_, f)| f.as_slice());
                    m.set_row(true, i, feeds);
                }
            }
        }
        // A mixed listener whose encoder is missing (its leg came after the mix).
        for k in &mixed {
            if matches!(self.legs[k].route, Route::Mixed { encoder: None }) {
                let enc = self.pipeline_to(*k, Endpoint::Pcm(rate), false);
                if let Some(l) = self.legs.get_mut(k) {
                    l.route = Route::Mixed { encoder: enc };
                }
            }
        }
    }

    /// Where each recording channel is heard from: a channel that hears one
    /// leg as it comes, which a transcoding pipeline already decodes toward
    /// some listener (or a G.711 relay passes on), reads that pipeline's tap
    /// (no second decode, no copy of the packet); any other hears its slot of
    /// the mix. Pipelines are tapped exactly while read.
    fn sync_record_sources(&mut self) {
        let mut tapped: Vec<LegKey> = Vec::new();
        let plans: Vec<(RecordingId, [Source; 2])> = self
            .recordings
            .values()
            .filter(|r| !r.stopped)
            .map(|r| {
                let source = |feeds: &[Feed]| match single(feeds) {
                    _ if feeds.is_empty() => Source::Silent,
                    Some(FeedSource::Leg(k)) => self
                        .legs
                        .iter()
                        .find(|(_, l)| {
                            l.route.source_leg() == Some(k)
                                && matches!(l.kind, Kind::Rtp { .. } | Kind::WebRtc { .. })
                                && l.route.pipeline_ref().is_some_and(|p| p.can_tap())
                        })
                        .map_or(Source::Mix, |(l, _)| Source::Tap(*l)),
                    _ => Source::Mix,
                };
                (r.id, [source(&r.channels[0]), source(&r.channels[1])])
            })
            .collect();
        for (id, sources) in plans {
            for s in sources {
                if let Source::Tap(l) = s {
                    tapped.push(l);
                }
            }
            if let Some(r) = self.recordings.get_mut(&id) {
                r.sources = sources;
            }
        }
        for (k, l) in self.legs.iter_mut() {
            if let Some(p) = l.route.pipeline() {
                p.set_tap(tapped.contains(k));
            }
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
                    StreamEvent::Transfer { target, warm } => {
                        MediaEvent::StreamTransfer { leg, target, warm }
                    }
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

    /// A datagram on the RTCP port beside RTP port `port` (its port + 1) from
    /// `source`: the peer's reports (RFC 3550 6.4). RTCP keeps a quiet leg (on
    /// hold, muted) from the media timeout.
    pub fn handle_rtcp(&mut self, now: Instant, port: u16, source: SocketAddr, data: &[u8]) {
        let Some(&leg) = self.by_port.get(&port) else {
            return;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Kind::Rtp {
            signalled,
            latched,
            latch_from,
            rtcp,
            ..
        } = &mut l.kind
        else {
            return;
        };
        // Only from the peer's address (as its RTP is).
        if latched
            .or(*signalled)
            .is_some_and(|a| a.ip() != source.ip())
            && (latched.is_some() || *latch_from != Some(source.ip().to_canonical()))
        {
            self.stats.foreign_source += 1;
            return;
        }
        if !rtcp.on_rtcp(now, self.cfg.wall_clock_at_zero, source, data) {
            self.stats.rtcp_malformed += 1;
            return;
        }
        self.stats.rtcp_in += 1;
        if rtcp.bye.is_none() {
            // Reports keep a quiet leg alive; a BYE does not.
            l.last_rx = now;
            l.timed_out = false;
        }
        if let Some(q) = rtcp.quality
            && self.qualities.len() < 64
        {
            self.qualities.push_back((leg, q));
        }
    }

    /// What a peer's latest RTCP report said of a SIP leg.
    pub fn poll_quality(&mut self) -> Option<(LegKey, LegQuality)> {
        self.qualities.pop_front()
    }

    /// An RTP datagram on local port `port` from `source` (or RTCP, when the
    /// leg muxes them).
    pub fn handle_rtp(&mut self, now: Instant, port: u16, source: SocketAddr, data: BytesMut) {
        let Some(&leg) = self.by_port.get(&port) else {
            return;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Kind::Rtp {
            signalled,
            latched,
            latch_from,
            rtcp,
            ..
        } = &mut l.kind
        else {
            return;
        };
        // RFC 5761 section 4: a second byte of 192-223 is an RTCP packet type
        // (200-204), never a payload type of ours.
        if rtcp.muxed() && data.get(1).is_some_and(|b| (192..=223).contains(b)) {
            return self.handle_rtcp(now, port, source, &data);
        }
        match (*latched, *signalled) {
            (Some(a), _) if a != source => {
                self.stats.foreign_source += 1;
                return;
            }
            (Some(_), _) => {}
            (None, Some(s)) if s == source => *latched = Some(source),
            (None, Some(s))
                if s.ip() == source.ip()
                    || is_private(s.ip())
                    || *latch_from == Some(source.ip().to_canonical()) =>
            {
                *latched = Some(source)
            }
            (None, Some(_)) => {
                self.stats.foreign_source += 1;
                return;
            }
            (None, None) => *latched = Some(source),
        }
        match RtpHeader::parse(&data) {
            Ok(h) => rtcp.on_rtp(now, &h),
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        }
        self.stats.rtp_in += 1;
        self.stats.rtp_bytes_in += data.len() as u64;
        l.last_rx = now;
        l.timed_out = false;
        self.deliver(now, leg, data);
        if self.lazy_clock() {
            self.run_clock(now);
        }
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
        if self.lazy_clock() {
            self.run_clock(now);
        }
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

    /// Reports a DTMF digit from `from` once per event (a relay and the mix's
    /// decoder may both see it; the relay's report, which says it passed the
    /// event on, comes first).
    fn dtmf(&mut self, from: LegKey, digit: char, ts: RtpTimestamp, relayed: bool) {
        if self.dtmf_seen.insert(from, ts) == Some(ts) {
            return;
        }
        self.events.push_back(MediaEvent::Dtmf {
            leg: from,
            digit,
            relayed,
        });
    }

    /// Hands a packet from `from` to every leg it feeds directly, and to the
    /// mix's decoder of it.
    fn deliver(&mut self, now: Instant, from: LegKey, mut data: BytesMut) {
        let feeds = |l: &MLeg| l.route.source_leg() == Some(from);
        let n = self.legs.values().filter(|l| feeds(l)).count();
        let to_mix = self.mix.as_ref().is_some_and(|m| m.has_decoder(from));
        // Telephone-events are reported even when nothing is connected yet.
        if n == 0 && !to_mix {
            let te = self.legs.get(&from).and_then(MLeg::telephone_event);
            if let (Some(te), Ok(h)) = (te, RtpHeader::parse(&data))
                && h.payload_type == te
                && let Ok(ev) = media_core::dtmf::TelephoneEvent::parse(&data[h.payload_range()])
                && let Some(d) = ev.digit()
            {
                self.dtmf(from, d.as_char(), h.timestamp, false);
            }
            return;
        }
        // The mix's decoder takes a copy when a direct leg takes the buffer.
        if let Some(m) = self.mix.as_mut().filter(|_| to_mix) {
            let bytes = if n == 0 {
                data.split().freeze()
            } else {
                Bytes::copy_from_slice(&data)
            };
            if let Ok(pkt) = RtpPacket::parse(bytes) {
                m.handle_rtp(now, from, &pkt);
            }
        }
        // The last leg fed takes `data` itself (relayed in place, or parsed
        // without a copy); a fan-out copies for the legs before it.
        let mut i = 0;
        let mut found = Vec::new();
        for l in self.legs.values_mut().filter(|l| feeds(l)) {
            i += 1;
            let last = i == n;
            let held = l.held;
            let Route::Leg {
                pipeline: Some(p), ..
            } = &mut l.route
            else {
                continue;
            };
            if p.is_relay() {
                self.stats.relayed += 1;
            } else {
                self.stats.transcoded += 1;
            }
            if p.is_relay() && last {
                if let Ok(Some(len)) = p.relay_in_place(now, &mut data) {
                    let pkt = Packet::Owned(data.split_to(len).freeze());
                    self.out.send(&mut self.stats, now, held, &mut l.kind, pkt);
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
                if let PipelineEvent::Dtmf { digit, timestamp } = ev {
                    found.push((digit.as_char(), timestamp, relayed));
                }
            }
        }
        for (digit, ts, relayed) in found {
            self.dtmf(from, digit, ts, relayed);
        }
        let mixed: Vec<(LegKey, PipelineEvent)> = self
            .mix
            .as_mut()
            .map(|m| std::mem::take(&mut m.events))
            .unwrap_or_default();
        for (k, ev) in mixed {
            if let PipelineEvent::Dtmf { digit, timestamp } = ev {
                self.dtmf(k, digit.as_char(), timestamp, false);
            }
        }
    }

    /// Moves pipeline output to the wire.
    fn drain(&mut self, now: Instant) {
        let mut found = Vec::new();
        for (k, l) in self.legs.iter_mut() {
            let from = l.route.source_leg();
            if let Some(p) = l.route.pipeline() {
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
                while let Some(ev) = p.poll_event() {
                    if let (PipelineEvent::Dtmf { digit, timestamp }, Some(from)) = (ev, from) {
                        found.push((from, digit.as_char(), timestamp, relayed));
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
        for (from, digit, ts, relayed) in found {
            self.dtmf(from, digit, ts, relayed);
        }
    }

    fn schedule_tick(&mut self, now: Instant) {
        if self.next_tick.is_none() {
            self.next_tick = Some(now + FRAME);
        }
    }

    /// When [`MediaSession::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // A clock that only feeds recordings from taps runs on the packets
        // that come anyway (each input runs the ticks due); its timer is only
        // a fallback for silence: no wake-up per call every 20 ms.
        let lazy = self.lazy_clock();
        let mut t = self.next_tick.map(|t| if lazy { t + LAZY } else { t });
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for l in self.legs.values() {
            min(l.route.pipeline_ref().and_then(|p| p.poll_timeout()));
            if let Kind::WebRtc { leg, .. } = &l.kind {
                min(leg.poll_timeout());
            }
            if matches!(l.kind, Kind::Rtp { .. })
                && !matches!(l.route, Route::Nothing)
                && !l.held
                && !l.timed_out
            {
                min(Some(l.silence_deadline(self.cfg.media_timeout)));
            }
            if let Kind::Rtp {
                rtcp,
                signalled,
                latched,
                ..
            } = &l.kind
                && rtcp.destination(latched.or(*signalled)).is_some()
            {
                min(Some(rtcp.next_report));
            }
        }
        t
    }

    /// Runs timers: jitter-buffer playout, the call clock's tick (tones,
    /// agents' paced audio, the mix), WebRTC, media timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Leg by leg in key order without a list of keys (that was an
        // allocation every 20 ms in every call with a jitter buffer or a mix):
        // `webrtc_events` needs the whole session.
        let mut cursor = self.legs.keys().next().copied();
        while let Some(k) = cursor {
            if let Some(l) = self.legs.get_mut(&k) {
                if let Some(p) = l.route.pipeline()
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
                    && !matches!(l.route, Route::Nothing)
                    && !l.held
                    && !l.timed_out
                    && now >= l.silence_deadline(self.cfg.media_timeout)
                {
                    l.timed_out = true;
                    self.events.push_back(MediaEvent::MediaTimeout { leg: k });
                }
                if let Kind::Rtp {
                    port,
                    signalled,
                    latched,
                    rtcp,
                    ..
                } = &mut l.kind
                    && now >= rtcp.next_report
                    && let Some(to) = rtcp.destination(latched.or(*signalled))
                {
                    rtcp.report(
                        now,
                        self.cfg.wall_clock_at_zero,
                        &self.cfg.cname,
                        &mut self.rng,
                        &mut self.rtcp_buf,
                    );
                    self.rtcp_arena.reserve(self.rtcp_buf.len());
                    self.rtcp_arena.extend_from_slice(&self.rtcp_buf);
                    let bytes = self.rtcp_arena.split().freeze();
                    self.stats.rtcp_out += 1;
                    let via = if rtcp.muxed() {
                        Via::Rtp(*port)
                    } else {
                        Via::Rtcp(*port)
                    };
                    self.out.queue.push_back(MediaTransmit { via, to, bytes });
                }
            }
            self.webrtc_events(now, k);
            cursor = self
                .legs
                .range((Bound::Excluded(k), Bound::Unbounded))
                .next()
                .map(|(k, _)| *k);
        }
        self.run_clock(now);
        self.drain(now);
    }

    /// Runs the call clock's ticks that are due. On schedule from when each
    /// was due, not from when the driver woke (timers fire late; counting
    /// from the wake-up drifts); up to [`CATCH_UP`] late ticks are run at
    /// once (a recording keeps every frame), beyond that the clock jumps.
    fn run_clock(&mut self, now: Instant) {
        let mut ran = 0;
        while let Some(due) = self.next_tick.filter(|t| *t <= now) {
            self.next_tick = None;
            if !self.tick(due) {
                return;
            }
            ran += 1;
            let mut next = due + FRAME;
            if ran >= CATCH_UP && next <= now {
                next = now + FRAME;
            }
            self.next_tick = Some(next);
        }
    }

    /// Whether the clock ticks only for recordings that read taps: nothing
    /// is sent on a tick, so packets may drive it (see [`Self::poll_timeout`]).
    fn lazy_clock(&self) -> bool {
        self.mix.is_none()
            && !self.recordings.is_empty()
            && self.legs.values().all(|l| {
                !matches!(l.route, Route::Tone { .. } | Route::Mixed { .. })
                    && !matches!(
                        l.kind,
                        Kind::Stream {
                            connected: true,
                            ..
                        }
                    )
            })
    }

    /// One 20 ms tick of the call clock: direct tones, each agent's paced
    /// frame, and the mix. Returns whether anything still needs the clock.
    fn tick(&mut self, now: Instant) -> bool {
        let mut any = self.mix.is_some() || !self.recordings.is_empty();
        for l in self.legs.values_mut() {
            let Route::Tone {
                tone,
                generator,
                started,
                pipeline,
            } = &mut l.route
            else {
                continue;
            };
            any = true;
            let frame = &mut self.pcm[..(TONE_RATE / 50) as usize];
            generator.fill(frame);
            let ms = now.saturating_duration_since(*started).as_millis() as u64;
            if !tone.sounds_at(ms) {
                frame.fill(0);
            }
            if let Some(p) = pipeline.as_mut() {
                let _ = p.handle_pcm(now, frame);
            }
        }
        // Each connected agent plays one 20 ms frame (or silence) to the legs
        // it feeds directly and to the mix: pacing, whatever the agent's bursts.
        let agents: Vec<LegKey> = self
            .legs
            .iter()
            .filter(|(_, l)| {
                matches!(
                    l.kind,
                    Kind::Stream {
                        connected: true,
                        ..
                    }
                )
            })
            .map(|(k, _)| *k)
            .collect();
        for k in agents {
            any = true;
            let Some(l) = self.legs.get_mut(&k) else {
                continue;
            };
            let Kind::Stream { leg: st, .. } = &mut l.kind else {
                continue;
            };
            let n = st.format().frame_samples();
            let muted = l.muted;
            let frame = &mut self.pcm[..n];
            st.next_frame(frame);
            if muted {
                frame.fill(0);
            }
            for l in self.legs.values_mut() {
                if l.route.source_leg() == Some(k)
                    && let Some(p) = l.route.pipeline()
                {
                    let _ = p.handle_pcm(now, frame);
                }
            }
            if let Some(m) = self.mix.as_mut() {
                m.handle_pcm(now, k, frame);
            }
        }
        if let Some(m) = self.mix.as_mut() {
            let legs = &self.legs;
            // A leg already gone still gives its last audio while it fades out.
            m.tick(now, &|k| legs.get(&k).is_some_and(|l| l.muted));
            self.stats.mix_ticks += 1;
            for (k, l) in self.legs.iter_mut() {
                let Route::Mixed { encoder: Some(e) } = &mut l.route else {
                    continue;
                };
                if let Some(slot) = m.slot(Slot::Leg(*k)) {
                    self.stats.mix_encodes += u64::from(m.deliver(now, slot, e));
                }
            }
        }
        // Every recording gets its frame of this tick, heard or not: each
        // tapped pipeline gives one frame, read by whoever records it.
        if !self.recordings.is_empty() {
            for (k, l) in self.legs.iter_mut() {
                let Some(p) = l.route.pipeline() else {
                    continue;
                };
                let Some(rate) = p.tap_rate() else {
                    continue;
                };
                let buf = self
                    .tapped
                    .entry(*k)
                    .or_insert_with(|| (vec![0; 960], None));
                buf.1 = p.pop_tap(&mut buf.0).filter(|got| *got).map(|_| rate);
            }
        }
        let mix = self.mix.as_ref();
        let tapped = &self.tapped;
        for r in self.recordings.values_mut() {
            let ch = |c: usize| match r.sources[c] {
                Source::Silent => None,
                Source::Mix => mix.and_then(|m| {
                    let i = m.slot(Slot::Tap(r.id, c as u8))?;
                    Some((m.output(i)?, m.rate()))
                }),
                Source::Tap(l) => tapped.get(&l).and_then(|(pcm, rate)| {
                    rate.map(|rate| (&pcm[..(rate.hz() / 50) as usize], rate))
                }),
            };
            let frame = [ch(0), ch(1)];
            if r.tick(frame) {
                self.rec_out.push_back(RecordOut::Frame {
                    id: r.id,
                    samples: 0,
                });
            }
        }
        any
    }

    // ----- output -----

    /// What the call's recordings give next, in order: a start, a frame (its
    /// samples written into `pcm`, which holds [`RECORD_FRAME_MAX`]), a
    /// timeline note, a stop.
    pub fn poll_record(&mut self, pcm: &mut [i16]) -> Option<RecordOut> {
        let mut out = self.rec_out.pop_front()?;
        match &mut out {
            RecordOut::Frame { id, samples } => {
                let r = self.recordings.get_mut(id)?;
                *samples = r.pop(pcm).unwrap_or(0);
                if r.stopped && !r.has_frames() {
                    self.recordings.remove(id);
                }
            }
            RecordOut::Stopped { id, .. }
                if self.recordings.get(id).is_some_and(|r| !r.has_frames()) =>
            {
                self.recordings.remove(id);
            }
            _ => {}
        }
        Some(out)
    }

    /// Recordings still taking frames.
    pub fn recordings(&self) -> usize {
        self.recordings.values().filter(|r| !r.stopped).count()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<MediaTransmit> {
        let t = self.out.queue.pop_front();
        if self.out.queue.is_empty() {
            self.out.drained = true;
        }
        t
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
                rtcp_mux: false,
                latch_from: None,
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
                let p = s.legs[&LegKey(leg)].route.pipeline_ref().unwrap();
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
                .route
                .pipeline_ref()
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
                .route
                .pipeline_ref()
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
                rtcp_mux: false,
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
                rtcp_mux: false,
                latch_from: None,
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
    fn a_phone_behind_nat_latches_to_its_sip_address_not_a_wrong_public_sdp() {
        // Its SDP names a public-looking address it never sends from; its SIP
        // came from 203.0.113.7 (the NAT's outside).
        let sdp: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        let nat: SocketAddr = "203.0.113.7:61000".parse().unwrap();
        for latch_from in [None, Some(nat.ip())] {
            let mut s = MediaSession::new(MediaConfig::new(None, 1));
            for (leg, port, remote, latch_from) in [
                (0, 20000, sdp, latch_from),
                (1, 20002, "198.51.100.9:4000".parse().unwrap(), None),
            ] {
                let cmd = MediaCommand::AddRtp {
                    leg: LegKey(leg),
                    local_port: port,
                    remote: Some(remote),
                    format: pcmu(),
                    rtcp_mux: false,
                    latch_from,
                };
                s.handle_command(Instant::ZERO, cmd);
            }
            for cmd in MediaCommand::connect(LegKey(0), LegKey(1)) {
                s.handle_command(Instant::ZERO, cmd);
            }
            // A stray from elsewhere first: never taken.
            let stray: SocketAddr = "192.0.2.66:5000".parse().unwrap();
            s.handle_rtp(Instant::ZERO, 20000, stray, packet(1));
            assert!(sent(&mut s).is_empty());
            s.handle_rtp(Instant::ZERO, 20000, nat, packet(2));
            let through = sent(&mut s);
            if latch_from.is_none() {
                // Strict (a carrier's rule): not from where it said.
                assert!(through.is_empty());
                assert_eq!(s.stats().foreign_source, 2);
                continue;
            }
            assert_eq!(through.len(), 1, "the phone's audio goes through");
            // The far end's audio goes back through the NAT, not to the SDP.
            s.handle_rtp(
                Instant::ZERO,
                20002,
                "198.51.100.9:4000".parse().unwrap(),
                packet(1),
            );
            assert_eq!(sent(&mut s)[0].to, nat);
            // Latched: the stray stays out, another port of the NAT too.
            s.handle_rtp(Instant::ZERO, 20000, stray, packet(3));
            let other: SocketAddr = "203.0.113.7:61002".parse().unwrap();
            s.handle_rtp(Instant::ZERO, 20000, other, packet(4));
            assert!(sent(&mut s).is_empty());
        }
    }

    #[test]
    fn rtcp_muxed_on_the_rtp_port_and_a_bye_shortens_the_media_timeout() {
        let peer: SocketAddr = "203.0.113.5:30000".parse().unwrap();
        let mut s = two_legs(Some(peer));
        // a=rtcp-mux agreed (RFC 5761): reports both ways on the RTP port.
        s.handle_command(
            Instant::ZERO,
            MediaCommand::UpdateRtp {
                leg: LegKey(0),
                remote: Some(peer),
                format: pcmu(),
                rtcp_mux: true,
            },
        );
        s.handle_rtp(Instant::ZERO, 20000, peer, packet(1));
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 5];
        s.handle_rtp(
            Instant::from_millis(100),
            20000,
            peer,
            BytesMut::from(&rr[..]),
        );
        assert_eq!(
            (s.stats().rtcp_in, s.stats().rtp_in),
            (1, 1),
            "read as RTCP"
        );
        let _ = sent(&mut s);
        while let Some(t) = s
            .poll_timeout()
            .filter(|t| *t <= Instant::from_millis(8_000))
        {
            s.handle_timeout(t);
        }
        let reports: Vec<MediaTransmit> = sent(&mut s)
            .into_iter()
            .filter(|t| t.to == peer && t.bytes.get(1).is_some_and(|b| (200..=204).contains(b)))
            .collect();
        assert!(!reports.is_empty());
        assert!(
            reports.iter().all(|t| t.via == Via::Rtp(20000)),
            "{reports:?}"
        );
        // Its BYE for SSRC 5 (RTCP only, no RTP since): the timeout comes
        // 3 s later instead of 60 s after the last packet.
        let bye = [0x81u8, 203, 0, 1, 0, 0, 0, 5];
        s.handle_rtp(
            Instant::from_millis(10_000),
            20000,
            peer,
            BytesMut::from(&bye[..]),
        );
        let mut timed_out = None;
        while let Some(t) = s
            .poll_timeout()
            .filter(|t| *t <= Instant::from_millis(70_000))
        {
            s.handle_timeout(t);
            if std::iter::from_fn(|| s.poll_event())
                .any(|e| e == MediaEvent::MediaTimeout { leg: LegKey(0) })
            {
                timed_out = Some(t);
                break;
            }
        }
        assert_eq!(timed_out, Some(Instant::from_millis(13_000)));
        // A BYE followed by RTP (a new SSRC) is no end: the full timeout again.
        let mut s = two_legs(Some(peer));
        s.handle_rtcp(
            Instant::ZERO,
            20000,
            "203.0.113.5:30001".parse().unwrap(),
            &bye,
        );
        s.handle_rtp(Instant::from_millis(1_000), 20000, peer, packet(2));
        let next = s.poll_timeout().unwrap();
        assert!(next > Instant::from_millis(3_000));
        assert_eq!(
            s.legs[&LegKey(0)].silence_deadline(Duration::from_secs(60)),
            Instant::from_millis(61_000)
        );
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
        // RTCP reports go out meanwhile (to the RTP port + 1); the timeout
        // comes 60 s after the last packet.
        let timeout_at = |s: &mut MediaSession| {
            while let Some(t) = s
                .poll_timeout()
                .filter(|t| *t <= Instant::from_millis(200_000))
            {
                s.handle_timeout(t);
                if std::iter::from_fn(|| s.poll_event())
                    .any(|e| e == MediaEvent::MediaTimeout { leg: LegKey(0) })
                {
                    return Some(t);
                }
            }
            None
        };
        assert_eq!(timeout_at(&mut s), Some(Instant::from_millis(60_000)));
        let rtcp: Vec<MediaTransmit> = std::iter::from_fn(|| s.poll_transmit())
            .filter(|t| t.via == Via::Rtcp(20000))
            .collect();
        assert!(
            (8..=24).contains(&rtcp.len()),
            "{} reports in 60 s",
            rtcp.len()
        );
        assert!(
            rtcp.iter()
                .all(|t| t.to == "203.0.113.5:30001".parse().unwrap())
        );
        // A peer that only sends RTCP (muted, on hold) is not timed out: its
        // reports keep the leg alive.
        let mut s = two_legs(Some("203.0.113.5:30000".parse().unwrap()));
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 5];
        s.handle_rtcp(
            Instant::from_millis(50_000),
            20000,
            "203.0.113.5:30001".parse().unwrap(),
            &rr,
        );
        assert_eq!(s.stats().rtcp_in, 1);
        assert_eq!(timeout_at(&mut s), Some(Instant::from_millis(110_000)));
        // Not RTCP, or from elsewhere: counted and ignored.
        s.handle_rtcp(
            Instant::ZERO,
            20000,
            "203.0.113.5:30001".parse().unwrap(),
            b"junk",
        );
        s.handle_rtcp(
            Instant::ZERO,
            20000,
            "198.51.100.1:30001".parse().unwrap(),
            &rr,
        );
        assert_eq!((s.stats().rtcp_in, s.stats().rtcp_malformed), (1, 1));
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
