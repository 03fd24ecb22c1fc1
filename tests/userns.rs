//! Privileged: user namespaces — picked ranges and their locks, ownership
//! on disk with mapped and chowned trees, bind idmap options, booting the
//! sid guest and the NixOS toplevel under -U, and bad input.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const LOCK_DIR: &str = "/run/systemd/nspawn-uid";

fn uid_range_of(name: &str) -> (u32, u32) {
    let out = ctl(&["status", name, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v["uid_range"];
    (
        r["shift"].as_u64().expect("a uid range") as u32,
        r["range"].as_u64().unwrap() as u32,
    )
}

fn started(name: &str) {
    wait_for("the guest to start", Duration::from_secs(20), || {
        ctl(&["status", name]).status.success()
    });
}

#[test]
fn picked_ranges_differ_are_locked_and_released_even_after_sigkill() {
    privileged!();
    let tree = busybox_tree();
    // Both guests contend for one range for real: a tree owned by a shift
    // makes that shift the first candidate of every pick (the names'
    // hashes come only after it), so only the lock keeps them apart.
    let contended = 0x8_0000 + (std::process::id() % 0x6000) * 0x1_0000;
    std::os::unix::fs::chown(tree.path(), Some(contended), Some(contended)).unwrap();
    let (a, b) = (unique_name("pick-a"), unique_name("pick-b"));
    let mut ga = Guest::start(
        tree.path(),
        &a,
        &["-x", "-U", "--pipe", "/bin/sleep", "1000"],
    );
    let mut gb = Guest::start(
        tree.path(),
        &b,
        &["-x", "-U", "--pipe", "/bin/sleep", "1000"],
    );
    started(&a);
    started(&b);
    let (ra, rb) = (uid_range_of(&a), uid_range_of(&b));
    assert!(
        ra.0 == contended || rb.0 == contended,
        "neither guest got the tree's range {contended:#x}: {ra:?} {rb:?}"
    );
    assert_ne!(ra.0, rb.0, "two guests at once got the same range");
    for (name, (shift, range)) in [(&a, ra), (&b, rb)] {
        assert_eq!(range, 65536);
        assert!(
            (0x80000..=0x6FFF0000).contains(&shift) && shift % 65536 == 0,
            "{shift:#x}"
        );
        let (code, map) = Guest::exec_in(name, &["/bin/cat", "/proc/1/uid_map"]);
        assert_eq!(code, 0);
        let fields: Vec<&str> = map.split_whitespace().collect();
        assert_eq!(
            fields,
            ["0", &shift.to_string(), "65536"],
            "uid_map inside {name}"
        );
        assert!(
            Path::new(LOCK_DIR).join(shift.to_string()).exists(),
            "the range is locked while {name} runs"
        );
    }
    ga.signal(Signal::SIGTERM);
    ga.wait_exit(Duration::from_secs(10));
    assert!(
        !Path::new(LOCK_DIR).join(ra.0.to_string()).exists(),
        "lock released at exit"
    );
    gb.signal(Signal::SIGKILL);
    gb.wait_exit(Duration::from_secs(10));
    wait_for(
        "the janitor to release the range",
        Duration::from_secs(10),
        || !Path::new(LOCK_DIR).join(rb.0.to_string()).exists(),
    );
    assert_cleaned_up(&a, None);
    assert_cleaned_up(&b, None);
}

#[test]
fn mapped_tree_stays_host_owned_and_chowned_tree_is_shifted() {
    privileged!();
    // map (what -U's auto picks here): what the guest's root creates is
    // owned on disk by host root, and host root's files are the guest's root's.
    let tree = busybox_tree();
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "-U",
            "-D",
            tree.path().to_str().unwrap(),
            "--pipe",
            "/bin/sh",
            "-c",
            "touch /made-by-guest; stat -c %u /usr/bin/busybox",
        ],
        "",
    );
    assert_eq!((code, out.trim()), (0, "0"), "{err}");
    let made = std::fs::metadata(tree.path().join("made-by-guest")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (0, 0),
        "created through the idmapped mount as host root"
    );
    assert_eq!(
        std::fs::metadata(tree.path().join("usr/bin/busybox"))
            .unwrap()
            .uid(),
        0,
        "the tree is untouched"
    );

    // chown: the tree is shifted once, on disk, and new files land shifted.
    let tree = busybox_tree();
    let shift: u32 = 0x5A5A_0000;
    let users = format!("--private-users={shift}");
    let d = tree.path().to_str().unwrap();
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            &users,
            "--private-users-ownership=chown",
            "-D",
            d,
            "--pipe",
            "/bin/sh",
            "-c",
            "touch /made; stat -c %u /usr/bin/busybox",
        ],
        "",
    );
    assert_eq!((code, out.trim()), (0, "0"), "{err}");
    assert_eq!(
        std::fs::metadata(tree.path()).unwrap().uid(),
        shift,
        "the tree's root is shifted"
    );
    assert_eq!(
        std::fs::symlink_metadata(tree.path().join("usr/bin/busybox"))
            .unwrap()
            .uid(),
        shift
    );
    assert_eq!(
        std::fs::metadata(tree.path().join("made")).unwrap().uid(),
        shift,
        "new files land shifted"
    );
    // Recorded by the root's owner: a second run does not walk the tree again.
    std::os::unix::fs::lchown(tree.path().join("usr/bin/sh"), Some(0), Some(0)).unwrap();
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            &users,
            "--private-users-ownership=chown",
            "-D",
            d,
            "--pipe",
            "/bin/true",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::symlink_metadata(tree.path().join("usr/bin/sh"))
            .unwrap()
            .uid(),
        0,
        "not redone"
    );
}

