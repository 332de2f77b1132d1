//! The REST call control's sans-IO side: the customer's backend lists and
//! steers live calls, and places new ones (click-to-call). The HTTP layer
//! (sbc's `/v1/calls`) authenticates the API key and hands over its numbers;
//! a call on another number is "not found", never visible. Each request is
//! answered at once (what it did, or an [`ApiError`]); what it sets off is
//! reported through the call's events (and the originator's status
//! callback).

use std::sync::Arc;

use media_core::Instant;

use super::Bridge;
use crate::call::{
    ApiError, ApiErrorCode, Call, PartyUpdate, RecordingStatus, StatusCallback, TransferStep,
};
use crate::contract::{CallId, LegKey, RecordingId};
use crate::plan::{DialPlan, ForkOptions, RecordOptions, Target};
use crate::roles::MonitorMode;
use crate::signalling::CallSummary;

/// What `POST /v1/calls` asks: ring `to`, then connect it to `connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Originate {
    /// The caller ID: one of our numbers (its id or E.164).
    pub from: String,
    /// Rung first: `operator:REF`, `+E164`, `pstn:+E164` or `sip:URI`.
    pub to: String,
    /// Dialled once `to` answers: any dial target, or one of our numbers
    /// (its dial plan).
    pub connect: String,
    /// How long `to` rings (seconds, 5-300; default 30).
    pub timeout: Option<u32>,
    /// Where the call's status goes.
    pub status_callback: Option<StatusCallback>,
}

/// One request of the REST call control (the path's call and party ids as
/// the API spells them: `c-N`, `p-N`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiRequest {
    /// `GET /v1/calls`.
    ListCalls,
    /// `GET /v1/calls/{call}`.
    GetCall {
        /// The call.
        call: String,
    },
    /// `POST /v1/calls`.
    Originate(Originate),
    /// `DELETE /v1/calls/{call}`.
    Hangup {
        /// The call.
        call: String,
    },
    /// `POST /v1/calls/{call}/participants`.
    AddParticipant {
        /// The call.
        call: String,
        /// A dial target.
        target: String,
        /// Ring time in seconds.
        timeout: Option<u32>,
    },
    /// `PATCH /v1/calls/{call}/participants/{participant}`.
    UpdateParticipant {
        /// The call.
        call: String,
        /// The party.
        participant: String,
        /// What changes.
        update: PartyUpdate,
    },
    /// `DELETE /v1/calls/{call}/participants/{participant}`.
    RemoveParticipant {
        /// The call.
        call: String,
        /// The party.
        participant: String,
    },
    /// `POST /v1/calls/{call}/dtmf`.
    Dtmf {
        /// The call.
        call: String,
        /// `0-9*#A-D`, `,` a pause.
        digits: String,
        /// To this party (default: every phone in the call).
        participant: Option<String>,
    },
    /// `POST /v1/calls/{call}/transfer`.
    Transfer {
        /// The call.
        call: String,
        /// A dial target.
        target: String,
        /// Consult the target first.
        attended: bool,
        /// Ring time in seconds.
        timeout: Option<u32>,
        /// The transferor (default: the call's one agent).
        by: Option<String>,
        /// The transferor hanging up cancels it (default: completes it).
        cancel_on_hangup: bool,
        /// Blind: rung if the target fails, before the recall.
        fallback: Option<String>,
    },
    /// `POST /v1/calls/{call}/transfer/{complete|cancel|merge}`.
    TransferStep {
        /// The call.
        call: String,
        /// What to do.
        step: TransferStep,
    },
    /// `POST /v1/calls/{call}/recordings`.
    Record {
        /// The call.
        call: String,
        /// How.
        options: RecordOptions,
    },
    /// `POST /v1/calls/{call}/recordings/{recording}`.
    UpdateRecording {
        /// The call.
        call: String,
        /// The recording (`rec-...`).
        recording: String,
        /// Paused, in progress or stopped.
        status: RecordingStatus,
    },
    /// `POST /v1/calls/{call}/forks`.
    Fork {
        /// The call.
        call: String,
        /// Where and how.
        options: ForkOptions,
    },
    /// `DELETE /v1/calls/{call}/forks/{fork}`.
    StopFork {
        /// The call.
        call: String,
        /// The fork (`rec-...`).
        fork: String,
    },
    /// `POST /v1/calls/{call}/monitors`.
    Monitor {
        /// The call.
        call: String,
        /// Who monitors (rung like an added party).
        target: String,
        /// Listen, whisper or barge.
        mode: MonitorMode,
        /// Whom a whisper reaches (default: the agents).
        coached: Option<String>,
        /// Ring time in seconds.
        timeout: Option<u32>,
    },
}

