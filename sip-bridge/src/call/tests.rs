//! A call on its own: inputs in, outputs checked, no UA, no media session, no
//! network. Each test is a short table of what happens and what the call asks
//! for.

use std::time::Duration;

use media_core::{Instant, SeededRng};

use super::*;
use crate::config::{BridgeConfig, NumberConfig};
use crate::contract::{Feed, FeedSource, Level, MediaEvent, Tone};
use crate::plan::{DialPlan, Target};
use crate::presence::Presence;
use crate::roles::RoleCapabilities;
use crate::signalling::ClientMessage;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nt=0 0\r\n";

/// What calls share, owned by the test.
struct Fixture {
    cfg: BridgeConfig,
    presence: Presence,
    ports: PortPool,
    rng: SeededRng,
    next_session: u64,
    peers: crate::cluster::Peers,
}

impl Fixture {
    /// Numbers `support` (rings its operators) and `sales`; operators online
    /// on `support`.
    fn new(ops: &[&str]) -> Fixture {
        let number = |id: &str, e164: &str| NumberConfig {
            id: id.into(),
            e164: e164.into(),
            name: id.into(),
            plan: DialPlan::single(vec![Target::Operators], Duration::from_secs(20)),
            capabilities: RoleCapabilities::default(),
            room: false,
        };
        let cfg = BridgeConfig::new(
            vec![number("support", "+15550100"), number("sales", "+15550200")],
            vec![],
            "192.0.2.1".parse().unwrap(),
        );
        let mut f = Fixture {
            cfg,
            presence: Presence::new(Duration::from_secs(30), 100),
            ports: PortPool::new(20000, 20100),
            rng: SeededRng::new(1),
            next_session: 1,
            peers: Default::default(),
        };
        for op in ops {
            f.online(op);
        }
        f
    }

    fn online(&mut self, op: &str) {
        let s = self.next_session;
        self.next_session += 1;
        let nums = vec!["support".to_string(), "sales".to_string()];
        self.presence.connect(s, op, op, &nums).unwrap();
        self.presence.set_available(s, &nums[..1]).unwrap();
    }

    fn ctx(&mut self) -> CallCtx<'_> {
        CallCtx {
            cfg: &self.cfg,
            presence: &self.presence,
            ports: &mut self.ports,
            rng: &mut self.rng,
            local_host: "192.0.2.1",
            live_peer: &[],
            unix_base: 1_795_000_000,
            phones: None,
            peers: &self.peers,
        }
    }

    /// The carrier calls `support` (a late offer), as call `id`.
    fn carrier_calls_support(&mut self, now: Instant, id: u64) -> Call {
        let number = self.cfg.numbers[0].clone();
        let req = late_offer_invite();
        Call::inbound(
            now,
            &mut self.ctx(),
            CallId(id),
            &req,
            [192, 0, 2, 9].into(),
            None,
            &number,
        )
        .expect("taken")
    }

    /// Applies the presence marks a bridge would, and returns every output.
    fn drain(&mut self, call: &mut Call) -> Vec<CallOutput> {
        let out: Vec<CallOutput> = std::iter::from_fn(|| call.poll_output()).collect();
        for o in &out {
            match o {
                CallOutput::Busy { op } => {
                    let _ = self.presence.set_busy(op, call.id());
                }
                CallOutput::Free { op } => self.presence.set_free(op, call.id()),
                _ => {}
            }
        }
        out
    }
}

/// Operator messages among `out`, as `(op, type, json)`.
fn to_ops(out: &[CallOutput]) -> Vec<(String, String, serde_json::Value)> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Operator { op, msg } => {
                let v: serde_json::Value = serde_json::from_str(&msg.to_json()).unwrap();
                Some((op.clone(), v["type"].as_str().unwrap().to_string(), v))
            }
            _ => None,
        })
        .collect()
}

fn hears(out: &[CallOutput]) -> Vec<(LegKey, Vec<Feed>)> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Media(MediaCommand::Hear { listener, feeds }) => {
                Some((*listener, feeds.clone()))
            }
            _ => None,
        })
        .collect()
}

