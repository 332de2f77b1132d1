//! Session timers (RFC 4028): a dialog whose INVITE or 2xx carried
//! `Session-Expires` is refreshed (re-INVITE or UPDATE) by one side, the
//! refresher, before the interval runs out; the other side ends a session
//! whose refresh never came with BYE (section 10), so a call whose peer
//! vanished does not stay up forever.

use std::cmp::Reverse;
use std::time::Duration;

use media_core::Instant;
use rsipstack::sip::{Method, Request, Response};

use super::{EndReason, LegId, LegState, Purpose, UaTimer, UserAgent};
use crate::sip::message::SipHeaders;
use crate::sip::transaction::TxId;

/// RFC 4028 section 4: no interval below 90 s.
pub const MIN_SE_FLOOR: Duration = Duration::from_secs(90);

/// Which side of a transaction refreshes (`refresher=uac|uas`, relative to
/// the request that carried it, section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    /// The request's sender.
    Uac,
    /// The request's receiver.
    Uas,
}

impl Refresher {
    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A `Session-Expires` value: `delta-seconds *(;se-params)` (section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionExpires {
    /// The session interval.
    pub interval: Duration,
    /// Who refreshes, if said.
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// Parses a header value; `None` for anything malformed (a refresher other
    /// than `uac`/`uas` included). Intervals above a day are capped: a peer
    /// cannot make us keep a dead session for years.
    pub fn parse(v: &str) -> Option<SessionExpires> {
        let mut parts = v.split(';');
        let secs: u64 = parts.next()?.trim().parse().ok()?;
        let mut refresher = None;
        for p in parts {
            let (k, val) = p.split_once('=').unwrap_or((p, ""));
            if k.trim().eq_ignore_ascii_case("refresher") {
                refresher = Some(match val.trim().to_ascii_lowercase().as_str() {
                    "uac" => Refresher::Uac,
                    "uas" => Refresher::Uas,
                    _ => return None,
                });
            }
        }
        Some(SessionExpires {
            interval: Duration::from_secs(secs.min(86_400)),
            refresher,
        })
    }

    /// The header value.
    pub fn to_value(self) -> String {
        match self.refresher {
            Some(r) => format!("{};refresher={}", self.interval.as_secs(), r.as_str()),
            None => self.interval.as_secs().to_string(),
        }
    }
}

/// A `Min-SE` value (`delta-seconds`, section 5).
pub fn parse_min_se(v: &str) -> Option<Duration> {
    let secs: u64 = v.split(';').next()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(86_400)))
}

/// A running session timer of one dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimer {
    /// The negotiated interval.
    pub interval: Duration,
    /// We refresh (else we expect the peer to).
    pub we_refresh: bool,
    /// The last refresh (or the session's start).
    pub since: Instant,
    /// When something is due: our refresh, or the end of the session.
    pub due: Instant,
    /// What is due at `due` is the end (section 10: BYE), not a refresh.
    pub expire: bool,
}

impl SessionTimer {
    /// A timer (re)started by a refresh that succeeded at `now`: the refresher
    /// refreshes at half the interval; the other side gives up at the interval
    /// minus the lesser of 32 s and a third of it.
    pub fn start(now: Instant, interval: Duration, we_refresh: bool) -> SessionTimer {
        let mut t = SessionTimer {
            interval,
            we_refresh,
            since: now,
            due: now + interval / 2,
            expire: false,
        };
        if !we_refresh {
            t = t.expiring();
        }
        t
    }

    /// Nothing more to try: the session ends at its deadline unless a refresh
    /// (ours that went through after all, or the peer's) comes first.
    pub fn expiring(self) -> SessionTimer {
        SessionTimer {
            due: self.since + (self.interval - (self.interval / 3).min(Duration::from_secs(32))),
            expire: true,
            ..self
        }
    }
}

/// The first value of `long` or its compact form.
fn value(msg: &impl SipHeaders, long: &str, compact: &str) -> Option<String> {
    msg.values(long)
        .into_iter()
        .next()
        .or_else(|| msg.values(compact).into_iter().next())
}

/// The peer says it supports `tag` (`Supported`, compact `k`).
fn supports(msg: &impl SipHeaders, tag: &str) -> bool {
    msg.values("Supported")
        .into_iter()
        .chain(msg.values("k"))
        .any(|t| t.trim().eq_ignore_ascii_case(tag))
}

/// The peer accepts UPDATE (its `Allow`).
pub(super) fn allows_update(msg: &impl SipHeaders) -> bool {
    msg.values("Allow")
        .iter()
        .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
}

impl UserAgent {
    fn min_se(&self) -> Duration {
        self.cfg.min_se.max(MIN_SE_FLOOR)
    }

