//! Calls across the nodes of a cluster, sans-IO: which other nodes can take a
//! call (their ready operators, as the driver last read them), and how one
//! node's INVITE to another proves where it comes from.
//!
//! The node that receives a call owns it. Its plan's "ring the operators of
//! N" rings its own ready operators and forks one INVITE over TCP to each
//! other node with ready operators of N; the first answer wins by ordinary
//! forking, and the losers get CANCEL (or ACK and BYE) with `Reason: SIP
//! ;cause=200` (RFC 3326), which their node tells its operators as
//! `taken_by_other`. A node rung so only rings its own operators (no second
//! hop), so a stale view costs one 480, never a loop.
//!
//! The INVITE carries [`PEER_HEADER`]: the sender's name, the time, what to
//! ring, and an HMAC-SHA256 over them with a key every node derives from the
//! shared token secret ([`PeerKey::derive`]). The receiver also requires the
//! source address to be a live node's (the driver's view).

use std::net::{IpAddr, SocketAddr};

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::config::Cidr;
use crate::contract::CallId;
use crate::sip::dialog::snapshot::DialogSnapshot;
use crate::sip::message::Peer;

/// The header of a node's INVITE to another.
pub const PEER_HEADER: &str = "X-Sbc-Peer";

/// How far a peer's clock may be from ours (seconds) before its INVITE is
/// refused: a replayed header is good no longer than this.
pub const MAX_SKEW_SECS: u64 = 30;

/// The most ready numbers and operators one node's record may list (a
/// bound on what a stranger's record costs).
pub const MAX_READY: usize = 1024;

/// Another node, as the driver last read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode {
    /// Its name.
    pub node: String,
    /// Where it takes SIP (over TCP).
    pub sip: SocketAddr,
    /// Number ids with an operator ready there.
    pub numbers: Vec<String>,
    /// Operators ready there.
    pub operators: Vec<String>,
    /// Draining: still a node (its calls' requests are taken), rung no more.
    pub draining: bool,
}

/// A node's record in the shared store, as any node reads it: checked field
/// by field, since another writer (a bug, an older version, an attacker with
/// access to Redis) may have put anything there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeRecord {
    /// Its name.
    pub node: String,
    /// Its SIP address.
    pub sip: SocketAddr,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Draining: taking no new calls.
    pub draining: bool,
    /// Calls in progress.
    pub calls: u64,
    /// Operators present.
    pub operators: u64,
    /// Its `sbc` version.
    pub version: String,
    /// When it started (Unix seconds): tells a restarted node from the one
    /// that died under the same name.
    pub boot: u64,
    /// Number ids with an operator ready there.
    pub ready: Vec<String>,
    /// Operators ready there.
    pub ops: Vec<String>,
}

impl NodeRecord {
    /// The record of node `node` from its fields; `None` if a field is
    /// missing or malformed (an expired record has none). `ready` and `ops`
    /// may be absent (an older node): nobody to ring there.
    pub fn from_fields<'a>(
        node: &str,
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<NodeRecord> {
        if node.is_empty() || node.len() > 128 || node.chars().any(char::is_control) {
            return None;
        }
        let fields: std::collections::BTreeMap<&str, &str> = fields.into_iter().collect();
        let get = |k: &str| fields.get(k).copied();
        Some(NodeRecord {
            node: node.to_string(),
            sip: get("sip")?.parse().ok()?,
            http: get("http")?.parse().ok()?,
            draining: match get("state")? {
                "serving" => false,
                "draining" => true,
                _ => return None,
            },
            calls: get("calls")?.parse().ok()?,
            operators: get("operators")?.parse().ok()?,
            version: get("version")?.chars().take(32).collect(),
            boot: get("boot").map_or(Some(0), |b| b.parse().ok())?,
            ready: names(get("ready"))?,
            ops: names(get("ops"))?,
        })
    }

    /// What a call needs to ring operators there.
    pub fn peer(&self) -> PeerNode {
        PeerNode {
            node: self.node.clone(),
            sip: self.sip,
            numbers: self.ready.clone(),
            operators: self.ops.clone(),
            draining: self.draining,
        }
    }
}

