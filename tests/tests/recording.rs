//! System tests of call recording with the real `sbc` binary: SIPp parties
//! each play their own tone (SIPp's `rtp_stream`, raw u-law written by the
//! test); the file the sbc writes is read back by the test and by `sox`,
//! checked against the webhook's SHA-256, served by the API (ranges, scope,
//! delete); a 2 kHz burst each side plays 3 s into its stream lands 3 s
//! after that side's start in both channels; a `kill -9` mid-recording leaves a WAV
//! `sox` reads; a disk that fills (a tiny tmpfs) leaves every call whole and
//! the recording marked incomplete, its lost frames counted.
//!
//! Needs `target/debug/sbc`, SIPp and sox. Addresses as in `sbc_sipp.rs`: the
//! SBC 127.0.0.1, the carrier's caller 127.0.0.2, the far end 127.0.0.3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::sbc_process::{
    HttpReceiver, Sbc, SbcSpec, SippCmd, TempDir, assert_tone_over, lo, rtp, serial, wait_until,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const KEY: &str = "recording-test-key-of-the-service-backend";
const OTHER_KEY: &str = "recording-test-key-of-another-backend";
const SECRET: &str = "recording-test-webhook-secret";
const WAIT: Duration = Duration::from_secs(40);
const SIPP_DONE: Duration = Duration::from_secs(90);

/// The carrier trunk, number `service` ringing the far end and recording
/// every call (`record`: `true` or options), its key and another number's,
/// the webhook, `[recording]`.
fn config_with(
    callee: std::net::SocketAddr,
    hook: &str,
    dir: &Path,
    extra: &str,
    record: &str,
) -> String {
    let hash = sip_bridge::token::hash_api_key;
    format!(
        "[[auth.api_keys]]\nname = \"service\"\nsha256 = \"{}\"\nnumbers = [\"service\"]\n\n\
         [[auth.api_keys]]\nname = \"other\"\nsha256 = \"{}\"\nnumbers = [\"other\"]\n\n\
         [webhooks]\nurl = \"{hook}\"\nsecret = \"{SECRET}\"\n\n\
         [recording]\ndir = \"{}\"\n{extra}\n\
         [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{callee}\"]\n\
         inbound = [\"127.0.0.2/32\"]\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\nrecord = {record}\n\
         dial = [ {{ ring = [\"sip:service@{callee}\"], timeout = \"20s\" }} ]\n\n\
         [[numbers]]\nid = \"other\"\ne164 = \"+15550200\"\n",
        hash(KEY),
        hash(OTHER_KEY),
        dir.display(),
    )
}

fn config(callee: std::net::SocketAddr, hook: &str, dir: &Path, extra: &str) -> String {
    config_with(callee, hook, dir, extra, "true")
}

/// The far end: answers and plays 1000 Hz until the BYE.
fn callee(name: &str) -> SippCmd {
    SippCmd::tone_callee(name, lo(3), 1000.0)
}

/// The carrier's caller: plays 440 Hz for `talk_ms`, then hangs up.
fn caller(name: &str, sbc: &Sbc, talk_ms: u64) -> SippCmd {
    SippCmd::tone_caller(name, lo(2), sbc.sip, "+15550100", 440.0, talk_ms)
}

/// The webhook's `recording.*` events so far.
fn recording_events(hook: &HttpReceiver) -> Vec<(Value, String, Option<String>, Option<String>)> {
    hook.requests()
        .into_iter()
        .filter_map(|r| {
            let v = r.json();
            let ev = v["event"].as_str()?;
            ev.starts_with("recording.").then(|| {
                let ts = r.header("x-sbc-timestamp").map(String::from);
                let sig = r.header("x-sbc-signature").map(String::from);
                (v.clone(), r.body.clone(), ts, sig)
            })
        })
        .collect()
}

/// The call's talk time as its `completed` webhook event says.
fn talk_time_ms(hook: &HttpReceiver, sbc: &Sbc) -> u64 {
    let mut talk = None;
    let ok = wait_until(WAIT, || {
        talk = hook
            .requests()
            .iter()
            .map(|r| r.json())
            .find(|v| v["event"] == "completed")
            .and_then(|v| v["talkTimeMs"].as_u64());
        talk.is_some()
    });
    assert!(ok, "no completed event\n{}", sbc.logs());
    talk.unwrap_or_default()
}

