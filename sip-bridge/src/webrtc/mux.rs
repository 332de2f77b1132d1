//! Routing the one shared UDP port to legs: STUN checks by the ufrag in their
//! USERNAME, everything else by the source address a signed check came from.
//!
//! The mux sits on the socket's task and only names legs (by the owner's key `K`);
//! the legs live with their calls. It learns an address for a leg only from a
//! binding request whose MESSAGE-INTEGRITY verifies with that leg's ICE password,
//! so a forged check cannot steer another leg's media (nor a forged ClientHello
//! reach any leg: CVE-2023-49786). The leg applies the same gate again.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;

use super::stun::{self, Check, Kind};

/// A leg's ICE credentials as the mux needs them: our ufrag and password, and the
/// browser's ufrag. Get them from [`super::WebRtcLeg::mux_credentials`].
#[derive(Clone, PartialEq, Eq)]
pub struct MuxCredentials {
    local_ufrag: Box<str>,
    password: Box<str>,
    remote_ufrag: Box<str>,
}

impl MuxCredentials {
    pub(crate) fn new(local_ufrag: String, password: String, remote_ufrag: String) -> Self {
        MuxCredentials {
            local_ufrag: local_ufrag.into(),
            password: password.into(),
            remote_ufrag: remote_ufrag.into(),
        }
    }

    /// Our ufrag: the part of a check's USERNAME before the ':'.
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// The browser's ufrag: the part after the ':'.
    pub fn remote_ufrag(&self) -> &str {
        &self.remote_ufrag
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for MuxCredentials {
    // The password stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxCredentials")
            .field("local_ufrag", &self.local_ufrag)
            .field("remote_ufrag", &self.remote_ufrag)
            .finish_non_exhaustive()
    }
}

/// Table bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuxConfig {
    /// Legs at most; `insert` fails beyond.
    pub max_legs: usize,
    /// Addresses remembered per leg (a browser may switch networks); the oldest
    /// is forgotten first.
    pub max_addrs_per_leg: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            max_legs: 10_000,
            max_addrs_per_leg: 4,
        }
    }
}

/// Caller errors of [`WebRtcMux::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// `max_legs` reached.
    #[error("WebRTC mux full")]
    Full,
    /// Another leg has this ufrag (str0m's are 16 random characters, so a bug).
    #[error("ICE ufrag already in use")]
    DuplicateUfrag,
    /// The key is already in use.
    #[error("leg key already in use")]
    DuplicateKey,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// STUN checks routed by ufrag.
    pub routed_stun: u64,
    /// Other datagrams routed by source address.
    pub routed_by_addr: u64,
    /// Addresses learned from signed checks.
    pub learned: u64,
    /// Addresses forgotten because a leg had too many.
    pub evicted: u64,
    /// Checks for a ufrag no leg has.
    pub dropped_unknown_ufrag: u64,
    /// Checks from a new address whose MESSAGE-INTEGRITY did not verify.
    pub dropped_unsigned: u64,
    /// DTLS/RTP/other STUN from an address no signed check came from.
    pub dropped_unknown_addr: u64,
    /// Datagrams that are not STUN, DTLS or RTP/RTCP.
    pub dropped_malformed: u64,
}

#[derive(Debug)]
struct Entry {
    credentials: MuxCredentials,
    addrs: VecDeque<SocketAddr>,
}

/// Maps datagrams on the shared port to the key of the leg they belong to.
#[derive(Debug)]
pub struct WebRtcMux<K> {
    config: MuxConfig,
    legs: HashMap<K, Entry>,
    by_ufrag: HashMap<Box<str>, K>,
    by_addr: HashMap<SocketAddr, K>,
    stats: MuxStats,
}

impl<K: Copy + Eq + Hash> WebRtcMux<K> {
    /// An empty mux.
    pub fn new(config: MuxConfig) -> Self {
        WebRtcMux {
            config,
            legs: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            stats: MuxStats::default(),
        }
    }

