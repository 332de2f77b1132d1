//! Typed values of the config file. Each one parses from the string an operator
//! writes and says what it expected when it does not parse. They are parsed one
//! by one (a list element on its own), so toml reports the error with the span of
//! that very value, which `locate` turns into a key path like `trunks[0].peers[1]`.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use media_core::codec::{Codec, OpusComplexity};
use serde::de::{self, Deserialize, Deserializer};
use sip_bridge::bridge::{Cidr, DtmfMode, Join, Ringback, Target};
use sip_bridge::roles::{Capabilities, Capability};
use sip_bridge::sip::message::Transport;

/// A value written as a TOML string.
pub(crate) trait StrValue: Sized {
    /// Parses `s`, or says why not (the message names `s`).
    fn parse_value(s: &str) -> Result<Self, String>;
}

/// `T` deserialized from its string form.
struct Str<T>(T);

impl<'de, T: StrValue> Deserialize<'de> for Str<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor(PhantomData))
    }
}

struct StrVisitor<T>(PhantomData<T>);

impl<T: StrValue> de::Visitor<'_> for StrVisitor<T> {
    type Value = Str<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<T>, E> {
        T::parse_value(s).map(Str).map_err(E::custom)
    }
}

/// `deserialize_with` for one value.
pub(crate) fn one<'de, D: Deserializer<'de>, T: StrValue>(d: D) -> Result<T, D::Error> {
    Str::<T>::deserialize(d).map(|v| v.0)
}

/// `deserialize_with` for an optional value (pair it with `#[serde(default)]`).
pub(crate) fn opt<'de, D: Deserializer<'de>, T: StrValue>(d: D) -> Result<Option<T>, D::Error> {
    Str::<T>::deserialize(d).map(|v| Some(v.0))
}

/// `deserialize_with` for a list, each element parsed (and located) on its own.
pub(crate) fn list<'de, D: Deserializer<'de>, T: StrValue>(d: D) -> Result<Vec<T>, D::Error> {
    Vec::<Str<T>>::deserialize(d).map(|v| v.into_iter().map(|s| s.0).collect())
}

/// `deserialize_with` for an interval where `"0s"` means off.
pub(crate) fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    one::<D, Duration>(d).map(|v| (!v.is_zero()).then_some(v))
}

/// Durations: a whole number and a unit, `500ms`, `15s`, `2m`, `4h`, `30d`. (The same
/// grammar as `sip_bridge::bridge::parse_duration`, with overflow checked: a huge
/// number is an error here, not a panic.)
impl StrValue for Duration {
    fn parse_value(s: &str) -> Result<Duration, String> {
        let err = || {
            format!(
                "\"{s}\" is not a duration: write a whole number and a unit, ms, s, m, h or d (e.g. \"15s\")"
            )
        };
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let secs = |mul: u64| n.checked_mul(mul).map(Duration::from_secs).ok_or_else(err);
        match unit {
            "ms" => Ok(Duration::from_millis(n)),
            "s" => secs(1),
            "m" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            _ => Err(err()),
        }
    }
}

impl StrValue for SocketAddr {
    fn parse_value(s: &str) -> Result<SocketAddr, String> {
        s.trim().parse().map_err(|_| {
            format!("\"{s}\" is not an IP:port address (e.g. \"0.0.0.0:5060\" or \"[::]:5060\")")
        })
    }
}

impl StrValue for IpAddr {
    fn parse_value(s: &str) -> Result<IpAddr, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address (e.g. \"203.0.113.10\")"))
    }
}

impl StrValue for Cidr {
    fn parse_value(s: &str) -> Result<Cidr, String> {
        s.parse()
    }
}

impl StrValue for Target {
    fn parse_value(s: &str) -> Result<Target, String> {
        s.parse()
            .map_err(|e: sip_bridge::bridge::TargetError| e.to_string())
    }
}

impl StrValue for Codec {
    fn parse_value(s: &str) -> Result<Codec, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pcmu" => Ok(Codec::Pcmu),
            "pcma" => Ok(Codec::Pcma),
            "opus" => Ok(Codec::Opus),
            _ => Err(format!(
                "unknown codec \"{s}\": expected PCMU, PCMA or opus"
            )),
        }
    }
}

impl StrValue for Transport {
    fn parse_value(s: &str) -> Result<Transport, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            _ => Err(format!(
                "unknown trunk transport \"{s}\": expected udp, tcp or tls"
            )),
        }
    }
}

