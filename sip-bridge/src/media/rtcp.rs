//! RTCP on SIP legs (RFC 3550 section 6), on the RTP port + 1: we report on
//! what we receive (RR, or SR while we send) every 5 s, randomised by half
//! (6.2), and read the peer's reports to learn how what we send arrives (loss,
//! jitter) and the round trip (6.4.1: RTT = A - LSR - DLSR).

use std::net::SocketAddr;
use std::time::Duration;

use media_core::rtp::rtcp::{
    ReceptionStats, ReportBlock, RtcpPacket, SenderInfo, ntp_middle, write_report,
};
use media_core::rtp::{RtpHeader, Ssrc};
use media_core::{Instant, SeededRng};

/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// The report interval before randomisation (section 6.2's minimum).
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// What a peer's report says of one SIP leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LegQuality {
    /// Lost since its previous report, in 1/256.
    pub fraction_lost: u8,
    /// Lost in total.
    pub cumulative_lost: i32,
    /// Interarrival jitter it measured on what we send.
    pub jitter: Duration,
    /// The round trip, when its report echoed one of our SRs.
    pub rtt: Option<Duration>,
}

/// RTCP state of one RTP leg.
#[derive(Debug)]
pub(super) struct RtcpLeg {
    /// Our SSRC in reports.
    ssrc: Ssrc,
    /// The peer's RTP stream.
    remote_ssrc: Option<u32>,
    received: ReceptionStats,
    clock_rate: u32,
    sent_packets: u32,
    sent_octets: u32,
    last_sent_ts: u32,
    /// The middle of the NTP time of the peer's last SR, and when it came.
    last_sr: Option<(u32, Instant)>,
    /// Where the peer's RTCP comes from (sent back there), once seen.
    latched: Option<SocketAddr>,
    pub next_report: Instant,
    pub quality: Option<LegQuality>,
    /// RTCP on the RTP port (RFC 5761).
    mux: bool,
    /// When the peer said BYE for its stream (RFC 3550 section 6.6), until
    /// its RTP comes again.
    pub bye: Option<Instant>,
}

impl RtcpLeg {
    pub fn new(now: Instant, clock_rate: u32, rng: &mut SeededRng) -> RtcpLeg {
        RtcpLeg {
            ssrc: Ssrc(rng.next_u32()),
            remote_ssrc: None,
            received: ReceptionStats::default(),
            clock_rate: clock_rate.max(1),
            sent_packets: 0,
            sent_octets: 0,
            last_sent_ts: 0,
            last_sr: None,
            latched: None,
            next_report: now + jittered(rng),
            quality: None,
            mux: false,
            bye: None,
        }
    }

    /// RTCP shares the RTP port (`a=rtcp-mux`, RFC 5761) or not.
    pub fn set_mux(&mut self, mux: bool) {
        if self.mux != mux {
            self.latched = None;
        }
        self.mux = mux;
    }

    /// Whether RTCP shares the RTP port.
    pub fn muxed(&self) -> bool {
        self.mux
    }

    /// The RTP clock changed (a new codec).
    pub fn set_clock_rate(&mut self, rate: u32) {
        self.clock_rate = rate.max(1);
    }

    /// An RTP packet from the peer.
    pub fn on_rtp(&mut self, now: Instant, h: &RtpHeader) {
        self.bye = None;
        if self.remote_ssrc != Some(h.ssrc.0) {
            // A new stream restarts the statistics (section 8.2).
            self.remote_ssrc = Some(h.ssrc.0);
            self.received = ReceptionStats::default();
        }
        let arrival =
            (u128::from(now.as_micros()) * u128::from(self.clock_rate) / 1_000_000) as u32;
        self.received
            .on_packet(h.sequence_number.0, h.timestamp.0, arrival);
    }

    /// An RTP packet we sent it (`bytes`: the whole packet).
    pub fn on_sent(&mut self, bytes: &[u8]) {
        if bytes.len() >= 12 {
            self.sent_packets = self.sent_packets.wrapping_add(1);
            self.sent_octets = self.sent_octets.wrapping_add(bytes.len() as u32 - 12);
            self.last_sent_ts = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        }
    }

