//! RTP ports handed to SIP legs: even ports of a range (RTCP on port + 1,
//! RFC 3550 section 11).
//!
//! The pool is sans-IO: whether a port is really free (another process may hold
//! it) is asked of a [`PortProbe`] the embedder installs, before the port goes
//! into an SDP. A port the probe refuses is skipped (and tried again later), so a
//! busy port never fails a call while another one is free.

use std::collections::VecDeque;

/// Asks the outside world whether an RTP port (and its RTCP port + 1) can be
/// used, and reserves it if so (the sbc binds it). Without one every port of the
/// range counts as free.
pub trait PortProbe: Send {
    /// Reserves `port` for a leg; `false` when something else holds it.
    fn reserve(&mut self, port: u16) -> bool;
}

/// What the pool did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortStats {
    /// Ports skipped because the probe found them taken.
    pub skipped: u64,
    /// Times no port at all could be had (the call got 503).
    pub exhausted: u64,
}

/// See the module docs.
pub struct PortPool {
    free: VecDeque<u16>,
    capacity: usize,
    range: (u16, u16),
    probe: Option<Box<dyn PortProbe>>,
    stats: PortStats,
}

impl std::fmt::Debug for PortPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortPool")
            .field("range", &self.range)
            .field("free", &self.free.len())
            .field("capacity", &self.capacity)
            .field("probe", &self.probe.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl PortPool {
    /// Even ports in `min..=max` whose RTCP port (+1) is in the range too.
    pub fn new(min: u16, max: u16) -> Self {
        let start = min + (min % 2);
        let free: VecDeque<u16> = (start..max).step_by(2).collect();
        PortPool {
            capacity: free.len(),
            free,
            range: (min, max),
            probe: None,
            stats: PortStats::default(),
        }
    }

    /// Installs the check of each port before it is handed out.
    pub fn set_probe(&mut self, probe: Box<dyn PortProbe>) {
        self.probe = Some(probe);
    }

    /// A port the probe could reserve, or `None` when every free one is taken by
    /// someone else too (or all are in use). A refused port goes to the back and
    /// is tried again when its turn comes.
    pub fn take(&mut self) -> Option<u16> {
        for _ in 0..self.free.len() {
            let port = self.free.pop_front()?;
            if self.probe.as_mut().is_none_or(|p| p.reserve(port)) {
                return Some(port);
            }
            self.stats.skipped += 1;
            self.free.push_back(port);
        }
        self.stats.exhausted += 1;
        None
    }

    /// Returns a port (it goes to the back: not reused at once, so late packets
    /// of the old call do not reach the next one).
    pub fn give(&mut self, port: u16) {
        if self.free.len() < self.capacity && !self.free.contains(&port) {
            self.free.push_back(port);
        }
    }

    /// Ports in use.
    pub fn in_use(&self) -> usize {
        self.capacity - self.free.len()
    }

    /// The configured range, `(min, max)`.
    pub fn range(&self) -> (u16, u16) {
        self.range
    }

    /// Skipped and exhausted counts.
    pub fn stats(&self) -> PortStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[test]
    fn ports_are_even_bounded_and_reused_last() {
        let mut p = PortPool::new(10001, 10010);
        let got: Vec<u16> = std::iter::from_fn(|| p.take()).collect();
        assert_eq!(got, vec![10002, 10004, 10006, 10008]);
        assert_eq!(p.in_use(), 4);
        p.give(10004);
        p.give(10004);
        p.give(10002);
        assert_eq!(p.take(), Some(10004));
        assert_eq!(p.take(), Some(10002));
        assert_eq!(p.take(), None);
        assert_eq!(p.stats().exhausted, 2, "the iterator's end and this one");
    }

    /// Ports held by "another process", shared with the test.
    struct Busy(Arc<Mutex<HashSet<u16>>>);

    impl PortProbe for Busy {
        fn reserve(&mut self, port: u16) -> bool {
            !self.0.lock().unwrap().contains(&port)
        }
    }

    #[test]
    fn busy_ports_are_skipped_and_tried_again_later() {
        let held = Arc::new(Mutex::new(HashSet::from([10000, 10002, 10006])));
        let mut p = PortPool::new(10000, 10009);
        p.set_probe(Box::new(Busy(held.clone())));
        assert_eq!(p.take(), Some(10004));
        assert_eq!(p.stats().skipped, 2, "10000 and 10002");
        assert_eq!(p.take(), Some(10008));
        assert_eq!(p.stats().skipped, 3, "then 10006");
        // Only held ports are left: no port, counted once, nothing lost.
        assert_eq!(p.take(), None);
        assert_eq!(
            p.stats(),
            PortStats {
                skipped: 6,
                exhausted: 1
            }
        );
        assert_eq!(p.in_use(), 2);
        // The other process lets 10002 go: it is handed out again.
        held.lock().unwrap().remove(&10002);
        assert_eq!(p.take(), Some(10002));
        p.give(10004);
        p.give(10008);
        p.give(10002);
        assert_eq!(p.in_use(), 0);
    }
}
