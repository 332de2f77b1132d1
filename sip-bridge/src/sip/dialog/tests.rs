//! UA core tests on virtual time: two `UserAgent`s on a simulated network (with
//! seeded loss and message filters), or one `UserAgent` against a scripted peer.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use media_core::{Instant, SeededRng};
use rsipstack::sip::{Header, Request, Response, SipMessage};

use super::*;
use crate::sip::auth::{self, Algorithm};
use crate::sip::message::{
    self, Inbound, Peer, SipHeaders, Transport, ValidationConfig, response_to,
};

const SDP_A: &[u8] = b"v=0\r\no=a 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
const SDP_B: &[u8] = b"v=0\r\no=b 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 5060))
}

fn ua(last: u8, seed: u64) -> UserAgent {
    UserAgent::new(UaConfig::new(LocalAddr::udp(addr(last).ip(), 5060), seed))
}

fn params(to: u8) -> InviteParams {
    InviteParams {
        body_type: None,
        contact_params: None,
        flow: false,
        request_uri: format!("sip:+15550100@10.0.0.{to}"),
        from: "\"Alice\" <sip:+15550111@10.0.0.1>".into(),
        to: format!("<sip:+15550100@10.0.0.{to}>"),
        peer: Peer::udp(addr(to)),
        sdp: Some(SDP_A.to_vec()),
        headers: Vec::new(),
        credentials: None,
    }
}

/// The first line of a message (for filters and logs).
fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// CSeq method of a message.
fn cseq_method(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    text.lines()
        .find_map(|l| l.strip_prefix("CSeq: "))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string()
}

/// What a node does on its own.
#[derive(Clone, Copy, Default)]
struct Auto {
    /// Answer incoming INVITEs: 180 then this final status.
    answer: Option<u16>,
    /// Answer in-dialog offers 200 with SDP.
    offers: bool,
}

struct Node {
    ua: UserAgent,
    addr: SocketAddr,
    events: Vec<UaEvent>,
    auto: Auto,
}

type Filter = Box<dyn FnMut(usize, &[u8]) -> bool>;

/// Nodes on a network with latency, seeded loss and a drop filter. Messages to an
/// address without a node land in `outside` (for scripted peers).
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    wire: Vec<(Instant, SocketAddr, Peer, Bytes)>,
    outside: Vec<(SocketAddr, Bytes)>,
    latency: Duration,
    loss: f64,
    rng: SeededRng,
    /// `(sender index, bytes) -> drop?`
    drop: Option<Filter>,
    log: Vec<(usize, String)>,
}

impl Net {
    fn new(nodes: Vec<UserAgent>, seed: u64) -> Net {
        let nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, ua)| Node {
                ua,
                addr: addr(i as u8 + 1),
                events: Vec::new(),
                auto: Auto::default(),
            })
            .collect();
        Net {
            nodes,
            now: Instant::ZERO,
            wire: Vec::new(),
            outside: Vec::new(),
            latency: Duration::from_millis(10),
            loss: 0.0,
            rng: SeededRng::new(seed),
            drop: None,
            log: Vec::new(),
        }
    }

    fn pair(seed: u64) -> Net {
        Net::new(vec![ua(1, seed), ua(2, seed + 1000)], seed)
    }

    fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].ua.poll_transmit() {
                    any = true;
                    self.log.push((i, first_line(&t.bytes)));
                    if self.drop.as_mut().is_some_and(|f| f(i, &t.bytes))
                        || (self.loss > 0.0 && self.rng.chance(self.loss))
                    {
                        continue;
                    }
                    let from = Peer::udp(self.nodes[i].addr);
                    self.wire
                        .push((self.now + self.latency, t.to.addr, from, t.bytes));
                }
                while let Some(ev) = self.nodes[i].ua.poll_event() {
                    any = true;
                    self.react(i, &ev);
                    self.nodes[i].events.push(ev);
                }
            }
            if !any {
                break;
            }
        }
    }

    fn react(&mut self, i: usize, ev: &UaEvent) {
        let now = self.now;
        let n = &mut self.nodes[i];
        match ev {
            UaEvent::IncomingInvite { leg, .. } => {
                if let Some(status) = n.auto.answer {
                    n.ua.respond(now, *leg, 180, None, &[]).unwrap();
                    let sdp = (200..300).contains(&status).then_some(SDP_B);
                    n.ua.respond(now, *leg, status, sdp, &[]).unwrap();
                }
            }
            UaEvent::Offer { leg, .. } if n.auto.offers => {
                n.ua.answer_offer(now, *leg, 200, Some(SDP_B)).unwrap();
            }
            _ => {}
        }
    }

    fn next_at(&self) -> Option<Instant> {
        let wire = self.wire.iter().map(|w| w.0).min();
        self.nodes
            .iter()
            .filter_map(|n| n.ua.poll_timeout())
            .chain(wire)
            .min()
    }

    /// Runs until `until` or until `done` holds (checked after every step).
    fn run_until(&mut self, until: Instant, mut done: impl FnMut(&Net) -> bool) -> bool {
        self.pump();
        loop {
            if done(self) {
                return true;
            }
            let Some(at) = self.next_at().filter(|&t| t <= until) else {
                self.now = self.now.max(until);
                return done(self);
            };
            self.now = self.now.max(at);
            let now = self.now;
            let (due, rest): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|w| w.0 <= now);
            self.wire = rest;
            for (_, to, from, bytes) in due {
                match self.nodes.iter_mut().find(|n| n.addr == to) {
                    Some(n) => n.ua.handle_bytes(now, &bytes, from),
                    None => self.outside.push((to, bytes)),
                }
            }
            for n in &mut self.nodes {
                if n.ua.poll_timeout().is_some_and(|t| t <= now) {
                    n.ua.handle_timeout(now);
                }
            }
            self.pump();
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until, |_| false);
    }

    /// Every message starting with `prefix` that any node sends, in full
    /// (nothing dropped).
    fn capture(&mut self, prefix: &'static str) -> std::rc::Rc<std::cell::RefCell<Vec<String>>> {
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = seen.clone();
        self.drop = Some(Box::new(move |_, b| {
            if b.starts_with(prefix.as_bytes()) {
                sink.borrow_mut()
                    .push(String::from_utf8_lossy(b).into_owned());
            }
            false
        }));
        seen
    }

    fn ua(&mut self, i: usize) -> &mut UserAgent {
        &mut self.nodes[i].ua
    }

    fn events(&self, i: usize) -> &[UaEvent] {
        &self.nodes[i].events
    }

    fn terminated(&self, i: usize, leg: LegId) -> Option<EndReason> {
        self.events(i).iter().find_map(|e| match e {
            UaEvent::Terminated { leg: l, reason } if *l == leg => Some(reason.clone()),
            _ => None,
        })
    }

    fn incoming(&self, i: usize) -> Vec<LegId> {
        self.events(i)
            .iter()
            .filter_map(|e| match e {
                UaEvent::IncomingInvite { leg, .. } => Some(*leg),
                _ => None,
            })
            .collect()
    }

    fn sent(&self, i: usize, prefix: &str) -> usize {
        self.log
            .iter()
            .filter(|(n, l)| *n == i && l.starts_with(prefix))
            .count()
    }

    fn assert_idle(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            assert_eq!(
                (n.ua.legs(), n.ua.dialogs(), n.ua.transactions()),
                (0, 0, 0),
                "node {i} keeps state"
            );
        }
    }
}

fn answered(events: &[UaEvent], leg: LegId) -> Option<Option<Bytes>> {
    events.iter().find_map(|e| match e {
        UaEvent::Answered { leg: l, sdp } if *l == leg => Some(sdp.clone()),
        _ => None,
    })
}

fn failed(events: &[UaEvent], leg: LegId) -> Option<u16> {
    events.iter().find_map(|e| match e {
        UaEvent::Failed { leg: l, status, .. } if *l == leg => Some(*status),
        _ => None,
    })
}

fn at(s: u64) -> Instant {
    Instant::from_millis(s * 1000)
}

