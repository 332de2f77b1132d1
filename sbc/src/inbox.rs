//! The messages between the SBC's tasks, as data: [`ControlIn`] into the control
//! task, [`MediaIn`] into a call's media task, [`AgentLink`] from a media task to
//! its agent's socket. A leaf: it names no other module of this crate, so every
//! task may depend on it and no task needs another task's internals (the way
//! quinn's endpoint and connections talk through `EndpointEvent` and
//! `ConnectionEvent`).

use std::net::SocketAddr;

use bytes::Bytes;
use sip_bridge::bridge::{
    ApiError, ApiReply, ApiRequest, CallId, LegKey, MediaCommand, MediaEvent, RouteDecision,
};
use sip_bridge::presence::SessionId;
use sip_bridge::signalling::SessionOutput;
use sip_bridge::sip::message::Peer;
use sip_bridge::stream::AgentMessage;
use tokio::sync::{mpsc, oneshot};

/// Every input of the control task (SIP, signalling and call control, one owner).
/// It takes them one at a time in `ControlCore::handle`, so they can be listed,
/// logged and replayed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ControlIn {
    /// A SIP message: a datagram, or one framed off a stream connection.
    Sip {
        /// The message.
        bytes: Bytes,
        /// Its sender (and the connection it came on).
        from: Peer,
    },
    /// The control task's timer is due (`ControlCore`'s `poll_timeout`).
    Timeout,
    /// The backend's answer about a phone account.
    Lookup {
        /// The username asked about.
        username: String,
        /// What it said.
        answer: sip_bridge::registrar::Lookup,
    },
    /// An operator WebSocket opened; what the bridge says to it goes to `tx`.
    WsOpen {
        /// Its signalling session.
        session: SessionId,
        /// Its outbound queue (bounded: a socket that does not drain it is closed).
        tx: WsSender,
    },
    /// A text frame from an operator WebSocket.
    WsText {
        /// The session.
        session: SessionId,
        /// The frame.
        text: String,
    },
    /// A binary frame from an operator WebSocket (refused by the protocol).
    WsBinary {
        /// The session.
        session: SessionId,
        /// Its length.
        len: usize,
    },
    /// An operator WebSocket closed.
    WsClosed {
        /// The session.
        session: SessionId,
    },
    /// An event from a call's media task.
    Media {
        /// The call (`c-N`).
        call: CallId,
        /// What happened.
        event: MediaEvent,
    },
    /// A router's decision for a call waiting to be routed.
    Route {
        /// The call.
        call: CallId,
        /// The decision.
        decision: RouteDecision,
    },
    /// A request of the REST call control by an API key allowed `numbers`
    /// (empty: all).
    Api {
        /// The key's numbers.
        numbers: Vec<String>,
        /// The request.
        req: Box<ApiRequest>,
        /// The answer.
        reply: oneshot::Sender<Result<ApiReply, ApiError>>,
    },
    /// Stop (`true`) or resume taking new calls: INVITEs get 503, dials an error.
    Drain(bool),
    /// The other nodes of the cluster and who is ready there (each heartbeat).
    Peers(sip_bridge::cluster::Peers),
    /// A node is dead (lease lapsed, no answer): forks of its calls end, or
    /// are carried on here.
    NodeLost(String),
    /// The anchor a dead owner left for one of our calls (`None`: none).
    Reanchor {
        /// Our call.
        call: sip_bridge::contract::CallId,
        /// The caller's dialog.
        snapshot: Option<sip_bridge::sip::dialog::snapshot::DialogSnapshot>,
    },
    /// SIP bytes to send as they are (a dead node's 503 to the proxy).
    Transmit {
        /// Where.
        to: sip_bridge::sip::message::Peer,
        /// What.
        bytes: bytes::Bytes,
    },
    /// End every call (shutdown past its deadline); replies how many there were.
    EndAll {
        /// The number of calls ended.
        reply: oneshot::Sender<usize>,
    },
    /// How the control task is doing.
    Status {
        /// The answer.
        reply: oneshot::Sender<ControlStatus>,
    },
    /// Stop the control task (its media tasks end with it).
    Shutdown,
}

/// The control task's figures, in answer to [`ControlIn::Status`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlStatus {
    /// Calls in progress.
    pub calls: usize,
    /// SIP legs (dialogs and INVITEs in progress) in the UA.
    pub sip_legs: usize,
    /// Media tasks running.
    pub media_tasks: usize,
    /// Operator WebSockets open.
    pub operator_sockets: usize,
    /// Operators present (browsers and phones).
    pub operators: usize,
    /// Taking no new calls.
    pub draining: bool,
    /// Number ids with an operator ready here (for the other nodes).
    pub ready_numbers: Vec<String>,
    /// Operators ready here.
    pub ready_operators: Vec<String>,
}

/// What media tasks and the router's tasks send to control on: unbounded, so
/// backpressure from control never reaches the media plane. (Their messages are
/// few: events per call, not per packet.)
pub type ControlTx = mpsc::UnboundedSender<ControlIn>;

/// The outbound queue of one operator WebSocket.
pub type WsSender = mpsc::Sender<SessionOutput>;

/// What a media task receives.
#[derive(Debug)]
#[non_exhaustive]
pub enum MediaIn {
    /// From control.
    Command(MediaCommand),
    /// From the shared WebRTC port, already routed to `leg`.
    WebRtc {
        /// The leg.
        leg: LegKey,
        /// The browser.
        from: SocketAddr,
        /// Our port.
        to: SocketAddr,
        /// The datagram.
        data: Bytes,
    },
    /// An agent's WebSocket is up.
    StreamUp {
        /// The leg.
        leg: LegKey,
        /// Where to send.
        link: AgentLink,
    },
    /// A message from an agent.
    StreamMessage {
        /// The leg.
        leg: LegKey,
        /// The message.
        msg: AgentMessage,
    },
    /// An agent's WebSocket is gone (or never came).
    StreamClosed {
        /// The leg.
        leg: LegKey,
        /// Why.
        reason: String,
    },
}

/// A call's media task's inbox.
pub type MediaTx = mpsc::UnboundedSender<MediaIn>;

/// What the media task uses to talk to the agent.
#[derive(Debug, Clone)]
pub struct AgentLink {
    tx: mpsc::Sender<AgentMessage>,
}

impl AgentLink {
    /// A link that queues into `tx` (bounded: an agent that falls behind stalls).
    pub fn new(tx: mpsc::Sender<AgentMessage>) -> Self {
        AgentLink { tx }
    }

    /// Queues a message; `false` when the agent has fallen behind (stalled).
    pub fn send(&self, msg: AgentMessage) -> bool {
        self.tx.try_send(msg).is_ok()
    }
}
