//! Ogg Opus (RFC 7845), written as it goes: at 24 kbit/s a fifth of the
//! size of the same call in an 8 kHz PCM16 WAV, a tenth of a 16 kHz one.
//!
//! The file is an `OpusHead` page, an `OpusTags` page, then pages of 20 ms
//! Opus packets. A page is closed after 1 s of packets or about 4 KiB,
//! whichever comes first, and each closed page is complete on its own (CRC
//! and all), so a crash loses at most the page being filled: the driver
//! appends what [`OggOpusWriter::write`] gives and never seeks back. The Ogg
//! framing (lacing, page headers, CRC) is the `ogg` crate's.

use std::time::Duration;

use ogg::{PacketWriteEndInfo, PacketWriter};

use super::RecordError;

/// Granule positions count samples at 48 kHz whatever the input rate
/// (RFC 7845 section 4): what a 20 ms frame adds.
const GRANULE_PER_FRAME: u64 = 960;
/// Frames per second.
const FRAMES_PER_SECOND: u32 = 50;
/// A page is closed once it holds this many packets: 1 s of audio.
const PAGE_PACKETS: u32 = FRAMES_PER_SECOND;
/// ... or once its packets reach this many bytes. Page bodies stay near
/// 4 KiB: the most a crash takes at high bitrates.
const PAGE_BYTES: usize = 4096;
/// Room for one encoded packet (RFC 6716 section 3.4: 1275 bytes a frame).
const MAX_PACKET: usize = 1500;

/// An Ogg Opus file, written as it goes. See the module docs.
pub struct OggOpusWriter {
    rate: u32,
    channels: u16,
    serial: u32,
    encoder: opus::Encoder,
    /// The Ogg framing, writing into a buffer of ours that each call moves
    /// to the caller's `out`.
    pages: PacketWriter<'static, Vec<u8>>,
    /// One encoded packet, reused.
    packet: Box<[u8]>,
    /// Samples (48 kHz) the decoder drops at the start: the encoder's
    /// lookahead, so the file's first sample is the first one given.
    pre_skip: u16,
    /// 20 ms frames written so far.
    frames: u64,
    /// Frames it may hold at most.
    max_frames: u64,
    /// Packets and bytes in the page being filled.
    page_packets: u32,
    page_bytes: usize,
    started: bool,
    finished: bool,
}

impl std::fmt::Debug for OggOpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("rate", &self.rate)
            .field("channels", &self.channels)
            .field("serial", &self.serial)
            .field("pre_skip", &self.pre_skip)
            .field("frames", &self.frames)
            .field("finished", &self.finished)
            .finish()
    }
}

fn opus_err(e: opus::Error) -> RecordError {
    RecordError::Encode(e.description())
}

/// Writing into a `Vec` cannot fail; should the crate ever say otherwise, it
/// is an encoding failure, not a panic in the writer's thread.
fn ogg_err(_: std::io::Error) -> RecordError {
    RecordError::Encode("Ogg framing")
}

