//! The call's media graph: who hears whom, derived from the parties after every
//! input and sent to the media session as the difference ([`MediaCommand::Hear`],
//! `Mute`, `Hold`), so the session never has to know why.
//!
//! * Before an answer the caller hears one target's early media (and it the
//!   caller), or our ringback once it was told the call rings.
//! * Connected, every full participant hears every other one (mix-minus); a
//!   supervisor in `listen` or `whisper` hears them all and is heard by nobody,
//!   but in `whisper` by the party it coaches (default: the call's agents); in
//!   `barge` it is a full participant. Whoever added a party that still rings
//!   hears ringback under the conversation. The built-in targets: the caller
//!   hears itself (echo) or a tone.
//! * Hold and mute are flags on a leg, not edges: a held party hears nothing and
//!   the others hear silence from it (their stream goes on). A held party drops
//!   out of a listener's feeds while someone else is left to hear, so two of
//!   three talking relay as a two-party call would.
//! * A SIP party that hears nobody but held parties (or is held itself) gets our
//!   re-INVITE with `sendonly`; when someone is back, `sendrecv`.

use std::collections::BTreeMap;

use media_core::Instant;

use super::party::{Leg, Origin, SipState};
use super::state::CallState;
use super::{Call, Progress};
use crate::contract::{Feed, FeedSource, LegKey, Level, MediaCommand, Tone};
use crate::roles::{MonitorMode, Role};
use crate::signalling::ServerMessage;

impl Call {
    /// Whether party `k` is on hold: held by someone, by itself, or by its SIP peer.
    pub(crate) fn party_on_hold(&self, k: LegKey) -> bool {
        self.parties.get(&k).is_some_and(|p| {
            p.held
                || p.operator().is_some_and(|o| o.self_held)
                || p.sip().is_some_and(|s| s.remote_held)
        })
    }

    /// Whether party `p` is held by someone (not by itself or its peer) in a
    /// call that plays hold music: it is sent the hold tone, not nothing.
    fn hears_hold_music(&self, p: &super::party::Party) -> bool {
        self.hold_music
            && p.held
            && p.joined()
            && p.in_media
            && !p.operator().is_some_and(|o| o.self_held)
            && !p.sip().is_some_and(|s| s.remote_held)
    }

    /// What every listener should hear now. See the module docs.
    fn graph(&self) -> BTreeMap<LegKey, Vec<Feed>> {
        let mut g: BTreeMap<LegKey, Vec<Feed>> = BTreeMap::new();
        let caller = self.caller;
        match self.state {
            CallState::Routing { .. } | CallState::Dialing(_) => {
                let early = self.parties.iter().find_map(|(k, p)| {
                    (p.in_media && p.sip().is_some_and(|s| s.early_media)).then_some(*k)
                });
                if let Some(t) = early {
                    g.insert(caller, vec![Feed::leg(t)]);
                    g.insert(t, vec![Feed::leg(caller)]);
                } else if self.progress == Progress::Ringback {
                    g.insert(caller, vec![Feed::tone(Tone::Ringback)]);
                }
            }
            // The first party of the API's call rings: nothing to hear yet.
            CallState::Originating { .. } => {}
            CallState::Connected => {
                for p in self.parties.values().filter(|p| p.joined()) {
                    match p.leg {
                        Leg::Echo => {
                            g.insert(caller, vec![Feed::leg(caller)]);
                            return g;
                        }
                        Leg::Tone(hz) => {
                            g.insert(caller, vec![Feed::tone(Tone::Hz(hz))]);
                            return g;
                        }
                        _ => {}
                    }
                }
                let talking: Vec<LegKey> = self
                    .parties
                    .iter()
                    .filter(|(_, p)| p.joined() && p.in_media && p.full_participant())
                    .map(|(k, _)| *k)
                    .collect();
                // Held parties drop out while someone else is left to hear.
                let feeds_from = |sources: &mut dyn Iterator<Item = LegKey>| -> Vec<Feed> {
                    let all: Vec<LegKey> = sources.collect();
                    let active: Vec<LegKey> = all
                        .iter()
                        .copied()
                        .filter(|k| !self.party_on_hold(*k))
                        .collect();
                    let keep = if active.is_empty() { all } else { active };
                    keep.into_iter().map(Feed::leg).collect()
                };
                for &l in &talking {
                    let mut feeds = feeds_from(&mut talking.iter().copied().filter(|k| *k != l));
                    let role = self.parties.get(&l).map(|p| p.role);
                    for (k, p) in &self.parties {
                        if let Some((MonitorMode::Whisper, coached)) = p.monitor
                            && p.joined()
                            && p.in_media
                            && (coached == Some(l)
                                || (coached.is_none() && role == Some(Role::Agent)))
                        {
                            feeds.push(Feed::leg(*k));
                        }
                    }
                    g.insert(l, feeds);
                }
                // Held by someone: hold music instead of the call, if asked.
                for (k, p) in &self.parties {
                    if self.hears_hold_music(p) {
                        g.insert(*k, vec![Feed::tone(Tone::Hold)]);
                    }
                }
                for (k, p) in &self.parties {
                    if p.joined() && p.in_media && !p.full_participant() {
                        g.insert(*k, feeds_from(&mut talking.iter().copied()));
                    }
                }
                let cue = Feed {
                    from: FeedSource::Tone(Tone::Ringback),
                    level: Level::CUE,
                };
                let blind = self.blind_transfer_by();
                for p in self.parties.values() {
                    let Origin::Added { by: Some(a), .. } = p.origin else {
                        continue;
                    };
                    if !self.pending(p) {
                        continue;
                    }
                    // Whoever waits for the target hears it ring: the adder,
                    // or in a blind transfer the transferees.
                    let waiting: Vec<LegKey> = if blind == Some(a) {
                        talking.iter().copied().filter(|k| *k != a).collect()
                    } else {
                        vec![a]
                    };
                    for w in waiting {
                        if let Some(f) = g.get_mut(&w)
                            && !f.contains(&cue)
                        {
                            f.push(cue);
                        }
                    }
                }
            }
            CallState::Ended => {}
        }
        g
    }

