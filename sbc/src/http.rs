//! HTTP and WebSocket (axum): session tokens, the operator signalling socket, the
//! JavaScript SDK and demo page, metrics and health. Handlers are thin: tokens are
//! signed here (no shared state), everything about operators and calls goes to the
//! control task as a [`ControlIn`] message; `/readyz` asks it whether it is
//! draining.
//!
//! # Origins
//!
//! `[http] allowed_origins` ([`HttpState::allowed_origins`]) is the one list of
//! page origins that may use the SBC from a browser. On `/sdk/*` and `/v1/*`
//! (the SDK's modules, tokens, numbers) `tower-http`'s CORS layer answers those
//! origins (`Access-Control-Allow-Origin`, preflights for `GET`/`POST` with
//! `Authorization`, `Content-Type`, `X-API-Key`), and a request whose `Origin`
//! is not in the list is refused with `403 FORBIDDEN_ORIGIN` (JSON) before it
//! reaches a handler, preflights included. The operator WebSocket refuses such an
//! origin with the same 403 before the upgrade. Requests without `Origin`
//! (servers, curl) pass: only browsers send it. An empty list allows every origin.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use sip_bridge::signalling::{NumberInfo, SessionOutput};
use sip_bridge::token::{ApiKeys, TokenError, TokenGrant, TokenIssuer};
use tokio::sync::mpsc;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::clock::{Clock, rfc3339};
use crate::inbox::ControlIn;
use crate::sip::Handle;

/// What the HTTP layer needs.
pub struct HttpState {
    /// The control task.
    pub control: Handle<ControlIn>,
    /// Signs and checks session tokens.
    pub tokens: TokenIssuer,
    /// Configured API keys (hashed).
    pub api_keys: ApiKeys,
    /// Every configured number.
    pub numbers: Vec<NumberInfo>,
    /// Whether the demo token endpoint exists.
    pub demo: bool,
    /// Page origins allowed to use `/sdk/*`, `/v1/*` and the operator WebSocket
    /// from a browser (CORS, and the `Origin` check); `"*"` or empty: any.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message.
    pub max_message: usize,
    /// Renders `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Signalling session ids.
    pub next_session: AtomicU64,
    /// The REST call control's state.
    pub api: Arc<crate::api::ApiState>,
    /// The cluster as last read (with `[cluster]`): `/readyz` says degraded
    /// while Redis is unreachable.
    pub cluster: Option<crate::cluster::SharedView>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("demo", &self.demo)
            .finish_non_exhaustive()
    }
}

/// The SDK's modules, served at `/sdk/<name>` (the npm package's files, embedded).
pub const SDK_FILES: [(&str, &str, &str); 6] = [
    ("operator.js", JS, include_str!("../web/operator.js")),
    ("compat.js", JS, include_str!("../web/compat.js")),
    ("react.js", JS, include_str!("../web/react.js")),
    ("operator.d.ts", TS, include_str!("../web/operator.d.ts")),
    ("compat.d.ts", TS, include_str!("../web/compat.d.ts")),
    ("react.d.ts", TS, include_str!("../web/react.d.ts")),
];
const JS: &str = "text/javascript; charset=utf-8";
const TS: &str = "application/typescript; charset=utf-8";

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    // What a page on another origin uses: the SDK's modules and the REST API,
    // behind the origin check and CORS (see the module docs).
    let mut cross_origin = Router::new()
        .route("/v1/tokens", post(tokens))
        .route("/v1/numbers", get(numbers))
        .merge(crate::api::routes(state.api.clone()));
    for (name, content_type, body) in SDK_FILES {
        cross_origin = cross_origin.route(
            &format!("/sdk/{name}"),
            get(move || async move { asset(content_type, body) }),
        );
    }
    let cross_origin = cross_origin.layer(cors(&state.allowed_origins)).layer(
        axum::middleware::from_fn_with_state(state.clone(), refuse_origin),
    );
    let mut r = Router::new()
        .merge(cross_origin)
        .route("/v1/operator", get(operator_ws))
        .route(
            "/",
            get(|| async {
                asset(
                    "text/html; charset=utf-8",
                    include_str!("../web/index.html"),
                )
            }),
        )
        .route(
            "/demo.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("../web/demo.js"),
                )
            }),
        )
        .route(
            "/demo.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("../web/demo.css")) }),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if state.demo {
        // Demo only: a token without a customer backend. Absent from any other
        // configuration (the route does not exist: 404).
        r = r.route("/demo/token", post(demo_token));
    }
    r.with_state(state)
}

