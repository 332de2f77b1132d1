//! The control task's core: the bridge (SIP UA, calls, operators) behind the
//! front door (`protect`), wired to its outputs: operator WebSockets, per-call
//! media tasks, the router, call events. It runs inside the SIP transport task
//! (`sip::SipSockets::spawn`), so SIP, signalling and call control share one owner
//! and need no locks.
//!
//! Its inputs are data ([`ControlIn`]), taken one at a time by
//! [`ControlCore::handle`], which then moves the bridge's outputs out: commands to
//! media tasks (started on a call's first command, let go on `Stop`), questions
//! to the router (its answer comes back as [`ControlIn::Route`]), frames to
//! operator sockets, call events. So a test drives it with a list of inputs and
//! virtual `now`s, without sockets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use media_core::Instant;
use sip_bridge::bridge::{
    Bridge, CallEvent, CallEventKind, CallId, MediaCommand, Origin, PortStats, Refusal,
    RouteDecision,
};
use sip_bridge::presence::SessionId;
use sip_bridge::registrar::RegistrarEvent;
use sip_bridge::sip::message::{self, Inbound, Peer, SipHeaders, SipMessage, ValidationConfig};
use sip_bridge::sip::transaction::Transmit;
use tokio::sync::mpsc;

use crate::inbox::{ControlIn, ControlStatus, ControlTx, MediaIn, MediaTx, WsSender};
use crate::protect::{Protection, Verdict};
use crate::router::Router;
use crate::sip::SipCore;

/// Starts a call's media task: `(call id, seed, control's inbox)` to the task's
/// inbox. The server's spawns a `media_task`; a test's keeps the receiver.
pub type StartMedia = Box<dyn FnMut(CallId, u64, ControlTx) -> MediaTx + Send>;

/// See the module docs.
pub struct ControlCore {
    bridge: Bridge,
    protect: Protection,
    ws: HashMap<SessionId, WsSender>,
    media: HashMap<CallId, MediaTx>,
    start_media: StartMedia,
    inbox: Option<ControlTx>,
    events: mpsc::UnboundedSender<CallEvent>,
    stateless: VecDeque<Transmit>,
    seed: u64,
    router: Option<Arc<dyn Router>>,
    directory: Option<Arc<dyn crate::directory::PhoneDirectory>>,
    trunks_exported: Option<Instant>,
    /// The port pool's counts at the last export.
    ports_exported: PortStats,
    stopped: bool,
    /// Told when presence changes (a cluster node's record follows it).
    ready_watch: Option<tokio::sync::watch::Sender<u64>>,
    /// Records for the cluster task to write.
    cluster_records: Option<mpsc::Sender<sip_bridge::cluster::ClusterOut>>,
}

impl std::fmt::Debug for ControlCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCore")
            .field("calls", &self.bridge.calls())
            .finish_non_exhaustive()
    }
}

impl ControlCore {
    /// A core around `bridge`, starting media tasks with `start_media`.
    pub fn new(
        bridge: Bridge,
        protect: Protection,
        start_media: StartMedia,
        events: mpsc::UnboundedSender<CallEvent>,
        seed: u64,
    ) -> Self {
        ControlCore {
            bridge,
            protect,
            ws: HashMap::new(),
            media: HashMap::new(),
            start_media,
            inbox: None,
            events,
            stateless: VecDeque::new(),
            seed,
            router: None,
            directory: None,
            trunks_exported: None,
            ports_exported: PortStats::default(),
            stopped: false,
            ready_watch: None,
            cluster_records: None,
        }
    }

    /// Sends the records survivors need ([`sip_bridge::cluster::ClusterOut`])
    /// to the cluster task; when it does not keep up they are dropped and
    /// counted, never waited for.
    pub fn set_cluster_records(&mut self, tx: mpsc::Sender<sip_bridge::cluster::ClusterOut>) {
        self.cluster_records = Some(tx);
    }

    /// Tells `watch` whenever who is ready here may have changed (the
    /// cluster task then writes this node's record at once rather than at
    /// its next heartbeat).
    pub fn set_ready_watch(&mut self, watch: tokio::sync::watch::Sender<u64>) {
        self.ready_watch = Some(watch);
    }

