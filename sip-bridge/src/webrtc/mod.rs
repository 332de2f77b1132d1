//! The browser leg: WebRTC audio as an ICE-lite server, sans-IO, on str0m.
//!
//! * [`WebRtcLeg`]: one browser's PeerConnection, answered from its SDP offer.
//!   ICE-lite ([RFC 8445 section 2.5]), DTLS-SRTP ([RFC 5764]), audio only: Opus
//!   ([RFC 7587]) and telephone-event ([RFC 4733]); video and data sections are
//!   rejected with port 0. str0m runs in RTP mode: whole RTP packets go in and out,
//!   because the bridge's own jitter buffer and transcoder (media-core) consume them.
//! * [`WebRtcMux`]: maps datagrams on the one shared UDP port to leg keys. It never
//!   owns legs (the call that owns a leg does).
//!
//! Security: DTLS, SRTP and SRTCP are only taken from an address that sent a STUN
//! check signed with the leg's ICE password. Both [`WebRtcMux::route`] and
//! [`WebRtcLeg::handle_input`] enforce it. Skipping that check is what let a forged
//! DTLS ClientHello tear down calls in Asterisk, FreeSWITCH and rtpengine
//! (CVE-2023-49786, CVE-2023-51443).
//!
//! Media: inbound Opus and RFC 4733 telephone-events both come out as
//! [`WebRtcEvent::Rtp`] (plain RTP, `media_core::rtp::RtpPacket::parse` reads it;
//! [`PayloadTypes`] tells them apart); outbound packets go in whole through
//! [`WebRtcLeg::send_rtp`]. This is where the zero-allocation media path ends:
//! str0m allocates per packet (payload copy, datagram buffer), and the leg adds one
//! buffer per inbound packet for the rebuilt RTP bytes.
//!
//! Time: str0m wants `std::time::Instant`; the cores speak [`media_core::Instant`].
//! The driver picks one `std::time::Instant` epoch (the same one its own
//! `media_core::Instant` counts from) and puts it in [`WebRtcConfig`]; the leg adds
//! `now` to it. Virtual time in tests works the same way.
//!
//! [RFC 8445 section 2.5]: https://www.rfc-editor.org/rfc/rfc8445#section-2.5
//! [RFC 5764]: https://www.rfc-editor.org/rfc/rfc5764
//! [RFC 7587]: https://www.rfc-editor.org/rfc/rfc7587
//! [RFC 4733]: https://www.rfc-editor.org/rfc/rfc4733

mod config;
mod leg;
mod mux;
mod offer;
mod stun;

pub use config::{DtlsIdentity, WebRtcConfig, deadline_from_std};
pub use leg::{DisconnectReason, FailReason, WebRtcEvent, WebRtcLeg, WebRtcStats};
pub use mux::{MuxConfig, MuxCredentials, MuxError, MuxStats, WebRtcMux};
pub use offer::PayloadTypes;

use std::net::SocketAddr;

use bytes::Bytes;

/// A datagram to send from the shared WebRTC port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The browser's address.
    pub to: SocketAddr,
    /// The whole UDP payload (STUN, DTLS, SRTP or SRTCP).
    pub bytes: Bytes,
}

/// What can go wrong with a browser leg.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebRtcError {
    /// The offer is not SDP we can read (peer).
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    /// The offer has no usable audio section (peer).
    #[error("offer has no audio section")]
    NoAudio,
    /// The offer's audio section lacks opus/48000/2 (peer).
    #[error("offer has no Opus 48 kHz in its audio section")]
    NoOpus,
    /// str0m refused the offer or failed on input (peer, or a str0m limitation).
    #[error("WebRTC: {0}")]
    Rtc(#[from] str0m::RtcError),
    /// The DTLS certificate could not be made (startup).
    #[error("cannot generate a DTLS certificate")]
    Certificate,
    /// The configured public address cannot be an ICE candidate (caller).
    #[error("bad candidate address: {0}")]
    Candidate(String),
    /// `send_rtp` got bytes that are not an RTP packet (caller).
    #[error("outbound packet is not RTP: {0}")]
    BadRtp(#[from] media_core::rtp::RtpError),
    /// `send_rtp` used a payload type the answer did not negotiate (caller).
    #[error("payload type {0} not negotiated")]
    PayloadType(u8),
}