#[test]
fn bind_mounts_noidmap_idmap_and_rootidmap() {
    privileged!();
    let tree = busybox_tree();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("file"), "x").unwrap();
    std::os::unix::fs::chown(src.path().join("file"), Some(4321), Some(4321)).unwrap();
    std::fs::write(src.path().join("rootfile"), "y").unwrap();
    std::os::unix::fs::chown(src.path(), Some(4321), Some(4321)).unwrap();
    let s = src.path().display();
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "-U",
            "-x",
            "-D",
            tree.path().to_str().unwrap(),
            "--pipe",
            &format!("--bind-ro={s}:/plain"),
            &format!("--bind-ro={s}:/mapped:idmap"),
            &format!("--bind-ro={s}:/rooted:rootidmap"),
            "/bin/sh",
            "-c",
            "stat -c %u /plain/file /plain/rootfile /mapped/file /mapped/rootfile /rooted /rooted/rootfile",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        ids,
        ["65534", "65534", "4321", "0", "0", "65534"],
        "noidmap: host ids show as nobody; idmap: 0..65535 map; rootidmap: the owner is root"
    );
}

#[test]
fn debian_guests_and_nixos_toplevel_boot_under_userns() {
    privileged!();
    let fx = nixos();
    let (sid, bookworm) = (tree("sid"), tree("bookworm"));
    for (name, args) in [
        (
            unique_name("u-bookworm"),
            vec![
                "-x".to_owned(),
                "-U".into(),
                "-b".into(),
                "-D".into(),
                bookworm.display().to_string(),
            ],
        ),
        (
            unique_name("u-sid"),
            vec![
                "-x".to_owned(),
                "-U".into(),
                "-b".into(),
                "-D".into(),
                sid.display().to_string(),
            ],
        ),
        (
            unique_name("u-nixos"),
            vec!["-U".to_owned(), format!("--toplevel={}", fx.systemd)],
        ),
    ] {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut guest = Guest::launch(Command::new(NIXSPAWN), &name, &argv);
        guest.wait_ready();
        let (shift, _) = uid_range_of(&name);
        assert_eq!(
            guest.sh("systemctl is-system-running --wait").trim(),
            "running",
            "{name}"
        );
        let map: Vec<String> = guest
            .sh("cat /proc/1/uid_map")
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(map, ["0".to_owned(), shift.to_string(), "65536".into()]);
        assert_eq!(
            guest.sh("stat -c %u /usr/bin/env").trim(),
            "0",
            "the OS's files are the guest root's"
        );
        guest.signal(Signal::SIGTERM);
        assert_eq!(
            guest.wait_exit(Duration::from_secs(60)),
            0,
            "{}",
            guest.console()
        );
        assert!(!Path::new(LOCK_DIR).join(shift.to_string()).exists());
        assert_cleaned_up(&name, None);
    }
}

/// A ramfs does not take idmapped mounts: a tree on one, unmounted on drop.
struct RamfsTree {
    dir: tempfile::TempDir,
}

