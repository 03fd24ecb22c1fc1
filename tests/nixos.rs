//! Privileged: NixOS toplevels with a closure-only /nix/store — the tiny
//! busybox toplevel and the stage-2 one that execs systemd — ephemeral and
//! persistent, live update, and bad input.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the tiny init's `report` printed, parsed.
struct Report {
    entries: BTreeSet<String>,
    profile: String,
    mounts: Vec<String>,
    store_writable: bool,
    path_writable: bool,
}

fn report(args: &[&str]) -> Report {
    let mut full = vec!["-q", "--pipe"];
    full.extend_from_slice(args);
    full.push("report");
    let (code, out, err) = run_nixspawn(&full, "");
    assert_eq!(code, 0, "{args:?}: {err}");
    let section = |name: &str| -> Vec<String> {
        out.lines()
            .skip_while(|l| *l != name)
            .skip(1)
            .take_while(|l| !l.ends_with(':') || l.contains(' '))
            .map(String::from)
            .collect()
    };
    let entries = section("entries:")
        .into_iter()
        .take_while(|l| !l.starts_with("profile:"))
        .collect();
    let profile = out
        .lines()
        .find_map(|l| l.strip_prefix("profile: "))
        .unwrap_or_default()
        .to_owned();
    let mounts = section("mounts:")
        .into_iter()
        .filter(|l| l.contains(" /nix/store"))
        .collect();
    Report {
        entries,
        profile,
        mounts,
        store_writable: out.contains("store-writable"),
        path_writable: out.contains("path-writable"),
    }
}

fn assert_closure_only(r: &Report, toplevel: &str, fx: &NixosFixtures) {
    assert_eq!(
        r.entries,
        closure_names(toplevel),
        "the guest's /nix/store is exactly the closure"
    );
    for decoy in &fx.decoys {
        assert!(
            !r.entries.contains(decoy.trim_start_matches("/nix/store/")),
            "decoy {decoy} is visible"
        );
    }
    assert_eq!(
        r.profile, toplevel,
        "/nix/var/nix/profiles/system points at the toplevel"
    );
    assert_eq!(
        r.mounts.len(),
        1,
        "the store is one overlay mount, whatever the closure: {:?}",
        r.mounts
    );
    assert!(
        r.mounts[0].contains(" - overlay nixspawn-store "),
        "{:?}",
        r.mounts
    );
    for m in &r.mounts {
        let opts = m.split(' ').nth(5).unwrap();
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "store mount is not read-only: {m}"
        );
    }
    assert!(
        !r.store_writable,
        "a new entry could be created in /nix/store"
    );
    assert!(!r.path_writable, "a store path could be written to");
}

#[test]
fn tiny_toplevel_sees_exactly_its_closure_ephemeral_and_persistent() {
    privileged!();
    let fx = nixos();
    let r = report(&["--toplevel", &fx.tiny]);
    assert_closure_only(&r, &fx.tiny, &fx);

    let state = tempfile::tempdir().unwrap();
    let r = report(&["-D", state.path().to_str().unwrap(), "--toplevel", &fx.tiny]);
    assert_closure_only(&r, &fx.tiny, &fx);
    // What the guest wrote to its root stays; the store was only mounted.
    let profile = std::fs::read_link(state.path().join("nix/var/nix/profiles/system")).unwrap();
    assert_eq!(profile, Path::new(&fx.tiny));
    let store_dir = state.path().join("nix/store");
    assert_eq!(
        std::fs::read_dir(&store_dir).unwrap().count(),
        0,
        "nothing of the store is left in the state directory"
    );
    assert!(
        !host_mounts()
            .iter()
            .any(|m| m.contains(state.path().to_str().unwrap())),
        "no mount left on the host"
    );
}

