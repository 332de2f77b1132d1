//! System tests of the registrar with the real `sbc` binary and SIPp as the
//! phone: a phone registers with digest credentials and un-registers; a
//! password guesser is banned after the configured number of refusals and
//! then gets no answer at all, not even to the right password; an unknown
//! user is refused exactly like a known one with a wrong password.
//!
//! Needs `target/debug/sbc` and SIPp. The SBC is 127.0.0.1; phones are
//! 127.0.0.2 to .5.

use std::time::Duration;

use integration_tests::sbc_process::{Sbc, SbcSpec, SippCmd, lo, rtp, serial, wait_until};
use sip_bridge::registrar::PhoneAccount;

const WAIT: Duration = Duration::from_secs(20);
const SIPP_DONE: Duration = Duration::from_secs(60);

/// One phone account, alice's desk phone (password `s3cret`), and a
/// registrar that bans after 5 refusals.
fn config() -> String {
    let a = PhoneAccount::new("alice-desk", "alice", "sbc", "s3cret");
    format!(
        "[registrar]\nrealm = \"sbc\"\nban_after = 5\nban_for = \"60s\"\n\n\
         [[phones]]\nusername = \"alice-desk\"\noperator = \"alice\"\n\
         ha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n",
        a.ha1_md5, a.ha1_sha256
    )
}

fn phone(name: &str, scenario: &str, n: u8, sbc: &Sbc, user: &str, password: &str) -> SippCmd {
    SippCmd::new(name, scenario, lo(n))
        .remote(sbc.sip)
        .service(user)
        .arg("-au", user)
        .arg("-ap", password)
        .timeout_secs(30)
}

#[test]
fn a_phone_registers_with_digest_and_unregisters() {
    let _serial = serial();
    let sbc = Sbc::start(&SbcSpec::new("registrar", rtp(60), config()));
    let mut p = phone(
        "reg-phone",
        "register_auth.xml",
        2,
        &sbc,
        "alice-desk",
        "s3cret",
    )
    .calls(1)
    .spawn();
    p.assert_success(SIPP_DONE);
    // The sbc granted 300 s, then removed the binding.
    let logged = wait_until(WAIT, || {
        let l = sbc.logs();
        l.contains("phone registered") && l.contains("phone unregistered")
    });
    assert!(logged, "{}", sbc.logs());
    let accepted = sbc.wait_metric("sbc_registrar_accepted_total", &[], WAIT, |v| v >= 2.0);
    assert_eq!(accepted, 2.0);
    assert_eq!(sbc.metric("sbc_registrations_active", &[]), 0.0);
    assert_eq!(sbc.metric("sbc_registrar_auth_failures_total", &[]), 0.0);
}

