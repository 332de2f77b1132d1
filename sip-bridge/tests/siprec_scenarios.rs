//! SIPREC (RFC 7866) through the whole bridge on virtual time: a number
//! that records through an external recording server (SRS, here at the
//! carrier's address). The SRS's INVITE, its metadata (RFC 7865) and its
//! two streams are read back as an SRS would: who is on which label, that a
//! transfer sends new metadata with label 1 still the customer, one SSRC per
//! label throughout; and what happens when the SRS refuses, fail open and
//! fail closed.

mod common;

use common::*;
use sip_bridge::bridge::{ApiRequest, BridgeConfig, CallEventKind, PartyUpdate};
use sip_bridge::plan::SiprecOptions;
use sip_bridge::sip::dialog::{LegId, UaEvent};

const CALLER: f64 = 440.0;
const ALICE: f64 = 1000.0;
const BOB: f64 = 1500.0;

fn siprec_config(fail_closed: bool) -> BridgeConfig {
    let mut cfg = config(plan(&[(&["operators"], 20)]));
    cfg.numbers[0].plan.siprec =
        Some(SiprecOptions::parse(&format!("sip:srs@{CARRIER_SIP}"), fail_closed).unwrap());
    cfg
}

/// The participant ids whose `participantstreamassoc` sends `stream`.
fn senders(xml: &str, stream: &str) -> Vec<String> {
    xml.split("<participantstreamassoc ")
        .skip(1)
        .filter(|a| a.contains(&format!("<send>{stream}</send>")))
        .filter_map(|a| a.split('"').nth(1).map(String::from))
        .collect()
}

/// The id of the participant whose AOR is `aor`.
fn participant(xml: &str, aor: &str) -> String {
    let at = xml
        .find(&format!("aor=\"{aor}\""))
        .unwrap_or_else(|| panic!("no {aor} in {xml}"));
    let open = xml[..at].rfind("participant_id=\"").unwrap() + "participant_id=\"".len();
    xml[open..].split('"').next().unwrap().to_string()
}

/// The stream id of `label`.
fn stream(xml: &str, label: &str) -> String {
    let at = xml.find(&format!("<label>{label}</label>")).unwrap();
    let open = xml[..at].rfind("stream_id=\"").unwrap() + "stream_id=\"".len();
    xml[open..].split('"').next().unwrap().to_string()
}

fn metadata(body: &str) -> String {
    let start = body.find("<?xml").expect("metadata part");
    let end = body.find("</recording>").expect("metadata end") + "</recording>".len();
    body[start..end].to_string()
}

/// Alice online; a carrier call to `support`, whose SRS answers `status`
/// (`None`: never), run for `ms`. Returns the world and the caller's leg.
fn srs_call(fail_closed: bool, status: Option<u16>, run_ms: u64) -> (World, LegId) {
    let mut w = World::new(siprec_config(fail_closed));
    w.carrier.srs.status = status;
    assert_eq!(w.operator("alice", &["support"]), 0);
    let leg = w.carrier_call("+15550100", CALLER);
    w.run(ms(run_ms));
    (w, leg)
}

/// Alice answers the call ringing her and plays her tone for `run_ms`.
fn alice_answers(w: &mut World, run_ms: u64) -> String {
    let call = w.last_incoming(0).expect("alice rings");
    w.accept(0, &call);
    w.talk(0, ALICE);
    w.run(ms(run_ms));
    assert_eq!(w.got(0, "connected").len(), 1);
    call
}

/// The carrier saw its call to us fail with `status`.
fn caller_got(w: &World, leg: LegId, status: u16) {
    assert!(
        w.carrier_events().iter().any(
            |e| matches!(e, UaEvent::Failed { leg: l, status: s, .. } if *l == leg && *s == status)
        ),
        "{:?}",
        w.carrier_events()
    );
}

/// The `siprec` events so far: (state, SIP status).
fn siprec_events(w: &World) -> Vec<(String, Option<u16>)> {
    w.events
        .iter()
        .filter(|e| e.kind == CallEventKind::Siprec)
        .map(|e| (e.recording.as_ref().unwrap().state.to_string(), e.code))
        .collect()
}

fn siprec_states(w: &World) -> Vec<String> {
    w.events
        .iter()
        .filter(|e| e.kind == CallEventKind::Siprec)
        .map(|e| e.recording.as_ref().unwrap().state.to_string())
        .collect()
}

