//! Privileged: boot the Debian bookworm (systemd 252) and sid (systemd
//! 26x) trees and check, from inside the guest, what systemd sees.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest reaches `running`, answers exec, and SIGTERM to the launcher
/// powers it off with exit status 0, leaving nothing behind.
fn boots_to_running_and_stops_on_sigterm(suite: &str) {
    let tree = tree(suite);
    let name = unique_name(&format!("boot-{suite}"));
    let mut guest = Guest::start(&tree, &name, &["-x", "-b"]);
    guest.wait_ready();
    let (_, state) = guest.exec(&["systemctl", "is-system-running", "--wait"]);
    let failed = guest.sh("systemctl list-units --failed --plain --no-legend --no-pager");
    assert_eq!(
        state.trim(),
        "running",
        "system state of {suite}; failed units:\n{failed}"
    );
    assert_eq!(
        guest.exec(&["/bin/sh", "-c", "exit 42"]).0,
        42,
        "exec returns the command's status"
    );
    let leader = leader_of(&name);

    guest.signal(Signal::SIGTERM);
    let code = guest.wait_exit(BOOT_TIMEOUT);
    assert_eq!(
        code,
        0,
        "launcher exit status after SIGTERM\n{}",
        guest.console()
    );
    let console = guest.console();
    assert!(
        console.contains("Welcome to"),
        "boot output is shown on the console:\n{console}"
    );
    assert!(
        console.contains("Halting system") || console.contains("System Halt"),
        "the guest halted:\n{console}"
    );
    assert_cleaned_up(&name, Some(leader));
}

