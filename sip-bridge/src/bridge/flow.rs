//! How calls move: answers and failures of legs, steps of the plan, the winner,
//! the end, in-call changes (hold, DTMF), media events. Methods of [`Bridge`]
//! taking the call out of the table (`&mut Call`); each returns whether the call
//! is over (then it is not put back).

use media_core::Instant;

use super::call::{Call, LegKind, OpState, SipState};
use super::media::{LegKey, MediaCommand, MediaEvent, Tone};
use super::plan::{DialStatus, Target};
use super::{Bridge, CallEventKind, DtmfMode, caps_for, format_of, status_index};
use crate::sdp::{self, Attribute, Direction as SdpDirection, LocalMedia, SessionDescription};
use crate::signalling::{EndReason, ServerMessage};
use crate::sip::dialog::{EndReason as SipEnd, UaEvent};
use crate::sip::dtmf_info;

/// Our SDP again with the audio direction set and the version bumped (RFC 3264
/// section 8: a new offer in a session increments `o=`'s version).
pub(crate) fn with_direction(sdp_text: &str, dir: SdpDirection, version: u64) -> Option<String> {
    let mut sd = SessionDescription::parse(sdp_text).ok()?;
    sd.origin.session_version = version;
    sd.attributes.retain(|a| {
        !matches!(
            a.name.as_str(),
            "sendrecv" | "sendonly" | "recvonly" | "inactive"
        )
    });
    for m in sd.media.iter_mut().filter(|m| m.media == "audio") {
        m.attributes.retain(|a| {
            !matches!(
                a.name.as_str(),
                "sendrecv" | "sendonly" | "recvonly" | "inactive"
            )
        });
        m.attributes.push(Attribute::flag(dir.as_str()));
    }
    Some(sd.to_string())
}

/// The SIP status a caller gets for a plan's outcome.
fn caller_status(status: DialStatus, code: Option<u16>) -> u16 {
    match status {
        DialStatus::Busy => 486,
        DialStatus::NoAnswer | DialStatus::Canceled => 480,
        // A target's (or a router's) status passes, but for challenges and our
        // own 487, which mean nothing to the caller.
        _ => code
            .filter(|c| (400..700).contains(c) && !matches!(c, 401 | 407 | 487))
            .unwrap_or(480),
    }
}

impl Bridge {
    /// The caller hears that targets ring (inbound: 183 with our SDP and generated
    /// ringback; outbound to operators: `ringing` and ringback).
    pub(crate) fn caller_ringing(&mut self, now: Instant, call: &mut Call) {
        if call.caller_progress {
            return;
        }
        let caller = call.caller;
        match call.legs.get(&caller).map(|l| l.kind.clone()) {
            Some(LegKind::Sip { ua, local_sdp, .. }) => {
                call.caller_progress = true;
                let _ = self
                    .ua
                    .respond(now, ua, 183, Some(local_sdp.as_bytes()), &[]);
                self.media(
                    call,
                    MediaCommand::Tone {
                        leg: caller,
                        tone: Some(Tone::Ringback),
                    },
                );
                self.event(now, call, CallEventKind::Ringing, None, None);
            }
            Some(LegKind::Operator { op, .. }) => {
                // SIP targets report their own 18x; operators ring at once.
                let operator_ringing = call.legs.values().any(|l| {
                    matches!(
                        l.kind,
                        LegKind::Operator {
                            state: OpState::Ringing,
                            ..
                        }
                    )
                });
                if operator_ringing {
                    call.caller_progress = true;
                    self.send_ringing(call, &op, false);
                    self.media(
                        call,
                        MediaCommand::Tone {
                            leg: caller,
                            tone: Some(Tone::Ringback),
                        },
                    );
                    self.event(now, call, CallEventKind::Ringing, None, None);
                }
            }
            _ => {}
        }
    }

    /// Tells the dialling operator its call rings. Nothing about a call goes out
    /// before the dial's `answer` names it (protocol.md section 3), and the far
    /// end's 183 can beat the media task's SDP answer: then it waits for it.
    fn send_ringing(&mut self, call: &mut Call, op: &str, early_media: bool) {
        if let Some(LegKind::Operator {
            answered: false, ..
        }) = call.legs.get(&call.caller).map(|l| &l.kind)
        {
            call.ringing_deferred = Some(early_media);
            return;
        }
        self.send_operator(
            op,
            ServerMessage::Ringing {
                call_id: call.id.clone(),
                early_media,
            },
        );
    }

