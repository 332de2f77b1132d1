//! The SIP transport task: owns a sans-IO SIP core (the bridge, or a bare
//! `UserAgent` in tests) and its sockets (UDP, TCP and TLS listeners and
//! connections, outgoing TCP/TLS), feeds it bytes and timer ticks and sends what
//! it polls out. It is the only owner of that state; everything else talks to it
//! through [`Handle`], which queues the core's own input type
//! ([`SipCore::Input`]: the SBC's `ControlIn`, messages as data). One task is
//! enough: a whole call's SIP work costs microseconds (`benches/benches/sip.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use media_core::Instant;
use sip_bridge::sip::dialog::{LocalAddr, UaConfig, UaEvent, UserAgent};
use sip_bridge::sip::framing::{self, DEFAULT_MAX_MESSAGE, Framed};
use sip_bridge::sip::message::{Peer, Transport};
use sip_bridge::sip::transaction::Transmit;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::conn::{self, ConnEvent, ConnId, ConnLimits};
use crate::clock::Clock;
use crate::dual_stack;

/// A sans-IO SIP core the transport task can drive.
pub trait SipCore: Send + 'static {
    /// What other tasks send the core through its [`Handle`].
    type Input: Send + 'static;
    /// One input from another task.
    fn handle_input(&mut self, now: Instant, input: Self::Input);
    /// A datagram or framed stream message.
    fn handle_sip(&mut self, now: Instant, bytes: Bytes, from: Peer);
    /// Due timers.
    fn handle_timeout(&mut self, now: Instant);
    /// When `handle_timeout` is next due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next message to send.
    fn poll_sip_transmit(&mut self) -> Option<Transmit>;
    /// A stream connection (TCP, TLS) closed: flows on it are gone.
    fn handle_connection_closed(&mut self, _conn: u64) {}
    /// After every input or timer: move the core's other outputs out.
    fn after_io(&mut self, _now: Instant) {}
    /// Whether the core has stopped; the task then ends.
    fn is_stopped(&self) -> bool {
        false
    }
}

/// Where and how the transport listens.
#[derive(Clone, Debug)]
pub struct SipConfig {
    /// UDP bind address (port 0 picks one).
    pub udp: Option<SocketAddr>,
    /// TCP bind address.
    pub tcp: Option<SocketAddr>,
    /// TLS bind address and server configuration.
    pub tls: Option<(SocketAddr, Arc<tokio_rustls::rustls::ServerConfig>)>,
    /// TLS toward peers (trunks over TLS): default verifies against the Mozilla
    /// roots; a carrier with a private CA gets its own.
    pub tls_client: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// The address peers should use for us (Via, Contact): a public IP in front of
    /// NAT. Default: the bind address, or loopback for 0.0.0.0.
    pub advertise: Option<IpAddr>,
    /// Our IPv6 address for IPv6 peers when the listeners on `[::]` serve both
    /// families (`advertise` is then the IPv4 one).
    pub advertise6: Option<IpAddr>,
    /// User-Agent / Server header.
    pub user_agent: String,
    /// Most calls in progress (UA legs).
    pub max_legs: usize,
    /// Most transactions.
    pub max_transactions: usize,
    /// Most stream connections (accepted + opened).
    pub max_connections: usize,
    /// Largest message.
    pub max_message: usize,
    /// A stream connection idle this long is closed.
    pub idle_timeout: Duration,
    /// How long an unanswered call rings.
    pub ring_timeout: Duration,
    /// Seeds tags, Call-IDs and branches.
    pub seed: u64,
    /// Test-only impairment: drop this fraction of UDP datagrams each way.
    pub udp_loss: Option<UdpLoss>,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5060))),
            tcp: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5060))),
            tls: None,
            tls_client: None,
            advertise: None,
            advertise6: None,
            user_agent: concat!("sbc/", env!("CARGO_PKG_VERSION")).into(),
            max_legs: 10_000,
            max_transactions: 100_000,
            max_connections: 4096,
            max_message: DEFAULT_MAX_MESSAGE,
            idle_timeout: Duration::from_secs(600),
            ring_timeout: Duration::from_secs(180),
            seed: 1,
            udp_loss: None,
        }
    }
}

