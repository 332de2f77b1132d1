//! Every RFC 4475 torture message through the message handling, with the outcome
//! its section asks of an endpoint (this element is a B2BUA: a UAS to the sender).
//! Where RFC 4475 allows either rejecting or a liberal reading, the choice made is
//! noted. Every file must be handled without a panic, and every rejection must
//! carry a response that is itself a valid SIP response.

use media_core::Instant;
use sip_bridge::sip::dialog::{LocalAddr, UaConfig, UaEvent, UserAgent};
use sip_bridge::sip::message::{
    ALLOW, Inbound, Method, Peer, Transport, ValidationConfig, classify,
};

#[derive(Debug, PartialEq)]
enum Expect {
    /// Accepted as a valid request with this method.
    Request(Method),
    /// Accepted as a valid response with this status.
    Response(u16),
    /// Rejected with this status.
    Reject(u16),
    /// Silently dropped (responses that are invalid, or no Via to answer to).
    Drop,
}
use Expect::*;

/// One row per file. Above each row: the RFC 4475 section and its words for what a
/// receiver should do, so every row can be checked against the RFC text.
const TABLE: &[(&str, Expect)] = &[
    // 3.1.1 Valid messages: parse and process.
    // 3.1.1.1: "All elements should treat this as a well-formed request."
    ("wsinv", Request(Method::Invite)),
    // 3.1.1.2: "Endpoints will generate a 501 listing the methods they understand
    // in an Allow header field."
    ("intmeth", Reject(501)), // valid; unknown method: endpoints answer 501 with Allow
    // 3.1.1.3: "A parser must accept this as a well-formed message."
    ("esc01", Request(Method::Invite)),
    // 3.1.1.4: "The message is well formed - parsers must accept this message."
    ("escnull", Request(Method::Register)), // the UA core then answers 405 (not a registrar)
    // 3.1.1.5: "The request method is unknown. It is NOT equivalent to REGISTER."
    // ... "An endpoint would reject this message with a 501."
    ("esc02", Reject(501)), // RE%47IST%45R is an unknown method, not REGISTER
    // 3.1.1.6: "Elements should accept this request as well formed."
    ("lwsdisp", Request(Method::Options)),
    // 3.1.1.7: "This well-formed request contains header fields with many values
    // and values that are very long."
    ("longreq", Request(Method::Invite)),
    // 3.1.1.8: "would handle the REGISTER request normally and ignore the extra
    // bits that look like an INVITE request."
    ("dblreq", Request(Method::Register)), // trailing INVITE octets in the datagram ignored
    // 3.1.1.9: "Receiving elements will accept this as a well-formed message."
    ("semiuri", Request(Method::Options)),
    // 3.1.1.10: "Parsers must accept this message as well formed."
    ("transports", Request(Method::Options)),
    // 3.1.1.11: "Parsers must accept this message as well formed, even if the
    // application above the parser does not support multipart/signed."
    ("mpart01", Request(Method::Message)),
    // 3.1.1.12: "This response is well formed. A parser must accept this message."
    ("unreason", Response(200)),
    // 3.1.1.13: "This well-formed response contains no reason phrase. A parser must
    // accept this message."
    ("noreason", Response(100)),
    // 3.1.2 Invalid messages.
    // 3.1.2.1: "should respond with a 400 Bad Request error."
    ("badinv01", Reject(400)),
    // 3.1.2.2: "When sent over UDP ... the receiving element should respond with a
    // 400 Bad Request error."
    ("clerr", Reject(400)), // over UDP
    // 3.1.2.3: "An element receiving this message should respond with an error."
    ("ncl", Reject(400)),
    // 3.1.2.4: "should respond with a 400 Bad Request due to the CSeq error."
    ("scalar02", Reject(400)),
    // 3.1.2.5: "An element receiving this response will simply discard it."
    ("scalarlg", Drop), // a response: discarded
    // 3.1.2.6: "An element receiving this request should return a 400 Bad Request
    // error." (inferring the quote is allowed too)
    ("quotbal", Reject(400)),
    // 3.1.2.7: "It is reasonable always to reject a request with this error with a
    // 400 Bad Request."
    ("ltgtruri", Reject(400)),
    // 3.1.2.8: "An element receiving this request should respond with a 400 Bad
    // Request."
    ("lwsruri", Reject(400)),
    // 3.1.2.9: "It is acceptable to reject this request as malformed. An element
    // that is liberal in what it accepts may ignore these extra SP characters"
    ("lwsstart", Reject(400)), // rejecting is allowed; chosen over a liberal reading
    // 3.1.2.10: "It is acceptable to reject this request as malformed. An element
    // that is liberal in what it accepts may ignore these extra SP characters"
    ("trws", Request(Method::Options)), // liberal reading allowed; trailing SP ignored
    // 3.1.2.11: "It is acceptable for an element to reject this request with a 400
    // Bad Request."
    ("escruri", Reject(400)),
    // 3.1.2.12: "It is acceptable to reject this request as malformed (though an
    // element shouldn't do that unless the contents of the Date header field were
    // actually important to its processing)."
    ("baddate", Request(Method::Invite)), // Date plays no part here: not worth a reject
    // 3.1.2.13: "It is reasonable for an element receiving this request to respond
    // with a 400 Bad Request."
    ("regbadct", Reject(400)),
    // 3.1.2.14: "It is reasonable to reject this request with a 400 Bad Request
    // response."
    ("badaspec", Reject(400)),
    // 3.1.2.15: "It is reasonable always to reject this kind of error with a 400
    // Bad Request response."
    ("baddn", Reject(400)),
    // 3.1.2.16: "The element should respond to the request with a 505 Version Not
    // Supported error."
    ("badvers", Reject(505)),
    // 3.1.2.17: "Any element receiving this request will respond with a 400 Bad
    // Request."
    ("mismatch01", Reject(400)),
    // 3.1.2.18: "should respond with a 501 Not Implemented. A 400 Bad Request is
    // also acceptable"
    ("mismatch02", Reject(501)),
    // 3.1.2.19: "An element receiving this response should simply drop it."
    ("bigcode", Drop), // a response: dropped
    // 3.2 Transaction layer.
    // 3.2.1: "could reject the request with a 400 Response (preferably statelessly
    // ...), or it could fall back to the RFC 2543-style transaction identifier."
    ("badbranch", Reject(400)), // branch is the bare magic cookie; rejected statelessly
    // 3.3 Application layer.
    // 3.3.1: "Ideally, it will respond with a 400 Bad Request error."
    ("insuf", Reject(400)),
    // 3.3.2: "An element receiving this request will reject it with a 416
    // Unsupported URI Scheme response."
    ("unkscm", Reject(416)),
    // 3.3.3: "If an element will never accept this scheme as meaningful in a
    // Request-URI, it is appropriate to treat it as unknown and return a 416"
    ("novelsc", Reject(416)),
    // 3.3.4: "Parsers must not fail when receiving this message." ... "A registrar
    // would reject this request with a 400 Bad Request response"
    ("unksm2", Request(Method::Register)), // registrar-only 400; we answer 405
    // 3.3.5: "Any element receiving this request will respond with a 420 Bad
    // Extension response, containing an Unsupported header field listing these
    // features from either the Require or Proxy-Require header field, depending on
    // the role in which the element is responding."
    ("bext01", Reject(420)),
    // 3.3.6: "An endpoint receiving this request would reject it with a 415
    // Unsupported Media Type error."
    ("invut", Reject(415)),
    // 3.3.7: "Endpoints choosing not to act as registrars will simply reject the
    // request. A 405 Method Not Allowed is appropriate."
    ("regaut01", Request(Method::Register)), // not a registrar: 405
    // 3.3.8: "An element receiving this request would respond with a 400 Bad
    // Request error."
    ("multi01", Reject(400)),
    // 3.3.9: "An element receiving this message should respond with an error."
    ("mcl01", Reject(400)),
    // 3.3.10: "The message is well formed; parsers must not fail when receiving
    // it. Per [RFC3261], an endpoint receiving this message should simply discard
    // it."
    ("bcast", Response(200)), // well-formed; no transaction matches it, so it goes nowhere
    // 3.3.11: "An endpoint should process the request as if the Max-Forwards field
    // value were still positive."
    ("zeromf", Request(Method::Options)), // an endpoint processes it normally
    // 3.3.12: "This REGISTER should succeed." (registrar behaviour; as a
    // non-registrar the UA core answers 405, as 3.3.7 allows endpoints)
    ("cparam01", Request(Method::Register)),
    // 3.3.13: "The register should succeed" (registrar behaviour; we answer 405)
    ("cparam02", Request(Method::Register)),
    // 3.3.14: "The register should succeed" (registrar behaviour; we answer 405)
    ("regescrt", Request(Method::Register)),
    // 3.3.15: "could respond with a 406 Not Acceptable, with a Warning/399 ... It is
    // also appropriate to respond with a 400 Bad Request"
    ("sdp01", Reject(406)),
    // 3.4 Backward compatibility.
    // 3.4.1: "This is a legal message per RFC 2543 (and several bis versions) that
    // should be accepted by RFC 3261 elements that want to maintain backwards
    // compatibility." No branch, no From tag, no Content-Length ("The body is
    // assumed to be all octets in the datagram after the null-line."), no
    // Max-Forwards.
    ("inv2543", Request(Method::Invite)),
    // Not an RFC 4475 section: no SIP-Version, a colon-less line, no Via -> nowhere to answer.
    ("test", Drop),
];

