//! What the call's media session reports: a browser's SDP answer, legs whose
//! media failed, DTMF to pass on, and the AI agent's life (connected, failed,
//! hung up, transferring the caller).

use media_core::Instant;

use super::party::{Leg, Origin};
use super::state::CallState;
use super::{Call, CallCtx};
use crate::contract::{LegKey, MediaCommand, MediaEvent};
use crate::plan::{DialStatus, Target};
use crate::signalling::{EndReason, ErrorCode, ServerMessage};

impl Call {
    /// An event from the call's media session.
    pub fn handle_media(&mut self, now: Instant, ctx: &mut CallCtx<'_>, ev: MediaEvent) {
        if self.is_ended() {
            return;
        }
        match ev {
            MediaEvent::WebRtcAnswer { leg, sdp } => self.webrtc_answer(now, ctx, leg, sdp),
            MediaEvent::WebRtcFailed { leg, reason } => {
                if let Some(op) = self
                    .parties
                    .get(&leg)
                    .and_then(|p| p.op())
                    .map(String::from)
                {
                    self.error_to(
                        &op,
                        ErrorCode::BadRequest,
                        &format!("cannot answer the SDP offer: {reason}"),
                        None,
                    );
                }
                self.leg_media_failed(now, ctx, leg);
            }
            MediaEvent::WebRtcGone { leg } => {
                // A browser in the call may be reloading: it keeps its place for
                // the reconnect grace period, as its signalling does.
                match self.parties.get_mut(&leg) {
                    Some(p) if p.joined() && p.operator().is_some() => {
                        p.media_lost.get_or_insert(now + ctx.cfg.grace);
                    }
                    _ => self.leg_media_failed(now, ctx, leg),
                }
            }
            MediaEvent::WebRtcConnected { leg } => {
                if let Some(p) = self.parties.get_mut(&leg) {
                    p.media_lost = None;
                }
            }
            MediaEvent::MediaTimeout { leg } | MediaEvent::PortFailed { leg } => {
                self.leg_media_failed(now, ctx, leg)
            }
            MediaEvent::Quality { leg, quality } => {
                // The latest report, with the worst jitter seen, for the CDR.
                if let Some(r) = self.history.iter_mut().find(|r| r.id == leg) {
                    let worst = r.rtcp.map_or(0, |q| q.jitter_ms).max(quality.jitter_ms);
                    r.rtcp = Some(crate::contract::RtcpQuality {
                        jitter_ms: worst,
                        ..quality
                    });
                }
            }
            MediaEvent::Dtmf {
                leg,
                digit,
                relayed,
            } => self.forward_dtmf(ctx, leg, digit, relayed),
            MediaEvent::StreamConnected { leg } => self.agent_connected(now, ctx, leg),
            MediaEvent::ForkMessage { id, text } => self.fork_message(now, ctx, id, &text),
            MediaEvent::ForkFailed { id, reason } => self.fork_failed(now, id, reason),
            MediaEvent::StreamFailed { leg, .. } => self.agent_failed(now, ctx, leg),
            MediaEvent::StreamHangup { leg } => {
                if self.parties.get(&leg).is_some_and(|p| p.joined()) {
                    self.leave(now, ctx, leg, EndReason::Hangup, true);
                }
            }
            MediaEvent::StreamTransfer {
                leg,
                target,
                warm: true,
            } => self.agent_warm_transfer(now, ctx, leg, &target),
            MediaEvent::StreamTransfer { leg, target, .. } => {
                // Only an agent hands the caller on (a stray event about another
                // leg must not drop it without its SIP leg or port).
                if self
                    .parties
                    .get(&leg)
                    .is_some_and(|p| p.joined() && matches!(p.leg, Leg::Agent))
                    && self.alone_with(leg)
                    && let Ok(t) = target.parse::<Target>()
                {
                    self.hand_on(now, ctx, leg, Some(t));
                }
                // A bad target, or others in the call: the agent keeps it.
            }
        }
        self.settle(now, ctx);
    }

    /// Whether `leg` is the caller's only counterpart.
    fn alone_with(&self, leg: LegKey) -> bool {
        self.parties
            .iter()
            .filter(|(k, p)| **k != leg && **k != self.caller && p.joined())
            .count()
            == 0
    }

