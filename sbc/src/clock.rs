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

pub use sip_bridge::time::{rfc3339, rfc3339_ms};
