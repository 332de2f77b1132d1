//! Cost of the N-party mixer per 20 ms tick (and per party), what encoding the
//! full mix once per format saves, and a whole conference call's media beside
//! the codec calls it needs. `cargo bench -p benches --bench mix`.
//!
//! * `mix/{8k,16k}_{3,5,10}p_{all,all_quiet,one}`: one tick of a mixer with every party
//!   present: the inputs copied in, `mix()`, every output read. `all`: every
//!   party talks (speech-like, peaks near -7 dBFS, so with 3 and more the
//!   limiters work too); `all_quiet`: every party talks 18 dB lower, so the
//!   sums stay under the limiters' ceiling (the mixing alone); `one`: one talks
//!   and the rest send line noise at -64 dBFS, under the talk threshold (the
//!   common conference case).
//! * `mix_encode/{opus,pcmu}_10p_one_{own,shared}`: that 16 kHz tick for 10
//!   listeners with one talker, plus encoding and packetizing every listener's
//!   frame: each with its own encoder (`own`), or the full mix encoded once by a
//!   `FrameEncoder` and packetized per listener with `handle_encoded` (`shared`).
//! * `call/{3,5}p_{one,one_only,all}`: a whole call's media (sip-bridge's
//!   `MediaSession`) per 20 ms: PCMU SIP legs and Opus legs standing in for
//!   browsers (`useinbandfec=1`), alternating, each hearing all the others, so
//!   mixed at 16 kHz. Every sending party's packet in, the session's tick
//!   (jitter buffers on the call clock, decode, mix, encode, packetize), what
//!   it sends polled out. `one`: party 0 (PCMU) talks and the others send line
//!   noise under the talk threshold (phones and browsers keep sending);
//!   `one_only`: only the talker sends (the others muted at their end, or DTX);
//!   `all`: everyone talks.
//! * `call_raw/{3,5}p_{one,one_only,all}_{listener,distinct}`: in the same run,
//!   the bare codec calls that call needs, with the pipelines' settings: a
//!   decode of every packet received (G.711 at 8 kHz, Opus to 16 kHz) and an
//!   encode of what each listener hears (`listener`: one per listener, as
//!   separate transcodes would; `distinct`: one per distinct frame and format,
//!   the fewest possible). The summary prints the call over each.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use criterion::Criterion;
use media_core::analysis::speech_like;
use media_core::codec::{AudioDecoder, AudioEncoder, Codec, OpusEncoderConfig, OpusFmtp};
use media_core::mix::{Mixer, MixerConfig, OutputGroup};
use media_core::pipeline::{
    EncoderKey, Endpoint, FrameEncoder, MediaPipeline, PipelineConfig, RtpFormat,
};
use media_core::rtp::{PayloadType, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{Instant, Millis, SampleRate, SeededRng};
use sip_bridge::bridge::{Feed, LegKey, MediaCommand};
use sip_bridge::media::{MediaConfig, MediaSession};

/// 50 frames per party: speech-like for talkers (each from another point of the
/// signal, divided by `quieter`), noise under the talk threshold for the others.
fn party_frames(
    rate: SampleRate,
    parties: usize,
    talkers: usize,
    quieter: i16,
) -> Vec<Vec<Vec<i16>>> {
    let n = rate.samples_in(Millis(20));
    let speech = speech_like(rate.hz(), n * 50 * (parties + 1));
    let mut rng = SeededRng::new(7);
    (0..parties)
        .map(|p| {
            (0..50)
                .map(|f| {
                    if p < talkers {
                        let at = (p * 37 + f) * n;
                        speech[at..at + n].iter().map(|&v| v / quieter).collect()
                    } else {
                        (0..n)
                            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * 35.0) as i16)
                            .collect()
                    }
                })
                .collect()
        })
        .collect()
}

/// One tick: every party's frame in, mix, every output read.
fn tick(m: &mut Mixer, frames: &[Vec<Vec<i16>>], i: usize) -> i32 {
    for (p, f) in frames.iter().enumerate() {
        m.set_input(p, &f[i % f.len()]).unwrap();
    }
    m.mix();
    (0..frames.len())
        .map(|l| m.output(l).unwrap()[7] as i32)
        .sum()
}

