//! Cost per 20 ms frame of every media stage, and of the full pipelines beside the
//! sum of their raw codec calls (the overhead ratio). `cargo bench -p benches --bench media`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use media_core::analysis::{sine, speech_like};
use media_core::codec::{Codec, OpusComplexity, OpusDecoder, OpusEncoder, OpusEncoderConfig, g711};
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::resample::Resampler;
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{Instant, Millis, SampleRate};

fn opus_config(rate: SampleRate) -> OpusEncoderConfig {
    OpusEncoderConfig {
        sample_rate: rate,
        ..OpusEncoderConfig::default()
    }
}

fn g711_benches(c: &mut Criterion) {
    let pcm = speech_like(8000, 160);
    let mut codes = [0u8; 160];
    let mut out = [0i16; 160];
    g711::ulaw_encode(&pcm, &mut codes);
    let mut g = c.benchmark_group("g711");
    g.bench_function("pcmu_encode", |b| {
        b.iter(|| g711::ulaw_encode(black_box(&pcm), &mut codes))
    });
    g.bench_function("pcmu_decode", |b| {
        b.iter(|| g711::ulaw_decode(black_box(&codes), &mut out))
    });
    g.bench_function("pcma_encode", |b| {
        b.iter(|| g711::alaw_encode(black_box(&pcm), &mut codes))
    });
    g.bench_function("pcma_decode", |b| {
        b.iter(|| g711::alaw_decode(black_box(&codes), &mut out))
    });
    g.finish();
}

/// 50 frames of speech-like audio encoded at `rate`, to cycle through.
fn opus_frames(rate: SampleRate) -> (Vec<Vec<i16>>, Vec<Vec<u8>>) {
    let n = rate.samples_in(Millis(20));
    let pcm = speech_like(rate.hz(), n * 50);
    let mut enc = OpusEncoder::new(opus_config(rate)).unwrap();
    let frames: Vec<Vec<i16>> = pcm.chunks(n).map(<[i16]>::to_vec).collect();
    let packets = frames
        .iter()
        .map(|f| {
            let mut p = [0u8; 1500];
            let l = enc.encode(f, &mut p).unwrap();
            p[..l].to_vec()
        })
        .collect();
    (frames, packets)
}

/// Encoding `frames` in turn with an encoder of `config`, per 20 ms frame.
fn bench_encode(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: String,
    config: OpusEncoderConfig,
    frames: &[Vec<i16>],
) {
    let mut enc = OpusEncoder::new(config).unwrap();
    let mut buf = [0u8; 1500];
    let mut i = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            enc.encode(black_box(&frames[i]), &mut buf).unwrap()
        })
    });
}

fn opus_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("opus");
    // Toward a receiver without `useinbandfec=1` (RFC 7587 section 6.1), as the
    // SIPp far end of the transcode load test: no LBRR encode.
    let no_fec = OpusEncoderConfig {
        inband_fec: false,
        ..opus_config(SampleRate::HZ_8000)
    };
    let (frames, _) = opus_frames(SampleRate::HZ_8000);
    bench_encode(&mut g, "encode_8k_no_fec".into(), no_fec, &frames);
    for rate in [SampleRate::HZ_8000, SampleRate::HZ_48000] {
        let (frames, packets) = opus_frames(rate);
        let name = format!("encode_{}k", rate.hz() / 1000);
        bench_encode(&mut g, name, opus_config(rate), &frames);
        let mut dec = OpusDecoder::new(rate).unwrap();
        let mut pcm = vec![0i16; 5760];
        let mut i = 0;
        g.bench_function(format!("decode_{}k", rate.hz() / 1000), |b| {
            b.iter(|| {
                i = (i + 1) % packets.len();
                dec.decode(black_box(&packets[i]), &mut pcm).unwrap()
            })
        });
    }
    g.finish();
    opus_call_benches(c, no_fec);
}

/// The codec work of one transcoded call's 20 ms (an Opus encode toward the far
/// end and a decode of what it sent back), for 1 call and cycling through 256
/// calls: a busy sbc touches each call's codec state once per 20 ms, long after
/// the caches have moved on, so the second is the codec's price in the load test.
fn opus_call_benches(c: &mut Criterion, config: OpusEncoderConfig) {
    let mut g = c.benchmark_group("opus_call");
    let (frames, packets) = opus_frames(SampleRate::HZ_8000);
    for calls in [1usize, 256] {
        let mut codecs: Vec<(OpusEncoder, OpusDecoder)> = (0..calls)
            .map(|_| {
                let enc = OpusEncoder::new(config).unwrap();
                (enc, OpusDecoder::new(SampleRate::HZ_8000).unwrap())
            })
            .collect();
        let mut buf = [0u8; 1500];
        let mut pcm = vec![0i16; 960];
        let (mut call, mut i) = (0, 0);
        g.bench_function(format!("encode_decode_8k_no_fec/{calls}"), |b| {
            b.iter(|| {
                call = (call + 1) % calls;
                if call == 0 {
                    i = (i + 1) % frames.len();
                }
                // Each call at its own place in the speech, as in a load test:
                // the same frame in a row would train the branch predictors.
                let f = (i + call * 7) % frames.len();
                let (enc, dec) = &mut codecs[call];
                enc.encode(black_box(&frames[f]), &mut buf).unwrap();
                dec.decode(black_box(&packets[f]), &mut pcm).unwrap()
            })
        });
    }
    g.finish();
}