/// Seeded loss on the UDP socket, both directions (an in-process netem: this
/// kernel has none). For interop tests under loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UdpLoss {
    /// Fraction of received datagrams dropped (0..1).
    pub inbound: f64,
    /// Fraction of sent datagrams dropped (0..1).
    pub outbound: f64,
    /// Seed of the loss pattern.
    pub seed: u64,
}

/// Transport errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    /// A socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The transport task has stopped.
    #[error("SIP transport stopped")]
    Closed,
}

/// Transport counters (read with [`Handle::stats`]).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Datagrams and stream messages received.
    pub received: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Stream connections open now.
    pub connections: AtomicU64,
    /// Connections refused at the limit, broken by framing errors, or failed to open.
    pub connection_errors: AtomicU64,
    /// Datagrams dropped by the test impairment ([`UdpLoss`]).
    pub impaired: AtomicU64,
}

/// Inputs queued for the core at most; a sender waits for room beyond that.
const INPUT_QUEUE: usize = 4096;

/// A cheap, cloneable way to send the core its inputs (`I` is
/// [`SipCore::Input`]) from any task.
pub struct Handle<I> {
    inputs: mpsc::Sender<I>,
    unbounded: mpsc::UnboundedSender<I>,
    stats: Arc<TransportStats>,
    local: Arc<LocalAddr>,
}

impl<I> Clone for Handle<I> {
    fn clone(&self) -> Self {
        Handle {
            inputs: self.inputs.clone(),
            unbounded: self.unbounded.clone(),
            stats: self.stats.clone(),
            local: self.local.clone(),
        }
    }
}

impl<I> std::fmt::Debug for Handle<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<I: Send + 'static> Handle<I> {
    /// Queues `input`, waiting for room in the queue (backpressure on the sender).
    pub async fn send(&self, input: I) -> Result<(), SipError> {
        self.inputs.send(input).await.map_err(|_| SipError::Closed)
    }

    /// Queues `input` if there is room now.
    pub fn try_send(&self, input: I) -> Result<(), SipError> {
        self.inputs.try_send(input).map_err(|_| SipError::Closed)
    }

    /// Sends the input `ask` makes around a reply channel, and waits for the reply.
    pub async fn ask<R>(&self, ask: impl FnOnce(oneshot::Sender<R>) -> I) -> Result<R, SipError> {
        let (tx, rx) = oneshot::channel();
        self.send(ask(tx)).await?;
        rx.await.map_err(|_| SipError::Closed)
    }

    /// A sender that never waits: for tasks the core must never hold up (a call's
    /// media task), whose inputs are few.
    pub fn unbounded(&self) -> mpsc::UnboundedSender<I> {
        self.unbounded.clone()
    }

    /// Transport counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Our addresses as advertised.
    pub fn local(&self) -> &LocalAddr {
        &self.local
    }
}

/// Bound sockets, before the task starts.
pub struct SipSockets {
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, TlsAcceptor)>,
    /// Bound UDP address.
    pub udp_addr: Option<SocketAddr>,
    /// Bound TCP address.
    pub tcp_addr: Option<SocketAddr>,
    /// Bound TLS address.
    pub tls_addr: Option<SocketAddr>,
    /// What we advertise.
    pub local: LocalAddr,
    cfg: SipConfig,
}

