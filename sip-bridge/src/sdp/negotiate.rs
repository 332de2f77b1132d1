//! Audio offer/answer (RFC 3264): pick a codec both sides have, telephone-event
//! at the same clock rate (RFC 4733 section 7.1.1), directions for hold, and the
//! remote RTP address.

use std::net::{IpAddr, SocketAddr};

use media_core::Millis;
use media_core::codec::{Codec, OpusFmtp};
use media_core::rtp::PayloadType;

use super::{
    Attribute, Connection, Direction, MediaDescription, Origin, RtpMap, SdpParseError,
    SessionDescription,
};

/// Why no usable audio could be agreed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is not valid SDP.
    #[error(transparent)]
    Parse(#[from] SdpParseError),
    /// No (enabled) audio section.
    #[error("no audio stream offered")]
    NoAudio,
    /// Audio offered, but in no codec we support.
    #[error("no common audio codec")]
    NoCommonCodec,
    /// The answer names a payload type we did not offer.
    #[error("answer uses a payload type that was not offered")]
    NotOffered,
}

impl SdpError {
    /// The SIP status for a request whose offer failed (RFC 3261 section 21.4.26:
    /// 488 Not Acceptable Here; a body that is not SDP at all is a 400).
    pub fn sip_status(&self) -> u16 {
        match self {
            SdpError::Parse(_) => 400,
            _ => 488,
        }
    }
}

/// A codec we are willing to use, with its preferred dynamic payload type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioCodecPref {
    /// The codec.
    pub codec: Codec,
    /// The payload type used when we make the offer.
    pub payload_type: PayloadType,
}

/// What we can and want to do with audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioCaps {
    /// Codecs, most preferred first (used in offers; answers keep the offerer's
    /// order among these).
    pub codecs: Vec<AudioCodecPref>,
    /// Offer / accept RFC 4733 telephone-event.
    pub telephone_event: bool,
    /// Packetization we send.
    pub ptime: Millis,
    /// Send and/or receive: `SendOnly` puts the other side on hold.
    pub direction: Direction,
}

impl AudioCaps {
    /// Opus, PCMU, PCMA with telephone-event, 20 ms, send and receive.
    pub fn standard() -> Self {
        let pt = |v| PayloadType::new(v).expect("static value < 128");
        AudioCaps {
            codecs: vec![
                AudioCodecPref {
                    codec: Codec::Opus,
                    payload_type: pt(111),
                },
                AudioCodecPref {
                    codec: Codec::Pcmu,
                    payload_type: pt(0),
                },
                AudioCodecPref {
                    codec: Codec::Pcma,
                    payload_type: pt(8),
                },
            ],
            telephone_event: true,
            ptime: Millis(20),
            direction: Direction::SendRecv,
        }
    }

    fn supports(&self, c: Codec) -> bool {
        self.codecs.iter().any(|p| p.codec == c)
    }
}

/// Our side of the session: where our RTP is, session identity, and extra
/// attributes a transport needs (ICE and DTLS for a WebRTC leg).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalMedia {
    /// Our RTP address as the peer must reach it.
    pub address: IpAddr,
    /// Our RTP port.
    pub port: u16,
    /// `o=` session id (stays the same for the session).
    pub session_id: u64,
    /// `o=` version (incremented per new offer/answer).
    pub session_version: u64,
    /// Transport protocol for our offers (answers mirror the offer's).
    pub protocol: String,
    /// Extra session-level attributes (e.g. `ice-lite`).
    pub session_attributes: Vec<Attribute>,
    /// Extra audio-level attributes (e.g. `ice-ufrag`, `fingerprint`, `setup`).
    pub media_attributes: Vec<Attribute>,
}

impl LocalMedia {
    /// Plain RTP at `address:port`.
    pub fn rtp(address: IpAddr, port: u16, session_id: u64) -> Self {
        LocalMedia {
            address,
            port,
            session_id,
            session_version: 1,
            protocol: "RTP/AVP".into(),
            session_attributes: Vec::new(),
            media_attributes: Vec::new(),
        }
    }
}

