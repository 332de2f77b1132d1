//! `sbc media transcode`: WAV -> encode -> seeded packet loss -> decode with
//! concealment -> WAV, through the same pipelines calls use.

use std::fmt;
use std::path::Path;

use bytes::Bytes;
use media_core::codec::Codec;
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, PipelineError, RtpFormat};
use media_core::rtp::{PayloadType, RtpPacket, Ssrc};
use media_core::{Instant, Millis, SampleRate, SeededRng};

/// What to do to the audio.
#[derive(Clone, Debug)]
pub struct TranscodeOptions {
    /// Codec on the wire.
    pub codec: Codec,
    /// Opus bitrate (bits/s); `None` for the default.
    pub bitrate: Option<u32>,
    /// Packet loss in percent.
    pub loss_percent: f64,
    /// Seed of the loss pattern.
    pub seed: u64,
}

/// What happened on the way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TranscodeReport {
    /// Input sample rate.
    pub rate: u32,
    /// Samples in (and out).
    pub samples: usize,
    /// Packets the encoder produced.
    pub packets: u64,
    /// Packets dropped by the simulated network.
    pub dropped: u64,
    /// Milliseconds the decoder concealed.
    pub concealed_ms: u64,
    /// Frames recovered from Opus in-band FEC.
    pub fec_recovered: u64,
    /// Average payload bitrate on the wire (bits/s).
    pub payload_bps: u64,
}

impl fmt::Display for TranscodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} samples at {} Hz; {} packets, {} dropped, {} ms concealed, {} FEC-recovered; payload {:.1} kbit/s",
            self.samples,
            self.rate,
            self.packets,
            self.dropped,
            self.concealed_ms,
            self.fec_recovered,
            self.payload_bps as f64 / 1000.0
        )
    }
}

