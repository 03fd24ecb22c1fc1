//! Privileged: nixspawn as the builder of Nix derivations in a `uid-range`
//! sandbox (Debian sid's Nix, set up by integration/nix-sandbox/), and Nix's
//! own sandbox inside a nixspawn guest (`--nested-sandbox`). Each obstacle
//! of reference/nix-sandbox.md is met here: no cgroup2 mounted (1), mknod
//! refused (2), chown of bound nodes (3, `-U identity`), the UID range
//! inside the builder's map (4), a store of many mounts (5, `--toplevel`),
//! no Nix database or nix-store (6), `\r\n` in the build log (7), trees
//! from the store (8), state paths off `/run` (9: the builder sets
//! `NIXSPAWN_RUNTIME_DIR`), the inherited no_new_privs and seccomp (10:
//! every case runs under them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory of the binaries under test, for the runner's bundle.
fn bin_dir() -> PathBuf {
    Path::new(NIXSPAWN).parent().unwrap().to_path_buf()
}

/// What a run could leave on the host (other helpers' guests come and go
/// meanwhile, so only ours count): mounts of the runner's scratch root or
/// the fixture, Nix's build cgroups and our machines' scopes, scratch
/// directories.
fn host_traces() -> (Vec<String>, Vec<PathBuf>, Vec<String>) {
    let scratch = std::fs::read_dir("/var/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nixspawn-nix-sandbox."))
        .collect();
    let mounts = host_mounts()
        .into_iter()
        .filter(|m| m.contains("nixspawn-nix-sandbox") || m.contains("nix-sandbox-sid"))
        .collect();
    let cgroups = host_cgroups()
        .into_iter()
        .filter(|c| {
            let s = c.to_string_lossy();
            s.contains("nix-build-uid") || s.contains("s15-")
        })
        .collect();
    (mounts, cgroups, scratch)
}

/// `nix-build cases.nix -A ATTR` in the sandbox fixture: (status, log).
fn nix_build(attr: &str, binds: &[String]) -> (i32, String) {
    let mut cmd = Command::new(repo().join("integration/nix-sandbox/run.sh"));
    cmd.env("NIXSPAWN_BIN_DIR", bin_dir());
    cmd.arg("--bind").arg(format!(
        "{}:/src",
        repo().join("integration/nix-sandbox").display()
    ));
    for b in binds {
        cmd.arg("--bind").arg(b);
    }
    cmd.args(["nix-build", "/src/cases.nix", "--no-out-link", "-A", attr]);
    let out = cmd.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), log)
}

/// Build `attr`, check nothing stays behind, return (status, log).
fn build_leaving_nothing(attr: &str, binds: &[String]) -> (i32, String) {
    // nextest runs tests in parallel processes: one build between the
    // snapshots, or another's scratch directory counts as ours.
    let f = std::fs::File::create("/var/cache/nixspawn/fixtures/.lock-nix-sandbox-test").unwrap();
    let _held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let before = host_traces();
    let (code, log) = nix_build(attr, binds);
    let after = host_traces();
    assert_eq!(before.0, after.0, "host mounts changed:\n{log}");
    assert_eq!(before.1, after.1, "host cgroups changed:\n{log}");
    assert_eq!(before.2, after.2, "scratch directories left:\n{log}");
    for name in ["s15-cmd", "s15-fail", "s15-top", "s15-boot", "s15-idy"] {
        assert!(
            processes_naming(name).is_empty(),
            "processes of {name} left"
        );
    }
    (code, log)
}

fn has_line(log: &str, want: &str) -> bool {
    log.lines()
        .any(|l| l.trim_end() == want || l.ends_with(want))
}

#[test]
fn a_derivation_whose_builder_runs_a_command_guest_builds() {
    privileged!();
    require_root();
    let (code, log) = build_leaving_nothing("command", &[]);
    assert_eq!(code, 0, "{log}");
    // Obstacle 7: whole lines in the Nix log, no \r.
    assert!(has_line(&log, "hello from PID 1"), "{log}");
    assert!(
        !log.contains('\r'),
        "a carriage return in the log:\n{log:?}"
    );
    // The guest shares the builder's user namespace (no -U): its map.
    assert!(
        log.contains("uid_map 0 872415232 65536") || log.contains("uid_map 0 "),
        "{log}"
    );
    // Obstacle 2: /dev/null is the host's node bound in, and works.
    assert!(has_line(&log, "dev ok"), "{log}");
    // Obstacle 1: the guest's cgroup namespace root.
    assert!(has_line(&log, "0::/"), "{log}");
    assert!(has_line(&log, "after the guest"), "{log}");
}

#[test]
fn a_failing_guest_fails_the_build_with_its_line_in_the_log() {
    privileged!();
    require_root();
    let (code, log) = build_leaving_nothing("failing", &[]);
    assert_ne!(code, 0, "{log}");
    assert!(has_line(&log, "FAILING-LINE-s15"), "{log}");
    assert!(log.contains("failed with status 3"), "{log}");
    assert!(!log.contains("not reached"), "{log}");
}

