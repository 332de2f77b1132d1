//! A minimal reader for classic libpcap captures of RTP over UDP: enough to replay
//! carrier and SIPp captures through the media path. Malformed captures are errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What is wrong with a capture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PcapError {
    /// Not a classic pcap file.
    #[error("not a pcap file (magic {0:#010x})")]
    BadMagic(u32),
    /// A link type this reader does not decode.
    #[error("unsupported link type {0}")]
    LinkType(u32),
    /// A record runs past the end of the file.
    #[error("truncated record at byte {0}")]
    Truncated(usize),
}

/// One UDP datagram from a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Capture time, microseconds since the Unix epoch.
    pub micros: u64,
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// UDP payload.
    pub payload: &'a [u8],
}

/// Every UDP datagram in `file`, in capture order. Non-UDP frames are skipped.
pub fn udp_datagrams(file: &[u8]) -> Result<Vec<UdpDatagram<'_>>, PcapError> {
    let head = file.get(..24).ok_or(PcapError::Truncated(0))?;
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let (big_endian, nanos) = match magic {
        0xa1b2c3d4 => (false, false),
        0xa1b23c4d => (false, true),
        0xd4c3b2a1 => (true, false),
        0x4d3cb2a1 => (true, true),
        m => return Err(PcapError::BadMagic(m)),
    };
    let u32_at = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let link = u32_at(head, 20);
    let mut out = Vec::new();
    let mut at = 24;
    while at < file.len() {
        let rec = file.get(at..at + 16).ok_or(PcapError::Truncated(at))?;
        let (sec, frac, incl) = (u32_at(rec, 0), u32_at(rec, 4), u32_at(rec, 8) as usize);
        let data = file
            .get(at + 16..at + 16 + incl)
            .ok_or(PcapError::Truncated(at))?;
        at += 16 + incl;
        let micros = sec as u64 * 1_000_000
            + if nanos {
                frac as u64 / 1000
            } else {
                frac as u64
            };
        let ip = match link {
            0 => data.get(4..),                 // BSD loopback
            1 => ethernet_payload(data),        // Ethernet
            101 | 12 | 228 | 229 => Some(data), // raw IP
            113 => data.get(16..),              // Linux SLL
            276 => data.get(20..),              // Linux SLL2
            l => return Err(PcapError::LinkType(l)),
        };
        if let Some(d) = ip.and_then(|ip| udp_in_ip(ip, micros)) {
            out.push(d);
        }
    }
    Ok(out)
}

fn ethernet_payload(frame: &[u8]) -> Option<&[u8]> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut at = 14;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([*frame.get(at + 2)?, *frame.get(at + 3)?]);
        at += 4;
    }
    frame.get(at..)
}

fn udp_in_ip(ip: &[u8], micros: u64) -> Option<UdpDatagram<'_>> {
    let (src, dst, udp) = match ip.first()? >> 4 {
        4 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            if *ip.get(9)? != 17 || ip.len() < 20 {
                return None;
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            (src, dst, ip.get(ihl..total.min(ip.len()))?)
        }
        6 => {
            if *ip.get(6)? != 17 || ip.len() < 40 {
                return None;
            }
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&ip[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            (addr(8), addr(24), &ip[40..])
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]) as usize;
    let payload = udp.get(8..len.clamp(8, udp.len()))?;
    Some(UdpDatagram {
        micros,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn reads_the_sipp_pcma_capture() {
        let file = testdata::read("rtp-pcaps/g711a.pcap");
        let d = udp_datagrams(&file).unwrap();
        assert_eq!(d.len(), 236);
        assert!(d.iter().all(|x| x.payload.len() == 12 + 240)); // 30 ms of PCMA
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(udp_datagrams(&[0; 10]), Err(PcapError::Truncated(0)));
        assert!(matches!(
            udp_datagrams(&[7; 40]),
            Err(PcapError::BadMagic(_))
        ));
        let mut file = testdata::read("rtp-pcaps/dtmf_2833_1.pcap");
        file.truncate(file.len() - 3);
        assert!(matches!(udp_datagrams(&file), Err(PcapError::Truncated(_))));
    }
}
