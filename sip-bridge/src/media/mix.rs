//! The call clock's mix: every leg that a mixed listener hears is decoded
//! through a jitter buffer played on the call's 20 ms tick, tones are generated
//! at the mix rate, one [`Mixer`] sums what each listener hears (its own feeds,
//! at their levels), and each listener's frame is encoded for it, the full mix
//! once per output format (media-core `mix` module docs).
//!
//! The mix runs at the lowest rate that keeps everyone's bandwidth: 8 kHz when
//! every leg in it is narrowband (G.711), 16 kHz when one is wideband (Opus, an
//! agent's 16 or 24 kHz PCM).

use std::collections::{BTreeMap, HashMap};

use media_core::analysis::ToneGenerator;
use media_core::jitter::JitterConfig;
use media_core::mix::{Gain, Mixer, MixerConfig, OutputGroup};
use media_core::pipeline::{
    EncoderKey, Endpoint, FrameEncoder, MediaPipeline, PipelineConfig, PipelineEvent,
};
use media_core::rtp::{RtpPacket, Ssrc};
use media_core::{Instant, SampleRate, SeededRng};

use crate::contract::{Feed, FeedSource, LegKey, Level, RecordingId, Tone};

/// What occupies a slot of the mixer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Slot {
    Leg(LegKey),
    Tone(Tone),
    /// A recording's channel (0 or 1): a listener only.
    Tap(RecordingId, u8),
}

/// A level as the mixer's gain.
fn gain(l: Level) -> Gain {
    if l == Level::UNITY {
        Gain::UNITY
    } else {
        Gain::from_db(l.db())
    }
}

/// Whether `e` needs the mix at 16 kHz.
pub(crate) fn wideband(e: Endpoint) -> bool {
    match e {
        Endpoint::Rtp(f) => f.codec.natural_rate().hz() > 8000,
        Endpoint::Pcm(r) => r.hz() > 8000,
    }
}

/// An encoder of the full mix and its payload of the current tick.
#[derive(Debug)]
struct Shared {
    encoder: FrameEncoder,
    at: Option<Instant>,
    payload: Vec<u8>,
}

impl Shared {
    fn new(key: EncoderKey) -> Option<Shared> {
        let format = media_core::pipeline::RtpFormat::new(
            key.codec,
            media_core::rtp::PayloadType::PCMU, // each listener writes its own
        );
        let encoder =
            FrameEncoder::new(key.input_rate, format, key.opus.unwrap_or_default()).ok()?;
        Some(Shared {
            encoder,
            at: None,
            payload: Vec::with_capacity(1500),
        })
    }

    /// The full mix `pcm` encoded, once per tick `now` (`encodes` counts it).
    fn payload(&mut self, now: Instant, pcm: &[i16], encodes: &mut u32) -> Option<&[u8]> {
        if self.at != Some(now) {
            let p = self.encoder.encode(pcm).ok()?;
            *encodes += 1;
            self.payload.clear();
            self.payload.extend_from_slice(p);
            self.at = Some(now);
        }
        Some(&self.payload)
    }
}

/// A tone generated at the mix rate.
#[derive(Debug)]
struct ToneSource {
    tone: Tone,
    generator: ToneGenerator,
    started: Instant,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Mix {
    rate: SampleRate,
    mixer: Mixer,
    slots: BTreeMap<Slot, usize>,
    /// Slots on their way out: heard by nobody from the next frame (the
    /// mixer ramps them down over it), given up after it.
    leaving: BTreeMap<Slot, u8>,
    /// Pipelines giving each leg source's frame at the mix rate: RTP through a
    /// jitter buffer on the call clock, an agent's PCM resampled.
    decoders: BTreeMap<LegKey, MediaPipeline>,
    tones: BTreeMap<usize, ToneSource>,
    /// The full mix, encoded once per output format and tick.
    shared: HashMap<EncoderKey, Shared>,
    frame: Vec<i16>,
    /// Where each source's last DTMF came from (telephone-events are reported
    /// once even when a relay reports them too).
    pub(crate) events: Vec<(LegKey, PipelineEvent)>,
}

impl Mix {
    /// A mix at `rate` for at most `max` slots.
    pub(crate) fn new(rate: SampleRate, max: usize) -> Option<Mix> {
        let mixer = Mixer::new(MixerConfig::new(rate, max)).ok()?;
        Some(Mix {
            rate,
            frame: vec![0; mixer.frame_samples()],
            mixer,
            slots: BTreeMap::new(),
            leaving: BTreeMap::new(),
            decoders: BTreeMap::new(),
            tones: BTreeMap::new(),
            shared: HashMap::new(),
            events: Vec::new(),
        })
    }

