//! Privileged: nixspawnctl facing hostile guests and stale state. It never
//! writes a guest's terminal escapes raw onto the administrator's terminal,
//! and never signals or enters a PID that no longer belongs to the
//! container it names (PID reuse, a previous boot of the guest).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;

/// A busybox tree with the guest tool at /usr/bin/guest-tool.
fn tool_tree() -> tempfile::TempDir {
    let tree = busybox_tree();
    build_guest_tool(&tree.path().join("usr/bin"));
    for applet in ["reboot", "sync"] {
        let _ = std::os::unix::fs::symlink("busybox", tree.path().join("usr/bin").join(applet));
    }
    tree
}

fn status_json(name: &str) -> serde_json::Value {
    let out = ctl(&["status", name, "--json"]);
    assert!(
        out.status.success(),
        "status {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_escapes_the_guests_terminal_sequences() {
    privileged!();
    let tree = tool_tree();
    let name = unique_name("esc");
    // A title change, a screen clear, colour, a carriage return that would
    // overwrite the line, and an 8-bit CSI.
    let evil = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\rFAKE\u{9b}1m";
    let comm = "\x1b[5mblink";
    let mut guest = Guest::start(
        tree.path(),
        &name,
        &["--pipe", "/usr/bin/guest-tool", "notify", evil, comm],
    );
    guest.wait_ready();

    let out = ctl(&["status", &name]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let raw: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    println!("nixspawnctl status printed:\n{text}");
    assert!(
        raw.is_empty(),
        "control characters reached the terminal: {raw:?} in\n{text:?}"
    );
    assert!(
        text.contains(r"Status: \x1b]0;owned\x07\x1b[2J\x1b[31mred\x0dFAKE\x9b1m"),
        "the status is shown, escaped:\n{text}"
    );
    assert!(
        text.contains(r"(\x1b[5mblink)"),
        "the leader's command name is escaped too:\n{text}"
    );
    // The JSON form keeps the exact text (JSON escapes it itself).
    assert_eq!(status_json(&name)["status"], evil);
}

/// A state directory for `name` that looks live (we hold its lock) and
/// holds `state`; removed on drop.
struct FakeState {
    dir: PathBuf,
    _lock: NameClaim,
}

impl FakeState {
    fn new(name: &str, state: &serde_json::Value) -> FakeState {
        let dir = Path::new("/run/nixspawn").join(name);
        let lock = claim_name(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("state.json"),
            serde_json::to_vec_pretty(state).unwrap(),
        )
        .unwrap();
        FakeState { dir, _lock: lock }
    }
}

impl Drop for FakeState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bystander process, killed on drop.
struct Bystander(Child);

impl Bystander {
    fn start() -> Bystander {
        Bystander(Command::new("sleep").arg("1000").spawn().unwrap())
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn assert_untouched(&mut self, after: &str) {
        assert!(
            self.0.try_wait().unwrap().is_none(),
            "the bystander (PID {}) was signalled by `{after}`",
            self.pid()
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Each verb of nixspawnctl against `stale`, which must refuse every one
/// with one line and leave both bystanders alone. Returns what it said.
fn assert_every_verb_refused(
    stale: &str,
    leader: &mut Bystander,
    launcher: &mut Bystander,
) -> String {
    let marker = std::env::temp_dir().join(format!("{stale}-exec-ran"));
    let touch = format!("/usr/bin/touch {}", marker.display());
    let mut said = String::new();
    for verb in [
        vec!["poweroff", stale],
        vec!["reboot", stale],
        vec!["exec", stale, "--", "/bin/sh", "-c", &touch],
        vec!["stop", stale, "--timeout", "3"],
    ] {
        let out = ctl(&verb);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        println!(
            "nixspawnctl {}: exit {:?}: {err}",
            verb[0],
            out.status.code()
        );
        assert!(!out.status.success(), "{verb:?} was not refused");
        assert!(
            err.contains("stale") && err.trim().lines().count() == 1,
            "{verb:?}: one line naming the stale PID: {err}"
        );
        leader.assert_untouched(verb[0]);
        launcher.assert_untouched(verb[0]);
        said.push_str(&err);
    }
    assert!(
        !marker.exists(),
        "`exec` ran a command in the bystander's (the host's) namespaces"
    );
    said
}

#[test]
fn a_stale_state_naming_reused_pids_is_refused() {
    privileged!();
    let tree = tool_tree();
    let name = unique_name("live");
    let mut guest = Guest::start(
        tree.path(),
        &name,
        &["--pipe", "/bin/sh", "-c", "exec sleep 1000"],
    );
    wait_for("the guest to start", Duration::from_secs(20), || {
        ctl(&["status", &name]).status.success()
    });
    let real = status_json(&name);
    assert!(real["leader_identity"].is_object(), "{real}");
    assert!(real["supervisor_identity"].is_object(), "{real}");

    // The state a launcher killed before it cleaned up leaves behind, once
    // its guest's and its own PIDs were handed to other processes.
    let mut leader = Bystander::start();
    let mut launcher = Bystander::start();
    let stale = unique_name("stale");
    let mut state = real.clone();
    state["name"] = stale.clone().into();
    state["leader"] = leader.pid().into();
    state["supervisor"] = launcher.pid().into();
    let _fake = FakeState::new(&stale, &state);
    assert_every_verb_refused(&stale, &mut leader, &mut launcher);

    // The real guest is still managed as before.
    let (code, out) = guest.exec(&["/bin/echo", "still here"]);
    assert_eq!((code, out.trim()), (0, "still here"));
    assert!(ctl(&["stop", &name, "--timeout", "10"]).status.success());
    guest.wait_exit(Duration::from_secs(10));
    assert_cleaned_up(&name, None);
}

#[test]
fn across_a_reboot_ctl_follows_the_new_leader_only() {
    privileged!();
    let tree = tool_tree();
    let name = unique_name("reboot");
    // The first boot reboots (through nixspawnctl exec), the second stays.
    let mut guest = Guest::start(
        tree.path(),
        &name,
        &[
            "--pipe",
            "/bin/sh",
            "-c",
            "test -e /booted && echo second > /booted || echo first > /booted; exec sleep 1000",
        ],
    );
    wait_for("the guest to start", Duration::from_secs(20), || {
        ctl(&["status", &name]).status.success()
    });
    let first = status_json(&name);
    assert_eq!(first["boot_count"], 1, "{first}");
    let _ = guest.exec(&["/bin/reboot", "-f"]);
    wait_for("the second boot", Duration::from_secs(20), || {
        status_json(&name)["boot_count"] == 2 && status_json(&name)["leader"].is_i64()
    });
    let second = status_json(&name);
    assert_eq!(second["phase"], "running", "{second}");
    assert_ne!(second["leader_identity"], first["leader_identity"]);
    assert_eq!(guest.sh("cat /booted").trim(), "second", "exec follows");

    // A state from the first boot naming the second boot's leader (as a
    // reused PID would): the PID is alive and in the guest, yet it is not
    // the process the state means.
    let stale = unique_name("boot1");
    let mut old = first.clone();
    old["name"] = stale.clone().into();
    old["leader"] = second["leader"].clone();
    let _fake = FakeState::new(&stale, &old);
    let out = ctl(&["poweroff", &stale]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another process"),
        "{err}"
    );
    let out = ctl(&["exec", &stale, "--", "/bin/true"]);
    assert!(!out.status.success());

    assert!(ctl(&["stop", &name, "--timeout", "10"]).status.success());
    guest.wait_exit(Duration::from_secs(10));
    assert_cleaned_up(&name, None);
}
