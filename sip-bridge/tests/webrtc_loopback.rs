//! A browser-like str0m peer (full ICE, controlling, creates the offer) against the
//! server's `WebRtcLeg` behind a `WebRtcMux`, over an in-memory network with 10 ms
//! one-way delay, on virtual time. Real Opus audio both ways, RFC 4733 DTMF from
//! the browser, a spoofing attacker, a vanished and a closing browser.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use media_core::analysis::{dominant_frequency, goertzel_level_db, sine};
use media_core::codec::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use media_core::dtmf::{DtmfReceiver, DtmfSender, EventPacket, TelephoneEvent};
use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use media_core::{ClockRate, Instant, Millis, SampleRate};
use sip_bridge::webrtc::{
    DisconnectReason, DtlsIdentity, MuxConfig, WebRtcConfig, WebRtcError, WebRtcEvent, WebRtcLeg,
    WebRtcMux,
};
use str0m::change::SdpAnswer;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const SERVER: &str = "192.0.2.10:3478";
const BROWSER: &str = "198.51.100.7:50000";
const ATTACKER: &str = "203.0.113.66:666";
const ONE_WAY: Duration = Duration::from_millis(10);
const FRAME: Duration = Duration::from_millis(20);
const SAMPLES_PER_FRAME: usize = 960; // 20 ms at 48 kHz
const LEG: u32 = 7;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// Which telephone-event the browser offers: Chromium both, Firefox 8 kHz only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tele {
    Both,
    Only8k,
}

struct Datagram {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// What the browser got.
#[derive(Default)]
struct BrowserRx {
    /// (RTP timestamp, Opus payload).
    opus: Vec<(u64, Vec<u8>)>,
}

struct Sim {
    cfg: WebRtcConfig,
    now: Instant,
    mux: WebRtcMux<u32>,
    leg: WebRtcLeg,
    browser: Rtc,
    browser_mid: Mid,
    browser_deadline: Instant,
    browser_connected: Option<Instant>,
    /// When false the browser is gone: nothing reaches it or leaves it.
    browser_online: bool,
    net: Vec<Datagram>,
    /// Every datagram the browser sent, for replay by the attacker.
    sent_by_browser: Vec<Vec<u8>>,
    events: Vec<(Instant, WebRtcEvent)>,
    browser_rx: BrowserRx,
}

impl Sim {
    fn new(tele: Tele) -> Sim {
        // The one real clock read: the epoch virtual time counts from.
        #[allow(clippy::disallowed_methods)]
        let epoch = std::time::Instant::now();
        let identity = DtlsIdentity::generate().expect("certificate");
        let cfg = WebRtcConfig::new(addr(SERVER), identity, epoch);

        let mut browser_cfg = Rtc::builder().clear_codecs().enable_opus(true, false);
        let rates: &[(u8, Frequency)] = match tele {
            Tele::Both => &[
                (110, Frequency::FORTY_EIGHT_KHZ),
                (126, Frequency::EIGHT_KHZ),
            ],
            Tele::Only8k => &[(101, Frequency::EIGHT_KHZ)],
        };
        for &(pt, rate) in rates {
            browser_cfg.codec_config().add_config(
                pt.into(),
                None,
                Codec::Tele,
                rate,
                None,
                FormatParams::default(),
            );
        }
        let mut browser = browser_cfg.build(epoch);
        browser.add_local_candidate(Candidate::host(addr(BROWSER), "udp").expect("candidate"));
        let mut change = browser.sdp_api();
        let browser_mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("offer");

        let (leg, answer) =
            WebRtcLeg::accept_offer(Instant::ZERO, &offer.to_sdp_string(), &cfg).expect("answer");
        browser
            .sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&answer).expect("parses"),
            )
            .expect("browser accepts the answer");

