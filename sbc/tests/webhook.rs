//! The call-event webhook against a local receiver that fails twice: the event is
//! retried with backoff until accepted, its signature verifies, and it carries
//! when it happened and every party with its time in the call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use media_core::Instant;
use sbc::events::{EventSink, WebhookSink};
use sbc::sign::signature;
use sip_bridge::bridge::{
    CallEvent, CallEventKind, CallId, DialStatus, Direction, LegKey, PartyRecord, Role,
};

type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

async fn receiver(State(seen): State<Seen>, headers: HeaderMap, body: String) -> StatusCode {
    let mut s = seen.lock().unwrap();
    s.push((headers, body));
    if s.len() <= 2 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

#[tokio::test]
async fn events_are_retried_until_accepted_and_signed() {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(receiver))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sink = WebhookSink::start(url, b"hook secret".to_vec());
    let ev = CallEvent {
        kind: CallEventKind::Completed,
        call_id: CallId(7),
        direction: Direction::Inbound,
        from: "+15550111".into(),
        to: "+15550100".into(),
        number: Some("support".into()),
        at: Instant::from_millis(65_000),
        unix_ms: 1_795_000_065_000,
        status: Some(DialStatus::Completed),
        code: None,
        answered_by: Some("operator:alice".into()),
        rung: vec!["operators".into()],
        duration: Some(Duration::from_secs(65)),
        talk_time: Some(Duration::from_secs(60)),
        party: None,
        quality: None,
        transfer: None,
        recording: None,
        callback: None,
        parties: vec![
            PartyRecord {
                id: LegKey(0),
                role: Role::Customer,
                who: "+15550111".into(),
                joined: Some(Instant::ZERO),
                left: Some(Instant::from_millis(65_000)),
                reason: Some("hangup"),
                rtcp: None,
                parent: None,
            },
            PartyRecord {
                id: LegKey(1),
                role: Role::Agent,
                who: "operator:alice".into(),
                joined: Some(Instant::from_millis(5_000)),
                left: None,
                reason: None,
                rtcp: None,
                parent: None,
            },
        ],
    };
    // The sink never blocks the caller, even with the receiver failing.
    sink.call_event(&ev);

    for _ in 0..100 {
        if seen.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "two failures, then accepted");
    let (headers, body) = &seen[2];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["event"], "completed");
    assert_eq!(json["status"], "completed");
    assert_eq!(json["answeredBy"], "operator:alice");
    assert_eq!(json["talkTimeMs"], 60_000);
    // When it happened (the event's own time), not when it was sent.
    assert_eq!(json["timestamp"], "2026-11-18T11:07:45.000Z");
    let parties = json["participants"].as_array().unwrap();
    assert_eq!(parties.len(), 2);
    assert_eq!(parties[0]["role"], "customer");
    assert_eq!(parties[0]["reason"], "hangup");
    assert_eq!(parties[1]["who"], "operator:alice");
    assert_eq!(parties[1]["joinedAt"], "2026-11-18T11:06:45.000Z");
    assert_eq!(parties[1]["talkTimeMs"], 60_000);
    let ts: u64 = headers["x-sbc-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        headers["x-sbc-signature"].to_str().unwrap(),
        signature(b"hook secret", ts, body.as_bytes()),
        "the receiver can verify it"
    );
    assert_ne!(
        headers["x-sbc-signature"].to_str().unwrap(),
        signature(b"other secret", ts, body.as_bytes())
    );
}
