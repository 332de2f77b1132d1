//! What the customer's backend asks of a live call (the REST call control,
//! sbc's `/v1/calls/{id}/...`): hang up, add, update or remove a party, send
//! DTMF, transfer, monitor. The API is no party: it may act on every party of
//! a call its key may see, and each request answers at once with an
//! [`ApiError`] or what it did. What a request sets off (a target ringing, a
//! transfer's progress) is reported as call events, as for the SDK's.

use media_core::Instant;

use super::operator::ADD_TIMEOUT;
use super::party::{Leg, Origin};
use super::record::Asker;
use super::transfer::{Ask, Transferor};
use super::{Call, CallCtx};
use crate::contract::{LegKey, PauseBehavior, RecordingId};
use crate::plan::RecordOptions;
use crate::roles::{MonitorMode, Role};
use crate::signalling::EndReason;

/// Why the API refused a request; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct ApiError {
    /// What kind of refusal (the HTTP status and the machine-readable code).
    pub code: ApiErrorCode,
    /// For people.
    pub message: String,
}

/// The kinds of [`ApiError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorCode {
    /// The request is malformed or names nothing that exists (400).
    BadRequest,
    /// No such call or party, or one this key may not see (404).
    NotFound,
    /// The key may not use this number (403).
    ForbiddenNumber,
    /// The call is not in a state for this (409): not connected, a transfer
    /// already in progress, no transfer to complete.
    Conflict,
    /// Nobody is available at the target (409).
    TargetBusy,
    /// The target could not be called (502).
    TargetFailed,
    /// At capacity or draining (503).
    Unavailable,
}

impl ApiErrorCode {
    /// The machine-readable code (`error.code` in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::BadRequest => "BAD_REQUEST",
            ApiErrorCode::NotFound => "NOT_FOUND",
            ApiErrorCode::ForbiddenNumber => "FORBIDDEN_NUMBER",
            ApiErrorCode::Conflict => "CONFLICT",
            ApiErrorCode::TargetBusy => "TARGET_BUSY",
            ApiErrorCode::TargetFailed => "TARGET_FAILED",
            ApiErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status it answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ApiErrorCode::BadRequest => 400,
            ApiErrorCode::NotFound => 404,
            ApiErrorCode::ForbiddenNumber => 403,
            ApiErrorCode::Conflict | ApiErrorCode::TargetBusy => 409,
            ApiErrorCode::TargetFailed => 502,
            ApiErrorCode::Unavailable => 503,
        }
    }
}

impl ApiError {
    pub(crate) fn new(code: ApiErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorCode::BadRequest, message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ApiErrorCode::Conflict, message)
    }
}

/// What `PATCH /v1/calls/{id}/participants/{pid}` changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartyUpdate {
    /// Hold (it hears nothing, nobody hears it) or take off hold.
    pub held: Option<bool>,
    /// Mute (it sends silence) or unmute.
    pub muted: Option<bool>,
    /// A supervisor's mode.
    pub mode: Option<MonitorMode>,
}

impl PartyUpdate {
    /// An update of hold, mute and mode (each `None`: unchanged).
    pub fn new(held: Option<bool>, muted: Option<bool>, mode: Option<MonitorMode>) -> Self {
        PartyUpdate { held, muted, mode }
    }
}

/// What `POST /v1/calls/{id}/recordings/{rid}` makes of a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordingStatus {
    /// Paused, keeping time with silence or cutting it.
    Paused(PauseBehavior),
    /// Recording again.
    InProgress,
    /// Finished (the call goes on).
    Stopped,
}

impl RecordingStatus {
    /// From the wire: `status` (`paused`, `in-progress`, `stopped`) and
    /// `pauseBehavior` (`silence`, `skip`).
    pub fn parse(status: &str, behavior: Option<&str>) -> Option<RecordingStatus> {
        let b = match behavior {
            None | Some("silence") => PauseBehavior::Silence,
            Some("skip") => PauseBehavior::Skip,
            Some(_) => return None,
        };
        match status {
            "paused" => Some(RecordingStatus::Paused(b)),
            "in-progress" => Some(RecordingStatus::InProgress),
            "stopped" => Some(RecordingStatus::Stopped),
            _ => None,
        }
    }
}

/// `complete`, `cancel` or `merge` of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferStep {
    /// The transferees and the target go on; the transferor leaves.
    Complete,
    /// The target goes; the transferees come back.
    Cancel,
    /// Everyone together.
    Merge,
}

impl TransferStep {
    /// From its wire name.
    pub fn parse(s: &str) -> Option<TransferStep> {
        match s {
            "complete" => Some(TransferStep::Complete),
            "cancel" => Some(TransferStep::Cancel),
            "merge" => Some(TransferStep::Merge),
            _ => None,
        }
    }
}

