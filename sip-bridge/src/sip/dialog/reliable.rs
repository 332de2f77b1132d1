//! Reliable provisional responses (RFC 3262, `100rel`/PRACK) and offers in
//! the early dialog (RFC 3311, UPDATE).
//!
//! As UAS: a caller that requires `100rel` gets every 18x reliably; one that
//! only supports it gets the 18x that carry SDP (early media) reliably, so its
//! early answer is a real answer. A reliable 18x carries `Require: 100rel`
//! and an `RSeq`, is resent at T1, 2*T1, ... until its PRACK, and after 64*T1
//! without one the INVITE is refused with 500 (section 3). One is in flight at
//! a time; later ones wait. A 2xx waits for the PRACK of an 18x with SDP.
//!
//! As UAC: our INVITEs say `Supported: 100rel` (a trunk may require it); a
//! reliable 18x is PRACKed once per RSeq in its early dialog, retransmissions
//! and out-of-order ones are dropped (section 4), and a 2xx without SDP after
//! a reliable early answer reports that answer.
//!
//! Offers in the early dialog (UPDATE, RFC 3311 section 5.1) are taken once
//! the INVITE's offer/answer is done (a PRACKed early answer); before that
//! they get 500 with Retry-After (section 5.2).

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use media_core::Instant;
use rsipstack::sip::{Method, Request, Response, SipMessage};

use super::build::{RequestSpec, build_request, next_hop};
use super::{LegId, LegState, Purpose, Role, UaError, UaTimer, UserAgent};
use crate::sip::message::{self, SipHeaders};
use crate::sip::transaction::{Transmit, TxId};

/// Provisional responses that may wait behind an unacknowledged reliable one.
const MAX_QUEUED: usize = 4;

/// A caller's stance on `100rel` (its INVITE's Require/Supported).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum PeerRel {
    /// Neither: provisionals go unreliably.
    #[default]
    No,
    /// `Supported: 100rel`.
    Supported,
    /// `Require: 100rel`.
    Required,
}

/// `RAck: response-num CSeq-num Method` (RFC 3262 section 7.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RAck {
    /// The RSeq of the provisional acknowledged.
    pub rseq: u32,
    /// The CSeq number of its request.
    pub cseq: u32,
    /// The CSeq method of its request.
    pub method: String,
}

impl RAck {
    /// Parses a header value; `None` when malformed.
    pub fn parse(v: &str) -> Option<RAck> {
        let mut it = v.split_whitespace();
        let rack = RAck {
            rseq: parse_rseq(it.next()?)?,
            cseq: it.next()?.parse().ok()?,
            method: it.next()?.to_string(),
        };
        it.next().is_none().then_some(rack)
    }
}

/// An `RSeq` value: 1 to 2^31-1 (RFC 3262 section 7.1).
pub fn parse_rseq(v: &str) -> Option<u32> {
    let n: u32 = v.trim().parse().ok()?;
    (1..=0x7fff_ffff).contains(&n).then_some(n)
}

/// A reliable provisional response awaiting its PRACK.
#[derive(Clone, Debug)]
struct Unacked {
    rseq: u32,
    bytes: Bytes,
    interval: Duration,
    next: Instant,
    deadline: Instant,
    /// It carried SDP: a 2xx must wait for its PRACK.
    sdp: bool,
}

