//! Audio codecs: G.711 (PCMU/PCMA), Opus, and concealment for codecs without PLC.
//!
//! [`AudioEncoder`] and [`AudioDecoder`] are enums (static dispatch, no boxing) so a
//! pipeline holds its codecs inline. All APIs take `&[i16]` and write into
//! caller-owned buffers.

pub mod g711;
pub mod opus;
mod plc;

pub use self::opus::{OpusComplexity, OpusDecoder, OpusEncoder, OpusEncoderConfig, OpusFmtp};
pub use plc::Concealer;

use crate::rtp::PayloadType;
use crate::time::{ClockRate, SampleRate};

/// Codec failures. `Malformed` means the peer sent a bad payload; the others are
/// configuration or caller errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// libopus refused (the text is libopus's).
    #[error("opus: {0}")]
    Opus(&'static str),
    /// A payload that cannot be decoded.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
    /// A setting out of range.
    #[error("bad codec configuration: {0}")]
    BadConfig(&'static str),
    /// The output buffer is smaller than the frame.
    #[error("buffer of {len} too small, {needed} needed")]
    BufferTooSmall {
        /// Needed.
        needed: usize,
        /// Given.
        len: usize,
    },
}

/// The audio codecs the media core speaks on RTP.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Codec {
    /// G.711 u-law, 8 kHz.
    Pcmu,
    /// G.711 A-law, 8 kHz.
    Pcma,
    /// Opus, RTP clock 48 kHz (RFC 7587).
    Opus,
}

impl Codec {
    /// RTP clock rate.
    pub const fn clock_rate(self) -> ClockRate {
        match self {
            Codec::Pcmu | Codec::Pcma => ClockRate(8000),
            Codec::Opus => ClockRate(48000),
        }
    }

    /// SDP encoding name (RFC 3551, RFC 7587).
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Opus => "opus",
        }
    }

    /// Static payload type, if the codec has one.
    pub const fn static_payload_type(self) -> Option<PayloadType> {
        match self {
            Codec::Pcmu => Some(PayloadType::PCMU),
            Codec::Pcma => Some(PayloadType::PCMA),
            Codec::Opus => None,
        }
    }

    /// The rate the codec's PCM is naturally at. Opus can run at any supported rate.
    pub const fn natural_rate(self) -> SampleRate {
        match self {
            Codec::Pcmu | Codec::Pcma => SampleRate::HZ_8000,
            Codec::Opus => SampleRate::HZ_48000,
        }
    }

    /// The rate PCM for this codec should be handled at when the other side of a
    /// conversion is at `other`: G.711 is fixed at 8 kHz; Opus takes `other` and
    /// resamples inside libopus, which saves a resampler stage.
    pub const fn pcm_rate_toward(self, other: SampleRate) -> SampleRate {
        match self {
            Codec::Pcmu | Codec::Pcma => SampleRate::HZ_8000,
            Codec::Opus => other,
        }
    }
}

/// An encoder for one of [`Codec`].
#[derive(Debug)]
pub enum AudioEncoder {
    /// G.711 u-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// Opus.
    Opus(OpusEncoder),
}

impl AudioEncoder {
    /// An encoder for `codec`; `opus` configures Opus (its rate is the PCM rate).
    pub fn new(codec: Codec, opus: OpusEncoderConfig) -> Result<Self, CodecError> {
        Ok(match codec {
            Codec::Pcmu => AudioEncoder::Pcmu,
            Codec::Pcma => AudioEncoder::Pcma,
            Codec::Opus => AudioEncoder::Opus(OpusEncoder::new(opus)?),
        })
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        match self {
            AudioEncoder::Pcmu => Codec::Pcmu,
            AudioEncoder::Pcma => Codec::Pcma,
            AudioEncoder::Opus(_) => Codec::Opus,
        }
    }

    /// Rate of the PCM it takes.
    pub fn sample_rate(&self) -> SampleRate {
        match self {
            AudioEncoder::Opus(e) => e.sample_rate(),
            _ => SampleRate::HZ_8000,
        }
    }

