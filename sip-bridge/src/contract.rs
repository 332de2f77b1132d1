//! The contract between a call's control ([`crate::call::Call`]) and its media
//! session ([`crate::media::MediaSession`], one per call, in its own task in the
//! SBC): ids, commands down, events up. A leaf: it names no other room of the
//! crate but the AI agent's framing. Control never touches packets; media never
//! decides call state.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use media_core::pipeline::RtpFormat;

use crate::stream::{StreamFormat, StreamStart};

/// A call, unique in one bridge. On the wire (protocol, webhooks, CDRs) it is
/// `c-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c-{}", self.0)
    }
}

impl std::str::FromStr for CallId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<CallId, IdError> {
        s.strip_prefix("c-")
            .filter(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(CallId)
            .ok_or(IdError)
    }
}

/// A leg of one call, which is also its party: on the wire `p-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LegKey(pub u32);

impl fmt::Display for LegKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p-{}", self.0)
    }
}

impl std::str::FromStr for LegKey {
    type Err = IdError;

    fn from_str(s: &str) -> Result<LegKey, IdError> {
        s.strip_prefix("p-")
            .filter(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(LegKey)
            .ok_or(IdError)
    }
}

/// A call or participant id that does not parse (`c-N`, `p-N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a call (c-N) or participant (p-N) id")]
pub struct IdError;

/// A recording of a call, unique across restarts (its file's name): on the
/// wire `rec-` and 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordingId(pub u64);

impl fmt::Display for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rec-{:016x}", self.0)
    }
}

impl std::str::FromStr for RecordingId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<RecordingId, IdError> {
        s.strip_prefix("rec-")
            .filter(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|n| u64::from_str_radix(n, 16).ok())
            .map(RecordingId)
            .ok_or(IdError)
    }
}

/// What a recording (or a fork) holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RecordChannels {
    /// Channel 1 the customer, channel 2 everyone the customer hears.
    #[default]
    Dual,
    /// Both in one channel.
    Mono,
    /// The customer alone (a fork's `inbound` track).
    Customer,
    /// What the customer hears alone (a fork's `outbound` track).
    Others,
}

impl RecordChannels {
    /// Channels in the output.
    pub fn count(self) -> usize {
        match self {
            RecordChannels::Dual => 2,
            _ => 1,
        }
    }
}

/// A live media fork: where the call's audio streams while it goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkSpec {
    /// `ws://` or `wss://`.
    pub url: String,
    /// How frames go on the wire.
    pub framing: ForkFraming,
    /// Extra request headers (an authorization for the consumer).
    pub headers: Vec<(String, String)>,
}

/// A fork's wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ForkFraming {
    /// A JSON `start`, then one binary frame of PCM16LE per 20 ms
    /// (interleaved when two channels), JSON events between them.
    #[default]
    Native,
    /// Twilio Media Streams: `connected`, `start`, `media` (base64 u-law
    /// 8 kHz per track), `stop`.
    Twilio,
}

/// A recording's file format (the driver writes it; media gives PCM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RecordFormat {
    /// RIFF/WAVE PCM16.
    #[default]
    Wav,
    /// Ogg Opus (RFC 7845).
    Opus,
}

/// What a paused recording writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PauseBehavior {
    /// Silence of the pause's length: the file keeps the call's time.
    #[default]
    Silence,
    /// Nothing: the pause is cut from both channels.
    Skip,
}

/// How a recording is made, and what its file says about the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSpec {
    /// Channels.
    pub channels: RecordChannels,
    /// Format.
    pub format: RecordFormat,
    /// Sample rate of the file: 8000 or 16000 Hz.
    pub rate: u32,
    /// The call (`c-N`), its number, caller and callee, and who asked (for the
    /// timeline, the webhook and the API's scope).
    pub call: CallId,
    /// The number the call belongs to.
    pub number: Option<String>,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Who started it: `api`, `sdk`, or `plan` (the dial plan or the
    /// router's).
    pub source: String,
    /// Streamed live to a consumer instead of written to a file.
    pub fork: Option<ForkSpec>,
}

/// An entry of a recording's timeline, stamped by media with the recording's
/// offset when it is applied (joins, leaves, holds, transfers, DTMF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordNote {
    /// `joined`, `left`, `hold`, `unhold`, `transfer`, `dtmf`.
    pub event: String,
    /// The party concerned.
    pub party: Option<LegKey>,
    /// Its role, or the digit, or the transfer's state.
    pub detail: Option<String>,
}

/// A generated tone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Tone {
    /// North American ringback (440 + 480 Hz, 2 s on, 4 s off).
    Ringback,
    /// A continuous sine.
    Hz(u32),
    /// What a party held by someone hears when the call plays hold music
    /// (`BridgeConfig::hold_music`): a soft two-note chime (620 and 780 Hz,
    /// about -26 dBFS), 0.4 s every 3 s.
    Hold,
}