const TARGETS: &str =
    "`target` must be operator:REF, operators[:NUMBER], +E164, pstn:+E164, sip:URI or stream:URL";

impl Call {
    /// `POST /v1/calls/{id}/recordings`.
    pub(crate) fn api_record(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        o: RecordOptions,
    ) -> Result<RecordingId, ApiError> {
        self.start_recording(now, ctx, o, Asker::Api)
    }

    /// `POST /v1/calls/{id}/forks`.
    pub(crate) fn api_fork(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        o: &crate::plan::ForkOptions,
    ) -> Result<RecordingId, ApiError> {
        self.start_fork(now, ctx, o, Asker::Api)
    }

    /// `DELETE /v1/calls/{id}/forks/{fid}`.
    pub(crate) fn api_stop_fork(
        &mut self,
        now: Instant,
        fork: &str,
    ) -> Result<RecordingId, ApiError> {
        self.stop_fork(now, fork, Asker::Api)
    }

    /// `POST /v1/calls/{id}/recordings/{rid}`: pause, resume or stop it.
    pub(crate) fn api_update_recording(
        &mut self,
        now: Instant,
        recording: &str,
        status: RecordingStatus,
    ) -> Result<RecordingId, ApiError> {
        let current = self.recording_state().map(|(id, _)| id);
        if recording.parse::<RecordingId>().ok() != current || current.is_none() {
            return Err(ApiError::new(
                ApiErrorCode::NotFound,
                "no such recording in progress on this call",
            ));
        }
        match status {
            RecordingStatus::Paused(b) => self.pause_recording(now, b, Asker::Api),
            RecordingStatus::InProgress => self.resume_recording(now, Asker::Api),
            RecordingStatus::Stopped => self.stop_recording(now, Asker::Api),
        }
    }

    /// The party `pid` (`p-N`), or 404.
    fn api_party(&self, pid: &str) -> Result<LegKey, ApiError> {
        pid.parse::<LegKey>()
            .ok()
            .filter(|k| self.parties.contains_key(k))
            .ok_or_else(|| ApiError::new(ApiErrorCode::NotFound, "no such participant"))
    }

    fn api_connected(&self) -> Result<(), ApiError> {
        if self.is_connected() {
            Ok(())
        } else {
            Err(ApiError::conflict("the call is not connected"))
        }
    }

    /// `DELETE /v1/calls/{id}`: everyone's legs end.
    pub fn api_hangup(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let status = self.hangup_status();
        self.end_call(now, ctx, status, EndReason::RemoteHangup, None);
    }

    /// Rings `target` into the connected call (for `timeout` seconds): the
    /// parties it rings.
    pub fn api_add(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: &str,
        timeout: Option<u32>,
    ) -> Result<Vec<LegKey>, ApiError> {
        self.api_connected()?;
        let target = super::transfer::parse_target(target).ok_or_else(|| ApiError::bad(TARGETS))?;
        if self.parties.len() >= ctx.cfg.max_parties {
            return Err(ApiError::conflict(format!(
                "a call holds at most {} participants",
                ctx.cfg.max_parties
            )));
        }
        // Nobody in the call asked: no adder hears it ring.
        let (_, origin) = self.next_add(now, None, None, timeout, ADD_TIMEOUT);
        let (started, new) = self.ring_new(now, ctx, &target, origin);
        match started {
            Ok(n) if n > 0 => {
                for k in &new {
                    self.tell_updated(now, ctx, *k, None);
                }
                self.settle(now, ctx);
                Ok(new)
            }
            Ok(_) => Err(ApiError::new(
                ApiErrorCode::TargetBusy,
                "nobody is available at that target",
            )),
            Err(code) => Err(ApiError::new(
                ApiErrorCode::TargetFailed,
                format!("the target could not be called ({code})"),
            )),
        }
    }

    /// Rings `target` to monitor the call in `mode` (a supervisor: in
    /// `whisper`, `coached` hears it; default the call's agents).
    pub fn api_monitor(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: &str,
        mode: MonitorMode,
        coached: Option<&str>,
        timeout: Option<u32>,
    ) -> Result<Vec<LegKey>, ApiError> {
        let coached = coached.map(|pid| self.api_party(pid)).transpose()?;
        let new = self.api_add(now, ctx, target, timeout)?;
        for k in &new {
            if let Some(p) = self.parties.get_mut(k) {
                p.role = Role::Supervisor;
                p.monitor = Some((mode, coached));
            }
        }
        self.settle(now, ctx);
        Ok(new)
    }