#[test]
fn closure_file_shared_store_and_extra_binds() {
    privileged!();
    let fx = nixos();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store-paths");
    let paths: Vec<String> = closure_names(&fx.tiny)
        .into_iter()
        .map(|n| format!("/nix/store/{n}"))
        .collect();
    std::fs::write(&file, paths.join("\n") + "\n").unwrap();
    let r = report(&[
        "--toplevel",
        &fx.tiny,
        "--closure-file",
        file.to_str().unwrap(),
    ]);
    assert_closure_only(&r, &fx.tiny, &fx);

    let r = report(&["--toplevel", &fx.tiny, "--shared-store"]);
    for decoy in &fx.decoys {
        assert!(
            r.entries.contains(decoy.trim_start_matches("/nix/store/")),
            "--shared-store shows the whole store"
        );
    }
    assert!(!r.path_writable, "the shared store is read-only too");

    let bind = format!("--bind-ro={}", fx.decoys[0]);
    let r = report(&["--toplevel", &fx.tiny, &bind]);
    let mut expected = closure_names(&fx.tiny);
    expected.insert(fx.decoys[0].trim_start_matches("/nix/store/").to_owned());
    assert_eq!(
        r.entries, expected,
        "--bind-ro adds exactly that store path"
    );
    assert!(!r.store_writable);
}

fn systemd_toplevel_boots(persistent: bool) {
    let fx = nixos();
    let name = unique_name(if persistent {
        "nixos-persist"
    } else {
        "nixos-eph"
    });
    let state = tempfile::tempdir().unwrap();
    let mut args = vec!["--toplevel", fx.systemd.as_str()];
    if persistent {
        args.extend(["-D", state.path().to_str().unwrap()]);
    }
    let mut guest = Guest::launch(std::process::Command::new(NIXSPAWN), &name, &args);
    guest.wait_ready();
    let (_, state_text) = guest.exec(&["systemctl", "is-system-running", "--wait"]);
    let failed = guest.sh("systemctl list-units --failed --plain --no-legend --no-pager");
    assert_eq!(state_text.trim(), "running", "failed units:\n{failed}");
    let entries: BTreeSet<String> = guest
        .sh("ls -A /nix/store")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        entries,
        closure_names(&fx.systemd),
        "the store is exactly the closure"
    );
    assert_eq!(
        guest.sh("readlink /run/current-system").trim(),
        fx.systemd,
        "stage 2 linked the system"
    );
    assert_eq!(guest.sh("cat /proc/1/comm").trim(), "systemd");
    let leader = leader_of(&name);
    guest.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(guest.wait_exit(BOOT_TIMEOUT), 0, "{}", guest.console());
    assert_cleaned_up(&name, Some(leader));
    if persistent {
        assert!(
            state.path().join("etc/static").is_symlink(),
            "the state directory kept what stage 2 made"
        );
        assert!(state.path().join("var/log").is_dir());
    }
}

#[test]
fn systemd_toplevel_boots_from_an_empty_root() {
    privileged!();
    systemd_toplevel_boots(false);
}

#[test]
fn systemd_toplevel_boots_in_a_state_directory() {
    privileged!();
    systemd_toplevel_boots(true);
}

#[test]
fn update_adds_the_new_closure_and_switches() {
    privileged!();
    let fx = nixos();
    let name = unique_name("update");
    let mut guest = Guest::launch(
        std::process::Command::new(NIXSPAWN),
        &name,
        &["--pipe", "--toplevel", &fx.tiny],
    );
    wait_for("the guest to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    let out = ctl_update(&name, &fx.tiny2, &["--action", "test", "--json"]);
    assert!(
        out.status.success(),
        "update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let added: BTreeSet<String> = report["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = closure_names(&fx.tiny2)
        .difference(&closure_names(&fx.tiny))
        .cloned()
        .collect();
    assert_eq!(added, expected, "exactly the missing paths were mounted");
    assert_eq!(report["switch_status"], 0);

    let (code, out) = guest.exec(&["/nix/var/nix/profiles/system/init", "report"]);
    assert_eq!(code, 0, "{out}");
    let entries: BTreeSet<String> = out
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("profile:"))
        .map(String::from)
        .collect();
    let union: BTreeSet<String> = closure_names(&fx.tiny)
        .union(&closure_names(&fx.tiny2))
        .cloned()
        .collect();
    assert_eq!(
        entries, union,
        "old and new closures are in the store, nothing else"
    );
    assert!(out.contains(&format!("profile: {}", fx.tiny2)), "{out}");
    assert!(
        out.contains("store-readonly"),
        "the store is read-only again: {out}"
    );
    let tiny2_name = fx.tiny2.trim_start_matches("/nix/store/");
    let switched = guest.exec(&[
        &format!("{}/bin/busybox", busybox_store_path(&fx.tiny)),
        "cat",
        &format!("/run/switched-to-{tiny2_name}"),
    ]);
    assert_eq!(
        switched,
        (0, "test\n".to_owned()),
        "the new switch-to-configuration ran with the action asked for"
    );
    guest.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 0);
}

