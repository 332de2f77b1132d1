//! Recording, sans-IO: what a recording's file is made of, and the bounded
//! queue between the media path and the writer. No file is opened here; the
//! driver owns the I/O and the thread that does it.
//!
//! * [`WavWriter`]: RIFF/WAVE PCM16 (format 1), 1 or 2 channels, as the
//!   Microsoft multimedia format defines it. The header is written first with
//!   the sizes known so far; [`WavWriter::header_patch`] gives the two size
//!   fields to rewrite in place (the driver does it every second), so a crash
//!   leaves a playable file short of at most that last second. Files stop at
//!   the 4 GiB the format can address, or earlier at `max_duration`.
//! * [`OggOpusWriter`]: Ogg Opus (RFC 7845), 1 or 2 channels, pages of at
//!   most a second, so a crash loses at most the last page; the container
//!   from the `ogg` crate, the audio from libopus.
//! * [`FrameQueue`]: the frames of one recording between the media task and
//!   the writer, preallocated, bounded: when the writer falls behind (a slow
//!   disk), the oldest frames go and are counted, and the media path never
//!   waits.

mod ogg;

pub use self::ogg::OggOpusWriter;

use std::time::Duration;

/// Why a recording stopped taking audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// 1 or 2 channels, and a rate from 8000 to 48000 Hz.
    #[error("a recording has 1 or 2 channels at 8000-48000 Hz")]
    BadFormat,
    /// Its `max_duration` (or the 4 GiB a WAV file can hold) is reached.
    #[error("the recording is at its longest")]
    Full,
    /// Samples that are not whole frames (one sample per channel).
    #[error("samples must come in whole frames of every channel")]
    PartialFrame,
    /// libopus refused to encode (an [`OggOpusWriter`]); the recording
    /// cannot go on.
    #[error("Opus encoding failed: {0}")]
    Encode(&'static str),
}

/// Bytes of the canonical PCM header.
pub const WAV_HEADER_LEN: usize = 44;

/// A PCM16 WAV file, written as it goes. See the module docs.
#[derive(Clone, Debug)]
pub struct WavWriter {
    rate: u32,
    channels: u16,
    /// Frames (one sample per channel) written so far.
    frames: u64,
    /// Frames it may hold at most.
    max_frames: u64,
}

impl WavWriter {
    /// A file of `channels` at `rate` Hz, at most `max_duration` long.
    pub fn new(rate: u32, channels: u16, max_duration: Duration) -> Result<Self, RecordError> {
        if !(1..=2).contains(&channels) || !(8000..=48_000).contains(&rate) {
            return Err(RecordError::BadFormat);
        }
        let block = u64::from(channels) * 2;
        // The RIFF size field is 32 bits and counts 36 header bytes too.
        let by_format = (u64::from(u32::MAX) - 36) / block;
        let by_time = max_duration.as_millis() as u64 * u64::from(rate) / 1000;
        Ok(WavWriter {
            rate,
            channels,
            frames: 0,
            max_frames: by_format.min(by_time),
        })
    }

    /// The 44-byte header with the sizes of what was written so far: the
    /// file's first bytes (written before any audio, then patched).
    pub fn header(&self) -> [u8; WAV_HEADER_LEN] {
        let mut h = [0u8; WAV_HEADER_LEN];
        let block = self.channels * 2;
        let data = self.data_bytes() as u32;
        h[0..4].copy_from_slice(b"RIFF");
        h[4..8].copy_from_slice(&(36 + data).to_le_bytes());
        h[8..12].copy_from_slice(b"WAVE");
        h[12..16].copy_from_slice(b"fmt ");
        h[16..20].copy_from_slice(&16u32.to_le_bytes());
        h[20..22].copy_from_slice(&1u16.to_le_bytes()); // PCM
        h[22..24].copy_from_slice(&self.channels.to_le_bytes());
        h[24..28].copy_from_slice(&self.rate.to_le_bytes());
        h[28..32].copy_from_slice(&(self.rate * u32::from(block)).to_le_bytes());
        h[32..34].copy_from_slice(&block.to_le_bytes());
        h[34..36].copy_from_slice(&16u16.to_le_bytes());
        h[36..40].copy_from_slice(b"data");
        h[40..44].copy_from_slice(&data.to_le_bytes());
        h
    }