    /// No step is left: the caller gets the outcome.
    pub(crate) fn plan_exhausted(&mut self, now: Instant, call: &mut Call) -> bool {
        let status = if call.answered_at.is_some() {
            // Someone (an agent) talked to the caller before the plan ran out.
            DialStatus::Completed
        } else if call.busy {
            DialStatus::Busy
        } else if call.fail_code.is_some() && !call.rung.is_empty() && call.step_deadline.is_none()
        {
            DialStatus::Failed
        } else {
            DialStatus::NoAnswer
        };
        let code = match status {
            DialStatus::Busy => Some(486),
            DialStatus::Failed => call.fail_code,
            _ => None,
        };
        let reason = match status {
            DialStatus::Busy => EndReason::Busy,
            DialStatus::Failed => EndReason::Failed,
            _ => EndReason::NoAnswer,
        };
        self.end_call(now, call, status, reason, code);
        true
    }

    /// The current step rang out.
    pub(crate) fn step_timed_out(&mut self, now: Instant, call: &mut Call) -> bool {
        let keys: Vec<LegKey> = call
            .legs
            .keys()
            .copied()
            .filter(|k| *k != call.caller)
            .collect();
        for k in keys {
            self.drop_ringing(now, call, k, EndReason::NoAnswer);
        }
        call.step += 1;
        if call.step >= call.plan.steps.len() {
            return self.plan_exhausted(now, call);
        }
        call.step_deadline = None;
        self.start_step(now, call)
    }

    /// Ends a leg that still rings (not the caller, not the winner).
    pub(crate) fn drop_ringing(
        &mut self,
        now: Instant,
        call: &mut Call,
        key: LegKey,
        reason: EndReason,
    ) {
        let Some(leg) = call.legs.get_mut(&key) else {
            return;
        };
        match &mut leg.kind {
            LegKind::Sip { ua, state, .. } if *state == SipState::Ringing => {
                let ua = *ua;
                *state = SipState::Ending;
                let _ = self.ua.hangup(now, ua);
            }
            LegKind::Operator {
                op,
                state: OpState::Ringing,
                ..
            } => {
                let op = op.clone();
                call.legs.remove(&key);
                call.ended_legs.push((op.clone(), reason));
                self.send_operator(
                    &op,
                    ServerMessage::Ended {
                        call_id: call.id.clone(),
                        reason,
                        code: None,
                        message: None,
                        reference: None,
                    },
                );
            }
            LegKind::Stream { connected: false } => {
                call.legs.remove(&key);
                self.media(call, MediaCommand::Remove { leg: key });
            }
            _ => {}
        }
    }

    /// A leg rang out, was rejected or failed: if the step has nothing left
    /// ringing, the next one starts.
    pub(crate) fn after_target_gone(&mut self, now: Instant, call: &mut Call) -> bool {
        if call.winner.is_some() || call.ringing_in_step() > 0 {
            return false;
        }
        call.step += 1;
        call.step_deadline = None;
        self.start_step(now, call)
    }

    /// `key` answered first.
    pub(crate) fn win(&mut self, now: Instant, call: &mut Call, key: LegKey) {
        call.winner = Some(key);
        // A caller handed on (an agent's transfer) keeps its first answer time.
        call.answered_at.get_or_insert(now);
        call.answered_by = call.legs.get(&key).map(|l| match (&l.kind, &l.target) {
            (LegKind::Operator { op, .. }, _) => format!("operator:{op}"),
            (_, Some(t)) => t.to_string(),
            _ => "unknown".into(),
        });
        let others: Vec<LegKey> = call
            .legs
            .keys()
            .copied()
            .filter(|k| *k != key && *k != call.caller)
            .collect();
        for k in others {
            self.drop_ringing(now, call, k, EndReason::TakenByOther);
        }
        let caller = call.caller;
        match call.legs.get(&key).map(|l| l.kind.clone()) {
            Some(LegKind::Operator { op, .. }) => {
                if let Some(LegKind::Operator { state, .. }) =
                    call.legs.get_mut(&key).map(|l| &mut l.kind)
                {
                    *state = OpState::Active;
                }
                let _ = self.presence.set_busy(&op, &call.id);
                self.media(call, MediaCommand::Connect { a: caller, b: key });
            }
            Some(LegKind::Sip { .. }) => {
                self.media(call, MediaCommand::Connect { a: caller, b: key })
            }
            Some(LegKind::Stream { .. }) => {
                if let Some(LegKind::Stream { connected, .. }) =
                    call.legs.get_mut(&key).map(|l| &mut l.kind)
                {
                    *connected = true;
                }
                self.media(call, MediaCommand::Connect { a: caller, b: key })
            }
            Some(LegKind::Echo) => self.media(call, MediaCommand::Echo { leg: caller }),
            Some(LegKind::Tone(hz)) => self.media(
                call,
                MediaCommand::Tone {
                    leg: caller,
                    tone: Some(Tone::Hz(hz)),
                },
            ),
            _ => {}
        }
        match call.legs.get(&caller).map(|l| l.kind.clone()) {
            Some(LegKind::Sip {
                ua,
                local_sdp,
                state: SipState::Ringing,
                ..
            }) => {
                let _ = self
                    .ua
                    .respond(now, ua, 200, Some(local_sdp.as_bytes()), &[]);
                if let Some(LegKind::Sip { state, .. }) =
                    call.legs.get_mut(&caller).map(|l| &mut l.kind)
                {
                    *state = SipState::Up;
                }
            }
            Some(LegKind::Operator { op, answered, .. }) if answered => {
                self.send_operator(
                    &op,
                    ServerMessage::Connected {
                        call_id: call.id.clone(),
                    },
                );
            }
            _ => {}
        }
        // A winning operator hears `connected` once its SDP answer is out.
        if let Some(LegKind::Operator {
            op, answered: true, ..
        }) = call.legs.get(&key).map(|l| l.kind.clone())
        {
            self.send_operator(
                &op,
                ServerMessage::Connected {
                    call_id: call.id.clone(),
                },
            );
        }
        self.event(
            now,
            call,
            CallEventKind::Answered,
            Some(DialStatus::Answered),
            None,
        );
    }

