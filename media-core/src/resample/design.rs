//! Low-pass FIR design by the Kaiser window method (Kaiser 1974).

/// `n` taps of a windowed-sinc low-pass with `cutoff` in cycles per sample,
/// Kaiser window `beta`, scaled to a DC gain of `gain`.
pub(super) fn kaiser_lowpass(n: usize, cutoff: f64, beta: f64, gain: f64) -> Vec<f64> {
    let mid = (n - 1) as f64 / 2.0;
    let i0_beta = bessel_i0(beta);
    let mut h: Vec<f64> = (0..n)
        .map(|i| {
            let t = i as f64 - mid;
            let x = 2.0 * cutoff * t;
            let sinc = if x == 0.0 {
                1.0
            } else {
                (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
            };
            let r = t / mid;
            let w = bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            2.0 * cutoff * sinc * w
        })
        .collect();
    let sum: f64 = h.iter().sum();
    for v in &mut h {
        *v *= gain / sum;
    }
    h
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let q = x * x / 4.0;
    let (mut sum, mut term) = (1.0, 1.0);
    for k in 1..64 {
        term *= q / (k * k) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i0_matches_known_values() {
        assert!((bessel_i0(0.0) - 1.0).abs() < 1e-15);
        assert!((bessel_i0(1.0) - 1.266_065_877_752_008_4).abs() < 1e-12);
        assert!((bessel_i0(9.5) - 1_753.480_990_527).abs() < 1e-6);
    }

    #[test]
    fn lowpass_is_symmetric_with_unit_gain() {
        let h = kaiser_lowpass(119, 0.16, 9.5, 1.0);
        assert!((h.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for i in 0..h.len() {
            assert!((h[i] - h[h.len() - 1 - i]).abs() < 1e-15);
        }
    }
}
