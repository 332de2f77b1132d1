//! Proves the steady-state media path allocates nothing per packet: a counting
//! global allocator (per thread, so parallel tests do not disturb each other)
//! watches 500 packets through each kind of pipeline after a warm-up, and
//! 1000 ticks of a 4- and an 8-party mix.
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use bytes::{Bytes, BytesMut};
use counting_alloc::allocations_during;
use media_core::analysis::{ToneGenerator, sine};
use media_core::codec::{Codec, OpusEncoder, OpusEncoderConfig, g711};
use media_core::jitter::JitterConfig;
use media_core::mix::{Gain, Mixer, MixerConfig};
use media_core::pipeline::{Endpoint, FrameEncoder, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{ClockRate, Instant, Millis, SampleRate};

const PCMU: RtpFormat = RtpFormat {
    codec: Codec::Pcmu,
    payload_type: PayloadType::PCMU,
    telephone_event: None,
    ptime: Millis(20),
    opus: None,
};

fn opus_fmt() -> RtpFormat {
    RtpFormat {
        codec: Codec::Opus,
        payload_type: PayloadType::new(111).unwrap(),
        telephone_event: PayloadType::new(126),
        ptime: Millis(20),
        opus: None,
    }
}

/// Packets as a driver would hold them: slices of one shared receive buffer.
fn packets(pt: PayloadType, ticks: u32, payloads: &[Vec<u8>]) -> Vec<RtpPacket> {
    let mut arena = BytesMut::with_capacity(payloads.iter().map(|p| p.len() + 12).sum());
    let mut lens = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let mut buf = vec![0u8; 12 + p.len()];
        let w = RtpWriter::new(pt, SeqNo(i as u16), RtpTimestamp(i as u32 * ticks), Ssrc(9));
        let n = w.write_packet(p, &mut buf).unwrap();
        arena.extend_from_slice(&buf[..n]);
        lens.push(n);
    }
    let all: Bytes = arena.freeze();
    let mut at = 0;
    lens.iter()
        .map(|&n| {
            let p = RtpPacket::parse(all.slice(at..at + n)).unwrap();
            at += n;
            p
        })
        .collect()
}

fn pcmu_payloads(n: usize) -> Vec<Vec<u8>> {
    let tone = sine(8000, 1000.0, 8000.0, 160 * n);
    tone.chunks(160)
        .map(|f| {
            let mut p = vec![0u8; 160];
            g711::ulaw_encode(f, &mut p);
            p
        })
        .collect()
}

fn opus_payloads(n: usize) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let tone = sine(48000, 1000.0, 8000.0, 960 * n);
    tone.chunks(960)
        .map(|f| {
            let mut p = [0u8; 1500];
            let l = enc.encode(f, &mut p).unwrap();
            p[..l].to_vec()
        })
        .collect()
}

/// Warm up on the first 50 packets, then count allocations over the rest.
fn assert_steady_state_is_allocation_free(mut p: MediaPipeline, pkts: &[RtpPacket], pcm_out: bool) {
    let mut frame = vec![0i16; 960];
    let mut run = |p: &mut MediaPipeline, pkts: &[RtpPacket]| {
        let mut out = 0usize;
        for (i, pkt) in pkts.iter().enumerate() {
            p.handle_rtp(Instant::from_millis(20 * i as u64), pkt)
                .unwrap();
            while let Some(o) = p.poll_packet() {
                out += o.bytes.len();
            }
            while let Some(n) = p.poll_frame(&mut frame) {
                out += n;
            }
        }
        out
    };
    assert!(run(&mut p, &pkts[..50]) > 0);
    let mut produced = 0;
    let allocs = allocations_during(|| produced = run(&mut p, &pkts[50..]));
    assert!(produced > 0, "pipeline produced output");
    assert_eq!(allocs, 0, "allocations in steady state (pcm_out={pcm_out})");
}

