//! Transfers through the whole bridge on virtual time: blind (with recall when
//! the target does not answer) and attended (consult, then complete, cancel or
//! merge), and their edges: the target failing or hanging up, the caller or the
//! transferor hanging up mid-way, a second transfer at once. Every party plays
//! its own tone and each listener's audio after each step is checked for who
//! it hears and who it must not.

mod common;

use common::*;
use media_core::analysis::ToneGenerator;
use serde_json::json;
use sip_bridge::sip::dialog::{EndReason, UaEvent};

/// Tones: the carrier's caller, operators alice (transferor) and bob (target).
const CALLER: f64 = 440.0;
const ALICE: f64 = 1000.0;
const BOB: f64 = 1500.0;
/// A phone the carrier's REFER sends the call to.
const PHONE: f64 = 1700.0;
/// The ringback's upper tone (440 + 480 Hz; 440 is the caller's own).
const RINGBACK: f64 = 480.0;

/// A carrier call answered by alice (browser 0, talking); bob (1) is online
/// on another number. Returns the world, the call and the carrier's leg.
fn answered_by_alice() -> (World, String, sip_bridge::sip::dialog::LegId) {
    answered_by_alice_with(config(plan(&[(&["operators"], 20)])))
}

fn answered_by_alice_with(
    cfg: sip_bridge::bridge::BridgeConfig,
) -> (World, String, sip_bridge::sip::dialog::LegId) {
    answered_by_alice_in(cfg, &[("bob", &["sales"])], CALLER, ALICE)
}

/// What the caller and the two browsers heard from these marks on.
struct Marks {
    caller: usize,
    alice: usize,
    bob: usize,
}

fn marks(w: &World, leg: sip_bridge::sip::dialog::LegId) -> Marks {
    Marks {
        caller: w.carrier.media[&leg].heard.len(),
        alice: w.browsers[0].heard.len(),
        bob: w.browsers[1].heard.len(),
    }
}

/// The transfer states alice was told, in order.
fn states(w: &World) -> Vec<String> {
    w.got(0, "transfer")
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect()
}

fn transfer(w: &mut World, call: &str, target: &str, attended: bool) {
    w.send(
        0,
        json!({"type": "transfer", "callId": call, "target": target, "attended": attended, "timeout": 8, "ref": "t"}),
    );
}

/// Bob is offered the call and accepts it, talking.
fn bob_answers(w: &mut World, call: &str) {
    w.run(ms(100));
    let inc = w.got(1, "incoming");
    assert_eq!(inc.last().expect("bob is offered the call")["callId"], call);
    w.accept(1, call);
    w.talk(1, BOB);
    w.run(ms(2500));
}

#[test]
fn blind_transfer_parks_the_transferor_and_completes_when_the_target_answers() {
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", false);
    let m = marks(&w, leg);
    w.run(ms(1500));
    // Ringing: the caller hears ringback, not alice (parked).
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[RINGBACK],
        &[ALICE],
        "the caller while bob rings",
    );
    assert_eq!(states(&w), ["ringing"]);
    assert_eq!(w.got(0, "transfer")[0]["ref"], "t");
    bob_answers(&mut w, &call);
    let inc = w.got(1, "incoming");
    assert_eq!(
        (&inc[0]["invitedBy"], &inc[0]["transfer"]),
        (&json!("alice"), &json!("blind")),
        "bob sees who transfers it"
    );
    assert_eq!(states(&w), ["ringing", "completed"]);
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("transferred"));
    // Call events (webhooks): the transfer's steps, by whom, to what.
    let steps: Vec<(String, String, String)> = w
        .events
        .iter()
        .filter_map(|e| e.transfer.as_ref())
        .map(|t| (t.state.to_string(), t.by.clone(), t.target.clone()))
        .collect();
    let step = |s: &str| {
        (
            s.to_string(),
            "operator:alice".to_string(),
            "operator:bob".to_string(),
        )
    };
    assert_eq!(steps, [step("started"), step("completed")]);
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[BOB],
        &[ALICE, RINGBACK],
        "the caller after the transfer",
    );
    World::assert_hears(
        &w.browsers[1].heard[m.bob..],
        48_000,
        &[CALLER],
        &[ALICE],
        "bob after the transfer",
    );
    // The call goes on without alice; it ends when the caller hangs up.
    assert_eq!(w.bridge.calls(), 1);
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(40_000));
    assert_eq!(w.ended_reason(1, &call).as_deref(), Some("remote_hangup"));
    w.assert_idle();
}

