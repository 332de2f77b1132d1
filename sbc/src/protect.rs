//! The SIP front door, before any transaction or dialog exists: per-source rate
//! limits with a temporary ban (in the spirit of Kamailio's pike), silent drops
//! for known scanner user agents, and calls-per-second admission. Decisions are
//! made on a cheap scan of the raw message, so a flood costs a few hundred
//! nanoseconds per packet and leaves no state behind but one counter per source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use media_core::Instant;

/// Front-door settings.
#[derive(Clone, Debug)]
pub struct ProtectionConfig {
    /// SIP requests one source may send per window.
    pub requests: u32,
    /// The window.
    pub window: Duration,
    /// How long a source over the limit is ignored.
    pub ban: Duration,
    /// User-Agent substrings dropped silently (case-insensitive).
    pub scanners: Vec<String>,
    /// New INVITEs per second accepted (503 beyond).
    pub max_cps: u32,
    /// Sources tracked at most (oldest forgotten first).
    pub max_sources: usize,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        ProtectionConfig {
            requests: 50,
            window: Duration::from_secs(1),
            ban: Duration::from_secs(60),
            scanners: [
                "friendly-scanner",
                "sipvicious",
                "sipcli",
                "sipsak",
                "vaxsipuseragent",
                "pplsip",
                "iwar",
                "sundayddr",
                "sip-scan",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            max_cps: 1000,
            max_sources: 100_000,
        }
    }
}

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the core.
    Pass,
    /// Ignore it (banned source, scanner): no answer at all.
    Drop,
    /// Answer 503 statelessly (calls per second exceeded).
    Overload,
}

/// Why messages were dropped (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectionStats {
    /// Messages from banned sources.
    pub banned_drops: u64,
    /// Sources banned so far.
    pub bans: u64,
    /// Scanner messages dropped.
    pub scanner_drops: u64,
    /// INVITEs refused for the CPS limit.
    pub cps_rejects: u64,
}

#[derive(Clone, Copy, Debug)]
struct Source {
    window_start: Instant,
    count: u32,
    banned_until: Option<Instant>,
    last_seen: Instant,
}

/// The front door. See the module docs.
#[derive(Debug)]
pub struct Protection {
    cfg: ProtectionConfig,
    sources: HashMap<IpAddr, Source>,
    cps_second: Instant,
    cps_count: u32,
    stats: ProtectionStats,
}

/// A request's method and whether it is an initial INVITE, from a raw scan.
fn scan(bytes: &[u8]) -> (Option<&[u8]>, bool, Option<&[u8]>) {
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let first = &bytes[..line_end];
    if first.starts_with(b"SIP/") {
        return (None, false, None); // a response
    }
    let method = first.split(|&b| b == b' ').next();
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let head = &bytes[..head_end];
    let mut ua = None;
    let mut to_tag = false;
    for line in head.split(|&b| b == b'\n') {
        let lower: Vec<u8> = line
            .iter()
            .take(12)
            .map(|b| b.to_ascii_lowercase())
            .collect();
        if lower.starts_with(b"user-agent:") {
            ua = Some(&line[11..]);
        } else if lower.starts_with(b"to:") || lower.starts_with(b"t:") {
            to_tag = line.windows(4).any(|w| w.eq_ignore_ascii_case(b"tag="));
        }
    }
    let initial_invite = method == Some(b"INVITE".as_slice()) && !to_tag;
    (method, initial_invite, ua)
}

