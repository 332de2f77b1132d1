//! A browser call echoed by the far end, on virtual time: Opus from the browser
//! goes through one pipeline (its jitter buffer, then PCMU out), the far end sends
//! it straight back, and a second pipeline (jitter buffer, Opus out) carries it
//! home. The first pipeline's output timeline is the second one's arrival
//! timeline, so whatever the first does to its clock, the second sees as jitter.
//! The browser's packets stall for 100 ms once (Wi-Fi), then come in a burst.

use bytes::Bytes;
use media_core::codec::{Codec, OpusEncoder, OpusEncoderConfig};
use media_core::jitter::JitterConfig;
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{ClockRate, Instant};
use std::time::Duration;

fn buffered(input: RtpFormat, output: RtpFormat, clock: u32, seed: u64) -> MediaPipeline {
    let mut cfg = PipelineConfig::new(
        Endpoint::Rtp(input),
        Endpoint::Rtp(output),
        Ssrc(seed as u32),
        seed,
    );
    cfg.jitter = Some(JitterConfig::new(ClockRate(clock)));
    MediaPipeline::new(cfg).unwrap()
}

/// Runs `pipe`'s timer as a runtime would: 1 ms after it asked.
fn wake(pipe: &mut MediaPipeline, now: Instant) {
    if pipe
        .poll_timeout()
        .is_some_and(|t| t + Duration::from_millis(1) <= now)
    {
        pipe.handle_timeout(now);
    }
}

#[test]
fn a_stall_upstream_does_not_raise_the_delay_downstream() {
    let opus = RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap());
    let pcmu = RtpFormat::new(Codec::Pcmu, PayloadType::PCMU);
    let mut up = buffered(opus, pcmu, 48_000, 1);
    let mut down = buffered(pcmu, opus, 8_000, 2);
    let mut browser = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let (stall_from, stall_to) = (3_000u64, 3_100u64);
    let mut held = Vec::new();
    let (mut seq, mut ts) = (0u16, 0u32);
    // (ms, target, current) of the downstream buffer, every 250 ms.
    let mut downstream = Vec::new();
    let mut up_delay_after = Vec::new();
    for ms in 0..10_000u64 {
        let now = Instant::from_millis(ms);
        if ms % 20 == 0 {
            // Silence with a 20 ms click every 0.7 s: the stretch has both.
            let mut pcm = vec![0i16; 960];
            if ms % 700 < 20 {
                for (i, s) in pcm.iter_mut().enumerate() {
                    *s = if i % 48 < 24 { 8000 } else { -8000 };
                }
            }
            let mut payload = [0u8; 1500];
            let n = browser.encode(&pcm, &mut payload).unwrap();
            let w = RtpWriter::new(
                PayloadType::new(111).unwrap(),
                SeqNo(seq),
                RtpTimestamp(ts),
                Ssrc(9),
            );
            let mut buf = vec![0u8; 12 + n];
            let len = w.write_packet(&payload[..n], &mut buf).unwrap();
            buf.truncate(len);
            (seq, ts) = (seq.wrapping_add(1), ts.wrapping_add(960));
            let p = RtpPacket::parse(Bytes::from(buf)).unwrap();
            if (stall_from..stall_to).contains(&ms) {
                held.push(p);
            } else {
                let _ = up.handle_rtp(now, &p);
            }
        }
        if ms == stall_to {
            for p in held.drain(..) {
                let _ = up.handle_rtp(now, &p);
            }
        }
        wake(&mut up, now);
        // The far end echoes at once.
        let mut echoed = Vec::new();
        while let Some(o) = up.poll_packet() {
            echoed.push(o.bytes.to_vec());
        }
        for b in echoed {
            let _ = down.handle_rtp(now, &RtpPacket::parse(Bytes::from(b)).unwrap());
        }
        wake(&mut down, now);
        while down.poll_packet().is_some() {}
        if ms % 250 == 0 && ms >= 2_500 {
            let d = down.jitter_stats().unwrap();
            downstream.push((ms, d.target_delay_ms, d.current_delay_ms));
            if ms >= 4_000 {
                up_delay_after.push(up.jitter_stats().unwrap().current_delay_ms);
            }
        }
    }
    let before = downstream[0];
    assert!(
        before.1 <= 21.0,
        "downstream target before the stall: {before:?}"
    );
    // The upstream buffer recovers from its stall within a second...
    let up_target = up.jitter_stats().unwrap().target_delay_ms;
    assert!(
        up_delay_after.iter().all(|&d| d <= up_target + 5.0),
        "upstream delay after 4 s: {up_delay_after:?} (target {up_target})"
    );
    // ...without the downstream buffer taking its recovery for jitter: before,
    // the upstream clock ran slow against its own stretch, its output walked
    // 20 ms late, and the downstream target went from 20 to 37 ms for good.
    for &(ms, target, _) in &downstream {
        assert!(
            target <= before.1 + 3.0,
            "downstream target {target} ms at {ms} ms: {downstream:?}"
        );
    }
    // And the delay it plays at is back near its target by the end.
    let (_, target, current) = *downstream.last().unwrap();
    assert!(
        current <= target + 5.0,
        "downstream {current} ms, target {target}: {downstream:?}"
    );
}
