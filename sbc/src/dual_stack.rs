//! Both address families on one socket. A socket bound to `[::]` with
//! `IPV6_V6ONLY` off carries IPv4 peers too, seen as IPv4-mapped addresses
//! (`::ffff:192.0.2.1`, RFC 4291 section 2.5.5.2; RFC 3493 section 3.7). The
//! sbc binds its SIP listeners and RTP ports that way when configured on `[::]`,
//! so one call can join an IPv4 and an IPv6 peer: addresses are made canonical
//! as they come in (an IPv4 peer is an IPv4 address everywhere inside: trunk
//! matching, Via/Contact and SDP of its family) and mapped again as they go out.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

fn socket(addr: SocketAddr, ty: Type, protocol: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(protocol))?;
    if addr.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) {
        // Explicitly: a host whose sysctl net.ipv6.bindv6only is 1 would
        // otherwise leave IPv4 out.
        s.set_only_v6(false)?;
    }
    Ok(s)
}

/// A UDP socket on `addr` (both families on `[::]`), non-blocking.
pub fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = socket(addr, Type::DGRAM, Protocol::UDP)?;
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A TCP listener on `addr` (both families on `[::]`), non-blocking.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = socket(addr, Type::STREAM, Protocol::TCP)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A peer as it came in: an IPv4-mapped address is its IPv4 address.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// A destination for a socket of `family` (`true`: IPv6): an IPv4 peer is
/// reached from an IPv6 socket at its IPv4-mapped address.
pub fn toward(a: SocketAddr, ipv6_socket: bool) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) if ipv6_socket => SocketAddr::new(v4.to_ipv6_mapped().into(), a.port()),
        _ => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn maps_and_unmaps_ipv4_peers() {
        let v4: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5060".parse().unwrap();
        assert_eq!(toward(v4, true), mapped);
        assert_eq!(toward(v4, false), v4);
        assert_eq!(canonical(mapped), v4);
        let v6: SocketAddr = "[::1]:5060".parse().unwrap();
        assert_eq!((toward(v6, true), canonical(v6)), (v6, v6));
    }

    #[test]
    fn a_socket_on_any_ipv6_address_carries_ipv4_too() {
        let s = bind_udp((Ipv6Addr::UNSPECIFIED, 0).into()).unwrap();
        let port = s.local_addr().unwrap().port();
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        v4.send_to(b"four", ("127.0.0.1", port)).unwrap();
        v6.send_to(b"six", ("::1", port)).unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let mut buf = [0u8; 16];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            got.push((buf[..n].to_vec(), canonical(from)));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                (b"four".to_vec(), v4.local_addr().unwrap()),
                (b"six".to_vec(), v6.local_addr().unwrap()),
            ]
        );
        // And back to the IPv4 peer through its mapped address.
        s.send_to(b"back", toward(v4.local_addr().unwrap(), true))
            .unwrap();
        v4.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = v4.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"back");
    }
}
