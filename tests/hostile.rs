//! Privileged: trees that try to make the launcher touch the host through
//! symlinks. Each run must either work inside the tree or fail cleanly, and
//! a sentinel directory on the host must stay exactly as it was.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;

/// A host directory with one file, and a snapshot of everything in it.
struct Sentinel {
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn new() -> Sentinel {
        // Under /var/tmp: a symlink to it resolves, inside a tree, to the
        // tree's own var/tmp, which the guest sees (its /tmp is a tmpfs).
        let dir = tempfile::Builder::new()
            .prefix("nixspawn-sentinel-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::write(dir.path().join("precious"), "do not touch\n").unwrap();
        Sentinel { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                if meta.is_dir() {
                    out.insert(p.clone(), b"<dir>".to_vec());
                    walk(&p, out);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self.path(), &mut out);
        out
    }
}

/// Run nixspawn; the sentinel must be untouched and nothing left mounted.
fn run_against(tree: &Path, sentinel: &Sentinel, args: &[&str]) -> (i32, String, String) {
    let before = sentinel.snapshot();
    let mounts_before = host_mounts();
    let name = unique_name("hostile");
    let mut full = vec!["-q", "-M", name.as_str(), "-D", tree.to_str().unwrap()];
    full.extend_from_slice(args);
    let result = run_nixspawn(&full, "");
    assert_eq!(
        sentinel.snapshot(),
        before,
        "the host sentinel changed ({args:?}): {}",
        result.2
    );
    assert_eq!(host_mounts(), mounts_before, "a mount was left on the host");
    assert_cleaned_up(&name, None);
    result
}

#[test]
fn api_mount_points_symlinked_to_the_host() {
    privileged!();
    for point in ["run", "tmp", "dev", "proc", "sys"] {
        let tree = busybox_tree();
        let sentinel = Sentinel::new();
        symlink(sentinel.path(), tree.path().join(point)).unwrap();
        let (code, out, err) = run_against(
            tree.path(),
            &sentinel,
            &[
                "--pipe",
                "/bin/sh",
                "-c",
                "ls /proc/1 >/dev/null && echo alive",
            ],
        );
        // Contained: the setup resolves the link inside the tree and goes on.
        assert_eq!(
            (code, out.as_str()),
            (0, "alive\n"),
            "/{point} -> host: {err}"
        );
    }
}

#[test]
fn run_host_and_resolv_conf_links_are_harmless() {
    privileged!();
    let tree = busybox_tree();
    let sentinel = Sentinel::new();
    std::fs::create_dir_all(tree.path().join("run")).unwrap();
    symlink(sentinel.path(), tree.path().join("run/host")).unwrap();
    symlink(
        sentinel.path().join("precious"),
        tree.path().join("etc/resolv.conf"),
    )
    .unwrap();
    let (code, out, err) = run_against(
        tree.path(),
        &sentinel,
        &["--pipe", "/bin/sh", "-c", "cat /run/host/container-manager"],
    );
    assert_eq!((code, out.as_str()), (0, "systemd-nspawn\n"), "{err}");
}

#[test]
fn bind_target_symlinked_to_the_host_lands_inside_the_tree() {
    privileged!();
    let tree = busybox_tree();
    let sentinel = Sentinel::new();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("payload"), "bound\n").unwrap();
    symlink(sentinel.path(), tree.path().join("target")).unwrap();
    let bind = format!("--bind-ro={}:/target", source.path().display());
    let (code, out, err) = run_against(
        tree.path(),
        &sentinel,
        &[&bind, "--pipe", "/bin/cat", "/target/payload"],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "bound\n"),
        "the bind is where the guest's /target leads: {err}"
    );
    let file_target = format!(
        "--bind-ro={}:/target/precious",
        source.path().join("payload").display()
    );
    let (code, _, err) = run_against(
        tree.path(),
        &sentinel,
        &[&file_target, "--pipe", "/bin/true"],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn profile_directory_symlinked_to_the_host() {
    privileged!();
    let fx = nixos();
    let tree = tempfile::tempdir().unwrap();
    let sentinel = Sentinel::new();
    std::fs::create_dir_all(tree.path().join("nix/var/nix")).unwrap();
    symlink(sentinel.path(), tree.path().join("nix/var/nix/profiles")).unwrap();
    let (code, _, err) = run_against(
        tree.path(),
        &sentinel,
        &["--pipe", "--toplevel", &fx.tiny, "exit"],
    );
    assert_eq!(code, 0, "{err}");
    let inside = tree
        .path()
        .join(sentinel.path().strip_prefix("/").unwrap())
        .join("system");
    assert_eq!(
        std::fs::read_link(&inside).unwrap(),
        Path::new(&fx.tiny),
        "the profile link went into the tree"
    );
}

#[test]
fn machine_id_symlinked_to_a_host_file_is_not_read() {
    privileged!();
    let tree = busybox_tree();
    let sentinel = Sentinel::new();
    let host_id = "0123456789abcdef0123456789abcdef";
    std::fs::write(sentinel.path().join("machine-id"), format!("{host_id}\n")).unwrap();
    symlink(
        sentinel.path().join("machine-id"),
        tree.path().join("etc/machine-id"),
    )
    .unwrap();
    let (code, out, err) = run_against(
        tree.path(),
        &sentinel,
        &["--pipe", "/bin/sh", "-c", "echo $container_uuid"],
    );
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        out.trim().replace('-', ""),
        host_id,
        "the host's file was read through the tree's symlink"
    );
}

#[test]
fn init_symlink_loop_fails_cleanly() {
    privileged!();
    let tree = busybox_tree();
    let sentinel = Sentinel::new();
    std::fs::write(tree.path().join("etc/os-release"), "ID=hostile\n").unwrap();
    std::fs::create_dir_all(tree.path().join("usr/lib/systemd")).unwrap();
    std::fs::create_dir_all(tree.path().join("sbin")).unwrap();
    symlink("/sbin/init", tree.path().join("sbin/init-loop")).unwrap();
    symlink("/sbin/init-loop", tree.path().join("sbin/init")).unwrap();
    symlink(sentinel.path(), tree.path().join("usr/lib/systemd/systemd")).unwrap();
    let (code, _, err) = run_against(tree.path(), &sentinel, &["-b", "--pipe"]);
    assert_eq!(code, 1);
    assert!(err.contains("no init found"), "{err}");
}

/// The owner of a tree (any local user) swaps its /dev, /run, /tmp and
/// /proc back and forth with links to a host directory while nixspawn
/// sets it up (an atomic rename exchange, as fast as it goes). Whatever
/// the timing, nothing may be created, changed or mounted on the host:
/// mounts land on what was resolved, and what is made inside them goes
/// through their descriptors, never again through the tree's paths.
#[test]
fn a_tree_swapped_during_setup_cannot_redirect_anything_to_the_host() {
    privileged!();
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let tree = busybox_tree();
    let sentinel = Sentinel::new();
    let points = ["dev", "run", "tmp", "proc"];
    for p in points {
        std::fs::create_dir_all(tree.path().join(p)).unwrap();
        symlink(sentinel.path(), tree.path().join(format!("{p}.swap"))).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (root, stop) = (tree.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for p in points {
                    let (a, b) = (root.join(p), root.join(format!("{p}.swap")));
                    if nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        &a,
                        nix::fcntl::AT_FDCWD,
                        &b,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .is_ok()
                    {
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    let before = sentinel.snapshot();
    let mounts_before = host_mounts();
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let name = unique_name("swapped");
        let (code, _, err) = run_nixspawn(
            &[
                "-q",
                "-M",
                &name,
                "-D",
                tree.path().to_str().unwrap(),
                "--pipe",
                "/bin/true",
            ],
            "",
        );
        *outcomes
            .entry(if code == 0 { "ran".to_owned() } else { err })
            .or_insert(0) += 1;
        let after = sentinel.snapshot();
        if after != before {
            stop.store(true, Ordering::Relaxed);
            racer.join().unwrap();
            panic!(
                "the host sentinel changed: {:?}\n(outcomes so far: {outcomes:?})",
                after.keys().collect::<Vec<_>>()
            );
        }
        assert_eq!(host_mounts(), mounts_before, "a mount was left on the host");
        assert_cleaned_up(&name, None);
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    assert!(swaps > 1000, "the racer hardly ran ({swaps} swaps)");
    println!("{swaps} swaps; outcomes: {outcomes:?}");
}
