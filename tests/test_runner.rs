//! Privileged: nixspawn-test end to end. Real guests (the bookworm tree,
//! the NixOS-shaped systemd toplevel) on the runner's private vlans: a
//! server, a client on its vlan and a third node on another vlan; every
//! method of the driver API on its success and failure paths, with the
//! messages and exit statuses checked; --keep, JUnit, the failure report,
//! the global timeout, bad descriptions; and nothing left behind, also
//! after SIGKILL of the runner.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const NIXSPAWN_TEST: &str = env!("CARGO_BIN_EXE_nixspawn-test");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

/// Run nixspawn-test on `description` (the script inline) with `args`.
fn run_test(description: serde_json::Value, args: &[&str]) -> Run {
    run_test_env(description, args, &[])
}

/// `run_test` with more environment.
fn run_test_env(description: serde_json::Value, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let desc = dir.path().join("test.json");
    std::fs::write(&desc, serde_json::to_vec_pretty(&description).unwrap()).unwrap();
    let out = dir.path().join("out");
    let o = Command::new(NIXSPAWN_TEST)
        .arg("--nixspawn")
        .arg(NIXSPAWN)
        .arg("-o")
        .arg(&out)
        .args(args)
        .arg(&desc)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        out,
        _dir: dir,
    }
}

/// The machines of a run with `prefix` are all gone, with every trace.
fn assert_run_cleaned_up(prefix: &str, nodes: &[&str]) {
    for n in nodes {
        assert_cleaned_up(&format!("{prefix}{n}"), None);
    }
}

/// Network namespaces (as nsfs inode links) anyone holds, a process's
/// own or through an open descriptor, with one holder each ("PID comm").
fn held_netns() -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let who = || {
            let comm = std::fs::read_to_string(p.path().join("cmdline")).unwrap_or_default();
            format!("{pid} {}", comm.replace('\0', " "))
        };
        if let Ok(l) = std::fs::read_link(p.path().join("ns/net")) {
            out.entry(l.to_string_lossy().into_owned())
                .or_insert_with(who);
        }
        if let Ok(fds) = std::fs::read_dir(p.path().join("fd")) {
            for fd in fds.flatten() {
                if let Ok(l) = std::fs::read_link(fd.path()) {
                    let l = l.to_string_lossy().into_owned();
                    if l.starts_with("net:[") {
                        out.entry(l).or_insert_with(who);
                    }
                }
            }
        }
    }
    out
}

/// Namespaces held now that were not before the run, by a process of
/// this run: one whose command line names the run's machines (`prefix`)
/// or its own directory (`run_dir`, which holds the description the
/// runner was given). Other tests' runners, alive beside this one, are not
/// this run's leftovers (CI once counted a parallel three-node run's four
/// namespaces here).
fn netns_left(
    before: &std::collections::BTreeMap<String, String>,
    prefix: &str,
    run_dir: &Path,
) -> Vec<String> {
    let run_dir = run_dir.to_string_lossy();
    held_netns()
        .into_iter()
        .filter(|(ns, _)| !before.contains_key(ns))
        .filter(|(_, who)| who.contains(prefix) || who.contains(&*run_dir))
        .map(|(ns, who)| format!("{ns} held by {who}"))
        .collect()
}

/// The listener the server runs: systemd socket activation (the bookworm
/// tree has no HTTP server, python or nc), answering HTTP/1.0.
const HTTP_UNITS: &str = r#"
import base64 as _b64
def write_file(m, path, text):
    data = _b64.b64encode(text.encode()).decode()
    m.succeed(f"mkdir -p $(dirname {path}) && echo {data} | base64 -d > {path}")

def http_server(m, port=80, text="hello from server"):
    # reads the request (closing with it unread would reset the connection)
    write_file(m, "/run/http.sh", r"""
while IFS= read -r line; do
  case "$line" in ""|"$(printf '\r')") break ;; esac
done
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1"
""")
    write_file(m, "/run/systemd/system/http.socket", f"[Socket]\nListenStream={port}\nAccept=yes\n")
    write_file(m, "/run/systemd/system/http@.service",
        f"[Service]\nExecStart=/bin/sh /run/http.sh '{text}'\nStandardInput=socket\nStandardOutput=socket\n")
    m.succeed("systemctl daemon-reload", "systemctl restart http.socket")

def get(m, host, port=80, timeout=900):
    # curl's job, with bash's /dev/tcp
    return m.succeed(
        f"exec 3<>/dev/tcp/{host}/{port}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        timeout=timeout,
    )
"#;

