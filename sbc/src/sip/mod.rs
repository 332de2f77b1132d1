//! SIP transport driver: sockets around the sans-IO UA core of `sip-bridge`.

mod conn;
mod endpoint;

pub use endpoint::{SipConfig, SipEndpoint, SipError, SipHandle, TransportStats, UdpLoss};
