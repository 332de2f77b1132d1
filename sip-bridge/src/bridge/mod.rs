//! The control plane's router (quinn's `Endpoint` to each call's
//! `Connection`): it owns what calls share (the SIP UA, operators' signalling
//! sessions and presence, the RTP port pool, trunk health), routes every input
//! to the call it concerns, and applies what the call asks for. It holds no
//! per-call logic: that is [`crate::call::Call`]'s.
//!
//! Why one owner for control: SIP dialogs share one UA (one socket, Call-ID
//! routing) and operators are shared by calls (presence, busy marks), so keeping
//! every call next to them needs no locks and keeps races (two accepts in one
//! tick, accept against the caller's CANCEL) deterministic: they are handled in
//! arrival order. Control costs microseconds per call; media, the expensive
//! part, runs in parallel per call.
//!
//! Inputs: [`Bridge::handle_sip`], [`Bridge::handle_ws_open`] /
//! [`Bridge::handle_ws_text`] / [`Bridge::handle_ws_closed`],
//! [`Bridge::handle_media_event`], [`Bridge::handle_route`],
//! [`Bridge::handle_timeout`]. Outputs: [`Bridge::poll_sip_transmit`],
//! [`Bridge::poll_ws_output`], [`Bridge::poll_media_command`],
//! [`Bridge::poll_route_request`], [`Bridge::poll_event`].

mod admit;
mod api;
mod operators;
mod phones;
mod trunks;

pub use crate::call::{
    ApiError, ApiErrorCode, CallEvent, CallEventKind, Direction, MonitorMode, PartyRecord,
    PartyUpdate, PortPool, PortProbe, PortStats, QualityReport, ROUTE_TIMEOUT, RecordingReport,
    RecordingStatus, Role, RouteDecision, RouteFacts, StatusCallback, TransferReport, TransferStep,
};
pub use crate::config::{
    BridgeConfig, Cidr, DtmfMode, NumberConfig, StreamTarget, TransferMode, TrunkConfig,
};
pub use crate::contract::{
    CallId, Feed, FeedSource, LegKey, Level, MediaCommand, MediaEvent, RtcpQuality, Tone,
};
pub use crate::plan::{
    DialPlan, DialStatus, Join, Ringback, Step, Target, TargetError, parse_duration,
};
pub use admit::{Load, Origin, RETRY_AFTER_SECS, Refusal, admit};
pub use api::{ApiReply, ApiRequest, Originate};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use media_core::{Instant, SeededRng};

use crate::call::{Call, CallCtx, CallOutput, SipAction, SipLegEvent};
use crate::presence::{Presence, PresenceEvent, SessionId};
use crate::registrar::{RegisterReply, Registrar, RegistrarEvent};
use crate::signalling::{NumberInfo, Request, ServerMessage, Session, SessionOutput};
use crate::sip::dialog::{LegId, LocalAddr, RegisterParams, UaConfig, UaError, UaEvent, UserAgent};
use crate::sip::message::Peer;
use crate::sip::transaction::Transmit;
use crate::token::TokenIssuer;
use trunks::Trunks;

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeStats {
    /// Calls started, by direction.
    pub calls_inbound: u64,
    /// Calls dialled by operators.
    pub calls_outbound: u64,
    /// Calls refused at the limit.
    pub calls_rejected_capacity: u64,
    /// Forks of other nodes' calls taken in (see [`crate::cluster`]).
    pub peer_calls: u64,
    /// INVITEs claiming to be a node's that were refused (403): bad or stale
    /// signature, or not from a live node's address.
    pub peer_refused: u64,
    /// Records for the shared store dropped because the driver did not take
    /// them ([`Bridge::poll_cluster_out`]).
    pub cluster_out_dropped: u64,
    /// Forks of calls whose owner node died, ended ([`Bridge::node_lost`]).
    pub peer_calls_orphaned: u64,
    /// Calls whose owner died carried on here ([`Bridge::handle_reanchor`]).
    pub calls_reanchored: u64,
    /// Calls whose owner died that could not be carried on (no anchor, or
    /// it was refused): ended cleanly.
    pub calls_lost: u64,
    /// Calls ended, by outcome (index: [`DialStatus`] order).
    pub ended: [u64; 6],
}

/// What wakes the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A signalling session's heartbeat or hello deadline.
    Session(SessionId),
    /// A trunk's OPTIONS ping.
    Ping(usize),
    /// A call's own timers ([`Call::poll_timeout`]).
    Call(CallId),
}

/// Ended calls remembered for their quality reports.
const ENDED_KEPT: usize = 1024;

