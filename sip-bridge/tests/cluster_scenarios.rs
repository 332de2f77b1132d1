//! One node of a cluster through the whole bridge on virtual time: what it
//! records for survivors while a call from the proxy rings (a 503 ready to
//! send, gone once the call is answered or over), the forks other nodes send
//! it (signed, from a node's address, or 403), and what becomes of a fork
//! whose owner died.

mod common;

use common::*;
use sip_bridge::bridge::BridgeConfig;
use sip_bridge::cluster::{ClusterOut, PEER_HEADER, PeerKey, PeerNode, PeerRing, Peers};
use sip_bridge::sip::dialog::{EndReason, UaEvent};
use sip_bridge::sip::message::Transport;

const SECRET: &[u8] = b"the cluster's token secret, 32 bytes+";

fn cluster_config() -> BridgeConfig {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.peer_key = Some(PeerKey::derive(SECRET));
    cfg
}

fn outs(w: &mut World) -> Vec<ClusterOut> {
    std::iter::from_fn(|| w.bridge.poll_cluster_out()).collect()
}

/// The carrier's address is node `b`'s in this world.
fn carrier_is_node_b(w: &mut World) {
    w.bridge.set_peers(Peers {
        me: "a".into(),
        nodes: vec![PeerNode {
            node: "b".into(),
            sip: addr(CARRIER_SIP),
            numbers: vec![],
            operators: vec![],
            draining: false,
        }],
    });
}

fn final_status(w: &World, leg: sip_bridge::sip::dialog::LegId) -> Option<u16> {
    w.carrier_events().iter().find_map(|e| match e {
        UaEvent::Terminated {
            leg: l,
            reason: EndReason::Failed(code),
        } if *l == leg => Some(*code),
        _ => None,
    })
}

#[test]
fn a_ringing_call_leaves_a_503_for_survivors_until_it_is_answered_or_over() {
    for answered in [true, false] {
        let mut w = World::new(cluster_config());
        w.operator("alice", &["support"]);
        let leg = w.carrier_call("+15550100", 440.0);
        w.run(ms(200));
        let rec = outs(&mut w);
        let [ClusterOut::Ringing { id, to, response }] = &rec[..] else {
            panic!("{rec:?}");
        };
        // To the INVITE's previous hop, as its Via says.
        assert_eq!((to.transport, to.addr), (Transport::Udp, addr(CARRIER_SIP)));
        let text = String::from_utf8_lossy(response);
        assert!(text.starts_with("SIP/2.0 503 "), "{text}");
        for h in [
            "Via: ",
            "Call-ID: ",
            "CSeq: 1 INVITE",
            "Retry-After: 0",
            ";tag=",
        ] {
            assert!(text.contains(h), "no {h} in {text}");
        }
        let call = w.last_incoming(0).expect("alice rings");
        if answered {
            w.accept(0, &call);
        } else {
            let now = w.now;
            w.carrier.ua.hangup(now, leg).unwrap();
        }
        w.run(ms(500));
        assert_eq!(outs(&mut w), [ClusterOut::Settled { id: id.clone() }]);
    }
    // One node: nothing recorded.
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    w.operator("alice", &["support"]);
    w.carrier_call("+15550100", 440.0);
    w.run(ms(200));
    assert!(outs(&mut w).is_empty());
}

#[test]
fn forks_from_other_nodes_are_taken_only_signed_and_from_a_node() {
    let key = PeerKey::derive(SECRET);
    let header = |node: &str, unix: u64| {
        vec![(
            PEER_HEADER.to_string(),
            key.sign(node, unix, "support", &PeerRing::Number),
        )]
    };
    // Signed, but the carrier's address is no node's (yet).
    let mut w = World::new(cluster_config());
    w.operator("alice", &["support"]);
    let leg = w.carrier_call_with("+15550100", 440.0, header("b", UNIX));
    w.run(ms(300));
    assert_eq!(final_status(&w, leg), Some(403));
    // From node b, but signed with another key, or stale.
    carrier_is_node_b(&mut w);
    let other = PeerKey::derive(b"another cluster's secret............");
    let forged = vec![(
        PEER_HEADER.to_string(),
        other.sign("b", UNIX, "support", &PeerRing::Number),
    )];
    let leg = w.carrier_call_with("+15550100", 440.0, forged);
    w.run(ms(300));
    assert_eq!(final_status(&w, leg), Some(403));
    let leg = w.carrier_call_with("+15550100", 440.0, header("b", UNIX - 600));
    w.run(ms(300));
    assert_eq!(final_status(&w, leg), Some(403));
    assert_eq!(w.bridge.stats().peer_refused, 3);
    assert!(w.last_incoming(0).is_none(), "alice never rang");

    // Signed and from b: alice rings; b dies before anyone answers: the fork
    // ends and alice is free for the next call.
    let leg = w.carrier_call_with("+15550100", 440.0, header("b", UNIX));
    w.run(ms(300));
    assert!(w.last_incoming(0).is_some(), "alice rings for b's call");
    assert_eq!(w.bridge.stats().peer_calls, 1);
    // A fork records nothing: its owner does.
    assert!(outs(&mut w).is_empty());
    let now = w.now;
    w.bridge.node_lost(now, "b");
    w.run(ms(300));
    assert_eq!(w.bridge.stats().peer_calls_orphaned, 1);
    let ended = w.got(0, "ended");
    assert_eq!(ended.len(), 1, "alice hears the call is gone");
    assert!(w.bridge.presence().is_ready("alice"));
    assert!(
        final_status(&w, leg).is_some(),
        "b's INVITE got a final answer"
    );
    assert_eq!(w.bridge.calls(), 0);
}

