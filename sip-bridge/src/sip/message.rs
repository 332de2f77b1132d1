//! Receiving SIP messages robustly (RFC 3261 sections 7, 8.2, 18.3; RFC 4475).
//!
//! Every datagram or framed stream message goes through [`classify`]: a raw scan
//! (our own, tolerant: unfolds lines, maps compact names, slices the body by
//! Content-Length) checks what the `rsip` types do not (duplicated single-value
//! headers, Content-Length against the body, request-line whitespace, bracket and
//! quote balance, the version, the URI scheme, Require, Content-Type), then the
//! message is parsed into `rsip` types for typed access. Whatever fails gets the
//! most specific error response that can be built from the bytes that could be
//! read (400 with a reason, 416, 420, 501, 505, 513, ...), or is dropped when no
//! response can be routed (no Via) or it is itself a response. Never a panic.

use std::borrow::Cow;
use std::fmt::Write as _;

pub use rsipstack::sip::{Header, Headers, Method, Request, Response, SipMessage, Uri};

/// SIP transports (RFC 3261 section 18, RFC 7118).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket.
    Ws,
    /// Secure WebSocket.
    Wss,
}

impl Transport {
    /// Whether the transport retransmits for us (no SIP retransmission timers).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The token in a Via header.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// The transport a Via token names (case-insensitive), if ours.
    pub fn from_via_token(token: &str) -> Option<Transport> {
        [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ]
        .into_iter()
        .find(|t| t.via_token().eq_ignore_ascii_case(token))
    }
}

/// Methods this element implements (sent in `Allow`).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY";

/// What the validation accepts.
#[derive(Clone, Debug)]
pub struct ValidationConfig {
    /// Largest message (answer 513 above).
    pub max_message: usize,
    /// Option tags we support (anything else in Require gets 420).
    pub supported: Vec<String>,
    /// Content types an INVITE may carry (anything else gets 415).
    pub invite_bodies: Vec<String>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_message: super::framing::DEFAULT_MAX_MESSAGE,
            // Session timers (RFC 4028), run by the UA.
            supported: vec!["100rel".into(), "timer".into()],
            invite_bodies: vec!["application/sdp".into()],
        }
    }
}

/// A message refused before any transaction saw it, and the response to send
/// back to where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Status code.
    pub status: u16,
    /// Reason phrase sent.
    pub reason: String,
    /// The whole response.
    pub response: Vec<u8>,
}

/// The outcome of [`classify`].
#[derive(Clone, Debug)]
pub enum Inbound {
    /// A valid request.
    Request(Box<Request>),
    /// A valid response.
    Response(Box<Response>),
    /// An invalid request: send the response back.
    Reject(Reject),
    /// Nothing can or should be answered (a bad response, no Via).
    Drop(&'static str),
}

/// Header names we care about, compact forms folded in (RFC 3261 section 7.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    ContentLength,
    ContentType,
    Contact,
    Require,
    Accept,
    Other,
}

fn name_of(s: &str) -> Name {
    let eq = |a: &str| s.eq_ignore_ascii_case(a);
    if eq("via") || eq("v") {
        Name::Via
    } else if eq("from") || eq("f") {
        Name::From
    } else if eq("to") || eq("t") {
        Name::To
    } else if eq("call-id") || eq("i") {
        Name::CallId
    } else if eq("cseq") {
        Name::CSeq
    } else if eq("max-forwards") {
        Name::MaxForwards
    } else if eq("content-length") || eq("l") {
        Name::ContentLength
    } else if eq("content-type") || eq("c") {
        Name::ContentType
    } else if eq("contact") || eq("m") {
        Name::Contact
    } else if eq("require") {
        Name::Require
    } else if eq("accept") {
        Name::Accept
    } else {
        Name::Other
    }
}

/// A header line as received, unfolded.
#[derive(Debug)]
pub(crate) struct RawHeader<'a> {
    pub(crate) name: Name,
    pub(crate) value: Cow<'a, str>,
}

/// The tolerant first look at a message.
#[derive(Debug)]
pub(crate) struct Raw<'a> {
    pub(crate) start: &'a str,
    pub(crate) headers: Vec<RawHeader<'a>>,
    /// Bytes after the blank line (the whole rest, before Content-Length).
    pub(crate) rest: &'a [u8],
    /// Header lines without a colon.
    pub(crate) junk_lines: usize,
}

