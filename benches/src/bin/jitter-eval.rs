//! Jitter buffer evaluation against the hindsight-optimal playout delay.
//!
//! `cargo run --release -p benches --bin jitter-eval [-- --seed N]`
//!
//! Each scenario is a seeded network model (FIFO queueing with jitter, spikes,
//! heavy tails, reordering, bursty loss, clock drift, an SSRC change, DTX). The
//! sender's true send times are known, so a packet's jitter is exactly its arrival
//! minus (send time + base delay), and its playout delay is its playout time minus
//! the same. The hindsight-optimal fixed delay at late-loss rate r is the (1 - r)
//! quantile of the jitter (Moon, Kurose & Towsley 1998).
//!
//! "Late loss" counts every packet that missed its schedule: dropped as late, or
//! waited for behind concealment (an underrun frame). Either way the listener heard
//! concealment where the audio should have been.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use media_core::jitter::{JitterBuffer, JitterConfig, JitterPacket, Step, Stretch};
use media_core::rtp::{RtpTimestamp, SeqNo, Ssrc};
use media_core::time::{ClockRate, Instant, Millis, SeededRng};

/// One packet of a trace.
#[derive(Clone, Debug)]
struct Pkt {
    seq: u16,
    ts: u32,
    ssrc: u32,
    marker: bool,
    /// True send time and ideal (zero-jitter) arrival, us.
    ideal_us: i64,
    /// Arrival, us; None when the network lost it.
    arrival_us: Option<i64>,
}

struct Trace {
    name: &'static str,
    clock: u32,
    frame_ticks: u32,
    packets: Vec<Pkt>,
}

/// Network delay/loss models.
struct Net<'a> {
    rng: &'a mut SeededRng,
}

impl Net<'_> {
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.rng.next_f64().max(1e-12), self.rng.next_f64());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Gamma(shape, scale) by Marsaglia-Tsang (shape >= 1).
    fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.rng.next_f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v * scale;
            }
        }
    }
    fn pareto(&mut self, xm: f64, alpha: f64) -> f64 {
        xm / (1.0 - self.rng.next_f64()).powf(1.0 / alpha) - xm
    }
}

#[derive(Clone, Copy)]
enum Jitter {
    Gamma { shape: f64, scale_ms: f64 },
    Pareto { xm_ms: f64, alpha: f64 },
}

struct Spec {
    name: &'static str,
    seconds: f64,
    jitter: Jitter,
    /// (mean interval s, min ms, max ms) of stall spikes.
    spikes: Option<(f64, f64, f64)>,
    /// Fraction of packets delayed past their successors by 1-3 packet times.
    reorder: f64,
    /// Gilbert-Elliott (p good->bad, p bad->good), loss in bad state only.
    burst_loss: Option<(f64, f64)>,
    /// Sender clock error (+0.005 = 0.5 % fast).
    skew: f64,
    ssrc_change_at: Option<f64>,
    /// Talkspurt and silence lengths (s) for DTX.
    dtx: Option<((f64, f64), (f64, f64))>,
    clock: u32,
}

