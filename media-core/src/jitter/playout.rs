//! The jitter buffer around a decoder: packets in, one 20 ms PCM frame out per
//! tick, with concealment, FEC and time-stretching applied.

use crate::codec::{AudioDecoder, opus};
use crate::rtp::RtpPacket;
use crate::time::{Instant, SampleRate};

use super::stretch::Stretcher;
use super::{InsertOutcome, JitterBuffer, JitterConfig, JitterPacket, Step, Stretch};

/// Jitter buffer + decoder + sync buffer + time-stretcher for one stream.
#[derive(Debug)]
pub struct Playout {
    jb: JitterBuffer,
    decoder: AudioDecoder,
    stretcher: Stretcher,
    rate: SampleRate,
    /// Decoded audio not yet played (contiguous, `sync_len` samples).
    sync: Vec<i16>,
    sync_len: usize,
    frame: usize,
    /// RTP ticks per 1000 samples (Opus: 48 kHz clock over the decoder's rate).
    ticks_per_ksample: u64,
}

impl Playout {
    /// A playout for `decoder`, buffering per `config` (whose clock must be the
    /// codec's RTP clock).
    pub fn new(config: JitterConfig, decoder: AudioDecoder) -> Self {
        let rate = decoder.sample_rate();
        let frame = rate.samples_in(config.frame);
        // Room for a frame, an accelerate's slack and the largest step (120 ms).
        let cap = frame * 2 + rate.samples_in(crate::time::Millis(120)) * 2;
        Playout {
            ticks_per_ksample: config.clock.0 as u64 * 1000 / rate.hz() as u64,
            jb: JitterBuffer::new(config),
            decoder,
            stretcher: Stretcher::new(rate.hz()),
            rate,
            sync: vec![0; cap],
            sync_len: 0,
            frame,
        }
    }

    /// The jitter buffer (stats, target).
    pub fn jitter(&self) -> &JitterBuffer {
        &self.jb
    }

    /// Output rate.
    pub fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    /// Samples per output frame.
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    fn samples(&self, ticks: u32) -> usize {
        (ticks as u64 * 1000 / self.ticks_per_ksample) as usize
    }

    fn ticks(&self, samples: usize) -> u32 {
        (samples as u64 * self.ticks_per_ksample / 1000) as u32
    }

    /// Queues a received audio packet (payload type already checked).
    pub fn insert(&mut self, now: Instant, packet: &RtpPacket) -> InsertOutcome {
        let payload = packet.payload_bytes();
        let Ok(samples) = self.decoder.payload_samples(payload) else {
            return InsertOutcome::Invalid;
        };
        let fec = matches!(self.decoder, AudioDecoder::Opus(_)) && opus::has_fec(payload);
        self.jb.insert(
            now,
            JitterPacket {
                sequence_number: packet.sequence_number(),
                timestamp: packet.timestamp(),
                ssrc: packet.ssrc(),
                marker: packet.marker(),
                duration: self.ticks(samples),
                fec,
                payload: packet.payload(),
            },
        )
    }

    /// Produces the next frame into `out` (at least [`Playout::frame_samples`]
    /// long); returns the samples written.
    pub fn pull(&mut self, now: Instant, out: &mut [i16]) -> usize {
        let frame = self.frame;
        let tick = self.jb.tick(now);
        for step in tick.steps() {
            self.run(step);
        }
        if self.sync_len < frame {
            // Defensive: never play stale samples.
            self.sync[self.sync_len..frame].fill(0);
            self.sync_len = frame;
        }
        let avail = &self.sync[..self.sync_len];
        let out = &mut out[..frame];
        let consumed = match tick.stretch {
            Stretch::None => {
                out.copy_from_slice(&avail[..frame]);
                frame
            }
            Stretch::Accelerate { max_ticks } => {
                self.stretcher
                    .accelerate(avail, out, self.samples(max_ticks))
            }
            Stretch::Expand { max_ticks } => {
                self.stretcher.expand(avail, out, self.samples(max_ticks))
            }
        };
        self.sync.copy_within(consumed..self.sync_len, 0);
        self.sync_len -= consumed;
        self.jb.consume(self.ticks(consumed));
        frame
    }

