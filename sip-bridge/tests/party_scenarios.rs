//! Calls of more than two parties through the whole bridge on virtual time:
//! added participants (operators, phones, AI agents), leaving and ending,
//! supervisors (listen, whisper, barge), hold per party, capabilities. Every
//! party plays its own tone, and every listener's audio is checked for the
//! tones it must hear and those it must not.

mod common;

use common::*;
use media_core::analysis::ToneGenerator;
use sip_bridge::bridge::{CallEventKind, DialStatus};
use sip_bridge::sip::dialog::UaEvent;
use sip_bridge::stream::StreamFormat;

/// Tones: the caller, operators alice / bob, a supervisor, a phone, an agent.
const CALLER: f64 = 440.0;
const ALICE: f64 = 1000.0;
const BOB: f64 = 1500.0;
const SAM: f64 = 2200.0;
const PHONE: f64 = 1700.0;
const AGENT: f64 = 2600.0;

/// A carrier call to `support` answered by alice (browser 0, talking); bob
/// (1) and sam (2) are online on other numbers. Returns the world, the call
/// and the carrier's leg.
fn answered_by_alice() -> (World, String, sip_bridge::sip::dialog::LegId) {
    let cfg = config(plan(&[(&["operators"], 20)]));
    answered_by_alice_in(cfg, &[("bob", &["sales"]), ("sam", &[])], CALLER, ALICE)
}

/// Bob is added to the call and answers.
fn add_bob(w: &mut World, call: &str) {
    w.add(0, call, "operator:bob");
    w.run(ms(100));
    let inc = w.got(1, "incoming");
    let last = inc.last().expect("bob is offered the call");
    assert_eq!(last["callId"], call);
    assert_eq!(last["invitedBy"], "alice");
    w.accept(1, call);
    w.talk(1, BOB);
    w.run(ms(2500));
}

/// The participant ids browser `i` was last told about, with their state.
fn participants(w: &World, i: usize) -> Vec<(String, String)> {
    let mut ps: std::collections::BTreeMap<String, String> = Default::default();
    for m in &w.browsers[i].inbox {
        match m["type"].as_str().unwrap_or("") {
            "participants" => {
                ps.clear();
                for p in m["participants"].as_array().unwrap() {
                    ps.insert(
                        p["id"].as_str().unwrap().into(),
                        p["state"].as_str().unwrap().into(),
                    );
                }
            }
            "participantJoined" | "participantUpdated" => {
                let p = &m["participant"];
                ps.insert(
                    p["id"].as_str().unwrap().into(),
                    p["state"].as_str().unwrap().into(),
                );
            }
            "participantLeft" => {
                ps.remove(m["participantId"].as_str().unwrap());
            }
            _ => {}
        }
    }
    ps.into_iter().collect()
}

