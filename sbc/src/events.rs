//! Call events out of the SBC: the [`EventSink`] trait, and the signed webhook
//! (POST, HMAC-SHA256 body signature, retries with backoff, a bounded queue) so a
//! slow or dead receiver never holds up a call.

use std::sync::Arc;
use std::time::Duration;

use sip_bridge::bridge::{CallEvent, CallEventKind, CallId, PartyRecord};
use tokio::sync::mpsc;

use crate::clock::{self, Clock};
use crate::recorder::RecordingDone;

/// Receives every call event. Must not block: hand work to a task.
pub trait EventSink: Send + Sync + 'static {
    /// One event (initiated, ringing, answered, completed).
    fn call_event(&self, event: &CallEvent);

    /// A recording's file is finished (`recording.completed`, its timeline
    /// and SHA-256) or could not be written (`recording.failed`).
    fn recording_event(&self, _done: &RecordingDone) {}
}

/// The JSON body of a recording's event: its timeline with `event` and
/// `timestamp` (README "Recording").
pub fn recording_json(done: &RecordingDone) -> serde_json::Value {
    let mut v = done.body.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("event".into(), done.event.into());
        o.insert(
            "timestamp".into(),
            clock::rfc3339_ms(Clock::unix_ms()).into(),
        );
    }
    v
}

/// A party in a call event's JSON: who, as what, when in and out, why it left.
fn party_json(ev: &CallEvent, p: &PartyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": p.id.to_string(),
        "role": p.role.as_str(),
        "who": p.who,
        "joinedAt": p.joined.map(|t| clock::rfc3339_ms(ev.unix_ms_of(t))),
        "leftAt": p.left.map(|t| clock::rfc3339_ms(ev.unix_ms_of(t))),
        "talkTimeMs": p.talk_time(ev.at).as_millis() as u64,
        "reason": p.reason,
        "parentId": p.parent.map(|k| k.to_string()),
    })
}

/// The JSON body of a call event (webhooks; documented in the README).
/// `timestamp` is when the thing happened, not when the webhook was sent.
pub fn event_json(ev: &CallEvent) -> serde_json::Value {
    serde_json::json!({
        "event": ev.kind.as_str(),
        "callId": ev.call_id.to_string(),
        "direction": ev.direction.as_str(),
        "from": ev.from,
        "to": ev.to,
        "number": ev.number,
        "status": ev.status.map(|s| s.as_str()),
        "sipCode": ev.code,
        "answeredBy": ev.answered_by,
        "rung": ev.rung,
        "durationMs": ev.duration.map(|d| d.as_millis() as u64),
        "talkTimeMs": ev.talk_time.map(|d| d.as_millis() as u64),
        "participant": ev.party.as_ref().map(|p| party_json(ev, p)),
        "participants": ev.parties.iter().map(|p| party_json(ev, p)).collect::<Vec<_>>(),
        "quality": ev.quality.as_ref().map(|q| serde_json::json!({
            "operator": q.operator,
            "summary": serde_json::from_str::<serde_json::Value>(&q.summary).unwrap_or_default(),
        })),
        "transfer": ev.transfer.as_ref().map(|t| serde_json::json!({
            "state": t.state,
            "kind": t.kind,
            "via": t.via,
            "by": t.by,
            "target": t.target,
            "reason": t.reason,
        })),
        "recording": ev.recording.as_ref().filter(|_| ev.kind == CallEventKind::Recording).map(|r| serde_json::json!({
            "id": r.id,
            "state": r.state,
            "via": r.via,
        })),
        "fork": ev.recording.as_ref().filter(|_| ev.kind == CallEventKind::Fork).map(|r| serde_json::json!({
            "id": r.id,
            "state": r.state,
            "via": r.via,
            "reason": r.reason,
        })),
        "siprec": ev.recording.as_ref().filter(|_| ev.kind == CallEventKind::Siprec).map(|r| serde_json::json!({
            "id": r.id,
            "state": r.state,
            "reason": r.reason,
        })),
        "timestamp": clock::rfc3339_ms(ev.unix_ms),
    })
}

/// Posts events to a URL; see the module docs.
#[derive(Debug)]
pub struct WebhookSink {
    tx: mpsc::Sender<Outgoing>,
}

