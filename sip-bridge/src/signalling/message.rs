//! Protocol v1 messages and their decoding. Field names are camelCase on the wire.

use serde::{Deserialize, Serialize};

/// Longest `ref`, `callId` or number id.
const MAX_ID: usize = 64;
/// Longest SDP.
const MAX_SDP: usize = 32 * 1024;
/// Most DTMF digits in one message.
const MAX_DIGITS: usize = 32;

/// DTMF digits a request may send: 1-32 of `0-9*#A-D` (either case), `,` a
/// pause.
pub fn valid_digits(digits: &str) -> bool {
    !digits.is_empty()
        && digits.len() <= MAX_DIGITS
        && digits
            .bytes()
            .all(|b| b"0123456789*#ABCDabcd,".contains(&b))
}
/// Most numbers in one `online`.
const MAX_NUMBERS: usize = 64;

/// A message from the browser.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum ClientMessage {
    /// Authenticate the connection.
    Hello {
        /// Session token.
        token: String,
        /// Protocol version (1).
        protocol: u32,
    },
    /// Take calls on these numbers.
    Online {
        /// Number ids or E.164 numbers.
        numbers: Vec<String>,
    },
    /// Take no calls.
    Offline,
    /// Place a call.
    Dial {
        /// E.164, `sip:` URI or `operator:REF`.
        to: String,
        /// A number id or E.164 the token allows.
        caller_id: String,
        /// SDP offer.
        sdp: String,
    },
    /// Answer an incoming call.
    Accept {
        /// The call.
        call_id: String,
        /// SDP offer.
        sdp: String,
    },
    /// Decline an incoming call.
    Reject {
        /// The call.
        call_id: String,
    },
    /// End a call.
    Hangup {
        /// The call.
        call_id: String,
    },
    /// Mute or unmute the microphone toward the far end.
    Mute {
        /// The call.
        call_id: String,
        /// Muted.
        on: bool,
    },
    /// Hold or resume: oneself, or another participant.
    Hold {
        /// The call.
        call_id: String,
        /// Held.
        on: bool,
        /// Another participant to hold (needs `hold_participant`).
        #[serde(default)]
        participant_id: Option<String>,
    },
    /// Send DTMF to the far end.
    Dtmf {
        /// The call.
        call_id: String,
        /// `0-9*#A-D`, `,` for a pause.
        digits: String,
    },
    /// A new peer connection for a resumed call.
    Reoffer {
        /// The call.
        call_id: String,
        /// SDP offer.
        sdp: String,
    },
    /// Ring a target into the call.
    AddParticipant {
        /// The call.
        call_id: String,
        /// `operator:REF`, `operators`, `+E164`, `pstn:+E164[@trunk]`, `sip:URI`,
        /// `stream:wss://...`.
        target: String,
        /// Seconds it rings (default 30).
        #[serde(default)]
        timeout: Option<u32>,
    },
    /// Transfer the call: the asker's counterparts to `target`, blind (the
    /// asker leaves once the target answers, and comes back if it does not)
    /// or `attended` (the others wait on hold while the asker consults the
    /// target, then `transferComplete`, `transferCancel` or `transferMerge`).
    Transfer {
        /// The call.
        call_id: String,
        /// As for `addParticipant`.
        target: String,
        /// Consult the target first.
        #[serde(default)]
        attended: bool,
        /// Seconds the target rings (default 30).
        #[serde(default)]
        timeout: Option<u32>,
        /// If this operator hangs up mid-transfer: `complete` (default) or
        /// `cancel`.
        #[serde(default)]
        on_hangup: Option<String>,
        /// Blind: a target rung when the first does not answer, is busy or
        /// fails, before the transferor is recalled.
        #[serde(default)]
        fallback: Option<String>,
    },
    /// Attended transfer: connect the others to the target and leave.
    TransferComplete {
        /// The call.
        call_id: String,
    },
    /// Stop the transfer: the target goes, the others come back.
    TransferCancel {
        /// The call.
        call_id: String,
    },
    /// Attended transfer: everyone together (the asker stays).
    TransferMerge {
        /// The call.
        call_id: String,
    },
    /// Take a participant out.
    RemoveParticipant {
        /// The call.
        call_id: String,
        /// The participant.
        participant_id: String,
    },
    /// Leave the call; it goes on for the others.
    Leave {
        /// The call.
        call_id: String,
    },
    /// End the call for everyone.
    End {
        /// The call.
        call_id: String,
    },
    /// Join another operator's call as a supervisor.
    Monitor {
        /// The call.
        call_id: String,
        /// `listen`, `whisper` or `barge`.
        mode: String,
        /// SDP offer.
        sdp: String,
        /// Whom a whisper coaches (default: the call's agents).
        #[serde(default)]
        participant_id: Option<String>,
    },
    /// Start, pause, resume or stop the call's recording (needs `record`).
    Record {
        /// The call.
        call_id: String,
        /// `start`, `pause`, `resume`, `stop`.
        action: String,
        /// With `pause`: `silence` (default) or `skip`.
        #[serde(default)]
        pause_behavior: Option<String>,
        /// With `start`: `dual` (default) or `mono`.
        #[serde(default)]
        channels: Option<String>,
    },
    /// Switch one's supervision mode.
    MonitorMode {
        /// The call.
        call_id: String,
        /// `listen`, `whisper` or `barge`.
        mode: String,
        /// Whom a whisper coaches (default: the call's agents).
        #[serde(default)]
        participant_id: Option<String>,
    },
    /// The calls one may monitor.
    ListCalls,
    /// The SDK's call-quality summary (recorded with the call).
    Quality {
        /// The call.
        call_id: String,
        /// Figures (RTT, jitter, loss, MOS...), as the SDK measured them.
        summary: serde_json::Value,
    },
    /// Heartbeat.
    Ping,
}

