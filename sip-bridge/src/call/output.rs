//! What a call asks of the world around it. The bridge applies each output in
//! order: SIP work through the one user agent, commands to the call's media
//! session, messages to operators, presence marks, routing questions and events.

use super::event::CallEvent;
use super::route::RouteFacts;
use crate::contract::{LegKey, MediaCommand};
use crate::signalling::ServerMessage;
use crate::sip::dialog::InviteParams;

/// Work on one SIP leg of the call. A failed [`SipAction::Invite`] comes back
/// to the call as [`super::SipLegEvent::Failed`], so the call never holds a UA id.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SipAction {
    /// Start the leg: an INVITE.
    Invite(Box<InviteParams>),
    /// Answer the leg's INVITE (provisional or final).
    Respond {
        /// Status.
        status: u16,
        /// SDP body.
        sdp: Option<String>,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// End it: CANCEL, BYE or a final response, as the leg's state wants.
    Hangup,
    /// End a leg that rang and lost to another answer: its CANCEL says
    /// `Call completed elsewhere` (RFC 3326).
    HangupElsewhere,
    /// Drop a leg whose peer is a dead node, sending nothing (nobody would
    /// answer; its transaction would wait 32 s).
    Forget,
    /// ACK a 2xx that carried an offer, with our answer (`None`: the offer
    /// was unusable; a [`SipAction::Hangup`] follows).
    Ack {
        /// SDP answer.
        sdp: Option<String>,
    },
    /// A re-INVITE with this offer.
    Reinvite {
        /// SDP offer.
        sdp: String,
    },
    /// An UPDATE with this offer (RFC 3311), or a re-INVITE when the peer
    /// does not allow UPDATE.
    Update {
        /// SDP offer.
        sdp: String,
    },
    /// Answer the peer's in-dialog offer.
    AnswerOffer {
        /// Status (2xx with `sdp`, or a failure).
        status: u16,
        /// SDP answer.
        sdp: Option<String>,
    },
    /// Answer the peer's REFER (202, or a refusal).
    AnswerRefer {
        /// Status.
        status: u16,
    },
    /// Tell the referrer how the referred call goes (a NOTIFY with this
    /// status line; `last` ends the subscription).
    Notify {
        /// Status of the referred call.
        status: u16,
        /// Its reason phrase.
        reason: String,
        /// The final one.
        last: bool,
    },
    /// Ask the peer to call `refer_to` itself (a REFER with a subscription,
    /// RFC 3515): blind transfer by its trunk.
    Refer {
        /// The Refer-To URI.
        refer_to: String,
    },
    /// An INFO (DTMF relay).
    Info {
        /// Content-Type.
        content_type: String,
        /// Body.
        body: String,
    },
}

/// One thing the call wants done. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallOutput {
    /// SIP work on a leg.
    Sip {
        /// The leg.
        leg: LegKey,
        /// What to do.
        action: SipAction,
    },
    /// A command for the call's media session.
    Media(MediaCommand),
    /// A message to an operator (by operatorRef), if connected.
    Operator {
        /// operatorRef.
        op: String,
        /// The message.
        msg: ServerMessage,
    },
    /// The operator is now busy with this call.
    Busy {
        /// operatorRef.
        op: String,
    },
    /// The operator is done with this call.
    Free {
        /// operatorRef.
        op: String,
    },
    /// A SIP leg's RTP port goes back to the pool.
    ReleasePort(u16),
    /// Ask the external router for a plan.
    Route(RouteFacts),
    /// A call event.
    Event(CallEvent),
}