#[test]
fn blind_transfer_to_a_target_that_does_not_answer_recalls_the_transferor() {
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", false);
    w.run(ms(9000)); // bob rings 8 s and is not picked up
    assert_eq!(states(&w), ["ringing", "failed"]);
    let failed = w.got(0, "transfer")[1];
    assert_eq!(failed["reason"], "no_answer");
    assert_eq!(w.ended_reason(1, &call).as_deref(), Some("no_answer"));
    assert_eq!(w.ended_reason(0, &call), None, "alice is still in the call");
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[ALICE],
        &[RINGBACK],
        "the caller, recalled to alice",
    );
    World::assert_hears(
        &w.browsers[0].heard[m.alice..],
        48_000,
        &[CALLER],
        &[],
        "alice, back",
    );
}

#[test]
fn attended_transfer_consults_on_hold_then_completes() {
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    bob_answers(&mut w, &call);
    assert_eq!(w.got(1, "incoming")[0]["transfer"], "attended");
    assert_eq!(states(&w), ["ringing", "consulting"]);
    // Consulting: alice and bob alone; the caller waits on hold.
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.browsers[0].heard[m.alice..],
        48_000,
        &[BOB],
        &[CALLER],
        "alice consulting",
    );
    World::assert_hears(
        &w.browsers[1].heard[m.bob..],
        48_000,
        &[ALICE],
        &[CALLER],
        "bob consulting",
    );
    let caller_heard = &w.carrier.media[&leg].heard[m.caller..];
    assert!(
        World::level(caller_heard, 8000, ALICE) < -45.0
            && World::level(caller_heard, 8000, BOB) < -45.0,
        "the held caller hears neither"
    );
    w.send(0, json!({"type": "transferComplete", "callId": call}));
    w.run(ms(300));
    assert_eq!(states(&w), ["ringing", "consulting", "completed"]);
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("transferred"));
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[BOB],
        &[ALICE],
        "the caller after completion",
    );
    World::assert_hears(
        &w.browsers[1].heard[m.bob..],
        48_000,
        &[CALLER],
        &[ALICE],
        "bob after completion",
    );
}

#[test]
fn attended_transfer_merge_makes_three_and_cancel_brings_the_caller_back() {
    // Merge: everyone hears everyone.
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    bob_answers(&mut w, &call);
    w.send(0, json!({"type": "transferMerge", "callId": call}));
    w.run(ms(300));
    assert_eq!(states(&w), ["ringing", "consulting", "merged"]);
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[ALICE, BOB],
        &[],
        "the caller, merged",
    );
    World::assert_hears(
        &w.browsers[1].heard[m.bob..],
        48_000,
        &[CALLER, ALICE],
        &[],
        "bob, merged",
    );

    // Cancel: bob goes, the caller and alice again.
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    bob_answers(&mut w, &call);
    w.send(0, json!({"type": "transferCancel", "callId": call}));
    w.run(ms(300));
    assert_eq!(states(&w), ["ringing", "consulting", "cancelled"]);
    assert_eq!(w.ended_reason(1, &call).as_deref(), Some("removed"));
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[ALICE],
        &[BOB],
        "the caller after cancel",
    );
    // Complete and merge need an attended transfer whose target answered.
    transfer(&mut w, &call, "operator:bob", true);
    w.run(ms(100));
    w.send(
        0,
        json!({"type": "transferComplete", "callId": call, "ref": "early"}),
    );
    w.run(ms(100));
    let err = w.got(0, "error");
    assert_eq!(err.last().unwrap()["ref"], "early");
    assert!(
        err.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("not answered")
    );
}

#[test]
fn a_second_transfer_at_once_is_refused_and_the_first_goes_on() {
    let (mut w, call, _leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    w.run(ms(100));
    w.send(
        0,
        json!({"type": "transfer", "callId": call, "target": "+15550199", "ref": "second"}),
    );
    w.run(ms(100));
    let err = w.got(0, "error");
    assert_eq!(err.last().unwrap()["ref"], "second");
    assert!(
        err.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("already in progress")
    );
    bob_answers(&mut w, &call);
    assert_eq!(states(&w), ["ringing", "consulting"]);
}

#[test]
fn the_target_hanging_up_during_the_consult_brings_the_caller_back() {
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    bob_answers(&mut w, &call);
    w.send(1, json!({"type": "hangup", "callId": call}));
    w.run(ms(300));
    assert_eq!(states(&w), ["ringing", "consulting", "failed"]);
    assert_eq!(w.got(0, "transfer")[2]["reason"], "target_left");
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[ALICE],
        &[BOB],
        "the caller, back with alice",
    );
}

