//! The project's own promises about how it is run.

use integration_tests::repo_root;

/// The README's test command, as written in its "Run every test" block.
fn readme_test_command() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Run every test")
        .nth(1)
        .expect("README has a 'Run every test' section");
    let block = section.split("```").nth(1).expect("with a code block");
    let lines: Vec<&str> = block
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "exactly one command: {lines:?}");
    lines[0].trim().to_string()
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let cmd = readme_test_command();
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    let script = cmd.trim_start_matches("./");
    assert!(
        ci.contains(&format!("exec ./{script}")),
        ".ci/run must exec `{cmd}`"
    );
    assert!(repo_root().join(script).exists(), "{script} exists");
}

#[test]
fn the_test_script_installs_what_a_fresh_machine_lacks() {
    let script = std::fs::read_to_string(repo_root().join("tests/ci.sh")).unwrap();
    // A fresh machine has no package lists: update before install.
    let update = script.find("apt-get update").expect("apt-get update");
    let install = script.find("apt-get install").expect("apt-get install");
    assert!(update < install);
    for tool in ["cmake", "make"] {
        assert!(
            script.contains(&format!("command -v {tool}")),
            "checks for {tool}"
        );
    }
}