    /// The two size fields to rewrite in the file as it stands: (offset,
    /// bytes) for the RIFF size and the data size.
    pub fn header_patch(&self) -> [(u64, [u8; 4]); 2] {
        let data = self.data_bytes() as u32;
        [(4, (36 + data).to_le_bytes()), (40, data.to_le_bytes())]
    }

    /// Appends interleaved samples (`channels` per frame) to `out` as the
    /// file's bytes: the frames it took. Past its longest it takes what
    /// fits, then [`RecordError::Full`].
    pub fn write(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, RecordError> {
        let ch = usize::from(self.channels);
        if !pcm.len().is_multiple_of(ch) {
            return Err(RecordError::PartialFrame);
        }
        let room = (self.max_frames - self.frames) as usize;
        if room == 0 && !pcm.is_empty() {
            return Err(RecordError::Full);
        }
        let take = (pcm.len() / ch).min(room);
        out.reserve(take * ch * 2);
        for s in &pcm[..take * ch] {
            out.extend_from_slice(&s.to_le_bytes());
        }
        self.frames += take as u64;
        Ok(take)
    }

    /// Audio bytes written.
    pub fn data_bytes(&self) -> u64 {
        self.frames * u64::from(self.channels) * 2
    }

    /// Length of what was written.
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.frames * 1_000_000 / u64::from(self.rate))
    }

    /// Channels.
    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// Sample rate (Hz).
    pub fn rate(&self) -> u32 {
        self.rate
    }
}

/// Fixed-size frames of one recording waiting for its writer: preallocated,
/// bounded, the oldest dropped (and counted) when full. The driver shares
/// it between the media task and the writer behind a lock held for one
/// frame's copy.
#[derive(Clone, Debug)]
pub struct FrameQueue {
    buf: Box<[i16]>,
    frame: usize,
    cap: usize,
    head: usize,
    len: usize,
    pushed: u64,
    dropped: u64,
}

impl FrameQueue {
    /// Room for `cap` frames of `frame` samples (interleaved channels).
    pub fn new(frame: usize, cap: usize) -> FrameQueue {
        let (frame, cap) = (frame.max(1), cap.max(1));
        FrameQueue {
            buf: vec![0; frame * cap].into_boxed_slice(),
            frame,
            cap,
            head: 0,
            len: 0,
            pushed: 0,
            dropped: 0,
        }
    }

    /// Queues one frame (shorter input is padded with silence, longer cut);
    /// when full, the oldest frame goes. Returns whether one was dropped.
    pub fn push(&mut self, frame: &[i16]) -> bool {
        let dropped = self.len == self.cap;
        if dropped {
            self.head = (self.head + 1) % self.cap;
            self.len -= 1;
            self.dropped += 1;
        }
        let slot = (self.head + self.len) % self.cap;
        let dst = &mut self.buf[slot * self.frame..(slot + 1) * self.frame];
        let n = frame.len().min(self.frame);
        dst[..n].copy_from_slice(&frame[..n]);
        dst[n..].fill(0);
        self.len += 1;
        self.pushed += 1;
        dropped
    }

    /// The oldest frame, copied into `out` (its first `frame` samples):
    /// whether there was one.
    pub fn pop_into(&mut self, out: &mut [i16]) -> bool {
        if self.len == 0 {
            return false;
        }
        let src = &self.buf[self.head * self.frame..(self.head + 1) * self.frame];
        let n = out.len().min(self.frame);
        out[..n].copy_from_slice(&src[..n]);
        self.head = (self.head + 1) % self.cap;
        self.len -= 1;
        true
    }

