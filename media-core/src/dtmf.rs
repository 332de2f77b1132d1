//! DTMF: RFC 4733 telephone-events (parse, generate, receive) and in-band tones.

use crate::analysis::{ToneGenerator, goertzel_level_db};
use crate::rtp::RtpTimestamp;
use crate::time::{ClockRate, Millis};

/// A DTMF digit: `0-9`, `*`, `#`, `A-D` (RFC 4733 section 3.2 events 0-15).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Digit(u8);

impl Digit {
    /// The digit for a character, case-insensitive.
    pub fn from_char(c: char) -> Option<Digit> {
        let e = match c.to_ascii_uppercase() {
            d @ '0'..='9' => d as u8 - b'0',
            '*' => 10,
            '#' => 11,
            d @ 'A'..='D' => d as u8 - b'A' + 12,
            _ => return None,
        };
        Some(Digit(e))
    }

    /// The digit for an event code (0-15).
    pub fn from_event(e: u8) -> Option<Digit> {
        (e < 16).then_some(Digit(e))
    }

    /// The RFC 4733 event code.
    pub fn event(self) -> u8 {
        self.0
    }

    /// The character.
    pub fn as_char(self) -> char {
        b"0123456789*#ABCD"[self.0 as usize] as char
    }

    /// The (row, column) frequencies of the in-band tone (ITU-T Q.23).
    pub fn frequencies(self) -> (f64, f64) {
        const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
        const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
        // Keypad position of each event code: (row, col).
        const POS: [(usize, usize); 16] = [
            (3, 1),
            (0, 0),
            (0, 1),
            (0, 2),
            (1, 0),
            (1, 1),
            (1, 2),
            (2, 0),
            (2, 1),
            (2, 2),
            (3, 0),
            (3, 2),
            (0, 3),
            (1, 3),
            (2, 3),
            (3, 3),
        ];
        let (r, c) = POS[self.0 as usize];
        (ROWS[r], COLS[c])
    }
}

/// Errors in telephone-event payloads (peer) or DTMF requests (caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    /// Fewer than 4 bytes.
    #[error("telephone-event payload of {0} bytes, at least 4 needed")]
    Truncated(usize),
    /// A character that is not a DTMF digit.
    #[error("{0:?} is not a DTMF digit")]
    BadDigit(char),
    /// Too many digits queued.
    #[error("DTMF queue full")]
    QueueFull,
}

/// One RFC 4733 telephone-event block (section 2.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TelephoneEvent {
    /// Event code (0-15 DTMF, 16 flash, ...).
    pub event: u8,
    /// E bit: the last packets of the event.
    pub end: bool,
    /// Power level in -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far, in RTP clock ticks, from the event's timestamp.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Wire length of one block.
    pub const LEN: usize = 4;

    /// Parses the first block of a payload.
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        if payload.len() < 4 {
            return Err(DtmfError::Truncated(payload.len()));
        }
        Ok(TelephoneEvent {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3f,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    /// Writes the block into `out[..4]`.
    pub fn write(&self, out: &mut [u8; 4]) {
        out[0] = self.event;
        out[1] = (self.end as u8) << 7 | (self.volume & 0x3f);
        out[2..4].copy_from_slice(&self.duration.to_be_bytes());
    }

    /// The DTMF digit, if the event is one.
    pub fn digit(&self) -> Option<Digit> {
        Digit::from_event(self.event)
    }
}

/// A telephone-event packet to send: payload block plus the RTP fields it needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EventPacket {
    /// Marker: set on the first packet of an event (RFC 4733 section 2.5.1.1).
    pub marker: bool,
    /// The event's start timestamp, the same for all its packets.
    pub timestamp: RtpTimestamp,
    /// The block.
    pub event: TelephoneEvent,
}

const QUEUE: usize = 32;

/// Generates RFC 4733 packets for queued digits, one call per packetization tick:
/// a start packet with the marker, updates with growing duration, and the final
/// packet with the E bit sent three times (section 2.5.1.4). Then a gap before
/// the next digit. Allocation-free; at most 32 digits wait.
#[derive(Clone, Debug)]
pub struct DtmfSender {
    clock: ClockRate,
    volume: u8,
    queue: [(Digit, u16); QUEUE],
    head: usize,
    len: usize,
    current: Option<Current>,
    gap_left: u32,
    gap: u32,
}

#[derive(Clone, Copy, Debug)]
struct Current {
    digit: Digit,
    start: RtpTimestamp,
    elapsed: u32,
    total: u32,
    ends_sent: u8,
}

impl DtmfSender {
    /// A sender on an RTP clock, at `volume` -dBm0 (10 is typical).
    pub fn new(clock: ClockRate, volume: u8) -> Self {
        DtmfSender {
            clock,
            volume: volume.min(63),
            queue: [(Digit(0), 0); QUEUE],
            head: 0,
            len: 0,
            current: None,
            gap_left: 0,
            gap: clock.ticks_in(Millis(60)),
        }
    }

