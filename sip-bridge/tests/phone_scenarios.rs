//! SIP phones as operators through the whole bridge on virtual time: the
//! carrier's UA (our test UA) registers as alice's desk phone with digest
//! credentials; a carrier call to `support` rings alice in her browser and
//! on her phone at once; whichever answers first is alice in the call, the
//! other is told `taken_by_other` (the phone: a CANCEL that says "Call
//! completed elsewhere"); alice is busy while she talks on either.

mod common;

use std::time::Duration;

use common::*;
use sip_bridge::bridge::{ApiRequest, BridgeConfig};
use sip_bridge::registrar::{Lookup, PhoneAccount};
use sip_bridge::sip::auth::Credentials;
use sip_bridge::sip::dialog::{RegisterParams, UaEvent};
use sip_bridge::sip::message::{Peer, SipHeaders};

const CALLER: f64 = 440.0;
const ALICE: f64 = 1000.0;
const PHONE: f64 = 1700.0;

fn phone_config() -> BridgeConfig {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    let mut desk = PhoneAccount::new("alice-desk", "alice", "sbc", "pw");
    desk.numbers = vec!["support".into()];
    cfg.phones = vec![desk];
    cfg
}

/// The carrier's UA registers as alice's desk phone.
fn register_phone(w: &mut World) {
    let now = w.now;
    w.carrier.ua.register(
        now,
        RegisterParams {
            registrar: format!("sip:{SBC_IP}"),
            aor: format!("sip:alice-desk@{SBC_IP}"),
            expires: Duration::from_secs(600),
            peer: Peer::udp(addr(SBC_SIP)),
            credentials: Some(Credentials {
                username: "alice-desk".into(),
                password: "pw".into(),
            }),
        },
    );
    w.run(ms(300));
    assert_eq!(w.bridge.registrar().map(|r| r.len()), Some(1));
    assert!(w.bridge.presence().has_phone("alice"));
}

/// The INVITE ringing the phone (the only one the carrier's UA receives).
fn phone_rings(w: &World) -> sip_bridge::sip::dialog::LegId {
    let incoming = w.carrier_incoming();
    assert_eq!(incoming.len(), 1, "the phone rings once");
    incoming[0].0
}

/// The phone picks up (PCMU) and plays its tone.
fn phone_answers(w: &mut World, phone: sip_bridge::sip::dialog::LegId) {
    let offer = w.carrier_incoming()[0].1.clone();
    let answer = w.carrier.answer_for(phone, &offer);
    let now = w.now;
    w.carrier
        .ua
        .respond(now, phone, 200, Some(answer.as_bytes()), &[])
        .unwrap();
    w.carrier.media.get_mut(&phone).unwrap().tone = Some(media_core::analysis::ToneGenerator::new(
        8000,
        &[(PHONE, 6000.0)],
    ));
}

#[test]
fn the_phone_answers_first_and_the_browser_hears_taken_by_other() {
    let mut w = World::new(phone_config());
    assert_eq!(w.operator("alice", &["support"]), 0);
    register_phone(&mut w);
    let leg = w.carrier_call("+15550100", CALLER);
    w.run(ms(200));
    let call = w.last_incoming(0).expect("the browser rings");
    let phone = phone_rings(&w);
    phone_answers(&mut w, phone);
    w.run(ms(2000));
    assert_eq!(w.ended_reason(0, &call).as_deref(), Some("taken_by_other"));
    World::assert_hears(
        &w.carrier.media[&leg].heard,
        8000,
        &[PHONE],
        &[ALICE],
        "caller",
    );
    World::assert_hears(
        &w.carrier.media[&phone].heard,
        8000,
        &[CALLER],
        &[],
        "phone",
    );
    // Alice is busy on her phone: her browser is not rung by a second call.
    assert!(w.bridge.presence().active_call("alice").is_some());
    w.carrier_call("+15550100", CALLER);
    w.run(ms(200));
    assert_eq!(
        w.got(0, "incoming").len(),
        1,
        "rung once, for the first call"
    );
    // The first call, as the events tell it: answered by alice.
    let c = get(&mut w, &call);
    assert!(
        c.participants
            .iter()
            .any(|p| p.role == "agent" && p.state == "joined"),
        "{:?}",
        c.participants
    );
    w.api(&["support"], ApiRequest::Hangup { call }).unwrap();
    w.run(ms(500));
    assert!(w.bridge.presence().active_call("alice").is_none());
}