/// A comma-separated list of ids (numbers, operators); `None` if it is too
/// long or an entry is not a plausible id.
fn names(list: Option<&str>) -> Option<Vec<String>> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Some(Vec::new());
    };
    let v: Vec<String> = list.split(',').map(String::from).collect();
    let plausible = |s: &String| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
    };
    (v.len() <= MAX_READY && v.iter().all(plausible)).then_some(v)
}

/// The other live nodes.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    /// This node's name (in what it signs).
    pub me: String,
    /// The others.
    pub nodes: Vec<PeerNode>,
}

impl Peers {
    /// The nodes of `records` other than `me` at an address inside `allow`
    /// (when it lists any), so that a record someone else wrote cannot draw
    /// calls elsewhere; draining ones are kept (their forks in progress are
    /// still theirs) but never rung. Also how many records were left out for
    /// their address.
    pub fn from_records(me: &str, records: &[NodeRecord], allow: &[Cidr]) -> (Peers, usize) {
        let mut outside = 0;
        let nodes = records
            .iter()
            .filter(|r| r.node != me)
            .filter(|r| {
                let ok = allow.is_empty() || allow.iter().any(|c| c.contains(r.sip.ip()));
                outside += usize::from(!ok);
                ok
            })
            .map(NodeRecord::peer)
            .collect();
        (
            Peers {
                me: me.to_string(),
                nodes,
            },
            outside,
        )
    }

    /// Serving nodes with an operator ready for number `id`.
    pub fn ready_for<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a PeerNode> + 'a {
        self.nodes
            .iter()
            .filter(move |n| !n.draining && n.numbers.iter().any(|x| x == id))
    }

    /// Serving nodes where operator `op` is ready.
    pub fn with_operator<'a>(&'a self, op: &'a str) -> impl Iterator<Item = &'a PeerNode> + 'a {
        self.nodes
            .iter()
            .filter(move |n| !n.draining && n.operators.iter().any(|x| x == op))
    }

    /// Whether `ip` is a node's address (the source a peer INVITE must have).
    pub fn is_node(&self, ip: IpAddr) -> bool {
        self.nodes
            .iter()
            .any(|n| n.sip.ip().to_canonical() == ip.to_canonical())
    }
}

/// What a peer asks this node to ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRing {
    /// The ready operators of the call's number.
    Number,
    /// One operator (an `operator:REF` target).
    Operator(String),
}

/// A verified peer INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInvite {
    /// The node that owns the call.
    pub node: String,
    /// The call's number id.
    pub number: String,
    /// Whom to ring.
    pub ring: PeerRing,
}

/// Why a peer header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Not in our shape (a missing or overlong field).
    #[error("malformed peer header")]
    Malformed,
    /// The MAC does not verify: another key, or altered.
    #[error("bad peer signature")]
    BadMac,
    /// Its time is more than [`MAX_SKEW_SECS`] from ours.
    #[error("stale peer header")]
    Stale,
}

/// What a node keeps in the shared store about its calls so that a survivor
/// can act for it if it dies (the driver writes and deletes the records).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterOut {
    /// A call from a proxy rings here. If this node dies before answering
    /// it, a survivor sends `response` (a 503 this node rendered) to `to`,
    /// the INVITE's previous hop: a proxy with a failure route (Kamailio's
    /// dispatcher, `sbc/deploy/kamailio`) then tries the next node, where
    /// the call rings again. A proxy matches a response by its Via branch,
    /// whatever address it comes from (spike 1, issue 21).
    Ringing {
        /// The record's key (the INVITE's Call-ID and From tag).
        id: String,
        /// Where the response goes (RFC 3261 18.2.2, from the top Via).
        to: Peer,
        /// The whole response, ready to send.
        response: Vec<u8>,
    },
    /// The call was answered or ended: the record goes.
    Settled {
        /// The record's key.
        id: String,
    },
    /// A connected call whose answering party is on node `node`: if this
    /// node dies, `node` carries the caller's dialog on from `snapshot`
    /// (written again whenever the dialog changes).
    Anchor {
        /// The node that would take over (it holds the other party).
        node: String,
        /// The Call-ID of our dialog with that node (how it finds this).
        key: String,
        /// The caller's dialog.
        snapshot: DialogSnapshot,
    },
    /// That call ended: its anchor goes.
    Unanchor {
        /// The node.
        node: String,
        /// The Call-ID of our dialog with it.
        key: String,
    },
    /// Node `owner`, whose call `call` forked here and was answered here,
    /// died: the driver looks up the anchor it left (`key`: the Call-ID of
    /// its dialog with us) and answers with [`crate::bridge::Bridge::handle_reanchor`].
    Reanchor {
        /// Our call.
        call: CallId,
        /// The dead owner.
        owner: String,
        /// The Call-ID of the owner's dialog with us.
        key: String,
    },
}

