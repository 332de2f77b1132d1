//! The HTTP API of an in-process server: tokens (and every way to be refused),
//! `/v1/numbers`, the demo token endpoint (absent outside the demo), CORS and the
//! origin check on `/sdk/*`, `/v1/*` and the operator WebSocket, the SDK's
//! modules, and that no response body or served file carries the API key.

use std::time::Duration;

use sbc::config::{DEMO_API_KEY, DEMO_API_KEY_SHA256, SbcConfig};
use sbc::server::{Server, ServerConfig, ServerHandle};
use sip_bridge::token::{ApiKey, ApiKeys, SessionClaims, TokenIssuer, hash_api_key};

/// The demo config on ephemeral loopback ports; `demo` toggles the demo endpoint.
async fn server(demo: bool) -> ServerHandle {
    server_with(demo, |_| {}).await
}

/// Like [`server`], with the server config changed by `f` first.
async fn server_with(demo: bool, f: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
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
    f(&mut sc);
    Server::builder(sc).start().await.unwrap()
}

/// The claims of a token the demo config's server issued.
async fn claims(token: &str) -> SessionClaims {
    let sc = sbc::run::server_config(&SbcConfig::demo()).await.unwrap();
    let now = sbc::clock::Clock::unix_secs();
    TokenIssuer::new(&sc.token_secret)
        .verify(now, token)
        .unwrap()
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
        (
            DEMO_API_KEY,
            serde_json::json!({"operatorRef": "a", "capabilities": ["admin"]}),
            400,
            "BAD_REQUEST",
        ),
        (
            DEMO_API_KEY,
            serde_json::json!({"operatorRef": "a", "numbers": ["support"], "phoneNumberIds": ["sales"]}),
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
async fn the_playbook_body_capabilities_and_a_key_limited_to_numbers() {
    let h = server_with(false, |sc| {
        sc.api_keys = ApiKeys::new(vec![
            ApiKey::from_hex("all", DEMO_API_KEY_SHA256, Vec::new()).unwrap(),
            ApiKey::from_hex("support-only", &hash_api_key("k2"), vec!["support".into()]).unwrap(),
        ]);
    })
    .await;
    // The operator SDK 0.3.0 playbook's body: phoneNumberIds (ids or E.164), and
    // the answer is { token, expiresAt }.
    let (status, body) = token(
        &h,
        DEMO_API_KEY,
        serde_json::json!({"operatorRef": "alice", "displayName": "Alice", "phoneNumberIds": ["support", "+15550200"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["expiresAt", "token"]);
    let c = claims(body["token"].as_str().unwrap()).await;
    assert_eq!(c.nums, ["support", "sales"]);
    assert!(c.caps.is_empty(), "no rights unless asked for");
    // A backend passing nulls for what it does not set (FastAPI's None).
    let (status, body) = token(
        &h,
        DEMO_API_KEY,
        serde_json::json!({"operatorRef": "bob", "displayName": null, "phoneNumberIds": null, "capabilities": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // capabilities: ["monitor"] goes into the token.
    let (status, body) = token(
        &h,
        DEMO_API_KEY,
        serde_json::json!({"operatorRef": "sue", "capabilities": ["monitor"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["token"].as_str().unwrap()).await.caps,
        ["monitor"]
    );
    // A key limited to `support`: another number is 403 FORBIDDEN_NUMBER, not 400.
    let (status, body) = token(
        &h,
        "k2",
        serde_json::json!({"operatorRef": "a", "phoneNumberIds": ["sales"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "FORBIDDEN_NUMBER", "{body}");
    let (status, body) = token(&h, "k2", serde_json::json!({"operatorRef": "a"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["token"].as_str().unwrap()).await.nums,
        ["support"],
        "absent numbers: the key's"
    );
    h.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn the_demo_token_grants_monitor() {
    let h = server(true).await;
    let r = client()
        .post(format!("http://{}/demo/token", h.http))
        .json(&serde_json::json!({"operatorRef": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        claims(body["token"].as_str().unwrap()).await.caps,
        ["monitor"]
    );
    h.shutdown(Duration::ZERO).await;
}

const APP: &str = "http://app.test:3000";

/// `(status, headers, body)` of a request with `Origin: origin` (none if empty).
async fn with_origin(
    req: reqwest::RequestBuilder,
    origin: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let req = if origin.is_empty() {
        req
    } else {
        req.header("origin", origin)
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn cors_and_the_origin_check_follow_allowed_origins() {
    let h = server_with(false, |sc| {
        sc.allowed_origins = vec![APP.into()];
    })
    .await;
    let base = format!("http://{}", h.http);
    let c = client();

    // Every module of the package, with its type, for the allowed origin.
    for (name, content_type, body) in sbc::http::SDK_FILES {
        let (status, hd, text) = with_origin(c.get(format!("{base}/sdk/{name}")), APP).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(header(&hd, "content-type"), content_type, "{name}");
        assert_eq!(header(&hd, "access-control-allow-origin"), APP, "{name}");
        assert!(header(&hd, "vary").contains("origin"), "{name}: {hd:?}");
        assert_eq!(text, body, "{name}");
    }
    assert!(
        header(
            &with_origin(c.get(format!("{base}/sdk/operator.js")), APP)
                .await
                .1,
            "content-type"
        )
        .starts_with("text/javascript")
    );

    // Preflights: GET /v1/numbers with Authorization (listNumbers), POST
    // /v1/tokens with X-API-Key and Content-Type (a backend in a browser tool).
    for (path, method, headers) in [
        ("/v1/numbers", "GET", "authorization"),
        ("/v1/tokens", "POST", "content-type,x-api-key"),
    ] {
        let (status, hd, _) = with_origin(
            c.request(reqwest::Method::OPTIONS, format!("{base}{path}"))
                .header("access-control-request-method", method)
                .header("access-control-request-headers", headers),
            APP,
        )
        .await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&hd, "access-control-allow-origin"), APP, "{path}");
        assert!(
            header(&hd, "access-control-allow-methods").contains(method),
            "{path}: {hd:?}"
        );
        for want in headers.split(',') {
            assert!(
                header(&hd, "access-control-allow-headers").contains(want),
                "{path}: {want} not allowed: {hd:?}"
            );
        }
        assert_eq!(header(&hd, "access-control-allow-credentials"), "");
    }
    // The actual requests answer the origin too (errors included).
    let (status, hd, _) =
        with_origin(c.get(format!("{base}/v1/numbers")).bearer_auth("nope"), APP).await;
    assert_eq!(status, 401);
    assert_eq!(header(&hd, "access-control-allow-origin"), APP);

    // Another origin: 403 FORBIDDEN_ORIGIN, as JSON, no CORS headers, for the
    // modules, the API, preflights, and the operator WebSocket's handshake.
    let evil = "https://evil.test";
    let ws = |b: reqwest::RequestBuilder| {
        b.header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    };
    for (what, req) in [
        ("module", c.get(format!("{base}/sdk/operator.js"))),
        ("compat", c.get(format!("{base}/sdk/compat.js"))),
        ("numbers", c.get(format!("{base}/v1/numbers"))),
        (
            "tokens",
            c.post(format!("{base}/v1/tokens"))
                .header("x-api-key", DEMO_API_KEY)
                .json(&serde_json::json!({"operatorRef": "a"})),
        ),
        (
            "preflight",
            c.request(reqwest::Method::OPTIONS, format!("{base}/v1/numbers"))
                .header("access-control-request-method", "GET"),
        ),
        ("websocket", ws(c.get(format!("{base}/v1/operator")))),
    ] {
        let (status, hd, text) = with_origin(req, evil).await;
        assert_eq!(status, 403, "{what}: {text}");
        assert_eq!(header(&hd, "access-control-allow-origin"), "", "{what}");
        assert!(header(&hd, "content-type").starts_with("application/json"));
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "FORBIDDEN_ORIGIN", "{what}: {text}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("https://evil.test"),
            "{text}"
        );
    }
    // The allowed origin's WebSocket handshake goes through (101).
    let (status, _, _) = with_origin(ws(c.get(format!("{base}/v1/operator"))), APP).await;
    assert_eq!(status, 101);

    // Not a browser (no Origin): served, without CORS headers.
    let (status, hd, _) = with_origin(c.get(format!("{base}/sdk/operator.js")), "").await;
    assert_eq!(status, 200);
    assert_eq!(header(&hd, "access-control-allow-origin"), "");
    let (status, _, body) = with_origin(
        c.post(format!("{base}/v1/tokens"))
            .header("x-api-key", DEMO_API_KEY)
            .json(&serde_json::json!({"operatorRef": "a"})),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The demo page and the rest are not cross-origin resources: no CORS there.
    let (status, hd, _) = with_origin(c.get(format!("{base}/healthz")), evil).await;
    assert_eq!(status, 200);
    assert_eq!(header(&hd, "access-control-allow-origin"), "");
    h.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn no_allowed_origins_allows_every_origin() {
    let h = server_with(false, |sc| sc.allowed_origins = Vec::new()).await;
    let (status, hd, _) = with_origin(
        client().get(format!("http://{}/sdk/operator.js", h.http)),
        "https://anywhere.test",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&hd, "access-control-allow-origin"), "*");
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
        "/sdk/compat.js",
        "/sdk/react.js",
        "/sdk/operator.d.ts",
        "/sdk/compat.d.ts",
        "/sdk/react.d.ts",
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
