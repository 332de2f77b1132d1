//! The front doors and shared store of a cluster, as Debian ships them, for
//! system tests and `tests/cluster/run.sh`: Kamailio running
//! `sbc/deploy/kamailio/kamailio.cfg`, haproxy running
//! `sbc/deploy/haproxy/haproxy.cfg` (its `bind` and `server` lines moved to
//! test addresses), and a throwaway `redis-server`. Each runs in its own
//! process group, stopped whole when dropped.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sbc_process::{TempDir, tail_file, wait_until};

/// A file of `sbc/deploy/`.
pub fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sbc/deploy")
        .join(file)
}

#[derive(Debug)]
pub struct Kamailio {
    child: Child,
    dir: TempDir,
    ctl: String,
}

impl Kamailio {
    /// Kamailio at `addr` (UDP and TCP) dispatching to `nodes` with the
    /// shipped algorithm (hash of the called number).
    pub fn start(addr: SocketAddr, nodes: &[SocketAddr]) -> Kamailio {
        Kamailio::start_with(addr, nodes, None)
    }

    /// [`Kamailio::start`] with dispatcher algorithm `alg` (`"8"`: by
    /// priority, the first node first).
    pub fn start_with(addr: SocketAddr, nodes: &[SocketAddr], alg: Option<&str>) -> Kamailio {
        let dir = TempDir::new("kamailio");
        let list = dir.join("dispatcher.list");
        let lines: String = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("1 sip:{n};transport=tcp 0 {}\n", 100 - i))
            .collect();
        std::fs::write(&list, lines).unwrap();
        let ctl = format!("unix:{}", dir.join("ctl.sock").display());
        let log = std::fs::File::create(dir.join("kamailio.log")).unwrap();
        let child = Command::new("kamailio")
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
            .arg(deploy("kamailio/kamailio.cfg"))
            .arg("-Y")
            .arg(dir.path())
            .arg("-A")
            .arg(format!("LISTEN_UDP=udp:{addr}"))
            .arg("-A")
            .arg(format!("LISTEN_TCP=tcp:{addr}"))
            .arg("-A")
            .arg(format!("DISPATCHER_LIST=\"{}\"", list.display()))
            .arg("-A")
            .arg(format!("CTL_SOCKET=\"{ctl}\""))
            .arg("-A")
            .arg(format!("CARRIER=\"sip:{addr}\""))
            .arg("-A")
            .arg(format!("TCP_SOURCE={}", addr.ip()))
            .args(
                alg.map(|a| format!("DS_ALG=\"{a}\""))
                    .map_or_else(Vec::new, |d| vec!["-A".to_string(), d]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: Kamailio forks workers, and they all go.
            .process_group(0)
            .spawn()
            .expect("kamailio (Debian package kamailio) runs");
        Kamailio { child, dir, ctl }
    }

    /// The dispatcher's view: (node URI, flags) per node (`AP` = active, probing).
    pub fn states(&self) -> Vec<(String, String)> {
        let out = Command::new("kamcmd")
            .args(["-s", &self.ctl, "dispatcher.list"])
            .output();
        let Ok(out) = out else { return Vec::new() };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut states = Vec::new();
        let mut uri = None;
        for line in text.lines().map(str::trim) {
            if let Some(u) = line.strip_prefix("URI: ") {
                uri = Some(u.to_string());
            } else if let (Some(f), Some(u)) = (line.strip_prefix("FLAGS: "), uri.take()) {
                states.push((u, f.to_string()));
            }
        }
        states
    }

    /// Kamailio's log, its last lines.
    pub fn log(&self) -> String {
        tail_file(&self.dir.join("kamailio.log"), 40)
    }

    /// Waits until the dispatcher sees `node` active.
    pub fn wait_active(&self, node: SocketAddr) {
        let want = format!("sip:{node};transport=tcp");
        let ok = wait_until(Duration::from_secs(15), || {
            self.states()
                .iter()
                .any(|(u, f)| *u == want && f.starts_with('A'))
        });
        assert!(
            ok,
            "the dispatcher never saw {node} active: {:?}\n{}",
            self.states(),
            tail_file(&self.dir.join("kamailio.log"), 40)
        );
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// Stops `child`'s whole process group (Kamailio forks workers): TERM, up to
/// 3 s for it to go, then KILL for whatever is left.
pub fn stop_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
    let gone = wait_until(Duration::from_secs(3), || {
        child.try_wait().ok().flatten().is_some()
    });
    // (Quiet: usually nothing is left to kill.)
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    if !gone {
        let _ = child.wait();
    }
}

/// haproxy running the shipped config, its listener and servers moved to the
/// test's addresses; its whole process group is stopped when dropped.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    dir: TempDir,
}

impl Haproxy {
    pub fn start(listen: SocketAddr, nodes: &[SocketAddr]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let shipped = std::fs::read_to_string(deploy("haproxy/haproxy.cfg")).unwrap();
        let mut cfg = String::new();
        let mut servers_written = false;
        for line in shipped.lines() {
            let t = line.trim_start();
            if t.starts_with("bind ") {
                cfg.push_str(&format!("    bind {listen}\n"));
            } else if t.starts_with("server ") {
                if !servers_written {
                    for (i, n) in nodes.iter().enumerate() {
                        cfg.push_str(&format!("    server sbc{} {n} check\n", i + 1));
                    }
                    servers_written = true;
                }
            } else {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
        assert!(
            servers_written,
            "no server lines in the shipped haproxy.cfg"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("haproxy (Debian package haproxy) runs");
        Haproxy { child, dir }
    }

    pub fn log(&self) -> String {
        tail_file(&self.dir.join("haproxy.log"), 30)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// A throwaway `redis-server` on a free port of 127.0.0.1 (no persistence).
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        Redis::start_on(port, &["127.0.0.1"])
    }

    /// [`Redis::start`] listening on each of `ips` (a node given another of
    /// them can be cut off alone, by its destination address).
    pub fn start_on(port: u16, ips: &[&str]) -> Redis {
        let dir = TempDir::new("redis");
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .arg("--bind")
            .args(ips)
            .args(["--port", &port.to_string()])
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

    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
