//! Privileged: systemd-nspawn options newer than the 252 on this host, and
//! one people expect that nspawn does not have. `--background=COLOR`
//! (nspawn 256+) seen byte for byte on a real terminal: the tint set before
//! the guest's first line, put back after the guest's own SGR reset, reset
//! when the console goes (also when the guest fails); nothing when stdout
//! is no terminal or colors are off. `--kill-signal-delay` (no nspawn has
//! it) refused in one line, and what nspawn does instead — the kill signal
//! on the first SIGTERM, SIGKILL on the second — seen by a guest that
//! ignores the first, under both launchers.

mod common;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// nixspawn with a fresh terminal as stdin, stdout and stderr, and `env`.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, OwnedFd, OwnedFd) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let child = Command::new(NIXSPAWN)
        .env_remove("NO_COLOR")
        .env_remove("SYSTEMD_COLORS")
        .env("TERM", "xterm-256color")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    (child, pty.master, pty.slave)
}

/// Run `script` on a terminal with `args`; the exit code and every byte
/// the terminal got, up to the launcher's last line.
fn terminal_run(args: &[&str], env: &[(&str, &str)], script: &str) -> (i32, String) {
    let tree = busybox_tree();
    let name = unique_name("k16bg");
    let mut argv = vec!["-M", &name, "-D", tree.path().to_str().unwrap()];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["/bin/sh", "-c", script]);
    let (mut child, master, _slave) = on_terminal(&argv, env);
    let code = wait_exit(&mut child, Duration::from_secs(20));
    let seen = read_until(
        &master,
        &format!("Container {name} "),
        Duration::from_secs(5),
    );
    let rest =
        String::from_utf8_lossy(&read_available(&master, Duration::from_millis(200))).into_owned();
    assert_cleaned_up(&name, None);
    (code, seen + &rest)
}

const SET: &str = "\x1b[44m\x1b[K";
const RESET: &str = "\x1b[0m\x1b[J";

#[test]
fn background_tints_the_terminal_and_resets_it_when_the_guest_ends() {
    privileged!();
    // The guest prints a line, resets its own attributes mid-line, and ends
    // well (interactive) or badly (read-only, exit 3).
    let script = "echo first; printf 'a\\033[0mb\\n'; echo last";
    for (console, end, want) in [
        ("--console=interactive", "exit 0", 0),
        ("--console=read-only", "exit 3", 3),
    ] {
        let (code, seen) = terminal_run(
            &[console, "--background=44"],
            &[],
            &format!("{script}; {end}"),
        );
        assert_eq!(code, want, "{console}: {seen:?}");
        let at = |needle: &str| {
            seen.find(needle)
                .unwrap_or_else(|| panic!("{console}: no {needle:?} in {seen:?}"))
        };
        // Set (with the line erased in it) before the guest's first byte.
        assert!(at(SET) < at("first"), "{console}: {seen:?}");
        // Each new line starts erased in the color.
        assert!(
            seen.contains(&format!("{SET}a")),
            "{console}: line not painted: {seen:?}"
        );
        // The guest's reset keeps our background.
        assert!(
            seen.contains("a\x1b[0;44mb"),
            "{console}: reset not patched: {seen:?}"
        );
        // Reset once the guest is gone, before the launcher's last line.
        let reset = seen
            .rfind(RESET)
            .unwrap_or_else(|| panic!("{console}: never reset: {seen:?}"));
        assert!(reset > seen.rfind("last").unwrap(), "{console}: {seen:?}");
        assert!(
            reset < seen.rfind("Container ").unwrap(),
            "{console}: {seen:?}"
        );
        assert!(!seen[reset..].contains("\x1b[44m"), "{console}: {seen:?}");
    }
}

