//! RTP header extension elements (RFC 8285 one- and two-byte forms).

use super::RtpError;

/// The "defined by profile" field of the extension block (RFC 3550 section 5.3.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExtensionProfile {
    /// 0xBEDE: one-byte element headers (RFC 8285 section 4.2).
    OneByte,
    /// 0x100X: two-byte element headers with 4 application bits (RFC 8285 section 4.3).
    TwoByte {
        /// The low 4 "appbits".
        app_bits: u8,
    },
    /// Any other profile: the block is opaque.
    Other(u16),
}

impl ExtensionProfile {
    pub(crate) fn from_u16(v: u16) -> Self {
        match v {
            0xBEDE => ExtensionProfile::OneByte,
            v if v & 0xFFF0 == 0x1000 => ExtensionProfile::TwoByte {
                app_bits: (v & 0xF) as u8,
            },
            v => ExtensionProfile::Other(v),
        }
    }

    pub(crate) fn to_u16(self) -> u16 {
        match self {
            ExtensionProfile::OneByte => 0xBEDE,
            ExtensionProfile::TwoByte { app_bits } => 0x1000 | (app_bits as u16 & 0xF),
            ExtensionProfile::Other(v) => v,
        }
    }
}

/// One extension element: its local identifier and data, borrowed from the packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HeaderExtension<'a> {
    /// Local identifier (1-14 one-byte form, 1-255 two-byte form).
    pub id: u8,
    /// Element data.
    pub data: &'a [u8],
}

/// Iterates over the elements of an extension block. Yields an error and stops if an
/// element overruns the block.
#[derive(Clone, Debug)]
pub struct ExtensionIter<'a> {
    one_byte: bool,
    rest: &'a [u8],
}

impl<'a> ExtensionIter<'a> {
    /// Elements of an extension block with the given profile (opaque profiles
    /// yield nothing).
    pub fn new(profile: u16, block: &'a [u8]) -> Self {
        match ExtensionProfile::from_u16(profile) {
            ExtensionProfile::OneByte => ExtensionIter {
                one_byte: true,
                rest: block,
            },
            ExtensionProfile::TwoByte { .. } => ExtensionIter {
                one_byte: false,
                rest: block,
            },
            ExtensionProfile::Other(_) => Self::empty(),
        }
    }

    pub(crate) fn empty() -> Self {
        ExtensionIter {
            one_byte: true,
            rest: &[],
        }
    }
}

impl<'a> Iterator for ExtensionIter<'a> {
    type Item = Result<HeaderExtension<'a>, RtpError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (&first, tail) = self.rest.split_first()?;
            let (id, len, tail) = if self.one_byte {
                let id = first >> 4;
                if id == 0 {
                    // Padding byte (RFC 8285 section 4.2).
                    self.rest = tail;
                    continue;
                }
                if id == 15 {
                    // Reserved: stop processing the block (RFC 8285 section 4.2).
                    self.rest = &[];
                    return None;
                }
                (id, (first & 0x0f) as usize + 1, tail)
            } else {
                if first == 0 {
                    self.rest = tail;
                    continue;
                }
                let Some((&len, tail)) = tail.split_first() else {
                    self.rest = &[];
                    return Some(Err(RtpError::ExtensionOverrun));
                };
                (first, len as usize, tail)
            };
            if tail.len() < len {
                self.rest = &[];
                return Some(Err(RtpError::ExtensionOverrun));
            }
            let (data, rest) = tail.split_at(len);
            self.rest = rest;
            return Some(Ok(HeaderExtension { id, data }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_form_with_padding_and_stop() {
        // id 1 len 2, a padding byte, id 2 len 1, then id 15 stops parsing.
        let block = [0x11, 0xaa, 0xbb, 0x00, 0x20, 0xcc, 0xf0, 0x11, 0x22];
        let got: Vec<_> = ExtensionIter::new(0xBEDE, &block)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got,
            vec![
                HeaderExtension {
                    id: 1,
                    data: &[0xaa, 0xbb]
                },
                HeaderExtension {
                    id: 2,
                    data: &[0xcc]
                },
            ]
        );
    }

    #[test]
    fn two_byte_form_allows_empty_and_long_elements() {
        let mut block = vec![0x00, 0x05, 0x00, 0xff, 0x03, 1, 2, 3];
        block.extend_from_slice(&[200, 20]);
        block.extend_from_slice(&[7; 20]);
        let got: Vec<_> = ExtensionIter::new(0x1003, &block)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], HeaderExtension { id: 5, data: &[] });
        assert_eq!(
            got[1],
            HeaderExtension {
                id: 255,
                data: &[1, 2, 3]
            }
        );
        assert_eq!(got[2].id, 200);
        assert_eq!(got[2].data.len(), 20);
        assert_eq!(
            ExtensionProfile::from_u16(0x1003),
            ExtensionProfile::TwoByte { app_bits: 3 }
        );
    }

    #[test]
    fn overruns_are_errors() {
        let bad_one = [0x13, 0xaa];
        let mut it = ExtensionIter::new(0xBEDE, &bad_one);
        assert_eq!(it.next(), Some(Err(RtpError::ExtensionOverrun)));
        assert_eq!(it.next(), None);
        let bad_two = [0x01];
        let mut it = ExtensionIter::new(0x1000, &bad_two);
        assert_eq!(it.next(), Some(Err(RtpError::ExtensionOverrun)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn unknown_profiles_are_opaque() {
        assert_eq!(ExtensionIter::new(0x1234, &[1, 2, 3, 4]).count(), 0);
        assert_eq!(ExtensionProfile::from_u16(0x1234).to_u16(), 0x1234);
    }
}
