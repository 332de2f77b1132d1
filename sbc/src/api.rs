//! The REST call control (`/v1/calls...`): the customer's backend lists and
//! steers live calls and places new ones. Authenticated with an API key
//! (`X-API-Key`, the same hashed keys as `/v1/tokens`), scoped to the key's
//! numbers: a call on another number is 404, never visible. JSON in and out;
//! errors are `{"error": {"code", "message"}}` with machine-readable codes.
//! Documented in `docs/openapi.json` (OpenAPI 3.1), served at
//! `/v1/openapi.json`; [`ROUTES`] is what the router serves, and a test checks
//! the two agree.
//!
//! Handlers parse and authenticate only; the control task decides
//! (`sip_bridge::bridge::Bridge::handle_api`). POSTs that create things
//! (originate, add a participant, start a monitor or a transfer, DTMF) take
//! an `Idempotency-Key`: a retry with the same key and body gets the first
//! answer again (and does nothing); the same key with another body is 422.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sip_bridge::bridge::{
    ApiError, ApiReply, ApiRequest, CallEventKind, MonitorMode, Originate, PartyUpdate,
    RecordingStatus, StatusCallback, TransferStep,
};
use sip_bridge::contract::RecordingId;
use sip_bridge::plan::RecordOptions;

use crate::inbox::ControlIn;
use crate::recorder::Recorder;
use crate::sip::Handle;
use sip_bridge::token::ApiKeys;

/// The OpenAPI document of this API (checked in as `sbc/docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

/// Every route of the API: method and path (axum's `{param}` syntax, as
/// OpenAPI writes it).
pub const ROUTES: [(&str, &str); 21] = [
    ("get", "/v1/calls"),
    ("post", "/v1/calls"),
    ("get", "/v1/calls/{callId}"),
    ("delete", "/v1/calls/{callId}"),
    ("post", "/v1/calls/{callId}/participants"),
    ("patch", "/v1/calls/{callId}/participants/{participantId}"),
    ("delete", "/v1/calls/{callId}/participants/{participantId}"),
    ("post", "/v1/calls/{callId}/dtmf"),
    ("post", "/v1/calls/{callId}/transfer"),
    ("post", "/v1/calls/{callId}/transfer/{action}"),
    ("post", "/v1/calls/{callId}/monitors"),
    ("post", "/v1/calls/{callId}/forks"),
    ("delete", "/v1/calls/{callId}/forks/{forkId}"),
    ("post", "/v1/calls/{callId}/recordings"),
    ("post", "/v1/calls/{callId}/recordings/{recordingId}"),
    ("get", "/v1/recordings/{recordingId}"),
    ("delete", "/v1/recordings/{recordingId}"),
    ("get", "/v1/recordings/{recordingId}/timeline"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/tokens"),
    ("get", "/v1/numbers"),
];

/// How long a request waits for the control task.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API's handlers need.
#[derive(Debug)]
pub struct ApiState {
    /// The control task.
    pub control: Handle<ControlIn>,
    /// Configured API keys (hashed).
    pub api_keys: ApiKeys,
    /// Answers to requests with an `Idempotency-Key`.
    pub idempotency: Idempotency,
    /// Finished recordings (`/v1/recordings/...`).
    pub recorder: Recorder,
}

/// The API's routes on `state` (the HTTP layer puts them behind the same
/// CORS and origin check as `/v1/tokens`).
pub fn routes<S: Clone + Send + Sync + 'static>(state: Arc<ApiState>) -> Router<S> {
    let mut r: Router<Arc<ApiState>> = Router::new();
    for (method, path) in ROUTES {
        let h: Option<MethodRouter<Arc<ApiState>>> = match (method, path) {
            ("get", "/v1/calls") => Some(get(list_calls)),
            ("post", "/v1/calls") => Some(post(originate)),
            ("get", "/v1/calls/{callId}") => Some(get(get_call)),
            ("delete", "/v1/calls/{callId}") => Some(delete(hangup)),
            ("post", "/v1/calls/{callId}/participants") => Some(post(add_participant)),
            ("patch", "/v1/calls/{callId}/participants/{participantId}") => {
                Some(patch(update_participant))
            }
            ("delete", "/v1/calls/{callId}/participants/{participantId}") => {
                Some(delete(remove_participant))
            }
            ("post", "/v1/calls/{callId}/dtmf") => Some(post(dtmf)),
            ("post", "/v1/calls/{callId}/transfer") => Some(post(transfer)),
            ("post", "/v1/calls/{callId}/transfer/{action}") => Some(post(transfer_step)),
            ("post", "/v1/calls/{callId}/monitors") => Some(post(monitor)),
            ("post", "/v1/calls/{callId}/forks") => Some(post(fork)),
            ("delete", "/v1/calls/{callId}/forks/{forkId}") => Some(delete(stop_fork)),
            ("post", "/v1/calls/{callId}/recordings") => Some(post(record)),
            ("post", "/v1/calls/{callId}/recordings/{recordingId}") => Some(post(update_recording)),
            ("get", "/v1/recordings/{recordingId}") => Some(get(recording_media)),
            ("delete", "/v1/recordings/{recordingId}") => Some(delete(delete_recording)),
            ("get", "/v1/recordings/{recordingId}/timeline") => Some(get(recording_timeline)),
            ("get", "/v1/openapi.json") => Some(get(openapi)),
            // Served by `http` (tokens predate this module).
            _ => None,
        };
        if let Some(h) = h {
            r = r.route(path, h);
        }
    }
    r.with_state(state)
}

