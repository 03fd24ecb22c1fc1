//! Privileged: the launcher in command mode, its console modes, options,
//! supervision of non-systemd payloads, and its answers to bad input.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::*;

fn dir(t: &tempfile::TempDir) -> &str {
    t.path().to_str().unwrap()
}

#[test]
fn command_exit_status_and_pipe_stdio() {
    privileged!();
    let tree = busybox_tree();
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "-D",
            dir(&tree),
            "--console=pipe",
            "/bin/sh",
            "-c",
            "cat; exit 5",
        ],
        "through stdin\n",
    );
    assert_eq!(code, 5, "{err}");
    assert_eq!(out, "through stdin\n");
    let (code, out, _) = run_nixspawn(
        &[
            "-q",
            "-D",
            dir(&tree),
            "--pipe",
            "/bin/sh",
            "-c",
            "test -t 1 && echo tty || echo notty",
        ],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "notty\n"),
        "pipe mode hands our stdout over as it is"
    );
}

#[test]
fn read_only_console_is_a_pty() {
    privileged!();
    let tree = busybox_tree();
    // Not a terminal here, so the default console mode is read-only.
    let (code, out, err) = run_nixspawn(
        &[
            "-D",
            dir(&tree),
            "/bin/sh",
            "-c",
            "test -t 0 && test -t 1 && echo on-a-pty; ls -l /dev/console",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on-a-pty"), "{out}");
    assert!(
        err.contains("Spawning container") && err.contains("exited successfully"),
        "informational lines: {err}"
    );
    let (_, _, err) = run_nixspawn(&["-q", "-D", dir(&tree), "/bin/true"], "");
    assert!(err.is_empty(), "-q prints nothing: {err}");
}

#[test]
fn options_reach_the_payload() {
    privileged!();
    let tree = busybox_tree();
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "-D",
            dir(&tree),
            "--pipe",
            "-M",
            &unique_name("opts"),
            "--hostname=h1",
            "-E",
            "FOO=bar baz",
            "--chdir=/etc",
            "--uuid=0123456789abcdef0123456789abcdef",
            "/bin/sh",
            "-c",
            "hostname; echo $FOO; pwd; echo $container_uuid; echo $$; echo $container",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "h1\nbar baz\n/etc\n01234567-89ab-cdef-0123-456789abcdef\n1\nsystemd-nspawn\n"
    );
}

#[test]
fn private_network_has_only_loopback_and_net_admin() {
    privileged!();
    let tree = busybox_tree();
    let script =
        "ls /sys/class/net; cat /sys/class/net/lo/operstate; grep CapBnd /proc/self/status";
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "-D",
            dir(&tree),
            "--pipe",
            "--private-network",
            "/bin/sh",
            "-c",
            script,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("lo"), "{out}");
    assert_eq!(
        lines.next(),
        Some("unknown"),
        "lo is up (operstate of lo reads unknown): {out}"
    );
    let bnd = cap_bnd(&out);
    assert_ne!(bnd & (1 << 12), 0, "CAP_NET_ADMIN with a private network");
}

#[test]
fn ephemeral_never_touches_the_tree_and_plain_runs_do() {
    privileged!();
    let tree = busybox_tree();
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "-x",
            "-D",
            dir(&tree),
            "--pipe",
            "/bin/sh",
            "-c",
            "echo x > /etc/written; rm /usr/bin/true; grep ' / ' /proc/self/mountinfo",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" - overlay "), "the root is an overlay: {out}");
    assert!(
        !tree.path().join("etc/written").exists(),
        "ephemeral write reached the tree"
    );
    assert!(
        tree.path().join("usr/bin/true").is_symlink(),
        "ephemeral delete reached the tree"
    );
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            "-D",
            dir(&tree),
            "--pipe",
            "/bin/sh",
            "-c",
            "echo y > /etc/written",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(tree.path().join("etc/written")).unwrap(),
        "y\n"
    );
}

