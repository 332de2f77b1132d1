//! Where a call stands. Each state carries only its own data.

use media_core::Instant;

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CallState {
    /// A call placed by the API (click-to-call): its first party (the
    /// caller) rings until `deadline`; once it answers, the plan is dialled.
    Originating { deadline: Instant },
    /// Waiting for the external router's plan, at most until `deadline`.
    Routing { deadline: Instant },
    /// A step of the plan rings; the first answer wins.
    Dialing(Dial),
    /// Someone answered: the parties talk.
    Connected,
    /// Over.
    Ended,
}

/// A dial in progress: the step that rings, and what the plan met so far.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Dial {
    /// The step ringing.
    pub step: usize,
    /// When it rings out (`None` until something rings).
    pub deadline: Option<Instant>,
    /// A target was busy.
    pub busy: bool,
    /// A target failed with this status.
    pub fail_code: Option<u16>,
}

impl Dial {
    pub(crate) fn at(step: usize) -> Dial {
        Dial {
            step,
            ..Dial::default()
        }
    }
}
