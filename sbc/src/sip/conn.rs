//! One stream connection (TCP, or TLS over it): a task that frames what it reads
//! with the core's `StreamFramer`, hands complete messages to the endpoint, and
//! writes what the endpoint queues. It answers keep-alive pings itself (RFC 5626
//! section 3.5.1) and closes on framing errors, idleness or a peer too slow to
//! take what we write.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sip_bridge::sip::framing::{Framed, FramingError, PONG, StreamFramer};
use sip_bridge::sip::message::Transport;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Identifies a connection inside the endpoint (`Peer::conn`).
pub(crate) type ConnId = u64;

/// What connection tasks tell the endpoint.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// An outgoing connection is up; queued messages can go.
    Connected {
        id: ConnId,
        addr: SocketAddr,
        writer: mpsc::Sender<Bytes>,
    },
    /// An outgoing connection could not be made.
    Failed { addr: SocketAddr },
    /// A complete SIP message.
    Message {
        id: ConnId,
        addr: SocketAddr,
        transport: Transport,
        bytes: Bytes,
    },
    /// A message that could not be framed: answer it (400/513) if possible, then the
    /// connection closes.
    Broken {
        addr: SocketAddr,
        error: FramingError,
    },
    /// The connection is gone.
    Closed { id: ConnId },
}

/// Connection limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    pub max_message: usize,
    pub idle: Duration,
}

/// Runs a connection until it closes. `writes` carries what the endpoint sends.
pub(crate) async fn run<S>(
    stream: S,
    id: ConnId,
    addr: SocketAddr,
    transport: Transport,
    limits: ConnLimits,
    events: mpsc::UnboundedSender<ConnEvent>,
    mut writes: mpsc::Receiver<Bytes>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut framer = StreamFramer::new(limits.max_message);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = tokio::time::timeout(limits.idle, rd.read(&mut buf)) => {
                let n = match r {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break, // closed, failed, or idle
                    Ok(Ok(n)) => n,
                };
                if let Err(error) = framer.push(&buf[..n]) {
                    let _ = events.send(ConnEvent::Broken { addr, error });
                    break;
                }
                loop {
                    match framer.next_item() {
                        Ok(Some(Framed::Message(bytes))) => {
                            if events.send(ConnEvent::Message { id, addr, transport, bytes }).is_err() {
                                return;
                            }
                        }
                        Ok(Some(Framed::Ping)) => {
                            if wr.write_all(PONG).await.is_err() {
                                break;
                            }
                        }
                        Ok(Some(Framed::Pong)) => {}
                        Ok(None) => break,
                        Err(error) => {
                            let _ = events.send(ConnEvent::Broken { addr, error });
                            let _ = events.send(ConnEvent::Closed { id });
                            return;
                        }
                    }
                }
            }
            w = writes.recv() => {
                let Some(bytes) = w else { break };
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = wr.shutdown().await;
    let _ = events.send(ConnEvent::Closed { id });
}