impl Drop for RamfsTree {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn bad_userns_input_is_refused_and_leaves_nothing() {
    privileged!();
    let tree = busybox_tree();
    let d = tree.path().to_str().unwrap();
    let name = unique_name("bad-userns");
    for (arg, needle) in [
        ("--private-users=131073", "multiples of 65536"),
        ("--private-users=131072:1000", "multiples of 65536"),
        (
            "--private-users=sideways",
            "expected no, yes, pick, identity or SHIFT[:RANGE]",
        ),
        (
            "--private-users-ownership=sideways",
            "expected off, chown, map or auto",
        ),
    ] {
        let (code, _, err) = run_nixspawn(&["-q", "-M", &name, "-D", d, arg, "/bin/true"], "");
        assert_eq!(code, 1, "{arg}: {err}");
        assert!(err.contains(needle), "{arg}: {err}");
    }

    // A fixed range that overlaps one in use.
    let shift = 0x6A6A_0000u32;
    let holder = unique_name("range-holder");
    let users = format!("--private-users={shift}:131072");
    let mut guest = Guest::start(
        tree.path(),
        &holder,
        &["-x", &users, "--pipe", "/bin/sleep", "1000"],
    );
    started(&holder);
    let overlapping = format!("--private-users={}", shift + 65536);
    let (code, _, err) = run_nixspawn(
        &["-q", "-M", &name, "-x", "-D", d, &overlapping, "/bin/true"],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains("overlaps one in use"), "{err}");
    assert!(
        Path::new(LOCK_DIR).join(shift.to_string()).exists(),
        "the holder's lock is untouched"
    );
    guest.signal(Signal::SIGKILL);
    guest.wait_exit(Duration::from_secs(10));

    // A filesystem that refuses idmapped mounts: map fails, auto falls back.
    let ram = RamfsTree {
        dir: tempfile::tempdir().unwrap(),
    };
    nix::mount::mount(
        Some("ramfs"),
        ram.dir.path(),
        Some("ramfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{d}/."))
        .arg(ram.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let r = ram.dir.path().to_str().unwrap();
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            "-M",
            &name,
            "-D",
            r,
            "-U",
            "--private-users-ownership=map",
            "/bin/true",
        ],
        "",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("refuses idmapped mounts") && err.contains("--private-users-ownership=chown"),
        "{err}"
    );
    // Without -q, which silences informational lines like this one.
    let (code, _, err) = run_nixspawn(&["-M", &name, "-D", r, "-U", "--pipe", "/bin/true"], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("shifting the tree's ownership with chown instead"),
        "auto says it falls back: {err}"
    );
    assert_cleaned_up(&name, None);
    assert_cleaned_up(&holder, None);
}

struct StopOnDrop(
    std::process::Child,
    Option<std::path::PathBuf>,
    std::path::PathBuf,
);

/// Stops a background systemd-nspawn however the test ends: SIGTERM first,
/// so it releases its range lock (it has no cleanup after SIGKILL), then
/// SIGKILL and removal of whatever lock file it left.
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        for _ in 0..200 {
            if self.0.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(lock) = &self.1 {
            let _ = std::fs::remove_file(lock);
        }
        remove_nspawn_leftovers(&self.2);
    }
}

#[test]
fn a_range_systemd_nspawn_picked_is_not_handed_out_again() {
    privileged!();
    let tree = busybox_tree();
    let locks = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(LOCK_DIR)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = locks();
    let unit = UnitCgroup::new("nspawn-unit");
    let nspawn = unit
        .command("systemd-nspawn")
        .args(["-q", "-U", "--register=no", "--keep-unit", "-D"])
        .arg(tree.path())
        .args(["/bin/sleep", "1000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("systemd-nspawn is missing: apt-get install systemd-container");
    let mut nspawn = StopOnDrop(nspawn, None, tree.path().to_path_buf());
    // Its range, from its guest's own uid_map (other tests take and drop
    // ranges meanwhile, so a new lock file alone does not say whose it is).
    let mut taken = String::new();
    wait_for(
        "systemd-nspawn to lock a range",
        Duration::from_secs(20),
        || {
            taken = guest_shift_below(&unit.path)
                .map(|s| s.to_string())
                .filter(|s| locks().contains(s) && !before.contains(s))
                .unwrap_or_default();
            !taken.is_empty()
        },
    );
    nspawn.1 = Some(Path::new(LOCK_DIR).join(&taken));
    let other = busybox_tree();
    let users = format!("--private-users={taken}");
    let name = unique_name("after-nspawn");
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            "-M",
            &name,
            "-D",
            other.path().to_str().unwrap(),
            &users,
            "/bin/true",
        ],
        "",
    );
    assert_eq!(
        code, 1,
        "nixspawn took the range systemd-nspawn holds: {err}"
    );
    assert!(err.contains("overlaps one in use"), "{err}");
    assert_cleaned_up(&name, None);
    drop(nspawn);
    assert!(
        !Path::new(LOCK_DIR).join(&taken).exists(),
        "systemd-nspawn's lock is gone again"
    );
}