#[test]
fn the_browser_answers_first_and_the_phone_is_cancelled_as_completed_elsewhere() {
    let mut w = World::new(phone_config());
    assert_eq!(w.operator("alice", &["support"]), 0);
    register_phone(&mut w);
    w.carrier_call("+15550100", CALLER);
    w.run(ms(200));
    let call = w.last_incoming(0).expect("the browser rings");
    let phone = phone_rings(&w);
    let now = w.now;
    w.carrier.ua.respond(now, phone, 180, None, &[]).unwrap();
    w.run(ms(100));
    w.accept(0, &call);
    w.talk(0, ALICE);
    w.run(ms(1500));
    assert_eq!(w.got(0, "connected").len(), 1);
    assert!(
        w.sip_to_carrier.iter().any(|l| l.starts_with("CANCEL ")),
        "{:?}",
        w.sip_to_carrier
    );
    assert!(w.carrier_events().iter().any(|e| matches!(
        e,
        UaEvent::Terminated { leg, .. } if *leg == phone
    )));
    w.api(&["support"], ApiRequest::Hangup { call }).unwrap();
    w.run(ms(500));
    w.assert_idle();
}

#[test]
fn a_phone_only_operator_is_rung_and_gone_when_its_registration_lapses() {
    // No keep-alives: only the registration's expiry tells.
    let mut cfg = phone_config();
    cfg.registrar.keepalive = None;
    let mut w = World::new(cfg);
    register_phone(&mut w);
    // No browser: the phone alone rings for `operators`.
    let leg = w.carrier_call("+15550100", CALLER);
    w.run(ms(200));
    let phone = phone_rings(&w);
    phone_answers(&mut w, phone);
    w.run(ms(1500));
    World::assert_hears(&w.carrier.media[&leg].heard, 8000, &[PHONE], &[], "caller");
    assert!(w.bridge.presence().active_call("alice").is_some());
    let now = w.now;
    w.carrier.ua.hangup(now, phone).unwrap();
    w.run(ms(500));
    assert!(w.bridge.presence().active_call("alice").is_none());
    // The phone goes away (its refreshes are lost): once its binding lapses
    // alice is no operator any more, and the next call rings nobody.
    w.blackhole = Some(addr(CARRIER_SIP));
    w.run(Duration::from_secs(590));
    assert!(w.bridge.presence().has_phone("alice"), "still registered");
    w.run(Duration::from_secs(20));
    assert!(!w.bridge.presence().has_phone("alice"));
    assert_eq!(w.bridge.registrar().map(|r| r.len()), Some(0));
    assert!(!w.bridge.presence().is_ready("alice"));
}

/// The phone at [`PHONE_SIP`] registers as alice's desk phone.
fn register_desk_phone(w: &mut World) {
    register_as(w, "alice-desk", "pw");
    assert!(w.bridge.presence().has_phone("alice"));
}

fn desk_credentials(password: &str) -> Credentials {
    Credentials {
        username: "alice-desk".into(),
        password: password.into(),
    }
}

/// How many INVITEs the phone at [`PHONE_SIP`] received.
fn phone_rung(w: &World) -> usize {
    w.phone.as_ref().map_or(0, |p| {
        p.events
            .iter()
            .filter(|e| matches!(e, UaEvent::IncomingInvite { .. }))
            .count()
    })
}

/// The final status of the phone's call `leg`, once it failed.
fn phone_failed(w: &World, leg: sip_bridge::sip::dialog::LegId) -> Option<u16> {
    w.phone.as_ref()?.events.iter().find_map(|e| match e {
        UaEvent::Failed { leg: l, status, .. } if *l == leg => Some(*status),
        _ => None,
    })
}

