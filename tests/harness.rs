//! The test suite's own promises about privilege: every test in the
//! privileged suites starts with `privileged!()`, so that without root it
//! says it is skipped instead of failing; and where the suite must run in
//! full (CI, `NIXSPAWN_REQUIRE_PRIVILEGED=1`) such a skip is a failure.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// The first statement of each `#[test]` function of every file in tests/.
fn first_statements() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("mod ")
                && rest.contains("#[test] fn $test() {")
            {
                // A macro that stamps out one test per fixture (boot.rs).
                let body = rest.split("#[test] fn $test() {").nth(1).unwrap_or("");
                out.push((file.clone(), "$test".into(), body.trim().to_owned()));
                continue;
            }
            if line != "#[test]" {
                continue;
            }
            let mut j = i + 1;
            while lines[j].trim().starts_with("#[") {
                j += 1;
            }
            let name = lines[j]
                .trim()
                .trim_start_matches("fn ")
                .split('(')
                .next()
                .unwrap_or("")
                .to_owned();
            out.push((file.clone(), name, lines[j + 1].trim().to_owned()));
        }
    }
    out
}

#[test]
fn every_privileged_test_starts_with_privileged() {
    let tests = first_statements();
    assert!(tests.len() > 90, "found only {} tests", tests.len());
    let missing: Vec<String> = tests
        .iter()
        .filter(|(file, _, _)| file != "harness.rs")
        .filter(|(_, _, first)| {
            !first.starts_with("privileged!();") && !first.contains("common::privileged!();")
        })
        .map(|(file, name, first)| format!("{file}: {name} starts with {first:?}"))
        .collect();
    assert!(
        missing.is_empty(),
        "these tests boot guests or need root but would fail without it instead of saying they are skipped; start them with privileged!():\n{}",
        missing.join("\n")
    );
}

/// What the gate below runs without root: a privileged test that, once
/// past `privileged!()`, checks it really is root.
#[test]
fn fixture_privileged_test() {
    privileged!();
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged!() let a test through without root"
    );
}

#[test]
fn without_root_a_privileged_test_says_it_is_skipped_and_in_ci_fails() {
    privileged!();
    // This very test binary, readable by nobody wherever the checkout is.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("harness");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let run = |require: Option<&str>| {
        let mut cmd = Command::new(&exe);
        cmd.args(["--exact", "fixture_privileged_test", "--nocapture"])
            .env_remove(REQUIRE_PRIVILEGED)
            .current_dir(dir.path())
            .uid(65534)
            .gid(65534);
        if let Some(v) = require {
            cmd.env(REQUIRE_PRIVILEGED, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run(None);
    assert_eq!(code, Some(0), "a skip passes: {stdout}{stderr}");
    assert!(
        stderr.contains("skipped: needs root (it boots containers"),
        "and says why: {stdout}{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{stdout}");

    let (code, stdout, stderr) = run(Some("1"));
    assert_eq!(
        code,
        Some(101),
        "under {REQUIRE_PRIVILEGED}=1 a skip fails: {stdout}{stderr}"
    );
    assert!(
        stderr.contains("would be skipped, which NIXSPAWN_REQUIRE_PRIVILEGED=1 forbids"),
        "{stderr}"
    );
    assert!(stdout.contains("1 failed"), "{stdout}");

    let (code, _, stderr) = run(Some("0"));
    assert_eq!(code, Some(0), "only 1 makes it strict: {stderr}");
}
