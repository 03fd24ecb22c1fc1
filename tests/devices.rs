//! Privileged: the guest's device policy. Like systemd-nspawn's scope
//! (DevicePolicy=closed), a guest may use the standard nodes, its ptys,
//! net/tun, fuse and device nodes bound in, and no other device: not a
//! host block device whose node it makes with mknod, nor one its tree
//! ships. nixspawn enforces this itself on every host, with or without a
//! user namespace, with every capability, across reboots and under
//! --keep-unit. The attack reads a host loop device holding a sentinel.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A host loop device over a file that starts with a sentinel string;
/// detached and removed on drop.
struct HostLoop {
    device: PathBuf,
    minor: u32,
    sentinel: String,
    _image: tempfile::NamedTempFile,
}

impl HostLoop {
    fn new() -> HostLoop {
        let sentinel = format!("HOST-DISK-SENTINEL-{}", std::process::id());
        let mut image = tempfile::NamedTempFile::new().unwrap();
        let mut data = sentinel.clone().into_bytes();
        data.resize(64 * 1024, 0);
        std::io::Write::write_all(&mut image, &data).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let minor = device
            .to_str()
            .unwrap()
            .trim_start_matches("/dev/loop")
            .parse()
            .unwrap();
        HostLoop {
            device,
            minor,
            sentinel,
            _image: image,
        }
    }

    /// Make a node for this device at `path` (readable by anyone).
    fn node_at(&self, path: &Path) {
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(7, u64::from(self.minor)),
        )
        .unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();
    }

    fn probe_args(&self, node: &str) -> Vec<String> {
        vec![
            "devices".into(),
            node.into(),
            "7".into(),
            self.minor.to_string(),
        ]
    }
}

impl Drop for HostLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
}

/// What the probe must report under the closed policy.
fn assert_closed(report: &str, disk: &HostLoop, node_in_tree: bool, what: &str) {
    assert!(
        !report.contains(&disk.sentinel),
        "{what}: the guest read the host's disk:\n{report}"
    );
    for allowed in ["write /dev/null", "read /dev/urandom", "pty"] {
        assert_eq!(line(report, allowed), "ok", "{what}: {allowed}\n{report}");
    }
    if node_in_tree {
        assert_eq!(
            line(report, "read node"),
            "EPERM",
            "{what}: the tree's node for the host's disk\n{report}"
        );
    }
    assert_eq!(
        line(report, "mknod block"),
        "EPERM",
        "{what}: mknod of the host's disk\n{report}"
    );
}

#[test]
fn guests_cannot_read_a_host_block_device() {
    privileged!();
    let disk = HostLoop::new();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());

    // A tree that ships a node for the host's disk.
    let variants: &[&[&str]] = &[
        &[],
        &["-U"],
        &["-x"],
        &["-x", "-U"],
        &["--capability=all"],
        &["-U", "--capability=all"],
    ];
    for opts in variants {
        let tree = busybox_tree();
        std::fs::copy(&probe, tree.path().join("probe")).unwrap();
        disk.node_at(&tree.path().join("disk"));
        let mut args = vec!["-q", "--pipe", "-D", tree.path().to_str().unwrap()];
        args.extend_from_slice(opts);
        args.push("/probe");
        let probe_args = disk.probe_args("/disk");
        args.extend(probe_args.iter().map(String::as_str));
        let (code, report, err) = run_nixspawn(&args, "");
        assert_eq!(code, 0, "{opts:?}: {err}");
        assert_closed(&report, &disk, true, &format!("busybox tree {opts:?}"));
    }

    // A real OS tree, ephemeral, its root making the node itself.
    let bookworm = tree("bookworm");
    let bind = format!("--bind-ro={}:/probe", probe.display());
    for opts in [&["-x"][..], &["-x", "--capability=all"], &["-x", "-U"]] {
        let mut args = vec!["-q", "--pipe", "-D", bookworm.to_str().unwrap(), &bind];
        args.extend_from_slice(opts);
        args.push("/probe");
        let probe_args = disk.probe_args("/nonexistent");
        args.extend(probe_args.iter().map(String::as_str));
        let (code, report, err) = run_nixspawn(&args, "");
        assert_eq!(code, 0, "{opts:?}: {err}");
        assert_closed(&report, &disk, false, &format!("bookworm {opts:?}"));
    }
}

#[test]
fn a_bound_device_node_is_allowed_read_only_as_bound() {
    privileged!();
    let disk = HostLoop::new();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    let tree = busybox_tree();
    std::fs::copy(&probe, tree.path().join("probe")).unwrap();
    let bind = format!("--bind-ro={}:/disk", disk.device.display());
    let probe_args = disk.probe_args("/disk");
    let mut args = vec!["-q", "--pipe", "-D", tree.path().to_str().unwrap(), &bind];
    args.push("/probe");
    args.extend(probe_args.iter().map(String::as_str));
    let (code, report, err) = run_nixspawn(&args, "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        line(&report, "read node"),
        format!(
            "ok {}{}",
            disk.sentinel,
            ".".repeat(47 - disk.sentinel.len())
        ),
        "a device bound in with --bind-ro is the guest's to read:\n{report}"
    );
}

#[test]
fn the_policy_holds_across_reboots_and_under_keep_unit() {
    privileged!();
    let disk = HostLoop::new();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    let bookworm = tree("bookworm");
    let bind = format!("--bind-ro={}:/probe", probe.display());
    let mut probe_argv = vec!["/probe".to_owned()];
    probe_argv.extend(disk.probe_args("/nonexistent"));
    let probe_argv: Vec<&str> = probe_argv.iter().map(String::as_str).collect();

    let name = unique_name("dev-reboot");
    let mut guest = Guest::start(&bookworm, &name, &["-x", "-b", &bind]);
    guest.wait_ready();
    let first = leader_of(&name);
    let (_, report) = guest.exec(&probe_argv);
    assert_closed(&report, &disk, false, "first boot");
    assert!(ctl(&["reboot", &name]).status.success());
    wait_for("the guest to come back after reboot", BOOT_TIMEOUT, || {
        ctl(&["status", &name, "--json"]).status.success() && leader_of(&name) != first
    });
    guest.wait_ready();
    let (_, report) = guest.exec(&probe_argv);
    assert_closed(&report, &disk, false, "after a reboot");
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(BOOT_TIMEOUT), 0);
    assert_cleaned_up(&name, None);

    // --keep-unit: the launcher runs in a unit's cgroup (payload and
    // supervisor below it), as under systemd-nspawn@.service.
    let unit = UnitCgroup::new("dev-unit");
    let name = unique_name("dev-keep");
    let mut guest = Guest::start_with(
        unit.command(NIXSPAWN),
        &bookworm,
        &name,
        &["-x", "-b", "--keep-unit", &bind],
    );
    guest.wait_ready();
    let (_, report) = guest.exec(&probe_argv);
    assert_closed(&report, &disk, false, "--keep-unit");
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(BOOT_TIMEOUT), 0);
    // The unit outlives the launcher; its processes are no guest's and
    // must not be left under the guest's policy.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec head -c {} {}",
            unit.path.display(),
            disk.sentinel.len(),
            disk.device.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        disk.sentinel,
        "the unit's cgroup still carries the guest's device policy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
