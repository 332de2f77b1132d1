//! `sbc` / `sbc --config FILE`: turn a config file into a running server, print
//! where it listens, and drain on SIGTERM/SIGINT.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use media_core::codec::OpusEncoderConfig;
use sip_bridge::sip::framing::DEFAULT_MAX_MESSAGE;

use crate::config::{DEMO_API_KEY, DEMO_API_KEY_SHA256, LogFormat, SbcConfig};
use crate::protect::ProtectionConfig;
use crate::server::{Server, ServerConfig, ServerHandle};
use crate::sip::SipConfig;

/// A seed from the OS (the std hasher's per-process random keys): tags, Call-IDs
/// and branches must not be guessable.
pub fn os_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5bc);
    h.finish()
}

fn tls_config(cfg: &SbcConfig) -> Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>, String> {
    let (Some(_), Some(cert), Some(key)) = (cfg.sip.tls, &cfg.sip.tls_cert, &cfg.sip.tls_key)
    else {
        return Ok(None);
    };
    server_tls("sip", cert, key).map(|s| Some(Arc::new(s)))
}

/// HTTPS for browsers when `[http]` names a certificate.
fn http_tls_config(
    cfg: &SbcConfig,
) -> Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>, String> {
    let (Some(cert), Some(key)) = (&cfg.http.tls_cert, &cfg.http.tls_key) else {
        return Ok(None);
    };
    let mut tls = server_tls("http", cert, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(tls)))
}

/// A TLS server config from PEM files; errors name `section.tls_cert`/`tls_key`.
fn server_tls(
    section: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{section}.tls_cert: {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{section}.tls_cert: {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{section}.tls_key: {}: {e}", key.display()))?;
    tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{section}.tls_cert/tls_key: {e}"))
}

/// The client side of TLS trunks: the public web roots, plus `sip.tls_ca`.
fn tls_client_config(
    cfg: &SbcConfig,
) -> Result<Option<Arc<tokio_rustls::rustls::ClientConfig>>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(ca) = &cfg.sip.tls_ca else {
        return Ok(None);
    };
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("sip.tls_ca: {}: {e}", ca.display()))?
    {
        let cert = cert.map_err(|e| format!("sip.tls_ca: {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sip.tls_ca: {}: {e}", ca.display()))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!(
            "sip.tls_ca: {}: no certificate in it",
            ca.display()
        ));
    }
    Ok(Some(Arc::new(
        tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )))
}

