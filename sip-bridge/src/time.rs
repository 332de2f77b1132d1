//! Wall-clock times as people and receivers read them (RFC 3339, UTC), from
//! Unix time the driver hands in: webhooks, CDRs, recording metadata.

/// RFC 3339 UTC time of Unix seconds `t` (civil-from-days, proleptic Gregorian).
pub fn rfc3339(t: u64) -> String {
    let (days, secs) = (t / 86_400, t % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// RFC 3339 UTC time of Unix milliseconds `t`, with the milliseconds.
pub fn rfc3339_ms(t: u64) -> String {
    let s = rfc3339(t / 1000);
    format!("{}.{:03}Z", &s[..s.len() - 1], t % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_230_057), "2026-11-21T03:00:57Z");
        assert_eq!(rfc3339_ms(1_795_230_057_042), "2026-11-21T03:00:57.042Z");
    }
}
