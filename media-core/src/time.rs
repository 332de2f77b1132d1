//! Injected time and the units media is measured in.
//!
//! The cores never read a clock: every state machine takes `now: Instant` from its
//! driver. `Instant` is a plain microsecond count from an epoch the driver picks, so
//! tests start at [`Instant::ZERO`] and step virtual time exactly.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time: microseconds since an epoch chosen by the driver.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The epoch. Virtual-time tests start here.
    pub const ZERO: Instant = Instant(0);

    /// An instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Instant(micros)
    }

    /// An instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis * 1000)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        u64::try_from(d.as_micros())
            .ok()
            .and_then(|m| self.0.checked_add(m))
            .map(Instant)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturates at the end of time rather than panicking on hostile input.
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant(u64::MAX))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating: an instant before `rhs` gives zero.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// A duration in whole milliseconds (packetization time, buffer targets).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Millis(pub u32);

impl Millis {
    /// As a [`Duration`].
    pub const fn duration(self) -> Duration {
        Duration::from_millis(self.0 as u64)
    }
}

/// Audio sample rate in Hz (samples per second of one channel).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SampleRate(u32);

impl SampleRate {
    /// 8 kHz: G.711, narrowband.
    pub const HZ_8000: SampleRate = SampleRate(8000);
    /// 16 kHz: wideband.
    pub const HZ_16000: SampleRate = SampleRate(16000);
    /// 24 kHz: the rate AI voice agents speak.
    pub const HZ_24000: SampleRate = SampleRate(24000);
    /// 48 kHz: Opus fullband, browsers.
    pub const HZ_48000: SampleRate = SampleRate(48000);
    /// The rates the media core converts between.
    pub const SUPPORTED: [SampleRate; 4] = [
        Self::HZ_8000,
        Self::HZ_16000,
        Self::HZ_24000,
        Self::HZ_48000,
    ];

    /// One of [`SampleRate::SUPPORTED`], else `None`.
    pub fn new(hz: u32) -> Option<SampleRate> {
        Self::SUPPORTED.into_iter().find(|r| r.0 == hz)
    }

    /// Samples per second.
    pub const fn hz(self) -> u32 {
        self.0
    }

    /// Samples in `ms` of audio.
    pub const fn samples_in(self, ms: Millis) -> usize {
        (self.0 as usize / 1000) * ms.0 as usize
    }
}

/// An RTP clock rate in Hz (RFC 3550 section 5.1). Not always the audio sample rate:
/// Opus always uses 48000 (RFC 7587 section 4.1) whatever rate it is decoded at.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ClockRate(pub u32);

impl ClockRate {
    /// RTP timestamp ticks in `ms`.
    pub const fn ticks_in(self, ms: Millis) -> u32 {
        (self.0 / 1000) * ms.0
    }
}

/// A deterministic, seedable PRNG (SplitMix64) for SSRCs, sequence numbers and test
/// impairments. Seeded by the driver so cores never pull entropy themselves.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_saturates() {
        let t = Instant::from_millis(5);
        assert_eq!(t + Duration::from_millis(15), Instant::from_millis(20));
        assert_eq!(Instant::ZERO - t, Duration::ZERO);
        assert_eq!(t - Instant::ZERO, Duration::from_millis(5));
        assert_eq!(
            Instant::from_micros(u64::MAX) + Duration::from_secs(1),
            Instant::from_micros(u64::MAX)
        );
    }

    #[test]
    fn units_convert() {
        assert_eq!(SampleRate::HZ_8000.samples_in(Millis(20)), 160);
        assert_eq!(SampleRate::HZ_48000.samples_in(Millis(60)), 2880);
        assert_eq!(ClockRate(48000).ticks_in(Millis(20)), 960);
        assert_eq!(SampleRate::new(44100), None);
        assert_eq!(SampleRate::new(24000), Some(SampleRate::HZ_24000));
    }

    #[test]
    fn rng_is_deterministic_and_uniformish() {
        let mut a = SeededRng::new(7);
        let mut b = SeededRng::new(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut r = SeededRng::new(1);
        let hits = (0..100_000).filter(|_| r.chance(0.05)).count();
        assert!((4500..5500).contains(&hits), "{hits}");
    }
}