#[test]
fn every_torture_message_gets_the_behaviour_its_section_asks() {
    let dir = media_core::testdata::path("sip-rfc4475");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".dat"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 50, "all 50 files");
    assert_eq!(TABLE.len(), 50, "one row per file");
    let cfg = ValidationConfig::default();
    let mut failures = Vec::new();
    for (name, expect) in TABLE {
        let bytes = std::fs::read(dir.join(format!("{name}.dat"))).unwrap();
        let got = match classify(&bytes, Transport::Udp, &cfg) {
            Inbound::Request(r) => Request(r.method),
            Inbound::Response(r) => Response(r.status_code.code()),
            Inbound::Reject(r) => {
                // The rejection is a well-formed response to the same Call-ID.
                match classify(&r.response, Transport::Udp, &cfg) {
                    Inbound::Response(resp) => {
                        assert_eq!(resp.status_code.code(), r.status, "{name}")
                    }
                    // The answer copies the request's CSeq, which is itself out of range.
                    Inbound::Drop("bad CSeq") if *name == "scalar02" => {}
                    // The request lacks From, To and Call-ID: the answer can only echo what is there.
                    Inbound::Drop("missing header") if *name == "insuf" => {}
                    other => panic!("{name}: reject response does not parse: {other:?}"),
                }
                Reject(r.status)
            }
            Inbound::Drop(_) => Drop,
        };
        if got != *expect {
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn specific_details_of_some_answers() {
    let cfg = ValidationConfig::default();
    let read = |n: &str| media_core::testdata::read(&format!("sip-rfc4475/{n}.dat"));
    let reject = |n: &str| match classify(&read(n), Transport::Udp, &cfg) {
        Inbound::Reject(r) => String::from_utf8(r.response).unwrap(),
        other => panic!("{n}: {other:?}"),
    };
    // 420 lists the Require tags (not Proxy-Require: we answer as the UAS).
    let bext = reject("bext01");
    assert!(
        bext.contains("Unsupported: nothingSupportsThis, nothingSupportsThisEither\r\n"),
        "{bext}"
    );
    assert!(!bext.contains("noProxiesSupportThis"));
    // 501 says what we do implement; 415 what we accept.
    // 3.1.1.2: "a 501 listing the methods they understand in an Allow header field".
    let intmeth = reject("intmeth");
    assert!(
        intmeth.contains(&format!("Allow: {ALLOW}\r\n")),
        "{intmeth}"
    );
    for m in ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"] {
        assert!(
            ALLOW.split(", ").any(|a| a == m),
            "{m} missing from {ALLOW}"
        );
    }
    assert!(reject("invut").contains("Accept: application/sdp\r\n"));
    // 400s say why in the reason phrase.
    assert!(reject("insuf").starts_with("SIP/2.0 400 Missing From\r\n"));
    assert!(reject("mcl01").starts_with("SIP/2.0 400 Multiple Content-Length\r\n"));
    assert!(reject("clerr").starts_with("SIP/2.0 400 Content-Length Exceeds Body\r\n"));
    // dblreq: the REGISTER's body is empty; the INVITE that follows is ignored.
    let Inbound::Request(r) = classify(&read("dblreq"), Transport::Udp, &cfg) else {
        panic!()
    };
    assert!(r.body.is_empty());
    // inv2543: no Content-Length over UDP: the body is the rest of the datagram.
    let Inbound::Request(r) = classify(&read("inv2543"), Transport::Udp, &cfg) else {
        panic!()
    };
    assert!(
        r.body.starts_with(b"v=0") && r.body.len() > 100,
        "{}",
        r.body.len()
    );
    // The same message over TCP has no framing: rejected.
    assert!(matches!(
        classify(&read("inv2543"), Transport::Tcp, &cfg),
        Inbound::Reject(_)
    ));
}

/// RFC 4475 3.4.1 past the parser: the UA core should take `inv2543` as a call
/// ("should be accepted by RFC 3261 elements that want to maintain backwards
/// compatibility") and keep the dialog although the From has no tag (RFC 3261
/// 12.1.1: "A UAS MUST be prepared to receive a request without a tag in the From
/// field, in which case the tag is considered to have a value of null."): no 400
/// for the missing Contact (its From is the target), the peer's ACK matches (no
/// 200 retransmitted) and its BYE ends the call.
#[test]
fn inv2543_is_a_call_at_the_ua_core() {
    let peer = Peer::udp("192.0.2.77:5060".parse().unwrap());
    let mut ua = UserAgent::new(UaConfig::new(
        LocalAddr::udp("10.0.0.1".parse().unwrap(), 5060),
        1,
    ));
    let sent = |ua: &mut UserAgent| {
        std::iter::from_fn(|| ua.poll_transmit())
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .collect::<Vec<_>>()
    };
    let invite = media_core::testdata::read("sip-rfc4475/inv2543.dat");
    ua.handle_bytes(Instant::ZERO, &invite, peer);
    let out = sent(&mut ua);
    assert!(
        !out.iter().any(|m| m.starts_with("SIP/2.0 4")),
        "inv2543 refused: {out:?}"
    );
    let leg = std::iter::from_fn(|| ua.poll_event())
        .find_map(|e| match e {
            UaEvent::IncomingInvite { leg, .. } => Some(leg),
            _ => None,
        })
        .expect("inv2543 offered to the application");
    let sdp = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    ua.respond(Instant::ZERO, leg, 200, Some(sdp), &[]).unwrap();
    let ok = sent(&mut ua).concat();
    let tag = ok
        .lines()
        .find(|l| l.starts_with("To:"))
        .and_then(|l| l.split("tag=").nth(1))
        .expect("200 carries a To tag")
        .to_string();
    // The RFC 2543 peer acknowledges and hangs up: no branch, no From tag.
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:UserB@example.com SIP/2.0\r\nVia: SIP/2.0/UDP iftgw.example.com\r\n\
             From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n\
             To: sip:+16505552222@ss1.example.net;user=phone;tag={tag}\r\n\
             Call-ID: inv2543.1717@ift.client.example.com\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    ua.handle_bytes(
        Instant::from_millis(100),
        in_dialog("ACK", 56).as_bytes(),
        peer,
    );
    ua.handle_timeout(Instant::from_millis(600));
    let out = sent(&mut ua);
    assert!(
        !out.iter().any(|m| m.starts_with("SIP/2.0 200")),
        "ACK not matched: 200 retransmitted"
    );
    ua.handle_bytes(
        Instant::from_millis(700),
        in_dialog("BYE", 57).as_bytes(),
        peer,
    );
    let out = sent(&mut ua);
    assert!(
        out.iter().any(|m| m.starts_with("SIP/2.0 200")),
        "BYE of a tag-less dialog: {out:?}"
    );
}
