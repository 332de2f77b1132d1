//! The one UDP port every browser leg shares: a task that reads datagrams,
//! demultiplexes them (ICE ufrag for STUN, then the address ICE validated) and
//! hands them to the owning call's media task. Datagrams no leg claims are
//! dropped here; each leg checks again (`WebRtcLeg::accepts`) before DTLS/SRTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sip_bridge::bridge::LegKey;
use sip_bridge::webrtc::{MuxConfig, MuxCredentials, WebRtcMux};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::inbox::MediaIn;

/// Changes to the routing table, from media tasks.
#[derive(Debug)]
pub enum MuxCmd {
    /// Route a leg's traffic to `to`.
    Insert {
        /// (call number, leg).
        key: (u64, LegKey),
        /// ICE credentials.
        credentials: MuxCredentials,
        /// The call's media task.
        to: mpsc::UnboundedSender<MediaIn>,
    },
    /// Forget a leg.
    Remove {
        /// (call number, leg).
        key: (u64, LegKey),
    },
}

/// The shared port, for media tasks.
#[derive(Clone, Debug)]
pub struct WebRtcPort {
    /// Send from here.
    pub socket: Arc<UdpSocket>,
    /// The bound address.
    pub local: SocketAddr,
    /// Routing changes.
    pub mux: mpsc::UnboundedSender<MuxCmd>,
}

impl WebRtcPort {
    /// Binds `addr` and starts the demultiplexing task.
    pub async fn start(
        addr: SocketAddr,
    ) -> std::io::Result<(WebRtcPort, tokio::task::JoinHandle<()>)> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let local = socket.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(socket.clone(), local, rx));
        Ok((
            WebRtcPort {
                socket,
                local,
                mux: tx,
            },
            task,
        ))
    }
}

async fn run(socket: Arc<UdpSocket>, local: SocketAddr, mut cmds: mpsc::UnboundedReceiver<MuxCmd>) {
    let mut mux: WebRtcMux<(u64, LegKey)> = WebRtcMux::new(MuxConfig::default());
    let mut targets: HashMap<(u64, LegKey), mpsc::UnboundedSender<MediaIn>> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let data = &buf[..n];
                if let Some(key) = mux.route(from, data)
                    && let Some(to) = targets.get(&key)
                {
                    let _ = to.send(MediaIn::WebRtc { leg: key.1, from, to: local, data: Bytes::copy_from_slice(data) });
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(MuxCmd::Insert { key, credentials, to }) => {
                    if mux.insert(key, credentials).is_ok() {
                        targets.insert(key, to);
                    }
                }
                Some(MuxCmd::Remove { key }) => {
                    mux.remove(key);
                    targets.remove(&key);
                }
                None => return,
            },
        }
    }
}
