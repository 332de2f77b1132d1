//! `[cluster]` with a real Redis (Debian's `redis-server`): two nodes see each
//! other through their leases; a node that leaves, or dies, drops out of the
//! other's view; a hostile record is skipped and counted; with Redis gone the
//! node stays healthy and ready and keeps taking calls, counting the misses,
//! and writes its record again when Redis is back. A call on one node rings
//! the ready operators on the others; the first answer wins and the others
//! hear `taken_by_other`, also when they all accept at once.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::front::{Kamailio, Redis};
use integration_tests::operator::HeadlessOperator;
use integration_tests::sbc_process::{
    Sbc, SbcSpec, SippCmd, free_tcp_port, http_get_at, lo, rtp, serial, wait_until,
};

const WAIT: Duration = Duration::from_secs(5);

fn node(name: &str, n: u8, range: u16, redis: &str, callee: SocketAddr) -> SbcSpec {
    SbcSpec {
        ip: lo(n),
        admin: true,
        ..SbcSpec::new(
            name,
            rtp(range),
            format!(
                "[cluster]\nnode = \"{name}\"\nredis_url = \"{redis}\"\n\
                 heartbeat = \"200ms\"\nlease = \"600ms\"\nredis_timeout = \"100ms\"\n\n\
                 [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{callee}\"]\n\
                 inbound = [\"127.0.0.2/32\"]\n\n\
                 [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
                 dial = [ {{ ring = [\"sip:service@{callee}\"], timeout = \"20s\" }} ]\n"
            ),
        )
    }
}

/// The node names in `sbc`'s `GET /cluster`, and whether Redis was up.
fn view(sbc: &Sbc) -> (Vec<String>, bool, serde_json::Value) {
    let body = http_get_at(sbc.admin.unwrap(), "/cluster").unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut names: Vec<String> = v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    (names, v["redis_up"] == true, v)
}

fn wait_view(sbc: &Sbc, want: &[&str]) -> serde_json::Value {
    let mut last = (Vec::new(), false, serde_json::Value::Null);
    let ok = wait_until(Duration::from_secs(10), || {
        last = view(sbc);
        last.0 == want
    });
    assert!(
        ok,
        "wanted {want:?}, the view is {}\n{}",
        last.2,
        sbc.logs()
    );
    last.2
}

fn call(name: &str, sbc: &Sbc) {
    let mut caller = SippCmd::new(name, "caller.xml", lo(2))
        .remote(sbc.sip)
        .service("+15550100")
        .calls(1)
        .hold_ms(300)
        .spawn();
    caller.assert_success(Duration::from_secs(30));
}

#[test]
fn nodes_see_each_other_through_redis_and_a_redis_outage_costs_no_call() {
    let _serial = serial();
    let redis_port = free_tcp_port(lo(1));
    let mut redis = Redis::start(redis_port);
    // How long Redis stays down (tests/cluster/run.sh: 10 s), with two calls
    // a second going through a all along.
    let outage: u64 = std::env::var("CLUSTER_REDIS_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let outage_calls = (2 * outage + 2) as usize;
    let callee = SippCmd::new("cluster-callee", "callee.xml", lo(3))
        .calls(1 + outage_calls)
        .key("answer_pt", "0")
        .key("answer_codec", "PCMU/8000")
        .key("answer_ptime", "20");
    let callee_addr = callee.addr();
    let mut callee = callee.spawn();
    let a = Sbc::start(&node("a", 21, 72, &redis.url(), callee_addr));
    let spec_b = node("b", 22, 73, &redis.url(), callee_addr);
    let mut b = Sbc::start(&spec_b);

    // Each sees both, with the other's addresses and state.
    let v = wait_view(&a, &["a", "b"]);
    wait_view(&b, &["a", "b"]);
    let rec_b = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "b")
        .unwrap();
    assert_eq!(rec_b["sip"], b.sip.to_string());
    assert_eq!(rec_b["draining"], false);
    // (Waits, not reads: a heartbeat may miss its 100 ms on a loaded machine.)
    assert_eq!(
        a.wait_metric("sbc_cluster_nodes_alive", &[], WAIT, |v| v == 2.0),
        2.0
    );
    assert_eq!(
        a.wait_metric("sbc_cluster_redis_up", &[], WAIT, |v| v == 1.0),
        1.0
    );

    // A record a stranger wrote is skipped and counted, never shown.
    redis.cli(&["ZADD", "sbc:nodes", "99999999999999", "evil"]);
    redis.cli(&[
        "HSET",
        "sbc:node:evil",
        "sip",
        "not an address",
        "state",
        "serving",
    ]);
    let bad = a.wait_metric(
        "sbc_cluster_bad_records_total",
        &[],
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    assert!(bad >= 1.0);
    assert_eq!(view(&a).0, ["a", "b"]);
    redis.cli(&["ZREM", "sbc:nodes", "evil"]);

    // b leaves cleanly (SIGTERM, no calls): gone from a's view at once.
    b.terminate();
    assert!(
        b.wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    wait_view(&a, &["a"]);
    assert_eq!(redis.cli(&["EXISTS", "sbc:node:b"]).trim(), "0");

    // b dies (kill -9): gone once its lease lapses.
    b = Sbc::start(&spec_b);
    wait_view(&a, &["a", "b"]);
    b.kill();
    wait_view(&a, &["a"]);

    // Redis gone: a stays healthy and ready (saying degraded), counts the
    // misses, takes calls: those in progress and new ones, for the whole
    // outage.
    let mut during = SippCmd::new("cluster-outage-load", "caller.xml", lo(2))
        .remote(a.sip)
        .service("+15550100")
        .calls(outage_calls)
        .rate(2)
        .hold_ms(1500)
        .spawn();
    std::thread::sleep(Duration::from_millis(700));
    let stopped = integration_tests::agent::now();
    redis.stop();
    let errors = a.wait_metric(
        "sbc_cluster_redis_errors_total",
        &[],
        Duration::from_secs(5),
        |v| v >= 3.0,
    );
    assert!(errors >= 3.0);
    assert_eq!(a.metric("sbc_cluster_redis_up", &[]), 0.0);
    assert_eq!(
        http_get_at(a.admin.unwrap(), "/healthz").unwrap().trim(),
        "ok"
    );
    // Still 200 (a balancer keeps it), saying it is degraded.
    let ready = http_get_at(a.admin.unwrap(), "/readyz").unwrap();
    assert!(ready.starts_with("ready (degraded"), "{ready}");
    let rest = Duration::from_secs(outage).saturating_sub(stopped.elapsed());
    std::thread::sleep(rest);
    eprintln!(
        "redis outage: {:?} down, {outage_calls} calls through a during it",
        stopped.elapsed()
    );

    // Redis back (empty, as after a restart): a writes its record again.
    let redis = Redis::start(redis_port);
    let back = wait_until(Duration::from_secs(5), || {
        redis
            .cli(&["HGET", "sbc:node:a", "sip"])
            .contains(&a.sip.to_string())
    });
    assert!(back, "a's record is not in the new Redis\n{}", a.logs());
    wait_view(&a, &["a"]);
    assert_eq!(
        a.wait_metric("sbc_cluster_redis_up", &[], WAIT, |v| v == 1.0),
        1.0
    );
    let ready = wait_until(WAIT, || {
        http_get_at(a.admin.unwrap(), "/readyz").is_ok_and(|r| r == "ready\n")
    });
    assert!(ready, "/readyz still degraded after Redis returned");
    call("cluster-after-outage", &a);
    // Not one call of those around the outage failed.
    during.assert_success(Duration::from_secs(60));
    callee.assert_success(Duration::from_secs(30));
    a.assert_idle(Duration::from_secs(20));
}

/// A node whose number `support` rings its operators (and, through the
/// cluster, those of the other nodes); the carrier calls from 127.0.0.2.
fn ringing_node(name: &str, n: u8, range: u16, redis: &str) -> SbcSpec {
    SbcSpec {
        ip: lo(n),
        admin: true,
        ..SbcSpec::new(
            name,
            rtp(range),
            format!(
                "[cluster]\nnode = \"{name}\"\nredis_url = \"{redis}\"\n\
                 heartbeat = \"200ms\"\nlease = \"600ms\"\nredis_timeout = \"100ms\"\n\
                 allow = [\"127.0.0.0/8\"]\n\n\
                 [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"127.0.0.2:5060\"]\n\
                 inbound = [\"127.0.0.2/32\"]\n\n\
                 [[numbers]]\nid = \"support\"\ne164 = \"+15550100\"\n\
                 dial = [ {{ ring = [\"operators\"], timeout = \"20s\" }} ]\n"
            ),
        )
    }
}

/// Waits until `sbc`'s view lists `node` with `ready` as its ready numbers.
fn wait_ready(sbc: &Sbc, node: &str, ready: &[&str]) {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(Duration::from_secs(10), || {
        last = view(sbc).2;
        last["nodes"].as_array().is_some_and(|a| {
            a.iter().any(|n| {
                n["node"] == node
                    && n["ready"].as_array().is_some_and(|r| {
                        r.iter()
                            .map(|x| x.as_str())
                            .eq(ready.iter().map(|s| Some(*s)))
                    })
            })
        })
    });
    assert!(ok, "{node} not ready on {ready:?} in the view: {last}");
}

/// How each call an operator was rung for ended: call id -> (accepted, reason).
fn outcomes(
    op: &HeadlessOperator,
    accepted: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeMap<String, (bool, String)> {
    let mut out = std::collections::BTreeMap::new();
    for m in op.messages() {
        if m["type"] == "ended" {
            let id = m["callId"].as_str().unwrap_or_default().to_string();
            let reason = m["reason"].as_str().unwrap_or_default().to_string();
            out.insert(id.clone(), (accepted.contains(&id), reason));
        }
    }
    out
}

/// Accepts every call `ops` are rung for, at once, until `sipp` exits; then
/// waits until every rung call ended for every operator. Returns the ids
/// each operator accepted.
fn accept_all(
    ops: &[&HeadlessOperator],
    sipp: &mut integration_tests::sbc_process::Sipp,
    timeout: Duration,
) -> Vec<std::collections::BTreeSet<String>> {
    let mut accepted = vec![std::collections::BTreeSet::new(); ops.len()];
    let incoming = |op: &HeadlessOperator| -> Vec<String> {
        op.messages()
            .iter()
            .filter(|m| m["type"] == "incoming")
            .filter_map(|m| m["callId"].as_str().map(String::from))
            .collect()
    };
    let mut exited = false;
    let _ = wait_until(timeout, || {
        for (i, op) in ops.iter().enumerate() {
            for id in incoming(op) {
                if accepted[i].insert(id.clone()) {
                    op.accept(&id);
                }
            }
        }
        exited = exited || sipp.wait(Duration::from_millis(5)).is_some();
        exited
    });
    assert!(exited, "SIPp did not finish in {timeout:?}");
    let settled = wait_until(Duration::from_secs(10), || {
        ops.iter().all(|op| {
            let ended = outcomes(op, &Default::default());
            incoming(op).iter().all(|id| ended.contains_key(id))
        })
    });
    assert!(settled, "some rung calls never ended for their operator");
    accepted
}

#[test]
fn a_call_rings_operators_on_the_other_nodes_and_the_first_answer_wins() {
    let _serial = serial();
    let redis = Redis::start(free_tcp_port(lo(1)));
    let a = Sbc::start(&ringing_node("a", 23, 76, &redis.url()));
    let b = Sbc::start(&ringing_node("b", 24, 77, &redis.url()));
    let c = Sbc::start(&ringing_node("c", 25, 78, &redis.url()));
    wait_view(&a, &["a", "b", "c"]);
    // Nobody on a; bob on b, carol on c.
    let bob = HeadlessOperator::online(b.http, "bob", &["support"]);
    let carol = HeadlessOperator::online(c.http, "carol", &["support"]);
    wait_ready(&a, "b", &["support"]);
    wait_ready(&a, "c", &["support"]);
    wait_ready(&a, "a", &[]);

    // One call to a: both ring; bob answers; carol hears taken_by_other.
    let mut caller = SippCmd::new("cluster-ring", "caller.xml", lo(2))
        .remote(a.sip)
        .service("+15550100")
        .calls(1)
        .hold_ms(1000)
        .spawn();
    let rung_b = bob.wait("incoming", |m| m["type"] == "incoming");
    let rung_c = carol.wait("incoming", |m| m["type"] == "incoming");
    // The caller's number is shown on the other nodes.
    assert_eq!(rung_b["from"], "+15550111", "{rung_b}");
    bob.accept(rung_b["callId"].as_str().unwrap());
    let lost = carol.wait("ended", |m| m["type"] == "ended");
    assert_eq!(lost["reason"], "taken_by_other", "{lost}");
    assert_eq!(lost["callId"], rung_c["callId"]);
    caller.assert_success(Duration::from_secs(30));
    let won = bob.wait("ended", |m| m["type"] == "ended");
    assert_ne!(won["reason"], "taken_by_other", "{won}");
    assert_eq!(
        b.wait_metric("sbc_cluster_peer_calls_total", &[], WAIT, |v| v >= 1.0),
        1.0
    );
    assert_eq!(a.metric("sbc_cluster_peer_calls_total", &[]), 0.0);

    // Racing accepts: both accept every call the moment it rings. Each call
    // the carrier completes is held by exactly one operator; the other hears
    // taken_by_other. CLUSTER_RACES sets how many (tests/cluster/run.sh: 1000).
    let races: usize = std::env::var("CLUSTER_RACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    drop((bob, carol));
    let (bob, carol) = (
        HeadlessOperator::online(b.http, "bob2", &["support"]),
        HeadlessOperator::online(c.http, "carol2", &["support"]),
    );
    wait_ready(&a, "b", &["support"]);
    wait_ready(&a, "c", &["support"]);
    let mut caller = SippCmd::new("cluster-race", "caller.xml", lo(2))
        .remote(a.sip)
        .service("+15550100")
        .calls(races)
        .rate(2)
        .arg("-l", 1)
        .hold_ms(100)
        .timeout_secs(60 + races as u64)
        .spawn();
    let accepted = accept_all(
        &[&bob, &carol],
        &mut caller,
        Duration::from_secs(60 + races as u64),
    );
    let ends = [outcomes(&bob, &accepted[0]), outcomes(&carol, &accepted[1])];
    let held = ends
        .iter()
        .flat_map(|e| e.values())
        .filter(|(acc, reason)| *acc && reason != "taken_by_other")
        .count();
    let lost = ends
        .iter()
        .flat_map(|e| e.values())
        .filter(|(_, reason)| reason == "taken_by_other")
        .count();
    let both_rung = (ends[0].len() + ends[1].len()).saturating_sub(races);
    eprintln!(
        "cluster race: {races} calls, {both_rung} rang both, {held} held, {lost} taken_by_other"
    );
    let status = caller.wait(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "some carrier calls failed"
    );
    // 0 double answers: one holder per completed call.
    assert_eq!(held, races, "double or missing answers");
    assert_eq!(lost, both_rung);
    // (A call rings both when the view caught up since the last one: 20 of
    // 20 and 1000 of 1000 here; a slow machine may miss some.)
    assert!(
        both_rung * 4 >= races,
        "the race hardly ran: {both_rung} of {races} rang both"
    );
    for n in [&a, &b, &c] {
        n.assert_idle(Duration::from_secs(20));
    }
}

#[test]
fn a_call_ringing_when_its_node_dies_rings_again_on_a_survivor() {
    let _serial = serial();
    let redis = Redis::start(free_tcp_port(lo(1)));
    let mut a = Sbc::start(&ringing_node("a", 26, 79, &redis.url()));
    let b = Sbc::start(&ringing_node("b", 27, 80, &redis.url()));
    // Kamailio running the shipped config; by priority: a first, then b.
    let front = SocketAddr::new(lo(2), free_tcp_port(lo(2)));
    let kamailio = Kamailio::start_with(front, &[a.sip, b.sip], Some("8"));
    kamailio.wait_active(a.sip);
    kamailio.wait_active(b.sip);
    let bob = HeadlessOperator::online(b.http, "bob", &["support"]);
    wait_ready(&a, "b", &["support"]);

    // A frozen node is not dead: a rings bob; a is stopped (SIGSTOP) for
    // three leases, during which its lease lapses but its port still takes
    // connections; b does not take its call over; a comes back (SIGCONT) and
    // the call goes on with one owner: bob answers it through a.
    let mut caller = SippCmd::new("cluster-ringing-frozen", "caller_rr.xml", lo(5))
        .remote(front)
        .service("+15550100")
        .calls(1)
        .hold_ms(500)
        .spawn();
    let rung = bob.wait("incoming", |m| m["type"] == "incoming");
    a.signal("STOP");
    let lapsed = wait_until(Duration::from_secs(5), || !view(&b).0.contains(&"a".into()));
    std::thread::sleep(Duration::from_millis(600));
    a.signal("CONT");
    assert!(lapsed, "a's lease never lapsed while it was stopped");
    assert_eq!(b.metric("sbc_cluster_nodes_lost_total", &[]), 0.0);
    assert_eq!(b.metric("sbc_cluster_ringing_retried_total", &[]), 0.0);
    bob.accept(rung["callId"].as_str().unwrap());
    caller.assert_success(Duration::from_secs(30));
    let done = bob.wait("the call ended", |m| {
        m["type"] == "ended" && m["callId"] == rung["callId"]
    });
    assert_ne!(done["reason"], "taken_by_other", "{done}");
    eprintln!(
        "frozen node: a stopped (SIGSTOP) while ringing until its lease lapsed; its port answered, so not taken over; after SIGCONT bob answered through a, one owner"
    );
    wait_view(&b, &["a", "b"]);
    wait_ready(&a, "b", &["support"]);

    // The call reaches a, which forks it to bob on b.
    let mut caller = SippCmd::new("cluster-ringing-kill", "caller_rr.xml", lo(5))
        .remote(front)
        .service("+15550100")
        .calls(1)
        .hold_ms(1000)
        .spawn();
    let first = bob.wait("incoming", |m| {
        m["type"] == "incoming" && m["callId"] != rung["callId"]
    });
    // a dies (kill -9) while it rings.
    a.kill();
    let killed = integration_tests::agent::now();
    // b finds a dead (lease lapsed, no answer on its SIP address), ends the
    // fork, and sends Kamailio the 503 a left for the call; Kamailio tries b,
    // where the call rings bob again.
    let ended = bob.wait("the fork ended", |m| {
        m["type"] == "ended" && m["callId"] == first["callId"]
    });
    let again = bob.wait("incoming again", |m| {
        m["type"] == "incoming" && m["callId"] != first["callId"] && m["callId"] != rung["callId"]
    });
    let gap = killed.elapsed();
    eprintln!("ringing takeover: rang again {gap:?} after kill -9 (fork ended: {ended})");
    bob.accept(again["callId"].as_str().unwrap());
    caller.assert_success(Duration::from_secs(30));
    for (name, want) in [
        ("sbc_cluster_nodes_lost_total", 1.0),
        ("sbc_cluster_ringing_retried_total", 1.0),
        ("sbc_cluster_peer_calls_orphaned_total", 1.0),
    ] {
        assert_eq!(
            b.wait_metric(name, &[], WAIT, |v| v >= want),
            want,
            "{name}"
        );
    }
    b.assert_idle(Duration::from_secs(20));
}

/// Microseconds since the first use, on the test's clock: when a carrier's
/// event arrived (comparable across carriers and with [`ARRIVALS`]' `now`).
struct Arrivals(std::sync::OnceLock<std::time::Instant>);

impl Arrivals {
    fn with_epoch(&self) -> u64 {
        let epoch = *self.0.get_or_init(integration_tests::agent::now);
        integration_tests::agent::now()
            .duration_since(epoch)
            .as_micros() as u64
    }
}

static ARRIVALS: Arrivals = Arrivals(std::sync::OnceLock::new());

/// `test-carrier` (tests/src/bin/test-carrier.rs) placing one call, its JSON
/// events collected as they come (each with `arrived`, see [`Arrivals`]).
struct TestCarrier {
    child: std::process::Child,
    events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl TestCarrier {
    /// Calls `number` at `to`, from `from` (its SIP and RTP address).
    fn call(to: SocketAddr, number: &str, from: std::net::IpAddr) -> TestCarrier {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_test-carrier"))
            .args(["call", "--sbc", &to.to_string(), "--to", number])
            .args([
                "--bind",
                &format!("{from}:0"),
                "--rtp-ip",
                &from.to_string(),
            ])
            .args(["--tone", "1000"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("test-carrier runs");
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) {
                    // When it came, on the test's clock.
                    v["arrived"] = serde_json::json!(ARRIVALS.with_epoch());
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        TestCarrier { child, events }
    }

    fn wait(&self, what: &str, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let mut found = None;
        wait_until(Duration::from_secs(15), || {
            found = self
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|e| want(e))
                .cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "carrier: no {what}; got {:?}",
                self.events.lock().unwrap_or_else(|e| e.into_inner())
            )
        })
    }
}

impl Drop for TestCarrier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn calls_whose_owner_dies_mid_call_are_carried_on_through_kamailio() {
    let _serial = serial();
    // CLUSTER_FAILOVER_CALLS sets how many (tests/cluster/run.sh: 30).
    let n: usize = std::env::var("CLUSTER_FAILOVER_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let redis = Redis::start(free_tcp_port(lo(1)));
    // Two ranges each: the owner takes two RTP ports per call (carrier and
    // b), 30 calls need more than one range's 50 pairs.
    let wide = |n: u8, r: u16, name: &str| SbcSpec {
        rtp_ports: (rtp(r).0, rtp(r + 1).1),
        ..ringing_node(name, n, r, &redis.url())
    };
    let mut a = Sbc::start(&wide(28, 81, "a"));
    let b = Sbc::start(&wide(29, 83, "b"));
    let front = SocketAddr::new(lo(2), free_tcp_port(lo(2)));
    let kamailio = Kamailio::start_with(front, &[a.sip, b.sip], Some("8"));
    kamailio.wait_active(a.sip);
    kamailio.wait_active(b.sip);
    let ops: Vec<HeadlessOperator> = (0..n)
        .map(|i| HeadlessOperator::online(b.http, &format!("bob{i}"), &["support"]))
        .collect();
    wait_ready(&a, "b", &["support"]);

    // The carrier places n calls through Kamailio (which record-routes); a
    // owns them, the operators on b answer them, one each.
    let mut carriers = Vec::new();
    let mut calls: Vec<(usize, String)> = Vec::new();
    for _ in 0..n {
        let carrier = TestCarrier::call(front, "+15550100", lo(6));
        let mut answered = None;
        let ok = wait_until(Duration::from_secs(15), || {
            for (i, op) in ops.iter().enumerate() {
                if calls.iter().any(|(j, _)| *j == i) {
                    continue;
                }
                let fresh = op.messages().into_iter().find(|m| {
                    m["type"] == "incoming"
                        && !op
                            .messages()
                            .iter()
                            .any(|e| e["type"] == "ended" && e["callId"] == m["callId"])
                });
                if let Some(m) = fresh {
                    let id = m["callId"].as_str().unwrap().to_string();
                    op.accept(&id);
                    answered = Some((i, id));
                    return true;
                }
            }
            false
        });
        assert!(ok, "call {} never rang an idle operator", carriers.len());
        calls.push(answered.unwrap());
        carrier.wait("answered", |e| e["event"] == "answered");
        carriers.push(carrier);
    }
    // a's anchors are written once the calls are up.
    let anchored = wait_until(WAIT, || {
        redis.cli(&["HLEN", "sbc:anchor:b"]).trim() == n.to_string()
    });
    assert!(anchored, "not {n} anchors for b\n{}", a.logs());

    a.kill();
    let killed = ARRIVALS.with_epoch();
    // b takes each carrier dialog over: a re-INVITE through Kamailio's route,
    // same Call-ID and tags, b's media address.
    let mut delays = Vec::new();
    for carrier in &carriers {
        let re = carrier.wait("re-INVITE", |e| e["event"] == "reinvite");
        let at = re["arrived"].as_u64().unwrap_or(killed);
        delays.push(at.saturating_sub(killed) as f64 / 1000.0);
        let media = carrier.wait("media moved to b", |e| {
            e["event"] == "media" && e["t_ms"].as_f64() >= re["t_ms"].as_f64()
        });
        assert!(
            media["remote"].as_str().unwrap().starts_with("127.0.0.29:"),
            "{media}"
        );
    }
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| delays[((delays.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "mid-call takeover through Kamailio: {n} of {n} calls re-INVITEd to b; kill -9 to re-INVITE p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
        pct(0.5),
        pct(0.95),
        delays[delays.len() - 1]
    );
    assert_eq!(
        b.wait_metric("sbc_cluster_calls_reanchored_total", &[], WAIT, |v| v
            >= n as f64),
        n as f64
    );
    // The anchors were used once.
    assert_eq!(redis.cli(&["HLEN", "sbc:anchor:b"]).trim(), "0");
    // The operators hang up on b: each carrier gets its BYE through Kamailio.
    for ((i, call), carrier) in calls.iter().zip(&carriers) {
        ops[*i].send(serde_json::json!({"type": "hangup", "callId": call}));
        let ended = carrier.wait("ended", |e| e["event"] == "ended");
        assert_eq!(ended["reason"], "remote_bye", "{ended}\n{}", kamailio.log());
    }
    b.assert_idle(Duration::from_secs(20));
}

/// An nftables table dropping what goes to one address and port, removed
/// when dropped.
struct Cut(&'static str);

impl Cut {
    fn new(table: &'static str, daddr: &str, port: u16) -> Option<Cut> {
        let nft = |args: &str| {
            std::process::Command::new("nft")
                .args(args.split(' '))
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = nft(&format!("add table inet {table}"))
            && nft(&format!(
                "add chain inet {table} out {{ type filter hook output priority 0 ; }}"
            ))
            && nft(&format!(
                "add rule inet {table} out ip daddr {daddr} tcp dport {port} drop"
            ));
        ok.then_some(Cut(table))
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", self.0])
            .status();
    }
}

#[test]
#[ignore = "needs root and nftables: tests/cluster/run.sh runs it"]
fn a_node_cut_off_from_redis_keeps_its_calls_and_is_not_taken_over() {
    let _serial = serial();
    let port = free_tcp_port(lo(1));
    let redis = Redis::start_on(port, &["127.0.0.1", "127.0.0.30"]);
    let url_a = format!("redis://127.0.0.30:{port}/0");
    let a = Sbc::start(&ringing_node("a", 33, 85, &url_a));
    let b = Sbc::start(&ringing_node("b", 34, 86, &redis.url()));
    let bob = HeadlessOperator::online(b.http, "bob", &["support"]);
    wait_ready(&a, "b", &["support"]);
    let mut caller = SippCmd::new("cluster-cut", "caller.xml", lo(2))
        .remote(a.sip)
        .service("+15550100")
        .calls(1)
        .hold_ms(6000)
        .spawn();
    let rung = bob.wait("incoming", |m| m["type"] == "incoming");
    bob.accept(rung["callId"].as_str().unwrap());
    // a loses Redis (its packets to it dropped), b does not.
    let cut = Cut::new("sbc_test_cut", "127.0.0.30", port).expect("nft (as root)");
    let gone = wait_until(Duration::from_secs(5), || {
        !view(&b).0.contains(&"a".to_string())
    });
    assert!(gone, "a's lease never lapsed in b's view");
    assert_eq!(
        a.wait_metric("sbc_cluster_redis_up", &[], WAIT, |v| v == 0.0),
        0.0
    );
    std::thread::sleep(Duration::from_secs(2));
    // a answers on its port: alive, never taken over.
    assert_eq!(b.metric("sbc_cluster_nodes_lost_total", &[]), 0.0);
    assert_eq!(b.metric("sbc_cluster_calls_reanchored_total", &[]), 0.0);
    drop(cut);
    wait_view(&b, &["a", "b"]);
    assert_eq!(
        a.wait_metric("sbc_cluster_redis_up", &[], WAIT, |v| v == 1.0),
        1.0
    );
    // The call went on throughout, with one owner.
    caller.assert_success(Duration::from_secs(30));
    eprintln!(
        "redis cut: a cut off from Redis for ~3 s mid-call; not taken over; its call completed"
    );
}

#[test]
fn a_call_whose_operator_node_dies_ends_at_once_with_node_failure() {
    // Until the SDK can resume a call on another node (a new peer
    // connection), the call whose browser leg died ends cleanly, fast: the
    // caller gets a BYE when the node is found dead, not at the media timeout.
    let _serial = serial();
    let redis = Redis::start(free_tcp_port(lo(1)));
    let a = Sbc::start(&ringing_node("a", 35, 87, &redis.url()));
    let mut b = Sbc::start(&ringing_node("b", 36, 88, &redis.url()));
    let bob = HeadlessOperator::online(b.http, "bob", &["support"]);
    wait_ready(&a, "b", &["support"]);
    // (From the trunk's address: no proxy here.)
    let carrier = TestCarrier::call(a.sip, "+15550100", lo(2));
    carrier.wait("ringing", |e| e["event"] == "progress");
    let rung = bob.wait("incoming", |m| m["type"] == "incoming");
    bob.accept(rung["callId"].as_str().unwrap());
    carrier.wait("answered", |e| e["event"] == "answered");
    b.kill();
    let killed = ARRIVALS.with_epoch();
    let ended = carrier.wait("ended", |e| e["event"] == "ended");
    let after = ended["arrived"]
        .as_u64()
        .unwrap_or(killed)
        .saturating_sub(killed)
        / 1000;
    eprintln!("operator node killed: the caller got its BYE {after} ms after kill -9");
    assert_eq!(ended["reason"], "remote_bye", "{ended}");
    assert_eq!(
        a.wait_metric("sbc_cluster_nodes_lost_total", &[], WAIT, |v| v >= 1.0),
        1.0
    );
    assert!(
        a.logs().contains("node_failure"),
        "the CDR says why\n{}",
        a.logs()
    );
    a.assert_idle(Duration::from_secs(20));
}
