//! `sbc check-config FILE` end to end: the real binary on real files. Exit 0 and
//! `ok: ...` on stdout for a good config, exit 2 and the problems (file, key
//! path, line) on stderr for a bad one.
//!
//! Ignored until the subcommand is wired into `cli.rs`; then drop the
//! `#[ignore]`s. (`sbc::config` has unit tests for the checks themselves.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh directory for one test.
fn dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sbc-config-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn check_config(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sbc"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The shipped example, with the files it names created in `d`.
fn example_in(d: &Path) -> PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("sbc.example.toml");
    let mut cfg = std::fs::read_to_string(example).unwrap();
    for (name, contents) in [
        (
            "token-secret",
            "0123456789abcdef0123456789abcdef0123456789abcdef\n",
        ),
        ("tls/cert.pem", "not checked for content\n"),
        ("tls/key.pem", "not checked for content\n"),
    ] {
        let path = d.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        cfg = cfg.replace(&format!("/etc/sbc/{name}"), path.to_str().unwrap());
    }
    let file = d.join("sbc.toml");
    std::fs::write(&file, cfg).unwrap();
    file
}

#[test]
fn the_example_passes() {
    let d = dir("example");
    let o = check_config(&example_in(&d));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("ok: "),
        "stdout: {}",
        text(&o.stdout)
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn problems_name_file_key_and_line() {
    let d = dir("bad");
    let file = example_in(&d);
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        good.replace(r#""pstn:+15550111""#, r#""pst:+15550111""#),
    )
    .unwrap();
    let o = check_config(&file);
    assert_eq!(o.status.code(), Some(2), "stdout: {}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    assert!(
        err.contains("numbers[0].dial[1].ring[0]: bad dial target"),
        "{err}"
    );
    assert!(err.contains("(line "), "{err}");

    // A file it names is read too.
    std::fs::write(&file, &good).unwrap();
    std::fs::write(d.join("token-secret"), "short\n").unwrap();
    let o = check_config(&file);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("auth.token_secret_file: must be at least 32 bytes"),
        "{err}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn a_missing_file_is_an_error() {
    let d = dir("missing");
    let o = check_config(&d.join("nope.toml"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("cannot read"),
        "{}",
        text(&o.stderr)
    );
    std::fs::remove_dir_all(d).unwrap();
}
