//! The call's recording: it belongs to the call, not to a leg, so it goes on
//! through holds, transfers and parties joining or leaving. Started and
//! stopped by the REST API, an operator with the `record` capability, the dial
//! plan or the router's plan; paused and resumed (card numbers). Its channels
//! follow the graph: channel 1 is the customer's voice as the others hear it
//! (silence while held or muted), channel 2 what the customer hears without
//! tones (nothing while the customer is held, so a consult is not recorded).
//! Joins, leaves, holds, transfers and DTMF go into its timeline, stamped by
//! media with the file's offset.

use media_core::Instant;

use super::control::ApiError;
use super::event::RecordingReport;
use super::{Call, CallCtx, CallEventKind};
use crate::contract::{
    Feed, FeedSource, LegKey, MediaCommand, PauseBehavior, RecordNote, RecordSpec, RecordingId,
};
use crate::plan::RecordOptions;
use crate::roles::Role;
use crate::signalling::ServerMessage;

/// Who asks for a change of the recording.
#[derive(Debug)]
pub(crate) enum Asker<'a> {
    /// The REST API.
    Api,
    /// The dial plan or the router's plan.
    Plan,
    /// An operator's SDK, with its request's ref.
    Sdk {
        op: &'a str,
        reference: Option<String>,
    },
}

impl Asker<'_> {
    pub(crate) fn via(&self) -> &'static str {
        match self {
            Asker::Api => "api",
            Asker::Plan => "plan",
            Asker::Sdk { .. } => "sdk",
        }
    }
}

/// The recording a call has now (or one of its forks).
#[derive(Debug)]
pub(crate) struct CallRecording {
    pub(crate) id: RecordingId,
    pub(crate) paused: Option<PauseBehavior>,
    /// What media was last told its channels hear.
    pub(crate) channels: [Vec<Feed>; 2],
    /// Whether the customer was on hold at the last look (a timeline entry
    /// when it changes).
    pub(crate) customer_held: bool,
}

