//! A live media fork's wire protocol, sans-IO: what goes to the consumer's
//! WebSocket (the driver owns the socket). Two framings:
//!
//! * **native**: a JSON `start` (`callId`, `forkId`, `rate`, `channels` with
//!   their roles, `encoding` `pcm16le`, `frameMs` 20), then one binary
//!   message per 20 ms frame, PCM16LE, interleaved when both tracks (channel
//!   1 the customer), with no header, so a frame's position is its index;
//!   JSON events between frames: the call's timeline (`joined`, `left`,
//!   `hold`, `transfer`, `dtmf`... with `atMs`), `overrun` (`droppedFrames`:
//!   frames the consumer was too slow for, so positions stay exact), `stop`.
//! * **twilio**: Twilio Media Streams as its consumers parse it:
//!   `connected`, `start` (`tracks`, `mediaFormat` u-law 8 kHz mono), one
//!   `media` per track per 20 ms (`track`, `chunk`, `timestamp` in ms,
//!   base64 `payload`), `dtmf`, `stop`; each with `sequenceNumber` and
//!   `streamSid`.
//!
//! What the consumer sends back is passed on as it is (JSON objects only):
//! insights for the call's operators (`{"event":"insight","kind":"transcript",
//! "text":...}`).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use media_core::codec::g711;
use serde_json::json;

use crate::contract::{ForkFraming, RecordChannels, RecordNote, RecordSpec, RecordingId};

/// A message to the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForkMessage {
    /// JSON.
    Text(String),
    /// A frame of PCM16LE.
    Binary(Bytes),
}

/// Frames one fork's messages. See the module docs.
#[derive(Debug)]
pub struct ForkFramer {
    framing: ForkFraming,
    channels: RecordChannels,
    rate: u32,
    id: String,
    call: String,
    from: String,
    to: String,
    /// Twilio's message counter and per-track chunk counter.
    seq: u64,
    chunks: [u64; 2],
    /// Frames sent so far (their index is their time).
    frames: u64,
    ulaw: Vec<u8>,
    mono: Vec<i16>,
    b64: String,
}

impl ForkFramer {
    /// The framer of fork `id` as `spec` says (its `fork` set).
    pub fn new(id: RecordingId, spec: &RecordSpec) -> ForkFramer {
        ForkFramer {
            framing: spec.fork.as_ref().map(|f| f.framing).unwrap_or_default(),
            channels: spec.channels,
            rate: spec.rate,
            id: id.to_string(),
            call: spec.call.to_string(),
            from: spec.from.clone(),
            to: spec.to.clone(),
            seq: 0,
            chunks: [0, 0],
            frames: 0,
            ulaw: Vec::with_capacity(160),
            mono: Vec::with_capacity(160),
            b64: String::with_capacity(256),
        }
    }

