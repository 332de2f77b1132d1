//! Rules checked after parsing: those that span keys (duplicates, a dial target
//! naming a trunk, listeners on the same port) and ranges serde cannot express.
//! Each problem is `(key path, message)`; all are collected, so an operator fixes
//! a config in one round instead of one error per run.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sip_bridge::bridge::Target;
use sip_bridge::sip::message::Transport;
use sip_bridge::token::{ApiKey, MAX_TTL_SECS};

use super::values::valid_host;
use super::{MIN_TOKEN_SECRET, SbcConfig};

type Found = Vec<(String, String)>;

/// Every problem of `c`, in file order (roughly: section by section).
pub(super) fn check(c: &SbcConfig) -> Found {
    let mut f = Found::new();
    sip(c, &mut f);
    media(c, &mut f);
    dual_stack(c, &mut f);
    listeners(c, &mut f);
    http(c, &mut f);
    auth(c, &mut f);
    limits(c, &mut f);
    signalling(c, &mut f);
    trunks(c, &mut f);
    numbers(c, &mut f);
    phones(c, &mut f);
    cluster(c, &mut f);
    if let Some(r) = &c.routing {
        if !is_url(&r.url) {
            f.push(("routing.url".into(), not_url(&r.url)));
        }
        if r.timeout.is_zero() || r.timeout > std::time::Duration::from_secs(4) {
            f.push((
                "routing.timeout".into(),
                "must be above 0 and at most 4s (a call waits at most 5 s for its route)".into(),
            ));
        }
    }
    for (i, st) in c.streams.iter().enumerate() {
        if !(st.url.starts_with("ws://") || st.url.starts_with("wss://")) || st.url.len() < 8 {
            f.push((
                format!("streams[{i}].url"),
                format!("\"{}\" is not a ws:// or wss:// URL", st.url),
            ));
        }
        if let Err(e) = st.format.parse::<sip_bridge::stream::StreamFormat>() {
            f.push((format!("streams[{i}].format"), e));
        }
        for (k, v) in &st.headers {
            if k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || v.chars().any(char::is_control)
            {
                f.push((
                    format!("streams[{i}].headers.{k}"),
                    "not a valid HTTP header".into(),
                ));
            }
        }
    }
    if let Some(w) = &c.webhooks {
        if !is_url(&w.url) {
            f.push(("webhooks.url".into(), not_url(&w.url)));
        }
        if w.secret.expose().is_empty() {
            f.push(("webhooks.secret".into(), "must not be empty".into()));
        }
    }
    if !is_log_filter(&c.log.level) {
        f.push((
            "log.level".into(),
            format!(
                "\"{}\" is not a log level: trace, debug, info, warn, error or off, or directives like \"info,sbc::sip=debug\"",
                c.log.level
            ),
        ));
    }
    f
}

fn push(f: &mut Found, key: impl Into<String>, message: impl Into<String>) {
    f.push((key.into(), message.into()));
}

/// Ids and names that end up in tokens, logs and `pstn:...@name`.
fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