/// What PID 1 sees: mounts, capabilities, cgroups, environment, /run/host.
fn guest_view_matches_the_container_interface(suite: &str) {
    let tree = tree(suite);
    let name = unique_name(&format!("view-{suite}"));
    let mut guest = Guest::start(&tree, &name, &["-x", "-b", "--hostname=viewhost"]);
    guest.wait_ready();

    let mountinfo = guest.sh("cat /proc/1/mountinfo");
    let mounts: HashMap<&str, (&str, &str)> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some((f[4], (f[5], f[sep + 1])))
        })
        .collect();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    let total = points.len();
    points.sort_unstable();
    points.dedup();
    assert_eq!(
        points.len(),
        total,
        "a mount point is stacked (shadowed copies):\n{mountinfo}"
    );
    let opts = |p: &str| {
        mounts
            .get(p)
            .unwrap_or_else(|| panic!("{p} is not a mount point:\n{mountinfo}"))
            .0
    };
    let fstype = |p: &str| mounts.get(p).unwrap().1;
    assert!(
        opts("/sys").split(',').any(|o| o == "ro"),
        "/sys is read-only"
    );
    assert!(
        opts("/proc/sys").split(',').any(|o| o == "ro"),
        "/proc/sys is read-only"
    );
    assert_eq!(
        fstype("/sys/fs/cgroup"),
        "cgroup2",
        "pure cgroup v2 at /sys/fs/cgroup"
    );
    assert!(
        opts("/sys/fs/cgroup").split(',').any(|o| o == "rw"),
        "the cgroup tree is the guest's to write"
    );
    for (path, fs) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
    ] {
        assert_eq!(fstype(path), fs, "{path}");
    }
    assert!(
        mountinfo
            .lines()
            .filter(|l| l.contains(" / ") && l.contains(" shared:"))
            .count()
            > 0,
        "/ is shared"
    );
    assert!(
        mounts.contains_key("/proc/kallsyms"),
        "/proc/kallsyms is masked"
    );
    assert_eq!(
        guest.sh("wc -c < /proc/kallsyms").trim(),
        "0",
        "the masked kallsyms is empty"
    );
    assert!(
        guest
            .exec(&["/bin/sh", "-c", "echo 1 > /proc/sys/kernel/domainname"])
            .0
            != 0,
        "/proc/sys writes fail"
    );

    // Capabilities: nspawn's 26 (minus any the host itself lacks).
    let bnd = cap_bnd(&guest.sh("cat /proc/1/status"));
    let host_bnd = cap_bnd(&std::fs::read_to_string("/proc/self/status").unwrap());
    let expected = nixspawn_runtime::spec::capabilities::mask(
        &nixspawn_runtime::spec::capabilities::guest_set(false),
    ) & host_bnd;
    assert_eq!(
        bnd, expected,
        "CapBnd of PID 1 is {bnd:x}, expected {expected:x}"
    );
    assert_eq!(bnd & (1 << 16), 0, "no CAP_SYS_MODULE");
    assert_eq!(
        bnd & (1 << 12),
        0,
        "no CAP_NET_ADMIN without a private network"
    );

    // cgroups: the guest sees only its own subtree; systemd made init.scope.
    assert_eq!(guest.sh("stat -f -c %T /sys/fs/cgroup").trim(), "cgroup2fs");
    assert_eq!(
        guest.sh("grep ^0:: /proc/1/cgroup").trim(),
        "0::/init.scope"
    );
    assert!(guest.sh("ls /sys/fs/cgroup").contains("system.slice"));

    // PID 1's environment and /run/host.
    let env = guest.sh("tr '\\0' '\\n' < /proc/1/environ");
    assert!(
        env.lines().any(|l| l == "container=systemd-nspawn"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "NOTIFY_SOCKET=/run/host/notify"),
        "{env}"
    );
    let uuid = env
        .lines()
        .find_map(|l| l.strip_prefix("container_uuid="))
        .expect("container_uuid set")
        .to_owned();
    assert_eq!(guest.sh("cat /run/host/container-uuid").trim(), uuid);
    assert_eq!(
        guest.sh("cat /run/host/container-manager").trim(),
        "systemd-nspawn"
    );
    assert_eq!(
        guest.sh("cat /etc/machine-id").trim(),
        uuid.replace('-', ""),
        "systemd took the machine id from container_uuid"
    );
    assert!(guest.sh("cat /run/host/os-release").contains("ID="));
    assert!(
        guest.exec(&["/bin/sh", "-c", "touch /run/host/x"]).0 != 0,
        "/run/host is read-only"
    );
    assert_eq!(guest.sh("hostname").trim(), "viewhost");
    assert_eq!(guest.sh("systemd-detect-virt").trim(), "systemd-nspawn");
    assert!(
        guest
            .sh("readlink -f /dev/console; ls -l /dev/console")
            .contains("/dev/console")
    );
    assert!(guest.sh("ls -l /dev/null").starts_with("crw-rw-rw-"));
    // PID namespace: the guest's PID 1 is systemd.
    assert_eq!(guest.sh("cat /proc/1/comm").trim(), "systemd");
}

/// `systemctl exit 7` makes the launcher exit 7.
fn exit_status_is_passed_through(suite: &str) {
    let tree = tree(suite);
    let name = unique_name(&format!("exit-{suite}"));
    let mut guest = Guest::start(&tree, &name, &["-x", "-b"]);
    guest.wait_ready();
    let leader = leader_of(&name);
    let _ = guest.exec(&["systemctl", "exit", "7"]);
    assert_eq!(guest.wait_exit(BOOT_TIMEOUT), 7, "{}", guest.console());
    assert_cleaned_up(&name, Some(leader));
}