#[test]
fn basic_call_then_bye_reaps_everything() {
    let mut net = Net::pair(1);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    assert!(net.run_until(at(1), |n| !n.incoming(1).is_empty()));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_for(Duration::from_millis(100));
    assert!(
        net.events(0)
            .iter()
            .any(|e| matches!(e, UaEvent::Progress { status: 180, .. }))
    );
    assert_eq!(
        net.ua(0).dialogs(),
        1,
        "180 with a tag makes an early dialog"
    );
    let now = net.now;
    net.ua(1)
        .respond(now, b_leg, 200, Some(SDP_B), &[])
        .unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        answered(net.events(0), leg),
        Some(Some(Bytes::from_static(SDP_B)))
    );
    assert!(
        net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::Acked { .. }))
    );
    assert_eq!(
        net.sent(1, "SIP/2.0 200"),
        1,
        "ACK stopped the 2xx retransmissions"
    );

    let now = net.now;
    net.ua(0).hangup(now, leg).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.terminated(0, leg), Some(EndReason::Local));
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::RemoteBye));
    // Transactions linger for Timer K/J (T4 / 64*T1) and then go.
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn rejected_call_reports_status_and_ends_both_legs() {
    let mut net = Net::pair(2);
    net.nodes[1].auto.answer = Some(486);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(failed(net.events(0), leg), Some(486));
    assert_eq!(net.terminated(0, leg), Some(EndReason::Failed(486)));
    let b_leg = net.incoming(1)[0];
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::Failed(486)));
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn cancel_before_answer() {
    let mut net = Net::pair(3);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_for(Duration::from_millis(50));
    let now = net.now;
    net.ua(0).cancel(now, leg).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::RemoteCancel));
    assert_eq!(net.terminated(0, leg), Some(EndReason::Local));
    assert_eq!(
        failed(net.events(0), leg),
        None,
        "a cancelled call is not a failure"
    );
    assert!(
        net.log
            .iter()
            .any(|(n, l)| *n == 1 && l.starts_with("SIP/2.0 487"))
    );
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn a_call_that_lost_to_another_answer_is_cancelled_as_completed_elsewhere() {
    // RFC 3326: the phone shows no missed call.
    let mut net = Net::pair(5);
    let cancels = net.capture("CANCEL");
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_for(Duration::from_millis(50));
    let now = net.now;
    net.ua(0).hangup_elsewhere(now, leg).unwrap();
    net.run_for(Duration::from_millis(100));
    // The callee (another node's fork) learns why.
    assert_eq!(
        net.terminated(1, b_leg),
        Some(EndReason::CompletedElsewhere)
    );
    let c = cancels.borrow();
    assert_eq!(c.len(), 1);
    assert!(
        c[0].contains("Reason: SIP ;cause=200 ;text=\"Call completed elsewhere\"\r\n"),
        "{}",
        c[0]
    );
    drop(c);
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn a_fork_that_answered_too_late_gets_a_bye_saying_completed_elsewhere() {
    let mut net = Net::pair(5);
    let byes = net.capture("BYE");
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1)
        .respond(now, b_leg, 200, Some(SDP_B), &[])
        .unwrap();
    net.run_for(Duration::from_millis(50));
    let now = net.now;
    net.ua(0).hangup_elsewhere(now, leg).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.terminated(1, b_leg),
        Some(EndReason::CompletedElsewhere)
    );
    assert_eq!(byes.borrow().len(), 1);
    assert!(byes.borrow()[0].contains("Reason: SIP ;cause=200 ;"));
    // A plain BYE is a plain hang-up.
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn reason_cause_200_is_read_as_rfc_3326_writes_it() {
    use super::completed_elsewhere as ce;
    assert!(ce(Some(super::COMPLETED_ELSEWHERE)));
    assert!(ce(Some("sip;cause=200")));
    assert!(ce(Some("SIP ; text=\"x\" ; cause = 200")));
    assert!(!ce(Some("Q.850 ;cause=200")));
    assert!(!ce(Some("SIP ;cause=2000")));
    assert!(!ce(Some("SIP ;text=\"cause=200\"")));
    assert!(!ce(Some("")));
    assert!(!ce(None));
}

#[test]
fn cancel_before_any_provisional_waits_for_one() {
    // RFC 3261 9.1: no CANCEL before a provisional response.
    let mut net = Net::pair(4);
    net.drop = Some(Box::new(|from, b| {
        from == 1 && first_line(b).starts_with("SIP/2.0 100")
    }));
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.ua(0).cancel(Instant::ZERO, leg).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(0, "CANCEL"), 0);
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(0, "CANCEL"), 1);
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::RemoteCancel));
    assert_eq!(net.terminated(0, leg), Some(EndReason::Local));
}

#[test]
fn two_hundred_crossing_cancel_is_acked_then_byed() {
    let mut net = Net::pair(5);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_for(Duration::from_millis(50));
    // Both at once: the CANCEL and the 200 cross on the wire.
    let now = net.now;
    net.ua(1)
        .respond(now, b_leg, 200, Some(SDP_B), &[])
        .unwrap();
    net.ua(0).cancel(now, leg).unwrap();
    net.run_for(Duration::from_millis(200));
    assert_eq!(
        answered(net.events(0), leg),
        None,
        "the app asked to cancel; no Answered"
    );
    assert_eq!(net.sent(0, "ACK"), 1);
    assert_eq!(net.sent(0, "BYE"), 1);
    assert_eq!(net.terminated(0, leg), Some(EndReason::Local));
    assert!(
        net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::Acked { .. }))
    );
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::RemoteBye));
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn lost_ack_is_recovered_by_2xx_retransmission() {
    let mut net = Net::pair(6);
    net.nodes[1].auto.answer = Some(200);
    let mut dropped = 0;
    net.drop = Some(Box::new(move |from, b| {
        if from == 0 && first_line(b).starts_with("ACK") && dropped < 2 {
            dropped += 1;
            return true;
        }
        false
    }));
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_secs(3));
    assert!(answered(net.events(0), leg).is_some());
    assert_eq!(
        net.events(0)
            .iter()
            .filter(|e| matches!(e, UaEvent::Answered { .. }))
            .count(),
        1
    );
    assert!(
        net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::Acked { .. }))
    );
    assert_eq!(
        net.sent(1, "SIP/2.0 200"),
        3,
        "two retransmissions, each answered by an ACK"
    );
    assert_eq!(net.sent(0, "ACK"), 3);
    assert_eq!(net.terminated(0, leg), None);
}

#[test]
fn no_ack_ends_the_call_with_bye() {
    // RFC 3261 13.3.1.4: no ACK within 64*T1 -> BYE.
    let mut net = Net::pair(7);
    net.nodes[1].auto.answer = Some(200);
    net.drop = Some(Box::new(|from, b| {
        from == 0 && first_line(b).starts_with("ACK")
    }));
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_secs(31));
    let b_leg = net.incoming(1)[0];
    assert_eq!(
        net.terminated(1, b_leg),
        None,
        "still retransmitting at 31 s"
    );
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::NoAck));
    assert_eq!(net.terminated(0, leg), Some(EndReason::RemoteBye));
    // 500 ms doubling to 4 s: 0.5 1 2 4 4 4 4 4 4 4 -> 10 retransmissions + the first.
    assert_eq!(net.sent(1, "SIP/2.0 200 OK"), 11);
    assert_eq!(net.sent(1, "BYE"), 1);
    assert_eq!(
        net.events(1)
            .iter()
            .filter(|e| matches!(e, UaEvent::Terminated { .. }))
            .count(),
        1
    );
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn callee_hangup_before_ack_waits_for_the_ack() {
    // RFC 3261 15: the callee must not BYE before the ACK of its 2xx arrives.
    let mut net = Net::pair(16);
    let mut held = true;
    net.drop = Some(Box::new(move |from, b| {
        // Lose the first 2xx so the ACK comes only after the first retransmission.
        if from == 1
            && first_line(b).starts_with("SIP/2.0 200")
            && cseq_method(b) == "INVITE"
            && held
        {
            held = false;
            return true;
        }
        false
    }));
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1)
        .respond(now, b_leg, 200, Some(SDP_B), &[])
        .unwrap();
    net.ua(1).hangup(now, b_leg).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "BYE"), 0, "BYE held until the ACK");
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.sent(1, "BYE"), 1);
    assert!(answered(net.events(0), leg).is_some());
    assert_eq!(net.terminated(0, leg), Some(EndReason::RemoteBye));
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::Local));
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn reinvite_without_final_answer_is_cancelled_after_64_t1() {
    let mut net = Net::pair(17);
    net.nodes[1].auto.answer = Some(200);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(200));
    // The callee's app never answers the offer (auto.offers is off).
    let t0 = net.now;
    net.ua(0).reinvite(t0, leg, SDP_A.to_vec()).unwrap();
    net.run_until(t0 + Duration::from_secs(31), |_| false);
    assert!(
        !net.events(0)
            .iter()
            .any(|e| matches!(e, UaEvent::OfferAnswered { .. }))
    );
    net.run_until(t0 + Duration::from_secs(33), |_| false);
    assert!(
        net.events(0)
            .iter()
            .any(|e| matches!(e, UaEvent::OfferAnswered { status: 408, .. }))
    );
    assert_eq!(net.sent(0, "CANCEL"), 1);
    assert!(
        net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::OfferCancelled { .. }))
    );
    assert_eq!(
        net.terminated(0, leg),
        None,
        "the call goes on with the old session"
    );
    // The offer is no longer pending: a new one may go out.
    let now = net.now;
    net.nodes[1].auto.offers = true;
    net.ua(0).reinvite(now, leg, SDP_A.to_vec()).unwrap();
    net.run_for(Duration::from_millis(200));
    assert!(
        net.events(0)
            .iter()
            .any(|e| matches!(e, UaEvent::OfferAnswered { status: 200, .. }))
    );
}

#[test]
fn reinvite_hold_and_info() {
    let mut net = Net::pair(8);
    net.nodes[1].auto = Auto {
        answer: Some(200),
        offers: true,
    };
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(200));
    let now = net.now;
    let hold = [SDP_A, b"a=sendonly\r\n"].concat();
    net.ua(0).reinvite(now, leg, hold.clone()).unwrap();
    assert_eq!(
        net.ua(0).reinvite(now, leg, hold.clone()),
        Err(UaError::WrongState("an offer is already in progress"))
    );
    net.run_for(Duration::from_millis(200));
    assert!(
        net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::Offer { sdp, .. } if sdp[..] == hold[..]))
    );
    assert!(net.events(0).iter().any(|e| matches!(
        e,
        UaEvent::OfferAnswered {
            status: 200,
            sdp: Some(_),
            ..
        }
    )));
    assert_eq!(
        net.sent(0, "ACK"),
        2,
        "ACK for the initial 2xx and for the re-INVITE's"
    );
    let now = net.now;
    net.ua(0)
        .info(
            now,
            leg,
            "application/dtmf-relay",
            b"Signal=5\r\nDuration=160\r\n",
        )
        .unwrap();
    net.run_for(Duration::from_millis(200));
    assert!(
        net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::Info { content_type, body, .. }
        if content_type == "application/dtmf-relay" && body.starts_with(b"Signal=5")))
    );
    // The callee can re-INVITE too (its own CSeq space, requests to our Contact).
    let b_leg = net.incoming(1)[0];
    net.nodes[0].auto.offers = true;
    let now = net.now;
    net.ua(1).reinvite(now, b_leg, SDP_B.to_vec()).unwrap();
    net.run_for(Duration::from_millis(200));
    assert!(
        net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::OfferAnswered { status: 200, .. }))
    );
    let now = net.now;
    net.ua(1).hangup(now, b_leg).unwrap();
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.terminated(0, leg), Some(EndReason::RemoteBye));
    net.assert_idle();
}

