//! Sans-IO SIP/WebRTC bridge: the SIP core (messages, transactions, dialogs, SDP,
//! digest authentication), the browser side and the calls that join them.
//!
//! Like `media-core`, nothing here opens a socket or reads a clock: inputs come
//! with `now`, outputs are polled.

pub mod bridge;
pub mod media;
pub mod presence;
pub mod sdp;
pub mod signalling;
pub mod sip;
pub mod stream;
pub mod token;
pub mod webrtc;
