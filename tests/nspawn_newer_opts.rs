//! Privileged: systemd-nspawn options newer than the 252 on this host, and
//! one people expect that nspawn does not have. `--background=COLOR`
//! (nspawn 256+) seen byte for byte on a real terminal: the tint set before
//! the guest's first line, put back after the guest's own SGR reset, reset
//! when the console goes (also when the guest fails); nothing when stdout
//! is no terminal or colors are off. `--kill-signal-delay` (no nspawn has
//! it) refused in one line, and what nspawn does instead — the kill signal
//! on the first SIGTERM, SIGKILL on the second — seen by a guest that
//! ignores the first, under both launchers. And small parities with
//! nspawn, side by side: the last of `-j` and `--link-journal` wins; the
//! `--as-pid2` stub powers off or reboots on init's signals; `--volatile=yes`
//! takes `/usr` from `--pivot-root`'s NEW; `RestrictAddressFamilies=` from
//! an untrusted file applies (against nspawn 262 from the sid fixture).

mod common;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// nixspawn with a fresh terminal as stdin, stdout and stderr, and `env`.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, OwnedFd, OwnedFd) {
    spawn_on_pty(
        Command::new(NIXSPAWN)
            .env_remove("NO_COLOR")
            .env_remove("SYSTEMD_COLORS")
            .env("TERM", "xterm-256color")
            .envs(env.iter().copied())
            .args(args),
    )
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

// ---- small parity fixes (session 6): -j against --link-journal, the
// --as-pid2 stub on halt and reboot signals, --volatile=yes with
// --pivot-root, RestrictAddressFamilies= from an untrusted file ----

/// `launcher`'s exit status and stdout for `script` (busybox sh as PID 1,
/// or PID 2 under `--as-pid2`), as `beside` runs it.
fn ended(launcher: &str, tree: &std::path::Path, args: &[&str], script: &str) -> (i32, String) {
    let (code, out, err) = beside(launcher, tree, args, &[], script);
    eprintln!("{launcher} {args:?}: exit {code}, {out:?}, {err:?}");
    (code, out)
}

/// Both launchers end the same way: exit status and stdout.
fn both_end(tree: &std::path::Path, args: &[&str], script: &str) -> (i32, String) {
    both(args, |launcher| ended(launcher, tree, args, script))
}

/// The host's /var/log/journal/ID (and /var/log/journal if the host had
/// none), removed however the test ends.
struct HostJournal {
    path: std::path::PathBuf,
    made_parent: bool,
}

impl HostJournal {
    fn new(id: &str) -> HostJournal {
        let parent = std::path::Path::new("/var/log/journal");
        let made_parent = !parent.exists();
        std::fs::create_dir_all(parent).unwrap();
        HostJournal {
            path: parent.join(id),
            made_parent,
        }
    }

    /// What the launcher left at the host's path: "link", "dir" or
    /// "nothing"; then removed for the next run.
    fn take(&self) -> &'static str {
        let kind = match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => "link",
            Ok(m) if m.is_dir() => "dir",
            Ok(_) => "other",
            Err(_) => "nothing",
        };
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir_all(&self.path);
        kind
    }
}

impl Drop for HostJournal {
    fn drop(&mut self) {
        self.take();
        if self.made_parent {
            let _ = std::fs::remove_dir("/var/log/journal");
        }
    }
}

/// `-j` is `--link-journal=try-guest`, and of the two the last one on the
/// command line wins (nspawn's getopt loop). Host mode bind-mounts a host
/// directory at the guest's /var/log/journal/ID; try-guest links the
/// host's path to the tree's. Seen from the guest (the mount) and the host
/// (a directory or a link), under both launchers.
#[test]
fn the_last_of_j_and_link_journal_wins_as_in_nspawn() {
    privileged!();
    require_nspawn();
    let tree = busybox_tree();
    let id = "5a1d0e2c4b6f48a9b1c3d5e7f9a0b2c4";
    std::fs::write(tree.path().join("etc/machine-id"), format!("{id}\n")).unwrap();
    std::fs::create_dir_all(tree.path().join("var/log/journal")).unwrap();
    let host = HostJournal::new(id);
    let script = format!("grep -c ' /var/log/journal/{id} ' /proc/self/mountinfo || true");
    for (args, mounted, on_host) in [
        (&["-j", "--link-journal=host"][..], "1", "dir"),
        (&["--link-journal=host", "-j"][..], "0", "link"),
        (&["--link-journal=no", "-j"][..], "0", "link"),
        (&["-j", "--link-journal=no"][..], "0", "nothing"),
    ] {
        let mut seen = Vec::new();
        for launcher in [NIXSPAWN, NSPAWN] {
            let (code, out) = ended(launcher, tree.path(), args, &script);
            assert_eq!(code, 0, "{launcher} {args:?}");
            seen.push((out.trim().to_owned(), host.take()));
        }
        assert_eq!(seen[0], seen[1], "nixspawn, systemd-nspawn for {args:?}");
        assert_eq!(seen[0], (mounted.to_owned(), on_host), "{args:?}");
    }
}