/// `{"error": {"code", "message"}}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// A request refused before it reached the control task.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "BAD_REQUEST",
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

fn api_error(e: &ApiError) -> Response {
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.code.as_str(), &e.message)
}

/// The key's numbers (empty: all), or the 401.
fn authenticate(app: &ApiState, headers: &HeaderMap) -> Result<Vec<String>, Refusal> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match app.api_keys.check(key) {
        Some(entry) => Ok(entry.numbers.clone()),
        None => {
            metrics::counter!("sbc_http_unauthorized_total").increment(1);
            Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                code: "UNAUTHORIZED",
                message: "missing or invalid X-API-Key".into(),
            })
        }
    }
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    let bytes = if bytes.is_empty() { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| Refusal::bad(format!("bad body: {e}")))
}

/// Asks the control task; maps its answer to a response.
async fn ask(app: &ApiState, numbers: Vec<String>, req: ApiRequest, created: bool) -> Response {
    let kind = request_name(&req);
    let asked = app.control.ask(|reply| ControlIn::Api {
        numbers,
        req: Box::new(req),
        reply,
    });
    let answer = match tokio::time::timeout(CONTROL_TIMEOUT, asked).await {
        Ok(Ok(a)) => a,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the control task did not answer",
            );
        }
    };
    let status = match &answer {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    metrics::counter!("sbc_api_requests_total", "request" => kind, "result" => status).increment(1);
    match answer {
        Err(e) => api_error(&e),
        Ok(ApiReply::Calls(calls)) => {
            axum::Json(serde_json::json!({ "calls": calls })).into_response()
        }
        Ok(ApiReply::Call(call)) => {
            let s = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (s, axum::Json(serde_json::json!({ "call": call }))).into_response()
        }
        Ok(ApiReply::Parties { ids, call }) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "participantIds": ids, "call": call })),
        )
            .into_response(),
        Ok(ApiReply::Fork { id, status, call }) => {
            let s = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = serde_json::json!({"fork": {"id": id, "status": status}, "call": call});
            (s, axum::Json(body)).into_response()
        }
        Ok(ApiReply::Recording { id, status, call }) => {
            let s = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = serde_json::json!({
                "recording": {"id": id, "status": status, "uri": format!("/v1/recordings/{id}")},
                "call": call,
            });
            (s, axum::Json(body)).into_response()
        }
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
    }
}

fn request_name(req: &ApiRequest) -> &'static str {
    match req {
        ApiRequest::ListCalls => "list_calls",
        ApiRequest::GetCall { .. } => "get_call",
        ApiRequest::Originate(_) => "originate",
        ApiRequest::Hangup { .. } => "hangup",
        ApiRequest::AddParticipant { .. } => "add_participant",
        ApiRequest::UpdateParticipant { .. } => "update_participant",
        ApiRequest::RemoveParticipant { .. } => "remove_participant",
        ApiRequest::Dtmf { .. } => "dtmf",
        ApiRequest::Transfer { .. } => "transfer",
        ApiRequest::TransferStep { .. } => "transfer_step",
        ApiRequest::Monitor { .. } => "monitor",
        ApiRequest::Record { .. } => "record",
        ApiRequest::Fork { .. } => "fork",
        ApiRequest::StopFork { .. } => "stop_fork",
        ApiRequest::UpdateRecording { .. } => "update_recording",
        _ => "other",
    }
}