#[test]
fn two_vlans_three_nodes() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14v{}-", std::process::id());
    let before = held_netns();
    let script = format!(
        r#"{HTTP_UNITS}
start_all()
server.wait_for_unit("multi-user.target")
http_server(server)
server.wait_for_unit("http.socket")
server.wait_for_open_port(80)
# names resolve to the first interface, as in the NixOS framework
assert client.succeed("getent ahostsv4 server").split()[0] == "192.168.1.3"
assert client.succeed("getent ahostsv4 other").split()[0] == "192.168.2.2"
out = get(client, "server")
assert "hello from server" in out, out
out = get(client, "2001:db8:1::3")
assert "hello from server" in out, out
# the interface per vlan, its address and MAC
assert "192.168.2.2" in other.succeed("cat /proc/net/fib_trie")
assert other.succeed("cat /sys/class/net/eth1/address").strip() == "52:54:00:12:02:02"
assert client.succeed("cat /sys/class/net/eth1/address").strip() == "52:54:00:12:01:01"
other.fail("test -e /sys/class/net/eth2")
# the third node is on vlan 2 only: the server is out of its reach
other.fail("exec 3<>/dev/tcp/192.168.1.3/80", timeout=5)
other.fail("exec 3<>/dev/tcp/server/80", timeout=5)
print("REACHED-THE-END")
"#
    );
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {
                "server": {"tree": tree, "vlans": [1]},
                "client": {"tree": tree, "vlans": [1]},
                "other": {"tree": tree, "vlans": [2]},
            },
            "test_script": script,
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("REACHED-THE-END"), "{}", r.stdout);
    // Console lines are prefixed as the driver prints serial lines.
    assert!(r.stderr.contains("server # "), "{}", r.stderr);
    assert!(r.out.join("server.console.log").exists());
    let timeline = std::fs::read_to_string(r.out.join("timeline.svg")).unwrap();
    assert!(timeline.contains("multi-user.target"), "{timeline}");
    assert!(r.stderr.contains("server: launch +"), "{}", r.stderr);
    assert_run_cleaned_up(&prefix, &["server", "client", "other"]);
    let new = netns_left(&before, &prefix, r.out.parent().unwrap());
    assert!(new.is_empty(), "network namespaces left: {new:?}");
}