fn accept() -> ClientMessage {
    ClientMessage::Accept {
        call_id: "c-1".into(),
        sdp: SDP.into(),
    }
}

/// `alice` dials `support` (whose plan rings its operators).
fn dial_support(f: &mut Fixture, now: Instant) -> Call {
    let number = f.cfg.numbers[0].clone();
    let plan = number.plan.clone();
    let mut ctx = f.ctx();
    Call::outbound(
        now,
        &mut ctx,
        CallId(1),
        "alice",
        Some("d1".into()),
        &number,
        "support",
        plan,
        SDP.into(),
    )
}

/// The browser's SDP answer for party `k` came back.
fn answer(f: &mut Fixture, call: &mut Call, now: Instant, k: u32) -> Vec<CallOutput> {
    let ev = MediaEvent::WebRtcAnswer {
        leg: LegKey(k),
        sdp: SDP.into(),
    };
    call.handle_media(now, &mut f.ctx(), ev);
    f.drain(call)
}

#[test]
fn two_accepts_in_the_same_tick_have_one_winner() {
    let mut f = Fixture::new(&["alice", "bob", "carol"]);
    let now = Instant::ZERO;
    let mut call = dial_support(&mut f, now);
    let out = f.drain(&mut call);
    let incoming: Vec<String> = to_ops(&out)
        .into_iter()
        .filter(|(_, t, _)| t == "incoming")
        .map(|(op, _, _)| op)
        .collect();
    assert_eq!(incoming, ["bob", "carol"], "the dialler is not rung");
    answer(&mut f, &mut call, now, 0);
    for op in ["bob", "carol"] {
        call.handle_operator(now, &mut f.ctx(), op, None, accept());
    }
    let out = f.drain(&mut call);
    let ops = to_ops(&out);
    let carol_lost = ops
        .iter()
        .find(|(op, t, _)| op == "carol" && t == "ended")
        .expect("carol hears she lost");
    assert_eq!(carol_lost.2["reason"], "taken_by_other");
    assert!(
        ops.iter().any(|(op, t, _)| op == "carol" && t == "error"),
        "her late accept is refused"
    );
    assert!(
        ops.iter()
            .any(|(op, t, _)| op == "alice" && t == "connected")
    );
    assert_eq!(f.presence.active_call("bob"), Some(CallId(1)));
    assert_eq!(f.presence.active_call("carol"), None);
    assert!(call.is_connected() && call.parties() == 2);
}

#[test]
fn ringback_then_each_hears_the_other_once_answered() {
    let mut f = Fixture::new(&["alice", "bob"]);
    let now = Instant::ZERO;
    let mut call = dial_support(&mut f, now);
    let out = f.drain(&mut call);
    assert_eq!(
        hears(&out),
        [(LegKey(0), vec![Feed::tone(Tone::Ringback)])],
        "the dialler hears ringback while bob rings"
    );
    call.handle_operator(now, &mut f.ctx(), "bob", None, accept());
    let out = f.drain(&mut call);
    let mut h = hears(&out);
    h.sort();
    assert_eq!(
        h,
        [
            (LegKey(0), vec![Feed::leg(LegKey(1))]),
            (LegKey(1), vec![Feed::leg(LegKey(0))])
        ]
    );
    let _ = (FeedSource::Leg(LegKey(0)), Level::UNITY);
}

/// `alice` dialled `support`, `bob` accepted: connected, both answers out.
fn connected(f: &mut Fixture, now: Instant) -> Call {
    let mut call = dial_support(f, now);
    answer(f, &mut call, now, 0);
    call.handle_operator(now, &mut f.ctx(), "bob", None, accept());
    answer(f, &mut call, now, 1);
    f.drain(&mut call);
    assert!(call.is_connected());
    call
}

/// What each listener was last told to hear.
fn graph(call: &Call) -> Vec<(LegKey, Vec<Feed>)> {
    call.heard.clone().into_iter().collect()
}

