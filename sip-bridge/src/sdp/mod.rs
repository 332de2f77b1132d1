//! SDP (RFC 8866) parsing and printing, and offer/answer for audio (RFC 3264).
//!
//! The parser keeps every line it does not interpret as a generic attribute so an
//! answer or a re-offer can carry them on; it is strict about structure (line
//! order, `type=value` form, numeric fields) and never panics.

mod negotiate;

pub use negotiate::{
    AudioCaps, AudioCodecPref, LocalMedia, NegotiatedAudio, SdpError, answer_audio, create_offer,
    negotiated_from_answer,
};

use std::fmt::{self, Write as _};
use std::net::IpAddr;

/// Largest SDP body accepted.
pub const MAX_SDP: usize = 64 * 1024;

/// Media direction (RFC 3264 section 5.1, RFC 8866 section 6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direction {
    /// Send and receive.
    #[default]
    SendRecv,
    /// Send only (we put the other side on hold).
    SendOnly,
    /// Receive only (we are on hold).
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an attribute name (`sendonly`...) states, if it is one.
    pub fn from_attr(name: &str) -> Option<Direction> {
        Some(match name {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// Whether this side sends.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The same direction seen from the other side.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// From send/receive flags.
    pub fn from_flags(send: bool, recv: bool) -> Direction {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }
}

/// `c=` connection data (only IN IP4/IP6 unicast is interpreted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The address text as written (an IP or a name).
    pub address: String,
}

impl Connection {
    /// The address as an IP, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }

    /// RFC 2543 hold: `c=IN IP4 0.0.0.0`.
    pub fn is_hold(&self) -> bool {
        self.ip().is_some_and(|ip| ip.is_unspecified())
    }
}

/// `o=` origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// User name (`-` if none).
    pub username: String,
    /// Session id.
    pub session_id: String,
    /// Session version: incremented by each change (RFC 3264 section 8).
    pub session_version: u64,
    /// Unicast address of the originator.
    pub address: String,
}

/// An `a=` line: `name` or `name:value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute name.
    pub name: String,
    /// Value after the colon.
    pub value: Option<String>,
}

impl Attribute {
    /// `a=name:value`.
    pub fn new(name: &str, value: impl Into<String>) -> Self {
        Attribute {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    /// `a=name`.
    pub fn flag(name: &str) -> Self {
        Attribute {
            name: name.into(),
            value: None,
        }
    }
}

/// `a=rtpmap` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub payload_type: u8,
    /// Encoding name as written (compare case-insensitively).
    pub encoding: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// Channels (audio), 1 when absent.
    pub channels: u8,
}

/// One `m=` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaDescription {
    /// Media type (`audio`, `video`, ...).
    pub media: String,
    /// Transport port (0 = rejected / disabled).
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, `UDP/TLS/RTP/SAVPF`, ...).
    pub protocol: String,
    /// Format list (payload types for RTP).
    pub formats: Vec<String>,
    /// Media-level `c=`.
    pub connection: Option<Connection>,
    /// Media-level attributes, in order.
    pub attributes: Vec<Attribute>,
}

impl MediaDescription {
    /// First value of attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.as_deref())
    }

    /// Whether a flag attribute `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.attributes.iter().any(|a| a.name == name)
    }

    /// Values of every `name` attribute.
    pub fn attributes_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.attributes
            .iter()
            .filter(move |a| a.name == name)
            .filter_map(|a| a.value.as_deref())
    }

    /// The `rtpmap` entries, plus the static types used without one (RFC 3551).
    pub fn rtpmaps(&self) -> Vec<RtpMap> {
        let mut maps: Vec<RtpMap> = self
            .attributes_named("rtpmap")
            .filter_map(parse_rtpmap)
            .collect();
        for f in &self.formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            if maps.iter().any(|m| m.payload_type == pt) {
                continue;
            }
            let static_map = match pt {
                0 => Some(("PCMU", 8000)),
                8 => Some(("PCMA", 8000)),
                9 => Some(("G722", 8000)),
                18 => Some(("G729", 8000)),
                _ => None,
            };
            if let Some((name, rate)) = static_map {
                maps.push(RtpMap {
                    payload_type: pt,
                    encoding: name.into(),
                    clock_rate: rate,
                    channels: 1,
                });
            }
        }
        maps
    }

    /// The `fmtp` parameters of `pt`.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.attributes_named("fmtp").find_map(|v| {
            let (p, params) = v.split_once(' ')?;
            (p.parse::<u8>().ok()? == pt).then_some(params.trim())
        })
    }

    /// The direction attribute, `default` when absent.
    pub fn direction_or(&self, default: Direction) -> Direction {
        self.attributes
            .iter()
            .find_map(|a| Direction::from_attr(&a.name))
            .unwrap_or(default)
    }

    /// `a=ptime` in ms.
    pub fn ptime(&self) -> Option<u32> {
        self.attribute("ptime")?.trim().parse().ok()
    }

    /// `a=mid`.
    pub fn mid(&self) -> Option<&str> {
        self.attribute("mid")
    }
}

