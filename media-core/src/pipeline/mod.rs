//! The media path of one call direction:
//!
//! ```text
//! RTP in -> depacketize -> decode (PLC/FEC on gaps) -> resample -> reframe to 20 ms
//!        -> encode -> packetize (own SSRC/seq/timestamp) -> RTP out
//! ```
//!
//! or, when both sides use the same codec and packetization, a **relay** that
//! rewrites the RTP header in place and never touches the payload. Either end can
//! also be raw PCM (an AI agent's 24 kHz stream).
//!
//! One pipeline per direction, owned by its call. It is sans-IO: packets go in with
//! `handle_*`, packets and events come out with `poll_*`. All buffers are allocated
//! when it is built; in steady state it allocates nothing per packet.

mod encoder;
mod fifo;
mod relay;
mod tap;
mod transcode;

pub use encoder::{EncoderKey, FrameEncoder};

use std::collections::VecDeque;

use crate::codec::{Codec, CodecError, OpusEncoderConfig, OpusFmtp};
use crate::dtmf::{Digit, DtmfError, DtmfReceiver, TelephoneEvent};
use crate::jitter::{JitterConfig, JitterStats};
use crate::rtp::{PayloadType, RtpError, RtpPacket, RtpTimestamp, Ssrc};
use crate::time::{Instant, Millis, SampleRate, SeededRng};

use relay::Relay;
use transcode::Transcode;

/// Frame duration the pipeline emits.
pub const OUTPUT_PTIME: Millis = Millis(20);

/// How an RTP side of the pipeline is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpFormat {
    /// Audio codec.
    pub codec: Codec,
    /// Its negotiated payload type.
    pub payload_type: PayloadType,
    /// The negotiated telephone-event payload type (RFC 4733), if any.
    pub telephone_event: Option<PayloadType>,
    /// Packetization time: expected on input, produced on output.
    pub ptime: Millis,
    /// For Opus output, what the receiver's SDP `fmtp` asks of the encoder
    /// (FEC, DTX, a bitrate cap); `None` when unknown: the configured encoder as is.
    pub opus: Option<OpusFmtp>,
}

impl RtpFormat {
    /// `codec` on its static or a dynamic PT, 20 ms, no telephone-event.
    pub fn new(codec: Codec, payload_type: PayloadType) -> Self {
        RtpFormat {
            codec,
            payload_type,
            telephone_event: None,
            ptime: Millis(20),
            opus: None,
        }
    }
}

/// One end of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// RTP in a codec.
    Rtp(RtpFormat),
    /// Linear 16-bit mono PCM at a rate, in 20 ms frames.
    Pcm(SampleRate),
}

/// What a pipeline is built from.
#[derive(Clone, Copy, Debug)]
pub struct PipelineConfig {
    /// What arrives.
    pub input: Endpoint,
    /// What leaves.
    pub output: Endpoint,
    /// Our SSRC on the output.
    pub ssrc: Ssrc,
    /// Seeds the random initial sequence number and timestamp (RFC 3550 section 5.1).
    pub seed: u64,
    /// Opus encoder settings when the output is Opus (its rate is chosen here).
    pub opus: OpusEncoderConfig,
    /// Play RTP input out through an adaptive jitter buffer (its clock rate is
    /// taken from the input codec). Without it, packets are decoded on arrival
    /// and their timing is carried through, for a far end that buffers itself.
    /// Relay pipelines never buffer.
    pub jitter: Option<JitterConfig>,
    /// The first output sequence number and timestamp, continuing a stream
    /// of the same SSRC that an earlier pipeline sent (a receiver sees one
    /// stream whatever feeds it); `None`: random (RFC 3550 section 5.1).
    pub start: Option<(u16, u32)>,
    /// The instant `start`'s timestamp stands for: when the first input comes
    /// later, the first timestamp moves on by the difference, so the stream's
    /// timeline keeps the whole gap.
    pub start_at: Option<Instant>,
}

impl PipelineConfig {
    /// `input` to `output` with default Opus settings.
    pub fn new(input: Endpoint, output: Endpoint, ssrc: Ssrc, seed: u64) -> Self {
        PipelineConfig {
            input,
            output,
            ssrc,
            seed,
            opus: OpusEncoderConfig::default(),
            jitter: None,
            start: None,
            start_at: None,
        }
    }
}

/// Pipeline errors. `Rtp` and `Codec(Malformed)` are the peer's doing and only cost
/// the packet; the rest are caller misuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The packet is not valid RTP.
    #[error("bad RTP: {0}")]
    Rtp(#[from] RtpError),
    /// A codec failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// DTMF request refused.
    #[error(transparent)]
    Dtmf(#[from] DtmfError),
    /// The call does not fit this pipeline (e.g. RTP handed to a PCM input).
    #[error("wrong input for this pipeline: {0}")]
    WrongInput(&'static str),
}

/// Something the pipeline noticed, for its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineEvent {
    /// A DTMF digit began (RFC 4733 telephone-event from the input).
    Dtmf {
        /// The digit.
        digit: Digit,
        /// The event's RTP timestamp on the input.
        timestamp: RtpTimestamp,
    },
    /// The input switched to a new SSRC.
    SourceChanged {
        /// The new source.
        ssrc: Ssrc,
    },
}

/// Counters for one pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// RTP packets accepted on input (audio and events).
    pub packets_in: u64,
    /// Payload bytes accepted on input.
    pub bytes_in: u64,
    /// Packets produced.
    pub packets_out: u64,
    /// Bytes produced (whole packets).
    pub bytes_out: u64,
    /// Input packets inferred lost from sequence gaps.
    pub lost: u64,
    /// Packets that arrived after a later one had been played (dropped).
    pub late: u64,
    /// Packets that were not valid RTP.
    pub malformed: u64,
    /// Payloads the decoder refused (concealed instead).
    pub decode_errors: u64,
    /// Packets with a payload type not negotiated for this stream.
    pub unknown_payload_type: u64,
    /// Milliseconds of audio synthesised by PLC.
    pub concealed_ms: u64,
    /// Frames rebuilt from Opus in-band FEC.
    pub fec_recovered: u64,
    /// Frames or packets dropped because the consumer did not poll.
    pub overflow_drops: u64,
    /// DTMF events received.
    pub dtmf_received: u64,
    /// Telephone-event packets sent.
    pub dtmf_packets_sent: u64,
    /// Times the jitter-buffered output paused (a stall waited out) and its
    /// timestamps jumped across the pause.
    pub playout_pauses: u64,
}

/// A processed outgoing RTP packet, borrowed from the pipeline until the next call.
#[derive(Debug)]
pub struct OutPacket<'a> {
    /// The whole packet.
    pub bytes: &'a [u8],
}

#[derive(Debug)]
// One per call direction, built once: keeping both inline costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Mode {
    Relay(Relay),
    Transcode(Transcode),
}

/// One direction of media. See the module docs.
#[derive(Debug)]
pub struct MediaPipeline {
    mode: Mode,
    stats: PipelineStats,
    events: VecDeque<PipelineEvent>,
    last_input: Option<Instant>,
    /// Until the first input: the instant its start timestamp stands for,
    /// and the output's clock rate ([`PipelineConfig::start_at`]).
    pending_start: Option<(Instant, u32)>,
}

const MAX_EVENTS: usize = 16;

impl MediaPipeline {
    /// Builds the pipeline, relaying when input and output are the same RTP format.
    pub fn new(config: PipelineConfig) -> Result<Self, PipelineError> {
        let mut rng = SeededRng::new(config.seed);
        let (seq, ts) = config
            .start
            .unwrap_or_else(|| (rng.next_u32() as u16, rng.next_u32()));
        let mode = match (config.input, config.output) {
            (Endpoint::Rtp(i), Endpoint::Rtp(o)) if i.codec == o.codec && i.ptime == o.ptime => {
                Mode::Relay(Relay::new(i, o, config.ssrc, seq, ts))
            }
            _ => Mode::Transcode(Transcode::new(&config, seq, ts)?),
        };
        let pending_start = match (config.start.and(config.start_at), config.output) {
            (Some(at), Endpoint::Rtp(f)) => Some((at, f.codec.clock_rate().0)),
            _ => None,
        };
        Ok(MediaPipeline {
            mode,
            stats: PipelineStats::default(),
            events: VecDeque::with_capacity(MAX_EVENTS),
            last_input: None,
            pending_start,
        })
    }

