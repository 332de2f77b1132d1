//! Relay: same codec and packetization on both sides. The header is rewritten in
//! place (our SSRC, a continuous sequence and timestamp across source changes, the
//! output's payload types); the payload is left where it is.

use std::collections::VecDeque;

use super::fifo::{PacketRing, SLOT};
use super::tap::Tap;
use super::{PipelineError, PipelineEvent, PipelineStats, RtpFormat, push_event, receive_dtmf};
use crate::codec::{Codec, g711};
use crate::dtmf::{DtmfReceiver, DtmfSender, EventPacket, TelephoneEvent};
use crate::rtp::{RtpHeader, RtpPacket, RtpTimestamp, RtpWriter, SeqNo, SeqUnwrapper, Ssrc};

/// A 20 ms Opus CELT frame of silence (TOC 0xf8: fullband 20 ms, code 0).
const OPUS_SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

#[derive(Debug)]
pub(crate) struct Relay {
    input: RtpFormat,
    output: RtpFormat,
    ssrc: Ssrc,
    source: Option<Ssrc>,
    seq: SeqUnwrapper,
    /// Added (wrapping) to input sequence numbers / timestamps.
    seq_offset: u16,
    ts_offset: u32,
    /// Highest sequence number and its timestamp sent so far.
    last_out: Option<(u16, u32)>,
    initial: (u16, u32),
    dtmf_rx: DtmfReceiver,
    dtmf_tx: Option<DtmfSender>,
    pub(crate) muted: bool,
    pub(crate) ring: PacketRing,
    /// G.711 only: the audio it passes on, decoded (a table lookup) for a
    /// reader on the call clock, and the buffer it is decoded into.
    tap: Option<(Tap, Vec<i16>)>,
}

/// 20 ms at 8 kHz: the tap's frame.
const TAP_FRAME: usize = 160;
/// The longest G.711 packet the tap decodes (120 ms).
const TAP_MAX: usize = 960;

impl Relay {
    pub(crate) fn new(input: RtpFormat, output: RtpFormat, ssrc: Ssrc, seq: u16, ts: u32) -> Self {
        let clock = output.codec.clock_rate();
        Relay {
            input,
            output,
            ssrc,
            source: None,
            seq: SeqUnwrapper::new(),
            seq_offset: 0,
            ts_offset: 0,
            last_out: None,
            initial: (seq, ts),
            dtmf_rx: DtmfReceiver::new(),
            dtmf_tx: output.telephone_event.map(|_| DtmfSender::new(clock, 10)),
            muted: false,
            ring: PacketRing::new(8),
            tap: None,
        }
    }

    /// Whether it can be tapped: its input is G.711.
    pub(crate) fn can_tap(&self) -> bool {
        matches!(self.input.codec, Codec::Pcmu | Codec::Pcma)
    }

    /// Starts (or stops) decoding what it relays for a tick reader.
    pub(crate) fn set_tap(&mut self, on: bool) {
        match (on && self.can_tap(), self.tap.is_some()) {
            (true, false) => self.tap = Some((Tap::new(TAP_FRAME), vec![0; TAP_MAX])),
            (false, true) => self.tap = None,
            _ => {}
        }
    }

    /// Whether it is tapped (8 kHz frames).
    pub(crate) fn tapped(&self) -> bool {
        self.tap.is_some()
    }

    /// This tick's tapped frame (see [`Tap::pop_tick`]).
    pub(crate) fn pop_tap(&mut self, out: &mut [i16]) -> Option<bool> {
        let (t, _) = self.tap.as_mut()?;
        Some(out.len() >= TAP_FRAME && t.pop_tick(out))
    }

    pub(crate) fn dtmf_sender(&mut self) -> Option<&mut DtmfSender> {
        self.dtmf_tx.as_mut()
    }

