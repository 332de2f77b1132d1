//! A test AI voice agent: a WebSocket server on loopback speaking the SBC's
//! stream protocol (`sip_bridge::stream`), in native framing (binary PCM16 LE
//! 24 kHz + JSON control) or Twilio Media Streams framing (JSON, base64 u-law
//! 8 kHz), detected per connection from the SBC's first message.
//!
//! It records, with arrival instants ([`now`]), everything the SBC sends (the
//! request's path and headers, `start`, every audio frame decoded to PCM at the
//! wire's rate, every control message) as [`AgentEvent`]s, and is scripted per
//! connection with [`Command`]s: queue a tone (sent faster than real time, in
//! bursts, as real agents do), `clear`, `mark`, `hangup`, `transfer`, close
//! cleanly, crash (drop the TCP connection without a close frame), stall (stop
//! reading and answering). [`Accept::Never`] makes it take TCP connections and
//! never answer the upgrade (a hung agent).
//!
//! ```no_run
//! # async fn f() {
//! use integration_tests::agent::{AgentEvent, AgentOptions, Command, TestAgent};
//! use std::time::Duration;
//! let mut agent = TestAgent::start(AgentOptions::default()).await.unwrap();
//! let url = agent.url("/voice"); // put `stream:{url}` in a dial plan
//! let start = agent
//!     .wait_for(Duration::from_secs(10), |e| e.is_message("start"))
//!     .await
//!     .unwrap();
//! agent.command(start.conn(), Command::tone(600.0, 1000));
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use media_core::analysis::ToneGenerator;
use media_core::codec::g711;
use serde_json::{Value, json};
pub use sip_bridge::stream::StreamFormat;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// The harness's clock: arrival and send instants of agents and test callers in
/// one process are comparable.
#[allow(
    clippy::disallowed_methods,
    reason = "a test harness timestamps arrivals on the wall clock"
)]
pub fn now() -> Instant {
    Instant::now()
}

/// How new connections are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accept {
    /// Complete the WebSocket handshake.
    #[default]
    Handshake,
    /// Take the TCP connection, read the request, never answer it.
    Never,
}

/// How queued audio goes out: `frames` 20 ms frames back to back, then a pause
/// of `gap` (default 10 frames every 50 ms: 4x real time, like a speech
/// synthesiser streaming its output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// Frames per burst.
    pub frames: usize,
    /// Pause between bursts.
    pub gap: Duration,
}

impl Pace {
    /// Everything queued goes out at once.
    pub const ALL_AT_ONCE: Pace = Pace {
        frames: usize::MAX,
        gap: Duration::ZERO,
    };
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            frames: 10,
            gap: Duration::from_millis(50),
        }
    }
}

/// Options of a [`TestAgent`].
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Where to listen (default 127.0.0.1, a free port).
    pub listen: SocketAddr,
    /// Handshake or hang.
    pub accept: Accept,
    /// Audio pacing.
    pub pace: Pace,
    /// Peak amplitude of tones (16-bit scale).
    pub amplitude: f64,
    /// Commands run on each connection once its framing is known (after the
    /// SBC's first message).
    pub on_start: Vec<Command>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            accept: Accept::Handshake,
            pace: Pace::default(),
            amplitude: 8000.0,
            on_start: Vec::new(),
        }
    }
}

/// What a connection is told to do. Audio and control messages go out in the
/// order given (a mark after a tone follows its last frame); `Clear`, `Close`,
/// `Crash` and `Stall` act at once.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Queue `ms` of a sine at `hz`.
    Tone {
        /// Frequency.
        hz: f64,
        /// Duration.
        ms: u64,
    },
    /// Queue `ms` of silence.
    Silence {
        /// Duration.
        ms: u64,
    },
    /// Queue samples at the wire's rate (24 kHz native, 8 kHz Twilio), cut in
    /// 20 ms frames (the last one padded).
    Pcm(Vec<i16>),
    /// `mark {name}` after what is queued.
    Mark(String),
    /// Drop our unsent audio and send `clear` (barge-in).
    Clear,
    /// `hangup` after what is queued (native framing only).
    Hangup,
    /// `transfer {target}` after what is queued (native framing only).
    Transfer(String),
    /// Any text message, after what is queued.
    Text(String),
    /// A close frame now, then wait for the SBC's.
    Close,
    /// Drop the TCP connection now, without a close frame.
    Crash,
    /// Stop reading and sending (pings go unanswered) until `Crash` or `Close`.
    Stall,
}