#[test]
fn the_transferor_hanging_up_completes_the_transfer() {
    // During the consult: the caller and bob go on.
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    bob_answers(&mut w, &call);
    w.send(0, json!({"type": "hangup", "callId": call}));
    w.run(ms(300));
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[BOB],
        &[ALICE],
        "the caller after alice hung up mid-consult",
    );

    // While the target still rings: the call waits for it, and its answer
    // connects the caller.
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    w.run(ms(100));
    w.send(0, json!({"type": "hangup", "callId": call}));
    w.run(ms(300));
    assert_eq!(w.bridge.calls(), 1, "the call waits for the ringing target");
    bob_answers(&mut w, &call);
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[BOB],
        &[ALICE],
        "the caller after bob answered alice's transfer",
    );
}

#[test]
fn the_caller_hanging_up_ends_the_transfer() {
    // During the consult: alice and bob stay together.
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    bob_answers(&mut w, &call);
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    assert_eq!(states(&w), ["ringing", "consulting", "failed"]);
    assert_eq!(w.got(0, "transfer")[2]["reason"], "transferee_left");
    assert_eq!(w.bridge.calls(), 1, "alice and bob talk on");
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.browsers[1].heard[m.bob..],
        48_000,
        &[ALICE],
        &[CALLER],
        "bob with alice",
    );

    // While the target rings: it stops ringing, and the call is over.
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", false);
    w.run(ms(500));
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    assert_eq!(states(&w), ["ringing", "failed"]);
    assert!(w.ended_reason(1, &call).is_some(), "bob stops ringing");
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn completion_racing_the_callers_hangup_leaves_nothing_behind() {
    let (mut w, call, leg) = answered_by_alice();
    transfer(&mut w, &call, "operator:bob", true);
    bob_answers(&mut w, &call);
    // Both at the same instant: the caller's BYE and alice's complete.
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.send(0, json!({"type": "transferComplete", "callId": call}));
    w.run(ms(2000));
    let st = states(&w);
    assert!(
        st.last().is_some_and(|s| s == "completed" || s == "failed"),
        "{st:?}"
    );
    // Whatever won, the call ends cleanly once everyone is gone.
    for i in [0, 1] {
        if w.ended_reason(i, &call).is_none() {
            w.send(i, json!({"type": "hangup", "callId": call}));
        }
    }
    w.run(ms(40_000));
    w.assert_idle();
}

/// What the carrier's UA saw of its REFER on `leg`.
fn refer_seen(w: &World, leg: sip_bridge::sip::dialog::LegId) -> Vec<String> {
    w.carrier_events()
        .iter()
        .filter_map(|e| match e {
            UaEvent::ReferAnswered { leg: l, status } if *l == leg => Some(format!("{status}")),
            UaEvent::ReferProgress {
                leg: l,
                status,
                last,
            } if *l == leg => Some(format!(
                "notify {status}{}",
                if *last { " last" } else { "" }
            )),
            UaEvent::Terminated { leg: l, reason } if *l == leg => Some(format!("{reason:?}")),
            _ => None,
        })
        .collect()
}

#[test]
fn a_refer_from_a_trunk_that_may_transfer_hands_the_operator_to_the_target() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.trunks[0].accept_refer = true;
    let (mut w, call, leg) = answered_by_alice_with(cfg);
    // The carrier's caller transfers alice to a phone number (RFC 5589 blind).
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let now = w.now;
    w.carrier.ua.refer(now, leg, "tel:+15550199", true).unwrap();
    w.run(ms(500));
    let phone = w
        .carrier_incoming()
        .into_iter()
        .map(|(l, _)| l)
        .find(|l| *l != leg)
        .expect("the target is called through the trunk");
    w.carrier.media.get_mut(&phone).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(PHONE, 8000.0)]));
    w.run(ms(500));
    // 202, NOTIFY 100, NOTIFY 200 (terminated), then our BYE to the referrer.
    assert_eq!(
        refer_seen(&w, leg),
        [
            "202",
            "notify 100",
            "notify 200 last",
            &format!("{:?}", EndReason::RemoteBye)
        ]
    );
    let via: Vec<(&str, &str)> = w
        .events
        .iter()
        .filter_map(|e| e.transfer.as_ref())
        .map(|t| (t.state, t.via))
        .collect();
    assert_eq!(via, [("started", "refer"), ("completed", "refer")]);
    assert_eq!(
        w.ended_reason(0, &call),
        None,
        "alice stays, with the phone"
    );
    let m = w.browsers[0].heard.len();
    w.run(ms(2000));
    World::assert_hears(
        &w.browsers[0].heard[m..],
        48_000,
        &[PHONE],
        &[CALLER],
        "alice after the carrier's transfer",
    );
}

