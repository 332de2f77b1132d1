//! HTTP and WebSocket (axum): session tokens, the operator signalling socket, the
//! JavaScript SDK and demo page, metrics and health. Handlers are thin: tokens are
//! signed here (no shared state), everything about operators and calls goes to the
//! control task as a [`ControlIn`] message; `/readyz` asks it whether it is
//! draining.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use sip_bridge::signalling::{NumberInfo, SessionOutput};
use sip_bridge::token::{ApiKeys, TokenError, TokenGrant, TokenIssuer};
use tokio::sync::mpsc;

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
    /// WebSocket `Origin` allow-list (empty: any).
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message.
    pub max_message: usize,
    /// Renders `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Signalling session ids.
    pub next_session: AtomicU64,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("demo", &self.demo)
            .finish_non_exhaustive()
    }
}

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    let mut r = Router::new()
        .route("/v1/tokens", post(tokens))
        .route("/v1/numbers", get(numbers))
        .route("/v1/operator", get(operator_ws))
        .route(
            "/sdk/operator.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("../web/operator.js"),
                )
            }),
        )
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

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenRequest {
    operator_ref: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    numbers: Option<Vec<String>>,
    #[serde(default)]
    ttl: Option<u64>,
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
        capabilities: Vec::new(),
    };
    match app.tokens.issue(Clock::unix_secs(), &grant) {
        Ok((token, exp)) => {
            axum::Json(serde_json::json!({"token": token, "expiresAt": rfc3339(exp)}))
                .into_response()
        }
        Err(e @ (TokenError::BadOperatorRef | TokenError::BadDisplayName | TokenError::BadTtl)) => {
            error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &e.to_string())
        }
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
    match &app.metrics {
        Some(h) => asset_owned("text/plain; version=0.0.4", h.render()),
        None => (StatusCode::NOT_FOUND, "metrics disabled\n").into_response(),
    }
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
    let status = app.control.ask(|reply| ControlIn::Status { reply });
    match tokio::time::timeout(READY_TIMEOUT, status).await {
        Ok(Ok(s)) if !s.draining => "ready\n".into_response(),
        Ok(Ok(_)) => (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "control task not answering\n",
        )
            .into_response(),
    }
}

fn origin_allowed(app: &HttpState, headers: &HeaderMap) -> bool {
    if app.allowed_origins.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(o) => app.allowed_origins.iter().any(|a| a == o || a == "*"),
        // Non-browser clients send no Origin; browsers always do.
        None => true,
    }
}

async fn operator_ws(
    State(app): State<Arc<HttpState>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&app, &headers) {
        metrics::counter!("sbc_ws_rejected_total", "reason" => "origin").increment(1);
        return error(StatusCode::FORBIDDEN, "FORBIDDEN", "origin not allowed");
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
