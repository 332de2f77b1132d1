//! The call-event webhook against a local receiver that fails twice: the event is
//! retried with backoff until accepted, and its signature verifies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use media_core::Instant;
use sbc::events::{EventSink, WebhookSink};
use sbc::sign::signature;
use sip_bridge::bridge::{CallEvent, CallEventKind, DialStatus, Direction};

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
        call_id: "c-7".into(),
        direction: Direction::Inbound,
        from: "+15550111".into(),
        to: "+15550100".into(),
        number: Some("support".into()),
        at: Instant::ZERO,
        status: Some(DialStatus::Completed),
        code: None,
        answered_by: Some("operator:alice".into()),
        rung: vec!["operators".into()],
        duration: Some(Duration::from_secs(65)),
        talk_time: Some(Duration::from_secs(60)),
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
