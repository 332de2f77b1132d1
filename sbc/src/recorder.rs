//! Recordings to disk, off the media path. A call's media task hands each
//! recording's frames to a [`Tap`]: a bounded queue (`[recording] queue` of
//! audio) behind a lock held for one frame's copy, drained by the
//! recording's own writer thread (not a runtime worker: a disk that stalls
//! stalls that recording only). When the writer falls behind, the oldest
//! frames go, counted; the writer puts silence of their length in their
//! place and marks a gap, so the file keeps the call's time and the call is
//! never held up.
//!
//! The file grows as `<dir>/<id>.wav.part` (or `.opus.part`); a WAV header
//! is rewritten every second with the sizes so far, and Ogg pages close every
//! second, so a crash leaves a playable file. When the recording stops, the
//! file is flushed, fsynced and renamed to `<id>.wav`, its SHA-256 taken, and
//! the timeline (`<id>.json`: who joined and left, holds, transfers, pauses,
//! DTMF, gaps, with offsets into the file) written beside it; then
//! [`RecordingDone`] goes to the webhook. Files older than `retention` are
//! deleted by a sweeper thread.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use media_core::record::{FrameQueue, OggOpusWriter, RecordError, WavWriter};
use sha2::{Digest, Sha256};
use sip_bridge::contract::{RecordChannels, RecordFormat, RecordNote, RecordSpec, RecordingId};
use tokio::sync::mpsc;

use crate::clock::{self, Clock};

/// `[recording]` as the server takes it.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    /// Where files go.
    pub dir: PathBuf,
    /// A recording stops growing there.
    pub max_duration: Duration,
    /// Files older than this are deleted.
    pub retention: Option<Duration>,
    /// Recordings in progress at once.
    pub max_active: usize,
    /// Audio waiting for the disk, at most.
    pub queue: Duration,
    /// Writer threads (each serves its share of the recordings).
    pub writers: usize,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            dir: PathBuf::from("recordings"),
            max_duration: Duration::from_secs(4 * 3600),
            retention: None,
            max_active: 1000,
            queue: Duration::from_secs(2),
            writers: 2,
        }
    }
}

/// A recording finished (or failed): what the webhook says.
#[derive(Clone, Debug)]
pub struct RecordingDone {
    /// `recording.completed` or `recording.failed`.
    pub event: &'static str,
    /// The timeline as written beside the file.
    pub body: serde_json::Value,
}

/// Starts recordings; shared by every media task. See the module docs.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RecorderConfig,
    active: AtomicUsize,
    done: mpsc::UnboundedSender<RecordingDone>,
    /// Each writer thread's new recordings, and the next to get one.
    writers: Vec<Arc<Mutex<Vec<Job>>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("id", &self.id).finish()
    }
}

/// How often a writer looks at its queue.
const WAKE: Duration = Duration::from_millis(500);
/// Wake-ups between two header rewrites (a second).
const CHECKPOINT_WAKES: u64 = 2;

/// Notes one recording keeps at most (a flood of DTMF cannot grow it).
const MAX_NOTES: usize = 10_000;