    /// Where our reports go: where its RTCP comes from, else its RTP port + 1
    /// (RFC 3550 section 11), or its RTP address itself when muxed (RFC 5761).
    pub fn destination(&self, rtp_remote: Option<SocketAddr>) -> Option<SocketAddr> {
        if self.mux {
            return self.latched.or(rtp_remote);
        }
        self.latched.or_else(|| {
            rtp_remote.and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p)))
        })
    }

    /// Writes our compound report now into `out` (cleared first): an SR while
    /// we send, else an RR; a report block on its stream once we have one.
    pub fn report(
        &mut self,
        now: Instant,
        ntp_at_zero: Duration,
        cname: &str,
        rng: &mut SeededRng,
        out: &mut Vec<u8>,
    ) {
        let ntp = ntp_of(now, ntp_at_zero);
        let sender = (self.sent_packets > 0).then_some(SenderInfo {
            ntp,
            rtp_ts: self.last_sent_ts,
            packets: self.sent_packets,
            octets: self.sent_octets,
        });
        let block: Option<ReportBlock> = self.remote_ssrc.map(|ssrc| {
            let (lsr, dlsr) = match self.last_sr {
                Some((mid, at)) => {
                    let since = now.saturating_duration_since(at);
                    (mid, (since.as_micros() * 65_536 / 1_000_000) as u32)
                }
                None => (0, 0),
            };
            self.received.report_block(ssrc, lsr, dlsr)
        });
        out.clear();
        write_report(out, self.ssrc, sender.as_ref(), block.as_slice(), cname);
        self.next_report = now + jittered(rng);
    }

    /// A compound RTCP packet from `from`. Returns whether it was RTCP.
    pub fn on_rtcp(
        &mut self,
        now: Instant,
        ntp_at_zero: Duration,
        from: SocketAddr,
        data: &[u8],
    ) -> bool {
        let Ok(packets) = media_core::rtp::rtcp::parse_compound(data) else {
            return false;
        };
        self.latched = Some(from);
        for p in packets {
            let blocks = match p {
                RtcpPacket::SenderReport { info, blocks, .. } => {
                    self.last_sr = Some((ntp_middle(info.ntp), now));
                    blocks
                }
                RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                RtcpPacket::Bye { ssrcs } => {
                    // Its stream (or, before any RTP, any) is leaving.
                    if self.remote_ssrc.is_none_or(|r| ssrcs.contains(&r)) {
                        self.bye = Some(now);
                    }
                    continue;
                }
                _ => continue,
            };
            // A SIP peer receives one stream from us: its first block is on it.
            if let Some(b) = blocks.first() {
                let rtt = (b.lsr != 0).then(|| {
                    let a = ntp_middle(ntp_of(now, ntp_at_zero));
                    let units = a.wrapping_sub(b.lsr).wrapping_sub(b.dlsr);
                    Duration::from_micros(u64::from(units) * 1_000_000 / 65_536)
                });
                self.quality = Some(LegQuality {
                    fraction_lost: b.fraction_lost,
                    cumulative_lost: b.cumulative_lost,
                    jitter: Duration::from_micros(
                        u64::from(b.jitter) * 1_000_000 / u64::from(self.clock_rate),
                    ),
                    // Above 10 s it is no round trip but a bad clock or echo.
                    rtt: rtt.filter(|r| *r < Duration::from_secs(10)),
                });
            }
        }
        true
    }
}

/// NTP time of `now` (section 4): seconds since 1900 in the high 32 bits.
fn ntp_of(now: Instant, ntp_at_zero: Duration) -> u64 {
    let t = ntp_at_zero + Duration::from_micros(now.as_micros());
    let secs = t.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(t.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The interval, randomised over [0.5, 1.5] of it (section 6.2).
fn jittered(rng: &mut SeededRng) -> Duration {
    let ms = REPORT_INTERVAL.as_millis() as u64;
    Duration::from_millis(ms / 2 + rng.next_u64() % ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use media_core::rtp::RtpPacket;

    fn rtp(seq: u16, ts: u32) -> Vec<u8> {
        let mut b = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        b[2..4].copy_from_slice(&seq.to_be_bytes());
        b[4..8].copy_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&[0xff; 160]);
        b
    }

    #[test]
    fn reports_carry_what_was_received_and_the_peers_report_gives_the_round_trip() {
        let mut rng = SeededRng::new(3);
        let t0 = Instant::from_millis(1_000);
        let mut a = RtcpLeg::new(t0, 8000, &mut rng);
        let mut b = RtcpLeg::new(t0, 8000, &mut rng);
        let wall = Duration::from_secs(1_790_000_000);
        // A sends 50 packets to B; B loses every 10th.
        for i in 0..50u16 {
            let p = rtp(i, u32::from(i) * 160);
            a.on_sent(&p);
            if i % 10 != 9 {
                let at = t0 + Duration::from_millis(u64::from(i) * 20);
                let pkt = RtpPacket::parse(bytes::Bytes::from(p)).unwrap();
                b.on_rtp(at, pkt.header());
            }
        }
        let peer: SocketAddr = "192.0.2.7:4001".parse().unwrap();
        // A's SR reaches B 40 ms later; B answers with an RR 1 s after that,
        // which reaches A after another 40 ms: RTT 80 ms.
        let t1 = t0 + Duration::from_secs(1);
        let mut sr = Vec::new();
        a.report(t1, wall, "a@sbc", &mut rng, &mut sr);
        assert!(b.on_rtcp(t1 + Duration::from_millis(40), wall, peer, &sr));
        let t2 = t1 + Duration::from_millis(1_040);
        let mut rr = Vec::new();
        b.report(t2, wall, "b@sbc", &mut rng, &mut rr);
        assert!(a.on_rtcp(t2 + Duration::from_millis(40), wall, peer, &rr));
        let q = a.quality.unwrap();
        assert_eq!(
            q.cumulative_lost, 4,
            "seq 9, 19, 29, 39 (49 is past the highest)"
        );
        assert_eq!(q.fraction_lost, ((4 << 8) / 49) as u8);
        let rtt = q.rtt.unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(80)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        assert_eq!(
            a.destination(None),
            Some(peer),
            "latched to its RTCP source"
        );
        assert!(!a.on_rtcp(t2, wall, peer, b"not rtcp"));
        // Reports come every 2.5-7.5 s.
        let gap = a.next_report.saturating_duration_since(t1);
        assert!(gap >= Duration::from_millis(2_500) && gap <= Duration::from_millis(7_500));
    }
}
