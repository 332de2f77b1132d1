//! What operators ask of a call (protocol.md section 3 and "Participants"):
//! accept, reject, leave or end, mute, hold (themselves or another party), DTMF,
//! a new peer connection, adding and removing participants, and supervision
//! (monitor a call, switch modes). Every request is checked against the asker's
//! state and capabilities; a refused one changes nothing and gets an `error`.

use std::time::Duration;

use media_core::Instant;

use super::control::TransferStep;
use super::party::{Leg, OperatorLeg, Origin, Party, Stage};
use super::record::Asker;
use super::{Call, CallCtx, CallOutput};
use crate::contract::{LegKey, MediaCommand, PauseBehavior};
use crate::plan::RecordOptions;
use crate::roles::{Capabilities, Capability, MonitorMode, Role};
use crate::signalling::{ClientMessage, EndReason, ErrorCode};

/// How long an added participant rings by default.
pub const ADD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a target rings: `timeout` seconds (5-300), else `default`.
pub(crate) fn ring_time(timeout: Option<u32>, default: Duration) -> Duration {
    timeout.map_or(default, |s| Duration::from_secs(u64::from(s.clamp(5, 300))))
}

impl Call {
    /// What party `key` may do.
    pub(crate) fn capabilities_of(&self, ctx: super::CallView<'_>, key: LegKey) -> Capabilities {
        let Some(p) = self.parties.get(&key) else {
            return Capabilities::NONE;
        };
        let caps = self
            .number
            .as_deref()
            .and_then(|n| ctx.cfg.number(n))
            .map(|n| n.capabilities)
            .unwrap_or_default();
        caps.of(p.role, p.monitor.map(|(m, _)| m))
    }

