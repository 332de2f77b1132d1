//! Dial plans (`ARCHITECTURE.md`, "Calls, legs and dial plans"): a list of steps,
//! each ringing one or more targets at once for at most its timeout. The first
//! answer in a step wins and ends the others; when every target of a step fails or
//! it times out, the next step starts.

use std::fmt;
use std::time::Duration;

use crate::contract::{ForkFraming, RecordChannels, RecordFormat};

/// Where a step rings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Target {
    /// Every online, non-busy operator available on the call's number.
    Operators,
    /// Every online, non-busy operator available on another number (by id):
    /// `operators:sales`.
    OperatorsOf(String),
    /// One operator by operatorRef.
    Operator(String),
    /// A SIP URI, through the trunk whose host matches, else directly.
    Sip(String),
    /// A phone number through a trunk (`pstn:+E164`; the trunk by name with
    /// `pstn:+E164@trunk`, else the first trunk).
    Pstn {
        /// E.164.
        number: String,
        /// Trunk name.
        trunk: Option<String>,
    },
    /// An AI agent over WebSocket (`stream:wss://...`).
    Stream(String),
    /// Built-in test target: plays the caller's audio back.
    Echo,
    /// Built-in test target: a 1 kHz tone (`tone`) or another frequency (`tone:440`).
    Tone(u32),
}

/// A target that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad dial target `{0}`: expected operators, operator:REF, sip:URI, pstn:+E164[@trunk], stream:ws(s)://..., echo or tone[:HZ]"
)]
pub struct TargetError(pub String);

fn e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (3..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        let err = || TargetError(s.to_string());
        let s = s.trim();
        if s == "operators" {
            return Ok(Target::Operators);
        }
        if s == "echo" {
            return Ok(Target::Echo);
        }
        if s == "tone" {
            return Ok(Target::Tone(1000));
        }
        if let Some(hz) = s.strip_prefix("tone:") {
            return hz
                .parse()
                .ok()
                .filter(|h| (50..=4000).contains(h))
                .map(Target::Tone)
                .ok_or_else(err);
        }
        if let Some(n) = s.strip_prefix("operators:") {
            let ok = (1..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
            return ok.then(|| Target::OperatorsOf(n.into())).ok_or_else(err);
        }
        if let Some(r) = s.strip_prefix("operator:") {
            let ok = (1..=64).contains(&r.len())
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
            return ok.then(|| Target::Operator(r.into())).ok_or_else(err);
        }
        if let Some(rest) = s.strip_prefix("pstn:") {
            let (number, trunk) = match rest.split_once('@') {
                Some((n, t)) if !t.is_empty() => (n, Some(t.to_string())),
                Some(_) => return Err(err()),
                None => (rest, None),
            };
            return e164(number)
                .then(|| Target::Pstn {
                    number: number.into(),
                    trunk,
                })
                .ok_or_else(err);
        }
        if s.starts_with("sip:") || s.starts_with("sips:") {
            return s
                .parse::<rsipstack::sip::Uri>()
                .ok()
                .map(|_| Target::Sip(s.into()))
                .ok_or_else(err);
        }
        if let Some(url) = s.strip_prefix("stream:") {
            return (url.starts_with("ws://") || url.starts_with("wss://"))
                .then(|| Target::Stream(url.into()))
                .ok_or_else(err);
        }
        Err(err())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Operators => f.write_str("operators"),
            Target::OperatorsOf(n) => write!(f, "operators:{n}"),
            Target::Operator(r) => write!(f, "operator:{r}"),
            Target::Sip(u) => f.write_str(u),
            Target::Pstn {
                number,
                trunk: None,
            } => write!(f, "pstn:{number}"),
            Target::Pstn {
                number,
                trunk: Some(t),
            } => write!(f, "pstn:{number}@{t}"),
            Target::Stream(u) => write!(f, "stream:{u}"),
            Target::Echo => f.write_str("echo"),
            Target::Tone(1000) => f.write_str("tone"),
            Target::Tone(hz) => write!(f, "tone:{hz}"),
        }
    }
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Rung at once.
    pub targets: Vec<Target>,
    /// How long the step rings.
    pub timeout: Duration,
    /// Who of those that answer is kept.
    pub join: Join,
    /// The call is recorded once this step's target answers (with the
    /// plan's [`DialPlan::record`] options, else the defaults).
    pub record: bool,
}

impl Step {
    /// `targets` rung for `timeout`, the first answer kept.
    pub fn new(targets: Vec<Target>, timeout: Duration) -> Step {
        Step {
            targets,
            timeout,
            join: Join::First,
            record: false,
        }
    }
}

