//! Call scenarios through the whole bridge on virtual time: carrier, SBC control
//! and media, browsers. Audio really crosses: tones sent on one side are detected
//! on the other, through the jitter buffer and the PCMU <-> Opus transcoder.

mod common;

use common::*;
use media_core::analysis::ToneGenerator;
use sip_bridge::bridge::{CallEventKind, DialStatus};
use sip_bridge::sip::dialog::{EndReason as SipEnd, UaEvent};

fn carrier_answered(w: &World) -> usize {
    w.carrier_events()
        .iter()
        .filter(|e| matches!(e, UaEvent::Answered { .. }))
        .count()
}

fn carrier_failed(w: &World) -> Option<u16> {
    w.carrier_events().iter().find_map(|e| match e {
        UaEvent::Failed { status, .. } => Some(*status),
        _ => None,
    })
}

fn outcome(w: &World) -> Option<DialStatus> {
    w.completed().last().and_then(|e| e.status)
}

/// Lets the browser talk (a 440 Hz tone) once its peer connection is up.
fn talk(w: &mut World, i: usize, hz: f64) {
    w.browsers[i].tone = Some(ToneGenerator::new(48_000, &[(hz, 8000.0)]));
}

#[test]
fn three_operators_ring_the_second_accepts_and_audio_flows_both_ways() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let b = w.operator("bob", &["support"]);
    let c = w.operator("carol", &["support"]);
    for i in [a, b, c] {
        assert_eq!(w.got(i, "availability")[0]["accepted"][0], "support");
    }
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).expect("alice rings");
    assert_eq!(w.last_incoming(b).as_deref(), Some(call.as_str()));
    assert_eq!(w.last_incoming(c).as_deref(), Some(call.as_str()));
    assert_eq!(w.got(a, "incoming")[0]["from"], "+15550111");
    assert!(
        w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Progress { status: 183, .. })),
        "caller hears ringback"
    );

    w.accept(b, &call);
    talk(&mut w, b, 440.0);
    w.run(ms(3000));
    assert_eq!(w.ended_reason(a, &call).as_deref(), Some("taken_by_other"));
    assert_eq!(w.ended_reason(c, &call).as_deref(), Some("taken_by_other"));
    assert!(w.ended_reason(b, &call).is_none());
    assert_eq!(w.got(b, "answer").len(), 1);
    assert_eq!(w.got(b, "connected").len(), 1);
    assert_eq!(
        carrier_answered(&w),
        1,
        "exactly one 200 OK reaches the carrier"
    );
    assert!(
        w.browsers[b].rtc_connected,
        "the browser's peer connection is up"
    );
    World::assert_tone(&w.browsers[b].heard, 48_000, 1000.0, "bob hears the caller");
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        440.0,
        "the caller hears bob",
    );

    // The caller hangs up.
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    assert_eq!(w.ended_reason(b, &call).as_deref(), Some("remote_hangup"));
    assert_eq!(outcome(&w), Some(DialStatus::Completed));
    let done = w.completed()[0];
    assert_eq!(done.answered_by.as_deref(), Some("operator:bob"));
    assert!(done.talk_time.unwrap() >= ms(3000));
    w.run(ms(40_000));
    w.assert_idle();
    assert!(w.bridge.presence().is_ready("bob"), "bob is free again");
}

#[test]
fn two_accepts_in_the_same_tick_have_one_winner() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let b = w.operator("bob", &["support"]);
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    // Both accepts are handled at the same virtual instant.
    w.accept(a, &call);
    w.accept(b, &call);
    w.run(ms(1000));
    assert_eq!(w.got(a, "connected").len(), 1, "the first accept wins");
    assert!(w.got(b, "connected").is_empty());
    assert_eq!(w.ended_reason(b, &call).as_deref(), Some("taken_by_other"));
    assert_eq!(carrier_answered(&w), 1);
}