    /// For drivers holding an immutable packet: copy into a slot, relay there.
    pub(crate) fn handle_copy(
        &mut self,
        packet: &RtpPacket,
        stats: &mut PipelineStats,
        events: &mut VecDeque<PipelineEvent>,
    ) -> Result<(), PipelineError> {
        let bytes = packet.as_bytes();
        if bytes.len() > SLOT {
            stats.malformed += 1;
            return Err(PipelineError::WrongInput("packet larger than a slot"));
        }
        // Relay into a slot; extra DTMF packets go after it through the ring.
        let mut tmp = [0u8; SLOT];
        tmp[..bytes.len()].copy_from_slice(bytes);
        if let Some(n) = self.relay(&mut tmp[..bytes.len()], stats, events)? {
            let (slot, dropped) = self.ring.claim();
            slot[..n].copy_from_slice(&tmp[..n]);
            self.ring.commit(n);
            stats.overflow_drops += dropped as u64;
        }
        Ok(())
    }

    pub(crate) fn relay(
        &mut self,
        buf: &mut [u8],
        stats: &mut PipelineStats,
        events: &mut VecDeque<PipelineEvent>,
    ) -> Result<Option<usize>, PipelineError> {
        let h = RtpHeader::parse(buf)?;
        let pt = h.payload_type;
        let is_event = Some(pt) == self.input.telephone_event;
        if pt != self.input.payload_type && !is_event {
            stats.unknown_payload_type += 1;
            return Ok(None);
        }
        stats.packets_in += 1;
        stats.bytes_in += h.payload_len() as u64;
        let mut marker = h.marker;
        if self.source != Some(h.ssrc) {
            // New source: continue our stream one packet after where it was.
            self.seq.reset();
            let (next_seq, next_ts) = match self.last_out {
                Some((s, t)) => (s.wrapping_add(1), t.wrapping_add(self.frame_ticks())),
                None => self.initial,
            };
            self.seq_offset = next_seq.wrapping_sub(h.sequence_number.0);
            self.ts_offset = next_ts.wrapping_sub(h.timestamp.0);
            if self.source.is_some() {
                push_event(events, PipelineEvent::SourceChanged { ssrc: h.ssrc });
            }
            self.source = Some(h.ssrc);
            marker = true;
        }
        let ext = self.seq.unwrap(h.sequence_number.0);
        let is_newest = self.seq.highest() == Some(ext);
        let out_seq = h.sequence_number.0.wrapping_add(self.seq_offset);
        let out_ts = h.timestamp.0.wrapping_add(self.ts_offset);
        if is_newest {
            self.last_out = Some((out_seq, out_ts));
        }
        if is_event {
            receive_dtmf(
                &mut self.dtmf_rx,
                &buf[h.payload_range()],
                h.timestamp,
                stats,
                events,
            );
            let Some(out_pt) = self.output.telephone_event else {
                return Ok(None); // reported above; the far side cannot take events
            };
            RtpHeader::rewrite_in_place(
                buf,
                marker,
                out_pt,
                SeqNo(out_seq),
                RtpTimestamp(out_ts),
                self.ssrc,
            )?;
            stats.packets_out += 1;
            stats.bytes_out += buf.len() as u64;
            return Ok(Some(buf.len()));
        }
        // The tap hears what goes out (silence when muted), newest packets
        // only: a late one is not played twice.
        if is_newest && let Some((t, pcm)) = self.tap.as_mut() {
            let payload = &buf[h.payload_range()];
            let n = payload.len().min(TAP_MAX);
            if self.muted {
                pcm[..n].fill(0);
            } else if self.input.codec == Codec::Pcma {
                g711::alaw_decode(&payload[..n], &mut pcm[..n]);
            } else {
                g711::ulaw_decode(&payload[..n], &mut pcm[..n]);
            }
            t.push(&pcm[..n]);
        }
        if let Some(n) = self.inject_dtmf(buf, out_ts, stats)? {
            return Ok(Some(n));
        }
        RtpHeader::rewrite_in_place(
            buf,
            marker,
            self.output.payload_type,
            SeqNo(out_seq),
            RtpTimestamp(out_ts),
            self.ssrc,
        )?;
        let mut len = buf.len();
        if self.muted {
            len = mute_payload(buf, &h, self.output.codec);
        }
        stats.packets_out += 1;
        stats.bytes_out += len as u64;
        Ok(Some(len))
    }

