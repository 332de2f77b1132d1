//! The soft limiter at the end of every mix: a look-ahead peak limiter in integer
//! arithmetic, one state per listener. The algorithm is described on
//! [`LimiterConfig`].

use crate::time::{Millis, SampleRate};

use super::MixError;

/// Settings of the soft limiter every mixer output goes through: a look-ahead
/// peak limiter in integer arithmetic, one state per listener.
///
/// Per sample `n` of the (i32) mix `m`:
///
/// 1. `c[n]`: the gain the loudest sample of the look-ahead window `m[n-L..=n]`
///    needs to stay under the ceiling (1 when none exceeds it).
/// 2. The envelope `e[n]` is `c[n]` if that is lower than where it would go
///    (instant attack), else it holds for `hold` after the last attack and then
///    releases toward 1 exponentially (time constant `release`).
/// 3. The applied gain `G[n]` is the mean of `e[n-L..=n]`, and the output is
///    `m[n-L] * G[n]`: the signal is delayed by `L` samples, so the gain has
///    ramped down linearly over those `L + 1` samples by the time a peak plays.
///
/// Every `e` in the window that averages into a peak's gain is at most the gain
/// that peak needs, so no sample ever leaves above the ceiling (which is below
/// full scale: nothing is ever at +-32767, nothing wraps). The gain never jumps:
/// it goes down by at most `1/(L+1)` of the reduction per sample, and up at the
/// release rate. A periodic signal whose peaks recur within `hold` (a 440 +
/// 1000 Hz pair recurs every 25 ms) settles at a constant gain: no modulation,
/// so no distortion beyond the onset. Two full-scale tones summed measure 89 dB
/// signal-to-distortion per tone once settled (51 dB over the first second,
/// attacks included) where a hard clipper gives 9 dB.
///
/// A limiter whose envelope is at 1 and whose mix stays under the ceiling is
/// idle: it only delays (a copy, bit-exact with the general path).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Highest output peak, dB relative to full scale (32768); -20 to -0.1.
    pub ceiling_dbfs: f32,
    /// How far ahead it looks, which is also the delay it adds (the attack
    /// time); at most 10 ms.
    pub lookahead: Millis,
    /// How long the gain stays down after the last peak before releasing; at
    /// most 1 s.
    pub hold: Millis,
    /// Time constant of the release toward 0 dB; 1 ms to 10 s.
    pub release: Millis,
}

impl Default for LimiterConfig {
    /// -1 dBFS ceiling, 1 ms look-ahead, 50 ms hold, 200 ms release.
    fn default() -> Self {
        LimiterConfig {
            ceiling_dbfs: -1.0,
            lookahead: Millis(1),
            hold: Millis(50),
            release: Millis(200),
        }
    }
}

/// Q16 unity gain.
const ONE: i32 = 1 << 16;

/// The limiter states of every output (listeners and the full mix), in flat
/// vectors allocated once.
#[derive(Debug)]
pub(crate) struct Limiters {
    ceiling: i32,
    /// Look-ahead and delay, samples.
    look: usize,
    hold: u32,
    /// Release step per sample, Q16 of the distance to unity.
    release_k: i64,
    /// `ceil(2^32 / (look + 1))`: exact floor division of the window sum.
    recip: u64,
    env: Vec<i32>,
    holding: Vec<u32>,
    /// Sum of the envelope window.
    sum: Vec<i64>,
    /// Oldest entry of the envelope window ring.
    pos: Vec<usize>,
    /// Envelope windows, `look + 1` per slot.
    hist: Vec<i32>,
    /// The last `look` samples of each slot's mix, not yet played.
    tail: Vec<i32>,
    /// Scratch for the running window maximum: (sample index, magnitude).
    window: Vec<(isize, u32)>,
}

