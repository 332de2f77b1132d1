//! One call, as its own sans-IO state machine (quinn's `Connection` to the
//! bridge's `Endpoint`): its parties, its dial plan, its media graph, its
//! timers. The [`crate::bridge::Bridge`] routes inputs to it and applies what it
//! asks for; the call decides.
//!
//! Inputs: [`Call::handle_sip`] (events of its SIP legs), [`Call::handle_operator`]
//! (an operator's request about it), [`Call::handle_monitor`],
//! [`Call::handle_media`] (its media session's events), [`Call::handle_route`]
//! (the router's answer), [`Call::handle_timeout`], and the presence news
//! [`Call::handle_operator_offline`] / [`Call::handle_operator_gone`]. Outputs:
//! [`Call::poll_output`] ([`CallOutput`]: SIP work, media commands, operator
//! messages, presence marks, routing questions, events) and
//! [`Call::poll_timeout`]. Shared state it reads or takes from (configuration,
//! presence, the RTP port pool, the random source) comes in as a [`CallCtx`].
//!
//! States (`state::CallState`): `Routing` (waiting for the router) ->
//! `Dialing` (a plan step rings; the first answer wins) -> `Connected` (parties
//! talk; more can be added, monitor, leave) -> `Ended`. An AI agent's transfer
//! goes from `Connected` back to `Dialing` with the caller waiting.

mod control;
mod dial;
mod event;
mod fork;
mod graph;
mod media;
mod operator;
mod originate;
mod output;
mod party;
mod ports;
mod record;
mod route;
mod sip;
mod siprec;
mod state;
mod transfer;

pub use crate::roles::{Capabilities, Capability, MonitorMode, Role, RoleCapabilities};
pub use control::{ApiError, ApiErrorCode, PartyUpdate, RecordingStatus, TransferStep};
pub(crate) use dial::user_of;
pub use event::{
    CallEvent, CallEventKind, Direction, PartyRecord, QualityReport, RecordingReport,
    TransferReport,
};
pub(crate) use originate::OriginateError;
pub use originate::StatusCallback;
pub use output::{CallOutput, SipAction};
pub use ports::{PortPool, PortProbe, PortStats};
pub use route::{ROUTE_TIMEOUT, RouteDecision, RouteFacts};
pub(crate) use transfer::parse_target;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use media_core::{Instant, SeededRng};

use crate::config::{BridgeConfig, NumberConfig};
use crate::contract::{CallId, Feed, LegKey, MediaCommand};
use crate::plan::{DialPlan, DialStatus};
use crate::presence::Presence;
use crate::signalling::{
    CallDirection, CallInfo, EndReason, ErrorCode, ParticipantInfo, ServerMessage,
};
use crate::sip::dialog::{EndReason as SipEnd, LegId, UaEvent};
use party::{Leg, Origin, Party, Stage};
use state::CallState;

/// What a call reads or takes from the bridge while it handles one input.
#[derive(Debug)]
pub struct CallCtx<'a> {
    /// Numbers, trunks, agents, media address.
    pub cfg: &'a BridgeConfig,
    /// Who is online and free.
    pub presence: &'a Presence,
    /// RTP ports for SIP legs.
    pub ports: &'a mut PortPool,
    /// SDP session ids.
    pub rng: &'a mut SeededRng,
    /// Our SIP host (From headers).
    pub local_host: &'a str,
    /// Per trunk, the first peer that answers pings.
    pub live_peer: &'a [usize],
    /// Unix time (seconds) at driver time zero, for the `at` of events.
    pub unix_base: u64,
    /// Registered phones (operators' bindings), when phones are configured.
    pub phones: Option<&'a crate::registrar::Registrar>,
    /// The other nodes of a cluster and their ready operators.
    pub peers: &'a crate::cluster::Peers,
}

impl CallCtx<'_> {
    /// Unix milliseconds at `now`.
    pub(crate) fn unix_ms(&self, now: Instant) -> u64 {
        self.view().unix_ms(now)
    }

    /// The read-only part.
    pub fn view(&self) -> CallView<'_> {
        CallView {
            cfg: self.cfg,
            presence: self.presence,
            unix_base: self.unix_base,
        }
    }
}