impl Protection {
    /// A front door with `cfg`.
    pub fn new(cfg: ProtectionConfig) -> Self {
        Protection {
            cfg,
            sources: HashMap::new(),
            cps_second: Instant::ZERO,
            cps_count: 0,
            stats: ProtectionStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ProtectionStats {
        self.stats
    }

    /// Sources currently banned.
    pub fn banned(&self, now: Instant) -> usize {
        self.sources
            .values()
            .filter(|s| s.banned_until.is_some_and(|u| u > now))
            .count()
    }

    /// Decides about one message from `ip`. Responses pass (they belong to our
    /// own transactions); requests are counted.
    pub fn check(&mut self, now: Instant, ip: IpAddr, bytes: &[u8]) -> Verdict {
        self.check_from(now, ip, false, bytes)
    }

    /// [`Protection::check`]; a `trusted` source (a trunk's) is not limited
    /// per source: a carrier sends a few requests per call, so 50 a second
    /// would ban one above ~16 calls a second. Calls per second still apply.
    pub fn check_from(&mut self, now: Instant, ip: IpAddr, trusted: bool, bytes: &[u8]) -> Verdict {
        let (method, initial_invite, ua) = scan(bytes);
        if method.is_none() {
            return Verdict::Pass;
        }
        if trusted {
            return self.cps(now, initial_invite);
        }
        if let Some(ua) = ua {
            let ua = String::from_utf8_lossy(ua).to_ascii_lowercase();
            if self.cfg.scanners.iter().any(|s| ua.contains(s.as_str())) {
                self.stats.scanner_drops += 1;
                return Verdict::Drop;
            }
        }
        if self.sources.len() >= self.cfg.max_sources && !self.sources.contains_key(&ip) {
            self.evict(now);
        }
        let s = self.sources.entry(ip).or_insert(Source {
            window_start: now,
            count: 0,
            banned_until: None,
            last_seen: now,
        });
        s.last_seen = now;
        if let Some(until) = s.banned_until {
            if now < until {
                self.stats.banned_drops += 1;
                return Verdict::Drop;
            }
            s.banned_until = None;
            s.window_start = now;
            s.count = 0;
        }
        if now.saturating_duration_since(s.window_start) >= self.cfg.window {
            s.window_start = now;
            s.count = 0;
        }
        s.count += 1;
        if s.count > self.cfg.requests {
            s.banned_until = Some(now + self.cfg.ban);
            self.stats.bans += 1;
            self.stats.banned_drops += 1;
            tracing::warn!(%ip, "SIP flood: source banned for {:?}", self.cfg.ban);
            return Verdict::Drop;
        }
        self.cps(now, initial_invite)
    }

    /// New calls per second, for everyone.
    fn cps(&mut self, now: Instant, initial_invite: bool) -> Verdict {
        if initial_invite {
            if now.saturating_duration_since(self.cps_second) >= Duration::from_secs(1) {
                self.cps_second = now;
                self.cps_count = 0;
            }
            self.cps_count += 1;
            if self.cps_count > self.cfg.max_cps {
                self.stats.cps_rejects += 1;
                return Verdict::Overload;
            }
        }
        Verdict::Pass
    }

    /// Forgets the sources idle longest (keeping bans).
    fn evict(&mut self, now: Instant) {
        let horizon = now
            .saturating_duration_since(Instant::ZERO)
            .saturating_sub(self.cfg.window * 2);
        let cutoff = Instant::ZERO + horizon;
        self.sources
            .retain(|_, s| s.banned_until.is_some_and(|u| u > now) || s.last_seen > cutoff);
        if self.sources.len() >= self.cfg.max_sources {
            // Still full: drop an arbitrary quarter of the unbanned ones.
            let mut n = self.cfg.max_sources / 4;
            self.sources.retain(|_, s| {
                if n > 0 && s.banned_until.is_none() {
                    n -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nTo: <sip:x>\r\n\r\n";
    const INVITE: &[u8] = b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nTo: <sip:x>\r\nUser-Agent: Phone 1.0\r\n\r\n";

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    #[test]
    fn a_flood_bans_its_source_only() {
        let mut p = Protection::new(ProtectionConfig {
            requests: 10,
            ..ProtectionConfig::default()
        });
        let bad: IpAddr = "198.51.100.66".parse().unwrap();
        let good: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(p.check(ms(0), bad, OPTIONS), Verdict::Pass);
        }
        assert_eq!(p.check(ms(1), bad, OPTIONS), Verdict::Drop);
        assert_eq!(
            p.check(ms(2), good, OPTIONS),
            Verdict::Pass,
            "another source is not affected"
        );
        // Still banned a while later, even at a polite rate.
        assert_eq!(p.check(ms(30_000), bad, OPTIONS), Verdict::Drop);
        assert_eq!(p.banned(ms(30_000)), 1);
        // The ban expires.
        assert_eq!(p.check(ms(61_000), bad, OPTIONS), Verdict::Pass);
        assert_eq!(p.stats().bans, 1);
        // Responses are never counted.
        for _ in 0..100 {
            assert_eq!(
                p.check(ms(61_001), good, b"SIP/2.0 200 OK\r\n\r\n"),
                Verdict::Pass
            );
        }
    }

    #[test]
    fn scanners_are_dropped_silently() {
        let mut p = Protection::new(ProtectionConfig::default());
        let msg = b"OPTIONS sip:100@x SIP/2.0\r\nUser-Agent: friendly-scanner\r\n\r\n";
        assert_eq!(
            p.check(ms(0), "192.0.2.9".parse().unwrap(), msg),
            Verdict::Drop
        );
        let msg = b"REGISTER sip:x SIP/2.0\r\nuser-agent: SIPVicious 0.3\r\n\r\n";
        assert_eq!(
            p.check(ms(0), "192.0.2.9".parse().unwrap(), msg),
            Verdict::Drop
        );
        assert_eq!(p.stats().scanner_drops, 2);
    }

    #[test]
    fn cps_limit_answers_overload_for_new_invites_only() {
        let mut p = Protection::new(ProtectionConfig {
            max_cps: 2,
            requests: 1000,
            ..ProtectionConfig::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(p.check(ms(0), ip, INVITE), Verdict::Pass);
        assert_eq!(p.check(ms(10), ip, INVITE), Verdict::Pass);
        assert_eq!(p.check(ms(20), ip, INVITE), Verdict::Overload);
        let reinvite = b"INVITE sip:x SIP/2.0\r\nTo: <sip:x>;tag=abc\r\n\r\n";
        assert_eq!(
            p.check(ms(30), ip, reinvite),
            Verdict::Pass,
            "in-dialog requests pass"
        );
        assert_eq!(p.check(ms(1000), ip, INVITE), Verdict::Pass, "a new second");
    }

    #[test]
    fn bounded_source_table() {
        let mut p = Protection::new(ProtectionConfig {
            max_sources: 100,
            ..ProtectionConfig::default()
        });
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            p.check(ms(u64::from(i) * 10), ip, OPTIONS);
            assert!(p.sources.len() <= 100);
        }
    }

    #[test]
    fn a_trunk_is_not_limited_per_source_but_by_calls_per_second() {
        let mut p = Protection::new(ProtectionConfig {
            requests: 5,
            max_cps: 100,
            ..ProtectionConfig::default()
        });
        let carrier: IpAddr = "192.0.2.1".parse().unwrap();
        // 60 requests in a second from a trunk (20 calls: INVITE, ACK, BYE).
        for i in 0..60 {
            assert_eq!(
                p.check_from(ms(i * 15), carrier, true, OPTIONS),
                Verdict::Pass
            );
        }
        assert_eq!(p.stats().bans, 0);
        // The same from a stranger: banned after 5.
        let stranger: IpAddr = "203.0.113.5".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..6)
            .map(|i| p.check_from(ms(i), stranger, false, OPTIONS))
            .collect();
        assert_eq!(verdicts[5], Verdict::Drop);
        assert_eq!(p.stats().bans, 1);
        // Calls per second hold for trunks too.
        let mut p = Protection::new(ProtectionConfig {
            max_cps: 2,
            ..ProtectionConfig::default()
        });
        let v: Vec<Verdict> = (0..3)
            .map(|i| p.check_from(ms(i), carrier, true, INVITE))
            .collect();
        assert_eq!(v, [Verdict::Pass, Verdict::Pass, Verdict::Overload]);
    }
}
