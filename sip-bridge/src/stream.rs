//! The AI agent leg's protocol, sans-IO: what goes over the WebSocket to a voice
//! agent and back, in our native framing (PCM16 LE mono 24 kHz binary frames plus
//! JSON control) or in Twilio Media Streams framing (JSON events, base64 u-law
//! 8 kHz). See the README section "AI agents" for the message exchange.
//!
//! The leg turns the caller's 20 ms frames into messages, and the agent's audio
//! (which arrives in bursts, faster than real time) into a bounded playout queue
//! paced out one 20 ms frame per tick; a tick with nothing queued plays silence.
//! `clear` drops what is queued at once (barge-in); a `mark` goes back to the agent
//! when playout reaches it.

use std::collections::VecDeque;

use base64::Engine;
use bytes::Bytes;
use media_core::SampleRate;
use media_core::codec::g711;
use serde_json::json;

/// How audio and control are framed on the agent's WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StreamFormat {
    /// Binary PCM16 LE mono 24 kHz frames (960 bytes per 20 ms) and JSON control.
    #[default]
    Pcm24k,
    /// Twilio Media Streams: JSON events, base64 u-law 8 kHz payloads.
    Twilio,
}

impl StreamFormat {
    /// The rate audio is exchanged at.
    pub fn sample_rate(self) -> SampleRate {
        match self {
            StreamFormat::Pcm24k => SampleRate::HZ_24000,
            StreamFormat::Twilio => SampleRate::HZ_8000,
        }
    }

    /// Samples in one 20 ms frame.
    pub fn frame_samples(self) -> usize {
        self.sample_rate().samples_in(media_core::Millis(20))
    }

    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamFormat::Pcm24k => "pcm16-24k",
            StreamFormat::Twilio => "twilio",
        }
    }
}

impl std::str::FromStr for StreamFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pcm16-24k" | "native" => Ok(StreamFormat::Pcm24k),
            "twilio" => Ok(StreamFormat::Twilio),
            other => Err(format!(
                "unknown stream format `{other}`: expected pcm16-24k or twilio"
            )),
        }
    }
}

/// A WebSocket message to or from the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentMessage {
    /// A text frame (JSON).
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

/// What the call's control must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The agent hangs up the call.
    Hangup,
    /// The agent hands the caller to a dial-plan target: at once (blind),
    /// or `warm`: it stays on with the target to pass on what it knows,
    /// the caller on hold, until it hangs up.
    Transfer {
        /// The target (`operators`, `operator:REF`, `pstn:+1555...`).
        target: String,
        /// Warm (attended) rather than blind.
        warm: bool,
    },
}

/// The call the agent is told about in `start`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StreamStart {
    /// Our call id.
    pub call_id: String,
    /// Caller.
    pub from: String,
    /// Called number.
    pub to: String,
    /// Number id.
    pub number: Option<String>,
}

/// Agent messages that make no sense (answered by ignoring them; counted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Not JSON, or not a message we know.
    #[error("bad agent message: {0}")]
    BadMessage(String),
    /// Audio in the wrong framing (binary in Twilio mode, odd byte count...).
    #[error("bad agent audio: {0}")]
    BadAudio(&'static str),
}

#[derive(Clone, Debug)]
enum Item {
    Audio(Vec<i16>),
    Mark(String),
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Caller frames sent to the agent.
    pub frames_out: u64,
    /// Agent frames played to the caller.
    pub frames_played: u64,
    /// Ticks with nothing queued (silence played).
    pub underruns: u64,
    /// Agent audio dropped: the queue was full.
    pub overflow_frames: u64,
    /// Agent audio dropped by `clear`.
    pub cleared_frames: u64,
    /// Agent messages refused.
    pub bad_messages: u64,
}

/// One agent leg. See the module docs.
#[derive(Debug)]
pub struct StreamLeg {
    format: StreamFormat,
    stream_sid: String,
    seq: u64,
    queue: VecDeque<Item>,
    queued_frames: usize,
    max_frames: usize,
    partial: Vec<i16>,
    out: VecDeque<AgentMessage>,
    events: VecDeque<StreamEvent>,
    /// Milliseconds of caller audio sent (Twilio `timestamp`).
    sent_ms: u64,
    stopped: bool,
    stats: StreamStats,
}

