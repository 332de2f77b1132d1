//! Sans-IO, zero-copy RTP media for the SIP/WebRTC bridge.
//!
//! * [`rtp`]: packet views over [`bytes::Bytes`], header writer, unwrapping.
//! * [`codec`]: G.711 (bit-exact with ITU-T G.191), Opus (libopus), concealment.
//! * [`resample`]: streaming polyphase FIR between 8/16/24/48 kHz.
//! * [`dtmf`]: RFC 4733 telephone-events and in-band tones.
//! * [`jitter`]: the adaptive jitter buffer and playout clock.
//! * [`mix`]: N-party mixing on one call clock (who-hears-whom matrix, talk
//!   detection, soft limiter, groups of identical outputs).
//! * [`pipeline`]: depacketize -> jitter buffer -> decode -> resample -> encode ->
//!   packetize, or relay in place.
//! * [`record`]: recording files (a PCM16 WAV written as it goes, its header
//!   patched in place) and the bounded frame queue in front of the writer.
//!
//! # The run-loop contract
//!
//! Every stateful type is a sans-IO state machine: feed it with `handle_*(now,
//! ..)`, ask [`pipeline::MediaPipeline::poll_timeout`] (and friends) when to call
//! `handle_timeout(now)` next, and drain `poll_*` until `None` after every call.
//! The driver owns sockets and timers; nothing here blocks, spawns or sleeps.
//!
//! # Time
//!
//! `now` is a [`time::Instant`]: microseconds since an epoch the driver picks.
//! Tests start at [`Instant::ZERO`] and step virtual time; the `sbc` driver maps
//! the runtime clock onto it. Reading the clock here is banned by `clippy.toml`.
//!
//! # Panics
//!
//! Input from the network (packets, payloads) never panics: it is an error that
//! costs that packet and is counted. Panics are reserved for caller bugs (a
//! too-small output buffer where documented).
//!
//! # Example: PCMU in, Opus out
//!
//! ```
//! use bytes::Bytes;
//! use media_core::codec::{Codec, g711};
//! use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
//! use media_core::rtp::{PayloadType, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
//! use media_core::Instant;
//!
//! let pcmu = RtpFormat::new(Codec::Pcmu, PayloadType::PCMU);
//! let opus = RtpFormat::new(Codec::Opus, PayloadType::new(111).unwrap());
//! let mut p = MediaPipeline::new(PipelineConfig::new(Endpoint::Rtp(pcmu), Endpoint::Rtp(opus), Ssrc(7), 1)).unwrap();
//!
//! // One 20 ms PCMU packet of a quiet signal...
//! let mut payload = [0u8; 160];
//! g711::ulaw_encode(&[100i16; 160], &mut payload);
//! let mut buf = [0u8; 200];
//! let len = RtpWriter::new(PayloadType::PCMU, SeqNo(1), RtpTimestamp(160), Ssrc(1)).write_packet(&payload, &mut buf).unwrap();
//! let packet = RtpPacket::parse(Bytes::copy_from_slice(&buf[..len])).unwrap();
//! p.handle_rtp(Instant::ZERO, &packet).unwrap();
//!
//! // ...comes out as one Opus packet with our SSRC.
//! let out = p.poll_packet().expect("a packet");
//! let view = media_core::rtp::RtpHeader::parse(out.bytes).unwrap();
//! assert_eq!(view.ssrc, Ssrc(7));
//! assert_eq!(view.payload_type.value(), 111);
//! ```

#![warn(missing_docs)]

pub mod analysis;
pub mod codec;
pub mod dtmf;
pub mod jitter;
pub mod mix;
pub mod pcap;
pub mod pipeline;
pub mod record;
pub mod resample;
pub mod rtp;
pub mod testdata;
pub mod time;

pub use time::{ClockRate, Instant, Millis, SampleRate, SeededRng};
