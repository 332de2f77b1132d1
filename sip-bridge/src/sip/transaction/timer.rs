//! Transaction timers (RFC 3261 section 17, table 4; RFC 6026 section 8.11).

use std::time::Duration;

/// The SIP timer base values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (default 500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The timers, as an index into a transaction's timer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Timer {
    /// INVITE request retransmit (unreliable), doubling.
    A = 0,
    /// INVITE transaction timeout: 64*T1.
    B,
    /// Wait for response retransmits after a non-2xx final (INVITE client).
    D,
    /// Non-INVITE request retransmit (unreliable), doubling to T2.
    E,
    /// Non-INVITE transaction timeout: 64*T1.
    F,
    /// INVITE final response retransmit (unreliable), doubling to T2.
    G,
    /// Wait for ACK: 64*T1.
    H,
    /// Wait for ACK retransmits: T4 (unreliable).
    I,
    /// Wait for non-INVITE request retransmits: 64*T1 (unreliable).
    J,
    /// Wait for response retransmits: T4 (unreliable).
    K,
    /// INVITE server Accepted state: 64*T1 (RFC 6026).
    L,
    /// INVITE client Accepted state: 64*T1 (RFC 6026).
    M,
}

impl Timer {
    /// Number of timers (the table size).
    pub const COUNT: usize = 12;
}

/// A transaction's timers: deadline per timer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TimerTable([Option<media_core::Instant>; Timer::COUNT]);

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: media_core::Instant) {
        self.0[t as usize] = Some(at);
    }

    pub(crate) fn clear(&mut self, t: Timer) {
        self.0[t as usize] = None;
    }

    pub(crate) fn get(&self, t: Timer) -> Option<media_core::Instant> {
        self.0[t as usize]
    }

    /// Timers due at `now`, earliest first.
    pub(crate) fn due(&self, now: media_core::Instant) -> impl Iterator<Item = Timer> + '_ {
        const ALL: [Timer; Timer::COUNT] = [
            Timer::A,
            Timer::B,
            Timer::D,
            Timer::E,
            Timer::F,
            Timer::G,
            Timer::H,
            Timer::I,
            Timer::J,
            Timer::K,
            Timer::L,
            Timer::M,
        ];
        ALL.into_iter()
            .filter(move |t| self.get(*t).is_some_and(|at| at <= now))
    }
}