/// The encoder toward a SIP peer without FEC at each `[media] opus_complexity`:
/// what the setting buys. libopus's AVX2 noise-shaping quantizer only takes 3 or
/// 4 delayed-decision states (complexity 6 and up); with 1 or 2 (complexity 0-5)
/// it runs its C version.
fn opus_complexity_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("opus_complexity");
    g.measurement_time(std::time::Duration::from_secs(2));
    g.warm_up_time(std::time::Duration::from_secs(1));
    let (frames, _) = opus_frames(SampleRate::HZ_8000);
    for complexity in 0..=10u8 {
        let config = OpusEncoderConfig {
            inband_fec: false,
            complexity: OpusComplexity::Fixed(complexity),
            ..opus_config(SampleRate::HZ_8000)
        };
        bench_encode(
            &mut g,
            format!("encode_8k_no_fec/{complexity}"),
            config,
            &frames,
        );
    }
    g.finish();
}

fn resample_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("resample");
    for from in SampleRate::SUPPORTED {
        for to in SampleRate::SUPPORTED {
            if from == to {
                continue;
            }
            let input = sine(from.hz(), 1000.0, 8000.0, from.samples_in(Millis(20)));
            let mut r = Resampler::new(from, to);
            let mut out = vec![0i16; r.max_output(input.len())];
            g.bench_function(
                format!("{}k_to_{}k", from.hz() / 1000, to.hz() / 1000),
                |b| b.iter(|| r.process(black_box(&input), &mut out).unwrap()),
            );
        }
    }
    g.finish();
}

/// 65536 packets (one full sequence-number cycle) as slices of one buffer, so a
/// bench can loop forever without sequence numbers going backwards.
fn stream(pt: PayloadType, ticks: u32, payloads: &[Vec<u8>]) -> Vec<RtpPacket> {
    let mut arena = BytesMut::with_capacity(65536 * (12 + payloads[0].len() + 64));
    let mut ranges = Vec::with_capacity(65536);
    let mut buf = [0u8; 1500];
    for i in 0..65536usize {
        let w = RtpWriter::new(
            pt,
            SeqNo(i as u16),
            RtpTimestamp((i as u32).wrapping_mul(ticks)),
            Ssrc(7),
        );
        let n = w
            .write_packet(&payloads[i % payloads.len()], &mut buf)
            .unwrap();
        let start = arena.len();
        arena.extend_from_slice(&buf[..n]);
        ranges.push(start..start + n);
    }
    let all = arena.freeze();
    ranges
        .into_iter()
        .map(|r| RtpPacket::parse(all.slice(r)).unwrap())
        .collect()
}

fn pcmu_payloads() -> Vec<Vec<u8>> {
    speech_like(8000, 160 * 50)
        .chunks(160)
        .map(|f| {
            let mut p = vec![0u8; 160];
            g711::ulaw_encode(f, &mut p);
            p
        })
        .collect()
}

const PCMU: RtpFormat = RtpFormat {
    codec: Codec::Pcmu,
    payload_type: PayloadType::PCMU,
    telephone_event: None,
    ptime: Millis(20),
    opus: None,
};

fn opus_fmt() -> RtpFormat {
    RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap())
}

/// One packet in, everything polled out, per iteration.
fn bench_pipeline(c: &mut Criterion, name: &str, mut p: MediaPipeline, packets: &[RtpPacket]) {
    let mut i = 0usize;
    let mut frame = vec![0i16; 960];
    c.benchmark_group("pipeline").bench_function(name, |b| {
        b.iter(|| {
            let pkt = &packets[i & 0xffff];
            i += 1;
            p.handle_rtp(Instant::ZERO, pkt).unwrap();
            let mut n = 0;
            while let Some(o) = p.poll_packet() {
                n += o.bytes.len();
            }
            while let Some(k) = p.poll_frame(&mut frame) {
                n += k;
            }
            n
        })
    });
}

