//! DTMF over SIP INFO (`application/dtmf-relay`, the de facto format; no RFC):
//! for trunks that take digits in signalling rather than as RFC 4733 events.

/// The content type we send.
pub const CONTENT_TYPE: &str = "application/dtmf-relay";

/// The body of an INFO carrying `digit` (160 ms, as RFC 4733 senders default to).
pub fn body(digit: char) -> String {
    format!("Signal={digit}\r\nDuration=160\r\n")
}

/// The digit in an INFO body: `Signal=5` in `application/dtmf-relay`, or a bare
/// digit in `application/dtmf`. Only 0-9, *, #, A-D.
pub fn digit(content_type: &str, body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body).ok()?;
    let ct = content_type.to_ascii_lowercase();
    let d = if ct.contains("dtmf-relay") {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("signal")
                .then(|| v.trim().chars().next())?
        })?
    } else if ct.contains("dtmf") {
        text.trim().chars().next()?
    } else {
        return None;
    };
    let d = d.to_ascii_uppercase();
    "0123456789*#ABCD".contains(d).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_the_bare_form() {
        for d in "0123456789*#ABCD".chars() {
            assert_eq!(digit(CONTENT_TYPE, body(d).as_bytes()), Some(d));
        }
        assert_eq!(digit("application/dtmf", b" 7\r\n"), Some('7'));
        assert_eq!(
            digit("Application/DTMF-Relay", b"signal = b\r\n"),
            Some('B')
        );
    }

    #[test]
    fn refuses_other_bodies() {
        assert_eq!(digit(CONTENT_TYPE, b"Signal=X\r\n"), None);
        assert_eq!(digit(CONTENT_TYPE, b"Duration=160\r\n"), None);
        assert_eq!(digit("application/sdp", b"Signal=5\r\n"), None);
        assert_eq!(digit(CONTENT_TYPE, &[0xff, 0xfe]), None);
    }
}
