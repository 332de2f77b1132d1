//! Call progress between SIP peers on virtual time: what a SIP caller is told
//! while `pstn:`/`sip:` targets ring (relayed 180, early media in a 183 with our
//! SDP, one message for all forks) and when our own ringback plays instead
//! (operator steps, `ringback = "local"` on the plan or the caller's trunk).

mod common;

use common::*;
use media_core::analysis::ToneGenerator;
use sip_bridge::bridge::{CallEventKind, Ringback};
use sip_bridge::sip::dialog::{LegId, UaEvent};

/// The provisional responses the caller's leg got: (status, with SDP).
fn caller_progress(w: &World, caller: LegId) -> Vec<(u16, bool)> {
    w.carrier_events()
        .iter()
        .filter_map(|e| match e {
            UaEvent::Progress { leg, status, sdp } if *leg == caller => {
                Some((*status, sdp.is_some()))
            }
            _ => None,
        })
        .collect()
}

fn answered(w: &World, leg: LegId) -> bool {
    w.carrier_events()
        .iter()
        .any(|e| matches!(e, UaEvent::Answered { leg: l, .. } if *l == leg))
}

fn ringing_events(w: &World) -> usize {
    w.events
        .iter()
        .filter(|e| e.kind == CallEventKind::Ringing)
        .count()
}

#[test]
fn forks_180s_reach_the_caller_as_one_180_and_nothing_comes_before() {
    let mut w = World::new(config(plan(&[(&["pstn:+15550111", "pstn:+15550112"], 20)])));
    w.carrier.auto_answer = Some(vec![]); // the targets say nothing yet
    let caller = w.carrier_call("+15550100", 1000.0);
    w.run(ms(300));
    let forks = w.carrier_incoming();
    assert_eq!(forks.len(), 2, "both targets ring");
    assert_eq!(
        caller_progress(&w, caller),
        vec![],
        "no 183 or ringback of ours before a target reports progress"
    );
    assert_eq!(ringing_events(&w), 0);

    for (leg, _) in &forks {
        let now = w.now;
        w.carrier.ua.respond(now, *leg, 180, None, &[]).unwrap();
        w.run(ms(100));
    }
    assert_eq!(
        caller_progress(&w, caller),
        vec![(180, false)],
        "one 180 for both forks"
    );
    assert_eq!(ringing_events(&w), 1);

    // The second fork answers: the caller is connected to it, the first is cancelled.
    let (winner, offer) = forks[1].clone();
    let answer = w.carrier.answer_for(winner, &offer);
    w.carrier.media.get_mut(&winner).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(600.0, 6000.0)]));
    let now = w.now;
    w.carrier
        .ua
        .respond(now, winner, 200, Some(answer.as_bytes()), &[])
        .unwrap();
    w.run(ms(2000));
    assert!(answered(&w, caller));
    World::assert_tone(
        &w.carrier.media[&caller].heard,
        8000,
        600.0,
        "the caller hears the fork that answered",
    );
    assert_eq!(caller_progress(&w, caller), vec![(180, false)]);
}

#[test]
fn early_media_of_a_sip_target_reaches_the_caller_in_a_183_with_our_sdp() {
    let mut w = World::new(config(plan(&[(&["pstn:+15550111"], 20)])));
    w.carrier.auto_answer = Some(vec![(180, false)]);
    let caller = w.carrier_call("+15550100", 1000.0);
    w.run(ms(300));
    assert_eq!(caller_progress(&w, caller), vec![(180, false)]);
    let (target, offer) = w.carrier_incoming()[0].clone();

    // The target's announcement, before any answer.
    let answer = w.carrier.answer_for(target, &offer);
    w.carrier.media.get_mut(&target).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(600.0, 6000.0)]));
    let now = w.now;
    w.carrier
        .ua
        .respond(now, target, 183, Some(answer.as_bytes()), &[])
        .unwrap();
    w.run(ms(2000));
    assert_eq!(
        caller_progress(&w, caller),
        vec![(180, false), (183, true)],
        "the early media comes in a 183 with our SDP"
    );
    assert!(!answered(&w, caller));
    World::assert_tone(
        &w.carrier.media[&caller].heard,
        8000,
        600.0,
        "the caller hears the target's early media, not a ringback of ours",
    );
    World::assert_tone(
        &w.carrier.media[&target].heard,
        8000,
        1000.0,
        "and the target hears the caller",
    );
    // A repeated 183 changes nothing for the caller.
    let now = w.now;
    w.carrier
        .ua
        .respond(now, target, 183, Some(answer.as_bytes()), &[])
        .unwrap();
    w.run(ms(200));
    assert_eq!(caller_progress(&w, caller).len(), 2);
    assert_eq!(ringing_events(&w), 1);
}

#[test]
fn local_ringback_plays_at_once_when_the_plan_or_the_trunk_asks() {
    for via_trunk in [false, true] {
        let mut p = plan(&[(&["pstn:+15550111"], 20)]);
        let cfg = if via_trunk {
            let mut c = config(p);
            c.trunks[0].ringback = Some(Ringback::Local);
            c
        } else {
            p.ringback = Some(Ringback::Local);
            config(p)
        };
        let mut w = World::new(cfg);
        w.carrier.auto_answer = Some(vec![]);
        let caller = w.carrier_call("+15550100", 1000.0);
        w.run(ms(300));
        assert_eq!(
            caller_progress(&w, caller),
            vec![(183, true)],
            "ours at once (trunk: {via_trunk})"
        );
        // The target's own 180 adds nothing: the caller hears our ringback already.
        let (target, _) = w.carrier_incoming()[0].clone();
        let now = w.now;
        w.carrier.ua.respond(now, target, 180, None, &[]).unwrap();
        w.run(ms(1500));
        assert_eq!(caller_progress(&w, caller), vec![(183, true)]);
        let heard = &w.carrier.media[&caller].heard;
        assert!(
            heard.iter().any(|&s| s.unsigned_abs() > 1000),
            "the caller hears our ringback (trunk: {via_trunk})"
        );
    }
    // The plan wins over the trunk.
    let mut p = plan(&[(&["pstn:+15550111"], 20)]);
    p.ringback = Some(Ringback::Relay);
    let mut cfg = config(p);
    cfg.trunks[0].ringback = Some(Ringback::Local);
    let mut w = World::new(cfg);
    w.carrier.auto_answer = Some(vec![]);
    let caller = w.carrier_call("+15550100", 1000.0);
    w.run(ms(300));
    assert_eq!(caller_progress(&w, caller), vec![]);
}

#[test]
fn a_step_of_operators_plays_our_ringback_and_a_later_sip_step_keeps_it() {
    let mut w = World::new(config(plan(&[
        (&["operators"], 5),
        (&["pstn:+15550111"], 20),
    ])));
    let a = w.operator("alice", &["support"]);
    w.carrier.auto_answer = Some(vec![(180, false)]);
    let caller = w.carrier_call("+15550100", 1000.0);
    w.run(ms(300));
    assert!(w.last_incoming(a).is_some());
    assert_eq!(
        caller_progress(&w, caller),
        vec![(183, true)],
        "operators report no progress of their own: ours"
    );
    // Nobody takes it: the phone number rings, its 180 is not passed on after
    // our 183 (the caller keeps hearing our ringback).
    w.run(ms(6000));
    assert_eq!(w.carrier_incoming().len(), 1);
    assert_eq!(caller_progress(&w, caller), vec![(183, true)]);
    assert_eq!(ringing_events(&w), 1);
}
