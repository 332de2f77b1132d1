//! `test-fork`: the test consumer of live media forks
//! (`integration_tests::fork_consumer`) as a process, for the browser
//! end-to-end tests (`tests/e2e`).
//!
//! ```text
//! test-fork [--listen 127.0.0.1:0] [--mode normal|stall|crash]
//! ```
//!
//! JSON lines on stdout: `ready {addr, url}`, then once a second while
//! something changed `stats {connections, starts, frames, insights}` and each
//! new `start` message as `start {msg}`. End of stdin exits.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use integration_tests::fork_consumer::{ForkConsumer, Mode};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "test-fork",
    about = "Test consumer of live media forks (JSON lines)"
)]
struct Cli {
    /// Where to listen (port 0: a free one, printed in `ready`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// `normal`, `stall` (stops reading after 1 s) or `crash` (drops the
    /// first connection after 1 s).
    #[arg(long, default_value = "normal")]
    mode: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mode = match cli.mode.as_str() {
        "stall" => Mode::Stall,
        "crash" => Mode::Crash,
        _ => Mode::Normal,
    };
    let consumer = ForkConsumer::start_on(cli.listen, mode);
    println!(
        "{}",
        json!({"event": "ready", "addr": consumer.addr.to_string(), "url": consumer.url("/fork")})
    );
    // Stdin's end stops it.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        for _ in std::io::stdin().lock().lines() {}
        let _ = tx.send(());
    });
    let mut last = (0u32, 0usize, 0usize, 0u32);
    loop {
        let now = consumer.log(|l| {
            (
                l.connections,
                l.starts.len(),
                l.arrivals.len(),
                l.insights_sent,
            )
        });
        if now != last {
            let starts: Vec<serde_json::Value> = consumer.log(|l| l.starts[last.1..].to_vec());
            for s in starts {
                println!("{}", json!({"event": "start", "msg": s}));
            }
            println!(
                "{}",
                json!({"event": "stats", "connections": now.0, "starts": now.1, "frames": now.2, "insights": now.3})
            );
            last = now;
        }
        if rx.recv_timeout(Duration::from_secs(1)).is_ok() {
            return std::process::ExitCode::SUCCESS;
        }
    }
}
