//! Running the real `sbc` binary and SIPp for system tests (`tests/tests/sbc_sipp.rs`).
//!
//! * [`Sbc`]: writes a config with free loopback ports into a temporary
//!   directory, starts `target/debug/sbc --config FILE --drain N`, waits until
//!   `/healthz` answers, reads `/metrics`, sends SIGTERM, waits for the exit with
//!   a timeout, and kills the process when dropped. Its stdout and stderr go to
//!   files that are printed when the test panics.
//! * [`SippCmd`] / [`Sipp`]: SIPp with one of our scenarios (`tests/sipp/`), its
//!   message, error and call-debug logs in a temporary directory, and the tail of
//!   its screen and logs printed when a run fails.
//!
//! Time: nothing here reads the clock (the workspace bans it outside
//! `sbc::clock`); waits count fixed sleeps, so a timeout is approximate, which is
//! all an interop test needs.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(50);

/// One system test at a time within a test binary (its tests hold this), so
/// that a loaded 2-core machine carries one call flow at once.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Test `n`'s own SBC RTP range: 50 port pairs from 12000 + 100 * n. Taken:
/// `sbc_sipp.rs` 0-29, `real_ua.rs` 30-32, 63, 66-68, 90-91, `rest_api.rs`
/// 40-41, `recording.rs` 50-53, 58, `fork.rs` 54-55, `siprec.rs` 56-57,
/// `registrar.rs` 60-62, 69, `sipvicious.rs` 64-65, `front_door.rs` 70-71,
/// 74-75, 89, `cluster.rs` 72-73, 76-88.
pub fn rtp(n: u16) -> (u16, u16) {
    let lo = 12_000 + n * 100;
    (lo, lo + 99)
}

/// The loopback address `127.0.0.n`.
pub fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Sleeps in steps of `POLL` (50 ms) until `ready()` or `timeout` (approximately)
/// has passed; returns whether it became ready.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let mut waited = Duration::ZERO;
    loop {
        if ready() {
            return true;
        }
        if waited >= timeout {
            return false;
        }
        std::thread::sleep(POLL);
        waited += POLL;
    }
}

// ----- temporary directories -----

/// A directory under the system temp dir, removed on drop unless the thread is
/// panicking (then it is kept for inspection and its path printed).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new, empty directory whose name contains `tag`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = std::env::temp_dir().join(format!("sbc-tests-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file in it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for inspection)", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ----- ports -----

/// Ports handed out by this process, never handed out twice (the kernel may
/// offer a just-closed ephemeral port again before its user binds it).
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn claim(port: u16) -> bool {
    TAKEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port)
}

/// Keeps the ports of `range` from being handed out: an sbc's RTP range (sbc
/// refuses a config whose RTP range holds one of its own ports). Tests may share
/// a range on different addresses, so a port already kept is no error.
fn reserve(range: (u16, u16)) {
    TAKEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(range.0..=range.1);
}

/// A port free on `ip` for both UDP and TCP (SIP listens on both; SIPp binds
/// the one its transport needs), not handed out before by this process.
pub fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..1000 {
        let Ok(u) = UdpSocket::bind((ip, 0)) else {
            continue;
        };
        let Ok(port) = u.local_addr().map(|a| a.port()) else {
            continue;
        };
        if TcpListener::bind((ip, port)).is_ok() && claim(port) {
            return port;
        }
    }
    panic!("no free UDP+TCP port on {ip}");
}

/// A TCP port free on `ip` (HTTP).
pub fn free_tcp_port(ip: IpAddr) -> u16 {
    for _ in 0..1000 {
        if let Ok(port) = TcpListener::bind((ip, 0)).and_then(|l| l.local_addr().map(|a| a.port()))
            && claim(port)
        {
            return port;
        }
    }
    panic!("no free TCP port on {ip}");
}

/// A UDP port free on `ip` (the WebRTC port).
pub fn free_udp_port(ip: IpAddr) -> u16 {
    for _ in 0..1000 {
        if let Ok(port) = UdpSocket::bind((ip, 0)).and_then(|s| s.local_addr().map(|a| a.port()))
            && claim(port)
        {
            return port;
        }
    }
    panic!("no free UDP port on {ip}");
}