    /// Adds a leg right after its answer is made (before the browser's first check).
    pub fn insert(&mut self, key: K, credentials: MuxCredentials) -> Result<(), MuxError> {
        if self.legs.contains_key(&key) {
            return Err(MuxError::DuplicateKey);
        }
        if self.by_ufrag.contains_key(credentials.local_ufrag()) {
            return Err(MuxError::DuplicateUfrag);
        }
        if self.legs.len() >= self.config.max_legs {
            return Err(MuxError::Full);
        }
        self.by_ufrag.insert(credentials.local_ufrag.clone(), key);
        self.legs.insert(
            key,
            Entry {
                credentials,
                addrs: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// Forgets a leg and its addresses. `false` if it was not there.
    pub fn remove(&mut self, key: K) -> bool {
        let Some(entry) = self.legs.remove(&key) else {
            return false;
        };
        self.by_ufrag.remove(entry.credentials.local_ufrag());
        for addr in entry.addrs {
            if self.by_addr.get(&addr) == Some(&key) {
                self.by_addr.remove(&addr);
            }
        }
        true
    }

    /// The leg a datagram from `source` belongs to, or `None` to drop it. A signed
    /// check from a new address binds that address to its leg (the newest binding
    /// wins, as when a NAT hands a port to another browser).
    pub fn route(&mut self, source: SocketAddr, datagram: &[u8]) -> Option<K> {
        match stun::classify(datagram) {
            Kind::Stun => match Check::parse(datagram) {
                Some(check) => self.route_check(source, &check),
                // Indications and responses carry no usable USERNAME.
                None => self.route_by_addr(source),
            },
            Kind::Dtls | Kind::Rtp => self.route_by_addr(source),
            Kind::Other => {
                self.stats.dropped_malformed += 1;
                None
            }
        }
    }

    fn route_check(&mut self, source: SocketAddr, check: &Check<'_>) -> Option<K> {
        let Some(&key) = self.by_ufrag.get(check.local_ufrag()) else {
            self.stats.dropped_unknown_ufrag += 1;
            return None;
        };
        if self.by_addr.get(&source) != Some(&key) {
            let creds = &self.legs.get(&key)?.credentials;
            if !check.is_signed(creds.local_ufrag(), creds.remote_ufrag(), creds.password()) {
                self.stats.dropped_unsigned += 1;
                return None;
            }
            self.learn(key, source);
        }
        self.stats.routed_stun += 1;
        Some(key)
    }

    fn route_by_addr(&mut self, source: SocketAddr) -> Option<K> {
        match self.by_addr.get(&source) {
            Some(&key) => {
                self.stats.routed_by_addr += 1;
                Some(key)
            }
            None => {
                self.stats.dropped_unknown_addr += 1;
                None
            }
        }
    }

    fn learn(&mut self, key: K, addr: SocketAddr) {
        if let Some(old) = self.by_addr.insert(addr, key)
            && let Some(e) = self.legs.get_mut(&old)
        {
            e.addrs.retain(|a| *a != addr);
        }
        let max = self.config.max_addrs_per_leg.max(1);
        let Some(entry) = self.legs.get_mut(&key) else {
            return;
        };
        entry.addrs.push_back(addr);
        self.stats.learned += 1;
        while entry.addrs.len() > max {
            if let Some(gone) = entry.addrs.pop_front() {
                self.by_addr.remove(&gone);
                self.stats.evicted += 1;
            }
        }
    }

    /// The addresses currently bound to `key`, oldest first.
    pub fn addresses(&self, key: K) -> impl Iterator<Item = SocketAddr> + '_ {
        self.legs
            .get(&key)
            .into_iter()
            .flat_map(|e| e.addrs.iter().copied())
    }

    /// Legs in the table.
    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// Whether no leg is in the table.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> MuxStats {
        self.stats
    }
}

impl<K: Copy + Eq + Hash> Default for WebRtcMux<K> {
    fn default() -> Self {
        Self::new(MuxConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::stun::binding_request;

    fn creds(n: u8) -> MuxCredentials {
        MuxCredentials::new(
            format!("ufrag{n:02}xxxxxxxxxx"),
            format!("password{n:02}xxxxxxxxxxxx"),
            format!("br{n}"),
        )
    }

    fn check(c: &MuxCredentials) -> Vec<u8> {
        binding_request(c.local_ufrag(), c.remote_ufrag(), Some(c.password()))
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, n], 40_000 + n as u16))
    }

    const DTLS: &[u8] = &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const SRTP: &[u8] = &[0x80, 111, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4, 0xfc];

