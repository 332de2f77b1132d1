//! What a call reports (webhooks, CDRs, metrics): its progress, and each party's
//! time in it, so a backend can bill and audit every leg.

use std::time::Duration;

use media_core::Instant;

use super::party::Role;
use crate::contract::{CallId, LegKey};
use crate::plan::DialStatus;

/// Who started the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A carrier (or any SIP peer) called one of our numbers.
    Inbound,
    /// An operator dialled out.
    Outbound,
}

impl Direction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallEventKind {
    /// A call started.
    Initiated,
    /// Its targets ring.
    Ringing,
    /// Someone answered.
    Answered,
    /// A party joined (the caller and the first answer included).
    PartyJoined,
    /// A party left (or never joined: its `reason` says why).
    PartyLeft,
    /// It ended.
    Completed,
    /// An operator's browser reported the call's quality (after it ended, or
    /// when it left).
    Quality,
    /// A transfer started, or ended (its [`TransferReport`] says how).
    Transfer,
    /// A recording started, paused, resumed or stopped ([`RecordingReport`]).
    Recording,
    /// A live media fork started, stopped or failed ([`RecordingReport`]).
    Fork,
    /// A SIPREC session started, stopped or failed ([`RecordingReport`];
    /// `code` the SRS's status).
    Siprec,
}

impl CallEventKind {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            CallEventKind::Initiated => "initiated",
            CallEventKind::Ringing => "ringing",
            CallEventKind::Answered => "answered",
            CallEventKind::PartyJoined => "participant.joined",
            CallEventKind::PartyLeft => "participant.left",
            CallEventKind::Completed => "completed",
            CallEventKind::Quality => "quality",
            CallEventKind::Transfer => "transfer",
            CallEventKind::Recording => "recording",
            CallEventKind::Fork => "fork",
            CallEventKind::Siprec => "siprec",
        }
    }
}

/// One party's time in the call, for events and the CDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartyRecord {
    /// Its id in the call.
    pub id: LegKey,
    /// Its role.
    pub role: Role,
    /// Who (`operator:alice`, `pstn:+1555...`, the caller's number).
    pub who: String,
    /// When it joined (driver time), if it did.
    pub joined: Option<Instant>,
    /// When it left, if it did.
    pub left: Option<Instant>,
    /// Why it left (`hangup`, `removed`, `busy`, `no_answer`, ...).
    pub reason: Option<&'static str>,
    /// A SIP party's RTCP, as its peer last reported it (the worst jitter).
    pub rtcp: Option<crate::contract::RtcpQuality>,
    /// The party it came from (Twilio's ParentCallSid, per party): who added
    /// it or transferred to it, or the party whose dialog it replaced; so a
    /// transferred call can be followed from leg to leg.
    pub parent: Option<LegKey>,
}

impl PartyRecord {
    /// Time in the call.
    pub fn talk_time(&self, now: Instant) -> Duration {
        match self.joined {
            Some(j) => self.left.unwrap_or(now).saturating_duration_since(j),
            None => Duration::ZERO,
        }
    }
}

/// A call event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallEvent {
    /// What happened.
    pub kind: CallEventKind,
    /// The call.
    pub call_id: CallId,
    /// Direction.
    pub direction: Direction,
    /// Caller.
    pub from: String,
    /// Callee.
    pub to: String,
    /// Number id.
    pub number: Option<String>,
    /// When it happened (driver time).
    pub at: Instant,
    /// When it happened, Unix milliseconds.
    pub unix_ms: u64,
    /// Outcome (`Completed`, and `Answered`).
    pub status: Option<DialStatus>,
    /// The SIP status behind a failure.
    pub code: Option<u16>,
    /// Who answered (`operator:alice`, `pstn:+1555...`).
    pub answered_by: Option<String>,
    /// Targets rung so far.
    pub rung: Vec<String>,
    /// From start to end (`Completed`).
    pub duration: Option<Duration>,
    /// From answer to end (`Completed`).
    pub talk_time: Option<Duration>,
    /// The party concerned (`PartyJoined`, `PartyLeft`).
    pub party: Option<PartyRecord>,
    /// Every party that was in the call, in order of arrival (`Completed`).
    pub parties: Vec<PartyRecord>,
    /// What an operator's browser measured (`Quality`).
    pub quality: Option<QualityReport>,
    /// How a transfer goes (`Transfer`).
    pub transfer: Option<Box<TransferReport>>,
    /// How a recording goes (`Recording`).
    pub recording: Option<Box<RecordingReport>>,
    /// Where the API that placed the call wants its status (each event it
    /// lists, once).
    pub callback: Option<std::sync::Arc<super::StatusCallback>>,
}

/// A transfer's step, for events and webhooks: the same call goes on, so its
/// parties (the transferor leaving `transferred`, the target joining) tell the
/// rest in the CDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferReport {
    /// `started`, `consulting`, `completed`, `merged`, `cancelled`, `failed`.
    pub state: &'static str,
    /// `blind` or `attended`.
    pub kind: &'static str,
    /// Asked by an operator (`sdk`) or a SIP party's REFER (`refer`).
    pub via: &'static str,
    /// Who transfers (`operator:alice`, a SIP party's number).
    pub by: String,
    /// The target as asked.
    pub target: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// The SIP status behind a failure.
    pub code: Option<u16>,
}

