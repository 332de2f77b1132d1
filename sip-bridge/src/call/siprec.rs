//! The call's SIPREC session (RFC 7866): the call as a recording client
//! toward an external recording server (SRS) that a number, a trunk or the
//! router names. It starts when the call is routed, so the SRS is ready
//! before anyone answers; it is no party: nobody hears it, and it hears
//! what a recording does (label 1 the customer, label 2 what the customer
//! hears, `tapped_channels`), one RTP leg per label with its own SSRC,
//! sequence and timestamps whatever happens to the sources. When who is in
//! the call changes (a transfer, someone added or leaving) the SRS gets a
//! re-INVITE with a new metadata snapshot; label 1 stays the customer.
//!
//! Fail open by default: a SRS that refuses or goes away is an event and
//! the call goes on. `fail_closed` refuses the call (503) or ends it.

use media_core::Instant;
use media_core::codec::Codec;

use super::dial::{format_of, sip_target_peer};
use super::event::RecordingReport;
use super::party::Leg;
use super::{Call, CallCtx, CallEventKind, SipAction, SipLegEvent};
use crate::contract::{Feed, LegKey, MediaCommand};
use crate::plan::{DialStatus, SiprecOptions};
use crate::sdp::{Direction, SessionDescription};
use crate::signalling::EndReason;
use crate::sip::dialog::InviteParams;
use crate::siprec::{self, Label, Metadata, Participant};

/// How long a SRS has to answer its INVITE (Timer B is 32 s; a caller
/// kept waiting by `fail_closed` should not be).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SrsState {
    /// INVITE out, no final answer.
    Inviting,
    /// The SRS records.
    Active,
}

/// The call's SIPREC session. See the module docs.
#[derive(Debug)]
pub(crate) struct SiprecSession {
    /// The dialog toward the SRS.
    key: LegKey,
    /// The RTP legs of labels 1 and 2, and their ports.
    streams: [LegKey; 2],
    ports: [u16; 2],
    /// Our offer (its streams, for answers and re-INVITEs).
    offer: SessionDescription,
    opts: SiprecOptions,
    /// `srs-...`, for events.
    id: String,
    state: SrsState,
    /// What each label's leg was last told it hears.
    feeds: [Vec<Feed>; 2],
    /// The SRS asked for no media on a label (its re-INVITE said inactive).
    paused: [bool; 2],
    meta: Metadata,
    /// Our re-INVITE is out; a change meanwhile waits for its answer.
    updating: bool,
    /// The metadata changed since the SRS last got it.
    dirty: bool,
    /// When an unanswered INVITE is given up.
    deadline: Instant,
    /// `fail_closed`: the plan rings once the SRS records.
    dial_waits: bool,
}

impl Call {
    /// Starts the SIPREC session the plan, the number or the trunk asks for
    /// (once per call).
    pub(crate) fn start_siprec(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        if self.siprec.is_some() || self.is_ended() {
            return;
        }
        let Some(opts) = self.plan.siprec.clone().or(self.siprec_default.clone()) else {
            return;
        };
        // Offered once: a call whose SRS failed does not retry it.
        self.siprec_default = None;
        self.plan.siprec = None;
        let id = format!("srs-{:016x}", ctx.rng.next_u64());
        let Some(peer) = sip_target_peer(&opts.srs) else {
            return self.siprec_failed(now, ctx, &opts, &id, 400, "bad SRS URI");
        };
        let ports = match (ctx.ports.take(), ctx.ports.take()) {
            (Some(a), Some(b)) => [a, b],
            (a, b) => {
                a.into_iter().chain(b).for_each(|p| ctx.ports.give(p));
                return self.siprec_failed(now, ctx, &opts, &id, 503, "no RTP port");
            }
        };
        // The customer's codec first: the SRS may take it and we relay.
        let mut codecs = vec![Codec::Pcmu, Codec::Pcma];
        if let Some(n) = self
            .parties
            .get(&self.caller)
            .and_then(|p| p.sip())
            .and_then(|s| s.negotiated.as_ref())
            && n.codec != Codec::Opus
        {
            codecs.sort_by_key(|c| *c != n.codec);
        }
        let ipv6 = peer.addr.ip().to_canonical().is_ipv6();
        let offer = siprec::offer(
            ctx.cfg.media_ip_for(ipv6),
            ports,
            ctx.rng.next_u64() >> 12,
            &codecs,
        );
        let meta = Metadata {
            call: self.id.0,
            call_name: self.id.to_string(),
            start_ms: ctx.unix_ms(now),
            participants: Vec::new(),
        };
        let key = self.leg_key();
        let streams = [self.leg_key(), self.leg_key()];
        let mut s = SiprecSession {
            key,
            streams,
            ports,
            offer,
            opts,
            id,
            state: SrsState::Inviting,
            feeds: [Vec::new(), Vec::new()],
            paused: [false; 2],
            meta,
            updating: false,
            dirty: false,
            deadline: now + ANSWER_TIMEOUT,
            dial_waits: false,
        };
        let at = ctx.unix_ms(now);
        self.siprec_participants(ctx, at, &mut s.meta);
        let (content_type, body) = siprec::body(&s.offer.to_string(), &s.meta.to_xml());
        let host = ctx.local_host;
        let params = InviteParams {
            request_uri: s.opts.srs.clone(),
            from: format!("<sip:src@{host}>"),
            to: format!("<{}>", s.opts.srs),
            peer,
            sdp: Some(body.into_bytes()),
            // RFC 7866 section 6.1.1: a recording session, asked as one.
            headers: vec![
                ("Require".into(), siprec::OPTION_TAG.into()),
                (
                    "Accept".into(),
                    "application/sdp, application/rs-metadata-request".into(),
                ),
            ],
            credentials: None,
            body_type: Some(content_type),
            contact_params: Some(siprec::SRC_FEATURE.into()),
            flow: false,
        };
        self.siprec = Some(s);
        self.sip(key, SipAction::Invite(Box::new(params)));
    }