    /// Runs one step, appending exactly its duration of audio to the sync buffer.
    fn run(&mut self, step: &Step) {
        let want = match step {
            Step::Decode { ticks, .. }
            | Step::Conceal { ticks }
            | Step::RecoverFec { ticks, .. }
            | Step::Silence { ticks } => self.samples(*ticks),
        };
        let start = self.sync_len;
        let end = (start + want).min(self.sync.len());
        let room = &mut self.sync[start..];
        let produced = match step {
            Step::Decode { payload, .. } => self.decoder.decode(payload, room).ok(),
            Step::RecoverFec { payload, .. } => {
                self.decoder.recover(payload, &mut room[..end - start]).ok()
            }
            Step::Conceal { .. } => {
                // Opus conceals in 2.5 ms units: round up, keep what is needed.
                let unit = self.rate.hz() as usize / 400;
                let n = (end - start).div_ceil(unit) * unit;
                let n = n.min(room.len());
                self.decoder.conceal(&mut room[..n]).ok()
            }
            Step::Silence { .. } => Some(0),
        };
        let produced = produced.unwrap_or(0).min(end - start);
        // Whatever the codec did, the buffer grows by exactly the step's duration
        // so its accounting matches the jitter buffer's.
        self.sync[start + produced..end].fill(0);
        self.sync_len = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{dominant_frequency, sine};
    use crate::codec::{Codec, g711};
    use crate::rtp::{PayloadType, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
    use crate::time::ClockRate;
    use bytes::Bytes;

    fn pcmu(seq: u16, pcm: &[i16]) -> RtpPacket {
        let mut payload = vec![0u8; pcm.len()];
        g711::ulaw_encode(pcm, &mut payload);
        let w = RtpWriter::new(
            PayloadType::PCMU,
            SeqNo(seq),
            RtpTimestamp(seq as u32 * 160),
            Ssrc(1),
        );
        let mut buf = vec![0u8; 12 + payload.len()];
        w.write_packet(&payload, &mut buf).unwrap();
        RtpPacket::parse(Bytes::from(buf)).unwrap()
    }

    #[test]
    fn plays_a_jittery_tone_continuously() {
        let cfg = JitterConfig::new(ClockRate(8000));
        let mut p = Playout::new(
            cfg,
            AudioDecoder::new(Codec::Pcmu, SampleRate::HZ_8000).unwrap(),
        );
        let tone = sine(8000, 500.0, 8000.0, 160 * 300);
        let mut rng = crate::time::SeededRng::new(3);
        // Arrivals: 20 ms apart plus up to 30 ms jitter (FIFO).
        let mut arrivals = Vec::new();
        let mut last = 0u64;
        for i in 0..300u64 {
            let a = (i * 20_000 + (rng.next_f64() * 30_000.0) as u64).max(last);
            last = a;
            arrivals.push(a);
        }
        let mut out = Vec::new();
        let mut frame = [0i16; 160];
        let mut next = 0usize;
        for t in (0..300 * 20_000 + 200_000).step_by(20_000) {
            while next < 300 && arrivals[next] <= t as u64 {
                p.insert(
                    Instant::from_micros(arrivals[next]),
                    &pcmu(next as u16, &tone[next * 160..(next + 1) * 160]),
                );
                next += 1;
            }
            let n = p.pull(Instant::from_micros(t as u64), &mut frame);
            out.extend_from_slice(&frame[..n]);
        }
        let s = p.jitter().stats();
        assert_eq!(s.late, 0, "{s:?}");
        // After start-up the tone plays throughout.
        let played: Vec<i16> = out.iter().copied().skip_while(|&v| v == 0).collect();
        assert!(played.len() >= 280 * 160);
        assert!(
            (dominant_frequency(&played[..280 * 160], 8000, 100.0, 2000.0) - 500.0).abs() < 5.0
        );
        assert!(
            s.target_delay_ms >= 20.0 && s.target_delay_ms <= 60.0,
            "{s:?}"
        );
    }
}
