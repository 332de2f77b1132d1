//! A four-party call on one 20 ms call clock, the way a media session runs it:
//! parties at different codecs and rates, each with its own tone, decoded to the
//! mixer's 16 kHz (RTP sources through jitter buffers on the call clock, the AI
//! agent's 24 kHz PCM through a resampling pipeline), mixed, and encoded back
//! per listener (PCMU, Opus, PCM 24 kHz), with the full mix encoded once for
//! everyone in its group. Each listener's decoded audio holds exactly the
//! others' tones. Seeded jitter and loss, virtual time.

use bytes::Bytes;
use media_core::analysis::{ToneGenerator, goertzel_level_db};
use media_core::codec::{AudioDecoder, AudioEncoder, Codec, OpusEncoderConfig, OpusFmtp, g711};
use media_core::jitter::JitterConfig;
use media_core::mix::{Gain, Mixer, MixerConfig, OutputGroup};
use media_core::pipeline::{
    EncoderKey, Endpoint, FrameEncoder, MediaPipeline, PipelineConfig, RtpFormat,
};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{Instant, Millis, SampleRate, SeededRng};

const MIX: SampleRate = SampleRate::HZ_16000;
const TICKS: usize = 250; // 5 s
const TONES: [f64; 4] = [440.0, 1000.0, 1500.0, 2000.0];

fn pcmu() -> RtpFormat {
    RtpFormat::new(Codec::Pcmu, PayloadType::PCMU)
}

fn opus() -> RtpFormat {
    RtpFormat {
        opus: Some(OpusFmtp::parse("useinbandfec=1")),
        ..RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap())
    }
}

/// A sender's RTP stream of a tone: `(arrival us, packet)`, 0-30 ms of jitter
/// (in order), 2 % lost.
fn rtp_stream(format: RtpFormat, freq: f64, seed: u64) -> Vec<(u64, RtpPacket)> {
    let rate = format.codec.natural_rate();
    let n = rate.samples_in(Millis(20));
    let mut tone = ToneGenerator::new(rate.hz(), &[(freq, 8000.0)]);
    let config = OpusEncoderConfig {
        sample_rate: rate,
        ..OpusEncoderConfig::default()
    };
    let mut enc = AudioEncoder::new(format.codec, config).unwrap();
    let ticks = format.codec.clock_rate().ticks_in(Millis(20));
    let mut rng = SeededRng::new(seed);
    let mut pcm = vec![0i16; n];
    let mut last = 0;
    let mut out = Vec::new();
    for i in 0..TICKS + 10 {
        tone.fill(&mut pcm);
        let mut payload = [0u8; 1500];
        let len = enc.encode(&pcm, &mut payload).unwrap();
        if rng.chance(0.02) {
            continue;
        }
        let w = RtpWriter::new(
            format.payload_type,
            SeqNo(i as u16),
            RtpTimestamp(i as u32 * ticks),
            Ssrc(seed as u32),
        );
        let mut buf = vec![0u8; 12 + len];
        w.write_packet(&payload[..len], &mut buf).unwrap();
        let at = (i as u64 * 20_000 + (rng.next_f64() * 30_000.0) as u64).max(last);
        last = at;
        out.push((at, RtpPacket::parse(Bytes::from(buf)).unwrap()));
    }
    out
}

/// An RTP source decoded to the mix rate on the call clock.
fn source(format: RtpFormat, seed: u64) -> MediaPipeline {
    let mut cfg = PipelineConfig::new(Endpoint::Rtp(format), Endpoint::Pcm(MIX), Ssrc(9), seed);
    let mut j = JitterConfig::new(format.codec.clock_rate());
    j.external_clock = true;
    cfg.jitter = Some(j);
    MediaPipeline::new(cfg).unwrap()
}

fn output(format: Endpoint, seed: u64) -> PipelineConfig {
    PipelineConfig::new(Endpoint::Pcm(MIX), format, Ssrc(100 + seed as u32), seed)
}

