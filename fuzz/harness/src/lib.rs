//! Fuzz target bodies. Each takes arbitrary bytes and must never panic; where a
//! result can be checked (a produced packet parses, a round trip holds) it is.
//! `fuzz/fuzz_targets/*` wrap these for libFuzzer; the tests below replay the
//! committed corpus and a seeded random batch on stable Rust, in CI.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use media_core::codec::{Codec, OpusDecoder, opus};
use media_core::dtmf::{DtmfReceiver, TelephoneEvent};
use media_core::jitter::{JitterBuffer, JitterConfig, JitterPacket};
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::rtp::{
    ExtensionIter, PayloadType, RtpHeader, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc,
};
use media_core::{ClockRate, Instant, Millis, SampleRate};

/// The RTP view: parse, walk every accessor; a valid packet re-serialises to
/// the same fixed header.
pub fn rtp_packet(data: &[u8]) {
    let Ok(p) = RtpPacket::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let csrcs: Vec<u32> = p.csrcs().collect();
    let _ = p.extensions().count();
    assert!(p.payload_bytes().len() <= data.len());
    let mut w = RtpWriter::new(
        p.payload_type(),
        p.sequence_number(),
        p.timestamp(),
        p.ssrc(),
    );
    w.marker = p.marker();
    w.csrcs = &csrcs;
    let mut buf = vec![0u8; 12 + 4 * csrcs.len()];
    let n = w.write(&mut buf).expect("fits");
    assert_eq!(&buf[1..12], &data[1..12]);
    assert_eq!(n, 12 + 4 * csrcs.len());
}

/// RFC 8285 element parsing over any profile and block.
pub fn rtp_extensions(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let profile = u16::from_be_bytes([data[0], data[1]]);
    let mut total = 0;
    for e in ExtensionIter::new(profile, &data[2..]).flatten() {
        total += e.data.len();
    }
    assert!(total <= data.len());
}

/// RFC 4733 payloads, one by one and as a stream into a receiver.
pub fn telephone_event(data: &[u8]) {
    let mut rx = DtmfReceiver::new();
    for chunk in data.chunks(6) {
        let ts = RtpTimestamp(u32::from(*chunk.first().unwrap_or(&0)) * 160);
        if let Ok(ev) = TelephoneEvent::parse(chunk.get(2..).unwrap_or(&[])) {
            let mut b = [0u8; 4];
            ev.write(&mut b);
            assert_eq!(TelephoneEvent::parse(&b), Ok(ev));
            let _ = rx.handle(ts, &ev);
        }
    }
}

/// Opus decoding of arbitrary bytes at a chosen rate, with PLC and FEC.
pub fn opus_decode(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let rate = SampleRate::SUPPORTED[sel as usize % 4];
    let Ok(mut dec) = OpusDecoder::new(rate) else {
        return;
    };
    let mut pcm = vec![0i16; rate.samples_in(Millis(120))];
    let _ = opus::has_fec(rest);
    let _ = dec.packet_samples(rest);
    if let Ok(n) = dec.decode(rest, &mut pcm) {
        assert!(n <= pcm.len());
    }
    let frame = rate.samples_in(Millis(20));
    let _ = dec.conceal(&mut pcm[..frame]);
    let _ = dec.recover_fec(rest, &mut pcm[..frame]);
}

#[derive(Arbitrary, Debug)]
enum Op {
    Packet {
        seq_step: i8,
        ts_step: i16,
        pt: u8,
        ssrc: u8,
        marker: bool,
        payload: Vec<u8>,
    },
    Raw(Vec<u8>),
    Pcm(u16),
    Dtmf(String),
    Mute(bool),
}

#[derive(Arbitrary, Debug)]
struct PipelineCase {
    input: u8,
    output: u8,
    ops: Vec<Op>,
}

fn endpoint(sel: u8) -> Endpoint {
    let te = PayloadType::new(101);
    let fmt = |codec, pt, ptime| {
        Endpoint::Rtp(RtpFormat {
            codec,
            payload_type: PayloadType::new(pt).unwrap_or(PayloadType::PCMU),
            telephone_event: te,
            ptime: Millis(ptime),
            opus: None,
        })
    };
    match sel % 7 {
        0 => fmt(Codec::Pcmu, 0, 20),
        1 => fmt(Codec::Pcma, 8, 30),
        2 => fmt(Codec::Opus, 111, 20),
        3 => fmt(Codec::Pcmu, 0, 10),
        4 => Endpoint::Pcm(SampleRate::HZ_24000),
        5 => Endpoint::Pcm(SampleRate::HZ_16000),
        _ => fmt(Codec::Pcma, 8, 20),
    }
}

/// A pipeline (relay, transcode or PCM) fed an arbitrary sequence of packets,
/// raw datagrams, PCM, DTMF and mute toggles; every packet it emits must parse.
pub fn pipeline(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = PipelineCase::arbitrary(&mut u) else {
        return;
    };
    let Ok(mut p) = MediaPipeline::new(PipelineConfig::new(
        endpoint(case.input),
        endpoint(case.output),
        Ssrc(1),
        9,
    )) else {
        return;
    };
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut frame = vec![0i16; 960];
    for (i, op) in case.ops.into_iter().take(400).enumerate() {
        let now = Instant::from_millis(20 * i as u64);
        match op {
            Op::Packet {
                seq_step,
                ts_step,
                pt,
                ssrc,
                marker,
                mut payload,
            } => {
                seq = seq.wrapping_add(seq_step as u16);
                ts = ts.wrapping_add((ts_step as i32 * 8) as u32);
                payload.truncate(1400);
                let pt = PayloadType::new(pt % 128).unwrap_or(PayloadType::PCMU);
                let mut w =
                    RtpWriter::new(pt, SeqNo(seq), RtpTimestamp(ts), Ssrc(u32::from(ssrc % 3)));
                w.marker = marker;
                let mut buf = vec![0u8; 12 + payload.len()];
                let Ok(n) = w.write_packet(&payload, &mut buf) else {
                    continue;
                };
                buf.truncate(n);
                if p.is_relay() && i % 2 == 0 {
                    if let Ok(Some(len)) = p.relay_in_place(now, &mut buf) {
                        RtpHeader::parse(&buf[..len]).expect("relayed packet parses");
                    }
                } else if let Ok(pkt) = RtpPacket::parse(Bytes::from(buf)) {
                    let _ = p.handle_rtp(now, &pkt);
                }
            }
            Op::Raw(mut bytes) => {
                if p.is_relay() {
                    let _ = p.relay_in_place(now, &mut bytes);
                } else if let Ok(pkt) = RtpPacket::parse(Bytes::from(bytes)) {
                    let _ = p.handle_rtp(now, &pkt);
                }
            }
            Op::Pcm(n) => {
                let pcm: Vec<i16> = (0..n % 3000).map(|k| (k as i16).wrapping_mul(37)).collect();
                let _ = p.handle_pcm(now, &pcm);
            }
            Op::Dtmf(d) => {
                let _ = p.send_dtmf(&d, Millis(60));
            }
            Op::Mute(m) => p.set_muted(m),
        }
        while let Some(o) = p.poll_packet() {
            RtpHeader::parse(o.bytes).expect("emitted packet parses");
        }
        while p.poll_frame(&mut frame).is_some() {}
        while p.poll_event().is_some() {}
    }
}

/// A fuzz target body.
pub type Target = fn(&[u8]);

#[derive(Arbitrary, Debug)]
enum JitterOp {
    Insert {
        seq_step: i16,
        ts_step: i32,
        ssrc: u8,
        duration: u16,
        fec: bool,
        marker: bool,
        dt_us: u32,
    },
    Tick {
        dt_us: u16,
    },
    Consume(u16),
    FollowClock,
}

/// The jitter buffer under arbitrary sequences of inserts (any sequence number,
/// timestamp, SSRC, duration and arrival time), ticks and consumption: no panic,
/// and memory stays within the configured bounds whatever arrives.
pub fn jitter(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<JitterOp>::arbitrary(&mut u) else {
        return;
    };
    let cfg = JitterConfig::new(ClockRate(8000));
    let mut jb = JitterBuffer::new(cfg);
    let max_ticks = cfg.clock.ticks_in(cfg.max_buffered) as i64;
    let (mut seq, mut ts, mut now) = (0u16, 0u32, 0u64);
    for op in ops.into_iter().take(2000) {
        match op {
            JitterOp::Insert {
                seq_step,
                ts_step,
                ssrc,
                duration,
                fec,
                marker,
                dt_us,
            } => {
                seq = seq.wrapping_add(seq_step as u16);
                ts = ts.wrapping_add(ts_step as u32);
                now = now.saturating_add(u64::from(dt_us % 5_000_000));
                let p = JitterPacket {
                    sequence_number: SeqNo(seq),
                    timestamp: RtpTimestamp(ts),
                    ssrc: Ssrc(u32::from(ssrc % 4)),
                    marker,
                    duration: u32::from(duration),
                    fec,
                    payload: Bytes::from_static(&[0xff; 4]),
                };
                let _ = jb.insert(Instant::from_micros(now), p);
            }
            JitterOp::Tick { dt_us } => {
                now = now.saturating_add(u64::from(dt_us));
                let t = jb.tick(Instant::from_micros(now));
                assert!(t.steps().count() <= 8);
            }
            JitterOp::Consume(n) => jb.consume(u32::from(n)),
            JitterOp::FollowClock => {
                if let Some(due) = jb.poll_timeout() {
                    now = now.max(due.as_micros());
                    let _ = jb.tick(Instant::from_micros(now));
                    jb.consume(160);
                }
            }
        }
        assert!(jb.len() <= cfg.max_packets, "{} packets held", jb.len());
        assert!(
            jb.held_ticks() <= max_ticks,
            "{} ticks held",
            jb.held_ticks()
        );
        assert!(jb.buffered_ticks() <= 32 * 2 * u32::from(u16::MAX));
    }
}

