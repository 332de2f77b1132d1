//! The UA core (RFC 3261 sections 12-15, 22): INVITE dialogs as *legs*, on top of
//! the transaction layer, sans-IO.
//!
//! A leg is one INVITE usage, as a UAC (we called) or a UAS (we were called). As
//! UAC it may fork into several early dialogs (one per To tag); the first 2xx
//! confirms one and every later 2xx from another fork is ACKed and then ended with
//! BYE (13.2.2.4). As UAS our 2xx is retransmitted until the ACK comes, and without
//! one after 64*T1 the dialog is ended with BYE (13.3.1.4). Inside a dialog: re-INVITE
//! and UPDATE offers (with glare resolved by 491 and a randomised retry, 14.1-14.2),
//! INFO, OPTIONS, BYE; remote target refresh; route sets from Record-Route. 401/407
//! challenges are answered from the leg's credentials. Out-of-dialog OPTIONS are
//! answered 200 (carriers ping), other methods 405. Everything a leg owns is reaped
//! when it ends; the number of legs is bounded (503 beyond). Session timers
//! (RFC 4028, [`session_timer`]): honoured when a peer asks, asked for with a
//! `Session-Expires` among an INVITE's headers; we refresh as the refresher and
//! end with BYE a session whose refresh never came.

mod build;
mod refer;
pub mod reliable;
pub mod replaces;
pub mod session_timer;
pub mod snapshot;

pub use build::LocalAddr;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use media_core::{Instant, SeededRng};
use rsipstack::sip::{Header, Method, Request, Response, SipMessage};

use super::auth::{Challenge, Credentials, DigestClient};
use super::message::{
    self, Inbound, Peer, SipHeaders, ValidationConfig, header_param, response_to,
};
use super::transaction::{TimerConfig, TransactionLayer, Transmit, TxEvent, TxId};
use build::{RequestSpec, build_request, next_hop};
use reliable::Reliable;
use session_timer::{MIN_SE_FLOOR, SessionExpires, SessionTimer, allows_update};

/// Early dialogs tracked per outgoing INVITE; more forks than this are still
/// answered correctly but not matched for in-dialog requests before the 2xx.
const MAX_FORKS: usize = 16;
/// The Content-Type of an SDP body.
const SDP: &str = "application/sdp";

/// One call leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(u64);

/// One out-of-dialog OPTIONS ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PingId(u64);

/// One registration binding we keep with a registrar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegId(u64);

/// A snapshot of a leg, from [`UserAgent::leg_info`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LegInfo {
    /// We placed the call (UAC).
    pub outgoing: bool,
    /// `calling`, `early`, `confirmed`, `confirmed-awaiting-ack`, `ending`.
    pub state: &'static str,
    /// Call-ID.
    pub call_id: String,
    /// Where the INVITE came from or went.
    pub peer: Peer,
    /// Our tag in the dialog, and the peer's (once known).
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: Option<String>,
}

/// UA counters (for metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UaStats {
    /// Calls received.
    pub incoming: u64,
    /// Calls placed.
    pub outgoing: u64,
    /// INVITEs refused with 503 at the leg limit.
    pub overload_rejects: u64,
    /// 2xx responses we retransmitted while waiting for the ACK.
    pub retransmitted_2xx: u64,
    /// Our 2xx never ACKed (dialog ended with BYE).
    pub no_ack: u64,
    /// Stray 2xx (late forks) ACKed and ended with BYE.
    pub stray_2xx: u64,
    /// Session refreshes we sent (RFC 4028).
    pub session_refreshes: u64,
    /// Sessions we ended because no refresh came.
    pub session_expired: u64,
    /// Reliable provisional responses we retransmitted (RFC 3262).
    pub retransmitted_1xx: u64,
    /// INVITEs refused with 500 because a reliable provisional got no PRACK.
    pub prack_timeouts: u64,
}

/// UA settings.
#[derive(Clone, Debug)]
pub struct UaConfig {
    /// Our address as peers see it.
    pub local: LocalAddr,
    /// User-Agent / Server value.
    pub user_agent: String,
    /// Timer base values.
    pub timers: TimerConfig,
    /// Most transactions.
    pub max_transactions: usize,
    /// Most legs (calls in progress, either direction).
    pub max_legs: usize,
    /// How long an unanswered call may ring before it is given up (CANCEL as UAC,
    /// 480 as UAS): the role of Timer C (RFC 3261 section 16.6), so no leg waits
    /// forever on a peer that sent 180 and went silent.
    pub ring_timeout: Duration,
    /// Message validation.
    pub validation: ValidationConfig,
    /// Seeds tags, Call-IDs, branches and retry jitter.
    pub seed: u64,
    /// The shortest session interval we accept (`Min-SE`, RFC 4028 section 5;
    /// never below 90 s): shorter asks get 422.
    pub min_se: Duration,
    /// REGISTER requests go to the driver ([`UaEvent::Register`]) instead
    /// of getting 405: a registrar answers them.
    pub registrar: bool,
}

impl UaConfig {
    /// Defaults around `local`.
    pub fn new(local: LocalAddr, seed: u64) -> Self {
        UaConfig {
            local,
            user_agent: "sip-bridge".into(),
            timers: TimerConfig::default(),
            max_transactions: 100_000,
            max_legs: 10_000,
            ring_timeout: Duration::from_secs(180),
            validation: ValidationConfig::default(),
            seed,
            min_se: MIN_SE_FLOOR,
            registrar: false,
        }
    }
}

/// An outgoing call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteParams {
    /// Request-URI.
    pub request_uri: String,
    /// From name-addr, without tag (`"Alice" <sip:+15550111@host>`).
    pub from: String,
    /// To name-addr.
    pub to: String,
    /// Where to send it (the driver resolved the trunk).
    pub peer: Peer,
    /// SDP offer.
    pub sdp: Option<Vec<u8>>,
    /// Extra headers. A `Session-Expires` among them asks for a session timer
    /// (RFC 4028; the UA adds `Min-SE`, retries a 422 and runs the timer).
    pub headers: Vec<(String, String)>,
    /// For 401/407 challenges.
    pub credentials: Option<Credentials>,
    /// Content-Type of `sdp` and of our later offers in this dialog when it
    /// is not plain SDP (SIPREC's `multipart/mixed`, RFC 7866 section 8.1.1).
    pub body_type: Option<String>,
    /// Feature tags after our Contact URI (RFC 3840; SIPREC's `+sip.src`).
    pub contact_params: Option<String>,
    /// Every request of the dialog goes to `peer`, whatever its Contact says:
    /// a registered phone reached over its flow (RFC 5626 section 5.3), the
    /// address its REGISTER came from, since behind NAT its Contact is
    /// unreachable. See [`UserAgent::use_flow`].
    pub flow: bool,
}

/// A REGISTER binding to keep (RFC 3261 section 10).
#[derive(Clone, Debug)]
pub struct RegisterParams {
    /// Registrar URI (Request-URI).
    pub registrar: String,
    /// Address of record (To and From).
    pub aor: String,
    /// Requested expiry.
    pub expires: Duration,
    /// Where to send it.
    pub peer: Peer,
    /// Credentials.
    pub credentials: Option<Credentials>,
}

/// The `Reason` of a CANCEL or BYE for a fork that lost (RFC 3326 section 2;
/// RFC 3261's 200 "answered elsewhere").
pub const COMPLETED_ELSEWHERE: &str = "SIP ;cause=200 ;text=\"Call completed elsewhere\"";

/// Whether a `Reason` header value says `SIP ;cause=200` (RFC 3326 section 2):
/// the protocol token is case-insensitive, parameters may be spaced and in
/// any order.
pub fn completed_elsewhere(reason: Option<&str>) -> bool {
    let Some(r) = reason else {
        return false;
    };
    let mut parts = r.split(';').map(str::trim);
    parts.next().is_some_and(|p| p.eq_ignore_ascii_case("SIP"))
        && parts.any(|p| {
            p.split_once('=')
                .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("cause") && v.trim() == "200")
        })
}

/// Why a leg ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// We sent BYE (or cancelled).
    Local,
    /// The other side sent BYE.
    RemoteBye,
    /// The other side cancelled before answer.
    RemoteCancel,
    /// The other side cancelled, or sent BYE, saying the call was answered
    /// elsewhere (RFC 3326 `Reason: SIP ;cause=200`): a fork that lost.
    CompletedElsewhere,
    /// The call failed or was rejected with this status.
    Failed(u16),
    /// Our 2xx was never ACKed.
    NoAck,
    /// The dialog broke (408/481 on an in-dialog request, transport failure).
    Broken(u16),
    /// No session refresh came in time (RFC 4028 section 10): we sent BYE.
    SessionExpired,
}