/// A POST that creates something: through the idempotency store when it
/// carries an `Idempotency-Key`.
async fn create(
    app: &ApiState,
    headers: &HeaderMap,
    numbers: Vec<String>,
    route: &str,
    raw: &[u8],
    req: ApiRequest,
    created: bool,
) -> Response {
    let Some(key) = headers.get("idempotency-key") else {
        return ask(app, numbers, req, created).await;
    };
    let Some(key) = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "Idempotency-Key must be 1-255 visible characters",
        );
    };
    // Keys are per API key's scope and route: two backends never collide.
    let scope = format!("{}\n{route}\n{key}", numbers.join(","));
    let digest: [u8; 32] = Sha256::digest(raw).into();
    match app.idempotency.begin(&scope, digest) {
        Begin::New => {}
        Begin::Replay(status, body) => {
            metrics::counter!("sbc_api_idempotent_replays_total").increment(1);
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return r;
        }
        Begin::Mismatch => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_MISMATCH",
                "this Idempotency-Key was used with another request body",
            );
        }
        Begin::InFlight => {
            return error(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_IN_FLIGHT",
                "a request with this Idempotency-Key is still being handled",
            );
        }
    }
    let r = ask(app, numbers, req, created).await;
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    // A 5xx was not a decision: the retry may try again.
    app.idempotency.finish(
        &scope,
        digest,
        (!status.is_server_error()).then(|| (status, bytes.clone())),
    );
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

// ----- handlers -----

async fn openapi() -> Response {
    let mut r = OPENAPI.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn list_calls(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let n = authenticate(&app, &headers)?;
    Ok(ask(&app, n, ApiRequest::ListCalls, false).await)
}

async fn get_call(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
) -> Result<Response, Refusal> {
    let n = authenticate(&app, &headers)?;
    Ok(ask(&app, n, ApiRequest::GetCall { call }, false).await)
}

async fn hangup(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
) -> Result<Response, Refusal> {
    let n = authenticate(&app, &headers)?;
    Ok(ask(&app, n, ApiRequest::Hangup { call }, false).await)
}

/// The body of `POST /v1/calls`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OriginateBody {
    from: String,
    to: String,
    connect: String,
    #[serde(default)]
    timeout: Option<u32>,
    #[serde(default)]
    status_callback: Option<String>,
    #[serde(default)]
    status_callback_event: Option<Vec<String>>,
}

fn callback_events(names: &[String]) -> Result<Vec<CallEventKind>, Refusal> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "initiated" => Ok(CallEventKind::Initiated),
            "ringing" => Ok(CallEventKind::Ringing),
            "answered" => Ok(CallEventKind::Answered),
            "completed" => Ok(CallEventKind::Completed),
            _ => Err(Refusal::bad(
                "statusCallbackEvent takes initiated, ringing, answered, completed",
            )),
        })
        .collect()
}

async fn originate(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: OriginateBody = body(&raw)?;
    let events = callback_events(b.status_callback_event.as_deref().unwrap_or_default())?;
    let status_callback = match b.status_callback {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(StatusCallback { url, events })
        }
        Some(_) => {
            return Err(Refusal::bad("statusCallback must be an http(s) URL"));
        }
        None => None,
    };
    let req = ApiRequest::Originate(Originate {
        from: b.from,
        to: b.to,
        connect: b.connect,
        timeout: b.timeout,
        status_callback,
    });
    Ok(create(&app, &headers, numbers, "originate", &raw, req, true).await)
}

/// The body of `POST .../participants` and `.../monitors`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddBody {
    target: String,
    #[serde(default)]
    timeout: Option<u32>,
    /// Monitors: `listen` (default), `whisper`, `barge`.
    #[serde(default)]
    mode: Option<String>,
    /// Monitors: whom a whisper reaches.
    #[serde(default)]
    participant_id: Option<String>,
}

async fn add_participant(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: AddBody = body(&raw)?;
    if b.mode.is_some() || b.participant_id.is_some() {
        return Err(Refusal::bad("mode and participantId are for /monitors"));
    }
    let route = format!("participants:{call}");
    let req = ApiRequest::AddParticipant {
        call,
        target: b.target,
        timeout: b.timeout,
    };
    Ok(create(&app, &headers, numbers, &route, &raw, req, false).await)
}

