//! SIPREC as the session recording client (SRC, RFC 7866), sans-IO: what
//! goes to an external recording server (SRS) in the INVITE's body and what
//! its answer agreed. The call (`call/siprec.rs`) owns the dialog; this file
//! owns the wire:
//!
//! * the offer: one `m=audio` per label, `a=sendonly`, `a=label:1` (always
//!   the customer) and `a=label:2` (what the customer hears), RFC 7866
//!   section 8.1.1;
//! * the recording metadata (RFC 7865, `application/rs-metadata+xml`,
//!   `datamode` complete): the communication session, its participants with
//!   their join and leave times, the two streams, and which participant sends
//!   and receives which stream, so a recorder never attributes one side's
//!   words to the other;
//! * the `multipart/mixed` body that carries both (RFC 7866 section 8.1.1,
//!   `Content-Disposition: recording-session`);
//! * reading the SRS's answer, one stream per label.
//!
//! Identifiers (session, participants, streams) are base64 of 16 bytes
//! derived from the call and the party, so every snapshot of one recording
//! session names them the same (RFC 7865 section 6.1: ids stay for the
//! session's life).

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine;
use media_core::codec::Codec;
use media_core::rtp::PayloadType;

use crate::sdp::{
    self, Attribute, AudioCaps, AudioCodecPref, Direction, LocalMedia, NegotiatedAudio,
    SessionDescription,
};
use crate::time::rfc3339_ms;

/// The option tag of a recording session's INVITE (`Require: siprec`).
pub const OPTION_TAG: &str = "siprec";
/// The Contact feature tag that says we are a recording client.
pub const SRC_FEATURE: &str = ";+sip.src";
/// The metadata's Content-Type.
pub const METADATA_TYPE: &str = "application/rs-metadata+xml";
/// What separates the body's parts (never in SDP or our XML: it has `=`
/// and no XML character data can hold `--sbc=`).
const BOUNDARY: &str = "sbc=siprec=part";
/// The recording namespace (RFC 7865 section 8).
const NS: &str = "urn:ietf:params:xml:ns:recording:1";

/// Which stream a participant's voice is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Label {
    /// Label 1: the customer.
    Customer,
    /// Label 2: everyone the customer hears.
    Others,
}

impl Label {
    /// Both, in label order.
    pub const ALL: [Label; 2] = [Label::Customer, Label::Others];

    /// The SDP `a=label` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Customer => "1",
            Label::Others => "2",
        }
    }

    fn index(self) -> usize {
        match self {
            Label::Customer => 0,
            Label::Others => 1,
        }
    }

    fn other(self) -> Label {
        match self {
            Label::Customer => Label::Others,
            Label::Others => Label::Customer,
        }
    }
}

/// One participant of the recorded session, as the metadata shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// Its number in the call (stable: the party's leg key).
    pub party: u32,
    /// Its address of record (a SIP URI).
    pub aor: String,
    /// Display name, if known.
    pub name: Option<String>,
    /// `customer`, `agent`, `supervisor`...
    pub role: String,
    /// The stream its voice is in; `None`: it only listens (a supervisor).
    pub sends: Option<Label>,
    /// Unix milliseconds it joined.
    pub joined_ms: u64,
    /// Unix milliseconds it left, once it did.
    pub left_ms: Option<u64>,
}

/// A complete metadata snapshot (RFC 7865 section 6, `datamode` complete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The recorded call (ids derive from it).
    pub call: u64,
    /// Its wire name (`call-...`), as extension data.
    pub call_name: String,
    /// Unix milliseconds the recording session started.
    pub start_ms: u64,
    /// Everyone so far, in order of arrival.
    pub participants: Vec<Participant>,
}

impl Metadata {
    fn id(&self, kind: u8, n: u32) -> String {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.call.to_be_bytes());
        b[8] = kind;
        b[12..].copy_from_slice(&n.to_be_bytes());
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// The session's id.
    pub fn session_id(&self) -> String {
        self.id(b'S', 0)
    }

    /// A participant's id.
    pub fn participant_id(&self, party: u32) -> String {
        self.id(b'P', party)
    }

    /// A stream's id.
    pub fn stream_id(&self, label: Label) -> String {
        self.id(b'T', label.index() as u32 + 1)
    }