impl<'a> Raw<'a> {
    pub(crate) fn scan(bytes: &'a [u8]) -> Option<Raw<'a>> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut lines = head.split("\r\n").peekable();
        let start = lines.next()?;
        let mut headers: Vec<RawHeader<'a>> = Vec::new();
        let mut junk_lines = 0;
        while let Some(line) = lines.next() {
            let Some((name, value)) = line.split_once(':') else {
                junk_lines += 1;
                continue;
            };
            let mut v = Cow::Borrowed(value.trim());
            while let Some(cont) = lines.next_if(|l| l.starts_with([' ', '\t'])) {
                let s = v.to_mut();
                s.push(' ');
                s.push_str(cont.trim());
            }
            headers.push(RawHeader {
                name: name_of(name.trim()),
                value: v,
            });
        }
        Some(Raw {
            start,
            headers,
            rest: &bytes[end + 4..],
            junk_lines,
        })
    }

    pub(crate) fn all(&self, n: Name) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |h| h.name == n)
            .map(|h| h.value.as_ref())
    }

    pub(crate) fn first(&self, n: Name) -> Option<&str> {
        self.all(n).next()
    }

    fn count(&self, n: Name) -> usize {
        self.all(n).count()
    }
}

/// Splits a header value on commas outside quotes and angle brackets.
pub(crate) fn split_list(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quote, mut angle, mut start) = (false, 0i32, 0);
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quote => i += 1,
            b'"' => quote = !quote,
            b'<' if !quote => angle += 1,
            b'>' if !quote => angle -= 1,
            b',' if !quote && angle == 0 => {
                out.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(v[start..].trim());
    out
}

/// The value of header parameter `name` (`;name=value` after the URI part),
/// tolerant of LWS around `=` (RFC 4475 wsinv).
pub fn header_param<'v>(value: &'v str, name: &str) -> Option<&'v str> {
    // Parameters start after the closing '>' of a name-addr, else after the URI.
    let tail = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value.find(';').map_or("", |i| &value[i..]),
    };
    tail.split(';').find_map(|p| {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (p.trim(), ""),
        };
        k.eq_ignore_ascii_case(name).then_some(v.trim_matches('"'))
    })
}

/// The URI inside a name-addr or addr-spec header value.
pub fn header_uri(value: &str) -> &str {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].trim(),
        _ => value.split(';').next().unwrap_or(value).trim(),
    }
}

fn quotes_balanced(v: &str) -> bool {
    let mut quote = false;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quote => {
                chars.next();
            }
            '"' => quote = !quote,
            _ => {}
        }
    }
    !quote
}

/// Checks a From/To/Contact name-addr beyond what the types catch: balanced
/// quotes (quotbal), no spaces inside `<...>` (badaspec), a display name with
/// characters outside `token` quoted (baddn), `?`/`,`/`;` URIs in brackets (regbadct).
fn name_addr_ok(v: &str, contact: bool) -> Result<(), &'static str> {
    if !quotes_balanced(v) {
        return Err("unterminated quoted string");
    }
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => {
            let inner = &v[a + 1..b];
            if inner.starts_with(char::is_whitespace) || inner.ends_with(char::is_whitespace) {
                return Err("spaces inside <addr-spec>");
            }
            let display = v[..a].trim();
            if !display.is_empty() && !display.starts_with('"') {
                let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~ \t".contains(c);
                if !display.chars().all(token) {
                    return Err("display name needs quotes");
                }
            }
        }
        (None, None) => {
            if contact && v.trim() != "*" && header_uri(v).contains('?') {
                return Err("URI with headers must be in <>");
            }
        }
        _ => return Err("unbalanced <>"),
    }
    Ok(())
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

