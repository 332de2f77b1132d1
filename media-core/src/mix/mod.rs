//! Many-to-many audio on one call clock: conferences, supervisor listen, whisper
//! and barge, as one mixer with a who-hears-whom matrix.
//!
//! A [`Mixer`] has a fixed number of party slots, each both a source and a
//! listener, at one sample rate, in 20 ms frames ([`FRAME`]). Every tick of the
//! call clock the caller
//!
//! 1. gives each source's frame ([`Mixer::input_mut`] or [`Mixer::set_input`]),
//!    or nothing: a source not given this tick is absent (held, no media, not yet
//!    joined) and is exactly silence;
//! 2. calls [`Mixer::mix`];
//! 3. reads each listener's frame with [`Mixer::output`], and which listeners
//!    got the same frame with [`Mixer::output_group`].
//!
//! ```
//! use media_core::mix::{Gain, Mixer, MixerConfig, OutputGroup};
//! use media_core::SampleRate;
//!
//! let mut mixer = Mixer::new(MixerConfig::new(SampleRate::HZ_16000, 4)).unwrap();
//! // Slot 3 is a supervisor: it hears everyone (the default) but nobody hears
//! // it, except the agent in slot 1 (whisper).
//! for listener in [0, 2] {
//!     mixer.set_gain(listener, 3, Gain::SILENT).unwrap();
//! }
//! let speech = media_core::analysis::sine(16000, 440.0, 8000.0, 320);
//! mixer.set_input(0, &speech).unwrap(); // the customer talks; the rest are quiet
//! mixer.mix();
//! assert_eq!(mixer.output(0).unwrap().len(), 320);
//! // Everyone but the talker hears the full mix; the talker hears nobody.
//! assert_eq!(mixer.output_group(1).unwrap(), OutputGroup::FULL_MIX);
//! assert_ne!(mixer.output_group(0).unwrap(), OutputGroup::FULL_MIX);
//! assert_eq!(mixer.group_count(), 2);
//! ```
//!
//! **The matrix.** [`Mixer::set_gain`]`(listener, source, gain)` sets one edge.
//! By default every listener hears every other party at unity and not itself
//! (mix-minus); a listener hears itself only if asked (echo). Listen, whisper,
//! barge, hold and mute are all just edges, so they compose.
//!
//! **Talk detection** ([`MixerConfig::talk_threshold_dbfs`]): a source whose
//! frame energy is under the threshold (default -50 dBFS RMS) after its
//! hangover (default 300 ms) is not talking and contributes nothing, to anyone.
//!
//! **No clicks.** Whatever changes a source's weight in a listener's mix (a gain
//! edge, a source starting or stopping to talk, joining or leaving) ramps it
//! linearly over one frame, from the weight at the end of the last frame to the
//! new one. Ramping from `g0` to `g1` over `F` samples adds at most
//! `|g1 - g0| * peak / F` (+1 for rounding) to the step between two adjacent
//! samples of the source; at 16 kHz a full-scale source joining moves the
//! output by at most 103 per sample beyond its own steps, where a hard switch
//! would step by up to 32767.
//!
//! **Limiter, not clipper** ([`LimiterConfig`]): integer sums (i32, cannot wrap)
//! go through a soft look-ahead limiter per listener: never above the ceiling
//! (-1 dBFS), gain reduced smoothly over the 1 ms look-ahead and released slowly.
//! Two full-scale tones summed come out with no sample at +-32767 and each tone
//! 89 dB above the distortion once settled (51 dB over the first second), where
//! a hard clipper gives 9 dB. The limiter delays every output by the look-ahead
//! ([`Mixer::delay`]).
//!
//! **Groups of identical outputs** (Asterisk `bridge_softmix`'s trick).
//! Listeners whose frames are computed from the same weights (the same ramp,
//! if any) over the talking sources, and whose limiters are in the same state,
//! get bit-identical frames: the mixer computes that frame once and every
//! member's [`Mixer::output`] is the same slice. The frame with every talker
//! at unity (every talker someone else hears: a supervisor in monitor mode is
//! left out even when it talks), which every conference listener who is not
//! talking hears, is [`OutputGroup::FULL_MIX`]: always computed
//! ([`Mixer::full_mix`]), and stable across ticks, so a call keeps one shared
//! encoder per output format for it ([`crate::pipeline::FrameEncoder`]).
//! With one talker among five parties there are two frames to encode; with
//! none, one (silence).
//!
//! **Cost.** The full mix is summed once (one pass per talking source). Every
//! other distinct frame is either summed directly or derived from the full mix
//! by subtracting and adding the terms where its weights differ, whichever
//! touches fewer sources; both give the same bits (every term is computed by
//! one integer formula). A talker's mix-minus is then one copy and one
//! subtraction, so the work per listener is O(talkers x frame) at most, and
//! O(frame) in a conference. Nothing is allocated after [`Mixer::new`].
//! Measured (`cargo bench -p benches --bench mix`), per party per tick at
//! 16 kHz: 0.2-0.3 us with one talker, about 0.55 us with everyone talking
//! under the ceiling (flat from 3 to 10 parties), 2.7-2.9 us with 5-10 loud
//! talkers keeping every limiter at work; at 8 kHz about half.
//!
//! **A call's tick**, in its media session: every source pipeline is built
//! with a jitter buffer on the call clock (`JitterConfig::external_clock`) and
//! gives its frame with `MediaPipeline::tick` and `poll_frame` into
//! [`Mixer::input_mut`] (PCM sources through a resampling PCM pipeline), or is
//! absent; then [`Mixer::mix`]; then the full mix is encoded once per output
//! format by a [`crate::pipeline::FrameEncoder`] and packetized for each
//! listener of [`OutputGroup::FULL_MIX`] with that format by
//! `MediaPipeline::handle_encoded`, and every other listener's pipeline gets
//! its [`Mixer::output`] with `handle_pcm`. `media-core/tests/mix.rs` runs that
//! loop.