    /// Operator `op`'s request about this call (the bridge found its party).
    pub fn handle_operator(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        op: &str,
        reference: Option<String>,
        msg: ClientMessage,
    ) {
        let Some(key) = self.party_of(op) else {
            return self.error_to(
                op,
                ErrorCode::BadRequest,
                "unknown callId (the call may have ended)",
                reference,
            );
        };
        let ringing = self.parties.get(&key).is_some_and(|p| p.ringing());
        let bad = |c: &mut Call, message: &str, r: Option<String>| {
            c.error_to(op, ErrorCode::BadRequest, message, r)
        };
        match msg {
            ClientMessage::Accept { sdp, .. } => {
                if !ringing {
                    return bad(self, "the call is not ringing", reference);
                }
                if ctx.presence.active_call(op).is_some() {
                    return self.error_to(
                        op,
                        ErrorCode::Busy,
                        "you already have a call",
                        reference,
                    );
                }
                self.browser_offer(key, reference, sdp);
                self.answered(now, ctx, key);
            }
            ClientMessage::Reject { .. } => {
                if !ringing {
                    return bad(self, "the call is not ringing", reference);
                }
                self.decline(now, ctx, key);
            }
            ClientMessage::Hangup { .. } | ClientMessage::Leave { .. } => {
                if ringing {
                    self.decline(now, ctx, key);
                } else {
                    self.leave(now, ctx, key, EndReason::Hangup, true);
                }
            }
            ClientMessage::End { .. } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                if !self.may(ctx, op, key, Capability::EndCall, &reference) {
                    return;
                }
                let status = self.hangup_status();
                self.end_call_by(now, ctx, status, EndReason::RemoteHangup, None, Some(key));
            }
            ClientMessage::Mute { on, .. } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                if let Some(p) = self.parties.get_mut(&key) {
                    p.muted = on;
                }
                self.settle_for(now, ctx, key, reference);
            }
            ClientMessage::Hold {
                on, participant_id, ..
            } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                match participant_id {
                    None => {
                        if !self.is_connected() {
                            return bad(self, "hold needs a connected call", reference);
                        }
                        if let Some(o) = self.parties.get_mut(&key).and_then(|p| p.operator_mut()) {
                            o.self_held = on;
                        }
                        self.settle_for(now, ctx, key, reference);
                    }
                    Some(pid) => {
                        // `*`: the whole call, everyone but the asker.
                        let targets: Vec<LegKey> = if pid == "*" {
                            self.parties
                                .iter()
                                .filter(|(k, p)| **k != key && p.joined())
                                .map(|(k, _)| *k)
                                .collect()
                        } else {
                            match self.other_party(&pid) {
                                Some(t) if t == key => {
                                    return bad(
                                        self,
                                        "hold yourself without participantId",
                                        reference,
                                    );
                                }
                                Some(t) if self.parties.get(&t).is_some_and(|p| p.joined()) => {
                                    vec![t]
                                }
                                Some(_) => {
                                    return bad(self, "the participant has not joined", reference);
                                }
                                None => return bad(self, "unknown participantId", reference),
                            }
                        };
                        if !self.may(ctx, op, key, Capability::HoldParticipant, &reference) {
                            return;
                        }
                        for t in &targets {
                            if let Some(p) = self.parties.get_mut(t) {
                                p.held = on;
                            }
                        }
                        self.settle(now, ctx);
                        for (i, t) in targets.iter().enumerate() {
                            // The request's `ref` on the first answer.
                            let r = (i == 0).then(|| (op.to_string(), reference.clone()));
                            self.tell_updated(now, ctx, *t, r);
                        }
                    }
                }
            }
            ClientMessage::Dtmf { digits, .. } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                let to = self.dtmf_targets(key, false);
                if to.is_empty() {
                    return bad(self, "no one to send DTMF to yet", reference);
                }
                for t in to {
                    self.send_dtmf_to(ctx, t, &digits);
                }
            }
            ClientMessage::Reoffer { sdp, .. } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                self.browser_offer(key, reference, sdp);
            }
            ClientMessage::AddParticipant {
                target, timeout, ..
            } => self.add_participant(now, ctx, op, key, reference, &target, timeout),
            ClientMessage::Transfer {
                target,
                attended,
                timeout,
                on_hangup,
                fallback,
                ..
            } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                if !self.may(ctx, op, key, Capability::AddParticipant, &reference) {
                    return;
                }
                let how = super::transfer::Ask {
                    attended,
                    timeout,
                    cancel_on_hangup: on_hangup.as_deref() == Some("cancel"),
                    fallback,
                };
                self.start_transfer(now, ctx, op, key, reference, &target, how);
            }
            ClientMessage::TransferComplete { .. } => {
                self.transfer_action(now, ctx, op, key, reference, TransferStep::Complete)
            }
            ClientMessage::TransferCancel { .. } => {
                self.transfer_action(now, ctx, op, key, reference, TransferStep::Cancel)
            }
            ClientMessage::TransferMerge { .. } => {
                self.transfer_action(now, ctx, op, key, reference, TransferStep::Merge)
            }
            ClientMessage::RemoveParticipant { participant_id, .. } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                let Some(target) = self.other_party(&participant_id) else {
                    return bad(self, "unknown participantId", reference);
                };
                if target == key {
                    return bad(self, "use leave to leave the call", reference);
                }
                if !self.may(ctx, op, key, Capability::RemoveParticipant, &reference) {
                    return;
                }
                self.remove_participant(now, ctx, target);
            }
            ClientMessage::Record {
                action,
                pause_behavior,
                channels,
                ..
            } => {
                if ringing {
                    return bad(self, "the call is not active", reference);
                }
                if !self.may(ctx, op, key, Capability::Record, &reference) {
                    return;
                }
                let behavior = match pause_behavior.as_deref() {
                    None | Some("silence") => PauseBehavior::Silence,
                    Some("skip") => PauseBehavior::Skip,
                    Some(_) => {
                        return bad(self, "`pauseBehavior` must be silence or skip", reference);
                    }
                };
                let asker = Asker::Sdk {
                    op,
                    reference: reference.clone(),
                };
                let done = match action.as_str() {
                    "start" => match RecordOptions::parse(channels.as_deref(), None, None) {
                        Ok(o) => self.start_recording(now, ctx, o, asker),
                        Err(e) => return bad(self, &e, reference),
                    },
                    "pause" => self.pause_recording(now, behavior, asker),
                    "resume" => self.resume_recording(now, asker),
                    "stop" => self.stop_recording(now, asker),
                    _ => {
                        return bad(
                            self,
                            "`action` must be start, pause, resume or stop",
                            reference,
                        );
                    }
                };
                // Done: every operator heard `recording`, the asker with its ref.
                if let Err(e) = done {
                    return bad(self, &e.message, reference);
                }
            }
            ClientMessage::MonitorMode {
                mode,
                participant_id,
                ..
            } => {
                let Some(mode) = MonitorMode::parse(&mode) else {
                    return bad(self, "`mode` must be listen, whisper or barge", reference);
                };
                if self.parties.get(&key).map(|p| p.role) != Some(Role::Supervisor) {
                    return bad(self, "you do not monitor this call", reference);
                }
                if !self.may(ctx, op, key, Capability::SwitchMonitor, &reference) {
                    return;
                }
                let coached = match participant_id {
                    Some(pid) => match self.other_party(&pid) {
                        Some(t) if t != key => Some(t),
                        _ => return bad(self, "unknown participantId", reference),
                    },
                    None => None,
                };
                if let Some(p) = self.parties.get_mut(&key) {
                    p.monitor = Some((mode, coached));
                }
                self.settle(now, ctx);
                self.tell_updated(now, ctx, key, Some((op.to_string(), reference)));
                // Barging brings the agent's capabilities, and taking them back.
                self.send_participants(now, ctx, key);
            }
            _ => {}
        }
        self.settle(now, ctx);
    }

    /// Operator party `key`'s browser offers `sdp` (accept, reoffer): its media
    /// leg is (re)built, and the request's `ref` waits for the answer.
    fn browser_offer(&mut self, key: LegKey, reference: Option<String>, sdp: String) {
        if let Some(p) = self.parties.get_mut(&key) {
            p.in_media = true;
            p.media_lost = None;
            if let Some(o) = p.operator_mut() {
                o.reference = reference;
            }
        }
        self.media(MediaCommand::AddWebRtc {
            leg: key,
            offer: sdp,
        });
    }

    /// After `key`'s own mute or hold: the media follows, and its operator gets
    /// `callUpdated` with the request's `ref`.
    fn settle_for(
        &mut self,
        now: Instant,
        ctx: &CallCtx<'_>,
        key: LegKey,
        reference: Option<String>,
    ) {
        self.sync_media();
        self.sync_sip_holds(now, ctx);
        self.sync_operator_views(Some(key), Some(reference));
        self.tell_updated(now, ctx, key, None);
    }

    /// Whether `key` may do `c`; tells it why not.
    fn may(
        &mut self,
        ctx: &CallCtx<'_>,
        op: &str,
        key: LegKey,
        c: Capability,
        reference: &Option<String>,
    ) -> bool {
        if self.capabilities_of(ctx.view(), key).has(c) {
            return true;
        }
        self.error_to(
            op,
            ErrorCode::Forbidden,
            &format!("you may not {} in this call", c.as_str().replace('_', " ")),
            reference.clone(),
        );
        false
    }

    /// Another party by its wire id.
    fn other_party(&self, pid: &str) -> Option<LegKey> {
        pid.parse::<LegKey>()
            .ok()
            .filter(|k| self.parties.contains_key(k))
    }

    /// A ringing operator says no (reject, or hang up before accepting).
    fn decline(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey) {
        let added = matches!(
            self.parties.get(&key).map(|p| &p.origin),
            Some(Origin::Added { .. })
        );
        if added {
            self.add_failed(now, ctx, key, "rejected", None);
        } else if key == self.caller {
            let busy = crate::plan::DialStatus::Busy;
            self.originator_failed(now, ctx, busy, EndReason::Rejected, None);
        } else {
            self.drop_ringing(now, ctx, key, EndReason::Rejected);
            self.after_target_gone(now, ctx);
        }
    }

    /// Rings `target` into the live call for party `by` (operator `op`).
    #[allow(clippy::too_many_arguments)]
    fn add_participant(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        op: &str,
        by: LegKey,
        reference: Option<String>,
        target: &str,
        timeout: Option<u32>,
    ) {
        if !self.parties.get(&by).is_some_and(|p| p.joined()) {
            return self.error_to(
                op,
                ErrorCode::BadRequest,
                "the call is not active",
                reference,
            );
        }
        if !self.may(ctx, op, by, Capability::AddParticipant, &reference) {
            return;
        }
        if !self.is_connected() {
            return self.error_to(
                op,
                ErrorCode::BadRequest,
                "participants can be added to a connected call",
                reference,
            );
        }
        let Some(target) = super::transfer::parse_target(target) else {
            return self.error_to(
                op,
                ErrorCode::BadRequest,
                "`target` must be operator:REF, operators[:NUMBER], +E164, pstn:+E164, sip:URI or stream:URL",
                reference,
            );
        };
        if self.parties.len() >= ctx.cfg.max_parties {
            return self.error_to(
                op,
                ErrorCode::BadRequest,
                &format!("a call holds at most {} participants", ctx.cfg.max_parties),
                reference,
            );
        }
        let (_, origin) = self.next_add(now, Some(by), reference.clone(), timeout, ADD_TIMEOUT);
        let (started, new) = self.ring_new(now, ctx, &target, origin);
        match started {
            Ok(n) if n > 0 => {
                for k in new {
                    self.tell_updated(now, ctx, k, Some((op.to_string(), reference.clone())));
                }
            }
            Ok(_) => self.error_to(
                op,
                ErrorCode::TargetBusy,
                "nobody is available at that target",
                reference,
            ),
            Err(code) => self.error_to(
                op,
                ErrorCode::TargetFailed,
                &format!("the target could not be called ({code})"),
                reference,
            ),
        }
    }

    /// A new add request by `by` (a party, or `None`: the API): its group
    /// and the origin of what it rings (for `timeout` seconds, 5-300, else
    /// `default`).
    pub(crate) fn next_add(
        &mut self,
        now: Instant,
        by: Option<LegKey>,
        reference: Option<String>,
        timeout: Option<u32>,
        default: Duration,
    ) -> (u32, Origin) {
        self.adds += 1;
        let origin = Origin::Added {
            by,
            reference,
            deadline: now + ring_time(timeout, default),
            group: self.adds,
        };
        (self.adds, origin)
    }

    /// Rings `target` as `origin`: how many ring (or the status that failed
    /// it), and the parties it added.
    pub(crate) fn ring_new(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: &crate::plan::Target,
        origin: Origin,
    ) -> (Result<usize, u16>, Vec<LegKey>) {
        let before: Vec<LegKey> = self.parties.keys().copied().collect();
        let started = self.ring_target(now, ctx, target, origin);
        let new = self
            .parties
            .keys()
            .copied()
            .filter(|k| !before.contains(k))
            .collect();
        (started, new)
    }

    /// An added party answered: it joins everyone; what else its request rang
    /// stops ringing.
    pub(crate) fn add_joined(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        _by: Option<LegKey>,
        _reference: Option<String>,
    ) {
        let group = match self.parties.get(&key).map(|p| &p.origin) {
            Some(Origin::Added { group, .. }) => *group,
            _ => return,
        };
        let siblings: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(k, p)| {
                **k != key
                    && p.ringing()
                    && matches!(p.origin, Origin::Added { group: g, .. } if g == group)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in siblings {
            self.remove_added(now, ctx, k, EndReason::TakenByOther);
        }
        if let Some(op) = self
            .parties
            .get(&key)
            .and_then(|p| p.op())
            .map(String::from)
        {
            self.push(CallOutput::Busy { op: op.clone() });
            if self
                .parties
                .get(&key)
                .and_then(|p| p.operator())
                .is_some_and(|o| o.answered)
            {
                self.connected_to(now, ctx, key, &op);
            }
        }
        self.record_joined(now, ctx, key);
        self.transfer_target_joined(now, ctx, key, group);
    }

    /// An added party did not join (`reason`: busy, no_answer, failed,
    /// rejected, offline): it goes, and whoever added it hears why.
    pub(crate) fn add_failed(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        reason: &'static str,
        status: Option<u16>,
    ) {
        let Some(Origin::Added {
            by,
            reference,
            group,
            ..
        }) = self.parties.get(&key).map(|p| p.origin.clone())
        else {
            return;
        };
        let end_reason = match reason {
            "busy" => EndReason::Busy,
            "no_answer" => EndReason::NoAnswer,
            "rejected" => EndReason::Rejected,
            "offline" => EndReason::Offline,
            _ => EndReason::Failed,
        };
        self.remove_added(now, ctx, key, end_reason);
        self.add_not_joined(now, ctx, by, reference, group, reason, status);
    }

    /// A party of add request `group` (by `by`, with `reference`) is gone
    /// without joining: once nothing else it rang still rings, the asker hears
    /// why, and whoever was waiting for it may now be alone.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_not_joined(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        by: Option<LegKey>,
        reference: Option<String>,
        group: u32,
        reason: &str,
        status: Option<u16>,
    ) {
        let siblings_left = self.parties.values().any(|p| {
            matches!(p.origin, Origin::Added { group: g, .. } if g == group) && p.ringing()
        });
        if siblings_left {
            return;
        }
        if self.transfer_target_failed(now, ctx, group, reason, status) {
            return self.after_alone(now, ctx);
        }
        if let Some(op) = by
            .and_then(|b| self.parties.get(&b))
            .and_then(|p| p.op())
            .map(String::from)
        {
            let code = match reason {
                "busy" => ErrorCode::TargetBusy,
                "no_answer" | "offline" => ErrorCode::NoAnswer,
                _ => ErrorCode::TargetFailed,
            };
            let message = match status {
                Some(s) => format!("the participant did not join: {reason} ({s})"),
                None => format!("the participant did not join: {reason}"),
            };
            self.send_operator(
                &op,
                crate::signalling::ServerMessage::Error {
                    code,
                    message,
                    reference,
                    call_id: Some(self.id.to_string()),
                },
            );
        }
        self.after_alone(now, ctx);
    }

    /// Takes a still-ringing added party out: its leg ends, everyone hears it left.
    fn remove_added(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        reason: EndReason,
    ) {
        self.drop_ringing(now, ctx, key, reason);
    }

    /// Someone with the right removes party `target`.
    pub(crate) fn remove_participant(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: LegKey,
    ) {
        let Some(p) = self.parties.get(&target) else {
            return;
        };
        if p.ringing() && matches!(p.origin, Origin::Added { .. }) {
            self.remove_added(now, ctx, target, EndReason::Removed);
            return self.after_leave(now, ctx, target);
        }
        if !p.joined() {
            return;
        }
        self.leave(now, ctx, target, EndReason::Removed, true);
    }

    /// Supervisor `op` joins the call in `mode` (its right and the number were
    /// checked by the bridge), its browser offering `sdp`; in `whisper`,
    /// `coached` (default: the call's agents) hears it.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_monitor(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        op: &str,
        reference: Option<String>,
        mode: MonitorMode,
        sdp: String,
        coached: Option<&str>,
    ) {
        if !self.is_connected() {
            return self.error_to(
                op,
                ErrorCode::BadRequest,
                "only a connected call can be monitored",
                reference,
            );
        }
        if self.party_of(op).is_some() {
            return self.error_to(op, ErrorCode::BadRequest, "you are in this call", reference);
        }
        if self.parties.len() >= ctx.cfg.max_parties {
            return self.error_to(op, ErrorCode::BadRequest, "the call is full", reference);
        }
        let coached = match coached {
            Some(pid) => match self.other_party(pid) {
                Some(k) => Some(k),
                None => {
                    return self.error_to(
                        op,
                        ErrorCode::BadRequest,
                        "unknown participantId",
                        reference,
                    );
                }
            },
            None => None,
        };
        let key = self.leg_key();
        let mut p = Party::new(
            Role::Supervisor,
            Leg::Operator(OperatorLeg {
                op: op.to_string(),
                reference,
                answered: false,
                self_held: false,
                invited_by: None,
            }),
            Origin::Monitor,
            None,
        );
        p.monitor = Some((mode, coached));
        p.in_media = true;
        p.stage = Stage::Ringing;
        self.parties.insert(key, p);
        self.push(CallOutput::Busy { op: op.to_string() });
        self.media(MediaCommand::AddWebRtc {
            leg: key,
            offer: sdp,
        });
        self.record_joined(now, ctx, key);
        self.settle(now, ctx);
    }

    /// Parties that get DTMF from `from`: every other full participant but, when
    /// the media path relayed the event already, those it relays to.
    pub(crate) fn dtmf_targets(&self, from: LegKey, relayed: bool) -> Vec<LegKey> {
        self.parties
            .iter()
            .filter(|(k, p)| **k != from && p.joined() && p.full_participant())
            .filter(|(k, p)| {
                !(relayed
                    && p.sip().is_some()
                    && self.heard.get(k).is_some_and(|f| {
                        f.len() == 1 && f[0].from == crate::contract::FeedSource::Leg(from)
                    }))
            })
            .filter(|(_, p)| !matches!(p.leg, Leg::Echo | Leg::Tone(_)))
            .map(|(k, _)| *k)
            .collect()
    }
}
