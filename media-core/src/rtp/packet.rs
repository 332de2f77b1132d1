//! The RTP packet view (RFC 3550 section 5.1).

use bytes::Bytes;

use super::extension::{ExtensionIter, ExtensionProfile};
use super::{FIXED_HEADER_LEN, PayloadType, RtpError, RtpTimestamp, SeqNo, Ssrc};

/// The parsed header of an RTP packet: fixed fields plus the offsets of the CSRC
/// list, the extension block and the payload in the buffer it was parsed from.
/// `Copy` and allocation-free; it works over any `&[u8]`, so a relay can parse and
/// rewrite a packet in place.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RtpHeader {
    /// Marker bit (talkspurt start for audio, RFC 3551 section 4.1).
    pub marker: bool,
    /// Payload type.
    pub payload_type: PayloadType,
    /// Sequence number.
    pub sequence_number: SeqNo,
    /// Timestamp.
    pub timestamp: RtpTimestamp,
    /// Synchronization source.
    pub ssrc: Ssrc,
    csrc_count: u8,
    padding_len: u8,
    extension: Option<(u16, u16, u16)>, // (profile, data start, data end)
    header_len: u16,
    payload_end: u16,
}

impl RtpHeader {
    /// Parses and validates the header of `buf`. Never panics on any input.
    pub fn parse(buf: &[u8]) -> Result<RtpHeader, RtpError> {
        let len = buf.len();
        if len < FIXED_HEADER_LEN {
            return Err(RtpError::Truncated {
                needed: FIXED_HEADER_LEN,
                len,
            });
        }
        // Packets are bounded by the datagram size; refuse anything whose offsets
        // would not fit the u16 fields below.
        if len > u16::MAX as usize {
            return Err(RtpError::Truncated {
                needed: u16::MAX as usize,
                len,
            });
        }
        let b0 = buf[0];
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = b0 & 0x20 != 0;
        let has_extension = b0 & 0x10 != 0;
        let csrc_count = b0 & 0x0f;
        let mut offset = FIXED_HEADER_LEN + 4 * csrc_count as usize;
        if len < offset {
            return Err(RtpError::Truncated {
                needed: offset,
                len,
            });
        }
        let mut extension = None;
        if has_extension {
            // RFC 3550 section 5.3.1: 16-bit profile, 16-bit length in 32-bit words.
            if len < offset + 4 {
                return Err(RtpError::Truncated {
                    needed: offset + 4,
                    len,
                });
            }
            let profile = u16::from_be_bytes([buf[offset], buf[offset + 1]]);
            let words = u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]) as usize;
            let start = offset + 4;
            let end = start + 4 * words;
            if len < end {
                return Err(RtpError::Truncated { needed: end, len });
            }
            extension = Some((profile, start as u16, end as u16));
            offset = end;
        }
        let mut padding_len = 0;
        if has_padding {
            // RFC 3550 section 5.1: the last octet counts the padding, itself included.
            let count = buf[len - 1];
            let available = len - offset;
            if count == 0 || count as usize > available {
                return Err(RtpError::BadPadding { count, available });
            }
            padding_len = count;
        }
        Ok(RtpHeader {
            marker: buf[1] & 0x80 != 0,
            payload_type: PayloadType(buf[1] & 0x7f),
            sequence_number: SeqNo(u16::from_be_bytes([buf[2], buf[3]])),
            timestamp: RtpTimestamp(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]])),
            ssrc: Ssrc(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]])),
            csrc_count,
            padding_len,
            extension,
            header_len: offset as u16,
            payload_end: (len - padding_len as usize) as u16,
        })
    }

    /// Header length including CSRCs and the extension block.
    pub fn header_len(&self) -> usize {
        self.header_len as usize
    }

    /// Payload length, padding excluded.
    pub fn payload_len(&self) -> usize {
        (self.payload_end - self.header_len) as usize
    }

    /// Number of padding bytes at the end (0 without the P bit).
    pub fn padding_len(&self) -> usize {
        self.padding_len as usize
    }

    /// Number of CSRCs.
    pub fn csrc_count(&self) -> usize {
        self.csrc_count as usize
    }

    /// The payload's byte range in the parsed buffer.
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        self.header_len as usize..self.payload_end as usize
    }

    /// Rewrites the fixed header fields of `buf` (the buffer this header was parsed
    /// from) in place: the relay path, which never touches the payload.
    pub fn rewrite_in_place(
        buf: &mut [u8],
        marker: bool,
        payload_type: PayloadType,
        seq: SeqNo,
        timestamp: RtpTimestamp,
        ssrc: Ssrc,
    ) -> Result<(), RtpError> {
        if buf.len() < FIXED_HEADER_LEN {
            return Err(RtpError::Truncated {
                needed: FIXED_HEADER_LEN,
                len: buf.len(),
            });
        }
        buf[1] = (marker as u8) << 7 | payload_type.0;
        buf[2..4].copy_from_slice(&seq.0.to_be_bytes());
        buf[4..8].copy_from_slice(&timestamp.0.to_be_bytes());
        buf[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
        Ok(())
    }
}

/// A parsed RTP packet over a shared [`Bytes`] buffer: header fields are decoded,
/// the payload is a view into the same memory (no copy).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RtpPacket {
    buf: Bytes,
    header: RtpHeader,
}

impl RtpPacket {
    /// Parses `buf`; the packet keeps `buf` and hands out slices of it.
    pub fn parse(buf: Bytes) -> Result<RtpPacket, RtpError> {
        let header = RtpHeader::parse(&buf)?;
        Ok(RtpPacket { buf, header })
    }

