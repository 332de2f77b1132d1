//! The SBC as a library: [`Server::builder`] starts every task (SIP transport and
//! control, the WebRTC port, per-call media, HTTP) and returns a [`ServerHandle`]
//! with the bound addresses and a graceful [`ServerHandle::shutdown`]. The `sbc`
//! binary is a thin shell over this.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use media_core::codec::OpusEncoderConfig;
use sip_bridge::bridge::{Bridge, BridgeConfig, CallEvent};
use sip_bridge::media::MediaConfig;
use sip_bridge::signalling::NumberInfo;
use sip_bridge::token::{ApiKeys, TokenIssuer};
use sip_bridge::webrtc::{DtlsIdentity, WebRtcConfig};
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::control::ControlCore;
use crate::events::{CallbackSink, EventSink, WebhookSink};
use crate::http::{self, HttpState};
use crate::inbox::{ControlIn, ControlStatus};
use crate::media_task::{self, MediaCtx};
use crate::protect::{Protection, ProtectionConfig};
use crate::recorder::{Recorder, RecorderConfig, RecordingDone};
use crate::router::{HttpRouter, Router};
use crate::rtp_ports::RtpPorts;
use crate::sip::{Handle, SipConfig, SipSockets};
use crate::webrtc_port::WebRtcPort;

/// Everything a server is started with (the TOML config maps onto this; an
/// embedding service may build it directly).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// SIP listeners and transport limits.
    pub sip: SipConfig,
    /// Numbers, trunks, call limits.
    pub bridge: BridgeConfig,
    /// HTTP + WebSocket listener.
    pub http: SocketAddr,
    /// Serve HTTPS/WSS on it with this (ALPN http/1.1); `None`: plain HTTP.
    pub http_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Page origins allowed on the operator WebSocket, `/sdk/*` and `/v1/*`
    /// (the `Origin` check and CORS); empty: any.
    pub allowed_origins: Vec<String>,
    /// The shared WebRTC UDP port.
    pub webrtc: SocketAddr,
    /// The WebRTC port as browsers reach it (default: the bound address, with
    /// the media IP when bound to 0.0.0.0).
    pub webrtc_advertise: Option<SocketAddr>,
    /// Where SIP-side RTP sockets bind.
    pub rtp_bind: IpAddr,
    /// No RTP for this long ends a call.
    pub media_timeout: Duration,
    /// Our Opus encoders (each narrowed by its receiver's `fmtp`).
    pub opus: OpusEncoderConfig,
    /// SIP-to-SIP transcoding through a jitter buffer too.
    pub sip_jitter_buffer: bool,
    /// HS256 secret for session tokens (32+ bytes).
    pub token_secret: Vec<u8>,
    /// API keys (hashed).
    pub api_keys: ApiKeys,
    /// The SIP front door.
    pub protection: ProtectionConfig,
    /// Call-event webhook: URL and signing secret.
    pub webhook: Option<(String, Vec<u8>)>,
    /// The demo token endpoint exists.
    pub demo: bool,
    /// The routing webhook: URL, signing secret, timeout.
    pub routing: Option<(String, Vec<u8>, Duration)>,
    /// Phone accounts from the backend: URL, signing secret, timeout.
    pub phone_accounts: Option<(String, Vec<u8>, Duration)>,
    /// Recordings: where, how long, how many.
    pub recording: RecorderConfig,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); `None`: those
    /// are on the main HTTP listener.
    pub admin: Option<SocketAddr>,
    /// This node's name: the `node` label of every metric.
    pub node: String,
    /// Its place in a cluster (`None`: a single node).
    pub cluster: Option<ClusterSettings>,
}

/// `[cluster]`: see [`crate::cluster`]. The addresses other nodes reach this
/// one at are the bound listeners (the SIP TCP one first).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// This node's name.
    pub node: String,
    /// Redis.
    pub redis_url: String,
    /// Lease renewal.
    pub heartbeat: Duration,
    /// Lease length.
    pub lease: Duration,
    /// Deadline of one exchange with Redis.
    pub timeout: Duration,
    /// Address blocks the other nodes must be in (empty: any).
    pub allow: Vec<sip_bridge::config::Cidr>,
}