impl StrValue for DtmfMode {
    fn parse_value(s: &str) -> Result<DtmfMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rfc4733" => Ok(DtmfMode::Rfc4733),
            "info" => Ok(DtmfMode::Info),
            _ => Err(format!(
                "unknown DTMF mode \"{s}\": expected rfc4733 or info"
            )),
        }
    }
}

/// The RTP port range, both ends included. RTP takes the even ports and RTCP the
/// odd one above each (RFC 3550 section 11), so an even port `p` is used only
/// when `p + 1` is in the range too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port (even).
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl PortRange {
    /// RTP/RTCP pairs that fit: the most media streams at once.
    pub fn pairs(self) -> usize {
        usize::from(self.last.saturating_sub(self.first).div_ceil(2))
    }

    /// Whether `port` is inside.
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl StrValue for PortRange {
    fn parse_value(s: &str) -> Result<PortRange, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| {
            format!("\"{s}\" is not a port range: write FIRST-LAST (e.g. \"20000-30000\")")
        })?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("\"{s}\": \"{}\" is not a port (1-65535)", p.trim()))
        };
        let (first, last) = (port(a)?, port(b)?);
        if first % 2 != 0 {
            return Err(format!(
                "\"{s}\": the first port must be even (RTP on even ports, RTCP on the next)"
            ));
        }
        if last <= first {
            return Err(format!("\"{s}\": the last port must be above the first"));
        }
        Ok(PortRange { first, last })
    }
}

/// A trunk peer: `host:port`, an IP (v6 in brackets with a port), or a host alone
/// (the port then defaults by transport: 5060, or 5061 for TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP, as written (IPv6 without brackets).
    pub host: String,
    /// Port, if written.
    pub port: Option<u16>,
}

impl HostPort {
    /// The IP, when the host is one (no DNS needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port` with `default_port` filled in, as `ToSocketAddrs` takes it.
    pub fn with_port(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        match self.ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{}:{port}", self.host),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => f.write_str(&self.with_port(p)),
            None => f.write_str(&self.host),
        }
    }
}

/// A DNS name (RFC 1123 section 2.1 labels) or an IP literal.
pub(crate) fn valid_host(h: &str) -> bool {
    if h.parse::<IpAddr>().is_ok() {
        return true;
    }
    (1..=253).contains(&h.len())
        && h.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl StrValue for HostPort {
    fn parse_value(s: &str) -> Result<HostPort, String> {
        let t = s.trim();
        let err = |why: &str| format!("\"{s}\" is not host:port ({why})");
        if let Ok(a) = t.parse::<SocketAddr>() {
            if a.port() == 0 {
                return Err(err("port 0"));
            }
            return Ok(HostPort {
                host: a.ip().to_string(),
                port: Some(a.port()),
            });
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(HostPort {
                host: ip.to_string(),
                port: None,
            });
        }
        let (host, port) = match t.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| err(&format!("bad port \"{p}\"")))?;
                (h, Some(port))
            }
            None => (t, None),
        };
        if !valid_host(host) {
            return Err(err(&format!("bad host \"{host}\"")));
        }
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A password or key: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself (only where it is used).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.into())
    }
}

/// A dial step's `join`: `first` or `all`.
impl StrValue for Join {
    fn parse_value(s: &str) -> Result<Join, String> {
        Join::parse(s.trim())
            .ok_or_else(|| format!("\"{s}\" is not a join: write \"first\" or \"all\""))
    }
}

/// What a caller hears while it rings: `relay` or `local`.
impl StrValue for Ringback {
    fn parse_value(s: &str) -> Result<Ringback, String> {
        Ringback::parse(s.trim()).ok_or_else(|| {
            format!("\"{s}\" is not a ringback: write \"relay\" (the targets' own 180/183) or \"local\" (our tone)")
        })
    }
}

/// A capability by its wire name (`add_participant`, `end_call`, ...).
impl StrValue for Capability {
    fn parse_value(s: &str) -> Result<Capability, String> {
        Capability::parse(s.trim()).ok_or_else(|| {
            let known: Vec<&str> = Capability::ALL.iter().map(|c| c.as_str()).collect();
            format!(
                "\"{s}\" is not a capability: write one of {}",
                known.join(", ")
            )
        })
    }
}

