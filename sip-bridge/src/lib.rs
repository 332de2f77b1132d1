//! Sans-IO SIP/WebRTC bridge: the SIP core, the browser side, and the calls
//! that join them.
//!
//! * [`sip`]: messages (rsip types, our validation), transactions (RFC 3261
//!   section 17), the UA core with dialogs as legs, digest authentication, stream
//!   framing.
//! * [`sdp`]: offer/answer for audio (RFC 3264, RFC 8866).
//! * [`webrtc`]: the browser leg on str0m (ICE-lite, DTLS-SRTP, Opus) and the
//!   demultiplexer of the shared UDP port.
//! * [`token`], [`signalling`], [`presence`]: session tokens, protocol v1 for
//!   operators, who is online on which number.
//! * [`call`]: one call as a state machine (its parties, dial plan, media graph,
//!   timers); [`bridge`]: the control plane that routes inputs to calls and
//!   applies their outputs (the UA, presence, ports and trunks they share);
//!   [`contract`]: ids and the commands/events between a call and its media;
//!   [`media`]: one call's media session; [`stream`]: the AI agent leg;
//!   [`plan`], [`config`], [`roles`]: dial plans, configuration, roles and
//!   capabilities.
//!
//! # The run-loop contract
//!
//! Like `media-core`, nothing here opens a socket, spawns a task or reads a
//! clock. Each state machine takes input through `handle_*(now, ..)`, says when
//! it next needs `handle_timeout(now)` through `poll_timeout()`, and hands its
//! output out through `poll_*` (`poll_transmit`, `poll_event`, ...), which the
//! driver drains after every input. The `sbc` crate is that driver; the scenario
//! tests in `tests/` are another, on virtual time.
//!
//! # Time
//!
//! `now` is a [`media_core::Instant`] (microseconds from a driver-chosen epoch).
//! Wall-clock facts (token expiry) come in as Unix seconds next to it.
//!
//! # Panics
//!
//! Nothing a peer sends (SIP, SDP, JSON, RTP, STUN/DTLS) panics: bad input gets
//! an error response or is dropped and counted, and never disturbs other calls.
//! Fuzz targets in `fuzz/` hold every parser and state machine to that.
//!
//! # Example: a call between two user agents
//!
//! ```
//! use media_core::Instant;
//! use sip_bridge::sip::dialog::{InviteParams, LocalAddr, UaConfig, UaEvent, UserAgent};
//! use sip_bridge::sip::message::Peer;
//!
//! let a_addr = Peer::udp("192.0.2.1:5060".parse().unwrap());
//! let b_addr = Peer::udp("192.0.2.2:5060".parse().unwrap());
//! let mut a = UserAgent::new(UaConfig::new(LocalAddr::udp("192.0.2.1".parse().unwrap(), 5060), 1));
//! let mut b = UserAgent::new(UaConfig::new(LocalAddr::udp("192.0.2.2".parse().unwrap(), 5060), 2));
//! let now = Instant::ZERO;
//! let leg = a
//!     .invite(now, InviteParams {
//!         request_uri: "sip:+15550100@192.0.2.2".into(),
//!         from: "<sip:+15550111@192.0.2.1>".into(),
//!         to: "<sip:+15550100@192.0.2.2>".into(),
//!         peer: b_addr,
//!         sdp: None,
//!         headers: vec![],
//!         credentials: None,
//!         body_type: None,
//!         contact_params: None,
//!         flow: false,
//!     })
//!     .unwrap();
//! // The driver's job: move bytes between them, and act on events.
//! for _ in 0..10 {
//!     while let Some(t) = a.poll_transmit() { b.handle_bytes(now, &t.bytes, a_addr); }
//!     while let Some(t) = b.poll_transmit() { a.handle_bytes(now, &t.bytes, b_addr); }
//!     while let Some(e) = b.poll_event() {
//!         if let UaEvent::IncomingInvite { leg, .. } = e {
//!             b.respond(now, leg, 200, None, &[]).unwrap();
//!         }
//!     }
//! }
//! assert!(std::iter::from_fn(|| a.poll_event()).any(|e| matches!(e, UaEvent::Answered { leg: l, .. } if l == leg)));
//! ```

#![warn(missing_docs)]

pub mod bridge;
pub mod call;
pub mod cluster;
pub mod config;
pub mod contract;
pub mod fork;
pub mod media;
pub mod plan;
pub mod presence;
pub mod registrar;
pub mod roles;
pub mod sdp;
pub mod signalling;
pub mod sip;
pub mod siprec;
pub mod stream;
pub mod time;
pub mod token;
pub mod webrtc;