#[test]
fn caller_hangs_up_while_operators_ring() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let b = w.operator("bob", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(500));
    let call = w.last_incoming(a).unwrap();
    let now = w.now;
    w.carrier.ua.cancel(now, leg).unwrap();
    w.run(ms(500));
    for i in [a, b] {
        assert_eq!(w.ended_reason(i, &call).as_deref(), Some("remote_hangup"));
    }
    assert_eq!(outcome(&w), Some(DialStatus::Canceled));
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn all_operators_reject_and_the_pstn_fallback_answers() {
    let mut w = World::new(config(plan(&[
        (&["operators"], 15),
        (&["pstn:+15550111"], 25),
    ])));
    let a = w.operator("alice", &["support"]);
    let b = w.operator("bob", &["support"]);
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    w.send(a, serde_json::json!({"type": "reject", "callId": call}));
    w.run(ms(100));
    assert!(w.carrier_incoming().is_empty(), "bob still rings");
    w.send(b, serde_json::json!({"type": "reject", "callId": call}));
    w.run(ms(200));
    assert_eq!(w.ended_reason(a, &call).as_deref(), Some("rejected"));
    let incoming = w.carrier_incoming();
    assert_eq!(incoming.len(), 1, "the fallback rings the phone number");
    let (out_leg, _) = incoming[0];
    w.carrier.media.get_mut(&out_leg).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(600.0, 6000.0)]));
    w.run(ms(2500));
    assert_eq!(
        carrier_answered(&w),
        1,
        "the caller is answered once the fallback answers"
    );
    World::assert_tone(
        &w.carrier.media[&out_leg].heard,
        8000,
        1000.0,
        "the fallback hears the caller",
    );
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        600.0,
        "the caller hears the fallback",
    );
    let answered = w
        .events
        .iter()
        .find(|e| e.kind == CallEventKind::Answered)
        .unwrap();
    assert_eq!(answered.answered_by.as_deref(), Some("pstn:+15550111"));
    // The callee hangs up: the caller gets BYE.
    let now = w.now;
    w.carrier.ua.hangup(now, out_leg).unwrap();
    w.run(ms(500));
    assert!(w.carrier_events().iter().any(
        |e| matches!(e, UaEvent::Terminated { leg: l, reason: SipEnd::RemoteBye } if *l == leg)
    ));
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn busy_fallback_gives_busy() {
    let mut w = World::new(config(plan(&[
        (&["operators"], 15),
        (&["pstn:+15550111"], 25),
    ])));
    w.carrier.auto_answer = Some(vec![(486, false)]);
    let _ = w.operator("alice", &["sales"]); // online, but not on this number
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(1000));
    assert_eq!(carrier_failed(&w), Some(486), "486 for the caller");
    assert_eq!(outcome(&w), Some(DialStatus::Busy));
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn nobody_answers_gives_no_answer() {
    let mut w = World::new(config(plan(&[(&["operators"], 10)])));
    let a = w.operator("alice", &["support"]);
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(9_000));
    assert_eq!(carrier_failed(&w), None);
    w.run(ms(2_000));
    let call = w.last_incoming(a).unwrap();
    assert_eq!(w.ended_reason(a, &call).as_deref(), Some("no_answer"));
    assert_eq!(carrier_failed(&w), Some(480));
    assert_eq!(outcome(&w), Some(DialStatus::NoAnswer));
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn an_operator_going_offline_stops_ringing_and_the_busy_one_is_skipped() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let b = w.operator("bob", &["support"]);
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let first = w.last_incoming(a).unwrap();
    w.send(a, serde_json::json!({"type": "offline"}));
    assert_eq!(w.ended_reason(a, &first).as_deref(), Some("offline"));
    w.accept(b, &first);
    w.run(ms(500));
    // A second call: alice is offline, bob busy: nobody rings, the caller gets 480.
    w.send(
        a,
        serde_json::json!({"type": "online", "numbers": ["support"]}),
    );
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(300));
    let second = w.last_incoming(a).unwrap();
    assert_ne!(second, first);
    assert_eq!(w.got(b, "incoming").len(), 1, "bob is on a call: skipped");
}

