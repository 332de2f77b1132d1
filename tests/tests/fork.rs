//! System tests of live media forks with the real `sbc` binary: SIPp parties
//! play their own tones (the caller 440 Hz, the far end 1000 Hz); a test
//! consumer (`integration_tests::fork_consumer`) takes each framing and
//! checks tracks, rate, frame size and count, and sends insights back; a
//! consumer that stops reading, one that crashes and one that is never
//! there leave the call whole (the far end still gets every packet), the
//! crashed one is reconnected, the absent one fails the fork (webhook).
//!
//! Needs `target/debug/sbc` and SIPp. Addresses as in `sbc_sipp.rs`.

use std::time::Duration;

use integration_tests::fork_consumer::{ForkConsumer, Mode};
use integration_tests::sbc_process::{
    HttpReceiver, Sbc, SbcSpec, SippCmd, assert_tone_over, lo, rtp, serial, wait_until,
};
use serde_json::{Value, json};

const KEY: &str = "fork-test-key-of-the-service-backend";
const WAIT: Duration = Duration::from_secs(40);
const SIPP_DONE: Duration = Duration::from_secs(90);

/// Number `service` rings the far end; its calls fork to `fork` (a TOML
/// inline table) when given.
fn config(callee: std::net::SocketAddr, hook: &str, fork: Option<&str>) -> String {
    let hash = sip_bridge::token::hash_api_key;
    let fork = fork.map(|f| format!("fork = {f}\n")).unwrap_or_default();
    format!(
        "[[auth.api_keys]]\nname = \"service\"\nsha256 = \"{}\"\nnumbers = [\"service\"]\n\n\
         [webhooks]\nurl = \"{hook}\"\nsecret = \"fork-test-secret\"\n\n\
         [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{callee}\"]\n\
         inbound = [\"127.0.0.2/32\"]\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n{fork}\
         dial = [ {{ ring = [\"sip:service@{callee}\"], timeout = \"20s\" }} ]\n",
        hash(KEY),
    )
}

fn callee(name: &str) -> SippCmd {
    SippCmd::tone_callee(name, lo(3), 1000.0)
}

fn caller(name: &str, sbc: &Sbc, talk_ms: u64) -> SippCmd {
    SippCmd::tone_caller(name, lo(2), sbc.sip, "+15550100", 440.0, talk_ms)
}

/// `track` of `rate` holds `hz` and not `not`, 30 dB apart, over its middle.
fn holds(track: &[i16], rate: u32, hz: f64, not: f64, what: &str) {
    let n = track.len();
    assert!(n > rate as usize * 2, "{what}: only {n} samples");
    assert_tone_over(&track[n / 4..3 * n / 4], rate, hz, not, what);
}

