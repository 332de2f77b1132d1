//! The SBC's one clock. The cores take `now` as an argument; this is where the
//! driver reads it, mapping the runtime's monotonic time onto the cores'
//! [`media_core::Instant`] (microseconds since the clock was made). Being tokio's
//! clock, `tokio::time::pause` makes driver tests run on virtual time too. It
//! also writes wall-clock times for people and receivers ([`rfc3339`]).

use std::time::Duration;

use media_core::Instant;

/// Monotonic time for the drivers.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose epoch is now.
    #[allow(clippy::disallowed_methods)] // the one place the SBC reads the clock
    pub fn new() -> Self {
        Clock {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Now, for the cores.
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Instant {
        let us = tokio::time::Instant::now()
            .saturating_duration_since(self.epoch)
            .as_micros();
        Instant::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
    }

    /// The `std::time::Instant` that `media_core::Instant::ZERO` stands for (str0m
    /// takes std instants).
    pub fn std_epoch(&self) -> std::time::Instant {
        self.epoch.into_std()
    }

    /// The runtime instant of a core deadline, for `sleep_until`.
    pub fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.epoch + Duration::from_micros(at.as_micros())
    }

    /// Seconds since the Unix epoch (token expiry, logs), from the wall clock.
    #[allow(clippy::disallowed_methods)]
    pub fn unix_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl Clock {
    /// Milliseconds since the Unix epoch, from the wall clock (when a
    /// recording started, how old a file is).
    #[allow(clippy::disallowed_methods)]
    pub fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// RFC 3339 UTC time of Unix seconds `t` (civil-from-days, proleptic Gregorian).
pub fn rfc3339(t: u64) -> String {
    let (days, secs) = (t / 86_400, t % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// RFC 3339 UTC time of Unix milliseconds `t`, with the milliseconds.
pub fn rfc3339_ms(t: u64) -> String {
    let s = rfc3339(t / 1000);
    format!("{}.{:03}Z", &s[..s.len() - 1], t % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_230_057), "2026-11-21T03:00:57Z");
        assert_eq!(rfc3339_ms(1_795_230_057_042), "2026-11-21T03:00:57.042Z");
    }
}