impl Recorder {
    /// A recorder writing into `cfg.dir`; finished recordings go to `done`.
    pub fn new(cfg: RecorderConfig, done: mpsc::UnboundedSender<RecordingDone>) -> Recorder {
        if let Some(keep) = cfg.retention {
            let dir = cfg.dir.clone();
            let every = (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
            let spawned = std::thread::Builder::new()
                .name("recording-retention".into())
                .spawn(move || {
                    loop {
                        sweep(&dir, keep);
                        std::thread::sleep(every);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the recordings' retention sweeper");
            }
        }
        let mut writers = Vec::new();
        for i in 0..cfg.writers.max(1) {
            let incoming: Arc<Mutex<Vec<Job>>> = Arc::default();
            let mine = incoming.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("recording-writer-{i}"))
                .spawn(move || writer_thread(mine));
            match spawned {
                Ok(_) => writers.push(incoming),
                Err(e) => tracing::warn!(error = %e, "cannot start a recording writer thread"),
            }
        }
        Recorder {
            inner: Arc::new(Inner {
                cfg,
                active: AtomicUsize::new(0),
                done,
                writers,
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// Starts writing recording `id`; `None` when at `max_active` or its
    /// thread cannot start (counted: the call goes on unrecorded).
    pub fn start(&self, id: RecordingId, spec: &RecordSpec) -> Option<Tap> {
        let active = self.inner.active.fetch_add(1, Ordering::Relaxed);
        if active >= self.inner.cfg.max_active {
            self.inner.active.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("sbc_recordings_total", "result" => "refused").increment(1);
            tracing::warn!(recording = %id, call = %spec.call, "too many recordings in progress: not recorded");
            self.refused(id, spec, "too many recordings in progress");
            return None;
        }
        let f = Format::of(spec);
        // At least twice what a writer takes per wake-up.
        let frames = (self.inner.cfg.queue.as_millis() / 20).max(50) as usize;
        let shared = Arc::new(Mutex::new(TapState {
            frames: FrameQueue::new(f.frame_samples(), frames),
            notes: Vec::new(),
            stop: None,
        }));
        let job = Job {
            inner: self.inner.clone(),
            id,
            spec: spec.clone(),
            format: f,
            shared: shared.clone(),
            started_ms: Clock::unix_ms(),
        };
        let n = self.inner.writers.len().max(1);
        let writer = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let Some(Ok(mut queue)) = self.inner.writers.get(writer).map(|w| w.lock()) else {
            self.inner.active.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("sbc_recordings_total", "result" => "failed").increment(1);
            self.refused(id, spec, "no recording writer is running");
            return None;
        };
        queue.push(job);
        metrics::gauge!("sbc_recordings_active").increment(1.0);
        Some(Tap {
            shared,
            stopped: false,
        })
    }

    /// A recording that never started still gets its timeline (with why)
    /// and `recording.failed`, so the id the API gave out leads somewhere.
    fn refused(&self, id: RecordingId, spec: &RecordSpec, why: &str) {
        let body = serde_json::json!({
            "recordingId": id.to_string(),
            "callId": spec.call.to_string(),
            "number": spec.number,
            "from": spec.from,
            "to": spec.to,
            "source": spec.source,
            "startedAt": clock::rfc3339_ms(Clock::unix_ms()),
            "durationMs": 0,
            "bytes": 0,
            "complete": false,
            "errors": [why],
            "events": [],
        });
        if std::fs::create_dir_all(self.dir()).is_ok() {
            write_json(&self.dir().join(format!("{id}.json")), &body);
        }
        let done = RecordingDone {
            event: "recording.failed",
            body,
        };
        let _ = self.inner.done.send(done);
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.cfg.dir
    }

    /// Recording `id`'s timeline, once it is finished.
    pub fn timeline(&self, id: RecordingId) -> Option<serde_json::Value> {
        let text = std::fs::read(self.dir().join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Recording `id`'s file and its media type, once it is finished.
    pub fn media(&self, id: RecordingId) -> Option<(PathBuf, &'static str)> {
        [("wav", "audio/wav"), ("opus", "audio/ogg")]
            .into_iter()
            .map(|(ext, ty)| (self.dir().join(format!("{id}.{ext}")), ty))
            .find(|(p, _)| p.is_file())
    }

    /// Deletes recording `id` (its file and timeline): whether there was one.
    pub fn delete(&self, id: RecordingId) -> bool {
        let mut any = false;
        for ext in ["wav", "opus", "json"] {
            any |= std::fs::remove_file(self.dir().join(format!("{id}.{ext}"))).is_ok();
        }
        any
    }
}

/// Deletes our files (`rec-*.wav|opus|json`) in `dir` older than `keep`.
fn sweep(dir: &Path, keep: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = Duration::from_millis(Clock::unix_ms());
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with("rec-")
            && [".wav", ".opus", ".json"].iter().any(|x| name.ends_with(x));
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|t| now.saturating_sub(t));
        if ours && age.is_some_and(|a| a > keep) && std::fs::remove_file(e.path()).is_ok() {
            metrics::counter!("sbc_recordings_deleted_total").increment(1);
        }
    }
}

/// One recording's queue, held by its call's media task.
#[derive(Debug)]
pub struct Tap {
    shared: Arc<Mutex<TapState>>,
    stopped: bool,
}

#[derive(Debug)]
struct TapState {
    frames: FrameQueue,
    notes: Vec<(Duration, RecordNote)>,
    /// The recording is over, this long.
    stop: Option<Duration>,
}

impl Tap {
    /// The next 20 ms (interleaved). Never waits for the disk: a full queue
    /// drops its oldest frame (counted).
    pub fn frame(&self, pcm: &[i16]) {
        if let Ok(mut s) = self.shared.lock()
            && s.frames.push(pcm)
        {
            metrics::counter!("sbc_recording_frames_dropped_total").increment(1);
        }
    }

    /// A timeline entry at `at` into the file.
    pub fn note(&self, at: Duration, note: RecordNote) {
        if let Ok(mut s) = self.shared.lock()
            && s.notes.len() < MAX_NOTES
        {
            s.notes.push((at, note));
        }
    }

    /// The recording is over (`duration` long): its writer finishes the file
    /// at its next look.
    pub fn stop(mut self, duration: Duration) {
        self.finish(duration);
    }

    fn finish(&mut self, duration: Duration) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Ok(mut s) = self.shared.lock() {
            s.stop = Some(duration);
        }
    }
}

impl Drop for Tap {
    /// A media task that ends without a stop (it cannot, but a panic could)
    /// still finishes the file.
    fn drop(&mut self) {
        self.finish(Duration::ZERO);
    }
}

/// How a recording is written.
#[derive(Clone, Copy, Debug)]
struct Format {
    rate: u32,
    channels: u16,
    opus: bool,
}

impl Format {
    fn of(spec: &RecordSpec) -> Format {
        Format {
            rate: if spec.rate > 8000 { 16_000 } else { 8000 },
            channels: match spec.channels {
                RecordChannels::Mono => 1,
                _ => 2,
            },
            opus: spec.format == RecordFormat::Opus,
        }
    }

    fn frame_samples(self) -> usize {
        (self.rate / 50) as usize * usize::from(self.channels)
    }

    fn ext(self) -> &'static str {
        if self.opus { "opus" } else { "wav" }
    }
}

enum Encoder {
    Wav(WavWriter),
    Opus(OggOpusWriter),
}

/// A recording handed to a writer thread.
struct Job {
    inner: Arc<Inner>,
    id: RecordingId,
    spec: RecordSpec,
    format: Format,
    shared: Arc<Mutex<TapState>>,
    started_ms: u64,
}

/// The writers' threads: each looks at its recordings twice a second and
/// writes what their queues hold, one write per recording. A disk that
/// stalls holds up that thread's recordings, whose queues then drop their
/// oldest frames (counted); calls never wait.
fn writer_thread(incoming: Arc<Mutex<Vec<Job>>>) {
    let mut jobs: Vec<Writing> = Vec::new();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut frame = vec![0i16; 640];
    let mut wakes = 0u64;
    loop {
        std::thread::sleep(WAKE);
        wakes += 1;
        if let Ok(mut new) = incoming.lock() {
            for j in new.drain(..) {
                jobs.push(Writing::open(j, &mut out));
            }
        }
        let checkpoint = wakes.is_multiple_of(CHECKPOINT_WAKES);
        let mut i = 0;
        while i < jobs.len() {
            if jobs[i].step(&mut out, &mut frame, checkpoint) {
                jobs.swap_remove(i).finish(&mut out);
            } else {
                i += 1;
            }
        }
    }
}

/// The file as it is written: where, and what went wrong.
struct Sink {
    file: Option<File>,
    bytes: u64,
    errors: Vec<String>,
    /// When writing failed: the offset (ms) where the file stops.
    failed_at: Option<u64>,
    /// Frames that could not be written (after a failure), counted as dropped.
    lost: u64,
}

impl Sink {
    /// `frames` frames' bytes, the first at `at_ms` into the recording:
    /// written, or lost (and counted) once the file has failed.
    fn write(&mut self, data: &[u8], frames: u64, at_ms: u64) {
        if data.is_empty() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(data) {
                Ok(()) => {
                    self.bytes += data.len() as u64;
                    metrics::counter!("sbc_recording_bytes_total").increment(data.len() as u64);
                    return;
                }
                Err(e) => {
                    // A full or failing disk: this recording stops writing.
                    self.errors.push(format!("write: {e}"));
                    self.file = None;
                    self.failed_at = Some(at_ms);
                }
            }
        }
        self.lost += frames;
        metrics::counter!("sbc_recording_frames_dropped_total").increment(frames);
    }

    /// For WAV, rewrites the header's sizes in place (at `at_ms` into the
    /// recording): a crash leaves a playable file.
    fn checkpoint(&mut self, enc: &Result<Encoder, RecordError>, at_ms: u64) {
        let (Some(f), Ok(Encoder::Wav(w))) = (self.file.as_ref(), enc) else {
            return;
        };
        let patched = w
            .header_patch()
            .iter()
            .try_for_each(|(at, b)| f.write_all_at(b, *at));
        if let Err(e) = patched {
            self.errors.push(format!("header: {e}"));
            self.file = None;
            self.failed_at = Some(at_ms);
        }
    }
}

/// A recording being written by a writer thread.
struct Writing {
    job: Job,
    enc: Result<Encoder, RecordError>,
    sink: Sink,
    part: PathBuf,
    done: PathBuf,
    silence: Vec<i16>,
    seen_dropped: u64,
    /// Frames in the file (or lost to a failing disk).
    written: u64,
    gaps: Vec<(u64, u64)>,
    notes: Vec<(Duration, RecordNote)>,
    truncated: bool,
}

impl Writing {
    /// Creates the file and writes its header.
    fn open(job: Job, out: &mut Vec<u8>) -> Writing {
        let (id, f) = (job.id, job.format);
        let dir = &job.inner.cfg.dir;
        let part = dir.join(format!("{id}.{}.part", f.ext()));
        let done = dir.join(format!("{id}.{}", f.ext()));
        let max = job.inner.cfg.max_duration;
        let enc = if f.opus {
            // Two parties at 24 kbit/s each (see `OggOpusWriter::new`).
            let bitrate = if f.channels == 2 { 48_000 } else { 24_000 };
            OggOpusWriter::new(f.rate, f.channels, bitrate, id.0 as u32, max).map(Encoder::Opus)
        } else {
            WavWriter::new(f.rate, f.channels, max).map(Encoder::Wav)
        };
        let mut sink = Sink {
            file: None,
            bytes: 0,
            errors: Vec::new(),
            failed_at: None,
            lost: 0,
        };
        match std::fs::create_dir_all(dir).and_then(|()| File::create(&part)) {
            Ok(file) => sink.file = Some(file),
            Err(e) => sink.errors.push(format!("create {}: {e}", part.display())),
        }
        out.clear();
        match &enc {
            Ok(Encoder::Wav(w)) => out.extend_from_slice(&w.header()),
            Ok(Encoder::Opus(_)) => {}
            Err(e) => sink.errors.push(e.to_string()),
        }
        let mut enc = enc;
        if let Ok(Encoder::Opus(o)) = enc.as_mut() {
            let _ = o.start(out);
        }
        sink.write(out, 0, 0);
        Writing {
            silence: vec![0; f.frame_samples()],
            job,
            enc,
            sink,
            part,
            done,
            seen_dropped: 0,
            written: 0,
            gaps: Vec::new(),
            notes: Vec::new(),
            truncated: false,
        }
    }

    /// Writes what the queue holds (one write); whether the recording is
    /// over and everything written.
    fn step(&mut self, out: &mut Vec<u8>, frame: &mut [i16], checkpoint: bool) -> bool {
        out.clear();
        let first = self.written;
        let frame = &mut frame[..self.silence.len()];
        let mut over = false;
        loop {
            let (got, dropped) = {
                let Ok(mut s) = self.job.shared.lock() else {
                    over = true;
                    break;
                };
                self.notes.append(&mut s.notes);
                let got = s.frames.pop_into(frame);
                if !got {
                    over = s.stop.is_some();
                }
                (got, s.frames.counts().1)
            };
            // Frames dropped went right after the last one taken: silence
            // of their length keeps the file on the call's time.
            if dropped > self.seen_dropped {
                let n = dropped - self.seen_dropped;
                self.seen_dropped = dropped;
                self.gaps.push((self.written * 20, n * 20));
                for _ in 0..n {
                    self.truncated |= !encode(&mut self.enc, &self.silence, out);
                    self.written += 1;
                }
            }
            if !got {
                break;
            }
            self.truncated |= !encode(&mut self.enc, frame, out);
            self.written += 1;
        }
        self.sink.write(out, self.written - first, first * 20);
        if checkpoint || over {
            self.sink.checkpoint(&self.enc, self.written * 20);
        }
        over
    }

    /// The last page, the sizes, on disk, under its own name; the timeline
    /// beside it; the webhook.
    fn finish(mut self, out: &mut Vec<u8>) {
        out.clear();
        if let Ok(Encoder::Opus(o)) = self.enc.as_mut() {
            let _ = o.finish(out);
        }
        self.sink.write(out, 0, self.written * 20);
        self.sink.checkpoint(&self.enc, self.written * 20);
        let id = self.job.id;
        let mut finished = false;
        if let Some(f) = self.sink.file.take() {
            match f.sync_all() {
                Ok(()) => finished = std::fs::rename(&self.part, &self.done).is_ok(),
                Err(e) => self.sink.errors.push(format!("sync: {e}")),
            }
        }
        if !finished && self.part.exists() {
            // Keep what was written, under the final name, marked incomplete.
            let _ = std::fs::rename(&self.part, &self.done);
        }
        let sha = sha256_of(&self.done);
        let dropped_ms = self.gaps.iter().map(|(_, ms)| ms).sum::<u64>() + self.sink.lost * 20;
        let complete = self.sink.errors.is_empty() && dropped_ms == 0;
        let ok = self.done.exists() && self.sink.bytes > 0;
        let body = self.timeline(sha, dropped_ms, complete);
        let inner = self.job.inner.clone();
        write_json(&inner.cfg.dir.join(format!("{id}.json")), &body);
        let result = if !ok {
            "failed"
        } else if complete {
            "completed"
        } else {
            "incomplete"
        };
        metrics::counter!("sbc_recordings_total", "result" => result).increment(1);
        metrics::gauge!("sbc_recordings_active").decrement(1.0);
        inner.active.fetch_sub(1, Ordering::Relaxed);
        if !self.sink.errors.is_empty() {
            tracing::warn!(recording = %id, errors = ?self.sink.errors, "recording incomplete");
        }
        let event = if ok {
            "recording.completed"
        } else {
            "recording.failed"
        };
        let _ = inner.done.send(RecordingDone { event, body });
    }

    fn timeline(
        &mut self,
        sha: Option<String>,
        dropped_ms: u64,
        complete: bool,
    ) -> serde_json::Value {
        let (job, sink) = (&self.job, &self.sink);
        let f = job.format;
        let duration_ms = match &self.enc {
            Ok(Encoder::Wav(w)) => w.duration().as_millis() as u64,
            Ok(Encoder::Opus(o)) => o.duration().as_millis() as u64,
            Err(_) => 0,
        };
        let mut events: Vec<serde_json::Value> = std::mem::take(&mut self.notes)
            .into_iter()
            .map(|(at, n)| {
                serde_json::json!({
                    "atMs": at.as_millis() as u64,
                    "event": n.event,
                    "participantId": n.party.map(|p| p.to_string()),
                    "detail": n.detail,
                })
            })
            .collect();
        for (at, ms) in &self.gaps {
            events.push(serde_json::json!({"atMs": at, "event": "gap", "ms": ms}));
        }
        if let Some(at) = sink.failed_at {
            // The file ends here; what came after was lost.
            let ms = sink.lost * 20;
            events.push(serde_json::json!({"atMs": at, "event": "write_failed", "ms": ms}));
        }
        events.sort_by_key(|e| e["atMs"].as_u64().unwrap_or(0));
        let channels = if f.channels == 2 {
            serde_json::json!([{"index": 1, "role": "customer"}, {"index": 2, "role": "others"}])
        } else {
            serde_json::json!([{"index": 1, "role": "mix"}])
        };
        serde_json::json!({
            "recordingId": job.id.to_string(),
            "callId": job.spec.call.to_string(),
            "number": job.spec.number,
            "from": job.spec.from,
            "to": job.spec.to,
            "source": job.spec.source,
            "format": f.ext(),
            "rate": f.rate,
            "channels": channels,
            "startedAt": clock::rfc3339_ms(job.started_ms),
            // What the file holds: frames lost to a failing disk are not in it.
            "durationMs": duration_ms.saturating_sub(sink.lost * 20),
            "frames": self.written,
            "bytes": sink.bytes,
            "sha256": sha,
            "complete": complete,
            "truncated": self.truncated,
            "droppedMs": dropped_ms,
            "errors": sink.errors,
            "file": format!("{}.{}", job.id, f.ext()),
            "uri": format!("/v1/recordings/{}", job.id),
            "events": events,
        })
    }
}

/// One frame appended to `out`: whether the file took it (not at its
/// longest).
fn encode(enc: &mut Result<Encoder, RecordError>, pcm: &[i16], out: &mut Vec<u8>) -> bool {
    match enc {
        Ok(Encoder::Wav(w)) => w.write(pcm, out).is_ok(),
        Ok(Encoder::Opus(o)) => o.write(pcm, out).is_ok(),
        Err(_) => false,
    }
}

fn sha256_of(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `v` to `path` through a temporary name, fsynced.
fn write_json(path: &Path, v: &serde_json::Value) {
    let tmp = path.with_extension("json.part");
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(v.to_string().as_bytes())?;
        f.sync_all()
    });
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, path);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_bridge::contract::{CallId, LegKey};

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sbc-rec-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn spec(format: RecordFormat, channels: RecordChannels) -> RecordSpec {
        RecordSpec {
            channels,
            format,
            rate: 8000,
            call: CallId(7),
            number: Some("support".into()),
            from: "+15550001".into(),
            to: "+15550100".into(),
            source: "api".into(),
            fork: None,
        }
    }

    fn recorder(dir: &Path, queue: Duration) -> (Recorder, mpsc::UnboundedReceiver<RecordingDone>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = RecorderConfig {
            dir: dir.to_path_buf(),
            queue,
            ..RecorderConfig::default()
        };
        (Recorder::new(cfg, tx), rx)
    }

    /// 20 ms of stereo 8 kHz: `a` in channel 1, `b` in channel 2.
    fn frame(a: i16, b: i16) -> Vec<i16> {
        (0..320).map(|i| if i % 2 == 0 { a } else { b }).collect()
    }

    #[test]
    fn a_finished_recording_is_renamed_hashed_and_described_beside_it() {
        let d = dir("wav");
        let (r, mut done) = recorder(&d, Duration::from_secs(5));
        let id = RecordingId(0x1234);
        let tap = r
            .start(id, &spec(RecordFormat::Wav, RecordChannels::Dual))
            .unwrap();
        for i in 0..50 {
            tap.frame(&frame(i, -i));
        }
        tap.note(
            Duration::from_millis(400),
            RecordNote {
                event: "hold".into(),
                party: Some(LegKey(0)),
                detail: None,
            },
        );
        tap.stop(Duration::from_secs(1));
        let ev = done.blocking_recv().unwrap();
        assert_eq!(ev.event, "recording.completed");
        let t = &ev.body;
        assert_eq!(t["durationMs"], 1000);
        assert_eq!(
            (t["complete"].as_bool(), t["droppedMs"].as_u64()),
            (Some(true), Some(0))
        );
        assert_eq!(t["callId"], "c-7");
        assert_eq!(t["events"][0]["event"], "hold");
        assert_eq!(t["events"][0]["atMs"], 400);
        let wav = std::fs::read(d.join("rec-0000000000001234.wav")).unwrap();
        assert!(!d.join("rec-0000000000001234.wav.part").exists());
        assert_eq!(wav.len(), 44 + 50 * 640);
        assert_eq!(t["bytes"].as_u64(), Some(wav.len() as u64));
        // The header says the sizes (a player reads 1 s of stereo).
        assert_eq!(
            u32::from_le_bytes(wav[40..44].try_into().unwrap()),
            50 * 640
        );
        assert_eq!(u16::from_le_bytes(wav[22..24].try_into().unwrap()), 2);
        // The 10th frame's first samples: 9 in channel 1, -9 in channel 2.
        let at = 44 + 9 * 640;
        let s = |o: usize| i16::from_le_bytes([wav[at + o], wav[at + o + 1]]);
        assert_eq!((s(0), s(2)), (9, -9));
        let sha: String = Sha256::digest(&wav)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(t["sha256"].as_str(), Some(sha.as_str()));
        // What the API serves.
        assert_eq!(r.timeline(id).unwrap(), *t);
        assert_eq!(r.media(id).map(|(_, ty)| ty), Some("audio/wav"));
        assert!(r.delete(id));
        assert!(r.timeline(id).is_none() && r.media(id).is_none());
        assert!(!r.delete(id));
    }

    #[test]
    fn a_writer_that_falls_behind_drops_the_oldest_keeps_the_time_and_says_so() {
        let d = dir("behind");
        // Room for 5 frames; 300 come at once, before the writer wakes.
        let (r, mut done) = recorder(&d, Duration::from_millis(100));
        let id = RecordingId(0x55);
        let tap = r
            .start(id, &spec(RecordFormat::Wav, RecordChannels::Mono))
            .unwrap();
        for i in 0..300 {
            tap.frame(&[i as i16; 160]);
        }
        tap.stop(Duration::from_secs(6));
        let t = done.blocking_recv().unwrap().body;
        let dropped = t["droppedMs"].as_u64().unwrap();
        assert!(dropped >= 20 * 200, "dropped {dropped} ms");
        assert_eq!(t["complete"], false);
        // The file still has the call's length: silence stands in for the gap.
        assert_eq!(t["durationMs"], 6000);
        let gaps: Vec<&serde_json::Value> = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "gap")
            .collect();
        assert_eq!(
            gaps.iter().map(|g| g["ms"].as_u64().unwrap()).sum::<u64>(),
            dropped
        );
        let wav = std::fs::read(d.join("rec-0000000000000055.wav")).unwrap();
        assert_eq!(wav.len(), 44 + 300 * 320);
        // The last frame is the newest one given.
        let last = i16::from_le_bytes([wav[wav.len() - 2], wav[wav.len() - 1]]);
        assert_eq!(last, 299);
    }