async fn monitor(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: AddBody = body(&raw)?;
    let Some(mode) = MonitorMode::parse(b.mode.as_deref().unwrap_or("listen")) else {
        return Err(Refusal::bad("`mode` must be listen, whisper or barge"));
    };
    let route = format!("monitors:{call}");
    let req = ApiRequest::Monitor {
        call,
        target: b.target,
        mode,
        coached: b.participant_id,
        timeout: b.timeout,
    };
    Ok(create(&app, &headers, numbers, &route, &raw, req, false).await)
}

/// The body of `PATCH .../participants/{participantId}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    held: Option<bool>,
    #[serde(default)]
    muted: Option<bool>,
    #[serde(default)]
    mode: Option<String>,
}

async fn update_participant(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((call, participant)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: UpdateBody = body(&raw)?;
    let mode = match b.mode.as_deref().map(MonitorMode::parse) {
        Some(None) => {
            return Err(Refusal::bad("`mode` must be listen, whisper or barge"));
        }
        Some(m) => m,
        None => None,
    };
    if b.held.is_none() && b.muted.is_none() && mode.is_none() {
        return Err(Refusal::bad("nothing to change: give held, muted or mode"));
    }
    let req = ApiRequest::UpdateParticipant {
        call,
        participant,
        update: PartyUpdate::new(b.held, b.muted, mode),
    };
    Ok(ask(&app, numbers, req, false).await)
}

async fn fork(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    // The same fields as a number's `fork` in the config.
    let b: crate::config::ForkEntry = body(&raw)?;
    let options = b.options().map_err(Refusal::bad)?;
    let route = format!("forks:{call}");
    let req = ApiRequest::Fork { call, options };
    Ok(create(&app, &headers, numbers, &route, &raw, req, true).await)
}

async fn stop_fork(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((call, fork)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    Ok(ask(&app, numbers, ApiRequest::StopFork { call, fork }, false).await)
}

/// The body of `POST .../recordings`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecordBody {
    /// `dual` (default) or `mono`.
    #[serde(default)]
    channels: Option<String>,
    /// `wav` (default) or `opus`.
    #[serde(default)]
    format: Option<String>,
    /// 8000 (default) or 16000.
    #[serde(default)]
    rate: Option<u32>,
}

async fn record(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: RecordBody = body(&raw)?;
    let options = RecordOptions::parse(b.channels.as_deref(), b.format.as_deref(), b.rate)
        .map_err(Refusal::bad)?;
    let route = format!("recordings:{call}");
    let req = ApiRequest::Record { call, options };
    Ok(create(&app, &headers, numbers, &route, &raw, req, true).await)
}

/// The body of `POST .../recordings/{recordingId}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecordingUpdateBody {
    /// `paused`, `in-progress`, `stopped`.
    status: String,
    /// With `paused`: `silence` (default) or `skip`.
    #[serde(default)]
    pause_behavior: Option<String>,
}

async fn update_recording(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((call, recording)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: RecordingUpdateBody = body(&raw)?;
    let status =
        RecordingStatus::parse(&b.status, b.pause_behavior.as_deref()).ok_or_else(|| {
            Refusal::bad(
                "status must be paused, in-progress or stopped; pauseBehavior silence or skip",
            )
        })?;
    let req = ApiRequest::UpdateRecording {
        call,
        recording,
        status,
    };
    Ok(ask(&app, numbers, req, false).await)
}

fn no_recording() -> Refusal {
    Refusal {
        status: StatusCode::NOT_FOUND,
        code: "NOT_FOUND",
        message: "no such recording".into(),
    }
}

/// Recording `id` (finished, and on one of the key's numbers): its id and
/// timeline.
fn finished_recording(
    app: &ApiState,
    numbers: &[String],
    id: &str,
) -> Result<(RecordingId, serde_json::Value), Refusal> {
    let id: RecordingId = id.parse().map_err(|_| no_recording())?;
    let t = app.recorder.timeline(id).ok_or_else(no_recording)?;
    let number = t["number"].as_str();
    if !numbers.is_empty() && !number.is_some_and(|n| numbers.iter().any(|x| x == n)) {
        return Err(no_recording());
    }
    Ok((id, t))
}

async fn recording_timeline(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let (_, t) = finished_recording(&app, &numbers, &id)?;
    Ok(axum::Json(t).into_response())
}

async fn delete_recording(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let (id, _) = finished_recording(&app, &numbers, &id)?;
    app.recorder.delete(id);
    metrics::counter!("sbc_recordings_deleted_total").increment(1);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `bytes=A-B`, `bytes=A-`, `bytes=-N` of a `len`-byte file: the first and
/// last byte (RFC 9110 14.1.2); `Err` when it cannot be satisfied.
fn byte_range(v: &str, len: u64) -> Result<(u64, u64), ()> {
    let spec = v.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') || len == 0 {
        return Err(()); // one range only
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (first, last) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len - 1)
        }
        (false, _) => {
            let first: u64 = a.parse().map_err(|_| ())?;
            let last = if b.is_empty() {
                len - 1
            } else {
                b.parse::<u64>().map_err(|_| ())?.min(len - 1)
            };
            (first, last)
        }
        (true, true) => return Err(()),
    };
    if first > last || first >= len {
        return Err(());
    }
    Ok((first, last))
}