/// CORS for `allowed_origins`: the methods and headers the SDK and the REST API
/// use; no credentials (tokens travel in `Authorization`, never in cookies).
fn cors(allowed: &[String]) -> CorsLayer {
    let origins = if allowed.is_empty() || allowed.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // The config canonicalizes origins, so each is a valid header value.
        AllowOrigin::list(allowed.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(Duration::from_secs(600))
}

/// A browser request from an origin outside `allowed_origins`: a clear 403
/// (browsers show a CORS error; the body says why to anyone who looks).
async fn refuse_origin(State(app): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    match origin_refusal(&app, req.headers()) {
        Some(refusal) => {
            metrics::counter!("sbc_http_rejected_total", "reason" => "origin").increment(1);
            tracing::debug!(path = %req.uri().path(), "http: origin not allowed");
            refusal
        }
        None => next.run(req).await,
    }
}

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            use axum::serve::ListenerExt;
            // `tap_io` only to get axum's ConnectInfo for a custom listener.
            axum::serve(TlsListener::new(listener, tls).tap_io(|_| {}), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Handshakes at once before a connection is dropped; more wait in the backlog.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTPS: TCP connections are accepted and their TLS handshakes run in their own
/// tasks (bounded, with a deadline), so a slow or silent client never holds up
/// the others; axum gets finished TLS streams.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl TlsListener {
    fn new(
        listener: tokio::net::TcpListener,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, go on.
                        tracing::warn!("https accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "https: too many handshakes at once, dropped");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "https handshake: {e}"),
                        Err(_) => tracing::debug!(%peer, "https handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            ready,
            local,
            accept_task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task is gone (only at shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

use crate::api::error;

/// The body of `POST /v1/tokens` (protocol.md section 1).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenRequest {
    operator_ref: String,
    #[serde(default)]
    display_name: Option<String>,
    /// Number ids or E.164 numbers; `phoneNumberIds` is the operator SDK 0.3.0
    /// playbook's name for it.
    #[serde(default, alias = "phoneNumberIds")]
    numbers: Option<Vec<String>>,
    #[serde(default)]
    ttl: Option<u64>,
    /// Rights beyond calls: `sip_bridge::token::CAPABILITIES` (`monitor`).
    #[serde(default)]
    capabilities: Option<Vec<String>>,
}

fn issue(app: &HttpState, req: TokenRequest, allowed: &[String]) -> Response {
    let mut ids = Vec::new();
    let requested = req.numbers.unwrap_or_else(|| {
        if allowed.is_empty() {
            app.numbers.iter().map(|n| n.id.clone()).collect()
        } else {
            allowed.to_vec()
        }
    });
    for n in &requested {
        let digits = n.trim_start_matches('+');
        let Some(num) = app.numbers.iter().find(|x| {
            x.id == *n || (!digits.is_empty() && x.e164.trim_start_matches('+') == digits)
        }) else {
            return error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &format!("unknown number `{n}`"),
            );
        };
        if !allowed.is_empty() && !allowed.contains(&num.id) {
            return error(
                StatusCode::FORBIDDEN,
                "FORBIDDEN_NUMBER",
                &format!("this API key may not use `{n}`"),
            );
        }
        if !ids.contains(&num.id) {
            ids.push(num.id.clone());
        }
    }
    let grant = TokenGrant {
        display_name: req.display_name.unwrap_or_else(|| req.operator_ref.clone()),
        operator_ref: req.operator_ref,
        numbers: ids,
        ttl_secs: req.ttl,
        capabilities: req.capabilities.unwrap_or_default(),
    };
    match app.tokens.issue(Clock::unix_secs(), &grant) {
        Ok((token, exp)) => {
            axum::Json(serde_json::json!({"token": token, "expiresAt": rfc3339(exp)}))
                .into_response()
        }
        Err(
            e @ (TokenError::BadOperatorRef
            | TokenError::BadDisplayName
            | TokenError::BadTtl
            | TokenError::BadCapability),
        ) => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            &e.to_string(),
        ),
    }
}

async fn tokens(State(app): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(entry) = app.api_keys.check(key) else {
        metrics::counter!("sbc_http_unauthorized_total").increment(1);
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or invalid X-API-Key",
        );
    };
    let allowed = entry.numbers.clone();
    match serde_json::from_slice::<TokenRequest>(&body) {
        Ok(req) => issue(&app, req, &allowed),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!("bad body: {e}"),
        ),
    }
}

async fn demo_token(State(app): State<Arc<HttpState>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Demo {
        operator_ref: String,
        #[serde(default)]
        display_name: Option<String>,
    }
    match serde_json::from_slice::<Demo>(&body) {
        Ok(d) => issue(
            &app,
            TokenRequest {
                operator_ref: d.operator_ref,
                display_name: d.display_name,
                numbers: None,
                ttl: None,
                // The demo page's supervisor panel: every demo operator may monitor.
                capabilities: Some(vec!["monitor".into()]),
            },
            &[],
        ),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!("bad body: {e}"),
        ),
    }
}