/// The API's methods, each on its success path and its failure path; the
/// failures are caught in the script and their messages printed.
#[test]
fn every_method_on_both_paths() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14m{}-", std::process::id());
    let host_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(host_file.path(), "from the host\n").unwrap();
    std::fs::set_permissions(
        host_file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let script = format!(
        r#"{HTTP_UNITS}
import time
results = []
def expect(text, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except Exception as e:
        assert text in str(e), f"{{text!r}} not in {{e!r}}"
        results.append(text)
        print(f"FAILED-AS-EXPECTED {{type(e).__name__}}: {{e}}")
        return
    raise Exception(f"{{fn.__name__}} did not fail")

assert machines == [machine]
with subtest("commands"):
    machine.start()
    assert machine.execute("echo out; echo err >&2; exit 3") == (3, "out\n")
    assert machine.execute("exit 7", check_return=False) == (-1, "")
    assert machine.execute("touch /tmp/detached", check_output=False) == (-2, "")
    assert machine.execute("printf 'a\\x01b'")[1] == "a\x01b"
    assert machine.succeed("echo a", "echo b") == "a\nb\n"
    expect("command `false` failed (exit code 1)", machine.succeed, "false")
    expect("command `exit 42` failed (exit code 42)", machine.succeed, "exit 42")
    assert machine.fail("false") == ""
    expect("command `true` unexpectedly succeeded", machine.fail, "true")
    # set -euo pipefail, as the driver's shell
    assert machine.execute("false | true")[0] == 1
    assert machine.execute("echo $UNSET_VARIABLE")[0] != 0
    t0 = time.monotonic()
    assert machine.execute("sleep 30", timeout=1)[0] == 124
    assert time.monotonic() - t0 < 10
    machine.sleep(0.2)
    machine.wait_for_file("/tmp/detached", timeout=10)
    expect("action timed out", machine.wait_for_file, "/nonexistent", timeout=2)
    machine.wait_until_succeeds("test -e /tmp/later || (touch /tmp/later; false)", timeout=10)
    expect("action timed out", machine.wait_until_succeeds, "false", timeout=2)
    machine.wait_until_fails("if test -e /tmp/once; then false; else touch /tmp/once; fi", timeout=10)
    expect("action timed out", machine.wait_until_fails, "true", timeout=2)
    n = 0
    def twice(last):
        global n
        n += 1
        return n >= 2
    retry(twice, timeout_seconds=10)
    expect("action timed out", retry, lambda last: False, timeout_seconds=1)
with subtest("units"):
    machine.wait_for_unit("multi-user.target")
    machine.succeed("mkdir -p /run/systemd/system",
        "printf '[Service]\\nExecStart=/bin/false\\n' > /run/systemd/system/broken.service",
        "systemctl daemon-reload")
    machine.execute("systemctl start broken.service")
    expect('unit "broken.service" reached state "failed"', machine.wait_for_unit, "broken.service", timeout=10)
    expect('unit "never.service" is inactive and there are no pending jobs', machine.wait_for_unit, "never.service", timeout=10)
    info = machine.get_unit_info("multi-user.target")
    assert info["ActiveState"] == "active" and info["Id"] == "multi-user.target", info
    assert machine.get_unit_property("broken.service", "ActiveState") == "failed"
    machine.require_unit_state("multi-user.target")
    machine.require_unit_state("broken.service", "failed")
    expect("to to be in state 'active' but it is in state 'failed'", machine.require_unit_state, "broken.service")
    rc, out = machine.systemctl("is-active multi-user.target")
    assert (rc, out) == (0, "active\n"), (rc, out)
    assert machine.systemctl("is-active broken.service")[0] != 0
    expect('systemctl show printed no "NoSuchProperty"', machine.get_unit_property, "x.service", "NoSuchProperty")
with subtest("ports and sockets"):
    http_server(machine, port=8080)
    machine.wait_for_open_port(8080, timeout=10)
    expect("action timed out", machine.wait_for_open_port, 8081, timeout=2)
    expect("action timed out", machine.wait_for_closed_port, 8080, timeout=2)
    machine.succeed("systemctl stop http.socket")
    machine.wait_for_closed_port(8080, timeout=10)
    machine.wait_for_open_unix_socket("/run/systemd/private", timeout=10)
    machine.wait_for_open_unix_socket("/run/systemd/notify", is_datagram=True, timeout=10)
    expect("action timed out", machine.wait_for_open_unix_socket, "/run/nope.sock", timeout=2)
with subtest("console"):
    machine.wait_for_console_text("Reached target.*Multi-User", timeout=30)
    expect("did not appear on the console", machine.wait_for_console_text, "never printed 1234", timeout=2)
    assert "Multi-User" in machine.get_console_log()
with subtest("files"):
    machine.copy_from_host("{host_file}", "/root/dir/copied")
    assert machine.succeed("cat /root/dir/copied; stat -c '%a %u' /root/dir/copied") == "from the host\n640 0\n"
    machine.succeed("mkdir -p /root/tree/sub && echo deep > /root/tree/sub/f")
    machine.copy_from_machine("/root/tree", "fromtree")
    assert open(os.path.join(machine.out_dir, "fromtree/tree/sub/f")).read() == "deep\n"
    machine.copy_from_vm("/root/dir/copied")
    expect("failed (exit code", machine.copy_from_machine, "/nonexistent")
with subtest("lifecycle"):
    machine.succeed("touch /run/marker")
    machine.reboot()
    machine.fail("test -e /run/marker")
    assert machine.succeed("hostname").strip() == "machine"
    machine.shutdown()
    machine.start()
    machine.succeed("true")
    machine.crash()
    machine.start()
    machine.wait_for_unit("multi-user.target")
    machine.execute("poweroff", check_output=False)
    machine.wait_for_shutdown()
    assert not machine.is_up()
    expect("not available in a container", machine.screenshot, "x")
    expect("not available in a container", machine.send_key, "ctrl-alt-delete")
    join_all()
print("RESULTS", len(results))
"#,
        host_file = host_file.path().display()
    );
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 600,
            "nodes": {"machine": {"tree": tree}},
            "test_script": script,
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let expected = r.stdout.matches("FAILED-AS-EXPECTED").count();
    assert!(
        r.stdout.contains(&format!("RESULTS {expected}")) && expected >= 18,
        "{}",
        r.stdout
    );
    assert_run_cleaned_up(&prefix, &["machine"]);
}

/// A failing `succeed`: exit 1 with the failing line, the failure report
/// of every node, a JUnit report naming the failure, the timeline drawn.
#[test]
fn a_failure_exits_1_with_the_line_and_the_report() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14f{}-", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let script = "start_all()\nwith subtest(\"fine\"):\n    a.succeed(\"true\")\n    b.wait_for_unit(\"multi-user.target\")\nwith subtest(\"breaks\"):\n    a.succeed(\"mkdir -p /run/systemd/system && printf '[Service]\\\\nExecStart=/bin/false\\\\n' > /run/systemd/system/bad.service && systemctl daemon-reload && systemctl start bad.service || true\")\n    a.succeed(\"echo to-the-log; exit 3\")\n    print(\"NOT-REACHED\")\n";
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {"a": {"tree": tree}, "b": {"tree": tree, "vlans": [1, 2]}},
            "test_script": script,
        }),
        &["--junit", junit.to_str().unwrap()],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!r.stdout.contains("NOT-REACHED"));
    assert!(
        r.stderr.contains(
            "!!! RequestedAssertionFailed: command `echo to-the-log; exit 3` failed (exit code 3)"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("test-script.py:7:     a.succeed(\"echo to-the-log; exit 3\")")
            || r.stderr
                .contains(":7: a.succeed(\"echo to-the-log; exit 3\")"),
        "the failing line: {}",
        r.stderr
    );
    assert!(r.stderr.contains("output: to-the-log"), "{}", r.stderr);
    assert!(r.stderr.contains("!!! failure report"), "{}", r.stderr);
    assert!(r.stderr.contains("a: failed units:"), "{}", r.stderr);
    assert!(r.stderr.contains("bad.service"), "{}", r.stderr);
    assert!(r.stderr.contains("b: journal tail:"), "{}", r.stderr);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"name="NixOS integration test""#), "{xml}");
    assert!(xml.contains(r#"<testcase name="fine""#), "{xml}");
    assert!(xml.contains(r#"<testcase name="breaks""#), "{xml}");
    assert!(xml.contains("failures=\"1\""), "{xml}");
    assert!(xml.contains("exit code 3"), "{xml}");
    assert!(r.out.join("timeline.svg").exists());
    assert_run_cleaned_up(&prefix, &["a", "b"]);
}

#[test]
fn the_global_timeout_ends_the_run_with_143() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14t{}-", std::process::id());
    let before = held_netns();
    let t0 = Instant::now();
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 6,
            "nodes": {"a": {"tree": tree}},
            "test_script": "a.succeed('true')\nprint('BOOTED')\na.succeed('sleep 600')\n",
        }),
        &[],
    );
    assert_eq!(r.code, 143, "{}", r.stderr);
    assert!(r.stdout.contains("BOOTED"), "{}", r.stdout);
    assert!(
        r.stderr.contains("timeout reached; test terminating..."),
        "{}",
        r.stderr
    );
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert_run_cleaned_up(&prefix, &["a"]);
    let new = netns_left(&before, &prefix, r.out.parent().unwrap());
    assert!(new.is_empty(), "network namespaces left: {new:?}");
}

