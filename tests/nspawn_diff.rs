//! Privileged: the differences a side-by-side run with systemd-nspawn 252
//! found (issue 16), each run on the same tree with the same argv under
//! both launchers, asserting the same answer. Where an answer holds
//! something random (a UUID, a name suffix) both are checked against the
//! rule instead.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

/// `beside` that must succeed; its stdout.
fn answer(launcher: &str, tree: &Path, args: &[&str], script: &str) -> String {
    answer_env(launcher, tree, args, &[], script)
}

fn answer_env(
    launcher: &str,
    tree: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    script: &str,
) -> String {
    let (code, out, err) = beside(launcher, tree, args, env, script);
    assert_eq!(code, 0, "{launcher} {args:?}: {err}\n{out}");
    out
}

/// Both launchers' answers, asserted equal.
fn same(tree: &Path, args: &[&str], script: &str) -> String {
    let ours = answer(NIXSPAWN, tree, args, script);
    let theirs = answer(NSPAWN, tree, args, script);
    assert_eq!(
        ours, theirs,
        "nixspawn and systemd-nspawn differ for {args:?}"
    );
    ours
}

/// The busybox tree with the few more applets these probes use.
fn tree() -> tempfile::TempDir {
    let tree = busybox_tree();
    for applet in ["sed", "readlink", "sort", "rm", "cut"] {
        std::os::unix::fs::symlink("busybox", tree.path().join("usr/bin").join(applet)).unwrap();
    }
    tree
}

/// Item 1: `$container_host_*` describe the host, not the guest, also
/// when the guest has an os-release of its own.
#[test]
fn the_host_identity_is_the_hosts_not_the_guests() {
    privileged!();
    require_nspawn();
    let tree = tree();
    std::fs::write(
        tree.path().join("etc/os-release"),
        "ID=guestos\nVERSION_ID=99\nBUILD_ID=guestbuild\n",
    )
    .unwrap();
    let out = same(
        tree.path(),
        &[],
        "echo id=$container_host_id version=$container_host_version_id build=$container_host_build_id",
    );
    let host = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap();
    let id = host
        .lines()
        .find_map(|l| l.strip_prefix("ID="))
        .unwrap()
        .trim_matches('"');
    assert!(out.starts_with(&format!("id={id} ")), "{out}");
    assert!(!out.contains("guest"), "{out}");
}

/// Item 2: a tree systemd-nspawn shifted with chown runs under -U as it
/// did under nspawn: owned by the guest's root, writable.
#[test]
fn a_tree_nspawn_shifted_runs_under_u_as_it_does_under_nspawn() {
    privileged!();
    require_nspawn();
    let tree = tree();
    answer(
        NSPAWN,
        tree.path(),
        &["--private-users=pick", "--private-users-ownership=chown"],
        "true",
    );
    let shift = std::fs::metadata(tree.path()).unwrap().uid();
    assert!(
        shift >= 0x80000 && shift.is_multiple_of(0x10000),
        "nspawn shifted it to {shift}"
    );
    let probe = "stat -c '%n %u:%g' / /etc /usr/bin/busybox; touch /new && stat -c '%n %u:%g' /new; rm /new; cat /proc/self/uid_map";
    let out = same(tree.path(), &["-U"], probe);
    assert!(
        out.contains("/etc 0:0") && out.contains("/new 0:0"),
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(tree.path()).unwrap().uid(),
        shift,
        "the tree stays in its range"
    );
}

/// Item 4: mount flags among --tmpfs options are flags, and a tmpfs gets
/// nodev (not nosuid) unless asked.
#[test]
fn tmpfs_options_take_mount_flags_and_default_to_nodev_only() {
    privileged!();
    require_nspawn();
    let tree = tree();
    for dir in ["var", "srv"] {
        std::fs::create_dir(tree.path().join(dir)).unwrap();
    }
    let out = same(
        tree.path(),
        &["--tmpfs=/var:rw,nosuid,noexec", "--tmpfs=/srv"],
        "for m in /var /srv; do grep \" $m \" /proc/self/mountinfo | sed 's/^[^ ]* [^ ]* [^ ]* [^ ]* \\([^ ]*\\) \\([^ ]*\\) .* - /\\1 \\2 /'; done; stat -c '%n %a' /var /srv",
    );
    assert_eq!(
        out,
        "/var rw,nosuid,nodev,noexec tmpfs tmpfs rw\n/srv rw,nodev tmpfs tmpfs rw,mode=755\n/var 1777\n/srv 755\n"
    );
}

/// Item 5: `rootidmap` without a user namespace shows the source's owner
/// as root (the host's, which is the guest's).
#[test]
fn rootidmap_without_a_user_namespace_maps_the_owner_to_root() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), "x").unwrap();
    std::os::unix::fs::chown(src.path(), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::chown(src.path().join("f"), Some(1234), Some(1234)).unwrap();
    let bind = format!("--bind={}:/m:rootidmap", src.path().display());
    let out = same(tree.path(), &[&bind], "stat -c '%n %u:%g' /m /m/f");
    assert_eq!(out, "/m 0:0\n/m/f 0:0\n");
    let bind = format!("--bind={}:/m:idmap", src.path().display());
    let (code, _, err) = beside(NIXSPAWN, tree.path(), &[&bind], &[], "true");
    assert_eq!(code, 1);
    assert!(err.contains("idmap needs a user namespace"), "{err}");
}

