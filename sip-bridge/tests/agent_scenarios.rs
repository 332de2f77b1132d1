//! AI agent legs (`stream:` targets) through the whole bridge on virtual time:
//! a carrier calls a number routed to an agent; audio crosses both ways at the
//! agent's rate (24 kHz PCM16, or u-law 8 kHz in Twilio framing); barge-in,
//! marks, DTMF, hangup, transfer to operators, and falling back to the next step
//! when the agent never comes or dies.

mod common;

use common::*;
use sip_bridge::bridge::DialStatus;
use sip_bridge::sip::dialog::{EndReason as SipEnd, UaEvent};
use sip_bridge::stream::{AgentMessage, StreamFormat};

const AGENT: &str = "wss://agent.example/ws";

fn world(format: StreamFormat, mode: AgentMode, steps: &[(&[&str], u64)]) -> World {
    let mut cfg = config(plan(steps));
    cfg.streams.push(sip_bridge::bridge::StreamTarget {
        url: AGENT.into(),
        format,
        headers: vec![("Authorization".into(), "Bearer t".into())],
    });
    let mut w = World::new(cfg);
    w.agent(AGENT, format, mode);
    w
}

fn carrier_answered(w: &World) -> usize {
    w.carrier_events()
        .iter()
        .filter(|e| matches!(e, UaEvent::Answered { .. }))
        .count()
}

