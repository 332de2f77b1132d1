//! Cost of the N-party mixer per 20 ms tick (and per party), and what encoding
//! the full mix once per format saves. `cargo bench -p benches --bench mix`.
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

use std::hint::black_box;

use criterion::Criterion;
use media_core::analysis::speech_like;
use media_core::codec::{Codec, OpusFmtp};
use media_core::mix::{Mixer, MixerConfig, OutputGroup};
use media_core::pipeline::{Endpoint, FrameEncoder, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::rtp::{PayloadType, Ssrc};
use media_core::{Instant, Millis, SampleRate, SeededRng};

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

fn main() {
    let mut c = Criterion::default()
        .output_directory(&benches::criterion_dir())
        .configure_from_args();
    mixer_benches(&mut c);
    encode_benches(&mut c);
    c.final_summary();
    summary();
}