// ----- SIP -----

use sip_bridge::sdp::{
    AudioCaps, LocalMedia, SessionDescription, answer_audio, negotiated_from_answer,
};
use sip_bridge::sip::dialog::{InviteParams, LegId, LocalAddr, UaConfig, UaEvent, UserAgent};
use sip_bridge::sip::message::{
    self as sipmsg, Inbound, Peer, SipHeaders, Transport, ValidationConfig,
};
use std::time::Duration;

/// Message handling: classify arbitrary bytes (parse + validate). Whatever is
/// accepted prints back to bytes that are accepted again as the same kind of
/// message; every rejection is a response that itself parses.
pub fn sip_message(data: &[u8]) {
    let cfg = ValidationConfig::default();
    for transport in [Transport::Udp, Transport::Tcp] {
        match sipmsg::classify(data, transport, &cfg) {
            Inbound::Request(r) => {
                session_timer_values(&*r);
                reliable_values(&*r);
                replaces_values(&*r);
                let wire =
                    sipmsg::to_wire(&sip_bridge::sip::message::SipMessage::Request(*r.clone()));
                match sipmsg::classify(&wire, transport, &cfg) {
                    Inbound::Request(again) => {
                        assert_eq!(again.method, r.method);
                        assert_eq!(again.call_id(), r.call_id());
                        assert_eq!(again.body, r.body);
                    }
                    other => panic!("printed request not accepted again: {other:?}"),
                }
            }
            Inbound::Response(r) => {
                session_timer_values(&*r);
                reliable_values(&*r);
                let wire =
                    sipmsg::to_wire(&sip_bridge::sip::message::SipMessage::Response(*r.clone()));
                assert!(
                    matches!(
                        sipmsg::classify(&wire, transport, &cfg),
                        Inbound::Response(_)
                    ),
                    "printed response not accepted again"
                );
            }
            Inbound::Reject(rej) => assert_clean_response(&rej.response),
            Inbound::Drop(_) => {}
        }
    }
}

/// Session-Expires and Min-SE (RFC 4028) as the UA reads them: a value that
/// parses prints back to one that parses the same (at most a day).
fn session_timer_values(m: &impl SipHeaders) {
    use sip_bridge::sip::dialog::session_timer::{SessionExpires, parse_min_se};
    for v in m.values("Session-Expires").into_iter().chain(m.values("x")) {
        if let Some(se) = SessionExpires::parse(&v) {
            assert!(se.interval <= Duration::from_secs(86_400));
            assert_eq!(SessionExpires::parse(&se.to_value()), Some(se));
        }
    }
    for v in m.values("Min-SE") {
        let _ = parse_min_se(&v);
    }
}

/// RSeq and RAck (RFC 3262) as the UA reads them: a RAck that parses prints
/// back to one that parses the same; RSeq stays in 1..2^31.
/// `Replaces` headers and Refer-To URIs with an embedded one (RFC 3891):
/// what parses prints back to the same value.
fn replaces_values(m: &impl SipHeaders) {
    use sip_bridge::sip::dialog::replaces::{Replaces, split_refer_to};
    for v in m.lines("Replaces") {
        if let Some(r) = Replaces::parse(v) {
            assert_eq!(Replaces::parse(&r.to_header()), Some(r));
        }
    }
    for v in m.lines("Refer-To").into_iter().chain(m.lines("r")) {
        let uri = sip_bridge::sip::message::header_uri(v);
        if let Ok((_, Some(r))) = split_refer_to(uri) {
            // An embedded Replaces prints back as the header it stands for.
            assert_eq!(Replaces::parse(&r.to_header()), Some(r));
        }
    }
}

fn reliable_values(m: &impl SipHeaders) {
    use sip_bridge::sip::dialog::reliable::{RAck, parse_rseq};
    for v in m.values("RSeq") {
        if let Some(n) = parse_rseq(&v) {
            assert!((1..=0x7fff_ffff).contains(&n));
        }
    }
    for v in m.values("RAck") {
        if let Some(r) = RAck::parse(&v) {
            let again = format!("{} {} {}", r.rseq, r.cseq, r.method);
            assert_eq!(RAck::parse(&again), Some(r));
        }
    }
}

/// A response we send: status line, `Name: value` lines without stray CR/LF, a
/// blank line, and the body its Content-Length announces.
fn assert_clean_response(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).expect("response is UTF-8");
    let (head, _body) = text.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    assert!(status.starts_with("SIP/2.0 "), "{status}");
    for l in lines {
        assert!(
            l.contains(':') && !l.contains('\n') && !l.contains('\r'),
            "bad header line {l:?}"
        );
    }
}

/// SDP: parse arbitrary text; what parses prints and parses back to the same
/// description, and answering or reading it as an answer never panics.
pub fn sdp(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sd) = SessionDescription::parse(text) else {
        return;
    };
    let printed = sd.to_string();
    let again = SessionDescription::parse(&printed).expect("printed SDP parses");
    assert_eq!(again, sd, "print/parse round trip");
    let local = LocalMedia::rtp([192, 0, 2, 1].into(), 40000, 1);
    let caps = AudioCaps::standard();
    if let Ok((answer, _)) = answer_audio(&sd, &caps, &local) {
        SessionDescription::parse(&answer.to_string()).expect("our answer parses");
    }
    let offer = sip_bridge::sdp::create_offer(&caps, &local);
    let _ = negotiated_from_answer(&offer, &sd);
}

/// One step of the structure-aware dialog fuzzer.
#[derive(Arbitrary, Debug)]
enum SipOp {
    /// A request from the peer, built from parts drawn from small sets so that
    /// Call-IDs, tags and branches collide with live state.
    Request {
        method: u8,
        call: u8,
        from_tag: u8,
        to_tag: Option<u8>,
        branch: u8,
        cseq: u16,
        sdp: bool,
        /// Session timer fields (RFC 4028).
        se: Option<(u16, u8)>,
    },
    /// A response to something we sent (picked by index), with a status and tag.
    Respond {
        sent: u8,
        status: u16,
        tag: u8,
        sdp: bool,
        se: Option<(u16, u8)>,
    },
    /// An in-dialog request mirroring something we sent (swapped tags).
    Mirror {
        sent: u8,
        method: u8,
        cseq_delta: i8,
    },
    /// Raw bytes as a datagram.
    Raw(Vec<u8>),
    /// A mutated copy of something we sent, fed back to us.
    Echo {
        sent: u8,
        flip: u16,
    },
    /// API calls. `se`: ask for a session timer of that many seconds;
    /// `late`: no offer (late offer); `rel`: require 100rel.
    Invite {
        se: Option<u16>,
        late: bool,
        rel: bool,
    },
    /// An UPDATE offer (RFC 3311) on a leg.
    Update {
        leg: u8,
    },
    /// Our answer in the ACK to a 2xx that offered (`None` when `bad`).
    AckAnswer {
        leg: u8,
        bad: bool,
    },
    /// REFER API calls: answer one (202, 403), notify (180, final 200), or
    /// send one.
    Refer {
        leg: u8,
        kind: u8,
    },
    Answer {
        leg: u8,
        status: u16,
    },
    Hangup {
        leg: u8,
    },
    Reinvite {
        leg: u8,
    },
    AnswerOffer {
        leg: u8,
        status: u16,
    },
    Info {
        leg: u8,
    },
    Cancel {
        leg: u8,
    },
    /// Time passes.
    Advance {
        ms: u16,
    },
}

const METHODS: [&str; 12] = [
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "REGISTER", "PRACK", "MESSAGE",
    "REFER", "NOTIFY",
];

/// Header lines a REFER or NOTIFY needs (RFC 3515), some malformed: by `n`.
fn refer_lines(method: &str, n: u16) -> String {
    match (method, n % 4) {
        ("REFER", 0) => "Refer-To: <sip:+15550177@192.0.2.9;user=phone>\r\n".into(),
        ("REFER", 1) => "Refer-To: <tel:+15550177>\r\nRefer-Sub: false\r\n".into(),
        ("REFER", 2) => "Refer-To: <sip:a@b?Replaces=x%3Bto-tag%3D1>\r\nr: <sip:c@d>\r\n".into(),
        ("NOTIFY", 0) => "Event: refer;id=1\r\nSubscription-State: active\r\n".into(),
        ("NOTIFY", 1) => {
            "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n".into()
        }
        ("NOTIFY", 2) => "Event: presence\r\n".into(),
        _ => String::new(),
    }
}
const STATUSES: [u16; 15] = [
    100, 180, 183, 200, 202, 302, 401, 407, 408, 422, 481, 486, 487, 491, 503,
];

