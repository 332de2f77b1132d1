//! The session border controller: the I/O drivers, configuration and operations
//! around the sans-IO `sip-bridge` and `media-core` cores. The `sbc` binary is a
//! thin shell over this library; a Rust service can run the same server
//! in-process ([`server::Server::builder`]), decide routing per call
//! ([`router::Router`]) and receive call events ([`events::EventSink`]).
//!
//! # Tasks
//!
//! One task owns SIP and call control (the bridge), one task per call owns its
//! media, one the shared WebRTC port, and axum serves HTTP and WebSockets; see
//! `ARCHITECTURE.md`. They talk through typed messages ([`inbox`]): other tasks
//! send the control task [`inbox::ControlIn`]s (through [`sip::Handle`], or an
//! unbounded sender for media tasks), and it sends each media task
//! [`inbox::MediaIn`]s.
//!
//! # Time
//!
//! [`clock::Clock`] is the one place the clock is read (the cores take `now`).
//! Being tokio's clock, `tokio::time::pause` puts a whole server on virtual time.
//!
//! # Panics
//!
//! Peer input never panics a task. Startup errors (a busy port, a bad config) are
//! returned as errors, with the offending config key.
//!
//! # Example: an embedded server
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let cfg = sbc::config::SbcConfig::demo();
//! let server = sbc::server::Server::builder(sbc::run::server_config(&cfg).await?).start().await?;
//! println!("SIP on {:?}, HTTP on {}", server.sip_udp, server.http);
//! server.shutdown(Duration::from_secs(30)).await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod agent_ws;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod directory;
pub mod dual_stack;
pub mod events;
pub mod fork_ws;
pub mod http;
pub mod inbox;
pub mod media_task;
pub mod protect;
pub mod recorder;
pub mod router;
pub mod rtp_ports;
pub mod run;
pub mod server;
pub mod sign;
pub mod sip;
pub mod telemetry;
pub mod tools;
pub mod webrtc_port;