    /// Whether party `p` still rings (a SIP leg we cancelled does not).
    pub(crate) fn pending(&self, p: &super::party::Party) -> bool {
        p.ringing() && !p.sip().is_some_and(|s| s.state == SipState::Ending)
    }

    /// Sends the media session what changed in the graph and the flags.
    pub(crate) fn sync_media(&mut self) {
        let g = self.graph();
        let keys: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(_, p)| p.in_media)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let want = g.get(&k).cloned().unwrap_or_default();
            if self.heard.get(&k).map_or(!want.is_empty(), |h| *h != want) {
                self.heard.insert(k, want.clone());
                self.media(MediaCommand::Hear {
                    listener: k,
                    feeds: want,
                });
            }
            let Some(p) = self.parties.get(&k) else {
                continue;
            };
            let self_held = p.operator().is_some_and(|o| o.self_held);
            let mute = p.muted || p.held || self_held;
            // Hold music goes to a held leg: it is not silenced toward it.
            let music = self.hears_hold_music(p);
            let hold = (p.held && !music) || self_held || p.sip().is_some_and(|s| s.remote_held);
            let (was_mute, was_hold) = self.flags.get(&k).copied().unwrap_or_default();
            self.flags.insert(k, (mute, hold));
            if hold != was_hold {
                self.media(MediaCommand::Hold { leg: k, on: hold });
            }
            if mute != was_mute {
                self.media(MediaCommand::Mute { leg: k, on: mute });
            }
        }
    }

    /// Whether every leg party `k` hears is on hold (and it hears one).
    fn hears_only_held(&self, k: LegKey) -> bool {
        let Some(feeds) = self.heard.get(&k) else {
            return false;
        };
        let legs: Vec<LegKey> = feeds
            .iter()
            .filter_map(|f| match f.from {
                FeedSource::Leg(l) if l != k => Some(l),
                _ => None,
            })
            .collect();
        !legs.is_empty() && legs.len() == feeds.len() && legs.iter().all(|l| self.party_on_hold(*l))
    }

    /// Our hold toward SIP parties follows the graph (see the module docs).
    pub(crate) fn sync_sip_holds(&mut self, _now: Instant, ctx: &super::CallCtx<'_>) {
        if !self.is_connected() {
            return;
        }
        let keys: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(_, p)| p.joined() && p.sip().is_some_and(|s| s.state == SipState::Up))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let held = self.parties.get(&k).is_some_and(|p| p.held);
            let want = held || self.hears_only_held(k);
            let has = self
                .parties
                .get(&k)
                .and_then(|p| p.sip())
                .is_some_and(|s| s.held_by_us);
            if want != has {
                self.hold_sip(ctx, k, want);
            }
        }
    }

    /// An operator's view of its call: (muted, held by itself, everyone it
    /// hears holds).
    pub(crate) fn op_view(&self, k: LegKey) -> (bool, bool, bool) {
        let Some(p) = self.parties.get(&k) else {
            return (false, false, false);
        };
        let held = p.operator().is_some_and(|o| o.self_held);
        (p.muted, held, self.hears_only_held(k))
    }

    /// `callUpdated` to every operator whose view changed, and to `asker`
    /// (with its request's `ref`) in any case.
    pub(crate) fn sync_operator_views(
        &mut self,
        asker: Option<LegKey>,
        reference: Option<Option<String>>,
    ) {
        let keys: Vec<LegKey> = self
            .parties
            .iter()
            .filter(|(_, p)| p.joined() && p.operator().is_some())
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            let view = self.op_view(k);
            let is_asker = Some(k) == asker;
            let told = self.told.insert(k, view);
            if told == Some(view) && !is_asker {
                continue;
            }
            if told.is_none() && !is_asker {
                continue; // its first view: nothing changed for it yet
            }
            let Some(op) = self.parties.get(&k).and_then(|p| p.op()).map(String::from) else {
                continue;
            };
            let (muted, held, remote_held) = view;
            let msg = ServerMessage::CallUpdated {
                call_id: self.id.to_string(),
                muted,
                held,
                remote_held,
                reference: if is_asker {
                    reference.clone().flatten()
                } else {
                    None
                },
            };
            self.send_operator(&op, msg);
        }
    }
}