    /// Routes every call through `router` (the bridge asks before ringing).
    pub fn set_router(&mut self, router: Arc<dyn Router>) {
        self.router = Some(router);
    }

    /// Asks `directory` about phone accounts the config does not list.
    pub fn set_directory(&mut self, directory: Arc<dyn crate::directory::PhoneDirectory>) {
        self.directory = Some(directory);
    }

    /// Where the tasks this core starts (media, routing) send their inputs back.
    /// Without it no media task starts, and calls are routed by the static plan.
    pub fn set_inbox(&mut self, inbox: ControlTx) {
        self.inbox = Some(inbox);
    }

    /// The front door's counters.
    pub fn protection(&self) -> &Protection {
        &self.protect
    }

    /// The figures [`ControlIn::Status`] answers with.
    pub fn status(&self) -> ControlStatus {
        let (ready_numbers, ready_operators) = self.bridge.ready_summary();
        ControlStatus {
            calls: self.bridge.calls(),
            sip_legs: self.bridge.ua().legs(),
            media_tasks: self.media.len(),
            operator_sockets: self.ws.len(),
            operators: self.bridge.presence().len(),
            draining: self.bridge.draining(),
            ready_numbers,
            ready_operators,
        }
    }

    /// Takes one input, then moves what it caused out to the other tasks.
    pub fn handle(&mut self, now: Instant, input: ControlIn) {
        match input {
            ControlIn::Sip { bytes, from } => self.on_sip(now, &bytes, from),
            ControlIn::Timeout => self.bridge.handle_timeout(now),
            ControlIn::Lookup { username, answer } => {
                self.bridge.handle_phone_lookup(now, &username, answer)
            }
            ControlIn::WsOpen { session, tx } => {
                self.ws.insert(session, tx);
                self.bridge.handle_ws_open(now, session);
            }
            ControlIn::WsText { session, text } => self.bridge.handle_ws_text(now, session, &text),
            ControlIn::WsBinary { session, len } => self.bridge.handle_ws_binary(now, session, len),
            ControlIn::WsClosed { session } => {
                self.ws.remove(&session);
                self.bridge.handle_ws_closed(now, session);
            }
            ControlIn::Media { call, event } => self.bridge.handle_media_event(now, call, event),
            ControlIn::Route { call, decision } => self.bridge.handle_route(now, call, decision),
            ControlIn::Api {
                numbers,
                req,
                reply,
            } => {
                let _ = reply.send(self.bridge.handle_api(now, &numbers, *req));
            }
            ControlIn::Drain(on) => self.bridge.set_draining(on),
            ControlIn::Peers(peers) => self.bridge.set_peers(peers),
            ControlIn::NodeLost(node) => self.bridge.node_lost(now, &node),
            ControlIn::Reanchor { call, snapshot } => {
                self.bridge.handle_reanchor(now, call, snapshot)
            }
            ControlIn::Transmit { to, bytes } => self.stateless.push_back(Transmit { to, bytes }),
            ControlIn::EndAll { reply } => {
                let _ = reply.send(self.bridge.calls());
                self.bridge.end_all(now);
            }
            ControlIn::Status { reply } => {
                let _ = reply.send(self.status());
            }
            ControlIn::Shutdown => self.stopped = true,
        }
        self.drain_ws();
        self.drain_media();
        self.drain_routes(now);
        self.drain_lookups(now);
        self.drain_events();
        while let Some(out) = self.bridge.poll_cluster_out() {
            if let Some(tx) = &self.cluster_records
                && tx.try_send(out).is_err()
            {
                metrics::counter!("sbc_cluster_records_dropped_total").increment(1);
            }
        }
        if let Some(w) = &self.ready_watch {
            let changes = self.bridge.presence().changes();
            w.send_if_modified(|last| std::mem::replace(last, changes) != changes);
        }
        self.export_gauges(now);
    }

