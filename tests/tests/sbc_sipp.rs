//! System tests of the `sbc` binary against SIPp (Debian package `sip-tester`):
//! a carrier's SIPp calls through the real process to a second SIPp, on
//! loopback, with our scenarios from `tests/sipp/`. The caller is 127.0.0.2 (the
//! trunk's inbound range), the far end 127.0.0.3, the SBC 127.0.0.1, strangers
//! and flooders other 127/8 addresses.
//!
//! Needs `target/debug/sbc`: `cargo build -p sbc` first (tests/ci.sh does).
//! Each test starts its own sbc with its own ports and RTP range; they run one
//! at a time (a lock), so that a loaded 2-core machine only carries one call
//! flow at once. Outcomes do not depend on timing; timeouts are generous.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::sbc_process::{Sbc, SbcSpec, Sipp, SippCmd, TracedMessage, lo, rtp, serial};

/// How long a SIPp run may take before the test gives up on it (SIPp's own
/// `-timeout` is 60 s).
const SIPP_DONE: Duration = Duration::from_secs(90);
/// How long the SBC may take to let go of everything after the calls.
const IDLE: Duration = Duration::from_secs(40);

/// The carrier: calls from 127.0.0.2 are its calls; `pstn:` targets go to
/// `peer`.
fn carrier_trunk(peer: SocketAddr, extra: &str) -> String {
    format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{peer}\"]\n\
         inbound = [\"127.0.0.2/32\"]\n{extra}\n"
    )
}

/// A number whose plan rings `target` for 20 s.
fn number(id: &str, e164: &str, target: &str) -> String {
    format!(
        "[[numbers]]\nid = \"{id}\"\ne164 = \"{e164}\"\n\
         dial = [ {{ ring = [\"{target}\"], timeout = \"20s\" }} ]\n\n"
    )
}

/// The far end answering PCMU.
fn pcmu_callee(name: &str, calls: usize) -> SippCmd {
    SippCmd::new(name, "callee.xml", lo(3))
        .calls(calls)
        .key("answer_pt", "0")
        .key("answer_codec", "PCMU/8000")
        .key("answer_ptime", "20")
}

fn caller(name: &str, scenario: &str, sbc: &Sbc, number: &str, calls: usize) -> SippCmd {
    SippCmd::new(name, scenario, lo(2))
        .remote(sbc.sip)
        .service(number)
        .calls(calls)
        .rate(10)
}

/// The config of the common case: the carrier trunk and number +15550100
/// ringing the far end `callee` as a SIP URI.
fn to_sip_target(callee: SocketAddr, extra: &str) -> String {
    format!(
        "{extra}\n{}{}",
        carrier_trunk(callee, ""),
        number("service", "+15550100", &format!("sip:service@{callee}"))
    )
}

#[test]
fn carrier_call_to_a_sip_target_is_bridged() {
    let _serial = serial();
    let calls = 10;
    let callee = pcmu_callee("callee", calls);
    let sbc = Sbc::start(&SbcSpec::new(
        "bridged",
        rtp(0),
        to_sip_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    let mut caller = caller("caller", "caller.xml", &sbc, "+15550100", calls)
        .hold_ms(300)
        .spawn();
    caller.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);

    assert_eq!(
        sbc.wait_metric("sbc_calls_active", &[], IDLE, |v| v == 0.0),
        0.0
    );
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(m.value("sbc_calls_started_total", &[]), calls as f64);
    assert_eq!(m.value("sbc_calls_answered_total", &[]), calls as f64);
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64,
        "{:?}",
        m.samples
    );
    // The far end was rung by the SBC itself (a B2BUA), once per call.
    let invites: Vec<TracedMessage> = callee
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .collect();
    assert_eq!(distinct(&invites, "Call-ID"), calls);
    assert!(
        invites.iter().all(|m| m
            .start_line()
            .starts_with(&format!("INVITE sip:service@{} ", callee.addr))),
        "{}",
        invites[0].text
    );
}

/// The carrier trunk toward `peer` and number +15550100 ringing a phone number
/// through it (a `pstn:` step).
fn to_pstn_target(peer: SocketAddr, extra: &str) -> String {
    format!(
        "{}{}",
        carrier_trunk(peer, extra),
        number("service", "+15550100", "pstn:+15550199")
    )
}

#[test]
fn caller_cancels_while_the_target_rings() {
    let _serial = serial();
    let calls = 3;
    let callee = SippCmd::new("ringing-callee", "callee_ring.xml", lo(3)).calls(calls);
    let sbc = Sbc::start(&SbcSpec::new(
        "cancel",
        rtp(1),
        to_pstn_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    // The caller: the far end's 180 passed on as 180 (no 183 of ours before or
    // after it), CANCEL after 1 s, 200 for the CANCEL, 487 for the INVITE.
    let mut caller = caller(
        "cancelling-caller",
        "caller_cancel.xml",
        &sbc,
        "+15550100",
        calls,
    )
    .spawn();
    caller.assert_success(SIPP_DONE);
    // The far end: INVITE, CANCEL (answered 200, INVITE 487), ACK.
    callee.assert_success(SIPP_DONE);

    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"canceled\""]),
        calls as f64,
        "{:?}",
        m.samples
    );
    assert_eq!(m.value("sbc_calls_answered_total", &[]), 0.0);
    let cancels = callee
        .received()
        .iter()
        .filter(|m| m.is_request("CANCEL"))
        .count();
    assert_eq!(cancels, calls);
    let provisional = |code| {
        caller
            .received()
            .iter()
            .filter(|m| m.status() == Some(code))
            .count()
    };
    assert_eq!(provisional(180), calls, "one 180 per call");
    assert_eq!(provisional(183), 0, "no 183 of ours");
}

#[test]
fn early_media_of_a_pstn_target_is_relayed_in_a_183() {
    let _serial = serial();
    let calls = 2;
    let callee = SippCmd::new("early-callee", "callee_early.xml", lo(3))
        .calls(calls)
        .pcap("g711a.pcap");
    let sbc = Sbc::start(&SbcSpec::new(
        "early",
        rtp(12),
        to_pstn_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    // 180, then 183 with our SDP, two seconds of the far end's announcement,
    // CANCEL. One call at a time: SIPp plays RTP from one media port.
    let mut caller = caller("early-caller", "caller_early.xml", &sbc, "+15550100", calls)
        .arg("-l", 1)
        .spawn();
    caller.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"canceled\""]),
        calls as f64,
        "{:?}",
        m.samples
    );
    let received = caller.received();
    let early: Vec<&TracedMessage> = received
        .iter()
        .filter(|m| m.status() == Some(183))
        .collect();
    assert_eq!(early.len(), calls);
    assert!(
        early.iter().all(|m| m.text.contains("m=audio ")),
        "the 183 carries our SDP: {}",
        early[0].text
    );
    // Before any answer, the announcement reached the caller: about 2 s of
    // 20 ms packets per call (our own ringback would need a 183 before the far
    // end's; the caller_early scenario fails on that).
    let out = m.value("sbc_rtp_packets_total", &["direction=\"out\""]);
    assert!(
        out >= (calls * 60) as f64,
        "{out} packets out: {:?}",
        m.samples
    );
}