    #[test]
    fn a_recording_that_cannot_be_written_fails_and_frees_its_place() {
        let d = dir("blocked");
        std::fs::write(&d, b"a file where the directory should be").unwrap();
        let (tx, mut done) = mpsc::unbounded_channel();
        let cfg = RecorderConfig {
            dir: d.clone(),
            max_active: 1,
            ..RecorderConfig::default()
        };
        let r = Recorder::new(cfg, tx);
        let s = spec(RecordFormat::Wav, RecordChannels::Dual);
        let tap = r.start(RecordingId(1), &s).unwrap();
        // One at a time: a second is refused while the first runs, and says so.
        assert!(r.start(RecordingId(2), &s).is_none());
        let refused = done.blocking_recv().unwrap();
        assert_eq!(refused.event, "recording.failed");
        assert_eq!(refused.body["recordingId"], "rec-0000000000000002");
        tap.frame(&frame(1, 1));
        drop(tap); // as a media task that ends
        let ev = done.blocking_recv().unwrap();
        assert_eq!(ev.event, "recording.failed");
        assert!(ev.body["errors"][0].as_str().unwrap().starts_with("create"));
        // Its place is free again.
        let _ = std::fs::remove_file(&d);
        let tap = r.start(RecordingId(3), &s).expect("room again");
        tap.stop(Duration::ZERO);
        assert_eq!(done.blocking_recv().unwrap().event, "recording.completed");
    }