    /// Samples in one frame.
    pub fn frame_len(&self) -> usize {
        self.frame
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frames queued so far, and those dropped because the writer was behind.
    pub fn counts(&self) -> (u64, u64) {
        (self.pushed, self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    #[test]
    fn the_header_is_canonical_pcm16_and_its_patch_gives_the_sizes_so_far() {
        let mut w = WavWriter::new(8000, 2, Duration::from_secs(3600)).unwrap();
        let empty = w.header();
        assert_eq!(&empty[0..4], b"RIFF");
        assert_eq!(&empty[8..16], b"WAVEfmt ");
        assert_eq!(&empty[36..40], b"data");
        assert_eq!(
            (u32_at(&empty, 4), u32_at(&empty, 16), u16_at(&empty, 20)),
            (36, 16, 1)
        );
        assert_eq!((u16_at(&empty, 22), u32_at(&empty, 24)), (2, 8000));
        // Byte rate and block align: 2 channels of 16 bits.
        assert_eq!((u32_at(&empty, 28), u16_at(&empty, 32)), (32_000, 4));
        assert_eq!((u16_at(&empty, 34), u32_at(&empty, 40)), (16, 0));

        // A file as a driver writes it: the header, then audio, patched.
        let mut file = empty.to_vec();
        let frame: Vec<i16> = (0..320).map(|i| i as i16 - 160).collect(); // 20 ms stereo
        for _ in 0..50 {
            assert_eq!(w.write(&frame, &mut file), Ok(160));
        }
        assert_eq!(w.duration(), Duration::from_secs(1));
        for (at, bytes) in w.header_patch() {
            file[at as usize..at as usize + 4].copy_from_slice(&bytes);
        }
        assert_eq!(file[..WAV_HEADER_LEN], w.header());
        assert_eq!(u32_at(&file, 40) as usize, file.len() - WAV_HEADER_LEN);
        assert_eq!(u32_at(&file, 4) as usize, file.len() - 8);
        // Little-endian samples, interleaved as given.
        assert_eq!(i16::from_le_bytes([file[44], file[45]]), -160);
        assert_eq!(i16::from_le_bytes([file[46], file[47]]), -159);
    }

    #[test]
    fn a_recording_stops_at_its_longest_and_refuses_bad_formats() {
        let mut w = WavWriter::new(8000, 1, Duration::from_millis(25)).unwrap();
        let mut out = Vec::new();
        assert_eq!(w.write(&[1; 160], &mut out), Ok(160));
        // 40 of the next 160 samples fit in 25 ms.
        assert_eq!(w.write(&[2; 160], &mut out), Ok(40));
        assert_eq!(w.write(&[3; 160], &mut out), Err(RecordError::Full));
        assert_eq!(out.len(), 400);
        assert_eq!(w.duration(), Duration::from_millis(25));
        let mut s = WavWriter::new(16_000, 2, Duration::from_secs(1)).unwrap();
        assert_eq!(s.write(&[0; 3], &mut out), Err(RecordError::PartialFrame));
        for (rate, ch) in [(8000, 0), (8000, 3), (4000, 1), (96_000, 2)] {
            assert_eq!(
                WavWriter::new(rate, ch, Duration::from_secs(1)).err(),
                Some(RecordError::BadFormat)
            );
        }
        // 4 GiB caps a long stereo 48 kHz recording before its 24 h.
        let long = WavWriter::new(48_000, 2, Duration::from_secs(24 * 3600)).unwrap();
        assert!(long.max_frames * 4 + 36 <= u64::from(u32::MAX));
    }

    #[test]
    fn a_full_queue_drops_its_oldest_frames_and_counts_them() {
        let mut q = FrameQueue::new(4, 3);
        for i in 0..5 {
            let dropped = q.push(&[i, i, i, i]);
            assert_eq!(dropped, i >= 3, "push {i}");
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.counts(), (5, 2));
        let mut out = [0i16; 4];
        let mut got = Vec::new();
        while q.pop_into(&mut out) {
            got.push(out[0]);
        }
        assert_eq!(got, [2, 3, 4], "the newest three, in order");
        assert!(q.is_empty());
        // A short frame is padded with silence, a long one cut.
        q.push(&[7]);
        q.push(&[8; 9]);
        assert!(q.pop_into(&mut out));
        assert_eq!(out, [7, 0, 0, 0]);
        assert!(q.pop_into(&mut out));
        assert_eq!(out, [8; 4]);
        assert!(!q.pop_into(&mut out));
    }
}