/// A response the application gave while a reliable one was unacknowledged.
#[derive(Clone, Debug)]
struct Waiting {
    status: u16,
    sdp: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

/// One early dialog's reliable provisionals, as UAC.
#[derive(Clone, Debug)]
struct Fork {
    tag: String,
    rseq: u32,
    sdp: Option<Bytes>,
}

/// A leg's RFC 3262 / early-dialog state.
#[derive(Clone, Debug, Default)]
pub(super) struct Reliable {
    /// UAS: what the caller's INVITE said.
    pub(super) peer: PeerRel,
    /// UAS: the RSeq of our last reliable provisional.
    rseq: u32,
    unacked: Option<Unacked>,
    queued: VecDeque<Waiting>,
    /// UAS: a 2xx held until the PRACK of an 18x with SDP.
    held: Option<Waiting>,
    /// The INVITE's offer/answer is complete before the 2xx (a PRACKed early
    /// answer): UPDATE offers may come and go in the early dialog.
    pub(super) early_answered: bool,
    /// UAC: per early dialog, the last RSeq taken and its SDP.
    forks: Vec<Fork>,
}

impl Reliable {
    /// For a UAS leg of `invite`; `seed` starts the RSeq space (section 3
    /// asks for a random start below 2^31).
    pub(super) fn uas(invite: &Request, seed: u32) -> Reliable {
        let peer = if has_tag(invite, "Require", "") {
            PeerRel::Required
        } else if has_tag(invite, "Supported", "k") {
            PeerRel::Supported
        } else {
            PeerRel::No
        };
        Reliable {
            peer,
            rseq: seed % 0x4000_0000,
            ..Reliable::default()
        }
    }
}

/// `tag` 100rel among the values of `long` (or its compact form).
fn has_tag(msg: &impl SipHeaders, long: &str, compact: &str) -> bool {
    let compact = if compact.is_empty() {
        Vec::new()
    } else {
        msg.values(compact)
    };
    msg.values(long)
        .into_iter()
        .chain(compact)
        .any(|t| t.trim().eq_ignore_ascii_case("100rel"))
}

/// A response sent reliably: `Require: 100rel` and a valid RSeq.
fn reliable_rseq(resp: &Response) -> Option<u32> {
    if !has_tag(resp, "Require", "") {
        return None;
    }
    resp.values("RSeq").first().and_then(|v| parse_rseq(v))
}

impl UserAgent {
    /// Whether our `status` provisional to this UAS leg goes reliably.
    pub(super) fn wants_reliable(&self, leg: LegId, status: u16, sdp: bool) -> bool {
        (101..200).contains(&status)
            && self.legs.get(&leg).is_some_and(|l| match l.rel.peer {
                PeerRel::Required => true,
                PeerRel::Supported => sdp,
                PeerRel::No => false,
            })
    }