#[test]
fn a_refer_from_a_trunk_that_may_not_transfer_gets_403_and_nothing_changes() {
    let (mut w, call, leg) = answered_by_alice();
    let now = w.now;
    w.carrier.ua.refer(now, leg, "tel:+15550199", true).unwrap();
    w.run(ms(500));
    assert_eq!(refer_seen(&w, leg), ["403"]);
    assert!(w.carrier_incoming().is_empty(), "nothing else is called");
    let m = marks(&w, leg);
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[ALICE],
        &[],
        "the caller, still with alice",
    );
    assert_eq!(w.ended_reason(0, &call), None);
}

#[test]
fn a_refer_while_an_operator_transfer_is_in_progress_gets_491() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.trunks[0].accept_refer = true;
    let (mut w, call, leg) = answered_by_alice_with(cfg);
    transfer(&mut w, &call, "operator:bob", true);
    w.run(ms(100));
    let now = w.now;
    w.carrier.ua.refer(now, leg, "tel:+15550199", true).unwrap();
    w.run(ms(500));
    assert_eq!(refer_seen(&w, leg), ["491"]);
    bob_answers(&mut w, &call);
    assert_eq!(
        states(&w),
        ["ringing", "consulting"],
        "the SDK transfer goes on"
    );
}

/// A carrier call answered by alice on a trunk that transfers by REFER
/// (`transfer = "refer"`); alice blind-transfers the caller to a number.
/// Returns the carrier's leg and the REFER it got.
fn refer_out_started(
    bridge_on_failure: bool,
) -> (World, String, sip_bridge::sip::dialog::LegId, String) {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.trunks[0].transfer = sip_bridge::bridge::TransferMode::Refer { bridge_on_failure };
    let (mut w, call, leg) = answered_by_alice_with(cfg);
    transfer(&mut w, &call, "+15550199", false);
    w.run(ms(100));
    let refer_to = w
        .carrier_events()
        .iter()
        .find_map(|e| match e {
            UaEvent::Refer {
                leg: l, refer_to, ..
            } if *l == leg => Some(refer_to.clone()),
            _ => None,
        })
        .expect("the carrier gets a REFER instead of us calling the number");
    assert!(w.carrier_incoming().is_empty(), "nothing called by us");
    (w, call, leg, refer_to)
}

fn transfer_events(w: &World) -> Vec<(String, Option<String>)> {
    w.events
        .iter()
        .filter_map(|e| e.transfer.as_ref())
        .map(|t| (t.state.to_string(), t.reason.clone()))
        .collect()
}

#[test]
fn refer_out_accepted_and_notified_200_we_leave_with_a_bye() {
    let (mut w, call, leg, refer_to) = refer_out_started(false);
    assert_eq!(refer_to, "sip:+15550199@carrier.example");
    let now = w.now;
    w.carrier.ua.answer_refer(now, leg, 202).unwrap();
    w.carrier
        .ua
        .notify_refer(now, leg, 100, "Trying", false)
        .unwrap();
    w.run(ms(300));
    assert_eq!(
        w.ended_reason(0, &call),
        None,
        "not before the final NOTIFY"
    );
    let now = w.now;
    w.carrier
        .ua
        .notify_refer(now, leg, 200, "OK", true)
        .unwrap();
    w.run(ms(300));
    // RFC 5589 6.1: the transferor's BYE follows the NOTIFY of 200.
    assert!(w.carrier_events().iter().any(
        |e| matches!(e, UaEvent::Terminated { leg: l, reason } if *l == leg && *reason == EndReason::RemoteBye)
    ));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("transferred"));
    assert_eq!(
        transfer_events(&w),
        [("started".into(), None), ("completed".into(), None)]
    );
    assert_eq!(w.completed().len(), 1);
    assert!(
        w.carrier_incoming().is_empty(),
        "we never called the number"
    );
    w.run(ms(3000));
    w.assert_idle();
}

