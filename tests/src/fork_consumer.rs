//! A test consumer of live media forks: a WebSocket server (a thread per
//! connection, blocking) that takes either framing, keeps what it got per
//! track with arrival times, and "transcribes" without any model: every half
//! second of audio it sends back an insight naming the dominant frequency of
//! the customer's track (`{"event":"insight","kind":"transcript","track":
//! "inbound","text":"440 Hz"}`), and a hint for each DTMF digit it is told
//! of. It can also stop reading (a stalled consumer) or drop the connection
//! (a crash) after some frames.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use media_core::analysis::dominant_frequency;
use media_core::codec::g711;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

/// What the consumer does with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Reads everything, answers with insights.
    Normal = 0,
    /// Stops reading after 50 frames (1 s), holding the connection open.
    Stall = 1,
    /// Drops the connection (no close frame) after 50 frames, once; later
    /// connections are read normally.
    Crash = 2,
}

/// One audio frame as it arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// When (this process's clock).
    pub at: Instant,
    /// Its connection (1, 2, ...).
    pub conn: u32,
}

/// Everything the consumer got.
#[derive(Debug, Default)]
pub struct Log {
    /// Connections taken.
    pub connections: u32,
    /// Each connection's `start` (native) or `start` event (Twilio).
    pub starts: Vec<Value>,
    /// Every other JSON message, in order.
    pub events: Vec<Value>,
    /// Audio per track (native channel 1/2, Twilio inbound/outbound), PCM.
    pub tracks: [Vec<i16>; 2],
    /// Native: bytes of each binary frame. Twilio: bytes of each payload.
    pub frame_bytes: Vec<usize>,
    /// Arrival of each frame (native) or each inbound/first-track media.
    pub arrivals: Vec<Arrival>,
    /// Twilio: (track, chunk, timestamp) of every media message.
    pub media: Vec<(String, u64, u64)>,
    /// Insights sent back.
    pub insights_sent: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct ForkConsumer {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
}

#[allow(
    clippy::disallowed_methods,
    reason = "a test consumer timestamps arrivals on the wall clock"
)]
fn now() -> Instant {
    Instant::now()
}

impl ForkConsumer {
    /// Listens on `ip` (a free port) in `mode`.
    pub fn start(ip: std::net::IpAddr, mode: Mode) -> ForkConsumer {
        ForkConsumer::start_on(SocketAddr::new(ip, 0), mode)
    }

    /// Listens on `addr` in `mode`.
    pub fn start_on(addr: SocketAddr, mode: Mode) -> ForkConsumer {
        let listener = TcpListener::bind(addr).expect("bind the fork consumer");
        let addr = listener.local_addr().expect("its address");
        let log = Arc::new(Mutex::new(Log::default()));
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, m, s) = (log.clone(), mode.clone(), stop.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = tcp else { continue };
                let conn = {
                    let mut g = l.lock().unwrap_or_else(|e| e.into_inner());
                    g.connections += 1;
                    g.connections
                };
                let (l, m) = (l.clone(), m.clone());
                std::thread::spawn(move || serve(tcp, conn, &l, &m));
            }
        });
        ForkConsumer {
            addr,
            log,
            mode,
            stop,
        }
    }

    /// `ws://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// What it got so far.
    pub fn log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Later connections are treated so.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

impl Drop for ForkConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(tcp: TcpStream, conn: u32, log: &Mutex<Log>, shared_mode: &AtomicU8) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tungstenite::accept(tcp) else {
        return;
    };
    let mode = match shared_mode.load(Ordering::SeqCst) {
        1 => Mode::Stall,
        2 => Mode::Crash,
        _ => Mode::Normal,
    };
    let mut channels = 2usize;
    let mut rate = 8000u32;
    let mut frames = 0u64;
    let mut since_insight = 0usize;
    loop {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let mut g = log.lock().unwrap_or_else(|e| e.into_inner());
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                match v["event"].as_str() {
                    Some("start") if v.get("start").is_some() => {
                        let tracks = v["start"]["tracks"].as_array().map_or(2, Vec::len);
                        channels = tracks;
                        rate = 8000;
                        g.starts.push(v);
                    }
                    Some("start") => {
                        channels = v["channels"].as_array().map_or(2, Vec::len);
                        rate = v["rate"].as_u64().unwrap_or(8000) as u32;
                        g.starts.push(v);
                    }
                    Some("media") => {
                        let track = v["media"]["track"].as_str().unwrap_or("").to_string();
                        let chunk = v["media"]["chunk"]
                            .as_str()
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        let ts = v["media"]["timestamp"]
                            .as_str()
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        let payload = base64::engine::general_purpose::STANDARD
                            .decode(v["media"]["payload"].as_str().unwrap_or(""))
                            .unwrap_or_default();
                        let c = usize::from(track == "outbound" && channels == 2);
                        g.tracks[c].extend(payload.iter().map(|b| g711::ulaw_decode_sample(*b)));
                        g.frame_bytes.push(payload.len());
                        if c == 0 {
                            g.arrivals.push(Arrival { at: now(), conn });
                            frames += 1;
                            since_insight += 1;
                        }
                        g.media.push((track, chunk, ts));
                    }
                    Some("dtmf") | Some("dtmf_digit") => {
                        let digit = v["dtmf"]["digit"]
                            .as_str()
                            .or(v["detail"].as_str())
                            .unwrap_or("?")
                            .to_string();
                        g.events.push(v);
                        drop(g);
                        let hint = json!({"event": "insight", "kind": "hint", "text": format!("digit {digit}")});
                        let _ = ws.send(Message::Text(hint.to_string().into()));
                        continue;
                    }
                    _ => g.events.push(v),
                }
            }
            Message::Binary(b) => {
                let pcm: Vec<i16> = b
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]))
                    .collect();
                for (c, track) in g.tracks.iter_mut().enumerate().take(channels) {
                    track.extend(pcm.iter().skip(c).step_by(channels));
                }
                g.frame_bytes.push(b.len());
                g.arrivals.push(Arrival { at: now(), conn });
                frames += 1;
                since_insight += 1;
            }
            Message::Close(_) => return,
            _ => {}
        }
        // Half a second of the customer's track: what it "says".
        if since_insight >= 25 && !g.tracks[0].is_empty() {
            since_insight = 0;
            let r = if g.media.is_empty() { rate } else { 8000 };
            let take = (r as usize / 2).min(g.tracks[0].len());
            let tail = &g.tracks[0][g.tracks[0].len() - take..];
            let f = dominant_frequency(tail, r, 100.0, 3800.0);
            g.insights_sent += 1;
            drop(g);
            let insight = json!({
                "event": "insight",
                "kind": "transcript",
                "track": "inbound",
                "text": format!("{:.0} Hz", (f / 10.0).round() * 10.0),
            });
            let _ = ws.send(Message::Text(insight.to_string().into()));
        } else {
            drop(g);
        }
        if frames >= 50 && mode != Mode::Normal {
            match mode {
                // Holds the socket without reading until the sbc gives up on it.
                Mode::Stall => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
                // Gone without a close frame; the next connection is read.
                _ => {
                    shared_mode.store(Mode::Normal as u8, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}