impl Command {
    /// [`Command::Tone`].
    pub fn tone(hz: f64, ms: u64) -> Command {
        Command::Tone { hz, ms }
    }

    /// A command from JSON (`{"cmd":"tone","hz":600,"ms":1000}`, `{"cmd":"mark",
    /// "name":"x"}`, `{"cmd":"clear"}`, `{"cmd":"hangup"}`, `{"cmd":"transfer",
    /// "target":"operators"}`, `{"cmd":"silence","ms":200}`, `{"cmd":"text",
    /// "text":"..."}`, `{"cmd":"close"}`, `{"cmd":"crash"}`, `{"cmd":"stall"}`).
    pub fn from_json(v: &Value) -> Result<Command, String> {
        let ms = || v["ms"].as_u64().unwrap_or(1000);
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("`{k}` missing"))
        };
        Ok(match v["cmd"].as_str().unwrap_or("") {
            "tone" => Command::Tone {
                hz: v["hz"].as_f64().ok_or("`hz` missing")?,
                ms: ms(),
            },
            "silence" => Command::Silence { ms: ms() },
            "mark" => Command::Mark(s("name")?),
            "clear" => Command::Clear,
            "hangup" => Command::Hangup,
            "transfer" => Command::Transfer(s("target")?),
            "text" => Command::Text(s("text")?),
            "close" => Command::Close,
            "crash" => Command::Crash,
            "stall" => Command::Stall,
            other => return Err(format!("unknown command `{other}`")),
        })
    }
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseHow {
    /// The SBC sent a close frame.
    CloseFrame,
    /// The TCP connection ended without a close frame (or before a handshake).
    Eof,
    /// A read error.
    Error(String),
    /// We sent a close frame ([`Command::Close`]).
    ByUs,
    /// We dropped it ([`Command::Crash`]).
    Crashed,
}

/// What happened on the agent, with when.
#[derive(Clone, Debug)]
pub enum AgentEvent {
    /// A TCP connection came in.
    Tcp {
        /// Connection id (1, 2, ...).
        conn: u64,
        /// When.
        at: Instant,
        /// Its source.
        peer: SocketAddr,
    },
    /// The WebSocket handshake completed.
    Connected {
        /// Connection.
        conn: u64,
        /// When.
        at: Instant,
        /// The request's path (and query).
        path: String,
        /// The request's headers (names lower case).
        headers: Vec<(String, String)>,
    },
    /// A JSON message other than audio (`start`, `connected`, `dtmf`, `mark`,
    /// `stop`; anything else too).
    Message {
        /// Connection.
        conn: u64,
        /// When.
        at: Instant,
        /// Its `type` (native) or `event` (Twilio).
        kind: String,
        /// The message.
        json: Value,
    },
    /// One audio message from the SBC, decoded.
    Audio {
        /// Connection.
        conn: u64,
        /// When.
        at: Instant,
        /// Sample rate (24000 native, 8000 Twilio).
        rate: u32,
        /// The samples.
        pcm: Vec<i16>,
        /// Bytes on the wire (960 for 20 ms native; the u-law bytes for Twilio).
        wire_bytes: usize,
    },
    /// We sent something: `kind` is `audio` (a burst of `frames` 20 ms frames)
    /// or the control message's kind (`clear` carries the frames it dropped).
    Sent {
        /// Connection.
        conn: u64,
        /// When the last byte was handed to the socket.
        at: Instant,
        /// What.
        kind: String,
        /// Audio frames.
        frames: usize,
    },
    /// The connection ended.
    Closed {
        /// Connection.
        conn: u64,
        /// When.
        at: Instant,
        /// How.
        how: CloseHow,
    },
}

impl AgentEvent {
    /// Its connection.
    pub fn conn(&self) -> u64 {
        match self {
            AgentEvent::Tcp { conn, .. }
            | AgentEvent::Connected { conn, .. }
            | AgentEvent::Message { conn, .. }
            | AgentEvent::Audio { conn, .. }
            | AgentEvent::Sent { conn, .. }
            | AgentEvent::Closed { conn, .. } => *conn,
        }
    }

    /// When it happened.
    pub fn at(&self) -> Instant {
        match self {
            AgentEvent::Tcp { at, .. }
            | AgentEvent::Connected { at, .. }
            | AgentEvent::Message { at, .. }
            | AgentEvent::Audio { at, .. }
            | AgentEvent::Sent { at, .. }
            | AgentEvent::Closed { at, .. } => *at,
        }
    }