#[test]
fn keep_leaves_the_nodes_running() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14k{}-", std::process::id());
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "nodes": {"a": {"tree": tree}, "b": {"tree": tree}},
            "test_script": format!("{HTTP_UNITS}\na.succeed('echo kept > /run/kept')\nhttp_server(a)\nb.succeed('true')\n"),
        }),
        &["--keep"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    let out = ctl(&["exec", &a, "--", "cat", "/run/kept"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    // The vlans are kept too: b reaches a by name.
    let out = ctl(&[
        "exec",
        &b,
        "--",
        "bash",
        "-c",
        "getent hosts a; exec 3<>/dev/tcp/a/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2001:db8:1::1") && text.contains("hello from server"),
        "{out:?}"
    );
    let pin = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("nixspawn-test: vlans kept in network namespace "))
        .and_then(|l| l.split(' ').next())
        .map(PathBuf::from)
        .expect("the pinned namespace is named");
    for m in [&a, &b] {
        assert!(ctl(&["stop", m]).status.success());
        assert_cleaned_up(m, None);
    }
    nix::mount::umount(&pin).unwrap();
    std::fs::remove_file(&pin).unwrap();
}

/// SIGKILL of the runner: the nodes, their namespaces and the vlans go.
#[test]
fn sigkill_of_the_runner_leaves_nothing() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14s{}-", std::process::id());
    let before = held_netns();
    let dir = tempfile::tempdir().unwrap();
    let desc = dir.path().join("t.json");
    std::fs::write(
        &desc,
        serde_json::to_vec(&json!({
            "machine_prefix": prefix,
            "nodes": {"a": {"tree": tree}, "b": {"tree": tree, "vlans": [1, 2]}},
            "test_script": "start_all()\na.succeed('true')\nb.succeed('true')\nprint('UP', flush=True)\nimport time\ntime.sleep(600)\n",
        }))
        .unwrap(),
    )
    .unwrap();
    let mut child = Command::new(NIXSPAWN_TEST)
        .args(["--nixspawn", NIXSPAWN])
        .arg(&desc)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "UP\n");
    let python: i32 = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .find(|p: &i32| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("nixspawn_test_driver.py"))
        })
        .expect("the driver is the runner's child");
    let leaders: Vec<i32> = ["a", "b"]
        .iter()
        .map(|n| leader_of(&format!("{prefix}{n}")))
        .collect();
    // The run's own namespaces: the runner holds each by a descriptor.
    let ours: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("net:["))
        .collect();
    assert_eq!(ours.len(), 3, "the run's, a's and b's: {ours:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    for (n, l) in ["a", "b"].iter().zip(leaders) {
        // The launcher dies with the runner; its janitor then ends the guest.
        wait_for("the guest to end", Duration::from_secs(30), || {
            !Path::new(&format!("/proc/{l}")).exists()
        });
        assert_cleaned_up(&format!("{prefix}{n}"), Some(l));
    }
    // The driver (python3) dies with the runner too.
    wait_for("the driver to go", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{python}")).exists()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = held_netns();
        let mut new = netns_left(&before, &prefix, dir.path());
        new.extend(
            ours.iter()
                .filter_map(|ns| held.get(ns).map(|who| format!("{ns} held by {who}"))),
        );
        if new.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "network namespaces left: {new:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A NixOS-shaped toplevel (closure-only store, stage 2 execs systemd)
/// next to a bookworm node on one vlan.
#[test]
fn a_nixos_toplevel_node() {
    privileged!();
    let tree = tree("bookworm");
    let fx = nixos();
    let prefix = format!("t14n{}-", std::process::id());
    let script = format!(
        r#"{HTTP_UNITS}
start_all()
nixos.wait_for_unit("multi-user.target")
assert nixos.succeed("readlink /run/current-system").strip() == "{toplevel}"
http_server(debian)
debian.wait_for_open_port(80)
assert "hello from server" in get(nixos, "debian")
assert nixos.succeed("getent ahostsv4 debian").split()[0] == "192.168.1.1"
print("NIXOS-OK")
"#,
        toplevel = fx.systemd
    );
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {"nixos": {"toplevel": fx.systemd}, "debian": {"tree": tree}},
            "test_script": script,
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("NIXOS-OK"));
    assert_run_cleaned_up(&prefix, &["nixos", "debian"]);
}

