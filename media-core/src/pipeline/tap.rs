//! A pipeline's tap: a copy of each 20 ms frame it encodes (after mute), for a
//! reader on the call clock (a recording), so audio a transcoder has decoded
//! anyway is not decoded a second time; a G.711 relay decodes what it passes
//! on into one (a table lookup: no jitter buffer, no copy of the packet).
//!
//! Frames come when packets do; the reader takes one per tick. The tap keeps a
//! cushion of one frame against arrival jitter: it starts giving frames once
//! two wait (silence until then). A tick that finds it dry gives silence in
//! place of audio that is late, and that audio is skipped when it comes, so
//! the tap's delay stays what it was (late audio is lost, not played late:
//! two taps read on the same tick keep their alignment). Dry for more than
//! three ticks is a pause (hold, a sender's silence), not lateness: the tap
//! builds its cushion again from the next audio. More than four waiting (a
//! sender running fast, or a burst) drops the oldest.

use super::fifo::PcmFifo;

/// Frames waiting before the first is given (one is the cushion).
const PRIME: usize = 2;
/// Frames waiting at most; beyond, the oldest go.
const MAX: usize = 4;
/// Dry ticks in a row that are still lateness (their audio skipped when it
/// comes); more is a pause.
const LATE: u64 = 3;

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Tap {
    fifo: PcmFifo,
    frame: usize,
    primed: bool,
    /// Samples given as silence while dry (this many of what comes next are
    /// late, and skipped), and the dry ticks in a row.
    owed: usize,
    dry: u64,
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
            owed: 0,
            dry: 0,
            dropped: 0,
            starved: 0,
        }
    }

    /// Audio the pipeline passed on: a frame it encoded, or a relayed
    /// packet's payload decoded (any length).
    pub(crate) fn push(&mut self, pcm: &[i16]) {
        // What a dry tick stood in for is late: skipped, not played late.
        let skip = self.owed.min(pcm.len());
        self.owed -= skip;
        let pcm = &pcm[skip..];
        let lost = self.fifo.push(pcm);
        self.dropped += lost.div_ceil(self.frame) as u64;
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
            self.dry = 0;
            return true;
        }
        if self.primed {
            self.starved += 1;
            self.dry += 1;
            if self.dry > LATE {
                // A pause: start over from the next audio, with a cushion.
                self.primed = false;
                self.owed = 0;
                self.dry = 0;
                self.fifo.clear();
            } else {
                // Audio this tick should have had is late: a partial frame
                // is given up, the rest skipped when it comes.
                self.owed += self.frame - self.fifo.len().min(self.frame);
                self.fifo.clear();
            }
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
        for _ in 0..4 {
            assert!(t.pop_tick(&mut out));
            got.push(out[0]);
        }
        assert_eq!(got, [12, 13, 14, 15]);
        // Past a pause (more than three dry ticks): silence, and the cushion
        // is built again from the next audio.
        for _ in 0..4 {
            assert!(!t.pop_tick(&mut out));
        }
        assert_eq!(t.starved, 4);
        t.push(&frame(20));
        assert!(!t.pop_tick(&mut out));
        t.push(&frame(21));
        assert!(t.pop_tick(&mut out));
        assert_eq!(out, frame(20));
    }

    #[test]
    fn late_audio_is_skipped_so_the_delay_stays() {
        let mut t = Tap::new(4);
        let mut out = [0i16; 4];
        t.push(&frame(1));
        t.push(&frame(2));
        // Frame v is due on tick v + 2 (the cushion, and the frame waiting).
        let mut played = Vec::new();
        for v in 3..12 {
            // Frames 6, 7 and 8 come late, together with 9.
            if !(6..9).contains(&v) {
                if v == 9 {
                    for late in 6..9 {
                        t.push(&frame(late));
                    }
                }
                t.push(&frame(v));
            }
            let audio = t.pop_tick(&mut out);
            played.push(if audio { out[0] } else { 0 });
        }
        // The cushion covered 6's and 7's ticks; 8's found the tap dry
        // (silence in place of 6), 6 was skipped when it came, and from
        // there every frame plays on its own tick, as before.
        assert_eq!(played, [1, 2, 3, 4, 5, 0, 7, 8, 9]);
        assert_eq!(t.starved, 1);
    }
}