mod gain;
mod limiter;
mod talk;

pub use gain::Gain;
pub use limiter::LimiterConfig;

use std::time::Duration;

use crate::time::{Millis, SampleRate};
use gain::{accumulate, ramp_table};
use limiter::Limiters;
use talk::TalkDetector;

/// The frame every source gives and every listener gets per tick.
pub const FRAME: Millis = crate::pipeline::OUTPUT_PTIME;

/// The most party slots a mixer can have.
pub const MAX_PARTIES: usize = 256;

/// What a [`Mixer`] is built with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixerConfig {
    /// The rate of every input and output frame.
    pub rate: SampleRate,
    /// Party slots (each a source and a listener), 1 to [`MAX_PARTIES`].
    pub max_parties: usize,
    /// RMS level at which a source talks, -96 to 0 dBFS; `None` makes every
    /// present source talk (no gate).
    ///
    /// A source talks in a frame whose RMS level reaches the threshold, and for
    /// [`MixerConfig::talk_hangover`] after the last such frame (so the quiet
    /// ends of words and the pauses between them are kept). The level is in the
    /// convention of [`crate::analysis::rms_db`]: dB relative to a full-scale
    /// square wave, so a full-scale sine is -3 dBFS. The default, -50 dBFS (an
    /// RMS of 104), is above a phone line's idle noise and comfort noise (-60
    /// to -70) and well below speech (-30 to -15). A source that is not
    /// talking is left out of every mix (a noise gate, as FreeSWITCH's
    /// conference energy level), so N open microphones do not add up N
    /// background noises, and everyone who is not talking hears the same mix.
    pub talk_threshold_dbfs: Option<f32>,
    /// How long a source keeps talking after its last frame above the threshold
    /// (rounded up to whole frames), at most 10 s.
    pub talk_hangover: Millis,
    /// The soft limiter of every output.
    pub limiter: LimiterConfig,
}

impl MixerConfig {
    /// `max_parties` at `rate`, talking above -50 dBFS with 300 ms hangover, the
    /// default limiter.
    pub fn new(rate: SampleRate, max_parties: usize) -> Self {
        MixerConfig {
            rate,
            max_parties,
            talk_threshold_dbfs: Some(-50.0),
            talk_hangover: Millis(300),
            limiter: LimiterConfig::default(),
        }
    }
}

/// Misuse of a [`Mixer`]. Nothing the mixer is given makes it panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MixError {
    /// A party slot beyond the mixer's capacity.
    #[error("party slot {slot} out of range (the mixer has {slots})")]
    SlotOutOfRange {
        /// The slot asked for.
        slot: usize,
        /// The mixer's slots.
        slots: usize,
    },
    /// A frame that is not one frame long.
    #[error("frame of {len} samples, {expected} expected")]
    WrongFrameLength {
        /// Samples given.
        len: usize,
        /// Samples in a frame.
        expected: usize,
    },
    /// A setting out of range.
    #[error("bad mixer configuration: {0}")]
    BadConfig(&'static str),
}

/// Which listeners got bit-identical frames in the last [`Mixer::mix`]: equal
/// groups, equal frames. See the [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OutputGroup(u16);

impl OutputGroup {
    /// The full mix: every talker that some other party hears, at unity, limited
    /// by its own limiter; what every listener who is not talking hears in a
    /// plain conference.
    pub const FULL_MIX: OutputGroup = OutputGroup(u16::MAX);

    /// Whether this is [`OutputGroup::FULL_MIX`].
    pub const fn is_full_mix(self) -> bool {
        self.0 == u16::MAX
    }

    /// The lowest listener slot of the group, whose frame the mixer computed
    /// (`None` for the full mix, which is computed apart from any listener).
    pub const fn representative(self) -> Option<usize> {
        if self.is_full_mix() {
            None
        } else {
            Some(self.0 as usize)
        }
    }
}

/// An N-party mixer. See the [module docs](self).
#[derive(Debug)]
pub struct Mixer {
    config: MixerConfig,
    parties: usize,
    frame: usize,
    /// One frame per source.
    inputs: Vec<i16>,
    present: Vec<bool>,
    /// Talk state this tick and the last.
    talking: Vec<bool>,
    was_talking: Vec<bool>,
    talkers: usize,
    detector: TalkDetector,
    /// Gain of each edge, `listener * parties + source`, Q14.
    edges: Vec<u16>,
    /// Per source, how many other listeners hear it (a non-zero edge).
    heard_by: Vec<u16>,
    /// Per source, its weight in the full mix at the end of the last frame.
    full_applied: Vec<u16>,
    /// The weight each edge had at the end of the last frame (its edge gain if
    /// the source talked, else 0): where this frame's ramp starts.
    applied: Vec<u16>,
    /// Sources with a non-zero weight in some mix this tick.
    active: Vec<usize>,
    ramp: Vec<i32>,
    full_acc: Vec<i32>,
    acc: Vec<i32>,
    /// One frame per listener (used by group representatives) and, last, the
    /// full mix.
    out: Vec<i16>,
    /// Per listener, the slot whose frame it gets (`parties`: the full mix).
    group: Vec<u16>,
    /// This tick's group representatives other than the full mix, in order.
    reps: Vec<usize>,
    /// Row hashes per listener, this tick.
    hashes: Vec<u64>,
    limiters: Limiters,
}

