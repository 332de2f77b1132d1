//! The AI agent leg per 20 ms frame: carrier RTP (PCMU) in -> jitter buffer ->
//! decode -> 24 kHz -> the binary frame for the agent; and back: the agent's
//! frame -> playout queue -> 8 kHz -> PCMU -> RTP out. Both in native framing and
//! in Twilio framing (base64 u-law JSON). `cargo bench -p benches --bench stream`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::Criterion;
use media_core::Instant;
use media_core::analysis::speech_like;
use media_core::codec::{Codec, g711};
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use sip_bridge::stream::{AgentMessage, StreamFormat, StreamLeg, StreamStart};

fn pcmu_packets(n: usize) -> Vec<RtpPacket> {
    let pcm = speech_like(8000, 160 * n);
    pcm.chunks(160)
        .enumerate()
        .map(|(i, f)| {
            let mut payload = [0u8; 160];
            g711::ulaw_encode(f, &mut payload);
            let w = RtpWriter::new(
                PayloadType::PCMU,
                SeqNo(i as u16),
                RtpTimestamp(i as u32 * 160),
                Ssrc(1),
            );
            let mut buf = vec![0u8; 200];
            let len = w.write_packet(&payload, &mut buf).unwrap();
            buf.truncate(len);
            RtpPacket::parse(Bytes::from(buf)).unwrap()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    for format in [StreamFormat::Pcm24k, StreamFormat::Twilio] {
        let rate = format.sample_rate();
        let pcmu = RtpFormat::new(Codec::Pcmu, PayloadType::PCMU);
        let mut cfg = PipelineConfig::new(Endpoint::Rtp(pcmu), Endpoint::Pcm(rate), Ssrc(2), 1);
        cfg.jitter = Some(media_core::jitter::JitterConfig::new(
            Codec::Pcmu.clock_rate(),
        ));
        let mut inbound = MediaPipeline::new(cfg).unwrap();
        let mut outbound = MediaPipeline::new(PipelineConfig::new(
            Endpoint::Pcm(rate),
            Endpoint::Rtp(pcmu),
            Ssrc(3),
            2,
        ))
        .unwrap();
        let mut leg = StreamLeg::new(format, &StreamStart::default());
        while leg.poll_message().is_some() {}
        let packets = pcmu_packets(500);
        // What an agent sends back: 20 ms of speech at the stream's rate, framed.
        let agent_pcm = speech_like(rate.hz(), format.frame_samples());
        let agent_msg = match format {
            StreamFormat::Pcm24k => AgentMessage::Binary(Bytes::from(
                agent_pcm
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )),
            StreamFormat::Twilio => {
                use base64::Engine;
                let mut ulaw = vec![0u8; agent_pcm.len()];
                g711::ulaw_encode(&agent_pcm, &mut ulaw);
                let payload = base64::engine::general_purpose::STANDARD.encode(&ulaw);
                AgentMessage::Text(
                    serde_json::json!({"event": "media", "media": {"payload": payload}})
                        .to_string(),
                )
            }
        };
        let mut i = 0usize;
        let mut frame = vec![0i16; 960];
        let mut playout = vec![0i16; format.frame_samples()];
        g.bench_function(format!("{}_both_ways_per_frame", format.as_str()), |b| {
            b.iter(|| {
                // Carrier -> agent.
                let now = Instant::from_millis(20 * i as u64);
                inbound
                    .handle_rtp(now, &packets[i % packets.len()])
                    .unwrap();
                inbound.handle_timeout(now + std::time::Duration::from_millis(60));
                while let Some(n) = inbound.poll_frame(&mut frame) {
                    leg.push_caller_audio(&frame[..n]);
                }
                while let Some(m) = leg.poll_message() {
                    black_box(m);
                }
                // Agent -> carrier.
                leg.handle_agent(agent_msg.clone()).unwrap();
                leg.next_frame(&mut playout);
                outbound.handle_pcm(now, &playout).unwrap();
                while let Some(p) = outbound.poll_packet() {
                    black_box(p.bytes);
                }
                i += 1;
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