/// Item 6: the tree's own machine-id wins over --uuid.
#[test]
fn the_trees_machine_id_wins_over_uuid() {
    privileged!();
    require_nspawn();
    let tree = tree();
    std::fs::write(
        tree.path().join("etc/machine-id"),
        "fedcba9876543210fedcba9876543210\n",
    )
    .unwrap();
    let out = same(
        tree.path(),
        &["--uuid=0123456789abcdef0123456789abcdef"],
        "echo $container_uuid",
    );
    assert_eq!(out, "fedcba98-7654-3210-fedc-ba9876543210\n");
}

/// Item 7: `-x` without `-M` names the machine after the tree plus a
/// random suffix, so two run from one tree at once.
#[test]
fn two_ephemeral_runs_of_one_tree_run_at_once() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let base = tree
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for launcher in [NIXSPAWN, NSPAWN] {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let path = tree.path().to_owned();
                std::thread::spawn(move || {
                    beside(launcher, &path, &["-x"], &[], "sleep 1; hostname")
                })
            })
            .collect();
        let mut names = Vec::new();
        for r in runs {
            let (code, out, err) = r.join().unwrap();
            assert_eq!(code, 0, "{launcher}: {err}");
            let name = out.trim().to_owned();
            let suffix = name
                .strip_prefix(&format!("{base}-"))
                .unwrap_or_else(|| panic!("{launcher}: {name}"));
            assert!(
                suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
                "{launcher}: {name}"
            );
            names.push(name);
        }
        assert_ne!(names[0], names[1], "{launcher}");
    }
}

/// Items 8, 9, 10, 13: the API filesystems' limits, /proc/kmsg, no
/// /dev/console without a console, /dev/char, /run/host/incoming and the
/// flags of what is bound in of the host.
#[test]
fn api_filesystems_match_nspawns() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let limits = "for m in /tmp /dev /dev/shm /run; do grep \" $m \" /proc/self/mountinfo | sed 's/^[^ ]* [^ ]* [^ ]* [^ ]* \\([^ ]*\\) \\([^ ]*\\) .* - /\\1 \\2 /'; done";
    let out = same(tree.path(), &[], limits);
    for want in [
        "/tmp rw,nosuid,nodev tmpfs tmpfs rw,size=",
        "nr_inodes=409600",
        "nr_inodes=819200,mode=755",
        "nr_inodes=65536,mode=755",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    // Item 9: a FIFO, not the host's kernel log, whatever the capabilities.
    for args in [&[][..], &["--capability=all"][..]] {
        let out = same(tree.path(), args, "stat -c '%n %F' /proc/kmsg");
        assert_eq!(out, "/proc/kmsg fifo\n");
    }
    // Item 10.
    let console = "test -e /dev/console && echo console || echo none";
    assert_eq!(same(tree.path(), &[], console), "none\n");
    // (Through the console's pty, whose line endings the launchers'
    // relays render differently: compared without them.)
    for launcher in [NIXSPAWN, NSPAWN] {
        let out = answer(launcher, tree.path(), &["--console=read-only"], console);
        assert_eq!(out.trim_end(), "console", "{launcher}");
    }
    // Item 13.
    let out = same(
        tree.path(),
        &[],
        "for n in 1:3 1:5 1:7 1:8 1:9 5:0; do echo $n $(readlink /dev/char/$n); done; stat -c '%n %F %a' /run/host/incoming",
    );
    assert_eq!(
        out,
        "1:3 ../null\n1:5 ../zero\n1:7 ../full\n1:8 ../random\n1:9 ../urandom\n5:0 ../tty\n/run/host/incoming directory 600\n"
    );
    for path in ["/run/host/os-release", "/proc/sys/kernel/random/boot_id"] {
        let script = format!("grep ' {path} ' /proc/self/mountinfo | cut -d' ' -f6");
        for launcher in [NIXSPAWN, NSPAWN] {
            let out = answer(launcher, tree.path(), &[], &script);
            assert!(
                out.lines().any(|l| l.starts_with("ro,nosuid,nodev,noexec")),
                "{launcher}: {path}: {out}"
            );
        }
    }
}

/// Item 11: `-E NAME` takes the launcher's value (empty when unset).
#[test]
fn setenv_without_a_value_passes_the_launchers_on() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let args = ["-E", "NIXSPAWN_T_SET", "-E", "NIXSPAWN_T_UNSET"];
    let env = [("NIXSPAWN_T_SET", "from the launcher")];
    let script = "tr '\\0' '\\n' < /proc/1/environ | grep ^NIXSPAWN_T_ | sort";
    let ours = answer_env(NIXSPAWN, tree.path(), &args, &env, script);
    let theirs = answer_env(NSPAWN, tree.path(), &args, &env, script);
    assert_eq!(ours, theirs);
    assert_eq!(
        ours,
        "NIXSPAWN_T_SET=from the launcher\nNIXSPAWN_T_UNSET=\n"
    );
}

/// Item 12: a bare `--private-users` is `yes` (the range from the tree's
/// owner: identity for a root-owned tree).
#[test]
fn a_bare_private_users_means_yes() {
    privileged!();
    require_nspawn();
    let tree = tree();
    let out = same(tree.path(), &["--private-users"], "cat /proc/self/uid_map");
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields, ["0", "0", "65536"]);
}