/// `deserialize_with` for a role's capabilities in `[numbers.capabilities]`: a
/// list of names (pair it with `#[serde(default)]`).
pub(crate) fn capabilities<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Capabilities>, D::Error> {
    list::<D, Capability>(d).map(|v| Some(Capabilities::of(&v)))
}

/// `deserialize_with` for `[media] opus_complexity`: `"auto"` or 0-10.
pub(crate) fn opus_complexity<'de, D: Deserializer<'de>>(d: D) -> Result<OpusComplexity, D::Error> {
    struct V;
    const EXPECTED: &str = "\"auto\" or a whole number from 0 (cheapest) to 10 (best)";
    impl de::Visitor<'_> for V {
        type Value = OpusComplexity;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<OpusComplexity, E> {
            match u8::try_from(n) {
                Ok(c) if c <= 10 => Ok(OpusComplexity::Fixed(c)),
                _ => Err(E::custom(format!("{n} is out of range: write {EXPECTED}"))),
            }
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<OpusComplexity, E> {
            match s.trim() {
                "auto" => Ok(OpusComplexity::Auto),
                _ => Err(E::custom(format!("\"{s}\" is not {EXPECTED}"))),
            }
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_overflow_is_an_error() {
        for (s, d) in [
            ("15s", Duration::from_secs(15)),
            ("250ms", Duration::from_millis(250)),
            ("2m", Duration::from_secs(120)),
            ("4h", Duration::from_secs(4 * 3600)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(Duration::parse_value(s), Ok(d), "{s}");
        }
        for bad in [
            "15",
            "s",
            "1.5s",
            "-1s",
            "1h30m",
            "18446744073709551615h",
            "",
        ] {
            let e = Duration::parse_value(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn port_ranges() {
        let r = PortRange::parse_value("20000-20999").unwrap();
        assert_eq!((r.first, r.last, r.pairs()), (20000, 20999, 500));
        assert_eq!(PortRange::parse_value("20000-30000").unwrap().pairs(), 5000);
        assert!(r.contains(20999) && !r.contains(21000));
        for (bad, why) in [
            ("20001-30000", "even"),
            ("30000-20000", "above"),
            ("20000-20000", "above"),
            ("20000", "FIRST-LAST"),
            ("0-100", "not a port"),
            ("20000-70000", "not a port"),
        ] {
            let e = PortRange::parse_value(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn host_ports() {
        let hp = |s: &str| HostPort::parse_value(s);
        assert_eq!(
            hp("198.51.100.10:5060").unwrap().with_port(1),
            "198.51.100.10:5060"
        );
        assert_eq!(
            hp("198.51.100.10").unwrap().with_port(5061),
            "198.51.100.10:5061"
        );
        assert_eq!(
            hp("[2001:db8::1]:5080").unwrap().with_port(1),
            "[2001:db8::1]:5080"
        );
        assert_eq!(
            hp("2001:db8::1").unwrap().with_port(5060),
            "[2001:db8::1]:5060"
        );
        let named = hp("SIP.Carrier.example:5080").unwrap();
        assert_eq!(
            (named.host.as_str(), named.port),
            ("sip.carrier.example", Some(5080))
        );
        assert!(named.ip().is_none());
        assert_eq!(hp("sip.carrier.example").unwrap().port, None);
        for bad in [
            "x:y",
            "host:0",
            "host:70000",
            "bad_host:5060",
            "-a.example",
            "",
            "a..b",
        ] {
            let e = hp(bad).unwrap_err();
            assert!(e.contains("is not host:port"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_of_codecs_transports_and_dtmf() {
        assert_eq!(Codec::parse_value("pcmu"), Ok(Codec::Pcmu));
        assert_eq!(Codec::parse_value("PCMA"), Ok(Codec::Pcma));
        assert_eq!(Codec::parse_value("OPUS"), Ok(Codec::Opus));
        assert!(
            Codec::parse_value("G729")
                .unwrap_err()
                .contains("unknown codec")
        );
        assert_eq!(Transport::parse_value("TLS"), Ok(Transport::Tls));
        assert!(Transport::parse_value("wss").is_err());
        assert_eq!(DtmfMode::parse_value("info"), Ok(DtmfMode::Info));
        assert!(DtmfMode::parse_value("inband").is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(s.expose(), "hunter2");
    }
}