/// `systemctl reboot` boots the guest again; under --keep-unit the
/// launcher exits 133 instead, for the unit to restart it.
fn reboot_restarts_or_exits_133(suite: &str) {
    let tree = tree(suite);
    let name = unique_name(&format!("reboot-{suite}"));
    let mut guest = Guest::start(&tree, &name, &["-x", "-b"]);
    guest.wait_ready();
    let first = leader_of(&name);
    let _ = guest.exec(&["systemctl", "reboot"]);
    wait_for("the guest to come back after reboot", BOOT_TIMEOUT, || {
        ctl(&["status", &name, "--json"]).status.success() && leader_of(&name) != first
    });
    guest.wait_ready();
    assert_eq!(
        guest.sh("systemctl is-system-running --wait").trim(),
        "running"
    );
    assert!(
        guest.child.is_some(),
        "the launcher kept running across the reboot"
    );
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(BOOT_TIMEOUT), 0);
    assert_cleaned_up(&name, None);

    // --keep-unit: run the launcher in a cgroup of its own, as a unit would.
    let unit_cgroup = UnitCgroup::new(&format!("{name}-unit"));
    let unit = unit_cgroup.path.clone();
    let cmd = unit_cgroup.command(NIXSPAWN);
    let mut guest = Guest::start_with(cmd, &tree, &name, &["-x", "-b", "--keep-unit"]);
    guest.wait_ready();
    assert!(
        unit.join("payload").is_dir() && unit.join("supervisor").is_dir(),
        "payload/supervisor split"
    );
    let launcher_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", guest.pid())).unwrap();
    assert!(
        launcher_cg.contains(&format!(
            "{}/supervisor",
            unit.file_name().unwrap().to_string_lossy()
        )),
        "launcher moved to supervisor: {launcher_cg}"
    );
    let trace = GuestTrace::of(&name);
    let _ = guest.exec(&["systemctl", "reboot"]);
    let code = guest.wait_exit(BOOT_TIMEOUT);
    assert_eq!(code, 133, "{}", guest.console());
    trace.assert_gone();
    unit_cgroup.assert_left_clean();
}

/// SIGKILL of the launcher takes the guest with it and the janitor removes
/// the state and cgroups.
fn sigkill_of_launcher_leaves_nothing(suite: &str) {
    let tree = tree(suite);
    let name = unique_name(&format!("kill-{suite}"));
    let mounts_before = host_mounts();
    let mut guest = Guest::start(&tree, &name, &["-x", "-b"]);
    guest.wait_ready();
    let leader = leader_of(&name);
    let trace = GuestTrace::of(&name);
    guest.signal(Signal::SIGKILL);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), -1);
    wait_for("the janitor to clean up", Duration::from_secs(15), || {
        !std::path::Path::new("/run/nixspawn").join(&name).exists()
    });
    wait_for("the guest to die", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{leader}")).exists()
    });
    trace.assert_gone();
    assert_eq!(
        host_mounts(),
        mounts_before,
        "the host mount table is unchanged"
    );
}

/// machinectl's verbs, through nixspawnctl: poweroff (SIGRTMIN+4) ends
/// the launcher with 0; reboot (SIGINT) boots the guest again.
fn nixspawnctl_poweroff_and_reboot(suite: &str) {
    let tree = tree(suite);
    let name = unique_name(&format!("ctl-{suite}"));
    let mut guest = Guest::start(&tree, &name, &["-x", "-b"]);
    guest.wait_ready();
    let first = leader_of(&name);
    assert!(ctl(&["reboot", &name]).status.success());
    wait_for("the guest to come back", BOOT_TIMEOUT, || {
        ctl(&["status", &name, "--json"]).status.success() && leader_of(&name) != first
    });
    guest.wait_ready();
    let second = leader_of(&name);
    assert!(ctl(&["poweroff", &name]).status.success());
    assert_eq!(guest.wait_exit(BOOT_TIMEOUT), 0, "{}", guest.console());
    assert!(
        guest.console().contains("Powering off"),
        "the guest powered off:\n{}",
        guest.console()
    );
    assert_cleaned_up(&name, Some(second));
}

macro_rules! per_suite {
    ($($test:ident),*) => {
        mod bookworm { $( #[test] fn $test() { crate::common::privileged!(); super::$test("bookworm") } )* }
        mod sid { $( #[test] fn $test() { crate::common::privileged!(); super::$test("sid") } )* }
    };
}

per_suite!(
    boots_to_running_and_stops_on_sigterm,
    guest_view_matches_the_container_interface,
    exit_status_is_passed_through,
    reboot_restarts_or_exits_133,
    sigkill_of_launcher_leaves_nothing,
    nixspawnctl_poweroff_and_reboot
);
