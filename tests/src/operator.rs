//! A headless browser operator for system tests: the SDK's signalling over
//! the sbc's WebSocket (`/v1/operator`: `hello` with a token, `online` on its
//! numbers, a `ping` every 10 s). It rings and hears how its calls end
//! (`taken_by_other` when a phone or another node's operator answered first),
//! and it can accept with a real WebRTC offer (str0m's) whose media never
//! flows: enough to race for a call and to hold one, not to hear it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sip_bridge::token::{TokenGrant, TokenIssuer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::sbc_process::{TEST_TOKEN_SECRET, wait_until};

/// One operator's signalling session, on its own thread.
#[derive(Debug)]
pub struct HeadlessOperator {
    messages: Arc<Mutex<Vec<Value>>>,
    send: mpsc::UnboundedSender<Value>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl HeadlessOperator {
    /// Connects to the sbc's HTTP listener `http` as operator `op` and goes
    /// online on `numbers`; waits until the sbc said `ready` and acknowledged
    /// `online`. Panics (naming what) when it cannot.
    pub fn online(http: SocketAddr, op: &str, numbers: &[&str]) -> HeadlessOperator {
        let issuer = TokenIssuer::new(TEST_TOKEN_SECRET.as_bytes());
        let now = sbc::clock::Clock::unix_secs();
        let (token, _) = issuer
            .issue(
                now,
                &TokenGrant {
                    operator_ref: op.into(),
                    display_name: op.into(),
                    numbers: numbers.iter().map(|n| n.to_string()).collect(),
                    ttl_secs: None,
                    capabilities: Vec::new(),
                },
            )
            .expect("a test token");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (send, mut outbox) = mpsc::unbounded_channel::<Value>();
        let sink = Arc::clone(&messages);
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gone = Arc::clone(&closed);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let Ok(tcp) = TcpStream::connect(http).await else {
                    return;
                };
                let url = format!("ws://{http}/v1/operator");
                let Ok((ws, _)) = tokio_tungstenite::client_async(url, tcp).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                let mut ping = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        m = rx.next() => match m {
                            Some(Ok(Message::Text(t))) => {
                                if let Ok(v) = serde_json::from_str::<Value>(&t) {
                                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                        out = outbox.recv() => match out {
                            Some(v) => {
                                if tx.send(Message::text(v.to_string())).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                        _ = ping.tick() => {
                            let p = json!({"type": "ping"}).to_string();
                            if tx.send(Message::text(p)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                gone.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        });
        let o = HeadlessOperator {
            messages,
            send,
            closed,
        };
        o.send(json!({"type": "hello", "token": token, "protocol": 1}));
        o.wait("ready", |m| m["type"] == "ready");
        o.send(json!({"type": "online", "numbers": numbers, "ref": "online"}));
        o.wait("online accepted", |m| {
            m["ref"] == "online" && m["accepted"].as_array().is_some_and(|a| !a.is_empty())
        });
        o
    }

    /// Accepts call `call_id` with a fresh WebRTC audio offer (Opus), as the
    /// SDK does.
    #[expect(
        clippy::disallowed_methods,
        reason = "str0m's clock; this offer is never driven"
    )]
    pub fn accept(&self, call_id: &str) {
        use str0m::media::{Direction, MediaKind};
        let mut rtc = str0m::Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(std::time::Instant::now());
        let host = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        if let Ok(c) = str0m::Candidate::host(host, "udp") {
            rtc.add_local_candidate(c);
        }
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let Some((offer, _)) = change.apply() else {
            return;
        };
        self.send(json!({"type": "accept", "callId": call_id, "sdp": offer.to_sdp_string()}));
    }

    /// Whether its WebSocket has closed (either side, or the connection broke).
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one signalling message.
    pub fn send(&self, msg: Value) {
        let _ = self.send.send(msg);
    }

    /// Every message the sbc sent, in order.
    pub fn messages(&self) -> Vec<Value> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The first message satisfying `want`, waiting up to 30 s; panics naming
    /// `what` and listing what came.
    pub fn wait(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(Duration::from_secs(30), || {
            found = self.messages().into_iter().find(|m| want(m));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("operator: no {what}; got {:?}", self.messages()))
    }
}
