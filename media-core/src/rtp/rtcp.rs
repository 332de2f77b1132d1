//! RTCP (RFC 3550 section 6): sender and receiver reports (6.4), SDES CNAME
//! (6.5) and BYE (6.6) parsed from compound packets and written as compound
//! packets, and the receiver statistics behind a report block (appendix A.3
//! for loss, A.8 for interarrival jitter). RTCP is a few packets per leg every
//! few seconds, so parsing may allocate; the statistics do not.

use super::Ssrc;

/// One report block (section 6.4.1): what a receiver says of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Lost in total (24 bits, signed: duplicates make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the NTP time of the last SR from that source.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

/// The sender info of an SR (section 6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP timestamp (seconds since 1900 << 32 | fraction).
    pub ntp: u64,
    /// The same instant on the RTP clock.
    pub rtp_ts: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// One packet of a compound RTCP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpPacket {
    /// Sender report (PT 200).
    SenderReport {
        /// The sender.
        ssrc: u32,
        /// What it sent.
        info: SenderInfo,
        /// What it received.
        blocks: Vec<ReportBlock>,
    },
    /// Receiver report (PT 201).
    ReceiverReport {
        /// The receiver.
        ssrc: u32,
        /// What it received.
        blocks: Vec<ReportBlock>,
    },
    /// Goodbye (PT 203): these sources leave.
    Bye {
        /// The sources.
        ssrcs: Vec<u32>,
    },
    /// SDES, APP, feedback...: skipped.
    Other {
        /// Its packet type.
        pt: u8,
    },
}

/// What is wrong with a datagram that is not RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// Shorter than a header, or than its length says.
    #[error("RTCP packet too short")]
    Short,
    /// Version is not 2.
    #[error("RTCP version is not 2")]
    Version,
    /// A packet type outside 192..=223 (RTP, or noise).
    #[error("not an RTCP packet type")]
    PacketType,
    /// More report blocks than the length holds.
    #[error("RTCP report count exceeds the packet")]
    Count,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn blocks(b: &[u8], count: usize) -> Result<Vec<ReportBlock>, RtcpError> {
    if b.len() < count * 24 {
        return Err(RtcpError::Count);
    }
    Ok((0..count)
        .map(|i| {
            let at = i * 24;
            // 24-bit two's complement (section 6.4.1).
            let lost = be32(b, at + 4) & 0x00ff_ffff;
            let lost = ((lost << 8) as i32) >> 8;
            ReportBlock {
                ssrc: be32(b, at),
                fraction_lost: b[at + 4],
                cumulative_lost: lost,
                highest_seq: be32(b, at + 8),
                jitter: be32(b, at + 12),
                lsr: be32(b, at + 16),
                dlsr: be32(b, at + 20),
            }
        })
        .collect())
}

/// Parses a compound RTCP packet (section 6.1); at most 16 packets are read.
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() && out.len() < 16 {
        if rest.len() < 4 {
            return Err(RtcpError::Short);
        }
        if rest[0] >> 6 != 2 {
            return Err(RtcpError::Version);
        }
        let count = usize::from(rest[0] & 0x1f);
        let pt = rest[1];
        if !(192..=223).contains(&pt) {
            return Err(RtcpError::PacketType);
        }
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if rest.len() < len {
            return Err(RtcpError::Short);
        }
        let body = &rest[4..len];
        out.push(match pt {
            200 => {
                if body.len() < 24 {
                    return Err(RtcpError::Short);
                }
                let ntp = (u64::from(be32(body, 4)) << 32) | u64::from(be32(body, 8));
                RtcpPacket::SenderReport {
                    ssrc: be32(body, 0),
                    info: SenderInfo {
                        ntp,
                        rtp_ts: be32(body, 12),
                        packets: be32(body, 16),
                        octets: be32(body, 20),
                    },
                    blocks: blocks(&body[24..], count)?,
                }
            }
            201 => {
                if body.len() < 4 {
                    return Err(RtcpError::Short);
                }
                RtcpPacket::ReceiverReport {
                    ssrc: be32(body, 0),
                    blocks: blocks(&body[4..], count)?,
                }
            }
            203 => {
                if body.len() < count * 4 {
                    return Err(RtcpError::Count);
                }
                RtcpPacket::Bye {
                    ssrcs: (0..count).map(|i| be32(body, i * 4)).collect(),
                }
            }
            pt => RtcpPacket::Other { pt },
        });
        rest = &rest[len..];
    }
    Ok(out)
}