#[test]
fn bad_descriptions_fail_in_one_line_with_nothing_started() {
    privileged!();
    let tree = tree("bookworm");
    for (desc, want) in [
        (json!({"nodes": {}, "test_script": ""}), "no nodes"),
        (
            json!({"nodes": {"a": {"tree": "/nonexistent"}}, "test_script": ""}),
            "tree /nonexistent is not a directory",
        ),
        (
            json!({"nodes": {"a": {"tree": tree, "options": ["--machine=x"]}}, "test_script": ""}),
            "option --machine is set by nixspawn-test itself",
        ),
        (
            json!({"nodes": {"a": {"tree": tree}}}),
            "give exactly one of test_script and test_script_file",
        ),
        (
            json!({"nodes": {"a": {"tree": tree, "vlan": 1}}, "test_script": ""}),
            "unknown field `vlan`",
        ),
    ] {
        let r = run_test(desc, &[]);
        assert_eq!(r.code, 2, "{want}: {}", r.stderr);
        let lines: Vec<_> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(lines[0].contains(want), "{want}: {}", r.stderr);
    }
    // A node whose nixspawn refuses its options: MachineError, exit 1.
    let r = run_test(
        json!({
            "machine_prefix": format!("t14b{}-", std::process::id()),
            "nodes": {"a": {"tree": tree, "options": ["--no-such-option"]}},
            "test_script": "a.succeed('true')",
        }),
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("MachineError: a is not running (nixspawn exited"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("a # "), "{}", r.stderr);
}

/// Commands go through one long-lived entry per node that forks each of
/// them, plain word lists without bash: the same answers as through bash
/// (status, stdout, environment, 126/127), and the command has exactly a
/// guest process's lot (PID 1's bounding set, seccomp, no_new_privs, the
/// guest's cgroup and namespaces), while the entry stays invisible in
/// the guest.
#[test]
fn the_entry_answers_as_bash_does_with_a_guests_privileges() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14e{}-", std::process::id());
    let script = r#"
machine.wait_for_unit("multi-user.target")
# Each pair: the plain form (run directly) and the same through bash (a
# trailing ';' makes it shell syntax).
for cmd in ["true", "false", "ls /", "ls /nonexistent", "no-such-command-14",
            "/etc/passwd", "/no/such/path", "env", "id", "cat /proc/self/cgroup",
            "readlink /proc/self/ns/pid /proc/self/ns/net /proc/self/ns/mnt",
            "stat -L -c %d:%i /proc/self/root", "grep Cap /proc/self/status",
            "grep Seccomp /proc/self/status", "grep NoNewPrivs /proc/self/status"]:
    plain = machine.execute(cmd)
    shell = machine.execute(cmd + ";")
    if cmd == "env":
        # bash's $_ is the program it ran; so is ours
        assert sorted(plain[1].splitlines()) == sorted(shell[1].splitlines()), (plain, shell)
        plain, shell = plain[0], shell[0]
    assert plain == shell, (cmd, plain, shell)
    print("SAME", repr(cmd))
assert machine.execute("no-such-command-14")[0] == 127
assert machine.execute("/etc/passwd")[0] == 126
# what a command has is what the guest's PID 1 has
mine = machine.succeed("grep -E '^(CapBnd|Seccomp|NoNewPrivs)' /proc/self/status")
init = machine.succeed("grep -E '^(CapBnd|Seccomp|NoNewPrivs)' /proc/1/status")
assert mine == init, (mine, init)
assert "Seccomp:\t2" in mine, mine
for ns in ["pid", "net", "mnt", "uts", "ipc", "cgroup"]:
    assert machine.succeed(f"readlink /proc/self/ns/{ns}") == machine.succeed(f"readlink /proc/1/ns/{ns}"), ns
assert machine.succeed("stat -L -c %d:%i /proc/self/root") == machine.succeed("stat -L -c %d:%i /proc/1/root")
cgroup = machine.succeed("cat /proc/self/cgroup")
init = machine.succeed("cat /proc/1/cgroup")
# every hierarchy is the guest's: outside its namespace root a line would
# read /../.. (on this hybrid host the v1 `devices` one did); the v1 lines
# are PID 1's (systemd moves itself only in v2, to init.scope)
v2 = [l for l in cgroup.splitlines() if l.startswith("0::")]
assert len(v2) == 1 and ".." not in cgroup, cgroup
v1 = lambda text: [l for l in text.splitlines() if not l.startswith("0::")]
assert v1(cgroup) == v1(init), (cgroup, init)
print("CGROUP", repr(cgroup))
# the entry is not in the guest's PID namespace
assert "nixspawn-test" not in machine.succeed("cat /proc/[0-9]*/comm 2>/dev/null || true"), "entry visible"
# a background process holding stdout: the answer does not wait for it
import time
t0 = time.monotonic()
rc, out = machine.execute("echo started; sleep 600 &")
assert (rc, out) == (0, "started\n"), (rc, out)
assert time.monotonic() - t0 < 30, "execute waited for the background process"
machine.succeed("grep -qx sleep /proc/[0-9]*/comm")
# a reboot gets a new entry
machine.reboot()
assert machine.succeed("readlink /proc/self/ns/pid") == machine.succeed("readlink /proc/1/ns/pid")
print("ENTRY-OK")
"#;
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {"machine": {"tree": tree}},
            "test_script": script,
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ENTRY-OK"), "{}", r.stdout);
    assert_eq!(r.stdout.matches("SAME ").count(), 15, "{}", r.stdout);
    // command not found goes to the console log, as bash's message does
    let console = std::fs::read_to_string(r.out.join("machine.console.log")).unwrap();
    assert!(
        console.contains("no-such-command-14: command not found"),
        "{console}"
    );
    assert_run_cleaned_up(&prefix, &["machine"]);
}

