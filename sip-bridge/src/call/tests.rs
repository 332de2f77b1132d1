//! A call on its own: inputs in, outputs checked, no UA, no media session, no
//! network. Each test is a short table of what happens and what the call asks
//! for.

use std::time::Duration;

use media_core::{Instant, SeededRng};

use super::*;
use crate::config::{BridgeConfig, NumberConfig};
use crate::contract::{Feed, FeedSource, Level, MediaEvent, Tone};
use crate::plan::{DialPlan, Target};
use crate::presence::Presence;
use crate::roles::RoleCapabilities;
use crate::signalling::ClientMessage;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nt=0 0\r\n";

/// What calls share, owned by the test.
struct Fixture {
    cfg: BridgeConfig,
    presence: Presence,
    ports: PortPool,
    rng: SeededRng,
    next_session: u64,
}

impl Fixture {
    /// Numbers `support` (rings its operators) and `sales`; operators online
    /// on `support`.
    fn new(ops: &[&str]) -> Fixture {
        let number = |id: &str, e164: &str| NumberConfig {
            id: id.into(),
            e164: e164.into(),
            name: id.into(),
            plan: DialPlan::single(vec![Target::Operators], Duration::from_secs(20)),
            capabilities: RoleCapabilities::default(),
            room: false,
        };
        let cfg = BridgeConfig::new(
            vec![number("support", "+15550100"), number("sales", "+15550200")],
            vec![],
            "192.0.2.1".parse().unwrap(),
        );
        let mut f = Fixture {
            cfg,
            presence: Presence::new(Duration::from_secs(30), 100),
            ports: PortPool::new(20000, 20100),
            rng: SeededRng::new(1),
            next_session: 1,
        };
        for op in ops {
            f.online(op);
        }
        f
    }

    fn online(&mut self, op: &str) {
        let s = self.next_session;
        self.next_session += 1;
        let nums = vec!["support".to_string(), "sales".to_string()];
        self.presence.connect(s, op, op, &nums).unwrap();
        self.presence.set_available(s, &nums[..1]).unwrap();
    }

    fn ctx(&mut self) -> CallCtx<'_> {
        CallCtx {
            cfg: &self.cfg,
            presence: &self.presence,
            ports: &mut self.ports,
            rng: &mut self.rng,
            local_host: "192.0.2.1",
            live_peer: &[],
            unix_base: 1_795_000_000,
        }
    }

    /// Applies the presence marks a bridge would, and returns every output.
    fn drain(&mut self, call: &mut Call) -> Vec<CallOutput> {
        let out: Vec<CallOutput> = std::iter::from_fn(|| call.poll_output()).collect();
        for o in &out {
            match o {
                CallOutput::Busy { op } => {
                    let _ = self.presence.set_busy(op, call.id());
                }
                CallOutput::Free { op } => self.presence.set_free(op, call.id()),
                _ => {}
            }
        }
        out
    }
}

/// Operator messages among `out`, as `(op, type, json)`.
fn to_ops(out: &[CallOutput]) -> Vec<(String, String, serde_json::Value)> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Operator { op, msg } => {
                let v: serde_json::Value = serde_json::from_str(&msg.to_json()).unwrap();
                Some((op.clone(), v["type"].as_str().unwrap().to_string(), v))
            }
            _ => None,
        })
        .collect()
}

fn hears(out: &[CallOutput]) -> Vec<(LegKey, Vec<Feed>)> {
    out.iter()
        .filter_map(|o| match o {
            CallOutput::Media(MediaCommand::Hear { listener, feeds }) => {
                Some((*listener, feeds.clone()))
            }
            _ => None,
        })
        .collect()
}

fn accept() -> ClientMessage {
    ClientMessage::Accept {
        call_id: "c-1".into(),
        sdp: SDP.into(),
    }
}

/// `alice` dials `support` (whose plan rings its operators).
fn dial_support(f: &mut Fixture, now: Instant) -> Call {
    let number = f.cfg.numbers[0].clone();
    let plan = number.plan.clone();
    let mut ctx = f.ctx();
    Call::outbound(
        now,
        &mut ctx,
        CallId(1),
        "alice",
        Some("d1".into()),
        &number,
        "support",
        plan,
        SDP.into(),
    )
}

/// The browser's SDP answer for party `k` came back.
fn answer(f: &mut Fixture, call: &mut Call, now: Instant, k: u32) -> Vec<CallOutput> {
    let ev = MediaEvent::WebRtcAnswer {
        leg: LegKey(k),
        sdp: SDP.into(),
    };
    call.handle_media(now, &mut f.ctx(), ev);
    f.drain(call)
}

#[test]
fn two_accepts_in_the_same_tick_have_one_winner() {
    let mut f = Fixture::new(&["alice", "bob", "carol"]);
    let now = Instant::ZERO;
    let mut call = dial_support(&mut f, now);
    let out = f.drain(&mut call);
    let incoming: Vec<String> = to_ops(&out)
        .into_iter()
        .filter(|(_, t, _)| t == "incoming")
        .map(|(op, _, _)| op)
        .collect();
    assert_eq!(incoming, ["bob", "carol"], "the dialler is not rung");
    answer(&mut f, &mut call, now, 0);
    for op in ["bob", "carol"] {
        call.handle_operator(now, &mut f.ctx(), op, None, accept());
    }
    let out = f.drain(&mut call);
    let ops = to_ops(&out);
    let carol_lost = ops
        .iter()
        .find(|(op, t, _)| op == "carol" && t == "ended")
        .expect("carol hears she lost");
    assert_eq!(carol_lost.2["reason"], "taken_by_other");
    assert!(
        ops.iter().any(|(op, t, _)| op == "carol" && t == "error"),
        "her late accept is refused"
    );
    assert!(
        ops.iter()
            .any(|(op, t, _)| op == "alice" && t == "connected")
    );
    assert_eq!(f.presence.active_call("bob"), Some(CallId(1)));
    assert_eq!(f.presence.active_call("carol"), None);
    assert!(call.is_connected() && call.parties() == 2);
}

#[test]
fn ringback_then_each_hears_the_other_once_answered() {
    let mut f = Fixture::new(&["alice", "bob"]);
    let now = Instant::ZERO;
    let mut call = dial_support(&mut f, now);
    let out = f.drain(&mut call);
    assert_eq!(
        hears(&out),
        [(LegKey(0), vec![Feed::tone(Tone::Ringback)])],
        "the dialler hears ringback while bob rings"
    );
    call.handle_operator(now, &mut f.ctx(), "bob", None, accept());
    let out = f.drain(&mut call);
    let mut h = hears(&out);
    h.sort();
    assert_eq!(
        h,
        [
            (LegKey(0), vec![Feed::leg(LegKey(1))]),
            (LegKey(1), vec![Feed::leg(LegKey(0))])
        ]
    );
    let _ = (FeedSource::Leg(LegKey(0)), Level::UNITY);
}
