//! Privileged: the probe (tests/probe/probe.c) run under nixspawn and under
//! systemd-nspawn with the same tree and argv must report the same syscall
//! results and capability sets, for the default policy and with
//! --system-call-filter, --capability, --drop-capability,
//! --no-new-privileges and --private-network.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Build the static probe into `dir`.
fn build_probe(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/probe.c");
    let out = dir.join("nixspawn-probe");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "building the probe needs a C compiler and static libc: apt-get install gcc libc6-dev"
    );
    out
}

fn nspawn_available() -> bool {
    Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Probe output (stdout) under one launcher, run with --keep-unit inside
/// a cgroup of its own as a unit would be.
fn probe(launcher: &str, tree: &Path, probe: &Path, opts: &[&str]) -> String {
    let unit = UnitCgroup::new("probe");
    let mut cmd = unit.command(launcher);
    cmd.args(["-q", "--register=no", "--keep-unit", "-D"])
        .arg(tree)
        .arg(format!(
            "--bind-ro={}:/usr/local/bin/nixspawn-probe",
            probe.display()
        ))
        .args(opts)
        .arg("/usr/local/bin/nixspawn-probe")
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{launcher} {opts:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
}

#[test]
fn probe_results_match_systemd_nspawn() {
    require_root();
    assert!(
        nspawn_available(),
        "systemd-nspawn is missing: apt-get install systemd-container (integration/setup-host.sh does)"
    );
    let tree = busybox_tree();
    let scratch = tempfile::tempdir().unwrap();
    let probe_bin = build_probe(scratch.path());

    // The default policy, checked against what it must be, not only against nspawn.
    let ours = probe(NIXSPAWN, tree.path(), &probe_bin, &[]);
    for denied in [
        "kexec_load",
        "init_module",
        "swapon",
        "open_by_handle_at",
        "keyctl",
        "bpf",
        "perf_event_open",
        "clock_settime",
        "mlock",
    ] {
        assert_eq!(
            line(&ours, denied),
            "EPERM",
            "{denied} must be refused:\n{ours}"
        );
    }
    assert_eq!(
        line(&ours, "mount"),
        "ENOENT",
        "mount is allowed (the path is missing)"
    );
    assert_eq!(line(&ours, "unshare"), "ok");
    assert_eq!(
        line(&ours, "ptrace"),
        "ESRCH",
        "ptrace is allowed with CAP_SYS_PTRACE"
    );
    assert_eq!(
        line(&ours, "socket(AF_NETLINK, NETLINK_AUDIT)"),
        "EAFNOSUPPORT"
    );
    assert_eq!(line(&ours, "socket(AF_NETLINK, NETLINK_ROUTE)"), "ok");
    assert_eq!(line(&ours, "unknown syscall 1000"), "ENOSYS");
    assert!(
        ours.lines().any(|l| l == "Seccomp:\t2"),
        "a filter is installed:\n{ours}"
    );
    assert!(
        ours.lines().any(|l| l == "NoNewPrivs:\t0"),
        "no no_new_privs by default"
    );

    let variants: &[&[&str]] = &[
        &[],
        &["--system-call-filter=@keyring bpf"],
        &["--system-call-filter=~mount @chown"],
        &["--system-call-filter=~@mount"],
        &["--system-call-filter=~socket"],
        &["--system-call-filter=@clock", "--system-call-filter=@swap"],
        &["--capability=all"],
        &[
            "--capability=CAP_SYS_TIME,CAP_IPC_LOCK,CAP_SYS_MODULE,CAP_SYS_RAWIO,CAP_SYSLOG,CAP_SYS_PACCT",
        ],
        &["--drop-capability=CAP_SYS_PTRACE,CAP_SYS_BOOT"],
        &["--no-new-privileges=yes"],
        &["--private-network"],
    ];
    for opts in variants {
        let ours = probe(NIXSPAWN, tree.path(), &probe_bin, opts);
        let theirs = probe("systemd-nspawn", tree.path(), &probe_bin, opts);
        remove_nspawn_leftovers(tree.path());
        assert_eq!(
            ours, theirs,
            "nixspawn and systemd-nspawn differ for {opts:?}"
        );
    }
}

#[test]
fn seccomp_can_be_turned_off_and_bad_filters_are_refused() {
    require_root();
    let tree = busybox_tree();
    let scratch = tempfile::tempdir().unwrap();
    let probe_bin = build_probe(scratch.path());
    let bind = format!("--bind-ro={}:/probe", probe_bin.display());
    let (_, report, _) = run_nixspawn_with_env(
        &[("SYSTEMD_SECCOMP", "0")],
        &[
            "-q",
            "--pipe",
            "-D",
            tree.path().to_str().unwrap(),
            &bind,
            "/probe",
        ],
        "",
    );
    assert!(
        report.lines().any(|l| l == "Seccomp:\t0"),
        "SYSTEMD_SECCOMP=0 installs no filter:\n{report}"
    );
    assert_eq!(
        line(&report, "swapon"),
        "ENOENT",
        "unfiltered, the kernel answers"
    );

    let d = tree.path().to_str().unwrap();
    for (opt, needle) in [
        (
            "--system-call-filter=nosuchcall",
            "unknown system call or group \"nosuchcall\"",
        ),
        (
            "--system-call-filter=@nosuchgroup",
            "unknown system call or group",
        ),
        ("--capability=CAP_NOPE", "unknown capability"),
        ("--no-new-privileges=maybe", "expected yes or no"),
    ] {
        let (code, _, err) = run_nixspawn(&["-q", "-D", d, opt, "/bin/true"], "");
        assert_eq!(code, 1, "{opt}: {err}");
        assert!(err.contains(needle), "{opt}: {err}");
    }
}