/// RFC 3261's ABNF (from RFC 2373) lets `[2001:db8:::192.0.2.1]` through, with a
/// colon too many before an embedded IPv4 part; RFC 5118 4.10 asks us to
/// tolerate it. In the request line and the To, From and Contact headers, a
/// bracketed reference made of hex digits, dots and colons with one `:::` (and
/// no longer run) loses the extra colon. Applying it twice changes nothing.
fn three_colons_to_two(head: &mut Vec<u8>) {
    if !head.windows(3).any(|w| w == b":::") {
        return;
    }
    let address_line = |line: &[u8], first: bool| {
        let name = line.split(|&b| b == b':').next().unwrap_or(b"");
        let name = name.trim_ascii();
        first
            || [&b"to"[..], b"t", b"from", b"f", b"contact", b"m"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
    };
    let mut out = Vec::with_capacity(head.len());
    for (i, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        if !address_line(line, i == 0) {
            out.extend_from_slice(line);
            continue;
        }
        let mut rest = line;
        while let Some(open) = rest.iter().position(|&b| b == b'[') {
            out.extend_from_slice(&rest[..=open]);
            rest = &rest[open + 1..];
            let Some(close) = rest.iter().position(|&b| b == b']') else {
                break;
            };
            let inner = &rest[..close];
            let address = inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.');
            let triples = inner.windows(3).filter(|w| *w == b":::").count();
            if address && triples == 1 && !inner.windows(4).any(|w| w == b"::::") {
                let at = inner.windows(3).position(|w| w == b":::").unwrap_or(0);
                out.extend_from_slice(&inner[..at]);
                out.extend_from_slice(&inner[at + 1..]);
            } else {
                out.extend_from_slice(inner);
            }
            rest = &rest[close..];
        }
        out.extend_from_slice(rest);
    }
    *head = out;
}

/// Looks at one received message. `transport` decides body framing (a datagram's
/// body may run to its end when Content-Length is absent).
///
/// An ACK is never answered, not even a malformed one: it has no response
/// (RFC 3261 section 17.1.1.1), and a 400 to it would be a reflection target.
pub fn classify(bytes: &[u8], transport: Transport, cfg: &ValidationConfig) -> Inbound {
    match classify_any(bytes, transport, cfg) {
        Inbound::Reject(_) if is_ack(bytes) => Inbound::Drop("malformed ACK"),
        other => other,
    }
}

/// The request line starts with `ACK` (the method is case-sensitive, RFC 3261 7.1).
fn is_ack(bytes: &[u8]) -> bool {
    let start = bytes.trim_ascii_start();
    start.starts_with(b"ACK") && start.get(3).is_none_or(|b| b.is_ascii_whitespace())
}

fn classify_any(bytes: &[u8], transport: Transport, cfg: &ValidationConfig) -> Inbound {
    let Some(raw) = Raw::scan(bytes) else {
        return Inbound::Drop("no header end or not UTF-8");
    };
    // Lines end in CRLF (RFC 3261 section 7); a bare CR or LF in the header block
    // would make our scan and the typed parser see different headers (fuzz finding).
    let head = &bytes[..bytes.len() - raw.rest.len()];
    let bare = head.iter().enumerate().any(|(i, &b)| match b {
        b'\n' => i == 0 || head[i - 1] != b'\r',
        b'\r' => head.get(i + 1) != Some(&b'\n'),
        _ => false,
    }) || {
        // A folded first header line continues nothing (RFC 3261 7.3.1): parsers
        // disagree on it, so it is refused like a bad line ending (fuzz finding).
        let first_header = head.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
        first_header.is_some_and(|i| matches!(head.get(i), Some(b' ' | b'\t')))
    };
    if raw.start.starts_with("SIP/") {
        if bare {
            return Inbound::Drop("bare CR or LF in headers");
        }
        return classify_response(bytes, &raw);
    }
    if bare {
        return if raw.count(Name::Via) == 0 {
            Inbound::Drop("request without Via")
        } else {
            Inbound::Reject(reject_response(&raw, 400, "Bad Line Ending", &[]))
        };
    }
    let vias = raw.count(Name::Via);
    if vias == 0 {
        // No Via: a response has nowhere to go (RFC 3261 section 18.2.2).
        return Inbound::Drop("request without Via");
    }
    let reject =
        |status: u16, reason: &str| Inbound::Reject(reject_response(&raw, status, reason, &[]));
    if bytes.len() > cfg.max_message {
        return reject(513, "Message Too Large");
    }

    // Request line: exactly "METHOD SP Request-URI SP SIP-Version" (RFC 3261 25.1).
    let start = raw.start.trim_end_matches(' '); // trailing SP tolerated (RFC 4475 trws)
    let parts: Vec<&str> = start.split(' ').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return reject(400, "Malformed Request-Line");
    }
    let (method, ruri, version) = (parts[0], parts[1], parts[2]);
    if !is_token(method) {
        return reject(400, "Malformed Method");
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return if version.to_ascii_uppercase().starts_with("SIP/") {
            reject(505, "Version Not Supported")
        } else {
            reject(400, "Malformed SIP-Version")
        };
    }
    if ruri.starts_with('<') || ruri.ends_with('>') {
        return reject(400, "Request-URI in <>");
    }
    let scheme = ruri.split(':').next().unwrap_or("");
    if !(scheme.eq_ignore_ascii_case("sip")
        || scheme.eq_ignore_ascii_case("sips")
        || scheme.eq_ignore_ascii_case("tel"))
    {
        return reject(416, "Unsupported URI Scheme");
    }
    // An IPv6 host must be a bracketed reference (RFC 3261 19.1.1, RFC 5118
    // 4.2): a bare one cannot be told from a port.
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let after = ruri.split_once(':').map_or("", |(_, a)| a);
        let hostport = after
            .rsplit('@')
            .next()
            .unwrap_or("")
            .split([';', '?'])
            .next()
            .unwrap_or("");
        if !hostport.starts_with('[') && hostport.matches(':').count() > 1 {
            return reject(400, "IPv6 Reference Without Brackets");
        }
    }
    // `?` may appear in the user part; after the host it starts headers, which a
    // Request-URI must not carry (RFC 3261 section 19.1.1, RFC 4475 escruri).
    if ruri
        .rsplit('@')
        .next()
        .is_some_and(|host_part| host_part.contains('?'))
    {
        return reject(400, "Headers in Request-URI");
    }

    // Mandatory, single-valued headers (RFC 3261 section 8.1.1, 20).
    for (n, label) in [
        (Name::From, "From"),
        (Name::To, "To"),
        (Name::CallId, "Call-ID"),
        (Name::CSeq, "CSeq"),
    ] {
        match raw.count(n) {
            0 => return reject(400, &format!("Missing {label}")),
            1 => {}
            _ => return reject(400, &format!("Multiple {label}")),
        }
    }
    for (n, label) in [
        (Name::MaxForwards, "Max-Forwards"),
        (Name::ContentLength, "Content-Length"),
        (Name::ContentType, "Content-Type"),
    ] {
        if raw.count(n) > 1 {
            return reject(400, &format!("Multiple {label}"));
        }
    }
    if raw.junk_lines > 0 {
        return reject(400, "Malformed Header Line");
    }
    // Via: every comma-separated value non-empty, with a real branch if it has
    // one (RFC 4475 badinv01, badbranch); branch-less RFC 2543 Vias are accepted.
    for v in raw.all(Name::Via) {
        for hop in split_list(v) {
            if hop.is_empty() || hop.contains(";;") || hop.ends_with(';') {
                return reject(400, "Malformed Via");
            }
        }
    }
    if let Some(top) = raw
        .first(Name::Via)
        .map(split_list)
        .and_then(|l| l.first().copied())
        && let Some(b) = header_param(top, "branch")
        && b.eq_ignore_ascii_case("z9hG4bK")
    {
        return reject(400, "Malformed Via branch");
    }
    // CSeq: 32-bit number and the request's method (RFC 3261 section 8.1.1.5).
    let cseq = raw.first(Name::CSeq).unwrap_or("");
    let mut cs = cseq.split_whitespace();
    let (Some(num), Some(cmethod), None) = (cs.next(), cs.next(), cs.next()) else {
        return reject(400, "Malformed CSeq");
    };
    if num.parse::<u32>().is_err() {
        return reject(400, "CSeq Out Of Range");
    }
    let known = method.parse::<Method>().is_ok() && method.chars().all(|c| c.is_ascii_uppercase());
    if cmethod != method {
        return if known {
            reject(400, "CSeq Method Mismatch")
        } else {
            reject(501, "Not Implemented")
        };
    }
    for (n, contact) in [(Name::From, false), (Name::To, false)] {
        if let Some(v) = raw.first(n)
            && let Err(why) = name_addr_ok(v, contact)
        {
            return reject(400, why);
        }
    }
    for c in raw.all(Name::Contact) {
        for one in split_list(c) {
            if let Err(why) = name_addr_ok(one, true) {
                return reject(400, why);
            }
        }
    }
    if let Some(mf) = raw.first(Name::MaxForwards)
        && mf.trim().parse::<u32>().is_err()
    {
        return reject(400, "Malformed Max-Forwards");
    }
    // Body framing (RFC 3261 section 18.3).
    let body: &[u8] = match raw.first(Name::ContentLength) {
        Some(cl) => match cl.trim().parse::<usize>() {
            Ok(n) if n <= raw.rest.len() => &raw.rest[..n], // extra bytes in a datagram are noise
            Ok(_) => return reject(400, "Content-Length Exceeds Body"),
            Err(_) => return reject(400, "Malformed Content-Length"),
        },
        None if transport.is_reliable() => return reject(400, "Missing Content-Length"),
        None => raw.rest,
    };
    if !known {
        return Inbound::Reject(reject_response(
            &raw,
            501,
            "Not Implemented",
            &[("Allow", ALLOW)],
        ));
    }
    // Extensions the request requires (RFC 3261 section 8.2.2.3).
    let unsupported: Vec<&str> = raw
        .all(Name::Require)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !cfg.supported.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    if !unsupported.is_empty() && method != "ACK" && method != "CANCEL" {
        let list = unsupported.join(", ");
        return Inbound::Reject(reject_response(
            &raw,
            420,
            "Bad Extension",
            &[("Unsupported", &list)],
        ));
    }
    // What an INVITE carries and accepts must be SDP (RFC 3261 section 8.2.3; RFC 4475 invut, sdp01).
    if method == "INVITE" {
        if !body.is_empty()
            && let Some(ct) = raw.first(Name::ContentType)
            && !cfg.invite_bodies.iter().any(|b| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(b)
            })
        {
            return Inbound::Reject(reject_response(
                &raw,
                415,
                "Unsupported Media Type",
                &[("Accept", "application/sdp")],
            ));
        }
        if let Some(accept) = raw.first(Name::Accept) {
            let ok = accept
                .split(',')
                .map(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .any(|t| {
                    t == "application/sdp" || t == "application/*" || t == "*/*" || t.is_empty()
                });
            if !ok {
                return Inbound::Reject(reject_response(
                    &raw,
                    406,
                    "Not Acceptable",
                    &[(
                        "Warning",
                        "399 - \"only application/sdp answers are possible\"",
                    )],
                ));
            }
        }
    }
    // Now the typed parse (rsip), with the body as framed above.
    let head_len = bytes.len() - raw.rest.len();
    let mut framed = Vec::with_capacity(head_len + body.len());
    framed.extend_from_slice(&bytes[..head_len]);
    three_colons_to_two(&mut framed);
    framed.extend_from_slice(body);
    match rsipstack::sip::parser::parse_message(&framed) {
        Ok(SipMessage::Request(mut r)) => {
            // rsip reads an absent Content-Length as an empty body; RFC 3261 section
            // 18.3 gives a datagram's body the rest of the datagram.
            r.body = body.to_vec();
            if r.addresses_parse() {
                Inbound::Request(Box::new(r))
            } else {
                reject(400, "Malformed From or To")
            }
        }
        Ok(SipMessage::Response(_)) => reject(400, "Malformed Request"),
        Err(_) => reject(400, "Malformed Request"),
    }
}

