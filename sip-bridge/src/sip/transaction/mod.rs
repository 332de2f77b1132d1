//! The transaction layer (RFC 3261 section 17, updated by RFC 6026), sans-IO.
//!
//! Four state machines: INVITE client (ICT), non-INVITE client (NICT), INVITE
//! server (IST), non-INVITE server (NIST). Retransmissions run only over
//! unreliable transports. A non-2xx final to an INVITE is ACKed inside the
//! transaction; 2xx and their ACKs belong to the UA core (dialog layer), which the
//! Accepted states (RFC 6026) leave room for. A CANCEL is answered here and
//! reported to the TU (which then answers 487, RFC 3261 section 9.2).
//!
//! Timers live in an enum-indexed table per transaction; a heap of deadlines
//! (stale entries skipped) gives `poll_timeout` and `handle_timeout` their next
//! work without scanning every transaction. The table is bounded: past
//! `max_transactions`, new requests are answered 503 with Retry-After statelessly.

mod timer;

pub use timer::{Timer, TimerConfig};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use media_core::{Instant, SeededRng};
use rsipstack::sip::{Header, Method, Request, Response, SipMessage};

use super::message::{Peer, SipHeaders, response_to, to_wire};
use timer::TimerTable;

/// Identifies a transaction for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u64);

/// RFC 3261 section 17.1.3 / 17.2.3 matching keys; RFC 2543 peers (no magic
/// cookie) are matched on the request's identity instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Client {
        branch: String,
        method: Method,
    },
    Server {
        branch: String,
        sent_by: String,
        method: Method,
    },
    /// Section 17.2.3's rule for a branch without the cookie: the
    /// Request-URI, From tag, Call-ID, CSeq and top Via (the To tag is left
    /// out: an ACK for our non-2xx carries the tag of our response, which the
    /// INVITE did not have; no branch-less peer forks).
    Server2543 {
        uri: String,
        call_id: String,
        cseq: u32,
        from_tag: String,
        via: String,
        method: Method,
    },
}

const COOKIE: &str = "z9hG4bK";

fn server_key(req: &Request, method: Method) -> Option<Key> {
    match req.branch() {
        Some(b) if b.starts_with(COOKIE) => Some(Key::Server {
            branch: b.to_string(),
            sent_by: req.sent_by()?.to_ascii_lowercase(),
            method,
        }),
        _ => Some(Key::Server2543 {
            uri: req.uri.to_string(),
            call_id: req.call_id()?.to_string(),
            cseq: req.cseq()?.0,
            from_tag: req.from_tag().unwrap_or("").to_string(),
            via: req.top_via()?.to_string(),
            method,
        }),
    }
}

/// Who the transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// INVITE client.
    InviteClient,
    /// Non-INVITE client.
    NonInviteClient,
    /// INVITE server.
    InviteServer,
    /// Non-INVITE server.
    NonInviteServer,
}

/// Transaction states (RFC 3261 figures 5-8, RFC 6026 Accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// ICT: request sent, nothing back.
    Calling,
    /// NICT/NIST: request sent / received, nothing final.
    Trying,
    /// A provisional response seen / sent.
    Proceeding,
    /// A final response (non-2xx for INVITE) seen / sent; absorbing retransmits.
    Completed,
    /// IST: ACK received for a non-2xx.
    Confirmed,
    /// INVITE: a 2xx seen / sent (RFC 6026).
    Accepted,
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where.
    pub to: Peer,
    /// The serialised message.
    pub bytes: Bytes,
}

/// What the transaction layer reports to its user (the UA core).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TxEvent {
    /// A new request (a server transaction exists; answer with `respond`).
    Request {
        /// The server transaction.
        id: TxId,
        /// The request.
        request: Box<Request>,
        /// Its source.
        from: Peer,
    },
    /// An ACK outside any transaction (ACK for a 2xx: the dialog's business).
    Ack {
        /// The ACK.
        request: Box<Request>,
        /// Its source.
        from: Peer,
    },
    /// A response for a client transaction.
    Response {
        /// The client transaction.
        id: TxId,
        /// The response.
        response: Box<Response>,
    },
    /// A 2xx to an INVITE with no transaction left (a late fork or retransmission):
    /// the UA core must ACK (and maybe BYE) it.
    StrayResponse {
        /// The response.
        response: Box<Response>,
        /// Its source.
        from: Peer,
    },
    /// A CANCEL matched this INVITE server transaction; 200 was sent to the CANCEL.
    /// Answer the INVITE 487 if it has no final response yet.
    Cancelled {
        /// The INVITE server transaction.
        invite: TxId,
        /// The CANCEL's `Reason` header (RFC 3326), if any.
        reason: Option<String>,
    },
    /// A client transaction got no final response (Timer B or F): act as on 408.
    Timeout {
        /// The client transaction.
        id: TxId,
    },
    /// An INVITE server transaction never got its ACK (Timer H).
    NoAck {
        /// The server transaction.
        id: TxId,
    },
    /// The transaction is gone.
    Terminated {
        /// Which.
        id: TxId,
    },
}

