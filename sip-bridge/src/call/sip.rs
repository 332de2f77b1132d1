//! The call's SIP legs: a target's progress, answer and failure (with trunk
//! failover), a leg that ends, re-INVITEs from the peer (hold, a new address)
//! and ours (hold toward a peer), DTMF by INFO.

use media_core::Instant;

use super::dial::{caps_for, format_of, offer_codecs};
use super::party::{Leg, Origin, SipState};
use super::state::CallState;
use super::{Call, CallCtx, Progress, SipAction, SipLegEvent};
use crate::contract::{LegKey, MediaCommand};
use crate::plan::{DialStatus, Target};
use crate::sdp::{self, Attribute, Direction as SdpDirection, LocalMedia, SessionDescription};
use crate::signalling::EndReason;
use crate::sip::dialog::EndReason as SipEnd;
use crate::sip::dtmf_info;

/// Our SDP again with the audio direction set and the version bumped (RFC 3264
/// section 8: a new offer in a session increments `o=`'s version).
pub(crate) fn with_direction(sdp_text: &str, dir: SdpDirection, version: u64) -> Option<String> {
    let mut sd = SessionDescription::parse(sdp_text).ok()?;
    sd.origin.session_version = version;
    let is_dir = |a: &Attribute| {
        matches!(
            a.name.as_str(),
            "sendrecv" | "sendonly" | "recvonly" | "inactive"
        )
    };
    sd.attributes.retain(|a| !is_dir(a));
    for m in sd.media.iter_mut().filter(|m| m.media == "audio") {
        m.attributes.retain(|a| !is_dir(a));
        m.attributes.push(Attribute::flag(dir.as_str()));
    }
    Some(sd.to_string())
}

/// The SIP status a caller gets for a plan's outcome.
pub(crate) fn caller_status(status: DialStatus, code: Option<u16>) -> u16 {
    match status {
        DialStatus::Busy => 486,
        DialStatus::NoAnswer | DialStatus::Canceled => 480,
        // A target's (or a router's) status passes, but for challenges and our
        // own 487, which mean nothing to the caller.
        _ => code
            .filter(|c| (400..700).contains(c) && !matches!(c, 401 | 407 | 487))
            .unwrap_or(480),
    }
}

impl Call {
    /// The SIP address party `key`'s media may latch to besides its SDP's.
    fn latch_from_of(&self, key: LegKey) -> Option<std::net::IpAddr> {
        self.parties
            .get(&key)
            .and_then(|p| p.sip())
            .and_then(|s| s.latch_from)
    }

    /// An event of SIP leg `key`.
    pub fn handle_sip(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        ev: SipLegEvent,
    ) {
        if self.is_ended() {
            return;
        }
        if self.is_siprec(key) {
            return self.siprec_sip(now, ctx, ev);
        }
        if let Some(&port) = self.ending.get(&key) {
            // A leg we cancelled: its 200 crossing our CANCEL is ended too; its
            // port comes back once it is gone.
            match ev {
                SipLegEvent::Answered { .. } | SipLegEvent::AnsweredWithOffer { .. } => {
                    self.sip(key, SipAction::Hangup)
                }
                SipLegEvent::Failed { .. } | SipLegEvent::Terminated { .. } => {
                    self.ending.remove(&key);
                    ctx.ports.give(port);
                }
                _ => {}
            }
            return;
        }
        match ev {
            SipLegEvent::Progress { status, sdp } => {
                self.target_progress(now, ctx, key, status, sdp.as_deref())
            }
            SipLegEvent::Answered { sdp } => self.target_answered(now, ctx, key, sdp.as_deref()),
            SipLegEvent::AnsweredWithOffer { sdp } => self.target_offered(now, ctx, key, &sdp),
            SipLegEvent::Failed { status } => self.target_failed(now, ctx, key, status),
            SipLegEvent::Offer { sdp } => self.remote_offer(ctx, key, &sdp),
            SipLegEvent::OfferAnswered { status, sdp } => {
                if (200..300).contains(&status)
                    && let Some(sdp) = sdp
                {
                    self.negotiate_answer(ctx, key, &sdp);
                }
            }
            SipLegEvent::Info { content_type, body } => {
                if let Some(d) = dtmf_info::digit(&content_type, &body) {
                    self.forward_dtmf(ctx, key, d, false);
                }
            }
            SipLegEvent::Terminated { reason } => self.sip_terminated(now, ctx, key, reason),
            SipLegEvent::Refer { refer_to } => self.sip_refer(now, ctx, key, &refer_to),
            SipLegEvent::ReferAnswered { status } => self.refer_answered(now, ctx, key, status),
            SipLegEvent::ReferProgress { status, last } => {
                self.refer_progress(now, ctx, key, status, last)
            }
            SipLegEvent::Acked { sdp } => self.acked(now, ctx, key, sdp.as_deref()),
        }
        self.settle(now, ctx);
    }