impl ClientMessage {
    /// The call a request is about, if it is about one.
    pub fn call_id(&self) -> Option<&str> {
        match self {
            ClientMessage::Accept { call_id, .. }
            | ClientMessage::Reject { call_id }
            | ClientMessage::Hangup { call_id }
            | ClientMessage::Mute { call_id, .. }
            | ClientMessage::Hold { call_id, .. }
            | ClientMessage::Dtmf { call_id, .. }
            | ClientMessage::Reoffer { call_id, .. }
            | ClientMessage::AddParticipant { call_id, .. }
            | ClientMessage::Transfer { call_id, .. }
            | ClientMessage::TransferComplete { call_id }
            | ClientMessage::TransferCancel { call_id }
            | ClientMessage::TransferMerge { call_id }
            | ClientMessage::RemoveParticipant { call_id, .. }
            | ClientMessage::Leave { call_id }
            | ClientMessage::End { call_id }
            | ClientMessage::Monitor { call_id, .. }
            | ClientMessage::MonitorMode { call_id, .. }
            | ClientMessage::Record { call_id, .. }
            | ClientMessage::Quality { call_id, .. } => Some(call_id),
            _ => None,
        }
    }
}

/// A decoded client message with its optional request reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEnvelope {
    /// The client's `ref`, echoed in answers.
    pub reference: Option<String>,
    /// The message.
    pub message: ClientMessage,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "ref", default)]
    reference: Option<String>,
    #[serde(flatten)]
    message: ClientMessage,
}

/// Why a client message was refused: answered with `BAD_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// For the `error` message.
    pub message: String,
    /// The `ref`, if it could be read.
    pub reference: Option<String>,
}

fn bad(message: impl Into<String>, reference: &Option<String>) -> DecodeError {
    DecodeError {
        message: message.into(),
        reference: reference.clone(),
    }
}

fn check_id(what: &str, v: &str, r: &Option<String>) -> Result<(), DecodeError> {
    if v.is_empty() || v.len() > MAX_ID || v.chars().any(char::is_control) {
        return Err(bad(
            format!("`{what}` must be 1-{MAX_ID} printable characters"),
            r,
        ));
    }
    Ok(())
}