#[test]
fn three_parties_each_hear_the_other_two_and_not_themselves() {
    let (mut w, call, leg) = answered_by_alice();
    add_bob(&mut w, &call);
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE, BOB],
        &[CALLER],
        "the caller",
    );
    World::assert_hears(
        &w.browsers[0].heard,
        48_000,
        &[CALLER, BOB],
        &[ALICE],
        "alice",
    );
    World::assert_hears(
        &w.browsers[1].heard,
        48_000,
        &[CALLER, ALICE],
        &[BOB],
        "bob",
    );
    // Both operators know who is in the call.
    for i in [0, 1] {
        let ps = participants(&w, i);
        assert_eq!(ps.len(), 3, "browser {i}: {ps:?}");
        assert!(ps.iter().all(|(_, s)| s == "joined"), "{ps:?}");
    }
    let joined = w
        .events
        .iter()
        .filter(|e| e.kind == CallEventKind::PartyJoined)
        .count();
    assert_eq!(joined, 3, "the caller, alice, bob");
    // Bob leaves: the call goes on for the other two, who hear each other.
    w.send(1, serde_json::json!({"type": "leave", "callId": call}));
    w.browsers[1].tone = None;
    w.run(ms(2000));
    assert_eq!(w.ended_reason(1, &call).as_deref(), Some("hangup"));
    assert!(
        w.ended_reason(0, &call).is_none(),
        "alice is still in the call"
    );
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE],
        &[BOB, CALLER],
        "the caller after bob left",
    );
    assert!(
        w.bridge.presence().is_ready("bob") || w.bridge.presence().active_call("bob").is_none()
    );
    let left: Vec<_> = w.got(0, "participantLeft");
    assert_eq!(left.last().unwrap()["reason"], "hangup");
    // The caller hangs up: the last two are done.
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(1000));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("remote_hangup"));
    let done = w.completed()[0];
    assert_eq!(done.status, Some(DialStatus::Completed));
    assert_eq!(done.parties.len(), 3, "every party in the CDR");
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn four_parties_with_mixed_codecs_hear_each_other() {
    let (mut w, call, leg) = answered_by_alice();
    // A phone through the trunk, answering PCMA.
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    w.carrier.answer_pcma.push("+15550222".into());
    w.add(0, &call, "pstn:+15550222");
    w.run(ms(500));
    let (phone, _) = *w.carrier_incoming().last().expect("the phone is called");
    assert_eq!(w.carrier.media[&phone].pt, 8, "the phone answered PCMA");
    w.carrier.media.get_mut(&phone).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(PHONE, 6000.0)]));
    // An AI agent speaking PCM16 at 24 kHz.
    let url = "ws://agent.example/ws";
    w.agent(url, StreamFormat::Pcm24k, AgentMode::Up);
    w.add(0, &call, &format!("stream:{url}"));
    w.run(ms(200));
    w.agent_tone(url, AGENT, 12.0);
    w.run(ms(3000));
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE, PHONE, AGENT],
        &[CALLER],
        "the PCMU caller",
    );
    World::assert_hears(
        &w.browsers[0].heard,
        48_000,
        &[CALLER, PHONE, AGENT],
        &[ALICE],
        "alice (Opus)",
    );
    World::assert_hears(
        &w.carrier.media[&phone].heard,
        8000,
        &[CALLER, ALICE, AGENT],
        &[PHONE],
        "the PCMA phone",
    );
    World::assert_hears(
        &w.agents[url].heard,
        24_000,
        &[CALLER, ALICE, PHONE],
        &[AGENT],
        "the agent (PCM16 24 kHz)",
    );
    let ps = participants(&w, 0);
    assert_eq!(ps.len(), 4, "{ps:?}");
}

/// 20 ms frames of `pcm[range]` at `rate` with no sample over 100: silence.
fn silent_frames(pcm: &[i16], rate: usize, range: std::ops::Range<usize>) -> usize {
    pcm[range]
        .chunks(rate / 50)
        .filter(|f| f.iter().all(|s| s.abs() < 100))
        .count()
}

/// A phone (`number`, playing its tone) joins the call and leaves it again;
/// returns where, in what the caller heard, it was added and where it left.
fn phone_joins_and_leaves(
    w: &mut World,
    call: &str,
    leg: sip_bridge::sip::dialog::LegId,
    number: &str,
) -> (usize, usize) {
    w.carrier.auto_answer = Some(vec![(200, true)]);
    let start = w.carrier.media[&leg].heard.len();
    w.add(0, call, number);
    w.run(ms(5));
    let (phone, _) = *w.carrier_incoming().last().unwrap();
    w.carrier.media.get_mut(&phone).unwrap().tone =
        Some(ToneGenerator::new(8000, &[(PHONE, 6000.0)]));
    w.run(ms(1500));
    let left = w.carrier.media[&leg].heard.len();
    let now = w.now;
    w.carrier.ua.hangup(now, phone).unwrap();
    w.run(ms(1500));
    (start, left)
}

