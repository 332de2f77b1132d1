//! The REST call control through the whole bridge on virtual time: what a
//! key may see, hold/mute/DTMF/remove on a live call, transfers and monitors
//! started by the API, and calls it places (click-to-call) with every way
//! the first party may not answer. Every party plays its own tone; who hears
//! whom after each step is checked.

mod common;

use common::*;
use media_core::analysis::ToneGenerator;
use sip_bridge::bridge::{
    ApiErrorCode, ApiReply, ApiRequest, CallEventKind, DialStatus, MonitorMode, Originate,
    PartyUpdate, StatusCallback, TransferStep,
};
use sip_bridge::sip::dialog::UaEvent;

const CALLER: f64 = 440.0;
const ALICE: f64 = 1000.0;
const BOB: f64 = 1500.0;
const PHONE: f64 = 1700.0;

/// A carrier call on `support` answered by alice (browser 0, talking); bob
/// (1) is online on `sales`.
fn answered_by_alice() -> (World, String, sip_bridge::sip::dialog::LegId) {
    let cfg = config(plan(&[(&["operators"], 20)]));
    answered_by_alice_in(cfg, &[("bob", &["sales"])], CALLER, ALICE)
}

/// `pcm` (maybe nothing at all: a held leg is sent nothing) has none of `not`.
fn assert_silent(pcm: &[i16], rate: u32, not: &[f64], what: &str) {
    for hz in not {
        let l = World::level(pcm, rate, *hz);
        assert!(l < -45.0, "{what}: {hz} Hz at {l:.1} dB");
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, sip_bridge::bridge::ApiError>) -> ApiErrorCode {
    r.expect_err("refused").code
}

#[test]
fn a_key_sees_only_the_calls_of_its_numbers() {
    let (mut w, call, _) = answered_by_alice();
    let sales_only = w.api(&["sales"], ApiRequest::ListCalls).unwrap();
    assert_eq!(sales_only, ApiReply::Calls(Vec::new()));
    let r = w.api(&["sales"], ApiRequest::GetCall { call: call.clone() });
    assert_eq!(code(r), ApiErrorCode::NotFound);
    // Nor may it act on it: the same 404, and nothing changes.
    let r = w.api(&["sales"], ApiRequest::Hangup { call: call.clone() });
    assert_eq!(code(r), ApiErrorCode::NotFound);
    let Ok(ApiReply::Calls(calls)) = w.api(&["support"], ApiRequest::ListCalls) else {
        panic!()
    };
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].call_id, call);
    assert_eq!(calls[0].state, "connected");
    let roles: Vec<&str> = calls[0].participants.iter().map(|p| p.role).collect();
    assert_eq!(roles, ["customer", "agent"]);
    for bad in ["c-999", "nonsense", ""] {
        let r = w.api(&[], ApiRequest::GetCall { call: bad.into() });
        assert_eq!(code(r), ApiErrorCode::NotFound, "{bad}");
    }
}