fn wait_recording(
    hook: &HttpReceiver,
    sbc: &Sbc,
) -> (Value, String, Option<String>, Option<String>) {
    let mut got = None;
    let ok = wait_until(WAIT, || {
        got = recording_events(hook).into_iter().next();
        got.is_some()
    });
    assert!(ok, "no recording webhook\n{}", sbc.logs());
    got.unwrap()
}

/// A PCM16 WAV: (channels, rate, samples interleaved).
fn read_wav(bytes: &[u8]) -> (u16, u32, Vec<i16>) {
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    let ch = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    let pcm = bytes[44..44 + data.min(bytes.len() - 44)]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    (ch, rate, pcm)
}

fn channel(pcm: &[i16], c: usize, from_s: f64, to_s: f64) -> Vec<i16> {
    let (a, b) = ((from_s * 8000.0) as usize, (to_s * 8000.0) as usize);
    pcm.iter()
        .skip(c)
        .step_by(2)
        .skip(a)
        .take(b - a)
        .copied()
        .collect()
}

/// `sox --i OPTION file` (a `.part` is read through a `.wav` link: sox
/// knows a file's type by its name).
fn soxi(opt: &str, file: &Path) -> String {
    let wav = file.with_extension("").with_extension("check.wav");
    let _ = std::fs::remove_file(&wav);
    std::os::unix::fs::symlink(file, &wav).expect("link the recording");
    let out = Command::new("sox")
        .args(["--i", opt])
        .arg(&wav)
        .output()
        .expect("sox (apt-get install sox) reads the recording");
    assert!(
        out.status.success(),
        "sox --i {opt} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_recorded_call_has_the_caller_in_channel_one_and_the_far_end_in_channel_two() {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let dir = TempDir::new("recordings");
    let mut far = callee("rec-callee").spawn();
    let toml = config(far.addr, &hook.url("/events"), dir.path(), "");
    let sbc = Sbc::start(&SbcSpec::new("recording", rtp(50), toml));
    let mut carrier = caller("rec-caller", &sbc, 6000).spawn();
    carrier.assert_success(SIPP_DONE);
    far.assert_success(SIPP_DONE);

    let (ev, raw, ts, sig) = wait_recording(&hook, &sbc);
    assert_eq!(ev["event"], "recording.completed", "{ev:#}");
    // Signed like every webhook.
    let ts: u64 = ts.expect("timestamp").parse().unwrap();
    assert_eq!(
        sig.as_deref(),
        Some(sbc::sign::signature(SECRET.as_bytes(), ts, raw.as_bytes()).as_str())
    );
    let id = ev["recordingId"].as_str().unwrap().to_string();
    assert_eq!(
        (ev["complete"].as_bool(), ev["droppedMs"].as_u64()),
        (Some(true), Some(0))
    );
    assert_eq!(
        (ev["format"].as_str(), ev["rate"].as_u64()),
        (Some("wav"), Some(8000))
    );
    assert_eq!(
        (ev["source"].as_str(), ev["number"].as_str()),
        (Some("plan"), Some("service"))
    );
    // As long as the call was connected, by the sbc's own account (its
    // `completed` event), within a few frames of the media task's start and stop.
    let ms = ev["durationMs"].as_u64().unwrap();
    let talk = talk_time_ms(&hook, &sbc);
    assert!(
        ms.abs_diff(talk) <= 100,
        "{ms} ms recorded, {talk} ms talked"
    );

    // The API serves it, byte for byte what the webhook hashed.
    let key = [("X-API-Key", KEY)];
    let r = sbc.http("GET", &format!("/v1/recordings/{id}"), &key, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("audio/wav"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(ev["sha256"].as_str(), Some(sha256(&r.bytes).as_str()));
    assert_eq!(ev["bytes"].as_u64(), Some(r.bytes.len() as u64));
    let (ch, rate, pcm) = read_wav(&r.bytes);
    assert_eq!((ch, rate), (2, 8000));
    assert_eq!(pcm.len() / 2, ms as usize * 8);
    // Channel 1 holds the caller only, channel 2 the far end only.
    let (one, two) = (channel(&pcm, 0, 1.0, 5.0), channel(&pcm, 1, 1.0, 5.0));
    assert_tone_over(&one, 8000, 440.0, 1000.0, "channel 1");
    assert_tone_over(&two, 8000, 1000.0, 440.0, "channel 2");

    // sox reads it as we wrote it.
    let file = dir.join(&format!("{id}.wav"));
    assert_eq!(soxi("-c", &file), "2");
    assert_eq!(soxi("-r", &file), "8000");
    let secs: f64 = soxi("-D", &file).parse().unwrap();
    assert!((secs * 1000.0 - ms as f64).abs() < 1.0, "sox says {secs} s");

    // A range of it.
    let range = [("X-API-Key", KEY), ("Range", "bytes=0-43")];
    let r = sbc.http("GET", &format!("/v1/recordings/{id}"), &range, None);
    assert_eq!(r.status, 206);
    assert_eq!(r.bytes.len(), 44);
    let len = ev["bytes"].as_u64().unwrap();
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-43/{len}").as_str())
    );
    let past = [("X-API-Key", KEY), ("Range", "bytes=999999999-")];
    let r = sbc.http("GET", &format!("/v1/recordings/{id}"), &past, None);
    assert_eq!(r.status, 416);

    // Its timeline: who was there, from the start.
    let r = sbc.http("GET", &format!("/v1/recordings/{id}/timeline"), &key, None);
    assert_eq!(r.status, 200);
    let t = r.json();
    let joined: Vec<&str> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "joined")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(joined, ["customer", "phone"], "{t:#}");

    // Another backend sees nothing; no key is 401.
    let other = [("X-API-Key", OTHER_KEY)];
    for path in [
        format!("/v1/recordings/{id}"),
        format!("/v1/recordings/{id}/timeline"),
    ] {
        assert_eq!(sbc.http("GET", &path, &other, None).status, 404);
        assert_eq!(sbc.http("GET", &path, &[], None).status, 401);
    }
    assert_eq!(
        sbc.http("DELETE", &format!("/v1/recordings/{id}"), &other, None)
            .status,
        404
    );
    assert_eq!(
        sbc.http("GET", "/v1/recordings/rec-nonsense", &key, None)
            .status,
        404
    );
    // Deleted, it is gone.
    let r = sbc.http("DELETE", &format!("/v1/recordings/{id}"), &key, None);
    assert_eq!(r.status, 204);
    assert!(!file.exists());
    assert_eq!(
        sbc.http("GET", &format!("/v1/recordings/{id}"), &key, None)
            .status,
        404
    );

    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_recordings_total", &["result=\"completed\""]),
        1.0
    );
    assert!(m.value("sbc_recording_bytes_total", &[]) >= len as f64);
    assert_eq!(m.value("sbc_recordings_active", &[]), 0.0);
    assert_eq!(m.value("sbc_recording_frames_dropped_total", &[]), 0.0);
}