impl Limiters {
    /// Limiters for `slots` outputs of `frame` samples at `rate`.
    pub(crate) fn new(
        config: &LimiterConfig,
        rate: SampleRate,
        frame: usize,
        slots: usize,
    ) -> Result<Self, MixError> {
        let c = config;
        if !(-20.0..=-0.1).contains(&c.ceiling_dbfs) {
            return Err(MixError::BadConfig(
                "limiter ceiling must be -20 to -0.1 dBFS",
            ));
        }
        if c.lookahead.0 > 10 || c.hold.0 > 1000 || !(1..=10_000).contains(&c.release.0) {
            return Err(MixError::BadConfig(
                "limiter look-ahead 0-10 ms, hold 0-1000 ms, release 1-10000 ms",
            ));
        }
        let ceiling = (32768.0 * 10f64.powf(c.ceiling_dbfs as f64 / 20.0)).floor() as i32;
        let look = rate.samples_in(c.lookahead);
        let fs = rate.hz() as f64;
        let release_k =
            ((1.0 - (-1000.0 / (c.release.0 as f64 * fs)).exp()) * ONE as f64).round() as i64;
        let len = look + 1;
        Ok(Limiters {
            ceiling,
            look,
            hold: rate.samples_in(c.hold) as u32,
            release_k: release_k.max(1),
            recip: (1u64 << 32).div_ceil(len as u64),
            env: vec![ONE; slots],
            holding: vec![0; slots],
            sum: vec![len as i64 * ONE as i64; slots],
            pos: vec![0; slots],
            hist: vec![ONE; slots * len],
            tail: vec![0; slots * look],
            window: vec![(0, 0); frame + look],
        })
    }

    /// The delay the limiter adds, samples.
    pub(crate) fn delay(&self) -> usize {
        self.look
    }

    /// The ceiling, as a sample value.
    #[cfg(test)]
    pub(crate) fn ceiling(&self) -> i32 {
        self.ceiling
    }

    /// Whether `slot`'s gain is at unity with nothing pending.
    pub(crate) fn is_idle(&self, slot: usize) -> bool {
        self.env[slot] == ONE
            && self.holding[slot] == 0
            && self.sum[slot] == (self.look as i64 + 1) * ONE as i64
    }

    /// The gain `slot` applies now (1.0 when idle).
    pub(crate) fn gain(&self, slot: usize) -> f32 {
        let g = ((self.sum[slot] as u64 * self.recip) >> 32) as f32;
        g / ONE as f32
    }

    /// Whether `a` and `b` would turn the same mix into the same output.
    pub(crate) fn same_state(&self, a: usize, b: usize) -> bool {
        let (l, len) = (self.look, self.look + 1);
        if self.env[a] != self.env[b]
            || self.holding[a] != self.holding[b]
            || self.sum[a] != self.sum[b]
            || self.tail[a * l..(a + 1) * l] != self.tail[b * l..(b + 1) * l]
        {
            return false;
        }
        let (ha, hb) = (
            &self.hist[a * len..(a + 1) * len],
            &self.hist[b * len..(b + 1) * len],
        );
        let (pa, pb) = (self.pos[a], self.pos[b]);
        (0..len).all(|i| ha[(pa + i) % len] == hb[(pb + i) % len])
    }

    /// Makes `to`'s state a copy of `from`'s.
    pub(crate) fn copy_state(&mut self, from: usize, to: usize) {
        let (l, len) = (self.look, self.look + 1);
        self.env[to] = self.env[from];
        self.holding[to] = self.holding[from];
        self.sum[to] = self.sum[from];
        self.pos[to] = self.pos[from];
        self.hist
            .copy_within(from * len..(from + 1) * len, to * len);
        self.tail.copy_within(from * l..(from + 1) * l, to * l);
    }

