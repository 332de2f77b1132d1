//! A shared encoder: one frame of PCM in, one 20 ms payload out, for every
//! listener whose output format it serves (a mixer's full mix, encoded once per
//! format and packetized per listener with [`MediaPipeline::handle_encoded`]).

use super::fifo::SLOT;
use super::transcode::encoder_config;
use super::{Endpoint, MediaPipeline, OUTPUT_PTIME, PipelineConfig, PipelineError, RtpFormat};
use crate::codec::{AudioEncoder, Codec, OpusEncoderConfig};
use crate::resample::Resampler;
use crate::rtp::FIXED_HEADER_LEN;
use crate::time::SampleRate;

/// What decides the bytes an encoder makes of a PCM stream: two listeners whose
/// outputs have equal keys can be sent one encoder's payloads (their payload
/// types, SSRCs, sequence numbers and timestamps may differ: each listener's
/// pipeline writes its own). See [`MediaPipeline::encoder_key`] and
/// [`FrameEncoder::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EncoderKey {
    /// Rate of the PCM frames it takes.
    pub input_rate: SampleRate,
    /// The codec.
    pub codec: Codec,
    /// The Opus encoder's settings after the receiver's `fmtp` narrowed them
    /// (`None` for G.711).
    pub opus: Option<OpusEncoderConfig>,
}

impl EncoderKey {
    /// The key of an encoder for `format` fed PCM at `input_rate`, with `opus`
    /// settings as a [`PipelineConfig`] gives them.
    pub fn new(input_rate: SampleRate, format: &RtpFormat, opus: OpusEncoderConfig) -> Self {
        let enc_rate = format.codec.pcm_rate_toward(input_rate);
        EncoderKey {
            input_rate,
            codec: format.codec,
            opus: (format.codec == Codec::Opus).then(|| encoder_config(format, enc_rate, opus)),
        }
    }
}

/// Encodes 20 ms PCM frames at one rate into payloads for one [`RtpFormat`]:
/// the resampler (when the codec's rate differs) and the codec encoder with the
/// same settings as a transcoding pipeline's output (the receiver's Opus `fmtp`
/// included), so its payloads are the ones that pipeline would have made.
/// Allocates nothing after [`FrameEncoder::new`].
///
/// Keep feeding it every tick while anyone may use it: an Opus encoder's
/// state follows the stream it is given.
#[derive(Debug)]
pub struct FrameEncoder {
    key: EncoderKey,
    frame: usize,
    resampler: Resampler,
    encoder: AudioEncoder,
    resampled: Vec<i16>,
    payload: Vec<u8>,
}

impl FrameEncoder {
    /// An encoder for `format` fed 20 ms frames at `input_rate`, with `opus`
    /// settings (the rate is chosen here, the format's `fmtp` narrows them).
    pub fn new(
        input_rate: SampleRate,
        format: RtpFormat,
        opus: OpusEncoderConfig,
    ) -> Result<Self, PipelineError> {
        let key = EncoderKey::new(input_rate, &format, opus);
        let enc_rate = format.codec.pcm_rate_toward(input_rate);
        let encoder = AudioEncoder::new(format.codec, key.opus.unwrap_or(opus))?;
        let resampler = Resampler::new(input_rate, enc_rate);
        let frame = input_rate.samples_in(OUTPUT_PTIME);
        Ok(FrameEncoder {
            key,
            frame,
            resampled: vec![0; resampler.max_output(frame)],
            resampler,
            encoder,
            payload: vec![0; SLOT - FIXED_HEADER_LEN],
        })
    }

    /// The encoder a pipeline built from `config` (PCM in, RTP out) has, so
    /// that its payloads can be given to that pipeline's
    /// [`MediaPipeline::handle_encoded`].
    pub fn for_output(config: &PipelineConfig) -> Result<Self, PipelineError> {
        match (config.input, config.output) {
            (Endpoint::Pcm(rate), Endpoint::Rtp(format)) => Self::new(rate, format, config.opus),
            _ => Err(PipelineError::WrongInput(
                "a FrameEncoder stands in for a PCM-input, RTP-output pipeline",
            )),
        }
    }

    /// What its payloads depend on: equal keys, interchangeable payloads.
    pub fn key(&self) -> EncoderKey {
        self.key
    }

    /// Samples in the frames it takes (20 ms at its input rate).
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Encodes one 20 ms frame; returns the payload (valid until the next call).
    /// With Opus DTX, a payload of 2 bytes or less is silence that
    /// [`MediaPipeline::handle_encoded`] does not send.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<&[u8], PipelineError> {
        if pcm.len() != self.frame {
            return Err(PipelineError::WrongInput(
                "a FrameEncoder takes one 20 ms frame",
            ));
        }
        let n = self
            .resampler
            .process(pcm, &mut self.resampled)
            .map_err(|_| PipelineError::WrongInput("resampler buffer"))?;
        let len = self
            .encoder
            .encode(&self.resampled[..n], &mut self.payload)?;
        Ok(&self.payload[..len])
    }
}

impl MediaPipeline {
    /// The key of the encoder this pipeline's output has (PCM input, RTP output;
    /// `None` otherwise): a [`FrameEncoder`] with an equal key makes the
    /// payloads it would make, to give to [`MediaPipeline::handle_encoded`].
    pub fn encoder_key(&self) -> Option<EncoderKey> {
        match &self.mode {
            super::Mode::Transcode(t) => t.encoder_key(),
            super::Mode::Relay(_) => None,
        }
    }
}