/// `Session-Expires` (with or without a refresher, valid or not) and `Min-SE`
/// header lines from fuzz input.
fn session_timer_lines(se: Option<(u16, u8)>) -> Vec<(String, String)> {
    let Some((secs, r)) = se else {
        return Vec::new();
    };
    let refresher = ["", ";refresher=uac", ";refresher=uas", ";refresher=both"][r as usize % 4];
    let mut out = vec![
        ("Session-Expires".to_string(), format!("{secs}{refresher}")),
        ("Supported".to_string(), "timer".to_string()),
    ];
    if r & 4 != 0 {
        out.push(("Min-SE".into(), (secs / 2).to_string()));
    }
    if r & 8 != 0 {
        out.push(("Require".into(), "timer".into()));
    }
    // Reliable provisionals (RFC 3262): asked for, and an RSeq (valid or not)
    // that makes a 18x reliable.
    if r & 16 != 0 {
        out.push(("Require".into(), "100rel".into()));
    }
    if r & 32 != 0 {
        out.push(("RSeq".into(), (secs % 4).to_string()));
    }
    out
}
const SDP_BODY: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

fn with_body(mut head: String, sdp: bool) -> String {
    if sdp {
        head.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_BODY}",
            SDP_BODY.len()
        ));
    } else {
        head.push_str("Content-Length: 0\r\n\r\n");
    }
    head
}

/// The UA core under arbitrary interleavings of peer messages (well-formed,
/// mirrored from its own output, or raw), API calls and time. Invariants: no
/// panic, the limits hold, and once every call is hung up and the timers have run
/// out, no leg, dialog or transaction is left.
pub fn sip_dialog(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<SipOp>::arbitrary(&mut u) else {
        return;
    };
    let mut cfg = UaConfig::new(LocalAddr::udp([192, 0, 2, 1].into(), 5060), 7);
    cfg.max_legs = 8;
    cfg.max_transactions = 64;
    let mut ua = UserAgent::new(cfg);
    let peer = Peer::udp(([192, 0, 2, 9], 5060).into());
    let mut now = Instant::ZERO;
    let mut sent: Vec<bytes::Bytes> = Vec::new();
    let mut legs: Vec<LegId> = Vec::new();
    let mut offers: Vec<LegId> = Vec::new();
    let mut owed: Vec<LegId> = Vec::new();
    let drain = |ua: &mut UserAgent,
                 sent: &mut Vec<bytes::Bytes>,
                 legs: &mut Vec<LegId>,
                 offers: &mut Vec<LegId>,
                 owed: &mut Vec<LegId>| {
        while let Some(t) = ua.poll_transmit() {
            if sent.len() >= 32 {
                sent.remove(0);
            }
            sent.push(t.bytes);
        }
        while let Some(e) = ua.poll_event() {
            match e {
                UaEvent::IncomingInvite { leg, .. } => legs.push(leg),
                UaEvent::Offer { leg, .. } => offers.push(leg),
                UaEvent::AnsweredWithOffer { leg, .. } => owed.push(leg),
                UaEvent::Terminated { leg, .. } => {
                    legs.retain(|l| *l != leg);
                    owed.retain(|l| *l != leg);
                }
                _ => {}
            }
        }
    };
    let pick = |v: &[LegId], i: u8| v.get(i as usize % v.len().max(1)).copied();
    for op in ops.into_iter().take(300) {
        match op {
            SipOp::Request {
                method,
                call,
                from_tag,
                to_tag,
                branch,
                cseq,
                sdp,
                se,
            } => {
                let m = METHODS[method as usize % METHODS.len()];
                let to = to_tag.map_or(String::new(), |t| format!(";tag=t{t}"));
                let mut head = format!(
                    "{m} sip:sbc@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n\
                     From: <sip:a@192.0.2.9>;tag=f{from_tag}\r\nTo: <sip:b@192.0.2.1>{to}\r\nCall-ID: c{call}@192.0.2.9\r\n\
                     CSeq: {cseq} {m}\r\nContact: <sip:a@192.0.2.9>\r\n"
                );
                for (k, v) in session_timer_lines(se) {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str(&refer_lines(m, cseq));
                ua.handle_bytes(now, with_body(head, sdp).as_bytes(), peer);
            }
            SipOp::Respond {
                sent: i,
                status,
                tag,
                sdp,
                se,
            } => {
                let Some(b) = sent.get(i as usize % sent.len().max(1)) else {
                    continue;
                };
                if let Inbound::Request(req) =
                    sipmsg::classify(b, Transport::Udp, &ValidationConfig::default())
                {
                    let st = if (100..700).contains(&status) {
                        status
                    } else {
                        STATUSES[status as usize % STATUSES.len()]
                    };
                    let mut resp = sipmsg::response_to(&req, st, Some(&format!("r{}", tag % 4)));
                    resp.headers.push(sip_bridge::sip::message::Header::Contact(
                        "<sip:b@192.0.2.9>".to_string().into(),
                    ));
                    for (k, v) in session_timer_lines(se) {
                        resp.headers
                            .push(sip_bridge::sip::message::make_header(&k, &v));
                    }
                    if sdp {
                        resp.headers
                            .push(sip_bridge::sip::message::Header::ContentType(
                                "application/sdp".into(),
                            ));
                        resp.body = SDP_BODY.as_bytes().to_vec();
                    }
                    let wire =
                        sipmsg::to_wire(&sip_bridge::sip::message::SipMessage::Response(resp));
                    ua.handle_bytes(now, &wire, peer);
                }
            }
            SipOp::Mirror {
                sent: i,
                method,
                cseq_delta,
            } => {
                let Some(b) = sent.get(i as usize % sent.len().max(1)) else {
                    continue;
                };
                let cfg = ValidationConfig::default();
                let (call_id, from, to, cseq, rseq) =
                    match sipmsg::classify(b, Transport::Udp, &cfg) {
                        Inbound::Request(r) => (
                            r.call_id().map(String::from),
                            r.header_to().map(String::from),
                            r.header_from().map(String::from),
                            r.cseq().map(|c| c.0),
                            None,
                        ),
                        Inbound::Response(r) => (
                            r.call_id().map(String::from),
                            r.header_to().map(String::from),
                            r.header_from().map(String::from),
                            r.cseq().map(|c| c.0),
                            r.values("RSeq").into_iter().next(),
                        ),
                        _ => continue,
                    };
                let (Some(call_id), Some(from), Some(to), Some(cseq)) = (call_id, from, to, cseq)
                else {
                    continue;
                };
                let m = METHODS[method as usize % METHODS.len()];
                let from = if from.contains("tag=") {
                    from
                } else {
                    format!("{from};tag=m1")
                };
                let n = (i64::from(cseq) + 100 + i64::from(cseq_delta)).max(1);
                let mut head = format!(
                    "{m} sip:sbc@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKm{n}{method}\r\nMax-Forwards: 70\r\n\
                     From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {n} {m}\r\nContact: <sip:a@192.0.2.9>\r\n"
                );
                head.push_str(&refer_lines(m, n as u16));
                // A PRACK of a reliable 18x of ours acknowledges it (RAck).
                if let Some(rseq) = rseq {
                    head.push_str(&format!("RAck: {rseq} {cseq} INVITE\r\n"));
                }
                ua.handle_bytes(now, with_body(head, method % 2 == 0).as_bytes(), peer);
            }
            SipOp::Raw(bytes) => ua.handle_bytes(now, &bytes, peer),
            SipOp::Echo { sent: i, flip } => {
                let Some(b) = sent.get(i as usize % sent.len().max(1)) else {
                    continue;
                };
                let mut v = b.to_vec();
                if !v.is_empty() {
                    let k = flip as usize % v.len();
                    v[k] ^= (flip >> 8) as u8 | 1;
                }
                ua.handle_bytes(now, &v, peer);
            }
            SipOp::Invite { se, late, rel } => {
                let mut headers: Vec<(String, String)> = se
                    .map(|v| vec![("Session-Expires".into(), v.to_string())])
                    .unwrap_or_default();
                if rel {
                    headers.push(("Require".into(), "100rel".into()));
                }
                if let Ok(leg) = ua.invite(
                    now,
                    InviteParams {
                        body_type: None,
                        contact_params: None,
                        flow: false,
                        request_uri: "sip:+15550100@192.0.2.9".into(),
                        from: "<sip:+15550111@192.0.2.1>".into(),
                        to: "<sip:+15550100@192.0.2.9>".into(),
                        peer,
                        sdp: (!late).then(|| SDP_BODY.as_bytes().to_vec()),
                        headers,
                        credentials: None,
                    },
                ) {
                    legs.push(leg);
                }
            }
            SipOp::Update { leg } => {
                if let Some(l) = pick(&legs, leg) {
                    let _ = ua.update(now, l, SDP_BODY.as_bytes().to_vec());
                }
            }
            SipOp::AckAnswer { leg, bad } => {
                if let Some(l) = pick(&owed, leg) {
                    let sdp = (!bad).then_some(SDP_BODY.as_bytes());
                    if ua.ack_with_answer(now, l, sdp).is_ok() {
                        owed.retain(|o| *o != l);
                    }
                }
            }
            SipOp::Answer { leg, status } => {
                if let Some(l) = pick(&legs, leg) {
                    let st = STATUSES[status as usize % STATUSES.len()];
                    let _ = ua.respond(
                        now,
                        l,
                        st,
                        (200..300).contains(&st).then_some(SDP_BODY.as_bytes()),
                        &[],
                    );
                }
            }
            SipOp::Hangup { leg } => {
                if let Some(l) = pick(&legs, leg) {
                    let _ = ua.hangup(now, l);
                }
            }
            SipOp::Refer { leg, kind } => {
                if let Some(l) = pick(&legs, leg) {
                    let _ = match kind % 5 {
                        0 => ua.answer_refer(now, l, 202),
                        1 => ua.answer_refer(now, l, 403),
                        2 => ua.notify_refer(now, l, 180, "Ringing", false),
                        3 => ua.notify_refer(now, l, 200, "OK", true),
                        _ => ua.refer(now, l, "tel:+15550177", kind & 8 == 0),
                    };
                }
            }
            SipOp::Reinvite { leg } => {
                if let Some(l) = pick(&legs, leg) {
                    let _ = ua.reinvite(now, l, SDP_BODY.as_bytes().to_vec());
                }
            }
            SipOp::AnswerOffer { leg, status } => {
                if let Some(l) = pick(&offers, leg) {
                    let st = if status % 4 == 0 { 488 } else { 200 };
                    let _ = ua.answer_offer(now, l, st, (st == 200).then_some(SDP_BODY.as_bytes()));
                }
            }
            SipOp::Info { leg } => {
                if let Some(l) = pick(&legs, leg) {
                    let _ = ua.info(now, l, "application/dtmf-relay", b"Signal=1\r\n");
                }
            }
            SipOp::Cancel { leg } => {
                if let Some(l) = pick(&legs, leg) {
                    let _ = ua.cancel(now, l);
                }
            }
            SipOp::Advance { ms } => {
                let until = now + Duration::from_millis(u64::from(ms) * 8);
                while let Some(t) = ua.poll_timeout().filter(|t| *t <= until) {
                    now = now.max(t);
                    ua.handle_timeout(now);
                    drain(&mut ua, &mut sent, &mut legs, &mut offers, &mut owed);
                }
                now = until;
            }
        }
        drain(&mut ua, &mut sent, &mut legs, &mut offers, &mut owed);
        assert!(ua.legs() <= 8);
        assert!(
            ua.transactions() <= 64 + 8,
            "transactions {}",
            ua.transactions()
        );
    }
    // Wind down: answer what is pending, hang up everything, let all timers run.
    for round in 0..3 {
        for l in std::mem::take(&mut offers) {
            let _ = ua.answer_offer(now, l, 488, None);
        }
        for l in legs.clone() {
            let _ = ua.hangup(now, l);
        }
        drain(&mut ua, &mut sent, &mut legs, &mut offers, &mut owed);
        let until = now + Duration::from_secs(if round == 0 { 240 } else { 600 });
        while let Some(t) = ua.poll_timeout().filter(|t| *t <= until) {
            now = now.max(t);
            ua.handle_timeout(now);
            drain(&mut ua, &mut sent, &mut legs, &mut offers, &mut owed);
        }
        now = until;
    }
    assert_eq!(
        (ua.legs(), ua.dialogs(), ua.transactions()),
        (0, 0, 0),
        "state left after wind-down"
    );
}

// ----- signalling, tokens, calls -----

use sip_bridge::bridge::{
    Bridge, BridgeConfig, CallId, DialPlan, LegKey, MediaCommand, MediaEvent, NumberConfig,
    Target as DialTarget,
};
use sip_bridge::signalling::{Session, SessionConfig, SessionOutput, decode as decode_signalling};
use sip_bridge::token::{TokenGrant, TokenIssuer};

const FUZZ_SECRET: &[u8] = b"fuzz secret fuzz secret fuzz sec";
const UNIX: u64 = 1_795_000_000;

fn fuzz_token(issuer: &TokenIssuer, op: &str) -> String {
    issuer
        .issue(
            UNIX,
            &TokenGrant {
                operator_ref: op.into(),
                display_name: op.into(),
                numbers: vec!["support".into()],
                ttl_secs: None,
                capabilities: vec!["monitor".into()],
            },
        )
        .map(|t| t.0)
        .unwrap_or_default()
}

/// Operator signalling: arbitrary frames (NUL-separated) into one connection,
/// with time moving; every decision is a valid message or a close, nothing
/// after a close, never a panic.
pub fn signalling(data: &[u8]) {
    let issuer = TokenIssuer::new(FUZZ_SECRET);
    let mut s = Session::new(Instant::ZERO, SessionConfig::default());
    let mut now = 0u64;
    let mut closed = false;
    for (i, frame) in data.split(|&b| b == 0).take(200).enumerate() {
        let text = String::from_utf8_lossy(frame);
        let _ = decode_signalling(&text);
        now += u64::from(frame.first().copied().unwrap_or(1)) * 10;
        // Every 7th frame starts with a real hello so the ready state gets fuzzed.
        let text = if i == 1 {
            format!(
                r#"{{"type":"hello","token":"{}","protocol":1}}"#,
                fuzz_token(&issuer, "alice")
            )
        } else {
            text.into_owned()
        };
        let _ = s.handle_text(Instant::from_millis(now), UNIX, &text, &issuer);
        s.handle_timeout(Instant::from_millis(now));
        while let Some(o) = s.poll_output() {
            assert!(!closed, "output after close");
            match o {
                SessionOutput::Send(m) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&m.to_json()).expect("valid JSON");
                    assert!(v["type"].is_string());
                }
                SessionOutput::Close { code, .. } => {
                    assert!(
                        code == 1000
                            || code == 1002
                            || code == 1009
                            || (4000..5000).contains(&code)
                    );
                    closed = true;
                }
            }
        }
    }
}

