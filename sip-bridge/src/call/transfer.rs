//! Transfer, on top of adding a party: the asker (the transferor) hands the
//! others in the call (the transferees, usually the customer) to a target.
//!
//! * **Blind**: the transferor is parked (held: it hears nothing, nobody hears
//!   it) while the target rings and the transferees hear ringback. The
//!   target's answer completes it: the transferor leaves (`transferred`). A
//!   target that is busy, does not answer or fails brings the transferor back
//!   (recall) instead of dropping the call.
//! * **Attended**: the transferees go on hold; the transferor and the target
//!   talk alone once it answers (`consulting`). Then `complete` (transferees
//!   and target, the transferor leaves), `cancel` (the target goes, the
//!   transferees come back) or `merge` (everyone together).
//!
//! The edges, each defined: a target that fails or hangs up before completion
//! ends the transfer with the transferees back; transferees that all hang up
//! end it (a ringing target stops, a talking one stays with the transferor);
//! a transferor that hangs up completes it (a ringing target answers to the
//! transferees; if it fails nobody is left to recall and the call ends). One
//! transfer at a time per call.

use std::time::Duration;

use media_core::Instant;

use super::control::TransferStep;
use super::output::SipAction;
use super::party::Origin;
use super::{Call, CallCtx};
use crate::contract::{LegKey, MediaCommand};
use crate::plan::Target;
use crate::signalling::{EndReason, ErrorCode, ServerMessage};

/// How long a transfer target rings unless the request says.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an AI agent may brief the target of its warm transfer before the
/// transfer completes without it (it should hang up once it has spoken).
pub(crate) const AGENT_BRIEFING: Duration = Duration::from_secs(60);

/// Blind or attended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Blind,
    Attended,
}

/// A transfer in progress.
#[derive(Clone, Debug)]
pub(crate) struct Transfer {
    kind: Kind,
    /// The transferor, while it is in the call.
    by: Option<LegKey>,
    /// Its operator (who hears how the transfer goes).
    op: Option<String>,
    /// A SIP transferor's REFER subscription: NOTIFYs tell it (RFC 3515).
    notify: Option<LegKey>,
    /// Who asked (`operator:alice`, a SIP party's number), and how (`sdk`,
    /// `refer`), for events.
    by_who: String,
    via: &'static str,
    /// The add group whose answer is the target.
    group: u32,
    /// The target as asked, and its party once it answered.
    target_text: String,
    answered: Option<LegKey>,
    /// The parties this transfer put on hold (released when it ends).
    held: Vec<LegKey>,
    reference: Option<String>,
    /// Handed to the transferee's trunk with a REFER, until its NOTIFYs say
    /// how it went.
    refer: Option<ReferOut>,
    /// An AI agent's warm transfer completes by then (its briefing's end).
    briefing_until: Option<Instant>,
    /// The transferor hanging up cancels it (else completes it).
    cancel_on_hangup: bool,
    /// Rung if the target fails (blind), before the recall.
    fallback: Option<(String, Target)>,
    /// How long a target rings.
    ring: Duration,
    /// A REFER's target waits for the external router until then (the
    /// target as asked is the default).
    routing: Option<(Instant, Target)>,
}

/// A blind transfer done by the transferee's trunk (`transfer = "refer"`).
#[derive(Clone, Debug)]
pub(crate) struct ReferOut {
    /// The transferee, whom the REFER went to.
    leg: LegKey,
    /// No final NOTIFY by then: we bridge instead.
    deadline: Instant,
    /// A NOTIFY of failure: bridge instead (else the transfer failed).
    bridge_on_failure: bool,
    /// What to ring if we bridge after all.
    target: Target,
}

