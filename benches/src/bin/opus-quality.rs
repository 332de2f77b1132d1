//! What `[media] opus_complexity` costs and buys on a carrier's G.711 speech.
//!
//! `cargo run --release -p benches --bin opus-quality [-- [--out DIR] [--bitrate BPS] [--fec]]`
//!
//! SIPp's PCMA capture (`rtp-pcaps/g711a.pcap`, 7 s of speech) is decoded to 8 kHz
//! PCM, the reference, and sent through our Opus encoder at every complexity, as
//! the sbc does toward a SIP peer without `useinbandfec` (8 kHz, 20 ms frames,
//! 32 kbit/s unless `--bitrate` says otherwise, in-band FEC with `--fec`), and back through the decoder. Prints, per complexity, the encode
//! time per frame and the segmental SNR against the reference, and writes the
//! reference and each decoded signal as raw s16le 8 kHz mono to `--out` (default
//! `target/opus-quality`), aligned sample for sample, for a perceptual measure
//! such as ITU-T P.862 PESQ (narrowband).

use std::time::Instant;

use media_core::codec::{OpusComplexity, OpusDecoder, OpusEncoder, OpusEncoderConfig, g711};
use media_core::pcap::udp_datagrams;
use media_core::rtp::RtpPacket;
use media_core::{Millis, SampleRate, testdata};

fn main() {
    let (mut out_dir, mut bitrate, mut fec) = ("target/opus-quality".to_string(), 32_000, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out_dir = args.next().expect("--out DIR"),
            "--bitrate" => {
                bitrate = args
                    .next()
                    .and_then(|b| b.parse().ok())
                    .expect("--bitrate in bit/s")
            }
            "--fec" => fec = true,
            _ => panic!("usage: opus-quality [--out DIR] [--bitrate BPS] [--fec]"),
        }
    }
    std::fs::create_dir_all(&out_dir).expect("create the output directory");

    let file = testdata::read("rtp-pcaps/g711a.pcap");
    let mut reference = Vec::new();
    for d in udp_datagrams(&file).expect("a pcap of RTP") {
        let p = RtpPacket::parse(bytes::Bytes::copy_from_slice(d.payload)).expect("RTP");
        let mut pcm = vec![0i16; p.payload_bytes().len()];
        g711::alaw_decode(p.payload_bytes(), &mut pcm);
        reference.extend_from_slice(&pcm);
    }
    let frame = SampleRate::HZ_8000.samples_in(Millis(20));
    reference.truncate(reference.len() / frame * frame);
    write_raw(&format!("{out_dir}/reference.raw"), &reference);

    println!(
        "{} ms of speech; Opus 8 kHz mono, 20 ms frames, {bitrate} bit/s, {}",
        reference.len() / 8,
        if fec { "in-band FEC" } else { "no FEC" }
    );
    println!("complexity  encode/frame  segSNR");
    for complexity in 0..=10u8 {
        let config = OpusEncoderConfig {
            sample_rate: SampleRate::HZ_8000,
            inband_fec: fec,
            complexity: OpusComplexity::Fixed(complexity),
            bitrate: Some(bitrate),
            ..OpusEncoderConfig::default()
        };
        let (decoded, per_frame_us) = round_trip(config, &reference, frame);
        println!(
            "{complexity:>10}  {per_frame_us:>9.1} us  {:>5.2} dB",
            segmental_snr_db(&reference, &decoded, frame)
        );
        write_raw(&format!("{out_dir}/c{complexity}.raw"), &decoded);
    }
    println!("raw s16le 8 kHz mono written to {out_dir}/");
}

/// Encodes and decodes `pcm` frame by frame; the result is shifted back by the
/// encoder's lookahead so it lines up with the input. Also returns the mean encode
/// time per frame over 5 passes (the first pass warms the caches).
fn round_trip(config: OpusEncoderConfig, pcm: &[i16], frame: usize) -> (Vec<i16>, f64) {
    let mut decoded = Vec::with_capacity(pcm.len() + frame);
    let mut packet = [0u8; 1500];
    let mut out = vec![0i16; frame];
    let mut enc = OpusEncoder::new(config).expect("encoder");
    let mut dec = OpusDecoder::new(SampleRate::HZ_8000).expect("decoder");
    let lookahead = enc.lookahead();
    // Pad with silence so the lookahead's worth of the end comes out too.
    let padded: Vec<i16> = pcm
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0, frame))
        .collect();
    for f in padded.chunks_exact(frame) {
        let n = enc.encode(f, &mut packet).expect("encode");
        let m = dec.decode(&packet[..n], &mut out).expect("decode");
        decoded.extend_from_slice(&out[..m]);
    }
    decoded.drain(..lookahead.min(decoded.len()));
    decoded.truncate(pcm.len());

    let passes = 5;
    let mut enc = OpusEncoder::new(config).expect("encoder");
    #[allow(clippy::disallowed_methods)] // measuring is the point here
    let start = Instant::now();
    for _ in 0..passes {
        for f in pcm.chunks_exact(frame) {
            std::hint::black_box(enc.encode(f, &mut packet).expect("encode"));
        }
    }
    let frames = passes * pcm.len() / frame;
    let us = start.elapsed().as_secs_f64() * 1e6 / frames as f64;
    (decoded, us)
}

/// Mean SNR over 20 ms segments, skipping near-silent ones and clamping each to
/// [-10, 35] dB (the usual segmental SNR, so silence does not dominate).
fn segmental_snr_db(reference: &[i16], decoded: &[i16], frame: usize) -> f64 {
    let mut sum = 0.0;
    let mut n = 0;
    for (r, d) in reference.chunks(frame).zip(decoded.chunks(frame)) {
        let signal: f64 = r.iter().map(|&x| f64::from(x).powi(2)).sum();
        if signal / (frame as f64) < 100.0 * 100.0 {
            continue;
        }
        let noise: f64 = r
            .iter()
            .zip(d)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum();
        sum += (10.0 * (signal / noise.max(1.0)).log10()).clamp(-10.0, 35.0);
        n += 1;
    }
    sum / f64::from(n.max(1))
}

fn write_raw(path: &str, pcm: &[i16]) {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write the output");
}