    /// A request asking for a session interval shorter than we accept gets
    /// 422 with our `Min-SE` (section 6), a malformed one 400; `Err` when
    /// answered so.
    pub(super) fn check_session_expires(
        &mut self,
        now: Instant,
        tx: TxId,
        req: &Request,
    ) -> Result<(), ()> {
        let Some(v) = value(req, "Session-Expires", "x") else {
            return Ok(());
        };
        match SessionExpires::parse(&v) {
            None => {
                self.reply(now, tx, req, 400, &[]);
                Err(())
            }
            Some(se) if se.interval < self.min_se() => {
                let min = self.min_se().as_secs().to_string();
                self.reply(now, tx, req, 422, &[("Min-SE", &min)]);
                Err(())
            }
            Some(_) => Ok(()),
        }
    }

    /// Our 2xx to the peer's INVITE, re-INVITE or UPDATE `req`: its header
    /// fields for the session timer, which starts (or restarts: a refresh)
    /// with it (section 9). The refresher is the one the request names, else
    /// the peer when it supports timers, else us; `Require: timer` only to a
    /// peer that supports it. A refresh without `Session-Expires` turns the
    /// timer off.
    pub(super) fn session_answer(
        &mut self,
        now: Instant,
        leg: LegId,
        req: &Request,
    ) -> Vec<(String, String)> {
        let min_se = self.min_se();
        let peer_timer = supports(req, "timer");
        let se = value(req, "Session-Expires", "x").and_then(|v| SessionExpires::parse(&v));
        let Some(l) = self.legs.get_mut(&leg) else {
            return Vec::new();
        };
        l.peer_update |= allows_update(req);
        let Some(se) = se else {
            l.session = None;
            return Vec::new();
        };
        let refresher = se.refresher.unwrap_or(if peer_timer {
            Refresher::Uac
        } else {
            Refresher::Uas
        });
        let interval = se.interval.max(min_se);
        let mut headers = vec![(
            "Session-Expires".to_string(),
            SessionExpires {
                interval,
                refresher: Some(refresher),
            }
            .to_value(),
        )];
        if peer_timer {
            headers.push(("Require".into(), "timer".into()));
        }
        let t = SessionTimer::start(now, interval, refresher == Refresher::Uas);
        self.arm_session(leg, t);
        headers
    }

    /// The 2xx to our INVITE, re-INVITE or refresh: the timer as it says
    /// (`refresher=uac` is us, the request's sender). Without
    /// `Session-Expires` an initial INVITE gets no timer; a refresh keeps ours
    /// with us refreshing (section 7.4).
    pub(super) fn session_from_response(
        &mut self,
        now: Instant,
        leg: LegId,
        resp: &Response,
        initial: bool,
    ) {
        let min_se = self.min_se();
        let se = value(resp, "Session-Expires", "x").and_then(|v| SessionExpires::parse(&v));
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        l.peer_update |= allows_update(resp);
        let t = match (se, l.session) {
            (Some(se), _) => SessionTimer::start(
                now,
                se.interval.max(min_se),
                se.refresher != Some(Refresher::Uas),
            ),
            (None, Some(t)) if !initial => SessionTimer::start(now, t.interval, true),
            (None, _) => {
                l.session = None;
                return;
            }
        };
        self.arm_session(leg, t);
    }

    /// Our `Session-Expires` for an in-dialog request of ours while a timer
    /// runs (section 7.4: every re-INVITE and UPDATE carries it).
    pub(super) fn session_request_headers(&self, leg: LegId) -> Vec<(String, String)> {
        let Some(t) = self.legs.get(&leg).and_then(|l| l.session) else {
            return Vec::new();
        };
        let refresher = if t.we_refresh {
            Refresher::Uac
        } else {
            Refresher::Uas
        };
        vec![
            (
                "Session-Expires".into(),
                SessionExpires {
                    interval: t.interval,
                    refresher: Some(refresher),
                }
                .to_value(),
            ),
            ("Supported".into(), "timer".into()),
        ]
    }

    fn arm_session(&mut self, leg: LegId, t: SessionTimer) {
        if let Some(l) = self.legs.get_mut(&leg) {
            l.session = Some(t);
            self.timers.push(Reverse((t.due, UaTimer::Session(leg))));
        }
    }