#[test]
fn a_party_joins_and_leaves_without_a_gap_or_a_click_for_the_others() {
    let (mut w, call, leg) = answered_by_alice();
    add_bob(&mut w, &call);
    // Three parties are mixed. With alice and bob quiet, what the caller hears
    // is the fourth party alone: it must come in and go out over a frame (the
    // mixer's ramp), where a switch would jump to or from its whole amplitude.
    w.browsers[0].tone = None;
    w.browsers[1].tone = None;
    w.run(ms(1000));
    let (start, _) = phone_joins_and_leaves(&mut w, &call, leg, "pstn:+15550333");
    let pcm = w.carrier.media[&leg].heard[start..].to_vec();
    let peaks: Vec<i32> = pcm
        .chunks(20)
        .map(|c| c.iter().map(|s| i32::from(*s).abs()).max().unwrap_or(0))
        .collect();
    let full = *peaks.iter().max().unwrap();
    assert!(full > 4000, "the phone was heard (peak {full})");
    let jumps: Vec<(usize, i32)> = peaks
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i, (w[1] - w[0]).abs()))
        .filter(|(_, d)| *d > full / 2)
        .collect();
    assert!(
        jumps.is_empty(),
        "the phone's level jumped in 2.5 ms (window, jump) of {full}: {jumps:?}"
    );
    // With alice talking, a second phone joins and leaves: alice's tone never
    // drops out for the caller, nor the caller's for alice.
    w.talk(0, ALICE);
    w.run(ms(1000));
    let (start, left) = phone_joins_and_leaves(&mut w, &call, leg, "pstn:+15550334");
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE],
        &[CALLER, PHONE],
        "the caller after the phone left",
    );
    let pcm = &w.carrier.media[&leg].heard;
    for (what, at) in [("join", start), ("leave", left)] {
        assert_eq!(
            silent_frames(pcm, 8000, at - 800..at + 4000),
            0,
            "{what}: a gap"
        );
    }
    let a = &w.browsers[0].heard;
    let n = a.len();
    assert_eq!(silent_frames(a, 48_000, n - 240_000..n), 0, "alice: a gap");
}