#[test]
fn refer_out_refused_with_403_falls_back_to_bridging() {
    let (mut w, call, leg, _) = refer_out_started(false);
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let now = w.now;
    w.carrier.ua.answer_refer(now, leg, 403).unwrap();
    w.run(ms(300));
    let phone = w
        .carrier_incoming()
        .into_iter()
        .map(|(l, _)| l)
        .find(|l| *l != leg)
        .expect("we call the number ourselves");
    w.carrier.media.get_mut(&phone).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(PHONE, 8000.0)]));
    w.run(ms(2000));
    let m = w.carrier.media[&leg].heard.len();
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m..],
        8000,
        &[PHONE],
        &[ALICE],
        "caller bridged to the phone",
    );
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("transferred"));
    let states: Vec<String> = transfer_events(&w).into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["started", "bridging", "completed"]);
}

#[test]
fn refer_out_notified_486_is_reported_and_alice_is_back_or_bridged_when_configured() {
    let (mut w, call, leg, _) = refer_out_started(false);
    let now = w.now;
    w.carrier.ua.answer_refer(now, leg, 202).unwrap();
    w.carrier
        .ua
        .notify_refer(now, leg, 486, "Busy Here", true)
        .unwrap();
    w.run(ms(300));
    assert_eq!(
        transfer_events(&w),
        [
            ("started".into(), None),
            ("failed".into(), Some("busy".into())),
            ("recalled".into(), Some("busy".into()))
        ]
    );
    assert_eq!(states(&w), ["ringing", "failed"]);
    assert_eq!(w.ended_reason(0, &call), None);
    let m = marks(&w, leg);
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[ALICE],
        &[],
        "recalled: alice again",
    );
    assert!(w.carrier_incoming().is_empty());

    // The same with `refer_failure = "bridge"`: we call the number ourselves.
    let (mut w, _, leg, _) = refer_out_started(true);
    let now = w.now;
    w.carrier.ua.answer_refer(now, leg, 202).unwrap();
    w.carrier
        .ua
        .notify_refer(now, leg, 486, "Busy Here", true)
        .unwrap();
    w.run(ms(300));
    assert_eq!(
        w.carrier_incoming().len(),
        1,
        "bridged after the failed NOTIFY"
    );
    let states: Vec<String> = transfer_events(&w).into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["started", "bridging"]);
}

#[test]
fn refer_out_without_any_notify_falls_back_to_bridging_at_the_timeout() {
    let (mut w, _, leg, _) = refer_out_started(false);
    let now = w.now;
    w.carrier.ua.answer_refer(now, leg, 202).unwrap();
    // The transfer's timeout is 8 s (see `transfer`).
    w.run(ms(7500));
    assert!(
        w.carrier_incoming().is_empty(),
        "still waiting for a NOTIFY"
    );
    w.run(ms(1000));
    assert_eq!(
        w.carrier_incoming().len(),
        1,
        "bridged once the wait ran out"
    );
    let ev = transfer_events(&w);
    assert_eq!(ev[1], ("bridging".into(), Some("no_notify".into())));
}

/// The `Replaces` value naming the carrier's dialog `leg` with the SBC, as
/// the SBC sees it (RFC 3891: to-tag is the recipient's own tag).
fn replaces_for(
    w: &World,
    leg: sip_bridge::sip::dialog::LegId,
    extra: &str,
) -> Vec<(String, String)> {
    let info = w.carrier.ua.leg_info(leg).unwrap();
    let value = format!(
        "{};to-tag={};from-tag={}{extra}",
        info.call_id,
        info.remote_tag.unwrap(),
        info.local_tag
    );
    vec![("Replaces".into(), value)]
}

fn final_status(w: &World, leg: sip_bridge::sip::dialog::LegId) -> Option<u16> {
    w.carrier_events().iter().find_map(|e| match e {
        UaEvent::Answered { leg: l, .. } if *l == leg => Some(200),
        UaEvent::Failed { leg: l, status, .. } if *l == leg => Some(*status),
        _ => None,
    })
}

