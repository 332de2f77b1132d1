//! CPU per 20 ms frame of one active browser leg (`WebRtcLeg` on str0m): SRTP
//! protect + send of one outbound Opus packet, SRTP unprotect of one inbound
//! packet, every leg call of a frame (timers, STUN consent, RTCP included), and the
//! same plus Opus encode + decode at 48 kHz.
//! `cargo bench -p benches --bench webrtc`.
//!
//! A browser-like str0m peer drives a real, connected leg on virtual time (one
//! frame each way per iteration); only the leg's own calls are timed.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use media_core::analysis::sine;
use media_core::codec::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{Instant, SampleRate};
use sip_bridge::webrtc::{DtlsIdentity, WebRtcConfig, WebRtcEvent, WebRtcLeg};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const FRAME: Duration = Duration::from_millis(20);
const SAMPLES: usize = 960;

/// A timer for the leg's calls only (criterion's own clock reads are allowed to it;
/// ours need the explicit allow).
struct Stopwatch(Duration);

impl Stopwatch {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        #[allow(clippy::disallowed_methods)] // measuring is the point here
        let t = std::time::Instant::now();
        let r = f();
        self.0 += t.elapsed();
        r
    }
}

/// What an iteration times.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// `send_rtp` + polling its datagram out.
    ProtectSend,
    /// `handle_input` of one inbound SRTP packet + polling the RTP event.
    UnprotectRecv,
    /// Every call into the leg during a frame.
    LegTotal,
    /// `LegTotal` + Opus encode/decode (48 kHz) + RTP write/parse.
    WithOpus,
}

struct Pair {
    epoch: std::time::Instant,
    now: Instant,
    leg: WebRtcLeg,
    server: SocketAddr,
    browser: Rtc,
    browser_addr: SocketAddr,
    mid: Mid,
    opus_pt: Pt,
    browser_deadline: Instant,
    to_server: Vec<(SocketAddr, Vec<u8>)>,
    to_browser: Vec<Vec<u8>>,
    frame: u64,
    // Media
    pcm: Vec<i16>,
    opus: Vec<Vec<u8>>,
    encoder: OpusEncoder,
    decoder: OpusDecoder,
    scratch: Vec<u8>,
    decoded: Vec<i16>,
}