#[test]
fn in_a_builder_identity_fits_and_pick_says_so() {
    privileged!();
    require_root();
    let (code, log) = build_leaving_nothing("userns", &[]);
    assert_eq!(code, 0, "{log}");
    // Obstacle 3: bound nodes are not chowned; the guest's map is identity.
    assert!(log.contains("identity uid_map 0 0 65536"), "{log}");
    // Obstacle 4: pick looks inside the builder's map and names what fits.
    assert!(
        log.contains("only --private-users=identity fits") && log.contains("0 872415232 65536"),
        "{log}"
    );
}

#[test]
fn a_closure_only_toplevel_boots_without_nix_store_or_database() {
    privileged!();
    require_root();
    let (code, log) = build_leaving_nothing("toplevel", &[]);
    assert_eq!(code, 0, "{log}");
    // Obstacles 5 and 6: the init is there, and the store holds exactly
    // the closure (the toplevel and the bundle its init runs).
    assert!(log.contains("hello from toplevel init, PID 1"), "{log}");
    let listed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("-nixos-system-sandboxed") || l.ends_with("-nixspawn"))
        .collect();
    assert!(!listed.is_empty(), "{log}");
}

#[test]
fn a_debian_tree_from_the_store_boots_with_systemd_in_a_build() {
    privileged!();
    require_root();
    let sid = tree("sid");
    let (code, log) = build_leaving_nothing("boot", &[format!("{}:/guest", sid.display())]);
    assert_eq!(code, 0, "{log}");
    // Obstacle 8: a copy in the build directory reaches running.
    assert!(log.contains("state: running"), "{log}");
    assert!(log.contains("launcher exit: 0"), "{log}");
}

/// The sid tree with Nix of integration/nix-sandbox/setup.sh.
fn nix_tree() -> PathBuf {
    let out = Command::new(repo().join("integration/nix-sandbox/setup.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Builds a derivation with Nix's sandbox on (its own user, mount, PID
/// and network namespaces and a fresh /proc) inside the guest, and probes
/// what an unmasked /proc would give the guest's root. Writes nothing: a
/// sysctl gets its own value back, sysrq-trigger is only opened.
const NESTED: &str = r#"
export HOME=/root NIX_CONFIG='build-users-group =
sandbox = true
sandbox-fallback = false
auto-allocate-uids = false
use-cgroups = false
system-features =
substituters ='
cat >/tmp/d.nix <<'NIX'
derivation {
  name = "nested"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo sandboxed builder pid $$ > $out" ];
}
NIX
if out=$(nix-build --no-out-link /tmp/d.nix 2>/tmp/err); then cat $out; else echo "nix-build failed: $(tail -n 3 /tmp/err)"; fi
echo "proc submounts: $(awk '$5 ~ "^/proc/" {n++} END {print n+0}' /proc/self/mountinfo)"
v=$(cat /proc/sys/kernel/printk_ratelimit)
if echo "$v" >/proc/sys/kernel/printk_ratelimit 2>/dev/null; then echo "sysctl writable"; else echo "sysctl refused"; fi
if sh -c 'exec 3>/proc/sysrq-trigger' 2>/dev/null; then echo "sysrq writable"; else echo "sysrq refused"; fi
if head -c 1 /proc/kcore >/dev/null 2>&1; then echo "kcore readable"; else echo "kcore refused"; fi
"#;

fn nested_run(extra: &[&str]) -> String {
    let tree = nix_tree();
    let name = unique_name("s15-nest");
    let mut args = vec!["-x", "-b", "-U"];
    args.extend_from_slice(extra);
    let mut g = Guest::start(&tree, &name, &args);
    g.wait_ready();
    let (_, out) = g.exec(&["/bin/sh", "-c", NESTED]);
    g.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(g.wait_exit(std::time::Duration::from_secs(30)), 0);
    let leader = None;
    assert_cleaned_up(&name, leader);
    out
}

#[test]
fn nix_builds_in_its_sandbox_inside_a_guest_with_nested_sandbox() {
    privileged!();
    require_root();
    let out = nested_run(&["--nested-sandbox"]);
    assert!(
        out.contains("sandboxed builder pid 1"),
        "no sandboxed build:\n{out}"
    );
    assert!(out.contains("proc submounts: 0"), "{out}");
    // What the masks hid stays out of the guest root's reach.
    for refused in ["sysctl refused", "sysrq refused", "kcore refused"] {
        assert!(out.contains(refused), "{refused}:\n{out}");
    }
}

#[test]
fn without_nested_sandbox_nix_refuses_to_sandbox_as_under_nspawn() {
    privileged!();
    require_root();
    let out = nested_run(&[]);
    assert!(out.contains("nix-build failed"), "{out}");
    assert!(!out.contains("proc submounts: 0"), "{out}");
}

#[test]
fn nested_sandbox_is_refused_where_the_guest_root_is_the_hosts() {
    privileged!();
    require_root();
    let bb = busybox_tree();
    for extra in [&[][..], &["--private-users=identity"][..]] {
        let name = unique_name("s15-nref");
        let mut args = vec!["--nested-sandbox", "--pipe", "-M", &name, "-D"];
        let dir = bb.path().to_str().unwrap();
        args.push(dir);
        args.extend_from_slice(extra);
        args.push("/bin/true");
        let (code, _, err) = run_nixspawn(&args, "");
        assert_ne!(code, 0, "{extra:?} accepted");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("--nested-sandbox") && err.contains("-U"),
            "{err}"
        );
        assert_cleaned_up(&name, None);
    }
}