trait AddressesOk {
    fn addresses_parse(&self) -> bool;
}

impl AddressesOk for Request {
    fn addresses_parse(&self) -> bool {
        use rsipstack::sip::prelude::*;
        self.from_header().is_ok_and(|f| f.typed().is_ok())
            && self.to_header().is_ok_and(|t| t.typed().is_ok())
    }
}

fn classify_response(bytes: &[u8], raw: &Raw<'_>) -> Inbound {
    let mut parts = raw.start.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Inbound::Drop("malformed Status-Line");
    };
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Inbound::Drop("unsupported version");
    }
    match code.parse::<u16>() {
        Ok(100..=699) => {}
        _ => return Inbound::Drop("status code out of range"),
    }
    for n in [Name::Via, Name::From, Name::To, Name::CallId, Name::CSeq] {
        if raw.count(n) == 0 {
            return Inbound::Drop("missing header");
        }
    }
    if raw
        .first(Name::CSeq)
        .and_then(|c| c.split_whitespace().next())
        .and_then(|n| n.parse::<u32>().ok())
        .is_none()
    {
        return Inbound::Drop("bad CSeq");
    }
    let body_len = match raw
        .first(Name::ContentLength)
        .map(|v| v.trim().parse::<usize>())
    {
        Some(Ok(n)) if n <= raw.rest.len() => n,
        Some(_) => return Inbound::Drop("bad Content-Length"),
        None => raw.rest.len(),
    };
    let head_len = bytes.len() - raw.rest.len();
    match rsipstack::sip::parser::parse_message(&bytes[..head_len + body_len]) {
        Ok(SipMessage::Response(mut r)) => {
            r.body = raw.rest[..body_len].to_vec();
            Inbound::Response(Box::new(r))
        }
        _ => Inbound::Drop("unparseable response"),
    }
}