impl Call {
    /// `transfer` from party `by` (operator `op`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_transfer(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        op: &str,
        by: LegKey,
        reference: Option<String>,
        target: &str,
        how: Ask,
    ) {
        let Some(parsed) = parse_target(target) else {
            return self.error_to(
                op,
                ErrorCode::BadRequest,
                "`target` must be operator:REF, operators[:NUMBER], +E164, pstn:+E164, sip:URI or stream:URL",
                reference,
            );
        };
        let who = Transferor {
            by,
            op: Some(op.to_string()),
            notify: None,
            via: "sdk",
        };
        let asked = (target, parsed);
        if let Err(m) = self.begin_transfer(now, ctx, who, reference.clone(), asked, how) {
            self.error_to(op, ErrorCode::BadRequest, m, reference);
        }
    }

    /// An AI agent's warm transfer: the caller waits on hold while the
    /// target rings; once it answers, the agent briefs it (the caller hears
    /// neither) and completes the transfer by hanging up (at the latest after
    /// [`AGENT_BRIEFING`]). The agent hears how it goes.
    pub(crate) fn agent_warm_transfer(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        leg: LegKey,
        target: &str,
    ) {
        if !self
            .parties
            .get(&leg)
            .is_some_and(|p| p.joined() && matches!(p.leg, super::party::Leg::Agent))
        {
            return;
        }
        let who = Transferor {
            by: leg,
            op: None,
            notify: None,
            via: "agent",
        };
        let started = match parse_target(target) {
            Some(parsed) => {
                let asked = (target, parsed);
                let warm = Ask {
                    attended: true,
                    ..Ask::default()
                };
                self.begin_transfer(now, ctx, who, None, asked, warm)
            }
            None => Err("bad target"),
        };
        if started.is_err() {
            let state = "failed".to_string();
            self.media(MediaCommand::StreamTransferState { leg, state });
        }
    }

    /// A REFER from SIP party `key` (RFC 3515): a blind transfer of the
    /// others to the Refer-To target, if its trunk allows it or it is an
    /// operator's registered phone (its Transfer key; else 403), reported to
    /// it in NOTIFYs; it leaves once the target answered.
    pub(crate) fn sip_refer(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        refer_to: &str,
    ) {
        let sip = self.parties.get(&key).and_then(|p| p.sip());
        let phone = sip.is_some_and(|s| s.operator.is_some());
        let allowed = phone
            || sip
                .and_then(|s| s.trunk)
                .and_then(|t| ctx.cfg.trunks.get(t))
                .is_some_and(|t| t.accept_refer);
        let refuse = |status: u16| SipAction::AnswerRefer { status };
        if !allowed {
            return self.sip(key, refuse(403));
        }
        // Embedded headers: `Replaces` (RFC 3891 section 5: an attended
        // transfer whose target dialog is elsewhere) is sent on in our
        // INVITE; others we do not take (501).
        use crate::sip::dialog::replaces::{UriHeadersError, split_refer_to};
        let target = match split_refer_to(refer_to) {
            Err(UriHeadersError::Unsupported) => return self.sip(key, refuse(501)),
            Err(_) => return self.sip(key, refuse(400)),
            // The target is that SIP URI, whatever its user part.
            Ok((uri, Some(_))) if uri.starts_with("sip:") || uri.starts_with("sips:") => {
                Target::Sip(refer_to.trim().to_string())
            }
            Ok((_, Some(_))) => return self.sip(key, refuse(400)),
            Ok((uri, None)) => match if phone {
                phone_refer_target(ctx, &uri)
            } else {
                refer_target(&uri)
            } {
                Some(t) => t,
                None => return self.sip(key, refuse(400)),
            },
        };
        if self.transfer.is_some() {
            return self.sip(key, refuse(491));
        }
        self.sip(key, SipAction::AnswerRefer { status: 202 });
        let who = Transferor {
            by: key,
            op: None,
            notify: Some(key),
            via: "refer",
        };
        let asked = (refer_to, target);
        if self
            .begin_transfer(now, ctx, who, None, asked, Ask::default())
            .is_err()
        {
            let failed = SipAction::Notify {
                status: 503,
                reason: "Service Unavailable".into(),
                last: true,
            };
            self.sip(key, failed);
        }
    }

    /// Starts a transfer by `who`; `Err` says why it cannot (nothing changed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin_transfer(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        who: Transferor,
        reference: Option<String>,
        (target, target_parsed): (&str, Target),
        ask: Ask,
    ) -> Result<(), &'static str> {
        let by = who.by;
        let kind = if ask.attended {
            Kind::Attended
        } else {
            Kind::Blind
        };
        let fallback = match ask.fallback {
            Some(f) => match parse_target(&f) {
                Some(t) if kind == Kind::Blind => Some((f, t)),
                Some(_) => return Err("a fallback is for blind transfers"),
                None => return Err("`fallback` must be a target as `target` is"),
            },
            None => None,
        };
        let timeout = ask.timeout;
        if self.transfer.is_some() {
            return Err("a transfer of this call is already in progress");
        }
        if !self.is_connected() || !self.parties.get(&by).is_some_and(|p| p.joined()) {
            return Err("the call is not active");
        }
        let transferees: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(k, p)| **k != by && p.joined() && p.keeps_alive())
            .map(|(k, _)| *k)
            .collect();
        if transferees.is_empty() {
            return Err("nobody to transfer");
        }
        if self.parties.len() >= ctx.cfg.max_parties {
            return Err("the call holds as many participants as it may");
        }
        let ring = super::operator::ring_time(timeout, TRANSFER_TIMEOUT);
        let (group, origin) =
            self.next_add(now, Some(by), reference.clone(), timeout, TRANSFER_TIMEOUT);
        let refer = match kind {
            Kind::Blind if who.notify.is_none() => {
                self.refer_out(ctx, &transferees, &target_parsed, now + ring)
            }
            _ => None,
        };
        // Set first: a target that fails at once is a failed transfer.
        let held = match kind {
            // A REFER's transferor is not held (no re-INVITE to it mid-REFER):
            // it usually hangs up itself, or we do once the target answered.
            Kind::Blind if who.notify.is_some() => Vec::new(),
            // Nor is the one whose transferee's trunk gets our REFER: a hold
            // re-INVITE would cross the REFER (the transferee would follow
            // its transferor onto hold), and it is over in a moment.
            Kind::Blind if refer.is_some() => Vec::new(),
            Kind::Blind => vec![by],
            Kind::Attended => transferees.clone(),
        };
        let held: Vec<LegKey> = held
            .into_iter()
            .filter(|k| self.parties.get(k).is_some_and(|p| !p.held))
            .collect();
        self.transfer = Some(Transfer {
            kind,
            by: Some(by),
            by_who: self.who(by),
            via: who.via,
            op: who.op,
            notify: who.notify,
            group,
            target_text: target.to_string(),
            answered: None,
            held: held.clone(),
            reference: reference.clone(),
            refer: None,
            briefing_until: None,
            cancel_on_hangup: ask.cancel_on_hangup,
            fallback,
            ring,
            routing: None,
        });
        for k in &held {
            if let Some(p) = self.parties.get_mut(k) {
                p.held = true;
            }
        }
        if let Some((r, refer_to)) = refer {
            // RFC 5589 section 6.1: the transferee's trunk calls the target.
            self.sip(r.leg, SipAction::Refer { refer_to });
            if let Some(t) = self.transfer.as_mut() {
                t.refer = Some(r);
            }
            self.tell_transfer(now, ctx, "ringing", None, None, None);
            for k in held {
                self.tell_updated(now, ctx, k, None);
            }
            return Ok(());
        }
        if who.via == "refer" && ctx.cfg.external_routing {
            // Our routing decides where a REFER's target goes (the webhook or
            // the `Router`), as for a call; the referrer waits on its 202.
            self.ask_transfer_route(now, ctx, by, target, target_parsed, ring);
            return Ok(());
        }
        let (started, new) = self.ring_new(now, ctx, &target_parsed, origin);
        self.transfer_rung(now, ctx, started, new, &held);
        Ok(())
    }

    /// Asks the router where the transfer's `target` goes.
    fn ask_transfer_route(
        &mut self,
        now: Instant,
        ctx: &CallCtx<'_>,
        by: LegKey,
        target: &str,
        parsed: Target,
        ring: Duration,
    ) {
        let trunk = self
            .parties
            .get(&by)
            .and_then(|p| p.sip())
            .and_then(|s| s.trunk)
            .and_then(|t| ctx.cfg.trunks.get(t))
            .map(|t| t.name.clone());
        let facts = super::RouteFacts {
            call_id: self.id,
            direction: self.direction,
            from: self.from.clone(),
            to: target.to_string(),
            number: self.number.clone(),
            trunk,
            operator: None,
            headers: Vec::new(),
            default_plan: crate::plan::DialPlan::single(vec![parsed.clone()], ring),
            transfer: true,
        };
        if let Some(t) = self.transfer.as_mut() {
            t.routing = Some((now + super::ROUTE_TIMEOUT, parsed));
        }
        self.push(super::CallOutput::Route(facts));
    }

    /// The origin of what the transfer rings now (its group, ringing its
    /// time from `now`).
    fn target_origin(&self, now: Instant) -> Option<Origin> {
        let t = self.transfer.as_ref()?;
        Some(Origin::Added {
            by: t.by,
            reference: t.reference.clone(),
            deadline: now + t.ring,
            group: t.group,
        })
    }

    /// Whether the transfer waits for the router.
    pub(crate) fn transfer_routing(&self) -> bool {
        self.transfer.as_ref().is_some_and(|t| t.routing.is_some())
    }

    /// The router's answer about the transfer's target: its plan's first
    /// step rings (the default: the target as asked); a rejection fails the
    /// transfer with that status.
    pub(crate) fn transfer_routed(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        decision: super::RouteDecision,
    ) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Some((_, default)) = t.routing.take() else {
            return;
        };
        let targets = match decision {
            super::RouteDecision::Reject(status) => {
                let status = if (400..700).contains(&status) {
                    status
                } else {
                    403
                };
                return self.transfer_over(now, ctx, "failed", Some("failed"), Some(status));
            }
            super::RouteDecision::Plan(plan) => match plan.steps.into_iter().next() {
                Some(step) => step.targets,
                None => {
                    return self.transfer_over(now, ctx, "failed", Some("failed"), Some(404));
                }
            },
            _ => vec![default],
        };
        let mut rung = Ok(0);
        let mut new = Vec::new();
        for target in &targets {
            let Some(origin) = self.target_origin(now) else {
                return;
            };
            let (started, added) = self.ring_new(now, ctx, target, origin);
            new.extend(added);
            rung = match (rung, started) {
                (Ok(a), Ok(b)) => Ok(a + b),
                (Ok(0), Err(c)) => Err(c),
                (r, _) => r,
            };
        }
        self.transfer_rung(now, ctx, rung, new, &[]);
    }

    /// What ringing the transfer's target did: it rings (the transferor
    /// hears so), or nothing could ring and the transfer failed.
    fn transfer_rung(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        started: Result<usize, u16>,
        new: Vec<LegKey>,
        held: &[LegKey],
    ) {
        match started {
            Ok(n) if n > 0 => {
                self.tell_transfer(now, ctx, "ringing", new.first().copied(), None, None);
                for k in new {
                    self.tell_updated(now, ctx, k, None);
                }
                for k in held {
                    self.tell_updated(now, ctx, *k, None);
                }
            }
            // Nothing rings: the target failed at once (its fallback, if any,
            // is next).
            Ok(_) => self.transfer_failed_now(now, ctx, "busy", None),
            Err(code) => self.transfer_failed_now(now, ctx, "failed", Some(code)),
        }
    }

    fn transfer_failed_now(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        reason: &str,
        code: Option<u16>,
    ) {
        if let Some(group) = self.transfer.as_ref().map(|t| t.group) {
            self.transfer_target_failed(now, ctx, group, reason, code);
        }
    }

    /// A REFER out instead of bridging, when the one transferee is a SIP
    /// party whose trunk transfers that way and the target is a number or a
    /// SIP URI: what to send it.
    fn refer_out(
        &self,
        ctx: &CallCtx<'_>,
        transferees: &[LegKey],
        target: &Target,
        deadline: Instant,
    ) -> Option<(ReferOut, String)> {
        let [leg] = transferees else {
            return None;
        };
        let s = self.parties.get(leg)?.sip()?;
        let trunk = ctx.cfg.trunks.get(s.trunk?)?;
        let crate::config::TransferMode::Refer { bridge_on_failure } = trunk.transfer else {
            return None;
        };
        let refer_to = match target {
            Target::Pstn { number, .. } => format!("sip:{number}@{}", trunk.host),
            Target::Sip(uri) => uri.clone(),
            _ => return None,
        };
        let r = ReferOut {
            leg: *leg,
            deadline,
            bridge_on_failure,
            target: target.clone(),
        };
        Some((r, refer_to))
    }

    /// The trunk's answer to our REFER: refused (403, 405, 501...), we
    /// bridge instead; accepted, its NOTIFYs follow.
    pub(crate) fn refer_answered(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        leg: LegKey,
        status: u16,
    ) {
        if self.refer_of(leg) && !(200..300).contains(&status) {
            self.refer_fallback(now, ctx, "refused", status);
        }
    }

    /// A NOTIFY about the call our REFER asked for (RFC 3515 2.4.5): 200 and
    /// we leave (BYE to the transferee, RFC 5589 6.1); a failure is reported
    /// (or bridged, as the trunk says).
    pub(crate) fn refer_progress(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        leg: LegKey,
        status: u16,
        last: bool,
    ) {
        if !self.refer_of(leg) {
            return;
        }
        match status {
            200..=299 => {
                self.tell_transfer(now, ctx, "completed", None, None, None);
                let by = self.transfer.take().and_then(|t| t.by);
                // Both leave as transferred; the call is over for us.
                for k in by.into_iter().chain([leg]) {
                    if self.parties.contains_key(&k) {
                        self.leave(now, ctx, k, EndReason::Transferred, true);
                    }
                }
            }
            300.. => {
                let bridge = self
                    .transfer
                    .as_ref()
                    .and_then(|t| t.refer.as_ref())
                    .is_some_and(|r| r.bridge_on_failure);
                if bridge {
                    self.refer_fallback(now, ctx, "notify", status);
                } else {
                    let reason = refer_failure_reason(status);
                    self.transfer_over(now, ctx, "failed", Some(reason), Some(status));
                }
            }
            // A subscription that ends without a final status: as if none came.
            _ if last => self.refer_fallback(now, ctx, "no_notify", 0),
            _ => {}
        }
    }

    /// Whether the transfer in progress was REFERred to party `leg`.
    fn refer_of(&self, leg: LegKey) -> bool {
        self.transfer
            .as_ref()
            .and_then(|t| t.refer.as_ref())
            .is_some_and(|r| r.leg == leg)
    }

    /// When the transfer has something to do by itself: a REFER out stops
    /// waiting for its final NOTIFY, an agent's briefing ends.
    pub(crate) fn transfer_deadline(&self) -> Option<Instant> {
        let t = self.transfer.as_ref()?;
        [
            t.refer.as_ref().map(|r| r.deadline),
            t.briefing_until,
            t.routing.as_ref().map(|(d, _)| *d),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// No final NOTIFY in time: we bridge. An agent still briefing: the
    /// transfer completes.
    pub(crate) fn transfer_timed_out(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        if t.routing.as_ref().is_some_and(|(d, _)| *d <= now) {
            // The router did not answer: the target as asked.
            self.transfer_routed(now, ctx, super::RouteDecision::Default);
        } else if t.refer.as_ref().is_some_and(|r| r.deadline <= now) {
            self.refer_fallback(now, ctx, "no_notify", 0);
        } else if t.briefing_until.is_some_and(|d| d <= now) {
            self.complete_transfer(now, ctx);
        }
    }

    /// The REFER did not do it (`why`): we ring the target ourselves, as a
    /// bridged blind transfer.
    fn refer_fallback(&mut self, now: Instant, ctx: &mut CallCtx<'_>, why: &str, status: u16) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Some(r) = t.refer.take() else {
            return;
        };
        let by = t.by;
        // Bridged after all: the transferor is parked as for any blind
        // transfer while the target rings; a SIP one is not (its hold
        // re-INVITE would race the BYE that releases it).
        let parked = |p: &super::party::Party| !p.held && p.sip().is_none();
        if let Some(b) = by.filter(|b| self.parties.get(b).is_some_and(parked)) {
            if let Some(t) = self.transfer.as_mut() {
                t.held.push(b);
            }
            if let Some(p) = self.parties.get_mut(&b) {
                p.held = true;
            }
            self.tell_updated(now, ctx, b, None);
        }
        // Webhooks see why we bridge after all.
        self.transfer_event(now, "bridging", Some(why), (status != 0).then_some(status));
        let Some(origin) = self.target_origin(now) else {
            return;
        };
        let (started, new) = self.ring_new(now, ctx, &r.target, origin);
        match started {
            // Already told `started`: the new party is news to the others.
            Ok(n) if n > 0 => {
                for k in new {
                    self.tell_updated(now, ctx, k, None);
                }
            }
            other => self.transfer_rung(now, ctx, other, new, &[]),
        }
    }

    /// `transferComplete`, `transferCancel`, `transferMerge` from party `by`.
    pub(crate) fn transfer_action(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        op: &str,
        by: LegKey,
        reference: Option<String>,
        step: TransferStep,
    ) {
        if let Err(m) = self.transfer_step(now, ctx, Some(by), step) {
            self.error_to(op, ErrorCode::BadRequest, m, reference);
        }
    }

    /// Takes `step` in the call's transfer, for its transferor `by` (the API:
    /// `None`, anyone's); `Err` says why not (nothing changed).
    pub(crate) fn transfer_step(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        by: Option<LegKey>,
        step: TransferStep,
    ) -> Result<(), &'static str> {
        let Some(t) = self.transfer.as_ref() else {
            return Err("no transfer in progress");
        };
        if by.is_some() && t.by != by {
            return Err("the transfer is someone else's");
        }
        let (kind, answered, group) = (t.kind, t.answered, t.group);
        match step {
            TransferStep::Cancel => {
                self.stop_target(now, ctx, group, answered);
                self.transfer_over(now, ctx, "cancelled", None, None);
            }
            _ if kind != Kind::Attended => {
                return Err("complete and merge are for attended transfers");
            }
            _ if answered.is_none() => return Err("the target has not answered yet"),
            TransferStep::Merge => self.transfer_over(now, ctx, "merged", None, None),
            TransferStep::Complete => self.complete_transfer(now, ctx),
        }
        Ok(())
    }

    /// The target of the transfer (a party of add `group`) answered.
    pub(crate) fn transfer_target_joined(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        group: u32,
    ) {
        let Some(t) = self.transfer.as_mut().filter(|t| t.group == group) else {
            return;
        };
        t.answered = Some(key);
        let (kind, by) = (t.kind, t.by);
        if t.via == "agent" {
            t.briefing_until = Some(now + AGENT_BRIEFING);
        }
        match (kind, by) {
            (Kind::Attended, Some(_)) => {
                self.tell_transfer(now, ctx, "consulting", Some(key), None, None);
            }
            // Blind, or attended whose transferor already left: done.
            _ => self.complete_transfer(now, ctx),
        }
    }

    /// Nothing of add `group` joined (`reason`, maybe `status`): if it was the
    /// transfer's target, the transfer failed and the call is as before.
    /// `true` when it was.
    pub(crate) fn transfer_target_failed(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        group: u32,
        reason: &str,
        status: Option<u16>,
    ) -> bool {
        if self.transfer.as_ref().is_none_or(|t| t.group != group) {
            return false;
        }
        let Some(t) = self.transfer.as_mut() else {
            return false;
        };
        if let Some((text, target)) = t.fallback.take() {
            // The fallback rings before any recall; the failure is news.
            self.transfer_event(now, "fallback", Some(reason), status);
            if let Some(t) = self.transfer.as_mut() {
                t.target_text = text;
            }
            let Some(origin) = self.target_origin(now) else {
                return false;
            };
            let (started, new) = self.ring_new(now, ctx, &target, origin);
            self.transfer_rung(now, ctx, started, new, &[]);
            return true;
        }
        self.transfer_over(now, ctx, "failed", Some(reason), status);
        true
    }

    /// Party `key` left the call (hung up, removed).
    pub(crate) fn transfer_party_left(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey) {
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        t.held.retain(|k| *k != key);
        if t.answered == Some(key) {
            // The target hung up before completion.
            return self.transfer_over(now, ctx, "failed", Some("target_left"), None);
        }
        if t.by == Some(key) && t.cancel_on_hangup {
            // Asked so: the transferor hanging up cancels it; the target
            // goes, the transferees stay (alone, the call ends).
            t.by = None;
            let (group, answered) = (t.group, t.answered);
            self.stop_target(now, ctx, group, answered);
            return self.transfer_over(now, ctx, "cancelled", Some("transferor_left"), None);
        }
        if t.by == Some(key) {
            // The transferor hung up: it completes (a phone's semantics). A
            // ringing target answers to the transferees.
            t.by = None;
            t.op = None;
            t.notify = None;
            if t.answered.is_some() {
                self.complete_transfer(now, ctx);
            }
            return;
        }
        let (kind, group, answered) = (t.kind, t.group, t.answered);
        let transferees_left = self.parties.iter().any(|(k, p)| {
            Some(*k) != t.by
                && Some(*k) != answered
                && p.joined()
                && p.keeps_alive()
                && !matches!(p.origin, Origin::Added { group: g, .. } if g == group)
        });
        if !transferees_left {
            // Nobody left to hand over: a ringing target stops; a talking one
            // stays with the transferor (attended).
            if answered.is_none() || kind == Kind::Blind {
                self.stop_target(now, ctx, group, None);
            }
            self.transfer_over(now, ctx, "failed", Some("transferee_left"), None);
        }
    }

    /// The transferees and the target go on together; the transferor leaves.
    fn complete_transfer(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let by = self.transfer.as_mut().and_then(|t| {
            // The transferor leaves held: no un-hold re-INVITE before its BYE.
            t.held.retain(|k| Some(*k) != t.by);
            t.by
        });
        self.transfer_over(now, ctx, "completed", None, None);
        if let Some(by) = by {
            self.leave(now, ctx, by, EndReason::Transferred, true);
        }
    }

    /// Ends the transfer in `state`: the parties it held come back, the
    /// transferor hears how it ended.
    fn transfer_over(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        state: &'static str,
        reason: Option<&str>,
        code: Option<u16>,
    ) {
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        let (held, answered) = (t.held.clone(), t.answered);
        let recalled = state == "failed"
            && t.kind == Kind::Blind
            && t.by.is_some_and(|b| self.parties.contains_key(&b));
        self.tell_transfer(now, ctx, state, answered, reason, code);
        if recalled {
            // The transferor is back with the others (webhooks see it).
            self.transfer_event(now, "recalled", reason, code);
        }
        self.transfer = None;
        for k in held {
            if let Some(p) = self.parties.get_mut(&k) {
                p.held = false;
            }
            self.tell_updated(now, ctx, k, None);
        }
        self.settle(now, ctx);
    }

    /// Stops the target of add `group`: ringing ones stop, an answered one
    /// (`answered`) is taken out.
    fn stop_target(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        group: u32,
        answered: Option<LegKey>,
    ) {
        let ringing: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(_, p)| {
                p.ringing() && matches!(p.origin, Origin::Added { group: g, .. } if g == group)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in ringing {
            self.drop_ringing(now, ctx, k, EndReason::Removed);
        }
        if let Some(k) = answered {
            // Not through `leave`'s hooks: the transfer ends here anyway.
            let t = self.transfer.take();
            self.leave(now, ctx, k, EndReason::Removed, true);
            self.transfer = t;
        }
    }

    /// Tells the transferor how its transfer goes.
    fn tell_transfer(
        &mut self,
        now: Instant,
        ctx: &CallCtx<'_>,
        state: &'static str,
        target: Option<LegKey>,
        reason: Option<&str>,
        code: Option<u16>,
    ) {
        self.transfer_event(now, state, reason, code);
        if let Some(t) = self.transfer.as_ref()
            && t.via == "agent"
            && let Some(by) = t.by
        {
            let state = state.to_string();
            self.media(MediaCommand::StreamTransferState { leg: by, state });
        }
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        if let Some(leg) = t.notify {
            // RFC 3515 2.4.5: the referred call's status line in a NOTIFY.
            let (status, reason) = match (state, reason) {
                ("ringing", _) => return,
                ("completed", _) => (200, "OK"),
                (_, Some("busy")) => (486, "Busy Here"),
                (_, Some("no_answer")) => (480, "Temporarily Unavailable"),
                (_, Some("rejected")) => (603, "Decline"),
                (_, Some("failed")) => (code.unwrap_or(503), "Failed"),
                _ => (487, "Request Terminated"),
            };
            let action = SipAction::Notify {
                status,
                reason: reason.into(),
                last: true,
            };
            return self.sip(leg, action);
        }
        let Some(op) = t.op.clone() else {
            return;
        };
        let msg = ServerMessage::Transfer {
            call_id: self.id.to_string(),
            state,
            target: t.target_text.clone(),
            participant_id: target.map(|k| k.to_string()),
            reason: reason.map(String::from),
            code,
            reference: t.reference.clone(),
            at: ctx.unix_ms(now),
        };
        self.send_operator(&op, msg);
    }

    /// The transfer's event (webhooks, CDR) in `state`.
    fn transfer_event(
        &mut self,
        now: Instant,
        state: &'static str,
        reason: Option<&str>,
        code: Option<u16>,
    ) {
        let Some(t) = self.transfer.as_ref() else {
            return;
        };
        let report = super::event::TransferReport {
            state: if state == "ringing" { "started" } else { state },
            kind: match t.kind {
                Kind::Blind => "blind",
                Kind::Attended => "attended",
            },
            via: t.via,
            by: t.by_who.clone(),
            target: t.target_text.clone(),
            reason: reason.map(String::from),
            code,
        };
        let detail = format!("{} {} to {}", report.kind, report.state, report.target);
        self.record_note("transfer", None, Some(detail));
        let mut ev = self.report(now, super::CallEventKind::Transfer);
        ev.transfer = Some(Box::new(report));
        ev.code = code;
        self.push(super::CallOutput::Event(ev));
    }

    /// `blind` or `attended` when party `p` is rung as the transfer's target.
    pub(crate) fn transfer_kind_of(&self, p: &super::party::Party) -> Option<&'static str> {
        let t = self.transfer.as_ref()?;
        match p.origin {
            Origin::Added { group, .. } if group == t.group => Some(match t.kind {
                Kind::Blind => "blind",
                Kind::Attended => "attended",
            }),
            _ => None,
        }
    }

    /// A transfer's target still rings: the call waits for it even with one
    /// party left in it (the transferor hung up).
    pub(crate) fn transfer_pending(&self) -> bool {
        self.transfer.as_ref().is_some_and(|t| t.answered.is_none())
    }

    /// The transferor of a blind transfer whose target still rings (its
    /// transferees hear ringback meanwhile).
    pub(crate) fn blind_transfer_by(&self) -> Option<LegKey> {
        self.transfer
            .as_ref()
            .filter(|t| t.kind == Kind::Blind && t.answered.is_none())
            .and_then(|t| t.by)
    }
}