    /// SIP through the front door and the admission pre-filter, into the bridge.
    fn on_sip(&mut self, now: Instant, bytes: &[u8], from: Peer) {
        // Another node of the cluster is as trusted as a trunk at the door;
        // the bridge checks its INVITEs' signature.
        let peer = self.bridge.peers().is_node(from.addr.ip());
        let trunk = peer
            || self
                .bridge
                .config()
                .trunk_for_source(from.addr.ip())
                .is_some();
        match self.protect.check_from(now, from.addr.ip(), trunk, bytes) {
            Verdict::Drop => {
                metrics::counter!("sbc_sip_dropped_total").increment(1);
                return;
            }
            Verdict::Overload => {
                metrics::counter!("sbc_sip_rejected_total", "status" => "503").increment(1);
                return self.stateless_response(bytes, from, 503, &[("Retry-After", "2")]);
            }
            Verdict::Pass => {}
        }
        if initial_invite(bytes) {
            // The bridge's admission policy, applied before any transaction
            // exists: no state for strangers, nor for calls it would refuse.
            if let Err(refusal) = self.bridge.admission(Origin::Sip(from.addr.ip()))
                // With phones, a stranger's INVITE is challenged like a
                // phone's (no 403 that would tell the two apart).
                && !(refusal == Refusal::NotATrunk && self.bridge.registrar().is_some())
                && !(refusal == Refusal::NotATrunk && peer)
            {
                let status = if refusal.status() == 403 {
                    "403"
                } else {
                    "503"
                };
                metrics::counter!("sbc_sip_rejected_total", "status" => status).increment(1);
                return self.stateless_response(bytes, from, refusal.status(), refusal.headers());
            }
        }
        self.bridge.handle_sip(now, bytes, from);
    }