    /// Whether it is a message of this kind (`start`, `mark`, ...).
    pub fn is_message(&self, k: &str) -> bool {
        matches!(self, AgentEvent::Message { kind, .. } if kind == k)
    }

    /// The JSON of a message.
    pub fn json(&self) -> Option<&Value> {
        match self {
            AgentEvent::Message { json, .. } => Some(json),
            _ => None,
        }
    }

    /// Whether we sent this kind of thing.
    pub fn is_sent(&self, k: &str) -> bool {
        matches!(self, AgentEvent::Sent { kind, .. } if kind == k)
    }
}

/// The name of a `mark` in either framing.
pub fn mark_name(msg: &Value) -> Option<&str> {
    msg.get("name")
        .or_else(|| msg.get("mark").and_then(|m| m.get("name")))
        .and_then(Value::as_str)
}

/// The digit of a `dtmf` in either framing.
pub fn dtmf_digit(msg: &Value) -> Option<&str> {
    msg.get("digit")
        .or_else(|| msg.get("dtmf").and_then(|m| m.get("digit")))
        .and_then(Value::as_str)
}

struct Shared {
    events: mpsc::UnboundedSender<AgentEvent>,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Command>>>,
    accept: Mutex<Accept>,
    opts: AgentOptions,
}

impl Shared {
    fn emit(&self, ev: AgentEvent) {
        let _ = self.events.send(ev);
    }
}

/// A running test agent. See the module docs. Dropping it stops accepting
/// (connections already open run on until the SBC closes them).
pub struct TestAgent {
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<AgentEvent>,
    history: Vec<AgentEvent>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAgent")
            .field("addr", &self.addr)
            .field("events", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TestAgent {
    /// Binds `opts.listen` and starts accepting (in the current tokio runtime).
    pub async fn start(opts: AgentOptions) -> std::io::Result<TestAgent> {
        let listener = TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: tx,
            conns: Mutex::new(HashMap::new()),
            accept: Mutex::new(opts.accept),
            opts,
        });
        let s = shared.clone();
        let accept_task = tokio::spawn(async move {
            let mut next = 0u64;
            while let Ok((tcp, peer)) = listener.accept().await {
                next += 1;
                let _ = tcp.set_nodelay(true);
                s.emit(AgentEvent::Tcp {
                    conn: next,
                    at: now(),
                    peer,
                });
                let mode = *s.accept.lock().unwrap_or_else(|e| e.into_inner());
                match mode {
                    Accept::Handshake => {
                        tokio::spawn(serve(next, tcp, s.clone()));
                    }
                    Accept::Never => {
                        tokio::spawn(hang(next, tcp, s.clone()));
                    }
                }
            }
        });
        Ok(TestAgent {
            addr,
            shared,
            events: rx,
            history: Vec::new(),
            accept_task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// How later connections are treated.
    pub fn set_accept(&self, accept: Accept) {
        *self.shared.accept.lock().unwrap_or_else(|e| e.into_inner()) = accept;
    }

    /// Sends `cmd` to connection `conn`; `false` if it is gone.
    pub fn command(&self, conn: u64, cmd: Command) -> bool {
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.get(&conn).is_some_and(|tx| tx.send(cmd).is_ok())
    }

    /// Sends `cmd` to every live connection; how many took it.
    pub fn broadcast(&self, cmd: Command) -> usize {
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .values()
            .filter(|tx| tx.send(cmd.clone()).is_ok())
            .count()
    }

    /// Connections whose WebSocket is open.
    pub fn live(&self) -> Vec<u64> {
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<u64> = conns.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Takes what has arrived without waiting; returns the whole history.
    pub fn events(&mut self) -> &[AgentEvent] {
        while let Ok(ev) = self.events.try_recv() {
            self.history.push(ev);
        }
        &self.history
    }

    /// Forgets the history (a long-running agent keeps memory bounded).
    pub fn clear_history(&mut self) {
        self.history.clear();
    }

    /// The next event not yet seen by `next_event`/`wait_for`, waiting up to
    /// `timeout`. Every event also stays in the history.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<AgentEvent> {
        let ev = tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()?;
        self.history.push(ev.clone());
        Some(ev)
    }

    /// The first event from now on (in arrival order; earlier ones are in the
    /// history) for which `pred` holds, waiting up to `timeout` in all.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&AgentEvent) -> bool,
    ) -> Option<AgentEvent> {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let ev = ev?;
                    self.history.push(ev.clone());
                    if pred(&ev) {
                        return Some(ev);
                    }
                }
                _ = &mut deadline => return None,
            }
        }
    }

    /// The first event in the whole history (waiting up to `timeout` for more)
    /// for which `pred` holds.
    pub async fn find(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&AgentEvent) -> bool,
    ) -> Option<AgentEvent> {
        if let Some(ev) = self.events().iter().find(|e| pred(e)) {
            return Some(ev.clone());
        }
        self.wait_for(timeout, pred).await
    }

    /// Messages of `kind` on `conn` so far.
    pub fn messages(&mut self, conn: u64, kind: &str) -> Vec<(Instant, Value)> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Message {
                    conn: c,
                    at,
                    kind: k,
                    json,
                } if *c == conn && k == kind => Some((*at, json.clone())),
                _ => None,
            })
            .collect()
    }

    /// Audio frames of `conn` that arrived in `[from, to)`: (arrival, samples).
    pub fn frames(&mut self, conn: u64, from: Instant, to: Instant) -> Vec<(Instant, Vec<i16>)> {
        self.events()
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Audio {
                    conn: c, at, pcm, ..
                } if *c == conn && *at >= from && *at < to => Some((*at, pcm.clone())),
                _ => None,
            })
            .collect()
    }

    /// The samples of `conn` that arrived in `[from, to)`, joined.
    pub fn audio(&mut self, conn: u64, from: Instant, to: Instant) -> Vec<i16> {
        self.frames(conn, from, to)
            .into_iter()
            .flat_map(|(_, p)| p)
            .collect()
    }
}

