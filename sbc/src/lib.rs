//! The session border controller: I/O drivers, configuration and operations around
//! the sans-IO `sip-bridge` and `media-core` cores. The `sbc` binary is a thin
//! shell over this library.

pub mod agent_ws;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod events;
pub mod http;
pub mod media;
pub mod media_task;
pub mod protect;
pub mod router;
pub mod run;
pub mod server;
pub mod sip;
pub mod webrtc_port;
