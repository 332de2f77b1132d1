//! This node's place in a cluster of `sbc` nodes, through Redis (`[cluster]`).
//!
//! Every `heartbeat` one script renews this node's lease and record and reads
//! back every live node's record (one round trip, one command):
//!
//! * `sbc:nodes`, a sorted set: node name -> its last heartbeat (ms, Redis's own
//!   `TIME`, so node clocks never matter). A node is live while its score is
//!   younger than `lease`.
//! * `sbc:node:{name}`, a hash: `sip`, `http`, `state` (`serving`/`draining`),
//!   `calls`, `operators`, `version`, `boot`, and who can be rung there:
//!   `ready` (number ids with an operator ready) and `ops` (operators ready),
//!   comma-separated; it expires with the lease.
//!
//! After each heartbeat the control task gets the other serving nodes
//! ([`sip_bridge::cluster::Peers`]): its calls ring their operators (see
//! that module). A presence change here reaches the others within one
//! heartbeat of theirs and one of ours.
//!
//! Redis is never on a call's path. Every exchange has its own deadline
//! (`timeout`); when Redis is slow or gone the node goes on from memory, counts
//! it (`sbc_cluster_redis_errors_total`, `sbc_cluster_redis_up 0`) and keeps
//! its last view, and its next successful heartbeat writes its whole record
//! again (a restarted Redis has forgotten everything). `/healthz` and
//! `/readyz` never ask Redis. A node that stops cleanly removes its record.
//!
//! Records other nodes wrote are read defensively: a malformed one is skipped
//! and counted (`sbc_cluster_bad_records_total`), never trusted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use serde::Serialize;
use tokio::sync::watch;

use std::collections::BTreeMap;

use sip_bridge::cluster::{ClusterOut, Peers};
use sip_bridge::sip::dialog::snapshot::DialogSnapshot;
use sip_bridge::sip::message::{Peer, Transport};

use crate::inbox::ControlIn;
use crate::sip::Handle;

/// `[cluster]` as the task takes it.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's name (unique in the cluster).
    pub node: String,
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// SIP address other nodes and the proxy reach this node at.
    pub sip: SocketAddr,
    /// HTTP address (the API, operator WebSockets).
    pub http: SocketAddr,
    /// How often the lease is renewed.
    pub heartbeat: Duration,
    /// A node whose lease is older than this is not live.
    pub lease: Duration,
    /// Deadline of one exchange with Redis.
    pub timeout: Duration,
    /// Address blocks other nodes' SIP addresses must be in (empty: any).
    pub allow: Vec<sip_bridge::config::Cidr>,
}

/// A node as its record says (the record's format and checks are the
/// sans-IO core's, fuzzed there).
pub use sip_bridge::cluster::NodeRecord as NodeInfo;

/// The cluster as this node last saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterView {
    /// Live nodes (this one included once Redis has its record), by name.
    pub nodes: Vec<NodeInfo>,
    /// Whether the last exchange with Redis succeeded.
    pub redis_up: bool,
    /// Heartbeats that failed (timeout, connection, error) since start.
    pub redis_errors: u64,
}

/// The view shared with the admin listener (`GET /cluster`).
pub type SharedView = Arc<Mutex<ClusterView>>;

/// The most node records read per heartbeat: a bound on what a flood of
/// records (or a hostile writer) costs us.
const MAX_NODES: usize = 256;

/// Renews the lease and reads the live nodes (see the module docs). KEYS:
/// `sbc:nodes`, `sbc:node:{me}`. ARGV: name, sip, http, state, calls,
/// operators, version, boot, lease (ms), max nodes, ready numbers, ready
/// operators.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[9])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], 'sip', ARGV[2], 'http', ARGV[3], 'state', ARGV[4],
  'calls', ARGV[5], 'operators', ARGV[6], 'version', ARGV[7], 'boot', ARGV[8],
  'ready', ARGV[11], 'ops', ARGV[12])
