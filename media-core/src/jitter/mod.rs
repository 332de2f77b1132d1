//! Adaptive jitter buffer (sans-IO, every call takes `now`).
//!
//! Packets go in with [`JitterBuffer::insert`]. Once per output frame the caller
//! calls [`JitterBuffer::tick`], which says how to fill the decoder's sync buffer
//! ([`Step`]: decode a packet, conceal, recover with FEC from the next packet, or
//! play silence) and whether to time-stretch this frame ([`Stretch`]); the caller
//! then reports how much media the frame consumed with [`JitterBuffer::consume`].
//! [`Playout`] does all of that around a decoder.
//!
//! **When to tick.** The buffer runs its own playout clock: [`JitterBuffer::poll_timeout`]
//! says when the next frame is due, which is when its first sample reaches the
//! target delay (or, for a frame that needs a packet not yet decoded, when that
//! packet does), steered by at most 2 ms per frame (more in silence); or later when
//! the media it needs is late and still worth waiting for. A caller that
//! sends frames into the network (the SBC) ticks then, so delay moves in
//! sub-millisecond steps with no audio touched. A caller with a fixed clock (a
//! sound card) may tick every frame regardless; the buffer then steers by
//! time-stretching instead.
//!
//! **Target delay** (the NetEQ approach): each packet's transit time is compared
//! with the transit floor (the smallest of the last 2 s, projected along the
//! sender's estimated clock skew), and the target is an upper quantile of those
//! relative delays, from a histogram with exponential forgetting. Isolated delay
//! spikes stay out of the histogram with their aftermath (the burst a stall
//! releases, or a sender pacing it off); spikes recurring within 10 s raise the
//! target to cover them.
//!
//! **Playout control.** Above target it accelerates (drops one pitch period, or
//! silence), below it expands (repeats one); between talkspurts it moves freely by
//! playing more or less silence. Media that has not arrived is waited for until its
//! delay would pass the maximum; then it is given up (concealed and skipped; if it
//! still arrives it is late). A packet missing
//! while a later one is already here is lost, unless the stream has been
//! reordering lately, in which case it gets the same wait; on a fixed clock,
//! where the wait is heard, no longer than its own media lasts. Concealment
//! played while waiting for what turns out lost, or for a DTX silence, stands
//! in for it.
//!
//! **Resynchronisation.** A new SSRC, a timestamp jump of more than 10 s, or a
//! sender whose timeline moved back behind the playout position (it paused
//! without moving its timestamps on, or restarted its clock backwards: a run of
//! late packets, each the newest yet, arriving at the pace of their media)
//! restarts the buffer on the new timeline. The same SSRC keeps its delay
//! statistics: same sender, same path.

mod estimator;
mod playout;
mod stretch;

pub use playout::Playout;

use std::collections::VecDeque;

use bytes::Bytes;

use crate::rtp::{RtpTimestamp, SeqNo, SeqUnwrapper, Ssrc, TimestampUnwrapper};
use crate::time::{ClockRate, Instant, Millis};
use estimator::DelayEstimator;

/// Jitter buffer settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterConfig {
    /// RTP clock of the stream.
    pub clock: ClockRate,
    /// Output frame duration (one tick).
    pub frame: Millis,
    /// Lowest target delay.
    pub min_delay: Millis,
    /// Highest target delay.
    pub max_delay: Millis,
    /// Most packets held, whatever arrives.
    pub max_packets: usize,
    /// Most media held (packets beyond are discarded, oldest first).
    pub max_buffered: Millis,
    /// Quantile of the relative delay the target covers.
    pub quantile: f64,
    /// Per-packet forget factor of the delay histogram.
    pub forget: f64,
    /// The caller ticks on its own fixed clock (a sound card, a paced consumer)
    /// rather than when [`JitterBuffer::poll_timeout`] says. The buffer then steers
    /// by time-stretching alone, with half a frame more room above the target
    /// (frames need not line up with packets).
    pub external_clock: bool,
}

impl JitterConfig {
    /// Defaults for a stream on `clock`: 20 ms frames, target 20-200 ms.
    pub fn new(clock: ClockRate) -> Self {
        JitterConfig {
            clock,
            frame: Millis(20),
            min_delay: Millis(20),
            max_delay: Millis(200),
            max_packets: 128,
            max_buffered: Millis(1000),
            quantile: 0.997,
            forget: 0.998,
            external_clock: false,
        }
    }
}

/// One received packet, as the jitter buffer needs it.
#[derive(Clone, Debug)]
pub struct JitterPacket {
    /// RTP sequence number.
    pub sequence_number: SeqNo,
    /// RTP timestamp.
    pub timestamp: RtpTimestamp,
    /// SSRC (a change resynchronises).
    pub ssrc: Ssrc,
    /// Marker bit (talkspurt start).
    pub marker: bool,
    /// Media duration in clock ticks (from the codec).
    pub duration: u32,
    /// Whether the payload carries FEC for the packet before it.
    pub fec: bool,
    /// The payload: a slice of the receive buffer (not copied).
    pub payload: Bytes,
}

/// What [`JitterBuffer::insert`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Queued for playout.
    Queued,
    /// Already held or already played.
    Duplicate,
    /// Its playout time has passed: dropped.
    Late,
    /// New source, a timestamp jump, or the sender's timeline moved back: the
    /// buffer restarted on this packet (and, for the last, the late ones that
    /// showed it).
    Resync,
    /// Unusable (zero duration): dropped.
    Invalid,
}

/// How to produce the next piece of audio for the sync buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Decode this packet (`ticks` of media).
    Decode {
        /// Payload to decode.
        payload: Bytes,
        /// Its duration.
        ticks: u32,
    },
    /// Conceal `ticks` of lost or late media (PLC).
    Conceal {
        /// Duration.
        ticks: u32,
    },
    /// Rebuild `ticks` of lost media from the FEC data in the next packet.
    RecoverFec {
        /// The next packet's payload.
        payload: Bytes,
        /// Duration of the lost media.
        ticks: u32,
    },
    /// Silence (or comfort noise): before the stream starts, between talkspurts.
    Silence {
        /// Duration.
        ticks: u32,
    },
}

/// Time-stretch request for the frame about to be played.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stretch {
    /// Play the frame as is.
    None,
    /// Play faster: consume up to `max_ticks` more media than a frame.
    Accelerate {
        /// Most extra media to consume.
        max_ticks: u32,
    },
    /// Play slower: consume up to `max_ticks` less media than a frame.
    Expand {
        /// Most media to save.
        max_ticks: u32,
    },
}

const MAX_STEPS: usize = 8;

/// The plan for one output frame.
#[derive(Clone, Debug)]
pub struct Tick {
    steps: [Option<Step>; MAX_STEPS],
    /// Stretch request for this frame.
    pub stretch: Stretch,
}

impl Tick {
    /// Steps to execute, in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().flatten()
    }

    fn push(&mut self, s: Step) -> bool {
        match self.steps.iter_mut().find(|x| x.is_none()) {
            Some(slot) => {
                *slot = Some(s);
                true
            }
            None => false,
        }
    }
}

/// Jitter buffer counters and gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JitterStats {
    /// Playout delay of the sample played last (ms).
    pub current_delay_ms: f64,
    /// Target delay (ms).
    pub target_delay_ms: f64,
    /// Packets queued.
    pub received: u64,
    /// Packets dropped because their playout time had passed.
    pub late: u64,
    /// Packets never received (sequence gaps that were concealed).
    pub lost: u64,
    /// Packets discarded to keep within the memory bound.
    pub discarded: u64,
    /// Packets received after a later one.
    pub reordered: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Media concealed for lost or late packets (ticks).
    pub concealed_ticks: u64,
    /// Concealment played while waiting for a stalled stream, counted once the
    /// awaited media arrives (ticks).
    pub underrun_ticks: u64,
    /// Concealment played while waiting, that turned out to be a silence the
    /// sender meant (DTX) (ticks).
    pub dtx_wait_ticks: u64,
    /// Frames rebuilt from FEC.
    pub fec_recovered: u64,
    /// Frames played faster / slower.
    pub accelerated: u64,
    /// Frames played slower.
    pub expanded: u64,
    /// Media removed (accelerate) and added (expand), ticks.
    pub stretched_out_ticks: u64,
    /// Media added by expansion (ticks).
    pub stretched_in_ticks: u64,
    /// Resynchronisations (new SSRC, timestamp jumps, a timeline moved back).
    pub resyncs: u64,
}

#[derive(Clone, Debug)]
struct Stored {
    seq: i64,
    ts: i64,
    ticks: u32,
    fec: bool,
    payload: Bytes,
}

/// A run of audio in the sync buffer: media starting at `start`, or audio that
/// stands for no media (concealment while waiting, inserted silence).
#[derive(Clone, Copy, Debug)]
struct Segment {
    ticks: u32,
    start: Option<i64>,
}

const MAX_SEGMENTS: usize = 32;
/// Timestamp jumps beyond this (same SSRC, no sequence gap) resynchronise.
const RESYNC_JUMP: Millis = Millis(10_000);
/// Packets further behind the newest than this are a restart candidate (RFC 3550
/// A.1's MAX_MISORDER).
const MAX_MISORDER: i64 = 100;
/// Isolated delay peaks above `target + PEAK_MARGIN` stay out of the histogram.
const PEAK_MARGIN_US: i64 = 60_000;
/// Peaks recurring within this window raise the target to cover them.
const PEAK_WINDOW_US: u64 = 10_000_000;
/// A peak's aftermath: packets this close behind the one before are its burst.
const PEAK_BURST_US: u64 = 5_000;
/// A sender pacing a stall's backlog off sends each packet no later than the
/// one before, give or take this much network jitter, up to this long.
const PEAK_PACED_SLACK_US: i64 = 5_000;
const PEAK_PACED_MAX_US: u64 = 3_000_000;
/// Most late packets kept while telling a sender whose timeline moved back
/// (it paused without advancing its timestamps, or restarted its clock) from
/// a stall's backlog.
const BEHIND_MAX: usize = 8;
/// Least media such a run spans before the buffer restarts on it (frames).
const BEHIND_FRAMES: i64 = 2;

