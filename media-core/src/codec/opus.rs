//! Opus (RFC 6716) through libopus, with RTP framing per RFC 7587.
//!
//! The codec runs at 8, 16, 24 or 48 kHz (libopus resamples internally), while the
//! RTP clock is always 48 kHz. Packet loss is handled by the decoder: PLC for a
//! missing frame, or in-band FEC recovered from the next packet (LBRR data).

use crate::codec::CodecError;
use crate::time::SampleRate;

/// Encoder settings. Defaults suit a voice call over a lossy path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpusEncoderConfig {
    /// Rate of the PCM given to the encoder.
    pub sample_rate: SampleRate,
    /// Target bitrate in bits/s; `None` lets libopus choose.
    pub bitrate: Option<u32>,
    /// How hard the encoder works for its sound.
    pub complexity: OpusComplexity,
    /// In-band forward error correction (LBRR), decodable from the next packet.
    pub inband_fec: bool,
    /// Discontinuous transmission: near-empty packets during silence.
    pub dtx: bool,
    /// Expected packet loss in percent; drives how much FEC the encoder spends.
    pub expected_loss_percent: u8,
}

impl Default for OpusEncoderConfig {
    fn default() -> Self {
        OpusEncoderConfig {
            sample_rate: SampleRate::HZ_48000,
            bitrate: Some(32_000),
            complexity: OpusComplexity::Auto,
            inband_fec: true,
            dtx: false,
            expected_loss_percent: 5,
        }
    }
}

impl OpusEncoderConfig {
    /// These settings, narrowed to what the receiver's `fmtp` asks for: in-band FEC
    /// only when it says it uses it, DTX when it prefers it, and no more than its
    /// `maxaveragebitrate`.
    pub fn toward(self, receiver: &OpusFmtp) -> Self {
        OpusEncoderConfig {
            inband_fec: self.inband_fec && receiver.useinbandfec,
            dtx: self.dtx || receiver.usedtx,
            bitrate: match (self.bitrate, receiver.maxaveragebitrate) {
                (Some(b), Some(max)) => Some(b.min(max)),
                (b, max) => b.or(max),
            },
            ..self
        }
    }
}

/// libopus's encoder complexity: its CPU against its sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpusComplexity {
    /// Chosen by what is encoded: [`Self::NARROWBAND`] for 8 kHz input (G.711
    /// from a carrier) at 24 kbit/s or more, else [`Self::DEFAULT`]. There the
    /// extra effort buys nothing audible: on SIPp's G.711 speech capture at
    /// 32 kbit/s, ITU-T P.862 PESQ (narrowband) scored 4.51 at complexity 1, 4.52
    /// at 5 and 4.51 at 10, while an encode took 23, 53 and 67 us per 20 ms
    /// (`cargo run --release -p benches --bin opus-quality`, `cargo bench -p
    /// benches --bench media -- opus_complexity`). At 12 kbit/s the step from 1 to
    /// 5 was worth 0.09 of PESQ.
    Auto,
    /// 0 (cheapest) to 10 (best), whatever is encoded.
    Fixed(u8),
}

impl OpusComplexity {
    /// What [`Self::Auto`] takes for narrowband input at 24 kbit/s or more.
    pub const NARROWBAND: u8 = 1;
    /// What [`Self::Auto`] takes otherwise.
    pub const DEFAULT: u8 = 5;
    /// The lowest bitrate at which narrowband input gets [`Self::NARROWBAND`].
    const NARROWBAND_FROM_BPS: u32 = 24_000;

    /// The libopus setting for an encoder of `sample_rate` PCM at `bitrate`
    /// (`None`: libopus chooses, about 11 kbit/s for 8 kHz mono in 20 ms frames).
    pub fn resolve(self, sample_rate: SampleRate, bitrate: Option<u32>) -> u8 {
        match self {
            OpusComplexity::Fixed(c) => c,
            OpusComplexity::Auto
                if sample_rate == SampleRate::HZ_8000
                    && bitrate.is_some_and(|b| b >= Self::NARROWBAND_FROM_BPS) =>
            {
                Self::NARROWBAND
            }
            OpusComplexity::Auto => Self::DEFAULT,
        }
    }
}

