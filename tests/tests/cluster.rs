//! `[cluster]` with a real Redis (Debian's `redis-server`): two nodes see each
//! other through their leases; a node that leaves, or dies, drops out of the
//! other's view; a hostile record is skipped and counted; with Redis gone the
//! node stays healthy and ready and keeps taking calls, counting the misses,
//! and writes its record again when Redis is back.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::sbc_process::{
    Sbc, SbcSpec, SippCmd, TempDir, free_tcp_port, http_get_at, lo, rtp, serial, wait_until,
};

/// A throwaway `redis-server` on a free port of 127.0.0.1 (no persistence).
struct Redis {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let dir = TempDir::new("redis");
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) runs");
        let r = Redis { child, port, dir };
        assert!(
            wait_until(Duration::from_secs(10), || r.cli(&["PING"]).trim()
                == "PONG"),
            "redis-server did not come up: {:?}",
            std::fs::read_to_string(r.dir.join("redis.log"))
        );
        r
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

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
    let callee = SippCmd::new("cluster-callee", "callee.xml", lo(3))
        .calls(2)
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
    // misses, takes a call.
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
    call("cluster-during-outage", &a);

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
    callee.assert_success(Duration::from_secs(30));
    a.assert_idle(Duration::from_secs(20));
}