fn pipeline_benches(c: &mut Criterion) {
    let pcmu = stream(PayloadType::PCMU, 160, &pcmu_payloads());
    let (_, opus8) = opus_frames(SampleRate::HZ_8000);
    let opus = stream(PayloadType::new(111).unwrap(), 960, &opus8);
    let new = |i, o| MediaPipeline::new(PipelineConfig::new(i, o, Ssrc(1), 1)).unwrap();

    // Relay in place: the driver's receive buffer is rewritten and sent.
    let mut relay = new(Endpoint::Rtp(PCMU), Endpoint::Rtp(PCMU));
    let mut buf = [0u8; 1500];
    let mut i = 0usize;
    c.benchmark_group("pipeline").bench_function("relay", |b| {
        b.iter(|| {
            let bytes = pcmu[i & 0xffff].as_bytes();
            i += 1;
            buf[..bytes.len()].copy_from_slice(bytes);
            relay
                .relay_in_place(Instant::ZERO, black_box(&mut buf[..bytes.len()]))
                .unwrap()
        })
    });
    bench_pipeline(
        c,
        "pcmu_to_opus",
        new(Endpoint::Rtp(PCMU), Endpoint::Rtp(opus_fmt())),
        &pcmu,
    );
    bench_pipeline(
        c,
        "opus_to_pcmu",
        new(Endpoint::Rtp(opus_fmt()), Endpoint::Rtp(PCMU)),
        &opus,
    );
    bench_pipeline(
        c,
        "pcmu_to_pcm24k",
        new(Endpoint::Rtp(PCMU), Endpoint::Pcm(SampleRate::HZ_24000)),
        &pcmu,
    );
}

/// A call's whole media session (sip-bridge) between two SIP legs: one
/// datagram in, split off a receive buffer as the sbc's socket reader does, and
/// what it sends polled out and dropped. Against `pipeline/relay`, what the
/// session adds: latching, the leg lookup, the transmit queue.
fn session_benches(c: &mut Criterion) {
    use sip_bridge::bridge::{LegKey, MediaCommand};
    use sip_bridge::media::{MediaConfig, MediaSession};

    let pcmu = stream(PayloadType::PCMU, 160, &pcmu_payloads());
    let peer_a = "203.0.113.5:30000".parse().unwrap();
    let mut g = c.benchmark_group("session");
    for (name, b) in [
        ("relay", PCMU),
        (
            "pcmu_to_pcma",
            RtpFormat::new(Codec::Pcma, PayloadType::PCMA),
        ),
    ] {
        let mut s = MediaSession::new(MediaConfig::new(None, 1));
        for (leg, local_port, remote, format) in [
            (0, 20000, peer_a, PCMU),
            (1, 20002, "198.51.100.9:4000".parse().unwrap(), b),
        ] {
            let remote = Some(remote);
            s.handle_command(
                Instant::ZERO,
                MediaCommand::AddRtp {
                    leg: LegKey(leg),
                    local_port,
                    remote,
                    format,
                    rtcp_mux: false,
                    latch_from: None,
                },
            );
        }
        for cmd in MediaCommand::connect(LegKey(0), LegKey(1)) {
            s.handle_command(Instant::ZERO, cmd);
        }
        let mut rx = BytesMut::new();
        let mut i = 0usize;
        g.bench_function(format!("{name}_per_packet"), |bench| {
            bench.iter(|| {
                let bytes = pcmu[i & 0xffff].as_bytes();
                i += 1;
                if rx.capacity() < bytes.len() {
                    rx.reserve(64 * 1024);
                }
                rx.extend_from_slice(bytes);
                s.handle_rtp(Instant::ZERO, 20000, peer_a, rx.split());
                let mut n = 0;
                while let Some(t) = s.poll_transmit() {
                    n += t.bytes.len();
                }
                n
            })
        });
    }
}

/// Prints each pipeline's cost beside the sum of the raw stage calls it makes.
fn ratios() {
    let m = benches::mean_ns;
    let rows = [
        ("relay", vec![]),
        (
            "pcmu_to_opus",
            vec![("g711", "pcmu_decode"), ("opus", "encode_8k")],
        ),
        (
            "opus_to_pcmu",
            vec![("opus", "decode_8k"), ("g711", "pcmu_encode")],
        ),
        (
            "pcmu_to_pcm24k",
            vec![("g711", "pcmu_decode"), ("resample", "8k_to_24k")],
        ),
    ];
    println!("\npipeline cost per 20 ms frame vs. the raw codec calls it wraps");
    println!(
        "{:<16} {:>12} {:>12} {:>8}",
        "pipeline", "pipeline", "raw sum", "ratio"
    );
    for (name, parts) in rows {
        let Some(p) = m("pipeline", name) else {
            continue;
        };
        let raw: Option<f64> = parts.iter().map(|(g, f)| m(g, f)).sum();
        match raw {
            Some(r) if r > 0.0 => println!(
                "{name:<16} {:>9.3} us {:>9.3} us {:>7.3}x",
                p / 1e3,
                r / 1e3,
                p / r
            ),
            _ => println!("{name:<16} {:>9.3} us {:>12} {:>8}", p / 1e3, "-", "-"),
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&benches::criterion_dir())
        .configure_from_args();
    g711_benches(&mut c);
    opus_benches(&mut c);
    opus_complexity_benches(&mut c);
    resample_benches(&mut c);
    pipeline_benches(&mut c);
    session_benches(&mut c);
    c.final_summary();
    ratios();
}
