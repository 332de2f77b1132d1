//! Sans-IO, zero-copy RTP media for the SIP/WebRTC bridge.
//!
//! * [`rtp`]: packet views over [`bytes::Bytes`], header writer, unwrapping.
//! * [`codec`]: G.711 (bit-exact with ITU-T G.191), Opus (libopus), concealment.
//! * [`resample`]: streaming polyphase FIR between 8/16/24/48 kHz.
//! * [`dtmf`]: RFC 4733 telephone-events and in-band tones.
//! * [`pipeline`]: depacketize -> decode -> resample -> encode -> packetize, or relay.
//!
//! Nothing here opens a socket, spawns a task or reads a clock: time comes in as
//! `now` ([`time::Instant`]) and output is polled. Bad input is an error, never a
//! panic; panics are reserved for caller bugs and documented where they can happen.

pub mod analysis;
pub mod codec;
pub mod dtmf;
pub mod jitter;
pub mod pcap;
pub mod pipeline;
pub mod resample;
pub mod rtp;
pub mod testdata;
pub mod time;

pub use time::{ClockRate, Instant, Millis, SampleRate, SeededRng};