/// polling_condition (decorator, with arguments, context manager, wait),
/// the vlan objects, and the XML log ($LOGFILE) with nests and serial lines.
#[test]
fn polling_conditions_vlans_and_the_xml_log() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14p{}-", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let logfile = dir.path().join("log.xml");
    let script = r#"
start_all()
assert [v.nr for v in vlans] == [1, 2], vlans
assert vlan1.machines == [a, b] and vlan2.machines == [b], (vlan1.machines, vlan2.machines)
assert machines_nspawn == machines and machines_qemu == []
a.wait_for_unit("multi-user.target")
calls = []

@polling_condition
def a_is_up():
    "a is up"
    calls.append(1)
    a.succeed("true")

with a_is_up:
    b.succeed("true")
    b.succeed("true")
assert len(calls) == 1, calls  # once per 2 s at most

@polling_condition(seconds_interval=0, description="the flag file is absent")
def no_flag():
    return a.execute("test -e /run/flag")[0] != 0

with no_flag:
    b.succeed("true")
    a.succeed("touch /run/flag")
    try:
        b.succeed("true")
    except PollingConditionError as e:
        print("POLL-FAILED", e)
    else:
        raise Exception("the condition did not stop the command")

@polling_condition(description="the flag file is gone")
def flag_gone():
    return a.execute("test -e /run/flag")[0] != 0

a.execute("(sleep 1; rm /run/flag) >/dev/null 2>&1 &")
flag_gone.wait(timeout=20)
a.succeed("touch /run/flag")
try:
    flag_gone.wait(timeout=2)
except RequestedAssertionFailed as e:
    print("WAIT-FAILED", e)
with no_flag:
    a.succeed("true")
print("NOT-REACHED")
"#;
    let r = run_test_env(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {"a": {"tree": tree, "vlans": [1]}, "b": {"tree": tree, "vlans": [1, 2]}},
            "test_script": script,
        }),
        &[],
        &[("LOGFILE", &logfile)],
    );
    // The last `with no_flag` fails the test, exit 1, with the message.
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("POLL-FAILED Polling condition failed: the flag file is absent"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("WAIT-FAILED action timed out"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("NOT-REACHED"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("PollingConditionError: Polling condition failed: the flag file is absent"),
        "{}",
        r.stderr
    );
    let xml = std::fs::read_to_string(&logfile).unwrap();
    assert!(
        xml.starts_with("<?xml") && xml.trim_end().ends_with("</logfile>"),
        "{xml}"
    );
    assert!(
        xml.contains("<nest><head machine=\"a\">waiting for unit multi-user.target</head>"),
        "{xml}"
    );
    assert!(xml.contains("checking polling condition a is up"), "{xml}");
    assert!(xml.contains("type=\"serial\""), "{xml}");
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])",
        ])
        .arg(&logfile)
        .status()
        .unwrap();
    assert!(parsed.success(), "the XML log does not parse: {xml}");
    assert_run_cleaned_up(&prefix, &["a", "b"]);
}

/// Start nixspawn-test on a pty (all three standard descriptors); the
/// master and the child.
fn run_on_pty(
    description: serde_json::Value,
    args: &[&str],
    dir: &Path,
) -> (std::os::fd::OwnedFd, std::process::Child) {
    let desc = dir.join("test.json");
    std::fs::write(&desc, serde_json::to_vec_pretty(&description).unwrap()).unwrap();
    let size = nix::pty::Winsize {
        ws_row: 50,
        ws_col: 250,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let child = Command::new(NIXSPAWN_TEST)
        .arg("--nixspawn")
        .arg(NIXSPAWN)
        .arg("-o")
        .arg(dir.join("out"))
        .args(args)
        .arg(&desc)
        .env("TERM", "xterm")
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    (pty.master, child)
}

/// What a terminal showed, read on from where the last match ended.
struct Transcript<'a> {
    fd: &'a std::os::fd::OwnedFd,
    seen: String,
    pos: usize,
}