/// Whether some socket of this machine is bound to UDP `addr` (IPv4), from
/// /proc/net/udp: looks without binding, so it cannot steal the port from the
/// process starting up.
pub fn udp_bound(addr: SocketAddr) -> bool {
    // "  sl  local_address rem_address ...": the local address is the address
    // as native-endian u32 words in hex (one for IPv4, four for IPv6), then the
    // port in hex.
    let words = |o: &[u8]| -> String {
        o.chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    };
    let (file, want_ip, any_ip) = match addr.ip() {
        IpAddr::V4(ip) => ("/proc/net/udp", words(&ip.octets()), "0".repeat(8)),
        IpAddr::V6(ip) => ("/proc/net/udp6", words(&ip.octets()), "0".repeat(32)),
    };
    let Ok(table) = std::fs::read_to_string(file) else {
        return false;
    };
    let want_port = format!("{:04X}", addr.port());
    table.lines().skip(1).any(|l| {
        l.split_whitespace().nth(1).is_some_and(|local| {
            local
                .split_once(':')
                .is_some_and(|(a, p)| (a == want_ip || a == any_ip) && p == want_port)
        })
    })
}

// ----- files -----

/// The last `n` lines of a text file (or a note that it is missing).
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), n),
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        let _ = writeln!(out, "[... {start} lines before ...]");
    }
    for l in &lines[start..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ----- the sbc process -----

/// The sbc binary under test: next to the test executable's directory
/// (`target/debug/sbc` for `target/debug/deps/sbc_sipp-*`), else the workspace's
/// `target/debug/sbc`; `SBC_BIN` overrides both.
pub fn sbc_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SBC_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SBC_BIN={} does not exist", p.display());
        return p;
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join("sbc"));
    }
    candidates.push(crate::repo_root().join("target/debug/sbc"));
    for c in &candidates {
        if c.is_file() {
            warn_if_stale(c);
            return c.clone();
        }
    }
    panic!(
        "the sbc binary is missing (looked at {}); build it: cargo build -p sbc (tests/ci.sh does)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Warns (once) when a source file of the binary's crates is newer than the
/// binary: `cargo test -p integration-tests` does not rebuild it.
fn warn_if_stale(bin: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
            return;
        };
        let root = crate::repo_root();
        let mut newer = Vec::new();
        let mut dirs: Vec<PathBuf> = ["sbc/src", "sip-bridge/src", "media-core/src"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > built)
                {
                    newer.push(p);
                }
            }
        }
        if let Some(first) = newer.first() {
            eprintln!(
                "warning: {} is older than {} (and {} more sources): rebuild it with cargo build -p sbc",
                bin.display(),
                first.display(),
                newer.len() - 1
            );
        }
    });
}

/// What an [`Sbc`] is started with. The listeners (SIP UDP+TCP, HTTP, WebRTC)
/// get free ports on `ip`; the rest of the config is `toml`.
#[derive(Clone, Debug)]
pub struct SbcSpec {
    /// Names the temporary directory.
    pub name: String,
    /// SIP, HTTP, WebRTC and RTP address (default 127.0.0.1).
    pub ip: IpAddr,
    /// `media.rtp_ports`: give each test its own range.
    pub rtp_ports: (u16, u16),
    /// More TOML: `[limits]`, `[protection]`, `[[trunks]]`, `[[numbers]]`, ...
    /// (not `[sip]`, `[media]`, `[http]`, `[auth]`, which are written here).
    pub toml: String,
    /// `--drain SECONDS`.
    pub drain_secs: u64,
    /// `RUST_LOG` for the process (default "info").
    pub log: String,
    /// More lines of `[media]` (`media_timeout = "120s"`).
    pub media: String,
    /// Both address families: SIP and RTP on `[::]`, advertised as `ip`
    /// (IPv4) to IPv4 peers and `::1` to IPv6 ones; [`Sbc::sip`] is then
    /// `ip` and the port, also reachable at `[::1]` and that port.
    pub dual_stack: bool,
    /// An `[admin]` listener (`/metrics`, `/healthz`, `/readyz`) on a free
    /// port of `ip`, the node named after the spec; [`Sbc::metrics`] reads it.
    pub admin: bool,
    /// The SIP port (UDP and TCP), for a node restarted where a proxy's
    /// list expects it; default a free one.
    pub sip_port: Option<u16>,
}