    /// The tracks by wire name, in channel order.
    fn tracks(&self) -> &'static [&'static str] {
        match self.channels {
            RecordChannels::Customer => &["inbound"],
            RecordChannels::Others => &["outbound"],
            _ => &["inbound", "outbound"],
        }
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    /// What opens the stream (again after a reconnect: `resumed` says so,
    /// and `frames` how many went before).
    pub fn start(&mut self, resumed: bool, out: &mut Vec<ForkMessage>) {
        match self.framing {
            ForkFraming::Twilio => {
                out.push(ForkMessage::Text(
                    json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
                        .to_string(),
                ));
                let seq = self.next_seq();
                out.push(ForkMessage::Text(
                    json!({
                        "event": "start",
                        "sequenceNumber": seq,
                        "start": {
                            "streamSid": self.id,
                            "callSid": self.call,
                            "accountSid": "",
                            "tracks": self.tracks(),
                            "customParameters": {"from": self.from, "to": self.to},
                            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                        },
                        "streamSid": self.id,
                    })
                    .to_string(),
                ));
            }
            _ => {
                let roles: Vec<serde_json::Value> = match self.channels {
                    RecordChannels::Customer => vec![json!({"index": 1, "role": "customer"})],
                    RecordChannels::Others => vec![json!({"index": 1, "role": "others"})],
                    _ => vec![
                        json!({"index": 1, "role": "customer"}),
                        json!({"index": 2, "role": "others"}),
                    ],
                };
                out.push(ForkMessage::Text(
                    json!({
                        "event": "start",
                        "callId": self.call,
                        "forkId": self.id,
                        "from": self.from,
                        "to": self.to,
                        "rate": self.rate,
                        "encoding": "pcm16le",
                        "frameMs": 20,
                        "channels": roles,
                        "resumed": resumed,
                        "frames": self.frames,
                    })
                    .to_string(),
                ));
            }
        }
    }

    /// One 20 ms frame (interleaved when both tracks).
    pub fn frame(&mut self, pcm: &[i16], out: &mut Vec<ForkMessage>) {
        self.frames += 1;
        match self.framing {
            ForkFraming::Twilio => {
                let n = self.tracks().len();
                let timestamp = (self.frames - 1) * 20;
                for (c, track) in self.tracks().iter().enumerate() {
                    self.mono.clear();
                    self.mono.extend(pcm.iter().skip(c).step_by(n));
                    self.ulaw.resize(self.mono.len(), 0);
                    g711::ulaw_encode(&self.mono, &mut self.ulaw);
                    self.b64.clear();
                    base64::engine::general_purpose::STANDARD
                        .encode_string(&self.ulaw, &mut self.b64);
                    self.chunks[c] += 1;
                    self.seq += 1;
                    out.push(ForkMessage::Text(
                        json!({
                            "event": "media",
                            "sequenceNumber": self.seq.to_string(),
                            "media": {
                                "track": track,
                                "chunk": self.chunks[c].to_string(),
                                "timestamp": timestamp.to_string(),
                                "payload": self.b64,
                            },
                            "streamSid": self.id,
                        })
                        .to_string(),
                    ));
                }
            }
            _ => {
                let mut bytes = Vec::with_capacity(pcm.len() * 2);
                for s in pcm {
                    bytes.extend_from_slice(&s.to_le_bytes());
                }
                out.push(ForkMessage::Binary(Bytes::from(bytes)));
            }
        }
    }

    /// A timeline entry at `at` into the call's audio.
    pub fn note(&mut self, at: Duration, note: &RecordNote, out: &mut Vec<ForkMessage>) {
        match self.framing {
            ForkFraming::Twilio => {
                // Twilio's consumers know `dtmf` only.
                if note.event == "dtmf"
                    && let Some(digit) = &note.detail
                {
                    let seq = self.next_seq();
                    out.push(ForkMessage::Text(
                        json!({
                            "event": "dtmf",
                            "sequenceNumber": seq,
                            "dtmf": {"track": "inbound_track", "digit": digit},
                            "streamSid": self.id,
                        })
                        .to_string(),
                    ));
                }
            }
            _ => out.push(ForkMessage::Text(
                json!({
                    "event": note.event,
                    "atMs": at.as_millis() as u64,
                    "participantId": note.party.map(|p| p.to_string()),
                    "detail": note.detail,
                })
                .to_string(),
            )),
        }
    }

    /// `dropped` frames went because the consumer was too slow (native: an
    /// `overrun` event; Twilio's framing has none, its timestamps show it).
    pub fn overrun(&mut self, dropped: u64, out: &mut Vec<ForkMessage>) {
        self.frames += dropped;
        if self.framing == ForkFraming::Native {
            out.push(ForkMessage::Text(
                json!({"event": "overrun", "droppedFrames": dropped, "frames": self.frames})
                    .to_string(),
            ));
        }
    }

    /// What ends the stream.
    pub fn stop(&mut self, out: &mut Vec<ForkMessage>) {
        match self.framing {
            ForkFraming::Twilio => {
                let seq = self.next_seq();
                out.push(ForkMessage::Text(
                    json!({
                        "event": "stop",
                        "sequenceNumber": seq,
                        "stop": {"callSid": self.call, "accountSid": ""},
                        "streamSid": self.id,
                    })
                    .to_string(),
                ));
            }
            _ => out.push(ForkMessage::Text(
                json!({"event": "stop", "frames": self.frames}).to_string(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{CallId, ForkSpec, LegKey, RecordFormat};

    fn spec(channels: RecordChannels, framing: ForkFraming, rate: u32) -> RecordSpec {
        RecordSpec {
            channels,
            format: RecordFormat::Wav,
            rate,
            call: CallId(3),
            number: None,
            from: "+15550001".into(),
            to: "+15550100".into(),
            source: "api".into(),
            fork: Some(ForkSpec {
                url: "ws://x/".into(),
                framing,
                headers: Vec::new(),
            }),
        }
    }

    fn text(m: &ForkMessage) -> serde_json::Value {
        match m {
            ForkMessage::Text(t) => serde_json::from_str(t).unwrap(),
            ForkMessage::Binary(_) => panic!("binary"),
        }
    }

    #[test]
    fn native_frames_are_headerless_pcm_after_a_start_that_names_the_channels() {
        let mut f = ForkFramer::new(
            RecordingId(9),
            &spec(RecordChannels::Dual, ForkFraming::Native, 16_000),
        );
        let mut out = Vec::new();
        f.start(false, &mut out);
        let s = text(&out[0]);
        assert_eq!(
            (s["event"].as_str(), s["rate"].as_u64()),
            (Some("start"), Some(16_000))
        );
        assert_eq!(s["channels"][1]["role"], "others");
        out.clear();
        let pcm: Vec<i16> = (0..640).map(|i| i as i16).collect();
        f.frame(&pcm, &mut out);
        let ForkMessage::Binary(b) = &out[0] else {
            panic!()
        };
        assert_eq!(b.len(), 1280);
        assert_eq!(i16::from_le_bytes([b[2], b[3]]), 1);
        out.clear();
        let note = RecordNote {
            event: "hold".into(),
            party: Some(LegKey(0)),
            detail: None,
        };
        f.note(Duration::from_millis(40), &note, &mut out);
        f.overrun(5, &mut out);
        f.stop(&mut out);
        let evs: Vec<serde_json::Value> = out.iter().map(text).collect();
        assert_eq!(
            (evs[0]["event"].as_str(), evs[0]["atMs"].as_u64()),
            (Some("hold"), Some(40))
        );
        assert_eq!(evs[1]["droppedFrames"], 5);
        assert_eq!(
            (evs[2]["event"].as_str(), evs[2]["frames"].as_u64()),
            (Some("stop"), Some(6))
        );
    }

    #[test]
    fn twilio_framing_sends_a_media_message_per_track_with_its_own_chunks() {
        let mut f = ForkFramer::new(
            RecordingId(9),
            &spec(RecordChannels::Dual, ForkFraming::Twilio, 8000),
        );
        let mut out = Vec::new();
        f.start(false, &mut out);
        assert_eq!(text(&out[0])["event"], "connected");
        let s = text(&out[1]);
        assert_eq!(s["start"]["tracks"], json!(["inbound", "outbound"]));
        assert_eq!(s["start"]["mediaFormat"]["sampleRate"], 8000);
        out.clear();
        // Channel 1 loud, channel 2 silent.
        let pcm: Vec<i16> = (0..320)
            .map(|i| if i % 2 == 0 { 8000 } else { 0 })
            .collect();
        f.frame(&pcm, &mut out);
        f.frame(&pcm, &mut out);
        let m: Vec<serde_json::Value> = out.iter().map(text).collect();
        assert_eq!(m.len(), 4);
        assert_eq!(
            (
                m[0]["media"]["track"].as_str(),
                m[1]["media"]["track"].as_str()
            ),
            (Some("inbound"), Some("outbound"))
        );
        assert_eq!(
            (
                m[2]["media"]["chunk"].as_str(),
                m[2]["media"]["timestamp"].as_str()
            ),
            (Some("2"), Some("20"))
        );
        let seqs: Vec<&str> = m
            .iter()
            .map(|v| v["sequenceNumber"].as_str().unwrap())
            .collect();
        assert_eq!(seqs, ["2", "3", "4", "5"]);
        let decode = |v: &serde_json::Value| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(v["media"]["payload"].as_str().unwrap())
                .unwrap();
            assert_eq!(b.len(), 160);
            b.iter()
                .map(|c| g711::ulaw_decode_sample(*c) as i32)
                .map(i32::abs)
                .max()
                .unwrap()
        };
        assert!(decode(&m[0]) > 7000 && decode(&m[1]) < 10);
        out.clear();
        let digit = RecordNote {
            event: "dtmf".into(),
            party: Some(LegKey(0)),
            detail: Some("5".into()),
        };
        f.note(Duration::ZERO, &digit, &mut out);
        assert_eq!(text(&out[0])["dtmf"]["digit"], "5");
        f.stop(&mut out);
        assert_eq!(text(&out[1])["event"], "stop");
    }
}
