//! What a datagram on the shared port is, and whether a STUN check is signed by
//! someone who knows a leg's ICE password.

use str0m::ice::StunMessage;

/// The protocol of a datagram by its first byte ([RFC 7983 section 7]).
///
/// [RFC 7983 section 7]: https://www.rfc-editor.org/rfc/rfc7983#section-7
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Stun,
    Dtls,
    /// RTP or RTCP (SRTP/SRTCP here).
    Rtp,
    Other,
}

pub(crate) fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(0..=3) if datagram.len() >= 20 => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) if datagram.len() >= 12 => Kind::Rtp,
        _ => Kind::Other,
    }
}

/// A connectivity check ([RFC 8445 section 7.2.2]) split into what routing needs.
///
/// [RFC 8445 section 7.2.2]: https://www.rfc-editor.org/rfc/rfc8445#section-7.2.2
pub(crate) struct Check<'a> {
    msg: StunMessage<'a>,
}

impl<'a> Check<'a> {
    /// The datagram as a binding request with a USERNAME, else `None`.
    pub(crate) fn parse(datagram: &'a [u8]) -> Option<Check<'a>> {
        let msg = StunMessage::parse(datagram).ok()?;
        (msg.is_binding_request() && msg.split_username().is_some()).then_some(Check { msg })
    }

    /// USERNAME is `<our ufrag>:<their ufrag>` (RFC 8445 section 7.2.2).
    pub(crate) fn local_ufrag(&self) -> &str {
        self.msg.split_username().map_or("", |(ours, _)| ours)
    }

    /// Whether the check names these ufrags and its MESSAGE-INTEGRITY verifies with
    /// our password ([RFC 5389 section 15.4]).
    ///
    /// [RFC 5389 section 15.4]: https://www.rfc-editor.org/rfc/rfc5389#section-15.4
    pub(crate) fn is_signed(&self, local_ufrag: &str, remote_ufrag: &str, password: &str) -> bool {
        let Some((ours, theirs)) = self.msg.split_username() else {
            return false;
        };
        if ours != local_ufrag || theirs != remote_ufrag {
            return false;
        }
        let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
        self.msg
            .verify(password.as_bytes(), |key, parts| hmac.sha1_hmac(key, parts))
    }
}

/// A binding request with USERNAME `local:remote`, signed with `password` when
/// given: what a browser sends.
#[cfg(test)]
pub(crate) fn binding_request(local: &str, remote: &str, password: Option<&str>) -> Vec<u8> {
    use str0m::ice::TransId;
    let username = format!("{local}:{remote}");
    let msg = StunMessage::binding_request(&username, TransId::new(), true, 7, 1_000, true);
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    let mut buf = vec![0u8; 512];
    let n = msg
        .to_bytes(password.map(str::as_bytes), &mut buf, |k, p| {
            hmac.sha1_hmac(k, p)
        })
        .expect("fits");
    buf.truncate(n);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_checks_verify_only_with_the_right_names_and_password() {
        let req = binding_request("ours", "theirs", Some("secret-password-22chars"));
        assert_eq!(classify(&req), Kind::Stun);
        let check = Check::parse(&req).expect("a check");
        assert_eq!(check.local_ufrag(), "ours");
        assert!(check.is_signed("ours", "theirs", "secret-password-22chars"));
        assert!(!check.is_signed("ours", "theirs", "wrong-password"));
        assert!(!check.is_signed("ours", "other", "secret-password-22chars"));
        assert!(!check.is_signed("nope", "theirs", "secret-password-22chars"));
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0u8; 20]), Kind::Stun);
        assert_eq!(classify(&[0u8; 8]), Kind::Other);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), Kind::Dtls);
        assert_eq!(classify(&[0x80; 12]), Kind::Rtp);
        assert_eq!(classify(&[0x80; 4]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&[255; 40]), Kind::Other);
    }

    #[test]
    fn garbage_is_not_a_check() {
        assert!(Check::parse(&[0u8; 20]).is_none());
        assert!(Check::parse(&[1u8; 64]).is_none());
        assert!(Check::parse(&[]).is_none());
    }
}