/// Builds a response to a request seen only raw: its Vias, From, To (with a tag
/// added), Call-ID and CSeq copied as received (RFC 3261 section 8.2.6.2).
fn reject_response(raw: &Raw<'_>, status: u16, reason: &str, extra: &[(&str, &str)]) -> Reject {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    // Echoed values lose their control characters: a bare CR or LF inside one
    // would otherwise split our response into injected header lines (found by
    // the sip_message fuzz target).
    let v_clean: Vec<Cow<'_, str>> = raw.headers.iter().map(|h| clean(&h.value)).collect();
    let raw = Raw {
        start: raw.start,
        headers: raw
            .headers
            .iter()
            .zip(v_clean)
            .map(|(h, value)| RawHeader {
                name: h.name,
                value,
            })
            .collect(),
        rest: raw.rest,
        junk_lines: raw.junk_lines,
    };
    for v in raw.all(Name::Via) {
        let _ = write!(out, "Via: {v}\r\n");
    }
    if let Some(f) = raw.first(Name::From) {
        let _ = write!(out, "From: {f}\r\n");
    }
    if let Some(t) = raw.first(Name::To) {
        if header_param(t, "tag").is_some() || status == 100 {
            let _ = write!(out, "To: {t}\r\n");
        } else {
            // A deterministic tag: the same request gets the same response.
            let _ = write!(
                out,
                "To: {t};tag=r{:08x}\r\n",
                fnv(raw.first(Name::CallId).unwrap_or(""))
            );
        }
    }
    for n in [Name::CallId, Name::CSeq] {
        if let Some(v) = raw.first(n) {
            let label = if n == Name::CallId { "Call-ID" } else { "CSeq" };
            let _ = write!(out, "{label}: {v}\r\n");
        }
    }
    for (k, v) in extra {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Reject {
        status,
        reason: reason.into(),
        response: out.into_bytes(),
    }
}

/// `v` with control characters (but tab) replaced by spaces.
fn clean(v: &str) -> Cow<'_, str> {
    if v.chars().any(|c| c.is_control() && c != '\t') {
        Cow::Owned(
            v.chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(v)
    }
}

/// A header from a name and a value (a typed one when the name is known).
pub fn make_header(name: &str, value: &str) -> Header {
    rsipstack::sip::headers::make_header(name, value.to_string())
}

/// FNV-1a, for deterministic tags.
pub fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// Where a message came from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Transport.
    pub transport: Transport,
    /// Remote address.
    pub addr: std::net::SocketAddr,
    /// The stream connection it arrived on (TCP/TLS/WS), chosen by the driver.
    pub conn: Option<u64>,
}

