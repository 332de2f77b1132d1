//! Recording's cost per call per 20 ms frame. On the media path: a whole
//! two-party PCMU call's media session (two packets in, relayed, and the call
//! clock's tick) without and with a recording (its two channels decoded
//! through jitter buffers on the tick, mixed by role, interleaved), and the
//! hand-over of a frame to the writer's bounded queue under its lock. Off the
//! media path, on the writer's thread: a frame into a WAV file's bytes, and
//! into Ogg Opus (stereo at 8 and 16 kHz, the libopus encode included). A
//! live fork's framing of a frame, native and Twilio.
//! `cargo bench -p benches --bench record`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use criterion::Criterion;
use media_core::Instant;
use media_core::analysis::speech_like;
use media_core::codec::{Codec, g711};
use media_core::pipeline::RtpFormat;
use media_core::record::{FrameQueue, OggOpusWriter, WavWriter};
use media_core::rtp::{PayloadType, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use sip_bridge::contract::{
    CallId, Feed, ForkFraming, ForkSpec, LegKey, MediaCommand, RecordChannels, RecordFormat,
    RecordSpec, RecordingId,
};
use sip_bridge::fork::ForkFramer;
use sip_bridge::media::{MediaConfig, MediaSession, RECORD_FRAME_MAX};

const A: &str = "198.51.100.1:4000";
const B: &str = "198.51.100.2:4000";

/// 20 ms PCMU packets of speech, `n` of them.
fn payloads(n: usize, seed: usize) -> Vec<[u8; 160]> {
    let pcm = speech_like(8000, 160 * (n + seed));
    pcm[160 * seed..]
        .chunks(160)
        .map(|f| {
            let mut p = [0u8; 160];
            g711::ulaw_encode(f, &mut p);
            p
        })
        .collect()
}

/// A 20 ms packet (the payload's bytes as they are: A-law or u-law makes
/// no difference to the cost).
fn packet(payload: &[u8; 160], seq: u16, ssrc: u32, pt: PayloadType) -> BytesMut {
    let w = RtpWriter::new(
        pt,
        SeqNo(seq),
        RtpTimestamp(u32::from(seq) * 160),
        Ssrc(ssrc),
    );
    let mut b = BytesMut::zeroed(200);
    let n = w.write_packet(payload, &mut b).unwrap();
    b.truncate(n);
    b
}

/// A PCMU leg and a leg of `other` (PCMU: relayed; PCMA: transcoded both
/// ways), with a recording of both when `record`.
fn session(record: bool, other: Codec) -> MediaSession {
    let mut s = MediaSession::new(MediaConfig::new(None, 9));
    let pcmu = RtpFormat::new(Codec::Pcmu, PayloadType::PCMU);
    let pt = if other == Codec::Pcma {
        PayloadType::PCMA
    } else {
        PayloadType::PCMU
    };
    let formats = [pcmu, RtpFormat::new(other, pt)];
    for (leg, port, remote) in [(0u32, 20000, A), (1, 20002, B)] {
        s.handle_command(
            Instant::ZERO,
            MediaCommand::AddRtp {
                leg: LegKey(leg),
                local_port: port,
                remote: Some(remote.parse().unwrap()),
                format: formats[leg as usize],
                rtcp_mux: false,
                latch_from: None,
            },
        );
    }
    for c in MediaCommand::connect(LegKey(0), LegKey(1)) {
        s.handle_command(Instant::ZERO, c);
    }
    if record {
        let id = RecordingId(1);
        let spec = RecordSpec {
            channels: RecordChannels::Dual,
            format: RecordFormat::Wav,
            rate: 8000,
            call: CallId(1),
            number: None,
            from: String::new(),
            to: String::new(),
            source: "api".into(),
            fork: None,
        };
        s.handle_command(
            Instant::ZERO,
            MediaCommand::RecordStart {
                id,
                spec: Box::new(spec),
            },
        );
        s.handle_command(
            Instant::ZERO,
            MediaCommand::RecordFeeds {
                id,
                channels: [vec![Feed::leg(LegKey(0))], vec![Feed::leg(LegKey(1))]],
            },
        );
    }
    s
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    let (a, b) = (payloads(500, 0), payloads(500, 7));
    let (from_a, from_b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    for (other, path) in [(Codec::Pcmu, "relayed"), (Codec::Pcma, "transcoded")] {
        for record in [false, true] {
            let mut s = session(record, other);
            let pt_b = if other == Codec::Pcma {
                PayloadType::PCMA
            } else {
                PayloadType::PCMU
            };
            let queue = Mutex::new(FrameQueue::new(320, 250));
            let mut pcm = [0i16; RECORD_FRAME_MAX];
            let mut i = 0usize;
            let name = format!(
                "call_2party_{path}{}_per_frame",
                if record { "_recorded" } else { "" }
            );
            g.bench_function(name, |bn| {
                bn.iter(|| {
                    let now = Instant::from_millis(20 * i as u64);
                    let seq = i as u16;
                    s.handle_rtp(
                        now,
                        20000,
                        from_a,
                        packet(&a[i % a.len()], seq, 5, PayloadType::PCMU),
                    );
                    s.handle_rtp(now, 20002, from_b, packet(&b[i % b.len()], seq, 6, pt_b));
                    while let Some(t) = s.poll_timeout().filter(|t| *t <= now) {
                        s.handle_timeout(t);
                    }
                    while let Some(t) = s.poll_transmit() {
                        black_box(t);
                    }
                    // The driver hands each frame to its writer's queue.
                    while let Some(o) = s.poll_record(&mut pcm) {
                        if let sip_bridge::media::RecordOut::Frame { samples, .. } = o
                            && let Ok(mut q) = queue.lock()
                        {
                            q.push(&pcm[..samples]);
                        }
                    }
                    if let Ok(mut q) = queue.lock() {
                        while q.pop_into(&mut pcm) {}
                    }
                    i += 1;
                })
            });
        }
    }
    // The hand-over alone: one 20 ms stereo frame into the locked queue.
    let queue = Mutex::new(FrameQueue::new(320, 250));
    let frame: Vec<i16> = speech_like(8000, 320);
    let mut out = vec![0i16; 320];
    g.bench_function("queue_push_stereo_8k_per_frame", |bn| {
        bn.iter(|| {
            if let Ok(mut q) = queue.lock() {
                q.push(black_box(&frame));
                q.pop_into(&mut out);
            }
        })
    });
    // The writer's thread: one frame into the file's bytes.
    let mut wav = WavWriter::new(8000, 2, Duration::from_secs(1 << 30)).unwrap();
    let mut bytes = Vec::with_capacity(4096);
    g.bench_function("wav_write_stereo_8k_per_frame", |bn| {
        bn.iter(|| {
            bytes.clear();
            // A file holds 4 GiB: a new one when full (rare, in the noise).
            if wav.write(black_box(&frame), &mut bytes).is_err() {
                wav = WavWriter::new(8000, 2, Duration::from_secs(1 << 30)).unwrap();
            }
            black_box(&bytes);
        })
    });
    for rate in [8000u32, 16_000] {
        let stereo: Vec<i16> = speech_like(rate, 2 * rate as usize / 50);
        let mut ogg = OggOpusWriter::new(rate, 2, 48_000, 7, Duration::from_secs(1 << 30)).unwrap();
        let mut bytes = Vec::with_capacity(8192);
        ogg.start(&mut bytes).unwrap();
        g.bench_function(
            format!("ogg_opus_write_stereo_{}k_per_frame", rate / 1000),
            |bn| {
                bn.iter(|| {
                    bytes.clear();
                    if ogg.write(black_box(&stereo), &mut bytes).is_err() {
                        ogg = OggOpusWriter::new(rate, 2, 48_000, 7, Duration::from_secs(1 << 30))
                            .unwrap();
                    }
                    black_box(&bytes);
                })
            },
        );
    }
    // A fork's framing per 20 ms frame: native (PCM16LE bytes) and Twilio
    // (u-law, base64 and JSON per track).
    for (framing, rate, name) in [
        (
            ForkFraming::Native,
            16_000u32,
            "fork_native_stereo_16k_per_frame",
        ),
        (
            ForkFraming::Twilio,
            8000,
            "fork_twilio_both_tracks_per_frame",
        ),
    ] {
        let spec = RecordSpec {
            channels: RecordChannels::Dual,
            format: RecordFormat::Wav,
            rate,
            call: CallId(1),
            number: None,
            from: String::new(),
            to: String::new(),
            source: "api".into(),
            fork: Some(ForkSpec {
                url: "ws://x/".into(),
                framing,
                headers: Vec::new(),
            }),
        };
        let mut framer = ForkFramer::new(RecordingId(1), &spec);
        let stereo: Vec<i16> = speech_like(rate, 2 * rate as usize / 50);
        let mut out = Vec::with_capacity(4);
        g.bench_function(name, |bn| {
            bn.iter(|| {
                out.clear();
                framer.frame(black_box(&stereo), &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