/// What a call reads to describe itself (no input handled).
#[derive(Clone, Copy, Debug)]
pub struct CallView<'a> {
    /// Numbers (their capabilities).
    pub cfg: &'a BridgeConfig,
    /// Operators' display names.
    pub presence: &'a Presence,
    /// Unix time (seconds) at driver time zero.
    pub unix_base: u64,
}

impl CallView<'_> {
    /// Unix milliseconds at `now`.
    pub(crate) fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_base * 1000 + now.as_micros() / 1000
    }
}

/// An event of one of the call's SIP legs (the UA's events, without its ids).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SipLegEvent {
    /// A provisional response to our INVITE (with early SDP).
    Progress {
        /// 180, 183, ...
        status: u16,
        /// Early media answer.
        sdp: Option<Bytes>,
    },
    /// Our INVITE was answered.
    Answered {
        /// The SDP answer.
        sdp: Option<Bytes>,
    },
    /// Our INVITE without an offer was answered with one: our answer goes in
    /// the ACK ([`SipAction::Ack`]).
    AnsweredWithOffer {
        /// The offer.
        sdp: Bytes,
    },
    /// Our INVITE failed (or could not be sent: 503).
    Failed {
        /// Final status.
        status: u16,
    },
    /// An in-dialog offer to answer.
    Offer {
        /// The offer.
        sdp: Bytes,
    },
    /// Our re-INVITE was answered.
    OfferAnswered {
        /// Status.
        status: u16,
        /// The answer.
        sdp: Option<Bytes>,
    },
    /// The peer asks us to call a third party (REFER).
    Refer {
        /// The Refer-To URI.
        refer_to: String,
    },
    /// The peer's answer to our REFER.
    ReferAnswered {
        /// Status.
        status: u16,
    },
    /// A NOTIFY about the call our REFER asked for: its status line.
    ReferProgress {
        /// The referred call's status (0: none in the body).
        status: u16,
        /// No more follow.
        last: bool,
    },
    /// INFO arrived.
    Info {
        /// Content-Type.
        content_type: String,
        /// Body.
        body: Bytes,
    },
    /// The ACK for our 2xx (with the answer to the offer in it, for an INVITE
    /// that came without one).
    Acked {
        /// The ACK's body.
        sdp: Option<Bytes>,
    },
    /// The leg is gone.
    Terminated {
        /// Why.
        reason: SipEnd,
    },
}

impl SipLegEvent {
    /// The UA's event for one leg, split into the leg and what the call needs.
    /// `None` for events that are not about a call's leg.
    pub fn from_ua(ev: UaEvent) -> Option<(LegId, SipLegEvent)> {
        Some(match ev {
            UaEvent::Progress { leg, status, sdp } => (leg, SipLegEvent::Progress { status, sdp }),
            UaEvent::Answered { leg, sdp } => (leg, SipLegEvent::Answered { sdp }),
            UaEvent::AnsweredWithOffer { leg, sdp } => {
                (leg, SipLegEvent::AnsweredWithOffer { sdp })
            }
            UaEvent::Failed { leg, status, .. } => (leg, SipLegEvent::Failed { status }),
            UaEvent::Offer { leg, sdp } => (leg, SipLegEvent::Offer { sdp }),
            UaEvent::OfferAnswered { leg, status, sdp } => {
                (leg, SipLegEvent::OfferAnswered { status, sdp })
            }
            UaEvent::Info {
                leg,
                content_type,
                body,
            } => (leg, SipLegEvent::Info { content_type, body }),
            UaEvent::Terminated { leg, reason } => (leg, SipLegEvent::Terminated { reason }),
            UaEvent::Acked { leg, sdp } => (leg, SipLegEvent::Acked { sdp }),
            UaEvent::Refer { leg, refer_to, .. } => (leg, SipLegEvent::Refer { refer_to }),
            UaEvent::ReferAnswered { leg, status } => (leg, SipLegEvent::ReferAnswered { status }),
            UaEvent::ReferProgress { leg, status, last } => {
                (leg, SipLegEvent::ReferProgress { status, last })
            }
            _ => return None,
        })
    }
}