#[test]
fn a_phone_dials_out_through_the_trunk_showing_its_operators_number() {
    let mut w = World::new(phone_config());
    register_desk_phone(&mut w);
    w.carrier.auto_answer = Some(vec![(200, true)]);
    let challenged = w.bridge.registrar().unwrap().stats().challenged;
    let from = format!("sip:alice-desk@{SBC_IP}");
    let leg = w.phone_dials("+15557770", &from, PHONE, Some(desk_credentials("pw")));
    w.run(ms(300));
    // Challenged (407), then placed: the carrier sees support's number.
    assert_eq!(
        w.bridge.registrar().unwrap().stats().challenged,
        challenged + 1
    );
    let invite = w
        .carrier_events()
        .iter()
        .find_map(|e| match e {
            UaEvent::IncomingInvite { leg, request, .. } => Some((*leg, request.clone())),
            _ => None,
        })
        .expect("the call goes out through the trunk");
    assert!(invite.1.uri.to_string().starts_with("sip:+15557770@"));
    let from = invite.1.header_from().unwrap().to_string();
    assert!(from.contains("+15550100"), "caller ID: {from}");
    w.carrier.media.get_mut(&invite.0).unwrap().tone = Some(
        media_core::analysis::ToneGenerator::new(8000, &[(CALLER, 6000.0)]),
    );
    w.run(ms(2000));
    let phone = w.phone.as_ref().unwrap();
    World::assert_hears(&phone.media[&leg].heard, 8000, &[CALLER], &[], "phone");
    World::assert_hears(
        &w.carrier.media[&invite.0].heard,
        8000,
        &[PHONE],
        &[],
        "far end",
    );
    // Alice is busy on it: a call to support does not ring her phone again.
    let call = w.bridge.presence().active_call("alice").expect("busy");
    let rung = phone_rung(&w);
    w.carrier.auto_answer = None;
    w.carrier_call("+15550100", CALLER);
    w.run(ms(300));
    assert_eq!(phone_rung(&w), rung, "a busy operator's phone is not rung");
    // The events tell the call as alice's, outbound, from support.
    let ev = w
        .events
        .iter()
        .find(|e| e.call_id == call)
        .expect("events of the phone's call");
    assert_eq!(ev.direction, sip_bridge::bridge::Direction::Outbound);
    assert_eq!(
        (ev.from.as_str(), ev.to.as_str()),
        ("+15550100", "+15557770")
    );
    let now = w.now;
    w.phone.as_mut().unwrap().ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    assert_ne!(w.bridge.presence().active_call("alice"), Some(call));
}

#[test]
fn a_phone_may_not_show_a_number_it_does_not_own_nor_call_unauthenticated() {
    let mut w = World::new(phone_config());
    register_desk_phone(&mut w);
    w.carrier.auto_answer = Some(vec![(200, true)]);
    // `sales` is not alice's number.
    let leg = w.phone_dials(
        "+15557770",
        &format!("sip:+15550200@{SBC_IP}"),
        PHONE,
        Some(desk_credentials("pw")),
    );
    w.run(ms(300));
    assert_eq!(phone_failed(&w, leg), Some(403));
    // Without credentials: the 407 is final; with a wrong password too, and
    // it counts toward the ban.
    let from = format!("sip:alice-desk@{SBC_IP}");
    let leg = w.phone_dials("+15557770", &from, PHONE, None);
    w.run(ms(300));
    assert_eq!(phone_failed(&w, leg), Some(407));
    let failures = w.bridge.registrar().unwrap().stats().auth_failures;
    let leg = w.phone_dials("+15557770", &from, PHONE, Some(desk_credentials("nope")));
    w.run(ms(300));
    assert_eq!(phone_failed(&w, leg), Some(407));
    // Each wrong answer counts (our UA answers a fresh nonce once more).
    let counted = w.bridge.registrar().unwrap().stats().auth_failures - failures;
    assert!((1..=2).contains(&counted), "{counted}");
    // Nothing dialled we do not know.
    let leg = w.phone_dials("nobody", &from, PHONE, Some(desk_credentials("pw")));
    w.run(ms(300));
    assert_eq!(phone_failed(&w, leg), Some(404));
    assert!(
        !w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::IncomingInvite { .. })),
        "nothing reached the trunk"
    );
    assert!(w.bridge.presence().active_call("alice").is_none());
}