#[test]
fn hold_mute_dtmf_and_remove_from_the_api() {
    let (mut w, call, leg) = answered_by_alice();
    let caller = pid(&mut w, &call, "customer");
    let alice = pid(&mut w, &call, "agent");

    // Hold the caller: neither hears the other.
    let hold = PartyUpdate::new(Some(true), None, None);
    let r = w.api(
        &["support"],
        ApiRequest::UpdateParticipant {
            call: call.clone(),
            participant: caller.clone(),
            update: hold,
        },
    );
    let Ok(ApiReply::Parties { ids, call: Some(c) }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(ids, std::slice::from_ref(&caller));
    assert!(c.participants.iter().any(|p| p.id == caller && p.held));
    w.run(ms(500));
    let (m_caller, m_alice) = (w.carrier.media[&leg].heard.len(), w.browsers[0].heard.len());
    w.run(ms(1500));
    assert_silent(
        &w.carrier.media[&leg].heard[m_caller..],
        8000,
        &[ALICE],
        "held caller",
    );
    assert_silent(
        &w.browsers[0].heard[m_alice..],
        48_000,
        &[CALLER],
        "alice, caller held",
    );
    // alice's browser was told.
    assert!(
        w.got(0, "participantUpdated")
            .iter()
            .any(|m| m["participant"]["id"] == caller.as_str() && m["participant"]["held"] == true)
    );

    // Unhold; mute alice: the caller hears nothing of her, she hears him.
    let unhold = PartyUpdate::new(Some(false), None, None);
    let update = ApiRequest::UpdateParticipant {
        call: call.clone(),
        participant: caller.clone(),
        update: unhold,
    };
    w.api(&[], update).unwrap();
    let mute = PartyUpdate::new(None, Some(true), None);
    let update = ApiRequest::UpdateParticipant {
        call: call.clone(),
        participant: alice.clone(),
        update: mute,
    };
    w.api(&[], update).unwrap();
    w.run(ms(500));
    let (m_caller, m_alice) = (w.carrier.media[&leg].heard.len(), w.browsers[0].heard.len());
    w.run(ms(1500));
    assert_silent(
        &w.carrier.media[&leg].heard[m_caller..],
        8000,
        &[ALICE],
        "alice muted",
    );
    World::assert_hears(
        &w.browsers[0].heard[m_alice..],
        48_000,
        &[CALLER],
        &[],
        "alice hears the caller",
    );

    // DTMF goes to the phones of the call (the caller) by default.
    let dtmf = ApiRequest::Dtmf {
        call: call.clone(),
        digits: "12#".into(),
        participant: None,
    };
    let Ok(ApiReply::Parties { ids, .. }) = w.api(&[], dtmf) else {
        panic!()
    };
    assert_eq!(ids, std::slice::from_ref(&caller));
    let bad = ApiRequest::Dtmf {
        call: call.clone(),
        digits: "12x".into(),
        participant: None,
    };
    assert_eq!(code(w.api(&[], bad)), ApiErrorCode::BadRequest);
    // A mode is for supervisors only; an unknown party is 404.
    let barge = PartyUpdate::new(None, None, Some(MonitorMode::Barge));
    let r = w.api(
        &[],
        ApiRequest::UpdateParticipant {
            call: call.clone(),
            participant: alice.clone(),
            update: barge,
        },
    );
    assert_eq!(code(r), ApiErrorCode::BadRequest);
    let r = w.api(
        &[],
        ApiRequest::RemoveParticipant {
            call: call.clone(),
            participant: "p-77".into(),
        },
    );
    assert_eq!(code(r), ApiErrorCode::NotFound);

    // Removing alice leaves the caller alone: the call ends.
    let r = w.api(
        &[],
        ApiRequest::RemoveParticipant {
            call: call.clone(),
            participant: alice,
        },
    );
    assert_eq!(r, Ok(ApiReply::Done));
    w.run(ms(500));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("removed"));
    assert!(
        w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg: l, .. } if *l == leg))
    );
    w.run(ms(3000));
    w.assert_idle();
}

#[test]
fn the_api_blind_transfers_the_caller_from_alice_to_bob() {
    let (mut w, call, leg) = answered_by_alice();
    let transfer = |attended| ApiRequest::Transfer {
        call: call.clone(),
        target: "operator:bob".into(),
        attended,
        timeout: Some(10),
        by: None,
        cancel_on_hangup: false,
        fallback: None,
    };
    // The call's one agent is the transferor.
    let Ok(ApiReply::Parties { ids, .. }) = w.api(&["support"], transfer(false)) else {
        panic!()
    };
    assert_eq!(ids, [pid(&mut w, &call, "agent")]);
    // A second transfer at once is refused, clearly.
    let r = w.api(&["support"], transfer(true));
    assert_eq!(code(r), ApiErrorCode::Conflict);
    w.run(ms(100));
    assert_eq!(w.last_incoming(1).as_deref(), Some(call.as_str()));
    w.accept(1, &call);
    w.talk(1, BOB);
    w.run(ms(2500));
    let m = w.carrier.media[&leg].heard.len();
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m..],
        8000,
        &[BOB],
        &[ALICE],
        "caller after the transfer",
    );
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("transferred"));
    let reports: Vec<(&str, &str)> = w
        .events
        .iter()
        .filter_map(|e| e.transfer.as_ref())
        .map(|t| (t.state, t.via))
        .collect();
    assert_eq!(reports, [("started", "api"), ("completed", "api")]);
    // alice heard how it went, as for her own transfer.
    let states: Vec<&str> = w
        .got(0, "transfer")
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ringing", "completed"]);
}

