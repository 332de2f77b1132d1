//! What a conference encodes per 20 ms tick. Everyone who is not talking hears
//! the same frame, the full mix, encoded once per output format (Asterisk's
//! trick); a talker hears a mix without itself, encoded for it alone. So five
//! parties with one codec and one talker need two encodes a tick, whatever the
//! codec, and send at most two distinct payloads. Counted two ways: the
//! session's `MediaStats::mix_encodes`, and the payloads on the wire.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use media_core::analysis::speech_like;
use media_core::codec::{Codec, OpusEncoder, OpusEncoderConfig, OpusFmtp, g711};
use media_core::pipeline::RtpFormat;
use media_core::rtp::{PayloadType, RtpHeader, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{Instant, SampleRate, SeededRng};
use sip_bridge::bridge::{Feed, LegKey, MediaCommand};
use sip_bridge::media::{MediaConfig, MediaSession};

const WARM_UP: usize = 50;
const MEASURED: usize = 200;

fn peer(k: usize) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 1 + k as u8], 4000))
}

fn port(k: usize) -> u16 {
    20000 + 2 * k as u16
}

fn format(codec: Codec) -> RtpFormat {
    match codec {
        // As a browser asks for it.
        Codec::Opus => RtpFormat {
            opus: Some(OpusFmtp::parse("minptime=10;useinbandfec=1")),
            ..RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap())
        },
        c => RtpFormat::new(c, c.static_payload_type().unwrap()),
    }
}

/// One SIP leg per codec, party `k` on `port(k)` toward `peer(k)`, each
/// hearing every other.
fn conference(codecs: &[Codec]) -> MediaSession {
    let mut s = MediaSession::new(MediaConfig::new(None, 3));
    for (k, &codec) in codecs.iter().enumerate() {
        let cmd = MediaCommand::AddRtp {
            leg: LegKey(k as u32),
            local_port: port(k),
            remote: Some(peer(k)),
            format: format(codec),
            rtcp_mux: false,
            latch_from: None,
        };
        s.handle_command(Instant::ZERO, cmd);
    }
    for k in 0..codecs.len() {
        let feeds = (0..codecs.len())
            .filter(|&j| j != k)
            .map(|j| Feed::leg(LegKey(j as u32)))
            .collect();
        let cmd = MediaCommand::Hear {
            listener: LegKey(k as u32),
            feeds,
        };
        s.handle_command(Instant::ZERO, cmd);
    }
    s
}

/// Party `k`'s packets: speech when it talks, else line noise under the
/// mixer's talk threshold.
fn packets(codec: Codec, k: usize, talks: bool, n: usize) -> Vec<BytesMut> {
    let rate = if codec == Codec::Opus { 48_000 } else { 8000 };
    let frame = rate as usize / 50;
    let pcm: Vec<i16> = if talks {
        speech_like(rate, frame * (n + 37 * k))[frame * 37 * k..].to_vec()
    } else {
        let mut rng = SeededRng::new(k as u64);
        (0..frame * n)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * 35.0) as i16)
            .collect()
    };
    let mut opus = OpusEncoder::new(OpusEncoderConfig {
        sample_rate: SampleRate::HZ_48000,
        ..OpusEncoderConfig::default()
    })
    .unwrap();
    pcm.chunks(frame)
        .enumerate()
        .map(|(i, f)| {
            let mut payload = [0u8; 1500];
            let len = match codec {
                Codec::Opus => opus.encode(f, &mut payload).unwrap(),
                Codec::Pcma => g711::alaw_encode(f, &mut payload),
                _ => g711::ulaw_encode(f, &mut payload),
            };
            let w = RtpWriter::new(
                format(codec).payload_type,
                SeqNo(i as u16),
                RtpTimestamp((i * frame) as u32),
                Ssrc(100 + k as u32),
            );
            let mut buf = BytesMut::zeroed(1500);
            let len = w.write_packet(&payload[..len], &mut buf).unwrap();
            buf.truncate(len);
            buf
        })
        .collect()
}

/// Per measured tick: the encodes the session counted, and the distinct
/// payloads it sent.
#[derive(Debug, Default)]
struct Counts {
    encodes: Vec<u64>,
    distinct: Vec<usize>,
}

/// `codecs.len()` parties, the first `talkers` talking, every party sending a
/// packet every 20 ms.
fn run(codecs: &[Codec], talkers: usize) -> Counts {
    let mut s = conference(codecs);
    let mut streams: Vec<_> = (0..codecs.len())
        .map(|k| packets(codecs[k], k, k < talkers, WARM_UP + MEASURED).into_iter())
        .collect();
    let mut now = Instant::ZERO;
    let mut counts = Counts::default();
    for i in 0..WARM_UP + MEASURED {
        let before = s.stats();
        for (k, p) in streams.iter_mut().enumerate() {
            s.handle_rtp(now, port(k), peer(k), p.next().unwrap());
        }
        now += Duration::from_millis(20);
        while s.poll_timeout().is_some_and(|t| t <= now) {
            s.handle_timeout(now);
        }
        let mut payloads = BTreeSet::new();
        while let Some(t) = s.poll_transmit() {
            if matches!(t.via, sip_bridge::media::Via::Rtcp(_)) {
                continue; // the legs' RTCP reports
            }
            let h = RtpHeader::parse(&t.bytes).unwrap();
            payloads.insert(t.bytes[h.payload_range()].to_vec());
        }
        let after = s.stats();
        assert_eq!(after.mix_ticks - before.mix_ticks, 1, "one tick per 20 ms");
        if i >= WARM_UP {
            counts.encodes.push(after.mix_encodes - before.mix_encodes);
            counts.distinct.push(payloads.len());
        }
    }
    counts
}

#[test]
fn five_g711_parties_with_one_talker_encode_two_frames_a_tick() {
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let c = run(&[codec; 5], 1);
        // The full mix (the talker) for four listeners, the talker's own
        // (silence: nobody else talks) for the talker.
        assert!(
            c.encodes.iter().all(|&n| n == 2),
            "{codec:?}: {:?}",
            c.encodes
        );
        assert!(
            c.distinct.iter().all(|&n| n <= 2),
            "{codec:?}: {:?}",
            c.distinct
        );
        // Both differ whenever the talker is not in a pause of its speech.
        assert!(c.distinct.contains(&2), "{codec:?}: {:?}", c.distinct);
    }
}

#[test]
fn five_opus_parties_with_one_talker_run_two_encoders_a_tick() {
    let c = run(&[Codec::Opus; 5], 1);
    assert!(c.encodes.iter().all(|&n| n == 2), "{:?}", c.encodes);
    // Four listeners are sent the one payload of the full mix.
    assert!(c.distinct.iter().all(|&n| n <= 2), "{:?}", c.distinct);
}

#[test]
fn mixed_codecs_encode_the_full_mix_once_per_format() {
    use Codec::{Opus, Pcmu};
    let parties = [Pcmu, Opus, Pcmu, Opus, Pcmu];
    // One talker: the full mix in PCMU and in Opus, and the talker's own.
    let c = run(&parties, 1);
    assert!(c.encodes.iter().all(|&n| n == 3), "{:?}", c.encodes);
    // Everyone talking: everyone hears a mix of its own, nothing is shared.
    let c = run(&parties, 5);
    assert!(c.encodes.iter().all(|&n| n == 5), "{:?}", c.encodes);
}