/// The far end answering `codec` (`"0 PCMU/8000"`) at 30 ms, echoing RTP.
fn echo_callee(name: &str, calls: usize, codec: &str) -> SippCmd {
    let (pt, name_rate) = codec.split_once(' ').unwrap();
    SippCmd::new(name, "callee.xml", lo(3))
        .calls(calls)
        .key("answer_pt", pt)
        .key("answer_codec", name_rate)
        .key("answer_ptime", "30")
        .flag("-rtp_echo")
}

#[test]
fn a_codec_both_sides_share_is_relayed_not_transcoded() {
    let _serial = serial();
    let calls = 2;
    // The caller offers PCMU and PCMA, the far end answers PCMA: the caller's
    // answer carries PCMA (the scenario checks it) and the media is relayed.
    let callee = echo_callee("pcma-callee", calls, "8 PCMA/8000");
    let sbc = Sbc::start(&SbcSpec::new(
        "relay",
        rtp(13),
        to_pstn_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    let mut carrier = caller(
        "two-codecs",
        "caller_two_codecs.xml",
        &sbc,
        "+15550100",
        calls,
    )
    .pcap("g711a.pcap")
    .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    let path = |p: &str| m.value("sbc_calls_media_total", &[&format!("path=\"{p}\"")]);
    assert_eq!(path("relayed"), calls as f64, "{:?}", m.samples);
    assert_eq!(path("transcoded"), 0.0);
    // Our offer to the far end put the trunk's codecs the caller offered first.
    let invite = callee
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap();
    assert!(invite.text.contains("RTP/AVP 0 8"), "{}", invite.text);
    drop(sbc);

    // Control: a caller that offers PCMA alone and a far end that answers PCMU
    // share no codec: transcoded.
    let callee = echo_callee("pcmu-callee", 1, "0 PCMU/8000");
    let sbc = Sbc::start(&SbcSpec::new(
        "transcode",
        rtp(13),
        to_pstn_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    let mut carrier = caller("pcma-only", "caller_rtp.xml", &sbc, "+15550100", 1)
        .pcap("g711a.pcap")
        .arg("-set", "plays")
        .flag("1")
        .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    let path = |p: &str| m.value("sbc_calls_media_total", &[&format!("path=\"{p}\"")]);
    assert_eq!(path("transcoded"), 1.0, "{:?}", m.samples);
    assert_eq!(path("relayed"), 0.0);
}

#[test]
fn a_late_offer_caller_gets_our_offer_in_the_200_and_answers_in_the_ack() {
    let _serial = serial();
    let calls = 2;
    let callee = echo_callee("pcma-callee", calls, "8 PCMA/8000");
    let sbc = Sbc::start(&SbcSpec::new(
        "late-offer",
        rtp(15),
        to_pstn_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    // INVITE without SDP; our 200 offers PCMA first (the far end's choice);
    // the ACK answers PCMA and the capture plays through both ways.
    let mut carrier = caller(
        "late-caller",
        "caller_late_offer.xml",
        &sbc,
        "+15550100",
        calls,
    )
    .pcap("g711a.pcap")
    .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value(
            "sbc_calls_ended_total",
            &["direction=\"inbound\",status=\"completed\""]
        ),
        calls as f64,
        "{:?}",
        m.samples
    );
    let path = |p: &str| m.value("sbc_calls_media_total", &[&format!("path=\"{p}\"")]);
    assert_eq!(path("relayed"), calls as f64, "{:?}", m.samples);
    // About 7 s of 30 ms packets per call came in from each side.
    let rtp_in = m.value("sbc_rtp_packets_total", &["direction=\"in\""]);
    assert!(rtp_in > (calls * 2 * 150) as f64, "{rtp_in} packets in");
}

#[test]
fn a_caller_requiring_100rel_gets_a_reliable_183_again_until_it_pracks_and_the_200_after() {
    let _serial = serial();
    let calls = 2;
    let callee = pcmu_callee("rel-callee", calls);
    // Our own ringback (183 with SDP at once), so the reliable 18x carries SDP
    // and the far end's quick 200 must wait for the caller's PRACK.
    let toml = format!(
        "{}[[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\nringback = \"local\"\n\
         dial = [ {{ ring = [\"pstn:+15550199\"], timeout = \"20s\" }} ]\n",
        carrier_trunk(callee.addr(), "")
    );
    let sbc = Sbc::start(&SbcSpec::new("rel-in", rtp(18), toml));
    let mut callee = callee.spawn();
    let mut carrier = caller("rel-caller", "caller_100rel.xml", &sbc, "+15550100", calls)
        .arg("-l", 1)
        .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64,
        "{:?}",
        m.samples
    );
    // Each call: the 183 and its retransmissions (same RSeq), the PRACK's
    // 200, then the INVITE's 200 (the scenario fails on any other order).
    let received = carrier.received();
    for call_id in distinct_values(&received, "Call-ID") {
        let of_call: Vec<&TracedMessage> = received
            .iter()
            .filter(|m| m.header("Call-ID") == Some(call_id.as_str()))
            .collect();
        let rseqs: Vec<&str> = of_call
            .iter()
            .filter(|m| m.status() == Some(183))
            .filter_map(|m| m.header("RSeq"))
            .collect();
        // Sent at 0, T1 and 3*T1 before the PRACK at 1.2 s.
        assert!(rseqs.len() >= 2, "{of_call:#?}");
        assert!(
            rseqs.iter().all(|r| *r == rseqs[0]),
            "retransmissions keep the RSeq"
        );
    }
}

#[test]
fn toward_a_trunk_requiring_100rel_the_reliable_183_is_pracked_once_and_its_answer_stands() {
    let _serial = serial();
    let calls = 2;
    let callee = SippCmd::new("rel-out-callee", "callee_100rel.xml", lo(3)).calls(calls);
    let sbc = Sbc::start(&SbcSpec::new(
        "rel-out",
        rtp(19),
        to_pstn_target(callee.addr(), "require_100rel = true"),
    ));
    let mut callee = callee.spawn();
    let mut carrier = caller("rel-out-caller", "caller.xml", &sbc, "+15550100", calls)
        .hold_ms(500)
        .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64,
        "{:?}",
        m.samples
    );
    // One PRACK transaction per call, CSeq 2 (its Timer E retransmissions
    // while unanswered share its branch): none for the retransmitted 183.
    let pracks: Vec<TracedMessage> = callee
        .received()
        .into_iter()
        .filter(|m| m.is_request("PRACK"))
        .collect();
    assert!(pracks.len() > calls, "retransmitted while unanswered");
    assert!(pracks.iter().all(|m| m.header("CSeq") == Some("2 PRACK")));
    let branches: std::collections::HashSet<Vec<String>> =
        pracks.iter().map(|m| m.via_branches()).collect();
    assert_eq!(branches.len(), calls, "{pracks:#?}");
}

#[test]
fn toward_a_late_offer_trunk_the_invite_has_no_sdp_and_the_ack_answers_so_the_call_relays() {
    let _serial = serial();
    let calls = 2;
    let callee = SippCmd::new("late-out-callee", "callee_late_offer.xml", lo(3)).calls(calls);
    let sbc = Sbc::start(&SbcSpec::new(
        "late-out",
        rtp(20),
        to_pstn_target(callee.addr(), "late_offer = true"),
    ));
    let mut callee = callee.spawn();
    // The caller offers PCMU and PCMA and plays PCMA once answered.
    let mut carrier = caller(
        "late-out-caller",
        "caller_two_codecs.xml",
        &sbc,
        "+15550100",
        calls,
    )
    .pcap("g711a.pcap")
    .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64,
        "{:?}",
        m.samples
    );
    // The far end offered PCMA first; our ACK answered PCMA (the scenario
    // checks it) and so did our 200 to the caller: relayed, not transcoded.
    let path = |p: &str| m.value("sbc_calls_media_total", &[&format!("path=\"{p}\"")]);
    assert_eq!(path("relayed"), calls as f64, "{:?}", m.samples);
    assert_eq!(path("transcoded"), 0.0);
}

/// The target a carrier's REFER names: a far end on 127.0.0.4 that answers
/// PCMU and hangs up itself after `hold_ms`.
fn refer_target(name: &str, hold_ms: u64) -> SippCmd {
    SippCmd::new(name, "callee_hangup.xml", lo(4))
        .calls(1)
        .key("answer_pt", "0")
        .key("answer_codec", "PCMU/8000")
        .key("answer_ptime", "20")
        .hold_ms(hold_ms)
}

#[test]
fn a_carrier_refer_is_followed_with_sipfrag_notifies_and_the_referrer_released() {
    let _serial = serial();
    for (scenario, rtp_range) in [
        ("caller_refer.xml", rtp(22)),
        ("caller_refer_nosub.xml", rtp(23)),
    ] {
        // The carrier's caller talks to B (a pstn: target), then REFERs the
        // call to C: B and C talk, the caller is released.
        let b = pcmu_callee("refer-b", 1);
        let c = refer_target("refer-c", 2000);
        let sbc = Sbc::start(&SbcSpec::new(
            "refer-in",
            rtp_range,
            to_pstn_target(b.addr(), "accept_refer = true"),
        ));
        let mut b = b.spawn();
        let c_uri = format!("sip:c@{}", c.addr());
        let mut c = c.spawn();
        let mut carrier = caller("refer-a", scenario, &sbc, "+15550100", 1)
            .key("refer_to", &c_uri)
            .spawn();
        carrier.assert_success(SIPP_DONE);
        c.assert_success(SIPP_DONE);
        b.assert_success(SIPP_DONE);
        sbc.assert_idle(IDLE);
        // C was called by the SBC itself, with the caller's identity.
        let invite = c
            .received()
            .into_iter()
            .find(|m| m.is_request("INVITE"))
            .expect("C is called");
        assert!(
            invite.start_line().starts_with(&format!("INVITE {c_uri} ")),
            "{}",
            invite.text
        );
        let m = sbc.metrics();
        assert_eq!(
            m.value("sbc_calls_ended_total", &["status=\"completed\""]),
            1.0,
            "{:?}",
            m.samples
        );
    }
}

#[test]
fn a_refer_from_a_trunk_that_may_not_transfer_gets_403_and_the_call_goes_on() {
    let _serial = serial();
    let b = pcmu_callee("refer-denied-b", 1);
    let sbc = Sbc::start(&SbcSpec::new(
        "refer-denied",
        rtp(24),
        to_pstn_target(b.addr(), ""),
    ));
    let mut b = b.spawn();
    let mut carrier = caller(
        "refer-denied-a",
        "caller_refer_denied.xml",
        &sbc,
        "+15550100",
        1,
    )
    .key("refer_to", "sip:c@127.0.0.4:5099")
    .spawn();
    carrier.assert_success(SIPP_DONE);
    b.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        1.0,
        "{:?}",
        m.samples
    );
    // Only B was ever called.
    assert_eq!(
        b.received()
            .iter()
            .filter(|m| m.is_request("INVITE"))
            .count(),
        1
    );
}

#[test]
fn session_timers_422_refreshes_and_an_unrefreshed_call_ends() {
    let _serial = serial();
    // The trunk asks for session timers on our calls toward it too.
    let callee = pcmu_callee("callee", 1).timeout_secs(150);
    // No RTP in this call: the media timeout must not end it first.
    let sbc = Sbc::start(&SbcSpec {
        media: "media_timeout = \"300s\"\n".into(),
        ..SbcSpec::new(
            "session-timer",
            rtp(14),
            to_pstn_target(callee.addr(), "session_expires = \"90s\"\n"),
        )
    });
    let mut callee = callee.spawn();
    // 422 for 60 s, then 90 s as refresher, three UPDATE refreshes, then
    // silence until our BYE (about 60 s later; see the scenario).
    let mut carrier = caller(
        "timed-caller",
        "caller_session_timer.xml",
        &sbc,
        "+15550100",
        1,
    )
    .timeout_secs(150)
    .spawn();
    carrier.assert_success(Duration::from_secs(160));
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value(
            "sbc_participants_left_total",
            &["reason=\"session_expired\""]
        ),
        1.0,
        "{:?}",
        m.samples
    );
    // Our INVITE toward the trunk asked for a session timer as well.
    let invite = callee
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap();
    assert_eq!(
        invite.header("Session-Expires"),
        Some("90"),
        "{}",
        invite.text
    );
    assert!(
        invite
            .headers("Supported")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "timer"),
        "{}",
        invite.text
    );
}

