//! RTP (RFC 3550): a zero-copy packet view, header extensions (RFC 8285), a header
//! writer into caller-owned buffers, and sequence/timestamp unwrapping.

mod extension;
mod packet;
pub mod rtcp;
mod sequence;
mod writer;

pub use extension::{ExtensionIter, ExtensionProfile, HeaderExtension};
pub use packet::{RtpHeader, RtpPacket};
pub use sequence::{SeqUnwrapper, TimestampUnwrapper};
pub use writer::RtpWriter;

use std::fmt;

/// Fixed RTP header length in bytes (RFC 3550 section 5.1).
pub const FIXED_HEADER_LEN: usize = 12;

/// RTP payload type (7 bits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PayloadType(u8);

impl PayloadType {
    /// PCMU, static (RFC 3551 section 6).
    pub const PCMU: PayloadType = PayloadType(0);
    /// PCMA, static (RFC 3551 section 6).
    pub const PCMA: PayloadType = PayloadType(8);

    /// A payload type; `None` above 127.
    pub const fn new(pt: u8) -> Option<PayloadType> {
        if pt < 128 {
            Some(PayloadType(pt))
        } else {
            None
        }
    }

    /// The 7-bit value.
    pub const fn value(self) -> u8 {
        self.0
    }
}

/// RTP sequence number (16 bits, wraps).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SeqNo(pub u16);

/// RTP timestamp in clock-rate ticks (32 bits, wraps).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct RtpTimestamp(pub u32);

impl RtpTimestamp {
    /// `self + ticks`, wrapping as RTP does.
    pub const fn wrapping_add(self, ticks: u32) -> RtpTimestamp {
        RtpTimestamp(self.0.wrapping_add(ticks))
    }
}

/// Synchronization source identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Ssrc(pub u32);

/// What is wrong with a packet that is not valid RTP. The peer sent it; it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Fewer bytes than the fixed header, CSRC list or extension announce.
    #[error("packet truncated: {needed} bytes needed, {len} present")]
    Truncated {
        /// Bytes the header claims.
        needed: usize,
        /// Bytes present.
        len: usize,
    },
    /// Version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// Padding count is zero or larger than the payload.
    #[error("padding count {count} invalid for {available} payload bytes")]
    BadPadding {
        /// The last byte of the packet.
        count: u8,
        /// Bytes after the header.
        available: usize,
    },
    /// An RFC 8285 element runs past the extension block.
    #[error("header extension element overruns its block")]
    ExtensionOverrun,
    /// Caller misuse: the output buffer cannot hold what is written.
    #[error("buffer of {len} bytes too small, {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        len: usize,
    },
    /// Caller misuse: an extension cannot be written (id/length out of range).
    #[error("header extension id {id} with {len} bytes cannot be encoded")]
    BadExtension {
        /// Element id.
        id: u8,
        /// Element length.
        len: usize,
    },
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