    /// The first input: the start timestamp moves on by the time since the
    /// instant it stood for.
    fn stamp_start(&mut self, now: Instant) {
        let Some((at, rate)) = self.pending_start.take() else {
            return;
        };
        if self.stats.packets_out > 0 {
            return;
        }
        let us = now.saturating_duration_since(at).as_micros() as u64;
        let ticks = (us * u64::from(rate) / 1_000_000) as u32;
        match &mut self.mode {
            Mode::Relay(r) => r.shift_start(ticks),
            Mode::Transcode(t) => t.shift_start(ticks),
        }
    }

    /// The settings of the Opus encoder producing the output, if there is one
    /// (after the receiver's `fmtp` narrowed them).
    pub fn opus_encoder(&self) -> Option<&OpusEncoderConfig> {
        match &self.mode {
            Mode::Relay(_) => None,
            Mode::Transcode(t) => t.opus_encoder(),
        }
    }

    /// Starts copying every 20 ms frame this pipeline passes on (after mute)
    /// for a reader on the call clock, or stops (`false`): a transcoder's
    /// encoded frames, a G.711 relay's payloads decoded. Frames are read with
    /// [`Self::pop_tap`]; see [`Self::can_tap`].
    pub fn set_tap(&mut self, on: bool) {
        match &mut self.mode {
            Mode::Relay(r) => r.set_tap(on),
            Mode::Transcode(t) => t.set_tap(on),
        }
    }

    /// Whether it can be tapped: a transcoder, or a relay of G.711 (an Opus
    /// relay would need a decoder of its own: the call's mix has one).
    pub fn can_tap(&self) -> bool {
        match &self.mode {
            Mode::Relay(r) => r.can_tap(),
            Mode::Transcode(_) => true,
        }
    }

    /// The rate of the tapped frames, while tapped.
    pub fn tap_rate(&self) -> Option<SampleRate> {
        match &self.mode {
            Mode::Relay(r) => r.tapped().then_some(SampleRate::HZ_8000),
            Mode::Transcode(t) => t.tap_rate(),
        }
    }

    /// One tick's frame of the tap into `out` (at least a frame long):
    /// `Some(true)` audio, `Some(false)` silence (the tap is building its
    /// one-frame cushion against arrival jitter, or ran dry), `None` untapped.
    pub fn pop_tap(&mut self, out: &mut [i16]) -> Option<bool> {
        match &mut self.mode {
            Mode::Relay(r) => r.pop_tap(out),
            Mode::Transcode(t) => t.pop_tap(out),
        }
    }

    /// The sequence number and timestamp its next packet would carry, once
    /// it sent one: where a pipeline that takes over its stream starts
    /// ([`PipelineConfig::start`]).
    pub fn next_output(&self) -> Option<(u16, u32)> {
        if self.stats.packets_out == 0 {
            return None;
        }
        match &self.mode {
            Mode::Relay(r) => r.next_output(),
            Mode::Transcode(t) => t.next_output(),
        }
    }

    /// Whether this pipeline relays without decoding.
    pub fn is_relay(&self) -> bool {
        matches!(self.mode, Mode::Relay(_))
    }

    /// The delay the pipeline's signal processing adds (resampling filter and codec
    /// lookahead), not counting framing or buffering. Zero for a relay.
    pub fn algorithmic_delay(&self) -> std::time::Duration {
        match &self.mode {
            Mode::Relay(_) => std::time::Duration::ZERO,
            Mode::Transcode(t) => std::time::Duration::from_micros(t.delay_micros()),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// When input last arrived (for media timeouts).
    pub fn last_input(&self) -> Option<Instant> {
        self.last_input
    }

    /// Mutes the output: silence is sent in place of the input's audio (the far end
    /// keeps receiving a live stream).
    pub fn set_muted(&mut self, muted: bool) {
        match &mut self.mode {
            Mode::Relay(r) => r.muted = muted,
            Mode::Transcode(t) => t.set_muted(muted),
        }
    }

    /// Queues DTMF digits to send as RFC 4733 events on the output, each lasting
    /// `duration`. Fails if the output has no telephone-event payload type.
    pub fn send_dtmf(&mut self, digits: &str, duration: Millis) -> Result<(), PipelineError> {
        let sender = match &mut self.mode {
            Mode::Relay(r) => r.dtmf_sender(),
            Mode::Transcode(t) => t.dtmf_sender(),
        };
        sender
            .ok_or(PipelineError::WrongInput("output has no telephone-event"))?
            .enqueue(digits, duration)?;
        Ok(())
    }

    /// Relay path: rewrites the RTP packet in `buf` in place for the output (our
    /// SSRC, continuous sequence and timestamp, output payload type) and returns
    /// the length to send, or `None` if it is to be dropped. The payload is not
    /// copied. Only for relay pipelines (see [`MediaPipeline::is_relay`]).
    pub fn relay_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Option<usize>, PipelineError> {
        self.stamp_start(now);
        let Mode::Relay(r) = &mut self.mode else {
            return Err(PipelineError::WrongInput(
                "relay_in_place on a transcoding pipeline",
            ));
        };
        let res = r.relay(buf, &mut self.stats, &mut self.events);
        if res.is_ok() {
            self.last_input = Some(now);
        } else {
            self.stats.malformed += 1;
        }
        res
    }

    /// Transcoding path: takes one received RTP packet. Output is ready to poll
    /// right after. A relay pipeline takes this too (the packet is copied once).
    pub fn handle_rtp(&mut self, now: Instant, packet: &RtpPacket) -> Result<(), PipelineError> {
        self.stamp_start(now);
        self.last_input = Some(now);
        match &mut self.mode {
            Mode::Transcode(t) => t.handle_rtp(now, packet, &mut self.stats, &mut self.events),
            Mode::Relay(r) => r.handle_copy(packet, &mut self.stats, &mut self.events),
        }
    }

    /// When [`MediaPipeline::handle_timeout`] is next due (jitter-buffered
    /// pipelines: the buffer's playout clock). Ask again after every input.
    /// `None` for a buffer on an external clock: that is driven by
    /// [`MediaPipeline::tick`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Transcode(t) => t.poll_timeout(),
            Mode::Relay(_) => None,
        }
    }

