//! A registrar for SIP phones that are operators (RFC 3261 section 10.3),
//! sans-IO: REGISTER in, the response out, and a binding table with expiry.
//!
//! * **Who**: each phone account belongs to an operator; its credentials are
//!   kept as digest HA1 values (MD5 and SHA-256 of `user:realm:password`, RFC
//!   7616), never the password. The To of a REGISTER must be the account's.
//! * **Digest** (RFC 7616, RFC 8760): challenges offer MD5, and SHA-256 when
//!   asked (`sha256`): a second challenge breaks some phones (baresip 1.0
//!   refuses the whole 401 when one challenge is SHA-256, SIPp reads only the
//!   first), so by default MD5 alone; `qop=auth`.
//!   Nonces are stateless (a time and a keyed hash of it and the source
//!   address), valid for `nonce_ttl` (`stale=true` after), and each nonce
//!   count is taken once: a replayed response is refused.
//! * **No oracle**: a user that does not exist is challenged, and refused,
//!   exactly like a wrong password (same status, same headers), so `svwar`
//!   learns nothing; every refusal counts against the source address, and
//!   `ban_after` refusals within `ban_window` ban it for `ban_for`: its
//!   requests are dropped unanswered (`svcrack` sees a dead host).
//! * **Bindings**: several per operator (`max_per_operator`), bounded in
//!   total; `Expires` (the header or each contact's parameter) clamped to
//!   `max_expires`, below `min_expires` a 423 with `Min-Expires`; a refresh
//!   with the same Call-ID needs a higher CSeq (else 500, nothing changed);
//!   `Expires: 0` removes a contact, `Contact: *` all. Each binding keeps the
//!   address the REGISTER came from (`received`, the flow): requests go there,
//!   not to the Contact a phone behind NAT wrote. RFC 5626: a contact with
//!   `+sip.instance` and `reg-id` is one flow, replaced by the same instance's
//!   next registration, and gone when its connection closes. `Path` (RFC
//!   3327) is kept and echoed.
//! * **Events**: an operator's first binding (`Registered`) and its last one
//!   going (`Unregistered`, with why): presence follows them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use media_core::Instant;
use sha2::{Digest, Sha256};

use crate::sip::auth::Algorithm;
use crate::sip::message::{Peer, SipHeaders, Transport, header_uri};

/// Limits and timings.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// The digest realm.
    pub realm: String,
    /// Shorter registrations get 423.
    pub min_expires: Duration,
    /// Longer ones are granted this.
    pub max_expires: Duration,
    /// Without `Expires`.
    pub default_expires: Duration,
    /// Bindings per operator.
    pub max_per_operator: usize,
    /// Bindings in all.
    pub max_bindings: usize,
    /// How long a nonce is good for.
    pub nonce_ttl: Duration,
    /// Refusals from one address before it is banned ...
    pub ban_after: u32,
    /// ... within this window ...
    pub ban_window: Duration,
    /// ... and for how long.
    pub ban_for: Duration,
    /// Addresses whose refusals are counted at once (the oldest go first).
    pub max_tracked: usize,
    /// Whether a SHA-256 challenge goes with the MD5 one, and where.
    pub sha256: Sha256Offer,
    /// An operator online in a browser and on phones rings on both (the
    /// first answer wins); false: its phones ring only while no browser of it
    /// takes the call.
    pub ring_both: bool,
    /// OPTIONS to each UDP binding this often (Kamailio's nathelper pings,
    /// Asterisk's qualify): the phone's NAT binding stays open, and a phone
    /// that misses [`KEEPALIVE_MISSES`] in a row is gone. `None`: never.
    pub keepalive: Option<Duration>,
    /// Accounts not in the config are asked of the customer's backend
    /// ([`Registrar::poll_lookup`]); what it says is kept this long (found
    /// or not: a guesser's usernames cost one question each).
    pub lookup_ttl: Option<Duration>,
}

/// Usernames being asked of the backend at most; more are unknown.
const MAX_LOOKUPS: usize = 256;

/// Answers of the backend kept at most (the oldest go first).
const MAX_LOOKED_UP: usize = 50_000;

/// What the backend said of a username ([`Registrar::handle_lookup`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// This account.
    Found(PhoneAccount),
    /// No such account: refused like a wrong password.
    NotFound,
    /// The backend did not answer (down, slow, bad answer): the phone is
    /// asked to come back later (503), and nothing is counted against it.
    Unavailable,
}

/// Unanswered keep-alives in a row that end a UDP binding.
pub const KEEPALIVE_MISSES: u32 = 3;

/// How often the bindings are looked over for keep-alives due (each binding
/// keeps its own time, so pings spread over the interval).
const SWEEP: Duration = Duration::from_millis(100);

/// Keep-alives sent per look at most (1,000 a second: 30,000 phones at 30 s):
/// a burst of them brings a burst of answers, which overflowed the SIP
/// socket's buffer at 500 a look (the 10,000-phone load run).
const KEEPALIVES_PER_SWEEP: usize = 100;

/// A keep-alive to send: OPTIONS to `contact` at `peer`; its outcome goes
/// back through [`Registrar::handle_keepalive_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// The binding's operator.
    pub operator: String,
    /// Its Contact URI (the OPTIONS' Request-URI).
    pub contact: String,
    /// Where its REGISTER came from.
    pub peer: Peer,
}

/// The SHA-256 digest challenge (RFC 8760).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sha256Offer {
    /// MD5 alone: every phone answers it (baresip 1.0 refuses a 401 that
    /// also offers SHA-256; SIPp and older desk phones read the first only).
    #[default]
    Off,
    /// MD5, then SHA-256: a phone that knows both may take SHA-256.
    After,
    /// SHA-256, then MD5 (RFC 8760's preference), for phones that all know it.
    First,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            realm: "sbc".into(),
            min_expires: Duration::from_secs(60),
            max_expires: Duration::from_secs(3600),
            default_expires: Duration::from_secs(600),
            max_per_operator: 5,
            max_bindings: 20_000,
            nonce_ttl: Duration::from_secs(300),
            ban_after: 10,
            ban_window: Duration::from_secs(60),
            ban_for: Duration::from_secs(600),
            max_tracked: 10_000,
            sha256: Sha256Offer::Off,
            ring_both: true,
            keepalive: Some(Duration::from_secs(30)),
            lookup_ttl: None,
        }
    }
}

/// A phone account: its user name, the operator it is, its HA1 values.
#[derive(Clone, PartialEq, Eq)]
pub struct PhoneAccount {
    /// Digest user name (the To/From user of its REGISTERs).
    pub username: String,
    /// The operator it registers.
    pub operator: String,
    /// MD5(`username:realm:password`), hex.
    pub ha1_md5: String,
    /// SHA-256(`username:realm:password`), hex.
    pub ha1_sha256: String,
    /// Number ids it takes calls on (as an `operators` step rings them).
    pub numbers: Vec<String>,
}

impl std::fmt::Debug for PhoneAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneAccount")
            .field("username", &self.username)
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

impl PhoneAccount {
    /// An account from a password (hashed here; only the HA1s are kept).
    pub fn new(username: &str, operator: &str, realm: &str, password: &str) -> PhoneAccount {
        let a1 = format!("{username}:{realm}:{password}");
        PhoneAccount {
            username: username.into(),
            operator: operator.into(),
            ha1_md5: Algorithm::Md5.hash(&a1),
            ha1_sha256: Algorithm::Sha256.hash(&a1),
            numbers: Vec::new(),
        }
    }

    fn ha1(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Sha256 | Algorithm::Sha256Sess => &self.ha1_sha256,
            _ => &self.ha1_md5,
        }
    }
}

/// One registered contact of an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as written.
    pub contact: String,
    /// Where its REGISTER came from: requests to it go here.
    pub received: Peer,
    /// When it lapses.
    pub expires: Instant,
    /// Its REGISTERs' Call-ID and the last CSeq.
    pub call_id: String,
    /// The last CSeq.
    pub cseq: u32,
    /// RFC 5626 `+sip.instance` and `reg-id`.
    pub instance: Option<String>,
    /// `reg-id`.
    pub reg_id: Option<u32>,
    /// `Path` (RFC 3327), in order.
    pub path: Vec<String>,
    /// Its next keep-alive (UDP only: a stream's connection says itself
    /// when it dies).
    pub next_keepalive: Option<Instant>,
    /// Keep-alives unanswered in a row.
    pub misses: u32,
}

