//! The HTTP API of an in-process server: tokens (and every way to be refused),
//! `/v1/numbers`, the demo token endpoint (absent outside the demo), and that no
//! response body or served file carries the API key.

use std::time::Duration;

use sbc::config::{DEMO_API_KEY, SbcConfig};
use sbc::server::{Server, ServerHandle};

/// The demo config on ephemeral loopback ports; `demo` toggles the demo endpoint.
async fn server(demo: bool) -> ServerHandle {
    let mut cfg = SbcConfig::demo();
    cfg.demo.enabled = demo;
    let mut sc = sbc::run::server_config(&cfg).await.unwrap();
    sc.sip.udp = Some("127.0.0.1:0".parse().unwrap());
    sc.sip.tcp = None;
    sc.http = "127.0.0.1:0".parse().unwrap();
    sc.webrtc = "127.0.0.1:0".parse().unwrap();
    sc.webrtc_advertise = None;
    sc.bridge.rtp_ports = (14000, 14099);
    sc.demo = demo;
    Server::builder(sc).start().await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn token(h: &ServerHandle, key: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = client()
        .post(format!("http://{}/v1/tokens", h.http))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn tokens_numbers_and_refusals() {
    let h = server(false).await;
    let (status, body) = token(&h, DEMO_API_KEY, serde_json::json!({"operatorRef": "alice", "displayName": "Alice", "numbers": ["support", "+15550200"]})).await;
    assert_eq!(status, 200, "{body}");
    let tok = body["token"].as_str().unwrap().to_string();
    assert!(body["expiresAt"].as_str().unwrap().ends_with('Z'));

    // /v1/numbers lists exactly the token's numbers.
    let r = client()
        .get(format!("http://{}/v1/numbers", h.http))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let nums: serde_json::Value = r.json().await.unwrap();
    let ids: Vec<&str> = nums["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["support", "sales"]);
    let r = client()
        .get(format!("http://{}/v1/numbers", h.http))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Refusals, each with its code.
    for (key, body, want, code) in [
        (
            "wrong-key",
            serde_json::json!({"operatorRef": "a"}),
            401,
            "UNAUTHORIZED",
        ),
        (
            "",
            serde_json::json!({"operatorRef": "a"}),
            401,
            "UNAUTHORIZED",
        ),
        (
            DEMO_API_KEY,
            serde_json::json!({"operatorRef": "a b"}),
            400,
            "BAD_REQUEST",
        ),
        (
            DEMO_API_KEY,
            serde_json::json!({"operatorRef": "a", "numbers": ["nope"]}),
            400,
            "BAD_REQUEST",
        ),
        (
            DEMO_API_KEY,
            serde_json::json!({"operatorRef": "a", "ttl": 999999}),
            400,
            "BAD_REQUEST",
        ),
        (
            DEMO_API_KEY,
            serde_json::json!({"operator": "a"}),
            400,
            "BAD_REQUEST",
        ),
    ] {
        let (status, body) = token(&h, key, body.clone()).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    h.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn the_demo_token_endpoint_exists_only_in_the_demo() {
    let h = server(false).await;
    let r = client()
        .post(format!("http://{}/demo/token", h.http))
        .json(&serde_json::json!({"operatorRef": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "no demo endpoint outside the demo configuration"
    );
    h.shutdown(Duration::ZERO).await;

    let h = server(true).await;
    let r = client()
        .post(format!("http://{}/demo/token", h.http))
        .json(&serde_json::json!({"operatorRef": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    h.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn no_body_or_served_file_contains_the_api_key() {
    let h = server(true).await;
    let c = client();
    let mut bodies = Vec::new();
    for path in [
        "/",
        "/sdk/operator.js",
        "/demo.js",
        "/demo.css",
        "/metrics",
        "/healthz",
        "/readyz",
        "/v1/numbers",
        "/nope",
    ] {
        let r = c
            .get(format!("http://{}{path}", h.http))
            .send()
            .await
            .unwrap();
        bodies.push((path.to_string(), r.text().await.unwrap()));
    }
    let (_, tok) = token(
        &h,
        DEMO_API_KEY,
        serde_json::json!({"operatorRef": "alice"}),
    )
    .await;
    bodies.push(("/v1/tokens".into(), tok.to_string()));
    let (_, bad) = token(&h, "guess", serde_json::json!({"operatorRef": "alice"})).await;
    bodies.push(("/v1/tokens (refused)".into(), bad.to_string()));
    let demo = c
        .post(format!("http://{}/demo/token", h.http))
        .json(&serde_json::json!({"operatorRef": "bob"}))
        .send()
        .await
        .unwrap();
    bodies.push(("/demo/token".into(), demo.text().await.unwrap()));
    assert!(bodies[0].1.contains("<html"), "the page was served");
    assert!(bodies[1].1.contains("export"), "the SDK was served");
    for (path, body) in &bodies {
        assert!(!body.contains(DEMO_API_KEY), "{path} contains the API key");
        assert!(
            !body.contains("c48a01f49fd0f2cc"),
            "{path} contains the API key's hash"
        );
    }
    // Nor does a token's payload (it is only base64, not secret).
    let payload = tok["token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(!payload.contains(&base64_url(DEMO_API_KEY)));
    h.shutdown(Duration::ZERO).await;
}

fn base64_url(s: &str) -> String {
    // Enough to search for the key's encoding at an aligned position.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..(c.len() + 1) {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn https_when_the_config_names_a_certificate() {
    let dir = std::env::temp_dir().join(format!("sbc-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["sbc.test".to_string()]).unwrap();
    let cert = pem::Pem::new("CERTIFICATE", ck.cert.der().to_vec());
    let key = pem::Pem::new("PRIVATE KEY", ck.signing_key.serialize_der());
    std::fs::write(dir.join("cert.pem"), pem::encode(&cert)).unwrap();
    std::fs::write(dir.join("key.pem"), pem::encode(&key)).unwrap();
    let mut cfg = SbcConfig::demo();
    cfg.http.tls_cert = Some(dir.join("cert.pem"));
    cfg.http.tls_key = Some(dir.join("key.pem"));
    let mut sc = sbc::run::server_config(&cfg).await.unwrap();
    assert!(sc.http_tls.is_some());
    sc.sip.udp = Some("127.0.0.1:0".parse().unwrap());
    sc.sip.tcp = None;
    sc.http = "127.0.0.1:0".parse().unwrap();
    sc.webrtc = "127.0.0.1:0".parse().unwrap();
    sc.webrtc_advertise = None;
    sc.bridge.rtp_ports = (14200, 14299);
    let h = Server::builder(sc).start().await.unwrap();
    // A client that connects and never says anything holds up nobody.
    let _silent = tokio::net::TcpStream::connect(h.http).await.unwrap();
    let https = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_der(ck.cert.der()).unwrap())
        .resolve("sbc.test", h.http)
        .build()
        .unwrap();
    let r = https
        .get(format!("https://sbc.test:{}/healthz", h.http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let sdk = https
        .get(format!(
            "https://sbc.test:{}/sdk/operator.js",
            h.http.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(sdk.status().as_u16(), 200);
    // Plain HTTP on the TLS port gets no answer.
    assert!(
        client()
            .get(format!("http://{}/healthz", h.http))
            .send()
            .await
            .is_err()
    );
    h.shutdown(Duration::from_secs(1)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