const NAME_RULE: &str = "1-64 letters, digits, '.', '_' or '-'";

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (3..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Text that goes into a SIP header or a log line: no CR/LF injection.
fn is_header_text(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

fn sip(c: &SbcConfig, f: &mut Found) {
    let s = &c.sip;
    if s.udp.is_none() && s.tcp.is_none() && s.tls.is_none() {
        push(f, "sip", "no listener: set udp, tcp or tls");
    }
    for (key, file) in [("sip.tls_cert", &s.tls_cert), ("sip.tls_key", &s.tls_key)] {
        match (s.tls.is_some(), file.is_some()) {
            (true, false) => push(f, key, "required with sip.tls"),
            (false, true) => push(f, key, "set only with sip.tls, which is not set"),
            _ => {}
        }
    }
    let h = &c.http;
    match (&h.tls_cert, &h.tls_key) {
        (Some(_), None) => push(f, "http.tls_key", "required with http.tls_cert"),
        (None, Some(_)) => push(f, "http.tls_cert", "required with http.tls_key"),
        _ => {}
    }
    if !is_header_text(&s.user_agent) {
        push(
            f,
            "sip.user_agent",
            "must be 1-128 characters without control characters (it is a SIP header)",
        );
    }
    if s.advertise.is_some_and(|ip| ip.is_unspecified()) {
        push(
            f,
            "sip.advertise",
            "must be a concrete address, not 0.0.0.0 or ::",
        );
    } else if c.sip_advertise_opt().is_none() && s.udp.or(s.tcp).or(s.tls).is_some() {
        push(
            f,
            "sip.advertise",
            "needed when SIP listens on 0.0.0.0 (or ::): the address peers see in Via and Contact (and in SDP, unless media.rtp_advertise is set)",
        );
    }
}

/// Both families on one process: IPv6 addresses for IPv6 peers, IPv4 ones
/// for the rest, on sockets bound to `[::]` (dual stack) so one call can join
/// an IPv4 and an IPv6 peer.
fn dual_stack(c: &SbcConfig, f: &mut Found) {
    let any6 = |a: &SocketAddr| a.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED);
    for (key, ip) in [
        ("sip.advertise6", c.sip.advertise6),
        ("media.rtp_advertise6", c.media.rtp_advertise6),
    ] {
        if ip.is_some_and(|ip| !ip.is_ipv6() || ip.is_unspecified()) {
            push(f, key, "must be a concrete IPv6 address");
        }
    }
    if c.sip.advertise6.is_some() {
        if c.sip.advertise.is_some_and(|ip| !ip.is_ipv4()) {
            push(
                f,
                "sip.advertise",
                "must be the IPv4 address beside sip.advertise6",
            );
        }
        for (key, a) in [
            ("sip.udp", c.sip.udp),
            ("sip.tcp", c.sip.tcp),
            ("sip.tls", c.sip.tls),
        ] {
            if a.is_some_and(|a| !any6(&a)) {
                push(
                    f,
                    key,
                    "must listen on [::] with sip.advertise6 (one socket for IPv4 and IPv6 peers)",
                );
            }
        }
    }
    if c.media_ip6().is_some() && c.media.rtp_bind != IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
    {
        push(
            f,
            "media.rtp_bind",
            "must be \"::\" with an IPv6 media address (sip.advertise6 or media.rtp_advertise6): one socket per port for IPv4 and IPv6 peers",
        );
    }
}

fn media(c: &SbcConfig, f: &mut Found) {
    let m = &c.media;
    if m.rtp_advertise.is_some_and(|ip| ip.is_unspecified()) {
        push(
            f,
            "media.rtp_advertise",
            "must be a concrete address, not 0.0.0.0 or ::",
        );
    } else if c.media_ip_opt().is_none() && !f.iter().any(|(k, _)| k == "sip.advertise") {
        // (Setting sip.advertise, which that problem asks for, fixes this too.)
        push(
            f,
            "media.rtp_advertise",
            "needed when media.rtp_bind is 0.0.0.0 and sip.advertise is not set: the address peers send RTP to",
        );
    }
    if let Some(w) = m.webrtc_advertise
        && (w.ip().is_unspecified() || w.port() == 0)
    {
        push(
            f,
            "media.webrtc_advertise",
            "must be a concrete address and port",
        );
    }
}

/// Two sockets of one protocol on the same port and overlapping addresses would
/// fail at bind time, or worse, one would take the other's traffic.
fn listeners(c: &SbcConfig, f: &mut Found) {
    let overlap = |a: IpAddr, b: IpAddr| a == b || a.is_unspecified() || b.is_unspecified();
    let udp: Vec<(&str, SocketAddr)> = [
        ("sip.udp", c.sip.udp),
        ("media.webrtc", Some(c.media.webrtc)),
    ]
    .into_iter()
    .filter_map(|(k, a)| Some((k, a?)))
    .collect();
    let tcp: Vec<(&str, SocketAddr)> = [
        ("sip.tcp", c.sip.tcp),
        ("sip.tls", c.sip.tls),
        ("http.listen", Some(c.http.listen)),
    ]
    .into_iter()
    .filter_map(|(k, a)| Some((k, a?)))
    .collect();
    for group in [&udp, &tcp] {
        for (j, (kj, aj)) in group.iter().enumerate() {
            if let Some((ki, ai)) = group[..j].iter().find(|(_, ai)| {
                ai.port() != 0 && ai.port() == aj.port() && overlap(ai.ip(), aj.ip())
            }) {
                push(f, *kj, format!("{aj} clashes with {ki} ({ai})"));
            }
        }
    }
    let range = c.media.rtp_ports;
    for (k, a) in &udp {
        if range.contains(a.port()) && overlap(a.ip(), c.media.rtp_bind) {
            push(
                f,
                "media.rtp_ports",
                format!("{range} includes {k}'s port {}", a.port()),
            );
        }
    }
}

/// `http(s)://host[:port][/path]`.
fn is_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return false;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    is_authority(authority)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn is_authority(a: &str) -> bool {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return false;
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return false,
            },
        }
    } else {
        match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    port.is_none_or(|p| p.parse::<u16>().is_ok()) && valid_host(host)
}