/// The delay peak being followed: a stall's first late packet and what it
/// releases after it.
#[derive(Clone, Copy, Debug)]
struct PeakEpisode {
    start: Instant,
    /// Arrival and relative delay of its latest packet.
    last: Instant,
    last_rel: i64,
}

/// The adaptive jitter buffer. See the module docs.
#[derive(Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    packets: VecDeque<Stored>,
    ssrc: Option<Ssrc>,
    seq: SeqUnwrapper,
    ts: TimestampUnwrapper,
    estimator: DelayEstimator,
    /// (arrival, height us) of recent delay peaks.
    peaks: VecDeque<(Instant, i64)>,
    /// The peak whose aftermath is arriving, if any.
    peak: Option<PeakEpisode>,
    playing: bool,
    /// Media position after everything handed out.
    pos: i64,
    next_seq: i64,
    highest_seq: Option<i64>,
    /// A packet far behind the stream, kept to see whether the next one follows it
    /// (RFC 3550 A.1: a restarted sender).
    restart_probe: Option<u16>,
    /// Late packets in a row, each the newest yet (arrival, extended sequence
    /// and timestamp, the packet): whether the sender's timeline has moved
    /// back behind the playout position. Kept to be played if it has.
    behind: VecDeque<(Instant, i64, i64, JitterPacket)>,
    segments: VecDeque<Segment>,
    /// Waiting concealment not yet classified as a stall or a DTX silence.
    pending_wait: u64,
    /// Media given up (concealed and skipped) since the last packet played: a loss
    /// or late media, unless the sender turns out to have paused (DTX).
    pending_giveup: u64,
    /// When the frame after the last tick is due (the buffer's own clock).
    next_due: Option<Instant>,
    last_tick: Option<Instant>,
    /// The time the last tick stands for on the buffer's own clock: when it was
    /// due, if the driver woke within half a frame of that (a runtime timer rounds
    /// up, 1-2 ms in tokio), else when it woke. The next frame is due a period
    /// after it, so a driver's lateness never accumulates into a slow clock.
    clock_at: Option<Instant>,
    /// Recent fraction of packets arriving after a later one (EWMA).
    reorder_rate: f64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer with `cfg`.
    pub fn new(cfg: JitterConfig) -> Self {
        let cfg = JitterConfig {
            max_packets: cfg.max_packets.clamp(4, 4096),
            min_delay: cfg.min_delay.min(cfg.max_delay),
            ..cfg
        };
        JitterBuffer {
            packets: VecDeque::with_capacity(cfg.max_packets),
            ssrc: None,
            seq: SeqUnwrapper::new(),
            ts: TimestampUnwrapper::new(),
            estimator: DelayEstimator::new(cfg.quantile, cfg.forget),
            peaks: VecDeque::with_capacity(16),
            peak: None,
            playing: false,
            pos: 0,
            next_seq: 0,
            highest_seq: None,
            restart_probe: None,
            behind: VecDeque::with_capacity(BEHIND_MAX),
            segments: VecDeque::with_capacity(MAX_SEGMENTS),
            pending_wait: 0,
            pending_giveup: 0,
            next_due: None,
            last_tick: None,
            clock_at: None,
            reorder_rate: 0.0,
            stats: JitterStats::default(),
            cfg,
        }
    }

    /// The settings.
    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packets are held.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Media held in packets (sum of their durations, ticks): at most
    /// `max_buffered`.
    pub fn held_ticks(&self) -> i64 {
        self.packets.iter().map(|p| p.ticks as i64).sum()
    }

    /// Media ticks in the sync buffer (handed out, not yet consumed).
    pub fn buffered_ticks(&self) -> u32 {
        self.segments.iter().map(|s| s.ticks).sum()
    }

    fn us(&self, ticks: i64) -> i64 {
        ticks * 1_000_000 / self.cfg.clock.0 as i64
    }

    fn ticks(&self, us: i64) -> i64 {
        us * self.cfg.clock.0 as i64 / 1_000_000
    }

    /// Target delay in microseconds.
    pub fn target_us(&self) -> i64 {
        let lo = self.cfg.min_delay.0 as i64 * 1000;
        let hi = self.cfg.max_delay.0 as i64 * 1000;
        let mut t = self.estimator.quantile_us().unwrap_or(lo);
        // Recurring peaks: cover the largest of the last window.
        if self.peaks.len() >= 3 {
            t = t.max(self.peaks.iter().map(|&(_, h)| h).max().unwrap_or(0));
        }
        t.clamp(lo, hi)
    }

    /// Takes a received packet.
    pub fn insert(&mut self, now: Instant, p: JitterPacket) -> InsertOutcome {
        if p.duration == 0 {
            return InsertOutcome::Invalid;
        }
        let mut outcome = InsertOutcome::Queued;
        if self.ssrc != Some(p.ssrc) {
            outcome = self.resync(Some(p.ssrc));
        }
        // A large timestamp jump within the same source (no sequence gap to explain
        // it) or a sequence jump means the sender restarted its clock: resync.
        if let Some(h) = self.highest_seq {
            let seq = self.seq.peek(p.sequence_number.0);
            let ts = self.ts.peek(p.timestamp.0);
            let jump = self.us(ts - self.pos).abs() > RESYNC_JUMP.0 as i64 * 1000;
            if (seq - h).abs() > 1000 || (self.playing && jump && (seq - h).abs() <= 2) {
                outcome = self.resync(Some(p.ssrc));
            } else if h - seq > MAX_MISORDER {
                // Far behind: late, unless the next packet follows this one, which
                // says the sender started over (a looping file, a restarted
                // process keeping its SSRC).
                let n = p.sequence_number.0;
                if self.restart_probe == Some(n.wrapping_sub(1)) {
                    outcome = self.resync(Some(p.ssrc));
                } else {
                    self.restart_probe = Some(n);
                }
            }
        }
        let seq = self.seq.unwrap(p.sequence_number.0);
        let ts = self.ts.unwrap(p.timestamp.0);
        // Reordering is learned from every packet, late ones included (they are
        // the evidence that waiting for a gap would have paid).
        let reordered =
            self.highest_seq.is_some_and(|h| seq < h) && !self.packets.iter().any(|s| s.seq == seq);
        self.stats.reordered += reordered as u64;
        self.reorder_rate += (f64::from(u8::from(reordered)) - self.reorder_rate) / 500.0;
        if self.playing && (seq < self.next_seq || ts + p.duration as i64 <= self.pos) {
            if self.packets.iter().any(|s| s.seq == seq) || seq < self.next_seq - 64 {
                self.stats.duplicates += 1;
                return InsertOutcome::Duplicate;
            }
            self.stats.late += 1;
            self.observe(now, ts);
            return self.late_run(now, seq, ts, p);
        }
        let at = self.packets.partition_point(|s| s.seq < seq);
        if self.packets.get(at).is_some_and(|s| s.seq == seq) {
            self.stats.duplicates += 1;
            return InsertOutcome::Duplicate;
        }
        if self.highest_seq.is_none_or(|h| seq > h) {
            self.behind.clear(); // the newest packet is on time
        }
        self.highest_seq = Some(self.highest_seq.map_or(seq, |h| h.max(seq)));
        self.observe(now, ts);
        if self.packets.len() == self.cfg.max_packets {
            self.packets.pop_front();
            self.stats.discarded += 1;
        }
        let at = self.packets.partition_point(|s| s.seq < seq);
        self.packets.insert(
            at,
            Stored {
                seq,
                ts,
                ticks: p.duration,
                fec: p.fec,
                payload: p.payload,
            },
        );
        self.enforce_duration_bound();
        self.stats.received += 1;
        outcome
    }

    /// A late packet (`seq`, `ts` extended). Late packets that are each the
    /// newest yet and arrive at the pace of their media mean the sender's
    /// timeline has moved back behind the playout position: it paused without
    /// moving its timestamps on (after a mute, some DTX), or restarted its
    /// clock backwards by less than [`RESYNC_JUMP`]. Every later packet would
    /// be late too, for good. Once such a run spans [`BEHIND_FRAMES`] frames
    /// of media and arrived over at least half that time, the buffer restarts
    /// on it, run included. A stall's backlog is late too, but comes in a
    /// burst (far faster than its media) and is followed by packets on time.
    fn late_run(&mut self, now: Instant, seq: i64, ts: i64, p: JitterPacket) -> InsertOutcome {
        let newest = match self.behind.back() {
            Some(&(_, last, ..)) => seq > last,
            None => self.highest_seq.is_none_or(|h| seq > h),
        };
        if !newest {
            return InsertOutcome::Late;
        }
        if self.behind.len() == BEHIND_MAX {
            self.behind.pop_front();
        }
        self.behind.push_back((now, seq, ts, p));
        let Some(&(first_at, _, first_ts, _)) = self.behind.front() else {
            return InsertOutcome::Late;
        };
        let media = self.us(ts - first_ts);
        let took = now.saturating_duration_since(first_at).as_micros() as i64;
        let frame = self.us(self.cfg.clock.ticks_in(self.cfg.frame) as i64);
        if self.behind.len() < 3 || media < BEHIND_FRAMES * frame || 2 * took < media {
            return InsertOutcome::Late;
        }
        // The sender moved back: start over on the run (no longer late).
        let mut run = std::mem::take(&mut self.behind);
        let ssrc = self.ssrc;
        self.resync(ssrc);
        self.stats.late = self.stats.late.saturating_sub(run.len() as u64);
        for (at, _, _, p) in run.drain(..) {
            self.insert(at, p);
        }
        self.behind = run; // empty, its room kept
        InsertOutcome::Resync
    }

    /// Feeds the delay estimator; isolated peaks are recorded apart.
    fn observe(&mut self, now: Instant, ts: i64) {
        let transit = now.as_micros() as i64 - self.us(ts);
        let floor = self.estimator.floor(now).unwrap_or(transit);
        let rel = (transit - floor).max(0);
        while let Some(&(t, _)) = self.peaks.front() {
            if now.saturating_duration_since(t).as_micros() as u64 > PEAK_WINDOW_US {
                self.peaks.pop_front();
            } else {
                break;
            }
        }
        let quantile = self.estimator.quantile_us();
        let q = quantile.unwrap_or(0);
        // What a stall releases belongs to its peak, whatever its delay: the burst
        // right on the heels of the late packet, or a sender pacing the backlog off
        // (an upstream jitter buffer steering its clock, an echo that restamps):
        // later than usual, each no later than the one before. In the histogram
        // that tail held the target up for 30 s (quantile 0.997, forget 0.998).
        let aftermath = self.peak.is_some_and(|e| {
            let gap = now.saturating_duration_since(e.last).as_micros() as u64;
            gap <= PEAK_BURST_US
                || (rel > q
                    && rel <= e.last_rel + PEAK_PACED_SLACK_US
                    && now.saturating_duration_since(e.start).as_micros() as u64
                        <= PEAK_PACED_MAX_US)
        });
        let peak = quantile.is_some_and(|q| rel > q + PEAK_MARGIN_US.max(q));
        if aftermath || peak {
            match self.peak.as_mut() {
                Some(e) if aftermath => (e.last, e.last_rel) = (now, rel),
                _ => {
                    self.peak = Some(PeakEpisode {
                        start: now,
                        last: now,
                        last_rel: rel,
                    })
                }
            }
            // One event per episode, and per 500 ms: a stall delays packets together.
            match self.peaks.back_mut() {
                Some((t, h))
                    if aftermath || now.saturating_duration_since(*t).as_millis() < 500 =>
                {
                    *h = (*h).max(rel)
                }
                _ => {
                    if self.peaks.len() == 16 {
                        self.peaks.pop_front();
                    }
                    self.peaks.push_back((now, rel));
                }
            }
            // Keep the floor current without polluting the histogram.
            self.estimator.observe_floor_only(now, transit);
            return;
        }
        self.peak = None;
        self.estimator.observe(now, transit);
    }

    /// Keeps the media held within `max_buffered` (summed packet durations, so
    /// nonsense timestamps cannot defeat it), dropping the oldest first.
    fn enforce_duration_bound(&mut self) {
        let max = self.cfg.clock.ticks_in(self.cfg.max_buffered) as i64;
        while self.held_ticks() > max {
            self.packets.pop_front();
            self.stats.discarded += 1;
        }
    }

    fn resync(&mut self, ssrc: Option<Ssrc>) -> InsertOutcome {
        let was = self.ssrc.is_some();
        let same = was && self.ssrc == ssrc;
        self.ssrc = ssrc;
        self.stats.discarded += self.packets.len() as u64;
        self.packets.clear();
        self.pending_wait = 0;
        self.seq.reset();
        self.ts.reset();
        if same {
            // The same sender moved its timeline: the path, and so the delay
            // it needs, is what it was.
            self.estimator.forget_floor();
        } else {
            self.estimator.reset();
        }
        self.peaks.clear();
        self.peak = None;
        self.playing = false;
        self.next_due = None;
        self.highest_seq = None;
        self.restart_probe = None;
        self.behind.clear();
        // Audio already decoded keeps playing; it no longer maps to media.
        for s in &mut self.segments {
            s.start = None;
        }
        if was {
            self.stats.resyncs += 1;
            InsertOutcome::Resync
        } else {
            InsertOutcome::Queued
        }
    }

    /// The playout delay (us) the next media sample would have if the sync buffer
    /// plus `extra` ticks of other audio were played first.
    fn delay_of(&self, now: Instant, ts: i64, ahead_ticks: i64) -> Option<i64> {
        let floor = self.estimator.floor(now)?;
        Some(now.as_micros() as i64 + self.us(ahead_ticks) - (self.us(ts) + floor))
    }

    /// Media timestamp and audio ahead of it, for the first media in the sync buffer
    /// (or the next media to be handed out).
    fn head(&self) -> (i64, i64) {
        let mut ahead = 0i64;
        for s in &self.segments {
            if let Some(start) = s.start {
                return (start, ahead);
            }
            ahead += s.ticks as i64;
        }
        (self.pos, ahead)
    }

    /// Most the playout clock moves per frame while audio plays, and in silence.
    const STEER_US: i64 = 2_000;

    fn instant(us: i64) -> Instant {
        Instant::from_micros(us.max(0) as u64)
    }

    /// When the next frame is due: the time to call [`JitterBuffer::tick`]. `None`
    /// while there is nothing to play yet.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.playing {
            let target = self.target_us();
            // Start when the first packet has waited out the target.
            let first = self.packets.front()?;
            let floor = self
                .estimator
                .floor(self.last_tick.unwrap_or(Instant::ZERO))?;
            let ahead = self.us(self.buffered_ticks() as i64);
            let start = Self::instant(self.us(first.ts) + floor + target - ahead);
            return Some(self.next_due.map_or(start, |d| d.max(start)));
        }
        let due = self.next_due?;
        if self.pending_giveup > 0 {
            return Some(due); // already given up: the clock runs on
        }
        match self.missing_media(due) {
            Some(give_up) => Some(due.max(give_up)),
            None => Some(due),
        }
    }

    /// If the next frame lacks media worth waiting for, the time to give it up.
    fn missing_media(&self, at: Instant) -> Option<Instant> {
        let frame = self.cfg.clock.ticks_in(self.cfg.frame) as i64;
        let buffered = self.buffered_ticks() as i64;
        if buffered >= frame {
            return None;
        }
        let in_hand = match self.packets.front() {
            None => false,
            Some(p) if p.ts <= self.pos || p.seq == self.next_seq => true,
            // A gap: lost, unless the stream has been reordering lately.
            Some(_) => !self.reordering(),
        };
        if in_hand {
            return None;
        }
        let target = self.target_us();
        let floor = self.estimator.floor(at)?;
        // The missing media would play after what is buffered; give it up when
        // that delay reaches target + slack.
        let give_up =
            self.us(self.pos) + floor + target + self.slack_us(target) - self.us(buffered);
        Some(Self::instant(give_up))
    }

    fn reordering(&self) -> bool {
        self.reorder_rate > 0.001
    }

    /// Plans the next output frame at `now`.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let frame = self.cfg.clock.ticks_in(self.cfg.frame);
        let mut tick = Tick {
            steps: Default::default(),
            stretch: Stretch::None,
        };
        let target = self.target_us();
        self.stats.target_delay_ms = target as f64 / 1000.0;
        // A tick the buffer put off past its nominal time waited for media (on
        // its own clock it emits nothing meanwhile; the far end conceals). Account
        // it like waiting concealment: a stall if the media comes, credited if not.
        // A driver waking a little after the time asked for is not a wait.
        let mut clock_at = now;
        if self.playing
            && !self.cfg.external_clock
            && let Some(due) = self.next_due
        {
            let asked = self.poll_timeout().unwrap_or(due).max(due);
            let half = std::time::Duration::from_micros(self.us(frame as i64 / 2) as u64);
            let on_time = now >= asked && now.saturating_duration_since(asked) < half;
            let waited_until = if on_time { asked } else { now };
            let late = waited_until.saturating_duration_since(due).as_micros() as i64;
            if self.pending_giveup == 0 && late > 1_000 {
                self.pending_wait += self.ticks(late) as u64;
            }
            if now >= asked {
                clock_at = waited_until;
            }
        }
        self.last_tick = Some(now);
        self.clock_at = Some(clock_at);
        if !self.playing {
            let Some(first) = self.packets.front() else {
                self.fill_silence(&mut tick, frame);
                return tick;
            };
            let buffered = self.buffered_ticks() as i64;
            let (ts, seq) = (first.ts, first.seq);
            // Start once the first packet has waited out the target (the audio still
            // in the sync buffer, e.g. from before a resync, counts as waiting).
            // On its own clock the buffer is called exactly then; a fixed clock
            // starts at the grid point nearest the target.
            let tolerance = if self.cfg.external_clock {
                self.us(frame as i64 / 2)
            } else {
                1_000
            };
            if self
                .delay_of(now, ts, buffered)
                .is_some_and(|d| d + tolerance >= target)
            {
                self.playing = true;
                self.pos = ts;
                self.next_seq = seq;
            } else {
                self.fill_silence(&mut tick, frame);
                return tick;
            }
        }
        // The listener's delay: that of the sample played next.
        let (head_ts, ahead) = self.head();
        let delay = self.delay_of(now, head_ts, ahead).unwrap_or(target);
        self.stats.current_delay_ms = delay as f64 / 1000.0;
        let half = (frame / 2) as i64;
        // On a fixed clock the frame grid need not line up with packets, and a
        // misaligned frame needs the next packet sooner than the head delay says:
        // leave half a frame of room before accelerating.
        let margin = (target / 8).max(5_000);
        let grid = if self.cfg.external_clock {
            self.us(frame as i64) / 2
        } else {
            0
        };
        let (hi, lo) = (target + margin + grid, target - margin);
        let mut need = frame as i64;
        // Across a talkspurt boundary the head is not known yet (the gap may be
        // skipped): the pause itself realigns, nothing to stretch.
        let across_gap = self.head_media().is_none()
            && self
                .packets
                .front()
                .is_some_and(|p| p.ts > self.pos && p.seq == self.next_seq);
        if across_gap {
        } else if delay > hi {
            let excess = self.ticks(delay - target).min(half);
            tick.stretch = Stretch::Accelerate {
                max_ticks: excess as u32,
            };
            need += excess;
        } else if delay < lo {
            let short = self.ticks(target - delay).min(half);
            tick.stretch = Stretch::Expand {
                max_ticks: short as u32,
            };
        }
        // A frame's worth, waiting or concealing as needed; then the accelerate's
        // slack only from packets already here in order, and only those the next
        // tick would not need anyway before their time: else the schedule
        // (which waits for the next media to reach the target) slows the clock
        // while the stretch speeds playout, and the output's timeline walks off
        // by up to a frame, seen downstream as jitter. What is left of a decoded
        // packet is free to take: that realigns frames with packets.
        self.fill(now, &mut tick, frame as i64, target);
        let next_tick = Self::instant(clock_at.as_micros() as i64 + self.us(frame as i64));
        while (self.buffered_ticks() as i64) < need
            && self.packets.front().is_some_and(|p| {
                p.ts == self.pos
                    && p.seq == self.next_seq
                    && (self.cfg.external_clock
                        || self
                            .delay_of(next_tick, p.ts + p.ticks as i64, 0)
                            .is_some_and(|d| d >= target))
            })
        {
            let Some(p) = self.packets.pop_front() else {
                break;
            };
            self.pos = p.ts + p.ticks as i64;
            self.next_seq = p.seq + 1;
            let (ticks, start) = (p.ticks, p.ts);
            if !tick.push(Step::Decode {
                payload: p.payload,
                ticks,
            }) {
                break;
            }
            self.push_segment(ticks, Some(start));
        }
        // Accelerate only with real media in hand (not while concealing).
        if let Stretch::Accelerate { max_ticks } = tick.stretch {
            let avail = self.buffered_ticks() as i64 - frame as i64;
            tick.stretch = if avail > 0 {
                Stretch::Accelerate {
                    max_ticks: (max_ticks as i64).min(avail) as u32,
                }
            } else {
                Stretch::None
            };
        }
        tick
    }

    fn fill_silence(&mut self, tick: &mut Tick, frame: u32) {
        let need = (frame as i64 - self.buffered_ticks() as i64).max(0) as u32;
        if need > 0 {
            tick.push(Step::Silence { ticks: need });
            self.push_segment(need, None);
        }
    }

    fn push_segment(&mut self, ticks: u32, start: Option<i64>) {
        if self.segments.len() == MAX_SEGMENTS {
            // Never reached in practice (a frame needs a few); keep the bound.
            self.segments.pop_front();
        }
        self.segments.push_back(Segment { ticks, start });
    }

    /// How much longer than the target missing media is waited for before it is
    /// given up (concealed and skipped; if it still comes it is late): until the
    /// delay would pass the maximum. Waiting is cheap on the buffer's own clock:
    /// a stall that ends is played out and the delay steered back down, and a wait
    /// that turns out to be a loss is credited back.
    fn slack_us(&self, target: i64) -> i64 {
        (self.cfg.max_delay.0 as i64 * 1000 - target).max(target.clamp(10_000, 60_000))
    }

    /// Hands out steps until the sync buffer holds `need` ticks.
    fn fill(&mut self, now: Instant, tick: &mut Tick, need: i64, target: i64) {
        let frame = self.cfg.clock.ticks_in(self.cfg.frame) as i64;
        let mut guard = 0;
        while (self.buffered_ticks() as i64) < need && guard < MAX_STEPS {
            guard += 1;
            // Drop whatever has been overtaken by the playout position.
            while let Some(p) = self.packets.front() {
                if p.ts + p.ticks as i64 <= self.pos || p.seq < self.next_seq {
                    self.packets.pop_front();
                    self.stats.late += 1;
                } else {
                    break;
                }
            }
            let buffered = self.buffered_ticks() as i64;
            let want = (need - buffered).max(1);
            let Some(front) = self.packets.front() else {
                // Stall: nothing to play. Within the slack, conceal without
                // advancing (waiting for the stream raises the delay exactly as
                // much as it stalls); beyond it, give the missing media up.
                let t = want.min(frame) as u32;
                // Once given up, stay given up until a packet comes.
                let waiting = self.pending_giveup == 0
                    && self
                        .delay_of(now, self.pos, buffered)
                        .is_none_or(|d| d < target + self.slack_us(target));
                if waiting {
                    tick.push(Step::Conceal { ticks: t });
                    self.push_segment(t, None);
                    self.pending_wait += t as u64;
                } else {
                    // Given up. After 100 ms of it the stream has most likely
                    // paused (DTX, end of talkspurt): silence, not concealment.
                    let long = self.pending_giveup > self.cfg.clock.ticks_in(Millis(100)) as u64;
                    tick.push(if long {
                        Step::Silence { ticks: t }
                    } else {
                        Step::Conceal { ticks: t }
                    });
                    self.push_segment(t, Some(self.pos));
                    self.pos += t as i64;
                    // The wait that led here is part of the same episode.
                    self.pending_giveup += t as u64 + std::mem::take(&mut self.pending_wait);
                }
                break;
            };
            let (p_ts, p_seq, p_ticks, p_fec) = (front.ts, front.seq, front.ticks, front.fec);
            if p_ts > self.pos
                && p_seq != self.next_seq
                && self.reordering()
                && self
                    .delay_of(now, self.pos, buffered)
                    .is_some_and(|d| d < target + self.slack_us(target))
            {
                // Probably reordered: wait for it like a stall. On a fixed clock
                // the wait is heard (concealment, and everything after it one
                // wait later), so it lasts no longer than the missing media: if
                // that is lost, the wait stands in for it, and a loss costs its
                // own length of concealment, not the way to the maximum delay.
                let full = want.min(frame);
                let t = if self.cfg.external_clock {
                    full.min(p_ts - self.pos - self.pending_wait as i64)
                } else {
                    full
                };
                if t > 0 {
                    tick.push(Step::Conceal { ticks: t as u32 });
                    self.push_segment(t as u32, None);
                    self.pending_wait += t as u64;
                    if t == full {
                        break;
                    }
                    continue; // waited as long as it lasts: given up below
                }
            }
            if self.pending_giveup > 0 {
                let g = std::mem::take(&mut self.pending_giveup);
                if p_seq == self.next_seq && p_ts >= self.pos {
                    self.stats.dtx_wait_ticks += g; // the sender had paused
                } else {
                    self.stats.concealed_ticks += g;
                }
            }
            if self.pending_wait > 0 {
                // A wait just ended. If the awaited media itself arrived, it was a
                // stall. If a later packet came (loss) or the sender paused (DTX),
                // the concealment already played stands in for that media.
                let w = std::mem::take(&mut self.pending_wait);
                if p_ts <= self.pos {
                    self.stats.underrun_ticks += w;
                } else {
                    let covered = (w as i64).min(p_ts - self.pos);
                    self.pos += covered;
                    if p_seq == self.next_seq {
                        self.stats.dtx_wait_ticks += w;
                    } else {
                        self.stats.concealed_ticks += covered as u64;
                        self.stats.underrun_ticks += w - covered as u64;
                    }
                }
            }
            if self.pos >= p_ts && p_seq > self.next_seq {
                self.stats.lost += (p_seq - self.next_seq) as u64;
                self.next_seq = p_seq;
            }
            if p_ts <= self.pos {
                // In order (a packet overlapping the position plays whole).
                let Some(p) = self.packets.pop_front() else {
                    break;
                };
                self.pos = p.ts + p.ticks as i64;
                self.next_seq = p.seq + 1;
                tick.push(Step::Decode {
                    payload: p.payload,
                    ticks: p.ticks,
                });
                self.push_segment(p.ticks, Some(p.ts));
                continue;
            }
            let gap = p_ts - self.pos;
            if p_seq == self.next_seq {
                // A gap the sender meant (silence suppression, DTX): play silence
                // until the next talkspurt is due, which is where the delay moves
                // for free.
                let delay = self.delay_of(now, p_ts, buffered).unwrap_or(target);
                let early = self.ticks(target - delay);
                // On its own clock the tick phase was moved during the pause so
                // the talkspurt starts on a frame: silence in whole frames only.
                // A fixed clock pads to the exact start.
                let pad = if self.cfg.external_clock {
                    early.min(want).min(frame)
                } else if early > frame / 2 {
                    want.min(frame)
                } else {
                    0
                };
                if pad > 0 {
                    tick.push(Step::Silence { ticks: pad as u32 });
                    self.push_segment(pad as u32, None);
                } else {
                    self.pos = p_ts; // skip the rest of the gap
                }
                continue;
            }
            // Packets in between are missing while a later one is here: lost.
            let missing = (p_seq - self.next_seq).max(1) as u64;
            if p_fec && gap <= p_ticks as i64 {
                let t = gap as u32;
                let payload = self
                    .packets
                    .front()
                    .map(|f| f.payload.clone())
                    .unwrap_or_default();
                tick.push(Step::RecoverFec { payload, ticks: t });
                self.push_segment(t, Some(self.pos));
                self.stats.fec_recovered += 1;
                self.stats.lost += missing;
                self.pos = p_ts;
                self.next_seq = p_seq;
                continue;
            }
            let t = gap.min(frame) as u32;
            tick.push(Step::Conceal { ticks: t });
            self.push_segment(t, Some(self.pos));
            self.stats.concealed_ticks += t as u64;
            self.pos += t as i64;
        }
    }

    /// Reports that the frame just played consumed `ticks` of the sync buffer
    /// (one frame, plus or minus the stretch applied).
    pub fn consume(&mut self, ticks: u32) {
        let frame = self.cfg.clock.ticks_in(self.cfg.frame);
        match ticks.cmp(&frame) {
            std::cmp::Ordering::Greater => {
                self.stats.accelerated += 1;
                self.stats.stretched_out_ticks += (ticks - frame) as u64;
            }
            std::cmp::Ordering::Less => {
                self.stats.expanded += 1;
                self.stats.stretched_in_ticks += (frame - ticks) as u64;
            }
            std::cmp::Ordering::Equal => {}
        }
        let mut left = ticks;
        while left > 0 {
            let Some(s) = self.segments.front_mut() else {
                break;
            };
            let take = left.min(s.ticks);
            s.ticks -= take;
            if let Some(start) = s.start.as_mut() {
                *start += take as i64;
            }
            left -= take;
            if s.ticks == 0 {
                self.segments.pop_front();
            }
        }
        self.schedule();
    }

    /// Sets when the next frame is due: when its first media sample reaches the
    /// target delay, moving at most 2 ms from the nominal frame period (half a
    /// frame in silence, where nothing is heard moving).
    fn schedule(&mut self) {
        let (Some(last), Some(clock_at)) = (self.last_tick, self.clock_at) else {
            return;
        };
        let nominal =
            clock_at.as_micros() as i64 + self.us(self.cfg.clock.ticks_in(self.cfg.frame) as i64);
        let (head, ahead) = self.head();
        let Some(floor) = self.estimator.floor(last) else {
            self.next_due = Some(Self::instant(nominal));
            return;
        };
        let frame = self.cfg.clock.ticks_in(self.cfg.frame) as i64;
        let target = self.target_us();
        // When the head reaches the target delay; but if the frame will need media
        // not yet decoded (the frame is misaligned with packets, after a stretch),
        // no earlier than that media's own target: else its packet would be due
        // before its time.
        let mut desired = self.us(head) + floor + target - self.us(ahead);
        if (self.buffered_ticks() as i64) < frame {
            desired = desired.max(self.us(self.pos) + floor + target);
        }
        // In a pause with the next talkspurt already here: put a tick exactly where
        // it starts at the target (whole frames of silence before it).
        if self.buffered_ticks() == 0
            && let Some(p) = self.packets.front()
            && p.seq == self.next_seq
            && p.ts > self.pos
        {
            let start = self.us(p.ts) + floor + target;
            let f = self.us(frame);
            let mut phase = (start - nominal).rem_euclid(f);
            if phase > f / 2 {
                phase -= f;
            }
            desired = nominal + phase;
        }
        // Nothing at all to play or align to (the sender went quiet, or what it
        // held was given up): keep the clock's pace. Steering toward the stale
        // position would run the clock at double speed through the silence,
        // while the output has already skipped the wait (its timestamps would
        // run ahead of the wall clock by the wait).
        if self.segments.is_empty() && self.packets.is_empty() && self.buffered_ticks() == 0 {
            desired = nominal;
        }
        let silent = ahead > 0
            || self.segments.is_empty() && self.packets.front().is_none_or(|p| p.ts > self.pos);
        let steer = if silent {
            self.us(self.cfg.clock.ticks_in(self.cfg.frame) as i64) / 2
        } else {
            Self::STEER_US
        };
        self.next_due = Some(Self::instant(
            desired.clamp(nominal - steer, nominal + steer),
        ));
    }

    /// The media position (extended timestamp) the next step will start at.
    pub fn position(&self) -> i64 {
        self.pos
    }

    /// The media timestamp at the head of the sync buffer (next to be played) and
    /// how many ticks of non-media audio precede it, for measurements.
    pub fn head_media(&self) -> Option<(i64, u32)> {
        let mut ahead = 0u32;
        for s in &self.segments {
            if let Some(start) = s.start {
                return Some((start, ahead));
            }
            ahead += s.ticks;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SeededRng;

    const F: u32 = 160; // 20 ms at 8 kHz

    fn pkt(seq: u16, ts: u32, ssrc: u32, dur: u32) -> JitterPacket {
        JitterPacket {
            sequence_number: SeqNo(seq),
            timestamp: RtpTimestamp(ts),
            ssrc: Ssrc(ssrc),
            marker: false,
            duration: dur,
            fec: false,
            payload: Bytes::from(vec![seq as u8; 4]),
        }
    }

    /// Drives a buffer on virtual time: arrivals in time order, ticks on the
    /// buffer's own clock (or every 20 ms), stretch simulated as a 5 ms period.
    struct Sim {
        jb: JitterBuffer,
        /// (tick time, steps, stretch, consumed)
        log: Vec<(Instant, Vec<Step>, u32)>,
        /// Payload first bytes of decoded packets, in play order.
        decoded: Vec<u8>,
        max_len: usize,
        /// (tick time, listener delay ms) per tick once playing.
        delays: Vec<(Instant, f64)>,
        /// How late the driver wakes for each own-clock tick (tick index -> us):
        /// a runtime's timer rounds up to its resolution.
        wake_late: fn(usize) -> u64,
        /// The pitch period a stretch adds or removes, ticks (a quarter frame
        /// unless set; a real one is whatever the speech has, so frames stop
        /// lining up with packets).
        pitch: u32,
    }

    impl Sim {
        fn new(cfg: JitterConfig) -> Self {
            Sim {
                pitch: cfg.clock.ticks_in(cfg.frame) / 4,
                log: Vec::new(),
                decoded: Vec::new(),
                max_len: 0,
                delays: Vec::new(),
                wake_late: |_| 0,
                jb: JitterBuffer::new(cfg),
            }
        }

        fn tick(&mut self, now: Instant) {
            let frame = self.jb.cfg.clock.ticks_in(self.jb.cfg.frame);
            let t = self.jb.tick(now);
            let steps: Vec<Step> = t.steps().cloned().collect();
            for s in &steps {
                if let Step::Decode { payload, .. } = s {
                    self.decoded.push(payload[0]);
                }
            }
            let pitch = self.pitch;
            let consumed = match t.stretch {
                Stretch::None => frame,
                Stretch::Accelerate { max_ticks } if max_ticks >= pitch => frame + pitch,
                Stretch::Expand { max_ticks } if max_ticks >= pitch => frame - pitch,
                _ => frame,
            };
            if self.jb.playing {
                self.delays.push((now, self.jb.stats.current_delay_ms));
            }
            self.jb.consume(consumed);
            self.log.push((now, steps, consumed));
        }

        /// Runs until `end_us`, delivering `arrivals` (us, packet).
        fn run(&mut self, mut arrivals: Vec<(u64, JitterPacket)>, end_us: u64, own_clock: bool) {
            arrivals.sort_by_key(|a| a.0);
            let mut next = 0;
            // A fixed clock ticks every 20 ms from the first arrival.
            let mut fixed = arrivals.first().map_or(0, |a| a.0);
            let mut now = 0u64;
            loop {
                let arrival = arrivals.get(next).map_or(u64::MAX, |a| a.0);
                let due = if own_clock {
                    self.jb.poll_timeout().map_or(u64::MAX, |d| {
                        d.as_micros() + (self.wake_late)(self.log.len())
                    })
                } else {
                    fixed
                };
                if arrival.min(due) >= end_us {
                    break;
                }
                if arrival <= due {
                    let (at, p) = arrivals[next].clone();
                    now = at;
                    self.jb.insert(Instant::from_micros(at), p);
                    self.max_len = self.max_len.max(self.jb.len());
                    next += 1;
                    continue;
                }
                // A timeout that fell into the past is handled now, not then.
                now = now.max(due);
                self.tick(Instant::from_micros(now));
                fixed += 20_000;
            }
        }

        fn count(&self, f: impl Fn(&Step) -> bool) -> usize {
            self.log
                .iter()
                .flat_map(|(_, s, _)| s)
                .filter(|s| f(s))
                .count()
        }
    }

    /// `n` 20 ms packets from seq/ts 0 with arrival = send + 40 ms + jitter(i).
    fn stream(n: u16, jitter: impl Fn(u16) -> u64) -> Vec<(u64, JitterPacket)> {
        (0..n)
            .map(|i| {
                (
                    i as u64 * 20_000 + 40_000 + jitter(i),
                    pkt(i, i as u32 * F, 1, F),
                )
            })
            .collect()
    }

    fn cfg() -> JitterConfig {
        JitterConfig::new(ClockRate(8000))
    }

    /// A runtime's timer wakes a little late every time (tokio rounds up to the
    /// millisecond: 1-2 ms measured in the SBC). The playout clock keeps to its
    /// own schedule: it must not lose that time on every frame, which played
    /// 30 ms packets 7 % slow, accelerated away the backlog and counted the
    /// lateness as concealment.
    #[test]
    fn a_driver_that_wakes_late_does_not_slow_the_playout_clock() {
        let mut sim = Sim::new(cfg());
        sim.wake_late = |i| 1_000 + (i as u64 * 7919) % 1_000;
        // 30 ms packets, as SIPp plays its PCMA capture, for 7.2 s.
        let arrivals: Vec<_> = (0..240u16)
            .map(|i| (i as u64 * 30_000 + 5_000, pkt(i, i as u32 * 240, 1, 240)))
            .collect();
        sim.run(arrivals, 7_300_000, true);
        let s = sim.jb.stats();
        assert_eq!(
            (
                s.late,
                s.lost,
                s.concealed_ticks,
                s.underrun_ticks,
                s.accelerated
            ),
            (0, 0, 0, 0, 0),
            "{s:?}"
        );
        // Every packet played, at the pace it came: 7.2 s is 360 frames.
        assert_eq!(sim.decoded.len(), 240);
        let frames = sim.log.len();
        assert!((355..=362).contains(&frames), "{frames} frames in 7.3 s");
        let (_, d) = sim.delays[300];
        assert!((19.0..27.0).contains(&d), "{d}");
    }

    #[test]
    fn plays_a_clean_stream_in_order_at_the_minimum_delay() {
        let mut sim = Sim::new(cfg());
        sim.run(stream(100, |_| 0), 2_200_000, true);
        assert_eq!(sim.decoded, (0..100).map(|i| i as u8).collect::<Vec<_>>());
        let s = sim.jb.stats();
        assert_eq!(
            (s.late, s.lost, s.concealed_ticks, s.underrun_ticks),
            (0, 0, 0, 0)
        );
        let (_, d) = sim.delays[50];
        assert!((20.0..21.0).contains(&d), "{d}");
    }

    #[test]
    fn reordered_packets_play_in_sequence() {
        // Every 5th packet arrives 25 ms late, after its successor. The first one
        // is taken for lost (nothing says the stream reorders yet); from then on
        // gaps are waited for.
        let mut sim = Sim::new(cfg());
        sim.run(
            stream(200, |i| if i % 5 == 2 { 25_000 } else { 0 }),
            4_500_000,
            true,
        );
        let expected: Vec<u8> = (0..200).filter(|&i| i != 2).map(|i| i as u8).collect();
        assert_eq!(sim.decoded, expected);
        let s = sim.jb.stats();
        assert!(s.reordered >= 39, "{s:?}");
        assert_eq!(s.late, 1, "{s:?}");
    }

    /// On a fixed clock, a loss on a path that reorders: the missing packet
    /// may come late, but the wait for it is heard (concealment, and the
    /// delay grows by it), so it lasts no longer than the missing media.
    /// Before, it lasted up to the maximum delay: 3.66 s of waits for these
    /// 28 losses (130 ms each) and 715 frames accelerated to take them back;
    /// now 0.14 s and 25.
    #[test]
    fn on_a_fixed_clock_a_loss_on_a_reordering_path_costs_its_own_length() {
        // Every 10th packet arrives 30 ms late, after its successor; every
        // 37th is lost.
        let mut arrivals = stream(1000, |i| if i % 10 == 5 { 30_000 } else { 0 });
        arrivals.retain(|(_, p)| p.sequence_number.0 % 37 != 20);
        let mut c = cfg();
        c.external_clock = true;
        let mut sim = Sim::new(c);
        sim.run(arrivals, 20_300_000, false);
        let s = *sim.jb.stats();
        assert_eq!(s.lost, 28, "{s:?}"); // 27, and the first reordered one
        assert!(s.reordered >= 90, "{s:?}");
        // The reordered packets come in time and play (but the first, taken
        // for lost while nothing says the path reorders): all but one of the
        // 973 that came.
        assert_eq!((s.late, sim.decoded.len()), (1, 972), "{s:?}");
        // Each loss costs its own length of concealment, and nothing was
        // waited for beyond it.
        assert_eq!(s.concealed_ticks, 28 * F as u64, "{s:?}");
        assert!(s.underrun_ticks <= 10 * F as u64, "{s:?}");
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut arrivals = stream(50, |_| 0);
        let dups: Vec<_> = arrivals
            .iter()
            .map(|(t, p)| (t + 3_000, p.clone()))
            .collect();
        arrivals.extend(dups);
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 1_500_000, true);
        assert_eq!(sim.decoded, (0..50).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(sim.jb.stats().duplicates, 50);
    }

    #[test]
    fn a_packet_past_its_playout_time_is_late_and_its_media_concealed() {
        // Packet 30 arrives 400 ms late (not FIFO: it alone is held up).
        let mut sim = Sim::new(cfg());
        sim.run(
            stream(60, |i| if i == 30 { 400_000 } else { 0 }),
            1_800_000,
            true,
        );
        let s = sim.jb.stats();
        assert_eq!(s.late, 1, "{s:?}");
        assert!(!sim.decoded.contains(&30));
        assert!(s.concealed_ticks >= F as u64, "{s:?}");
        assert_eq!(sim.decoded.len(), 59);
    }

    #[test]
    fn sequence_and_timestamp_wrap_around() {
        let (seq0, ts0) = (65_500u16, u32::MAX - 100 * F);
        let arrivals = (0..200u16)
            .map(|i| {
                let mut p = pkt(seq0.wrapping_add(i), ts0.wrapping_add(i as u32 * F), 1, F);
                p.payload = Bytes::from(vec![i as u8; 4]);
                (i as u64 * 20_000 + 40_000, p)
            })
            .collect();
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 4_300_000, true);
        assert_eq!(sim.decoded, (0..200).map(|i| i as u8).collect::<Vec<_>>());
        let s = sim.jb.stats();
        assert_eq!((s.late, s.lost, s.resyncs), (0, 0, 0), "{s:?}");
    }

    /// A 100 ms stall ends in a burst. The backlog goes by time-stretching what
    /// is in hand and by the clock, without the two pulling against each other:
    /// an accelerate that took packets the next tick needed left the schedule
    /// waiting for them to come of age, so the clock ran slow while the stretch
    /// sped playout. The listener's delay then hovered a frame above the target,
    /// and the output timeline (one frame per tick) walked 20-30 ms late, which
    /// a downstream buffer took for jitter and buffered for seconds.
    #[test]
    fn a_stall_drains_without_the_clock_and_the_stretch_fighting() {
        let mut sim = Sim::new(cfg());
        sim.wake_late = |_| 1_000;
        sim.pitch = 9 * 8; // 9 ms: frames no longer line up with packets
        // 20 ms packets for 6 s; those sent in 3.00-3.08 s arrive with the one
        // of 3.10 s.
        let arrivals = stream(300, |i| {
            if (150..155).contains(&i) {
                (155 - u64::from(i)) * 20_000
            } else {
                0
            }
        });
        sim.run(arrivals, 6_100_000, true);
        let target = sim.jb.target_us() as f64 / 1000.0;
        let burst = Instant::from_micros(3_140_000);
        let after: Vec<(Instant, f64)> = sim
            .delays
            .iter()
            .copied()
            .filter(|d| d.0 >= burst)
            .collect();
        assert!(
            after[0].1 > target + 50.0,
            "the stall shows: {:?}",
            after[0]
        );
        // While the listener waits longer than the target, no tick comes later
        // than the nominal 20 ms (plus the driver's 1 ms).
        for w in after.windows(2) {
            let gap = w[1].0.saturating_duration_since(w[0].0).as_micros();
            assert!(
                w[0].1 <= target + 1.0 || gap <= 21_000,
                "slow tick of {gap} us at {:?} with the delay at {} ms (target {target})",
                w[1].0,
                w[0].1
            );
        }
        // Settled within 0.5 s, and it stays there: no more than a pitch period
        // above the target (what is left of a packet when the stretch cannot
        // take a whole period; silence, where any length goes, realigns).
        let settled: Vec<f64> = after
            .iter()
            .filter(|d| d.0 >= Instant::from_micros(3_640_000))
            .map(|d| d.1)
            .collect();
        let (lo, hi) = settled
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &d| (lo.min(d), hi.max(d)));
        assert!(
            hi - lo <= 1.0 && lo >= target && hi <= target + 9.0,
            "delay {lo}-{hi} ms, target {target}"
        );
        let s = sim.jb.stats();
        assert_eq!((s.late, s.lost), (0, 0), "{s:?}");
    }

    #[test]
    fn a_talkspurt_gap_plays_silence_not_concealment() {
        // 20 packets, then the sender pauses 1 s (sequence continues, timestamp
        // jumps, marker set), then 20 more.
        let mut arrivals = stream(20, |_| 0);
        for i in 20..40u16 {
            let mut p = pkt(i, i as u32 * F + 8000, 1, F);
            p.marker = i == 20;
            arrivals.push((i as u64 * 20_000 + 1_040_000, p));
        }
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 2_000_000, true);
        assert_eq!(sim.decoded.len(), 40);
        let s = sim.jb.stats();
        assert_eq!(
            (s.lost, s.late, s.concealed_ticks, s.underrun_ticks),
            (0, 0, 0, 0),
            "{s:?}"
        );
        // The pause was recognised as the sender's: waited out, then silence.
        assert!(s.dtx_wait_ticks >= 4000, "{s:?}");
        assert!(sim.count(|s| matches!(s, Step::Silence { .. })) > 20);
        // The second talkspurt plays at the target delay too.
        let (_, d) = *sim
            .delays
            .iter()
            .find(|(t, _)| t.as_micros() > 1_600_000)
            .unwrap();
        assert!((19.0..23.0).contains(&d), "{d}");
    }

    #[test]
    fn opus_dtx_gaps_at_48khz() {
        let cfg = JitterConfig::new(ClockRate(48000));
        // 10 packets, 2 s of DTX silence, 10 packets; 960 ticks per packet.
        let mut arrivals = Vec::new();
        for i in 0..20u16 {
            let gap = if i >= 10 { 96_000 } else { 0 };
            let send = i as u64 * 20_000 + if i >= 10 { 2_000_000 } else { 0 };
            arrivals.push((send + 30_000, pkt(i, i as u32 * 960 + gap, 9, 960)));
        }
        let mut sim = Sim::new(cfg);
        sim.run(arrivals, 3_000_000, true);
        assert_eq!(sim.decoded.len(), 20);
        let s = sim.jb.stats();
        assert_eq!((s.lost, s.late, s.concealed_ticks), (0, 0, 0), "{s:?}");
    }

    #[test]
    fn ssrc_change_resynchronises() {
        let mut arrivals = stream(50, |_| 0);
        for i in 0..50u16 {
            let mut p = pkt(30_000 + i, 777_000 + i as u32 * F, 2, F);
            p.payload = Bytes::from(vec![100 + i as u8; 4]);
            arrivals.push((1_040_000 + i as u64 * 20_000, p));
        }
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 2_200_000, true);
        assert_eq!(sim.jb.stats().resyncs, 1);
        let second: Vec<u8> = sim.decoded.iter().copied().filter(|&b| b >= 100).collect();
        assert_eq!(second, (100..150).collect::<Vec<u8>>());
        assert!(sim.decoded.len() >= 98, "{}", sim.decoded.len());
    }

    #[test]
    fn a_timestamp_jump_resynchronises() {
        let mut arrivals = stream(50, |_| 0);
        for i in 50..100u16 {
            arrivals.push((
                i as u64 * 20_000 + 40_000,
                pkt(i, i as u32 * F + 8000 * 3600, 1, F),
            ));
        }
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 2_200_000, true);
        assert_eq!(sim.jb.stats().resyncs, 1);
        assert!(sim.decoded.len() >= 98, "{}", sim.decoded.len());
        assert_eq!(*sim.decoded.last().unwrap(), 99);
    }

    #[test]
    fn a_sender_that_starts_over_with_its_ssrc_is_followed() {
        // A looped capture (SIPp's pcap play): the same 150 packets twice, on time.
        let arrivals: Vec<_> = (0..300u64)
            .map(|k| {
                let i = 1000 + (k % 150) as u16;
                (k * 20_000, pkt(i, i as u32 * F, 1, F))
            })
            .collect();
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 6_300_000, true);
        let s = *sim.jb.stats();
        assert_eq!(s.resyncs, 1, "{s:?}");
        // RFC 3550 A.1: the first packet of the new run is taken for late; the
        // one after it confirms the restart.
        assert!(s.late <= 2, "{s:?}");
        assert!(sim.decoded.len() >= 290, "{}", sim.decoded.len());
    }

    /// 100 packets of 20 ms; then the sender goes quiet for `pause_us` and
    /// resumes with the next sequence number and its timestamps moved by
    /// `shift` ticks from where they stopped (0: continuing right there, as
    /// some senders do after a mute or a DTX pause; negative: a restarted
    /// clock), 150 packets more. Arrival: send + 40 ms + 0-`jitter_us` (not
    /// FIFO). Returns the run and when the first resumed packet arrived.
    fn resumed(clock: u32, own: bool, pause_us: u64, shift: i64, jitter_us: f64) -> (Sim, u64) {
        let dur = clock / 50;
        let mut c = JitterConfig::new(ClockRate(clock));
        c.external_clock = !own;
        let mut rng = SeededRng::new(31);
        let arrivals: Vec<_> = (0..250u16)
            .map(|i| {
                let after = i >= 100;
                let ts = (1i64 << 31) + i as i64 * dur as i64 + if after { shift } else { 0 };
                let send = i as u64 * 20_000 + if after { pause_us } else { 0 };
                let at = send + 40_000 + (rng.next_f64() * jitter_us) as u64;
                (at, pkt(i, ts as u32, 1, dur))
            })
            .collect();
        let resume = arrivals[100..].iter().map(|a| a.0).min().unwrap();
        let mut sim = Sim::new(c);
        sim.run(arrivals, 250 * 20_000 + pause_us + 300_000, own);
        (sim, resume)
    }

    /// The resumed stream (packets 100-249, the first arriving at `resume`)
    /// plays within 60 ms of that (three frames), nearly whole, and by its
    /// last second at the target delay.
    fn assert_resumed(sim: &Sim, resume: u64, label: &str) {
        let first = sim
            .log
            .iter()
            .find(|(_, steps, _)| {
                steps
                    .iter()
                    .any(|s| matches!(s, Step::Decode { payload, .. } if payload[0] >= 100))
            })
            .map(|l| l.0.as_micros());
        let s = sim.jb.stats();
        let Some(first) = first else {
            panic!("{label}: the resumed stream never played: {s:?}");
        };
        assert!(
            first.saturating_sub(resume) <= 60_000,
            "{label}: resumed stream first heard {} ms after it came back: {s:?}",
            first.saturating_sub(resume) / 1000
        );
        let played = sim.decoded.iter().filter(|&&b| b >= 100).count();
        assert!(played >= 146, "{label}: {played} of 150 played: {s:?}");
        let end = resume + 149 * 20_000;
        let tail = sim
            .delays
            .iter()
            .filter(|(t, _)| (end - 1_000_000..end).contains(&t.as_micros()))
            .map(|d| d.1)
            .fold(0.0, f64::max);
        // A fixed clock pays the frame grid; on its own clock, what is left of
        // a packet the stretch could not take whole (a pitch period) until the
        // next pause realigns.
        let pitch_ms = sim.pitch as f64 * 1000.0 / sim.jb.cfg.clock.0 as f64;
        let room = if sim.jb.cfg.external_clock {
            20.0
        } else {
            pitch_ms + 1.0
        };
        assert!(
            tail <= s.target_delay_ms + room,
            "{label}: delay {tail} ms a second after, target {}",
            s.target_delay_ms
        );
    }

    /// A sender that stops for 3 s and resumes with its timestamps continuing
    /// where they stopped. The buffer's clock ran on through the pause (given
    /// up, then silence), so every resumed packet was behind the playout
    /// position: dropped as late, for good (the media stayed silent). A run of
    /// such packets arriving at the pace of their media is the sender's
    /// timeline having moved back: resynchronised, and the run played.
    #[test]
    fn a_sender_resuming_without_a_timestamp_jump_is_followed() {
        for clock in [8000, 48000] {
            for own in [true, false] {
                for jitter in [0.0, 30_000.0] {
                    for pause in [400_000, 3_000_000] {
                        let (sim, resume) = resumed(clock, own, pause, 0, jitter);
                        let label = format!(
                            "{clock} Hz, own clock {own}, jitter {jitter} us, pause {pause} us"
                        );
                        assert_resumed(&sim, resume, &label);
                        assert_eq!(sim.jb.stats().resyncs, 1, "{label}");
                    }
                }
            }
        }
    }

    /// A sender whose timestamps jump back (a restarted clock, same SSRC,
    /// sequence running on), by less than the 10 s taken for a restart at
    /// once and by an hour.
    #[test]
    fn timestamps_jumping_back_resynchronise() {
        for back_s in [1i64, 5, 3600] {
            for own in [true, false] {
                let (sim, resume) = resumed(8000, own, 0, -back_s * 8000, 20_000.0);
                let label = format!("back {back_s} s, own clock {own}");
                assert_resumed(&sim, resume, &label);
                assert_eq!(sim.jb.stats().resyncs, 1, "{label}");
            }
        }
    }

    /// A stall longer than the maximum delay that ends in a burst is not a
    /// sender that moved its timeline: what the burst brings is late, and the
    /// stream goes on at its delay without a resync.
    #[test]
    fn a_stall_past_the_maximum_delay_is_not_a_resync() {
        for own in [true, false] {
            // Everything sent in 2.0-2.6 s arrives at 2.6 s (FIFO).
            let arrivals = stream(250, |i| {
                let send = i as u64 * 20_000;
                if (2_000_000..2_600_000).contains(&send) {
                    2_600_000 - send
                } else {
                    0
                }
            });
            let mut c = cfg();
            c.external_clock = !own;
            let mut sim = Sim::new(c);
            sim.run(arrivals, 5_300_000, own);
            let s = sim.jb.stats();
            assert_eq!(s.resyncs, 0, "own {own}: {s:?}");
            assert!(s.late >= 15, "own {own}: {s:?}");
            let tail = sim
                .delays
                .iter()
                .filter(|(t, _)| (4_000_000..5_000_000).contains(&t.as_micros()))
                .map(|d| d.1)
                .fold(0.0, f64::max);
            assert!(tail <= s.target_delay_ms + 20.0, "own {own}: {tail} {s:?}");
        }
    }

    #[test]
    fn packets_of_10_to_60_ms() {
        for ms in [10u32, 20, 30, 40, 60] {
            let dur = 8 * ms;
            let n = (2000 / ms) as u16;
            let arrivals = (0..n)
                .map(|i| {
                    (
                        i as u64 * ms as u64 * 1000 + 40_000,
                        pkt(i, i as u32 * dur, 1, dur),
                    )
                })
                .collect();
            let mut sim = Sim::new(cfg());
            sim.run(arrivals, 2_400_000, true);
            assert_eq!(sim.decoded.len(), n as usize, "{ms} ms");
            let s = sim.jb.stats();
            assert_eq!(
                (s.late, s.lost, s.underrun_ticks),
                (0, 0, 0),
                "{ms} ms: {s:?}"
            );
            // Every tick is one 20 ms frame of output made of whole packets.
            let stream_end = n as u64 * ms as u64 * 1000 + 40_000;
            let conceal: Vec<_> = sim
                .log
                .iter()
                .filter(|(t, steps, _)| {
                    t.as_micros() < stream_end
                        && steps.iter().any(|s| matches!(s, Step::Conceal { .. }))
                })
                .collect();
            assert!(
                conceal.is_empty(),
                "{ms} ms: {:?}",
                &conceal[..conceal.len().min(3)]
            );
        }
    }

    /// Sender clock off by `skew` for 10 minutes, mild jitter.
    fn drift(skew: f64, own_clock: bool) -> Sim {
        let mut rng = SeededRng::new(11);
        let n = 30_000u32;
        let arrivals = (0..n)
            .map(|i| {
                let send = (i as f64 * 20_000.0 / (1.0 + skew)) as u64;
                (
                    send + 40_000 + (rng.next_f64() * 8_000.0) as u64,
                    pkt(i as u16, i * F, 1, F),
                )
            })
            .collect();
        let mut c = cfg();
        c.external_clock = !own_clock;
        let mut sim = Sim::new(c);
        sim.run(arrivals, 600_500_000, own_clock);
        sim
    }

    #[test]
    fn clock_drift_neither_grows_nor_starves() {
        for skew in [0.005, -0.005] {
            for own in [true, false] {
                let sim = drift(skew, own);
                let s = sim.jb.stats();
                let late_or_wait = s.late + s.underrun_ticks / F as u64;
                assert!(late_or_wait < 300, "skew {skew} own {own}: {s:?}"); // < 1 %
                assert!(
                    sim.max_len <= 8,
                    "skew {skew} own {own}: {} packets held",
                    sim.max_len
                );
                // Stable to the end: the last minute is no worse than the first.
                let in_window = |lo: u64, hi: u64| {
                    sim.delays
                        .iter()
                        .filter(|(t, _)| (lo..hi).contains(&t.as_micros()))
                        .map(|d| d.1)
                        .fold(0.0, f64::max)
                };
                let (first, last) = (
                    in_window(10_000_000, 70_000_000),
                    in_window(530_000_000, 590_000_000),
                );
                let bound = if own { 30.0 } else { 70.0 }; // a fixed clock pays the frame grid
                assert!(
                    last < bound && first < bound,
                    "skew {skew} own {own}: worst delay {first} then {last}"
                );
                if !own {
                    // A fixed clock can only follow by stretching.
                    assert!(s.accelerated + s.expanded > 100, "{s:?}");
                }
            }
        }
    }

    #[test]
    fn a_delay_spike_is_ridden_out_and_forgotten_within_two_seconds() {
        // FIFO stall of 150 ms at t = 5 s: everything sent meanwhile arrives at once.
        let arrivals = stream(500, |i| {
            let send = i as u64 * 20_000;
            if (5_000_000..5_150_000).contains(&send) {
                5_150_000 - send
            } else {
                0
            }
        });
        let mut sim = Sim::new(cfg());
        sim.wake_late = |i| 1_000 + (i as u64 * 7919) % 1_000;
        sim.run(arrivals, 10_500_000, true);
        let s = sim.jb.stats();
        // Adapts up at once: the stall is waited for or concealed, nothing breaks.
        assert!(s.underrun_ticks + s.concealed_ticks > 0, "{s:?}");
        // Back to the target within 2 s of the stall ending.
        let after: Vec<&(Instant, f64)> = sim
            .delays
            .iter()
            .filter(|(t, _)| (5_190_000 + 2_000_000..9_900_000).contains(&t.as_micros()))
            .collect();
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|(_, d)| *d < 26.0),
            "{:?}",
            after.iter().map(|d| d.1).fold(0.0, f64::max)
        );
        // The isolated spike did not raise the target.
        assert!(s.target_delay_ms <= 22.0, "{s:?}");
    }

    /// A sender upstream stalls for 100 ms and then catches up by pacing: its own
    /// playout clock (a jitter buffer steering 2 ms a frame, as ours does) or an
    /// echo that restamps what it sends back (the browser e2e test's carrier).
    /// Packets come 80 ms late, then each 2 ms less late, 18 ms apart: not a
    /// burst, yet one event. Before, the tail under the peak margin went into the
    /// histogram and held the target at 62 ms for 30 s (`tests/e2e`, latency).
    #[test]
    fn a_stall_that_the_sender_paces_off_is_one_peak() {
        let arrivals = stream(600, |i| {
            let since = i as i64 - 250; // the stall at 5 s
            if since >= 0 {
                (80_000 - 2_000 * since).max(0) as u64
            } else {
                0
            }
        });
        let mut sim = Sim::new(cfg());
        sim.wake_late = |i| 1_000 + (i as u64 * 7919) % 1_000;
        sim.run(arrivals, 12_500_000, true);
        let s = sim.jb.stats();
        // The ramp ends 5.8 s in: within 2 s the delay is back at the target.
        let after: Vec<f64> = sim
            .delays
            .iter()
            .filter(|(t, _)| (7_800_000..11_900_000).contains(&t.as_micros()))
            .map(|d| d.1)
            .collect();
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|d| *d < 26.0),
            "{:?}",
            after.iter().fold(0.0f64, |a, d| a.max(*d))
        );
        assert!(s.target_delay_ms <= 22.0, "{s:?}");
        assert!(s.late == 0, "{s:?}");
    }

    #[test]
    fn target_adapts_to_jitter_within_its_bounds() {
        // No jitter: the minimum.
        let mut sim = Sim::new(cfg());
        sim.run(stream(300, |_| 0), 6_200_000, true);
        assert_eq!(sim.jb.target_us(), 20_000);
        // Uniform 0-80 ms jitter (not FIFO): about its 99th percentile.
        let mut rng = SeededRng::new(5);
        let jitter: Vec<u64> = (0..1500)
            .map(|_| (rng.next_f64() * 80_000.0) as u64)
            .collect();
        let mut sim = Sim::new(cfg());
        sim.run(stream(1500, |i| jitter[i as usize]), 30_500_000, true);
        let t = sim.jb.target_us();
        assert!((70_000..=90_000).contains(&t), "{t}");
        let s = sim.jb.stats();
        assert!(
            (s.late as f64 + s.underrun_ticks as f64 / F as f64) < 0.02 * 1500.0,
            "{s:?}"
        );
        // Huge jitter: capped at the maximum.
        let jitter: Vec<u64> = (0..1500)
            .map(|_| (rng.next_f64() * 600_000.0) as u64)
            .collect();
        let mut sim = Sim::new(cfg());
        sim.run(stream(1500, |i| jitter[i as usize]), 30_500_000, true);
        assert_eq!(sim.jb.target_us(), 200_000);
    }

    #[test]
    fn memory_stays_bounded_whatever_arrives() {
        let mut jb = JitterBuffer::new(cfg());
        let mut rng = SeededRng::new(1);
        for i in 0..20_000u32 {
            let p = pkt(
                rng.next_u32() as u16,
                rng.next_u32(),
                1 + i % 2,
                1 + rng.next_u32() % 2000,
            );
            jb.insert(Instant::from_micros(i as u64), p);
            assert!(jb.len() <= jb.config().max_packets);
        }
        // A burst of consecutive packets: the duration bound applies too.
        let mut jb = JitterBuffer::new(cfg());
        for i in 0..500u16 {
            jb.insert(Instant::ZERO, pkt(i, i as u32 * F, 1, F));
        }
        let held: u32 = jb.packets.iter().map(|p| p.ticks).sum();
        assert!(held <= 8000, "{held} ticks held");
        assert!(jb.stats().discarded >= 450);
    }

    #[test]
    fn a_lost_packet_is_recovered_from_the_next_ones_fec() {
        let mut arrivals = stream(40, |_| 0);
        arrivals.retain(|(_, p)| p.sequence_number.0 != 20);
        for (_, p) in &mut arrivals {
            p.fec = true;
        }
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 1_300_000, true);
        let fec: Vec<_> = sim
            .log
            .iter()
            .flat_map(|(_, s, _)| s)
            .filter_map(|s| match s {
                Step::RecoverFec { payload, ticks } => Some((payload[0], *ticks)),
                _ => None,
            })
            .collect();
        assert_eq!(fec, vec![(21, F)]);
        let s = sim.jb.stats();
        assert_eq!(
            (s.lost, s.fec_recovered, s.concealed_ticks),
            (1, 1, 0),
            "{s:?}"
        );
    }

    #[test]
    fn a_lost_packet_without_fec_is_concealed_once() {
        let mut arrivals = stream(40, |_| 0);
        arrivals.retain(|(_, p)| p.sequence_number.0 != 20);
        let mut sim = Sim::new(cfg());
        sim.run(arrivals, 1_300_000, true);
        let s = sim.jb.stats();
        assert_eq!(
            (s.lost, s.concealed_ticks, s.late),
            (1, F as u64, 0),
            "{s:?}"
        );
        assert_eq!(sim.decoded.len(), 39);
    }

    #[test]
    fn bad_input_never_panics() {
        let mut jb = JitterBuffer::new(cfg());
        assert_eq!(
            jb.insert(Instant::ZERO, pkt(1, 1, 1, 0)),
            InsertOutcome::Invalid
        );
        let mut rng = SeededRng::new(99);
        for i in 0..5000u64 {
            let p = pkt(
                rng.next_u32() as u16,
                rng.next_u32(),
                rng.next_u32() % 3,
                rng.next_u32() % 5000,
            );
            jb.insert(Instant::from_micros(rng.next_u64() % 10_000_000), p);
            if i % 3 == 0 {
                let _ = jb.poll_timeout();
                let t = jb.tick(Instant::from_micros(i * 7_000));
                let n = t.steps().count();
                assert!(n <= MAX_STEPS);
                jb.consume(rng.next_u32() % 400);
            }
        }
    }
}