/// The receive preferences an Opus receiver puts in its SDP `fmtp`
/// ([RFC 7587 section 6.1](https://www.rfc-editor.org/rfc/rfc7587#section-6.1)).
/// `Default` is an `a=rtpmap` without `fmtp`: no FEC, no DTX, no bitrate cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpusFmtp {
    /// `useinbandfec=1`: the decoder makes use of in-band FEC. LBRR data costs
    /// bits and a fifth to a quarter of the encoder's time (`cargo bench -p
    /// benches --bench media -- opus/`: 27.8 vs 22.6 us per 20 ms at 8 kHz at the
    /// default complexity, 72 vs 53 us at 5), wasted on a receiver that drops it
    /// (it defaults to 0).
    pub useinbandfec: bool,
    /// `usedtx=1`: the receiver prefers discontinuous transmission.
    pub usedtx: bool,
    /// `maxaveragebitrate`: the most it wants to receive, bits/s (6000-510000).
    pub maxaveragebitrate: Option<u32>,
}

impl OpusFmtp {
    /// Parses `minptime=10;useinbandfec=1`. Parameters it does not know, and values
    /// out of range, are ignored, as section 6.1 asks of a receiver.
    pub fn parse(params: &str) -> Self {
        let mut f = OpusFmtp::default();
        for (name, value) in params
            .split(';')
            .filter_map(|p| p.split_once('='))
            .map(|(n, v)| (n.trim(), v.trim()))
        {
            if name.eq_ignore_ascii_case("useinbandfec") {
                f.useinbandfec = value == "1";
            } else if name.eq_ignore_ascii_case("usedtx") {
                f.usedtx = value == "1";
            } else if name.eq_ignore_ascii_case("maxaveragebitrate") {
                f.maxaveragebitrate = value
                    .parse::<u32>()
                    .ok()
                    .filter(|b| (6_000..=510_000).contains(b));
            }
        }
        f
    }
}

/// Largest Opus packet (RFC 6716 section 3.4: 1275 bytes per frame, up to 3 here).
pub const MAX_PACKET: usize = 4000;

/// An Opus encoder in VoIP mode, mono.
pub struct OpusEncoder {
    inner: opus::Encoder,
    config: OpusEncoderConfig,
    lookahead: usize,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("config", &self.config)
            .finish()
    }
}

fn opus_err(e: opus::Error) -> CodecError {
    CodecError::Opus(e.description())
}

impl OpusEncoder {
    /// An encoder with `config`.
    pub fn new(config: OpusEncoderConfig) -> Result<Self, CodecError> {
        let complexity = config
            .complexity
            .resolve(config.sample_rate, config.bitrate);
        if complexity > 10 || config.expected_loss_percent > 100 {
            return Err(CodecError::BadConfig("complexity 0-10, loss 0-100"));
        }
        let mut inner = opus::Encoder::new(
            config.sample_rate.hz(),
            opus::Channels::Mono,
            opus::Application::Voip,
        )
        .map_err(opus_err)?;
        let bitrate = match config.bitrate {
            Some(b) => opus::Bitrate::Bits(b.clamp(6_000, 510_000) as i32),
            None => opus::Bitrate::Auto,
        };
        inner.set_bitrate(bitrate).map_err(opus_err)?;
        inner
            .set_complexity(i32::from(complexity))
            .map_err(opus_err)?;
        inner.set_inband_fec(config.inband_fec).map_err(opus_err)?;
        inner.set_dtx(config.dtx).map_err(opus_err)?;
        inner
            .set_packet_loss_perc(config.expected_loss_percent as i32)
            .map_err(opus_err)?;
        let lookahead = inner.get_lookahead().map_err(opus_err)?.max(0) as usize;
        Ok(OpusEncoder {
            inner,
            config,
            lookahead,
        })
    }

