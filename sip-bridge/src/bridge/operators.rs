//! Operators at the session level: `hello`, `online`/`offline`, a `dial` that
//! starts a call, `monitor` and `listCalls` for supervisors, presence news; and
//! every request about a call, routed to that call.

use media_core::Instant;

use super::{Bridge, CallEventKind, CallId};
use crate::call::{Call, CallView, MonitorMode};
use crate::plan::{DialPlan, Target};
use crate::presence::SessionId;
use crate::signalling::{
    ClientMessage, EndReason, ErrorCode, OperatorInfo, Rejected, ServerMessage, close,
};
use crate::token::SessionClaims;

/// The token capability that lets an operator monitor others' calls.
pub const MONITOR: &str = "monitor";

impl Bridge {
    fn ws_error(
        &mut self,
        session: SessionId,
        code: ErrorCode,
        message: &str,
        reference: Option<String>,
        call_id: Option<String>,
    ) {
        self.ws_send(
            session,
            ServerMessage::Error {
                code,
                message: message.into(),
                reference,
                call_id,
            },
        );
    }

    fn ws_send(&mut self, session: SessionId, msg: ServerMessage) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.send(msg);
        }
        self.flush_session(session);
    }

    pub(super) fn on_hello(&mut self, now: Instant, session: SessionId, claims: &SessionClaims) {
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
        if let Some(id) = connected.active_call
            && let Some(info) = self
                .calls
                .get(&id)
                .and_then(|c| c.info_for(now, self.view(), &claims.sub))
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
            .filter(|c| c.rings(&claims.sub))
            .map(|c| c.incoming_for(&claims.sub))
            .collect();
        for m in ringing {
            self.ws_send(session, m);
        }
    }

    pub(super) fn on_operator_message(
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
                for id in self.calls_with(&op) {
                    self.drive(now, id, |c, ctx| {
                        c.handle_operator_offline(now, ctx, &op, EndReason::Offline)
                    });
                }
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
            ClientMessage::Monitor {
                call_id,
                mode,
                sdp,
                participant_id,
            } => self.monitor(
                now,
                session,
                &op,
                reference,
                &call_id,
                &mode,
                sdp,
                participant_id.as_deref(),
            ),
            ClientMessage::ListCalls => self.list_calls(now, session, &op, reference),
            ClientMessage::Quality { call_id, summary } => {
                self.quality(now, session, &op, reference, &call_id, summary)
            }
            ClientMessage::Hello { .. } | ClientMessage::Ping => {}
            msg => {
                let Some(call_id) = msg.call_id().map(String::from) else {
                    return;
                };
                let id = call_id.parse::<CallId>().ok().filter(|id| {
                    self.calls
                        .get(id)
                        .is_some_and(|c| c.party_of(&op).is_some())
                });
                let Some(id) = id else {
                    return self.ws_error(
                        session,
                        ErrorCode::BadRequest,
                        "unknown callId (the call may have ended)",
                        reference,
                        Some(call_id),
                    );
                };
                self.drive(now, id, |c, ctx| {
                    c.handle_operator(now, ctx, &op, reference, msg)
                });
            }
        }
    }

    /// An operator's quality summary of a call it is or was in: a `quality`
    /// event (webhooks, CDR log).
    fn quality(
        &mut self,
        now: Instant,
        session: SessionId,
        op: &str,
        reference: Option<String>,
        call_id: &str,
        summary: serde_json::Value,
    ) {
        let id = call_id.parse::<CallId>().ok();
        let live = id
            .and_then(|id| self.calls.get(&id))
            .filter(|c| c.party_of(op).is_some() || c.operators().iter().any(|o| o == op))
            .map(|c| c.report(now, CallEventKind::Quality));
        let ended = || {
            self.ended
                .iter()
                .rev()
                .find(|(e, ops)| Some(e.call_id) == id && ops.iter().any(|o| o == op))
                .map(|(e, _)| {
                    let mut e = e.clone();
                    e.unix_ms = e.unix_ms_of(now);
                    e.at = now;
                    e
                })
        };
        let Some(mut ev) = live.or_else(ended) else {
            return self.ws_error(
                session,
                ErrorCode::BadRequest,
                "unknown callId for a quality report",
                reference,
                Some(call_id.into()),
            );
        };
        ev.quality = Some(crate::call::QualityReport {
            operator: op.to_string(),
            summary: summary.to_string(),
        });
        self.events.push_back(ev);
    }

    /// Calls in which operator `op` has a party.
    fn calls_with(&self, op: &str) -> Vec<CallId> {
        self.calls
            .iter()
            .filter(|(_, c)| c.party_of(op).is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// An operator is offline for good (grace period over, or left): what
    /// rings it ends, and it leaves its call.
    pub(super) fn operator_gone(&mut self, now: Instant, op: &str) {
        for id in self.calls_with(op) {
            self.drive(now, id, |c, ctx| c.handle_operator_gone(now, ctx, op));
        }
    }

    /// Whether the session's token carries the right to monitor calls.
    fn may_monitor(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .and_then(|s| s.claims())
            .is_some_and(|c| c.caps.iter().any(|x| x == MONITOR))
    }

    /// What calls read to describe themselves.
    pub(super) fn view(&self) -> CallView<'_> {
        CallView {
            cfg: &self.cfg,
            presence: &self.presence,
            unix_base: self.unix_base,
        }
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
        let id = CallId(self.next_call);
        self.next_call += 1;
        self.stats.calls_outbound += 1;
        let call = {
            let (_, mut ctx) = self.split();
            Call::outbound(now, &mut ctx, id, op, reference, &number, to, plan, sdp)
        };
        self.calls.insert(id, call);
        self.apply(now, id);
    }

    #[allow(clippy::too_many_arguments)]
    fn monitor(
        &mut self,
        now: Instant,
        session: SessionId,
        op: &str,
        reference: Option<String>,
        call_id: &str,
        mode: &str,
        sdp: String,
        coached: Option<&str>,
    ) {
        if !self.may_monitor(session) {
            return self.ws_error(
                session,
                ErrorCode::Forbidden,
                "your token does not allow monitoring calls",
                reference,
                Some(call_id.into()),
            );
        }
        let Some(mode) = MonitorMode::parse(mode) else {
            return self.ws_error(
                session,
                ErrorCode::BadRequest,
                "`mode` must be listen, whisper or barge",
                reference,
                Some(call_id.into()),
            );
        };
        let Some(id) = call_id
            .parse::<CallId>()
            .ok()
            .filter(|id| self.calls.contains_key(id))
        else {
            return self.ws_error(
                session,
                ErrorCode::BadRequest,
                "unknown callId (the call may have ended)",
                reference,
                Some(call_id.into()),
            );
        };
        let allowed = self.calls[&id]
            .number()
            .is_some_and(|n| self.presence.allows(op, n));
        if !allowed {
            return self.ws_error(
                session,
                ErrorCode::ForbiddenNumber,
                "your token does not allow this call's number",
                reference,
                Some(call_id.into()),
            );
        }
        if self.presence.active_call(op).is_some() {
            return self.ws_error(
                session,
                ErrorCode::Busy,
                "you already have a call",
                reference,
                Some(call_id.into()),
            );
        }
        self.drive(now, id, |c, ctx| {
            c.handle_monitor(now, ctx, op, reference, mode, sdp, coached)
        });
    }

    fn list_calls(
        &mut self,
        now: Instant,
        session: SessionId,
        op: &str,
        reference: Option<String>,
    ) {
        if !self.may_monitor(session) {
            return self.ws_error(
                session,
                ErrorCode::Forbidden,
                "your token does not allow monitoring calls",
                reference,
                None,
            );
        }
        let calls = self
            .calls
            .values()
            .filter(|c| c.number().is_some_and(|n| self.presence.allows(op, n)))
            .map(|c| c.summary(now, self.view()))
            .collect();
        self.ws_send(session, ServerMessage::Calls { calls, reference });
    }
}
