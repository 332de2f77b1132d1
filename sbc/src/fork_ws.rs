//! The WebSocket client of one live media fork. The call's media task hands
//! it frames through a [`ForkLink`]: a bounded queue (2 s) behind a lock held
//! for one frame's copy, so the call never waits for the consumer. The task
//! connects (5 s at most), frames what the queue holds
//! ([`sip_bridge::fork::ForkFramer`]) and sends it; a consumer that reads
//! too slowly loses the oldest frames (counted, and told in an `overrun`
//! event); one that goes away is reconnected with backoff, and after
//! [`ATTEMPTS`] failures in a row the fork fails (`ForkFailed` to control,
//! the `fork` event with `failed`). What the consumer sends back (JSON
//! objects, at most 4 KiB, 20 a second) goes to control for the operators.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use media_core::record::FrameQueue;
use sip_bridge::bridge::{CallId, MediaEvent};
use sip_bridge::contract::{RecordNote, RecordSpec, RecordingId};
use sip_bridge::fork::{ForkFramer, ForkMessage};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::agent_ws;
use crate::inbox::{ControlIn, ControlTx};

/// Audio a slow consumer may have waiting: 2 s of 20 ms frames.
const QUEUE_FRAMES: usize = 100;
/// Connection attempts in a row before the fork fails.
pub const ATTEMPTS: u32 = 5;
/// A send that takes longer than this: the consumer stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages a consumer may send back per second, and their size.
const MESSAGES_PER_SEC: u32 = 20;
const MAX_MESSAGE: usize = 4096;
/// Notes kept for a consumer that is not there (the rest are dropped).
const MAX_NOTES: usize = 256;

/// What the media task holds of a fork.
#[derive(Debug)]
pub struct ForkLink {
    shared: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    stopped: bool,
}

#[derive(Debug)]
struct Queue {
    frames: FrameQueue,
    notes: Vec<(Duration, RecordNote)>,
    stop: bool,
}

impl ForkLink {
    /// The next 20 ms; never waits (a full queue drops its oldest frame).
    pub fn frame(&self, pcm: &[i16]) {
        if let Ok(mut q) = self.shared.lock()
            && q.frames.push(pcm)
        {
            metrics::counter!("sbc_fork_frames_dropped_total").increment(1);
        }
        self.wake.notify_one();
    }

    /// A timeline entry.
    pub fn note(&self, at: Duration, note: RecordNote) {
        if let Ok(mut q) = self.shared.lock()
            && q.notes.len() < MAX_NOTES
        {
            q.notes.push((at, note));
        }
        self.wake.notify_one();
    }

    /// The fork is over: the task sends what is left and `stop`.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if !self.stopped {
            self.stopped = true;
            if let Ok(mut q) = self.shared.lock() {
                q.stop = true;
            }
            self.wake.notify_one();
        }
    }
}

impl Drop for ForkLink {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Starts fork `id` of call `call` to `spec.fork`'s consumer; its consumer's
/// messages and its failure go to `control`.
pub fn spawn(call: CallId, id: RecordingId, spec: RecordSpec, control: ControlTx) -> ForkLink {
    let samples = (spec.rate.clamp(8000, 24_000) / 50) as usize * spec.channels.count();
    let shared = Arc::new(Mutex::new(Queue {
        frames: FrameQueue::new(samples, QUEUE_FRAMES),
        notes: Vec::new(),
        stop: false,
    }));
    let wake = Arc::new(Notify::new());
    let task = Task {
        call,
        id,
        framer: ForkFramer::new(id, &spec),
        spec,
        shared: shared.clone(),
        wake: wake.clone(),
        control,
        sent_dropped: 0,
    };
    metrics::gauge!("sbc_forks_active").increment(1.0);
    tokio::spawn(task.run());
    ForkLink {
        shared,
        wake,
        stopped: false,
    }
}

struct Task {
    call: CallId,
    id: RecordingId,
    spec: RecordSpec,
    framer: ForkFramer,
    shared: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    control: ControlTx,
    /// Drops already told to the consumer.
    sent_dropped: u64,
}

/// How a connection ended.
enum End {
    /// The fork stopped: done.
    Stopped,
    /// The consumer went away or failed: try again.
    Lost(String),
}

impl Task {
    async fn run(mut self) {
        let mut failures = 0u32;
        let mut connected_before = false;
        let reason = loop {
            if self.stopped() {
                break None;
            }
            let end = match self.connect().await {
                Ok(ws) => {
                    failures = 0;
                    metrics::gauge!("sbc_fork_consumers_connected").increment(1.0);
                    let end = self.session(ws, connected_before).await;
                    metrics::gauge!("sbc_fork_consumers_connected").decrement(1.0);
                    connected_before = true;
                    end
                }
                Err(e) => End::Lost(e),
            };
            match end {
                End::Stopped => break None,
                End::Lost(why) => {
                    failures += 1;
                    tracing::info!(call = %self.call, fork = %self.id, reason = %why, failures, "fork consumer lost");
                    if failures >= ATTEMPTS {
                        break Some(why);
                    }
                    metrics::counter!("sbc_fork_reconnects_total").increment(1);
                    // Backoff: 0.5, 1, 2, 4 s; frames wait (and the oldest go) meanwhile.
                    let backoff = Duration::from_millis(250 << failures.min(4));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.wait_stop() => break None,
                    }
                }
            }
        };
        metrics::gauge!("sbc_forks_active").decrement(1.0);
        if let Some(reason) = reason {
            metrics::counter!("sbc_forks_failed_total").increment(1);
            let _ = self.control.send(ControlIn::Media {
                call: self.call,
                event: MediaEvent::ForkFailed {
                    id: self.id,
                    reason,
                },
            });
        }
    }