    /// Queues `digits`, each lasting `duration` (clamped to 40-5000 ms). Nothing is
    /// queued if any character is not a digit or the queue would overflow.
    pub fn enqueue(&mut self, digits: &str, duration: Millis) -> Result<(), DtmfError> {
        let mut n = 0;
        for c in digits.chars() {
            Digit::from_char(c).ok_or(DtmfError::BadDigit(c))?;
            n += 1;
        }
        if self.len + n > QUEUE {
            return Err(DtmfError::QueueFull);
        }
        let ms = duration.0.clamp(40, 5000);
        // Long events are split into segments below the 16-bit duration limit.
        let ticks = self.clock.ticks_in(Millis(ms)).min(u16::MAX as u32) as u16;
        for c in digits.chars() {
            let d = Digit::from_char(c).ok_or(DtmfError::BadDigit(c))?;
            self.queue[(self.head + self.len) % QUEUE] = (d, ticks);
            self.len += 1;
        }
        Ok(())
    }

    /// Whether an event is being sent (the audio stream should pause).
    pub fn is_active(&self) -> bool {
        self.current.is_some()
    }

    /// Whether nothing is queued or being sent.
    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.len == 0
    }

    /// One packetization tick of `tick` ticks at media timestamp `now_ts`. Returns
    /// the packets to send this tick (up to 3 on the last one), or none when idle
    /// or in the inter-digit gap (send audio then).
    pub fn tick(&mut self, now_ts: RtpTimestamp, tick: u32, out: &mut [EventPacket; 3]) -> usize {
        if self.current.is_none() {
            if self.gap_left > 0 {
                self.gap_left = self.gap_left.saturating_sub(tick);
                return 0;
            }
            if self.len == 0 {
                return 0;
            }
            let (digit, total) = self.queue[self.head];
            self.head = (self.head + 1) % QUEUE;
            self.len -= 1;
            self.current = Some(Current {
                digit,
                start: now_ts,
                elapsed: 0,
                total: total as u32,
                ends_sent: 0,
            });
        }
        let Some(cur) = self.current.as_mut() else {
            return 0;
        };
        let first = cur.elapsed == 0;
        cur.elapsed = (cur.elapsed + tick).min(cur.total);
        let end = cur.elapsed >= cur.total;
        let packet = EventPacket {
            marker: first,
            timestamp: cur.start,
            event: TelephoneEvent {
                event: cur.digit.event(),
                end,
                volume: self.volume,
                duration: cur.elapsed as u16,
            },
        };
        if !end {
            out[0] = packet;
            return 1;
        }
        // The end packet, three times.
        cur.ends_sent = 3;
        out.fill(packet);
        self.current = None;
        self.gap_left = self.gap;
        3
    }
}

/// Turns received telephone-event packets into one digit per event, however many
/// updates and end retransmissions arrive (RFC 4733 section 2.5.2). Reports on the
/// first packet of an event so the far end learns of it as early as possible.
#[derive(Clone, Debug, Default)]
pub struct DtmfReceiver {
    last: Option<(u32, u8)>, // (timestamp, event) of the current or last event
}

impl DtmfReceiver {
    /// A receiver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one packet's block at RTP `timestamp`; returns the digit if this
    /// packet starts a new DTMF event.
    pub fn handle(&mut self, timestamp: RtpTimestamp, ev: &TelephoneEvent) -> Option<Digit> {
        let key = (timestamp.0, ev.event);
        if self.last == Some(key) {
            return None;
        }
        self.last = Some(key);
        ev.digit()
    }
}

/// Generates in-band DTMF tones (for trunks without telephone-event).
#[derive(Clone, Debug)]
pub struct InbandTone {
    tone: ToneGenerator,
}

impl InbandTone {
    /// The tone pair for `digit` at `rate`, each component at -7 dBFS-ish.
    pub fn new(digit: Digit, rate: u32) -> Self {
        let (lo, hi) = digit.frequencies();
        InbandTone {
            tone: ToneGenerator::new(rate, &[(lo, 7000.0), (hi, 9000.0)]),
        }
    }

    /// Writes the next samples.
    pub fn fill(&mut self, out: &mut [i16]) {
        self.tone.fill(out);
    }
}