#[test]
fn listen_whisper_and_barge_switch_without_rejoining() {
    let (mut w, call, leg) = answered_by_alice();
    w.monitor(2, &call, "listen");
    w.talk(2, SAM);
    w.run(ms(2500));
    assert_eq!(w.got(2, "answer").len(), 1);
    assert_eq!(w.got(2, "connected").len(), 1);
    let sam_ps = w.got(2, "participants");
    assert_eq!(sam_ps.last().unwrap()["capabilities"][0], "switch_monitor");
    let caller = |w: &World| w.carrier.media[&leg].heard.clone();
    // listen: sam hears both; nobody hears sam.
    World::assert_hears(
        &w.browsers[2].heard,
        48_000,
        &[CALLER, ALICE],
        &[SAM],
        "sam listening",
    );
    World::assert_hears(
        &caller(&w),
        8000,
        &[ALICE],
        &[SAM, CALLER],
        "the caller (sam listens)",
    );
    World::assert_hears(
        &w.browsers[0].heard,
        48_000,
        &[CALLER],
        &[SAM, ALICE],
        "alice (sam listens)",
    );
    // whisper: alice hears sam, the caller does not.
    w.send(
        2,
        serde_json::json!({"type": "monitorMode", "callId": call, "mode": "whisper", "ref": "m2"}),
    );
    w.run(ms(2000));
    World::assert_hears(
        &w.browsers[0].heard,
        48_000,
        &[CALLER, SAM],
        &[ALICE],
        "alice (sam whispers)",
    );
    World::assert_hears(
        &caller(&w),
        8000,
        &[ALICE],
        &[SAM, CALLER],
        "the caller (sam whispers)",
    );
    World::assert_hears(
        &w.browsers[2].heard,
        48_000,
        &[CALLER, ALICE],
        &[SAM],
        "sam whispering",
    );
    // barge: everyone hears everyone.
    w.send(
        2,
        serde_json::json!({"type": "monitorMode", "callId": call, "mode": "barge"}),
    );
    w.run(ms(2000));
    World::assert_hears(
        &caller(&w),
        8000,
        &[ALICE, SAM],
        &[CALLER],
        "the caller (sam barged)",
    );
    World::assert_hears(
        &w.browsers[0].heard,
        48_000,
        &[CALLER, SAM],
        &[ALICE],
        "alice (sam barged)",
    );
    World::assert_hears(
        &w.browsers[2].heard,
        48_000,
        &[CALLER, ALICE],
        &[SAM],
        "sam barged",
    );
    // And back to listen.
    w.send(
        2,
        serde_json::json!({"type": "monitorMode", "callId": call, "mode": "listen"}),
    );
    w.run(ms(2000));
    World::assert_hears(
        &caller(&w),
        8000,
        &[ALICE],
        &[SAM, CALLER],
        "the caller (sam listens again)",
    );
    assert_eq!(w.got(2, "answer").len(), 1, "no new peer connection");
    let upd = w.got(2, "participantUpdated");
    assert!(
        upd.iter()
            .any(|m| m["ref"] == "m2" && m["participant"]["monitor"] == "whisper")
    );
    // The supervisor keeps nothing alive: the caller and alice are the call.
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("remote_hangup"));
    assert_eq!(w.ended_reason(2, &call).as_deref(), Some("remote_hangup"));
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn one_party_on_hold_while_the_others_talk() {
    let (mut w, call, leg) = answered_by_alice();
    add_bob(&mut w, &call);
    let bob_id = participants(&w, 0)
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| id == "p-2")
        .expect("bob is p-2");
    w.send(0, serde_json::json!({"type": "hold", "callId": call, "on": true, "participantId": bob_id, "ref": "h"}));
    let bob_heard = w.browsers[1].heard.len();
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE],
        &[BOB, CALLER],
        "the caller (bob held)",
    );
    World::assert_hears(
        &w.browsers[0].heard,
        48_000,
        &[CALLER],
        &[BOB, ALICE],
        "alice (bob held)",
    );
    let late = &w.browsers[1].heard[bob_heard..];
    assert!(
        late.len() < 48_000 / 5,
        "a held party is sent nothing ({} samples in 2 s)",
        late.len()
    );
    let upd = w.got(0, "participantUpdated");
    let held = upd
        .iter()
        .find(|m| m["ref"] == "h")
        .expect("the hold is confirmed");
    assert_eq!(held["participant"]["state"], "held");
    // Resumed: everyone again.
    w.send(
        0,
        serde_json::json!({"type": "hold", "callId": call, "on": false, "participantId": bob_id}),
    );
    w.run(ms(2000));
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE, BOB],
        &[CALLER],
        "the caller (bob back)",
    );
    World::assert_hears(
        &w.browsers[1].heard,
        48_000,
        &[CALLER, ALICE],
        &[BOB],
        "bob back",
    );
}

/// Alice adds `target`; returns the `error` she got, if any.
fn add_and_wait(w: &mut World, call: &str, target: &str, wait: u64) -> Option<String> {
    let before = w.got(0, "error").len();
    w.add(0, call, target);
    w.run(ms(wait));
    w.got(0, "error")
        .get(before)
        .map(|e| e["code"].as_str().unwrap().to_string())
}

