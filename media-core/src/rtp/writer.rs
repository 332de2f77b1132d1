//! Writing RTP headers into caller-owned buffers (no allocation).

use super::extension::ExtensionProfile;
use super::{FIXED_HEADER_LEN, HeaderExtension, PayloadType, RtpError, RtpTimestamp, SeqNo, Ssrc};

/// The fields of an outgoing RTP header. Write it with [`RtpWriter::write`], then
/// put the payload right after it.
#[derive(Clone, Copy, Debug)]
pub struct RtpWriter<'a> {
    /// Marker bit.
    pub marker: bool,
    /// Payload type.
    pub payload_type: PayloadType,
    /// Sequence number.
    pub sequence_number: SeqNo,
    /// Timestamp.
    pub timestamp: RtpTimestamp,
    /// SSRC.
    pub ssrc: Ssrc,
    /// Contributing sources (at most 15).
    pub csrcs: &'a [u32],
    /// RFC 8285 elements; the one-byte form is used when every element fits it.
    pub extensions: &'a [HeaderExtension<'a>],
}

impl<'a> RtpWriter<'a> {
    /// A header with no CSRCs and no extensions.
    pub fn new(
        payload_type: PayloadType,
        sequence_number: SeqNo,
        timestamp: RtpTimestamp,
        ssrc: Ssrc,
    ) -> Self {
        RtpWriter {
            marker: false,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            csrcs: &[],
            extensions: &[],
        }
    }

    fn one_byte_form(&self) -> bool {
        self.extensions
            .iter()
            .all(|e| (1..=14).contains(&e.id) && (1..=16).contains(&e.data.len()))
    }

    fn extension_data_len(&self) -> usize {
        let per = if self.one_byte_form() { 1 } else { 2 };
        self.extensions.iter().map(|e| per + e.data.len()).sum()
    }

    /// Bytes the header takes.
    pub fn header_len(&self) -> usize {
        let mut n = FIXED_HEADER_LEN + 4 * self.csrcs.len();
        if !self.extensions.is_empty() {
            n += 4 + self.extension_data_len().div_ceil(4) * 4;
        }
        n
    }

    /// Writes the header into `buf`, returning its length.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, RtpError> {
        if self.csrcs.len() > 15 {
            return Err(RtpError::BadExtension {
                id: 0,
                len: self.csrcs.len(),
            });
        }
        let one_byte = self.one_byte_form();
        for e in self.extensions {
            if e.id == 0 || e.data.len() > 255 || (one_byte && e.id == 15) {
                return Err(RtpError::BadExtension {
                    id: e.id,
                    len: e.data.len(),
                });
            }
        }
        let needed = self.header_len();
        if buf.len() < needed {
            return Err(RtpError::BufferTooSmall {
                needed,
                len: buf.len(),
            });
        }
        let x = !self.extensions.is_empty();
        buf[0] = 0x80 | (x as u8) << 4 | self.csrcs.len() as u8;
        buf[1] = (self.marker as u8) << 7 | self.payload_type.value();
        buf[2..4].copy_from_slice(&self.sequence_number.0.to_be_bytes());
        buf[4..8].copy_from_slice(&self.timestamp.0.to_be_bytes());
        buf[8..12].copy_from_slice(&self.ssrc.0.to_be_bytes());
        let mut at = FIXED_HEADER_LEN;
        for c in self.csrcs {
            buf[at..at + 4].copy_from_slice(&c.to_be_bytes());
            at += 4;
        }
        if x {
            let profile = if one_byte {
                ExtensionProfile::OneByte
            } else {
                ExtensionProfile::TwoByte { app_bits: 0 }
            };
            let words = (needed - at - 4) / 4;
            buf[at..at + 2].copy_from_slice(&profile.to_u16().to_be_bytes());
            buf[at + 2..at + 4].copy_from_slice(&(words as u16).to_be_bytes());
            at += 4;
            for e in self.extensions {
                if one_byte {
                    buf[at] = e.id << 4 | (e.data.len() as u8 - 1);
                    at += 1;
                } else {
                    buf[at] = e.id;
                    buf[at + 1] = e.data.len() as u8;
                    at += 2;
                }
                buf[at..at + e.data.len()].copy_from_slice(e.data);
                at += e.data.len();
            }
            buf[at..needed].fill(0); // padding bytes (RFC 8285 section 4.1)
        }
        Ok(needed)
    }

    /// Writes header and `payload`, returning the packet length.
    pub fn write_packet(&self, payload: &[u8], buf: &mut [u8]) -> Result<usize, RtpError> {
        let h = self.header_len();
        if buf.len() < h + payload.len() {
            return Err(RtpError::BufferTooSmall {
                needed: h + payload.len(),
                len: buf.len(),
            });
        }
        let n = self.write(buf)?;
        buf[n..n + payload.len()].copy_from_slice(payload);
        Ok(n + payload.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpPacket;
    use bytes::Bytes;

    fn base() -> RtpWriter<'static> {
        RtpWriter::new(
            PayloadType::PCMU,
            SeqNo(65535),
            RtpTimestamp(u32::MAX),
            Ssrc(42),
        )
    }

    #[test]
    fn round_trips_through_the_parser() {
        let ext = [
            HeaderExtension { id: 1, data: &[1] },
            HeaderExtension {
                id: 3,
                data: &[2, 3, 4],
            },
        ];
        let w = RtpWriter {
            marker: true,
            csrcs: &[5, 6],
            extensions: &ext,
            ..base()
        };
        let mut buf = [0u8; 64];
        let n = w.write_packet(&[9, 8, 7], &mut buf).unwrap();
        let p = RtpPacket::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
        assert!(p.marker());
        assert_eq!(p.sequence_number(), SeqNo(65535));
        assert_eq!(p.timestamp(), RtpTimestamp(u32::MAX));
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![5, 6]);
        let got: Vec<_> = p.extensions().collect::<Result<_, _>>().unwrap();
        assert_eq!(got, ext);
        assert_eq!(p.payload_bytes(), &[9, 8, 7]);
    }

    #[test]
    fn picks_two_byte_form_when_needed() {
        let big = [0u8; 40];
        let ext = [
            HeaderExtension { id: 20, data: &big },
            HeaderExtension { id: 2, data: &[] },
        ];
        let w = RtpWriter {
            extensions: &ext,
            ..base()
        };
        let mut buf = [0u8; 128];
        let n = w.write(&mut buf).unwrap();
        let p = RtpPacket::parse(Bytes::copy_from_slice(&buf[..n])).unwrap();
        assert!(matches!(
            p.extension_profile(),
            Some(ExtensionProfile::TwoByte { .. })
        ));
        let got: Vec<_> = p.extensions().collect::<Result<_, _>>().unwrap();
        assert_eq!(got, ext);
    }

    #[test]
    fn small_buffers_and_bad_elements_are_errors() {
        let mut small = [0u8; 11];
        assert_eq!(
            base().write(&mut small),
            Err(RtpError::BufferTooSmall {
                needed: 12,
                len: 11
            })
        );
        let ext = [HeaderExtension { id: 0, data: &[1] }];
        let mut buf = [0u8; 64];
        assert!(matches!(
            RtpWriter {
                extensions: &ext,
                ..base()
            }
            .write(&mut buf),
            Err(RtpError::BadExtension { id: 0, .. })
        ));
    }
}