    /// The timer fired: refresh, or end a session whose refresh never came
    /// with BYE (section 10). Stale entries (the timer moved) do nothing.
    pub(super) fn session_due(&mut self, now: Instant, leg: LegId) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some(t) = l.session.filter(|t| t.due <= now) else {
            return;
        };
        if l.state != LegState::Confirmed {
            return;
        }
        if t.expire {
            self.stats.session_expired += 1;
            l.end_reason = Some(EndReason::SessionExpired);
            l.retx = None; // no ACK will come either
            if self.bye(now, leg).is_err() {
                self.end(now, leg, EndReason::SessionExpired);
            }
            return;
        }
        if l.offer_tx.is_some() || l.glare_retry.is_some() {
            // An offer of ours or theirs is under way: it refreshes when it
            // succeeds; look again shortly.
            let later = SessionTimer {
                due: now + Duration::from_secs(2),
                ..t
            };
            self.arm_session(leg, later);
            return;
        }
        self.send_refresh(now, leg);
    }

    /// Our refresh: UPDATE without a body to a peer that allows it, else a
    /// re-INVITE offering our SDP unchanged. Until it succeeds the session
    /// keeps its deadline.
    fn send_refresh(&mut self, now: Instant, leg: LegId) {
        let Some(l) = self.legs.get(&leg) else {
            return;
        };
        let Some(t) = l.session else {
            return;
        };
        let update = l.peer_update;
        let sdp = l.local_sdp.clone();
        let body_type = l.body_type.clone();
        let mut headers = self.session_request_headers(leg);
        headers.push(("Min-SE".into(), self.min_se().as_secs().to_string()));
        let sent = if update {
            self.in_dialog(now, leg, Method::Update, None, &headers)
        } else {
            let body = (!sdp.is_empty()).then_some((body_type.as_str(), &sdp[..]));
            self.in_dialog(now, leg, Method::Invite, body, &headers)
        };
        let Ok(tx) = sent else {
            return self.arm_session(leg, t.expiring());
        };
        self.purposes.insert(tx, Purpose::Refresh(leg));
        if !update && let Some(l) = self.legs.get_mut(&leg) {
            l.offer_tx = Some((tx, true));
        }
        self.stats.session_refreshes += 1;
        self.arm_session(leg, t.expiring());
        self.pump(now);
    }

    /// The answer to our refresh.
    pub(super) fn on_refresh_response(
        &mut self,
        now: Instant,
        tx: TxId,
        leg: LegId,
        resp: Response,
    ) {
        let code = resp.status_code.code();
        if code < 200 {
            return;
        }
        let invite = resp.cseq().is_some_and(|c| c.1 == "INVITE");
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let current = l.offer_tx.is_some_and(|(t, _)| t == tx);
        if invite && !current {
            // A retransmitted 2xx of a refresh already answered: ACK again.
            if (200..300).contains(&code) {
                self.resend_ack(leg, resp.cseq().map_or(0, |c| c.0));
            }
            return;
        }
        if current {
            l.offer_tx = None;
        }
        match code {
            200..=299 => {
                if invite {
                    self.send_ack(now, leg, &resp);
                }
                self.session_from_response(now, leg, &resp, false);
            }
            422 => {
                // Too brief for the peer: again with its minimum (section 7.4).
                let min = value(&resp, "Min-SE", "Min-SE").and_then(|v| parse_min_se(&v));
                if let Some(min) = min
                    && let Some(t) = l.session.as_mut()
                    && min > t.interval
                {
                    t.interval = min;
                    self.send_refresh(now, leg);
                }
            }
            405 | 501 if !invite => {
                // UPDATE refused after all: re-INVITE from now on.
                l.peer_update = false;
                self.send_refresh(now, leg);
            }
            408 | 481 => self.broken(now, leg, code),
            // Refused otherwise: the session ends at its deadline unless
            // something refreshes it first.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_session_expires_and_min_se() {
        assert_eq!(
            SessionExpires::parse("1800;refresher=uac"),
            Some(SessionExpires {
                interval: Duration::from_secs(1800),
                refresher: Some(Refresher::Uac)
            })
        );
        assert_eq!(
            SessionExpires::parse(" 90 ; REFRESHER = UAS ;x=1").map(|s| s.refresher),
            Some(Some(Refresher::Uas))
        );
        assert_eq!(SessionExpires::parse("600").unwrap().refresher, None);
        assert_eq!(
            SessionExpires::parse("999999999999").unwrap().interval,
            Duration::from_secs(86_400)
        );
        for bad in ["", "abc", "-5", "90;refresher=both", "1e3"] {
            assert_eq!(SessionExpires::parse(bad), None, "{bad}");
        }
        assert_eq!(parse_min_se("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_min_se("x"), None);
        let se = SessionExpires {
            interval: Duration::from_secs(90),
            refresher: Some(Refresher::Uas),
        };
        assert_eq!(SessionExpires::parse(&se.to_value()), Some(se));
    }

    #[test]
    fn refresher_acts_at_half_the_interval_the_other_side_before_its_end() {
        let t0 = Instant::from_millis(1000);
        let r = SessionTimer::start(t0, Duration::from_secs(1800), true);
        assert_eq!(r.due, t0 + Duration::from_secs(900));
        // 1800 s: 32 s before the end; 90 s: a third (30 s) before it.
        let w = SessionTimer::start(t0, Duration::from_secs(1800), false);
        assert_eq!(w.due, t0 + Duration::from_secs(1768));
        let w = SessionTimer::start(t0, Duration::from_secs(90), false);
        assert_eq!(w.due, t0 + Duration::from_secs(60));
        assert!(!r.expire && w.expire);
        let failed = r.expiring();
        assert_eq!(failed.due, t0 + Duration::from_secs(1768));
        assert!(failed.expire && failed.we_refresh);
    }
}
