//! Live media forks: the call's audio streamed to a consumer's WebSocket
//! while the call goes on (a transcriber, a coaching engine), started by the
//! REST API or the plan, at most [`MAX_FORKS`] at once. A fork is a tap of
//! the call like its recording (channel 1 the customer, channel 2 what the
//! customer hears, or either alone); the driver owns the socket, so a slow,
//! crashed or absent consumer never touches the call. What the consumer
//! sends back (insights: a transcript line, a hint) goes to the call's
//! operators as `insight`.

use media_core::Instant;

use super::control::{ApiError, ApiErrorCode};
use super::event::RecordingReport;
use super::record::{Asker, CallRecording};
use super::{Call, CallCtx, CallEventKind};
use crate::contract::{ForkSpec, MediaCommand, RecordFormat, RecordingId};
use crate::plan::ForkOptions;
use crate::signalling::ServerMessage;

/// Forks one call may have at once.
pub const MAX_FORKS: usize = 4;

impl Call {
    /// Starts streaming the call's audio to `o.url`.
    pub(crate) fn start_fork(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        o: &ForkOptions,
        via: Asker<'_>,
    ) -> Result<RecordingId, ApiError> {
        if !self.is_connected() {
            return Err(ApiError::conflict("the call is not connected"));
        }
        if self.forks.len() >= MAX_FORKS {
            return Err(ApiError::conflict(format!(
                "the call has {MAX_FORKS} forks already"
            )));
        }
        let id = RecordingId(ctx.rng.next_u64());
        let fork = ForkSpec {
            url: o.url.clone(),
            framing: o.framing,
            headers: o.headers.clone(),
        };
        let spec = self.tap_spec(o.tracks, RecordFormat::Wav, o.rate, &via, Some(fork));
        self.media(MediaCommand::RecordStart {
            id,
            spec: Box::new(spec),
        });
        self.forks.push(CallRecording {
            id,
            paused: None,
            channels: [Vec::new(), Vec::new()],
            customer_held: false,
        });
        self.sync_recording();
        self.fork_event(now, id, "started", via.via(), None);
        Ok(id)
    }

    /// Stops fork `fork` (`rec-...`).
    pub(crate) fn stop_fork(
        &mut self,
        now: Instant,
        fork: &str,
        via: Asker<'_>,
    ) -> Result<RecordingId, ApiError> {
        let i = fork
            .parse::<RecordingId>()
            .ok()
            .and_then(|id| self.forks.iter().position(|f| f.id == id))
            .ok_or_else(|| ApiError::new(ApiErrorCode::NotFound, "no such fork on this call"))?;
        let f = self.forks.remove(i);
        self.media(MediaCommand::RecordStop { id: f.id });
        self.fork_event(now, f.id, "stopped", via.via(), None);
        Ok(f.id)
    }

    /// The forks streaming now.
    pub(crate) fn fork_ids(&self) -> Vec<RecordingId> {
        self.forks.iter().map(|f| f.id).collect()
    }

    /// Fork `id`'s consumer sent `text` (a JSON object): to every operator in
    /// the call as `insight`.
    pub(crate) fn fork_message(
        &mut self,
        now: Instant,
        ctx: &CallCtx<'_>,
        id: RecordingId,
        text: &str,
    ) {
        if !self.forks.iter().any(|f| f.id == id) || text.len() > 4096 {
            return;
        }
        let Ok(serde_json::Value::Object(body)) = serde_json::from_str::<serde_json::Value>(text)
        else {
            return;
        };
        let at = ctx.unix_ms(now);
        for op in self.operators_told(None) {
            let msg = ServerMessage::Insight {
                call_id: self.id.to_string(),
                fork_id: id.to_string(),
                insight: serde_json::Value::Object(body.clone()),
                at,
            };
            self.send_operator(&op, msg);
        }
    }

    /// Fork `id` gave up on its consumer: it is gone (the call goes on).
    pub(crate) fn fork_failed(&mut self, now: Instant, id: RecordingId, reason: String) {
        if let Some(i) = self.forks.iter().position(|f| f.id == id) {
            self.forks.remove(i);
            self.media(MediaCommand::RecordStop { id });
            self.fork_event(now, id, "failed", "media", Some(reason));
        }
    }

    fn fork_event(
        &mut self,
        now: Instant,
        id: RecordingId,
        state: &'static str,
        via: &'static str,
        reason: Option<String>,
    ) {
        let mut ev = self.report(now, CallEventKind::Fork);
        ev.recording = Some(Box::new(RecordingReport {
            id: id.to_string(),
            state,
            via,
            reason,
        }));
        self.push(super::CallOutput::Event(ev));
    }
}