    /// Ends the whole call. Operators get `reason` (the one who caused it gets
    /// what [`Bridge::end_call_by`] says).
    pub(crate) fn end_call(
        &mut self,
        now: Instant,
        call: &mut Call,
        status: DialStatus,
        reason: EndReason,
        code: Option<u16>,
    ) {
        self.end_call_by(now, call, status, reason, code, None);
    }

    /// Ends the call; the operator of leg `by` gets `Hangup`.
    pub(crate) fn end_call_by(
        &mut self,
        now: Instant,
        call: &mut Call,
        status: DialStatus,
        reason: EndReason,
        code: Option<u16>,
        by: Option<LegKey>,
    ) {
        let caller = call.caller;
        let legs: Vec<(LegKey, LegKind)> = call
            .legs
            .iter()
            .map(|(k, l)| (*k, l.kind.clone()))
            .collect();
        for (k, kind) in legs {
            let waiting = waiting_ref(Some(&kind));
            match kind {
                LegKind::Sip {
                    ua, state, port, ..
                } => {
                    if state != SipState::Ending {
                        if k == caller && state == SipState::Ringing {
                            let _ =
                                self.ua
                                    .respond(now, ua, caller_status(status, code), None, &[]);
                        } else {
                            let _ = self.ua.hangup(now, ua);
                        }
                    }
                    self.ports.give(port);
                }
                LegKind::Operator { op, state, .. } => {
                    let r = if Some(k) == by {
                        EndReason::Hangup
                    } else {
                        reason
                    };
                    let code = if k == caller { code } else { None };
                    call.ended_legs.push((op.clone(), r));
                    self.send_operator(
                        &op,
                        ServerMessage::Ended {
                            call_id: call.id.clone(),
                            reason: r,
                            code,
                            message: None,
                            reference: waiting,
                        },
                    );
                    if state == OpState::Active {
                        self.presence.set_free(&op, &call.id);
                    }
                }
                _ => {}
            }
        }
        call.legs.clear();
        self.media(call, MediaCommand::Stop);
        let status = if status == DialStatus::Answered {
            DialStatus::Completed
        } else {
            status
        };
        self.stats.ended[status_index(status)] += 1;
        self.event(now, call, CallEventKind::Completed, Some(status), code);
    }

    // ----- SIP -----

    pub(crate) fn on_sip_event(
        &mut self,
        now: Instant,
        call: &mut Call,
        key: LegKey,
        ev: UaEvent,
    ) -> bool {
        match ev {
            UaEvent::Progress { status, sdp, .. } => {
                self.target_progress(now, call, key, status, sdp.as_deref());
                false
            }
            UaEvent::Answered { sdp, .. } => self.target_answered(now, call, key, sdp.as_deref()),
            UaEvent::Failed { status, .. } => self.target_failed(now, call, key, status),
            UaEvent::Offer { sdp, .. } => {
                self.remote_offer(now, call, key, &sdp);
                false
            }
            UaEvent::OfferAnswered { status, sdp, .. } => {
                if (200..300).contains(&status)
                    && let Some(sdp) = sdp
                {
                    self.update_from_answer(call, key, &sdp);
                }
                false
            }
            UaEvent::Info {
                content_type, body, ..
            } => {
                if let Some(d) = dtmf_info::digit(&content_type, &body) {
                    self.forward_dtmf(now, call, key, d);
                }
                false
            }
            UaEvent::Terminated { reason, .. } => self.sip_terminated(now, call, key, reason),
            _ => false,
        }
    }