#[test]
fn with_ring_both_off_the_phone_rings_only_while_no_browser_takes_calls() {
    let mut cfg = phone_config();
    cfg.registrar.ring_both = false;
    let mut w = World::new(cfg);
    assert_eq!(w.operator("alice", &["support"]), 0);
    register_desk_phone(&mut w);
    let first = w.carrier_call("+15550100", CALLER);
    w.run(ms(300));
    assert!(w.last_incoming(0).is_some(), "the browser rings");
    assert_eq!(phone_rung(&w), 0, "not the phone");
    let now = w.now;
    w.carrier.ua.hangup(now, first).unwrap();
    w.run(ms(300));
    // The browser takes no more calls: the next call rings the phone.
    w.send(0, serde_json::json!({"type": "offline"}));
    w.run(ms(300));
    w.carrier_call("+15550100", CALLER);
    w.run(ms(300));
    assert_eq!(phone_rung(&w), 1);
}

#[test]
fn a_vanished_phone_misses_three_keepalives_and_is_offline_long_before_its_expiry() {
    let mut w = World::new(phone_config());
    register_desk_phone(&mut w);
    // It answers the keep-alives (OPTIONS every 30 s) while it is there.
    w.run(Duration::from_secs(100));
    let r = w.bridge.registrar().unwrap();
    assert_eq!(r.stats().keepalives, 3);
    assert_eq!(r.bindings("alice")[0].misses, 0);
    assert!(w.bridge.presence().has_phone("alice"));
    // Gone (unplugged, its NAT closed): the third keep-alive unanswered in a
    // row ends it, about two minutes later, not at its 600 s expiry.
    w.blackhole = Some(addr(PHONE_SIP));
    w.run(Duration::from_secs(90));
    assert!(w.bridge.presence().has_phone("alice"), "two misses");
    w.run(Duration::from_secs(40));
    assert!(!w.bridge.presence().has_phone("alice"));
    assert_eq!(w.bridge.registrar().unwrap().stats().unreachable, 1);
    // Nobody to ring: a call to support is not answered by a phone.
    w.carrier_call("+15550100", CALLER);
    w.run(ms(300));
    assert_eq!(phone_rung(&w), 0);
}

#[test]
fn a_phone_transfers_its_caller_with_its_transfer_key() {
    let mut w = World::new(phone_config());
    register_desk_phone(&mut w);
    let caller = w.carrier_call("+15550100", CALLER);
    w.run(ms(300));
    let (phone_leg, offer) = {
        let p = w.phone.as_ref().unwrap();
        p.events
            .iter()
            .find_map(|e| match e {
                UaEvent::IncomingInvite { leg, request, .. } => Some((*leg, request.body.clone())),
                _ => None,
            })
            .expect("the phone rings")
    };
    let now = w.now;
    let p = w.phone.as_mut().unwrap();
    let answer = p.answer_for(phone_leg, &offer);
    p.ua.respond(now, phone_leg, 200, Some(answer.as_bytes()), &[])
        .unwrap();
    p.media.get_mut(&phone_leg).unwrap().tone = Some(media_core::analysis::ToneGenerator::new(
        8000,
        &[(PHONE, 6000.0)],
    ));
    w.run(ms(1000));
    // Alice presses Transfer and dials +15557770 (a blind REFER, RFC 3515).
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let now = w.now;
    w.phone
        .as_mut()
        .unwrap()
        .ua
        .refer(now, phone_leg, &format!("sip:+15557770@{SBC_IP}"), true)
        .unwrap();
    w.run(ms(500));
    let target = w
        .carrier_events()
        .iter()
        .find_map(|e| match e {
            UaEvent::IncomingInvite { leg, request, .. }
                if request.uri.to_string().starts_with("sip:+15557770@") =>
            {
                Some(*leg)
            }
            _ => None,
        })
        .expect("the target is called through the trunk");
    w.carrier.media.get_mut(&target).unwrap().tone = Some(
        media_core::analysis::ToneGenerator::new(8000, &[(ALICE, 6000.0)]),
    );
    w.run(ms(1500));
    // The phone is released; the caller talks to the target.
    assert!(
        w.phone.as_ref().unwrap().events.iter().any(|e| matches!(
            e,
            UaEvent::Terminated { leg, .. } if *leg == phone_leg
        )),
        "the phone left once the target answered"
    );
    let heard = &w.carrier.media[&caller].heard;
    World::assert_hears(
        &heard[heard.len() / 2..],
        8000,
        &[ALICE],
        &[PHONE],
        "caller",
    );
    assert!(w.bridge.presence().active_call("alice").is_none());
}

