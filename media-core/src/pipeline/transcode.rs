//! Transcoding: decode (with PLC/FEC on gaps), resample, reframe to 20 ms, encode.
//!
//! Packets are decoded on arrival and timing is carried through: output timestamps
//! follow input timestamps, so gaps (silence suppression, DTX) stay gaps with a
//! marker at the next talkspurt, and losses up to 120 ms are concealed so the far
//! end keeps a continuous stream. Through the jitter buffer, output timestamps
//! follow the playout clock instead: a pause of that clock (a stall waited out)
//! becomes a timestamp jump with the marker, never a lasting delay at the far end.

use std::collections::VecDeque;

use super::fifo::{PacketRing, PcmFifo, SLOT};
use super::tap::Tap;
use super::{
    EncoderKey, Endpoint, OUTPUT_PTIME, PipelineConfig, PipelineError, PipelineEvent,
    PipelineStats, RtpFormat, push_event, receive_dtmf,
};
use crate::codec::{AudioDecoder, AudioEncoder, Codec, OpusEncoderConfig, opus};
use crate::dtmf::{DtmfReceiver, DtmfSender, EventPacket, TelephoneEvent};
use crate::jitter::{InsertOutcome, JitterStats, Playout};
use crate::resample::Resampler;
use crate::rtp::{
    FIXED_HEADER_LEN, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, SeqUnwrapper, Ssrc,
    TimestampUnwrapper,
};
use crate::time::Instant;
use crate::time::{ClockRate, Millis, SampleRate};

/// Longest loss that is concealed; longer gaps restart the stream with a marker.
const MAX_CONCEAL: Millis = Millis(120);
/// Packets further behind than this may mean a restarted sender (RFC 3550 A.1).
const MAX_MISORDER: i64 = 100;
/// Decoded audio is resampled in chunks of at most this many samples.
const CHUNK: usize = 960;
/// PCM held between decode and encode (or until a PCM consumer polls).
const FIFO: Millis = Millis(240);

#[derive(Debug)]
struct RtpIn {
    format: RtpFormat,
    decoder: AudioDecoder,
    clock: ClockRate,
    source: Option<Ssrc>,
    seq: SeqUnwrapper,
    ts: TimestampUnwrapper,
    /// Next expected (extended sequence, extended timestamp).
    expected: Option<(i64, i64)>,
    /// A packet far behind the stream: a restart if the next one follows it.
    restart_probe: Option<u16>,
    dtmf_rx: DtmfReceiver,
}

/// How received audio reaches the decoder.
#[derive(Debug)]
enum Front {
    /// Decoded on arrival, timing carried through (the far end buffers).
    Direct(RtpIn),
    /// Through the adaptive jitter buffer, played out on its clock.
    Jitter {
        format: RtpFormat,
        playout: Box<Playout>,
        dtmf_rx: DtmfReceiver,
        /// When the last frame was played out.
        played: Option<Instant>,
        /// How far the playout clock has run ahead of the wall clock (playing a
        /// backlog early), up to a frame: a later pause first uses it up.
        lead: std::time::Duration,
    },
}

#[derive(Debug)]
struct RtpOut {
    format: RtpFormat,
    encoder: AudioEncoder,
    clock: ClockRate,
    ssrc: Ssrc,
    seq: u16,
    /// Timestamp of the frame at the head of the FIFO.
    ts: u32,
    marker: bool,
    frame_ticks: u32,
    dtmf_tx: Option<DtmfSender>,
    /// (input extended timestamp, output timestamp) of the current segment start.
    anchor: Option<(i64, u32)>,
}

/// Everything after the decoder: resampler, reframing FIFO, encoder and packets.
#[derive(Debug)]
struct Back {
    /// Rate of the decoded (or PCM input) audio.
    input_rate: SampleRate,
    output: Option<RtpOut>,
    resampler: Resampler,
    fifo: PcmFifo,
    frame: usize,
    ring: Option<PacketRing>,
    muted: bool,
    res_buf: Vec<i16>,
    frame_buf: Vec<i16>,
    /// A copy of each frame encoded, for a reader on the call clock.
    tap: Option<Tap>,
}

