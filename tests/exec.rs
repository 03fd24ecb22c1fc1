//! Privileged: `nixspawnctl exec` as a hostile guest meets it. The command
//! runs in a session of its own, on a pty of its own when the caller sits
//! at a terminal, so it cannot push input into the caller's shell
//! (TIOCSTI); nothing of the exec is visible in the guest before it holds
//! only the guest's capabilities and seccomp filter; and the exit status,
//! the window size and byte-exact pipes work as before.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::termios::{self, LocalFlags};

/// A busybox tree with the guest tool at /usr/bin/guest-tool and stty.
fn tool_tree() -> tempfile::TempDir {
    let tree = busybox_tree();
    build_guest_tool(&tree.path().join("usr/bin"));
    for applet in ["stty", "tty", "kill", "printf", "cut", "head"] {
        let _ = std::os::unix::fs::symlink("busybox", tree.path().join("usr/bin").join(applet));
    }
    tree
}

/// A guest whose PID 1 sleeps, started and known to nixspawnctl.
fn sleeping_guest(tree: &Path, name: &str, extra: &[&str]) -> Guest {
    let mut args = vec!["--pipe"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["/bin/sh", "-c", "exec sleep 1000"]);
    let guest = Guest::start(tree, name, &args);
    wait_for("the guest to start", Duration::from_secs(30), || {
        ctl(&["status", name]).status.success()
    });
    guest
}

/// A terminal as an administrator's shell has it: a pty whose peer is the
/// controlling terminal of the session nixspawnctl runs in.
struct Terminal {
    master: OwnedFd,
    peer: OwnedFd,
}

impl Terminal {
    fn new(rows: u16, cols: u16) -> Terminal {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).unwrap();
        Terminal {
            master: pty.master,
            peer: pty.slave,
        }
    }

    /// `nixspawnctl ARGS` in a new session with this terminal as its
    /// controlling one and as stdin, stdout and stderr.
    fn ctl(&self, args: &[&str]) -> std::process::Child {
        Command::new("setsid")
            .args(["--ctty", "--wait", NIXSPAWNCTL])
            .args(args)
            .stdin(Stdio::from(self.peer.try_clone().unwrap()))
            .stdout(Stdio::from(self.peer.try_clone().unwrap()))
            .stderr(Stdio::from(self.peer.try_clone().unwrap()))
            .spawn()
            .unwrap()
    }

    /// What is waiting in the terminal's input queue: what the shell
    /// would read (and run) next.
    fn pending_input(&self) -> String {
        let mut t = termios::tcgetattr(&self.peer).unwrap();
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&self.peer, termios::SetArg::TCSANOW, &t).unwrap();
        String::from_utf8_lossy(&read_available(&self.peer, Duration::from_millis(200)))
            .into_owned()
    }

    fn canonical(&self) -> bool {
        termios::tcgetattr(&self.peer)
            .unwrap()
            .local_flags
            .contains(LocalFlags::ICANON)
    }
}

fn tiocsti_cannot_reach_the_callers_terminal(extra: &[&str]) {
    let tree = tool_tree();
    let name = unique_name("sti");
    let _guest = sleeping_guest(tree.path(), &name, extra);
    let term = Terminal::new(24, 80);
    let mut child = term.ctl(&[
        "exec",
        &name,
        "--",
        "/usr/bin/guest-tool",
        "tiocsti",
        "echo PWNED\n",
    ]);
    let shown = read_until(&term.master, "sid=", Duration::from_secs(20));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    let shown =
        shown + &String::from_utf8_lossy(&read_available(&term.master, Duration::from_millis(100)));
    println!("the guest tool reported:\n{shown}");
    assert!(term.canonical(), "the caller's terminal mode is restored");
    let pending = term.pending_input();
    println!("the caller's terminal input after exec: {pending:?}");
    assert!(
        !pending.contains("PWNED"),
        "the guest pushed input into the caller's shell: {pending:?}"
    );
    // The command leads a session of its own, on the guest's own pty.
    let ids = shown
        .lines()
        .find(|l| l.contains("sid="))
        .unwrap()
        .trim()
        .to_owned();
    let field = |k: &str| {
        ids.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap()
            .to_owned()
    };
    assert_eq!(field("sid="), field("pid="), "a session of its own: {ids}");
    assert!(field("tty0=").starts_with("/dev/pts/"), "{ids}");
}

#[test]
fn tiocsti_cannot_reach_the_callers_terminal_without_userns() {
    privileged!();
    tiocsti_cannot_reach_the_callers_terminal(&[]);
}