fn check_sdp(v: &str, r: &Option<String>) -> Result<(), DecodeError> {
    if !v.starts_with("v=0") || v.len() > MAX_SDP {
        return Err(bad(
            format!("`sdp` must be an SDP offer (v=0...) of at most {MAX_SDP} bytes"),
            r,
        ));
    }
    Ok(())
}

/// Decodes and validates one text frame.
pub fn decode(text: &str) -> Result<ClientEnvelope, DecodeError> {
    let wire: Wire = serde_json::from_str(text).map_err(|e| {
        // Salvage the ref so the client can match the error.
        let reference = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.get("ref")
                    .and_then(|r| r.as_str())
                    .filter(|r| r.len() <= MAX_ID)
                    .map(String::from)
            });
        let what = if e.is_syntax() || e.is_eof() {
            "malformed JSON"
        } else {
            "invalid message"
        };
        bad(format!("{what}: {e}"), &reference)
    })?;
    let r = &wire.reference;
    if let Some(x) = r {
        check_id("ref", x, &None)?;
    }
    match &wire.message {
        ClientMessage::Hello { token, .. } if token.is_empty() || token.len() > 8192 => {
            return Err(bad("`token` missing or too long", r));
        }
        ClientMessage::Online { numbers } => {
            if numbers.len() > MAX_NUMBERS {
                return Err(bad(format!("at most {MAX_NUMBERS} numbers"), r));
            }
            for n in numbers {
                check_id("numbers[]", n, r)?;
            }
        }
        ClientMessage::Dial { to, caller_id, sdp } => {
            if to.is_empty() || to.len() > 256 || to.chars().any(char::is_control) {
                return Err(bad("`to` must be 1-256 printable characters", r));
            }
            check_id("callerId", caller_id, r)?;
            check_sdp(sdp, r)?;
        }
        ClientMessage::Accept { call_id, sdp }
        | ClientMessage::Reoffer { call_id, sdp }
        | ClientMessage::Monitor { call_id, sdp, .. } => {
            check_id("callId", call_id, r)?;
            check_sdp(sdp, r)?;
        }
        ClientMessage::Reject { call_id }
        | ClientMessage::Hangup { call_id }
        | ClientMessage::Mute { call_id, .. }
        | ClientMessage::Leave { call_id }
        | ClientMessage::End { call_id }
        | ClientMessage::TransferComplete { call_id }
        | ClientMessage::TransferCancel { call_id }
        | ClientMessage::TransferMerge { call_id }
        | ClientMessage::MonitorMode { call_id, .. }
        | ClientMessage::Record { call_id, .. } => check_id("callId", call_id, r)?,
        ClientMessage::Hold {
            call_id,
            participant_id,
            ..
        } => {
            check_id("callId", call_id, r)?;
            if let Some(p) = participant_id {
                check_id("participantId", p, r)?; // `*`: everyone but the asker
            }
        }
        ClientMessage::RemoveParticipant {
            call_id,
            participant_id,
        } => {
            check_id("callId", call_id, r)?;
            check_id("participantId", participant_id, r)?;
        }
        ClientMessage::AddParticipant {
            call_id, target, ..
        }
        | ClientMessage::Transfer {
            call_id, target, ..
        } => {
            check_id("callId", call_id, r)?;
            if target.is_empty() || target.len() > 256 || target.chars().any(char::is_control) {
                return Err(bad("`target` must be 1-256 printable characters", r));
            }
            if let ClientMessage::Transfer {
                on_hangup,
                fallback,
                ..
            } = &wire.message
            {
                if on_hangup
                    .as_deref()
                    .is_some_and(|h| h != "complete" && h != "cancel")
                {
                    return Err(bad("`onHangup` must be complete or cancel", r));
                }
                if fallback.as_deref().is_some_and(|f| {
                    f.is_empty() || f.len() > 256 || f.chars().any(char::is_control)
                }) {
                    return Err(bad("`fallback` must be 1-256 printable characters", r));
                }
            }
        }
        ClientMessage::Quality { call_id, summary } => {
            check_id("callId", call_id, r)?;
            if !summary.is_object() || summary.to_string().len() > 4096 {
                return Err(bad("`summary` must be an object of at most 4 KiB", r));
            }
        }
        ClientMessage::Dtmf { call_id, digits } => {
            check_id("callId", call_id, r)?;
            if !valid_digits(digits) {
                return Err(bad(
                    format!("`digits` must be 1-{MAX_DIGITS} of 0-9 * # A-D ,"),
                    r,
                ));
            }
        }
        _ => {}
    }
    Ok(ClientEnvelope {
        reference: wire.reference,
        message: wire.message,
    })
}

