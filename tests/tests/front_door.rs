//! The shipped front doors (`sbc/deploy/`) with the real programs from Debian:
//! the Kamailio and haproxy configurations pass their own checks; a rolling
//! upgrade of three `sbc` nodes behind Kamailio's dispatcher drops no call (each
//! node in turn is drained with SIGTERM: its probes get 503, new calls go to
//! the other node, its calls finish, it exits and comes back); behind haproxy,
//! a draining node is taken out by its `/readyz` while its call goes on, its
//! operators' WebSockets are closed (they reconnect through haproxy to the
//! other node) and new requests go to the other node.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use integration_tests::front::{Haproxy, Kamailio, deploy};
use integration_tests::operator::HeadlessOperator;
use integration_tests::sbc_process::{
    Sbc, SbcSpec, SippCmd, free_port, free_tcp_port, http_get_at, lo, rtp, serial, wait_until,
};

/// `program -c -f FILE` on a shipped file: its exit status and what it printed.
fn check(program: &str, file: &str) -> (bool, String) {
    let out = Command::new(program)
        .arg("-c")
        .arg("-f")
        .arg(deploy(file))
        .output()
        .unwrap_or_else(|e| panic!("{program} (its Debian package) runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_kamailio_config_passes_kamailio_c() {
    let (ok, text) = check("kamailio", "kamailio/kamailio.cfg");
    assert!(ok, "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

#[test]
fn the_haproxy_config_passes_haproxy_c() {
    let (ok, text) = check("haproxy", "haproxy/haproxy.cfg");
    assert!(ok, "{text}");
    assert!(text.contains("Configuration file is valid"), "{text}");
}

/// Kamailio with the shipped config on `addr` (UDP and TCP), its nodes in
/// `list`, killed when dropped.
fn node_spec(name: &str, n: u8, range: u16, sip_port: u16, callee: SocketAddr) -> SbcSpec {
    SbcSpec {
        ip: lo(n),
        admin: true,
        sip_port: Some(sip_port),
        drain_secs: 30,
        ..SbcSpec::new(
            name,
            rtp(range),
            format!(
                "[[trunks]]\nname = \"front\"\nhost = \"front.test\"\npeers = [\"{callee}\"]\n\
                 inbound = [\"127.0.0.2/32\"]\n\n\
                 [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
                 dial = [ {{ ring = [\"sip:service@{callee}\"], timeout = \"20s\" }} ]\n"
            ),
        )
    }
}

/// SIGTERM, the process leaves once its calls have ended, and it starts again
/// on the same address.
fn drain_and_restart(node: &mut Sbc, spec: &SbcSpec, kamailio: &Kamailio) {
    // While draining, the admin listener's /readyz says so (a balancer's cue).
    let admin = node.admin.expect("admin listener");
    node.terminate();
    let drained = wait_until(Duration::from_secs(10), || {
        integration_tests::sbc_process::http_get_at(admin, "/readyz").is_err()
    });
    assert!(drained, "/readyz still 200 after SIGTERM\n{}", node.logs());
    let exit = node.wait_exit(Duration::from_secs(40));
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit {exit:?}\n{}",
        node.logs()
    );
    *node = Sbc::start(spec);
    kamailio.wait_active(node.sip);
}

#[test]
fn a_rolling_upgrade_behind_kamailio_drops_no_call() {
    let _serial = serial();
    let calls = 200;
    let callee = SippCmd::new("upgrade-callee", "callee.xml", lo(3))
        .calls(calls)
        .key("answer_pt", "0")
        .key("answer_codec", "PCMU/8000")
        .key("answer_ptime", "20");
    let callee_addr = callee.addr();
    let spec_a = node_spec("node-a", 11, 70, free_port(lo(11)), callee_addr);
    let spec_b = node_spec("node-b", 12, 71, free_port(lo(12)), callee_addr);
    let spec_c = node_spec("node-c", 13, 89, free_port(lo(13)), callee_addr);
    let mut a = Sbc::start(&spec_a);
    let mut b = Sbc::start(&spec_b);
    let mut c = Sbc::start(&spec_c);
    let front = SocketAddr::new(lo(2), free_port(lo(2)));
    let kamailio = Kamailio::start(front, &[a.sip, b.sip, c.sip]);
    kamailio.wait_active(a.sip);
    kamailio.wait_active(b.sip);
    kamailio.wait_active(c.sip);

    let mut callee = callee.spawn();
    // 10 calls a second for 20 s, each 2 s long, through Kamailio, while the
    // three nodes are drained and restarted in turn.
    let mut caller = SippCmd::new("upgrade-caller", "caller_rr.xml", lo(5))
        .remote(front)
        .service("+15550100")
        .calls(calls)
        .rate(10)
        .hold_ms(2000)
        .spawn();
    std::thread::sleep(Duration::from_millis(1500));
    drain_and_restart(&mut a, &spec_a, &kamailio);
    drain_and_restart(&mut b, &spec_b, &kamailio);
    drain_and_restart(&mut c, &spec_c, &kamailio);
    caller.assert_success(Duration::from_secs(90));
    callee.assert_success(Duration::from_secs(90));

    // The calls moved: the dispatcher hashes the called number, so one node
    // takes them until it drains, then another (the callee saw INVITEs from
    // at least two).
    let invites: Vec<String> = callee
        .received()
        .into_iter()
        .filter(|m| m.is_request("INVITE"))
        .filter_map(|m| m.header("Via").map(str::to_string))
        .collect();
    assert_eq!(invites.len(), calls);
    let carried = [lo(11), lo(12), lo(13)]
        .iter()
        .filter(|node| invites.iter().any(|v| v.contains(&format!("{node}:"))))
        .count();
    assert!(
        carried >= 2,
        "the calls never moved: {carried} node(s) carried them"
    );
    a.assert_idle(Duration::from_secs(20));
    b.assert_idle(Duration::from_secs(20));
    c.assert_idle(Duration::from_secs(20));
    eprintln!(
        "rolling upgrade: {calls} of {calls} calls completed at 10 calls/s while 3 nodes were drained and restarted in turn"
    );
}

fn ha_node(name: &str, n: u8, range: u16) -> SbcSpec {
    SbcSpec {
        ip: lo(n),
        drain_secs: 30,
        ..SbcSpec::new(
            name,
            rtp(range),
            format!(
                "[admin]\nnode = \"{name}\"\n\n\
                 [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"127.0.0.3:5060\"]\n\
                 inbound = [\"127.0.0.2/32\"]\n\n\
                 [[numbers]]\nid = \"support\"\ne164 = \"+15550100\"\n\
                 dial = [ {{ ring = [\"operators\"], timeout = \"20s\" }} ]\n\n\
                 [[numbers]]\nid = \"echo\"\ne164 = \"+15550001\"\n\
                 dial = [ {{ ring = [\"echo\"], timeout = \"20s\" }} ]\n"
            ),
        )
    }
}

/// Which node answered a `/metrics` through haproxy (its `node` label).
fn served_by(front: SocketAddr) -> Option<String> {
    let text = http_get_at(front, "/metrics").ok()?;
    let at = text.find("sbc_calls_active{node=\"")? + "sbc_calls_active{node=\"".len();
    Some(text[at..].split('"').next()?.to_string())
}

#[test]
fn behind_haproxy_a_draining_node_is_taken_out_while_its_call_goes_on() {
    let _serial = serial();
    let mut a = Sbc::start(&ha_node("ha-a", 31, 74));
    let b = Sbc::start(&ha_node("ha-b", 32, 75));
    let front = SocketAddr::new(lo(4), free_tcp_port(lo(4)));
    let haproxy = Haproxy::start(front, &[a.http, b.http]);
    let both = wait_until(Duration::from_secs(15), || {
        let seen: std::collections::BTreeSet<String> =
            (0..6).filter_map(|_| served_by(front)).collect();
        seen.len() == 2
    });
    assert!(both, "haproxy never sent to both nodes\n{}", haproxy.log());

    // Operators through haproxy (least connections: they spread over both).
    let ops: Vec<HeadlessOperator> = (0..4)
        .map(|i| HeadlessOperator::online(front, &format!("op{i}"), &["support"]))
        .collect();
    let on_a = a.metric("sbc_operator_sessions", &[]);
    assert!(on_a >= 1.0, "no operator landed on a");

    // A call on a, then a drains: it stays up for its call.
    let mut caller = SippCmd::new("ha-caller", "caller.xml", lo(2))
        .remote(a.sip)
        .service("+15550001")
        .calls(1)
        .hold_ms(6000)
        .spawn();
    assert!(
        wait_until(Duration::from_secs(5), || a.metric("sbc_calls_active", &[])
            == 1.0),
        "the call did not reach a"
    );
    a.terminate();

    // haproxy's /readyz checks take a out (500 ms apart, 2 failures), and its
    // operators' WebSockets are closed, while a still runs its call.
    let out = wait_until(Duration::from_secs(5), || {
        (0..4).all(|_| served_by(front).as_deref() == Some("ha-b"))
    });
    assert!(
        out,
        "haproxy still sends to the draining node\n{}",
        haproxy.log()
    );
    let cut = wait_until(Duration::from_secs(5), || {
        ops.iter().filter(|o| o.is_closed()).count() as f64 == on_a
    });
    assert!(
        cut,
        "{} of the {on_a} operators on a were cut\n{}",
        ops.iter().filter(|o| o.is_closed()).count(),
        haproxy.log()
    );
    assert!(a.exited().is_none(), "a left before its call ended");
    assert!(ops.iter().filter(|o| !o.is_closed()).count() as f64 == 4.0 - on_a);

    // They come back through haproxy, to b.
    let back: Vec<HeadlessOperator> = (0..on_a as usize)
        .map(|i| HeadlessOperator::online(front, &format!("back{i}"), &["support"]))
        .collect();
    assert_eq!(b.metric("sbc_operator_sessions", &[]), 4.0);
    drop(back);

    // The call finished as it would have; then a left on its own.
    caller.assert_success(Duration::from_secs(30));
    let exit = a.wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit {exit:?}\n{}",
        a.logs()
    );
    eprintln!(
        "haproxy drain: {on_a} operators on the draining node cut and back on the other, 0 lost; its call completed"
    );
}