    /// The XML document (RFC 7865 section 8). A participant who left keeps
    /// its association with its leave time and no stream.
    pub fn to_xml(&self) -> String {
        let session = self.session_id();
        let mut x = String::with_capacity(1024 + 512 * self.participants.len());
        let _ = write!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
             <recording xmlns=\"{NS}\">\r\n\
             <datamode>complete</datamode>\r\n\
             <session session_id=\"{session}\">\r\n\
             <start-time>{}</start-time>\r\n\
             <sbc:call-id xmlns:sbc=\"urn:x-sbc:recording\">{}</sbc:call-id>\r\n\
             </session>\r\n",
            rfc3339_ms(self.start_ms),
            escape(&self.call_name)
        );
        for p in &self.participants {
            let _ = write!(
                x,
                "<participant participant_id=\"{}\">\r\n<nameID aor=\"{}\">",
                self.participant_id(p.party),
                escape(&p.aor)
            );
            if let Some(n) = &p.name {
                let _ = write!(x, "<name>{}</name>", escape(n));
            }
            let _ = write!(
                x,
                "</nameID>\r\n<sbc:role xmlns:sbc=\"urn:x-sbc:recording\">{}</sbc:role>\r\n\
                 </participant>\r\n",
                escape(&p.role)
            );
        }
        for p in &self.participants {
            let _ = write!(
                x,
                "<participantsessionassoc participant_id=\"{}\" session_id=\"{session}\">\r\n\
                 <associate-time>{}</associate-time>\r\n",
                self.participant_id(p.party),
                rfc3339_ms(p.joined_ms)
            );
            if let Some(left) = p.left_ms {
                let _ = write!(
                    x,
                    "<disassociate-time>{}</disassociate-time>\r\n",
                    rfc3339_ms(left)
                );
            }
            x.push_str("</participantsessionassoc>\r\n");
        }
        for l in Label::ALL {
            let _ = write!(
                x,
                "<stream stream_id=\"{}\" session_id=\"{session}\">\r\n\
                 <label>{}</label>\r\n</stream>\r\n",
                self.stream_id(l),
                l.as_str()
            );
        }
        for p in self.participants.iter().filter(|p| p.left_ms.is_none()) {
            let _ = write!(
                x,
                "<participantstreamassoc participant_id=\"{}\">\r\n",
                self.participant_id(p.party)
            );
            // What it says is its label's stream; what it hears, the other
            // label's (a listener hears the customer).
            if let Some(l) = p.sends {
                let _ = write!(x, "<send>{}</send>\r\n", self.stream_id(l));
            }
            let hears = p.sends.map_or(Label::Customer, Label::other);
            let _ = write!(
                x,
                "<recv>{}</recv>\r\n</participantstreamassoc>\r\n",
                self.stream_id(hears)
            );
        }
        x.push_str("</recording>\r\n");
        x
    }
}

/// XML character data and attribute values (RFC 7865's strings come from
/// callers: From headers, display names).
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => o.push(c),
        }
    }
    o
}

/// The offer: one `sendonly` audio stream per label on `ports`, offering
/// `codecs` (G.711 when empty).
pub fn offer(
    address: IpAddr,
    ports: [u16; 2],
    session_id: u64,
    codecs: &[Codec],
) -> SessionDescription {
    let codecs: Vec<Codec> = if codecs.is_empty() {
        vec![Codec::Pcmu, Codec::Pcma]
    } else {
        codecs.to_vec()
    };
    let caps = AudioCaps {
        codecs: codecs
            .iter()
            .filter_map(|&c| {
                let pt = match c {
                    Codec::Pcmu => 0,
                    Codec::Pcma => 8,
                    Codec::Opus => 111,
                };
                Some(AudioCodecPref {
                    codec: c,
                    payload_type: PayloadType::new(pt)?,
                })
            })
            .collect(),
        // RFC 7866 section 8.1.1: recorded streams only go to the SRS.
        direction: Direction::SendOnly,
        telephone_event: false,
        ..AudioCaps::standard()
    };
    let mut out: Option<SessionDescription> = None;
    for (l, port) in Label::ALL.into_iter().zip(ports) {
        let mut local = LocalMedia::rtp(address, port, session_id);
        local.media_attributes = vec![Attribute::new("label", l.as_str())];
        let one = sdp::create_offer(&caps, &local);
        match &mut out {
            None => out = Some(one),
            Some(o) => o.media.extend(one.media),
        }
    }
    out.unwrap_or_else(|| sdp::create_offer(&caps, &LocalMedia::rtp(address, 0, session_id)))
}

/// The INVITE's body: the offer and the metadata, and its Content-Type.
pub fn body(offer: &str, metadata: &str) -> (String, String) {
    let body = format!(
        "--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{offer}\r\n\
         --{BOUNDARY}\r\nContent-Type: {METADATA_TYPE}\r\nContent-Disposition: recording-session\r\n\r\n\
         {metadata}\r\n--{BOUNDARY}--\r\n"
    );
    (format!("multipart/mixed;boundary=\"{BOUNDARY}\""), body)
}