/// Recording files in `dir` whose name ends with `suffix`.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_kill_9_mid_recording_leaves_a_wav_that_sox_reads() {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let dir = TempDir::new("recordings-crash");
    let far = callee("crash-callee").spawn();
    let toml = config(far.addr, &hook.url("/events"), dir.path(), "");
    let mut sbc = Sbc::start(&SbcSpec::new("recording-crash", rtp(51), toml));
    let _carrier = caller("crash-caller", &sbc, 30_000).spawn();
    // 3 s of audio on disk (8 kHz stereo PCM16: 32 000 bytes a second).
    let mut part = None;
    let grew = wait_until(WAIT, || {
        part = files(dir.path(), ".wav.part").into_iter().next();
        part.as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.len() > 44 + 3 * 32_000)
    });
    assert!(
        grew,
        "no recording grows in {}\n{}",
        dir.path().display(),
        sbc.logs()
    );
    sbc.kill();
    let part = part.unwrap();
    // The header was rewritten within the last second: sox reads it, and
    // at most a second (and the BufWriter's 256 KiB) is missing.
    let secs: f64 = soxi("-D", &part).parse().unwrap();
    let on_disk = (std::fs::metadata(&part).unwrap().len() - 44) as f64 / 32_000.0;
    assert!(secs >= 2.0, "sox reads {secs} s");
    assert!(
        secs <= on_disk + 0.001,
        "the header says {secs} s, the file has {on_disk} s"
    );
    assert_eq!(soxi("-c", &part), "2");
}