impl SbcSpec {
    /// A spec with defaults around `toml`.
    pub fn new(name: &str, rtp_ports: (u16, u16), toml: impl Into<String>) -> SbcSpec {
        SbcSpec {
            name: name.to_string(),
            ip: lo(1),
            rtp_ports,
            toml: toml.into(),
            drain_secs: 5,
            log: "info".into(),
            media: String::new(),
            dual_stack: false,
            admin: false,
            sip_port: None,
        }
    }
}

/// A running `sbc`. See the module docs.
#[derive(Debug)]
pub struct Sbc {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// SIP over UDP (and TCP, same port).
    pub sip: SocketAddr,
    /// HTTP (`/healthz`, `/metrics`).
    pub http: SocketAddr,
    /// The admin listener, if the spec asked for one.
    pub admin: Option<SocketAddr>,
    /// Where the config and the logs are.
    pub dir: TempDir,
    exit: Option<ExitStatus>,
}

/// A token secret for tests (>= 32 bytes).
pub const TEST_TOKEN_SECRET: &str = "sbc-system-tests-token-secret-0123456789abcdef";

impl Sbc {
    /// Starts the sbc binary with `spec` and waits until `/healthz` answers.
    /// A start that loses a port race (the picked port got taken before sbc bound
    /// it) is retried with new ports.
    pub fn start(spec: &SbcSpec) -> Sbc {
        let bin = sbc_binary();
        let mut last_failure = String::new();
        reserve(spec.rtp_ports);
        for attempt in 0..3 {
            let dir = TempDir::new(&format!("sbc-{}-{attempt}", spec.name));
            let any6 = IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED);
            let (sip, bind, rtp_bind, families) = if spec.dual_stack {
                let port = free_port(any6);
                (
                    SocketAddr::new(spec.ip, port),
                    SocketAddr::new(any6, port),
                    any6,
                    format!("advertise = \"{}\"\nadvertise6 = \"::1\"\n", spec.ip),
                )
            } else {
                let sip =
                    SocketAddr::new(spec.ip, spec.sip_port.unwrap_or_else(|| free_port(spec.ip)));
                (sip, sip, spec.ip, String::new())
            };
            let http = SocketAddr::new(spec.ip, free_tcp_port(spec.ip));
            let webrtc = SocketAddr::new(spec.ip, free_udp_port(spec.ip));
            let admin = spec
                .admin
                .then(|| SocketAddr::new(spec.ip, free_tcp_port(spec.ip)));
            let admin_toml = admin.map_or(String::new(), |a| {
                format!("[admin]\nlisten = \"{a}\"\nnode = \"{}\"\n\n", spec.name)
            });
            let config = format!(
                "# written by tests/src/sbc_process.rs for {name}\n\
                 [sip]\nudp = \"{bind}\"\ntcp = \"{bind}\"\nuser_agent = \"sbc-under-test\"\n{families}\n\
                 [media]\nrtp_bind = \"{rtp_bind}\"\nrtp_ports = \"{lo}-{hi}\"\nwebrtc = \"{webrtc}\"\n{media}\n\
                 [http]\nlisten = \"{http}\"\n\n\
                 [auth]\ntoken_secret = \"{TEST_TOKEN_SECRET}\"\n\n{admin_toml}{toml}\n",
                name = spec.name,
                lo = spec.rtp_ports.0,
                hi = spec.rtp_ports.1,
                media = spec.media,
                toml = spec.toml,
            );
            let config_path = dir.join("sbc.toml");
            std::fs::write(&config_path, &config).expect("write the sbc config");
            let stdout = File::create(dir.join("stdout.log")).expect("create stdout.log");
            let stderr = File::create(dir.join("stderr.log")).expect("create stderr.log");
            let child = Command::new(&bin)
                .arg("--config")
                .arg(&config_path)
                .arg("--drain")
                .arg(spec.drain_secs.to_string())
                .env("RUST_LOG", &spec.log)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            let pid = child.id();
            let mut sbc = Sbc {
                child,
                pid,
                sip,
                http,
                admin,
                dir,
                exit: None,
            };
            let up = wait_until(Duration::from_secs(20), || {
                sbc.exited().is_some() || sbc.http_get("/healthz").is_ok_and(|b| b.trim() == "ok")
            });
            if up && sbc.exited().is_none() {
                return sbc;
            }
            let stderr = read_lossy(&sbc.dir.join("stderr.log"));
            last_failure = format!(
                "sbc (attempt {attempt}) did not come up (exit: {:?})\nconfig:\n{config}\nstderr:\n{}",
                sbc.exit,
                tail(&stderr, 40)
            );
            let port_race = stderr.contains("bind") || stderr.contains("in use");
            kill_child(&mut sbc.child);
            sbc.exit = sbc.child.try_wait().ok().flatten();
            if !port_race {
                break;
            }
        }
        panic!("{last_failure}");
    }

    /// `kill -9`: it gets no chance to clean up (a crash).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
        self.exit = self.child.try_wait().ok().flatten();
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) with kill(1): a frozen node is
    /// `STOP`, one that comes back `CONT`.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status();
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// GET `path` from its HTTP listener (HTTP/1.0, so no chunking); the body of
    /// a 200.
    pub fn http_get(&self, path: &str) -> Result<String, String> {
        http_get_at(self.http, path)
    }

    /// `/metrics` as parsed samples (from the admin listener when there is one).
    pub fn metrics(&self) -> Metrics {
        Metrics::parse(
            &http_get_at(self.admin.unwrap_or(self.http), "/metrics")
                .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.logs())),
        )
    }

    /// The sum of every sample of metric `name` whose labels contain all of
    /// `labels` (`status="busy"`); 0 when there is none.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics().value(name, labels)
    }

    /// Polls `/metrics` until `ok(value of name)` holds or `timeout` passed;
    /// returns the last value.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[&str],
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let mut v = f64::NAN;
        wait_until(timeout, || {
            v = self.metric(name, labels);
            ok(v)
        });
        v
    }

    /// Waits until the SBC holds no call, SIP leg, dialog, media session or RTP
    /// port (transactions may linger for their Timer J/K) and panics with the
    /// metrics if it does not within `timeout`.
    pub fn assert_idle(&self, timeout: Duration) {
        let gauges = [
            "sbc_calls_active",
            "sbc_sip_legs",
            "sbc_sip_dialogs",
            "sbc_media_sessions",
            "sbc_rtp_ports_in_use",
        ];
        let mut last = Metrics::default();
        let idle = wait_until(timeout, || {
            last = self.metrics();
            gauges.iter().all(|g| last.value(g, &[]) == 0.0)
        });
        assert!(
            idle,
            "the SBC still holds state after {timeout:?}: {}\n{}",
            gauges
                .iter()
                .map(|g| format!("{g}={}", last.value(g, &[])))
                .collect::<Vec<_>>()
                .join(" "),
            self.logs()
        );
    }

    /// Sends SIGTERM (`kill -TERM PID`).
    pub fn terminate(&mut self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {} failed", self.pid);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = wait_child(&mut self.child, timeout);
        }
        self.exit
    }

    /// Its stdout and the tail of its stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- sbc stdout ({}) ---\n{}--- sbc stderr (tail) ---\n{}",
            self.dir.path().display(),
            tail_file(&self.dir.join("stdout.log"), 30),
            tail_file(&self.dir.join("stderr.log"), 80)
        )
    }
}

