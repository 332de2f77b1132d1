//! What operators ask through signalling (protocol.md), and what happens when
//! they come, go, or come back.

use media_core::Instant;

use super::call::{Call, Leg, LegKind, OpState};
use super::media::{LegKey, MediaCommand};
use super::plan::{DialPlan, DialStatus, Target};
use super::{Bridge, CallEventKind, Direction};
use crate::presence::SessionId;
use crate::signalling::{
    CallDirection, CallInfo, ClientMessage, EndReason, ErrorCode, OperatorInfo, Rejected,
    ServerMessage, close,
};
use crate::token::SessionClaims;

impl Bridge {
    fn ws_error(
        &mut self,
        session: SessionId,
        code: ErrorCode,
        message: &str,
        reference: Option<String>,
        call_id: Option<String>,
    ) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.send(ServerMessage::Error {
                code,
                message: message.into(),
                reference,
                call_id,
            });
        }
        self.flush_session(session);
    }

    fn ws_send(&mut self, session: SessionId, msg: ServerMessage) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.send(msg);
        }
        self.flush_session(session);
    }

    pub(crate) fn on_hello(&mut self, _now: Instant, session: SessionId, claims: &SessionClaims) {
        let connected =
            match self
                .presence
                .connect(session, &claims.sub, &claims.name, &claims.nums)
            {
                Ok(c) => c,
                Err(_) => {
                    self.ws_error(
                        session,
                        ErrorCode::Internal,
                        "too many operators",
                        None,
                        None,
                    );
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.close(close::NORMAL, "capacity");
                    }
                    self.flush_session(session);
                    return;
                }
            };
        if let Some(old) = connected.replaced
            && let Some(s) = self.sessions.get_mut(&old)
        {
            s.close(close::REPLACED, "replaced by a newer connection");
            self.flush_session(old);
        }
        let mut calls = Vec::new();
        if let Some(cid) = &connected.active_call
            && let Some(call) = self.calls.get(cid)
            && let Some(info) = call_info(call, &claims.sub)
        {
            calls.push(info);
        }
        let numbers = self.numbers_for(&claims.nums);
        let cfg = self.cfg.session;
        self.ws_send(
            session,
            ServerMessage::Ready {
                session_id: format!("s-{session}"),
                operator: OperatorInfo {
                    reference: claims.sub.clone(),
                    display_name: claims.name.clone(),
                },
                numbers,
                heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
                missed_heartbeats: cfg.missed_heartbeats,
                calls,
            },
        );
        // Calls still ringing this operator are offered again.
        let ringing: Vec<ServerMessage> = self
            .calls
            .values()
            .filter(|c| c.legs.values().any(|l| matches!(&l.kind, LegKind::Operator { op, state: OpState::Ringing, .. } if *op == claims.sub)))
            .map(|c| self.incoming_message(c))
            .collect();
        for m in ringing {
            self.ws_send(session, m);
        }
    }

    pub(crate) fn on_operator_message(
        &mut self,
        now: Instant,
        session: SessionId,
        reference: Option<String>,
        message: ClientMessage,
    ) {
        let Some(op) = self.presence.operator_of(session).map(String::from) else {
            // Replaced or gone: nothing it says counts any more.
            return self.ws_error(
                session,
                ErrorCode::Unauthorized,
                "this connection no longer represents the operator",
                reference,
                None,
            );
        };
        match message {
            ClientMessage::Online { numbers } => {
                let mut ids = Vec::new();
                let mut rejected = Vec::new();
                for n in numbers {
                    match self.cfg.number(&n) {
                        Some(cfg) => ids.push(cfg.id.clone()),
                        None => rejected.push(Rejected {
                            id: n,
                            code: ErrorCode::BadRequest,
                        }),
                    }
                }
                let (accepted, refused) = self
                    .presence
                    .set_available(session, &ids)
                    .unwrap_or_default();
                rejected.extend(refused.into_iter().map(|id| Rejected {
                    id,
                    code: ErrorCode::ForbiddenNumber,
                }));
                self.ws_send(
                    session,
                    ServerMessage::Availability {
                        accepted,
                        rejected,
                        reference,
                    },
                );
            }
            ClientMessage::Offline => {
                let _ = self.presence.clear_available(session);
                self.end_ringing_for(now, &op, EndReason::Offline);
                self.ws_send(
                    session,
                    ServerMessage::Availability {
                        accepted: vec![],
                        rejected: vec![],
                        reference,
                    },
                );
            }
            ClientMessage::Dial { to, caller_id, sdp } => {
                self.dial(now, session, &op, reference, &to, &caller_id, sdp)
            }
            ClientMessage::Accept { call_id, sdp } => self.with_call(
                now,
                session,
                &op,
                reference,
                &call_id,
                |b, now, call, key, reference| {
                    let Some(LegKind::Operator { state, .. }) =
                        call.legs.get(&key).map(|l| &l.kind)
                    else {
                        return false;
                    };
                    if *state != OpState::Ringing {
                        b.ws_error(
                            session,
                            ErrorCode::BadRequest,
                            "the call is not ringing",
                            reference,
                            Some(call.id.clone()),
                        );
                        return false;
                    }
                    if b.presence.active_call(&call_op(call, key)).is_some() {
                        b.ws_error(
                            session,
                            ErrorCode::Busy,
                            "you already have a call",
                            reference,
                            Some(call.id.clone()),
                        );
                        return false;
                    }
                    if let Some(LegKind::Operator { reference: r, .. }) =
                        call.legs.get_mut(&key).map(|l| &mut l.kind)
                    {
                        *r = reference;
                    }
                    b.media(
                        call,
                        MediaCommand::AddWebRtc {
                            leg: key,
                            offer: sdp.clone(),
                        },
                    );
                    b.win(now, call, key);
                    false
                },
            ),
            ClientMessage::Reject { call_id } => self.with_call(
                now,
                session,
                &op,
                reference,
                &call_id,
                |b, now, call, key, reference| {
                    if !matches!(
                        call.legs.get(&key).map(|l| &l.kind),
                        Some(LegKind::Operator {
                            state: OpState::Ringing,
                            ..
                        })
                    ) {
                        b.ws_error(
                            session,
                            ErrorCode::BadRequest,
                            "the call is not ringing",
                            reference,
                            Some(call.id.clone()),
                        );
                        return false;
                    }
                    b.drop_ringing(now, call, key, EndReason::Rejected);
                    b.after_target_gone(now, call)
                },
            ),
            ClientMessage::Hangup { call_id } => self.with_call(
                now,
                session,
                &op,
                reference,
                &call_id,
                |b, now, call, key, _| match call.legs.get(&key).map(|l| &l.kind) {
                    Some(LegKind::Operator {
                        state: OpState::Ringing,
                        ..
                    }) => {
                        b.drop_ringing(now, call, key, EndReason::Rejected);
                        b.after_target_gone(now, call)
                    }
                    _ => {
                        let status = if call.winner.is_some() {
                            DialStatus::Completed
                        } else {
                            DialStatus::Canceled
                        };
                        b.end_call_by(now, call, status, EndReason::RemoteHangup, None, Some(key));
                        true
                    }
                },
            ),
            ClientMessage::Mute { call_id, on } => self.with_active(
                now,
                session,
                &op,
                reference,
                &call_id,
                |b, _now, call, key, reference| {
                    if let Some(LegKind::Operator { muted, .. }) =
                        call.legs.get_mut(&key).map(|l| &mut l.kind)
                    {
                        *muted = on;
                    }
                    b.media(call, MediaCommand::Mute { leg: key, on });
                    b.updated_with_ref(call, key, reference);
                    false
                },
            ),
            ClientMessage::Hold { call_id, on } => self.with_active(
                now,
                session,
                &op,
                reference,
                &call_id,
                |b, now, call, key, reference| {
                    if call.winner.is_none() {
                        b.ws_error(
                            session,
                            ErrorCode::BadRequest,
                            "hold needs a connected call",
                            reference,
                            Some(call.id.clone()),
                        );
                        return false;
                    }
                    if let Some(LegKind::Operator { held, .. }) =
                        call.legs.get_mut(&key).map(|l| &mut l.kind)
                    {
                        *held = on;
                    }
                    b.media(call, MediaCommand::Hold { leg: key, on });
                    b.media(
                        call,
                        MediaCommand::Mute {
                            leg: key,
                            on: on || op_muted(call, key),
                        },
                    );
                    let across = if key == call.caller {
                        call.winner
                    } else {
                        Some(call.caller)
                    };
                    if let Some(a) = across {
                        if matches!(
                            call.legs.get(&a).map(|l| &l.kind),
                            Some(LegKind::Sip { .. })
                        ) {
                            b.hold_sip(now, call, a, on);
                        }
                        b.notify_update(call, key);
                    }
                    b.updated_with_ref(call, key, reference);
                    false
                },
            ),
            ClientMessage::Dtmf { call_id, digits } => self.with_active(
                now,
                session,
                &op,
                reference,
                &call_id,
                |b, now, call, key, reference| {
                    let across = if key == call.caller {
                        call.winner
                    } else {
                        Some(call.caller)
                    };
                    match across {
                        Some(a) => b.send_dtmf_to(now, call, a, &digits),
                        None => b.ws_error(
                            session,
                            ErrorCode::BadRequest,
                            "no one to send DTMF to yet",
                            reference,
                            Some(call.id.clone()),
                        ),
                    }
                    false
                },
            ),
            ClientMessage::Reoffer { call_id, sdp } => self.with_active(
                now,
                session,
                &op,
                reference,
                &call_id,
                |b, _now, call, key, reference| {
                    if let Some(LegKind::Operator { reference: r, .. }) =
                        call.legs.get_mut(&key).map(|l| &mut l.kind)
                    {
                        *r = reference;
                    }
                    b.media(
                        call,
                        MediaCommand::AddWebRtc {
                            leg: key,
                            offer: sdp.clone(),
                        },
                    );
                    false
                },
            ),
            ClientMessage::Hello { .. } | ClientMessage::Ping => {}
        }
    }

    fn updated_with_ref(&mut self, call: &Call, key: LegKey, reference: Option<String>) {
        if let Some(LegKind::Operator {
            op, muted, held, ..
        }) = call.legs.get(&key).map(|l| l.kind.clone())
        {
            let across = if key == call.caller {
                call.winner
            } else {
                Some(call.caller)
            };
            let remote_held = across.is_some_and(|a| match call.legs.get(&a).map(|l| &l.kind) {
                Some(LegKind::Sip { remote_held, .. }) => *remote_held,
                Some(LegKind::Operator { held, .. }) => *held,
                _ => false,
            });
            self.send_operator(
                &op,
                ServerMessage::CallUpdated {
                    call_id: call.id.clone(),
                    muted,
                    held,
                    remote_held,
                    reference,
                },
            );
        }
    }

    /// Runs `f` on the call `call_id` and the operator's leg in it, if both exist.
    fn with_call(
        &mut self,
        now: Instant,
        session: SessionId,
        op: &str,
        reference: Option<String>,
        call_id: &str,
        f: impl FnOnce(&mut Bridge, Instant, &mut Call, LegKey, Option<String>) -> bool,
    ) {
        let Some(mut call) = self.calls.remove(call_id) else {
            return self.ws_error(
                session,
                ErrorCode::BadRequest,
                "unknown callId (the call may have ended)",
                reference,
                Some(call_id.into()),
            );
        };
        let Some(key) = call.operator_leg(op) else {
            self.calls.insert(call.id.clone(), call);
            return self.ws_error(
                session,
                ErrorCode::BadRequest,
                "unknown callId (the call may have ended)",
                reference,
                Some(call_id.into()),
            );
        };
        let done = f(self, now, &mut call, key, reference);
        self.put_back(call, done);
    }

    /// Like `with_call`, for the operator's active (accepted or dialled) leg.
    fn with_active(
        &mut self,
        now: Instant,
        session: SessionId,
        op: &str,
        reference: Option<String>,
        call_id: &str,
        f: impl FnOnce(&mut Bridge, Instant, &mut Call, LegKey, Option<String>) -> bool,
    ) {
        self.with_call(
            now,
            session,
            op,
            reference,
            call_id,
            |b, now, call, key, reference| {
                if !matches!(
                    call.legs.get(&key).map(|l| &l.kind),
                    Some(LegKind::Operator {
                        state: OpState::Active,
                        ..
                    })
                ) {
                    b.ws_error(
                        session,
                        ErrorCode::BadRequest,
                        "the call is not active",
                        reference,
                        Some(call.id.clone()),
                    );
                    return false;
                }
                f(b, now, call, key, reference)
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn dial(
        &mut self,
        now: Instant,
        session: SessionId,
        op: &str,
        reference: Option<String>,
        to: &str,
        caller_id: &str,
        sdp: String,
    ) {
        if self.presence.active_call(op).is_some() {
            return self.ws_error(
                session,
                ErrorCode::Busy,
                "you already have a call",
                reference,
                None,
            );
        }
        let Some(number) = self.cfg.number(caller_id).cloned() else {
            return self.ws_error(
                session,
                ErrorCode::ForbiddenNumber,
                "callerId is not a number of this service",
                reference,
                None,
            );
        };
        if !self.presence.allows(op, &number.id) {
            return self.ws_error(
                session,
                ErrorCode::ForbiddenNumber,
                "your token does not allow this callerId",
                reference,
                None,
            );
        }
        // One of our own numbers: its dial plan (the operators on it, the echo
        // test...), without going out to a trunk and back.
        let internal = self
            .cfg
            .number(to)
            .map(|n| n.plan.clone())
            .filter(|p| !p.steps.is_empty());
        let target: Target = if to.starts_with('+') {
            Target::Pstn {
                number: to.to_string(),
                trunk: None,
            }
        } else {
            match to.parse::<Target>() {
                Ok(
                    t @ (Target::Sip(_)
                    | Target::Operator(_)
                    | Target::Pstn { .. }
                    | Target::Echo
                    | Target::Tone(_)),
                ) => t,
                _ if internal.is_some() => Target::Echo, // unused: the number's plan applies
                _ => {
                    return self.ws_error(
                        session,
                        ErrorCode::BadRequest,
                        "`to` must be +E164, sip:URI, operator:REF or one of our numbers",
                        reference,
                        None,
                    );
                }
            }
        };
        if matches!(&target, Target::Operator(r) if r == op) {
            return self.ws_error(
                session,
                ErrorCode::BadRequest,
                "you cannot call yourself",
                reference,
                None,
            );
        }
        if self.admission(super::Origin::Operator).is_err() {
            self.stats.calls_rejected_capacity += 1;
            return self.ws_error(
                session,
                ErrorCode::Internal,
                "the service is at capacity; try again shortly",
                reference,
                None,
            );
        }
        let plan = internal
            .unwrap_or_else(|| DialPlan::single(vec![target], self.cfg.outbound_ring_timeout));
        let mut call = self.new_call(
            now,
            Direction::Outbound,
            Some(number.id.clone()),
            number.e164.clone(),
            to.to_string(),
            plan,
        );
        self.stats.calls_outbound += 1;
        let key = call.leg_key();
        call.caller = key;
        call.legs.insert(
            key,
            Leg {
                kind: LegKind::Operator {
                    op: op.to_string(),
                    state: OpState::Active,
                    reference,
                    muted: false,
                    held: false,
                    answered: false,
                },
                target: None,
                step: 0,
            },
        );
        let _ = self.presence.set_busy(op, &call.id);
        self.media(
            &call,
            MediaCommand::AddWebRtc {
                leg: key,
                offer: sdp,
            },
        );
        self.event(now, &call, CallEventKind::Initiated, None, None);
        let facts = super::RouteFacts {
            call_id: call.id.clone(),
            direction: Direction::Outbound,
            from: call.from.clone(),
            to: call.to.clone(),
            number: call.number.clone(),
            trunk: None,
            operator: Some(op.to_string()),
            headers: Vec::new(),
            default_plan: call.plan.clone(),
        };
        let done = self.route_or_start(now, &mut call, facts);
        self.put_back(call, done);
    }

    /// Ends, for `op`, every call still ringing them.
    fn end_ringing_for(&mut self, now: Instant, op: &str, reason: EndReason) {
        let ids: Vec<String> = self
            .calls
            .values()
            .filter(|c| c.legs.values().any(|l| matches!(&l.kind, LegKind::Operator { op: o, state: OpState::Ringing, .. } if o == op)))
            .map(|c| c.id.clone())
            .collect();
        for id in ids {
            let Some(mut call) = self.calls.remove(&id) else {
                continue;
            };
            let done = match call.operator_leg(op) {
                Some(key) => {
                    self.drop_ringing(now, &mut call, key, reason);
                    self.after_target_gone(now, &mut call)
                }
                None => false,
            };
            self.put_back(call, done);
        }
    }

    /// An operator is offline for good (grace period over, or left).
    pub(crate) fn operator_gone(&mut self, now: Instant, op: &str, active_call: Option<String>) {
        self.end_ringing_for(now, op, EndReason::Offline);
        if let Some(id) = active_call
            && let Some(mut call) = self.calls.remove(&id)
        {
            let Some(key) = call.operator_leg(op) else {
                self.calls.insert(id, call);
                return;
            };
            if let Some(LegKind::Operator { state, .. }) =
                call.legs.get_mut(&key).map(|l| &mut l.kind)
            {
                *state = OpState::Ringing; // no presence mark to clear: it is gone
            }
            call.legs.remove(&key);
            call.ended_legs.push((op.to_string(), EndReason::Offline));
            let status = if call.winner.is_some() {
                DialStatus::Completed
            } else {
                DialStatus::Canceled
            };
            self.end_call(now, &mut call, status, EndReason::RemoteHangup, None);
        }
    }
}

fn call_op(call: &Call, key: LegKey) -> String {
    match call.legs.get(&key).map(|l| &l.kind) {
        Some(LegKind::Operator { op, .. }) => op.clone(),
        _ => String::new(),
    }
}

fn op_muted(call: &Call, key: LegKey) -> bool {
    matches!(
        call.legs.get(&key).map(|l| &l.kind),
        Some(LegKind::Operator { muted: true, .. })
    )
}

/// The call as `op` sees it, for `ready.calls`.
fn call_info(call: &Call, op: &str) -> Option<CallInfo> {
    let key = call.operator_leg(op)?;
    let LegKind::Operator {
        muted, held, state, ..
    } = &call.legs.get(&key)?.kind
    else {
        return None;
    };
    if *state != OpState::Active {
        return None;
    }
    let across = if key == call.caller {
        call.winner
    } else {
        Some(call.caller)
    };
    let remote_held = across.is_some_and(|a| match call.legs.get(&a).map(|l| &l.kind) {
        Some(LegKind::Sip { remote_held, .. }) => *remote_held,
        Some(LegKind::Operator { held, .. }) => *held,
        _ => false,
    });
    Some(CallInfo {
        call_id: call.id.clone(),
        direction: if key == call.caller {
            CallDirection::Outbound
        } else {
            CallDirection::Inbound
        },
        from: call.from.clone(),
        to: call.to.clone(),
        number: call.number.clone().unwrap_or_default(),
        state: if call.winner.is_some() {
            "connected"
        } else {
            "ringing"
        },
        muted: *muted,
        held: *held,
        remote_held,
    })
}
