//! The WebSocket client of one AI agent leg: connects (with a timeout and the
//! configured headers), then moves frames between the agent and the call's media
//! task. A stalled agent (its socket not taking our frames for seconds) or a
//! silent one (no pong) is closed, and the media task hears why, so the call can
//! move on instead of leaving the caller in silence.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sip_bridge::bridge::LegKey;
use sip_bridge::stream::AgentMessage;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::inbox::{AgentLink, MediaIn};

/// Opening the connection (TCP, TLS and the upgrade) may take this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames we hold for a slow agent (5 s of audio) before calling it stalled.
const QUEUE: usize = 250;
/// Ping interval; no frame at all from the agent for three intervals closes it.
const PING: Duration = Duration::from_secs(5);

/// Connects to `url` and runs the link; reports to `media` as
/// `StreamUp`/`StreamMessage`/`StreamClosed`.
pub fn spawn(
    leg: LegKey,
    url: String,
    headers: Vec<(String, String)>,
    media: mpsc::UnboundedSender<MediaIn>,
) {
    tokio::spawn(async move {
        let reason = match run(leg, &url, &headers, &media).await {
            Ok(()) => "closed by the agent".to_string(),
            Err(e) => e,
        };
        let _ = media.send(MediaIn::StreamClosed { leg, reason });
    });
}

/// A WebSocket to `url` with `headers`, within [`CONNECT_TIMEOUT`]; errors
/// name `who` (an AI agent's, a media fork's consumer's).
pub(crate) async fn connect(
    url: &str,
    headers: &[(String, String)],
    who: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("bad {who} URL: {e}"))?;
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| format!("bad header {k}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("bad header {k}: {e}"))?;
        req.headers_mut().insert(name, value);
    }
    // Nagle off: a 20 ms frame must not wait for the peer's delayed ACK of the
    // previous one (measured: a quarter of the frames arrived 20-40 ms late, in pairs).
    let connect = tokio_tungstenite::connect_async_with_config(req, None, true);
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("{who} did not connect in time"))?
        .map_err(|e| format!("{who} connection failed: {e}"))?;
    Ok(ws)
}

async fn run(
    leg: LegKey,
    url: &str,
    headers: &[(String, String)],
    media: &mpsc::UnboundedSender<MediaIn>,
) -> Result<(), String> {
    let ws = connect(url, headers, "agent").await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<AgentMessage>(QUEUE);
    if media
        .send(MediaIn::StreamUp {
            leg,
            link: AgentLink::new(tx),
        })
        .is_err()
    {
        return Ok(());
    }
    let mut ping = tokio::time::interval(PING);
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else {
                    // The call let go of the leg: say goodbye.
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(());
                };
                let frame = match out {
                    AgentMessage::Text(t) => Message::Text(t.into()),
                    AgentMessage::Binary(b) => Message::Binary(b),
                };
                sink.send(frame).await.map_err(|e| format!("agent write failed: {e}"))?;
            }
            msg = stream.next() => {
                silent_ticks = 0;
                match msg {
                    Some(Ok(Message::Text(t))) => {
                        let _ = media.send(MediaIn::StreamMessage { leg, msg: AgentMessage::Text(t.to_string()) });
                    }
                    Some(Ok(Message::Binary(b))) => {
                        let _ = media.send(MediaIn::StreamMessage { leg, msg: AgentMessage::Binary(b) });
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {} // ping/pong
                    Some(Err(e)) => return Err(format!("agent read failed: {e}")),
                }
            }
            _ = ping.tick() => {
                silent_ticks += 1;
                if silent_ticks > 3 {
                    return Err("agent stopped answering pings".into());
                }
                sink.send(Message::Ping(Bytes::new())).await.map_err(|e| format!("agent write failed: {e}"))?;
            }
        }
    }
}