impl Drop for Sbc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        kill_child(&mut self.child);
    }
}

/// Prometheus text samples: `name{labels} value`.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// (name, labels as written between the braces, value)
    pub samples: Vec<(String, String, f64)>,
}

impl Metrics {
    /// Parses the text exposition format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match key.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (key, ""),
            };
            samples.push((name.to_string(), labels.to_string(), value));
        }
        Metrics { samples }
    }

    /// The sum of the samples of `name` whose labels contain every one of
    /// `labels`; 0 when none.
    pub fn value(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|want| l.contains(want)))
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// GET `path` from `addr` (HTTP/1.0, so no chunking): the body of a 200, or
/// the status line.
pub fn http_get_at(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

// ----- SIPp -----

/// Fails with the install hint when SIPp is missing.
pub fn sipp_bin() -> &'static str {
    let found = Command::new("sipp").arg("-v").output().is_ok();
    assert!(
        found,
        "SIPp is missing: `apt-get install -y sip-tester` (tests/ci.sh installs it)"
    );
    "sipp"
}

/// One of our scenarios, `tests/sipp/NAME`.
pub fn scenario(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(name);
    assert!(p.is_file(), "no scenario {}", p.display());
    p
}

/// A SIPp command line being put together.
#[derive(Clone, Debug)]
pub struct SippCmd {
    name: String,
    scenario: PathBuf,
    ip: IpAddr,
    port: u16,
    remote: Option<SocketAddr>,
    args: Vec<String>,
    timeout_secs: u64,
    pcaps: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl SippCmd {
    /// `scenario` (a file in tests/sipp/) on `ip`, bound there (`-i IP
    /// -bind_local`), on a free port; `name` labels its logs.
    pub fn new(name: &str, scenario_file: &str, ip: IpAddr) -> SippCmd {
        SippCmd {
            name: name.to_string(),
            scenario: scenario(scenario_file),
            ip,
            port: free_port(ip),
            remote: None,
            args: Vec::new(),
            timeout_secs: 60,
            pcaps: Vec::new(),
            files: Vec::new(),
        }
    }

    /// A file written into SIPp's working directory before it starts (the
    /// raw audio an `rtp_stream` plays).
    pub fn file(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.files.push((name.to_string(), bytes));
        self
    }

    /// `rtp_stream` audio: `secs` of a `hz` sine as raw u-law (8 kHz, about
    /// -12 dBFS) in `tone.ul`, the file the `*_tone.xml` scenarios play
    /// (SIPp takes the name when it loads them: it cannot be a `[key]`).
    pub fn tone(self, hz: f64, secs: u32) -> Self {
        let pcm = media_core::analysis::sine(8000, hz, 8000.0, 8000 * secs as usize);
        let mut ulaw = vec![0u8; pcm.len()];
        media_core::codec::g711::ulaw_encode(&pcm, &mut ulaw);
        self.file("tone.ul", ulaw)
    }

    /// A capture its scenario plays (`play_pcap_audio="NAME"`), from the shared
    /// test vectors' `rtp-pcaps/`, read in place (linked into SIPp's working
    /// directory, where it looks).
    pub fn pcap(mut self, name: &str) -> Self {
        self.pcaps.push(name.to_string());
        self
    }

    /// Its SIP port (default: a free one): a phone's second scenario takes
    /// calls where its first registered from.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Where SIPp sends (a UAC's target). Without it SIPp waits for calls.
    pub fn remote(mut self, addr: SocketAddr) -> Self {
        self.remote = Some(addr);
        self
    }

    /// `-m`: stop after this many calls.
    pub fn calls(self, n: usize) -> Self {
        self.arg("-m", n)
    }

    /// `-r`: calls per second.
    pub fn rate(self, cps: u32) -> Self {
        self.arg("-r", cps)
    }

    /// `-d`: what a `<pause/>` lasts, in ms.
    pub fn hold_ms(self, ms: u64) -> Self {
        self.arg("-d", ms)
    }

    /// `-s`: the user part of the Request-URI (the number called).
    pub fn service(self, s: &str) -> Self {
        self.arg("-s", s)
    }

    /// `-key NAME VALUE` (a scenario's `[NAME]`).
    pub fn key(mut self, name: &str, value: &str) -> Self {
        self.args
            .extend(["-key".to_string(), name.to_string(), value.to_string()]);
        self
    }

    /// Any option with a value.
    pub fn arg(mut self, opt: &str, value: impl ToString) -> Self {
        self.args.push(opt.to_string());
        self.args.push(value.to_string());
        self
    }

    /// Any option without a value.
    pub fn flag(mut self, opt: &str) -> Self {
        self.args.push(opt.to_string());
        self
    }

    /// SIPp's own global timeout (`-timeout Ns -timeout_error`), default 60 s.
    pub fn timeout_secs(mut self, s: u64) -> Self {
        self.timeout_secs = s;
        self
    }

    /// A far end on `ip` that answers PCMU and plays `hz` until the BYE
    /// (`callee_tone.xml`).
    pub fn tone_callee(name: &str, ip: IpAddr, hz: f64) -> SippCmd {
        SippCmd::new(name, "callee_tone.xml", ip)
            .tone(hz, 10)
            .calls(1)
            .timeout_secs(120)
    }

    /// A carrier caller on `ip` that calls `service` at `sbc`, plays `hz`
    /// for `talk_ms` and hangs up (`caller_tone.xml`).
    pub fn tone_caller(
        name: &str,
        ip: IpAddr,
        sbc: SocketAddr,
        service: &str,
        hz: f64,
        talk_ms: u64,
    ) -> SippCmd {
        SippCmd::new(name, "caller_tone.xml", ip)
            .remote(sbc)
            .service(service)
            .tone(hz, 10)
            .hold_ms(talk_ms)
            .calls(1)
            .timeout_secs(120)
    }

    /// Its SIP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// Starts it. A SIPp without a remote (a UAS) is waited for until its port
    /// is bound, so that the SBC can call it at once.
    pub fn spawn(self) -> Sipp {
        let bin = sipp_bin();
        let dir = TempDir::new(&format!("sipp-{}", self.name));
        let mut args: Vec<String> = vec![
            "-sf".into(),
            self.scenario.display().to_string(),
            "-i".into(),
            self.ip.to_string(),
            "-bind_local".into(),
            "-p".into(),
            self.port.to_string(),
            "-t".into(),
            "u1".into(),
            "-nostdin".into(),
            "-timeout".into(),
            format!("{}s", self.timeout_secs),
            "-timeout_error".into(),
            "-trace_msg".into(),
            "-message_file".into(),
            dir.join("messages.log").display().to_string(),
            "-trace_err".into(),
            "-error_file".into(),
            dir.join("errors.log").display().to_string(),
            "-trace_calldebug".into(),
            "-calldebug_file".into(),
            dir.join("calldebug.log").display().to_string(),
            "-trace_screen".into(),
            "-screen_file".into(),
            dir.join("screen.log").display().to_string(),
        ];
        args.extend(self.args.iter().cloned());
        if let Some(r) = self.remote {
            args.push(r.to_string());
        }
        for (name, bytes) in &self.files {
            std::fs::write(dir.join(name), bytes).expect("write a file for SIPp");
        }
        for name in &self.pcaps {
            let src = media_core::testdata::path(&format!("rtp-pcaps/{name}"));
            assert!(src.is_file(), "no capture {}", src.display());
            std::os::unix::fs::symlink(&src, dir.join(name)).expect("link the capture");
        }
        let stdout = File::create(dir.join("stdout.log")).expect("create stdout.log");
        let stderr = File::create(dir.join("stderr.log")).expect("create stderr.log");
        let child = Command::new(bin)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sipp: {e}"));
        let mut sipp = Sipp {
            name: self.name,
            addr: SocketAddr::new(self.ip, self.port),
            args,
            child,
            dir,
            exit: None,
        };
        if self.remote.is_none() {
            let addr = sipp.addr;
            let bound = wait_until(Duration::from_secs(10), || {
                udp_bound(addr) || sipp.child.try_wait().ok().flatten().is_some()
            });
            assert!(
                bound && sipp.child.try_wait().ok().flatten().is_none(),
                "SIPp {} did not bind {addr}\n{}",
                sipp.name,
                sipp.report()
            );
        }
        sipp
    }
}

/// A running SIPp. Killed when dropped.
#[derive(Debug)]
pub struct Sipp {
    /// Its label.
    pub name: String,
    /// Its SIP address.
    pub addr: SocketAddr,
    args: Vec<String>,
    child: Child,
    /// Its logs.
    pub dir: TempDir,
    exit: Option<ExitStatus>,
}

impl Sipp {
    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = wait_child(&mut self.child, timeout);
        }
        self.exit
    }

    /// Waits (up to `timeout`) and panics with its screen and logs unless it
    /// exited 0: every call succeeded.
    pub fn assert_success(&mut self, timeout: Duration) {
        let st = self.wait(timeout);
        if st.is_some_and(|s| s.success()) {
            return;
        }
        if st.is_none() {
            kill_child(&mut self.child);
        }
        panic!(
            "SIPp {} {}\n{}",
            self.name,
            match st {
                Some(s) => format!("failed ({s})"),
                None => format!("did not finish within {timeout:?} (killed)"),
            },
            self.report()
        );
    }

    /// Its command line, the end of its screen and logs.
    pub fn report(&self) -> String {
        format!(
            "command: sipp {}\n--- screen ---\n{}--- stderr ---\n{}--- errors.log ---\n{}--- calldebug.log ---\n{}--- messages.log (tail) ---\n{}",
            self.args.join(" "),
            tail_file(&self.dir.join("screen.log"), 60),
            tail_file(&self.dir.join("stderr.log"), 20),
            tail_file(&self.dir.join("errors.log"), 40),
            tail_file(&self.dir.join("calldebug.log"), 40),
            tail_file(&self.dir.join("messages.log"), 80),
        )
    }

    /// The SIP messages it traced: (sent, text).
    pub fn messages(&self) -> Vec<TracedMessage> {
        parse_trace(&read_lossy(&self.dir.join("messages.log")))
    }

    /// The messages it received.
    pub fn received(&self) -> Vec<TracedMessage> {
        self.messages().into_iter().filter(|m| !m.sent).collect()
    }

    /// The messages it sent.
    pub fn sent(&self) -> Vec<TracedMessage> {
        self.messages().into_iter().filter(|m| m.sent).collect()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- SIPp {} ---\n{}", self.name, self.report());
        }
        kill_child(&mut self.child);
    }
}

