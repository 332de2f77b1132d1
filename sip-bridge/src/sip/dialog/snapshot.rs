//! A confirmed dialog carried from one node to another (issue 21): what a
//! survivor needs to send requests in a dead node's dialog, the dialog state
//! of RFC 3261 section 12 (Call-ID, tags, CSeqs, route set, remote target,
//! the URIs) plus our last SDP, whose `o=` line the survivor continues
//! (RFC 3264 section 8).
//!
//! The survivor's first request jumps the local CSeq by [`CSEQ_JUMP`]: the
//! dead node may have sent requests after its last snapshot, and a CSeq that
//! does not grow is refused (RFC 3261 12.2.2). The remote CSeq only guards
//! against old requests, so a stale one costs nothing.

use serde::{Deserialize, Serialize};

use super::*;

/// How far a survivor moves the local CSeq (and the SDP version) on from a
/// snapshot: more than the requests a node sends between two snapshots.
pub const CSEQ_JUMP: u32 = 100;

/// The most a snapshot may hold, field by field: it comes from another node
/// through Redis, so it is checked like any input.
const MAX_TEXT: usize = 1024;
const MAX_ROUTES: usize = 16;
const MAX_SDP: usize = 8192;

/// A confirmed dialog, as [`UserAgent::snapshot`] writes it and
/// [`UserAgent::adopt`] takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogSnapshot {
    /// We answered the INVITE (UAS) or sent it (UAC).
    pub uas: bool,
    /// Call-ID.
    pub call_id: String,
    /// Our tag and theirs.
    pub local_tag: String,
    /// Their tag.
    pub remote_tag: String,
    /// Our name-addr (without tag), theirs.
    pub local_addr: String,
    /// Their name-addr (without tag).
    pub remote_addr: String,
    /// The last CSeq we sent in the dialog.
    pub local_cseq: u32,
    /// The last CSeq they sent.
    pub remote_cseq: u32,
    /// Their Contact URI.
    pub remote_target: String,
    /// The route set, in the order requests take it.
    pub routes: Vec<String>,
    /// Where the dialog's requests came from (`UDP 192.0.2.1:5060`): the
    /// transport when neither the route set nor the target says.
    pub peer: String,
    /// Our SDP as last sent.
    pub local_sdp: String,
}

fn clean(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

impl DialogSnapshot {
    /// Whether every field is within bounds and free of control characters
    /// (no header can be smuggled through a hostile record).
    pub fn is_sane(&self) -> bool {
        let texts = [
            &self.call_id,
            &self.local_tag,
            &self.remote_tag,
            &self.local_addr,
            &self.remote_addr,
            &self.remote_target,
            &self.peer,
        ];
        !self.call_id.is_empty()
            && !self.local_tag.is_empty()
            && texts.iter().all(|t| clean(t, MAX_TEXT))
            && self.routes.len() <= MAX_ROUTES
            && self.routes.iter().all(|r| clean(r, MAX_TEXT))
            && self.local_sdp.len() <= MAX_SDP
            && self.remote_target.to_ascii_lowercase().starts_with("sip")
            && self.peer().is_some()
    }

    fn peer(&self) -> Option<Peer> {
        Peer::from_label(&self.peer)
    }
}

impl UserAgent {
    /// Leg `leg`'s dialog, for another node to carry on; `None` unless it is
    /// confirmed.
    pub fn snapshot(&self, leg: LegId) -> Option<DialogSnapshot> {
        let l = self.legs.get(&leg)?;
        if l.state != LegState::Confirmed {
            return None;
        }
        Some(DialogSnapshot {
            uas: l.role == Role::Uas,
            call_id: l.call_id.clone(),
            local_tag: l.local_tag.clone(),
            remote_tag: l.remote_tag.clone()?,
            local_addr: l.local_addr.clone(),
            remote_addr: l.remote_addr.clone(),
            local_cseq: l.local_cseq,
            remote_cseq: l.remote_cseq,
            remote_target: l.remote_target.clone(),
            routes: l.routes.clone(),
            peer: l.peer.label(),
            local_sdp: String::from_utf8_lossy(&l.local_sdp).into_owned(),
        })
    }

    /// Drops leg `leg` without a word to its peer: a dead node, which no BYE
    /// reaches (one would wait out its transaction's 32 s for nothing).
    pub fn forget(&mut self, now: Instant, leg: LegId) {
        self.end(now, leg, EndReason::Local);
    }

    /// Takes over a dialog another node had (see the module docs): a new
    /// confirmed leg whose next request carries a CSeq [`CSEQ_JUMP`] above
    /// the snapshot's. Refused when the snapshot is not sane or the dialog
    /// is already here.
    pub fn adopt(&mut self, s: &DialogSnapshot) -> Result<LegId, UaError> {
        if !s.is_sane() {
            return Err(UaError::BadParams("dialog snapshot"));
        }
        let key = (s.call_id.clone(), s.local_tag.clone(), s.remote_tag.clone());
        if self.dialogs.contains_key(&key) {
            return Err(UaError::WrongState("the dialog is already here"));
        }
        if self.legs.len() >= self.cfg.max_legs {
            return Err(UaError::Overloaded);
        }
        let peer = s.peer().ok_or(UaError::BadParams("dialog snapshot"))?;
        // The initial INVITE, as far as a leg still needs it: the body a glare
        // retry offers again (its responses are long sent).
        let invite = Request {
            method: Method::Invite,
            uri: s
                .remote_target
                .parse()
                .map_err(|_| UaError::BadParams("dialog snapshot"))?,
            version: rsipstack::sip::Version::V2,
            headers: Default::default(),
            body: s.local_sdp.clone().into_bytes(),
        };
        let leg = LegId(self.id());
        let l = Leg {
            remote_tag: Some(s.remote_tag.clone()),
            local_cseq: s.local_cseq.saturating_add(CSEQ_JUMP),
            remote_cseq: s.remote_cseq,
            routes: s.routes.clone(),
            final_sent: true,
            local_sdp: s.local_sdp.clone().into_bytes(),
            ..Leg::new(
                if s.uas { Role::Uas } else { Role::Uac },
                LegState::Confirmed,
                s.call_id.clone(),
                s.local_tag.clone(),
                s.local_addr.clone(),
                s.remote_addr.clone(),
                s.remote_target.clone(),
                peer,
                invite,
            )
        };
        self.dialogs.insert(key, leg);
        self.legs.insert(leg, l);
        Ok(leg)
    }
}
