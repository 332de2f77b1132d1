//! System tests of the registrar of the real `sbc` binary against the real
//! attacker tools of Debian's `sipvicious` package (0.3.3): `svcrack`
//! against the registrar gets banned within the configured number of
//! failures and finds no password; `svwar` enumerates no extension.
//!
//! * As they come (User-Agent `friendly-scanner`): the SIP front door drops
//!   every request unanswered (`sbc_sip_scanner_drops_total`); the registrar never
//!   sees one, so they learn nothing, not even a password that is first in the
//!   dictionary.
//! * Disguised as a phone: the tools have no option for their User-Agent, so
//!   [`DISGUISE`] runs them with another one (and makes their `-b` work,
//!   which 0.3.3 parses but never uses). The registrar itself must defend:
//!   `svwar` (REGISTER, OPTIONS, INVITE) gets the same answer for the real
//!   users 1001 and 1002 as for a random one and finds none; `svcrack` with
//!   the right password 20th is banned after `ban_after` = 5 refusals
//!   (`sbc_registrar_bans_total`), and the front door's flood limit is raised so
//!   that it is the registrar, not the limiter, that stops it. A control run
//!   with the right password 3rd cracks it: the disguised tool works, so its
//!   failure is the ban's doing.
//!
//! Needs `target/debug/sbc` and `svwar`/`svcrack` (`apt-get install
//! sipvicious`, as tests/ci.sh does). The SBC is 127.0.0.1; the tools are
//! 127.0.0.1 as they come (they bind every address) and 127.0.0.31 to .33
//! disguised.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use integration_tests::sbc_process::{
    Sbc, SbcSpec, TempDir, free_port, lo, rtp, serial, wait_until,
};
use sip_bridge::registrar::PhoneAccount;

const WAIT: Duration = Duration::from_secs(20);
/// A tool is killed after this (they stop by themselves within 15 s).
const TOOL_DONE: Duration = Duration::from_secs(60);
const BAN_AFTER: u32 = 5;
/// 1001's password.
const PASSWORD: &str = "Tr0ub4dor-1001";
/// The phones' usernames: numeric, as `svwar -e` guesses.
const USERS: [&str; 2] = ["1001", "1002"];

/// Runs a sipvicious tool (`python3 -c DISGUISE /usr/bin/svwar ARGS`) with
/// the User-Agent of a desk phone instead of `friendly-scanner` (the
/// default of `svhelper.makeRequest`, which no option changes), and with
/// its `-b` address bound (0.3.3 parses `-b` but binds every address).
const DISGUISE: &str = r#"
import inspect, os, sys
tool, args = sys.argv[1], sys.argv[2:]
name = os.path.basename(tool)
# Where the tool's own script finds the package (Debian: /usr/share/sipvicious).
sys.path.insert(0, os.path.dirname(os.path.realpath(tool)))
from sipvicious.libs import svhelper
mod = __import__('sipvicious.' + name, fromlist=['main'])
def default(f, param, value):
    names = list(inspect.signature(f).parameters)
    d = list(f.__defaults__)
    i = names.index(param) - (len(names) - len(d))
    assert i >= 0, param
    d[i] = value
    f.__defaults__ = tuple(d)
default(svhelper.makeRequest, 'useragent', 'Yealink SIP-T46S 66.86.0.15')
for c in list(vars(mod).values()):
    if isinstance(c, type) and 'bindingip' in inspect.signature(c.__init__).parameters:
        default(c.__init__, 'bindingip', args[args.index('-b') + 1])
sys.argv = [name] + args
sys.exit(mod.main())
"#;

/// Phones 1001 and 1002 (alice's and bob's), a registrar that bans after 5
/// refusals, and `more` TOML.
fn config(more: &str) -> String {
    let mut toml = format!(
        "{more}\n[registrar]\nrealm = \"sbc\"\nban_after = {BAN_AFTER}\nban_for = \"60s\"\n"
    );
    for (user, op, pw) in [
        (USERS[0], "alice", PASSWORD),
        (USERS[1], "bob", "s3cret-1002"),
    ] {
        let a = PhoneAccount::new(user, op, "sbc", pw);
        toml += &format!(
            "\n[[phones]]\nusername = \"{user}\"\noperator = \"{op}\"\n\
             ha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n",
            a.ha1_md5, a.ha1_sha256
        );
    }
    toml
}