/// The Opus settings of an encoder for `format` taking PCM at `enc_rate`:
/// `opus` at that rate, narrowed to the receiver's `fmtp`.
pub(super) fn encoder_config(
    format: &RtpFormat,
    enc_rate: SampleRate,
    opus: OpusEncoderConfig,
) -> OpusEncoderConfig {
    let opus = OpusEncoderConfig {
        sample_rate: enc_rate,
        ..opus
    };
    match &format.opus {
        Some(fmtp) => opus.toward(fmtp),
        None => opus,
    }
}

#[derive(Debug)]
pub(crate) struct Transcode {
    input: Option<Front>,
    dec_buf: Vec<i16>,
    back: Back,
}

impl Transcode {
    /// Moves the first packet's timestamp on (before anything was sent).
    pub(crate) fn shift_start(&mut self, ticks: u32) {
        if let Some(o) = self.back.output.as_mut() {
            o.ts = o.ts.wrapping_add(ticks);
        }
    }

    /// The sequence number and timestamp of the next packet out.
    pub(crate) fn next_output(&self) -> Option<(u16, u32)> {
        self.back.output.as_ref().map(|o| (o.seq, o.ts))
    }

    pub(crate) fn new(config: &PipelineConfig, seq: u16, ts: u32) -> Result<Self, PipelineError> {
        // Pick the PCM rates: G.711 is 8 kHz; Opus meets the other side's rate so
        // libopus does the resampling for free.
        let (dec_rate, input) = match config.input {
            Endpoint::Rtp(f) => {
                let toward = match config.output {
                    Endpoint::Rtp(o) => o.codec.natural_rate(),
                    Endpoint::Pcm(r) => r,
                };
                let rate = f.codec.pcm_rate_toward(toward);
                let decoder = AudioDecoder::new(f.codec, rate)?;
                let front = match config.jitter {
                    Some(mut j) => {
                        j.clock = f.codec.clock_rate();
                        Front::Jitter {
                            format: f,
                            playout: Box::new(Playout::new(j, decoder)),
                            dtmf_rx: DtmfReceiver::new(),
                            played: None,
                            lead: std::time::Duration::ZERO,
                        }
                    }
                    None => Front::Direct(RtpIn {
                        format: f,
                        decoder,
                        clock: f.codec.clock_rate(),
                        source: None,
                        seq: SeqUnwrapper::new(),
                        ts: TimestampUnwrapper::new(),
                        expected: None,
                        restart_probe: None,
                        dtmf_rx: DtmfReceiver::new(),
                    }),
                };
                (rate, Some(front))
            }
            Endpoint::Pcm(r) => (r, None),
        };
        let enc_rate = match config.output {
            Endpoint::Rtp(f) => f.codec.pcm_rate_toward(dec_rate),
            Endpoint::Pcm(r) => r,
        };
        let output = match config.output {
            Endpoint::Rtp(f) => {
                let clock = f.codec.clock_rate();
                Some(RtpOut {
                    format: f,
                    encoder: AudioEncoder::new(f.codec, encoder_config(&f, enc_rate, config.opus))?,
                    clock,
                    ssrc: config.ssrc,
                    seq,
                    ts,
                    marker: true,
                    frame_ticks: clock.ticks_in(OUTPUT_PTIME),
                    dtmf_tx: f.telephone_event.map(|_| DtmfSender::new(clock, 10)),
                    anchor: None,
                })
            }
            Endpoint::Pcm(_) => None,
        };
        let resampler = Resampler::new(dec_rate, enc_rate);
        let frame = enc_rate.samples_in(OUTPUT_PTIME);
        Ok(Transcode {
            input,
            dec_buf: vec![0; SampleRate::HZ_48000.samples_in(Millis(120))],
            back: Back {
                input_rate: dec_rate,
                ring: output.as_ref().map(|_| PacketRing::new(8)),
                output,
                fifo: PcmFifo::new(enc_rate.samples_in(FIFO)),
                frame,
                muted: false,
                res_buf: vec![0; resampler.max_output(CHUNK)],
                frame_buf: vec![0; frame],
                tap: None,
                resampler,
            },
        })
    }

