//! Per-edge gains in fixed point, and the one way they are applied to samples.
//!
//! Every contribution of a source to a mix is computed by [`accumulate`] with the
//! same integer formula, so a mix can be built by adding terms or by taking a
//! shared sum and subtracting some of them, and both give the same bits.

/// A linear gain in Q14 fixed point: `raw / 16384`, from [`Gain::SILENT`] (0) to
/// [`Gain::MAX`] (65535 / 16384, +12.04 dB). One step is 1/16384 (-84 dB), so
/// [`Gain::from_db`] is within 0.3 dB down to -60 dB and within 0.01 dB above -20.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Gain(u16);

impl Gain {
    /// Fraction bits of the fixed-point value.
    pub const FRAC_BITS: u32 = 14;
    /// 0 dB: the sample as it is.
    pub const UNITY: Gain = Gain(1 << 14);
    /// Not heard at all.
    pub const SILENT: Gain = Gain(0);
    /// The largest gain, +12.04 dB.
    pub const MAX: Gain = Gain(u16::MAX);

    /// The gain whose Q14 value is `raw`.
    pub const fn from_q14(raw: u16) -> Gain {
        Gain(raw)
    }

    /// The Q14 value.
    pub const fn to_q14(self) -> u16 {
        self.0
    }

    /// The gain nearest to `linear` (clamped to `0..=`[`Gain::MAX`]; NaN is silent).
    pub fn from_linear(linear: f32) -> Gain {
        if linear.is_nan() || linear <= 0.0 {
            return Gain::SILENT;
        }
        Gain((linear * 16384.0).round().min(u16::MAX as f32) as u16)
    }

    /// The gain nearest to `db` decibels (amplitude): -inf, NaN and anything below
    /// -90 dB are silent, anything above +12.04 dB is [`Gain::MAX`].
    pub fn from_db(db: f32) -> Gain {
        if db.is_nan() || db < -90.0 {
            return Gain::SILENT;
        }
        Gain::from_linear(10f32.powf(db / 20.0))
    }

    /// As a linear factor.
    pub fn linear(self) -> f32 {
        self.0 as f32 / 16384.0
    }

    /// In decibels (`-inf` for [`Gain::SILENT`]).
    pub fn to_db(self) -> f32 {
        20.0 * self.linear().log10()
    }

    /// Whether this gain mutes.
    pub const fn is_silent(self) -> bool {
        self.0 == 0
    }
}

impl Default for Gain {
    /// [`Gain::UNITY`].
    fn default() -> Self {
        Gain::UNITY
    }
}

const UNITY: i32 = Gain::UNITY.0 as i32;
const HALF: i32 = 1 << (Gain::FRAC_BITS - 1);

/// The ramp's progress after each sample of a frame, Q15: `(n + 1) / frame`, the
/// last one exactly 1, so a ramp ends exactly on its target.
pub(crate) fn ramp_table(frame: usize) -> Vec<i32> {
    (1..=frame)
        .map(|n| ((n as u64) << 15).div_ceil(frame as u64) as i32)
        .collect()
}

/// Adds (or, with `SUB`, subtracts) `x` weighted by a gain that moves linearly
/// from `from` to `to` (Q14) over the frame (`ramp` from [`ramp_table`]) into `acc`.
///
/// A term is `(x * g + 2^13) >> 14`, exactly `x` at unity: at most 131070 in
/// magnitude, so an i32 sum of up to 16000 of them cannot wrap.
#[inline]
pub(crate) fn accumulate<const SUB: bool>(
    acc: &mut [i32],
    x: &[i16],
    from: u16,
    to: u16,
    ramp: &[i32],
) {
    let (from, to) = (from as i32, to as i32);
    let sign = if SUB { -1 } else { 1 };
    if from == to {
        match to {
            0 => {}
            UNITY => {
                for (a, &s) in acc.iter_mut().zip(x) {
                    *a += sign * s as i32;
                }
            }
            g => {
                for (a, &s) in acc.iter_mut().zip(x) {
                    *a += sign * ((s as i32 * g + HALF) >> Gain::FRAC_BITS);
                }
            }
        }
        return;
    }
    // |to - from| <= 65535 and ramp <= 2^15: the product fits an i32.
    let delta = to - from;
    for ((a, &s), &r) in acc.iter_mut().zip(x).zip(ramp) {
        let g = from + ((delta * r) >> 15);
        *a += sign * ((s as i32 * g + HALF) >> Gain::FRAC_BITS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_round_trips_over_the_range() {
        assert_eq!(Gain::from_db(0.0), Gain::UNITY);
        assert_eq!(Gain::from_db(f32::NEG_INFINITY), Gain::SILENT);
        assert_eq!(Gain::from_db(f32::NAN), Gain::SILENT);
        assert_eq!(Gain::from_db(40.0), Gain::MAX);
        assert!((Gain::MAX.to_db() - 12.04).abs() < 0.01);
        for db in [-60.0f32, -40.0, -20.0, -6.0, 0.0, 6.0, 12.0] {
            let back = Gain::from_db(db).to_db();
            let tolerance = if db < -20.0 { 0.3 } else { 0.01 };
            assert!((back - db).abs() < tolerance, "{db} -> {back}");
        }
        assert_eq!(Gain::from_linear(-1.0), Gain::SILENT);
        assert_eq!(Gain::from_linear(0.5).to_q14(), 8192);
        assert_eq!(Gain::default(), Gain::UNITY);
        assert!(Gain::SILENT.is_silent() && !Gain::UNITY.is_silent());
    }

    #[test]
    fn unity_is_exact_and_a_ramp_ends_on_its_target() {
        let ramp = ramp_table(160);
        assert_eq!(ramp[159], 1 << 15);
        let x: Vec<i16> = (0..160).map(|i| (i * 409 - 32768) as i16).collect();
        let mut acc = vec![0i32; 160];
        accumulate::<false>(&mut acc, &x, 16384, 16384, &ramp);
        assert!(acc.iter().zip(&x).all(|(&a, &s)| a == s as i32));
        // The general formula at unity gives the same as the shortcut.
        let mut ramped = vec![0i32; 160];
        accumulate::<false>(&mut ramped, &x, 0, 16384, &ramp);
        assert_eq!(ramped[159], x[159] as i32);
        assert!(ramped[0].abs() <= (x[0] as i32).abs() / 100 + 1);
        // Subtracting the same term gives back exactly zero.
        accumulate::<true>(&mut ramped, &x, 0, 16384, &ramp);
        assert!(ramped.iter().all(|&a| a == 0));
    }

    #[test]
    fn the_largest_terms_do_not_overflow() {
        let ramp = ramp_table(960);
        let mut acc = vec![0i32; 960];
        for _ in 0..100 {
            accumulate::<false>(&mut acc, &[i16::MIN; 960], 0, u16::MAX, &ramp);
            accumulate::<false>(&mut acc, &[i16::MIN; 960], u16::MAX, u16::MAX, &ramp);
        }
        assert_eq!(acc[959], 200 * ((-32768 * 65535 + 8192) >> 14));
        assert_eq!(acc[959], 200 * -131070);
    }
}