/// Who of a step's targets that answer joins the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Join {
    /// The first answer wins; the others stop ringing (`taken_by_other`).
    #[default]
    First,
    /// Everyone who answers before the step's timeout joins: the first answer
    /// connects the caller, the others join as they answer (a conference).
    All,
}

impl Join {
    /// The config and wire name (`first`, `all`).
    pub fn as_str(self) -> &'static str {
        match self {
            Join::First => "first",
            Join::All => "all",
        }
    }

    /// From the config and wire name.
    pub fn parse(s: &str) -> Option<Join> {
        match s {
            "first" => Some(Join::First),
            "all" => Some(Join::All),
            _ => None,
        }
    }
}

/// What a SIP caller hears while its call rings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ringback {
    /// The targets' own progress: a SIP target's 180 reaches the caller as 180
    /// and its 183 with SDP as 183 with ours and its early media, once for all
    /// forks; nothing before a target reports progress. Our own ringback (183 and
    /// a tone) only for steps that ring targets with no progress of their own
    /// (operators, AI agents).
    #[default]
    Relay,
    /// 183 with our ringback as soon as a step rings (a target's early media
    /// still replaces the tone).
    Local,
}

impl Ringback {
    /// The config and wire name (`relay`, `local`).
    pub fn as_str(self) -> &'static str {
        match self {
            Ringback::Relay => "relay",
            Ringback::Local => "local",
        }
    }

    /// From the config and wire name.
    pub fn parse(s: &str) -> Option<Ringback> {
        match s {
            "relay" => Some(Ringback::Relay),
            "local" => Some(Ringback::Local),
            _ => None,
        }
    }
}

/// A dial plan.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DialPlan {
    /// In order.
    pub steps: Vec<Step>,
    /// What a SIP caller hears while it rings; `None`: the caller's trunk's
    /// setting, else [`Ringback::Relay`].
    pub ringback: Option<Ringback>,
    /// Record the call from its answer, so.
    pub record: Option<RecordOptions>,
    /// Stream the call's audio live from its answer, so.
    pub fork: Option<ForkOptions>,
    /// Record through an external recording server (SIPREC) from routing on.
    /// A number's or trunk's setting stands when the router's plan has none.
    pub siprec: Option<SiprecOptions>,
}

/// A SIPREC recording server (RFC 7866) for a number, a trunk or the
/// routing webhook's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiprecOptions {
    /// The SRS: `sip:user@ip:port`, `;transport=tcp` for TCP.
    pub srs: String,
    /// Compliance: refuse the call (or end it) when the SRS does not record
    /// it. Default: the call goes on and a `siprec` event says it failed.
    pub fail_closed: bool,
}

impl SiprecOptions {
    /// Checked options: a `sip:` URI with an IP address (the sans-IO core
    /// resolves no names).
    pub fn parse(srs: &str, fail_closed: bool) -> Result<SiprecOptions, String> {
        if srs.len() > 512 || !srs.to_ascii_lowercase().starts_with("sip:") {
            return Err("srs must be a sip: URI".into());
        }
        let uri: rsipstack::sip::Uri = srs.parse().map_err(|_| "srs: not a SIP URI")?;
        let host = uri.host_with_port.host.to_string();
        if host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_err()
        {
            return Err(format!("srs: `{host}` is not an IP address"));
        }
        Ok(SiprecOptions {
            srs: srs.into(),
            fail_closed,
        })
    }
}

/// A live media fork (`fork` in a number's config, the routing webhook's
/// plan, the REST API): where and how the call's audio streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkOptions {
    /// `ws://` or `wss://`.
    pub url: String,
    /// `inbound` (the customer), `outbound` (what the customer hears) or
    /// `both` (stereo: channel 1 the customer).
    pub tracks: RecordChannels,
    /// Native PCM16 frames or Twilio Media Streams.
    pub framing: ForkFraming,
    /// 8000, 16000 or 24000 Hz (native framing; Twilio's is 8000 u-law).
    pub rate: u32,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
}

