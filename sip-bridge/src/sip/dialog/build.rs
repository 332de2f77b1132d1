//! Building requests and next-hop decisions for the UA core (RFC 3261 sections
//! 8.1.1, 8.1.2, 12.2.1.1).

use std::net::{IpAddr, SocketAddr};

use rsipstack::sip::{Header, Method, Request, Uri, Version};

use crate::sip::message::{Peer, Transport, header_param, header_uri};

/// Our addresses as peers must see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    /// Host (IP or name) advertised in Via and Contact.
    pub host: String,
    /// The host IPv6 peers see, when we serve both address families: each
    /// peer gets the address of its own family in Via and Contact (RFC 5118
    /// section 4.5: an IPv4 peer cannot reach an IPv6 Contact).
    pub host6: Option<String>,
    /// Port for each transport we listen on.
    pub ports: Vec<(Transport, u16)>,
}

impl LocalAddr {
    /// One UDP port on `ip`.
    pub fn udp(ip: IpAddr, port: u16) -> Self {
        LocalAddr {
            host: ip.to_string(),
            host6: None,
            ports: vec![(Transport::Udp, port)],
        }
    }

    /// The host `to` must see: ours of its address family.
    pub fn host_for(&self, to: &Peer) -> &str {
        match &self.host6 {
            Some(h6) if to.addr.is_ipv6() => h6,
            _ => &self.host,
        }
    }

    pub(crate) fn port(&self, t: Transport) -> u16 {
        self.ports
            .iter()
            .find(|(tr, _)| *tr == t)
            .or(self.ports.first())
            .map_or(5060, |(_, p)| *p)
    }

    pub(crate) fn host_port(&self, to: &Peer) -> String {
        let host = self.host_for(to);
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        format!("{host}:{}", self.port(to.transport))
    }

    /// Our Contact URI for requests and responses to `to`.
    pub fn contact(&self, to: &Peer) -> String {
        match to.transport {
            Transport::Udp => format!("<sip:sbc@{}>", self.host_port(to)),
            other => format!(
                "<sip:sbc@{};transport={}>",
                self.host_port(to),
                other.via_token().to_ascii_lowercase()
            ),
        }
    }
}

/// The fields of a request to build.
#[derive(Clone, Debug)]
pub(crate) struct RequestSpec<'a> {
    pub method: Method,
    pub uri: &'a str,
    pub branch: &'a str,
    /// Where it goes: its transport and address family pick our Via.
    pub hop: Peer,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub routes: &'a [String],
    pub contact: Option<&'a str>,
    pub extra: &'a [(String, String)],
    pub body: Option<(&'a str, &'a [u8])>,
    pub user_agent: &'a str,
}

/// Builds a request; `None` if the URI does not parse.
pub(crate) fn build_request(local: &LocalAddr, s: &RequestSpec<'_>) -> Option<Request> {
    let uri: Uri = s.uri.parse().ok()?;
    let mut h: Vec<Header> = Vec::with_capacity(12 + s.extra.len());
    h.push(Header::Via(
        format!(
            "SIP/2.0/{} {};branch={};rport",
            s.hop.transport.via_token(),
            local.host_port(&s.hop),
            s.branch
        )
        .into(),
    ));
    h.push(Header::MaxForwards(70.into()));
    h.push(Header::From(s.from.to_string().into()));
    h.push(Header::To(s.to.to_string().into()));
    h.push(Header::CallId(s.call_id.to_string().into()));
    h.push(Header::CSeq(format!("{} {}", s.cseq, s.method).into()));
    for r in s.routes {
        h.push(Header::Route(r.clone().into()));
    }
    if let Some(c) = s.contact {
        h.push(Header::Contact(c.to_string().into()));
    }
    if matches!(s.method, Method::Invite | Method::Update) {
        h.push(Header::Allow(crate::sip::message::ALLOW.into()));
    }
    if !s.user_agent.is_empty() {
        h.push(Header::UserAgent(s.user_agent.to_string().into()));
    }
    for (k, v) in s.extra {
        h.push(rsipstack::sip::headers::make_header(k, v.clone()));
    }
    let mut body = Vec::new();
    if let Some((ct, b)) = s.body {
        h.push(Header::ContentType(ct.to_string().into()));
        body = b.to_vec();
    }
    Some(Request {
        method: s.method,
        uri,
        version: Version::V2,
        headers: h.into(),
        body,
    })
}