#[test]
fn reinvite_glare_is_resolved_by_491_and_randomised_retry() {
    // RFC 3261 14.1: both offer at once; both get 491; the Call-ID owner (caller)
    // retries after 2.1-4 s, the other after 0-2 s; both offers then go through.
    let mut net = Net::pair(9);
    net.nodes[1].auto.answer = Some(200);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(200));
    let b_leg = net.incoming(1)[0];
    net.nodes[0].auto.offers = true;
    net.nodes[1].auto.offers = true;
    let t0 = net.now;
    net.ua(0).reinvite(t0, leg, SDP_A.to_vec()).unwrap();
    net.ua(1).reinvite(t0, b_leg, SDP_B.to_vec()).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(0, "SIP/2.0 491"), 1);
    assert_eq!(net.sent(1, "SIP/2.0 491"), 1);
    assert_eq!(net.sent(0, "INVITE"), 2);
    assert_eq!(net.sent(1, "INVITE"), 1);
    net.run_until(t0 + Duration::from_millis(2000), |_| false);
    assert_eq!(net.sent(1, "INVITE"), 2, "the callee retried within 2 s");
    assert_eq!(net.sent(0, "INVITE"), 2, "the caller waits at least 2.1 s");
    net.run_until(t0 + Duration::from_millis(4200), |_| false);
    assert_eq!(net.sent(0, "INVITE"), 3, "the caller retried by 4 s");
    for i in 0..2 {
        let ok = net
            .events(i)
            .iter()
            .filter(|e| matches!(e, UaEvent::OfferAnswered { status: 200, .. }))
            .count();
        assert_eq!(ok, 1, "node {i}");
    }
    assert_eq!(net.terminated(0, leg), None);
}

#[test]
fn bye_on_early_dialog_gets_200_and_invite_487() {
    // RFC 3261 15.1.2 / 15.2: the caller may BYE an early dialog.
    let mut net = Net::pair(10);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1)
        .respond(now, b_leg, 183, Some(SDP_B), &[])
        .unwrap();
    net.run_for(Duration::from_millis(50));
    // Craft the BYE the caller would send in the early dialog, from a third
    // address (CSeq 3: the caller's PRACK of the reliable 183 took 2).
    let invite = net
        .events(1)
        .iter()
        .find_map(|e| match e {
            UaEvent::IncomingInvite { request, .. } => Some(request.clone()),
            _ => None,
        })
        .unwrap();
    assert!(net.events(0).iter().any(|e| matches!(
        e,
        UaEvent::Progress {
            status: 183,
            sdp: Some(_),
            ..
        }
    )));
    let b_tag = net.nodes[1].ua.legs[&b_leg].local_tag.clone();
    let bye = format!(
        "BYE sip:sbc@10.0.0.2:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKearlybye\r\nMax-Forwards: 70\r\n\
         From: {}\r\nTo: {};tag={b_tag}\r\nCall-ID: {}\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n",
        invite.header_from().unwrap(),
        invite.header_to().unwrap(),
        invite.call_id().unwrap()
    );
    let now = net.now;
    net.ua(1).handle_bytes(
        now,
        bye.as_bytes(),
        Peer::udp("10.0.0.9:5060".parse().unwrap()),
    );
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::RemoteBye));
    assert!(
        net.outside
            .iter()
            .any(|(_, b)| first_line(b).starts_with("SIP/2.0 200") && cseq_method(b) == "BYE")
    );
    assert_eq!(failed(net.events(0), leg), Some(487));
}

#[test]
fn in_dialog_request_for_unknown_dialog_gets_481_and_stray_methods_405() {
    let mut ua = ua(2, 11);
    let from = Peer::udp("10.0.0.9:5060".parse().unwrap());
    let req = |method: &str, to_tag: &str| {
        format!(
            "{method} sip:sbc@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK{method}{to_tag}\r\nMax-Forwards: 70\r\n\
             From: <sip:x@10.0.0.9>;tag=1\r\nTo: <sip:sbc@10.0.0.2>{to_tag}\r\nCall-ID: nope@10.0.0.9\r\nCSeq: 5 {method}\r\n\
             Contact: <sip:x@10.0.0.9>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let status = |ua: &mut UserAgent, text: String| {
        ua.handle_bytes(Instant::ZERO, text.as_bytes(), from);
        let t = ua.poll_transmit().expect("a response");
        (
            first_line(&t.bytes),
            String::from_utf8_lossy(&t.bytes).to_string(),
        )
    };
    assert!(
        status(&mut ua, req("BYE", ";tag=zz"))
            .0
            .starts_with("SIP/2.0 481")
    );
    let (line, text) = status(&mut ua, req("MESSAGE", ""));
    assert!(line.starts_with("SIP/2.0 405"), "{line}");
    assert!(text.contains("Allow: INVITE, ACK"), "{text}");
    let (line, text) = status(&mut ua, req("OPTIONS", ""));
    assert!(line.starts_with("SIP/2.0 200"));
    assert!(text.contains("Accept: application/sdp"));
    assert_eq!(ua.legs(), 0);
}

#[test]
fn a_draining_ua_answers_probes_503_and_recovers() {
    let mut ua = ua(2, 12);
    let from = Peer::udp("10.0.0.9:5060".parse().unwrap());
    let probe = |ua: &mut UserAgent, branch: &str| {
        let text = format!(
            "OPTIONS sip:sbc@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.9:5060;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n\
             From: <sip:dispatcher@10.0.0.9>;tag=1\r\nTo: <sip:sbc@10.0.0.2>\r\nCall-ID: {branch}@10.0.0.9\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        );
        ua.handle_bytes(Instant::ZERO, text.as_bytes(), from);
        String::from_utf8_lossy(&ua.poll_transmit().expect("a response").bytes).to_string()
    };
    ua.set_draining(true);
    let text = probe(&mut ua, "d1");
    assert!(text.starts_with("SIP/2.0 503"), "{text}");
    assert!(text.contains("Retry-After: 5"), "{text}");
    ua.set_draining(false);
    assert!(probe(&mut ua, "d2").starts_with("SIP/2.0 200"));
}

#[test]
fn options_ping_reports_status_or_timeout() {
    let mut net = Net::pair(12);
    let ping = net
        .ua(0)
        .options(Instant::ZERO, "sip:10.0.0.2", Peer::udp(addr(2)))
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert!(
        net.events(0).iter().any(
            |e| matches!(e, UaEvent::OptionsResult { ping: p, status: Some(200) } if *p == ping)
        )
    );
    // Nobody at 10.0.0.7: Timer F (64*T1 = 32 s).
    let now = net.now;
    let lost = net
        .ua(0)
        .options(now, "sip:10.0.0.7", Peer::udp(addr(7)))
        .unwrap();
    net.run_for(Duration::from_secs(31));
    assert!(
        !net.events(0)
            .iter()
            .any(|e| matches!(e, UaEvent::OptionsResult { ping: p, .. } if *p == lost))
    );
    net.run_for(Duration::from_secs(2));
    assert!(
        net.events(0)
            .iter()
            .any(|e| matches!(e, UaEvent::OptionsResult { ping: p, status: None } if *p == lost))
    );
}

#[test]
fn leg_limit_answers_503_with_retry_after() {
    let mut b = UaConfig::new(LocalAddr::udp(addr(2).ip(), 5060), 13);
    b.max_legs = 2;
    let mut net = Net::new(vec![ua(1, 13), UserAgent::new(b)], 13);
    let legs: Vec<_> = (0..3)
        .map(|_| net.ua(0).invite(Instant::ZERO, params(2)).unwrap())
        .collect();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.incoming(1).len(), 2);
    assert_eq!(failed(net.events(0), legs[2]), Some(503));
    assert!(
        net.log
            .iter()
            .any(|(n, l)| *n == 1 && l.starts_with("SIP/2.0 503"))
    );
    // The caller side is bounded as well.
    let mut a = UaConfig::new(LocalAddr::udp(addr(1).ip(), 5060), 1);
    a.max_legs = 1;
    let mut a = UserAgent::new(a);
    a.invite(Instant::ZERO, params(2)).unwrap();
    assert_eq!(
        a.invite(Instant::ZERO, params(2)).unwrap_err(),
        UaError::Overloaded
    );
}

#[test]
fn ring_timeout_gives_up_on_both_sides() {
    // A caller that gives up: CANCEL at ring_timeout, reported as 408.
    let mut b = UaConfig::new(LocalAddr::udp(addr(2).ip(), 5060), 14);
    b.ring_timeout = Duration::from_secs(3600);
    let mut net = Net::new(vec![ua(1, 14), UserAgent::new(b)], 14);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_until(at(179), |_| false);
    assert_eq!(net.terminated(0, leg), None);
    net.run_until(at(181), |_| false);
    assert_eq!(failed(net.events(0), leg), Some(408));
    assert_eq!(net.terminated(0, leg), Some(EndReason::Failed(408)));
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::RemoteCancel));

    // A callee that never answers: 480 at ring_timeout.
    let mut a = UaConfig::new(LocalAddr::udp(addr(1).ip(), 5060), 15);
    a.ring_timeout = Duration::from_secs(3600);
    let mut net = Net::new(vec![UserAgent::new(a), ua(2, 15)], 15);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_until(at(181), |_| false);
    assert_eq!(failed(net.events(0), leg), Some(480));
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