        let mut mux = WebRtcMux::new(MuxConfig::default());
        mux.insert(LEG, leg.mux_credentials()).expect("room");
        let mut sim = Sim {
            cfg,
            now: Instant::ZERO,
            mux,
            leg,
            browser,
            browser_mid,
            browser_deadline: Instant::ZERO,
            browser_connected: None,
            browser_online: true,
            net: Vec::new(),
            sent_by_browser: Vec::new(),
            events: Vec::new(),
            browser_rx: BrowserRx::default(),
        };
        sim.drain();
        sim
    }

    fn std(&self, t: Instant) -> std::time::Instant {
        self.cfg.epoch + Duration::from_micros(t.as_micros())
    }

    /// Polls both ends until they have nothing to say.
    fn drain(&mut self) {
        let now = self.now;
        while let Some(t) = self.leg.poll_transmit() {
            self.net.push(Datagram {
                at: now + ONE_WAY,
                from: addr(SERVER),
                to: t.to,
                bytes: t.bytes.to_vec(),
            });
        }
        while let Some(e) = self.leg.poll_event() {
            self.events.push((now, e));
        }
        if !self.browser_online {
            return;
        }
        loop {
            match self.browser.poll_output().expect("browser output") {
                Output::Timeout(t) => {
                    self.browser_deadline =
                        sip_bridge::webrtc::deadline_from_std(self.cfg.epoch, t);
                    break;
                }
                Output::Transmit(t) => {
                    self.sent_by_browser.push(t.contents.to_vec());
                    self.net.push(Datagram {
                        at: now + ONE_WAY,
                        from: t.source,
                        to: t.destination,
                        bytes: t.contents.to_vec(),
                    });
                }
                Output::Event(Event::Connected) => self.browser_connected = Some(now),
                Output::Event(Event::MediaData(d)) => {
                    if d.params.spec().codec == Codec::Opus {
                        self.browser_rx.opus.push((d.time.numer(), d.data.to_vec()));
                    }
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Runs network and timers up to `until`.
    fn run(&mut self, until: Instant) {
        for _ in 0..1_000_000 {
            let mut next = until;
            if let Some(t) = self.leg.poll_timeout() {
                next = next.min(t);
            }
            if self.browser_online {
                next = next.min(self.browser_deadline);
            }
            if let Some(d) = self.net.iter().map(|d| d.at).min() {
                next = next.min(d);
            }
            self.now = self.now.max(next);
            let now = self.now;

            let (due, rest): (Vec<Datagram>, Vec<Datagram>) =
                self.net.drain(..).partition(|d| d.at <= now);
            self.net = rest;
            for d in due {
                self.deliver(d);
            }
            if self.leg.poll_timeout().is_some_and(|t| t <= now) {
                self.leg.handle_timeout(now);
            }
            if self.browser_online && self.browser_deadline <= now {
                let t = self.std(now);
                self.browser
                    .handle_input(Input::Timeout(t))
                    .expect("browser timeout");
            }
            self.drain();
            if now >= until && self.net.iter().all(|d| d.at > until) {
                return;
            }
        }
        panic!("simulation did not settle");
    }

    fn deliver(&mut self, d: Datagram) {
        if d.to == addr(SERVER) {
            if d.from == addr(BROWSER) && !self.browser_online {
                return;
            }
            // The socket task: mux first, then the leg (which gates again).
            if self.mux.route(d.from, &d.bytes) == Some(LEG) {
                let _ = self.leg.handle_input(self.now, d.from, d.to, &d.bytes);
            }
        } else if d.to == addr(BROWSER) && self.browser_online {
            let t = self.std(self.now);
            let r = Receive::new(Protocol::Udp, d.from, d.to, &d.bytes).expect("valid datagram");
            let input = Input::Receive(t, r);
            if self.browser.accepts(&input) {
                self.browser.handle_input(input).expect("browser input");
            }
        }
    }

    fn connect(&mut self) {
        self.run(Instant::from_millis(500));
        assert!(self.leg.is_connected(), "server connected");
        assert!(self.browser_connected.is_some(), "browser connected");
        let up = self
            .events
            .iter()
            .find(|(_, e)| *e == WebRtcEvent::Connected);
        let at = up.expect("Connected event").0;
        assert!(at <= Instant::from_millis(200), "connected at {at:?}");
    }

    fn browser_pt(&mut self, codec: Codec, rate: Frequency) -> Pt {
        let writer = self.browser.writer(self.browser_mid).expect("writer");
        let mut params = writer.payload_params();
        let p = params
            .find(|p| p.spec().codec == codec && p.spec().clock_rate == rate)
            .expect("negotiated");
        p.pt()
    }

    /// The browser sends one payload through str0m's frame API, as a browser
    /// would; `rate` is the payload type's RTP clock.
    fn browser_send(&mut self, pt: Pt, rate: Frequency, ts: u64, payload: &[u8], marker: bool) {
        let wallclock = self.std(self.now);
        self.browser
            .writer(self.browser_mid)
            .expect("writer")
            .start_of_talkspurt(marker)
            .write(pt, wallclock, MediaTime::new(ts, rate), payload.to_vec())
            .expect("browser write");
        self.drain();
    }

    fn server_events(&self) -> impl Iterator<Item = &WebRtcEvent> {
        self.events.iter().map(|(_, e)| e)
    }

    fn server_rtp(&self) -> Vec<RtpPacket> {
        self.server_events()
            .filter_map(|e| match e {
                WebRtcEvent::Rtp(b) => Some(RtpPacket::parse(Bytes::clone(b)).expect("valid RTP")),
                _ => None,
            })
            .collect()
    }
}

fn encoder() -> OpusEncoder {
    OpusEncoder::new(OpusEncoderConfig::default()).expect("encoder")
}

fn decode_all<'a>(payloads: impl Iterator<Item = &'a [u8]>) -> Vec<i16> {
    let mut dec = OpusDecoder::new(SampleRate::HZ_48000).expect("decoder");
    let mut pcm = Vec::new();
    let mut out = [0i16; 5760];
    for p in payloads {
        let n = dec.decode(p, &mut out).expect("decodes");
        pcm.extend_from_slice(&out[..n]);
    }
    pcm
}

/// Asserts `pcm` (after the codec settles) is a `freq` tone at `level_db`.
fn assert_tone(pcm: &[i16], freq: f64, level_db: f64, what: &str) {
    let settled = &pcm[10 * SAMPLES_PER_FRAME..];
    assert!(
        settled.len() >= 48_000,
        "{what}: only {} samples",
        settled.len()
    );
    let f = dominant_frequency(settled, 48_000, 200.0, 3_000.0);
    assert!(
        (f - freq).abs() <= 3.0,
        "{what}: dominant {f} Hz, sent {freq} Hz"
    );
    let level = goertzel_level_db(settled, 48_000, freq);
    assert!(
        (level - level_db).abs() <= 2.0,
        "{what}: {level:.1} dB, sent {level_db:.1} dB"
    );
}

const AMPLITUDE: f64 = 0.3 * 32768.0; // -10.5 dBFS

fn sent_level_db() -> f64 {
    20.0 * 0.3f64.log10()
}

/// Two seconds of Opus each way: 1 kHz browser -> server, 440 Hz server ->
/// browser, with the server's own sequence numbers, timestamps and SSRC.
#[test]
fn opus_flows_both_ways() {
    let mut sim = Sim::new(Tele::Both);
    sim.connect();
    let pts = sim.leg.payload_types();
    let browser_opus = sim.browser_pt(Codec::Opus, Frequency::FORTY_EIGHT_KHZ);

    let frames = 120;
    let up = sine(48_000, 1_000.0, AMPLITUDE, frames * SAMPLES_PER_FRAME);
    let down = sine(48_000, 440.0, AMPLITUDE, frames * SAMPLES_PER_FRAME);
    let (mut enc_up, mut enc_down) = (encoder(), encoder());
    let mut payload = [0u8; 1500];
    let mut packet = [0u8; 1500];
    let start = sim.now;
    let (ts0, seq0, ssrc) = (1_234_567u32, 40_000u16, 0xdead_beef);
    for i in 0..frames {
        sim.run(start + FRAME * i as u32);
        let pcm = &up[i * SAMPLES_PER_FRAME..][..SAMPLES_PER_FRAME];
        let n = enc_up.encode(pcm, &mut payload).expect("encode");
        sim.browser_send(
            browser_opus,
            Frequency::FORTY_EIGHT_KHZ,
            (i * SAMPLES_PER_FRAME) as u64,
            &payload[..n],
            i == 0,
        );

        let pcm = &down[i * SAMPLES_PER_FRAME..][..SAMPLES_PER_FRAME];
        let n = enc_down.encode(pcm, &mut payload).expect("encode");
        let mut w = RtpWriter::new(
            PayloadType::new(pts.opus).expect("pt"),
            SeqNo(seq0.wrapping_add(i as u16)),
            RtpTimestamp(ts0.wrapping_add((i * SAMPLES_PER_FRAME) as u32)),
            Ssrc(ssrc),
        );
        w.marker = i == 0;
        let len = w.write_packet(&payload[..n], &mut packet).expect("fits");
        let before = sim.leg.stats().datagrams_out;
        sim.leg.send_rtp(sim.now, &packet[..len]).expect("sent");
        assert_eq!(
            sim.leg.stats().datagrams_out,
            before + 1,
            "SRTP out at once"
        );
        sim.drain();
    }
    sim.run(sim.now + Duration::from_millis(200));

    // Browser -> server: every frame, as RTP media-core can parse, decoded to 1 kHz.
    let rtp = sim.server_rtp();
    assert_eq!(rtp.len(), frames, "every frame arrived once");
    assert!(rtp.iter().all(|p| p.payload_type().value() == pts.opus));
    assert!(rtp[0].marker() && !rtp[1].marker());
    for w in rtp.windows(2) {
        assert_eq!(
            w[1].sequence_number().0,
            w[0].sequence_number().0.wrapping_add(1)
        );
        assert_eq!(w[1].timestamp().0, w[0].timestamp().0.wrapping_add(960));
    }
    let pcm = decode_all(rtp.iter().map(|p| p.payload_bytes()));
    assert_tone(&pcm, 1_000.0, sent_level_db(), "browser -> server");

    // Server -> browser: our timestamps unchanged, decoded to 440 Hz.
    let rx = &sim.browser_rx.opus;
    assert_eq!(rx.len(), frames, "every frame arrived once");
    for (i, (ts, _)) in rx.iter().enumerate() {
        assert_eq!(*ts as u32, ts0.wrapping_add((i * SAMPLES_PER_FRAME) as u32));
    }
    let pcm = decode_all(rx.iter().map(|(_, p)| p.as_slice()));
    assert_tone(&pcm, 440.0, sent_level_db(), "server -> browser");

    // Caller mistakes are errors: a PT the answer did not negotiate, non-RTP bytes.
    let pcmu = RtpWriter::new(PayloadType::PCMU, SeqNo(1), RtpTimestamp(0), Ssrc(1));
    let len = pcmu.write_packet(&[0xff; 160], &mut packet).expect("fits");
    assert!(matches!(
        sim.leg.send_rtp(sim.now, &packet[..len]),
        Err(WebRtcError::PayloadType(0))
    ));
    assert!(matches!(
        sim.leg.send_rtp(sim.now, &[1, 2, 3]),
        Err(WebRtcError::BadRtp(_))
    ));

    let stats = sim.leg.stats();
    assert_eq!(stats.packets_in, frames as u64);
    assert_eq!(stats.packets_out, frames as u64);
    assert_eq!(stats.dropped_unverified, 0);
    assert!(
        sim.server_events()
            .all(|e| matches!(e, WebRtcEvent::Connected | WebRtcEvent::Rtp(_)))
    );
}

/// RFC 4733 digits the browser sends arrive as RTP on a telephone-event payload
/// type and decode to the same digits, at 48 kHz (Chromium) and 8 kHz (Firefox).
#[test]
fn dtmf_from_the_browser_arrives() {
    for (tele, rate, clock) in [
        (Tele::Both, Frequency::FORTY_EIGHT_KHZ, ClockRate(48_000)),
        (Tele::Only8k, Frequency::EIGHT_KHZ, ClockRate(8_000)),
    ] {
        let mut sim = Sim::new(tele);
        sim.connect();
        let pts = sim.leg.payload_types();
        let tele_pt = sim.browser_pt(Codec::Tele, rate);
        let server_tele = match tele {
            Tele::Both => pts.telephone_event_48k,
            Tele::Only8k => pts.telephone_event_8k,
        };
        assert_eq!(server_tele, Some(*tele_pt));

        let mut sender = DtmfSender::new(clock, 10);
        sender.enqueue("15#", Millis(100)).expect("digits");
        let tick = clock.ticks_in(Millis(20));
        let mut out = [EventPacket {
            marker: false,
            timestamp: RtpTimestamp(0),
            event: TelephoneEvent {
                event: 0,
                end: false,
                volume: 0,
                duration: 0,
            },
        }; 3];
        let start = sim.now;
        for i in 0..60u32 {
            sim.run(start + FRAME * i);
            let n = sender.tick(RtpTimestamp(tick * i), tick, &mut out);
            for p in &out[..n] {
                let mut block = [0u8; 4];
                p.event.write(&mut block);
                sim.browser_send(tele_pt, rate, u64::from(p.timestamp.0), &block, p.marker);
            }
        }
        sim.run(sim.now + Duration::from_millis(200));
        assert!(sender.is_idle());

        let mut receiver = DtmfReceiver::new();
        let digits: String = sim
            .server_rtp()
            .iter()
            .filter(|p| pts.is_telephone_event(p.payload_type().value()))
            .filter_map(|p| {
                let ev = TelephoneEvent::parse(p.payload_bytes()).expect("4733 block");
                receiver.handle(p.timestamp(), &ev)
            })
            .map(|d| d.as_char())
            .collect();
        assert_eq!(digits, "15#");
    }
}

/// An attacker who is not on the path replays the browser's DTLS ClientHello and
/// SRTP, and forges DTLS, from its own address: before ICE, mid-handshake and
/// during the call. Nothing reaches str0m, and the call carries on.
#[test]
fn spoofed_dtls_and_srtp_are_dropped() {
    let mut sim = Sim::new(Tele::Both);
    let attacker = addr(ATTACKER);
    let server = addr(SERVER);
    let forged_hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x30, 1, 0, 0];
    let mut attacks = 0u64;
    let mut attack = |sim: &mut Sim, datagram: &[u8]| {
        attacks += 1;
        // Through the mux, as the socket task does...
        assert_eq!(sim.mux.route(attacker, datagram), None);
        // ...and straight at the leg, as a driver without a mux would.
        sim.leg
            .handle_input(sim.now, attacker, server, datagram)
            .expect("dropped quietly");
        sim.drain();
    };
    attack(&mut sim, &forged_hello);

    // Mid-handshake: run until the browser has sent its ClientHello, then replay it.
    let mut t = Instant::ZERO;
    let hello = loop {
        t += Duration::from_millis(1);
        sim.run(t);
        if let Some(h) = sim.sent_by_browser.iter().find(|d| d.first() == Some(&22)) {
            break h.clone();
        }
        assert!(t < Instant::from_millis(200), "no ClientHello");
    };
    assert!(!sim.leg.is_connected());
    attack(&mut sim, &hello);
    attack(&mut sim, &forged_hello);
    sim.connect();

    // During the call: audio flows while the attacker replays SRTP and DTLS.
    let browser_opus = sim.browser_pt(Codec::Opus, Frequency::FORTY_EIGHT_KHZ);
    let mut enc = encoder();
    let pcm = sine(48_000, 1_000.0, AMPLITUDE, 50 * SAMPLES_PER_FRAME);
    let mut payload = [0u8; 1500];
    let start = sim.now;
    for i in 0..50usize {
        sim.run(start + FRAME * i as u32);
        let n = enc
            .encode(
                &pcm[i * SAMPLES_PER_FRAME..][..SAMPLES_PER_FRAME],
                &mut payload,
            )
            .expect("encode");
        sim.browser_send(
            browser_opus,
            Frequency::FORTY_EIGHT_KHZ,
            (i * SAMPLES_PER_FRAME) as u64,
            &payload[..n],
            i == 0,
        );
        if let Some(srtp) = sim
            .sent_by_browser
            .iter()
            .rev()
            .find(|d| d.first().is_some_and(|b| *b >= 128))
        {
            let srtp = srtp.clone();
            attack(&mut sim, &srtp);
        }
        attack(&mut sim, &hello);
    }
    sim.run(sim.now + Duration::from_millis(200));

    assert!(sim.leg.is_connected(), "the call survived");
    assert_eq!(
        sim.server_rtp().len(),
        50,
        "every genuine frame, no replayed one"
    );
    let stats = sim.leg.stats();
    assert!(attacks > 100);
    assert_eq!(stats.dropped_unverified, attacks, "{stats:?}");
    assert_eq!(stats.errors, 0);
    assert_eq!(sim.mux.stats().dropped_unknown_addr, attacks);
    assert!(
        sim.server_events()
            .all(|e| matches!(e, WebRtcEvent::Connected | WebRtcEvent::Rtp(_))),
        "no Failed or Disconnected"
    );
}

/// A browser that vanishes (tab killed, network gone) ends the leg after the idle
/// timeout: str0m alone would wait forever.
#[test]
fn a_silent_browser_is_disconnected_after_the_idle_timeout() {
    let mut sim = Sim::new(Tele::Both);
    sim.connect();
    sim.run(sim.now + Duration::from_secs(3));
    let gone = sim.now;
    sim.browser_online = false;
    sim.run(gone + Duration::from_secs(30));

    let ends: Vec<&(Instant, WebRtcEvent)> = sim
        .events
        .iter()
        .filter(|(_, e)| !matches!(e, WebRtcEvent::Connected | WebRtcEvent::Rtp(_)))
        .collect();
    assert_eq!(ends.len(), 1, "exactly one terminal event");
    let (at, event) = ends[0];
    assert_eq!(*event, WebRtcEvent::Disconnected(DisconnectReason::Idle));
    // The last consent check came at most 5 s before the browser went; 15 s after it.
    let idle = *at - gone;
    assert!(
        idle >= Duration::from_secs(10) && idle <= Duration::from_secs(15),
        "disconnected {idle:?} after the browser went"
    );
    assert!(sim.leg.is_ended());
    assert_eq!(sim.leg.poll_timeout(), None);
}

/// A browser that closes its PeerConnection ends the leg at once.
#[test]
fn a_closing_browser_is_reported() {
    let mut sim = Sim::new(Tele::Both);
    sim.connect();
    sim.browser.close().expect("close");
    sim.drain();
    sim.run(sim.now + Duration::from_millis(100));
    assert_eq!(
        sim.events.last().map(|(_, e)| e),
        Some(&WebRtcEvent::Disconnected(DisconnectReason::PeerClosed))
    );
    assert!(sim.leg.is_ended());
    sim.mux.remove(LEG);
    assert!(sim.mux.is_empty());
}