#[test]
fn sigterm_kills_a_command_payload_and_cleans_up() {
    privileged!();
    let tree = busybox_tree();
    let name = unique_name("term");
    let mut guest = Guest::start(tree.path(), &name, &["--pipe", "/bin/sleep", "1000"]);
    wait_for("the container to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    let leader = leader_of(&name);
    let (code, out) = guest.exec(&[
        "/bin/sh",
        "-c",
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("/bin/sleep 1000"),
        "exec sees the guest's PID 1: {out}"
    );
    let listed = String::from_utf8_lossy(&ctl(&["list"]).stdout).into_owned();
    assert!(listed.contains(&name), "{listed}");
    guest.signal(nix::sys::signal::Signal::SIGTERM);
    // No kill signal without --boot: the payload is SIGKILLed, a failure.
    assert_eq!(
        guest.wait_exit(Duration::from_secs(10)),
        1,
        "{}",
        guest.console()
    );
    assert!(
        guest.console().contains("terminated by signal SIGKILL"),
        "{}",
        guest.console()
    );
    assert_cleaned_up(&name, Some(leader));
}

#[test]
fn kill_signal_and_stop_via_nixspawnctl() {
    privileged!();
    let tree = busybox_tree();
    let name = unique_name("stop");
    // PID 1 exits 3 when it receives SIGUSR1.
    let script = "trap 'exit 3' USR1; while :; do sleep 0.05; done";
    let mut guest = Guest::start(
        tree.path(),
        &name,
        &["--pipe", "--kill-signal=SIGUSR1", "/bin/sh", "-c", script],
    );
    wait_for("the container to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    let out = ctl(&["stop", &name, "--timeout", "10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 3);
    assert_cleaned_up(&name, None);
}

#[test]
fn notify_messages_are_forwarded_upwards() {
    privileged!();
    let tree = common::tree("bookworm");
    let sockdir = tempfile::tempdir().unwrap();
    let sock_path = sockdir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let notify_socket = sock_path.to_str().unwrap();
    let name = unique_name("notify");
    let (code, _, err) = run_nixspawn_with_env(
        &[("NOTIFY_SOCKET", notify_socket)],
        &[
            "-q",
            "-x",
            "--pipe",
            "--notify-ready=yes",
            "-M",
            &name,
            "-D",
            tree.to_str().unwrap(),
            "/bin/systemd-notify",
            "--ready",
            "--status=all set",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if got.iter().any(|m| m.contains("READY=1")) {
            break;
        }
    }
    assert!(
        got[0].starts_with("STATUS=Container started.\nX_NSPAWN_LEADER_PID="),
        "{got:?}"
    );
    let status = got
        .iter()
        .position(|m| m == "STATUS=Container running: all set")
        .expect("STATUS forwarded");
    let ready = got
        .iter()
        .position(|m| m == "READY=1")
        .expect("READY=1 forwarded");
    assert!(
        status < ready || got.len() == 2,
        "with --notify-ready=yes READY=1 follows the guest's own: {got:?}"
    );
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_nothing() {
    privileged!();
    let tree = busybox_tree();
    let d = dir(&tree);
    let cases: &[(&[&str], &str)] = &[
        (
            &["-D", "/nonexistent/tree", "/bin/true"],
            "/nonexistent/tree",
        ),
        (&["-D", d, "-b"], "os-release"),
        (
            &["-D", d, "--oci-bundle=/x", "/bin/true"],
            "--directory and --oci-bundle exclude each other",
        ),
        (
            &["-D", d, "-M", "bad/name", "/bin/true"],
            "invalid machine name",
        ),
        (
            &["-D", d, "--bind=relative", "/bin/true"],
            "not an absolute path",
        ),
        (
            &["-D", d, "--kill-signal=SIGFOO", "/bin/true"],
            "unknown signal name",
        ),
        (&["-D", d, "--register=yes", "/bin/true"], "machined"),
        (
            &["-D", d, "--pipe", "no-such-command"],
            "not found in the guest's PATH",
        ),
        (
            &["-D", d, "--bind=/nonexistent-source:/x", "/bin/true"],
            "/nonexistent-source",
        ),
        (&["-D", "/etc/hostname", "/bin/true"], "not a directory"),
    ];
    for (args, needle) in cases {
        let name = unique_name("bad");
        let mut full = vec!["-M", name.as_str()];
        if args.contains(&"-M") {
            full.clear();
        }
        full.extend_from_slice(args);
        let (code, _, err) = run_nixspawn(&full, "");
        assert_eq!(code, 1, "{args:?} should fail: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: error {err:?} does not mention {needle:?}"
        );
        let errors = err.lines().filter(|l| l.starts_with("nixspawn:")).count();
        assert_eq!(errors, 1, "{args:?}: one clear error line, got {err:?}");
        assert!(!err.contains("exited successfully"), "{err}");
        assert_cleaned_up(&name, None);
    }
    // A tree without usr/ is not an OS tree.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = run_nixspawn(&["-q", "-D", dir(&empty), "/bin/true"], "");
    assert_eq!(code, 1);
    assert!(err.contains("usr/ is missing"), "{err}");
}

#[test]
fn a_running_name_or_tree_cannot_be_taken_twice() {
    privileged!();
    let tree = busybox_tree();
    let name = unique_name("twice");
    let _guest = Guest::start(tree.path(), &name, &["--pipe", "/bin/sleep", "1000"]);
    wait_for("the container to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    let other = busybox_tree();
    let (code, _, err) = run_nixspawn(&["-q", "-M", &name, "-D", dir(&other), "/bin/true"], "");
    assert_eq!(code, 1);
    assert!(err.contains("already running"), "{err}");
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            "-M",
            &unique_name("twice2"),
            "-D",
            dir(&tree),
            "/bin/true",
        ],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains("in use by another container"), "{err}");
    assert!(
        Path::new("/run/nixspawn").join(&name).exists(),
        "the refused launch left the running one alone"
    );
}

/// Run nixspawn with the system bus looked for at `bus_socket`; returns (code, stderr).
fn run_with_bus(bus_socket: &Path, args: &[&str]) -> (i32, String) {
    let address = format!("unix:path={}", bus_socket.display());
    let (code, _, err) =
        run_nixspawn_with_env(&[("DBUS_SYSTEM_BUS_ADDRESS", address.as_str())], args, "");
    (code, err)
}

#[test]
fn register_auto_runs_standalone_and_yes_names_what_is_missing() {
    privileged!();
    let tree = busybox_tree();
    let d = dir(&tree);
    let sockets = tempfile::tempdir().unwrap();
    let missing = sockets.path().join("no-bus");

    // No bus: auto says so once and runs; no says nothing; yes refuses.
    let (code, err) = run_with_bus(&missing, &["-D", d, "--pipe", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    let notices: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("Not registering with systemd-machined"))
        .collect();
    assert_eq!(notices.len(), 1, "one informational line: {err}");
    assert!(notices[0].contains(missing.to_str().unwrap()), "{err}");
    assert!(notices[0].contains("dbus"), "names the package: {err}");

    let (code, err) = run_with_bus(&missing, &["-D", d, "--register=no", "--pipe", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("machined"), "--register=no is silent: {err}");

    let (code, err) = run_with_bus(&missing, &["-q", "-D", d, "--pipe", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "-q silences the notice: {err}");

    let (code, err) = run_with_bus(&missing, &["-D", d, "--register=yes", "/bin/true"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(
            "nixspawn: --register=yes: cannot register with systemd-machined: no system D-Bus"
        ),
        "{err}"
    );
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.contains("--register=no"), "suggests the way out: {err}");
    assert!(
        !err.contains("Spawning"),
        "refused before anything started: {err}"
    );

    // A socket that accepts but never speaks D-Bus: refused (yes) or run
    // standalone (auto) within the probe's one-second wait, never hung.
    let bus = sockets.path().join("bus");
    let _listener = std::os::unix::net::UnixListener::bind(&bus).unwrap();
    let (code, err) = run_with_bus(&bus, &["-D", d, "--register=yes", "/bin/true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--register=yes"), "{err}");
    assert!(err.contains("does not answer"), "{err}");
    let (code, err) = run_with_bus(&bus, &["-D", d, "--pipe", "/bin/true"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("Not registering with systemd-machined"),
        "{err}"
    );
}

/// PID 1 gets the caller's $TERM whatever the console mode, and no TERM at
/// all when the caller has none (as systemd-nspawn 252 does).
#[test]
fn pid1_term_follows_the_caller() {
    privileged!();
    let tree = busybox_tree();
    let run = |term: Option<&str>, console: &str| {
        let mut cmd = std::process::Command::new(NIXSPAWN);
        match term {
            Some(t) => cmd.env("TERM", t),
            None => cmd.env_remove("TERM"),
        };
        let out = cmd
            .args(["-q", "--register=no", "-D", dir(&tree), console])
            .args(["/bin/sh", "-c", "echo \"${TERM-unset}\""])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for console in ["--console=pipe", "--console=read-only"] {
        assert_eq!(run(Some("xterm-test"), console), "xterm-test", "{console}");
        assert_eq!(run(None, console), "unset", "{console}");
    }
}