/// Startup failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// SIP sockets.
    #[error(transparent)]
    Sip(#[from] crate::sip::SipError),
    /// Another socket.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The DTLS certificate could not be made.
    #[error("DTLS certificate: {0}")]
    Dtls(String),
}

/// Builds a server.
pub struct ServerBuilder {
    cfg: ServerConfig,
    sinks: Vec<Arc<dyn EventSink>>,
    router: Option<Arc<dyn Router>>,
    directory: Option<Arc<dyn crate::directory::PhoneDirectory>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("sinks", &self.sinks.len())
            .finish_non_exhaustive()
    }
}

/// The entry point.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder for `cfg`.
    pub fn builder(cfg: ServerConfig) -> ServerBuilder {
        ServerBuilder {
            cfg,
            sinks: Vec::new(),
            router: None,
            directory: None,
        }
    }
}

impl ServerBuilder {
    /// Decides each call's plan with `router` instead of the static config (a
    /// router answering `Default` falls back to it).
    pub fn router(mut self, router: Arc<dyn Router>) -> Self {
        self.router = Some(router);
        self
    }

    /// Asks `directory` who a phone is when the config does not list its
    /// username (instead of `[registrar] accounts_url`); the bridge's
    /// `registrar.lookup_ttl` must be set.
    pub fn directory(mut self, directory: Arc<dyn crate::directory::PhoneDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    fn events_all(mut self, sinks: Vec<Arc<dyn EventSink>>) -> Self {
        self.sinks.extend(sinks);
        self
    }

    /// Adds a receiver of call events.
    pub fn events(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Binds everything and starts.
    pub async fn start(self) -> Result<ServerHandle, ServerError> {
        let ServerBuilder {
            mut cfg,
            mut sinks,
            router,
            directory,
        } = self;
        let directory =
            directory.or_else(|| crate::directory::from_config(cfg.phone_accounts.clone()));
        if router.is_none()
            && let Some((url, secret, timeout)) = cfg.routing.clone()
        {
            // The config's routing webhook, unless the embedder gave its own router.
            let http = Arc::new(HttpRouter::new(url, secret, timeout));
            let mut b = Server::builder(cfg).router(http).events_all(sinks);
            b.directory = directory;
            return Box::pin(b.start()).await;
        }
        cfg.bridge.external_routing = router.is_some();
        let metrics_handle = crate::telemetry::install(&cfg.node);
        let clock = Clock::new();
        let unix_base = Clock::unix_secs();

        let (port, port_task) =
            WebRtcPort::start(cfg.webrtc)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "WebRTC",
                    addr: cfg.webrtc,
                    source,
                })?;
        let webrtc_public = cfg.webrtc_advertise.unwrap_or_else(|| {
            if port.local.ip().is_unspecified() {
                SocketAddr::new(cfg.bridge.media_ip, port.local.port())
            } else {
                port.local
            }
        });
        let identity = DtlsIdentity::generate().map_err(|e| ServerError::Dtls(e.to_string()))?;
        let webrtc = WebRtcConfig::new(webrtc_public, identity, clock.std_epoch());
        let media = MediaConfig {
            media_timeout: cfg.media_timeout,
            opus: cfg.opus,
            sip_jitter_buffer: cfg.sip_jitter_buffer,
            // RTCP sender reports carry wall-clock NTP time (RFC 3550 6.4.1).
            wall_clock_at_zero: std::time::Duration::from_secs(unix_base),
            cname: format!("sbc@{}", cfg.bridge.media_ip),
            ..MediaConfig::new(Some(webrtc), 0)
        };
        let rtp_ports = RtpPorts::new(cfg.rtp_bind);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<RecordingDone>();
        let recorder = Recorder::new(cfg.recording.clone(), done_tx);
        let media_ctx = Arc::new(MediaCtx {
            recorder: recorder.clone(),
            media,
            port: port.clone(),
            rtp_bind: cfg.rtp_bind,
            rtp_ports: rtp_ports.clone(),
            clock,
        });

        let sockets = SipSockets::bind(cfg.sip.clone()).await?;
        let (sip_udp, sip_tcp, sip_tls) = (sockets.udp_addr, sockets.tcp_addr, sockets.tls_addr);
        let mut bridge_cfg = cfg.bridge.clone();
        if cfg.cluster.is_some() && bridge_cfg.peer_key.is_none() {
            // Every node shares the token secret, so every node has this key.
            bridge_cfg.peer_key = Some(sip_bridge::cluster::PeerKey::derive(&cfg.token_secret));
        }
        let mut bridge = Bridge::new(
            bridge_cfg,
            sockets.local.clone(),
            TokenIssuer::new(&cfg.token_secret),
            unix_base,
        );
        bridge.set_port_probe(Box::new(rtp_ports));
        bridge.start(clock.now());
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<CallEvent>();
        let core = ControlCore::new(
            bridge,
            Protection::new(cfg.protection.clone()),
            Box::new(move |call, seed, control| {
                media_task::spawn(call, media_ctx.clone(), control, seed)
            }),
            events_tx,
            cfg.bridge.seed,
        );
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(0u64);
        let (records_tx, records_rx) = mpsc::channel(crate::cluster::RECORD_QUEUE);
        let clustered = cfg.cluster.is_some();
        // Inbox and router in place before the first datagram is read.
        let (control, sip_task) = sockets.spawn_with_init(core, clock, move |c, me| {
            c.set_inbox(me.unbounded());
            if clustered {
                c.set_ready_watch(ready_tx);
                c.set_cluster_records(records_tx);
            }
            if let Some(r) = router {
                c.set_router(r);
            }
            if let Some(d) = directory {
                c.set_directory(d);
            }
        });

        if let Some((url, secret)) = &cfg.webhook {
            sinks.push(WebhookSink::start(url.clone(), secret.clone()));
        }
        sinks.push(CallbackSink::start(
            cfg.webhook.as_ref().map(|(_, s)| s.clone()),
        ));
        let events_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = events_rx.recv() => {
                        let Some(ev) = ev else { break };
                        for s in &sinks {
                            s.call_event(&ev);
                        }
                    }
                    Some(done) = done_rx.recv() => {
                        for s in &sinks {
                            s.recording_event(&done);
                        }
                    }
                }
            }
        });

        let listener = tokio::net::TcpListener::bind(cfg.http)
            .await
            .map_err(|source| ServerError::Bind {
                what: "HTTP",
                addr: cfg.http,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            what: "HTTP",
            addr: cfg.http,
            source,
        })?;
        let admin = match cfg.admin {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        what: "admin HTTP",
                        addr,
                        source,
                    })?;
                let local = l.local_addr().map_err(|source| ServerError::Bind {
                    what: "admin HTTP",
                    addr,
                    source,
                })?;
                Some((l, local))
            }
            None => None,
        };
        let cluster_view = cfg
            .cluster
            .as_ref()
            .map(|_| crate::cluster::SharedView::default());
        let state = Arc::new(HttpState {
            cluster: cluster_view.clone(),
            control: control.clone(),
            tokens: TokenIssuer::new(&cfg.token_secret),
            api_keys: cfg.api_keys.clone(),
            numbers: cfg
                .bridge
                .numbers
                .iter()
                .map(|n| NumberInfo {
                    id: n.id.clone(),
                    e164: n.e164.clone(),
                    name: n.name.clone(),
                })
                .collect(),
            demo: cfg.demo,
            allowed_origins: cfg.allowed_origins.clone(),
            max_message: cfg.bridge.session.max_message,
            metrics: if admin.is_some() {
                None
            } else {
                metrics_handle.clone()
            },
            next_session: AtomicU64::new(1),
            api: Arc::new(crate::api::ApiState {
                control: control.clone(),
                api_keys: cfg.api_keys.clone(),
                idempotency: Default::default(),
                recorder,
            }),
        });
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let http_task = tokio::spawn(http::serve(
            listener,
            cfg.http_tls.clone(),
            http::router(state),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        let mut tasks = vec![port_task, events_task];
        let mut cluster_task = None;
        if let (Some(k), Some(view)) = (&cfg.cluster, &cluster_view) {
            let advertised = |a: SocketAddr| {
                if a.ip().is_unspecified() {
                    SocketAddr::new(cfg.bridge.media_ip, a.port())
                } else {
                    a
                }
            };
            let sip = sip_tcp.or(sip_udp).or(sip_tls).map(advertised);
            if let Some(sip) = sip {
                cluster_task = Some(crate::cluster::spawn(
                    crate::cluster::ClusterConfig {
                        node: k.node.clone(),
                        redis_url: k.redis_url.clone(),
                        sip,
                        http: advertised(http_addr),
                        heartbeat: k.heartbeat,
                        lease: k.lease,
                        timeout: k.timeout,
                        allow: k.allow.clone(),
                    },
                    control.clone(),
                    view.clone(),
                    ready_rx,
                    records_rx,
                    stop_tx.subscribe(),
                ));
            }
        }
        let admin_addr = admin.as_ref().map(|(_, a)| *a);
        if let Some((l, _)) = admin {
            let mut stop = stop_tx.subscribe();
            let app = http::admin_router(control.clone(), metrics_handle, cluster_view);
            tasks.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = http::serve(l, None, app, shutdown).await {
                    tracing::error!(error = %e, "admin listener stopped");
                }
            }));
        }
        Ok(ServerHandle {
            cluster_task,
            admin: admin_addr,
            sip_udp,
            sip_tcp,
            sip_tls,
            http: http_addr,
            webrtc: port.local,
            webrtc_public,
            control,
            stop: stop_tx,
            control_task: sip_task,
            tasks,
            http_task,
        })
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// SIP UDP address.
    pub sip_udp: Option<SocketAddr>,
    /// SIP TCP address.
    pub sip_tcp: Option<SocketAddr>,
    /// SIP TLS address.
    pub sip_tls: Option<SocketAddr>,
    /// HTTP address.
    pub http: SocketAddr,
    /// The admin listener's address, if any.
    pub admin: Option<SocketAddr>,
    /// The WebRTC port (bound).
    pub webrtc: SocketAddr,
    /// The WebRTC port as browsers reach it.
    pub webrtc_public: SocketAddr,
    /// The control task (calls, operators, SIP): send it [`ControlIn`]s, or
    /// ask, e.g. `control.ask(|reply| ControlIn::Status { reply })`.
    pub control: Handle<ControlIn>,
    stop: watch::Sender<bool>,
    control_task: tokio::task::JoinHandle<()>,
    /// Leaves the cluster (removes this node's record) once stopped.
    cluster_task: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// The control task's figures (`None` once it has stopped).
    pub async fn status(&self) -> Option<ControlStatus> {
        self.control
            .ask(|reply| ControlIn::Status { reply })
            .await
            .ok()
    }

    /// Calls in progress.
    pub async fn calls(&self) -> usize {
        self.status().await.map_or(0, |s| s.calls)
    }

    /// Graceful stop: take no new calls, let the active ones finish for up to
    /// `deadline`, then end the rest cleanly (BYE to SIP peers, `ended` to
    /// browsers) and stop every task. Returns how many calls had to be ended.
    pub async fn shutdown(self, deadline: Duration) -> usize {
        let _ = self.control.send(ControlIn::Drain(true)).await;
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        while waited < deadline && self.calls().await > 0 {
            tokio::time::sleep(step).await;
            waited += step;
        }
        let ended = self.control.ask(|reply| ControlIn::EndAll { reply });
        let ended = ended.await.unwrap_or(0);
        // Give the BYEs their answers (or a short while) before the sockets go.
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(3) && self.status().await.is_some_and(|s| s.sip_legs > 0)
        {
            tokio::time::sleep(step).await;
            waited += step;
        }
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http_task).await;
        if let Some(t) = self.cluster_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        // The control task ends (its media tasks with it); the others are stopped.
        let mut control_task = self.control_task;
        let stopped = self.control.send(ControlIn::Shutdown).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(1), &mut control_task)
                .await
                .is_ok();
        if !stopped {
            control_task.abort();
        }
        for t in self.tasks {
            t.abort();
        }
        ended
    }
}