    /// Sends a reliable provisional, or queues it behind the one in flight.
    pub(super) fn respond_reliably(
        &mut self,
        now: Instant,
        leg: LegId,
        status: u16,
        sdp: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> Result<(), UaError> {
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        let tx = l
            .invite_tx
            .ok_or(UaError::WrongState("no INVITE transaction"))?;
        if l.rel.unacked.is_some() {
            if l.rel.queued.len() < MAX_QUEUED {
                l.rel.queued.push_back(Waiting {
                    status,
                    sdp: sdp.map(<[u8]>::to_vec),
                    headers: owned(extra),
                });
            }
            return Ok(());
        }
        l.rel.rseq = l.rel.rseq % 0x7fff_ffff + 1;
        let rseq = l.rel.rseq.to_string();
        l.state = LegState::Early;
        if let Some(b) = sdp {
            l.local_sdp = b.to_vec();
        }
        let invite = l.invite.clone();
        let mut headers = extra.to_vec();
        headers.push(("Require", "100rel"));
        headers.push(("RSeq", &rseq));
        let resp = self.uas_response(leg, &invite, status, sdp, &headers);
        let t1 = self.cfg.timers.t1;
        if let Some(l) = self.legs.get_mut(&leg) {
            l.rel.unacked = Some(Unacked {
                rseq: l.rel.rseq,
                bytes: message::to_wire(&SipMessage::Response(resp.clone())),
                interval: t1,
                next: now + t1,
                deadline: now + t1 * 64,
                sdp: sdp.is_some(),
            });
        }
        self.timers
            .push(Reverse((now + t1, UaTimer::Reliable(leg))));
        self.tl
            .respond(now, tx, resp)
            .map_err(|_| UaError::WrongState("transaction gone"))?;
        self.pump(now);
        Ok(())
    }

    /// A 2xx that must wait for the PRACK of an early answer (section 3: no
    /// final 2xx before an 18x with SDP is acknowledged). Any other final
    /// response stops the retransmissions. `true` when held.
    pub(super) fn hold_final(
        &mut self,
        leg: LegId,
        status: u16,
        sdp: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> bool {
        let Some(l) = self.legs.get_mut(&leg) else {
            return false;
        };
        if (200..300).contains(&status) && l.rel.unacked.as_ref().is_some_and(|u| u.sdp) {
            l.rel.held = Some(Waiting {
                status,
                sdp: sdp.map(<[u8]>::to_vec),
                headers: owned(extra),
            });
            return true;
        }
        if status >= 200 {
            l.rel.unacked = None;
            l.rel.queued.clear();
            l.rel.held = None;
        }
        false
    }

    /// The retransmission timer of a reliable provisional.
    pub(super) fn reliable_due(&mut self, now: Instant, leg: LegId) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let peer = l.peer;
        let Some(u) = l.rel.unacked.as_mut() else {
            return;
        };
        if u.next > now {
            return;
        }
        if now >= u.deadline {
            // Section 3: never acknowledged, the INVITE is refused with a 5xx.
            l.rel.unacked = None;
            l.rel.queued.clear();
            l.rel.held = None;
            self.stats.prack_timeouts += 1;
            let _ = self.respond(
                now,
                leg,
                500,
                None,
                &[("Reason", "SIP ;cause=500 ;text=\"no PRACK\"")],
            );
            return;
        }
        self.out.push_back(Transmit {
            to: peer,
            bytes: u.bytes.clone(),
        });
        self.stats.retransmitted_1xx += 1;
        u.interval *= 2;
        u.next = (now + u.interval).min(u.deadline);
        let next = u.next;
        self.timers.push(Reverse((next, UaTimer::Reliable(leg))));
    }

    /// A PRACK in the (early) dialog of `leg` (section 3): it acknowledges the
    /// reliable provisional in flight, or gets 481. Then what waited goes.
    pub(super) fn on_prack(&mut self, now: Instant, tx: TxId, leg: LegId, req: &Request) {
        let rack = req.values("RAck").first().and_then(|v| RAck::parse(v));
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let invite_cseq = l.invite.cseq().map_or(0, |c| c.0);
        let matched = match (&rack, &l.rel.unacked) {
            (Some(r), Some(u)) => {
                r.rseq == u.rseq && r.cseq == invite_cseq && r.method.eq_ignore_ascii_case("INVITE")
            }
            _ => false,
        };
        if !matched {
            return self.reply(now, tx, req, 481, &[]);
        }
        let Some(u) = l.rel.unacked.take() else {
            return;
        };
        if u.sdp && !l.invite.body.is_empty() {
            l.rel.early_answered = true;
        }
        // An offer in a PRACK is not taken: the provisional stands acknowledged.
        let status = if req.body.is_empty() { 200 } else { 488 };
        let resp = self.uas_response(leg, req, status, None, &[]);
        let _ = self.tl.respond(now, tx, resp);
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        // The held 2xx first, else the next provisional waiting.
        if let Some(w) = l.rel.held.take().or_else(|| l.rel.queued.pop_front()) {
            let refs = super::str_pairs(&w.headers);
            let _ = self.respond(now, leg, w.status, w.sdp.as_deref(), &refs);
        }
    }

    /// UAC: a provisional with To tag `tag`. A reliable one is PRACKed when its
    /// RSeq is the first of its dialog or the next one; `false` for one to
    /// drop (a retransmission or out of order, section 4).
    pub(super) fn take_provisional(
        &mut self,
        now: Instant,
        leg: LegId,
        tag: &str,
        resp: &Response,
    ) -> bool {
        let Some(rseq) = reliable_rseq(resp) else {
            return true;
        };
        let Some(l) = self.legs.get_mut(&leg) else {
            return false;
        };
        let sdp = (!resp.body.is_empty()).then(|| Bytes::copy_from_slice(&resp.body));
        let full = l.rel.forks.len() >= super::MAX_FORKS;
        match l.rel.forks.iter_mut().find(|f| f.tag == tag) {
            Some(f) if rseq == f.rseq.wrapping_add(1) => {
                f.rseq = rseq;
                if sdp.is_some() && f.sdp.is_none() {
                    f.sdp = sdp.clone();
                }
            }
            Some(_) => return false,
            None if !full => l.rel.forks.push(Fork {
                tag: tag.to_string(),
                rseq,
                sdp: sdp.clone(),
            }),
            None => return false,
        }
        if sdp.is_some() && !l.invite.body.is_empty() {
            l.rel.early_answered = true;
        }
        self.send_prack(now, leg, rseq, resp);
        true
    }

    /// The early answer of dialog `tag` (from a reliable 18x), for a 2xx
    /// without SDP (RFC 3261 13.2.1: the answer is not repeated).
    pub(super) fn early_answer(&self, leg: LegId, tag: &str) -> Option<Bytes> {
        let l = self.legs.get(&leg)?;
        l.rel.forks.iter().find(|f| f.tag == tag)?.sdp.clone()
    }

    /// PRACK for `resp` in its early dialog: its Contact is the remote
    /// target and its Record-Route, reversed, the route set (12.1.2).
    fn send_prack(&mut self, now: Instant, leg: LegId, rseq: u32, resp: &Response) {
        let branch = self.tl.new_branch();
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        l.local_cseq += 1;
        let target = resp.contact_uri().unwrap_or(&l.remote_target).to_string();
        let mut routes = resp.values("Record-Route");
        routes.reverse();
        let hop = if l.flow && routes.is_empty() {
            l.peer
        } else {
            next_hop(&routes, &target, l.peer)
        };
        let from = format!("{};tag={}", l.local_addr, l.local_tag);
        let to = resp.header_to().unwrap_or(&l.remote_addr).to_string();
        let rack = format!(
            "{rseq} {} INVITE",
            resp.cseq().map_or(l.local_cseq, |c| c.0)
        );
        let Some(req) = build_request(
            &self.cfg.local,
            &RequestSpec {
                method: Method::PRack,
                uri: &target,
                branch: &branch,
                hop,
                from: &from,
                to: &to,
                call_id: &l.call_id,
                cseq: l.local_cseq,
                routes: &routes,
                contact: None,
                extra: &[("RAck".into(), rack)],
                body: None,
                user_agent: &self.cfg.user_agent,
            },
        ) else {
            return;
        };
        if let Ok(tx) = self.tl.send_request(now, req, hop) {
            // Its answer changes nothing: a lost PRACK is retransmitted by its
            // transaction, and the INVITE goes on either way.
            self.purposes.insert(tx, Purpose::Orphan);
        }
    }

    /// An offer (UPDATE or INVITE) in the early dialog of `leg`, which is not
    /// confirmed: `Err` when answered here. Section 5.2 of RFC 3311: while the
    /// INVITE's own offer/answer is open an UPDATE offer gets 500 with
    /// Retry-After; a second INVITE before the first's final response gets the
    /// same (RFC 3261 14.2).
    pub(super) fn check_early_offer(
        &mut self,
        now: Instant,
        tx: TxId,
        leg: LegId,
        req: &Request,
    ) -> Result<(), ()> {
        let Some(l) = self.legs.get(&leg) else {
            return Err(());
        };
        if l.state == LegState::Confirmed || l.state == LegState::Ending {
            return Ok(());
        }
        let open = !l.rel.early_answered && !req.body.is_empty();
        if req.method == Method::Invite || open {
            self.reply(now, tx, req, 500, &[("Retry-After", "1")]);
            return Err(());
        }
        Ok(())
    }

    /// Sends a new offer with UPDATE (RFC 3311): in the early dialog of a call
    /// we answer once its offer/answer is done, or in a confirmed dialog whose
    /// peer allows UPDATE. Section 5.1 recommends re-INVITE for confirmed
    /// dialogs (an UPDATE must be answered at once); hold uses re-INVITE.
    pub fn update(&mut self, now: Instant, leg: LegId, sdp: Vec<u8>) -> Result<(), UaError> {
        let l = self.legs.get(&leg).ok_or(UaError::UnknownLeg)?;
        let ok = match l.state {
            LegState::Confirmed => l.peer_update,
            LegState::Early => l.role == Role::Uas && l.rel.early_answered,
            _ => false,
        };
        if !ok {
            return Err(UaError::WrongState(
                "UPDATE needs an early answer or a peer that allows it",
            ));
        }
        self.send_offer(now, leg, Method::Update, sdp)
    }

    /// The answer to our UPDATE.
    pub(super) fn on_update_response(
        &mut self,
        now: Instant,
        tx: TxId,
        leg: LegId,
        resp: &Response,
    ) {
        let code = resp.status_code.code();
        if code < 200 {
            return;
        }
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if l.offer_tx != Some((tx, true)) {
            return;
        }
        l.offer_tx = None;
        let sdp = if (200..300).contains(&code) {
            (!resp.body.is_empty()).then(|| Bytes::copy_from_slice(&resp.body))
        } else {
            None
        };
        self.events.push_back(super::UaEvent::OfferAnswered {
            leg,
            status: code,
            sdp,
        });
        if code == 408 || code == 481 {
            self.broken(now, leg, code);
        }
    }
}

fn owned(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rseq_and_rack() {
        assert_eq!(parse_rseq("1"), Some(1));
        assert_eq!(parse_rseq(" 2147483647 "), Some(0x7fff_ffff));
        assert_eq!(parse_rseq("0"), None);
        assert_eq!(parse_rseq("2147483648"), None);
        assert_eq!(parse_rseq("-1"), None);
        assert_eq!(parse_rseq("x"), None);
        assert_eq!(
            RAck::parse("776656 1 INVITE"),
            Some(RAck {
                rseq: 776656,
                cseq: 1,
                method: "INVITE".into()
            })
        );
        assert_eq!(RAck::parse("1 1"), None);
        assert_eq!(RAck::parse("0 1 INVITE"), None);
        assert_eq!(RAck::parse("1 x INVITE"), None);
        assert_eq!(RAck::parse("1 1 INVITE extra"), None);
        assert_eq!(RAck::parse(""), None);
    }
}