fn mixer_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("mix");
    for rate in [SampleRate::HZ_8000, SampleRate::HZ_16000] {
        for parties in [3, 5, 10] {
            for (name, talkers, quieter) in [
                ("all", parties, 1),
                ("all_quiet", parties, 8),
                ("one", 1, 1),
            ] {
                let frames = party_frames(rate, parties, talkers, quieter);
                let mut m = Mixer::new(MixerConfig::new(rate, parties)).unwrap();
                let mut i = 0;
                for _ in 0..50 {
                    i += 1;
                    tick(&mut m, &frames, i);
                }
                let id = format!("{}k_{parties}p_{name}", rate.hz() / 1000);
                g.bench_function(id, |b| {
                    b.iter(|| {
                        i += 1;
                        black_box(tick(&mut m, &frames, i))
                    })
                });
            }
        }
    }
    g.finish();
}

fn format(codec: Codec) -> RtpFormat {
    match codec {
        Codec::Opus => RtpFormat {
            opus: Some(OpusFmtp::parse("useinbandfec=1")),
            ..RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap())
        },
        c => RtpFormat::new(c, c.static_payload_type().unwrap()),
    }
}

fn encode_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("mix_encode");
    let rate = SampleRate::HZ_16000;
    let parties = 10;
    let frames = party_frames(rate, parties, 1, 1);
    for codec in [Codec::Opus, Codec::Pcmu] {
        let config = |l: usize| {
            PipelineConfig::new(
                Endpoint::Pcm(rate),
                Endpoint::Rtp(format(codec)),
                Ssrc(l as u32),
                l as u64,
            )
        };
        for shared_encoder in [false, true] {
            let mut m = Mixer::new(MixerConfig::new(rate, parties)).unwrap();
            let mut outs: Vec<MediaPipeline> = (0..parties)
                .map(|l| MediaPipeline::new(config(l)).unwrap())
                .collect();
            let mut shared = FrameEncoder::for_output(&config(0)).unwrap();
            let mut i = 0usize;
            let mut run = |i: usize| {
                tick(&mut m, &frames, i);
                let now = Instant::from_micros(i as u64 * 20_000);
                let payload = if shared_encoder {
                    Some(shared.encode(m.full_mix()).unwrap())
                } else {
                    None
                };
                let mut bytes = 0;
                for (l, p) in outs.iter_mut().enumerate() {
                    match payload {
                        Some(payload) if m.output_group(l).unwrap() == OutputGroup::FULL_MIX => {
                            p.handle_encoded(now, payload).unwrap()
                        }
                        _ => p.handle_pcm(now, m.output(l).unwrap()).unwrap(),
                    }
                    while let Some(o) = p.poll_packet() {
                        bytes += o.bytes.len();
                    }
                }
                bytes
            };
            for _ in 0..50 {
                i += 1;
                run(i);
            }
            let name = match codec {
                Codec::Opus => "opus",
                _ => "pcmu",
            };
            let how = if shared_encoder { "shared" } else { "own" };
            g.bench_function(format!("{name}_10p_one_{how}"), |b| {
                b.iter(|| {
                    i += 1;
                    black_box(run(i))
                })
            });
        }
    }
    g.finish();
}

// ----- a whole call: sip-bridge's MediaSession -----

/// The parties of the `call` benches: PCMU SIP legs and Opus legs standing in
/// for browsers, alternating.
const CALLS: [(usize, &[Codec]); 2] = [
    (3, &[Codec::Pcmu, Codec::Opus, Codec::Pcmu]),
    (
        5,
        &[
            Codec::Pcmu,
            Codec::Opus,
            Codec::Pcmu,
            Codec::Opus,
            Codec::Pcmu,
        ],
    ),
];

/// Who talks and who sends, see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Talk {
    One,
    OneOnly,
    All,
}