    /// Delay the codec adds, in microseconds (Opus lookahead; G.711 has none).
    pub fn delay_micros(&self) -> u64 {
        match self {
            AudioEncoder::Opus(e) => e.lookahead() as u64 * 1_000_000 / e.sample_rate().hz() as u64,
            _ => 0,
        }
    }

    /// Encodes one frame of `pcm` into `out`; returns the payload length.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        match self {
            AudioEncoder::Pcmu | AudioEncoder::Pcma if out.len() < pcm.len() => {
                Err(CodecError::BufferTooSmall {
                    needed: pcm.len(),
                    len: out.len(),
                })
            }
            AudioEncoder::Pcmu => Ok(g711::ulaw_encode(pcm, out)),
            AudioEncoder::Pcma => Ok(g711::alaw_encode(pcm, out)),
            AudioEncoder::Opus(e) => e.encode(pcm, out),
        }
    }
}

/// A decoder for one of [`Codec`], with loss concealment.
#[derive(Debug)]
pub enum AudioDecoder {
    /// G.711 u-law with waveform-substitution PLC.
    Pcmu(Concealer),
    /// G.711 A-law with waveform-substitution PLC.
    Pcma(Concealer),
    /// Opus with libopus PLC and FEC.
    Opus(OpusDecoder),
}

impl AudioDecoder {
    /// A decoder for `codec`; Opus decodes straight to `rate` (G.711 is 8 kHz).
    pub fn new(codec: Codec, rate: SampleRate) -> Result<Self, CodecError> {
        Ok(match codec {
            Codec::Pcmu => AudioDecoder::Pcmu(Concealer::new(SampleRate::HZ_8000)),
            Codec::Pcma => AudioDecoder::Pcma(Concealer::new(SampleRate::HZ_8000)),
            Codec::Opus => AudioDecoder::Opus(OpusDecoder::new(rate)?),
        })
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        match self {
            AudioDecoder::Pcmu(_) => Codec::Pcmu,
            AudioDecoder::Pcma(_) => Codec::Pcma,
            AudioDecoder::Opus(_) => Codec::Opus,
        }
    }

    /// Rate of the PCM it produces.
    pub fn sample_rate(&self) -> SampleRate {
        match self {
            AudioDecoder::Opus(d) => d.sample_rate(),
            _ => SampleRate::HZ_8000,
        }
    }

    /// Samples (at the decoder's rate) that `payload` decodes to.
    pub fn payload_samples(&self, payload: &[u8]) -> Result<usize, CodecError> {
        match self {
            AudioDecoder::Opus(d) => d.packet_samples(payload),
            _ => Ok(payload.len()),
        }
    }

    /// Decodes `payload` into `out`; returns samples written.
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        let check = |out: &[i16]| {
            if out.len() < payload.len() {
                Err(CodecError::BufferTooSmall {
                    needed: payload.len(),
                    len: out.len(),
                })
            } else {
                Ok(())
            }
        };
        match self {
            AudioDecoder::Pcmu(plc) => {
                check(out)?;
                let n = g711::ulaw_decode(payload, out);
                plc.good(&mut out[..n]);
                Ok(n)
            }
            AudioDecoder::Pcma(plc) => {
                check(out)?;
                let n = g711::alaw_decode(payload, out);
                plc.good(&mut out[..n]);
                Ok(n)
            }
            AudioDecoder::Opus(d) => d.decode(payload, out),
        }
    }

    /// Fills all of `out` with concealment for lost audio.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        match self {
            AudioDecoder::Pcmu(plc) | AudioDecoder::Pcma(plc) => {
                plc.conceal(out);
                Ok(out.len())
            }
            AudioDecoder::Opus(d) => d.conceal(out),
        }
    }

    /// Fills `out` for the frame lost just before `next_payload`, from its FEC data
    /// when the codec has any, else by concealment.
    pub fn recover(&mut self, next_payload: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        match self {
            AudioDecoder::Opus(d) if opus::has_fec(next_payload) => {
                d.recover_fec(next_payload, out)
            }
            _ => self.conceal(out),
        }
    }
}