/// Why an operator's last binding went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Gone {
    /// It was not refreshed.
    Expired,
    /// The phone said so (`Expires: 0`, `Contact: *`).
    Unregistered,
    /// Its connection (RFC 5626 flow) closed.
    FlowClosed,
    /// It answered none of [`KEEPALIVE_MISSES`] keep-alives in a row.
    Unreachable,
}

/// What presence hears.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrarEvent {
    /// The operator's first binding.
    Registered {
        /// Who.
        operator: String,
    },
    /// Its last binding went.
    Unregistered {
        /// Who.
        operator: String,
        /// Why.
        why: Gone,
    },
    /// An address was banned.
    Banned {
        /// It.
        source: IpAddr,
    },
}

/// The answer to a REGISTER: a status and headers, or nothing (a banned
/// source is not answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterReply {
    /// Respond so.
    Respond {
        /// Status.
        status: u16,
        /// Extra headers (`WWW-Authenticate`, `Contact`, `Min-Expires`...).
        headers: Vec<(String, String)>,
    },
    /// Drop it.
    Drop,
    /// Wait: its username is being asked of the backend; run the request
    /// again once [`Registrar::handle_lookup`] has the answer.
    Wait {
        /// The username asked about.
        username: String,
    },
}

impl RegisterReply {
    fn status(status: u16) -> RegisterReply {
        RegisterReply::Respond {
            status,
            headers: Vec::new(),
        }
    }
}

/// Who challenges: the registrar (401, RFC 3261 22.2) or, for a call a
/// phone places, the SBC as its proxy (407, RFC 3261 22.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asker {
    Registrar,
    Proxy,
}

impl Asker {
    fn status(self) -> u16 {
        match self {
            Asker::Registrar => 401,
            Asker::Proxy => 407,
        }
    }

    fn challenge(self) -> &'static str {
        match self {
            Asker::Registrar => "WWW-Authenticate",
            Asker::Proxy => "Proxy-Authenticate",
        }
    }

    fn credentials(self) -> &'static str {
        match self {
            Asker::Registrar => "Authorization",
            Asker::Proxy => "Proxy-Authorization",
        }
    }

    /// The method the digest response covers.
    fn method(self, req: &impl SipHeaders) -> String {
        match self {
            Asker::Registrar => "REGISTER".into(),
            Asker::Proxy => req
                .cseq()
                .map(|(_, m)| m.to_string())
                .unwrap_or_else(|| "INVITE".into()),
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistrarStats {
    /// REGISTERs that changed or refreshed bindings.
    pub accepted: u64,
    /// Challenges sent (no or stale credentials).
    pub challenged: u64,
    /// Wrong credentials or unknown users (one count, no oracle).
    pub auth_failures: u64,
    /// Requests dropped from banned addresses.
    pub dropped_banned: u64,
    /// Bans.
    pub bans: u64,
    /// Bindings that lapsed.
    pub expired: u64,
    /// Keep-alives sent.
    pub keepalives: u64,
    /// Bindings ended for missed keep-alives.
    pub unreachable: u64,
}

/// A nonce count, taken or not.
enum Count {
    Taken,
    /// Used before.
    Replay,
    /// Its nonce's counts may have been forgotten.
    Forgotten,
}

/// When a nonce of ours was issued (Unix ms), if it is one.
fn nonce_stamp(nonce: &str) -> Option<u64> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(nonce)
        .ok()?;
    Some(u64::from_be_bytes(raw.get(..8)?.try_into().ok()?))
}

/// What may be due in the registrar's queue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// An operator's binding may have lapsed.
    Lapse(String),
    /// An address's ban may have ended.
    Unban(IpAddr),
}

/// Whether a username is an account.
enum Known {
    Yes(PhoneAccount),
    No,
    Asking,
}

/// Refusals of one address.
#[derive(Clone, Copy, Debug)]
struct Strikes {
    count: u32,
    since: Instant,
    banned_until: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    accounts: HashMap<String, PhoneAccount>,
    /// Usernames of each operator's accounts.
    by_operator: HashMap<String, Vec<String>>,
    /// The backend's answers: until when each is good (`None` in
    /// `accounts`: it said no such account), oldest first.
    looked_up: HashMap<String, Instant>,
    looked_up_order: VecDeque<String>,
    /// Usernames asked of the backend, unanswered; and to ask.
    asking: std::collections::HashSet<String>,
    lookups: VecDeque<String>,
    bindings: BTreeMap<String, Vec<Binding>>,
    total: usize,
    secret: [u8; 32],
    /// Makes each nonce of one millisecond its own.
    nonce_seq: u32,
    /// Nonce counts taken, per nonce (bounded: the oldest nonces go first;
    /// a nonce past its ttl is stale anyway).
    counts: HashMap<String, u32>,
    count_order: VecDeque<String>,
    /// The newest issue time (Unix ms) of a nonce whose counts were
    /// forgotten for room: nonces up to it are challenged again.
    forgotten_until: u64,
    /// Nonces whose counts are kept ([`MAX_NONCES`]).
    max_nonces: usize,
    strikes: HashMap<IpAddr, Strikes>,
    strike_order: VecDeque<IpAddr>,
    /// When something may lapse or a ban end, soonest first: an entry per
    /// binding written (a refresh leaves its old one behind, which finds
    /// nothing to do), so no walk over every binding per REGISTER.
    due: BinaryHeap<Reverse<(Instant, Due)>>,
    /// The next look for keep-alives due, while any UDP binding has one.
    next_sweep: Option<Instant>,
    keepalives: VecDeque<Keepalive>,
    events: VecDeque<RegistrarEvent>,
    stats: RegistrarStats,
}

/// Keep-alives waiting to be sent at most (a driver that stopped polling
/// does not grow them).
const MAX_KEEPALIVES_QUEUED: usize = 20_000;

/// Nonces remembered for their counts.
const MAX_NONCES: usize = 50_000;