// ----- against a scripted peer -----

/// One UA and the messages it sends, with helpers to answer them by hand.
struct Scripted {
    ua: UserAgent,
    now: Instant,
    events: Vec<UaEvent>,
}

impl Scripted {
    fn new(seed: u64) -> Scripted {
        Scripted {
            ua: ua(1, seed),
            now: Instant::ZERO,
            events: Vec::new(),
        }
    }

    /// Everything sent so far, parsed.
    fn sent(&mut self) -> Vec<(Peer, Request)> {
        let mut out = Vec::new();
        while let Some(t) = self.ua.poll_transmit() {
            if let Inbound::Request(r) =
                message::classify(&t.bytes, Transport::Udp, &ValidationConfig::default())
            {
                out.push((t.to, *r));
            }
        }
        while let Some(e) = self.ua.poll_event() {
            self.events.push(e);
        }
        out
    }

    fn deliver(&mut self, resp: Response, from: SocketAddr) {
        let bytes = message::to_wire(&SipMessage::Response(resp));
        self.ua.handle_bytes(self.now, &bytes, Peer::udp(from));
        while let Some(e) = self.ua.poll_event() {
            self.events.push(e);
        }
    }

    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(t) = self.ua.poll_timeout().filter(|&t| t <= until) {
            self.now = self.now.max(t);
            self.ua.handle_timeout(self.now);
        }
        self.now = until;
        while let Some(e) = self.ua.poll_event() {
            self.events.push(e);
        }
    }
}

fn reply(
    req: &Request,
    status: u16,
    tag: &str,
    contact: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut r = response_to(req, status, Some(tag));
    if !contact.is_empty() {
        r.headers.push(Header::Contact(contact.to_string().into()));
    }
    for (k, v) in headers {
        r.headers
            .push(rsipstack::sip::headers::make_header(k, v.to_string()));
    }
    if !body.is_empty() {
        r.headers
            .push(Header::ContentType("application/sdp".into()));
        r.body = body.to_vec();
    }
    r
}

#[test]
fn forked_call_confirms_first_2xx_and_byes_the_second() {
    // RFC 3261 13.2.2.4: every 2xx is ACKed; a second dialog is ended with BYE.
    let mut s = Scripted::new(20);
    let proxy: SocketAddr = "10.0.0.9:5060".parse().unwrap();
    let mut p = params(9);
    p.peer = Peer::udp(proxy);
    let leg = s.ua.invite(Instant::ZERO, p).unwrap();
    let invite = s.sent().remove(0).1;
    s.deliver(
        reply(&invite, 180, "f1", "<sip:f1@10.0.0.11>", &[], b""),
        proxy,
    );
    s.deliver(
        reply(&invite, 183, "f2", "<sip:f2@10.0.0.12>", &[], SDP_B),
        proxy,
    );
    assert_eq!(s.ua.dialogs(), 2, "two early dialogs");
    s.deliver(
        reply(&invite, 200, "f1", "<sip:f1@10.0.0.11>", &[], SDP_B),
        proxy,
    );
    s.deliver(
        reply(&invite, 200, "f2", "<sip:f2@10.0.0.12>", &[], SDP_B),
        proxy,
    );
    let out = s.sent();
    let methods: Vec<_> = out
        .iter()
        .map(|(p, r)| {
            (
                r.method.to_string(),
                r.to_tag().unwrap().to_string(),
                p.addr,
            )
        })
        .collect();
    assert_eq!(
        methods,
        vec![
            ("ACK".into(), "f1".into(), "10.0.0.11:5060".parse().unwrap()),
            ("ACK".into(), "f2".into(), "10.0.0.12:5060".parse().unwrap()),
            ("BYE".into(), "f2".into(), "10.0.0.12:5060".parse().unwrap()),
        ]
    );
    assert_eq!(
        s.events
            .iter()
            .filter(|e| matches!(e, UaEvent::Answered { .. }))
            .count(),
        1
    );
    assert_eq!(
        s.events
            .iter()
            .filter(|e| matches!(e, UaEvent::Progress { .. }))
            .count(),
        2
    );
    assert_eq!((s.ua.legs(), s.ua.dialogs()), (1, 1));
    // A retransmission of the confirmed 2xx gets the same ACK, not a BYE.
    s.deliver(
        reply(&invite, 200, "f1", "<sip:f1@10.0.0.11>", &[], SDP_B),
        proxy,
    );
    let again = s.sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.method, Method::Ack);
    assert_eq!(s.ua.hangup(s.now, leg), Ok(()));
    let bye = s.sent().remove(0).1;
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.to_tag(), Some("f1"));
    assert_eq!(bye.cseq().unwrap().0, 2);
}

#[test]
fn stray_2xx_for_an_unknown_call_is_ignored() {
    let mut s = Scripted::new(21);
    let proxy: SocketAddr = "10.0.0.9:5060".parse().unwrap();
    let mut p = params(9);
    p.peer = Peer::udp(proxy);
    s.ua.invite(Instant::ZERO, p).unwrap();
    let mut invite = s.sent().remove(0).1;
    // Someone else's Call-ID and branch.
    for h in invite.headers.iter_mut() {
        match h {
            Header::CallId(c) => *c = "forged@x".to_string().into(),
            Header::Via(v) => {
                *v = "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKforged"
                    .to_string()
                    .into()
            }
            _ => {}
        }
    }
    s.deliver(
        reply(&invite, 200, "x", "<sip:x@10.0.0.13>", &[], SDP_B),
        proxy,
    );
    assert!(s.sent().is_empty(), "no ACK/BYE reflected for a forged 2xx");
}

/// The Authorization parameters a test server checks.
fn digest_param<'a>(v: &'a str, name: &str) -> &'a str {
    v.split(',')
        .map(str::trim)
        .find_map(|kv| {
            let kv = kv.strip_prefix("Digest ").unwrap_or(kv);
            let (k, val) = kv.split_once('=')?;
            (k.trim() == name).then(|| val.trim().trim_matches('"'))
        })
        .unwrap_or("")
}

fn verify(req: &Request, header: &str, creds: &auth::Credentials, realm: &str, nonce: &str) {
    let v = req.values(header).join(", ");
    assert!(!v.is_empty(), "{header} missing");
    let nc = u32::from_str_radix(digest_param(&v, "nc"), 16).unwrap();
    let cnonce = digest_param(&v, "cnonce");
    let uri = digest_param(&v, "uri");
    assert_eq!(uri, req.uri.to_string());
    let want = auth::response(
        Algorithm::Md5,
        creds,
        realm,
        nonce,
        &req.method.to_string(),
        uri,
        Some(("auth", nc, cnonce)),
    );
    assert_eq!(digest_param(&v, "response"), want);
    assert_eq!(digest_param(&v, "username"), creds.username);
}

#[test]
fn invite_answers_401_and_407_then_gives_up_on_a_third_challenge() {
    let creds = auth::Credentials {
        username: "trunk1".into(),
        password: "s3cret".into(),
    };
    let mut s = Scripted::new(22);
    let carrier: SocketAddr = "10.0.0.9:5060".parse().unwrap();
    let mut p = params(9);
    p.peer = Peer::udp(carrier);
    p.credentials = Some(creds.clone());
    let leg = s.ua.invite(Instant::ZERO, p).unwrap();
    let i1 = s.sent().remove(0).1;
    s.deliver(
        reply(
            &i1,
            401,
            "c1",
            "",
            &[(
                "WWW-Authenticate",
                "Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth\"",
            )],
            b"",
        ),
        carrier,
    );
    let out = s.sent();
    assert_eq!(
        out[0].1.method,
        Method::Ack,
        "the 401 is ACKed by the transaction"
    );
    let i2 = out[1].1.clone();
    assert_eq!(i2.method, Method::Invite);
    assert_eq!(i2.cseq().unwrap().0, 2);
    assert_eq!(i2.call_id(), i1.call_id());
    assert_eq!(i2.from_tag(), i1.from_tag());
    assert_ne!(i2.branch(), i1.branch());
    assert_eq!(i2.body, SDP_A);
    verify(&i2, "Authorization", &creds, "carrier", "n1");
    s.deliver(
        reply(
            &i2,
            407,
            "c2",
            "",
            &[(
                "Proxy-Authenticate",
                "Digest realm=\"proxy\", nonce=\"n2\", qop=\"auth\"",
            )],
            b"",
        ),
        carrier,
    );
    let i3 = s.sent().remove(1).1;
    verify(&i3, "Proxy-Authorization", &creds, "proxy", "n2");
    assert_eq!(i3.cseq().unwrap().0, 3);
    s.deliver(
        reply(
            &i3,
            401,
            "c3",
            "",
            &[(
                "WWW-Authenticate",
                "Digest realm=\"carrier\", nonce=\"n3\", qop=\"auth\"",
            )],
            b"",
        ),
        carrier,
    );
    assert_eq!(s.sent().len(), 1, "only the ACK: no endless challenge loop");
    assert_eq!(failed(&s.events, leg), Some(401));
    assert_eq!(s.ua.legs(), 0);
}

