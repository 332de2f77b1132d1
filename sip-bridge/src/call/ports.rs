//! RTP ports handed to SIP legs: even ports of a range (RTCP on port + 1).

use std::collections::VecDeque;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    capacity: usize,
}

impl PortPool {
    /// Even ports in `min..=max`.
    pub fn new(min: u16, max: u16) -> Self {
        let start = min + (min % 2);
        let free: VecDeque<u16> = (start..max).step_by(2).collect();
        PortPool {
            capacity: free.len(),
            free,
        }
    }

    /// A port, or `None` when all are in use.
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