#[test]
fn an_invite_with_replaces_takes_the_place_of_the_callers_dialog() {
    let (mut w, call, leg) = answered_by_alice();
    // The carrier's side hands the call to another phone of its own (an
    // attended transfer done by a PBX): that phone's INVITE replaces the
    // caller's dialog.
    let headers = replaces_for(&w, leg, "");
    let new = w.carrier_call_with("+15550100", PHONE, headers);
    w.run(ms(500));
    assert_eq!(final_status(&w, new), Some(200), "answered at once");
    assert!(w.carrier_events().iter().any(
        |e| matches!(e, UaEvent::Terminated { leg: l, reason } if *l == leg && *reason == EndReason::RemoteBye)
    ), "the replaced dialog gets BYE");
    assert!(w.got(0, "incoming").len() == 1, "nothing rang again");
    let (m_new, m_alice) = (w.carrier.media[&new].heard.len(), w.browsers[0].heard.len());
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&new].heard[m_new..],
        8000,
        &[ALICE],
        &[],
        "the new phone",
    );
    World::assert_hears(
        &w.browsers[0].heard[m_alice..],
        48_000,
        &[PHONE],
        &[CALLER],
        "alice",
    );
    assert_eq!(w.ended_reason(0, &call), None);
    let now = w.now;
    w.carrier.ua.hangup(now, new).unwrap();
    w.run(ms(500));
    let done = w.completed();
    assert_eq!(done.len(), 1, "one call throughout");
    let reasons: Vec<Option<&str>> = done[0].parties.iter().map(|p| p.reason).collect();
    assert_eq!(reasons[0], Some("replaced"));
    assert_eq!(done[0].parties.len(), 3);
    // The new leg's record links to the one it replaced.
    assert_eq!(done[0].parties[2].parent, Some(done[0].parties[0].id));
}

#[test]
fn a_replaces_that_names_no_dialog_is_refused_as_rfc3891_says() {
    let (mut w, _, leg) = answered_by_alice();
    let unknown = vec![(
        "Replaces".to_string(),
        "nope@x;to-tag=1;from-tag=2".to_string(),
    )];
    let a = w.carrier_call_with("+15550100", PHONE, unknown);
    let early_only = replaces_for(&w, leg, ";early-only");
    let b = w.carrier_call_with("+15550100", PHONE, early_only);
    let malformed = vec![("Replaces".to_string(), "nope@x;to-tag=1".to_string())];
    let c = w.carrier_call_with("+15550100", PHONE, malformed);
    w.run(ms(500));
    assert_eq!(
        [
            final_status(&w, a),
            final_status(&w, b),
            final_status(&w, c)
        ],
        [Some(481), Some(486), Some(400)]
    );
    // The call is untouched.
    let m = w.carrier.media[&leg].heard.len();
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m..],
        8000,
        &[ALICE],
        &[],
        "the caller, still with alice",
    );
}

#[test]
fn a_refer_to_with_replaces_is_sent_on_in_our_invite() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.trunks[0].accept_refer = true;
    let (mut w, _, leg) = answered_by_alice_with(cfg);
    w.carrier.auto_answer = Some(vec![(200, true)]);
    let now = w.now;
    w.carrier
        .ua
        .refer(
            now,
            leg,
            "sip:bob@10.0.0.2:5060?Replaces=consult%40pbx%3Bto-tag%3Dab%3Bfrom-tag%3Dcd",
            true,
        )
        .unwrap();
    w.run(ms(500));
    let invite = w
        .carrier
        .events
        .iter()
        .find_map(|e| match e {
            UaEvent::IncomingInvite {
                request, leg: l, ..
            } if *l != leg => Some(request.clone()),
            _ => None,
        })
        .expect("the Refer-To target is called");
    assert_eq!(invite.uri.to_string(), "sip:bob@10.0.0.2:5060");
    use sip_bridge::sip::message::SipHeaders;
    assert_eq!(
        invite.lines("Replaces"),
        ["consult@pbx;to-tag=ab;from-tag=cd"]
    );
    assert_eq!(
        refer_seen(&w, leg)[..3],
        ["202", "notify 100", "notify 200 last"]
    );
}