#[test]
fn register_authenticates_refreshes_and_backs_off() {
    let creds = auth::Credentials {
        username: "1001".into(),
        password: "pw".into(),
    };
    let mut s = Scripted::new(23);
    let registrar: SocketAddr = "10.0.0.9:5060".parse().unwrap();
    let reg = s.ua.register(
        Instant::ZERO,
        RegisterParams {
            registrar: "sip:carrier.example".into(),
            aor: "sip:1001@carrier.example".into(),
            expires: Duration::from_secs(120),
            peer: Peer::udp(registrar),
            credentials: Some(creds.clone()),
        },
    );
    let r1 = s.sent().remove(0).1;
    assert_eq!(r1.method, Method::Register);
    assert_eq!(r1.values("Expires"), vec!["120"]);
    s.deliver(
        reply(
            &r1,
            401,
            "r",
            "",
            &[(
                "WWW-Authenticate",
                "Digest realm=\"carrier.example\", nonce=\"abc\", qop=\"auth\"",
            )],
            b"",
        ),
        registrar,
    );
    let r2 = s.sent().remove(0).1;
    verify(&r2, "Authorization", &creds, "carrier.example", "abc");
    assert_eq!(r2.cseq().unwrap().0, r1.cseq().unwrap().0 + 1);
    s.deliver(
        reply(
            &r2,
            200,
            "r",
            "<sip:sbc@10.0.0.1:5060>;expires=100",
            &[],
            b"",
        ),
        registrar,
    );
    assert!(s.events.iter().any(|e| matches!(e, UaEvent::Registered { reg: r, expires } if *r == reg && expires.as_secs() == 100)));
    // Refresh at max(half, expiry - 60 s) = 50 s, same Call-ID.
    s.advance(Duration::from_secs(49));
    assert!(s.sent().is_empty());
    s.advance(Duration::from_secs(2));
    let r3 = s.sent().remove(0).1;
    assert_eq!(r3.call_id(), r1.call_id());
    assert!(r3.cseq().unwrap().0 > r2.cseq().unwrap().0);
    // 423 Interval Too Brief: ask again at once with Min-Expires.
    s.deliver(
        reply(&r3, 423, "r", "", &[("Min-Expires", "300")], b""),
        registrar,
    );
    let r4 = s.sent().remove(0).1;
    assert_eq!(r4.values("Expires"), vec!["300"]);
    // 503: failure reported, retry 30 s later, then 60 s after a second failure.
    s.deliver(reply(&r4, 503, "r", "", &[], b""), registrar);
    assert!(
        s.events
            .iter()
            .any(|e| matches!(e, UaEvent::RegistrationFailed { status: 503, .. }))
    );
    s.advance(Duration::from_secs(29));
    assert!(s.sent().is_empty());
    s.advance(Duration::from_secs(2));
    let r5 = s.sent().remove(0).1;
    s.deliver(reply(&r5, 500, "r", "", &[], b""), registrar);
    s.advance(Duration::from_secs(59));
    assert!(s.sent().iter().all(|(_, r)| r.method != Method::Register));
    s.advance(Duration::from_secs(2));
    let r6 = s
        .sent()
        .into_iter()
        .find(|(_, r)| r.method == Method::Register)
        .unwrap()
        .1;
    // Unregister: Expires 0, and the binding is forgotten.
    s.deliver(
        reply(
            &r6,
            200,
            "r",
            "<sip:sbc@10.0.0.1:5060>;expires=300",
            &[],
            b"",
        ),
        registrar,
    );
    s.ua.unregister(s.now, reg);
    let r7 = s
        .sent()
        .into_iter()
        .find(|(_, r)| r.method == Method::Register)
        .unwrap()
        .1;
    assert_eq!(r7.values("Expires"), vec!["0"]);
    s.advance(Duration::from_secs(3600));
    let later = s.sent();
    assert!(
        !later.is_empty(),
        "the unregister is retransmitted until answered"
    );
    assert!(
        later.iter().all(|(_, r)| r.cseq() == r7.cseq()),
        "no refresh after unregister"
    );
}

// ----- many random calls -----

#[test]
fn ten_thousand_random_call_sequences_leave_no_state() {
    // Random calls between two UAs with 5% loss: answered, rejected, cancelled,
    // hung up by either side, re-INVITEd, INFO'd. Afterwards nothing is left, and
    // every leg was reported Terminated exactly once on each side.
    let mut net = Net::pair(30);
    net.loss = 0.05;
    let mut rng = SeededRng::new(30);
    let mut uac_legs: Vec<LegId> = Vec::new();
    let mut started = 0;
    while started < 10_000 {
        // Start a few calls, then act on what is live.
        for _ in 0..1 + rng.next_u32() % 4 {
            let now = net.now;
            if let Ok(leg) = net.ua(0).invite(now, params(2)) {
                uac_legs.push(leg);
                started += 1;
            }
        }
        net.run_for(Duration::from_millis(20 + u64::from(rng.next_u32() % 200)));
        let now = net.now;
        // Callee decisions.
        let fresh: Vec<LegId> = net.nodes[1]
            .events
            .iter()
            .filter_map(|e| match e {
                UaEvent::IncomingInvite { leg, .. } => Some(*leg),
                _ => None,
            })
            .collect();
        for leg in fresh {
            match rng.next_u32() % 6 {
                0 => drop(net.ua(1).respond(now, leg, 486, None, &[])),
                1 => drop(net.ua(1).respond(now, leg, 180, None, &[])), // ring; decided later or times out
                _ => {
                    let _ = net.ua(1).respond(now, leg, 180, None, &[]);
                    let _ = net.ua(1).respond(now, leg, 200, Some(SDP_B), &[]);
                }
            }
        }
        // Other actions on random live legs of either side.
        for side in 0..2 {
            let live: Vec<LegId> = net.nodes[side].ua.legs.keys().copied().collect();
            for leg in live {
                let now = net.now;
                match rng.next_u32() % 20 {
                    0 | 1 => drop(net.ua(side).hangup(now, leg)),
                    2 => drop(net.ua(side).reinvite(now, leg, SDP_A.to_vec())),
                    3 => {
                        drop(
                            net.ua(side)
                                .info(now, leg, "application/dtmf-relay", b"Signal=1\r\n"),
                        )
                    }
                    4 if side == 1 => drop(net.ua(side).respond(now, leg, 200, Some(SDP_B), &[])),
                    _ => {}
                }
            }
        }
        // Answer offers (or refuse some with 488).
        for side in 0..2 {
            let offers: Vec<LegId> = net.nodes[side]
                .events
                .iter()
                .filter_map(|e| match e {
                    UaEvent::Offer { leg, .. } => Some(*leg),
                    _ => None,
                })
                .collect();
            for leg in offers {
                let now = net.now;
                let status = if rng.chance(0.1) { 488 } else { 200 };
                let _ =
                    net.ua(side)
                        .answer_offer(now, leg, status, (status == 200).then_some(SDP_B));
            }
        }
        // Keep events small: only what the checks below need.
        for side in 0..2 {
            net.nodes[side]
                .events
                .retain(|e| matches!(e, UaEvent::Terminated { .. }));
        }
    }
    // Hang up everything still up, then let every timer run out.
    for side in 0..2 {
        let live: Vec<LegId> = net.nodes[side].ua.legs.keys().copied().collect();
        for leg in live {
            let now = net.now;
            let _ = net.ua(side).hangup(now, leg);
        }
    }
    net.loss = 0.0;
    net.run_for(Duration::from_secs(300));
    for side in 0..2 {
        let live: Vec<LegId> = net.nodes[side].ua.legs.keys().copied().collect();
        for leg in live {
            let now = net.now;
            let _ = net.ua(side).hangup(now, leg);
        }
    }
    net.run_for(Duration::from_secs(300));
    net.assert_idle();
    let mut seen = HashSet::new();
    let mut reasons: Vec<HashSet<String>> = vec![HashSet::new(), HashSet::new()];
    for (side, found) in reasons.iter_mut().enumerate() {
        for e in net.events(side) {
            if let UaEvent::Terminated { leg, reason } = e {
                assert!(side == 1 || seen.insert(*leg), "{leg:?} terminated twice");
                found.insert(format!("{reason:?}"));
            }
        }
    }
    assert!(
        uac_legs.iter().all(|l| seen.contains(l)),
        "every call reported its end"
    );
    // The mix really covered the paths (not just quick rejects).
    for r in ["Local", "RemoteBye", "Failed(486)"] {
        assert!(
            reasons[0].contains(r),
            "caller never saw {r}: {:?}",
            reasons[0]
        );
    }
    for r in ["Local", "RemoteBye", "RemoteCancel", "Failed(486)"] {
        assert!(
            reasons[1].contains(r),
            "callee never saw {r}: {:?}",
            reasons[1]
        );
    }
    let stats = net.nodes[0].ua.transaction_stats();
    assert!(
        stats.retransmissions > 1000,
        "loss was exercised: {stats:?}"
    );
}

// ----- session timers (RFC 4028) -----

fn with_session_expires(to: u8, v: &str) -> InviteParams {
    let mut p = params(to);
    p.headers.push(("Session-Expires".into(), v.into()));
    p
}