/// Message types browser `i` got, in order.
fn kinds(w: &World, i: usize) -> Vec<String> {
    w.browsers[i]
        .inbox
        .iter()
        .filter_map(|m| m["type"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn nothing_about_a_dialled_call_reaches_the_operator_before_its_answer() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    // The far end's 183 comes before the (slow) media task has made the answer.
    w.hold_answers = true;
    w.dial(a, "+15559999", "support");
    w.run(ms(100));
    let (leg, offer) = w.carrier_incoming()[0].clone();
    let sdp = w.carrier.answer_for(leg, &offer);
    let now = w.now;
    w.carrier
        .ua
        .respond(now, leg, 183, Some(sdp.as_bytes()), &[])
        .unwrap();
    w.run(ms(200));
    assert!(w.got(a, "ringing").is_empty(), "{:?}", kinds(&w, a));
    w.release_answers();
    let k = kinds(&w, a);
    let first = k.iter().position(|t| t == "answer").unwrap();
    assert_eq!(k[first + 1], "ringing", "{k:?}");
    assert_eq!(w.got(a, "ringing")[0]["earlyMedia"], true);

    // A dial that fails before its answer: `ended` names the dial's `ref`.
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    w.hold_answers = true;
    w.dial(a, "+15559999", "support");
    w.run(ms(100));
    let (leg, _) = w.carrier_incoming()[0].clone();
    let now = w.now;
    w.carrier.ua.respond(now, leg, 486, None, &[]).unwrap();
    w.run(ms(200));
    let ended = w.got(a, "ended");
    assert_eq!(ended.len(), 1, "{:?}", kinds(&w, a));
    assert_eq!(ended[0]["reason"], "busy");
    assert_eq!(ended[0]["ref"], "d1");
    assert!(w.got(a, "answer").is_empty() && w.got(a, "ringing").is_empty());
    // The answer that comes after the call is gone goes nowhere.
    w.release_answers();
    w.run(ms(100));
    assert!(w.got(a, "answer").is_empty(), "{:?}", kinds(&w, a));
    w.assert_idle();
}

#[test]
fn an_operator_dials_out_hears_early_media_then_talks_and_sends_dtmf() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    w.dial(a, "+15559999", "support");
    w.run(ms(200));
    let answer = w.got(a, "answer");
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0]["ref"], "d1");
    let call = answer[0]["callId"].as_str().unwrap().to_string();
    let (leg, offer) = w.carrier_incoming()[0].clone();
    let sdp = w.carrier.answer_for(leg, &offer);
    w.carrier.media.get_mut(&leg).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(700.0, 6000.0)]));
    let now = w.now;
    w.carrier
        .ua
        .respond(now, leg, 183, Some(sdp.as_bytes()), &[])
        .unwrap();
    w.run(ms(2500));
    let ringing = w.got(a, "ringing");
    assert_eq!(ringing.len(), 1);
    assert_eq!(ringing[0]["earlyMedia"], true);
    World::assert_tone(
        &w.browsers[a].heard,
        48_000,
        700.0,
        "the operator hears the early media",
    );
    assert!(w.got(a, "connected").is_empty());
    let now = w.now;
    w.carrier
        .ua
        .respond(now, leg, 200, Some(sdp.as_bytes()), &[])
        .unwrap();
    talk(&mut w, a, 440.0);
    w.run(ms(2500));
    assert_eq!(w.got(a, "connected").len(), 1);
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        440.0,
        "the far end hears the operator",
    );
    // The From the carrier sees is the operator's caller ID, not an internal address.
    let invite_from = w.carrier_events().iter().find_map(|e| match e {
        UaEvent::IncomingInvite { request, .. } => Some(format!("{:?}", request.headers)),
        _ => None,
    });
    assert!(invite_from.unwrap().contains("+15550100"));

    w.send(
        a,
        serde_json::json!({"type": "dtmf", "callId": call, "digits": "123#"}),
    );
    w.run(ms(3000));
    assert_eq!(
        w.carrier.media[&leg].digits,
        vec!['1', '2', '3', '#'],
        "RFC 4733 digits reach the far end"
    );
    w.carrier.media.get_mut(&leg).unwrap().send_dtmf("5");
    w.run(ms(1000));
    let d = w.got(a, "dtmf");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["digit"], "5");

    w.send(a, serde_json::json!({"type": "hangup", "callId": call}));
    w.run(ms(500));
    assert_eq!(w.ended_reason(a, &call).as_deref(), Some("hangup"));
    assert!(w.carrier_events().iter().any(|e| matches!(
        e,
        UaEvent::Terminated {
            reason: SipEnd::RemoteBye,
            ..
        }
    )));
    assert_eq!(outcome(&w), Some(DialStatus::Completed));
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn outbound_failures_reach_the_browser_with_their_code() {
    for (status, reason) in [(404, "failed"), (486, "busy"), (503, "failed")] {
        let mut w = World::new(config(plan(&[(&["operators"], 20)])));
        w.carrier.auto_answer = Some(vec![(status, false)]);
        let a = w.operator("alice", &["support"]);
        w.dial(a, "+15559999", "support");
        w.run(ms(1000));
        let ended = w.got(a, "ended");
        assert_eq!(ended.len(), 1, "{status}");
        assert_eq!(ended[0]["reason"], reason, "{status}");
        assert_eq!(ended[0]["code"], status, "{status}");
        assert!(
            w.bridge.presence().is_ready("alice"),
            "free again after {status}"
        );
        w.run(ms(40_000));
        w.assert_idle();
    }
}