/// A `size` tmpfs mounted on `dir`, unmounted on drop (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_leaves_the_call_whole_and_the_recording_marked_incomplete() {
    let _serial = serial();
    let dir = TempDir::new("recordings-full");
    let Some(_fs) = Tmpfs::mount(dir.path(), "64k") else {
        // Mounting needs root (CI runs as root; a developer's shell may not).
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n");
        assert!(
            !root.unwrap_or(false),
            "root, yet no tmpfs could be mounted"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let hook = HttpReceiver::start(lo(1));
    let mut far = callee("full-callee").spawn();
    let toml = config(far.addr, &hook.url("/events"), dir.path(), "");
    let sbc = Sbc::start(&SbcSpec::new("recording-full", rtp(52), toml));
    // 6 s of stereo PCM16 is 192 kB: the 64 kB disk fills after 2 s.
    let mut carrier = caller("full-caller", &sbc, 6000).spawn();
    carrier.assert_success(SIPP_DONE);
    far.assert_success(SIPP_DONE);
    let (ev, ..) = wait_recording(&hook, &sbc);
    assert_eq!(ev["event"], "recording.completed", "{ev:#}");
    assert_eq!(ev["complete"], false, "{ev:#}");
    let errors = ev["errors"].to_string();
    assert!(errors.contains("No space left"), "{errors}");
    let dropped = ev["droppedMs"].as_u64().unwrap();
    assert!(dropped >= 3000, "{dropped} ms dropped");
    let failed = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "write_failed")
        .cloned()
        .expect("the timeline says where the file stops");
    // 64 kB hold 2 s: the flush after the third second fails.
    let at = failed["atMs"].as_u64().unwrap();
    assert!((1000..=3000).contains(&at), "{failed}");
    let m = sbc.metrics();
    assert!(m.value("sbc_recording_frames_dropped_total", &[]) >= 150.0);
    assert_eq!(
        m.value("sbc_recordings_total", &["result=\"incomplete\""]),
        1.0
    );
    // The call itself was whole: both SIPps saw it through (above), and the
    // sbc counts it completed.
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        1.0,
        "{}",
        sbc.logs()
    );
}

/// `tool args file`: its stdout, asserting it succeeded.
fn run(tool: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (apt-get install ffmpeg opus-tools): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{tool} {args:?} {}: {text}",
        file.display()
    );
    text
}

#[test]
fn an_ogg_opus_recording_is_valid_for_ffprobe_and_opusinfo() {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let dir = TempDir::new("recordings-opus");
    let mut far = callee("opus-callee").spawn();
    let record = r#"{ format = "opus", rate = 16000 }"#;
    let toml = config_with(far.addr, &hook.url("/events"), dir.path(), "", record);
    let sbc = Sbc::start(&SbcSpec::new("recording-opus", rtp(53), toml));
    let mut carrier = caller("opus-caller", &sbc, 5000).spawn();
    carrier.assert_success(SIPP_DONE);
    far.assert_success(SIPP_DONE);
    let (ev, ..) = wait_recording(&hook, &sbc);
    assert_eq!(ev["event"], "recording.completed", "{ev:#}");
    assert_eq!(
        (ev["format"].as_str(), ev["rate"].as_u64()),
        (Some("opus"), Some(16_000))
    );
    let ms = ev["durationMs"].as_u64().unwrap();
    let id = ev["recordingId"].as_str().unwrap();
    let r = sbc.http(
        "GET",
        &format!("/v1/recordings/{id}"),
        &[("X-API-Key", KEY)],
        None,
    );
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("audio/ogg"))
    );
    assert_eq!(ev["sha256"].as_str(), Some(sha256(&r.bytes).as_str()));
    let file = dir.join(&format!("{id}.opus"));

    // ffprobe: an Opus stream, two channels, the recording's length.
    let probe = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,channels:format=duration",
            "-of",
            "json",
        ],
        &file,
    );
    let p: Value = serde_json::from_str(&probe).unwrap_or_else(|e| panic!("{e}: {probe}"));
    assert_eq!(p["streams"][0]["codec_name"], "opus", "{p:#}");
    assert_eq!(p["streams"][0]["channels"], 2, "{p:#}");
    let secs: f64 = p["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!(
        (secs * 1000.0 - ms as f64).abs() <= 20.0,
        "ffprobe {secs} s, recorded {ms} ms"
    );
    // ffmpeg decodes every packet without an error.
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    let errors = String::from_utf8_lossy(&decode.stderr);
    assert!(
        decode.status.success() && errors.trim().is_empty(),
        "ffmpeg: {errors}"
    );
    // opusinfo checks the pages (CRCs, granule positions) and says nothing bad.
    let info = run("opusinfo", &[], &file);
    assert!(
        !info.contains("WARNING") && !info.contains("ERROR"),
        "opusinfo: {info}"
    );
    assert!(info.contains("Channels: 2"), "opusinfo: {info}");

    // Decoded, each channel holds its party.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "s16le", "-ac", "2", "-ar", "8000", "-"])
        .output()
        .expect("ffmpeg decodes");
    let pcm: Vec<i16> = out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let (one, two) = (channel(&pcm, 0, 1.0, 4.0), channel(&pcm, 1, 1.0, 4.0));
    assert_tone_over(&one, 8000, 440.0, 1000.0, "channel 1");
    assert_tone_over(&two, 8000, 1000.0, 440.0, "channel 2");
}

