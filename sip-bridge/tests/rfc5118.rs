//! RFC 5118's IPv6 torture messages (transcribed in `testdata/sip-rfc5118/`,
//! see its README) through our parser, each with the behaviour its section asks
//! for; the rows where we differ say why.

use sip_bridge::sdp::SessionDescription;
use sip_bridge::sip::message::{
    Inbound, Method, SipHeaders, Transport, ValidationConfig, classify, header_param,
};

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Request(Method),
    Reject(u16),
}
use Outcome::*;

const TABLE: &[(&str, Outcome)] = &[
    // 4.1: bracketed references in the Request-URI, Via and Contact.
    ("ipv6-good", Request(Method::Register)),
    // 4.2: an IPv6 Request-URI without brackets should get 400.
    ("ipv6-bad", Reject(400)),
    // 4.3 / 4.4: well formed either way (the port is checked below).
    ("port-ambiguous", Request(Method::Register)),
    ("port-unambiguous", Request(Method::Register)),
    // 4.5: a received parameter with or without brackets.
    ("via-received-param-with-delim", Request(Method::Bye)),
    ("via-received-param-no-delim", Request(Method::Options)),
    // 4.6: the RFC's Content-Length (268) runs past the body (251 bytes with
    // CRLF): RFC 3261 18.3 has a datagram whose body ends early answered 400.
    // With its length fixed it is accepted (below).
    ("ipv6-in-sdp", Reject(400)),
    // 4.7: Vias mixing IPv6 and IPv4.
    ("mult-ip-in-header", Request(Method::Bye)),
    // 4.8, 4.9: IPv6 and IPv4-mapped addresses in SDP and headers.
    ("mult-ip-in-sdp", Request(Method::Invite)),
    ("ipv4-mapped-ipv6", Request(Method::Invite)),
    // 4.10: three colons before an embedded IPv4 part (tolerated: read as two),
    // and the correct two.
    ("ipv6-bug-abnf-3-colons", Request(Method::Options)),
    ("ipv6-correct-abnf-2-colons", Request(Method::Options)),
];

fn read(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/sip-rfc5118")
        .join(format!("{name}.dat"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn outcome(bytes: &[u8]) -> (Outcome, Option<Box<sip_bridge::sip::message::Request>>) {
    match classify(bytes, Transport::Udp, &ValidationConfig::default()) {
        Inbound::Request(r) => (Request(r.method), Some(r)),
        Inbound::Reject(r) => (Reject(r.status), None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_ipv6_torture_message_gets_the_behaviour_its_section_asks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/sip-rfc5118");
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".dat"))
        })
        .count();
    assert_eq!(files, TABLE.len(), "one row per file");
    let mut failures = Vec::new();
    for (name, want) in TABLE {
        let (got, _) = outcome(&read(name));
        if got != *want {
            let why = match classify(&read(name), Transport::Udp, &ValidationConfig::default()) {
                Inbound::Reject(r) => String::from_utf8_lossy(&r.response)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
                _ => String::new(),
            };
            failures.push(format!("{name}: expected {want:?}, got {got:?} {why}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn hosts_ports_and_via_parameters_read_as_the_rfc_says() {
    let uri = |name: &str| outcome(&read(name)).1.unwrap().uri.to_string();
    // 4.3: the port inside the brackets is part of the address; 4.4: outside, a port.
    assert_eq!(uri("port-ambiguous"), "sip:[2001:db8::10:5070]");
    assert_eq!(uri("port-unambiguous"), "sip:[2001:db8::10]:5070");
    // 4.10: the extra colon is dropped, as a proxy may.
    assert_eq!(
        uri("ipv6-bug-abnf-3-colons"),
        uri("ipv6-correct-abnf-2-colons")
    );
    // 4.5: the colons of a bare IPv6 received= do not end the parameter list.
    for name in [
        "via-received-param-with-delim",
        "via-received-param-no-delim",
    ] {
        let r = outcome(&read(name)).1.unwrap();
        let top = r.top_via().unwrap().to_string();
        assert!(
            r.branch().is_some_and(|b| b.starts_with("z9hG4bKas3")),
            "{name}: {top}"
        );
        assert!(
            header_param(&top, "received").is_some_and(|v| v.contains("2001:db8::9:255")),
            "{name}: {top}"
        );
    }
}

#[test]
fn ipv6_and_mapped_addresses_in_sdp_are_read_per_media() {
    // The body as written (the RFC's Content-Length aside).
    let body = |name: &str| {
        let b = read(name);
        let text = String::from_utf8(b).unwrap();
        text.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    let sd = SessionDescription::parse(&body("ipv6-in-sdp")).unwrap();
    let a = sd.audio().unwrap();
    assert_eq!(
        sd.connection_for(a).and_then(|c| c.ip()),
        Some("2001:db8::20".parse().unwrap())
    );
    // 4.8: audio on IPv4, video on IPv6, no session-level c=.
    let sd = SessionDescription::parse(&body("mult-ip-in-sdp")).unwrap();
    let a = sd.audio().unwrap();
    assert_eq!(
        sd.connection_for(a).and_then(|c| c.ip()),
        Some("192.0.2.1".parse().unwrap())
    );
    // 4.9: an IPv4-mapped address.
    let sd = SessionDescription::parse(&body("ipv4-mapped-ipv6")).unwrap();
    let a = sd.audio().unwrap();
    assert_eq!(
        sd.connection_for(a).and_then(|c| c.ip()),
        Some("::ffff:192.0.2.2".parse().unwrap())
    );
    // 4.6 with its Content-Length fixed is accepted.
    let fixed = String::from_utf8(read("ipv6-in-sdp"))
        .unwrap()
        .replace("Content-Length: 268", "Content-Length: 251");
    assert_eq!(outcome(fixed.as_bytes()).0, Request(Method::Invite));
}