/// Stable error codes (protocol.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// No or bad token.
    Unauthorized,
    /// A number or caller ID the token does not allow.
    ForbiddenNumber,
    /// The operator already has a call.
    Busy,
    /// Malformed or not valid now.
    BadRequest,
    /// Too many messages.
    RateLimited,
    /// Our fault.
    Internal,
    /// A capability or right the asker lacks.
    Forbidden,
    /// An added participant was busy.
    TargetBusy,
    /// An added participant did not answer.
    NoAnswer,
    /// An added participant could not be reached.
    TargetFailed,
}

/// Why a call ended, for one operator (protocol.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// This operator hung up.
    Hangup,
    /// The other side hung up (or gave up while it rang).
    RemoteHangup,
    /// Another operator answered first.
    TakenByOther,
    /// This operator rejected it.
    Rejected,
    /// It rang out.
    NoAnswer,
    /// Outbound: the far end was busy.
    Busy,
    /// Outbound or media failure.
    Failed,
    /// The operator went offline or lost the connection past the grace period.
    Offline,
    /// Someone in the call removed this operator.
    Removed,
    /// This operator transferred the call and left it.
    Transferred,
}

/// `operator` in `ready`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorInfo {
    /// operatorRef.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Display name.
    pub display_name: String,
}

/// A number in `ready` and `GET /v1/numbers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NumberInfo {
    /// Config id.
    pub id: String,
    /// E.164.
    pub e164: String,
    /// Label.
    pub name: String,
}

/// A refused number in `availability`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// What the client sent.
    pub id: String,
    /// Why (`FORBIDDEN_NUMBER` or `BAD_REQUEST` for unknown).
    pub code: ErrorCode,
}

/// Call direction, from the operator's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallDirection {
    /// The operator was called.
    Inbound,
    /// The operator dialled.
    Outbound,
    /// The operator monitors it (a supervisor).
    Monitor,
}

/// A resumed call in `ready`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    /// The call.
    pub call_id: String,
    /// Direction.
    pub direction: CallDirection,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Number id.
    pub number: String,
    /// `ringing` (outbound, still ringing) or `connected`.
    pub state: &'static str,
    /// Muted.
    pub muted: bool,
    /// Held by us.
    pub held: bool,
    /// Held by the far end.
    pub remote_held: bool,
    /// Everyone in the call.
    pub participants: Vec<ParticipantInfo>,
    /// The operator's own participant id.
    #[serde(rename = "self", skip_serializing_if = "Option::is_none")]
    pub self_id: Option<String>,
    /// What the operator may do in it.
    pub capabilities: Vec<&'static str>,
    /// A supervisor's mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// Its recording, while there is one (a reloaded page shows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingInfo>,
}

/// A participant of a call (protocol.md, "Participants").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantInfo {
    /// Its id in the call (`p-N`).
    pub id: String,
    /// `customer`, `agent`, `supervisor`, `phone` or `ai`.
    pub role: &'static str,
    /// `ringing`, `joined` or `held`.
    pub state: &'static str,
    /// `sip`, `operator`, `agent`, `echo` or `tone`.
    pub kind: &'static str,
    /// Operators: their ref.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_ref: Option<String>,
    /// When known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// A phone's number or URI, an agent's URL, a caller's number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// It sends silence.
    pub muted: bool,
    /// On hold.
    pub held: bool,
    /// A supervisor's mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<&'static str>,
    /// When it joined (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<u64>,
}