/// How a transfer is asked for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ask {
    /// Consult the target first.
    pub attended: bool,
    /// Seconds the target rings (5-300, default 30).
    pub timeout: Option<u32>,
    /// The transferor hanging up cancels it (default: completes it).
    pub cancel_on_hangup: bool,
    /// Blind: rung when the target does not answer, is busy or fails,
    /// before the transferor is recalled.
    pub fallback: Option<String>,
}

/// Who transfers: a party, how it hears of the progress, and who asked
/// (`sdk`, `refer`, `api`).
pub(crate) struct Transferor {
    pub by: LegKey,
    pub op: Option<String>,
    pub notify: Option<LegKey>,
    pub via: &'static str,
}

/// Why a NOTIFY's status failed a referred call, as a transfer reason.
fn refer_failure_reason(status: u16) -> &'static str {
    match status {
        486 | 600 => "busy",
        408 | 480 | 487 => "no_answer",
        603 => "rejected",
        _ => "failed",
    }
}

/// A Refer-To URI as a target: `tel:+E164` and `sip:+E164@...` go out as
/// phone numbers through a trunk; other `sip:` URIs are called as they are.
fn refer_target(uri: &str) -> Option<Target> {
    let uri = uri.trim();
    if let Some(rest) = uri.strip_prefix("tel:") {
        let number = rest.split(';').next()?;
        return is_e164(number).then(|| Target::Pstn {
            number: number.to_string(),
            trunk: None,
        });
    }
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, host) = rest.split_once('@')?;
    let user = user.split(';').next()?;
    if host.is_empty() {
        return None;
    }
    if is_e164(user) {
        return Some(Target::Pstn {
            number: user.to_string(),
            trunk: None,
        });
    }
    Some(Target::Sip(uri.to_string()))
}