/// Detects an in-band DTMF digit in a block of at least 20 ms: the strongest row and
/// column tones must both stand 10 dB above the other candidates of their group and
/// above -40 dBFS.
pub fn detect_inband(pcm: &[i16], rate: u32) -> Option<Digit> {
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    let pick = |freqs: &[f64; 4]| {
        let levels = freqs.map(|f| goertzel_level_db(pcm, rate, f));
        let (i, &best) = levels
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        let clear = levels
            .iter()
            .enumerate()
            .all(|(j, &l)| j == i || l < best - 10.0);
        (best > -40.0 && clear).then_some(i)
    };
    let (r, c) = (pick(&ROWS)?, pick(&COLS)?);
    (0u8..16)
        .map(Digit)
        .find(|d| d.frequencies() == (ROWS[r], COLS[c]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcap::udp_datagrams;
    use crate::rtp::RtpHeader;
    use crate::testdata;

    #[test]
    fn digits_map_both_ways() {
        for (i, c) in "0123456789*#ABCD".chars().enumerate() {
            let d = Digit::from_char(c).unwrap();
            assert_eq!(d.event() as usize, i);
            assert_eq!(d.as_char(), c);
        }
        assert_eq!(Digit::from_char('x'), None);
        assert_eq!(Digit::from_event(16), None);
        assert_eq!(
            Digit::from_char('5').unwrap().frequencies(),
            (770.0, 1336.0)
        );
        assert_eq!(
            Digit::from_char('0').unwrap().frequencies(),
            (941.0, 1336.0)
        );
    }

    #[test]
    fn event_block_round_trips() {
        let ev = TelephoneEvent {
            event: 11,
            end: true,
            volume: 10,
            duration: 1600,
        };
        let mut b = [0u8; 4];
        ev.write(&mut b);
        assert_eq!(b, [11, 0x8a, 0x06, 0x40]);
        assert_eq!(TelephoneEvent::parse(&b).unwrap(), ev);
        assert_eq!(TelephoneEvent::parse(&b[..3]), Err(DtmfError::Truncated(3)));
    }

    #[test]
    fn sipp_captures_give_their_digit() {
        for (file, expect) in [
            ("0", '0'),
            ("1", '1'),
            ("2", '2'),
            ("3", '3'),
            ("4", '4'),
            ("5", '5'),
            ("6", '6'),
            ("7", '7'),
            ("8", '8'),
            ("9", '9'),
            ("star", '*'),
            ("pound", '#'),
        ] {
            let pcap = testdata::read(&format!("rtp-pcaps/dtmf_2833_{file}.pcap"));
            let mut rx = DtmfReceiver::new();
            let mut digits = Vec::new();
            let mut saw_end = false;
            for d in udp_datagrams(&pcap).unwrap() {
                let h = RtpHeader::parse(d.payload).unwrap();
                assert_eq!(h.payload_type.value(), 101);
                let ev = TelephoneEvent::parse(&d.payload[h.payload_range()]).unwrap();
                saw_end |= ev.end;
                digits.extend(rx.handle(h.timestamp, &ev).map(|d| d.as_char()));
            }
            assert_eq!(digits, vec![expect], "{file}");
            assert!(saw_end, "{file}: end packet");
        }
    }

    #[test]
    fn sender_emits_start_updates_and_three_ends() {
        let mut tx = DtmfSender::new(ClockRate(8000), 10);
        tx.enqueue("1#", Millis(100)).unwrap();
        let mut out = [EventPacket {
            marker: false,
            timestamp: RtpTimestamp(0),
            event: TelephoneEvent {
                event: 0,
                end: false,
                volume: 0,
                duration: 0,
            },
        }; 3];
        let mut ts = RtpTimestamp(1000);
        let mut sent = Vec::new();
        for _ in 0..20 {
            let n = tx.tick(ts, 160, &mut out);
            sent.extend_from_slice(&out[..n]);
            ts = ts.wrapping_add(160);
        }
        // Digit 1: 100 ms = 5 ticks: 4 updates + end x3.
        let one: Vec<_> = sent.iter().filter(|p| p.event.event == 1).collect();
        assert_eq!(one.len(), 7);
        assert!(one[0].marker && one[1..].iter().all(|p| !p.marker));
        assert!(one.iter().all(|p| p.timestamp == RtpTimestamp(1000)));
        assert_eq!(
            one.iter().map(|p| p.event.duration).collect::<Vec<_>>(),
            vec![160, 320, 480, 640, 800, 800, 800]
        );
        assert_eq!(one.iter().filter(|p| p.event.end).count(), 3);
        // '#' follows after the 60 ms gap, with a later timestamp.
        let pound: Vec<_> = sent.iter().filter(|p| p.event.event == 11).collect();
        assert_eq!(pound.len(), 7);
        assert_eq!(pound[0].timestamp, RtpTimestamp(1000 + 160 * 8));
        assert!(tx.is_idle());
        // And a receiver sees exactly the two digits.
        let mut rx = DtmfReceiver::new();
        let got: String = sent
            .iter()
            .filter_map(|p| rx.handle(p.timestamp, &p.event))
            .map(|d| d.as_char())
            .collect();
        assert_eq!(got, "1#");
    }

    #[test]
    fn sender_rejects_bad_digits_and_overflow_atomically() {
        let mut tx = DtmfSender::new(ClockRate(48000), 10);
        assert_eq!(
            tx.enqueue("12x", Millis(100)),
            Err(DtmfError::BadDigit('x'))
        );
        assert!(tx.is_idle());
        tx.enqueue(&"1".repeat(32), Millis(100)).unwrap();
        assert_eq!(tx.enqueue("2", Millis(100)), Err(DtmfError::QueueFull));
    }

    #[test]
    fn inband_tones_are_detected() {
        for c in "0123456789*#ABCD".chars() {
            let d = Digit::from_char(c).unwrap();
            let mut pcm = vec![0i16; 320];
            InbandTone::new(d, 8000).fill(&mut pcm);
            assert_eq!(detect_inband(&pcm, 8000), Some(d), "{c}");
        }
        let speechless = crate::analysis::sine(8000, 1000.0, 8000.0, 320);
        assert_eq!(detect_inband(&speechless, 8000), None);
    }
}
