//! A pipeline's tap: a copy of each 20 ms frame it encodes (after mute), for a
//! reader on the call clock (a recording), so audio a transcoder has decoded
//! anyway is not decoded a second time.
//!
//! Frames come when packets do; the reader takes one per tick. The tap keeps a
//! cushion of one frame against arrival jitter: it starts giving frames once
//! two wait (silence until then), gives silence when it runs dry and builds the
//! cushion again, and drops the oldest when more than four wait (a sender
//! running fast, or a burst), so its delay stays between one and three frames
//! and two taps read on the same tick stay within a frame or two of each
//! other.

use super::fifo::PcmFifo;

/// Frames waiting before the first is given (one is the cushion).
const PRIME: usize = 2;
/// Frames waiting at most; beyond, the oldest go.
const MAX: usize = 4;

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Tap {
    fifo: PcmFifo,
    frame: usize,
    primed: bool,
    /// Frames dropped because too many waited, and ticks given silence.
    pub(crate) dropped: u64,
    pub(crate) starved: u64,
}

impl Tap {
    pub(crate) fn new(frame: usize) -> Tap {
        Tap {
            fifo: PcmFifo::new(frame * (MAX + 1)),
            frame,
            primed: false,
            dropped: 0,
            starved: 0,
        }
    }

    /// A frame the pipeline encoded.
    pub(crate) fn push(&mut self, pcm: &[i16]) {
        self.fifo.push(&pcm[..self.frame.min(pcm.len())]);
        while self.fifo.len() > MAX * self.frame {
            let mut sink = [0i16; 64];
            let mut n = self.frame;
            while n > 0 {
                let k = n.min(sink.len());
                self.fifo.pop_into(&mut sink[..k]);
                n -= k;
            }
            self.dropped += 1;
        }
    }

    /// This tick's frame into `out` (a frame long): whether it is audio (else
    /// `out` is silence).
    pub(crate) fn pop_tick(&mut self, out: &mut [i16]) -> bool {
        let out = &mut out[..self.frame];
        if !self.primed && self.fifo.len() >= PRIME * self.frame {
            self.primed = true;
        }
        if self.primed && self.fifo.pop_into(out) {
            return true;
        }
        if self.primed {
            self.primed = false;
            self.starved += 1;
        }
        out.fill(0);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> [i16; 4] {
        [v; 4]
    }

    #[test]
    fn it_keeps_a_frame_of_cushion_and_stays_bounded() {
        let mut t = Tap::new(4);
        let mut out = [0i16; 4];
        // Nothing until two wait.
        t.push(&frame(1));
        assert!(!t.pop_tick(&mut out));
        assert_eq!(out, [0; 4]);
        t.push(&frame(2));
        assert!(t.pop_tick(&mut out));
        assert_eq!(out, frame(1));
        // One a tick, as they come: always one behind.
        for v in 3..10 {
            t.push(&frame(v));
            assert!(t.pop_tick(&mut out));
            assert_eq!(out, frame(v - 1));
        }
        // A burst of six: the oldest beyond four go.
        for v in 10..16 {
            t.push(&frame(v));
        }
        assert_eq!(t.dropped, 3);
        let mut got = Vec::new();
        while t.pop_tick(&mut out) {
            got.push(out[0]);
        }
        assert_eq!(got, [12, 13, 14, 15]);
        // Dry: silence, counted once, and the cushion is built again.
        assert_eq!(t.starved, 1);
        t.push(&frame(20));
        assert!(!t.pop_tick(&mut out));
        t.push(&frame(21));
        assert!(t.pop_tick(&mut out));
        assert_eq!(out, frame(20));
    }
}