    /// Starts (or stops) copying each frame encoded for a tick reader.
    pub(crate) fn set_tap(&mut self, on: bool) {
        let b = &mut self.back;
        match (on, b.output.is_some()) {
            (true, true) if b.tap.is_none() => b.tap = Some(Tap::new(b.frame)),
            (false, _) => b.tap = None,
            _ => {}
        }
    }

    /// The rate of tapped frames.
    pub(crate) fn tap_rate(&self) -> Option<SampleRate> {
        let b = &self.back;
        b.tap.as_ref().map(|_| {
            SampleRate::new((b.frame as u32) * 1000 / OUTPUT_PTIME.0).unwrap_or(SampleRate::HZ_8000)
        })
    }

    /// This tick's tapped frame (see [`Tap::pop_tick`]).
    pub(crate) fn pop_tap(&mut self, out: &mut [i16]) -> Option<bool> {
        let b = &mut self.back;
        let frame = b.frame;
        let t = b.tap.as_mut()?;
        Some(out.len() >= frame && t.pop_tick(out))
    }

    /// The output's Opus encoder settings, if it encodes Opus.
    pub(crate) fn opus_encoder(&self) -> Option<&OpusEncoderConfig> {
        match &self.back.output.as_ref()?.encoder {
            AudioEncoder::Opus(e) => Some(e.config()),
            _ => None,
        }
    }

    /// Resampler delay plus encoder lookahead.
    pub(crate) fn delay_micros(&self) -> u64 {
        self.back.resampler.delay_micros()
            + self
                .back
                .output
                .as_ref()
                .map_or(0, |o| o.encoder.delay_micros())
    }

    pub(crate) fn set_muted(&mut self, muted: bool) {
        self.back.muted = muted;
    }

    pub(crate) fn ring(&mut self) -> Option<&mut PacketRing> {
        self.back.ring.as_mut()
    }

    pub(crate) fn frame_samples(&self) -> usize {
        if self.back.output.is_none() {
            self.back.frame
        } else {
            0
        }
    }

    pub(crate) fn dtmf_sender(&mut self) -> Option<&mut DtmfSender> {
        self.back.output.as_mut().and_then(|o| o.dtmf_tx.as_mut())
    }

    /// The jitter buffer's counters, in jitter mode.
    pub(crate) fn jitter_stats(&self) -> Option<&JitterStats> {
        match &self.input {
            Some(Front::Jitter { playout, .. }) => Some(playout.jitter().stats()),
            _ => None,
        }
    }

