//! Extended sequence numbers and timestamps across wrap-around (RFC 3550 appendix A.1).

/// Maps 16-bit sequence numbers onto a monotonic 64-bit line by choosing, for each
/// new value, the extension closest to the highest seen so far. The first packet
/// starts cycle 0; a packet from before it may unwrap to a negative number.
#[derive(Clone, Debug, Default)]
pub struct SeqUnwrapper {
    highest: Option<i64>,
}

impl SeqUnwrapper {
    /// A fresh unwrapper.
    pub fn new() -> Self {
        Self::default()
    }

    /// The extended form of `seq`; also advances the highest value seen.
    pub fn unwrap(&mut self, seq: u16) -> i64 {
        let ext = self.peek(seq);
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }

    /// The extended form of `seq` without updating state.
    pub fn peek(&self, seq: u16) -> i64 {
        match self.highest {
            None => seq as i64,
            Some(h) => h + (seq.wrapping_sub(h as u16) as i16) as i64,
        }
    }

    /// Highest extended value seen.
    pub fn highest(&self) -> Option<i64> {
        self.highest
    }

    /// Forget history (new SSRC).
    pub fn reset(&mut self) {
        self.highest = None;
    }
}

/// The same for 32-bit RTP timestamps: each value is placed within +-2^31 of the
/// last one seen (not the highest, so a backwards jump after a resync is kept).
#[derive(Clone, Debug, Default)]
pub struct TimestampUnwrapper {
    last: Option<i64>,
}

impl TimestampUnwrapper {
    /// A fresh unwrapper.
    pub fn new() -> Self {
        Self::default()
    }

    /// The extended form of `ts`; it becomes the reference for the next call.
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let ext = self.peek(ts);
        self.last = Some(ext);
        ext
    }

    /// The extended form of `ts` without updating state.
    pub fn peek(&self, ts: u32) -> i64 {
        match self.last {
            None => ts as i64,
            Some(l) => l + (ts.wrapping_sub(l as u32) as i32) as i64,
        }
    }

    /// Forget history (new SSRC).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_unwraps_across_wrap_and_reorder() {
        let mut u = SeqUnwrapper::new();
        assert_eq!(u.unwrap(65534), 65534);
        assert_eq!(u.unwrap(65535), 65535);
        assert_eq!(u.unwrap(1), 65537); // 0 lost
        assert_eq!(u.unwrap(0), 65536); // late
        assert_eq!(u.highest(), Some(65537));
        // Many cycles.
        let mut seq = 1u16;
        let mut expect = 65537i64;
        for _ in 0..300_000 {
            seq = seq.wrapping_add(1);
            expect += 1;
            assert_eq!(u.unwrap(seq), expect);
        }
    }

    #[test]
    fn seq_before_first_is_negative() {
        let mut u = SeqUnwrapper::new();
        assert_eq!(u.unwrap(2), 2);
        assert_eq!(u.unwrap(65535), -1);
        assert_eq!(u.highest(), Some(2));
    }

    #[test]
    fn timestamps_unwrap_and_follow_jumps() {
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(u32::MAX - 159), u32::MAX as i64 - 159);
        assert_eq!(u.unwrap(160), (1i64 << 32) + 160);
        assert_eq!(u.unwrap(0), 1i64 << 32); // reordered
        assert_eq!(u.unwrap(480), (1i64 << 32) + 480);
    }
}
