//! A party of a call: who it is to the call (role), where it stands (state), and
//! the leg that carries it (SIP dialog, operator's browser, AI agent, or a
//! built-in target). Each leg kind carries only its own data.

use media_core::Instant;

pub use crate::roles::{MonitorMode, Role};

use crate::contract::LegKey;
use crate::plan::Target;
use crate::sdp::NegotiatedAudio;

/// Where a party stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Offered, not answered.
    Ringing,
    /// In the call (the caller from the start; others once they answer).
    Joined,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SipState {
    /// INVITE sent or received, no final answer.
    Ringing,
    /// 2xx sent or received.
    Up,
    /// We asked it to end (CANCEL/BYE); waiting for the UA's `Terminated`.
    Ending,
}

/// A SIP dialog toward a carrier, a PBX or a phone.
#[derive(Clone, Debug)]
pub(crate) struct SipLeg {
    pub state: SipState,
    pub port: u16,
    pub trunk: Option<usize>,
    /// Failover position among the trunk's peers.
    pub attempt: usize,
    /// Our SDP (offer as UAC, answer as UAS), and its version.
    pub local_sdp: String,
    pub sdp_version: u64,
    pub negotiated: Option<NegotiatedAudio>,
    /// Its early media reaches the caller.
    pub early_media: bool,
    /// It put us on hold.
    pub remote_held: bool,
    /// We put it on hold (re-INVITE sendonly sent).
    pub held_by_us: bool,
    /// A SIP caller's offer while our answer to it has not gone out: it can
    /// still take the codec the target chose, so the two legs relay.
    pub open_offer: Option<String>,
    /// No offer went with the INVITE (late offer, RFC 3261 13.2.1): a SIP
    /// caller that sent none gets ours in the 200 and answers in the ACK; a
    /// target we sent none to (its trunk's `late_offer`) offers in its 2xx.
    pub late_offer: bool,
    /// Its peer is reached over IPv6: our SDP toward it names our IPv6 media
    /// address when we have one (a call may join an IPv4 and an IPv6 peer).
    pub ipv6: bool,
    /// A registered phone of this operator (it is the operator once it
    /// answers: busy, free, `operator:` in events).
    pub operator: Option<String>,
    /// Its media may latch to the first packet from this address (its SIP
    /// peer's) even when the SDP names another (NAT; `Latch`).
    pub latch_from: Option<std::net::IpAddr>,
    /// Another node of the cluster rung for its operators (see
    /// [`crate::cluster`]): its name.
    pub peer_node: Option<String>,
}

/// An operator's browser.
#[derive(Clone, Debug)]
pub(crate) struct OperatorLeg {
    pub op: String,
    /// The `ref` of the request that created its media (dial, accept, monitor,
    /// reoffer), for its `answer`.
    pub reference: Option<String>,
    /// The SDP answer went out.
    pub answered: bool,
    /// The operator put itself on hold.
    pub self_held: bool,
    /// Who added it to a live call, for its `incoming`.
    pub invited_by: Option<String>,
}

/// How a party is carried.
#[derive(Clone, Debug)]
pub(crate) enum Leg {
    Sip(SipLeg),
    Operator(OperatorLeg),
    /// An AI agent over WebSocket (media plane); answered when it connects.
    Agent,
    /// Built-in test target: the caller hears itself.
    Echo,
    /// Built-in test target: a tone.
    Tone(u32),
}

impl Leg {
    /// The wire name of the kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Leg::Sip(_) => "sip",
            Leg::Operator(_) => "operator",
            Leg::Agent => "agent",
            Leg::Echo => "echo",
            Leg::Tone(_) => "tone",
        }
    }
}

/// Why a party is in the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// It started the call.
    Caller,
    /// Rung by step `n` of the dial plan (first answer wins).
    Plan(usize),
    /// Added to the live call by `by` (a party, or the API), ringing until
    /// `deadline`; its answer joins everyone.
    Added {
        by: Option<LegKey>,
        reference: Option<String>,
        deadline: Instant,
        /// One request can ring several (every operator of a number): the
        /// first to answer joins, the others stop ringing.
        group: u32,
    },
    /// A supervisor monitoring the call.
    Monitor,
}

