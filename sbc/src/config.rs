//! The SBC's configuration: one TOML file (`sbc/sbc.example.toml` documents every
//! key), or the embedded loopback demo (`demo.toml`) when none is given.
//!
//! Parse, then check. serde maps the text onto typed sections, each value parsed
//! where it is written (so toml's error carries its line), then `validate` checks
//! the rules that span keys: duplicates, references between sections, listener
//! clashes. Every problem names its key path (`numbers[1].dial[0].ring[2]`) and
//! line, and all of them are reported at once. The result converts into the
//! cores' types (`BridgeConfig`, `SessionConfig`, `ApiKeys`). DNS for trunk peers
//! is the caller's (a resolver closure), so parsing never touches the network.

mod locate;
mod validate;
mod values;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use media_core::codec::{Codec, OpusComplexity};
use serde::Deserialize;
use sip_bridge::bridge::{
    BridgeConfig, Cidr, DialPlan, DtmfMode, Join, NumberConfig, Ringback, Step, Target,
    TransferMode, TrunkConfig,
};
use sip_bridge::plan::{ForkOptions, RecordOptions, SiprecOptions};
use sip_bridge::roles::{Capabilities, RoleCapabilities};
use sip_bridge::signalling::SessionConfig;
use sip_bridge::sip::auth::Credentials;
use sip_bridge::sip::message::Transport;
use sip_bridge::token::{ApiKey, ApiKeys};

pub use locate::Position;
pub use values::{HostPort, PortRange, Secret};

/// The embedded demo config.
pub const DEMO_TOML: &str = include_str!("demo.toml");
/// The demo's API key. Only its hash is in `demo.toml`; the runtime prints this
/// so a person can try `POST /v1/tokens` by hand.
pub const DEMO_API_KEY: &str = "demo-key";
/// SHA-256 of [`DEMO_API_KEY`] (hex), as `demo.toml` stores it.
pub const DEMO_API_KEY_SHA256: &str =
    "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c";
/// Shortest token secret: an HS256 key must be at least as long as the hash
/// output (RFC 7518 section 3.2).
pub const MIN_TOKEN_SECRET: usize = 32;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SbcConfig {
    /// `[sip]`: SIP listeners and identity.
    #[serde(default)]
    pub sip: SipSection,
    /// `[media]`: RTP toward trunks and the WebRTC port toward browsers.
    #[serde(default)]
    pub media: MediaSection,
    /// `[http]`: tokens, signalling WebSocket, demo page.
    #[serde(default)]
    pub http: HttpSection,
    /// `[auth]`: token secret and API keys.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[limits]`: capacity.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[protection]`: flood and scanner defence on the SIP side.
    #[serde(default)]
    pub protection: ProtectionSection,
    /// `[signalling]`: operator WebSocket sessions.
    #[serde(default)]
    pub signalling: SignallingSection,
    /// `[[trunks]]`: carriers.
    #[serde(default)]
    pub trunks: Vec<TrunkEntry>,
    /// `[[numbers]]`: numbers and their dial plans.
    #[serde(default)]
    pub numbers: Vec<NumberEntry>,
    /// `[routing]`: ask the customer's backend for each call's plan.
    #[serde(default)]
    pub routing: Option<RoutingSection>,
    /// `[[streams]]`: options of AI agent targets (`stream:URL`).
    #[serde(default)]
    pub streams: Vec<StreamEntry>,
    /// `[webhooks]`: call events to the customer's backend.
    #[serde(default)]
    pub webhooks: Option<WebhooksSection>,
    /// `[recording]`: where recordings go and for how long.
    #[serde(default)]
    pub recording: RecordingSection,
    /// `[registrar]`: how SIP phones' registrations are kept.
    #[serde(default)]
    pub registrar: RegistrarSection,
    /// `[[phones]]`: SIP phones that register as operators.
    #[serde(default)]
    pub phones: Vec<PhoneEntry>,
    /// `[admin]`: the operations listener and this node's name.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[cluster]`: this node among others, through Redis. Absent: one node,
    /// nothing of it runs.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// `[log]`.
    #[serde(default)]
    pub log: LogSection,
    /// `[demo]`.
    #[serde(default)]
    pub demo: DemoSection,
}

/// `[sip]`. A listener left out is off.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipSection {
    /// UDP bind address.
    #[serde(deserialize_with = "values::opt")]
    pub udp: Option<SocketAddr>,
    /// TCP bind address.
    #[serde(deserialize_with = "values::opt")]
    pub tcp: Option<SocketAddr>,
    /// TLS bind address (needs `tls_cert` and `tls_key`).
    #[serde(deserialize_with = "values::opt")]
    pub tls: Option<SocketAddr>,
    /// PEM certificate chain for `tls`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates trusted for TLS trunks beside the public web roots
    /// (a carrier with a private CA).
    pub tls_ca: Option<PathBuf>,
    /// Our address in Via/Contact when we are behind NAT; see
    /// [`SbcConfig::sip_advertise`] for the default.
    #[serde(deserialize_with = "values::opt")]
    pub advertise: Option<IpAddr>,
    /// Both address families: our IPv6 address for IPv6 peers (Via, Contact,
    /// and SDP unless `media.rtp_advertise6`), with `advertise` the IPv4 one.
    /// The listeners then bind `[::]`, which takes IPv4 peers too.
    #[serde(deserialize_with = "values::opt")]
    pub advertise6: Option<IpAddr>,
    /// User-Agent / Server header.
    pub user_agent: String,
    /// Accept INVITEs from any source, not only trunks. Demo/testing only.
    pub open_inbound: bool,
}

impl Default for SipSection {
    fn default() -> Self {
        SipSection {
            udp: None,
            tcp: None,
            tls: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            advertise: None,
            advertise6: None,
            user_agent: concat!("sbc/", env!("CARGO_PKG_VERSION")).into(),
            open_inbound: false,
        }
    }
}

/// `[media]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// Where SIP-side RTP sockets bind.
    #[serde(deserialize_with = "values::one")]
    pub rtp_bind: IpAddr,
    /// The address in our SDP `c=` line; see [`SbcConfig::media_ip`].
    #[serde(deserialize_with = "values::opt")]
    pub rtp_advertise: Option<IpAddr>,
    /// Both address families: the address in the SDP of legs whose peer is
    /// over IPv6 (default `sip.advertise6`); `rtp_bind` is then `::`.
    #[serde(deserialize_with = "values::opt")]
    pub rtp_advertise6: Option<IpAddr>,
    /// SIP-side RTP ports.
    #[serde(deserialize_with = "values::one")]
    pub rtp_ports: PortRange,
    /// The one UDP socket every browser leg uses (ICE-lite muxes them).
    #[serde(deserialize_with = "values::one")]
    pub webrtc: SocketAddr,
    /// The ICE candidate browsers are given; see [`SbcConfig::webrtc_advertise`].
    #[serde(deserialize_with = "values::opt")]
    pub webrtc_advertise: Option<SocketAddr>,
    /// A call whose media has been silent this long is ended (a dead peer must
    /// not hold a call and its ports for hours).
    #[serde(deserialize_with = "values::one")]
    pub media_timeout: Duration,
    /// libopus complexity of our Opus encoders, `"auto"` or 0 (cheapest) to 10
    /// (best): the CPU a transcoded call costs against its sound (see the
    /// example config and [`OpusComplexity::Auto`]).
    #[serde(deserialize_with = "values::opus_complexity")]
    pub opus_complexity: OpusComplexity,
    /// Transcoding between two SIP legs goes through a jitter buffer too. Off:
    /// both ends are phones or gateways with buffers of their own, and a second
    /// one only adds delay. Browser and agent legs always get one.
    pub sip_jitter_buffer: bool,
    /// What a party held by someone (a hold, a transfer's consult) hears:
    /// `"silence"` (default) or `"tone"` (a soft chime every 3 s, so a caller
    /// knows the line is alive).
    pub hold_music: HoldMusic,
}

/// `media.hold_music`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldMusic {
    /// Nothing.
    #[default]
    Silence,
    /// The built-in hold tone.
    Tone,
}

impl Default for MediaSection {
    fn default() -> Self {
        let (first, last) = core_defaults().rtp_ports;
        MediaSection {
            rtp_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            rtp_advertise: None,
            rtp_advertise6: None,
            rtp_ports: PortRange { first, last },
            webrtc: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 3478)),
            webrtc_advertise: None,
            media_timeout: Duration::from_secs(60),
            opus_complexity: OpusComplexity::Auto,
            sip_jitter_buffer: false,
            hold_music: HoldMusic::Silence,
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Bind address for tokens, the operator WebSocket and the demo page.
    #[serde(deserialize_with = "values::one")]
    pub listen: SocketAddr,
    /// Page origins allowed to open the operator WebSocket (a browser sends its page's
    /// origin; other sites must not drive an operator session) and to load `/sdk/*`
    /// and call `/v1/*` cross-origin (CORS); others get 403. See
    /// [`SbcConfig::websocket_origins`].
    pub allowed_origins: Vec<String>,
    /// The URL browsers reach us at (behind a TLS proxy: its `https://` URL).
    pub public_url: Option<String>,
    /// PEM certificate chain: serve HTTPS/WSS ourselves (browsers need a secure
    /// page for the microphone) instead of behind a TLS proxy.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)),
            allowed_origins: Vec::new(),
            public_url: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[auth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// HS256 key for session tokens (at least [`MIN_TOKEN_SECRET`] bytes).
    pub token_secret: Option<Secret>,
    /// Or a file holding it (a trailing newline is ignored), so the config can
    /// be world-readable.
    pub token_secret_file: Option<PathBuf>,
    /// Default lifetime of a token (a request may ask for less or more, up to 24 h).
    #[serde(deserialize_with = "values::one")]
    pub token_ttl: Duration,
    /// Backends allowed to ask for tokens.
    pub api_keys: Vec<ApiKeyEntry>,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            token_secret: None,
            token_secret_file: None,
            token_ttl: Duration::from_secs(sip_bridge::token::DEFAULT_TTL_SECS),
            api_keys: Vec::new(),
        }
    }
}

/// `[[auth.api_keys]]`: one backend's key, stored as its hash.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Name for logs.
    pub name: String,
    /// SHA-256 of the key, hex (`sbc hash-key KEY` prints it).
    pub sha256: String,
    /// Number ids its tokens may carry; empty means all.
    #[serde(default)]
    pub numbers: Vec<String>,
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Calls at once (503 beyond).
    pub max_calls: usize,
    /// Parties in one call at once (ringing or joined, supervisors included).
    pub max_parties: usize,
    /// New calls per second (503 beyond).
    pub max_cps: u32,
    /// Open SIP TCP/TLS connections, accepted and opened.
    pub max_connections: usize,
    /// Operators online at once.
    pub max_operators: usize,
    /// Longest call.
    #[serde(deserialize_with = "values::one")]
    pub max_call_duration: Duration,
    /// How long an operator's outbound call rings.
    #[serde(deserialize_with = "values::one")]
    pub outbound_ring_timeout: Duration,
    /// How long an operator whose WebSocket dropped keeps their call.
    #[serde(deserialize_with = "values::one")]
    pub reconnect_grace: Duration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let core = core_defaults();
        LimitsSection {
            max_calls: core.max_calls,
            max_parties: core.max_parties,
            max_cps: 200,
            max_connections: 4096,
            max_operators: core.max_operators,
            max_call_duration: core.max_call_duration,
            outbound_ring_timeout: core.outbound_ring_timeout,
            reconnect_grace: core.grace,
        }
    }
}