#[test]
fn a_blind_transfer_whose_target_is_busy_rings_its_fallback_before_any_recall() {
    let (mut w, call, leg) = answered_by_alice();
    w.carrier.auto_answer = Some(vec![(486, false)]);
    w.send(
        0,
        json!({"type": "transfer", "callId": call, "target": "+15550199", "fallback": "operator:bob", "ref": "t"}),
    );
    w.run(ms(300));
    assert_eq!(w.carrier_incoming().len(), 1, "the number was tried");
    bob_answers(&mut w, &call);
    let m = marks(&w, leg);
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[BOB],
        &[ALICE],
        "caller with the fallback",
    );
    let states: Vec<(&str, Option<&str>)> = w
        .events
        .iter()
        .filter_map(|e| e.transfer.as_ref())
        .map(|t| (t.state, t.reason.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            ("started", None),
            ("fallback", Some("busy")),
            ("started", None),
            ("completed", None)
        ]
    );
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("transferred"));
    // Each leg's record names the party it came from: bob, and the number
    // tried first, came from alice (p-1).
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    let parents: Vec<(String, Option<String>)> = w.completed()[0]
        .parties
        .iter()
        .map(|p| (p.who.clone(), p.parent.map(|k| k.to_string())))
        .collect();
    assert_eq!(
        parents,
        [
            ("+15550111".to_string(), None),
            ("operator:alice".to_string(), None),
            ("pstn:+15550199".to_string(), Some("p-1".to_string())),
            ("operator:bob".to_string(), Some("p-1".to_string())),
        ]
    );
}

#[test]
fn a_transfer_asked_to_cancel_on_hangup_is_cancelled_when_the_transferor_hangs_up() {
    let (mut w, call, leg) = answered_by_alice();
    w.send(
        0,
        json!({"type": "transfer", "callId": call, "target": "operator:bob", "attended": true, "onHangup": "cancel", "ref": "t"}),
    );
    bob_answers(&mut w, &call);
    assert_eq!(states(&w), ["ringing", "consulting"]);
    // alice hangs up while consulting: bob is taken out, the caller is
    // alone and the call ends.
    w.send(0, json!({"type": "hangup", "callId": call}));
    w.run(ms(500));
    assert_eq!(w.ended_reason(1, &call).as_deref(), Some("removed"));
    let last = w
        .events
        .iter()
        .rev()
        .find_map(|e| e.transfer.as_ref())
        .unwrap();
    assert_eq!(
        (last.state, last.reason.as_deref()),
        ("cancelled", Some("transferor_left"))
    );
    assert!(
        w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg: l, .. } if *l == leg))
    );
    assert_eq!(w.completed().len(), 1);
}

/// The loudest second of `hz` in 8 kHz `pcm` (the hold chime sounds 0.4 s
/// in every 3).
fn peak_level(pcm: &[i16], hz: f64) -> f64 {
    pcm.chunks(8000)
        .map(|c| World::level(c, 8000, hz))
        .fold(f64::MIN, f64::max)
}

#[test]
fn a_held_caller_hears_hold_music_when_the_call_plays_it_and_silence_otherwise() {
    for music in [true, false] {
        let mut cfg = config(plan(&[(&["operators"], 20)]));
        cfg.hold_music = music;
        let (mut w, call, leg) = answered_by_alice_with(cfg);
        transfer(&mut w, &call, "operator:bob", true);
        bob_answers(&mut w, &call);
        let m = marks(&w, leg);
        w.run(ms(3000));
        let heard = &w.carrier.media[&leg].heard[m.caller..];
        let (a, b) = (peak_level(heard, 620.0), peak_level(heard, 780.0));
        if music {
            assert!(a > -45.0 && b > -45.0, "hold music: {a:.1} / {b:.1} dB");
        } else {
            assert!(a < -60.0 && b < -60.0, "silence: {a:.1} / {b:.1} dB");
        }
        for hz in [ALICE, BOB] {
            assert!(
                World::level(heard, 8000, hz) < -45.0,
                "the consult is private"
            );
        }
        // Back from hold: the music stops, the caller hears the target.
        w.send(0, json!({"type": "transferComplete", "callId": call}));
        w.run(ms(1000));
        let m = marks(&w, leg);
        w.run(ms(3000));
        let heard = &w.carrier.media[&leg].heard[m.caller..];
        assert!(peak_level(heard, 620.0) < -60.0, "no music after");
        World::assert_hears(heard, 8000, &[BOB], &[], "caller with bob");
    }
}

#[test]
fn an_agent_transfer_event_about_a_leg_that_is_no_agent_changes_nothing() {
    // Found by the call fuzzer: such an event about a caller waiting alone
    // once dropped it from the call without its SIP leg or its RTP port.
    // Nobody is online: a number rings (the carrier does not answer it).
    let mut w = World::new(config(plan(&[
        (&["operators"], 20),
        (&["pstn:+15550199"], 20),
    ])));
    let leg = w.carrier_call("+15550100", CALLER);
    w.run(ms(200));
    let id = w.bridge.call_ids()[0];
    assert_eq!(
        w.bridge.parties(id),
        Some(2),
        "the caller waits, the number rings"
    );
    let now = w.now;
    for warm in [false, true] {
        let ev = sip_bridge::bridge::MediaEvent::StreamTransfer {
            leg: sip_bridge::bridge::LegKey(0),
            target: "operators".into(),
            warm,
        };
        w.bridge.handle_media_event(now, id, ev);
    }
    w.pump();
    assert_eq!(w.bridge.parties(id), Some(2), "still there");
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(3000));
    w.assert_idle();
}

