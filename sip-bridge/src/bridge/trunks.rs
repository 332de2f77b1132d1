//! Trunk health: OPTIONS pings to every peer of a trunk (SIP "qualify"); a peer
//! that misses two in a row counts as down, and calls go to the first peer that
//! answers.

use std::collections::HashMap;

use media_core::Instant;

use crate::config::{BridgeConfig, TrunkConfig};
use crate::sip::dialog::{PingId, UserAgent};

#[derive(Clone, Debug, Default)]
struct Health {
    /// Per peer: consecutive failed pings.
    failures: Vec<u32>,
    pings: HashMap<PingId, usize>,
}

/// Every trunk's health. See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Trunks {
    health: Vec<Health>,
    /// Per trunk, the first peer that answers pings (the first if none does).
    live: Vec<usize>,
}

impl Trunks {
    pub(crate) fn new(trunks: &[TrunkConfig]) -> Self {
        Trunks {
            health: trunks
                .iter()
                .map(|t| Health {
                    failures: vec![0; t.peers.len()],
                    pings: HashMap::new(),
                })
                .collect(),
            live: vec![0; trunks.len()],
        }
    }

    pub(crate) fn live_peers(&self) -> &[usize] {
        &self.live
    }

    pub(crate) fn peer_up(&self, trunk: usize, peer: usize) -> bool {
        self.health
            .get(trunk)
            .and_then(|h| h.failures.get(peer))
            .is_none_or(|f| *f < 2)
    }

    /// Pings trunk `t`'s peers; returns when to ping again.
    pub(crate) fn ping(
        &mut self,
        now: Instant,
        t: usize,
        cfg: &BridgeConfig,
        ua: &mut UserAgent,
    ) -> Option<Instant> {
        let trunk = cfg.trunks.get(t)?;
        let interval = trunk.ping_interval?;
        let uri = format!("sip:{}", trunk.host);
        for i in 0..trunk.peers.len() {
            if let Some(peer) = trunk.peer(i)
                && let Ok(ping) = ua.options(now, &uri, peer)
            {
                self.health[t].pings.insert(ping, i);
            }
        }
        Some(now + interval)
    }

    pub(crate) fn on_ping_result(&mut self, ping: PingId, status: Option<u16>) {
        for (t, h) in self.health.iter_mut().enumerate() {
            if let Some(i) = h.pings.remove(&ping) {
                // Any answer means the peer is alive; only silence counts against it.
                match status {
                    Some(_) => h.failures[i] = 0,
                    None => h.failures[i] = h.failures[i].saturating_add(1),
                }
                self.live[t] = h.failures.iter().position(|f| *f < 2).unwrap_or(0);
                return;
            }
        }
    }
}