    /// Moves the first packet's timestamp on (before anything was sent).
    pub(crate) fn shift_start(&mut self, ticks: u32) {
        if self.last_out.is_none() {
            self.initial.1 = self.initial.1.wrapping_add(ticks);
        }
    }

    /// The sequence number and timestamp of the packet after the last sent.
    pub(crate) fn next_output(&self) -> Option<(u16, u32)> {
        self.last_out
            .map(|(s, t)| (s.wrapping_add(1), t.wrapping_add(self.frame_ticks())))
    }

    fn frame_ticks(&self) -> u32 {
        self.output.codec.clock_rate().ticks_in(self.output.ptime)
    }

    /// While we send DTMF, audio packets are replaced by event packets: the first
    /// in place, further ones (end retransmissions) through the ring. Each extra
    /// packet shifts the sequence offset by one.
    fn inject_dtmf(
        &mut self,
        buf: &mut [u8],
        out_ts: u32,
        stats: &mut PipelineStats,
    ) -> Result<Option<usize>, PipelineError> {
        let (Some(tx), Some(te)) = (self.dtmf_tx.as_mut(), self.output.telephone_event) else {
            return Ok(None);
        };
        if tx.is_idle() {
            return Ok(None);
        }
        let mut evs = [EventPacket {
            marker: false,
            timestamp: RtpTimestamp(0),
            event: TelephoneEvent {
                event: 0,
                end: false,
                volume: 0,
                duration: 0,
            },
        }; 3];
        let ticks = self.output.codec.clock_rate().ticks_in(self.output.ptime);
        let n = tx.tick(RtpTimestamp(out_ts), ticks, &mut evs);
        if n == 0 {
            return Ok(None);
        }
        let Some((mut seq, _)) = self.last_out else {
            return Ok(None);
        };
        let mut first_len = 0;
        for (i, ev) in evs[..n].iter().enumerate() {
            let mut w = RtpWriter::new(te, SeqNo(seq), ev.timestamp, self.ssrc);
            w.marker = ev.marker;
            let mut payload = [0u8; 4];
            ev.event.write(&mut payload);
            if i == 0 {
                first_len = w.write_packet(&payload, buf)?;
            } else {
                seq = seq.wrapping_add(1);
                w.sequence_number = SeqNo(seq);
                let (slot, dropped) = self.ring.claim();
                let len = w.write_packet(&payload, slot)?;
                self.ring.commit(len);
                stats.overflow_drops += dropped as u64;
                self.seq_offset = self.seq_offset.wrapping_add(1);
            }
            stats.dtmf_packets_sent += 1;
            stats.packets_out += 1;
        }
        if let Some(last) = self.last_out.as_mut() {
            last.0 = seq;
        }
        Ok(Some(first_len))
    }
}

/// Replaces the payload with silence in place; returns the new packet length.
fn mute_payload(buf: &mut [u8], h: &RtpHeader, codec: Codec) -> usize {
    let range = h.payload_range();
    match codec {
        Codec::Pcmu => buf[range].fill(0xff),
        Codec::Pcma => buf[range].fill(0xd5),
        Codec::Opus => {
            let start = h.header_len();
            if buf.len() >= start + OPUS_SILENCE.len() {
                buf[start..start + 3].copy_from_slice(&OPUS_SILENCE);
                // Drop padding: the packet now ends after the silence frame.
                buf[0] &= !0x20;
                return start + 3;
            }
        }
    }
    buf.len()
}