    /// When the jitter buffer wants its next frame pulled (never for one on an
    /// external clock: that is ticked).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.input {
            Some(Front::Jitter { playout, .. }) if !playout.jitter().config().external_clock => {
                playout.jitter().poll_timeout()
            }
            _ => None,
        }
    }

    /// Plays out exactly one frame at `now` (jitter mode on an external clock).
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        stats: &mut PipelineStats,
    ) -> Result<(), PipelineError> {
        let Transcode {
            input,
            dec_buf,
            back,
        } = self;
        let Some(Front::Jitter {
            playout, played, ..
        }) = input.as_mut()
        else {
            return Err(PipelineError::WrongInput(
                "tick needs RTP input through a jitter buffer",
            ));
        };
        if !playout.jitter().config().external_clock {
            return Err(PipelineError::WrongInput(
                "tick needs a jitter buffer with external_clock (else handle_timeout)",
            ));
        }
        *played = Some(now);
        let n = playout.pull(now, dec_buf);
        back.feed(&dec_buf[..n], stats);
        jitter_counters(playout, stats);
        Ok(())
    }

    /// Plays out every frame due by `now` (jitter mode on the buffer's own clock).
    pub(crate) fn handle_timeout(&mut self, now: Instant, stats: &mut PipelineStats) {
        let Transcode {
            input,
            dec_buf,
            back,
        } = self;
        let Some(Front::Jitter {
            playout,
            played,
            lead,
            ..
        }) = input.as_mut()
        else {
            return;
        };
        if playout.jitter().config().external_clock {
            return;
        }
        let frame = std::time::Duration::from_millis(playout.jitter().config().frame.0 as u64);
        // A frame per due time; a driver that woke late catches up by a few.
        for _ in 0..4 {
            match playout.jitter().poll_timeout() {
                Some(due) if due <= now => {}
                _ => break,
            }
            // The buffer paused its clock (waiting out a stall, or the task was
            // starved): the output's timestamps jump across the pause, so the far
            // end sees a gap rather than every later packet late (RFC 3550 §5.1:
            // the timestamp follows the sampling instant). Steering (2 ms a frame,
            // 10 in silence) stays inside the stream, so clock drift never jumps.
            if let Some(prev) = *played {
                let nominal = prev + frame;
                if now < nominal {
                    *lead = (*lead + (nominal - now)).min(frame);
                } else {
                    let late = now.saturating_duration_since(nominal);
                    let pause = late.saturating_sub(*lead);
                    *lead = lead.saturating_sub(late);
                    if pause > frame / 2 {
                        back.skip(pause, stats);
                    }
                }
            }
            *played = Some(now);
            let n = playout.pull(now, dec_buf);
            back.feed(&dec_buf[..n], stats);
        }
        jitter_counters(playout, stats);
    }

    /// Packetizes one 20 ms payload encoded elsewhere (PCM input, RTP output).
    pub(crate) fn handle_encoded(
        &mut self,
        payload: &[u8],
        stats: &mut PipelineStats,
    ) -> Result<(), PipelineError> {
        let b = &mut self.back;
        let (None, Some(out), Some(ring)) = (&self.input, b.output.as_mut(), b.ring.as_mut())
        else {
            return Err(PipelineError::WrongInput(
                "encoded audio needs a PCM-input, RTP-output pipeline",
            ));
        };
        if payload.len() > SLOT - FIXED_HEADER_LEN {
            return Err(PipelineError::WrongInput("payload larger than a packet"));
        }
        stats.packets_in += 1;
        stats.bytes_in += payload.len() as u64;
        if b.muted {
            b.frame_buf.fill(0);
            emit_frame(out, ring, Audio::Pcm(&b.frame_buf), stats);
        } else {
            emit_frame(out, ring, Audio::Encoded(payload), stats);
        }
        Ok(())
    }

    /// What a shared encoder must be to stand in for this pipeline's own (PCM
    /// input, RTP output).
    pub(crate) fn encoder_key(&self) -> Option<EncoderKey> {
        let out = self.back.output.as_ref()?;
        if self.input.is_some() {
            return None;
        }
        Some(EncoderKey {
            input_rate: self.back.input_rate,
            codec: out.format.codec,
            opus: self.opus_encoder().copied(),
        })
    }

    pub(crate) fn handle_rtp(
        &mut self,
        now: Instant,
        packet: &RtpPacket,
        stats: &mut PipelineStats,
        events: &mut VecDeque<PipelineEvent>,
    ) -> Result<(), PipelineError> {
        let Transcode {
            input,
            dec_buf,
            back,
        } = self;
        let input = match input.as_mut() {
            None => return Err(PipelineError::WrongInput("RTP into a PCM-input pipeline")),
            Some(Front::Jitter {
                format,
                playout,
                dtmf_rx,
                ..
            }) => {
                let h = packet.header();
                if Some(h.payload_type) == format.telephone_event {
                    stats.packets_in += 1;
                    receive_dtmf(dtmf_rx, packet.payload_bytes(), h.timestamp, stats, events);
                } else if h.payload_type == format.payload_type {
                    stats.packets_in += 1;
                    stats.bytes_in += packet.payload_bytes().len() as u64;
                    if playout.insert(now, packet) == InsertOutcome::Resync {
                        push_event(events, PipelineEvent::SourceChanged { ssrc: h.ssrc });
                    }
                } else {
                    stats.unknown_payload_type += 1;
                }
                return Ok(());
            }
            Some(Front::Direct(input)) => input,
        };
        let h = packet.header();
        let payload = packet.payload_bytes();
        if Some(h.payload_type) == input.format.telephone_event {
            stats.packets_in += 1;
            receive_dtmf(&mut input.dtmf_rx, payload, h.timestamp, stats, events);
            return Ok(());
        }
        if h.payload_type != input.format.payload_type {
            stats.unknown_payload_type += 1;
            return Ok(());
        }
        stats.packets_in += 1;
        stats.bytes_in += payload.len() as u64;
        if input.source != Some(h.ssrc) {
            if input.source.is_some() {
                push_event(events, PipelineEvent::SourceChanged { ssrc: h.ssrc });
            }
            input.source = Some(h.ssrc);
            input.seq.reset();
            input.ts.reset();
            input.expected = None;
        }
        // RFC 3550 A.1: a packet more than MAX_MISORDER behind is late, unless the
        // next one follows it: the sender started over with the same SSRC.
        if let Some((eseq, _)) = input.expected
            && eseq - input.seq.peek(h.sequence_number.0) > MAX_MISORDER
        {
            let n = h.sequence_number.0;
            if input.restart_probe == Some(n.wrapping_sub(1)) {
                input.seq.reset();
                input.ts.reset();
                input.expected = None;
                input.restart_probe = None;
            } else {
                input.restart_probe = Some(n);
                stats.late += 1;
                return Ok(());
            }
        }
        let ext_seq = input.seq.peek(h.sequence_number.0);
        let ext_ts = input.ts.peek(h.timestamp.0);
        let mut restart = false;
        let mut conceal_ticks = 0i64;
        match input.expected {
            None => restart = true,
            Some((eseq, ets)) => {
                if ext_seq < eseq {
                    stats.late += 1;
                    return Ok(());
                }
                let lost = ext_seq - eseq;
                let gap = ext_ts - ets;
                let max = input.clock.ticks_in(MAX_CONCEAL) as i64;
                stats.lost += lost as u64;
                if gap != 0 && (lost == 0 || gap < 0 || gap > max) {
                    restart = true; // talkspurt, DTX, clock jump or long outage
                } else if lost > 0 {
                    conceal_ticks = gap;
                }
            }
        }
        input.seq.unwrap(h.sequence_number.0);
        input.ts.unwrap(h.timestamp.0);
        let in_clock = input.clock.0 as i64;
        if restart {
            back.restart_segment(ext_ts, in_clock);
        }
        let rate = back.input_rate.hz() as i64;
        let frame_in = back.input_rate.samples_in(OUTPUT_PTIME);
        if conceal_ticks > 0 {
            let quantum = rate / 400; // 2.5 ms: Opus PLC granularity
            let mut samples = (conceal_ticks * rate / in_clock) / quantum * quantum;
            let fec_samples =
                if matches!(input.decoder, AudioDecoder::Opus(_)) && opus::has_fec(payload) {
                    input
                        .decoder
                        .payload_samples(payload)
                        .map_or(0, |n| n as i64)
                        .min(samples)
                } else {
                    0
                };
            samples -= fec_samples;
            stats.concealed_ms += (samples * 1000 / rate) as u64;
            while samples > 0 {
                let n = (samples as usize).min(frame_in);
                let k = input.decoder.conceal(&mut dec_buf[..n]).unwrap_or(0);
                if k == 0 {
                    break;
                }
                back.feed(&dec_buf[..k], stats);
                samples -= k as i64;
            }
            if fec_samples > 0
                && let Ok(k) = input
                    .decoder
                    .recover(payload, &mut dec_buf[..fec_samples as usize])
            {
                stats.fec_recovered += 1;
                back.feed(&dec_buf[..k], stats);
            }
        }
        let n = match input.decoder.decode(payload, dec_buf) {
            Ok(n) => n,
            Err(_) => {
                // Bad payload: conceal one frame rather than leave a hole.
                stats.decode_errors += 1;
                input.decoder.conceal(&mut dec_buf[..frame_in]).unwrap_or(0)
            }
        };
        input.expected = Some((ext_seq + 1, ext_ts + n as i64 * in_clock / rate));
        back.feed(&dec_buf[..n], stats);
        Ok(())
    }

    pub(crate) fn handle_pcm(
        &mut self,
        pcm: &[i16],
        stats: &mut PipelineStats,
    ) -> Result<(), PipelineError> {
        if self.input.is_some() {
            return Err(PipelineError::WrongInput("PCM into an RTP-input pipeline"));
        }
        stats.packets_in += 1;
        stats.bytes_in += 2 * pcm.len() as u64;
        self.back.feed(pcm, stats);
        Ok(())
    }

    pub(crate) fn poll_frame(&mut self, out: &mut [i16]) -> Option<usize> {
        let b = &mut self.back;
        if b.output.is_some() || out.len() < b.frame || !b.fifo.pop_into(&mut out[..b.frame]) {
            return None;
        }
        if b.muted {
            out[..b.frame].fill(0);
        }
        Some(b.frame)
    }
}