/// Where a phone's Transfer key sends the call: the user part as the phone
/// dialled it: another phone account or operator (`operator:REF`), one of
/// our numbers (its operators), or digits for the trunk.
fn phone_refer_target(ctx: &CallCtx<'_>, uri: &str) -> Option<Target> {
    if uri.trim().starts_with("tel:") {
        return refer_target(uri);
    }
    let user = super::user_of(uri);
    if let Some(op) = ctx.phones.and_then(|r| r.operator_of(&user)) {
        return Some(Target::Operator(op.to_string()));
    }
    if ctx.presence.is_ready(&user) {
        return Some(Target::Operator(user));
    }
    if let Some(n) = ctx.cfg.number(&user) {
        return Some(Target::OperatorsOf(n.id.clone()));
    }
    let digits = user.strip_prefix('+').unwrap_or(&user);
    (!digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(
        || Target::Pstn {
            number: user.clone(),
            trunk: None,
        },
    )
}

fn is_e164(n: &str) -> bool {
    n.strip_prefix('+')
        .is_some_and(|d| (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// A target as `addParticipant` and `transfer` take it.
pub(crate) fn parse_target(target: &str) -> Option<Target> {
    if target.starts_with('+') {
        return Some(Target::Pstn {
            number: target.to_string(),
            trunk: None,
        });
    }
    match target.parse::<Target>() {
        Ok(
            t @ (Target::Operators
            | Target::OperatorsOf(_)
            | Target::Operator(_)
            | Target::Sip(_)
            | Target::Pstn { .. }
            | Target::Stream(_)),
        ) => Some(t),
        _ => None,
    }
}
