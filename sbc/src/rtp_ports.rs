//! RTP ports reserved before they are written into an SDP: the bridge's port
//! pool asks [`RtpPorts`] (its [`PortProbe`]) for each port, which binds the RTP
//! port and its RTCP port (+1, RFC 3550 section 11) at once. A port another
//! process holds is skipped by the pool instead of failing the call later in the
//! media task; the media task takes over the bound sockets.

use std::collections::HashMap;
use std::net::{IpAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use sip_bridge::bridge::PortProbe;

/// A leg's reserved pair of sockets.
#[derive(Debug)]
pub struct Reserved {
    /// The RTP socket, non-blocking.
    pub rtp: UdpSocket,
    /// The RTCP socket on port + 1 (RFC 3550 section 11), non-blocking.
    pub rtcp: UdpSocket,
}

/// The reservations shared by the control task (which makes them) and the media
/// tasks (which take them). At most one per port of the range: a reservation
/// whose leg never started its media is found again and reused.
#[derive(Clone, Debug)]
pub struct RtpPorts {
    bind: IpAddr,
    held: Arc<Mutex<HashMap<u16, Reserved>>>,
}

impl RtpPorts {
    /// Reservations on `bind`.
    pub fn new(bind: IpAddr) -> Self {
        RtpPorts {
            bind,
            held: Arc::default(),
        }
    }

    /// The sockets reserved for `port`, if any (the media task binds otherwise).
    pub fn take(&self, port: u16) -> Option<Reserved> {
        self.lock().remove(&port)
    }

    /// Reservations not yet taken.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No reservation is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Reserved>> {
        // A panic elsewhere cannot leave the map half-written: use it anyway.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bind_pair(&self, port: u16) -> std::io::Result<Reserved> {
        // Both go to tokio (the media task reads RTCP too): non-blocking; on
        // `::` for IPv4 and IPv6 peers alike.
        let rtp = crate::dual_stack::bind_udp((self.bind, port).into())?;
        let rtcp_port = port.checked_add(1).ok_or_else(no_port)?;
        let rtcp = crate::dual_stack::bind_udp((self.bind, rtcp_port).into())?;
        Ok(Reserved { rtp, rtcp })
    }
}

fn no_port() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "no RTCP port above 65535")
}

impl PortProbe for RtpPorts {
    fn reserve(&mut self, port: u16) -> bool {
        if self.lock().contains_key(&port) {
            return true;
        }
        match self.bind_pair(port) {
            Ok(r) => {
                self.lock().insert(port, r);
                true
            }
            Err(e) => {
                tracing::debug!(port, error = %e, "RTP port taken: skipped");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// An even port pair free at this moment on 127.0.0.1.
    fn free_pair() -> (u16, UdpSocket) {
        loop {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let p = s.local_addr().unwrap().port();
            if p.is_multiple_of(2) && p < u16::MAX {
                return (p, s);
            }
        }
    }

    #[test]
    fn a_port_held_elsewhere_is_refused_and_a_free_one_reserved_once() {
        let mut ports = RtpPorts::new(Ipv4Addr::LOCALHOST.into());
        let (busy, holder) = free_pair();
        assert!(!ports.reserve(busy), "another socket holds it");
        drop(holder);
        assert!(ports.reserve(busy), "free now");
        assert!(ports.reserve(busy), "already ours: reused, not bound twice");
        assert_eq!(ports.len(), 1);
        // Both halves are really held.
        assert!(UdpSocket::bind((Ipv4Addr::LOCALHOST, busy)).is_err());
        assert!(UdpSocket::bind((Ipv4Addr::LOCALHOST, busy + 1)).is_err());
        let r = ports.take(busy).expect("reserved");
        assert_eq!(r.rtp.local_addr().unwrap().port(), busy);
        assert_eq!(r.rtcp.local_addr().unwrap().port(), busy + 1);
        assert!(ports.take(busy).is_none() && ports.is_empty());
        drop(r);
        assert!(
            UdpSocket::bind((Ipv4Addr::LOCALHOST, busy)).is_ok(),
            "released"
        );
    }

    #[test]
    fn a_busy_rtcp_port_refuses_the_pair() {
        let mut ports = RtpPorts::new(Ipv4Addr::LOCALHOST.into());
        // Hold only the RTCP half of a pair (retry if another process has it).
        let (p, rtcp_holder) = loop {
            let (p, holder) = free_pair();
            drop(holder);
            if let Ok(h) = UdpSocket::bind((Ipv4Addr::LOCALHOST, p + 1)) {
                break (p, h);
            }
        };
        assert!(!ports.reserve(p));
        assert!(ports.is_empty());
        drop(rtcp_holder);
    }
}
