//! Target playout delay from measured relative arrival delay (the NetEQ approach):
//! each packet's transit time (arrival minus media time) is compared with the
//! smallest transit of the last 2 s; those relative delays feed a histogram with
//! exponential forgetting, and the target is one of its upper quantiles.

use std::collections::VecDeque;

use crate::time::Instant;

/// Histogram resolution and range.
const BIN_US: i64 = 1000;
const BINS: usize = 1024;
/// The transit floor is the smallest transit in buckets of 250 ms over the last
/// 2 s, each projected to now along the estimated clock skew.
const BUCKET_US: i64 = 250_000;
const BUCKETS: usize = 8;
/// Clock skew beyond this is not a clock (a route change): not followed.
const MAX_SKEW: f64 = 0.02;

/// Relative-delay statistics of one stream.
#[derive(Clone, Debug)]
pub(crate) struct DelayEstimator {
    quantile: f64,
    forget: f64,
    /// Bin weights, scaled by `scale` (lazy forgetting: new samples weigh more).
    hist: Vec<f64>,
    scale: f64,
    total: f64,
    /// (bucket index, smallest transit us) of recent buckets, oldest first.
    buckets: VecDeque<(i64, i64)>,
    /// (time, raw window minimum) at each bucket close, for the skew.
    snapshots: VecDeque<(i64, i64)>,
    /// Estimated drift of the transit floor (us per us): sender clock skew.
    skew: f64,
    /// The floor when the window was last full (time, us): bridges silences
    /// longer than the window.
    prior: Option<(i64, i64)>,
    /// [`Self::quantile_us`], kept current by `observe`: it is read on every
    /// wake-up of the call's task, the histogram changes once per packet.
    quantile_us: Option<i64>,
}

impl DelayEstimator {
    pub(crate) fn new(quantile: f64, forget: f64) -> Self {
        DelayEstimator {
            quantile: quantile.clamp(0.5, 0.9999),
            forget: forget.clamp(0.9, 0.99999),
            hist: vec![0.0; BINS],
            scale: 1.0,
            total: 0.0,
            buckets: VecDeque::with_capacity(BUCKETS + 1),
            snapshots: VecDeque::with_capacity(2 * BUCKETS + 1),
            skew: 0.0,
            prior: None,
            quantile_us: None,
        }
    }

    /// Forgets everything (new source).
    pub(crate) fn reset(&mut self) {
        self.hist.fill(0.0);
        self.scale = 1.0;
        self.total = 0.0;
        self.buckets.clear();
        self.snapshots.clear();
        self.skew = 0.0;
        self.prior = None;
        self.quantile_us = None;
    }

    /// Forgets the transit floor but keeps the delay statistics and the clock
    /// skew: the same sender on the same path moved its timeline (its
    /// timestamps jumped, or stood still through a pause).
    pub(crate) fn forget_floor(&mut self) {
        self.buckets.clear();
        self.snapshots.clear();
        self.prior = None;
    }