fn build(spec: &Spec, seed: u64) -> Trace {
    let mut rng = SeededRng::new(seed);
    let frame_ms = 20.0;
    let frame_ticks = spec.clock / 50;
    let n = (spec.seconds * 1000.0 / frame_ms) as usize;
    let base_us = 40_000.0;
    let mut packets = Vec::with_capacity(n);
    let (mut ssrc, mut seq, mut ts) = (rng.next_u32(), rng.next_u32() as u16, rng.next_u32() >> 4);
    let mut spike_until = -1.0f64;
    let mut next_spike = spec
        .spikes
        .map_or(f64::MAX, |(m, _, _)| rng.next_f64() * m * 2.0);
    let mut ge_bad = false;
    let mut last_arrival = 0.0f64;
    let mut talk_left = 0usize;
    let mut i = 0usize;
    let mut changed = false;
    let mut marker = true;
    while i < n {
        // DTX: alternate talkspurts and silences (silence sends nothing, but the
        // timestamp moves on; sequence numbers do not).
        if let Some(((t0, t1), (s0, s1))) = spec.dtx {
            if talk_left == 0 {
                if i > 0 {
                    let silence = s0 + rng.next_f64() * (s1 - s0);
                    let frames = (silence * 1000.0 / frame_ms) as usize;
                    ts = ts.wrapping_add(frames as u32 * frame_ticks);
                    i += frames;
                    marker = true;
                }
                talk_left = ((t0 + rng.next_f64() * (t1 - t0)) * 1000.0 / frame_ms) as usize;
                continue;
            }
            talk_left -= 1;
        }
        if let Some(at) = spec.ssrc_change_at
            && !changed
            && i as f64 * frame_ms / 1000.0 >= at
        {
            changed = true;
            (ssrc, seq, ts) = (rng.next_u32(), rng.next_u32() as u16, rng.next_u32() >> 4);
            marker = true;
        }
        // True send time under sender clock skew.
        let send_us = i as f64 * frame_ms * 1000.0 / (1.0 + spec.skew);
        let ideal = send_us + base_us;
        let mut net = Net { rng: &mut rng };
        let mut j_ms = match spec.jitter {
            Jitter::Gamma { shape, scale_ms } => net.gamma(shape, scale_ms),
            Jitter::Pareto { xm_ms, alpha } => net.pareto(xm_ms, alpha).min(1000.0),
        };
        let t_s = send_us / 1e6;
        if t_s >= next_spike
            && let Some((m, lo, hi)) = spec.spikes
        {
            spike_until = t_s + (lo + net.rng.next_f64() * (hi - lo)) / 1000.0;
            next_spike = t_s + net.rng.next_f64() * m * 2.0 + 1.0;
        }
        if t_s < spike_until {
            // A stall: everything sent now is released when it ends.
            j_ms = j_ms.max((spike_until - t_s) * 1000.0);
        }
        let mut lost = false;
        if let Some((gb, bg)) = spec.burst_loss {
            ge_bad = if ge_bad {
                net.rng.next_f64() >= bg
            } else {
                net.rng.next_f64() < gb
            };
            lost = ge_bad;
        }
        let reordered = spec.reorder > 0.0 && net.rng.chance(spec.reorder);
        let mut arrival = ideal + j_ms * 1000.0;
        if reordered {
            // Overtaken by 1-3 successors: not subject to FIFO.
            arrival += (1.0 + (net.rng.next_u32() % 3) as f64) * frame_ms * 1000.0;
        } else {
            arrival = arrival.max(last_arrival);
            last_arrival = arrival;
        }
        packets.push(Pkt {
            seq,
            ts,
            ssrc,
            marker,
            ideal_us: ideal as i64,
            arrival_us: (!lost).then_some(arrival as i64),
        });
        marker = false;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(frame_ticks);
        i += 1;
    }
    Trace {
        name: spec.name,
        clock: spec.clock,
        frame_ticks,
        packets,
    }
}

