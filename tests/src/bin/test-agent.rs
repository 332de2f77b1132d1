//! `test-agent`: the test AI voice agent (`integration_tests::agent`) as a
//! process, for the browser end-to-end tests (`tests/e2e`).
//!
//! ```text
//! test-agent [--listen 127.0.0.1:0] [--never-accept] [--amplitude 8000]
//!            [--report-ms 500] [--burst-frames 10] [--burst-gap-ms 50]
//!            [--on-start '{"cmd":"tone","hz":600,"ms":1000}' ...]
//! ```
//!
//! It speaks native (PCM16 24 kHz) or Twilio framing, whichever the SBC opens
//! with. JSON lines on stdout, each with `event` and `t_ms` (this process's
//! clock):
//!
//! * `ready {addr, url}`: listening
//! * `tcp {conn, peer}`, `connected {conn, path, headers}` (the handshake done)
//! * `message {conn, kind, msg}`: a JSON message from the SBC other than audio
//!   (`start`, `connected`, `dtmf`, `mark`, `stop`)
//! * `audio {conn, rate, bytes}`: the first audio frame of a connection
//! * `tone {conn, rate, freq, level_db, frames}` every `--report-ms` while audio
//!   arrives: the dominant frequency (100-3800 Hz) of what was heard in that
//!   window and its level (dB re full-scale sine); `freq` null when nothing came
//! * `sent {conn, kind, frames}`: what we sent (`audio` bursts, `mark`, `clear`,
//!   `hangup`, `transfer`)
//! * `closed {conn, how}`, `error {message}`
//!
//! Commands on stdin, JSON lines, to every live connection unless `conn` is
//! given: `{"cmd":"tone","hz":600,"ms":1000}`, `{"cmd":"silence","ms":200}`,
//! `{"cmd":"mark","name":"greeting"}`, `{"cmd":"clear"}`, `{"cmd":"hangup"}`,
//! `{"cmd":"transfer","target":"operators"}`, `{"cmd":"close"}`,
//! `{"cmd":"crash"}`, `{"cmd":"stall"}`; `{"cmd":"accept","mode":"never"}` (or
//! `"handshake"`) for later connections; `{"cmd":"quit"}`. End of stdin exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use integration_tests::agent::{
    Accept, AgentEvent, AgentOptions, CloseHow, Command, Pace, TestAgent, now,
};
use media_core::analysis::{dominant_frequency, goertzel_level_db};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    name = "test-agent",
    about = "Test AI voice agent over WebSocket (JSON lines)"
)]
struct Cli {
    /// Where to listen (port 0: a free one, printed in `ready`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Take TCP connections but never answer the WebSocket upgrade.
    #[arg(long)]
    never_accept: bool,
    /// Peak amplitude of tones (16-bit scale).
    #[arg(long, default_value_t = 8000.0)]
    amplitude: f64,
    /// Tone report interval (ms).
    #[arg(long, default_value_t = 500)]
    report_ms: u64,
    /// Audio frames (20 ms) per burst.
    #[arg(long, default_value_t = 10)]
    burst_frames: usize,
    /// Pause between bursts (ms).
    #[arg(long, default_value_t = 50)]
    burst_gap_ms: u64,
    /// A command (JSON, as on stdin) run on each connection at its start;
    /// repeat for a script.
    #[arg(long)]
    on_start: Vec<String>,
}

struct Out {
    epoch: Instant,
}

impl Out {
    fn emit(&self, event: &str, at: Instant, fields: Value) {
        let mut obj = serde_json::Map::new();
        obj.insert("event".into(), json!(event));
        let ms = at.saturating_duration_since(self.epoch).as_micros() as f64 / 1000.0;
        obj.insert("t_ms".into(), json!(ms));
        if let Value::Object(m) = fields {
            obj.extend(m);
        }
        println!("{}", Value::Object(obj));
    }
}

/// What one connection's audio did since the last report.
#[derive(Default)]
struct Heard {
    rate: u32,
    pcm: Vec<i16>,
    frames: u64,
    total: u64,
}

fn report(out: &Out, conn: u64, h: &mut Heard) {
    if h.frames == 0 {
        return;
    }
    let fields = if h.pcm.len() >= (h.rate / 20) as usize {
        let f = dominant_frequency(&h.pcm, h.rate, 100.0, 3800.0);
        let level = goertzel_level_db(&h.pcm, h.rate, f);
        json!({"conn": conn, "rate": h.rate, "freq": f, "level_db": (level * 10.0).round() / 10.0, "frames": h.frames})
    } else {
        json!({"conn": conn, "rate": h.rate, "freq": null, "level_db": null, "frames": h.frames})
    };
    out.emit("tone", now(), fields);
    h.pcm.clear();
    h.frames = 0;
}