#[test]
fn session_timer_is_refreshed_by_the_caller_and_ends_when_refreshes_stop() {
    let mut net = Net::pair(40);
    net.nodes[1].auto.answer = Some(200);
    let leg = net
        .ua(0)
        .invite(Instant::ZERO, with_session_expires(2, "90"))
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert!(answered(net.events(0), leg).is_some());
    let b_leg = net.incoming(1)[0];
    // The callee names the caller (which supports timers) the refresher.
    let ours = net.nodes[0].ua.legs[&leg].session.unwrap();
    let theirs = net.nodes[1].ua.legs[&b_leg].session.unwrap();
    assert_eq!(ours.interval, Duration::from_secs(90));
    assert!(ours.we_refresh && !theirs.we_refresh);

    // Refreshed at half the interval, with UPDATE (both allow it): three times
    // in 140 s, and the callee's deadline moves with each.
    net.run_until(at(140), |_| false);
    assert_eq!(net.sent(0, "UPDATE"), 3);
    assert_eq!(net.terminated(1, b_leg), None);
    assert_eq!(net.nodes[0].ua.stats().session_refreshes, 3);

    // The caller's refreshes get lost: the callee ends the session at the
    // last refresh (135 s) + 90 - 30 s, with BYE.
    net.drop = Some(Box::new(|from, b| {
        from == 0 && first_line(b).starts_with("UPDATE")
    }));
    net.run_until(at(200), |n| n.terminated(1, b_leg).is_some());
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::SessionExpired));
    assert!(net.now <= at(196) && net.now >= at(195), "{:?}", net.now);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.terminated(0, leg), Some(EndReason::RemoteBye));
    assert_eq!(net.nodes[1].ua.stats().session_expired, 1);
    net.run_for(Duration::from_secs(60));
    net.assert_idle();
}

#[test]
fn a_too_brief_session_interval_gets_422_and_the_caller_asks_again() {
    let mut cfg = UaConfig::new(LocalAddr::udp(addr(2).ip(), 5060), 42);
    cfg.min_se = Duration::from_secs(300);
    let mut net = Net::new(vec![ua(1, 41), UserAgent::new(cfg)], 41);
    net.nodes[1].auto.answer = Some(200);
    let leg = net
        .ua(0)
        .invite(Instant::ZERO, with_session_expires(2, "90"))
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.sent(1, "SIP/2.0 422"), 1);
    assert_eq!(net.sent(0, "INVITE"), 2, "asked again");
    assert!(answered(net.events(0), leg).is_some());
    let b_leg = net.incoming(1)[0];
    assert_eq!(
        net.nodes[1].ua.legs[&b_leg].session.unwrap().interval,
        Duration::from_secs(300)
    );
    // A refresh that asks for less than 300 s is refused the same way.
    assert_eq!(
        net.nodes[0].ua.legs[&leg].session.unwrap().interval,
        Duration::from_secs(300)
    );
}

#[test]
fn the_callee_refreshes_with_reinvite_when_the_caller_asks_it_and_lacks_update() {
    // A PBX that asks for a session timer with us (the callee) as refresher, does
    // not support timers itself and does not allow UPDATE.
    let mut ua = ua(1, 43);
    let pbx = Peer::udp("10.0.0.7:5060".parse().unwrap());
    let invite = "INVITE sip:+15550100@10.0.0.1 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKpbx1\r\n\
        From: <sip:200@10.0.0.7>;tag=pbx\r\nTo: <sip:+15550100@10.0.0.1>\r\n\
        Call-ID: st-1@10.0.0.7\r\nCSeq: 1 INVITE\r\nContact: <sip:200@10.0.0.7>\r\n\
        Max-Forwards: 70\r\nSession-Expires: 90;refresher=uas\r\n\
        Allow: INVITE, ACK, BYE, CANCEL\r\nContent-Type: application/sdp\r\n";
    let bytes = format!(
        "{invite}Content-Length: {}\r\n\r\n{}",
        SDP_A.len(),
        String::from_utf8_lossy(SDP_A)
    );
    ua.handle_bytes(Instant::ZERO, bytes.as_bytes(), pbx);
    let leg = std::iter::from_fn(|| ua.poll_event())
        .find_map(|e| match e {
            UaEvent::IncomingInvite { leg, .. } => Some(leg),
            _ => None,
        })
        .unwrap();
    ua.respond(Instant::ZERO, leg, 200, Some(SDP_B), &[])
        .unwrap();
    let out: Vec<String> = std::iter::from_fn(|| ua.poll_transmit())
        .map(|t| String::from_utf8_lossy(&t.bytes).to_string())
        .collect();
    let ok = out.iter().find(|m| m.starts_with("SIP/2.0 200")).unwrap();
    assert!(ok.contains("Session-Expires: 90;refresher=uas\r\n"), "{ok}");
    assert!(
        !ok.contains("Require: timer"),
        "the PBX does not support it: {ok}"
    );
    let ack = "ACK sip:+15550100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bKpbx2\r\n\
        From: <sip:200@10.0.0.7>;tag=pbx\r\nTo: <sip:+15550100@10.0.0.1>;tag=TAG\r\n\
        Call-ID: st-1@10.0.0.7\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let tag = ua.legs[&leg].local_tag.clone();
    ua.handle_bytes(
        Instant::from_millis(10),
        ack.replace("TAG", &tag).as_bytes(),
        pbx,
    );
    // At half the interval: a re-INVITE offering our SDP unchanged.
    let mut now = Instant::from_millis(10);
    while let Some(t) = ua.poll_timeout().filter(|t| *t <= at(45)) {
        now = now.max(t);
        ua.handle_timeout(now);
    }
    let out: Vec<String> = std::iter::from_fn(|| ua.poll_transmit())
        .map(|t| String::from_utf8_lossy(&t.bytes).to_string())
        .collect();
    let reinvite = out
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .expect("a refresh re-INVITE");
    assert!(
        reinvite.contains("Session-Expires: 90;refresher=uac\r\n"),
        "{reinvite}"
    );
    assert!(
        reinvite.ends_with(std::str::from_utf8(SDP_B).unwrap()),
        "{reinvite}"
    );
    assert_eq!(ua.stats().session_refreshes, 1);
}

#[test]
fn a_reinvite_without_sdp_gets_our_session_as_the_offer_and_the_ack_answers() {
    let mut net = Net::pair(44);
    net.nodes[1].auto.answer = Some(200);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_secs(1));
    assert!(answered(net.events(0), leg).is_some());
    let b_leg = net.incoming(1)[0];
    let (call_id, a_tag, b_tag) = {
        let l = &net.nodes[1].ua.legs[&b_leg];
        (
            l.call_id.clone(),
            l.remote_tag.clone().unwrap(),
            l.local_tag.clone(),
        )
    };
    // The caller re-INVITEs without a body (a PBX's session refresh), played by
    // hand: what the callee sends back is kept from the real caller.
    net.drop = Some(Box::new(|from, _| from == 1));
    let reinvite = format!(
        "INVITE sip:b@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnosdp\r\n\
         From: <sip:+15550111@10.0.0.1>;tag={a_tag}\r\nTo: <sip:+15550100@10.0.0.2>;tag={b_tag}\r\n\
         Call-ID: {call_id}\r\nCSeq: 5 INVITE\r\nContact: <sip:a@10.0.0.1>\r\nMax-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let now = net.now;
    net.nodes[1]
        .ua
        .handle_bytes(now, reinvite.as_bytes(), Peer::udp(addr(1)));
    let sent: Vec<String> = std::iter::from_fn(|| net.nodes[1].ua.poll_transmit())
        .map(|t| String::from_utf8_lossy(&t.bytes).to_string())
        .collect();
    let ok = sent
        .iter()
        .find(|m| m.starts_with("SIP/2.0 200") && m.contains("CSeq: 5 INVITE"))
        .expect("a 2xx");
    assert!(
        ok.ends_with(std::str::from_utf8(SDP_B).unwrap()),
        "our session as the offer: {ok}"
    );
    // Without the ACK the 2xx is retransmitted; the ACK (with the answer) stops it.
    let before = net.sent(1, "SIP/2.0 200");
    net.run_for(Duration::from_millis(600));
    assert_eq!(
        net.sent(1, "SIP/2.0 200"),
        before + 1,
        "retransmitted at T1"
    );
    let ack = format!(
        "ACK sip:b@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnosdpack\r\n\
         From: <sip:+15550111@10.0.0.1>;tag={a_tag}\r\nTo: <sip:+15550100@10.0.0.2>;tag={b_tag}\r\n\
         Call-ID: {call_id}\r\nCSeq: 5 ACK\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{}",
        SDP_A.len(),
        std::str::from_utf8(SDP_A).unwrap()
    );
    let now = net.now;
    net.nodes[1]
        .ua
        .handle_bytes(now, ack.as_bytes(), Peer::udp(addr(1)));
    net.pump();
    assert!(net.events(1).iter().any(|e| matches!(
        e,
        UaEvent::Acked { leg: l, sdp: Some(_) } if *l == b_leg
    )));
    assert!(net.nodes[1].ua.legs[&b_leg].retx.is_none());
    assert_eq!(net.terminated(1, b_leg), None);
}

// ----- reliable provisionals (RFC 3262) and early UPDATE (RFC 3311) -----

fn requiring_100rel(to: u8) -> InviteParams {
    let mut p = params(to);
    p.headers.push(("Require".into(), "100rel".into()));
    p
}

