//! System tests of the REST call control (`/v1/calls...`) of the real `sbc`
//! binary: API-key authentication and number scoping, listing and steering a
//! carrier's call (add, hold, DTMF, remove, blind transfer, monitor, hang up)
//! against SIPp parties, idempotent retries, click-to-call with its status
//! callbacks, and the served OpenAPI document.
//!
//! Needs `target/debug/sbc` (`cargo build -p sbc`) and SIPp. Addresses as in
//! `sbc_sipp.rs`: the SBC 127.0.0.1, the carrier's caller 127.0.0.2 (the
//! trunk's inbound range), far ends 127.0.0.3 and up. The tests run one at a
//! time (a lock); outcomes do not depend on timing (every wait polls).

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::sbc_process::{
    HttpReceiver, HttpResponse, Sbc, SbcSpec, Sipp, SippCmd, TracedMessage, lo, rtp, serial,
    wait_until,
};
use serde_json::{Value, json};

/// How long a SIPp run may take before the test gives up on it.
const SIPP_DONE: Duration = Duration::from_secs(90);
/// SIPp's own global timeout: a far end stays up through many API steps.
const SIPP_TIMEOUT_SECS: u64 = 180;
/// How long the SBC may take to let go of everything after the calls.
const IDLE: Duration = Duration::from_secs(40);
/// How long a step (a party answering, a BYE) may take to show.
const WAIT: Duration = Duration::from_secs(30);

/// The backend of number `service`.
const KEY: &str = "rest-api-test-key-of-the-service-backend";
/// The backend of number `other`: must not see `service`'s calls.
const OTHER_KEY: &str = "rest-api-test-key-of-the-other-backend";
/// Signs status callbacks (`[webhooks] secret`).
const WEBHOOK_SECRET: &str = "rest-api-test-webhook-secret";

/// The carrier trunk (calls from 127.0.0.2), number `service` (+15550100)
/// ringing `sip:service@{callee}`, number `other` of the other backend, and
/// both backends' keys, each scoped to its number.
fn config(callee: SocketAddr, extra: &str) -> String {
    let hash = sip_bridge::token::hash_api_key;
    format!(
        "[[auth.api_keys]]\nname = \"service-backend\"\nsha256 = \"{}\"\nnumbers = [\"service\"]\n\n\
         [[auth.api_keys]]\nname = \"other-backend\"\nsha256 = \"{}\"\nnumbers = [\"other\"]\n\n\
         [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{callee}\"]\n\
         inbound = [\"127.0.0.2/32\"]\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
         dial = [ {{ ring = [\"sip:service@{callee}\"], timeout = \"20s\" }} ]\n\n\
         [[numbers]]\nid = \"other\"\ne164 = \"+15550200\"\n\
         dial = [ {{ ring = [\"sip:other@127.0.0.9:5060\"], timeout = \"20s\" }} ]\n\n{extra}\n",
        hash(KEY),
        hash(OTHER_KEY),
    )
}

/// An sbc for these tests: no RTP flows in the SIPp calls, so the media
/// timeout must not end them first.
fn start_sbc(name: &str, rtp_range: (u16, u16), toml: String) -> Sbc {
    Sbc::start(&SbcSpec {
        media: "media_timeout = \"300s\"\n".into(),
        ..SbcSpec::new(name, rtp_range, toml)
    })
}

/// A far end on `127.0.0.{ip}` answering PCMU (callee.xml: 180, 200, answers
/// re-INVITEs, waits for BYE). With `dtmf` its answer also takes RFC 4733
/// telephone-events, so DTMF to it goes in RTP (SIP INFO, which the scenario
/// does not expect, would fail it): the scenario's `a=rtpmap:[answer_pt]`
/// line is padded into a harmless malformed rtpmap.
fn callee(name: &str, ip: u8, dtmf: bool) -> SippCmd {
    let pt = if dtmf {
        "0 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtpmap:0"
    } else {
        "0"
    };
    SippCmd::new(name, "callee.xml", lo(ip))
        .calls(1)
        .timeout_secs(SIPP_TIMEOUT_SECS)
        .key("answer_pt", pt)
        .key("answer_codec", "PCMU/8000")
        .key("answer_ptime", "20")
}

/// One backend's view of the API: its key on every request.
struct Api<'a> {
    sbc: &'a Sbc,
    key: &'a str,
}

impl Api<'_> {
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        idem: Option<&str>,
    ) -> HttpResponse {
        let mut headers = vec![("X-API-Key", self.key)];
        if let Some(k) = idem {
            headers.push(("Idempotency-Key", k));
        }
        let r = self.sbc.http(method, path, &headers, body);
        eprintln!(
            "{method} {path} {} -> {} {}",
            body.unwrap_or(""),
            r.status,
            r.body
        );
        r
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.send("GET", path, None, None)
    }

    fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.send("POST", path, Some(&body.to_string()), None)
    }

    fn post_idem(&self, path: &str, body: &Value, key: &str) -> HttpResponse {
        self.send("POST", path, Some(&body.to_string()), Some(key))
    }

    fn patch(&self, path: &str, body: &str) -> HttpResponse {
        self.send("PATCH", path, Some(body), None)
    }

    fn delete(&self, path: &str) -> HttpResponse {
        self.send("DELETE", path, None, None)
    }

    /// `GET /v1/calls/{id}`: the call (asserts the 200).
    fn call(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/calls/{id}"));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["call"].clone()
    }

    /// Polls the call until `ok` holds; the call then (panics with the last
    /// one seen).
    fn wait_call(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let done = wait_until(WAIT, || {
            last = self.call(id);
            ok(&last)
        });
        assert!(done, "{what}: the call is\n{last:#}\n{}", self.sbc.logs());
        last
    }
}

