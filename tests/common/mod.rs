//! Shared helpers for the privileged tests: fixture trees, launching
//! guests, running commands in them, and checking that nothing is left;
//! and `privileged!()`, with which each of them skips itself where it
//! cannot run.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const NIXSPAWN: &str = env!("CARGO_BIN_EXE_nixspawn");
pub const NIXSPAWNCTL: &str = env!("CARGO_BIN_EXE_nixspawnctl");

/// Set (to 1) where every privileged test must run, as in CI
/// (integration/test.sh): there a test that would skip itself fails.
pub const REQUIRE_PRIVILEGED: &str = "NIXSPAWN_REQUIRE_PRIVILEGED";

/// Why a privileged test cannot run here, if it cannot.
pub fn privileged_skip_reason() -> Option<&'static str> {
    (!nix::unistd::geteuid().is_root()).then_some(
        "needs root (it boots containers: namespaces, mounts, cgroups); run the suite as root, e.g. sudo integration/test.sh",
    )
}

/// Say that the calling test is skipped and why, where the person running
/// the tests sees it: straight to stderr, past libtest's capture, so
/// `cargo test` shows it next to the test's `ok` (nextest shows it with
/// `--no-capture` or `--success-output=immediate`). Where skipping is not
/// allowed, fail instead.
pub fn skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("a privileged test");
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some_and(|v| v == "1") {
        panic!("{test} would be skipped, which {REQUIRE_PRIVILEGED}=1 forbids: it {reason}");
    }
    // One write, so that parallel tests do not cut into the line.
    let _ = std::io::stderr().write_all(format!("{test}: skipped: {reason}\n").as_bytes());
}

/// The first statement of every privileged test: returns from the test,
/// saying why, where it cannot run (not root), and fails instead under
/// `NIXSPAWN_REQUIRE_PRIVILEGED=1`. A test that needs nothing of the kind
/// goes without it.
macro_rules! privileged {
    () => {
        if let Some(reason) = $crate::common::privileged_skip_reason() {
            $crate::common::skip(reason);
            return;
        }
    };
}
pub(crate) use privileged;

/// These tests create namespaces and mounts: they need root, and say so.
/// (A test that starts with `privileged!()` never gets here without it.)
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: start it with privileged!() and run the suite as root (see README.md, `sudo integration/test.sh`)"
    );
}

/// A cached Debian fixture tree ("bookworm" or "sid").
pub fn tree(suite: &str) -> PathBuf {
    require_root();
    let cache = std::env::var_os("NIXSPAWN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or("/var/cache/nixspawn/fixtures".into());
    let tree = cache.join(format!("debian-{suite}"));
    assert!(
        tree.join(".nixspawn-fixture").exists(),
        "fixture {} is missing: build it with integration/fixtures/debian-tree.sh {suite} (integration/test.sh does)",
        tree.display()
    );
    tree
}

/// A machine name unique to this test process and call.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Host mount table lines, minus the fields that change on their own and
/// the mounts other tests running at the same time make and remove: the
/// network namespaces pinned under /run/netns (network tests, the test
/// runner) and systemd-nspawn's own propagation mounts (side-by-side
/// tests). nixspawn makes neither; its own leaks show in the rest.
pub fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').skip(3).take(2).collect::<Vec<_>>())
        .filter(|f| {
            !f.get(1).is_some_and(|m| {
                m.starts_with("/run/netns/") || m.starts_with("/run/systemd/nspawn/")
            })
        })
        .map(|f| f.join(" "))
        .collect()
}