/// What was agreed for the audio stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiatedAudio {
    /// The codec.
    pub codec: Codec,
    /// Its payload type (the same both ways: the answer reuses the offer's).
    pub payload_type: PayloadType,
    /// Telephone-event payload type, if both sides have it.
    pub telephone_event: Option<PayloadType>,
    /// What the peer sends (its `ptime`, 20 ms if absent).
    pub remote_ptime: Millis,
    /// For Opus, what the peer's `fmtp` asks of our encoder (RFC 7587 section 6.1).
    pub opus: Option<OpusFmtp>,
    /// Where to send RTP; `None` on hold (`c=0.0.0.0`) or port 0.
    pub remote: Option<SocketAddr>,
    /// Our direction.
    pub direction: Direction,
    /// The audio section's `mid`, if any.
    pub mid: Option<String>,
    /// RTP and RTCP share the port (`a=rtcp-mux`, RFC 5761): agreed when the
    /// offer had it (we answer it), or when our offer and the answer both do.
    pub rtcp_mux: bool,
}

fn codec_of(m: &RtpMap) -> Option<Codec> {
    let name = m.encoding.to_ascii_lowercase();
    match (name.as_str(), m.clock_rate) {
        ("pcmu", 8000) => Some(Codec::Pcmu),
        ("pcma", 8000) => Some(Codec::Pcma),
        ("opus", 48000) if m.channels <= 2 => Some(Codec::Opus),
        _ => None,
    }
}

fn remote_of(sdp: &SessionDescription, m: &MediaDescription) -> Option<SocketAddr> {
    let c = sdp.connection_for(m)?;
    if c.is_hold() || m.port == 0 {
        return None;
    }
    Some(SocketAddr::new(c.ip()?, m.port))
}

/// The peer's direction, reading RFC 2543 hold (`c=0.0.0.0`) as "do not send to me".
fn peer_direction(sdp: &SessionDescription, m: &MediaDescription) -> Direction {
    let session = sdp
        .attributes
        .iter()
        .find_map(|a| Direction::from_attr(&a.name))
        .unwrap_or(Direction::SendRecv);
    let d = m.direction_or(session);
    if sdp.connection_for(m).is_some_and(Connection::is_hold) {
        Direction::from_flags(d.sends(), false)
    } else {
        d
    }
}

fn pt(v: u8) -> PayloadType {
    PayloadType::new(v & 0x7f).unwrap_or(PayloadType::PCMU)
}

fn audio_attributes(
    codec: Codec,
    pt_: u8,
    te: Option<(u8, u32)>,
    caps: &AudioCaps,
    direction: Direction,
) -> Vec<Attribute> {
    let mut a = vec![Attribute::new(
        "rtpmap",
        match codec {
            Codec::Opus => format!("{pt_} opus/48000/2"),
            c => format!("{pt_} {}/8000", c.encoding_name()),
        },
    )];
    if codec == Codec::Opus {
        a.push(Attribute::new(
            "fmtp",
            format!("{pt_} minptime=10;useinbandfec=1"),
        ));
    }
    if let Some((te_pt, rate)) = te {
        a.push(Attribute::new(
            "rtpmap",
            format!("{te_pt} telephone-event/{rate}"),
        ));
        a.push(Attribute::new("fmtp", format!("{te_pt} 0-16")));
    }
    a.push(Attribute::new("ptime", caps.ptime.0.to_string()));
    a.push(Attribute::flag(direction.as_str()));
    a
}

/// For Opus, what `m`'s `fmtp` for `pt` asks of our encoder (RFC 7587 section 6.1;
/// none at all means the defaults).
fn opus_fmtp(codec: Codec, m: &MediaDescription, pt: u8) -> Option<OpusFmtp> {
    (codec == Codec::Opus).then(|| OpusFmtp::parse(m.fmtp(pt).unwrap_or_default()))
}