/// Writes a compound packet into `out`: an SR (with `sender`) or an RR from
/// `ssrc` with up to 31 `blocks`, then an SDES with our CNAME (section 6.1:
/// every compound packet carries one).
pub fn write_report(
    out: &mut Vec<u8>,
    ssrc: Ssrc,
    sender: Option<&SenderInfo>,
    blocks: &[ReportBlock],
    cname: &str,
) {
    let blocks = &blocks[..blocks.len().min(31)];
    let words = 1 + if sender.is_some() { 5 } else { 0 } + blocks.len() * 6;
    out.push(0x80 | blocks.len() as u8);
    out.push(if sender.is_some() { 200 } else { 201 });
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.0.to_be_bytes());
    if let Some(s) = sender {
        out.extend_from_slice(&s.ntp.to_be_bytes());
        out.extend_from_slice(&s.rtp_ts.to_be_bytes());
        out.extend_from_slice(&s.packets.to_be_bytes());
        out.extend_from_slice(&s.octets.to_be_bytes());
    }
    for b in blocks {
        out.extend_from_slice(&b.ssrc.to_be_bytes());
        let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
        out.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&b.highest_seq.to_be_bytes());
        out.extend_from_slice(&b.jitter.to_be_bytes());
        out.extend_from_slice(&b.lsr.to_be_bytes());
        out.extend_from_slice(&b.dlsr.to_be_bytes());
    }
    // SDES: one chunk, CNAME, then a null item and padding to 32 bits (6.5).
    let cname = &cname.as_bytes()[..cname.len().min(255)];
    let chunk = 4 + 2 + cname.len() + 1;
    let padded = chunk.div_ceil(4) * 4;
    out.push(0x81);
    out.push(202);
    out.extend_from_slice(&((padded / 4) as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.0.to_be_bytes());
    out.push(1); // CNAME
    out.push(cname.len() as u8);
    out.extend_from_slice(cname);
    out.resize(out.len() + padded - (chunk - 1), 0);
}

/// The middle 32 bits of an NTP timestamp (LSR, section 6.4.1).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// What a receiver keeps of one source to report on it (appendix A.1, A.3,
/// A.8). Times are on the source's RTP clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceptionStats {
    started: bool,
    base_seq: u32,
    /// Sequence number cycles, shifted (A.1).
    cycles: u32,
    max_seq: u16,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Last transit time (arrival - RTP timestamp), for jitter.
    transit: Option<i64>,
    /// Jitter in RTP units, times 16 (A.8 keeps it scaled).
    jitter16: u64,
}

impl ReceptionStats {
    /// A packet with sequence number `seq` and RTP timestamp `ts` arrived at
    /// `arrival` (on the same clock as `ts`).
    pub fn on_packet(&mut self, seq: u16, ts: u32, arrival: u32) {
        if !self.started {
            self.started = true;
            self.base_seq = u32::from(seq);
            self.max_seq = seq;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta != 0 && delta < 0x8000 {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
            }
        }
        self.received = self.received.wrapping_add(1);
        let transit = i64::from(arrival) - i64::from(ts);
        if let Some(prev) = self.transit {
            // Both clocks wrap at 2^32: the difference of differences does not
            // care, taken modulo 2^32 and then as signed.
            let d = (transit - prev) as i32;
            let d = u64::from(d.unsigned_abs());
            // J += (|D| - J) / 16, kept times 16 (A.8): J16 += |D| - J16 / 16.
            self.jitter16 = (self.jitter16 + d - self.jitter16 / 16).min(u64::from(u32::MAX) * 16);
        }
        self.transit = Some(transit);
    }