/// `[protection]`: per-source SIP rate limit and scanner bans.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectionSection {
    /// SIP requests one source may send per window.
    pub rate_limit_requests: u32,
    /// The window.
    #[serde(deserialize_with = "values::one")]
    pub rate_limit_window: Duration,
    /// How long a source over the limit is ignored.
    #[serde(deserialize_with = "values::one")]
    pub ban_time: Duration,
    /// User-Agent substrings of SIP scanners, lowercased when parsed (the
    /// runtime matches them against the lowercased header); their requests get
    /// no answer.
    pub scanner_user_agents: Vec<String>,
}

impl Default for ProtectionSection {
    fn default() -> Self {
        ProtectionSection {
            rate_limit_requests: 50,
            rate_limit_window: Duration::from_secs(1),
            ban_time: Duration::from_secs(60),
            scanner_user_agents: [
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
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `[signalling]`: the operator WebSocket ([`SessionConfig`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignallingSection {
    /// `hello` must arrive within this.
    #[serde(deserialize_with = "values::one")]
    pub hello_timeout: Duration,
    /// Ping interval announced to clients.
    #[serde(deserialize_with = "values::one")]
    pub heartbeat_interval: Duration,
    /// Silent intervals before the connection is closed.
    pub missed_heartbeats: u32,
    /// Sustained messages per second.
    pub rate_per_sec: u32,
    /// Burst allowance.
    pub burst: u32,
    /// Rate-limited messages tolerated before the connection is closed.
    pub max_strikes: u32,
    /// Largest message, bytes.
    pub max_message: usize,
}

impl Default for SignallingSection {
    fn default() -> Self {
        let s = SessionConfig::default();
        SignallingSection {
            hello_timeout: s.hello_timeout,
            heartbeat_interval: s.heartbeat_interval,
            missed_heartbeats: s.missed_heartbeats,
            rate_per_sec: s.rate_per_sec,
            burst: s.burst,
            max_strikes: s.max_strikes,
            max_message: s.max_message,
        }
    }
}

/// `[[trunks]]`: a carrier.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkEntry {
    /// Name for logs and `pstn:+E164@name`.
    pub name: String,
    /// Host in our Request-URIs.
    pub host: String,
    /// Where requests go, in failover order.
    #[serde(deserialize_with = "values::list")]
    pub peers: Vec<HostPort>,
    /// `udp`, `tcp` or `tls`.
    #[serde(default = "udp", deserialize_with = "values::one")]
    pub transport: Transport,
    /// Digest user name for our requests.
    #[serde(default)]
    pub username: Option<String>,
    /// Digest password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Whether and as whom we REGISTER.
    #[serde(default)]
    pub register: Register,
    /// Extra sources whose INVITEs belong to this trunk (besides `peers`).
    #[serde(default, deserialize_with = "values::list")]
    pub inbound: Vec<Cidr>,
    /// Codecs in preference order.
    #[serde(default = "g711", deserialize_with = "values::list")]
    pub codecs: Vec<Codec>,
    /// How DTMF goes to this trunk.
    #[serde(default, deserialize_with = "values::one")]
    pub dtmf: DtmfMode,
    /// OPTIONS health check interval; `None` (`"0s"` or absent) is off.
    #[serde(default, deserialize_with = "values::interval")]
    pub ping_interval: Option<Duration>,
    /// What its callers hear while their call rings: `"relay"` (default) or
    /// `"local"` (see [`Ringback`]); a number's own setting wins.
    #[serde(default, deserialize_with = "values::opt")]
    pub ringback: Option<Ringback>,
    /// Ask for session timers on calls toward it (RFC 4028), e.g. `"1800s"`;
    /// absent or `"0s"`: not asked (a peer that asks is always honoured).
    #[serde(default, deserialize_with = "values::interval")]
    pub session_expires: Option<Duration>,
    /// Send INVITEs toward it without SDP (late offer): for carriers and PBXs
    /// that want to offer first.
    #[serde(default)]
    pub late_offer: bool,
    /// Require reliable provisional responses (`Require: 100rel`, RFC 3262)
    /// on calls toward it; without it we only say we support them.
    #[serde(default)]
    pub require_100rel: bool,
    /// Send our hold/resume offers as UPDATE (RFC 3311) when it allows it;
    /// default re-INVITE.
    #[serde(default)]
    pub update_offers: bool,
    /// Follow its REFERs (RFC 3515): the other party of its call is
    /// transferred to the Refer-To target. Default false: 403.
    #[serde(default)]
    pub accept_refer: bool,
    /// How a blind transfer moves its party to a number or SIP URI:
    /// `"bridge"` (default: we call the target and stay in the media) or
    /// `"refer"` (we send it a REFER and leave once its NOTIFY says 200; a
    /// refused REFER or NOTIFYs that never come fall back to bridging).
    #[serde(default)]
    pub transfer: TransferSetting,
    /// Where its RTP is taken from before the first packet latches:
    /// `"strict"` (default: the SDP's address, any source when that is a
    /// private one) or `"signalling"` (also the address its SIP comes from,
    /// for a carrier behind NAT whose SDP names an address it does not send
    /// from).
    #[serde(default)]
    pub latch: LatchSetting,
    /// With `transfer = "refer"`, when its NOTIFY says the target failed:
    /// `"report"` (default: the transfer failed, the transferor is back) or
    /// `"bridge"` (we try the target ourselves).
    #[serde(default)]
    pub refer_failure: ReferFailure,
    /// Record its inbound calls through a SIPREC server unless their number
    /// names one: `{ srs = "sip:srs@192.0.2.9:5060", fail_closed = false }`.
    #[serde(default, deserialize_with = "siprec_entry")]
    pub siprec: Option<SiprecOptions>,
}

/// `transfer` of a trunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferSetting {
    /// We bridge.
    #[default]
    Bridge,
    /// We REFER.
    Refer,
}

/// `refer_failure` of a trunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferFailure {
    /// The transfer failed.
    #[default]
    Report,
    /// We bridge instead.
    Bridge,
}

fn udp() -> Transport {
    Transport::Udp
}

fn g711() -> Vec<Codec> {
    vec![Codec::Pcmu, Codec::Pcma]
}

impl TrunkEntry {
    /// The port of a peer written without one.
    pub fn default_port(&self) -> u16 {
        match self.transport {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }

    /// The AOR to REGISTER, if any.
    pub fn register_aor(&self) -> Option<String> {
        match &self.register {
            Register::No => None,
            Register::AsUser => Some(format!(
                "sip:{}@{}",
                self.username.as_deref().unwrap_or_default(),
                self.host
            )),
            Register::Aor(aor) => Some(aor.clone()),
        }
    }
}

/// `register = false | true | "sip:user@host"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Register {
    /// No registration (the carrier knows our address).
    #[default]
    No,
    /// `true`: register `sip:USERNAME@HOST` with the trunk's credentials.
    AsUser,
    /// This AOR.
    Aor(String),
}

impl<'de> Deserialize<'de> for Register {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Register;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or an AOR \"sip:user@host\"")
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Register, E> {
                Ok(if v { Register::AsUser } else { Register::No })
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Register, E> {
                let ok = (s.starts_with("sip:") || s.starts_with("sips:"))
                    && s.contains('@')
                    && s.parse::<sip_bridge::sip::message::Uri>().is_ok();
                ok.then(|| Register::Aor(s.to_string())).ok_or_else(|| {
                    E::custom(format!(
                        "\"{s}\" is not an AOR: expected \"sip:user@host\", true or false"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[[numbers]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberEntry {
    /// Short id (`support`): what tokens and API keys name.
    pub id: String,
    /// E.164 (`+15550100`).
    pub e164: String,
    /// Label for people; defaults to the id.
    #[serde(default)]
    pub name: String,
    /// What rings, step by step; defaults to every ready operator for 30 s.
    #[serde(default = "ring_operators")]
    pub dial: Vec<DialStep>,
    /// What parties of its calls may do, by role (protocol.md, "Participants").
    #[serde(default)]
    pub capabilities: CapabilitiesEntry,
    /// A meet-me room: every caller to this number joins one conference (its
    /// `dial` plan is not used).
    #[serde(default)]
    pub room: bool,
    /// What SIP callers hear while it rings: `"relay"` or `"local"` (see
    /// [`Ringback`]); absent: the caller's trunk's setting, else relay.
    #[serde(default, deserialize_with = "values::opt")]
    pub ringback: Option<Ringback>,
    /// Record its calls from the answer: `true` (two channels, WAV, 8 kHz)
    /// or `{ channels = "dual"|"mono", format = "wav"|"opus", rate = 8000|16000 }`.
    #[serde(default, deserialize_with = "record_entry")]
    pub record: Option<RecordOptions>,
    /// Stream its calls' audio live from the answer: `{ url = "wss://...",
    /// tracks = "inbound"|"outbound"|"both", framing = "native"|"twilio",
    /// rate = 8000|16000|24000, headers = { Authorization = "..." } }`.
    #[serde(default, deserialize_with = "fork_entry")]
    pub fork: Option<ForkOptions>,
    /// Record its calls through an external recording server (SIPREC, RFC
    /// 7866) from routing on: `{ srs = "sip:srs@192.0.2.9:5060;transport=tcp",
    /// fail_closed = false }`. With `fail_closed` a call the SRS does not
    /// take is refused (503), or ended if it was answered.
    #[serde(default, deserialize_with = "siprec_entry")]
    pub siprec: Option<SiprecOptions>,
}

/// `siprec = { srs, fail_closed }` (a number's, a trunk's, or a routing
/// answer's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiprecEntry {
    srs: String,
    #[serde(default, alias = "failClosed")]
    fail_closed: bool,
}

impl SiprecEntry {
    /// The options it names.
    pub fn options(self) -> Result<SiprecOptions, String> {
        SiprecOptions::parse(&self.srs, self.fail_closed)
    }
}

fn siprec_entry<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SiprecOptions>, D::Error> {
    SiprecEntry::deserialize(d)?
        .options()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `fork = { url, tracks, framing, rate, headers }` (a number's, or a
/// routing answer's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkEntry {
    url: String,
    #[serde(default)]
    tracks: Option<String>,
    #[serde(default)]
    framing: Option<String>,
    #[serde(default)]
    rate: Option<u32>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

impl ForkEntry {
    /// The options it names.
    pub fn options(self) -> Result<ForkOptions, String> {
        ForkOptions::parse(
            &self.url,
            self.tracks.as_deref(),
            self.framing.as_deref(),
            self.rate,
            self.headers.into_iter().collect(),
        )
    }
}

fn fork_entry<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ForkOptions>, D::Error> {
    ForkEntry::deserialize(d)?
        .options()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `record = true` or `record = { channels, format, rate }` (a number's, or
/// a routing answer's `"record"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RecordEntry {
    /// Record with the defaults, or not.
    On(bool),
    /// Record so.
    With {
        /// `dual` or `mono`.
        #[serde(default)]
        channels: Option<String>,
        /// `wav` or `opus`.
        #[serde(default)]
        format: Option<String>,
        /// 8000 or 16000.
        #[serde(default)]
        rate: Option<u32>,
    },
}

impl RecordEntry {
    /// The options it names (`None`: not recorded).
    pub fn options(self) -> Result<Option<RecordOptions>, String> {
        match self {
            RecordEntry::On(on) => Ok(on.then(RecordOptions::default)),
            RecordEntry::With {
                channels,
                format,
                rate,
            } => RecordOptions::parse(channels.as_deref(), format.as_deref(), rate).map(Some),
        }
    }
}

fn record_entry<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RecordOptions>, D::Error> {
    RecordEntry::deserialize(d)?
        .options()
        .map_err(serde::de::Error::custom)
}

/// `[recording]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingSection {
    /// Where finished recordings go (created when missing); files being
    /// written are `<id>.wav.part` (or `.opus.part`) there.
    pub dir: PathBuf,
    /// A recording stops there.
    #[serde(deserialize_with = "values::one")]
    pub max_duration: Duration,
    /// Recordings older than this are deleted (`"0s"`: kept).
    #[serde(deserialize_with = "values::interval")]
    pub retention: Option<Duration>,
    /// Recordings in progress at once; more are refused (counted).
    pub max_active: usize,
    /// Audio a recording may have waiting for the disk before its oldest
    /// frames are dropped (and counted); at least 1 s (a writer looks twice
    /// a second).
    #[serde(deserialize_with = "values::one")]
    pub queue: Duration,
    /// Threads writing recordings (each its share of them).
    pub writers: usize,
}

impl Default for RecordingSection {
    fn default() -> Self {
        let d = crate::recorder::RecorderConfig::default();
        RecordingSection {
            dir: d.dir,
            max_duration: d.max_duration,
            retention: d.retention,
            max_active: d.max_active,
            queue: d.queue,
            writers: d.writers,
        }
    }
}

/// `[registrar]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarSection {
    /// The digest realm phones authenticate in (their HA1s are computed
    /// with it).
    pub realm: String,
    /// Shorter registrations get 423 with `Min-Expires`.
    #[serde(deserialize_with = "values::one")]
    pub min_expires: Duration,
    /// Longer ones are granted this.
    #[serde(deserialize_with = "values::one")]
    pub max_expires: Duration,
    /// A REGISTER without `Expires`.
    #[serde(deserialize_with = "values::one")]
    pub default_expires: Duration,
    /// Contacts one operator may register.
    pub max_per_operator: usize,
    /// Contacts in all (a REGISTER beyond gets 403).
    pub max_bindings: usize,
    /// Refused REGISTERs from one address, within `ban_window`, before it
    /// is banned for `ban_for` (its requests dropped unanswered).
    pub ban_after: u32,
    /// See `ban_after`.
    #[serde(deserialize_with = "values::one")]
    pub ban_window: Duration,
    /// See `ban_after`.
    #[serde(deserialize_with = "values::one")]
    pub ban_for: Duration,
    /// The SHA-256 digest challenge (RFC 8760): `"off"` (default: MD5
    /// alone, which every phone answers; baresip 1.0 refuses a 401 that
    /// also offers SHA-256), `"after"` (MD5, then SHA-256) or `"first"`.
    pub sha256: Sha256Setting,
    /// An operator online in a browser and on phones rings on both, the
    /// first answer winning (default); false: its phones ring only while
    /// none of its browsers takes the call.
    pub ring_both: bool,
    /// OPTIONS to every phone registered over UDP this often (default
    /// `"30s"`; `"0s"` off): keeps its NAT binding open, and a phone that
    /// answers none of 3 in a row is unregistered (offline).
    #[serde(deserialize_with = "values::interval")]
    pub keepalive: Option<Duration>,
    /// Phone accounts the config does not list are asked of the customer's
    /// backend here (POST `{"username", "realm"}`, signed with
    /// `accounts_secret` like webhooks; see `sbc::directory`).
    pub accounts_url: Option<String>,
    /// Signs the `accounts_url` requests (`X-Sbc-Signature`).
    pub accounts_secret: Option<Secret>,
    /// How long the backend's answer about a username is kept (found or
    /// not: a guesser's names cost one request each).
    #[serde(deserialize_with = "values::one")]
    pub accounts_ttl: Duration,
    /// How long a REGISTER waits for the backend before the phone is told
    /// to come back (503).
    #[serde(deserialize_with = "values::one")]
    pub accounts_timeout: Duration,
}

/// `[[trunks]] latch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatchSetting {
    /// The SDP's address.
    #[default]
    Strict,
    /// Also the SIP peer's address.
    Signalling,
}

/// `[registrar] sha256`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sha256Setting {
    /// MD5 alone.
    #[default]
    Off,
    /// MD5, then SHA-256.
    After,
    /// SHA-256, then MD5.
    First,
}

impl Default for RegistrarSection {
    fn default() -> Self {
        let d = sip_bridge::registrar::RegistrarConfig::default();
        RegistrarSection {
            realm: d.realm,
            min_expires: d.min_expires,
            max_expires: d.max_expires,
            default_expires: d.default_expires,
            max_per_operator: d.max_per_operator,
            max_bindings: d.max_bindings,
            ban_after: d.ban_after,
            ban_window: d.ban_window,
            ban_for: d.ban_for,
            sha256: Sha256Setting::Off,
            ring_both: d.ring_both,
            keepalive: d.keepalive,
            accounts_url: None,
            accounts_secret: None,
            accounts_ttl: Duration::from_secs(300),
            accounts_timeout: Duration::from_secs(2),
        }
    }
}

/// `[[phones]]`: a SIP phone account, an operator's. Its password is not
/// kept, only digest HA1 values of `username:realm:password`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneEntry {
    /// The digest user name (its REGISTERs' To user).
    pub username: String,
    /// The operator it is (`ref` as tokens name it).
    pub operator: String,
    /// MD5 of `username:realm:password`, 32 hex digits.
    pub ha1_md5: String,
    /// SHA-256 of the same, 64 hex digits.
    pub ha1_sha256: String,
    /// Number ids it takes calls on (their `operators` steps ring it).
    #[serde(default)]
    pub numbers: Vec<String>,
}

/// `[numbers.capabilities]`: capability names by role; a role left out keeps
/// its default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilitiesEntry {
    /// Operators handling a call (default: `add_participant`,
    /// `remove_participant`, `hold_participant`, `end_call`, `record`).
    #[serde(default, deserialize_with = "values::capabilities")]
    pub agent: Option<Capabilities>,
    /// Supervisors (default: `switch_monitor`, `record`; in `barge` they add
    /// the agent's).
    #[serde(default, deserialize_with = "values::capabilities")]
    pub supervisor: Option<Capabilities>,
}

impl CapabilitiesEntry {
    fn resolve(&self) -> RoleCapabilities {
        let d = RoleCapabilities::default();
        RoleCapabilities {
            agent: self.agent.unwrap_or(d.agent),
            supervisor: self.supervisor.unwrap_or(d.supervisor),
        }
    }
}

fn ring_operators() -> Vec<DialStep> {
    vec![DialStep {
        ring: vec![Target::Operators],
        timeout: step_timeout(),
        join: Join::First,
        record: false,
    }]
}

fn step_timeout() -> Duration {
    Duration::from_secs(30)
}

/// One dial step: targets rung at once, for at most `timeout`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialStep {
    /// Targets (`operators`, `operator:REF`, `sip:URI`, `pstn:+E164[@trunk]`,
    /// `stream:wss://...`, `echo`, `tone[:HZ]`).
    #[serde(deserialize_with = "values::list")]
    pub ring: Vec<Target>,
    /// How long the step rings (default 30 s).
    #[serde(default = "step_timeout", deserialize_with = "values::one")]
    pub timeout: Duration,
    /// `"first"` (default): the first answer wins; `"all"`: everyone who answers
    /// joins (a conference).
    #[serde(default, deserialize_with = "values::one")]
    pub join: Join,
    /// Record the call once this step's target answers (with the number's
    /// `record` options, else the defaults).
    #[serde(default)]
    pub record: bool,
}

/// `[routing]`: the routing webhook (see README "Routing per call").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// Where call facts are POSTed.
    pub url: String,
    /// Signs each request (`X-Sbc-Signature`), like webhooks.
    pub secret: Secret,
    /// How long a call waits for the answer before its static plan applies.
    #[serde(default = "default_routing_timeout", deserialize_with = "values::one")]
    pub timeout: std::time::Duration,
}

fn default_routing_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

/// `[[streams]]`: how to reach one AI agent URL used as `stream:URL` in a plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamEntry {
    /// The URL as written after `stream:` (`wss://agent.example/ws`).
    pub url: String,
    /// `pcm16-24k` (native: binary PCM16 24 kHz + JSON control) or `twilio`
    /// (Media Streams framing, base64 u-law 8 kHz).
    #[serde(default = "default_stream_format")]
    pub format: String,
    /// Extra HTTP headers of the WebSocket request (`Authorization = "Bearer ..."`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn default_stream_format() -> String {
    "pcm16-24k".into()
}

/// `[webhooks]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSection {
    /// Where call events are POSTed.
    pub url: String,
    /// Signs each request so the receiver can tell it is ours.
    pub secret: Secret,
}

/// `[admin]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Serve `/metrics`, `/healthz` and `/readyz` here, and `/metrics` no longer
    /// on `[http] listen` (which browsers and the API reach). Unset: all on
    /// `[http] listen`.
    #[serde(deserialize_with = "values::opt")]
    pub listen: Option<SocketAddr>,
    /// This node's name, the `node` label of every metric (default: the host name).
    pub node: Option<String>,
}

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`, `.`);
    /// also the `node` label of its metrics unless `[admin] node` says otherwise.
    pub node: String,
    /// `redis://HOST:PORT/DB` (or `redis://:PASSWORD@HOST:PORT/DB`).
    pub redis_url: String,
    /// Lease renewal (default `"500ms"`).
    #[serde(
        default = "ClusterSection::default_heartbeat",
        deserialize_with = "values::one"
    )]
    pub heartbeat: Duration,
    /// A node not heard from for this long is not live (default `"1500ms"`;
    /// at least twice `heartbeat`).
    #[serde(
        default = "ClusterSection::default_lease",
        deserialize_with = "values::one"
    )]
    pub lease: Duration,
    /// Deadline of one exchange with Redis (default `"250ms"`): a slow Redis
    /// costs a counted miss, never a stalled node.
    #[serde(
        default = "ClusterSection::default_timeout",
        deserialize_with = "values::one"
    )]
    pub redis_timeout: Duration,
    /// Address blocks the other nodes' SIP addresses must be in (default:
    /// any). A node record in Redis pointing elsewhere is ignored and
    /// counted, so a write to Redis cannot draw calls off the cluster.
    #[serde(default, deserialize_with = "values::list")]
    pub allow: Vec<Cidr>,
}