impl Call {
    /// Starts recording the call (one recording at a time).
    pub(crate) fn start_recording(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        o: RecordOptions,
        via: Asker<'_>,
    ) -> Result<RecordingId, ApiError> {
        if !self.is_connected() {
            return Err(ApiError::conflict("the call is not connected"));
        }
        if self.recording.is_some() {
            return Err(ApiError::conflict("the call is already being recorded"));
        }
        let id = RecordingId(ctx.rng.next_u64());
        let spec = self.tap_spec(o.channels, o.format, o.rate, &via, None);
        self.media(MediaCommand::RecordStart {
            id,
            spec: Box::new(spec),
        });
        self.recording = Some(CallRecording {
            id,
            paused: None,
            channels: [Vec::new(), Vec::new()],
            customer_held: false,
        });
        // Who is in the call when it starts opens the timeline.
        let present: Vec<(LegKey, &'static str)> = self
            .parties
            .iter()
            .filter(|(_, p)| p.joined())
            .map(|(k, p)| (*k, p.role.as_str()))
            .collect();
        for (k, role) in present {
            self.record_note("joined", Some(k), Some(role.into()));
        }
        self.sync_recording();
        self.recording_event(now, id, "started", via);
        Ok(id)
    }

    /// Pauses the recording: `behavior` says whether the pause keeps time.
    pub(crate) fn pause_recording(
        &mut self,
        now: Instant,
        behavior: PauseBehavior,
        via: Asker<'_>,
    ) -> Result<RecordingId, ApiError> {
        let r = self.recording_mut()?;
        if r.paused.is_some() {
            return Err(ApiError::conflict("the recording is paused already"));
        }
        r.paused = Some(behavior);
        let id = r.id;
        self.media(MediaCommand::RecordPause { id, behavior });
        self.recording_event(now, id, "paused", via);
        Ok(id)
    }

    /// Resumes a paused recording.
    pub(crate) fn resume_recording(
        &mut self,
        now: Instant,
        via: Asker<'_>,
    ) -> Result<RecordingId, ApiError> {
        let r = self.recording_mut()?;
        if r.paused.take().is_none() {
            return Err(ApiError::conflict("the recording is not paused"));
        }
        let id = r.id;
        self.media(MediaCommand::RecordResume { id });
        self.recording_event(now, id, "resumed", via);
        Ok(id)
    }

    /// Stops the recording (the call goes on); its file is finished.
    pub(crate) fn stop_recording(
        &mut self,
        now: Instant,
        via: Asker<'_>,
    ) -> Result<RecordingId, ApiError> {
        let r = self
            .recording
            .take()
            .ok_or_else(|| ApiError::conflict("the call is not being recorded"))?;
        self.media(MediaCommand::RecordStop { id: r.id });
        self.recording_event(now, r.id, "stopped", via);
        Ok(r.id)
    }

    fn recording_mut(&mut self) -> Result<&mut CallRecording, ApiError> {
        self.recording
            .as_mut()
            .ok_or_else(|| ApiError::conflict("the call is not being recorded"))
    }

    /// What media and the driver are told of a recording or a fork of this
    /// call.
    pub(crate) fn tap_spec(
        &self,
        channels: crate::contract::RecordChannels,
        format: crate::contract::RecordFormat,
        rate: u32,
        via: &Asker<'_>,
        fork: Option<crate::contract::ForkSpec>,
    ) -> RecordSpec {
        RecordSpec {
            channels,
            format,
            rate,
            call: self.id,
            number: self.number.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            source: via.via().into(),
            fork,
        }
    }

    /// The recording's id and whether it is paused.
    pub(crate) fn recording_state(&self) -> Option<(RecordingId, bool)> {
        self.recording.as_ref().map(|r| (r.id, r.paused.is_some()))
    }

    /// The customer: the first joined party with that role, else the caller.
    pub(crate) fn customer(&self) -> Option<LegKey> {
        self.parties
            .iter()
            .find(|(_, p)| p.joined() && p.in_media && p.role == Role::Customer)
            .map(|(k, _)| *k)
            .or_else(|| {
                self.parties
                    .get(&self.caller)
                    .filter(|p| p.joined() && p.in_media)
                    .map(|_| self.caller)
            })
    }

    /// The recording's and the forks' channels follow the graph (after
    /// every input, with [`Call::sync_media`]); a hold of the customer goes
    /// into the recording's timeline.
    pub(crate) fn sync_recording(&mut self) {
        if self.recording.is_none() && self.forks.is_empty() {
            return;
        }
        let (want, held) = self.tapped_channels();
        let customer = self.customer();
        let mut changed = Vec::new();
        for r in self.recording.iter_mut().chain(self.forks.iter_mut()) {
            if r.channels != want {
                r.channels = want.clone();
                changed.push(r.id);
            }
        }
        for id in changed {
            self.media(MediaCommand::RecordFeeds {
                id,
                channels: want.clone(),
            });
        }
        let was_held = self.recording.as_ref().is_some_and(|r| r.customer_held);
        if self.recording.is_some() && held != was_held {
            self.record_note(if held { "hold" } else { "unhold" }, customer, None);
        }
        if let Some(r) = self.recording.as_mut() {
            r.customer_held = held;
        }
    }

    /// What a tap of the call hears (recordings, forks, SIPREC streams):
    /// channel 1 the customer, channel 2 what the customer hears without
    /// tones (nothing while the customer is held); and whether it is held.
    pub(crate) fn tapped_channels(&self) -> ([Vec<Feed>; 2], bool) {
        let customer = self.customer();
        let held = customer.is_some_and(|c| self.party_on_hold(c));
        let others: Vec<Feed> = match customer {
            Some(c) if !held => self
                .heard
                .get(&c)
                .map(|f| {
                    f.iter()
                        .filter(|f| matches!(f.from, FeedSource::Leg(k) if k != c))
                        .copied()
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        (
            [customer.map(Feed::leg).into_iter().collect(), others],
            held,
        )
    }

    /// A timeline entry of the recording now (none when nothing records).
    pub(crate) fn record_note(
        &mut self,
        event: &str,
        party: Option<LegKey>,
        detail: Option<String>,
    ) {
        let Some(r) = self.recording.as_ref() else {
            return;
        };
        // A digit typed during a pause is noted, never said (card numbers).
        let detail = if event == "dtmf" && r.paused.is_some() {
            None
        } else {
            detail
        };
        let id = r.id;
        self.media(MediaCommand::RecordNote {
            id,
            note: RecordNote {
                event: event.into(),
                party,
                detail,
            },
        });
    }

    /// The event (webhooks) and `recording` to every operator in the call,
    /// the asker's with its ref.
    fn recording_event(
        &mut self,
        now: Instant,
        id: RecordingId,
        state: &'static str,
        via: Asker<'_>,
    ) {
        let mut ev = self.report(now, CallEventKind::Recording);
        ev.recording = Some(Box::new(RecordingReport {
            id: id.to_string(),
            state,
            via: via.via(),
            reason: None,
        }));
        self.push(super::CallOutput::Event(ev));
        let status = match state {
            "paused" => "paused",
            "stopped" => "stopped",
            _ => "in-progress",
        };
        for op in self.operators_told(None) {
            let reference = match &via {
                Asker::Sdk {
                    op: asker,
                    reference,
                } if *asker == op => reference.clone(),
                _ => None,
            };
            let msg = ServerMessage::Recording {
                call_id: self.id.to_string(),
                recording_id: id.to_string(),
                status,
                reference,
            };
            self.send_operator(&op, msg);
        }
    }
}