/// Why the SRS's answer is no use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SiprecError {
    /// No SDP in the body.
    #[error("the answer has no SDP")]
    NoSdp,
    /// The SDP does not parse.
    #[error("the answer's SDP does not parse")]
    BadSdp,
    /// A label's stream has no usable codec or address.
    #[error("label {0}: {1}")]
    Stream(&'static str, sdp::SdpError),
}

/// The SDP in a body: the body itself, or its `application/sdp` part when
/// it is multipart (an SRS may answer with metadata too).
pub fn sdp_part(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    let trimmed = text.trim_start();
    if trimmed.starts_with("v=") {
        return Some(trimmed);
    }
    // Parts start after a `--boundary` line; ours is the one whose headers
    // say application/sdp (RFC 2046 section 5.1.1).
    let first = trimmed.lines().next()?.trim_end();
    let boundary = first.strip_prefix("--")?;
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, content)) = part
            .split_once("\r\n\r\n")
            .or_else(|| part.split_once("\n\n"))
        else {
            continue;
        };
        if head.to_ascii_lowercase().contains("application/sdp") {
            return Some(content.trim_end_matches(['\r', '\n']));
        }
    }
    None
}

/// What the SRS's `answer` agreed for each label of our `offer` (streams
/// matched by `a=label`, else by position). A stream the SRS rejected (port
/// 0) has no `remote`.
pub fn answered(
    offer: &SessionDescription,
    answer: &[u8],
) -> Result<[NegotiatedAudio; 2], SiprecError> {
    let text = sdp_part(answer).ok_or(SiprecError::NoSdp)?;
    let answer = SessionDescription::parse(text).map_err(|_| SiprecError::BadSdp)?;
    let pick = |l: Label| -> Result<NegotiatedAudio, SiprecError> {
        let i = l.index();
        let theirs = answer
            .media
            .iter()
            .find(|m| m.attribute("label") == Some(l.as_str()))
            .or_else(|| answer.media.get(i))
            .ok_or(SiprecError::Stream(l.as_str(), sdp::SdpError::NoAudio))?;
        let ours = offer
            .media
            .get(i)
            .ok_or(SiprecError::Stream(l.as_str(), sdp::SdpError::NoAudio))?;
        // One stream each: the negotiation of a single audio section.
        let single = |sd: &SessionDescription, m: &sdp::MediaDescription| {
            let mut s = sd.clone();
            s.media = vec![m.clone()];
            s
        };
        let mut theirs = theirs.clone();
        if theirs.port == 0 {
            // Rejected: nothing goes there, yet the codec must read.
            theirs.port = 9;
            theirs.connection = Some(sdp::Connection {
                address: "0.0.0.0".into(),
            });
        }
        sdp::negotiated_from_answer(&single(offer, ours), &single(&answer, &theirs))
            .map_err(|e| SiprecError::Stream(l.as_str(), e))
    };
    Ok([pick(Label::Customer)?, pick(Label::Others)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata {
            call: 0x0123_4567_89ab_cdef,
            call_name: "call-0123456789abcdef".into(),
            start_ms: 1_795_230_057_042,
            participants: vec![
                Participant {
                    party: 0,
                    aor: "sip:+15550111@sbc.example".into(),
                    name: Some("Ann <& co>".into()),
                    role: "customer".into(),
                    sends: Some(Label::Customer),
                    joined_ms: 1_795_230_057_042,
                    left_ms: None,
                },
                Participant {
                    party: 1,
                    aor: "sip:alice@sbc.example".into(),
                    name: None,
                    role: "agent".into(),
                    sends: Some(Label::Others),
                    joined_ms: 1_795_230_060_000,
                    left_ms: Some(1_795_230_070_000),
                },
                Participant {
                    party: 3,
                    aor: "sip:bob@sbc.example".into(),
                    name: None,
                    role: "agent".into(),
                    sends: Some(Label::Others),
                    joined_ms: 1_795_230_070_000,
                    left_ms: None,
                },
            ],
        }
    }

    #[test]
    fn offer_has_one_sendonly_stream_per_label() {
        let o = offer("192.0.2.1".parse().unwrap(), [30000, 30002], 7, &[]);
        let text = o.to_string();
        let again = SessionDescription::parse(&text).unwrap();
        assert_eq!(again.media.len(), 2);
        for (m, (label, port)) in again.media.iter().zip([("1", 30000), ("2", 30002)]) {
            assert_eq!(m.attribute("label"), Some(label));
            assert_eq!(m.port, port);
            assert!(m.has("sendonly"), "{text}");
            assert_eq!(m.formats, ["0", "8"]);
            assert!(!text.contains("telephone-event"));
        }
    }

    #[test]
    fn metadata_maps_each_participant_to_its_label_and_keeps_ids() {
        let m = meta();
        let x = m.to_xml();
        // Escaped, and one stream association per present participant.
        assert!(x.contains("<name>Ann &lt;&amp; co&gt;</name>"), "{x}");
        assert_eq!(x.matches("<participantstreamassoc ").count(), 2);
        let customer = m.participant_id(0);
        let s1 = m.stream_id(Label::Customer);
        let s2 = m.stream_id(Label::Others);
        assert_ne!(s1, s2);
        let assoc = |pid: &str| {
            let start = x
                .find(&format!(
                    "<participantstreamassoc participant_id=\"{pid}\">"
                ))
                .unwrap();
            let end = start + x[start..].find("</participantstreamassoc>").unwrap();
            x[start..end].to_string()
        };
        let c = assoc(&customer);
        assert!(
            c.contains(&format!("<send>{s1}</send>")) && c.contains(&format!("<recv>{s2}</recv>"))
        );
        let b = assoc(&m.participant_id(3));
        assert!(
            b.contains(&format!("<send>{s2}</send>")) && b.contains(&format!("<recv>{s1}</recv>"))
        );
        // Who left keeps its session association with the leave time.
        assert!(!x.contains(&format!(
            "<participantstreamassoc participant_id=\"{}\"",
            m.participant_id(1)
        )));
        assert!(x.contains("<disassociate-time>2026-11-21T03:01:10.000Z</disassociate-time>"));
        // Ids are base64 of 16 bytes, the same in every snapshot.
        let raw = base64::engine::general_purpose::STANDARD
            .decode(m.session_id())
            .unwrap();
        assert_eq!(raw.len(), 16);
        assert_eq!(meta().to_xml(), x);
        assert!(x.contains("<start-time>2026-11-21T03:00:57.042Z</start-time>"));
    }

    #[test]
    fn body_is_multipart_and_its_sdp_part_reads_back() {
        let o = offer("192.0.2.1".parse().unwrap(), [30000, 30002], 7, &[]).to_string();
        let (ct, b) = body(&o, &meta().to_xml());
        assert!(ct.starts_with("multipart/mixed;boundary="));
        assert!(b.contains("Content-Disposition: recording-session"));
        assert!(b.ends_with(&format!("--{BOUNDARY}--\r\n")));
        assert_eq!(sdp_part(b.as_bytes()).unwrap().trim_end(), o.trim_end());
        assert_eq!(sdp_part(o.as_bytes()), Some(o.as_str()));
        assert_eq!(
            sdp_part(b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--"),
            None
        );
        assert_eq!(sdp_part(&[0xff, 0xfe]), None);
    }

    #[test]
    fn answer_is_read_per_label() {
        let o = offer("192.0.2.1".parse().unwrap(), [30000, 30002], 7, &[]);
        // Label 2 first: matched by label, not position.
        let a = "v=0\r\no=srs 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
                 m=audio 40002 RTP/AVP 8\r\na=label:2\r\na=recvonly\r\n\
                 m=audio 40000 RTP/AVP 0\r\na=label:1\r\na=recvonly\r\n";
        let [one, two] = answered(&o, a.as_bytes()).unwrap();
        assert_eq!(
            (one.codec, one.remote.unwrap().port()),
            (Codec::Pcmu, 40000)
        );
        assert_eq!(
            (two.codec, two.remote.unwrap().port()),
            (Codec::Pcma, 40002)
        );
        assert_eq!(one.direction, Direction::SendOnly);
        // A rejected stream has nowhere to go; one we never offered fails.
        let a2 = a.replace("m=audio 40002", "m=audio 0");
        assert_eq!(answered(&o, a2.as_bytes()).unwrap()[1].remote, None);
        let bad = a.replace("RTP/AVP 8", "RTP/AVP 18");
        assert!(matches!(
            answered(&o, bad.as_bytes()),
            Err(SiprecError::Stream("2", _))
        ));
        assert_eq!(answered(&o, b"junk"), Err(SiprecError::NoSdp));
        assert_eq!(answered(&o, b"v=0\r\nm=x"), Err(SiprecError::BadSdp));
    }
}