#[test]
fn dial_with_a_foreign_caller_id_is_forbidden_and_a_busy_operator_cannot_dial() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    w.dial(a, "+15559999", "+15550999");
    assert_eq!(w.got(a, "error")[0]["code"], "FORBIDDEN_NUMBER");
    assert_eq!(w.bridge.calls(), 0);
    w.carrier.auto_answer = Some(vec![(180, false)]);
    w.dial(a, "+15559999", "+15550100");
    w.run(ms(200));
    w.dial(a, "+15558888", "support");
    assert_eq!(w.got(a, "error").last().unwrap()["code"], "BUSY");
    assert_eq!(w.bridge.calls(), 1);
}

#[test]
fn hold_goes_as_update_to_a_trunk_that_wants_it_and_re_invite_otherwise() {
    for update in [false, true] {
        let mut cfg = config(plan(&[(&["operators"], 20)]));
        cfg.trunks[0].update_offers = update;
        let mut w = World::new(cfg);
        let a = w.operator("alice", &["support"]);
        w.carrier_call("+15550100", 1000.0);
        w.run(ms(200));
        let call = w.last_incoming(a).unwrap();
        w.accept(a, &call);
        w.run(ms(1000));
        let before = w.sip_to_carrier.len();
        for on in [true, false] {
            w.send(
                a,
                serde_json::json!({"type": "hold", "callId": call, "on": on}),
            );
            w.run(ms(300));
        }
        let offers: Vec<&String> = w.sip_to_carrier[before..]
            .iter()
            .filter(|l| l.starts_with("INVITE ") || l.starts_with("UPDATE "))
            .collect();
        let method = if update { "UPDATE " } else { "INVITE " };
        assert_eq!(offers.len(), 2, "{:?}", w.sip_to_carrier);
        assert!(offers.iter().all(|l| l.starts_with(method)), "{offers:?}");
        // Both answered: sendonly, then sendrecv again, in the carrier's offers.
        let sdps: Vec<String> = w
            .carrier_events()
            .iter()
            .filter_map(|e| match e {
                UaEvent::Offer { sdp, .. } => Some(String::from_utf8_lossy(sdp).to_string()),
                _ => None,
            })
            .collect();
        assert!(sdps[0].contains("a=sendonly") && sdps[1].contains("a=sendrecv"));
        assert_eq!(w.got(a, "callUpdated").last().unwrap()["held"], false);
    }
}

