//! G.711 PCMU (u-law) and PCMA (A-law), bit-exact with the ITU-T G.191 STL.
//!
//! The STL works on 14-bit (u-law) and 13-bit (A-law) left-justified linear PCM and
//! takes the one's complement of negative samples, so a code depends only on
//! `sample >> 2` (u-law) or `sample >> 4` (A-law). Both directions are therefore
//! exact table lookups, built at compile time.

/// u-law code for every 14-bit value `(sample >> 2) & 0x3fff`.
static ULAW_ENCODE: [u8; 1 << 14] = ulaw_encode_table();
/// A-law code for every 12-bit value `(sample >> 4) & 0xfff`.
static ALAW_ENCODE: [u8; 1 << 12] = alaw_encode_table();
/// Linear value (16-bit, left-justified) for every u-law code.
static ULAW_DECODE: [i16; 256] = ulaw_decode_table();
/// Linear value (16-bit, left-justified) for every A-law code.
static ALAW_DECODE: [i16; 256] = alaw_decode_table();

/// The u-law code of one sample.
#[inline]
pub fn ulaw_encode_sample(s: i16) -> u8 {
    ULAW_ENCODE[((s >> 2) as u16 & 0x3fff) as usize]
}

/// The A-law code of one sample.
#[inline]
pub fn alaw_encode_sample(s: i16) -> u8 {
    ALAW_ENCODE[((s >> 4) as u16 & 0x0fff) as usize]
}

/// The linear value of one u-law code.
#[inline]
pub fn ulaw_decode_sample(c: u8) -> i16 {
    ULAW_DECODE[c as usize]
}

/// The linear value of one A-law code.
#[inline]
pub fn alaw_decode_sample(c: u8) -> i16 {
    ALAW_DECODE[c as usize]
}

/// Encodes `pcm` to u-law into `out[..pcm.len()]`; returns bytes written.
///
/// # Panics
/// If `out` is shorter than `pcm` (caller misuse).
pub fn ulaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    for (o, &s) in out[..pcm.len()].iter_mut().zip(pcm) {
        *o = ulaw_encode_sample(s);
    }
    pcm.len()
}

/// Encodes `pcm` to A-law into `out[..pcm.len()]`; returns bytes written.
///
/// # Panics
/// If `out` is shorter than `pcm` (caller misuse).
pub fn alaw_encode(pcm: &[i16], out: &mut [u8]) -> usize {
    for (o, &s) in out[..pcm.len()].iter_mut().zip(pcm) {
        *o = alaw_encode_sample(s);
    }
    pcm.len()
}

/// Decodes u-law `codes` into `out[..codes.len()]`; returns samples written.
///
/// # Panics
/// If `out` is shorter than `codes` (caller misuse).
pub fn ulaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    for (o, &c) in out[..codes.len()].iter_mut().zip(codes) {
        *o = ulaw_decode_sample(c);
    }
    codes.len()
}

/// Decodes A-law `codes` into `out[..codes.len()]`; returns samples written.
///
/// # Panics
/// If `out` is shorter than `codes` (caller misuse).
pub fn alaw_decode(codes: &[u8], out: &mut [i16]) -> usize {
    for (o, &c) in out[..codes.len()].iter_mut().zip(codes) {
        *o = alaw_decode_sample(c);
    }
    codes.len()
}

/// Number of significant bits in `v` (0 for 0).
const fn bit_len(v: u32) -> u32 {
    32 - v.leading_zeros()
}

/// G.711 section 2 / G.191 u-law: magnitude biased by 33, 8 segments.
const fn ulaw_encode_table() -> [u8; 1 << 14] {
    let mut t = [0u8; 1 << 14];
    let mut i = 0;
    while i < (1 << 14) {
        // Sign-extend the 14-bit index back to the sample's value >> 2.
        let v = ((i as i32) << 18) >> 18;
        let negative = v < 0;
        let magnitude = if negative { !v } else { v }; // one's complement, as the STL
        let mut biased = magnitude + 33;
        if biased > 0x1fff {
            biased = 0x1fff;
        }
        let segment = 1 + bit_len((biased >> 6) as u32); // 1..=8
        let high = 8 - segment;
        let low = 15 - ((biased >> segment) & 0xf) as u32;
        let mut code = (high << 4 | low) as u8;
        if !negative {
            code |= 0x80;
        }
        t[i] = code;
        i += 1;
    }
    t
}

