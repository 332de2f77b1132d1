//! Per-call routing through an in-process server: a custom `Router`, and the HTTP
//! routing webhook against a local receiver (plan followed, signature verifiable,
//! timeout and bad JSON fall back to the static plan, rejection reaches the
//! caller). Calls come from a real SIP UA on loopback.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use sbc::config::SbcConfig;
use sbc::events::EventSink;
use sbc::router::{BoxFuture, Router};
use sbc::server::{Server, ServerConfig, ServerHandle};
use sbc::sign::signature;
use sbc::sip::{SipConfig, SipEndpoint};
use sip_bridge::bridge::{CallEvent, CallEventKind, DialPlan, RouteDecision, RouteFacts, Target};
use sip_bridge::sip::dialog::{InviteParams, UaEvent};
use sip_bridge::sip::message::Peer;

const OFFER: &str = "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40998 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[derive(Default)]
struct Events(Mutex<Vec<CallEvent>>);

impl EventSink for Events {
    fn call_event(&self, e: &CallEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
}

async fn config(ports: (u16, u16)) -> ServerConfig {
    let cfg = SbcConfig::demo();
    let mut sc = sbc::run::server_config(&cfg).await.unwrap();
    sc.sip.udp = Some("127.0.0.1:0".parse().unwrap());
    sc.sip.tcp = None;
    sc.http = "127.0.0.1:0".parse().unwrap();
    sc.webrtc = "127.0.0.1:0".parse().unwrap();
    sc.webrtc_advertise = None;
    sc.bridge.rtp_ports = ports;
    sc
}

/// Calls `to` and returns how it went: the final status and who answered.
async fn call(h: &ServerHandle, events: &Events, to: &str) -> (u16, Option<String>) {
    let mut ua = SipEndpoint::start(SipConfig {
        udp: Some("127.0.0.1:0".parse().unwrap()),
        tcp: None,
        ..SipConfig::default()
    })
    .await
    .unwrap();
    let sbc = Peer::udp(h.sip_udp.unwrap());
    let p = InviteParams {
        body_type: None,
        contact_params: None,
        flow: false,
        request_uri: format!("sip:{to}@127.0.0.1"),
        from: "<sip:+15550111@127.0.0.1>".into(),
        to: format!("<sip:{to}@127.0.0.1>"),
        peer: sbc,
        sdp: Some(OFFER.as_bytes().to_vec()),
        headers: vec![("X-Campaign".into(), "spring".into())],
        credentials: None,
    };
    let leg = ua
        .handle
        .call(move |c, now| c.invite(now, p))
        .await
        .unwrap()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ua.events.recv().await.unwrap() {
                UaEvent::Answered { .. } => return 200,
                UaEvent::Failed { status, .. } => return status,
                _ => {}
            }
        }
    })
    .await
    .expect("the call was answered or refused");
    if status == 200 {
        ua.handle
            .call(move |c, now| c.hangup(now, leg))
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let who = events
        .0
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e.kind == CallEventKind::Answered)
        .and_then(|e| e.answered_by.clone());
    (status, who)
}

struct Fixed(DialPlan);

impl Router for Fixed {
    fn route(&self, facts: RouteFacts) -> BoxFuture<RouteDecision> {
        let plan = self.0.clone();
        Box::pin(async move {
            assert_eq!(facts.from, "+15550111");
            assert!(
                facts
                    .headers
                    .iter()
                    .any(|(k, v)| k == "X-Campaign" && v == "spring"),
                "{:?}",
                facts.headers
            );
            RouteDecision::Plan(plan)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_router_decides_the_plan() {
    let events = Arc::new(Events::default());
    let h = Server::builder(config((14600, 14699)).await)
        .router(Arc::new(Fixed(DialPlan::single(
            vec![Target::Tone(440)],
            Duration::from_secs(10),
        ))))
        .events(events.clone())
        .start()
        .await
        .unwrap();
    // The static plan for +15550001 is the echo test; the router says tone:440.
    assert_eq!(
        call(&h, &events, "+15550001").await,
        (200, Some("tone:440".into()))
    );
    assert_eq!(h.shutdown(Duration::from_secs(1)).await, 0);
}

type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

#[derive(Clone)]
struct Backend {
    seen: Seen,
    answer: Arc<Mutex<(u64, String)>>,
}

async fn backend(State(b): State<Backend>, headers: HeaderMap, body: String) -> String {
    b.seen.lock().unwrap().push((headers, body));
    let (delay_ms, answer) = b.answer.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_webhook_is_followed_and_falls_back_to_the_static_plan() {
    let b = Backend {
        seen: Arc::default(),
        answer: Arc::new(Mutex::new((
            0,
            r#"{"dial": [{"ring": ["echo"], "timeout": "10s"}]}"#.into(),
        ))),
    };
    let app = axum::Router::new()
        .route("/route", post(backend))
        .with_state(b.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/route", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let events = Arc::new(Events::default());
    let mut sc = config((14800, 14899)).await;
    sc.routing = Some((url, b"route secret".to_vec(), Duration::from_millis(800)));
    let h = Server::builder(sc)
        .events(events.clone())
        .start()
        .await
        .unwrap();

    // Followed: +15550002 is the tone number; the backend says echo.
    assert_eq!(
        call(&h, &events, "+15550002").await,
        (200, Some("echo".into()))
    );
    let (headers, body) = b.seen.lock().unwrap()[0].clone();
    let facts: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(facts["to"], "+15550002");
    assert_eq!(facts["number"], "tone");
    assert_eq!(facts["direction"], "inbound");
    assert_eq!(facts["headers"]["X-Campaign"], "spring");
    assert_eq!(facts["defaultPlan"][0]["ring"][0], "tone");
    let ts: u64 = headers["x-sbc-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        headers["x-sbc-signature"].to_str().unwrap(),
        signature(b"route secret", ts, body.as_bytes()),
        "the receiver can verify the request"
    );

    // Too slow: the static plan (the tone number plays its tone).
    *b.answer.lock().unwrap() = (2000, r#"{"dial": [{"ring": ["echo"]}]}"#.into());
    assert_eq!(
        call(&h, &events, "+15550002").await,
        (200, Some("tone".into()))
    );

    // Bad JSON: the static plan, and the error is counted.
    *b.answer.lock().unwrap() = (0, "not json".into());
    assert_eq!(
        call(&h, &events, "+15550002").await,
        (200, Some("tone".into()))
    );
    let metrics = reqwest::get(format!("http://{}/metrics", h.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sbc_router_errors_total{") && l.contains("kind=\"json\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sbc_router_errors_total{") && l.contains("kind=\"timeout\""))
    );

    // A rejection reaches the caller.
    *b.answer.lock().unwrap() = (0, r#"{"reject": 486}"#.into());
    assert_eq!(call(&h, &events, "+15550002").await.0, 486);
    h.shutdown(Duration::from_secs(1)).await;
}