    /// Whether the plan waits for the SRS (`fail_closed`: nothing rings
    /// before the call is recorded); marks it so that its answer rings.
    pub(crate) fn siprec_holds_dial(&mut self) -> bool {
        match self.siprec.as_mut() {
            Some(s) if s.opts.fail_closed && s.state == SrsState::Inviting => {
                s.dial_waits = true;
                true
            }
            _ => false,
        }
    }

    /// When the SRS's INVITE is given up, while it is unanswered.
    pub(crate) fn siprec_deadline(&self) -> Option<Instant> {
        self.siprec
            .as_ref()
            .filter(|s| s.state == SrsState::Inviting)
            .map(|s| s.deadline)
    }

    /// The SRS did not answer in time: CANCEL, and it failed.
    pub(crate) fn siprec_timed_out(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        if self.siprec_deadline().is_some_and(|t| t <= now) {
            let key = self.siprec.as_ref().map(|s| s.key);
            if let Some(key) = key {
                self.sip(key, SipAction::Hangup);
            }
            self.siprec_ended(now, ctx, Some(408), "the SRS did not answer", false);
        }
    }

    /// Whether `key` is the SIPREC dialog (its events go to
    /// [`Call::siprec_sip`]).
    pub(crate) fn is_siprec(&self, key: LegKey) -> bool {
        self.siprec.as_ref().is_some_and(|s| s.key == key)
    }

    /// What the SRS's dialog says.
    pub(crate) fn siprec_sip(&mut self, now: Instant, ctx: &mut CallCtx<'_>, ev: SipLegEvent) {
        let Some(s) = self.siprec.as_mut() else {
            return;
        };
        match ev {
            SipLegEvent::Answered { sdp } if s.state == SrsState::Inviting => {
                let agreed = sdp
                    .as_deref()
                    .ok_or(siprec::SiprecError::NoSdp)
                    .and_then(|b| siprec::answered(&s.offer, b));
                match agreed {
                    Ok(streams) => {
                        s.state = SrsState::Active;
                        for (leg, (n, port)) in
                            s.streams.into_iter().zip(streams.iter().zip(s.ports))
                        {
                            self.media(MediaCommand::AddRtp {
                                leg,
                                local_port: port,
                                remote: n.remote,
                                format: format_of(n),
                                rtcp_mux: n.rtcp_mux,
                                latch_from: None,
                            });
                        }
                        let (id, waits) = self
                            .siprec
                            .as_mut()
                            .map(|s| (s.id.clone(), std::mem::take(&mut s.dial_waits)))
                            .unwrap_or_default();
                        self.siprec_event(now, &id, "started", None, None);
                        self.sync_siprec(now, ctx);
                        if waits && self.dialing() {
                            // Recorded: now the plan rings.
                            self.start_step(now, ctx);
                            self.settle(now, ctx);
                        }
                    }
                    Err(e) => {
                        let key = s.key;
                        self.sip(key, SipAction::Hangup);
                        self.siprec_ended(now, ctx, Some(488), &e.to_string(), false);
                    }
                }
            }
            SipLegEvent::AnsweredWithOffer { .. } => {
                // We always offer; an offer back is no answer.
                let key = s.key;
                self.sip(key, SipAction::Hangup);
                self.siprec_ended(now, ctx, Some(488), "the SRS answered with an offer", false);
            }
            SipLegEvent::Failed { status } => {
                self.siprec_ended(now, ctx, Some(status), "the SRS refused", false);
            }
            SipLegEvent::Terminated { .. } => {
                let was = s.state;
                self.siprec_ended(now, ctx, None, "the SRS ended it", was == SrsState::Active);
            }
            SipLegEvent::Offer { sdp } => self.siprec_offer(&sdp),
            SipLegEvent::OfferAnswered { .. } => {
                // Answered or not, a later change sends the whole snapshot.
                s.updating = false;
                self.siprec_update();
            }
            _ => {}
        }
    }

