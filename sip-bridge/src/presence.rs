//! Operator presence: who is connected, on which numbers they take calls, who is
//! busy, and the reconnect grace period (`sbc/docs/protocol.md` section 4).
//!
//! One entry per `operatorRef`, whatever the number of WebSocket connections: a
//! newer connection replaces the older one. A lost connection leaves the operator
//! `reconnecting` for the grace period, keeping their availability and active
//! call; a `hello` within it resumes them, and past it they go offline (and the
//! layer above ends their call). Sans-IO: time comes in as `now`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use media_core::Instant;

use crate::contract::CallId;

/// A signalling connection, chosen by the driver.
pub type SessionId = u64;

/// An operator's state (protocol.md section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorState {
    /// Connected through this session.
    Online(SessionId),
    /// Connection lost; back within the deadline or offline.
    Reconnecting {
        /// When the grace period ends.
        until: Instant,
    },
}

#[derive(Clone, Debug)]
struct Operator {
    state: OperatorState,
    display_name: String,
    /// Number ids the token allows.
    allowed: BTreeSet<String>,
    /// Number ids taking calls.
    available: BTreeSet<String>,
    /// The active call (busy while set).
    active_call: Option<CallId>,
}

/// What [`Presence::connect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// An older session of the same operator, to close (4009).
    pub replaced: Option<SessionId>,
    /// The operator came back within the grace period: their call and
    /// availability were kept.
    pub resumed: bool,
    /// Their active call, if any.
    pub active_call: Option<CallId>,
}

/// Things the layer above must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The grace period ran out: the operator is offline; end their call.
    WentOffline {
        /// operatorRef.
        operator: String,
        /// Their active call, to end with `offline`.
        active_call: Option<CallId>,
    },
}

/// The registry. See the module docs.
#[derive(Debug)]
pub struct Presence {
    grace: Duration,
    max_operators: usize,
    operators: BTreeMap<String, Operator>,
    by_session: BTreeMap<SessionId, String>,
    events: VecDeque<PresenceEvent>,
    /// Operators with a registered phone: the numbers it takes calls on.
    phones: BTreeMap<String, BTreeSet<String>>,
    /// The call of an operator busy on a phone with no browser session.
    phone_calls: BTreeMap<String, CallId>,
    /// Counts changes that may change who is ready ([`Self::changes`]).
    changes: u64,
}

/// Presence refusals.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// Too many operators connected.
    #[error("too many operators")]
    Full,
    /// The session is not (or no longer) an operator's.
    #[error("unknown session")]
    UnknownSession,
    /// The operator already has an active call.
    #[error("operator busy")]
    Busy,
}

impl Presence {
    /// A registry with a reconnect grace period.
    pub fn new(grace: Duration, max_operators: usize) -> Self {
        Presence {
            grace,
            max_operators,
            operators: BTreeMap::new(),
            by_session: BTreeMap::new(),
            events: VecDeque::new(),
            phones: BTreeMap::new(),
            phone_calls: BTreeMap::new(),
            changes: 0,
        }
    }

    /// The operator's phone registered (its first binding): it takes calls
    /// on `numbers` by phone, beside any browser.
    pub fn set_phone(&mut self, operator: &str, numbers: &[String]) {
        self.changes += 1;
        self.phones
            .insert(operator.into(), numbers.iter().cloned().collect());
    }

    /// Its last phone binding went.
    pub fn clear_phone(&mut self, operator: &str) {
        self.changes += 1;
        self.phones.remove(operator);
    }

    /// Whether the operator has a registered phone.
    pub fn has_phone(&self, operator: &str) -> bool {
        self.phones.contains_key(operator)
    }

    /// Whether its phone takes calls on `number` and it is not busy.
    pub fn phone_ready_for(&self, operator: &str, number: &str) -> bool {
        self.phones
            .get(operator)
            .is_some_and(|n| n.contains(number))
            && self.active_call(operator).is_none()
    }

    /// Whether its phone can be rung now (an `operator:` target).
    pub fn phone_ready(&self, operator: &str) -> bool {
        self.has_phone(operator) && self.active_call(operator).is_none()
    }