/// Most agent audio queued: 60 s. An agent streaming faster than real time for
/// longer is cut, not buffered without bound.
const MAX_QUEUE: std::time::Duration = std::time::Duration::from_secs(60);

impl StreamLeg {
    /// A leg about to talk to an agent; `start` goes out first.
    pub fn new(format: StreamFormat, start: &StreamStart) -> Self {
        let mut leg = StreamLeg {
            format,
            stream_sid: format!("MZ{}", start.call_id.replace('-', "")),
            seq: 0,
            queue: VecDeque::new(),
            queued_frames: 0,
            max_frames: (MAX_QUEUE.as_millis() / 20) as usize,
            partial: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            sent_ms: 0,
            stopped: false,
            stats: StreamStats::default(),
        };
        match format {
            StreamFormat::Pcm24k => leg.text(json!({
                "type": "start",
                "callId": start.call_id,
                "from": start.from,
                "to": start.to,
                "number": start.number,
                "format": { "encoding": "pcm16le", "sampleRate": 24000, "channels": 1, "frameMs": 20 },
            })),
            StreamFormat::Twilio => {
                leg.text(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
                let seq = leg.next_seq();
                leg.text(json!({
                    "event": "start",
                    "sequenceNumber": seq,
                    "streamSid": leg.stream_sid,
                    "start": {
                        "streamSid": leg.stream_sid,
                        "accountSid": "ACsbc",
                        "callSid": start.call_id,
                        "tracks": ["inbound"],
                        "customParameters": { "from": start.from, "to": start.to, "number": start.number },
                        "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 },
                    },
                }));
            }
        }
        leg
    }

    /// The framing.
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Counters.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Frames of agent audio waiting to be played.
    pub fn queued_frames(&self) -> usize {
        self.queued_frames
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    fn text(&mut self, v: serde_json::Value) {
        self.out.push_back(AgentMessage::Text(v.to_string()));
    }

    /// One 20 ms frame of the caller's audio at [`StreamFormat::sample_rate`].
    pub fn push_caller_audio(&mut self, pcm: &[i16]) {
        if self.stopped {
            return;
        }
        self.stats.frames_out += 1;
        match self.format {
            StreamFormat::Pcm24k => {
                let mut b = Vec::with_capacity(pcm.len() * 2);
                for s in pcm {
                    b.extend_from_slice(&s.to_le_bytes());
                }
                self.out.push_back(AgentMessage::Binary(Bytes::from(b)));
            }
            StreamFormat::Twilio => {
                let mut ulaw = vec![0u8; pcm.len()];
                let n = g711::ulaw_encode(pcm, &mut ulaw);
                let seq = self.next_seq();
                let payload = base64::engine::general_purpose::STANDARD.encode(&ulaw[..n]);
                let msg = json!({
                    "event": "media",
                    "sequenceNumber": seq,
                    "streamSid": self.stream_sid,
                    "media": { "track": "inbound", "chunk": self.stats.frames_out.to_string(), "timestamp": self.sent_ms.to_string(), "payload": payload },
                });
                self.text(msg);
            }
        }
        self.sent_ms += 20;
    }

    /// A DTMF digit the caller pressed.
    pub fn send_dtmf(&mut self, digit: char) {
        match self.format {
            StreamFormat::Pcm24k => self.text(json!({"type": "dtmf", "digit": digit.to_string()})),
            StreamFormat::Twilio => {
                let seq = self.next_seq();
                let msg = json!({"event": "dtmf", "streamSid": self.stream_sid, "sequenceNumber": seq, "dtmf": {"track": "inbound_track", "digit": digit.to_string()}});
                self.text(msg);
            }
        }
    }

    /// How the agent's warm transfer goes: `{"type": "transfer", "state"}`
    /// (`ringing`, `consulting`, `completed`, `failed`, `cancelled`).
    pub fn send_transfer_state(&mut self, state: &str) {
        if self.format == StreamFormat::Pcm24k {
            self.text(json!({"type": "transfer", "state": state}));
        }
    }

    /// Ends the stream (the agent gets `stop`).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        match self.format {
            StreamFormat::Pcm24k => self.text(json!({"type": "stop"})),
            StreamFormat::Twilio => {
                let seq = self.next_seq();
                let msg = json!({"event": "stop", "sequenceNumber": seq, "streamSid": self.stream_sid, "stop": {"accountSid": "ACsbc", "callSid": self.stream_sid}});
                self.text(msg);
            }
        }
    }

