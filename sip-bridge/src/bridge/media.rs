//! The contract between a call's control (in [`super::Bridge`]) and its media
//! session (`crate::media`, one per call, in its own task in the SBC): commands
//! down, events up. Control never touches packets; media never decides call state.

use std::net::SocketAddr;

use media_core::pipeline::RtpFormat;

use crate::stream::{StreamFormat, StreamStart};

/// A leg within one call.
pub type LegKey = u32;

/// A generated tone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tone {
    /// North American ringback (440 + 480 Hz, 2 s on, 4 s off).
    Ringback,
    /// A continuous sine.
    Hz(u32),
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
    },
    /// New SDP for an RTP leg (re-INVITE, early media to final answer).
    UpdateRtp {
        /// The leg.
        leg: LegKey,
        /// Where to send.
        remote: Option<SocketAddr>,
        /// The negotiated format.
        format: RtpFormat,
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
    /// Plays a tone into a leg (ringback while targets ring), or stops it.
    Tone {
        /// The leg.
        leg: LegKey,
        /// The tone, `None` to stop.
        tone: Option<Tone>,
    },
    /// Audio of `a` goes to `b` and `b` to `a` (ending the tone on both).
    Connect {
        /// One leg.
        a: LegKey,
        /// The other.
        b: LegKey,
    },
    /// `leg` hears itself (the echo test target).
    Echo {
        /// The leg.
        leg: LegKey,
    },
    /// What `leg` sends goes nowhere, and it gets nothing but silence.
    Disconnect {
        /// The leg.
        leg: LegKey,
    },
    /// The far end hears silence instead of `leg`.
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
    /// The call is over: release everything.
    Stop,
}

/// What a call's media session reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaEvent {
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
    /// The agent hands the caller to a dial-plan target.
    StreamTransfer {
        /// The leg.
        leg: LegKey,
        /// The target (`operators`, `operator:REF`, `pstn:+1555...`).
        target: String,
    },
}

/// RTP ports handed to SIP legs: even ports of a range (RTCP on port + 1).
#[derive(Clone, Debug)]
pub struct PortPool {
    free: std::collections::VecDeque<u16>,
    capacity: usize,
}

impl PortPool {
    /// Even ports in `min..=max`.
    pub fn new(min: u16, max: u16) -> Self {
        let start = min + (min % 2);
        let free: std::collections::VecDeque<u16> = (start..max).step_by(2).collect();
        PortPool {
            capacity: free.len(),
            free,
        }
    }

    /// A port, or `None` when all are in use.
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    /// Returns a port (it goes to the back: not reused at once, so late packets
    /// of the old call do not reach the next one).
    pub fn give(&mut self, port: u16) {
        if self.free.len() < self.capacity && !self.free.contains(&port) {
            self.free.push_back(port);
        }
    }

    /// Ports in use.
    pub fn in_use(&self) -> usize {
        self.capacity - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_even_bounded_and_reused_last() {
        let mut p = PortPool::new(10001, 10010);
        let got: Vec<u16> = std::iter::from_fn(|| p.take()).collect();
        assert_eq!(got, vec![10002, 10004, 10006, 10008]);
        assert_eq!(p.in_use(), 4);
        p.give(10004);
        p.give(10004);
        p.give(10002);
        assert_eq!(p.take(), Some(10004));
        assert_eq!(p.take(), Some(10002));
        assert_eq!(p.take(), None);
    }
}
