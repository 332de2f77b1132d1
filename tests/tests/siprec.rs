//! System tests of the SIPREC client (RFC 7866) with the real `sbc` binary
//! and SIPp as the recording server (`tests/sipp/srs.xml`): SIPp checks the
//! recording session's INVITE (option tag, `+sip.src`, multipart body,
//! labels, metadata) and answers both streams toward two UDP sockets of this
//! test, which read the RTP: label 1 carries the customer's tone, label 2
//! the far end's, then the transfer target's, one SSRC each throughout. The
//! metadata in the INVITE and in the re-INVITE after the transfer is read
//! back: label 1 stays the customer, label 2 moves from the first far end to
//! the target. With `fail_closed`, an SRS that answers 503 refuses the call.
//!
//! Needs `target/debug/sbc` and SIPp. Addresses: the SBC 127.0.0.1, the
//! carrier's caller 127.0.0.2, the far end 127.0.0.3, the SRS (SIP and RTP)
//! 127.0.0.4, the transfer target 127.0.0.5.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::sbc_process::{
    HttpReceiver, Sbc, SbcSpec, SippCmd, assert_tone_over, lo, rtp, serial, wait_until,
};
use serde_json::{Value, json};

const KEY: &str = "siprec-test-key-of-the-service-backend";
const WAIT: Duration = Duration::from_secs(40);
const SIPP_DONE: Duration = Duration::from_secs(90);

/// Number `service` rings the far end and records through `srs`.
fn config(callee: std::net::SocketAddr, hook: &str, siprec: &str) -> String {
    let hash = sip_bridge::token::hash_api_key;
    format!(
        "[[auth.api_keys]]\nname = \"service\"\nsha256 = \"{}\"\nnumbers = [\"service\"]\n\n\
         [webhooks]\nurl = \"{hook}\"\nsecret = \"siprec-test-secret\"\n\n\
         [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{callee}\"]\n\
         inbound = [\"127.0.0.2/32\"]\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\nsiprec = {siprec}\n\
         dial = [ {{ ring = [\"sip:service@{callee}\"], timeout = \"20s\" }} ]\n",
        hash(KEY),
    )
}

/// One RTP packet as the SRS got it.
#[derive(Clone, Debug)]
struct Got {
    at: std::time::Instant,
    ssrc: u32,
    ts: u32,
    pcm: Vec<i16>,
}