/// Copies the jitter buffer's loss counters into the pipeline's.
fn jitter_counters(playout: &Playout, stats: &mut PipelineStats) {
    let j = playout.jitter().stats();
    stats.lost = j.lost;
    stats.late = j.late;
    stats.fec_recovered = j.fec_recovered;
    let clock = playout.jitter().config().clock.0 as u64;
    stats.concealed_ms = (j.concealed_ticks + j.underrun_ticks) * 1000 / clock;
}

impl Back {
    /// Starts a new output segment for input extended timestamp `ext_ts`: the
    /// partial frame is completed with silence and sent, the output timestamp jumps
    /// by the input's gap (never backwards), and the next packet gets the marker.
    fn restart_segment(&mut self, ext_ts: i64, in_clock: i64) {
        if self.output.is_none() {
            return;
        }
        let partial = self.fifo.len() % self.frame;
        if partial > 0 {
            self.fifo.push_silence(self.frame - partial);
        }
        self.drain_frames(&mut PipelineStats::default());
        let Some(out) = self.output.as_mut() else {
            return;
        };
        if let Some((a_in, a_out)) = out.anchor {
            let target =
                a_out.wrapping_add(((ext_ts - a_in) * out.clock.0 as i64 / in_clock) as u32);
            if (target.wrapping_sub(out.ts) as i32) > 0 {
                out.ts = target;
            }
        }
        out.anchor = Some((ext_ts, out.ts));
        out.marker = true;
        self.resampler.reset();
    }