redis.call('PEXPIRE', KEYS[2], lease)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * lease)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - lease, '+inf', 'LIMIT', 0, tonumber(ARGV[10]))
local out = {}
for _, id in ipairs(live) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', 'sbc:node:' .. id)
end
return out
";

/// Claims a dead node's ringing calls, once across the cluster: the first
/// survivor to set the claim (per node and boot) takes and deletes them.
/// KEYS: `sbc:claim:{node}:{boot}`, `sbc:ringing:{node}`. ARGV: me, claim
/// lifetime (ms). Returns the calls (field, value, ...) or nil.
const CLAIM: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  local calls = redis.call('HGETALL', KEYS[2])
  redis.call('DEL', KEYS[2])
  return calls
end
return false
";

/// Room for records between the control task and this one.
pub const RECORD_QUEUE: usize = 4096;

/// Starts the cluster task; it stops (removing this node's record) when `stop`
/// turns true.
/// `ready` moves when who is ready here may have changed: the record is
/// written then (at most every 50 ms), not only at the
/// heartbeat, so other nodes ring a freed operator sooner. `records` are
/// the calls ringing here that a survivor would answer for
/// ([`ClusterOut`]): written to `sbc:ringing:{node}` as they come.
pub fn spawn(
    cfg: ClusterConfig,
    control: Handle<ControlIn>,
    view: SharedView,
    ready: watch::Receiver<u64>,
    records: tokio::sync::mpsc::Receiver<ClusterOut>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(cfg, control, view, ready, records, stop))
}

/// What wakes the task.
enum Wake {
    Heartbeat,
    PresenceChanged,
    Records(Box<ClusterOut>),
}

/// The least time between two writes of the record when presence changes
/// often (a busy call centre): a bound on Redis commands per node.
const MIN_WRITE_GAP: Duration = Duration::from_millis(50);

