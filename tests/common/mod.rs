//! Shared helpers for the privileged tests: fixture trees, launching
//! guests, running commands in them, and checking that nothing is left.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const NIXSPAWN: &str = env!("CARGO_BIN_EXE_nixspawn");
pub const NIXSPAWNCTL: &str = env!("CARGO_BIN_EXE_nixspawnctl");

/// These tests create namespaces and mounts: they need root, and say so.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: run the suite as root (see README.md, `sudo integration/test.sh`)"
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

/// Host mount table lines, minus the fields that change on their own.
pub fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').skip(3).take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// Every cgroup directory below the v2 hierarchy.
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
    walk(&nixspawn_runtime::cgroup::v2_mount().unwrap(), &mut out);
    out.sort();
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

/// Everything a launcher may leave behind for `name` is gone: its state
/// directory, its cgroups, any host mount of its, and the guest's PID 1.
pub fn assert_cleaned_up(name: &str, leader: Option<i32>) {
    let state = Path::new("/run/nixspawn").join(name);
    assert!(
        !state.exists(),
        "state directory {} was left behind",
        state.display()
    );
    let scope = format!("machine-{name}.scope");
    let left: Vec<_> = host_cgroups()
        .into_iter()
        .filter(|c| c.to_string_lossy().contains(&scope))
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
    use std::io::Write;
    let mut child = Command::new(NIXSPAWN)
        .envs(env.iter().copied())
        .args(args)
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
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
        let path = nixspawn_runtime::cgroup::v2_mount()
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