#[test]
fn a_guesser_is_banned_and_an_unknown_user_looks_like_a_wrong_password() {
    let _serial = serial();
    let sbc = Sbc::start(&SbcSpec::new("registrar-ban", rtp(61), config()));
    // An unknown user and a known one with a wrong password, from two
    // addresses: the same 401 (but for the nonce and the dialog's own ids).
    let mut unknown = phone("reg-unknown", "register_guess.xml", 3, &sbc, "nobody", "x")
        .calls(1)
        .spawn();
    unknown.assert_success(SIPP_DONE);
    let mut wrong = phone(
        "reg-wrong",
        "register_guess.xml",
        4,
        &sbc,
        "alice-desk",
        "x",
    )
    .calls(1)
    .spawn();
    wrong.assert_success(SIPP_DONE);
    let shape = |sipp: &integration_tests::sbc_process::Sipp| {
        let last = sipp
            .received()
            .into_iter()
            .rfind(|m| m.start_line().starts_with("SIP/2.0 401"))
            .expect("a 401");
        last.text
            .lines()
            .filter(|l| {
                let name = l
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                ![
                    "via",
                    "from",
                    "to",
                    "call-id",
                    "cseq",
                    "content-length",
                    "l",
                    "v",
                    "f",
                    "t",
                    "i",
                ]
                .contains(&name.as_str())
            })
            .map(|l| l.split("nonce=").next().unwrap_or(l).trim().to_string())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&unknown), shape(&wrong));

    // A guesser from one address: 5 refusals ban it; after that nothing is
    // answered, not even the right password.
    let mut guesser = phone(
        "reg-guesser",
        "register_guess.xml",
        5,
        &sbc,
        "alice-desk",
        "guess",
    )
    .calls(8)
    .rate(20)
    .arg("-recv_timeout", 1500)
    .spawn();
    let _ = guesser.wait(SIPP_DONE);
    let bans = sbc.wait_metric("sbc_registrar_bans_total", &[], WAIT, |v| v >= 1.0);
    assert_eq!(bans, 1.0);
    // Two before (one each), five from the guesser: then it was banned.
    assert_eq!(sbc.metric("sbc_registrar_auth_failures_total", &[]), 7.0);
    let mut right = phone(
        "reg-banned",
        "register_auth.xml",
        5,
        &sbc,
        "alice-desk",
        "s3cret",
    )
    .calls(1)
    .arg("-recv_timeout", 1500)
    .spawn();
    let st = right.wait(SIPP_DONE);
    assert!(
        st.is_some_and(|s| !s.success()),
        "a banned address registered\n{}",
        right.report()
    );
    assert!(
        right.received().is_empty(),
        "the banned address got an answer"
    );
    let drops = sbc.wait_metric("sbc_registrar_banned_drops_total", &[], WAIT, |v| v >= 3.0);
    assert!(drops >= 3.0, "{drops} dropped");
    assert_eq!(sbc.metric("sbc_registrations_active", &[]), 0.0);
    assert!(
        sbc.logs()
            .contains("banned after repeated authentication failures")
    );
}

/// A tone on `lo(2)` calls `+15550100`, whose `operators` step rings alice;
/// alice has no browser, only her desk phone (behind "NAT": its Contact
/// names 203.0.113.9), which takes the call. The call is recorded, so both
/// directions are checked in the file: the caller's 440 Hz in channel 1, the
/// phone's 1000 Hz in channel 2.
#[test]
fn a_registered_phone_behind_nat_is_rung_where_it_registered_from_and_talks() {
    let _serial = serial();
    let dir = integration_tests::sbc_process::TempDir::new("phone-rec");
    let a = PhoneAccount::new("alice-desk", "alice", "sbc", "s3cret");
    let toml = format!(
        "[recording]\ndir = \"{}\"\n\n\
         [[phones]]\nusername = \"alice-desk\"\noperator = \"alice\"\nnumbers = [\"service\"]\n\
         ha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\nrecord = true\n\
         dial = [ {{ ring = [\"operators\"], timeout = \"20s\" }} ]\n\n\
         [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"127.0.0.9:5060\"]\n\
         inbound = [\"127.0.0.2/32\"]\n",
        dir.path().display(),
        a.ha1_md5,
        a.ha1_sha256
    );
    let sbc = Sbc::start(&SbcSpec::new("registrar-phone", rtp(62), toml));
    let mut reg = phone(
        "phone-reg",
        "phone_register.xml",
        3,
        &sbc,
        "alice-desk",
        "s3cret",
    )
    .calls(1)
    .spawn();
    reg.assert_success(SIPP_DONE);
    let port = reg.addr.port();
    drop(reg);
    // The phone takes calls on the address and port it registered from.
    let mut desk = SippCmd::tone_callee("phone-desk", lo(3), 1000.0)
        .port(port)
        .spawn();
    let mut carrier =
        SippCmd::tone_caller("phone-caller", lo(2), sbc.sip, "+15550100", 440.0, 4000).spawn();
    carrier.assert_success(SIPP_DONE);
    desk.assert_success(SIPP_DONE);
    // Rung at the Contact as written, sent where the REGISTER came from.
    let invite = desk
        .received()
        .into_iter()
        .find(|m| m.start_line().starts_with("INVITE "))
        .expect("the phone rang");
    assert!(
        invite.start_line().contains("@203.0.113.9"),
        "{}",
        invite.start_line()
    );
    // Both ways, in the recording.
    let mut wav = None;
    let found = wait_until(WAIT, || {
        wav = std::fs::read_dir(dir.path()).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "wav"))
        });
        wav.is_some()
    });
    assert!(found, "no recording\n{}", sbc.logs());
    let bytes = std::fs::read(wav.unwrap()).unwrap();
    let pcm: Vec<i16> = bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let ch = |c: usize| -> Vec<i16> {
        pcm.iter()
            .skip(c)
            .step_by(2)
            .skip(8000)
            .take(16_000)
            .copied()
            .collect()
    };
    integration_tests::sbc_process::assert_tone_over(&ch(0), 8000, 440.0, 1000.0, "caller");
    integration_tests::sbc_process::assert_tone_over(&ch(1), 8000, 1000.0, 440.0, "phone");
}