    fn target_progress(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        status: u16,
        sdp: Option<&[u8]>,
    ) {
        if key == self.caller && self.originating() {
            if status == 180 || status == 183 {
                self.originator_ringing(now);
            }
            return;
        }
        if !matches!(self.state, CallState::Dialing(_))
            || !self.parties.get(&key).is_some_and(|p| p.ringing())
        {
            return;
        }
        let plan_target = matches!(
            self.parties.get(&key).map(|p| &p.origin),
            Some(Origin::Plan(_))
        );
        let mut early = false;
        // Early SDP from a target we sent no offer to would be its offer, which
        // we take in the 2xx only (we do not PRACK with an answer).
        let offered = self
            .parties
            .get(&key)
            .and_then(|p| p.sip())
            .is_some_and(|s| !s.late_offer);
        if let Some(body) = sdp.filter(|_| offered)
            && self.negotiate_answer(ctx, key, body)
            && plan_target
        {
            // Early media: only one target's at a time reaches the caller.
            let someone_else = self
                .parties
                .iter()
                .any(|(k, p)| *k != key && p.sip().is_some_and(|s| s.early_media));
            if !someone_else {
                if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut()) {
                    s.early_media = true;
                }
                early = true;
            }
        }
        if !plan_target {
            return;
        }
        let caller = self.caller;
        match self.parties.get(&caller).map(|p| &p.leg) {
            Some(Leg::Operator(o)) if early || self.progress == Progress::None => {
                let op = o.op.clone();
                self.send_ringing(&op, early);
                if self.progress == Progress::None {
                    self.event(now, super::CallEventKind::Ringing, None, None, None);
                }
                self.progress = Progress::Ringback;
            }
            Some(Leg::Sip(_)) => self.relay_progress(now, status, early),
            _ => {}
        }
    }

    /// Passes a SIP target's progress on to the SIP caller, once for all forks:
    /// the first 18x as it came (without SDP), the first early media as 183 with
    /// our SDP. Nothing when the caller hears our ringback already (its tone
    /// gives way to early media in the graph).
    fn relay_progress(&mut self, now: Instant, status: u16, early: bool) {
        let caller = self.caller;
        let Some(s) = self.parties.get(&caller).and_then(|p| p.sip()) else {
            return;
        };
        if s.state != SipState::Ringing {
            // Answered already (an agent spoke to it): our tone is all it can get.
            self.progress = Progress::Ringback;
            return;
        }
        let early = early && !s.late_offer; // no SDP before the 200 for it
        let (status, sdp) = match self.progress {
            Progress::Ringback | Progress::Relayed { sdp: true } => return,
            Progress::Relayed { sdp: false } if !early => return,
            _ if early => (183, Some(s.local_sdp.clone())), // commits our answer
            // 181 forwarded, 182 queued, 183 without SDP pass as they are.
            _ if (181..=183).contains(&status) => (status, None),
            _ => (180, None),
        };
        let first = self.progress == Progress::None;
        self.progress = Progress::Relayed { sdp: sdp.is_some() };
        if sdp.is_some()
            && let Some(s) = self.parties.get_mut(&caller).and_then(|p| p.sip_mut())
        {
            s.open_offer = None;
        }
        self.sip(
            caller,
            SipAction::Respond {
                status,
                sdp,
                headers: Vec::new(),
            },
        );
        if first {
            self.event(now, super::CallEventKind::Ringing, None, None, None);
        }
    }

    /// The ACK for our 200 to a late-offer caller carries its answer: its
    /// media starts. Without a usable answer the caller leaves (it cannot be
    /// heard), which ends a two-party call.
    fn acked(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey, sdp: Option<&[u8]>) {
        let late = self
            .parties
            .get(&key)
            .and_then(|p| p.sip())
            .is_some_and(|s| s.late_offer && s.negotiated.is_none());
        if !late {
            return;
        }
        if sdp.is_some_and(|b| self.negotiate_answer(ctx, key, b)) {
            return;
        }
        self.leave(now, ctx, key, EndReason::Failed, true);
    }

    /// Reads a target's SDP answer (183 or 200): sets up or updates its RTP leg.
    /// Returns whether it was usable.
    fn negotiate_answer(&mut self, ctx: &CallCtx<'_>, key: LegKey, body: &[u8]) -> bool {
        let Some(s) = self.parties.get(&key).and_then(|p| p.sip()) else {
            return false;
        };
        let (Ok(offer), Some(answer)) = (
            SessionDescription::parse(&s.local_sdp),
            std::str::from_utf8(body)
                .ok()
                .and_then(|t| SessionDescription::parse(t).ok()),
        ) else {
            return false;
        };
        let Ok(n) = sdp::negotiated_from_answer(&offer, &answer) else {
            return false;
        };
        let format = format_of(&n);
        let first = s.negotiated.is_none();
        let port = s.port;
        if first
            && matches!(
                self.parties.get(&key).map(|p| &p.origin),
                Some(Origin::Plan(_))
            )
        {
            self.match_caller_codec(ctx, n.codec);
        }
        let cmd = if !first {
            MediaCommand::UpdateRtp {
                leg: key,
                remote: n.remote,
                format,
                rtcp_mux: n.rtcp_mux,
            }
        } else {
            MediaCommand::AddRtp {
                leg: key,
                local_port: port,
                remote: n.remote,
                format,
                rtcp_mux: n.rtcp_mux,
                latch_from: self.latch_from_of(key),
            }
        };
        if let Some(p) = self.parties.get_mut(&key) {
            p.in_media = true;
            if let Some(s) = p.sip_mut() {
                s.negotiated = Some(n);
            }
        }
        self.media(cmd);
        true
    }

    /// The SIP caller's answer has not gone out yet: answer its offer again
    /// with `codec`, the one its target chose, if the caller offered it and its
    /// trunk takes it, so the two legs relay instead of transcoding (rtpengine's
    /// and FreeSWITCH's rule). RFC 3264 section 6: an answer picks from the offer.
    fn match_caller_codec(&mut self, ctx: &CallCtx<'_>, codec: media_core::codec::Codec) {
        let caller = self.caller;
        let Some(s) = self.parties.get(&caller).and_then(|p| p.sip()) else {
            return;
        };
        if s.late_offer && s.state == SipState::Ringing {
            // Our offer has not gone out yet: the target's codec first in it.
            let mut codecs = offer_codecs(ctx, s.trunk);
            if !codecs.contains(&codec) {
                return;
            }
            codecs.sort_by_key(|c| *c != codec);
            let session_id = SessionDescription::parse(&s.local_sdp)
                .ok()
                .and_then(|sd| sd.origin.session_id.parse().ok())
                .unwrap_or(1);
            let local = LocalMedia::rtp(ctx.cfg.media_ip_for(s.ipv6), s.port, session_id);
            let offer = sdp::create_offer(&caps_for(&codecs), &local).to_string();
            if let Some(s) = self.parties.get_mut(&caller).and_then(|p| p.sip_mut()) {
                s.local_sdp = offer;
            }
            return;
        }
        let (Some(offer), Some(in_use)) = (
            s.open_offer
                .as_deref()
                .and_then(|t| SessionDescription::parse(t).ok()),
            s.negotiated.as_ref(),
        ) else {
            return;
        };
        let trunk_takes = s
            .trunk
            .and_then(|t| ctx.cfg.trunks.get(t))
            .is_none_or(|t| t.codecs.is_empty() || t.codecs.contains(&codec));
        if in_use.codec == codec || !trunk_takes {
            return;
        }
        let session_id = SessionDescription::parse(&s.local_sdp)
            .ok()
            .and_then(|sd| sd.origin.session_id.parse().ok())
            .unwrap_or(1);
        let local = LocalMedia::rtp(ctx.cfg.media_ip_for(s.ipv6), s.port, session_id);
        let Ok((answer, n)) = sdp::answer_audio(&offer, &caps_for(&[codec]), &local) else {
            return; // not offered: the call transcodes
        };
        self.media(MediaCommand::UpdateRtp {
            leg: caller,
            remote: n.remote,
            format: format_of(&n),
            rtcp_mux: n.rtcp_mux,
        });
        if let Some(s) = self.parties.get_mut(&caller).and_then(|p| p.sip_mut()) {
            s.local_sdp = answer.to_string();
            s.negotiated = Some(n);
        }
    }

    /// A late-offer target answered with its offer in the 2xx: our answer
    /// goes in the ACK, with a codec the caller can take if it offers one (so
    /// the legs relay), else one of the trunk's; then it is answered as any.
    fn target_offered(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey, body: &[u8]) {
        let Some(s) = self.parties.get(&key).and_then(|p| p.sip()) else {
            return;
        };
        let (port, trunk, ipv6) = (s.port, s.trunk, s.ipv6);
        let session_id = SessionDescription::parse(&s.local_sdp)
            .ok()
            .and_then(|sd| sd.origin.session_id.parse().ok())
            .unwrap_or(1);
        let local = LocalMedia::rtp(ctx.cfg.media_ip_for(ipv6), port, session_id);
        let codecs = offer_codecs(ctx, trunk);
        let caller_takes = self.caller_codecs(&codecs);
        let answer = std::str::from_utf8(body)
            .ok()
            .and_then(|t| SessionDescription::parse(t).ok())
            .and_then(|offer| {
                let relayable = (!caller_takes.is_empty())
                    .then(|| sdp::answer_audio(&offer, &caps_for(&caller_takes), &local).ok())
                    .flatten();
                relayable.or_else(|| sdp::answer_audio(&offer, &caps_for(&codecs), &local).ok())
            });
        let Some((answer, n)) = answer else {
            // Unusable: ACK, then the 2xx-without-answer path ends it with BYE.
            self.sip(key, SipAction::Ack { sdp: None });
            return self.target_answered(now, ctx, key, None);
        };
        let answer = answer.to_string();
        self.sip(
            key,
            SipAction::Ack {
                sdp: Some(answer.clone()),
            },
        );
        if matches!(
            self.parties.get(&key).map(|p| &p.origin),
            Some(Origin::Plan(_))
        ) {
            self.match_caller_codec(ctx, n.codec);
        }
        self.media(MediaCommand::AddRtp {
            leg: key,
            local_port: port,
            remote: n.remote,
            format: format_of(&n),
            rtcp_mux: n.rtcp_mux,
            latch_from: self.latch_from_of(key),
        });
        if let Some(p) = self.parties.get_mut(&key) {
            p.in_media = true;
            if let Some(s) = p.sip_mut() {
                s.negotiated = Some(n);
                s.local_sdp = answer;
            }
        }
        self.target_answered(now, ctx, key, None);
    }

    fn target_answered(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        sdp: Option<&[u8]>,
    ) {
        if let Some(b) = sdp {
            self.negotiate_answer(ctx, key, b);
        }
        let Some(p) = self.parties.get_mut(&key) else {
            return;
        };
        let Some(s) = p.sip_mut() else {
            return;
        };
        s.state = SipState::Up;
        let usable = s.negotiated.is_some();
        let won_elsewhere = match &p.origin {
            Origin::Plan(_) => !matches!(self.state, CallState::Dialing(_)),
            Origin::Added { .. } => false,
            Origin::Caller => !matches!(self.state, CallState::Originating { .. }),
            _ => true,
        };
        if !won_elsewhere && p.ringing() && usable {
            return self.answered(now, ctx, key);
        }
        // Someone else answered first, or a 2xx without a usable answer: this
        // one goes (ACKed by the UA, then BYE; its port once it is gone).
        let Some(p) = self.parties.remove(&key) else {
            return;
        };
        if let Some(s) = p.sip() {
            self.ending.insert(key, s.port);
        }
        // A fork that answered too late hears why (RFC 3326 cause 200).
        self.sip(
            key,
            if usable {
                SipAction::HangupElsewhere
            } else {
                SipAction::Hangup
            },
        );
        if p.in_media {
            self.media(MediaCommand::Remove { leg: key });
        }
        let reason = if usable { "taken_by_other" } else { "failed" };
        self.record_left(now, key, &p, reason);
        if usable || !p.ringing() {
            return;
        }
        if matches!(p.origin, Origin::Added { .. }) {
            self.tell_left(now, ctx, key, reason);
        }
        if let CallState::Dialing(d) = &mut self.state {
            d.fail_code = Some(488);
        }
        self.never_joined(now, ctx, p.origin, reason, Some(488));
    }

    fn target_failed(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey, status: u16) {
        if key == self.caller && self.originating() {
            return self.originator_sip_failed(now, ctx, status);
        }
        if key == self.caller || self.parties.get(&key).is_none_or(|p| p.sip().is_none()) {
            return;
        }
        let reason = match status {
            486 | 600 => "busy",
            408 | 480 => "no_answer",
            _ => "failed",
        };
        // The UA's leg is gone.
        let Some(p) = self.gone(now, ctx, key, reason) else {
            return;
        };
        let Some(s) = p.sip() else {
            return;
        };
        // Failover to the trunk's next peer on a server or transport failure.
        let live = match &p.origin {
            Origin::Plan(_) => matches!(self.state, CallState::Dialing(_)),
            Origin::Added { .. } => true,
            _ => false,
        };
        if matches!(status, 408 | 500 | 502 | 503 | 504)
            && let (Some(t), Some(target)) = (s.trunk, p.target.clone())
            && s.attempt + 1 < ctx.cfg.trunks[t].peers.len()
            && live
        {
            let uri = match &target {
                Target::Pstn { number, .. } => format!("sip:{number}@{}", ctx.cfg.trunks[t].host),
                Target::Sip(u) => u.clone(),
                _ => String::new(),
            };
            let next = Some(s.attempt + 1);
            if self
                .ring_sip_at(
                    now,
                    ctx,
                    target,
                    uri,
                    Some(t),
                    next,
                    p.role,
                    p.origin.clone(),
                )
                .is_ok()
            {
                return;
            }
        }
        if let CallState::Dialing(d) = &mut self.state {
            match status {
                486 | 600 => d.busy = true,
                _ => d.fail_code = Some(status),
            }
        }
        self.never_joined(now, ctx, p.origin, reason, Some(status));
    }

    /// A party of `origin` is gone without joining: an added one is reported
    /// to whoever asked; a plan's target may end its step.
    fn never_joined(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        origin: Origin,
        reason: &str,
        status: Option<u16>,
    ) {
        match origin {
            Origin::Added {
                by,
                reference,
                group,
                ..
            } => self.add_not_joined(now, ctx, by, reference, group, reason, status),
            _ => self.after_target_gone(now, ctx),
        }
    }

    /// A SIP party that never joined is gone on the UA's side: out of the table,
    /// its port back, recorded and told (`reason`).
    fn gone(
        &mut self,
        now: Instant,
        ctx: &mut CallCtx<'_>,
        key: LegKey,
        reason: &'static str,
    ) -> Option<super::party::Party> {
        let p = self.parties.remove(&key)?;
        if let Some(s) = p.sip() {
            ctx.ports.give(s.port);
        }
        if p.in_media {
            self.media(MediaCommand::Remove { leg: key });
        }
        self.record_left(now, key, &p, reason);
        if matches!(p.origin, Origin::Added { .. }) {
            self.tell_left(now, ctx, key, reason);
        }
        Some(p)
    }

    fn sip_terminated(&mut self, now: Instant, ctx: &mut CallCtx<'_>, key: LegKey, reason: SipEnd) {
        let Some(p) = self.parties.get(&key) else {
            return;
        };
        if p.sip().is_none() {
            return;
        }
        if key == self.caller && self.originating() {
            let code = match reason {
                SipEnd::Failed(c) => c,
                _ => 487,
            };
            return self.originator_sip_failed(now, ctx, code);
        }
        if key == self.caller && !self.is_connected() {
            // The caller gave up (or its INVITE failed) before an answer.
            let (status, code) = match reason {
                SipEnd::Failed(c) => (DialStatus::Failed, Some(c)),
                _ => (DialStatus::Canceled, None),
            };
            // A caller that was a fork of a call on another node, which
            // someone else answered (RFC 3326 cause 200).
            let op_reason = if status == DialStatus::Failed {
                EndReason::Failed
            } else if reason == SipEnd::CompletedElsewhere {
                EndReason::TakenByOther
            } else {
                EndReason::RemoteHangup
            };
            if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut()) {
                s.state = SipState::Ending; // nothing more to send it
            }
            return self.end_call(now, ctx, status, op_reason, code);
        }
        if key == self.caller && reason == SipEnd::CompletedElsewhere {
            // Our answer lost the race at the node that forked to us: every
            // operator here hears `taken_by_other`, not a hang-up.
            if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut()) {
                s.state = SipState::Ending;
            }
            return self.end_call(
                now,
                ctx,
                DialStatus::Canceled,
                EndReason::TakenByOther,
                None,
            );
        }
        if p.joined() {
            // The peer hung up (its BYE is answered by the UA): it leaves.
            if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut()) {
                s.state = SipState::Ending;
            }
            // RFC 4028 section 10: its session was not refreshed; we sent BYE.
            let name = if reason == SipEnd::SessionExpired {
                "session_expired"
            } else {
                "hangup"
            };
            return self.leave_as(now, ctx, key, EndReason::Hangup, true, name);
        }
        // A target that never joined is gone (a late BYE, a failure without a
        // final response).
        if let Some(p) = self.gone(now, ctx, key, "failed") {
            self.never_joined(now, ctx, p.origin, "failed", None);
        }
    }

    /// A re-INVITE from a SIP leg: hold/resume or a new address.
    fn remote_offer(&mut self, ctx: &mut CallCtx<'_>, key: LegKey, body: &[u8]) {
        let Some(s) = self.parties.get(&key).and_then(|p| p.sip()).cloned() else {
            return;
        };
        let Some(offer) = std::str::from_utf8(body)
            .ok()
            .and_then(|t| SessionDescription::parse(t).ok())
        else {
            return self.sip(
                key,
                SipAction::AnswerOffer {
                    status: 488,
                    sdp: None,
                },
            );
        };
        // Keep the codec in use; the media session is built for it.
        let codecs: Vec<_> = s.negotiated.iter().map(|n| n.codec).collect();
        // RFC 3264 section 8: same o= session id as our earlier SDP, version + 1.
        let session_id = SessionDescription::parse(&s.local_sdp)
            .ok()
            .and_then(|sd| sd.origin.session_id.parse().ok())
            .unwrap_or(1);
        let mut local = LocalMedia::rtp(ctx.cfg.media_ip_for(s.ipv6), s.port, session_id);
        local.session_version = s.sdp_version + 1;
        let Ok((answer, n)) = sdp::answer_audio(&offer, &caps_for(&codecs), &local) else {
            return self.sip(
                key,
                SipAction::AnswerOffer {
                    status: 488,
                    sdp: None,
                },
            );
        };
        // Our answer does not send when the peer does not receive: it holds us.
        let remote_held = !n.direction.sends();
        let format = format_of(&n);
        self.media(MediaCommand::UpdateRtp {
            leg: key,
            remote: n.remote,
            format,
            rtcp_mux: n.rtcp_mux,
        });
        let answer = answer.to_string();
        if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut()) {
            s.negotiated = Some(n);
            s.sdp_version += 1;
            s.remote_held = remote_held;
            s.local_sdp = answer.clone();
        }
        self.sip(
            key,
            SipAction::AnswerOffer {
                status: 200,
                sdp: Some(answer),
            },
        );
    }

    /// The party a node of the cluster answered for (its SIP leg to that
    /// node), while the caller is a SIP leg and the call is connected: what a
    /// survivor needs to carry the caller's dialog on (see
    /// [`crate::cluster`]).
    pub fn peer_anchor(&self) -> Option<(LegKey, String)> {
        if !self.is_connected()
            || self
                .parties
                .get(&self.caller)
                .and_then(|p| p.sip())
                .is_none()
        {
            return None;
        }
        self.parties.iter().find_map(|(k, p)| {
            let node = p.sip()?.peer_node.clone()?;
            (p.joined() && *k != self.caller).then_some((*k, node))
        })
    }

    /// Node `node` died: the parties this call had there (joined or still
    /// ringing) leave as `node_failure`; a call left with one party ends
    /// (its caller gets a BYE), as when any party hangs up. How many left.
    pub fn peer_node_lost(&mut self, now: Instant, ctx: &mut CallCtx<'_>, node: &str) -> usize {
        let gone: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(_, p)| p.sip().and_then(|s| s.peer_node.as_deref()) == Some(node))
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            // Nothing is sent to a dead node: its leg is dropped as it is.
            if let Some(s) = self.parties.get_mut(k).and_then(|p| p.sip_mut()) {
                s.state = SipState::Ending;
            }
            self.sip(*k, SipAction::Forget);
            self.leave_as(now, ctx, *k, EndReason::Failed, true, "node_failure");
        }
        if !gone.is_empty() {
            self.settle(now, ctx);
        }
        gone.len()
    }

    /// The owner of this call (another node) died, and this node took its
    /// dialog with the caller over (the UA adopted it, see
    /// [`crate::sip::dialog::snapshot`]): the caller is re-INVITEd with the
    /// dead node's SDP moved to our address and port, its version moved on,
    /// so its media comes here (RFC 3264 section 8). Whether it went out.
    pub fn reanchor_caller(&mut self, ctx: &CallCtx<'_>, their_sdp: &str) -> bool {
        let key = self.caller;
        let Some(s) = self.parties.get(&key).and_then(|p| p.sip()) else {
            return false;
        };
        let Ok(mut sd) = SessionDescription::parse(their_sdp) else {
            return false;
        };
        let ip = ctx.cfg.media_ip_for(s.ipv6).to_string();
        let version =
            sd.origin.session_version + u64::from(crate::sip::dialog::snapshot::CSEQ_JUMP);
        sd.origin.session_version = version;
        sd.origin.address.clone_from(&ip);
        if let Some(c) = sd.connection.as_mut() {
            c.address.clone_from(&ip);
        }
        let Some(m) = sd.media.iter_mut().find(|m| m.media == "audio") else {
            return false;
        };
        m.port = s.port;
        if let Some(c) = m.connection.as_mut() {
            c.address.clone_from(&ip);
        }
        let offer = sd.to_string();
        // This node owns the call now.
        self.from_peer = None;
        if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut()) {
            s.local_sdp = offer.clone();
            s.sdp_version = version;
            s.peer_node = None;
            s.trunk = None;
        }
        self.sip(key, SipAction::Reinvite { sdp: offer });
        true
    }

    /// Our hold/resume toward SIP leg `key`: a re-INVITE with `sendonly` or
    /// `sendrecv`. Returns whether it went out.
    pub(crate) fn hold_sip(&mut self, ctx: &CallCtx<'_>, key: LegKey, on: bool) -> bool {
        let Some(s) = self.parties.get(&key).and_then(|p| p.sip()) else {
            return false;
        };
        if s.state != SipState::Up {
            return false;
        }
        let dir = if on {
            SdpDirection::SendOnly
        } else {
            SdpDirection::SendRecv
        };
        let Some(offer) = with_direction(&s.local_sdp, dir, s.sdp_version + 1) else {
            return false;
        };
        let update = s
            .trunk
            .and_then(|t| ctx.cfg.trunks.get(t))
            .is_some_and(|t| t.update_offers);
        if let Some(s) = self.parties.get_mut(&key).and_then(|p| p.sip_mut()) {
            s.local_sdp = offer.clone();
            s.sdp_version += 1;
            s.held_by_us = on;
        }
        self.sip(
            key,
            if update {
                SipAction::Update { sdp: offer }
            } else {
                SipAction::Reinvite { sdp: offer }
            },
        );
        true
    }

    /// Sends digits into party `to` as its kind wants them.
    pub(crate) fn send_dtmf_to(&mut self, ctx: &CallCtx<'_>, to: LegKey, digits: &str) {
        let Some(p) = self.parties.get(&to) else {
            return;
        };
        match &p.leg {
            Leg::Operator(o) => {
                let op = o.op.clone();
                for d in digits.chars().filter(|c| *c != ',') {
                    self.send_operator(
                        &op,
                        crate::signalling::ServerMessage::Dtmf {
                            call_id: self.id.to_string(),
                            digit: d.to_string(),
                        },
                    );
                }
            }
            Leg::Agent => self.media(MediaCommand::SendDtmf {
                leg: to,
                digits: digits.to_string(),
            }),
            Leg::Sip(s) => {
                let mode = s
                    .trunk
                    .map_or(crate::config::DtmfMode::Rfc4733, |t| ctx.cfg.trunks[t].dtmf);
                let rfc = s
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.telephone_event.is_some());
                if mode == crate::config::DtmfMode::Info || !rfc {
                    for d in digits.chars().filter(|c| *c != ',') {
                        self.sip(
                            to,
                            SipAction::Info {
                                content_type: dtmf_info::CONTENT_TYPE.into(),
                                body: dtmf_info::body(d),
                            },
                        );
                    }
                } else {
                    self.media(MediaCommand::SendDtmf {
                        leg: to,
                        digits: digits.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_sdp_changes_direction_and_version() {
        let sdp = "v=0\r\no=- 7 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
        let held = with_direction(sdp, SdpDirection::SendOnly, 2).unwrap();
        let sd = SessionDescription::parse(&held).unwrap();
        assert_eq!(sd.origin.session_version, 2);
        let m = &sd.media[0];
        assert!(m.has("sendonly") && !m.has("sendrecv"));
        assert_eq!(caller_status(DialStatus::Busy, None), 486);
        assert_eq!(caller_status(DialStatus::Failed, Some(404)), 404);
        assert_eq!(caller_status(DialStatus::Failed, Some(401)), 480);
        assert_eq!(caller_status(DialStatus::NoAnswer, None), 480);
    }
}
