//! SIPp's PCMA capture (30 ms packets) through PCMA -> Opus 20 ms -> PCMA: every
//! sample comes out, and the signal's energy survives within 1 dB.

use bytes::Bytes;
use media_core::analysis::energy;
use media_core::codec::{Codec, g711};
use media_core::pcap::udp_datagrams;
use media_core::pipeline::{Endpoint, MediaPipeline, PipelineConfig, RtpFormat};
use media_core::rtp::{PayloadType, RtpPacket, Ssrc};
use media_core::{Instant, Millis, testdata};

fn pcma(ptime: u32) -> RtpFormat {
    RtpFormat {
        codec: Codec::Pcma,
        payload_type: PayloadType::PCMA,
        telephone_event: None,
        ptime: Millis(ptime),
        opus: None,
    }
}

#[test]
fn g711a_capture_survives_pcma_opus_pcma() {
    let file = testdata::read("rtp-pcaps/g711a.pcap");
    let input: Vec<RtpPacket> = udp_datagrams(&file)
        .unwrap()
        .iter()
        .map(|d| RtpPacket::parse(Bytes::copy_from_slice(d.payload)).unwrap())
        .collect();
    assert_eq!(input.len(), 236);
    assert!(
        input
            .iter()
            .all(|p| p.payload_type() == PayloadType::PCMA && p.payload_bytes().len() == 240)
    );

    let opus = RtpFormat {
        codec: Codec::Opus,
        payload_type: PayloadType::new(111).unwrap(),
        telephone_event: None,
        ptime: Millis(20),
        opus: None,
    };
    let mut to_opus = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Rtp(pcma(30)),
        Endpoint::Rtp(opus),
        Ssrc(1),
        1,
    ))
    .unwrap();
    let mut to_pcma = MediaPipeline::new(PipelineConfig::new(
        Endpoint::Rtp(opus),
        Endpoint::Rtp(pcma(20)),
        Ssrc(2),
        2,
    ))
    .unwrap();
    let mut original = Vec::new();
    let mut result = Vec::new();
    let mut s = [0i16; 240];
    for (i, pkt) in input.iter().enumerate() {
        g711::alaw_decode(pkt.payload_bytes(), &mut s);
        original.extend_from_slice(&s);
        let now = Instant::from_millis(30 * i as u64);
        to_opus.handle_rtp(now, pkt).unwrap();
        while let Some(o) = to_opus.poll_packet() {
            let opus_pkt = RtpPacket::parse(Bytes::copy_from_slice(o.bytes)).unwrap();
            to_pcma.handle_rtp(now, &opus_pkt).unwrap();
            while let Some(back) = to_pcma.poll_packet() {
                let back = RtpPacket::parse(Bytes::copy_from_slice(back.bytes)).unwrap();
                assert_eq!(back.payload_bytes().len(), 160);
                let mut d = [0i16; 160];
                g711::alaw_decode(back.payload_bytes(), &mut d);
                result.extend_from_slice(&d);
            }
        }
    }
    assert_eq!(result.len(), original.len(), "sample count conserved");
    let db = 10.0 * (energy(&result) / energy(&original)).log10();
    assert!(db.abs() <= 1.0, "energy changed by {db:.2} dB");
    assert_eq!(to_opus.stats().lost + to_pcma.stats().lost, 0);
}
