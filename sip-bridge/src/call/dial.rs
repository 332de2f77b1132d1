//! How a call starts and finds someone: routing, the dial plan's steps (each
//! rings its targets at once for its timeout; the first answer wins and ends
//! the others; when a step has nothing left ringing the next starts), ringing
//! one target of any kind, and handing the caller on after an AI agent.

use media_core::Instant;

use super::party::{Leg, OperatorLeg, Origin, Party, SipLeg, SipState, Stage};
use super::route::{ROUTE_TIMEOUT, ROUTED_HEADERS, RouteDecision, RouteFacts};
use super::state::{CallState, Dial};
use super::{Call, CallCtx, CallEventKind, CallOutput, Direction, Progress, SipAction};
use crate::config::NumberConfig;
use crate::contract::{CallId, LegKey, MediaCommand};
use crate::plan::{DialPlan, DialStatus, Join, Ringback, Step, Target};
use crate::roles::Role;
use crate::sdp::{self, LocalMedia, SessionDescription};
use crate::signalling::{EndReason, ServerMessage};
use crate::sip::dialog::InviteParams;
use crate::sip::message::{Peer, SipHeaders};

/// How long a fork of another node's call rings here at most (the owner's
/// plan decides; it cancels sooner).
const PEER_RING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Call {
    /// A call from a SIP caller (`req`, from `trunk`) to `number`. Its offer is
    /// answered at once (the 183 and the 200 carry that answer); `Err` is the
    /// status that refuses it (488 for no usable offer, 503 without a port).
    pub fn inbound(
        now: Instant,
        ctx: &mut CallCtx<'_>,
        id: CallId,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        trunk: Option<usize>,
        number: &NumberConfig,
    ) -> Result<Call, u16> {
        Call::inbound_as(now, ctx, id, req, source, trunk, number, None)
    }

    /// A fork of a call that node `peer.node` owns (see [`crate::cluster`]):
    /// it rings the operators here that `peer` names, for as long as the
    /// owner rings, with no routing, recording or second hop; the owner
    /// does all of that.
    pub(crate) fn from_peer(
        now: Instant,
        ctx: &mut CallCtx<'_>,
        id: CallId,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        number: &NumberConfig,
        peer: &crate::cluster::PeerInvite,
    ) -> Result<Call, u16> {
        Call::inbound_as(now, ctx, id, req, source, None, number, Some(peer))
    }

    #[allow(clippy::too_many_arguments)]
    fn inbound_as(
        now: Instant,
        ctx: &mut CallCtx<'_>,
        id: CallId,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        trunk: Option<usize>,
        number: &NumberConfig,
        peer: Option<&crate::cluster::PeerInvite>,
    ) -> Result<Call, u16> {
        let from_hdr = req.header_from().unwrap_or("").to_string();
        let mut call = Call::new(
            now,
            ctx,
            id,
            Direction::Inbound,
            number,
            user_of(&from_hdr),
            number.e164.clone(),
        );
        call.plan = number.plan.clone();
        call.room = number.room;
        if let Some(p) = peer {
            let target = match &p.ring {
                crate::cluster::PeerRing::Number => Target::OperatorsOf(number.id.clone()),
                crate::cluster::PeerRing::Operator(op) => Target::Operator(op.clone()),
            };
            // The owner's own ring time ends it (CANCEL); this is a backstop.
            call.plan = DialPlan {
                steps: vec![Step::new(vec![target], PEER_RING_TIMEOUT)],
                ..DialPlan::default()
            };
            call.room = false;
            call.from_peer = Some(p.node.clone());
        }
        call.caller_name = display_name_of(&from_hdr);
        let key = call.sip_caller(ctx, req, source, trunk)?;
        call.caller = key;
        if call.siprec_default.is_none() {
            call.siprec_default = trunk.and_then(|t| ctx.cfg.trunks[t].siprec.clone());
        }
        call.event(now, CallEventKind::Initiated, None, None, None);
        call.record_joined(now, ctx, key);
        if call.room {
            // A meet-me room: every caller is in at once, nothing rings.
            call.state = CallState::Connected;
            call.answered_at = Some(now);
            call.answer_caller(key);
            call.event(
                now,
                CallEventKind::Answered,
                Some(DialStatus::Answered),
                None,
                None,
            );
            if let Some(o) = call.plan.record {
                let _ = call.start_recording(now, ctx, o, super::record::Asker::Plan);
            }
            if let Some(o) = call.plan.fork.clone() {
                let _ = call.start_fork(now, ctx, &o, super::record::Asker::Plan);
            }
            call.start_siprec(now, ctx);
            call.settle(now, ctx);
            return Ok(call);
        }
        let mut headers = Vec::new();
        for name in ROUTED_HEADERS {
            for v in req.lines(name) {
                headers.push((name.to_string(), v.to_string()));
            }
        }
        for h in req.headers.iter() {
            let (n, v) = (h.name(), h.value());
            if n.len() > 2 && n[..2].eq_ignore_ascii_case("x-") && headers.len() < 32 {
                headers.push((n.to_string(), v.to_string()));
            }
        }
        if call.from_peer.is_some() {
            call.dial_plan(now, ctx);
            call.settle(now, ctx);
            return Ok(call);
        }
        let facts = RouteFacts {
            call_id: id,
            direction: Direction::Inbound,
            from: call.from.clone(),
            to: call.to.clone(),
            number: call.number.clone(),
            trunk: trunk.map(|t| ctx.cfg.trunks[t].name.clone()),
            operator: None,
            headers,
            default_plan: call.plan.clone(),
            transfer: false,
        };
        call.begin(now, ctx, facts);
        Ok(call)
    }

    /// A call a registered phone of operator `op` placed (`req`, from
    /// `source`) to `to`, with caller ID `number`, ringing `plan`. The phone
    /// is the caller, answered when the far end answers; its operator is busy
    /// meanwhile. `Err` is the status refusing it (488, 503).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_phone(
        now: Instant,
        ctx: &mut CallCtx<'_>,
        id: CallId,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        op: &str,
        number: &NumberConfig,
        to: &str,
        plan: DialPlan,
    ) -> Result<Call, u16> {
        let mut call = Call::from_our_number(now, ctx, id, number, to, plan);
        let key = call.sip_caller(ctx, req, source, None)?;
        call.caller = key;
        if let Some(p) = call.parties.get_mut(&key) {
            p.role = Role::Agent;
            p.name.get_or_insert_with(|| op.to_string());
            if let Some(s) = p.sip_mut() {
                s.operator = Some(op.to_string());
            }
        }
        call.operators_call_begins(now, ctx, key, op);
        Ok(call)
    }

    /// A call we place to `to` showing `number`, ringing `plan` (an
    /// operator's dial, a phone's, the API's).
    pub(crate) fn from_our_number(
        now: Instant,
        ctx: &mut CallCtx<'_>,
        id: CallId,
        number: &NumberConfig,
        to: &str,
        plan: DialPlan,
    ) -> Call {
        let mut call = Call::new(
            now,
            ctx,
            id,
            Direction::Outbound,
            number,
            number.e164.clone(),
            to.to_string(),
        );
        call.plan = plan;
        call
    }

    /// An operator's own call (dialled in a browser or on a phone, party
    /// `key`) begins: the operator is busy, and the plan is routed.
    fn operators_call_begins(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        op: &str,
    ) {
        self.push(CallOutput::Busy { op: op.to_string() });
        self.event(now, CallEventKind::Initiated, None, None, None);
        self.record_joined(now, ctx, key);
        let facts = RouteFacts {
            call_id: self.id,
            direction: Direction::Outbound,
            from: self.from.clone(),
            to: self.to.clone(),
            number: self.number.clone(),
            trunk: None,
            operator: Some(op.to_string()),
            headers: Vec::new(),
            default_plan: self.plan.clone(),
            transfer: false,
        };
        self.begin(now, ctx, facts);
    }

    /// Operator `op`'s dial (its `ref` waits for the `answer`) to `to` with
    /// caller ID `number`, ringing `plan`, its browser offering `sdp`.
    #[allow(clippy::too_many_arguments)]
    pub fn outbound(
        now: Instant,
        ctx: &mut CallCtx<'_>,
        id: CallId,
        op: &str,
        reference: Option<String>,
        number: &NumberConfig,
        to: &str,
        plan: DialPlan,
        sdp: String,
    ) -> Call {
        let mut call = Call::from_our_number(now, ctx, id, number, to, plan);
        let key = call.leg_key();
        call.caller = key;
        let mut p = Party::new(
            Role::Agent,
            Leg::Operator(OperatorLeg {
                op: op.to_string(),
                reference,
                answered: false,
                self_held: false,
                invited_by: None,
            }),
            Origin::Caller,
            None,
        );
        p.in_media = true;
        call.parties.insert(key, p);
        call.media(MediaCommand::AddWebRtc {
            leg: key,
            offer: sdp,
        });
        call.operators_call_begins(now, ctx, key, op);
        call
    }

    /// Answers the SIP INVITE `req` (from `trunk`) as a new party: its offer
    /// answered at once on a port of ours, its RTP leg added. `Err` is the
    /// status that refuses it (488 for no usable offer, 503 without a port).
    /// An INVITE without SDP (late offer) gets our offer in the 200 instead.
    fn sip_caller(
        &mut self,
        ctx: &mut CallCtx<'_>,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        trunk: Option<usize>,
    ) -> Result<LegKey, u16> {
        let ipv6 = source.to_canonical().is_ipv6();
        if req.body.is_empty() {
            return self.late_offer_caller(ctx, req, source, trunk);
        }
        let Ok(offer) = std::str::from_utf8(&req.body)
            .map_err(|_| ())
            .and_then(|t| SessionDescription::parse(t).map_err(|_| ()))
        else {
            return Err(488);
        };
        let Some(port) = ctx.ports.take() else {
            return Err(503);
        };
        let codecs = trunk
            .map(|t| ctx.cfg.trunks[t].codecs.clone())
            .unwrap_or_default();
        let session_id = ctx.rng.next_u64() >> 12;
        let local = LocalMedia::rtp(ctx.cfg.media_ip_for(ipv6), port, session_id);
        let (answer, negotiated) = match sdp::answer_audio(&offer, &caps_for(&codecs), &local) {
            Ok(a) => a,
            Err(e) => {
                ctx.ports.give(port);
                return Err(e.sip_status());
            }
        };
        let key = self.leg_key();
        let format = format_of(&negotiated);
        let remote = negotiated.remote;
        let rtcp_mux = negotiated.rtcp_mux;
        let latch_from = latch_from(ctx, trunk, source);
        let mut p = Party::new(
            Role::Customer,
            Leg::Sip(SipLeg {
                state: SipState::Ringing,
                port,
                trunk,
                attempt: 0,
                local_sdp: answer.to_string(),
                sdp_version: 1,
                negotiated: Some(negotiated),
                early_media: false,
                remote_held: false,
                held_by_us: false,
                open_offer: Some(offer.to_string()),
                late_offer: false,
                ipv6,
                operator: None,
                latch_from,
                peer_node: None,
            }),
            Origin::Caller,
            None,
        );
        p.name = display_name_of(req.header_from().unwrap_or(""));
        p.in_media = true;
        self.parties.insert(key, p);
        self.media(MediaCommand::AddRtp {
            leg: key,
            local_port: port,
            remote,
            format,
            rtcp_mux,
            latch_from,
        });
        Ok(key)
    }

    /// A SIP caller without an offer: a port, and our offer (the trunk's
    /// codecs) that goes in the 200; its media starts with the answer in the
    /// ACK.
    fn late_offer_caller(
        &mut self,
        ctx: &mut CallCtx<'_>,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        trunk: Option<usize>,
    ) -> Result<LegKey, u16> {
        let ipv6 = source.to_canonical().is_ipv6();
        let Some(port) = ctx.ports.take() else {
            return Err(503);
        };
        let codecs = trunk
            .map(|t| ctx.cfg.trunks[t].codecs.clone())
            .unwrap_or_default();
        let local = LocalMedia::rtp(ctx.cfg.media_ip_for(ipv6), port, ctx.rng.next_u64() >> 12);
        let offer = sdp::create_offer(&caps_for(&codecs), &local).to_string();
        let key = self.leg_key();
        let mut p = Party::new(
            Role::Customer,
            Leg::Sip(SipLeg {
                state: SipState::Ringing,
                port,
                trunk,
                attempt: 0,
                local_sdp: offer,
                sdp_version: 1,
                negotiated: None,
                early_media: false,
                remote_held: false,
                held_by_us: false,
                open_offer: None,
                late_offer: true,
                ipv6,
                operator: None,
                latch_from: latch_from(ctx, trunk, source),
                peer_node: None,
            }),
            Origin::Caller,
            None,
        );
        p.name = display_name_of(req.header_from().unwrap_or(""));
        self.parties.insert(key, p);
        Ok(key)
    }

    /// 200 OK with our answer to SIP party `key`'s INVITE.
    fn answer_caller(&mut self, key: LegKey) {
        if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut())
            && s.state == SipState::Ringing
        {
            s.state = SipState::Up;
            s.open_offer = None;
            let sdp = s.local_sdp.clone();
            self.sip(
                key,
                SipAction::Respond {
                    status: 200,
                    sdp: Some(sdp),
                    headers: Vec::new(),
                },
            );
        }
    }

    /// Another caller into this meet-me room: answered at once, it hears and is
    /// heard by everyone in it. `Err` is the status that refuses it (486 when
    /// the room is full).
    pub fn join_room(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        trunk: Option<usize>,
    ) -> Result<LegKey, u16> {
        if !self.room || self.is_ended() {
            return Err(480);
        }
        if self.parties.len() >= ctx.cfg.max_parties {
            return Err(486);
        }
        let key = self.sip_caller(ctx, req, source, trunk)?;
        self.record_joined(now, ctx, key);
        self.answer_caller(key);
        self.settle(now, ctx);
        Ok(key)
    }

    /// An INVITE with `Replaces` (RFC 3891) naming party `old`'s dialog: the
    /// new leg takes its place (its role, hold and mute; the caller's place
    /// if it was the caller), answered at once; the old leg gets BYE
    /// (`replaced`). `Err` is the status that refuses the INVITE.
    pub fn replace_party(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        old: LegKey,
        req: &crate::sip::message::Request,
        source: std::net::IpAddr,
        trunk: Option<usize>,
    ) -> Result<LegKey, u16> {
        let Some(p) = self.parties.get(&old).filter(|p| p.joined()) else {
            return Err(481);
        };
        if p.sip().is_none() || self.is_ended() {
            return Err(481);
        }
        let (role, origin, target, held, muted) =
            (p.role, p.origin.clone(), p.target.clone(), p.held, p.muted);
        let key = self.sip_caller(ctx, req, source, trunk)?;
        if let Some(n) = self.parties.get_mut(&key) {
            n.role = role;
            n.origin = origin;
            n.target = target;
            n.held = held;
            n.muted = muted;
            n.replaced = Some(old);
        }
        if old == self.caller {
            self.caller = key;
        }
        self.record_joined(now, ctx, key);
        self.answer_caller(key);
        self.leave_as(now, ctx, old, EndReason::Hangup, true, "replaced");
        self.settle(now, ctx);
        Ok(key)
    }

    /// Whether this call is a number's meet-me room.
    pub fn is_room(&self) -> bool {
        self.room
    }

    /// With an external router, asks it (the caller waits on 100 Trying, at
    /// most [`ROUTE_TIMEOUT`]); else starts the static plan.
    pub(crate) fn begin(&mut self, now: Instant, ctx: &mut CallCtx<'_>, facts: RouteFacts) {
        if ctx.cfg.external_routing {
            self.state = CallState::Routing {
                deadline: now + ROUTE_TIMEOUT,
            };
            self.push(CallOutput::Route(facts));
        } else {
            self.dial_plan(now, ctx);
        }
        self.settle(now, ctx);
    }

    /// Routed: the SIPREC session (if any) is asked first, so the SRS is
    /// ready before anyone answers; then the plan's first step rings (with
    /// `fail_closed`, once the SRS answered).
    fn dial_plan(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        self.state = CallState::Dialing(Dial::at(0));
        self.start_siprec(now, ctx);
        if !self.siprec_holds_dial() {
            self.start_step(now, ctx);
        }
    }

    /// Whether the plan is ringing (or about to).
    pub(crate) fn dialing(&self) -> bool {
        matches!(self.state, CallState::Dialing(_))
    }

    /// The router's decision.
    pub fn handle_route(&mut self, now: Instant, ctx: &mut CallCtx<'_>, decision: RouteDecision) {
        if self.transfer_routing() {
            self.transfer_routed(now, ctx, decision);
            return self.settle(now, ctx);
        }
        if !matches!(self.state, CallState::Routing { .. }) {
            return;
        }
        match decision {
            RouteDecision::Default => self.dial_plan(now, ctx),
            RouteDecision::Plan(plan) => {
                self.plan = plan;
                self.dial_plan(now, ctx);
            }
            RouteDecision::Reject(status) => {
                let status = if (400..700).contains(&status) {
                    status
                } else {
                    403
                };
                self.end_call(
                    now,
                    ctx,
                    DialStatus::Failed,
                    EndReason::Failed,
                    Some(status),
                );
            }
        }
        self.settle(now, ctx);
    }

    fn dial(&mut self) -> Option<&mut Dial> {
        match &mut self.state {
            CallState::Dialing(d) => Some(d),
            _ => None,
        }
    }

    /// Starts the dial's step; moves on while steps have nothing to ring.
    pub(crate) fn start_step(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        loop {
            let Some(i) = self.dial().map(|d| d.step) else {
                return;
            };
            let Some(step) = self.plan.steps.get(i).cloned() else {
                return self.plan_exhausted(now, ctx);
            };
            let mut started = 0;
            for target in &step.targets {
                match self.ring_target(now, ctx, target, Origin::Plan(i)) {
                    Ok(n) => started += n,
                    Err(code) => {
                        if let Some(d) = self.dial() {
                            d.fail_code = Some(code);
                        }
                    }
                }
                if !matches!(self.state, CallState::Dialing(_)) {
                    return; // a built-in target answered at once
                }
            }
            if started > 0 {
                if let Some(d) = self.dial() {
                    d.deadline = Some(now + step.timeout);
                }
                let local = self.local_ringback(ctx, &step);
                self.caller_ringing(now, local);
                return;
            }
            if let Some(d) = self.dial() {
                d.step += 1;
            }
        }
    }

    /// The role of a party rung as `target` for `origin`.
    fn role_for(&self, target: &Target, origin: &Origin) -> Role {
        match target {
            Target::Operators | Target::OperatorsOf(_) | Target::Operator(_) => Role::Agent,
            Target::Stream(_) => Role::Ai,
            // The API's call: whoever its first party is not (a phone rung
            // first is the customer, so what it is connected to is a phone).
            _ if matches!(origin, Origin::Plan(_)) && self.originated() => {
                match self.parties.get(&self.caller).map(|p| p.role) {
                    Some(Role::Customer) => Role::Phone,
                    _ => Role::Customer,
                }
            }
            _ if matches!(origin, Origin::Plan(_)) && self.direction == Direction::Outbound => {
                Role::Customer
            }
            _ => Role::Phone,
        }
    }

    /// Rings one target for `origin`: how many legs it started, or the status
    /// that explains why it could not.
    pub(crate) fn ring_target(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: &Target,
        origin: Origin,
    ) -> Result<usize, u16> {
        self.rung.push(target.to_string());
        let role = self.role_for(target, &origin);
        match target {
            Target::Operators | Target::OperatorsOf(_) => {
                let number = match target {
                    Target::OperatorsOf(n) => ctx.cfg.number(n).map(|n| n.id.clone()),
                    _ => self.number.clone(),
                };
                let Some(number) = number else {
                    return Ok(0);
                };
                let mut n = 0;
                for op in ctx.presence.ready_for(&number) {
                    if self.party_of(&op).is_some() || self.rings_phone_of(&op) {
                        continue;
                    }
                    // In a browser, on the phones, or both: the first answer wins.
                    let browser = ctx.presence.browser_ready_for(&op, &number);
                    if browser {
                        self.ring_operator(&op, target.clone(), role, origin.clone());
                        n += 1;
                    }
                    if (ring_both(ctx) || !browser) && ctx.presence.phone_ready_for(&op, &number) {
                        n += self.ring_phones(now, ctx, &op, target, role, &origin);
                    }
                }
                let nodes: Vec<_> = ctx.peers.ready_for(&number).cloned().collect();
                for node in nodes {
                    let ring = crate::cluster::PeerRing::Number;
                    n += self.ring_peer(now, ctx, &node, &number, ring, target, role, &origin);
                }
                Ok(n)
            }
            Target::Operator(op) => {
                if self.party_of(op).is_some() || self.rings_phone_of(op) {
                    return Ok(0);
                }
                let mut n = 0;
                let browser = ctx.presence.browser_ready(op);
                if browser {
                    self.ring_operator(op, target.clone(), role, origin.clone());
                    n += 1;
                }
                if (ring_both(ctx) || !browser) && ctx.presence.phone_ready(op) {
                    n += self.ring_phones(now, ctx, op, target, role, &origin);
                }
                // Ready on another node (it moved there, or signed in there).
                let number = self
                    .number
                    .clone()
                    .or_else(|| ctx.cfg.numbers.first().map(|n| n.id.clone()));
                if n == 0
                    && let Some(number) = number
                {
                    let nodes: Vec<_> = ctx.peers.with_operator(op).cloned().collect();
                    for node in nodes {
                        let ring = crate::cluster::PeerRing::Operator(op.clone());
                        n += self.ring_peer(now, ctx, &node, &number, ring, target, role, &origin);
                    }
                }
                Ok(n)
            }
            Target::Sip(uri) => self.ring_sip_at(
                now,
                ctx,
                target.clone(),
                uri.clone(),
                None,
                None,
                role,
                origin,
            ),
            Target::Pstn { number, trunk } => {
                let t = match trunk {
                    Some(name) => ctx.cfg.trunk_named(name),
                    None => (!ctx.cfg.trunks.is_empty()).then_some(0),
                };
                let Some(t) = t else {
                    return Err(503);
                };
                let uri = format!("sip:{number}@{}", ctx.cfg.trunks[t].host);
                self.ring_sip_at(now, ctx, target.clone(), uri, Some(t), None, role, origin)
            }
            Target::Echo | Target::Tone(_) => {
                let key = self.leg_key();
                let leg = match target {
                    Target::Tone(hz) => Leg::Tone(*hz),
                    _ => Leg::Echo,
                };
                self.parties
                    .insert(key, Party::new(role, leg, origin, Some(target.clone())));
                self.answered(now, ctx, key);
                Ok(1)
            }
            Target::Stream(url) => {
                let key = self.leg_key();
                let mut p = Party::new(role, Leg::Agent, origin, Some(target.clone()));
                p.in_media = true;
                self.parties.insert(key, p);
                let opts = ctx.cfg.streams.iter().find(|s| s.url == *url);
                let cmd = MediaCommand::AddStream {
                    leg: key,
                    url: url.clone(),
                    format: opts.map_or_else(Default::default, |o| o.format),
                    headers: opts.map_or_else(Vec::new, |o| o.headers.clone()),
                    start: crate::stream::StreamStart {
                        call_id: self.id.to_string(),
                        from: self.from.clone(),
                        to: self.to.clone(),
                        number: self.number.clone(),
                    },
                };
                self.media(cmd);
                Ok(1)
            }
        }
    }

    /// Whether a phone of operator `op` is a party (ringing or in).
    fn rings_phone_of(&self, op: &str) -> bool {
        self.parties
            .values()
            .any(|p| p.sip().and_then(|s| s.operator.as_deref()) == Some(op))
    }

    /// Rings every registered phone of operator `op` (forking: each binding
    /// its own INVITE, to the address its REGISTER came from); how many.
    fn ring_phones(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        op: &str,
        target: &Target,
        role: Role,
        origin: &Origin,
    ) -> usize {
        let bindings: Vec<(String, Peer)> = ctx
            .phones
            .map(|r| {
                r.bindings(op)
                    .iter()
                    .map(|b| (b.contact.clone(), b.received))
                    .collect()
            })
            .unwrap_or_default();
        let mut n = 0;
        for (contact, peer) in bindings {
            let phone = Some((op, peer));
            if let Ok(k) = self.ring_sip_via(
                now,
                ctx,
                target.clone(),
                contact,
                phone,
                role,
                origin.clone(),
            ) {
                n += k;
            }
        }
        n
    }

    /// Rings `ring` on another node of the cluster: an INVITE over TCP to its
    /// SIP address, signed (see [`crate::cluster`]). A fork of a peer's call
    /// rings no further node. How many legs it started (0 or 1).
    #[allow(clippy::too_many_arguments)]
    fn ring_peer(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        node: &crate::cluster::PeerNode,
        number: &str,
        ring: crate::cluster::PeerRing,
        target: &Target,
        role: Role,
        origin: &Origin,
    ) -> usize {
        let Some(key) = ctx
            .cfg
            .peer_key
            .as_ref()
            .filter(|_| self.from_peer.is_none())
        else {
            return 0;
        };
        let unix = ctx.unix_ms(now) / 1000;
        let header = key.sign(&ctx.peers.me, unix, number, &ring);
        let uri = format!("sip:{number}@{};transport=tcp", node.sip);
        self.ring_sip(
            now,
            ctx,
            target.clone(),
            uri,
            None,
            None,
            None,
            role,
            origin.clone(),
            Some((&node.node, header)),
        )
        .unwrap_or(0)
    }

    fn ring_operator(&mut self, op: &str, target: Target, role: Role, origin: Origin) {
        let key = self.leg_key();
        let invited_by = match &origin {
            Origin::Added { by: Some(b), .. } => {
                self.parties.get(b).and_then(|p| p.op()).map(String::from)
            }
            _ => None,
        };
        self.parties.insert(
            key,
            Party::new(
                role,
                Leg::Operator(OperatorLeg {
                    op: op.to_string(),
                    reference: None,
                    answered: false,
                    self_held: false,
                    invited_by,
                }),
                origin,
                Some(target),
            ),
        );
        let msg = self.incoming_for(op);
        self.send_operator(op, msg);
    }

    /// Rings a SIP target through `trunk`'s peer `attempt` (default: the first
    /// that answers pings).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ring_sip_at(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: Target,
        uri: String,
        trunk: Option<usize>,
        attempt: Option<usize>,
        role: Role,
        origin: Origin,
    ) -> Result<usize, u16> {
        self.ring_sip(
            now, ctx, target, uri, trunk, attempt, None, role, origin, None,
        )
    }

    /// Rings operator `phone.0`'s registered phone at `uri`, through the
    /// address its REGISTER came from (`phone.1`: behind NAT, not the
    /// Contact's host).
    #[allow(clippy::too_many_arguments)]
    fn ring_sip_via(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        target: Target,
        uri: String,
        phone: Option<(&str, Peer)>,
        role: Role,
        origin: Origin,
    ) -> Result<usize, u16> {
        self.ring_sip(now, ctx, target, uri, None, None, phone, role, origin, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn ring_sip(
        &mut self,
        _now: Instant,
        ctx: &mut CallCtx<'_>,
        target: Target,
        uri: String,
        trunk: Option<usize>,
        attempt: Option<usize>,
        phone: Option<(&str, Peer)>,
        role: Role,
        origin: Origin,
        node: Option<(&str, String)>,
    ) -> Result<usize, u16> {
        let Some(port) = ctx.ports.take() else {
            return Err(503);
        };
        // A SIP URI's headers go in the request (RFC 3261 19.1.5): a Refer-To
        // with `Replaces` (RFC 3891 section 5) is the one we take.
        let (uri, replaces) = match crate::sip::dialog::replaces::split_refer_to(&uri) {
            Ok((base, r)) => (base, r),
            Err(_) => (uri, None),
        };
        // The trunk's codecs in its order, those the caller can take first, so
        // that the two sides can relay: every codec of the caller's offer while
        // our answer to it is open, else the one it uses.
        let mut codecs = offer_codecs(ctx, trunk);
        let caller_takes = self.caller_codecs(&codecs);
        codecs.sort_by_key(|c| !caller_takes.contains(c)); // stable: keeps the trunk's order
        let attempt = attempt
            .unwrap_or_else(|| trunk.map_or(0, |t| ctx.live_peer.get(t).copied().unwrap_or(0)));
        let peer = match (phone, trunk) {
            (Some((_, p)), _) => Some(p),
            (None, Some(t)) => ctx.cfg.trunks[t].peer(attempt),
            (None, None) => sip_target_peer(&uri),
        };
        let Some(peer) = peer else {
            ctx.ports.give(port);
            return Err(404);
        };
        let ipv6 = peer.addr.ip().to_canonical().is_ipv6();
        let local = LocalMedia::rtp(ctx.cfg.media_ip_for(ipv6), port, ctx.rng.next_u64() >> 12);
        let offer = sdp::create_offer(&caps_for(&codecs), &local).to_string();
        // A party added to a live call sees our number; a plan's target the
        // caller (inbound) or our number (an operator's dial).
        let caller_id = match (&origin, self.direction) {
            (Origin::Plan(_), Direction::Inbound) => self.from.clone(),
            _ => self
                .number
                .as_ref()
                .and_then(|n| ctx.cfg.number(n))
                .map_or(self.from.clone(), |n| n.e164.clone()),
        };
        let host = ctx.local_host;
        let trunk_cfg = trunk.and_then(|t| ctx.cfg.trunks.get(t));
        let late_offer = trunk_cfg.is_some_and(|t| t.late_offer);
        let mut headers = Vec::new();
        // Another node of the cluster (`ring_peer`): its name, and the signed
        // header that proves who rings it.
        let peer_node = node.map(|(name, signed)| {
            headers.push((crate::cluster::PEER_HEADER.to_string(), signed));
            name.to_string()
        });
        if let Some(r) = replaces {
            headers.push(("Replaces".into(), r.to_header()));
        }
        if let Some(d) = trunk_cfg.and_then(|t| t.session_expires) {
            // The UA runs the session timer (RFC 4028) a trunk asks for.
            headers.push(("Session-Expires".into(), d.as_secs().to_string()));
        }
        if trunk_cfg.is_some_and(|t| t.require_100rel) && !late_offer {
            headers.push(("Require".into(), "100rel".into()));
        }
        let params = InviteParams {
            body_type: None,
            contact_params: None,
            // A phone is reached where it registered from, its whole call.
            flow: phone.is_some(),
            request_uri: uri.clone(),
            from: format!(
                "<sip:{}@{host}>",
                if caller_id.is_empty() {
                    "anonymous"
                } else {
                    &caller_id
                }
            ),
            to: format!("<{uri}>"),
            peer,
            // A late-offer trunk offers first, in its 2xx (our offer stays
            // ready as the base of our answer).
            sdp: (!late_offer).then(|| offer.clone().into_bytes()),
            headers,
            credentials: trunk.and_then(|t| ctx.cfg.trunks[t].credentials.clone()),
        };
        let key = self.leg_key();
        self.parties.insert(
            key,
            Party::new(
                role,
                Leg::Sip(SipLeg {
                    state: SipState::Ringing,
                    port,
                    trunk,
                    attempt,
                    local_sdp: offer,
                    sdp_version: 1,
                    negotiated: None,
                    early_media: false,
                    remote_held: false,
                    held_by_us: false,
                    open_offer: None,
                    late_offer,
                    ipv6,
                    operator: phone.map(|(op, _)| op.to_string()),
                    latch_from: match (phone, trunk) {
                        (Some(_), _) => Some(peer.addr.ip()),
                        (None, t) => latch_from(ctx, t, peer.addr.ip()),
                    },
                    peer_node,
                }),
                origin,
                Some(target),
            ),
        );
        self.sip(key, SipAction::Invite(Box::new(params)));
        Ok(1)
    }

    /// Which of `codecs` the SIP caller can take: all those of its offer while
    /// our answer is open, else the one in use; none for other callers.
    pub(super) fn caller_codecs(
        &self,
        codecs: &[media_core::codec::Codec],
    ) -> Vec<media_core::codec::Codec> {
        let Some(s) = self.parties.get(&self.caller).and_then(|p| p.sip()) else {
            return Vec::new();
        };
        let offer = s
            .open_offer
            .as_deref()
            .and_then(|t| SessionDescription::parse(t).ok());
        match offer {
            Some(offer) => {
                let local = LocalMedia::rtp(std::net::Ipv4Addr::UNSPECIFIED.into(), 9, 1);
                codecs
                    .iter()
                    .copied()
                    .filter(|&c| sdp::answer_audio(&offer, &caps_for(&[c]), &local).is_ok())
                    .collect()
            }
            None => s.negotiated.iter().map(|n| n.codec).collect(),
        }
    }

    /// Whether a SIP caller hears our ringback as soon as `step` rings: the
    /// plan (else the caller's trunk) asks for it, or the step rings a target
    /// with no progress of its own to pass on (operators, AI agents).
    fn local_ringback(&self, ctx: &CallCtx<'_>, step: &Step) -> bool {
        let trunk = self
            .parties
            .get(&self.caller)
            .and_then(|p| p.sip())
            .and_then(|s| s.trunk)
            .and_then(|t| ctx.cfg.trunks.get(t))
            .and_then(|t| t.ringback);
        self.plan.ringback.or(trunk).unwrap_or_default() == Ringback::Local
            || step
                .targets
                .iter()
                .any(|t| !matches!(t, Target::Sip(_) | Target::Pstn { .. }))
    }

    /// The caller hears that targets ring. A SIP caller: with `local`, 183 with
    /// our SDP and our ringback; else nothing until a target reports progress
    /// (see `relay_progress`); once answered, only our tone. A dialling operator:
    /// `ringing` and ringback once an operator rings (SIP targets report their
    /// own progress).
    pub(crate) fn caller_ringing(&mut self, now: Instant, local: bool) {
        if self.progress == Progress::Ringback {
            return;
        }
        let caller = self.caller;
        let Some(p) = self.parties.get(&caller) else {
            return;
        };
        let first = self.progress == Progress::None;
        match &p.leg {
            Leg::Sip(s) if s.state != SipState::Ringing => {
                self.progress = Progress::Ringback;
            }
            // No SDP before the 200 to a late-offer caller (the 200 holds our
            // offer, and an offer in a 18x needs a reliable one): a 180, and
            // its phone rings by itself.
            Leg::Sip(s) if s.late_offer && local && first => {
                self.progress = Progress::Relayed { sdp: false };
                self.sip(
                    caller,
                    SipAction::Respond {
                        status: 180,
                        sdp: None,
                        headers: Vec::new(),
                    },
                );
                self.event(now, CallEventKind::Ringing, None, None, None);
            }
            Leg::Sip(s) if s.late_offer => {}
            Leg::Sip(s) if local => {
                let sdp = s.local_sdp.clone();
                self.progress = Progress::Ringback;
                if let Some(s) = self.parties.get_mut(&caller).and_then(|p| p.sip_mut()) {
                    s.open_offer = None;
                }
                self.sip(
                    caller,
                    SipAction::Respond {
                        status: 183,
                        sdp: Some(sdp),
                        headers: Vec::new(),
                    },
                );
                if first {
                    self.event(now, CallEventKind::Ringing, None, None, None);
                }
            }
            Leg::Operator(o) => {
                let op = o.op.clone();
                let operator_ringing = self
                    .parties
                    .values()
                    .any(|p| p.ringing() && p.operator().is_some());
                if operator_ringing {
                    self.progress = Progress::Ringback;
                    self.send_ringing(&op, false);
                    if first {
                        self.event(now, CallEventKind::Ringing, None, None, None);
                    }
                }
            }
            _ => {}
        }
    }

    /// Tells the dialling operator its call rings. Nothing about a call goes out
    /// before the dial's `answer` names it (protocol.md section 3), and the far
    /// end's 183 can beat the media task's SDP answer: then it waits for it.
    pub(crate) fn send_ringing(&mut self, op: &str, early_media: bool) {
        let answered = self
            .parties
            .get(&self.caller)
            .and_then(|p| p.operator())
            .is_some_and(|o| o.answered);
        if !answered {
            self.ringing_deferred = Some(early_media);
            return;
        }
        let msg = ServerMessage::Ringing {
            call_id: self.id.to_string(),
            early_media,
        };
        self.send_operator(op, msg);
    }

    /// No step is left: the caller gets the outcome.
    pub(crate) fn plan_exhausted(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let d = self.dial().cloned().unwrap_or_default();
        let status = if self.answered_at.is_some() {
            // Someone (an agent) talked to the caller before the plan ran out.
            DialStatus::Completed
        } else if d.busy {
            DialStatus::Busy
        } else if d.fail_code.is_some() && !self.rung.is_empty() && d.deadline.is_none() {
            DialStatus::Failed
        } else {
            DialStatus::NoAnswer
        };
        let code = match status {
            DialStatus::Busy => Some(486),
            DialStatus::Failed => d.fail_code,
            _ => None,
        };
        let reason = match status {
            DialStatus::Busy => EndReason::Busy,
            DialStatus::Failed => EndReason::Failed,
            _ => EndReason::NoAnswer,
        };
        self.end_call(now, ctx, status, reason, code);
    }

    /// The step rang out.
    pub(crate) fn step_timed_out(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let keys: Vec<LegKey> = self
            .parties
            .keys()
            .copied()
            .filter(|k| *k != self.caller)
            .collect();
        for k in keys {
            self.drop_ringing(now, ctx, k, EndReason::NoAnswer);
        }
        let Some(d) = self.dial() else { return };
        d.step += 1;
        if d.step >= self.plan.steps.len() {
            return self.plan_exhausted(now, ctx);
        }
        if let Some(d) = self.dial() {
            d.deadline = None;
        }
        self.start_step(now, ctx);
    }

    /// Ends a party that still rings: a SIP leg is cancelled (its port is ours
    /// until the UA reports it gone), an operator is told `reason`, an agent
    /// dropped.
    pub(crate) fn drop_ringing(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        reason: EndReason,
    ) {
        if !self.parties.get(&key).is_some_and(|p| p.ringing()) {
            return;
        }
        let Some(p) = self.parties.remove(&key) else {
            return;
        };
        let name = super::reason_name(reason);
        match &p.leg {
            Leg::Sip(s) if s.state == SipState::Ending => ctx.ports.give(s.port),
            Leg::Sip(s) => {
                let action = if reason == EndReason::TakenByOther {
                    SipAction::HangupElsewhere
                } else {
                    SipAction::Hangup
                };
                self.sip(key, action);
                self.ending.insert(key, s.port);
                if p.in_media {
                    self.media(MediaCommand::Remove { leg: key });
                }
            }
            Leg::Operator(o) => {
                let msg = ServerMessage::Ended {
                    call_id: self.id.to_string(),
                    reason,
                    code: None,
                    message: None,
                    reference: o.waiting_ref(),
                };
                self.send_operator(&o.op, msg);
                if p.in_media {
                    self.media(MediaCommand::Remove { leg: key });
                }
            }
            Leg::Agent => self.media(MediaCommand::Remove { leg: key }),
            Leg::Echo | Leg::Tone(_) => {}
        }
        self.record_left(now, key, &p, name);
        if matches!(p.origin, Origin::Added { .. }) {
            self.tell_left(now, ctx, key, name);
        }
    }

    /// Plan targets of the dial's step still ringing.
    pub(crate) fn ringing_in_step(&self) -> usize {
        let CallState::Dialing(d) = &self.state else {
            return 0;
        };
        self.parties
            .values()
            .filter(|p| p.origin == Origin::Plan(d.step) && p.ringing())
            .count()
    }

    /// A plan target rang out, was rejected or failed: if its step has nothing
    /// left ringing, the next one starts.
    pub(crate) fn after_target_gone(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        if !matches!(self.state, CallState::Dialing(_)) || self.ringing_in_step() > 0 {
            return;
        }
        if let Some(d) = self.dial() {
            d.step += 1;
            d.deadline = None;
        }
        self.start_step(now, ctx);
    }

    /// Party `key` answered: the first answer of a dial wins it (the call is
    /// connected, the others rung are told `taken_by_other`); an added party
    /// joins the live call.
    pub(crate) fn answered(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey) {
        let Some(p) = self.parties.get(&key) else {
            return;
        };
        if let Origin::Added { by, reference, .. } = p.origin.clone() {
            return self.add_joined(now, ctx, key, by, reference);
        }
        if key == self.caller {
            // Only the API's call has a caller that answers.
            return self.originator_answered(now, ctx);
        }
        // In a `join = "all"` step the others rung keep ringing until the
        // step's timeout and join as they answer; else they lose.
        let all = match p.origin {
            Origin::Plan(n) => self.plan.steps.get(n).is_some_and(|s| s.join == Join::All),
            _ => false,
        };
        let deadline = match &self.state {
            CallState::Dialing(d) => d.deadline,
            _ => None,
        };
        let step_records = match p.origin {
            Origin::Plan(n) => self.plan.steps.get(n).is_some_and(|s| s.record),
            _ => false,
        };
        self.state = CallState::Connected;
        // A caller handed on (an agent's transfer) keeps its first answer time.
        self.answered_at.get_or_insert(now);
        self.answered_by = Some(p.label());
        let others: Vec<LegKey> = self
            .parties
            .keys()
            .copied()
            .filter(|k| *k != key && *k != self.caller)
            .collect();
        for k in others {
            if !matches!(
                self.parties.get(&k).map(|p| &p.origin),
                Some(Origin::Plan(_))
            ) {
                continue;
            }
            match deadline.filter(|_| all) {
                Some(deadline) => {
                    self.adds += 1;
                    let group = self.adds;
                    if let Some(p) = self.parties.get_mut(&k).filter(|p| p.ringing()) {
                        p.origin = Origin::Added {
                            by: None,
                            reference: None,
                            deadline,
                            group,
                        };
                    }
                }
                None => self.drop_ringing(now, ctx, k, EndReason::TakenByOther),
            }
        }
        if let Some(op) = self
            .parties
            .get(&key)
            .and_then(|p| p.busy_operator())
            .map(String::from)
        {
            self.push(CallOutput::Busy { op });
        }
        self.record_joined(now, ctx, key);
        let caller = self.caller;
        match self.parties.get(&caller).map(|p| &p.leg) {
            Some(Leg::Sip(_)) => self.answer_caller(caller),
            Some(Leg::Operator(o)) if o.answered => {
                let op = o.op.clone();
                self.connected_to(now, ctx, caller, &op);
            }
            _ => {}
        }
        // A winning operator hears `connected` once its SDP answer is out.
        if let Some(Leg::Operator(o)) = self.parties.get(&key).map(|p| &p.leg)
            && o.answered
        {
            let op = o.op.clone();
            self.connected_to(now, ctx, key, &op);
        }
        self.event(
            now,
            CallEventKind::Answered,
            Some(DialStatus::Answered),
            None,
            None,
        );
        // The plan records from the answer (the whole plan, or this step),
        // and forks.
        if self.recording_state().is_none() && (self.plan.record.is_some() || step_records) {
            let o = self.plan.record.unwrap_or_default();
            let _ = self.start_recording(now, ctx, o, super::record::Asker::Plan);
        }
        if let Some(o) = self.plan.fork.clone()
            && self.fork_ids().is_empty()
        {
            let _ = self.start_fork(now, ctx, &o, super::record::Asker::Plan);
        }
    }

    /// `connected`, then the participants, to the operator of party `key`.
    pub(crate) fn connected_to(&mut self, now: Instant, ctx: &CallCtx<'_>, key: LegKey, op: &str) {
        self.send_operator(
            op,
            ServerMessage::Connected {
                call_id: self.id.to_string(),
            },
        );
        self.send_participants(now, ctx, key);
        // One who joins a call being recorded hears so (a transfer's target,
        // an added operator, a supervisor).
        if let Some((id, paused)) = self.recording_state() {
            let msg = ServerMessage::Recording {
                call_id: self.id.to_string(),
                recording_id: id.to_string(),
                status: if paused { "paused" } else { "in-progress" },
                reference: None,
            };
            self.send_operator(op, msg);
        }
    }

    /// The answered AI agent `leg` leaves but the caller stays: ringback
    /// again, then `next` (a transfer) or the plan's next step.
    pub(crate) fn hand_on(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        leg: LegKey,
        next: Option<Target>,
    ) {
        let Some(p) = self.parties.remove(&leg) else {
            return;
        };
        self.media(MediaCommand::Remove { leg });
        self.record_left(now, leg, &p, "transferred");
        let step = match p.origin {
            Origin::Plan(n) => n,
            _ => 0,
        };
        if let Some(t) = next {
            self.plan.steps.insert(
                (step + 1).min(self.plan.steps.len()),
                Step::new(vec![t], std::time::Duration::from_secs(30)),
            );
        }
        self.state = CallState::Dialing(Dial::at(step + 1));
        self.start_step(now, ctx);
    }

    /// An operator went offline: what rings it ends with `reason`.
    pub fn handle_operator_offline(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        op: &str,
        reason: EndReason,
    ) {
        if let Some(key) = self.party_of(op)
            && self.parties.get(&key).is_some_and(|p| p.ringing())
        {
            let added = matches!(
                self.parties.get(&key).map(|p| &p.origin),
                Some(Origin::Added { .. })
            );
            if added {
                self.add_failed(now, ctx, key, "offline", None);
            } else if key == self.caller {
                self.originator_failed(now, ctx, DialStatus::Failed, reason, None);
            } else {
                self.drop_ringing(now, ctx, key, reason);
                self.after_target_gone(now, ctx);
            }
        }
        self.settle(now, ctx);
    }

    /// An operator is gone for good (its grace period ran out): what rings it
    /// ends, and it leaves the call it was in.
    pub fn handle_operator_gone(&mut self, now: Instant, ctx: &mut CallCtx<'_>, op: &str) {
        self.handle_operator_offline(now, ctx, op, EndReason::Offline);
        if let Some(key) = self.party_of(op)
            && self.parties.get(&key).is_some_and(|p| p.joined())
        {
            // No presence mark to clear: it is gone.
            self.leave(now, ctx, key, EndReason::Offline, false);
        }
        self.settle(now, ctx);
    }

    /// Party `key` leaves: its leg ends (BYE, `ended`, the agent's socket), the
    /// others hear of it, and the call goes on if someone is left to talk to.
    /// `free`: clear the operator's busy mark.
    pub(crate) fn leave(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        reason: EndReason,
        free: bool,
    ) {
        self.leave_as(now, ctx, key, reason, free, super::reason_name(reason));
    }

    /// [`Self::leave`], with the reason its record and events give (`name`).
    pub(crate) fn leave_as(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        reason: EndReason,
        free: bool,
        name: &'static str,
    ) {
        let Some(p) = self.parties.remove(&key) else {
            return;
        };
        match &p.leg {
            Leg::Sip(s) => {
                if s.state != SipState::Ending {
                    self.sip(key, SipAction::Hangup);
                }
                ctx.ports.give(s.port);
                self.media(MediaCommand::Remove { leg: key });
                if let Some(op) = s
                    .operator
                    .clone()
                    .filter(|_| free && p.stage == Stage::Joined)
                {
                    self.push(CallOutput::Free { op });
                }
            }
            Leg::Operator(o) => {
                let msg = ServerMessage::Ended {
                    call_id: self.id.to_string(),
                    reason,
                    code: None,
                    message: (reason == EndReason::Failed).then(|| "media lost".to_string()),
                    reference: o.waiting_ref(),
                };
                self.send_operator(&o.op, msg);
                if free && p.stage == Stage::Joined {
                    self.push(CallOutput::Free { op: o.op.clone() });
                }
                if p.in_media {
                    self.media(MediaCommand::Remove { leg: key });
                }
            }
            Leg::Agent => self.media(MediaCommand::Remove { leg: key }),
            Leg::Echo | Leg::Tone(_) => {}
        }
        self.record_left(now, key, &p, name);
        self.tell_left(now, ctx, key, name);
        self.after_leave(now, ctx, key);
    }

    /// After party `key` left: a caller leaving an unanswered call ends it; a
    /// connected call ends when fewer than two parties who keep it alive are
    /// left in it (see [`Call::after_alone`]).
    pub(crate) fn after_leave(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey) {
        self.transfer_party_left(now, ctx, key);
        match self.state {
            CallState::Routing { .. } | CallState::Dialing(_) if key == self.caller => {
                self.end_call(
                    now,
                    ctx,
                    DialStatus::Canceled,
                    EndReason::RemoteHangup,
                    None,
                );
            }
            _ => self.after_alone(now, ctx),
        }
    }

    /// A connected call ends when fewer than two parties who keep it alive
    /// (everyone but silent or whispering supervisors) are left in it: one
    /// party alone has nobody to talk to, and a party still ringing to join is
    /// not in it yet (it stops ringing).
    pub(crate) fn after_alone(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        if !self.is_connected() {
            return;
        }
        let full = self
            .parties
            .values()
            .filter(|p| p.joined() && p.keeps_alive())
            .count();
        // A room waits for the next caller while someone is in it; a
        // transfer's target still ringing is awaited.
        if full < if self.room { 1 } else { 2 } && !self.transfer_pending() {
            self.end_call(
                now,
                ctx,
                DialStatus::Completed,
                EndReason::RemoteHangup,
                None,
            );
        }
    }
}

impl OperatorLeg {
    /// The `ref` of the request this leg still owes an `answer` to.
    pub(crate) fn waiting_ref(&self) -> Option<String> {
        if self.answered {
            None
        } else {
            self.reference.clone()
        }
    }
}

/// What we offer a SIP peer: its trunk's codecs in their order, or all ours.
pub(crate) fn offer_codecs(
    ctx: &CallCtx<'_>,
    trunk: Option<usize>,
) -> Vec<media_core::codec::Codec> {
    let codecs = trunk
        .and_then(|t| ctx.cfg.trunks.get(t))
        .map(|t| t.codecs.clone())
        .unwrap_or_default();
    if codecs.is_empty() {
        use media_core::codec::Codec;
        vec![Codec::Pcmu, Codec::Pcma, Codec::Opus]
    } else {
        codecs
    }
}

pub(crate) fn caps_for(codecs: &[media_core::codec::Codec]) -> sdp::AudioCaps {
    use media_core::codec::Codec;
    use media_core::rtp::PayloadType;
    let mut caps = sdp::AudioCaps::standard();
    if !codecs.is_empty() {
        let pt = |c: Codec| match c {
            Codec::Pcmu => PayloadType::PCMU,
            Codec::Pcma => PayloadType::new(8).unwrap_or(PayloadType::PCMU),
            _ => PayloadType::new(111).unwrap_or(PayloadType::PCMU),
        };
        caps.codecs = codecs
            .iter()
            .map(|&c| sdp::AudioCodecPref {
                codec: c,
                payload_type: pt(c),
            })
            .collect();
    }
    caps
}

pub(crate) fn format_of(n: &sdp::NegotiatedAudio) -> media_core::pipeline::RtpFormat {
    media_core::pipeline::RtpFormat {
        codec: n.codec,
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        ptime: media_core::Millis(n.remote_ptime.0.clamp(10, 60)),
        opus: n.opus,
    }
}

/// The user part of a SIP URI or name-addr (`"A" <sip:+1555@h>;tag=x` -> `+1555`).
/// The SIP address a leg's media may latch to besides its SDP's: a trunk's
/// when it is set to `Latch::Signalling`; any caller's from no trunk (phones,
/// open inbound).
fn latch_from(
    ctx: &CallCtx<'_>,
    trunk: Option<usize>,
    ip: std::net::IpAddr,
) -> Option<std::net::IpAddr> {
    match trunk.and_then(|t| ctx.cfg.trunks.get(t)) {
        Some(t) if t.latch == crate::config::Latch::Strict => None,
        _ => Some(ip),
    }
}

/// Whether an operator rings on its phones while its browser rings too
/// (`[registrar] ring_both`).
fn ring_both(ctx: &CallCtx<'_>) -> bool {
    ctx.phones.is_none_or(|r| r.config().ring_both)
}

pub(crate) fn user_of(v: &str) -> String {
    let uri = crate::sip::message::header_uri(v);
    let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
    rest.split(['@', ';', '>']).next().unwrap_or("").to_string()
}

fn display_name_of(v: &str) -> Option<String> {
    let v = v.trim();
    let name = v.split('<').next()?.trim().trim_matches('"').trim();
    (!name.is_empty() && v.contains('<'))
        .then(|| name.chars().filter(|c| !c.is_control()).take(64).collect())
}

pub(crate) fn sip_target_peer(uri: &str) -> Option<Peer> {
    let u: rsipstack::sip::Uri = uri.parse().ok()?;
    let host = u.host_with_port.host.to_string();
    let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    let port = u.host_with_port.port.map_or(5060, |p| p.value().to_owned());
    let tcp = uri.to_ascii_lowercase().contains("transport=tcp");
    Some(Peer {
        transport: if tcp {
            crate::sip::message::Transport::Tcp
        } else {
            crate::sip::message::Transport::Udp
        },
        addr: std::net::SocketAddr::new(ip, port),
        conn: None,
    })
}
