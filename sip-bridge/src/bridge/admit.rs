//! Whether a new call may start: the one admission policy. The bridge applies it
//! to an inbound INVITE (`inbound_call`) and to an operator's `dial`; the sbc
//! applies the same function to an initial INVITE before any transaction exists
//! (its stateless front door), so both always agree.
//!
//! In order:
//! * an INVITE from a source that is no trunk's, unless inbound is open: **403**;
//! * the node is draining (shutting down): **503** with `Retry-After`;
//! * as many calls as `max_calls`: **503** with `Retry-After`.
//!
//! Every 503 carries the same [`RETRY_AFTER_SECS`].

use std::net::IpAddr;

use super::{Bridge, BridgeConfig};

/// The `Retry-After` (seconds) of every 503 admission gives, draining or full:
/// "no new call here now; try another node, or this one again in 5 s" (RFC 3261
/// 21.5.4: a client retries no sooner; a proxy fails over meanwhile). The same 5 s
/// as the UA's own 503s at its leg and transaction limits.
pub const RETRY_AFTER_SECS: u32 = 5;

/// [`RETRY_AFTER_SECS`] as the header (kept equal by a test).
const RETRY_AFTER: &[(&str, &str)] = &[("Retry-After", "5")];

/// Who asks for a new call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An INVITE from this source address.
    Sip(IpAddr),
    /// An operator's `dial` (already authenticated by its token).
    Operator,
    /// Another node of the cluster (its INVITE signed and from a node's
    /// address; see [`crate::cluster`]).
    Peer,
}

/// The node's state that admission looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Calls in progress.
    pub calls: usize,
    /// Taking no new calls (shutdown).
    pub draining: bool,
}

/// Why a new call is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The INVITE is from no trunk's source and inbound is not open: 403.
    NotATrunk,
    /// The node is draining: 503 with `Retry-After`.
    Draining,
    /// `max_calls` calls are in progress: 503 with `Retry-After`.
    AtCapacity,
}

impl Refusal {
    /// The SIP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::NotATrunk => 403,
            Refusal::Draining | Refusal::AtCapacity => 503,
        }
    }

    /// The headers the response carries (`Retry-After` on a 503).
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::NotATrunk => &[],
            Refusal::Draining | Refusal::AtCapacity => RETRY_AFTER,
        }
    }
}

/// Whether a call from `origin` may start under `cfg` and `load`; see the
/// module docs. Pure: the same answer for the same arguments.
pub fn admit(cfg: &BridgeConfig, origin: Origin, load: Load) -> Result<(), Refusal> {
    if let Origin::Sip(ip) = origin
        && !cfg.open_inbound
        && cfg.trunk_for_source(ip).is_none()
    {
        return Err(Refusal::NotATrunk);
    }
    if load.draining {
        return Err(Refusal::Draining);
    }
    if load.calls >= cfg.max_calls {
        return Err(Refusal::AtCapacity);
    }
    Ok(())
}

impl Bridge {
    /// [`admit`] with this bridge's configuration and load.
    pub fn admission(&self, origin: Origin) -> Result<(), Refusal> {
        admit(
            &self.cfg,
            origin,
            Load {
                calls: self.calls.len(),
                draining: self.draining,
            },
        )
    }

    /// Whether the bridge is draining ([`Bridge::set_draining`]).
    pub fn draining(&self) -> bool {
        self.draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::{Cidr, TrunkConfig};
    use crate::sip::message::Transport;

    fn config() -> BridgeConfig {
        let trunk = TrunkConfig {
            siprec: None,
            name: "carrier".into(),
            host: "carrier.example".into(),
            peers: vec!["192.0.2.1:5060".parse().unwrap()],
            transport: Transport::Udp,
            credentials: None,
            register: None,
            inbound: vec!["198.51.100.0/24".parse::<Cidr>().unwrap()],
            codecs: Vec::new(),
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
        let mut cfg = BridgeConfig::new(Vec::new(), vec![trunk], "10.0.0.1".parse().unwrap());
        cfg.max_calls = 2;
        cfg
    }

    #[test]
    fn strangers_get_403_first_then_draining_then_capacity_503() {
        let cfg = config();
        let carrier = Origin::Sip("192.0.2.1".parse().unwrap());
        let carrier_block = Origin::Sip("198.51.100.7".parse().unwrap());
        let stranger = Origin::Sip("203.0.113.9".parse().unwrap());
        let load = |calls, draining| Load { calls, draining };
        for origin in [carrier, carrier_block, Origin::Operator] {
            assert_eq!(admit(&cfg, origin, load(1, false)), Ok(()));
            assert_eq!(admit(&cfg, origin, load(0, true)), Err(Refusal::Draining));
            assert_eq!(
                admit(&cfg, origin, load(2, false)),
                Err(Refusal::AtCapacity)
            );
        }
        // A stranger learns nothing about the node's state.
        for l in [load(0, false), load(0, true), load(2, false)] {
            assert_eq!(admit(&cfg, stranger, l), Err(Refusal::NotATrunk));
        }
        let open = BridgeConfig {
            open_inbound: true,
            ..cfg
        };
        assert_eq!(admit(&open, stranger, load(0, false)), Ok(()));
        assert_eq!(
            admit(&open, stranger, load(0, true)),
            Err(Refusal::Draining)
        );
    }

    #[test]
    fn every_503_says_the_same_retry_after() {
        assert_eq!(Refusal::NotATrunk.status(), 403);
        assert!(Refusal::NotATrunk.headers().is_empty());
        for r in [Refusal::Draining, Refusal::AtCapacity] {
            assert_eq!(r.status(), 503);
            assert_eq!(
                r.headers(),
                &[("Retry-After", RETRY_AFTER_SECS.to_string().as_str())]
            );
        }
    }
}