    /// The settings.
    pub fn config(&self) -> &OpusEncoderConfig {
        &self.config
    }

    /// The libopus complexity in use (what [`OpusComplexity::Auto`] chose).
    pub fn complexity(&self) -> u8 {
        let c = &self.config;
        c.complexity.resolve(c.sample_rate, c.bitrate)
    }

    /// Rate of the PCM this encoder takes.
    pub fn sample_rate(&self) -> SampleRate {
        self.config.sample_rate
    }

    /// Delay the codec adds (encoder lookahead), in samples at its rate.
    pub fn lookahead(&self) -> usize {
        self.lookahead
    }

    /// Encodes one frame (2.5 to 60 ms of mono PCM) into `out`; returns its length.
    /// With DTX on, a 1- or 2-byte result means "silence, need not be sent".
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        self.inner.encode(pcm, out).map_err(opus_err)
    }

    /// Changes the target bitrate (and with [`OpusComplexity::Auto`], the
    /// complexity that goes with it).
    pub fn set_bitrate(&mut self, bps: u32) -> Result<(), CodecError> {
        self.inner
            .set_bitrate(opus::Bitrate::Bits(bps.clamp(6_000, 510_000) as i32))
            .map_err(opus_err)?;
        let was = self.complexity();
        self.config.bitrate = Some(bps);
        let complexity = self.complexity();
        if complexity != was {
            self.inner
                .set_complexity(i32::from(complexity))
                .map_err(opus_err)?;
        }
        Ok(())
    }

    /// Changes the expected loss (0-100 %).
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), CodecError> {
        self.inner
            .set_packet_loss_perc(percent.min(100) as i32)
            .map_err(opus_err)?;
        self.config.expected_loss_percent = percent.min(100);
        Ok(())
    }
}

/// An Opus decoder, mono output (stereo packets are downmixed by libopus).
pub struct OpusDecoder {
    inner: opus::Decoder,
    rate: SampleRate,
    /// Samples of the last decoded frame: the size of a concealed frame.
    last_frame: usize,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("rate", &self.rate)
            .finish()
    }
}

impl OpusDecoder {
    /// A decoder producing PCM at `rate`.
    pub fn new(rate: SampleRate) -> Result<Self, CodecError> {
        Ok(OpusDecoder {
            inner: opus::Decoder::new(rate.hz(), opus::Channels::Mono).map_err(opus_err)?,
            rate,
            last_frame: rate.hz() as usize / 50,
        })
    }

    /// Output rate.
    pub fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    /// Samples (at the decoder's rate) that `packet` decodes to, or an error if the
    /// packet's TOC is invalid.
    pub fn packet_samples(&self, packet: &[u8]) -> Result<usize, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::Malformed("empty Opus packet"));
        }
        opus::packet::get_nb_samples(packet, self.rate.hz()).map_err(opus_err)
    }

    /// Decodes `packet` into `out`, returning samples written. `out` must hold the
    /// packet's duration (up to 120 ms).
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        if packet.is_empty() {
            return Err(CodecError::Malformed("empty Opus packet"));
        }
        let n = self.inner.decode(packet, out, false).map_err(opus_err)?;
        self.last_frame = n;
        Ok(n)
    }

    /// Packet loss concealment: fills all of `out` (a multiple of 2.5 ms).
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        self.inner.decode(&[], out, false).map_err(opus_err)
    }

    /// Recovers the frame lost just before `next_packet` from its in-band FEC data,
    /// filling all of `out` (the lost frame's duration). Without FEC data in
    /// `next_packet` libopus falls back to PLC.
    pub fn recover_fec(
        &mut self,
        next_packet: &[u8],
        out: &mut [i16],
    ) -> Result<usize, CodecError> {
        if next_packet.is_empty() {
            return self.conceal(out);
        }
        self.inner.decode(next_packet, out, true).map_err(opus_err)
    }

    /// Samples in the last decoded frame.
    pub fn last_frame_samples(&self) -> usize {
        self.last_frame
    }
}