#[test]
fn a_whisper_reaches_only_the_coached_party() {
    let mut f = Fixture::new(&["alice", "bob", "carol"]);
    let now = Instant::ZERO;
    let mut call = connected(&mut f, now);
    call.handle_monitor(
        now,
        &mut f.ctx(),
        "carol",
        Some("m".into()),
        MonitorMode::Whisper,
        SDP.into(),
        Some("p-1"),
    );
    f.drain(&mut call);
    // p-2 was carol's ring from the dial, lost to bob's answer.
    let (alice, bob, carol) = (LegKey(0), LegKey(1), LegKey(3));
    assert_eq!(
        graph(&call),
        [
            (alice, vec![Feed::leg(bob)]),
            (bob, vec![Feed::leg(alice), Feed::leg(carol)]),
            (carol, vec![Feed::leg(alice), Feed::leg(bob)]),
        ]
    );
    // Barge: a full participant, with the agents' capabilities.
    let mode = ClientMessage::MonitorMode {
        call_id: "c-1".into(),
        mode: "barge".into(),
        participant_id: None,
    };
    call.handle_operator(now, &mut f.ctx(), "carol", None, mode);
    let out = f.drain(&mut call);
    assert_eq!(
        graph(&call),
        [
            (alice, vec![Feed::leg(bob), Feed::leg(carol)]),
            (bob, vec![Feed::leg(alice), Feed::leg(carol)]),
            (carol, vec![Feed::leg(alice), Feed::leg(bob)]),
        ]
    );
    let caps = to_ops(&out)
        .into_iter()
        .find(|(op, t, _)| op == "carol" && t == "participants")
        .map(|(_, _, v)| v["capabilities"].as_array().unwrap().len());
    assert_eq!(caps, Some(6));
}