/// 10 s of raw u-law: `hz`, with a 200 ms burst of 2 kHz at 3.0 s.
fn tone_with_burst(hz: f64) -> Vec<u8> {
    let mut pcm = media_core::analysis::sine(8000, hz, 8000.0, 80_000);
    let burst = media_core::analysis::sine(8000, 2000.0, 8000.0, 1600);
    pcm[24_000..25_600].copy_from_slice(&burst);
    let mut ulaw = vec![0u8; pcm.len()];
    media_core::codec::g711::ulaw_encode(&pcm, &mut ulaw);
    ulaw
}

#[test]
fn over_real_sockets_a_burst_each_side_plays_3_s_into_its_stream_lands_3_s_after_its_start_in_both_channels()
 {
    let _serial = serial();
    let hook = HttpReceiver::start(lo(1));
    let dir = TempDir::new("recordings-burst");
    // Each side starts its file as the call is answered (the far end on our
    // ACK, the caller on our 200) and plays the burst 3 s later.
    let mut far = callee("rec-burst-callee")
        .file("tone.ul", tone_with_burst(1000.0))
        .spawn();
    let toml = config(far.addr, &hook.url("/events"), dir.path(), "");
    let sbc = Sbc::start(&SbcSpec::new("recording-burst", rtp(58), toml));
    let mut carrier = caller("rec-burst-caller", &sbc, 5000)
        .file("tone.ul", tone_with_burst(440.0))
        .spawn();
    carrier.assert_success(SIPP_DONE);
    far.assert_success(SIPP_DONE);
    let (ev, ..) = wait_recording(&hook, &sbc);
    let id = ev["recordingId"].as_str().unwrap().to_string();
    let bytes = std::fs::read(dir.join(&format!("{id}.wav"))).expect("the file");
    let (_, _, pcm) = read_wav(&bytes);
    let lvl = |w: &[i16], hz| media_core::analysis::goertzel_level_db(w, 8000, hz);
    // Per channel, the first 5 ms window where `hz` leads `other`: where its
    // party's stream begins (its tone, from the file's first sample) and
    // where its burst does.
    let onset = |c: usize, hz: f64, other: f64| {
        let ch = channel(&pcm, c, 0.0, pcm.len() as f64 / 16_000.0);
        (0..ch.len() / 40)
            .find(|i| {
                let w = &ch[i * 40..(i + 1) * 40];
                lvl(w, hz) > -25.0 && lvl(w, hz) > lvl(w, other)
            })
            .map(|i| i as i64 * 5)
            .expect("the tone is in the file")
    };
    let (s1, b1) = (onset(0, 440.0, 2000.0), onset(0, 2000.0, 440.0));
    let (s2, b2) = (onset(1, 1000.0, 2000.0), onset(1, 2000.0, 1000.0));
    eprintln!(
        "channel 1: stream at {s1} ms, burst at {b1} ms; channel 2: stream at {s2} ms, burst at {b2} ms"
    );
    // Each party plays its burst 3 s into its stream: in the file it is 3 s
    // after that party's first audio in both channels, within a frame (and
    // the 5 ms window the onset is found in), so neither channel slid
    // against the call clock while the call went on.
    for (c, s, b) in [(1, s1, b1), (2, s2, b2)] {
        assert!(
            (b - s - 3000).abs() <= 25,
            "channel {c}: burst {} ms after the stream began",
            b - s
        );
    }
    // The two bursts are as far apart as the two streams' starts (SIPp
    // starts each when the call is answered: 0-20 ms apart in most runs,
    // 120 ms in some), which the file shows as it was.
    assert!(
        ((b2 - b1) - (s2 - s1)).abs() <= 25,
        "bursts {} ms apart, starts {} ms",
        b2 - b1,
        s2 - s1
    );
    assert!((2950..=3200).contains(&b1), "channel 1 burst at {b1} ms");
}
