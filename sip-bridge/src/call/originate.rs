//! Calls the API places (click-to-call, `POST /v1/calls`): the first party
//! (an operator's browser or a phone) rings as the call's caller; once it
//! answers, the call dials its plan (the `connect` target) with the caller
//! hearing ringback, as if the caller had dialled. If the first party does
//! not answer, is busy or fails, the call ends with that status and nothing
//! else rings. Status callbacks (Twilio's `StatusCallback`) follow the call's
//! events: `initiated`, `ringing` (the first party rings), `answered` (it
//! answered), `completed`.

use std::sync::Arc;
use std::time::Duration;

use media_core::Instant;

use super::party::{Leg, Origin, SipState};
use super::state::CallState;
use super::{Call, CallCtx, CallEventKind, CallOutput, Direction, RouteFacts};
use crate::config::NumberConfig;
use crate::contract::CallId;
use crate::plan::{DialPlan, DialStatus, Target};
use crate::roles::Role;
use crate::signalling::EndReason;

/// Where a call's status callbacks go, and which events: each once per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusCallback {
    /// An `http(s)` URL the SBC posts each event's JSON to (signed like the
    /// webhook).
    pub url: String,
    /// The events wanted; empty: `completed` only (Twilio's default).
    pub events: Vec<CallEventKind>,
}

impl StatusCallback {
    /// Whether `kind` goes to it.
    pub fn wants(&self, kind: CallEventKind) -> bool {
        if self.events.is_empty() {
            kind == CallEventKind::Completed
        } else {
            self.events.contains(&kind)
        }
    }
}

/// What the call remembers of how the API placed it.
#[derive(Clone, Debug)]
pub(crate) struct Originated {
    pub callback: Option<Arc<StatusCallback>>,
    /// `ringing` and `answered` of the first party went out (each once).
    pub ringing_told: bool,
}

/// Why the first party could not be rung: a status for the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OriginateError {
    /// Nobody to ring (an operator offline or busy).
    Unavailable,
    /// The SIP status that failed it at once (no trunk, no port).
    Failed(u16),
}

impl Call {
    /// A call placed by the API: `first` (one operator or one phone) rings for
    /// `ring` as the caller, with `number` as caller ID; `plan` is dialled
    /// when it answers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn originate(
        now: Instant,
        ctx: &mut CallCtx<'_>,
        id: CallId,
        number: &NumberConfig,
        first: &Target,
        plan: DialPlan,
        ring: Duration,
        callback: Option<Arc<StatusCallback>>,
    ) -> Result<Call, OriginateError> {
        let mut call = Call::from_our_number(now, ctx, id, number, &first.to_string(), plan);
        call.originated = Some(Originated {
            callback,
            ringing_told: false,
        });
        call.state = CallState::Originating {
            deadline: now + ring,
        };
        match call.ring_new(now, ctx, first, Origin::Caller) {
            (Ok(1), new) if new.len() == 1 => call.caller = new[0],
            (Ok(_), _) => return Err(OriginateError::Unavailable),
            (Err(code), _) => return Err(OriginateError::Failed(code)),
        }
        if let Some(p) = call.parties.get_mut(&call.caller)
            && p.operator().is_none()
        {
            // A phone rung first is the customer (a callback request).
            p.role = Role::Customer;
        }
        call.event(now, CallEventKind::Initiated, None, None, None);
        call.start_siprec(now, ctx);
        if call
            .parties
            .get(&call.caller)
            .is_some_and(|p| p.op().is_some())
        {
            // A browser rings as soon as it is told.
            call.originator_ringing(now);
        }
        Ok(call)
    }

    /// Whether the API placed the call and its first party still rings.
    pub(crate) fn originating(&self) -> bool {
        matches!(self.state, CallState::Originating { .. })
    }

    /// Whether the API placed the call (its caller is a leg we rang).
    pub(crate) fn originated(&self) -> bool {
        self.originated.is_some()
    }

    /// The first party rings (a SIP 18x, an operator told `incoming`).
    pub(crate) fn originator_ringing(&mut self, now: Instant) {
        let Some(o) = self.originated.as_mut().filter(|o| !o.ringing_told) else {
            return;
        };
        o.ringing_told = true;
        self.event(now, CallEventKind::Ringing, None, None, None);
    }

    /// The first party answered: it is the caller now, and the plan rings.
    pub(crate) fn originator_answered(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let key = self.caller;
        let Some(p) = self.parties.get(&key) else {
            return;
        };
        let op = p.op().map(String::from);
        self.answered_by = Some(p.label());
        if let Some(op) = &op {
            self.push(CallOutput::Busy { op: op.clone() });
        }
        self.record_joined(now, ctx, key);
        self.event(
            now,
            CallEventKind::Answered,
            Some(DialStatus::Answered),
            None,
            None,
        );
        let facts = RouteFacts {
            call_id: self.id,
            direction: Direction::Outbound,
            from: self.from.clone(),
            to: self.to.clone(),
            number: self.number.clone(),
            trunk: None,
            operator: op,
            headers: Vec::new(),
            default_plan: self.plan.clone(),
            transfer: false,
        };
        self.begin(now, ctx, facts);
    }

    /// The first party did not answer (`status`, `reason`, maybe the SIP
    /// `code`): the call ends, nothing else rang.
    pub(crate) fn originator_failed(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        status: DialStatus,
        reason: EndReason,
        code: Option<u16>,
    ) {
        if !self.originating() {
            return;
        }
        let key = self.caller;
        if let Some(p) = self.parties.get_mut(&key) {
            match &mut p.leg {
                // Its INVITE failed: the UA is done with it.
                Leg::Sip(s) if code.is_some() => s.state = SipState::Ending,
                _ => {}
            }
        }
        self.end_call(now, ctx, status, reason, code);
    }

    /// The first party's SIP failure, as an outcome.
    pub(crate) fn originator_sip_failed(&mut self, now: Instant, ctx: &mut CallCtx<'_>, code: u16) {
        let (status, reason) = match code {
            486 | 600 => (DialStatus::Busy, EndReason::Busy),
            408 | 480 | 487 => (DialStatus::NoAnswer, EndReason::NoAnswer),
            _ => (DialStatus::Failed, EndReason::Failed),
        };
        self.originator_failed(now, ctx, status, reason, Some(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_callback_wants_completed_by_default_and_what_it_lists_otherwise() {
        let all = StatusCallback {
            url: "http://x/".into(),
            events: Vec::new(),
        };
        assert!(all.wants(CallEventKind::Completed));
        assert!(!all.wants(CallEventKind::Ringing));
        let some = StatusCallback {
            url: "http://x/".into(),
            events: vec![CallEventKind::Ringing, CallEventKind::Answered],
        };
        assert!(some.wants(CallEventKind::Ringing));
        assert!(!some.wants(CallEventKind::Completed));
    }
}