#[test]
fn leaving_a_three_party_call_leaves_the_other_two_talking() {
    let mut f = Fixture::new(&["alice", "bob", "carol"]);
    let now = Instant::ZERO;
    let mut call = connected(&mut f, now);
    let add = ClientMessage::AddParticipant {
        call_id: "c-1".into(),
        target: "operator:carol".into(),
        timeout: None,
    };
    call.handle_operator(now, &mut f.ctx(), "alice", Some("a".into()), add);
    let out = f.drain(&mut call);
    let ringing = to_ops(&out)
        .into_iter()
        .find(|(op, t, _)| op == "alice" && t == "participantUpdated")
        .expect("the asker hears of the ringing party");
    assert_eq!(ringing.2["ref"], "a");
    assert_eq!(ringing.2["participant"]["state"], "ringing");
    // Alice hears ringback under bob while carol rings.
    let cue = graph(&call)[0].1.clone();
    assert_eq!(cue.len(), 2, "{cue:?}");
    assert_eq!(cue[1].from, FeedSource::Tone(Tone::Ringback));
    assert_eq!(cue[1].level, Level::CUE);
    call.handle_operator(now, &mut f.ctx(), "carol", None, accept());
    answer(&mut f, &mut call, now, 3);
    assert_eq!(call.parties(), 3);
    let leave = ClientMessage::Leave {
        call_id: "c-1".into(),
    };
    call.handle_operator(now, &mut f.ctx(), "bob", None, leave);
    let out = f.drain(&mut call);
    assert!(call.is_connected(), "two are left");
    assert_eq!(
        graph(&call),
        [
            (LegKey(0), vec![Feed::leg(LegKey(3))]),
            (LegKey(3), vec![Feed::leg(LegKey(0))]),
        ]
    );
    let left: Vec<_> = to_ops(&out)
        .into_iter()
        .filter(|(_, t, _)| t == "participantLeft")
        .map(|(op, _, v)| (op, v["participantId"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        left,
        [
            ("alice".into(), "p-1".into()),
            ("carol".into(), "p-1".into())
        ]
    );
    assert_eq!(f.presence.active_call("bob"), None, "bob is free");
    // One more leaves: alone, the call ends.
    let leave = ClientMessage::Leave {
        call_id: "c-1".into(),
    };
    call.handle_operator(now, &mut f.ctx(), "carol", None, leave);
    let out = f.drain(&mut call);
    assert!(call.is_ended());
    let alice_end = to_ops(&out)
        .into_iter()
        .find(|(op, t, _)| op == "alice" && t == "ended")
        .unwrap();
    assert_eq!(alice_end.2["reason"], "remote_hangup");
    let done = out
        .iter()
        .find_map(|o| match o {
            CallOutput::Event(e) if e.kind == CallEventKind::Completed => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    let who: Vec<_> = done
        .parties
        .iter()
        .map(|p| (p.who.as_str(), p.reason))
        .collect();
    assert_eq!(
        who,
        [
            ("operator:alice", Some("remote_hangup")),
            ("operator:carol", Some("taken_by_other")), // rung by the plan
            ("operator:bob", Some("hangup")),
            ("operator:carol", Some("hangup")), // added later
        ]
    );
}

#[test]
fn requests_out_of_turn_change_nothing() {
    let mut f = Fixture::new(&["alice", "bob"]);
    let now = Instant::ZERO;
    let mut call = dial_support(&mut f, now);
    f.drain(&mut call);
    // Still ringing: bob cannot end, hold or add; alice cannot add yet.
    for (op, msg) in [
        (
            "bob",
            ClientMessage::End {
                call_id: "c-1".into(),
            },
        ),
        (
            "alice",
            ClientMessage::AddParticipant {
                call_id: "c-1".into(),
                target: "operator:bob".into(),
                timeout: None,
            },
        ),
        (
            "alice",
            ClientMessage::Hold {
                call_id: "c-1".into(),
                on: true,
                participant_id: None,
            },
        ),
    ] {
        call.handle_operator(now, &mut f.ctx(), op, Some("r".into()), msg);
        let out = f.drain(&mut call);
        let ops = to_ops(&out);
        assert_eq!(ops.len(), 1, "{op}: one error and nothing else: {ops:?}");
        assert_eq!(
            (ops[0].1.as_str(), &ops[0].2["ref"]),
            ("error", &serde_json::json!("r"))
        );
    }
    assert_eq!(call.parties(), 2);
    assert!(!call.is_connected() && !call.is_ended());
}

#[test]
fn holding_the_whole_call_holds_everyone_but_the_asker() {
    let mut f = Fixture::new(&["alice", "bob", "dave"]);
    // Dave takes calls on `sales` only: `operators:sales` reaches him.
    f.presence.set_available(3, &["sales".to_string()]).unwrap();
    let now = Instant::ZERO;
    let mut call = connected(&mut f, now);
    let add = ClientMessage::AddParticipant {
        call_id: "c-1".into(),
        target: "operators:sales".into(),
        timeout: None,
    };
    call.handle_operator(now, &mut f.ctx(), "alice", None, add);
    let out = f.drain(&mut call);
    assert!(
        to_ops(&out)
            .iter()
            .any(|(op, t, _)| op == "dave" && t == "incoming"),
        "the sales operators are rung"
    );
    call.handle_operator(now, &mut f.ctx(), "dave", None, accept());
    answer(&mut f, &mut call, now, 2);
    let hold = |on| ClientMessage::Hold {
        call_id: "c-1".into(),
        on,
        participant_id: Some("*".into()),
    };
    call.handle_operator(now, &mut f.ctx(), "alice", Some("h".into()), hold(true));
    let out = f.drain(&mut call);
    let held: Vec<String> = to_ops(&out)
        .into_iter()
        .filter(|(op, t, v)| {
            op == "alice" && t == "participantUpdated" && v["participant"]["held"] == true
        })
        .map(|(_, _, v)| v["participant"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(held, ["p-1", "p-2"]);
    let flags: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            CallOutput::Media(MediaCommand::Hold { leg, on: true }) => Some(*leg),
            _ => None,
        })
        .collect();
    assert_eq!(flags, [LegKey(1), LegKey(2)]);
    call.handle_operator(now, &mut f.ctx(), "alice", None, hold(false));
    f.drain(&mut call);
    assert!(call.parties.values().all(|p| !p.held));
}

/// An INVITE from the carrier to `support`, without SDP (late offer).
fn late_offer_invite() -> crate::sip::message::Request {
    let raw = "INVITE sip:+15550100@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKlate\r\n\
        From: <sip:+15550111@192.0.2.9>;tag=l1\r\nTo: <sip:+15550100@192.0.2.1>\r\nCall-ID: late@192.0.2.9\r\n\
        CSeq: 1 INVITE\r\nContact: <sip:+15550111@192.0.2.9>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    match crate::sip::message::classify(
        raw.as_bytes(),
        crate::sip::message::Transport::Udp,
        &Default::default(),
    ) {
        crate::sip::message::Inbound::Request(r) => *r,
        other => panic!("{other:?}"),
    }
}

fn sip_actions(out: &[CallOutput], leg: LegKey) -> Vec<SipAction> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Sip { leg: l, action } if *l == leg => Some(action.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_late_offer_caller_gets_our_offer_in_the_200_and_its_media_starts_with_the_ack() {
    let caller_answer = "v=0\r\no=c 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    for ack_has_answer in [true, false] {
        let mut f = Fixture::new(&["alice"]);
        let now = Instant::ZERO;
        let mut call = f.carrier_calls_support(now, 1);
        let out = f.drain(&mut call);
        let caller = LegKey(0);
        // Operators ring: a 180 without SDP (an offer cannot go in an unreliable
        // 18x), no media for the caller yet.
        assert_eq!(
            sip_actions(&out, caller),
            vec![SipAction::Respond {
                status: 180,
                sdp: None,
                headers: vec![]
            }]
        );
        let media_for_caller = |out: &[CallOutput]| {
            out.iter().any(|o| {
                matches!(o, CallOutput::Media(MediaCommand::AddRtp { leg, .. }) if *leg == caller)
            })
        };
        assert!(!media_for_caller(&out));
        call.handle_operator(now, &mut f.ctx(), "alice", None, accept());
        let mut out = f.drain(&mut call);
        out.extend(answer(&mut f, &mut call, now, 1));
        let ok = sip_actions(&out, caller);
        let [
            SipAction::Respond {
                status: 200,
                sdp: Some(offer),
                ..
            },
        ] = &ok[..]
        else {
            panic!("{ok:?}");
        };
        assert!(
            offer.contains("m=audio 20000 RTP/AVP ") && offer.contains("a=rtpmap:0 PCMU/8000"),
            "our offer: {offer}"
        );
        assert!(!media_for_caller(&out));
        let sdp = ack_has_answer.then(|| bytes::Bytes::from(caller_answer));
        call.handle_sip(now, &mut f.ctx(), caller, SipLegEvent::Acked { sdp });
        let out = f.drain(&mut call);
        if ack_has_answer {
            assert!(media_for_caller(&out), "{out:?}");
            assert!(call.is_connected());
        } else {
            // No answer, no media: the caller is let go (BYE), ending the call.
            assert_eq!(sip_actions(&out, caller), vec![SipAction::Hangup]);
            assert!(call.is_ended());
        }
    }
}

/// Node `b` of a cluster with `ops` ready on `support`.
fn peer_b(ops: &[&str]) -> crate::cluster::Peers {
    crate::cluster::Peers {
        me: "a".into(),
        nodes: vec![crate::cluster::PeerNode {
            node: "b".into(),
            sip: "127.0.0.12:5070".parse().unwrap(),
            numbers: vec!["support".into()],
            operators: ops.iter().map(|s| s.to_string()).collect(),
            draining: false,
        }],
    }
}

fn invites(out: &[CallOutput]) -> Vec<(LegKey, crate::sip::dialog::InviteParams)> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Sip {
                leg,
                action: SipAction::Invite(p),
            } => Some((*leg, (**p).clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_call_rings_operators_here_and_forks_a_signed_invite_to_a_node_with_more() {
    let mut f = Fixture::new(&["alice"]);
    let key = crate::cluster::PeerKey::derive(b"cluster secret");
    f.cfg.peer_key = Some(key.clone());
    f.peers = peer_b(&["bob"]);
    let now = Instant::ZERO;
    let mut call = f.carrier_calls_support(now, 1);
    let out = f.drain(&mut call);
    assert!(
        to_ops(&out)
            .iter()
            .any(|(op, t, _)| op == "alice" && t == "incoming")
    );
    let inv = invites(&out);
    assert_eq!(inv.len(), 1, "one INVITE, to node b: {inv:?}");
    let (leg, p) = &inv[0];
    assert_eq!(p.request_uri, "sip:support@127.0.0.12:5070;transport=tcp");
    assert_eq!(p.peer.transport, crate::sip::message::Transport::Tcp);
    // The caller's number is shown, as to an operator here.
    assert!(p.from.contains("+15550111"), "{}", p.from);
    let header = p
        .headers
        .iter()
        .find(|(n, _)| n == crate::cluster::PEER_HEADER)
        .map(|(_, v)| v.clone())
        .expect("signed");
    let got = key.verify(&header, 1_795_000_000).expect("verifies");
    assert_eq!(
        (got.node.as_str(), got.number.as_str(), got.ring),
        ("a", "support", crate::cluster::PeerRing::Number)
    );
    assert_eq!(call.parties[leg].role, Role::Agent);
    // Without the key (one node), nothing forks.
    let mut g = Fixture::new(&["alice"]);
    g.peers = peer_b(&["bob"]);
    let mut call = g.carrier_calls_support(now, 2);
    assert!(invites(&g.drain(&mut call)).is_empty());
}

#[test]
fn a_fork_from_another_node_rings_only_operators_here_and_a_lost_race_is_taken_by_other() {
    let mut f = Fixture::new(&["alice"]);
    f.cfg.peer_key = Some(crate::cluster::PeerKey::derive(b"cluster secret"));
    // b is ready too: a fork never hops on.
    f.peers = peer_b(&["bob"]);
    let now = Instant::ZERO;
    let number = f.cfg.numbers[0].clone();
    let peer = crate::cluster::PeerInvite {
        node: "b".into(),
        number: "support".into(),
        ring: crate::cluster::PeerRing::Number,
    };
    for cancelled in [true, false] {
        let mut call = Call::from_peer(
            now,
            &mut f.ctx(),
            CallId(1),
            &late_offer_invite(),
            [127, 0, 0, 12].into(),
            &number,
            &peer,
        )
        .expect("taken");
        let out = f.drain(&mut call);
        assert!(invites(&out).is_empty(), "no second hop: {out:?}");
        assert!(
            to_ops(&out)
                .iter()
                .any(|(op, t, _)| op == "alice" && t == "incoming")
        );
        if !cancelled {
            // Alice answered, but the owner took another answer first: its
            // BYE says so.
            call.handle_operator(now, &mut f.ctx(), "alice", None, accept());
            f.drain(&mut call);
            answer(&mut f, &mut call, now, 1);
        }
        let caller = call.caller();
        call.handle_sip(
            now,
            &mut f.ctx(),
            caller,
            SipLegEvent::Terminated {
                reason: SipEnd::CompletedElsewhere,
            },
        );
        let out = f.drain(&mut call);
        let ended: Vec<_> = to_ops(&out)
            .into_iter()
            .filter(|(op, t, _)| op == "alice" && t == "ended")
            .map(|(_, _, v)| v["reason"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ended, ["taken_by_other"], "cancelled: {cancelled}");
        assert!(call.is_ended());
        assert!(f.presence.is_ready("alice"), "alice is free again");
    }
}