#[derive(Default)]
struct Row {
    mean_ms: f64,
    p95_ms: f64,
    late_pct: f64,
    concealed_pct: f64,
    opt_ms: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Jitter of every received packet, sorted (ms).
fn jitters(trace: &Trace) -> Vec<f64> {
    let mut j: Vec<f64> = trace
        .packets
        .iter()
        .filter_map(|p| p.arrival_us.map(|a| (a - p.ideal_us) as f64 / 1000.0))
        .collect();
    j.sort_by(f64::total_cmp);
    j
}

/// The hindsight-optimal fixed delay at late-loss rate `late` (fraction).
fn optimum(jitter: &[f64], late: f64) -> f64 {
    quantile(jitter, (1.0 - late).clamp(0.0, 1.0))
}

/// How the buffer is clocked: by its own `poll_timeout` (the SBC sending frames
/// into the network), or by a fixed 20 ms clock (a sound card, a paced consumer).
#[derive(Clone, Copy, PartialEq)]
enum Clocking {
    Own,
    Fixed,
}

fn run_adaptive(trace: &Trace, mut cfg: JitterConfig, seed: u64, clocking: Clocking) -> Row {
    cfg.external_clock = clocking == Clocking::Fixed;
    let mut jb = JitterBuffer::new(cfg);
    let frame = trace.frame_ticks;
    let tick_us = 20_000i64;
    let mut arrivals: Vec<&Pkt> = trace
        .packets
        .iter()
        .filter(|p| p.arrival_us.is_some())
        .collect();
    arrivals.sort_by_key(|p| p.arrival_us);
    // Packet lookup by (ssrc, ts): when did its media play?
    let index: BTreeMap<(u32, i64), &Pkt> = trace
        .packets
        .iter()
        .map(|p| ((p.ssrc, p.ts as i64), p))
        .collect();
    // A fixed clock starts at a random phase against the packets.
    let mut rng = SeededRng::new(seed ^ 0x7e57);
    let mut fixed = arrivals[0].arrival_us.unwrap_or(0) + (rng.next_f64() * tick_us as f64) as i64;
    let end = arrivals.last().and_then(|p| p.arrival_us).unwrap_or(0) + 1_000_000;
    let mut next = 0usize;
    let mut delays = Vec::new();
    let mut seen: HashSet<(u32, i64)> = HashSet::new();
    let mut current_ssrc = arrivals[0].ssrc;
    let pitch = cfg.clock.0 * 5 / 1000; // stretch by a 5 ms pitch period
    let mut played_ticks = 0u64;
    let mut now = 0i64;
    loop {
        let arrival = arrivals
            .get(next)
            .and_then(|p| p.arrival_us)
            .unwrap_or(i64::MAX);
        let due = match clocking {
            Clocking::Own => jb.poll_timeout().map_or(i64::MAX, |d| d.as_micros() as i64),
            Clocking::Fixed => fixed,
        };
        if arrival.min(due) >= end {
            break;
        }
        if arrival <= due {
            let p = arrivals[next];
            let packet = JitterPacket {
                sequence_number: SeqNo(p.seq),
                timestamp: RtpTimestamp(p.ts),
                ssrc: Ssrc(p.ssrc),
                marker: p.marker,
                duration: frame,
                fec: false,
                payload: Bytes::new(),
            };
            jb.insert(Instant::from_micros(arrival as u64), packet);
            now = arrival;
            current_ssrc = p.ssrc;
            next += 1;
            continue;
        }
        // A timeout that fell into the past (an arrival moved it) is handled now.
        let t = due.max(now);
        now = t;
        fixed += tick_us;
        let tick = jb.tick(Instant::from_micros(t as u64));
        for s in tick.steps() {
            if let Step::Decode { ticks, .. } | Step::RecoverFec { ticks, .. } = s {
                played_ticks += *ticks as u64;
            }
        }
        let consumed = match tick.stretch {
            Stretch::Accelerate { max_ticks } if max_ticks >= pitch => frame + pitch,
            Stretch::Expand { max_ticks } if max_ticks >= pitch => frame - pitch,
            _ => frame,
        };
        // Media played this frame: [head, head + consumed - ahead).
        if let Some((head, ahead)) = jb.head_media()
            && ahead < consumed
        {
            let until = head + (consumed - ahead) as i64;
            for (&(ssrc, m), p) in index.range((current_ssrc, head)..(current_ssrc, until)) {
                if seen.insert((ssrc, m)) {
                    let at = t + (ahead as i64 + m - head) * 1_000_000 / trace.clock as i64;
                    delays.push((at - p.ideal_us) as f64 / 1000.0);
                }
            }
        }
        jb.consume(consumed);
    }
    let s = *jb.stats();
    if std::env::var_os("JITTER_EVAL_DEBUG").is_some() {
        eprintln!(
            "  {} [{}]: {s:?}",
            trace.name,
            if clocking == Clocking::Own {
                "own clock"
            } else {
                "fixed clock"
            }
        );
    }
    let received = arrivals.len() as f64;
    let underrun_frames = s.underrun_ticks as f64 / frame as f64;
    let late = (s.late as f64 + underrun_frames) / received;
    delays.sort_by(f64::total_cmp);
    let mean = delays.iter().sum::<f64>() / delays.len().max(1) as f64;
    let concealed = (s.concealed_ticks + s.underrun_ticks) as f64;
    Row {
        mean_ms: mean,
        p95_ms: quantile(&delays, 0.95),
        late_pct: 100.0 * late,
        concealed_pct: 100.0 * concealed / (concealed + played_ticks as f64).max(1.0),
        opt_ms: optimum(&jitters(trace), late),
    }
}

fn run_fixed(trace: &Trace, delay_ms: f64) -> Row {
    let j = jitters(trace);
    let late = j.iter().filter(|&&x| x > delay_ms).count() as f64 / j.len().max(1) as f64;
    let lost = trace
        .packets
        .iter()
        .filter(|p| p.arrival_us.is_none())
        .count() as f64;
    Row {
        mean_ms: delay_ms,
        p95_ms: delay_ms,
        late_pct: 100.0 * late,
        concealed_pct: 100.0 * (late * j.len() as f64 + lost) / trace.packets.len() as f64,
        opt_ms: optimum(&j, late),
    }
}

fn specs() -> Vec<Spec> {
    let base = |name| Spec {
        name,
        seconds: 120.0,
        jitter: Jitter::Gamma {
            shape: 2.0,
            scale_ms: 2.5,
        },
        spikes: None,
        reorder: 0.0,
        burst_loss: None,
        skew: 0.0,
        ssrc_change_at: None,
        dtx: None,
        clock: 8000,
    };
    vec![
        Spec {
            jitter: Jitter::Gamma {
                shape: 2.0,
                scale_ms: 0.5,
            },
            ..base("LAN (1 ms jitter)")
        },
        Spec {
            jitter: Jitter::Gamma {
                shape: 2.0,
                scale_ms: 5.0,
            },
            spikes: Some((15.0, 100.0, 200.0)),
            ..base("Wi-Fi (gamma 10 ms + spikes)")
        },
        Spec {
            jitter: Jitter::Pareto {
                xm_ms: 5.0,
                alpha: 2.0,
            },
            ..base("mobile (Pareto)")
        },
        Spec {
            jitter: Jitter::Gamma {
                shape: 2.0,
                scale_ms: 1.0,
            },
            reorder: 0.02,
            ..base("reorder 2% by 1-3")
        },
        Spec {
            burst_loss: Some((0.01754, 1.0 / 3.0)),
            ..base("bursty loss (GE 5%)")
        },
        Spec {
            skew: 0.005,
            seconds: 600.0,
            ..base("sender clock +0.5%")
        },
        Spec {
            skew: -0.005,
            seconds: 600.0,
            ..base("sender clock -0.5%")
        },
        Spec {
            ssrc_change_at: Some(60.0),
            ..base("SSRC change")
        },
        Spec {
            jitter: Jitter::Gamma {
                shape: 2.0,
                scale_ms: 5.0,
            },
            dtx: Some(((1.0, 3.0), (1.0, 5.0))),
            clock: 48000,
            ..base("Opus DTX, long silences")
        },
    ]
}

/// `--name VALUE` from the command line.
fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seed: u64 = arg(&args, "--seed").unwrap_or(1);
    let quantile: Option<f64> = arg(&args, "--quantile");
    let forget: Option<f64> = arg(&args, "--forget");
    let min_delay: Option<u32> = arg(&args, "--min-delay");
    let only: Option<String> = arg(&args, "--only");
    println!(
        "jitter-eval (seed {seed}): playout delay over ideal (zero-jitter) arrival; late = missed schedule"
    );
    println!(
        "{:<30} {:<9} {:>8} {:>8} {:>7} {:>10} {:>8} {:>7} {:>9}",
        "scenario",
        "buffer",
        "mean ms",
        "p95 ms",
        "late %",
        "concealed%",
        "opt ms",
        "ratio",
        "opt@1% ms"
    );
    let mut worst = Vec::new();
    for (k, spec) in specs().iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| !spec.name.contains(o.as_str()))
        {
            continue;
        }
        let trace = build(spec, seed.wrapping_mul(1000) + k as u64);
        let mut cfg = JitterConfig::new(ClockRate(trace.clock));
        cfg.quantile = quantile.unwrap_or(cfg.quantile);
        cfg.forget = forget.unwrap_or(cfg.forget);
        cfg.min_delay = min_delay.map_or(cfg.min_delay, Millis);
        for (label, row) in [
            ("adaptive", run_adaptive(&trace, cfg, seed, Clocking::Own)),
            ("adapt/20", run_adaptive(&trace, cfg, seed, Clocking::Fixed)),
            ("fixed 60", run_fixed(&trace, 60.0)),
        ] {
            let ratio = row.mean_ms / row.opt_ms.max(1e-3);
            let opt1 = optimum(&jitters(&trace), 0.01);
            println!(
                "{:<30} {:<9} {:>8.1} {:>8.1} {:>7.2} {:>10.2} {:>8.1} {:>7.2} {:>9.1}",
                trace.name,
                label,
                row.mean_ms,
                row.p95_ms,
                row.late_pct,
                row.concealed_pct,
                row.opt_ms,
                ratio,
                opt1
            );
            if label == "adaptive" && (row.late_pct > 1.0 || ratio > 1.25) {
                worst.push(format!(
                    "{} (late {:.2}%, ratio {:.2})",
                    trace.name, row.late_pct, ratio
                ));
            }
        }
    }
    if worst.is_empty() {
        println!("\nevery scenario: late <= 1% and mean delay <= 1.25x the hindsight optimum");
    } else {
        println!(
            "\nshort of the goal (late <= 1%, ratio <= 1.25): {}",
            worst.join("; ")
        );
    }
}
