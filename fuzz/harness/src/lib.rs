//! Fuzz target bodies. Each takes arbitrary bytes and must never panic; where a
//! result can be checked (a produced packet parses, a round trip holds) it is.
//! `fuzz/fuzz_targets/*` wrap these for libFuzzer; the tests below replay the
//! committed corpus and a seeded random batch on stable Rust, in CI.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use media_core::codec::{Codec, OpusDecoder, opus};
use media_core::dtmf::{DtmfReceiver, TelephoneEvent};
use media_core::jitter::{JitterBuffer, JitterConfig, JitterPacket};
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::rtp::{
    ExtensionIter, PayloadType, RtpHeader, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc,
};
use media_core::{ClockRate, Instant, Millis, SampleRate};

/// The RTP view: parse, walk every accessor; a valid packet re-serialises to
/// the same fixed header.
pub fn rtp_packet(data: &[u8]) {
    let Ok(p) = RtpPacket::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let csrcs: Vec<u32> = p.csrcs().collect();
    let _ = p.extensions().count();
    assert!(p.payload_bytes().len() <= data.len());
    let mut w = RtpWriter::new(
        p.payload_type(),
        p.sequence_number(),
        p.timestamp(),
        p.ssrc(),
    );
    w.marker = p.marker();
    w.csrcs = &csrcs;
    let mut buf = vec![0u8; 12 + 4 * csrcs.len()];
    let n = w.write(&mut buf).expect("fits");
    assert_eq!(&buf[1..12], &data[1..12]);
    assert_eq!(n, 12 + 4 * csrcs.len());
}

/// RFC 8285 element parsing over any profile and block.
pub fn rtp_extensions(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let profile = u16::from_be_bytes([data[0], data[1]]);
    let mut total = 0;
    for e in ExtensionIter::new(profile, &data[2..]).flatten() {
        total += e.data.len();
    }
    assert!(total <= data.len());
}

/// RFC 4733 payloads, one by one and as a stream into a receiver.
pub fn telephone_event(data: &[u8]) {
    let mut rx = DtmfReceiver::new();
    for chunk in data.chunks(6) {
        let ts = RtpTimestamp(u32::from(*chunk.first().unwrap_or(&0)) * 160);
        if let Ok(ev) = TelephoneEvent::parse(chunk.get(2..).unwrap_or(&[])) {
            let mut b = [0u8; 4];
            ev.write(&mut b);
            assert_eq!(TelephoneEvent::parse(&b), Ok(ev));
            let _ = rx.handle(ts, &ev);
        }
    }
}

/// Opus decoding of arbitrary bytes at a chosen rate, with PLC and FEC.
pub fn opus_decode(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let rate = SampleRate::SUPPORTED[sel as usize % 4];
    let Ok(mut dec) = OpusDecoder::new(rate) else {
        return;
    };
    let mut pcm = vec![0i16; rate.samples_in(Millis(120))];
    let _ = opus::has_fec(rest);
    let _ = dec.packet_samples(rest);
    if let Ok(n) = dec.decode(rest, &mut pcm) {
        assert!(n <= pcm.len());
    }
    let frame = rate.samples_in(Millis(20));
    let _ = dec.conceal(&mut pcm[..frame]);
    let _ = dec.recover_fec(rest, &mut pcm[..frame]);
}

#[derive(Arbitrary, Debug)]
enum Op {
    Packet {
        seq_step: i8,
        ts_step: i16,
        pt: u8,
        ssrc: u8,
        marker: bool,
        payload: Vec<u8>,
    },
    Raw(Vec<u8>),
    Pcm(u16),
    Dtmf(String),
    Mute(bool),
}

#[derive(Arbitrary, Debug)]
struct PipelineCase {
    input: u8,
    output: u8,
    ops: Vec<Op>,
}

fn endpoint(sel: u8) -> Endpoint {
    let te = PayloadType::new(101);
    let fmt = |codec, pt, ptime| {
        Endpoint::Rtp(RtpFormat {
            codec,
            payload_type: PayloadType::new(pt).unwrap_or(PayloadType::PCMU),
            telephone_event: te,
            ptime: Millis(ptime),
        })
    };
    match sel % 7 {
        0 => fmt(Codec::Pcmu, 0, 20),
        1 => fmt(Codec::Pcma, 8, 30),
        2 => fmt(Codec::Opus, 111, 20),
        3 => fmt(Codec::Pcmu, 0, 10),
        4 => Endpoint::Pcm(SampleRate::HZ_24000),
        5 => Endpoint::Pcm(SampleRate::HZ_16000),
        _ => fmt(Codec::Pcma, 8, 20),
    }
}