/// Resolves the trunks' host names (once, at start).
async fn resolve_peers(
    cfg: &SbcConfig,
) -> Result<std::collections::HashMap<String, Vec<SocketAddr>>, String> {
    let mut out = std::collections::HashMap::new();
    for hp in cfg.peers_to_resolve() {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(hp.as_str())
            .await
            .map_err(|e| format!("cannot resolve trunk peer {hp}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("trunk peer {hp} resolves to nothing"));
        }
        out.insert(hp, addrs);
    }
    Ok(out)
}

/// The server configuration a config file describes.
pub async fn server_config(cfg: &SbcConfig) -> Result<ServerConfig, String> {
    let seed = os_seed();
    let resolved = resolve_peers(cfg).await?;
    let mut bridge = cfg
        .bridge_config(seed, |hp| {
            resolved
                .get(hp)
                .cloned()
                .ok_or_else(|| format!("{hp} was not resolved"))
        })
        .map_err(|e| e.to_string())?;
    bridge.open_inbound = cfg.sip.open_inbound;
    let token_secret = cfg.token_secret().map_err(|e| e.to_string())?;
    let tls = tls_config(cfg)?;
    let sip = SipConfig {
        udp: cfg.sip.udp,
        tcp: cfg.sip.tcp,
        tls: cfg.sip.tls.zip(tls),
        tls_client: tls_client_config(cfg)?,
        advertise: cfg.sip.advertise,
        advertise6: cfg.sip.advertise6,
        user_agent: cfg.sip.user_agent.clone(),
        max_legs: cfg.limits.max_calls.saturating_mul(4),
        max_transactions: cfg.limits.max_calls.saturating_mul(20).max(1000),
        max_connections: cfg.limits.max_connections,
        max_message: DEFAULT_MAX_MESSAGE,
        idle_timeout: Duration::from_secs(600),
        ring_timeout: Duration::from_secs(180),
        seed,
        udp_loss: None,
    };
    Ok(ServerConfig {
        sip,
        bridge,
        http: cfg.http.listen,
        http_tls: http_tls_config(cfg)?,
        admin: cfg.admin.listen,
        node: cfg
            .admin
            .node
            .clone()
            .or_else(|| cfg.cluster.as_ref().map(|k| k.node.clone()))
            .unwrap_or_else(crate::telemetry::hostname),
        cluster: cfg
            .cluster
            .as_ref()
            .map(|k| crate::server::ClusterSettings {
                node: k.node.clone(),
                redis_url: k.redis_url.clone(),
                heartbeat: k.heartbeat,
                lease: k.lease,
                timeout: k.redis_timeout,
                allow: k.allow.clone(),
            }),
        allowed_origins: cfg.websocket_origins(),
        webrtc: cfg.media.webrtc,
        webrtc_advertise: Some(cfg.webrtc_advertise()),
        rtp_bind: cfg.media.rtp_bind,
        media_timeout: cfg.media.media_timeout,
        opus: OpusEncoderConfig {
            complexity: cfg.media.opus_complexity,
            ..OpusEncoderConfig::default()
        },
        sip_jitter_buffer: cfg.media.sip_jitter_buffer,
        token_secret,
        api_keys: cfg.api_keys(),
        protection: ProtectionConfig {
            requests: cfg.protection.rate_limit_requests,
            window: cfg.protection.rate_limit_window,
            ban: cfg.protection.ban_time,
            scanners: cfg.protection.scanner_user_agents.clone(),
            max_cps: cfg.limits.max_cps,
            max_sources: 100_000,
        },
        webhook: cfg
            .webhooks
            .as_ref()
            .map(|w| (w.url.clone(), w.secret.expose().as_bytes().to_vec())),
        demo: cfg.demo.enabled,
        phone_accounts: cfg.registrar.accounts_url.as_ref().map(|u| {
            (
                u.clone(),
                cfg.registrar
                    .accounts_secret
                    .as_ref()
                    .map(|s| s.expose().as_bytes().to_vec())
                    .unwrap_or_default(),
                cfg.registrar.accounts_timeout,
            )
        }),
        routing: cfg.routing.as_ref().map(|r| {
            (
                r.url.clone(),
                r.secret.expose().as_bytes().to_vec(),
                r.timeout,
            )
        }),
        recording: crate::recorder::RecorderConfig {
            dir: cfg.recording.dir.clone(),
            max_duration: cfg.recording.max_duration,
            retention: cfg.recording.retention,
            max_active: cfg.recording.max_active,
            queue: cfg.recording.queue,
            writers: cfg.recording.writers,
        },
    })
}

/// Sets up logging as the config says (`RUST_LOG` wins).
pub fn init_logging(cfg: &SbcConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

/// What `sbc` prints at start.
pub fn banner(cfg: &SbcConfig, h: &ServerHandle) -> String {
    let mut s = String::new();
    let http = h.http;
    let page = format!(
        "{}://{}:{}/",
        if cfg.http.tls_cert.is_some() {
            "https"
        } else {
            "http"
        },
        match http.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"), // RFC 3986 3.2.2
            ip => ip.to_string(),
        },
        http.port()
    );
    s.push_str(&format!("sbc {} running\n", env!("CARGO_PKG_VERSION")));
    for (name, a) in [
        ("SIP/UDP", h.sip_udp),
        ("SIP/TCP", h.sip_tcp),
        ("SIP/TLS", h.sip_tls),
    ] {
        if let Some(a) = a {
            s.push_str(&format!("  {name:<8} {a}\n"));
        }
    }
    s.push_str(&format!(
        "  {:<8} {} (browsers reach {})\n",
        "WebRTC", h.webrtc, h.webrtc_public
    ));
    match h.admin {
        Some(admin) => s.push_str(&format!(
            "  {:<8} {http}\n  {:<8} {admin}  (metrics: http://{admin}/metrics)\n",
            "HTTP", "admin"
        )),
        None => s.push_str(&format!(
            "  {:<8} {http}  (metrics: {page}metrics)\n",
            "HTTP"
        )),
    }
    if cfg.demo.enabled {
        s.push_str(&format!(
            "\nDemo: open {page} , type a name, go online, then dial one of:\n"
        ));
        for n in &cfg.numbers {
            s.push_str(&format!("  {:<16} {:<8} {}\n", n.e164, n.id, n.name));
        }
        if accepts_demo_key(cfg) {
            s.push_str(&format!(
                "Demo API key (for POST /v1/tokens with X-API-Key): {DEMO_API_KEY}\n"
            ));
        }
        s.push_str(&format!(
            "A SIP phone or SIPp on this machine may call {} too.\n",
            h.sip_udp.map_or("-".into(), |a| a.to_string())
        ));
    }
    s
}

/// Whether the config takes the well-known demo API key (only then does the
/// banner name it).
fn accepts_demo_key(cfg: &SbcConfig) -> bool {
    cfg.auth
        .api_keys
        .iter()
        .any(|k| k.sha256.eq_ignore_ascii_case(DEMO_API_KEY_SHA256))
}

/// Runs until SIGTERM or SIGINT, then drains for up to `drain`.
pub async fn run(cfg: SbcConfig, drain: Duration) -> Result<(), String> {
    init_logging(&cfg);
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let server_cfg = server_config(&cfg).await?;
    let handle = Server::builder(server_cfg)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    print!("{}", banner(&cfg, &handle));
    wait_for_signal().await;
    tracing::info!("shutting down: draining calls for up to {drain:?}");
    let ended = handle.shutdown(drain).await;
    tracing::info!(ended, "stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_ca_adds_trusted_roots_or_says_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("sbc-tls-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = SbcConfig::demo();
        assert!(tls_client_config(&cfg).unwrap().is_none(), "default roots");
        let ca = rcgen::generate_simple_self_signed(vec!["carrier.test".into()]).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(
            &good,
            pem::encode(&pem::Pem::new("CERTIFICATE", ca.cert.der().to_vec())),
        )
        .unwrap();
        cfg.sip.tls_ca = Some(good);
        assert!(tls_client_config(&cfg).unwrap().is_some());
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        cfg.sip.tls_ca = Some(empty);
        let e = tls_client_config(&cfg).unwrap_err();
        assert!(
            e.starts_with("sip.tls_ca:") && e.contains("no certificate"),
            "{e}"
        );
        cfg.sip.tls_ca = Some(dir.join("missing.pem"));
        assert!(
            tls_client_config(&cfg)
                .unwrap_err()
                .starts_with("sip.tls_ca:")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_banner_names_the_demo_key_only_where_it_works() {
        assert!(accepts_demo_key(&SbcConfig::demo()));
        let mut own = SbcConfig::demo();
        own.auth
            .api_keys
            .retain(|k| !k.sha256.eq_ignore_ascii_case(DEMO_API_KEY_SHA256));
        assert!(own.demo.enabled && !accepts_demo_key(&own));
    }
}