/// glibc's SIGRTMIN (34) plus `n`, as systemd numbers its init signals.
fn rtmin(n: i32) -> String {
    (libc::SIGRTMIN() + n).to_string()
}

/// `--as-pid2`: the stub init takes systemd's halt and power-off signals
/// (SIGRTMIN+3, +4, +13, +14) and reboot signals (SIGINT, SIGRTMIN+5, +6,
/// +15, +16) as nspawn's stub does: the payload gets SIGTERM and SIGHUP,
/// and once it has ended the stub calls reboot(2), so the launcher sees a
/// power-off (exit 0) or a reboot (133 under --keep-unit, which hands the
/// restart to the unit). Without CAP_SYS_BOOT the power-off falls back to
/// the payload's status (255: it was killed) and the reboot ends with 1.
/// A payload that is sent nothing still passes its own status on.
#[test]
fn as_pid2_stub_halts_and_reboots_on_inits_signals_as_nspawn() {
    privileged!();
    require_nspawn();
    let tree = busybox_tree();
    let asks = |signal: &str| format!("echo asking; kill -{signal} 1; sleep 5; echo not-stopped");
    for (signal, extra, want) in [
        (rtmin(4), None, 0),
        (rtmin(3), None, 0),
        (rtmin(14), None, 0),
        (rtmin(5), None, 133),
        (rtmin(16), None, 133),
        ("INT".to_owned(), None, 133),
        (rtmin(4), Some("--drop-capability=CAP_SYS_BOOT"), 255),
        (rtmin(5), Some("--drop-capability=CAP_SYS_BOOT"), 1),
    ] {
        let mut args = vec!["--as-pid2"];
        args.extend(extra);
        let (code, out) = both_end(tree.path(), &args, &asks(&signal));
        assert_eq!(
            (code, out.as_str()),
            (want, "asking\n"),
            "{signal} {extra:?}"
        );
    }
    // Nothing asked: the payload's own status, under both.
    let (code, _) = both_end(tree.path(), &["--as-pid2"], "exit 7");
    assert_eq!(code, 7);
    // Without --keep-unit (nixspawn alone: systemd-nspawn 252 needs a
    // system bus for its scope then) the launcher reboots the guest.
    let script = format!(
        "if [ -e /rebooted ]; then echo second boot; exit 7; fi; touch /rebooted; {}",
        asks(&rtmin(5))
    );
    let dir = tree.path().to_str().unwrap();
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "--register=no",
            "--as-pid2",
            "-D",
            dir,
            "/bin/sh",
            "-c",
            &script,
        ],
        "",
    );
    assert_eq!((code, out.as_str()), (7, "asking\nsecond boot\n"), "{err}");
}

/// `--volatile=yes` with `--pivot-root=NEW[:OLD]`: nspawn pivots first,
/// then builds the volatile root from what the pivot left, so the tmpfs
/// root holds NEW's /usr, and OLD (the whole tree, kept at NEW/OLD) goes
/// with the rest of NEW. Before, nixspawn ignored the pivot and gave the
/// tree's own /usr. A NEW the tree lacks is refused in one line.
#[test]
fn volatile_yes_takes_usr_from_the_pivoted_root_as_nspawn() {
    privileged!();
    require_nspawn();
    let tree = busybox_tree();
    let root = tree.path();
    std::fs::write(root.join("usr/which"), "the tree's /usr\n").unwrap();
    // NEW: a second busybox tree inside the first, with its own /usr.
    let inner = root.join("inner");
    std::fs::create_dir_all(inner.join("usr/bin")).unwrap();
    std::fs::create_dir_all(inner.join("oldroot")).unwrap();
    for applet in ["busybox", "sh", "cat", "ls", "test", "echo"] {
        let from = root.join("usr/bin").join(applet);
        let to = inner.join("usr/bin").join(applet);
        if applet == "busybox" {
            std::fs::copy(from, to).unwrap();
        } else {
            std::os::unix::fs::symlink("busybox", to).unwrap();
        }
    }
    std::os::unix::fs::symlink("usr/bin", inner.join("bin")).unwrap();
    std::fs::write(inner.join("usr/which"), "inner's /usr\n").unwrap();
    let script = "cat /usr/which; ls /; test -e /oldroot && echo old kept || echo no old";
    let (code, out) = both_end(root, &["--volatile=yes", "--pivot-root=/inner"], script);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("inner's /usr\n"), "{out}");
    // NEW:OLD (nixspawn alone: 252 fails the OLD form on this host, with
    // or without --volatile): OLD goes with NEW's own tree, while the
    // pivot alone keeps it.
    let ours = |args: &[&str]| answer(NIXSPAWN, root, args, script);
    let out = ours(&["--volatile=yes", "--pivot-root=/inner:/oldroot"]);
    assert!(
        out.starts_with("inner's /usr\n") && out.ends_with("no old\n"),
        "{out}"
    );
    let out = ours(&["--pivot-root=/inner:/oldroot"]);
    assert!(
        out.starts_with("inner's /usr\n") && out.ends_with("old kept\n"),
        "{out}"
    );
    let (code, out, err) = beside(
        NIXSPAWN,
        root,
        &["--volatile=yes", "--pivot-root=/nowhere"],
        &[],
        script,
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nowhere"), "{err}");
}