impl ForkOptions {
    /// Options from their wire names (`tracks` `inbound`|`outbound`|`both`,
    /// default both; `framing` `native`|`twilio`; `rate` 8000|16000|24000,
    /// default 16000 native and 8000 Twilio).
    pub fn parse(
        url: &str,
        tracks: Option<&str>,
        framing: Option<&str>,
        rate: Option<u32>,
        headers: Vec<(String, String)>,
    ) -> Result<ForkOptions, String> {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() > 2048 {
            return Err("url must be a ws:// or wss:// URL".into());
        }
        let tracks = match tracks {
            None | Some("both") => RecordChannels::Dual,
            Some("inbound") => RecordChannels::Customer,
            Some("outbound") => RecordChannels::Others,
            Some(t) => return Err(format!("tracks `{t}`: expected inbound, outbound or both")),
        };
        let framing = match framing {
            None | Some("native") => ForkFraming::Native,
            Some("twilio") => ForkFraming::Twilio,
            Some(f) => return Err(format!("framing `{f}`: expected native or twilio")),
        };
        let rate = match (framing, rate) {
            (ForkFraming::Twilio, None | Some(8000)) => 8000,
            (ForkFraming::Twilio, Some(r)) => {
                return Err(format!("rate {r}: Twilio framing is 8000 Hz u-law"));
            }
            (_, None) => 16_000,
            (_, Some(r @ (8000 | 16_000 | 24_000))) => r,
            (_, Some(r)) => return Err(format!("rate {r}: expected 8000, 16000 or 24000")),
        };
        if headers.len() > 16 {
            return Err("at most 16 headers".into());
        }
        Ok(ForkOptions {
            url: url.into(),
            tracks,
            framing,
            rate,
            headers,
        })
    }
}

/// How a call is recorded (`record` in a number's config, a step, the
/// routing webhook's plan, the REST API, the SDK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordOptions {
    /// Two channels by role (default) or one mix.
    pub channels: RecordChannels,
    /// WAV (default) or Ogg Opus.
    pub format: RecordFormat,
    /// 8000 (default) or 16000 Hz.
    pub rate: u32,
}

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            channels: RecordChannels::Dual,
            format: RecordFormat::Wav,
            rate: 8000,
        }
    }
}

impl RecordOptions {
    /// Options from their wire names (`dual`/`mono`, `wav`/`opus`, 8000/16000);
    /// `None` for each: the default.
    pub fn parse(
        channels: Option<&str>,
        format: Option<&str>,
        rate: Option<u32>,
    ) -> Result<RecordOptions, String> {
        let mut o = RecordOptions::default();
        match channels {
            None | Some("dual") => {}
            Some("mono") => o.channels = RecordChannels::Mono,
            Some(c) => return Err(format!("channels `{c}`: expected dual or mono")),
        }
        match format {
            None | Some("wav") => {}
            Some("opus") => o.format = RecordFormat::Opus,
            Some(f) => return Err(format!("format `{f}`: expected wav or opus")),
        }
        match rate {
            None | Some(8000) => {}
            Some(16000) => o.rate = 16000,
            Some(r) => return Err(format!("rate {r}: expected 8000 or 16000")),
        }
        Ok(o)
    }
}

impl DialPlan {
    /// The plan of `steps`, ringback as configured for the caller's trunk.
    pub fn new(steps: Vec<Step>) -> Self {
        DialPlan {
            steps,
            ringback: None,
            record: None,
            fork: None,
            siprec: None,
        }
    }

    /// One step ringing `targets` for `timeout`.
    pub fn single(targets: Vec<Target>, timeout: Duration) -> Self {
        DialPlan::new(vec![Step::new(targets, timeout)])
    }
}

/// Parses a duration like `15s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Twilio-style outcome of a dial (`DialCallStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DialStatus {
    /// Answered and ended normally.
    Completed,
    /// Answered (still up).
    Answered,
    /// Every target was busy.
    Busy,
    /// Nobody answered.
    NoAnswer,
    /// Failed (unreachable, rejected with an error, no target available).
    Failed,
    /// The caller hung up before an answer.
    Canceled,
}

impl DialStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DialStatus::Completed => "completed",
            DialStatus::Answered => "answered",
            DialStatus::Busy => "busy",
            DialStatus::NoAnswer => "no-answer",
            DialStatus::Failed => "failed",
            DialStatus::Canceled => "canceled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() {
        for s in [
            "operators",
            "operators:sales",
            "operator:alice",
            "sip:bob@198.51.100.7:5070",
            "pstn:+15550111",
            "pstn:+15550111@carrier2",
            "stream:wss://agent.example/ws",
            "echo",
            "tone",
            "tone:440",
        ] {
            let t: Target = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
        for bad in [
            "",
            "sip:",
            "operator:",
            "operator:a b",
            "operators:",
            "operators:a b",
            "pstn:15550111",
            "pstn:+1",
            "pstn:+15550111@",
            "stream:http://x",
            "tone:9",
            "fax",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_duration("9999999999999999h"), None, "no overflow");
    }
}