/// Where an in-dialog request goes (RFC 3261 12.2.1.1 with loose routing): the
/// first route if any, else the remote target. An IP-literal URI is used as is;
/// a name, or a private address of a peer that is not itself private (a UA behind
/// NAT advertising its LAN address), falls back to the address the dialog was set
/// up with (symmetric signalling).
pub(crate) fn next_hop(routes: &[String], remote_target: &str, fallback: Peer) -> Peer {
    let uri = routes.first().map_or(remote_target, |r| header_uri(r));
    let transport = match header_param(uri, "transport").map(|t| t.to_ascii_lowercase()) {
        Some(t) if t == "tcp" => Transport::Tcp,
        Some(t) if t == "tls" => Transport::Tls,
        Some(t) if t == "udp" => Transport::Udp,
        _ => fallback.transport,
    };
    let host_port = uri.split_once(':').map_or("", |(_, rest)| rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    let host_port = host_port.split([';', '?', '>']).next().unwrap_or(host_port);
    let parsed: Option<SocketAddr> = host_port.parse().ok().or_else(|| {
        host_port.parse::<IpAddr>().ok().map(|ip| {
            SocketAddr::new(
                ip,
                if transport == Transport::Tls {
                    5061
                } else {
                    5060
                },
            )
        })
    });
    match parsed {
        Some(addr) if !is_private(addr.ip()) || is_private(fallback.addr.ip()) => Peer {
            transport,
            addr,
            // Stream transports keep the connection the dialog uses when it goes there.
            conn: if addr == fallback.addr {
                fallback.conn
            } else {
                None
            },
        },
        _ => fallback,
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(a: &str) -> Peer {
        Peer::udp(a.parse().unwrap())
    }

    #[test]
    fn next_hop_follows_routes_then_target_with_nat_fallback() {
        let fb = udp("203.0.113.9:5060");
        assert_eq!(
            next_hop(
                &["<sip:198.51.100.2;lr>".into()],
                "sip:a@203.0.113.9:5070",
                fb
            )
            .addr,
            "198.51.100.2:5060".parse().unwrap()
        );
        assert_eq!(
            next_hop(&[], "sip:a@203.0.113.9:5070", fb).addr,
            "203.0.113.9:5070".parse().unwrap()
        );
        // Private Contact of a public peer: behind NAT, answer where it came from.
        assert_eq!(next_hop(&[], "sip:a@192.168.1.20:5060", fb), fb);
        // A name: the driver resolved the first hop; keep using it.
        assert_eq!(next_hop(&[], "sip:a@carrier.example", fb), fb);
        // A private peer in a private network is reached directly.
        let lan = udp("10.0.0.5:5060");
        assert_eq!(
            next_hop(&[], "sip:a@10.0.0.6:5062", lan).addr,
            "10.0.0.6:5062".parse().unwrap()
        );
        assert_eq!(
            next_hop(&[], "sip:a@198.51.100.7:5061;transport=tls", fb).transport,
            Transport::Tls
        );
    }

    #[test]
    fn builds_a_request_that_parses_back() {
        let local = LocalAddr::udp("192.0.2.1".parse().unwrap(), 5060);
        let extra = vec![("X-Test".to_string(), "1".to_string())];
        let req = build_request(
            &local,
            &RequestSpec {
                method: Method::Invite,
                uri: "sip:+15550100@198.51.100.2",
                branch: "z9hG4bKabc",
                hop: Peer::udp("198.51.100.3:5060".parse().unwrap()),
                from: "<sip:+15550111@192.0.2.1>;tag=f1",
                to: "<sip:+15550100@198.51.100.2>",
                call_id: "cid@192.0.2.1",
                cseq: 1,
                routes: &["<sip:198.51.100.3;lr>".to_string()],
                contact: Some(&local.contact(&Peer::udp("198.51.100.3:5060".parse().unwrap()))),
                extra: &extra,
                body: Some(("application/sdp", b"v=0\r\n")),
                user_agent: "sbc",
            },
        )
        .unwrap();
        let bytes = crate::sip::message::to_wire(&rsipstack::sip::SipMessage::Request(req));
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(text.starts_with("INVITE sip:+15550100@198.51.100.2 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport\r\n"));
        assert!(
            text.contains("Route: <sip:198.51.100.3;lr>\r\n")
                && text.contains("X-Test: 1\r\n")
                && text.ends_with("Content-Length: 5\r\n\r\nv=0\r\n")
        );
        assert!(matches!(
            crate::sip::message::classify(&bytes, Transport::Udp, &Default::default()),
            crate::sip::message::Inbound::Request(_)
        ));
    }
}
