//! Recordings through the whole bridge on virtual time: a carrier's caller
//! (the customer) and browser operators, each playing its own tone; what the
//! media session gives the driver is read back as the file would be and
//! checked channel by channel: who is in which channel, alignment, length,
//! holds, a party joining, a transfer, pauses, and who may start one.

mod common;

use std::time::Duration;

use common::*;
use sip_bridge::bridge::{ApiErrorCode, ApiReply, ApiRequest, CallEventKind, PartyUpdate};
use sip_bridge::contract::{PauseBehavior, RecordingId};
use sip_bridge::plan::RecordOptions;

const CALLER: f64 = 440.0;
const ALICE: f64 = 1000.0;
const BOB: f64 = 1500.0;
const PHONE: f64 = 1700.0;

fn answered_by_alice() -> (World, String, sip_bridge::sip::dialog::LegId) {
    let cfg = config(plan(&[(&["operators"], 20)]));
    answered_by_alice_in(cfg, &[("bob", &["sales"])], CALLER, ALICE)
}

fn record(w: &mut World, call: &str, o: RecordOptions) -> RecordingId {
    match w.api(
        &["support"],
        ApiRequest::Record {
            call: call.into(),
            options: o,
        },
    ) {
        Ok(ApiReply::Recording { id, status, call }) => {
            assert_eq!(status, "in-progress");
            let shown = call.and_then(|c| c.recording).map(|r| r.id);
            assert_eq!(shown.as_deref(), Some(id.as_str()));
            id.parse().unwrap()
        }
        other => panic!("record: {other:?}"),
    }
}

fn set(w: &mut World, call: &str, rec: RecordingId, status: &str, behavior: Option<&str>) {
    let status = sip_bridge::bridge::RecordingStatus::parse(status, behavior).unwrap();
    let r = w.api(
        &["support"],
        ApiRequest::UpdateRecording {
            call: call.into(),
            recording: rec.to_string(),
            status,
        },
    );
    assert!(r.is_ok(), "{status:?}: {r:?}");
}

/// Level of `hz` in `pcm` at 8 kHz, dB.
fn lvl(pcm: &[i16], hz: f64) -> f64 {
    World::level(pcm, 8000, hz)
}

/// `pcm` carries `hz` (and nothing of `not`), at least 30 dB above them.
fn has(pcm: &[i16], hz: f64, not: &[f64], what: &str) {
    let l = lvl(pcm, hz);
    assert!(l > -30.0, "{what}: {hz} Hz only at {l:.1} dB");
    for n in not {
        let o = lvl(pcm, *n);
        assert!(
            l - o > 30.0,
            "{what}: {n} Hz at {o:.1} dB beside {hz} Hz at {l:.1}"
        );
    }
}

fn silent(pcm: &[i16], of: &[f64], what: &str) {
    for hz in of {
        let l = lvl(pcm, *hz);
        assert!(l < -60.0, "{what}: {hz} Hz at {l:.1} dB");
    }
}