impl Registrar {
    /// A registrar for `accounts`; `secret` keys its nonces (random per
    /// process: a restart only makes phones answer one more challenge).
    pub fn new(cfg: RegistrarConfig, accounts: Vec<PhoneAccount>, secret: [u8; 32]) -> Registrar {
        let mut by_operator: HashMap<String, Vec<String>> = HashMap::new();
        for a in &accounts {
            by_operator
                .entry(a.operator.clone())
                .or_default()
                .push(a.username.clone());
        }
        Registrar {
            cfg,
            accounts: accounts
                .into_iter()
                .map(|a| (a.username.clone(), a))
                .collect(),
            by_operator,
            looked_up: HashMap::new(),
            looked_up_order: VecDeque::new(),
            asking: Default::default(),
            lookups: VecDeque::new(),
            bindings: BTreeMap::new(),
            total: 0,
            secret,
            nonce_seq: 0,
            counts: HashMap::new(),
            count_order: VecDeque::new(),
            forgotten_until: 0,
            max_nonces: MAX_NONCES,
            strikes: HashMap::new(),
            strike_order: VecDeque::new(),
            due: BinaryHeap::new(),
            next_sweep: None,
            keepalives: VecDeque::new(),
            events: VecDeque::new(),
            stats: RegistrarStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> RegistrarStats {
        self.stats
    }

    /// Bindings in all.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The numbers an operator's phones take calls on.
    pub fn numbers_of(&self, operator: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_operator
            .get(operator)
            .into_iter()
            .flatten()
            .filter_map(|u| self.accounts.get(u))
            .flat_map(|a| a.numbers.iter().cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// An operator's bindings.
    pub fn bindings(&self, operator: &str) -> &[Binding] {
        self.bindings.get(operator).map_or(&[], Vec::as_slice)
    }

    /// What presence hears next.
    pub fn poll_event(&mut self) -> Option<RegistrarEvent> {
        self.events.pop_front()
    }

    /// The next binding to lapse, or ban to lift.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = self.due.peek().map(|Reverse((t, _))| *t);
        due.into_iter().chain(self.next_sweep).min()
    }

    /// Remembers that `what` may be due at `at`; the queue is rebuilt from
    /// the bindings and bans when stale entries (refreshes) pile up.
    fn due_at(&mut self, at: Instant, what: Due) {
        self.due.push(Reverse((at, what)));
        if self.due.len() > 4 * (self.total + self.strikes.len()) + 4096 {
            let mut fresh = BinaryHeap::new();
            for (op, list) in &self.bindings {
                for b in list {
                    fresh.push(Reverse((b.expires, Due::Lapse(op.clone()))));
                }
            }
            for (ip, s) in &self.strikes {
                if let Some(t) = s.banned_until {
                    fresh.push(Reverse((t, Due::Unban(*ip))));
                }
            }
            self.due = fresh;
        }
    }

    /// Drops the queue's first entries while they are stale (a binding
    /// refreshed or gone, a ban lifted), so that [`Self::poll_timeout`] is
    /// the next real deadline.
    fn tidy_due(&mut self) {
        while let Some(Reverse((at, what))) = self.due.peek() {
            let live = match what {
                Due::Lapse(op) => self
                    .bindings
                    .get(op)
                    .is_some_and(|l| l.iter().any(|b| b.expires <= *at)),
                Due::Unban(ip) => self
                    .strikes
                    .get(ip)
                    .is_some_and(|s| s.banned_until.is_some_and(|t| t <= *at)),
            };
            if live {
                break;
            }
            self.due.pop();
        }
    }

    /// Lapses what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.sweep(now);
        }
        while let Some(Reverse((at, _))) = self.due.peek()
            && *at <= now
        {
            let Some(Reverse((_, what))) = self.due.pop() else {
                break;
            };
            match what {
                Due::Lapse(op) => {
                    let n = self.remove_where(&op, |b| b.expires <= now, Gone::Expired);
                    self.stats.expired += n as u64;
                }
                Due::Unban(ip) => {
                    if self
                        .strikes
                        .get(&ip)
                        .and_then(|s| s.banned_until)
                        .is_some_and(|t| t <= now)
                    {
                        self.strikes.remove(&ip);
                        self.strike_order.retain(|i| *i != ip);
                    }
                }
            }
        }
        self.tidy_due();
    }

    /// Queues the keep-alives due; the next look when the next is due (a
    /// [`SWEEP`] later at the soonest) while any binding has one.
    fn sweep(&mut self, now: Instant) {
        let Some(every) = self.cfg.keepalive else {
            self.next_sweep = None;
            return;
        };
        let mut next: Option<Instant> = None;
        let mut sent = 0;
        for (op, list) in self.bindings.iter_mut() {
            for b in list.iter_mut() {
                let Some(at) = b.next_keepalive else {
                    continue;
                };
                // At most one outstanding per binding: its result comes
                // within the transaction's 32 s, before its next is due.
                if at <= now
                    && sent < KEEPALIVES_PER_SWEEP
                    && self.keepalives.len() < MAX_KEEPALIVES_QUEUED
                {
                    sent += 1;
                    b.next_keepalive = Some(now + every);
                    self.stats.keepalives += 1;
                    self.keepalives.push_back(Keepalive {
                        operator: op.clone(),
                        contact: b.contact.clone(),
                        peer: b.received,
                    });
                }
                next = next.min(b.next_keepalive).or(b.next_keepalive);
            }
        }
        // Many phones: one look per SWEEP at most, not one per phone.
        self.next_sweep = next.map(|t| t.max(now + SWEEP));
    }

    /// The next keep-alive to send.
    pub fn poll_keepalive(&mut self) -> Option<Keepalive> {
        self.keepalives.pop_front()
    }

    /// A keep-alive's outcome: any response means the phone is there;
    /// silence counts, and [`KEEPALIVE_MISSES`] in a row end the binding.
    pub fn handle_keepalive_result(&mut self, operator: &str, contact: &str, answered: bool) {
        let Some(b) = self
            .bindings
            .get_mut(operator)
            .and_then(|l| l.iter_mut().find(|b| b.contact == contact))
        else {
            return;
        };
        if answered {
            b.misses = 0;
            return;
        }
        b.misses += 1;
        if b.misses >= KEEPALIVE_MISSES {
            let n = self.remove_where(
                operator,
                |b| b.contact == contact && b.misses >= KEEPALIVE_MISSES,
                Gone::Unreachable,
            );
            self.stats.unreachable += n as u64;
            self.tidy_due();
        }
    }

    /// The connection `conn` closed: its RFC 5626 flows are gone.
    pub fn handle_flow_closed(&mut self, conn: u64) {
        let ops: Vec<String> = self.bindings.keys().cloned().collect();
        for op in ops {
            self.remove_where(
                &op,
                |b| b.reg_id.is_some() && b.received.conn == Some(conn),
                Gone::FlowClosed,
            );
        }
        self.tidy_due();
    }

    /// Removes `op`'s bindings that match; tells presence when none is left.
    fn remove_where(&mut self, op: &str, gone: impl Fn(&Binding) -> bool, why: Gone) -> usize {
        let Some(list) = self.bindings.get_mut(op) else {
            return 0;
        };
        let before = list.len();
        list.retain(|b| !gone(b));
        let n = before - list.len();
        self.total -= n;
        if list.is_empty() {
            self.bindings.remove(op);
            if n > 0 {
                self.events.push_back(RegistrarEvent::Unregistered {
                    operator: op.into(),
                    why,
                });
            }
        }
        n
    }

    /// A REGISTER from `source` at `now` (`unix_ms`: the wall clock, for
    /// nonces that outlive a restart of the monotonic clock).
    pub fn handle_register(
        &mut self,
        now: Instant,
        unix_ms: u64,
        req: &impl SipHeaders,
        source: Peer,
    ) -> RegisterReply {
        let reply = self.register(now, unix_ms, req, source);
        self.tidy_due();
        reply
    }

    fn register(
        &mut self,
        now: Instant,
        unix_ms: u64,
        req: &impl SipHeaders,
        source: Peer,
    ) -> RegisterReply {
        let ip = source.addr.ip().to_canonical();
        let account = match self.authenticate(now, unix_ms, req, ip, Asker::Registrar) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        // The AOR is the account's (RFC 3261 10.3 step 5).
        let to_user = req
            .header_to()
            .map(header_uri)
            .and_then(|u| u.split_once(':').map(|(_, r)| r))
            .map(|r| r.split(['@', ';']).next().unwrap_or(r));
        if to_user != Some(account.username.as_str()) {
            return RegisterReply::status(403);
        }
        self.bind(now, req, source, &account.operator)
    }

    /// The phone account whose credentials `req` carries (RFC 3261 22.2), or
    /// the reply: a challenge, a refusal (counted against `ip`), nothing for a
    /// banned address.
    fn authenticate(
        &mut self,
        now: Instant,
        unix_ms: u64,
        req: &impl SipHeaders,
        ip: IpAddr,
        asker: Asker,
    ) -> Result<PhoneAccount, RegisterReply> {
        if self
            .strikes
            .get(&ip)
            .and_then(|s| s.banned_until)
            .is_some_and(|t| t > now)
        {
            self.stats.dropped_banned += 1;
            return Err(RegisterReply::Drop);
        }
        let method = asker.method(req);
        let Some(auth) = req
            .lines(asker.credentials())
            .into_iter()
            .find_map(Authorization::parse)
        else {
            return Err(self.challenge(unix_ms, ip, false, asker));
        };
        let account = match self.account(now, &auth.username) {
            Known::Yes(a) => Some(a),
            Known::No => None,
            Known::Asking => {
                return Err(RegisterReply::Wait {
                    username: auth.username,
                });
            }
        };
        let nonce_ok = self.nonce_age(&auth.nonce, ip, unix_ms);
        let valid = match &account {
            // Unknown users are checked against a made-up account, so both
            // refusals cost and look the same.
            None => {
                let ghost = PhoneAccount::new(&auth.username, "", &self.cfg.realm, "\u{1}");
                let _ = auth.verify(&ghost, &method);
                false
            }
            Some(a) => auth.realm == self.cfg.realm && auth.verify(a, &method),
        };
        if !valid {
            return Err(self.refuse(now, unix_ms, ip, asker));
        }
        match nonce_ok {
            Some(age) if age <= self.cfg.nonce_ttl => {}
            // Right credentials on an old nonce: a new one (RFC 7616 3.3).
            _ => return Err(self.challenge(unix_ms, ip, true, asker)),
        }
        match self.take_count(&auth) {
            Count::Taken => {}
            // A replay: the nonce count was used.
            Count::Replay => return Err(self.refuse(now, unix_ms, ip, asker)),
            // Its counts were forgotten (too many nonces at once): a new one.
            Count::Forgotten => return Err(self.challenge(unix_ms, ip, true, asker)),
        }
        let Some(account) = account else {
            return Err(self.refuse(now, unix_ms, ip, asker));
        };
        self.strikes.remove(&ip);
        Ok(account)
    }

    /// A phone's INVITE (a call it places): the account it authenticated as,
    /// or the reply (a 407 challenge, RFC 3261 22.3, or nothing when banned).
    /// Wrong credentials count toward the same ban as REGISTERs'.
    pub fn authorize_call(
        &mut self,
        now: Instant,
        unix_ms: u64,
        req: &impl SipHeaders,
        source: Peer,
    ) -> Result<PhoneAccount, RegisterReply> {
        let ip = source.addr.ip().to_canonical();
        let r = self.authenticate(now, unix_ms, req, ip, Asker::Proxy);
        self.tidy_due();
        r
    }

    /// The operator of phone account `username`.
    pub fn operator_of(&self, username: &str) -> Option<&str> {
        self.accounts.get(username).map(|a| a.operator.as_str())
    }

    /// Whether `username` is an account: the config's, or the backend's
    /// answer while it is good; else it is asked (when there is a backend).
    fn account(&mut self, now: Instant, username: &str) -> Known {
        let fresh = self.looked_up.get(username).map(|t| *t > now);
        match (self.accounts.get(username), fresh) {
            (Some(a), None | Some(true)) => return Known::Yes(a.clone()),
            (None, Some(true)) => return Known::No,
            _ => {}
        }
        if self.cfg.lookup_ttl.is_none() || username.is_empty() || username.len() > 128 {
            return Known::No;
        }
        if !self.asking.contains(username) {
            if self.asking.len() >= MAX_LOOKUPS {
                return Known::No;
            }
            self.asking.insert(username.to_string());
            self.lookups.push_back(username.to_string());
        }
        Known::Asking
    }

    /// The next username to ask the backend about (its answer goes to
    /// [`Registrar::handle_lookup`]).
    pub fn poll_lookup(&mut self) -> Option<String> {
        self.lookups.pop_front()
    }

    /// The backend's answer about `username`. A found account's operator and
    /// numbers are its own (it may not claim another's username: the answer
    /// is for the name asked).
    pub fn handle_lookup(&mut self, now: Instant, username: &str, answer: Lookup) {
        if !self.asking.remove(username) {
            return;
        }
        let Some(ttl) = self.cfg.lookup_ttl else {
            return;
        };
        let found = match answer {
            Lookup::Unavailable => return,
            Lookup::Found(a) if a.username == username => Some(a),
            Lookup::Found(_) | Lookup::NotFound => None,
        };
        if !self.looked_up.contains_key(username) {
            if self.looked_up_order.len() >= MAX_LOOKED_UP
                && let Some(old) = self.looked_up_order.pop_front()
            {
                self.looked_up.remove(&old);
                self.forget(&old);
            }
            self.looked_up_order.push_back(username.to_string());
        }
        self.looked_up.insert(username.to_string(), now + ttl);
        self.forget(username);
        if let Some(a) = found {
            self.by_operator
                .entry(a.operator.clone())
                .or_default()
                .push(a.username.clone());
            self.accounts.insert(a.username.clone(), a);
        }
    }

    /// Removes a looked-up account (its bindings stay until they lapse).
    fn forget(&mut self, username: &str) {
        if let Some(a) = self.accounts.remove(username)
            && let Some(list) = self.by_operator.get_mut(&a.operator)
        {
            list.retain(|u| u != username);
            if list.is_empty() {
                self.by_operator.remove(&a.operator);
            }
        }
    }

    /// Steps 6-8 of RFC 3261 10.3: the bindings as the request asks.
    fn bind(
        &mut self,
        now: Instant,
        req: &impl SipHeaders,
        source: Peer,
        op: &str,
    ) -> RegisterReply {
        let (Some(call_id), Some((cseq, _))) = (req.call_id(), req.cseq()) else {
            return RegisterReply::status(400);
        };
        let header_expires = req
            .values("Expires")
            .first()
            .and_then(|v| v.trim().parse::<u64>().ok());
        let contacts = req.values("Contact");
        if contacts.iter().any(|c| c.trim() == "*") {
            // Remove everything: only alone and with Expires: 0 (10.3 step 6).
            if contacts.len() != 1 || header_expires != Some(0) {
                return RegisterReply::status(400);
            }
            if self
                .bindings(op)
                .iter()
                .any(|b| b.call_id == call_id && b.cseq >= cseq)
            {
                return RegisterReply::status(500);
            }
            self.remove_where(op, |_| true, Gone::Unregistered);
            self.stats.accepted += 1;
            return self.ok(now, op, req);
        }
        // Each contact's expiry, checked before anything changes.
        let mut asked = Vec::with_capacity(contacts.len());
        for c in &contacts {
            let secs = contact_param(c, "expires")
                .and_then(|v| v.parse::<u64>().ok())
                .or(header_expires)
                .unwrap_or(self.cfg.default_expires.as_secs());
            if secs != 0 && secs < self.cfg.min_expires.as_secs() {
                return RegisterReply::Respond {
                    status: 423,
                    headers: vec![(
                        "Min-Expires".into(),
                        self.cfg.min_expires.as_secs().to_string(),
                    )],
                };
            }
            let uri = header_uri(c).to_string();
            if !uri.to_ascii_lowercase().starts_with("sip") {
                return RegisterReply::status(400);
            }
            let instance =
                contact_param(c, "+sip.instance").map(|v| v.trim_matches(['<', '>']).to_string());
            let reg_id = contact_param(c, "reg-id").and_then(|v| v.parse().ok());
            asked.push((
                uri,
                Duration::from_secs(secs.min(self.cfg.max_expires.as_secs())),
                instance,
                reg_id,
            ));
        }
        let path: Vec<String> = req.values("Path");
        let same =
            |b: &Binding, uri: &str, inst: &Option<String>, reg: Option<u32>| match (inst, reg) {
                // RFC 5626 section 6: one flow per instance and reg-id.
                (Some(i), Some(r)) => b.instance.as_deref() == Some(i) && b.reg_id == Some(r),
                _ => b.contact == uri,
            };
        // Out of order (10.3 step 7): nothing changes.
        let list = self.bindings(op);
        if asked.iter().any(|(uri, _, inst, reg)| {
            list.iter()
                .any(|b| same(b, uri, inst, *reg) && b.call_id == call_id && b.cseq >= cseq)
        }) {
            return RegisterReply::status(500);
        }
        let was_empty = list.is_empty();
        let mut list = list.to_vec();
        let before = list.len();
        for (uri, expires, inst, reg) in asked {
            list.retain(|b| !same(b, &uri, &inst, reg));
            if expires.is_zero() {
                continue;
            }
            list.push(Binding {
                contact: uri,
                received: source,
                expires: now + expires,
                call_id: call_id.into(),
                cseq,
                instance: inst,
                reg_id: reg,
                path: path.clone(),
                // A REGISTER is a sign of life: the next keep-alive waits.
                next_keepalive: match (self.cfg.keepalive, source.transport) {
                    (Some(every), Transport::Udp) => Some(now + every),
                    _ => None,
                },
                misses: 0,
            });
        }
        let grown = list.len().saturating_sub(before);
        if list.len() > self.cfg.max_per_operator || self.total + grown > self.cfg.max_bindings {
            // Too many: nothing changes.
            return RegisterReply::status(403);
        }
        self.total = self.total + list.len() - before;
        if let Some(t) = list.iter().filter_map(|b| b.next_keepalive).min() {
            self.next_sweep = Some(self.next_sweep.map_or(t, |s| s.min(t)));
        }
        let now_empty = list.is_empty();
        if now_empty {
            self.bindings.remove(op);
        } else {
            let at: Vec<Instant> = list.iter().map(|b| b.expires).collect();
            self.bindings.insert(op.into(), list);
            for t in at {
                self.due_at(t, Due::Lapse(op.to_string()));
            }
        }
        match (was_empty, now_empty) {
            (true, false) => self.events.push_back(RegistrarEvent::Registered {
                operator: op.into(),
            }),
            (false, true) => self.events.push_back(RegistrarEvent::Unregistered {
                operator: op.into(),
                why: Gone::Unregistered,
            }),
            _ => {}
        }
        self.stats.accepted += 1;
        self.ok(now, op, req)
    }

    /// 200 with every current binding (10.3 step 8).
    fn ok(&self, now: Instant, op: &str, req: &impl SipHeaders) -> RegisterReply {
        let mut headers = Vec::new();
        let mut outbound = false;
        for b in self.bindings(op) {
            let left = b.expires.saturating_duration_since(now).as_secs();
            let mut v = format!("<{}>;expires={left}", b.contact);
            if let (Some(i), Some(r)) = (&b.instance, b.reg_id) {
                let _ = write!(v, ";+sip.instance=\"<{i}>\";reg-id={r}");
                outbound = true;
            }
            headers.push(("Contact".into(), v));
        }
        let supported = req.values("Supported");
        if outbound && supported.iter().any(|s| s.eq_ignore_ascii_case("outbound")) {
            headers.push(("Require".into(), "outbound".into()));
        }
        if supported.iter().any(|s| s.eq_ignore_ascii_case("path")) {
            for p in req.values("Path") {
                headers.push(("Path".into(), p));
            }
        }
        RegisterReply::Respond {
            status: 200,
            headers,
        }
    }

    /// 401 with a fresh nonce: a challenge for MD5 and, as `sha256` says,
    /// one for SHA-256 (RFC 8760 section 2.4).
    fn challenge(&mut self, unix_ms: u64, ip: IpAddr, stale: bool, asker: Asker) -> RegisterReply {
        self.stats.challenged += 1;
        let nonce = self.nonce(unix_ms, ip);
        let stale = if stale { ", stale=true" } else { "" };
        let realm = &self.cfg.realm;
        let order: &[Algorithm] = match self.cfg.sha256 {
            Sha256Offer::Off => &[Algorithm::Md5],
            Sha256Offer::After => &[Algorithm::Md5, Algorithm::Sha256],
            Sha256Offer::First => &[Algorithm::Sha256, Algorithm::Md5],
        };
        let headers = order
            .iter()
            .map(|a| {
                (
                    asker.challenge().to_string(),
                    format!(
                        "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}",
                        a.as_str()
                    ),
                )
            })
            .collect();
        RegisterReply::Respond {
            status: asker.status(),
            headers,
        }
    }

    /// A refusal: counted against the address (a ban past `ban_after`), and
    /// answered as a first request is, with a new challenge.
    fn refuse(&mut self, now: Instant, unix_ms: u64, ip: IpAddr, asker: Asker) -> RegisterReply {
        self.stats.auth_failures += 1;
        if !self.strikes.contains_key(&ip) {
            if self.strike_order.len() >= self.cfg.max_tracked
                && let Some(old) = self.strike_order.pop_front()
            {
                self.strikes.remove(&old);
            }
            self.strike_order.push_back(ip);
        }
        let s = self.strikes.entry(ip).or_insert(Strikes {
            count: 0,
            since: now,
            banned_until: None,
        });
        if now.saturating_duration_since(s.since) > self.cfg.ban_window {
            *s = Strikes {
                count: 0,
                since: now,
                banned_until: None,
            };
        }
        s.count += 1;
        if s.count >= self.cfg.ban_after {
            let until = now + self.cfg.ban_for;
            s.banned_until = Some(until);
            self.due_at(until, Due::Unban(ip));
            self.stats.bans += 1;
            self.events.push_back(RegistrarEvent::Banned { source: ip });
            return RegisterReply::Drop;
        }
        self.challenge(unix_ms, ip, false, asker)
    }

    /// `base64(unix ms, 8 bytes | a counter, 4 | keyed hash of both and the
    /// address, 16)`.
    fn nonce(&mut self, unix_ms: u64, ip: IpAddr) -> String {
        self.nonce_seq = self.nonce_seq.wrapping_add(1);
        let mut raw = [0u8; 28];
        raw[..8].copy_from_slice(&unix_ms.to_be_bytes());
        raw[8..12].copy_from_slice(&self.nonce_seq.to_be_bytes());
        let mac = self.mac(&raw[..12], ip);
        raw[12..].copy_from_slice(&mac);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    fn mac(&self, stamp: &[u8], ip: IpAddr) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(stamp);
        h.update(ip.to_string().as_bytes());
        h.update(self.secret);
        let d = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }

    /// How old a nonce of ours is, if it is ours and for this address.
    fn nonce_age(&self, nonce: &str, ip: IpAddr, unix_ms: u64) -> Option<Duration> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()?;
        let raw: [u8; 28] = raw.try_into().ok()?;
        let at = u64::from_be_bytes(raw[..8].try_into().ok()?);
        (raw[12..] == self.mac(&raw[..12], ip))
            .then(|| Duration::from_millis(unix_ms.saturating_sub(at)))
    }