impl std::fmt::Debug for SipSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipSockets")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl SipSockets {
    /// Binds every configured listener.
    pub async fn bind(cfg: SipConfig) -> Result<SipSockets, SipError> {
        let bind_err = |addr| move |source| SipError::Bind { addr, source };
        // On `[::]` each listener takes IPv4 peers too (dual_stack).
        let listen = |a: SocketAddr| {
            dual_stack::bind_tcp(a)
                .and_then(TcpListener::from_std)
                .map_err(bind_err(a))
        };
        let udp = match cfg.udp {
            Some(a) => Some(
                dual_stack::bind_udp(a)
                    .and_then(UdpSocket::from_std)
                    .map_err(bind_err(a))?,
            ),
            None => None,
        };
        let tcp = match cfg.tcp {
            Some(a) => Some(listen(a)?),
            None => None,
        };
        let tls = match &cfg.tls {
            Some((a, server)) => Some((listen(*a)?, TlsAcceptor::from(server.clone()))),
            None => None,
        };
        let udp_addr = udp.as_ref().and_then(|s| s.local_addr().ok());
        let tcp_addr = tcp.as_ref().and_then(|s| s.local_addr().ok());
        let tls_addr = tls.as_ref().and_then(|(s, _)| s.local_addr().ok());
        let bound_ip = udp_addr
            .or(tcp_addr)
            .or(tls_addr)
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let host = cfg
            .advertise
            .or(bound_ip)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut ports = Vec::new();
        for (t, a) in [
            (Transport::Udp, udp_addr),
            (Transport::Tcp, tcp_addr),
            (Transport::Tls, tls_addr),
        ] {
            if let Some(a) = a {
                ports.push((t, a.port()));
            }
        }
        Ok(SipSockets {
            udp,
            tcp,
            tls,
            udp_addr,
            tcp_addr,
            tls_addr,
            local: LocalAddr {
                host: host.to_string(),
                host6: cfg.advertise6.map(|ip| ip.to_string()),
                ports,
            },
            cfg,
        })
    }

    /// The UA settings these sockets imply (for cores built on a `UserAgent`).
    pub fn ua_config(&self) -> UaConfig {
        let mut ua = UaConfig::new(self.local.clone(), self.cfg.seed);
        ua.user_agent = self.cfg.user_agent.clone();
        ua.max_legs = self.cfg.max_legs;
        ua.max_transactions = self.cfg.max_transactions;
        ua.ring_timeout = self.cfg.ring_timeout;
        ua.validation.max_message = self.cfg.max_message;
        ua
    }

    /// Starts the transport task around `core`.
    pub fn spawn<C: SipCore>(self, core: C) -> (Handle<C::Input>, tokio::task::JoinHandle<()>) {
        self.spawn_with_clock(core, Clock::new())
    }

    /// Starts the transport task around `core` on a shared clock.
    pub fn spawn_with_clock<C: SipCore>(
        self,
        core: C,
        clock: Clock,
    ) -> (Handle<C::Input>, tokio::task::JoinHandle<()>) {
        self.spawn_with_init(core, clock, |_, _| {})
    }

    /// Like [`spawn_with_clock`](Self::spawn_with_clock), but `init` gets the core
    /// and its handle before the task starts: a core that needs its own handle has
    /// it before the first datagram (a job queued after spawning could lose the
    /// race to an INVITE already waiting on the socket).
    pub fn spawn_with_init<C: SipCore>(
        self,
        mut core: C,
        clock: Clock,
        init: impl FnOnce(&mut C, Handle<C::Input>),
    ) -> (Handle<C::Input>, tokio::task::JoinHandle<()>) {
        let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE);
        let (unbounded_tx, unbounded_rx) = mpsc::unbounded_channel();
        let handle = Handle {
            inputs: inputs_tx,
            unbounded: unbounded_tx,
            stats: Arc::new(TransportStats::default()),
            local: Arc::new(self.local.clone()),
        };
        let stats = handle.stats.clone();
        init(&mut core, handle.clone());
        let client = self.cfg.tls_client.clone().unwrap_or_else(|| {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(
                tokio_rustls::rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        });
        let task = Task {
            core,
            clock,
            udp_ipv6: self.udp_addr.is_some_and(|a| a.is_ipv6()),
            udp: self.udp,
            tcp: self.tcp,
            tls: self.tls,
            tls_client: TlsConnector::from(client),
            connect_from: self
                .tcp_addr
                .or(self.tls_addr)
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified()),
            limits: ConnLimits {
                max_message: self.cfg.max_message,
                idle: self.cfg.idle_timeout,
            },
            max_connections: self.cfg.max_connections,
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            connecting: HashMap::new(),
            next_conn: 1,
            stats: stats.clone(),
            loss: self
                .cfg
                .udp_loss
                .map(|l| (l, media_core::SeededRng::new(l.seed))),
        };
        let join = tokio::spawn(task.run(inputs_rx, unbounded_rx));
        (handle, join)
    }
}

