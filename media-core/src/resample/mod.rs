//! Streaming sample-rate conversion between 8, 16, 24 and 48 kHz.
//!
//! Every pair is an integer ratio `L/M`, so a polyphase FIR does it exactly: the
//! signal is (conceptually) upsampled by `L`, low-pass filtered at the lower rate's
//! band edge, and decimated by `M`, computing only the outputs that are kept.
//!
//! The filter is a Kaiser-windowed sinc (beta 9.5) of `40 r - 1` taps at the
//! intermediate rate, `r = max(L, M)`, cut off at 0.494 x the lower rate. For
//! 8 <-> 24 kHz that is 119 taps (40 per output phase): passband flat within
//! 0.01 dB to 3.4 kHz, >= 94 dB stopband from 4.6 kHz, 2.46 ms delay; every pair
//! has the same response relative to its lower rate and at most that delay.
//! Arithmetic is f32 with the dot product laid out for auto-vectorisation.

mod design;

use crate::time::SampleRate;

/// Input is processed in blocks of this many samples; any input length works.
const BLOCK: usize = 480;

/// Caller misuse of the resampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResampleError {
    /// The output slice is shorter than [`Resampler::max_output`] for the input.
    #[error("output buffer of {len} samples, {needed} may be produced")]
    OutputTooSmall {
        /// Samples that may be produced.
        needed: usize,
        /// Space given.
        len: usize,
    },
}

/// A streaming resampler from one supported rate to another. State carries across
/// calls, so a signal cut into any pieces comes out the same as in one piece.
#[derive(Clone, Debug)]
pub struct Resampler {
    from: SampleRate,
    to: SampleRate,
    up: usize,
    down: usize,
    /// Taps per phase, a multiple of 8.
    taps: usize,
    /// `up` phases of `taps` coefficients each, reversed for a forward dot product.
    coeffs: Vec<f32>,
    /// `taps - 1` samples of history followed by the current block.
    buf: Vec<f32>,
    /// Phase (0..up) of the next output.
    phase: usize,
    /// Index, within the current block, of the newest input the next output uses.
    next_base: usize,
    /// Group delay in input-rate samples times `up` (intermediate-rate samples).
    delay_mid: usize,
    /// The CPU has AVX2 and FMA (checked once, at construction).
    fma: bool,
}

impl Resampler {
    /// A resampler from `from` to `to` (the same rate gives a pass-through).
    pub fn new(from: SampleRate, to: SampleRate) -> Self {
        let g = gcd(from.hz(), to.hz());
        let up = (to.hz() / g) as usize;
        let down = (from.hz() / g) as usize;
        let r = up.max(down);
        let (coeffs, taps, delay_mid) = if r == 1 {
            (Vec::new(), 1, 0) // pass-through: never filtered
        } else {
            let n = 40 * r - 1;
            let cutoff = 0.49375 / r as f64; // cycles per intermediate-rate sample
            let h = design::kaiser_lowpass(n, cutoff, 9.5, up as f64);
            let taps = n.div_ceil(up).div_ceil(8) * 8;
            let mut coeffs = vec![0f32; up * taps];
            for p in 0..up {
                for t in 0..taps {
                    // c_p[t] multiplies x[b - (taps - 1 - t)], i.e. h[p + (taps-1-t) up].
                    let j = p + (taps - 1 - t) * up;
                    if j < n {
                        coeffs[p * taps + t] = h[j] as f32;
                    }
                }
            }
            (coeffs, taps, (n - 1) / 2)
        };
        Resampler {
            from,
            to,
            up,
            down,
            taps,
            coeffs,
            buf: vec![0.0; taps - 1 + BLOCK],
            phase: 0,
            next_base: 0,
            delay_mid,
            fma: cpu_has_avx2_fma(),
        }
    }

    /// Input rate.
    pub fn from_rate(&self) -> SampleRate {
        self.from
    }

    /// Output rate.
    pub fn to_rate(&self) -> SampleRate {
        self.to
    }

    /// Whether input and output rates are equal (samples are copied).
    pub fn is_passthrough(&self) -> bool {
        self.up == 1 && self.down == 1
    }

    /// The most samples one call with `input_len` samples can produce.
    pub fn max_output(&self, input_len: usize) -> usize {
        (input_len * self.up).div_ceil(self.down) + 1
    }

    /// Algorithmic delay in microseconds (the FIR's group delay).
    pub fn delay_micros(&self) -> u64 {
        self.delay_mid as u64 * 1_000_000 / (self.from.hz() as u64 * self.up as u64)
    }

    /// Algorithmic delay in output samples (may be fractional).
    pub fn delay_output_samples(&self) -> f64 {
        self.delay_mid as f64 / self.down as f64
    }