/// A pipeline (relay, transcode or PCM) fed an arbitrary sequence of packets,
/// raw datagrams, PCM, DTMF and mute toggles; every packet it emits must parse.
pub fn pipeline(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = PipelineCase::arbitrary(&mut u) else {
        return;
    };
    let Ok(mut p) = MediaPipeline::new(PipelineConfig::new(
        endpoint(case.input),
        endpoint(case.output),
        Ssrc(1),
        9,
    )) else {
        return;
    };
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut frame = vec![0i16; 960];
    for (i, op) in case.ops.into_iter().take(400).enumerate() {
        let now = Instant::from_millis(20 * i as u64);
        match op {
            Op::Packet {
                seq_step,
                ts_step,
                pt,
                ssrc,
                marker,
                mut payload,
            } => {
                seq = seq.wrapping_add(seq_step as u16);
                ts = ts.wrapping_add((ts_step as i32 * 8) as u32);
                payload.truncate(1400);
                let pt = PayloadType::new(pt % 128).unwrap_or(PayloadType::PCMU);
                let mut w =
                    RtpWriter::new(pt, SeqNo(seq), RtpTimestamp(ts), Ssrc(u32::from(ssrc % 3)));
                w.marker = marker;
                let mut buf = vec![0u8; 12 + payload.len()];
                let Ok(n) = w.write_packet(&payload, &mut buf) else {
                    continue;
                };
                buf.truncate(n);
                if p.is_relay() && i % 2 == 0 {
                    if let Ok(Some(len)) = p.relay_in_place(now, &mut buf) {
                        RtpHeader::parse(&buf[..len]).expect("relayed packet parses");
                    }
                } else if let Ok(pkt) = RtpPacket::parse(Bytes::from(buf)) {
                    let _ = p.handle_rtp(now, &pkt);
                }
            }
            Op::Raw(mut bytes) => {
                if p.is_relay() {
                    let _ = p.relay_in_place(now, &mut bytes);
                } else if let Ok(pkt) = RtpPacket::parse(Bytes::from(bytes)) {
                    let _ = p.handle_rtp(now, &pkt);
                }
            }
            Op::Pcm(n) => {
                let pcm: Vec<i16> = (0..n % 3000).map(|k| (k as i16).wrapping_mul(37)).collect();
                let _ = p.handle_pcm(now, &pcm);
            }
            Op::Dtmf(d) => {
                let _ = p.send_dtmf(&d, Millis(60));
            }
            Op::Mute(m) => p.set_muted(m),
        }
        while let Some(o) = p.poll_packet() {
            RtpHeader::parse(o.bytes).expect("emitted packet parses");
        }
        while p.poll_frame(&mut frame).is_some() {}
        while p.poll_event().is_some() {}
    }
}

/// A fuzz target body.
pub type Target = fn(&[u8]);

#[derive(Arbitrary, Debug)]
enum JitterOp {
    Insert {
        seq_step: i16,
        ts_step: i32,
        ssrc: u8,
        duration: u16,
        fec: bool,
        marker: bool,
        dt_us: u32,
    },
    Tick {
        dt_us: u16,
    },
    Consume(u16),
    FollowClock,
}