/// A bare `UserAgent` as a core: its events go to a channel, and other tasks act
/// on it with closures ([`UaJob`]). For tests and tools that speak SIP without
/// the bridge (a test carrier scripts a UA freely; the SBC's control task takes
/// typed inputs instead).
#[derive(Debug)]
pub struct UaCore {
    /// The UA.
    pub ua: UserAgent,
    events: mpsc::UnboundedSender<UaEvent>,
}

impl Deref for UaCore {
    type Target = UserAgent;
    fn deref(&self) -> &UserAgent {
        &self.ua
    }
}

impl DerefMut for UaCore {
    fn deref_mut(&mut self) -> &mut UserAgent {
        &mut self.ua
    }
}

/// Work for a [`UaCore`], run in its task.
pub type UaJob = Box<dyn FnOnce(&mut UaCore, Instant) + Send>;

impl SipCore for UaCore {
    type Input = UaJob;
    fn handle_input(&mut self, now: Instant, job: UaJob) {
        job(self, now);
    }
    fn handle_sip(&mut self, now: Instant, bytes: Bytes, from: Peer) {
        self.ua.handle_bytes(now, &bytes, from);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.ua.handle_timeout(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.ua.poll_timeout()
    }
    fn poll_sip_transmit(&mut self) -> Option<Transmit> {
        self.ua.poll_transmit()
    }
    fn after_io(&mut self, _now: Instant) {
        while let Some(e) = self.ua.poll_event() {
            let _ = self.events.send(e);
        }
    }
}

/// Acts on a [`UaCore`].
pub type SipHandle = Handle<UaJob>;

impl Handle<UaJob> {
    /// Runs `f` on the UA (in the transport task) and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut UaCore, Instant) -> R + Send + 'static,
    ) -> Result<R, SipError> {
        self.ask(move |tx| -> UaJob {
            Box::new(move |core, now| {
                let _ = tx.send(f(core, now));
            })
        })
        .await
    }

    /// Queues `f` without waiting (for tasks that must not block on the UA).
    pub fn post(
        &self,
        f: impl FnOnce(&mut UaCore, Instant) + Send + 'static,
    ) -> Result<(), SipError> {
        self.try_send(Box::new(f))
    }
}

/// A running UA endpoint (a `UserAgent` on sockets, events on a channel).
#[derive(Debug)]
pub struct SipEndpoint {
    /// Acts on the UA.
    pub handle: SipHandle,
    /// The UA's events, in order.
    pub events: mpsc::UnboundedReceiver<UaEvent>,
    /// Bound UDP address.
    pub udp_addr: Option<SocketAddr>,
    /// Bound TCP address.
    pub tcp_addr: Option<SocketAddr>,
    /// The task (ends when every handle is dropped).
    pub task: tokio::task::JoinHandle<()>,
}

impl SipEndpoint {
    /// Binds the sockets and starts a UA on them.
    pub async fn start(cfg: SipConfig) -> Result<SipEndpoint, SipError> {
        let sockets = SipSockets::bind(cfg).await?;
        let (udp_addr, tcp_addr) = (sockets.udp_addr, sockets.tcp_addr);
        let (tx, rx) = mpsc::unbounded_channel();
        let core = UaCore {
            ua: UserAgent::new(sockets.ua_config()),
            events: tx,
        };
        let (handle, task) = sockets.spawn(core);
        Ok(SipEndpoint {
            handle,
            events: rx,
            udp_addr,
            tcp_addr,
            task,
        })
    }
}