/// [`Accept::Never`]: read and discard until the SBC gives up.
async fn hang(conn: u64, mut tcp: TcpStream, s: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    let how = loop {
        match tcp.read(&mut buf).await {
            Ok(0) => break CloseHow::Eof,
            Ok(_) => {}
            Err(e) => break CloseHow::Error(e.to_string()),
        }
    };
    s.emit(AgentEvent::Closed {
        conn,
        at: now(),
        how,
    });
}

/// One outgoing item, in order.
enum Out {
    /// A 20 ms frame at the wire's rate.
    Frame(Vec<i16>),
    /// A control message (`kind`, JSON).
    Control(&'static str, Value),
}

/// One WebSocket connection.
struct Conn {
    id: u64,
    s: Arc<Shared>,
    format: Option<StreamFormat>,
    stream_sid: String,
    /// Commands that came before the framing was known.
    early: Vec<Command>,
    out: VecDeque<Out>,
    stalled: bool,
}

type Ws = WebSocketStream<TcpStream>;

async fn serve(id: u64, tcp: TcpStream, s: Arc<Shared>) {
    let mut seen: Option<(String, Vec<(String, String)>)> = None;
    // The callback's signature is tungstenite's (`Callback`), error type included.
    #[allow(clippy::result_large_err)]
    let cb = |req: &Request, resp: Response| {
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        seen = Some((path, headers));
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(tcp, cb).await {
        Ok(ws) => ws,
        Err(e) => {
            s.emit(AgentEvent::Closed {
                conn: id,
                at: now(),
                how: CloseHow::Error(format!("handshake: {e}")),
            });
            return;
        }
    };
    let (path, headers) = seen.unwrap_or_default();
    let (tx, rx) = mpsc::unbounded_channel();
    s.conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    s.emit(AgentEvent::Connected {
        conn: id,
        at: now(),
        path,
        headers,
    });
    let mut c = Conn {
        id,
        s: s.clone(),
        format: None,
        stream_sid: String::new(),
        early: Vec::new(),
        out: VecDeque::new(),
        stalled: false,
    };
    let how = c.run(ws, rx).await;
    s.conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    s.emit(AgentEvent::Closed {
        conn: id,
        at: now(),
        how,
    });
}

/// Resolves at `at`, never without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

impl Conn {
    async fn run(&mut self, mut ws: Ws, mut rx: mpsc::UnboundedReceiver<Command>) -> CloseHow {
        // When the next burst may go (None: nothing queued or sending now is fine).
        let mut next_burst: Option<Instant> = None;
        let mut closing = false;
        loop {
            let may_send =
                !self.stalled && self.format.is_some() && !self.out.is_empty() && !closing;
            let wake = if may_send {
                Some(next_burst.unwrap_or_else(now))
            } else {
                None
            };
            tokio::select! {
                msg = ws.next(), if !self.stalled => match msg {
                    Some(Ok(m)) => {
                        let was_close = matches!(m, Message::Close(_));
                        self.received(m);
                        if was_close && !closing {
                            // Let tungstenite answer it; the stream then ends.
                            closing = true;
                        }
                    }
                    Some(Err(e)) => {
                        return if closing { CloseHow::CloseFrame } else { CloseHow::Error(e.to_string()) };
                    }
                    None => return if closing { CloseHow::CloseFrame } else { CloseHow::Eof },
                },
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return CloseHow::ByUs };
                    match cmd {
                        Command::Crash => {
                            // Dropping the socket: FIN or RST, never a close frame.
                            drop(ws);
                            return CloseHow::Crashed;
                        }
                        Command::Close => {
                            let _ = ws.close(None).await;
                            // Wait for the SBC's answer (bounded).
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(Ok(m)) = ws.next().await {
                                    self.received(m);
                                }
                            })
                            .await;
                            return CloseHow::ByUs;
                        }
                        Command::Stall => self.stalled = true,
                        cmd => {
                            if self.format.is_none() {
                                self.early.push(cmd);
                            } else if let Err(e) = self.apply(&mut ws, cmd).await {
                                return CloseHow::Error(e);
                            }
                        }
                    }
                }
                _ = sleep_until(wake) => {
                    match self.burst(&mut ws).await {
                        Ok(()) => {
                            let gap = self.s.opts.pace.gap;
                            next_burst = if self.out.is_empty() { None } else { Some(now() + gap) };
                        }
                        Err(e) => return CloseHow::Error(e),
                    }
                }
            }
            if self.format.is_some() && !self.early.is_empty() {
                for cmd in std::mem::take(&mut self.early) {
                    if let Err(e) = self.apply(&mut ws, cmd).await {
                        return CloseHow::Error(e);
                    }
                }
            }
        }
    }

    fn emit(&self, ev: AgentEvent) {
        self.s.emit(ev);
    }

    /// Records one message from the SBC.
    fn received(&mut self, m: Message) {
        let at = now();
        match m {
            Message::Binary(b) => {
                self.format.get_or_insert(StreamFormat::Pcm24k);
                let pcm: Vec<i16> = b
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                self.emit(AgentEvent::Audio {
                    conn: self.id,
                    at,
                    rate: 24_000,
                    pcm,
                    wire_bytes: b.len(),
                });
            }
            Message::Text(t) => {
                let json: Value = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|_| json!({"unparsed": t.as_str()}));
                if self.format.is_none() {
                    let first = if json.get("event").is_some() {
                        StreamFormat::Twilio
                    } else {
                        StreamFormat::Pcm24k
                    };
                    self.format = Some(first);
                    self.queue_script();
                }
                let twilio = self.format == Some(StreamFormat::Twilio);
                let kind = json
                    .get(if twilio { "event" } else { "type" })
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if twilio && kind == "start" {
                    self.stream_sid = json["streamSid"].as_str().unwrap_or("").to_string();
                }
                if twilio
                    && kind == "media"
                    && let Some(p) = json["media"]["payload"].as_str()
                {
                    let ulaw = base64::engine::general_purpose::STANDARD
                        .decode(p)
                        .unwrap_or_default();
                    let mut pcm = vec![0i16; ulaw.len()];
                    let n = g711::ulaw_decode(&ulaw, &mut pcm);
                    pcm.truncate(n);
                    self.emit(AgentEvent::Audio {
                        conn: self.id,
                        at,
                        rate: 8000,
                        pcm,
                        wire_bytes: ulaw.len(),
                    });
                    return;
                }
                self.emit(AgentEvent::Message {
                    conn: self.id,
                    at,
                    kind,
                    json,
                });
            }
            // Pings are answered by tungstenite; close is handled by the caller.
            _ => {}
        }
    }

    /// The options' `on_start` commands, once the framing is known.
    fn queue_script(&mut self) {
        let script = self.s.opts.on_start.clone();
        let early = std::mem::take(&mut self.early);
        self.early = script.into_iter().chain(early).collect();
    }

    fn rate(&self) -> u32 {
        match self.format {
            Some(StreamFormat::Twilio) => 8000,
            _ => 24_000,
        }
    }

    fn queue_pcm(&mut self, pcm: &[i16]) {
        let n = self.rate() as usize / 50;
        for chunk in pcm.chunks(n) {
            let mut f = chunk.to_vec();
            f.resize(n, 0);
            self.out.push_back(Out::Frame(f));
        }
    }

    fn control(&self, kind: &'static str, extra: Value) -> Value {
        let mut v = match self.format {
            Some(StreamFormat::Twilio) => {
                json!({"event": kind, "streamSid": self.stream_sid})
            }
            _ => json!({"type": kind}),
        };
        if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
            m.extend(e);
        }
        v
    }

    async fn apply(&mut self, ws: &mut Ws, cmd: Command) -> Result<(), String> {
        let twilio = self.format == Some(StreamFormat::Twilio);
        match cmd {
            Command::Tone { hz, ms } => {
                let rate = self.rate();
                let mut g = ToneGenerator::new(rate, &[(hz, self.s.opts.amplitude)]);
                let mut pcm = vec![0i16; (rate as u64 * ms / 1000) as usize];
                g.fill(&mut pcm);
                self.queue_pcm(&pcm);
            }
            Command::Silence { ms } => {
                let pcm = vec![0i16; (self.rate() as u64 * ms / 1000) as usize];
                self.queue_pcm(&pcm);
            }
            Command::Pcm(pcm) => self.queue_pcm(&pcm),
            Command::Mark(name) => {
                let extra = if twilio {
                    json!({"mark": {"name": name}})
                } else {
                    json!({"name": name})
                };
                let v = self.control("mark", extra);
                self.out.push_back(Out::Control("mark", v));
            }
            Command::Hangup => {
                let v = self.control("hangup", json!({}));
                self.out.push_back(Out::Control("hangup", v));
            }
            Command::Transfer(target) => {
                let v = self.control("transfer", json!({"target": target}));
                self.out.push_back(Out::Control("transfer", v));
            }
            Command::Text(t) => {
                let v = serde_json::from_str(&t).unwrap_or(Value::String(t));
                self.out.push_back(Out::Control("text", v));
            }
            Command::Clear => {
                let dropped = self
                    .out
                    .iter()
                    .filter(|o| matches!(o, Out::Frame(_)))
                    .count();
                self.out.clear();
                let v = self.control("clear", json!({}));
                ws.send(Message::Text(v.to_string().into()))
                    .await
                    .map_err(|e| e.to_string())?;
                self.emit(AgentEvent::Sent {
                    conn: self.id,
                    at: now(),
                    kind: "clear".into(),
                    frames: dropped,
                });
            }
            // Handled in `run`.
            Command::Close | Command::Crash | Command::Stall => {}
        }
        Ok(())
    }

    /// Sends up to a burst of queued frames, and the control messages up to
    /// the next frame beyond the burst.
    async fn burst(&mut self, ws: &mut Ws) -> Result<(), String> {
        let mut frames = 0usize;
        let limit = self.s.opts.pace.frames.max(1);
        while let Some(item) = self.out.front() {
            match item {
                Out::Frame(_) if frames >= limit => break,
                Out::Frame(f) => {
                    let msg = self.audio_message(f);
                    self.out.pop_front();
                    ws.feed(msg).await.map_err(|e| e.to_string())?;
                    frames += 1;
                }
                Out::Control(kind, v) => {
                    let kind = *kind;
                    let text = v.to_string();
                    self.out.pop_front();
                    if frames > 0 {
                        ws.flush().await.map_err(|e| e.to_string())?;
                        self.sent_audio(frames);
                        frames = 0;
                    }
                    ws.send(Message::Text(text.into()))
                        .await
                        .map_err(|e| e.to_string())?;
                    self.emit(AgentEvent::Sent {
                        conn: self.id,
                        at: now(),
                        kind: kind.into(),
                        frames: 0,
                    });
                }
            }
        }
        if frames > 0 {
            ws.flush().await.map_err(|e| e.to_string())?;
            self.sent_audio(frames);
        }
        Ok(())
    }

    fn sent_audio(&self, frames: usize) {
        self.emit(AgentEvent::Sent {
            conn: self.id,
            at: now(),
            kind: "audio".into(),
            frames,
        });
    }

    fn audio_message(&self, pcm: &[i16]) -> Message {
        match self.format {
            Some(StreamFormat::Twilio) => {
                let mut ulaw = vec![0u8; pcm.len()];
                let n = g711::ulaw_encode(pcm, &mut ulaw);
                let payload = base64::engine::general_purpose::STANDARD.encode(&ulaw[..n]);
                let v = json!({"event": "media", "streamSid": self.stream_sid, "media": {"payload": payload}});
                Message::Text(v.to_string().into())
            }
            _ => {
                let mut b = Vec::with_capacity(pcm.len() * 2);
                for s in pcm {
                    b.extend_from_slice(&s.to_le_bytes());
                }
                Message::Binary(Bytes::from(b))
            }
        }
    }
}