impl Transcript<'_> {
    /// Up to and with the next `needle`.
    fn until(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.seen[self.pos..].find(needle) {
                let end = self.pos + i + needle.len();
                let out = self.seen[self.pos..end].to_owned();
                self.pos = end;
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; terminal showed: {:?}",
                &self.seen[self.pos..]
            );
            self.seen.push_str(&String::from_utf8_lossy(&read_available(
                self.fd,
                Duration::from_millis(50),
            )));
        }
    }
}

/// On a terminal: the live status line says which node boots and which
/// command runs for what; off a terminal there is none (the other tests
/// capture stderr through a pipe and see no status line).
#[test]
fn a_status_line_on_a_terminal() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14s{}-", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let (master, mut child) = run_on_pty(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 120,
            "nodes": {"a": {"tree": tree}},
            "test_script": "a.wait_for_unit('multi-user.target')\na.wait_until_succeeds('sleep 1; test -e /run/never-14', timeout=3)\n",
        }),
        &[],
        dir.path(),
    );
    let mut term = Transcript {
        fd: &master,
        seen: String::new(),
        pos: 0,
    };
    let seen = term.until("nixspawn-test: FAILED", Duration::from_secs(120));
    assert_eq!(child.wait().unwrap().code(), Some(1), "{seen}");
    assert!(seen.contains("\x1b[7ma: booting"), "{seen}");
    assert!(
        seen.contains("a: waiting for success: sleep 1; test -e /run/never-14: `sleep 1; test -e /run/never-14`"),
        "{seen}"
    );
    // (and never through a pipe)
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "nodes": {"a": {"tree": tree}},
            "test_script": "a.succeed('sleep 0.5')\n",
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("\x1b[7m"), "{}", r.stderr);
    assert_run_cleaned_up(&prefix, &["a"]);
}

/// --interactive on a real terminal: a Python prompt with the nodes
/// defined; a command's output comes back; a failing one raises there
/// without ending the session; end of input ends the run, nothing left.
#[test]
fn interactive_on_a_pty() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14i{}-", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let (master, mut child) = run_on_pty(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 120,
            "nodes": {"a": {"tree": tree}},
            "test_script": "raise Exception('the script is not run')\n",
        }),
        &["--interactive"],
        dir.path(),
    );
    let write = |s: &str| nix::unistd::write(&master, s.as_bytes()).unwrap();
    let mut term = Transcript {
        fd: &master,
        seen: String::new(),
        pos: 0,
    };
    term.until(">>> ", Duration::from_secs(30));
    write("print('OUT:' + a.succeed('echo from-the-guest').strip())\n");
    term.until("OUT:from-the-guest", Duration::from_secs(60));
    term.until(">>> ", Duration::from_secs(10));
    write("a.succeed('exit 5')\n");
    let seen = term.until(">>> ", Duration::from_secs(30));
    assert!(
        seen.contains("RequestedAssertionFailed: command `exit 5` failed (exit code 5)"),
        "{seen}"
    );
    write("\x04");
    let rest = term.until("nixspawn-test: passed", Duration::from_secs(60));
    assert_eq!(child.wait().unwrap().code(), Some(0), "{rest}");
    assert!(!rest.contains("the script is not run"), "{rest}");
    assert_run_cleaned_up(&prefix, &["a"]);
}

/// The entry under a guest with its own user namespace (`-U`, what the
/// nixpkgs nspawn backend's uid-range gives): commands run as the guest's
/// root (a shifted host uid), with PID 1's bounding set and the guest's
/// cgroup, plain and through bash alike.
#[test]
fn the_entry_under_a_user_namespace() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14u{}-", std::process::id());
    let script = r#"
machine.wait_for_unit("multi-user.target")
assert machine.succeed("id -u") == "0\n"
assert machine.succeed("id -u;") == "0\n"
uid_map = machine.succeed("cat /proc/self/uid_map").split()
assert uid_map[0] == "0" and uid_map[1] != "0", uid_map
assert machine.succeed("readlink /proc/self/ns/user") == machine.succeed("readlink /proc/1/ns/user")
mine = machine.succeed("grep -E '^(CapBnd|Seccomp|NoNewPrivs)' /proc/self/status")
assert mine == machine.succeed("grep -E '^(CapBnd|Seccomp|NoNewPrivs)' /proc/1/status"), mine
assert machine.succeed("grep CapBnd /proc/self/status") == machine.succeed("grep CapBnd /proc/1/status")
cgroup = machine.succeed("cat /proc/self/cgroup")
v2 = [l for l in cgroup.splitlines() if l.startswith("0::")]
assert len(v2) == 1 and ".." not in cgroup, cgroup
v1 = lambda text: [l for l in text.splitlines() if not l.startswith("0::")]
assert v1(cgroup) == v1(machine.succeed("cat /proc/1/cgroup")), cgroup
assert machine.execute("no-such-command-14")[0] == 127
print("USERNS-ENTRY-OK")
"#;
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {"machine": {"tree": tree, "options": ["-U"]}},
            "test_script": script,
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("USERNS-ENTRY-OK"), "{}", r.stdout);
    assert_run_cleaned_up(&prefix, &["machine"]);
}

