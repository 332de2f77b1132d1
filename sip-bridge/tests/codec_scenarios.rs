//! Transcoding only when needed, on virtual time: a SIP caller whose offer has
//! the codec its SIP target chose gets that codec in our answer and the two legs
//! relay; one that does not is transcoded.

mod common;

use common::*;
use sip_bridge::sip::dialog::{LegId, UaEvent};

/// The caller's final answer SDP.
fn answer_to(w: &World, caller: LegId) -> String {
    w.carrier_events()
        .iter()
        .find_map(|e| match e {
            UaEvent::Answered { leg, sdp: Some(s) } if *leg == caller => {
                Some(String::from_utf8_lossy(s).to_string())
            }
            _ => None,
        })
        .expect("the caller is answered")
}

fn media_line(sdp: &str) -> &str {
    sdp.lines().find(|l| l.starts_with("m=audio")).unwrap()
}

#[test]
fn the_caller_gets_the_codec_the_target_chose_and_the_call_relays() {
    // The caller (the test carrier) offers PCMU and PCMA; the phone number
    // answers PCMA.
    let mut w = World::new(config(plan(&[(&["pstn:+15550222"], 20)])));
    w.carrier.answer_pcma.push("+15550222".into());
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let caller = w.carrier_call("+15550100", 1000.0);
    w.run(ms(2000));
    let (target, offer) = w.carrier_incoming()[0].clone();
    let offer = String::from_utf8_lossy(&offer).to_string();
    assert!(
        media_line(&offer).contains("RTP/AVP 0 8"),
        "the trunk's codecs the caller offered come first: {offer}"
    );
    let answer = answer_to(&w, caller);
    assert!(
        media_line(&answer).contains("RTP/AVP 8"),
        "PCMA, the far end's choice: {answer}"
    );
    World::assert_tone(
        &w.carrier.media[&target].heard,
        8000,
        1000.0,
        "the far end hears the caller",
    );
    let stats: Vec<_> = w.media.values().map(|m| m.stats()).collect();
    assert_eq!(stats.len(), 1);
    assert!(stats[0].relayed > 50, "{:?}", stats[0]);
    assert_eq!(stats[0].transcoded, 0, "{:?}", stats[0]);
}

#[test]
fn without_a_shared_codec_the_call_transcodes() {
    // The caller's trunk takes PCMU only; the phone number is reached through
    // another trunk that takes PCMA only: no shared codec, transcoded both
    // ways, and the audio still crosses.
    let mut cfg = config(plan(&[(&["pstn:+15550222@other"], 20)]));
    let mut other = cfg.trunks[0].clone();
    other.name = "other".into();
    other.inbound.clear();
    other.codecs = vec![media_core::codec::Codec::Pcma];
    cfg.trunks[0].codecs = vec![media_core::codec::Codec::Pcmu];
    cfg.trunks.push(other);
    let mut w = World::new(cfg);
    w.carrier.answer_pcma.push("+15550222".into());
    w.carrier.auto_answer = Some(vec![(180, false), (200, true)]);
    let caller = w.carrier_call("+15550100", 1000.0);
    w.run(ms(2000));
    let answer = answer_to(&w, caller);
    assert!(media_line(&answer).contains("RTP/AVP 0"), "{answer}");
    let (target, _) = w.carrier_incoming()[0].clone();
    World::assert_tone(
        &w.carrier.media[&target].heard,
        8000,
        1000.0,
        "the far end hears the caller",
    );
    let stats: Vec<_> = w.media.values().map(|m| m.stats()).collect();
    assert!(stats[0].transcoded > 50, "{:?}", stats[0]);
}
