//! Privileged: systemd-nspawn's process options (issue 16, group A) —
//! `--user`, `--as-pid2`, `--rlimit` and the limits PID 1 gets without it,
//! `--oom-score-adjust`, `--cpu-affinity`, `--personality`,
//! `--ambient-capability`, `--suppress-sync`, and their `.nspawn` keys —
//! each run inside a guest under nixspawn and systemd-nspawn 252 with the
//! same tree and argv, asserting the same answer: what the payload (PID 1
//! in command mode) sees in /proc/self, from uname and id, and what its
//! system calls return. `--restrict-address-families` is newer than 252
//! and is checked against its own rule. Bad values are refused in one line.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A busybox tree with a user "tester" (1000:1000, also in group "extra"
/// 1001), a `getent` for systemd-nspawn (which resolves --user through the
/// guest's getent), and the static probe at /usr/bin/process-opts.
fn tree() -> tempfile::TempDir {
    let tree = busybox_tree();
    let root = tree.path();
    for applet in ["uname", "cut", "head", "sed"] {
        std::os::unix::fs::symlink("busybox", root.join("usr/bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:Tester:/home/tester:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\ntester:x:1000:\nextra:x:1001:tester\n",
    )
    .unwrap();
    // getent as nspawn calls it: "passwd NAME" and "initgroups NAME".
    let getent = root.join("usr/bin/getent");
    std::fs::write(
        &getent,
        "#!/bin/sh\n\
         case \"$1\" in\n\
         passwd) grep \"^$2:\" /etc/passwd ;;\n\
         initgroups) g=$(grep \"^$2:\" /etc/passwd | cut -d: -f4); \
         echo \"$2 $g $(grep \"[:,]$2\\(,\\|$\\)\" /etc/group | cut -d: -f3 | tr '\\n' ' ')\" ;;\n\
         *) exit 2 ;;\n\
         esac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&getent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    build_static(
        &root.join("usr/bin"),
        "process-opts.c",
        "process-opts",
        "the process-options probe",
    );
    tree
}

/// Both launchers give the same answer: printed, and returned.
fn both(tree: &Path, args: &[&str], script: &str) -> String {
    let out = same(tree, args, script);
    eprintln!("{args:?} -> {out}");
    out
}

/// Both launchers refuse `args` (exit status not 0), before the payload.
fn both_refuse(tree: &Path, args: &[&str]) -> (String, String) {
    let (code, out, ours) = beside(NIXSPAWN, tree, args, &[], "echo ran");
    assert!(
        code != 0 && !out.contains("ran"),
        "nixspawn {args:?}: {out}"
    );
    let (code, out, theirs) = beside(NSPAWN, tree, args, &[], "echo ran");
    assert!(code != 0 && !out.contains("ran"), "nspawn {args:?}: {out}");
    (ours, theirs)
}

/// Whether we (and so both launchers) hold CAP_SYS_RESOURCE.
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << 24) != 0 // CAP_SYS_RESOURCE
}

/// The lines of /proc/self/limits, the resource limits PID 1 got.
const LIMITS: &str = "cat /proc/self/limits";

#[test]
fn pid_1_gets_nspawns_resource_limits_and_rlimit_sets_them() {
    privileged!();
    require_nspawn();
    let tree = tree();
    // Without --rlimit: nspawn's defaults (RLIMIT_NOFILE 1024 with a
    // raised hard limit, core 0, ...), whatever the launcher's own are.
    let out = both(tree.path(), &[], LIMITS);
    assert!(out.contains("Max open files            1024"), "{out}");
    let out = both(
        tree.path(),
        &[
            "--rlimit=RLIMIT_NOFILE=100:200",
            "--rlimit=CORE=infinity",
            "--rlimit=RLIMIT_NICE=-5",
            "--rlimit=RLIMIT_AS=1G:infinity",
            "--rlimit=RLIMIT_NOFILE=300:400",
        ],
        LIMITS,
    );
    assert!(
        out.contains("Max open files            300                  400"),
        "the last use wins: {out}"
    );
    assert!(
        out.contains("Max address space         1073741824"),
        "{out}"
    );
    // Raising a hard limit (nice's from 0) takes CAP_SYS_RESOURCE; without
    // it both launchers keep the closest they may, as systemd does.
    let nice = if has_sys_resource() { "25" } else { "0 " };
    assert!(
        out.contains(&format!("Max nice priority         {nice}")),
        "{out}"
    );
}