/// What the caller was told while its call rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// Nothing yet.
    None,
    /// A SIP target's own progress, passed on: 18x without SDP, or (`sdp`) 183
    /// with ours and that target's early media. No tone of ours.
    Relayed { sdp: bool },
    /// Our ringback: 183 and a tone to a SIP caller, `ringing` and a tone to a
    /// dialling operator (a target's early media still replaces the tone).
    Ringback,
}

/// One call. See the module docs.
#[derive(Debug)]
pub struct Call {
    id: CallId,
    direction: Direction,
    /// Number id (called number inbound, caller ID outbound).
    number: Option<String>,
    from: String,
    to: String,
    caller_name: Option<String>,
    created: Instant,
    answered_at: Option<Instant>,
    answered_by: Option<String>,
    caller: LegKey,
    parties: BTreeMap<LegKey, Party>,
    next_leg: u32,
    state: CallState,
    plan: DialPlan,
    /// Targets rung so far.
    rung: Vec<String>,
    /// Every party, in order of arrival, for events and the CDR.
    history: Vec<PartyRecord>,
    /// What the caller was told while it rings.
    progress: Progress,
    /// A dialling operator's `ringing` held back until its `answer` is out.
    ringing_deferred: Option<bool>,
    max_duration: Instant,
    /// Unix seconds at driver time zero (events say when, in Unix time).
    unix_base: u64,
    /// SIP legs we cancelled, no longer parties, until the UA reports them
    /// gone: their RTP ports.
    ending: BTreeMap<LegKey, u16>,
    /// Add requests so far (groups their targets).
    adds: u32,
    /// A number's meet-me room: callers join, nothing rings.
    room: bool,
    /// A fork of a call another node of the cluster (this one) owns: it
    /// rings only operators here (no second hop).
    from_peer: Option<String>,
    /// What the media session was last told, per listener: the graph's edges
    /// and the (muted, held) flags.
    heard: BTreeMap<LegKey, Vec<Feed>>,
    flags: BTreeMap<LegKey, (bool, bool)>,
    /// What each operator was last told of mute/hold (`callUpdated`).
    told: BTreeMap<LegKey, (bool, bool, bool)>,
    /// A transfer in progress (one at a time).
    transfer: Option<transfer::Transfer>,
    /// The API placed it (click-to-call).
    originated: Option<originate::Originated>,
    /// Held parties hear the hold tone (else silence).
    hold_music: bool,
    /// Its recording now.
    recording: Option<record::CallRecording>,
    /// Live media forks (at most [`fork::MAX_FORKS`]).
    forks: Vec<record::CallRecording>,
    /// Its SIPREC session, and the SRS its number or trunk names (the
    /// router's plan may name another).
    siprec: Option<siprec::SiprecSession>,
    siprec_default: Option<crate::plan::SiprecOptions>,
    out: VecDeque<CallOutput>,
}

impl Call {
    fn new(
        now: Instant,
        ctx: &CallCtx<'_>,
        id: CallId,
        direction: Direction,
        number: &NumberConfig,
        from: String,
        to: String,
    ) -> Call {
        Call {
            id,
            direction,
            number: Some(number.id.clone()),
            from,
            to,
            caller_name: None,
            created: now,
            answered_at: None,
            answered_by: None,
            caller: LegKey(0),
            parties: BTreeMap::new(),
            next_leg: 0,
            state: CallState::Routing { deadline: now },
            plan: DialPlan::default(),
            rung: Vec::new(),
            history: Vec::new(),
            progress: Progress::None,
            ringing_deferred: None,
            max_duration: now + ctx.cfg.max_call_duration,
            unix_base: ctx.unix_base,
            ending: BTreeMap::new(),
            adds: 0,
            room: false,
            from_peer: None,
            heard: BTreeMap::new(),
            flags: BTreeMap::new(),
            told: BTreeMap::new(),
            transfer: None,
            originated: None,
            hold_music: ctx.cfg.hold_music,
            recording: None,
            forks: Vec::new(),
            siprec: None,
            siprec_default: number.plan.siprec.clone(),
            out: VecDeque::new(),
        }
    }

    // ----- what it is -----

    /// Its id.
    pub fn id(&self) -> CallId {
        self.id
    }