    pub(crate) fn rate(&self) -> SampleRate {
        self.rate
    }

    pub(crate) fn slot(&self, s: Slot) -> Option<usize> {
        self.slots.get(&s).copied()
    }

    /// The mixer slots in use become exactly `want`. A slot no longer wanted
    /// fades out: nobody hears it from the next frame, which the mixer ramps
    /// down (its decoder keeps giving what it has, or conceals), and it is given
    /// up after that frame, so a party that leaves is not cut off mid-word. A new
    /// slot is heard by nobody until its listeners' rows say so.
    pub(crate) fn set_slots(&mut self, now: Instant, want: &[Slot]) {
        let gone: Vec<Slot> = self
            .slots
            .keys()
            .copied()
            .filter(|s| !want.contains(s) && !self.leaving.contains_key(s))
            .collect();
        for s in gone {
            let i = self.slots[&s];
            for l in 0..self.mixer.max_parties() {
                let _ = self.mixer.set_gain(l, i, Gain::SILENT);
                let _ = self.mixer.set_gain(i, l, Gain::SILENT);
            }
            self.leaving.insert(s, 2);
        }
        for s in want {
            self.leaving.remove(s);
            if self.slots.contains_key(s) {
                continue;
            }
            let Some(i) =
                (0..self.mixer.max_parties()).find(|i| !self.slots.values().any(|v| v == i))
            else {
                continue; // full: the call's party limit keeps this from happening
            };
            self.slots.insert(*s, i);
            // Nobody hears a new slot until the graph says so.
            for l in 0..self.mixer.max_parties() {
                let _ = self.mixer.set_gain(l, i, Gain::SILENT);
            }
            if let Slot::Tone(t) = *s {
                self.tones.insert(
                    i,
                    ToneSource {
                        tone: t,
                        generator: tone_generator(t, self.rate),
                        started: now,
                    },
                );
            }
        }
    }

    /// Gives up the slots whose fade is over (after a tick).
    fn reap(&mut self) {
        let done: Vec<Slot> = self
            .leaving
            .iter_mut()
            .filter_map(|(s, n)| {
                *n = n.saturating_sub(1);
                (*n == 0).then_some(*s)
            })
            .collect();
        for s in done {
            self.leaving.remove(&s);
            if let Some(i) = self.slots.remove(&s) {
                let _ = self.mixer.reset_slot(i);
                for l in 0..self.mixer.max_parties() {
                    let _ = self.mixer.set_gain(l, i, Gain::SILENT);
                }
                self.tones.remove(&i);
                if let Slot::Leg(k) = s {
                    self.decoders.remove(&k);
                }
            }
        }
    }

    /// The listener in `slot` hears exactly `feeds` (those with a slot); a slot
    /// that is no listener hears nothing (so it costs nothing).
    pub(crate) fn set_row(&mut self, listens: bool, slot: usize, feeds: &[Feed]) {
        let row: Vec<(usize, Gain)> = match listens {
            true => feeds
                .iter()
                .filter_map(|f| {
                    let s = match f.from {
                        FeedSource::Leg(k) => Slot::Leg(k),
                        FeedSource::Tone(t) => Slot::Tone(t),
                    };
                    self.slot(s).map(|i| (i, gain(f.level)))
                })
                .collect(),
            false => Vec::new(),
        };
        for i in self.slots.values().copied().collect::<Vec<_>>() {
            let g = row
                .iter()
                .find(|(j, _)| *j == i)
                .map_or(Gain::SILENT, |(_, g)| *g);
            if self.mixer.gain(slot, i).ok() != Some(g) {
                let _ = self.mixer.set_gain(slot, i, g);
            }
        }
    }

    /// The pipeline that gives leg `k`'s frames at the mix rate (built from
    /// `input`, the leg's own endpoint), made if missing.
    pub(crate) fn ensure_decoder(&mut self, k: LegKey, input: Endpoint, rng: &mut SeededRng) {
        if self.decoders.contains_key(&k) {
            return;
        }
        let mut cfg = PipelineConfig::new(
            input,
            Endpoint::Pcm(self.rate),
            Ssrc(rng.next_u32()),
            rng.next_u64(),
        );
        if let Endpoint::Rtp(f) = input {
            let mut j = JitterConfig::new(f.codec.clock_rate());
            j.external_clock = true;
            cfg.jitter = Some(j);
        }
        if let Ok(p) = MediaPipeline::new(cfg) {
            self.decoders.insert(k, p);
        }
    }