impl Talk {
    const ALL: [Talk; 3] = [Talk::One, Talk::OneOnly, Talk::All];

    fn name(self) -> &'static str {
        match self {
            Talk::One => "one",
            Talk::OneOnly => "one_only",
            Talk::All => "all",
        }
    }

    fn talks(self, party: usize) -> bool {
        self == Talk::All || party == 0
    }

    fn sends(self, party: usize) -> bool {
        self != Talk::OneOnly || party == 0
    }
}

/// Frames in each party's cycle of payloads (5 s).
const CYCLE: usize = 250;

/// What a leg of `codec` negotiated: a browser's Opus asks for in-band FEC.
fn call_format(codec: Codec) -> RtpFormat {
    match codec {
        Codec::Opus => RtpFormat {
            opus: Some(OpusFmtp::parse("minptime=10;useinbandfec=1")),
            ..RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap())
        },
        c => RtpFormat::new(c, c.static_payload_type().unwrap()),
    }
}

fn call_peer(k: usize) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 1 + k as u8], 4000))
}

fn call_port(k: usize) -> u16 {
    20000 + 2 * k as u16
}

/// The speech-like signal at `rate`, long enough for every party's cycle
/// (made once: it is slow to make).
fn speech(rate: SampleRate) -> &'static [i16] {
    static SPEECH: [OnceLock<Vec<i16>>; 3] = [const { OnceLock::new() }; 3];
    let i = match rate.hz() {
        8000 => 0,
        16000 => 1,
        48000 => 2,
        r => panic!("no speech at {r} Hz here"),
    };
    SPEECH[i].get_or_init(|| speech_like(rate.hz(), rate.samples_in(Millis(20)) * (CYCLE + 37 * 5)))
}

/// Party `k`'s 20 ms frames at `rate`: speech (from its own point of the
/// signal) when it talks, else line noise under the talk threshold.
fn call_pcm(rate: SampleRate, k: usize, talks: bool) -> Vec<Vec<i16>> {
    let n = rate.samples_in(Millis(20));
    if talks {
        speech(rate)[n * 37 * k..n * (37 * k + CYCLE)]
            .chunks(n)
            .map(<[i16]>::to_vec)
            .collect()
    } else {
        let mut rng = SeededRng::new(k as u64);
        (0..CYCLE)
            .map(|_| {
                (0..n)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * 35.0) as i16)
                    .collect()
            })
            .collect()
    }
}

/// Party `k`'s payloads as its phone or browser sends them (a browser's Opus
/// from 48 kHz).
fn call_payloads(codec: Codec, k: usize, talks: bool) -> Vec<Vec<u8>> {
    let rate = if codec == Codec::Opus {
        SampleRate::HZ_48000
    } else {
        SampleRate::HZ_8000
    };
    let config = OpusEncoderConfig {
        sample_rate: rate,
        ..OpusEncoderConfig::default()
    };
    let mut enc = AudioEncoder::new(codec, config).unwrap();
    call_pcm(rate, k, talks)
        .iter()
        .map(|f| {
            let mut p = [0u8; 1500];
            let n = enc.encode(f, &mut p).unwrap();
            p[..n].to_vec()
        })
        .collect()
}

/// The call: every party hearing every other.
fn call_session(codecs: &[Codec]) -> MediaSession {
    let mut s = MediaSession::new(MediaConfig::new(None, 1));
    for (k, &codec) in codecs.iter().enumerate() {
        let cmd = MediaCommand::AddRtp {
            leg: LegKey(k as u32),
            local_port: call_port(k),
            remote: Some(call_peer(k)),
            format: call_format(codec),
            rtcp_mux: false,
            latch_from: None,
        };
        s.handle_command(Instant::ZERO, cmd);
    }
    for k in 0..codecs.len() {
        let feeds = (0..codecs.len())
            .filter(|&j| j != k)
            .map(|j| Feed::leg(LegKey(j as u32)))
            .collect();
        let cmd = MediaCommand::Hear {
            listener: LegKey(k as u32),
            feeds,
        };
        s.handle_command(Instant::ZERO, cmd);
    }
    s
}