#[test]
fn the_recording_keeps_the_customer_in_channel_one_through_a_hold_a_join_and_a_transfer() {
    let (mut w, call, _leg) = answered_by_alice();
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let rec = record(&mut w, &call, RecordOptions::default());
    let t0 = w.now;
    // 0-2 s: the customer and alice.
    w.run(ms(2000));
    // 2-5 s: alice holds the customer.
    let customer = pid(&mut w, &call, "customer");
    let hold = |held| ApiRequest::UpdateParticipant {
        call: call.clone(),
        participant: customer.clone(),
        update: PartyUpdate::new(Some(held), None, None),
    };
    w.api(&["support"], hold(true)).unwrap();
    let held_at = w.now.saturating_duration_since(t0);
    w.run(ms(3000));
    w.api(&["support"], hold(false)).unwrap();
    let unheld_at = w.now.saturating_duration_since(t0);
    w.run(ms(2000));
    // 7-10 s: a phone joins (it plays its own tone).
    w.api(
        &["support"],
        ApiRequest::AddParticipant {
            call: call.clone(),
            target: "+15557770222".into(),
            timeout: None,
        },
    )
    .unwrap();
    w.run(ms(100));
    let (phone, _) = *w.carrier_incoming().last().expect("the phone rings");
    w.carrier.media.get_mut(&phone).unwrap().tone = Some(media_core::analysis::ToneGenerator::new(
        8000,
        &[(PHONE, 6000.0)],
    ));
    w.run(ms(2900));
    // The phone leaves; 10-: alice hands the customer to bob (blind).
    let phone_pid = pid(&mut w, &call, "phone");
    w.api(
        &["support"],
        ApiRequest::RemoveParticipant {
            call: call.clone(),
            participant: phone_pid,
        },
    )
    .unwrap();
    w.api(
        &["support"],
        ApiRequest::Transfer {
            call: call.clone(),
            target: "operator:bob".into(),
            attended: false,
            timeout: Some(10),
            by: None,
            cancel_on_hangup: false,
            fallback: None,
        },
    )
    .unwrap();
    w.run(ms(100));
    w.accept(1, &call);
    w.talk(1, BOB);
    w.run(ms(3000));
    // Bob joined a call being recorded: his page knows it.
    let told = w.got(1, "recording");
    assert_eq!(
        told.last().map(|m| m["status"].as_str()),
        Some(Some("in-progress")),
        "{told:?}"
    );
    // The call is hung up: the recording ends with it.
    let ended_at = w.now.saturating_duration_since(t0);
    w.api(&["support"], ApiRequest::Hangup { call: call.clone() })
        .unwrap();
    w.run(ms(500));
    let r = &w.recordings[&rec];
    let stopped = r.stopped.expect("stopped with the call");
    assert_eq!(stopped, r.duration(), "every frame given");
    // One file, with no gap: its length is the time it was recording.
    let d = (r.duration().as_millis() as u64).abs_diff(ended_at.as_millis() as u64);
    assert!(d <= 20, "{:?} recorded in {ended_at:?}", r.duration());
    let started = r.started_at.saturating_duration_since(t0);
    assert!(started < ms(20), "started at once: {started:?}");
    let spec = r.spec.as_ref().unwrap();
    assert_eq!((spec.rate, spec.source.as_str()), (8000, "api"));
    let s = |d: Duration| d.as_millis() as u64;
    let (h, u) = (s(held_at), s(unheld_at));
    // Channel 1: the customer alone, whoever the others are.
    has(
        &r.channel(0, 300, h),
        CALLER,
        &[ALICE],
        "ch1 before the hold",
    );
    has(
        &r.channel(0, u + 300, u + 1900),
        CALLER,
        &[ALICE],
        "ch1 after",
    );
    has(
        &r.channel(0, 8000, 9900),
        CALLER,
        &[PHONE, ALICE],
        "ch1 with the phone",
    );
    has(
        &r.channel(0, 11_500, 13_000),
        CALLER,
        &[BOB],
        "ch1 after the transfer",
    );
    // Channel 2: what the customer hears.
    has(
        &r.channel(1, 300, h),
        ALICE,
        &[CALLER],
        "ch2 before the hold",
    );
    has(
        &r.channel(1, u + 300, u + 1900),
        ALICE,
        &[CALLER],
        "ch2 after the hold",
    );
    let with_phone = r.channel(1, 8000, 9900);
    has(&with_phone, ALICE, &[CALLER], "ch2 with the phone");
    has(&with_phone, PHONE, &[CALLER], "ch2 with the phone");
    has(
        &r.channel(1, 11_500, 13_000),
        BOB,
        &[CALLER, ALICE],
        "ch2 after the transfer",
    );
    // Across the hold both channels are silent, exactly as long as it.
    let (a, b) = (h + 60, u - 60);
    silent(&r.channel(0, a, b), &[CALLER, ALICE], "ch1 on hold");
    silent(&r.channel(1, a, b), &[CALLER, ALICE], "ch2 on hold");
    // The timeline says what happened when (offsets into the file).
    let tl = r.timeline();
    let at = |ev: &str| tl.iter().find(|(_, e)| e == ev).map(|(t, _)| *t);
    assert_eq!(
        at("hold").map(|t| t.abs_diff(h) <= 20),
        Some(true),
        "{tl:?}"
    );
    assert_eq!(
        at("unhold").map(|t| t.abs_diff(u) <= 20),
        Some(true),
        "{tl:?}"
    );
    let joins = tl.iter().filter(|(_, e)| e == "joined").count();
    assert_eq!(joins, 4, "customer, alice, the phone, bob: {tl:?}");
    assert!(
        tl.iter().any(|(t, e)| e == "transfer" && *t > 10_000),
        "{tl:?}"
    );
    let lefts: Vec<u64> = tl
        .iter()
        .filter(|(_, e)| e == "left")
        .map(|(t, _)| *t)
        .collect();
    assert!(lefts.len() >= 2, "the phone and alice left: {tl:?}");
    // Events for the backend.
    let states: Vec<&str> = w
        .events
        .iter()
        .filter(|e| e.kind == CallEventKind::Recording)
        .map(|e| e.recording.as_ref().unwrap().state)
        .collect();
    assert_eq!(states, ["started"]);
}