/// Caller errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// No such transaction (or not of the right kind).
    #[error("no such transaction")]
    Unknown,
    /// The transaction table is full.
    #[error("too many transactions")]
    Overloaded,
    /// The request lacks what a transaction needs (Via with branch, CSeq...).
    #[error("request unusable for a transaction: {0}")]
    BadRequest(&'static str),
    /// Not allowed in the transaction's state (e.g. a second final response).
    #[error("not allowed in state {0:?}")]
    WrongState(State),
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Transactions created.
    pub created: u64,
    /// Requests and responses retransmitted by timers.
    pub retransmissions: u64,
    /// Retransmissions received and absorbed.
    pub absorbed: u64,
    /// Client transactions that timed out.
    pub timeouts: u64,
    /// Requests refused with 503 because the table was full.
    pub overload_rejects: u64,
}

#[derive(Debug)]
struct Tx {
    role: Role,
    state: State,
    key: Key,
    request: Request,
    request_bytes: Bytes,
    peer: Peer,
    last_response: Option<Bytes>,
    timers: TimerTable,
    /// Current retransmit interval (A, E or G).
    interval: Duration,
    /// ICT: a CANCEL waits for the first provisional response (RFC 3261 9.1).
    cancel_pending: bool,
    /// The `Reason` of our CANCEL (RFC 3326), if it has one.
    cancel_reason: Option<String>,
    /// ICT: CANCEL sent; the INVITE gets 64*T1 more for its final response (9.1).
    cancel_sent: bool,
    /// ICT: the ACK for a non-2xx final, to resend on its retransmissions.
    ack: Option<Bytes>,
}

/// The transaction layer. See the module docs.
#[derive(Debug)]
pub struct TransactionLayer {
    cfg: TimerConfig,
    max: usize,
    next_id: u64,
    by_key: HashMap<Key, TxId>,
    txs: HashMap<TxId, Tx>,
    heap: BinaryHeap<Reverse<(Instant, TxId)>>,
    out: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    rng: SeededRng,
    stats: TxStats,
}