#[test]
fn oom_score_cpu_affinity_and_personality_are_the_payloads() {
    privileged!();
    require_nspawn();
    let tree = tree();
    // Lowering it takes CAP_SYS_RESOURCE, which the launchers may lack
    // themselves (a CI runner's root, say): then both refuse.
    if has_sys_resource() {
        let out = both(
            tree.path(),
            &["--oom-score-adjust=-500"],
            "cat /proc/self/oom_score_adj",
        );
        assert_eq!(out.trim(), "-500");
    } else {
        let (ours, _) = both_refuse(tree.path(), &["--oom-score-adjust=-500"]);
        assert!(ours.contains("oom_score_adj"), "{ours}");
    }
    let out = both(
        tree.path(),
        &["--oom-score-adjust=321"],
        "cat /proc/self/oom_score_adj",
    );
    assert_eq!(out.trim(), "321");
    let out = both(
        tree.path(),
        &["--cpu-affinity=0"],
        "grep Cpus_allowed_list /proc/self/status",
    );
    assert!(out.trim().ends_with("\t0"), "{out}");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        let out = both(
            tree.path(),
            &["--cpu-affinity=1"],
            "grep Cpus_allowed_list /proc/self/status",
        );
        assert!(out.trim().ends_with("\t1"), "{out}");
    }
    let out = both(tree.path(), &["--personality=x86"], "uname -m");
    assert_eq!(out.trim(), "i686");
    let out = both(tree.path(), &["--personality=x86-64"], "uname -m");
    assert_eq!(out.trim(), "x86_64");
}

/// What a payload run as `--user` is: IDs, groups, environment,
/// capabilities, and the home made for it.
const WHO: &str = "id; echo HOME=$HOME USER=$USER LOGNAME=$LOGNAME; \
                   grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; \
                   stat -c '%n %u:%g %a' /home/tester";

#[test]
fn user_runs_the_payload_as_the_guests_user() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let out = both(tree.path(), &["-x", "--user=tester"], WHO);
    assert!(
        out.contains("uid=1000(tester) gid=1000(tester) groups=1000(tester),1001(extra)"),
        "{out}"
    );
    assert!(
        out.contains("HOME=/home/tester USER=tester LOGNAME=tester"),
        "{out}"
    );
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("/home/tester 1000:1000 755"), "{out}");
    // -u and the obsolete --uid are the same option; root is root.
    let short = both(tree.path(), &["-x", "-u", "tester"], WHO);
    assert_eq!(short, out);
    // --uid is older than 252 (which no longer takes it); ours still does.
    assert_eq!(
        answer(NIXSPAWN, tree.path(), &["-x", "--uid=tester"], WHO),
        out
    );
    let out = both(tree.path(), &["--user=root"], "id -u; echo $HOME");
    assert_eq!(out, "0\n/root\n");
    // A user the guest does not have: refused by both.
    both_refuse(tree.path(), &["--user=nosuch"]);
}

