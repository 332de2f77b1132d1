//! The bridge's control plane: calls, their legs and dial plans, operators'
//! signalling and presence, on top of the SIP UA. Sans-IO, one owner: the SBC runs
//! it in one task and runs each call's media (`crate::media`) in a task of its own,
//! talking to it through [`MediaCommand`]s and [`MediaEvent`]s.
//!
//! Why one owner for control: SIP dialogs share one UA (one socket, Call-ID
//! routing) and operators are shared by calls (presence, busy marks), so putting
//! every call's control state next to them needs no locks and keeps races (two
//! accepts in one tick, accept against the caller's CANCEL) deterministic: they are
//! handled in arrival order. Control costs microseconds per call; media, the
//! expensive part, runs in parallel per call.
//!
//! Inputs: [`Bridge::handle_sip`], [`Bridge::handle_ws_open`] /
//! [`Bridge::handle_ws_text`] / [`Bridge::handle_ws_closed`],
//! [`Bridge::handle_media_event`], [`Bridge::handle_timeout`]. Outputs:
//! [`Bridge::poll_sip_transmit`], [`Bridge::poll_ws_output`],
//! [`Bridge::poll_media_command`], [`Bridge::poll_event`].

mod admit;
mod call;
mod config;
mod flow;
mod media;
mod operators;
mod plan;

pub use admit::{Load, Origin, RETRY_AFTER_SECS, Refusal, admit};
pub use call::{CallEvent, CallEventKind, Direction};

pub use config::{BridgeConfig, Cidr, DtmfMode, NumberConfig, StreamTarget, TrunkConfig};
pub use media::{LegKey, MediaCommand, MediaEvent, PortPool, Tone};
pub use plan::{DialPlan, DialStatus, Step, Target, TargetError, parse_duration};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use media_core::codec::Codec;
use media_core::pipeline::RtpFormat;
use media_core::rtp::PayloadType;
use media_core::{Instant, Millis, SeededRng};

use crate::presence::{Presence, PresenceEvent, SessionId};
use crate::sdp::{
    self, AudioCaps, AudioCodecPref, LocalMedia, NegotiatedAudio, SessionDescription,
};
use crate::signalling::{EndReason, NumberInfo, Request, ServerMessage, Session, SessionOutput};
use crate::sip::dialog::{
    InviteParams, LegId, LocalAddr, PingId, RegisterParams, UaConfig, UaEvent, UserAgent,
};
use crate::sip::message::{Peer, SipHeaders};
use crate::sip::transaction::Transmit;
use crate::token::TokenIssuer;
use call::{Call, Leg, LegKind, OpState, SipState};

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
    /// Calls ended, by outcome (index: [`DialStatus`] order).
    pub ended: [u64; 6],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Step(u64, usize),
    MaxDuration(u64),
    Session(SessionId),
    Ping(usize),
    Route(u64),
}

/// How long a call waits for an external router before its static plan applies.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

/// SIP headers passed to an external router (plus every `X-` header).
const ROUTED_HEADERS: [&str; 4] = [
    "P-Asserted-Identity",
    "Diversion",
    "Referred-By",
    "User-Agent",
];

/// What an external router is told about a call (`sbc`'s `Router`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteFacts {
    /// The call.
    pub call_id: String,
    /// Inbound from a trunk, or dialled by an operator.
    pub direction: Direction,
    /// Caller.
    pub from: String,
    /// Called number or target.
    pub to: String,
    /// Our number id involved.
    pub number: Option<String>,
    /// The trunk it came from.
    pub trunk: Option<String>,
    /// The operator who dialled.
    pub operator: Option<String>,
    /// Selected SIP headers (P-Asserted-Identity, Diversion, X-...).
    pub headers: Vec<(String, String)>,
    /// What the static configuration would do.
    pub default_plan: DialPlan,
}

/// A router's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteDecision {
    /// The static plan.
    Default,
    /// This plan.
    Plan(DialPlan),
    /// Refuse the call with this SIP status (inbound) or as `failed` (outbound).
    Reject(u16),
}

#[derive(Clone, Debug, Default)]
struct TrunkHealth {
    /// Per peer: consecutive failed pings.
    failures: Vec<u32>,
    pings: HashMap<PingId, usize>,
}