    fn queue_audio(&mut self, pcm: &[i16]) {
        self.partial.extend_from_slice(pcm);
        let n = self.format.frame_samples();
        while self.partial.len() >= n {
            let frame: Vec<i16> = self.partial.drain(..n).collect();
            if self.queued_frames >= self.max_frames {
                self.stats.overflow_frames += 1;
                continue;
            }
            self.queued_frames += 1;
            self.queue.push_back(Item::Audio(frame));
        }
    }

    fn queue_mark(&mut self, name: String) {
        // A partial frame before the mark plays before it.
        if !self.partial.is_empty() {
            let n = self.format.frame_samples();
            self.partial.resize(n, 0);
            let frame = std::mem::take(&mut self.partial);
            self.queued_frames += 1;
            self.queue.push_back(Item::Audio(frame));
        }
        self.queue.push_back(Item::Mark(name));
    }

    fn echo_mark(&mut self, name: &str) {
        match self.format {
            StreamFormat::Pcm24k => self.text(json!({"type": "mark", "name": name})),
            StreamFormat::Twilio => {
                let seq = self.next_seq();
                let msg = json!({"event": "mark", "sequenceNumber": seq, "streamSid": self.stream_sid, "mark": {"name": name}});
                self.text(msg);
            }
        }
    }

    /// Drops every queued frame (barge-in); queued marks go back to the agent.
    fn clear(&mut self) {
        self.partial.clear();
        let items: Vec<Item> = self.queue.drain(..).collect();
        for item in items {
            match item {
                Item::Audio(_) => self.stats.cleared_frames += 1,
                Item::Mark(name) => self.echo_mark(&name),
            }
        }
        self.queued_frames = 0;
    }

    /// A message from the agent.
    pub fn handle_agent(&mut self, msg: AgentMessage) -> Result<(), StreamError> {
        let r = self.handle_inner(msg);
        if r.is_err() {
            self.stats.bad_messages += 1;
        }
        r
    }

