//! Talk detection per source: frame energy against a threshold, with hangover
//! (described on [`super::MixerConfig::talk_threshold_dbfs`]).

use crate::time::{Millis, SampleRate};

use super::MixError;

#[derive(Debug)]
pub(crate) struct TalkDetector {
    /// Sum of squares of a frame at the threshold; `None`: every present source talks.
    threshold: Option<u64>,
    hangover: u32,
    /// Frames of hangover left per source.
    remaining: Vec<u32>,
}

impl TalkDetector {
    pub(crate) fn new(
        threshold_dbfs: Option<f32>,
        hangover: Millis,
        rate: SampleRate,
        frame: Millis,
        slots: usize,
    ) -> Result<Self, MixError> {
        let threshold = match threshold_dbfs {
            None => None,
            Some(db) if (-96.0..=0.0).contains(&db) => {
                let rms = 32768.0 * 10f64.powf(db as f64 / 20.0);
                Some((rms * rms * rate.samples_in(frame) as f64).ceil() as u64)
            }
            Some(_) => {
                return Err(MixError::BadConfig("talk threshold must be -96 to 0 dBFS"));
            }
        };
        if hangover.0 > 10_000 {
            return Err(MixError::BadConfig("talk hangover at most 10 s"));
        }
        Ok(TalkDetector {
            threshold,
            hangover: hangover.0.div_ceil(frame.0),
            remaining: vec![0; slots],
        })
    }

    /// Whether `slot` talks in this frame (`None`: absent, which also ends any
    /// hangover).
    pub(crate) fn update(&mut self, slot: usize, frame: Option<&[i16]>) -> bool {
        let Some(frame) = frame else {
            self.remaining[slot] = 0;
            return false;
        };
        let Some(threshold) = self.threshold else {
            return true;
        };
        let energy: u64 = frame
            .iter()
            .map(|&s| (s as i32 * s as i32) as u32 as u64)
            .sum();
        if energy >= threshold {
            self.remaining[slot] = self.hangover;
            return true;
        }
        if self.remaining[slot] > 0 {
            self.remaining[slot] -= 1;
            return true;
        }
        false
    }

    /// Forgets `slot`'s hangover.
    pub(crate) fn reset(&mut self, slot: usize) {
        self.remaining[slot] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::sine;

    fn detector() -> TalkDetector {
        TalkDetector::new(Some(-50.0), Millis(300), SampleRate::HZ_8000, Millis(20), 2).unwrap()
    }

    #[test]
    fn threshold_and_hangover() {
        let mut d = detector();
        // -3 dB below full scale for a sine: amplitude 150 is -49.8 dBFS RMS.
        let loud = sine(8000, 300.0, 150.0, 160);
        let quiet = sine(8000, 300.0, 130.0, 160); // -51 dBFS
        assert!(!d.update(0, Some(&quiet)));
        assert!(d.update(0, Some(&loud)));
        // 300 ms = 15 frames of hangover, then silence.
        for _ in 0..15 {
            assert!(d.update(0, Some(&quiet)));
        }
        assert!(!d.update(0, Some(&quiet)));
        // The other slot is independent; absence ends the hangover at once.
        assert!(d.update(1, Some(&loud)));
        assert!(!d.update(1, None));
        assert!(!d.update(1, Some(&[0; 160])));
        assert!(d.update(1, Some(&[i16::MIN; 160])));
        d.reset(1);
        assert!(!d.update(1, Some(&[0; 160])));
    }

    #[test]
    fn without_a_threshold_every_present_source_talks() {
        let mut d =
            TalkDetector::new(None, Millis(300), SampleRate::HZ_8000, Millis(20), 1).unwrap();
        assert!(d.update(0, Some(&[0; 160])));
        assert!(!d.update(0, None));
        assert!(
            TalkDetector::new(Some(3.0), Millis(0), SampleRate::HZ_8000, Millis(20), 1).is_err()
        );
    }
}