#[test]
fn a_fork_streams_both_tracks_in_each_framing_and_its_insights_come_back() {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let native = ForkConsumer::start(lo(1), Mode::Normal);
    let twilio = ForkConsumer::start(lo(1), Mode::Normal);
    let mut far = callee("fork-callee").spawn();
    let plan_fork = format!(
        "{{ url = \"{}\", tracks = \"both\", rate = 16000, headers = {{ Authorization = \"Bearer t0k\" }} }}",
        native.url("/native")
    );
    let toml = config(far.addr, &hook.url("/events"), Some(&plan_fork));
    let sbc = Sbc::start(&SbcSpec::new("fork", rtp(54), toml));
    let mut carrier = caller("fork-caller", &sbc, 6000).spawn();
    // The plan's fork streams from the answer; the API adds a Twilio one.
    let mut call = Value::Null;
    let up = wait_until(WAIT, || {
        let r = sbc.http("GET", "/v1/calls", &[("X-API-Key", KEY)], None);
        call = r.json()["calls"][0].clone();
        call["state"] == "connected" && call["forks"].as_array().is_some_and(|f| f.len() == 1)
    });
    assert!(up, "no forked call: {call}\n{}", sbc.logs());
    let id = call["callId"].as_str().unwrap().to_string();
    let body = json!({"url": twilio.url("/twilio"), "framing": "twilio"}).to_string();
    let r = sbc.http(
        "POST",
        &format!("/v1/calls/{id}/forks"),
        &[("X-API-Key", KEY)],
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["fork"]["status"], "streaming");
    carrier.assert_success(SIPP_DONE);
    far.assert_success(SIPP_DONE);
    let stopped = wait_until(WAIT, || {
        native.log(|l| l.events.iter().any(|e| e["event"] == "stop"))
            && twilio.log(|l| l.events.iter().any(|e| e["event"] == "stop"))
    });
    assert!(stopped, "the forks did not stop\n{}", sbc.logs());

    let mut talk = 0;
    let completed = wait_until(WAIT, || {
        let t = hook
            .requests()
            .iter()
            .map(|r| r.json())
            .find(|v| v["event"] == "completed")
            .and_then(|v| v["talkTimeMs"].as_u64());
        talk = t.unwrap_or_default();
        t.is_some()
    });
    assert!(completed, "no completed event\n{}", sbc.logs());
    // Native: 16 kHz stereo, 1280-byte frames, one per 20 ms of the call.
    native.log(|l| {
        let s = &l.starts[0];
        assert_eq!(
            (s["rate"].as_u64(), s["encoding"].as_str()),
            (Some(16_000), Some("pcm16le"))
        );
        assert_eq!(s["channels"][0]["role"], "customer");
        assert_eq!(s["callId"], id.as_str());
        assert!(l.frame_bytes.iter().all(|b| *b == 1280), "frame sizes");
        // One frame per 20 ms of the call, by the sbc's own account of its
        // talk time (within a few frames of the fork's start and stop).
        let frames = l.frame_bytes.len() as u64;
        assert!(
            (frames * 20).abs_diff(talk) <= 100,
            "{frames} frames for {talk} ms of talk"
        );
        holds(&l.tracks[0], 16_000, 440.0, 1000.0, "native channel 1");
        holds(&l.tracks[1], 16_000, 1000.0, 440.0, "native channel 2");
        // How they were paced is measured, not asserted.
        let span = l.arrivals.last().unwrap().at - l.arrivals[0].at;
        eprintln!("native: {frames} frames arrived over {span:?}");
        assert!(l.insights_sent >= 5, "insights sent {}", l.insights_sent);
    });
    // Twilio: u-law 8 kHz per track, chunks and timestamps in step.
    twilio.log(|l| {
        let s = &l.starts[0];
        assert_eq!(s["start"]["tracks"], json!(["inbound", "outbound"]));
        assert_eq!(s["start"]["mediaFormat"]["sampleRate"], 8000);
        assert!(l.frame_bytes.iter().all(|b| *b == 160), "payload sizes");
        let inbound: Vec<&(String, u64, u64)> =
            l.media.iter().filter(|(t, ..)| t == "inbound").collect();
        assert!(inbound.len() > 150, "{} inbound chunks", inbound.len());
        for (i, (_, chunk, ts)) in inbound.iter().enumerate() {
            assert_eq!((*chunk, *ts), (i as u64 + 1, i as u64 * 20), "chunk {i}");
        }
        holds(&l.tracks[0], 8000, 440.0, 1000.0, "twilio inbound");
        holds(&l.tracks[1], 8000, 1000.0, 440.0, "twilio outbound");
    });
    // The consumers' insights reached the sbc (the operators' path; none
    // is in this call, the browser suite shows them on the page).
    let m = sbc.metrics();
    assert!(m.value("sbc_fork_messages_total", &[]) >= 5.0);
    assert_eq!(m.value("sbc_fork_frames_dropped_total", &[]), 0.0);
    assert_eq!(m.value("sbc_forks_active", &[]), 0.0);
    // The webhook heard the forks start and stop.
    let states: Vec<String> = hook
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|v| v["event"] == "fork")
        .map(|v| {
            format!(
                "{}/{}",
                v["fork"]["state"].as_str().unwrap_or(""),
                v["fork"]["via"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        states.contains(&"started/plan".to_string()) && states.contains(&"started/api".to_string()),
        "{states:?}"
    );
}

/// Packets the far end (test SIPp callee) would see cannot be counted by
/// SIPp; the sbc's own counters of what it relayed to it are the measure.
fn relayed_out(sbc: &Sbc) -> f64 {
    sbc.metrics()
        .value("sbc_rtp_packets_total", &["direction=\"out\""])
}

#[test]
fn consumers_that_stall_crash_or_never_come_leave_the_call_whole() {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let stall = ForkConsumer::start(lo(1), Mode::Stall);
    let crash = ForkConsumer::start(lo(1), Mode::Crash);
    let mut far = callee("forkfail-callee").spawn();
    let toml = config(far.addr, &hook.url("/events"), None);
    let sbc = Sbc::start(&SbcSpec::new("fork-fail", rtp(55), toml));
    let mut carrier = caller("forkfail-caller", &sbc, 12_000).spawn();
    let mut id = String::new();
    let up = wait_until(WAIT, || {
        let r = sbc.http("GET", "/v1/calls", &[("X-API-Key", KEY)], None);
        let c = &r.json()["calls"][0];
        id = c["callId"].as_str().unwrap_or("").to_string();
        c["state"] == "connected"
    });
    assert!(up, "no call\n{}", sbc.logs());
    // A port nobody listens on: connection refused, every time.
    let dead = std::net::TcpListener::bind((lo(1), 0)).unwrap();
    let dead_url = format!("ws://{}/gone", dead.local_addr().unwrap());
    drop(dead);
    for url in [stall.url("/s"), crash.url("/c"), dead_url] {
        let body = json!({"url": url, "tracks": "both", "rate": 8000}).to_string();
        let r = sbc.http(
            "POST",
            &format!("/v1/calls/{id}/forks"),
            &[("X-API-Key", KEY)],
            Some(&body),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let before = relayed_out(&sbc);
    carrier.assert_success(SIPP_DONE);
    far.assert_success(SIPP_DONE);
    // The call's media went on: about 50 packets a second each way for the
    // 12 s, whatever the consumers did (the count, not its timing).
    let relayed = relayed_out(&sbc) - before;
    eprintln!("relayed {relayed} packets while the forks stalled, crashed and failed");
    assert!(relayed >= 0.9 * 2.0 * 50.0 * 11.0, "{relayed} packets");
    // The stalled consumer: its frames were dropped (counted), the call never waited.
    let dropped = sbc.metrics().value("sbc_fork_frames_dropped_total", &[]);
    assert!(dropped > 100.0, "{dropped} frames dropped");
    // The crashed one was connected again and told where the stream resumed.
    let resumed = wait_until(WAIT, || crash.log(|l| l.starts.len() >= 2));
    assert!(resumed, "no reconnect\n{}", sbc.logs());
    crash.log(|l| {
        assert_eq!(l.starts[1]["resumed"], true);
        assert!(l.starts[1]["frames"].as_u64().unwrap() >= 50);
    });
    // The absent one failed the fork, and the webhook said so.
    let failed = wait_until(WAIT, || {
        hook.requests().iter().any(|r| {
            let v = r.json();
            v["event"] == "fork" && v["fork"]["state"] == "failed"
        })
    });
    assert!(failed, "no fork failure\n{}", sbc.logs());
    let m = sbc.metrics();
    assert_eq!(m.value("sbc_forks_failed_total", &[]), 1.0);
    assert!(m.value("sbc_fork_reconnects_total", &[]) >= 4.0);
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        1.0,
        "{}",
        sbc.logs()
    );
}