    fn target_progress(
        &mut self,
        now: Instant,
        call: &mut Call,
        key: LegKey,
        status: u16,
        sdp: Option<&[u8]>,
    ) {
        if call.winner.is_some() {
            return;
        }
        let caller = call.caller;
        let mut early = false;
        if let Some(body) = sdp
            && self.negotiate_answer(call, key, body)
        {
            // Early media: only one target's at a time reaches the caller.
            let someone_else = call.legs.iter().any(|(k, l)| {
                *k != key
                    && matches!(
                        l.kind,
                        LegKind::Sip {
                            early_media: true,
                            ..
                        }
                    )
            });
            if !someone_else {
                if let Some(LegKind::Sip { early_media, .. }) =
                    call.legs.get_mut(&key).map(|l| &mut l.kind)
                {
                    *early_media = true;
                }
                self.media(call, MediaCommand::Connect { a: caller, b: key });
                early = true;
            }
        }
        let _ = status;
        match call.legs.get(&caller).map(|l| l.kind.clone()) {
            Some(LegKind::Operator { op, .. }) if early || !call.caller_progress => {
                if !early {
                    self.media(
                        call,
                        MediaCommand::Tone {
                            leg: caller,
                            tone: Some(Tone::Ringback),
                        },
                    );
                }
                self.send_ringing(call, &op, early);
                if !call.caller_progress {
                    self.event(now, call, CallEventKind::Ringing, None, None);
                }
                call.caller_progress = true;
            }
            Some(LegKind::Sip { .. }) => self.caller_ringing(now, call),
            _ => {}
        }
    }

    /// Reads a target's SDP answer (183 or 200): sets up or updates its RTP leg.
    /// Returns whether it was usable.
    fn negotiate_answer(&mut self, call: &mut Call, key: LegKey, body: &[u8]) -> bool {
        let Some(LegKind::Sip {
            local_sdp,
            negotiated,
            port,
            ..
        }) = call.legs.get(&key).map(|l| l.kind.clone())
        else {
            return false;
        };
        let (Ok(offer), Some(answer)) = (
            SessionDescription::parse(&local_sdp),
            std::str::from_utf8(body)
                .ok()
                .and_then(|t| SessionDescription::parse(t).ok()),
        ) else {
            return false;
        };
        let Ok(n) = sdp::negotiated_from_answer(&offer, &answer) else {
            return false;
        };
        let format = format_of(&n);
        let cmd = if negotiated.is_some() {
            MediaCommand::UpdateRtp {
                leg: key,
                remote: n.remote,
                format,
            }
        } else {
            MediaCommand::AddRtp {
                leg: key,
                local_port: port,
                remote: n.remote,
                format,
            }
        };
        if let Some(LegKind::Sip { negotiated, .. }) = call.legs.get_mut(&key).map(|l| &mut l.kind)
        {
            *negotiated = Some(n);
        }
        self.media(call, cmd);
        true
    }

    fn update_from_answer(&mut self, call: &mut Call, key: LegKey, body: &[u8]) {
        let _ = self.negotiate_answer(call, key, body);
    }

    fn target_answered(
        &mut self,
        now: Instant,
        call: &mut Call,
        key: LegKey,
        sdp: Option<&[u8]>,
    ) -> bool {
        if let Some(b) = sdp {
            self.negotiate_answer(call, key, b);
        }
        let Some(LegKind::Sip { ua, .. }) = call.legs.get(&key).map(|l| l.kind.clone()) else {
            return false;
        };
        if let Some(LegKind::Sip { state, .. }) = call.legs.get_mut(&key).map(|l| &mut l.kind) {
            *state = SipState::Up;
        }
        if call.winner.is_some() || key == call.caller {
            // Someone else won meanwhile: this one goes (ACKed by the UA, then BYE).
            if let Some(LegKind::Sip { state, .. }) = call.legs.get_mut(&key).map(|l| &mut l.kind) {
                *state = SipState::Ending;
            }
            let _ = self.ua.hangup(now, ua);
            return false;
        }
        if !matches!(
            call.legs.get(&key).and_then(|l| match &l.kind {
                LegKind::Sip { negotiated, .. } => Some(negotiated.is_some()),
                _ => None,
            }),
            Some(true)
        ) {
            // A 2xx without a usable answer: end it and treat it as failed.
            if let Some(LegKind::Sip { state, .. }) = call.legs.get_mut(&key).map(|l| &mut l.kind) {
                *state = SipState::Ending;
            }
            let _ = self.ua.hangup(now, ua);
            call.fail_code = Some(488);
            return self.after_target_gone(now, call);
        }
        self.win(now, call, key);
        false
    }