    /// Moves the output timestamp on by `pause` of wall-clock time with nothing
    /// sent, and marks the next packet as the start of a talkspurt.
    fn skip(&mut self, pause: std::time::Duration, stats: &mut PipelineStats) {
        let Some(out) = self.output.as_mut() else {
            return;
        };
        let ticks = pause.as_micros() as u64 * out.clock.0 as u64 / 1_000_000;
        out.ts = out.ts.wrapping_add(ticks as u32);
        out.marker = true;
        stats.playout_pauses += 1;
    }

    /// Resamples `pcm` into the FIFO and encodes whole frames.
    fn feed(&mut self, pcm: &[i16], stats: &mut PipelineStats) {
        for chunk in pcm.chunks(CHUNK) {
            let m = self
                .resampler
                .process(chunk, &mut self.res_buf)
                .unwrap_or(0);
            stats.overflow_drops += self.fifo.push(&self.res_buf[..m]) as u64;
        }
        self.drain_frames(stats);
    }

    /// Encodes every whole frame in the FIFO (RTP outputs; PCM outputs are polled).
    fn drain_frames(&mut self, stats: &mut PipelineStats) {
        let (Some(out), Some(ring)) = (self.output.as_mut(), self.ring.as_mut()) else {
            return;
        };
        while self.fifo.pop_into(&mut self.frame_buf) {
            if self.muted {
                self.frame_buf.fill(0);
            }
            if let Some(t) = self.tap.as_mut() {
                t.push(&self.frame_buf);
            }
            emit_frame(out, ring, Audio::Pcm(&self.frame_buf), stats);
        }
    }
}