    /// The SRS's own offer (a re-INVITE: a refresh, or a pause as RFC 7866
    /// section 9.1 allows): answered with our streams, each `inactive` where
    /// it asks for no media, and that label's media stops.
    fn siprec_offer(&mut self, body: &[u8]) {
        let Some(s) = self.siprec.as_mut() else {
            return;
        };
        let Some(theirs) = siprec::sdp_part(body).and_then(|t| SessionDescription::parse(t).ok())
        else {
            let key = s.key;
            return self.sip(
                key,
                SipAction::AnswerOffer {
                    status: 488,
                    sdp: None,
                },
            );
        };
        let mut answer = s.offer.clone();
        answer.origin.session_version += 1;
        s.offer.origin.session_version += 1;
        for (i, l) in Label::ALL.into_iter().enumerate() {
            let receives = theirs
                .media
                .iter()
                .find(|m| m.attribute("label") == Some(l.as_str()))
                .or_else(|| theirs.media.get(i))
                .is_some_and(|m| m.direction_or(Direction::SendRecv).receives());
            s.paused[i] = !receives;
            if let Some(m) = answer.media.get_mut(i) {
                let dir = if receives {
                    Direction::SendOnly
                } else {
                    Direction::Inactive
                };
                m.attributes
                    .retain(|a| Direction::from_attr(&a.name).is_none());
                m.attributes.push(crate::sdp::Attribute::flag(dir.as_str()));
            }
        }
        let key = s.key;
        self.sip(
            key,
            SipAction::AnswerOffer {
                status: 200,
                sdp: Some(answer.to_string()),
            },
        );
        self.sync_siprec_feeds();
    }

    /// The SIPREC session follows the call (with [`Call::settle`]): its
    /// labels hear what a recording's channels do, and a change of who is in
    /// the call goes to the SRS.
    pub(crate) fn sync_siprec(&mut self, now: Instant, ctx: &CallCtx<'_>) {
        let Some(mut s) = self.siprec.take() else {
            return;
        };
        let at = ctx.unix_ms(now);
        if self.siprec_participants(ctx, at, &mut s.meta) {
            s.dirty = true;
        }
        self.siprec = Some(s);
        self.sync_siprec_feeds();
        self.siprec_update();
    }

    fn sync_siprec_feeds(&mut self) {
        let (want, _) = self.tapped_channels();
        let Some(s) = self.siprec.as_mut() else {
            return;
        };
        if s.state != SrsState::Active {
            return;
        }
        let mut cmds = Vec::new();
        for (i, feeds) in want.into_iter().enumerate() {
            let feeds = if s.paused[i] { Vec::new() } else { feeds };
            if s.feeds[i] != feeds {
                s.feeds[i] = feeds.clone();
                cmds.push(MediaCommand::Hear {
                    listener: s.streams[i],
                    feeds,
                });
            }
        }
        for c in cmds {
            self.media(c);
        }
    }

    /// A re-INVITE with the new metadata when it changed and none is out.
    fn siprec_update(&mut self) {
        let Some(s) = self.siprec.as_mut() else {
            return;
        };
        if s.state != SrsState::Active || s.updating || !s.dirty {
            return;
        }
        s.dirty = false;
        s.updating = true;
        // The SDP is unchanged, so is its version (RFC 3264 section 8).
        let (_, body) = siprec::body(&s.offer.to_string(), &s.meta.to_xml());
        let key = s.key;
        self.sip(key, SipAction::Reinvite { sdp: body });
    }