async fn numbers(State(app): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match app.tokens.verify(Clock::unix_secs(), token.trim()) {
        Ok(claims) => {
            let list: Vec<&NumberInfo> = app
                .numbers
                .iter()
                .filter(|n| claims.allows(&n.id))
                .collect();
            axum::Json(serde_json::json!({ "numbers": list })).into_response()
        }
        Err(e) => error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", &e.to_string()),
    }
}

async fn metrics(State(app): State<Arc<HttpState>>) -> Response {
    render_metrics(app.metrics.as_ref())
}

fn render_metrics(h: Option<&metrics_exporter_prometheus::PrometheusHandle>) -> Response {
    match h {
        Some(h) => asset_owned("text/plain; version=0.0.4", h.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are off here (see [admin] listen)\n",
        )
            .into_response(),
    }
}

/// The admin listener's routes (`[admin] listen`): `/metrics`, `/healthz`,
/// `/readyz` and `/cluster` (the live nodes as this one last read them from
/// Redis), kept off the public listener that browsers and the API reach.
pub fn admin_router(
    control: Handle<ControlIn>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    cluster: Option<crate::cluster::SharedView>,
) -> Router {
    let ready = (control.clone(), cluster.clone());
    Router::new()
        .route(
            "/cluster",
            get(move || {
                let view = cluster.as_ref().map(|v| {
                    v.lock()
                        .map(|v| v.clone())
                        .unwrap_or_else(|e| e.into_inner().clone())
                });
                async move {
                    match view {
                        Some(v) => axum::Json(v).into_response(),
                        None => (StatusCode::NOT_FOUND, "no [cluster] section\n").into_response(),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { render_metrics(m.as_ref()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let (c, v) = ready.clone();
                async move { ready_of(&c, v.as_ref()).await }
            }),
        )
}

fn asset_owned(content_type: &'static str, body: String) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// How long `/readyz` waits for the control task before calling it not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

async fn readyz(State(app): State<Arc<HttpState>>) -> Response {
    ready_of(&app.control, app.cluster.as_ref()).await
}

/// 200 unless draining or the control task does not answer. Never asks
/// anything outside this process (a shared store's outage must not take a
/// healthy node out of its balancer).
async fn ready_of(
    control: &Handle<ControlIn>,
    cluster: Option<&crate::cluster::SharedView>,
) -> Response {
    let status = control.ask(|reply| ControlIn::Status { reply });
    match tokio::time::timeout(READY_TIMEOUT, status).await {
        // Still 200 with Redis gone: the node takes calls from memory, and a
        // balancer must not take a whole cluster out for its store.
        Ok(Ok(s)) if !s.draining => match cluster.map(|v| {
            let v = v.lock().unwrap_or_else(|e| e.into_inner());
            !v.redis_up && v.redis_errors > 0
        }) {
            Some(true) => {
                "ready (degraded: Redis unreachable, going on from memory)\n".into_response()
            }
            _ => "ready\n".into_response(),
        },
        Ok(Ok(_)) => (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "control task not answering\n",
        )
            .into_response(),
    }
}

/// `None` when the request's `Origin` is allowed (or absent: not a browser),
/// else the 403 that refuses it.
fn origin_refusal(app: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?;
    if app.allowed_origins.is_empty()
        || app
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.as_bytes() == origin.as_bytes())
    {
        return None;
    }
    let shown = String::from_utf8_lossy(origin.as_bytes());
    Some(error(
        StatusCode::FORBIDDEN,
        "FORBIDDEN_ORIGIN",
        &format!("origin {shown} is not in this SBC's [http] allowed_origins"),
    ))
}

async fn operator_ws(
    State(app): State<Arc<HttpState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = origin_refusal(&app, &headers) {
        metrics::counter!("sbc_ws_rejected_total", "reason" => "origin").increment(1);
        return refusal;
    }
    let max = app.max_message;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run_ws(app, socket))
}

async fn run_ws(app: Arc<HttpState>, socket: WebSocket) {
    let sid = app.next_session.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<SessionOutput>(256);
    let open = ControlIn::WsOpen { session: sid, tx };
    if app.control.send(open).await.is_err() {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let text = ControlIn::WsText { session: sid, text: t.to_string() };
                    if app.control.send(text).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    let _ = app.control.send(ControlIn::WsBinary { session: sid, len: b.len() }).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
            out = rx.recv() => match out {
                Some(SessionOutput::Send(m)) => {
                    if sink.send(Message::Text(m.to_json().into())).await.is_err() {
                        break;
                    }
                }
                Some(SessionOutput::Close { code, reason }) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
                None => break,
            },
        }
    }
    let _ = app.control.send(ControlIn::WsClosed { session: sid }).await;
}