    fn handle_inner(&mut self, msg: AgentMessage) -> Result<(), StreamError> {
        match (self.format, msg) {
            (StreamFormat::Pcm24k, AgentMessage::Binary(b)) => {
                if b.len() % 2 != 0 {
                    return Err(StreamError::BadAudio("odd number of bytes for PCM16"));
                }
                let pcm: Vec<i16> = b
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                self.queue_audio(&pcm);
                Ok(())
            }
            (StreamFormat::Twilio, AgentMessage::Binary(_)) => Err(StreamError::BadAudio(
                "binary frames are not Twilio framing",
            )),
            (format, AgentMessage::Text(t)) => {
                let v: serde_json::Value =
                    serde_json::from_str(&t).map_err(|e| StreamError::BadMessage(e.to_string()))?;
                let kind = v
                    .get(if format == StreamFormat::Twilio {
                        "event"
                    } else {
                        "type"
                    })
                    .and_then(|k| k.as_str())
                    .unwrap_or("");
                match kind {
                    "clear" => self.clear(),
                    "mark" => {
                        let name = v
                            .get("mark")
                            .and_then(|m| m.get("name"))
                            .or_else(|| v.get("name"))
                            .and_then(|n| n.as_str())
                            .ok_or_else(|| StreamError::BadMessage("mark without a name".into()))?;
                        self.queue_mark(name.chars().take(256).collect());
                    }
                    "media" if format == StreamFormat::Twilio => {
                        let payload = v
                            .get("media")
                            .and_then(|m| m.get("payload"))
                            .and_then(|p| p.as_str())
                            .ok_or_else(|| {
                                StreamError::BadMessage("media without a payload".into())
                            })?;
                        let ulaw = base64::engine::general_purpose::STANDARD
                            .decode(payload)
                            .map_err(|_| StreamError::BadAudio("payload is not base64"))?;
                        let mut pcm = vec![0i16; ulaw.len()];
                        let n = g711::ulaw_decode(&ulaw, &mut pcm);
                        self.queue_audio(&pcm[..n]);
                    }
                    "hangup" if format == StreamFormat::Pcm24k => {
                        self.events.push_back(StreamEvent::Hangup)
                    }
                    "transfer" if format == StreamFormat::Pcm24k => {
                        let target = v.get("target").and_then(|t| t.as_str()).ok_or_else(|| {
                            StreamError::BadMessage("transfer without a target".into())
                        })?;
                        let warm = match v.get("warm") {
                            None => false,
                            Some(w) => w.as_bool().ok_or_else(|| {
                                StreamError::BadMessage("`warm` must be true or false".into())
                            })?,
                        };
                        self.events.push_back(StreamEvent::Transfer {
                            target: target.to_string(),
                            warm,
                        });
                    }
                    // Agents may send keep-alives or their own bookkeeping.
                    "ping" | "connected" | "start" => {}
                    other => {
                        return Err(StreamError::BadMessage(format!(
                            "unknown message `{other}`"
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// The next 20 ms frame for the caller (called once per 20 ms): queued agent
    /// audio, or silence. Marks reached on the way go back to the agent. Returns
    /// whether it was agent audio.
    pub fn next_frame(&mut self, out: &mut [i16]) -> bool {
        loop {
            match self.queue.pop_front() {
                Some(Item::Mark(name)) => self.echo_mark(&name),
                Some(Item::Audio(frame)) => {
                    self.queued_frames -= 1;
                    let n = out.len().min(frame.len());
                    out[..n].copy_from_slice(&frame[..n]);
                    out[n..].fill(0);
                    self.stats.frames_played += 1;
                    // A mark right after this frame is reached when it has played.
                    while let Some(Item::Mark(_)) = self.queue.front() {
                        if let Some(Item::Mark(name)) = self.queue.pop_front() {
                            self.echo_mark(&name);
                        }
                    }
                    return true;
                }
                None => {
                    out.fill(0);
                    self.stats.underruns += 1;
                    return false;
                }
            }
        }
    }

    /// The next message for the agent.
    pub fn poll_message(&mut self) -> Option<AgentMessage> {
        self.out.pop_front()
    }

    /// The next event for the call.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StreamStart {
        StreamStart {
            call_id: "c-1".into(),
            from: "+15550111".into(),
            to: "+15550100".into(),
            number: Some("support".into()),
        }
    }

    fn texts(leg: &mut StreamLeg) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| leg.poll_message())
            .filter_map(|m| match m {
                AgentMessage::Text(t) => Some(serde_json::from_str(&t).unwrap()),
                AgentMessage::Binary(_) => None,
            })
            .collect()
    }

    fn pcm_bytes(n: usize, v: i16) -> Bytes {
        Bytes::from((0..n).flat_map(|_| v.to_le_bytes()).collect::<Vec<u8>>())
    }

    #[test]
    fn native_start_audio_and_playout() {
        let mut leg = StreamLeg::new(StreamFormat::Pcm24k, &start());
        let m = texts(&mut leg);
        assert_eq!(m[0]["type"], "start");
        assert_eq!(m[0]["callId"], "c-1");
        assert_eq!(m[0]["format"]["sampleRate"], 24000);
        leg.push_caller_audio(&[7i16; 480]);
        match leg.poll_message() {
            Some(AgentMessage::Binary(b)) => assert_eq!(b.len(), 960, "PCM16 LE, 20 ms at 24 kHz"),
            other => panic!("{other:?}"),
        }
        // 50 ms of agent audio in one burst: two full frames now, the rest waits.
        leg.handle_agent(AgentMessage::Binary(pcm_bytes(1200, 100)))
            .unwrap();
        assert_eq!(leg.queued_frames(), 2);
        let mut out = [0i16; 480];
        assert!(leg.next_frame(&mut out));
        assert_eq!(out[0], 100);
        assert!(leg.next_frame(&mut out));
        assert!(!leg.next_frame(&mut out), "then silence, not a stall");
        assert_eq!(out, [0i16; 480]);
        assert_eq!(leg.stats().underruns, 1);
        assert!(
            leg.handle_agent(AgentMessage::Binary(Bytes::from_static(&[1, 2, 3])))
                .is_err()
        );
    }

    #[test]
    fn marks_come_back_when_played_and_clear_drops_audio_at_once() {
        let mut leg = StreamLeg::new(StreamFormat::Pcm24k, &start());
        texts(&mut leg);
        leg.handle_agent(AgentMessage::Binary(pcm_bytes(480 * 3, 5)))
            .unwrap();
        leg.handle_agent(AgentMessage::Text(
            r#"{"type":"mark","name":"greeting-done"}"#.into(),
        ))
        .unwrap();
        leg.handle_agent(AgentMessage::Binary(pcm_bytes(480 * 100, 6)))
            .unwrap();
        let mut out = [0i16; 480];
        leg.next_frame(&mut out);
        leg.next_frame(&mut out);
        assert!(texts(&mut leg).is_empty(), "not reached yet");
        leg.next_frame(&mut out);
        let m = texts(&mut leg);
        assert_eq!(m, vec![json!({"type": "mark", "name": "greeting-done"})]);
        // Barge-in: the next frame is silence.
        leg.handle_agent(AgentMessage::Text(r#"{"type":"clear"}"#.into()))
            .unwrap();
        assert_eq!(leg.queued_frames(), 0);
        assert!(!leg.next_frame(&mut out));
        assert_eq!(leg.stats().cleared_frames, 100);
    }

    #[test]
    fn control_messages_and_bad_ones() {
        let mut leg = StreamLeg::new(StreamFormat::Pcm24k, &start());
        leg.handle_agent(AgentMessage::Text(
            r#"{"type":"transfer","target":"operators"}"#.into(),
        ))
        .unwrap();
        leg.handle_agent(AgentMessage::Text(r#"{"type":"hangup"}"#.into()))
            .unwrap();
        assert_eq!(
            leg.poll_event(),
            Some(StreamEvent::Transfer {
                target: "operators".into(),
                warm: false
            })
        );
        assert_eq!(leg.poll_event(), Some(StreamEvent::Hangup));
        for bad in [
            "",
            "{",
            r#"{"type":"fly"}"#,
            r#"{"type":"mark"}"#,
            r#"{"type":"transfer"}"#,
        ] {
            assert!(
                leg.handle_agent(AgentMessage::Text(bad.into())).is_err(),
                "{bad}"
            );
        }
        leg.send_dtmf('5');
        leg.stop();
        leg.stop();
        let m = texts(&mut leg);
        assert_eq!(m[m.len() - 2], json!({"type": "dtmf", "digit": "5"}));
        assert_eq!(m[m.len() - 1], json!({"type": "stop"}));
    }

    #[test]
    fn twilio_framing() {
        let mut leg = StreamLeg::new(StreamFormat::Twilio, &start());
        let m = texts(&mut leg);
        assert_eq!(m[0]["event"], "connected");
        assert_eq!(m[1]["event"], "start");
        assert_eq!(m[1]["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
        let sid = m[1]["streamSid"].as_str().unwrap().to_string();
        leg.push_caller_audio(&[1000i16; 160]);
        let media = &texts(&mut leg)[0];
        assert_eq!(media["event"], "media");
        assert_eq!(media["streamSid"], sid.as_str());
        let payload = base64::engine::general_purpose::STANDARD
            .decode(media["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload.len(), 160, "u-law, 8 kHz, 20 ms");
        // Agent audio back, in u-law.
        let ulaw =
            base64::engine::general_purpose::STANDARD.encode([g711::ulaw_encode_sample(2000); 320]);
        leg.handle_agent(AgentMessage::Text(
            json!({"event": "media", "streamSid": sid, "media": {"payload": ulaw}}).to_string(),
        ))
        .unwrap();
        leg.handle_agent(AgentMessage::Text(
            json!({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}}).to_string(),
        ))
        .unwrap();
        let mut out = [0i16; 160];
        assert!(leg.next_frame(&mut out));
        assert!((out[0] - 2000).abs() < 64);
        assert!(leg.next_frame(&mut out));
        let m = texts(&mut leg);
        assert_eq!(m[0]["event"], "mark");
        assert_eq!(m[0]["mark"]["name"], "m1");
        leg.handle_agent(AgentMessage::Text(
            json!({"event": "clear", "streamSid": sid}).to_string(),
        ))
        .unwrap();
        assert!(
            leg.handle_agent(AgentMessage::Binary(Bytes::from_static(&[0, 0])))
                .is_err()
        );
        leg.send_dtmf('#');
        assert_eq!(texts(&mut leg)[0]["dtmf"]["digit"], "#");
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut leg = StreamLeg::new(StreamFormat::Pcm24k, &start());
        for _ in 0..70 {
            leg.handle_agent(AgentMessage::Binary(pcm_bytes(24_000, 1)))
                .unwrap(); // 1 s each
        }
        assert_eq!(leg.queued_frames(), 3000);
        assert_eq!(leg.stats().overflow_frames, 500);
    }
}
