//! `sbc media transcode` end to end: the real binary on real WAV files.

use std::path::PathBuf;
use std::process::Command;

use media_core::analysis::{goertzel_level_db, speech_like};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sbc-transcode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_wav(path: &PathBuf, rate: u32, channels: u16, bits: u16, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        if bits == 8 {
            w.write_sample((s >> 8) as i8).unwrap();
        } else {
            w.write_sample(s).unwrap();
        }
    }
    w.finalize().unwrap();
}

fn read_wav(path: &PathBuf) -> (hound::WavSpec, Vec<i16>) {
    let r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    (spec, r.into_samples::<i16>().map(Result::unwrap).collect())
}

fn sbc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sbc"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn round_trips_speech_for_each_codec_with_and_without_loss() {
    let input = speech_like(16000, 16000 * 3 + 123); // not a whole number of frames
    let src = tmp("speech16k.wav");
    write_wav(&src, 16000, 1, 16, &input);
    for codec in ["pcmu", "pcma", "opus"] {
        for loss in ["0", "5"] {
            let out = tmp(&format!("out-{codec}-{loss}.wav"));
            let o = sbc(&[
                "media",
                "transcode",
                "--in",
                src.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--codec",
                codec,
                "--loss",
                loss,
                "--seed",
                "3",
            ]);
            assert!(
                o.status.success(),
                "{codec} {loss}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let report = String::from_utf8_lossy(&o.stdout);
            assert!(report.contains("packets"), "{report}");
            let (spec, samples) = read_wav(&out);
            assert_eq!(spec.sample_rate, 16000);
            assert_eq!(samples.len(), input.len(), "{codec} loss {loss}: length");
            // The voice is there: its fundamental region keeps its level within 3 dB.
            let a = goertzel_level_db(&input, 16000, 160.0);
            let b = goertzel_level_db(&samples, 16000, 160.0);
            assert!(
                (a - b).abs() < 3.0,
                "{codec} loss {loss}: {a:.1} vs {b:.1} dB"
            );
        }
    }
}

#[test]
fn opus_bitrate_is_honoured() {
    let src = tmp("speech48k.wav");
    write_wav(&src, 48000, 1, 16, &speech_like(48000, 48000 * 2));
    let out = tmp("opus12k.wav");
    let o = sbc(&[
        "media",
        "transcode",
        "--in",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--codec",
        "opus",
        "--bitrate",
        "12000",
    ]);
    assert!(o.status.success());
    let report = String::from_utf8_lossy(&o.stdout);
    let kbps: f64 = report
        .split("payload ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kbps < 16.0, "{report}");
}

#[test]
fn unsupported_wavs_get_clear_errors() {
    let cases = [
        ("stereo.wav", 16000, 2, 16, "2 channels"),
        ("cd.wav", 44100, 1, 16, "44100 Hz"),
        ("8bit.wav", 8000, 1, 8, "8-bit"),
    ];
    for (name, rate, ch, bits, expect) in cases {
        let p = tmp(name);
        write_wav(&p, rate, ch, bits, &[0; 1600]);
        let o = sbc(&[
            "media",
            "transcode",
            "--in",
            p.to_str().unwrap(),
            "--out",
            tmp("x.wav").to_str().unwrap(),
            "--codec",
            "pcmu",
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("unsupported WAV format") && err.contains(expect),
            "{name}: {err}"
        );
    }
    let o = sbc(&[
        "media",
        "transcode",
        "--in",
        "/nonexistent.wav",
        "--out",
        "x.wav",
        "--codec",
        "pcmu",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.wav"));
    let o = sbc(&[
        "media",
        "transcode",
        "--in",
        "a.wav",
        "--out",
        "b.wav",
        "--codec",
        "g729",
    ]);
    assert_eq!(o.status.code(), Some(2));
}