/// Position in the log of the `nth` message from node `i` starting with `prefix`.
fn log_index(net: &Net, i: usize, prefix: &str, nth: usize) -> Option<usize> {
    net.log
        .iter()
        .enumerate()
        .filter(|(_, (n, l))| *n == i && l.starts_with(prefix))
        .nth(nth)
        .map(|(k, _)| k)
}

#[test]
fn a_lost_reliable_183_is_retransmitted_and_the_200_waits_for_its_prack() {
    let mut net = Net::pair(60);
    let leg = net
        .ua(0)
        .invite(Instant::ZERO, requiring_100rel(2))
        .unwrap();
    assert!(net.run_until(at(1), |n| !n.incoming(1).is_empty()));
    let b_leg = net.incoming(1)[0];
    // The first 183 is lost on the way.
    let mut lost = false;
    net.drop = Some(Box::new(move |from, b| {
        let first = from == 1 && first_line(b).starts_with("SIP/2.0 183") && !lost;
        lost |= first;
        first
    }));
    let now = net.now;
    net.ua(1)
        .respond(now, b_leg, 183, Some(SDP_B), &[])
        .unwrap();
    // The application answers at once; the 200 must wait for the PRACK.
    net.ua(1)
        .respond(now, b_leg, 200, Some(SDP_B), &[])
        .unwrap();
    net.pump();
    assert_eq!(net.sent(1, "SIP/2.0 200"), 0, "no 2xx before the PRACK");
    net.run_until(at(5), |n| answered(n.events(0), leg).is_some());
    assert_eq!(net.sent(1, "SIP/2.0 183"), 2, "retransmitted at T1");
    assert_eq!(net.sent(0, "PRACK"), 1);
    assert_eq!(net.sent(1, "SIP/2.0 200"), 2, "200 to PRACK, 200 to INVITE");
    assert!(log_index(&net, 0, "PRACK", 0) < log_index(&net, 1, "SIP/2.0 200", 1));
    assert_eq!(net.nodes[1].ua.stats().retransmitted_1xx, 1);
    let early: Vec<_> = net
        .events(0)
        .iter()
        .filter(|e| {
            matches!(
                e,
                UaEvent::Progress {
                    status: 183,
                    sdp: Some(_),
                    ..
                }
            )
        })
        .collect();
    assert_eq!(
        early.len(),
        1,
        "one progress event despite the retransmission"
    );
    assert_eq!(
        answered(net.events(0), leg),
        Some(Some(Bytes::from_static(SDP_B)))
    );
    // Offer/answer completed in the early dialog on both sides.
    net.run_for(Duration::from_secs(40));
    let now = net.now;
    assert!(net.ua(0).hangup(now, leg).is_ok());
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn a_caller_that_only_supports_100rel_gets_early_media_reliably_and_ringing_not() {
    let mut net = Net::pair(61);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    assert!(net.run_until(at(1), |n| !n.incoming(1).is_empty()));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.ua(1)
        .respond(now, b_leg, 183, Some(SDP_B), &[])
        .unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        net.sent(0, "PRACK"),
        1,
        "only the 183 with SDP was reliable"
    );
    assert!(net.nodes[0].ua.legs[&leg].rel.early_answered);
    assert!(net.nodes[1].ua.legs[&b_leg].rel.early_answered);
    // The callee may now offer again in the early dialog (UPDATE); the
    // caller's answer comes back at once.
    net.nodes[0].auto.offers = true;
    let now = net.now;
    net.ua(1).update(now, b_leg, SDP_B.to_vec()).unwrap();
    net.run_for(Duration::from_secs(1));
    assert!(
        net.events(0)
            .iter()
            .any(|e| matches!(e, UaEvent::Offer { .. }))
    );
    assert!(net.events(1).iter().any(|e| matches!(
        e,
        UaEvent::OfferAnswered {
            status: 200,
            sdp: Some(_),
            ..
        }
    )));
    let now = net.now;
    net.ua(1).respond(now, b_leg, 200, None, &[]).unwrap();
    net.run_for(Duration::from_secs(1));
    // A 2xx without SDP reports the early answer.
    assert_eq!(
        answered(net.events(0), leg),
        Some(Some(Bytes::from_static(SDP_B)))
    );
}

#[test]
fn a_reliable_183_never_pracked_fails_the_invite_with_500_after_64_t1() {
    let mut net = Net::pair(62);
    net.drop = Some(Box::new(|from, b| {
        from == 0 && first_line(b).starts_with("PRACK")
    }));
    let leg = net
        .ua(0)
        .invite(Instant::ZERO, requiring_100rel(2))
        .unwrap();
    assert!(net.run_until(at(1), |n| !n.incoming(1).is_empty()));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_until(at(40), |n| failed(n.events(0), leg).is_some());
    assert_eq!(failed(net.events(0), leg), Some(500));
    assert!(
        net.now >= at(32),
        "gave up after 64*T1, not before: {:?}",
        net.now
    );
    assert_eq!(net.nodes[1].ua.stats().prack_timeouts, 1);
    // T1, 2T1, ... doubling: 6 retransmissions fit in 32 s.
    assert_eq!(net.nodes[1].ua.stats().retransmitted_1xx, 6);
    assert_eq!(net.terminated(1, b_leg), Some(EndReason::Failed(500)));
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn the_uac_pracks_each_rseq_once_in_order_and_drops_the_rest() {
    let mut s = Scripted::new(63);
    let proxy: SocketAddr = "10.0.0.9:5060".parse().unwrap();
    let mut p = params(9);
    p.peer = Peer::udp(proxy);
    let leg = s.ua.invite(Instant::ZERO, p).unwrap();
    let invite = s.sent().remove(0).1;
    assert!(invite.values("Supported").iter().any(|t| t == "100rel"));
    let rel = |rseq: &'static str| [("Require", "100rel"), ("RSeq", rseq)];
    let contact = "<sip:f1@10.0.0.11>";
    s.deliver(reply(&invite, 180, "f1", contact, &rel("5"), b""), proxy);
    let out = s.sent();
    assert_eq!(out.len(), 1);
    let (to, prack) = &out[0];
    assert_eq!(prack.method, Method::PRack);
    assert_eq!(
        to.addr,
        "10.0.0.11:5060".parse().unwrap(),
        "to the early Contact"
    );
    assert_eq!(prack.values("RAck"), vec!["5 1 INVITE".to_string()]);
    assert_eq!(prack.to_tag(), Some("f1"));
    assert_eq!(prack.cseq().unwrap(), (2, "PRACK"));
    // The retransmission and an RSeq that skips one are dropped, not PRACKed.
    s.deliver(reply(&invite, 180, "f1", contact, &rel("5"), b""), proxy);
    s.deliver(reply(&invite, 183, "f1", contact, &rel("7"), SDP_B), proxy);
    assert!(s.sent().is_empty());
    s.deliver(reply(&invite, 183, "f1", contact, &rel("6"), SDP_B), proxy);
    let out = s.sent();
    assert_eq!(out[0].1.values("RAck"), vec!["6 1 INVITE".to_string()]);
    let progress: Vec<u16> = s
        .events
        .iter()
        .filter_map(|e| match e {
            UaEvent::Progress { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![180, 183]);
    // A malformed RSeq makes no reliable response: no PRACK.
    s.deliver(reply(&invite, 183, "f1", contact, &rel("0"), b""), proxy);
    assert!(s.sent().is_empty());
    // The 200 without SDP: the early answer stands.
    s.deliver(reply(&invite, 200, "f1", contact, &[], b""), proxy);
    assert_eq!(
        answered(&s.events, leg),
        Some(Some(Bytes::from_static(SDP_B)))
    );
    let ack = s.sent().remove(0).1;
    assert_eq!(ack.cseq().unwrap(), (1, "ACK"));
}

#[test]
fn prack_without_a_match_gets_481_and_an_early_update_before_the_answer_gets_500() {
    let mut net = Net::pair(64);
    let _leg = net
        .ua(0)
        .invite(Instant::ZERO, requiring_100rel(2))
        .unwrap();
    assert!(net.run_until(at(1), |n| !n.incoming(1).is_empty()));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    // Unreliable 183 impossible (the caller requires 100rel): 180 reliably.
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.sent(0, "PRACK"), 1);
    // A PRACK for an RSeq never sent.
    let a_leg = _leg;
    let now = net.now;
    let rack = [("RAck".to_string(), "99 1 INVITE".to_string())];
    let l = &net.nodes[0].ua.legs[&a_leg];
    let tag = l.early[0].clone();
    net.nodes[0].ua.legs.get_mut(&a_leg).unwrap().remote_tag = Some(tag);
    net.ua(0)
        .in_dialog(now, a_leg, Method::PRack, None, &rack)
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.sent(1, "SIP/2.0 481"), 1);
    // The caller offers in the early dialog although the INVITE's offer has no
    // answer yet (the 180 carried none): 500 with Retry-After (RFC 3311 5.2).
    let now = net.now;
    net.ua(0)
        .in_dialog(
            now,
            a_leg,
            Method::Update,
            Some(("application/sdp", SDP_A)),
            &[],
        )
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.sent(1, "SIP/2.0 500"), 1);
    assert!(
        !net.events(1)
            .iter()
            .any(|e| matches!(e, UaEvent::Offer { .. }))
    );
}

// ----- REFER (RFC 3515, RFC 4488) -----

/// The events of `i` that are REFERs: (refer_to, subscription).
fn refers(net: &Net, i: usize) -> Vec<(String, bool)> {
    net.events(i)
        .iter()
        .filter_map(|e| match e {
            UaEvent::Refer {
                refer_to,
                subscription,
                ..
            } => Some((refer_to.clone(), *subscription)),
            _ => None,
        })
        .collect()
}

