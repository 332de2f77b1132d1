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

/// Most samples of one recording frame: 20 ms of 16 kHz stereo. The buffer
/// given to [`super::MediaSession::poll_record`] must hold this many.
pub const RECORD_FRAME_MAX: usize = 640;

/// Frames a recording keeps for the driver between two polls (it drains after
/// every input, so one or two wait at most).
const QUEUED: usize = 50;

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
    /// From the mix rate to the file's, per channel, when they differ.
    resamplers: Option<[Resampler; 2]>,
    /// A channel at the file's rate, and the frame as written.
    chan: [Vec<i16>; 2],
    frame: Vec<i16>,
}

impl Recording {
    pub(crate) fn new(id: RecordingId, spec: RecordSpec) -> Recording {
        let rate = file_rate(&spec);
        let per = (rate.hz() / 50) as usize;
        let n = match spec.channels {
            RecordChannels::Mono => per,
            _ => 2 * per,
        };
        Recording {
            id,
            spec,
            channels: [Vec::new(), Vec::new()],
            paused: None,
            frames: 0,
            stopped: false,
            queue: FrameQueue::new(n, QUEUED),
            resamplers: None,
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

    /// The mix's rate changed (or the mix is new): resamplers to match.
    pub(crate) fn mix_rate(&mut self, mix: SampleRate) {
        let want = mix != self.rate();
        let have = self.resamplers.as_ref().map(|r| r[0].from_rate());
        if want && have != Some(mix) {
            self.resamplers = Some([
                Resampler::new(mix, self.rate()),
                Resampler::new(mix, self.rate()),
            ]);
        } else if !want {
            self.resamplers = None;
        }
    }

    /// One tick: channel 1 and 2 as the mix gave them (`None`: silence), at
    /// the mix's rate. Returns whether a frame went into the file (not when
    /// paused to skip, or stopped).
    pub(crate) fn tick(&mut self, ch: [Option<&[i16]>; 2]) -> bool {
        if self.stopped || self.paused == Some(PauseBehavior::Skip) {
            return false;
        }
        let per = (self.rate().hz() / 50) as usize;
        for (c, input) in ch.into_iter().enumerate() {
            let out = &mut self.chan[c];
            let silent = self.paused.is_some();
            let n = match (input, self.resamplers.as_mut()) {
                (Some(pcm), Some(r)) => r[c].process(pcm, out).unwrap_or(0),
                (Some(pcm), None) => {
                    let n = pcm.len().min(out.len());
                    out[..n].copy_from_slice(&pcm[..n]);
                    n
                }
                (None, Some(r)) => {
                    // Silence through the filter keeps its history in step.
                    let zeros = [0i16; 320];
                    let len = (r[c].from_rate().hz() / 50) as usize;
                    r[c].process(&zeros[..len.min(320)], out).unwrap_or(0)
                }
                (None, None) => 0,
            };
            out[n.min(per)..per].fill(0);
            if silent {
                out[..per].fill(0);
            }
        }
        match self.spec.channels {
            RecordChannels::Mono => {
                for i in 0..per {
                    self.frame[i] = self.chan[0][i].saturating_add(self.chan[1][i]);
                }
            }
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
fn file_rate(spec: &RecordSpec) -> SampleRate {
    if spec.rate > 8000 {
        SampleRate::HZ_16000
    } else {
        SampleRate::HZ_8000
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
        }
    }

    const ID: RecordingId = RecordingId(0xabc);

    impl Call {
        fn new(hz: [f64; 2]) -> Call {
            let mut s = MediaSession::new(MediaConfig::new(None, 3));
            let pcmu = RtpFormat::new(Codec::Pcmu, PayloadType::PCMU);
            for (leg, port, remote) in [(0, 20000, A), (1, 20002, B)] {
                s.handle_command(
                    Instant::ZERO,
                    MediaCommand::AddRtp {
                        leg: LegKey(leg),
                        local_port: port,
                        remote: Some(remote),
                        format: pcmu,
                        rtcp_mux: false,
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
                    ulaw_encode(&pcm, &mut payload);
                    let w = RtpWriter::new(
                        PayloadType::PCMU,
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