/// What the UA reports.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum UaEvent {
    /// A REGISTER (with [`UaConfig::registrar`]): answer it with
    /// [`UserAgent::answer_request`] or drop it with
    /// [`UserAgent::drop_request`].
    Register {
        /// Its server transaction.
        tx: TxId,
        /// The request.
        request: Box<Request>,
        /// Its source (the flow it came on).
        from: Peer,
    },
    /// A new INVITE: answer with [`UserAgent::respond`].
    IncomingInvite {
        /// The leg.
        leg: LegId,
        /// The request (SDP offer in its body, if any).
        request: Box<Request>,
        /// Its source.
        from: Peer,
    },
    /// A provisional response to our INVITE (with its early SDP, if any).
    Progress {
        /// The leg.
        leg: LegId,
        /// 180, 183, ...
        status: u16,
        /// Early media answer.
        sdp: Option<Bytes>,
    },
    /// Our INVITE was answered (ACK already sent).
    Answered {
        /// The leg.
        leg: LegId,
        /// The SDP answer.
        sdp: Option<Bytes>,
    },
    /// Our INVITE without an offer was answered with one in the 2xx (RFC 3261
    /// 13.2.1, late offer): answer it with [`UserAgent::ack_with_answer`],
    /// whose ACK carries the answer.
    AnsweredWithOffer {
        /// The leg.
        leg: LegId,
        /// The offer.
        sdp: Bytes,
    },
    /// Our INVITE failed; the leg is gone.
    Failed {
        /// The leg.
        leg: LegId,
        /// Final status (408 on timeout).
        status: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The ACK for our 2xx arrived (with an SDP answer if the INVITE had no offer).
    Acked {
        /// The leg.
        leg: LegId,
        /// The ACK's body.
        sdp: Option<Bytes>,
    },
    /// An in-dialog offer (re-INVITE or UPDATE with SDP): answer with
    /// [`UserAgent::answer_offer`].
    Offer {
        /// The leg.
        leg: LegId,
        /// The offer.
        sdp: Bytes,
    },
    /// The peer withdrew its re-INVITE (CANCEL) before we answered it.
    OfferCancelled {
        /// The leg.
        leg: LegId,
    },
    /// Our re-INVITE was answered.
    OfferAnswered {
        /// The leg.
        leg: LegId,
        /// Status (2xx accepted; others: the session continues as before).
        status: u16,
        /// The answer.
        sdp: Option<Bytes>,
    },
    /// The peer asks us to call a third party (REFER, RFC 3515): answer it
    /// with [`UserAgent::answer_refer`], then report the new call's progress
    /// with [`UserAgent::notify_refer`].
    Refer {
        /// The leg.
        leg: LegId,
        /// The Refer-To URI (its `?` headers, e.g. `Replaces`, included).
        refer_to: String,
        /// The Referred-By URI, if any.
        referred_by: Option<String>,
        /// The referrer wants NOTIFYs (no `Refer-Sub: false`).
        subscription: bool,
    },
    /// The answer to our REFER ([`UserAgent::refer`]): 202, or a refusal
    /// (408 when none came).
    ReferAnswered {
        /// The leg.
        leg: LegId,
        /// Status.
        status: u16,
    },
    /// A NOTIFY of our REFER's subscription: the referred call's status
    /// (its sipfrag status line; 200 already sent). `last`: no more follow.
    ReferProgress {
        /// The leg.
        leg: LegId,
        /// The referred call's status (0 when the body had none).
        status: u16,
        /// The subscription ended (`Subscription-State: terminated`).
        last: bool,
    },
    /// INFO arrived (200 already sent).
    Info {
        /// The leg.
        leg: LegId,
        /// Content-Type.
        content_type: String,
        /// Body.
        body: Bytes,
    },
    /// The leg is gone; nothing refers to it any more.
    Terminated {
        /// The leg.
        leg: LegId,
        /// Why.
        reason: EndReason,
    },
    /// An OPTIONS ping finished: the status, or `None` on timeout.
    OptionsResult {
        /// Which ping.
        ping: PingId,
        /// Final status.
        status: Option<u16>,
    },
    /// A registration is (still) in place until about `expires` from now.
    Registered {
        /// The binding.
        reg: RegId,
        /// Granted expiry.
        expires: Duration,
    },
    /// A registration attempt failed (retried later).
    RegistrationFailed {
        /// The binding.
        reg: RegId,
        /// Status (408 on timeout).
        status: u16,
    },
}