    /// Frames to operator sockets. A browser that does not read its socket loses
    /// it (its queue is dropped, which closes it); the call keeps its grace
    /// period like any dropped connection.
    fn drain_ws(&mut self) {
        while let Some((sid, out)) = self.bridge.poll_ws_output() {
            if let Some(tx) = self.ws.get(&sid)
                && let Err(e) = tx.try_send(out)
            {
                // A socket already gone is no news; a full one is a browser that
                // does not read.
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    tracing::warn!(session = sid, "operator WebSocket backlogged; closing");
                }
                self.ws.remove(&sid);
            }
        }
    }

    /// Commands to media tasks: a call's first starts its task, `Stop` lets go
    /// of it (the task ends when its session has stopped).
    fn drain_media(&mut self) {
        while let Some((call, cmd)) = self.bridge.poll_media_command() {
            let stop = cmd == MediaCommand::Stop;
            let tx = match self.media.get(&call) {
                Some(tx) => Some(tx.clone()),
                None if !stop => self.inbox.clone().map(|inbox| {
                    self.seed = self
                        .seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let tx = (self.start_media)(call, self.seed, inbox);
                    self.media.insert(call, tx.clone());
                    tx
                }),
                None => None,
            };
            if let Some(tx) = tx {
                let _ = tx.send(MediaIn::Command(cmd));
            }
            if stop {
                self.media.remove(&call);
            }
        }
    }

    /// Calls waiting for a plan go to the router on a task of their own (a slow
    /// backend never holds up this one); the decision comes back as
    /// [`ControlIn::Route`]. If it never does, the bridge's own timeout applies
    /// the static plan.
    fn drain_routes(&mut self, now: Instant) {
        while let Some(facts) = self.bridge.poll_route_request() {
            match (&self.router, &self.inbox) {
                (Some(router), Some(inbox)) => {
                    let (router, inbox) = (router.clone(), inbox.clone());
                    tokio::spawn(async move {
                        let call = facts.call_id;
                        let decision = router.route(facts).await;
                        let _ = inbox.send(ControlIn::Route { call, decision });
                    });
                }
                _ => self
                    .bridge
                    .handle_route(now, facts.call_id, RouteDecision::Default),
            }
        }
    }

    /// Phone accounts to ask the backend about, each on a task of its own
    /// (the REGISTER waits, nothing else does); without a directory, none.
    fn drain_lookups(&mut self, now: Instant) {
        let realm = self
            .bridge
            .registrar()
            .map(|r| r.config().realm.clone())
            .unwrap_or_default();
        while let Some(username) = self.bridge.poll_phone_lookup() {
            match (&self.directory, &self.inbox) {
                (Some(d), Some(inbox)) => {
                    let (d, inbox, realm) = (d.clone(), inbox.clone(), realm.clone());
                    tokio::spawn(async move {
                        let answer = d.lookup(username.clone(), realm).await;
                        let _ = inbox.send(ControlIn::Lookup { username, answer });
                    });
                }
                _ => self.bridge.handle_phone_lookup(
                    now,
                    &username,
                    sip_bridge::registrar::Lookup::Unavailable,
                ),
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.bridge.poll_event() {
            record(&ev);
            let _ = self.events.send(ev);
        }
        while let Some(ev) = self.bridge.poll_phone_event() {
            match ev {
                RegistrarEvent::Registered { operator } => {
                    tracing::info!(%operator, "phone registered")
                }
                RegistrarEvent::Unregistered { operator, why } => {
                    tracing::info!(%operator, ?why, "phone unregistered")
                }
                RegistrarEvent::Banned { source } => {
                    tracing::warn!(%source, "registrar: banned after repeated authentication failures")
                }
                _ => {}
            }
        }
    }

    fn export_gauges(&mut self, now: Instant) {
        if self
            .trunks_exported
            .is_none_or(|t| now.saturating_duration_since(t) >= std::time::Duration::from_secs(1))
        {
            self.trunks_exported = Some(now);
            let cfg = self.bridge.config();
            for (t, trunk) in cfg.trunks.iter().enumerate() {
                for (p, peer) in trunk.peers.iter().enumerate() {
                    let up = if self.bridge.peer_up(t, p) { 1.0 } else { 0.0 };
                    metrics::gauge!("sbc_trunk_peer_up", "trunk" => trunk.name.clone(), "peer" => peer.to_string()).set(up);
                }
            }
        }
        metrics::gauge!("sbc_calls_active").set(self.bridge.calls() as f64);
        metrics::gauge!("sbc_operator_sessions").set(self.bridge.sessions() as f64);
        metrics::gauge!("sbc_operators").set(self.bridge.presence().len() as f64);
        metrics::gauge!("sbc_rtp_ports_in_use").set(self.bridge.ports_in_use() as f64);
        self.export_port_stats();
        metrics::gauge!("sbc_media_sessions").set(self.media.len() as f64);
        let ua = self.bridge.ua();
        metrics::gauge!("sbc_sip_legs").set(ua.legs() as f64);
        metrics::gauge!("sbc_sip_dialogs").set(ua.dialogs() as f64);
        metrics::gauge!("sbc_sip_transactions").set(ua.transactions() as f64);
        let tx = ua.transaction_stats();
        metrics::counter!("sbc_sip_retransmissions_total").absolute(tx.retransmissions);
        let b = self.bridge.stats();
        metrics::counter!("sbc_cluster_peer_calls_total").absolute(b.peer_calls);
        metrics::counter!("sbc_cluster_peer_refused_total").absolute(b.peer_refused);
        metrics::counter!("sbc_cluster_peer_calls_orphaned_total").absolute(b.peer_calls_orphaned);
        metrics::counter!("sbc_cluster_calls_reanchored_total").absolute(b.calls_reanchored);
        metrics::counter!("sbc_cluster_calls_lost_total").absolute(b.calls_lost);
        let ready = self
            .bridge
            .peers()
            .nodes
            .iter()
            .filter(|n| !n.draining && !n.operators.is_empty());
        metrics::gauge!("sbc_cluster_peers_ready").set(ready.count() as f64);
        let p = self.protect.stats();
        metrics::counter!("sbc_sip_bans_total").absolute(p.bans);
        metrics::counter!("sbc_sip_banned_drops_total").absolute(p.banned_drops);
        metrics::counter!("sbc_sip_scanner_drops_total").absolute(p.scanner_drops);
        if let Some(r) = self.bridge.registrar() {
            let s = r.stats();
            metrics::gauge!("sbc_registrations_active").set(r.len() as f64);
            metrics::counter!("sbc_registrar_accepted_total").absolute(s.accepted);
            metrics::counter!("sbc_registrar_challenges_total").absolute(s.challenged);
            metrics::counter!("sbc_registrar_auth_failures_total").absolute(s.auth_failures);
            metrics::counter!("sbc_registrar_bans_total").absolute(s.bans);
            metrics::counter!("sbc_registrar_banned_drops_total").absolute(s.dropped_banned);
            metrics::counter!("sbc_registrations_expired_total").absolute(s.expired);
            metrics::counter!("sbc_registrar_keepalives_total").absolute(s.keepalives);
            metrics::counter!("sbc_registrations_unreachable_total").absolute(s.unreachable);
        }
    }

    /// Ports skipped (held by another process) and calls refused for want of
    /// one, as counters and a log line naming the range.
    fn export_port_stats(&mut self) {
        let ((min, max), now) = self.bridge.port_stats();
        let was = std::mem::replace(&mut self.ports_exported, now);
        let skipped = now.skipped.saturating_sub(was.skipped);
        let exhausted = now.exhausted.saturating_sub(was.exhausted);
        if skipped > 0 {
            metrics::counter!("sbc_rtp_ports_skipped_total").increment(skipped);
            tracing::warn!(
                range = %format!("{min}-{max}"),
                skipped,
                "RTP ports held by another process: skipped"
            );
        }
        if exhausted > 0 {
            metrics::counter!("sbc_rtp_ports_exhausted_total").increment(exhausted);
            tracing::error!(
                range = %format!("{min}-{max}"),
                in_use = self.bridge.ports_in_use(),
                refused = exhausted,
                "RTP port range exhausted: calls refused with 503"
            );
        }
    }

    fn stateless_response(
        &mut self,
        bytes: &[u8],
        from: Peer,
        status: u16,
        extra: &[(&str, &str)],
    ) {
        if let Inbound::Request(req) =
            message::classify(bytes, from.transport, &ValidationConfig::default())
        {
            let tag = format!("{:08x}", message::fnv(req.call_id().unwrap_or("")));
            let mut resp = message::response_to(&req, status, Some(&tag));
            for (k, v) in extra {
                resp.headers.push(message::make_header(k, v));
            }
            self.stateless.push_back(Transmit {
                to: from,
                bytes: message::to_wire(&SipMessage::Response(resp)),
            });
        }
    }
}

/// An initial INVITE (no To tag), by a cheap scan.
fn initial_invite(bytes: &[u8]) -> bool {
    bytes.starts_with(b"INVITE ") && {
        let head_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(bytes.len());
        !bytes[..head_end].split(|&b| b == b'\n').any(|l| {
            let lower: Vec<u8> = l.iter().take(3).map(u8::to_ascii_lowercase).collect();
            (lower.starts_with(b"to:") || lower.starts_with(b"t:"))
                && l.windows(4).any(|w| w.eq_ignore_ascii_case(b"tag="))
        })
    }
}

impl SipCore for ControlCore {
    type Input = ControlIn;

    fn handle_input(&mut self, now: Instant, input: ControlIn) {
        self.handle(now, input);
    }

    fn handle_sip(&mut self, now: Instant, bytes: bytes::Bytes, from: Peer) {
        self.handle(now, ControlIn::Sip { bytes, from });
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.handle(now, ControlIn::Timeout);
    }

    fn handle_connection_closed(&mut self, conn: u64) {
        self.bridge.handle_connection_closed(conn);
        self.drain_events();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.bridge.poll_timeout()
    }

    fn poll_sip_transmit(&mut self) -> Option<Transmit> {
        self.stateless
            .pop_front()
            .or_else(|| self.bridge.poll_sip_transmit())
    }

    fn is_stopped(&self) -> bool {
        self.stopped
    }
}

fn record(ev: &CallEvent) {
    let dir = ev.direction.as_str();
    match ev.kind {
        CallEventKind::Initiated => {
            metrics::counter!("sbc_calls_started_total", "direction" => dir).increment(1)
        }
        CallEventKind::Answered => {
            metrics::counter!("sbc_calls_answered_total", "direction" => dir).increment(1)
        }
        CallEventKind::Completed => {
            let status = ev.status.map_or("unknown", |s| s.as_str());
            metrics::counter!("sbc_calls_ended_total", "direction" => dir, "status" => status)
                .increment(1);
            tracing::info!(target: "cdr", "{}", ev.cdr_line());
        }
        CallEventKind::PartyJoined => {
            let role = ev.party.as_ref().map_or("unknown", |p| p.role.as_str());
            metrics::counter!("sbc_participants_joined_total", "role" => role).increment(1)
        }
        CallEventKind::PartyLeft => {
            let reason = ev
                .party
                .as_ref()
                .and_then(|p| p.reason)
                .unwrap_or("unknown");
            metrics::counter!("sbc_participants_left_total", "reason" => reason).increment(1)
        }
        CallEventKind::Transfer => {
            let state = ev.transfer.as_ref().map_or("unknown", |t| t.state);
            metrics::counter!("sbc_transfers_total", "state" => state).increment(1)
        }
        CallEventKind::Siprec => {
            let state = ev.recording.as_ref().map_or("unknown", |r| r.state);
            metrics::counter!("sbc_siprec_sessions_total", "state" => state).increment(1);
            match state {
                "started" => metrics::gauge!("sbc_siprec_sessions_active").increment(1.0),
                "stopped" => metrics::gauge!("sbc_siprec_sessions_active").decrement(1.0),
                _ => {}
            }
        }
        CallEventKind::Quality => {
            if let Some(q) = &ev.quality {
                tracing::info!(target: "cdr", "quality call={} operator={} summary={}", ev.call_id, q.operator, q.summary);
            }
        }
        _ => {}
    }
}

/// The control task without sockets: a [`ControlCore`] driven by a scripted list
/// of [`ControlIn`] at virtual `now`s; what it sends out is read off its queues.
#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;

    use sip_bridge::bridge::{
        BridgeConfig, DialPlan, MediaEvent, NumberConfig, RETRY_AFTER_SECS, RouteFacts, Target,
        TrunkConfig,
    };
    use sip_bridge::signalling::SessionOutput;
    use sip_bridge::sip::dialog::LocalAddr;
    use sip_bridge::sip::message::Transport;
    use sip_bridge::token::TokenIssuer;
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;
    use crate::protect::ProtectionConfig;
    use crate::router::BoxFuture;

    const CARRIER: &str = "192.0.2.10:5060";
    const STRANGER: &str = "203.0.113.9:5060";

    /// Media tasks started by the core: each call's id and inbox.
    type Started = Arc<Mutex<Vec<(CallId, mpsc::UnboundedReceiver<MediaIn>)>>>;

    struct Harness {
        core: ControlCore,
        /// What the core's own tasks (the router's) send back.
        inbox: mpsc::UnboundedReceiver<ControlIn>,
        started: Started,
        sent: Vec<String>,
    }

    /// Number `+15550100` rings `plan`; one trunk, from `CARRIER`.
    fn harness(plan: DialPlan, tweak: impl FnOnce(&mut BridgeConfig)) -> Harness {
        let trunk = TrunkConfig {
            siprec: None,
            name: "carrier".into(),
            host: "carrier.example".into(),
            peers: vec![CARRIER.parse().unwrap()],
            transport: Transport::Udp,
            credentials: None,
            register: None,
            inbound: Vec::new(),
            codecs: vec![media_core::codec::Codec::Pcmu],
            dtmf: Default::default(),
            ping_interval: None,
            ringback: None,
            session_expires: None,
            late_offer: false,
            require_100rel: false,
            update_offers: false,
            accept_refer: false,
            latch: Default::default(),
            transfer: Default::default(),
        };
        let number = NumberConfig {
            id: "support".into(),
            e164: "+15550100".into(),
            name: "Support".into(),
            plan,
            capabilities: Default::default(),
            room: false,
        };
        let mut cfg = BridgeConfig::new(vec![number], vec![trunk], "10.0.0.1".parse().unwrap());
        cfg.rtp_ports = (20000, 20100);
        tweak(&mut cfg);
        let local = LocalAddr::udp("10.0.0.1".parse().unwrap(), 5060);
        let bridge = Bridge::new(cfg, local, TokenIssuer::new(&[7; 32]), 1_795_000_000);
        let started: Started = Arc::default();
        let record = started.clone();
        let start_media: StartMedia = Box::new(move |call, _seed, _control| {
            let (tx, rx) = mpsc::unbounded_channel();
            record.lock().unwrap().push((call, rx));
            tx
        });
        let (events, _) = mpsc::unbounded_channel();
        let mut core = ControlCore::new(
            bridge,
            Protection::new(ProtectionConfig::default()),
            start_media,
            events,
            1,
        );
        let (tx, inbox) = mpsc::unbounded_channel();
        core.set_inbox(tx);
        Harness {
            core,
            inbox,
            started,
            sent: Vec::new(),
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::ZERO + Duration::from_millis(ms)
    }

    fn udp(addr: &str) -> Peer {
        Peer::udp(addr.parse::<SocketAddr>().unwrap())
    }

    /// An initial INVITE to `+15550100` with a PCMU offer.
    fn invite(call_id: &str, from: &str) -> ControlIn {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
                   m=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let text = format!(
            "INVITE sip:+15550100@10.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {from};branch=z9hG4bK-{call_id}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:+15550111@carrier.example>;tag=a-{call_id}\r\n\
             To: <sip:+15550100@10.0.0.1>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:+15550111@{from}>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        ControlIn::Sip {
            bytes: text.into_bytes().into(),
            from: udp(from),
        }
    }

    impl Harness {
        /// Runs the script in order, each input at its time (ms), the core's timers
        /// firing in between; collects the first line of each SIP message sent.
        fn run(&mut self, script: Vec<(u64, ControlIn)>) {
            for (ms, input) in script {
                self.advance(ms);
                self.core.handle(at(ms), input);
                self.flush();
            }
        }

        /// Fires every timer due up to `ms`.
        fn advance(&mut self, ms: u64) {
            while let Some(due) = self.core.poll_timeout().filter(|t| *t <= at(ms)) {
                self.core.handle(due, ControlIn::Timeout);
                self.flush();
            }
        }

        fn flush(&mut self) {
            while let Some(t) = self.core.poll_sip_transmit() {
                let text = String::from_utf8_lossy(&t.bytes).into_owned();
                self.sent.push(text);
            }
        }

        /// The status lines (or request lines) sent so far.
        fn first_lines(&self) -> Vec<&str> {
            self.sent
                .iter()
                .map(|m| m.lines().next().unwrap_or(""))
                .collect()
        }

        fn status(&self) -> ControlStatus {
            self.core.status()
        }
    }

    #[test]
    fn the_stateless_pre_filter_refuses_before_any_transaction_exists() {
        let mut h = harness(
            DialPlan::single(vec![Target::Echo], Duration::from_secs(30)),
            |c| c.max_calls = 1,
        );
        h.run(vec![(0, invite("stranger-1", STRANGER))]);
        assert_eq!(h.first_lines(), ["SIP/2.0 403 Forbidden"]);
        h.sent.clear();
        h.run(vec![
            (10, ControlIn::Drain(true)),
            (20, invite("draining-1", CARRIER)),
        ]);
        assert!(h.status().draining);
        assert_eq!(h.first_lines(), ["SIP/2.0 503 Service Unavailable"]);
        assert!(
            h.sent[0].contains(&format!("Retry-After: {RETRY_AFTER_SECS}\r\n")),
            "{}",
            h.sent[0]
        );
        // Neither left a transaction, a leg or a call behind.
        assert_eq!(h.core.bridge.ua().transactions(), 0);
        let s = h.status();
        assert_eq!((s.calls, s.sip_legs, s.media_tasks), (0, 0, 0));

        h.sent.clear();
        h.run(vec![
            (30, ControlIn::Drain(false)),
            (40, invite("call-1", CARRIER)),
            (50, invite("call-2", CARRIER)),
        ]);
        let lines = h.first_lines();
        assert!(
            lines.contains(&"SIP/2.0 200 OK"),
            "the first call is taken: {lines:?}"
        );
        assert_eq!(
            lines.last(),
            Some(&"SIP/2.0 503 Service Unavailable"),
            "the second is over max_calls"
        );
        assert_eq!(h.status().calls, 1);
        assert_eq!(h.core.bridge.ua().legs(), 1, "no leg for the refused one");
    }

    #[test]
    fn a_call_s_first_media_command_starts_its_task_and_stop_lets_go_of_it() {
        let mut h = harness(
            DialPlan::single(vec![Target::Echo], Duration::from_secs(30)),
            |_| {},
        );
        h.run(vec![(0, invite("call-1", CARRIER))]);
        assert_eq!(h.status().media_tasks, 1);
        let (call, mut rx) = h.started.lock().unwrap().pop().unwrap();
        assert!(h.started.lock().unwrap().is_empty(), "one task per call");
        let mut commands = Vec::new();
        while let Ok(MediaIn::Command(c)) = rx.try_recv() {
            commands.push(c);
        }
        let Some(MediaCommand::AddRtp { leg: caller, .. }) = commands.first().cloned() else {
            panic!("the caller's RTP leg first: {commands:?}");
        };
        assert!(commands.len() > 1, "later commands go to the same task");

        // The media task reports the caller silent: the call ends, its task is told
        // to stop and let go of.
        let event = MediaEvent::MediaTimeout { leg: caller };
        h.run(vec![(60_000, ControlIn::Media { call, event })]);
        assert!(
            h.first_lines()
                .contains(&"BYE sip:+15550111@192.0.2.10:5060 SIP/2.0")
        );
        assert_eq!(h.status().calls, 0);
        assert_eq!(h.status().media_tasks, 0);
        let mut last = None;
        while let Ok(MediaIn::Command(c)) = rx.try_recv() {
            last = Some(c);
        }
        assert_eq!(last, Some(MediaCommand::Stop));
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    /// A router whose answer never comes.
    struct Silent;

    impl Router for Silent {
        fn route(&self, _: RouteFacts) -> BoxFuture<RouteDecision> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_router_that_never_answers_leaves_the_call_to_the_static_plan() {
        let mut h = harness(
            DialPlan::single(vec![Target::Echo], Duration::from_secs(30)),
            |c| c.external_routing = true,
        );
        h.core.set_router(Arc::new(Silent));
        h.run(vec![(0, invite("call-1", CARRIER))]);
        h.advance(4_999);
        assert!(
            !h.first_lines().contains(&"SIP/2.0 200 OK"),
            "waiting for the router"
        );
        h.advance(5_000); // sip_bridge::bridge::ROUTE_TIMEOUT
        assert!(
            h.first_lines().contains(&"SIP/2.0 200 OK"),
            "the static plan (echo) answered: {:?}",
            h.first_lines()
        );
        assert_eq!(h.inbox.try_recv().unwrap_err(), TryRecvError::Empty);
    }

    /// A router that refuses every call with 486.
    struct Busy;

    impl Router for Busy {
        fn route(&self, _: RouteFacts) -> BoxFuture<RouteDecision> {
            Box::pin(async { RouteDecision::Reject(486) })
        }
    }

    #[tokio::test]
    async fn a_router_s_decision_comes_back_as_an_input() {
        let mut h = harness(
            DialPlan::single(vec![Target::Echo], Duration::from_secs(30)),
            |c| c.external_routing = true,
        );
        h.core.set_router(Arc::new(Busy));
        h.run(vec![(0, invite("call-1", CARRIER))]);
        let decision = h.inbox.recv().await.unwrap();
        assert!(
            matches!(&decision, ControlIn::Route { call, decision: RouteDecision::Reject(486) } if *call == CallId(1)),
            "{decision:?}"
        );
        h.run(vec![(100, decision)]);
        assert_eq!(h.first_lines().last(), Some(&"SIP/2.0 486 Busy Here"));
        assert_eq!(h.status().calls, 0);
    }

    #[test]
    fn an_operator_socket_that_does_not_read_is_closed() {
        let mut h = harness(DialPlan::default(), |_| {});
        // Room for one frame, and nobody reads.
        let (tx, mut rx) = mpsc::channel(1);
        let ping = |session| ControlIn::WsText {
            session,
            text: r#"{"type":"ping"}"#.into(),
        };
        h.run(vec![
            (0, ControlIn::WsOpen { session: 1, tx }),
            (10, ping(1)),
            (20, ping(1)),
        ]);
        assert_eq!(h.status().operator_sockets, 0, "its queue was dropped");
        assert!(matches!(rx.try_recv(), Ok(SessionOutput::Send(_))));
        assert_eq!(
            rx.try_recv().unwrap_err(),
            TryRecvError::Disconnected,
            "which closes the socket"
        );
    }
}
