//! Packet loss concealment for codecs without their own (G.711), by pitch-period
//! waveform substitution in the spirit of ITU-T G.711 Appendix I: repeat the last
//! pitch period, widen to 2 and 3 periods as the loss goes on, fade 20 % per 10 ms
//! after the first 10 ms (silence from 60 ms), and cross-fade back into real speech
//! over 4-10 ms when packets return. Works at any rate; buffers are allocated once.

use crate::time::SampleRate;

/// Waveform-substitution concealer. Feed every good frame to [`Concealer::good`]
/// and ask [`Concealer::conceal`] for lost ones.
#[derive(Clone, Debug)]
pub struct Concealer {
    /// Samples per millisecond.
    per_ms: usize,
    /// The last 48.75 ms of output (oldest first), as Appendix I keeps.
    history: Vec<i16>,
    /// Snapshot of the last 3 pitch periods taken when a loss starts.
    pitch_buf: Vec<i16>,
    pitch: usize,
    /// Position within the repeated periods.
    pos: usize,
    /// Samples concealed in the current loss (0: not concealing).
    lost: usize,
}

impl Concealer {
    /// A concealer for PCM at `rate`.
    pub fn new(rate: SampleRate) -> Self {
        let per_ms = rate.hz() as usize / 1000;
        let len = per_ms * 390 / 8; // 48.75 ms
        Concealer {
            per_ms,
            history: vec![0; len],
            pitch_buf: vec![0; per_ms * 45], // 3 periods of at most 15 ms
            pitch: per_ms * 5,
            pos: 0,
            lost: 0,
        }
    }

    /// Whether the last frame was concealed.
    pub fn concealing(&self) -> bool {
        self.lost > 0
    }

    /// Records a good frame; if it follows a loss, first cross-fades its start from
    /// the concealment so the join does not click.
    pub fn good(&mut self, pcm: &mut [i16]) {
        if self.lost > 0 {
            let lost_ms = self.lost / self.per_ms.max(1);
            let fade_ms = (4 * (1 + lost_ms.saturating_sub(1) / 10)).min(10);
            let fade = (fade_ms * self.per_ms).min(pcm.len());
            for (i, s) in pcm[..fade].iter_mut().enumerate() {
                let synth = self.next_synthetic() as f32;
                let w = (i + 1) as f32 / (fade + 1) as f32;
                *s = (synth * (1.0 - w) + *s as f32 * w).round() as i16;
            }
            self.lost = 0;
        }
        self.push_history(pcm);
    }

    /// Fills `out` with concealment for lost audio.
    pub fn conceal(&mut self, out: &mut [i16]) {
        if self.lost == 0 {
            self.start_loss();
        }
        for s in out.iter_mut() {
            *s = self.next_synthetic();
        }
        // Concealed audio joins the history (a later loss continues from it); the
        // pitch snapshot is kept for the rest of this loss.
        self.push_history(out);
    }

    fn start_loss(&mut self) {
        self.pitch = self.find_pitch();
        let n = 3 * self.pitch;
        let h = self.history.len();
        self.pitch_buf[..n].copy_from_slice(&self.history[h - n..]);
        self.pos = 0;
    }

    /// The next concealment sample with the fade applied; advances the loss clock.
    fn next_synthetic(&mut self) -> i16 {
        let ten_ms = 10 * self.per_ms;
        let periods = (1 + self.lost / ten_ms).min(3);
        let span = periods * self.pitch;
        if self.pos >= span {
            self.pos %= self.pitch; // keep the phase within the period
        }
        let start = 3 * self.pitch - span;
        let v = self.pitch_buf[start + self.pos] as f32;
        self.pos += 1;
        // Full level for 10 ms, then -20 % per 10 ms: silent at 60 ms.
        let gain = if self.lost < ten_ms {
            1.0
        } else {
            (1.0 - 0.2 * (self.lost - ten_ms) as f32 / ten_ms as f32).max(0.0)
        };
        self.lost += 1;
        (v * gain).round() as i16
    }