#[test]
fn a_burst_played_by_both_sides_at_once_lands_at_the_same_offset_and_the_length_is_the_talk_time() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.numbers[0].plan.record = Some(RecordOptions::default());
    let (mut w, call, leg) = answered_by_alice_in(cfg, &[], CALLER, ALICE);
    // The plan recorded from the answer.
    let rec = get(&mut w, &call).recording.expect("recording").id;
    let rec: RecordingId = rec.parse().unwrap();
    w.run(ms(1000));
    // Both switch to 2 kHz for 200 ms at the same instant.
    let at = w
        .now
        .saturating_duration_since(w.recordings[&rec].started_at);
    w.carrier.media.get_mut(&leg).unwrap().tone = Some(media_core::analysis::ToneGenerator::new(
        8000,
        &[(2000.0, 6000.0)],
    ));
    w.talk(0, 2000.0);
    w.run(ms(200));
    w.carrier.media.get_mut(&leg).unwrap().tone = Some(media_core::analysis::ToneGenerator::new(
        8000,
        &[(CALLER, 6000.0)],
    ));
    w.talk(0, ALICE);
    w.run(ms(1500));
    w.api(&[], ApiRequest::Hangup { call: call.clone() })
        .unwrap();
    w.run(ms(300));
    let r = &w.recordings[&rec];
    // The burst's onset per channel: the first 10 ms window where 2 kHz leads.
    let onset = |c: usize| {
        let pcm = r.channel(c, 0, 60_000);
        (0..pcm.len() / 80)
            .find(|i| {
                let win = &pcm[i * 80..(i + 1) * 80];
                lvl(win, 2000.0) > -20.0 && lvl(win, 2000.0) > lvl(win, CALLER).max(lvl(win, ALICE))
            })
            .map(|i| i as u64 * 10)
            .expect("the burst is in the file")
    };
    let (one, two) = (onset(0), onset(1));
    assert!(one.abs_diff(two) <= 20, "ch1 at {one} ms, ch2 at {two} ms");
    // Each lands where it was played, behind by the network and the buffers.
    let played = at.as_millis() as u64;
    assert!(
        (played..played + 150).contains(&one),
        "played at {played}, heard at {one}"
    );
    // The file is as long as the call was connected, within a frame.
    let talked = w.completed()[0].talk_time.unwrap();
    let d = r.duration();
    let diff = (d.as_millis() as i64 - talked.as_millis() as i64).abs();
    assert!(diff <= 20, "recorded {d:?}, talked {talked:?}");
    let via: Vec<&str> = w
        .events
        .iter()
        .filter_map(|e| e.recording.as_ref())
        .map(|r| r.via)
        .collect();
    assert_eq!(via, ["plan"]);
}

#[test]
fn a_pause_keeps_the_time_as_silence_or_cuts_it_from_both_channels() {
    for behavior in ["silence", "skip"] {
        let (mut w, call, _) = answered_by_alice();
        let rec = record(&mut w, &call, RecordOptions::default());
        w.run(ms(1000));
        set(&mut w, &call, rec, "paused", Some(behavior));
        assert_eq!(
            get(&mut w, &call).recording.map(|r| r.status),
            Some("paused")
        );
        // Pausing twice is a conflict, clearly.
        let again = w.api(
            &["support"],
            ApiRequest::UpdateRecording {
                call: call.clone(),
                recording: rec.to_string(),
                status: sip_bridge::bridge::RecordingStatus::Paused(PauseBehavior::Silence),
            },
        );
        assert_eq!(again.unwrap_err().code, ApiErrorCode::Conflict);
        w.run(ms(1000));
        set(&mut w, &call, rec, "in-progress", None);
        w.run(ms(1000));
        set(&mut w, &call, rec, "stopped", None);
        w.run(ms(1000));
        let r = &w.recordings[&rec];
        let d = r.duration().as_millis() as u64;
        let want = if behavior == "skip" { 2000 } else { 3000 };
        assert!(d.abs_diff(want) <= 20, "{behavior}: {d} ms");
        let tl = r.timeline();
        let at = |ev: &str| tl.iter().find(|(_, e)| e == ev).map(|(t, _)| *t).unwrap();
        assert!(at("paused").abs_diff(1000) <= 20, "{tl:?}");
        let resumed = if behavior == "skip" { 1000 } else { 2000 };
        assert!(at("resumed").abs_diff(resumed) <= 20, "{behavior}: {tl:?}");
        if behavior == "silence" {
            silent(&r.channel(0, 1060, 1940), &[CALLER, ALICE], "ch1 paused");
            silent(&r.channel(1, 1060, 1940), &[CALLER, ALICE], "ch2 paused");
            has(&r.channel(0, 2200, 2900), CALLER, &[ALICE], "ch1 resumed");
        } else {
            // Both channels cut at once: the talk on either side of the cut.
            has(
                &r.channel(0, 1100, 1900),
                CALLER,
                &[ALICE],
                "ch1 after the cut",
            );
            has(
                &r.channel(1, 1100, 1900),
                ALICE,
                &[CALLER],
                "ch2 after the cut",
            );
        }
        // The call went on; the recording is over and may start again.
        assert_eq!(get(&mut w, &call).recording, None);
        let states: Vec<&str> = w
            .events
            .iter()
            .filter_map(|e| e.recording.as_ref())
            .map(|r| r.state)
            .collect();
        assert_eq!(states, ["started", "paused", "resumed", "stopped"]);
        let second = record(&mut w, &call, RecordOptions::default());
        assert_ne!(second, rec);
    }
}