/// One SIP message from a SIPp `-trace_msg` log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracedMessage {
    /// Sent by SIPp (else received).
    pub sent: bool,
    /// The message.
    pub text: String,
}

impl TracedMessage {
    /// The first line (`INVITE sip:... SIP/2.0`, `SIP/2.0 200 OK`).
    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// Whether it is a request with this method.
    pub fn is_request(&self, method: &str) -> bool {
        self.start_line()
            .strip_prefix(method)
            .is_some_and(|r| r.starts_with(' '))
    }

    /// The status code, for a response.
    pub fn status(&self) -> Option<u16> {
        self.start_line()
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
    }

    /// The values of header `name` (case-insensitive, compact forms not
    /// expanded).
    pub fn headers(&self, name: &str) -> Vec<&str> {
        let head = self.text.split("\n\n").next().unwrap_or("");
        head.lines()
            .skip(1)
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
            })
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    /// The `branch` parameters of its Via headers.
    pub fn via_branches(&self) -> Vec<String> {
        self.headers("Via")
            .iter()
            .filter_map(|v| {
                v.split(';')
                    .find_map(|p| p.trim().strip_prefix("branch="))
                    .map(str::to_string)
            })
            .collect()
    }

    /// The body (after the blank line).
    pub fn body(&self) -> &str {
        self.text.split_once("\n\n").map_or("", |(_, b)| b)
    }
}

