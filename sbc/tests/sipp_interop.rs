//! Interop with a real SIP peer: SIPp (Debian package `sip-tester`, installed by
//! tests/ci.sh) as UAC against our UAS and as UAS against our UAC, over UDP and
//! TCP (scenarios in tests/sipp/), and with 10% of the UDP datagrams lost each way (seeded, in our socket
//! layer), so that only retransmissions (ours and SIPp's) can complete the calls. SIPp exits 0 only
//! when every call succeeded; our side checks every leg ended cleanly and the UA
//! holds no state afterwards.
//!
//! These run on real sockets and real time (loopback only); they are interop
//! checks, not timing tests.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Output};
use std::time::Duration;

use sbc::sip::{SipConfig, SipEndpoint, SipHandle, UdpLoss};
use sip_bridge::sip::dialog::{EndReason, InviteParams, LegId, UaEvent};
use sip_bridge::sip::message::{Peer, Transport};
use tokio::sync::mpsc;

const SDP: &[u8] = b"v=0\r\no=sbc 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn sipp() -> &'static str {
    let found = Command::new("sipp").arg("-v").output().is_ok();
    assert!(
        found,
        "SIPp is missing: `apt-get install -y sip-tester` (tests/ci.sh installs it)"
    );
    "sipp"
}

/// Our scenario files (tests/sipp/): SIPp's built-in ones mistake a retransmitted
/// 2xx for the answer to BYE and abort on a retransmitted INVITE, so they cannot
/// take loss.
fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A port free on loopback for both UDP and TCP (SIPp needs a fixed one).
fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