#[test]
fn a_call_answered_on_another_node_leaves_an_anchor_of_its_callers_dialog() {
    for b_dies in [false, true] {
        anchored_call(b_dies);
    }
}

/// This node (a) owns the call; the carrier's UA also plays node b, whose
/// operator answers the fork. Then the caller hangs up, or b dies.
fn anchored_call(b_dies: bool) {
    let mut w = World::new(cluster_config());
    w.bridge.set_peers(Peers {
        me: "a".into(),
        nodes: vec![PeerNode {
            node: "b".into(),
            sip: addr(CARRIER_SIP),
            numbers: vec!["support".into()],
            operators: vec!["bob".into()],
            draining: false,
        }],
    });
    let caller = w.carrier_call("+15550100", 440.0);
    w.run(ms(200));
    let fork = w.carrier_incoming();
    assert_eq!(fork.len(), 1, "b is rung");
    let (fork_leg, offer) = fork[0].clone();
    let answer = w.carrier.answer_for(fork_leg, &offer);
    let now = w.now;
    w.carrier
        .ua
        .respond(now, fork_leg, 200, Some(answer.as_bytes()), &[])
        .unwrap();
    w.run(ms(500));
    let fork_call_id = w.carrier.ua.leg_info(fork_leg).unwrap().call_id;
    let caller_call_id = w.carrier.ua.leg_info(caller).unwrap().call_id;
    let anchors: Vec<_> = outs(&mut w)
        .into_iter()
        .filter_map(|o| match o {
            ClusterOut::Anchor {
                node,
                key,
                snapshot,
            } => Some((node, key, snapshot)),
            _ => None,
        })
        .collect();
    let [(node, key, snap)] = &anchors[..] else {
        panic!("{anchors:?}");
    };
    assert_eq!((node.as_str(), key), ("b", &fork_call_id));
    // The caller's dialog, from our side: we answered it.
    assert!(snap.uas && snap.is_sane());
    assert_eq!(snap.call_id, caller_call_id);
    assert!(snap.local_sdp.contains("m=audio "), "{}", snap.local_sdp);
    let now = w.now;
    if b_dies {
        // The operator's node is gone: its party leaves as node_failure and
        // the caller, alone, gets a BYE at once (not at the media timeout).
        w.bridge.node_lost(now, "b");
        w.run(ms(500));
        let bye = w.carrier_events().iter().any(|e| {
            matches!(e, UaEvent::Terminated { leg, reason: EndReason::RemoteBye } if *leg == caller)
        });
        assert!(bye, "the caller got a BYE");
        let left = w
            .events
            .iter()
            .find_map(|e| e.parties.iter().find(|p| p.reason == Some("node_failure")));
        assert!(left.is_some(), "{:?}", w.events.last());
    } else {
        // The caller hangs up.
        w.carrier.ua.hangup(now, caller).unwrap();
        w.run(ms(500));
    }
    // Either way the anchor goes.
    assert!(outs(&mut w).contains(&ClusterOut::Unanchor {
        node: "b".into(),
        key: fork_call_id
    }));
    assert_eq!(w.bridge.calls(), 0);
}

#[test]
fn when_the_owner_dies_a_call_answered_here_asks_for_its_anchor_and_without_one_ends() {
    let key = PeerKey::derive(SECRET);
    let mut w = World::new(cluster_config());
    w.operator("alice", &["support"]);
    carrier_is_node_b(&mut w);
    let signed = vec![(
        PEER_HEADER.to_string(),
        key.sign("b", UNIX, "support", &PeerRing::Number),
    )];
    let leg = w.carrier_call_with("+15550100", 440.0, signed);
    w.run(ms(300));
    let call = w.last_incoming(0).expect("alice rings");
    w.accept(0, &call);
    w.run(ms(1500));
    assert_eq!(w.got(0, "connected").len(), 1);
    outs(&mut w);
    let now = w.now;
    w.bridge.node_lost(now, "b");
    let asks = outs(&mut w);
    let [
        ClusterOut::Reanchor {
            call: id,
            owner,
            key,
        },
    ] = &asks[..]
    else {
        panic!("{asks:?}");
    };
    assert_eq!(owner, "b");
    assert_eq!(*key, w.carrier.ua.leg_info(leg).unwrap().call_id);
    // Still connected while the anchor is looked up.
    assert!(w.got(0, "ended").is_empty());
    // No anchor (the owner never wrote one, or Redis did not answer).
    let now = w.now;
    w.bridge.handle_reanchor(now, *id, None);
    w.run(ms(300));
    assert_eq!(w.bridge.stats().calls_lost, 1);
    assert_eq!(w.got(0, "ended").len(), 1);
    assert_eq!(w.bridge.calls(), 0);
}