/// Messages held for an outgoing connection being opened.
const MAX_QUEUED_PER_CONNECT: usize = 64;
/// Messages queued to one connection's writer before it counts as stuck.
const WRITE_QUEUE: usize = 256;
/// How long opening an outgoing connection (and its TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Task<C> {
    core: C,
    clock: Clock,
    udp: Option<UdpSocket>,
    /// The UDP socket is IPv6 (on `[::]` it reaches IPv4 peers mapped).
    udp_ipv6: bool,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, TlsAcceptor)>,
    tls_client: TlsConnector,
    /// The address outgoing connections leave from: the stream listener's
    /// when it is bound to one (a peer that trusts our signalling address,
    /// another node or a carrier's ACL, sees it), else the kernel's choice.
    connect_from: Option<IpAddr>,
    limits: ConnLimits,
    max_connections: usize,
    conns: HashMap<ConnId, (SocketAddr, mpsc::Sender<Bytes>)>,
    /// The connection to use for a peer address (latest wins).
    by_addr: HashMap<SocketAddr, ConnId>,
    /// Outgoing connections being opened, with what waits for them.
    connecting: HashMap<SocketAddr, Vec<Bytes>>,
    next_conn: ConnId,
    stats: Arc<TransportStats>,
    loss: Option<(UdpLoss, media_core::SeededRng)>,
}