#[test]
fn ambient_capabilities_reach_a_non_root_payload_and_are_refused_with_boot() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let out = both(
        tree.path(),
        &[
            "-x",
            "--user=tester",
            "--capability=CAP_NET_RAW",
            "--ambient-capability=CAP_NET_RAW,CAP_CHOWN",
        ],
        WHO,
    );
    // CAP_CHOWN is bit 0, CAP_NET_RAW bit 13.
    assert!(out.contains("CapAmb:\t0000000000002001"), "{out}");
    assert!(out.contains("CapEff:\t0000000000002001"), "{out}");
    // As root, the ambient set comes on top of the full set.
    let out = both(
        tree.path(),
        &["--ambient-capability=CAP_CHOWN"],
        "grep -E '^CapAmb' /proc/self/status",
    );
    assert_eq!(out.trim(), "CapAmb:\t0000000000000001");
    // Not with -b, not "all", not beyond what the container keeps.
    let (ours, _) = both_refuse(tree.path(), &["-b", "--ambient-capability=CAP_CHOWN"]);
    assert_eq!(ours.trim().lines().count(), 1, "{ours}");
    assert!(ours.contains("--boot"), "{ours}");
    let (ours, _) = both_refuse(tree.path(), &["--ambient-capability=CAP_SYS_MODULE"]);
    assert!(ours.contains("CAP_SYS_MODULE"), "{ours}");
    let (ours, _) = both_refuse(tree.path(), &["--ambient-capability=all"]);
    assert!(ours.contains("all"), "{ours}");
}

#[test]
fn as_pid2_runs_the_payload_under_a_stub_init() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let script = "echo pid=$$ ppid=$PPID; cat /proc/1/comm; \
                  tr -s '\\0 ' '  ' < /proc/1/cmdline | sed 's/ *$//'; echo; \
                  sh -c 'exit 0' & wait; exit 7";
    for args in [&["-a"][..], &["--as-pid2", "--console=read-only"]] {
        let (code, ours, err) = beside(NIXSPAWN, tree.path(), args, &[], script);
        let (theirs_code, theirs, _) = beside(NSPAWN, tree.path(), args, &[], script);
        let (ours, theirs) = (
            console_text(ours.as_bytes()),
            console_text(theirs.as_bytes()),
        );
        eprintln!("{args:?} -> {code} {ours}");
        assert_eq!((code, &ours), (theirs_code, &theirs), "{args:?}: {err}");
        assert_eq!(code, 7, "the payload's exit status is the container's");
        assert!(
            ours.starts_with("pid=2 ppid=1\n(sd-stubinit)\n(sd-stubinit)\n"),
            "{ours}"
        );
    }
    // Deliberately better than nspawn 252 on a host whose root lacks
    // CAP_SYS_RESOURCE (as here): its stub cannot swap its environment
    // (PR_SET_MM), so /proc/1/environ shows the guest the launcher's
    // whole environment. Ours overwrites it in place: only $container
    // and $container_uuid, as nspawn means it to be.
    let env = answer(
        NIXSPAWN,
        tree.path(),
        &["-a"],
        "tr '\\0' '\\n' < /proc/1/environ | grep . | sed 's/=.*//'",
    );
    assert_eq!(env, "container\ncontainer_uuid\n");
    let (ours, _) = both_refuse(tree.path(), &["-a", "-b"]);
    assert_eq!(ours.trim().lines().count(), 1, "{ours}");
}

#[test]
fn suppress_sync_makes_sync_calls_no_ops_and_o_sync_opens_fail() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let plain = both(tree.path(), &["-x"], "process-opts");
    assert!(plain.contains("fsync(-1): EBADF"), "{plain}");
    assert!(plain.contains("open(O_SYNC): ok"), "{plain}");
    let out = both(tree.path(), &["-x", "--suppress-sync=yes"], "process-opts");
    assert!(plain.contains("fsync(pipe): EINVAL"), "{plain}");
    for line in [
        // A negative descriptor still gets the kernel's answer (252.39).
        "fsync(-1): EBADF",
        "fsync(pipe): ok",
        "fdatasync(pipe): ok",
        "sync_file_range(pipe, bad flags): ok",
        "msync(bad flags): ok",
        "open(O_SYNC): EINVAL",
        "open(O_DSYNC): EINVAL",
        "open(plain): ok",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let out = both(tree.path(), &["-x", "--suppress-sync=no"], "process-opts");
    assert_eq!(out, plain);
}