/// Why a transcode failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscodeError {
    /// The WAV file cannot be read or written.
    #[error("{path}: {source}")]
    Wav {
        /// The file.
        path: String,
        /// hound's error.
        source: hound::Error,
    },
    /// A WAV format the tool does not take.
    #[error(
        "{path}: unsupported WAV format: {reason} (need 16-bit integer PCM, mono, 8000/16000/24000/48000 Hz)"
    )]
    Unsupported {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The media pipeline refused.
    #[error("media pipeline: {0}")]
    Pipeline(#[from] PipelineError),
}

/// Reads `input`, transcodes it, writes `output`.
pub fn transcode_wav(
    input: &Path,
    output: &Path,
    opts: &TranscodeOptions,
) -> Result<TranscodeReport, TranscodeError> {
    let in_name = input.display().to_string();
    let wav_err = |path: &str| {
        let path = path.to_string();
        move |source| TranscodeError::Wav { path, source }
    };
    let reader = hound::WavReader::open(input).map_err(wav_err(&in_name))?;
    let spec = reader.spec();
    let unsupported = |reason: String| TranscodeError::Unsupported {
        path: in_name.clone(),
        reason,
    };
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(unsupported(format!(
            "{:?} {}-bit samples",
            spec.sample_format, spec.bits_per_sample
        )));
    }
    if spec.channels != 1 {
        return Err(unsupported(format!("{} channels", spec.channels)));
    }
    let rate = SampleRate::new(spec.sample_rate)
        .ok_or_else(|| unsupported(format!("{} Hz", spec.sample_rate)))?;
    let samples: Vec<i16> = reader
        .into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(wav_err(&in_name))?;
    let (out, report) = transcode_pcm(&samples, rate, opts)?;
    let out_name = output.display().to_string();
    let mut writer = hound::WavWriter::create(
        output,
        hound::WavSpec {
            channels: 1,
            sample_rate: rate.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .map_err(wav_err(&out_name))?;
    for s in out {
        writer.write_sample(s).map_err(wav_err(&out_name))?;
    }
    writer.finalize().map_err(wav_err(&out_name))?;
    Ok(report)
}

/// Transcodes PCM at `rate`; the result has exactly the input's length and is
/// aligned with it (the chain's algorithmic delay is removed).
pub fn transcode_pcm(
    input: &[i16],
    rate: SampleRate,
    opts: &TranscodeOptions,
) -> Result<(Vec<i16>, TranscodeReport), TranscodeError> {
    if !(0.0..=100.0).contains(&opts.loss_percent) {
        return Err(TranscodeError::Options(format!(
            "--loss {} is not within 0-100",
            opts.loss_percent
        )));
    }
    let pt = match opts.codec {
        Codec::Opus => PayloadType::new(111),
        c => c.static_payload_type(),
    }
    .ok_or_else(|| TranscodeError::Options("no payload type".into()))?;
    let wire = RtpFormat::new(opts.codec, pt);
    let mut enc_config = PipelineConfig::new(
        Endpoint::Pcm(rate),
        Endpoint::Rtp(wire),
        Ssrc(0x5eed),
        opts.seed,
    );
    if let Some(bps) = opts.bitrate {
        enc_config.opus.bitrate = Some(bps);
    }
    enc_config.opus.expected_loss_percent = opts.loss_percent.ceil().min(100.0) as u8;
    let mut encode = MediaPipeline::new(enc_config)?;
    let mut decode = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Rtp(wire),
        Endpoint::Pcm(rate),
        Ssrc(0xdec),
        opts.seed,
    ))?;

    let frame = rate.samples_in(Millis(20));
    let delay = encode.algorithmic_delay() + decode.algorithmic_delay();
    let delay_samples = (delay.as_micros() as u64 * rate.hz() as u64).div_ceil(1_000_000) as usize;
    // Feed enough trailing silence to push the last real sample through.
    let total = (input.len() + delay_samples).div_ceil(frame) * frame + frame;
    let mut rng = SeededRng::new(opts.seed);
    let mut report = TranscodeReport {
        rate: rate.hz(),
        samples: input.len(),
        ..Default::default()
    };
    let mut payload_bytes = 0u64;
    let mut out = Vec::with_capacity(total);
    let mut chunk = vec![0i16; frame];
    let mut pcm_out = vec![0i16; frame];
    for (i, start) in (0..total).step_by(frame).enumerate() {
        chunk.fill(0);
        if start < input.len() {
            let end = (start + frame).min(input.len());
            chunk[..end - start].copy_from_slice(&input[start..end]);
        }
        let now = Instant::from_millis(20 * i as u64);
        encode.handle_pcm(now, &chunk)?;
        while let Some(pkt) = encode.poll_packet() {
            report.packets += 1;
            if rng.chance(opts.loss_percent / 100.0) {
                report.dropped += 1;
                continue;
            }
            let pkt =
                RtpPacket::parse(Bytes::copy_from_slice(pkt.bytes)).map_err(PipelineError::from)?;
            payload_bytes += pkt.payload_bytes().len() as u64;
            decode.handle_rtp(now, &pkt)?;
        }
        while let Some(n) = decode.poll_frame(&mut pcm_out) {
            out.extend_from_slice(&pcm_out[..n]);
        }
    }
    // Packets lost at the very end have no successor to trigger concealment.
    out.resize(total, 0);
    let aligned: Vec<i16> = out[delay_samples..delay_samples + input.len()].to_vec();
    report.concealed_ms = decode.stats().concealed_ms;
    report.fec_recovered = decode.stats().fec_recovered;
    let seconds = total as f64 / rate.hz() as f64;
    report.payload_bps = (payload_bytes as f64 * 8.0 / seconds) as u64;
    Ok((aligned, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use media_core::analysis::{goertzel_level_db, sinad_db, sine, speech_like};

    fn opts(codec: Codec, loss: f64) -> TranscodeOptions {
        TranscodeOptions {
            codec,
            bitrate: None,
            loss_percent: loss,
            seed: 7,
        }
    }

    #[test]
    fn every_codec_round_trips_a_tone_aligned() {
        for codec in [Codec::Pcmu, Codec::Pcma, Codec::Opus] {
            for rate in SampleRate::SUPPORTED {
                let input = sine(rate.hz(), 700.0, 10000.0, rate.hz() as usize);
                let (out, report) = transcode_pcm(&input, rate, &opts(codec, 0.0)).unwrap();
                assert_eq!(out.len(), input.len());
                assert_eq!(report.dropped, 0);
                let mid = &out[out.len() / 4..out.len() * 3 / 4];
                let level = goertzel_level_db(mid, rate.hz(), 700.0)
                    - goertzel_level_db(&input, rate.hz(), 700.0);
                assert!(level.abs() < 1.0, "{codec:?} {rate:?}: {level:.2} dB");
                // Aligned: the cross-correlation peaks within 0.25 ms of zero lag.
                let lag = best_lag(&speech_like(rate.hz(), rate.hz() as usize), rate, codec);
                assert!(
                    lag.unsigned_abs() as u32 <= rate.hz() / 4000,
                    "{codec:?} {rate:?}: lag {lag}"
                );
            }
        }
        let g711 = transcode_pcm(
            &sine(8000, 1000.0, 20000.0, 8000),
            SampleRate::HZ_8000,
            &opts(Codec::Pcmu, 0.0),
        )
        .unwrap()
        .0;
        assert!(sinad_db(&g711[800..7200], 8000, 1000.0) > 35.0);
    }

    fn best_lag(input: &[i16], rate: SampleRate, codec: Codec) -> i64 {
        let (out, _) = transcode_pcm(input, rate, &opts(codec, 0.0)).unwrap();
        let span = rate.hz() as i64 / 100;
        (-span..=span)
            .max_by_key(|&lag| {
                let lo = span as usize;
                let c: f64 = (lo..input.len() - lo)
                    .map(|i| input[i] as f64 * out[(i as i64 + lag) as usize] as f64)
                    .sum();
                c as i64
            })
            .unwrap_or(i64::MAX)
    }

    #[test]
    fn loss_keeps_length_and_is_concealed() {
        for codec in [Codec::Pcma, Codec::Opus] {
            let input = speech_like(16000, 16000 * 5);
            let (out, report) =
                transcode_pcm(&input, SampleRate::HZ_16000, &opts(codec, 5.0)).unwrap();
            assert_eq!(out.len(), input.len());
            assert!(report.dropped > 5, "{report}");
            assert!(
                report.concealed_ms + 20 * report.fec_recovered >= 20 * (report.dropped - 2),
                "{codec:?}: {report}"
            );
        }
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(matches!(
            transcode_pcm(&[0; 160], SampleRate::HZ_8000, &opts(Codec::Pcmu, 101.0)),
            Err(TranscodeError::Options(_))
        ));
    }
}