impl TransactionLayer {
    /// A layer with `cfg` timers holding at most `max` transactions; `seed` makes
    /// branch values.
    pub fn new(cfg: TimerConfig, max: usize, seed: u64) -> Self {
        TransactionLayer {
            cfg,
            max,
            next_id: 1,
            by_key: HashMap::new(),
            txs: HashMap::new(),
            heap: BinaryHeap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            rng: SeededRng::new(seed),
            stats: TxStats::default(),
        }
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether none are live.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> &TxStats {
        &self.stats
    }

    /// A fresh branch (RFC 3261 section 8.1.1.7).
    pub fn new_branch(&mut self) -> String {
        format!("{COOKIE}{:016x}", self.rng.next_u64())
    }

    /// The timer base values.
    pub fn timers(&self) -> TimerConfig {
        self.cfg
    }

    /// A transaction's state and role.
    pub fn state(&self, id: TxId) -> Option<(Role, State)> {
        self.txs.get(&id).map(|t| (t.role, t.state))
    }

    /// The request of a transaction.
    pub fn request(&self, id: TxId) -> Option<&Request> {
        self.txs.get(&id).map(|t| &t.request)
    }

    /// The peer of a transaction.
    pub fn peer(&self, id: TxId) -> Option<Peer> {
        self.txs.get(&id).map(|t| t.peer)
    }

    fn alloc(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id += 1;
        id
    }

    fn set_timer(&mut self, id: TxId, t: Timer, at: Instant) {
        if let Some(tx) = self.txs.get_mut(&id) {
            tx.timers.set(t, at);
            self.heap.push(Reverse((at, id)));
        }
    }

    fn remove(&mut self, id: TxId) {
        if let Some(tx) = self.txs.remove(&id) {
            self.by_key.remove(&tx.key);
            self.events.push_back(TxEvent::Terminated { id });
        }
    }

    fn transmit(&mut self, to: Peer, bytes: Bytes) {
        self.out.push_back(Transmit { to, bytes });
    }

    /// Starts a client transaction for `req` (its top Via must carry a branch; use
    /// [`TransactionLayer::new_branch`]) and sends it to `to`.
    pub fn send_request(&mut self, now: Instant, req: Request, to: Peer) -> Result<TxId, TxError> {
        if req.method == Method::Ack {
            return Err(TxError::BadRequest(
                "ACK has no transaction: send it statelessly",
            ));
        }
        let branch = req
            .branch()
            .ok_or(TxError::BadRequest("no Via branch"))?
            .to_string();
        req.cseq().ok_or(TxError::BadRequest("no CSeq"))?;
        if self.txs.len() >= self.max {
            return Err(TxError::Overloaded);
        }
        let key = Key::Client {
            branch,
            method: req.method,
        };
        if self.by_key.contains_key(&key) {
            return Err(TxError::BadRequest("branch already in use"));
        }
        let id = self.alloc();
        let bytes = to_wire(&SipMessage::Request(req.clone()));
        let invite = req.method == Method::Invite;
        self.txs.insert(
            id,
            Tx {
                role: if invite {
                    Role::InviteClient
                } else {
                    Role::NonInviteClient
                },
                state: if invite {
                    State::Calling
                } else {
                    State::Trying
                },
                key: key.clone(),
                request: req,
                request_bytes: bytes.clone(),
                peer: to,
                last_response: None,
                timers: TimerTable::default(),
                interval: self.cfg.t1,
                cancel_pending: false,
                cancel_reason: None,
                cancel_sent: false,
                ack: None,
            },
        );
        self.by_key.insert(key, id);
        self.stats.created += 1;
        self.transmit(to, bytes);
        let t64 = self.cfg.t1 * 64;
        if invite {
            if !to.transport.is_reliable() {
                self.set_timer(id, Timer::A, now + self.cfg.t1);
            }
            self.set_timer(id, Timer::B, now + t64);
        } else {
            if !to.transport.is_reliable() {
                self.set_timer(id, Timer::E, now + self.cfg.t1);
            }
            self.set_timer(id, Timer::F, now + t64);
        }
        Ok(id)
    }

    /// Sends a message outside any transaction (ACK for 2xx, stray 2xx answers).
    pub fn send_stateless(&mut self, msg: &SipMessage, to: Peer) {
        let bytes = to_wire(msg);
        self.transmit(to, bytes);
    }

    /// Cancels an INVITE client transaction (RFC 3261 section 9.1): the CANCEL goes
    /// out now if a provisional response was seen, else as soon as one is. Returns
    /// false if the INVITE has already completed.
    pub fn cancel(&mut self, now: Instant, invite: TxId) -> Result<bool, TxError> {
        self.cancel_with(now, invite, None)
    }

    /// [`Self::cancel`] with a `Reason` header (RFC 3326): a lost fork's
    /// `SIP ;cause=200 ;text="Call completed elsewhere"`.
    pub fn cancel_with(
        &mut self,
        now: Instant,
        invite: TxId,
        reason: Option<String>,
    ) -> Result<bool, TxError> {
        let tx = self.txs.get_mut(&invite).ok_or(TxError::Unknown)?;
        if tx.role != Role::InviteClient {
            return Err(TxError::Unknown);
        }
        if reason.is_some() {
            tx.cancel_reason = reason;
        }
        match tx.state {
            State::Calling => {
                tx.cancel_pending = true;
                Ok(true)
            }
            State::Proceeding => {
                self.send_cancel(now, invite)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn send_cancel(&mut self, now: Instant, invite: TxId) -> Result<TxId, TxError> {
        let tx = self.txs.get(&invite).ok_or(TxError::Unknown)?;
        let orig = &tx.request;
        let to = tx.peer;
        let mut headers = Vec::new();
        if let Some(v) = orig.top_via() {
            headers.push(Header::Via(v.to_string().into()));
        }
        for h in orig.headers.iter() {
            match h {
                Header::From(_)
                | Header::To(_)
                | Header::CallId(_)
                | Header::Route(_)
                | Header::MaxForwards(_) => headers.push(h.clone()),
                _ => {}
            }
        }
        let (n, _) = orig.cseq().ok_or(TxError::BadRequest("no CSeq"))?;
        headers.push(Header::CSeq(format!("{n} CANCEL").into()));
        if let Some(r) = &tx.cancel_reason {
            headers.push(rsipstack::sip::headers::make_header("Reason", r.clone()));
        }
        let cancel = Request {
            method: Method::Cancel,
            uri: orig.uri.clone(),
            version: rsipstack::sip::Version::V2,
            headers: headers.into(),
            body: Vec::new(),
        };
        // No final response within 64*T1 of the CANCEL: the INVITE is given up (9.1).
        let t64 = self.cfg.t1 * 64;
        if let Some(tx) = self.txs.get_mut(&invite) {
            tx.cancel_sent = true;
        }
        self.set_timer(invite, Timer::B, now + t64);
        self.send_request(now, cancel, to)
    }

    /// Sends a response through the server transaction `id`.
    pub fn respond(&mut self, now: Instant, id: TxId, resp: Response) -> Result<(), TxError> {
        let tx = self.txs.get_mut(&id).ok_or(TxError::Unknown)?;
        let code = resp.status_code.code();
        let bytes = to_wire(&SipMessage::Response(resp));
        let reliable = tx.peer.transport.is_reliable();
        let peer = tx.peer;
        let t64 = self.cfg.t1 * 64;
        match (tx.role, tx.state) {
            (Role::InviteServer, State::Proceeding) => {
                tx.last_response = Some(bytes.clone());
                self.transmit(peer, bytes);
                if (200..300).contains(&code) {
                    // The UA core retransmits 2xx until ACK (RFC 3261 13.3.1.4).
                    let tx = self.txs.get_mut(&id).ok_or(TxError::Unknown)?;
                    tx.state = State::Accepted;
                    self.set_timer(id, Timer::L, now + t64);
                } else if code >= 300 {
                    let tx = self.txs.get_mut(&id).ok_or(TxError::Unknown)?;
                    tx.state = State::Completed;
                    tx.interval = self.cfg.t1;
                    if !reliable {
                        self.set_timer(id, Timer::G, now + self.cfg.t1);
                    }
                    self.set_timer(id, Timer::H, now + t64);
                }
                Ok(())
            }
            (Role::InviteServer, State::Accepted) if (200..300).contains(&code) => {
                // A 2xx retransmission from the UA core.
                self.transmit(peer, bytes);
                Ok(())
            }
            (Role::NonInviteServer, State::Trying | State::Proceeding) => {
                tx.last_response = Some(bytes.clone());
                self.transmit(peer, bytes);
                let tx = self.txs.get_mut(&id).ok_or(TxError::Unknown)?;
                if code < 200 {
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    if reliable {
                        self.remove(id);
                    } else {
                        self.set_timer(id, Timer::J, now + t64);
                    }
                }
                Ok(())
            }
            (_, state) => Err(TxError::WrongState(state)),
        }
    }

    /// Forgets a server transaction of a request that gets no answer (a
    /// REGISTER from a banned address): nothing is sent, nothing waits.
    pub fn abandon(&mut self, id: TxId) {
        if self
            .txs
            .get(&id)
            .is_some_and(|t| t.role == Role::NonInviteServer && t.state == State::Trying)
        {
            self.remove(id);
        }
    }

    /// Takes a validated message that arrived from `from`.
    pub fn handle_message(&mut self, now: Instant, msg: SipMessage, from: Peer) {
        match msg {
            SipMessage::Request(r) => self.handle_request(now, r, from),
            SipMessage::Response(r) => self.handle_response(now, r, from),
        }
    }

    fn handle_request(&mut self, now: Instant, req: Request, from: Peer) {
        let method = req.method;
        let match_method = if method == Method::Ack {
            Method::Invite
        } else {
            method
        };
        let Some(key) = server_key(&req, match_method) else {
            return;
        };
        if method == Method::Ack {
            let Some(&id) = self.by_key.get(&key) else {
                self.events.push_back(TxEvent::Ack {
                    request: Box::new(req),
                    from,
                });
                return;
            };
            let Some(tx) = self.txs.get_mut(&id) else {
                return;
            };
            match tx.state {
                State::Completed => {
                    tx.state = State::Confirmed;
                    tx.timers.clear(Timer::G);
                    tx.timers.clear(Timer::H);
                    if from.transport.is_reliable() {
                        self.remove(id);
                    } else {
                        let t4 = self.cfg.t4;
                        self.set_timer(id, Timer::I, now + t4);
                    }
                }
                State::Accepted => self.events.push_back(TxEvent::Ack {
                    request: Box::new(req),
                    from,
                }),
                _ => self.stats.absorbed += 1,
            }
            return;
        }
        if let Some(&id) = self.by_key.get(&key) {
            // A retransmission: answer with the last response, if any.
            self.stats.absorbed += 1;
            if let Some(tx) = self.txs.get(&id)
                && matches!(tx.state, State::Proceeding | State::Completed)
                && let Some(b) = tx.last_response.clone()
            {
                let peer = tx.peer;
                self.transmit(peer, b);
            }
            return;
        }
        if self.txs.len() >= self.max {
            // Overload: refuse statelessly rather than grow (RFC 3261 21.5.4).
            self.stats.overload_rejects += 1;
            let mut resp = response_to(&req, 503, Some("overload"));
            resp.headers.push(Header::RetryAfter("5".into()));
            self.send_stateless(&SipMessage::Response(resp), from);
            return;
        }
        let invite = method == Method::Invite;
        let id = self.alloc();
        self.txs.insert(
            id,
            Tx {
                role: if invite {
                    Role::InviteServer
                } else {
                    Role::NonInviteServer
                },
                state: if invite {
                    State::Proceeding
                } else {
                    State::Trying
                },
                key: key.clone(),
                request: req.clone(),
                request_bytes: Bytes::new(),
                peer: from,
                last_response: None,
                timers: TimerTable::default(),
                interval: self.cfg.t1,
                cancel_pending: false,
                cancel_reason: None,
                cancel_sent: false,
                ack: None,
            },
        );
        self.by_key.insert(key, id);
        self.stats.created += 1;
        if method == Method::Cancel {
            // RFC 3261 section 9.2: find the INVITE it cancels.
            let target =
                server_key(&req, Method::Invite).and_then(|k| self.by_key.get(&k).copied());
            let live = target.filter(|t| {
                self.txs
                    .get(t)
                    .is_some_and(|tx| tx.state == State::Proceeding)
            });
            let status = if live.is_some() { 200 } else { 481 };
            let _ = self.respond(now, id, response_to(&req, status, Some("c")));
            if let Some(invite) = live {
                let reason = req.lines("Reason").first().map(|r| r.to_string());
                self.events.push_back(TxEvent::Cancelled { invite, reason });
            }
            return;
        }
        if invite {
            // 100 Trying at once: stops the client's retransmissions (RFC 3261 17.2.1).
            let _ = self.respond(now, id, response_to(&req, 100, None));
        }
        self.events.push_back(TxEvent::Request {
            id,
            request: Box::new(req),
            from,
        });
    }

    fn handle_response(&mut self, now: Instant, resp: Response, from: Peer) {
        let code = resp.status_code.code();
        let Some((_, cseq_method)) = resp.cseq() else {
            return;
        };
        let Ok(method) = cseq_method.parse::<Method>() else {
            return;
        };
        let Some(branch) = resp.branch() else { return };
        let key = Key::Client {
            branch: branch.to_string(),
            method,
        };
        let Some(&id) = self.by_key.get(&key) else {
            if method == Method::Invite && (200..300).contains(&code) {
                self.events.push_back(TxEvent::StrayResponse {
                    response: Box::new(resp),
                    from,
                });
            }
            return;
        };
        let t64 = self.cfg.t1 * 64;
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let reliable = tx.peer.transport.is_reliable();
        match (tx.role, tx.state) {
            (Role::InviteClient, State::Calling | State::Proceeding) => {
                tx.timers.clear(Timer::A);
                if code < 200 {
                    let first = tx.state == State::Calling;
                    tx.state = State::Proceeding;
                    // Timer B only covers Calling (17.1.1.2); a ringing call's
                    // limit is the UA's (Timer C's role, 16.6), or 64*T1 after CANCEL.
                    if !tx.cancel_sent {
                        tx.timers.clear(Timer::B);
                    }
                    let cancel = first && std::mem::take(&mut tx.cancel_pending);
                    self.events.push_back(TxEvent::Response {
                        id,
                        response: Box::new(resp),
                    });
                    if cancel {
                        let _ = self.send_cancel(now, id);
                    }
                } else if code < 300 {
                    tx.state = State::Accepted;
                    tx.timers.clear(Timer::B);
                    self.set_timer(id, Timer::M, now + t64);
                    self.events.push_back(TxEvent::Response {
                        id,
                        response: Box::new(resp),
                    });
                } else {
                    let ack = ack_for(&tx.request, &resp);
                    let peer = tx.peer;
                    tx.state = State::Completed;
                    tx.timers.clear(Timer::B);
                    tx.ack = Some(ack.clone());
                    self.transmit(peer, ack);
                    self.events.push_back(TxEvent::Response {
                        id,
                        response: Box::new(resp),
                    });
                    if reliable {
                        self.remove(id);
                    } else {
                        self.set_timer(id, Timer::D, now + Duration::from_secs(32));
                    }
                }
            }
            (Role::InviteClient, State::Completed) => {
                // A retransmitted final: ACK again (RFC 3261 17.1.1.2).
                self.stats.absorbed += 1;
                if let Some(ack) = tx.ack.clone() {
                    let peer = tx.peer;
                    self.transmit(peer, ack);
                }
            }
            (Role::InviteClient, State::Accepted) => {
                // RFC 6026: further 2xx (retransmissions, forks) go to the TU.
                if (200..300).contains(&code) {
                    self.events.push_back(TxEvent::Response {
                        id,
                        response: Box::new(resp),
                    });
                }
            }
            (Role::NonInviteClient, State::Trying | State::Proceeding) => {
                if code < 200 {
                    tx.state = State::Proceeding;
                    self.events.push_back(TxEvent::Response {
                        id,
                        response: Box::new(resp),
                    });
                } else {
                    tx.state = State::Completed;
                    tx.timers.clear(Timer::E);
                    tx.timers.clear(Timer::F);
                    self.events.push_back(TxEvent::Response {
                        id,
                        response: Box::new(resp),
                    });
                    if reliable {
                        self.remove(id);
                    } else {
                        let t4 = self.cfg.t4;
                        self.set_timer(id, Timer::K, now + t4);
                    }
                }
            }
            _ => self.stats.absorbed += 1,
        }
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let due: Vec<Timer> = match self.txs.get(&id) {
                Some(tx) => tx.timers.due(now).collect(),
                None => continue,
            };
            for t in due {
                if let Some(tx) = self.txs.get_mut(&id) {
                    tx.timers.clear(t);
                }
                self.fire(now, id, t);
            }
        }
    }

    fn fire(&mut self, now: Instant, id: TxId, t: Timer) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        match t {
            Timer::A | Timer::E | Timer::G => {
                let retransmit = match (t, tx.state) {
                    (Timer::A, State::Calling) => Some(tx.request_bytes.clone()),
                    (Timer::E, State::Trying | State::Proceeding) => Some(tx.request_bytes.clone()),
                    (Timer::G, State::Completed) => tx.last_response.clone(),
                    _ => None,
                };
                let Some(bytes) = retransmit else { return };
                // A doubles without bound (17.1.1.2); E and G are capped at T2
                // (E sits at T2 in Proceeding: 17.1.2.2).
                let next = match t {
                    Timer::A => tx.interval * 2,
                    Timer::E if tx.state == State::Proceeding => self.cfg.t2,
                    _ => (tx.interval * 2).min(self.cfg.t2),
                };
                tx.interval = next;
                let peer = tx.peer;
                self.stats.retransmissions += 1;
                self.transmit(peer, bytes);
                self.set_timer(id, t, now + next);
            }
            Timer::B | Timer::F => {
                let live = match t {
                    Timer::B => {
                        tx.state == State::Calling
                            || (tx.state == State::Proceeding && tx.cancel_sent)
                    }
                    _ => matches!(tx.state, State::Trying | State::Proceeding),
                };
                if live {
                    self.stats.timeouts += 1;
                    self.events.push_back(TxEvent::Timeout { id });
                    self.remove(id);
                }
            }
            Timer::H => {
                if tx.state == State::Completed {
                    self.events.push_back(TxEvent::NoAck { id });
                    self.remove(id);
                }
            }
            Timer::D | Timer::I | Timer::J | Timer::K | Timer::L | Timer::M => self.remove(id),
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }
}

/// The ACK for a non-2xx final (RFC 3261 section 17.1.1.3): same Request-URI,
/// top Via, From, Call-ID, CSeq number and Route as the INVITE; To from the response.
fn ack_for(invite: &Request, resp: &Response) -> Bytes {
    let mut headers = Vec::new();
    if let Some(v) = invite.top_via() {
        headers.push(Header::Via(v.to_string().into()));
    }
    for h in invite.headers.iter() {
        match h {
            Header::From(_) | Header::CallId(_) | Header::Route(_) | Header::MaxForwards(_) => {
                headers.push(h.clone())
            }
            _ => {}
        }
    }
    if let Some(to) = resp.header_to() {
        headers.push(Header::To(to.to_string().into()));
    }
    let n = invite.cseq().map_or(1, |c| c.0);
    headers.push(Header::CSeq(format!("{n} ACK").into()));
    to_wire(&SipMessage::Request(Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        version: rsipstack::sip::Version::V2,
        headers: headers.into(),
        body: Vec::new(),
    }))
}

/// Whether `branch` follows RFC 3261 (magic cookie), for callers building Vias.
pub fn is_rfc3261_branch(branch: &str) -> bool {
    branch.starts_with(COOKIE) && branch.len() > COOKIE.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::Transport;
    use rsipstack::sip::parser::parse_message;

    const UDP: Peer = Peer {
        transport: Transport::Udp,
        addr: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::new(192, 0, 2, 9),
            5060,
        )),
        conn: None,
    };