async fn run(
    cfg: ClusterConfig,
    control: Handle<ControlIn>,
    view: SharedView,
    mut ready: watch::Receiver<u64>,
    mut records: tokio::sync::mpsc::Receiver<ClusterOut>,
    mut stop: watch::Receiver<bool>,
) {
    let script = redis::Script::new(HEARTBEAT);
    let claim = redis::Script::new(CLAIM);
    let boot = crate::clock::Clock::unix_secs().to_string();
    let mut redis = Redis::new(&cfg);
    let mut tick = tokio::time::interval(cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The other live nodes at the last good read: one that drops out is
    // checked, and if dead, taken over.
    let mut known: BTreeMap<String, NodeInfo> = BTreeMap::new();
    loop {
        let wake = tokio::select! {
            _ = tick.tick() => Wake::Heartbeat,
            Ok(()) = ready.changed() => Wake::PresenceChanged,
            Some(r) = records.recv() => Wake::Records(Box::new(r)),
            _ = stop.wait_for(|s| *s) => break,
        };
        match wake {
            Wake::Heartbeat => {}
            Wake::PresenceChanged => {
                // Changes in a burst make one write.
                tokio::time::sleep(MIN_WRITE_GAP).await;
                ready.mark_unchanged();
                tick.reset();
            }
            Wake::Records(first) => {
                write_records(&cfg, &mut redis, &control, *first, &mut records).await;
                continue;
            }
        }
        let Ok(status) = control.ask(|reply| ControlIn::Status { reply }).await else {
            break;
        };
        let state = if status.draining {
            "draining"
        } else {
            "serving"
        };
        let mut inv = script.key("sbc:nodes");
        inv.key(format!("sbc:node:{}", cfg.node))
            .arg(&cfg.node)
            .arg(cfg.sip.to_string())
            .arg(cfg.http.to_string())
            .arg(state)
            .arg(status.calls)
            .arg(status.operators)
            .arg(env!("CARGO_PKG_VERSION"))
            .arg(&boot)
            .arg(cfg.lease.as_millis() as u64)
            .arg(MAX_NODES)
            .arg(status.ready_numbers.join(","))
            .arg(status.ready_operators.join(","));
        let answer = redis
            .exchange(|mut c| async move { inv.invoke_async::<Value>(&mut c).await })
            .await;
        let mut vanished = Vec::new();
        {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            match answer {
                Ok(value) => {
                    if !v.redis_up {
                        tracing::info!(node = %cfg.node, "cluster: Redis answers; this node's record is written");
                    }
                    let (nodes, bad) = parse_nodes(&value);
                    if bad > 0 {
                        metrics::counter!("sbc_cluster_bad_records_total").increment(bad);
                        tracing::warn!(bad, "cluster: malformed node records skipped");
                    }
                    let now: BTreeMap<String, NodeInfo> = nodes
                        .iter()
                        .filter(|n| n.node != cfg.node)
                        .map(|n| (n.node.clone(), n.clone()))
                        .collect();
                    vanished = std::mem::replace(&mut known, now)
                        .into_values()
                        .filter(|n| !known.contains_key(&n.node))
                        .collect();
                    let (peers, outside) = Peers::from_records(&cfg.node, &nodes, &cfg.allow);
                    if outside > 0 {
                        metrics::counter!("sbc_cluster_bad_records_total")
                            .increment(outside as u64);
                        tracing::warn!(outside, "cluster: nodes outside cluster.allow ignored");
                    }
                    let _ = control.try_send(ControlIn::Peers(peers));
                    v.nodes = nodes;
                    v.redis_up = true;
                }
                Err(e) => {
                    if v.redis_up || v.redis_errors == 0 {
                        tracing::warn!(error = %e, "cluster: Redis unreachable; going on from memory");
                    }
                    v.redis_up = false;
                    v.redis_errors += 1;
                    metrics::counter!("sbc_cluster_redis_errors_total").increment(1);
                }
            }
            metrics::gauge!("sbc_cluster_redis_up").set(if v.redis_up { 1.0 } else { 0.0 });
            metrics::gauge!("sbc_cluster_nodes_alive").set(v.nodes.len() as f64);
            metrics::gauge!("sbc_cluster_nodes_draining")
                .set(v.nodes.iter().filter(|n| n.draining).count() as f64);
        }
        for gone in &vanished {
            take_over(&cfg, &mut redis, &claim, &control, gone).await;
        }
    }
    // Leaving on purpose: others see it at once rather than at the lease's end.
    let leave = redis::pipe()
        .zrem("sbc:nodes", &cfg.node)
        .del(format!("sbc:node:{}", cfg.node))
        .del(format!("sbc:ringing:{}", cfg.node))
        .to_owned();
    let _ = redis
        .exchange(|mut c| async move { leave.exec_async(&mut c).await })
        .await;
}

/// How long ringing records and anchors are kept if nobody deletes them (a
/// node that lost Redis mid-call never does).
const RECORD_TTL_MS: u64 = 3_600_000;

/// Writes `first` and whatever else is queued (up to 256) in one pipeline.
/// Redis slow or gone: they are dropped and counted; a survivor then cannot
/// retry those calls, which is all they were for.
async fn write_records(
    cfg: &ClusterConfig,
    redis: &mut Redis,
    control: &Handle<ControlIn>,
    first: ClusterOut,
    rest: &mut tokio::sync::mpsc::Receiver<ClusterOut>,
) {
    let key = format!("sbc:ringing:{}", cfg.node);
    let mut reanchor = Vec::new();
    let mut pipe = redis::pipe();
    let mut n = 0u64;
    let mut next = Some(first);
    while let Some(r) = next.take() {
        match r {
            ClusterOut::Ringing { id, to, response } => {
                let mut value = format!("{}\n", to.label()).into_bytes();
                value.extend_from_slice(&response);
                pipe.hset(&key, id, value).ignore();
            }
            ClusterOut::Settled { id } => {
                pipe.hdel(&key, id).ignore();
            }
            ClusterOut::Anchor {
                node,
                key: call,
                snapshot,
            } => {
                let anchors = format!("sbc:anchor:{node}");
                if let Ok(json) = serde_json::to_string(&snapshot) {
                    pipe.hset(&anchors, call, json).ignore();
                    pipe.pexpire(&anchors, RECORD_TTL_MS as i64).ignore();
                }
            }
            ClusterOut::Unanchor { node, key: call } => {
                pipe.hdel(format!("sbc:anchor:{node}"), call).ignore();
            }
            ClusterOut::Reanchor {
                call,
                key: dialog,
                owner,
            } => {
                reanchor.push((call, owner, dialog));
            }
            _ => {}
        }
        n += 1;
        if n < 256 {
            next = rest.try_recv().ok();
        }
    }
    pipe.pexpire(&key, RECORD_TTL_MS as i64).ignore();
    let written = redis
        .exchange(|mut c| async move { pipe.exec_async(&mut c).await })
        .await;
    if written.is_err() {
        metrics::counter!("sbc_cluster_records_dropped_total").increment(n);
    }
    for (call, owner, dialog) in reanchor {
        let snapshot = anchor_of(cfg, redis, &dialog).await;
        tracing::warn!(%owner, found = snapshot.is_some(), "cluster: a call's owner died; carrying it on here");
        let _ = control.try_send(ControlIn::Reanchor { call, snapshot });
    }
}

/// The anchor a dead owner left here for its dialog `dialog` with us, taken
/// (read and deleted) so it is used once; `None` when there is none, Redis
/// does not answer in time, or the record is not a sane dialog.
async fn anchor_of(cfg: &ClusterConfig, redis: &mut Redis, dialog: &str) -> Option<DialogSnapshot> {
    let anchors = format!("sbc:anchor:{}", cfg.node);
    let mut pipe = redis::pipe();
    pipe.hget(&anchors, dialog).hdel(&anchors, dialog).ignore();
    let (bytes,): (Option<Vec<u8>>,) = redis
        .exchange(|mut c| async move { pipe.query_async(&mut c).await })
        .await
        .ok()?;
    let bytes = bytes?;
    if bytes.len() > 16 * 1024 {
        return None;
    }
    serde_json::from_slice::<DialogSnapshot>(&bytes)
        .ok()
        .filter(DialogSnapshot::is_sane)
}

/// Node `gone` dropped out of the live set. If it answers on its SIP
/// address it is alive (cut off from Redis, or frozen: a stopped process's
/// socket still accepts) and nothing is done. Otherwise it is dead: every
/// survivor ends the forks of its calls, and the first to claim it sends
/// the proxy the 503 it left for each of its ringing calls, so the proxy
/// tries them on another node.
async fn take_over(
    cfg: &ClusterConfig,
    redis: &mut Redis,
    claim: &redis::Script,
    control: &Handle<ControlIn>,
    gone: &NodeInfo,
) {
    let probe = tokio::time::timeout(cfg.timeout, tokio::net::TcpStream::connect(gone.sip)).await;
    if matches!(probe, Ok(Ok(_))) {
        tracing::warn!(node = %gone.node, "cluster: a node's lease lapsed but it answers; not taken over");
        return;
    }
    metrics::counter!("sbc_cluster_nodes_lost_total").increment(1);
    let _ = control.try_send(ControlIn::NodeLost(gone.node.clone()));
    let mut inv = claim.key(format!("sbc:claim:{}:{}", gone.node, gone.boot));
    inv.key(format!("sbc:ringing:{}", gone.node))
        .arg(&cfg.node)
        .arg(60_000);
    let answer = redis
        .exchange(|mut c| async move { inv.invoke_async::<Value>(&mut c).await })
        .await;
    // Nothing: another survivor claimed it, or Redis did not answer.
    let Ok(Value::Array(calls)) = answer else {
        return;
    };
    let mut retried = 0u64;
    for pair in calls.chunks(2) {
        let [_, Value::BulkString(v)] = pair else {
            continue;
        };
        if let Some((to, bytes)) = ringing_record(v) {
            let _ = control.try_send(ControlIn::Transmit { to, bytes });
            retried += 1;
        }
    }
    metrics::counter!("sbc_cluster_ringing_retried_total").increment(retried);
    tracing::warn!(node = %gone.node, retried, "cluster: node dead; its ringing calls handed back to the proxy");
}

/// A ringing record's value: `udp|tcp|tls ADDR\n` and the response.
fn ringing_record(v: &[u8]) -> Option<(Peer, bytes::Bytes)> {
    let nl = v.iter().position(|&b| b == b'\n')?;
    let to = Peer::from_label(std::str::from_utf8(&v[..nl]).ok()?).filter(|p| {
        matches!(
            p.transport,
            Transport::Udp | Transport::Tcp | Transport::Tls
        )
    })?;
    let body = &v[nl + 1..];
    if !body.starts_with(b"SIP/2.0 ") || body.len() > 8192 {
        return None;
    }
    Some((to, bytes::Bytes::copy_from_slice(body)))
}

/// A connection that is made again, under the deadline, after a failure.
struct Redis {
    client: Option<redis::Client>,
    conn: Option<redis::aio::MultiplexedConnection>,
    timeout: Duration,
}

impl Redis {
    fn new(cfg: &ClusterConfig) -> Redis {
        let client = match redis::Client::open(cfg.redis_url.as_str()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, url = %cfg.redis_url, "cluster: bad redis_url");
                None
            }
        };
        Redis {
            client,
            conn: None,
            timeout: cfg.timeout,
        }
    }

    async fn connection(&mut self) -> Option<&mut redis::aio::MultiplexedConnection> {
        if self.conn.is_none() {
            let client = self.client.as_ref()?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout));
            let connect = client.get_multiplexed_async_connection_with_config(&config);
            if let Ok(Ok(c)) = tokio::time::timeout(self.timeout, connect).await {
                self.conn = Some(c);
            }
        }
        self.conn.as_mut()
    }

    /// Drops the connection: the next heartbeat connects again.
    fn failed(&mut self) {
        self.conn = None;
    }

    /// One exchange, `send` on the connection (made first if need be), under
    /// the deadline; a failure of either drops the connection.
    async fn exchange<T, F>(
        &mut self,
        send: impl FnOnce(redis::aio::MultiplexedConnection) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some(conn) = self.connection().await.cloned() else {
            return Err("not connected".into());
        };
        let answer = match tokio::time::timeout(self.timeout, send(conn)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        self.failed();
        Err(answer)
    }
}