/// Where responses to `req` go (RFC 3261 section 18.2.2, RFC 3581): its top
/// Via's sent-by, with `received` and `rport` when the previous hop was
/// behind a NAT. `None` for a host name (the sans-IO core resolves none).
pub fn response_target(req: &crate::sip::message::Request) -> Option<Peer> {
    use crate::sip::message::{SipHeaders, Transport, header_param};
    let via = *SipHeaders::lines(req, "Via").first()?;
    let via = via.split(',').next()?.trim();
    let (proto, rest) = via.split_once(char::is_whitespace)?;
    let transport = Transport::from_via_token(proto.rsplit('/').next()?)
        .filter(|t| matches!(t, Transport::Udp | Transport::Tcp | Transport::Tls))?;
    let sent_by = rest.trim().split(';').next()?.trim();
    let (host, port) = match sent_by.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, Some(p)),
            Err(_) if sent_by.starts_with('[') => (sent_by, None),
            Err(_) => return None,
        },
        _ => (sent_by, None),
    };
    let host = header_param(rest, "received").unwrap_or(host);
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
    let default = if transport == Transport::Tls {
        5061
    } else {
        5060
    };
    let port = header_param(rest, "rport")
        .and_then(|p| p.parse().ok())
        .or(port)
        .unwrap_or(default);
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, port),
        conn: None,
    })
}

/// The key nodes sign their INVITEs to each other with.
#[derive(Clone)]
pub struct PeerKey([u8; 32]);

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerKey(..)")
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

impl PeerKey {
    /// The key of every node sharing `token_secret`: HMAC-SHA256 of a fixed
    /// label, so the token key itself never signs SIP.
    pub fn derive(token_secret: &[u8]) -> PeerKey {
        let mut m = HmacSha256::new_from_slice(token_secret).expect("HMAC takes any key length");
        m.update(b"sbc cluster peer invite v1");
        PeerKey(m.finalize().into_bytes().into())
    }

    fn mac(&self, node: &str, unix: u64, number: &str, ring: &str) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in [node, &unix.to_string(), number, ring] {
            m.update(part.as_bytes());
            m.update(b"\n");
        }
        m
    }

    /// The header value for `node`'s INVITE at `unix` (seconds) ringing
    /// `ring` for a call to `number`.
    pub fn sign(&self, node: &str, unix: u64, number: &str, ring: &PeerRing) -> String {
        let ring = ring_text(ring);
        let mac = self.mac(node, unix, number, &ring).finalize().into_bytes();
        let hex = crate::token::to_hex(&mac);
        format!("node={node};ts={unix};num={number};ring={ring};mac={hex}")
    }

    /// Checks a header value at our time `now_unix` (seconds).
    pub fn verify(&self, value: &str, now_unix: u64) -> Result<PeerInvite, PeerError> {
        if value.len() > 512 {
            return Err(PeerError::Malformed);
        }
        let (mut node, mut ts, mut num, mut ring, mut mac) = (None, None, None, None, None);
        for part in value.split(';') {
            let (k, v) = part.split_once('=').ok_or(PeerError::Malformed)?;
            let slot = match k.trim() {
                "node" => &mut node,
                "ts" => &mut ts,
                "num" => &mut num,
                "ring" => &mut ring,
                "mac" => &mut mac,
                _ => continue,
            };
            if slot.replace(v.trim()).is_some() {
                return Err(PeerError::Malformed);
            }
        }
        let (Some(node), Some(ts), Some(number), Some(ring), Some(mac)) =
            (node, ts, num, ring, mac)
        else {
            return Err(PeerError::Malformed);
        };
        let unix: u64 = ts.parse().map_err(|_| PeerError::Malformed)?;
        let mac = crate::token::hex32(mac).ok_or(PeerError::Malformed)?;
        if node.is_empty() || number.is_empty() {
            return Err(PeerError::Malformed);
        }
        self.mac(node, unix, number, ring)
            .verify_slice(&mac)
            .map_err(|_| PeerError::BadMac)?;
        if unix.abs_diff(now_unix) > MAX_SKEW_SECS {
            return Err(PeerError::Stale);
        }
        let ring = match ring.split_once(':') {
            None if ring == "number" => PeerRing::Number,
            Some(("operator", op)) if !op.is_empty() => PeerRing::Operator(op.to_string()),
            _ => return Err(PeerError::Malformed),
        };
        Ok(PeerInvite {
            node: node.to_string(),
            number: number.to_string(),
            ring,
        })
    }
}