/// `GET /v1/recordings/{id}`: the file, streamed from disk (a range of it
/// when asked), never read whole into memory.
async fn recording_media(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let (id, _) = finished_recording(&app, &numbers, &id)?;
    let (path, media_type) = app.recorder.media(id).ok_or_else(no_recording)?;
    let len = std::fs::metadata(&path).map_err(|_| no_recording())?.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, first, last) = match range.map(|r| byte_range(r, len)) {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Some(Err(())) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let count = if len == 0 { 0 } else { last - first + 1 };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => return drop(tx.blocking_send(Err(e))),
        };
        if let Err(e) = f.seek(SeekFrom::Start(first)) {
            return drop(tx.blocking_send(Err(e)));
        }
        let mut left = count;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = buf.len().min(left as usize);
            match f.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    left -= n as u64;
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        break; // the client went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut r = Response::new(axum::body::Body::from_stream(stream));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(r)
}

async fn remove_participant(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((call, participant)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let n = authenticate(&app, &headers)?;
    let req = ApiRequest::RemoveParticipant { call, participant };
    Ok(ask(&app, n, req, false).await)
}

/// The body of `POST .../dtmf`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DtmfBody {
    digits: String,
    #[serde(default)]
    participant_id: Option<String>,
}

async fn dtmf(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: DtmfBody = body(&raw)?;
    let route = format!("dtmf:{call}");
    let req = ApiRequest::Dtmf {
        call,
        digits: b.digits,
        participant: b.participant_id,
    };
    Ok(create(&app, &headers, numbers, &route, &raw, req, false).await)
}

/// The body of `POST .../transfer`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TransferBody {
    target: String,
    #[serde(default)]
    attended: bool,
    #[serde(default)]
    timeout: Option<u32>,
    /// The transferor (default: the call's one agent).
    #[serde(default)]
    participant_id: Option<String>,
    /// `complete` (default) or `cancel` when the transferor hangs up.
    #[serde(default)]
    on_hangup: Option<String>,
    /// Blind: rung if the target fails, before the recall.
    #[serde(default)]
    fallback: Option<String>,
}

async fn transfer(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(call): Path<String>,
    raw: Bytes,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let b: TransferBody = body(&raw)?;
    let cancel_on_hangup = match b.on_hangup.as_deref() {
        None | Some("complete") => false,
        Some("cancel") => true,
        Some(_) => return Err(Refusal::bad("`onHangup` must be complete or cancel")),
    };
    let route = format!("transfer:{call}");
    let req = ApiRequest::Transfer {
        call,
        target: b.target,
        attended: b.attended,
        timeout: b.timeout,
        by: b.participant_id,
        cancel_on_hangup,
        fallback: b.fallback,
    };
    Ok(create(&app, &headers, numbers, &route, &raw, req, false).await)
}

async fn transfer_step(
    State(app): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((call, action)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let numbers = authenticate(&app, &headers)?;
    let Some(step) = TransferStep::parse(&action) else {
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: "a transfer's action is complete, cancel or merge".into(),
        });
    };
    let req = ApiRequest::TransferStep { call, step };
    Ok(ask(&app, numbers, req, false).await)
}

// ----- idempotency -----

/// What a request with an `Idempotency-Key` finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First use: go on, then [`Idempotency::finish`].
    New,
    /// Done before with the same body: its answer.
    Replay(StatusCode, Bytes),
    /// Used before with another body.
    Mismatch,
    /// The first request with it is still being handled.
    InFlight,
}

/// Answers to requests with an `Idempotency-Key`, kept for a day at most and
/// [`Idempotency::CAPACITY`] keys (the oldest go first).
#[derive(Debug, Default)]
pub struct Idempotency {
    inner: Mutex<IdemInner>,
}

