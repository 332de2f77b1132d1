//! The `Replaces` header (RFC 3891): an INVITE that takes the place of an
//! existing dialog (attended transfer from a PBX, call pickup), given in the
//! header or embedded in a Refer-To URI (`?Replaces=...`, escaped).

use super::{LegId, LegState, Role, UserAgent};

/// A parsed `Replaces` (RFC 3891 section 6.1): the dialog to replace, as its
/// recipient sees it: `to_tag` is the recipient's own (local) tag,
/// `from_tag` the other side's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaces {
    /// The dialog's Call-ID.
    pub call_id: String,
    /// Its tag at the recipient.
    pub to_tag: String,
    /// The other side's tag.
    pub from_tag: String,
    /// `early-only`: replace only a dialog that is not confirmed yet.
    pub early_only: bool,
}

impl Replaces {
    /// `callid;to-tag=a;from-tag=b[;early-only]`; `None` when malformed (both
    /// tags are required, section 6.1).
    pub fn parse(value: &str) -> Option<Replaces> {
        let mut parts = value.trim().split(';');
        let call_id = parts.next()?.trim();
        if call_id.is_empty() || call_id.contains(char::is_whitespace) {
            return None;
        }
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        for p in parts {
            let (name, val) = p.split_once('=').unwrap_or((p, ""));
            let val = val.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "to-tag" if !val.is_empty() => to_tag = Some(val.to_string()),
                "from-tag" if !val.is_empty() => from_tag = Some(val.to_string()),
                "early-only" => early_only = true,
                "to-tag" | "from-tag" => return None,
                _ => {} // generic-param: ignored
            }
        }
        Some(Replaces {
            call_id: call_id.to_string(),
            to_tag: to_tag?,
            from_tag: from_tag?,
            early_only,
        })
    }

    /// The header value, for an INVITE we send.
    pub fn to_header(&self) -> String {
        let early = if self.early_only { ";early-only" } else { "" };
        format!(
            "{};to-tag={};from-tag={}{early}",
            self.call_id, self.to_tag, self.from_tag
        )
    }
}

/// Why a URI's headers were not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriHeadersError {
    /// A header other than one `Replaces` (we send no others on).
    #[error("URI headers other than Replaces")]
    Unsupported,
    /// A `Replaces` that does not parse (or a header without a value).
    #[error("malformed Replaces")]
    BadReplaces,
}

/// A Refer-To URI split into the URI to call and its embedded `Replaces`
/// (RFC 3891 section 5: `sip:bob@host?Replaces=id%40host%3Bto-tag%3D1...`).
pub fn split_refer_to(uri: &str) -> Result<(String, Option<Replaces>), UriHeadersError> {
    let Some((target, headers)) = uri.split_once('?') else {
        return Ok((uri.to_string(), None));
    };
    let mut replaces = None;
    for h in headers.split('&') {
        let (name, value) = h.split_once('=').unwrap_or((h, ""));
        if !name.eq_ignore_ascii_case("replaces") || replaces.is_some() {
            return Err(UriHeadersError::Unsupported);
        }
        let parsed = unescape(value).and_then(|v| Replaces::parse(&v));
        replaces = Some(parsed.ok_or(UriHeadersError::BadReplaces)?);
    }
    Ok((target.to_string(), replaces))
}

/// `%XX` escapes of a URI header value (RFC 3261 25.1 `hvalue`).
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What an INVITE's `Replaces` found among our dialogs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplacesMatch {
    /// This leg, confirmed (or early, when `early-only` allowed it).
    Leg(LegId),
    /// No such dialog, or one we may not replace: 481 (section 3).
    NoDialog,
    /// `early-only` and the dialog is confirmed: 486 (section 3).
    Confirmed,
}

impl UserAgent {
    /// The dialog `r` names. Only dialogs that are up can be replaced here:
    /// an early one (still ringing) answers 481, as section 3 allows for
    /// early dialogs the recipient did not create.
    pub fn find_replaced(&self, r: &Replaces) -> ReplacesMatch {
        let found = self.legs.iter().find(|(_, l)| {
            l.call_id == r.call_id
                && l.local_tag == r.to_tag
                && l.remote_tag.as_deref() == Some(r.from_tag.as_str())
        });
        match found {
            Some((_, l)) if l.state == LegState::Confirmed && r.early_only => {
                ReplacesMatch::Confirmed
            }
            Some((id, l)) if l.state == LegState::Confirmed => ReplacesMatch::Leg(*id),
            Some((id, l)) if l.role == Role::Uac && r.early_only => ReplacesMatch::Leg(*id),
            _ => ReplacesMatch::NoDialog,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3891_examples_and_refuses_what_lacks_a_tag() {
        // Section 6.1's example.
        let r = Replaces::parse("98732@sip.example.com;from-tag=r33th4x0r;to-tag=ff87ff").unwrap();
        assert_eq!(r.call_id, "98732@sip.example.com");
        assert_eq!(
            (r.to_tag.as_str(), r.from_tag.as_str()),
            ("ff87ff", "r33th4x0r")
        );
        assert!(!r.early_only);
        let r = Replaces::parse("a@b;to-tag=1;from-tag=2;early-only").unwrap();
        assert!(r.early_only);
        assert_eq!(r.to_header(), "a@b;to-tag=1;from-tag=2;early-only");
        assert_eq!(Replaces::parse(&r.to_header()), Some(r));
        for bad in [
            "",
            ";to-tag=1;from-tag=2",
            "a@b;to-tag=1",
            "a@b;from-tag=2",
            "a@b;to-tag=;from-tag=2",
            "a b;to-tag=1;from-tag=2",
        ] {
            assert_eq!(Replaces::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_refer_to_carries_an_escaped_replaces() {
        // Section 5's form, escaped as RFC 3261 25.1 wants it.
        let (uri, r) = split_refer_to(
            "sip:bob@pbx.example?Replaces=12345%40pbx.example%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994",
        )
        .unwrap();
        assert_eq!(uri, "sip:bob@pbx.example");
        let r = r.unwrap();
        assert_eq!(r.call_id, "12345@pbx.example");
        assert_eq!(
            (r.to_tag.as_str(), r.from_tag.as_str()),
            ("12345", "5FFE-3994")
        );
        assert_eq!(
            split_refer_to("tel:+15550199"),
            Ok(("tel:+15550199".into(), None))
        );
        assert_eq!(
            split_refer_to("sip:b@h?Subject=hi"),
            Err(UriHeadersError::Unsupported)
        );
        for bad in [
            "sip:b@h?Replaces=x%3",
            "sip:b@h?Replaces=x",
            "sip:b@h?Replaces",
        ] {
            assert_eq!(
                split_refer_to(bad),
                Err(UriHeadersError::BadReplaces),
                "{bad}"
            );
        }
    }
}