#[test]
fn reboot_under_userns_boots_again_with_fresh_mounts_and_cgroup() {
    privileged!();
    let bookworm = tree("bookworm");
    let name = unique_name("u-reboot");
    let mut guest = Guest::start(&bookworm, &name, &["-x", "-U", "-b"]);
    guest.wait_ready();
    let first = leader_of(&name);
    assert!(ctl(&["reboot", &name]).status.success());
    wait_for("the guest to come back", Duration::from_secs(60), || {
        ctl(&["status", &name, "--json"]).status.success() && leader_of(&name) != first
    });
    guest.wait_ready();
    // A second boot needs a new idmapped root and a delegated payload cgroup.
    assert_eq!(
        guest.sh("systemctl is-system-running --wait").trim(),
        "running",
        "{}",
        guest.console()
    );
    assert_eq!(guest.sh("stat -c %u /usr/bin/env").trim(), "0");
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(60)), 0);
    assert_cleaned_up(&name, None);
}

#[test]
fn update_under_userns_maps_the_new_store_paths_too() {
    privileged!();
    let fx = nixos();
    let name = unique_name("u-update");
    let mut guest = Guest::launch(
        Command::new(NIXSPAWN),
        &name,
        &["--pipe", "-U", "--toplevel", &fx.tiny],
    );
    started(&name);
    let out = ctl(&["update", &name, "--toplevel", &fx.tiny2, "--action", "test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let busybox = closure_names(&fx.tiny)
        .into_iter()
        .find(|n| n.ends_with("-busybox-static"))
        .unwrap();
    let bb = format!("/nix/store/{busybox}/bin/busybox");
    let script = format!("stat -c %u {} {}", fx.tiny, fx.tiny2);
    let (code, out) = Guest::exec_in(&name, &[&bb, "sh", "-c", &script]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0", "0"],
        "old and new store paths both belong to the guest's root"
    );
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 0);
    assert_cleaned_up(&name, None);
}

/// The host id a user namespace maps root to, for any process in the
/// cgroup `dir` or below that runs in one.
fn guest_shift_below(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let here = procs.lines().find_map(|pid| {
        let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?;
        let outside: u32 = map.split_whitespace().nth(1)?.parse().ok()?;
        (outside != 0).then_some(outside)
    });
    here.or_else(|| {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .find_map(|e| guest_shift_below(&e.path()))
    })
}

/// The payload's capability set is decided once: what PID 1 holds under a
/// user namespace (no CAP_NET_BIND_SERVICE on the host's network, as with
/// nspawn) is exactly what `nixspawnctl exec` gives a command, and what
/// the state records. Before the launch context, the state (and so exec)
/// kept CAP_NET_BIND_SERVICE that PID 1 had been denied.
#[test]
fn pid1_and_exec_hold_the_same_capabilities_under_userns() {
    privileged!();
    let tree = busybox_tree();
    for extra in [&[][..], &["--private-network"][..]] {
        let name = unique_name("capsame");
        let mut args = vec!["-U", "-x", "--pipe"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["/bin/sleep", "60"]);
        let mut guest = Guest::start(tree.path(), &name, &args);
        wait_for("the guest to start", Duration::from_secs(10), || {
            ctl(&["status", &name]).status.success()
        });
        let field = |status: &str, key: &str| -> u64 {
            let line = status
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("{key} in {status}"));
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        let (code, pid1) = guest.exec(&["/bin/cat", "/proc/1/status"]);
        assert_eq!(code, 0);
        let (code, own) = guest.exec(&["/bin/cat", "/proc/self/status"]);
        assert_eq!(code, 0);
        for key in ["CapBnd:", "CapEff:", "CapPrm:"] {
            assert_eq!(
                field(&pid1, key),
                field(&own, key),
                "{key} of PID 1 and of an exec'd command ({extra:?})"
            );
        }
        let net_bind = 1u64 << 10;
        assert_eq!(
            field(&pid1, "CapBnd:") & net_bind != 0,
            !extra.is_empty(),
            "CAP_NET_BIND_SERVICE only with a network of the guest's own"
        );
        let st: serde_json::Value =
            serde_json::from_slice(&ctl(&["status", &name, "--json"]).stdout).unwrap();
        assert_eq!(st["capabilities"].as_u64(), Some(field(&pid1, "CapBnd:")));
        guest.signal(Signal::SIGTERM);
        guest.wait_exit(Duration::from_secs(10));
    }
}
