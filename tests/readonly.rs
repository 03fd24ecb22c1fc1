//! Privileged: what is read-only for the guest stays read-only. A
//! `--bind-ro` is read-only all the way down (mounts below its source
//! too), and under a user namespace the guest's root, even with every
//! capability, can neither remount the store (closure-only or shared),
//! a `--bind-ro` nor a store path `nixspawnctl update` added read-write:
//! those flags are set before its user namespace exists, so the kernel
//! locks them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// A host directory with a file and a tmpfs mounted below it (unmounted
/// and removed on drop).
struct SourceWithSubmount {
    dir: tempfile::TempDir,
}

impl SourceWithSubmount {
    fn new() -> SourceWithSubmount {
        let dir = tempfile::Builder::new()
            .prefix("nixspawn-ro-src-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("file"), "top\n").unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0777"),
        )
        .unwrap();
        std::fs::write(sub.join("file"), "sub\n").unwrap();
        SourceWithSubmount { dir }
    }

    fn sub(&self) -> PathBuf {
        self.dir.path().join("sub")
    }
}

impl Drop for SourceWithSubmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.sub(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn started(name: &str) {
    wait_for("the guest to start", Duration::from_secs(20), || {
        ctl(&["status", name]).status.success()
    });
}

/// Run `script` in the guest with busybox's sh; returns its output.
fn sh_in(name: &str, sh: &str, script: &str) -> String {
    let (_, out) = Guest::exec_in(name, &[sh, "sh", "-c", script]);
    out
}

/// Try to write below `dir` in the guest; "WROTE" if it worked.
fn write_attempt(dir: &str) -> String {
    format!("{{ echo x > {dir}/nixspawn-ro-probe; }} 2>/dev/null && echo WROTE:{dir}; ")
}

/// Try to remount `dir` read-write (the mount's own flag, as a guest's
/// root may try) and write; "REMOUNTED" / "WROTE" if it worked. Where the
/// mount shows host store files, only the remount is tried (and undone at
/// once): a test must not write into the host's store.
fn remount_attempt(dir: &str, write: bool) -> String {
    let after = if write {
        write_attempt(dir)
    } else {
        format!("mount -o remount,bind,ro {dir} 2>/dev/null; ")
    };
    format!("mount -o remount,bind,rw {dir} 2>/dev/null && echo REMOUNTED:{dir}; {after}")
}

#[test]
fn a_submount_below_a_bind_ro_source_is_read_only_too() {
    privileged!();
    let src = SourceWithSubmount::new();
    for opts in [&[][..], &["-U"][..]] {
        let tree = busybox_tree();
        let bind = format!("--bind-ro={}:/ro", src.dir.path().display());
        let mut args = vec!["-q", "--pipe", "-D", tree.path().to_str().unwrap(), &bind];
        args.extend_from_slice(opts);
        let script = format!(
            "cat /ro/file /ro/sub/file; {}{}true",
            write_attempt("/ro"),
            write_attempt("/ro/sub")
        );
        args.extend(["/bin/sh", "-c", &script]);
        let (code, out, err) = run_nixspawn(&args, "");
        assert_eq!(code, 0, "{opts:?}: {err}");
        assert!(
            !src.sub().join("nixspawn-ro-probe").exists() && !out.contains("WROTE"),
            "{opts:?}: the guest wrote through a --bind-ro: {out}"
        );
        assert_eq!(
            out, "top\nsub\n",
            "{opts:?}: the bind is there and readable"
        );
    }
}

#[test]
fn under_userns_even_a_guest_with_every_capability_cannot_make_them_writable() {
    privileged!();
    let fx = nixos();
    let src = SourceWithSubmount::new();
    let state = busybox_tree();
    let bb = busybox_of(&fx.tiny);
    for store in [&[][..], &["--shared-store"][..]] {
        let name = unique_name("ro-lock");
        let bind = format!("--bind-ro={}:/ro", src.dir.path().display());
        let mut args = vec![
            "--pipe",
            "-U",
            "--capability=all",
            "--toplevel",
            &fx.tiny,
            &bind,
        ];
        args.extend_from_slice(store);
        let mut guest = Guest::start(state.path(), &name, &args);
        started(&name);
        // The closure-only store is an overlay of its own (read-only down
        // to its superblock, writes cannot reach the host's store); the
        // shared one is the host's.
        let store_is_tmpfs = store.is_empty();
        let script = format!(
            "{}{}{}{}",
            remount_attempt("/nix/store", store_is_tmpfs),
            remount_attempt(&fx.tiny, false),
            remount_attempt("/ro", true),
            remount_attempt("/ro/sub", true)
        );
        let out = sh_in(&name, &bb, &script);
        guest.signal(Signal::SIGTERM);
        assert_eq!(guest.wait_exit(Duration::from_secs(10)), 0);
        assert_cleaned_up(&name, None);
        assert!(
            !out.contains("REMOUNTED") && !out.contains("WROTE"),
            "{store:?}: the guest's root made read-only mounts writable: {out}"
        );
        assert!(!src.sub().join("nixspawn-ro-probe").exists());
    }
}

#[test]
fn store_paths_added_by_update_under_userns_are_locked_read_only() {
    privileged!();
    let fx = nixos();
    let name = unique_name("ro-update");
    let mut guest = Guest::launch(
        Command::new(NIXSPAWN),
        &name,
        &["--pipe", "-U", "--capability=all", "--toplevel", &fx.tiny],
    );
    started(&name);
    let out = ctl(&["update", &name, "--toplevel", &fx.tiny2, "--action", "test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bb = busybox_of(&fx.tiny);
    let added: Vec<String> = closure_names(&fx.tiny2)
        .difference(&closure_names(&fx.tiny))
        .map(|n| format!("/nix/store/{n}"))
        .collect();
    assert!(!added.is_empty());
    let script: String = added
        .iter()
        .map(|p| {
            format!(
                "test -e {p} || echo MISSING:{p}; {}",
                remount_attempt(p, false)
            )
        })
        .collect::<String>()
        + &remount_attempt("/nix/store", true);
    let out = sh_in(&name, &bb, &script);
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 0);
    assert_cleaned_up(&name, None);
    assert!(!out.contains("MISSING"), "{out}");
    assert!(
        !out.contains("REMOUNTED") && !out.contains("WROTE"),
        "the guest's root made store paths writable (host store files!): {out}"
    );
}

/// The toplevel's busybox, as a path inside the guest.
fn busybox_of(toplevel: &str) -> String {
    let name = closure_names(toplevel)
        .into_iter()
        .find(|n| n.ends_with("-busybox-static"))
        .expect("a busybox in the closure");
    Path::new("/nix/store")
        .join(name)
        .join("bin/busybox")
        .display()
        .to_string()
}