/// Answers `offer` (RFC 3264 section 6): the first audio section gets the first
/// offered codec we support (the offerer's order), telephone-event at that
/// codec's clock rate if offered, and a direction that reverses the offer's within
/// what we want. Every other section is rejected with port 0, as RFC 3264 section
/// 6 requires. Returns the answer and what was agreed.
pub fn answer_audio(
    offer: &SessionDescription,
    caps: &AudioCaps,
    local: &LocalMedia,
) -> Result<(SessionDescription, NegotiatedAudio), SdpError> {
    let audio_idx = offer
        .media
        .iter()
        .position(|m| m.media == "audio" && m.port != 0)
        .ok_or(SdpError::NoAudio)?;
    let audio = &offer.media[audio_idx];
    let maps = audio.rtpmaps();
    let chosen = audio
        .formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .find_map(|p| {
            maps.iter().find(|m| m.payload_type == p).and_then(|m| {
                codec_of(m)
                    .filter(|c| caps.supports(*c))
                    .map(|c| (c, m.clone()))
            })
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let (codec, map) = chosen;
    let te = caps
        .telephone_event
        .then(|| {
            let event_at = |rate: u32| {
                maps.iter().find(|m| {
                    m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == rate
                })
            };
            // RFC 4733 2.1: at the codec's rate (SHOULD); phones pair Opus with
            // telephone-event/8000 only (baresip), which we take rather than
            // lose their digits.
            event_at(map.clock_rate)
                .or_else(|| event_at(8000))
                .map(|m| (m.payload_type, m.clock_rate))
        })
        .flatten();
    let theirs = peer_direction(offer, audio);
    let ours = Direction::from_flags(
        caps.direction.sends() && theirs.receives(),
        caps.direction.receives() && theirs.sends(),
    );

    let mut media = Vec::with_capacity(offer.media.len());
    let mut accepted_mids = Vec::new();
    for (i, m) in offer.media.iter().enumerate() {
        if i == audio_idx {
            let mut formats = vec![map.payload_type.to_string()];
            if let Some((te_pt, _)) = te {
                formats.push(te_pt.to_string());
            }
            let mut attributes = Vec::new();
            if let Some(mid) = m.mid() {
                attributes.push(Attribute::new("mid", mid));
                accepted_mids.push(mid.to_string());
            }
            attributes.extend(audio_attributes(codec, map.payload_type, te, caps, ours));
            if m.has("rtcp-mux") {
                attributes.push(Attribute::flag("rtcp-mux"));
            }
            attributes.extend(local.media_attributes.iter().cloned());
            media.push(MediaDescription {
                media: "audio".into(),
                port: local.port,
                protocol: m.protocol.clone(),
                formats,
                connection: None,
                attributes,
            });
        } else {
            media.push(MediaDescription {
                media: m.media.clone(),
                port: 0,
                protocol: m.protocol.clone(),
                formats: m.formats.clone(),
                connection: None,
                attributes: m
                    .mid()
                    .map(|mid| vec![Attribute::new("mid", mid)])
                    .unwrap_or_default(),
            });
        }
    }
    let mut attributes = local.session_attributes.clone();
    if offer
        .attributes
        .iter()
        .any(|a| a.name == "group" && a.value.as_deref().is_some_and(|v| v.starts_with("BUNDLE")))
        && !accepted_mids.is_empty()
    {
        attributes.insert(
            0,
            Attribute::new("group", format!("BUNDLE {}", accepted_mids.join(" "))),
        );
    }
    let answer = SessionDescription {
        origin: Origin {
            username: "-".into(),
            session_id: local.session_id.to_string(),
            session_version: local.session_version,
            address: local.address.to_string(),
        },
        session_name: "-".into(),
        connection: Some(Connection {
            address: local.address.to_string(),
        }),
        timing: (0, 0),
        attributes,
        media,
    };
    let agreed = NegotiatedAudio {
        codec,
        opus: opus_fmtp(codec, audio, map.payload_type),
        payload_type: pt(map.payload_type),
        telephone_event: te.map(|(p, _)| pt(p)),
        remote_ptime: Millis(
            audio
                .ptime()
                .filter(|p| (10..=120).contains(p))
                .unwrap_or(20),
        ),
        remote: remote_of(offer, audio),
        direction: ours,
        mid: audio.mid().map(String::from),
        rtcp_mux: audio.has("rtcp-mux"),
    };
    Ok((answer, agreed))
}

/// Our offer: every codec we have, telephone-event at 8 kHz (and at 48 kHz when
/// Opus is offered), our direction.
pub fn create_offer(caps: &AudioCaps, local: &LocalMedia) -> SessionDescription {
    let mut formats: Vec<String> = caps
        .codecs
        .iter()
        .map(|c| c.payload_type.value().to_string())
        .collect();
    let mut attributes = Vec::new();
    for c in &caps.codecs {
        let p = c.payload_type.value();
        match c.codec {
            Codec::Opus => {
                attributes.push(Attribute::new("rtpmap", format!("{p} opus/48000/2")));
                attributes.push(Attribute::new(
                    "fmtp",
                    format!("{p} minptime=10;useinbandfec=1"),
                ));
            }
            other => attributes.push(Attribute::new(
                "rtpmap",
                format!("{p} {}/8000", other.encoding_name()),
            )),
        }
    }
    if caps.telephone_event {
        formats.push("101".into());
        attributes.push(Attribute::new("rtpmap", "101 telephone-event/8000"));
        attributes.push(Attribute::new("fmtp", "101 0-16"));
        if caps.supports(Codec::Opus) {
            formats.push("110".into());
            attributes.push(Attribute::new("rtpmap", "110 telephone-event/48000"));
            attributes.push(Attribute::new("fmtp", "110 0-16"));
        }
    }
    attributes.push(Attribute::new("ptime", caps.ptime.0.to_string()));
    attributes.push(Attribute::flag(caps.direction.as_str()));
    attributes.extend(local.media_attributes.iter().cloned());
    SessionDescription {
        origin: Origin {
            username: "-".into(),
            session_id: local.session_id.to_string(),
            session_version: local.session_version,
            address: local.address.to_string(),
        },
        session_name: "-".into(),
        connection: Some(Connection {
            address: local.address.to_string(),
        }),
        timing: (0, 0),
        attributes: local.session_attributes.clone(),
        media: vec![MediaDescription {
            media: "audio".into(),
            port: local.port,
            protocol: local.protocol.clone(),
            formats,
            connection: None,
            attributes,
        }],
    }
}

/// What an answer to our `offer` agreed (RFC 3264 section 7): its first audio
/// format must be one we offered.
pub fn negotiated_from_answer(
    offer: &SessionDescription,
    answer: &SessionDescription,
) -> Result<NegotiatedAudio, SdpError> {
    let theirs = answer
        .media
        .iter()
        .find(|m| m.media == "audio" && m.port != 0)
        .ok_or(SdpError::NoAudio)?;
    let ours = offer.audio().ok_or(SdpError::NoAudio)?;
    let offered = ours.rtpmaps();
    let answered = theirs.rtpmaps();
    let lookup = |p: u8| {
        answered
            .iter()
            .find(|m| m.payload_type == p)
            .or_else(|| offered.iter().find(|m| m.payload_type == p))
    };
    let mut codec = None;
    for f in theirs.formats.iter().filter_map(|f| f.parse::<u8>().ok()) {
        if !ours.formats.iter().any(|o| o.parse::<u8>().ok() == Some(f)) {
            return Err(SdpError::NotOffered);
        }
        if let Some(c) = lookup(f).and_then(codec_of) {
            codec = Some((c, f, lookup(f).map_or(8000, |m| m.clock_rate)));
            break;
        }
    }
    let (codec, p, rate) = codec.ok_or(SdpError::NoCommonCodec)?;
    let event_at = |want: u32| {
        theirs
            .formats
            .iter()
            .filter_map(|f| f.parse::<u8>().ok())
            .find(|&f| {
                lookup(f).is_some_and(|m| {
                    m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == want
                })
            })
    };
    // At the codec's rate, else at 8 kHz (as in `answer_audio`).
    let te = event_at(rate).or_else(|| event_at(8000));
    let their_dir = peer_direction(answer, theirs);
    let our_wish = ours.direction_or(Direction::SendRecv);
    Ok(NegotiatedAudio {
        codec,
        // The answer's fmtp is the answerer's: how it wants to receive.
        opus: opus_fmtp(codec, theirs, p),
        payload_type: pt(p),
        telephone_event: te.map(pt),
        remote_ptime: Millis(
            theirs
                .ptime()
                .filter(|p| (10..=120).contains(p))
                .unwrap_or(20),
        ),
        remote: remote_of(answer, theirs),
        direction: Direction::from_flags(
            our_wish.sends() && their_dir.receives(),
            our_wish.receives() && their_dir.sends(),
        ),
        mid: theirs.mid().map(String::from),
        rtcp_mux: ours.has("rtcp-mux") && theirs.has("rtcp-mux"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::browser_offer;
    use super::*;

    fn local() -> LocalMedia {
        LocalMedia::rtp("198.51.100.7".parse().unwrap(), 30000, 42)
    }

    fn sdp(body: &str) -> SessionDescription {
        SessionDescription::parse(body).unwrap()
    }

    const CARRIER: &str = "v=0\r\no=carrier 1 1 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\nt=0 0\r\n\
        m=audio 40000 RTP/AVP 18 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:30\r\n";

    #[test]
    fn answers_a_carrier_offer_in_its_order() {
        let (answer, agreed) =
            answer_audio(&sdp(CARRIER), &AudioCaps::standard(), &local()).unwrap();
        // G.729 is not ours; PCMA is the offerer's next choice.
        assert_eq!(agreed.codec, Codec::Pcma);
        assert_eq!(agreed.payload_type.value(), 8);
        assert_eq!(agreed.telephone_event.map(|p| p.value()), Some(101));
        assert_eq!(agreed.remote, Some("203.0.113.5:40000".parse().unwrap()));
        assert_eq!(agreed.remote_ptime, Millis(30));
        assert_eq!(agreed.direction, Direction::SendRecv);
        let a = answer.audio().unwrap();
        assert_eq!(a.formats, vec!["8", "101"]);
        assert_eq!(a.port, 30000);
        assert_eq!(a.protocol, "RTP/AVP");
        // The answer is valid SDP that the offerer can read back.
        let back = negotiated_from_answer(&sdp(CARRIER), &sdp(&answer.to_string())).unwrap();
        assert_eq!((back.codec, back.payload_type.value()), (Codec::Pcma, 8));
    }

    #[test]
    fn no_common_codec_is_488_and_garbage_400() {
        let g729 = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n";
        let e = answer_audio(&sdp(g729), &AudioCaps::standard(), &local()).unwrap_err();
        assert_eq!((e.clone(), e.sip_status()), (SdpError::NoCommonCodec, 488));
        let video = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=video 4000 RTP/AVP 96\r\n";
        assert_eq!(
            answer_audio(&sdp(video), &AudioCaps::standard(), &local())
                .unwrap_err()
                .sip_status(),
            488
        );
        let e = SdpError::from(SessionDescription::parse("nope").unwrap_err());
        assert_eq!(e.sip_status(), 400);
    }

    #[test]
    fn hold_directions_follow_rfc_3264() {
        // (offer direction, what we want, expected answer direction)
        let cases = [
            ("sendonly", Direction::SendRecv, Direction::RecvOnly),
            ("recvonly", Direction::SendRecv, Direction::SendOnly),
            ("inactive", Direction::SendRecv, Direction::Inactive),
            ("sendrecv", Direction::SendRecv, Direction::SendRecv),
            ("sendrecv", Direction::SendOnly, Direction::SendOnly),
            ("sendonly", Direction::SendOnly, Direction::Inactive),
        ];
        for (offer_dir, want, expect) in cases {
            let body = format!("{CARRIER}a={offer_dir}\r\n");
            let mut caps = AudioCaps::standard();
            caps.direction = want;
            let (answer, agreed) = answer_audio(&sdp(&body), &caps, &local()).unwrap();
            assert_eq!(agreed.direction, expect, "{offer_dir} / {want:?}");
            assert_eq!(
                answer.audio().unwrap().direction_or(Direction::SendRecv),
                expect
            );
        }
        // RFC 2543 hold: c=0.0.0.0 means "do not send to me".
        let old_hold = CARRIER.replace("c=IN IP4 203.0.113.5", "c=IN IP4 0.0.0.0");
        let (_, agreed) = answer_audio(&sdp(&old_hold), &AudioCaps::standard(), &local()).unwrap();
        assert_eq!(agreed.remote, None);
        assert_eq!(agreed.direction, Direction::RecvOnly);
    }

    #[test]
    fn answers_the_audio_of_real_browser_offers() {
        for file in [
            "exwebrtc_chromium_audio_video_sdp.txt",
            "exwebrtc_firefox_audio_video_sdp.txt",
        ] {
            let offer = sdp(&browser_offer(file));
            let mut l = local();
            l.session_attributes = vec![Attribute::flag("ice-lite")];
            l.media_attributes = vec![
                Attribute::new("ice-ufrag", "abcd"),
                Attribute::new("ice-pwd", "0123456789abcdef01234567"),
                Attribute::new("fingerprint", "sha-256 00:11"),
                Attribute::new("setup", "passive"),
            ];
            let (answer, agreed) = answer_audio(&offer, &AudioCaps::standard(), &l).unwrap();
            assert_eq!(agreed.codec, Codec::Opus, "{file}");
            // Both browsers ask for in-band FEC.
            assert!(agreed.opus.is_some_and(|f| f.useinbandfec), "{file}");
            // telephone-event at 48 kHz when offered (Chromium), else at 8 kHz
            // (Firefox offers only that).
            let maps = offer.audio().unwrap().rtpmaps();
            let te_at = |rate: u32| {
                maps.iter()
                    .find(|m| m.encoding == "telephone-event" && m.clock_rate == rate)
                    .map(|m| m.payload_type)
            };
            let want = te_at(48000).or_else(|| te_at(8000));
            assert!(want.is_some(), "{file}");
            assert_eq!(agreed.telephone_event.map(|p| p.value()), want, "{file}");
            let text = answer.to_string();
            let again = sdp(&text);
            // Same number of m-lines, in order; video rejected with port 0.
            assert_eq!(again.media.len(), offer.media.len());
            assert!(
                again
                    .media
                    .iter()
                    .filter(|m| m.media == "video")
                    .all(|m| m.port == 0)
            );
            let a = again.audio().unwrap();
            assert_eq!(a.protocol, "UDP/TLS/RTP/SAVPF");
            assert_eq!(a.mid(), offer.audio().unwrap().mid());
            assert!(
                a.has("rtcp-mux")
                    && a.attribute("ice-ufrag") == Some("abcd")
                    && a.attribute("setup") == Some("passive")
            );
            assert!(
                text.contains(&format!("a=group:BUNDLE {}\r\n", a.mid().unwrap())),
                "{text}"
            );
        }
    }

    #[test]
    fn opus_with_telephone_events_at_8_khz_keeps_its_digits() {
        // baresip 1.0: Opus at 48 kHz, telephone-event at 8 kHz only.
        let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
            m=audio 40014 RTP/AVP 96 101\r\na=rtpmap:96 opus/48000/2\r\n\
            a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";
        let (answer, agreed) = answer_audio(&sdp(offer), &AudioCaps::standard(), &local()).unwrap();
        assert_eq!(agreed.codec, Codec::Opus);
        assert_eq!(agreed.telephone_event.map(|p| p.value()), Some(101));
        let text = answer.to_string();
        assert!(
            text.contains("RTP/AVP 96 101\r\n")
                && text.contains("a=rtpmap:101 telephone-event/8000"),
            "{text}"
        );
        // And in an answer to our offer: Opus with telephone-event/8000 (101).
        let ours = create_offer(&AudioCaps::standard(), &local());
        let theirs = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
            m=audio 5004 RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
        let agreed = negotiated_from_answer(&ours, &sdp(theirs)).unwrap();
        assert_eq!(
            (agreed.codec, agreed.telephone_event.map(|p| p.value())),
            (Codec::Opus, Some(101))
        );
    }

    #[test]
    fn our_offer_and_their_answer() {
        let offer = create_offer(&AudioCaps::standard(), &local());
        let text = offer.to_string();
        assert!(
            text.contains("m=audio 30000 RTP/AVP 111 0 8 101 110\r\n"),
            "{text}"
        );
        let answer = "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
            m=audio 5004 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n";
        let agreed = negotiated_from_answer(&offer, &sdp(answer)).unwrap();
        assert_eq!(agreed.codec, Codec::Pcmu);
        assert_eq!(agreed.telephone_event.map(|p| p.value()), Some(101));
        assert_eq!(agreed.direction, Direction::RecvOnly); // they hold us
        assert_eq!(agreed.opus, None, "not Opus");
        let bogus = answer.replace("RTP/AVP 0 101", "RTP/AVP 96");
        assert_eq!(
            negotiated_from_answer(&offer, &sdp(&bogus)),
            Err(SdpError::NotOffered)
        );
    }

    #[test]
    fn the_peers_opus_fmtp_is_what_our_encoder_honours() {
        // RFC 7587 section 6.1: fmtp says how the peer wants to receive.
        let offer = |fmtp: &str| {
            sdp(&format!(
                "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
                 m=audio 5004 RTP/AVP 96 0\r\na=rtpmap:96 opus/48000/2\r\n{fmtp}"
            ))
        };
        let caps = AudioCaps::standard();
        let (_, bare) = answer_audio(&offer(""), &caps, &local()).unwrap();
        assert_eq!(bare.codec, Codec::Opus);
        assert_eq!(bare.opus, Some(OpusFmtp::default()), "no fmtp: no FEC");
        let (_, fec) = answer_audio(
            &offer("a=fmtp:96 useinbandfec=1;maxaveragebitrate=24000\r\n"),
            &caps,
            &local(),
        )
        .unwrap();
        let f = fec.opus.unwrap();
        assert!(f.useinbandfec && f.maxaveragebitrate == Some(24_000));
        // Another payload type's fmtp is not Opus's.
        let (_, other) =
            answer_audio(&offer("a=fmtp:0 useinbandfec=1\r\n"), &caps, &local()).unwrap();
        assert_eq!(other.opus, Some(OpusFmtp::default()));

        // Our offer, their answer: the answer's fmtp.
        let ours = create_offer(&caps, &local());
        let answer = |fmtp: &str| {
            sdp(&format!(
                "v=0\r\no=- 5 5 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n\
                 m=audio 5004 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n{fmtp}"
            ))
        };
        let plain = negotiated_from_answer(&ours, &answer("")).unwrap();
        assert_eq!(plain.opus, Some(OpusFmtp::default()));
        let dtx = negotiated_from_answer(&ours, &answer("a=fmtp:111 usedtx=1\r\n")).unwrap();
        assert!(dtx.opus.unwrap().usedtx);
    }
}