/// The control plane. See the module docs.
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    ua: UserAgent,
    /// Phones' registrations, when phones are configured.
    registrar: Option<Registrar>,
    /// What they did, for the driver (logs).
    phone_out: VecDeque<RegistrarEvent>,
    /// Keep-alives in flight to phones: (operator, contact).
    phone_pings: HashMap<crate::sip::dialog::PingId, (String, String)>,
    /// Phones' requests waiting for the backend to say who they are.
    parked: Vec<(String, Instant, phones::Parked)>,
    presence: Presence,
    tokens: TokenIssuer,
    sessions: BTreeMap<SessionId, Session>,
    calls: BTreeMap<CallId, Call>,
    /// SIP legs to their call and party, and back.
    sip_legs: HashMap<LegId, (CallId, LegKey)>,
    call_legs: HashMap<(CallId, LegKey), LegId>,
    ports: PortPool,
    trunks: Trunks,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// When each call's timer is set for (to push each deadline once).
    call_due: HashMap<CallId, Instant>,
    /// The live call of each meet-me room number.
    rooms: HashMap<String, CallId>,
    /// Calls that ended lately, as a quality report about them would say them
    /// (the SDK sends its report just after `ended`), with their operators.
    ended: VecDeque<(CallEvent, Vec<String>)>,
    ws_out: VecDeque<(SessionId, SessionOutput)>,
    media_out: VecDeque<(CallId, MediaCommand)>,
    routes_out: VecDeque<RouteFacts>,
    events: VecDeque<CallEvent>,
    rng: SeededRng,
    next_call: u64,
    unix_base: u64,
    local_host: String,
    draining: bool,
    /// The other nodes of a cluster, as the driver last read them.
    peers: crate::cluster::Peers,
    /// Calls from a proxy still ringing, with their record's key (cluster).
    ringing: HashMap<CallId, String>,
    /// Records for the driver to write to the shared store (bounded).
    cluster_out: VecDeque<crate::cluster::ClusterOut>,
    /// Connected calls anchored on another node: (node, key, the caller's
    /// dialog as last written).
    anchored: HashMap<CallId, (String, String, crate::sip::dialog::snapshot::DialogSnapshot)>,
    /// Calls whose owner died, waiting for its anchor.
    reanchoring: std::collections::HashSet<CallId>,
    stats: BridgeStats,
}

fn status_index(s: DialStatus) -> usize {
    match s {
        DialStatus::Completed => 0,
        DialStatus::Answered => 1,
        DialStatus::Busy => 2,
        DialStatus::NoAnswer => 3,
        DialStatus::Failed => 4,
        DialStatus::Canceled => 5,
    }
}

impl Bridge {
    /// A bridge with `cfg`, speaking SIP as `local` and signing tokens with `tokens`.
    /// `unix_base` is the Unix time (seconds) at driver time zero, for token checks.
    pub fn new(cfg: BridgeConfig, local: LocalAddr, tokens: TokenIssuer, unix_base: u64) -> Self {
        let local_host = local.host.clone();
        let mut ua_cfg = UaConfig::new(local, cfg.seed);
        ua_cfg.max_legs = cfg.max_calls * 4;
        // Phones in the config, or asked of the customer's backend.
        let phones = !cfg.phones.is_empty() || cfg.registrar.lookup_ttl.is_some();
        ua_cfg.registrar = phones;
        let mut rng = SeededRng::new(cfg.seed ^ 0xb41d);
        let registrar = phones.then(|| {
            let mut secret = [0u8; 32];
            for c in secret.chunks_mut(8) {
                c.copy_from_slice(&rng.next_u64().to_be_bytes());
            }
            Registrar::new(cfg.registrar.clone(), cfg.phones.clone(), secret)
        });
        Bridge {
            registrar,
            phone_out: VecDeque::new(),
            phone_pings: HashMap::new(),
            parked: Vec::new(),
            ua: UserAgent::new(ua_cfg),
            presence: Presence::new(cfg.grace, cfg.max_operators),
            tokens,
            sessions: BTreeMap::new(),
            calls: BTreeMap::new(),
            sip_legs: HashMap::new(),
            call_legs: HashMap::new(),
            ports: PortPool::new(cfg.rtp_ports.0, cfg.rtp_ports.1),
            trunks: Trunks::new(&cfg.trunks),
            timers: BinaryHeap::new(),
            call_due: HashMap::new(),
            rooms: HashMap::new(),
            ended: VecDeque::new(),
            ws_out: VecDeque::new(),
            media_out: VecDeque::new(),
            routes_out: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            next_call: 1,
            unix_base,
            local_host,
            draining: false,
            peers: Default::default(),
            ringing: HashMap::new(),
            cluster_out: VecDeque::new(),
            anchored: HashMap::new(),
            reanchoring: Default::default(),
            stats: BridgeStats::default(),
            cfg,
        }
    }

    /// Starts trunk registrations and health pings.
    pub fn start(&mut self, now: Instant) {
        for (i, t) in self.cfg.trunks.iter().enumerate() {
            if let (Some(aor), Some(peer)) = (&t.register, t.peer(0)) {
                self.ua.register(
                    now,
                    RegisterParams {
                        registrar: format!("sip:{}", t.host),
                        aor: aor.clone(),
                        expires: Duration::from_secs(600),
                        peer,
                        credentials: t.credentials.clone(),
                    },
                );
            }
            if t.ping_interval.is_some() {
                self.timers.push(Reverse((now, Timer::Ping(i))));
            }
        }
    }