/// A command's standard descriptors are pipes (or the guest's own
/// /dev/null), never a host file's: the guest's root attacks them through
/// /proc/self/fd (stderr used to be the console log itself, stdin the host
/// file `copy_from_host` copies, stdout the host file `copy_from_machine`
/// writes, a detached command's the host's /dev/null): it reads their
/// links for host paths, chmods and truncates through them and reads the
/// console log back. The host files keep their mode and content.
#[test]
fn commands_get_no_host_file_descriptors() {
    privileged!();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tree = tree("bookworm");
    let prefix = format!("t14f{}-", std::process::id());
    let files = tempfile::tempdir().unwrap();
    let input = files.path().join("input");
    let output = files.path().join("output");
    std::fs::write(&input, "host input\n").unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        r#"
INPUT, OUTPUT = {input:?}, {output:?}
machine.succeed("echo MARKER-STDERR-1 >&2")
print("STDERR-LINK", repr(machine.succeed("readlink /proc/self/fd/2")))
rc, seen = machine.execute("timeout 2 head -c 300 /proc/self/fd/2")
print("STDERR-READ", repr(seen))
machine.execute("chmod 0600 /proc/self/fd/2")
machine.execute("truncate -s 0 /proc/self/fd/2")
answer = machine._exec("readlink /proc/self/fd/0; chmod 0600 /proc/self/fd/0 || true; cat >/dev/null", 60, stdin=INPUT)
print("STDIN-LINK", repr(answer["stdout"]))
machine._exec("readlink /proc/self/fd/1; chmod 0600 /proc/self/fd/1 || true", 60, stdout_file=OUTPUT)
machine.execute("stat -L -c %d:%i /proc/self/fd/0 > /run/null-id", check_output=False)
machine.wait_for_file("/run/null-id")
machine.wait_until_succeeds("test -s /run/null-id")
print("NULL-ID", machine.succeed("cat /run/null-id").strip())
print("FILES-DONE")
"#,
        input = input.display().to_string(),
        output = output.display().to_string(),
    );
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {"machine": {"tree": tree}},
            "test_script": script,
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("FILES-DONE"), "{}", r.stdout);
    let line = |key: &str| -> String {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {}", r.stdout))
            .to_owned()
    };
    let log = r.out.join("machine.console.log");
    // Every finding, so a failure shows all the attack reached.
    let mut found = Vec::new();
    // No host path through the links.
    for key in ["STDERR-LINK", "STDIN-LINK"] {
        let link = line(key);
        if !link.starts_with("'pipe:[") {
            found.push(format!("{key}: {link}"));
        }
    }
    let written = std::fs::read_to_string(&output).unwrap();
    if !written.starts_with("pipe:[") {
        found.push(format!("stdout's link: {written:?}"));
    }
    // The console log was not read back, truncated or chmodded.
    let read = line("STDERR-READ");
    if read != "''" {
        found.push(format!("read the console log back: {read}"));
    }
    let console = std::fs::read_to_string(&log).unwrap();
    if !console.contains("MARKER-STDERR-1") {
        found.push(format!(
            "truncated the console log to {} bytes",
            console.len()
        ));
    }
    for (file, what) in [
        (&log, "console log"),
        (&input, "input"),
        (&output, "output"),
    ] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o7777;
        if mode != 0o644 {
            found.push(format!("chmodded the {what} to {mode:o}"));
        }
    }
    if std::fs::read_to_string(&input).unwrap() != "host input\n" {
        found.push("changed the input".into());
    }
    // A detached command's stdin is the guest's /dev/null, not the host's.
    let null = std::fs::metadata("/dev/null").unwrap();
    if line("NULL-ID") == format!("{}:{}", null.dev(), null.ino()) {
        found.push("a detached command's stdin is the host's /dev/null".into());
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
    assert_run_cleaned_up(&prefix, &["machine"]);
}

/// wait_for_unit on a unit whose start job waits behind another unit:
/// inactive, with a job of its own, which `systemctl show -p Job` names
/// (so the wait needs no `list-jobs`), until it is active.
#[test]
fn wait_for_unit_waits_for_a_queued_start_job() {
    privileged!();
    let tree = tree("bookworm");
    let prefix = format!("t14j{}-", std::process::id());
    let script = r#"
machine.succeed("systemd-run --no-block --unit=s6-first -p Type=oneshot sleep 2")
machine.succeed("systemd-run --no-block --unit=s6-second -p After=s6-first.service -p Type=oneshot -p RemainAfterExit=yes true")
shown = machine.succeed("systemctl show s6-second.service --property=ActiveState --property=Job")
print("SHOWN", repr(shown))
assert "ActiveState=inactive" in shown and any(l.startswith("Job=") and l[4:].strip() not in ("", "0") for l in shown.splitlines()), shown
machine.wait_for_unit("s6-second.service")
assert machine.succeed("systemctl is-active s6-second.service").strip() == "active"
print("QUEUED-OK")
"#;
    let r = run_test(
        json!({
            "machine_prefix": prefix,
            "global_timeout": 300,
            "nodes": {"machine": {"tree": tree}},
            "test_script": script,
        }),
        &[],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("QUEUED-OK"), "{}", r.stdout);
    assert_run_cleaned_up(&prefix, &["machine"]);
}