    fn target_failed(&mut self, now: Instant, call: &mut Call, key: LegKey, status: u16) -> bool {
        if key == call.caller {
            return false;
        }
        let Some(leg) = call.legs.get(&key).cloned() else {
            return false;
        };
        let LegKind::Sip {
            trunk,
            attempt,
            port,
            state,
            ..
        } = leg.kind
        else {
            return false;
        };
        call.legs.remove(&key);
        self.ports.give(port);
        self.media(call, MediaCommand::Remove { leg: key });
        if state == SipState::Ending {
            return false; // our own CANCEL: 487
        }
        // Failover to the trunk's next peer on a server or transport failure.
        if matches!(status, 408 | 500 | 502 | 503 | 504)
            && let (Some(t), Some(target)) = (trunk, leg.target.clone())
            && attempt + 1 < self.cfg.trunks[t].peers.len()
            && call.winner.is_none()
        {
            let uri = match &target {
                Target::Pstn { number, .. } => format!("sip:{number}@{}", self.cfg.trunks[t].host),
                Target::Sip(u) => u.clone(),
                _ => String::new(),
            };
            if self.ring_sip_at(now, call, target, uri, Some(t), Some(attempt + 1)) > 0 {
                return false;
            }
        }
        match status {
            486 | 600 => call.busy = true,
            _ => call.fail_code = Some(status),
        }
        self.after_target_gone(now, call)
    }

    fn sip_terminated(
        &mut self,
        now: Instant,
        call: &mut Call,
        key: LegKey,
        reason: SipEnd,
    ) -> bool {
        let is_caller = key == call.caller;
        let is_winner = Some(key) == call.winner;
        if is_caller || is_winner {
            if let Some(LegKind::Sip { state, port, .. }) =
                call.legs.get(&key).map(|l| l.kind.clone())
            {
                if state == SipState::Ending {
                    return false;
                }
                self.ports.give(port);
            }
            call.legs.remove(&key);
            let (status, op_reason, code) = match (call.winner.is_some(), &reason) {
                (true, _) => (DialStatus::Completed, EndReason::RemoteHangup, None),
                (false, SipEnd::Failed(c)) => (DialStatus::Failed, EndReason::Failed, Some(*c)),
                (false, _) => (DialStatus::Canceled, EndReason::RemoteHangup, None),
            };
            self.end_call(now, call, status, op_reason, code);
            return true;
        }
        // A target leg is gone (after its failure, our CANCEL, or a late BYE).
        if let Some(LegKind::Sip { port, .. }) = call.legs.remove(&key).map(|l| l.kind) {
            self.ports.give(port);
            self.media(call, MediaCommand::Remove { leg: key });
        }
        self.after_target_gone(now, call)
    }

    /// A re-INVITE from a SIP leg: hold/resume or a new address.
    fn remote_offer(&mut self, now: Instant, call: &mut Call, key: LegKey, body: &[u8]) {
        let Some(LegKind::Sip {
            ua,
            port,
            negotiated,
            sdp_version,
            remote_held: was_held,
            local_sdp: earlier,
            ..
        }) = call.legs.get(&key).map(|l| l.kind.clone())
        else {
            return;
        };
        let Some(offer) = std::str::from_utf8(body)
            .ok()
            .and_then(|t| SessionDescription::parse(t).ok())
        else {
            let _ = self.ua.answer_offer(now, ua, 488, None);
            return;
        };
        // Keep the codec in use; the media session is built for it.
        let codecs: Vec<_> = negotiated.iter().map(|n| n.codec).collect();
        // RFC 3264 section 8: same o= session id as our earlier SDP, version + 1.
        let session_id = SessionDescription::parse(&earlier)
            .ok()
            .and_then(|sd| sd.origin.session_id.parse().ok())
            .unwrap_or(1);
        let mut local = LocalMedia::rtp(self.cfg.media_ip, port, session_id);
        local.session_version = sdp_version + 1;
        let Ok((answer, n)) = sdp::answer_audio(&offer, &caps_for(&codecs), &local) else {
            let _ = self.ua.answer_offer(now, ua, 488, None);
            return;
        };
        // Our answer does not send when the peer does not receive: it holds us.
        let remote_held = !n.direction.sends();
        let format = format_of(&n);
        self.media(
            call,
            MediaCommand::UpdateRtp {
                leg: key,
                remote: n.remote,
                format,
            },
        );
        self.media(
            call,
            MediaCommand::Hold {
                leg: key,
                on: remote_held,
            },
        );
        if let Some(LegKind::Sip {
            negotiated,
            sdp_version,
            remote_held: rh,
            local_sdp,
            ..
        }) = call.legs.get_mut(&key).map(|l| &mut l.kind)
        {
            *negotiated = Some(n);
            *sdp_version += 1;
            *rh = remote_held;
            *local_sdp = answer.to_string();
        }
        let _ = self
            .ua
            .answer_offer(now, ua, 200, Some(answer.to_string().as_bytes()));
        // SIP to SIP: the hold goes on to the other side (its hold music flows back).
        let across = if key == call.caller {
            call.winner
        } else {
            Some(call.caller)
        };
        if remote_held != was_held
            && let Some(a) = across
            && matches!(
                call.legs.get(&a).map(|l| &l.kind),
                Some(LegKind::Sip { .. })
            )
        {
            self.hold_sip(now, call, a, remote_held);
        }
        self.notify_update(call, key);
    }