/// G.711 / G.191 A-law: 13-bit magnitude, segment 0 linear, even bits inverted.
const fn alaw_encode_table() -> [u8; 1 << 12] {
    let mut t = [0u8; 1 << 12];
    let mut i = 0;
    while i < (1 << 12) {
        let v = ((i as i32) << 20) >> 20;
        let negative = v < 0;
        let magnitude = (if negative { !v } else { v }) as u32;
        let mut code = if magnitude > 15 {
            let exponent = bit_len(magnitude) - 4; // 1..=7
            (exponent << 4) | ((magnitude >> (exponent - 1)) & 0xf)
        } else {
            magnitude
        };
        if !negative {
            code |= 0x80;
        }
        t[i] = (code ^ 0x55) as u8;
        i += 1;
    }
    t
}

const fn ulaw_decode_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut c = 0;
    while c < 256 {
        let inverted = !(c as u32) & 0xff;
        let exponent = (inverted >> 4) & 7;
        let mantissa = (inverted & 0xf) as i32;
        let step = 4 << (exponent + 1);
        let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
        t[c] = if c < 0x80 { -magnitude } else { magnitude } as i16;
        c += 1;
    }
    t
}

const fn alaw_decode_table() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut c = 0;
    while c < 256 {
        let ix = (c as u32 ^ 0x55) & 0x7f;
        let exponent = ix >> 4;
        let mut mantissa = (ix & 0xf) as i32;
        if exponent > 0 {
            mantissa += 16;
        }
        mantissa = (mantissa << 4) + 8;
        if exponent > 1 {
            mantissa <<= exponent - 1;
        }
        t[c] = if c > 127 { mantissa } else { -mantissa } as i16;
        c += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    fn words(name: &str) -> Vec<u16> {
        let bytes = testdata::read(&format!("g711-itu-stl/{name}"));
        assert_eq!(bytes.len(), 131072, "{name}: 65536 16-bit words");
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    fn source() -> Vec<i16> {
        words("sweep.src").into_iter().map(|w| w as i16).collect()
    }

    #[test]
    fn ulaw_encode_matches_stl_vectors() {
        let src = source();
        let expect = words("sweep-r.u");
        let mut out = vec![0u8; src.len()];
        ulaw_encode(&src, &mut out);
        let bad = out
            .iter()
            .zip(&expect)
            .filter(|(a, b)| **a as u16 != **b)
            .count();
        assert_eq!(bad, 0, "u-law encode mismatches");
    }

    #[test]
    fn alaw_encode_matches_stl_vectors() {
        let src = source();
        let expect = words("sweep-r.a");
        let mut out = vec![0u8; src.len()];
        alaw_encode(&src, &mut out);
        let bad = out
            .iter()
            .zip(&expect)
            .filter(|(a, b)| **a as u16 != **b)
            .count();
        assert_eq!(bad, 0, "A-law encode mismatches");
    }

    #[test]
    fn ulaw_decode_and_round_trip_match_stl_vectors() {
        let codes: Vec<u8> = words("sweep-r.u").into_iter().map(|w| w as u8).collect();
        let mut out = vec![0i16; codes.len()];
        ulaw_decode(&codes, &mut out);
        let expect: Vec<i16> = words("sweep-r.u-u").into_iter().map(|w| w as i16).collect();
        assert_eq!(out, expect);
        // encode+decode straight from the source.
        let src = source();
        let mut enc = vec![0u8; src.len()];
        ulaw_encode(&src, &mut enc);
        ulaw_decode(&enc, &mut out);
        let expect: Vec<i16> = words("sweep-r.reu").into_iter().map(|w| w as i16).collect();
        assert_eq!(out, expect);
    }

    #[test]
    fn alaw_decode_and_round_trip_match_stl_vectors() {
        let codes: Vec<u8> = words("sweep-r.a").into_iter().map(|w| w as u8).collect();
        let mut out = vec![0i16; codes.len()];
        alaw_decode(&codes, &mut out);
        let expect: Vec<i16> = words("sweep-r.a-a").into_iter().map(|w| w as i16).collect();
        assert_eq!(out, expect);
        let src = source();
        let mut enc = vec![0u8; src.len()];
        alaw_encode(&src, &mut enc);
        alaw_decode(&enc, &mut out);
        let expect: Vec<i16> = words("sweep-r.rea").into_iter().map(|w| w as i16).collect();
        assert_eq!(out, expect);
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            assert_eq!(alaw_encode_sample(alaw_decode_sample(c)), c, "A-law {c:#x}");
            // u-law has two zeros (0x7f and 0xff): -0 encodes as +0.
            if c != 0x7f {
                assert_eq!(ulaw_encode_sample(ulaw_decode_sample(c)), c, "u-law {c:#x}");
            }
        }
    }
}