/// Whether `packet` carries in-band FEC (LBRR) data for the frame before it.
///
/// LBRR exists only in SILK and hybrid frames (RFC 6716 section 3.1, TOC config
/// below 16). The first SILK frame of the mid channel starts with one VAD flag per
/// 20 ms SILK frame and then the LBRR flag, each coded with probability 1/2, so they
/// are the leading bits of the first frame's first byte (RFC 6716 section 4.2.3).
pub fn has_fec(packet: &[u8]) -> bool {
    let Some(&toc) = packet.first() else {
        return false;
    };
    let config = toc >> 3;
    if config >= 16 {
        return false; // CELT-only
    }
    let silk_frames = if config < 12 {
        match config & 3 {
            2 => 2, // 40 ms
            3 => 3, // 60 ms
            _ => 1,
        }
    } else {
        1
    };
    match first_frame(packet) {
        Some(frame) if !frame.is_empty() => (frame[0] >> (7 - silk_frames)) & 1 == 1,
        _ => false,
    }
}

/// The first frame of an Opus packet (RFC 6716 section 3.2), without allocating.
fn first_frame(packet: &[u8]) -> Option<&[u8]> {
    fn frame_len(b: &[u8]) -> Option<(usize, usize)> {
        match *b.first()? {
            l @ 0..=251 => Some((l as usize, 1)),
            l => Some((4 * *b.get(1)? as usize + l as usize, 2)),
        }
    }
    let rest = packet.get(1..)?;
    match packet[0] & 3 {
        0 => Some(rest),
        1 => Some(&rest[..rest.len() / 2]),
        2 => {
            let (len, used) = frame_len(rest)?;
            rest.get(used..used + len)
        }
        _ => {
            let &count_byte = rest.first()?;
            let vbr = count_byte & 0x80 != 0;
            let padded = count_byte & 0x40 != 0;
            let count = (count_byte & 0x3f) as usize;
            if count == 0 {
                return None;
            }
            let mut at = 1;
            let mut padding = 0usize;
            if padded {
                loop {
                    let &p = rest.get(at)?;
                    at += 1;
                    padding += if p == 255 { 254 } else { p as usize };
                    if p != 255 {
                        break;
                    }
                }
            }
            let data_end = rest.len().checked_sub(padding)?;
            if vbr && count > 1 {
                let (len, used) = frame_len(rest.get(at..)?)?;
                // Skip the other frames' lengths.
                let mut lens_end = at + used;
                for _ in 1..count - 1 {
                    let (_, u) = frame_len(rest.get(lens_end..)?)?;
                    lens_end += u;
                }
                rest.get(lens_end..lens_end + len)
            } else {
                let total = data_end.checked_sub(at)?;
                rest.get(at..at + total / count)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{energy, goertzel_level_db, sine, speech_like};

    fn frame(rate: SampleRate) -> usize {
        rate.hz() as usize / 50
    }

    #[test]
    fn round_trips_a_tone_at_every_rate() {
        for rate in SampleRate::SUPPORTED {
            let mut enc = OpusEncoder::new(OpusEncoderConfig {
                sample_rate: rate,
                ..Default::default()
            })
            .unwrap();
            let mut dec = OpusDecoder::new(rate).unwrap();
            let n = frame(rate);
            let input = sine(rate.hz(), 1000.0, 8000.0, n * 50);
            let mut out = Vec::new();
            let mut pkt = [0u8; MAX_PACKET];
            let mut pcm = vec![0i16; n * 6];
            for chunk in input.chunks(n) {
                let len = enc.encode(chunk, &mut pkt).unwrap();
                assert_eq!(dec.packet_samples(&pkt[..len]).unwrap(), n);
                let m = dec.decode(&pkt[..len], &mut pcm).unwrap();
                out.extend_from_slice(&pcm[..m]);
            }
            assert_eq!(out.len(), input.len());
            let tail = &out[out.len() / 2..];
            let level = goertzel_level_db(tail, rate.hz(), 1000.0);
            let expected = goertzel_level_db(&input[input.len() / 2..], rate.hz(), 1000.0);
            assert!(
                (level - expected).abs() < 1.5,
                "{rate:?}: {level} vs {expected}"
            );
        }
    }

    #[test]
    fn the_receivers_fmtp_narrows_the_encoder() {
        let chrome = OpusFmtp::parse("minptime=10;useinbandfec=1");
        assert!(chrome.useinbandfec && !chrome.usedtx);
        let base = OpusEncoderConfig::default();
        assert_eq!(base.toward(&chrome), base);
        // No fmtp at all: the RFC 7587 defaults, no FEC.
        let bare = base.toward(&OpusFmtp::default());
        assert!(!bare.inband_fec);
        assert_eq!(bare.bitrate, base.bitrate);
        let f = OpusFmtp::parse(" usedtx=1 ; MaxAverageBitrate=20000;useinbandfec=0;stereo=1");
        assert!(f.usedtx && !f.useinbandfec);
        assert_eq!(f.maxaveragebitrate, Some(20_000));
        let narrowed = base.toward(&f);
        assert!(narrowed.dtx && !narrowed.inband_fec);
        assert_eq!(narrowed.bitrate, Some(20_000));
        // A cap above ours leaves ours; a cap with no target of ours becomes it.
        let high = OpusFmtp::parse("maxaveragebitrate=64000");
        assert_eq!(base.toward(&high).bitrate, Some(32_000));
        let auto = OpusEncoderConfig {
            bitrate: None,
            ..base
        };
        assert_eq!(auto.toward(&high).bitrate, Some(64_000));
        // Garbage is ignored, never an error.
        for junk in [
            "",
            ";;;",
            "maxaveragebitrate=5",
            "maxaveragebitrate=x",
            "useinbandfec",
        ] {
            assert_eq!(OpusFmtp::parse(junk), OpusFmtp::default(), "{junk}");
        }
    }

    #[test]
    fn plc_and_fec_fill_a_lost_frame() {
        let rate = SampleRate::HZ_16000;
        let mut enc = OpusEncoder::new(OpusEncoderConfig {
            sample_rate: rate,
            expected_loss_percent: 20,
            bitrate: Some(24_000),
            ..Default::default()
        })
        .unwrap();
        let n = frame(rate);
        let input = speech_like(rate.hz(), n * 40);
        let packets: Vec<Vec<u8>> = input
            .chunks(n)
            .map(|c| {
                let mut p = [0u8; MAX_PACKET];
                let l = enc.encode(c, &mut p).unwrap();
                p[..l].to_vec()
            })
            .collect();
        // Voiced frames carry LBRR; the pauses between syllables do not.
        assert!(
            packets[19..31].iter().all(|p| has_fec(p)),
            "LBRR at 20% expected loss"
        );
        assert!(!has_fec(&packets[15]));
        let mut no_fec = OpusEncoder::new(OpusEncoderConfig {
            sample_rate: rate,
            inband_fec: false,
            ..Default::default()
        })
        .unwrap();
        let mut p = [0u8; MAX_PACKET];
        let l = no_fec.encode(&input[..n], &mut p).unwrap();
        assert!(!has_fec(&p[..l]));
        let mut dec = OpusDecoder::new(rate).unwrap();
        let mut pcm = vec![0i16; n];
        for p in &packets[..24] {
            dec.decode(p, &mut pcm).unwrap();
        }
        // Frame 24 lost: recover it from frame 25's FEC.
        let mut fec = vec![0i16; n];
        assert_eq!(dec.recover_fec(&packets[25], &mut fec).unwrap(), n);
        let fec_energy = energy(&fec);
        dec.decode(&packets[25], &mut pcm).unwrap();
        // Frame 26 lost with no next packet: PLC.
        let mut plc = vec![0i16; n];
        assert_eq!(dec.conceal(&mut plc).unwrap(), n);
        let plc_energy = energy(&plc);
        // Recovered audio resembles what was lost (energy within 6 dB); PLC continues
        // the signal rather than going silent.
        let lost = energy(&input[24 * n..25 * n]);
        let db = |a: f64, b: f64| 10.0 * (a / b).log10();
        assert!(
            db(fec_energy, lost).abs() < 6.0,
            "FEC {:.1} dB",
            db(fec_energy, lost)
        );
        assert!(plc_energy > 0.0);
    }

    #[test]
    fn auto_complexity_spares_narrowband_input_at_ample_bitrates() {
        let encoder = |sample_rate, bitrate, complexity| {
            OpusEncoder::new(OpusEncoderConfig {
                sample_rate,
                bitrate,
                complexity,
                ..Default::default()
            })
            .unwrap()
        };
        let auto = OpusComplexity::Auto;
        // G.711 from a carrier at the default 32 kbit/s: the cheap setting.
        let mut e = encoder(SampleRate::HZ_8000, Some(32_000), auto);
        assert_eq!(e.complexity(), OpusComplexity::NARROWBAND);
        // A peer's low maxaveragebitrate, or libopus's own choice (about
        // 11 kbit/s), is where effort is audible.
        assert_eq!(
            encoder(SampleRate::HZ_8000, Some(16_000), auto).complexity(),
            OpusComplexity::DEFAULT
        );
        assert_eq!(
            encoder(SampleRate::HZ_8000, None, auto).complexity(),
            OpusComplexity::DEFAULT
        );
        // Wideband input was not measured: the default.
        assert_eq!(
            encoder(SampleRate::HZ_16000, Some(32_000), auto).complexity(),
            OpusComplexity::DEFAULT
        );
        // A bitrate change moves it, both ways.
        e.set_bitrate(12_000).unwrap();
        assert_eq!(e.complexity(), OpusComplexity::DEFAULT);
        e.set_bitrate(40_000).unwrap();
        assert_eq!(e.complexity(), OpusComplexity::NARROWBAND);
        // A fixed setting is kept whatever is encoded.
        let mut f = encoder(SampleRate::HZ_8000, Some(32_000), OpusComplexity::Fixed(9));
        assert_eq!(f.complexity(), 9);
        f.set_bitrate(8_000).unwrap();
        assert_eq!(f.complexity(), 9);
        // Both still encode speech that decodes.
        let pcm = crate::analysis::speech_like(8000, 160);
        let mut packet = [0u8; MAX_PACKET];
        for enc in [&mut e, &mut f] {
            let n = enc.encode(&pcm, &mut packet).unwrap();
            assert!(n > 2, "{n} bytes");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = OpusDecoder::new(SampleRate::HZ_48000).unwrap();
        let mut pcm = vec![0i16; 5760];
        assert!(dec.decode(&[], &mut pcm).is_err());
        // A code-3 TOC claiming 63 frames of 60 ms exceeds 120 ms: invalid.
        assert!(dec.decode(&[0xfb, 0x3f, 0, 0], &mut pcm).is_err());
        for b in 0..=255u8 {
            let _ = dec.decode(&[b, 0xff, 0x01, b], &mut pcm);
            let _ = dec.packet_samples(&[b, 0xff]);
        }
        assert!(
            OpusEncoder::new(OpusEncoderConfig {
                complexity: OpusComplexity::Fixed(11),
                ..Default::default()
            })
            .is_err()
        );
    }
}