async fn endpoint(loss: Option<f64>) -> SipEndpoint {
    SipEndpoint::start(SipConfig {
        udp: Some("127.0.0.1:0".parse().unwrap()),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        seed: 42,
        udp_loss: loss.map(|p| UdpLoss {
            inbound: p,
            outbound: p,
            seed: std::env::var("LOSS_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(7),
        }),
        ..SipConfig::default()
    })
    .await
    .unwrap()
}

/// Runs SIPp with `args` in a blocking thread. With `SIPP_TRACE=dir` set, SIPp
/// writes its message and error logs there.
async fn run_sipp(mut args: Vec<String>) -> Output {
    let bin = sipp();
    if let Ok(dir) = std::env::var("SIPP_TRACE") {
        let tag = args.join("_").replace(['/', ':', ' '], "");
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(60)
            .collect();
        args.extend(
            [
                "-trace_msg",
                "-message_file",
                &format!("{dir}/{tag}.msg"),
                "-trace_err",
                "-error_file",
                &format!("{dir}/{tag}.err"),
            ]
            .map(String::from),
        );
    }
    tokio::task::spawn_blocking(move || Command::new(bin).args(&args).output().unwrap())
        .await
        .unwrap()
}

fn assert_sipp_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "SIPp {what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Answers every call 180 + 200 and counts how calls ended, until `calls` ended.
async fn answer_calls(
    h: SipHandle,
    mut events: mpsc::UnboundedReceiver<UaEvent>,
    calls: usize,
) -> Vec<EndReason> {
    let mut ended = Vec::new();
    while ended.len() < calls {
        let Some(ev) = events.recv().await else { break };
        match ev {
            UaEvent::IncomingInvite { leg, .. } => {
                h.call(move |ua, now| {
                    ua.respond(now, leg, 180, None, &[]).unwrap();
                    ua.respond(now, leg, 200, Some(SDP), &[]).unwrap();
                })
                .await
                .unwrap();
            }
            UaEvent::Terminated { reason, .. } => ended.push(reason),
            _ => {}
        }
    }
    ended
}

/// Legs and dialogs left (transactions may still linger for Timer J/K/M).
async fn idle(h: &SipHandle) -> (usize, usize) {
    h.call(|ua, _| (ua.legs(), ua.dialogs())).await.unwrap()
}

/// With loss, datagrams were really dropped and our retransmissions ran.
async fn assert_loss_recovered(h: &SipHandle, loss: Option<f64>) {
    if loss.is_some() {
        let dropped = h
            .stats()
            .impaired
            .load(std::sync::atomic::Ordering::Relaxed);
        // Ours (requests, final responses, 2xx) and theirs that we absorbed.
        let (ours, theirs) = h
            .call(|ua, _| {
                (
                    ua.transaction_stats().retransmissions + ua.stats().retransmitted_2xx,
                    ua.transaction_stats().absorbed,
                )
            })
            .await
            .unwrap();
        assert!(
            dropped > 5 && ours > 0 && theirs > 0,
            "dropped {dropped}, retransmitted {ours}, absorbed {theirs}"
        );
    }
}

async fn sipp_uac_against_our_uas(transport: &str, loss: Option<f64>, calls: usize) {
    let mut ep = endpoint(loss).await;
    let target = if transport == "t1" {
        ep.tcp_addr
    } else {
        ep.udp_addr
    }
    .unwrap();
    let h = ep.handle.clone();
    let events = std::mem::replace(&mut ep.events, mpsc::unbounded_channel().1);
    let answering = tokio::spawn(answer_calls(h.clone(), events, calls));
    let mut args: Vec<String> = [
        "-sf",
        &scenario("uac.xml"),
        "-i",
        "127.0.0.1",
        "-t",
        transport,
        "-m",
        &calls.to_string(),
        "-r",
        "20",
        "-d",
        "100",
        "-nostdin",
        "-timeout",
        "120s",
        "-timeout_error",
        "-max_retrans",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["-p".to_string(), free_port().to_string()]);
    args.push(target.to_string());
    let out = run_sipp(args).await;
    assert_sipp_ok(&out, &format!("uac over {transport} loss {loss:?}"));
    let Ok(ended) = tokio::time::timeout(Duration::from_secs(60), answering).await else {
        let legs = h
            .call(|ua, _| {
                ua.leg_ids()
                    .into_iter()
                    .map(|l| ua.leg_info(l))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap();
        panic!(
            "calls still up: {legs:?}\n{}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    let ended = ended.unwrap();
    assert_eq!(ended.len(), calls);
    assert!(
        ended.iter().all(|r| *r == EndReason::RemoteBye),
        "{ended:?}"
    );
    assert_eq!(idle(&h).await, (0, 0));
    assert_loss_recovered(&h, loss).await;
}

async fn our_uac_against_sipp_uas(transport: &str, loss: Option<f64>, calls: usize) {
    let port = free_port();
    let mut args: Vec<String> = [
        "-sf",
        &scenario("uas.xml"),
        "-i",
        "127.0.0.1",
        "-t",
        transport,
        "-m",
        &calls.to_string(),
        "-nostdin",
        "-timeout",
        "120s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["-p".to_string(), port.to_string()]);
    let sipp_task = tokio::spawn(run_sipp(args));
    tokio::time::sleep(Duration::from_millis(500)).await; // SIPp binds its port
    let mut ep = endpoint(loss).await;
    let h = ep.handle.clone();
    let sipp_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let peer = Peer {
        transport: if transport == "t1" {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        addr: sipp_addr,
        conn: None,
    };
    let mut legs: Vec<LegId> = Vec::new();
    let mut answered = 0;
    let mut ended = Vec::new();
    for i in 0..calls {
        let p = InviteParams {
            body_type: None,
            contact_params: None,
            flow: false,
            request_uri: format!("sip:service@{sipp_addr}"),
            from: format!("<sip:+1555010{i:04}@127.0.0.1>"),
            to: format!("<sip:service@{sipp_addr}>"),
            peer,
            sdp: Some(SDP.to_vec()),
            headers: Vec::new(),
            credentials: None,
        };
        legs.push(
            h.call(move |ua, now| ua.invite(now, p))
                .await
                .unwrap()
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(ev) = ep.events.try_recv() {
            match ev {
                UaEvent::Answered { leg, .. } => {
                    answered += 1;
                    h.call(move |ua, now| ua.hangup(now, leg))
                        .await
                        .unwrap()
                        .unwrap();
                }
                UaEvent::Terminated { reason, .. } => ended.push(reason),
                _ => {}
            }
        }
    }
    let rest = async {
        while ended.len() < calls {
            match ep.events.recv().await.unwrap() {
                UaEvent::Answered { leg, .. } => {
                    answered += 1;
                    h.call(move |ua, now| ua.hangup(now, leg))
                        .await
                        .unwrap()
                        .unwrap();
                }
                UaEvent::Terminated { reason, .. } => ended.push(reason),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(90), rest)
        .await
        .expect("all calls ended");
    let out = sipp_task.await.unwrap();
    assert_eq!(
        answered,
        calls,
        "{ended:?}\n{}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(ended.iter().all(|r| *r == EndReason::Local), "{ended:?}");
    assert_sipp_ok(&out, &format!("uas over {transport} loss {loss:?}"));
    assert_eq!(idle(&h).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_udp() {
    sipp_uac_against_our_uas("u1", None, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_tcp() {
    sipp_uac_against_our_uas("t1", None, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uac_udp_with_loss() {
    sipp_uac_against_our_uas("u1", Some(0.1), 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uas_udp() {
    our_uac_against_sipp_uas("u1", None, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uas_tcp() {
    our_uac_against_sipp_uas("t1", None, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_uas_udp_with_loss() {
    our_uac_against_sipp_uas("u1", Some(0.1), 30).await;
}
