//! Recordings of a call's media, on the call clock: each recording is two
//! listeners of the call's mix (channel 1 hears the customer, channel 2 what
//! the customer hears), read once per 20 ms tick. A tick always gives one
//! frame per channel, silence when nothing was heard, so hold, loss, DTX, SSRC
//! changes, re-INVITEs and parties coming and going never slide one channel
//! against the other, and the file's length is the call's.
//!
//! The frames go out through [`MediaSession::poll_record`] in order with the
//! recording's start, timeline notes (stamped with its offset) and stop; the
//! driver hands them to a writer off the media path.
//!
//! [`MediaSession::poll_record`]: super::MediaSession::poll_record

use std::time::Duration;

use media_core::SampleRate;
use media_core::record::FrameQueue;
use media_core::resample::Resampler;

use crate::contract::{Feed, PauseBehavior, RecordChannels, RecordNote, RecordSpec, RecordingId};

/// Most samples of one recording frame: 20 ms of 24 kHz stereo (a fork's
/// highest rate). The buffer given to [`super::MediaSession::poll_record`]
/// must hold this many.
pub const RECORD_FRAME_MAX: usize = 960;

/// Frames a recording keeps for the driver between two polls (it drains after
/// every input, so one or two wait at most).
const QUEUED: usize = 8;

/// What a call's recordings give the driver, in order per recording.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordOut {
    /// A recording starts: its file is opened.
    Started {
        /// The recording.
        id: RecordingId,
        /// How it is made.
        spec: RecordSpec,
    },
    /// Its next 20 ms: `samples` interleaved PCM16 at the spec's rate in the
    /// buffer given to `poll_record`.
    Frame {
        /// The recording.
        id: RecordingId,
        /// Samples written into the buffer (one per channel per instant).
        samples: usize,
    },
    /// A timeline entry at `at` into the recording.
    Note {
        /// The recording.
        id: RecordingId,
        /// Offset in the file.
        at: Duration,
        /// What happened.
        note: RecordNote,
    },
    /// The recording is over: no frame follows.
    Stopped {
        /// The recording.
        id: RecordingId,
        /// Its length.
        duration: Duration,
    },
}

/// Where a recording's channel is heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Nothing to hear: silence.
    Silent,
    /// Its slot of the call's mix (several feeds, or a feed nobody decodes).
    Mix,
    /// The one feed it hears, as the pipeline toward this listener leg
    /// decoded it anyway (a transcoder) or decodes it by table (a G.711
    /// relay): its tap.
    Tap(crate::contract::LegKey),
}

/// One recording in a media session.
#[derive(Debug)]
pub(crate) struct Recording {
    pub(crate) id: RecordingId,
    pub(crate) spec: RecordSpec,
    /// What channel 1 and 2 hear.
    pub(crate) channels: [Vec<Feed>; 2],
    pub(crate) paused: Option<PauseBehavior>,
    /// Frames in the file so far (its time).
    frames: u64,
    /// Stopped: given no more frames, gone once its last one is polled.
    pub(crate) stopped: bool,
    queue: FrameQueue,
    /// Where each channel's audio comes from (the session decides).
    pub(crate) sources: [Source; 2],
    /// From a channel's rate to the file's, when they differ.
    resamplers: [Option<Resampler>; 2],
    /// A channel at the file's rate, and the frame as written.
    chan: [Vec<i16>; 2],
    frame: Vec<i16>,
}

impl Recording {
    pub(crate) fn new(id: RecordingId, spec: RecordSpec) -> Recording {
        let rate = file_rate(&spec);
        let per = (rate.hz() / 50) as usize;
        let n = per * spec.channels.count();
        Recording {
            id,
            spec,
            channels: [Vec::new(), Vec::new()],
            paused: None,
            frames: 0,
            stopped: false,
            queue: FrameQueue::new(n, QUEUED),
            sources: [Source::Silent; 2],
            resamplers: [None, None],
            chan: [vec![0; per * 2], vec![0; per * 2]],
            frame: vec![0; n],
        }
    }

    pub(crate) fn rate(&self) -> SampleRate {
        file_rate(&self.spec)
    }

    /// Its offset now: the frames in the file.
    pub(crate) fn at(&self) -> Duration {
        Duration::from_millis(self.frames * 20)
    }