/// A call in `calls` (the answer to `listCalls`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallSummary {
    /// The call.
    pub call_id: String,
    /// Number id.
    pub number: String,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// When it started (Unix ms).
    pub started_at: u64,
    /// `ringing` or `connected`.
    pub state: &'static str,
    /// Everyone in it.
    pub participants: Vec<ParticipantInfo>,
    /// Its recording, while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingInfo>,
    /// Its live media forks (`rec-...` ids), while there are some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forks: Vec<String>,
}

/// A call's recording now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingInfo {
    /// `rec-...`.
    pub id: String,
    /// `in-progress` or `paused`.
    pub status: &'static str,
}

/// A message to the browser.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum ServerMessage {
    /// Authenticated.
    Ready {
        /// Connection id.
        session_id: String,
        /// Who.
        operator: OperatorInfo,
        /// Numbers the token allows.
        numbers: Vec<NumberInfo>,
        /// Client ping interval.
        heartbeat_interval_ms: u64,
        /// Silent intervals before the server closes.
        missed_heartbeats: u32,
        /// Calls resumed after a reconnect.
        calls: Vec<CallInfo>,
    },
    /// Numbers taken or refused.
    Availability {
        /// Accepted ids.
        accepted: Vec<String>,
        /// Refused.
        rejected: Vec<Rejected>,
        /// The request's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A call rings this operator.
    Incoming {
        /// The call.
        call_id: String,
        /// Caller.
        from: String,
        /// Called number.
        to: String,
        /// Number id.
        number: String,
        /// Caller name, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        caller_name: Option<String>,
        /// The operator who added this one to a live call.
        #[serde(skip_serializing_if = "Option::is_none")]
        invited_by: Option<String>,
        /// `blind` or `attended` when `invitedBy` transfers the call to this
        /// operator.
        #[serde(skip_serializing_if = "Option::is_none")]
        transfer: Option<&'static str>,
    },
    /// SDP answer to the client's offer.
    Answer {
        /// The call.
        call_id: String,
        /// SDP.
        sdp: String,
        /// The request's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Outbound: the far end rings.
    Ringing {
        /// The call.
        call_id: String,
        /// The far end's own audio plays (else our ringback).
        early_media: bool,
    },
    /// The call is up.
    Connected {
        /// The call.
        call_id: String,
    },
    /// Mute/hold changed.
    CallUpdated {
        /// The call.
        call_id: String,
        /// Muted.
        muted: bool,
        /// Held by us.
        held: bool,
        /// Held by the far end.
        remote_held: bool,
        /// The request's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The far end sent a digit.
    Dtmf {
        /// The call.
        call_id: String,
        /// The digit.
        digit: String,
    },
    /// The call is over for this operator.
    Ended {
        /// The call.
        call_id: String,
        /// Why.
        reason: EndReason,
        /// SIP status, when one explains it.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        /// For people.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// The `ref` of the request (`dial`, `accept`) still waiting for its
        /// `answer` when the call ended.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A request failed.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// For people.
        message: String,
        /// The request's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// The call concerned.
        #[serde(skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
    },
    /// Everyone in the call, and what this operator may do.
    Participants {
        /// The call.
        call_id: String,
        /// This operator's participant id.
        #[serde(rename = "self")]
        self_id: String,
        /// Everyone.
        participants: Vec<ParticipantInfo>,
        /// Its capabilities.
        capabilities: Vec<&'static str>,
        /// Unix ms.
        at: u64,
    },
    /// A participant joined.
    ParticipantJoined {
        /// The call.
        call_id: String,
        /// Who.
        participant: Box<ParticipantInfo>,
        /// Unix ms.
        at: u64,
    },
    /// A participant changed (state, mute, hold, mode), or an added one rings.
    ParticipantUpdated {
        /// The call.
        call_id: String,
        /// How it stands.
        participant: Box<ParticipantInfo>,
        /// Unix ms.
        at: u64,
        /// The request's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A live media fork's consumer said something about the call (a
    /// transcript line, a coaching hint): its JSON object as sent, e.g.
    /// `{"event":"insight","kind":"transcript","text":"..."}`.
    Insight {
        /// The call.
        call_id: String,
        /// The fork it came from.
        fork_id: String,
        /// What the consumer sent.
        insight: serde_json::Value,
        /// Unix ms.
        at: u64,
    },
    /// The call's recording started, paused, resumed or stopped (to every
    /// operator in the call, whoever asked).
    Recording {
        /// The call.
        call_id: String,
        /// `rec-...`.
        recording_id: String,
        /// `in-progress`, `paused`, `stopped`.
        status: &'static str,
        /// The `record` request's ref, to the operator who asked.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// How a transfer this operator started goes: `ringing`, `consulting`
    /// (attended: the target answered, the others wait on hold), `completed`,
    /// `merged`, `cancelled`, `failed` (with `reason` and maybe `code`; the
    /// call goes on as before).
    Transfer {
        /// The call.
        call_id: String,
        /// The state.
        state: &'static str,
        /// The target as asked.
        target: String,
        /// The target's participant id, once it rings.
        #[serde(skip_serializing_if = "Option::is_none")]
        participant_id: Option<String>,
        /// Why it failed: `busy`, `no_answer`, `rejected`, `failed`,
        /// `target_left`, `transferee_left`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A SIP status that explains it.
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        /// The `transfer` request's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        /// Unix ms.
        at: u64,
    },
    /// A participant left, or never joined.
    ParticipantLeft {
        /// The call.
        call_id: String,
        /// Who.
        participant_id: String,
        /// `hangup`, `removed`, `busy`, `no_answer`, `failed`, `rejected`, ...
        reason: String,
        /// Unix ms.
        at: u64,
    },
    /// The answer to `listCalls`.
    Calls {
        /// The calls.
        calls: Vec<CallSummary>,
        /// The request's ref.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Heartbeat answer.
    Pong,
}

impl ServerMessage {
    /// The JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"INTERNAL","message":"encoding"}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_client_message() {
        let sdp = "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\n";
        let cases = [
            (
                r#"{"type":"hello","token":"t","protocol":1}"#.to_string(),
                ClientMessage::Hello {
                    token: "t".into(),
                    protocol: 1,
                },
            ),
            (
                r#"{"type":"online","numbers":["support"],"ref":"1"}"#.into(),
                ClientMessage::Online {
                    numbers: vec!["support".into()],
                },
            ),
            (r#"{"type":"offline"}"#.into(), ClientMessage::Offline),
            (
                format!(r#"{{"type":"dial","to":"+15550100","callerId":"support","sdp":"{sdp}"}}"#),
                ClientMessage::Dial {
                    to: "+15550100".into(),
                    caller_id: "support".into(),
                    sdp: sdp.replace("\\r\\n", "\r\n"),
                },
            ),
            (
                format!(r#"{{"type":"accept","callId":"c1","sdp":"{sdp}"}}"#),
                ClientMessage::Accept {
                    call_id: "c1".into(),
                    sdp: sdp.replace("\\r\\n", "\r\n"),
                },
            ),
            (
                r#"{"type":"reject","callId":"c1"}"#.into(),
                ClientMessage::Reject {
                    call_id: "c1".into(),
                },
            ),
            (
                r#"{"type":"hangup","callId":"c1"}"#.into(),
                ClientMessage::Hangup {
                    call_id: "c1".into(),
                },
            ),
            (
                r#"{"type":"mute","callId":"c1","on":true}"#.into(),
                ClientMessage::Mute {
                    call_id: "c1".into(),
                    on: true,
                },
            ),
            (
                r#"{"type":"hold","callId":"c1","on":false}"#.into(),
                ClientMessage::Hold {
                    call_id: "c1".into(),
                    on: false,
                    participant_id: None,
                },
            ),
            (
                r#"{"type":"dtmf","callId":"c1","digits":"12#,*"}"#.into(),
                ClientMessage::Dtmf {
                    call_id: "c1".into(),
                    digits: "12#,*".into(),
                },
            ),
            (
                format!(r#"{{"type":"reoffer","callId":"c1","sdp":"{sdp}"}}"#),
                ClientMessage::Reoffer {
                    call_id: "c1".into(),
                    sdp: sdp.replace("\\r\\n", "\r\n"),
                },
            ),
            (
                r#"{"type":"ping","extra":"ignored"}"#.into(),
                ClientMessage::Ping,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(decode(&text).map(|e| e.message), Ok(want), "{text}");
        }
        assert_eq!(
            decode(r#"{"type":"offline","ref":"r9"}"#)
                .unwrap()
                .reference
                .as_deref(),
            Some("r9")
        );
    }

    #[test]
    fn refuses_bad_messages_with_a_reason_and_the_ref() {
        for (text, needle) in [
            ("", "malformed JSON"),
            ("{", "malformed JSON"),
            ("[]", "invalid message"),
            (r#"{"type":"fly"}"#, "unknown variant"),
            (r#"{"type":"hangup"}"#, "missing field `callId`"),
            (r#"{"type":"hangup","callId":""}"#, "callId"),
            (r#"{"type":"mute","callId":"c","on":"yes"}"#, "invalid type"),
            (r#"{"type":"dtmf","callId":"c","digits":"12x"}"#, "digits"),
            (r#"{"type":"dtmf","callId":"c","digits":""}"#, "digits"),
            (r#"{"type":"accept","callId":"c","sdp":"hello"}"#, "sdp"),
            (
                r#"{"type":"dial","to":"","callerId":"x","sdp":"v=0"}"#,
                "`to`",
            ),
            (r#"{"type":"hello","token":"","protocol":1}"#, "token"),
        ] {
            let e = decode(text).unwrap_err();
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
        let e = decode(r#"{"type":"hangup","ref":"abc"}"#).unwrap_err();
        assert_eq!(e.reference.as_deref(), Some("abc"));
        let long_ref = format!(r#"{{"type":"ping","ref":"{}"}}"#, "r".repeat(65));
        assert!(decode(&long_ref).is_err());
        let many = format!(
            r#"{{"type":"online","numbers":[{}]}}"#,
            vec!["\"n\""; 65].join(",")
        );
        assert!(decode(&many).is_err());
    }

    #[test]
    fn server_messages_serialise_as_documented() {
        let m = ServerMessage::Ended {
            call_id: "c1".into(),
            reason: EndReason::TakenByOther,
            code: None,
            message: None,
            reference: None,
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"ended","callId":"c1","reason":"taken_by_other"}"#
        );
        let e = ServerMessage::Error {
            code: ErrorCode::ForbiddenNumber,
            message: "no".into(),
            reference: Some("7".into()),
            call_id: None,
        };
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"FORBIDDEN_NUMBER","message":"no","ref":"7"}"#
        );
        let r = ServerMessage::Ringing {
            call_id: "c".into(),
            early_media: true,
        };
        assert_eq!(
            r.to_json(),
            r#"{"type":"ringing","callId":"c","earlyMedia":true}"#
        );
        assert_eq!(ServerMessage::Pong.to_json(), r#"{"type":"pong"}"#);
        let a = ServerMessage::Availability {
            accepted: vec!["support".into()],
            rejected: vec![Rejected {
                id: "sales".into(),
                code: ErrorCode::ForbiddenNumber,
            }],
            reference: None,
        };
        assert_eq!(
            a.to_json(),
            r#"{"type":"availability","accepted":["support"],"rejected":[{"id":"sales","code":"FORBIDDEN_NUMBER"}]}"#
        );
    }
}
