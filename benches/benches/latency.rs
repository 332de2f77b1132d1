//! End-to-end processing latency inside one process: a carrier's PCMU RTP packet
//! entering a call's media session until the SRTP packet toward the browser
//! leaves, and a browser's SRTP Opus packet until the PCMU RTP packet toward the
//! carrier leaves; zero network jitter, so the jitter buffer sits at its minimum.
//! What is timed is the processing (our calls), not the jitter buffer's intended
//! hold: the packet's `handle_*` call plus the playout `handle_timeout` that turns
//! it into the outgoing packet. Prints p50/p99/max per direction, then a criterion
//! run of one 20 ms frame each way. `cargo bench -p benches --bench latency`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::Criterion;
use media_core::Instant;
use media_core::analysis::speech_like;
use media_core::codec::{Codec, OpusEncoder, OpusEncoderConfig, g711};
use media_core::pipeline::RtpFormat;
use media_core::rtp::{PayloadType, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use sip_bridge::bridge::{LegKey, MediaCommand, MediaEvent};
use sip_bridge::media::{MediaConfig, MediaSession, Via};
use sip_bridge::webrtc::{DtlsIdentity, WebRtcConfig};
use str0m::change::SdpAnswer;
use str0m::format::Codec as SCodec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const SBC_RTP: u16 = 20000;
const FRAME: Duration = Duration::from_millis(20);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A call's media session with a carrier RTP leg (0) and a connected browser
/// leg (1), and the str0m peer playing the browser.
struct Call {
    epoch: std::time::Instant,
    now: Instant,
    session: MediaSession,
    browser: Rtc,
    mid: Mid,
    deadline: Instant,
    /// SRTP datagrams the session sent toward the browser (counted, delivered).
    to_browser: usize,
    /// RTP datagrams the session sent toward the carrier.
    to_carrier: usize,
    seq: u16,
    pcmu: Vec<[u8; 160]>,
    opus: Vec<Vec<u8>>,
}

impl Call {
    fn new() -> Call {
        #[allow(clippy::disallowed_methods)] // the epoch of virtual time
        let epoch = std::time::Instant::now();
        let webrtc = WebRtcConfig::new(
            addr("10.0.0.1:3478"),
            DtlsIdentity::generate().unwrap(),
            epoch,
        );
        let mut session = MediaSession::new(MediaConfig::new(Some(webrtc), 1));
        let mut cfg = Rtc::builder().clear_codecs().enable_opus(true, false);
        cfg.codec_config().add_config(
            110.into(),
            None,
            SCodec::Tele,
            Frequency::FORTY_EIGHT_KHZ,
            None,
            str0m::format::FormatParams::default(),
        );
        let mut browser = cfg.build(epoch);
        browser.add_local_candidate(Candidate::host(addr("10.0.1.1:50000"), "udp").unwrap());
        let mut change = browser.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let now = Instant::ZERO;
        session.handle_command(
            now,
            MediaCommand::AddRtp {
                leg: LegKey(0),
                local_port: SBC_RTP,
                remote: Some(addr("10.0.0.2:30000")),
                format: RtpFormat::new(Codec::Pcmu, PayloadType::PCMU),
                rtcp_mux: false,
                latch_from: None,
            },
        );
        session.handle_command(
            now,
            MediaCommand::AddWebRtc {
                leg: LegKey(1),
                offer: offer.to_sdp_string(),
            },
        );
        let answer = std::iter::from_fn(|| session.poll_event())
            .find_map(|e| match e {
                MediaEvent::WebRtcAnswer { sdp, .. } => Some(sdp),
                _ => None,
            })
            .unwrap();
        browser
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        for cmd in MediaCommand::connect(LegKey(0), LegKey(1)) {
            session.handle_command(now, cmd);
        }
        let speech = speech_like(8000, 160 * 50);
        let pcmu = speech
            .chunks(160)
            .map(|f| {
                let mut p = [0u8; 160];
                g711::ulaw_encode(f, &mut p);
                p
            })
            .collect();
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let speech48 = speech_like(48_000, 960 * 50);
        let opus = speech48
            .chunks(960)
            .map(|f| {
                let mut p = [0u8; 1500];
                let n = enc.encode(f, &mut p).unwrap();
                p[..n].to_vec()
            })
            .collect();
        let mut c = Call {
            epoch,
            now,
            session,
            browser,
            mid,
            deadline: now,
            to_browser: 0,
            to_carrier: 0,
            seq: 0,
            pcmu,
            opus,
        };
        // ICE + DTLS on virtual time.
        for _ in 0..200 {
            c.step_network();
            c.now += Duration::from_millis(5);
            let now = c.now;
            if c.session.poll_timeout().is_some_and(|t| t <= now) {
                c.session.handle_timeout(now);
            }
        }
        c
    }

    fn std(&self) -> std::time::Instant {
        self.epoch + Duration::from_micros(self.now.as_micros())
    }

    /// Moves datagrams between the session and the browser until both are quiet.
    fn step_network(&mut self) {
        for _ in 0..50 {
            let mut any = false;
            while let Some(t) = self.session.poll_transmit() {
                any = true;
                match t.via {
                    Via::WebRtc => {
                        self.to_browser += 1;
                        let t_std = self.std();
                        if let Ok(r) =
                            Receive::new(Protocol::Udp, addr("10.0.0.1:3478"), t.to, &t.bytes)
                        {
                            let input = Input::Receive(t_std, r);
                            if self.browser.accepts(&input) {
                                let _ = self.browser.handle_input(input);
                            }
                        }
                    }
                    Via::Rtp(_) => self.to_carrier += 1,
                    Via::Rtcp(_) => {}
                }
            }
            loop {
                match self.browser.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        let d = t.saturating_duration_since(self.epoch);
                        self.deadline = Instant::from_micros(d.as_micros() as u64);
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        any = true;
                        let now = self.now;
                        self.session.handle_webrtc(
                            now,
                            LegKey(1),
                            t.source,
                            t.destination,
                            &t.contents,
                        );
                    }
                    Ok(Output::Event(Event::MediaData(_))) | Ok(Output::Event(_)) => {}
                    Err(_) => break,
                }
            }
            if self.deadline <= self.now {
                let t = self.std();
                let _ = self.browser.handle_input(Input::Timeout(t));
                any = true;
            }
            if !any {
                break;
            }
        }
    }

    fn carrier_packet(&mut self, i: usize) -> BytesMut {
        let w = RtpWriter::new(
            PayloadType::PCMU,
            SeqNo(self.seq),
            RtpTimestamp(160 * i as u32),
            Ssrc(9),
        );
        self.seq = self.seq.wrapping_add(1);
        let mut buf = BytesMut::zeroed(200);
        let n = w
            .write_packet(&self.pcmu[i % self.pcmu.len()], &mut buf)
            .unwrap();
        buf.truncate(n);
        buf
    }

    /// The browser's encrypted packet for frame `i` (produced, not timed).
    fn browser_srtp(&mut self, i: usize) -> Vec<(SocketAddr, SocketAddr, Bytes)> {
        let t = self.std();
        let pt = self.browser.writer(self.mid).and_then(|w| {
            w.payload_params()
                .find(|p| p.spec().codec == SCodec::Opus)
                .map(|p| p.pt())
        });
        if let (Some(pt), Some(w)) = (pt, self.browser.writer(self.mid)) {
            let _ = w.write(
                pt,
                t,
                MediaTime::new(960 * i as u64, Frequency::FORTY_EIGHT_KHZ),
                self.opus[i % self.opus.len()].clone(),
            );
        }
        let mut out = Vec::new();
        while let Ok(o) = self.browser.poll_output() {
            match o {
                Output::Transmit(t) => {
                    out.push((t.source, t.destination, Bytes::copy_from_slice(&t.contents)))
                }
                Output::Timeout(_) => break,
                Output::Event(_) => {}
            }
        }
        out
    }
}