#[test]
fn operators_record_with_the_capability_and_all_of_them_hear_of_it() {
    let (mut w, call, _) = answered_by_alice();
    w.send(
        0,
        serde_json::json!({"type": "record", "callId": call, "action": "start", "ref": "r1"}),
    );
    let msgs = w.got(0, "recording");
    let m = msgs.last().expect("alice hears of her recording");
    assert_eq!(
        (m["status"].as_str(), m["ref"].as_str()),
        (Some("in-progress"), Some("r1"))
    );
    let id = m["recordingId"].as_str().unwrap().to_string();
    // A second start is refused; a bad action too.
    w.send(
        0,
        serde_json::json!({"type": "record", "callId": call, "action": "start", "ref": "r2"}),
    );
    w.send(
        0,
        serde_json::json!({"type": "record", "callId": call, "action": "rewind", "ref": "r3"}),
    );
    let errors: Vec<Option<&str>> = w
        .got(0, "error")
        .iter()
        .map(|e| e["ref"].as_str())
        .collect();
    assert!(
        errors.contains(&Some("r2")) && errors.contains(&Some("r3")),
        "{errors:?}"
    );
    w.send(
        0,
        serde_json::json!({"type": "record", "callId": call, "action": "pause", "pauseBehavior": "skip"}),
    );
    w.run(ms(500));
    w.send(
        0,
        serde_json::json!({"type": "record", "callId": call, "action": "stop"}),
    );
    let statuses: Vec<&str> = w
        .got(0, "recording")
        .iter()
        .map(|m| m["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["in-progress", "paused", "stopped"]);
    let rec: RecordingId = id.parse().unwrap();
    w.run(ms(100));
    assert!(w.recordings[&rec].stopped.is_some());
    let via: Vec<&str> = w
        .events
        .iter()
        .filter_map(|e| e.recording.as_ref())
        .map(|r| r.via)
        .collect();
    assert_eq!(via, ["sdk", "sdk", "sdk"]);
}

#[test]
fn an_operator_without_the_capability_may_not_record() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.numbers[0].capabilities.agent =
        sip_bridge::roles::Capabilities::of(&[sip_bridge::roles::Capability::EndCall]);
    let (mut w, call, _) = answered_by_alice_in(cfg, &[], CALLER, ALICE);
    w.send(
        0,
        serde_json::json!({"type": "record", "callId": call, "action": "start", "ref": "r1"}),
    );
    let e = w.got(0, "error");
    let e = e.last().expect("refused");
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("FORBIDDEN"), Some("r1"))
    );
    assert!(w.recordings.is_empty());
    assert_eq!(get(&mut w, &call).recording, None);
}