fn not_url(s: &str) -> String {
    format!("\"{s}\" is not an http(s) URL (e.g. \"https://sbc.example.com\")")
}

/// The origin of a URL as a browser serializes it (RFC 6454 section 6.1):
/// `scheme://host[:port]`, lowercase, without the scheme's default port.
pub(super) fn origin_of(url: &str) -> Option<String> {
    if !is_url(url) {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

/// `s` as a canonical origin, if it is one (a URL with no path but `/`).
pub(super) fn canonical_origin(s: &str) -> Option<String> {
    let (_, rest) = s.split_once("://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return None;
    }
    origin_of(s)
}

fn http(c: &SbcConfig, f: &mut Found) {
    if let Some(u) = &c.http.public_url
        && !is_url(u)
    {
        push(f, "http.public_url", not_url(u));
    }
    for (i, o) in c.http.allowed_origins.iter().enumerate() {
        if o != "*" && canonical_origin(o).is_none() {
            push(
                f,
                format!("http.allowed_origins[{i}]"),
                format!(
                    "\"{o}\" is not an origin: write scheme://host[:port] without a path (e.g. \"https://ops.example.com\"), or \"*\""
                ),
            );
        }
    }
}

fn auth(c: &SbcConfig, f: &mut Found) {
    let a = &c.auth;
    match (&a.token_secret, &a.token_secret_file) {
        (Some(_), Some(_)) => push(
            f,
            "auth.token_secret_file",
            "set either auth.token_secret or auth.token_secret_file, not both",
        ),
        (None, None) => push(
            f,
            "auth.token_secret",
            format!(
                "required (or auth.token_secret_file): the key session tokens are signed with, at least {MIN_TOKEN_SECRET} random bytes (e.g. `openssl rand -hex 32`)"
            ),
        ),
        (Some(s), None) if s.expose().len() < MIN_TOKEN_SECRET => push(
            f,
            "auth.token_secret",
            format!(
                "must be at least {MIN_TOKEN_SECRET} bytes (has {})",
                s.expose().len()
            ),
        ),
        _ => {}
    }
    if a.token_ttl < Duration::from_secs(1) || a.token_ttl > Duration::from_secs(MAX_TTL_SECS) {
        push(f, "auth.token_ttl", "must be between 1s and 24h");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut hashes: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, k) in a.api_keys.iter().enumerate() {
        let key = format!("auth.api_keys[{i}]");
        if !is_name(&k.name) {
            push(
                f,
                format!("{key}.name"),
                format!("\"{}\": use {NAME_RULE}", k.name),
            );
        } else if let Some(&j) = names.get(k.name.as_str()) {
            push(
                f,
                format!("{key}.name"),
                format!("\"{}\" is already auth.api_keys[{j}].name", k.name),
            );
        } else {
            names.insert(&k.name, i);
        }
        match ApiKey::from_hex(&k.name, &k.sha256, Vec::new()) {
            None => push(
                f,
                format!("{key}.sha256"),
                "expected the key's SHA-256 as 64 hex digits (`sbc hash-key KEY` prints it), not the key itself",
            ),
            Some(parsed) => {
                if let Some(&j) = hashes.get(&parsed.sha256) {
                    push(
                        f,
                        format!("{key}.sha256"),
                        format!("the same key as auth.api_keys[{j}]: one name per key"),
                    );
                } else {
                    hashes.insert(parsed.sha256, i);
                }
            }
        }
        for (j, n) in k.numbers.iter().enumerate() {
            if c.numbers.iter().any(|x| &x.id == n) {
                continue;
            }
            let hint = c
                .numbers
                .iter()
                .find(|x| x.e164 == *n)
                .map(|x| format!(" (that is the E.164 of \"{}\"; write the id)", x.id))
                .unwrap_or_default();
            push(
                f,
                format!("{key}.numbers[{j}]"),
                format!("unknown number id \"{n}\"{hint}"),
            );
        }
    }
}

fn positive(f: &mut Found, key: &str, v: u64) {
    if v == 0 {
        push(f, key, "must be at least 1");
    }
}

fn nonzero(f: &mut Found, key: &str, d: Duration) {
    if d.is_zero() {
        push(f, key, "must be above 0s");
    }
}

fn limits(c: &SbcConfig, f: &mut Found) {
    let l = &c.limits;
    positive(f, "limits.max_calls", l.max_calls as u64);
    positive(f, "limits.max_cps", l.max_cps.into());
    positive(f, "limits.max_connections", l.max_connections as u64);
    positive(f, "limits.max_operators", l.max_operators as u64);
    nonzero(f, "limits.max_call_duration", l.max_call_duration);
    nonzero(f, "limits.outbound_ring_timeout", l.outbound_ring_timeout);
    nonzero(f, "media.media_timeout", c.media.media_timeout);
    let p = &c.protection;
    positive(
        f,
        "protection.rate_limit_requests",
        p.rate_limit_requests.into(),
    );
    nonzero(f, "protection.rate_limit_window", p.rate_limit_window);
    nonzero(f, "protection.ban_time", p.ban_time);
    for (i, ua) in p.scanner_user_agents.iter().enumerate() {
        if ua.trim().is_empty() {
            push(
                f,
                format!("protection.scanner_user_agents[{i}]"),
                "must not be empty (it would match every User-Agent)",
            );
        }
    }
}

fn signalling(c: &SbcConfig, f: &mut Found) {
    let s = &c.signalling;
    nonzero(f, "signalling.hello_timeout", s.hello_timeout);
    nonzero(f, "signalling.heartbeat_interval", s.heartbeat_interval);
    positive(
        f,
        "signalling.missed_heartbeats",
        s.missed_heartbeats.into(),
    );
    positive(f, "signalling.rate_per_sec", s.rate_per_sec.into());
    positive(f, "signalling.burst", s.burst.into());
    positive(f, "signalling.max_strikes", s.max_strikes.into());
    if !(1024..=1 << 20).contains(&s.max_message) {
        push(f, "signalling.max_message", "must be 1024 to 1048576 bytes");
    }
}

fn trunks(c: &SbcConfig, f: &mut Found) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, t) in c.trunks.iter().enumerate() {
        let key = format!("trunks[{i}]");
        if !is_name(&t.name) {
            push(
                f,
                format!("{key}.name"),
                format!("\"{}\": use {NAME_RULE}", t.name),
            );
        } else if let Some(&j) = names.get(t.name.as_str()) {
            push(
                f,
                format!("{key}.name"),
                format!("\"{}\" is already trunks[{j}].name", t.name),
            );
        } else {
            names.insert(&t.name, i);
        }
        if !valid_host(&t.host) {
            push(
                f,
                format!("{key}.host"),
                format!(
                    "\"{}\" is not a host name or IP (no scheme, no port)",
                    t.host
                ),
            );
        }
        if t.peers.is_empty() {
            push(
                f,
                format!("{key}.peers"),
                "needs at least one peer (host:port)",
            );
        }
        if t.transport == Transport::Udp && c.sip.udp.is_none() {
            push(
                f,
                format!("{key}.transport"),
                "udp needs the sip.udp listener (requests go out from it)",
            );
        }
        match (&t.username, &t.password) {
            (None, Some(_)) => push(f, format!("{key}.username"), "required with password"),
            (Some(_), None) => push(f, format!("{key}.password"), "required with username"),
            (Some(u), Some(_)) if !is_header_text(u) => push(
                f,
                format!("{key}.username"),
                "must be 1-128 characters without control characters",
            ),
            _ => {}
        }
        if t.register == super::Register::AsUser && t.username.is_none() {
            push(
                f,
                format!("{key}.register"),
                format!(
                    "true needs {key}.username (the AOR is sip:USERNAME@HOST); or write the AOR"
                ),
            );
        }
        if t.codecs.is_empty() {
            push(f, format!("{key}.codecs"), "needs at least one codec");
        }
        for (j, codec) in t.codecs.iter().enumerate() {
            if t.codecs[..j].contains(codec) {
                push(
                    f,
                    format!("{key}.codecs[{j}]"),
                    format!("{} is listed twice", codec.encoding_name().to_uppercase()),
                );
            }
        }
    }
}

