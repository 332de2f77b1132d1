//! Calls a registered phone places: its INVITE is challenged (407, RFC 3261
//! 22.3) against its account, its caller ID must be one of its operator's
//! numbers, and what it dialled goes through the dial plan as an operator's
//! `dial` does.
//!
//! Which INVITEs are a phone's: every one from no trunk's source (a
//! stranger's too: it is challenged like a phone whose user is unknown, so
//! the 407 tells nothing). With inbound open to anyone, a call to one of our
//! numbers without credentials stays a caller's.

use media_core::Instant;

use super::{Bridge, Origin};
use crate::call::{Call, user_of};
use crate::contract::CallId;
use crate::plan::{DialPlan, Target};
use crate::registrar::{Lookup, RegisterReply};
use crate::sip::dialog::LegId;
use crate::sip::message::{Peer, Request, SipHeaders};
use crate::sip::transaction::TxId;

/// Why a phone's call is refused, and with what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// The From is none of its operator's numbers (403).
    CallerId,
    /// Nothing we know by what it dialled (404).
    Unknown,
    /// Its operator is in another call (486).
    Busy,
    /// At capacity or draining (503).
    Full,
}

impl Refused {
    fn status(self) -> u16 {
        match self {
            Refused::CallerId => 403,
            Refused::Unknown => 404,
            Refused::Busy => 486,
            Refused::Full => 503,
        }
    }
}

/// Keep-alives in flight at most (each ends within 32 s).
const MAX_PINGS: usize = 20_000;

/// Requests waiting for the backend at most; more get 503.
const MAX_PARKED: usize = 1024;

/// `Retry-After` of a 503 when the backend could not say who a phone is.
const LOOKUP_RETRY: &str = "30";

/// How long a request waits for a backend answer that never comes (a
/// directory that hangs): then it is unavailable.
pub(super) const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A phone's request waiting for the backend's answer about its username.
#[derive(Debug)]
pub(super) enum Parked {
    Register {
        tx: TxId,
        request: Box<Request>,
        from: Peer,
    },
    Call {
        leg: LegId,
        request: Box<Request>,
        from: Peer,
    },
}

impl Bridge {
    /// Sends the registrar's keep-alives (OPTIONS to the phone's contact, at
    /// the address it registered from).
    pub(super) fn keep_phones_alive(&mut self, now: Instant) {
        let Some(r) = self.registrar.as_mut() else {
            return;
        };
        while let Some(k) = r.poll_keepalive() {
            if self.phone_pings.len() >= MAX_PINGS {
                continue;
            }
            if let Ok(ping) = self.ua.options(now, &k.contact, k.peer) {
                self.phone_pings.insert(ping, (k.operator, k.contact));
            }
        }
    }

    /// Whether the INVITE `req` from `from` is a phone's call (module docs).
    /// Never decided by the From: an INVITE naming an account must be
    /// answered like one naming nobody, or `svwar -m INVITE` enumerates the
    /// accounts by who gets the 407.
    pub(super) fn is_phone_call(&self, req: &Request, from: Peer) -> bool {
        if self.registrar.is_none() || self.cfg.trunk_for_source(from.addr.ip()).is_some() {
            return false;
        }
        // Inbound open to anyone: a call to one of our numbers may be a
        // stranger's; only what goes elsewhere, or carries credentials, is
        // a phone's.
        !self.cfg.open_inbound
            || !req.lines("Proxy-Authorization").is_empty()
            || self.cfg.number(&user_of(&req.uri.to_string())).is_none()
    }

    /// Keeps a request until the backend says who `username` is.
    pub(super) fn park(&mut self, now: Instant, username: String, p: Parked) {
        if self.parked.len() < MAX_PARKED {
            return self.parked.push((username, now, p));
        }
        self.refuse_parked(now, p);
    }

    fn refuse_parked(&mut self, now: Instant, p: Parked) {
        let retry = [("Retry-After", LOOKUP_RETRY)];
        match p {
            Parked::Register { tx, request, .. } => {
                let h = [("Retry-After".to_string(), LOOKUP_RETRY.to_string())];
                self.ua.answer_request(now, tx, &request, 503, &h)
            }
            Parked::Call { leg, .. } => {
                let _ = self.ua.respond(now, leg, 503, None, &retry);
            }
        }
    }

    /// The next username whose account to ask the customer's backend about
    /// (`[registrar] accounts_url`, or an embedder's directory); its answer
    /// goes to [`Bridge::handle_phone_lookup`].
    pub fn poll_phone_lookup(&mut self) -> Option<String> {
        self.registrar.as_mut()?.poll_lookup()
    }