    fn webrtc_answer(&mut self, now: Instant, ctx: &mut CallCtx<'_>, leg: LegKey, sdp: String) {
        let Some(o) = self.parties.get_mut(&leg).and_then(|p| p.operator_mut()) else {
            return;
        };
        o.answered = true;
        let reference = o.reference.take();
        let op = o.op.clone();
        self.send_operator(
            &op,
            ServerMessage::Answer {
                call_id: self.id.to_string(),
                sdp,
                reference,
            },
        );
        let dialing = matches!(
            self.state,
            CallState::Dialing(_) | CallState::Routing { .. }
        );
        if leg == self.caller
            && dialing
            && let Some(early_media) = self.ringing_deferred.take()
        {
            self.send_operator(
                &op,
                ServerMessage::Ringing {
                    call_id: self.id.to_string(),
                    early_media,
                },
            );
        }
        if self.is_connected() && self.parties.get(&leg).is_some_and(|p| p.joined()) {
            self.connected_to(now, ctx, leg, &op);
        }
    }

    /// A DTMF digit from party `from` goes to the others (an RTP relay passed it
    /// on already to the SIP party it feeds).
    pub(crate) fn forward_dtmf(
        &mut self,
        ctx: &CallCtx<'_>,
        from: LegKey,
        digit: char,
        relayed: bool,
    ) {
        if !self.parties.get(&from).is_some_and(|p| p.joined()) || !self.is_connected() {
            return;
        }
        self.record_note("dtmf", Some(from), Some(digit.to_string()));
        for t in self.dtmf_targets(from, relayed) {
            self.send_dtmf_to(ctx, t, &digit.to_string());
        }
    }

    fn agent_connected(&mut self, now: Instant, ctx: &mut CallCtx<'_>, leg: LegKey) {
        let Some(p) = self.parties.get(&leg) else {
            return;
        };
        if !matches!(p.leg, Leg::Agent) || !p.ringing() {
            return;
        }
        let live = match &p.origin {
            Origin::Plan(_) => matches!(self.state, CallState::Dialing(_)),
            Origin::Added { .. } => true,
            _ => false,
        };
        if live {
            self.answered(now, ctx, leg);
        } else {
            // Someone else answered first.
            if let Some(p) = self.parties.remove(&leg) {
                self.record_left(now, leg, &p, "taken_by_other");
            }
            self.media(MediaCommand::Remove { leg });
        }
    }

    fn agent_failed(&mut self, now: Instant, ctx: &mut CallCtx<'_>, leg: LegKey) {
        let Some(p) = self.parties.get(&leg) else {
            return;
        };
        if !matches!(p.leg, Leg::Agent) {
            return;
        }
        if p.joined() {
            if self.alone_with(leg) {
                // The agent died mid-call: the caller goes on to the next step
                // instead of sitting in silence.
                self.hand_on(now, ctx, leg, None);
            } else {
                self.leave(now, ctx, leg, EndReason::Failed, true);
            }
            return;
        }
        if matches!(p.origin, Origin::Added { .. }) {
            return self.add_failed(now, ctx, leg, "failed", Some(503));
        }
        if let Some(p) = self.parties.remove(&leg) {
            self.record_left(now, leg, &p, "failed");
        }
        self.media(MediaCommand::Remove { leg });
        if let CallState::Dialing(d) = &mut self.state {
            d.fail_code.get_or_insert(503);
        }
        self.after_target_gone(now, ctx);
    }

    /// A leg's media died: the caller of an unanswered call ends it; a party in
    /// the call leaves it (its operator is told `failed`); a ringing target drops
    /// out of its step.
    pub(crate) fn leg_media_failed(&mut self, now: Instant, ctx: &mut CallCtx<'_>, leg: LegKey) {
        let Some(p) = self.parties.get(&leg) else {
            return;
        };
        if leg == self.caller && !self.is_connected() {
            if let Some(op) = p.op().map(String::from) {
                let waiting = p.operator().and_then(|o| o.waiting_ref());
                if let Some(p) = self.parties.remove(&leg) {
                    self.record_left(now, leg, &p, "failed");
                }
                self.send_operator(
                    &op,
                    ServerMessage::Ended {
                        call_id: self.id.to_string(),
                        reason: EndReason::Failed,
                        code: None,
                        message: Some("media lost".into()),
                        reference: waiting,
                    },
                );
                self.push(super::CallOutput::Free { op });
            }
            return self.end_call(now, ctx, DialStatus::Failed, EndReason::Failed, None);
        }
        if p.joined() {
            return self.leave(now, ctx, leg, EndReason::Failed, true);
        }
        match (&p.leg, &p.origin) {
            (_, Origin::Added { .. }) => self.add_failed(now, ctx, leg, "failed", None),
            (Leg::Sip(_) | Leg::Operator(_), _) => {
                self.drop_ringing(now, ctx, leg, EndReason::Failed);
                self.after_target_gone(now, ctx);
            }
            _ => {}
        }
    }
}
