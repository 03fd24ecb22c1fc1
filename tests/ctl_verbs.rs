//! Privileged: nixspawnctl's shell, login, copy-to, copy-from, bind and
//! logs against a booted bookworm guest: shell and login on a real pty that
//! is the caller's controlling terminal, copies and binds moving real files,
//! and guest symlinks aimed at host paths that must lead nowhere but into
//! the guest.

mod common;

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// `nixspawnctl ARGS` in a session of its own whose controlling terminal
/// is a new pty; the pty's master and the child.
fn on_pty(args: &[&str]) -> (OwnedFd, std::process::Child) {
    let (child, master, _slave) = spawn_on_pty(
        Command::new("setsid")
            .args(["--ctty", "--wait", NIXSPAWNCTL])
            .args(args)
            .env("TERM", "xterm-test"),
    );
    (master, child)
}

fn booted(prefix: &str) -> (Guest, String) {
    let tree = tree("bookworm");
    let name = unique_name(prefix);
    let mut g = Guest::start(&tree, &name, &["-x", "-b", "--console=passive"]);
    g.wait_ready();
    (g, name)
}

#[test]
fn shell_gives_a_login_shell_on_a_pty_and_runs_commands_as_a_user() {
    privileged!();
    let (_g, name) = booted("shell");
    // What the guest's PAM session (pam_env) adds, as under machinectl.
    let out = ctl(&[
        "exec",
        &name,
        "/bin/sh",
        "-c",
        "echo FROM_PAM=yes >> /etc/environment",
    ]);
    assert!(out.status.success());
    let (master, mut child) = on_pty(&["shell", &name]);
    // Typed only at the prompt: the guest's systemd resets the service's
    // terminal as it starts it (as for machinectl shell), dropping what
    // was typed before.
    read_until(&master, "# ", Duration::from_secs(20));
    nix::unistd::write(
        &master,
        b"echo \"u=$USER h=$HOME s=$SHELL t=$TERM d=$(pwd) l=$(shopt -q login_shell && echo y) p=$FROM_PAM uid=$(cat /proc/self/loginuid) tty=$(tty)\"; exit 7\n",
    )
    .unwrap();
    let shown = read_until(&master, "tty=/dev/pts/", Duration::from_secs(20));
    assert!(
        shown.contains(
            "u=root h=/root s=/bin/bash t=xterm-test d=/root l=y p=yes uid=0 tty=/dev/pts/"
        ),
        "{shown}"
    );
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 7);
    // Entered directly: no PAM session, a login shell named "-bash".
    let (master, mut child) = on_pty(&["shell", "--no-pam", &name]);
    nix::unistd::write(
        &master,
        b"echo \"a=$0 p=${FROM_PAM:-no} tty=$(tty)\"; exit 5\n",
    )
    .unwrap();
    let shown = read_until(&master, "tty=/dev/pts/", Duration::from_secs(20));
    assert!(shown.contains("a=-bash p=no tty=/dev/pts/"), "{shown}");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 5);

    // Over pipes, as another user, through PAM and directly: the guest's
    // systemd sets HOME for nobody as it likes (machinectl's answer too),
    // so only the direct entry's HOME is asserted.
    for (how, home) in [(None, ""), (Some("--no-pam"), " /nonexistent")] {
        let out = Command::new(NIXSPAWNCTL)
            .arg("shell")
            .args(how)
            .args([&format!("nobody@{name}"), "/bin/sh", "-c"])
            .arg(format!(
                "echo $(id -u):$(id -g) $USER{} $(grep CapEff /proc/self/status); exit 3",
                if home.is_empty() { "" } else { " $HOME" }
            ))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{how:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("65534:65534 nobody{home} CapEff: 0000000000000000\n"),
            "{how:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(NIXSPAWNCTL)
        .args(["shell", &format!("nosuchuser@{name}"), "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuchuser") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn login_shows_the_guests_getty_and_the_escape_leaves() {
    privileged!();
    let (_g, name) = booted("login");
    let (master, mut child) = on_pty(&["login", &name]);
    nix::unistd::write(&master, b"\r").unwrap();
    let shown = read_until(&master, " login: ", Duration::from_secs(30));
    // agetty's prompt: the guest's short host name (up to a dot).
    let short = name.split('.').next().unwrap();
    assert!(
        shown.contains(short),
        "the getty names the guest: {shown:?}"
    );
    // The guest's own getty serves it, started by its systemd.
    let (_, units) = Guest::exec_in(
        &name,
        &[
            "systemctl",
            "list-units",
            "--no-legend",
            "container-getty@*",
        ],
    );
    assert!(units.contains("container-getty@"), "{units:?}");
    nix::unistd::write(&master, b"\x1d\x1d\x1d").unwrap();
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 0);
}

#[test]
fn copies_and_binds_move_real_files_and_guest_links_stay_in_the_guest() {
    privileged!();
    let (_g, name) = booted("copy");
    let host = tempfile::tempdir().unwrap();
    let hp = host.path();
    // A host directory and a host secret the guest aims links at.
    let victim = hp.join("victim");
    std::fs::create_dir(&victim).unwrap();
    let secret = hp.join("secret");
    std::fs::write(&secret, "HOST SECRET").unwrap();
    std::fs::create_dir_all(hp.join("in/sub")).unwrap();
    std::fs::write(hp.join("in/sub/f"), "payload").unwrap();
    std::os::unix::fs::symlink("sub/f", hp.join("in/link")).unwrap();

    let ctl = |args: &[&str]| {
        let out = ctl(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (v, s) = (victim.display().to_string(), secret.display().to_string());
    Guest::exec_in(
        &name,
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p {v} && ln -s {v} /root/evil && ln -s {s} /root/leak && echo guest > /root/leak-target-missing-ok"
            ),
        ],
    );

    // A tree in, through a guest link aimed at a host directory: it lands
    // in the guest's directory of that name.
    let src = hp.join("in").display().to_string();
    assert_eq!(ctl(&["copy-to", &name, &src, "/root/evil/in"]).0, 0);
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "host dir untouched"
    );
    let (_, inside) = Guest::exec_in(
        &name,
        &[
            "sh",
            "-c",
            &format!("cat {v}/in/sub/f; echo; readlink {v}/in/link"),
        ],
    );
    assert_eq!(inside, "payload\nsub/f\n");
    let (code, err) = ctl(&["copy-to", &name, &src, "/root/evil/in"]);
    assert!(code == 1 && err.contains("File exists"), "{err}");

    // Out, through a guest link aimed at a host file: the guest's file of
    // that name (there is none), never the host's.
    let out = hp.join("out").display().to_string();
    let (code, err) = ctl(&["copy-from", &name, "/root/leak/x", &out]);
    assert_eq!(code, 1, "{err}");
    assert!(!hp.join("out").exists());
    let (code, _) = ctl(&["copy-from", &name, "/root/leak", &out]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_link(hp.join("out")).unwrap(),
        secret,
        "a guest link comes out as a link, not the file it names"
    );
    let back = hp.join("back").display().to_string();
    assert_eq!(ctl(&["copy-from", &name, &format!("{v}/in"), &back]).0, 0);
    assert_eq!(
        std::fs::read_to_string(hp.join("back/sub/f")).unwrap(),
        "payload"
    );

    // A bind, read-only, onto a mount point it creates.
    let bsrc = hp.join("in").display().to_string();
    assert_eq!(
        ctl(&["bind", &name, &bsrc, "/mnt/b", "--read-only", "--mkdir"]).0,
        0
    );
    let (_, seen) = Guest::exec_in(
        &name,
        &[
            "sh",
            "-c",
            "cat /mnt/b/sub/f; echo; touch /mnt/b/new 2>&1 | grep -c Read-only",
        ],
    );
    assert_eq!(seen, "payload\n1\n");
    assert!(!hp.join("in/new").exists());
    let (code, err) = ctl(&["bind", &name, &bsrc, "/no/such/dir"]);
    assert!(code == 1 && err.lines().count() == 1, "{err}");

    // The journal.
    let out = Command::new(NIXSPAWNCTL)
        .args(["logs", &name, "--no-pager", "-q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("systemd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "HOST SECRET");
}