/// A call on virtual time, fed a packet per sending party per 20 ms.
struct CallRun {
    s: MediaSession,
    /// Each party's codec and, if it sends, its cycle of payloads.
    parties: Vec<(Codec, Option<Vec<Vec<u8>>>)>,
    rx: BytesMut,
    now: Instant,
    tick: usize,
}

impl CallRun {
    fn new(codecs: &[Codec], talk: Talk) -> CallRun {
        let parties = codecs
            .iter()
            .enumerate()
            .map(|(k, &c)| (c, talk.sends(k).then(|| call_payloads(c, k, talk.talks(k)))))
            .collect();
        let s = call_session(codecs);
        assert!(s.mixing().is_some());
        CallRun {
            s,
            parties,
            rx: BytesMut::new(),
            now: Instant::ZERO,
            tick: 0,
        }
    }

    /// 20 ms of the call: each sending party's packet (split off a receive
    /// buffer, as the sbc's socket reader does), the session's timers, and
    /// what it sends taken and dropped. Returns the bytes sent.
    fn tick(&mut self) -> usize {
        let i = self.tick;
        self.tick += 1;
        let mut buf = [0u8; 1500];
        for (k, (codec, payloads)) in self.parties.iter().enumerate() {
            let Some(payloads) = payloads else { continue };
            let ticks = if *codec == Codec::Opus { 960 } else { 160 };
            let w = RtpWriter::new(
                call_format(*codec).payload_type,
                SeqNo(i as u16),
                RtpTimestamp((i as u32).wrapping_mul(ticks)),
                Ssrc(100 + k as u32),
            );
            let len = w
                .write_packet(&payloads[i % payloads.len()], &mut buf)
                .unwrap();
            if self.rx.capacity() < len {
                self.rx.reserve(64 * 1024);
            }
            self.rx.extend_from_slice(&buf[..len]);
            self.s
                .handle_rtp(self.now, call_port(k), call_peer(k), self.rx.split());
        }
        self.now += Duration::from_millis(20);
        while self.s.poll_timeout().is_some_and(|t| t <= self.now) {
            self.s.handle_timeout(self.now);
        }
        let mut n = 0;
        while let Some(t) = self.s.poll_transmit() {
            n += t.bytes.len();
        }
        n
    }
}

/// The bare codec calls of one tick of a call: decoders with their cycles of
/// payloads, encoders with their cycles of frames.
struct RawCalls {
    decodes: Vec<(AudioDecoder, Vec<Vec<u8>>)>,
    encodes: Vec<(AudioEncoder, Vec<Vec<i16>>)>,
    pcm: Vec<i16>,
    out: Vec<u8>,
    tick: usize,
}

impl RawCalls {
    /// What `codecs` talking as `talk` need, mixed at 16 kHz: a decode of each
    /// packet received, and an encode of what each listener hears (`distinct`:
    /// of each distinct frame per format), with the encoders' settings taken
    /// as the session's pipelines take them.
    fn new(codecs: &[Codec], talk: Talk, distinct: bool) -> RawCalls {
        let mix_rate = SampleRate::HZ_16000;
        let decodes = codecs
            .iter()
            .enumerate()
            .filter(|(k, _)| talk.sends(*k))
            .map(|(k, &c)| {
                let dec = AudioDecoder::new(c, mix_rate).unwrap();
                (dec, call_payloads(c, k, talk.talks(k)))
            })
            .collect();
        // What listener `l` hears in `codec`: the sum of the other talkers.
        let heard = |l: usize, codec: Codec| -> Vec<Vec<i16>> {
            let rate = codec.pcm_rate_toward(mix_rate);
            let talkers: Vec<Vec<Vec<i16>>> = (0..codecs.len())
                .filter(|&t| t != l && talk.talks(t))
                .map(|t| call_pcm(rate, t, true))
                .collect();
            (0..CYCLE)
                .map(|f| {
                    (0..rate.samples_in(Millis(20)))
                        .map(|i| {
                            let sum: i32 = talkers.iter().map(|t| i32::from(t[f][i])).sum();
                            sum.clamp(-32768, 32767) as i16
                        })
                        .collect()
                })
                .collect()
        };
        let opus = MediaConfig::new(None, 1).opus;
        let encoder = |codec: Codec| {
            let key = EncoderKey::new(mix_rate, &call_format(codec), opus);
            AudioEncoder::new(codec, key.opus.unwrap_or(opus)).unwrap()
        };
        let mut encodes = Vec::new();
        let mut full_mix_done = Vec::new();
        for (l, &codec) in codecs.iter().enumerate() {
            // Non-talkers all hear the full mix.
            if distinct && !talk.talks(l) {
                if full_mix_done.contains(&codec) {
                    continue;
                }
                full_mix_done.push(codec);
            }
            encodes.push((encoder(codec), heard(l, codec)));
        }
        RawCalls {
            decodes,
            encodes,
            pcm: vec![0; 5760],
            out: vec![0; 1500],
            tick: 0,
        }
    }