fn talk_both_ways(format: StreamFormat) {
    let target = format!("stream:{AGENT}");
    let mut w = world(format, AgentMode::Up, &[(&[target.as_str()], 20)]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(2000));
    assert_eq!(carrier_answered(&w), 1, "the agent answered the call");
    let rate = format.sample_rate().hz();
    let agent = &w.agents[AGENT];
    let start = &agent.got("start")[0];
    match format {
        StreamFormat::Pcm24k => {
            assert_eq!(start["from"], "+15550111");
            assert_eq!(start["to"], "+15550100");
            assert_eq!(start["format"]["sampleRate"], 24000);
        }
        StreamFormat::Twilio => {
            assert_eq!(agent.got("connected").len(), 1);
            assert_eq!(start["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
        }
    }
    World::assert_tone(&agent.heard, rate, 1000.0, "the agent hears the caller");
    // About 50 frames a second reach the agent: paced, not bunched.
    let per_sec = agent.heard.len() as f64 / (rate as f64 / 50.0) / 2.0;
    assert!((40.0..=60.0).contains(&per_sec), "{per_sec} frames/s");

    // The agent answers with 2 s of 600 Hz in one burst: paced out at 20 ms.
    w.agent_tone(AGENT, 600.0, 2.0);
    w.run(ms(1500));
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        600.0,
        "the caller hears the agent",
    );
    // Barge-in: clear drops the rest within a frame.
    let clear = match format {
        StreamFormat::Pcm24k => serde_json::json!({"type": "clear"}),
        StreamFormat::Twilio => serde_json::json!({"event": "clear", "streamSid": "x"}),
    };
    let heard_before = w.carrier.media[&leg].heard.len();
    w.agent_send(AGENT, AgentMessage::Text(clear.to_string()));
    w.run(ms(300));
    let after = &w.carrier.media[&leg].heard[heard_before..];
    // Allow one frame in flight plus the jitter buffer at the caller; then silence.
    let tail = &after[after.len().saturating_sub(1600)..];
    assert!(tail.iter().all(|s| s.abs() < 200), "silence after clear");
    // A mark comes back when playout reaches it.
    w.agent_tone(AGENT, 600.0, 0.2);
    let mark = match format {
        StreamFormat::Pcm24k => serde_json::json!({"type": "mark", "name": "m1"}),
        StreamFormat::Twilio => {
            serde_json::json!({"event": "mark", "streamSid": "x", "mark": {"name": "m1"}})
        }
    };
    w.agent_send(AGENT, AgentMessage::Text(mark.to_string()));
    assert!(w.agents[AGENT].got("mark").is_empty(), "not played yet");
    w.run(ms(300));
    let marks = w.agents[AGENT].got("mark");
    assert_eq!(marks.len(), 1);
    // DTMF from the caller reaches the agent.
    w.carrier.media.get_mut(&leg).unwrap().send_dtmf("7");
    w.run(ms(500));
    let dtmf = w.agents[AGENT].got("dtmf");
    let digit = if format == StreamFormat::Twilio {
        &dtmf[0]["dtmf"]["digit"]
    } else {
        &dtmf[0]["digit"]
    };
    assert_eq!(digit, "7");
    // The caller hangs up: the agent gets stop and the socket closes.
    let now = w.now;
    w.carrier.ua.hangup(now, leg).unwrap();
    w.run(ms(500));
    assert_eq!(w.agents[AGENT].got("stop").len(), 1);
    assert!(w.agents[AGENT].closed);
    w.run(ms(40_000));
    w.assert_idle();
}

#[test]
fn a_native_agent_talks_with_the_caller() {
    talk_both_ways(StreamFormat::Pcm24k);
}

#[test]
fn a_twilio_framed_agent_talks_with_the_caller() {
    talk_both_ways(StreamFormat::Twilio);
}

#[test]
fn the_agent_hangs_up() {
    let target = format!("stream:{AGENT}");
    let mut w = world(
        StreamFormat::Pcm24k,
        AgentMode::Up,
        &[(&[target.as_str()], 20)],
    );
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(1000));
    w.agent_send(AGENT, AgentMessage::Text(r#"{"type":"hangup"}"#.into()));
    w.run(ms(500));
    assert!(w.carrier_events().iter().any(
        |e| matches!(e, UaEvent::Terminated { leg: l, reason: SipEnd::RemoteBye } if *l == leg)
    ));
    assert_eq!(w.completed()[0].status, Some(DialStatus::Completed));
}

#[test]
fn the_agent_transfers_the_caller_to_operators() {
    let target = format!("stream:{AGENT}");
    let mut w = world(
        StreamFormat::Pcm24k,
        AgentMode::Up,
        &[(&[target.as_str()], 20)],
    );
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(1000));
    w.agent_send(
        AGENT,
        AgentMessage::Text(r#"{"type":"transfer","target":"operators"}"#.into()),
    );
    w.run(ms(200));
    assert!(w.agents[AGENT].closed, "the agent leg ends cleanly");
    assert_eq!(w.agents[AGENT].got("stop").len(), 1);
    let call = w.last_incoming(a).expect("the operators ring");
    w.accept(a, &call);
    w.browsers[a].tone = Some(media_core::analysis::ToneGenerator::new(
        48_000,
        &[(440.0, 8000.0)],
    ));
    w.run(ms(2500));
    World::assert_tone(
        &w.browsers[a].heard,
        48_000,
        1000.0,
        "alice hears the caller",
    );
    World::assert_tone(
        &w.carrier.media[&leg].heard,
        8000,
        440.0,
        "the caller hears alice",
    );
    assert_eq!(carrier_answered(&w), 1, "still the one answer");
}

#[test]
fn an_agent_that_never_connects_falls_back_to_the_next_step() {
    let target = format!("stream:{AGENT}");
    let mut w = world(
        StreamFormat::Pcm24k,
        AgentMode::NeverConnects,
        &[(&[target.as_str()], 20), (&["operators"], 20)],
    );
    let a = w.operator("alice", &["support"]);
    w.carrier_call("+15550100", 1000.0);
    w.run(ms(4000));
    assert!(w.last_incoming(a).is_none(), "still waiting for the agent");
    w.run(ms(2000));
    assert!(
        w.last_incoming(a).is_some(),
        "the operators ring after the agent's connect timeout"
    );
}

#[test]
fn an_agent_that_dies_mid_call_hands_the_caller_on() {
    let target = format!("stream:{AGENT}");
    let mut w = world(
        StreamFormat::Pcm24k,
        AgentMode::Up,
        &[(&[target.as_str()], 20), (&["operators"], 20)],
    );
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(1000));
    assert_eq!(carrier_answered(&w), 1);
    w.agent_crash(AGENT);
    w.run(ms(200));
    let call = w.last_incoming(a).expect("the next step rings");
    w.accept(a, &call);
    w.run(ms(2000));
    World::assert_tone(
        &w.browsers[a].heard,
        48_000,
        1000.0,
        "alice hears the caller",
    );
    assert!(
        !w.carrier_events()
            .iter()
            .any(|e| matches!(e, UaEvent::Terminated { leg: l, .. } if *l == leg)),
        "the caller stayed"
    );
}

/// The agent answered a carrier call (1000 Hz); alice is online. The agent
/// asks for a warm transfer to the operators.
fn warm_transfer_asked() -> (World, usize, sip_bridge::sip::dialog::LegId) {
    let target = format!("stream:{AGENT}");
    let mut w = world(
        StreamFormat::Pcm24k,
        AgentMode::Up,
        &[(&[target.as_str()], 20)],
    );
    let a = w.operator("alice", &["support"]);
    let leg = w.carrier_call("+15550100", 1000.0);
    w.run(ms(1000));
    w.agent_send(
        AGENT,
        AgentMessage::Text(r#"{"type":"transfer","target":"operators","warm":true}"#.into()),
    );
    w.run(ms(200));
    assert!(
        !w.agents[AGENT].closed,
        "a warm transfer keeps the agent on"
    );
    (w, a, leg)
}

fn agent_states(w: &World) -> Vec<String> {
    w.agents[AGENT]
        .got("transfer")
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_agent_briefs_the_operator_before_leaving_in_a_warm_transfer() {
    let (mut w, a, leg) = warm_transfer_asked();
    assert_eq!(agent_states(&w), ["ringing"]);
    let call = w.last_incoming(a).expect("the operators ring");
    w.accept(a, &call);
    w.browsers[a].tone = Some(media_core::analysis::ToneGenerator::new(
        48_000,
        &[(440.0, 8000.0)],
    ));
    w.run(ms(1500));
    assert_eq!(agent_states(&w), ["ringing", "consulting"]);
    // The briefing: alice hears the agent (600 Hz), the caller, on hold,
    // hears neither; the agent hears alice, not the caller.
    let (m_alice, m_caller, m_agent) = (
        w.browsers[a].heard.len(),
        w.carrier.media[&leg].heard.len(),
        w.agents[AGENT].heard.len(),
    );
    w.agent_tone(AGENT, 600.0, 2.0);
    w.run(ms(1500));
    World::assert_hears(
        &w.browsers[a].heard[m_alice..],
        48_000,
        &[600.0],
        &[1000.0],
        "alice briefed",
    );
    let caller = &w.carrier.media[&leg].heard[m_caller..];
    assert!(
        World::level(caller, 8000, 600.0) < -45.0 && World::level(caller, 8000, 440.0) < -45.0,
        "the caller hears neither while held"
    );
    World::assert_hears(
        &w.agents[AGENT].heard[m_agent..],
        24_000,
        &[440.0],
        &[1000.0],
        "the agent hears alice",
    );
    // The agent hangs up: the caller and alice talk.
    w.agent_send(AGENT, AgentMessage::Text(r#"{"type":"hangup"}"#.into()));
    w.run(ms(1000));
    let (m_alice, m_caller) = (w.browsers[a].heard.len(), w.carrier.media[&leg].heard.len());
    w.run(ms(1500));
    World::assert_hears(
        &w.browsers[a].heard[m_alice..],
        48_000,
        &[1000.0],
        &[],
        "alice hears the caller",
    );
    World::assert_hears(
        &w.carrier.media[&leg].heard[m_caller..],
        8000,
        &[440.0],
        &[],
        "the caller hears alice",
    );
    let reports: Vec<(&str, &str)> = w
        .events
        .iter()
        .filter_map(|e| e.transfer.as_ref())
        .map(|t| (t.state, t.via))
        .collect();
    assert_eq!(
        reports,
        [
            ("started", "agent"),
            ("consulting", "agent"),
            ("completed", "agent")
        ]
    );
}

#[test]
fn a_warm_transfer_nobody_answers_brings_the_agent_back_and_a_long_briefing_is_cut() {
    let (mut w, a, leg) = warm_transfer_asked();
    // alice never answers; the transfer rings out (30 s) and the caller is
    // back with the agent.
    w.run(ms(31_000));
    assert_eq!(agent_states(&w), ["ringing", "failed"]);
    let m = w.carrier.media[&leg].heard.len();
    w.agent_tone(AGENT, 600.0, 1.5);
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m..],
        8000,
        &[600.0],
        &[],
        "the caller hears the agent again",
    );
    assert_eq!(
        w.ended_reason(a, &w.last_incoming(a).unwrap()).as_deref(),
        Some("no_answer")
    );

    // Again, answered this time; the agent never hangs up: after its 60 s
    // the transfer completes without it.
    let (mut w, a, leg) = warm_transfer_asked();
    let call = w.last_incoming(a).unwrap();
    w.accept(a, &call);
    w.browsers[a].tone = Some(media_core::analysis::ToneGenerator::new(
        48_000,
        &[(440.0, 8000.0)],
    ));
    w.run(ms(59_000));
    assert_eq!(agent_states(&w), ["ringing", "consulting"]);
    w.run(ms(2000));
    assert_eq!(agent_states(&w), ["ringing", "consulting", "completed"]);
    assert!(w.agents[AGENT].closed, "the agent's leg ended");
    let m = w.carrier.media[&leg].heard.len();
    w.run(ms(1500));
    World::assert_hears(
        &w.carrier.media[&leg].heard[m..],
        8000,
        &[440.0],
        &[],
        "the caller hears alice",
    );
}