/// systemd-nspawn 262 from the sid fixture, run with its own loader and
/// libraries (nothing installed on the host), for what 252 does not have.
/// 262 refuses a hybrid cgroup host, so it gets a mount namespace of its
/// own with the v2 hierarchy at /sys/fs/cgroup. A script written into
/// `dir`; None where the fixture has no systemd-nspawn.
fn nspawn_262(dir: &std::path::Path) -> Option<String> {
    let sid = tree("sid");
    let bin = sid.join("usr/bin/systemd-nspawn");
    if !bin.exists() {
        return None;
    }
    let libs = sid.join("usr/lib/x86_64-linux-gnu");
    let script = dir.join("systemd-nspawn-262");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare -m --propagation private /bin/sh -c \
             'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"' \
             {libs}/ld-linux-x86-64.so.2 --library-path {libs}:{libs}/systemd {bin} \"$@\"\n",
            libs = libs.display(),
            bin = bin.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(script.to_string_lossy().into_owned())
}

/// `RestrictAddressFamilies=` (systemd-nspawn 261+) from an untrusted
/// file (one beside the tree): nspawn 262 applies it, with no warning (it
/// only takes from the guest; it is not among the settings an untrusted
/// file may not make), and the command line's option still wins over it
/// (unless `--settings=override`).
/// Side by side with 262 where the sid fixture has it; 252 ignores the key
/// as unknown. The guest's socket(2) results say which applied.
#[test]
fn restrict_address_families_from_an_untrusted_file_applies_as_in_nspawn_262() {
    privileged!();
    let tree = busybox_tree();
    std::fs::create_dir_all(tree.path().join("tmp")).unwrap();
    build_static(
        &tree.path().join("usr/bin"),
        "process-opts.c",
        "process-opts",
        "the process-options probe",
    );
    let name = tree
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let file = tree.path().parent().unwrap().join(format!("{name}.nspawn"));
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    std::fs::write(&file, "[Exec]\nRestrictAddressFamilies=AF_UNIX\n").unwrap();
    let _file = Remove(file);
    let probe = "process-opts | grep -e 'socket(AF_UNIX)' -e 'socket(AF_INET)'";
    let file_applies = "socket(AF_UNIX): ok\nsocket(AF_INET): EAFNOSUPPORT\n";
    let option_wins = "socket(AF_UNIX): EAFNOSUPPORT\nsocket(AF_INET): ok\n";
    let cases: [(&[&str], &str); 3] = [
        (&[], file_applies),
        (&["--restrict-address-families=AF_INET"], option_wins),
        (
            &["--settings=override", "--restrict-address-families=AF_INET"],
            file_applies,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let reference = nspawn_262(dir.path());
    for (args, want) in cases {
        let (code, out, err) = beside(NIXSPAWN, tree.path(), args, &[], probe);
        assert_eq!((code, out.as_str()), (0, want), "nixspawn {args:?}: {err}");
        assert!(!err.contains("not trusted"), "nixspawn {args:?}: {err}");
        match &reference {
            Some(nspawn) => {
                let (code, theirs, err) = beside(nspawn, tree.path(), args, &[], probe);
                assert_eq!(
                    (code, theirs.as_str()),
                    (0, want),
                    "systemd-nspawn 262 {args:?}: {err}"
                );
                assert!(!err.contains("not trusted"), "262 {args:?}: {err}");
            }
            None => eprintln!("no systemd-nspawn in the sid fixture: nixspawn alone"),
        }
    }
    // 252 knows no such key: it warns and ignores it.
    require_nspawn();
    let (code, out, err) = beside(NSPAWN, tree.path(), &[], &[], probe);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("socket(AF_INET): ok"), "{out}");
    assert!(err.contains("Unknown key"), "{err}");
}

/// `-U` and `--private-users=` set one thing too, and the later wins in
/// nspawn: `-U --private-users=no` runs with the host's IDs,
/// `--private-users=no -U` in a picked range (before, `--private-users`
/// always won). Seen in the guest's uid_map under both launchers.
#[test]
fn the_last_of_u_and_private_users_wins_as_in_nspawn() {
    privileged!();
    require_nspawn();
    let tree = busybox_tree();
    let script = "read inside outside count < /proc/self/uid_map; \
                  [ \"$outside\" = 0 ] && echo host IDs || echo own range";
    for (args, want) in [
        (&["-U", "--private-users=no"][..], "host IDs\n"),
        (&["--private-users=no", "-U"][..], "own range\n"),
    ] {
        let (code, out) = both_end(tree.path(), args, script);
        assert_eq!((code, out.as_str()), (0, want), "{args:?}");
    }
}