#[test]
fn relay_in_place_allocates_nothing() {
    let mut p = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Rtp(PCMU),
        Endpoint::Rtp(PCMU),
        Ssrc(1),
        1,
    ))
    .unwrap();
    assert!(p.is_relay());
    let pkts = packets(PayloadType::PCMU, 160, &pcmu_payloads(550));
    let mut buf = [0u8; 1500];
    let mut relay = |p: &mut MediaPipeline, pkts: &[RtpPacket]| {
        let mut sent = 0;
        for pkt in pkts {
            let bytes = pkt.as_bytes();
            buf[..bytes.len()].copy_from_slice(bytes); // the driver's receive buffer
            sent += p
                .relay_in_place(Instant::ZERO, &mut buf[..bytes.len()])
                .unwrap()
                .unwrap();
        }
        sent
    };
    relay(&mut p, &pkts[..50]);
    let mut sent = 0;
    assert_eq!(allocations_during(|| sent = relay(&mut p, &pkts[50..])), 0);
    assert_eq!(sent, 500 * 172);
}

#[test]
fn pcmu_to_opus_allocates_nothing() {
    let p = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Rtp(PCMU),
        Endpoint::Rtp(opus_fmt()),
        Ssrc(1),
        1,
    ))
    .unwrap();
    assert_steady_state_is_allocation_free(
        p,
        &packets(PayloadType::PCMU, 160, &pcmu_payloads(550)),
        false,
    );
}

#[test]
fn opus_to_pcmu_allocates_nothing() {
    let p = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Rtp(opus_fmt()),
        Endpoint::Rtp(PCMU),
        Ssrc(1),
        1,
    ))
    .unwrap();
    assert_steady_state_is_allocation_free(
        p,
        &packets(PayloadType::new(111).unwrap(), 960, &opus_payloads(550)),
        false,
    );
}

#[test]
fn pcmu_to_pcm16_24k_allocates_nothing() {
    let p = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Rtp(PCMU),
        Endpoint::Pcm(SampleRate::HZ_24000),
        Ssrc(1),
        1,
    ))
    .unwrap();
    assert_steady_state_is_allocation_free(
        p,
        &packets(PayloadType::PCMU, 160, &pcmu_payloads(550)),
        true,
    );
}

#[test]
fn pcmu_to_opus_through_the_jitter_buffer_allocates_nothing() {
    let mut cfg = PipelineConfig::new(Endpoint::Rtp(PCMU), Endpoint::Rtp(opus_fmt()), Ssrc(1), 1);
    cfg.jitter = Some(JitterConfig::new(ClockRate(8000)));
    let mut p = MediaPipeline::new(cfg).unwrap();
    let pkts = packets(PayloadType::PCMU, 160, &pcmu_payloads(1050));
    // Packets every 20 ms with a little jitter; the pipeline ticks on its own clock.
    let run = |p: &mut MediaPipeline, range: std::ops::Range<usize>| {
        let mut out = 0usize;
        for i in range {
            let arrival = Instant::from_micros(i as u64 * 20_000 + (i as u64 * 7919 % 9) * 1000);
            while let Some(due) = p.poll_timeout().filter(|d| *d <= arrival) {
                p.handle_timeout(due);
                while let Some(o) = p.poll_packet() {
                    out += o.bytes.len();
                }
            }
            p.handle_rtp(arrival, &pkts[i]).unwrap();
        }
        out
    };
    assert!(run(&mut p, 0..50) > 0);
    let mut produced = 0;
    let allocs = allocations_during(|| produced = run(&mut p, 50..1050));
    assert!(produced > 0);
    assert_eq!(allocs, 0, "allocations with the jitter buffer in the path");
    assert!(p.jitter_stats().unwrap().received >= 1000);
}

