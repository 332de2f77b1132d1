//! Fixed-capacity PCM FIFO and RTP packet ring: the pipeline's only buffers,
//! allocated once when it is built.

/// A ring of i16 samples. Pushing past capacity drops the oldest samples.
#[derive(Clone, Debug)]
pub(crate) struct PcmFifo {
    buf: Vec<i16>,
    head: usize,
    len: usize,
}

impl PcmFifo {
    pub(crate) fn new(capacity: usize) -> Self {
        PcmFifo {
            buf: vec![0; capacity],
            head: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Empties it.
    pub(crate) fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Appends `pcm`; returns how many old samples were dropped to make room.
    pub(crate) fn push(&mut self, pcm: &[i16]) -> usize {
        let cap = self.buf.len();
        let pcm = if pcm.len() > cap {
            &pcm[pcm.len() - cap..]
        } else {
            pcm
        };
        let dropped = (self.len + pcm.len()).saturating_sub(cap);
        if dropped > 0 {
            self.head = (self.head + dropped) % cap;
            self.len -= dropped;
        }
        let mut tail = (self.head + self.len) % cap;
        let mut rest = pcm;
        while !rest.is_empty() {
            let n = rest.len().min(cap - tail);
            self.buf[tail..tail + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            tail = (tail + n) % cap;
        }
        self.len += pcm.len();
        dropped
    }

    /// Appends `n` zero samples.
    pub(crate) fn push_silence(&mut self, mut n: usize) -> usize {
        const Z: [i16; 256] = [0; 256];
        let mut dropped = 0;
        while n > 0 {
            let k = n.min(Z.len());
            dropped += self.push(&Z[..k]);
            n -= k;
        }
        dropped
    }

    /// Moves the oldest `out.len()` samples into `out`; false if fewer are held.
    pub(crate) fn pop_into(&mut self, out: &mut [i16]) -> bool {
        if out.len() > self.len {
            return false;
        }
        let cap = self.buf.len();
        let first = out.len().min(cap - self.head);
        let rest = out.len() - first;
        out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        out[first..].copy_from_slice(&self.buf[..rest]);
        self.head = (self.head + out.len()) % cap;
        self.len -= out.len();
        true
    }
}

/// Largest packet a slot holds (an Ethernet MTU's worth of RTP).
pub(crate) const SLOT: usize = 1500;

/// A ring of outgoing RTP packets. When full, the oldest packet is dropped: the
/// consumer is not polling, and newer audio matters more.
#[derive(Clone, Debug)]
pub(crate) struct PacketRing {
    data: Vec<u8>,
    lens: Vec<u16>,
    head: usize,
    len: usize,
}

impl PacketRing {
    pub(crate) fn new(slots: usize) -> Self {
        PacketRing {
            data: vec![0; slots * SLOT],
            lens: vec![0; slots],
            head: 0,
            len: 0,
        }
    }

    /// Claims the next slot for writing; returns (slot buffer, whether a queued
    /// packet was dropped to make room). Call [`PacketRing::commit`] after writing.
    pub(crate) fn claim(&mut self) -> (&mut [u8], bool) {
        let slots = self.lens.len();
        let dropped = self.len == slots;
        if dropped {
            self.head = (self.head + 1) % slots;
            self.len -= 1;
        }
        let at = (self.head + self.len) % slots;
        (&mut self.data[at * SLOT..(at + 1) * SLOT], dropped)
    }

    /// Publishes the claimed slot with `len` bytes.
    pub(crate) fn commit(&mut self, len: usize) {
        let slots = self.lens.len();
        let at = (self.head + self.len) % slots;
        self.lens[at] = len as u16;
        self.len += 1;
    }

    /// The oldest packet, removed from the ring (valid until the next mutation).
    pub(crate) fn pop(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let slots = self.lens.len();
        let at = self.head;
        self.head = (self.head + 1) % slots;
        self.len -= 1;
        Some(&self.data[at * SLOT..at * SLOT + self.lens[at] as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_wraps_and_drops_oldest() {
        let mut f = PcmFifo::new(5);
        assert_eq!(f.push(&[1, 2, 3]), 0);
        let mut out = [0; 2];
        assert!(f.pop_into(&mut out));
        assert_eq!(out, [1, 2]);
        assert_eq!(f.push(&[4, 5, 6, 7]), 0); // wraps
        assert_eq!(f.push(&[8, 9]), 2); // drops 3, 4
        let mut all = [0; 5];
        assert!(f.pop_into(&mut all));
        assert_eq!(all, [5, 6, 7, 8, 9]);
        assert!(!f.pop_into(&mut out));
        assert_eq!(f.push_silence(3), 0);
        assert_eq!(f.len(), 3);
    }

    #[test]
    fn ring_keeps_order_and_drops_oldest_when_full() {
        let mut r = PacketRing::new(2);
        for i in 1..=3u8 {
            let (slot, dropped) = r.claim();
            slot[0] = i;
            assert_eq!(dropped, i == 3);
            r.commit(1);
        }
        assert_eq!(r.pop(), Some(&[2u8][..]));
        assert_eq!(r.pop(), Some(&[3u8][..]));
        assert_eq!(r.pop(), None);
    }
}