    #[test]
    fn routes_checks_by_ufrag_and_media_by_validated_address() {
        let mut mux = WebRtcMux::default();
        let (a, b) = (creds(1), creds(2));
        mux.insert('a', a.clone()).expect("room");
        mux.insert('b', b.clone()).expect("room");
        // Media before any check: nowhere to go.
        assert_eq!(mux.route(addr(1), DTLS), None);
        assert_eq!(mux.route(addr(1), &check(&a)), Some('a'));
        assert_eq!(mux.route(addr(2), &check(&b)), Some('b'));
        assert_eq!(mux.route(addr(1), DTLS), Some('a'));
        assert_eq!(mux.route(addr(1), SRTP), Some('a'));
        assert_eq!(mux.route(addr(2), SRTP), Some('b'));
        assert_eq!(mux.route(addr(9), SRTP), None);
        assert_eq!(mux.route(addr(1), &[0xff; 40]), None);
        assert_eq!(mux.route(addr(1), &[]), None);
        let s = mux.stats();
        assert_eq!((s.routed_stun, s.routed_by_addr, s.learned), (2, 3, 2));
        assert_eq!((s.dropped_unknown_addr, s.dropped_malformed), (2, 2));
    }

    /// A forged check (right ufrag, wrong password) from a victim's address must not
    /// steer the victim's media to another leg.
    #[test]
    fn unsigned_checks_bind_nothing() {
        let mut mux = WebRtcMux::default();
        let (a, b) = (creds(1), creds(2));
        mux.insert('a', a.clone()).expect("room");
        mux.insert('b', b.clone()).expect("room");
        assert_eq!(mux.route(addr(1), &check(&a)), Some('a'));
        let forged = binding_request(b.local_ufrag(), b.remote_ufrag(), Some("guess"));
        assert_eq!(mux.route(addr(1), &forged), None);
        let unknown = binding_request("nobody", "x", Some("guess"));
        assert_eq!(mux.route(addr(7), &unknown), None);
        assert_eq!(mux.route(addr(1), SRTP), Some('a'));
        let s = mux.stats();
        assert_eq!((s.dropped_unsigned, s.dropped_unknown_ufrag), (1, 1));
        assert_eq!(mux.addresses('b').count(), 0);
    }

    #[test]
    fn a_signed_check_moves_an_address_to_its_leg() {
        let mut mux = WebRtcMux::default();
        let (a, b) = (creds(1), creds(2));
        mux.insert('a', a.clone()).expect("room");
        mux.insert('b', b.clone()).expect("room");
        mux.route(addr(1), &check(&a));
        // The NAT gave the same public port to b's browser.
        assert_eq!(mux.route(addr(1), &check(&b)), Some('b'));
        assert_eq!(mux.route(addr(1), SRTP), Some('b'));
        assert_eq!(mux.addresses('a').count(), 0);
        assert_eq!(mux.addresses('b').collect::<Vec<_>>(), [addr(1)]);
    }

    #[test]
    fn tables_are_bounded_and_cleaned_up() {
        let mut mux = WebRtcMux::new(MuxConfig {
            max_legs: 2,
            max_addrs_per_leg: 2,
        });
        let (a, b, c) = (creds(1), creds(2), creds(3));
        mux.insert(1u32, a.clone()).expect("room");
        assert_eq!(mux.insert(1, c.clone()), Err(MuxError::DuplicateKey));
        assert_eq!(mux.insert(2, a.clone()), Err(MuxError::DuplicateUfrag));
        mux.insert(2, b.clone()).expect("room");
        assert_eq!(mux.insert(3, c.clone()), Err(MuxError::Full));
        // A browser hopping networks: only the newest two addresses stay.
        for n in 1..=3 {
            assert_eq!(mux.route(addr(n), &check(&a)), Some(1));
        }
        assert_eq!(mux.addresses(1).collect::<Vec<_>>(), [addr(2), addr(3)]);
        assert_eq!(mux.route(addr(1), SRTP), None);
        assert_eq!(mux.stats().evicted, 1);
        // Removal forgets the ufrag and every address.
        assert!(mux.remove(1));
        assert!(!mux.remove(1));
        assert_eq!(mux.route(addr(3), SRTP), None);
        assert_eq!(mux.route(addr(3), &check(&a)), None);
        assert_eq!(mux.len(), 1);
        mux.insert(3, c).expect("room again");
        assert!(mux.by_addr.len() <= mux.len() * 2);
    }
}
