//! SIP transport driver: sockets around the sans-IO UA core of `sip-bridge`.

mod conn;
mod endpoint;

pub use endpoint::{
    Handle, SipConfig, SipCore, SipEndpoint, SipError, SipHandle, SipSockets, TransportStats,
    UaCore, UaJob, UdpLoss,
};