impl Peer {
    /// A UDP peer.
    pub fn udp(addr: std::net::SocketAddr) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr,
            conn: None,
        }
    }

    /// `TCP 192.0.2.1:5060`: how a peer is written down for another node (a
    /// record in the shared store; no connection, which is ours alone).
    pub fn label(&self) -> String {
        format!("{} {}", self.transport.via_token(), self.addr)
    }

    /// The peer a [`Peer::label`] names.
    pub fn from_label(label: &str) -> Option<Peer> {
        let (t, addr) = label.split_once(' ')?;
        Some(Peer {
            transport: Transport::from_via_token(t)?,
            addr: addr.parse().ok()?,
            conn: None,
        })
    }
}

/// The first value of untyped header `name` (compact forms included).
fn untyped(headers: &Headers, want: Name) -> Option<&str> {
    headers.iter().find_map(|h| {
        let (n, v) = match h {
            Header::Via(v) => (Name::Via, v.0.as_str()),
            Header::From(v) => (Name::From, v.0.as_str()),
            Header::To(v) => (Name::To, v.0.as_str()),
            Header::CallId(v) => (Name::CallId, v.0.as_str()),
            Header::CSeq(v) => (Name::CSeq, v.0.as_str()),
            Header::Contact(v) => (Name::Contact, v.0.as_str()),
            _ => return None,
        };
        // Linear white space around a value is not part of it (RFC 3261 7.3.1):
        // a folded line of blanks must not end up in a Call-ID (fuzz finding).
        (n == want).then_some(v.trim())
    })
}

/// Accessors done right for the layers above (tolerant of LWS in parameters,
/// first value of comma-joined Vias), on requests and responses alike.
pub trait SipHeaders {
    /// The headers.
    fn header_list(&self) -> &Headers;

    /// The top Via value (first of a comma-joined list).
    fn top_via(&self) -> Option<&str> {
        untyped(self.header_list(), Name::Via).and_then(|v| split_list(v).into_iter().next())
    }

    /// The top Via's branch.
    fn branch(&self) -> Option<&str> {
        self.top_via().and_then(|v| header_param(v, "branch"))
    }

    /// The top Via's sent-by (`host[:port]`).
    fn sent_by(&self) -> Option<&str> {
        let v = self.top_via()?;
        // "SIP/2.0/UDP host:port;params"
        let after = v
            .split_once(char::is_whitespace)
            .map(|(_, r)| r.trim_start())?;
        Some(after.split(';').next().unwrap_or(after).trim())
    }

    /// Call-ID.
    fn call_id(&self) -> Option<&str> {
        untyped(self.header_list(), Name::CallId)
    }

    /// From value.
    fn header_from(&self) -> Option<&str> {
        untyped(self.header_list(), Name::From)
    }

    /// To value.
    fn header_to(&self) -> Option<&str> {
        untyped(self.header_list(), Name::To)
    }

    /// From tag (the RFC 3261 name, hence the `from_` prefix).
    #[allow(clippy::wrong_self_convention)]
    fn from_tag(&self) -> Option<&str> {
        self.header_from().and_then(|v| header_param(v, "tag"))
    }

    /// To tag.
    fn to_tag(&self) -> Option<&str> {
        self.header_to().and_then(|v| header_param(v, "tag"))
    }

    /// CSeq number and method text.
    fn cseq(&self) -> Option<(u32, &str)> {
        let mut it = untyped(self.header_list(), Name::CSeq)?.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?))
    }

    /// The first Contact URI.
    fn contact_uri(&self) -> Option<&str> {
        untyped(self.header_list(), Name::Contact)
            .and_then(|v| split_list(v).into_iter().next())
            .map(header_uri)
    }

    /// Every value of header `name` (case-insensitive, canonical or as written),
    /// comma-split.
    fn values(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for h in self.header_list().iter() {
            if h.name().eq_ignore_ascii_case(name) {
                out.extend(split_list(h.value()).into_iter().map(String::from));
            }
        }
        out
    }

    /// Every line of header `name`, not split: for headers whose grammar has
    /// commas inside one value (`WWW-Authenticate`, RFC 3261 section 7.3.1).
    fn lines(&self, name: &str) -> Vec<&str> {
        self.header_list()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| h.value())
            .collect()
    }
}