/// Not in systemd-nspawn 252 (262 has it): socket(2) of a family not
/// allowed fails with EAFNOSUPPORT; others work as before.
#[test]
fn restrict_address_families_refuses_other_sockets() {
    privileged!();
    let tree = tree();
    let run = |args: &[&str]| answer(NIXSPAWN, tree.path(), args, "process-opts");
    let out = run(&["--restrict-address-families=AF_UNIX AF_NETLINK"]);
    for line in [
        "socket(AF_UNIX): ok",
        "socket(AF_NETLINK): ok",
        "socket(AF_INET): EAFNOSUPPORT",
        "socket(AF_INET6): EAFNOSUPPORT",
        "socket(AF_PACKET): EAFNOSUPPORT",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let out = run(&["--restrict-address-families=~AF_INET6"]);
    assert!(out.contains("socket(AF_INET): ok"), "{out}");
    assert!(out.contains("socket(AF_INET6): EAFNOSUPPORT"), "{out}");
    let out = run(&["--restrict-address-families=none"]);
    assert!(out.contains("socket(AF_UNIX): EAFNOSUPPORT"), "{out}");
    assert!(out.contains("fsync(pipe): EINVAL"), "{out}");
}

/// The settings file beside the tree (`--settings=trusted` trusts it),
/// removed when dropped (also when the test fails).
struct SettingsFile(PathBuf);

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn settings_file(tree: &Path, text: &str) -> SettingsFile {
    let name = tree.file_name().unwrap().to_string_lossy().into_owned();
    let path = tree.parent().unwrap().join(format!("{name}.nspawn"));
    std::fs::write(&path, text).unwrap();
    SettingsFile(path)
}

#[test]
fn settings_file_keys_act_as_their_options_and_the_privileged_ones_need_trust() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let file = settings_file(
        tree.path(),
        "[Exec]\nUser=tester\nLimitNOFILE=123:456\nOOMScoreAdjust=200\nPersonality=x86\n\
         CPUAffinity=0\nSuppressSync=yes\n",
    );
    let probe = "id -u; uname -m; cat /proc/self/oom_score_adj; \
                 grep 'Max open files' /proc/self/limits; grep Cpus_allowed_list /proc/self/status; \
                 process-opts | grep 'fsync(pipe)'";
    let trusted = both(tree.path(), &["-x", "--settings=trusted"], probe);
    assert!(trusted.starts_with("1000\ni686\n200\n"), "{trusted}");
    assert!(trusted.contains("123                  456"), "{trusted}");
    assert!(trusted.contains("fsync(pipe): ok"), "{trusted}");
    // Untrusted: User=, Personality= and SuppressSync= still apply;
    // Limit*=, OOMScoreAdjust= and CPUAffinity= are ignored (warned about).
    let untrusted = both(tree.path(), &["-x"], probe);
    assert!(untrusted.starts_with("1000\ni686\n0\n"), "{untrusted}");
    assert!(untrusted.contains("1024 "), "{untrusted}");
    // The command line wins over the file.
    let out = both(
        tree.path(),
        &[
            "-x",
            "--settings=trusted",
            "--rlimit=RLIMIT_NOFILE=77:88",
            "--user=root",
        ],
        probe,
    );
    assert!(out.starts_with("0\n"), "{out}");
    assert!(out.contains("77                   88"), "{out}");
    drop(file);
}