impl ClusterSection {
    fn default_heartbeat() -> Duration {
        Duration::from_millis(500)
    }
    fn default_lease() -> Duration {
        Duration::from_millis(1500)
    }
    fn default_timeout() -> Duration {
        Duration::from_millis(250)
    }
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Line format.
    pub format: LogFormat,
    /// A level or `tracing` directives (`info,sbc::sip=debug`); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

/// `[demo]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSection {
    /// Serve `/demo/token` (tokens for anyone: the embedded demo only).
    pub enabled: bool,
}

/// One thing wrong with a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Key path (`numbers[1].dial[0].ring[2]`); empty for the document as a whole.
    pub key: String,
    /// What is wrong, and what was expected.
    pub message: String,
    /// Where in the file (the key's value, or its table when the key is missing).
    pub position: Option<Position>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(p) = self.position {
            write!(f, " (line {}, column {})", p.line, p.column)?;
        }
        Ok(())
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or values that break the rules: every problem found.
    #[error("{}", show_problems(.file.as_deref(), .problems))]
    Invalid {
        /// The file, when it came from one.
        file: Option<PathBuf>,
        /// At least one.
        problems: Vec<Problem>,
    },
}

fn show_problems(file: Option<&Path>, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| match file {
            Some(f) => format!("{}: {p}", f.display()),
            None => p.to_string(),
        })
        .collect();
    lines.join("\n")
}