    /// Takes the response's nonce count; false when it was taken (or, without
    /// qop, when the nonce was used at all).
    fn take_count(&mut self, auth: &Authorization) -> Count {
        let nc = auth.nc.unwrap_or(1);
        match self.counts.get_mut(&auth.nonce) {
            Some(last) if nc <= *last => Count::Replay,
            Some(last) => {
                *last = nc;
                Count::Taken
            }
            // Issued no later than one whose counts were forgotten: its own
            // may have been too, so no count of it is trusted.
            None if nonce_stamp(&auth.nonce).is_none_or(|t| t <= self.forgotten_until) => {
                Count::Forgotten
            }
            None => {
                if self.count_order.len() >= self.max_nonces
                    && let Some(old) = self.count_order.pop_front()
                {
                    self.counts.remove(&old);
                    let t = nonce_stamp(&old).unwrap_or(u64::MAX);
                    self.forgotten_until = self.forgotten_until.max(t);
                }
                self.count_order.push_back(auth.nonce.clone());
                self.counts.insert(auth.nonce.clone(), nc);
                Count::Taken
            }
        }
    }
}

/// A Contact value's parameter (after the URI; RFC 3261 20.10), quotes
/// honoured: `+sip.instance="<urn:uuid:...>"` holds a `>` of its own.
fn contact_param<'v>(value: &'v str, name: &str) -> Option<&'v str> {
    let mut quoted = false;
    let mut start = None;
    let mut angle = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted && start.is_none() => angle = true,
            '>' if !quoted && angle => {
                start = Some(i + 1);
                break;
            }
            ';' if !quoted && !angle => {
                start = Some(i);
                break;
            }
            _ => {}
        }
    }
    let tail = &value[start?..];
    let mut quoted = false;
    let mut from = 0;
    let mut parts = Vec::new();
    for (i, c) in tail.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&tail[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tail[from..]);
    parts.into_iter().find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An `Authorization: Digest ...` header.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Authorization {
    username: String,
    realm: String,
    nonce: String,
    uri: String,
    response: String,
    algorithm: Algorithm,
    qop: Option<String>,
    nc: Option<u32>,
    cnonce: Option<String>,
}