    /// The UA (for tests and counters).
    pub fn ua(&self) -> &UserAgent {
        &self.ua
    }

    /// Presence (for tests and counters).
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Calls in progress.
    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// Ids of calls in progress.
    pub fn call_ids(&self) -> Vec<CallId> {
        self.calls.keys().copied().collect()
    }

    /// Parties of a call in progress (ringing or joined).
    pub fn parties(&self, id: CallId) -> Option<usize> {
        self.calls.get(&id).map(Call::parties)
    }

    /// Signalling connections open.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// RTP ports in use.
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    /// The RTP port range and what its pool skipped or could not give.
    pub fn port_stats(&self) -> ((u16, u16), PortStats) {
        (self.ports.range(), self.ports.stats())
    }

    /// Installs the check that an RTP port is really free before a leg gets it
    /// (the embedder binds it; see [`PortProbe`]).
    pub fn set_port_probe(&mut self, probe: Box<dyn PortProbe>) {
        self.ports.set_probe(probe);
    }

    /// Counters.
    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }

    /// Whether trunk `i`'s peer `p` answers its pings.
    pub fn peer_up(&self, trunk: usize, peer: usize) -> bool {
        self.trunks.peer_up(trunk, peer)
    }

    /// Stops taking new calls (shutdown): inbound INVITEs get 503 and operators'
    /// dials an error; calls in progress go on.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
        self.ua.set_draining(on);
    }

    /// The other nodes of a cluster and who is ready on each (the driver's
    /// last read of them); calls ring them from now on. Ignored without
    /// [`BridgeConfig::peer_key`].
    pub fn set_peers(&mut self, peers: crate::cluster::Peers) {
        if self.cfg.peer_key.is_some() {
            self.peers = peers;
        }
    }

    /// The other nodes of a cluster ([`Self::set_peers`]).
    pub fn peers(&self) -> &crate::cluster::Peers {
        &self.peers
    }

    /// What the other nodes need to ring operators here: numbers with one
    /// ready, and those ready (see [`Presence::ready_summary`]).
    pub fn ready_summary(&self) -> (Vec<String>, Vec<String>) {
        self.presence.ready_summary(crate::cluster::MAX_READY)
    }

    /// Ends every call (shutdown past its deadline): BYE, CANCEL or a final
    /// response on the SIP side, `ended` for operators.
    pub fn end_all(&mut self, now: Instant) {
        for id in self.call_ids() {
            self.drive(now, id, |c, ctx| c.end(now, ctx));
        }
        self.pump(now);
    }

    /// The numbers a token allows, for `GET /v1/numbers`.
    pub fn numbers_for(&self, ids: &[String]) -> Vec<NumberInfo> {
        self.cfg
            .numbers
            .iter()
            .filter(|n| ids.contains(&n.id))
            .map(|n| NumberInfo {
                id: n.id.clone(),
                e164: n.e164.clone(),
                name: n.name.clone(),
            })
            .collect()
    }

    /// The token issuer (the HTTP layer issues tokens with it).
    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    // ----- inputs -----

    /// A SIP datagram or framed stream message.
    pub fn handle_sip(&mut self, now: Instant, bytes: &[u8], from: Peer) {
        self.ua.handle_bytes(now, bytes, from);
        self.pump(now);
    }

    /// A new operator WebSocket.
    pub fn handle_ws_open(&mut self, now: Instant, session: SessionId) {
        let s = Session::new(now, self.cfg.session);
        if let Some(t) = s.poll_timeout() {
            self.timers.push(Reverse((t, Timer::Session(session))));
        }
        self.sessions.insert(session, s);
    }

    /// A text frame from an operator WebSocket.
    pub fn handle_ws_text(&mut self, now: Instant, session: SessionId, text: &str) {
        let unix = self.unix_base + now.as_micros() / 1_000_000;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let req = s.handle_text(now, unix, text, &self.tokens);
        if let Some(t) = s.poll_timeout() {
            self.timers.push(Reverse((t, Timer::Session(session))));
        }
        match req {
            Some(Request::Hello(claims)) => self.on_hello(now, session, &claims),
            Some(Request::Message { reference, message }) => {
                self.on_operator_message(now, session, reference, message)
            }
            None => {}
        }
        self.flush_session(session);
        self.pump(now);
    }

    /// A binary frame from an operator WebSocket.
    pub fn handle_ws_binary(&mut self, now: Instant, session: SessionId, len: usize) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.handle_binary(now, len);
        }
        self.flush_session(session);
    }

    /// An operator WebSocket is gone.
    pub fn handle_ws_closed(&mut self, now: Instant, session: SessionId) {
        if self.sessions.remove(&session).is_some() {
            self.presence.disconnect(now, session);
        }
        self.pump(now);
    }

    /// An event from a call's media session.
    pub fn handle_media_event(&mut self, now: Instant, call: CallId, ev: MediaEvent) {
        self.drive(now, call, |c, ctx| c.handle_media(now, ctx, ev));
        self.pump(now);
    }

    /// The router's decision for `call`.
    pub fn handle_route(&mut self, now: Instant, call: CallId, decision: RouteDecision) {
        self.drive(now, call, |c, ctx| c.handle_route(now, ctx, decision));
        self.pump(now);
    }

    /// When [`Bridge::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.peek().map(|Reverse((t, _))| *t),
            self.ua.poll_timeout(),
            self.presence.poll_timeout(),
            self.registrar.as_ref().and_then(Registrar::poll_timeout),
            self.parked
                .iter()
                .map(|(_, at, _)| *at + phones::LOOKUP_WAIT)
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ua.handle_timeout(now);
        self.presence.handle_timeout(now);
        if let Some(r) = self.registrar.as_mut() {
            r.handle_timeout(now);
        }
        self.keep_phones_alive(now);
        self.give_up_lookups(now);
        self.phone_events();
        while let Some(&Reverse((at, t))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::Call(id) => {
                    if self.call_due.get(&id) != Some(&at) {
                        continue; // moved since
                    }
                    self.call_due.remove(&id);
                    self.drive(now, id, |c, ctx| c.handle_timeout(now, ctx));
                }
                Timer::Session(sid) => {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.handle_timeout(now);
                        if let Some(t) = s.poll_timeout().filter(|t| *t > now) {
                            self.timers.push(Reverse((t, Timer::Session(sid))));
                        }
                        self.flush_session(sid);
                    }
                }
                Timer::Ping(i) => {
                    if let Some(next) = self.trunks.ping(now, i, &self.cfg, &mut self.ua) {
                        self.timers.push(Reverse((next, Timer::Ping(i))));
                    }
                }
            }
        }
        self.pump(now);
    }

    // ----- outputs -----

    /// The next SIP message to send.
    pub fn poll_sip_transmit(&mut self) -> Option<Transmit> {
        self.ua.poll_transmit()
    }

    /// The next thing to do on an operator WebSocket.
    pub fn poll_ws_output(&mut self) -> Option<(SessionId, SessionOutput)> {
        self.ws_out.pop_front()
    }

    /// The next command for a call's media session.
    pub fn poll_media_command(&mut self) -> Option<(CallId, MediaCommand)> {
        self.media_out.pop_front()
    }

    /// The next call to route (external routing on).
    pub fn poll_route_request(&mut self) -> Option<RouteFacts> {
        self.routes_out.pop_front()
    }

    /// The next call event.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    // ----- plumbing -----

    /// The calls and, beside them, what a call reads or takes (a split borrow).
    fn split(&mut self) -> (&mut BTreeMap<CallId, Call>, CallCtx<'_>) {
        let Bridge {
            calls,
            cfg,
            presence,
            ports,
            rng,
            local_host,
            trunks,
            unix_base,
            registrar,
            peers,
            ..
        } = self;
        let ctx = CallCtx {
            cfg,
            presence,
            ports,
            rng,
            local_host,
            live_peer: trunks.live_peers(),
            unix_base: *unix_base,
            phones: registrar.as_ref(),
            peers,
        };
        (calls, ctx)
    }

    /// Runs `f` on call `id` (if it is still there) with its context, then
    /// applies what the call asked for.
    fn drive(&mut self, now: Instant, id: CallId, f: impl FnOnce(&mut Call, &mut CallCtx<'_>)) {
        let (calls, mut ctx) = self.split();
        if let Some(c) = calls.get_mut(&id) {
            f(c, &mut ctx);
        }
        self.apply(now, id);
    }

    fn flush_session(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            while let Some(o) = s.poll_output() {
                self.ws_out.push_back((sid, o));
            }
        }
    }

    fn send_operator(&mut self, op: &str, msg: ServerMessage) {
        if let Some(sid) = self.presence.session_of(op)
            && let Some(s) = self.sessions.get_mut(&sid)
        {
            s.send(msg);
            self.flush_session(sid);
        }
    }

    /// Applies what call `id` asks for, in order; drops it once it has ended.
    fn apply(&mut self, now: Instant, id: CallId) {
        while let Some(out) = self.calls.get_mut(&id).and_then(Call::poll_output) {
            match out {
                CallOutput::Sip { leg, action } => self.sip_action(now, id, leg, action),
                CallOutput::Media(cmd) => self.media_out.push_back((id, cmd)),
                CallOutput::Operator { op, msg } => self.send_operator(&op, msg),
                CallOutput::Busy { op } => {
                    let _ = self.presence.set_busy(&op, id);
                }
                CallOutput::Free { op } => self.presence.set_free(&op, id),
                CallOutput::Route(facts) => self.routes_out.push_back(facts),
                CallOutput::Event(ev) => {
                    if ev.kind == CallEventKind::Completed
                        && let Some(s) = ev.status
                    {
                        self.stats.ended[status_index(s)] += 1;
                    }
                    self.events.push_back(ev);
                }
                _ => {}
            }
        }
        self.anchor(id);
        if self.ringing.contains_key(&id)
            && self.calls.get(&id).is_none_or(Call::caller_settled)
            && let Some(key) = self.ringing.remove(&id)
        {
            self.cluster_push(crate::cluster::ClusterOut::Settled { id: key });
        }
        match self.calls.get(&id) {
            Some(c) if c.is_ended() => {
                if self.ended.len() == ENDED_KEPT {
                    self.ended.pop_front();
                }
                self.ended
                    .push_back((c.report(now, CallEventKind::Quality), c.operators()));
                self.calls.remove(&id);
                self.rooms.retain(|_, r| *r != id);
                self.call_due.remove(&id);
                self.call_legs.retain(|(c, _), _| *c != id);
            }
            Some(c) => {
                if let Some(t) = c.poll_timeout()
                    && self.call_due.get(&id) != Some(&t)
                {
                    self.call_due.insert(id, t);
                    self.timers.push(Reverse((t, Timer::Call(id))));
                }
            }
            None => {}
        }
    }

    /// SIP work for party `leg` of call `id`, through the UA.
    fn sip_action(&mut self, now: Instant, id: CallId, leg: LegKey, action: SipAction) {
        if let SipAction::Invite(params) = action {
            match self.ua.invite(now, *params) {
                Ok(ua_leg) => {
                    self.sip_legs.insert(ua_leg, (id, leg));
                    self.call_legs.insert((id, leg), ua_leg);
                }
                Err(_) => {
                    let ev = SipLegEvent::Failed { status: 503 };
                    let (calls, mut ctx) = self.split();
                    if let Some(c) = calls.get_mut(&id) {
                        c.handle_sip(now, &mut ctx, leg, ev);
                    }
                }
            }
            return;
        }
        let Some(&ua_leg) = self.call_legs.get(&(id, leg)) else {
            return;
        };
        let _ = match action {
            SipAction::Respond {
                status,
                sdp,
                headers,
            } => {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.ua
                    .respond(now, ua_leg, status, sdp.as_deref().map(str::as_bytes), &h)
            }
            SipAction::Hangup => self.ua.hangup(now, ua_leg),
            SipAction::HangupElsewhere => self.ua.hangup_elsewhere(now, ua_leg),
            SipAction::Forget => {
                self.ua.forget(now, ua_leg);
                Ok(())
            }
            SipAction::AnswerRefer { status } => self.ua.answer_refer(now, ua_leg, status),
            SipAction::Refer { refer_to } => self.ua.refer(now, ua_leg, &refer_to, true),
            SipAction::Notify {
                status,
                reason,
                last,
            } => self.ua.notify_refer(now, ua_leg, status, &reason, last),
            SipAction::Ack { sdp } => {
                self.ua
                    .ack_with_answer(now, ua_leg, sdp.as_deref().map(str::as_bytes))
            }
            SipAction::Reinvite { sdp } => self.ua.reinvite(now, ua_leg, sdp.into_bytes()),
            SipAction::Update { sdp } => {
                let sdp = sdp.into_bytes();
                match self.ua.update(now, ua_leg, sdp.clone()) {
                    Err(UaError::WrongState(_)) => self.ua.reinvite(now, ua_leg, sdp),
                    done => done,
                }
            }
            SipAction::AnswerOffer { status, sdp } => {
                self.ua
                    .answer_offer(now, ua_leg, status, sdp.as_deref().map(str::as_bytes))
            }
            SipAction::Info { content_type, body } => {
                self.ua.info(now, ua_leg, &content_type, body.as_bytes())
            }
            _ => Ok(()),
        };
    }

    /// Processes everything the UA and presence have to say.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut any = false;
            while let Some(ev) = self.ua.poll_event() {
                any = true;
                self.on_ua_event(now, ev);
            }
            while let Some(ev) = self.presence.poll_event() {
                any = true;
                let PresenceEvent::WentOffline { operator, .. } = ev;
                self.operator_gone(now, &operator);
            }
            if !any {
                break;
            }
        }
    }

    // ----- SIP events -----

    fn on_ua_event(&mut self, now: Instant, ev: UaEvent) {
        let ev = match ev {
            UaEvent::Register { tx, request, from } => {
                return self.on_register(now, tx, &request, from);
            }
            UaEvent::IncomingInvite { leg, request, from } => {
                return self.inbound_call(now, leg, &request, from);
            }
            UaEvent::OptionsResult { ping, status } => {
                if let Some((op, contact)) = self.phone_pings.remove(&ping) {
                    if let Some(r) = self.registrar.as_mut() {
                        r.handle_keepalive_result(&op, &contact, status.is_some());
                    }
                    return self.phone_events();
                }
                return self.trunks.on_ping_result(ping, status);
            }
            other => other,
        };
        let terminated = matches!(ev, UaEvent::Terminated { .. });
        let Some((ua_leg, ev)) = SipLegEvent::from_ua(ev) else {
            return;
        };
        let found = if terminated {
            // The mapping goes whatever happens to the call.
            self.sip_legs.remove(&ua_leg).inspect(|(id, key)| {
                self.call_legs.remove(&(*id, *key));
            })
        } else {
            self.sip_legs.get(&ua_leg).copied()
        };
        let Some((id, key)) = found else {
            return;
        };
        self.drive(now, id, |c, ctx| c.handle_sip(now, ctx, key, ev));
    }

    /// A phone's REGISTER: the registrar answers it, or it is dropped.
    fn on_register(
        &mut self,
        now: Instant,
        tx: crate::sip::transaction::TxId,
        request: &crate::sip::message::Request,
        from: Peer,
    ) {
        let unix_ms = self.unix_base * 1000 + now.as_micros() / 1000;
        let Some(r) = self.registrar.as_mut() else {
            return self.ua.answer_request(now, tx, request, 405, &[]);
        };
        match r.handle_register(now, unix_ms, request, from) {
            RegisterReply::Respond { status, headers } => {
                self.ua.answer_request(now, tx, request, status, &headers)
            }
            RegisterReply::Drop => self.ua.drop_request(tx),
            RegisterReply::Wait { username } => self.park(
                now,
                username,
                phones::Parked::Register {
                    tx,
                    request: Box::new(request.clone()),
                    from,
                },
            ),
        }
        self.phone_events();
    }

    /// Presence follows the phones: an operator whose first phone registered
    /// takes calls on its numbers by phone, until its last one goes.
    fn phone_events(&mut self) {
        let Some(r) = self.registrar.as_mut() else {
            return;
        };
        while let Some(ev) = r.poll_event() {
            match &ev {
                RegistrarEvent::Registered { operator } => {
                    let numbers = r.numbers_of(operator);
                    self.presence.set_phone(operator, &numbers);
                }
                RegistrarEvent::Unregistered { operator, .. } => {
                    self.presence.clear_phone(operator)
                }
                _ => {}
            }
            if self.phone_out.len() < 1024 {
                self.phone_out.push_back(ev);
            }
        }
    }

    /// The registrar (when phones are configured): its bindings and counters.
    pub fn registrar(&self) -> Option<&Registrar> {
        self.registrar.as_ref()
    }

    /// What phones' registrations did (a phone came or went, a ban).
    pub fn poll_phone_event(&mut self) -> Option<RegistrarEvent> {
        self.phone_out.pop_front()
    }

    /// A stream connection (TCP, TLS) closed: the RFC 5626 flows on it end.
    pub fn handle_connection_closed(&mut self, conn: u64) {
        if let Some(r) = self.registrar.as_mut() {
            r.handle_flow_closed(conn);
        }
        self.phone_events();
    }

    fn inbound_call(
        &mut self,
        now: Instant,
        leg: LegId,
        req: &crate::sip::message::Request,
        from: Peer,
    ) {
        if self.cfg.peer_key.is_some()
            && let Some(value) =
                crate::sip::message::SipHeaders::lines(req, crate::cluster::PEER_HEADER).first()
        {
            return self.peer_call(now, leg, req, from, value);
        }
        if self.is_phone_call(req, from) {
            return self.phone_call(now, leg, req, from);
        }
        if let Err(refusal) = self.admission(Origin::Sip(from.addr.ip())) {
            if refusal != Refusal::NotATrunk {
                self.stats.calls_rejected_capacity += 1;
            }
            let _ = self
                .ua
                .respond(now, leg, refusal.status(), None, refusal.headers());
            return;
        }
        let trunk = self.cfg.trunk_for_source(from.addr.ip());
        if let Some(value) = crate::sip::message::SipHeaders::lines(req, "Replaces").first() {
            return self.replacing_call(now, leg, req, from, trunk, value);
        }
        let called = crate::call::user_of(&req.uri.to_string());
        let called = if called.is_empty() {
            crate::call::user_of(crate::sip::message::SipHeaders::header_to(req).unwrap_or(""))
        } else {
            called
        };
        let Some(number) = self.cfg.number(&called).cloned() else {
            let _ = self.ua.respond(now, leg, 404, None, &[]);
            return;
        };
        if number.room
            && let Some(&id) = self.rooms.get(&number.id)
            && self.calls.contains_key(&id)
        {
            let (calls, mut ctx) = self.split();
            let joined = calls.get_mut(&id).map_or(Err(480), |c| {
                c.join_room(now, &mut ctx, req, from.addr.ip(), trunk)
            });
            match joined {
                Ok(key) => {
                    self.sip_legs.insert(leg, (id, key));
                    self.call_legs.insert((id, key), leg);
                    self.apply(now, id);
                }
                Err(status) => {
                    let _ = self.ua.respond(now, leg, status, None, &[]);
                }
            }
            return;
        }
        let id = CallId(self.next_call);
        let call = {
            let (_, mut ctx) = self.split();
            Call::inbound(now, &mut ctx, id, req, from.addr.ip(), trunk, &number)
        };
        match call {
            Ok(call) => {
                if call.is_room() {
                    self.rooms.insert(number.id.clone(), id);
                } else {
                    self.record_ringing(id, req);
                }
                self.start_sip_call(now, id, call, leg);
            }
            Err(status) => {
                let _ = self.ua.respond(now, leg, status, None, &[]);
            }
        }
    }

    /// A call whose caller is SIP leg `leg` starts: it is ours, mapped both
    /// ways, and what it asked for is done.
    fn start_sip_call(&mut self, now: Instant, id: CallId, call: Call, leg: LegId) {
        self.next_call += 1;
        self.stats.calls_inbound += 1;
        let caller = call.caller();
        self.calls.insert(id, call);
        self.sip_legs.insert(leg, (id, caller));
        self.call_legs.insert((id, caller), leg);
        self.apply(now, id);
    }

    /// In a cluster, a call from a proxy that rings here is recorded so that
    /// a survivor can send the proxy a 503 for it if this node dies (see
    /// [`crate::cluster::ClusterOut::Ringing`]).
    fn record_ringing(&mut self, id: CallId, req: &crate::sip::message::Request) {
        use crate::sip::message::SipHeaders;
        if self.cfg.peer_key.is_none() {
            return;
        }
        let Some(to) = crate::cluster::response_target(req) else {
            return;
        };
        let key = format!(
            "{}/{}",
            SipHeaders::call_id(req).unwrap_or_default(),
            SipHeaders::from_tag(req).unwrap_or_default()
        );
        let tag = format!("{:x}", self.rng.next_u64());
        let mut resp = crate::sip::message::response_to(req, 503, Some(&tag));
        resp.headers
            .push(crate::sip::message::make_header("Retry-After", "0"));
        let response = crate::sip::message::to_wire(&rsipstack::sip::SipMessage::Response(resp));
        self.ringing.insert(id, key.clone());
        self.cluster_push(crate::cluster::ClusterOut::Ringing {
            id: key,
            to,
            response: response.to_vec(),
        });
    }

    fn cluster_push(&mut self, out: crate::cluster::ClusterOut) {
        if self.cluster_out.len() >= 4096 {
            self.cluster_out.pop_front();
            self.stats.cluster_out_dropped += 1;
        }
        self.cluster_out.push_back(out);
    }

    /// Records for the shared store (see [`crate::cluster::ClusterOut`]).
    pub fn poll_cluster_out(&mut self) -> Option<crate::cluster::ClusterOut> {
        self.cluster_out.pop_front()
    }

    /// Keeps the anchor of call `id` (see [`crate::cluster::ClusterOut::Anchor`])
    /// in step with its caller's dialog; drops it when the call ends.
    fn anchor(&mut self, id: CallId) {
        if self.cfg.peer_key.is_none() {
            return;
        }
        let want = self.calls.get(&id).and_then(|c| {
            let (peer, node) = c.peer_anchor()?;
            let caller = *self.call_legs.get(&(id, c.caller()))?;
            let to_peer = *self.call_legs.get(&(id, peer))?;
            let key = self.ua.leg_info(to_peer)?.call_id;
            Some((node, key, self.ua.snapshot(caller)?))
        });
        match (want, self.anchored.get(&id)) {
            (Some(w), Some(had)) if w == *had => {}
            (Some((node, key, snapshot)), _) => {
                self.anchored
                    .insert(id, (node.clone(), key.clone(), snapshot.clone()));
                self.cluster_push(crate::cluster::ClusterOut::Anchor {
                    node,
                    key,
                    snapshot,
                });
            }
            (None, Some(_)) => {
                if let Some((node, key, _)) = self.anchored.remove(&id) {
                    self.cluster_push(crate::cluster::ClusterOut::Unanchor { node, key });
                }
            }
            (None, None) => {}
        }
    }

    /// Node `node` is dead (its lease lapsed and it does not answer). The
    /// forks of its calls still ringing here end (their caller is gone; the
    /// proxy may bring the call here again). Those answered here ask for the
    /// anchor it left ([`crate::cluster::ClusterOut::Reanchor`]): this node
    /// carries the caller's dialog on.
    pub fn node_lost(&mut self, now: Instant, node: &str) {
        let orphans: Vec<(CallId, bool)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.peer_owner() == Some(node))
            .map(|(id, c)| (*id, c.is_connected()))
            .collect();
        for (id, connected) in orphans {
            let key = self
                .calls
                .get(&id)
                .and_then(|c| self.call_legs.get(&(id, c.caller())))
                .and_then(|leg| self.ua.leg_info(*leg))
                .map(|i| i.call_id);
            match key {
                Some(key) if connected => {
                    if self.reanchoring.insert(id) {
                        self.cluster_push(crate::cluster::ClusterOut::Reanchor {
                            call: id,
                            owner: node.to_string(),
                            key,
                        });
                    }
                }
                _ => {
                    self.stats.peer_calls_orphaned += 1;
                    self.drive(now, id, |c, ctx| c.end(now, ctx));
                }
            }
        }
        // Our calls with a party there (its operator's browser was on it):
        // that party is gone; a call left alone ends now, not at the media
        // timeout.
        for id in self.call_ids() {
            self.drive(now, id, |c, ctx| {
                c.peer_node_lost(now, ctx, node);
            });
        }
        self.pump(now);
    }

    /// The anchor of call `id` whose owner died (`None`: none was found, or
    /// Redis did not answer): with one, this node takes the caller's dialog
    /// over and re-INVITEs it to here; without, the call ends cleanly.
    pub fn handle_reanchor(
        &mut self,
        now: Instant,
        id: CallId,
        snapshot: Option<crate::sip::dialog::snapshot::DialogSnapshot>,
    ) {
        if !self.reanchoring.remove(&id) {
            return;
        }
        let Some(caller) = self.calls.get(&id).map(Call::caller) else {
            return;
        };
        let adopted = snapshot.and_then(|s| self.ua.adopt(&s).ok().map(|leg| (leg, s)));
        let Some((leg, s)) = adopted else {
            self.stats.calls_lost += 1;
            self.drive(now, id, |c, ctx| c.end(now, ctx));
            return self.pump(now);
        };
        // The caller is now the adopted dialog; the dead node's goes.
        if let Some(old) = self.call_legs.insert((id, caller), leg) {
            self.sip_legs.remove(&old);
            self.ua.forget(now, old);
        }
        self.sip_legs.insert(leg, (id, caller));
        self.stats.calls_reanchored += 1;
        let sdp = s.local_sdp;
        self.drive(now, id, |c, ctx| {
            if !c.reanchor_caller(ctx, &sdp) {
                c.end(now, ctx);
            }
        });
        self.pump(now);
    }

    /// Another node's fork of its call (see [`crate::cluster`]): rings the
    /// operators here it names. 403 unless it is signed with our key, fresh,
    /// and from a live node's address; then admission as for any call.
    fn peer_call(
        &mut self,
        now: Instant,
        leg: LegId,
        req: &crate::sip::message::Request,
        from: Peer,
        value: &str,
    ) {
        let unix = self.unix_base + now.as_micros() / 1_000_000;
        let verified = self.cfg.peer_key.as_ref().map(|k| k.verify(value, unix));
        let Some(Ok(peer)) = verified.filter(|_| self.peers.is_node(from.addr.ip())) else {
            self.stats.peer_refused += 1;
            let _ = self.ua.respond(now, leg, 403, None, &[]);
            return;
        };
        if let Err(refusal) = self.admission(Origin::Peer) {
            self.stats.calls_rejected_capacity += 1;
            let _ = self
                .ua
                .respond(now, leg, refusal.status(), None, refusal.headers());
            return;
        }
        let Some(number) = self.cfg.number(&peer.number).cloned() else {
            let _ = self.ua.respond(now, leg, 404, None, &[]);
            return;
        };
        let id = CallId(self.next_call);
        let call = {
            let (_, mut ctx) = self.split();
            Call::from_peer(now, &mut ctx, id, req, from.addr.ip(), &number, &peer)
        };
        match call {
            Ok(call) => {
                self.stats.peer_calls += 1;
                self.start_sip_call(now, id, call, leg);
            }
            Err(status) => {
                let _ = self.ua.respond(now, leg, status, None, &[]);
            }
        }
    }

    /// An INVITE with `Replaces` (RFC 3891): it takes the place of the
    /// dialog it names, in that dialog's call. 400 when the header is
    /// malformed, 481 when no dialog of ours matches (or one still ringing),
    /// 486 for `early-only` and a confirmed dialog, 403 when it comes from
    /// another trunk than the dialog's peer (section 7: only who could
    /// reach that dialog may replace it).
    fn replacing_call(
        &mut self,
        now: Instant,
        leg: LegId,
        req: &crate::sip::message::Request,
        from: Peer,
        trunk: Option<usize>,
        value: &str,
    ) {
        use crate::sip::dialog::replaces::{Replaces, ReplacesMatch};
        let status = match Replaces::parse(value).map(|r| self.ua.find_replaced(&r)) {
            None => Err(400),
            Some(ReplacesMatch::NoDialog) => Err(481),
            Some(ReplacesMatch::Confirmed) => Err(486),
            Some(ReplacesMatch::Leg(old)) => match self.sip_legs.get(&old).copied() {
                None => Err(481),
                Some((id, key)) => {
                    let same_peer = self
                        .ua
                        .leg_info(old)
                        .is_some_and(|i| i.peer.addr.ip() == from.addr.ip());
                    let (calls, mut ctx) = self.split();
                    let replaced = calls.get_mut(&id).map_or(Err(481), |c| {
                        if same_peer || (trunk.is_some() && c.trunk_of(key) == trunk) {
                            c.replace_party(now, &mut ctx, key, req, from.addr.ip(), trunk)
                        } else {
                            Err(403)
                        }
                    });
                    replaced.map(|new| (id, new))
                }
            },
        };
        match status {
            Ok((id, key)) => {
                self.sip_legs.insert(leg, (id, key));
                self.call_legs.insert((id, key), leg);
                self.apply(now, id);
            }
            Err(status) => {
                let _ = self.ua.respond(now, leg, status, None, &[]);
            }
        }
    }
}