/// Splits a SIPp message log into messages. Entries look like
/// `----...---- DATE\nUDP message sent (N bytes):\n\nMESSAGE` (or
/// `... message received [N] bytes :`).
pub fn parse_trace(log: &str) -> Vec<TracedMessage> {
    let log = log.replace("\r\n", "\n");
    let mut out = Vec::new();
    for entry in log.split("----------------------------------------------- ") {
        let mut lines = entry.lines();
        let _date = lines.next();
        let Some(what) = lines.next() else { continue };
        let sent = what.contains("message sent");
        if !sent && !what.contains("message received") {
            continue;
        }
        let text: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        let text = text.join("\n").trim_end().to_string();
        if !text.is_empty() {
            out.push(TracedMessage { sent, text });
        }
    }
    out
}

// ----- HTTP: the REST API and its callbacks -----

/// An HTTP response read by [`http_request`].
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body (a chunked one decoded), as text.
    pub body: String,
    /// The body as it came (a recording's bytes).
    pub bytes: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The body as JSON; panics with the response when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Header names (lower-cased) and values, in order.
type Headers = Vec<(String, String)>;

/// Splits an HTTP message at its blank line: the start line, the headers
/// and what follows.
fn split_http(bytes: &[u8]) -> Option<(String, Headers, &[u8])> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let start = lines.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((start, headers, &bytes[end + 4..]))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size without its line end")?;
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {line:?}: {e}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("a chunk cut short")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// One HTTP/1.1 request to `addr` (`Connection: close`; a body is sent as
/// JSON with its `Content-Length`), read to the end.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpResponse, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        let _ = write!(req, "{n}: {v}\r\n");
    }
    if let Some(b) = body {
        let _ = write!(
            req,
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        );
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (status_line, headers, rest) = split_http(&buf)
        .ok_or_else(|| format!("no HTTP header end in {:?}", String::from_utf8_lossy(&buf)))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked =
        header_of(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = header_of(&headers, "content-length").and_then(|v| v.parse().ok()) {
        rest.get(..n)
            .ok_or("a body shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
    })
}

impl Sbc {
    /// `method path` on its HTTP listener (see [`http_request`]); panics with
    /// its logs when the request cannot be made.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        http_request(self.http, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.logs()))
    }
}