    /// The backend's answer about `username`: the requests waiting for it go
    /// on (or get 503 with `Retry-After` when it could not say).
    pub fn handle_phone_lookup(&mut self, now: Instant, username: &str, answer: Lookup) {
        let unavailable = answer == Lookup::Unavailable;
        if let Some(r) = self.registrar.as_mut() {
            r.handle_lookup(now, username, answer);
        }
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(u, _, _)| u == username);
        self.parked = rest;
        for (_, _, p) in mine {
            if unavailable {
                self.refuse_parked(now, p);
                continue;
            }
            match p {
                Parked::Register { tx, request, from } => self.on_register(now, tx, &request, from),
                Parked::Call { leg, request, from } => self.phone_call(now, leg, &request, from),
            }
        }
        self.pump(now);
    }

    /// Requests that waited [`LOOKUP_WAIT`] for the backend: it is
    /// unavailable for them (503, `Retry-After`).
    pub(super) fn give_up_lookups(&mut self, now: Instant) {
        let late: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, at, _)| *at + LOOKUP_WAIT <= now)
            .map(|(u, _, _)| u.clone())
            .collect();
        for u in late {
            self.handle_phone_lookup(now, &u, Lookup::Unavailable);
        }
    }

    /// A phone's INVITE: challenged, then placed as its operator's call.
    pub(super) fn phone_call(&mut self, now: Instant, leg: LegId, req: &Request, from: Peer) {
        let unix_ms = self.unix_base * 1000 + now.as_micros() / 1000;
        let Some(r) = self.registrar.as_mut() else {
            return;
        };
        let account = match r.authorize_call(now, unix_ms, req, from) {
            Ok(a) => a,
            Err(RegisterReply::Respond { status, headers }) => {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let _ = self.ua.respond(now, leg, status, None, &h);
                return self.phone_events();
            }
            Err(RegisterReply::Wait { username }) => {
                let request = Box::new(req.clone());
                return self.park(now, username, Parked::Call { leg, request, from });
            }
            // Banned: the INVITE transaction needs a final answer; it says
            // nothing of the account.
            Err(_) => {
                let _ = self.ua.respond(now, leg, 403, None, &[]);
                return self.phone_events();
            }
        };
        self.phone_events();
        let op = account.operator.clone();
        match self.place_phone_call(now, req, from, &account.username, &op) {
            Ok(id) => {
                // Behind NAT its Contact is unreachable: the whole dialog
                // keeps to where its INVITE came from.
                self.ua.use_flow(leg);
                let caller = self.calls.get(&id).map(|c| c.caller());
                if let Some(caller) = caller {
                    self.sip_legs.insert(leg, (id, caller));
                    self.call_legs.insert((id, caller), leg);
                }
                self.apply(now, id);
            }
            Err(status) => {
                let _ = self.ua.respond(now, leg, status, None, &[]);
            }
        }
    }

    /// The call `username` (operator `op`) dialled, or the status refusing it.
    fn place_phone_call(
        &mut self,
        now: Instant,
        req: &Request,
        from: Peer,
        username: &str,
        op: &str,
    ) -> Result<CallId, u16> {
        if self.presence.active_call(op).is_some() {
            return Err(Refused::Busy.status());
        }
        let number = self
            .caller_id_of(req, username, op)
            .ok_or(Refused::CallerId.status())?;
        let dialled = user_of(&req.uri.to_string());
        let (to, plan) = self.phone_target(&dialled, op)?;
        if self.admission(Origin::Operator).is_err() {
            self.stats.calls_rejected_capacity += 1;
            return Err(Refused::Full.status());
        }
        let id = CallId(self.next_call);
        let call = {
            let (_, mut ctx) = self.split();
            Call::from_phone(
                now,
                &mut ctx,
                id,
                req,
                from.addr.ip(),
                op,
                &number,
                &to,
                plan,
            )?
        };
        self.next_call += 1;
        self.stats.calls_outbound += 1;
        self.calls.insert(id, call);
        Ok(id)
    }

    /// The phone's caller ID: the number its From names, when the operator
    /// owns it; the operator's first number when the From is the account's
    /// own name (as phones send); else none (a phone may not show a number
    /// that is not its operator's).
    fn caller_id_of(
        &self,
        req: &Request,
        username: &str,
        op: &str,
    ) -> Option<crate::config::NumberConfig> {
        let owned = self.registrar.as_ref()?.numbers_of(op);
        let from = user_of(req.header_from().unwrap_or(""));
        let pick = if from == username {
            owned.first().and_then(|id| self.cfg.number(id))
        } else {
            self.cfg.number(&from).filter(|n| owned.contains(&n.id))
        };
        pick.cloned()
    }

    /// What a phone dialled: one of our numbers (its plan), a phone account
    /// or operator (rung as `operator:REF`), or a number for a trunk.
    fn phone_target(&self, dialled: &str, op: &str) -> Result<(String, DialPlan), u16> {
        if let Some(n) = self
            .cfg
            .number(dialled)
            .filter(|n| !n.plan.steps.is_empty())
        {
            return Ok((n.e164.clone(), n.plan.clone()));
        }
        let registrar = self.registrar.as_ref();
        let operator = registrar
            .and_then(|r| r.operator_of(dialled))
            .map(String::from)
            .or_else(|| {
                registrar
                    .is_some_and(|r| !r.numbers_of(dialled).is_empty())
                    .then(|| dialled.to_string())
            })
            .or_else(|| {
                // An operator in a browser only.
                self.presence.is_ready(dialled).then(|| dialled.to_string())
            });
        let target = match operator {
            Some(o) if o == op => return Err(Refused::Unknown.status()),
            Some(o) => Target::Operator(o),
            None => {
                let digits = dialled.strip_prefix('+').unwrap_or(dialled);
                if digits.is_empty()
                    || digits.len() > 20
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(Refused::Unknown.status());
                }
                Target::Pstn {
                    number: dialled.to_string(),
                    trunk: None,
                }
            }
        };
        let to = target.to_string();
        let to = match &target {
            Target::Pstn { number, .. } => number.clone(),
            _ => to,
        };
        Ok((
            to,
            DialPlan::single(vec![target], self.cfg.outbound_ring_timeout),
        ))
    }
}