impl ConfigError {
    /// The problems (none for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            ConfigError::Read { .. } => &[],
        }
    }

    fn invalid(file: Option<&Path>, text: Option<&str>, found: Vec<(String, String)>) -> Self {
        let mut problems: Vec<Problem> = found
            .into_iter()
            .map(|(key, message)| Problem {
                position: text.and_then(|t| locate::position_of(t, &key)),
                key,
                message,
            })
            .collect();
        // In file order, as an editor walks them; unplaced ones last.
        problems.sort_by_key(|p| p.position.map_or((usize::MAX, 0), |p| (p.line, p.column)));
        ConfigError::Invalid {
            file: file.map(Path::to_path_buf),
            problems,
        }
    }

    fn from_toml(file: Option<&Path>, text: &str, e: &toml::de::Error) -> Self {
        let span = e.span();
        let key = span
            .as_ref()
            .and_then(|s| locate::key_at(text, s))
            .unwrap_or_default();
        let message = if toml::de::DeTable::parse(text).is_err() {
            format!("TOML syntax: {}", e.message().trim_end())
        } else {
            e.message().trim_end().to_string()
        };
        ConfigError::Invalid {
            file: file.map(Path::to_path_buf),
            problems: vec![Problem {
                key,
                message,
                position: span.map(|s| locate::position(text, s.start)),
            }],
        }
    }
}