#[test]
fn hold_and_resume_from_each_side_use_the_right_directions() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    w.accept(a, &call);
    w.run(ms(1000));
    // The operator holds: the carrier gets a sendonly offer.
    w.send(
        a,
        serde_json::json!({"type": "hold", "callId": call, "on": true, "ref": "h"}),
    );
    w.run(ms(300));
    let offers: Vec<String> = w
        .carrier_events()
        .iter()
        .filter_map(|e| match e {
            UaEvent::Offer { sdp, .. } => Some(String::from_utf8_lossy(sdp).to_string()),
            _ => None,
        })
        .collect();
    assert!(offers[0].contains("a=sendonly"), "{}", offers[0]);
    let upd = w.got(a, "callUpdated");
    assert_eq!(upd.last().unwrap()["held"], true);
    assert_eq!(upd.last().unwrap()["ref"], "h");
    w.send(
        a,
        serde_json::json!({"type": "hold", "callId": call, "on": false}),
    );
    w.run(ms(300));
    assert!(
        w.carrier_events()
            .iter()
            .filter(|e| matches!(e, UaEvent::Offer { .. }))
            .count()
            == 2
    );
    // The carrier holds: the SBC answers recvonly (not sendrecv) and tells the browser.
    let sdp = {
        let m = &w.carrier.media[&leg];
        format!(
            "v=0\r\no=c 9 3 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n",
            m.local.port()
        )
    };
    let now = w.now;
    w.carrier.ua.reinvite(now, leg, sdp.into_bytes()).unwrap();
    w.run(ms(300));
    let answer = w.carrier_events().iter().rev().find_map(|e| match e {
        UaEvent::OfferAnswered {
            status: 200,
            sdp: Some(s),
            ..
        } => Some(String::from_utf8_lossy(s).to_string()),
        _ => None,
    });
    let answer = answer.expect("the SBC answered the hold");
    assert!(answer.contains("a=recvonly"), "{answer}");
    assert_eq!(w.got(a, "callUpdated").last().unwrap()["remoteHeld"], true);
}

#[test]
fn no_media_ends_the_call() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    w.accept(a, &call);
    w.run(ms(1000));
    // The carrier's media stops (its RTP path died) but the dialog stays.
    w.carrier.media.get_mut(&leg).unwrap().tone = None;
    w.run(ms(61_000));
    assert!(
        w.ended_reason(a, &call).is_some(),
        "the call ended after the media timeout"
    );
    assert!(w.carrier_events().iter().any(
        |e| matches!(e, UaEvent::Terminated { leg: l, reason: SipEnd::RemoteBye } if *l == leg)
    ));
}

#[test]
fn a_websocket_drop_and_reconnect_within_grace_keeps_the_call_and_its_audio() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    w.accept(a, &call);
    talk(&mut w, a, 440.0);
    w.run(ms(2000));
    w.drop_ws(a);
    let heard_before = w.browsers[a].heard.len();
    w.run(ms(5000));
    assert!(
        w.browsers[a].heard.len() > heard_before + 48_000 * 4,
        "media kept flowing without the socket"
    );
    World::assert_tone(
        &w.browsers[a].heard,
        48_000,
        1000.0,
        "still hears the caller",
    );
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        440.0,
        "still heard by the caller",
    );
    w.connect(a, &["support"]);
    let ready = w.got(a, "ready");
    let resumed = &ready.last().unwrap()["calls"];
    assert_eq!(resumed[0]["callId"], call.as_str());
    assert_eq!(resumed[0]["state"], "connected");
    w.send(a, serde_json::json!({"type": "hangup", "callId": call}));
    w.run(ms(500));
    assert_eq!(w.ended_reason(a, &call).as_deref(), Some("hangup"));
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn past_the_grace_period_the_call_ends() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    w.accept(a, &call);
    w.run(ms(1000));
    w.drop_ws(a);
    w.run(ms(29_000));
    assert!(
        !w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg: l, .. } if *l == leg))
    );
    w.run(ms(2_000));
    assert!(w.carrier_events().iter().any(
        |e| matches!(e, UaEvent::Terminated { leg: l, reason: SipEnd::RemoteBye } if *l == leg)
    ));
    assert!(
        w.bridge.presence().state("alice").is_none(),
        "alice is offline"
    );
}