    /// Whether its browser takes calls on `number` now.
    pub fn browser_ready_for(&self, operator: &str, number: &str) -> bool {
        self.active_call(operator).is_none()
            && self.operators.get(operator).is_some_and(|o| {
                matches!(o.state, OperatorState::Online(_)) && o.available.contains(number)
            })
    }

    /// Whether its browser can take a call now.
    pub fn browser_ready(&self, operator: &str) -> bool {
        self.active_call(operator).is_none()
            && self
                .operators
                .get(operator)
                .is_some_and(|o| matches!(o.state, OperatorState::Online(_)))
    }

    /// Operators known (online or reconnecting).
    pub fn len(&self) -> usize {
        self.operators.len()
    }

    /// No operator known.
    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }

    /// An authenticated `hello` from `session` for `operator`.
    pub fn connect(
        &mut self,
        session: SessionId,
        operator: &str,
        display_name: &str,
        allowed: &[String],
    ) -> Result<Connected, PresenceError> {
        self.changes += 1;
        let allowed: BTreeSet<String> = allowed.iter().cloned().collect();
        if let Some(op) = self.operators.get_mut(operator) {
            let (replaced, resumed) = match op.state {
                OperatorState::Online(old) => (Some(old), false),
                OperatorState::Reconnecting { .. } => (None, true),
            };
            if let Some(old) = replaced {
                self.by_session.remove(&old);
            }
            op.state = OperatorState::Online(session);
            op.display_name = display_name.to_string();
            // A fresh token may allow fewer numbers.
            op.available.retain(|n| allowed.contains(n));
            op.allowed = allowed;
            let active_call = op.active_call;
            self.by_session.insert(session, operator.to_string());
            return Ok(Connected {
                replaced,
                resumed: resumed || replaced.is_some(),
                active_call,
            });
        }
        if self.operators.len() >= self.max_operators {
            return Err(PresenceError::Full);
        }
        self.operators.insert(
            operator.to_string(),
            Operator {
                state: OperatorState::Online(session),
                display_name: display_name.to_string(),
                allowed,
                available: BTreeSet::new(),
                active_call: None,
            },
        );
        self.by_session.insert(session, operator.to_string());
        Ok(Connected {
            replaced: None,
            resumed: false,
            active_call: None,
        })
    }

    /// The connection of `session` is gone (closed, failed, or timed out).
    /// Operators with availability or a call wait in `reconnecting`; others leave.
    pub fn disconnect(&mut self, now: Instant, session: SessionId) {
        self.changes += 1;
        let Some(name) = self.by_session.remove(&session) else {
            return;
        };
        let Some(op) = self.operators.get_mut(&name) else {
            return;
        };
        if op.state != OperatorState::Online(session) {
            return;
        }
        if op.available.is_empty() && op.active_call.is_none() {
            self.operators.remove(&name);
            self.events.push_back(PresenceEvent::WentOffline {
                operator: name,
                active_call: None,
            });
        } else {
            op.state = OperatorState::Reconnecting {
                until: now + self.grace,
            };
        }
    }

    /// The operator of a session.
    pub fn operator_of(&self, session: SessionId) -> Option<&str> {
        self.by_session.get(&session).map(String::as_str)
    }

    /// The session an operator is online through.
    pub fn session_of(&self, operator: &str) -> Option<SessionId> {
        match self.operators.get(operator)?.state {
            OperatorState::Online(s) => Some(s),
            OperatorState::Reconnecting { .. } => None,
        }
    }

    /// An operator's state; `None` when offline.
    pub fn state(&self, operator: &str) -> Option<OperatorState> {
        self.operators.get(operator).map(|o| o.state)
    }

    /// Display name.
    pub fn display_name(&self, operator: &str) -> Option<&str> {
        self.operators
            .get(operator)
            .map(|o| o.display_name.as_str())
    }

    /// `online{numbers}` (ids already resolved): returns (accepted, refused as not
    /// allowed). Replaces the previous set.
    pub fn set_available(
        &mut self,
        session: SessionId,
        numbers: &[String],
    ) -> Result<(Vec<String>, Vec<String>), PresenceError> {
        self.changes += 1;
        let name = self
            .by_session
            .get(&session)
            .ok_or(PresenceError::UnknownSession)?;
        let op = self
            .operators
            .get_mut(name)
            .ok_or(PresenceError::UnknownSession)?;
        let (ok, refused): (Vec<String>, Vec<String>) = numbers
            .iter()
            .cloned()
            .partition(|n| op.allowed.contains(n));
        op.available = ok.iter().cloned().collect();
        Ok((op.available.iter().cloned().collect(), refused))
    }

    /// The numbers an operator takes calls on.
    pub fn available(&self, operator: &str) -> Vec<String> {
        self.operators
            .get(operator)
            .map_or_else(Vec::new, |o| o.available.iter().cloned().collect())
    }

    /// Whether the operator's token allows number `id`.
    pub fn allows(&self, operator: &str, id: &str) -> bool {
        self.operators
            .get(operator)
            .is_some_and(|o| o.allowed.contains(id))
    }

    /// Operators who can take a new call on `number` now: online (not
    /// reconnecting), available on it, and not busy. Sorted by operatorRef.
    pub fn ready_for(&self, number: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .operators
            .keys()
            .filter(|n| self.browser_ready_for(n, number))
            .chain(
                self.phones
                    .keys()
                    .filter(|n| self.phone_ready_for(n, number)),
            )
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// A count that moves whenever who is ready may have changed: a driver
    /// that tells other nodes (a cluster) compares it rather than the lists.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// What other nodes of a cluster need to ring here: the numbers with an
    /// operator ready, and the operators ready (in a browser or on a phone),
    /// each sorted and at most `max` long.
    pub fn ready_summary(&self, max: usize) -> (Vec<String>, Vec<String>) {
        let ready: Vec<String> = self
            .operators
            .keys()
            .chain(self.phones.keys())
            .filter(|op| self.is_ready(op))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(max)
            .collect();
        let mut numbers = BTreeSet::new();
        for op in &ready {
            if let Some(o) = self.operators.get(op).filter(|_| self.browser_ready(op)) {
                numbers.extend(o.available.iter().cloned());
            }
            if self.phone_ready(op) {
                numbers.extend(self.phones[op].iter().cloned());
            }
        }
        (numbers.into_iter().take(max).collect(), ready)
    }

    /// Whether `operator` can take a call now (for `operator:REF` targets),
    /// in a browser or on a phone.
    pub fn is_ready(&self, operator: &str) -> bool {
        self.browser_ready(operator) || self.phone_ready(operator)
    }

    /// Marks the operator busy with `call` (accepted, or dialled out).
    pub fn set_busy(&mut self, operator: &str, call: CallId) -> Result<(), PresenceError> {
        self.changes += 1;
        if !self.operators.contains_key(operator) && self.phones.contains_key(operator) {
            // On its phone, no browser: busy all the same.
            return match self.phone_calls.get(operator) {
                Some(c) if *c != call => Err(PresenceError::Busy),
                _ => {
                    self.phone_calls.insert(operator.into(), call);
                    Ok(())
                }
            };
        }
        let op = self
            .operators
            .get_mut(operator)
            .ok_or(PresenceError::UnknownSession)?;
        if op.active_call.is_some_and(|c| c != call) {
            return Err(PresenceError::Busy);
        }
        op.active_call = Some(call);
        Ok(())
    }

    /// The operator's call `call` ended.
    pub fn set_free(&mut self, operator: &str, call: CallId) {
        self.changes += 1;
        if self.phone_calls.get(operator) == Some(&call) {
            self.phone_calls.remove(operator);
        }
        let Some(op) = self.operators.get_mut(operator) else {
            return;
        };
        if op.active_call == Some(call) {
            op.active_call = None;
        }
        // A reconnecting operator without a call or availability has nothing to wait for.
        if matches!(op.state, OperatorState::Reconnecting { .. })
            && op.active_call.is_none()
            && op.available.is_empty()
        {
            self.operators.remove(operator);
            self.events.push_back(PresenceEvent::WentOffline {
                operator: operator.to_string(),
                active_call: None,
            });
        }
    }

    /// The operator's active call.
    pub fn active_call(&self, operator: &str) -> Option<CallId> {
        self.operators
            .get(operator)
            .and_then(|o| o.active_call)
            .or_else(|| self.phone_calls.get(operator).copied())
    }

    /// `offline`: no more calls on any number (the active call stays).
    pub fn clear_available(&mut self, session: SessionId) -> Result<(), PresenceError> {
        self.changes += 1;
        let name = self
            .by_session
            .get(&session)
            .ok_or(PresenceError::UnknownSession)?;
        if let Some(op) = self.operators.get_mut(name) {
            op.available.clear();
        }
        Ok(())
    }

    /// When [`Presence::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.operators
            .values()
            .filter_map(|o| match o.state {
                OperatorState::Reconnecting { until } => Some(until),
                OperatorState::Online(_) => None,
            })
            .min()
    }

    /// Ends grace periods that ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        // (A reconnecting operator is not ready: its expiry changes nothing.)
        let gone: Vec<String> = self
            .operators
            .iter()
            .filter(
                |(_, o)| matches!(o.state, OperatorState::Reconnecting { until } if until <= now),
            )
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(op) = self.operators.remove(&name) {
                self.events.push_back(PresenceEvent::WentOffline {
                    operator: name,
                    active_call: op.active_call,
                });
            }
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PresenceEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nums(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn at(s: u64) -> Instant {
        Instant::from_millis(s * 1000)
    }

    #[test]
    fn availability_only_for_allowed_numbers() {
        let mut p = Presence::new(Duration::from_secs(30), 100);
        p.connect(1, "alice", "Alice", &nums(&["support", "sales"]))
            .unwrap();
        let (ok, refused) = p.set_available(1, &nums(&["support", "billing"])).unwrap();
        assert_eq!((ok, refused), (nums(&["support"]), nums(&["billing"])));
        assert_eq!(p.ready_for("support"), nums(&["alice"]));
        assert!(p.ready_for("sales").is_empty());
        p.clear_available(1).unwrap();
        assert!(p.ready_for("support").is_empty());
        assert_eq!(
            p.set_available(9, &nums(&["support"])),
            Err(PresenceError::UnknownSession)
        );
    }

    #[test]
    fn busy_operators_are_skipped() {
        let mut p = Presence::new(Duration::from_secs(30), 100);
        for (s, n) in [(1, "alice"), (2, "bob")] {
            p.connect(s, n, n, &nums(&["support"])).unwrap();
            p.set_available(s, &nums(&["support"])).unwrap();
        }
        assert_eq!(p.ready_for("support"), nums(&["alice", "bob"]));
        p.set_busy("alice", CallId(1)).unwrap();
        assert_eq!(p.set_busy("alice", CallId(2)), Err(PresenceError::Busy));
        assert_eq!(p.ready_for("support"), nums(&["bob"]));
        assert!(!p.is_ready("alice") && p.is_ready("bob"));
        p.set_free("alice", CallId(9)); // another call: no effect
        assert!(!p.is_ready("alice"));
        p.set_free("alice", CallId(1));
        assert_eq!(p.ready_for("support"), nums(&["alice", "bob"]));
    }

    #[test]
    fn reconnect_within_grace_keeps_call_and_availability() {
        let mut p = Presence::new(Duration::from_secs(30), 100);
        p.connect(1, "alice", "Alice", &nums(&["support"])).unwrap();
        p.set_available(1, &nums(&["support"])).unwrap();
        p.set_busy("alice", CallId(1)).unwrap();
        p.disconnect(at(10), 1);
        assert_eq!(
            p.state("alice"),
            Some(OperatorState::Reconnecting { until: at(40) })
        );
        assert_eq!(p.poll_timeout(), Some(at(40)));
        assert!(
            p.ready_for("support").is_empty(),
            "a reconnecting operator gets no new calls"
        );
        p.handle_timeout(at(39));
        assert_eq!(p.poll_event(), None);
        let c = p.connect(2, "alice", "Alice", &nums(&["support"])).unwrap();
        assert_eq!(
            c,
            Connected {
                replaced: None,
                resumed: true,
                active_call: Some(CallId(1))
            }
        );
        assert_eq!(p.session_of("alice"), Some(2));
        assert_eq!(p.available("alice"), nums(&["support"]));
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn grace_over_goes_offline_with_the_call_to_end() {
        let mut p = Presence::new(Duration::from_secs(30), 100);
        p.connect(1, "alice", "Alice", &nums(&["support"])).unwrap();
        p.set_available(1, &nums(&["support"])).unwrap();
        p.set_busy("alice", CallId(1)).unwrap();
        p.disconnect(at(0), 1);
        p.handle_timeout(at(30));
        assert_eq!(
            p.poll_event(),
            Some(PresenceEvent::WentOffline {
                operator: "alice".into(),
                active_call: Some(CallId(1))
            })
        );
        assert_eq!(p.state("alice"), None);
        assert!(p.is_empty());
    }

    #[test]
    fn idle_operators_leave_at_once_and_newer_sessions_replace_older() {
        let mut p = Presence::new(Duration::from_secs(30), 100);
        p.connect(1, "alice", "Alice", &nums(&["support"])).unwrap();
        p.disconnect(at(0), 1);
        assert_eq!(p.state("alice"), None, "nothing to wait for");
        assert!(matches!(
            p.poll_event(),
            Some(PresenceEvent::WentOffline {
                active_call: None,
                ..
            })
        ));

        p.connect(1, "bob", "Bob", &nums(&["support"])).unwrap();
        let c = p.connect(2, "bob", "Bob", &nums(&["support"])).unwrap();
        assert_eq!(c.replaced, Some(1));
        assert_eq!(p.operator_of(1), None);
        // The replaced session's late disconnect changes nothing.
        p.disconnect(at(1), 1);
        assert_eq!(p.state("bob"), Some(OperatorState::Online(2)));
    }

    #[test]
    fn a_fresh_token_with_fewer_numbers_narrows_availability() {
        let mut p = Presence::new(Duration::from_secs(30), 100);
        p.connect(1, "alice", "Alice", &nums(&["support", "sales"]))
            .unwrap();
        p.set_available(1, &nums(&["support", "sales"])).unwrap();
        p.disconnect(at(0), 1);
        p.connect(2, "alice", "Alice", &nums(&["sales"])).unwrap();
        assert_eq!(p.available("alice"), nums(&["sales"]));
    }

    #[test]
    fn other_nodes_learn_who_is_ready_here_and_when_it_changed() {
        let mut p = Presence::new(Duration::from_secs(30), 10);
        assert_eq!(p.ready_summary(10), (vec![], vec![]));
        let c0 = p.changes();
        p.connect(1, "bob", "Bob", &nums(&["support", "sales"]))
            .unwrap();
        p.set_available(1, &nums(&["support"])).unwrap();
        p.connect(2, "amy", "Amy", &nums(&["sales"])).unwrap();
        p.set_available(2, &nums(&["sales"])).unwrap();
        p.set_phone("carl", &nums(&["billing"]));
        assert!(p.changes() > c0);
        assert_eq!(
            p.ready_summary(10),
            (
                nums(&["billing", "sales", "support"]),
                nums(&["amy", "bob", "carl"])
            )
        );
        // Busy is not ready; the bound holds.
        let c1 = p.changes();
        p.set_busy("bob", CallId(1)).unwrap();
        assert!(p.changes() > c1);
        assert_eq!(p.ready_summary(10).1, nums(&["amy", "carl"]));
        assert_eq!(p.ready_summary(1), (nums(&["sales"]), nums(&["amy"])));
        // Reconnecting is not ready either.
        p.disconnect(at(1), 2);
        assert_eq!(p.ready_summary(10), (nums(&["billing"]), nums(&["carl"])));
    }

    #[test]
    fn bounded() {
        let mut p = Presence::new(Duration::from_secs(30), 2);
        p.connect(1, "a", "a", &[]).unwrap();
        p.connect(2, "b", "b", &[]).unwrap();
        assert_eq!(p.connect(3, "c", "c", &[]), Err(PresenceError::Full));
        assert!(
            p.connect(4, "a", "a", &[]).is_ok(),
            "a known operator always reconnects"
        );
    }
}