/// Caller errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UaError {
    /// No such leg.
    #[error("no such leg")]
    UnknownLeg,
    /// Not possible in the leg's state.
    #[error("not possible now: {0}")]
    WrongState(&'static str),
    /// Too many legs or transactions.
    #[error("overloaded")]
    Overloaded,
    /// A URI or header that does not make a valid request.
    #[error("bad request parameters: {0}")]
    BadParams(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Uac,
    Uas,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LegState {
    /// INVITE sent / received, no dialog yet.
    Calling,
    /// Early dialog(s).
    Early,
    /// 2xx sent or received.
    Confirmed,
    /// BYE sent, waiting for its answer.
    Ending,
}

/// What a client transaction of ours is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Invite(LegId),
    ReInvite(LegId),
    Bye(LegId),
    InDialog(LegId),
    Options(PingId),
    Register(RegId),
    /// Our session refresh (UPDATE or re-INVITE, RFC 4028).
    Refresh(LegId),
    /// Our UPDATE with an offer (RFC 3311).
    Update(LegId),
    /// Our REFER (RFC 3515).
    Refer(LegId),
    /// BYE to an unwanted fork or after a failed ACK: nobody waits for it.
    Orphan,
}

/// A 2xx we retransmit until ACKed (13.3.1.4).
#[derive(Clone, Debug)]
struct Retx {
    bytes: Bytes,
    interval: Duration,
    next: Instant,
    deadline: Instant,
    cseq: u32,
}

/// Where a leg's in-dialog requests go: its flow when it keeps to one,
/// else the route set or the remote target ([`next_hop`]).
fn hop_of(l: &Leg) -> Peer {
    if l.flow && l.routes.is_empty() {
        l.peer
    } else {
        next_hop(&l.routes, &l.remote_target, l.peer)
    }
}

#[derive(Clone, Debug)]
struct Leg {
    role: Role,
    state: LegState,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// Our name-addr (without tag) and theirs (as received or addressed).
    local_addr: String,
    remote_addr: String,
    local_cseq: u32,
    remote_cseq: u32,
    remote_target: String,
    routes: Vec<String>,
    peer: Peer,
    /// The initial INVITE (for responses as UAS; for auth re-sends as UAC).
    invite: Request,
    invite_tx: Option<TxId>,
    /// UAC: To tags of early dialogs (one per fork that sent 1xx with a tag).
    early: Vec<String>,
    /// UAC: the ACK for the latest 2xx (by CSeq), resent on its retransmissions.
    ack: Option<(u32, Bytes)>,
    /// UAC: a 2xx with an offer (CSeq, To tag) whose ACK waits for our answer.
    ack_owed: Option<(u32, String)>,
    retx: Option<Retx>,
    /// An in-dialog offer transaction (re-INVITE / UPDATE) in progress, and whose.
    offer_tx: Option<(TxId, bool)>,
    /// UAC glare retry: when, and the SDP to offer again.
    glare_retry: Option<(Instant, Vec<u8>)>,
    cancelled: bool,
    /// The `Reason` our CANCEL gave: a 2xx crossing it gets a BYE saying
    /// the same (RFC 3326).
    cancel_reason: Option<String>,
    /// UAS: a final response to the initial INVITE has been sent.
    final_sent: bool,
    /// UAS: hung up while our 2xx waits for its ACK; BYE goes after it (15).
    bye_after_ack: bool,
    /// Overrides the reason reported when the leg ends (set before a BYE we send
    /// for a reason other than hanging up).
    end_reason: Option<EndReason>,
    auth: Option<DigestClient>,
    auth_tries: u8,
    extra: Vec<(String, String)>,
    /// Our SDP as last sent (a refresh re-INVITE offers it again).
    local_sdp: Vec<u8>,
    /// Content-Type of our offers (`application/sdp` but for SIPREC).
    body_type: String,
    /// Feature tags after our Contact URI in INVITEs and UPDATEs.
    contact_params: String,
    /// In-dialog requests go to `peer` (no route set): [`InviteParams::flow`].
    flow: bool,
    /// The session timer, once negotiated.
    session: Option<SessionTimer>,
    /// UAC: the session interval we ask for, and the `Min-SE` we send.
    se_ask: Option<(Duration, Duration)>,
    /// The peer accepts UPDATE (its Allow): refreshes go without SDP.
    peer_update: bool,
    /// Reliable provisionals and the early offer/answer (RFC 3262, 3311).
    rel: Reliable,
    /// A REFER received, and its subscription (RFC 3515).
    refer: Option<refer::ReferState>,
}

impl Leg {
    /// A leg of `role` in `state` with its dialog's identity (RFC 3261 12):
    /// nothing sent or negotiated yet; callers set what they know beyond.
    #[allow(clippy::too_many_arguments)]
    fn new(
        role: Role,
        state: LegState,
        call_id: String,
        local_tag: String,
        local_addr: String,
        remote_addr: String,
        remote_target: String,
        peer: Peer,
        invite: Request,
    ) -> Leg {
        Leg {
            role,
            state,
            call_id,
            local_tag,
            remote_tag: None,
            local_addr,
            remote_addr,
            local_cseq: 0,
            remote_cseq: 0,
            remote_target,
            routes: Vec::new(),
            peer,
            invite,
            invite_tx: None,
            early: Vec::new(),
            ack: None,
            ack_owed: None,
            retx: None,
            offer_tx: None,
            glare_retry: None,
            cancelled: false,
            cancel_reason: None,
            final_sent: false,
            bye_after_ack: false,
            end_reason: None,
            auth: None,
            auth_tries: 0,
            extra: Vec::new(),
            local_sdp: Vec::new(),
            body_type: SDP.into(),
            contact_params: String::new(),
            flow: false,
            session: None,
            se_ask: None,
            peer_update: false,
            rel: Reliable::default(),
            refer: None,
        }
    }
}

#[derive(Clone, Debug)]
struct Registration {
    params: RegisterParams,
    call_id: String,
    tag: String,
    cseq: u32,
    auth: Option<DigestClient>,
    auth_tries: u8,
    failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum UaTimer {
    Retx(LegId),
    Glare(LegId),
    Ring(LegId),
    /// Our re-INVITE still unanswered 64*T1 after it was sent.
    Offer(LegId, TxId),
    Register(RegId),
    /// The session timer's refresh or end may be due.
    Session(LegId),
    /// A reliable provisional may be due for retransmission (RFC 3262).
    Reliable(LegId),
}

/// The UA core. See the module docs.
#[derive(Debug)]
pub struct UserAgent {
    cfg: UaConfig,
    tl: TransactionLayer,
    legs: HashMap<LegId, Leg>,
    /// (Call-ID, local tag, remote tag) of confirmed and early dialogs.
    dialogs: HashMap<(String, String, String), LegId>,
    /// Legs by their INVITE server transactions (initial and re-INVITEs).
    by_invite: HashMap<TxId, LegId>,
    /// UAC legs by Call-ID: a stray 2xx is only ACKed and BYEd when it is ours.
    uac_calls: HashMap<String, LegId>,
    purposes: HashMap<TxId, Purpose>,
    registrations: HashMap<RegId, Registration>,
    timers: BinaryHeap<Reverse<(Instant, UaTimer)>>,
    out: VecDeque<Transmit>,
    events: VecDeque<UaEvent>,
    rng: SeededRng,
    next_id: u64,
    stats: UaStats,
    /// Out-of-dialog OPTIONS get 503: a front proxy's probes (Kamailio's
    /// dispatcher) then stop sending new calls here while these finish.
    draining: bool,
}

fn body_of(body: &[u8]) -> Option<Bytes> {
    (!body.is_empty()).then(|| Bytes::copy_from_slice(body))
}

impl UserAgent {
    /// A UA with `cfg`.
    pub fn new(cfg: UaConfig) -> Self {
        UserAgent {
            tl: TransactionLayer::new(cfg.timers, cfg.max_transactions, cfg.seed ^ 0x7a),
            rng: SeededRng::new(cfg.seed),
            cfg,
            legs: HashMap::new(),
            dialogs: HashMap::new(),
            by_invite: HashMap::new(),
            uac_calls: HashMap::new(),
            purposes: HashMap::new(),
            registrations: HashMap::new(),
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 1,
            stats: UaStats::default(),
            draining: false,
        }
    }

    /// While on, out-of-dialog OPTIONS are answered 503 with `Retry-After`
    /// (RFC 3261 11.2: as an INVITE would be); in-dialog ones stay 200.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    /// Live legs.
    pub fn legs(&self) -> usize {
        self.legs.len()
    }

    /// What a live leg is doing (for operators and diagnostics).
    pub fn leg_info(&self, leg: LegId) -> Option<LegInfo> {
        let l = self.legs.get(&leg)?;
        Some(LegInfo {
            outgoing: l.role == Role::Uac,
            state: match l.state {
                LegState::Calling => "calling",
                LegState::Early => "early",
                LegState::Confirmed if l.retx.is_some() => "confirmed-awaiting-ack",
                LegState::Confirmed => "confirmed",
                LegState::Ending => "ending",
            },
            call_id: l.call_id.clone(),
            peer: l.peer,
            local_tag: l.local_tag.clone(),
            remote_tag: l.remote_tag.clone(),
        })
    }

    /// Every live leg.
    pub fn leg_ids(&self) -> Vec<LegId> {
        let mut v: Vec<LegId> = self.legs.keys().copied().collect();
        v.sort();
        v
    }

    /// Live dialogs (early and confirmed).
    pub fn dialogs(&self) -> usize {
        self.dialogs.len()
    }

    /// Live transactions.
    pub fn transactions(&self) -> usize {
        self.tl.len()
    }

    /// The UA's counters.
    pub fn stats(&self) -> &UaStats {
        &self.stats
    }

    /// The transaction layer's counters.
    pub fn transaction_stats(&self) -> &super::transaction::TxStats {
        self.tl.stats()
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn token(&mut self) -> String {
        format!("{:012x}", self.rng.next_u64() >> 16)
    }

    /// Takes raw bytes from a datagram or a framed stream message.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8], from: Peer) {
        match message::classify(bytes, from.transport, &self.cfg.validation) {
            Inbound::Request(r) => self.tl.handle_message(now, SipMessage::Request(*r), from),
            Inbound::Response(r) => self.tl.handle_message(now, SipMessage::Response(*r), from),
            Inbound::Reject(r) => self.out.push_back(Transmit {
                to: from,
                bytes: r.response.into(),
            }),
            Inbound::Drop(_) => {}
        }
        self.pump(now);
    }

    /// When [`UserAgent::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ours = self.timers.peek().map(|Reverse((at, _))| *at);
        match (ours, self.tl.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tl.handle_timeout(now);
        while let Some(&Reverse((at, t))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match t {
                UaTimer::Retx(leg) => self.retransmit_2xx(now, leg),
                UaTimer::Glare(leg) => self.glare_retry(now, leg),
                UaTimer::Ring(leg) => self.ring_timeout(now, leg),
                UaTimer::Offer(leg, tx) => self.offer_timeout(now, leg, tx),
                UaTimer::Register(reg) => self.send_register(now, reg),
                UaTimer::Session(leg) => self.session_due(now, leg),
                UaTimer::Reliable(leg) => self.reliable_due(now, leg),
            }
        }
        self.pump(now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front().or_else(|| self.tl.poll_transmit())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    // ----- UAC -----

    /// Places a call.
    pub fn invite(&mut self, now: Instant, p: InviteParams) -> Result<LegId, UaError> {
        if self.legs.len() >= self.cfg.max_legs {
            return Err(UaError::Overloaded);
        }
        let leg = LegId(self.id());
        let call_id = format!("{}@{}", self.token(), self.cfg.local.host);
        let local_tag = self.token();
        let min_se = self.cfg.min_se.max(MIN_SE_FLOOR);
        let se_ask = p
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Session-Expires"))
            .and_then(|(_, v)| SessionExpires::parse(v))
            .map(|se| (se.interval.max(min_se), min_se));
        let extra: Vec<(String, String)> = p
            .headers
            .into_iter()
            .filter(|(k, _)| {
                !["Session-Expires", "Min-SE", "Supported"]
                    .iter()
                    .any(|h| k.eq_ignore_ascii_case(h))
            })
            .collect();
        let invite = Request {
            method: Method::Invite,
            uri: p
                .request_uri
                .parse()
                .map_err(|_| UaError::BadParams("Request-URI"))?,
            version: rsipstack::sip::Version::V2,
            headers: Default::default(),
            body: p.sdp.clone().unwrap_or_default(),
        };
        let mut l = Leg {
            local_cseq: 1,
            auth: p
                .credentials
                .map(|c| DigestClient::new(c, self.rng.next_u64())),
            extra,
            local_sdp: p.sdp.clone().unwrap_or_default(),
            body_type: p.body_type.unwrap_or_else(|| SDP.into()),
            contact_params: p.contact_params.unwrap_or_default(),
            flow: p.flow,
            se_ask,
            ..Leg::new(
                Role::Uac,
                LegState::Calling,
                call_id,
                local_tag,
                p.from.clone(),
                p.to.clone(),
                p.request_uri.clone(),
                p.peer,
                invite,
            )
        };
        let tx = self.send_invite(now, &mut l, None)?;
        self.purposes.insert(tx, Purpose::Invite(leg));
        l.invite_tx = Some(tx);
        self.uac_calls.insert(l.call_id.clone(), leg);
        self.stats.outgoing += 1;
        self.legs.insert(leg, l);
        self.timers
            .push(Reverse((now + self.cfg.ring_timeout, UaTimer::Ring(leg))));
        Ok(leg)
    }

    fn send_invite(
        &mut self,
        now: Instant,
        l: &mut Leg,
        authorization: Option<(bool, String)>,
    ) -> Result<TxId, UaError> {
        let branch = self.tl.new_branch();
        let mut extra = l.extra.clone();
        // Without an offer of ours, an offer in a reliable 18x would need its
        // answer in the PRACK: we take the offer in the 2xx only.
        let supported = if l.invite.body.is_empty() {
            "timer"
        } else {
            "100rel, timer"
        };
        extra.push(("Supported".into(), supported.into()));
        if let Some((interval, min_se)) = l.se_ask {
            extra.push(("Session-Expires".into(), interval.as_secs().to_string()));
            extra.push(("Min-SE".into(), min_se.as_secs().to_string()));
        }
        if let Some((proxy, value)) = authorization {
            extra.push((
                if proxy {
                    "Proxy-Authorization"
                } else {
                    "Authorization"
                }
                .into(),
                value,
            ));
        }
        let from = format!("{};tag={}", l.local_addr, l.local_tag);
        let contact = self.cfg.local.contact(&l.peer) + &l.contact_params;
        let req = build_request(
            &self.cfg.local,
            &RequestSpec {
                method: Method::Invite,
                uri: &l.invite.uri.to_string(),
                branch: &branch,
                hop: l.peer,
                from: &from,
                to: &l.remote_addr,
                call_id: &l.call_id,
                cseq: l.local_cseq,
                routes: &[],
                contact: Some(&contact),
                extra: &extra,
                body: (!l.invite.body.is_empty())
                    .then_some((l.body_type.as_str(), &l.invite.body[..])),
                user_agent: &self.cfg.user_agent,
            },
        )
        .ok_or(UaError::BadParams("Request-URI"))?;
        let body = l.invite.body.clone();
        l.invite = req.clone();
        l.invite.body = body;
        self.tl
            .send_request(now, req, l.peer)
            .map_err(|_| UaError::Overloaded)
    }

    /// Cancels an unanswered call (RFC 3261 section 9.1). A 2xx that crosses the
    /// CANCEL is ACKed and the call ended with BYE.
    pub fn cancel(&mut self, now: Instant, leg: LegId) -> Result<(), UaError> {
        self.cancel_with(now, leg, None)
    }

    /// [`Self::cancel`] saying why (RFC 3326 `Reason`).
    pub fn cancel_with(
        &mut self,
        now: Instant,
        leg: LegId,
        reason: Option<String>,
    ) -> Result<(), UaError> {
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        if l.role != Role::Uac || !matches!(l.state, LegState::Calling | LegState::Early) {
            return Err(UaError::WrongState(
                "only an unanswered outgoing call can be cancelled",
            ));
        }
        l.cancelled = true;
        l.cancel_reason.clone_from(&reason);
        if let Some(tx) = l.invite_tx {
            let _ = self.tl.cancel_with(now, tx, reason);
        }
        self.pump(now);
        Ok(())
    }

    /// [`Self::hangup`] of an outgoing call that rang and lost to another
    /// (a fork, an operator's other device): its CANCEL, or its BYE when it
    /// answered too late, says `Call completed elsewhere` (RFC 3326), so a
    /// phone shows no missed call and another node tells its operator
    /// `taken_by_other`.
    pub fn hangup_elsewhere(&mut self, now: Instant, leg: LegId) -> Result<(), UaError> {
        let l = self.legs.get(&leg).ok_or(UaError::UnknownLeg)?;
        match (l.role, l.state) {
            (Role::Uac, LegState::Calling | LegState::Early) => {
                self.cancel_with(now, leg, Some(COMPLETED_ELSEWHERE.into()))
            }
            (_, LegState::Confirmed) => {
                self.bye_with(now, leg, &[("Reason".into(), COMPLETED_ELSEWHERE.into())])
            }
            _ => self.hangup(now, leg),
        }
    }

    /// Ends a call: BYE when confirmed, CANCEL when ringing out, 480 when ringing in.
    pub fn hangup(&mut self, now: Instant, leg: LegId) -> Result<(), UaError> {
        let l = self.legs.get(&leg).ok_or(UaError::UnknownLeg)?;
        match (l.role, l.state) {
            (_, LegState::Confirmed) => self.bye(now, leg),
            (Role::Uac, _) => self.cancel(now, leg),
            (Role::Uas, LegState::Calling | LegState::Early) => {
                self.respond(now, leg, 480, None, &[])
            }
            (_, LegState::Ending) => Ok(()),
        }
    }

    fn in_dialog(
        &mut self,
        now: Instant,
        leg: LegId,
        method: Method,
        body: Option<(&str, &[u8])>,
        extra: &[(String, String)],
    ) -> Result<TxId, UaError> {
        let branch = self.tl.new_branch();
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        let remote_tag = l
            .remote_tag
            .clone()
            .ok_or(UaError::WrongState("no dialog"))?;
        l.local_cseq += 1;
        let hop = hop_of(l);
        let (from, to) = match l.role {
            Role::Uac => (
                format!("{};tag={}", l.local_addr, l.local_tag),
                with_tag(&l.remote_addr, &remote_tag),
            ),
            Role::Uas => (with_tag(&l.local_addr, &l.local_tag), l.remote_addr.clone()),
        };
        let contact = (method == Method::Invite || method == Method::Update)
            .then(|| self.cfg.local.contact(&hop) + &l.contact_params);
        let req = build_request(
            &self.cfg.local,
            &RequestSpec {
                method,
                uri: &l.remote_target,
                branch: &branch,
                hop,
                from: &from,
                to: &to,
                call_id: &l.call_id,
                cseq: l.local_cseq,
                routes: &l.routes,
                contact: contact.as_deref(),
                extra,
                body,
                user_agent: &self.cfg.user_agent,
            },
        )
        .ok_or(UaError::BadParams("remote target"))?;
        self.tl
            .send_request(now, req, hop)
            .map_err(|_| UaError::Overloaded)
    }

    /// Sends BYE on a confirmed dialog.
    pub fn bye(&mut self, now: Instant, leg: LegId) -> Result<(), UaError> {
        self.bye_with(now, leg, &[])
    }

    /// [`Self::bye`] with extra headers (a `Reason`). Deferred until the ACK,
    /// a BYE goes without them.
    fn bye_with(
        &mut self,
        now: Instant,
        leg: LegId,
        headers: &[(String, String)],
    ) -> Result<(), UaError> {
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        if l.state != LegState::Confirmed {
            return Err(UaError::WrongState("BYE needs a confirmed dialog"));
        }
        if l.role == Role::Uas && l.retx.is_some() && l.end_reason.is_none() {
            // The callee must not BYE before the ACK for its 2xx (RFC 3261 15):
            // the BYE could overtake the 2xx and leave the caller's INVITE hanging.
            l.bye_after_ack = true;
            return Ok(());
        }
        l.state = LegState::Ending;
        l.retx = None;
        if let Some((cseq, tag)) = l.ack_owed.take() {
            // A 2xx with an offer we never answered: ACK it before the BYE.
            self.send_ack_with(leg, cseq, &tag, None);
        }
        let tx = self.in_dialog(now, leg, Method::Bye, None, headers)?;
        self.purposes.insert(tx, Purpose::Bye(leg));
        self.pump(now);
        Ok(())
    }

    /// Sends a new offer (re-INVITE) in a confirmed dialog: hold, resume, codec change.
    pub fn reinvite(&mut self, now: Instant, leg: LegId, sdp: Vec<u8>) -> Result<(), UaError> {
        let l = self.legs.get(&leg).ok_or(UaError::UnknownLeg)?;
        if l.state != LegState::Confirmed {
            return Err(UaError::WrongState("re-INVITE needs a confirmed dialog"));
        }
        self.send_offer(now, leg, Method::Invite, sdp.clone())?;
        if let Some(l) = self.legs.get_mut(&leg) {
            l.invite.body = sdp; // what a glare retry offers again
        }
        Ok(())
    }

    /// Our new offer in the dialog of `leg` (re-INVITE or UPDATE): one at a
    /// time, CANCELled if unanswered after 64*T1; its answer comes as
    /// [`UaEvent::OfferAnswered`].
    pub(super) fn send_offer(
        &mut self,
        now: Instant,
        leg: LegId,
        method: Method,
        sdp: Vec<u8>,
    ) -> Result<(), UaError> {
        let l = self.legs.get(&leg).ok_or(UaError::UnknownLeg)?;
        if l.offer_tx.is_some() || l.glare_retry.is_some() {
            return Err(UaError::WrongState("an offer is already in progress"));
        }
        let headers = self.session_request_headers(leg);
        let body_type = l.body_type.clone();
        let tx = self.in_dialog(now, leg, method, Some((&body_type, &sdp)), &headers)?;
        if let Some(l) = self.legs.get_mut(&leg) {
            l.offer_tx = Some((tx, true));
            l.local_sdp = sdp;
        }
        self.timers.push(Reverse((
            now + self.cfg.timers.t1 * 64,
            UaTimer::Offer(leg, tx),
        )));
        let purpose = if method == Method::Update {
            Purpose::Update(leg)
        } else {
            Purpose::ReInvite(leg)
        };
        self.purposes.insert(tx, purpose);
        self.pump(now);
        Ok(())
    }

    /// Sends INFO (e.g. DTMF as `application/dtmf-relay`) in a confirmed dialog.
    pub fn info(
        &mut self,
        now: Instant,
        leg: LegId,
        content_type: &str,
        body: &[u8],
    ) -> Result<(), UaError> {
        if self.legs.get(&leg).ok_or(UaError::UnknownLeg)?.state != LegState::Confirmed {
            // Early-dialog INFO would reach a caller that may not know the dialog yet.
            return Err(UaError::WrongState("INFO needs a confirmed dialog"));
        }
        let tx = self.in_dialog(now, leg, Method::Info, Some((content_type, body)), &[])?;
        self.purposes.insert(tx, Purpose::InDialog(leg));
        self.pump(now);
        Ok(())
    }

    /// Pings `uri` at `peer` with OPTIONS (trunk qualify).
    pub fn options(&mut self, now: Instant, uri: &str, peer: Peer) -> Result<PingId, UaError> {
        let ping = PingId(self.id());
        let branch = self.tl.new_branch();
        let (call_id, tag) = (
            format!("{}@{}", self.token(), self.cfg.local.host),
            self.token(),
        );
        let from = format!("<sip:ping@{}>;tag={tag}", self.cfg.local.host);
        let req = build_request(
            &self.cfg.local,
            &RequestSpec {
                method: Method::Options,
                uri,
                branch: &branch,
                hop: peer,
                from: &from,
                to: &format!("<{uri}>"),
                call_id: &call_id,
                cseq: 1,
                routes: &[],
                contact: None,
                extra: &[],
                body: None,
                user_agent: &self.cfg.user_agent,
            },
        )
        .ok_or(UaError::BadParams("URI"))?;
        let tx = self
            .tl
            .send_request(now, req, peer)
            .map_err(|_| UaError::Overloaded)?;
        self.purposes.insert(tx, Purpose::Options(ping));
        Ok(ping)
    }

    /// Keeps a registration (RFC 3261 section 10.2): registers now, refreshes
    /// before expiry, retries after failure with backoff.
    pub fn register(&mut self, now: Instant, params: RegisterParams) -> RegId {
        let reg = RegId(self.id());
        let r = Registration {
            auth: params
                .credentials
                .clone()
                .map(|c| DigestClient::new(c, self.rng.next_u64())),
            call_id: format!("{}@{}", self.token(), self.cfg.local.host),
            tag: self.token(),
            cseq: 0,
            params,
            auth_tries: 0,
            failures: 0,
        };
        self.registrations.insert(reg, r);
        self.send_register(now, reg);
        reg
    }

    /// Stops keeping a registration (unregisters with Expires: 0).
    pub fn unregister(&mut self, now: Instant, reg: RegId) {
        if let Some(r) = self.registrations.get_mut(&reg) {
            r.params.expires = Duration::ZERO;
        }
        self.send_register(now, reg);
        self.registrations.remove(&reg);
    }

    fn send_register(&mut self, now: Instant, reg: RegId) {
        self.send_register_auth(now, reg, None);
    }

    fn send_register_auth(
        &mut self,
        now: Instant,
        reg: RegId,
        authorization: Option<(bool, String)>,
    ) {
        let branch = self.tl.new_branch();
        let local = self.cfg.local.clone();
        let ua = self.cfg.user_agent.clone();
        let Some(r) = self.registrations.get_mut(&reg) else {
            return;
        };
        r.cseq += 1;
        let contact = format!(
            "{};expires={}",
            local.contact(&r.params.peer),
            r.params.expires.as_secs()
        );
        let mut extra = vec![(
            "Expires".to_string(),
            r.params.expires.as_secs().to_string(),
        )];
        if let Some((proxy, v)) = authorization {
            extra.push((
                if proxy {
                    "Proxy-Authorization"
                } else {
                    "Authorization"
                }
                .into(),
                v,
            ));
        }
        let from = format!("<{}>;tag={}", r.params.aor, r.tag);
        let Some(req) = build_request(
            &local,
            &RequestSpec {
                method: Method::Register,
                uri: &r.params.registrar,
                branch: &branch,
                hop: r.params.peer,
                from: &from,
                to: &format!("<{}>", r.params.aor),
                call_id: &r.call_id,
                cseq: r.cseq,
                routes: &[],
                contact: Some(&contact),
                extra: &extra,
                body: None,
                user_agent: &ua,
            },
        ) else {
            return;
        };
        let peer = r.params.peer;
        if let Ok(tx) = self.tl.send_request(now, req, peer) {
            self.purposes.insert(tx, Purpose::Register(reg));
        }
    }

    // ----- UAS -----

    /// Answers an incoming INVITE (initial): 1xx, 2xx (with SDP; retransmitted
    /// until ACK) or a failure. A leg rejected here is gone.
    pub fn respond(
        &mut self,
        now: Instant,
        leg: LegId,
        status: u16,
        sdp: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> Result<(), UaError> {
        let l = self.legs.get(&leg).ok_or(UaError::UnknownLeg)?;
        if l.role != Role::Uas || !matches!(l.state, LegState::Calling | LegState::Early) {
            return Err(UaError::WrongState(
                "only an unanswered incoming call can be answered",
            ));
        }
        let tx = l
            .invite_tx
            .ok_or(UaError::WrongState("no INVITE transaction"))?;
        if self.wants_reliable(leg, status, sdp.is_some()) {
            return self.respond_reliably(now, leg, status, sdp, extra);
        }
        if self.hold_final(leg, status, sdp, extra) {
            return Ok(());
        }
        let invite = self.legs[&leg].invite.clone();
        let mut headers: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if (200..300).contains(&status) {
            headers.extend(self.session_answer(now, leg, &invite));
            if let (Some(b), Some(l)) = (sdp, self.legs.get_mut(&leg)) {
                l.local_sdp = b.to_vec();
            }
        }
        let refs = str_pairs(&headers);
        let resp = self.uas_response(leg, &invite, status, sdp, &refs);
        if (200..300).contains(&status) {
            if let Some(l) = self.legs.get_mut(&leg) {
                l.state = LegState::Confirmed;
                l.final_sent = true;
            }
            self.retransmit_until_acked(now, leg, &resp);
        } else if (101..200).contains(&status)
            && let Some(l) = self.legs.get_mut(&leg)
        {
            l.state = LegState::Early;
        }
        if status >= 300
            && let Some(l) = self.legs.get_mut(&leg)
        {
            l.final_sent = true;
        }
        let sent = self.tl.respond(now, tx, resp);
        if status >= 300 {
            self.end(now, leg, EndReason::Failed(status));
        }
        sent.map_err(|_| UaError::WrongState("transaction gone"))?;
        self.pump(now);
        Ok(())
    }

    fn uas_response(
        &mut self,
        leg: LegId,
        req: &Request,
        status: u16,
        sdp: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> Response {
        let (tag, peer) = self
            .legs
            .get(&leg)
            .map_or((String::new(), Peer::udp(([0, 0, 0, 0], 0).into())), |l| {
                (l.local_tag.clone(), l.peer)
            });
        let mut resp = response_to(req, status, Some(&tag));
        if (101..300).contains(&status) {
            // Dialog-creating responses carry Record-Route and Contact (12.1.1).
            for h in req.headers.iter() {
                if let Header::RecordRoute(_) = h {
                    resp.headers.push(h.clone());
                }
            }
            resp.headers
                .push(Header::Contact(self.cfg.local.contact(&peer).into()));
            resp.headers.push(Header::Allow(message::ALLOW.into()));
            resp.headers.push(Header::Supported("100rel, timer".into()));
        }
        resp.headers
            .push(Header::Server(self.cfg.user_agent.clone().into()));
        for (k, v) in extra {
            resp.headers
                .push(rsipstack::sip::headers::make_header(k, v.to_string()));
        }
        if let Some(b) = sdp {
            resp.headers
                .push(Header::ContentType("application/sdp".into()));
            resp.body = b.to_vec();
        }
        resp
    }

    /// Answers an in-dialog offer (re-INVITE or UPDATE).
    pub fn answer_offer(
        &mut self,
        now: Instant,
        leg: LegId,
        status: u16,
        sdp: Option<&[u8]>,
    ) -> Result<(), UaError> {
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        let Some((tx, false)) = l.offer_tx else {
            return Err(UaError::WrongState("no offer to answer"));
        };
        l.offer_tx = None;
        let req = self
            .tl
            .request(tx)
            .cloned()
            .ok_or(UaError::WrongState("transaction gone"))?;
        let mut headers = Vec::new();
        if (200..300).contains(&status) {
            headers = self.session_answer(now, leg, &req);
            if let (Some(b), Some(l)) = (sdp, self.legs.get_mut(&leg)) {
                l.local_sdp = b.to_vec();
            }
        }
        let refs = str_pairs(&headers);
        let resp = self.uas_response(leg, &req, status, sdp, &refs);
        if req.method == Method::Invite && (200..300).contains(&status) {
            self.retransmit_until_acked(now, leg, &resp);
        }
        self.tl
            .respond(now, tx, resp)
            .map_err(|_| UaError::WrongState("transaction gone"))?;
        self.pump(now);
        Ok(())
    }

    /// Our 2xx to an INVITE goes again at T1, 2*T1... until its ACK, for at
    /// most 64*T1 (RFC 3261 13.3.1.4).
    fn retransmit_until_acked(&mut self, now: Instant, leg: LegId, resp: &Response) {
        let bytes = message::to_wire(&SipMessage::Response(resp.clone()));
        let t1 = self.cfg.timers.t1;
        let cseq = resp.cseq().map_or(0, |c| c.0);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.retx = Some(Retx {
                bytes,
                interval: t1,
                next: now + t1,
                deadline: now + t1 * 64,
                cseq,
            });
        }
        self.timers.push(Reverse((now + t1, UaTimer::Retx(leg))));
    }

    // ----- event processing -----

    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.tl.poll_event() {
            match ev {
                TxEvent::Request { id, request, from } => self.on_request(now, id, *request, from),
                TxEvent::Ack { request, from } => self.on_ack(now, *request, from),
                TxEvent::Response { id, response } => self.on_response(now, id, *response),
                TxEvent::StrayResponse { response, from } => {
                    // Only for calls of ours: anything else would let anyone make us send BYEs.
                    if response
                        .call_id()
                        .is_some_and(|c| self.uac_calls.contains_key(c))
                    {
                        self.on_stray_2xx(now, *response, from);
                    }
                }
                TxEvent::Cancelled { invite, reason } => self.on_cancelled(now, invite, reason),
                TxEvent::Timeout { id } => self.on_failure(now, id, 408, "Request Timeout"),
                TxEvent::NoAck { .. } => {}
                TxEvent::Terminated { id } => {
                    self.by_invite.remove(&id);
                    self.purposes.remove(&id);
                }
            }
        }
    }

    /// Answers an out-of-dialog request the driver was given
    /// ([`UaEvent::Register`]).
    pub fn answer_request(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Request,
        status: u16,
        extra: &[(String, String)],
    ) {
        let extra: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.reply(now, tx, req, status, &extra);
        self.pump(now);
    }

    /// Leaves such a request unanswered (its transaction is forgotten).
    pub fn drop_request(&mut self, tx: TxId) {
        self.tl.abandon(tx);
    }

    fn reply(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Request,
        status: u16,
        extra: &[(&str, &str)],
    ) {
        let mut resp = response_to(
            req,
            status,
            Some(&format!(
                "{:08x}",
                super::message::fnv(req.call_id().unwrap_or(""))
            )),
        );
        for (k, v) in extra {
            resp.headers
                .push(rsipstack::sip::headers::make_header(k, v.to_string()));
        }
        let _ = self.tl.respond(now, tx, resp);
    }

    fn dialog_of(&self, req: &Request) -> Option<LegId> {
        let key = (
            req.call_id()?.to_string(),
            req.to_tag()?.to_string(),
            // A request without From tag belongs to a dialog whose remote tag
            // is null (RFC 3261 12.1.1, RFC 2543 peers).
            req.from_tag().unwrap_or("").to_string(),
        );
        self.dialogs.get(&key).copied()
    }

    fn on_request(&mut self, now: Instant, tx: TxId, req: Request, from: Peer) {
        if req.to_tag().is_some() {
            return self.on_in_dialog(now, tx, req, from);
        }
        match req.method {
            Method::Register if self.cfg.registrar => {
                self.events.push_back(UaEvent::Register {
                    tx,
                    request: Box::new(req),
                    from,
                });
            }
            Method::Invite => {
                if self.legs.len() >= self.cfg.max_legs {
                    self.stats.overload_rejects += 1;
                    return self.reply(now, tx, &req, 503, &[("Retry-After", "5")]);
                }
                self.stats.incoming += 1;
                // RFC 2543 allowed an INVITE without Contact: requests go
                // to its From then (RFC 4475 3.4.1 asks us to take it).
                let Some(contact) = req
                    .contact_uri()
                    .or_else(|| req.header_from().map(message::header_uri))
                    .map(String::from)
                else {
                    return self.reply(now, tx, &req, 400, &[]);
                };
                if let Err(status) = self.check_session_expires(now, tx, &req) {
                    return status;
                }
                let leg = LegId(self.id());
                let local_tag = self.token();
                let l = Leg {
                    // No From tag (RFC 2543): its value is null (RFC 3261 12.1.1).
                    remote_tag: Some(req.from_tag().unwrap_or("").to_string()),
                    remote_cseq: req.cseq().map_or(0, |c| c.0),
                    routes: req.values("Record-Route"),
                    invite_tx: Some(tx),
                    peer_update: allows_update(&req),
                    rel: Reliable::uas(&req, self.rng.next_u32()),
                    ..Leg::new(
                        Role::Uas,
                        LegState::Calling,
                        req.call_id().unwrap_or("").to_string(),
                        local_tag.clone(),
                        req.header_to().unwrap_or("").to_string(),
                        req.header_from().unwrap_or("").to_string(),
                        contact,
                        from,
                        req.clone(),
                    )
                };
                if let Some(rt) = &l.remote_tag {
                    self.dialogs
                        .insert((l.call_id.clone(), local_tag, rt.clone()), leg);
                }
                self.legs.insert(leg, l);
                self.by_invite.insert(tx, leg);
                self.timers
                    .push(Reverse((now + self.cfg.ring_timeout, UaTimer::Ring(leg))));
                self.events.push_back(UaEvent::IncomingInvite {
                    leg,
                    request: Box::new(req),
                    from,
                });
            }
            Method::Options if self.draining => self.reply(
                now,
                tx,
                &req,
                503,
                &[("Allow", message::ALLOW), ("Retry-After", "5")],
            ),
            Method::Options => self.reply(
                now,
                tx,
                &req,
                200,
                &[("Allow", message::ALLOW), ("Accept", "application/sdp")],
            ),
            _ => self.reply(now, tx, &req, 405, &[("Allow", message::ALLOW)]),
        }
    }

    fn on_in_dialog(&mut self, now: Instant, tx: TxId, req: Request, _from: Peer) {
        let Some(leg) = self.dialog_of(&req) else {
            return self.reply(now, tx, &req, 481, &[]);
        };
        let cseq = req.cseq().map_or(0, |c| c.0);
        let Some(l) = self.legs.get_mut(&leg) else {
            return self.reply(now, tx, &req, 481, &[]);
        };
        if cseq <= l.remote_cseq && l.remote_cseq != 0 && req.method != Method::Ack {
            return self.reply(now, tx, &req, 500, &[]); // out of order (12.2.2)
        }
        l.remote_cseq = cseq;
        match req.method {
            Method::Bye => {
                let early_uas = l.role == Role::Uas && l.state != LegState::Confirmed;
                let invite_tx = l.invite_tx;
                let invite = l.invite.clone();
                self.reply(now, tx, &req, 200, &[]);
                if early_uas && let Some(itx) = invite_tx {
                    // BYE on an early dialog: the INVITE gets 487 (15.1.2).
                    let resp = self.uas_response(leg, &invite, 487, None, &[]);
                    let _ = self.tl.respond(now, itx, resp);
                    if let Some(l) = self.legs.get_mut(&leg) {
                        l.final_sent = true;
                    }
                }
                let why = if completed_elsewhere(req.lines("Reason").first().copied()) {
                    EndReason::CompletedElsewhere
                } else {
                    EndReason::RemoteBye
                };
                self.end(now, leg, why);
            }
            Method::PRack => self.on_prack(now, tx, leg, &req),
            Method::Invite | Method::Update => {
                if self.check_early_offer(now, tx, leg, &req).is_err() {
                    return;
                }
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                if let Some((_, ours)) = l.offer_tx {
                    // Glare (14.2): ours pending -> 491; theirs pending -> 500 with Retry-After.
                    return if ours {
                        self.reply(now, tx, &req, 491, &[])
                    } else {
                        self.reply(now, tx, &req, 500, &[("Retry-After", "1")])
                    };
                }
                if let Some(c) = req.contact_uri() {
                    l.remote_target = c.to_string(); // target refresh (12.2.2)
                }
                if let Err(done) = self.check_session_expires(now, tx, &req) {
                    return done;
                }
                if req.body.is_empty() {
                    // No offer: a session refresh. An UPDATE is accepted as is; a
                    // re-INVITE gets our session as the offer in its 2xx (RFC 3261
                    // 14.2; unchanged, version and all: RFC 6337 5.3) and the
                    // answer comes in the ACK.
                    let headers = self.session_answer(now, leg, &req);
                    let refs = str_pairs(&headers);
                    let offer = self
                        .legs
                        .get(&leg)
                        .filter(|l| req.method == Method::Invite && !l.local_sdp.is_empty())
                        .map(|l| l.local_sdp.clone());
                    let resp = self.uas_response(leg, &req, 200, offer.as_deref(), &refs);
                    if offer.is_some() {
                        self.retransmit_until_acked(now, leg, &resp);
                    }
                    let _ = self.tl.respond(now, tx, resp);
                    return;
                }
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                l.offer_tx = Some((tx, false));
                if req.method == Method::Invite {
                    self.by_invite.insert(tx, leg);
                }
                let sdp = Bytes::from(req.body.clone());
                self.events.push_back(UaEvent::Offer { leg, sdp });
            }
            Method::Refer => self.on_refer(now, tx, leg, &req),
            Method::Notify => self.on_notify(now, tx, leg, &req),
            Method::Info => {
                let ct = req
                    .values("Content-Type")
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                let body = Bytes::from(req.body.clone());
                self.reply(now, tx, &req, 200, &[]);
                self.events.push_back(UaEvent::Info {
                    leg,
                    content_type: ct,
                    body,
                });
            }
            Method::Options => self.reply(now, tx, &req, 200, &[("Allow", message::ALLOW)]),
            _ => self.reply(now, tx, &req, 405, &[("Allow", message::ALLOW)]),
        }
    }

    fn on_ack(&mut self, now: Instant, req: Request, _from: Peer) {
        let Some(leg) = self.dialog_of(&req) else {
            return;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let cseq = req.cseq().map_or(0, |c| c.0);
        if l.retx.as_ref().is_some_and(|r| r.cseq == cseq) {
            l.retx = None;
            let bye = std::mem::take(&mut l.bye_after_ack);
            self.events.push_back(UaEvent::Acked {
                leg,
                sdp: body_of(&req.body),
            });
            if bye {
                let _ = self.bye(now, leg);
            }
        }
    }

    fn on_cancelled(&mut self, now: Instant, invite: TxId, reason: Option<String>) {
        let Some(l) = self
            .by_invite
            .get(&invite)
            .and_then(|leg| self.legs.get_mut(leg))
        else {
            // No leg (anymore): the transaction still owes the INVITE a final answer.
            if let Some(req) = self.tl.request(invite).cloned() {
                let resp = response_to(&req, 487, Some("gone"));
                let _ = self.tl.respond(now, invite, resp);
            }
            return;
        };
        if l.offer_tx == Some((invite, false)) {
            // A re-INVITE withdrawn before we answered: the session stays as it was.
            l.offer_tx = None;
            let leg = self.by_invite[&invite];
            if let Some(req) = self.tl.request(invite).cloned() {
                let resp = self.uas_response(leg, &req, 487, None, &[]);
                let _ = self.tl.respond(now, invite, resp);
            }
            self.events.push_back(UaEvent::OfferCancelled { leg });
            return;
        }
        if l.state == LegState::Confirmed || l.final_sent {
            return; // too late: already answered
        }
        l.final_sent = true;
        let leg = self.by_invite[&invite];
        let req = l.invite.clone();
        let resp = self.uas_response(leg, &req, 487, None, &[]);
        let _ = self.tl.respond(now, invite, resp);
        let why = if completed_elsewhere(reason.as_deref()) {
            EndReason::CompletedElsewhere
        } else {
            EndReason::RemoteCancel
        };
        self.end(now, leg, why);
    }

    fn retransmit_2xx(&mut self, now: Instant, leg: LegId) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some(r) = l.retx.as_mut() else { return };
        if r.next > now {
            return;
        }
        if now >= r.deadline {
            // No ACK (13.3.1.4): end the dialog with BYE.
            l.retx = None;
            self.stats.no_ack += 1;
            l.end_reason = Some(EndReason::NoAck);
            if self.bye(now, leg).is_err() {
                self.end(now, leg, EndReason::NoAck);
            }
            return;
        }
        let peer = l.peer;
        self.out.push_back(Transmit {
            to: peer,
            bytes: r.bytes.clone(),
        });
        self.stats.retransmitted_2xx += 1;
        r.interval = (r.interval * 2).min(self.cfg.timers.t2);
        r.next = (now + r.interval).min(r.deadline);
        let next = r.next;
        self.timers.push(Reverse((next, UaTimer::Retx(leg))));
    }

    fn ring_timeout(&mut self, now: Instant, leg: LegId) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if !matches!(l.state, LegState::Calling | LegState::Early) || l.cancelled {
            return;
        }
        match l.role {
            Role::Uac => {
                l.end_reason = Some(EndReason::Failed(408));
                self.events.push_back(UaEvent::Failed {
                    leg,
                    status: 408,
                    reason: "No Answer".into(),
                });
                let _ = self.cancel(now, leg);
            }
            Role::Uas => {
                let _ = self.respond(now, leg, 480, None, &[]);
            }
        }
    }

    fn offer_timeout(&mut self, now: Instant, leg: LegId, tx: TxId) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if l.offer_tx != Some((tx, true)) {
            return;
        }
        // A peer that sent 1xx and then nothing: CANCEL (which bounds the
        // transaction) and report the offer failed; the old session stays.
        l.offer_tx = None;
        let _ = self.tl.cancel(now, tx);
        self.purposes.remove(&tx);
        self.events.push_back(UaEvent::OfferAnswered {
            leg,
            status: 408,
            sdp: None,
        });
    }

    fn glare_retry(&mut self, now: Instant, leg: LegId) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some((at, sdp)) = l.glare_retry.take() else {
            return;
        };
        if at > now {
            l.glare_retry = Some((at, sdp));
            return;
        }
        if l.state == LegState::Confirmed && l.offer_tx.is_none() {
            let _ = self.reinvite(now, leg, sdp);
        }
    }

    fn on_response(&mut self, now: Instant, tx: TxId, resp: Response) {
        let Some(&purpose) = self.purposes.get(&tx) else {
            return;
        };
        let code = resp.status_code.code();
        match purpose {
            Purpose::Invite(leg) => self.on_invite_response(now, tx, leg, resp),
            Purpose::ReInvite(leg) => {
                if code < 200 {
                    return;
                }
                let Some(l) = self.legs.get_mut(&leg) else {
                    return;
                };
                if l.offer_tx != Some((tx, true)) {
                    // A retransmitted 2xx of an offer already answered.
                    if (200..300).contains(&code) {
                        self.resend_ack(leg, resp.cseq().map_or(0, |c| c.0));
                    }
                    return;
                }
                l.offer_tx = None;
                let timed = l.session.is_some();
                if (200..300).contains(&code) {
                    self.send_ack(now, leg, &resp);
                    if timed {
                        self.session_from_response(now, leg, &resp, false);
                    }
                    self.events.push_back(UaEvent::OfferAnswered {
                        leg,
                        status: code,
                        sdp: body_of(&resp.body),
                    });
                } else if code == 491 {
                    // Glare: retry after 2.1-4 s if we own the Call-ID, else 0-2 s (14.1).
                    let owner = self.legs.get(&leg).is_some_and(|l| l.role == Role::Uac);
                    let ms = if owner {
                        2100 + self.rng.next_u32() as u64 % 1900
                    } else {
                        self.rng.next_u32() as u64 % 2000
                    };
                    let at = now + Duration::from_millis(ms);
                    if let Some(l) = self.legs.get_mut(&leg) {
                        l.glare_retry = Some((at, l.invite.body.clone()));
                    }
                    self.timers.push(Reverse((at, UaTimer::Glare(leg))));
                } else if code == 408 || code == 481 {
                    self.events.push_back(UaEvent::OfferAnswered {
                        leg,
                        status: code,
                        sdp: None,
                    });
                    self.broken(now, leg, code);
                } else {
                    self.events.push_back(UaEvent::OfferAnswered {
                        leg,
                        status: code,
                        sdp: None,
                    });
                }
            }
            Purpose::Bye(leg) => {
                if code >= 200 {
                    self.end(now, leg, EndReason::Local);
                }
            }
            Purpose::InDialog(leg) => {
                if code == 408 || code == 481 {
                    self.broken(now, leg, code);
                }
            }
            Purpose::Options(ping) => {
                if code >= 200 {
                    self.events.push_back(UaEvent::OptionsResult {
                        ping,
                        status: Some(code),
                    });
                }
            }
            Purpose::Register(reg) => self.on_register_response(now, reg, &resp),
            Purpose::Refresh(leg) => self.on_refresh_response(now, tx, leg, resp),
            Purpose::Update(leg) => self.on_update_response(now, tx, leg, &resp),
            Purpose::Refer(leg) => {
                if code >= 200 {
                    self.events
                        .push_back(UaEvent::ReferAnswered { leg, status: code });
                }
            }
            Purpose::Orphan => {}
        }
    }

    fn on_invite_response(&mut self, now: Instant, tx: TxId, leg: LegId, resp: Response) {
        let code = resp.status_code.code();
        let Some(l) = self.legs.get_mut(&leg) else {
            // The leg is gone (cancelled and ended): a crossing 2xx still gets ACK + BYE.
            if (200..300).contains(&code) {
                self.on_stray_2xx(now, resp, Peer::udp(([0, 0, 0, 0], 0).into()));
            }
            return;
        };
        let tag = resp.to_tag().map(String::from);
        if code < 200 {
            if code > 100
                && let Some(tag) = tag
            {
                if !l.early.contains(&tag) && l.early.len() < MAX_FORKS {
                    l.early.push(tag.clone());
                    self.dialogs
                        .insert((l.call_id.clone(), l.local_tag.clone(), tag.clone()), leg);
                }
                l.state = LegState::Early;
                if !self.take_provisional(now, leg, &tag, &resp) {
                    return; // a retransmitted or out-of-order reliable 18x
                }
            }
            if code > 100 {
                self.events.push_back(UaEvent::Progress {
                    leg,
                    status: code,
                    sdp: body_of(&resp.body),
                });
            }
            return;
        }
        if (200..300).contains(&code) {
            let Some(tag) = tag else { return };
            match (l.state, &l.remote_tag) {
                (LegState::Confirmed | LegState::Ending, Some(t)) if *t == tag => {
                    // A retransmitted 2xx: our ACK again (13.2.2.4).
                    self.resend_ack(leg, resp.cseq().map_or(0, |c| c.0));
                }
                (LegState::Confirmed | LegState::Ending, _) => {
                    let peer = l.peer;
                    self.on_stray_2xx(now, resp, peer);
                }
                _ => {
                    l.remote_tag = Some(tag.clone());
                    l.remote_target = resp.contact_uri().unwrap_or(&l.remote_target).to_string();
                    let mut routes = resp.values("Record-Route");
                    routes.reverse();
                    l.routes = routes;
                    l.state = LegState::Confirmed;
                    // Other early dialogs end with the 2xx.
                    let call_id = l.call_id.clone();
                    let local_tag = l.local_tag.clone();
                    let others: Vec<String> = l.early.drain(..).filter(|t| *t != tag).collect();
                    for t in others {
                        self.dialogs
                            .remove(&(call_id.clone(), local_tag.clone(), t));
                    }
                    self.dialogs.insert((call_id, local_tag, tag.clone()), leg);
                    let cancelled = self.legs.get(&leg).is_some_and(|l| l.cancelled);
                    let offer_in_2xx = self
                        .legs
                        .get(&leg)
                        .is_some_and(|l| l.invite.body.is_empty() && !resp.body.is_empty());
                    if offer_in_2xx && !cancelled {
                        // Late offer: the ACK waits for the application's answer.
                        if let Some(l) = self.legs.get_mut(&leg) {
                            l.ack_owed = Some((resp.cseq().map_or(l.local_cseq, |c| c.0), tag));
                        }
                        self.session_from_response(now, leg, &resp, true);
                        self.events.push_back(UaEvent::AnsweredWithOffer {
                            leg,
                            sdp: Bytes::from(resp.body.clone()),
                        });
                        return;
                    }
                    self.send_ack(now, leg, &resp);
                    if cancelled {
                        // 200 crossed our CANCEL: ACK then BYE (RFC 3261 9.1),
                        // saying why as the CANCEL did.
                        let reason = self.legs.get(&leg).and_then(|l| l.cancel_reason.clone());
                        let headers: Vec<(String, String)> = reason
                            .into_iter()
                            .map(|r| ("Reason".to_string(), r))
                            .collect();
                        let _ = self.bye_with(now, leg, &headers);
                    } else {
                        self.session_from_response(now, leg, &resp, true);
                        let sdp = body_of(&resp.body).or_else(|| self.early_answer(leg, &tag));
                        self.events.push_back(UaEvent::Answered { leg, sdp });
                    }
                }
            }
            return;
        }
        // Failure. Our session interval too brief (RFC 4028 7.2)? Again with
        // the peer's Min-SE.
        let cancelled = l.cancelled;
        if code == 422
            && !cancelled
            && l.auth_tries < 2
            && let Some((ask, _)) = l.se_ask
            && let Some(min) = resp
                .values("Min-SE")
                .first()
                .and_then(|v| session_timer::parse_min_se(v))
            && min > ask
            && let Some(mut l) = self.legs.remove(&leg)
        {
            l.auth_tries += 1;
            l.local_cseq += 1;
            l.se_ask = Some((min, min));
            self.purposes.remove(&tx);
            let sent = self.send_invite(now, &mut l, None);
            if let Ok(new_tx) = sent {
                l.invite_tx = Some(new_tx);
                self.purposes.insert(new_tx, Purpose::Invite(leg));
            }
            self.legs.insert(leg, l);
            if sent.is_ok() {
                return;
            }
        }
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        // A challenge we can answer (22.2)? Never after our CANCEL.
        if (code == 401 || code == 407) && !cancelled && l.auth.is_some() && l.auth_tries < 2 {
            let header = if code == 401 {
                "WWW-Authenticate"
            } else {
                "Proxy-Authenticate"
            };
            let uri = l.invite.uri.to_string();
            let value = resp
                .lines(header)
                .first()
                .and_then(|v| Challenge::parse(v).ok())
                .and_then(|ch| l.auth.as_mut().map(|a| a.authorize(&ch, "INVITE", &uri)));
            if let Some(value) = value
                && let Some(mut l) = self.legs.remove(&leg)
            {
                l.auth_tries += 1;
                l.local_cseq += 1;
                self.purposes.remove(&tx);
                let sent = self.send_invite(now, &mut l, Some((code == 407, value)));
                if let Ok(new_tx) = sent {
                    l.invite_tx = Some(new_tx);
                    self.purposes.insert(new_tx, Purpose::Invite(leg));
                }
                self.legs.insert(leg, l);
                if sent.is_ok() {
                    return;
                }
            }
        }
        if cancelled {
            // Our CANCEL worked (487) or crossed a final failure: the leg just ends.
            self.end(now, leg, EndReason::Local);
            return;
        }
        let reason = resp.status_code.text().to_string();
        self.events.push_back(UaEvent::Failed {
            leg,
            status: code,
            reason,
        });
        self.end(now, leg, EndReason::Failed(code));
    }

    /// ACKs the 2xx that carried an offer ([`UaEvent::AnsweredWithOffer`])
    /// with our answer; `None` when the offer was unusable (the application
    /// then ends the call with BYE, RFC 3261 13.2.2.4).
    pub fn ack_with_answer(
        &mut self,
        _now: Instant,
        leg: LegId,
        sdp: Option<&[u8]>,
    ) -> Result<(), UaError> {
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        let (cseq, tag) = l
            .ack_owed
            .take()
            .ok_or(UaError::WrongState("no 2xx awaits an ACK"))?;
        if let Some(b) = sdp {
            l.local_sdp = b.to_vec();
        }
        self.send_ack_with(leg, cseq, &tag, sdp.map(|b| ("application/sdp", b)));
        Ok(())
    }

    fn send_ack(&mut self, _now: Instant, leg: LegId, resp: &Response) {
        let Some(l) = self.legs.get(&leg) else {
            return;
        };
        let cseq = resp.cseq().map_or(l.local_cseq, |c| c.0);
        self.send_ack_with(leg, cseq, resp.to_tag().unwrap_or(""), None);
    }

    fn send_ack_with(&mut self, leg: LegId, cseq: u32, tag: &str, body: Option<(&str, &[u8])>) {
        let branch = self.tl.new_branch();
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let hop = hop_of(l);
        let from = format!("{};tag={}", l.local_addr, l.local_tag);
        let to = with_tag(&l.remote_addr, tag);
        let Some(req) = build_request(
            &self.cfg.local,
            &RequestSpec {
                method: Method::Ack,
                uri: &l.remote_target,
                branch: &branch,
                hop,
                from: &from,
                to: &to,
                call_id: &l.call_id,
                cseq,
                routes: &l.routes,
                contact: None,
                extra: &[],
                body,
                user_agent: &self.cfg.user_agent,
            },
        ) else {
            return;
        };
        let bytes = message::to_wire(&SipMessage::Request(req));
        l.ack = Some((cseq, bytes.clone()));
        self.out.push_back(Transmit { to: hop, bytes });
    }

    /// Keeps every later request of `leg` (a phone's incoming call) on the
    /// address its INVITE came from: [`InviteParams::flow`].
    pub fn use_flow(&mut self, leg: LegId) {
        if let Some(l) = self.legs.get_mut(&leg) {
            l.flow = true;
        }
    }

    /// Resends the ACK for a retransmitted 2xx with `cseq`; `false` if we have none.
    fn resend_ack(&mut self, leg: LegId, cseq: u32) -> bool {
        let Some(l) = self.legs.get(&leg) else {
            return false;
        };
        let Some((n, ack)) = &l.ack else { return false };
        if *n != cseq {
            return false;
        }
        let hop = hop_of(l);
        self.out.push_back(Transmit {
            to: hop,
            bytes: ack.clone(),
        });
        true
    }

    /// A 2xx for a dialog we do not want (a second fork, or after our leg ended):
    /// ACK it and end it with BYE (13.2.2.4).
    fn on_stray_2xx(&mut self, now: Instant, resp: Response, from: Peer) {
        // A 2xx retransmitted after its transaction ended still belongs to a live
        // dialog of ours: ACK it again, do not end the call.
        if let (Some(call_id), Some(local), Some(remote)) =
            (resp.call_id(), resp.from_tag(), resp.to_tag())
            && let Some(&leg) =
                self.dialogs
                    .get(&(call_id.to_string(), local.to_string(), remote.to_string()))
            && self.resend_ack(leg, resp.cseq().map_or(0, |c| c.0))
        {
            return;
        }
        let (Some(call_id), Some(from_v), Some(to_v), Some((cseq, _))) = (
            resp.call_id(),
            resp.header_from(),
            resp.header_to(),
            resp.cseq(),
        ) else {
            return;
        };
        let target = resp.contact_uri().unwrap_or("").to_string();
        if target.is_empty() {
            return;
        }
        self.stats.stray_2xx += 1;
        let mut routes = resp.values("Record-Route");
        routes.reverse();
        let fallback = if from.addr.port() == 0 {
            next_hop(&routes, &target, from)
        } else {
            from
        };
        let hop = next_hop(&routes, &target, fallback);
        for (method, n) in [(Method::Ack, cseq), (Method::Bye, cseq + 1)] {
            let branch = self.tl.new_branch();
            let Some(req) = build_request(
                &self.cfg.local,
                &RequestSpec {
                    method,
                    uri: &target,
                    branch: &branch,
                    hop,
                    from: from_v,
                    to: to_v,
                    call_id,
                    cseq: n,
                    routes: &routes,
                    contact: None,
                    extra: &[],
                    body: None,
                    user_agent: &self.cfg.user_agent,
                },
            ) else {
                return;
            };
            if method == Method::Ack {
                self.tl.send_stateless(&SipMessage::Request(req), hop);
            } else if let Ok(tx) = self.tl.send_request(now, req, hop) {
                self.purposes.insert(tx, Purpose::Orphan);
            }
        }
    }

    fn on_failure(&mut self, now: Instant, tx: TxId, code: u16, reason: &str) {
        let Some(&purpose) = self.purposes.get(&tx) else {
            return;
        };
        match purpose {
            Purpose::Invite(leg) => {
                self.events.push_back(UaEvent::Failed {
                    leg,
                    status: code,
                    reason: reason.into(),
                });
                self.end(now, leg, EndReason::Failed(code));
            }
            Purpose::ReInvite(leg) | Purpose::Update(leg) => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.offer_tx = None;
                }
                self.events.push_back(UaEvent::OfferAnswered {
                    leg,
                    status: code,
                    sdp: None,
                });
                self.broken(now, leg, code);
            }
            Purpose::Bye(leg) => self.end(now, leg, EndReason::Local),
            Purpose::InDialog(leg) => self.broken(now, leg, code),
            Purpose::Refer(leg) => self
                .events
                .push_back(UaEvent::ReferAnswered { leg, status: code }),
            Purpose::Options(ping) => self
                .events
                .push_back(UaEvent::OptionsResult { ping, status: None }),
            Purpose::Register(reg) => self.registration_failed(now, reg, code),
            Purpose::Refresh(leg) => {
                // The refresh went unanswered: the peer is gone (RFC 4028 10).
                if let Some(l) = self.legs.get_mut(&leg)
                    && l.offer_tx.is_some_and(|(t, _)| t == tx)
                {
                    l.offer_tx = None;
                }
                self.broken(now, leg, code);
            }
            Purpose::Orphan => {}
        }
    }

    /// The dialog is unusable (408/481 to an in-dialog request): end it.
    fn broken(&mut self, now: Instant, leg: LegId, code: u16) {
        if self
            .legs
            .get(&leg)
            .is_some_and(|l| l.state == LegState::Confirmed)
        {
            // Best effort: the peer may still know the dialog (a 408 was loss).
            let _ = self.bye(now, leg);
        }
        self.end(now, leg, EndReason::Broken(code));
    }

    fn on_register_response(&mut self, now: Instant, reg: RegId, resp: &Response) {
        let code = resp.status_code.code();
        if code < 200 {
            return;
        }
        let Some(r) = self.registrations.get_mut(&reg) else {
            return;
        };
        if (code == 401 || code == 407) && r.auth.is_some() && r.auth_tries < 2 {
            let header = if code == 401 {
                "WWW-Authenticate"
            } else {
                "Proxy-Authenticate"
            };
            if let Some(ch) = resp
                .lines(header)
                .first()
                .and_then(|v| Challenge::parse(v).ok())
                && let Some(auth) = r.auth.as_mut()
            {
                let value = auth.authorize(&ch, "REGISTER", &r.params.registrar);
                r.auth_tries += 1;
                self.send_register_auth(now, reg, Some((code == 407, value)));
                return;
            }
        }
        if (200..300).contains(&code) {
            r.auth_tries = 0;
            r.failures = 0;
            // Granted expiry: Contact's expires, else Expires, else what we asked.
            let granted = resp
                .values("Contact")
                .iter()
                .find_map(|c| header_param(c, "expires").and_then(|e| e.parse::<u64>().ok()))
                .or_else(|| {
                    resp.values("Expires")
                        .first()
                        .and_then(|e| e.trim().parse().ok())
                })
                .map_or(r.params.expires, Duration::from_secs);
            self.events.push_back(UaEvent::Registered {
                reg,
                expires: granted,
            });
            if !granted.is_zero() {
                // Refresh a minute early (a REGISTER may take 32 s to time out),
                // but never before half the interval.
                let refresh = (granted / 2).max(granted.saturating_sub(Duration::from_secs(60)));
                self.timers
                    .push(Reverse((now + refresh, UaTimer::Register(reg))));
            }
        } else if code == 423
            && let Some(min) = resp
                .values("Min-Expires")
                .first()
                .and_then(|v| v.trim().parse::<u64>().ok())
            && min > r.params.expires.as_secs()
            && min <= 86_400
        {
            // Interval Too Brief (10.2.8): ask again with the registrar's minimum.
            r.params.expires = Duration::from_secs(min);
            self.send_register(now, reg);
        } else {
            self.registration_failed(now, reg, code);
        }
    }

    fn registration_failed(&mut self, now: Instant, reg: RegId, code: u16) {
        let Some(r) = self.registrations.get_mut(&reg) else {
            return;
        };
        r.failures += 1;
        r.auth_tries = 0;
        self.events
            .push_back(UaEvent::RegistrationFailed { reg, status: code });
        // Retry with exponential backoff: 30 s doubling up to 30 minutes (the
        // shape of RFC 5626 section 4.5).
        let backoff = Duration::from_secs((30u64 << (r.failures - 1).min(6)).min(1800));
        self.timers
            .push(Reverse((now + backoff, UaTimer::Register(reg))));
    }

    /// Removes a leg and everything that points at it.
    fn end(&mut self, now: Instant, leg: LegId, reason: EndReason) {
        let Some(l) = self.legs.remove(&leg) else {
            return;
        };
        let reason = l.end_reason.clone().unwrap_or(reason);
        // Server transactions of the leg still owe a final response; without one
        // they would wait forever (15.1.2: pending requests get 487).
        if l.role == Role::Uas
            && !l.final_sent
            && let Some(tx) = l.invite_tx
        {
            let resp = response_to(&l.invite, 487, Some(&l.local_tag));
            let _ = self.tl.respond(now, tx, resp);
        }
        if let Some((tx, false)) = l.offer_tx
            && let Some(req) = self.tl.request(tx).cloned()
        {
            let resp = response_to(&req, 487, None);
            let _ = self.tl.respond(now, tx, resp);
        }
        // Our INVITE or re-INVITE still without a final response (the callee
        // BYEd an early dialog, the dialog broke): CANCEL it, which also bounds
        // its life to 64*T1 (9.1).
        if l.role == Role::Uac
            && let Some(tx) = l.invite_tx
        {
            let _ = self.tl.cancel(now, tx);
        }
        if let Some((tx, true)) = l.offer_tx {
            let _ = self.tl.cancel(now, tx);
        }
        if let Some(rt) = &l.remote_tag {
            self.dialogs
                .remove(&(l.call_id.clone(), l.local_tag.clone(), rt.clone()));
        }
        for t in &l.early {
            self.dialogs
                .remove(&(l.call_id.clone(), l.local_tag.clone(), t.clone()));
        }
        if let Some(tx) = l.invite_tx {
            self.by_invite.remove(&tx);
        }
        if l.role == Role::Uac {
            self.uac_calls.remove(&l.call_id);
        }
        // Transactions still running for it keep their purpose only to absorb
        // responses; they reference a leg that no longer exists and do nothing.
        self.events.push_back(UaEvent::Terminated { leg, reason });
    }
}

/// Owned header pairs as the borrowed ones `uas_response` takes.
fn str_pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn with_tag(name_addr: &str, tag: &str) -> String {
    if header_param(name_addr, "tag").is_some() {
        name_addr.to_string()
    } else {
        format!("{name_addr};tag={tag}")
    }
}

#[cfg(test)]
mod tests;