#[test]
fn the_srs_gets_both_labels_and_new_metadata_after_a_transfer() {
    let mut w = World::new(siprec_config(false));
    w.carrier.srs.status = Some(200);
    assert_eq!(w.operator("alice", &["support"]), 0);
    assert_eq!(w.operator("bob", &["sales"]), 1);
    w.carrier_call("+15550100", CALLER);
    w.run(ms(200));
    // The SRS is asked while the call still rings.
    let invite = w
        .carrier
        .srs
        .invites
        .first()
        .cloned()
        .expect("INVITE to the SRS");
    let call = w.last_incoming(0).expect("alice rings");
    for want in [
        "Require: siprec",
        "+sip.src",
        "Content-Type: multipart/mixed;boundary=",
        "Content-Type: application/rs-metadata+xml",
        "Content-Disposition: recording-session",
        "a=label:1",
        "a=label:2",
    ] {
        assert!(invite.contains(want), "{want} missing in\n{invite}");
    }
    assert_eq!(invite.matches("a=sendonly").count(), 2);
    let first = metadata(&invite);
    let customer = participant(&first, "sip:+15550111@10.0.0.1");
    assert_eq!(
        senders(&first, &stream(&first, "1")),
        std::slice::from_ref(&customer)
    );
    w.accept(0, &call);
    w.talk(0, ALICE);
    w.run(ms(3000));
    // Each label carries only its side.
    let (one, two) = (&w.carrier.srs.streams[0], &w.carrier.srs.streams[1]);
    World::assert_hears(&one.heard, 8000, &[CALLER], &[ALICE], "label 1");
    World::assert_hears(&two.heard, 8000, &[ALICE], &[CALLER], "label 2");
    // Alice joined: a re-INVITE told the SRS she sends label 2.
    let joined = metadata(w.carrier.srs.invites.last().unwrap());
    let alice = participant(&joined, "sip:alice@10.0.0.1");
    assert_eq!(
        senders(&joined, &stream(&joined, "2")),
        std::slice::from_ref(&alice)
    );
    // Alice holds the customer for 2 s: label 2 falls silent (the customer
    // hears nothing of the call), and comes back on the same stream.
    let customer_pid = pid(&mut w, &call, "customer");
    let hold = |held| ApiRequest::UpdateParticipant {
        call: call.clone(),
        participant: customer_pid.clone(),
        update: PartyUpdate::new(Some(held), None, None),
    };
    w.api(&["support"], hold(true)).unwrap();
    w.run(ms(2000));
    w.api(&["support"], hold(false)).unwrap();
    w.run(ms(1000));
    let before = w.carrier.srs.invites.len();
    // Alice hands the customer to bob.
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
    let heard_before = w.carrier.srs.streams[1].heard.len();
    w.run(ms(3000));
    assert!(
        w.carrier.srs.invites.len() > before,
        "no re-INVITE after the transfer"
    );
    let after = metadata(w.carrier.srs.invites.last().unwrap());
    let bob = participant(&after, "sip:bob@10.0.0.1");
    // Label 1 is still the customer (same ids), label 2 now bob; alice left.
    assert_eq!(stream(&after, "1"), stream(&first, "1"));
    assert_eq!(senders(&after, &stream(&after, "1")), [customer]);
    assert_eq!(senders(&after, &stream(&after, "2")), [bob]);
    assert!(after.contains("<disassociate-time>"), "{after}");
    assert!(!senders(&after, &stream(&after, "2")).contains(&alice));
    let tail = &w.carrier.srs.streams[1].heard[heard_before + 8000..];
    World::assert_hears(tail, 8000, &[BOB], &[CALLER, ALICE], "label 2 after");
    // One SSRC per label from start to end, the two different.
    let ssrcs: Vec<Vec<u32>> = w
        .carrier
        .srs
        .streams
        .iter()
        .map(|s| s.ssrcs.clone())
        .collect();
    assert_eq!((ssrcs[0].len(), ssrcs[1].len()), (1, 1), "{ssrcs:?}");
    assert_ne!(ssrcs[0], ssrcs[1]);
    // And one timeline: label 2 fell silent during the hold, yet its
    // timestamps moved on with the clock (a recorder keeps the gap).
    let longest = w.carrier.srs.streams[1]
        .stamps
        .windows(2)
        .map(|p| p[1].0.saturating_duration_since(p[0].0))
        .max()
        .unwrap();
    assert!(longest >= ms(1900), "label 2 never paused: {longest:?}");
    for (i, s) in w.carrier.srs.streams.iter().enumerate() {
        let (first, last) = (s.stamps[0], *s.stamps.last().unwrap());
        let wall = last.0.saturating_duration_since(first.0).as_millis() as i64;
        let rtp = i64::from(last.1.wrapping_sub(first.1)) / 8;
        assert!(
            (wall - rtp).abs() <= 60,
            "label {}: {rtp} ms of RTP over {wall} ms",
            i + 1
        );
    }
    // The call ends: BYE to the SRS, which saw the whole session.
    w.api(&["support"], ApiRequest::Hangup { call: call.clone() })
        .unwrap();
    w.run(ms(500));
    let srs_leg = w.carrier.srs.leg.unwrap();
    assert!(
        w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg, .. } if *leg == srs_leg))
    );
    assert_eq!(siprec_states(&w), ["started", "stopped"]);
    w.assert_idle();
}

