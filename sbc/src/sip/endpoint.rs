//! The SIP endpoint task: owns the sans-IO `UserAgent` and its sockets (UDP, TCP
//! listener and connections, outgoing TCP), feeds it bytes and timer ticks, sends
//! what it polls out and forwards its events. It is the only owner of SIP state;
//! everything else talks to it through [`SipHandle`] (a closure run on the UA) and
//! the event channel. One task is enough: the whole SIP work of a call costs
//! microseconds (see `benches/benches/sip.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

use super::conn::{self, ConnEvent, ConnId, ConnLimits};
use crate::clock::Clock;

/// Where and how the endpoint listens.
#[derive(Clone, Debug)]
pub struct SipConfig {
    /// UDP bind address (port 0 picks one).
    pub udp: Option<SocketAddr>,
    /// TCP bind address.
    pub tcp: Option<SocketAddr>,
    /// The address peers should use for us (Via, Contact): a public IP in front of
    /// NAT. Default: the bind address, or the loopback address for 0.0.0.0.
    pub advertise: Option<IpAddr>,
    /// User-Agent / Server header.
    pub user_agent: String,
    /// Most calls in progress.
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
    /// Seeds tags, Call-IDs and branches (set from the OS in production).
    pub seed: u64,
    /// Test-only impairment: drop this fraction of UDP datagrams each way.
    pub udp_loss: Option<UdpLoss>,
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

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5060))),
            tcp: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 5060))),
            advertise: None,
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

/// Endpoint errors.
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
    /// The endpoint task has stopped.
    #[error("SIP endpoint stopped")]
    Closed,
}

/// Transport counters (read with [`SipHandle::stats`]).
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

type Job = Box<dyn FnOnce(&mut UserAgent, Instant) + Send>;

/// A cheap, cloneable way to act on the UA from any task.
#[derive(Clone, Debug)]
pub struct SipHandle {
    jobs: mpsc::Sender<Job>,
    stats: Arc<TransportStats>,
    local: Arc<LocalAddr>,
}

impl SipHandle {
    /// Runs `f` on the UA (in the endpoint task) and returns its result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut UserAgent, Instant) -> R + Send + 'static,
    ) -> Result<R, SipError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ua, now| {
            let _ = tx.send(f(ua, now));
        });
        self.jobs.send(job).await.map_err(|_| SipError::Closed)?;
        rx.await.map_err(|_| SipError::Closed)
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