impl Tone {
    /// Whether the tone sounds `elapsed_ms` after it started (its cadence).
    pub fn sounds_at(self, elapsed_ms: u64) -> bool {
        match self {
            // 2 s on, 4 s off.
            Tone::Ringback => elapsed_ms % 6000 < 2000,
            Tone::Hold => elapsed_ms % 3000 < 400,
            Tone::Hz(_) => true,
        }
    }
}

/// A level on an edge of the call's media graph, in hundredths of a dB
/// (0 = as it came).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Level(pub i16);

impl Level {
    /// As it came.
    pub const UNITY: Level = Level(0);
    /// A cue under the conversation (ringback to someone who added a party).
    pub const CUE: Level = Level(-1200);

    /// In dB.
    pub fn db(self) -> f32 {
        f32::from(self.0) / 100.0
    }
}

/// What a listener hears: a leg of the call or a tone, at a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Feed {
    /// From where.
    pub from: FeedSource,
    /// How loud.
    pub level: Level,
}

impl Feed {
    /// Leg `k` as it came.
    pub fn leg(k: LegKey) -> Feed {
        Feed {
            from: FeedSource::Leg(k),
            level: Level::UNITY,
        }
    }

    /// A tone as generated.
    pub fn tone(t: Tone) -> Feed {
        Feed {
            from: FeedSource::Tone(t),
            level: Level::UNITY,
        }
    }
}

/// Where a feed comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FeedSource {
    /// What a leg sends (itself: an echo).
    Leg(LegKey),
    /// A generated tone.
    Tone(Tone),
}

/// What control asks of a call's media session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaCommand {
    /// An RTP leg toward a SIP peer, on our `local_port`. `remote` is `None`
    /// until the peer's SDP says where (and while it holds with 0.0.0.0).
    AddRtp {
        /// The leg.
        leg: LegKey,
        /// Our port.
        local_port: u16,
        /// Where to send.
        remote: Option<SocketAddr>,
        /// The negotiated format.
        format: RtpFormat,
        /// RTCP shares the RTP port (RFC 5761), else it is on port + 1.
        rtcp_mux: bool,
        /// Also latch to the first source from this address (the peer's SIP
        /// address: a phone behind NAT), not only the SDP's.
        latch_from: Option<IpAddr>,
    },
    /// New SDP for an RTP leg (re-INVITE, early media to final answer).
    UpdateRtp {
        /// The leg.
        leg: LegKey,
        /// Where to send.
        remote: Option<SocketAddr>,
        /// The negotiated format.
        format: RtpFormat,
        /// RTCP shares the RTP port (RFC 5761).
        rtcp_mux: bool,
    },
    /// A browser leg from its SDP offer; the answer comes back as
    /// [`MediaEvent::WebRtcAnswer`]. For an existing leg (a resumed call's new
    /// peer connection) the old one is replaced.
    AddWebRtc {
        /// The leg.
        leg: LegKey,
        /// The browser's offer.
        offer: String,
    },
    /// An AI agent leg over WebSocket; [`MediaEvent::StreamConnected`] once the
    /// agent is there.
    AddStream {
        /// The leg.
        leg: LegKey,
        /// `ws://` or `wss://` URL.
        url: String,
        /// Framing.
        format: StreamFormat,
        /// Extra request headers.
        headers: Vec<(String, String)>,
        /// What the agent is told in `start`.
        start: StreamStart,
    },
    /// `listener` hears exactly `feeds` from now on (nothing: silence). One
    /// feed at its level is a relay or a single transcode; more are mixed on
    /// the call's clock.
    Hear {
        /// Who hears.
        listener: LegKey,
        /// What.
        feeds: Vec<Feed>,
    },
    /// The others hear silence instead of `leg` (its stream to them goes on).
    Mute {
        /// The leg.
        leg: LegKey,
        /// Muted.
        on: bool,
    },
    /// `leg` is on hold: nothing is sent to it (what it sends, hold music for
    /// instance, still flows; mute it to stop that).
    Hold {
        /// The leg.
        leg: LegKey,
        /// Held.
        on: bool,
    },
    /// Tells AI agent `leg` how its warm transfer goes.
    StreamTransferState {
        /// The agent's leg.
        leg: LegKey,
        /// `ringing`, `consulting`, `completed`, `failed`, `cancelled`.
        state: String,
    },
    /// Sends DTMF into `leg` as RFC 4733 events.
    SendDtmf {
        /// The leg.
        leg: LegKey,
        /// Digits.
        digits: String,
    },
    /// Drops a leg.
    Remove {
        /// The leg.
        leg: LegKey,
    },
    /// Starts recording the call's audio (channels from [`Self::RecordFeeds`]).
    RecordStart {
        /// The recording.
        id: RecordingId,
        /// How.
        spec: Box<RecordSpec>,
    },
    /// What each of the recording's channels holds from now on: channel 1
    /// the customer's voice, channel 2 what the customer hears (tones left
    /// out). Empty feeds are silence of the right length.
    RecordFeeds {
        /// The recording.
        id: RecordingId,
        /// Channel 1 and 2.
        channels: [Vec<Feed>; 2],
    },
    /// Pauses the recording (card numbers): both channels together.
    RecordPause {
        /// The recording.
        id: RecordingId,
        /// Silence or skip.
        behavior: PauseBehavior,
    },
    /// Resumes a paused recording.
    RecordResume {
        /// The recording.
        id: RecordingId,
    },
    /// A timeline entry, at the recording's current offset.
    RecordNote {
        /// The recording.
        id: RecordingId,
        /// What.
        note: RecordNote,
    },
    /// Stops the recording; its file is finished.
    RecordStop {
        /// The recording.
        id: RecordingId,
    },
    /// The call is over: release everything.
    Stop,
}