#[test]
fn a_refusing_srs_fails_open_by_default() {
    let (mut w, _) = srs_call(false, Some(503), 200);
    let call = alice_answers(&mut w, 1500);
    assert_eq!(siprec_events(&w), [("failed".to_string(), Some(503))]);
    w.api(&["support"], ApiRequest::Hangup { call }).unwrap();
    w.run(ms(500));
    w.assert_idle();
}

#[test]
fn fail_closed_refuses_the_call_when_the_srs_answers_503() {
    let (w, leg) = srs_call(true, Some(503), 500);
    // The caller gets 503; alice never rang (nothing rings unrecorded).
    assert!(w.last_incoming(0).is_none());
    caller_got(&w, leg, 503);
    assert_eq!(siprec_events(&w), [("failed".to_string(), Some(503))]);
    w.assert_idle();
}

#[test]
fn fail_closed_ends_an_answered_call_when_the_srs_hangs_up() {
    let (mut w, leg) = srs_call(true, Some(200), 200);
    alice_answers(&mut w, 1500);
    let now = w.now;
    let srs = w.carrier.srs.leg.unwrap();
    w.carrier.ua.hangup(now, srs).unwrap();
    w.run(ms(500));
    // The customer's dialog is ended by us.
    assert!(
        w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg: l, .. } if *l == leg)),
        "{:?}",
        w.carrier_events()
    );
    assert_eq!(siprec_states(&w), ["started", "stopped"]);
    w.assert_idle();
}

#[test]
fn fail_closed_rings_nobody_before_the_srs_records_and_gives_up_after_5_s() {
    let (mut w, leg) = srs_call(true, None, 4800);
    assert!(
        w.last_incoming(0).is_none(),
        "alice rang before the SRS answered"
    );
    w.run(ms(400));
    caller_got(&w, leg, 503);
    assert_eq!(siprec_events(&w), [("failed".to_string(), Some(408))]);
    w.run(ms(1000));
    w.assert_idle();
}

#[test]
fn fail_open_rings_at_once_and_an_srs_that_never_answers_is_given_up() {
    let (mut w, _) = srs_call(false, None, 200);
    let call = alice_answers(&mut w, 6000);
    assert!(w.got(0, "ended").is_empty());
    assert_eq!(siprec_events(&w), [("failed".to_string(), Some(408))]);
    w.api(&["support"], ApiRequest::Hangup { call }).unwrap();
    w.run(ms(1000));
    w.assert_idle();
}

#[test]
fn the_srs_pauses_a_label_by_re_invite_and_resumes_it() {
    let (mut w, _) = srs_call(false, Some(200), 200);
    let call = alice_answers(&mut w, 2000);
    let srs = w.carrier.srs.leg.unwrap();
    let (p1, p2) = (
        w.carrier.srs.streams[0].local.port(),
        w.carrier.srs.streams[1].local.port(),
    );
    let offer = |two: &str, v: u32| {
        format!(
            "v=0\r\no=srs 7 {v} IN IP4 {CARRIER_IP}\r\ns=-\r\nc=IN IP4 {CARRIER_IP}\r\nt=0 0\r\n\
             m=audio {p1} RTP/AVP 0\r\na=label:1\r\na=recvonly\r\n\
             m=audio {p2} RTP/AVP 0\r\na=label:2\r\na={two}\r\n"
        )
    };
    let now = w.now;
    w.carrier
        .ua
        .reinvite(now, srs, offer("inactive", 10).into_bytes())
        .unwrap();
    w.run(ms(200));
    let answered = w.carrier_events().iter().rev().find_map(|e| match e {
        UaEvent::OfferAnswered { leg, status, sdp } if *leg == srs => Some((*status, sdp.clone())),
        _ => None,
    });
    let (status, sdp) = answered.expect("the SRS's re-INVITE is answered");
    let sdp = String::from_utf8(sdp.unwrap().to_vec()).unwrap();
    assert_eq!(status, 200);
    assert_eq!(sdp.matches("a=sendonly").count(), 1, "{sdp}");
    assert_eq!(sdp.matches("a=inactive").count(), 1, "{sdp}");
    let (one, two) = (
        w.carrier.srs.streams[0].packets_in,
        w.carrier.srs.streams[1].packets_in,
    );
    w.run(ms(2000));
    assert!(
        w.carrier.srs.streams[0].packets_in >= one + 90,
        "label 1 goes on"
    );
    assert_eq!(w.carrier.srs.streams[1].packets_in, two, "label 2 paused");
    let now = w.now;
    w.carrier
        .ua
        .reinvite(now, srs, offer("recvonly", 11).into_bytes())
        .unwrap();
    w.run(ms(2000));
    assert!(
        w.carrier.srs.streams[1].packets_in >= two + 90,
        "label 2 resumed"
    );
    assert_eq!(w.carrier.srs.streams[1].ssrcs.len(), 1);
    w.api(&["support"], ApiRequest::Hangup { call }).unwrap();
    w.run(ms(1000));
    w.assert_idle();
}