    #[test]
    fn an_opus_recording_is_an_ogg_file() {
        let d = dir("opus");
        let (r, mut done) = recorder(&d, Duration::from_secs(5));
        let id = RecordingId(0x0b);
        let tap = r
            .start(id, &spec(RecordFormat::Opus, RecordChannels::Dual))
            .unwrap();
        let tone = media_core::analysis::sine(8000, 440.0, 8000.0, 160);
        let mut f = vec![0i16; 320];
        for (i, s) in tone.iter().enumerate() {
            f[2 * i] = *s;
        }
        for _ in 0..100 {
            tap.frame(&f);
        }
        tap.stop(Duration::from_secs(2));
        let t = done.blocking_recv().unwrap().body;
        assert_eq!(
            (t["format"].as_str(), t["durationMs"].as_u64()),
            (Some("opus"), Some(2000))
        );
        let (path, ty) = r.media(id).unwrap();
        assert_eq!(ty, "audio/ogg");
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..4], b"OggS");
        assert_eq!(t["bytes"].as_u64(), Some(bytes.len() as u64));
    }

    #[test]
    fn retention_deletes_only_our_old_files() {
        let d = dir("retention");
        std::fs::create_dir_all(&d).unwrap();
        let old = std::time::UNIX_EPOCH + Duration::from_millis(Clock::unix_ms())
            - Duration::from_secs(3600);
        for name in [
            "rec-00000000000000aa.wav",
            "rec-00000000000000aa.json",
            "notes.txt",
        ] {
            let f = File::create(d.join(name)).unwrap();
            f.set_modified(old).unwrap();
        }
        File::create(d.join("rec-00000000000000bb.wav")).unwrap();
        sweep(&d, Duration::from_secs(60));
        let mut left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "rec-00000000000000bb.wav"]);
    }
}