#[test]
fn tiocsti_cannot_reach_the_callers_terminal_under_userns() {
    privileged!();
    tiocsti_cannot_reach_the_callers_terminal(&["-U"]);
}

#[test]
fn on_a_terminal_exec_relays_a_pty_with_size_raw_mode_and_status() {
    privileged!();
    let tree = tool_tree();
    let name = unique_name("pty");
    let _guest = sleeping_guest(tree.path(), &name, &[]);
    let term = Terminal::new(33, 111);
    let mut child = term.ctl(&[
        "exec",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "stty size; test -t 0 && test -t 1 && echo both-ttys; read line; echo got:$line; exit 42",
    ]);
    let shown = read_until(&term.master, "both-ttys", Duration::from_secs(20));
    assert!(shown.contains("33 111"), "window size: {shown:?}");
    assert!(
        !term.canonical(),
        "the caller's terminal is raw while relaying"
    );
    nix::unistd::write(&term.master, b"hello\r").unwrap();
    read_until(&term.master, "got:hello", Duration::from_secs(20));
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 42);
    assert!(term.canonical(), "restored after");

    let mut child = term.ctl(&["exec", &name, "--", "/bin/sh", "-c", "kill -TERM $$"]);
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)),
        128 + libc::SIGTERM,
        "killed by SIGTERM"
    );
}