    /// The smallest transit (us) expected at `now`: "arrived with no queuing".
    pub(crate) fn floor(&self, now: Instant) -> Option<i64> {
        let now = now.as_micros() as i64;
        let window = BUCKET_US * BUCKETS as i64;
        let project = |t: i64, m: i64| m + (self.skew * (now - t) as f64) as i64;
        let live = self
            .buckets
            .iter()
            .filter(|&&(b, _)| now - b * BUCKET_US <= window)
            .map(|&(b, m)| project(b * BUCKET_US + BUCKET_US / 2, m))
            .min();
        // Until the window fills again after a silence, the floor from before it
        // (projected along the skew) still counts.
        let young = self
            .buckets
            .iter()
            .find(|&&(b, _)| now - b * BUCKET_US <= window)
            .is_none_or(|&(b, _)| now - b * BUCKET_US < window - BUCKET_US);
        let prior = self.prior.filter(|_| young).map(|(t, m)| project(t, m));
        match (live, prior) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Updates only the transit floor (for packets kept out of the histogram).
    pub(crate) fn observe_floor_only(&mut self, now: Instant, transit: i64) {
        self.update_floor(now, transit);
    }

    fn update_floor(&mut self, now: Instant, transit: i64) -> i64 {
        let t = now.as_micros() as i64;
        let b = t.div_euclid(BUCKET_US);
        match self.buckets.back_mut() {
            Some((last, m)) if *last == b => *m = (*m).min(transit),
            _ => {
                self.close_bucket(t);
                self.buckets.push_back((b, transit));
                while self.buckets.len() > BUCKETS {
                    self.buckets.pop_front();
                }
            }
        }
        self.floor(now).unwrap_or(transit).min(transit)
    }

    /// A bucket closed: remember the window minimum, learn the skew from minima a
    /// window apart (their lag is the same, so their difference is pure drift).
    fn close_bucket(&mut self, t: i64) {
        let window = BUCKET_US * BUCKETS as i64;
        let Some(raw) = self
            .buckets
            .iter()
            .filter(|&&(b, _)| t - b * BUCKET_US <= window)
            .map(|&(_, m)| m)
            .min()
        else {
            return;
        };
        if self.buckets.len() == BUCKETS {
            self.prior = Some((t, raw));
        }
        if let Some(&(t0, m0)) = self.snapshots.iter().find(|&&(t0, _)| t - t0 >= window) {
            let slope = (raw - m0) as f64 / (t - t0) as f64;
            if slope.abs() < MAX_SKEW && t - t0 <= 2 * window {
                self.skew += 0.2 * (slope - self.skew);
            }
        }
        self.snapshots.push_back((t, raw));
        while self
            .snapshots
            .front()
            .is_some_and(|&(t0, _)| t - t0 > 2 * window)
            || self.snapshots.len() > 2 * BUCKETS
        {
            self.snapshots.pop_front();
        }
    }

    /// Records a packet that arrived at `now` with `transit` = arrival minus media
    /// time (us, any fixed offset). Returns its relative delay (us).
    pub(crate) fn observe(&mut self, now: Instant, transit: i64) -> i64 {
        let floor = self.update_floor(now, transit);
        let rel = (transit - floor).max(0);
        // Lazy exponential forgetting: instead of scaling every bin by `forget`,
        // grow the weight of new samples by 1/forget.
        self.scale /= self.forget;
        if self.scale > 1e200 {
            for h in &mut self.hist {
                *h /= self.scale;
            }
            self.total /= self.scale;
            self.scale = 1.0;
        }
        let bin = ((rel / BIN_US) as usize).min(BINS - 1);
        self.hist[bin] += self.scale;
        self.total += self.scale;
        self.quantile_us = self.compute_quantile_us();
        rel
    }

    /// The configured quantile of the relative delay (us), if anything was seen.
    pub(crate) fn quantile_us(&self) -> Option<i64> {
        self.quantile_us
    }

    fn compute_quantile_us(&self) -> Option<i64> {
        if self.total <= 0.0 {
            return None;
        }
        let want = self.quantile * self.total;
        let mut acc = 0.0;
        for (i, &h) in self.hist.iter().enumerate() {
            acc += h;
            if acc >= want {
                return Some((i as i64 + 1) * BIN_US);
            }
        }
        Some(BINS as i64 * BIN_US)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SeededRng;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn quantile_tracks_the_jitter_distribution() {
        let mut e = DelayEstimator::new(0.95, 0.995);
        let mut rng = SeededRng::new(1);
        for i in 0..2000u64 {
            // Uniform 0..40 ms jitter on a 50 ms base: p95 = 38 ms.
            let jitter = (rng.next_f64() * 40_000.0) as i64;
            e.observe(at(20 * i), 50_000 + jitter);
        }
        let q = e.quantile_us().unwrap();
        assert!((34_000..=42_000).contains(&q), "{q}");
        assert!(
            e.floor(at(40_000)).unwrap() <= 51_500,
            "{:?}",
            e.floor(at(40_000))
        );
    }

    #[test]
    fn forgets_a_spike_within_about_two_seconds() {
        let mut e = DelayEstimator::new(0.95, 0.983);
        for i in 0..500u64 {
            e.observe(at(20 * i), 10_000);
        }
        for i in 500..510u64 {
            e.observe(at(20 * i), 10_000 + 150_000 - (i - 500) as i64 * 15_000);
        }
        assert!(e.quantile_us().unwrap() > 50_000);
        for i in 510..610u64 {
            e.observe(at(20 * i), 10_000);
        }
        assert!(e.quantile_us().unwrap() <= 2_000, "{:?}", e.quantile_us());
    }

    #[test]
    fn floor_follows_drift_both_ways() {
        for skew in [0.005f64, -0.005] {
            let mut e = DelayEstimator::new(0.95, 0.99);
            let mut worst = 0;
            for i in 0..3000u64 {
                // Transit changes 5 ms per second (sender clock 0.5 % off).
                let transit = 1_000_000 + (skew * (i * 20_000) as f64) as i64;
                let rel = e.observe(at(20 * i), transit);
                if i > 500 {
                    worst = worst.max(rel);
                }
            }
            assert!(
                worst <= 1_000,
                "skew {skew}: floor lags by {worst} us (skew {})",
                e.skew
            );
            assert!((e.skew - skew).abs() < 0.0005, "{}", e.skew);
        }
    }

    #[test]
    fn floor_survives_a_long_silence() {
        let mut e = DelayEstimator::new(0.95, 0.99);
        for i in 0..200u64 {
            e.observe(at(20 * i), 50_000);
        }
        // 5 s without packets, then one delayed by 30 ms: it is 30 ms late.
        assert_eq!(e.observe(at(9_000), 80_000), 30_000);
    }

    #[test]
    fn memory_is_bounded_under_a_flood() {
        let mut e = DelayEstimator::new(0.95, 0.99);
        for i in 0..100_000i64 {
            e.observe(Instant::from_micros(i as u64 * 100), 1_000_000 - i);
        }
        assert!(e.buckets.len() <= BUCKETS);
        assert!(e.quantile_us().is_some());
    }
}