    /// Holds, mutes or switches the mode of party `pid`.
    pub fn api_update(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        pid: &str,
        update: &PartyUpdate,
    ) -> Result<LegKey, ApiError> {
        let key = self.api_party(pid)?;
        let p = &self.parties[&key];
        if !p.joined() {
            return Err(ApiError::conflict("the participant has not joined"));
        }
        if update.mode.is_some() && p.role != Role::Supervisor {
            return Err(ApiError::bad("`mode` is for supervisors"));
        }
        if update.held.is_some() {
            self.api_connected()?;
        }
        if let Some(p) = self.parties.get_mut(&key) {
            if let Some(h) = update.held {
                p.held = h;
            }
            if let Some(m) = update.muted {
                p.muted = m;
            }
            if let Some(mode) = update.mode {
                let coached = p.monitor.and_then(|(_, c)| c);
                p.monitor = Some((mode, coached));
            }
        }
        self.settle(now, ctx);
        self.tell_updated(now, ctx, key, None);
        if update.mode.is_some() {
            // Barging brings the agent's capabilities, and taking them back.
            self.send_participants(now, ctx, key);
        }
        Ok(key)
    }

    /// Takes party `pid` out (a ringing one stops ringing).
    pub fn api_remove(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        pid: &str,
    ) -> Result<(), ApiError> {
        let key = self.api_party(pid)?;
        let p = &self.parties[&key];
        if p.ringing() && !matches!(p.origin, Origin::Added { .. }) {
            return Err(ApiError::conflict(
                "a ringing target of the plan: hang up the call instead",
            ));
        }
        self.remove_participant(now, ctx, key);
        self.settle(now, ctx);
        Ok(())
    }

    /// Sends `digits` to party `pid`, or to every joined phone (SIP party).
    pub fn api_dtmf(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        digits: &str,
        pid: Option<&str>,
    ) -> Result<Vec<LegKey>, ApiError> {
        if !crate::signalling::valid_digits(digits) {
            return Err(ApiError::bad("`digits` must be 1-32 of 0-9 * # A-D ,"));
        }
        let to = match pid {
            Some(pid) => {
                let k = self.api_party(pid)?;
                if !self.parties[&k].joined() {
                    return Err(ApiError::conflict("the participant has not joined"));
                }
                vec![k]
            }
            None => self
                .parties
                .iter()
                .filter(|(_, p)| p.joined() && matches!(p.leg, Leg::Sip(_)))
                .map(|(k, _)| *k)
                .collect(),
        };
        if to.is_empty() {
            return Err(ApiError::conflict("no phone in the call to send DTMF to"));
        }
        for k in &to {
            self.send_dtmf_to(ctx, *k, digits);
        }
        self.settle(now, ctx);
        Ok(to)
    }

    /// Starts a transfer by party `by` (default: the call's one operator or
    /// AI agent) of the others to `target`: the transferor.
    #[allow(clippy::too_many_arguments)]
    pub fn api_transfer(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: &str,
        attended: bool,
        timeout: Option<u32>,
        by: Option<&str>,
        (cancel_on_hangup, fallback): (bool, Option<String>),
    ) -> Result<LegKey, ApiError> {
        self.api_connected()?;
        let parsed = super::transfer::parse_target(target).ok_or_else(|| ApiError::bad(TARGETS))?;
        let by = match by {
            Some(pid) => self.api_party(pid)?,
            None => {
                let agents: Vec<LegKey> = self
                    .parties
                    .iter()
                    .filter(|(_, p)| p.joined() && matches!(p.role, Role::Agent | Role::Ai))
                    .map(|(k, _)| *k)
                    .collect();
                match agents[..] {
                    [one] => one,
                    _ => {
                        return Err(ApiError::bad(
                            "name the transferor: `participantId` (the call has not exactly one agent)",
                        ));
                    }
                }
            }
        };
        let who = Transferor {
            by,
            op: self.parties.get(&by).and_then(|p| p.op()).map(String::from),
            notify: None,
            via: "api",
        };
        let ask = Ask {
            attended,
            timeout,
            cancel_on_hangup,
            fallback,
        };
        self.begin_transfer(now, ctx, who, None, (target, parsed), ask)
            .map_err(ApiError::conflict)?;
        self.settle(now, ctx);
        Ok(by)
    }

    /// `complete`, `cancel` or `merge` of the call's transfer.
    pub fn api_transfer_step(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        step: TransferStep,
    ) -> Result<(), ApiError> {
        self.transfer_step(now, ctx, None, step)
            .map_err(ApiError::conflict)?;
        self.settle(now, ctx);
        Ok(())
    }
}