/// Stdin lines on a thread; `None` at the end.
fn stdin_lines() -> mpsc::UnboundedReceiver<Option<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) => {
                    let l = line.trim();
                    if !l.is_empty() && tx.send(Some(l.to_string())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn parse_commands(list: &[String]) -> Result<Vec<Command>, String> {
    list.iter()
        .map(|s| {
            let v: Value = serde_json::from_str(s).map_err(|e| format!("--on-start {s}: {e}"))?;
            Command::from_json(&v).map_err(|e| format!("--on-start {s}: {e}"))
        })
        .collect()
}

/// Applies one stdin line; `false` to quit.
fn command(out: &Out, agent: &TestAgent, line: &str) -> bool {
    let v: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            out.emit(
                "error",
                now(),
                json!({"message": format!("bad command: {e}")}),
            );
            return true;
        }
    };
    match v["cmd"].as_str().unwrap_or("") {
        "quit" => return false,
        "accept" => {
            let mode = if v["mode"].as_str() == Some("never") {
                Accept::Never
            } else {
                Accept::Handshake
            };
            agent.set_accept(mode);
        }
        _ => match Command::from_json(&v) {
            Ok(cmd) => {
                let n = match v["conn"].as_u64() {
                    Some(c) => usize::from(agent.command(c, cmd)),
                    None => agent.broadcast(cmd),
                };
                if n == 0 {
                    out.emit(
                        "error",
                        now(),
                        json!({"message": format!("no live connection for {line}")}),
                    );
                }
            }
            Err(e) => out.emit("error", now(), json!({"message": e})),
        },
    }
    true
}

async fn run(cli: Cli) -> Result<(), String> {
    let out = Out { epoch: now() };
    let opts = AgentOptions {
        listen: cli.listen,
        accept: if cli.never_accept {
            Accept::Never
        } else {
            Accept::Handshake
        },
        pace: Pace {
            frames: cli.burst_frames.max(1),
            gap: Duration::from_millis(cli.burst_gap_ms),
        },
        amplitude: cli.amplitude,
        on_start: parse_commands(&cli.on_start)?,
    };
    let mut agent = TestAgent::start(opts)
        .await
        .map_err(|e| format!("listen {}: {e}", cli.listen))?;
    out.emit(
        "ready",
        now(),
        json!({"addr": agent.addr().to_string(), "url": agent.url("")}),
    );
    let mut stdin = stdin_lines();
    let mut heard: HashMap<u64, Heard> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(cli.report_ms.max(50)));
    tick.tick().await;
    loop {
        tokio::select! {
            ev = agent.next_event(Duration::from_secs(3600)) => {
                let Some(ev) = ev else { continue };
                agent.clear_history();
                let at = ev.at();
                match ev {
                    AgentEvent::Tcp { conn, peer, .. } => out.emit("tcp", at, json!({"conn": conn, "peer": peer.to_string()})),
                    AgentEvent::Connected { conn, path, headers, .. } => {
                        let h: serde_json::Map<String, Value> = headers.into_iter().map(|(k, v)| (k, json!(v))).collect();
                        out.emit("connected", at, json!({"conn": conn, "path": path, "headers": h}));
                    }
                    AgentEvent::Message { conn, kind, json: msg, .. } => out.emit("message", at, json!({"conn": conn, "kind": kind, "msg": msg})),
                    AgentEvent::Audio { conn, rate, pcm, wire_bytes, .. } => {
                        let h = heard.entry(conn).or_default();
                        if h.total == 0 {
                            out.emit("audio", at, json!({"conn": conn, "rate": rate, "bytes": wire_bytes}));
                        }
                        h.rate = rate;
                        h.frames += 1;
                        h.total += 1;
                        h.pcm.extend_from_slice(&pcm);
                    }
                    AgentEvent::Sent { conn, kind, frames, .. } => out.emit("sent", at, json!({"conn": conn, "kind": kind, "frames": frames})),
                    AgentEvent::Closed { conn, how, .. } => {
                        if let Some(h) = heard.get_mut(&conn) {
                            report(&out, conn, h);
                        }
                        heard.remove(&conn);
                        let how = match how {
                            CloseHow::CloseFrame => "close_frame".to_string(),
                            CloseHow::Eof => "eof".to_string(),
                            CloseHow::Error(e) => format!("error: {e}"),
                            CloseHow::ByUs => "by_us".to_string(),
                            CloseHow::Crashed => "crashed".to_string(),
                        };
                        out.emit("closed", at, json!({"conn": conn, "how": how}));
                    }
                }
            }
            _ = tick.tick() => {
                for (conn, h) in heard.iter_mut() {
                    report(&out, *conn, h);
                }
            }
            line = stdin.recv() => match line.flatten() {
                Some(l) => {
                    if !command(&out, &agent, &l) {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    // Quit: close what is open, give the close handshakes a moment.
    agent.broadcast(Command::Close);
    let _ = agent.wait_for(Duration::from_millis(500), |_| false).await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("test-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", json!({"event": "error", "message": e, "fatal": true}));
            eprintln!("test-agent: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