/// A phone the config does not list is asked of the customer's backend
/// (`[registrar] accounts_url`, a signed POST): carol's desk phone registers
/// once the backend answers with her account (HA1s only); a name the
/// backend does not know (404) is refused like a wrong password, and asked
/// about once per `accounts_ttl`, not once per guess.
#[test]
fn accounts_not_in_the_config_come_from_the_customers_backend() {
    use integration_tests::sbc_process::HttpReceiver;
    let _serial = serial();
    let carol = PhoneAccount::new("carol-desk", "carol", "sbc", "s3cret");
    let body = format!(
        r#"{{"operator": "carol", "numbers": [], "ha1Md5": "{}", "ha1Sha256": "{}"}}"#,
        carol.ha1_md5, carol.ha1_sha256
    );
    let backend = HttpReceiver::start_with(lo(1), move |r| {
        if r.body.contains("\"carol-desk\"") {
            (200, body.clone())
        } else {
            (404, String::new())
        }
    });
    let toml = format!(
        "[registrar]\nrealm = \"sbc\"\nban_after = 50\naccounts_url = \"{}\"\n\
         accounts_secret = \"backend-signing-secret-0123456789\"\naccounts_ttl = \"5m\"\n",
        backend.url("/phones")
    );
    let sbc = Sbc::start(&SbcSpec::new("registrar-backend", rtp(69), toml));
    let mut p = phone(
        "carol",
        "register_auth.xml",
        6,
        &sbc,
        "carol-desk",
        "s3cret",
    )
    .calls(1)
    .spawn();
    p.assert_success(SIPP_DONE);
    let accepted = sbc.wait_metric("sbc_registrar_accepted_total", &[], WAIT, |v| v >= 2.0);
    assert_eq!(accepted, 2.0, "registered and unregistered\n{}", sbc.logs());
    // A guesser's unknown name: three guesses, one question to the backend.
    let mut g = phone("mallory", "register_guess.xml", 7, &sbc, "mallory", "x")
        .calls(3)
        .spawn();
    g.assert_success(SIPP_DONE);
    let failures = sbc.wait_metric("sbc_registrar_auth_failures_total", &[], WAIT, |v| v >= 3.0);
    assert_eq!(failures, 3.0);
    let asked: Vec<String> = backend.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(
        asked
            .iter()
            .filter(|b| b.contains("\"carol-desk\""))
            .count(),
        1,
        "carol asked about once (her un-REGISTER used the answer): {asked:?}"
    );
    assert_eq!(
        asked.iter().filter(|b| b.contains("\"mallory\"")).count(),
        1,
        "{asked:?}"
    );
    let signed = backend.requests().iter().all(|r| {
        r.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("x-sbc-signature"))
    });
    assert!(signed, "every request is signed");
}