fn busybox_store_path(toplevel: &str) -> String {
    let name = closure_names(toplevel)
        .into_iter()
        .find(|n| n.ends_with("-busybox-static"))
        .unwrap();
    format!("/nix/store/{name}")
}

#[test]
fn bad_toplevels_fail_clearly_and_leave_nothing() {
    privileged!();
    let fx = nixos();
    let scratch = tempfile::tempdir().unwrap();
    let not_in_store = scratch.path().join("system");
    std::fs::create_dir_all(&not_in_store).unwrap();
    std::fs::write(not_in_store.join("init"), "#!/bin/sh\n").unwrap();
    // A path in the store that Nix never registered: no closure to be had.
    let unregistered = format!(
        "/nix/store/{}-nixspawn-test-unregistered-{}",
        "0".repeat(32),
        std::process::id()
    );
    std::fs::create_dir_all(&unregistered).unwrap();
    std::fs::copy(format!("{}/init", fx.tiny), format!("{unregistered}/init")).unwrap();
    let _cleanup = RemoveOnDrop(unregistered.clone().into());
    let wrong_file = scratch.path().join("paths");
    std::fs::write(&wrong_file, format!("{}\n", fx.decoys[0])).unwrap();
    let closure_file = format!("--closure-file={}", wrong_file.display());
    let busybox = busybox_store_path(&fx.tiny);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--toplevel", not_in_store.to_str().unwrap()],
            "is not a path in /nix/store",
        ),
        (
            vec!["--toplevel", "/nix/store/does-not-exist"],
            "No such file or directory",
        ),
        (vec!["--toplevel", &busybox], "has no executable init"),
        (
            vec!["--toplevel", &unregistered],
            "nix-store --query --requisites failed",
        ),
        (
            vec!["--toplevel", &fx.tiny, &closure_file],
            "does not contain the toplevel",
        ),
        (
            vec!["--shared-store", "-D", "/"],
            "only makes sense with --toplevel",
        ),
        (vec!["--toplevel", &fx.tiny, "-b"], "drop --boot"),
    ];
    for (args, needle) in cases {
        let name = unique_name("badtop");
        let mut full = vec!["-M", name.as_str()];
        full.extend_from_slice(&args);
        let (code, _, err) = run_nixspawn(&full, "");
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} does not mention {needle:?}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err:?}");
        assert_cleaned_up(&name, None);
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A nix-daemon for the test's duration where the host runs none (a CI
/// machine without systemd starts no daemon when nix-bin is installed).
struct Daemon(Option<std::process::Child>);

impl Daemon {
    fn ensure() -> Daemon {
        let socket = Path::new("/nix/var/nix/daemon-socket/socket");
        if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Daemon(None);
        }
        let child = std::process::Command::new("nix-daemon")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nix-daemon (from nix-bin) starts");
        wait_for("nix-daemon's socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
        Daemon(Some(child))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn nix_daemon_passes_socket_and_read_only_database() {
    privileged!();
    let fx = nixos();
    let _daemon = Daemon::ensure();
    let name = unique_name("nixd");
    let mut guest = Guest::launch(
        std::process::Command::new(NIXSPAWN),
        &name,
        &["--pipe", "--toplevel", &fx.tiny, "--nix-daemon"],
    );
    wait_for("the guest to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    let bb = format!("{}/bin/busybox", busybox_store_path(&fx.tiny));
    let (code, out) = guest.exec(&[&bb, "sh", "-c", "grep -E ' /nix/var/nix/(db|daemon-socket) ' /proc/self/mountinfo; tr '\\0' '\\n' < /proc/1/environ"]);
    assert_eq!(code, 0, "{out}");
    let db = out
        .lines()
        .find(|l| l.contains(" /nix/var/nix/db "))
        .expect("the database is mounted");
    assert!(
        db.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"),
        "the database is read-only: {db}"
    );
    let sock = out
        .lines()
        .find(|l| l.contains(" /nix/var/nix/daemon-socket "))
        .expect("the socket directory is mounted");
    assert!(
        sock.split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "rw"),
        "the socket directory is usable: {sock}"
    );
    assert!(out.lines().any(|l| l == "NIX_REMOTE=daemon"), "{out}");
    guest.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 0);
}
