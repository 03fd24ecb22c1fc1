//! Privileged: what the payload's PID 1 inherits from the launcher besides
//! its privileges. Its signal mask and dispositions must be the defaults,
//! as under systemd-nspawn (the Rust runtime ignores SIGPIPE, and an
//! ignored signal survives exec), and it must die with the launcher, also
//! when it became the root of a user namespace (a uid change clears the
//! parent-death signal).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `probe signals` as PID 1 under `launcher`, run with --keep-unit in a
/// cgroup of its own as a unit would be, by a caller that ignores SIGHUP
/// and SIGUSR1 (as nohup and careless services do).
fn signals_of(launcher: &str, tree: &Path, probe: &Path, opts: &[&str]) -> String {
    let unit = UnitCgroup::new("sigprobe");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!(
            "trap '' HUP USR1; echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
            unit.path.display()
        ))
        .arg(launcher)
        .args(["-q", "--register=no", "--keep-unit", "-D"])
        .arg(tree)
        .arg(format!("--bind-ro={}:/probe", probe.display()))
        .args(opts)
        .args(["/probe", "signals"])
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    remove_nspawn_leftovers(tree);
    assert!(
        out.status.success(),
        "{launcher} {opts:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim_start_matches(':').trim())
        .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
}

/// A signal set from /proc/PID/status without signals 32 and 33: glibc
/// keeps them for itself and refuses to touch them, so systemd-nspawn
/// passes on whatever its caller did with them (the test harness ignores
/// them); nixspawn resets them too (checked above).
fn mask(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).expect("a hex signal set") & !(0b11 << 31)
}

#[test]
fn pid1_starts_with_default_signal_dispositions_as_under_nspawn() {
    privileged!();
    let tree = busybox_tree();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    for opts in [&[][..], &["-U"][..]] {
        let ours = signals_of(NIXSPAWN, tree.path(), &probe, opts);
        let theirs = signals_of("systemd-nspawn", tree.path(), &probe, opts);
        for name in ["SigBlk", "SigIgn", "SigCgt"] {
            assert_eq!(
                field(&ours, name),
                "0000000000000000",
                "{opts:?}: PID 1 must start with no signal {name}:\n{ours}"
            );
            assert_eq!(
                mask(field(&ours, name)),
                mask(field(&theirs, name)),
                "{opts:?}: {name} differs from systemd-nspawn's"
            );
        }
    }
}

#[test]
fn pid1_dies_with_the_launcher_also_under_userns() {
    privileged!();
    let tree = busybox_tree();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    for opts in [&[][..], &["-U"][..], &["--private-users=identity"][..]] {
        let ours = signals_of(NIXSPAWN, tree.path(), &probe, opts);
        assert_eq!(
            field(&ours, "PDEATHSIG"),
            "9",
            "{opts:?}: PID 1's parent-death signal must be SIGKILL:\n{ours}"
        );
    }
}