#[test]
fn the_api_runs_an_attended_transfer_and_completes_it() {
    let (mut w, call, leg) = answered_by_alice();
    let step = |s| ApiRequest::TransferStep {
        call: call.clone(),
        step: s,
    };
    assert_eq!(
        code(w.api(&[], step(TransferStep::Complete))),
        ApiErrorCode::Conflict
    );
    let transfer = ApiRequest::Transfer {
        call: call.clone(),
        target: "operator:bob".into(),
        attended: true,
        timeout: None,
        by: Some(pid(&mut w, &call, "agent")),
        cancel_on_hangup: false,
        fallback: None,
    };
    w.api(&[], transfer).unwrap();
    // Not answered yet: nothing to complete.
    assert_eq!(
        code(w.api(&[], step(TransferStep::Complete))),
        ApiErrorCode::Conflict
    );
    w.run(ms(100));
    w.accept(1, &call);
    w.talk(1, BOB);
    w.run(ms(2500));
    // Consulting: the caller is held, alice and bob talk.
    let (m_caller, m_bob) = (w.carrier.media[&leg].heard.len(), w.browsers[1].heard.len());
    w.run(ms(1500));
    assert_silent(
        &w.carrier.media[&leg].heard[m_caller..],
        8000,
        &[ALICE, BOB],
        "held caller",
    );
    World::assert_hears(
        &w.browsers[1].heard[m_bob..],
        48_000,
        &[ALICE],
        &[CALLER],
        "bob consulting",
    );
    let Ok(ApiReply::Call(c)) = w.api(&[], step(TransferStep::Complete)) else {
        panic!()
    };
    assert!(
        c.participants
            .iter()
            .all(|p| p.role != "agent" || p.operator_ref.as_deref() == Some("bob"))
    );
    w.run(ms(500));
    let m = w.carrier.media[&leg].heard.len();
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m..],
        8000,
        &[BOB],
        &[ALICE],
        "caller with bob",
    );
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("transferred"));
}

#[test]
fn the_api_starts_a_monitor_that_listens_then_barges() {
    let (mut w, call, leg) = answered_by_alice();
    w.connect(1, &["support"]);
    let monitor = ApiRequest::Monitor {
        call: call.clone(),
        target: "operator:bob".into(),
        mode: MonitorMode::Listen,
        coached: None,
        timeout: None,
    };
    let Ok(ApiReply::Parties { ids, .. }) = w.api(&["support"], monitor) else {
        panic!()
    };
    let bob = ids[0].clone();
    w.run(ms(100));
    w.accept(1, &call);
    w.talk(1, BOB);
    w.run(ms(2500));
    let c = get(&mut w, &call);
    let p = c.participants.iter().find(|p| p.id == bob).unwrap();
    assert_eq!((p.role, p.monitor), ("supervisor", Some("listen")));
    let (m_caller, m_bob) = (w.carrier.media[&leg].heard.len(), w.browsers[1].heard.len());
    w.run(ms(1500));
    World::assert_hears(
        &w.browsers[1].heard[m_bob..],
        48_000,
        &[CALLER, ALICE],
        &[],
        "bob listens",
    );
    World::assert_hears(
        &w.carrier.media[&leg].heard[m_caller..],
        8000,
        &[ALICE],
        &[BOB],
        "caller, bob listening",
    );
    let barge = PartyUpdate::new(None, None, Some(MonitorMode::Barge));
    let update = ApiRequest::UpdateParticipant {
        call: call.clone(),
        participant: bob,
        update: barge,
    };
    w.api(&[], update).unwrap();
    w.run(ms(500));
    let m = w.carrier.media[&leg].heard.len();
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m..],
        8000,
        &[ALICE, BOB],
        &[],
        "caller, bob barged",
    );
}

fn originate(to: &str, connect: &str, timeout: Option<u32>) -> ApiRequest {
    ApiRequest::Originate(Originate {
        from: "support".into(),
        to: to.into(),
        connect: connect.into(),
        timeout,
        status_callback: Some(StatusCallback {
            url: "http://backend.test/status".into(),
            events: vec![
                CallEventKind::Initiated,
                CallEventKind::Ringing,
                CallEventKind::Answered,
                CallEventKind::Completed,
            ],
        }),
    })
}

/// The kinds of the call's events that carry its status callback.
fn callback_kinds(w: &World) -> Vec<CallEventKind> {
    w.events
        .iter()
        .filter(|e| e.callback.as_ref().is_some_and(|c| c.wants(e.kind)))
        .map(|e| e.kind)
        .collect()
}