impl Authorization {
    fn parse(value: &str) -> Option<Authorization> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let p = crate::sip::auth::digest_params(rest).ok()?;
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Some(Authorization {
            username: get("username")?,
            realm: get("realm")?,
            nonce: get("nonce")?,
            uri: get("uri")?,
            response: get("response")?.to_ascii_lowercase(),
            algorithm: match get("algorithm") {
                Some(a) => Algorithm::parse(&a)?,
                None => Algorithm::Md5,
            },
            qop: get("qop"),
            nc: get("nc").and_then(|v| u32::from_str_radix(&v, 16).ok()),
            cnonce: get("cnonce"),
        })
    }

    /// Whether the response is right for `account` (RFC 7616 section 3.4.1).
    fn verify(&self, account: &PhoneAccount, method: &str) -> bool {
        let qop = match (&self.qop, self.nc, &self.cnonce) {
            (Some(q), Some(nc), Some(c)) if q.eq_ignore_ascii_case("auth") => {
                Some((q.as_str(), nc, c.as_str()))
            }
            (None, _, _) => None,
            _ => return false,
        };
        let want = crate::sip::auth::response_with_ha1(
            self.algorithm,
            account.ha1(self.algorithm),
            &self.nonce,
            method,
            &self.uri,
            qop,
        );
        want.len() == self.response.len()
            && want
                .bytes()
                .zip(self.response.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::auth::{Challenge, Credentials, DigestClient};
    use crate::sip::message::{Inbound, Request, Transport, ValidationConfig, classify};

    const UNIX: u64 = 1_795_000_000_000;
    const PHONE: &str = "198.51.100.7:5062";

    /// Both challenges, so both algorithms are tested.
    fn registrar() -> Registrar {
        Registrar::new(
            RegistrarConfig {
                sha256: Sha256Offer::After,
                keepalive: None,
                ..Default::default()
            },
            vec![PhoneAccount::new("alice-desk", "alice", "sbc", "s3cret")],
            [7; 32],
        )
    }

    fn peer(addr: &str) -> Peer {
        Peer::udp(addr.parse().unwrap())
    }

    /// A REGISTER for `user` with `contacts` (whole header values), `expires`
    /// (the header), `cseq`, and `auth` (an Authorization value).
    fn register(
        user: &str,
        contacts: &[&str],
        expires: Option<u32>,
        cseq: u32,
        auth: Option<&str>,
    ) -> Request {
        let mut m = format!(
            "REGISTER sip:sbc.example SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@sbc.example>;tag=f1\r\nTo: <sip:{user}@sbc.example>\r\n\
             Call-ID: reg-1@198.51.100.7\r\nCSeq: {cseq} REGISTER\r\n"
        );
        for c in contacts {
            m += &format!("Contact: {c}\r\n");
        }
        if let Some(e) = expires {
            m += &format!("Expires: {e}\r\n");
        }
        if let Some(a) = auth {
            m += &format!("Authorization: {a}\r\n");
        }
        m += "Content-Length: 0\r\n\r\n";
        match classify(m.as_bytes(), Transport::Udp, &ValidationConfig::default()) {
            Inbound::Request(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    fn respond(r: &RegisterReply) -> (u16, Vec<(String, String)>) {
        match r {
            RegisterReply::Respond { status, headers } => (*status, headers.clone()),
            RegisterReply::Drop | RegisterReply::Wait { .. } => (0, Vec::new()),
        }
    }

    /// The challenge of a reply, `alg`'s.
    fn challenge(r: &RegisterReply, alg: &str) -> Challenge {
        let (status, h) = respond(r);
        assert_eq!(status, 401, "{h:?}");
        h.iter()
            .filter(|(k, _)| k == "WWW-Authenticate")
            .map(|(_, v)| Challenge::parse(v).unwrap())
            .find(|c| c.algorithm.as_str() == alg)
            .unwrap()
    }

    /// Alice's desk phone asks from `source` at time zero and is challenged:
    /// its digest client (the right password) and the `alg` challenge.
    fn alice_challenged(reg: &mut Registrar, alg: &str, source: Peer) -> (DigestClient, Challenge) {
        let first = reg.handle_register(
            at(0),
            UNIX,
            &register("alice-desk", &["<sip:a@10.0.0.5>"], Some(300), 1, None),
            source,
        );
        let client = DigestClient::new(
            Credentials {
                username: "alice-desk".into(),
                password: "s3cret".into(),
            },
            3,
        );
        (client, challenge(&first, alg))
    }

    /// Registers `contacts` as `user` with `password` (challenge, answer)
    /// at `now`; the second reply.
    fn login(
        reg: &mut Registrar,
        now: Instant,
        user: &str,
        password: &str,
        contacts: &[&str],
        expires: Option<u32>,
        cseq: u32,
    ) -> RegisterReply {
        let unix = UNIX + now.as_micros() / 1000;
        let first = reg.handle_register(
            now,
            unix,
            &register(user, contacts, expires, cseq, None),
            peer(PHONE),
        );
        let ch = challenge(&first, "SHA-256");
        let mut client = DigestClient::new(
            Credentials {
                username: user.into(),
                password: password.into(),
            },
            3,
        );
        let auth = client.authorize(&ch, "REGISTER", "sip:sbc.example");
        reg.handle_register(
            now,
            unix,
            &register(user, contacts, expires, cseq + 1, Some(&auth)),
            peer(PHONE),
        )
    }

    fn at(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn a_phone_registers_refreshes_and_expires() {
        let mut reg = registrar();
        let ok = login(
            &mut reg,
            at(0),
            "alice-desk",
            "s3cret",
            &["<sip:alice@10.0.0.5:5062>"],
            Some(120),
            1,
        );
        let (status, h) = respond(&ok);
        assert_eq!(status, 200, "{h:?}");
        assert_eq!(
            h,
            [(
                "Contact".into(),
                "<sip:alice@10.0.0.5:5062>;expires=120".into()
            )]
        );
        assert_eq!(
            reg.poll_event(),
            Some(RegistrarEvent::Registered {
                operator: "alice".into()
            })
        );
        // The binding remembers where the REGISTER came from (NAT).
        let b = &reg.bindings("alice")[0];
        assert_eq!(b.received, peer(PHONE));
        assert_eq!(b.expires, at(120));
        // Refreshed at 100 s for another 120: one binding, no event.
        login(
            &mut reg,
            at(100),
            "alice-desk",
            "s3cret",
            &["<sip:alice@10.0.0.5:5062>"],
            Some(120),
            3,
        );
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.poll_event(), None);
        assert_eq!(reg.poll_timeout(), Some(at(220)));
        reg.handle_timeout(at(219));
        assert_eq!(reg.len(), 1);
        reg.handle_timeout(at(220));
        assert!(reg.is_empty());
        assert_eq!(
            reg.poll_event(),
            Some(RegistrarEvent::Unregistered {
                operator: "alice".into(),
                why: Gone::Expired
            })
        );
        assert_eq!(reg.stats().expired, 1);
    }

    #[test]
    fn expires_is_bounded_and_too_brief_gets_423() {
        let mut reg = registrar();
        let r = login(
            &mut reg,
            at(0),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>"],
            Some(30),
            1,
        );
        assert_eq!(
            respond(&r),
            (423, vec![("Min-Expires".to_string(), "60".to_string())])
        );
        assert!(reg.is_empty());
        let r = login(
            &mut reg,
            at(0),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>;expires=99999"],
            None,
            3,
        );
        assert_eq!(respond(&r).1[0].1, "<sip:a@10.0.0.5>;expires=3600");
        // No Expires at all: the default.
        let r = login(
            &mut reg,
            at(0),
            "alice-desk",
            "s3cret",
            &["<sip:b@10.0.0.6>"],
            None,
            5,
        );
        assert!(
            respond(&r)
                .1
                .iter()
                .any(|(_, v)| v == "<sip:b@10.0.0.6>;expires=600")
        );
    }

    #[test]
    fn several_contacts_one_removed_then_all_with_a_star() {
        let mut reg = registrar();
        login(
            &mut reg,
            at(0),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>", "<sip:a@10.0.0.6>"],
            Some(300),
            1,
        );
        assert_eq!(reg.bindings("alice").len(), 2);
        reg.poll_event();
        let r = login(
            &mut reg,
            at(1),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>;expires=0"],
            None,
            3,
        );
        assert_eq!(
            respond(&r).1,
            [("Contact".into(), "<sip:a@10.0.0.6>;expires=299".into())]
        );
        assert_eq!(reg.poll_event(), None, "still registered");
        let r = login(&mut reg, at(2), "alice-desk", "s3cret", &["*"], Some(0), 5);
        assert_eq!(respond(&r), (200, vec![]));
        assert!(reg.is_empty());
        assert_eq!(
            reg.poll_event(),
            Some(RegistrarEvent::Unregistered {
                operator: "alice".into(),
                why: Gone::Unregistered
            })
        );
        // `*` needs Expires: 0 and no other contact.
        let r = login(&mut reg, at(3), "alice-desk", "s3cret", &["*"], Some(60), 7);
        assert_eq!(respond(&r).0, 400);
    }

    #[test]
    fn an_old_cseq_changes_nothing_and_bindings_are_bounded() {
        let mut reg = registrar();
        login(
            &mut reg,
            at(0),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>"],
            Some(300),
            10,
        );
        // Same Call-ID, lower CSeq (a late retransmission): 500, unchanged.
        let r = login(
            &mut reg,
            at(1),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>;expires=0"],
            None,
            3,
        );
        assert_eq!(respond(&r).0, 500);
        assert_eq!(reg.len(), 1);
        // Five at most per operator.
        let six: Vec<String> = (1..=6).map(|i| format!("<sip:a@10.0.1.{i}>")).collect();
        let six: Vec<&str> = six.iter().map(String::as_str).collect();
        let r = login(&mut reg, at(2), "alice-desk", "s3cret", &six, Some(300), 20);
        assert_eq!(respond(&r).0, 403);
        assert_eq!(reg.len(), 1, "nothing changed");
    }

    #[test]
    fn an_unknown_user_and_a_wrong_password_look_the_same_and_a_guesser_is_banned() {
        let mut reg = registrar();
        let wrong = login(
            &mut reg,
            at(0),
            "alice-desk",
            "guess",
            &["<sip:a@10.0.0.5>"],
            Some(300),
            1,
        );
        let unknown = login(
            &mut reg,
            at(0),
            "bob-desk",
            "guess",
            &["<sip:b@10.0.0.5>"],
            Some(300),
            1,
        );
        let shape = |r: &RegisterReply| {
            let (s, h) = respond(r);
            (
                s,
                h.iter()
                    .map(|(k, v)| (k.clone(), v.split("nonce=").next().unwrap().to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(shape(&wrong), shape(&unknown));
        assert_eq!(shape(&wrong).0, 401);
        assert_eq!(reg.stats().auth_failures, 2);
        // Eight more from the same address: the tenth is the ban, then silence.
        for i in 0..7 {
            let r = login(
                &mut reg,
                at(1),
                "root",
                &format!("pw{i}"),
                &["<sip:x@10.0.0.9>"],
                Some(300),
                1,
            );
            assert_eq!(respond(&r).0, 401, "attempt {i}");
        }
        let r = login(
            &mut reg,
            at(1),
            "root",
            "pw7",
            &["<sip:x@10.0.0.9>"],
            Some(300),
            1,
        );
        assert_eq!(r, RegisterReply::Drop);
        assert_eq!(
            reg.poll_event(),
            Some(RegistrarEvent::Banned {
                source: "198.51.100.7".parse().unwrap()
            })
        );
        // Even the right password is dropped while banned ...
        let first = reg.handle_register(
            at(2),
            UNIX,
            &register("alice-desk", &["<sip:a@10.0.0.5>"], Some(300), 1, None),
            peer(PHONE),
        );
        assert_eq!(first, RegisterReply::Drop);
        assert!(reg.stats().dropped_banned >= 1);
        // ... until the ban is over (ten minutes).
        assert_eq!(reg.poll_timeout(), Some(at(601)));
        reg.handle_timeout(at(601));
        let ok = login(
            &mut reg,
            at(601),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>"],
            Some(300),
            50,
        );
        assert_eq!(respond(&ok).0, 200);
        // Another address was never affected.
        let mut other = registrar();
        let r = other.handle_register(
            at(1),
            UNIX,
            &register("alice-desk", &["<sip:a@10.0.0.5>"], None, 1, None),
            peer("203.0.113.4:5060"),
        );
        assert_eq!(respond(&r).0, 401);
    }

    #[test]
    fn a_stale_nonce_is_challenged_again_and_a_replay_refused() {
        let mut reg = registrar();
        let (mut client, ch) = alice_challenged(&mut reg, "MD5", peer(PHONE));
        let auth = client.authorize(&ch, "REGISTER", "sip:sbc.example");
        let req = register(
            "alice-desk",
            &["<sip:a@10.0.0.5>"],
            Some(300),
            2,
            Some(&auth),
        );
        // Six minutes later the nonce is stale: right credentials, new nonce.
        let late = reg.handle_register(at(360), UNIX + 360_000, &req, peer(PHONE));
        assert!(challenge(&late, "MD5").stale);
        assert!(reg.is_empty());
        // In time it works once; the same nonce count again is a replay.
        let ok = reg.handle_register(at(1), UNIX + 1000, &req, peer(PHONE));
        assert_eq!(respond(&ok).0, 200);
        let again = reg.handle_register(
            at(2),
            UNIX + 2000,
            &register(
                "alice-desk",
                &["<sip:a@10.0.0.5>"],
                Some(300),
                4,
                Some(&auth),
            ),
            peer(PHONE),
        );
        assert_eq!(respond(&again).0, 401);
        // A nonce made for another address is not ours for this one.
        let moved = reg.handle_register(at(3), UNIX + 3000, &req, peer("203.0.113.4:5060"));
        assert!(challenge(&moved, "MD5").stale);
    }

    #[test]
    fn an_outbound_flow_is_replaced_by_its_instance_and_gone_with_its_connection() {
        let mut reg = registrar();
        let c1 = "<sip:a@10.0.0.5;transport=tcp>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1";
        let mut tcp = Peer::udp(PHONE.parse().unwrap());
        tcp.transport = Transport::Tcp;
        tcp.conn = Some(7);
        let unix = UNIX;
        let (mut client, ch) = alice_challenged(&mut reg, "SHA-256", tcp);
        let auth = client.authorize(&ch, "REGISTER", "sip:sbc.example");
        let r = reg.handle_register(
            at(0),
            unix,
            &register("alice-desk", &[c1], Some(300), 2, Some(&auth)),
            tcp,
        );
        assert_eq!(respond(&r).0, 200);
        // The phone comes back on a new connection with a new contact: the
        // same flow, replaced.
        let c2 = c1.replace("10.0.0.5", "10.0.0.99");
        let mut tcp2 = tcp;
        tcp2.conn = Some(8);
        let auth = client.authorize(&ch, "REGISTER", "sip:sbc.example");
        let r = reg.handle_register(
            at(10),
            unix + 10_000,
            &register("alice-desk", &[&c2], Some(300), 3, Some(&auth)),
            tcp2,
        );
        assert_eq!(respond(&r).0, 200);
        assert_eq!(reg.bindings("alice").len(), 1);
        assert_eq!(reg.bindings("alice")[0].received.conn, Some(8));
        // The old connection closing changes nothing; the new one's does.
        reg.handle_flow_closed(7);
        assert_eq!(reg.len(), 1);
        reg.poll_event();
        reg.handle_flow_closed(8);
        assert!(reg.is_empty());
        assert_eq!(
            reg.poll_event(),
            Some(RegistrarEvent::Unregistered {
                operator: "alice".into(),
                why: Gone::FlowClosed
            })
        );
    }

    #[test]
    fn the_to_must_be_the_accounts_own() {
        let mut reg = registrar();
        let (mut client, ch) = alice_challenged(&mut reg, "SHA-256", peer(PHONE));
        let auth = client.authorize(&ch, "REGISTER", "sip:sbc.example");
        let mut req = register(
            "alice-desk",
            &["<sip:a@10.0.0.5>"],
            Some(300),
            2,
            Some(&auth),
        );
        for h in req.headers.iter_mut() {
            if let rsipstack::sip::Header::To(_) = h {
                *h = rsipstack::sip::Header::To("<sip:bob-desk@sbc.example>".to_string().into());
            }
        }
        assert_eq!(
            respond(&reg.handle_register(at(0), UNIX, &req, peer(PHONE))).0,
            403
        );
        assert!(reg.is_empty());
    }

    #[test]
    fn md5_alone_unless_sha256_is_asked_for() {
        let algs = |reg: &mut Registrar| {
            let r = reg.handle_register(
                at(0),
                UNIX,
                &register("alice-desk", &["<sip:a@10.0.0.5>"], None, 1, None),
                peer(PHONE),
            );
            respond(&r)
                .1
                .iter()
                .map(|(_, v)| Challenge::parse(v).unwrap().algorithm.as_str())
                .collect::<Vec<_>>()
        };
        let with = |sha256| {
            let cfg = RegistrarConfig {
                sha256,
                ..Default::default()
            };
            Registrar::new(cfg, Vec::new(), [1; 32])
        };
        assert_eq!(algs(&mut with(Sha256Offer::Off)), ["MD5"]);
        assert_eq!(algs(&mut with(Sha256Offer::After)), ["MD5", "SHA-256"]);
        assert_eq!(algs(&mut with(Sha256Offer::First)), ["SHA-256", "MD5"]);
    }

    #[test]
    fn contact_parameters_come_after_the_uri_quotes_honoured() {
        let c = "\"A;B>\" <sip:a@10.0.0.5;transport=tcp;expires=9>;+sip.instance=\"<urn:uuid:1;2>\";reg-id=1;expires=60";
        assert_eq!(contact_param(c, "expires"), Some("60"));
        assert_eq!(contact_param(c, "+sip.instance"), Some("<urn:uuid:1;2>"));
        assert_eq!(contact_param(c, "reg-id"), Some("1"));
        assert_eq!(
            contact_param("sip:a@10.0.0.5;expires=30", "expires"),
            Some("30")
        );
        assert_eq!(contact_param("<sip:a@10.0.0.5>", "expires"), None);
        assert_eq!(contact_param("\"x\"", "expires"), None);
    }

    #[test]
    fn a_phones_invite_is_challenged_with_407_and_its_digest_covers_invite() {
        let mut reg = registrar();
        let invite = |auth: Option<&str>| {
            let mut m = "INVITE sip:+15557770@sbc.example SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-i1\r\nMax-Forwards: 70\r\n\
                 From: <sip:alice-desk@sbc.example>;tag=f1\r\nTo: <sip:+15557770@sbc.example>\r\n\
                 Call-ID: call-1@198.51.100.7\r\nCSeq: 2 INVITE\r\n\
                 Contact: <sip:a@198.51.100.7:5062>\r\n"
                .to_string();
            if let Some(a) = auth {
                m += &format!("Proxy-Authorization: {a}\r\n");
            }
            m += "Content-Length: 0\r\n\r\n";
            match classify(m.as_bytes(), Transport::Udp, &ValidationConfig::default()) {
                Inbound::Request(r) => *r,
                other => panic!("{other:?}"),
            }
        };
        let first = reg.authorize_call(at(0), UNIX, &invite(None), peer(PHONE));
        let Err(RegisterReply::Respond { status, headers }) = first else {
            panic!("{first:?}");
        };
        assert_eq!(status, 407);
        let ch = headers
            .iter()
            .find(|(k, _)| k == "Proxy-Authenticate")
            .map(|(_, v)| Challenge::parse(v).unwrap())
            .expect("a Proxy-Authenticate");
        let mut client = DigestClient::new(
            Credentials {
                username: "alice-desk".into(),
                password: "s3cret".into(),
            },
            3,
        );
        // A response computed for REGISTER does not open an INVITE.
        let wrong = client.authorize(&ch, "REGISTER", "sip:+15557770@sbc.example");
        let r = reg.authorize_call(at(0), UNIX, &invite(Some(&wrong)), peer(PHONE));
        assert!(matches!(r, Err(RegisterReply::Respond { status: 407, .. })));
        assert_eq!(reg.stats().auth_failures, 1);
        let right = client.authorize(&ch, "INVITE", "sip:+15557770@sbc.example");
        let r = reg.authorize_call(at(0), UNIX, &invite(Some(&right)), peer(PHONE));
        assert_eq!(r.map(|a| a.operator), Ok("alice".to_string()));
        assert_eq!(reg.len(), 0, "placing a call binds nothing");
    }

    #[test]
    fn udp_phones_get_keepalives_and_three_missed_in_a_row_unregister_them() {
        let mut reg = registrar();
        reg.cfg.keepalive = Some(Duration::from_secs(30));
        let r = login(
            &mut reg,
            at(0),
            "alice-desk",
            "s3cret",
            &["<sip:a@10.0.0.5>"],
            Some(3600),
            1,
        );
        assert_eq!(respond(&r).0, 200);
        let _ = std::iter::from_fn(|| reg.poll_event()).count();
        let run = |reg: &mut Registrar, until: Instant| {
            while let Some(t) = reg.poll_timeout().filter(|t| *t <= until) {
                reg.handle_timeout(t);
            }
        };
        // Nothing before 30 s: the REGISTER itself was a sign of life.
        run(&mut reg, at(29));
        assert_eq!(reg.poll_keepalive(), None);
        run(&mut reg, at(31));
        let k = reg.poll_keepalive().expect("a keep-alive at 30 s");
        assert_eq!(
            (k.operator.as_str(), k.contact.as_str(), k.peer),
            ("alice", "sip:a@10.0.0.5", peer(PHONE))
        );
        assert_eq!(reg.poll_keepalive(), None, "one per binding");
        // Answered: the count starts over; two misses then an answer keep it.
        reg.handle_keepalive_result("alice", "sip:a@10.0.0.5", false);
        reg.handle_keepalive_result("alice", "sip:a@10.0.0.5", false);
        reg.handle_keepalive_result("alice", "sip:a@10.0.0.5", true);
        reg.handle_keepalive_result("alice", "sip:a@10.0.0.5", false);
        reg.handle_keepalive_result("alice", "sip:a@10.0.0.5", false);
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.poll_event(), None);
        // The third in a row: gone, and presence hears why.
        reg.handle_keepalive_result("alice", "sip:a@10.0.0.5", false);
        assert_eq!(reg.len(), 0);
        assert_eq!(
            reg.poll_event(),
            Some(RegistrarEvent::Unregistered {
                operator: "alice".into(),
                why: Gone::Unreachable
            })
        );
        assert_eq!(reg.stats().unreachable, 1);
        // No binding left: no more looks.
        run(&mut reg, at(120));
        assert_eq!(reg.poll_timeout(), None);
    }

    #[test]
    fn a_nonce_whose_counts_were_forgotten_for_room_is_challenged_not_replayed() {
        let mut reg = registrar();
        reg.max_nonces = 2;
        let contacts = ["<sip:a@10.0.0.5>"];
        let mut client = DigestClient::new(
            Credentials {
                username: "alice-desk".into(),
                password: "s3cret".into(),
            },
            3,
        );
        // Three phones' worth of nonces, each used once, in order.
        let mut answers = Vec::new();
        for i in 0..3u32 {
            let first = reg.handle_register(
                at(0),
                UNIX + u64::from(i),
                &register("alice-desk", &contacts, Some(300), 10 * i + 1, None),
                peer(PHONE),
            );
            let ch = challenge(&first, "SHA-256");
            let auth = client.authorize(&ch, "REGISTER", "sip:sbc.example");
            let r = reg.handle_register(
                at(0),
                UNIX + u64::from(i),
                &register("alice-desk", &contacts, Some(300), 10 * i + 2, Some(&auth)),
                peer(PHONE),
            );
            assert_eq!(respond(&r).0, 200);
            answers.push(auth);
        }
        // The first nonce's count made room for the third: its answer sent
        // again is neither taken nor counted as a guess, but challenged.
        let failures = reg.stats().auth_failures;
        let r = reg.handle_register(
            at(1),
            UNIX + 1000,
            &register("alice-desk", &contacts, Some(300), 99, Some(&answers[0])),
            peer(PHONE),
        );
        let (status, headers) = respond(&r);
        assert_eq!(status, 401);
        assert!(
            headers.iter().any(|(_, v)| v.contains("stale=true")),
            "{headers:?}"
        );
        assert_eq!(reg.stats().auth_failures, failures);
        // A remembered one is still a replay.
        let r = reg.handle_register(
            at(1),
            UNIX + 1000,
            &register("alice-desk", &contacts, Some(300), 100, Some(&answers[2])),
            peer(PHONE),
        );
        assert_eq!(respond(&r).0, 401);
        assert_eq!(reg.stats().auth_failures, failures + 1);
    }
}