#[test]
fn pipes_stay_pipes_and_are_byte_exact() {
    privileged!();
    let tree = tool_tree();
    let name = unique_name("pipe");
    let _guest = sleeping_guest(tree.path(), &name, &[]);
    let data: Vec<u8> = (0u8..=255)
        .chain(b"\r\n\x1b[2J\x04end".iter().copied())
        .collect();
    let mut child = Command::new(NIXSPAWNCTL)
        .args([
            "exec",
            &name,
            "--",
            "/bin/sh",
            "-c",
            "test -t 0 || test -t 1 || cat; exit 3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, data, "byte-exact through pipes");

    // stdin on the caller's terminal but stdout into a pipe: no pty (it
    // would turn \n into \r\n), and the terminal is not handed over.
    let term = Terminal::new(24, 80);
    let mut child = Command::new("setsid")
        .args(["--ctty", "--wait", NIXSPAWNCTL, "exec", &name, "--"])
        .args([
            "/bin/sh",
            "-c",
            "test -t 0; echo in=$?; test -t 1; echo out=$?; printf 'x\\ny'",
        ])
        .stdin(Stdio::from(term.peer.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(term.peer.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    assert_eq!(String::from_utf8_lossy(&stdout), "in=1\nout=1\nx\ny");
}

/// One exec watched from inside the guest: what its process looked like
/// the first moment the guest could see it, and once stopped with ptrace.
struct Sighting {
    report: String,
}

impl Sighting {
    fn mask(&self, section: &str, key: &str) -> Option<u64> {
        let line = self.report.lines().find(|l| l.starts_with(section))?;
        let value = line.split(key).nth(1)?.split_whitespace().next()?;
        u64::from_str_radix(value, 16).ok()
    }
}

fn exec_is_restricted_before_the_guest_can_see_it(extra: &[&str]) {
    const ROUNDS: usize = 12;
    let tree = tool_tree();
    let shared = tempfile::tempdir().unwrap();
    // Writable for the guest's root under a user namespace too.
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let name = unique_name("watch");
    let bind = format!("--bind={}:/shared", shared.path().display());
    let rounds = ROUNDS.to_string();
    let mut args = vec!["--pipe", bind.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["/usr/bin/guest-tool", "watch", &rounds, "/shared"]);
    let _guest = Guest::start(tree.path(), &name, &args);
    wait_for("the guest to start", Duration::from_secs(30), || {
        ctl(&["status", &name]).status.success()
    });
    let st: serde_json::Value =
        serde_json::from_slice(&ctl(&["status", &name, "--json"]).stdout).unwrap();
    let guest_caps = st["capabilities"].as_u64().unwrap();

    let mut wider = Vec::new();
    let mut rounds_wider = 0;
    for round in 0..ROUNDS {
        let before = wider.len();
        let ready = shared.path().join(format!("ready-{round}"));
        let seen = shared.path().join(format!("seen-{round}"));
        wait_for("the watcher", Duration::from_secs(30), || ready.exists());
        // Alive long enough for the watcher to see it even when it cannot
        // stop it (under -U the process is not ptraceable until exec).
        let (code, _) = Guest::exec_in(&name, &["/bin/sleep", "0.2"]);
        assert_eq!(code, 0);
        wait_for("the watcher's report", Duration::from_secs(30), || {
            seen.exists()
        });
        let s = Sighting {
            report: std::fs::read_to_string(&seen).unwrap(),
        };
        assert!(
            !s.report.starts_with("timeout"),
            "the watcher missed round {round}"
        );
        for (section, key) in [
            ("first", "CapEff:"),
            ("first", "CapPrm:"),
            ("first", "CapBnd:"),
            ("stopped", "CapEff:"),
            ("stopped", "CapBnd:"),
        ] {
            if let Some(m) = s.mask(section, key)
                && m & !guest_caps != 0
            {
                wider.push(format!(
                    "round {round}: {section} {key} {m:016x} (guest {guest_caps:016x})"
                ));
            }
        }
        let first = s.report.lines().find(|l| l.starts_with("first")).unwrap();
        if !first.contains("Seccomp:\t2") {
            wider.push(format!("round {round}: no seccomp filter yet: {first}"));
        }
        if round == 0 {
            println!("round 0 as the guest saw it:\n{}", s.report);
        }
        rounds_wider += usize::from(wider.len() > before);
    }
    println!("{rounds_wider} of {ROUNDS} rounds saw more than the guest's set");
    assert!(
        wider.is_empty(),
        "the guest saw the exec'd process with more than its own privileges:\n{}",
        wider.join("\n")
    );
}

#[test]
fn exec_is_restricted_before_the_guest_can_see_it_without_userns() {
    privileged!();
    exec_is_restricted_before_the_guest_can_see_it(&[]);
}

#[test]
fn exec_is_restricted_before_the_guest_can_see_it_under_userns() {
    privileged!();
    exec_is_restricted_before_the_guest_can_see_it(&["-U"]);
}

#[test]
fn a_failure_to_enter_is_one_line_and_runs_nothing() {
    privileged!();
    let tree = tool_tree();
    let name = unique_name("nouserns");
    let _guest = sleeping_guest(tree.path(), &name, &[]);
    // The live guest's own state, but claiming a user namespace it does not
    // have: joining it fails, and the helper must stop right there.
    let mut state: serde_json::Value =
        serde_json::from_slice(&ctl(&["status", &name, "--json"]).stdout).unwrap();
    let fake = unique_name("fake");
    state["name"] = fake.clone().into();
    state["uid_range"] = serde_json::json!({ "shift": 1_000_000_000u32, "range": 65536 });
    let dir = Path::new("/run/nixspawn").join(&fake);
    let _lock = claim_name(&fake);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    let marker = tree.path().join("ran");
    let out = ctl(&["exec", &fake, "--", "/bin/touch", "/ran"]);
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the command was not run") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!marker.exists(), "the command ran");
}

/// The command joins the guest's cgroups in every hierarchy, the v1 ones
/// of a hybrid host too: its /proc/self/cgroup reads as the guest's PID 1's
/// (it read `devices:/../../..` here when only v2 was joined).
#[test]
fn exec_joins_the_guests_v1_cgroups_too() {
    privileged!();
    let tree = tool_tree();
    let name = unique_name("cgv1");
    let _guest = sleeping_guest(tree.path(), &name, &[]);
    let read = |path: &str| {
        let o = ctl(&["exec", &name, "--", "/bin/cat", path]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let own = read("/proc/self/cgroup");
    let init = read("/proc/1/cgroup");
    assert!(!own.contains(".."), "outside the guest's cgroups: {own}");
    assert_eq!(own, init, "the exec's cgroups are not PID 1's");
}

/// Side by side with systemd-nspawn 252: the exec's v1 cgroup lines are
/// what a guest process has there under nspawn (each hierarchy at the
/// guest's root). (nsenter, the nspawn test driver's way in, joins no
/// cgroup at all and reads `/..`.)
#[test]
fn exec_v1_cgroups_read_as_an_nspawn_guest_process() {
    privileged!();
    require_nspawn();
    let tree = tool_tree();
    let v1 = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("0::"))
            .map(String::from)
            .collect()
    };
    let theirs = answer(NSPAWN, tree.path(), &[], "cat /proc/self/cgroup");
    let name = unique_name("cgns");
    let _guest = sleeping_guest(tree.path(), &name, &[]);
    let o = ctl(&["exec", &name, "--", "/bin/cat", "/proc/self/cgroup"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!v1(&theirs).is_empty(), "no v1 hierarchy here: {theirs}");
    assert_eq!(
        v1(&ours),
        v1(&theirs),
        "ours:\n{ours}\nsystemd-nspawn's guest:\n{theirs}"
    );
}