    /// Brings `meta`'s participants up to who is in the call at Unix ms
    /// `at`; whether anything changed.
    fn siprec_participants(&self, ctx: &CallCtx<'_>, at: u64, meta: &mut Metadata) -> bool {
        let customer = self.customer().or(Some(self.caller));
        let mut changed = false;
        let mut present = Vec::new();
        for (k, p) in &self.parties {
            if !p.joined() || matches!(p.leg, Leg::Echo | Leg::Tone(_)) {
                continue;
            }
            present.push(k.0);
            let sends = if Some(*k) == customer {
                Some(Label::Customer)
            } else if p.full_participant() {
                Some(Label::Others)
            } else {
                None
            };
            match meta
                .participants
                .iter_mut()
                .find(|m| m.party == k.0 && m.left_ms.is_none())
            {
                Some(m) if m.sends == sends => {}
                Some(m) => {
                    m.sends = sends;
                    changed = true;
                }
                None => {
                    let who = if *k == self.caller && p.target.is_none() {
                        self.from.clone()
                    } else {
                        p.label()
                    };
                    meta.participants.push(Participant {
                        party: k.0,
                        aor: aor_of(&who, ctx.local_host),
                        name: p.name.clone().or_else(|| {
                            (*k == self.caller)
                                .then(|| self.caller_name.clone())
                                .flatten()
                        }),
                        role: p.role.as_str().into(),
                        sends,
                        joined_ms: at,
                        left_ms: None,
                    });
                    changed = true;
                }
            }
        }
        for m in &mut meta.participants {
            if m.left_ms.is_none() && !present.contains(&m.party) {
                m.left_ms = Some(at);
                changed = true;
            }
        }
        // Bounded: a call's parties are; who left long ago goes first.
        while meta.participants.len() > 64 {
            match meta.participants.iter().position(|m| m.left_ms.is_some()) {
                Some(i) => {
                    meta.participants.remove(i);
                }
                None => break,
            }
        }
        changed
    }

    /// The SRS never took the session (or it ended): ports back, media legs
    /// gone, an event; with `fail_closed` the call ends.
    fn siprec_ended(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        code: Option<u16>,
        reason: &str,
        was_active: bool,
    ) {
        let Some(s) = self.siprec.take() else {
            return;
        };
        for p in s.ports {
            ctx.ports.give(p);
        }
        if s.state == SrsState::Active {
            for leg in s.streams {
                self.media(MediaCommand::Remove { leg });
            }
        }
        let state = if was_active { "stopped" } else { "failed" };
        self.siprec_event(now, &s.id, state, Some(reason.into()), code);
        if s.opts.fail_closed {
            self.siprec_fail_closed(now, ctx);
        }
    }

    fn siprec_failed(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        opts: &SiprecOptions,
        id: &str,
        code: u16,
        reason: &str,
    ) {
        self.siprec_event(now, id, "failed", Some(reason.into()), Some(code));
        if opts.fail_closed {
            self.siprec_fail_closed(now, ctx);
        }
    }

    /// Compliance: no recording, no call. A caller still ringing gets 503.
    fn siprec_fail_closed(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let status = if self.is_connected() {
            DialStatus::Completed
        } else {
            DialStatus::Failed
        };
        self.end_call(now, ctx, status, EndReason::Failed, Some(503));
    }

    /// Ends the session with the call: BYE (or CANCEL) to the SRS.
    pub(crate) fn end_siprec(&mut self, now: Instant, ctx: &mut CallCtx<'_>) {
        let Some(s) = self.siprec.take() else {
            return;
        };
        self.sip(s.key, SipAction::Hangup);
        for p in s.ports {
            ctx.ports.give(p);
        }
        if s.state == SrsState::Active {
            self.siprec_event(now, &s.id, "stopped", Some("the call ended".into()), None);
        }
    }

    /// The `siprec` event (webhooks, metrics).
    fn siprec_event(
        &mut self,
        now: Instant,
        id: &str,
        state: &'static str,
        reason: Option<String>,
        code: Option<u16>,
    ) {
        let mut ev = self.report(now, CallEventKind::Siprec);
        ev.code = code;
        ev.recording = Some(Box::new(RecordingReport {
            id: id.into(),
            state,
            via: "plan",
            reason,
        }));
        self.push(super::CallOutput::Event(ev));
    }
}

/// A participant's address of record from how the call names it
/// (`operator:alice`, `pstn:+1555...`, a SIP URI, the caller's number).
fn aor_of(who: &str, host: &str) -> String {
    let lower = who.to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:") {
        return who.into();
    }
    let user = ["pstn:", "operator:", "number:"]
        .iter()
        .find_map(|p| who.strip_prefix(p))
        .unwrap_or(who);
    let user: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-_.!~*'()&=$,;?/".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("sip:{user}@{host}")
}

#[cfg(test)]
mod tests {
    use super::aor_of;

    #[test]
    fn aors_are_sip_uris() {
        assert_eq!(aor_of("operator:alice", "h"), "sip:alice@h");
        assert_eq!(aor_of("pstn:+15550100", "h"), "sip:+15550100@h");
        assert_eq!(aor_of("+15550111", "h"), "sip:+15550111@h");
        assert_eq!(aor_of("sip:bob@192.0.2.4", "h"), "sip:bob@192.0.2.4");
        assert_eq!(aor_of("agent:sales bot", "h"), "sip:agent-sales-bot@h");
    }
}