/// What a request did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiReply {
    /// The calls the key may see.
    Calls(Vec<CallSummary>),
    /// The call as it is now (get, originate, transfer steps).
    Call(CallSummary),
    /// The parties the request concerned (rung, updated, DTMF'd, the
    /// transferor), and the call as it is now (`None`: it ended).
    Parties {
        /// Party ids.
        ids: Vec<String>,
        /// The call.
        call: Option<CallSummary>,
    },
    /// A recording (started, paused, resumed, stopped) and the call now.
    Recording {
        /// `rec-...`.
        id: String,
        /// `in-progress`, `paused`, `stopped`.
        status: &'static str,
        /// The call.
        call: Option<CallSummary>,
    },
    /// A fork (started: `streaming`; `stopped`) and the call now.
    Fork {
        /// `rec-...`.
        id: String,
        /// `streaming` or `stopped`.
        status: &'static str,
        /// The call.
        call: Option<CallSummary>,
    },
    /// Done; nothing to show (hang-up, removal).
    Done,
}

fn not_found() -> ApiError {
    ApiError::new(ApiErrorCode::NotFound, "no such call")
}

fn ids(keys: &[LegKey]) -> Vec<String> {
    keys.iter().map(LegKey::to_string).collect()
}

impl Bridge {
    /// A request of the REST call control by a key allowed `numbers` (number
    /// ids; empty: all).
    pub fn handle_api(
        &mut self,
        now: Instant,
        numbers: &[String],
        req: ApiRequest,
    ) -> Result<ApiReply, ApiError> {
        let allowed = |n: Option<&str>| {
            numbers.is_empty() || n.is_some_and(|n| numbers.iter().any(|x| x == n))
        };
        let call_id = |this: &Bridge, call: &str| -> Result<CallId, ApiError> {
            call.parse::<CallId>()
                .ok()
                .filter(|id| this.calls.get(id).is_some_and(|c| allowed(c.number())))
                .ok_or_else(not_found)
        };
        type Op<'a> = Box<
            dyn FnOnce(&mut Call, &mut crate::call::CallCtx<'_>) -> Result<Vec<LegKey>, ApiError>
                + 'a,
        >;
        let (id, op): (CallId, Op<'_>) = match req {
            ApiRequest::ListCalls => {
                let calls = self
                    .calls
                    .values()
                    .filter(|c| allowed(c.number()))
                    .map(|c| c.summary(now, self.view()))
                    .collect();
                return Ok(ApiReply::Calls(calls));
            }
            ApiRequest::GetCall { call } => {
                let id = call_id(self, &call)?;
                return Ok(ApiReply::Call(self.calls[&id].summary(now, self.view())));
            }
            ApiRequest::Originate(o) => return self.originate(now, numbers, o),
            ApiRequest::Hangup { call } => {
                let id = call_id(self, &call)?;
                self.drive(now, id, |c, ctx| c.api_hangup(now, ctx));
                self.pump(now);
                return Ok(ApiReply::Done);
            }
            ApiRequest::RemoveParticipant { call, participant } => {
                let id = call_id(self, &call)?;
                (
                    id,
                    Box::new(move |c, ctx| {
                        c.api_remove(now, ctx, &participant).map(|()| Vec::new())
                    }),
                )
            }
            ApiRequest::AddParticipant {
                call,
                target,
                timeout,
            } => (
                call_id(self, &call)?,
                Box::new(move |c, ctx| c.api_add(now, ctx, &target, timeout)),
            ),
            ApiRequest::UpdateParticipant {
                call,
                participant,
                update,
            } => (
                call_id(self, &call)?,
                Box::new(move |c, ctx| {
                    c.api_update(now, ctx, &participant, &update)
                        .map(|k| vec![k])
                }),
            ),
            ApiRequest::Dtmf {
                call,
                digits,
                participant,
            } => (
                call_id(self, &call)?,
                Box::new(move |c, ctx| c.api_dtmf(now, ctx, &digits, participant.as_deref())),
            ),
            ApiRequest::Transfer {
                call,
                target,
                attended,
                timeout,
                by,
                cancel_on_hangup,
                fallback,
            } => (
                call_id(self, &call)?,
                Box::new(move |c, ctx| {
                    let how = (cancel_on_hangup, fallback);
                    c.api_transfer(now, ctx, &target, attended, timeout, by.as_deref(), how)
                        .map(|k| vec![k])
                }),
            ),
            ApiRequest::TransferStep { call, step } => (
                call_id(self, &call)?,
                Box::new(move |c, ctx| c.api_transfer_step(now, ctx, step).map(|()| Vec::new())),
            ),
            ApiRequest::Record { call, options } => {
                let id = call_id(self, &call)?;
                return self.recording_op(now, id, move |c, ctx| c.api_record(now, ctx, options));
            }
            ApiRequest::UpdateRecording {
                call,
                recording,
                status,
            } => {
                let id = call_id(self, &call)?;
                return self.recording_op(now, id, move |c, _| {
                    c.api_update_recording(now, &recording, status)
                });
            }
            ApiRequest::Fork { call, options } => {
                let id = call_id(self, &call)?;
                return self.fork_op(now, id, "streaming", move |c, ctx| {
                    c.api_fork(now, ctx, &options)
                });
            }
            ApiRequest::StopFork { call, fork } => {
                let id = call_id(self, &call)?;
                return self.fork_op(now, id, "stopped", move |c, _| c.api_stop_fork(now, &fork));
            }
            ApiRequest::Monitor {
                call,
                target,
                mode,
                coached,
                timeout,
            } => (
                call_id(self, &call)?,
                Box::new(move |c, ctx| {
                    c.api_monitor(now, ctx, &target, mode, coached.as_deref(), timeout)
                }),
            ),
        };
        let mut result = Err(not_found());
        self.drive(now, id, |c, ctx| result = op(c, ctx));
        self.pump(now);
        let keys = result?;
        let call = self.calls.get(&id).map(|c| c.summary(now, self.view()));
        Ok(match (keys.is_empty(), call) {
            (true, Some(call)) => ApiReply::Call(call),
            (true, None) => ApiReply::Done,
            (false, call) => ApiReply::Parties {
                ids: ids(&keys),
                call,
            },
        })
    }

    /// A request on call `id`'s recording, answered with the recording as it
    /// is after it.
    fn recording_op(
        &mut self,
        now: Instant,
        id: CallId,
        op: impl FnOnce(&mut Call, &mut crate::call::CallCtx<'_>) -> Result<RecordingId, ApiError>,
    ) -> Result<ApiReply, ApiError> {
        let mut result = Err(not_found());
        self.drive(now, id, |c, ctx| result = op(c, ctx));
        self.pump(now);
        let rec = result?;
        let call = self.calls.get(&id).map(|c| c.summary(now, self.view()));
        let status = match call.as_ref().and_then(|c| c.recording.as_ref()) {
            Some(r) if r.id == rec.to_string() => r.status,
            _ => "stopped",
        };
        Ok(ApiReply::Recording {
            id: rec.to_string(),
            status,
            call,
        })
    }

    /// A request on one of call `id`'s forks, answered with the fork.
    fn fork_op(
        &mut self,
        now: Instant,
        id: CallId,
        status: &'static str,
        op: impl FnOnce(&mut Call, &mut crate::call::CallCtx<'_>) -> Result<RecordingId, ApiError>,
    ) -> Result<ApiReply, ApiError> {
        let mut result = Err(not_found());
        self.drive(now, id, |c, ctx| result = op(c, ctx));
        self.pump(now);
        let fork = result?;
        let call = self.calls.get(&id).map(|c| c.summary(now, self.view()));
        Ok(ApiReply::Fork {
            id: fork.to_string(),
            status,
            call,
        })
    }

    /// `POST /v1/calls`: a new call that rings `o.to` first.
    fn originate(
        &mut self,
        now: Instant,
        numbers: &[String],
        o: Originate,
    ) -> Result<ApiReply, ApiError> {
        let Some(number) = self.cfg.number(&o.from).cloned() else {
            return Err(ApiError::new(
                ApiErrorCode::BadRequest,
                "`from` is not a number of this service",
            ));
        };
        if !numbers.is_empty() && !numbers.contains(&number.id) {
            return Err(ApiError::new(
                ApiErrorCode::ForbiddenNumber,
                "this API key may not use that number",
            ));
        }
        let first = match crate::call::parse_target(&o.to) {
            Some(t @ (Target::Operator(_) | Target::Pstn { .. } | Target::Sip(_))) => t,
            _ => {
                return Err(ApiError::new(
                    ApiErrorCode::BadRequest,
                    "`to` must be operator:REF, +E164, pstn:+E164 or sip:URI",
                ));
            }
        };
        // One of our numbers: its dial plan; else the target as one step.
        let plan = match self.cfg.number(&o.connect) {
            Some(n) if !n.plan.steps.is_empty() => n.plan.clone(),
            _ => {
                let Some(t) = crate::call::parse_target(&o.connect) else {
                    return Err(ApiError::new(
                        ApiErrorCode::BadRequest,
                        "`connect` must be operator:REF, operators[:NUMBER], +E164, pstn:+E164, sip:URI, stream:URL or one of our numbers",
                    ));
                };
                DialPlan::single(vec![t], self.cfg.outbound_ring_timeout)
            }
        };
        if self.admission(super::Origin::Operator).is_err() {
            self.stats.calls_rejected_capacity += 1;
            return Err(ApiError::new(
                ApiErrorCode::Unavailable,
                "the service is at capacity or draining; try again shortly",
            ));
        }
        let ring = std::time::Duration::from_secs(u64::from(o.timeout.unwrap_or(30).clamp(5, 300)));
        let id = CallId(self.next_call);
        let callback = o.status_callback.map(Arc::new);
        let call = {
            let (_, mut ctx) = self.split();
            Call::originate(now, &mut ctx, id, &number, &first, plan, ring, callback)
        };
        let call = call.map_err(|e| match e {
            crate::call::OriginateError::Unavailable => ApiError::new(
                ApiErrorCode::TargetBusy,
                "`to` is not available (an operator offline or on a call)",
            ),
            crate::call::OriginateError::Failed(code) => ApiError::new(
                ApiErrorCode::TargetFailed,
                format!("`to` could not be called ({code})"),
            ),
        })?;
        self.next_call += 1;
        self.stats.calls_outbound += 1;
        self.calls.insert(id, call);
        self.apply(now, id);
        self.pump(now);
        match self.calls.get(&id) {
            Some(c) => Ok(ApiReply::Call(c.summary(now, self.view()))),
            None => Err(ApiError::new(
                ApiErrorCode::TargetFailed,
                "`to` could not be called",
            )),
        }
    }
}
