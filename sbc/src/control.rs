//! The control task's core: the bridge (SIP UA, calls, operators) behind the
//! front door (`protect`), wired to its outputs: operator WebSockets, per-call
//! media tasks, call events. It runs inside the SIP transport task
//! (`sip::SipSockets::spawn`), so SIP, signalling and call control share one owner
//! and need no locks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use media_core::Instant;
use sip_bridge::bridge::{Bridge, CallEvent, CallEventKind, MediaCommand, MediaEvent, Origin};
use sip_bridge::presence::SessionId;
use sip_bridge::signalling::SessionOutput;
use sip_bridge::sip::message::{self, Inbound, Peer, SipHeaders, SipMessage, ValidationConfig};
use sip_bridge::sip::transaction::Transmit;
use tokio::sync::mpsc;

use crate::media_task::{self, MediaCtx, MediaIn};
use crate::protect::{Protection, Verdict};
use crate::router::Router;
use crate::sip::{Handle, SipCore};

/// Outbound queue of one operator WebSocket.
pub type WsSender = mpsc::Sender<SessionOutput>;

/// See the module docs.
pub struct ControlCore {
    /// The bridge.
    pub bridge: Bridge,
    protect: Protection,
    ws: HashMap<SessionId, WsSender>,
    media: HashMap<String, mpsc::UnboundedSender<MediaIn>>,
    media_ctx: Arc<MediaCtx>,
    me: Option<Handle<ControlCore>>,
    events: mpsc::UnboundedSender<CallEvent>,
    stateless: VecDeque<Transmit>,
    seed: u64,
    router: Option<Arc<dyn Router>>,
    trunks_exported: Option<Instant>,
}

impl std::fmt::Debug for ControlCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCore")
            .field("calls", &self.bridge.calls())
            .finish_non_exhaustive()
    }
}

impl ControlCore {
    /// A core around `bridge`.
    pub fn new(
        bridge: Bridge,
        protect: Protection,
        media_ctx: Arc<MediaCtx>,
        events: mpsc::UnboundedSender<CallEvent>,
        seed: u64,
    ) -> Self {
        ControlCore {
            bridge,
            protect,
            ws: HashMap::new(),
            media: HashMap::new(),
            media_ctx,
            me: None,
            events,
            stateless: VecDeque::new(),
            seed,
            router: None,
            trunks_exported: None,
        }
    }

    /// Routes every call through `router` (the bridge asks before ringing).
    pub fn set_router(&mut self, router: Arc<dyn Router>) {
        self.router = Some(router);
    }

    /// Gives the core its own handle (for the media tasks it starts).
    pub fn set_handle(&mut self, me: Handle<ControlCore>) {
        self.me = Some(me);
    }

    /// The front door's counters.
    pub fn protection(&self) -> &Protection {
        &self.protect
    }

    /// Stops taking new calls (SIGTERM): new INVITEs get 503, dials an error.
    pub fn set_draining(&mut self, on: bool) {
        self.bridge.set_draining(on);
    }

    /// Whether the SBC is draining (the bridge's flag).
    pub fn draining(&self) -> bool {
        self.bridge.draining()
    }

    /// Media tasks running.
    pub fn media_tasks(&self) -> usize {
        self.media.len()
    }

    /// A new operator WebSocket.
    pub fn ws_open(&mut self, now: Instant, session: SessionId, tx: WsSender) {
        self.ws.insert(session, tx);
        self.bridge.handle_ws_open(now, session);
    }

    /// An operator WebSocket closed.
    pub fn ws_closed(&mut self, now: Instant, session: SessionId) {
        self.ws.remove(&session);
        self.bridge.handle_ws_closed(now, session);
    }

    /// A media task's event.
    pub fn media_event(&mut self, now: Instant, call: &str, ev: MediaEvent) {
        self.bridge.handle_media_event(now, call, ev);
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
    fn handle_sip(&mut self, now: Instant, bytes: &[u8], from: Peer) {
        match self.protect.check(now, from.addr.ip(), bytes) {
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
            if let Err(refusal) = self.bridge.admission(Origin::Sip(from.addr.ip())) {
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

    fn handle_timeout(&mut self, now: Instant) {
        self.bridge.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.bridge.poll_timeout()
    }

    fn poll_sip_transmit(&mut self) -> Option<Transmit> {
        self.stateless
            .pop_front()
            .or_else(|| self.bridge.poll_sip_transmit())
    }

    fn after_io(&mut self, now: Instant) {
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
        while let Some((sid, out)) = self.bridge.poll_ws_output() {
            if let Some(tx) = self.ws.get(&sid)
                && tx.try_send(out).is_err()
            {
                // A browser that does not read its socket loses it; the call keeps
                // its grace period like any dropped connection.
                tracing::warn!(session = sid, "operator WebSocket backlogged; closing");
                self.ws.remove(&sid);
            }
        }
        while let Some((call, cmd)) = self.bridge.poll_media_command() {
            let stop = cmd == MediaCommand::Stop;
            let tx = match self.media.get(&call) {
                Some(tx) => Some(tx.clone()),
                None if !stop => self.me.clone().map(|me| {
                    self.seed = self
                        .seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let tx = media_task::spawn(call.clone(), self.media_ctx.clone(), me, self.seed);
                    self.media.insert(call.clone(), tx.clone());
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
        while let Some(facts) = self.bridge.poll_route_request() {
            match (&self.router, &self.me) {
                (Some(router), Some(me)) => {
                    let (router, me) = (router.clone(), me.clone());
                    tokio::spawn(async move {
                        let id = facts.call_id.clone();
                        let decision = router.route(facts).await;
                        let _ = me
                            .send(move |c, now| c.bridge.handle_route(now, &id, decision))
                            .await;
                    });
                }
                _ => self.bridge.handle_route(
                    now,
                    &facts.call_id,
                    sip_bridge::bridge::RouteDecision::Default,
                ),
            }
        }
        while let Some(ev) = self.bridge.poll_event() {
            record(&ev);
            let _ = self.events.send(ev);
        }
        metrics::gauge!("sbc_calls_active").set(self.bridge.calls() as f64);
        metrics::gauge!("sbc_operator_sessions").set(self.bridge.sessions() as f64);
        metrics::gauge!("sbc_operators").set(self.bridge.presence().len() as f64);
        metrics::gauge!("sbc_rtp_ports_in_use").set(self.bridge.ports_in_use() as f64);
        metrics::gauge!("sbc_media_sessions").set(self.media.len() as f64);
        let ua = self.bridge.ua();
        metrics::gauge!("sbc_sip_legs").set(ua.legs() as f64);
        metrics::gauge!("sbc_sip_dialogs").set(ua.dialogs() as f64);
        metrics::gauge!("sbc_sip_transactions").set(ua.transactions() as f64);
        let tx = ua.transaction_stats();
        metrics::gauge!("sbc_sip_retransmissions").set(tx.retransmissions as f64);
        let p = self.protect.stats();
        metrics::gauge!("sbc_sip_bans").set(p.bans as f64);
        metrics::gauge!("sbc_sip_banned_drops").set(p.banned_drops as f64);
        metrics::gauge!("sbc_sip_scanner_drops").set(p.scanner_drops as f64);
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
        _ => {}
    }
}