/// Every cgroup directory, below the v2 hierarchy and every v1 one (on
/// a hybrid host the v1 `devices` hierarchy holds the guest's policy).
pub fn host_cgroups() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &nixspawn_runtime::cgroup::hierarchy::v2_mount().unwrap(),
        &mut out,
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() == Some("cgroup")
            && let Some(point) = left.split(' ').nth(4)
        {
            walk(Path::new(point), &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Poll `cond` until true or panic after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn ctl(args: &[&str]) -> Output {
    Command::new(NIXSPAWNCTL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `nixspawnctl update NAME --toplevel TOPLEVEL`, then `more`.
pub fn ctl_update(name: &str, toplevel: &str, more: &[&str]) -> Output {
    let mut args = vec!["update", name, "--toplevel", toplevel];
    args.extend_from_slice(more);
    ctl(&args)
}

/// A launcher running a guest; killed and waited for on drop, so a failed
/// assertion never leaves a guest behind.
pub struct Guest {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Guest {
    /// Start `nixspawn -M NAME -D TREE ARGS...` with output to a log file.
    pub fn start(tree: &Path, name: &str, args: &[&str]) -> Guest {
        Self::start_with(Command::new(NIXSPAWN), tree, name, args)
    }

    pub fn start_with(mut cmd: Command, tree: &Path, name: &str, args: &[&str]) -> Guest {
        cmd.arg("-D").arg(tree);
        Self::launch(cmd, name, args)
    }

    /// Start `CMD -M NAME ARGS...` (the caller says where the root is).
    pub fn launch(mut cmd: Command, name: &str, args: &[&str]) -> Guest {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("console.log");
        let out = std::fs::File::create(&log).unwrap();
        cmd.arg("-M").arg(name).args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Guest {
            name: name.to_owned(),
            child: Some(child),
            log,
            _logdir: logdir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Wait for READY=1 from the guest's PID 1.
    pub fn wait_ready(&mut self) {
        for _ in 0..60 {
            if ctl(&["wait-ready", &self.name, "--timeout", "1"])
                .status
                .success()
            {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{}: the launcher exited ({st}) before READY=1\n--- console ---\n{}",
                    self.name,
                    self.console()
                );
            }
        }
        panic!(
            "{} never became ready\n--- console ---\n{}",
            self.name,
            self.console()
        );
    }

    /// Run a command in the guest; returns (exit code, stdout).
    pub fn exec(&self, argv: &[&str]) -> (i32, String) {
        let mut args = vec!["exec", self.name.as_str(), "--"];
        args.extend_from_slice(argv);
        let out = ctl(&args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Run a command in the guest named `name`; returns (exit code, stdout).
    pub fn exec_in(name: &str, argv: &[&str]) -> (i32, String) {
        let mut args = vec!["exec", name, "--"];
        args.extend_from_slice(argv);
        let out = ctl(&args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Run a command that must succeed; returns its stdout.
    pub fn sh(&self, script: &str) -> String {
        let (code, out) = self.exec(&["/bin/sh", "-c", script]);
        assert_eq!(
            code, 0,
            "`{script}` failed in {} with output: {out}",
            self.name
        );
        out
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Wait for the launcher to exit and return its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n--- console ---\n{}",
                    self.name,
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // The janitor finishes the cleanup after the launcher is gone.
            let state = Path::new("/run/nixspawn").join(&self.name);
            let deadline = Instant::now() + Duration::from_secs(15);
            while state.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The cgroup directory names a launcher may create for `name`: the
/// scope as machined 252 and standalone runs spell it (`machine-NAME.scope`,
/// with systemd's escaping) and as nspawn 259+ does (`NAME.scope`).
pub fn scope_names(name: &str) -> [String; 2] {
    let escaped: String = name
        .bytes()
        .enumerate()
        .map(|(i, b)| match b {
            b'.' if i == 0 => "\\x2e".to_string(),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect();
    [format!("machine-{escaped}.scope"), format!("{name}.scope")]
}

/// Processes whose command line names the machine (a launcher, its
/// janitor, a scope placeholder).
pub fn processes_naming(name: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // Only launchers and their forks (not nixspawnctl).
        let launcher = args.first().is_some_and(|a| a.ends_with("nixspawn"));
        let names = args
            .windows(2)
            .any(|w| (w[0] == "-M" || w[0] == "--machine") && w[1] == name)
            || args
                .iter()
                .any(|a| *a == format!("-M{name}") || *a == format!("--machine={name}"));
        if launcher && names {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

/// Everything a launcher may leave behind for `name` is gone: its state
/// directory and name lock, its scope cgroups under either spelling
/// anywhere in the hierarchy, any host mount of its, any process of its
/// (launcher, janitor, placeholder), and the guest's PID 1.
///
/// A launcher's janitor may still be finishing (it is reaped by the
/// launcher, or outlives a SIGKILLed one): its processes are waited for.
pub fn assert_cleaned_up(name: &str, leader: Option<i32>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_naming(name).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let procs = processes_naming(name);
    assert!(
        procs.is_empty(),
        "processes of {name} left behind: {procs:?}"
    );
    let state = Path::new("/run/nixspawn").join(name);
    assert!(
        !state.exists(),
        "state directory {} was left behind",
        state.display()
    );
    let lock = Path::new("/run/nixspawn/.locks").join(name);
    assert!(
        !lock.exists(),
        "name lock {} was left behind",
        lock.display()
    );
    let scopes = scope_names(name);
    let left: Vec<_> = host_cgroups()
        .into_iter()
        .filter(|c| {
            c.components()
                .any(|p| scopes.iter().any(|s| p.as_os_str() == s.as_str()))
        })
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    let left: Vec<_> = host_mounts()
        .into_iter()
        .filter(|m| m.contains(&format!("/run/nixspawn/{name}")))
        .collect();
    assert!(left.is_empty(), "host mounts left behind: {left:?}");
    if let Some(pid) = leader {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the guest's PID 1 ({pid}) is still alive"
        );
    }
}

/// A namespace as the kernel names it for good: its 64-bit ID
/// (NS_GET_ID, Linux 6.18), else its link text, whose inode number the
/// kernel reuses as soon as no process is in the namespace any more.
fn namespace_of(pid: &str, kind: &str) -> Option<String> {
    let path = format!("/proc/{pid}/ns/{kind}");
    let f = std::fs::File::open(&path).ok()?;
    match nixspawn_runtime::os::namespace_id(std::os::fd::AsFd::as_fd(&f)) {
        Ok(id) => Some(format!("{kind}:id {id}")),
        Err(_) => Some(
            std::fs::read_link(&path)
                .ok()?
                .to_string_lossy()
                .into_owned(),
        ),
    }
}

/// The machine name's lock, held as a launcher holds it (for tests that
/// fake a live container's state); released (and unlinked) on drop.
pub struct NameClaim {
    path: PathBuf,
    file: Option<std::fs::File>,
}

pub fn claim_name(name: &str) -> NameClaim {
    let name = nixspawn_runtime::MachineName::new(name).unwrap();
    let path = nixspawn_runtime::state::lock_path(&name);
    std::fs::create_dir_all(nixspawn_runtime::state::LOCK_DIR).unwrap();
    let file = nixspawn_runtime::state::lockfile::acquire(&path)
        .unwrap()
        .unwrap_or_else(|| panic!("{} is held by someone else", path.display()));
    NameClaim {
        path,
        file: Some(file),
    }
}

impl Drop for NameClaim {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            nixspawn_runtime::state::lockfile::release(&self.path, f);
        }
    }
}

/// What a running guest is made of, read while it runs, so that its end
/// can be checked beyond what its name leads to: its namespaces (no
/// process may be left in them, no nsfs mount may pin them), its UID
/// range's lock file and its payload cgroup.
pub struct GuestTrace {
    pub name: String,
    pub leader: i32,
    /// (kind, identity, link) of each namespace the guest does not share with us.
    pub namespaces: Vec<(String, String, String)>,
    pub uid_range: Option<u64>,
    pub payload_cgroup: PathBuf,
}

impl GuestTrace {
    pub fn of(name: &str) -> GuestTrace {
        let out = ctl(&["status", name, "--json"]);
        assert!(
            out.status.success(),
            "status {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let leader = v["leader"].as_i64().expect("leader in status") as i32;
        let mut namespaces = Vec::new();
        for kind in ["mnt", "pid", "uts", "ipc", "net", "cgroup", "user"] {
            let theirs = namespace_of(&leader.to_string(), kind);
            let link = std::fs::read_link(format!("/proc/{leader}/ns/{kind}"));
            if let (Some(theirs), Ok(link)) = (theirs, link)
                && Some(&theirs) != namespace_of("self", kind).as_ref()
            {
                namespaces.push((
                    kind.to_string(),
                    theirs,
                    link.to_string_lossy().into_owned(),
                ));
            }
        }
        assert!(
            namespaces.iter().any(|(k, _, _)| k == "mnt"),
            "{name}'s PID 1 ({leader}) has a mount namespace of its own"
        );
        GuestTrace {
            name: name.to_string(),
            leader,
            namespaces,
            uid_range: v["uid_range"]["shift"].as_u64(),
            payload_cgroup: PathBuf::from(v["cgroup"].as_str().expect("cgroup in status")),
        }
    }

    /// Everything of the guest is gone (see [`assert_cleaned_up`]), and
    /// nothing holds its namespaces any more.
    pub fn assert_gone(&self) {
        assert_cleaned_up(&self.name, Some(self.leader));
        assert!(
            !self.payload_cgroup.exists(),
            "payload cgroup {} left behind",
            self.payload_cgroup.display()
        );
        if let Some(shift) = self.uid_range {
            let lock = Path::new("/run/systemd/nspawn-uid").join(shift.to_string());
            assert!(
                !lock.exists(),
                "UID range lock {} left behind",
                lock.display()
            );
        }
        let mut holders = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if pid.parse::<i32>().is_err() {
                continue;
            }
            for (kind, id, _) in &self.namespaces {
                if namespace_of(&pid, kind).as_ref() == Some(id) {
                    let what = |f: &str| {
                        std::fs::read(format!("/proc/{pid}/{f}"))
                            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                            .unwrap_or_default()
                    };
                    holders.push(format!(
                        "{pid} in {id}: {} [{}]",
                        what("cmdline"),
                        what("cgroup").trim()
                    ));
                }
            }
        }
        assert!(
            holders.is_empty(),
            "processes still in {}'s namespaces: {holders:?}",
            self.name
        );
        // An nsfs mount shows the namespace's link text as its root.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let pinned: Vec<&str> = mountinfo
            .lines()
            .filter(|l| {
                l.contains(" - nsfs ")
                    && self
                        .namespaces
                        .iter()
                        .any(|(_, _, link)| l.contains(link.as_str()))
            })
            .collect();
        assert!(
            pinned.is_empty(),
            "{}'s namespaces may be pinned by host mounts: {pinned:?}",
            self.name
        );
    }
}

/// The guest's PID 1 as the host sees it, from nixspawnctl status --json
/// (0 while the guest is between boots).
pub fn leader_of(name: &str) -> i32 {
    let out = ctl(&["status", name, "--json"]);
    assert!(
        out.status.success(),
        "status {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["leader"].as_i64().unwrap_or(0) as i32
}

/// A throw-away tree holding only a static busybox (from busybox-static):
/// enough for command-mode tests, and writable without touching fixtures.
pub fn busybox_tree() -> tempfile::TempDir {
    require_root();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let busybox = busybox.expect(
        "busybox is missing: apt-get install busybox-static (integration/test.sh installs it)",
    );
    let dir = tempfile::Builder::new()
        .prefix("nixspawn-bb-")
        .tempdir()
        .unwrap();
    let bin = dir.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for applet in [
        "sh", "cat", "echo", "ls", "test", "hostname", "grep", "tr", "sleep", "touch", "stat",
        "wc", "mount", "id", "pwd", "env", "true",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", dir.path().join("bin")).unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    dir
}

/// Run nixspawn to completion with `stdin` as input; returns (code, stdout, stderr).
pub fn run_nixspawn(args: &[&str], stdin: &str) -> (i32, String, String) {
    run_nixspawn_with_env(&[], args, stdin)
}

/// `run_nixspawn` with extra environment variables for the launcher.
pub fn run_nixspawn_with_env(
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &str,
) -> (i32, String, String) {
    let out = output_with_stdin(
        Command::new(NIXSPAWN).envs(env.iter().copied()).args(args),
        stdin,
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `cmd` with `stdin` written to it; its output (stdout and stderr
/// captured).
pub fn output_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The CapBnd mask from /proc/PID/status text.
pub fn cap_bnd(status: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with("CapBnd:"))
        .expect("a CapBnd line");
    u64::from_str_radix(line.split_whitespace().nth(1).expect("a CapBnd value"), 16)
        .expect("hex CapBnd")
}

/// Store paths of the NixOS-shaped fixtures (integration/nixos/build.sh).
pub struct NixosFixtures {
    pub tiny: String,
    pub tiny2: String,
    pub systemd: String,
    pub decoys: Vec<String>,
}

pub fn nixos() -> NixosFixtures {
    require_root();
    let cache = std::env::var_os("NIXSPAWN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or("/var/cache/nixspawn/fixtures".into());
    let env = std::fs::read_to_string(cache.join("nixos.env"))
        .expect("NixOS fixtures are missing: build them with integration/nixos/build.sh (integration/test.sh does)");
    let get = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing from nixos.env"))
            .to_owned()
    };
    NixosFixtures {
        tiny: get("NIXOS_TINY"),
        tiny2: get("NIXOS_TINY2"),
        systemd: get("NIXOS_SYSTEMD"),
        decoys: vec![get("NIXOS_DECOYA"), get("NIXOS_DECOYB")],
    }
}

/// The closure of a store path as entry names, from the Nix database.
pub fn closure_names(path: &str) -> std::collections::BTreeSet<String> {
    let out = Command::new("nix-store")
        .args(["--query", "--requisites", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix-store -qR {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("/nix/store/").to_owned())
        .collect()
}

/// Remove what systemd-nspawn leaves for a tree it ran: it cleans up
/// neither after SIGKILL nor, on a host whose /run is not a tmpfs, at all
/// (it refuses to remove "disk file systems" under /run/systemd/nspawn).
pub fn remove_nspawn_leftovers(tree: &Path) {
    use std::os::unix::fs::MetadataExt;
    let name = tree.file_name().unwrap().to_string_lossy().into_owned();
    if let Some(parent) = tree.parent() {
        let _ = std::fs::remove_file(parent.join(format!(".#{name}.lck")));
    }
    if let Ok(meta) = std::fs::metadata(tree) {
        let _ = std::fs::remove_file(format!(
            "/run/systemd/nspawn/locks/inode-{}:{}",
            meta.dev(),
            meta.ino()
        ));
    }
    let _ = std::fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&name));
}

/// A cgroup standing in for a service unit, for launchers run with
/// --keep-unit (they put payload/supervisor below their own cgroup).
/// Removed, with what the launchers left in it, on drop.
pub struct UnitCgroup {
    pub path: PathBuf,
}

impl UnitCgroup {
    pub fn new(prefix: &str) -> UnitCgroup {
        let path = nixspawn_runtime::cgroup::hierarchy::v2_mount()
            .unwrap()
            .join(unique_name(prefix));
        std::fs::create_dir(&path).unwrap();
        UnitCgroup { path }
    }

    /// `program ARGS...` started inside this cgroup.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                self.path.display()
            ))
            .arg(program);
        cmd
    }
}

impl UnitCgroup {
    /// A --keep-unit launcher left its unit as it found it: no payload,
    /// and its supervisor cgroup (which the launcher itself sat in) empty.
    pub fn assert_left_clean(&self) {
        let payload = self.path.join("payload");
        assert!(
            !payload.exists(),
            "payload cgroup {} left behind",
            payload.display()
        );
        let supervisor = self.path.join("supervisor");
        let procs = std::fs::read_to_string(supervisor.join("cgroup.procs")).unwrap_or_default();
        assert!(
            procs.trim().is_empty(),
            "processes left in {}: {procs}",
            supervisor.display()
        );
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&e.path());
                    }
                }
            }
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..200 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        remove(&self.path);
    }
}

/// A guest's console output as text, line endings made plain: in
/// read-only mode (no terminal on stdin) nixspawn writes `\n` where
/// systemd-nspawn passes the pty's `\r\n` on (deliberately: logs and Nix's
/// build log show the lines). Comparisons of what the guest printed use
/// this for both launchers.
pub fn console_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

/// Everything readable from `fd` (a pty master, say) until it has been
/// quiet for `quiet`, or reads end.
pub fn read_available(fd: &std::os::fd::OwnedFd, quiet: Duration) -> Vec<u8> {
    use nix::poll::{PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut out = Vec::new();
    let ms = u16::try_from(quiet.as_millis()).unwrap_or(u16::MAX);
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
            return out;
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(fd, &mut buf) {
            Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return out,
        }
    }
}

/// Read `fd` until `needle` shows up (failing the test after `timeout`);
/// returns all that was read.
pub fn read_until(fd: &std::os::fd::OwnedFd, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?}; terminal showed: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend(read_available(fd, Duration::from_millis(50)));
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Build `tests/probe/SOURCE` statically into `dir/OUT`; `what` names it
/// in the failure, which says what to install.
pub fn build_static(dir: &Path, source: &str, out: &str, what: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/probe")
        .join(source);
    let out = dir.join(out);
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "building {what} needs a C compiler and static libc: apt-get install gcc libc6-dev"
    );
    out
}

/// The probe (tests/probe/probe.c), built into `dir`.
pub fn build_probe(dir: &Path) -> PathBuf {
    build_static(dir, "probe.c", "nixspawn-probe", "the probe")
}

/// The guest tool (tests/probe/guest-tool.c), built into `dir`.
pub fn build_guest_tool(dir: &Path) -> PathBuf {
    build_static(dir, "guest-tool.c", "guest-tool", "the guest tool")
}

// ---- side by side with systemd-nspawn (moved from nspawn_diff.rs) ----

/// systemd-nspawn, for side-by-side runs.
pub const NSPAWN: &str = "systemd-nspawn";

/// Run `script` with busybox sh as PID 1 under `launcher` (--keep-unit in
/// a cgroup of its own, no registration, a pipe console unless `args` says
/// otherwise); its exit status, stdout and stderr.
pub fn beside(
    launcher: &str,
    tree: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    script: &str,
) -> (i32, String, String) {
    let unit = UnitCgroup::new("diff");
    let mut cmd = unit.command(launcher);
    cmd.args(["-q", "--register=no", "--keep-unit", "-D"])
        .arg(tree);
    if !args.iter().any(|a| a.starts_with("--console")) {
        cmd.arg("--console=pipe");
    }
    cmd.args(args)
        .args(["/bin/sh", "-c", script])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    remove_nspawn_leftovers(tree);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `beside` that must succeed; its stdout.
pub fn answer(launcher: &str, tree: &Path, args: &[&str], script: &str) -> String {
    answer_env(launcher, tree, args, &[], script)
}

pub fn answer_env(
    launcher: &str,
    tree: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    script: &str,
) -> String {
    let (code, out, err) = beside(launcher, tree, args, env, script);
    assert_eq!(code, 0, "{launcher} {args:?}: {err}\n{out}");
    out
}

/// Both launchers' answers, asserted equal.
pub fn same(tree: &Path, args: &[&str], script: &str) -> String {
    both(args, |launcher| answer(launcher, tree, args, script))
}

/// What `run` gives under nixspawn and under systemd-nspawn (its
/// argument), asserted equal; `args` names the run in the failure.
pub fn both<T: PartialEq + std::fmt::Debug>(args: &[&str], run: impl Fn(&str) -> T) -> T {
    let ours = run(NIXSPAWN);
    let theirs = run(NSPAWN);
    assert_eq!(
        ours, theirs,
        "nixspawn and systemd-nspawn differ for {args:?}"
    );
    ours
}

/// Fail (not skip) where systemd-nspawn is missing: the side-by-side
/// tests need it.
pub fn require_nspawn() {
    assert!(
        std::process::Command::new(NSPAWN)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "systemd-nspawn is missing: apt-get install systemd-container (integration/setup-host.sh does)"
    );
}

/// Spawn `cmd` with a fresh pty as its stdin, stdout and stderr: the
/// child, the master (to read and type) and our copy of the slave (drop
/// it to see EOF/EIO once the child's side closes).
pub fn spawn_on_pty(cmd: &mut Command) -> (Child, std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let child = cmd
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    (child, pty.master, pty.slave)
}

/// The exit code of `child` (-1 for a signal), killing it and failing the
/// test if it has not exited within `timeout`.
pub fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{child:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