fn ring_text(ring: &PeerRing) -> String {
    match ring {
        PeerRing::Number => "number".into(),
        PeerRing::Operator(op) => format!("operator:{op}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_header_verifies_on_a_node_with_the_same_secret_only() {
        let k = PeerKey::derive(b"shared token secret");
        let h = k.sign("a", 1_000, "support", &PeerRing::Number);
        let got = k.verify(&h, 1_010).unwrap();
        assert_eq!(got.node, "a");
        assert_eq!(got.number, "support");
        assert_eq!(got.ring, PeerRing::Number);
        let op = k.sign("a", 1_000, "support", &PeerRing::Operator("alice@x".into()));
        assert_eq!(
            k.verify(&op, 1_000).unwrap().ring,
            PeerRing::Operator("alice@x".into())
        );
        // Another cluster's secret.
        let other = PeerKey::derive(b"another secret");
        assert_eq!(other.verify(&h, 1_000), Err(PeerError::BadMac));
    }

    #[test]
    fn altered_stale_or_malformed_headers_are_refused() {
        let k = PeerKey::derive(b"s");
        let h = k.sign("a", 1_000, "support", &PeerRing::Number);
        // Any field changed breaks the MAC.
        for (from, to) in [
            ("node=a", "node=b"),
            ("ts=1000", "ts=1001"),
            ("num=support", "num=sales"),
            ("ring=number", "ring=operator:bob"),
        ] {
            assert_eq!(
                k.verify(&h.replace(from, to), 1_000),
                Err(PeerError::BadMac),
                "{to}"
            );
        }
        assert_eq!(
            k.verify(&h, 1_000 + MAX_SKEW_SECS + 1),
            Err(PeerError::Stale)
        );
        assert_eq!(
            k.verify(&h, 1_000 - MAX_SKEW_SECS - 1),
            Err(PeerError::Stale)
        );
        for bad in [
            "",
            "garbage",
            "node=a;ts=x;num=n;ring=number;mac=00",
            &h.replace(";mac=", ";mac=zz"),
            &format!("{h};node=b"),
            &h.replace("num=support", "num="),
            &"x".repeat(600),
        ] {
            assert!(k.verify(bad, 1_000).is_err(), "{bad}");
        }
    }

    fn record(node: &str, sip: &str, state: &str) -> Option<NodeRecord> {
        NodeRecord::from_fields(
            node,
            [
                ("sip", sip),
                ("http", "127.0.0.1:8080"),
                ("state", state),
                ("calls", "1"),
                ("operators", "2"),
                ("version", "0.1.0"),
                ("ready", "support"),
                ("ops", "bob"),
            ],
        )
    }

    #[test]
    fn only_serving_other_nodes_inside_the_allowed_blocks_are_rung() {
        let records: Vec<NodeRecord> = [
            ("a", "127.0.0.11:5060", "serving"),
            ("b", "127.0.0.12:5060", "serving"),
            ("c", "127.0.0.13:5060", "draining"),
            ("evil", "203.0.113.9:5060", "serving"),
        ]
        .iter()
        .filter_map(|(n, a, st)| record(n, a, st))
        .collect();
        assert_eq!(records.len(), 4);
        let allow = ["127.0.0.0/8".parse::<Cidr>().unwrap()];
        let (p, outside) = Peers::from_records("a", &records, &allow);
        let names: Vec<_> = p.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!((names, outside), (vec!["b", "c"], 1));
        assert_eq!(p.nodes[0].numbers, ["support"]);
        // The draining one is a node (its requests are taken), never rung.
        let rung: Vec<_> = p.ready_for("support").map(|n| n.node.as_str()).collect();
        assert_eq!(rung, ["b"]);
        assert!(p.is_node("127.0.0.13".parse().unwrap()));
        assert!(p.with_operator("bob").all(|n| n.node == "b"));
        // No list: every address (a single test machine, a trusted network).
        let (p, outside) = Peers::from_records("a", &records, &[]);
        assert_eq!((p.nodes.len(), outside), (3, 0));
    }

    #[test]
    fn malformed_records_are_refused_field_by_field() {
        assert!(record("a", "127.0.0.11:5060", "serving").is_some());
        assert!(record("a", "not an address", "serving").is_none());
        assert!(record("a", "127.0.0.11:5060", "on fire").is_none());
        assert!(record("", "127.0.0.11:5060", "serving").is_none());
        assert!(record("a\nb", "127.0.0.11:5060", "serving").is_none());
        let ok = |ready: &str| {
            NodeRecord::from_fields(
                "a",
                [
                    ("sip", "127.0.0.11:5060"),
                    ("http", "127.0.0.1:8080"),
                    ("state", "serving"),
                    ("calls", "0"),
                    ("operators", "0"),
                    ("version", "x"),
                    ("ready", ready),
                ],
            )
        };
        assert_eq!(ok("").unwrap().ready, Vec::<String>::new());
        assert_eq!(ok("a,b").unwrap().ready, ["a", "b"]);
        assert!(ok("a,,b").is_none());
        assert!(ok("a b").is_none());
        assert!(ok(&vec!["n"; MAX_READY + 1].join(",")).is_none());
    }

    fn invite(via: &str) -> crate::sip::message::Request {
        let raw = format!(
            "INVITE sip:support@127.0.0.11 SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKc\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match crate::sip::message::classify(
            raw.as_bytes(),
            crate::sip::message::Transport::Tcp,
            &Default::default(),
        ) {
            crate::sip::message::Inbound::Request(r) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_go_where_the_top_via_says() {
        use crate::sip::message::Transport::{Tcp, Tls, Udp};
        let t =
            |via: &str| response_target(&invite(via)).map(|p| (p.transport, p.addr.to_string()));
        assert_eq!(
            t("SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKk"),
            Some((Tcp, "127.0.0.1:5060".into()))
        );
        assert_eq!(
            t("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKk"),
            Some((Udp, "192.0.2.1:5060".into()))
        );
        assert_eq!(
            t("SIP/2.0/TLS 192.0.2.1;branch=z9hG4bKk"),
            Some((Tls, "192.0.2.1:5061".into()))
        );
        // RFC 3581: where it came from, not what it said.
        assert_eq!(
            t("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKk;received=198.51.100.7;rport=40000"),
            Some((Udp, "198.51.100.7:40000".into()))
        );
        assert_eq!(
            t("SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKk"),
            Some((Udp, "[2001:db8::1]:5070".into()))
        );
        assert_eq!(t("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKk"), None);
        assert_eq!(t("SIP/2.0/SCTP 192.0.2.1;branch=z9hG4bKk"), None);
    }

    #[test]
    fn peers_are_found_by_number_operator_and_address() {
        let p = Peers {
            me: "a".into(),
            nodes: vec![
                PeerNode {
                    node: "b".into(),
                    sip: "127.0.0.12:5060".parse().unwrap(),
                    numbers: vec!["support".into()],
                    operators: vec!["bob".into()],
                    draining: false,
                },
                PeerNode {
                    node: "c".into(),
                    sip: "127.0.0.13:5060".parse().unwrap(),
                    numbers: vec!["support".into(), "sales".into()],
                    operators: vec!["carol".into()],
                    draining: false,
                },
            ],
        };
        let names = |it: Vec<&PeerNode>| it.iter().map(|n| n.node.clone()).collect::<Vec<_>>();
        assert_eq!(names(p.ready_for("support").collect()), ["b", "c"]);
        assert_eq!(names(p.ready_for("sales").collect()), ["c"]);
        assert!(p.ready_for("billing").next().is_none());
        assert_eq!(names(p.with_operator("carol").collect()), ["c"]);
        assert!(p.is_node("127.0.0.13".parse().unwrap()));
        assert!(p.is_node("::ffff:127.0.0.12".parse().unwrap()));
        assert!(!p.is_node("127.0.0.1".parse().unwrap()));
    }
}