#[test]
fn a_call_over_ipv6_brackets_its_addresses_and_offers_ip6_media() {
    let _serial = serial();
    let v6: std::net::IpAddr = "::1".parse().unwrap();
    let callee = SippCmd::new("v6-callee", "callee.xml", v6)
        .calls(1)
        .key("answer_pt", "0")
        .key("answer_codec", "PCMU/8000")
        .key("answer_ptime", "20");
    // The SBC, its trunk peer and the carrier on ::1 (the trunk's peer address
    // makes the carrier's calls trunk calls).
    let sbc = Sbc::start(&SbcSpec {
        ip: v6,
        ..SbcSpec::new("ipv6", rtp(16), to_pstn_target(callee.addr(), ""))
    });
    let mut callee = callee.spawn();
    let mut carrier = SippCmd::new("v6-caller", "caller.xml", v6)
        .remote(sbc.sip)
        .service("+15550100")
        .calls(1)
        .hold_ms(300)
        .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    // RFC 5118 section 4.5 and RFC 3264: bracketed references in SIP, IP6 in SDP.
    let invite = callee
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap();
    let via = invite.header("Via").unwrap_or_default().to_string();
    assert!(via.contains("[::1]:"), "{via}");
    assert!(
        invite
            .header("Contact")
            .unwrap_or_default()
            .contains("[::1]"),
        "{}",
        invite.text
    );
    assert!(invite.text.contains("c=IN IP6 ::1"), "{}", invite.text);
    let ok = carrier
        .received()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.text.contains("m=audio"))
        .unwrap();
    assert!(ok.text.contains("c=IN IP6 ::1"), "{}", ok.text);
    assert_eq!(
        sbc.metric(
            "sbc_calls_ended_total",
            &["direction=\"inbound\",status=\"completed\""]
        ),
        1.0
    );
}