/// The jitter buffer under arbitrary sequences of inserts (any sequence number,
/// timestamp, SSRC, duration and arrival time), ticks and consumption: no panic,
/// and memory stays within the configured bounds whatever arrives.
pub fn jitter(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<JitterOp>::arbitrary(&mut u) else {
        return;
    };
    let cfg = JitterConfig::new(ClockRate(8000));
    let mut jb = JitterBuffer::new(cfg);
    let max_ticks = cfg.clock.ticks_in(cfg.max_buffered) as i64;
    let (mut seq, mut ts, mut now) = (0u16, 0u32, 0u64);
    for op in ops.into_iter().take(2000) {
        match op {
            JitterOp::Insert {
                seq_step,
                ts_step,
                ssrc,
                duration,
                fec,
                marker,
                dt_us,
            } => {
                seq = seq.wrapping_add(seq_step as u16);
                ts = ts.wrapping_add(ts_step as u32);
                now = now.saturating_add(u64::from(dt_us % 5_000_000));
                let p = JitterPacket {
                    sequence_number: SeqNo(seq),
                    timestamp: RtpTimestamp(ts),
                    ssrc: Ssrc(u32::from(ssrc % 4)),
                    marker,
                    duration: u32::from(duration),
                    fec,
                    payload: Bytes::from_static(&[0xff; 4]),
                };
                let _ = jb.insert(Instant::from_micros(now), p);
            }
            JitterOp::Tick { dt_us } => {
                now = now.saturating_add(u64::from(dt_us));
                let t = jb.tick(Instant::from_micros(now));
                assert!(t.steps().count() <= 8);
            }
            JitterOp::Consume(n) => jb.consume(u32::from(n)),
            JitterOp::FollowClock => {
                if let Some(due) = jb.poll_timeout() {
                    now = now.max(due.as_micros());
                    let _ = jb.tick(Instant::from_micros(now));
                    jb.consume(160);
                }
            }
        }
        assert!(jb.len() <= cfg.max_packets, "{} packets held", jb.len());
        assert!(
            jb.held_ticks() <= max_ticks,
            "{} ticks held",
            jb.held_ticks()
        );
        assert!(jb.buffered_ticks() <= 32 * 2 * u32::from(u16::MAX));
    }
}

/// All targets by name, for replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("rtp_packet", rtp_packet),
    ("rtp_extensions", rtp_extensions),
    ("telephone_event", telephone_event),
    ("opus_decode", opus_decode),
    ("pipeline", pipeline),
    ("jitter", jitter),
];

#[cfg(test)]
mod tests {
    use super::*;
    use media_core::SeededRng;

    /// Replays every committed corpus file (fuzz/corpus/<target>/*).
    #[test]
    fn corpus_replays_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        let mut replayed = 0;
        for (name, f) in TARGETS {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                f(&std::fs::read(entry.path()).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no corpus found under {}", root.display());
    }

    /// Writes seed inputs built from our own encoders into fuzz/corpus (run once,
    /// by hand: `cargo test -p fuzz-harness -- --ignored write_seed_corpus`).
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        use media_core::analysis::speech_like;
        use media_core::codec::{OpusEncoder, OpusEncoderConfig};
        use media_core::rtp::HeaderExtension;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let ext = [
            HeaderExtension {
                id: 1,
                data: &[1, 2],
            },
            HeaderExtension { id: 3, data: &[9] },
        ];
        let mut w = RtpWriter::new(PayloadType::PCMU, SeqNo(1), RtpTimestamp(160), Ssrc(5));
        w.csrcs = &[7, 8];
        w.extensions = &ext;
        let mut buf = [0u8; 256];
        let n = w.write_packet(&[0xff; 20], &mut buf).unwrap();
        put("rtp_packet", "one_byte_ext", &buf[..n]);
        put(
            "rtp_extensions",
            "one_byte",
            &[&[0xbe, 0xde][..], &buf[24..n - 20]].concat(),
        );
        put(
            "rtp_extensions",
            "two_byte",
            &[0x10, 0x00, 0x05, 0x02, 0xaa, 0xbb, 0x00, 0x07, 0x00],
        );
        put(
            "telephone_event",
            "digit_5",
            &[0, 0, 5, 0x0a, 0x00, 0xa0, 1, 0, 5, 0x8a, 0x03, 0x20],
        );
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let pcm = speech_like(48000, 960 * 30);
        let mut pkt = [0u8; 1500];
        let len = enc.encode(&pcm[960 * 20..960 * 21], &mut pkt).unwrap();
        put(
            "opus_decode",
            "speech_48k",
            &[&[3u8][..], &pkt[..len]].concat(),
        );
        put("pipeline", "zeros", &[0u8; 64]);
        put("pipeline", "ramp", &(0..=255u8).collect::<Vec<_>>());
    }

    /// A seeded batch of random and mutated-valid inputs per target.
    #[test]
    fn seeded_random_inputs_do_not_panic() {
        let mut rng = SeededRng::new(0xf022);
        for (_, f) in TARGETS {
            for _ in 0..300 {
                let len = (rng.next_u32() % 600) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
                if let Some(b) = v.first_mut() {
                    *b = 0x80 | (*b & 0x3f); // RTP version 2 half the time
                }
                f(&v);
            }
        }
    }
}