/// Token verification: arbitrary strings never verify, and a real token with
/// arbitrary edits either fails or still carries exactly its original claims.
pub fn token(data: &[u8]) {
    let issuer = TokenIssuer::new(FUZZ_SECRET);
    let text = String::from_utf8_lossy(data);
    assert!(
        issuer.verify(UNIX, &text).is_err() || text.starts_with("eyJ"),
        "garbage verified"
    );
    let good = fuzz_token(&issuer, "alice");
    let original = issuer.verify(UNIX, &good).expect("our token verifies");
    let mut bytes = good.into_bytes();
    for pair in data.chunks(2) {
        if let [pos, val] = pair {
            let n = bytes.len();
            if n > 0 {
                bytes[*pos as usize % n] = *val;
            }
        }
    }
    if let Ok(edited) = String::from_utf8(bytes)
        && let Ok(claims) = issuer.verify(UNIX, &edited)
    {
        assert_eq!(
            claims, original,
            "an edited token verified with other claims"
        );
    }
}

/// One step of the call fuzzer.
#[derive(Arbitrary, Debug)]
enum CallOp {
    /// An operator connects (0-3), says hello and goes online.
    Connect(u8),
    /// An operator's connection drops.
    Drop(u8),
    /// An operator sends a message about the n-th call it heard of (`kind`:
    /// accept, reject, hangup, mute, hold, DTMF, dial, offline, reoffer, and the
    /// multi-party requests: add, remove, leave, end, monitor, mode, list, hold
    /// another party, quality; and transfer: blind, attended, complete, cancel,
    /// merge).
    Operator { op: u8, kind: u8, call: u8 },
    /// Raw text from an operator.
    Raw { op: u8, text: String },
    /// The carrier calls (support, echo, or the meet-me room).
    CarrierCall(u8),
    /// The carrier acts on one of its legs.
    Carrier { leg: u8, kind: u8 },
    /// A media event for a call.
    Media { call: u8, kind: u8, leg: u8 },
    /// The REST call control (`kind`: list, get, originate, hang up, add,
    /// hold, mute, mode, remove, DTMF, transfer, its steps, monitor) by a key
    /// for all numbers or one.
    Api { kind: u8, call: u8, party: u8 },
    /// The carrier takes over one of its dialogs with an INVITE with
    /// Replaces (`kind`: exact, early-only, unknown, malformed).
    Replace { leg: u8, kind: u8 },
    /// Time passes.
    Advance(u16),
}