/// A carrier call on a trunk that may transfer, routed by an external router
/// (answered here by hand), answered by alice; bob is online.
fn routed_call_answered_by_alice() -> (World, String, sip_bridge::sip::dialog::LegId) {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.trunks[0].accept_refer = true;
    cfg.external_routing = true;
    let mut w = World::new(cfg);
    w.operator("alice", &["support"]);
    w.operator("bob", &["sales"]);
    let leg = w.carrier_call("+15550100", CALLER);
    w.run(ms(50));
    let facts = w.bridge.poll_route_request().expect("the call is routed");
    assert!(!facts.transfer);
    let now = w.now;
    w.bridge.handle_route(
        now,
        facts.call_id,
        sip_bridge::bridge::RouteDecision::Default,
    );
    w.run(ms(200));
    let call = w.last_incoming(0).expect("alice rings");
    w.accept(0, &call);
    w.talk(0, ALICE);
    w.run(ms(1500));
    (w, call, leg)
}

#[test]
fn a_refer_target_goes_through_our_routing_which_may_send_it_elsewhere_or_refuse_it() {
    let (mut w, call, leg) = routed_call_answered_by_alice();
    let now = w.now;
    w.carrier.ua.refer(now, leg, "tel:+15550199", true).unwrap();
    w.run(ms(200));
    let facts = w.bridge.poll_route_request().expect("the router is asked");
    assert!(facts.transfer);
    assert_eq!(facts.to, "tel:+15550199");
    assert!(
        w.carrier_incoming().is_empty(),
        "nothing rings before the answer"
    );
    // The router sends the transfer to bob instead of the number.
    let to_bob =
        sip_bridge::bridge::DialPlan::single(vec!["operator:bob".parse().unwrap()], ms(20_000));
    let now = w.now;
    w.bridge.handle_route(
        now,
        facts.call_id,
        sip_bridge::bridge::RouteDecision::Plan(to_bob),
    );
    w.pump();
    bob_answers(&mut w, &call);
    let m = marks(&w, leg);
    w.run(ms(1500));
    World::assert_hears(
        &w.browsers[1].heard[m.bob..],
        48_000,
        &[ALICE],
        &[],
        "bob with alice",
    );
    // 202, NOTIFYs, and our BYE releasing the referrer.
    assert_eq!(
        refer_seen(&w, leg),
        [
            "202",
            "notify 100",
            "notify 200 last",
            &format!("{:?}", EndReason::RemoteBye)
        ]
    );
    assert!(w.carrier_incoming().is_empty(), "the number never rang");

    // A router that refuses: NOTIFY with its status, the call goes on.
    let (mut w, call, leg) = routed_call_answered_by_alice();
    let now = w.now;
    w.carrier.ua.refer(now, leg, "tel:+15550199", true).unwrap();
    w.run(ms(200));
    let facts = w.bridge.poll_route_request().unwrap();
    let now = w.now;
    w.bridge.handle_route(
        now,
        facts.call_id,
        sip_bridge::bridge::RouteDecision::Reject(486),
    );
    w.run(ms(300));
    assert_eq!(
        refer_seen(&w, leg),
        ["202", "notify 100", "notify 486 last"]
    );
    assert_eq!(w.ended_reason(0, &call), None);
    let m = marks(&w, leg);
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m.caller..],
        8000,
        &[ALICE],
        &[],
        "the caller, still with alice",
    );

    // A router that does not answer: the target as asked, after its 5 s.
    let (mut w, _, leg) = routed_call_answered_by_alice();
    w.carrier.auto_answer = Some(vec![(180, false)]);
    let now = w.now;
    w.carrier.ua.refer(now, leg, "tel:+15550199", true).unwrap();
    w.run(ms(4800));
    assert!(w.carrier_incoming().is_empty());
    w.run(ms(400));
    assert_eq!(
        w.carrier_incoming().len(),
        1,
        "the number rings once the router gave up"
    );
}