impl MediaCommand {
    /// `a` and `b` hear each other and nothing else: a two-party call.
    pub fn connect(a: LegKey, b: LegKey) -> [MediaCommand; 2] {
        [
            MediaCommand::Hear {
                listener: a,
                feeds: vec![Feed::leg(b)],
            },
            MediaCommand::Hear {
                listener: b,
                feeds: vec![Feed::leg(a)],
            },
        ]
    }
}

/// What a SIP leg's peer reports in RTCP about the audio we send it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtcpQuality {
    /// Lost since its previous report, in 1/256.
    pub fraction_lost: u8,
    /// Interarrival jitter it measured, in ms.
    pub jitter_ms: u32,
    /// The round trip, in ms, when its report echoed one of our SRs.
    pub rtt_ms: Option<u32>,
}

/// What a call's media session reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaEvent {
    /// A SIP peer's RTCP report on what we send it (RFC 3550 6.4).
    Quality {
        /// The leg.
        leg: LegKey,
        /// What it reports.
        quality: RtcpQuality,
    },
    /// The SDP answer for an [`MediaCommand::AddWebRtc`].
    WebRtcAnswer {
        /// The leg.
        leg: LegKey,
        /// SDP.
        sdp: String,
    },
    /// The offer could not be answered (no Opus, malformed...).
    WebRtcFailed {
        /// The leg.
        leg: LegKey,
        /// Why.
        reason: String,
    },
    /// ICE and DTLS are up.
    WebRtcConnected {
        /// The leg.
        leg: LegKey,
    },
    /// The browser went away (no traffic past the timeout).
    WebRtcGone {
        /// The leg.
        leg: LegKey,
    },
    /// A DTMF digit arrived (RFC 4733) on a leg.
    Dtmf {
        /// The leg.
        leg: LegKey,
        /// The digit.
        digit: char,
        /// The media path already passed the event on (an RTP relay): control
        /// must not send it again to an RTP peer.
        relayed: bool,
    },
    /// No media from a leg for the configured time.
    MediaTimeout {
        /// The leg.
        leg: LegKey,
    },
    /// A local RTP port could not be opened.
    PortFailed {
        /// The leg.
        leg: LegKey,
    },
    /// The agent's WebSocket is up.
    StreamConnected {
        /// The leg.
        leg: LegKey,
    },
    /// The agent never came, stalled, or went away.
    StreamFailed {
        /// The leg.
        leg: LegKey,
        /// Why.
        reason: String,
    },
    /// The agent hung up the call.
    StreamHangup {
        /// The leg.
        leg: LegKey,
    },
    /// A fork's consumer sent a message back (an insight: a transcript
    /// line, a coaching hint), as JSON text.
    ForkMessage {
        /// The fork.
        id: RecordingId,
        /// What it sent (a JSON object, at most 4 KiB).
        text: String,
    },
    /// A fork's consumer never came, or went away and did not come back.
    ForkFailed {
        /// The fork.
        id: RecordingId,
        /// Why.
        reason: String,
    },
    /// The agent hands the caller to a dial-plan target.
    StreamTransfer {
        /// The leg.
        leg: LegKey,
        /// The target (`operators`, `operator:REF`, `pstn:+1555...`).
        target: String,
        /// It stays on to brief the target first (attended).
        warm: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_back() {
        assert_eq!(CallId(7).to_string(), "c-7");
        assert_eq!("c-7".parse::<CallId>(), Ok(CallId(7)));
        assert_eq!(LegKey(3).to_string(), "p-3");
        assert_eq!("p-3".parse::<LegKey>(), Ok(LegKey(3)));
        for bad in [
            "",
            "c-",
            "c-x",
            "7",
            "c--1",
            "c-99999999999999999999999",
            "p-1",
        ] {
            assert!(bad.parse::<CallId>().is_err(), "{bad}");
        }
        assert!("p-".parse::<LegKey>().is_err() && "c-1".parse::<LegKey>().is_err());
    }
}