/// A running endpoint.
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
    /// Binds the sockets and starts the endpoint task.
    pub async fn start(cfg: SipConfig) -> Result<SipEndpoint, SipError> {
        let udp = match cfg.udp {
            Some(addr) => Some(
                UdpSocket::bind(addr)
                    .await
                    .map_err(|source| SipError::Bind { addr, source })?,
            ),
            None => None,
        };
        let tcp = match cfg.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| SipError::Bind { addr, source })?,
            ),
            None => None,
        };
        let udp_addr = udp.as_ref().and_then(|s| s.local_addr().ok());
        let tcp_addr = tcp.as_ref().and_then(|s| s.local_addr().ok());
        let bound_ip = udp_addr
            .or(tcp_addr)
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let host = cfg
            .advertise
            .or(bound_ip)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut ports = Vec::new();
        if let Some(a) = udp_addr {
            ports.push((Transport::Udp, a.port()));
        }
        if let Some(a) = tcp_addr {
            ports.push((Transport::Tcp, a.port()));
        }
        let local = LocalAddr {
            host: host.to_string(),
            ports,
        };
        let mut ua_cfg = UaConfig::new(local.clone(), cfg.seed);
        ua_cfg.user_agent = cfg.user_agent.clone();
        ua_cfg.max_legs = cfg.max_legs;
        ua_cfg.max_transactions = cfg.max_transactions;
        ua_cfg.ring_timeout = cfg.ring_timeout;
        ua_cfg.validation.max_message = cfg.max_message;
        let (jobs_tx, jobs_rx) = mpsc::channel(1024);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(TransportStats::default());
        let task = Task {
            ua: UserAgent::new(ua_cfg),
            clock: Clock::new(),
            udp,
            tcp,
            limits: ConnLimits {
                max_message: cfg.max_message,
                idle: cfg.idle_timeout,
            },
            max_connections: cfg.max_connections,
            conns: HashMap::new(),
            by_addr: HashMap::new(),
            connecting: HashMap::new(),
            next_conn: 1,
            events: events_tx,
            stats: stats.clone(),
            loss: cfg
                .udp_loss
                .map(|l| (l, media_core::SeededRng::new(l.seed))),
        };
        let task = tokio::spawn(task.run(jobs_rx));
        Ok(SipEndpoint {
            handle: SipHandle {
                jobs: jobs_tx,
                stats,
                local: Arc::new(local),
            },
            events: events_rx,
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
/// How long opening an outgoing connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Task {
    ua: UserAgent,
    clock: Clock,
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
    limits: ConnLimits,
    max_connections: usize,
    conns: HashMap<ConnId, (SocketAddr, mpsc::Sender<Bytes>)>,
    /// The connection to use for a peer address (latest wins).
    by_addr: HashMap<SocketAddr, ConnId>,
    /// Outgoing connections being opened, with what waits for them.
    connecting: HashMap<SocketAddr, Vec<Bytes>>,
    next_conn: ConnId,
    events: mpsc::UnboundedSender<UaEvent>,
    stats: Arc<TransportStats>,
    loss: Option<(UdpLoss, media_core::SeededRng)>,
}

impl Task {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<ConnEvent>();
        let mut buf = vec![0u8; 65_536];
        loop {
            let deadline = self.ua.poll_timeout().map(|t| self.clock.deadline(t));
            tokio::select! {
                r = recv_from(self.udp.as_ref(), &mut buf) => {
                    if let Ok((n, from)) = r {
                        self.on_datagram(Bytes::copy_from_slice(&buf[..n]), from);
                    }
                }
                r = accept(self.tcp.as_ref()) => {
                    if let Ok((stream, addr)) = r {
                        self.on_accept(stream, addr, &conn_tx);
                    }
                }
                job = jobs.recv() => {
                    let Some(job) = job else { break }; // every handle dropped
                    job(&mut self.ua, self.clock.now());
                }
                Some(ev) = conn_rx.recv() => self.on_conn_event(ev),
                _ = sleep_until(deadline) => self.ua.handle_timeout(self.clock.now()),
            }
            self.flush(&conn_tx).await;
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
            self.ua
                .handle_bytes(self.clock.now(), &bytes, Peer::udp(from));
        }
    }

    fn on_accept(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        conn_tx: &mpsc::UnboundedSender<ConnEvent>,
    ) {
        if self.conns.len() + self.connecting.len() >= self.max_connections {
            self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
            return; // dropped: closes it
        }
        let _ = stream.set_nodelay(true);
        let id = self.add_conn(addr);
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        self.conns.insert(id, (addr, wtx));
        tokio::spawn(conn::run(
            stream,
            id,
            addr,
            self.limits,
            conn_tx.clone(),
            wrx,
        ));
    }

    fn add_conn(&mut self, addr: SocketAddr) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.by_addr.insert(addr, id);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        id
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Message { id, addr, bytes } => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                let peer = Peer {
                    transport: Transport::Tcp,
                    addr,
                    conn: Some(id),
                };
                self.ua.handle_bytes(self.clock.now(), &bytes, peer);
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
        while let Some(t) = self.ua.poll_transmit() {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
            self.send(t, conn_tx).await;
        }
        while let Some(e) = self.ua.poll_event() {
            let _ = self.events.send(e);
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
                    let _ = s.send_to(&t.bytes, t.to.addr).await;
                }
            }
            _ => {
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
                self.connect(t.to.addr, t.bytes, conn_tx);
            }
        }
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
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
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
                    let _ = events.send(ConnEvent::Connected {
                        id,
                        addr,
                        writer: wtx,
                    });
                    conn::run(stream, id, addr, limits, events, wrx).await;
                }
                _ => {
                    let _ = events.send(ConnEvent::Failed { addr });
                }
            }
        });
    }
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
