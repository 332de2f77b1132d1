//! The allocations of a call's media session per packet, after a warm-up: a
//! counting global allocator (per thread, so parallel tests do not disturb each
//! other) watches packets go from one SIP leg to the other. A relayed packet is
//! rewritten in the buffer it arrived in and sent from it; a transcoded one is
//! parsed without a copy, and its output is split off a per-session block that
//! is reused once the driver has sent (dropped) what was split off it. A
//! conference (3 and 5 parties, PCMU and Opus) allocates nothing per 20 ms
//! tick either: every party's packet in, the mix, a packet out to each; nor
//! does a recorded call (relayed or transcoded) per packet and frame.
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait.

// media-core's counting allocator, shared by path: a test crate of its own for
// one file would cost more than it saves.
#[path = "../../media-core/tests/support/counting_alloc.rs"]
mod counting_alloc;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use counting_alloc::allocations_during;
use media_core::analysis::speech_like;
use media_core::codec::{Codec, OpusEncoder, OpusEncoderConfig, OpusFmtp, g711};
use media_core::pipeline::RtpFormat;
use media_core::rtp::{PayloadType, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{Instant, SampleRate, SeededRng};
use sip_bridge::bridge::{Feed, LegKey, MediaCommand};
use sip_bridge::media::{MediaConfig, MediaSession};

const PEER_A: &str = "203.0.113.5:30000";
const PEER_B: &str = "198.51.100.9:4000";
const WARM_UP: usize = 50;
const MEASURED: usize = 500;

fn format(codec: Codec) -> RtpFormat {
    let pt = match codec {
        Codec::Pcmu => PayloadType::PCMU,
        Codec::Pcma => PayloadType::PCMA,
        _ => PayloadType::new(111).unwrap(),
    };
    RtpFormat::new(codec, pt)
}

/// Leg 0 on port 20000 toward `PEER_A` in PCMU, leg 1 on 20002 toward `PEER_B`
/// in `b`, connected.
fn session(b: Codec) -> MediaSession {
    session_with(MediaConfig::new(None, 7), b)
}

fn session_with(cfg: MediaConfig, b: Codec) -> MediaSession {
    let mut s = MediaSession::new(cfg);
    for (leg, local_port, remote, codec) in [(0, 20000, PEER_A, Codec::Pcmu), (1, 20002, PEER_B, b)]
    {
        let cmd = MediaCommand::AddRtp {
            leg: LegKey(leg),
            local_port,
            remote: Some(remote.parse().unwrap()),
            format: format(codec),
            rtcp_mux: false,
            latch_from: None,
        };
        s.handle_command(Instant::ZERO, cmd);
    }
    for cmd in MediaCommand::connect(LegKey(0), LegKey(1)) {
        s.handle_command(Instant::ZERO, cmd);
    }
    s
}

/// PCMU packets of a 440 Hz tone, built before anything is counted, each split
/// off one buffer as the sbc's socket reader splits datagrams off its own.
fn pcmu_packets(n: usize) -> Vec<BytesMut> {
    let mut buf = BytesMut::zeroed(n * 200);
    (0..n)
        .map(|i| {
            let pcm: Vec<i16> = (0..160)
                .map(|k| {
                    let t = (i * 160 + k) as f64 / 8000.0;
                    (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                })
                .collect();
            let mut payload = [0u8; 160];
            g711::ulaw_encode(&pcm, &mut payload);
            let w = RtpWriter::new(
                PayloadType::PCMU,
                SeqNo(i as u16),
                RtpTimestamp(i as u32 * 160),
                Ssrc(5),
            );
            let len = w.write_packet(&payload, &mut buf).unwrap();
            let mut packet = buf.split_to(200);
            packet.truncate(len);
            packet
        })
        .collect()
}

/// Feeds `packets` from leg 0's peer, 20 ms apart, running the session's
/// timers and dropping what it sends at once, as the driver does (frees are not
/// counted). Returns the allocations during the last `MEASURED` packets and how
/// many datagrams went to leg 1's peer in that time.
fn run(s: &mut MediaSession, packets: Vec<BytesMut>) -> (u64, usize) {
    let from: SocketAddr = PEER_A.parse().unwrap();
    let to_b: SocketAddr = PEER_B.parse().unwrap();
    let mut now = Instant::ZERO;
    let (mut allocs, mut out) = (0, 0);
    for (i, p) in packets.into_iter().enumerate() {
        let mut sent = 0;
        let n = allocations_during(|| {
            s.handle_rtp(now, 20000, from, p);
            now += Duration::from_millis(20);
            while s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            while let Some(t) = s.poll_transmit() {
                sent += usize::from(t.to == to_b);
            }
        });
        if i >= WARM_UP {
            allocs += n;
            out += sent;
        }
    }
    (allocs, out)
}

#[test]
fn a_relayed_packet_allocates_nothing() {
    let mut s = session(Codec::Pcmu);
    let packets = pcmu_packets(WARM_UP + MEASURED);
    let (allocs, out) = run(&mut s, packets);
    assert_eq!(out, MEASURED, "every packet relayed");
    assert_eq!(allocs, 0, "allocations while relaying {MEASURED} packets");
}

#[test]
fn a_transcoded_packet_allocates_nothing() {
    for b in [Codec::Pcma, Codec::Opus] {
        let mut s = session(b);
        let packets = pcmu_packets(WARM_UP + MEASURED);
        let (allocs, out) = run(&mut s, packets);
        assert!(
            out >= MEASURED - 2,
            "{b:?}: {out} of {MEASURED} packets transcoded"
        );
        // Each used to cost four allocations of its own (the list of legs fed,
        // a parse copy, an output copy, a list of output packets).
        assert_eq!(allocs, 0, "{b:?}: allocations for {out} packets");
    }
}

#[test]
fn a_packet_through_a_jitter_buffer_allocates_nothing() {
    // Played out on the buffer's clock: `handle_timeout` every 20 ms, as in
    // every call with a browser or an agent (it built a list of the legs each
    // time).
    for b in [Codec::Pcma, Codec::Opus] {
        let mut cfg = MediaConfig::new(None, 7);
        cfg.sip_jitter_buffer = true;
        let mut s = session_with(cfg, b);
        let packets = pcmu_packets(WARM_UP + MEASURED);
        let (allocs, out) = run(&mut s, packets);
        assert!(
            out >= MEASURED - 2,
            "{b:?}: {out} of {MEASURED} packets transcoded"
        );
        assert_eq!(allocs, 0, "{b:?}: allocations for {out} packets");
    }
}

/// Starts recording leg 0 (channel 1) and leg 1 (channel 2), two channels
/// at 8 kHz, as the call does.
fn record(s: &mut MediaSession) {
    let id = sip_bridge::contract::RecordingId(7);
    let spec = sip_bridge::contract::RecordSpec {
        channels: sip_bridge::contract::RecordChannels::Dual,
        format: sip_bridge::contract::RecordFormat::Wav,
        rate: 8000,
        call: sip_bridge::contract::CallId(1),
        number: None,
        from: "+15550111".into(),
        to: "+15550100".into(),
        source: "plan".into(),
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

#[test]
fn a_recorded_call_allocates_nothing_per_packet_or_frame() {
    // What the driver reads (each frame into its own buffer) is counted too.
    for b in [Codec::Pcma, Codec::Opus, Codec::Pcmu] {
        let mut s = session(b);
        record(&mut s);
        let from: SocketAddr = PEER_A.parse().unwrap();
        let mut now = Instant::ZERO;
        let mut pcm = [0i16; sip_bridge::media::RECORD_FRAME_MAX];
        let (mut allocs, mut frames) = (0, 0);
        for (i, p) in pcmu_packets(WARM_UP + MEASURED).into_iter().enumerate() {
            let mut got = 0;
            let n = allocations_during(|| {
                s.handle_rtp(now, 20000, from, p);
                now += Duration::from_millis(20);
                while s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
                while s.poll_transmit().is_some() {}
                while let Some(o) = s.poll_record(&mut pcm) {
                    got += usize::from(matches!(o, sip_bridge::media::RecordOut::Frame { .. }));
                }
            });
            if i >= WARM_UP {
                allocs += n;
                frames += got;
            }
        }
        assert!(
            frames >= MEASURED - 2,
            "{b:?}: {frames} frames for {MEASURED} packets"
        );
        assert_eq!(allocs, 0, "{b:?}: allocations for {frames} recorded frames");
    }
}

// ----- conferences: the call clock's mix -----

/// Party `k`'s peer.
fn party_peer(k: usize) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 1 + k as u8], 4000))
}