fn row_hash(h: u64, s: usize, from: u16, to: u16) -> u64 {
    let v = (s as u64) << 32 | (from as u64) << 16 | to as u64;
    (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

const UNITY: u16 = Gain::UNITY.to_q14();

impl Mixer {
    /// A mixer with every buffer allocated: nothing is allocated afterwards.
    pub fn new(config: MixerConfig) -> Result<Mixer, MixError> {
        let n = config.max_parties;
        if !(1..=MAX_PARTIES).contains(&n) {
            return Err(MixError::BadConfig("max_parties must be 1 to 256"));
        }
        let frame = config.rate.samples_in(FRAME);
        let detector = TalkDetector::new(
            config.talk_threshold_dbfs,
            config.talk_hangover,
            config.rate,
            FRAME,
            n,
        )?;
        let limiters = Limiters::new(&config.limiter, config.rate, frame, n + 1)?;
        let mut edges = vec![UNITY; n * n];
        for l in 0..n {
            edges[l * n + l] = 0;
        }
        Ok(Mixer {
            config,
            parties: n,
            frame,
            inputs: vec![0; n * frame],
            present: vec![false; n],
            talking: vec![false; n],
            was_talking: vec![false; n],
            talkers: 0,
            detector,
            edges,
            heard_by: vec![n as u16 - 1; n],
            full_applied: vec![0; n],
            applied: vec![0; n * n],
            active: Vec::with_capacity(n),
            ramp: ramp_table(frame),
            full_acc: vec![0; frame],
            acc: vec![0; frame],
            out: vec![0; (n + 1) * frame],
            group: vec![n as u16; n],
            reps: Vec::with_capacity(n),
            hashes: vec![0; n],
            limiters,
        })
    }

    /// The settings.
    pub fn config(&self) -> &MixerConfig {
        &self.config
    }

    /// Party slots.
    pub fn max_parties(&self) -> usize {
        self.parties
    }

    /// The rate of every frame.
    pub fn rate(&self) -> SampleRate {
        self.config.rate
    }

    /// Samples in a frame (20 ms at the rate).
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// The delay from input to output (the limiter's look-ahead).
    pub fn delay(&self) -> Duration {
        Duration::from_micros(
            self.limiters.delay() as u64 * 1_000_000 / self.config.rate.hz() as u64,
        )
    }

    fn check(&self, slot: usize) -> Result<(), MixError> {
        if slot < self.parties {
            Ok(())
        } else {
            Err(MixError::SlotOutOfRange {
                slot,
                slots: self.parties,
            })
        }
    }

    /// How loud `listener` hears `source`, from the next [`Mixer::mix`] on
    /// (ramped over its frame). `listener == source` is echo.
    pub fn set_gain(&mut self, listener: usize, source: usize, gain: Gain) -> Result<(), MixError> {
        self.check(listener)?;
        self.check(source)?;
        let edge = &mut self.edges[listener * self.parties + source];
        if listener != source {
            match (*edge != 0, !gain.is_silent()) {
                (false, true) => self.heard_by[source] += 1,
                (true, false) => self.heard_by[source] -= 1,
                _ => {}
            }
        }
        *edge = gain.to_q14();
        Ok(())
    }

    /// How loud `listener` hears `source`.
    pub fn gain(&self, listener: usize, source: usize) -> Result<Gain, MixError> {
        self.check(listener)?;
        self.check(source)?;
        Ok(Gain::from_q14(self.edges[listener * self.parties + source]))
    }

    /// Gives `slot` back its default edges (it hears everyone else at unity,
    /// everyone hears it at unity, no echo) and forgets its talk hangover: for a
    /// new party taking a slot. The edges ramp like any gain change.
    pub fn reset_slot(&mut self, slot: usize) -> Result<(), MixError> {
        self.check(slot)?;
        let n = self.parties;
        for other in 0..n {
            let g = if other == slot { 0 } else { UNITY };
            self.edges[slot * n + other] = g;
            self.edges[other * n + slot] = g;
        }
        for s in 0..n {
            let heard = (0..n).filter(|&l| l != s && self.edges[l * n + s] != 0);
            self.heard_by[s] = heard.count() as u16;
        }
        self.detector.reset(slot);
        Ok(())
    }

    /// `slot`'s input frame for this tick, zeroed, to write in place (e.g. with
    /// `MediaPipeline::poll_frame`); the source counts as present this tick.
    pub fn input_mut(&mut self, slot: usize) -> Result<&mut [i16], MixError> {
        self.check(slot)?;
        self.present[slot] = true;
        let f = self.frame;
        let buf = &mut self.inputs[slot * f..(slot + 1) * f];
        buf.fill(0);
        Ok(buf)
    }

    /// Copies `slot`'s input frame for this tick (exactly one frame long).
    pub fn set_input(&mut self, slot: usize, pcm: &[i16]) -> Result<(), MixError> {
        self.check(slot)?;
        if pcm.len() != self.frame {
            return Err(MixError::WrongFrameLength {
                len: pcm.len(),
                expected: self.frame,
            });
        }
        let f = self.frame;
        self.inputs[slot * f..(slot + 1) * f].copy_from_slice(pcm);
        self.present[slot] = true;
        Ok(())
    }

    /// Takes back this tick's input of `slot`: it is absent (silence), as is any
    /// source not given by the time of [`Mixer::mix`].
    pub fn set_absent(&mut self, slot: usize) -> Result<(), MixError> {
        self.check(slot)?;
        self.present[slot] = false;
        Ok(())
    }

    fn weight(&self, listener: usize, source: usize) -> (u16, u16) {
        let e = listener * self.parties + source;
        let to = if self.talking[source] {
            self.edges[e]
        } else {
            0
        };
        (self.applied[e], to)
    }

    /// The full mix has every talker someone else hears at unity.
    fn full_weight(&self, source: usize) -> (u16, u16) {
        let heard = self.talking[source] && self.heard_by[source] > 0;
        (self.full_applied[source], if heard { UNITY } else { 0 })
    }

    fn input(&self, source: usize) -> &[i16] {
        &self.inputs[source * self.frame..(source + 1) * self.frame]
    }

    /// Mixes this tick's inputs into every listener's output; then every source
    /// is absent again until given for the next tick.
    pub fn mix(&mut self) {
        let (n, f) = (self.parties, self.frame);
        // Who talks; which sources count.
        self.talkers = 0;
        self.active.clear();
        for s in 0..n {
            let frame = self.present[s].then(|| &self.inputs[s * f..(s + 1) * f]);
            let t = self.detector.update(s, frame);
            self.talking[s] = t;
            self.talkers += t as usize;
            if self.present[s] && (t || self.was_talking[s]) {
                self.active.push(s);
            }
        }
        // The full mix, once.
        self.full_acc.fill(0);
        let mut full_hash = 0u64;
        for &s in &self.active {
            let (from, to) = self.full_weight(s);
            full_hash = row_hash(full_hash, s, from, to);
            let x = &self.inputs[s * f..(s + 1) * f];
            accumulate::<false>(&mut self.full_acc, x, from, to, &self.ramp);
        }
        // Groups: the full mix's, else the first earlier listener's with the
        // same weights and limiter state, else a new one.
        self.reps.clear();
        for l in 0..n {
            let mut h = 0u64;
            for &s in &self.active {
                let (from, to) = self.weight(l, s);
                h = row_hash(h, s, from, to);
            }
            self.hashes[l] = h;
            let same_as = |m: &Mixer, r: usize| {
                m.hashes[r] == h
                    && m.active.iter().all(|&s| m.weight(l, s) == m.weight(r, s))
                    && m.limiters.same_state(l, r)
            };
            let g = if h == full_hash
                && self
                    .active
                    .iter()
                    .all(|&s| self.weight(l, s) == self.full_weight(s))
                && self.limiters.same_state(l, n)
            {
                n
            } else if let Some(&r) = self.reps.iter().find(|&&r| same_as(self, r)) {
                r
            } else {
                self.reps.push(l);
                l
            };
            self.group[l] = g as u16;
        }
        // Each distinct frame once.
        self.limiters
            .process(n, &self.full_acc, &mut self.out[n * f..(n + 1) * f]);
        for i in 0..self.reps.len() {
            let r = self.reps[i];
            self.build(r);
            self.limiters
                .process(r, &self.acc, &mut self.out[r * f..(r + 1) * f]);
        }
        for l in 0..n {
            let g = self.group[l] as usize;
            if g != l {
                self.limiters.copy_state(g, l);
            }
        }
        // The weights reached become the next ramps' start.
        for s in 0..n {
            self.full_applied[s] = self.full_weight(s).1;
            if self.talking[s] || self.was_talking[s] {
                for l in 0..n {
                    let e = l * n + s;
                    self.applied[e] = if self.talking[s] { self.edges[e] } else { 0 };
                }
            }
        }
        self.was_talking.copy_from_slice(&self.talking);
        self.present.fill(false);
    }

    /// Sums listener `r`'s frame into `acc`: directly, or from the full mix by
    /// the terms where its weights differ, whichever touches fewer sources.
    fn build(&mut self, r: usize) {
        let (mut nonzero, mut differ) = (0, 0);
        for &s in &self.active {
            let (w, fw) = (self.weight(r, s), self.full_weight(s));
            nonzero += (w != (0, 0)) as usize;
            if w != fw {
                differ += (w != (0, 0)) as usize + (fw != (0, 0)) as usize;
            }
        }
        let mut acc = std::mem::take(&mut self.acc);
        if differ < nonzero {
            acc.copy_from_slice(&self.full_acc);
            for &s in &self.active {
                let ((from, to), (ffrom, fto)) = (self.weight(r, s), self.full_weight(s));
                if (from, to) != (ffrom, fto) {
                    accumulate::<true>(&mut acc, self.input(s), ffrom, fto, &self.ramp);
                    accumulate::<false>(&mut acc, self.input(s), from, to, &self.ramp);
                }
            }
        } else {
            acc.fill(0);
            for &s in &self.active {
                let (from, to) = self.weight(r, s);
                accumulate::<false>(&mut acc, self.input(s), from, to, &self.ramp);
            }
        }
        self.acc = acc;
    }

    /// What `listener` hears this tick (after [`Mixer::mix`]; silence before the
    /// first). Listeners of one [`OutputGroup`] get the same slice.
    pub fn output(&self, listener: usize) -> Result<&[i16], MixError> {
        self.check(listener)?;
        let g = self.group[listener] as usize;
        Ok(&self.out[g * self.frame..(g + 1) * self.frame])
    }

    /// The group of listeners that got the same frame as `listener` this tick.
    pub fn output_group(&self, listener: usize) -> Result<OutputGroup, MixError> {
        self.check(listener)?;
        Ok(self.group_of(listener))
    }

    fn group_of(&self, listener: usize) -> OutputGroup {
        match self.group[listener] as usize {
            g if g == self.parties => OutputGroup::FULL_MIX,
            g => OutputGroup(g as u16),
        }
    }

    /// The full mix this tick (every talker some other party hears, at unity,
    /// limited), whether or not a listener is in [`OutputGroup::FULL_MIX`].
    pub fn full_mix(&self) -> &[i16] {
        let n = self.parties;
        &self.out[n * self.frame..(n + 1) * self.frame]
    }

    /// The distinct groups among the listeners this tick: the full mix first if
    /// anyone is in it, then the others by their lowest listener slot.
    pub fn groups(&self) -> impl Iterator<Item = OutputGroup> + '_ {
        let full = self.group.iter().any(|&g| g as usize == self.parties);
        full.then_some(OutputGroup::FULL_MIX)
            .into_iter()
            .chain(self.reps.iter().map(|&r| OutputGroup(r as u16)))
    }

    /// How many distinct frames the listeners got this tick.
    pub fn group_count(&self) -> usize {
        self.groups().count()
    }

    /// Whether `source` talked in the last [`Mixer::mix`].
    pub fn is_talking(&self, source: usize) -> Result<bool, MixError> {
        self.check(source)?;
        Ok(self.talking[source])
    }

    /// How many sources talked in the last [`Mixer::mix`].
    pub fn talkers(&self) -> usize {
        self.talkers
    }

    /// Whether `listener`'s limiter is reducing the gain (or releasing) after the
    /// last [`Mixer::mix`].
    pub fn is_limiting(&self, listener: usize) -> Result<bool, MixError> {
        self.check(listener)?;
        Ok(!self.limiters.is_idle(listener))
    }

    /// The gain `listener`'s limiter applies now (1.0 when idle).
    pub fn limiter_gain(&self, listener: usize) -> Result<f32, MixError> {
        self.check(listener)?;
        Ok(self.limiters.gain(listener))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{ToneGenerator, goertzel_level_db, sinad_tones_db, sine};
    use crate::time::SeededRng;

    const RATE: SampleRate = SampleRate::HZ_16000;

    fn mixer(parties: usize) -> Mixer {
        Mixer::new(MixerConfig::new(RATE, parties)).unwrap()
    }

    /// Runs `ticks` frames: `feed(tick, slot)` gives each slot's frame (or
    /// `None`: absent); returns every listener's output, concatenated.
    fn run(m: &mut Mixer, ticks: usize, mut feed: impl FnMut(&mut Mixer, usize)) -> Vec<Vec<i16>> {
        let mut outs = vec![Vec::new(); m.max_parties()];
        for t in 0..ticks {
            feed(m, t);
            m.mix();
            for (l, o) in outs.iter_mut().enumerate() {
                o.extend_from_slice(m.output(l).unwrap());
            }
        }
        outs
    }

    fn tones(freqs: &[(f64, f64)], ticks: usize) -> Vec<Vec<i16>> {
        freqs
            .iter()
            .map(|&(f, a)| sine(16000, f, a, 320 * ticks))
            .collect()
    }

    fn frame(signal: &[i16], t: usize) -> &[i16] {
        &signal[t * 320..(t + 1) * 320]
    }

    const FREQS: [f64; 3] = [440.0, 1000.0, 1500.0];

    /// Level of each of `FREQS` in `x` (after the first 100 ms).
    fn levels(x: &[i16]) -> [f64; 3] {
        FREQS.map(|f| goertzel_level_db(&x[1600..], 16000, f))
    }

    #[test]
    fn mix_minus_each_hears_the_others_not_itself() {
        let mut m = mixer(3);
        let src = tones(&FREQS.map(|f| (f, 8000.0)), 50);
        let outs = run(&mut m, 50, |m, t| {
            for (s, x) in src.iter().enumerate() {
                m.set_input(s, frame(x, t)).unwrap();
            }
        });
        for (l, out) in outs.iter().enumerate() {
            let lv = levels(out);
            for (s, &level) in lv.iter().enumerate() {
                if s == l {
                    assert!(level < -100.0, "{l} hears itself: {lv:?}");
                } else {
                    // 8000 / 32768 = -12.2 dB
                    assert!((level + 12.2).abs() < 0.5, "{l} hears {s}: {lv:?}");
                    assert!(level - lv[l] >= 40.0);
                }
            }
        }
        assert_eq!(m.talkers(), 3);
        assert_eq!(m.group_count(), 3);
    }

    #[test]
    fn a_whisper_matrix() {
        // A hears B and C; B hears only A (not C); C hears A and B, and itself.
        let mut m = mixer(3);
        m.set_gain(1, 2, Gain::SILENT).unwrap();
        m.set_gain(2, 2, Gain::UNITY).unwrap();
        m.set_gain(0, 1, Gain::from_db(-6.0)).unwrap();
        let src = tones(&FREQS.map(|f| (f, 8000.0)), 50);
        let outs = run(&mut m, 50, |m, t| {
            for (s, x) in src.iter().enumerate() {
                m.set_input(s, frame(x, t)).unwrap();
            }
        });
        let heard = |l: usize| levels(&outs[l]).map(|v| v > -30.0);
        assert_eq!(heard(0), [false, true, true]);
        assert_eq!(heard(1), [true, false, false]);
        assert_eq!(heard(2), [true, true, true]);
        let a = levels(&outs[0]);
        assert!((a[1] - a[2] + 6.0).abs() < 0.2, "{a:?}");
        // C hears everyone at unity: the full mix.
        assert_eq!(m.output_group(2).unwrap(), OutputGroup::FULL_MIX);
        assert_eq!(m.output(2).unwrap(), m.full_mix());
    }

    /// Counts full-scale samples, and each tone's SDR (dB) after the first
    /// 100 ms, of `x` holding 440 and 1000 Hz.
    fn two_tone_quality(x: &[i16]) -> (usize, Vec<f64>) {
        let full = x.iter().filter(|&&v| v.unsigned_abs() >= 32767).count();
        (full, sinad_tones_db(&x[1600..], 16000, &[440.0, 1000.0]))
    }

    #[test]
    fn the_limiter_keeps_two_full_scale_sines_clean_where_a_clipper_cannot() {
        let mut m = mixer(3);
        let src = tones(&[(440.0, 32767.0), (1000.0, 32767.0)], 100);
        let outs = run(&mut m, 100, |m, t| {
            m.set_input(0, frame(&src[0], t)).unwrap();
            m.set_input(1, frame(&src[1], t)).unwrap();
        });
        let (full, sdr) = two_tone_quality(&outs[2]);
        assert_eq!(full, 0);
        // Once settled (after 100 ms), only rounding is left (89 dB). Over the
        // first second from the end of the talk gate's ramp-in (one frame, plus
        // the 1 ms delay), the attacks of the first 25 ms included: 51 dB.
        assert!(sdr.iter().all(|&s| s >= 80.0), "{sdr:?}");
        let onset = sinad_tones_db(&outs[2][336..16000], 16000, &[440.0, 1000.0]);
        assert!(onset.iter().all(|&s| s >= 45.0), "{onset:?}");
        // The same sum, hard-clipped (FreeSWITCH's and LiveKit's way).
        let clipped: Vec<i16> = src[0]
            .iter()
            .zip(&src[1])
            .map(|(&a, &b)| (a as i32 + b as i32).clamp(-32768, 32767) as i16)
            .collect();
        let (cfull, csdr) = two_tone_quality(&clipped);
        assert!(cfull > 1000, "{cfull}");
        assert!(csdr.iter().all(|&s| s < 15.0), "{csdr:?}");
        assert!(sdr[0] - csdr[0] > 20.0);
        // Each party alone at full scale is brought under the -1 dBFS ceiling.
        assert!(outs[0].iter().all(|v| v.unsigned_abs() <= 29204));
        assert!(m.is_limiting(2).unwrap());
        assert!(m.limiter_gain(2).unwrap() < 0.5);
        println!("limiter SDR {sdr:?} dB (first second {onset:?}), hard clipper {csdr:?} dB");
    }

    #[test]
    fn an_absent_source_is_exact_silence() {
        let src = tones(&FREQS.map(|f| (f, 8000.0)), 20);
        let mut with = mixer(4);
        let mut without = mixer(4);
        let a = run(&mut with, 20, |m, t| {
            m.set_input(0, frame(&src[0], t)).unwrap();
            m.set_input(1, frame(&src[1], t)).unwrap();
            // Slot 2 was given, then taken back; slot 3 never given.
            m.set_input(2, frame(&src[2], t)).unwrap();
            m.set_absent(2).unwrap();
        });
        let b = run(&mut without, 20, |m, t| {
            m.set_input(0, frame(&src[0], t)).unwrap();
            m.set_input(1, frame(&src[1], t)).unwrap();
            // input_mut zeroes: a present frame of silence is not talking.
            m.input_mut(2).unwrap();
        });
        assert_eq!(a, b);
        assert!(!with.is_talking(2).unwrap() && !without.is_talking(2).unwrap());
        // Alone, a party hears exactly nothing.
        let mut solo = mixer(2);
        let out = run(&mut solo, 10, |m, t| {
            m.set_input(0, frame(&src[0], t)).unwrap()
        });
        assert!(out[0].iter().all(|&v| v == 0));
    }

    #[test]
    fn the_talk_gate_keeps_quiet_sources_out() {
        let mut m = mixer(3);
        let mut rng = SeededRng::new(4);
        // Slot 0: line noise at about -60 dBFS throughout.
        let noise: Vec<i16> = (0..320 * 60)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * 57.0) as i16)
            .collect();
        // Slot 1: a -40 dBFS tone for 10 frames, then the same noise.
        let tone = sine(16000, 1000.0, 463.0, 320 * 10);
        let mut talking = Vec::new();
        let outs = run(&mut m, 60, |m, t| {
            m.set_input(0, frame(&noise, t)).unwrap();
            let x = if t < 10 {
                frame(&tone, t)
            } else {
                frame(&noise, t)
            };
            m.set_input(1, x).unwrap();
            if t > 0 {
                talking.push(m.talking[1]);
            }
        });
        // Slot 0 never talks: its listener-side silence is exact, and 2 (who
        // hears both) gets nothing of the noise once 1 stops.
        assert!(!m.is_talking(0).unwrap());
        assert!(outs[1].iter().all(|&v| v == 0));
        // 1 talks for its 10 frames and 15 frames of hangover (300 ms).
        talking.push(m.talking[1]);
        let frames = talking.iter().filter(|&&t| t).count();
        assert_eq!(frames, 25, "{talking:?}");
        assert!(outs[2][..320 * 26 + 16].iter().any(|&v| v != 0));
        assert!(outs[2][320 * 26 + 16..].iter().all(|&v| v == 0));
        // The non-talkers (0 and 2) hear the same: bit-identical.
        assert_eq!(&outs[0][320 * 30..], &outs[2][320 * 30..]);
        assert_eq!(m.group_count(), 1);
    }

    #[test]
    fn five_parties_one_talker_is_two_frames_and_none_is_one() {
        let mut m = mixer(5);
        let voice = crate::analysis::speech_like(16000, 320 * 40);
        for t in 0..40 {
            m.set_input(2, frame(&voice, t)).unwrap();
            for s in [0, 1, 3, 4] {
                m.input_mut(s).unwrap(); // present, quiet
            }
            m.mix();
            if m.talkers() == 1 {
                assert_eq!(m.group_count(), 2, "tick {t}");
                let groups: Vec<_> = m.groups().collect();
                assert_eq!(groups, [OutputGroup::FULL_MIX, OutputGroup(2)]);
                assert_eq!(groups[1].representative(), Some(2));
                for l in [0, 1, 3, 4] {
                    assert_eq!(m.output_group(l).unwrap(), OutputGroup::FULL_MIX);
                    assert_eq!(m.output(l).unwrap(), m.full_mix());
                }
                assert!(m.output(2).unwrap().iter().all(|&v| v == 0));
            }
        }
        let mut quiet = mixer(5);
        quiet.mix();
        assert_eq!(quiet.groups().collect::<Vec<_>>(), [OutputGroup::FULL_MIX]);
        assert!(quiet.full_mix().iter().all(|&v| v == 0));
        // Two talkers: each its own mix-minus, plus the full mix.
        let src = tones(&FREQS.map(|f| (f, 8000.0)), 3);
        for t in 0..3 {
            m.set_input(0, frame(&src[0], t)).unwrap();
            m.set_input(1, frame(&src[1], t)).unwrap();
            m.mix();
        }
        assert_eq!(m.group_count(), 3);
        assert!(!m.output_group(0).unwrap().is_full_mix());
        assert_ne!(m.output_group(0).unwrap(), m.output_group(1).unwrap());
        assert_eq!(m.output_group(4).unwrap(), OutputGroup::FULL_MIX);
    }

    #[test]
    fn a_talking_supervisor_nobody_hears_stays_out_of_the_full_mix() {
        // 0 talks, 1 and 2 listen; 3 monitors (hears all, heard by none) and
        // talks to someone in its room.
        let mut m = mixer(4);
        for l in 0..3 {
            m.set_gain(l, 3, Gain::SILENT).unwrap();
        }
        let src = tones(&[(440.0, 8000.0), (2000.0, 8000.0)], 10);
        for t in 0..10 {
            m.set_input(0, frame(&src[0], t)).unwrap();
            m.set_input(3, frame(&src[1], t)).unwrap();
            m.mix();
            assert_eq!(m.talkers(), 2);
            for l in [1, 2, 3] {
                assert_eq!(m.output_group(l).unwrap(), OutputGroup::FULL_MIX);
            }
            assert_eq!(m.group_count(), 2);
        }
        // The full mix (1's and 2's) has no 2000 Hz: exactly the 440 Hz alone.
        let mut alone = mixer(4);
        for t in 0..10 {
            alone.set_input(0, frame(&src[0], t)).unwrap();
            alone.mix();
        }
        assert_eq!(m.full_mix(), alone.full_mix());
        // Whisper: the agent (0) now hears the supervisor, so the full mix takes
        // the supervisor in; 1, 2 and 3 all hear 0 alone (3 is not heard by 1
        // and 2, and not by itself): one group, which is not the full mix.
        m.set_gain(0, 3, Gain::UNITY).unwrap();
        for t in 0..3 {
            m.set_input(0, frame(&src[0], t)).unwrap();
            m.set_input(3, frame(&src[1], t)).unwrap();
            m.mix();
        }
        assert!(goertzel_level_db(m.full_mix(), 16000, 2000.0) > -14.0);
        assert_eq!(m.group_count(), 2);
        assert_eq!(m.output_group(1).unwrap(), OutputGroup(1));
        assert_eq!(m.output_group(3).unwrap(), OutputGroup(1));
        m.reset_slot(3).unwrap();
        assert_eq!(m.heard_by[3], 3);
    }

    /// Largest step between adjacent samples of `x`.
    fn max_step(x: &[i16]) -> i32 {
        x.windows(2)
            .map(|w| (w[1] as i32 - w[0] as i32).abs())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn joins_and_mode_switches_ramp_without_a_click() {
        // A (slot 0) talks throughout; C (slot 2) joins at tick 10 at its peak;
        // B (slot 1) listens. Then B stops hearing A (tick 20) and hears A again
        // (tick 30): a listen -> whisper -> listen switch.
        let mut m = mixer(3);
        let a = sine(16000, 200.0, 8000.0, 320 * 40);
        // C's first sample is at its peak: a hard join would step by 12000.
        let c: Vec<i16> = sine(16000, 300.0, 12000.0, 320 * 40 + 13)[13..].to_vec();
        let outs = run(&mut m, 40, |m, t| {
            m.set_input(0, frame(&a, t)).unwrap();
            if t >= 10 {
                m.set_input(2, frame(&c, t - 10)).unwrap();
            }
            match t {
                20 => m.set_gain(1, 0, Gain::SILENT).unwrap(),
                30 => m.set_gain(1, 0, Gain::UNITY).unwrap(),
                _ => {}
            }
        });
        // The bound: the sources' own largest steps, plus what a ramp over one
        // frame adds (peak / 320 per ramping source), plus rounding.
        let bound = max_step(&a) + max_step(&c) + (8000 + 12000) / 320 + 2;
        let b = &outs[1];
        assert!(max_step(b) <= bound, "{} > {bound}", max_step(b));
        // At the join itself: A's step and C's first 1/320, where a hard join
        // would have added C's first sample, 12000.
        let join = 320 * 10 + 16;
        assert!(c[0] > 11900);
        let step = (b[join] as i32 - b[join - 1] as i32).abs();
        assert!(step <= max_step(&a) + 12000 / 320 + 2, "{step}");
        // And B did stop hearing A, then heard it again.
        let level = |r: std::ops::Range<usize>| goertzel_level_db(&b[r], 16000, 200.0);
        assert!(level(320 * 22..320 * 30) < -80.0);
        assert!(level(320 * 32..320 * 40) > -13.0);
    }

    /// The naive mix: every listener's sum of every term, ramped, delayed by
    /// the look-ahead: what the grouped, subtracting mixer must match exactly.
    #[test]
    fn grouped_and_subtracted_mixes_equal_direct_sums() {
        let n = 6;
        let mut m = mixer(n);
        let src: Vec<Vec<i16>> = (0..n)
            .map(|s| sine(16000, 300.0 + 170.0 * s as f64, 2000.0, 320 * 60))
            .collect();
        let choices = [
            Gain::UNITY,
            Gain::SILENT,
            Gain::from_db(-6.0),
            Gain::from_db(3.0),
        ];
        let mut rng = SeededRng::new(11);
        let mut applied = vec![vec![0i32; n]; n];
        let mut ideal = vec![vec![0i32; 16]; n];
        let ramp = ramp_table(320);
        let mut outs = vec![Vec::new(); n];
        for t in 0..60 {
            if t % 7 == 3 {
                for _ in 0..4 {
                    let (l, s) = (rng.next_u32() as usize % n, rng.next_u32() as usize % n);
                    let g = choices[rng.next_u32() as usize % 4];
                    m.set_gain(l, s, g).unwrap();
                }
            }
            // Party 5 is absent half the time (not talking, weight 0).
            let present = |s: usize| s != 5 || (t / 10) % 2 == 0;
            for s in (0..n).filter(|&s| present(s)) {
                m.set_input(s, frame(&src[s], t)).unwrap();
            }
            m.mix();
            for l in 0..n {
                let mut sum = vec![0i32; 320];
                for s in 0..n {
                    let to = if present(s) {
                        m.gain(l, s).unwrap().to_q14() as i32
                    } else {
                        0
                    };
                    let from = applied[l][s];
                    for (i, v) in sum.iter_mut().enumerate() {
                        let g = from + (((to - from) * ramp[i]) >> 15);
                        if present(s) {
                            *v += (frame(&src[s], t)[i] as i32 * g + 8192) >> 14;
                        }
                    }
                    applied[l][s] = to;
                }
                ideal[l].extend(sum);
                outs[l].extend_from_slice(m.output(l).unwrap());
            }
        }
        for l in 0..n {
            let expected: Vec<i16> = ideal[l][..outs[l].len()]
                .iter()
                .map(|&v| v as i16)
                .collect();
            assert_eq!(outs[l], expected, "listener {l}");
        }
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut m = mixer(2);
        assert_eq!(
            m.set_input(2, &[0; 320]),
            Err(MixError::SlotOutOfRange { slot: 2, slots: 2 })
        );
        assert_eq!(
            m.set_input(0, &[0; 160]),
            Err(MixError::WrongFrameLength {
                len: 160,
                expected: 320
            })
        );
        assert!(m.set_gain(0, 9, Gain::UNITY).is_err());
        assert!(m.gain(9, 0).is_err());
        assert!(m.output(2).is_err());
        assert!(m.output_group(5).is_err());
        assert!(m.input_mut(2).is_err());
        assert!(m.set_absent(2).is_err());
        assert!(m.is_talking(2).is_err());
        assert!(m.reset_slot(2).is_err());
        assert!(m.is_limiting(2).is_err());
        for parties in [0, MAX_PARTIES + 1] {
            assert!(matches!(
                Mixer::new(MixerConfig::new(RATE, parties)),
                Err(MixError::BadConfig(_))
            ));
        }
        let mut c = MixerConfig::new(RATE, 2);
        c.talk_threshold_dbfs = Some(10.0);
        assert!(Mixer::new(c).is_err());
    }

    #[test]
    fn every_supported_rate_mixes() {
        for rate in SampleRate::SUPPORTED {
            let mut m = Mixer::new(MixerConfig::new(rate, 3)).unwrap();
            let f = m.frame_samples();
            assert_eq!(f, rate.samples_in(Millis(20)));
            let mut g = ToneGenerator::new(rate.hz(), &[(1000.0, 8000.0)]);
            let mut out = Vec::new();
            for _ in 0..20 {
                g.fill(m.input_mut(0).unwrap());
                m.mix();
                out.extend_from_slice(m.output(1).unwrap());
            }
            let level = goertzel_level_db(&out[f..], rate.hz(), 1000.0);
            assert!((level + 12.2).abs() < 0.3, "{rate:?} {level}");
            assert_eq!(m.delay(), Duration::from_millis(1));
        }
    }

    #[test]
    fn reset_slot_restores_mix_minus() {
        let mut m = mixer(3);
        m.set_gain(0, 1, Gain::SILENT).unwrap();
        m.set_gain(1, 1, Gain::UNITY).unwrap();
        m.reset_slot(1).unwrap();
        for l in 0..3 {
            for s in 0..3 {
                let expected = if l == s { Gain::SILENT } else { Gain::UNITY };
                assert_eq!(m.gain(l, s).unwrap(), expected);
            }
        }
    }
}
