//! Time-stretching by whole pitch periods (pitch-synchronous overlap-add), the
//! way NetEQ's accelerate and preemptive-expand work: to play faster, one period
//! is cross-faded into the next and dropped; to play slower, one is repeated. A
//! period matches its neighbour, so the join is inaudible on voiced speech; on
//! silence any length goes. This is how the jitter buffer moves its delay by less
//! than a frame without dropping or inventing whole frames.

/// Pitch-synchronous time-stretcher at one sample rate.
#[derive(Clone, Debug)]
pub(crate) struct Stretcher {
    per_ms: usize,
}

/// Below this RMS (about -60 dBFS) a segment counts as silence.
const SILENCE_RMS: f64 = 33.0;
/// Correlation a lag needs to count as a pitch period.
const MIN_CORRELATION: f64 = 0.5;

impl Stretcher {
    pub(crate) fn new(rate_hz: u32) -> Self {
        Stretcher {
            per_ms: (rate_hz / 1000) as usize,
        }
    }

    /// Shortest stretch: 2.5 ms.
    pub(crate) fn min_period(&self) -> usize {
        self.per_ms * 5 / 2
    }

    /// Writes `out.len()` samples made from `input[..out.len() + p]` with one period
    /// `p <= max_p` removed; returns the samples consumed (`out.len()` when no good
    /// period exists: plain copy).
    pub(crate) fn accelerate(&self, input: &[i16], out: &mut [i16], max_p: usize) -> usize {
        let n = out.len();
        let max_p = max_p.min(input.len().saturating_sub(n)).min(n);
        let p = self.period(input, max_p);
        if p == 0 {
            out.copy_from_slice(&input[..n]);
            return n;
        }
        crossfade(&input[..p], &input[p..2 * p], &mut out[..p]);
        out[p..].copy_from_slice(&input[2 * p..n + p]);
        n + p
    }

    /// Writes `out.len()` samples made from `input[..out.len() - p]` with one period
    /// `p <= max_p` repeated; returns the samples consumed (`out.len()` when no good
    /// period exists: plain copy).
    pub(crate) fn expand(&self, input: &[i16], out: &mut [i16], max_p: usize) -> usize {
        let n = out.len();
        let max_p = max_p.min(n / 3);
        // The period is found in the first 2p samples; the output repeats it.
        let p = self.period(&input[..n.min(input.len())], max_p);
        if p == 0 || input.len() < n - p {
            out.copy_from_slice(&input[..n]);
            return n;
        }
        out[..p].copy_from_slice(&input[..p]);
        // Second copy: fade from the natural continuation into the first period.
        crossfade(&input[p..2 * p], &input[..p], &mut out[p..2 * p]);
        out[2 * p..].copy_from_slice(&input[p..n - p]);
        n - p
    }

    /// The lag in `[2.5 ms, max_p]` where `x[..p]` best matches `x[p..2p]`; `max_p`
    /// itself for silence; 0 if nothing matches well enough.
    fn period(&self, x: &[i16], max_p: usize) -> usize {
        let min_p = self.min_period();
        let max_p = max_p.min(x.len() / 2);
        if max_p < min_p {
            return 0;
        }
        let rms = (x[..2 * max_p]
            .iter()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            / (2 * max_p) as f64)
            .sqrt();
        if rms < SILENCE_RMS {
            return max_p;
        }
        // Coarse search at 8 kHz resolution, then refine.
        let step = (self.per_ms / 8).max(1);
        let corr = |p: usize| -> f64 {
            let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
            let mut i = 0;
            while i < p {
                let (a, b) = (x[i] as f64, x[i + p] as f64);
                xy += a * b;
                xx += a * a;
                yy += b * b;
                i += step;
            }
            if xx == 0.0 || yy == 0.0 {
                0.0
            } else {
                xy / (xx * yy).sqrt()
            }
        };
        let mut best = (0, MIN_CORRELATION);
        let mut p = min_p;
        while p <= max_p {
            let c = corr(p);
            if c > best.1 {
                best = (p, c);
            }
            p += step;
        }
        if best.0 != 0 && step > 1 {
            for q in best.0.saturating_sub(step).max(min_p)..=(best.0 + step).min(max_p) {
                let c = corr(q);
                if c > best.1 {
                    best = (q, c);
                }
            }
        }
        best.0
    }
}

/// `out[i] = a[i] * (1 - w) + b[i] * w` with `w` rising linearly over the span.
fn crossfade(a: &[i16], b: &[i16], out: &mut [i16]) {
    let n = out.len() as f32;
    for (i, o) in out.iter_mut().enumerate() {
        let w = (i as f32 + 0.5) / n;
        *o = (a[i] as f32 * (1.0 - w) + b[i] as f32 * w).round() as i16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{dominant_frequency, goertzel_level_db, sine};

    #[test]
    fn accelerate_removes_one_period_of_a_tone_seamlessly() {
        let s = Stretcher::new(8000);
        let x = sine(8000, 200.0, 10000.0, 400); // period 40 samples
        let mut out = vec![0i16; 160];
        let consumed = s.accelerate(&x, &mut out, 80);
        assert_eq!(consumed % 40, 0, "a whole number of periods: {consumed}");
        assert!(consumed > 160);
        // The output is still the tone, without a jump.
        let max_step = out.windows(2).map(|w| (w[1] - w[0]).abs()).max().unwrap();
        assert!(max_step < 1700, "{max_step}");
        assert!((dominant_frequency(&out, 8000, 100.0, 1000.0) - 200.0).abs() < 10.0);
    }

    #[test]
    fn expand_repeats_one_period() {
        let s = Stretcher::new(16000);
        let x = sine(16000, 250.0, 10000.0, 320); // period 64 samples
        let mut out = vec![0i16; 320];
        let consumed = s.expand(&x, &mut out, 100);
        assert_eq!(320 - consumed, 64);
        let max_step = out.windows(2).map(|w| (w[1] - w[0]).abs()).max().unwrap();
        assert!(max_step < 1700, "{max_step}");
        assert!(
            (goertzel_level_db(&out, 16000, 250.0) - goertzel_level_db(&x, 16000, 250.0)).abs()
                < 0.5
        );
    }

    #[test]
    fn silence_stretches_by_the_maximum_and_noise_not_at_all() {
        let s = Stretcher::new(8000);
        let quiet = vec![3i16; 400];
        let mut out = vec![0i16; 160];
        assert_eq!(s.accelerate(&quiet, &mut out, 80), 240);
        let mut rng = crate::time::SeededRng::new(4);
        let noise: Vec<i16> = (0..400).map(|_| (rng.next_u32() as i16) / 2).collect();
        assert_eq!(s.accelerate(&noise, &mut out, 80), 160);
        assert_eq!(&out[..], &noise[..160]);
    }

    #[test]
    fn short_input_never_panics() {
        let s = Stretcher::new(48000);
        let x = sine(48000, 300.0, 5000.0, 960);
        let mut out = vec![0i16; 960];
        assert_eq!(s.accelerate(&x, &mut out, 480), 960); // no slack: copy
        assert!(s.expand(&x, &mut out, 480) <= 960);
    }
}