/// Party `k`'s local port.
fn party_port(k: usize) -> u16 {
    20000 + 2 * k as u16
}

/// An Opus leg standing in for a browser (which asks for in-band FEC).
fn browser_opus() -> RtpFormat {
    RtpFormat {
        opus: Some(OpusFmtp::parse("minptime=10;useinbandfec=1")),
        ..format(Codec::Opus)
    }
}

/// A call of one SIP leg per codec in `codecs` (party `k` on `party_port(k)`
/// toward `party_peer(k)`), each hearing every other.
fn conference(codecs: &[Codec]) -> MediaSession {
    let mut s = MediaSession::new(MediaConfig::new(None, 7));
    for (k, &codec) in codecs.iter().enumerate() {
        let cmd = MediaCommand::AddRtp {
            leg: LegKey(k as u32),
            local_port: party_port(k),
            remote: Some(party_peer(k)),
            format: match codec {
                Codec::Opus => browser_opus(),
                c => format(c),
            },
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

/// `n` packets of party `k` in `codec`, built before anything is counted:
/// speech when it talks (from its own point of the signal), else line noise
/// under the mixer's talk threshold (phones and browsers keep sending).
fn party_packets(codec: Codec, k: usize, talks: bool, n: usize) -> Vec<BytesMut> {
    let rate = match codec {
        Codec::Opus => 48_000,
        _ => 8000,
    };
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
    let pt = if codec == Codec::Opus {
        browser_opus().payload_type
    } else {
        format(codec).payload_type
    };
    let mut buf = BytesMut::zeroed(n * 1500);
    pcm.chunks(frame)
        .enumerate()
        .map(|(i, f)| {
            let mut payload = [0u8; 1500];
            let len = match codec {
                Codec::Opus => opus.encode(f, &mut payload).unwrap(),
                Codec::Pcma => g711::alaw_encode(f, &mut payload[..160]),
                _ => g711::ulaw_encode(f, &mut payload[..160]),
            };
            let w = RtpWriter::new(
                pt,
                SeqNo(i as u16),
                RtpTimestamp((i * frame) as u32),
                Ssrc(100 + k as u32),
            );
            let len = w.write_packet(&payload[..len], &mut buf).unwrap();
            let mut packet = buf.split_to(1500);
            packet.truncate(len);
            packet
        })
        .collect()
}

/// One packet per party every 20 ms, the session's tick, what it sends
/// dropped. Returns the allocations during the last `MEASURED` ticks and the
/// fewest datagrams a party got in that time.
fn run_conference(s: &mut MediaSession, mut packets: Vec<Vec<BytesMut>>) -> (u64, usize) {
    let parties = packets.len();
    let mut now = Instant::ZERO;
    let mut allocs = 0;
    let mut got = vec![0usize; parties];
    let mut streams: Vec<_> = packets.iter_mut().map(|p| p.drain(..)).collect();
    for i in 0..WARM_UP + MEASURED {
        let tick: Vec<BytesMut> = streams.iter_mut().map(|p| p.next().unwrap()).collect();
        let mut sent = vec![0usize; parties];
        let n = allocations_during(|| {
            for (k, p) in tick.into_iter().enumerate() {
                s.handle_rtp(now, party_port(k), party_peer(k), p);
            }
            now += Duration::from_millis(20);
            while s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
            while let Some(t) = s.poll_transmit() {
                if let Some(k) = (0..parties).find(|&k| party_peer(k) == t.to) {
                    sent[k] += 1;
                }
            }
        });
        if i >= WARM_UP {
            allocs += n;
            for (g, s) in got.iter_mut().zip(sent) {
                *g += s;
            }
        }
    }
    (allocs, got.into_iter().min().unwrap_or(0))
}

#[test]
fn a_mixed_call_allocates_nothing_per_tick() {
    use Codec::{Opus, Pcmu};
    for codecs in [&[Pcmu, Opus, Pcmu][..], &[Pcmu, Opus, Pcmu, Opus, Pcmu]] {
        for talkers in [1, codecs.len()] {
            let mut s = conference(codecs);
            let packets = (0..codecs.len())
                .map(|k| party_packets(codecs[k], k, k < talkers, WARM_UP + MEASURED))
                .collect();
            let (allocs, fewest) = run_conference(&mut s, packets);
            let case = format!("{} parties, {talkers} talking", codecs.len());
            assert!(s.mixing().is_some(), "{case}: mixed");
            assert!(
                fewest >= MEASURED - 2,
                "{case}: a party got {fewest} of {MEASURED} frames"
            );
            assert_eq!(allocs, 0, "{case}: allocations in {MEASURED} ticks");
        }
    }
}