/// Whether the fuzzed trunk follows REFERs (half the inputs).
fn kind_refer_in(data: &[u8]) -> bool {
    data.first().is_some_and(|b| b % 2 == 1)
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

/// The bridge's control plane under arbitrary operator messages, carrier calls
/// and actions, media events and time: no panic, bounded state, and once every
/// party is gone and the timers have run, nothing is left (calls, ports, SIP legs,
/// operators).
pub fn call(data: &[u8]) {
    use sip_bridge::sip::dialog::{InviteParams, LocalAddr, UaConfig, UaEvent, UserAgent};
    use sip_bridge::sip::message::Peer;
    use std::time::Duration;
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<CallOp>::arbitrary(&mut u) else {
        return;
    };
    let trace = format!("{ops:?}");
    let plan = DialPlan {
        steps: vec![
            sip_bridge::bridge::Step {
                targets: vec![DialTarget::Operators],
                timeout: Duration::from_secs(15),
                join: sip_bridge::bridge::Join::All,
                record: false,
            },
            sip_bridge::bridge::Step {
                targets: vec![DialTarget::Pstn {
                    number: "+15550111".into(),
                    trunk: None,
                }],
                timeout: Duration::from_secs(20),
                join: sip_bridge::bridge::Join::First,
                // The recording's commands and notes go through the fuzzed calls.
                record: true,
            },
        ],
        ringback: None,
        record: None,
        fork: None,
        // A SIPREC session beside every call, its SRS the fuzzed carrier.
        siprec: Some(sip_bridge::plan::SiprecOptions {
            srs: "sip:srs@192.0.2.20:5060".into(),
            fail_closed: false,
        }),
    };
    let trunk = sip_bridge::bridge::TrunkConfig {
        siprec: None,
        name: "c".into(),
        host: "carrier.example".into(),
        peers: vec!["192.0.2.20:5060".parse().unwrap()],
        transport: sip_bridge::sip::message::Transport::Udp,
        credentials: None,
        register: None,
        inbound: vec![],
        codecs: vec![],
        dtmf: Default::default(),
        ping_interval: None,
        ringback: None,
        session_expires: None,
        late_offer: false,
        require_100rel: false,
        update_offers: false,
        accept_refer: kind_refer_in(data),
        latch: Default::default(),
        // REFER out (and its fallbacks) on every blind transfer of the caller.
        transfer: sip_bridge::bridge::TransferMode::Refer {
            bridge_on_failure: data.len().is_multiple_of(2),
        },
    };
    let numbers = vec![
        NumberConfig {
            id: "support".into(),
            e164: "+15550100".into(),
            name: "S".into(),
            plan,
            capabilities: Default::default(),
            room: false,
        },
        NumberConfig {
            id: "echo".into(),
            e164: "+15550001".into(),
            name: "E".into(),
            plan: DialPlan::single(vec![DialTarget::Echo], Duration::from_secs(5)),
            capabilities: Default::default(),
            room: false,
        },
        NumberConfig {
            id: "room".into(),
            e164: "+15550500".into(),
            name: "R".into(),
            plan: DialPlan::default(),
            capabilities: Default::default(),
            room: true,
        },
    ];
    let mut cfg = BridgeConfig::new(numbers, vec![trunk], [192, 0, 2, 10].into());
    cfg.rtp_ports = (20000, 20100);
    cfg.max_calls = 20;
    let issuer = TokenIssuer::new(FUZZ_SECRET);
    let mut b = Bridge::new(
        cfg,
        LocalAddr::udp([192, 0, 2, 10].into(), 5060),
        TokenIssuer::new(FUZZ_SECRET),
        UNIX,
    );
    let mut carrier = UserAgent::new(UaConfig::new(
        LocalAddr::udp([192, 0, 2, 20].into(), 5060),
        3,
    ));
    let sbc = Peer::udp(([192, 0, 2, 10], 5060).into());
    let car = Peer::udp(([192, 0, 2, 20], 5060).into());
    let mut now = Instant::ZERO;
    let mut sessions: [Option<u64>; 4] = [None; 4];
    let mut next_sid = 1u64;
    let mut heard: Vec<Vec<String>> = vec![Vec::new(); 4];
    let mut carrier_legs = Vec::new();
    let mut calls: Vec<CallId> = Vec::new();
    // Moves messages until quiet.
    let pump = |b: &mut Bridge,
                carrier: &mut UserAgent,
                now: Instant,
                sessions: &mut [Option<u64>; 4],
                heard: &mut Vec<Vec<String>>,
                legs: &mut Vec<sip_bridge::sip::dialog::LegId>,
                calls: &mut Vec<CallId>| {
        for _ in 0..1000 {
            let mut any = false;
            while let Some(t) = b.poll_sip_transmit() {
                any = true;
                carrier.handle_bytes(now, &t.bytes, sbc);
            }
            while let Some(t) = carrier.poll_transmit() {
                any = true;
                b.handle_sip(now, &t.bytes, car);
            }
            while let Some(e) = carrier.poll_event() {
                any = true;
                match e {
                    UaEvent::IncomingInvite { leg, .. } => legs.push(leg),
                    UaEvent::Offer { leg, .. } => {
                        let _ = carrier.answer_offer(now, leg, 200, Some(OFFER.as_bytes()));
                    }
                    _ => {}
                }
            }
            while let Some((sid, out)) = b.poll_ws_output() {
                any = true;
                let Some(i) = sessions.iter().position(|s| *s == Some(sid)) else {
                    continue;
                };
                match out {
                    SessionOutput::Send(m) => {
                        let v: serde_json::Value =
                            serde_json::from_str(&m.to_json()).expect("JSON");
                        if let Some(c) = v["callId"].as_str()
                            && !heard[i].iter().any(|h| h == c)
                        {
                            heard[i].push(c.to_string());
                        }
                    }
                    SessionOutput::Close { .. } => {
                        sessions[i] = None;
                        b.handle_ws_closed(now, sid);
                    }
                }
            }
            while let Some((call, cmd)) = b.poll_media_command() {
                any = true;
                if !calls.contains(&call) && cmd != MediaCommand::Stop {
                    calls.push(call);
                }
            }
            while b.poll_event().is_some() {}
            if !any {
                break;
            }
        }
    };
    for op in ops.into_iter().take(300) {
        match op {
            CallOp::Connect(i) => {
                let i = usize::from(i % 4);
                let sid = next_sid;
                next_sid += 1;
                sessions[i] = Some(sid);
                b.handle_ws_open(now, sid);
                let hello = format!(
                    r#"{{"type":"hello","token":"{}","protocol":1}}"#,
                    fuzz_token(&issuer, &format!("op{i}"))
                );
                b.handle_ws_text(now, sid, &hello);
                b.handle_ws_text(now, sid, r#"{"type":"online","numbers":["support"]}"#);
            }
            CallOp::Drop(i) => {
                if let Some(sid) = sessions[usize::from(i % 4)].take() {
                    b.handle_ws_closed(now, sid);
                }
            }
            CallOp::Operator { op, kind, call } => {
                let i = usize::from(op % 4);
                let Some(sid) = sessions[i] else { continue };
                let c = heard[i]
                    .get(usize::from(call) % heard[i].len().max(1))
                    .cloned()
                    .unwrap_or_else(|| "c-999".into());
                let p = kind / 20 % 6;
                let target = match kind / 20 % 5 {
                    0 => "operators".to_string(),
                    1 => format!("operator:op{}", kind % 4),
                    2 => "+15550111".to_string(),
                    3 => "sip:+15550111@192.0.2.20".to_string(),
                    _ => "stream:wss://agent.example/ws".to_string(),
                };
                let mode = ["listen", "whisper", "barge"][usize::from(kind % 3)];
                let msg = match kind % 24 {
                    19 | 20 => format!(
                        r#"{{"type":"transfer","callId":"{c}","target":"{target}","attended":{},"timeout":{},"onHangup":"{}","fallback":"operator:op{}"}}"#,
                        kind % 24 == 20,
                        5 + kind % 40,
                        ["complete", "cancel"][usize::from(kind % 2)],
                        kind % 4
                    ),
                    21 => format!(r#"{{"type":"transferComplete","callId":"{c}"}}"#),
                    22 => format!(r#"{{"type":"transferCancel","callId":"{c}"}}"#),
                    23 => format!(r#"{{"type":"transferMerge","callId":"{c}"}}"#),
                    10 => format!(
                        r#"{{"type":"addParticipant","callId":"{c}","target":"{target}","timeout":{}}}"#,
                        5 + kind % 40
                    ),
                    11 => format!(
                        r#"{{"type":"removeParticipant","callId":"{c}","participantId":"p-{p}"}}"#
                    ),
                    12 => format!(r#"{{"type":"leave","callId":"{c}"}}"#),
                    13 => format!(r#"{{"type":"end","callId":"{c}"}}"#),
                    14 => format!(
                        r#"{{"type":"monitor","callId":"{c}","mode":"{mode}","sdp":"v=0\r\n"}}"#
                    ),
                    15 => format!(
                        r#"{{"type":"monitorMode","callId":"{c}","mode":"{mode}","participantId":"p-{p}"}}"#
                    ),
                    16 => r#"{"type":"listCalls"}"#.to_string(),
                    17 => format!(
                        r#"{{"type":"hold","callId":"{c}","on":{},"participantId":"p-{p}"}}"#,
                        kind % 2 == 0
                    ),
                    18 => format!(
                        r#"{{"type":"quality","callId":"{c}","summary":{{"mos":4.1}}}}"#
                    ),
                    _ => match kind % 10 {
                    0 => format!(r#"{{"type":"accept","callId":"{c}","sdp":"v=0\r\n"}}"#),
                    1 => format!(r#"{{"type":"reject","callId":"{c}"}}"#),
                    2 => format!(r#"{{"type":"hangup","callId":"{c}"}}"#),
                    3 => format!(r#"{{"type":"mute","callId":"{c}","on":true}}"#),
                    4 => format!(r#"{{"type":"hold","callId":"{c}","on":{}}}"#, kind % 2 == 0),
                    5 => format!(r#"{{"type":"dtmf","callId":"{c}","digits":"1#"}}"#),
                    6 => r#"{"type":"dial","to":"+15559999","callerId":"support","sdp":"v=0\r\n"}"#
                        .to_string(),
                    7 => r#"{"type":"dial","to":"+15550001","callerId":"support","sdp":"v=0\r\n"}"#
                        .to_string(),
                    8 => r#"{"type":"offline"}"#.to_string(),
                    _ => format!(r#"{{"type":"reoffer","callId":"{c}","sdp":"v=0\r\n"}}"#),
                    },
                };
                b.handle_ws_text(now, sid, &msg);
            }
            CallOp::Raw { op, text } => {
                if let Some(sid) = sessions[usize::from(op % 4)] {
                    b.handle_ws_text(now, sid, &text);
                }
            }
            CallOp::CarrierCall(n) => {
                let to = ["+15550100", "+15550001", "+15550500"][usize::from(n % 3)];
                if let Ok(leg) = carrier.invite(
                    now,
                    InviteParams {
                        body_type: None,
                        contact_params: None,
                        flow: false,
                        request_uri: format!("sip:{to}@192.0.2.10"),
                        from: "<sip:+15550111@192.0.2.20>".into(),
                        to: format!("<sip:{to}@192.0.2.10>"),
                        peer: sbc,
                        sdp: Some(OFFER.as_bytes().to_vec()),
                        headers: vec![],
                        credentials: None,
                    },
                ) {
                    carrier_legs.push(leg);
                }
            }
            CallOp::Carrier { leg, kind } => {
                let Some(&l) = carrier_legs.get(usize::from(leg) % carrier_legs.len().max(1))
                else {
                    continue;
                };
                let _ = match kind % 10 {
                    6 => carrier.answer_refer(
                        now,
                        l,
                        [202, 403, 405, 501][usize::from(kind / 10 % 4)],
                    ),
                    7 => carrier.notify_refer(
                        now,
                        l,
                        [100, 180, 200, 486, 603][usize::from(kind / 10 % 5)],
                        "x",
                        kind / 10 % 5 >= 2,
                    ),
                    8 => carrier.refer(
                        now,
                        l,
                        [
                            "tel:+15550177",
                            "sip:op@192.0.2.20?Replaces=a%40b%3Bto-tag%3D1%3Bfrom-tag%3D2",
                            "sip:x@y?Subject=z",
                        ][usize::from(kind / 10 % 3)],
                        kind % 2 == 0,
                    ),
                    0 => carrier.hangup(now, l),
                    1 => carrier.respond(now, l, 180, None, &[]),
                    2 => carrier.respond(now, l, 200, Some(OFFER.as_bytes()), &[]),
                    3 => carrier.respond(now, l, 486, None, &[]),
                    4 => carrier.reinvite(
                        now,
                        l,
                        OFFER.replace("t=0 0", "t=0 0\r\na=sendonly").into_bytes(),
                    ),
                    _ => carrier.info(now, l, "application/dtmf-relay", b"Signal=5\r\n"),
                };
            }
            CallOp::Media { call, kind, leg } => {
                let Some(&c) = calls.get(usize::from(call) % calls.len().max(1)) else {
                    continue;
                };
                let leg = LegKey(u32::from(leg % 6));
                let ev = match kind % 11 {
                    9 | 10 => MediaEvent::StreamTransfer {
                        leg,
                        target: ["operators", "+15550177", "nonsense"][usize::from(kind / 11 % 3)]
                            .into(),
                        warm: kind % 11 == 10,
                    },
                    6 => MediaEvent::StreamConnected { leg },
                    7 => MediaEvent::StreamFailed {
                        leg,
                        reason: "x".into(),
                    },
                    8 => MediaEvent::StreamHangup { leg },
                    0 => MediaEvent::WebRtcAnswer {
                        leg,
                        sdp: "v=0\r\n".into(),
                    },
                    1 => MediaEvent::WebRtcFailed {
                        leg,
                        reason: "x".into(),
                    },
                    2 => MediaEvent::WebRtcGone { leg },
                    3 => MediaEvent::Dtmf {
                        leg,
                        digit: '7',
                        relayed: kind % 2 == 0,
                    },
                    4 => MediaEvent::MediaTimeout { leg },
                    _ => MediaEvent::WebRtcConnected { leg },
                };
                b.handle_media_event(now, c, ev);
            }
            CallOp::Api { kind, call, party } => {
                use sip_bridge::bridge::{
                    ApiRequest, MonitorMode, Originate, PartyUpdate, RecordingStatus,
                    StatusCallback, TransferStep,
                };
                let c = calls
                    .get(usize::from(call) % calls.len().max(1))
                    .map_or_else(|| "c-999".to_string(), |c| c.to_string());
                let p = format!("p-{}", party % 6);
                let target = [
                    "operators",
                    "operator:op1",
                    "+15550177",
                    "sip:x@192.0.2.20",
                    "stream:wss://agent.example/ws",
                    "bogus",
                ][usize::from(party % 6)]
                .to_string();
                let mode = [
                    MonitorMode::Listen,
                    MonitorMode::Whisper,
                    MonitorMode::Barge,
                ][usize::from(party % 3)];
                let flag = Some(party % 2 == 0);
                let req = match kind % 20 {
                    0 => ApiRequest::ListCalls,
                    1 => ApiRequest::GetCall { call: c },
                    2 => ApiRequest::Originate(Originate {
                        from: ["support", "+15550001", "nope"][usize::from(party % 3)].into(),
                        to: ["operator:op0", "+15550177", "sip:x@192.0.2.20", "bogus"]
                            [usize::from(call % 4)]
                        .into(),
                        connect: target,
                        timeout: Some(u32::from(party)),
                        status_callback: Some(StatusCallback {
                            url: "http://x/".into(),
                            events: Vec::new(),
                        }),
                    }),
                    3 => ApiRequest::Hangup { call: c },
                    4 => ApiRequest::AddParticipant {
                        call: c,
                        target,
                        timeout: Some(5),
                    },
                    5 => ApiRequest::UpdateParticipant {
                        call: c,
                        participant: p,
                        update: PartyUpdate::new(flag, None, None),
                    },
                    6 => ApiRequest::UpdateParticipant {
                        call: c,
                        participant: p,
                        update: PartyUpdate::new(None, flag, Some(mode)),
                    },
                    7 => ApiRequest::RemoveParticipant {
                        call: c,
                        participant: p,
                    },
                    8 => ApiRequest::Dtmf {
                        call: c,
                        digits: "12#".into(),
                        participant: (party % 2 == 0).then_some(p),
                    },
                    9 | 10 => ApiRequest::Transfer {
                        call: c,
                        target,
                        attended: kind % 16 == 10,
                        timeout: Some(5),
                        by: (party % 2 == 0).then_some(p),
                        cancel_on_hangup: party % 3 == 0,
                        fallback: (party % 4 == 0).then(|| "operators".to_string()),
                    },
                    11 => ApiRequest::TransferStep {
                        call: c,
                        step: TransferStep::Complete,
                    },
                    12 => ApiRequest::TransferStep {
                        call: c,
                        step: TransferStep::Cancel,
                    },
                    13 => ApiRequest::TransferStep {
                        call: c,
                        step: TransferStep::Merge,
                    },
                    14 => ApiRequest::Record {
                        call: c,
                        options: sip_bridge::plan::RecordOptions::parse(
                            [None, Some("mono"), Some("x")][usize::from(party % 3)],
                            None,
                            [None, Some(16000)][usize::from(call % 2)],
                        )
                        .unwrap_or_default(),
                    },
                    15 => {
                        // The call's recording now, or one that is not.
                        let recording =
                            match b.handle_api(now, &[], ApiRequest::GetCall { call: c.clone() }) {
                                Ok(sip_bridge::bridge::ApiReply::Call(s)) if party % 5 != 0 => {
                                    s.recording.map(|r| r.id).unwrap_or_default()
                                }
                                _ => "rec-00000000000000ff".into(),
                            };
                        use sip_bridge::contract::PauseBehavior;
                        let status = [
                            RecordingStatus::Paused(PauseBehavior::Silence),
                            RecordingStatus::Paused(PauseBehavior::Skip),
                            RecordingStatus::InProgress,
                            RecordingStatus::Stopped,
                        ][usize::from(party % 4)];
                        ApiRequest::UpdateRecording {
                            call: c,
                            recording,
                            status,
                        }
                    }
                    16 => ApiRequest::Fork {
                        call: c,
                        options: sip_bridge::plan::ForkOptions::parse(
                            "ws://fork.example/a",
                            [None, Some("inbound"), Some("outbound")][usize::from(party % 3)],
                            [None, Some("twilio")][usize::from(call % 2)],
                            None,
                            Vec::new(),
                        )
                        .unwrap_or_else(|_| {
                            sip_bridge::plan::ForkOptions::parse(
                                "ws://f/",
                                None,
                                None,
                                None,
                                Vec::new(),
                            )
                            .expect("a valid fork")
                        }),
                    },
                    17 => {
                        // One of the call's forks, or one that is not.
                        let fork =
                            match b.handle_api(now, &[], ApiRequest::GetCall { call: c.clone() }) {
                                Ok(sip_bridge::bridge::ApiReply::Call(s)) if party % 3 != 0 => {
                                    s.forks.first().cloned().unwrap_or_default()
                                }
                                _ => "rec-00000000000000fe".into(),
                            };
                        ApiRequest::StopFork { call: c, fork }
                    }
                    _ => ApiRequest::Monitor {
                        call: c,
                        target,
                        mode,
                        coached: (party % 2 == 0).then_some(p),
                        timeout: None,
                    },
                };
                let numbers: Vec<String> = match kind / 16 % 3 {
                    0 => Vec::new(),
                    1 => vec!["support".into()],
                    _ => vec!["room".into()],
                };
                let _ = b.handle_api(now, &numbers, req);
            }
            CallOp::Replace { leg, kind } => {
                let Some(&l) = carrier_legs.get(usize::from(leg) % carrier_legs.len().max(1))
                else {
                    continue;
                };
                let Some(info) = carrier.leg_info(l) else {
                    continue;
                };
                let value = match kind % 4 {
                    0 => format!(
                        "{};to-tag={};from-tag={}",
                        info.call_id,
                        info.remote_tag.unwrap_or_default(),
                        info.local_tag
                    ),
                    1 => format!(
                        "{};to-tag={};from-tag={};early-only",
                        info.call_id,
                        info.remote_tag.unwrap_or_default(),
                        info.local_tag
                    ),
                    2 => "nope@x;to-tag=1;from-tag=2".into(),
                    _ => format!("{};to-tag=", info.call_id),
                };
                if let Ok(leg) = carrier.invite(
                    now,
                    InviteParams {
                        body_type: None,
                        contact_params: None,
                        flow: false,
                        request_uri: "sip:+15550100@192.0.2.10".into(),
                        from: "<sip:+15550112@192.0.2.20>".into(),
                        to: "<sip:+15550100@192.0.2.10>".into(),
                        peer: sbc,
                        sdp: Some(OFFER.as_bytes().to_vec()),
                        headers: vec![("Replaces".into(), value)],
                        credentials: None,
                    },
                ) {
                    carrier_legs.push(leg);
                }
            }
            CallOp::Advance(ms) => {
                let until = now + Duration::from_millis(u64::from(ms) * 4);
                while let Some(t) = [b.poll_timeout(), carrier.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .filter(|t| *t <= until)
                {
                    now = now.max(t);
                    b.handle_timeout(now);
                    carrier.handle_timeout(now);
                    pump(
                        &mut b,
                        &mut carrier,
                        now,
                        &mut sessions,
                        &mut heard,
                        &mut carrier_legs,
                        &mut calls,
                    );
                }
                now = until;
            }
        }
        pump(
            &mut b,
            &mut carrier,
            now,
            &mut sessions,
            &mut heard,
            &mut carrier_legs,
            &mut calls,
        );
        assert!(b.calls() <= 20, "call limit");
        assert!(b.presence().len() <= 4);
    }
    // Wind down: everyone leaves, every carrier leg hangs up, timers run out.
    for round in 0..3 {
        for s in sessions.iter_mut() {
            if let Some(sid) = s.take() {
                b.handle_ws_closed(now, sid);
            }
        }
        for l in carrier.leg_ids() {
            let _ = carrier.hangup(now, l);
        }
        pump(
            &mut b,
            &mut carrier,
            now,
            &mut sessions,
            &mut heard,
            &mut carrier_legs,
            &mut calls,
        );
        let until = now + Duration::from_secs(if round == 0 { 240 } else { 600 });
        while let Some(t) = [b.poll_timeout(), carrier.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .filter(|t| *t <= until)
        {
            now = now.max(t);
            b.handle_timeout(now);
            carrier.handle_timeout(now);
            pump(
                &mut b,
                &mut carrier,
                now,
                &mut sessions,
                &mut heard,
                &mut carrier_legs,
                &mut calls,
            );
        }
        now = until;
    }
    assert_eq!(b.calls(), 0, "calls left: {:?}", b.call_ids());
    assert_eq!(
        b.ports_in_use(),
        0,
        "RTP ports left after {}",
        &trace[..trace.len().min(3000)]
    );
    assert_eq!((b.ua().legs(), b.ua().dialogs()), (0, 0), "SIP state left");
    assert!(b.presence().is_empty(), "operators left");
}

/// One step of a registrar's life.
#[derive(Arbitrary, Debug)]
enum RegOp {
    /// A REGISTER from phone `from` (0-3), its parts fuzzed; `answer` uses
    /// the last challenge with the right password (else garbage).
    Register {
        from: u8,
        user: u8,
        contacts: Vec<String>,
        expires: Option<u32>,
        cseq: u16,
        answer: Option<bool>,
        extra: String,
    },
    /// Raw bytes as a datagram.
    Raw(Vec<u8>),
    /// Time passes (ms).
    Wait(u16),
    /// A connection closes.
    Closed(u8),
    /// Raw bytes as a phone's INVITE (a call it places).
    Call(Vec<u8>),
    /// The next keep-alive's outcome.
    Keepalive(bool),
}

/// The registrar: fuzzed REGISTERs (contacts and their parameters, Path,
/// Expires, CSeq, right and wrong answers, raw bytes) from four addresses
/// over time, raw INVITEs (calls phones place) and keep-alive outcomes.
/// Never a panic; its count of bindings is the sum of its operators', each
/// within the limit; once time passes every expiry, nothing is left.
pub fn registrar(data: &[u8]) {
    use sip_bridge::registrar::{PhoneAccount, RegisterReply, Registrar, RegistrarConfig};
    use sip_bridge::sip::auth::{Challenge, Credentials, DigestClient};
    let mut u = Unstructured::new(data);
    let Ok(ops) = Vec::<RegOp>::arbitrary(&mut u) else {
        return;
    };
    let cfg = RegistrarConfig {
        ban_after: 4,
        ..Default::default()
    };
    let max = cfg.max_per_operator;
    let users = ["alice-desk", "bob-desk", "nobody"];
    let mut reg = Registrar::new(
        cfg,
        vec![
            PhoneAccount::new("alice-desk", "alice", "sbc", "pw-a"),
            PhoneAccount::new("bob-desk", "bob", "sbc", "pw-b"),
        ],
        [9; 32],
    );
    let mut now = Instant::ZERO;
    let mut challenge: Option<Challenge> = None;
    let vcfg = ValidationConfig::default();
    for op in ops.into_iter().take(64) {
        match op {
            RegOp::Register {
                from,
                user,
                contacts,
                expires,
                cseq,
                answer,
                extra,
            } => {
                let user = users[user as usize % users.len()];
                let source = Peer::udp(format!("192.0.2.{}:5060", from % 4 + 1).parse().unwrap());
                let mut m = format!(
                    "REGISTER sip:sbc SIP/2.0\r\nVia: SIP/2.0/UDP {}:5060;branch=z9hG4bK{cseq}\r\n\
                     From: <sip:{user}@sbc>;tag=1\r\nTo: <sip:{user}@sbc>\r\nCall-ID: c{from}\r\n\
                     CSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n",
                    source.addr.ip()
                );
                for c in contacts.iter().take(8) {
                    m += &format!("Contact: {}\r\n", c.replace(['\r', '\n'], ""));
                }
                if let Some(e) = expires {
                    m += &format!("Expires: {e}\r\n");
                }
                if !extra.is_empty() {
                    m += &format!("{}\r\n", extra.replace(['\r', '\n'], ""));
                }
                if let (Some(right), Some(ch)) = (answer, &challenge) {
                    let mut c = DigestClient::new(
                        Credentials {
                            username: user.into(),
                            password: if right {
                                format!("pw-{}", &user[..1])
                            } else {
                                "x".into()
                            },
                        },
                        7,
                    );
                    m += &format!(
                        "Authorization: {}\r\n",
                        c.authorize(ch, "REGISTER", "sip:sbc")
                    );
                }
                m += "Content-Length: 0\r\n\r\n";
                if let Inbound::Request(r) = sipmsg::classify(m.as_bytes(), Transport::Udp, &vcfg) {
                    let unix = 1_795_000_000_000 + now.as_micros() / 1000;
                    if let RegisterReply::Respond {
                        status: 401,
                        headers,
                    } = reg.handle_register(now, unix, &*r, source)
                    {
                        challenge = headers.first().and_then(|(_, v)| Challenge::parse(v).ok());
                    }
                }
            }
            RegOp::Raw(bytes) => {
                if let Inbound::Request(r) = sipmsg::classify(&bytes, Transport::Udp, &vcfg) {
                    let source = Peer::udp("192.0.2.9:5060".parse().unwrap());
                    let _ = reg.handle_register(now, 1_795_000_000_000, &*r, source);
                }
            }
            RegOp::Wait(ms) => {
                now += std::time::Duration::from_millis(ms as u64 * 50);
                if reg.poll_timeout().is_some_and(|t| t <= now) {
                    reg.handle_timeout(now);
                }
            }
            RegOp::Closed(c) => reg.handle_flow_closed(c as u64),
            RegOp::Call(bytes) => {
                if let Inbound::Request(r) = sipmsg::classify(&bytes, Transport::Udp, &vcfg) {
                    let source = Peer::udp("192.0.2.2:5060".parse().unwrap());
                    let unix = 1_795_000_000_000 + now.as_micros() / 1000;
                    let _ = reg.authorize_call(now, unix, &*r, source);
                }
            }
            RegOp::Keepalive(answered) => {
                if let Some(k) = reg.poll_keepalive() {
                    reg.handle_keepalive_result(&k.operator, &k.contact, answered);
                }
            }
        }
        let per: usize = ["alice", "bob"].iter().map(|o| reg.bindings(o).len()).sum();
        assert_eq!(per, reg.len(), "bindings counted twice or lost");
        for o in ["alice", "bob"] {
            assert!(reg.bindings(o).len() <= max, "{o} over the limit");
        }
        while reg.poll_event().is_some() {}
    }
    reg.handle_timeout(now + std::time::Duration::from_secs(7200));
    assert!(reg.is_empty(), "bindings outlived their expiry");
}

/// Node records as read from Redis, and node-to-node INVITE signatures.
/// Data: blank-line separated records of `key=value` lines (`name=` names
/// the node), then anything as a peer header. A record is taken whole or
/// not at all; what becomes a peer is another node inside the allowed
/// block, and only a serving one is rung; a signature edited in any way
/// never verifies as other than what was signed.
pub fn cluster(data: &[u8]) {
    use sip_bridge::cluster::{MAX_READY, NodeRecord, PeerKey, PeerRing, Peers};
    use sip_bridge::config::Cidr;
    let text = String::from_utf8_lossy(data);
    let mut records = Vec::new();
    for (i, block) in text.split("\n\n").enumerate().take(64) {
        let fields: Vec<(&str, &str)> = block.lines().filter_map(|l| l.split_once('=')).collect();
        let name = fields
            .iter()
            .find(|(k, _)| *k == "name")
            .map_or_else(|| format!("n{i}"), |(_, v)| v.to_string());
        if let Some(r) = NodeRecord::from_fields(&name, fields.iter().copied()) {
            assert!(r.ready.len() <= MAX_READY && r.ops.len() <= MAX_READY);
            assert!(
                r.ready
                    .iter()
                    .chain(&r.ops)
                    .all(|x| !x.is_empty() && !x.contains(','))
            );
            records.push(r);
        }
    }
    let allow: Cidr = "127.0.0.0/8".parse().expect("a block");
    let (peers, outside) = Peers::from_records("me", &records, &[allow]);
    assert!(outside <= records.len());
    for n in &peers.nodes {
        assert!(
            allow.contains(n.sip.ip()),
            "a node outside the block: {n:?}"
        );
        assert_ne!(n.node, "me");
        assert!(
            records
                .iter()
                .any(|r| r.node == n.node && r.draining == n.draining)
        );
    }
    for n in peers.ready_for("support") {
        assert!(!n.draining, "a draining node rung: {n:?}");
    }
    let key = PeerKey::derive(FUZZ_SECRET);
    let ring = PeerRing::Operator("alice".into());
    let good = key.sign("a", UNIX, "support", &ring);
    let original = key.verify(&good, UNIX).expect("our signature verifies");
    assert!(key.verify(&text, UNIX).is_err() || text.contains(&good[good.len() - 64..]));
    let mut bytes = good.into_bytes();
    for pair in data.chunks(2) {
        if let [pos, val] = pair {
            let n = bytes.len();
            bytes[*pos as usize % n] = *val;
        }
    }
    if let Ok(edited) = String::from_utf8(bytes)
        && let Ok(got) = key.verify(&edited, UNIX)
    {
        assert_eq!(got, original, "an edited signature verified as another");
    }
}

/// All targets by name, for replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("rtp_packet", rtp_packet),
    ("rtp_extensions", rtp_extensions),
    ("telephone_event", telephone_event),
    ("opus_decode", opus_decode),
    ("pipeline", pipeline),
    ("jitter", jitter),
    ("sip_message", sip_message),
    ("sdp", sdp),
    ("sip_dialog", sip_dialog),
    ("signalling", signalling),
    ("token", token),
    ("call", call),
    ("registrar", registrar),
    ("cluster", cluster),
];

#[cfg(test)]
mod tests {
    use super::*;
    use media_core::SeededRng;

    /// Replays every committed corpus file (fuzz/corpus/<target>/*).
    #[test]
    fn corpus_replays_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        let mut replayed = 0;
        for (name, f) in TARGETS {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                f(&std::fs::read(entry.path()).unwrap());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no corpus found under {}", root.display());
    }

    /// The shared SIP and SDP vectors (RFC 4475 torture messages, browser offers)
    /// through the SIP targets; the fuzzer takes them as a read-only seed corpus.
    #[test]
    fn shared_sip_vectors_replay() {
        let root = std::env::var("SHARED_TESTDATA").map_or_else(
            |_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
            std::path::PathBuf::from,
        );
        let mut n = 0;
        for (dir, f) in [
            ("sip-rfc4475", sip_message as Target),
            ("sdp-browser-offers", sdp),
        ] {
            for entry in std::fs::read_dir(root.join(dir))
                .expect("shared testdata")
                .flatten()
            {
                f(&std::fs::read(entry.path()).unwrap());
                n += 1;
            }
        }
        assert!(n >= 50, "{n} vectors");
    }

    /// Writes seed inputs built from our own encoders into fuzz/corpus (run once,
    /// by hand: `cargo test -p fuzz-harness -- --ignored write_seed_corpus`).
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        use media_core::analysis::speech_like;
        use media_core::codec::{OpusEncoder, OpusEncoderConfig};
        use media_core::rtp::HeaderExtension;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let ext = [
            HeaderExtension {
                id: 1,
                data: &[1, 2],
            },
            HeaderExtension { id: 3, data: &[9] },
        ];
        let mut w = RtpWriter::new(PayloadType::PCMU, SeqNo(1), RtpTimestamp(160), Ssrc(5));
        w.csrcs = &[7, 8];
        w.extensions = &ext;
        let mut buf = [0u8; 256];
        let n = w.write_packet(&[0xff; 20], &mut buf).unwrap();
        put("rtp_packet", "one_byte_ext", &buf[..n]);
        put(
            "rtp_extensions",
            "one_byte",
            &[&[0xbe, 0xde][..], &buf[24..n - 20]].concat(),
        );
        put(
            "rtp_extensions",
            "two_byte",
            &[0x10, 0x00, 0x05, 0x02, 0xaa, 0xbb, 0x00, 0x07, 0x00],
        );
        put(
            "telephone_event",
            "digit_5",
            &[0, 0, 5, 0x0a, 0x00, 0xa0, 1, 0, 5, 0x8a, 0x03, 0x20],
        );
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let pcm = speech_like(48000, 960 * 30);
        let mut pkt = [0u8; 1500];
        let len = enc.encode(&pcm[960 * 20..960 * 21], &mut pkt).unwrap();
        put(
            "opus_decode",
            "speech_48k",
            &[&[3u8][..], &pkt[..len]].concat(),
        );
        put("pipeline", "zeros", &[0u8; 64]);
        put("pipeline", "ramp", &(0..=255u8).collect::<Vec<_>>());
    }

    /// A seeded batch of random and mutated-valid inputs per target.
    #[test]
    fn seeded_random_inputs_do_not_panic() {
        // More rounds for a longer local soak: FUZZ_ROUNDS=20000 FUZZ_TARGET=call.
        let rounds: usize = std::env::var("FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        let only = std::env::var("FUZZ_TARGET").ok();
        let mut rng = SeededRng::new(0xf022);
        for (name, f) in TARGETS {
            if only.as_deref().is_some_and(|o| o != *name) {
                continue;
            }
            for _ in 0..rounds {
                let len = (rng.next_u32() % 600) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
                if let Some(b) = v.first_mut() {
                    *b = 0x80 | (*b & 0x3f); // RTP version 2 half the time
                }
                f(&v);
            }
        }
    }
}