#[test]
fn echo_and_tone_test_numbers_answer_inside_the_sbc() {
    let mut w = World::new(config(plan(&[(&["echo"], 20)])));
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(2000));
    assert_eq!(carrier_answered(&w), 1);
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        1000.0,
        "the caller hears itself",
    );
    let mut w = World::new(config(plan(&[(&["tone:440"], 20)])));
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(2000));
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        440.0,
        "the tone number plays 440 Hz",
    );
}

#[test]
fn operator_requests_out_of_state_get_bad_request_and_change_nothing() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support", "nope"]);
    let avail = w.got(a, "availability");
    assert_eq!(avail[0]["rejected"][0]["id"], "nope");
    assert_eq!(avail[0]["rejected"][0]["code"], "BAD_REQUEST");
    let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
    let on_unknown = [
        serde_json::json!({"type": "accept", "callId": "c-77", "sdp": sdp}),
        serde_json::json!({"type": "reject", "callId": "c-77"}),
        serde_json::json!({"type": "hangup", "callId": "c-77"}),
        serde_json::json!({"type": "mute", "callId": "c-77", "on": true}),
        serde_json::json!({"type": "hold", "callId": "c-77", "on": true}),
        serde_json::json!({"type": "dtmf", "callId": "c-77", "digits": "1"}),
        serde_json::json!({"type": "reoffer", "callId": "c-77", "sdp": sdp}),
    ];
    for (n, m) in on_unknown.iter().enumerate() {
        w.send(a, m.clone());
        let errors = w.got(a, "error");
        assert_eq!(errors.len(), n + 1, "{m}");
        assert_eq!(errors[n]["code"], "BAD_REQUEST", "{m}");
        assert_eq!(errors[n]["callId"], "c-77");
    }
    // A ringing call: in-call actions are refused until it is accepted.
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    for m in [
        serde_json::json!({"type": "mute", "callId": call, "on": true}),
        serde_json::json!({"type": "hold", "callId": call, "on": true}),
        serde_json::json!({"type": "dtmf", "callId": call, "digits": "1"}),
        serde_json::json!({"type": "reoffer", "callId": call, "sdp": sdp}),
    ] {
        let before = w.got(a, "error").len();
        w.send(a, m.clone());
        assert_eq!(w.got(a, "error").len(), before + 1, "{m}");
        assert_eq!(w.got(a, "error")[before]["code"], "BAD_REQUEST");
    }
    assert_eq!(carrier_answered(&w), 0, "still ringing");
    w.accept(a, &call);
    w.run(ms(500));
    // Accepted: accepting or rejecting again is refused; the call goes on.
    for m in [
        serde_json::json!({"type": "accept", "callId": call, "sdp": sdp}),
        serde_json::json!({"type": "reject", "callId": call}),
    ] {
        let before = w.got(a, "error").len();
        w.send(a, m.clone());
        assert_eq!(w.got(a, "error")[before]["code"], "BAD_REQUEST", "{m}");
    }
    // A second dial while busy.
    w.send(
        a,
        serde_json::json!({"type": "dial", "to": "+15559999", "callerId": "support", "sdp": sdp}),
    );
    assert_eq!(w.got(a, "error").last().unwrap()["code"], "BUSY");
    assert_eq!(carrier_answered(&w), 1);
    assert!(w.ended_reason(a, &call).is_none());
    assert_eq!(w.bridge.calls(), 1);
}

