//! REFER received in a confirmed dialog (RFC 3515), with the implicit
//! subscription whose NOTIFYs carry the new call's progress as
//! `message/sipfrag`, unless the referrer asked for none (`Refer-Sub: false`,
//! RFC 4488). The application decides ([`UaEvent::Refer`]): it answers with
//! [`UserAgent::answer_refer`] (202 to go ahead, 403/603 to refuse) and reports
//! progress with [`UserAgent::notify_refer`].

use bytes::Bytes;
use media_core::Instant;
use rsipstack::sip::{Method, Request};

use super::{LegId, LegState, Purpose, UaError, UaEvent, UserAgent};
use crate::sip::message::{SipHeaders, header_uri};
use crate::sip::transaction::TxId;

/// How long the implicit subscription lasts unless a final NOTIFY ends it
/// (RFC 3515 section 2.4.4 leaves it to the notifier).
const REFER_EXPIRES: u32 = 60;

/// A REFER of a leg: its transaction until answered, then its subscription.
#[derive(Clone, Debug, Default)]
pub(super) struct ReferState {
    /// The REFER's server transaction, until answered.
    tx: Option<TxId>,
    /// Its CSeq: the `id` of `Event: refer` (section 2.4.6).
    id: u32,
    /// NOTIFYs go (no `Refer-Sub: false`), until the final one.
    subscribed: bool,
}

/// The first value of a header that holds one URI: the long name or the
/// compact one, not split at commas (a Refer-To URI may escape them).
fn single(req: &Request, long: &str, compact: &str) -> Vec<String> {
    req.lines(long)
        .into_iter()
        .chain(req.lines(compact))
        .map(|v| v.trim().to_string())
        .collect()
}

impl UserAgent {
    /// Sends REFER in the confirmed dialog of `leg`: the peer should call
    /// `refer_to` (RFC 3515). `subscription: false` asks for no NOTIFYs
    /// (`Refer-Sub: false`, RFC 4488). Its answer comes as
    /// [`UaEvent::ReferAnswered`], the NOTIFYs as [`UaEvent::ReferProgress`].
    pub fn refer(
        &mut self,
        now: Instant,
        leg: LegId,
        refer_to: &str,
        subscription: bool,
    ) -> Result<(), UaError> {
        if self.legs.get(&leg).ok_or(UaError::UnknownLeg)?.state != LegState::Confirmed {
            return Err(UaError::WrongState("REFER needs a confirmed dialog"));
        }
        let mut headers = vec![("Refer-To".to_string(), format!("<{refer_to}>"))];
        if !subscription {
            headers.push(("Refer-Sub".into(), "false".into()));
        }
        let tx = self.in_dialog(now, leg, Method::Refer, None, &headers)?;
        self.purposes.insert(tx, Purpose::Refer(leg));
        self.pump(now);
        Ok(())
    }

