//! A call's control state: its legs, its dial plan position, its outcome. The
//! logic that moves it lives in [`super::Bridge`]; this file holds the data and the
//! events it reports.

use std::collections::BTreeMap;
use std::time::Duration;

use media_core::Instant;

use super::media::LegKey;
use super::plan::{DialPlan, DialStatus, Target};
use crate::sdp::NegotiatedAudio;
use crate::signalling::EndReason;
use crate::sip::dialog::LegId;

/// Who started the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A carrier (or any SIP peer) called one of our numbers.
    Inbound,
    /// An operator dialled out.
    Outbound,
}

impl Direction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SipState {
    /// INVITE sent or received, no answer.
    Ringing,
    /// 2xx sent or received.
    Up,
    /// We asked it to end (CANCEL/BYE); waiting for the UA's `Terminated`.
    Ending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpState {
    /// `incoming` sent.
    Ringing,
    /// The operator's own leg (outbound caller), or an accepted one: media being set up
    /// or up.
    Active,
}

#[derive(Clone, Debug)]
pub(crate) enum LegKind {
    Sip {
        ua: LegId,
        state: SipState,
        port: u16,
        trunk: Option<usize>,
        /// Failover position among the trunk's peers.
        attempt: usize,
        /// Our SDP (offer as UAC, answer as UAS), and its version.
        local_sdp: String,
        sdp_version: u64,
        negotiated: Option<NegotiatedAudio>,
        /// Early media flows from it.
        early_media: bool,
        /// It put us on hold.
        remote_held: bool,
    },
    Operator {
        op: String,
        state: OpState,
        /// The `ref` of the request that created it (dial), for its `answer`.
        reference: Option<String>,
        muted: bool,
        held: bool,
        /// The SDP answer went out.
        answered: bool,
    },
    Echo,
    Tone(u32),
    /// An AI agent over WebSocket (media plane); answered when it connects.
    Stream {
        connected: bool,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Leg {
    pub kind: LegKind,
    /// What it was rung as (None for the caller's own leg).
    pub target: Option<Target>,
    /// The dial plan step it belongs to.
    pub step: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub id: String,
    pub direction: Direction,
    /// Number id (called number inbound, caller ID outbound).
    pub number: Option<String>,
    pub from: String,
    pub to: String,
    pub caller_name: Option<String>,
    pub created: Instant,
    pub answered_at: Option<Instant>,
    /// The caller's leg.
    pub caller: LegKey,
    pub plan: DialPlan,
    pub step: usize,
    pub step_deadline: Option<Instant>,
    pub legs: BTreeMap<LegKey, Leg>,
    pub winner: Option<LegKey>,
    pub next_leg: LegKey,
    /// A target was busy / failed with this code in the plan so far.
    pub busy: bool,
    pub fail_code: Option<u16>,
    /// The caller has heard 18x (inbound).
    pub caller_progress: bool,
    /// A `ringing` (its `earlyMedia`) held back until the dial's `answer` is out.
    pub ringing_deferred: Option<bool>,
    /// Targets rung (for events).
    pub rung: Vec<String>,
    /// Who answered (`operator:alice`, `pstn:+1555...`).
    pub answered_by: Option<String>,
    /// Waiting for an external router's plan.
    pub routing: bool,
    /// Legs ended, with the reason given to their operator (for the CDR).
    pub ended_legs: Vec<(String, EndReason)>,
}

impl Call {
    pub(crate) fn leg_key(&mut self) -> LegKey {
        let k = self.next_leg;
        self.next_leg += 1;
        k
    }

    /// Legs of the current step still ringing.
    pub(crate) fn ringing_in_step(&self) -> usize {
        self.legs
            .iter()
            .filter(|(k, l)| {
                **k != self.caller
                    && l.step == self.step
                    && match &l.kind {
                        LegKind::Sip { state, .. } => *state == SipState::Ringing,
                        LegKind::Operator { state, .. } => *state == OpState::Ringing,
                        LegKind::Stream { connected } => !connected,
                        _ => false,
                    }
            })
            .count()
    }

    pub(crate) fn operator_leg(&self, op: &str) -> Option<LegKey> {
        self.legs.iter().find_map(|(k, l)| match &l.kind {
            LegKind::Operator { op: o, .. } if o == op => Some(*k),
            _ => None,
        })
    }
}

/// What a call reports (webhooks, CDRs, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallEventKind {
    /// A call started.
    Initiated,
    /// Its targets ring.
    Ringing,
    /// Someone answered.
    Answered,
    /// It ended.
    Completed,
}

impl CallEventKind {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallEventKind::Initiated => "initiated",
            CallEventKind::Ringing => "ringing",
            CallEventKind::Answered => "answered",
            CallEventKind::Completed => "completed",
        }
    }
}

/// A call event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEvent {
    /// What happened.
    pub kind: CallEventKind,
    /// The call.
    pub call_id: String,
    /// Direction.
    pub direction: Direction,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Number id.
    pub number: Option<String>,
    /// When (driver time).
    pub at: Instant,
    /// Outcome (`Completed`, and `Answered`).
    pub status: Option<DialStatus>,
    /// The SIP status behind a failure.
    pub code: Option<u16>,
    /// Who answered (`operator:alice`, `pstn:+1555...`).
    pub answered_by: Option<String>,
    /// Targets rung so far.
    pub rung: Vec<String>,
    /// From start to end (`Completed`).
    pub duration: Option<Duration>,
    /// From answer to end (`Completed`).
    pub talk_time: Option<Duration>,
}

impl CallEvent {
    /// One call-detail-record line (logfmt) for a `Completed` event.
    pub fn cdr_line(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        format!(
            "cdr call={} direction={} from={:?} to={:?} number={} status={} code={} answered_by={} rung={:?} duration_ms={} talk_ms={}",
            self.call_id,
            self.direction.as_str(),
            self.from,
            self.to,
            self.number.as_deref().unwrap_or("-"),
            self.status.map_or("-", |s| s.as_str()),
            self.code.map_or("-".to_string(), |c| c.to_string()),
            self.answered_by.as_deref().unwrap_or("-"),
            self.rung.join(","),
            ms(self.duration),
            ms(self.talk_time),
        )
    }
}