    /// The parsed header.
    pub fn header(&self) -> &RtpHeader {
        &self.header
    }

    /// Marker bit.
    pub fn marker(&self) -> bool {
        self.header.marker
    }

    /// Payload type.
    pub fn payload_type(&self) -> PayloadType {
        self.header.payload_type
    }

    /// Sequence number.
    pub fn sequence_number(&self) -> SeqNo {
        self.header.sequence_number
    }

    /// Timestamp.
    pub fn timestamp(&self) -> RtpTimestamp {
        self.header.timestamp
    }

    /// SSRC.
    pub fn ssrc(&self) -> Ssrc {
        self.header.ssrc
    }

    /// The CSRC list.
    pub fn csrcs(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.buf[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4 * self.header.csrc_count()]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The extension block's profile, if the X bit is set.
    pub fn extension_profile(&self) -> Option<ExtensionProfile> {
        self.header
            .extension
            .map(|(profile, _, _)| ExtensionProfile::from_u16(profile))
    }

    /// RFC 8285 elements of the extension block (empty for other profiles).
    pub fn extensions(&self) -> ExtensionIter<'_> {
        match self.header.extension {
            Some((profile, start, end)) => {
                ExtensionIter::new(profile, &self.buf[start as usize..end as usize])
            }
            None => ExtensionIter::empty(),
        }
    }

    /// The payload as a zero-copy slice of the packet's buffer.
    pub fn payload(&self) -> Bytes {
        self.buf.slice(self.header.payload_range())
    }

    /// The payload as borrowed bytes.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.buf[self.header.payload_range()]
    }

    /// The whole packet as received.
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    /// Gives the buffer back.
    pub fn into_bytes(self) -> Bytes {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::HeaderExtension;

    fn packet(bytes: &[u8]) -> Result<RtpPacket, RtpError> {
        RtpPacket::parse(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn parses_fixed_header() {
        let p = packet(&[
            0x80, 0x88, 0x12, 0x34, 0, 0, 0x01, 0x40, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3,
        ])
        .unwrap();
        assert!(p.marker());
        assert_eq!(p.payload_type(), PayloadType::PCMA);
        assert_eq!(p.sequence_number(), SeqNo(0x1234));
        assert_eq!(p.timestamp(), RtpTimestamp(320));
        assert_eq!(p.ssrc(), Ssrc(0xdeadbeef));
        assert_eq!(p.payload_bytes(), &[1, 2, 3]);
        assert_eq!(p.csrcs().count(), 0);
        assert!(p.extension_profile().is_none());
    }

    #[test]
    fn payload_is_a_view_not_a_copy() {
        let buf = Bytes::from(vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9, 9, 9]);
        let base = buf.as_ptr();
        let p = RtpPacket::parse(buf).unwrap();
        assert_eq!(p.payload().as_ptr(), base.wrapping_add(12));
    }

    #[test]
    fn csrcs_padding_and_extension() {
        let mut b = vec![0xb2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 8]); // two CSRCs
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0x00, 0x00]); // one-byte ext
        b.extend_from_slice(&[5, 6]); // payload
        b.extend_from_slice(&[0, 0, 3]); // three padding bytes
        let p = packet(&b).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(p.extension_profile(), Some(ExtensionProfile::OneByte));
        let ext: Vec<_> = p.extensions().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            ext,
            vec![HeaderExtension {
                id: 1,
                data: &[0xaa]
            }]
        );
        assert_eq!(p.payload_bytes(), &[5, 6]);
        assert_eq!(p.header().padding_len(), 3);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let cases: &[(&[u8], RtpError)] = &[
            (&[0x80, 0, 0], RtpError::Truncated { needed: 12, len: 3 }),
            (&[0x40; 12], RtpError::BadVersion(1)),
            (
                &[0x81, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                RtpError::Truncated {
                    needed: 16,
                    len: 12,
                },
            ),
            (
                &[
                    0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0, 2, 0, 0, 0, 0,
                ],
                RtpError::Truncated {
                    needed: 24,
                    len: 20,
                },
            ),
            (
                &[0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                RtpError::BadPadding {
                    count: 0,
                    available: 2,
                },
            ),
            (
                &[0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 9],
                RtpError::BadPadding {
                    count: 9,
                    available: 2,
                },
            ),
        ];
        for (bytes, err) in cases {
            assert_eq!(packet(bytes).unwrap_err(), *err, "{bytes:?}");
        }
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // Every prefix of a rich packet, and every first byte.
        let mut b = vec![0xb1, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 7];
        b.extend_from_slice(&[0x10, 0x00, 0, 1, 1, 1, 0xbb, 0]);
        b.extend_from_slice(&[5, 6, 2]);
        for n in 0..=b.len() {
            let _ = packet(&b[..n]).map(|p| p.extensions().count());
        }
        for first in 0..=255u8 {
            b[0] = first;
            let _ = packet(&b).map(|p| p.extensions().count());
        }
    }

    #[test]
    fn rewrite_in_place_touches_only_the_fixed_header() {
        let mut b = vec![0x80, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 7, 7];
        RtpHeader::rewrite_in_place(
            &mut b,
            true,
            PayloadType::new(111).unwrap(),
            SeqNo(9),
            RtpTimestamp(10),
            Ssrc(11),
        )
        .unwrap();
        let h = RtpHeader::parse(&b).unwrap();
        assert!(h.marker);
        assert_eq!(h.payload_type.value(), 111);
        assert_eq!(
            (h.sequence_number, h.timestamp, h.ssrc),
            (SeqNo(9), RtpTimestamp(10), Ssrc(11))
        );
        assert_eq!(&b[12..], &[7, 7]);
    }
}