/// Runs `frames` frames in one direction and returns per-packet processing times.
fn measure(direction_carrier_to_browser: bool, frames: usize) -> Vec<Duration> {
    let mut c = Call::new();
    let mut times = Vec::with_capacity(frames);
    let mut pending = Duration::ZERO;
    for i in 0..frames {
        c.now += FRAME;
        let now = c.now;
        // Inputs of this frame (not timed: the peer's own work).
        let carrier = direction_carrier_to_browser.then(|| c.carrier_packet(i));
        let browser = if direction_carrier_to_browser {
            Vec::new()
        } else {
            c.browser_srtp(i)
        };
        #[allow(clippy::disallowed_methods)] // measuring is the point of a bench
        let t0 = std::time::Instant::now();
        if let Some(p) = carrier {
            c.session
                .handle_rtp(now, SBC_RTP, addr("10.0.0.2:30000"), p);
        }
        for (from, to, d) in &browser {
            c.session.handle_webrtc(now, LegKey(1), *from, *to, d);
        }
        if c.session.poll_timeout().is_some_and(|t| t <= now) {
            c.session.handle_timeout(now);
        }
        let spent = t0.elapsed();
        // The packet's insert and the playout that sends it happen on different
        // frames (the jitter buffer's hold); both count, the hold does not.
        let sent_now = {
            let before = if direction_carrier_to_browser {
                c.to_browser
            } else {
                c.to_carrier
            };
            c.step_network();
            let after = if direction_carrier_to_browser {
                c.to_browser
            } else {
                c.to_carrier
            };
            after > before
        };
        pending += spent;
        if sent_now && i > 50 {
            times.push(pending);
            pending = Duration::ZERO;
        } else if sent_now {
            pending = Duration::ZERO;
        }
    }
    times
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report() {
    for (name, dir) in [
        ("carrier RTP -> browser SRTP", true),
        ("browser SRTP -> carrier RTP", false),
    ] {
        let mut t = measure(dir, 3000);
        if t.is_empty() {
            println!("{name}: no packets crossed");
            continue;
        }
        let (p50, p99) = (percentile(&mut t, 0.50), percentile(&mut t, 0.99));
        let max = *t.iter().max().unwrap();
        println!(
            "latency {name}: p50 {:.1} us, p99 {:.1} us, max {:.1} us over {} packets",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6,
            t.len()
        );
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("latency");
    for (name, dir) in [
        ("carrier_to_browser_frame", true),
        ("browser_to_carrier_frame", false),
    ] {
        let mut call = Call::new();
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                call.now += FRAME;
                let now = call.now;
                if dir {
                    let p = call.carrier_packet(i);
                    call.session
                        .handle_rtp(now, SBC_RTP, addr("10.0.0.2:30000"), p);
                } else {
                    for (from, to, d) in call.browser_srtp(i) {
                        call.session.handle_webrtc(now, LegKey(1), from, to, &d);
                    }
                }
                if call.session.poll_timeout().is_some_and(|t| t <= now) {
                    call.session.handle_timeout(now);
                }
                call.step_network();
                i += 1;
            })
        });
    }
    g.finish();
}

fn main() {
    report();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