impl Pair {
    fn connected() -> Pair {
        #[allow(clippy::disallowed_methods)] // the epoch of virtual time
        let epoch = std::time::Instant::now();
        let server: SocketAddr = "192.0.2.10:3478".parse().unwrap();
        let browser_addr: SocketAddr = "198.51.100.7:50000".parse().unwrap();
        let mut cfg = WebRtcConfig::new(server, DtlsIdentity::generate().unwrap(), epoch);
        cfg.idle_timeout = Duration::from_secs(3600);

        let mut browser = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(epoch);
        browser.add_local_candidate(Candidate::host(browser_addr, "udp").unwrap());
        let mut change = browser.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let (leg, answer) =
            WebRtcLeg::accept_offer(Instant::ZERO, &offer.to_sdp_string(), &cfg).unwrap();
        browser
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        let opus_pt = browser
            .writer(mid)
            .unwrap()
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();

        let pcm = sine(48_000, 440.0, 8000.0, 50 * SAMPLES);
        let mut encoder = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let mut buf = [0u8; 1500];
        let opus = pcm
            .chunks(SAMPLES)
            .map(|f| {
                let n = encoder.encode(f, &mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect();
        let mut pair = Pair {
            epoch,
            now: Instant::ZERO,
            leg,
            server,
            browser,
            browser_addr,
            mid,
            opus_pt,
            browser_deadline: Instant::ZERO,
            to_server: Vec::new(),
            to_browser: Vec::new(),
            frame: 0,
            pcm,
            opus,
            encoder,
            decoder: OpusDecoder::new(SampleRate::HZ_48000).unwrap(),
            scratch: vec![0; 1500],
            decoded: vec![0; 5760],
        };
        let mut untimed = Stopwatch(Duration::ZERO);
        for _ in 0..50 {
            pair.tick(Measure::LegTotal, &mut untimed, false);
        }
        assert!(pair.leg.is_connected(), "leg connected");
        pair
    }

    fn std(&self) -> std::time::Instant {
        self.epoch + Duration::from_micros(self.now.as_micros())
    }

    fn drain_browser(&mut self) {
        loop {
            match self.browser.poll_output().unwrap() {
                Output::Timeout(t) => {
                    self.browser_deadline = sip_bridge::webrtc::deadline_from_std(self.epoch, t);
                    return;
                }
                Output::Transmit(t) => self.to_server.push((t.source, t.contents.into())),
                Output::Event(Event::MediaData(d)) => {
                    black_box(d.data.len());
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Advances one 20 ms frame: timers, one Opus frame each way, and every
    /// datagram until both sides are quiet. `media` sends audio (false while
    /// connecting).
    fn tick(&mut self, what: Measure, sw: &mut Stopwatch, media: bool) {
        self.now += FRAME;
        let now = self.now;
        let all = matches!(what, Measure::LegTotal | Measure::WithOpus);
        if self.leg.poll_timeout().is_some_and(|t| t <= now) {
            let leg = &mut self.leg;
            if all {
                sw.time(|| leg.handle_timeout(now));
            } else {
                leg.handle_timeout(now);
            }
        }
        if self.browser_deadline <= now {
            let t = self.std();
            self.browser.handle_input(Input::Timeout(t)).unwrap();
        }
        self.drain_browser();
        if media && self.browser.is_connected() {
            let k = (self.frame % self.opus.len() as u64) as usize;
            let ts = MediaTime::new(self.frame * SAMPLES as u64, Frequency::FORTY_EIGHT_KHZ);
            let wallclock = self.std();
            let payload = self.opus[k].clone();
            self.browser
                .writer(self.mid)
                .unwrap()
                .write(self.opus_pt, wallclock, ts, payload)
                .unwrap();
            self.drain_browser();
        }
        if media && self.leg.is_connected() {
            self.send_server_frame(what, sw);
        }
        self.exchange(what, sw);
        self.frame += 1;
    }

    fn send_server_frame(&mut self, what: Measure, sw: &mut Stopwatch) {
        let now = self.now;
        let k = (self.frame % self.opus.len() as u64) as usize;
        let pt = PayloadType::new(self.leg.payload_types().opus).unwrap();
        let seq = SeqNo(self.frame as u16);
        let ts = RtpTimestamp((self.frame * SAMPLES as u64) as u32);
        let writer = RtpWriter::new(pt, seq, ts, Ssrc(0x1234_5678));
        let (leg, to_browser, scratch) = (&mut self.leg, &mut self.to_browser, &mut self.scratch);
        let mut send = |payload: &[u8]| {
            let n = writer.write_packet(payload, scratch).unwrap();
            leg.send_rtp(now, &scratch[..n]).unwrap();
            while let Some(t) = leg.poll_transmit() {
                to_browser.push(t.bytes.to_vec());
            }
        };
        match what {
            Measure::ProtectSend | Measure::LegTotal => sw.time(|| send(&self.opus[k])),
            Measure::WithOpus => {
                let (enc, pcm) = (&mut self.encoder, &self.pcm[k * SAMPLES..][..SAMPLES]);
                sw.time(|| {
                    let mut out = [0u8; 1500];
                    let n = enc.encode(pcm, &mut out).unwrap();
                    send(&out[..n]);
                })
            }
            Measure::UnprotectRecv => send(&self.opus[k]),
        }
    }

    /// Delivers datagrams both ways until there are none.
    fn exchange(&mut self, what: Measure, sw: &mut Stopwatch) {
        let now = self.now;
        while !self.to_server.is_empty() || !self.to_browser.is_empty() {
            for (from, d) in std::mem::take(&mut self.to_server) {
                let is_media = d.first().is_some_and(|b| b >> 6 == 2)
                    && d.get(1).is_some_and(|pt| !(200..=206).contains(pt));
                let timed = match what {
                    Measure::UnprotectRecv => is_media,
                    Measure::LegTotal | Measure::WithOpus => true,
                    Measure::ProtectSend => false,
                };
                let (leg, server, to_browser) = (&mut self.leg, self.server, &mut self.to_browser);
                let (decoder, decoded) = (&mut self.decoder, &mut self.decoded);
                let with_opus = what == Measure::WithOpus;
                let mut recv = || {
                    let _ = leg.handle_input(now, from, server, &d);
                    while let Some(e) = leg.poll_event() {
                        if let WebRtcEvent::Rtp(bytes) = e {
                            if with_opus {
                                let p = RtpPacket::parse(bytes).unwrap();
                                decoder.decode(p.payload_bytes(), decoded).unwrap();
                            } else {
                                black_box(Bytes::len(&bytes));
                            }
                        }
                    }
                    while let Some(t) = leg.poll_transmit() {
                        to_browser.push(t.bytes.to_vec());
                    }
                };
                if timed {
                    sw.time(recv);
                } else {
                    recv();
                }
            }
            for d in std::mem::take(&mut self.to_browser) {
                let t = self.std();
                let r = Receive::new(Protocol::Udp, self.server, self.browser_addr, &d).unwrap();
                let input = Input::Receive(t, r);
                if self.browser.accepts(&input) {
                    self.browser.handle_input(input).unwrap();
                }
                self.drain_browser();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("webrtc");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for (name, what) in [
        ("protect_send", Measure::ProtectSend),
        ("unprotect_recv", Measure::UnprotectRecv),
        ("leg_total_per_frame", Measure::LegTotal),
        ("with_opus_per_frame", Measure::WithOpus),
    ] {
        let mut pair = Pair::connected();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut sw = Stopwatch(Duration::ZERO);
                for _ in 0..iters {
                    pair.tick(what, &mut sw, true);
                }
                sw.0
            })
        });
        assert!(pair.leg.is_connected(), "{name}: leg still up");
        let s = pair.leg.stats();
        assert!(
            s.packets_in > 0 && s.packets_out > 0 && s.errors == 0,
            "{s:?}"
        );
    }
    // Creating a leg: str0m builds a DTLS context (and validates its crypto) per Rtc.
    #[allow(clippy::disallowed_methods)]
    let epoch = std::time::Instant::now();
    let cfg = WebRtcConfig::new(
        "192.0.2.10:3478".parse().unwrap(),
        DtlsIdentity::generate().unwrap(),
        epoch,
    );
    let offer = browser_offer(epoch);
    g.bench_function("accept_offer", |b| {
        b.iter(|| WebRtcLeg::accept_offer(Instant::ZERO, black_box(&offer), &cfg).unwrap())
    });
    g.finish();
}

fn browser_offer(epoch: std::time::Instant) -> String {
    let mut browser = Rtc::builder().build(epoch);
    browser.add_local_candidate(
        Candidate::host("198.51.100.7:50000".parse().unwrap(), "udp").unwrap(),
    );
    let mut change = browser.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    change.apply().unwrap().0.to_sdp_string()
}

/// Per-leg figures from what criterion measured.
fn summary() {
    let m = |f| benches::mean_ns("webrtc", f);
    let (Some(tx), Some(rx), Some(all), Some(opus)) = (
        m("protect_send"),
        m("unprotect_recv"),
        m("leg_total_per_frame"),
        m("with_opus_per_frame"),
    ) else {
        return;
    };
    let frame_ns = FRAME.as_nanos() as f64;
    println!("\nper active WebRTC leg, per 20 ms frame (one Opus packet each way)");
    println!("  SRTP protect+send      {:>8.2} us", tx / 1e3);
    println!("  SRTP unprotect+recv    {:>8.2} us", rx / 1e3);
    println!(
        "  all leg calls          {:>8.2} us  ({:.3} % of a core, ~{:.0} legs/core)",
        all / 1e3,
        100.0 * all / frame_ns,
        frame_ns / all
    );
    println!(
        "  + Opus enc+dec 48 kHz  {:>8.2} us  ({:.3} % of a core, ~{:.0} legs/core)",
        opus / 1e3,
        100.0 * opus / frame_ns,
        frame_ns / opus
    );
    if let (Some(e), Some(d)) = (
        benches::mean_ns("opus", "encode_48k"),
        benches::mean_ns("opus", "decode_48k"),
    ) {
        println!(
            "  (Opus alone, media bench: encode {:.2} + decode {:.2} us)",
            e / 1e3,
            d / 1e3
        );
    }
    if let Some(a) = m("accept_offer") {
        println!("  accept_offer (once)    {:>8.2} us", a / 1e3);
    }
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&benches::criterion_dir())
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary();
}
