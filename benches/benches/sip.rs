//! SIP core cost: parse + validate + print of a typical carrier INVITE, and a
//! whole call's signalling (INVITE, 100, 180, 200, ACK, BYE, 200 between two
//! `UserAgent`s in memory, every message printed and parsed) including the timers
//! that reap it. `cargo bench -p benches --bench sip`.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use media_core::Instant;
use sip_bridge::sip::dialog::{InviteParams, LocalAddr, UaConfig, UaEvent, UserAgent};
use sip_bridge::sip::message::{self, Inbound, Peer, SipMessage, Transport, ValidationConfig};

const INVITE: &str = "INVITE sip:+15550100@198.51.100.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 69\r\n\
From: \"Carrier Caller\" <sip:+15550111@203.0.113.5>;tag=1928301774\r\n\
To: <sip:+15550100@198.51.100.10>\r\n\
Call-ID: a84b4c76e66710@203.0.113.5\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+15550111@203.0.113.5:5060>\r\n\
Record-Route: <sip:203.0.113.5;lr>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n\
Supported: timer\r\n\
P-Asserted-Identity: <sip:+15550111@203.0.113.5>\r\n\
User-Agent: CarrierSwitch/5.1\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 231\r\n\r\n\
v=0\r\no=switch 8000 8000 IN IP4 203.0.113.5\r\ns=call\r\nc=IN IP4 203.0.113.7\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn ua(last: u8) -> UserAgent {
    UserAgent::new(UaConfig::new(
        LocalAddr::udp([10, 0, 0, last].into(), 5060),
        u64::from(last),
    ))
}

/// Moves every pending message between `a` and `b` until both are quiet, and
/// answers incoming calls 180 + 200 with SDP.
fn exchange(now: Instant, a: &mut UserAgent, b: &mut UserAgent) {
    let pa = Peer::udp(([10, 0, 0, 1], 5060).into());
    let pb = Peer::udp(([10, 0, 0, 2], 5060).into());
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            b.handle_bytes(now, &t.bytes, pa);
            moved = true;
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_bytes(now, &t.bytes, pb);
            moved = true;
        }
        while let Some(e) = b.poll_event() {
            if let UaEvent::IncomingInvite { leg, .. } = e {
                b.respond(now, leg, 180, None, &[]).unwrap();
                b.respond(
                    now,
                    leg,
                    200,
                    Some(&INVITE.as_bytes()[INVITE.len() - 231..]),
                    &[],
                )
                .unwrap();
            }
        }
        while a.poll_event().is_some() {}
        if !moved {
            break;
        }
    }
}

fn bench(c: &mut Criterion) {
    let cfg = ValidationConfig::default();
    let mut g = c.benchmark_group("sip");
    g.bench_function("invite_parse_validate", |b| {
        b.iter(|| {
            black_box(message::classify(
                black_box(INVITE.as_bytes()),
                Transport::Udp,
                &cfg,
            ))
        })
    });
    let Inbound::Request(req) = message::classify(INVITE.as_bytes(), Transport::Udp, &cfg) else {
        panic!("bench INVITE rejected");
    };
    let msg = SipMessage::Request(*req);
    g.bench_function("invite_print", |b| {
        b.iter(|| black_box(message::to_wire(black_box(&msg))))
    });

    // One call per iteration, both sides, timers included (the clock jumps 40 s
    // after each call so Timer K/J/M reaping runs too).
    let (mut a, mut b) = (ua(1), ua(2));
    let mut now = Instant::ZERO;
    let params = InviteParams {
        body_type: None,
        contact_params: None,
        flow: false,
        request_uri: "sip:+15550100@10.0.0.2".into(),
        from: "<sip:+15550111@10.0.0.1>".into(),
        to: "<sip:+15550100@10.0.0.2>".into(),
        peer: Peer::udp(([10, 0, 0, 2], 5060).into()),
        sdp: Some(INVITE.as_bytes()[INVITE.len() - 231..].to_vec()),
        headers: Vec::new(),
        credentials: None,
    };
    g.bench_function("full_call_both_sides", |bench| {
        bench.iter(|| {
            let leg = a.invite(now, params.clone()).unwrap();
            exchange(now, &mut a, &mut b);
            a.hangup(now, leg).unwrap();
            exchange(now, &mut a, &mut b);
            now += Duration::from_secs(40);
            a.handle_timeout(now);
            b.handle_timeout(now);
            exchange(now, &mut a, &mut b);
            assert_eq!(a.legs() + b.legs(), 0);
        })
    });
    assert_eq!(a.transactions() + b.transactions(), 0, "calls were reaped");
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