impl<C: SipCore> Task<C> {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<C::Input>,
        mut unbounded: mpsc::UnboundedReceiver<C::Input>,
    ) {
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<ConnEvent>();
        let mut buf = vec![0u8; 65_536];
        loop {
            let deadline = self.core.poll_timeout().map(|t| self.clock.deadline(t));
            tokio::select! {
                r = recv_from(self.udp.as_ref(), &mut buf) => {
                    if let Ok((n, from)) = r {
                        let from = dual_stack::canonical(from);
                        self.on_datagram(Bytes::copy_from_slice(&buf[..n]), from);
                    }
                }
                r = accept(self.tcp.as_ref()) => {
                    if let Ok((stream, addr)) = r {
                        let addr = dual_stack::canonical(addr);
                        self.on_accept(stream, addr, Transport::Tcp, &conn_tx);
                    }
                }
                r = accept(self.tls.as_ref().map(|(l, _)| l)) => {
                    if let Ok((stream, addr)) = r {
                        let addr = dual_stack::canonical(addr);
                        self.on_accept(stream, addr, Transport::Tls, &conn_tx);
                    }
                }
                input = inputs.recv() => {
                    let Some(input) = input else { break }; // every handle dropped
                    self.core.handle_input(self.clock.now(), input);
                }
                Some(input) = unbounded.recv() => self.core.handle_input(self.clock.now(), input),
                Some(ev) = conn_rx.recv() => self.on_conn_event(ev),
                _ = sleep_until(deadline) => self.core.handle_timeout(self.clock.now()),
            }
            let now = self.clock.now();
            self.core.after_io(now);
            self.flush(&conn_tx).await;
            if self.core.is_stopped() {
                break;
            }
        }
    }

    fn on_datagram(&mut self, data: Bytes, from: SocketAddr) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if let Some((l, rng)) = &mut self.loss
            && rng.chance(l.inbound)
        {
            self.stats.impaired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Ok(Framed::Message(bytes)) = framing::datagram(data, self.limits.max_message) {
            self.core
                .handle_sip(self.clock.now(), bytes, Peer::udp(from));
        }
    }

    fn on_accept(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        transport: Transport,
        conn_tx: &mpsc::UnboundedSender<ConnEvent>,
    ) {
        if self.conns.len() + self.connecting.len() >= self.max_connections {
            self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
            return; // dropped: closes it
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_conn;
        self.next_conn += 1;
        self.by_addr.insert(addr, id);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        self.conns.insert(id, (addr, wtx));
        let limits = self.limits;
        let events = conn_tx.clone();
        match (transport, &self.tls) {
            (Transport::Tls, Some((_, acceptor))) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            conn::run(tls, id, addr, Transport::Tls, limits, events, wrx).await
                        }
                        _ => {
                            let _ = events.send(ConnEvent::Closed { id });
                        }
                    }
                });
            }
            _ => {
                tokio::spawn(conn::run(
                    stream,
                    id,
                    addr,
                    Transport::Tcp,
                    limits,
                    events,
                    wrx,
                ));
            }
        }
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Message {
                id,
                addr,
                transport,
                bytes,
            } => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                let peer = Peer {
                    transport,
                    addr,
                    conn: Some(id),
                };
                self.core.handle_sip(self.clock.now(), bytes, peer);
            }
            ConnEvent::Connected { id, addr, writer } => {
                let queued = self.connecting.remove(&addr).unwrap_or_default();
                for bytes in queued {
                    let _ = writer.try_send(bytes);
                }
                self.by_addr.insert(addr, id);
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                self.conns.insert(id, (addr, writer));
            }
            ConnEvent::Failed { addr } => {
                // What waited is dropped; its transactions time out (408).
                self.connecting.remove(&addr);
                self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
            }
            ConnEvent::Broken { addr, error } => {
                self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%addr, %error, "closing SIP connection");
            }
            ConnEvent::Closed { id } => {
                self.core.handle_connection_closed(id);
                if let Some((addr, _)) = self.conns.remove(&id) {
                    if self.by_addr.get(&addr) == Some(&id) {
                        self.by_addr.remove(&addr);
                    }
                    self.stats.connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    async fn flush(&mut self, conn_tx: &mpsc::UnboundedSender<ConnEvent>) {
        while let Some(t) = self.core.poll_sip_transmit() {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            self.send(t, conn_tx).await;
        }
    }

    async fn send(&mut self, t: Transmit, conn_tx: &mpsc::UnboundedSender<ConnEvent>) {
        match t.to.transport {
            Transport::Udp => {
                if let Some((l, rng)) = &mut self.loss
                    && rng.chance(l.outbound)
                {
                    self.stats.impaired.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if let Some(s) = &self.udp {
                    let to = dual_stack::toward(t.to.addr, self.udp_ipv6);
                    let _ = s.send_to(&t.bytes, to).await;
                }
            }
            transport => {
                // The connection it came on, else any to that address, else open one.
                let id =
                    t.to.conn
                        .filter(|id| self.conns.contains_key(id))
                        .or_else(|| self.by_addr.get(&t.to.addr).copied());
                if let Some(id) = id
                    && let Some((_, w)) = self.conns.get(&id)
                {
                    if w.try_send(t.bytes).is_err() {
                        // Stuck or gone: drop it; retransmission or timeout follows.
                        self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                self.connect(t.to.addr, transport, t.bytes, conn_tx);
            }
        }
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        transport: Transport,
        bytes: Bytes,
        conn_tx: &mpsc::UnboundedSender<ConnEvent>,
    ) {
        if let Some(q) = self.connecting.get_mut(&addr) {
            if q.len() < MAX_QUEUED_PER_CONNECT {
                q.push(bytes);
            }
            return;
        }
        if self.conns.len() + self.connecting.len() >= self.max_connections {
            self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.connecting.insert(addr, vec![bytes]);
        let id = self.next_conn;
        self.next_conn += 1;
        let limits = self.limits;
        let events = conn_tx.clone();
        let tls = (transport == Transport::Tls).then(|| self.tls_client.clone());
        let from = self
            .connect_from
            .filter(|ip| ip.is_ipv4() == addr.is_ipv4());
        tokio::spawn(async move {
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, connect_from(from, addr)).await;
            let Ok(Ok(stream)) = opened else {
                let _ = events.send(ConnEvent::Failed { addr });
                return;
            };
            let _ = stream.set_nodelay(true);
            let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
            match tls {
                Some(connector) => {
                    // Carriers are addressed by IP here: verify against it.
                    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
                    match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = events.send(ConnEvent::Connected {
                                id,
                                addr,
                                writer: wtx,
                            });
                            conn::run(tls, id, addr, Transport::Tls, limits, events, wrx).await;
                        }
                        _ => {
                            let _ = events.send(ConnEvent::Failed { addr });
                        }
                    }
                }
                None => {
                    let _ = events.send(ConnEvent::Connected {
                        id,
                        addr,
                        writer: wtx,
                    });
                    conn::run(stream, id, addr, Transport::Tcp, limits, events, wrx).await;
                }
            }
        });
    }
}

/// A TCP connection to `addr`, from `from` (any port) when given.
async fn connect_from(from: Option<IpAddr>, addr: SocketAddr) -> io::Result<TcpStream> {
    let Some(ip) = from else {
        return TcpStream::connect(addr).await;
    };
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

async fn recv_from(s: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match s {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn accept(l: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