/// What the webhook posts.
#[derive(Debug)]
enum Outgoing {
    Call(Box<CallEvent>),
    Recording(RecordingDone),
}

/// Events queued for the webhook at most; beyond, new ones are dropped (counted).
const QUEUE: usize = 10_000;
/// Attempts per event.
const ATTEMPTS: u32 = 5;

impl WebhookSink {
    /// Starts the delivery task.
    pub fn start(url: String, secret: Vec<u8>) -> Arc<WebhookSink> {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUE);
        tokio::spawn(async move {
            let client = client();
            while let Some(out) = rx.recv().await {
                let (body, what) = match &out {
                    Outgoing::Call(ev) => (event_json(ev), ev.kind.as_str()),
                    Outgoing::Recording(d) => (recording_json(d), d.event),
                };
                if !post(&client, &url, Some(&secret), &body.to_string()).await {
                    metrics::counter!("sbc_webhook_failed_total").increment(1);
                    tracing::warn!(event = what, "webhook gave up");
                } else {
                    metrics::counter!("sbc_webhook_delivered_total").increment(1);
                }
            }
        });
        Arc::new(WebhookSink { tx })
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

/// POSTs `body` to `url` (signed with `secret` when there is one), retrying
/// with backoff: whether it was taken.
async fn post(client: &reqwest::Client, url: &str, secret: Option<&[u8]>, body: &str) -> bool {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let ts = Clock::unix_secs();
        let req = crate::sign::signed_post(client, url, secret, ts, body.to_string());
        match req.send().await {
            Ok(r) if r.status().is_success() => return true,
            _ if attempt == ATTEMPTS => {}
            _ => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    false
}

/// Status callbacks of calls the API placed (`POST /v1/calls`,
/// `statusCallback`): each event the call asked for, once, to its URL, signed
/// with the webhook's secret when one is configured. Same queue bound and
/// retries as the webhook.
#[derive(Debug)]
pub struct CallbackSink {
    tx: mpsc::Sender<CallEvent>,
}

impl CallbackSink {
    /// Starts the delivery task.
    pub fn start(secret: Option<Vec<u8>>) -> Arc<CallbackSink> {
        let (tx, mut rx) = mpsc::channel::<CallEvent>(QUEUE);
        tokio::spawn(async move {
            let client = client();
            // What went out per call, so each kind goes once (a call placed
            // by the API answers twice: its first party, then the target).
            let mut sent: std::collections::HashMap<CallId, Vec<CallEventKind>> =
                Default::default();
            while let Some(ev) = rx.recv().await {
                let Some(cb) = ev.callback.clone() else {
                    continue;
                };
                let kinds = sent.entry(ev.call_id).or_default();
                if ev.kind == CallEventKind::Completed {
                    sent.remove(&ev.call_id);
                } else if kinds.contains(&ev.kind) {
                    continue;
                } else {
                    kinds.push(ev.kind);
                }
                let body = event_json(&ev).to_string();
                let ok = post(&client, &cb.url, secret.as_deref(), &body).await;
                let result = if ok { "delivered" } else { "failed" };
                metrics::counter!("sbc_status_callbacks_total", "result" => result).increment(1);
            }
        });
        Arc::new(CallbackSink { tx })
    }
}

impl EventSink for CallbackSink {
    fn call_event(&self, event: &CallEvent) {
        let wanted = event
            .callback
            .as_ref()
            .is_some_and(|cb| cb.wants(event.kind));
        if wanted && self.tx.try_send(event.clone()).is_err() {
            metrics::counter!("sbc_status_callbacks_total", "result" => "dropped").increment(1);
        }
    }
}

impl EventSink for WebhookSink {
    fn call_event(&self, event: &CallEvent) {
        if self
            .tx
            .try_send(Outgoing::Call(Box::new(event.clone())))
            .is_err()
        {
            metrics::counter!("sbc_webhook_dropped_total").increment(1);
        }
    }

    fn recording_event(&self, done: &RecordingDone) {
        if self.tx.try_send(Outgoing::Recording(done.clone())).is_err() {
            metrics::counter!("sbc_webhook_dropped_total").increment(1);
        }
    }
}