#[derive(Debug, Default)]
struct IdemInner {
    entries: HashMap<String, Entry>,
    order: VecDeque<(u64, String)>,
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    answer: Option<(StatusCode, Bytes)>,
}

impl Idempotency {
    /// Keys kept at most.
    pub const CAPACITY: usize = 10_000;
    /// How long an answer is kept (seconds).
    pub const TTL_SECS: u64 = 24 * 3600;

    /// A request with `key` and body `digest` starts.
    pub fn begin(&self, key: &str, digest: [u8; 32]) -> Begin {
        self.begin_at(crate::clock::Clock::unix_secs(), key, digest)
    }

    /// [`Idempotency::begin`] at Unix time `now`.
    pub fn begin_at(&self, now: u64, key: &str, digest: [u8; 32]) -> Begin {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let IdemInner { entries, order } = &mut *g;
        while let Some((t, k)) = order.front() {
            if now.saturating_sub(*t) < Self::TTL_SECS && entries.len() < Self::CAPACITY {
                break;
            }
            entries.remove(k);
            order.pop_front();
        }
        match entries.get(key) {
            Some(e) if e.digest != digest => Begin::Mismatch,
            Some(Entry {
                answer: Some((s, b)),
                ..
            }) => Begin::Replay(*s, b.clone()),
            Some(_) => Begin::InFlight,
            None => {
                entries.insert(
                    key.to_string(),
                    Entry {
                        digest,
                        answer: None,
                    },
                );
                order.push_back((now, key.to_string()));
                Begin::New
            }
        }
    }

    /// The request with `key` was answered (`None`: not for keeps; a retry
    /// runs again).
    pub fn finish(&self, key: &str, digest: [u8; 32], answer: Option<(StatusCode, Bytes)>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Some(a) => {
                if let Some(e) = g.entries.get_mut(key).filter(|e| e.digest == digest) {
                    e.answer = Some(a);
                }
            }
            None => {
                g.entries.remove(key);
                g.order.retain(|(_, k)| k != key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-99", 1000), Ok((0, 99)));
        assert_eq!(byte_range("bytes=500-", 1000), Ok((500, 999)));
        assert_eq!(byte_range("bytes=-100", 1000), Ok((900, 999)));
        assert_eq!(byte_range("bytes=-5000", 1000), Ok((0, 999)));
        assert_eq!(byte_range("bytes=990-5000", 1000), Ok((990, 999)));
        for bad in [
            "bytes=1000-",
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=-",
            "bytes=x-1",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(byte_range(bad, 1000), Err(()), "{bad}");
        }
        assert_eq!(byte_range("bytes=0-", 0), Err(()));
    }

    #[test]
    fn a_key_replays_its_answer_refuses_another_body_and_expires() {
        let s = Idempotency::default();
        assert_eq!(s.begin_at(100, "k", d(b"a")), Begin::New);
        assert_eq!(s.begin_at(101, "k", d(b"a")), Begin::InFlight);
        s.finish(
            "k",
            d(b"a"),
            Some((StatusCode::CREATED, Bytes::from_static(b"{}"))),
        );
        assert_eq!(
            s.begin_at(102, "k", d(b"a")),
            Begin::Replay(StatusCode::CREATED, Bytes::from_static(b"{}"))
        );
        assert_eq!(s.begin_at(103, "k", d(b"b")), Begin::Mismatch);
        // A day later it is forgotten.
        assert_eq!(
            s.begin_at(100 + Idempotency::TTL_SECS, "k", d(b"b")),
            Begin::New
        );
    }

    #[test]
    fn a_server_error_is_not_kept_and_the_store_is_bounded() {
        let s = Idempotency::default();
        assert_eq!(s.begin_at(1, "k", d(b"a")), Begin::New);
        s.finish("k", d(b"a"), None);
        assert_eq!(s.begin_at(2, "k", d(b"a")), Begin::New);
        for i in 0..Idempotency::CAPACITY + 10 {
            s.begin_at(3, &format!("x{i}"), d(b"a"));
        }
        let n = s.inner.lock().unwrap().entries.len();
        assert!(n <= Idempotency::CAPACITY, "{n}");
    }

    #[test]
    fn every_route_is_in_the_openapi_document_and_every_documented_one_is_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let paths = doc["paths"].as_object().expect("paths");
        for (method, path) in ROUTES {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is served but not in docs/openapi.json"
            );
        }
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    assert!(
                        ROUTES.contains(&(method.as_str(), path.as_str())),
                        "{method} {path} is documented but not served"
                    );
                }
            }
        }
    }
}