    /// Limits one frame of `slot`'s mix `acc` into `out` (both the frame given
    /// to [`Limiters::new`], at least the look-ahead).
    pub(crate) fn process(&mut self, slot: usize, acc: &[i32], out: &mut [i16]) {
        let l = self.look;
        let frame = acc.len();
        let peak = acc.iter().map(|m| m.unsigned_abs()).max().unwrap_or(0);
        let idle = self.is_idle(slot);
        let tail = &mut self.tail[slot * l..(slot + 1) * l];
        if idle && peak <= self.ceiling as u32 {
            // Everything is under the ceiling (the tail too, or the envelope
            // would still be down): a delayed copy.
            for (o, &m) in out.iter_mut().zip(tail.iter().chain(&acc[..frame - l])) {
                *o = m as i16;
            }
            tail.copy_from_slice(&acc[frame - l..]);
            return;
        }
        let len = l + 1;
        let hist = &mut self.hist[slot * len..(slot + 1) * len];
        let (mut env, mut holding) = (self.env[slot], self.holding[slot]);
        let (mut sum, mut pos) = (self.sum[slot], self.pos[slot]);
        // The loudest sample of the window `[n - l, n]`: a monotonic queue of
        // (index, magnitude), magnitudes decreasing, in the scratch buffer
        // (indices from -l, the tail, to frame - 1; each pushed once).
        let mut window = MaxQueue {
            items: &mut self.window,
            head: 0,
            back: 0,
        };
        for (j, &m) in tail.iter().enumerate() {
            window.push(j as isize - l as isize, m.unsigned_abs());
        }
        let limit = self.ceiling as i64 * ONE as i64;
        for n in 0..frame {
            window.push(n as isize, acc[n].unsigned_abs());
            let big = window.max_since(n as isize - l as isize) as i64;
            let next = if holding > 0 || env == ONE {
                env
            } else {
                let step = ((ONE - env) as i64 * self.release_k) >> 16;
                (env + step.max(1) as i32).min(ONE)
            };
            // The window needs floor(limit / big) (< 1 when big is over the
            // ceiling); take it if that is at most where the envelope goes:
            // floor(limit / big) <= next <=> limit < (next + 1) * big.
            if big > self.ceiling as i64 && limit < (next as i64 + 1) * big {
                (env, holding) = ((limit / big) as i32, self.hold);
            } else {
                (env, holding) = (next, holding.saturating_sub(1));
            }
            sum += (env - hist[pos]) as i64;
            hist[pos] = env;
            pos = if pos + 1 == len { 0 } else { pos + 1 };
            let g = ((sum as u64 * self.recip) >> 32) as i64;
            let d = if n < l { tail[n] } else { acc[n - l] } as i64;
            out[n] = ((d * g + (1 << 15)) >> 16).clamp(-32768, 32767) as i16;
        }
        tail.copy_from_slice(&acc[frame - l..]);
        (self.env[slot], self.holding[slot]) = (env, holding);
        (self.sum[slot], self.pos[slot]) = (sum, pos);
    }
}

/// A sliding-window maximum: (index, magnitude) with magnitudes decreasing
/// from `head`; every index is pushed once, in order, so it never wraps.
struct MaxQueue<'a> {
    items: &'a mut [(isize, u32)],
    head: usize,
    back: usize,
}

