//! Proves the steady-state media path allocates nothing per packet: a counting
//! global allocator (per thread, so parallel tests do not disturb each other)
//! watches 500 packets through each kind of pipeline after a warm-up.
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use bytes::{Bytes, BytesMut};
use counting_alloc::allocations_during;
use media_core::analysis::sine;
use media_core::codec::{Codec, OpusEncoder, OpusEncoderConfig, g711};
use media_core::jitter::JitterConfig;
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
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

#[test]
fn the_counter_sees_allocations() {
    // The allocator hook works: a Vec allocation is counted.
    let n = allocations_during(|| {
        let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(64));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}