#[test]
fn refer_is_accepted_with_202_and_its_progress_notified_as_sipfrag() {
    let mut net = Net::pair(70);
    net.nodes[1].auto.answer = Some(200);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_secs(1));
    let b_leg = net.incoming(1)[0];
    assert!(answered(net.events(0), leg).is_some());
    // The caller (node 0) transfers: REFER to the callee.
    let now = net.now;
    net.ua(0)
        .refer(now, leg, "sip:+15550177@10.0.0.9;user=phone", true)
        .unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        refers(&net, 1),
        vec![("sip:+15550177@10.0.0.9;user=phone".to_string(), true)]
    );
    let now = net.now;
    net.ua(1).answer_refer(now, b_leg, 202).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "SIP/2.0 202"), 1);
    assert_eq!(net.sent(1, "NOTIFY"), 1, "100 Trying at once");
    let now = net.now;
    net.ua(1).notify_refer(now, b_leg, 200, "OK", true).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "NOTIFY"), 2);
    // After the final NOTIFY the subscription is over: no more.
    let now = net.now;
    net.ua(1).notify_refer(now, b_leg, 200, "OK", true).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "NOTIFY"), 2);
    // The referrer saw the 202 and the sipfrag status lines, and answered
    // each NOTIFY 200.
    let seen: Vec<String> = net
        .events(0)
        .iter()
        .filter_map(|e| match e {
            UaEvent::ReferAnswered { status, .. } => Some(format!("answered {status}")),
            UaEvent::ReferProgress { status, last, .. } => Some(format!("{status} {last}")),
            _ => None,
        })
        .collect();
    assert_eq!(seen, ["answered 202", "100 false", "200 true"]);
    assert_eq!(net.sent(0, "SIP/2.0 200"), 2);
    assert_eq!(
        net.terminated(1, b_leg),
        None,
        "a NOTIFY's answer ends nothing"
    );
}

#[test]
fn refer_sub_false_gets_no_notify_and_bad_refers_are_refused() {
    let mut net = Net::pair(71);
    net.nodes[1].auto.answer = Some(200);
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_secs(1));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    let h = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // Two Refer-To: 400 (RFC 3515 2.4.1).
    net.ua(0)
        .in_dialog(
            now,
            leg,
            Method::Refer,
            None,
            &h(&[
                ("Refer-To", "<sip:a@10.0.0.9>"),
                ("Refer-To", "<sip:b@10.0.0.9>"),
            ]),
        )
        .unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "SIP/2.0 400"), 1);
    // Refer-Sub: false (RFC 4488): 202 says so, and no NOTIFY follows.
    let now = net.now;
    net.ua(0)
        .in_dialog(
            now,
            leg,
            Method::Refer,
            None,
            &h(&[("Refer-To", "<tel:+15550177>"), ("Refer-Sub", "false")]),
        )
        .unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(refers(&net, 1), vec![("tel:+15550177".to_string(), false)]);
    // A second REFER while the first waits for its answer: 491.
    let now = net.now;
    net.ua(0)
        .in_dialog(
            now,
            leg,
            Method::Refer,
            None,
            &h(&[("Refer-To", "<tel:+1>")]),
        )
        .unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "SIP/2.0 491"), 1);
    let now = net.now;
    net.ua(1).answer_refer(now, b_leg, 202).unwrap();
    net.ua(1).notify_refer(now, b_leg, 200, "OK", true).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "SIP/2.0 202"), 1);
    assert_eq!(net.sent(1, "NOTIFY"), 0);
    // Refused: 403, and the call is as before.
    let now = net.now;
    net.ua(0)
        .in_dialog(
            now,
            leg,
            Method::Refer,
            None,
            &h(&[("Refer-To", "<tel:+2>")]),
        )
        .unwrap();
    net.run_for(Duration::from_millis(100));
    let now = net.now;
    net.ua(1).answer_refer(now, b_leg, 403).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.sent(1, "SIP/2.0 403"), 1);
    assert_eq!(
        net.ua(1).answer_refer(now, b_leg, 202),
        Err(UaError::WrongState("no REFER to answer"))
    );
    assert_eq!(
        (net.terminated(0, leg), net.terminated(1, b_leg)),
        (None, None)
    );
}

#[test]
fn a_2xx_crossing_a_completed_elsewhere_cancel_gets_a_bye_saying_so() {
    // RFC 3261 9.1: ACK and BYE the 2xx; RFC 3326: the BYE gives the CANCEL's reason.
    let mut net = Net::pair(5);
    let byes = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = byes.clone();
    let mut cancels = 0;
    net.drop = Some(Box::new(move |_, b| {
        let t = String::from_utf8_lossy(b);
        if t.starts_with("BYE") {
            seen.borrow_mut().push(t.to_string());
        }
        // The first CANCEL is lost: the callee answers meanwhile.
        if t.starts_with("CANCEL") {
            cancels += 1;
            return cancels == 1;
        }
        false
    }));
    let leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(50));
    let b_leg = net.incoming(1)[0];
    let now = net.now;
    net.ua(1).respond(now, b_leg, 180, None, &[]).unwrap();
    net.run_for(Duration::from_millis(50));
    let now = net.now;
    net.ua(0).hangup_elsewhere(now, leg).unwrap();
    net.run_for(Duration::from_millis(10));
    let now = net.now;
    net.ua(1)
        .respond(now, b_leg, 200, Some(SDP_B), &[])
        .unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        net.terminated(1, b_leg),
        Some(EndReason::CompletedElsewhere)
    );
    assert_eq!(byes.borrow().len(), 1, "{:?}", byes.borrow());
    assert!(byes.borrow()[0].contains("Reason: SIP ;cause=200 ;"));
    net.run_for(Duration::from_secs(40));
    net.assert_idle();
}

#[test]
fn a_dialog_carried_to_another_node_goes_on_there() {
    // Issue 21: node A answered the carrier and dies; node B adopts A's
    // dialog from its snapshot and re-INVITEs with its own address.
    let mut net = Net::new(vec![ua(1, 5), ua(2, 6), ua(3, 7)], 5);
    net.nodes[1].auto.answer = Some(200);
    net.nodes[0].auto.offers = true;
    let carrier_leg = net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(200));
    let a_leg = net.incoming(1)[0];
    let snap = net.ua(1).snapshot(a_leg).expect("confirmed");
    assert!(snap.uas && snap.is_sane());
    // The record crosses the cluster as JSON.
    let json = serde_json::to_string(&snap).unwrap();
    let snap: super::snapshot::DialogSnapshot = serde_json::from_str(&json).unwrap();
    // A is gone without a word.
    let seen = std::rc::Rc::new(std::cell::RefCell::new(String::new()));
    let b_sent = seen.clone();
    net.drop = Some(Box::new(move |from, b| {
        if from == 2 && b.starts_with(b"INVITE") {
            *b_sent.borrow_mut() = String::from_utf8_lossy(b).into_owned();
        }
        from == 1
    }));
    let b_leg = net.ua(2).adopt(&snap).unwrap();
    assert!(net.ua(2).adopt(&snap).is_err(), "once");
    let now = net.now;
    net.ua(2).reinvite(now, b_leg, SDP_B.to_vec()).unwrap();
    net.run_for(Duration::from_millis(200));
    let reinvite = seen.borrow().clone();
    let cseq = format!("CSeq: {} INVITE", snap.local_cseq + 101);
    assert!(reinvite.contains(&cseq), "{cseq} in {reinvite}");
    assert!(reinvite.contains(&format!("Call-ID: {}", snap.call_id)));
    assert!(reinvite.contains(&format!(";tag={}", snap.local_tag)));
    assert!(
        net.events(2)
            .iter()
            .any(|e| matches!(e, UaEvent::OfferAnswered { leg, status: 200, .. } if *leg == b_leg)),
        "the carrier took B's offer in A's dialog: {:?}",
        net.events(0)
    );
    // B's CSeq jumped past A's; the carrier's BYE now goes to B.
    let now = net.now;
    net.ua(0).hangup(now, carrier_leg).unwrap();
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.terminated(2, b_leg), Some(EndReason::RemoteBye));
    assert_eq!(net.terminated(0, carrier_leg), Some(EndReason::Local));
}

#[test]
fn a_hostile_snapshot_is_refused() {
    let mut net = Net::pair(5);
    net.nodes[1].auto.answer = Some(200);
    net.ua(0).invite(Instant::ZERO, params(2)).unwrap();
    net.run_for(Duration::from_millis(200));
    let a_leg = net.incoming(1)[0];
    let good = net.ua(1).snapshot(a_leg).unwrap();
    let mut bad = Vec::new();
    let mut s = good.clone();
    s.call_id = "x\r\nVia: evil".into();
    bad.push(s);
    let mut s = good.clone();
    s.routes = vec!["<sip:r@192.0.2.1;lr>".into(); 17];
    bad.push(s);
    let mut s = good.clone();
    s.remote_target = "http://evil".into();
    bad.push(s);
    let mut s = good.clone();
    s.peer = "SCTP 192.0.2.1:5060".into();
    bad.push(s);
    let mut s = good.clone();
    s.local_tag.clear();
    bad.push(s);
    let mut s = good;
    s.local_sdp = "v=0\r\n".repeat(2000);
    bad.push(s);
    let mut other = ua(9, 1);
    for s in bad {
        assert!(other.adopt(&s).is_err(), "{s:?}");
    }
}
