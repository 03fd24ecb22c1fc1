//! Privileged: console modes on a real terminal (a pty we hold the master
//! of), the ^]^]^] escape, and the stop protocol's second SIGTERM.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Read from `master` until `needle` shows up; returns all that was read.
fn read_until(master: &OwnedFd, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {needle:?}; terminal showed: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if nix::poll::poll(&mut fds, PollTimeout::from(ms)).unwrap() == 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(master, &mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Start nixspawn with a fresh terminal as its stdin/stdout/stderr.
fn on_terminal(args: &[&str]) -> (std::process::Child, OwnedFd, OwnedFd) {
    spawn_on_pty(Command::new(NIXSPAWN).args(args))
}

#[test]
fn interactive_forwards_input_and_escape_kills() {
    privileged!();
    let tree = busybox_tree();
    let name = unique_name("tty");
    let script = "read line; echo got:$line; exec sleep 1000";
    let (mut child, master, slave) = on_terminal(&[
        "-M",
        &name,
        "-D",
        tree.path().to_str().unwrap(),
        "/bin/sh",
        "-c",
        script,
    ]);
    let banner = read_until(&master, "three times within 1s", Duration::from_secs(10));
    assert!(banner.contains("Spawning container"), "{banner}");
    // The launcher puts our terminal in raw mode while it relays.
    wait_for("raw mode", Duration::from_secs(5), || {
        !nix::sys::termios::tcgetattr(&slave)
            .unwrap()
            .local_flags
            .contains(nix::sys::termios::LocalFlags::ICANON)
    });
    nix::unistd::write(&master, b"hello\r").unwrap();
    read_until(&master, "got:hello", Duration::from_secs(10));
    nix::unistd::write(&master, b"\x1d\x1d\x1d").unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(code, 1, "killed by the escape");
    read_until(
        &master,
        "terminated by signal SIGKILL",
        Duration::from_secs(5),
    );
    let restored = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert!(
        restored
            .local_flags
            .contains(nix::sys::termios::LocalFlags::ICANON),
        "terminal restored after exit"
    );
    assert_cleaned_up(&name, None);
}

#[test]
fn read_only_ignores_input_and_passive_shows_nothing() {
    privileged!();
    let tree = busybox_tree();
    let d = tree.path().to_str().unwrap();
    // read-only: output reaches the terminal, typed input does not reach the guest.
    let script = "echo visible; read -t 1 line && echo got:$line || echo no-input";
    let (mut child, master, _slave) = on_terminal(&[
        "-q",
        "-D",
        d,
        "--console=read-only",
        "/bin/sh",
        "-c",
        script,
    ]);
    nix::unistd::write(&master, b"typed\r").unwrap();
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 0);
    let seen = read_until(&master, "no-input", Duration::from_secs(5));
    assert!(seen.contains("visible") && !seen.contains("got:"), "{seen}");

    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "-D",
            d,
            "--console=passive",
            "/bin/sh",
            "-c",
            "echo hidden; test -t 1",
        ],
        "",
    );
    assert_eq!(code, 0, "passive still gives the guest a pty: {err}");
    assert!(!out.contains("hidden"), "passive mode shows nothing: {out}");
}

#[test]
fn second_sigterm_kills_a_guest_that_ignores_the_first() {
    privileged!();
    let tree = busybox_tree();
    let name = unique_name("stubborn");
    // PID 1 ignores its kill signal.
    let mut guest = Guest::start(
        tree.path(),
        &name,
        &[
            "--pipe",
            "--kill-signal=SIGUSR1",
            "/bin/sh",
            "-c",
            "trap '' USR1; while :; do sleep 0.05; done",
        ],
    );
    wait_for("the container to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    guest.signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        guest.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "still running after the first SIGTERM"
    );
    let status = String::from_utf8_lossy(&ctl(&["status", &name, "--json"]).stdout).into_owned();
    assert!(status.contains("\"phase\": \"stopping\""), "{status}");
    guest.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 1);
    assert!(
        guest.console().contains("terminated by signal SIGKILL"),
        "{}",
        guest.console()
    );
    assert_cleaned_up(&name, None);
}