    /// Forgets history (e.g. after a stream restart).
    pub fn reset(&mut self) {
        self.buf.fill(0.0);
        self.phase = 0;
        self.next_base = 0;
    }

    /// Converts `input`, appending the produced samples to `output`; returns how many
    /// were written. `output` must hold [`Resampler::max_output`] samples.
    pub fn process(&mut self, input: &[i16], output: &mut [i16]) -> Result<usize, ResampleError> {
        let needed = self.max_output(input.len());
        if output.len() < needed {
            return Err(ResampleError::OutputTooSmall {
                needed,
                len: output.len(),
            });
        }
        if self.is_passthrough() {
            output[..input.len()].copy_from_slice(input);
            return Ok(input.len());
        }
        #[cfg(target_arch = "x86_64")]
        if self.fma {
            // SAFETY: `fma` is only set when the CPU reported AVX2 and FMA.
            #[allow(unsafe_code)]
            return Ok(unsafe { self.process_avx2_fma(input, output) });
        }
        Ok(self.run::<false>(input, output))
    }

    /// The same loop compiled for AVX2 with fused multiply-add.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn process_avx2_fma(&mut self, input: &[i16], output: &mut [i16]) -> usize {
        self.run::<true>(input, output)
    }

    #[inline(always)]
    fn run<const FMA: bool>(&mut self, input: &[i16], output: &mut [i16]) -> usize {
        let (taps, up) = (self.taps, self.up);
        // The phase advances by down = q*up + r per output; no division in the loop.
        let (q, r) = (self.down / up, self.down % up);
        let hist = taps - 1;
        let (mut phase, mut base) = (self.phase, self.next_base);
        let mut written = 0;
        for block in input.chunks(BLOCK) {
            for (d, &s) in self.buf[hist..hist + block.len()].iter_mut().zip(block) {
                *d = s as f32;
            }
            while base < block.len() {
                let x = &self.buf[base..base + taps];
                let c = &self.coeffs[phase * taps..(phase + 1) * taps];
                #[cfg(target_arch = "x86_64")]
                let y = if FMA {
                    // SAFETY: FMA is only true on the AVX2+FMA path (see `process`).
                    #[allow(unsafe_code)]
                    unsafe {
                        x86::dot_avx2_fma(c, x)
                    }
                } else {
                    dot(c, x)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let y = dot(c, x);
                output[written] = to_i16(y);
                written += 1;
                phase += r;
                base += q;
                if phase >= up {
                    phase -= up;
                    base += 1;
                }
            }
            base -= block.len();
            self.buf.copy_within(block.len()..block.len() + hist, 0);
        }
        (self.phase, self.next_base) = (phase, base);
        written
    }
}

#[inline]
fn to_i16(v: f32) -> i16 {
    v.round().clamp(-32768.0, 32767.0) as i16
}

/// Dot product of equal-length slices whose length is a multiple of 8, eight
/// independent lanes summed once at the end (portable; LLVM packs it).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let lo = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (lo[0] + lo[2]) + (lo[1] + lo[3])
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    /// `dot` with 256-bit fused multiply-adds: two accumulators hide FMA latency.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` and `b` must have the same length,
    /// a multiple of 8 (the resampler pads its taps so).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        debug_assert!(a.len() == b.len() && a.len().is_multiple_of(8));
        let n = a.len().min(b.len()) / 8;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 floats at index 8*i < 8*n <= len.
        unsafe {
            while i + 1 < n {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(8 * i)),
                    _mm256_loadu_ps(pb.add(8 * i)),
                    acc0,
                );
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(8 * i + 8)),
                    _mm256_loadu_ps(pb.add(8 * i + 8)),
                    acc1,
                );
                i += 2;
            }
            if i < n {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(8 * i)),
                    _mm256_loadu_ps(pb.add(8 * i)),
                    acc0,
                );
            }
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