#[test]
fn forks_stream_the_tracks_asked_their_insights_reach_the_operators_and_a_dead_one_goes() {
    let (mut w, call, _) = answered_by_alice();
    let fork = |tracks: &str, framing: &str| ApiRequest::Fork {
        call: call.clone(),
        options: sip_bridge::plan::ForkOptions::parse(
            "ws://consumer.example/audio",
            Some(tracks),
            Some(framing),
            None,
            Vec::new(),
        )
        .unwrap(),
    };
    let start = |w: &mut World, tracks, framing| match w.api(&["support"], fork(tracks, framing)) {
        Ok(ApiReply::Fork { id, status, call }) => {
            assert_eq!(status, "streaming");
            assert!(call.unwrap().forks.contains(&id));
            id.parse::<RecordingId>().unwrap()
        }
        other => panic!("fork: {other:?}"),
    };
    let inbound = start(&mut w, "inbound", "twilio");
    let both = start(&mut w, "both", "native");
    w.run(ms(2000));
    // The inbound track is the customer alone, at Twilio's 8 kHz.
    let f = &w.recordings[&inbound];
    let spec = f.spec.as_ref().unwrap();
    assert_eq!((spec.rate, spec.channels.count()), (8000, 1));
    assert_eq!(
        spec.fork.as_ref().map(|f| f.framing),
        Some(sip_bridge::contract::ForkFraming::Twilio)
    );
    let pcm = &f.pcm[8 * 300..];
    assert!(lvl(pcm, CALLER) - lvl(pcm, ALICE) > 30.0, "inbound");
    // Both tracks at the native 16 kHz: one frame each 20 ms.
    let b = &w.recordings[&both];
    let spec = b.spec.as_ref().unwrap();
    assert_eq!((spec.rate, spec.channels.count()), (16_000, 2));
    let frames = b.pcm.len() / (2 * 320);
    assert!((99..=101).contains(&frames), "{frames} frames in 2 s");
    // At most four at once.
    start(&mut w, "outbound", "native");
    start(&mut w, "both", "native");
    let fifth = w.api(&["support"], fork("both", "native"));
    assert_eq!(fifth.unwrap_err().code, ApiErrorCode::Conflict);
    // What the consumer says reaches alice.
    let id = sip_bridge::contract::CallId(call.trim_start_matches("c-").parse().unwrap());
    let now = w.now;
    let text = r#"{"event":"insight","kind":"transcript","track":"inbound","text":"440 Hz"}"#;
    w.bridge.handle_media_event(
        now,
        id,
        sip_bridge::contract::MediaEvent::ForkMessage {
            id: both,
            text: text.into(),
        },
    );
    // Not JSON, or not an object: dropped.
    w.bridge.handle_media_event(
        now,
        id,
        sip_bridge::contract::MediaEvent::ForkMessage {
            id: both,
            text: "[1,2]".into(),
        },
    );
    w.pump();
    let insights = w.got(0, "insight");
    assert_eq!(insights.len(), 1, "{insights:?}");
    assert_eq!(insights[0]["insight"]["text"], "440 Hz");
    assert_eq!(insights[0]["forkId"], both.to_string());
    // A consumer that is gone for good: its fork ends, the call goes on.
    w.bridge.handle_media_event(
        now,
        id,
        sip_bridge::contract::MediaEvent::ForkFailed {
            id: inbound,
            reason: "connection refused".into(),
        },
    );
    w.pump();
    w.run(ms(200));
    assert!(w.recordings[&inbound].stopped.is_some());
    let c = get(&mut w, &call);
    assert_eq!((c.state, c.forks.len()), ("connected", 3));
    let states: Vec<(&str, Option<&str>)> = w
        .events
        .iter()
        .filter(|e| e.kind == CallEventKind::Fork)
        .map(|e| {
            let r = e.recording.as_ref().unwrap();
            (r.state, r.reason.as_deref())
        })
        .collect();
    assert_eq!(states.len(), 5);
    assert_eq!(states[4], ("failed", Some("connection refused")));
    // Stopped by the API.
    let r = w.api(
        &["support"],
        ApiRequest::StopFork {
            call: call.clone(),
            fork: both.to_string(),
        },
    );
    assert!(
        matches!(
            r,
            Ok(ApiReply::Fork {
                status: "stopped",
                ..
            })
        ),
        "{r:?}"
    );
    w.run(ms(100));
    assert!(w.recordings[&both].stopped.is_some());
}

#[test]
fn an_operator_back_after_a_reload_is_told_the_recording_in_ready() {
    let (mut w, call, _leg) = answered_by_alice();
    let rec = record(&mut w, &call, RecordOptions::default());
    set(&mut w, &call, rec, "paused", Some("silence"));
    w.drop_ws(0);
    w.run(ms(1000));
    w.connect(0, &["support"]);
    let ready = w.got(0, "ready");
    let resumed = &ready.last().unwrap()["calls"][0];
    assert_eq!(resumed["callId"], call.as_str());
    assert_eq!(resumed["recording"]["id"], rec.to_string().as_str());
    assert_eq!(resumed["recording"]["status"], "paused");
    set(&mut w, &call, rec, "stopped", None);
    w.drop_ws(0);
    w.run(ms(1000));
    w.connect(0, &["support"]);
    let ready = w.got(0, "ready");
    assert!(ready.last().unwrap()["calls"][0].get("recording").is_none());
}