impl SipHeaders for Request {
    fn header_list(&self) -> &Headers {
        &self.headers
    }
}

impl SipHeaders for Response {
    fn header_list(&self) -> &Headers {
        &self.headers
    }
}

/// A response to `req` (RFC 3261 section 8.2.6): its Vias, From, To, Call-ID and
/// CSeq copied as received, a To tag added when given and absent.
pub fn response_to(req: &Request, status: u16, to_tag: Option<&str>) -> Response {
    let mut headers = Vec::new();
    for h in req.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone())
            }
            Header::To(t) => match to_tag {
                Some(tag) if header_param(&t.0, "tag").is_none() => {
                    headers.push(Header::To(format!("{};tag={tag}", t.0).into()));
                }
                _ => headers.push(h.clone()),
            },
            _ => {}
        }
    }
    Response {
        status_code: status.into(),
        wire_reason: None,
        version: rsipstack::sip::Version::V2,
        headers: headers.into(),
        body: Vec::new(),
    }
}

/// Serialises a message with the right Content-Length (replacing any), header
/// values exactly as stored.
pub fn to_wire(msg: &SipMessage) -> bytes::Bytes {
    let (start, headers, body) = match msg {
        SipMessage::Request(r) => (
            format!("{} {} SIP/2.0", r.method, r.uri),
            &r.headers,
            &r.body,
        ),
        SipMessage::Response(r) => {
            let code = r.status_code.code();
            let reason = match &r.status_code {
                rsipstack::sip::StatusCode::Other(_, p) if p != "Other" => p.clone(),
                sc => sc.text().to_string(),
            };
            (format!("SIP/2.0 {code} {reason}"), &r.headers, &r.body)
        }
    };
    let mut out = Vec::with_capacity(512 + body.len());
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers.iter() {
        if matches!(h, Header::ContentLength(_)) {
            continue;
        }
        out.extend_from_slice(h.name().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(Lossy(&mut out), "Content-Length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
    out.into()
}

struct Lossy<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Lossy<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    fn classify_udp(s: &str) -> Inbound {
        classify(&msg(s), Transport::Udp, &ValidationConfig::default())
    }

    const OPTIONS: &str = "OPTIONS sip:a@b.example SIP/2.0\nVia: SIP/2.0/UDP h.example;branch=z9hG4bK1\nFrom: <sip:x@y>;tag=1\nTo: <sip:a@b.example>\nCall-ID: c1\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n";

    #[test]
    fn echoed_values_cannot_inject_header_lines() {
        // A bare LF and CR inside Call-ID (fuzz finding): the 400 must not carry
        // them into its own header block.
        let bytes = b"REGISTER sip:example.com SIP/2.0\r\nTo: isbn:2983792873\r\nFrom: <http://www.example.com>;tag=3\r\n\
Call-ID: u@h.example.com\nC\rSeq: 234902 REGISTER\r\nMax-Forwards: 70\r\nVia: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKk\r\nl: 0\r\n\r\n";
        let Inbound::Reject(r) = classify(bytes, Transport::Udp, &ValidationConfig::default())
        else {
            panic!("not rejected");
        };
        let text = String::from_utf8(r.response).unwrap();
        let head = text.split("\r\n\r\n").next().unwrap();
        assert!(
            head.split("\r\n")
                .all(|l| !l.contains('\n') && !l.contains('\r')),
            "{text:?}"
        );
        assert!(
            text.contains("Call-ID: u@h.example.com C Seq: 234902 REGISTER\r\n"),
            "{text:?}"
        );
    }

    #[test]
    fn a_three_colon_reference_loses_one_colon_in_addresses_only() {
        let head = "OPTIONS sip:u@[2001:db8:::192.0.2.1] SIP/2.0\r\nTo: <sip:u@[2001:db8:::192.0.2.1]>\r\n\
                    Call-ID: x[2001:db8:::1]\r\nContact: <sip:[1::::::7]>\r\n\r\n";
        let mut once = head.as_bytes().to_vec();
        three_colons_to_two(&mut once);
        let text = String::from_utf8(once.clone()).unwrap();
        assert!(text.starts_with(
            "OPTIONS sip:u@[2001:db8::192.0.2.1] SIP/2.0\r\nTo: <sip:u@[2001:db8::192.0.2.1]>\r\n"
        ));
        assert!(
            text.contains("Call-ID: x[2001:db8:::1]\r\n"),
            "not an address header"
        );
        assert!(text.contains("<sip:[1::::::7]>"), "no address either");
        let mut twice = once.clone();
        three_colons_to_two(&mut twice);
        assert_eq!(twice, once);
    }

    #[test]
    fn a_malformed_ack_is_never_answered() {
        let ack = OPTIONS.replace("OPTIONS", "ACK");
        assert!(matches!(classify_udp(&ack), Inbound::Request(r) if r.method == Method::Ack));
        for broken in [
            ack.replace("CSeq: 1 ACK", "CSeq: 99999999999 ACK"),
            ack.replace("CSeq: 1 ACK", "CSeq: x"),
            ack.replace("CSeq: 1 ACK", "CSeq: 1 INVITE"),
            ack.replace("Call-ID: c1\n", ""),
            ack.replace("SIP/2.0\nVia", "SIP/7.0\nVia"),
            ack.replace("Max-Forwards: 70", "Max-Forwards: many"),
        ] {
            assert!(
                matches!(classify_udp(&broken), Inbound::Drop("malformed ACK")),
                "{broken}"
            );
        }
        // The same faults in an OPTIONS are answered.
        let opt = OPTIONS.replace("CSeq: 1 OPTIONS", "CSeq: x");
        assert!(matches!(classify_udp(&opt), Inbound::Reject(r) if r.status == 400));
        assert!(!is_ack(b"ACKNOWLEDGE sip:a SIP/2.0"));
    }

    #[test]
    fn accepts_a_plain_request() {
        assert!(
            matches!(classify_udp(OPTIONS), Inbound::Request(r) if r.method == Method::Options)
        );
    }

    #[test]
    fn reject_copies_headers_and_adds_a_to_tag() {
        let m = OPTIONS.replace("SIP/2.0\n", "SIP/3.0\n");
        let Inbound::Reject(r) = classify_udp(&m) else {
            panic!()
        };
        assert_eq!(r.status, 505);
        let text = String::from_utf8(r.response).unwrap();
        assert!(text.starts_with("SIP/2.0 505 Version Not Supported\r\n"));
        assert!(text.contains("Via: SIP/2.0/UDP h.example;branch=z9hG4bK1\r\n"));
        assert!(text.contains("To: <sip:a@b.example>;tag=r"));
        assert!(text.contains("Call-ID: c1\r\nCSeq: 1 OPTIONS\r\n"));
        // And the response itself is a valid SIP response.
        assert!(matches!(
            classify(
                text.as_bytes(),
                Transport::Udp,
                &ValidationConfig::default()
            ),
            Inbound::Response(_)
        ));
    }

    #[test]
    fn params_tolerate_lws() {
        assert_eq!(
            header_param("<sip:a@b>;tag = 98asjd8", "tag"),
            Some("98asjd8")
        );
        assert_eq!(header_param("sip:a@b;tag=x;foo", "tag"), Some("x"));
        assert_eq!(
            header_param("\"A;B\" <sip:a@b;tag=no>;tag=yes", "tag"),
            Some("yes")
        );
        assert_eq!(
            header_param("SIP/2.0/UDP h;branch=z9hG4bKx;rport", "branch"),
            Some("z9hG4bKx")
        );
        assert_eq!(header_uri("\"A\" <sip:a@b;lr>;tag=1"), "sip:a@b;lr");
        assert_eq!(
            split_list("\"a,b\" <sip:x>, <sip:y;p=1,2>"),
            vec!["\"a,b\" <sip:x>", "<sip:y;p=1,2>"]
        );
    }

    #[test]
    fn oversize_and_stream_framing() {
        let cfg = ValidationConfig {
            max_message: 100,
            ..Default::default()
        };
        assert!(matches!(
            classify(&msg(OPTIONS), Transport::Udp, &cfg),
            Inbound::Reject(Reject { status: 513, .. })
        ));
        let no_cl = OPTIONS.replace("Content-Length: 0\n", "");
        assert!(matches!(
            classify(&msg(&no_cl), Transport::Tcp, &ValidationConfig::default()),
            Inbound::Reject(Reject { status: 400, .. })
        ));
        assert!(matches!(
            classify(&msg(&no_cl), Transport::Udp, &ValidationConfig::default()),
            Inbound::Request(_)
        ));
    }

    #[test]
    fn never_panics_on_mutations() {
        let base = msg(OPTIONS);
        let mut rng = media_core::SeededRng::new(4);
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..(1 + rng.next_u32() % 4) {
                let i = rng.next_u32() as usize % m.len();
                match rng.next_u32() % 3 {
                    0 => m[i] = rng.next_u32() as u8,
                    1 => {
                        m.remove(i);
                    }
                    _ => m.insert(i, b" :;,<>\"\\\r\n"[rng.next_u32() as usize % 10]),
                }
            }
            let _ = classify(&m, Transport::Udp, &ValidationConfig::default());
            let _ = classify(&m, Transport::Tcp, &ValidationConfig::default());
        }
    }
}