/// A sipvicious tool on `PATH`.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} is missing: `apt-get install -y sipvicious` (tests/ci.sh installs it)")
        })
}

/// What a tool did.
#[derive(Debug)]
struct Run {
    command: String,
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The first column of its result table (`| 1001 | reqauth |`): what it
    /// found.
    fn found(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix('|')?.split('|').next())
            .map(|c| c.trim().to_string())
            .filter(|c| c != "Extension")
            .collect()
    }

    /// `svwar -vv`: the extensions it asked about.
    fn asked(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter_map(|l| l.split_once("sending request for ").map(|(_, u)| u.trim()))
            .collect()
    }

    /// `svcrack -vv`: the passwords it sent.
    fn tried(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter_map(|l| l.split_once(":trying ").map(|(_, p)| p.trim()))
            .collect()
    }

    fn report(&self) -> String {
        format!(
            "$ {}\n(exit: {:?})\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }

    /// It finished by itself, without a crash (sipvicious catches its own
    /// exceptions, says "found nothing" and exits 0), and found nothing.
    fn assert_found_nothing(&self) {
        assert!(
            self.status.is_some_and(|s| s.success())
                && !self.stderr.contains("Traceback")
                && !self.stderr.contains("Unhandled exception"),
            "the tool failed\n{}",
            self.report()
        );
        assert!(
            self.found().is_empty() && self.stderr.contains("found nothing"),
            "it found something\n{}",
            self.report()
        );
        for secret in USERS.iter().chain([&PASSWORD]) {
            assert!(
                !self.stdout.contains(secret),
                "{secret} in its result\n{}",
                self.report()
            );
        }
    }
}

/// Runs `program args` in a directory of its own, killed after
/// [`TOOL_DONE`].
fn run(program: &str, args: &[String]) -> Run {
    let dir = TempDir::new("sipvicious");
    let out = File::create(dir.join("stdout.log")).expect("create stdout.log");
    let err = File::create(dir.join("stderr.log")).expect("create stderr.log");
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut status = None;
    wait_until(TOOL_DONE, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let r = Run {
        // The script is long: its name stands for it.
        command: std::iter::once(program)
            .chain(args.iter().map(|a| match a.as_str() {
                DISGUISE => "DISGUISE",
                a => a,
            }))
            .collect::<Vec<_>>()
            .join(" "),
        status,
        stdout: read_lossy(&dir.join("stdout.log")),
        stderr: read_lossy(&dir.join("stderr.log")),
    };
    eprintln!("{}", r.report());
    r
}

/// The tool as installed, from a port free on every address (it binds them
/// all).
fn plain(name: &str, sbc: &Sbc, args: &[&str]) -> Run {
    let port = free_port(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.extend(["-P".into(), port.to_string(), format!("udp://{}", sbc.sip)]);
    run(tool(name).to_str().expect("a UTF-8 path"), &a)
}

/// The tool disguised as a phone (see [`DISGUISE`]), from `127.0.0.n`, run
/// by the interpreter its script names.
fn disguised(name: &str, n: u8, sbc: &Sbc, args: &[&str]) -> Run {
    let path = tool(name);
    let script = std::fs::read_to_string(&path).expect("read the tool");
    let shebang: Vec<String> = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .unwrap_or_else(|| panic!("{} is not a script", path.display()))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let ip = lo(n);
    let mut a = shebang[1..].to_vec();
    a.extend(["-c".into(), DISGUISE.into(), path.display().to_string()]);
    a.extend(args.iter().map(|s| s.to_string()));
    a.extend([
        "-b".into(),
        ip.to_string(),
        "-P".into(),
        free_port(ip).to_string(),
        format!("udp://{}", sbc.sip),
    ]);
    run(&shebang[0], &a)
}

/// `words`, one a line, in a file of `dir`.
fn dictionary(dir: &TempDir, name: &str, words: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, words.join("\n") + "\n").expect("write a dictionary");
    path.display().to_string()
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Prints the front door's and the registrar's counters (for the log of a
/// run with --nocapture).
fn show_metrics(sbc: &Sbc) {
    for (name, _, v) in sbc.metrics().samples {
        if (name.starts_with("sbc_sip_") && name.contains("ban"))
            || name == "sbc_sip_scanner_drops_total"
            || name.starts_with("sbc_registrar_")
        {
            eprintln!("{name} {v}");
        }
    }
}

/// Everything the sbc logged (its `logs()` holds a tail only).
fn sbc_log(sbc: &Sbc) -> String {
    read_lossy(&sbc.dir.join("stderr.log")) + &read_lossy(&sbc.dir.join("stdout.log"))
}

#[test]
fn sipvicious_as_it_comes_is_dropped_unanswered_and_learns_nothing() {
    let _serial = serial();
    // The front door as it ships: no [protection].
    let sbc = Sbc::start(&SbcSpec::new("sipvicious-plain", rtp(64), config("")));
    let words = TempDir::new("sipvicious-words");
    // The right password first: svcrack never gets a challenge to send it in.
    let dict = dictionary(&words, "passwords.txt", &[PASSWORD, "1234"]);

    let war = plain("svwar", &sbc, &["-e1000-1010", "--maximumtime", "3"]);
    war.assert_found_nothing();
    let crack = plain(
        "svcrack",
        &sbc,
        &["-u", USERS[0], "-d", &dict, "--maximumtime", "3"],
    );
    crack.assert_found_nothing();
    assert!(
        crack.stderr.contains("no server response"),
        "{}",
        crack.report()
    );

    // One request each, dropped for its User-Agent; nothing reached the
    // registrar or the flood limiter.
    let drops = sbc.wait_metric("sbc_sip_scanner_drops_total", &[], WAIT, |v| v >= 2.0);
    show_metrics(&sbc);
    assert!(drops >= 2.0, "{drops} scanner drops\n{}", sbc.logs());
    for zero in [
        "sbc_registrar_challenges_total",
        "sbc_registrar_auth_failures_total",
        "sbc_registrar_bans_total",
        "sbc_registrar_accepted_total",
        "sbc_sip_bans_total",
        "sbc_sip_banned_drops_total",
    ] {
        assert_eq!(sbc.metric(zero, &[]), 0.0, "{zero}\n{}", sbc.logs());
    }
}

#[test]
fn sipvicious_disguised_as_a_phone_enumerates_nothing_and_svcrack_is_banned_by_the_registrar() {
    let _serial = serial();
    // Once banned, svcrack sends a REGISTER every 5 ms (its select timeout)
    // for --maximumtime: 200/s, over the default 50/s. Raised so that the
    // registrar alone stops it (sbc_sip_bans_total stays 0).
    let sbc = Sbc::start(&SbcSpec::new(
        "sipvicious-disguised",
        rtp(65),
        config("[protection]\nrate_limit_requests = 10000\n"),
    ));

    // svwar from 127.0.0.31. Its sanity check: a random (unknown) user is
    // challenged, so it refuses to go on.
    let war = disguised(
        "svwar",
        31,
        &sbc,
        &["-vv", "-e1000-1010", "--maximumtime", "3"],
    );
    war.assert_found_nothing();
    assert!(
        war.stderr
            .contains("authentication request for an unknown extension"),
        "{}",
        war.report()
    );
    // Forced, starting at a real user: the answer for 1001 equals the one for
    // the random user. REGISTER (401) and INVITE (403): svwar takes the same
    // non-404 answer as "unknown response" and stops; OPTIONS (200 to all):
    // it asks every extension and finds none.
    for method in ["REGISTER", "INVITE", "OPTIONS"] {
        let forced = disguised(
            "svwar",
            31,
            &sbc,
            &[
                "-vv",
                "--force",
                "-m",
                method,
                "-e1001-1010",
                "--maximumtime",
                "3",
            ],
        );
        forced.assert_found_nothing();
        let asked = forced.asked();
        let must: &[&str] = if method == "OPTIONS" {
            &USERS
        } else {
            &USERS[..1]
        };
        assert!(
            must.iter().all(|u| asked.contains(u)),
            "{method}: asked {asked:?}\n{}",
            forced.report()
        );
    }
    // Its REGISTERs reached the registrar (challenged, never refused: it
    // sends no credentials), not dropped at the front door.
    let challenges = sbc.wait_metric("sbc_registrar_challenges_total", &[], WAIT, |v| v >= 3.0);
    show_metrics(&sbc);
    assert!(challenges >= 3.0, "{challenges} challenges");
    assert_eq!(sbc.metric("sbc_registrar_auth_failures_total", &[]), 0.0);
    assert_eq!(sbc.metric("sbc_sip_scanner_drops_total", &[]), 0.0);

    // Control, from 127.0.0.32: the right password 3rd, within ban_after,
    // is found: the disguised svcrack and our digest agree.
    let words = TempDir::new("sipvicious-words");
    let near = dictionary(&words, "near.txt", &["1234", "1001", PASSWORD]);
    let control = disguised(
        "svcrack",
        32,
        &sbc,
        &["-vv", "-u", USERS[0], "-d", &near, "--maximumtime", "3"],
    );
    assert_eq!(
        control.found(),
        [USERS[0]],
        "the control did not crack it\n{}",
        control.report()
    );
    assert!(control.stdout.contains(PASSWORD), "{}", control.report());
    let accepted = sbc.wait_metric("sbc_registrar_accepted_total", &[], WAIT, |v| v >= 1.0);
    assert_eq!(accepted, 1.0);
    let before = sbc.wait_metric("sbc_registrar_auth_failures_total", &[], WAIT, |v| v >= 2.0);
    assert_eq!(before, 2.0, "1234 and 1001 refused");

    // The attack, from 127.0.0.33: the right password 20th.
    let far = dictionary(
        &words,
        "far.txt",
        &[
            "1234", "12345", "123456", "password", "1001", "admin", "secret", "qwerty", "letmein",
            "sip", "voip", "changeme", "0000", "1111", "welcome", "pass", "test", "phone",
            "abc123", PASSWORD, "iloveyou",
        ],
    );
    let crack = disguised(
        "svcrack",
        33,
        &sbc,
        &["-vv", "-u", USERS[0], "-d", &far, "--maximumtime", "3"],
    );
    crack.assert_found_nothing();
    // It stopped because nothing answered any more: the ban.
    assert!(
        crack
            .stderr
            .contains("since we last received a response - stopping"),
        "{}",
        crack.report()
    );
    eprintln!("svcrack sent {:?}", crack.tried());
    let bans = sbc.wait_metric("sbc_registrar_bans_total", &[], WAIT, |v| v >= 1.0);
    assert_eq!(bans, 1.0, "{}", sbc.logs());
    // Exactly ban_after: the 5th refusal bans (and is not answered); every
    // REGISTER after it from that address is dropped before it is checked,
    // so passwords in flight (svcrack sends one per challenge it holds) are
    // never checked.
    show_metrics(&sbc);
    let failures = sbc.metric("sbc_registrar_auth_failures_total", &[]) - before;
    assert_eq!(failures, f64::from(BAN_AFTER));
    let dropped = sbc.wait_metric("sbc_registrar_banned_drops_total", &[], WAIT, |v| v >= 1.0);
    assert!(dropped >= 1.0, "{dropped} dropped");
    assert_eq!(sbc.metric("sbc_registrar_accepted_total", &[]), 1.0);
    // The registrar, not the front door.
    assert_eq!(sbc.metric("sbc_sip_bans_total", &[]), 0.0);
    assert_eq!(sbc.metric("sbc_sip_banned_drops_total", &[]), 0.0);
    assert_eq!(sbc.metric("sbc_sip_scanner_drops_total", &[]), 0.0);
    // Banned where it came from (its own address: -b honoured).
    let log = sbc_log(&sbc);
    let banned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("banned after repeated authentication failures"))
        .collect();
    assert!(
        banned.len() == 1 && banned[0].contains(&format!("source={}", lo(33))),
        "{banned:?}"
    );
}