    /// One tick: channel 1 and 2 as heard, each at its rate (`None`:
    /// silence). Returns whether a frame went into the file (not when paused
    /// to skip, or stopped).
    pub(crate) fn tick(&mut self, ch: [Option<(&[i16], SampleRate)>; 2]) -> bool {
        if self.stopped || self.paused == Some(PauseBehavior::Skip) {
            return false;
        }
        let file = self.rate();
        let per = (file.hz() / 50) as usize;
        for (c, input) in ch.into_iter().enumerate() {
            let out = &mut self.chan[c];
            // A channel heard at another rate goes through its resampler (kept
            // while the rate stays, so its filter runs on without a click).
            let n = match input {
                Some((pcm, rate)) if rate == file => {
                    let n = pcm.len().min(out.len());
                    out[..n].copy_from_slice(&pcm[..n]);
                    n
                }
                Some((pcm, rate)) => {
                    let r = match &mut self.resamplers[c] {
                        Some(r) if r.from_rate() == rate => r,
                        slot => slot.insert(Resampler::new(rate, file)),
                    };
                    r.process(pcm, out).unwrap_or(0)
                }
                None => {
                    if let Some(r) = self.resamplers[c].as_mut() {
                        // Silence through the filter keeps its history in step.
                        let zeros = [0i16; 320];
                        let len = ((r.from_rate().hz() / 50) as usize).min(zeros.len());
                        r.process(&zeros[..len], out).unwrap_or(0)
                    } else {
                        0
                    }
                }
            };
            out[n.min(per)..per].fill(0);
            if self.paused.is_some() {
                out[..per].fill(0);
            }
        }
        match self.spec.channels {
            RecordChannels::Mono => {
                for i in 0..per {
                    self.frame[i] = self.chan[0][i].saturating_add(self.chan[1][i]);
                }
            }
            RecordChannels::Customer => self.frame[..per].copy_from_slice(&self.chan[0][..per]),
            RecordChannels::Others => self.frame[..per].copy_from_slice(&self.chan[1][..per]),
            _ => {
                for i in 0..per {
                    self.frame[2 * i] = self.chan[0][i];
                    self.frame[2 * i + 1] = self.chan[1][i];
                }
            }
        }
        self.queue.push(&self.frame);
        self.frames += 1;
        true
    }

    /// The oldest frame not yet given to the driver, into `out`.
    pub(crate) fn pop(&mut self, out: &mut [i16]) -> Option<usize> {
        let n = self.frame.len().min(out.len());
        self.queue.pop_into(&mut out[..n]).then_some(n)
    }

    pub(crate) fn has_frames(&self) -> bool {
        !self.queue.is_empty()
    }
}