    /// Leg `k`'s format changed: its decoder is built again on next use.
    pub(crate) fn forget_decoder(&mut self, k: LegKey) {
        self.decoders.remove(&k);
    }

    pub(crate) fn has_decoder(&self, k: LegKey) -> bool {
        self.decoders.contains_key(&k)
    }

    /// A packet from leg `k` for its decoder.
    pub(crate) fn handle_rtp(&mut self, now: Instant, k: LegKey, pkt: &RtpPacket) {
        if let Some(d) = self.decoders.get_mut(&k) {
            let _ = d.handle_rtp(now, pkt);
            while let Some(ev) = d.poll_event() {
                self.events.push((k, ev));
            }
        }
    }

    /// An agent's frame (at its own rate) for its decoder.
    pub(crate) fn handle_pcm(&mut self, now: Instant, k: LegKey, pcm: &[i16]) {
        if let Some(d) = self.decoders.get_mut(&k) {
            let _ = d.handle_pcm(now, pcm);
        }
    }

    /// One tick: every source's frame in (`silent` ones absent: muted or held),
    /// then the mix.
    pub(crate) fn tick(&mut self, now: Instant, silent: &dyn Fn(LegKey) -> bool) {
        let Mix {
            mixer,
            slots,
            decoders,
            tones,
            frame,
            ..
        } = self;
        for (s, &i) in slots.iter() {
            match *s {
                Slot::Leg(k) => {
                    let Some(d) = decoders.get_mut(&k) else {
                        continue;
                    };
                    let _ = d.tick(now);
                    let got = d.poll_frame(frame).is_some_and(|n| n == frame.len());
                    if got && !silent(k) {
                        let _ = mixer.set_input(i, frame);
                    }
                }
                Slot::Tone(_) => {
                    if let Some(t) = tones.get_mut(&i) {
                        t.generator.fill(frame);
                        let ms = now.saturating_duration_since(t.started).as_millis() as u64;
                        if !t.tone.sounds_at(ms) {
                            frame.fill(0);
                        }
                        let _ = mixer.set_input(i, frame);
                    }
                }
                // A recording's channel sends nothing.
                Slot::Tap(..) => {}
            }
        }
        mixer.mix();
        self.reap();
    }

    /// Gives listener slot `slot` its frame: into `out` through the shared
    /// encoder when it hears the full mix and its format can share it, else as
    /// PCM (which `out` encodes). Returns the frames encoded for it: 1 for its
    /// own, 1 for the first listener of a shared encoder in a tick, else 0.
    pub(crate) fn deliver(&mut self, now: Instant, slot: usize, out: &mut MediaPipeline) -> u32 {
        let mut encodes = 0;
        let Ok(group) = self.mixer.output_group(slot) else {
            return encodes;
        };
        if group == OutputGroup::FULL_MIX
            && let Some(key) = out.encoder_key()
        {
            if !self.shared.contains_key(&key)
                && let Some(s) = Shared::new(key)
            {
                self.shared.insert(key, s);
            }
            if let Some(payload) = self
                .shared
                .get_mut(&key)
                .and_then(|s| s.payload(now, self.mixer.full_mix(), &mut encodes))
            {
                let _ = out.handle_encoded(now, payload);
                return encodes;
            }
        }
        if let Ok(pcm) = self.mixer.output(slot)
            && out.handle_pcm(now, pcm).is_ok()
        {
            // A 20 ms frame into a pipeline that sends 20 ms packets.
            encodes += 1;
        }
        encodes
    }

    /// What the listener in `slot` heard this tick.
    pub(crate) fn output(&self, slot: usize) -> Option<&[i16]> {
        self.mixer.output(slot).ok()
    }

    /// Encoders of the full mix by format (for counters).
    pub(crate) fn shared_encoders(&self) -> usize {
        self.shared.len()
    }

    /// Decoders' counters, for metrics.
    pub(crate) fn decoders(&self) -> impl Iterator<Item = &MediaPipeline> {
        self.decoders.values()
    }
}

pub(crate) fn tone_generator(t: Tone, rate: SampleRate) -> ToneGenerator {
    match t {
        // About -20 dBFS each: the level of a real ringback.
        Tone::Ringback => ToneGenerator::new(rate.hz(), &[(440.0, 3000.0), (480.0, 3000.0)]),
        Tone::Hz(hz) => ToneGenerator::new(rate.hz(), &[(f64::from(hz), 8000.0)]),
        Tone::Hold => ToneGenerator::new(rate.hz(), &[(620.0, 1200.0), (780.0, 1200.0)]),
    }
}