fn parse_rtpmap(v: &str) -> Option<RtpMap> {
    let (pt, rest) = v.split_once(' ')?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.to_string();
    let clock_rate = parts.next()?.parse().ok()?;
    let channels = parts.next().map_or(Some(1), |c| c.parse().ok())?;
    Some(RtpMap {
        payload_type: pt.parse().ok().filter(|&p: &u8| p < 128)?,
        encoding,
        clock_rate,
        channels,
    })
}

/// A session description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=`.
    pub origin: Origin,
    /// `s=`.
    pub session_name: String,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// `t=` start and stop.
    pub timing: (u64, u64),
    /// Session-level attributes.
    pub attributes: Vec<Attribute>,
    /// Media sections in order.
    pub media: Vec<MediaDescription>,
}

/// What is wrong with an SDP body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad SDP at line {line}: {reason}")]
pub struct SdpParseError {
    /// 1-based line number (0 for the whole body).
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl SessionDescription {
    /// Parses an SDP body (CRLF or LF line ends).
    pub fn parse(text: &str) -> Result<SessionDescription, SdpParseError> {
        let err = |line, reason| SdpParseError { line, reason };
        if text.len() > MAX_SDP {
            return Err(err(0, "body too large"));
        }
        let mut origin = None;
        let mut session_name = None;
        let mut connection = None;
        let mut timing = None;
        let mut attributes = Vec::new();
        let mut media: Vec<MediaDescription> = Vec::new();
        let mut seen_version = false;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (kind, value) = line.split_once('=').ok_or(err(n, "not type=value"))?;
            if kind.len() != 1 {
                return Err(err(n, "type is not one letter"));
            }
            if !seen_version {
                if kind != "v" || value != "0" {
                    return Err(err(n, "must start with v=0"));
                }
                seen_version = true;
                continue;
            }
            match kind {
                "o" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() != 6 {
                        return Err(err(n, "o= needs 6 fields"));
                    }
                    origin = Some(Origin {
                        username: f[0].into(),
                        session_id: f[1].into(),
                        session_version: f[2]
                            .parse()
                            .map_err(|_| err(n, "o= version not a number"))?,
                        address: f[5].into(),
                    });
                }
                "s" => session_name = Some(value.to_string()),
                "t" => {
                    let mut f = value.split_whitespace().map(str::parse::<u64>);
                    match (f.next(), f.next()) {
                        (Some(Ok(a)), Some(Ok(b))) => timing = Some((a, b)),
                        _ => return Err(err(n, "t= needs two numbers")),
                    }
                }
                "c" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() != 3 || f[0] != "IN" || !matches!(f[1], "IP4" | "IP6") {
                        return Err(err(n, "c= must be IN IP4|IP6 address"));
                    }
                    let c = Connection {
                        address: f[2].into(),
                    };
                    match media.last_mut() {
                        Some(m) => m.connection = Some(c),
                        None => connection = Some(c),
                    }
                }
                "m" => {
                    let mut f = value.split_whitespace();
                    let (Some(kind), Some(port), Some(proto)) = (f.next(), f.next(), f.next())
                    else {
                        return Err(err(n, "m= needs media, port, proto"));
                    };
                    let port = port.split('/').next().unwrap_or(port);
                    media.push(MediaDescription {
                        media: kind.into(),
                        port: port.parse().map_err(|_| err(n, "m= port not a number"))?,
                        protocol: proto.into(),
                        formats: f.map(String::from).collect(),
                        connection: None,
                        attributes: Vec::new(),
                    });
                }
                "a" => {
                    let a = match value.split_once(':') {
                        Some((name, v)) => Attribute {
                            name: name.into(),
                            value: Some(v.into()),
                        },
                        None => Attribute::flag(value),
                    };
                    if a.name.is_empty() {
                        return Err(err(n, "empty attribute name"));
                    }
                    match media.last_mut() {
                        Some(m) => m.attributes.push(a),
                        None => attributes.push(a),
                    }
                }
                // Known lines we carry no meaning for (i, u, e, p, b, z, k, r).
                "i" | "u" | "e" | "p" | "b" | "z" | "k" | "r" => {}
                _ => return Err(err(n, "unknown line type")),
            }
        }
        if !seen_version {
            return Err(err(0, "empty"));
        }
        Ok(SessionDescription {
            origin: origin.ok_or(err(0, "missing o="))?,
            session_name: session_name.ok_or(err(0, "missing s="))?,
            connection,
            timing: timing.ok_or(err(0, "missing t="))?,
            attributes,
            media,
        })
    }

    /// The connection address of `m`: its own `c=` or the session's.
    pub fn connection_for<'a>(&'a self, m: &'a MediaDescription) -> Option<&'a Connection> {
        m.connection.as_ref().or(self.connection.as_ref())
    }

    /// First `audio` section.
    pub fn audio(&self) -> Option<&MediaDescription> {
        self.media.iter().find(|m| m.media == "audio")
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = |a: &str| if a.contains(':') { "IP6" } else { "IP4" };
        let o = &self.origin;
        write!(
            f,
            "v=0\r\no={} {} {} IN {} {}\r\ns={}\r\n",
            o.username,
            o.session_id,
            o.session_version,
            ip(&o.address),
            o.address,
            self.session_name
        )?;
        if let Some(c) = &self.connection {
            write!(f, "c=IN {} {}\r\n", ip(&c.address), c.address)?;
        }
        write!(f, "t={} {}\r\n", self.timing.0, self.timing.1)?;
        let attr = |f: &mut fmt::Formatter<'_>, a: &Attribute| match &a.value {
            Some(v) => write!(f, "a={}:{}\r\n", a.name, v),
            None => write!(f, "a={}\r\n", a.name),
        };
        for a in &self.attributes {
            attr(f, a)?;
        }
        for m in &self.media {
            let mut line = format!("m={} {} {}", m.media, m.port, m.protocol);
            for fmt_ in &m.formats {
                let _ = write!(line, " {fmt_}");
            }
            write!(f, "{line}\r\n")?;
            if let Some(c) = &m.connection {
                write!(f, "c=IN {} {}\r\n", ip(&c.address), c.address)?;
            }
            for a in &m.attributes {
                attr(f, a)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn browser_offer(name: &str) -> String {
        String::from_utf8(media_core::testdata::read(&format!(
            "sdp-browser-offers/{name}"
        )))
        .unwrap()
    }

    #[test]
    fn parses_the_real_browser_offers() {
        for (file, audio_pts, video) in [
            ("exwebrtc_chromium_audio_video_sdp.txt", 8, true),
            ("exwebrtc_firefox_audio_video_sdp.txt", 5, true),
            ("exwebrtc_obs_audio_video_sdp.txt", 0, true),
        ] {
            let sdp = SessionDescription::parse(&browser_offer(file))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            if audio_pts > 0 {
                let a = sdp.audio().unwrap();
                assert_eq!(a.formats.len(), audio_pts, "{file}");
                assert!(
                    a.rtpmaps()
                        .iter()
                        .any(|m| m.encoding.eq_ignore_ascii_case("opus")
                            && m.clock_rate == 48000
                            && m.channels == 2)
                );
                assert_eq!(a.direction_or(Direction::SendRecv), Direction::SendRecv);
                assert!(a.has("rtcp-mux"));
            }
            assert_eq!(
                sdp.media.iter().any(|m| m.media == "video"),
                video,
                "{file}"
            );
            // Print and parse again: the same description.
            let again = SessionDescription::parse(&sdp.to_string()).unwrap();
            assert_eq!(again, sdp, "{file}");
        }
    }

    #[test]
    fn reads_rtpmap_fmtp_ptime_and_static_types() {
        let sdp = SessionDescription::parse(
            "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:30\r\na=sendonly\r\n",
        )
        .unwrap();
        let a = sdp.audio().unwrap();
        let maps = a.rtpmaps();
        assert_eq!(maps.len(), 3);
        assert!(
            maps.iter()
                .any(|m| m.payload_type == 0 && m.encoding == "PCMU")
        );
        assert_eq!(a.fmtp(101), Some("0-16"));
        assert_eq!(a.ptime(), Some(30));
        assert_eq!(a.direction_or(Direction::SendRecv), Direction::SendOnly);
        assert_eq!(
            sdp.connection_for(a).unwrap().ip(),
            Some("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let cases = [
            "",
            "v=1\r\n",
            "o=- 1 1 IN IP4 x\r\n",
            "v=0\r\no=- 1 x IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio x RTP/AVP 0\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nc=IN XX 1.2.3.4\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nbogus\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\r\n",
            "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nq=what\r\n",
        ];
        for c in cases {
            assert!(SessionDescription::parse(c).is_err(), "{c:?}");
        }
        // Every prefix of a real offer parses or errs, never panics.
        let offer = browser_offer("exwebrtc_chromium_audio_video_sdp.txt");
        for n in (0..offer.len()).step_by(7) {
            if offer.is_char_boundary(n) {
                let _ = SessionDescription::parse(&offer[..n]);
            }
        }
    }

    #[test]
    fn direction_helpers() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::from_flags(false, true), Direction::RecvOnly);
        assert!(Direction::SendRecv.sends() && Direction::SendRecv.receives());
        assert!(!Direction::Inactive.sends());
        let c = Connection {
            address: "0.0.0.0".into(),
        };
        assert!(c.is_hold());
    }
}