#[test]
fn no_tint_without_a_color_terminal_or_with_an_empty_color() {
    privileged!();
    let script = "echo plain";
    // Colors off by the caller's environment, or the tint turned off.
    for (env, args) in [
        (&[("NO_COLOR", "1")][..], &["--background=44"][..]),
        (&[("SYSTEMD_COLORS", "0")][..], &["--background=44"][..]),
        (&[("TERM", "dumb")][..], &["--background=44"][..]),
        (&[][..], &["--background="][..]),
        (&[][..], &["--background=44", "--console=passive"][..]),
    ] {
        let (code, seen) = terminal_run(args, env, script);
        assert_eq!(code, 0, "{env:?} {args:?}: {seen:?}");
        assert!(
            !seen.contains("\x1b[44") && !seen.contains(RESET),
            "{env:?} {args:?}: tinted: {seen:?}"
        );
    }
    // stdout a pipe: not one escape byte in it.
    let tree = busybox_tree();
    let (code, out, err) = run_nixspawn_with_env(
        &[("TERM", "xterm-256color"), ("SYSTEMD_COLORS", "1")],
        &[
            "-q",
            "-D",
            tree.path().to_str().unwrap(),
            "--console=read-only",
            "--background=44",
            "/bin/sh",
            "-c",
            script,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "plain\n");
    assert!(
        !out.contains('\x1b') && !err.contains('\x1b'),
        "{out:?} {err:?}"
    );
}

#[test]
fn bad_values_and_kill_signal_delay_are_refused_in_one_line() {
    privileged!();
    let tree = busybox_tree();
    let d = tree.path().to_str().unwrap();
    for (arg, want) in [
        (
            "--background=blue",
            "nixspawn: invalid value \"blue\" for --background: expected an ANSI SGR background color",
        ),
        (
            "--background=\x1b]0;owned\x07",
            "nixspawn: invalid value \"\\u{1b}]0;owned\\u{7}\" for --background",
        ),
        (
            "--background=48;5;17;48;5;17;48;5;17;48;5;17;48;5;17",
            "nixspawn: invalid value \"48;5;17;48;5;17;48;5;17;48;5;17;48;5;17\" for --background: an SGR background color is at most 32 characters",
        ),
        (
            "--kill-signal-delay=5",
            "nixspawn: systemd-nspawn has no --kill-signal-delay: --kill-signal= is sent on the first SIGTERM",
        ),
    ] {
        let (code, out, err) = run_nixspawn(&["-D", d, arg, "/bin/true"], "");
        assert_eq!(code, 1, "{arg}: {err}");
        assert!(out.is_empty(), "{arg}: {out}");
        assert_eq!(err.lines().count(), 1, "{arg}: {err}");
        assert!(err.starts_with(want), "{arg}: {err}");
    }
    // systemd-nspawn (252 has neither; no version has --kill-signal-delay)
    // refuses it too, before it touches anything.
    require_nspawn();
    let out = Command::new(NSPAWN)
        .args(["-D", d, "--kill-signal-delay=5", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kill-signal-delay"),
        "{out:?}"
    );
    remove_nspawn_leftovers(tree.path());
}

/// Under `launcher`: a guest that traps (and so survives) SIGTERM, the
/// kill signal. Returns how often the guest saw it, whether the container
/// was still up a while after the first SIGTERM to the launcher, and the
/// launcher's exit code after the second.
fn first_term_then_second(launcher: &str, tree: &std::path::Path) -> (usize, bool, i32) {
    let unit = UnitCgroup::new("k16kill");
    let script = "trap 'echo got-TERM' TERM; echo ready; while :; do sleep 0.1; done";
    let mut child = unit
        .command(launcher)
        .args(["-q", "--register=no", "--keep-unit", "--console=pipe"])
        .args(["--kill-signal=SIGTERM", "-D"])
        .arg(tree)
        .args(["/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = OwnedFd::from(child.stdout.take().unwrap());
    let mut seen = read_until(&out, "ready", Duration::from_secs(20));
    let pid = child.id().cast_signed();
    let term = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    };
    term();
    seen += &read_until(&out, "got-TERM", Duration::from_secs(10));
    // Generous: the guest ignored it, and nobody escalates on a timer.
    std::thread::sleep(Duration::from_secs(2));
    let still_up = child.try_wait().unwrap().is_none();
    term();
    let code = wait_exit(&mut child, Duration::from_secs(20));
    seen += &String::from_utf8_lossy(&read_available(&out, Duration::from_millis(100)));
    remove_nspawn_leftovers(tree);
    // (systemd-nspawn 252 leaves its `payload` cgroup behind here; the
    // unit's drop removes it.)
    if launcher == NIXSPAWN {
        unit.assert_left_clean();
    }
    (seen.matches("got-TERM").count(), still_up, code)
}

#[test]
fn kill_signal_once_then_sigkill_on_the_second_sigterm_as_nspawn() {
    privileged!();
    require_nspawn();
    let tree = busybox_tree();
    let ours = first_term_then_second(NIXSPAWN, tree.path());
    let theirs = first_term_then_second(NSPAWN, tree.path());
    eprintln!("nixspawn {ours:?}, systemd-nspawn {theirs:?}");
    assert_eq!(
        ours.0, 1,
        "the guest saw the kill signal once under nixspawn"
    );
    assert!(ours.1, "nixspawn killed the guest without a second SIGTERM");
    assert_eq!(ours, theirs, "nixspawn and systemd-nspawn differ");
}