/// An SRS's receiving socket: every PCMU packet, decoded.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let sock = UdpSocket::bind((lo(4), 0)).expect("bind the SRS's RTP socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let Ok(p) =
                    media_core::rtp::RtpPacket::parse(bytes::Bytes::copy_from_slice(&buf[..n]))
                else {
                    continue;
                };
                if p.payload_type().value() != 0 {
                    continue;
                }
                let mut pcm = vec![0i16; p.payload_bytes().len()];
                media_core::codec::g711::ulaw_decode(p.payload_bytes(), &mut pcm);
                g.lock().unwrap().push(Got {
                    at: integration_tests::agent::now(),
                    ssrc: p.ssrc().0,
                    ts: p.timestamp().0,
                    pcm,
                });
            }
        });
        Receiver {
            port,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn packets(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The metadata document of a SIP message's body.
fn metadata(msg: &str) -> String {
    let start = msg
        .find("<?xml")
        .unwrap_or_else(|| panic!("no metadata in\n{msg}"));
    let end = msg.find("</recording>").expect("metadata end") + "</recording>".len();
    msg[start..end].to_string()
}

/// Participant ids whose `participantstreamassoc` sends the stream of `label`.
fn senders(xml: &str, label: &str) -> Vec<String> {
    let at = xml.find(&format!("<label>{label}</label>")).unwrap();
    let open = xml[..at].rfind("stream_id=\"").unwrap() + "stream_id=\"".len();
    let stream = xml[open..].split('"').next().unwrap();
    xml.split("<participantstreamassoc ")
        .skip(1)
        .filter(|a| a.contains(&format!("<send>{stream}</send>")))
        .filter_map(|a| a.split('"').nth(1).map(String::from))
        .collect()
}

/// The id of the participant whose AOR contains `who`.
fn participant(xml: &str, who: &str) -> String {
    let at = xml
        .find(&format!("aor=\"sip:{who}"))
        .unwrap_or_else(|| panic!("no participant {who} in\n{xml}"));
    let open = xml[..at].rfind("participant_id=\"").unwrap() + "participant_id=\"".len();
    xml[open..].split('"').next().unwrap().to_string()
}

fn pcm(p: &[Got]) -> Vec<i16> {
    p.iter().flat_map(|g| g.pcm.iter().copied()).collect()
}

fn siprec_events(hook: &HttpReceiver) -> Vec<Value> {
    hook.requests()
        .iter()
        .map(|r| r.json())
        .filter(|v| v["event"] == "siprec")
        .collect()
}

#[test]
fn sipp_as_srs_gets_both_labels_their_metadata_and_a_reinvite_after_a_transfer() {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let (one, two) = (Receiver::start(), Receiver::start());
    let mut srs = SippCmd::new("srs", "srs.xml", lo(4))
        .key("p1", &one.port.to_string())
        .key("p2", &two.port.to_string())
        .calls(1)
        .timeout_secs(120)
        .spawn();
    // The far end is parked (held) while the target rings.
    let mut far = SippCmd::new("siprec-callee", "callee_tone_held.xml", lo(3))
        .tone(1000.0, 10)
        .calls(1)
        .timeout_secs(120)
        .spawn();
    let mut target = SippCmd::tone_callee("siprec-target", lo(5), 1500.0).spawn();
    let toml = config(
        far.addr,
        &hook.url("/events"),
        &format!("{{ srs = \"sip:srs@{}\" }}", srs.addr),
    );
    let sbc = Sbc::start(&SbcSpec::new("siprec", rtp(56), toml));
    let mut carrier =
        SippCmd::tone_caller("siprec-caller", lo(2), sbc.sip, "+15550100", 440.0, 9000).spawn();
    let mut call = Value::Null;
    let up = wait_until(WAIT, || {
        let r = sbc.http("GET", "/v1/calls", &[("X-API-Key", KEY)], None);
        call = r.json()["calls"][0].clone();
        call["state"] == "connected"
    });
    assert!(up, "no call: {call}\n{}", sbc.logs());
    let id = call["callId"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(3));
    let transferred_at = one.packets().len();
    // The far end hands the customer to the target.
    let far_party = call["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["role"] != "customer"))
        .map(|p| p["id"].clone())
        .unwrap_or_else(|| panic!("no far end in {call}"));
    let body = json!({"target": format!("sip:target@{}", target.addr), "participantId": far_party})
        .to_string();
    let r = sbc.http(
        "POST",
        &format!("/v1/calls/{id}/transfer"),
        &[("X-API-Key", KEY)],
        Some(&body),
    );
    assert_eq!(r.status, 202, "{}\n{}", r.body, sbc.logs());
    carrier.assert_success(SIPP_DONE);
    far.assert_success(SIPP_DONE);
    target.assert_success(SIPP_DONE);
    srs.assert_success(SIPP_DONE);

    // SIPp checked the INVITE's shape; the metadata's mapping is read here.
    let invites: Vec<String> = srs
        .received()
        .into_iter()
        .filter(|m| m.start_line().starts_with("INVITE "))
        .map(|m| m.text)
        .collect();
    assert!(
        invites.len() >= 3,
        "INVITE, far end joined, transfer: {}",
        invites.len()
    );
    let first = metadata(&invites[0]);
    let customer = participant(&first, "+15550117");
    assert_eq!(senders(&first, "1"), std::slice::from_ref(&customer));
    let joined = metadata(&invites[1]);
    let far_id = participant(&joined, &format!("service@{}", far.addr));
    assert_eq!(senders(&joined, "2"), std::slice::from_ref(&far_id));
    let last = metadata(invites.last().unwrap());
    let target_id = participant(&last, &format!("target@{}", target.addr));
    assert_eq!(
        senders(&last, "1"),
        [customer],
        "label 1 is still the customer"
    );
    assert_eq!(
        senders(&last, "2"),
        [target_id],
        "label 2 is the target now"
    );
    assert!(last.contains("<disassociate-time>"), "{last}");

    // Both streams: one SSRC each, the customer on 1, the far ends on 2.
    let (p1, p2) = (one.packets(), two.packets());
    assert!(
        p1.len() > 300 && p2.len() > 300,
        "{} and {} packets",
        p1.len(),
        p2.len()
    );
    for (p, l) in [(&p1, 1), (&p2, 2)] {
        let mut ssrcs: Vec<u32> = p.iter().map(|g| g.ssrc).collect();
        ssrcs.dedup();
        assert_eq!(ssrcs.len(), 1, "label {l}: SSRCs {ssrcs:?}");
        // Timestamps follow the clock over the call: across a change of
        // source the stream's timestamp moves on by the time until the new
        // source's first packet (2-17 ms off over 9 s here; a stream that
        // ignored the gap would be seconds behind).
        let (a, b) = (&p[0], p.last().unwrap());
        let wall = b.at.duration_since(a.at).as_millis() as i64;
        let rtp = i64::from(b.ts.wrapping_sub(a.ts)) / 8;
        eprintln!("label {l}: {rtp} ms of RTP in {wall} ms");
        assert!(
            (wall - rtp).abs() < 150,
            "label {l}: {rtp} ms of RTP in {wall} ms"
        );
    }
    let label1 = pcm(&p1);
    let n = label1.len();
    assert_tone_over(&label1[n / 4..3 * n / 4], 8000, 440.0, 1000.0, "label 1");
    let before = pcm(&p2[..transferred_at.min(p2.len())]);
    let after = pcm(&p2[transferred_at.min(p2.len())..]);
    let (b, a) = (before.len(), after.len());
    assert_tone_over(&before[b / 4..], 8000, 1000.0, 440.0, "label 2 before");
    assert_tone_over(&after[a / 2..], 8000, 1500.0, 1000.0, "label 2 after");
    assert_tone_over(&after[a / 2..], 8000, 1500.0, 440.0, "label 2 after");

    let ok = wait_until(WAIT, || siprec_events(&hook).len() >= 2);
    let states: Vec<Value> = siprec_events(&hook)
        .iter()
        .map(|v| v["siprec"]["state"].clone())
        .collect();
    assert!(
        ok && states == [json!("started"), json!("stopped")],
        "{states:?}"
    );
    assert_eq!(
        sbc.metric("sbc_siprec_sessions_total", &["state=\"started\""]),
        1.0
    );
    assert_eq!(sbc.metric("sbc_siprec_sessions_active", &[]), 0.0);
}

#[test]
fn fail_closed_refuses_the_call_when_the_srs_answers_503() {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let mut srs = SippCmd::new("srs-refuse", "srs_refuse.xml", lo(4))
        .calls(1)
        .spawn();
    let far = SippCmd::tone_callee("siprec-unrung", lo(3), 1000.0).spawn();
    let toml = config(
        far.addr,
        &hook.url("/events"),
        &format!("{{ srs = \"sip:srs@{}\", fail_closed = true }}", srs.addr),
    );
    let sbc = Sbc::start(&SbcSpec::new("siprec-closed", rtp(57), toml));
    let mut carrier = SippCmd::new("siprec-refused", "caller_unavailable.xml", lo(2))
        .remote(sbc.sip)
        .service("+15550100")
        .calls(1)
        .spawn();
    carrier.assert_success(SIPP_DONE);
    srs.assert_success(SIPP_DONE);
    // Nothing rang: the far end never got an INVITE.
    assert!(far.received().is_empty(), "the far end rang");
    let ok = wait_until(WAIT, || !siprec_events(&hook).is_empty());
    let ev = siprec_events(&hook);
    assert!(ok, "no siprec event\n{}", sbc.logs());
    assert_eq!(ev[0]["siprec"]["state"], "failed");
    assert_eq!(ev[0]["sipCode"], 503);
}
