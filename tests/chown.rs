//! Privileged: `--private-users-ownership=chown` shifts a tree's ownership
//! on disk as host root, so it must never reach outside the tree: not
//! through a symlink or a directory swapped for one while it walks, not
//! into a mount inside the tree; and a run killed mid-walk must be
//! finished by the next run, not taken as done.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A 64K-aligned range of our own for explicit --private-users=SHIFT.
fn shift_for(salt: u32) -> u32 {
    0x1000_0000 + ((std::process::id() * 7 + salt) % 0x2000) * 0x1_0000
}

fn run_chowned(tree: &Path, name: &str, shift: u32) -> (i32, String) {
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            "--pipe",
            "-M",
            name,
            "-D",
            tree.to_str().unwrap(),
            &format!("--private-users={shift}"),
            "--private-users-ownership=chown",
            "/bin/true",
        ],
        "",
    );
    (code, err)
}

/// Host files the tree must never reach, with their ownership and mode
/// as they were (setuid, to see a chmod through a link too).
struct Victims {
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl Victims {
    fn new(names: &[String]) -> Victims {
        let dir = tempfile::Builder::new()
            .prefix("nixspawn-host-victim-")
            .tempdir()
            .unwrap();
        for n in names {
            let p = dir.path().join(n);
            std::fs::write(&p, "host file\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
        }
        Victims {
            dir,
            names: names.to_vec(),
        }
    }

    fn assert_untouched(&self) {
        for n in &self.names {
            let m = std::fs::symlink_metadata(self.dir.path().join(n)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (0, 0, 0o4755),
                "host file {n} was changed by the chown of a tree"
            );
        }
    }
}

#[test]
fn chown_never_follows_a_symlink_out_of_the_tree() {
    privileged!();
    let tree = busybox_tree();
    let victims = Victims::new(&["target".into()]);
    let victim = victims.dir.path().join("target");
    std::os::unix::fs::symlink(&victim, tree.path().join("etc/link-to-host")).unwrap();
    std::os::unix::fs::symlink(victims.dir.path(), tree.path().join("dir-link-to-host")).unwrap();
    // A setuid file of the tree's, whose mode chown must put back.
    let suid = tree.path().join("usr/bin/suid");
    std::fs::write(&suid, "").unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();

    let shift = shift_for(1);
    let name = unique_name("chown-link");
    let (code, err) = run_chowned(tree.path(), &name, shift);
    victims.assert_untouched();
    assert_eq!(code, 0, "{err}");
    let link = std::fs::symlink_metadata(tree.path().join("etc/link-to-host")).unwrap();
    assert_eq!(
        link.uid(),
        shift,
        "the link itself is the tree's and shifted"
    );
    let m = std::fs::metadata(&suid).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (shift, 0o4755));
    assert_cleaned_up(&name, None);
}

/// The walk goes by path today: a directory of the tree swapped for a
/// symlink to a host directory while it is being walked sends every
/// later chown (and chmod) into the host directory. A local user who
/// owns a tree can do that at will.
#[test]
fn chown_is_not_redirected_by_a_directory_swapped_mid_walk() {
    privileged!();
    let tree = busybox_tree();
    let names: Vec<String> = (0..20_000).map(|i| format!("f{i:05}")).collect();
    let dir = tree.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    for n in &names {
        std::fs::write(dir.join(n), "").unwrap();
        std::fs::set_permissions(dir.join(n), std::fs::Permissions::from_mode(0o4755)).unwrap();
    }
    let victims = Victims::new(&names);

    // The racer: as soon as the walk has shifted a file of data/, put a
    // link to the host directory in data/'s place.
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let racer = {
        let (dir, host, done) = (dir.clone(), victims.dir.path().to_path_buf(), done.clone());
        std::thread::spawn(move || {
            let moved = dir.with_file_name("data.moved");
            while !done.load(Ordering::Relaxed) {
                let started = names_shifted(&dir, 64);
                if started {
                    std::fs::rename(&dir, &moved).unwrap();
                    std::os::unix::fs::symlink(&host, &dir).unwrap();
                    return true;
                }
                std::thread::yield_now();
            }
            false
        })
    };
    let shift = shift_for(2);
    let name = unique_name("chown-swap");
    let (code, err) = run_chowned(tree.path(), &name, shift);
    done.store(true, Ordering::Relaxed);
    let swapped = racer.join().unwrap();
    assert!(swapped, "the walk finished before the racer saw it start");
    victims.assert_untouched();
    assert_eq!(code, 0, "{err}");
    assert_cleaned_up(&name, None);
}

/// Whether any of the first `n` files (by name) of `dir` is no longer
/// owned by host root.
fn names_shifted(dir: &Path, n: usize) -> bool {
    (0..n).any(|i| {
        std::fs::symlink_metadata(dir.join(format!("f{i:05}"))).is_ok_and(|m| m.uid() != 0)
    })
}

/// A bind mount inside the tree shows host files of the same filesystem
/// (the same st_dev): still not the tree's to change.
#[test]
fn chown_stays_out_of_mounts_inside_the_tree() {
    privileged!();
    let tree = busybox_tree();
    let victims = Victims::new(&["mounted-file".into()]);
    let tmpfs_dir = tree.path().join("mnt/tmpfs");
    let bind_dir = tree.path().join("mnt/bind");
    std::fs::create_dir_all(&tmpfs_dir).unwrap();
    std::fs::create_dir_all(&bind_dir).unwrap();
    let mounts = HostMounts(vec![tmpfs_dir.clone(), bind_dir.clone()]);
    nix::mount::mount(
        Some("tmpfs"),
        &tmpfs_dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0755"),
    )
    .unwrap();
    std::fs::write(tmpfs_dir.join("on-tmpfs"), "").unwrap();
    nix::mount::mount(
        Some(victims.dir.path()),
        &bind_dir,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();

    let shift = shift_for(3);
    let name = unique_name("chown-mnt");
    let (code, err) = run_chowned(tree.path(), &name, shift);
    drop(mounts);
    victims.assert_untouched();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::metadata(tree.path().join("mnt")).unwrap().uid(),
        shift,
        "the tree's own directory is shifted"
    );
    assert_cleaned_up(&name, None);
}

/// Mounts the test made on the host, unmounted even if it fails.
struct HostMounts(Vec<PathBuf>);

impl Drop for HostMounts {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// SIGKILL during the walk of a big tree: the next run must finish it
/// (every file shifted, the root last), not take the tree as done.
#[test]
fn a_chown_killed_mid_walk_is_finished_by_the_next_run() {
    privileged!();
    let tree = busybox_tree();
    let mut files = Vec::new();
    for d in 0..40 {
        let dir = tree.path().join(format!("data/d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..2500 {
            let p = dir.join(format!("f{f:04}"));
            std::fs::write(&p, "").unwrap();
            files.push(p);
        }
    }
    let shift = shift_for(4);
    let name = unique_name("chown-kill");
    // A launcher killed this early leaves its scope's cgroup behind (the
    // janitor does not exist yet); not this test's subject, so tidy up.
    let _scope = LeftoverScope(format!("machine-{}.scope", name.replace('-', "\\x2d")));
    let mut launcher = Command::new(NIXSPAWN)
        .args(["-q", "--pipe", "-M", &name, "-D"])
        .arg(tree.path())
        .args([
            &format!("--private-users={shift}"),
            "--private-users-ownership=chown",
            "/bin/true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as the walk has visibly begun.
    let uid = |p: &Path| std::fs::symlink_metadata(p).map(|m| m.uid()).unwrap_or(0);
    let samples: Vec<&PathBuf> = files.iter().step_by(997).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while uid(tree.path()) != shift && samples.iter().all(|p| uid(p) != shift) {
        assert!(Instant::now() < deadline, "the walk never started");
        std::thread::sleep(Duration::from_micros(200));
    }
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let left = files.iter().filter(|p| uid(p) != shift).count();
    assert!(
        left > 0,
        "the walk finished before it could be killed; make the tree bigger"
    );

    let (code, err) = run_chowned(tree.path(), &name, shift);
    assert_eq!(code, 0, "{err}");
    let left: Vec<&PathBuf> = files.iter().filter(|p| uid(p) != shift).collect();
    assert!(
        left.is_empty(),
        "{} of {} files were never shifted after the second run, e.g. {}",
        left.len(),
        files.len(),
        left[0].display()
    );
    assert_eq!(uid(tree.path()), shift, "the root records the shift");

    // And on to another range: the tree moves as a whole.
    let other = shift_for(5);
    let (code, err) = run_chowned(tree.path(), &name, other);
    assert_eq!(code, 0, "{err}");
    assert!(files.iter().all(|p| uid(p) == other));
    assert_eq!(uid(tree.path()), other);
    assert_eq!(
        uid(&tree.path().join("usr/bin/busybox")),
        other,
        "root-owned files of the tree are the guest root's"
    );
    wait_for(
        "the killed launcher's leftovers to go",
        Duration::from_secs(15),
        || !Path::new("/run/nixspawn").join(&name).exists(),
    );
    assert_cleaned_up(&name, None);
}

/// Removes a machine's scope cgroup (and what is below it) on drop.
struct LeftoverScope(String);

impl Drop for LeftoverScope {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        let v2 = nixspawn_runtime::cgroup::hierarchy::v2_mount().unwrap();
        // Its mirror in the v1 devices hierarchy too, where there is one.
        let v1 = nixspawn_runtime::cgroup::devices::v1_hierarchy().map(|(mount, _)| mount);
        for slice in std::iter::once(v2)
            .chain(v1)
            .map(|m| m.join("machine.slice"))
        {
            remove(&slice.join(&self.0));
            let _ = std::fs::remove_dir(slice);
        }
    }
}