/// Asserts an error answer: the status and `{"error": {"code", "message"}}`.
fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{}", r.body);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        r.body
    );
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{}", r.body);
}

/// The call's participants.
fn parties(call: &Value) -> Vec<Value> {
    call["participants"].as_array().cloned().unwrap_or_default()
}

/// Participant `pid` of the call.
fn party(call: &Value, pid: &str) -> Option<Value> {
    parties(call).into_iter().find(|p| p["id"] == pid)
}

/// Whether the call is connected and its participants are exactly `pids`,
/// each joined (not ringing).
fn connected_with(call: &Value, pids: &[&str]) -> bool {
    let ps = parties(call);
    call["state"] == "connected"
        && ps.len() == pids.len()
        && pids.iter().all(|pid| {
            ps.iter()
                .any(|p| p["id"] == *pid && p["state"] != "ringing")
        })
}

/// The initial INVITEs a far end received (no To tag), retransmissions
/// counted once (by Call-ID).
fn initial_invites(sipp: &Sipp) -> usize {
    let mut ids: Vec<String> = sipp
        .received()
        .iter()
        .filter(|m| m.is_request("INVITE"))
        .filter(|m| !m.header("To").unwrap_or("").contains("tag="))
        .filter_map(|m| m.header("Call-ID").map(String::from))
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

/// The re-INVITEs a far end received (To tag), one per CSeq, in order.
fn reinvites(sipp: &Sipp) -> Vec<TracedMessage> {
    let mut out: Vec<TracedMessage> = Vec::new();
    for m in sipp.received() {
        if m.is_request("INVITE")
            && m.header("To").unwrap_or("").contains("tag=")
            && !out.iter().any(|o| o.header("CSeq") == m.header("CSeq"))
        {
            out.push(m);
        }
    }
    out
}

/// The CSeq header of a traced request.
fn m_cseq(m: &TracedMessage) -> &str {
    m.header("CSeq").unwrap_or("")
}

/// Whether the far end answered the request with `cseq` with a 200.
fn answered_200(sipp: &Sipp, cseq: &str) -> bool {
    sipp.sent()
        .iter()
        .any(|m| m.status() == Some(200) && m.header("CSeq") == Some(cseq))
}

/// Whether an SDP body puts the stream on hold (RFC 3264 section 8.4).
fn holds(sdp: &str) -> bool {
    sdp.contains("a=sendonly") || sdp.contains("a=inactive")
}

/// How many `method` requests a SIPp received (retransmissions too).
fn count(sipp: &Sipp, method: &str) -> usize {
    sipp.received()
        .iter()
        .filter(|m| m.is_request(method))
        .count()
}

#[test]
fn a_carrier_call_is_listed_and_steered_over_the_rest_api_by_its_backend_only() {
    let _serial = serial();
    // The plan's far end (B), an added party (C), the transfer target (D),
    // a supervisor (M).
    let b = callee("rest-b", 3, false);
    let c = callee("rest-c", 4, true);
    let d = callee("rest-d", 5, false);
    let m = callee("rest-m", 6, false);
    let receiver = HttpReceiver::start(lo(1));
    let webhooks = format!(
        "[webhooks]\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\n",
        receiver.url("/webhook")
    );
    let sbc = start_sbc("rest-api", rtp(40), config(b.addr(), &webhooks));
    let (c_uri, d_uri, m_uri) = (
        format!("sip:third@{}", c.addr()),
        format!("sip:fourth@{}", d.addr()),
        format!("sip:mon@{}", m.addr()),
    );
    let (mut b, mut c, mut d, mut m) = (b.spawn(), c.spawn(), d.spawn(), m.spawn());
    let api = Api {
        sbc: &sbc,
        key: KEY,
    };
    let other = Api {
        sbc: &sbc,
        key: OTHER_KEY,
    };

    // The document, served without a key, is the checked-in file.
    let doc = sbc.http("GET", "/v1/openapi.json", &[], None);
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("content-type"), Some("application/json"));
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sbc/docs/openapi.json"),
    )
    .expect("read sbc/docs/openapi.json");
    assert!(doc.body == file, "/v1/openapi.json differs from the file");

    // No key, a wrong key: 401 before anything.
    assert_error(
        &sbc.http("GET", "/v1/calls", &[], None),
        401,
        "UNAUTHORIZED",
    );
    let wrong = Api {
        sbc: &sbc,
        key: "not-a-key",
    };
    assert_error(&wrong.get("/v1/calls"), 401, "UNAUTHORIZED");
    assert_eq!(api.get("/v1/calls").json(), json!({"calls": []}));

    // The carrier's caller (A) calls +15550100; its plan rings B, who answers.
    let mut a = SippCmd::new("rest-a", "caller_until_bye.xml", lo(2))
        .remote(sbc.sip)
        .service("+15550100")
        .calls(1)
        .timeout_secs(SIPP_TIMEOUT_SECS)
        .spawn();
    let mut list = Value::Null;
    let up = wait_until(WAIT, || {
        list = api.get("/v1/calls").json();
        list["calls"].as_array().is_some_and(|c| {
            let ps = c.first().map(parties).unwrap_or_default();
            c.len() == 1
                && c[0]["state"] == "connected"
                && ps.len() == 2
                && ps.iter().all(|p| p["state"] == "joined")
        })
    });
    assert!(up, "the call never connected: {list:#}\n{}", sbc.logs());
    let listed = list["calls"][0].clone();
    let id = listed["callId"].as_str().expect("callId").to_string();
    assert!(id.starts_with("c-"), "{listed:#}");
    assert_eq!(listed["direction"], "inbound", "{listed:#}");
    assert_eq!(listed["number"], "service", "{listed:#}");
    let call = api.call(&id);
    assert_eq!(call, listed, "GET /v1/calls/{id} and the list agree");
    let ps = parties(&call);
    let caller = ps
        .iter()
        .find(|p| p["role"] == "customer")
        .unwrap_or_else(|| panic!("no customer: {call:#}"));
    let far = ps
        .iter()
        .find(|p| p["id"] != caller["id"])
        .expect("the far end");
    assert_eq!(caller["kind"], "sip", "{call:#}");
    assert_eq!(far["kind"], "sip", "{call:#}");
    assert_eq!(far["role"], "phone", "{call:#}");
    assert_eq!(
        far["address"],
        format!("sip:service@{}", b.addr),
        "{call:#}"
    );
    assert_eq!(
        (far["held"].clone(), far["muted"].clone()),
        (json!(false), json!(false))
    );
    let pa = caller["id"].as_str().unwrap().to_string();
    let pb = far["id"].as_str().unwrap().to_string();
    assert!(pa.starts_with("p-") && pb.starts_with("p-"), "{call:#}");

    // Another number's backend sees nothing and can do nothing to it.
    let call_path = format!("/v1/calls/{id}");
    assert_eq!(other.get("/v1/calls").json(), json!({"calls": []}));
    assert_error(&other.get(&call_path), 404, "NOT_FOUND");
    assert_error(&other.delete(&call_path), 404, "NOT_FOUND");
    assert_error(
        &other.post(
            &format!("{call_path}/participants"),
            &json!({"target": c_uri}),
        ),
        404,
        "NOT_FOUND",
    );
    assert_error(
        &other.post(&format!("{call_path}/dtmf"), &json!({"digits": "1"})),
        404,
        "NOT_FOUND",
    );
    assert_error(
        &other.patch(
            &format!("{call_path}/participants/{pb}"),
            r#"{"held":true}"#,
        ),
        404,
        "NOT_FOUND",
    );
    assert_error(
        &other.post(
            &format!("{call_path}/transfer"),
            &json!({"target": d_uri, "participantId": pb}),
        ),
        404,
        "NOT_FOUND",
    );
    assert_error(
        &other.delete(&format!("{call_path}/participants/{pb}")),
        404,
        "NOT_FOUND",
    );
    // Nor does a missing key, nor a call that does not exist.
    assert_error(
        &sbc.http("DELETE", &call_path, &[], None),
        401,
        "UNAUTHORIZED",
    );
    assert_error(&api.get("/v1/calls/c-99999"), 404, "NOT_FOUND");
    assert_error(&api.get("/v1/calls/nonsense"), 404, "NOT_FOUND");
    assert_eq!(api.call(&id), call, "the call is untouched");
    assert_eq!(count(&c, "INVITE") + count(&d, "INVITE"), 0);

    // Add C, retried with the same Idempotency-Key: rung once, the same
    // answer again; the key with another body is refused.
    let add_path = format!("{call_path}/participants");
    let add = json!({"target": c_uri});
    let first = api.post_idem(&add_path, &add, "add-third");
    assert_eq!(first.status, 202, "{}", first.body);
    let v = first.json();
    let pc = v["participantIds"][0]
        .as_str()
        .expect("participantIds")
        .to_string();
    assert_eq!(v["participantIds"], json!([pc]), "{v:#}");
    assert_eq!(v["call"]["callId"], id, "{v:#}");
    let added = party(&v["call"], &pc).unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(added["address"], c_uri, "{v:#}");
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = api.post_idem(&add_path, &add, "add-third");
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.body, first.body, "the replay answers the same");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("content-type"), Some("application/json"));
    assert_error(
        &api.post_idem(
            &add_path,
            &json!({"target": c_uri, "timeout": 30}),
            "add-third",
        ),
        422,
        "IDEMPOTENCY_MISMATCH",
    );
    // Parties are for /participants; modes for /monitors.
    assert_error(
        &api.post(&add_path, &json!({"target": c_uri, "mode": "listen"})),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &api.post(&add_path, &json!({"target": "nowhere"})),
        400,
        "BAD_REQUEST",
    );
    let call = api.wait_call(&id, "C joins", |c| connected_with(c, &[&pa, &pb, &pc]));
    let joined = party(&call, &pc).unwrap();
    assert_eq!(joined["kind"], "sip", "{call:#}");
    assert_eq!(joined["role"], "phone", "{call:#}");
    assert_eq!(initial_invites(&c), 1, "C is rung once");

    // Hold C: a re-INVITE putting its stream on hold, answered; then back.
    let c_path = format!("{call_path}/participants/{pc}");
    let r = api.patch(&c_path, r#"{"held":true}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(v["participantIds"], json!([pc]), "{v:#}");
    assert_eq!(party(&v["call"], &pc).unwrap()["held"], true, "{v:#}");
    let call = api.call(&id);
    let held = party(&call, &pc).unwrap();
    assert_eq!(
        (held["held"].clone(), held["state"].clone()),
        (json!(true), json!("held"))
    );
    let mut re = Vec::new();
    let hold_seen = wait_until(WAIT, || {
        re = reinvites(&c);
        re.last().is_some_and(|m| holds(m.body())) && answered_200(&c, m_cseq(re.last().unwrap()))
    });
    assert!(
        hold_seen,
        "no answered hold re-INVITE to C: {re:#?}\n{}",
        c.report()
    );
    let before = re.len();
    let r = api.patch(&c_path, r#"{"held":false}"#);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        party(&r.json()["call"], &pc).unwrap()["held"],
        false,
        "{}",
        r.body
    );
    let resume_seen = wait_until(WAIT, || {
        re = reinvites(&c);
        re.len() > before
            && re.last().is_some_and(|m| !holds(m.body()))
            && answered_200(&c, m_cseq(re.last().unwrap()))
    });
    assert!(
        resume_seen,
        "no answered resume re-INVITE to C: {re:#?}\n{}",
        c.report()
    );
    let call = api.call(&id);
    let back = party(&call, &pc).unwrap();
    assert_eq!(
        (back["held"].clone(), back["state"].clone()),
        (json!(false), json!("joined"))
    );
    // Nothing to change, a field that does not exist, a bad mode, a
    // supervisor's mode on a phone, a party that does not exist.
    assert_error(&api.patch(&c_path, "{}"), 400, "BAD_REQUEST");
    assert_error(
        &api.patch(&c_path, r#"{"held":true,"volume":3}"#),
        400,
        "BAD_REQUEST",
    );
    assert_error(&api.patch(&c_path, r#"{"held":"yes"}"#), 400, "BAD_REQUEST");
    assert_error(
        &api.patch(&c_path, r#"{"mode":"shout"}"#),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &api.patch(&c_path, r#"{"mode":"listen"}"#),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &api.patch(
            &format!("{call_path}/participants/p-999"),
            r#"{"held":true}"#,
        ),
        404,
        "NOT_FOUND",
    );
    assert!(
        !party(&api.call(&id), &pc).unwrap()["held"]
            .as_bool()
            .unwrap()
    );

    // DTMF to C (RFC 4733: it took telephone-events), once though retried.
    let dtmf_path = format!("{call_path}/dtmf");
    let dtmf = json!({"digits": "123", "participantId": pc});
    let r = api.post_idem(&dtmf_path, &dtmf, "dtmf-1");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["participantIds"], json!([pc]), "{}", r.body);
    assert_eq!(r.json()["call"]["callId"], id, "{}", r.body);
    let again = api.post_idem(&dtmf_path, &dtmf, "dtmf-1");
    assert_eq!((again.status, again.body.as_str()), (202, r.body.as_str()));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    for bad in [
        json!({"digits": "12x"}),
        json!({"digits": ""}),
        json!({"digits": "1".repeat(33)}),
        json!({}),
    ] {
        assert_error(&api.post(&dtmf_path, &bad), 400, "BAD_REQUEST");
    }
    assert_error(
        &api.post(
            &dtmf_path,
            &json!({"digits": "1", "participantId": "p-999"}),
        ),
        404,
        "NOT_FOUND",
    );

    // Remove C: it gets its BYE; the call goes on with A and B.
    let r = api.delete(&c_path);
    assert!(
        r.status == 200 || r.status == 204,
        "{} {}",
        r.status,
        r.body
    );
    if r.status == 200 {
        assert!(party(&r.json()["call"], &pc).is_none(), "{}", r.body);
    }
    c.assert_success(SIPP_DONE);
    assert_eq!(count(&c, "BYE"), 1, "{}", c.report());
    assert_eq!(count(&c, "INFO"), 0, "DTMF went in RTP");
    assert_error(&api.delete(&c_path), 404, "NOT_FOUND");
    api.wait_call(&id, "C is gone", |c| connected_with(c, &[&pa, &pb]));

    // A blind transfer needs its transferor named (no agent in this call);
    // nothing to complete yet.
    let transfer_path = format!("{call_path}/transfer");
    assert_error(
        &api.post(&transfer_path, &json!({"target": d_uri})),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &api.post(&format!("{transfer_path}/complete"), &json!({})),
        409,
        "CONFLICT",
    );
    assert_eq!(count(&d, "INVITE"), 0);

    // B transfers A to D (blind): D answers, B is released, A and D talk.
    let r = api.post(
        &transfer_path,
        &json!({"target": d_uri, "participantId": pb}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["participantIds"], json!([pb]), "{}", r.body);
    // B gets its BYE and answers it, held to the end: no un-hold re-INVITE
    // is sent to a transferor on its way out.
    b.assert_success(SIPP_DONE);
    assert_eq!(count(&b, "BYE"), 1, "{}", b.report());
    assert_eq!(
        count(&b, "INVITE"),
        2,
        "the call's and the hold's: {}",
        b.report()
    );
    let bye = b
        .received()
        .into_iter()
        .find(|m| m.is_request("BYE"))
        .unwrap();
    assert!(answered_200(&b, m_cseq(&bye)), "{}", b.report());
    let call = api.wait_call(&id, "A and D talk", |c| {
        let ps = parties(c);
        c["state"] == "connected"
            && ps.len() == 2
            && party(c, &pa).is_some_and(|p| p["state"] == "joined")
            && ps
                .iter()
                .any(|p| p["address"] == d_uri.as_str() && p["state"] == "joined")
    });
    assert!(party(&call, &pb).is_none(), "{call:#}");
    let pd = parties(&call)
        .into_iter()
        .find(|p| p["id"] != pa.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(initial_invites(&d), 1, "D is rung once");
    // It is over: nothing to complete or cancel; no such step.
    assert_error(
        &api.post(&format!("{transfer_path}/complete"), &json!({})),
        409,
        "CONFLICT",
    );
    assert_error(
        &api.post(&format!("{transfer_path}/cancel"), &json!({})),
        409,
        "CONFLICT",
    );
    assert_error(
        &api.post(&format!("{transfer_path}/bogus"), &json!({})),
        404,
        "NOT_FOUND",
    );

    // A supervisor listens in, then whispers.
    let mon_path = format!("{call_path}/monitors");
    assert_error(
        &api.post(&mon_path, &json!({"target": m_uri, "mode": "shout"})),
        400,
        "BAD_REQUEST",
    );
    let r = api.post_idem(
        &mon_path,
        &json!({"target": m_uri, "mode": "listen"}),
        "mon-1",
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let pm = r.json()["participantIds"][0]
        .as_str()
        .expect("participantIds")
        .to_string();
    let call = api.wait_call(&id, "M joins", |c| connected_with(c, &[&pa, &pd, &pm]));
    let sup = party(&call, &pm).unwrap();
    assert_eq!(
        (sup["role"].clone(), sup["monitor"].clone()),
        (json!("supervisor"), json!("listen"))
    );
    let r = api.patch(
        &format!("{call_path}/participants/{pm}"),
        r#"{"mode":"whisper"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(party(&api.call(&id), &pm).unwrap()["monitor"], "whisper");
    assert_eq!(initial_invites(&m), 1, "M is rung once");

    // Hang up: everyone gets a BYE; the call is gone.
    let r = api.delete(&call_path);
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    a.assert_success(SIPP_DONE);
    d.assert_success(SIPP_DONE);
    m.assert_success(SIPP_DONE);
    assert_error(&api.get(&call_path), 404, "NOT_FOUND");
    assert_error(&api.delete(&call_path), 404, "NOT_FOUND");
    assert_eq!(api.get("/v1/calls").json(), json!({"calls": []}));
    sbc.assert_idle(IDLE);

    // The call's record: who left why.
    let mut completed = Value::Null;
    let recorded = wait_until(WAIT, || {
        completed = receiver
            .requests()
            .iter()
            .map(|r| r.json())
            .find(|v| v["event"] == "completed" && v["callId"] == id.as_str())
            .unwrap_or_default();
        !completed.is_null()
    });
    assert!(recorded, "no completed webhook: {:#?}", receiver.requests());
    let left = |pid: &str| {
        completed["participants"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == pid))
            .map(|p| (p["role"].clone(), p["reason"].clone()))
    };
    assert_eq!(
        left(&pb),
        Some((json!("phone"), json!("transferred"))),
        "{completed:#}"
    );
    assert_eq!(
        left(&pc),
        Some((json!("phone"), json!("removed"))),
        "{completed:#}"
    );
    assert_eq!(
        left(&pm).map(|l| l.0),
        Some(json!("supervisor")),
        "{completed:#}"
    );
    assert_eq!(completed["status"], "completed", "{completed:#}");

    let metrics = sbc.metrics();
    let requests = |labels: &[&str]| metrics.value("sbc_api_requests_total", labels);
    assert!(requests(&[]) > 0.0, "{:?}", metrics.samples);
    // Replays reached no control task: each of these ran once.
    for (request, n) in [
        ("add_participant", 1.0),
        ("dtmf", 1.0),
        ("transfer", 1.0),
        ("monitor", 1.0),
        ("hangup", 1.0),
    ] {
        assert_eq!(
            requests(&[&format!("request=\"{request}\""), "result=\"ok\""]),
            n,
            "{request}: {:?}",
            metrics.samples
        );
    }
    assert!(
        requests(&["result=\"NOT_FOUND\""]) >= 8.0,
        "{:?}",
        metrics.samples
    );
    assert_eq!(metrics.value("sbc_api_idempotent_replays_total", &[]), 2.0);
    assert_eq!(metrics.value("sbc_http_unauthorized_total", &[]), 3.0);
}

#[test]
fn click_to_call_rings_to_then_connect_and_reports_each_status_once_signed() {
    let _serial = serial();
    let receiver = HttpReceiver::start(lo(1));
    let to = callee("c2c-to", 3, false);
    let connect = callee("c2c-connect", 4, false);
    let webhooks = format!(
        "[webhooks]\nurl = \"{}\"\nsecret = \"{WEBHOOK_SECRET}\"\n",
        receiver.url("/webhook")
    );
    let sbc = start_sbc("rest-originate", rtp(41), config(to.addr(), &webhooks));
    let (to_uri, connect_uri) = (
        format!("sip:a@{}", to.addr()),
        format!("sip:b@{}", connect.addr()),
    );
    let (mut to, mut connect) = (to.spawn(), connect.spawn());
    let api = Api {
        sbc: &sbc,
        key: KEY,
    };
    let other = Api {
        sbc: &sbc,
        key: OTHER_KEY,
    };
    let body = json!({
        "from": "service",
        "to": to_uri,
        "connect": connect_uri,
        "statusCallback": receiver.url("/status"),
        "statusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
    });

    // Refused before anything rings.
    let no_key = sbc.http("POST", "/v1/calls", &[], Some(&body.to_string()));
    assert_error(&no_key, 401, "UNAUTHORIZED");
    assert_error(&other.post("/v1/calls", &body), 403, "FORBIDDEN_NUMBER");
    let with = |k: &str, v: Value| {
        let mut b = body.clone();
        b[k] = v;
        b
    };
    for bad in [
        with("to", json!("nowhere")),
        with("to", json!("stream:wss://agent.test/ws")),
        with("from", json!("+15550999")),
        with("connect", json!("nowhere")),
        with("statusCallback", json!("ftp://127.0.0.1/status")),
        with("statusCallbackEvent", json!(["hungup"])),
        with("volume", json!(3)),
    ] {
        assert_error(&api.post("/v1/calls", &bad), 400, "BAD_REQUEST");
    }
    let broken = api.send("POST", "/v1/calls", Some("{\"from\": "), None);
    assert_error(&broken, 400, "BAD_REQUEST");
    assert_eq!(api.get("/v1/calls").json(), json!({"calls": []}));

    // Placed once, though retried.
    let r = api.post_idem("/v1/calls", &body, "c2c-1");
    assert_eq!(r.status, 201, "{}", r.body);
    let call = r.json()["call"].clone();
    assert_eq!(r.json().as_object().map(|o| o.len()), Some(1), "{}", r.body);
    let id = call["callId"].as_str().expect("callId").to_string();
    assert!(id.starts_with("c-"), "{call:#}");
    assert_eq!(call["direction"], "outbound", "{call:#}");
    assert_eq!(call["number"], "service", "{call:#}");
    assert!(
        call["state"] == "ringing" || call["state"] == "connected",
        "{call:#}"
    );
    let again = api.post_idem("/v1/calls", &body, "c2c-1");
    assert_eq!((again.status, again.body.as_str()), (201, r.body.as_str()));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_error(
        &api.post_idem("/v1/calls", &with("timeout", json!(20)), "c2c-1"),
        422,
        "IDEMPOTENCY_MISMATCH",
    );

    // `to` answers, then `connect`: connected.
    let call = api.wait_call(&id, "both answer", |c| {
        let ps = parties(c);
        c["state"] == "connected" && ps.len() == 2 && ps.iter().all(|p| p["state"] == "joined")
    });
    let first = parties(&call)
        .into_iter()
        .find(|p| p["address"] == to_uri.as_str())
        .unwrap_or_else(|| panic!("no `to` party: {call:#}"));
    assert_eq!(first["role"], "customer", "{call:#}");
    assert!(
        parties(&call)
            .iter()
            .any(|p| p["address"] == connect_uri.as_str()),
        "{call:#}"
    );
    assert_eq!(
        api.get("/v1/calls").json()["calls"][0]["callId"],
        id.as_str()
    );
    assert_eq!(other.get("/v1/calls").json(), json!({"calls": []}));
    assert_eq!((initial_invites(&to), initial_invites(&connect)), (1, 1));

    let r = api.delete(&format!("/v1/calls/{id}"));
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    to.assert_success(SIPP_DONE);
    connect.assert_success(SIPP_DONE);
    assert_error(&api.get(&format!("/v1/calls/{id}")), 404, "NOT_FOUND");

    // Each event once, in order, for this call, signed with the webhook's
    // secret. `completed` is the last a call has: the others came before it.
    let status = || -> Vec<_> {
        receiver
            .requests()
            .into_iter()
            .filter(|r| r.path == "/status")
            .collect()
    };
    let done = wait_until(WAIT, || {
        status().iter().any(|r| r.json()["event"] == "completed")
    });
    assert!(done, "no `completed` callback: {:#?}", receiver.requests());
    let got = status();
    let events: Vec<String> = got
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        events,
        ["initiated", "ringing", "answered", "completed"],
        "{got:#?}"
    );
    for r in &got {
        let v = r.json();
        assert_eq!(r.method, "POST");
        assert_eq!(v["callId"], id.as_str(), "{v:#}");
        assert_eq!(v["direction"], "outbound", "{v:#}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let ts: u64 = r
            .header("x-sbc-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no timestamp: {r:#?}"));
        assert_eq!(
            r.header("x-sbc-signature"),
            Some(sbc::sign::signature(WEBHOOK_SECRET.as_bytes(), ts, r.body.as_bytes()).as_str()),
            "{r:#?}"
        );
    }
    // Counted once the receiver answered: polled.
    let delivered = |v: f64| v == 4.0;
    let labels = ["result=\"delivered\""];
    assert_eq!(
        sbc.wait_metric("sbc_status_callbacks_total", &labels, WAIT, delivered),
        4.0
    );
    sbc.assert_idle(IDLE);
    let metrics = sbc.metrics();
    assert_eq!(
        metrics.value(
            "sbc_api_requests_total",
            &["request=\"originate\"", "result=\"ok\""]
        ),
        1.0,
        "{:?}",
        metrics.samples
    );
    assert_eq!(status().len(), 4, "nothing more came");
}