/// How a call's recording goes (`Recording` events). Its file is reported
/// by the driver once written (`recording.completed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingReport {
    /// `rec-...`.
    pub id: String,
    /// `started`, `paused`, `resumed`, `stopped`.
    pub state: &'static str,
    /// Who asked: `api`, `sdk`, `plan`.
    pub via: &'static str,
    /// Why a fork failed.
    pub reason: Option<String>,
}

/// An operator's call-quality summary as its SDK sent it (RTT, jitter, loss,
/// MOS...), for the CDR and webhooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QualityReport {
    /// Who measured.
    pub operator: String,
    /// The SDK's summary, a JSON object (at most 4 KiB).
    pub summary: String,
}

impl CallEvent {
    /// Unix milliseconds of driver time `t` (a party's join or leave).
    pub fn unix_ms_of(&self, t: Instant) -> u64 {
        let back = self.at.saturating_duration_since(t).as_millis() as u64;
        let ahead = t.saturating_duration_since(self.at).as_millis() as u64;
        (self.unix_ms + ahead).saturating_sub(back)
    }

    /// One call-detail-record line (logfmt) for a `Completed` event, with a
    /// `parties` field of `id:role:who:joined_ms+talk_ms:reason` entries
    /// (times from the call's start).
    pub fn cdr_line(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        let start = Instant::from_micros(
            self.at
                .as_micros()
                .saturating_sub(self.duration.unwrap_or_default().as_micros() as u64),
        );
        let parties: Vec<String> = self
            .parties
            .iter()
            .map(|p| {
                format!(
                    "{}:{}:{}:{}+{}:{}{}",
                    p.id,
                    p.role.as_str(),
                    p.who,
                    p.joined.map_or("-".into(), |j| j
                        .saturating_duration_since(start)
                        .as_millis()
                        .to_string()),
                    p.talk_time(self.at).as_millis(),
                    p.reason.unwrap_or("-"),
                    p.parent.map_or(String::new(), |k| format!("<{k}")),
                )
            })
            .collect();
        format!(
            "cdr call={} direction={} from={:?} to={:?} number={} status={} code={} answered_by={} rung={:?} duration_ms={} talk_ms={} parties={:?}",
            self.call_id,
            self.direction.as_str(),
            self.from,
            self.to,
            self.number.as_deref().unwrap_or("-"),
            self.status.map_or("-", |s| s.as_str()),
            self.code.map_or("-".to_string(), |c| c.to_string()),
            self.answered_by.as_deref().unwrap_or("-"),
            self.rung.join(","),
            ms(self.duration),
            ms(self.talk_time),
            parties.join(","),
        ) + &self.rtcp_field()
    }

    /// ` rtcp="p-0:loss=0.4%:jitter=3ms:rtt=41ms,..."` for the SIP parties whose
    /// peers sent RTCP reports; empty without any.
    fn rtcp_field(&self) -> String {
        let list: Vec<String> = self
            .parties
            .iter()
            .filter_map(|p| {
                let q = p.rtcp?;
                Some(format!(
                    "{}:loss={:.1}%:jitter={}ms:rtt={}",
                    p.id,
                    f64::from(q.fraction_lost) * 100.0 / 256.0,
                    q.jitter_ms,
                    q.rtt_ms.map_or("-".into(), |r| format!("{r}ms")),
                ))
            })
            .collect();
        if list.is_empty() {
            String::new()
        } else {
            format!(" rtcp={:?}", list.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdr_line_lists_each_party_with_its_time() {
        let at = |ms| Instant::from_millis(ms);
        let ev = CallEvent {
            kind: CallEventKind::Completed,
            call_id: CallId(4),
            direction: Direction::Inbound,
            from: "+15550111".into(),
            to: "+15550100".into(),
            number: Some("support".into()),
            at: at(10_000),
            unix_ms: 1_795_000_010_000,
            status: Some(DialStatus::Completed),
            code: None,
            answered_by: Some("operator:alice".into()),
            rung: vec!["operators".into()],
            duration: Some(Duration::from_secs(9)),
            talk_time: Some(Duration::from_secs(7)),
            party: None,
            quality: None,
            transfer: None,
            recording: None,
            callback: None,
            parties: vec![
                PartyRecord {
                    id: LegKey(0),
                    role: Role::Customer,
                    who: "+15550111".into(),
                    joined: Some(at(1_000)),
                    left: Some(at(10_000)),
                    reason: Some("hangup"),
                    rtcp: None,
                    parent: None,
                },
                PartyRecord {
                    id: LegKey(1),
                    role: Role::Agent,
                    who: "operator:alice".into(),
                    joined: Some(at(3_000)),
                    left: None,
                    reason: None,
                    rtcp: None,
                    parent: None,
                },
            ],
        };
        assert_eq!(ev.unix_ms_of(at(3_000)), 1_795_000_003_000);
        let line = ev.cdr_line();
        assert!(line.starts_with("cdr call=c-4 direction=inbound"), "{line}");
        assert!(
            line.ends_with(
                r#"parties="p-0:customer:+15550111:0+9000:hangup,p-1:agent:operator:alice:2000+7000:-""#
            ),
            "{line}"
        );
    }
}