/// The file's rate: 8 or 16 kHz.
/// The file's (or fork's) rate: 8, 16 or 24 kHz.
fn file_rate(spec: &RecordSpec) -> SampleRate {
    match spec.rate {
        r if r > 16_000 => SampleRate::HZ_24000,
        r if r > 8000 => SampleRate::HZ_16000,
        _ => SampleRate::HZ_8000,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::BytesMut;
    use media_core::Instant;
    use media_core::analysis::{ToneGenerator, goertzel_level_db, rms_db};
    use media_core::codec::Codec;
    use media_core::codec::g711::ulaw_encode;
    use media_core::pipeline::RtpFormat;
    use media_core::rtp::{PayloadType, RtpTimestamp, RtpWriter, SeqNo, Ssrc};

    use super::*;
    use crate::contract::{CallId, LegKey, MediaCommand, RecordFormat};
    use crate::media::{MediaConfig, MediaSession};

    const A: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)),
        4000,
    );
    const B: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2)),
        4000,
    );

    /// A customer (leg 0, port 20000, plays `hz[0]`) and an agent (leg 1,
    /// port 20002, plays `hz[1]`) relayed to each other, both PCMU.
    struct Call {
        s: MediaSession,
        now: Instant,
        seq: u16,
        tones: [ToneGenerator; 2],
        /// The file as the driver would write it: interleaved frames.
        file: Vec<i16>,
        notes: Vec<(Duration, String)>,
        stopped: Option<Duration>,
        started: bool,
        agent_pcma: bool,
    }

    fn spec(channels: RecordChannels) -> RecordSpec {
        RecordSpec {
            channels,
            format: RecordFormat::Wav,
            rate: 8000,
            call: CallId(1),
            number: None,
            from: "+15550001".into(),
            to: "+15550002".into(),
            source: "api".into(),
            fork: None,
        }
    }

    const ID: RecordingId = RecordingId(0xabc);

    impl Call {
        fn new(hz: [f64; 2]) -> Call {
            Call::with(hz, Codec::Pcmu)
        }

        /// The agent's leg speaks `agent` (PCMU: relayed; PCMA: transcoded
        /// both ways). The test always sends PCMU packets from both; a PCMA
        /// leg's packets are re-labelled below.
        fn with(hz: [f64; 2], agent: Codec) -> Call {
            let mut s = MediaSession::new(MediaConfig::new(None, 3));
            let pcmu = RtpFormat::new(Codec::Pcmu, PayloadType::PCMU);
            let other = match agent {
                Codec::Pcma => RtpFormat::new(Codec::Pcma, PayloadType::PCMA),
                _ => pcmu,
            };
            for (leg, port, remote, format) in [(0, 20000, A, pcmu), (1, 20002, B, other)] {
                s.handle_command(
                    Instant::ZERO,
                    MediaCommand::AddRtp {
                        leg: LegKey(leg),
                        local_port: port,
                        remote: Some(remote),
                        format,
                        rtcp_mux: false,
                        latch_from: None,
                    },
                );
            }
            for c in MediaCommand::connect(LegKey(0), LegKey(1)) {
                s.handle_command(Instant::ZERO, c);
            }
            Call {
                s,
                now: Instant::ZERO,
                seq: 0,
                tones: hz.map(|f| ToneGenerator::new(8000, &[(f, 6000.0)])),
                file: Vec::new(),
                notes: Vec::new(),
                stopped: None,
                started: false,
                agent_pcma: agent == Codec::Pcma,
            }
        }

        fn record(&mut self, channels: RecordChannels) {
            self.cmd(MediaCommand::RecordStart {
                id: ID,
                spec: Box::new(spec(channels)),
            });
            self.cmd(MediaCommand::RecordFeeds {
                id: ID,
                channels: [vec![Feed::leg(LegKey(0))], vec![Feed::leg(LegKey(1))]],
            });
        }

        fn cmd(&mut self, c: MediaCommand) {
            self.s.handle_command(self.now, c);
            self.drain();
        }

        fn drain(&mut self) {
            let mut pcm = [0i16; RECORD_FRAME_MAX];
            while let Some(o) = self.s.poll_record(&mut pcm) {
                match o {
                    RecordOut::Started { id, .. } => {
                        assert_eq!(id, ID);
                        self.started = true;
                    }
                    RecordOut::Frame { samples, .. } => self.file.extend(&pcm[..samples]),
                    RecordOut::Note { at, note, .. } => self.notes.push((at, note.event)),
                    RecordOut::Stopped { duration, .. } => self.stopped = Some(duration),
                }
            }
            while self.s.poll_transmit().is_some() {}
        }

        /// `ms` of both sides talking (`who` says which send), 20 ms a packet.
        fn talk(&mut self, ms: u64, who: [bool; 2]) {
            for _ in 0..ms / 20 {
                for (i, port, from) in [(0, 20000, A), (1, 20002, B)] {
                    let mut pcm = [0i16; 160];
                    self.tones[i].fill(&mut pcm);
                    if !who[i] {
                        continue;
                    }
                    let mut payload = [0u8; 160];
                    let pt = if i == 1 && self.agent_pcma {
                        media_core::codec::g711::alaw_encode(&pcm, &mut payload);
                        PayloadType::PCMA
                    } else {
                        ulaw_encode(&pcm, &mut payload);
                        PayloadType::PCMU
                    };
                    let w = RtpWriter::new(
                        pt,
                        SeqNo(self.seq),
                        RtpTimestamp(u32::from(self.seq) * 160),
                        Ssrc(10 + i as u32),
                    );
                    let mut b = BytesMut::zeroed(200);
                    let n = w.write_packet(&payload, &mut b).unwrap();
                    b.truncate(n);
                    self.s.handle_rtp(self.now, port, from, b);
                }
                self.seq = self.seq.wrapping_add(1);
                let end = self.now + Duration::from_millis(20);
                while let Some(t) = self.s.poll_timeout().filter(|t| *t <= end) {
                    self.now = t.max(self.now);
                    self.s.handle_timeout(self.now);
                    self.drain();
                }
                self.now = end;
                self.drain();
            }
        }

        fn channel(&self, c: usize, from_ms: u64, to_ms: u64) -> Vec<i16> {
            let (a, b) = (from_ms as usize * 8, to_ms as usize * 8);
            self.file[2 * a..2 * b]
                .iter()
                .skip(c)
                .step_by(2)
                .copied()
                .collect()
        }
    }

    #[test]
    fn channel_one_is_the_customer_and_channel_two_what_the_customer_hears() {
        let mut c = Call::new([440.0, 1000.0]);
        c.talk(200, [true, true]);
        c.record(RecordChannels::Dual);
        assert!(c.started);
        c.talk(2000, [true, true]);
        c.cmd(MediaCommand::RecordStop { id: ID });
        assert_eq!(c.stopped, Some(Duration::from_millis(2000)));
        // Exactly one frame per tick: 2 s of stereo at 8 kHz.
        assert_eq!(c.file.len(), 2 * 16_000);
        // After the jitter buffers' start, each channel holds its own party only.
        let (one, two) = (c.channel(0, 200, 2000), c.channel(1, 200, 2000));
        let lvl = |x: &[i16], f| goertzel_level_db(x, 8000, f);
        assert!(lvl(&one, 440.0) - lvl(&one, 1000.0) > 40.0, "channel 1");
        assert!(lvl(&two, 1000.0) - lvl(&two, 440.0) > 40.0, "channel 2");
        // The relay goes on: the recording's decoders are beside it.
        assert!(c.s.stats().relayed > 0);
        assert_eq!(c.s.recordings(), 0);
    }

    #[test]
    fn a_transcoded_call_is_recorded_from_its_transcoders_without_a_second_decode() {
        let mut c = Call::with([440.0, 1000.0], Codec::Pcma);
        c.talk(200, [true, true]);
        c.record(RecordChannels::Dual);
        c.talk(2000, [true, true]);
        // Both channels read the transcoders' taps: no mix, no decoder more.
        assert_eq!(c.s.mixing(), None);
        c.cmd(MediaCommand::RecordStop { id: ID });
        assert_eq!(c.file.len(), 2 * 16_000);
        let (one, two) = (c.channel(0, 200, 2000), c.channel(1, 200, 2000));
        let lvl = |x: &[i16], f| goertzel_level_db(x, 8000, f);
        assert!(lvl(&one, 440.0) - lvl(&one, 1000.0) > 40.0, "channel 1");
        assert!(lvl(&two, 1000.0) - lvl(&two, 440.0) > 40.0, "channel 2");
        assert!(lvl(&one, 440.0) > -20.0 && lvl(&two, 1000.0) > -20.0);
        // The taps keep a frame of cushion: at most the first 60 ms is silence.
        let start = c.channel(0, 0, 200);
        let first = start.iter().position(|s| s.unsigned_abs() > 1000).unwrap();
        assert!(first <= 8 * 60, "channel 1 starts at {} ms", first / 8);
        assert!(c.s.stats().transcoded > 0);
    }

    #[test]
    fn a_pause_keeps_time_with_silence_or_cuts_it_and_the_timeline_says_where() {
        for (behavior, len_ms) in [(PauseBehavior::Silence, 3000), (PauseBehavior::Skip, 2000)] {
            let mut c = Call::new([440.0, 1000.0]);
            c.record(RecordChannels::Dual);
            c.talk(1000, [true, true]);
            c.cmd(MediaCommand::RecordPause { id: ID, behavior });
            c.talk(1000, [true, true]);
            c.cmd(MediaCommand::RecordResume { id: ID });
            c.talk(1000, [true, true]);
            c.cmd(MediaCommand::RecordStop { id: ID });
            assert_eq!(c.file.len(), 2 * 8 * len_ms, "{behavior:?}");
            let at = Duration::from_millis(1000);
            let resumed = if behavior == PauseBehavior::Skip {
                at
            } else {
                at * 2
            };
            assert_eq!(
                c.notes,
                [(at, "paused".to_string()), (resumed, "resumed".to_string())]
            );
            if behavior == PauseBehavior::Silence {
                for ch in 0..2 {
                    assert!(rms_db(&c.channel(ch, 1000, 2000)) < -90.0, "{ch} paused");
                    assert!(rms_db(&c.channel(ch, 2100, 3000)) > -20.0, "{ch} resumed");
                }
            }
        }
    }

    #[test]
    fn silence_of_the_right_length_fills_what_nobody_said_and_mono_sums_both() {
        let mut c = Call::new([440.0, 1000.0]);
        c.record(RecordChannels::Mono);
        c.talk(1000, [true, true]);
        // The customer stops sending for a second (hold from its side, a loss).
        c.talk(1000, [false, true]);
        c.talk(1000, [true, true]);
        c.cmd(MediaCommand::RecordStop { id: ID });
        assert_eq!(c.file.len(), 8 * 3000);
        let lvl = |x: &[i16], f| goertzel_level_db(x, 8000, f);
        let both = &c.file[8 * 200..8 * 1000];
        assert!((lvl(both, 440.0) - lvl(both, 1000.0)).abs() < 3.0);
        let gap = &c.file[8 * 1300..8 * 2000];
        assert!(lvl(gap, 1000.0) - lvl(gap, 440.0) > 30.0);
    }
}