#[test]
fn a_sip_caller_holding_a_sip_callee_passes_the_hold_on() {
    let mut w = World::new(config(plan(&[(&["pstn:+15550111"], 20)])));
    w.carrier.auto_answer = Some(vec![(200, true)]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(500));
    assert_eq!(carrier_answered(&w), 1);
    let sdp = {
        let m = &w.carrier.media[&leg];
        format!(
            "v=0\r\no=c 9 3 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n",
            m.local.port()
        )
    };
    let now = w.now;
    w.carrier.ua.reinvite(now, leg, sdp.into_bytes()).unwrap();
    w.run(ms(500));
    // The callee (the carrier's other leg) got a sendonly offer from the SBC.
    let offers: Vec<String> = w
        .carrier_events()
        .iter()
        .filter_map(|e| match e {
            UaEvent::Offer { sdp, .. } => Some(String::from_utf8_lossy(sdp).to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(offers.len(), 1, "the hold went on to the callee");
    assert!(offers[0].contains("a=sendonly"), "{}", offers[0]);
}

#[test]
fn an_operators_quality_report_after_the_call_becomes_an_event() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let b = w.operator("bob", &["sales"]);
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    w.accept(a, &call);
    w.run(ms(1000));
    w.send(a, serde_json::json!({"type": "hangup", "callId": call}));
    w.run(ms(200));
    let report = serde_json::json!({"type": "quality", "callId": call, "summary": {"mos": 4.2, "rttMs": 31}});
    w.send(a, report.clone());
    let q = w
        .events
        .iter()
        .find(|e| e.kind == CallEventKind::Quality)
        .expect("a quality event");
    assert_eq!(q.call_id.to_string(), call);
    let r = q.quality.as_ref().unwrap();
    assert_eq!(r.operator, "alice");
    assert_eq!(r.summary, r#"{"mos":4.2,"rttMs":31}"#);
    assert!(w.got(a, "error").is_empty());
    // An operator who was not in the call cannot report on it.
    w.send(b, report);
    assert_eq!(w.got(b, "error").last().unwrap()["code"], "BAD_REQUEST");
    assert_eq!(
        w.events
            .iter()
            .filter(|e| e.kind == CallEventKind::Quality)
            .count(),
        1
    );
}

#[test]
fn a_browser_whose_peer_connection_goes_away_keeps_its_call_for_the_grace_period() {
    let mut w = World::new(config(plan(&[(&["operators"], 20)])));
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(200));
    let call = w.last_incoming(a).unwrap();
    w.accept(a, &call);
    talk(&mut w, a, 440.0);
    w.run(ms(2000));
    // The page reloads: its peer connection is gone (no traffic past the idle
    // timeout), the call is not.
    w.blackhole = Some(w.browsers[a].addr);
    w.run(ms(20_000));
    assert!(w.ended_reason(a, &call).is_none(), "still in the call");
    assert_eq!(w.bridge.calls(), 1);
    // The new page offers a new peer connection: media flows again.
    w.blackhole = None;
    w.reoffer(a, &call);
    talk(&mut w, a, 440.0);
    w.run(ms(3000));
    assert!(w.browsers[a].rtc_connected, "the new peer connection is up");
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        440.0,
        "the caller hears the reloaded page",
    );
    // Gone for good this time: after the grace period the call ends.
    w.blackhole = Some(w.browsers[a].addr);
    w.run(ms(60_000));
    assert_eq!(w.ended_reason(a, &call).as_deref(), Some("failed"));
    assert_eq!(outcome(&w), Some(DialStatus::Completed));
}