    /// Tells the operator(s) across from `changed` how mute/hold stand.
    pub(crate) fn notify_update(&mut self, call: &Call, changed: LegKey) {
        let other = if changed == call.caller {
            call.winner
        } else {
            Some(call.caller)
        };
        let remote_held = |c: &Call, k: LegKey| match c.legs.get(&k).map(|l| &l.kind) {
            Some(LegKind::Sip { remote_held, .. }) => *remote_held,
            Some(LegKind::Operator { held, .. }) => *held,
            _ => false,
        };
        for k in [Some(changed), other].into_iter().flatten() {
            if let Some(LegKind::Operator {
                op, muted, held, ..
            }) = call.legs.get(&k).map(|l| l.kind.clone())
            {
                let across = if k == call.caller {
                    call.winner
                } else {
                    Some(call.caller)
                };
                self.send_operator(
                    &op,
                    ServerMessage::CallUpdated {
                        call_id: call.id.clone(),
                        muted,
                        held,
                        remote_held: across.is_some_and(|a| remote_held(call, a)),
                        reference: None,
                    },
                );
            }
        }
    }

    /// A DTMF digit from leg `from` goes to the leg across.
    pub(crate) fn forward_dtmf(
        &mut self,
        now: Instant,
        call: &mut Call,
        from: LegKey,
        digit: char,
    ) {
        let to = if from == call.caller {
            call.winner
        } else if Some(from) == call.winner {
            Some(call.caller)
        } else {
            None
        };
        let Some(to) = to else { return };
        self.send_dtmf_to(now, call, to, &digit.to_string());
    }