    /// Packets received at all.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// Interarrival jitter in RTP units.
    pub fn jitter(&self) -> u32 {
        (self.jitter16 / 16) as u32
    }

    fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// The report block on this source now (A.3); moves the "since the last
    /// report" marks.
    pub fn report_block(&mut self, ssrc: u32, lsr: u32, dlsr: u32) -> ReportBlock {
        let expected = self
            .extended_max()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1);
        let lost = i64::from(expected) - i64::from(self.received);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: self.extended_max(),
            jitter: self.jitter(),
            lsr,
            dlsr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_report_parses_back() {
        let info = SenderInfo {
            ntp: 0xe1b2_c3d4_8000_0000,
            rtp_ts: 160_000,
            packets: 500,
            octets: 80_000,
        };
        let block = ReportBlock {
            ssrc: 0x1234_5678,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 70_000,
            jitter: 42,
            lsr: 0xb2c3_d4e5,
            dlsr: 65_536,
        };
        for sender in [Some(&info), None] {
            let mut out = Vec::new();
            write_report(&mut out, Ssrc(7), sender, &[block], "sbc@example");
            assert_eq!(out.len() % 4, 0);
            let got = parse_compound(&out).unwrap();
            let want = match sender {
                Some(i) => RtcpPacket::SenderReport {
                    ssrc: 7,
                    info: *i,
                    blocks: vec![block],
                },
                None => RtcpPacket::ReceiverReport {
                    ssrc: 7,
                    blocks: vec![block],
                },
            };
            assert_eq!(got, vec![want, RtcpPacket::Other { pt: 202 }]);
        }
    }

    #[test]
    fn malformed_datagrams_are_errors_not_panics() {
        assert_eq!(parse_compound(&[0x80, 200]), Err(RtcpError::Short));
        assert_eq!(parse_compound(&[0x40, 200, 0, 0]), Err(RtcpError::Version));
        // RTP (PT 0, marker off) is not RTCP.
        assert_eq!(parse_compound(&[0x80, 0, 0, 0]), Err(RtcpError::PacketType));
        // An RR that claims 3 blocks in 1 word.
        assert_eq!(
            parse_compound(&[0x83, 201, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::Count)
        );
        // Length beyond the datagram.
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 9, 0, 0, 0, 1]),
            Err(RtcpError::Short)
        );
        let bye = [0x81, 203, 0, 1, 0, 0, 0, 9];
        assert_eq!(
            parse_compound(&bye),
            Ok(vec![RtcpPacket::Bye { ssrcs: vec![9] }])
        );
    }

    #[test]
    fn loss_and_jitter_follow_the_rfc_appendix() {
        let mut s = ReceptionStats::default();
        // 100 packets of 160 samples, every 5th lost, arriving on time.
        for i in 0..100u32 {
            if i % 5 == 4 {
                continue;
            }
            let seq = (65_500 + i) as u16; // wraps at 36
            s.on_packet(seq, i * 160, 1_000 + i * 160);
        }
        let b = s.report_block(1, 0, 0);
        assert_eq!(s.received(), 80);
        // Highest: 65_500 + 98 (99 was the last, lost), one cycle.
        assert_eq!(b.highest_seq, 65_536 + ((65_500 + 98) % 65_536));
        assert_eq!(b.cumulative_lost, 99 - 80);
        assert_eq!(b.fraction_lost, ((19 << 8) / 99) as u8);
        assert_eq!(b.jitter, 0, "perfectly paced");
        // Nothing since: no fraction lost.
        assert_eq!(s.report_block(1, 0, 0).fraction_lost, 0);

        // Arrivals off by +/- 80 samples around the pace: the jitter estimate
        // converges towards the mean |D| (160 here).
        let mut j = ReceptionStats::default();
        for i in 0..500u32 {
            let wobble = if i % 2 == 0 { 0 } else { 160 };
            j.on_packet(i as u16, i * 160, 5_000 + i * 160 + wobble);
        }
        assert!((150..=161).contains(&j.jitter()), "{}", j.jitter());
    }
}
