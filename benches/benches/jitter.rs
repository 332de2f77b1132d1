//! Jitter buffer cost per packet: insert, and the tick + consume that plays it.
//! `cargo bench -p benches --bench jitter`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::Criterion;
use media_core::codec::{AudioDecoder, Codec, g711};
use media_core::jitter::{JitterBuffer, JitterConfig, JitterPacket, Playout, Stretch};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{ClockRate, Instant, SampleRate, SeededRng};

fn packets() -> Vec<JitterPacket> {
    let payload = Bytes::from(vec![0xffu8; 160]);
    (0..65536u32)
        .map(|i| JitterPacket {
            sequence_number: SeqNo(i as u16),
            timestamp: RtpTimestamp(i * 160),
            ssrc: Ssrc(1),
            marker: false,
            duration: 160,
            fec: false,
            payload: payload.slice(..),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let pkts = packets();
    let mut rng = SeededRng::new(1);
    let jitter: Vec<u64> = (0..65536)
        .map(|_| (rng.next_f64() * 15_000.0) as u64)
        .collect();
    let mut jb = JitterBuffer::new(JitterConfig::new(ClockRate(8000)));
    let mut i = 0usize;
    c.benchmark_group("jitter")
        .bench_function("insert_and_play_per_packet", |b| {
            b.iter(|| {
                // One packet in (20 ms of media, up to 15 ms jitter), and every frame
                // that came due played out.
                let k = i & 0xffff;
                let arrival = Instant::from_micros(i as u64 * 20_000 + jitter[k]);
                i += 1;
                jb.insert(arrival, pkts[k].clone());
                let mut steps = 0;
                while let Some(due) = jb.poll_timeout().filter(|d| *d <= arrival) {
                    let t = jb.tick(due);
                    steps += t.steps().count();
                    let consumed = match t.stretch {
                        Stretch::None => 160,
                        Stretch::Accelerate { .. } => 200,
                        Stretch::Expand { .. } => 120,
                    };
                    jb.consume(consumed);
                }
                black_box(steps)
            })
        });

    // The same through Playout: decode (G.711), stretch, one 20 ms frame per tick.
    let mut payload = [0u8; 160];
    g711::ulaw_encode(&media_core::analysis::speech_like(8000, 160), &mut payload);
    let mut buf = [0u8; 172];
    let rtp: Vec<RtpPacket> = (0..65536u32)
        .map(|i| {
            let w = RtpWriter::new(
                PayloadType::PCMU,
                SeqNo(i as u16),
                RtpTimestamp(i * 160),
                Ssrc(1),
            );
            let n = w.write_packet(&payload, &mut buf).unwrap();
            RtpPacket::parse(Bytes::copy_from_slice(&buf[..n])).unwrap()
        })
        .collect();
    let mut playout = Playout::new(
        JitterConfig::new(ClockRate(8000)),
        AudioDecoder::new(Codec::Pcmu, SampleRate::HZ_8000).unwrap(),
    );
    let mut frame = [0i16; 160];
    let mut i = 0usize;
    c.benchmark_group("jitter")
        .bench_function("playout_pcmu_per_packet", |b| {
            b.iter(|| {
                let k = i & 0xffff;
                let arrival = Instant::from_micros(i as u64 * 20_000 + jitter[k]);
                i += 1;
                playout.insert(arrival, &rtp[k]);
                let mut n = 0;
                while let Some(due) = playout.jitter().poll_timeout().filter(|d| *d <= arrival) {
                    n += playout.pull(due, &mut frame);
                }
                black_box(n)
            })
        });
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&benches::criterion_dir())
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