/// Asserts `pcm` (at `rate`) carries `hz` above -30 dB and at least 30 dB
/// above `not`.
pub fn assert_tone_over(pcm: &[i16], rate: u32, hz: f64, not: f64, what: &str) {
    let (a, b) = (
        media_core::analysis::goertzel_level_db(pcm, rate, hz),
        media_core::analysis::goertzel_level_db(pcm, rate, not),
    );
    assert!(
        a > -30.0 && a - b > 30.0,
        "{what}: {hz} Hz at {a:.1} dB, {not} Hz at {b:.1} dB"
    );
}

/// A request an [`HttpReceiver`] got.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    /// `POST`, ...
    pub method: String,
    /// The request target (`/status`).
    pub path: String,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl ReceivedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// A tiny HTTP server on a free port that records every request (webhooks,
/// status callbacks) and answers each `200 OK` with an empty body. Stopped
/// when dropped.
#[derive(Debug)]
pub struct HttpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: std::sync::Arc<Mutex<Vec<ReceivedRequest>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpReceiver {
    /// Listens on `ip` (a port of its own) in a thread; answers 200.
    pub fn start(ip: IpAddr) -> HttpReceiver {
        HttpReceiver::start_with(ip, |_| (200, String::new()))
    }

    /// [`HttpReceiver::start`] answering each request with `answer`'s
    /// status and JSON body (a customer's backend).
    pub fn start_with(
        ip: IpAddr,
        answer: impl Fn(&ReceivedRequest) -> (u16, String) + Send + 'static,
    ) -> HttpReceiver {
        let listener = TcpListener::bind((ip, 0)).expect("bind the HTTP receiver");
        let addr = listener.local_addr().expect("its address");
        let requests = std::sync::Arc::new(Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (reqs, stopped) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                if let Some(r) = read_request(&mut conn) {
                    let (status, body) = answer(&r);
                    reqs.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            }
        });
        HttpReceiver {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What it received so far, in order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request: headers, then a `Content-Length` body.
fn read_request(conn: &mut TcpStream) -> Option<ReceivedRequest> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((start, headers, rest)) = split_http(&buf) {
            let want: usize = header_of(&headers, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if rest.len() >= want {
                let mut parts = start.split(' ');
                return Some(ReceivedRequest {
                    method: parts.next().unwrap_or("").to_string(),
                    path: parts.next().unwrap_or("").to_string(),
                    body: String::from_utf8_lossy(&rest[..want]).into_owned(),
                    headers,
                });
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