    /// Whether it is over (the bridge drops it once its outputs are out).
    pub fn is_ended(&self) -> bool {
        matches!(self.state, CallState::Ended)
    }

    /// Whether someone answered and it goes on.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, CallState::Connected)
    }

    /// Its caller's party.
    pub fn caller(&self) -> LegKey {
        self.caller
    }

    /// Its number id.
    pub fn number(&self) -> Option<&str> {
        self.number.as_deref()
    }

    /// The trunk of SIP party `key`.
    pub fn trunk_of(&self, key: LegKey) -> Option<usize> {
        self.parties.get(&key)?.sip()?.trunk
    }

    /// Parties in it (ringing or joined).
    pub fn parties(&self) -> usize {
        self.parties.len()
    }

    /// The party of operator `op`, ringing or joined.
    pub fn party_of(&self, op: &str) -> Option<LegKey> {
        self.parties
            .iter()
            .find_map(|(k, p)| (p.op() == Some(op)).then_some(*k))
    }

    /// Whether it rings operator `op` (to offer it again on reconnect).
    pub fn rings(&self, op: &str) -> bool {
        self.party_of(op)
            .and_then(|k| self.parties.get(&k))
            .is_some_and(|p| p.ringing())
    }

    /// The `incoming` message offering it to `op`.
    pub fn incoming_for(&self, op: &str) -> ServerMessage {
        let party = self.party_of(op).and_then(|k| self.parties.get(&k));
        let invited_by = party
            .and_then(|p| p.operator())
            .and_then(|o| o.invited_by.clone());
        let transfer = party.and_then(|p| self.transfer_kind_of(p));
        ServerMessage::Incoming {
            call_id: self.id.to_string(),
            from: self.from.clone(),
            to: self.to.clone(),
            number: self.number.clone().unwrap_or_default(),
            caller_name: self.caller_name.clone(),
            invited_by,
            transfer,
        }
    }

    /// The call as `op` sees it in `ready.calls` (its joined party only).
    pub fn info_for(&self, now: Instant, ctx: CallView<'_>, op: &str) -> Option<CallInfo> {
        let key = self.party_of(op)?;
        let p = self.parties.get(&key)?;
        if !p.joined() {
            return None;
        }
        let (muted, held, remote_held) = self.op_view(key);
        Some(CallInfo {
            call_id: self.id.to_string(),
            direction: if p.monitor.is_some() {
                CallDirection::Monitor
            } else if key == self.caller {
                CallDirection::Outbound
            } else {
                CallDirection::Inbound
            },
            from: self.from.clone(),
            to: self.to.clone(),
            number: self.number.clone().unwrap_or_default(),
            state: if self.is_connected() {
                "connected"
            } else {
                "ringing"
            },
            muted,
            held,
            remote_held,
            participants: self.participant_infos(now, ctx),
            self_id: Some(key.to_string()),
            capabilities: self.capabilities_of(ctx, key).names(),
            mode: p.monitor.map(|(m, _)| m.as_str()),
            recording: self.recording_info(),
        })
    }

    /// A call event of `kind` at `now` about this call (for the bridge's own
    /// reports about it, such as quality after it ended).
    pub fn report(&self, now: Instant, kind: CallEventKind) -> CallEvent {
        CallEvent {
            kind,
            call_id: self.id,
            direction: self.direction,
            from: self.from.clone(),
            to: self.to.clone(),
            number: self.number.clone(),
            at: now,
            unix_ms: self.unix_base * 1000 + now.as_micros() / 1000,
            status: None,
            code: None,
            answered_by: self.answered_by.clone(),
            rung: Vec::new(),
            duration: None,
            talk_time: None,
            party: None,
            parties: Vec::new(),
            quality: None,
            transfer: None,
            recording: None,
            callback: self.originated.as_ref().and_then(|o| o.callback.clone()),
        }
    }

    /// Operators who are or were in the call.
    pub fn operators(&self) -> Vec<String> {
        self.history
            .iter()
            .filter_map(|r| r.who.strip_prefix("operator:").map(String::from))
            .collect()
    }

    /// Its recording as the protocol shows it.
    fn recording_info(&self) -> Option<crate::signalling::RecordingInfo> {
        self.recording_state()
            .map(|(id, paused)| crate::signalling::RecordingInfo {
                id: id.to_string(),
                status: if paused { "paused" } else { "in-progress" },
            })
    }

    /// Its summary for `listCalls`.
    pub fn summary(&self, now: Instant, ctx: CallView<'_>) -> crate::signalling::CallSummary {
        crate::signalling::CallSummary {
            call_id: self.id.to_string(),
            number: self.number.clone().unwrap_or_default(),
            from: self.from.clone(),
            to: self.to.clone(),
            direction: self.direction.as_str(),
            started_at: ctx.unix_ms(self.created),
            state: if self.is_connected() {
                "connected"
            } else {
                "ringing"
            },
            participants: self.participant_infos(now, ctx),
            recording: self.recording_info(),
            forks: self.fork_ids().iter().map(|f| f.to_string()).collect(),
        }
    }

    // ----- outputs -----

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<CallOutput> {
        self.out.pop_front()
    }

    /// When [`Call::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_ended() {
            return None;
        }
        let mut t = self.max_duration;
        match &self.state {
            CallState::Routing { deadline } | CallState::Originating { deadline } => {
                t = t.min(*deadline)
            }
            CallState::Dialing(d) => {
                if let Some(d) = d.deadline {
                    t = t.min(d);
                }
            }
            _ => {}
        }
        if let Some(d) = self.transfer_deadline() {
            t = t.min(d);
        }
        if let Some(d) = self.siprec_deadline() {
            t = t.min(d);
        }
        for p in self.parties.values() {
            if let (Origin::Added { deadline, .. }, Stage::Ringing) = (&p.origin, p.stage) {
                t = t.min(*deadline);
            }
            if let Some(lost) = p.media_lost {
                t = t.min(lost);
            }
        }
        Some(t)
    }

    // ----- timers -----

    /// Runs what is due: the router's deadline, the step's, added parties'
    /// ring timeouts, the longest call.
    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        if self.is_ended() {
            return;
        }
        if now >= self.max_duration {
            let (status, reason) = if self.answered_at.is_some() {
                (DialStatus::Completed, EndReason::Hangup)
            } else {
                (DialStatus::NoAnswer, EndReason::NoAnswer)
            };
            self.end_call(now, ctx, status, reason, None);
            return self.settle(now, ctx);
        }
        match &self.state {
            CallState::Routing { deadline } if *deadline <= now => {
                // The router did not answer: the static plan applies.
                self.handle_route(now, ctx, RouteDecision::Default);
            }
            CallState::Dialing(d) if d.deadline.is_some_and(|t| t <= now) => {
                self.step_timed_out(now, ctx);
            }
            CallState::Originating { deadline } if *deadline <= now => {
                self.originator_failed(now, ctx, DialStatus::NoAnswer, EndReason::NoAnswer, None);
            }
            _ => {}
        }
        self.transfer_timed_out(now, ctx);
        self.siprec_timed_out(now, ctx);
        let due: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(_, p)| {
                p.ringing() && matches!(p.origin, Origin::Added { deadline, .. } if deadline <= now)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            self.add_failed(now, ctx, k, "no_answer", None);
        }
        let lost: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(_, p)| p.media_lost.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for k in lost {
            // No new peer connection within the grace period: media is gone.
            self.leg_media_failed(now, ctx, k);
        }
        self.settle(now, ctx);
    }

    // ----- plumbing -----

    pub(crate) fn push(&mut self, o: CallOutput) {
        self.out.push_back(o);
    }

    pub(crate) fn media(&mut self, cmd: MediaCommand) {
        self.push(CallOutput::Media(cmd));
    }

    pub(crate) fn sip(&mut self, leg: LegKey, action: SipAction) {
        self.push(CallOutput::Sip { leg, action });
    }

    pub(crate) fn send_operator(&mut self, op: &str, msg: ServerMessage) {
        self.push(CallOutput::Operator {
            op: op.to_string(),
            msg,
        });
    }

    pub(crate) fn error_to(
        &mut self,
        op: &str,
        code: ErrorCode,
        message: &str,
        reference: Option<String>,
    ) {
        let msg = ServerMessage::Error {
            code,
            message: message.into(),
            reference,
            call_id: Some(self.id.to_string()),
        };
        self.send_operator(op, msg);
    }

    pub(crate) fn leg_key(&mut self) -> LegKey {
        let k = LegKey(self.next_leg);
        self.next_leg += 1;
        k
    }

    pub(crate) fn event(
        &mut self,
        now: Instant,
        kind: CallEventKind,
        status: Option<DialStatus>,
        code: Option<u16>,
        party: Option<PartyRecord>,
    ) {
        let completed = kind == CallEventKind::Completed;
        let mut ev = self.report(now, kind);
        if completed {
            ev.duration = Some(now.saturating_duration_since(self.created));
            ev.talk_time = self.answered_at.map(|a| now.saturating_duration_since(a));
            ev.parties = self.history.clone();
        }
        ev.status = status;
        ev.code = code;
        ev.rung = self.rung.clone();
        // The recording's timeline follows who comes and goes.
        if let Some(p) = party.as_ref() {
            match kind {
                CallEventKind::PartyJoined => {
                    self.record_note("joined", Some(p.id), Some(p.role.as_str().into()))
                }
                CallEventKind::PartyLeft => {
                    self.record_note("left", Some(p.id), p.reason.map(String::from))
                }
                _ => {}
            }
        }
        ev.party = party;
        self.push(CallOutput::Event(ev));
    }

    /// After every input: the media graph and flags follow the parties, the
    /// operators hear of what changed for them.
    pub(crate) fn settle(&mut self, now: Instant, ctx: &CallCtx<'_>) {
        if self.is_ended() {
            return;
        }
        self.sync_media();
        self.sync_recording();
        self.sync_siprec(now, ctx);
        self.sync_sip_holds(now, ctx);
        self.sync_operator_views(None, None);
    }

    /// The node that owns this call when it is another node's fork.
    pub fn peer_owner(&self) -> Option<&str> {
        self.from_peer.as_deref()
    }

    /// Whether the SIP caller has had its final answer (or the call is
    /// over): a proxy can no longer try another node for it.
    pub fn caller_settled(&self) -> bool {
        self.answered_at.is_some() || self.is_connected() || self.is_ended()
    }

    /// The outcome status of a call that ends now without a plan outcome.
    pub(crate) fn hangup_status(&self) -> DialStatus {
        if self.answered_at.is_some() {
            DialStatus::Completed
        } else {
            DialStatus::Canceled
        }
    }

    /// Ends the whole call. Operators get `reason`; the operator of `by` (who
    /// ended it) gets `hangup`.
    pub(crate) fn end_call_by(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        status: DialStatus,
        reason: EndReason,
        code: Option<u16>,
        by: Option<LegKey>,
    ) {
        if self.is_ended() {
            return;
        }
        self.end_siprec(now, ctx);
        let caller = self.caller;
        let keys: Vec<LegKey> = self.parties.keys().copied().collect();
        for k in keys {
            let Some(p) = self.parties.remove(&k) else {
                continue;
            };
            let r = if Some(k) == by {
                EndReason::Hangup
            } else {
                reason
            };
            match &p.leg {
                Leg::Sip(s) => {
                    if s.state != party::SipState::Ending {
                        // A caller we rang ourselves (the API's) is cancelled.
                        let action = if k == caller
                            && s.state == party::SipState::Ringing
                            && !self.originated()
                        {
                            SipAction::Respond {
                                status: sip::caller_status(status, code),
                                sdp: None,
                                headers: Vec::new(),
                            }
                        } else {
                            SipAction::Hangup
                        };
                        self.sip(k, action);
                    }
                    ctx.ports.give(s.port);
                    if let Some(op) = s.operator.clone().filter(|_| p.joined()) {
                        self.push(CallOutput::Free { op });
                    }
                }
                Leg::Operator(o) => {
                    let code = if k == caller { code } else { None };
                    let waiting = o.waiting_ref();
                    let msg = ServerMessage::Ended {
                        call_id: self.id.to_string(),
                        reason: r,
                        code,
                        message: None,
                        reference: waiting,
                    };
                    self.send_operator(&o.op, msg);
                    if p.joined() {
                        self.push(CallOutput::Free { op: o.op.clone() });
                    }
                }
                _ => {}
            }
            self.record_left(now, k, &p, reason_name(r));
        }
        for (_, port) in std::mem::take(&mut self.ending) {
            ctx.ports.give(port);
        }
        self.media(MediaCommand::Stop);
        let status = if status == DialStatus::Answered {
            DialStatus::Completed
        } else {
            status
        };
        self.state = CallState::Ended;
        self.event(now, CallEventKind::Completed, Some(status), code, None);
    }

    pub(crate) fn end_call(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        status: DialStatus,
        reason: EndReason,
        code: Option<u16>,
    ) {
        self.end_call_by(now, ctx, status, reason, code, None);
    }

    /// Ends every leg (shutdown past its deadline).
    pub fn end(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let status = self.hangup_status();
        self.end_call(now, ctx, status, EndReason::RemoteHangup, None);
    }

    /// Notes that party `k` joined, in the history and as an event; tells the
    /// others.
    pub(crate) fn record_joined(&mut self, now: Instant, ctx: &CallCtx<'_>, k: LegKey) {
        let Some(p) = self.parties.get_mut(&k) else {
            return;
        };
        p.stage = Stage::Joined;
        p.joined_at.get_or_insert(now);
        let (role, parent) = (p.role, p.parent());
        let rec = PartyRecord {
            id: k,
            role,
            who: self.who(k),
            joined: Some(now),
            left: None,
            reason: None,
            rtcp: None,
            parent,
        };
        match self.history.iter_mut().find(|r| r.id == k) {
            Some(r) => r.joined = Some(now),
            None => self.history.push(rec.clone()),
        }
        self.event(now, CallEventKind::PartyJoined, None, None, Some(rec));
        if let Some(info) = self.participant_info(now, ctx.view(), k) {
            let at = ctx.unix_ms(now);
            for op in self.operators_told(Some(k)) {
                let msg = ServerMessage::ParticipantJoined {
                    call_id: self.id.to_string(),
                    participant: Box::new(info.clone()),
                    at,
                };
                self.send_operator(&op, msg);
            }
        }
    }

    /// Notes that party `k` (already out of the table) left.
    pub(crate) fn record_left(&mut self, now: Instant, k: LegKey, p: &Party, reason: &'static str) {
        let who = match (&p.leg, &p.target) {
            (Leg::Operator(o), _) => format!("operator:{}", o.op),
            (_, Some(t)) => t.to_string(),
            _ if k == self.caller => self.from.clone(),
            _ => "unknown".into(),
        };
        let rec = match self.history.iter_mut().find(|r| r.id == k) {
            Some(r) => {
                r.left = Some(now);
                r.reason = Some(reason);
                r.clone()
            }
            None => {
                let r = PartyRecord {
                    id: k,
                    role: p.role,
                    who,
                    joined: None,
                    left: Some(now),
                    reason: Some(reason),
                    rtcp: None,
                    parent: p.parent(),
                };
                self.history.push(r.clone());
                r
            }
        };
        self.heard.remove(&k);
        self.flags.remove(&k);
        self.told.remove(&k);
        if !self.is_ended() {
            self.event(now, CallEventKind::PartyLeft, None, None, Some(rec));
        }
    }

    /// Tells the operators in the call (but `except`) that party `k` left.
    pub(crate) fn tell_left(&mut self, now: Instant, ctx: &CallCtx<'_>, k: LegKey, reason: &str) {
        let at = ctx.unix_ms(now);
        for op in self.operators_told(None) {
            let msg = ServerMessage::ParticipantLeft {
                call_id: self.id.to_string(),
                participant_id: k.to_string(),
                reason: reason.to_string(),
                at,
            };
            self.send_operator(&op, msg);
        }
    }

    /// Operators who follow the participants: joined operator parties, but `except`.
    pub(crate) fn operators_told(&self, except: Option<LegKey>) -> Vec<String> {
        self.parties
            .iter()
            .filter(|(k, p)| Some(**k) != except && p.joined())
            .filter_map(|(_, p)| p.op().map(String::from))
            .collect()
    }

    /// Who a party is, for records: `operator:alice`, the target, or the
    /// caller's number.
    pub(crate) fn who(&self, k: LegKey) -> String {
        match self.parties.get(&k) {
            Some(p) if p.operator().is_some() || p.target.is_some() => p.label(),
            _ if k == self.caller => self.from.clone(),
            _ => "unknown".into(),
        }
    }

    /// One participant as the protocol shows it.
    pub(crate) fn participant_info(
        &self,
        _now: Instant,
        ctx: CallView<'_>,
        k: LegKey,
    ) -> Option<ParticipantInfo> {
        let p = self.parties.get(&k)?;
        let (state, held) = match p.stage {
            Stage::Ringing => ("ringing", false),
            Stage::Joined => {
                let held = self.party_on_hold(k);
                (if held { "held" } else { "joined" }, held)
            }
        };
        let address = match (&p.leg, &p.target) {
            (Leg::Operator(_), _) => None,
            (_, Some(t)) => Some(t.to_string()),
            _ if k == self.caller => Some(self.from.clone()),
            _ => None,
        };
        let op = p.op().map(String::from);
        let display_name = match &op {
            Some(o) => ctx.presence.display_name(o).map(String::from),
            None if k == self.caller => self.caller_name.clone(),
            None => None,
        };
        Some(ParticipantInfo {
            id: k.to_string(),
            role: p.role.as_str(),
            state,
            kind: p.leg.kind(),
            operator_ref: op,
            display_name,
            address,
            muted: p.muted || p.operator().is_some_and(|o| o.self_held),
            held,
            monitor: p.monitor.map(|(m, _)| m.as_str()),
            joined_at: p.joined_at.map(|t| ctx.unix_ms(t)),
        })
    }

    pub(crate) fn participant_infos(
        &self,
        now: Instant,
        ctx: CallView<'_>,
    ) -> Vec<ParticipantInfo> {
        self.parties
            .keys()
            .filter_map(|k| self.participant_info(now, ctx, *k))
            .collect()
    }

    /// Tells every joined operator how participant `k` stands now.
    pub(crate) fn tell_updated(
        &mut self,
        now: Instant,
        ctx: &CallCtx<'_>,
        k: LegKey,
        reference: Option<(String, Option<String>)>,
    ) {
        let Some(info) = self.participant_info(now, ctx.view(), k) else {
            return;
        };
        let at = ctx.unix_ms(now);
        let mut ops = self.operators_told(None);
        if let Some((asker, _)) = &reference
            && !ops.contains(asker)
        {
            ops.push(asker.clone());
        }
        for op in ops {
            let r = reference
                .as_ref()
                .filter(|(asker, _)| *asker == op)
                .and_then(|(_, r)| r.clone());
            let msg = ServerMessage::ParticipantUpdated {
                call_id: self.id.to_string(),
                participant: Box::new(info.clone()),
                at,
                reference: r,
            };
            self.send_operator(&op, msg);
        }
    }

    /// The full participant list for party `k`'s operator.
    pub(crate) fn send_participants(&mut self, now: Instant, ctx: &CallCtx<'_>, k: LegKey) {
        let Some(op) = self.parties.get(&k).and_then(|p| p.op()).map(String::from) else {
            return;
        };
        let msg = ServerMessage::Participants {
            call_id: self.id.to_string(),
            self_id: k.to_string(),
            participants: self.participant_infos(now, ctx.view()),
            capabilities: self.capabilities_of(ctx.view(), k).names(),
            at: ctx.unix_ms(now),
        };
        self.send_operator(&op, msg);
    }
}

/// The wire name of an end reason, for party records.
pub(crate) fn reason_name(r: EndReason) -> &'static str {
    match r {
        EndReason::Hangup => "hangup",
        EndReason::RemoteHangup => "remote_hangup",
        EndReason::TakenByOther => "taken_by_other",
        EndReason::Rejected => "rejected",
        EndReason::NoAnswer => "no_answer",
        EndReason::Busy => "busy",
        EndReason::Failed => "failed",
        EndReason::Offline => "offline",
        EndReason::Removed => "removed",
        EndReason::Transferred => "transferred",
    }
}

#[cfg(test)]
mod tests;
