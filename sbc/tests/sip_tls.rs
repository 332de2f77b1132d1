//! SIP over TLS: a UA calls the SBC's TLS listener (a self-signed certificate it
//! trusts) and reaches the echo number; the whole dialog runs on that connection.

use std::sync::Arc;
use std::time::Duration;

use sbc::config::SbcConfig;
use sbc::server::Server;
use sbc::sip::{SipConfig, SipEndpoint};
use sip_bridge::sip::dialog::{InviteParams, UaEvent};
use sip_bridge::sip::message::{Peer, Transport};
use tokio_rustls::rustls;

const OFFER: &str = "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40996 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_tls() {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let server_tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();

    let mut sc = sbc::run::server_config(&SbcConfig::demo()).await.unwrap();
    sc.sip.udp = None;
    sc.sip.tcp = None;
    sc.sip.tls = Some(("127.0.0.1:0".parse().unwrap(), Arc::new(server_tls)));
    sc.http = "127.0.0.1:0".parse().unwrap();
    sc.webrtc = "127.0.0.1:0".parse().unwrap();
    sc.webrtc_advertise = None;
    sc.bridge.rtp_ports = (14400, 14499);
    let h = Server::builder(sc).start().await.unwrap();
    let tls_addr = h.sip_tls.expect("TLS listener");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut ua = SipEndpoint::start(SipConfig {
        udp: None,
        tcp: None,
        tls_client: Some(Arc::new(client_tls)),
        ..SipConfig::default()
    })
    .await
    .unwrap();
    let p = InviteParams {
        body_type: None,
        contact_params: None,
        flow: false,
        request_uri: "sip:+15550001@127.0.0.1;transport=tls".into(),
        from: "<sip:+15550111@127.0.0.1>".into(),
        to: "<sip:+15550001@127.0.0.1>".into(),
        peer: Peer {
            transport: Transport::Tls,
            addr: tls_addr,
            conn: None,
        },
        sdp: Some(OFFER.as_bytes().to_vec()),
        headers: vec![],
        credentials: None,
    };
    let leg = ua
        .handle
        .call(move |c, now| c.invite(now, p))
        .await
        .unwrap()
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ua.events.recv().await.unwrap() {
                UaEvent::Answered { sdp, .. } => return sdp,
                UaEvent::Failed { status, .. } => panic!("failed with {status}"),
                _ => {}
            }
        }
    })
    .await
    .expect("answered over TLS");
    assert!(answered.is_some(), "an SDP answer");
    ua.handle
        .call(move |c, now| c.hangup(now, leg))
        .await
        .unwrap()
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let UaEvent::Terminated { .. } = ua.events.recv().await.unwrap() {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "BYE answered over the same connection");
    assert_eq!(
        ua.handle
            .stats()
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one TLS connection for the whole dialog"
    );
    h.shutdown(Duration::from_secs(1)).await;
}