/// One 20 ms frame of audio for the output.
#[derive(Clone, Copy, Debug)]
enum Audio<'a> {
    /// PCM at the encoder's rate, to encode.
    Pcm(&'a [i16]),
    /// A payload encoded elsewhere (a shared `FrameEncoder`).
    Encoded(&'a [u8]),
}

/// Packetizes one 20 ms frame (or the DTMF events that replace it).
fn emit_frame(out: &mut RtpOut, ring: &mut PacketRing, audio: Audio, stats: &mut PipelineStats) {
    let ts = out.ts;
    out.ts = out.ts.wrapping_add(out.frame_ticks);
    if let (Some(tx), Some(te)) = (out.dtmf_tx.as_mut(), out.format.telephone_event) {
        let mut evs = [EventPacket {
            marker: false,
            timestamp: RtpTimestamp(0),
            event: TelephoneEvent {
                event: 0,
                end: false,
                volume: 0,
                duration: 0,
            },
        }; 3];
        let n = tx.tick(RtpTimestamp(ts), out.frame_ticks, &mut evs);
        for ev in &evs[..n] {
            let mut w = RtpWriter::new(te, SeqNo(out.seq), ev.timestamp, out.ssrc);
            w.marker = ev.marker;
            let mut payload = [0u8; 4];
            ev.event.write(&mut payload);
            let (slot, dropped) = ring.claim();
            if let Ok(len) = w.write_packet(&payload, slot) {
                ring.commit(len);
                out.seq = out.seq.wrapping_add(1);
                stats.overflow_drops += dropped as u64;
                stats.dtmf_packets_sent += 1;
                stats.packets_out += 1;
                stats.bytes_out += len as u64;
            }
        }
        if n > 0 {
            return;
        }
    }
    let mut w = RtpWriter::new(
        out.format.payload_type,
        SeqNo(out.seq),
        RtpTimestamp(ts),
        out.ssrc,
    );
    w.marker = out.marker;
    let (slot, dropped) = ring.claim();
    let Ok(h) = w.write(slot) else {
        return;
    };
    let len = match audio {
        Audio::Pcm(frame) => out.encoder.encode(frame, &mut slot[h..]),
        Audio::Encoded(payload) => match slot.get_mut(h..h + payload.len()) {
            Some(room) => {
                room.copy_from_slice(payload);
                Ok(payload.len())
            }
            None => return,
        },
    };
    let Ok(len) = len else {
        return;
    };
    if out.format.codec == Codec::Opus && len <= 2 {
        out.marker = true; // DTX: nothing to send; the next packet starts a talkspurt
        return;
    }
    ring.commit(h + len);
    out.seq = out.seq.wrapping_add(1);
    out.marker = false;
    stats.overflow_drops += dropped as u64;
    stats.packets_out += 1;
    stats.bytes_out += (h + len) as u64;
}
