//! Privileged: nixspawn as the builder of Nix derivations in a `uid-range`
//! sandbox (Debian sid's Nix, set up by integration/nix-sandbox/), and Nix's
//! own sandbox inside a nixspawn guest (`--nested-sandbox`). Each obstacle
//! of reference/nix-sandbox.md is met here: no cgroup2 mounted (1), mknod
//! refused (2), chown of bound nodes (3, `-U identity`), the UID range
//! inside the builder's map (4), a store of many mounts (5, `--toplevel`),
//! no Nix database or nix-store (6), `\r\n` in the build log (7), trees
//! from the store (8), state paths off `/run` (9: the builder sets
//! `NIXSPAWN_RUNTIME_DIR`; nixspawn-test's entries find the nodes there),
//! the inherited no_new_privs and seccomp (10: seen in the command guest;
//! every case runs under them). Beyond single guests: nix/test.nix, a
//! multi-node nixspawn-test as a derivation (passing, and failing the
//! build), and nixspawn launching guests inside a nixspawn guest.

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

/// Processes of a run that would outlive it: anything run from a store
/// bundle of ours (nixspawn, nixspawn-test, the janitors) or the driver.
fn sandbox_processes() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if is_sandbox_bundle(&cmdline) {
            found.push(format!("{} {cmdline}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// Run from a store bundle of ours (nixspawn, nixspawn-test, the
/// janitors) or a build's driver. The drivers of the host's own
/// nixspawn-test runs (other tests, beside this one) live in this
/// process's temporary directory, a build's in its build directory.
fn is_sandbox_bundle(cmdline: &str) -> bool {
    let host_driver = format!("{}/nixspawn-test.", std::env::temp_dir().display());
    cmdline.contains("-nixspawn/bin/")
        || (cmdline.contains("nixspawn_test_driver") && !cmdline.contains(&host_driver))
        || cmdline.contains("-python3/bin/")
}

/// Network namespaces held by a process of the runs here (by its
/// descriptor or as its own): none may outlive a build.
fn netns_of_runs() -> Vec<String> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // Ours only: other tests run nixspawn with store paths in its argv
        // at the same time (the NixOS-shaped guests).
        if !(cmdline.contains("s15-") || is_sandbox_bundle(&cmdline)) {
            continue;
        }
        let mut links = vec![p.path().join("ns/net")];
        if let Ok(fds) = std::fs::read_dir(p.path().join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for l in links {
            if let Ok(t) = std::fs::read_link(&l)
                && t.to_string_lossy().starts_with("net:[")
            {
                found.push(format!("{} held by {cmdline}", t.display()));
            }
        }
    }
    found
}

/// Loop devices with a backing file (none of ours should stay).
fn loop_devices() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let f = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Some(format!("{} {}", e.file_name().to_string_lossy(), f.trim()))
        })
        .collect();
    found.sort();
    found
}

/// State directories of our machines in the host's /run/nixspawn.
fn run_state_of_ours() -> Vec<String> {
    std::fs::read_dir("/run/nixspawn")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("s15-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `nix-build cases.nix -A ATTR` in the sandbox fixture: (status, log).
fn nix_build(attr: &str, binds: &[String]) -> (i32, String) {
    let cmd = ["nix-build", "/src/cases.nix", "--no-out-link", "-A", attr];
    in_nix_builder(&cmd, binds)
}

/// `nix-build cases.nix -A ATTR`, then what the output holds: the store
/// path on a line `OUT=PATH`, the listing of $out and $out/logs, JUnit.
fn nix_build_showing_out(attr: &str, binds: &[String]) -> (i32, String) {
    let script = format!(
        "o=$(nix-build /src/cases.nix --no-out-link -A {attr}) || exit $?; \
         echo OUT=$o; ls $o $o/logs; echo JUNIT-BEGIN; cat $o/junit.xml; echo; echo JUNIT-END"
    );
    in_nix_builder(&["sh", "-c", &script], binds)
}

/// A command in the Nix builder fixture (run.sh): (status, output).
fn in_nix_builder(argv: &[&str], binds: &[String]) -> (i32, String) {
    let mut cmd = Command::new(repo().join("integration/nix-sandbox/run.sh"));
    cmd.env("NIXSPAWN_BIN_DIR", bin_dir());
    cmd.arg("--bind").arg(format!(
        "{}:/src",
        repo().join("integration/nix-sandbox").display()
    ));
    for b in binds {
        cmd.arg("--bind").arg(b);
    }
    cmd.args(argv);
    let out = cmd.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), log)
}