#[test]
fn a_call_joins_an_ipv6_carrier_and_an_ipv4_far_end_each_seeing_its_own_family() {
    let _serial = serial();
    let calls = 2;
    let v6: std::net::IpAddr = "::1".parse().unwrap();
    let callee = echo_callee("v4-callee", calls, "8 PCMA/8000");
    // The SBC on [::] (one socket per port for both families): the carrier
    // calls from ::1, the far end answers on 127.0.0.3.
    let toml = format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{}\"]\n\
         inbound = [\"::1/128\"]\n\n{}",
        callee.addr(),
        number("service", "+15550100", "pstn:+15550199")
    );
    let sbc = Sbc::start(&SbcSpec {
        dual_stack: true,
        ..SbcSpec::new("dual-stack", rtp(21), toml)
    });
    let mut callee = callee.spawn();
    let mut carrier = SippCmd::new("v6-carrier", "caller_two_codecs.xml", v6)
        .remote(std::net::SocketAddr::new(v6, sbc.sip.port()))
        .service("+15550100")
        .calls(calls)
        .pcap("g711a.pcap")
        .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    // RFC 5118 4.5: each peer sees our address of its own family, in SIP and SDP.
    let invite = callee
        .received()
        .into_iter()
        .find(|m| m.is_request("INVITE"))
        .unwrap();
    assert!(
        invite
            .header("Via")
            .unwrap_or_default()
            .contains("127.0.0.1:")
            && invite
                .header("Contact")
                .unwrap_or_default()
                .contains("@127.0.0.1:")
            && invite.text.contains("c=IN IP4 127.0.0.1"),
        "{}",
        invite.text
    );
    let ok = carrier
        .received()
        .into_iter()
        .find(|m| m.status() == Some(200) && m.text.contains("m=audio"))
        .unwrap();
    assert!(
        ok.header("Contact").unwrap_or_default().contains("[::1]:")
            && ok.text.contains("c=IN IP6 ::1"),
        "{}",
        ok.text
    );
    let m = sbc.metrics();
    assert_eq!(
        m.value(
            "sbc_calls_ended_total",
            &["direction=\"inbound\",status=\"completed\""]
        ),
        calls as f64,
        "{:?}",
        m.samples
    );
    // The capture (7 s at 30 ms) crossed from the IPv6 side to the IPv4 one
    // and its echo came back: relayed both ways.
    let path = |p: &str| m.value("sbc_calls_media_total", &[&format!("path=\"{p}\"")]);
    assert_eq!(path("relayed"), calls as f64, "{:?}", m.samples);
    let rtp_in = m.value("sbc_rtp_packets_total", &["direction=\"in\""]);
    assert!(rtp_in > (calls * 2 * 150) as f64, "{rtp_in} packets in");
}