/// The defaults of the core, so ours cannot drift from them.
fn core_defaults() -> BridgeConfig {
    BridgeConfig::new(Vec::new(), Vec::new(), IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn specific(ip: IpAddr) -> Option<IpAddr> {
    (!ip.is_unspecified()).then_some(ip)
}

impl std::str::FromStr for SbcConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<SbcConfig, ConfigError> {
        SbcConfig::parse(text)
    }
}

impl SbcConfig {
    /// Parses and checks a config.
    pub fn parse(text: &str) -> Result<SbcConfig, ConfigError> {
        Self::parse_in(None, text)
    }

    /// Reads, parses and checks the config file at `path`. (Files it names, like
    /// the token secret and TLS keys, are read later; [`check_config_file`] reads
    /// them now.)
    pub fn load(path: &Path) -> Result<SbcConfig, ConfigError> {
        Self::load_text(path).map(|(_, cfg)| cfg)
    }

    /// The embedded loopback demo.
    pub fn demo() -> SbcConfig {
        // A unit test parses it, so this cannot fail in a build that passed tests.
        SbcConfig::parse(DEMO_TOML).expect("the embedded demo.toml is valid")
    }

    fn load_text(path: &Path) -> Result<(String, SbcConfig), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::parse_in(Some(path), &text)?;
        Ok((text, cfg))
    }

    fn parse_in(file: Option<&Path>, text: &str) -> Result<SbcConfig, ConfigError> {
        let mut cfg: SbcConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
        cfg.normalize();
        let found = validate::check(&cfg);
        if found.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::invalid(file, Some(text), found))
        }
    }

    fn normalize(&mut self) {
        for n in &mut self.numbers {
            if n.name.is_empty() {
                n.name.clone_from(&n.id);
            }
        }
        if let Some(u) = &mut self.http.public_url {
            u.truncate(u.trim_end_matches('/').len());
        }
        // The runtime compares origins as strings, and browsers send them
        // lowercased, without a default port or a slash (RFC 6454 section 6.1).
        for o in &mut self.http.allowed_origins {
            if let Some(c) = validate::canonical_origin(o) {
                *o = c;
            }
        }
        for ua in &mut self.protection.scanner_user_agents {
            *ua = ua.to_lowercase();
        }
    }

    /// The address in Via and Contact: `sip.advertise`, else the first SIP
    /// listener's IP unless it is 0.0.0.0, else `media.rtp_advertise`.
    pub fn sip_advertise(&self) -> IpAddr {
        self.sip_advertise_opt()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    pub(crate) fn sip_advertise_opt(&self) -> Option<IpAddr> {
        self.sip
            .advertise
            .or_else(|| self.sip_bind_ip())
            .or(self.media.rtp_advertise)
    }

    fn sip_bind_ip(&self) -> Option<IpAddr> {
        [self.sip.udp, self.sip.tcp, self.sip.tls]
            .into_iter()
            .flatten()
            .find_map(|a| specific(a.ip()))
    }

    /// The address in our SDP for SIP-side RTP: `media.rtp_advertise`, else
    /// `sip.advertise`, else `media.rtp_bind` unless it is 0.0.0.0, else the SIP
    /// listener's IP. (Checked to exist when the config is parsed.)
    pub fn media_ip(&self) -> IpAddr {
        self.media_ip_opt().unwrap_or(self.media.rtp_bind)
    }

    pub(crate) fn media_ip_opt(&self) -> Option<IpAddr> {
        self.media
            .rtp_advertise
            .or(self.sip.advertise)
            .or_else(|| specific(self.media.rtp_bind))
            .or_else(|| self.sip_bind_ip())
    }

    /// Our media address for IPv6 peers when we serve both families:
    /// `media.rtp_advertise6`, else `sip.advertise6`.
    pub fn media_ip6(&self) -> Option<IpAddr> {
        self.media.rtp_advertise6.or(self.sip.advertise6)
    }

    /// The ICE candidate for browsers: `media.webrtc_advertise`, else the
    /// `media.webrtc` address unless its IP is 0.0.0.0, else [`Self::media_ip`]
    /// with the `media.webrtc` port.
    pub fn webrtc_advertise(&self) -> SocketAddr {
        let w = self.media.webrtc;
        self.media.webrtc_advertise.unwrap_or_else(|| {
            SocketAddr::new(
                specific(w.ip()).unwrap_or_else(|| self.media_ip()),
                w.port(),
            )
        })
    }

    /// Origins allowed on the operator WebSocket: `http.allowed_origins`, else
    /// the origin of `http.public_url`. Empty: any origin (the runtime's rule).
    pub fn websocket_origins(&self) -> Vec<String> {
        if !self.http.allowed_origins.is_empty() {
            return self.http.allowed_origins.clone();
        }
        self.http
            .public_url
            .as_deref()
            .and_then(validate::origin_of)
            .into_iter()
            .collect()
    }

    /// The HS256 key for session tokens: `auth.token_secret`, or the contents of
    /// `auth.token_secret_file` without a trailing newline. Reads the file.
    pub fn token_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let fail = |key: &str, message: String| {
            ConfigError::invalid(None, None, vec![(key.to_string(), message)])
        };
        let (key, secret) = match (&self.auth.token_secret, &self.auth.token_secret_file) {
            (Some(s), _) => ("auth.token_secret", s.expose().as_bytes().to_vec()),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path).map_err(|e| {
                    fail(
                        "auth.token_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                ("auth.token_secret_file", bytes)
            }
            (None, None) => {
                return Err(fail(
                    "auth.token_secret",
                    "required (or auth.token_secret_file)".into(),
                ));
            }
        };
        if secret.len() < MIN_TOKEN_SECRET {
            return Err(fail(
                key,
                format!(
                    "must be at least {MIN_TOKEN_SECRET} bytes (has {})",
                    secret.len()
                ),
            ));
        }
        Ok(secret)
    }

    /// The API keys, for `POST /v1/tokens`.
    pub fn api_keys(&self) -> ApiKeys {
        ApiKeys::new(
            self.auth
                .api_keys
                .iter()
                // Every hash was checked when parsing.
                .filter_map(|k| ApiKey::from_hex(&k.name, &k.sha256, k.numbers.clone()))
                .collect(),
        )
    }

    /// Operator WebSocket settings.
    pub fn session_config(&self) -> SessionConfig {
        let s = &self.signalling;
        SessionConfig {
            hello_timeout: s.hello_timeout,
            heartbeat_interval: s.heartbeat_interval,
            missed_heartbeats: s.missed_heartbeats,
            rate_per_sec: s.rate_per_sec,
            burst: s.burst,
            max_strikes: s.max_strikes,
            max_message: s.max_message,
        }
    }

    /// The numbers as the bridge takes them.
    pub fn number_configs(&self) -> Vec<NumberConfig> {
        self.numbers
            .iter()
            .map(|n| NumberConfig {
                id: n.id.clone(),
                e164: n.e164.clone(),
                name: n.name.clone(),
                plan: DialPlan {
                    steps: n
                        .dial
                        .iter()
                        .map(|s| Step {
                            targets: s.ring.clone(),
                            timeout: s.timeout,
                            join: s.join,
                            record: s.record,
                        })
                        .collect(),
                    ringback: n.ringback,
                    record: n.record,
                    fork: n.fork.clone(),
                    siprec: n.siprec.clone(),
                },
                capabilities: n.capabilities.resolve(),
                room: n.room,
            })
            .collect()
    }

    /// Trunk peers written as host names (not IPs), `host:port` with the port
    /// filled in, each once: what to resolve (asynchronously, say) before
    /// calling [`Self::bridge_config`] with a lookup in the answers.
    pub fn peers_to_resolve(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.trunks {
            for p in t.peers.iter().filter(|p| p.ip().is_none()) {
                let hp = p.with_port(t.default_port());
                if !out.contains(&hp) {
                    out.push(hp);
                }
            }
        }
        out
    }

    /// The trunks as the bridge takes them. `resolve` gets a `host:port` written
    /// with a host name (see [`Self::peers_to_resolve`]); IP peers need no DNS.
    pub fn trunk_configs(
        &self,
        mut resolve: impl FnMut(&str) -> Result<Vec<SocketAddr>, String>,
    ) -> Result<Vec<TrunkConfig>, ConfigError> {
        let mut found = Vec::new();
        let mut trunks = Vec::with_capacity(self.trunks.len());
        for (i, t) in self.trunks.iter().enumerate() {
            let mut peers = Vec::new();
            for (j, p) in t.peers.iter().enumerate() {
                let port = p.port.unwrap_or(t.default_port());
                if let Some(ip) = p.ip() {
                    peers.push(SocketAddr::new(ip, port));
                    continue;
                }
                let hp = p.with_port(t.default_port());
                match resolve(&hp) {
                    Ok(addrs) if !addrs.is_empty() => peers.extend(addrs),
                    Ok(_) => found.push((
                        format!("trunks[{i}].peers[{j}]"),
                        format!("\"{hp}\" resolves to no address"),
                    )),
                    Err(e) => found.push((
                        format!("trunks[{i}].peers[{j}]"),
                        format!("cannot resolve \"{hp}\": {e}"),
                    )),
                }
            }
            trunks.push(TrunkConfig {
                name: t.name.clone(),
                host: t.host.clone(),
                peers,
                transport: t.transport,
                credentials: t.username.as_ref().map(|u| Credentials {
                    username: u.clone(),
                    password: t
                        .password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                }),
                register: t.register_aor(),
                inbound: t.inbound.clone(),
                codecs: t.codecs.clone(),
                dtmf: t.dtmf,
                ping_interval: t.ping_interval,
                ringback: t.ringback,
                session_expires: t.session_expires,
                late_offer: t.late_offer,
                require_100rel: t.require_100rel,
                update_offers: t.update_offers,
                accept_refer: t.accept_refer,
                transfer: match (t.transfer, t.refer_failure) {
                    (TransferSetting::Bridge, _) => TransferMode::Bridge,
                    (TransferSetting::Refer, f) => TransferMode::Refer {
                        bridge_on_failure: f == ReferFailure::Bridge,
                    },
                },
                siprec: t.siprec.clone(),
                latch: match t.latch {
                    LatchSetting::Strict => sip_bridge::config::Latch::Strict,
                    LatchSetting::Signalling => sip_bridge::config::Latch::Signalling,
                },
            });
        }
        if found.is_empty() {
            Ok(trunks)
        } else {
            Err(ConfigError::invalid(None, None, found))
        }
    }

    /// The bridge's configuration. `seed` seeds its ids (take it from the OS);
    /// `resolve` is as for [`Self::trunk_configs`].
    pub fn bridge_config(
        &self,
        seed: u64,
        resolve: impl FnMut(&str) -> Result<Vec<SocketAddr>, String>,
    ) -> Result<BridgeConfig, ConfigError> {
        let mut b = BridgeConfig::new(
            self.number_configs(),
            self.trunk_configs(resolve)?,
            self.media_ip(),
        );
        b.rtp_ports = (self.media.rtp_ports.first, self.media.rtp_ports.last);
        b.media_ip6 = self.media_ip6();
        b.outbound_ring_timeout = self.limits.outbound_ring_timeout;
        b.max_calls = self.limits.max_calls;
        b.max_parties = self.limits.max_parties;
        b.hold_music = self.media.hold_music == HoldMusic::Tone;
        b.max_call_duration = self.limits.max_call_duration;
        b.session = self.session_config();
        b.grace = self.limits.reconnect_grace;
        b.max_operators = self.limits.max_operators;
        b.open_inbound = self.sip.open_inbound;
        b.seed = seed;
        let r = &self.registrar;
        b.registrar = sip_bridge::registrar::RegistrarConfig {
            realm: r.realm.clone(),
            min_expires: r.min_expires,
            max_expires: r.max_expires,
            default_expires: r.default_expires,
            max_per_operator: r.max_per_operator,
            max_bindings: r.max_bindings,
            ban_after: r.ban_after,
            ban_window: r.ban_window,
            ban_for: r.ban_for,
            sha256: match r.sha256 {
                Sha256Setting::Off => sip_bridge::registrar::Sha256Offer::Off,
                Sha256Setting::After => sip_bridge::registrar::Sha256Offer::After,
                Sha256Setting::First => sip_bridge::registrar::Sha256Offer::First,
            },
            ring_both: r.ring_both,
            keepalive: r.keepalive,
            lookup_ttl: r.accounts_url.as_ref().map(|_| r.accounts_ttl),
            ..Default::default()
        };
        b.phones = self
            .phones
            .iter()
            .map(|p| sip_bridge::registrar::PhoneAccount {
                username: p.username.clone(),
                operator: p.operator.clone(),
                ha1_md5: p.ha1_md5.to_ascii_lowercase(),
                ha1_sha256: p.ha1_sha256.to_ascii_lowercase(),
                numbers: p
                    .numbers
                    .iter()
                    .filter_map(|n| self.numbers.iter().find(|c| c.id == *n || c.e164 == *n))
                    .map(|c| c.id.clone())
                    .collect(),
            })
            .collect();
        b.streams = self
            .streams
            .iter()
            .map(|s| sip_bridge::bridge::StreamTarget {
                url: s.url.clone(),
                // Checked when parsing.
                format: s.format.parse().unwrap_or_default(),
                headers: s
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
            .collect();
        Ok(b)
    }

    /// Things that are allowed but usually a mistake outside a test bench, each
    /// `key: why` (for `check-config` and the startup log).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let public = |ip: IpAddr| !ip.is_loopback();
        if self.sip.open_inbound && !self.demo.enabled {
            w.push("sip.open_inbound: any source may call in (demo/testing only)".into());
        }
        if self.demo.enabled && public(self.http.listen.ip()) {
            w.push(format!(
                "demo.enabled: anyone who reaches {} gets operator tokens from /demo/token",
                self.http.listen
            ));
        }
        if let Some(k) = self
            .auth
            .api_keys
            .iter()
            .find(|k| k.sha256.eq_ignore_ascii_case(DEMO_API_KEY_SHA256))
            && public(self.http.listen.ip())
        {
            w.push(format!(
                "auth.api_keys: \"{}\" is the demo key \"{DEMO_API_KEY}\", which everyone knows",
                k.name
            ));
        }
        if self.auth.api_keys.is_empty() && !self.demo.enabled {
            w.push("auth.api_keys: none: no backend can ask for operator tokens".into());
        }
        if self.websocket_origins().is_empty() && public(self.http.listen.ip()) {
            w.push(
                "http.allowed_origins: not set (nor http.public_url): pages of any site may open operator sessions"
                    .into(),
            );
        }
        if self.http.allowed_origins.iter().any(|o| o == "*") {
            w.push("http.allowed_origins: \"*\" lets any web page drive operator sessions".into());
        }
        w
    }

    /// One line about what this config runs, for `check-config` and the log.
    pub fn summary(&self) -> String {
        let mut sip = Vec::new();
        for (name, a) in [
            ("udp", self.sip.udp),
            ("tcp", self.sip.tcp),
            ("tls", self.sip.tls),
        ] {
            if let Some(a) = a {
                sip.push(format!("{name} {a}"));
            }
        }
        format!(
            "numbers: {}, trunks: {}, API keys: {}; SIP {} (advertised as {}); HTTP {}; WebRTC {} (advertised as {}); RTP {}:{} ({} streams, advertised as {}){}",
            self.numbers.len(),
            self.trunks.len(),
            self.auth.api_keys.len(),
            sip.join(", "),
            self.sip_advertise(),
            self.http.listen,
            self.media.webrtc,
            self.webrtc_advertise(),
            self.media.rtp_bind,
            self.media.rtp_ports,
            self.media.rtp_ports.pairs(),
            self.media_ip(),
            if self.demo.enabled { "; demo on" } else { "" },
        )
    }
}

/// What `sbc check-config FILE` does: [`SbcConfig::load`], then reads the files
/// the config names (token secret, TLS certificate and key) so a deployment
/// finds a missing or short one before the service starts. No DNS.
pub fn check_config_file(path: &Path) -> Result<SbcConfig, ConfigError> {
    let (text, cfg) = SbcConfig::load_text(path)?;
    let mut found = Vec::new();
    if let Err(e) = cfg.token_secret() {
        found.extend(
            e.problems()
                .iter()
                .map(|p| (p.key.clone(), p.message.clone())),
        );
    }
    for (key, file) in [
        ("sip.tls_cert", &cfg.sip.tls_cert),
        ("sip.tls_key", &cfg.sip.tls_key),
        ("sip.tls_ca", &cfg.sip.tls_ca),
        ("http.tls_cert", &cfg.http.tls_cert),
        ("http.tls_key", &cfg.http.tls_key),
    ] {
        if let Some(f) = file
            && let Err(e) = std::fs::File::open(f)
        {
            found.push((key.to_string(), format!("cannot read {}: {e}", f.display())));
        }
    }
    if found.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::invalid(Some(path), Some(&text), found))
    }
}