/// nextest runs tests in parallel processes: one test of this file at a
/// time, or another's scratch directory, guests or namespaces (all named
/// s15-) count as ours between the snapshots.
fn one_at_a_time() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::File::create("/var/cache/nixspawn/fixtures/.lock-nix-sandbox-test").unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// Build `attr`, check nothing stays behind, return (status, log).
fn build_leaving_nothing(attr: &str, binds: &[String]) -> (i32, String) {
    leaving_nothing(|| nix_build(attr, binds))
}

/// Run `build`, check nothing stays behind, return what it returned.
fn leaving_nothing(build: impl FnOnce() -> (i32, String)) -> (i32, String) {
    let _held = one_at_a_time();
    let before = host_traces();
    let loops = loop_devices();
    let (code, log) = build();
    let after = host_traces();
    assert_eq!(before.0, after.0, "host mounts changed:\n{log}");
    assert_eq!(before.1, after.1, "host cgroups changed:\n{log}");
    assert_eq!(before.2, after.2, "scratch directories left:\n{log}");
    for name in [
        "s15-cmd",
        "s15-fail",
        "s15-top",
        "s15-boot",
        "s15-idy",
        "s15-two-a",
        "s15-two-b",
        "s15-two-c",
        "s15-twof-a",
        "s15-twof-b",
        "s15-dn-m",
    ] {
        assert!(
            processes_naming(name).is_empty(),
            "processes of {name} left"
        );
    }
    assert_eq!(sandbox_processes(), Vec::<String>::new(), "{log}");
    assert_eq!(netns_of_runs(), Vec::<String>::new(), "{log}");
    assert_eq!(loops, loop_devices(), "loop devices changed:\n{log}");
    assert_eq!(run_state_of_ours(), Vec::<String>::new(), "{log}");
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
    // Obstacle 10: the build's no_new_privs and seccomp filter stay on
    // the guest (nixspawn's filter stacks on Nix's), and it still runs.
    let status_line = |key: &str| {
        log.lines()
            .find_map(|l| l.split_once(key).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_default()
    };
    assert_eq!(status_line("NoNewPrivs:"), "1", "{log}");
    assert_eq!(status_line("Seccomp:"), "2", "{log}");
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

#[test]
fn default_nix_gives_run_test_and_run_in_sandbox() {
    privileged!();
    require_root();
    let binds = [format!("{}:/repo", repo().display())];
    for (attr, want) in [
        ("test", "DEFAULT-NIX-TEST-OK"),
        ("script", "DEFAULT-NIX-SCRIPT-OK"),
    ] {
        let (code, log) = leaving_nothing(|| {
            let argv = [
                "nix-build",
                "/src/default-nix.nix",
                "--no-out-link",
                "-A",
                attr,
            ];
            in_nix_builder(&argv, &binds)
        });
        assert_eq!(code, 0, "{log}");
        assert!(has_line(&log, want), "{log}");
    }
}

/// The bookworm tree as /guest of the builder, for the two-node tests.
fn bookworm_guest() -> Vec<String> {
    vec![format!("{}:/guest", tree("bookworm").display())]
}

#[test]
fn a_multi_node_nixspawn_test_builds_as_a_derivation() {
    privileged!();
    require_root();
    let binds = bookworm_guest();
    let (code, log) = leaving_nothing(|| nix_build_showing_out("twoNodesAndToplevel", &binds));
    assert_eq!(code, 0, "{log}");
    // Each node reached the other by name over the vlan (two-nodes.py).
    assert!(has_line(&log, "a resolves b to 192.168.1.2"), "{log}");
    assert!(has_line(&log, "a got from b: hello from b"), "{log}");
    assert!(has_line(&log, "b got from a: hello from a"), "{log}");
    // The third node, a toplevel from its closure (--closure-file from
    // exportReferencesGraph), ran its init as PID 1.
    assert!(
        has_line(&log, "c # hello from toplevel init, PID 1"),
        "{log}"
    );
    assert!(has_line(&log, "c says hello from its toplevel"), "{log}");
    assert!(log.contains("nixspawn-test: passed"), "{log}");
    // Both nodes booted systemd in the build (their console lines).
    assert!(log.contains("a # ") && log.contains("b # "), "{log}");
    // $out: the run's log, the status, the console logs, the timeline and
    // JUnit with the subtest passed.
    for f in [
        "log",
        "status",
        "junit.xml",
        "a.console.log",
        "b.console.log",
        "c.console.log",
        "timeline.svg",
    ] {
        assert!(has_line(&log, f), "{f} not in $out:\n{log}");
    }
    let junit = log
        .split("JUNIT-BEGIN")
        .nth(1)
        .and_then(|j| j.split("JUNIT-END").next())
        .unwrap_or_default();
    assert!(junit.contains("<testsuite"), "{log}");
    assert!(junit.contains("b reaches a"), "{junit}");
    assert!(
        junit.contains("a toplevel node from its closure"),
        "{junit}"
    );
    assert!(!junit.contains("<failure"), "{junit}");
}

#[test]
fn a_failing_two_node_test_fails_the_build_with_its_line() {
    privileged!();
    require_root();
    let binds = bookworm_guest();
    let (code, log) = leaving_nothing(|| nix_build("twoNodesFailing", &binds));
    assert_ne!(code, 0, "{log}");
    // The driver's frame of the failing line, and its exception.
    assert!(
        log.lines().any(|l| l.starts_with("!!! ")
            && l.contains("test-script.py:6:")
            && l.ends_with(r#"a.succeed("test -e /FAILING-LINE-s15-two")"#)),
        "{log}"
    );
    assert!(
        log.contains("command `test -e /FAILING-LINE-s15-two` failed (exit code 1)"),
        "{log}"
    );
    assert!(
        log.contains("nixspawn-test two-nodes-failing failed with status 1"),
        "{log}"
    );
    assert!(log.contains("builder failed with exit code 1"), "{log}");
    assert!(!log.contains("not reached"), "{log}");
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
    let _held = one_at_a_time();
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
    let _held = one_at_a_time();
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

/// Run in a guest: nixspawn (the binaries under test, bound in at
/// /nixspawn-bin) with a command payload on a busybox tree made there,
/// in the guest's user namespace ("plain") and in one of its own
/// ("userns": identity, the one range that fits in the guest's 65536).
const NESTED_NIXSPAWN: &str = r#"
mkdir -p /tmp/bb/bin /tmp/bb/usr /tmp/bb/etc
cp /bin/busybox /tmp/bb/bin/
for a in sh cat echo; do ln -sf busybox /tmp/bb/bin/$a; done
inner() {
  tag=$1; shift
  /nixspawn-bin/nixspawn --pipe --register=no -M s15-inner "$@" -D /tmp/bb /bin/sh -c "echo $tag: hello from the nested guest, PID \$\$; echo $tag: uid_map \$(cat /proc/self/uid_map)" 2>/tmp/inner.err
  echo "$tag: exit $?"
  echo "$tag: stderr $(grep -v -e Spawning -e 'exited successfully' /tmp/inner.err)"
}
inner plain
inner userns -U --private-users=identity
"#;

/// Boot the sid tree (-U, a network namespace of its own: the inner
/// launcher's sysfs needs one its user namespace owns) with `extra`, run
/// NESTED_NIXSPAWN in it; its output, everything checked gone.
fn nested_nixspawn(extra: &[&str]) -> String {
    let _held = one_at_a_time();
    let tree = nix_tree();
    let name = unique_name("s15-nns");
    let bind = format!("--bind-ro={}:/nixspawn-bin", bin_dir().display());
    let mut args = vec!["-x", "-b", "-U", "--private-network", &bind];
    args.extend_from_slice(extra);
    let mut g = Guest::start(&tree, &name, &args);
    g.wait_ready();
    let (_, out) = g.exec(&["/bin/sh", "-c", NESTED_NIXSPAWN]);
    g.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(g.wait_exit(std::time::Duration::from_secs(30)), 0);
    assert_cleaned_up(&name, None);
    assert!(processes_naming("s15-inner").is_empty());
    out
}

fn field<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_default()
        .trim()
}

/// Both inner launches worked: PID 1 said hello, plain in the outer
/// guest's user namespace (a range of the host's ids), userns in an
/// identity map inside it.
fn assert_both_nested_guests_ran(out: &str) {
    for tag in ["plain", "userns"] {
        assert_eq!(field(out, &format!("{tag}: exit ")), "0", "{out}");
        assert!(
            out.contains(&format!("{tag}: hello from the nested guest, PID 1")),
            "{out}"
        );
    }
    let plain: Vec<&str> = field(out, "plain: uid_map").split_whitespace().collect();
    assert!(
        plain.len() == 3 && plain[0] == "0" && plain[1] != "0",
        "{out}"
    );
    let userns: Vec<&str> = field(out, "userns: uid_map").split_whitespace().collect();
    assert_eq!(userns, ["0", "0", "65536"], "{out}");
}

#[test]
fn nixspawn_runs_guests_inside_a_guest_with_nested_sandbox() {
    privileged!();
    require_root();
    assert_both_nested_guests_ran(&nested_nixspawn(&["--nested-sandbox"]));
}

/// Unlike Nix's sandbox, nixspawn in a guest needs no --nested-sandbox:
/// it makes its mount namespace while still in the guest's user
/// namespace, where the /proc masks are not locked, and mounts its procfs
/// there, even for a guest with a user namespace of its own.
#[test]
fn nixspawn_inside_a_guest_needs_no_nested_sandbox() {
    privileged!();
    require_root();
    assert_both_nested_guests_ran(&nested_nixspawn(&[]));
}

/// In a guest that shares its host's network namespace (no
/// --private-network), nixspawn cannot mount a sysfs: the kernel lets
/// only the user namespace owning the network namespace (here the host's)
/// do that. The inner launcher says so in one line, with the fix, rather
/// than a bare "Operation not permitted" (both for a guest in the outer
/// guest's user namespace and one in its own); with the fix it names, the
/// same inner launches run. Command-mode outer guests of the bookworm
/// tree, -U as a Nix builder's.
#[test]
fn nested_nixspawn_without_a_network_of_its_own_says_why_sysfs_fails() {
    privileged!();
    require_root();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static");
    let script = format!(
        "mkdir -p /tmp/bb/bin /tmp/bb/usr /tmp/bb/etc; cp /busybox /tmp/bb/bin/; \
         for a in sh echo; do ln -sf busybox /tmp/bb/bin/$a; done
         for tag in plain userns; do
           extra=; [ $tag = userns ] && extra='-U --private-users=identity'
           /nixspawn-bin/nixspawn -q --pipe --register=no -M {0}-$tag $extra -D /tmp/bb \
             /bin/sh -c 'echo ran' >/tmp/out 2>/tmp/err
           echo \"$tag: exit $? out $(cat /tmp/out) lines $(wc -l </tmp/err)\"
           echo \"$tag: err $(cat /tmp/err)\"
         done",
        unique_name("s6-sysfs")
    );
    let run = |network: &[&str]| {
        let name = unique_name("s6-sysfs-outer");
        let mut args = vec![
            "-q".to_owned(),
            "--register=no".into(),
            "--pipe".into(),
            "-M".into(),
            name.clone(),
            "-x".into(),
            "-U".into(),
        ];
        args.extend(network.iter().map(|s| s.to_string()));
        args.extend([
            "-D".into(),
            tree("bookworm").to_string_lossy().into_owned(),
            format!("--bind-ro={}:/nixspawn-bin", bin_dir().display()),
            format!("--bind-ro={busybox}:/busybox"),
            "/bin/sh".into(),
            "-c".into(),
            script.clone(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run_nixspawn(&args, "");
        assert_eq!(code, 0, "{err}");
        assert_cleaned_up(&name, None);
        eprintln!("{network:?}:\n{out}");
        out
    };
    let out = run(&[]);
    for tag in ["plain", "userns"] {
        assert_eq!(
            field(&out, &format!("{tag}: exit ")),
            "1 out  lines 1",
            "{out}"
        );
        let err = field(&out, &format!("{tag}: err "));
        assert!(
            err.contains("mounting sysfs")
                && err.contains("network namespace")
                && err.contains("--private-network or --network-veth"),
            "{tag}: {err}"
        );
    }
    let out = run(&["--private-network"]);
    for tag in ["plain", "userns"] {
        assert_eq!(
            field(&out, &format!("{tag}: exit ")),
            "0 out ran lines 0",
            "{out}"
        );
    }
}
