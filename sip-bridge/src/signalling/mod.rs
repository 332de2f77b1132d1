//! Operator signalling, protocol v1 (`sbc/docs/protocol.md`): the JSON messages
//! and the per-connection state machine (authentication gate, rate limit,
//! heartbeats, size limits). Sans-IO: the driver feeds WebSocket text frames and
//! timer ticks, and sends what [`Session::poll_output`] returns.

mod message;
mod session;

pub use message::{
    CallDirection, CallInfo, CallSummary, ClientEnvelope, ClientMessage, DecodeError, EndReason,
    ErrorCode, NumberInfo, OperatorInfo, ParticipantInfo, RecordingInfo, Rejected, ServerMessage,
    decode, valid_digits,
};
pub use session::{Request, Session, SessionConfig, SessionOutput, SessionState};

/// Close codes (protocol.md section 2).
pub mod close {
    /// Normal close.
    pub const NORMAL: u16 = 1000;
    /// Unsupported protocol version.
    pub const PROTOCOL: u16 = 1002;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// No valid hello, or the token was rejected.
    pub const UNAUTHORIZED: u16 = 4001;
    /// Nothing received for `missedHeartbeats` intervals.
    pub const HEARTBEAT: u16 = 4008;
    /// The same operator connected again; the newer session wins.
    pub const REPLACED: u16 = 4009;
    /// Rate limited repeatedly.
    pub const RATE_LIMITED: u16 = 4029;
}
