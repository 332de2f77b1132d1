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
use sip_bridge::registrar::PhoneAccount;
use sip_bridge::sip::auth::Credentials;
use sip_bridge::sip::dialog::{RegisterParams, UaEvent};
use sip_bridge::sip::message::Peer;

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
    let mut w = World::new(phone_config());
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