fn numbers(c: &SbcConfig, f: &mut Found) {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut e164s: HashMap<&str, usize> = HashMap::new();
    let trunk_names: Vec<&str> = c.trunks.iter().map(|t| t.name.as_str()).collect();
    for (i, n) in c.numbers.iter().enumerate() {
        let key = format!("numbers[{i}]");
        if !is_name(&n.id) {
            push(
                f,
                format!("{key}.id"),
                format!("\"{}\": use {NAME_RULE}", n.id),
            );
        } else if let Some(&j) = ids.get(n.id.as_str()) {
            push(
                f,
                format!("{key}.id"),
                format!("\"{}\" is already numbers[{j}].id", n.id),
            );
        } else {
            ids.insert(&n.id, i);
        }
        if !is_e164(&n.e164) {
            push(
                f,
                format!("{key}.e164"),
                format!(
                    "\"{}\" is not E.164: write + and 3-15 digits (e.g. \"+15550100\")",
                    n.e164
                ),
            );
        } else if let Some(&j) = e164s.get(n.e164.as_str()) {
            push(
                f,
                format!("{key}.e164"),
                format!("\"{}\" is already numbers[{j}].e164", n.e164),
            );
        } else {
            e164s.insert(&n.e164, i);
        }
        if !is_header_text(&n.name) {
            push(
                f,
                format!("{key}.name"),
                "must be 1-128 characters without control characters",
            );
        }
        if n.dial.is_empty() {
            push(
                f,
                format!("{key}.dial"),
                "needs at least one step (or leave dial out to ring the operators)",
            );
        }
        for (s, step) in n.dial.iter().enumerate() {
            let skey = format!("{key}.dial[{s}]");
            if step.ring.is_empty() {
                push(f, format!("{skey}.ring"), "needs at least one target");
            }
            nonzero(f, &format!("{skey}.timeout"), step.timeout);
            for (t, target) in step.ring.iter().enumerate() {
                let Target::Pstn { trunk, .. } = target else {
                    continue;
                };
                let tkey = format!("{skey}.ring[{t}]");
                match trunk {
                    _ if trunk_names.is_empty() => push(
                        f,
                        tkey,
                        format!(
                            "\"{target}\" goes through a trunk, and no [[trunks]] is configured"
                        ),
                    ),
                    Some(name) if !trunk_names.contains(&name.as_str()) => push(
                        f,
                        tkey,
                        format!(
                            "\"{target}\" names trunk \"{name}\", which is not configured (trunks: {})",
                            trunk_names.join(", ")
                        ),
                    ),
                    _ => {}
                }
            }
        }
    }
}