/// A resolver for [`SbcConfig::bridge_config`] using the system's (blocking)
/// DNS. Fine at startup or in `spawn_blocking`; not on a runtime worker.
pub fn resolve_with_system_dns(host_port: &str) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_dns(host_port: &str) -> Result<Vec<SocketAddr>, String> {
        Err(format!("unexpected DNS lookup of {host_port}"))
    }

    fn example_text() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sbc.example.toml");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn demo_is_loopback_only_and_converts() {
        let c = SbcConfig::demo();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(c.sip.udp, Some(SocketAddr::new(lo, 5060)));
        assert_eq!(c.sip.tcp, Some(SocketAddr::new(lo, 5060)));
        assert_eq!(c.sip.tls, None);
        assert_eq!(c.http.listen, SocketAddr::new(lo, 8080));
        assert_eq!(c.media.webrtc, SocketAddr::new(lo, 3478));
        assert_eq!(
            c.media.rtp_ports,
            PortRange {
                first: 20000,
                last: 20999
            }
        );
        assert_eq!((c.media_ip(), c.sip_advertise()), (lo, lo));
        assert_eq!(c.webrtc_advertise(), SocketAddr::new(lo, 3478));
        assert!(c.demo.enabled && c.sip.open_inbound && c.trunks.is_empty());
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());

        // The demo key: only its hash is stored, and it is the published one.
        assert_eq!(
            sip_bridge::token::hash_api_key(DEMO_API_KEY),
            DEMO_API_KEY_SHA256
        );
        assert_eq!(
            c.api_keys().check(DEMO_API_KEY).map(|k| k.name.as_str()),
            Some("demo")
        );
        assert!(c.api_keys().check("other").is_none());
        assert!(c.token_secret().unwrap().len() >= MIN_TOKEN_SECRET);

        let b = c.bridge_config(7, no_dns).unwrap();
        assert!(b.open_inbound && b.trunks.is_empty());
        assert_eq!((b.media_ip, b.rtp_ports, b.seed), (lo, (20000, 20999), 7));
        let plan = |id: &str| b.number(id).unwrap().plan.steps.clone();
        let step = |t: Target, s: u64| Step::new(vec![t], Duration::from_secs(s));
        assert_eq!(
            plan("+15550100"),
            vec![step(Target::Operators, 30), step(Target::Echo, 30)]
        );
        assert_eq!(plan("echo"), vec![step(Target::Echo, 30)]);
        assert_eq!(plan("+15550001"), plan("echo"));
        assert_eq!(plan("tone"), vec![step(Target::Tone(1000), 30)]);
        assert_eq!(b.number("tone").unwrap().e164, "+15550002");
        assert_eq!(plan("sales"), vec![step(Target::Operators, 20)]);
        assert_eq!(b.number("+15550200").unwrap().id, "sales");
        assert!(b.number("+15550500").unwrap().room, "a meet-me room");
        assert_eq!(b.numbers.len(), 5);
        assert!(c.summary().contains("demo on"), "{}", c.summary());
    }

    #[test]
    fn example_parses_and_converts() {
        let c = SbcConfig::parse(&example_text()).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        assert!(!c.demo.enabled && !c.sip.open_inbound);
        assert!(c.sip.tls.is_some() && c.sip.tls_cert.is_some());
        assert!(!c.auth.api_keys.is_empty() && c.webhooks.is_some());
        assert!(c.auth.token_secret_file.is_some());

        let mut asked = Vec::new();
        let names = c.peers_to_resolve();
        let b = c
            .bridge_config(1, |hp| {
                asked.push(hp.to_string());
                Ok(vec!["192.0.2.50:5061".parse().unwrap()])
            })
            .unwrap();
        assert_eq!(asked, names, "only host names are resolved, each once");
        assert!(!b.trunks.is_empty() && !b.numbers.is_empty());
        let carrier = &b.trunks[b.trunk_named("carrier").unwrap()];
        assert_eq!(carrier.transport, Transport::Udp);
        assert_eq!(
            carrier.peers,
            ["198.51.100.10:5060", "198.51.100.11:5060"].map(|a| a.parse().unwrap())
        );
        assert!(carrier.credentials.is_some());
        assert!(carrier.accepts_from("198.51.100.77".parse().unwrap()));
        assert_eq!(carrier.ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(b.media_ip, c.media.rtp_advertise.unwrap());
        // Every number's plan survives the conversion.
        for n in &c.numbers {
            let got = b.number(&n.id).unwrap();
            assert_eq!(got.plan.steps.len(), n.dial.len(), "{}", n.id);
        }
    }

    #[test]
    fn defaults_are_the_cores() {
        let c = SbcConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.session_config(), SessionConfig::default());
        let b = c.bridge_config(1, no_dns).unwrap();
        let core = core_defaults();
        assert_eq!(b.rtp_ports, core.rtp_ports);
        assert_eq!(
            (
                b.max_calls,
                b.max_operators,
                b.max_call_duration,
                b.outbound_ring_timeout,
                b.grace
            ),
            (
                core.max_calls,
                core.max_operators,
                core.max_call_duration,
                core.outbound_ring_timeout,
                core.grace
            )
        );
        assert_eq!(c.auth.token_ttl, Duration::from_secs(3600));
        assert_eq!(c.protection.scanner_user_agents.len(), 9);
        assert_eq!(c.log.format, LogFormat::Text);
        // A number without a plan rings the operators; its name is its id.
        let c = SbcConfig::parse(&format!(
            "{MINIMAL}[[numbers]]\nid = \"a\"\ne164 = \"+15550100\"\n"
        ))
        .unwrap();
        assert_eq!(c.numbers[0].name, "a");
        assert_eq!(c.numbers[0].dial, ring_operators());
    }

    const MINIMAL: &str = "[sip]\nudp = \"127.0.0.1:5060\"\n[auth]\ntoken_secret = \"0123456789abcdef0123456789abcdef\"\n";

    const TRUNK: &str = "[[trunks]]\nname = \"carrier\"\nhost = \"sip.carrier.example\"\npeers = [\"198.51.100.10:5060\"]\n";

    #[test]
    fn both_address_families_bind_any_ipv6_and_advertise_one_address_each() {
        let secret = "[auth]\ntoken_secret = \"0123456789abcdef0123456789abcdef\"\n";
        let both = format!(
            "[sip]\nudp = \"[::]:5060\"\nadvertise = \"192.0.2.1\"\nadvertise6 = \"2001:db8::1\"\n\
             [media]\nrtp_bind = \"::\"\n{secret}"
        );
        let c = SbcConfig::parse(&both).unwrap();
        assert_eq!(c.media_ip(), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.media_ip6(), Some("2001:db8::1".parse().unwrap()));
        let b = c.bridge_config(1, |_| Ok(Vec::new())).unwrap();
        assert_eq!(
            b.media_ip_for(true),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            b.media_ip_for(false),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        // A listener on one family cannot take the other's peers.
        let e = error(&both.replace("[::]:5060", "127.0.0.1:5060"));
        assert!(e.contains("sip.udp: must listen on [::]"), "{e}");
        let e = error(&both.replace("rtp_bind = \"::\"", "rtp_bind = \"0.0.0.0\""));
        assert!(e.contains("media.rtp_bind: must be \"::\""), "{e}");
        let e = error(&both.replace("2001:db8::1", "192.0.2.2"));
        assert!(
            e.contains("sip.advertise6: must be a concrete IPv6 address"),
            "{e}"
        );
    }

    /// The error for `text`, as one string.
    fn error(text: &str) -> String {
        match SbcConfig::parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// `MINIMAL` with `extra` appended must fail at `key` with `message` in it.
    #[track_caller]
    fn rejects(extra: &str, key: &str, message: &str) {
        let e = error(&format!("{MINIMAL}{extra}"));
        assert!(e.contains(&format!("{key}: ")), "no key `{key}` in: {e}");
        assert!(e.contains(message), "no `{message}` in: {e}");
        assert!(e.contains("(line "), "no line in: {e}");
    }

    #[test]
    fn cluster_and_admin_sections_default_and_are_checked() {
        let c = SbcConfig::parse(MINIMAL).unwrap();
        assert!(c.cluster.is_none() && c.admin.listen.is_none());
        let example = example_text().replace("# [cluster]", "[cluster]").replace(
            "# node = \"sbc-1\"                          # unique",
            "node = \"sbc-1\" # unique",
        );
        let example = example
            .replace("# redis_url", "redis_url")
            .replace("# heartbeat", "heartbeat")
            .replace("# lease", "lease")
            .replace("# redis_timeout", "redis_timeout");
        let c = SbcConfig::parse(&example).unwrap_or_else(|e| panic!("{e}"));
        let k = c.cluster.unwrap();
        assert_eq!(
            (k.node.as_str(), k.redis_url.as_str()),
            ("sbc-1", "redis://10.0.0.5:6379/0")
        );
        assert_eq!(k.heartbeat, Duration::from_millis(500));
        assert_eq!(c.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        let with = |extra: &str| {
            format!("[cluster]\nnode = \"n1\"\nredis_url = \"redis://r:6379\"\n{extra}")
        };
        rejects(&with(""), "sip.tcp", "TCP");
        let tcp = MINIMAL.replace("[auth]", "tcp = \"127.0.0.1:5060\"\n[auth]");
        let k = SbcConfig::parse(&format!("{tcp}{}", with("")))
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            (k.lease, k.redis_timeout),
            (Duration::from_millis(1500), Duration::from_millis(250))
        );
        rejects(&with("lease = \"600ms\"\n"), "cluster.lease", "twice");
        rejects(
            &with("redis_timeout = \"1s\"\n"),
            "cluster.redis_timeout",
            "below",
        );
        rejects(
            "[cluster]\nnode = \"a b\"\nredis_url = \"redis://r\"\n",
            "cluster.node",
            "letters",
        );
        rejects(
            "[cluster]\nnode = \"a\"\nredis_url = \"http://r\"\n",
            "cluster.redis_url",
            "redis://",
        );
    }

    #[test]
    fn opus_complexity_is_auto_unless_a_number_is_given() {
        let media = |extra: &str| {
            SbcConfig::parse(&format!("{MINIMAL}{extra}"))
                .unwrap()
                .media
        };
        assert_eq!(media("").opus_complexity, OpusComplexity::Auto);
        assert_eq!(
            media("[media]\nopus_complexity = \"auto\"\n").opus_complexity,
            OpusComplexity::Auto
        );
        assert_eq!(
            media("[media]\nopus_complexity = 0\n").opus_complexity,
            OpusComplexity::Fixed(0)
        );
        assert_eq!(
            media("[media]\nopus_complexity = 10\n").opus_complexity,
            OpusComplexity::Fixed(10)
        );
    }

    #[test]
    fn numbers_and_steps_record_and_the_recording_section_has_defaults() {
        let cfg = SbcConfig::parse(&format!(
            "{MINIMAL}[recording]\ndir = \"/var/rec\"\nretention = \"30d\"\nqueue = \"2s\"\n\
             [[numbers]]\nid = \"a\"\ne164 = \"+15550400\"\nrecord = true\n\
             [[numbers]]\nid = \"b\"\ne164 = \"+15550401\"\nrecord = {{ channels = \"mono\", format = \"opus\", rate = 16000 }}\n\
             [[numbers]]\nid = \"c\"\ne164 = \"+15550402\"\ndial = [{{ ring = [\"operators\"], record = true }}]\n"
        ))
        .unwrap();
        let n = cfg.number_configs();
        assert_eq!(n[0].plan.record, Some(RecordOptions::default()));
        let b = n[1].plan.record.unwrap();
        assert_eq!(
            (b.channels, b.format, b.rate),
            (
                sip_bridge::contract::RecordChannels::Mono,
                sip_bridge::contract::RecordFormat::Opus,
                16000
            )
        );
        assert_eq!((n[2].plan.record, n[2].plan.steps[0].record), (None, true));
        assert_eq!(cfg.recording.dir, PathBuf::from("/var/rec"));
        assert_eq!(
            cfg.recording.retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(cfg.recording.queue, Duration::from_secs(2));
        assert_eq!(cfg.recording.max_duration, Duration::from_secs(4 * 3600));
        rejects(
            "[[numbers]]\nid = \"x\"\ne164 = \"+15550400\"\nrecord = { rate = 44100 }\n",
            "numbers[0].record",
            "rate 44100",
        );
    }

    #[test]
    fn phones_keep_ha1s_and_bad_ones_are_named() {
        let a = sip_bridge::registrar::PhoneAccount::new("alice-desk", "alice", "sbc", "pw");
        let cfg = SbcConfig::parse(&format!(
            "{MINIMAL}[registrar]\nrealm = \"sbc\"\nmin_expires = \"30s\"\nsha256 = \"after\"\n\
             [[phones]]\nusername = \"alice-desk\"\noperator = \"alice\"\n\
             ha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n",
            a.ha1_md5,
            a.ha1_sha256.to_ascii_uppercase()
        ))
        .unwrap();
        let b = cfg.bridge_config(1, |_| Ok(vec![])).unwrap();
        assert_eq!(b.phones, vec![a]);
        assert_eq!(b.registrar.min_expires, Duration::from_secs(30));
        assert_eq!(
            b.registrar.sha256,
            sip_bridge::registrar::Sha256Offer::After
        );
        rejects(
            "[[phones]]\nusername = \"bob\"\noperator = \"bob\"\nha1_md5 = \"xyz\"\nha1_sha256 = \"00\"\n",
            "phones[0].ha1_md5",
            "32 hex digits",
        );
        rejects(
            "[registrar]\nmin_expires = \"2h\"\n",
            "registrar.min_expires",
            "at most max_expires",
        );
    }

    #[test]
    fn numbers_and_trunks_name_a_siprec_server() {
        let cfg = SbcConfig::parse(&format!(
            "{MINIMAL}{TRUNK}siprec = {{ srs = \"sip:srs@192.0.2.9:5080;transport=tcp\" }}\n\
             [[numbers]]\nid = \"a\"\ne164 = \"+15550400\"\n\
             siprec = {{ srs = \"sip:rec@192.0.2.8\", fail_closed = true }}\n"
        ))
        .unwrap();
        let n = cfg.number_configs();
        assert_eq!(
            n[0].plan.siprec,
            Some(SiprecOptions {
                srs: "sip:rec@192.0.2.8".into(),
                fail_closed: true
            })
        );
        let t = cfg.trunk_configs(|_| Ok(vec![])).unwrap();
        let s = t[0].siprec.as_ref().unwrap();
        assert_eq!(
            (s.srs.as_str(), s.fail_closed),
            ("sip:srs@192.0.2.9:5080;transport=tcp", false)
        );
        // The core resolves no names: an SRS is an address.
        rejects(
            "[[numbers]]\nid = \"x\"\ne164 = \"+15550400\"\nsiprec = { srs = \"sip:srs@rec.example\" }\n",
            "numbers[0].siprec",
            "not an IP address",
        );
        rejects(
            "[[numbers]]\nid = \"x\"\ne164 = \"+15550400\"\nsiprec = { srs = \"http://x\" }\n",
            "numbers[0].siprec",
            "sip: URI",
        );
    }

    #[test]
    fn numbers_take_join_rooms_and_capabilities() {
        let cfg = SbcConfig::parse(&format!(
            "{MINIMAL}[[numbers]]\nid = \"conf\"\ne164 = \"+15550400\"\ndial = [{{ ring = [\"operators\"], join = \"all\" }}]\n\
             [numbers.capabilities]\nagent = [\"add_participant\"]\n\
             [[numbers]]\nid = \"room\"\ne164 = \"+15550401\"\nroom = true\n"
        ))
        .unwrap();
        let n = cfg.number_configs();
        assert_eq!(n[0].plan.steps[0].join, Join::All);
        assert_eq!(n[0].capabilities.agent.names(), ["add_participant"]);
        assert_eq!(
            n[0].capabilities.supervisor,
            RoleCapabilities::default().supervisor,
            "a role left out keeps its default"
        );
        assert!(n[1].room && !n[0].room);
        rejects(
            "[[numbers]]\nid = \"x\"\ne164 = \"+15550400\"\ndial = [{ ring = [\"operators\"], join = \"most\" }]\n",
            "numbers[0].dial[0].join",
            "\"most\" is not a join",
        );
        rejects(
            "[[numbers]]\nid = \"x\"\ne164 = \"+15550400\"\n[numbers.capabilities]\nagent = [\"fly\"]\n",
            "numbers[0].capabilities.agent[0]",
            "\"fly\" is not a capability",
        );
    }

    #[test]
    fn toml_syntax_errors_have_a_line() {
        let e = error("[sip\nudp = 1\n");
        assert!(e.starts_with("TOML syntax: unclosed table"), "{e}");
        assert!(e.contains("(line 1, column 5)"), "{e}");
        let e = error("[sip]\nudp = \"a\" \"b\"\n");
        assert!(e.starts_with("sip: TOML syntax: "), "{e}");
        assert!(e.contains("(line 2, column 11)"), "{e}");
        // A duplicate key is named, though toml drops it from its tree.
        let e = error(&format!("{MINIMAL}{TRUNK}name = \"again\"\n"));
        assert!(
            e.starts_with("trunks[0].name: TOML syntax: duplicate key (line 9"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_sections_are_refused() {
        let e = error("[sip]\nudpp = \"127.0.0.1:5060\"\n");
        assert!(e.starts_with("sip.udpp: unknown field `udpp`"), "{e}");
        assert!(e.contains("line 2, column 1"), "{e}");
        let e = error("[sipp]\n");
        assert!(e.contains("sipp: unknown field"), "{e}");
        rejects(
            &format!("{TRUNK}pasword = \"x\"\n"),
            "trunks[0].pasword",
            "unknown field",
        );
        rejects(
            "[[numbers]]\nid = \"a\"\ne164 = \"+15550100\"\ndial = [{ ring = [\"echo\"], timout = \"5s\" }]\n",
            "numbers[0].dial[0].timout",
            "unknown field",
        );
    }

    #[test]
    fn wrong_types_and_missing_keys() {
        rejects(
            "[limits]\nmax_calls = \"many\"\n",
            "limits.max_calls",
            "invalid type",
        );
        rejects(
            "[limits]\nmax_calls = -1\n",
            "limits.max_calls",
            "invalid value",
        );
        rejects(
            "[[trunks]]\nname = \"c\"\npeers = [\"198.51.100.1\"]\n",
            "trunks[0]",
            "missing field `host`",
        );
        rejects(
            "[demo]\nenabled = \"yes\"\n",
            "demo.enabled",
            "invalid type",
        );
    }

    #[test]
    fn bad_addresses() {
        let e = error("[sip]\nudp = \"127.0.0.1:x\"\n");
        assert!(
            e.starts_with("sip.udp: \"127.0.0.1:x\" is not an IP:port address"),
            "{e}"
        );
        let e = error(&MINIMAL.replace("[sip]\n", "[sip]\nadvertise = \"public\"\n"));
        assert!(
            e.starts_with("sip.advertise: \"public\" is not an IP address"),
            "{e}"
        );
        rejects(
            &TRUNK.replace("5060\"]", "5060\", \"x:y\"]"),
            "trunks[0].peers[1]",
            "\"x:y\" is not host:port",
        );
        rejects(
            &format!("{TRUNK}inbound = [\"198.51.100.0/33\"]\n"),
            "trunks[0].inbound[0]",
            "bad prefix",
        );
        rejects(
            &format!("{TRUNK}inbound = [\"carrier\"]\n"),
            "trunks[0].inbound[0]",
            "not an IP address or CIDR",
        );
        rejects(
            &TRUNK.replace("sip.carrier.example", "sip://carrier"),
            "trunks[0].host",
            "is not a host name or IP",
        );
    }

    #[test]
    fn bad_dial_targets() {
        let e = error(&format!(
            "{MINIMAL}{TRUNK}[[numbers]]\nid = \"a\"\ne164 = \"+15550100\"\n[[numbers]]\nid = \"b\"\ne164 = \"+15550101\"\ndial = [{{ ring = [\"operators\", \"echo\", \"pst:+1\"] }}]\n"
        ));
        assert!(
            e.starts_with("numbers[1].dial[0].ring[2]: bad dial target `pst:+1`: expected"),
            "{e}"
        );
        assert!(e.contains("(line 15, column 40)"), "{e}");
        rejects(
            &format!(
                "{TRUNK}[[numbers]]\nid = \"a\"\ne164 = \"+15550100\"\ndial = [{{ ring = [\"pstn:+15550111@other\"] }}]\n"
            ),
            "numbers[0].dial[0].ring[0]",
            "trunk \"other\", which is not configured (trunks: carrier)",
        );
        rejects(
            "[[numbers]]\nid = \"a\"\ne164 = \"+15550100\"\ndial = [{ ring = [\"pstn:+15550111\"] }]\n",
            "numbers[0].dial[0].ring[0]",
            "no [[trunks]]",
        );
        rejects(
            "[[numbers]]\nid = \"a\"\ne164 = \"+15550100\"\ndial = [{ ring = [] }]\n",
            "numbers[0].dial[0].ring",
            "at least one target",
        );
        rejects(
            "[[numbers]]\nid = \"a\"\ne164 = \"+15550100\"\ndial = []\n",
            "numbers[0].dial",
            "at least one step",
        );
    }

    #[test]
    fn bad_durations() {
        rejects(
            "[limits]\nmax_call_duration = \"4 hours\"\n",
            "limits.max_call_duration",
            "is not a duration",
        );
        rejects(
            "[media]\nmedia_timeout = \"60\"\n",
            "media.media_timeout",
            "is not a duration",
        );
        rejects(
            "[limits]\nmax_call_duration = \"0s\"\n",
            "limits.max_call_duration",
            "above 0s",
        );
        let e = error(&MINIMAL.replace("[auth]\n", "[auth]\ntoken_ttl = \"48h\"\n"));
        assert!(
            e.contains("auth.token_ttl: must be between 1s and 24h"),
            "{e}"
        );
    }

    #[test]
    fn token_secret_rules() {
        let e = error("[sip]\nudp = \"127.0.0.1:5060\"\n[auth]\ntoken_secret = \"short\"\n");
        assert!(
            e.contains("auth.token_secret: must be at least 32 bytes (has 5) (line 4"),
            "{e}"
        );
        let e = error("[sip]\nudp = \"127.0.0.1:5060\"\n");
        assert!(e.contains("auth.token_secret: required"), "{e}");
        let e = error(&format!("{MINIMAL}token_secret_file = \"/x\"\n"));
        assert!(e.contains("auth.token_secret_file: set either"), "{e}");
    }

    #[test]
    fn duplicates_are_refused() {
        let two = |a: &str, b: &str| {
            format!(
                "[[numbers]]\nid = \"{a}\"\ne164 = \"+15550100\"\n[[numbers]]\nid = \"{b}\"\ne164 = \"+15550101\"\n"
            )
        };
        rejects(
            &two("a", "a"),
            "numbers[1].id",
            "\"a\" is already numbers[0].id",
        );
        rejects(
            &two("a", "b").replace("+15550101", "+15550100"),
            "numbers[1].e164",
            "\"+15550100\" is already numbers[0].e164",
        );
        rejects(
            &format!("{TRUNK}{TRUNK}"),
            "trunks[1].name",
            "\"carrier\" is already trunks[0].name",
        );
        let key = |n: &str| {
            format!("[[auth.api_keys]]\nname = \"{n}\"\nsha256 = \"{DEMO_API_KEY_SHA256}\"\n")
        };
        rejects(
            &format!("{}{}", key("a"), key("a")),
            "auth.api_keys[1].name",
            "already",
        );
        rejects(
            &format!("{}{}", key("a"), key("b")),
            "auth.api_keys[1].sha256",
            "the same key as auth.api_keys[0]",
        );
    }

    #[test]
    fn numbers_and_api_keys() {
        rejects(
            "[[numbers]]\nid = \"a\"\ne164 = \"15550100\"\n",
            "numbers[0].e164",
            "is not E.164",
        );
        rejects(
            "[[numbers]]\nid = \"a b\"\ne164 = \"+15550100\"\n",
            "numbers[0].id",
            "letters, digits",
        );
        rejects(
            "[[auth.api_keys]]\nname = \"backend\"\nsha256 = \"my-secret-key\"\n",
            "auth.api_keys[0].sha256",
            "64 hex digits (`sbc hash-key KEY` prints it)",
        );
        rejects(
            &format!(
                "[[numbers]]\nid = \"support\"\ne164 = \"+15550100\"\n[[auth.api_keys]]\nname = \"b\"\nsha256 = \"{DEMO_API_KEY_SHA256}\"\nnumbers = [\"+15550100\"]\n"
            ),
            "auth.api_keys[0].numbers[0]",
            "unknown number id \"+15550100\" (that is the E.164 of \"support\"; write the id)",
        );
    }

    #[test]
    fn sip_rules() {
        let e = error("[auth]\ntoken_secret = \"0123456789abcdef0123456789abcdef\"\n");
        assert!(e.contains("sip: no listener"), "{e}");
        let e = error(&MINIMAL.replace("[sip]\n", "[sip]\ntls = \"127.0.0.1:5061\"\n"));
        assert!(
            e.contains("sip.tls_cert: required with sip.tls (line 1"),
            "{e}"
        );
        assert!(e.contains("sip.tls_key: required with sip.tls"), "{e}");
        let e = error(&MINIMAL.replace("[sip]\n", "[sip]\ntls_key = \"/k.pem\"\n"));
        assert!(e.contains("sip.tls_key: set only with sip.tls"), "{e}");
        let e = error(&format!("{MINIMAL}[http]\ntls_cert = \"/c.pem\"\n"));
        assert!(
            e.contains("http.tls_key: required with http.tls_cert"),
            "{e}"
        );
        let e = error(&MINIMAL.replace("[sip]\n", "[sip]\nuser_agent = \"sbc\\r\\nX-Evil: 1\"\n"));
        assert!(e.contains("sip.user_agent: "), "{e}");
        let e = error(&MINIMAL.replace("127.0.0.1:5060", "0.0.0.0:5060"));
        assert!(e.contains("sip.advertise: needed when"), "{e}");
        rejects(
            &format!("{TRUNK}codecs = [\"PCMU\", \"G729\"]\n"),
            "trunks[0].codecs[1]",
            "unknown codec \"G729\"",
        );
        rejects(
            &format!("{TRUNK}codecs = [\"PCMU\", \"pcmu\"]\n"),
            "trunks[0].codecs[1]",
            "PCMU is listed twice",
        );
        rejects(
            &format!("{TRUNK}transport = \"sctp\"\n"),
            "trunks[0].transport",
            "expected udp, tcp or tls",
        );
        rejects(
            &format!("{TRUNK}password = \"p\"\n"),
            "trunks[0].username",
            "required with password",
        );
        rejects(
            &format!("{TRUNK}register = true\n"),
            "trunks[0].register",
            "needs trunks[0].username",
        );
        rejects(
            &format!("{TRUNK}register = \"alice\"\n"),
            "trunks[0].register",
            "is not an AOR",
        );
        rejects(
            &format!("{TRUNK}dtmf = \"inband\"\n"),
            "trunks[0].dtmf",
            "expected rfc4733 or info",
        );
    }

    #[test]
    fn ports_and_listeners() {
        rejects(
            "[media]\nrtp_ports = \"20001-30000\"\n",
            "media.rtp_ports",
            "must be even",
        );
        rejects(
            "[media]\nrtp_ports = \"30000-20000\"\n",
            "media.rtp_ports",
            "must be above the first",
        );
        let e = error(&MINIMAL.replace(
            "[sip]\n",
            "[http]\nlisten = \"0.0.0.0:5060\"\n[sip]\ntcp = \"127.0.0.1:5060\"\n",
        ));
        assert!(
            e.contains("http.listen: 0.0.0.0:5060 clashes with sip.tcp (127.0.0.1:5060)"),
            "{e}"
        );
        rejects(
            "[media]\nwebrtc = \"0.0.0.0:20002\"\n",
            "media.rtp_ports",
            "includes media.webrtc's port 20002",
        );
        rejects(
            "[media]\nwebrtc = \"127.0.0.1:5060\"\n",
            "media.webrtc",
            "clashes with sip.udp",
        );
        rejects(
            "[http]\nallowed_origins = [\"ops.example.com\"]\n",
            "http.allowed_origins[0]",
            "is not an origin",
        );
        rejects(
            "[http]\npublic_url = \"sbc.example.com\"\n",
            "http.public_url",
            "is not an http(s) URL",
        );
        rejects(
            "[webhooks]\nurl = \"ftp://x\"\nsecret = \"s\"\n",
            "webhooks.url",
            "is not an http(s) URL",
        );
        rejects("[log]\nlevel = \"loud\"\n", "log.level", "not a log level");
        rejects("[log]\nformat = \"xml\"\n", "log.format", "unknown variant");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = SbcConfig::parse(&format!(
            "{MINIMAL}[limits]\nmax_calls = 0\n[signalling]\nburst = 0\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["limits.max_calls", "signalling.burst"]);
        assert_eq!(
            e.problems()[0].position,
            Some(Position {
                line: 6,
                column: 13
            })
        );
        assert_eq!(e.to_string().lines().count(), 2);
    }

    #[test]
    fn files_are_named_and_read() {
        let dir = std::env::temp_dir().join(format!("sbc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("sbc.toml");
        let secret = dir.join("secret");

        let e = SbcConfig::load(&dir.join("missing.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string().starts_with("cannot read ") && e.to_string().contains("missing.toml"),
            "{e}"
        );

        let text = format!(
            "[sip]\nudp = \"127.0.0.1:5060\"\n[auth]\ntoken_secret_file = \"{}\"\n",
            secret.display()
        );
        std::fs::write(&cfg, &text).unwrap();
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let c = check_config_file(&cfg).unwrap();
        assert_eq!(
            c.token_secret().unwrap(),
            b"0123456789abcdef0123456789abcdef"
        );

        std::fs::write(&secret, "short\n").unwrap();
        let e = check_config_file(&cfg).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: auth.token_secret_file: must be at least 32 bytes (has 5) (line 4",
                cfg.display()
            )),
            "{e}"
        );

        std::fs::remove_file(&secret).unwrap();
        let e = check_config_file(&cfg).unwrap_err().to_string();
        assert!(e.contains("auth.token_secret_file: cannot read"), "{e}");

        std::fs::write(&cfg, format!("{text}[sip.x]\n")).unwrap();
        let e = check_config_file(&cfg).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: ", cfg.display())) && e.contains("sip.x: unknown field"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn values_are_normalized_for_the_runtime() {
        let c = SbcConfig::parse(&format!(
            "{MINIMAL}[http]\nallowed_origins = [\"HTTPS://Ops.Example.com:443/\", \"*\"]\npublic_url = \"https://sbc.example.com/\"\n[protection]\nscanner_user_agents = [\"VaxSIPUserAgent\"]\n"
        ))
        .unwrap();
        assert_eq!(c.http.allowed_origins, ["https://ops.example.com", "*"]);
        assert_eq!(
            c.http.public_url.as_deref(),
            Some("https://sbc.example.com")
        );
        assert_eq!(c.protection.scanner_user_agents, ["vaxsipuseragent"]);
        let c = SbcConfig::parse(&format!(
            "{MINIMAL}[http]\npublic_url = \"https://SBC.example.com:443/base\"\n"
        ))
        .unwrap();
        assert_eq!(c.websocket_origins(), ["https://sbc.example.com"]);
        assert!(
            SbcConfig::parse(MINIMAL)
                .unwrap()
                .websocket_origins()
                .is_empty()
        );
        // Values the runtime cannot take as "off" are refused rather than mapped.
        rejects(
            "[media]\nmedia_timeout = \"0s\"\n",
            "media.media_timeout",
            "above 0s",
        );
        rejects(
            "[media]\nopus_complexity = 11\n",
            "media.opus_complexity",
            "0 (cheapest) to 10 (best)",
        );
        rejects(
            "[media]\nopus_complexity = \"best\"\n",
            "media.opus_complexity",
            "\"auto\" or a whole number",
        );
        rejects(
            "[media]\nopus_complexity = -1\n",
            "media.opus_complexity",
            "out of range",
        );
        rejects(
            "[protection]\nrate_limit_requests = 0\n",
            "protection.rate_limit_requests",
            "at least 1",
        );
        rejects(
            "[protection]\nban_time = \"0s\"\n",
            "protection.ban_time",
            "above 0s",
        );
    }

    #[test]
    fn resolver_failures_name_the_peer() {
        let c = SbcConfig::parse(&format!("{MINIMAL}{TRUNK}").replace(
            "[\"198.51.100.10:5060\"]",
            "[\"198.51.100.10\", \"sip.carrier.example\"]",
        ))
        .unwrap();
        assert_eq!(c.peers_to_resolve(), ["sip.carrier.example:5060"]);
        let e = c.bridge_config(1, no_dns).unwrap_err().to_string();
        assert!(
            e.starts_with("trunks[0].peers[1]: cannot resolve \"sip.carrier.example:5060\""),
            "{e}"
        );
        let e = c
            .bridge_config(1, |_| Ok(Vec::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("resolves to no address"), "{e}");
        let t = &c
            .trunk_configs(|_| Ok(vec!["192.0.2.9:5060".parse().unwrap()]))
            .unwrap()[0];
        assert_eq!(
            t.peers,
            ["198.51.100.10:5060", "192.0.2.9:5060"].map(|a| a.parse().unwrap())
        );
    }
}