    /// Sends digits into leg `to` as its kind wants them.
    pub(crate) fn send_dtmf_to(&mut self, now: Instant, call: &mut Call, to: LegKey, digits: &str) {
        match call.legs.get(&to).map(|l| l.kind.clone()) {
            Some(LegKind::Operator { op, .. }) => {
                for d in digits.chars().filter(|c| *c != ',') {
                    self.send_operator(
                        &op,
                        ServerMessage::Dtmf {
                            call_id: call.id.clone(),
                            digit: d.to_string(),
                        },
                    );
                }
            }
            Some(LegKind::Stream { .. }) => self.media(
                call,
                MediaCommand::SendDtmf {
                    leg: to,
                    digits: digits.to_string(),
                },
            ),
            Some(LegKind::Sip { ua, trunk, .. }) => {
                let mode = trunk.map_or(DtmfMode::Rfc4733, |t| self.cfg.trunks[t].dtmf);
                let rfc = call.legs.get(&to).is_some_and(|l| matches!(&l.kind, LegKind::Sip { negotiated: Some(n), .. } if n.telephone_event.is_some()));
                if mode == DtmfMode::Info || !rfc {
                    for d in digits.chars().filter(|c| *c != ',') {
                        let body = dtmf_info::body(d);
                        let _ = self
                            .ua
                            .info(now, ua, dtmf_info::CONTENT_TYPE, body.as_bytes());
                    }
                } else {
                    self.media(
                        call,
                        MediaCommand::SendDtmf {
                            leg: to,
                            digits: digits.to_string(),
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// Our hold/resume toward a SIP leg: a re-INVITE with `sendonly` or `sendrecv`.
    pub(crate) fn hold_sip(&mut self, now: Instant, call: &mut Call, key: LegKey, on: bool) {
        let Some(LegKind::Sip {
            ua,
            local_sdp,
            sdp_version,
            state: SipState::Up,
            ..
        }) = call.legs.get(&key).map(|l| l.kind.clone())
        else {
            return;
        };
        let dir = if on {
            SdpDirection::SendOnly
        } else {
            SdpDirection::SendRecv
        };
        let Some(offer) = with_direction(&local_sdp, dir, sdp_version + 1) else {
            return;
        };
        if self
            .ua
            .reinvite(now, ua, offer.clone().into_bytes())
            .is_ok()
            && let Some(LegKind::Sip {
                local_sdp,
                sdp_version,
                ..
            }) = call.legs.get_mut(&key).map(|l| &mut l.kind)
        {
            *local_sdp = offer;
            *sdp_version += 1;
        }
    }

    // ----- media -----

    pub(crate) fn on_media_event(&mut self, now: Instant, call: &mut Call, ev: MediaEvent) -> bool {
        match ev {
            MediaEvent::WebRtcAnswer { leg, sdp } => {
                let Some(LegKind::Operator { op, reference, .. }) =
                    call.legs.get(&leg).map(|l| l.kind.clone())
                else {
                    return false;
                };
                if let Some(LegKind::Operator {
                    answered,
                    reference,
                    ..
                }) = call.legs.get_mut(&leg).map(|l| &mut l.kind)
                {
                    *answered = true;
                    *reference = None;
                }
                self.send_operator(
                    &op,
                    ServerMessage::Answer {
                        call_id: call.id.clone(),
                        sdp,
                        reference,
                    },
                );
                if leg == call.caller
                    && let Some(early_media) = call.ringing_deferred.take()
                    && call.winner.is_none()
                {
                    self.send_operator(
                        &op,
                        ServerMessage::Ringing {
                            call_id: call.id.clone(),
                            early_media,
                        },
                    );
                }
                let connected =
                    (leg == call.caller && call.winner.is_some()) || Some(leg) == call.winner;
                if connected {
                    self.send_operator(
                        &op,
                        ServerMessage::Connected {
                            call_id: call.id.clone(),
                        },
                    );
                }
                false
            }
            MediaEvent::WebRtcFailed { leg, reason } => {
                if let Some(LegKind::Operator { op, .. }) =
                    call.legs.get(&leg).map(|l| l.kind.clone())
                {
                    self.send_operator(
                        &op,
                        ServerMessage::Error {
                            code: crate::signalling::ErrorCode::BadRequest,
                            message: format!("cannot answer the SDP offer: {reason}"),
                            reference: None,
                            call_id: Some(call.id.clone()),
                        },
                    );
                }
                self.leg_media_failed(now, call, leg)
            }
            MediaEvent::WebRtcGone { leg }
            | MediaEvent::MediaTimeout { leg }
            | MediaEvent::PortFailed { leg } => self.leg_media_failed(now, call, leg),
            MediaEvent::Dtmf {
                leg,
                digit,
                relayed,
            } => {
                let across = if leg == call.caller {
                    call.winner
                } else {
                    Some(call.caller)
                };
                let across_is_rtp = across.is_some_and(|a| {
                    matches!(
                        call.legs.get(&a).map(|l| &l.kind),
                        Some(LegKind::Sip { .. })
                    )
                });
                if !(relayed && across_is_rtp) {
                    self.forward_dtmf(now, call, leg, digit);
                }
                false
            }
            MediaEvent::WebRtcConnected { .. } => false,
            MediaEvent::StreamConnected { leg } => {
                if !matches!(
                    call.legs.get(&leg).map(|l| &l.kind),
                    Some(LegKind::Stream { .. })
                ) {
                    return false;
                }
                if call.winner.is_none() {
                    self.win(now, call, leg);
                } else {
                    // Someone else answered first.
                    call.legs.remove(&leg);
                    self.media(call, MediaCommand::Remove { leg });
                }
                false
            }
            MediaEvent::StreamFailed { leg, .. } => {
                if !matches!(
                    call.legs.get(&leg).map(|l| &l.kind),
                    Some(LegKind::Stream { .. })
                ) {
                    return false;
                }
                if Some(leg) == call.winner {
                    // The agent died mid-call: the caller goes on to the next step
                    // instead of sitting in silence.
                    self.hand_on(now, call, leg, None)
                } else {
                    call.legs.remove(&leg);
                    self.media(call, MediaCommand::Remove { leg });
                    call.fail_code.get_or_insert(503);
                    self.after_target_gone(now, call)
                }
            }
            MediaEvent::StreamHangup { leg } => {
                if Some(leg) != call.winner {
                    return false;
                }
                self.end_call(
                    now,
                    call,
                    DialStatus::Completed,
                    EndReason::RemoteHangup,
                    None,
                );
                true
            }
            MediaEvent::StreamTransfer { leg, target } => {
                if Some(leg) != call.winner {
                    return false;
                }
                match target.parse::<Target>() {
                    Ok(t) => self.hand_on(now, call, leg, Some(t)),
                    Err(_) => false, // the agent keeps the call
                }
            }
        }
    }

    /// The answered leg `leg` (an agent) leaves but the caller stays: ringback
    /// again, then `next` (a transfer) or the plan's next step.
    pub(crate) fn hand_on(
        &mut self,
        now: Instant,
        call: &mut Call,
        leg: LegKey,
        next: Option<Target>,
    ) -> bool {
        call.legs.remove(&leg);
        self.media(call, MediaCommand::Remove { leg });
        call.winner = None;
        let caller = call.caller;
        self.media(
            call,
            MediaCommand::Tone {
                leg: caller,
                tone: Some(Tone::Ringback),
            },
        );
        if let Some(t) = next {
            call.plan.steps.insert(
                call.step + 1,
                super::plan::Step {
                    targets: vec![t],
                    timeout: std::time::Duration::from_secs(30),
                },
            );
        }
        call.step += 1;
        call.step_deadline = None;
        self.start_step(now, call)
    }

    /// A leg's media died: the call ends if it was the caller or the winner.
    fn leg_media_failed(&mut self, now: Instant, call: &mut Call, leg: LegKey) -> bool {
        if leg == call.caller || Some(leg) == call.winner {
            let status = if call.winner.is_some() {
                DialStatus::Completed
            } else {
                DialStatus::Failed
            };
            let reason = if call.winner.is_some() {
                EndReason::RemoteHangup
            } else {
                EndReason::Failed
            };
            // The operator whose media died is told `failed`.
            let failed_op = call.legs.get(&leg).and_then(|l| match &l.kind {
                LegKind::Operator { op, .. } => Some(op.clone()),
                _ => None,
            });
            if let Some(op) = failed_op {
                if let Some(LegKind::Operator { state, .. }) = call.legs.get(&leg).map(|l| &l.kind)
                    && *state == OpState::Active
                {
                    self.presence.set_free(&op, &call.id);
                }
                let waiting = waiting_ref(call.legs.get(&leg).map(|l| &l.kind));
                call.legs.remove(&leg);
                call.ended_legs.push((op.clone(), EndReason::Failed));
                self.send_operator(
                    &op,
                    ServerMessage::Ended {
                        call_id: call.id.clone(),
                        reason: EndReason::Failed,
                        code: None,
                        message: Some("media lost".into()),
                        reference: waiting,
                    },
                );
            }
            self.end_call(now, call, status, reason, None);
            return true;
        }
        // A ringing target whose media failed: drop it from the step (a SIP one
        // is hung up; its port goes back when the UA reports it terminated).
        match call.legs.get(&leg).map(|l| l.kind.clone()) {
            Some(LegKind::Sip { .. }) => {
                self.drop_ringing(now, call, leg, EndReason::Failed);
                return self.after_target_gone(now, call);
            }
            Some(LegKind::Operator { .. }) => {}
            _ => return false,
        }
        if let Some(kind @ LegKind::Operator { .. }) = call.legs.remove(&leg).map(|l| l.kind) {
            let waiting = waiting_ref(Some(&kind));
            if let LegKind::Operator { op, .. } = kind {
                self.send_operator(
                    &op,
                    ServerMessage::Ended {
                        call_id: call.id.clone(),
                        reason: EndReason::Failed,
                        code: None,
                        message: None,
                        reference: waiting,
                    },
                );
            }
        }
        self.after_target_gone(now, call)
    }
}

/// The `ref` of the request an operator leg still owes an `answer` to.
fn waiting_ref(kind: Option<&LegKind>) -> Option<String> {
    match kind {
        Some(LegKind::Operator {
            answered: false,
            reference,
            ..
        }) => reference.clone(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_sdp_changes_direction_and_version() {
        let sdp = "v=0\r\no=- 7 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
        let held = with_direction(sdp, SdpDirection::SendOnly, 2).unwrap();
        let sd = SessionDescription::parse(&held).unwrap();
        assert_eq!(sd.origin.session_version, 2);
        let m = &sd.media[0];
        assert!(m.has("sendonly") && !m.has("sendrecv"));
        assert_eq!(caller_status(DialStatus::Busy, None), 486);
        assert_eq!(caller_status(DialStatus::Failed, Some(404)), 404);
        assert_eq!(caller_status(DialStatus::Failed, Some(401)), 480);
        assert_eq!(caller_status(DialStatus::NoAnswer, None), 480);
    }
}