/// A `tracing` filter as the runtime's `EnvFilter` takes it, checked strictly: a
/// level, or comma-separated `target=level` directives (a bare word would
/// silently be taken as a target and log nothing).
fn is_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    !s.trim().is_empty()
        && s.split(',').all(|d| match d.split_once('=') {
            Some((target, l)) => {
                let target = target.trim();
                !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_:-.".contains(&b))
                    && level(l)
            }
            None => level(d),
        })
}

/// `[cluster]`: a usable name, a Redis URL, a lease that outlives two
/// heartbeats, a TCP listener for the other nodes.
fn cluster(c: &SbcConfig, f: &mut Found) {
    let Some(k) = &c.cluster else { return };
    if k.node.is_empty()
        || k.node.len() > 64
        || !k
            .node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        f.push((
            "cluster.node".into(),
            "1-64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    if !(k.redis_url.starts_with("redis://") || k.redis_url.starts_with("unix://")) {
        f.push(("cluster.redis_url".into(), "a redis:// URL".into()));
    }
    if k.heartbeat.is_zero() || k.lease < k.heartbeat * 2 {
        f.push((
            "cluster.lease".into(),
            "at least twice cluster.heartbeat (above 0)".into(),
        ));
    }
    if k.redis_timeout.is_zero() || k.redis_timeout >= k.heartbeat {
        f.push((
            "cluster.redis_timeout".into(),
            "above 0 and below cluster.heartbeat".into(),
        ));
    }
    if c.sip.tcp.is_none() {
        f.push((
            "sip.tcp".into(),
            "required with [cluster]: nodes ring each other's operators over TCP".into(),
        ));
    }
}

/// `[registrar]` and `[[phones]]`: bounds, HA1s that are hex of the right
/// length, user names once each.
fn phones(c: &SbcConfig, f: &mut Found) {
    let r = &c.registrar;
    if r.realm.is_empty() || r.realm.contains(['"', '\\']) {
        f.push((
            "registrar.realm".into(),
            "a non-empty name without quotes".into(),
        ));
    }
    if r.min_expires.is_zero() || r.min_expires > r.max_expires {
        f.push((
            "registrar.min_expires".into(),
            "above 0 and at most max_expires".into(),
        ));
    }
    if r.default_expires < r.min_expires || r.default_expires > r.max_expires {
        f.push((
            "registrar.default_expires".into(),
            "between min_expires and max_expires".into(),
        ));
    }
    match (&r.accounts_url, &r.accounts_secret) {
        (Some(u), _) if !(u.starts_with("http://") || u.starts_with("https://")) => f.push((
            "registrar.accounts_url".into(),
            "an http:// or https:// URL".into(),
        )),
        (Some(_), None) => f.push((
            "registrar.accounts_secret".into(),
            "needed with accounts_url (it signs the requests)".into(),
        )),
        _ => {}
    }
    if r.accounts_ttl.is_zero() || r.accounts_timeout.is_zero() {
        f.push((
            "registrar".into(),
            "accounts_ttl and accounts_timeout must be above 0".into(),
        ));
    }
    if r.max_per_operator == 0 || r.ban_after == 0 || r.max_bindings == 0 {
        f.push((
            "registrar".into(),
            "max_per_operator, max_bindings and ban_after must be above 0".into(),
        ));
    }
    let hex = |v: &str, n: usize| v.len() == n && v.bytes().all(|b| b.is_ascii_hexdigit());
    let mut seen = std::collections::HashSet::new();
    for (i, p) in c.phones.iter().enumerate() {
        if p.username.is_empty()
            || !p
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        {
            f.push((
                format!("phones[{i}].username"),
                "letters, digits and - _ . + only".into(),
            ));
        }
        if !seen.insert(p.username.to_ascii_lowercase()) {
            f.push((format!("phones[{i}].username"), "used twice".into()));
        }
        if p.operator.is_empty() {
            f.push((format!("phones[{i}].operator"), "names no operator".into()));
        }
        for n in &p.numbers {
            if !c.numbers.iter().any(|x| x.id == *n || x.e164 == *n) {
                f.push((format!("phones[{i}].numbers"), format!("no number \"{n}\"")));
            }
        }
        if !hex(&p.ha1_md5, 32) {
            f.push((
                format!("phones[{i}].ha1_md5"),
                "32 hex digits: MD5 of username:realm:password".into(),
            ));
        }
        if !hex(&p.ha1_sha256, 64) {
            f.push((
                format!("phones[{i}].ha1_sha256"),
                "64 hex digits: SHA-256 of username:realm:password".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_origins() {
        for ok in [
            "https://sbc.example.com",
            "http://127.0.0.1:8080",
            "https://sbc.example.com/base/path",
            "https://[2001:db8::1]:8443",
        ] {
            assert!(is_url(ok), "{ok}");
        }
        for bad in [
            "sbc.example.com",
            "ftp://x",
            "https://",
            "https://a b",
            "https://x:port",
        ] {
            assert!(!is_url(bad), "{bad}");
        }
        assert_eq!(
            origin_of("https://SBC.example.com:8443/x?y").as_deref(),
            Some("https://sbc.example.com:8443")
        );
        assert_eq!(origin_of("nope"), None);
        for (o, c) in [
            ("https://ops.example.com", Some("https://ops.example.com")),
            (
                "HTTPS://Ops.Example.com:443/",
                Some("https://ops.example.com"),
            ),
            ("http://127.0.0.1:80", Some("http://127.0.0.1")),
            ("http://127.0.0.1:8080", Some("http://127.0.0.1:8080")),
            ("https://ops.example.com/app", None),
            ("ops.example.com", None),
        ] {
            assert_eq!(canonical_origin(o).as_deref(), c, "{o}");
        }
    }

    #[test]
    fn log_filters() {
        for ok in [
            "info",
            "DEBUG",
            "info,sbc::sip=debug",
            "warn, sip_bridge=trace",
        ] {
            assert!(is_log_filter(ok), "{ok}");
        }
        for bad in ["", "loud", "info,sbc", "=debug", "sbc=loud"] {
            assert!(!is_log_filter(bad), "{bad}");
        }
    }

    #[test]
    fn names_and_numbers() {
        assert!(is_name("carrier-2.eu_west") && !is_name("a@b") && !is_name(""));
        assert!(is_e164("+15550100") && !is_e164("15550100") && !is_e164("+1"));
        assert!(is_header_text("sbc/1.0") && !is_header_text("a\r\nb"));
    }
}