/// What one listener got, decoded, and at what rate.
struct Heard {
    rate: u32,
    pcm: Vec<i16>,
}

impl Heard {
    /// Level of each party's tone over the last 3 s.
    fn levels(&self) -> [f64; 4] {
        let tail = &self.pcm[self.pcm.len() - 3 * self.rate as usize..];
        TONES.map(|f| goertzel_level_db(tail, self.rate, f))
    }
}

#[test]
fn four_parties_on_one_call_clock_each_hear_the_others() {
    // 0: a carrier leg, PCMU. 1: a browser, Opus 48 kHz. 2: an AI agent, PCM16
    // at 24 kHz. 3: a supervisor on PCMU in monitor mode (hears everyone,
    // nobody hears it) who is also sending a 2000 Hz tone.
    let mut mixer = Mixer::new(MixerConfig::new(MIX, 4)).unwrap();
    for l in 0..3 {
        mixer.set_gain(l, 3, Gain::SILENT).unwrap();
    }
    let streams = [
        rtp_stream(pcmu(), TONES[0], 1),
        rtp_stream(opus(), TONES[1], 2),
        Vec::new(),
        rtp_stream(pcmu(), TONES[3], 4),
    ];
    let mut inputs = [
        Some(source(pcmu(), 1)),
        Some(source(opus(), 2)),
        None,
        Some(source(pcmu(), 4)),
    ];
    let mut agent_in = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Pcm(SampleRate::HZ_24000),
        Endpoint::Pcm(MIX),
        Ssrc(3),
        3,
    ))
    .unwrap();
    let mut agent_voice = ToneGenerator::new(24000, &[(TONES[2], 8000.0)]);

    let out_configs = [
        output(Endpoint::Rtp(pcmu()), 1),
        output(Endpoint::Rtp(opus()), 2),
        output(Endpoint::Pcm(SampleRate::HZ_24000), 3),
        output(Endpoint::Rtp(pcmu()), 4),
    ];
    let mut outs: Vec<MediaPipeline> = out_configs
        .iter()
        .map(|c| MediaPipeline::new(*c).unwrap())
        .collect();
    // One shared encoder per output format, for the full mix.
    let mut shared: Vec<(EncoderKey, FrameEncoder)> = Vec::new();
    for (c, p) in out_configs.iter().zip(&outs) {
        if let Some(key) = p.encoder_key()
            && !shared.iter().any(|(k, _)| *k == key)
        {
            shared.push((key, FrameEncoder::for_output(c).unwrap()));
        }
    }
    assert_eq!(shared.len(), 2, "PCMU and Opus");
    let shared_of: Vec<Option<usize>> = outs
        .iter()
        .map(|p| {
            let key = p.encoder_key()?;
            shared.iter().position(|(k, _)| *k == key)
        })
        .collect();

    let mut next = [0usize; 4];
    let mut packets: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 4];
    let mut agent_heard = Vec::new();
    let mut frame = [0i16; 480];
    let mut encodes = 0;
    let mut full_mix_ticks = 0;
    for k in 0..TICKS {
        // The call clock, at a phase of its own against the senders'.
        let now = Instant::from_micros(k as u64 * 20_000 + 11_000);
        for s in [0, 1, 3] {
            let p = inputs[s].as_mut().unwrap();
            while let Some((at, pkt)) = streams[s]
                .get(next[s])
                .filter(|(at, _)| *at <= now.as_micros())
            {
                p.handle_rtp(Instant::from_micros(*at), pkt).unwrap();
                next[s] += 1;
            }
            p.tick(now).unwrap();
            let buf = mixer.input_mut(s).unwrap();
            if p.poll_frame(buf).is_none() {
                mixer.set_absent(s).unwrap();
            }
        }
        agent_voice.fill(&mut frame);
        agent_in.handle_pcm(now, &frame[..480]).unwrap();
        if agent_in.poll_frame(mixer.input_mut(2).unwrap()).is_none() {
            mixer.set_absent(2).unwrap();
        }

        mixer.mix();

        // The full mix, once per format that someone in its group needs.
        let mut payloads: [Option<&[u8]>; 2] = [None, None];
        let mut wanted = [false; 2];
        for (l, of) in shared_of.iter().enumerate() {
            if let Some(i) = *of
                && mixer.output_group(l).unwrap() == OutputGroup::FULL_MIX
            {
                wanted[i] = true;
            }
        }
        for (i, (_, enc)) in shared.iter_mut().enumerate() {
            if wanted[i] {
                payloads[i] = Some(enc.encode(mixer.full_mix()).unwrap());
                encodes += 1;
            }
        }
        for (l, p) in outs.iter_mut().enumerate() {
            let in_full = mixer.output_group(l).unwrap() == OutputGroup::FULL_MIX;
            let payload = shared_of[l].and_then(|i| payloads[i]);
            match payload {
                Some(payload) if in_full => p.handle_encoded(now, payload).unwrap(),
                _ => {
                    p.handle_pcm(now, mixer.output(l).unwrap()).unwrap();
                    encodes += p.encoder_key().is_some() as usize;
                }
            }
            while let Some(o) = p.poll_packet() {
                packets[l].push(o.bytes.to_vec());
            }
            while let Some(n) = p.poll_frame(&mut frame) {
                agent_heard.extend_from_slice(&frame[..n]);
            }
        }
        if k > 10 {
            assert_eq!(mixer.talkers(), 4, "tick {k}");
            assert_eq!(mixer.output_group(3).unwrap(), OutputGroup::FULL_MIX);
            full_mix_ticks += 1;
        }
    }
    // Everyone got one frame per tick.
    assert_eq!(packets[0].len(), TICKS);
    assert_eq!(packets[1].len(), TICKS);
    assert_eq!(packets[3].len(), TICKS);
    assert_eq!(agent_heard.len(), TICKS * 480);
    // Three talkers' own mixes (PCMU, Opus encoded by their pipelines) and the
    // full mix once (PCMU, for the supervisor): 3 encodes a tick, not 4.
    assert!(encodes <= 3 * TICKS, "{encodes}");
    assert!(full_mix_ticks > 0);

    let decode = |pkts: &[Vec<u8>], codec: Codec| -> Heard {
        let rate = if codec == Codec::Opus { 48000 } else { 8000 };
        let mut dec = AudioDecoder::new(codec, SampleRate::new(rate).unwrap()).unwrap();
        let mut pcm = Vec::new();
        let mut buf = vec![0i16; 5760];
        for p in pkts {
            let pkt = RtpPacket::parse(Bytes::copy_from_slice(p)).unwrap();
            let n = match codec {
                Codec::Pcmu => g711::ulaw_decode(pkt.payload_bytes(), &mut buf),
                _ => dec.decode(pkt.payload_bytes(), &mut buf).unwrap(),
            };
            pcm.extend_from_slice(&buf[..n]);
        }
        Heard { rate, pcm }
    };
    let heard = [
        decode(&packets[0], Codec::Pcmu),
        decode(&packets[1], Codec::Opus),
        Heard {
            rate: 24000,
            pcm: agent_heard,
        },
        decode(&packets[3], Codec::Pcmu),
    ];
    for (l, h) in heard.iter().enumerate() {
        let lv = h.levels();
        println!("listener {l} hears {lv:.1?} dB");
        for (s, &level) in lv.iter().enumerate() {
            // Parties 0-2 hear each other; nobody hears 3 but 3 hears all.
            let hears = s != l && (s != 3 || l == 3);
            if hears {
                // 8000 / 32768: -12.2 dB, give or take the codec.
                assert!((level + 12.2).abs() < 2.5, "{l} hears {s}: {lv:?}");
            } else {
                assert!(level < -55.0, "{l} must not hear {s}: {lv:?}");
            }
        }
    }
}