#[test]
fn an_added_party_that_is_busy_does_not_answer_or_fails_leaves_the_call_as_it_was() {
    let (mut w, call, leg) = answered_by_alice();
    w.carrier.auto_answer = Some(vec![(486, false)]);
    assert_eq!(
        add_and_wait(&mut w, &call, "+15550444", 500).as_deref(),
        Some("TARGET_BUSY")
    );
    w.carrier.auto_answer = Some(vec![(503, false)]);
    assert_eq!(
        add_and_wait(&mut w, &call, "+15550445", 500).as_deref(),
        Some("TARGET_FAILED")
    );
    // Bob rings and never answers: the add rings out after its timeout.
    w.send(0, serde_json::json!({"type": "addParticipant", "callId": call, "target": "operator:bob", "timeout": 5, "ref": "slow"}));
    w.run(ms(6000));
    let errors = w.got(0, "error");
    let e = errors.last().unwrap();
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("NO_ANSWER"), Some("slow"))
    );
    assert_eq!(w.ended_reason(1, &call).as_deref(), Some("no_answer"));
    // Nobody there at all.
    assert_eq!(
        add_and_wait(&mut w, &call, "operator:nobody", 100).as_deref(),
        Some("TARGET_BUSY")
    );
    // Through all of it the call went on.
    w.carrier.media.get_mut(&leg).unwrap().heard.clear();
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE],
        &[CALLER],
        "the caller after the failed adds",
    );
    assert!(w.ended_reason(0, &call).is_none());
    let left: Vec<String> = w
        .got(0, "participantLeft")
        .iter()
        .map(|m| m["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["busy", "failed", "no_answer"]);
    assert_eq!(participants(&w, 0).len(), 2);
}

#[test]
fn a_party_added_while_the_call_ends_stops_ringing() {
    let (mut w, call, leg) = answered_by_alice();
    w.add(0, &call, "operator:bob");
    // The caller's BYE is handled in the same instant as the add.
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("remote_hangup"));
    assert_eq!(
        w.ended_reason(1, &call).as_deref(),
        Some("remote_hangup"),
        "bob stops ringing"
    );
    // An add for the call now is refused.
    w.add(0, &call, "operator:bob");
    let e = w.got(0, "error");
    assert!(
        e.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("unknown callId")
    );
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn the_call_ends_when_the_last_party_keeping_it_alive_leaves() {
    let (mut w, call, leg) = answered_by_alice();
    w.monitor(2, &call, "listen");
    w.run(ms(500));
    // Alice leaves: the caller is alone with a silent supervisor.
    w.send(0, serde_json::json!({"type": "leave", "callId": call}));
    w.run(ms(500));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("hangup"));
    assert_eq!(w.ended_reason(2, &call).as_deref(), Some("remote_hangup"));
    assert!(
        w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg: l, .. } if *l == leg)),
        "the caller got BYE"
    );
    assert_eq!(w.completed().len(), 1);
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn a_party_with_the_right_ends_the_call_for_everyone() {
    let (mut w, call, leg) = answered_by_alice();
    add_bob(&mut w, &call);
    w.send(0, serde_json::json!({"type": "end", "callId": call}));
    w.run(ms(500));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("hangup"));
    assert_eq!(w.ended_reason(1, &call).as_deref(), Some("remote_hangup"));
    assert!(
        w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg: l, .. } if *l == leg))
    );
    w.run(ms(40_000));
    w.assert_idle();
    assert!(
        w.bridge.presence().is_ready("alice") && w.bridge.presence().active_call("bob").is_none()
    );
}

#[test]
fn a_capability_refused_is_a_clear_error_and_changes_nothing() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.numbers[0].capabilities.agent =
        sip_bridge::roles::Capabilities::of(&[sip_bridge::roles::Capability::HoldParticipant]);
    let mut w = World::new(cfg);
    w.operator("alice", &["support"]);
    w.operator("bob", &["sales"]);
    w.operator("sam", &[]);
    let leg = w.carrier_call("+15550100", CALLER);
    w.run(ms(200));
    let call = w.last_incoming(0).unwrap();
    w.accept(0, &call);
    w.talk(0, ALICE);
    w.run(ms(1500));
    let caps = w.got(0, "participants");
    assert_eq!(
        caps.last().unwrap()["capabilities"],
        serde_json::json!(["hold_participant"])
    );
    for (msg, what) in [
        (
            serde_json::json!({"type": "addParticipant", "callId": call, "target": "operator:bob", "ref": "r1"}),
            "add",
        ),
        (
            serde_json::json!({"type": "end", "callId": call, "ref": "r1"}),
            "end",
        ),
        (
            serde_json::json!({"type": "removeParticipant", "callId": call, "participantId": "p-0", "ref": "r1"}),
            "remove",
        ),
    ] {
        let before = w.got(0, "error").len();
        w.send(0, msg);
        w.run(ms(100));
        let errors = w.got(0, "error");
        assert_eq!(errors.len(), before + 1, "{what}");
        let e = errors.last().unwrap();
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some("FORBIDDEN"), Some("r1")),
            "{what}"
        );
        assert!(
            e["message"].as_str().unwrap().starts_with("you may not"),
            "{what}"
        );
    }
    assert!(w.got(1, "incoming").is_empty(), "bob was not rung");
    assert!(w.ended_reason(0, &call).is_none());
    // A listening supervisor may switch its mode but not remove anyone.
    w.monitor(2, &call, "listen");
    w.run(ms(300));
    w.send(2, serde_json::json!({"type": "removeParticipant", "callId": call, "participantId": "p-1", "ref": "x"}));
    assert_eq!(w.got(2, "error").last().unwrap()["code"], "FORBIDDEN");
    w.run(ms(1000));
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[ALICE],
        &[CALLER],
        "the call goes on",
    );
}