/// The phone at [`PHONE_SIP`] registers as `user` with `password`.
fn register_as(w: &mut World, user: &str, password: &str) {
    if w.phone.is_none() {
        w.add_phone();
    }
    let now = w.now;
    w.phone.as_mut().unwrap().ua.register(
        now,
        RegisterParams {
            registrar: format!("sip:{SBC_IP}"),
            aor: format!("sip:{user}@{SBC_IP}"),
            expires: Duration::from_secs(600),
            peer: Peer::udp(addr(SBC_SIP)),
            credentials: Some(Credentials {
                username: user.into(),
                password: password.into(),
            }),
        },
    );
    w.run(ms(300));
}

#[test]
fn accounts_not_in_the_config_are_asked_of_the_backend_once_per_ttl() {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.registrar.lookup_ttl = Some(Duration::from_secs(300));
    let mut w = World::new(cfg);
    // carol's desk phone: the backend knows it.
    register_as(&mut w, "carol-desk", "pw");
    assert_eq!(
        w.bridge.poll_phone_lookup().as_deref(),
        Some("carol-desk"),
        "its credentials wait for the backend"
    );
    assert_eq!(w.bridge.poll_phone_lookup(), None, "asked once");
    let mut carol = PhoneAccount::new("carol-desk", "carol", "sbc", "pw");
    carol.numbers = vec!["support".into()];
    let now = w.now;
    w.bridge
        .handle_phone_lookup(now, "carol-desk", Lookup::Found(carol));
    w.run(ms(300));
    assert!(w.bridge.presence().has_phone("carol"));
    // Rung for support like a configured phone.
    w.carrier_call("+15550100", CALLER);
    w.run(ms(300));
    assert_eq!(phone_rung(&w), 1);
    let stats = w.bridge.registrar().unwrap().stats();
    // A username the backend does not know is refused like a wrong password.
    register_as(&mut w, "mallory", "guess");
    assert_eq!(w.bridge.poll_phone_lookup().as_deref(), Some("mallory"));
    let now = w.now;
    w.bridge
        .handle_phone_lookup(now, "mallory", Lookup::NotFound);
    w.run(ms(300));
    let after = w.bridge.registrar().unwrap().stats();
    assert!(after.auth_failures > stats.auth_failures);
    assert!(!w.bridge.presence().has_phone("mallory"));
    // Asked again: the answer is kept, no second question.
    register_as(&mut w, "mallory", "guess2");
    assert_eq!(w.bridge.poll_phone_lookup(), None);
    // The backend is down: 503, nothing counted against the phone.
    let failures = w.bridge.registrar().unwrap().stats().auth_failures;
    register_as(&mut w, "dave-desk", "pw");
    assert_eq!(w.bridge.poll_phone_lookup().as_deref(), Some("dave-desk"));
    let now = w.now;
    w.bridge
        .handle_phone_lookup(now, "dave-desk", Lookup::Unavailable);
    w.run(ms(300));
    assert_eq!(
        w.bridge.registrar().unwrap().stats().auth_failures,
        failures
    );
    assert!(
        w.phone
            .as_ref()
            .unwrap()
            .events
            .iter()
            .any(|e| format!("{e:?}").contains("503")),
        "the phone was told to come back later"
    );
    // A backend that never answers: after 10 s the phone is told to come
    // back, as if it were down.
    let told = |w: &World| {
        w.phone
            .as_ref()
            .unwrap()
            .events
            .iter()
            .filter(|e| format!("{e:?}").contains("503"))
            .count()
    };
    let before = told(&w);
    register_as(&mut w, "erin-desk", "pw");
    assert_eq!(w.bridge.poll_phone_lookup().as_deref(), Some("erin-desk"));
    w.run(Duration::from_secs(9));
    assert_eq!(told(&w), before, "still waiting");
    w.run(Duration::from_secs(2));
    assert!(told(&w) > before, "503 once the wait is over");
    // After the ttl carol's account is asked again at her next refresh
    // (dave's phone, told to come back, is asked about again too).
    w.run(Duration::from_secs(301));
    register_as(&mut w, "carol-desk", "pw");
    let asked: Vec<String> = std::iter::from_fn(|| w.bridge.poll_phone_lookup()).collect();
    assert!(asked.contains(&"carol-desk".to_string()), "{asked:?}");
    assert!(!asked.contains(&"mallory".to_string()), "{asked:?}");
}
