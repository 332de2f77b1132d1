//! What the leg needs from a browser offer before str0m sees it, and the one edit
//! its answer needs after.

use media_core::codec::OpusFmtp;

use crate::sdp::SessionDescription;

use super::WebRtcError;

/// The payload types the answer settled on; outbound packets must use them.
///
/// Browsers pick the numbers (the answer keeps the offer's, [RFC 3264 section
/// 6.1]): Chromium uses 111 for Opus, Firefox 109.
///
/// [RFC 3264 section 6.1]: https://www.rfc-editor.org/rfc/rfc3264#section-6.1
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadTypes {
    /// opus/48000/2 ([RFC 7587 section 7]).
    ///
    /// [RFC 7587 section 7]: https://www.rfc-editor.org/rfc/rfc7587#section-7
    pub opus: u8,
    /// telephone-event/48000, on Opus's clock (Chromium offers it).
    pub telephone_event_48k: Option<u8>,
    /// telephone-event/8000 (Firefox offers only this one).
    pub telephone_event_8k: Option<u8>,
}

impl PayloadTypes {
    /// Whether `pt` is one of them.
    pub fn contains(&self, pt: u8) -> bool {
        pt == self.opus
            || self.telephone_event_48k == Some(pt)
            || self.telephone_event_8k == Some(pt)
    }

    /// Whether `pt` carries RFC 4733 events.
    pub fn is_telephone_event(&self, pt: u8) -> bool {
        self.telephone_event_48k == Some(pt) || self.telephone_event_8k == Some(pt)
    }
}

/// What we check in an offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OfferInfo {
    /// The first audio section that is not rejected: the one carrying media.
    pub(crate) audio_mid: String,
    /// Data-channel sections to reject in the answer (str0m would accept them).
    pub(crate) application_mids: Vec<String>,
    /// The browser's `a=ice-ufrag`: the second half of every check's USERNAME.
    pub(crate) remote_ufrag: String,
    /// Each opus/48000 payload type offered, with what its `fmtp` asks of our
    /// encoder (Chromium: `useinbandfec=1`).
    pub(crate) opus_fmtp: Vec<(u8, OpusFmtp)>,
}

/// Checks the offer has an audio section with Opus at 48 kHz.
pub(crate) fn inspect(offer: &str) -> Result<OfferInfo, WebRtcError> {
    let sdp = SessionDescription::parse(offer).map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
    let audio = sdp
        .media
        .iter()
        .find(|m| m.media == "audio" && m.port != 0)
        .ok_or(WebRtcError::NoAudio)?;
    let audio_mid = audio
        .mid()
        .ok_or_else(|| WebRtcError::BadOffer("audio section without a=mid".into()))?;
    let opus_fmtp: Vec<(u8, OpusFmtp)> = audio
        .rtpmaps()
        .iter()
        .filter(|r| r.encoding.eq_ignore_ascii_case("opus") && r.clock_rate == 48000)
        .map(|r| {
            let fmtp = audio.fmtp(r.payload_type).unwrap_or_default();
            (r.payload_type, OpusFmtp::parse(fmtp))
        })
        .collect();
    if opus_fmtp.is_empty() {
        return Err(WebRtcError::NoOpus);
    }
    let remote_ufrag = audio
        .attribute("ice-ufrag")
        .or_else(|| {
            sdp.attributes
                .iter()
                .find(|a| a.name == "ice-ufrag")
                .and_then(|a| a.value.as_deref())
        })
        .ok_or_else(|| WebRtcError::BadOffer("no a=ice-ufrag".into()))?;
    let application_mids = sdp
        .media
        .iter()
        .filter(|m| m.media == "application" && m.port != 0)
        .filter_map(|m| m.mid().map(str::to_string))
        .collect();
    Ok(OfferInfo {
        audio_mid: audio_mid.to_string(),
        application_mids,
        remote_ufrag: remote_ufrag.trim().to_string(),
        opus_fmtp,
    })
}