#[test]
fn click_to_call_rings_alice_then_the_phone_and_connects_them() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    w.operator("alice", &["support"]);
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let Ok(ApiReply::Call(c)) = w.api(&["support"], originate("operator:alice", "+15550199", None))
    else {
        panic!()
    };
    assert_eq!((c.state, c.direction), ("ringing", "outbound"));
    assert_eq!(c.participants.len(), 1);
    // alice rings first; nothing else does.
    assert_eq!(w.last_incoming(0).as_deref(), Some(c.call_id.as_str()));
    assert!(w.carrier_incoming().is_empty());
    w.run(ms(1000));
    assert!(
        w.carrier_incoming().is_empty(),
        "the phone rings only once alice answered"
    );
    w.accept(0, &c.call_id);
    w.talk(0, ALICE);
    w.run(ms(300));
    let (phone, _) = *w.carrier_incoming().last().expect("the phone rings");
    w.carrier.media.get_mut(&phone).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(PHONE, 6000.0)]));
    w.run(ms(2500));
    let (m_phone, m_alice) = (
        w.carrier.media[&phone].heard.len(),
        w.browsers[0].heard.len(),
    );
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&phone].heard[m_phone..],
        8000,
        &[ALICE],
        &[],
        "the phone",
    );
    World::assert_hears(
        &w.browsers[0].heard[m_alice..],
        48_000,
        &[PHONE],
        &[],
        "alice",
    );
    assert_eq!(get(&mut w, &c.call_id).state, "connected");
    w.api(
        &["support"],
        ApiRequest::Hangup {
            call: c.call_id.clone(),
        },
    )
    .unwrap();
    w.run(ms(500));
    let done = w.completed();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, Some(DialStatus::Completed));
    assert_eq!(done[0].parties.len(), 2);
    // Each status the callback asked for; `ringing` and `answered` twice as
    // events (alice, then the phone), which the SBC sends once each.
    assert_eq!(
        callback_kinds(&w),
        [
            CallEventKind::Initiated,
            CallEventKind::Ringing,
            CallEventKind::Answered,
            CallEventKind::Ringing,
            CallEventKind::Answered,
            CallEventKind::Completed
        ]
    );
    w.run(ms(3000));
    w.assert_idle();
}

#[test]
fn click_to_call_to_a_busy_phone_ends_busy_and_rings_nothing_else() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    w.operator("alice", &["support"]);
    w.carrier.auto_answer = Some(vec![(180, false), (486, false)]);
    let Ok(ApiReply::Call(c)) = w.api(&[], originate("+15550123", "operator:alice", None)) else {
        panic!()
    };
    assert_eq!(c.participants[0].role, "customer");
    w.run(ms(1000));
    let done = w.completed();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].status, done[0].code),
        (Some(DialStatus::Busy), Some(486))
    );
    assert_eq!(w.carrier_incoming().len(), 1);
    assert!(w.got(0, "incoming").is_empty(), "alice never rang");
    assert_eq!(
        callback_kinds(&w),
        [
            CallEventKind::Initiated,
            CallEventKind::Ringing,
            CallEventKind::Completed
        ]
    );
    w.run(ms(3000));
    w.assert_idle();
}

#[test]
fn click_to_call_that_nobody_answers_ends_no_answer_and_a_rejection_ends_busy() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    w.operator("alice", &["support"]);
    let Ok(ApiReply::Call(c)) = w.api(&[], originate("operator:alice", "+15550199", Some(5)))
    else {
        panic!()
    };
    w.run(ms(4900));
    assert!(w.completed().is_empty());
    w.run(ms(200));
    assert_eq!(w.completed()[0].status, Some(DialStatus::NoAnswer));
    assert_eq!(w.ended_reason(0, &c.call_id).as_deref(), Some("no_answer"));
    assert!(w.carrier_incoming().is_empty());

    let Ok(ApiReply::Call(c)) = w.api(&[], originate("operator:alice", "+15550199", None)) else {
        panic!()
    };
    w.run(ms(100));
    w.send(
        0,
        serde_json::json!({"type": "reject", "callId": c.call_id}),
    );
    w.run(ms(100));
    assert_eq!(w.completed()[1].status, Some(DialStatus::Busy));
    assert!(w.carrier_incoming().is_empty());
    w.run(ms(3000));
    w.assert_idle();
}

#[test]
fn click_to_call_refuses_what_it_cannot_place() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    w.operator("alice", &["support"]);
    // bob is not online: not available.
    let r = w.api(&[], originate("operator:bob", "+15550199", None));
    assert_eq!(code(r), ApiErrorCode::TargetBusy);
    let r = w.api(&["sales"], originate("operator:alice", "+15550199", None));
    assert_eq!(code(r), ApiErrorCode::ForbiddenNumber);
    for (to, connect) in [
        ("operators", "+15550199"),
        ("operator:alice", "nonsense"),
        ("echo", "+1555"),
    ] {
        let r = w.api(&[], originate(to, connect, None));
        assert_eq!(code(r), ApiErrorCode::BadRequest, "{to} {connect}");
    }
    let mut o = originate("operator:alice", "+15550199", None);
    if let ApiRequest::Originate(o) = &mut o {
        o.from = "+19999999999".into();
    }
    assert_eq!(code(w.api(&[], o)), ApiErrorCode::BadRequest);
    assert!(w.events.is_empty(), "no call was created");
    assert_eq!(w.bridge.calls(), 0);
}
