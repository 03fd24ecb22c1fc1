//! systemd-machined registration, proven inside a systemd "host" container
//! (integration/machined/run.sh): every guest under systemd-nspawn and under
//! nixspawn, with machinectl list/status/show/shell/login/reboot/poweroff/
//! terminate/kill, systemctl -M and journalctl -M, compared field by field;
//! a SIGKILLed launcher; the unit template and the `machinectl start` drop-in.
//! Once with a bookworm host (machined 252, D-Bus, hybrid cgroups) and once
//! with a sid host (machined 262, Varlink, pure cgroup v2).

mod common;

use std::process::Command;

fn host_scenario(suite: &str) {
    common::require_root();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/machined/run.sh");
    let out = Command::new(script)
        .args([suite, common::NIXSPAWN])
        .output()
        .expect("running integration/machined/run.sh");
    let log = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    // The scenario's own verdicts, so a failure shows which check and why.
    println!("{log}");
    eprintln!("{err}");
    assert!(
        log.contains("== 0 failed checks"),
        "the {suite} host scenario did not pass (log above)"
    );
    assert!(out.status.success(), "run.sh {suite} failed: {err}");
    let passed = log.lines().filter(|l| l.starts_with("ok: ")).count();
    // Three guests x two launchers x their checks, plus the rest: a
    // scenario that silently skipped most of itself must not pass.
    assert!(
        passed >= 55,
        "only {passed} checks passed in the {suite} host"
    );
}

#[test]
fn machined_in_a_bookworm_host() {
    common::privileged!();
    host_scenario("bookworm");
}

#[test]
fn machined_in_a_sid_host() {
    common::privileged!();
    host_scenario("sid");
}
