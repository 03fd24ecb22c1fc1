//! --link-journal: the guest's /var/log/journal/MACHINE-ID as the host sees
//! it, checked from both sides with a busybox guest writing into it.

mod common;

use std::path::{Path, PathBuf};

/// A busybox tree with a machine id of its own, and that id.
fn tree_with_id() -> (tempfile::TempDir, String) {
    let tree = common::busybox_tree();
    let id = format!("{:032x}", rand_u128());
    std::fs::write(tree.path().join("etc/machine-id"), format!("{id}\n")).unwrap();
    (tree, id)
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u128::from_ne_bytes(b) | 1
}

/// The host side of the link for `id` (and /var/log/journal itself if the
/// host had none), removed however the test ends.
struct HostJournalDir {
    path: PathBuf,
    made_parent: bool,
}

impl HostJournalDir {
    fn new(id: &str) -> Self {
        let parent = Path::new("/var/log/journal");
        let made_parent = !parent.exists();
        std::fs::create_dir_all(parent).unwrap();
        HostJournalDir {
            path: parent.join(id),
            made_parent,
        }
    }
}

impl Drop for HostJournalDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
        if self.made_parent {
            let _ = std::fs::remove_dir("/var/log/journal");
        }
    }
}

fn write_from_guest(tree: &Path, id: &str, mode: &str) -> (i32, String, String) {
    let script = format!(
        "grep -c ' /var/log/journal/{id} ' /proc/self/mountinfo; echo from-guest > /var/log/journal/{id}/probe"
    );
    run_in_guest(tree, mode, &script)
}

fn write_from_guest_no_id(tree: &Path, mode: &str) -> (i32, String, String) {
    let script = "grep -c ' /var/log/journal/' /proc/self/mountinfo || true";
    run_in_guest(tree, mode, script)
}

/// A busybox shell script as the guest, with `--link-journal=mode`.
fn run_in_guest(tree: &Path, mode: &str, script: &str) -> (i32, String, String) {
    common::run_nixspawn(
        &[
            "-q",
            "--register=no",
            "-D",
            tree.to_str().unwrap(),
            &format!("--link-journal={mode}"),
            "/bin/sh",
            "-c",
            script,
        ],
        "",
    )
}

#[test]
fn host_mode_binds_the_hosts_directory() {
    common::privileged!();
    let (tree, id) = tree_with_id();
    let host = HostJournalDir::new(&id);
    let host_dir = host.path.clone();
    let (code, out, err) = write_from_guest(tree.path(), &id, "host");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1", "a bind mount at the guest's path: {out}");
    assert_eq!(
        std::fs::read_to_string(host_dir.join("probe")).unwrap(),
        "from-guest\n",
        "what the guest writes lands on the host"
    );
    assert!(
        !tree
            .path()
            .join("var/log/journal")
            .join(&id)
            .join("probe")
            .exists(),
        "not in the tree"
    );
}

#[test]
fn guest_mode_links_the_host_to_the_tree() {
    common::privileged!();
    let (tree, id) = tree_with_id();
    let host = HostJournalDir::new(&id);
    let host_link = host.path.clone();
    let (code, out, err) = write_from_guest(tree.path(), &id, "guest");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "0", "no mount in guest mode: {out}");
    let in_tree = tree.path().join("var/log/journal").join(&id);
    assert_eq!(std::fs::read_link(&host_link).unwrap(), in_tree);
    assert_eq!(
        std::fs::read_to_string(host_link.join("probe")).unwrap(),
        "from-guest\n",
        "the host reads the guest's journal through the link"
    );
}

#[test]
fn try_modes_and_auto_skip_what_they_cannot_do_and_strict_modes_say_why() {
    common::privileged!();
    let tree = common::busybox_tree();
    // No machine id in the tree: try-* and auto run without a link ...
    for mode in ["try-host", "try-guest", "auto", "no"] {
        let (code, out, err) = write_from_guest_no_id(tree.path(), mode);
        assert_eq!(code, 0, "{mode}: {err}");
        assert_eq!(out.trim(), "0", "{mode}: nothing mounted");
    }
    // ... host and guest refuse, naming the tree and the way out.
    for mode in ["host", "guest"] {
        let (code, _, err) = write_from_guest_no_id(tree.path(), mode);
        assert_eq!(code, 1, "{mode}");
        assert!(
            err.contains("--link-journal") && err.contains("no machine ID") && err.contains("try-"),
            "{mode}: {err}"
        );
    }
    let (code, _, err) = common::run_nixspawn(
        &[
            "-D",
            tree.path().to_str().unwrap(),
            "--link-journal=sometimes",
            "/bin/true",
        ],
        "",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("--link-journal") && err.contains("try-guest"),
        "{err}"
    );
}
