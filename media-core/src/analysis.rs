//! Signal measurement and synthesis: tones, levels, frequency detection, SINAD.
//!
//! Used by the tone/echo test targets, by ringback and in-band DTMF generation, and
//! by tests that prove audio crossed a path (a tone in, the same tone out).

use std::f64::consts::PI;

/// Full scale of 16-bit PCM.
pub const FULL_SCALE: f64 = 32768.0;

/// `len` samples of `amplitude * sin(2 pi f t)` at `rate`.
pub fn sine(rate: u32, freq: f64, amplitude: f64, len: usize) -> Vec<i16> {
    let mut g = ToneGenerator::new(rate, &[(freq, amplitude)]);
    let mut v = vec![0; len];
    g.fill(&mut v);
    v
}

/// `len` samples of a deterministic speech-like test signal at `rate`: a harmonic
/// voice whose pitch glides between 100 and 220 Hz, in 250 ms syllables separated
/// by 100 ms pauses, peaking near -6 dBFS. Unlike a steady tone it keeps codec
/// voice-activity detectors engaged, as real speech does.
pub fn speech_like(rate: u32, len: usize) -> Vec<i16> {
    let fs = rate as f64;
    let mut phase = 0.0f64;
    (0..len)
        .map(|n| {
            let t = n as f64 / fs;
            let f0 = 160.0 + 60.0 * (2.0 * PI * 1.3 * t).sin();
            phase += 2.0 * PI * f0 / fs;
            let cycle = t % 0.35;
            let env = if cycle < 0.25 {
                (PI * cycle / 0.25).sin()
            } else {
                0.0
            };
            let mut v = 0.0;
            let mut k = 1.0;
            while k * f0 < (fs / 2.0).min(4000.0) {
                v += (k * phase).sin() / k;
                k += 1.0;
            }
            (env * v * 8000.0).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// A phase-continuous generator of one or two summed sine tones (dial tone,
/// ringback, DTMF pairs), allocation-free.
#[derive(Clone, Debug)]
pub struct ToneGenerator {
    tones: [(f64, f64); 2], // (phase increment, amplitude)
    phases: [f64; 2],
}

impl ToneGenerator {
    /// Up to two `(frequency Hz, amplitude)` components at `rate`.
    pub fn new(rate: u32, tones: &[(f64, f64)]) -> Self {
        let mut t = [(0.0, 0.0); 2];
        for (slot, &(f, a)) in t.iter_mut().zip(tones) {
            *slot = (2.0 * PI * f / rate as f64, a);
        }
        ToneGenerator {
            tones: t,
            phases: [0.0; 2],
        }
    }

    /// Writes the next `out.len()` samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            let mut v = 0.0;
            for (i, &(inc, amp)) in self.tones.iter().enumerate() {
                v += amp * self.phases[i].sin();
                self.phases[i] = (self.phases[i] + inc) % (2.0 * PI);
            }
            *s = v.round().clamp(-32768.0, 32767.0) as i16;
        }
    }
}

/// Amplitude of the `freq` component of `x` (Goertzel), in dB relative to a
/// full-scale sine. A silent or empty input gives -200 dB.
pub fn goertzel_level_db(x: &[i16], rate: u32, freq: f64) -> f64 {
    if x.is_empty() {
        return -200.0;
    }
    let w = 2.0 * PI * freq / rate as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = v as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let amplitude = 2.0 * power.max(0.0).sqrt() / x.len() as f64;
    20.0 * (amplitude / FULL_SCALE).max(1e-10).log10()
}

/// RMS level in dB relative to full scale (a full-scale sine is -3 dB).
pub fn rms_db(x: &[i16]) -> f64 {
    if x.is_empty() {
        return -200.0;
    }
    let e: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64;
    10.0 * (e / (FULL_SCALE * FULL_SCALE)).max(1e-20).log10()
}

/// Energy (sum of squares) of `x`.
pub fn energy(x: &[i16]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum()
}

/// The strongest frequency in `x` between `lo` and `hi` Hz, searched on a 5 Hz
/// grid with Goertzel and refined to 1 Hz. Good enough to tell 440 from 1000 Hz
/// after a codec, which is what tests ask.
pub fn dominant_frequency(x: &[i16], rate: u32, lo: f64, hi: f64) -> f64 {
    let best = |from: f64, to: f64, step: f64| {
        let mut f = from;
        let mut best = (from, f64::MIN);
        while f <= to {
            let l = goertzel_level_db(x, rate, f);
            if l > best.1 {
                best = (f, l);
            }
            f += step;
        }
        best.0
    };
    let coarse = best(lo, hi, 5.0);
    best((coarse - 5.0).max(lo), (coarse + 5.0).min(hi), 1.0)
}

/// Signal to noise-and-distortion ratio (dB) of `x` against an ideal sine at
/// `freq`: the sine (amplitude, phase and DC) is fitted by least squares and
/// everything else counts as noise and distortion.
pub fn sinad_db(x: &[i16], rate: u32, freq: f64) -> f64 {
    sinad_tones_db(x, rate, &[freq])[0]
}

/// [`sinad_db`] for a signal made of several tones (a mix): the sines at `freqs`
/// (amplitude and phase each) and DC are fitted together by least squares,
/// everything else counts as noise and distortion, and entry `k` is the power of
/// tone `k` over that residue's power, in dB.
pub fn sinad_tones_db(x: &[i16], rate: u32, freqs: &[f64]) -> Vec<f64> {
    let ws: Vec<f64> = freqs.iter().map(|f| 2.0 * PI * f / rate as f64).collect();
    let dim = 2 * ws.len() + 1;
    let basis = |n: usize, out: &mut [f64]| {
        for (k, w) in ws.iter().enumerate() {
            out[2 * k] = (w * n as f64).sin();
            out[2 * k + 1] = (w * n as f64).cos();
        }
        out[dim - 1] = 1.0;
    };
    // Normal equations.
    let mut m = vec![vec![0.0f64; dim]; dim];
    let mut b = vec![0.0f64; dim];
    let mut e = vec![0.0f64; dim];
    for (n, &v) in x.iter().enumerate() {
        basis(n, &mut e);
        for i in 0..dim {
            b[i] += e[i] * v as f64;
            for j in 0..dim {
                m[i][j] += e[i] * e[j];
            }
        }
    }
    let c = solve(m, b);
    let mut sig = vec![0.0f64; ws.len()];
    let mut noise = 0.0;
    for (n, &v) in x.iter().enumerate() {
        basis(n, &mut e);
        let mut r = v as f64 - c[dim - 1];
        for (k, s) in sig.iter_mut().enumerate() {
            let t = c[2 * k] * e[2 * k] + c[2 * k + 1] * e[2 * k + 1];
            *s += t * t;
            r -= t;
        }
        noise += r * r;
    }
    sig.iter()
        .map(|s| 10.0 * (s / noise.max(1e-30)).log10())
        .collect()
}

/// Solves `m x = b` by Gaussian elimination with partial pivoting (zeros if
/// singular).
fn solve(mut m: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let dim = b.len();
    for col in 0..dim {
        let pivot = (col..dim)
            .max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))
            .unwrap_or(col);
        m.swap(col, pivot);
        b.swap(col, pivot);
        if m[col][col].abs() < 1e-300 {
            return vec![0.0; dim];
        }
        let pivot_row = m[col].clone();
        for row in col + 1..dim {
            let f = m[row][col] / pivot_row[col];
            for (x, p) in m[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; dim];
    for i in (0..dim).rev() {
        let s: f64 = (i + 1..dim).map(|k| m[i][k] * x[k]).sum();
        x[i] = (b[i] - s) / m[i][i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_measures_a_tone_and_rejects_others() {
        let x = sine(8000, 1000.0, 16384.0, 8000);
        assert!((goertzel_level_db(&x, 8000, 1000.0) - (-6.02)).abs() < 0.05);
        assert!(goertzel_level_db(&x, 8000, 1500.0) < -80.0);
        assert!((rms_db(&x) - (-9.03)).abs() < 0.05);
        assert_eq!(goertzel_level_db(&[], 8000, 1000.0), -200.0);
    }

    #[test]
    fn dominant_frequency_finds_the_tone() {
        let x = sine(24000, 440.0, 8000.0, 4800);
        assert!((dominant_frequency(&x, 24000, 100.0, 4000.0) - 440.0).abs() <= 1.0);
    }

    #[test]
    fn sinad_of_a_clean_and_a_noisy_tone() {
        let x = sine(8000, 1000.0, 32000.0, 8000);
        assert!(sinad_db(&x, 8000, 1000.0) > 90.0);
        let mut rng = crate::time::SeededRng::new(3);
        let noisy: Vec<i16> = x
            .iter()
            .map(|&v| v.saturating_add((rng.next_f64() * 2000.0 - 1000.0) as i16))
            .collect();
        let s = sinad_db(&noisy, 8000, 1000.0);
        assert!((30.0..34.0).contains(&s), "{s}"); // 20 log(32000 / (1000 / sqrt 3))
    }

    #[test]
    fn sinad_of_each_tone_of_a_pair() {
        let a = sine(16000, 440.0, 16000.0, 16000);
        let b = sine(16000, 1000.0, 8000.0, 16000);
        let x: Vec<i16> = a.iter().zip(&b).map(|(&p, &q)| p + q).collect();
        let s = sinad_tones_db(&x, 16000, &[440.0, 1000.0]);
        // Only rounding to integers: about 89 and 83 dB.
        assert!(
            s[0] > 85.0 && s[1] > 79.0 && (s[0] - s[1] - 6.02).abs() < 0.1,
            "{s:?}"
        );
        // Clipped at half the peak: distortion.
        let clipped: Vec<i16> = x.iter().map(|&v| v.clamp(-12000, 12000)).collect();
        let c = sinad_tones_db(&clipped, 16000, &[440.0, 1000.0]);
        assert!(c[0] < 25.0, "{c:?}");
        assert_eq!(
            sinad_db(&a, 16000, 440.0),
            sinad_tones_db(&a, 16000, &[440.0])[0]
        );
    }

    #[test]
    fn two_tone_generator_is_phase_continuous() {
        let mut g = ToneGenerator::new(8000, &[(697.0, 8000.0), (1209.0, 8000.0)]);
        let mut a = vec![0; 80];
        let mut b = vec![0; 80];
        g.fill(&mut a);
        g.fill(&mut b);
        let mut whole = vec![0; 160];
        ToneGenerator::new(8000, &[(697.0, 8000.0), (1209.0, 8000.0)]).fill(&mut whole);
        assert_eq!([a, b].concat(), whole);
    }
}