#[test]
fn rtcp_reports_go_to_port_plus_one_and_the_peers_reports_reach_metrics_and_the_cdr() {
    use media_core::rtp::rtcp::{
        ReportBlock, RtcpPacket, ntp_middle, parse_compound, write_report,
    };
    let _serial = serial();
    // The far end (SIPp, echoing RTP on 127.0.0.3:6000) gets its RTCP on 6001,
    // where this test listens and answers as its RTCP would.
    let callee = echo_callee("rtcp-callee", 1, "8 PCMA/8000");
    let rtcp = std::net::UdpSocket::bind(("127.0.0.3", 6001)).expect("the far end's RTCP port");
    rtcp.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let sbc = Sbc::start(&SbcSpec::new(
        "rtcp",
        rtp(17),
        to_pstn_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    // 21 s of PCMA through the SBC and back.
    let mut carrier = caller("rtcp-caller", "caller_rtp.xml", &sbc, "+15550100", 1)
        .pcap("g711a.pcap")
        .arg("-set", "plays")
        .flag("3")
        .spawn();
    let mut buf = [0u8; 1500];
    let (n, from) = rtcp
        .recv_from(&mut buf)
        .expect("an RTCP report from the SBC");
    let packets = parse_compound(&buf[..n]).expect("RTCP");
    // From the SBC's RTP port + 1 (RFC 3550 11), an SR (it sends us RTP) with
    // a report block on our echo, and an SDES.
    assert_eq!(from.ip(), sbc.sip.ip());
    assert_eq!((from.port() - rtp(17).0) % 2, 1, "an odd port: RTP + 1");
    let RtcpPacket::SenderReport { info, blocks, .. } = &packets[0] else {
        panic!("{packets:?}");
    };
    assert!(info.packets > 0 && blocks.len() == 1, "{packets:?}");
    assert!(matches!(packets[1], RtcpPacket::Other { pt: 202 }));
    // Our report: 25 % lost, 10 ms of jitter (80 at 8 kHz), 20 ms after its SR.
    let block = ReportBlock {
        ssrc: 1,
        fraction_lost: 64,
        cumulative_lost: 40,
        highest_seq: 1000,
        jitter: 80,
        lsr: ntp_middle(info.ntp),
        dlsr: 65_536 / 50,
    };
    std::thread::sleep(Duration::from_millis(20));
    let mut rr = Vec::new();
    write_report(
        &mut rr,
        media_core::rtp::Ssrc(77),
        None,
        &[block],
        "far@end",
    );
    rtcp.send_to(&rr, from).unwrap();

    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert!(
        m.value("sbc_rtcp_packets_total", &["direction=\"out\""]) >= 2.0,
        "{:?}",
        m.samples
    );
    assert_eq!(
        m.value("sbc_rtcp_packets_total", &["direction=\"in\""]),
        1.0
    );
    assert_eq!(
        m.value("sbc_rtcp_rtt_seconds_count", &[]),
        1.0,
        "{:?}",
        m.samples
    );
    assert!(m.value("sbc_rtcp_rtt_seconds_sum", &[]) < 1.0);
    let log = std::fs::read_to_string(sbc.dir.join("stderr.log")).unwrap_or_default()
        + &std::fs::read_to_string(sbc.dir.join("stdout.log")).unwrap_or_default();
    let cdr = log
        .lines()
        .find(|l| l.contains("cdr call="))
        .unwrap_or_else(|| panic!("no CDR\n{}", sbc.logs()));
    assert!(cdr.contains(":loss=25.0%:jitter=10ms:rtt="), "{cdr}");
}

#[test]
fn busy_target_gives_the_caller_486() {
    let _serial = serial();
    let calls = 3;
    let callee = SippCmd::new("busy-callee", "callee_busy.xml", lo(3)).calls(calls);
    let sbc = Sbc::start(&SbcSpec::new(
        "busy",
        rtp(2),
        to_sip_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    let mut caller = caller("caller", "caller_busy.xml", &sbc, "+15550100", calls).spawn();
    caller.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);

    sbc.assert_idle(IDLE);
    assert_eq!(
        sbc.metric("sbc_calls_ended_total", &["status=\"busy\""]),
        calls as f64
    );
    let busy = caller
        .received()
        .iter()
        .filter(|m| m.status() == Some(486))
        .count();
    assert_eq!(busy, calls);
}

/// Runs `calls` calls of caller_hold.xml (re-INVITE with a=sendonly; SIPp fails
/// the call unless the 200 says a=recvonly) and returns the caller.
fn hold_calls(name: &str, test: u16, calls: usize) -> (Sbc, Sipp, Sipp) {
    let callee = pcmu_callee("callee", calls);
    let sbc = Sbc::start(&SbcSpec::new(
        name,
        rtp(test),
        to_sip_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    let mut caller = caller(
        "holding-caller",
        "caller_hold.xml",
        &sbc,
        "+15550100",
        calls,
    )
    .hold_ms(300)
    .spawn();
    caller.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    (sbc, caller, callee)
}

#[test]
fn reinvite_hold_is_answered_recvonly() {
    let _serial = serial();
    let calls = 3;
    let (sbc, caller, callee) = hold_calls("hold", 3, calls);
    assert_eq!(
        sbc.metric("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64
    );
    // SIPp checked a=recvonly (check_it); check it here too, on every answer.
    let received = caller.received();
    let answers = answers_to(&received, 2);
    assert_eq!(answers.len(), calls);
    for a in answers {
        assert!(
            a.body().lines().any(|l| l.trim() == "a=recvonly")
                && !a
                    .body()
                    .lines()
                    .any(|l| ["a=sendrecv", "a=sendonly", "a=inactive"].contains(&l.trim())),
            "{}",
            a.text
        );
    }
    // The B2BUA holds the far end in turn: a re-INVITE with a=sendonly, which
    // the far end (callee.xml) answers a=recvonly.
    let held = callee
        .received()
        .into_iter()
        .filter(|m| {
            m.is_request("INVITE")
                && m.header("To").is_some_and(|t| t.contains(";tag="))
                && m.body().lines().any(|l| l.trim() == "a=sendonly")
        })
        .count();
    assert_eq!(held, calls, "the hold did not reach the far end");
}

/// RFC 3264 section 8 (and RFC 6337 5.2.5): every later SDP of a session keeps
/// the `o=` line of the first, with the version incremented.
#[test]
fn reinvite_answer_keeps_the_sdp_origin() {
    let _serial = serial();
    let (_sbc, caller, _callee) = hold_calls("hold-origin", 4, 1);
    let received = caller.received();
    let first = answers_to(&received, 1);
    let hold = answers_to(&received, 2);
    let origin = |m: &TracedMessage| -> Vec<String> {
        let o = m
            .body()
            .lines()
            .find_map(|l| l.trim().strip_prefix("o="))
            .unwrap_or_else(|| panic!("no o= in\n{}", m.text));
        o.split_whitespace().map(str::to_string).collect()
    };
    let (o1, o2) = (origin(first[0]), origin(hold[0]));
    assert_eq!(o1.len(), 6, "{o1:?}");
    assert_eq!(
        (&o1[0], &o1[1], &o1[3..]),
        (&o2[0], &o2[1], &o2[3..]),
        "the re-INVITE's answer changed the origin's username, session id or address: {o1:?} -> {o2:?}"
    );
    let (v1, v2): (u64, u64) = (o1[2].parse().unwrap(), o2[2].parse().unwrap());
    assert_eq!(v2, v1 + 1, "{o1:?} -> {o2:?}");
}

#[test]
fn digest_auth_toward_the_trunk() {
    let _serial = serial();
    let calls = 3;
    let carrier = SippCmd::new("carrier-with-auth", "callee_auth.xml", lo(3)).calls(calls);
    let cfg = format!(
        "{}{}",
        carrier_trunk(
            carrier.addr(),
            "username = \"acme\"\npassword = \"sbc-test-secret\""
        ),
        number("pstn-out", "+15550200", "pstn:+15550123")
    );
    let sbc = Sbc::start(&SbcSpec::new("digest", rtp(5), cfg));
    let mut carrier = carrier.spawn();
    let mut caller = caller("caller", "caller.xml", &sbc, "+15550200", calls)
        .hold_ms(200)
        .spawn();
    caller.assert_success(SIPP_DONE);
    // The carrier verified every retried INVITE's Authorization (verifyauth).
    carrier.assert_success(SIPP_DONE);

    sbc.assert_idle(IDLE);
    assert_eq!(
        sbc.metric("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64
    );
    let invites: Vec<TracedMessage> = carrier
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .collect();
    assert_eq!(invites.len(), 2 * calls, "one challenged, one retried");
    assert!(
        invites
            .iter()
            .all(|m| m.start_line() == "INVITE sip:+15550123@carrier.test SIP/2.0"),
        "{}",
        invites[0].text
    );
    let with_auth = invites
        .iter()
        .filter(|m| m.header("Authorization").is_some())
        .count();
    assert_eq!(with_auth, calls);
}

#[test]
fn a_stranger_gets_a_stateless_403() {
    let _serial = serial();
    let calls = 3;
    let cfg = to_sip_target("127.0.0.3:5060".parse().unwrap(), "");
    let sbc = Sbc::start(&SbcSpec::new("stranger", rtp(6), cfg));
    // 127.0.0.9 is no trunk's. Its scenario waits 2 s before it ACKs each 403.
    let mut stranger = SippCmd::new("stranger", "caller_forbidden.xml", lo(9))
        .remote(sbc.sip)
        .service("+15550100")
        .calls(calls)
        .rate(10)
        .spawn();
    // While it runs, the SBC holds no state for it.
    let mut stateful = Vec::new();
    while stranger.wait(Duration::from_millis(100)).is_none() {
        let seen = sbc.metrics();
        for g in [
            "sbc_sip_transactions",
            "sbc_sip_legs",
            "sbc_sip_dialogs",
            "sbc_calls_active",
        ] {
            if seen.value(g, &[]) != 0.0 {
                stateful.push(format!("{g}={}", seen.value(g, &[])));
            }
        }
    }
    stranger.assert_success(SIPP_DONE);
    assert!(stateful.is_empty(), "state for a stranger: {stateful:?}");

    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_sip_rejected_total", &["status=\"403\""]),
        calls as f64,
        "{:?}",
        m.samples
    );
    for g in [
        "sbc_sip_transactions",
        "sbc_sip_legs",
        "sbc_sip_dialogs",
        "sbc_calls_active",
        "sbc_calls_started_total",
        "sbc_sip_retransmissions_total",
    ] {
        assert_eq!(m.value(g, &[]), 0.0, "{g}: {:?}", m.samples);
    }
    // Stateless: one 403 per INVITE, never retransmitted although the ACK came
    // only 2 s later (a stateful server resends its 403 at 0.5 s, 1.5 s...).
    let invites_sent = stranger
        .sent()
        .iter()
        .filter(|m| m.is_request("INVITE"))
        .count();
    let forbidden: Vec<TracedMessage> = stranger
        .received()
        .into_iter()
        .filter(|m| m.status() == Some(403))
        .collect();
    assert_eq!(invites_sent, calls);
    assert_eq!(
        forbidden.len(),
        invites_sent,
        "{}",
        forbidden.first().map_or("", |m| m.text.as_str())
    );
}

#[test]
fn an_ack_with_a_broken_cseq_gets_no_answer() {
    let _serial = serial();
    let calls = 3;
    let cfg = to_sip_target("127.0.0.3:5060".parse().unwrap(), "");
    let sbc = Sbc::start(&SbcSpec::new("broken-ack", rtp(10), cfg));
    // From the carrier's address, so nothing filters it before the parser.
    let mut peer = SippCmd::new("broken-ack", "ack_broken.xml", lo(2))
        .remote(sbc.sip)
        .service("+15550100")
        .calls(calls)
        .rate(10)
        .spawn();
    peer.assert_success(SIPP_DONE);
    let received = peer.received();
    let sent_acks = peer.sent().iter().filter(|m| m.is_request("ACK")).count();
    assert_eq!(sent_acks, 3 * calls);
    let statuses: Vec<(Option<u16>, Option<&str>)> = received
        .iter()
        .map(|m| (m.status(), m.header("CSeq")))
        .collect();
    // Per call: the 200 to the good OPTIONS and the 400 to the broken one, nothing else.
    assert_eq!(received.len(), 2 * calls, "{statuses:?}");
    assert!(
        received
            .iter()
            .all(|m| m.header("CSeq").is_some_and(|c| !c.contains("ACK"))),
        "{statuses:?}"
    );
    sbc.assert_idle(IDLE);
}

#[test]
fn rtp_ports_held_by_another_process_are_skipped() {
    let _serial = serial();
    let calls = 6;
    let range = rtp(11); // 50 pairs
    let callee = pcmu_callee("callee", calls);
    let sbc = Sbc::start(&SbcSpec::new(
        "busy-ports",
        range,
        to_sip_target(callee.addr(), ""),
    ));
    let bind = |port: u16| std::net::UdpSocket::bind((sbc.sip.ip(), port));
    // "Another process" holds 36 of the 50 pairs: the RTP half of most, only the
    // RTCP half (+1) of every fourth.
    let pairs: Vec<u16> = (range.0..range.1).step_by(2).collect();
    let (busy, free) = pairs.split_at(36);
    let held: Vec<std::net::UdpSocket> = busy
        .iter()
        .enumerate()
        .map(|(i, &p)| bind(if i % 4 == 3 { p + 1 } else { p }).expect("a port of the range"))
        .collect();
    let mut callee = callee.spawn();
    let mut carrier = caller("caller", "caller.xml", &sbc, "+15550100", calls)
        .hold_ms(200)
        .spawn();
    carrier.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64,
        "{}",
        sbc.logs()
    );
    assert!(
        m.value("sbc_rtp_ports_skipped_total", &[]) >= busy.len() as f64,
        "{:?}",
        m.samples
    );
    assert_eq!(m.value("sbc_rtp_ports_exhausted_total", &[]), 0.0);
    // Every SDP we wrote names a free pair.
    let mut offered = sdp_ports(&carrier.received());
    offered.extend(sdp_ports(&callee.received()));
    assert!(offered.len() >= 2 * calls, "{offered:?}"); // retransmissions may repeat one
    assert!(offered.iter().all(|p| free.contains(p)), "{offered:?}");

    // Now every pair is held: the call gets 503, counted and logged with the range.
    let also: Vec<std::net::UdpSocket> = free.iter().map(|&p| bind(p).unwrap()).collect();
    let mut refused = caller("refused", "caller_unavailable.xml", &sbc, "+15550100", 1).spawn();
    refused.assert_success(SIPP_DONE);
    let exhausted = sbc.wait_metric(
        "sbc_rtp_ports_exhausted_total",
        &[],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert_eq!(exhausted, 1.0);
    let range_text = format!("{}-{}", range.0, range.1);
    assert!(
        sbc.logs().contains("RTP port range exhausted") && sbc.logs().contains(&range_text),
        "{}",
        sbc.logs()
    );
    drop((held, also));
}

#[test]
fn a_flood_is_banned_while_another_source_completes_its_calls() {
    let _serial = serial();
    let calls = 20;
    let callee = pcmu_callee("callee", calls);
    let protection =
        "[protection]\nrate_limit_requests = 100\nrate_limit_window = \"1s\"\nban_time = \"60s\"\n";
    let sbc = Sbc::start(&SbcSpec::new(
        "flood",
        rtp(7),
        to_sip_target(callee.addr(), protection),
    ));
    let mut callee = callee.spawn();
    // 500 OPTIONS per second for 5 s from 127.0.0.5.
    let flood_total = 2500;
    let mut flood = SippCmd::new("flood", "flood_options.xml", lo(5))
        .remote(sbc.sip)
        .service("flood")
        .calls(flood_total)
        .rate(500)
        .spawn();
    let bans = sbc.wait_metric("sbc_sip_bans_total", &[], Duration::from_secs(20), |v| {
        v >= 1.0
    });
    assert_eq!(bans, 1.0, "the flood was not banned\n{}", sbc.logs());
    // The carrier calls while the flood goes on (3 requests per call at 10 calls
    // per second: well within its limit of 100 per second).
    let mut caller = caller("caller", "caller.xml", &sbc, "+15550100", calls)
        .hold_ms(200)
        .spawn();
    caller.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    flood.assert_success(SIPP_DONE);

    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        calls as f64
    );
    assert_eq!(m.value("sbc_sip_bans_total", &[]), 1.0, "only the flooder");
    let dropped = m.value("sbc_sip_banned_drops_total", &[]);
    assert!(
        dropped >= (flood_total - 100 - 200) as f64,
        "only {dropped} of {flood_total} flood messages were dropped: {:?}",
        m.samples
    );
}

#[test]
fn sigterm_ends_active_calls_with_bye_and_exits() {
    let _serial = serial();
    let calls = 5;
    let callee = pcmu_callee("callee", calls);
    let mut spec = SbcSpec::new("sigterm", rtp(8), to_sip_target(callee.addr(), ""));
    spec.drain_secs = 2;
    let mut sbc = Sbc::start(&spec);
    let mut callee = callee.spawn();
    // Callers that stay until the SBC hangs up.
    let mut caller = caller(
        "caller-until-bye",
        "caller_until_bye.xml",
        &sbc,
        "+15550100",
        calls,
    )
    .hold_ms(60_000)
    .spawn();
    let up = sbc.wait_metric("sbc_calls_active", &[], Duration::from_secs(30), |v| {
        v == calls as f64
    });
    assert_eq!(up, calls as f64, "{}", sbc.logs());

    let clock = sbc::clock::Clock::new();
    sbc.terminate();
    let status = sbc.wait_exit(Duration::from_secs(20));
    let took = clock.now().as_micros() as f64 / 1e6;
    let status = status.unwrap_or_else(|| panic!("sbc still runs 20 s after SIGTERM"));
    eprintln!("sbc exited {took:.2} s after SIGTERM");
    assert!(status.success(), "sbc exited with {status}\n{}", sbc.logs());
    // It drains for 2 s, then ends the calls, waits (up to 3 s) for the BYEs'
    // answers and stops.
    assert!(
        (1.9..=7.0).contains(&took),
        "sbc exited {took:.2} s after SIGTERM (drain 2 s)\n{}",
        sbc.logs()
    );
    caller.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    let byes = caller
        .received()
        .iter()
        .filter(|m| m.is_request("BYE"))
        .count();
    assert_eq!(byes, calls, "every caller got a BYE");
    let byes = callee
        .received()
        .iter()
        .filter(|m| m.is_request("BYE"))
        .count();
    assert_eq!(byes, calls, "every far end got a BYE");
}

#[test]
fn topology_is_hidden_both_ways() {
    let _serial = serial();
    let calls = 2;
    let callee = pcmu_callee("callee", calls);
    let sbc = Sbc::start(&SbcSpec::new(
        "topology",
        rtp(9),
        to_sip_target(callee.addr(), ""),
    ));
    let mut callee = callee.spawn();
    let mut caller = caller("caller", "caller.xml", &sbc, "+15550100", calls)
        .hold_ms(200)
        .spawn();
    caller.assert_success(SIPP_DONE);
    callee.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);

    let caller_sent = caller.sent();
    let callee_sent = callee.sent();
    let caller_got = caller.received();
    let callee_got = callee.received();
    assert!(
        ["INVITE", "ACK", "BYE"]
            .iter()
            .all(|m| callee_got.iter().any(|x| x.is_request(m))),
        "the far end got INVITE, ACK and BYE"
    );
    // What identifies the caller's side must not reach the far end...
    let mut caller_side = vec!["127.0.0.2".to_string(), caller.addr.to_string()];
    caller_side.extend(values(&caller_sent, "Call-ID"));
    caller_side.extend(caller_sent.iter().flat_map(TracedMessage::via_branches));
    caller_side.extend(tags(&caller_sent, "From"));
    assert_hidden(&callee_got, &caller_side, "the far end");
    // ... and the far end's side must not reach the caller.
    let mut callee_side = vec!["127.0.0.3".to_string(), callee.addr.to_string()];
    callee_side.extend(values(&callee_got, "Call-ID"));
    callee_side.extend(callee_got.iter().flat_map(TracedMessage::via_branches));
    callee_side.extend(tags(&callee_sent, "To"));
    assert_hidden(&caller_got, &callee_side, "the caller");
}

// ----- trace helpers -----

/// The 200s to INVITEs with CSeq number `cseq`, in order.
fn answers_to(received: &[TracedMessage], cseq: u32) -> Vec<&TracedMessage> {
    received
        .iter()
        .filter(|m| {
            m.status() == Some(200)
                && m.header("CSeq").is_some_and(|c| {
                    c.split_whitespace()
                        .eq([cseq.to_string().as_str(), "INVITE"])
                })
        })
        .collect()
}

/// The `m=audio` ports of the SDP bodies in `msgs`.
fn sdp_ports(msgs: &[TracedMessage]) -> Vec<u16> {
    msgs.iter()
        .flat_map(|m| m.text.lines())
        .filter_map(|l| l.trim().strip_prefix("m=audio "))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

fn values(msgs: &[TracedMessage], header: &str) -> Vec<String> {
    let mut v: Vec<String> = msgs
        .iter()
        .flat_map(|m| m.headers(header))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn distinct_values(msgs: &[TracedMessage], header: &str) -> Vec<String> {
    let mut v = values(msgs, header);
    v.sort();
    v.dedup();
    v
}

fn distinct(msgs: &[TracedMessage], header: &str) -> usize {
    values(msgs, header).len()
}

/// The `tag` parameters of `header` (From or To) in `msgs`.
fn tags(msgs: &[TracedMessage], header: &str) -> Vec<String> {
    let mut v: Vec<String> = msgs
        .iter()
        .flat_map(|m| m.headers(header))
        .filter_map(|h| {
            h.split(';')
                .find_map(|p| p.trim().strip_prefix("tag="))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn assert_hidden(got: &[TracedMessage], secrets: &[String], who: &str) {
    assert!(!secrets.is_empty() && !got.is_empty());
    for m in got {
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !m.text.contains(s.as_str()),
                "{who} received `{s}` from the other side:\n{}",
                m.text
            );
        }
    }
}

/// The key the REST API takes in these tests (all numbers).
const API_KEY: &str = "sbc-sipp-tests-api-key";

fn api_key_toml() -> String {
    format!(
        "[[auth.api_keys]]\nname = \"tests\"\nsha256 = \"{}\"\n\n",
        sip_bridge::token::hash_api_key(API_KEY)
    )
}

/// The one live call once it is connected with `joined` parties in it.
fn connected_call(sbc: &Sbc, joined: usize) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = integration_tests::sbc_process::wait_until(Duration::from_secs(30), || {
        last = sbc
            .http("GET", "/v1/calls", &[("x-api-key", API_KEY)], None)
            .json();
        last["calls"][0]["state"] == "connected"
            && last["calls"][0]["participants"]
                .as_array()
                .is_some_and(|ps| ps.iter().filter(|p| p["state"] == "joined").count() == joined)
    });
    assert!(ok, "no connected call with {joined} parties: {last:#}");
    last["calls"][0].clone()
}

/// The REST API asks party `role` of `call` to blind-transfer the others to
/// `target` (ringing at most `timeout` s).
fn api_transfer(sbc: &Sbc, call: &serde_json::Value, role: &str, target: &str, timeout: u32) {
    let by = call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == role)
        .unwrap_or_else(|| panic!("no {role}: {call:#}"))["id"]
        .clone();
    let body = serde_json::json!({"target": target, "participantId": by, "timeout": timeout});
    let path = format!("/v1/calls/{}/transfer", call["callId"].as_str().unwrap());
    let r = sbc.http(
        "POST",
        &path,
        &[("x-api-key", API_KEY), ("content-type", "application/json")],
        Some(&body.to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

fn api_hangup(sbc: &Sbc, call: &serde_json::Value) {
    let path = format!("/v1/calls/{}", call["callId"].as_str().unwrap());
    let r = sbc.http("DELETE", &path, &[("x-api-key", API_KEY)], None);
    assert_eq!(r.status, 204, "{}", r.body);
}

/// A carrier call on a trunk with `transfer = "refer"` (and `extra`)
/// answered by B (the trunk's far end, `b_calls` calls for the fallback);
/// the API has B blind-transfer the carrier's caller to +15550177.
fn refer_out_call(
    name: &str,
    test: u16,
    extra: &str,
    scenario: &str,
    keys: &[(&str, &str)],
    b_calls: usize,
) -> (Sbc, Sipp, Sipp, serde_json::Value) {
    let b = pcmu_callee(&format!("{name}-b"), b_calls);
    let trunk = format!("transfer = \"refer\"\n{extra}");
    let sbc = Sbc::start(&SbcSpec {
        media: "media_timeout = \"300s\"\n".into(),
        ..SbcSpec::new(
            name,
            rtp(test),
            format!("{}{}", api_key_toml(), to_pstn_target(b.addr(), &trunk)),
        )
    });
    let b = b.spawn();
    let mut cmd = caller(&format!("{name}-a"), scenario, &sbc, "+15550100", 1);
    for (k, v) in keys {
        cmd = cmd.key(k, v);
    }
    let a = cmd.spawn();
    let call = connected_call(&sbc, 2);
    api_transfer(&sbc, &call, "phone", "+15550177", 5);
    (sbc, a, b, call)
}

fn received_requests(sipp: &Sipp, method: &str) -> Vec<TracedMessage> {
    sipp.received()
        .into_iter()
        .filter(|m| m.is_request(method))
        .collect()
}

#[test]
fn our_refer_out_notified_200_is_followed_by_our_bye() {
    let _serial = serial();
    let (sbc, mut a, mut b, _) = refer_out_call(
        "refer-out-ok",
        25,
        "",
        "caller_refer_out.xml",
        &[("final", "200 OK")],
        1,
    );
    // The caller got REFER (to the number through its own network), 202,
    // NOTIFY 100, NOTIFY 200, then our BYE; B (the transferor) leaves too.
    a.assert_success(SIPP_DONE);
    b.assert_success(SIPP_DONE);
    let refer = &received_requests(&a, "REFER")[0];
    assert_eq!(
        refer.header("Refer-To"),
        Some("<sip:+15550177@carrier.test>"),
        "{}",
        refer.text
    );
    assert_eq!(
        received_requests(&b, "INVITE").len(),
        1,
        "we never called the number"
    );
    sbc.assert_idle(IDLE);
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_transfers_total", &["state=\"completed\""]),
        1.0,
        "{:?}",
        m.samples
    );
}

#[test]
fn our_refer_out_notified_486_reports_the_failure_and_the_call_goes_on() {
    let _serial = serial();
    let (sbc, mut a, mut b, call) = refer_out_call(
        "refer-out-486",
        26,
        "",
        "caller_refer_out.xml",
        &[("final", "486 Busy Here")],
        1,
    );
    // The transfer failed: B is back (un-held), the call goes on until the
    // backend ends it.
    let ok = integration_tests::sbc_process::wait_until(Duration::from_secs(30), || {
        sbc.metric("sbc_transfers_total", &["state=\"failed\""]) == 1.0
    });
    assert!(ok, "{}", sbc.logs());
    connected_call(&sbc, 2);
    api_hangup(&sbc, &call);
    a.assert_success(SIPP_DONE);
    b.assert_success(SIPP_DONE);
    // Never held (a REFER's transferor is not), never called twice.
    assert_eq!(received_requests(&b, "INVITE").len(), 1);
    sbc.assert_idle(IDLE);
}

#[test]
fn our_refer_out_refused_or_never_notified_is_bridged_by_us() {
    let _serial = serial();
    for (name, test, scenario) in [
        ("refer-out-403", 27, "caller_refer_out_refused.xml"),
        ("refer-out-silent", 28, "caller_refer_out_silent.xml"),
    ] {
        let (sbc, mut a, mut b, call) = refer_out_call(name, test, "", scenario, &[], 2);
        // We call the number ourselves (at once after 403; after the 5 s
        // transfer timeout without NOTIFY): B's second call answers, B's
        // first leg (the transferor) is released.
        let ok = integration_tests::sbc_process::wait_until(Duration::from_secs(30), || {
            sbc.metric("sbc_transfers_total", &["state=\"completed\""]) == 1.0
        });
        assert!(ok, "{name}: {}", sbc.logs());
        let invites = received_requests(&b, "INVITE");
        assert!(
            invites.iter().any(|m| m
                .start_line()
                .starts_with("INVITE sip:+15550177@carrier.test ")),
            "{name}: {:?}",
            invites.iter().map(|m| m.start_line()).collect::<Vec<_>>()
        );
        connected_call(&sbc, 2);
        api_hangup(&sbc, &call);
        a.assert_success(SIPP_DONE);
        b.assert_success(SIPP_DONE);
        sbc.assert_idle(IDLE);
    }
}

#[test]
fn an_invite_with_replaces_takes_over_the_pbx_dialog() {
    let _serial = serial();
    // The call goes to a PBX (its phone P1 answers); another phone of the
    // PBX, P2, takes it over with Replaces, as at the end of an attended
    // transfer inside the PBX.
    let p1 = pcmu_callee("replaces-p1", 1);
    let toml = format!(
        "{}{}[[trunks]]\nname = \"pbx\"\nhost = \"pbx.test\"\npeers = [\"{}\"]\ninbound = [\"127.0.0.3/32\"]\n\n{}",
        api_key_toml(),
        carrier_trunk(SocketAddr::new(lo(9), 5060), ""),
        p1.addr(),
        number("service", "+15550100", "pstn:+15550300@pbx"),
    );
    let sbc = Sbc::start(&SbcSpec {
        media: "media_timeout = \"300s\"\n".into(),
        ..SbcSpec::new("replaces", rtp(29), toml)
    });
    let mut p1 = p1.spawn();
    let mut a = caller("replaces-a", "caller_until_bye.xml", &sbc, "+15550100", 1).spawn();
    let call = connected_call(&sbc, 2);
    // The dialog as P1 saw it: our Call-ID and tag, its own tag.
    let invite = received_requests(&p1, "INVITE").remove(0);
    let call_id = invite.header("Call-ID").unwrap().to_string();
    let our_tag = invite
        .header("From")
        .unwrap()
        .split(";tag=")
        .nth(1)
        .unwrap()
        .to_string();
    let ok = p1
        .sent()
        .into_iter()
        .find(|m| m.start_line().starts_with("SIP/2.0 200"));
    let p1_tag = ok
        .unwrap()
        .header("To")
        .unwrap()
        .split(";tag=")
        .nth(1)
        .unwrap()
        .to_string();
    let replaces = format!("{call_id};to-tag={our_tag};from-tag={p1_tag}");
    let mut p2 = SippCmd::new("replaces-p2", "caller_replaces.xml", lo(3))
        .remote(sbc.sip)
        .service("+15550300")
        .calls(1)
        .key("replaces", &replaces)
        .spawn();
    // P1 is released with BYE; P2 talks with the caller in the same call.
    p1.assert_success(SIPP_DONE);
    let after = connected_call(&sbc, 2);
    assert_eq!(after["callId"], call["callId"]);
    api_hangup(&sbc, &after);
    a.assert_success(SIPP_DONE);
    p2.assert_success(SIPP_DONE);
    sbc.assert_idle(IDLE);
}