impl MaxQueue<'_> {
    fn push(&mut self, index: isize, magnitude: u32) {
        while self.back > self.head && self.items[self.back - 1].1 <= magnitude {
            self.back -= 1;
        }
        self.items[self.back] = (index, magnitude);
        self.back += 1;
    }

    /// The largest magnitude pushed at `first` or later (after a push).
    fn max_since(&mut self, first: isize) -> u32 {
        while self.items[self.head].0 < first {
            self.head += 1;
        }
        self.items[self.head].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{ToneGenerator, sine};
    use crate::time::SeededRng;

    fn bank(slots: usize) -> Limiters {
        Limiters::new(&LimiterConfig::default(), SampleRate::HZ_16000, 320, slots).unwrap()
    }

    /// Runs `signal` (i32 samples) through `slot` frame by frame.
    fn run(l: &mut Limiters, slot: usize, signal: &[i32]) -> Vec<i16> {
        let mut out = vec![0i16; signal.len()];
        for (a, o) in signal.chunks(320).zip(out.chunks_mut(320)) {
            l.process(slot, a, o);
        }
        out
    }

    #[test]
    fn under_the_ceiling_it_only_delays() {
        let mut l = bank(1);
        let x: Vec<i32> = sine(16000, 440.0, 20000.0, 3200)
            .iter()
            .map(|&v| v as i32)
            .collect();
        let out = run(&mut l, 0, &x);
        assert!(out[..16].iter().all(|&v| v == 0));
        assert!(out[16..].iter().zip(&x).all(|(&o, &v)| o as i32 == v));
        assert!(l.is_idle(0));
    }

    #[test]
    fn loud_input_never_passes_the_ceiling_and_the_gain_never_jumps() {
        let mut l = bank(1);
        let ceiling = l.ceiling();
        let mut rng = SeededRng::new(9);
        // Bursts of random sums of up to 8 full-scale parties, and pauses.
        let mut x = Vec::new();
        for burst in 0..40 {
            let level = (rng.next_u32() % 8 + 1) as f64;
            for _ in 0..(rng.next_u32() % 3000) {
                let v = if burst % 3 == 2 {
                    0.0
                } else {
                    (rng.next_f64() * 2.0 - 1.0) * 32767.0 * level
                };
                x.push(v as i32);
            }
        }
        x.resize(x.len().div_ceil(320) * 320, 0);
        let out = run(&mut l, 0, &x);
        assert!(out.iter().all(|&v| (v as i32).abs() <= ceiling));
        // The applied gain (output over the delayed input) moves down by at most
        // 1/17 per sample (the reduction spread over the 1 ms look-ahead): never
        // a step to the target.
        let mut last: Option<(usize, f64)> = None;
        for (n, &o) in out.iter().enumerate().skip(16) {
            let d = x[n - 16];
            if d.abs() > 2000 {
                let g = o as f64 / d as f64;
                assert!(g <= 1.0 + 1e-3, "{n} {g}");
                if let Some((m, h)) = last {
                    let most = (n - m) as f64 / 17.0 + 0.01;
                    assert!(h - g <= most, "{m} -> {n}: {h} -> {g}");
                }
                last = Some((n, g));
            }
        }
    }

    #[test]
    fn a_steady_two_tone_settles_at_a_constant_gain() {
        let mut l = bank(1);
        // The sum of two full-scale tones, which i16 cannot hold: generate each.
        let mut a = ToneGenerator::new(16000, &[(440.0, 32767.0)]);
        let mut b = ToneGenerator::new(16000, &[(1000.0, 32767.0)]);
        let (mut xa, mut xb) = (vec![0i16; 16000], vec![0i16; 16000]);
        a.fill(&mut xa);
        b.fill(&mut xb);
        let x: Vec<i32> = xa
            .iter()
            .zip(&xb)
            .map(|(&p, &q)| p as i32 + q as i32)
            .collect();
        let out = run(&mut l, 0, &x);
        // After the first beat period (25 ms) and the look-ahead, the gain is fixed.
        let gains: Vec<f64> = (800..16000)
            .filter(|&n| x[n - 16].abs() > 10000)
            .map(|n| out[n] as f64 / x[n - 16] as f64)
            .collect();
        let (lo, hi) = gains
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &g| (lo.min(g), hi.max(g)));
        assert!(hi - lo < 2e-4, "{lo} {hi}");
        assert!((0.44..0.46).contains(&lo), "{lo}");
    }

    #[test]
    fn it_releases_back_to_idle_after_the_hold() {
        let mut l = bank(2);
        let mut x = vec![60000i32; 320];
        x.extend(std::iter::repeat_n(1000, 320 * 100));
        let out = run(&mut l, 0, &x);
        assert!(out[320..400].iter().all(|&v| v < 30000));
        // 50 ms hold, then a 200 ms time constant: well down after 0.3 s...
        assert!(
            out[320 * 15] < 1000 && out[320 * 15] > 700,
            "{}",
            out[320 * 15]
        );
        // ...and exactly back to unity (and idle) within 2 s.
        assert_eq!(out[320 * 100 - 1], 1000);
        assert!(l.is_idle(0));
        // A slot in the same state behaves identically; after a copy, they match.
        assert!(!l.same_state(0, 1));
        l.copy_state(0, 1);
        assert!(l.same_state(0, 1));
    }

    #[test]
    fn bad_settings_are_refused() {
        for c in [
            LimiterConfig {
                ceiling_dbfs: 0.0,
                ..LimiterConfig::default()
            },
            LimiterConfig {
                lookahead: Millis(11),
                ..LimiterConfig::default()
            },
            LimiterConfig {
                release: Millis(0),
                ..LimiterConfig::default()
            },
        ] {
            assert!(Limiters::new(&c, SampleRate::HZ_8000, 160, 1).is_err());
        }
    }
}