    /// Plays out the frames due by `now` (jitter-buffered pipelines on the
    /// buffer's own clock); their packets or PCM frames are then ready to poll.
    /// Does nothing on an external clock (see [`MediaPipeline::tick`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Mode::Transcode(t) = &mut self.mode {
            t.handle_timeout(now, &mut self.stats);
        }
    }

    /// Plays out exactly one 20 ms frame at `now`, for a pipeline whose jitter
    /// buffer runs on an external clock ([`JitterConfig::external_clock`]): a
    /// call clock that ticks every 20 ms whatever the sender does, as a mixer
    /// needs (one frame per source per tick). The buffer decodes, conceals,
    /// plays silence or time-stretches as it decides, so with a PCM output
    /// [`MediaPipeline::poll_frame`] then yields exactly one frame at the output
    /// rate (with an RTP output, one packet's worth is encoded). Unlike
    /// [`MediaPipeline::poll_timeout`]/[`MediaPipeline::handle_timeout`], where
    /// the buffer's own clock says when (and moves by up to 2 ms a frame to
    /// follow its target delay), here the caller's clock says when and the
    /// buffer keeps its delay on target by stretching the audio alone.
    ///
    /// Fails (`WrongInput`) on a pipeline without a jitter buffer or with one on
    /// its own clock.
    pub fn tick(&mut self, now: Instant) -> Result<(), PipelineError> {
        self.stamp_start(now);
        match &mut self.mode {
            Mode::Transcode(t) => t.tick(now, &mut self.stats),
            Mode::Relay(_) => Err(PipelineError::WrongInput("tick on a relay")),
        }
    }

    /// Packetizes one 20 ms `payload` encoded elsewhere (by a [`FrameEncoder`]
    /// whose [`FrameEncoder::key`] equals this pipeline's
    /// [`MediaPipeline::encoder_key`]) as the next frame of this PCM-input,
    /// RTP-output pipeline: its own SSRC, sequence number, timestamp and payload
    /// type. Everything else is as for a frame it encoded itself: queued DTMF
    /// replaces the audio, an Opus DTX payload (2 bytes or less) is not sent and
    /// the next packet gets the marker, and a muted pipeline sends its own
    /// silence. The packet is then ready to poll.
    ///
    /// A frame given here and one given to [`MediaPipeline::handle_pcm`] each
    /// advance the stream by 20 ms, so a listener can move between a shared
    /// encoder and its own from one tick to the next (give `handle_pcm` whole
    /// frames, so nothing waits in its FIFO).
    pub fn handle_encoded(&mut self, now: Instant, payload: &[u8]) -> Result<(), PipelineError> {
        self.stamp_start(now);
        let Mode::Transcode(t) = &mut self.mode else {
            return Err(PipelineError::WrongInput("encoded audio into a relay"));
        };
        t.handle_encoded(payload, &mut self.stats)?;
        self.last_input = Some(now);
        Ok(())
    }

    /// The jitter buffer's counters and delays, for jitter-buffered pipelines.
    pub fn jitter_stats(&self) -> Option<&JitterStats> {
        match &self.mode {
            Mode::Transcode(t) => t.jitter_stats(),
            Mode::Relay(_) => None,
        }
    }

    /// Takes PCM at the input rate (PCM-input pipelines only), any length.
    pub fn handle_pcm(&mut self, now: Instant, pcm: &[i16]) -> Result<(), PipelineError> {
        self.stamp_start(now);
        let Mode::Transcode(t) = &mut self.mode else {
            return Err(PipelineError::WrongInput("PCM into a relay"));
        };
        self.last_input = Some(now);
        t.handle_pcm(pcm, &mut self.stats)
    }

    /// The next outgoing RTP packet, if any.
    pub fn poll_packet(&mut self) -> Option<OutPacket<'_>> {
        let ring = match &mut self.mode {
            Mode::Relay(r) => &mut r.ring,
            Mode::Transcode(t) => t.ring()?,
        };
        let bytes = ring.pop()?;
        Some(OutPacket { bytes })
    }

    /// The next 20 ms output frame (PCM-output pipelines): copies it into `out`
    /// (which must hold a frame) and returns its length.
    pub fn poll_frame(&mut self, out: &mut [i16]) -> Option<usize> {
        match &mut self.mode {
            Mode::Transcode(t) => t.poll_frame(out),
            Mode::Relay(_) => None,
        }
    }

    /// Samples in one output frame (PCM outputs) or 0.
    pub fn frame_samples(&self) -> usize {
        match &self.mode {
            Mode::Transcode(t) => t.frame_samples(),
            Mode::Relay(_) => 0,
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PipelineEvent> {
        self.events.pop_front()
    }
}

/// Reports the digit if this telephone-event packet starts a new event.
fn receive_dtmf(
    rx: &mut DtmfReceiver,
    payload: &[u8],
    timestamp: RtpTimestamp,
    stats: &mut PipelineStats,
    events: &mut VecDeque<PipelineEvent>,
) {
    if let Ok(ev) = TelephoneEvent::parse(payload)
        && let Some(digit) = rx.handle(timestamp, &ev)
    {
        stats.dtmf_received += 1;
        push_event(events, PipelineEvent::Dtmf { digit, timestamp });
    }
}

/// Bounded event push: the oldest event gives way.
fn push_event(events: &mut VecDeque<PipelineEvent>, e: PipelineEvent) {
    if events.len() == MAX_EVENTS {
        events.pop_front();
    }
    events.push_back(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{dominant_frequency, goertzel_level_db, sine};
    use crate::codec::{AudioDecoder, g711};
    use crate::jitter::JitterConfig;
    use crate::rtp::{RtpHeader, RtpWriter, SeqNo};
    use bytes::Bytes;

    const PCMU: RtpFormat = RtpFormat {
        codec: Codec::Pcmu,
        payload_type: PayloadType::PCMU,
        telephone_event: None,
        ptime: Millis(20),
        opus: None,
    };

    const PCMA: RtpFormat = RtpFormat {
        codec: Codec::Pcma,
        payload_type: PayloadType::PCMA,
        ..PCMU
    };

    fn opus(pt: u8) -> RtpFormat {
        RtpFormat {
            codec: Codec::Opus,
            payload_type: PayloadType::new(pt).unwrap(),
            telephone_event: None,
            ptime: Millis(20),
            opus: None,
        }
    }

    fn pcmu_packet(seq: u16, ts: u32, ssrc: u32, pcm: &[i16]) -> RtpPacket {
        let mut payload = vec![0u8; pcm.len()];
        g711::ulaw_encode(pcm, &mut payload);
        packet(PayloadType::PCMU, seq, ts, ssrc, false, &payload)
    }

    fn packet(
        pt: PayloadType,
        seq: u16,
        ts: u32,
        ssrc: u32,
        marker: bool,
        payload: &[u8],
    ) -> RtpPacket {
        let mut w = RtpWriter::new(pt, SeqNo(seq), RtpTimestamp(ts), Ssrc(ssrc));
        w.marker = marker;
        let mut buf = vec![0u8; 12 + payload.len()];
        let n = w.write_packet(payload, &mut buf).unwrap();
        buf.truncate(n);
        RtpPacket::parse(Bytes::from(buf)).unwrap()
    }

    fn drain(p: &mut MediaPipeline) -> Vec<RtpPacket> {
        let mut v = Vec::new();
        while let Some(o) = p.poll_packet() {
            v.push(RtpPacket::parse(Bytes::copy_from_slice(o.bytes)).unwrap());
        }
        v
    }

    fn pipeline(input: Endpoint, output: Endpoint) -> MediaPipeline {
        MediaPipeline::new(PipelineConfig::new(input, output, Ssrc(0xabc), 1)).unwrap()
    }

    /// Through the jitter buffer (PCMU input, 8 kHz clock).
    fn buffered(input: Endpoint, output: Endpoint) -> MediaPipeline {
        let mut cfg = PipelineConfig::new(input, output, Ssrc(5), 3);
        cfg.jitter = Some(JitterConfig::new(crate::time::ClockRate(8000)));
        MediaPipeline::new(cfg).unwrap()
    }

    #[test]
    fn a_continued_stream_keeps_the_time_until_its_first_input() {
        // A stream taken over at 1 s whose new source speaks at 1.1 s: the
        // first timestamp is the start's plus 100 ms (800 ticks at 8 kHz),
        // relayed or transcoded.
        let pcmu = Endpoint::Rtp(RtpFormat::new(Codec::Pcmu, PayloadType::PCMU));
        let pcma = Endpoint::Rtp(RtpFormat::new(Codec::Pcma, PayloadType::PCMA));
        for output in [pcmu, pcma] {
            let mut cfg = PipelineConfig::new(pcmu, output, Ssrc(9), 3);
            cfg.start = Some((500, 10_000));
            cfg.start_at = Some(Instant::from_millis(1000));
            let mut p = MediaPipeline::new(cfg).unwrap();
            let w = RtpWriter::new(PayloadType::PCMU, SeqNo(7), RtpTimestamp(4242), Ssrc(1));
            let mut buf = [0u8; 200];
            let n = w.write_packet(&[0xff; 160], &mut buf).unwrap();
            let now = Instant::from_millis(1100);
            let h = if p.is_relay() {
                let len = p.relay_in_place(now, &mut buf[..n]).unwrap().unwrap();
                RtpHeader::parse(&buf[..len]).unwrap()
            } else {
                let pkt = RtpPacket::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
                p.handle_rtp(now, &pkt).unwrap();
                let out = p.poll_packet().unwrap();
                RtpHeader::parse(out.bytes).unwrap()
            };
            assert_eq!(
                (h.sequence_number.0, h.timestamp.0),
                (500, 10_800),
                "{output:?}"
            );
            assert_eq!(h.ssrc, Ssrc(9));
        }
    }
    #[test]
    fn relay_rewrites_the_header_in_place_only() {
        let mut p = pipeline(
            Endpoint::Rtp(PCMU),
            Endpoint::Rtp(RtpFormat {
                payload_type: PayloadType::new(0).unwrap(),
                ..PCMU
            }),
        );
        assert!(p.is_relay());
        let pkt = pcmu_packet(100, 8000, 7, &sine(8000, 1000.0, 8000.0, 160));
        let mut buf = pkt.as_bytes().to_vec();
        let payload_before = buf[12..].to_vec();
        let n = p.relay_in_place(Instant::ZERO, &mut buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(&buf[12..], &payload_before[..]);
        let h = RtpHeader::parse(&buf).unwrap();
        assert_eq!(h.ssrc, Ssrc(0xabc));
        assert!(h.marker, "first packet of our stream");
        // Next packet: +1 seq, +160 ts; a gap in input stays a gap in output.
        let first = (h.sequence_number.0, h.timestamp.0);
        let mut b2 = pcmu_packet(102, 8320, 7, &[0; 160]).as_bytes().to_vec();
        p.relay_in_place(Instant::ZERO, &mut b2).unwrap();
        let h2 = RtpHeader::parse(&b2).unwrap();
        assert_eq!(h2.sequence_number.0, first.0.wrapping_add(2));
        assert_eq!(h2.timestamp.0, first.1.wrapping_add(320));
        assert!(!h2.marker);
        // New source: our stream continues right after the last packet, marked.
        let mut b3 = pcmu_packet(5000, 123456, 8, &[0; 160]).as_bytes().to_vec();
        p.relay_in_place(Instant::ZERO, &mut b3).unwrap();
        let h3 = RtpHeader::parse(&b3).unwrap();
        assert_eq!(h3.sequence_number.0, first.0.wrapping_add(3));
        assert_eq!(h3.timestamp.0, first.1.wrapping_add(480));
        assert!(h3.marker);
        assert_eq!(
            p.poll_event(),
            Some(PipelineEvent::SourceChanged { ssrc: Ssrc(8) })
        );
    }

    #[test]
    fn relay_maps_telephone_events_and_mutes() {
        let input = RtpFormat {
            telephone_event: PayloadType::new(101),
            ..opus(111)
        };
        let output = RtpFormat {
            telephone_event: PayloadType::new(126),
            ..opus(109)
        };
        let mut p = pipeline(Endpoint::Rtp(input), Endpoint::Rtp(output));
        assert!(p.is_relay());
        let mut ev = [0u8; 4];
        crate::dtmf::TelephoneEvent {
            event: 5,
            end: false,
            volume: 10,
            duration: 960,
        }
        .write(&mut ev);
        let mut b = packet(PayloadType::new(101).unwrap(), 1, 960, 3, true, &ev)
            .as_bytes()
            .to_vec();
        let n = p.relay_in_place(Instant::ZERO, &mut b).unwrap().unwrap();
        assert_eq!(RtpHeader::parse(&b[..n]).unwrap().payload_type.value(), 126);
        assert!(
            matches!(p.poll_event(), Some(PipelineEvent::Dtmf { digit, .. }) if digit.as_char() == '5')
        );
        p.set_muted(true);
        let mut b = packet(
            PayloadType::new(111).unwrap(),
            2,
            1920,
            3,
            false,
            &[0x78; 80],
        )
        .as_bytes()
        .to_vec();
        let n = p.relay_in_place(Instant::ZERO, &mut b).unwrap().unwrap();
        assert_eq!(&b[12..n], &[0xf8, 0xff, 0xfe]);
        assert_eq!(RtpHeader::parse(&b[..n]).unwrap().payload_type.value(), 109);
        // Unknown payload types are dropped, garbage is an error.
        let mut b = packet(PayloadType::new(96).unwrap(), 3, 2880, 3, false, &[1])
            .as_bytes()
            .to_vec();
        assert_eq!(p.relay_in_place(Instant::ZERO, &mut b).unwrap(), None);
        assert!(p.relay_in_place(Instant::ZERO, &mut [0x80, 0]).is_err());
        assert_eq!(p.stats().unknown_payload_type, 1);
        assert_eq!(p.stats().malformed, 1);
    }

    #[test]
    fn pcmu_to_opus_carries_a_tone_in_20ms_packets() {
        let mut p = pipeline(Endpoint::Rtp(PCMU), Endpoint::Rtp(opus(111)));
        assert!(!p.is_relay());
        let tone = sine(8000, 1000.0, 10000.0, 160 * 50);
        let mut out = Vec::new();
        for (i, f) in tone.chunks(160).enumerate() {
            p.handle_rtp(Instant::ZERO, &pcmu_packet(i as u16, i as u32 * 160, 1, f))
                .unwrap();
            out.extend(drain(&mut p));
        }
        assert_eq!(out.len(), 50);
        for w in out.windows(2) {
            assert_eq!(
                w[1].sequence_number().0,
                w[0].sequence_number().0.wrapping_add(1)
            );
            assert_eq!(w[1].timestamp().0, w[0].timestamp().0.wrapping_add(960));
            assert_eq!(w[1].payload_type().value(), 111);
        }
        assert!(out[0].marker() && !out[1].marker());
        let mut dec = AudioDecoder::new(Codec::Opus, SampleRate::HZ_48000).unwrap();
        let mut pcm = Vec::new();
        let mut buf = vec![0i16; 5760];
        for pkt in &out {
            let n = dec.decode(pkt.payload_bytes(), &mut buf).unwrap();
            pcm.extend_from_slice(&buf[..n]);
        }
        let tail = &pcm[pcm.len() / 2..];
        assert!((dominant_frequency(tail, 48000, 200.0, 3000.0) - 1000.0).abs() < 3.0);
        assert!(
            (goertzel_level_db(tail, 48000, 1000.0) - goertzel_level_db(&tone, 8000, 1000.0)).abs()
                < 1.5
        );
    }

    #[test]
    fn any_input_ptime_becomes_20ms_frames() {
        for ptime in [10u32, 20, 30, 60] {
            let mut input = PCMU;
            input.ptime = Millis(ptime);
            let mut p = pipeline(Endpoint::Rtp(input), Endpoint::Rtp(PCMA));
            let n = 8 * ptime as usize;
            let tone = sine(8000, 440.0, 8000.0, 8000 * 6 / 10); // 600 ms
            let mut out = Vec::new();
            for (i, f) in tone.chunks(n).enumerate() {
                p.handle_rtp(Instant::ZERO, &pcmu_packet(i as u16, (i * n) as u32, 1, f))
                    .unwrap();
                out.extend(drain(&mut p));
            }
            assert_eq!(out.len(), 30, "{ptime} ms");
            assert!(out.iter().all(|p| p.payload_bytes().len() == 160));
            assert!(
                out.windows(2)
                    .all(|w| w[1].timestamp().0 == w[0].timestamp().0.wrapping_add(160))
            );
        }
    }

    #[test]
    fn losses_are_concealed_and_gaps_restart_with_a_marker() {
        let mut p = pipeline(Endpoint::Rtp(PCMU), Endpoint::Rtp(PCMA));
        let tone = sine(8000, 300.0, 8000.0, 160 * 40);
        let mut out = Vec::new();
        for i in 0..20u16 {
            if i == 8 || i == 9 {
                continue; // lost
            }
            let f = &tone[i as usize * 160..(i as usize + 1) * 160];
            p.handle_rtp(Instant::ZERO, &pcmu_packet(i, i as u32 * 160, 1, f))
                .unwrap();
            out.extend(drain(&mut p));
        }
        // Loss: no hole in output, 40 ms concealed.
        assert_eq!(out.len(), 20);
        assert!(
            out.windows(2)
                .all(|w| w[1].timestamp().0 == w[0].timestamp().0.wrapping_add(160))
        );
        assert_eq!(p.stats().lost, 2);
        assert_eq!(p.stats().concealed_ms, 40);
        // Silence suppression: ts jumps 1 s with no seq gap -> output ts jumps, marked.
        let last = out.last().unwrap().timestamp().0;
        p.handle_rtp(
            Instant::ZERO,
            &pcmu_packet(20, 20 * 160 + 8000, 1, &tone[..160]),
        )
        .unwrap();
        let after = drain(&mut p);
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].timestamp().0, last.wrapping_add(160 + 8000));
        assert!(after[0].marker());
        // A late packet is dropped.
        p.handle_rtp(Instant::ZERO, &pcmu_packet(15, 15 * 160, 1, &tone[..160]))
            .unwrap();
        assert!(drain(&mut p).is_empty());
        assert_eq!(p.stats().late, 1);
    }

    #[test]
    fn pcmu_to_pcm24k_and_back() {
        let mut down = pipeline(Endpoint::Rtp(PCMU), Endpoint::Pcm(SampleRate::HZ_24000));
        assert_eq!(down.frame_samples(), 480);
        let tone = sine(8000, 1000.0, 10000.0, 160 * 25);
        let mut pcm24 = Vec::new();
        let mut frame = [0i16; 480];
        for (i, f) in tone.chunks(160).enumerate() {
            down.handle_rtp(Instant::ZERO, &pcmu_packet(i as u16, i as u32 * 160, 1, f))
                .unwrap();
            while let Some(n) = down.poll_frame(&mut frame) {
                pcm24.extend_from_slice(&frame[..n]);
            }
        }
        assert_eq!(pcm24.len(), 25 * 480);
        assert!((dominant_frequency(&pcm24[4800..], 24000, 200.0, 3000.0) - 1000.0).abs() < 2.0);
        let mut up = pipeline(Endpoint::Pcm(SampleRate::HZ_24000), Endpoint::Rtp(PCMU));
        let mut back = Vec::new();
        for f in pcm24.chunks(480) {
            up.handle_pcm(Instant::ZERO, f).unwrap();
            for pkt in drain(&mut up) {
                let mut s = [0i16; 160];
                g711::ulaw_decode(pkt.payload_bytes(), &mut s);
                back.extend_from_slice(&s);
            }
        }
        assert_eq!(back.len(), 25 * 160);
        assert!((dominant_frequency(&back[1600..], 8000, 200.0, 3000.0) - 1000.0).abs() < 2.0);
        assert!(
            up.handle_rtp(Instant::ZERO, &pcmu_packet(0, 0, 1, &[0; 160]))
                .is_err()
        );
    }

    #[test]
    fn opus_output_follows_the_receivers_fmtp() {
        // Speech, so SILK spends LBRR bits when it may.
        let pcm = crate::analysis::speech_like(8000, 8000);
        let fec_in = |fmtp: Option<OpusFmtp>| {
            let mut p = pipeline(
                Endpoint::Rtp(PCMU),
                Endpoint::Rtp(RtpFormat {
                    opus: fmtp,
                    ..opus(111)
                }),
            );
            let mut with_fec = 0;
            for (i, frame) in pcm.chunks_exact(160).enumerate() {
                p.handle_rtp(
                    Instant::ZERO,
                    &pcmu_packet(i as u16, i as u32 * 160, 1, frame),
                )
                .unwrap();
                with_fec += drain(&mut p)
                    .iter()
                    .filter(|o| crate::codec::opus::has_fec(&o.payload()))
                    .count();
            }
            with_fec
        };
        // Unknown fmtp: the configured encoder (FEC on by default).
        assert!(fec_in(None) > 10);
        assert!(fec_in(Some(OpusFmtp::parse("useinbandfec=1"))) > 10);
        // RFC 7587: without useinbandfec=1 the receiver has no use for it.
        assert_eq!(fec_in(Some(OpusFmtp::default())), 0);
    }

    #[test]
    fn sent_dtmf_replaces_audio_frames() {
        let out_fmt = RtpFormat {
            telephone_event: PayloadType::new(126),
            ..opus(111)
        };
        let mut p = pipeline(Endpoint::Rtp(PCMU), Endpoint::Rtp(out_fmt));
        p.send_dtmf("7", Millis(100)).unwrap();
        let mut out = Vec::new();
        for i in 0..10u16 {
            p.handle_rtp(Instant::ZERO, &pcmu_packet(i, i as u32 * 160, 1, &[0; 160]))
                .unwrap();
            out.extend(drain(&mut p));
        }
        let events: Vec<_> = out
            .iter()
            .filter(|p| p.payload_type().value() == 126)
            .collect();
        assert_eq!(events.len(), 7); // 4 updates + end x3
        assert!(events[0].marker());
        assert!(
            out.windows(2)
                .all(|w| w[1].sequence_number().0 == w[0].sequence_number().0.wrapping_add(1))
        );
        assert!(p.send_dtmf("x", Millis(100)).is_err());
        let mut no_te = pipeline(Endpoint::Rtp(PCMU), Endpoint::Rtp(opus(111)));
        assert!(matches!(
            no_te.send_dtmf("1", Millis(100)),
            Err(PipelineError::WrongInput(_))
        ));
    }

    #[test]
    fn received_dtmf_is_reported_once() {
        let input = RtpFormat {
            telephone_event: PayloadType::new(101),
            ..PCMU
        };
        let mut p = pipeline(Endpoint::Rtp(input), Endpoint::Rtp(opus(111)));
        for (i, end) in [(0u16, false), (1, false), (2, true), (3, true), (4, true)] {
            let mut ev = [0u8; 4];
            crate::dtmf::TelephoneEvent {
                event: 11,
                end,
                volume: 10,
                duration: 160 * (i + 1),
            }
            .write(&mut ev);
            p.handle_rtp(
                Instant::ZERO,
                &packet(PayloadType::new(101).unwrap(), i, 800, 1, i == 0, &ev),
            )
            .unwrap();
        }
        assert!(
            matches!(p.poll_event(), Some(PipelineEvent::Dtmf { digit, .. }) if digit.as_char() == '#')
        );
        assert_eq!(p.poll_event(), None);
    }

    #[test]
    fn jitter_buffered_pipeline_smooths_a_jittery_reordered_stream() {
        let mut p = buffered(Endpoint::Rtp(PCMU), Endpoint::Rtp(opus(111)));
        let tone = sine(8000, 1000.0, 10000.0, 160 * 200);
        let mut rng = SeededRng::new(8);
        // Arrival = send + 0-30 ms jitter (not FIFO: some overtake others).
        let mut arrivals: Vec<(u64, u16)> = (0..200u16)
            .map(|i| (i as u64 * 20_000 + (rng.next_f64() * 30_000.0) as u64, i))
            .collect();
        arrivals.sort();
        let mut out = Vec::new();
        let mut next = 0;
        let mut now = 0u64;
        while now < 4_600_000 {
            let arrival = arrivals.get(next).map_or(u64::MAX, |a| a.0);
            let due = p.poll_timeout().map_or(u64::MAX, |d| d.as_micros());
            now = arrival.min(due).clamp(now, 4_600_000);
            if arrival <= due && next < arrivals.len() {
                let i = arrivals[next].1 as usize;
                p.handle_rtp(
                    Instant::from_micros(now),
                    &pcmu_packet(i as u16, i as u32 * 160, 1, &tone[i * 160..(i + 1) * 160]),
                )
                .unwrap();
                next += 1;
            } else if due <= now {
                p.handle_timeout(Instant::from_micros(now));
            }
            out.extend(drain(&mut p));
        }
        let j = *p.jitter_stats().unwrap();
        assert!(j.reordered > 0 && j.late <= 2, "{j:?}");
        // A 20 ms stream: timestamps step by 960, or jump on (with the marker)
        // where the buffer's clock waited out a stall (rarely: at most twice).
        assert!(out.len() >= 195, "{}", out.len());
        let steps: Vec<u32> = out
            .windows(2)
            .map(|w| w[1].timestamp().0.wrapping_sub(w[0].timestamp().0))
            .collect();
        assert!(
            out.windows(2)
                .zip(&steps)
                .all(|(w, &d)| d == 960 || (d > 960 && w[1].header().marker)),
            "{steps:?}"
        );
        assert!(
            steps.iter().filter(|&&d| d != 960).count() <= 2,
            "{steps:?}"
        );
        let mut dec = AudioDecoder::new(Codec::Opus, SampleRate::HZ_48000).unwrap();
        let mut pcm = Vec::new();
        let mut buf = vec![0i16; 5760];
        for pkt in &out[20..180] {
            let n = dec.decode(pkt.payload_bytes(), &mut buf).unwrap();
            pcm.extend_from_slice(&buf[..n]);
        }
        assert!((dominant_frequency(&pcm, 48000, 200.0, 3000.0) - 1000.0).abs() < 3.0);
        assert!(
            (goertzel_level_db(&pcm, 48000, 1000.0) - goertzel_level_db(&tone, 8000, 1000.0)).abs()
                < 2.0
        );
        assert!(
            j.target_delay_ms >= 20.0 && j.target_delay_ms <= 40.0,
            "{j:?}"
        );
    }

    /// Drives `p` on virtual time: each packet at its arrival (us), each
    /// playout tick when due, until `end`. Returns (send instant, RTP timestamp,
    /// marker) of every output packet.
    fn play_out(
        p: &mut MediaPipeline,
        arrivals: &[(u64, RtpPacket)],
        end: u64,
    ) -> Vec<(u64, u32, bool)> {
        let mut out = Vec::new();
        let (mut next, mut now) = (0usize, 0u64);
        while now < end {
            let arrival = arrivals.get(next).map_or(u64::MAX, |a| a.0);
            let due = p.poll_timeout().map_or(u64::MAX, |d| d.as_micros());
            now = arrival.min(due).clamp(now, end);
            if arrival <= due && next < arrivals.len() {
                p.handle_rtp(Instant::from_micros(now), &arrivals[next].1)
                    .unwrap();
                next += 1;
            } else if due <= now {
                p.handle_timeout(Instant::from_micros(now));
            }
            for pkt in drain(p) {
                out.push((now, pkt.timestamp().0, pkt.header().marker));
            }
        }
        out
    }

    /// Timestamp minus wall clock, in 8 kHz ticks (what the far end's jitter
    /// estimate sees), of the output sent within `during` (us).
    fn transit(out: &[(u64, u32, bool)], during: std::ops::Range<u64>) -> Vec<i64> {
        out.iter()
            .filter(|o| during.contains(&o.0))
            .map(|&(t, ts, _)| ts as i64 - (t * 8 / 1000) as i64)
            .collect()
    }

    #[test]
    fn a_stall_moves_the_output_timestamps_across_the_pause() {
        let mut p = buffered(Endpoint::Rtp(PCMU), Endpoint::Rtp(PCMA));
        let tone = sine(8000, 700.0, 8000.0, 160 * 250);
        // Every 20 ms, except that packets 100-104 are held for 100 ms and then
        // arrive in one burst with packet 105.
        let arrivals: Vec<(u64, RtpPacket)> = (0..250usize)
            .map(|i| {
                let at = if (100..105).contains(&i) {
                    105
                } else {
                    i as u64
                };
                let pkt = pcmu_packet(i as u16, i as u32 * 160, 1, &tone[i * 160..(i + 1) * 160]);
                (at * 20_000, pkt)
            })
            .collect();
        let out = play_out(&mut p, &arrivals, 5_200_000);
        let before = transit(&out, 0..1_900_000);
        let after = transit(&out, 3_500_001..5_000_001);
        let base = *before.iter().max().unwrap();
        assert!(before.iter().all(|t| base - t <= 40), "{before:?}");
        // Back on the pre-stall line: not behind it (it was 100 ms behind for good
        // before the fix); ahead by what the buffer's clock gained playing the
        // backlog early, which the next pause uses up.
        assert!(
            after.iter().all(|t| (-40..=320).contains(&(t - base))),
            "{base} {after:?}"
        );
        let marked: Vec<_> = out
            .iter()
            .filter(|o| o.2 && (1_000_000..5_000_000).contains(&o.0))
            .collect();
        assert!(
            marked.len() == 1 && (2_000_000..2_200_000).contains(&marked[0].0),
            "{marked:?}"
        );
        assert!(p.stats().playout_pauses >= 1);
    }

    /// Through a sender's silence (DTX: no packets, then a talkspurt whose packets
    /// come 50 ms later), the output's timestamps stay on the wall clock's line.
    /// The buffer used to wait out the silence (the output skipped the wait) and
    /// then run its clock at double speed toward its stale position, so the
    /// output ran 120-150 ms ahead of the wall clock after every pause.
    #[test]
    fn a_talkspurt_after_silence_keeps_the_output_on_the_wall_clock() {
        let mut p = buffered(Endpoint::Rtp(PCMU), Endpoint::Rtp(PCMA));
        let tone = sine(8000, 700.0, 8000.0, 160 * 250);
        // A talkspurt, 300 ms of sender silence (no packets), then a talkspurt
        // whose packets all come 50 ms later than the first one's.
        let arrivals: Vec<(u64, RtpPacket)> = (0..250usize)
            .filter(|i| !(100..115).contains(i))
            .map(|i| {
                let at = i as u64 * 20_000 + if i >= 115 { 50_000 } else { 0 };
                // DTX: sequence numbers run on, the timestamp jumps, marker set.
                let seq = if i >= 115 { i - 15 } else { i } as u16;
                let mut pkt = pcmu_packet(seq, i as u32 * 160, 1, &tone[i * 160..(i + 1) * 160]);
                if i == 115 {
                    pkt = packet(
                        PayloadType::PCMU,
                        seq,
                        115 * 160,
                        1,
                        true,
                        pkt.payload_bytes(),
                    );
                }
                (at, pkt)
            })
            .collect();
        let out = play_out(&mut p, &arrivals, 5_200_000);
        let before = transit(&out, 0..1_900_000);
        let after = transit(&out, 3_500_000..5_000_000);
        let base = *before.iter().max().unwrap();
        // Within 25 ms (200 ticks) of the line before the pause: the 50 ms of
        // extra delay is partly taken by the wait at the talkspurt's start (which
        // the timestamps skip) and partly steered at 2 ms a frame inside the
        // talkspurt (which they do not: the stream stays continuous).
        assert!(
            after.iter().all(|t| (base - t).abs() <= 200),
            "{base} {:?}",
            after.iter().map(|t| t - base).collect::<Vec<_>>()
        );
    }

    /// An Opus sender stops for 3 s and resumes with its timestamps continuing
    /// where they stopped, through the jitter buffer on its own clock to PCMU.
    /// The buffer's clock ran on through the pause, so every resumed packet
    /// was behind it and dropped as late: the far end heard -200 dB of the
    /// resumed tone for good.
    #[test]
    fn a_sender_resuming_without_a_timestamp_jump_is_heard_through_the_buffer() {
        let mut p = buffered(Endpoint::Rtp(opus(111)), Endpoint::Rtp(PCMU));
        // 1 s, 3 s of nothing, 3 s.
        let (tone, arrivals) = tone_stream(opus(111), 200, (50, 3_000_000), true, 0.0);
        let expected = crate::analysis::rms_db(&tone);
        let (mut next, mut now, end) = (0usize, 0u64, 7_300_000u64);
        let mut heard = Vec::new();
        while now < end {
            let arrival = arrivals.get(next).map_or(u64::MAX, |a| a.0);
            let due = p.poll_timeout().map_or(u64::MAX, |d| d.as_micros());
            now = arrival.min(due).clamp(now, end);
            if arrival <= due && next < arrivals.len() {
                p.handle_rtp(Instant::from_micros(now), &arrivals[next].1)
                    .unwrap();
                next += 1;
            } else if due <= now {
                p.handle_timeout(Instant::from_micros(now));
            }
            for pkt in drain(&mut p) {
                let mut pcm = [0i16; 160];
                g711::ulaw_decode(pkt.payload_bytes(), &mut pcm);
                heard.push((now, pcm));
            }
        }
        // Resumed at 4 s: heard within 100 ms, then throughout.
        let resumed: Vec<f64> = heard
            .iter()
            .filter(|h| (4_100_000..6_900_000).contains(&h.0))
            .map(|h| crate::analysis::rms_db(&h.1))
            .collect();
        let j = p.jitter_stats().unwrap();
        assert!(resumed.len() >= 135, "{} frames {j:?}", resumed.len());
        assert!(
            resumed.iter().all(|&l| l > expected - 3.0),
            "{resumed:?} {j:?}"
        );
        assert_eq!(j.resyncs, 1, "{j:?}");
    }

    #[test]
    fn a_looped_capture_is_followed_not_dropped_as_late() {
        let mut p = pipeline(Endpoint::Rtp(PCMU), Endpoint::Rtp(PCMA));
        let tone = sine(8000, 500.0, 8000.0, 160);
        let mut out = Vec::new();
        // The same 150 packets (sequence numbers and timestamps) twice, one SSRC.
        for k in 0..300u32 {
            let i = 500 + k % 150;
            let pkt = pcmu_packet(i as u16, i * 160, 7, &tone);
            p.handle_rtp(Instant::from_micros(k as u64 * 20_000), &pkt)
                .unwrap();
            out.extend(drain(&mut p));
        }
        // One packet goes as late while the restart is confirmed (RFC 3550 A.1).
        assert_eq!(p.stats().late, 1);
        assert!(out.len() >= 298, "{}", out.len());
        let marked = out.iter().skip(1).filter(|o| o.header().marker).count();
        assert_eq!(marked, 1, "the restart starts a new segment");
    }

    /// A PCM 16 kHz pipeline from `input` through a jitter buffer on the
    /// caller's clock.
    fn ticked(input: RtpFormat) -> MediaPipeline {
        let mut cfg = PipelineConfig::new(
            Endpoint::Rtp(input),
            Endpoint::Pcm(SampleRate::HZ_16000),
            Ssrc(5),
            3,
        );
        let mut j = JitterConfig::new(input.codec.clock_rate());
        j.external_clock = true;
        cfg.jitter = Some(j);
        MediaPipeline::new(cfg).unwrap()
    }

    /// A sender's 20 ms packets of a 700 Hz tone (`count` of them, `codec` at
    /// its natural rate) with sequence numbers and timestamps from 0, except
    /// that from packet `resume.0` on they are sent `resume.1` us later with
    /// their timestamps where they would have been without the pause (a sender
    /// that paused without moving its timestamps on). Arrival: send + 0-40 ms
    /// of jitter (not FIFO: packets overtake each other unless `in_order`),
    /// `loss` of them lost. Returns the tone and `(arrival us, packet)` in
    /// arrival order.
    fn tone_stream(
        format: RtpFormat,
        count: usize,
        resume: (usize, u64),
        in_order: bool,
        loss: f64,
    ) -> (Vec<i16>, Vec<(u64, RtpPacket)>) {
        let codec = format.codec;
        let rate = codec.natural_rate();
        let n = rate.samples_in(Millis(20));
        let tone = sine(rate.hz(), 700.0, 8000.0, n * count);
        let mut enc = crate::codec::AudioEncoder::new(codec, Default::default()).unwrap();
        let mut lost = SeededRng::new(21);
        let mut rng = SeededRng::new(22);
        let ticks = codec.clock_rate().ticks_in(Millis(20));
        let mut arrivals: Vec<(u64, RtpPacket)> = Vec::new();
        for i in 0..count {
            if lost.chance(loss) {
                continue;
            }
            let mut payload = [0u8; 1500];
            let len = enc.encode(&tone[i * n..(i + 1) * n], &mut payload).unwrap();
            let pkt = packet(
                format.payload_type,
                i as u16,
                i as u32 * ticks,
                1,
                false,
                &payload[..len],
            );
            let pause = if i >= resume.0 { resume.1 } else { 0 };
            let at = i as u64 * 20_000 + pause + (rng.next_f64() * 40_000.0) as u64;
            arrivals.push((at, pkt));
        }
        if in_order {
            for i in 1..arrivals.len() {
                arrivals[i].0 = arrivals[i].0.max(arrivals[i - 1].0);
            }
        }
        arrivals.sort_by_key(|a| a.0);
        (tone, arrivals)
    }

    /// Ticks `p` on a 20 ms call clock (from 7 ms) `ticks` times, feeding it
    /// `arrivals` as they come; each tick must yield exactly one 20 ms frame
    /// of 16 kHz PCM. Returns the frames.
    fn on_the_call_clock(
        p: &mut MediaPipeline,
        arrivals: &[(u64, RtpPacket)],
        ticks: u64,
    ) -> Vec<Vec<i16>> {
        let mut next = 0;
        let mut out = Vec::new();
        let mut frame = [0i16; 960];
        for k in 0..ticks {
            let now = 7_000 + k * 20_000;
            while next < arrivals.len() && arrivals[next].0 <= now {
                let (at, pkt) = &arrivals[next];
                p.handle_rtp(Instant::from_micros(*at), pkt).unwrap();
                next += 1;
            }
            p.tick(Instant::from_micros(now)).unwrap();
            assert_eq!(p.poll_frame(&mut frame), Some(320), "tick {k}");
            assert_eq!(p.poll_frame(&mut frame), None);
            out.push(frame[..320].to_vec());
        }
        out
    }

    /// 10 s of tone on the call clock, 0-40 ms of jitter and 3 % lost:
    /// the frames once playing, their levels, and the tone's level.
    fn ten_seconds_ticked(format: RtpFormat, in_order: bool) -> (MediaPipeline, Vec<f64>, f64) {
        let mut p = ticked(format);
        assert_eq!(p.poll_timeout(), None);
        let (tone, arrivals) = tone_stream(format, 500, (500, 0), in_order, 0.03);
        let out = on_the_call_clock(&mut p, &arrivals, 520);
        let start = out.iter().position(|f| f.iter().any(|&v| v != 0)).unwrap();
        assert!(start <= 5, "{start}");
        let playing = &out[start + 1..start + 480];
        let pcm: Vec<i16> = playing.concat();
        assert!((dominant_frequency(&pcm, 16000, 200.0, 3000.0) - 700.0).abs() < 3.0);
        let levels = playing.iter().map(|f| crate::analysis::rms_db(f)).collect();
        (p, levels, crate::analysis::rms_db(&tone))
    }

    #[test]
    fn ticked_on_the_call_clock_it_yields_one_frame_per_tick() {
        for format in [PCMU, opus(111)] {
            let codec = format.codec;
            // In order, as most paths deliver (see the next test for a path
            // whose packets overtake each other).
            let (p, levels, expected) = ten_seconds_ticked(format, true);
            assert!(p.stats().lost > 0, "{:?}", p.stats());
            // Once playing, continuous: no frame near silence (a gap would be
            // -200 dB), and only the frames around a loss (concealed) more than
            // 3 dB under the tone.
            assert!(
                levels.iter().all(|&l| l > expected - 20.0),
                "{codec:?} {levels:?}"
            );
            let dips = levels.iter().filter(|&&l| l < expected - 3.0).count() as u64;
            assert!(dips <= 3 * p.stats().lost, "{codec:?} {dips}");
            let target = p.jitter_stats().unwrap().target_delay_ms;
            assert!((20.0..=80.0).contains(&target), "{target}");
        }
    }

    /// The same on a path whose packets overtake each other. A loss there was
    /// waited for as a reordered packet may be, up to the maximum delay, and
    /// on the call clock the wait is concealment played, fading to silence:
    /// PCMU gave 42 all-silent frames for 19 losses. A wait now lasts no
    /// longer than the missing media: a loss costs its own duration of
    /// concealment, which stands in for it.
    #[test]
    fn ticked_on_a_reordering_path_a_loss_costs_its_own_length() {
        for format in [PCMU, opus(111)] {
            let codec = format.codec;
            let (p, levels, expected) = ten_seconds_ticked(format, false);
            let (s, j) = (p.stats(), p.jitter_stats().unwrap());
            assert!(s.lost > 10 && j.reordered > 20, "{s:?} {j:?}");
            let zero = levels.iter().filter(|&&l| l <= -199.0).count();
            let silent = levels.iter().filter(|&&l| l < expected - 20.0).count();
            let dips = levels.iter().filter(|&&l| l < expected - 3.0).count() as u64;
            assert!(
                silent == 0 && dips <= 3 * s.lost,
                "{codec:?}: {zero} all-silent frames, {silent} 20 dB under, {dips} 3 dB \
                 under for {} lost: {j:?}",
                s.lost
            );
            // Concealment for the losses: their own length. Waits for media
            // that came (a frame misaligned by a stretch needing the next
            // packet early): under 2 % of the time.
            let frame = codec.clock_rate().ticks_in(Millis(20)) as u64;
            assert_eq!(j.concealed_ticks, frame * s.lost, "{j:?}");
            assert!(j.underrun_ticks < frame * 10, "{j:?}");
        }
    }

    /// A sender stops for 3 s and resumes with its timestamps continuing where
    /// they stopped. On the call clock the buffer played its given-up
    /// position on through the pause, so every resumed packet was late: the
    /// source stayed silent for good.
    #[test]
    fn ticked_a_sender_resuming_without_a_timestamp_jump_is_heard() {
        for format in [PCMU, opus(111)] {
            let codec = format.codec;
            let mut p = ticked(format);
            // 1 s, 3 s of nothing, 3 s.
            let (tone, arrivals) = tone_stream(format, 200, (50, 3_000_000), true, 0.0);
            let out = on_the_call_clock(&mut p, &arrivals, 380);
            let expected = crate::analysis::rms_db(&tone);
            // Resumed at 4 s (tick 200): heard within 100 ms, then throughout
            // as on a clean path (a frame misaligned with packets by a stretch
            // can need a few ms of concealment; Opus fades back in after it).
            let levels: Vec<f64> = out[205..345]
                .iter()
                .map(|f| crate::analysis::rms_db(f))
                .collect();
            let j = p.jitter_stats().unwrap();
            let dips = levels.iter().filter(|&&l| l < expected - 3.0).count();
            assert!(
                levels.iter().all(|&l| l > expected - 20.0) && dips <= 3,
                "{codec:?}: {levels:?} {j:?}"
            );
            assert_eq!(j.resyncs, 1, "{j:?}");
        }
    }

    #[test]
    fn tick_is_for_a_buffer_on_the_callers_clock_only() {
        let mut own = buffered(Endpoint::Rtp(PCMU), Endpoint::Pcm(SampleRate::HZ_16000));
        assert!(matches!(
            own.tick(Instant::ZERO),
            Err(PipelineError::WrongInput(_))
        ));
        let mut direct = pipeline(Endpoint::Rtp(PCMU), Endpoint::Pcm(SampleRate::HZ_16000));
        assert!(direct.tick(Instant::ZERO).is_err());
        let mut relay = pipeline(Endpoint::Rtp(PCMU), Endpoint::Rtp(PCMU));
        assert!(relay.tick(Instant::ZERO).is_err());
        // On the caller's clock, handle_timeout leaves it alone.
        let mut p = ticked(PCMU);
        p.handle_rtp(Instant::ZERO, &pcmu_packet(0, 0, 1, &[1000; 160]))
            .unwrap();
        p.handle_timeout(Instant::from_millis(500));
        assert_eq!(p.poll_frame(&mut [0; 320]), None);
    }

    /// A listener's output pipeline: PCM 16 kHz (a mixer's) to `format`.
    fn listener(format: RtpFormat) -> PipelineConfig {
        PipelineConfig::new(
            Endpoint::Pcm(SampleRate::HZ_16000),
            Endpoint::Rtp(format),
            Ssrc(0x1234),
            9,
        )
    }

    /// Feeds `pcm` (16 kHz) in 20 ms frames to `own` (which encodes itself) and
    /// through `shared` to `fed`; returns both output streams.
    fn both_ways(
        own: &mut MediaPipeline,
        fed: &mut MediaPipeline,
        shared: &mut FrameEncoder,
        pcm: &[i16],
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, f) in pcm.chunks_exact(320).enumerate() {
            let now = Instant::from_millis(20 * i as u64);
            own.handle_pcm(now, f).unwrap();
            fed.handle_encoded(now, shared.encode(f).unwrap()).unwrap();
            while let Some(o) = own.poll_packet() {
                a.push(o.bytes.to_vec());
            }
            while let Some(o) = fed.poll_packet() {
                b.push(o.bytes.to_vec());
            }
        }
        (a, b)
    }

    #[test]
    fn a_shared_g711_encoder_gives_the_same_stream_dtmf_included() {
        let format = RtpFormat {
            telephone_event: PayloadType::new(101),
            ..PCMU
        };
        let config = listener(format);
        let (mut own, mut fed) = (
            MediaPipeline::new(config).unwrap(),
            MediaPipeline::new(config).unwrap(),
        );
        let mut shared = FrameEncoder::for_output(&config).unwrap();
        assert_eq!(own.encoder_key(), Some(shared.key()));
        own.send_dtmf("5", Millis(60)).unwrap();
        fed.send_dtmf("5", Millis(60)).unwrap();
        let pcm = sine(16000, 1000.0, 9000.0, 320 * 30);
        let (a, b) = both_ways(&mut own, &mut fed, &mut shared, &pcm);
        assert_eq!(a, b);
        let events = a.iter().filter(|p| p[1] & 0x7f == 101).count();
        assert!(
            events >= 3 && a.len() == 30 - 3 + events,
            "{} {events}",
            a.len()
        );
        // Muted, each sends its own silence.
        own.set_muted(true);
        fed.set_muted(true);
        let (a, b) = both_ways(&mut own, &mut fed, &mut shared, &pcm[..320 * 2]);
        assert_eq!(a, b);
        assert!(a.iter().all(|p| p[12..].iter().all(|&c| c == 0xff)));
        // Another payload type, the same payloads: the same key.
        let pcmu_96 = RtpFormat {
            payload_type: PayloadType::new(96).unwrap(),
            ..PCMU
        };
        let other = MediaPipeline::new(listener(pcmu_96)).unwrap();
        assert_eq!(other.encoder_key(), Some(shared.key()));
        assert_ne!(
            MediaPipeline::new(listener(PCMA)).unwrap().encoder_key(),
            Some(shared.key())
        );
    }

    #[test]
    fn a_shared_opus_encoder_gives_a_decodable_stream_that_follows_the_fmtp() {
        let format = RtpFormat {
            opus: Some(OpusFmtp::parse("useinbandfec=1;usedtx=1")),
            ..opus(111)
        };
        let config = listener(format);
        let (mut own, mut fed) = (
            MediaPipeline::new(config).unwrap(),
            MediaPipeline::new(config).unwrap(),
        );
        let mut shared = FrameEncoder::for_output(&config).unwrap();
        let key = shared.key();
        assert_eq!(own.encoder_key(), Some(key));
        assert_eq!(key.opus.as_ref(), own.opus_encoder());
        assert!(key.opus.is_some_and(|o| o.dtx && o.inband_fec));
        assert_eq!(key.opus.unwrap().sample_rate, SampleRate::HZ_16000);
        // A receiver without FEC needs other payloads.
        let no_fec = MediaPipeline::new(listener(opus(111))).unwrap();
        assert_ne!(no_fec.encoder_key(), Some(key));
        // A tone, a second of silence (DTX), the tone again.
        let mut pcm = sine(16000, 1000.0, 9000.0, 320 * 50);
        pcm.extend(std::iter::repeat_n(0, 320 * 50));
        pcm.extend(sine(16000, 1000.0, 9000.0, 320 * 50));
        let (a, b) = both_ways(&mut own, &mut fed, &mut shared, &pcm);
        // libopus is deterministic: the same settings and input, the same bytes.
        assert_eq!(a, b);
        let pkts: Vec<RtpPacket> = b
            .iter()
            .map(|p| RtpPacket::parse(Bytes::copy_from_slice(p)).unwrap())
            .collect();
        assert!(pkts.len() < 140, "DTX sent less: {}", pkts.len());
        let resumed = pkts
            .windows(2)
            .find(|w| w[1].timestamp().0.wrapping_sub(w[0].timestamp().0) > 960);
        assert!(resumed.is_some_and(|w| w[1].marker()));
        let mut dec = AudioDecoder::new(Codec::Opus, SampleRate::HZ_48000).unwrap();
        let mut decoded = Vec::new();
        let mut buf = vec![0i16; 5760];
        for p in &pkts[5..45] {
            let n = dec.decode(p.payload_bytes(), &mut buf).unwrap();
            decoded.extend_from_slice(&buf[..n]);
        }
        assert!((dominant_frequency(&decoded, 48000, 200.0, 3000.0) - 1000.0).abs() < 3.0);
    }

    #[test]
    fn encoded_frames_go_only_where_they_fit() {
        let mut shared = FrameEncoder::for_output(&listener(PCMU)).unwrap();
        assert_eq!(shared.frame_samples(), 320);
        assert!(shared.encode(&[0; 160]).is_err());
        let rtp_in = PipelineConfig::new(Endpoint::Rtp(PCMU), Endpoint::Rtp(PCMA), Ssrc(1), 1);
        assert!(FrameEncoder::for_output(&rtp_in).is_err());
        let mut p = MediaPipeline::new(rtp_in).unwrap();
        assert!(p.handle_encoded(Instant::ZERO, &[0; 160]).is_err());
        assert_eq!(p.encoder_key(), None);
        let mut to_pcm = pipeline(
            Endpoint::Pcm(SampleRate::HZ_16000),
            Endpoint::Pcm(SampleRate::HZ_8000),
        );
        assert!(to_pcm.handle_encoded(Instant::ZERO, &[0; 160]).is_err());
        let mut l = MediaPipeline::new(listener(PCMU)).unwrap();
        assert!(l.handle_encoded(Instant::ZERO, &[0; 1489]).is_err());
        assert!(l.handle_encoded(Instant::ZERO, &[0; 160]).is_ok());
        assert_eq!(l.poll_packet().map(|o| o.bytes.len()), Some(172));
        assert_eq!(
            FrameEncoder::new(SampleRate::HZ_48000, PCMU, OpusEncoderConfig::default())
                .unwrap()
                .encode(&[0; 960])
                .unwrap()
                .len(),
            160
        );
    }

    #[test]
    fn garbage_payloads_are_concealed_not_fatal() {
        let mut p = pipeline(Endpoint::Rtp(opus(111)), Endpoint::Rtp(PCMU));
        let mut rng = SeededRng::new(5);
        for i in 0..200u16 {
            let len = (rng.next_u32() % 300) as usize;
            let payload: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
            let _ = p.handle_rtp(
                Instant::ZERO,
                &packet(
                    PayloadType::new(111).unwrap(),
                    i,
                    i as u32 * 960,
                    1,
                    false,
                    &payload,
                ),
            );
            drain(&mut p);
        }
        assert!(p.stats().decode_errors > 0);
        assert!(p.stats().packets_out > 0);
    }
}