#[test]
fn a_step_with_join_all_keeps_everyone_who_answers() {
    let mut cfg = config(plan(&[(&["pstn:+15550601", "pstn:+15550602"], 20)]));
    cfg.numbers[0].plan.steps[0].join = sip_bridge::bridge::Join::All;
    let mut w = World::new(cfg);
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let caller = w.carrier_call("+15550100", CALLER);
    w.run(ms(300));
    let far: Vec<_> = w.carrier_incoming().into_iter().map(|(l, _)| l).collect();
    assert_eq!(far.len(), 2, "both rung");
    for (l, hz) in far.iter().zip([BOB, PHONE]) {
        w.carrier.media.get_mut(l).unwrap().tone = Some(ToneGenerator::new(8000, &[(hz, 6000.0)]));
    }
    w.run(ms(2500));
    World::assert_hears(
        &w.carrier.media[&caller].heard,
        8000,
        &[BOB, PHONE],
        &[CALLER],
        "the caller",
    );
    World::assert_hears(
        &w.carrier.media[&far[0]].heard,
        8000,
        &[CALLER, PHONE],
        &[BOB],
        "the first to answer",
    );
    World::assert_hears(
        &w.carrier.media[&far[1]].heard,
        8000,
        &[CALLER, BOB],
        &[PHONE],
        "the second",
    );
    let answered = w
        .carrier_events()
        .iter()
        .filter(|e| matches!(e, UaEvent::Answered { .. }))
        .count();
    assert_eq!(answered, 1, "the caller is answered once");
    let joined = w
        .events
        .iter()
        .filter(|e| e.kind == CallEventKind::PartyJoined)
        .count();
    assert_eq!(joined, 3);
}

#[test]
fn a_meet_me_room_joins_every_caller() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    let mut room = cfg.numbers[0].clone();
    room.id = "room".into();
    room.e164 = "+15550500".into();
    room.room = true;
    cfg.numbers.push(room);
    let mut w = World::new(cfg);
    let legs: Vec<_> = [CALLER, BOB, PHONE]
        .iter()
        .map(|hz| {
            let l = w.carrier_call("+15550500", *hz);
            w.run(ms(300));
            l
        })
        .collect();
    w.run(ms(2500));
    assert_eq!(w.bridge.calls(), 1, "one call for the room");
    let tones = [CALLER, BOB, PHONE];
    for (i, l) in legs.iter().enumerate() {
        let others: Vec<f64> = tones.iter().copied().filter(|t| *t != tones[i]).collect();
        World::assert_hears(
            &w.carrier.media[l].heard,
            8000,
            &others,
            &[tones[i]],
            "a caller in the room",
        );
    }
    // Callers leave one by one; the room ends with the last.
    for l in &legs {
        let now = w.now;
        w.carrier.ua.hangup(now, *l).unwrap();
        w.run(ms(300));
    }
    assert_eq!(w.completed().len(), 1);
    assert_eq!(w.completed()[0].parties.len(), 3);
    w.run(ms(40_000));
    w.assert_idle();
}