impl OggOpusWriter {
    /// A file of `channels` (1 or 2, interleaved when 2) of PCM at `rate`
    /// (8000, 12000, 16000, 24000 or 48000 Hz, the rates Opus takes), at
    /// most `max_duration` long, encoded at `bitrate` bits/s (24 000 for
    /// mono speech, 32 000 for stereo, say). `serial` names the Ogg stream:
    /// the caller picks a random one, so that files could be chained.
    pub fn new(
        rate: u32,
        channels: u16,
        bitrate: u32,
        serial: u32,
        max_duration: Duration,
    ) -> Result<Self, RecordError> {
        if !(1..=2).contains(&channels) || ![8000, 12_000, 16_000, 24_000, 48_000].contains(&rate) {
            return Err(RecordError::BadFormat);
        }
        let layout = if channels == 2 {
            opus::Channels::Stereo
        } else {
            opus::Channels::Mono
        };
        // Mono: VoIP (SILK), speech at a low bitrate, the best sound per bit.
        // Two channels are two parties that must not leak into each other:
        // SILK's stereo coding at 16 kHz and 32 kbit/s kept them only 15-22 dB
        // apart at complexity 1-5, where `Audio` (CELT) at 48 kbit/s keeps
        // them 75-87 dB apart at complexity 1 (measured with a 440 Hz and a
        // 1000 Hz tone, one per channel).
        let app = if channels == 2 {
            opus::Application::Audio
        } else {
            opus::Application::Voip
        };
        let mut encoder = opus::Encoder::new(rate, layout, app).map_err(opus_err)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate.clamp(6_000, 510_000) as i32))
            .map_err(opus_err)?;
        // Complexity 1: a stereo 20 ms frame (CELT, 48 kbit/s) costs 30 us at
        // 8 kHz and 32 us at 16 kHz (`cargo bench -p benches --bench
        // record`); SILK stereo at libopus's default 10 cost 110 and 92 us.
        // At 24 kbit/s a party and up, effort buys speech little: PESQ of
        // G.711 speech through Opus at 32 kbit/s was 4.51 at 1 and 4.52 at 5
        // (ARCHITECTURE.md, "Opus effort follows what is encoded").
        encoder.set_complexity(1).map_err(opus_err)?;
        if channels == 2 {
            // The two channels are two parties, not a stereo image: libopus
            // must not fold them into one at low bitrates.
            encoder
                .set_force_channels(Some(opus::Channels::Stereo))
                .map_err(opus_err)?;
        }
        let lookahead = encoder.get_lookahead().map_err(opus_err)?.max(0) as u32;
        let pre_skip =
            u16::try_from(lookahead * (48_000 / rate)).map_err(|_| RecordError::BadFormat)?;
        Ok(OggOpusWriter {
            rate,
            channels,
            serial,
            encoder,
            pages: PacketWriter::new(Vec::with_capacity(2 * PAGE_BYTES)),
            packet: vec![0; MAX_PACKET].into_boxed_slice(),
            pre_skip,
            frames: 0,
            max_frames: max_duration.as_millis() as u64 / 20,
            page_packets: 0,
            page_bytes: 0,
            started: false,
            finished: false,
        })
    }

    /// Appends the `OpusHead` and `OpusTags` pages (RFC 7845 sections 5.1,
    /// 5.2) to `out`: the file's first bytes. Once; [`Self::write`] and
    /// [`Self::finish`] call it themselves if it was not.
    pub fn start(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.started {
            return Ok(());
        }
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(self.channels as u8);
        head.extend_from_slice(&self.pre_skip.to_le_bytes());
        // What the PCM was, for a player that wants to give it back as it was.
        head.extend_from_slice(&self.rate.to_le_bytes());
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family 0: mono or stereo, one stream
        // The vendor is the library that encoded, as opusenc writes it (what
        // matters when a file plays wrong); ENCODER says who drove it.
        let vendor = opus::version();
        let encoder = concat!("ENCODER=sip-bridge media-core ", env!("CARGO_PKG_VERSION"));
        let mut tags = Vec::with_capacity(8 + 4 + vendor.len() + 4 + 4 + encoder.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&1u32.to_le_bytes());
        tags.extend_from_slice(&(encoder.len() as u32).to_le_bytes());
        tags.extend_from_slice(encoder.as_bytes());
        // Each header alone on its page, the audio on pages after them
        // (RFC 7845 section 3).
        for packet in [head, tags] {
            self.pages
                .write_packet(packet, self.serial, PacketWriteEndInfo::EndPage, 0)
                .map_err(ogg_err)?;
        }
        self.started = true;
        self.drain(out);
        Ok(())
    }

    /// Encodes one 20 ms frame (`rate / 50` samples per channel,
    /// interleaved when stereo; anything else is
    /// [`RecordError::PartialFrame`]) and appends to `out` the pages it
    /// completes: the bytes appended, 0 while a page fills. Past its longest
    /// [`RecordError::Full`], and after [`Self::finish`] too.
    pub fn write(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, RecordError> {
        if self.finished || self.frames >= self.max_frames {
            return Err(RecordError::Full);
        }
        if pcm.len() != self.frame_len() {
            return Err(RecordError::PartialFrame);
        }
        let before = out.len();
        self.start(out)?;
        let len = self
            .encoder
            .encode(pcm, &mut self.packet)
            .map_err(opus_err)?;
        self.frames += 1;
        self.page_packets += 1;
        self.page_bytes += len;
        let end = if self.page_packets >= PAGE_PACKETS || self.page_bytes >= PAGE_BYTES {
            self.page_packets = 0;
            self.page_bytes = 0;
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        // A page's granule is the samples decoded through its last packet,
        // the pre-skip among them (RFC 7845 section 4). The framing keeps
        // packets until their page closes, as `Cow<'static>`: one small
        // copy a frame, the only allocation in steady state.
        self.pages
            .write_packet(
                self.packet[..len].to_vec(),
                self.serial,
                end,
                self.frames * GRANULE_PER_FRAME,
            )
            .map_err(ogg_err)?;
        self.drain(out);
        Ok(out.len() - before)
    }

    /// Appends the last page, flagged end of stream, to `out`: the bytes
    /// appended. Its granule position, pre-skip + 960 per frame, trims what
    /// decodes to exactly the audio given (RFC 7845 section 4.4). The frames
    /// given are all in the file: silence is encoded after them, enough to
    /// push the last of them out of the encoder's lookahead, and trimmed
    /// off. Once; later calls append nothing.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<usize, RecordError> {
        if self.finished {
            return Ok(0);
        }
        let before = out.len();
        self.start(out)?;
        let last = u64::from(self.pre_skip) + self.frames * GRANULE_PER_FRAME;
        // At least one packet: the end-of-stream flag rides on a packet.
        let flush = u64::from(self.pre_skip).div_ceil(GRANULE_PER_FRAME).max(1);
        let silence = vec![0i16; self.frame_len()];
        for i in 1..=flush {
            let len = self
                .encoder
                .encode(&silence, &mut self.packet)
                .map_err(opus_err)?;
            let (end, granule) = if i == flush {
                (PacketWriteEndInfo::EndStream, last)
            } else {
                (
                    PacketWriteEndInfo::NormalPacket,
                    (self.frames + i) * GRANULE_PER_FRAME,
                )
            };
            self.pages
                .write_packet(self.packet[..len].to_vec(), self.serial, end, granule)
                .map_err(ogg_err)?;
        }
        self.finished = true;
        self.drain(out);
        Ok(out.len() - before)
    }

    /// Moves the pages the framing completed to `out`.
    fn drain(&mut self, out: &mut Vec<u8>) {
        let done = self.pages.inner_mut();
        out.extend_from_slice(done);
        done.clear();
    }

    /// Samples of one 20 ms frame, every channel.
    fn frame_len(&self) -> usize {
        (self.rate / FRAMES_PER_SECOND) as usize * usize::from(self.channels)
    }

    /// Samples (48 kHz) a player drops at the start: the `OpusHead`'s
    /// pre-skip.
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Length of what was written.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.frames * 20)
    }

    /// Channels.
    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// Sample rate of the PCM given (Hz).
    pub fn rate(&self) -> u32 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{goertzel_level_db, sine, speech_like};
    use ogg::PacketReader;
    use std::io::Cursor;

    /// One page of the file as its header says: (header type flags,
    /// granule position, packets completed on it, bytes).
    #[derive(Debug)]
    struct Page {
        flags: u8,
        granule: u64,
        packets: usize,
        len: usize,
    }

    /// The pages of `file`, walked through their headers (the CRCs are the
    /// reader's to check).
    fn pages(file: &[u8]) -> Vec<Page> {
        let mut at = 0;
        let mut pages = Vec::new();
        while at < file.len() {
            assert_eq!(&file[at..at + 4], b"OggS", "a page at {at}");
            let segments = usize::from(file[at + 26]);
            let lacing = &file[at + 27..at + 27 + segments];
            let len = 27 + segments + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
            pages.push(Page {
                flags: file[at + 5],
                granule: u64::from_le_bytes(file[at + 6..at + 14].try_into().unwrap()),
                packets: lacing.iter().filter(|&&l| l < 255).count(),
                len,
            });
            at += len;
        }
        assert_eq!(at, file.len(), "whole pages");
        pages
    }

    /// A whole file of `frames` through a new writer: its bytes and pre-skip.
    fn record(rate: u32, channels: u16, bitrate: u32, frames: &[Vec<i16>]) -> (Vec<u8>, u16) {
        let mut w =
            OggOpusWriter::new(rate, channels, bitrate, 0x5eed, Duration::from_secs(60)).unwrap();
        let mut file = Vec::new();
        w.start(&mut file).unwrap();
        for f in frames {
            let before = file.len();
            let n = w.write(f, &mut file).unwrap();
            assert_eq!(n, file.len() - before);
        }
        let before = file.len();
        assert_eq!(w.finish(&mut file).unwrap(), file.len() - before);
        assert_eq!(w.finish(&mut file), Ok(0), "once");
        (file, w.pre_skip())
    }

    /// What a player gives back: every packet read (CRCs checked) and
    /// decoded at `rate`, the pre-skip dropped from the start and the end
    /// trimmed to the last granule. Interleaved when stereo.
    fn play(file: &[u8], rate: u32, channels: u16) -> Vec<i16> {
        let mut r = PacketReader::new(Cursor::new(file));
        let head = r.read_packet_expected().unwrap();
        assert!(head.first_in_stream() && head.last_in_page());
        assert_eq!(head.stream_serial(), 0x5eed);
        let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]);
        let tags = r.read_packet_expected().unwrap();
        assert!(tags.data.starts_with(b"OpusTags") && tags.last_in_page());
        let layout = if channels == 2 {
            opus::Channels::Stereo
        } else {
            opus::Channels::Mono
        };
        let mut dec = opus::Decoder::new(rate, layout).unwrap();
        let ch = usize::from(channels);
        let mut pcm = vec![0i16; 5760 * ch];
        let mut decoded = Vec::new();
        let mut last_granule = None;
        while let Some(p) = r.read_packet().unwrap() {
            assert!(last_granule.is_none(), "nothing after the end of stream");
            let n = dec.decode(&p.data, &mut pcm, false).unwrap();
            assert_eq!(n, rate as usize / 50, "20 ms packets");
            decoded.extend_from_slice(&pcm[..n * ch]);
            if p.last_in_stream() {
                last_granule = Some(p.absgp_page());
            }
        }
        let to_rate = |g: u64| (g * u64::from(rate) / 48_000) as usize * ch;
        let keep = to_rate(last_granule.expect("an end of stream") - u64::from(pre_skip));
        let skip = to_rate(u64::from(pre_skip));
        assert!(
            skip + keep <= decoded.len(),
            "the granule is within the audio"
        );
        decoded[skip..skip + keep].to_vec()
    }

    /// The shift of `out` against `given` (up to 10 ms either way) where
    /// they match best: 0 when the pre-skip took exactly the codec's delay.
    fn lag(given: &[i16], out: &[i16], rate: u32) -> i64 {
        let mid = given.len() / 4..given.len() * 3 / 4;
        let most = i64::from(rate / 100);
        (-most..=most)
            .max_by_key(|&d| {
                mid.clone()
                    .map(|i| i64::from(given[i]) * i64::from(out[(i as i64 + d) as usize]))
                    .sum::<i64>()
            })
            .unwrap()
    }

    #[test]
    fn the_file_opens_with_opus_head_and_tags_each_on_its_own_page() {
        let frame = vec![0i16; 320];
        let (file, pre_skip) = record(16_000, 1, 24_000, &[frame]);
        assert_eq!(&file[..4], b"OggS");
        let p = pages(&file);
        assert_eq!(p.len(), 3, "{p:?}");
        // Beginning of stream, granule 0, one packet: the 19-byte OpusHead.
        assert_eq!((p[0].flags, p[0].granule, p[0].packets), (0x02, 0, 1));
        assert_eq!(file[26], 1);
        assert_eq!(file[27], 19);
        let head = &file[28..47];
        assert_eq!(&head[..8], b"OpusHead");
        assert_eq!((head[8], head[9]), (1, 1), "version 1, mono");
        assert_eq!(u16::from_le_bytes([head[10], head[11]]), pre_skip);
        // libopus looks 6.5 ms ahead (2.5 ms, plus 4 ms for SILK).
        assert_eq!(pre_skip, 312);
        assert_eq!(u32::from_le_bytes(head[12..16].try_into().unwrap()), 16_000);
        assert_eq!(i16::from_le_bytes([head[16], head[17]]), 0, "gain");
        assert_eq!(head[18], 0, "mapping family 0");
        // Serial and page sequence numbers.
        assert_eq!(u32::from_le_bytes(file[14..18].try_into().unwrap()), 0x5eed);
        assert_eq!(u32::from_le_bytes(file[18..22].try_into().unwrap()), 0);
        // OpusTags: the vendor, then one comment.
        let tags = &file[p[0].len + 28..p[0].len + p[1].len];
        assert_eq!((p[1].flags, p[1].granule, p[1].packets), (0, 0, 1));
        assert_eq!(&tags[..8], b"OpusTags");
        let vendor_len = u32::from_le_bytes(tags[8..12].try_into().unwrap()) as usize;
        assert_eq!(&tags[12..12 + vendor_len], opus::version().as_bytes());
        let rest = &tags[12 + vendor_len..];
        assert_eq!(u32::from_le_bytes(rest[..4].try_into().unwrap()), 1);
        let comment_len = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
        assert!(rest[8..8 + comment_len].starts_with(b"ENCODER=sip-bridge"));
        assert_eq!(8 + comment_len, rest.len());
        // The audio: one frame and the silence that flushes it, end of stream.
        assert_eq!((p[2].flags, p[2].packets), (0x04, 2));
        assert_eq!(p[2].granule, u64::from(pre_skip) + 960);
    }

    #[test]
    fn every_frame_plays_back_in_time_and_the_last_granule_trims_to_the_input() {
        for rate in [8000, 12_000, 16_000, 24_000, 48_000] {
            for channels in [1u16, 2] {
                let n = 73; // a second's page, and part of another
                let per_channel = rate as usize / 50;
                let speech = speech_like(rate, per_channel * n);
                // Stereo: the same voice, quieter, in channel 2.
                let frames: Vec<Vec<i16>> = speech
                    .chunks(per_channel)
                    .map(|c| match channels {
                        1 => c.to_vec(),
                        _ => c.iter().flat_map(|&s| [s, s / 2]).collect(),
                    })
                    .collect();
                // Well under 4 KiB a second: pages close on time.
                let (file, pre_skip) = record(rate, channels, 24_000, &frames);
                let p = pages(&file);
                assert_eq!(p.len(), 2 + 2, "{rate} {channels}: {p:?}");
                // 1 s of audio closes a page; the last has the rest, the
                // flushing silence, and the end of stream.
                assert_eq!((p[2].flags, p[2].packets), (0, 50));
                assert_eq!(p[2].granule, 50 * 960);
                assert_eq!((p[3].flags, p[3].packets), (0x04, n - 50 + 1));
                assert_eq!(p[3].granule, u64::from(pre_skip) + 960 * n as u64);
                let pcm = play(&file, rate, channels);
                assert_eq!(pcm.len(), n * per_channel * usize::from(channels));
                // Sample for sample where it was given: within 0.1 ms, what
                // libopus's resamplers leave of its delay at 48 kHz.
                let one: Vec<i16> = pcm.iter().step_by(channels.into()).copied().collect();
                let lag = lag(&speech, &one, rate);
                assert!(
                    lag.unsigned_abs() * 10_000 <= u64::from(rate),
                    "{rate}: {lag}"
                );
            }
        }
    }

    #[test]
    fn a_tone_in_channel_one_stays_in_channel_one() {
        // Two parties: 1000 Hz in channel 1, 440 Hz in channel 2, at the
        // 48 kbit/s recordings use.
        for rate in [8000, 16_000, 48_000] {
            let n = rate as usize / 50;
            let tone = sine(rate, 1000.0, 8000.0, n * 50);
            let other = sine(rate, 440.0, 8000.0, n * 50);
            let frames: Vec<Vec<i16>> = tone
                .chunks(n)
                .zip(other.chunks(n))
                .map(|(a, b)| a.iter().zip(b).flat_map(|(&x, &y)| [x, y]).collect())
                .collect();
            let (file, _) = record(rate, 2, 48_000, &frames);
            let pcm = play(&file, rate, 2);
            assert_eq!(pcm.len(), tone.len() * 2);
            let half = &pcm[pcm.len() / 2..];
            let one: Vec<i16> = half.iter().step_by(2).copied().collect();
            let two: Vec<i16> = half.iter().skip(1).step_by(2).copied().collect();
            let given = goertzel_level_db(&tone[tone.len() / 2..], rate, 1000.0);
            let (l1, l2) = (
                goertzel_level_db(&one, rate, 1000.0),
                goertzel_level_db(&two, rate, 1000.0),
            );
            assert!((l1 - given).abs() < 1.5, "{rate}: {l1:.1} vs {given:.1} dB");
            assert!(
                l2 < given - 40.0,
                "{rate}: 1000 Hz in channel 2 at {l2:.1} dB"
            );
            let leak = goertzel_level_db(&one, rate, 440.0);
            assert!(
                leak < given - 40.0,
                "{rate}: 440 Hz in channel 1 at {leak:.1} dB"
            );
        }
    }

    #[test]
    fn pages_close_after_a_second_or_4_kib() {
        // 24 kbit/s mono: 60 bytes a packet, a page a second.
        let mut w = OggOpusWriter::new(8000, 1, 24_000, 1, Duration::from_secs(10)).unwrap();
        let mut out = Vec::new();
        w.start(&mut out).unwrap();
        let tone = sine(8000, 1000.0, 8000.0, 160);
        for i in 1..=100 {
            let n = w.write(&tone, &mut out).unwrap();
            assert_eq!(n > 0, i % 50 == 0, "frame {i}: {n} bytes");
        }
        assert_eq!(w.duration(), Duration::from_secs(2));
        // 256 kbit/s stereo: 640 bytes a packet, pages of 7 packets.
        let mut w = OggOpusWriter::new(48_000, 2, 256_000, 1, Duration::from_secs(10)).unwrap();
        let frame: Vec<i16> = sine(48_000, 1000.0, 8000.0, 1920);
        let mut out = Vec::new();
        for _ in 0..50 {
            w.write(&frame, &mut out).unwrap();
        }
        w.finish(&mut out).unwrap();
        let p = pages(&out);
        assert!(p.len() > 2 + 6, "{p:?}");
        for page in &p[2..] {
            assert!(page.len < PAGE_BYTES + MAX_PACKET + 300, "{page:?}");
        }
    }

    #[test]
    fn a_recording_stops_at_its_longest_and_refuses_bad_formats() {
        let mut w = OggOpusWriter::new(8000, 1, 24_000, 7, Duration::from_millis(50)).unwrap();
        let mut out = Vec::new();
        // No start: the first write gives the headers first.
        let n = w.write(&[1; 160], &mut out).unwrap();
        assert_eq!(&out[..4], b"OggS");
        assert_eq!(n, out.len());
        assert_eq!(w.write(&[2; 160], &mut out), Ok(0));
        assert_eq!(w.write(&[3; 160], &mut out), Err(RecordError::Full));
        assert_eq!(w.duration(), Duration::from_millis(40));
        assert!(w.finish(&mut out).unwrap() > 0);
        assert_eq!(w.write(&[3; 160], &mut out), Err(RecordError::Full));
        let last = pages(&out).pop().unwrap();
        assert_eq!(last.granule, u64::from(w.pre_skip()) + 2 * 960);
        // Anything but one 20 ms frame.
        let mut s = OggOpusWriter::new(16_000, 2, 32_000, 7, Duration::from_secs(1)).unwrap();
        for len in [0, 320, 639, 641] {
            assert_eq!(
                s.write(&vec![0; len], &mut out),
                Err(RecordError::PartialFrame)
            );
        }
        assert_eq!((s.channels(), s.rate()), (2, 16_000));
        // An empty recording is a file that plays nothing.
        let mut empty = Vec::new();
        s.finish(&mut empty).unwrap();
        let p = pages(&empty);
        assert_eq!(p.len(), 3);
        assert_eq!((p[2].flags, p[2].granule), (0x04, u64::from(s.pre_skip())));
        for (rate, ch) in [
            (8000, 0),
            (8000, 3),
            (4000, 1),
            (11_025, 1),
            (44_100, 2),
            (96_000, 2),
        ] {
            assert_eq!(
                OggOpusWriter::new(rate, ch, 24_000, 0, Duration::from_secs(1)).err(),
                Some(RecordError::BadFormat),
                "{rate} {ch}"
            );
        }
        // The driver writes on a thread of its own.
        fn send<T: Send>() {}
        send::<OggOpusWriter>();
    }
}