    fn stopped(&self) -> bool {
        self.shared.lock().map_or(true, |q| q.stop)
    }

    async fn wait_stop(&self) {
        while !self.stopped() {
            self.wake.notified().await;
        }
    }

    async fn connect(
        &self,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    > {
        let Some(fork) = self.spec.fork.as_ref() else {
            return Err("not a fork".into());
        };
        agent_ws::connect(&fork.url, &fork.headers, "the consumer").await
    }

    /// One connection: `start`, then what the queue holds as it comes, and
    /// what the consumer says back.
    async fn session(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        resumed: bool,
    ) -> End {
        let (mut sink, mut stream) = ws.split();
        let mut out = Vec::new();
        self.framer.start(resumed, &mut out);
        let mut frame = vec![0i16; sip_bridge::media::RECORD_FRAME_MAX];
        let mut budget = MESSAGES_PER_SEC;
        let mut second = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Everything waiting, framed.
            let stop = {
                let Ok(mut q) = self.shared.lock() else {
                    return End::Stopped;
                };
                let dropped = q.frames.counts().1;
                if dropped > self.sent_dropped {
                    self.framer.overrun(dropped - self.sent_dropped, &mut out);
                    self.sent_dropped = dropped;
                }
                for (at, n) in q.notes.drain(..) {
                    self.framer.note(at, &n, &mut out);
                }
                let n = frame.len().min(q.frames_len());
                while q.frames.pop_into(&mut frame[..n]) {
                    self.framer.frame(&frame[..n], &mut out);
                }
                q.stop
            };
            if stop {
                self.framer.stop(&mut out);
            }
            for m in out.drain(..) {
                let msg = match m {
                    ForkMessage::Text(t) => Message::Text(t.into()),
                    ForkMessage::Binary(b) => Message::Binary(b),
                };
                match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return End::Lost(format!("the consumer's connection broke: {e}"));
                    }
                    Err(_) => return End::Lost("the consumer stopped reading".into()),
                }
            }
            if stop {
                let _ = sink.send(Message::Close(None)).await;
                return End::Stopped;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = second.tick() => budget = MESSAGES_PER_SEC,
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if budget > 0 && t.len() <= MAX_MESSAGE {
                            budget -= 1;
                            metrics::counter!("sbc_fork_messages_total").increment(1);
                            let _ = self.control.send(ControlIn::Media {
                                call: self.call,
                                event: MediaEvent::ForkMessage { id: self.id, text: t.to_string() },
                            });
                        } else {
                            metrics::counter!("sbc_fork_messages_dropped_total").increment(1);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        return End::Lost("the consumer closed the connection".into());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return End::Lost(format!("the consumer's connection broke: {e}")),
                },
            }
        }
    }
}

impl Queue {
    /// Samples per frame (the queue's frame size).
    fn frames_len(&self) -> usize {
        self.frames.frame_len()
    }
}