/// The records of the script's answer, and how many were malformed.
fn parse_nodes(value: &Value) -> (Vec<NodeInfo>, u64) {
    let Value::Array(items) = value else {
        return (Vec::new(), 1);
    };
    let mut nodes = Vec::new();
    let mut bad = 0;
    for pair in items.chunks(2) {
        let [id, fields] = pair else {
            bad += 1;
            continue;
        };
        match node_info(id, fields) {
            Some(n) => nodes.push(n),
            None => bad += 1,
        }
    }
    (nodes, bad)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// One node's record; `None` if anything in it is missing or malformed (a node
/// whose record expired between the two reads has an empty one).
fn node_info(id: &Value, fields: &Value) -> Option<NodeInfo> {
    let node = text(id)?;
    let fields: Vec<(String, String)> = match fields {
        Value::Array(kv) => kv
            .chunks(2)
            .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
            .collect(),
        Value::Map(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => return None,
    };
    NodeInfo::from_fields(&node, fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_bridge::cluster::MAX_READY;

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    fn record(state: &str, calls: &str) -> Value {
        Value::Array(
            [
                ("sip", "127.0.0.11:5060"),
                ("http", "127.0.0.11:8080"),
                ("state", state),
                ("calls", calls),
                ("operators", "4"),
                ("version", "0.1.0"),
                ("boot", "1"),
                ("ready", "support,sales"),
                ("ops", "alice,bob@example.com"),
            ]
            .iter()
            .flat_map(|(k, v)| [s(k), s(v)])
            .collect(),
        )
    }

    #[test]
    fn records_are_read_and_malformed_ones_skipped_and_counted() {
        let answer = Value::Array(vec![
            s("a"),
            record("serving", "3"),
            s("b"),
            record("draining", "0"),
            // Expired between the two reads: an empty record.
            s("c"),
            Value::Array(vec![]),
            // Hostile or broken: a negative count, an unknown state.
            s("d"),
            record("serving", "-1"),
            s("e"),
            record("on fire", "1"),
            // Odd trailing member.
            s("f"),
        ]);
        let (nodes, bad) = parse_nodes(&answer);
        assert_eq!(bad, 4);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].node, "a");
        assert_eq!(nodes[0].calls, 3);
        assert!(!nodes[0].draining);
        assert!(nodes[1].draining);
        assert_eq!(nodes[1].sip, "127.0.0.11:5060".parse().unwrap());
        assert_eq!(nodes[0].ready, ["support", "sales"]);
        assert_eq!(nodes[0].ops, ["alice", "bob@example.com"]);
        assert_eq!(parse_nodes(&Value::Nil), (Vec::new(), 1));
    }

    #[test]
    fn ringing_records_are_read_back_or_refused() {
        let (to, bytes) =
            ringing_record(b"TCP 127.0.0.1:5060\nSIP/2.0 503 Service Unavailable\r\n\r\n").unwrap();
        assert_eq!(
            (to.transport, to.addr),
            (Transport::Tcp, "127.0.0.1:5060".parse().unwrap())
        );
        assert!(bytes.starts_with(b"SIP/2.0 503"));
        for hostile in [
            &b""[..],
            b"TCP 127.0.0.1:5060",
            b"SCTP 127.0.0.1:5060\nSIP/2.0 503 x\r\n\r\n",
            b"TCP nowhere\nSIP/2.0 503 x\r\n\r\n",
            // Only responses: never a request sent in a dead node's name.
            b"UDP 127.0.0.1:5060\nINVITE sip:x@y SIP/2.0\r\n\r\n",
            b"\xff\xfe 1\nSIP/2.0 503",
        ] {
            assert!(ringing_record(hostile).is_none(), "{hostile:?}");
        }
        let big = [&b"UDP 127.0.0.1:5060\nSIP/2.0 503 x\r\n"[..], &[b'a'; 9000]].concat();
        assert!(ringing_record(&big).is_none());
    }

    #[test]
    fn ready_lists_are_bounded_and_checked() {
        let with = |ready: &str| {
            let Value::Array(mut kv) = record("serving", "1") else {
                unreachable!()
            };
            let i = kv.iter().position(|v| *v == s("ready")).unwrap();
            kv[i + 1] = s(ready);
            Value::Array(vec![s("a"), Value::Array(kv)])
        };
        assert_eq!(parse_nodes(&with("")).0[0].ready, Vec::<String>::new());
        let many = vec!["n"; MAX_READY].join(",");
        assert_eq!(parse_nodes(&with(&many)).0[0].ready.len(), MAX_READY);
        let too_many = vec!["n"; MAX_READY + 1].join(",");
        for hostile in [
            too_many.as_str(),
            "support,,sales",
            "sup port",
            "a\r\nINVITE",
            &"x".repeat(129),
            "\u{202e}evil",
        ] {
            assert_eq!(parse_nodes(&with(hostile)), (Vec::new(), 1), "{hostile:?}");
        }
        // An older node's record has no lists: nobody to ring there.
        let old = Value::Array(vec![
            s("a"),
            Value::Array(
                [
                    ("sip", "127.0.0.11:5060"),
                    ("http", "127.0.0.11:8080"),
                    ("state", "serving"),
                    ("calls", "0"),
                    ("operators", "0"),
                    ("version", "0.1.0"),
                ]
                .iter()
                .flat_map(|(k, v)| [s(k), s(v)])
                .collect(),
            ),
        ]);
        let (nodes, bad) = parse_nodes(&old);
        assert_eq!((nodes.len(), bad), (1, 0));
        assert!(nodes[0].ready.is_empty() && nodes[0].ops.is_empty());
    }
}
