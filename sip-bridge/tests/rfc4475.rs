//! Every RFC 4475 torture message through the message handling, with the outcome
//! its section asks of an endpoint (this element is a B2BUA: a UAS to the sender).
//! Where RFC 4475 allows either rejecting or a liberal reading, the choice made is
//! noted. Every file must be handled without a panic, and every rejection must
//! carry a response that is itself a valid SIP response.

use sip_bridge::sip::message::{Inbound, Method, Transport, ValidationConfig, classify};

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

const TABLE: &[(&str, Expect)] = &[
    // 3.1.1 Valid messages: parse and process.
    ("wsinv", Request(Method::Invite)),
    ("intmeth", Reject(501)), // valid; unknown method: endpoints answer 501 with Allow
    ("esc01", Request(Method::Invite)),
    ("escnull", Request(Method::Register)), // the UA core then answers 405 (not a registrar)
    ("esc02", Reject(501)),                 // RE%47IST%45R is an unknown method, not REGISTER
    ("lwsdisp", Request(Method::Options)),
    ("longreq", Request(Method::Invite)),
    ("dblreq", Request(Method::Register)), // trailing INVITE octets in the datagram ignored
    ("semiuri", Request(Method::Options)),
    ("transports", Request(Method::Options)),
    ("mpart01", Request(Method::Message)),
    ("unreason", Response(200)),
    ("noreason", Response(100)),
    // 3.1.2 Invalid messages.
    ("badinv01", Reject(400)),
    ("clerr", Reject(400)), // over UDP
    ("ncl", Reject(400)),
    ("scalar02", Reject(400)),
    ("scalarlg", Drop), // a response: discarded
    ("quotbal", Reject(400)),
    ("ltgtruri", Reject(400)),
    ("lwsruri", Reject(400)),
    ("lwsstart", Reject(400)), // rejecting is allowed; chosen over a liberal reading
    ("trws", Request(Method::Options)), // liberal reading allowed; trailing SP ignored
    ("escruri", Reject(400)),
    ("baddate", Request(Method::Invite)), // Date plays no part here: not worth a reject
    ("regbadct", Reject(400)),
    ("badaspec", Reject(400)),
    ("baddn", Reject(400)),
    ("badvers", Reject(505)),
    ("mismatch01", Reject(400)),
    ("mismatch02", Reject(501)),
    ("bigcode", Drop), // a response: dropped
    // 3.2 Transaction layer.
    ("badbranch", Reject(400)), // branch is the bare magic cookie
    // 3.3 Application layer.
    ("insuf", Reject(400)),
    ("unkscm", Reject(416)),
    ("novelsc", Reject(416)),
    ("unksm2", Request(Method::Register)), // registrar-only 400; we answer 405
    ("bext01", Reject(420)),
    ("invut", Reject(415)),
    ("regaut01", Request(Method::Register)), // not a registrar: 405
    ("multi01", Reject(400)),
    ("mcl01", Reject(400)),
    ("bcast", Response(200)), // well-formed; no transaction matches it, so it goes nowhere
    ("zeromf", Request(Method::Options)), // an endpoint processes it normally
    ("cparam01", Request(Method::Register)),
    ("cparam02", Request(Method::Register)),
    ("regescrt", Request(Method::Register)),
    ("sdp01", Reject(406)),
    // 3.4 Backward compatibility.
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
    let intmeth = reject("intmeth");
    assert!(
        intmeth.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"),
        "{intmeth}"
    );
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