/// One party. See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Party {
    pub role: Role,
    pub stage: Stage,
    pub leg: Leg,
    pub origin: Origin,
    /// What it was rung as (`None` for the caller and supervisors).
    pub target: Option<Target>,
    /// It sends silence to the others.
    pub muted: bool,
    /// Held by someone in the call: it hears nothing, nobody hears it.
    pub held: bool,
    /// A supervisor's mode, and whom it coaches in `Whisper`.
    pub monitor: Option<(MonitorMode, Option<LegKey>)>,
    /// Its media leg exists in the media session.
    pub in_media: bool,
    /// A browser whose peer connection went away (a reload, a network change):
    /// it may come back with a new one (`reoffer`) until then, else it leaves.
    pub media_lost: Option<Instant>,
    pub joined_at: Option<Instant>,
    /// Display name (operators, a SIP caller's From).
    pub name: Option<String>,
    /// The party whose dialog it took over (RFC 3891 Replaces).
    pub replaced: Option<LegKey>,
}

impl Party {
    pub(crate) fn new(role: Role, leg: Leg, origin: Origin, target: Option<Target>) -> Party {
        Party {
            role,
            stage: Stage::Ringing,
            leg,
            origin,
            target,
            muted: false,
            held: false,
            monitor: None,
            in_media: false,
            media_lost: None,
            joined_at: None,
            name: None,
            replaced: None,
        }
    }

    /// The party it came from: who added it (or transferred to it), or the
    /// one it replaced.
    pub(crate) fn parent(&self) -> Option<LegKey> {
        match self.origin {
            Origin::Added { by: Some(b), .. } => Some(b),
            _ => self.replaced,
        }
    }

    pub(crate) fn joined(&self) -> bool {
        self.stage == Stage::Joined
    }

    pub(crate) fn ringing(&self) -> bool {
        self.stage == Stage::Ringing
    }

    pub(crate) fn sip(&self) -> Option<&SipLeg> {
        match &self.leg {
            Leg::Sip(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn sip_mut(&mut self) -> Option<&mut SipLeg> {
        match &mut self.leg {
            Leg::Sip(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn operator(&self) -> Option<&OperatorLeg> {
        match &self.leg {
            Leg::Operator(o) => Some(o),
            _ => None,
        }
    }

    pub(crate) fn operator_mut(&mut self) -> Option<&mut OperatorLeg> {
        match &mut self.leg {
            Leg::Operator(o) => Some(o),
            _ => None,
        }
    }

    /// The operator's ref, for operator legs.
    pub(crate) fn op(&self) -> Option<&str> {
        self.operator().map(|o| o.op.as_str())
    }

    /// The operator it is, in a browser or on a registered phone: busy while
    /// it is in the call.
    pub(crate) fn busy_operator(&self) -> Option<&str> {
        match &self.leg {
            Leg::Operator(o) => Some(&o.op),
            Leg::Sip(s) => s.operator.as_deref(),
            _ => None,
        }
    }

    /// Whether its presence keeps the call going: everyone but supervisors in
    /// listen or whisper mode.
    pub(crate) fn keeps_alive(&self) -> bool {
        !matches!(
            self.monitor,
            Some((MonitorMode::Listen | MonitorMode::Whisper, _))
        )
    }

    /// Whether it talks with the others as a full participant (not a silent or
    /// whispering supervisor).
    pub(crate) fn full_participant(&self) -> bool {
        self.keeps_alive()
    }

    /// Who answered, for events (`operator:alice`, `pstn:+1555...`).
    pub(crate) fn label(&self) -> String {
        match (&self.leg, &self.target) {
            (Leg::Operator(o), _) => format!("operator:{}", o.op),
            (
                Leg::Sip(SipLeg {
                    operator: Some(op), ..
                }),
                _,
            ) => format!("operator:{op}"),
            (_, Some(t)) => t.to_string(),
            _ => "unknown".into(),
        }
    }
}