/// Rejects the data-channel sections of str0m's answer: port 0, only `c=` and
/// `a=mid` kept, and out of the BUNDLE group ([RFC 8843 section 7.3.3]). str0m has
/// no switch for this, and a browser that sees the section rejected never starts
/// SCTP, so str0m's side of it stays idle.
///
/// [RFC 8843 section 7.3.3]: https://www.rfc-editor.org/rfc/rfc8843#section-7.3.3
pub(crate) fn reject_applications(answer: &str, mids: &[String]) -> String {
    if mids.is_empty() {
        return answer.to_string();
    }
    // Split into sections at each m= line, so a section's mid is known before its
    // lines are written.
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for line in answer.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(s) = sections.last_mut() {
            s.push(line);
        }
    }
    let mut out = String::with_capacity(answer.len());
    for (i, section) in sections.iter().enumerate() {
        let mid = section.iter().find_map(|l| l.strip_prefix("a=mid:"));
        let rejected = i > 0
            && section
                .first()
                .is_some_and(|m| m.starts_with("m=application "))
            && mid.is_some_and(|mid| mids.iter().any(|x| x == mid));
        for line in section {
            if i == 0 && line.starts_with("a=group:BUNDLE") {
                let kept: Vec<&str> = line
                    .split(' ')
                    .filter(|tok| !mids.iter().any(|x| x == tok))
                    .collect();
                out.push_str(&kept.join(" "));
            } else if rejected {
                if let Some(rest) = line.strip_prefix("m=application ") {
                    let proto = rest.split_once(' ').map_or("", |(_, p)| p);
                    out.push_str("m=application 0 ");
                    out.push_str(proto);
                } else if line.starts_with("c=") || line.starts_with("a=mid:") {
                    out.push_str(line);
                } else {
                    continue;
                }
            } else {
                out.push_str(line);
            }
            out.push_str("\r\n");
        }
    }
    out
}

/// The negotiated payload types of the audio section `mid` in our answer.
pub(crate) fn payload_types(answer: &str, mid: &str) -> Option<PayloadTypes> {
    let sdp = SessionDescription::parse(answer).ok()?;
    let audio = sdp
        .media
        .iter()
        .find(|m| m.media == "audio" && m.port != 0 && m.mid() == Some(mid))?;
    let maps = audio.rtpmaps();
    let find = |name: &str, rate: u32| {
        maps.iter()
            .find(|r| r.encoding.eq_ignore_ascii_case(name) && r.clock_rate == rate)
            .map(|r| r.payload_type)
    };
    Some(PayloadTypes {
        opus: find("opus", 48000)?,
        telephone_event_48k: find("telephone-event", 48000),
        telephone_event_8k: find("telephone-event", 8000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE a d\r\na=ice-ufrag:brow\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:a\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
        a=mid:d\r\na=sctp-port:5000\r\n";

    #[test]
    fn inspect_finds_audio_and_data() {
        let info = inspect(MINIMAL).expect("valid");
        assert_eq!(info.audio_mid, "a");
        assert_eq!(info.application_mids, ["d"]);
        assert_eq!(info.remote_ufrag, "brow");
    }

    #[test]
    fn inspect_rejects_offers_without_opus_audio() {
        let no_opus = MINIMAL.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 G722/8000");
        assert!(matches!(inspect(&no_opus), Err(WebRtcError::NoOpus)));
        let no_audio = MINIMAL.replace("m=audio 9", "m=audio 0");
        assert!(matches!(inspect(&no_audio), Err(WebRtcError::NoAudio)));
        let no_mid = MINIMAL.replace("a=mid:a\r\n", "");
        assert!(matches!(inspect(&no_mid), Err(WebRtcError::BadOffer(_))));
        for garbage in ["", "hello", "v=0\r\nx", "\u{0}\u{1}"] {
            assert!(inspect(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn data_sections_are_rejected_and_unbundled() {
        let out = reject_applications(MINIMAL, &["d".to_string()]);
        assert!(out.contains("a=group:BUNDLE a\r\n"), "{out}");
        assert!(out.contains("m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:d\r\n"), "{out}");
        assert!(!out.contains("sctp-port"));
        // The audio section is untouched.
        assert!(
            out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:a\r\n")
        );
        assert_eq!(reject_applications(MINIMAL, &[]), MINIMAL);
    }

    #[test]
    fn payload_types_from_answer() {
        let answer = MINIMAL.replace(
            "a=rtpmap:111 opus/48000/2\r\n",
            "a=rtpmap:111 opus/48000/2\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n",
        );
        let pts = payload_types(&answer, "a").expect("audio");
        assert_eq!(
            pts,
            PayloadTypes {
                opus: 111,
                telephone_event_48k: Some(110),
                telephone_event_8k: Some(126)
            }
        );
        assert!(pts.contains(126) && pts.is_telephone_event(110) && !pts.is_telephone_event(111));
        assert_eq!(payload_types(&answer, "zz"), None);
    }
}