    fn push_history(&mut self, pcm: &[i16]) {
        let h = self.history.len();
        if pcm.len() >= h {
            self.history.copy_from_slice(&pcm[pcm.len() - h..]);
        } else {
            self.history.copy_within(pcm.len().., 0);
            self.history[h - pcm.len()..].copy_from_slice(pcm);
        }
    }

    /// Pitch period by normalised autocorrelation over 5-15 ms lags on the last
    /// 20 ms, searched coarsely at 8 kHz resolution and refined.
    fn find_pitch(&self) -> usize {
        let h = &self.history;
        let win = 20 * self.per_ms;
        let (min_lag, max_lag) = (5 * self.per_ms, 15 * self.per_ms);
        let end = h.len();
        let corr = |lag: usize, step: usize| -> f64 {
            let (mut xy, mut yy) = (0.0f64, 0.0f64);
            let mut i = end - win;
            while i < end {
                let x = h[i] as f64;
                let y = h[i - lag] as f64;
                xy += x * y;
                yy += y * y;
                i += step;
            }
            if yy <= 0.0 { f64::MIN } else { xy / yy.sqrt() }
        };
        let step = (self.per_ms / 8).max(1);
        let mut best = (min_lag, f64::MIN);
        let mut lag = min_lag;
        while lag <= max_lag {
            let c = corr(lag, step);
            if c > best.1 {
                best = (lag, c);
            }
            lag += step;
        }
        if step > 1 {
            let lo = best.0.saturating_sub(step).max(min_lag);
            let hi = (best.0 + step).min(max_lag);
            for lag in lo..=hi {
                let c = corr(lag, 1);
                if c > best.1 {
                    best = (lag, c);
                }
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{goertzel_level_db, rms_db, sine};

    #[test]
    fn repeats_a_periodic_signal_and_fades_out() {
        let mut c = Concealer::new(SampleRate::HZ_8000);
        let tone = sine(8000, 200.0, 10000.0, 800);
        for f in tone.chunks(160) {
            c.good(&mut f.to_vec());
        }
        let mut lost = vec![0i16; 80]; // first 10 ms: full level, same pitch
        c.conceal(&mut lost);
        assert!(
            (goertzel_level_db(&lost, 8000, 200.0) - goertzel_level_db(&tone[..80], 8000, 200.0))
                .abs()
                < 1.0
        );
        // Continues smoothly: the first concealed sample follows the waveform.
        let next_expected = sine(8000, 200.0, 10000.0, 801)[800];
        assert!(
            (lost[0] as i32 - next_expected as i32).abs() < 1500,
            "{} vs {}",
            lost[0],
            next_expected
        );
        let mut more = vec![0i16; 400]; // 10..60 ms
        c.conceal(&mut more);
        assert!(rms_db(&more[320..]) < rms_db(&more[..80]) - 6.0);
        let mut after = vec![0i16; 160]; // beyond 60 ms: silence
        c.conceal(&mut after);
        assert!(after.iter().all(|&s| s == 0));
    }

    #[test]
    fn resumes_with_a_crossfade() {
        let mut c = Concealer::new(SampleRate::HZ_8000);
        let tone = sine(8000, 300.0, 8000.0, 2000);
        for f in tone[..800].chunks(160) {
            c.good(&mut f.to_vec());
        }
        let mut lost = vec![0i16; 160];
        c.conceal(&mut lost);
        assert!(c.concealing());
        let mut back = tone[960..1120].to_vec();
        let untouched = back[100..].to_vec();
        c.good(&mut back);
        assert!(!c.concealing());
        // 20 ms loss -> 8 ms fade: samples after it are the real ones.
        assert_eq!(&back[100..], &untouched[..]);
        // No sample jumps by more than a tone step allows.
        let max_step = back
            .windows(2)
            .map(|w| (w[1] as i32 - w[0] as i32).abs())
            .max()
            .unwrap();
        assert!(max_step < 3000, "{max_step}");
    }

    #[test]
    fn silence_in_silence_out_at_48k() {
        let mut c = Concealer::new(SampleRate::HZ_48000);
        c.good(&mut vec![0; 960]);
        let mut out = vec![1i16; 960];
        c.conceal(&mut out);
        assert!(out.iter().all(|&s| s == 0));
    }
}
