//! What the bridge is configured with (the SBC maps its TOML file onto this).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use media_core::codec::Codec;

use crate::plan::{DialPlan, Ringback};
use crate::roles::RoleCapabilities;
use crate::signalling::SessionConfig;
use crate::sip::auth::Credentials;
use crate::sip::message::{Peer, Transport};

/// A number calls arrive on and operators use as caller ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberConfig {
    /// Short id (`support`).
    pub id: String,
    /// E.164 (`+15550100`).
    pub e164: String,
    /// Label for people.
    pub name: String,
    /// What rings when it is called.
    pub plan: DialPlan,
    /// What parties of its calls may do, by role.
    pub capabilities: RoleCapabilities,
    /// A meet-me room: every caller joins one call, nothing rings.
    pub room: bool,
}

/// How DTMF goes to a trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DtmfMode {
    /// RFC 4733 telephone-events in the RTP stream.
    #[default]
    Rfc4733,
    /// SIP INFO with `application/dtmf-relay`.
    Info,
}

/// An address block (`203.0.113.0/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim()
                .parse()
                .ok()
                .filter(|v| *v <= max)
                .ok_or(format!("bad prefix in `{s}`"))?
        };
        Ok(Cidr { addr, prefix })
    }
}

/// A SIP trunk (carrier).
#[derive(Clone, Debug)]
pub struct TrunkConfig {
    /// Name for logs, metrics and `pstn:+E164@name`.
    pub name: String,
    /// Host for Request-URIs (`carrier.example`).
    pub host: String,
    /// Addresses in failover order (resolved by the driver).
    pub peers: Vec<SocketAddr>,
    /// Transport to them.
    pub transport: Transport,
    /// Digest credentials for our requests.
    pub credentials: Option<Credentials>,
    /// Register to the first peer (an AOR `sip:user@host`).
    pub register: Option<String>,
    /// Sources allowed to send us INVITEs through this trunk (besides `peers`).
    pub inbound: Vec<Cidr>,
    /// Codecs in preference order.
    pub codecs: Vec<Codec>,
    /// DTMF toward this trunk.
    pub dtmf: DtmfMode,
    /// OPTIONS ping interval; `None` disables health checks.
    pub ping_interval: Option<Duration>,
    /// What callers from this trunk hear while their call rings, unless their
    /// number's plan says (`None`: [`Ringback::Relay`]).
    pub ringback: Option<Ringback>,
    /// Ask for session timers on our calls toward it (RFC 4028
    /// `Session-Expires`; at least 90 s). Asked of us, they are always honoured.
    pub session_expires: Option<Duration>,
    /// Our INVITEs toward it carry no offer (late offer, RFC 3261 13.2.1):
    /// its offer comes in the 2xx and our answer in the ACK.
    pub late_offer: bool,
    /// Our INVITEs toward it say `Require: 100rel` (RFC 3262): every 18x
    /// comes reliably (otherwise `Supported: 100rel` lets it choose).
    pub require_100rel: bool,
    /// Our hold, resume and other new offers in its calls go as UPDATE
    /// (RFC 3311) when it allows UPDATE; otherwise re-INVITE, which section
    /// 5.1 recommends for confirmed dialogs.
    pub update_offers: bool,
    /// Its REFERs are followed (RFC 3515: the other party is transferred to
    /// the Refer-To target); otherwise they get 403.
    pub accept_refer: bool,
    /// How its parties are transferred: bridged through us, or handed to it
    /// with a REFER.
    pub transfer: TransferMode,
    /// Its inbound calls are recorded through this SIPREC server unless
    /// their number names one.
    pub siprec: Option<crate::plan::SiprecOptions>,
    /// Where its media is taken from before the first packet latches.
    pub latch: Latch,
}

/// Which first RTP source a SIP leg latches to (its later packets must come
/// from there; see [`crate::media`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Latch {
    /// From the SDP's address (any source when that is private), like
    /// rtpengine's strict-source: a carrier's media comes from where it says.
    #[default]
    Strict,
    /// Also from the address its SIP comes from: a peer behind NAT whose SDP
    /// names an address it does not send from (phones always latch so).
    Signalling,
}

/// How a blind transfer moves a party of a trunk to a phone number or a SIP
/// URI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferMode {
    /// We call the target and bridge it (the default): we stay in the media.
    #[default]
    Bridge,
    /// We send the trunk a REFER (RFC 3515) and leave once its NOTIFY says
    /// the target answered. A REFER refused (403, 405, 501...) or NOTIFYs
    /// that never come fall back to bridging. `bridge_on_failure`: a target
    /// the trunk could not reach (a NOTIFY of 4xx-6xx) is tried by bridging
    /// too; otherwise the transfer fails and the transferor is back.
    Refer {
        /// Bridge after a failed NOTIFY too.
        bridge_on_failure: bool,
    },
}

impl TrunkConfig {
    /// Whether a request from `ip` belongs to this trunk.
    pub fn accepts_from(&self, ip: IpAddr) -> bool {
        self.peers.iter().any(|p| p.ip() == ip) || self.inbound.iter().any(|c| c.contains(ip))
    }

    /// The peer at failover position `i`.
    pub fn peer(&self, i: usize) -> Option<Peer> {
        self.peers.get(i).map(|&addr| Peer {
            transport: self.transport,
            addr,
            conn: None,
        })
    }
}