fn cpu_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{goertzel_level_db, sinad_db, sine};
    use SampleRate as R;

    fn run(r: &mut Resampler, x: &[i16]) -> Vec<i16> {
        let mut out = vec![0i16; r.max_output(x.len())];
        let n = r.process(x, &mut out).unwrap();
        out.truncate(n);
        out
    }

    /// Skip the filter's start-up transient.
    fn settled(y: &[i16], rate: R) -> &[i16] {
        &y[rate.hz() as usize / 50..]
    }

    #[test]
    fn sinad_8_to_24_is_at_least_90_db() {
        let x = sine(8000, 1000.0, 32000.0, 16000);
        let mut r = Resampler::new(R::HZ_8000, R::HZ_24000);
        let y = run(&mut r, &x);
        assert_eq!(y.len(), 48000);
        let s = sinad_db(settled(&y, R::HZ_24000), 24000, 1000.0);
        assert!(s >= 90.0, "SINAD {s:.1} dB");
    }

    #[test]
    fn passband_8_to_24_is_flat_to_3400_hz() {
        for f in (100..=3400).step_by(100) {
            let x = sine(8000, f as f64, 16000.0, 8000);
            let mut r = Resampler::new(R::HZ_8000, R::HZ_24000);
            let y = run(&mut r, &x);
            let gain = goertzel_level_db(settled(&y, R::HZ_24000), 24000, f as f64)
                - goertzel_level_db(&x[160..], 8000, f as f64);
            assert!(gain.abs() <= 0.1, "{f} Hz: {gain:.3} dB");
        }
    }

    #[test]
    fn decimation_24_to_8_rejects_6_khz_by_80_db() {
        let x = sine(24000, 6000.0, 30000.0, 24000);
        let mut r = Resampler::new(R::HZ_24000, R::HZ_8000);
        let y = run(&mut r, &x);
        // 6 kHz would alias to 2 kHz at 8 kHz.
        let alias = goertzel_level_db(settled(&y, R::HZ_8000), 8000, 2000.0);
        let input = goertzel_level_db(&x, 24000, 6000.0);
        assert!(input - alias >= 80.0, "attenuation {:.1} dB", input - alias);
    }

    #[test]
    fn delay_is_at_most_2_5_ms_every_way() {
        for from in R::SUPPORTED {
            for to in R::SUPPORTED {
                let r = Resampler::new(from, to);
                assert!(
                    r.delay_micros() <= 2500,
                    "{from:?}->{to:?}: {} us",
                    r.delay_micros()
                );
            }
        }
    }

    #[test]
    fn measured_delay_matches_the_declared_one() {
        // An impulse comes out at the declared delay.
        let mut x = vec![0i16; 800];
        x[400] = 30000;
        let mut r = Resampler::new(R::HZ_8000, R::HZ_24000);
        let y = run(&mut r, &x);
        let peak = y
            .iter()
            .enumerate()
            .max_by_key(|(_, v)| v.unsigned_abs())
            .unwrap()
            .0;
        let expected = 1200.0 + r.delay_output_samples();
        assert!(
            (peak as f64 - expected).abs() <= 1.0,
            "{peak} vs {expected}"
        );
    }

    #[test]
    fn every_pair_preserves_a_tone() {
        for from in R::SUPPORTED {
            for to in R::SUPPORTED {
                let x = sine(from.hz(), 1000.0, 10000.0, from.hz() as usize / 2);
                let mut r = Resampler::new(from, to);
                let y = run(&mut r, &x);
                let expected_len = x.len() * to.hz() as usize / from.hz() as usize;
                assert_eq!(y.len(), expected_len, "{from:?}->{to:?}");
                let s = sinad_db(settled(&y, to), to.hz(), 1000.0);
                assert!(s > 70.0, "{from:?}->{to:?}: SINAD {s:.1}");
            }
        }
    }

    #[test]
    fn streaming_in_any_pieces_equals_one_piece() {
        let x = sine(16000, 700.0, 12000.0, 5000);
        let whole = run(&mut Resampler::new(R::HZ_16000, R::HZ_24000), &x);
        let mut r = Resampler::new(R::HZ_16000, R::HZ_24000);
        let mut pieces = Vec::new();
        let mut rng = crate::time::SeededRng::new(9);
        let mut at = 0;
        while at < x.len() {
            let n = (1 + rng.next_u32() as usize % 700).min(x.len() - at);
            pieces.extend(run(&mut r, &x[at..at + n]));
            at += n;
        }
        assert_eq!(pieces, whole);
    }

    #[test]
    fn portable_and_simd_paths_agree() {
        let x = sine(8000, 1234.0, 20000.0, 4000);
        let mut simd = Resampler::new(R::HZ_8000, R::HZ_48000);
        let mut portable = simd.clone();
        portable.fma = false;
        let (a, b) = (run(&mut simd, &x), run(&mut portable, &x));
        assert_eq!(a.len(), b.len());
        // Fused vs separate rounding: at most one LSB apart.
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1));
    }

    #[test]
    fn small_output_is_an_error() {
        let mut r = Resampler::new(R::HZ_8000, R::HZ_48000);
        let mut out = [0i16; 10];
        assert!(matches!(
            r.process(&[0; 160], &mut out),
            Err(ResampleError::OutputTooSmall {
                needed: 961,
                len: 10
            })
        ));
    }
}