    /// A NOTIFY in the dialog of `leg`: our REFER's progress (`Event: refer`)
    /// gets 200 and is reported; any other event package 489 (RFC 6665).
    pub(super) fn on_notify(&mut self, now: Instant, tx: TxId, leg: LegId, req: &Request) {
        let refer_event = req
            .values("Event")
            .into_iter()
            .chain(req.values("o"))
            .any(|e| {
                e.split(';')
                    .next()
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("refer"))
            });
        if !refer_event {
            return self.reply(now, tx, req, 489, &[]);
        }
        self.reply(now, tx, req, 200, &[]);
        // The sipfrag's first line: `SIP/2.0 200 OK` (RFC 3420).
        let status = std::str::from_utf8(&req.body)
            .ok()
            .and_then(|b| b.lines().next())
            .and_then(|l| l.strip_prefix("SIP/2.0 "))
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let last = req
            .values("Subscription-State")
            .first()
            .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"));
        self.events
            .push_back(UaEvent::ReferProgress { leg, status, last });
    }

    /// A REFER in the dialog of `leg`.
    pub(super) fn on_refer(&mut self, now: Instant, tx: TxId, leg: LegId, req: &Request) {
        let Some(l) = self.legs.get(&leg) else {
            return;
        };
        if l.state != LegState::Confirmed {
            return self.reply(now, tx, req, 481, &[]);
        }
        if l.refer.as_ref().is_some_and(|r| r.tx.is_some()) {
            // One REFER decided at a time.
            return self.reply(now, tx, req, 491, &[]);
        }
        // Section 2.4.1: exactly one Refer-To.
        let refer_to = single(req, "Refer-To", "r");
        let [refer_to] = refer_to.as_slice() else {
            return self.reply(now, tx, req, 400, &[]);
        };
        let target = header_uri(refer_to).to_string();
        if target.is_empty() {
            return self.reply(now, tx, req, 400, &[]);
        }
        let referred_by = single(req, "Referred-By", "b")
            .first()
            .map(|v| header_uri(v).to_string());
        let no_sub = req
            .values("Refer-Sub")
            .first()
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
        let id = req.cseq().map_or(0, |c| c.0);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.refer = Some(ReferState {
                tx: Some(tx),
                id,
                subscribed: !no_sub,
            });
        }
        self.events.push_back(UaEvent::Refer {
            leg,
            refer_to: target,
            referred_by,
            subscription: !no_sub,
        });
    }

    /// Answers the REFER of `leg`: 202 goes ahead (and, with a subscription,
    /// sends the first NOTIFY, `100 Trying`), anything else refuses it.
    pub fn answer_refer(&mut self, now: Instant, leg: LegId, status: u16) -> Result<(), UaError> {
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        let Some(r) = l.refer.as_mut() else {
            return Err(UaError::WrongState("no REFER to answer"));
        };
        let tx = r.tx.take().ok_or(UaError::WrongState("REFER answered"))?;
        let subscribed = r.subscribed;
        if !(200..300).contains(&status) {
            l.refer = None;
        }
        let req = self
            .tl
            .request(tx)
            .cloned()
            .ok_or(UaError::WrongState("transaction gone"))?;
        let mut extra = Vec::new();
        if !subscribed {
            extra.push(("Refer-Sub", "false"));
        }
        let resp = self.uas_response(leg, &req, status, None, &extra);
        let _ = self.tl.respond(now, tx, resp);
        if (200..300).contains(&status) && subscribed {
            self.notify_refer(now, leg, 100, "Trying", false)?;
        }
        self.pump(now);
        Ok(())
    }

    /// Reports the referred call's progress to the referrer: a NOTIFY whose
    /// body is the status line (`message/sipfrag`, section 2.4.5). `last`
    /// ends the subscription. Nothing goes without one (`Refer-Sub: false`).
    pub fn notify_refer(
        &mut self,
        now: Instant,
        leg: LegId,
        status: u16,
        reason: &str,
        last: bool,
    ) -> Result<(), UaError> {
        let l = self.legs.get_mut(&leg).ok_or(UaError::UnknownLeg)?;
        let Some(r) = l.refer.as_ref().filter(|r| r.subscribed && r.tx.is_none()) else {
            return Ok(());
        };
        if l.state != LegState::Confirmed {
            return Ok(()); // the referrer is gone already
        }
        let id = r.id;
        if last {
            l.refer = None;
        }
        let state = if last {
            "terminated;reason=noresource".to_string()
        } else {
            format!("active;expires={REFER_EXPIRES}")
        };
        let headers = vec![
            ("Event".to_string(), format!("refer;id={id}")),
            ("Subscription-State".to_string(), state),
        ];
        let body = Bytes::from(format!("SIP/2.0 {status} {reason}\r\n"));
        let tx = self.in_dialog(
            now,
            leg,
            Method::Notify,
            Some(("message/sipfrag;version=2.0", &body)),
            &headers,
        )?;
        // A NOTIFY the referrer no longer wants (481 after its BYE) must not
        // end the dialog: nobody waits for its answer.
        self.purposes.insert(tx, Purpose::Orphan);
        self.pump(now);
        Ok(())
    }
}
