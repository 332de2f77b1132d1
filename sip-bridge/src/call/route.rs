//! Routing per call is a question, not a callback: the call emits
//! [`RouteFacts`] and waits (at most [`ROUTE_TIMEOUT`], then its static plan)
//! for a [`RouteDecision`], which the driver answers from another task.

use std::time::Duration;

use super::event::Direction;
use crate::contract::CallId;
use crate::plan::DialPlan;

/// How long a call waits for an external router before its static plan applies.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

/// SIP headers passed to an external router (plus every `X-` header).
pub(crate) const ROUTED_HEADERS: [&str; 4] = [
    "P-Asserted-Identity",
    "Diversion",
    "Referred-By",
    "User-Agent",
];

/// What an external router is told about a call (`sbc`'s `Router`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteFacts {
    /// The call.
    pub call_id: CallId,
    /// Inbound from a trunk, or dialled by an operator.
    pub direction: Direction,
    /// Caller.
    pub from: String,
    /// Called number or target.
    pub to: String,
    /// Our number id involved.
    pub number: Option<String>,
    /// The trunk it came from.
    pub trunk: Option<String>,
    /// The operator who dialled.
    pub operator: Option<String>,
    /// Selected SIP headers (P-Asserted-Identity, Diversion, X-...).
    pub headers: Vec<(String, String)>,
    /// What the static configuration would do.
    pub default_plan: DialPlan,
    /// The question is where a transfer of the live call goes (a REFER's
    /// target, in `to`), not where the call goes: only the plan's first step
    /// is rung, and a rejection fails the transfer (its NOTIFY carries the
    /// status) while the call goes on.
    pub transfer: bool,
}

/// A router's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteDecision {
    /// The static plan.
    Default,
    /// This plan.
    Plan(DialPlan),
    /// Refuse the call with this SIP status (inbound) or as `failed` (outbound).
    Reject(u16),
}