/// One tick of `m` at tick `t`: who talks changes every 25 ticks (a source
/// drops to silence, one goes absent), edges change every 10 (a whisper edge on
/// and off, a -6 dB listener), so gate and gain ramps and group changes run.
fn mix_tick(m: &mut Mixer, tones: &mut [ToneGenerator], t: usize) -> usize {
    let n = m.max_parties();
    let phase = t / 25;
    for (s, g) in tones.iter_mut().enumerate() {
        match (s + phase) % 4 {
            0 => {} // absent
            1 => {
                m.input_mut(s).unwrap(); // present, silent
            }
            _ => g.fill(m.input_mut(s).unwrap()),
        }
    }
    if t.is_multiple_of(10) {
        let (l, s) = (t / 10 % n, (t / 10 + 1) % n);
        let on = (t / 10).is_multiple_of(2);
        m.set_gain(l, s, if on { Gain::SILENT } else { Gain::UNITY })
            .unwrap();
        m.set_gain(s, l, if on { Gain::from_db(-6.0) } else { Gain::UNITY })
            .unwrap();
    }
    m.mix();
    (0..n)
        .map(|l| m.output(l).unwrap()[100].unsigned_abs() as usize)
        .sum::<usize>()
        + m.group_count()
}

#[test]
fn mixing_4_and_8_parties_with_ramps_and_talker_changes_allocates_nothing() {
    for parties in [4, 8] {
        let mut m = Mixer::new(MixerConfig::new(SampleRate::HZ_16000, parties)).unwrap();
        let mut tones: Vec<ToneGenerator> = (0..parties)
            .map(|s| ToneGenerator::new(16000, &[(300.0 + 150.0 * s as f64, 12000.0)]))
            .collect();
        for t in 0..50 {
            mix_tick(&mut m, &mut tones, t);
        }
        let mut groups = 0;
        let allocs = allocations_during(|| {
            for t in 50..1050 {
                groups += mix_tick(&mut m, &mut tones, t);
            }
        });
        assert!(groups > 0);
        assert_eq!(allocs, 0, "allocations mixing {parties} parties");
    }
}

#[test]
fn a_ticked_source_a_shared_encoder_and_handle_encoded_allocate_nothing() {
    // A source on the call clock (PCMU through a jitter buffer to 16 kHz)...
    let mut cfg = PipelineConfig::new(
        Endpoint::Rtp(PCMU),
        Endpoint::Pcm(SampleRate::HZ_16000),
        Ssrc(1),
        1,
    );
    let mut j = JitterConfig::new(ClockRate(8000));
    j.external_clock = true;
    cfg.jitter = Some(j);
    let mut source = MediaPipeline::new(cfg).unwrap();
    // ...encoded once to Opus and sent by a listener's pipeline.
    let out = PipelineConfig::new(
        Endpoint::Pcm(SampleRate::HZ_16000),
        Endpoint::Rtp(opus_fmt()),
        Ssrc(2),
        2,
    );
    let mut shared = FrameEncoder::for_output(&out).unwrap();
    let mut listener = MediaPipeline::new(out).unwrap();
    let pkts = packets(PayloadType::PCMU, 160, &pcmu_payloads(1050));
    let mut frame = vec![0i16; 320];
    let mut run = |range: std::ops::Range<usize>| {
        let mut sent = 0;
        for i in range {
            let now = Instant::from_micros(i as u64 * 20_000 + 5_000);
            source
                .handle_rtp(Instant::from_micros(i as u64 * 20_000), &pkts[i])
                .unwrap();
            source.tick(now).unwrap();
            while source.poll_frame(&mut frame).is_some() {
                let payload = shared.encode(&frame).unwrap();
                listener.handle_encoded(now, payload).unwrap();
            }
            while let Some(o) = listener.poll_packet() {
                sent += o.bytes.len();
            }
        }
        sent
    };
    run(0..50);
    let mut sent = 0;
    assert_eq!(allocations_during(|| sent = run(50..1050)), 0);
    assert!(sent > 0);
}

#[test]
fn the_counter_sees_allocations() {
    // The allocator hook works: a Vec allocation is counted.
    let n = allocations_during(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}