    fn tcp() -> Peer {
        Peer {
            transport: Transport::Tcp,
            conn: Some(1),
            ..UDP
        }
    }

    fn request(method: &str, branch: &str) -> Request {
        let text = format!(
            "{method} sip:bob@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch={branch}\r\n\
             From: <sip:alice@198.51.100.1>;tag=a1\r\nTo: <sip:bob@192.0.2.9>\r\nCall-ID: call-{branch}\r\n\
             CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match parse_message(text.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    fn response_for(req: &Request, code: u16) -> Response {
        response_to(req, code, (code > 100).then_some("b1"))
    }

    fn drain(tl: &mut TransactionLayer) -> Vec<Transmit> {
        std::iter::from_fn(|| tl.poll_transmit()).collect()
    }

    fn events(tl: &mut TransactionLayer) -> Vec<TxEvent> {
        std::iter::from_fn(|| tl.poll_event()).collect()
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Steps virtual time in 1 ms increments; returns when each transmission happened.
    fn run(tl: &mut TransactionLayer, until_ms: u64) -> Vec<(u64, String)> {
        let mut sent = Vec::new();
        let mut now = 0;
        while now <= until_ms {
            tl.handle_timeout(at(now));
            for t in drain(tl) {
                sent.push((
                    now,
                    String::from_utf8_lossy(&t.bytes)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                ));
            }
            now = match tl.poll_timeout() {
                Some(next) => next.as_micros() / 1000,
                None => break,
            }
            .max(now + 1);
        }
        sent
    }

    fn layer() -> TransactionLayer {
        TransactionLayer::new(TimerConfig::default(), 100, 1)
    }

    #[test]
    fn timer_a_doubles_and_timer_b_times_out_at_64_t1() {
        let mut tl = layer();
        let id = tl
            .send_request(at(0), request("INVITE", "z9hG4bKa"), UDP)
            .unwrap();
        let mut sent = vec![(0, drain(&mut tl).len())];
        sent.extend(run(&mut tl, 40_000).into_iter().map(|(t, _)| (t, 1)));
        let times: Vec<u64> = sent.iter().map(|s| s.0).collect();
        // T1 = 500 ms: retransmits at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
        assert_eq!(times, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
        let ev = events(&mut tl);
        assert!(matches!(ev[0], TxEvent::Timeout { id: t } if t == id));
        assert!(tl.is_empty());
        assert_eq!(tl.stats().timeouts, 1);
    }

    #[test]
    fn timer_e_is_capped_at_t2_and_timer_f_times_out() {
        let mut tl = layer();
        tl.send_request(at(0), request("OPTIONS", "z9hG4bKe"), UDP)
            .unwrap();
        drain(&mut tl);
        let times: Vec<u64> = run(&mut tl, 40_000).into_iter().map(|s| s.0).collect();
        // 0.5, 1.5, 3.5, 7.5, then every T2 = 4 s up to 32 s.
        assert_eq!(times[..6], [500, 1500, 3500, 7500, 11500, 15500]);
        assert!(times.windows(2).skip(3).all(|w| w[1] - w[0] == 4000));
        assert!(matches!(events(&mut tl)[0], TxEvent::Timeout { .. }));
    }

    #[test]
    fn provisional_puts_timer_e_at_t2() {
        let mut tl = layer();
        let req = request("OPTIONS", "z9hG4bKp");
        tl.send_request(at(0), req.clone(), UDP).unwrap();
        drain(&mut tl);
        tl.handle_message(at(100), SipMessage::Response(response_for(&req, 100)), UDP);
        let times: Vec<u64> = run(&mut tl, 12_000).into_iter().map(|s| s.0).collect();
        // The pending E fires at 0.5 s, then every T2.
        assert_eq!(times[..3], [500, 4500, 8500]);
    }

    #[test]
    fn reliable_transports_never_retransmit() {
        let mut tl = layer();
        tl.send_request(at(0), request("INVITE", "z9hG4bKt"), tcp())
            .unwrap();
        assert_eq!(drain(&mut tl).len(), 1);
        assert!(run(&mut tl, 40_000).is_empty());
        assert!(matches!(events(&mut tl)[0], TxEvent::Timeout { .. }));
    }

    #[test]
    fn non_2xx_final_is_acked_inside_the_transaction_and_timer_d_absorbs_retransmits() {
        let mut tl = layer();
        let req = request("INVITE", "z9hG4bKn");
        let id = tl.send_request(at(0), req.clone(), UDP).unwrap();
        drain(&mut tl);
        let busy = response_for(&req, 486);
        tl.handle_message(at(50), SipMessage::Response(busy.clone()), UDP);
        let acks = drain(&mut tl);
        assert_eq!(acks.len(), 1);
        let ack = String::from_utf8_lossy(&acks[0].bytes).to_string();
        assert!(ack.starts_with("ACK sip:bob@192.0.2.9 SIP/2.0\r\n"));
        assert!(
            ack.contains("branch=z9hG4bKn")
                && ack.contains("CSeq: 1 ACK")
                && ack.contains("tag=b1")
        );
        assert!(
            matches!(&events(&mut tl)[0], TxEvent::Response { id: i, response } if *i == id && response.status_code.code() == 486)
        );
        // A retransmitted 486 gets the ACK again and is not reported twice.
        tl.handle_message(at(600), SipMessage::Response(busy), UDP);
        assert_eq!(drain(&mut tl).len(), 1);
        assert!(events(&mut tl).is_empty());
        // Timer D (32 s) ends it.
        tl.handle_timeout(at(50 + 31_999));
        assert_eq!(tl.len(), 1);
        tl.handle_timeout(at(50 + 32_000));
        assert!(tl.is_empty());
    }

    #[test]
    fn invite_server_timer_g_doubles_to_t2_and_timer_h_gives_up() {
        let mut tl = layer();
        let req = request("INVITE", "z9hG4bKs");
        tl.handle_message(at(0), SipMessage::Request(req.clone()), UDP);
        let trying = drain(&mut tl);
        assert!(String::from_utf8_lossy(&trying[0].bytes).starts_with("SIP/2.0 100 Trying"));
        let TxEvent::Request { id, .. } = events(&mut tl).remove(0) else {
            panic!()
        };
        tl.respond(at(0), id, response_for(&req, 486)).unwrap();
        drain(&mut tl);
        let times: Vec<u64> = run(&mut tl, 40_000).into_iter().map(|s| s.0).collect();
        assert_eq!(times[..5], [500, 1500, 3500, 7500, 11500]);
        assert!(times.iter().all(|&t| t < 32_000));
        assert!(
            events(&mut tl)
                .iter()
                .any(|e| matches!(e, TxEvent::NoAck { id: i } if *i == id))
        );
        assert!(tl.is_empty());
    }

    #[test]
    fn ack_confirms_and_timer_i_absorbs_ack_retransmits() {
        let mut tl = layer();
        let req = request("INVITE", "z9hG4bKc");
        tl.handle_message(at(0), SipMessage::Request(req.clone()), UDP);
        let TxEvent::Request { id, .. } = events(&mut tl).remove(0) else {
            panic!()
        };
        tl.respond(at(0), id, response_for(&req, 603)).unwrap();
        drain(&mut tl);
        let mut ack = request("ACK", "z9hG4bKc");
        ack.headers.retain(|h| !matches!(h, Header::CSeq(_)));
        ack.headers.push(Header::CSeq("1 ACK".into()));
        tl.handle_message(at(100), SipMessage::Request(ack.clone()), UDP);
        assert_eq!(tl.state(id), Some((Role::InviteServer, State::Confirmed)));
        // No more 603 retransmissions; a second ACK is absorbed, not reported.
        tl.handle_message(at(200), SipMessage::Request(ack), UDP);
        assert!(
            events(&mut tl)
                .iter()
                .all(|e| !matches!(e, TxEvent::Ack { .. }))
        );
        assert!(run(&mut tl, 10_000).is_empty());
        assert!(tl.is_empty(), "Timer I (T4) terminated it");
    }

    #[test]
    fn non_invite_server_timer_j_answers_retransmits_then_ends() {
        let mut tl = layer();
        let req = request("OPTIONS", "z9hG4bKj");
        tl.handle_message(at(0), SipMessage::Request(req.clone()), UDP);
        let TxEvent::Request { id, .. } = events(&mut tl).remove(0) else {
            panic!()
        };
        tl.respond(at(0), id, response_for(&req, 200)).unwrap();
        assert_eq!(drain(&mut tl).len(), 1);
        // The client retransmits: the 200 goes again, the TU sees nothing new.
        tl.handle_message(at(500), SipMessage::Request(req.clone()), UDP);
        assert_eq!(drain(&mut tl).len(), 1);
        assert!(events(&mut tl).is_empty());
        assert_eq!(tl.stats().absorbed, 1);
        tl.handle_timeout(at(31_999));
        assert_eq!(tl.len(), 1);
        tl.handle_timeout(at(32_000));
        assert!(tl.is_empty());
    }

    #[test]
    fn non_invite_client_timer_k_absorbs_response_retransmits() {
        let mut tl = layer();
        let req = request("BYE", "z9hG4bKk");
        tl.send_request(at(0), req.clone(), UDP).unwrap();
        tl.handle_message(at(20), SipMessage::Response(response_for(&req, 200)), UDP);
        tl.handle_message(at(520), SipMessage::Response(response_for(&req, 200)), UDP);
        let reported = events(&mut tl)
            .iter()
            .filter(|e| matches!(e, TxEvent::Response { .. }))
            .count();
        assert_eq!(reported, 1);
        tl.handle_timeout(at(20 + 5_000));
        assert!(tl.is_empty());
    }

    #[test]
    fn cancel_waits_for_a_provisional_and_the_server_side_answers_it() {
        // Client: CANCEL before any 1xx is held back (RFC 3261 9.1).
        let mut tl = layer();
        let req = request("INVITE", "z9hG4bKx");
        let id = tl.send_request(at(0), req.clone(), UDP).unwrap();
        drain(&mut tl);
        assert!(tl.cancel(at(10), id).unwrap());
        assert!(drain(&mut tl).is_empty());
        tl.handle_message(at(30), SipMessage::Response(response_for(&req, 180)), UDP);
        let sent = drain(&mut tl);
        let cancel = String::from_utf8_lossy(&sent[0].bytes).to_string();
        assert!(
            cancel.starts_with("CANCEL sip:bob@192.0.2.9 SIP/2.0"),
            "{cancel}"
        );
        assert!(cancel.contains("branch=z9hG4bKx") && cancel.contains("CSeq: 1 CANCEL"));

        // Server: a CANCEL matching a ringing INVITE gets 200 and is reported.
        let mut tl = layer();
        let inv = request("INVITE", "z9hG4bKy");
        tl.handle_message(at(0), SipMessage::Request(inv.clone()), UDP);
        let TxEvent::Request { id, .. } = events(&mut tl).remove(0) else {
            panic!()
        };
        drain(&mut tl);
        tl.handle_message(
            at(10),
            SipMessage::Request(request("CANCEL", "z9hG4bKy")),
            UDP,
        );
        let out = drain(&mut tl);
        assert!(String::from_utf8_lossy(&out[0].bytes).starts_with("SIP/2.0 200 OK"));
        assert!(
            events(&mut tl)
                .iter()
                .any(|e| matches!(e, TxEvent::Cancelled { invite, .. } if *invite == id))
        );
        // The TU answers the INVITE 487.
        tl.respond(at(20), id, response_for(&inv, 487)).unwrap();
        // A CANCEL for nothing gets 481.
        tl.handle_message(
            at(30),
            SipMessage::Request(request("CANCEL", "z9hG4bKnone")),
            UDP,
        );
        let out = drain(&mut tl);
        assert!(
            out.iter()
                .any(|t| String::from_utf8_lossy(&t.bytes).starts_with("SIP/2.0 481"))
        );
    }

    #[test]
    fn full_table_answers_503_with_retry_after() {
        let mut tl = TransactionLayer::new(TimerConfig::default(), 2, 1);
        for b in ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"] {
            tl.handle_message(at(0), SipMessage::Request(request("OPTIONS", b)), UDP);
        }
        assert_eq!(tl.len(), 2);
        let out = drain(&mut tl);
        let last = String::from_utf8_lossy(&out.last().unwrap().bytes).to_string();
        assert!(
            last.starts_with("SIP/2.0 503") && last.contains("Retry-After: 5"),
            "{last}"
        );
        assert_eq!(tl.stats().overload_rejects, 1);
        assert!(matches!(
            tl.send_request(at(0), request("OPTIONS", "z9hG4bK4"), UDP),
            Err(TxError::Overloaded)
        ));
    }

    #[test]
    fn accepted_invite_passes_2xx_and_late_2xx_are_stray() {
        let mut tl = layer();
        let req = request("INVITE", "z9hG4bK2xx");
        let id = tl.send_request(at(0), req.clone(), UDP).unwrap();
        let ok = response_for(&req, 200);
        tl.handle_message(at(10), SipMessage::Response(ok.clone()), UDP);
        tl.handle_message(at(510), SipMessage::Response(ok.clone()), UDP);
        let reported = events(&mut tl)
            .iter()
            .filter(|e| matches!(e, TxEvent::Response { id: i, .. } if *i == id))
            .count();
        assert_eq!(reported, 2, "RFC 6026: every 2xx reaches the TU");
        tl.handle_timeout(at(10 + 32_000)); // Timer M
        assert!(tl.is_empty());
        tl.handle_message(at(40_000), SipMessage::Response(ok), UDP);
        assert!(
            events(&mut tl)
                .iter()
                .any(|e| matches!(e, TxEvent::StrayResponse { .. }))
        );
    }

    #[test]
    fn rfc_2543_requests_are_matched_without_a_branch() {
        let mut tl = layer();
        let mut req = request("OPTIONS", "oldstyle");
        req.headers.retain(|h| !matches!(h, Header::Via(_)));
        req.headers
            .push_front(Header::Via("SIP/2.0/UDP 198.51.100.1:5060".into()));
        tl.handle_message(at(0), SipMessage::Request(req.clone()), UDP);
        tl.handle_message(at(500), SipMessage::Request(req), UDP);
        assert_eq!(
            events(&mut tl)
                .iter()
                .filter(|e| matches!(e, TxEvent::Request { .. }))
                .count(),
            1
        );
        assert_eq!(tl.stats().absorbed, 1);
        // The same identity to another Request-URI is another request (17.2.3).
        let mut other = request("OPTIONS", "oldstyle");
        other.headers.retain(|h| !matches!(h, Header::Via(_)));
        other
            .headers
            .push_front(Header::Via("SIP/2.0/UDP 198.51.100.1:5060".into()));
        other.uri = "sip:other@192.0.2.1".parse().unwrap();
        tl.handle_message(at(600), SipMessage::Request(other), UDP);
        assert_eq!(
            events(&mut tl)
                .iter()
                .filter(|e| matches!(e, TxEvent::Request { .. }))
                .count(),
            1
        );
    }
}