    fn tick(&mut self) -> usize {
        let i = self.tick % CYCLE;
        self.tick += 1;
        let mut n = 0;
        for (dec, payloads) in &mut self.decodes {
            n += dec.decode(black_box(&payloads[i]), &mut self.pcm).unwrap();
        }
        for (enc, frames) in &mut self.encodes {
            n += enc.encode(black_box(&frames[i]), &mut self.out).unwrap();
        }
        n
    }
}

/// Encodes a call's session counted per tick (`MediaStats::mix_encodes`), over
/// 100 ticks.
fn encodes_per_tick(run: &mut CallRun) -> f64 {
    let before = run.s.stats();
    for _ in 0..100 {
        run.tick();
    }
    let after = run.s.stats();
    (after.mix_encodes - before.mix_encodes) as f64 / (after.mix_ticks - before.mix_ticks) as f64
}

/// The call's time over its raw codec calls', measured in turns (50 ticks of
/// each, 40 times over), so that what else runs on the machine falls on both
/// alike: the median of the turns' ratios.
fn paired_ratio(run: &mut CallRun, raw: &mut RawCalls) -> f64 {
    let time = |f: &mut dyn FnMut() -> usize| {
        #[allow(clippy::disallowed_methods)] // measuring is the point here
        let t = std::time::Instant::now();
        for _ in 0..50 {
            black_box(f());
        }
        t.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..40)
        .map(|_| time(&mut || run.tick()) / time(&mut || raw.tick()))
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// What the `call` benches found beyond criterion's times, for the summary.
#[derive(Debug)]
struct CallFigures {
    id: String,
    encodes: f64,
    /// ("listener" or "distinct", the paired ratio).
    paired: Vec<(&'static str, f64)>,
}

fn call_benches(c: &mut Criterion) -> Vec<CallFigures> {
    let mut figures = Vec::new();
    for (parties, codecs) in CALLS {
        for talk in Talk::ALL {
            let id = format!("{parties}p_{}", talk.name());
            // Built only when criterion's filter takes the bench: it takes a while.
            let setup = || {
                let mut run = CallRun::new(codecs, talk);
                for _ in 0..50 {
                    run.tick();
                }
                run
            };
            let mut run: Option<CallRun> = None;
            let mut g = c.benchmark_group("call");
            g.measurement_time(Duration::from_secs(3));
            g.warm_up_time(Duration::from_secs(1));
            g.bench_function(&id, |b| {
                let run = run.get_or_insert_with(setup);
                b.iter(|| black_box(run.tick()))
            });
            g.finish();
            let mut g = c.benchmark_group("call_raw");
            g.measurement_time(Duration::from_secs(3));
            g.warm_up_time(Duration::from_secs(1));
            let mut paired = Vec::new();
            for distinct in [false, true] {
                // With everyone talking, every listener's frame is distinct.
                if distinct && talk == Talk::All {
                    continue;
                }
                let how = if distinct { "distinct" } else { "listener" };
                let mut raw: Option<RawCalls> = None;
                g.bench_function(format!("{id}_{how}"), |b| {
                    let raw = raw.get_or_insert_with(|| RawCalls::new(codecs, talk, distinct));
                    b.iter(|| black_box(raw.tick()))
                });
                if let (Some(run), Some(raw)) = (run.as_mut(), raw.as_mut()) {
                    paired.push((how, paired_ratio(run, raw)));
                }
            }
            g.finish();
            if let Some(run) = run.as_mut() {
                figures.push(CallFigures {
                    id,
                    encodes: encodes_per_tick(run),
                    paired,
                });
            }
        }
    }
    figures
}

fn summary() {
    let m = benches::mean_ns;
    println!("\nmixer cost per 20 ms tick, and per party");
    println!("{:<16} {:>12} {:>14}", "case", "per tick", "per party");
    for rate in [8, 16] {
        for parties in [3, 5, 10] {
            for name in ["all", "all_quiet", "one"] {
                let id = format!("{rate}k_{parties}p_{name}");
                if let Some(ns) = m("mix", &id) {
                    println!(
                        "{id:<20} {:>9.2} us {:>11.0} ns",
                        ns / 1e3,
                        ns / parties as f64
                    );
                }
            }
        }
    }
    println!("\n10 listeners, one talker, mix + encode + packetize per tick");
    for name in ["opus", "pcmu"] {
        let own = m("mix_encode", &format!("{name}_10p_one_own"));
        let shared = m("mix_encode", &format!("{name}_10p_one_shared"));
        if let (Some(own), Some(shared)) = (own, shared) {
            println!(
                "{name:<6} own encoders {:>8.1} us, full mix encoded once {:>8.1} us ({:.2}x)",
                own / 1e3,
                shared / 1e3,
                own / shared
            );
        }
    }
}

fn call_summary(figures: &[CallFigures]) {
    if figures.is_empty() {
        return;
    }
    let m = benches::mean_ns;
    let opus = MediaConfig::new(None, 1).opus;
    if let Some(o) = EncoderKey::new(SampleRate::HZ_16000, &call_format(Codec::Opus), opus).opus {
        println!(
            "\na call's media per 20 ms beside its raw codec calls (mixed at 16 kHz; \
             Opus encoded at complexity {}, FEC {}, {} bit/s)",
            o.complexity.resolve(o.sample_rate, o.bitrate),
            o.inband_fec,
            o.bitrate.unwrap_or(0)
        );
    }
    println!(
        "raw: an encode per listener, or per distinct frame and format; \
         ratios of criterion's means, and [the median of paired turns]"
    );
    println!(
        "{:<12} {:>9} {:>26} {:>26} {:>8}",
        "call", "session", "raw per listener", "raw per distinct frame", "encodes"
    );
    for f in figures {
        let Some(call) = m("call", &f.id) else {
            continue;
        };
        // With everyone talking the two are the same calls, measured once.
        let cell = |how: &str| {
            let raw = m("call_raw", &format!("{}_{how}", f.id))
                .or_else(|| m("call_raw", &format!("{}_listener", f.id)));
            let paired = f
                .paired
                .iter()
                .find(|(h, _)| *h == how)
                .or_else(|| f.paired.first())
                .map(|(_, r)| *r);
            match (raw, paired) {
                (Some(r), Some(p)) => {
                    format!("{:>7.1} us {:>5.2}x [{:>5.2}x]", r / 1e3, call / r, p)
                }
                _ => format!("{:>26}", "-"),
            }
        };
        println!(
            "{:<12} {:>6.1} us {} {} {:>8.1}",
            f.id,
            call / 1e3,
            cell("listener"),
            cell("distinct"),
            f.encodes
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&benches::criterion_dir())
        .configure_from_args();
    mixer_benches(&mut c);
    encode_benches(&mut c);
    let calls = call_benches(&mut c);
    c.final_summary();
    summary();
    call_summary(&calls);
}