#[test]
fn bad_values_are_refused_in_one_line_naming_option_and_value() {
    privileged!();
    let tree = tree();
    let dir = tree.path().to_string_lossy().into_owned();
    for (arg, needle) in [
        ("--rlimit=RLIMIT_BOGUS=1", "--rlimit"),
        ("--rlimit=RLIMIT_NOFILE=2:1", "RLIMIT_NOFILE=2:1"),
        ("--oom-score-adjust=2000", "2000"),
        ("--cpu-affinity=3-1", "3-1"),
        ("--personality=arm", "arm"),
        ("--ambient-capability=CAP_BOGUS", "CAP_BOGUS"),
        ("--restrict-address-families=AF_BOGUS", "AF_BOGUS"),
        ("--suppress-sync=maybe", "maybe"),
        (
            "--selinux-context=system_u:system_r:container_t:s0",
            "SELinux",
        ),
        ("-Lsystem_u:object_r:container_file_t:s0", "SELinux"),
        ("--slice=a--b", "a--b"),
        ("--property=Frobnicate=1", "Frobnicate"),
        ("--property=MemoryMax=lots", "lots"),
    ] {
        let (code, out, err) = run_nixspawn(&["-q", "--register=no", "-D", &dir, arg, "true"], "");
        assert_ne!(code, 0, "{arg}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{arg}: {err}");
        assert!(err.contains(needle), "{arg}: {err}");
    }
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            "--register=no",
            "--console=pipe",
            "-D",
            &dir,
            "--user=nosuch",
            "true",
        ],
        "",
    );
    assert_ne!(code, 0);
    assert!(err.contains("nosuch") && err.contains("--user"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Without systemd (this host): `--slice` places the guest's own scope
/// under that slice in our hierarchy, as systemd would nest it, and the
/// empty slices go with the guest; `--property` has no scope to act on
/// and is refused in one line. (On a systemd host both go to the scope
/// systemd makes: `StartTransientUnit`'s Slice= and the properties.)
#[test]
fn slice_places_the_scope_and_property_needs_a_systemd_host() {
    privileged!();
    if Path::new("/run/systemd/system").exists() {
        return skip("the host runs systemd: the scope is systemd's, tested in machined.rs");
    }
    let tree = tree();
    let dir = tree.path().to_string_lossy().into_owned();
    let name = unique_name("p16slice");
    let cgroups = nixspawn_runtime::cgroup::hierarchy::v2_mount().unwrap();
    let slice = cgroups.join("p16test.slice");
    let inner = slice.join("p16test-web.slice");
    // machine-NAME.scope, NAME escaped as systemd escapes it.
    let scope_of = || {
        std::fs::read_dir(&inner).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "scope"))
        })
    };
    let mut child = std::process::Command::new(NIXSPAWN)
        .args([
            "-q",
            "--register=no",
            "--console=pipe",
            "-M",
            &name,
            "-D",
            &dir,
        ])
        .args(["--slice=p16test-web", "/bin/sh", "-c", "sleep 2"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the scope under the slice",
        std::time::Duration::from_secs(20),
        || scope_of().is_some_and(|s| s.join("payload").is_dir()),
    );
    let scope = scope_of().unwrap();
    assert!(
        scope
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("machine-"),
        "{}",
        scope.display()
    );
    assert!(child.wait().unwrap().success());
    assert!(
        !scope.exists() && !slice.exists(),
        "{} left",
        slice.display()
    );

    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "--register=no",
            "--console=pipe",
            "-D",
            &dir,
            "--property=MemoryMax=1G",
            "/bin/sh",
            "-c",
            "echo ran",
        ],
        "",
    );
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("ran"));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--property") && err.contains("systemd"),
        "{err}"
    );
}

/// On a systemd host (the machined harness's bookworm "host" container,
/// systemd 252): `--slice` and `--property` reach the scope systemd makes,
/// the same under both launchers (integration/machined/slice.sh).
#[test]
fn slice_and_property_reach_the_scope_on_a_systemd_host() {
    privileged!();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/machined/run.sh");
    let out = std::process::Command::new(script)
        .args(["bookworm", NIXSPAWN])
        .env("NIXSPAWN_HARNESS_ONLY", "slice")
        .output()
        .expect("running integration/machined/run.sh");
    let log = String::from_utf8_lossy(&out.stdout);
    println!("{log}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        log.contains("== 0 failed checks"),
        "the slice scenario failed"
    );
    let passed = log.lines().filter(|l| l.starts_with("ok: ")).count();
    assert!(passed >= 3, "only {passed} checks passed");
}