/// The control plane. See the module docs.
#[derive(Debug)]
pub struct Bridge {
    cfg: BridgeConfig,
    ua: UserAgent,
    presence: Presence,
    tokens: TokenIssuer,
    sessions: BTreeMap<SessionId, Session>,
    calls: BTreeMap<String, Call>,
    /// SIP legs to their call and leg key.
    sip_legs: HashMap<LegId, (String, LegKey)>,
    ports: PortPool,
    health: Vec<TrunkHealth>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    ws_out: VecDeque<(SessionId, SessionOutput)>,
    media_out: VecDeque<(String, MediaCommand)>,
    routes_out: VecDeque<RouteFacts>,
    events: VecDeque<CallEvent>,
    rng: SeededRng,
    next_call: u64,
    unix_base: u64,
    local_host: String,
    draining: bool,
    stats: BridgeStats,
}

fn call_seq(id: &str) -> u64 {
    id.trim_start_matches("c-").parse().unwrap_or(0)
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

fn caps_for(codecs: &[Codec]) -> AudioCaps {
    let mut caps = AudioCaps::standard();
    if !codecs.is_empty() {
        let pt = |c: Codec| match c {
            Codec::Pcmu => PayloadType::PCMU,
            Codec::Pcma => PayloadType::new(8).unwrap_or(PayloadType::PCMU),
            _ => PayloadType::new(111).unwrap_or(PayloadType::PCMU),
        };
        caps.codecs = codecs
            .iter()
            .map(|&c| AudioCodecPref {
                codec: c,
                payload_type: pt(c),
            })
            .collect();
    }
    caps
}

fn format_of(n: &NegotiatedAudio) -> RtpFormat {
    RtpFormat {
        codec: n.codec,
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        ptime: Millis(n.remote_ptime.0.clamp(10, 60)),
        opus: n.opus,
    }
}

/// The user part of a SIP URI or name-addr (`"A" <sip:+1555@h>;tag=x` -> `+1555`).
fn user_of(v: &str) -> String {
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

impl Bridge {
    /// A bridge with `cfg`, speaking SIP as `local` and signing tokens with `tokens`.
    /// `unix_base` is the Unix time (seconds) at driver time zero, for token checks.
    pub fn new(cfg: BridgeConfig, local: LocalAddr, tokens: TokenIssuer, unix_base: u64) -> Self {
        let local_host = local.host.clone();
        let mut ua_cfg = UaConfig::new(local, cfg.seed);
        ua_cfg.max_legs = cfg.max_calls * 4;
        let health = cfg
            .trunks
            .iter()
            .map(|t| TrunkHealth {
                failures: vec![0; t.peers.len()],
                pings: HashMap::new(),
            })
            .collect();
        Bridge {
            ua: UserAgent::new(ua_cfg),
            presence: Presence::new(cfg.grace, cfg.max_operators),
            tokens,
            sessions: BTreeMap::new(),
            calls: BTreeMap::new(),
            sip_legs: HashMap::new(),
            ports: PortPool::new(cfg.rtp_ports.0, cfg.rtp_ports.1),
            health,
            timers: BinaryHeap::new(),
            ws_out: VecDeque::new(),
            media_out: VecDeque::new(),
            routes_out: VecDeque::new(),
            events: VecDeque::new(),
            rng: SeededRng::new(cfg.seed ^ 0xb41d),
            next_call: 1,
            unix_base,
            local_host,
            draining: false,
            stats: BridgeStats::default(),
            cfg,
        }
    }

    /// Starts trunk registrations and health pings.
    pub fn start(&mut self, now: Instant) {
        for (i, t) in self.cfg.trunks.clone().iter().enumerate() {
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
    pub fn call_ids(&self) -> Vec<String> {
        self.calls.keys().cloned().collect()
    }

    /// Signalling connections open.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// RTP ports in use.
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    /// Counters.
    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }

    /// Whether trunk `i`'s peer `p` answers its pings.
    pub fn peer_up(&self, trunk: usize, peer: usize) -> bool {
        self.health
            .get(trunk)
            .and_then(|h| h.failures.get(peer))
            .is_none_or(|f| *f < 2)
    }

    /// Stops taking new calls (shutdown): inbound INVITEs get 503 and operators'
    /// dials an error; calls in progress go on.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    /// Ends every call (shutdown past its deadline): BYE, CANCEL or a final
    /// response on the SIP side, `ended` for operators.
    pub fn end_all(&mut self, now: Instant) {
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            if let Some(mut call) = self.calls.remove(&id) {
                let status = if call.winner.is_some() {
                    DialStatus::Completed
                } else {
                    DialStatus::Canceled
                };
                self.end_call(now, &mut call, status, EndReason::RemoteHangup, None);
            }
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
    pub fn handle_media_event(&mut self, now: Instant, call_id: &str, ev: MediaEvent) {
        let Some(mut call) = self.calls.remove(call_id) else {
            return;
        };
        let done = self.on_media_event(now, &mut call, ev);
        self.put_back(call, done);
        self.pump(now);
    }

    /// When [`Bridge::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.peek().map(|Reverse((t, _))| *t),
            self.ua.poll_timeout(),
            self.presence.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ua.handle_timeout(now);
        self.presence.handle_timeout(now);
        while let Some(&Reverse((at, t))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                Timer::Step(seq, step) => {
                    let id = format!("c-{seq}");
                    if let Some(mut call) = self.calls.remove(&id) {
                        let done = if call.step == step
                            && call.winner.is_none()
                            && call.step_deadline.is_some_and(|d| d <= now)
                        {
                            self.step_timed_out(now, &mut call)
                        } else {
                            false
                        };
                        self.put_back(call, done);
                    }
                }
                Timer::MaxDuration(seq) => {
                    let id = format!("c-{seq}");
                    if let Some(mut call) = self.calls.remove(&id) {
                        let reason = if call.winner.is_some() {
                            EndReason::Hangup
                        } else {
                            EndReason::NoAnswer
                        };
                        let status = if call.winner.is_some() {
                            DialStatus::Completed
                        } else {
                            DialStatus::NoAnswer
                        };
                        self.end_call(now, &mut call, status, reason, None);
                    }
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
                Timer::Ping(i) => self.ping_trunk(now, i),
                Timer::Route(seq) => {
                    // The router did not answer: the static plan applies.
                    let id = format!("c-{seq}");
                    if self.calls.get(&id).is_some_and(|c| c.routing) {
                        self.handle_route(now, &id, RouteDecision::Default);
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
    pub fn poll_media_command(&mut self) -> Option<(String, MediaCommand)> {
        self.media_out.pop_front()
    }

    /// The next call event.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    // ----- plumbing -----

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

    fn media(&mut self, call: &Call, cmd: MediaCommand) {
        self.media_out.push_back((call.id.clone(), cmd));
    }

    fn put_back(&mut self, call: Call, done: bool) {
        if !done {
            self.calls.insert(call.id.clone(), call);
        }
    }

    fn event(
        &mut self,
        now: Instant,
        call: &Call,
        kind: CallEventKind,
        status: Option<DialStatus>,
        code: Option<u16>,
    ) {
        let answered_by = call.answered_by.clone();
        let (duration, talk_time) = if kind == CallEventKind::Completed {
            (
                Some(now.saturating_duration_since(call.created)),
                call.answered_at.map(|a| now.saturating_duration_since(a)),
            )
        } else {
            (None, None)
        };
        self.events.push_back(CallEvent {
            kind,
            call_id: call.id.clone(),
            direction: call.direction,
            from: call.from.clone(),
            to: call.to.clone(),
            number: call.number.clone(),
            at: now,
            status,
            code,
            answered_by,
            rung: call.rung.clone(),
            duration,
            talk_time,
        });
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
                let PresenceEvent::WentOffline {
                    operator,
                    active_call,
                } = ev;
                self.operator_gone(now, &operator, active_call);
            }
            if !any {
                break;
            }
        }
    }

    // ----- SIP events -----

    fn on_ua_event(&mut self, now: Instant, ev: UaEvent) {
        let leg = match &ev {
            UaEvent::IncomingInvite { leg, request, from } => {
                let (leg, from) = (*leg, *from);
                let request = request.clone();
                return self.inbound_call(now, leg, &request, from);
            }
            UaEvent::OptionsResult { ping, status } => return self.on_ping_result(*ping, *status),
            UaEvent::Registered { .. } | UaEvent::RegistrationFailed { .. } => return,
            UaEvent::Progress { leg, .. }
            | UaEvent::Answered { leg, .. }
            | UaEvent::Failed { leg, .. }
            | UaEvent::Acked { leg, .. }
            | UaEvent::Offer { leg, .. }
            | UaEvent::OfferAnswered { leg, .. }
            | UaEvent::OfferCancelled { leg }
            | UaEvent::Info { leg, .. }
            | UaEvent::Terminated { leg, .. } => *leg,
        };
        if let UaEvent::Terminated { .. } = ev {
            // The mapping goes whatever happens to the call.
            let Some((call_id, key)) = self.sip_legs.remove(&leg) else {
                return;
            };
            let Some(mut call) = self.calls.remove(&call_id) else {
                return;
            };
            let done = self.on_sip_event(now, &mut call, key, ev);
            self.put_back(call, done);
            return;
        }
        let Some((call_id, key)) = self.sip_legs.get(&leg).cloned() else {
            return;
        };
        let Some(mut call) = self.calls.remove(&call_id) else {
            return;
        };
        let done = self.on_sip_event(now, &mut call, key, ev);
        self.put_back(call, done);
    }

    fn new_call(
        &mut self,
        now: Instant,
        direction: Direction,
        number: Option<String>,
        from: String,
        to: String,
        plan: DialPlan,
    ) -> Call {
        let seq = self.next_call;
        self.next_call += 1;
        self.timers.push(Reverse((
            now + self.cfg.max_call_duration,
            Timer::MaxDuration(seq),
        )));
        Call {
            id: format!("c-{seq}"),
            direction,
            number,
            from,
            to,
            caller_name: None,
            created: now,
            answered_at: None,
            caller: 0,
            plan,
            step: 0,
            step_deadline: None,
            legs: BTreeMap::new(),
            winner: None,
            next_leg: 0,
            busy: false,
            fail_code: None,
            caller_progress: false,
            ringing_deferred: None,
            rung: Vec::new(),
            answered_by: None,
            routing: false,
            ended_legs: Vec::new(),
        }
    }

    fn inbound_call(
        &mut self,
        now: Instant,
        leg: LegId,
        req: &crate::sip::message::Request,
        from: Peer,
    ) {
        let reject = |b: &mut Bridge, status: u16| {
            let _ = b.ua.respond(now, leg, status, None, &[]);
        };
        if let Err(refusal) = self.admission(admit::Origin::Sip(from.addr.ip())) {
            if refusal != admit::Refusal::NotATrunk {
                self.stats.calls_rejected_capacity += 1;
            }
            let _ = self
                .ua
                .respond(now, leg, refusal.status(), None, refusal.headers());
            return;
        }
        let trunk = self.cfg.trunk_for_source(from.addr.ip());
        let called = user_of(&req.uri.to_string());
        let called = if called.is_empty() {
            user_of(req.header_to().unwrap_or(""))
        } else {
            called
        };
        let Some(number) = self.cfg.number(&called).cloned() else {
            return reject(self, 404);
        };
        let Ok(offer) = std::str::from_utf8(&req.body)
            .map_err(|_| ())
            .and_then(|t| SessionDescription::parse(t).map_err(|_| ()))
        else {
            // No (valid) offer: late-offer INVITEs are not supported.
            return reject(self, 488);
        };
        let Some(port) = self.ports.take() else {
            return reject(self, 503);
        };
        let codecs = trunk
            .map(|t| self.cfg.trunks[t].codecs.clone())
            .unwrap_or_default();
        let session_id = self.rng.next_u64() >> 12;
        let local = LocalMedia::rtp(self.cfg.media_ip, port, session_id);
        let (answer, negotiated) = match sdp::answer_audio(&offer, &caps_for(&codecs), &local) {
            Ok(a) => a,
            Err(e) => {
                self.ports.give(port);
                return reject(self, e.sip_status());
            }
        };
        let from_hdr = req.header_from().unwrap_or("").to_string();
        let mut call = self.new_call(
            now,
            Direction::Inbound,
            Some(number.id.clone()),
            user_of(&from_hdr),
            number.e164.clone(),
            number.plan.clone(),
        );
        call.caller_name = display_name_of(&from_hdr);
        self.stats.calls_inbound += 1;
        let key = call.leg_key();
        call.caller = key;
        let format = format_of(&negotiated);
        let remote = negotiated.remote;
        call.legs.insert(
            key,
            Leg {
                kind: LegKind::Sip {
                    ua: leg,
                    state: SipState::Ringing,
                    port,
                    trunk,
                    attempt: 0,
                    local_sdp: answer.to_string(),
                    sdp_version: 1,
                    negotiated: Some(negotiated),
                    early_media: false,
                    remote_held: false,
                },
                target: None,
                step: 0,
            },
        );
        self.sip_legs.insert(leg, (call.id.clone(), key));
        self.media(
            &call,
            MediaCommand::AddRtp {
                leg: key,
                local_port: port,
                remote,
                format,
            },
        );
        self.event(now, &call, CallEventKind::Initiated, None, None);
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
        let facts = RouteFacts {
            call_id: call.id.clone(),
            direction: Direction::Inbound,
            from: call.from.clone(),
            to: call.to.clone(),
            number: call.number.clone(),
            trunk: trunk.map(|t| self.cfg.trunks[t].name.clone()),
            operator: None,
            headers,
            default_plan: call.plan.clone(),
        };
        let done = self.route_or_start(now, &mut call, facts);
        self.put_back(call, done);
    }

    /// With an external router, asks it (the call waits, caller on 100 Trying,
    /// at most [`ROUTE_TIMEOUT`]); else starts the static plan.
    pub(crate) fn route_or_start(
        &mut self,
        now: Instant,
        call: &mut Call,
        facts: RouteFacts,
    ) -> bool {
        if !self.cfg.external_routing {
            return self.start_step(now, call);
        }
        call.routing = true;
        self.routes_out.push_back(facts);
        self.timers.push(Reverse((
            now + ROUTE_TIMEOUT,
            Timer::Route(call_seq(&call.id)),
        )));
        false
    }

    /// The next call to route (external routing on).
    pub fn poll_route_request(&mut self) -> Option<RouteFacts> {
        self.routes_out.pop_front()
    }

    /// The router's decision for `call_id`.
    pub fn handle_route(&mut self, now: Instant, call_id: &str, decision: RouteDecision) {
        let Some(mut call) = self.calls.remove(call_id) else {
            return;
        };
        if !call.routing {
            self.calls.insert(call.id.clone(), call);
            return;
        }
        call.routing = false;
        let done = match decision {
            RouteDecision::Default => self.start_step(now, &mut call),
            RouteDecision::Plan(plan) => {
                call.plan = plan;
                call.step = 0;
                self.start_step(now, &mut call)
            }
            RouteDecision::Reject(status) => {
                let status = if (400..700).contains(&status) {
                    status
                } else {
                    403
                };
                self.end_call(
                    now,
                    &mut call,
                    DialStatus::Failed,
                    EndReason::Failed,
                    Some(status),
                );
                true
            }
        };
        self.put_back(call, done);
        self.pump(now);
    }

    /// Starts `call.step`; moves on while steps have nothing to ring. Returns
    /// whether the call is over.
    fn start_step(&mut self, now: Instant, call: &mut Call) -> bool {
        loop {
            let Some(step) = call.plan.steps.get(call.step).cloned() else {
                return self.plan_exhausted(now, call);
            };
            let mut started = 0;
            for target in &step.targets {
                started += self.ring_target(now, call, target);
                if call.winner.is_some() {
                    return false;
                }
            }
            if started > 0 {
                call.step_deadline = Some(now + step.timeout);
                self.timers.push(Reverse((
                    now + step.timeout,
                    Timer::Step(call_seq(&call.id), call.step),
                )));
                self.caller_ringing(now, call);
                return false;
            }
            call.step += 1;
        }
    }

    /// Rings one target; returns how many legs it started.
    fn ring_target(&mut self, now: Instant, call: &mut Call, target: &Target) -> usize {
        call.rung.push(target.to_string());
        match target {
            Target::Operators => {
                let Some(number) = call.number.clone() else {
                    return 0;
                };
                let ops = self.presence.ready_for(&number);
                let mut n = 0;
                for op in ops {
                    if call.operator_leg(&op).is_none() && !self.is_caller_operator(call, &op) {
                        self.ring_operator(call, &op, target.clone());
                        n += 1;
                    }
                }
                n
            }
            Target::Operator(op) => {
                if self.presence.is_ready(op)
                    && call.operator_leg(op).is_none()
                    && !self.is_caller_operator(call, op)
                {
                    self.ring_operator(call, op, target.clone());
                    1
                } else {
                    0
                }
            }
            Target::Sip(uri) => self.ring_sip(now, call, target.clone(), uri.clone(), None),
            Target::Pstn { number, trunk } => {
                let t = match trunk {
                    Some(name) => self.cfg.trunk_named(name),
                    None => (!self.cfg.trunks.is_empty()).then_some(0),
                };
                let Some(t) = t else {
                    call.fail_code = Some(503);
                    return 0;
                };
                let uri = format!("sip:{number}@{}", self.cfg.trunks[t].host);
                self.ring_sip(now, call, target.clone(), uri, Some(t))
            }
            Target::Echo | Target::Tone(_) => {
                let key = call.leg_key();
                let kind = match target {
                    Target::Tone(hz) => LegKind::Tone(*hz),
                    _ => LegKind::Echo,
                };
                call.legs.insert(
                    key,
                    Leg {
                        kind,
                        target: Some(target.clone()),
                        step: call.step,
                    },
                );
                self.win(now, call, key);
                1
            }
            Target::Stream(url) => {
                let key = call.leg_key();
                call.legs.insert(
                    key,
                    Leg {
                        kind: LegKind::Stream { connected: false },
                        target: Some(target.clone()),
                        step: call.step,
                    },
                );
                let opts = self.cfg.streams.iter().find(|s| s.url == *url);
                let cmd = MediaCommand::AddStream {
                    leg: key,
                    url: url.clone(),
                    format: opts.map_or_else(Default::default, |o| o.format),
                    headers: opts.map_or_else(Vec::new, |o| o.headers.clone()),
                    start: crate::stream::StreamStart {
                        call_id: call.id.clone(),
                        from: call.from.clone(),
                        to: call.to.clone(),
                        number: call.number.clone(),
                    },
                };
                self.media(call, cmd);
                1
            }
        }
    }

    fn is_caller_operator(&self, call: &Call, op: &str) -> bool {
        matches!(call.legs.get(&call.caller).map(|l| &l.kind), Some(LegKind::Operator { op: o, .. }) if o == op)
    }

    fn ring_operator(&mut self, call: &mut Call, op: &str, target: Target) {
        let key = call.leg_key();
        call.legs.insert(
            key,
            Leg {
                kind: LegKind::Operator {
                    op: op.to_string(),
                    state: OpState::Ringing,
                    reference: None,
                    muted: false,
                    held: false,
                    answered: false,
                },
                target: Some(target),
                step: call.step,
            },
        );
        let msg = self.incoming_message(call);
        self.send_operator(op, msg);
    }

    fn incoming_message(&self, call: &Call) -> ServerMessage {
        ServerMessage::Incoming {
            call_id: call.id.clone(),
            from: call.from.clone(),
            to: call.to.clone(),
            number: call.number.clone().unwrap_or_default(),
            caller_name: call.caller_name.clone(),
        }
    }

    fn ring_sip(
        &mut self,
        now: Instant,
        call: &mut Call,
        target: Target,
        uri: String,
        trunk: Option<usize>,
    ) -> usize {
        self.ring_sip_at(now, call, target, uri, trunk, None)
    }

    /// Rings a SIP target through `trunk`'s peer `attempt` (default: the first
    /// that answers pings).
    pub(crate) fn ring_sip_at(
        &mut self,
        now: Instant,
        call: &mut Call,
        target: Target,
        uri: String,
        trunk: Option<usize>,
        attempt: Option<usize>,
    ) -> usize {
        let Some(port) = self.ports.take() else {
            call.fail_code = Some(503);
            return 0;
        };
        // Offer the caller's codec first, so the two sides can relay.
        let mut codecs: Vec<Codec> = trunk
            .map(|t| self.cfg.trunks[t].codecs.clone())
            .unwrap_or_default();
        if codecs.is_empty() {
            codecs = vec![Codec::Pcmu, Codec::Pcma, Codec::Opus];
        }
        if let Some(LegKind::Sip {
            negotiated: Some(n),
            ..
        }) = call.legs.get(&call.caller).map(|l| &l.kind)
            && let Some(i) = codecs.iter().position(|c| *c == n.codec)
        {
            let c = codecs.remove(i);
            codecs.insert(0, c);
        }
        let local = LocalMedia::rtp(self.cfg.media_ip, port, self.rng.next_u64() >> 12);
        let offer = sdp::create_offer(&caps_for(&codecs), &local).to_string();
        let attempt = attempt.unwrap_or_else(|| trunk.map_or(0, |t| self.first_live_peer(t)));
        let peer = match trunk {
            Some(t) => self.cfg.trunks[t].peer(attempt),
            None => sip_target_peer(&uri),
        };
        let Some(peer) = peer else {
            self.ports.give(port);
            call.fail_code = Some(404);
            return 0;
        };
        let caller_id = match call.direction {
            Direction::Inbound => call.from.clone(),
            Direction::Outbound => call
                .number
                .as_ref()
                .and_then(|n| self.cfg.number(n))
                .map_or(call.from.clone(), |n| n.e164.clone()),
        };
        let host = self.ua_host();
        let params = InviteParams {
            request_uri: uri.clone(),
            from: format!(
                "<sip:{}@{host}>",
                if caller_id.is_empty() {
                    "anonymous".into()
                } else {
                    caller_id
                }
            ),
            to: format!("<{uri}>"),
            peer,
            sdp: Some(offer.clone().into_bytes()),
            headers: Vec::new(),
            credentials: trunk.and_then(|t| self.cfg.trunks[t].credentials.clone()),
        };
        match self.ua.invite(now, params) {
            Ok(ua_leg) => {
                let key = call.leg_key();
                call.legs.insert(
                    key,
                    Leg {
                        kind: LegKind::Sip {
                            ua: ua_leg,
                            state: SipState::Ringing,
                            port,
                            trunk,
                            attempt,
                            local_sdp: offer,
                            sdp_version: 1,
                            negotiated: None,
                            early_media: false,
                            remote_held: false,
                        },
                        target: Some(target),
                        step: call.step,
                    },
                );
                self.sip_legs.insert(ua_leg, (call.id.clone(), key));
                1
            }
            Err(_) => {
                self.ports.give(port);
                call.fail_code = Some(503);
                0
            }
        }
    }

    fn ua_host(&self) -> String {
        self.local_host.clone()
    }

    // ----- trunk health (OPTIONS qualify) -----

    /// The first peer of trunk `t` that answers pings (the first if none does).
    fn first_live_peer(&self, t: usize) -> usize {
        self.health
            .get(t)
            .and_then(|h| h.failures.iter().position(|f| *f < 2))
            .unwrap_or(0)
    }

    fn ping_trunk(&mut self, now: Instant, t: usize) {
        let Some(trunk) = self.cfg.trunks.get(t) else {
            return;
        };
        let Some(interval) = trunk.ping_interval else {
            return;
        };
        let uri = format!("sip:{}", trunk.host);
        for i in 0..trunk.peers.len() {
            if let Some(peer) = self.cfg.trunks[t].peer(i)
                && let Ok(ping) = self.ua.options(now, &uri, peer)
            {
                self.health[t].pings.insert(ping, i);
            }
        }
        self.timers.push(Reverse((now + interval, Timer::Ping(t))));
    }

    fn on_ping_result(&mut self, ping: PingId, status: Option<u16>) {
        for h in &mut self.health {
            if let Some(i) = h.pings.remove(&ping) {
                // Any answer means the peer is alive; only silence counts against it.
                match status {
                    Some(_) => h.failures[i] = 0,
                    None => h.failures[i] = h.failures[i].saturating_add(1),
                }
                return;
            }
        }
    }
}

fn sip_target_peer(uri: &str) -> Option<Peer> {
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