/// Options of an AI agent target (`stream:URL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamTarget {
    /// The URL as written in dial plans (`wss://agent.example/ws`).
    pub url: String,
    /// Framing.
    pub format: crate::stream::StreamFormat,
    /// Extra request headers (an `Authorization: Bearer ...`).
    pub headers: Vec<(String, String)>,
}

/// The bridge's configuration.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// Numbers and their plans.
    pub numbers: Vec<NumberConfig>,
    /// Trunks.
    pub trunks: Vec<TrunkConfig>,
    /// Options per AI agent URL (absent: native framing, no extra headers).
    pub streams: Vec<StreamTarget>,
    /// The address in our SDP for SIP-side RTP.
    pub media_ip: IpAddr,
    /// Our IPv6 media address when we serve both address families: SIP legs
    /// whose peer is reached over IPv6 get it in their SDP (`c=IN IP6`).
    pub media_ip6: Option<IpAddr>,
    /// SIP-side RTP ports.
    pub rtp_ports: (u16, u16),
    /// Ring time of an outbound call (an operator's `dial`).
    pub outbound_ring_timeout: Duration,
    /// Most calls at once (503 beyond).
    pub max_calls: usize,
    /// Most parties in one call (ringing or joined, supervisors included).
    pub max_parties: usize,
    /// A party held by someone (an operator's hold, the API's, a transfer's)
    /// hears [`crate::contract::Tone::Hold`]; otherwise silence.
    pub hold_music: bool,
    /// Longest call.
    pub max_call_duration: Duration,
    /// Operator connections.
    pub session: SessionConfig,
    /// Reconnect grace period.
    pub grace: Duration,
    /// Most operators.
    pub max_operators: usize,
    /// Accept calls from any source (the demo's loopback setup); otherwise an
    /// INVITE must come from a trunk.
    pub open_inbound: bool,
    /// Ask an external router for each call's plan (see
    /// [`crate::bridge::Bridge::poll_route_request`]) instead of using the static plans.
    pub external_routing: bool,
    /// Seeds ids.
    pub seed: u64,
    /// SIP phones that register as operators (none: REGISTER gets 405).
    pub phones: Vec<crate::registrar::PhoneAccount>,
    /// How their registrations are kept.
    pub registrar: crate::registrar::RegistrarConfig,
    /// In a cluster: the key nodes sign their INVITEs to each other with
    /// (see [`crate::cluster`]); `None`: a single node, no peer is trusted.
    pub peer_key: Option<crate::cluster::PeerKey>,
}

impl BridgeConfig {
    /// Our media address for a SIP leg whose peer is over IPv6 (`ipv6`) or not.
    pub fn media_ip_for(&self, ipv6: bool) -> IpAddr {
        match self.media_ip6 {
            Some(ip) if ipv6 => ip,
            _ => self.media_ip,
        }
    }

    /// A configuration with defaults around `numbers` and `trunks`.
    pub fn new(numbers: Vec<NumberConfig>, trunks: Vec<TrunkConfig>, media_ip: IpAddr) -> Self {
        BridgeConfig {
            numbers,
            trunks,
            streams: Vec::new(),
            media_ip,
            media_ip6: None,
            rtp_ports: (20000, 30000),
            outbound_ring_timeout: Duration::from_secs(60),
            max_calls: 5000,
            max_parties: 16,
            hold_music: false,
            max_call_duration: Duration::from_secs(4 * 3600),
            session: SessionConfig::default(),
            grace: Duration::from_secs(30),
            max_operators: 10_000,
            open_inbound: false,
            external_routing: false,
            seed: 1,
            phones: Vec::new(),
            registrar: Default::default(),
            peer_key: None,
        }
    }

    /// The number whose id or E.164 (with or without `+`) is `s`.
    pub fn number(&self, s: &str) -> Option<&NumberConfig> {
        let digits = s.trim_start_matches('+');
        self.numbers
            .iter()
            .find(|n| n.id == s || (!digits.is_empty() && n.e164.trim_start_matches('+') == digits))
    }

    /// The trunk a source belongs to.
    pub fn trunk_for_source(&self, ip: IpAddr) -> Option<usize> {
        self.trunks.iter().position(|t| t.accepts_from(ip))
    }

    /// A trunk by name.
    pub fn trunk_named(&self, name: &str) -> Option<usize> {
        self.trunks.iter().position(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c: Cidr = "203.0.113.0/24".parse().unwrap();
        assert!(c.contains("203.0.113.77".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "198.51.100.7".parse().unwrap();
        assert!(
            one.contains("198.51.100.7".parse().unwrap())
                && !one.contains("198.51.100.8".parse().unwrap())
        );
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }

    #[test]
    fn numbers_by_id_or_e164() {
        let cfg = BridgeConfig::new(
            vec![NumberConfig {
                id: "support".into(),
                e164: "+15550100".into(),
                name: "Support".into(),
                plan: DialPlan::default(),
                capabilities: RoleCapabilities::default(),
                room: false,
            }],
            vec![],
            "127.0.0.1".parse().unwrap(),
        );
        for s in ["support", "+15550100", "15550100"] {
            assert_eq!(cfg.number(s).map(|n| n.id.as_str()), Some("support"), "{s}");
        }
        assert!(cfg.number("+").is_none() && cfg.number("sales").is_none());
    }
}
