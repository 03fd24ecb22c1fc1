//! Privileged: attacks on the launcher process itself — a guest that floods
//! the notify socket with descriptors or datagrams, a console flood, racing
//! launches of one name, SIGKILL of the launcher at random points, a second
//! --keep-unit launcher in a busy unit, and a
//! hostile umask or a planted symlink in the state directory. Each test
//! performs the attack and asserts on what the host then sees.

mod common;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Build tests/probe/notify_flood.c statically into `dir`.
fn build_flood(dir: &Path) -> PathBuf {
    build_static(dir, "notify_flood.c", "notify-flood", "the notify flooder")
}

/// The busybox tree with `yes` as well, and the flooder bound at /flood.
struct FloodTree {
    tree: tempfile::TempDir,
    _scratch: tempfile::TempDir,
    bind: String,
}

fn flood_tree() -> FloodTree {
    let tree = busybox_tree();
    std::os::unix::fs::symlink("busybox", tree.path().join("usr/bin/yes")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let flood = build_flood(scratch.path());
    FloodTree {
        tree,
        bind: format!("--bind-ro={}:/flood", flood.display()),
        _scratch: scratch,
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A guest that sends 200 datagrams of 253 descriptors each: the launcher
/// must close every one (it had leaked 8 per datagram), and still stop the
/// guest and clean up.
#[test]
fn notify_descriptors_are_all_closed() {
    privileged!();
    let ft = flood_tree();
    let name = unique_name("nfd");
    let mut guest = Guest::start(
        ft.tree.path(),
        &name,
        &[
            "--pipe",
            &ft.bind,
            "/bin/sh",
            "-c",
            "/flood fds 200 253; exec sleep 1000",
        ],
    );
    wait_for("the flood to be sent", Duration::from_secs(30), || {
        guest.console().contains("sent ")
    });
    assert!(
        guest.console().contains("sent 200"),
        "the guest sent all its datagrams: {}",
        guest.console()
    );
    let trace = GuestTrace::of(&name);
    // Give the launcher a moment to have read everything queued.
    std::thread::sleep(Duration::from_millis(500));
    let open = fd_count(guest.pid());
    eprintln!("launcher descriptors after 200 x 253 passed descriptors: {open}");
    assert!(
        open < 64,
        "the launcher holds {open} descriptors after the flood (leaked from SCM_RIGHTS)"
    );
    guest.signal(Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(10)), 1);
    assert!(
        guest.console().contains("terminated by signal SIGKILL"),
        "{}",
        guest.console()
    );
    trace.assert_gone();
}

/// Eight guest processes flood the notify socket; SIGTERM to the launcher
/// must still end the guest and the launcher.
#[test]
fn notify_flood_does_not_starve_a_stop() {
    privileged!();
    let ft = flood_tree();
    let name = unique_name("nflood");
    let mut guest = Guest::start(
        ft.tree.path(),
        &name,
        &[
            "--pipe",
            &ft.bind,
            "/bin/sh",
            "-c",
            "/flood flood 8 & exec sleep 1000",
        ],
    );
    wait_for("the container to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    let trace = GuestTrace::of(&name);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    guest.signal(Signal::SIGTERM);
    let code = guest.wait_exit(Duration::from_secs(10));
    eprintln!("stopped under a notify flood in {:?}", t.elapsed());
    assert_eq!(code, 1, "{}", guest.console());
    trace.assert_gone();
}

/// Start the launcher with stdout to /dev/null and stderr to a file.
fn start_quiet(args: &[&str], log: &Path) -> Child {
    Command::new(NIXSPAWN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `cat /dev/zero` and `yes` on a read-only console, several writers each:
/// SIGTERM still ends the guest and the launcher.
#[test]
fn console_flood_does_not_starve_a_stop_read_only() {
    privileged!();
    let ft = flood_tree();
    for flood in ["cat /dev/zero", "yes"] {
        let name = unique_name("cflood");
        let scratch = tempfile::tempdir().unwrap();
        let log = scratch.path().join("stderr");
        let script = format!("{flood} & {flood} & {flood} & exec sleep 1000");
        let mut child = start_quiet(
            &[
                "-M",
                &name,
                "-D",
                ft.tree.path().to_str().unwrap(),
                "--console=read-only",
                "/bin/sh",
                "-c",
                &script,
            ],
            &log,
        );
        wait_for("the container to start", Duration::from_secs(10), || {
            ctl(&["status", &name]).status.success()
        });
        let trace = GuestTrace::of(&name);
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        let code = wait_child(&mut child, Duration::from_secs(10));
        eprintln!("{flood}: stopped in {:?}: {code:?}", t.elapsed());
        if code.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(
            code,
            Some(1),
            "{flood} on a read-only console: SIGTERM did not end the launcher within 10 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        trace.assert_gone();
    }
}

/// The same on an interactive console (a real terminal we read), stopped
/// once by SIGTERM and once by the ^]^]^] escape.
#[test]
fn console_flood_does_not_starve_a_stop_interactive() {
    privileged!();
    let ft = flood_tree();
    for how in ["sigterm", "escape"] {
        let name = unique_name("iflood");
        let (mut child, master, slave) = spawn_on_pty(
            Command::new(NIXSPAWN)
                .args(["-M", &name, "-D", ft.tree.path().to_str().unwrap()])
                .args([
                    "/bin/sh",
                    "-c",
                    "yes & yes & cat /dev/zero & exec sleep 1000",
                ]),
        );
        drop(slave);
        // Read the terminal as fast as it comes, as a terminal would.
        let reader_fd = master.as_fd().try_clone_to_owned().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut total = 0usize;
            while let Ok(n) = nix::unistd::read(&reader_fd, &mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        wait_for("the container to start", Duration::from_secs(10), || {
            ctl(&["status", &name]).status.success()
        });
        let trace = GuestTrace::of(&name);
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        match how {
            "sigterm" => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                Signal::SIGTERM,
            )
            .unwrap(),
            _ => {
                nix::unistd::write(&master, b"\x1d\x1d\x1d").unwrap();
            }
        }
        let code = wait_child(&mut child, Duration::from_secs(10));
        eprintln!("interactive {how}: stopped in {:?}: {code:?}", t.elapsed());
        if code.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(master);
        let total = reader.join().unwrap();
        eprintln!("interactive {how}: the terminal got {total} bytes");
        assert!(
            code.is_some(),
            "{how} under a console flood: the launcher did not end within 10 s"
        );
        assert_ne!(code, Some(0), "{how}");
        trace.assert_gone();
    }
}

/// 50 launchers of one name started at once (ephemeral, so the tree lock
/// lets them all reach the name): exactly one guest runs, every other
/// launcher fails with one line naming the running one, and the winner's
/// guest is untouched (same leader, still running). Ten rounds; in every
/// other one the name starts out with the stale state a launcher killed
/// long ago leaves (a directory whose lock nobody holds), which every
/// launcher then sees and wants to clear.
#[test]
fn racing_launches_of_one_name_leave_exactly_one() {
    privileged!();
    let tree = busybox_tree();
    for round in 0..10 {
        let name = unique_name("race");
        if round % 2 == 1 {
            let stale = Path::new("/run/nixspawn").join(&name);
            std::fs::create_dir_all(stale.join("root")).unwrap();
            std::fs::write(stale.join("lock"), "").unwrap();
            std::fs::write(stale.join("state.json"), "{}").unwrap();
        }
        let scratch = tempfile::tempdir().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|i| {
                let barrier = barrier.clone();
                let log = scratch.path().join(format!("{i}.err"));
                let args: Vec<String> = [
                    "-M",
                    &name,
                    "-D",
                    tree.path().to_str().unwrap(),
                    "-x",
                    "--console=pipe",
                    "/bin/sleep",
                    "1000",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                std::thread::spawn(move || {
                    let mut cmd = Command::new(NIXSPAWN);
                    cmd.args(&args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(&log).unwrap());
                    barrier.wait();
                    (cmd.spawn().unwrap(), log)
                })
            })
            .collect();
        let mut children: Vec<(Child, PathBuf)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Every loser ends by itself; the winner runs on.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut leader_seen = None;
        loop {
            let running = children
                .iter_mut()
                .filter_map(|(c, _)| c.try_wait().unwrap().is_none().then_some(()))
                .count();
            if leader_seen.is_none() {
                let out = ctl(&["status", &name, "--json"]);
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    leader_seen = v["leader"].as_i64();
                }
            }
            // Losers can all be refused before the winner has written its
            // state; keep looking until the winner's leader shows.
            if (running <= 1 && leader_seen.is_some()) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let anything that raced on settle before judging.
        std::thread::sleep(Duration::from_millis(500));
        let mut winners = Vec::new();
        let mut errors = Vec::new();
        for (child, log) in &mut children {
            match child.try_wait().unwrap() {
                None => winners.push(child.id() as i32),
                Some(st) => errors.push((st.code(), std::fs::read_to_string(&*log).unwrap())),
            }
        }
        let bad: Vec<_> = errors
            .iter()
            .filter(|(code, err)| {
                *code != Some(1)
                    || err.lines().count() != 1
                    || !err.contains(&format!("a container named {name} is already running"))
            })
            .collect();
        let status = ctl(&["status", &name, "--json"]);
        let leader_now = serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .ok()
            .and_then(|v| v["leader"].as_i64());
        eprintln!(
            "round {round}: {} running, {} refused, {} failed otherwise, leader {leader_seen:?} -> {leader_now:?}",
            winners.len(),
            errors.len() - bad.len(),
            bad.len()
        );
        let alive = leader_now.is_some_and(|l| Path::new(&format!("/proc/{l}")).exists());
        let trace = (winners.len() == 1 && alive).then(|| GuestTrace::of(&name));
        for (child, _) in &mut children {
            if child.try_wait().unwrap().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    Signal::SIGTERM,
                );
                let _ = child.wait();
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: launchers still running");
        assert!(bad.is_empty(), "round {round}: unclear failures: {bad:?}");
        assert!(alive, "round {round}: the winner's guest is not running");
        assert_eq!(
            leader_seen, leader_now,
            "round {round}: the winner's guest was replaced"
        );
        trace.unwrap().assert_gone();
    }
}

/// A small xorshift generator seeded from the kernel (no crate needed for
/// spreading kill points).
struct Random(u64);

impl Random {
    fn new() -> Random {
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .unwrap();
        Random(u64::from_le_bytes(seed) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Files in the UID-range lock directory that nobody holds locked.
fn unheld_range_locks() -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(rd) = std::fs::read_dir("/run/systemd/nspawn-uid") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(f) = std::fs::File::open(e.path()) else {
            continue;
        };
        let mut probe = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        if nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe)).is_ok()
            && probe.l_type == libc::F_UNLCK as i16
        {
            out.insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Processes whose command line mentions `prefix` (launchers, janitors,
/// placeholders of the killed runs).
fn processes_mentioning(prefix: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != me && text.contains(prefix) {
            found.push((pid, text));
        }
    }
    found
}

/// `cycles` launches of `nixspawn -D TREE -x ARGS -M PREFIXn PAYLOAD`,
/// each SIGKILLed at a random point of its life (0 to `max_ms` after it
/// was started; a run of /bin/true takes 10-20 ms here), two at a time.
/// Every other payload is `/bin/sleep 30` (killed while it runs, or
/// before), the rest `/bin/true` (killed also while the launcher cleans
/// up, or not at all). Then nothing of any of them may be left: state
/// directories, name locks, UID range locks, cgroups, mounts, processes.
/// With `--keep-unit` among `extra`, each launcher runs in a cgroup of its
/// own standing in for its service, which must be left without `payload`
/// and with nothing in `supervisor`.
fn killed_at_random_points(extra: &[&str], max_ms: u64, cycles: usize) {
    let tree = busybox_tree();
    let prefix = format!("kd{}x", std::process::id());
    let units = nixspawn_runtime::cgroup::hierarchy::v2_mount()
        .unwrap()
        .join(format!("ku{}", std::process::id()));
    let keep_unit = extra.contains(&"--keep-unit");
    if keep_unit {
        std::fs::create_dir(&units).unwrap();
    }
    let locks_before = unheld_range_locks();
    let started = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let tree = tree.path().to_path_buf();
            let prefix = prefix.clone();
            let units = units.clone();
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            std::thread::spawn(move || {
                let mut rng = Random::new();
                let mut histogram = [0usize; 4];
                for i in (w..cycles).step_by(2) {
                    let name = format!("{prefix}{i}");
                    let payload: &[&str] = if i % 4 < 2 {
                        &["/bin/sleep", "30"]
                    } else {
                        &["/bin/true"]
                    };
                    let mut cmd = Command::new(NIXSPAWN);
                    if keep_unit {
                        let unit = units.join(i.to_string());
                        std::fs::create_dir(&unit).unwrap();
                        cmd = Command::new("/bin/sh");
                        cmd.arg("-c")
                            .arg(format!(
                                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                                unit.display()
                            ))
                            .arg(NIXSPAWN);
                    }
                    let mut child = cmd
                        .args(["-q", "-M", &name, "-D"])
                        .arg(&tree)
                        .arg("-x")
                        .args(&extra)
                        .args(payload)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    let delay = rng.below(max_ms * 1000);
                    std::thread::sleep(Duration::from_micros(delay));
                    let _ = child.kill();
                    let st = child.wait().unwrap();
                    // Killed, or ended by itself (/bin/true, or an error).
                    histogram[usize::from(st.code().is_some()) + 2 * usize::from(i % 4 >= 2)] += 1;
                }
                histogram
            })
        })
        .collect();
    let mut histogram = [0usize; 4];
    for w in workers {
        for (h, n) in histogram.iter_mut().zip(w.join().unwrap()) {
            *h += n;
        }
    }
    eprintln!(
        "{cycles} runs {extra:?} in {:?}: sleep killed {}, sleep exited {}, true killed {}, true exited {}",
        started.elapsed(),
        histogram[0],
        histogram[1],
        histogram[2],
        histogram[3]
    );
    assert!(
        histogram[1] < cycles / 20,
        "the sleeping runs must be killed, not fail by themselves: {histogram:?}"
    );
    assert!(
        histogram[2] > cycles / 10,
        "many /bin/true runs must be killed before they finish: {histogram:?}"
    );
    // Janitors finish after their launchers: wait for them (generously).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_mentioning(&prefix).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let procs = processes_mentioning(&prefix);
    let states: Vec<_> = ["/run/nixspawn", "/run/nixspawn/.locks"]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect();
    // --keep-unit claims, named after the unit and labelled with the machine.
    let states: Vec<_> = states
        .into_iter()
        .chain(
            std::fs::read_dir("/run/nixspawn/.units")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.starts_with(&prefix))),
        )
        .collect();
    let cgroups: Vec<_> = host_cgroups()
        .into_iter()
        .filter(|c| c.to_string_lossy().contains(&prefix))
        .collect();
    // The lock directory is shared with every -U launch on the machine,
    // other tests' included: a file is briefly unheld between its creation
    // and its lock, and while a killed launcher's janitor clears it. Only
    // what stays unheld for a while is ours to count.
    let mut locks: Vec<_> = Vec::new();
    for _ in 0..20 {
        locks = unheld_range_locks()
            .difference(&locks_before)
            .cloned()
            .collect();
        if locks.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts: Vec<_> = host_mounts()
        .into_iter()
        .filter(|m| m.contains(&prefix))
        .collect();
    // The services' cgroups: no payload, nothing left in supervisor.
    let mut unit_leftovers = Vec::new();
    if keep_unit {
        for i in 0..cycles {
            let unit = units.join(i.to_string());
            let supervisor = unit.join("supervisor");
            if unit.join("payload").exists() {
                unit_leftovers.push(unit.join("payload"));
            }
            if std::fs::read_to_string(unit.join("cgroup.events"))
                .is_ok_and(|e| e.lines().any(|l| l == "populated 1"))
            {
                unit_leftovers.push(unit.clone());
            }
            let _ = std::fs::write(unit.join("cgroup.kill"), "1");
            let _ = std::fs::remove_dir(&supervisor);
            let _ = std::fs::remove_dir(unit.join("payload"));
            let _ = std::fs::remove_dir(&unit);
        }
        let _ = std::fs::remove_dir(&units);
    }
    eprintln!(
        "left: {} processes, {} state dirs/locks, {} cgroups, {} UID range locks, {} mounts, {} unit cgroups not clean",
        procs.len(),
        states.len(),
        cgroups.len(),
        locks.len(),
        mounts.len(),
        unit_leftovers.len()
    );
    for l in &locks {
        let _ = std::fs::remove_file(Path::new("/run/systemd/nspawn-uid").join(l));
    }
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(states.is_empty(), "state left: {states:?}");
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    assert!(locks.is_empty(), "UID range lock files left: {locks:?}");
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(
        unit_leftovers.is_empty(),
        "--keep-unit cgroups left with a payload or processes: {unit_leftovers:?}"
    );
}

#[test]
fn sigkill_at_random_points_leaves_nothing() {
    privileged!();
    killed_at_random_points(&[], 50, 1000);
}

#[test]
fn sigkill_at_random_points_leaves_nothing_under_userns() {
    privileged!();
    killed_at_random_points(&["-U"], 60, 1000);
}

#[test]
fn sigkill_at_random_points_leaves_nothing_with_keep_unit() {
    privileged!();
    killed_at_random_points(&["--keep-unit", "-U"], 60, 500);
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// The state directory's modes are ours, whatever umask the launcher was
/// started with: a umask of 000 must not make it world-writable (where a
/// local user could plant files for root to write through), 077 must not
/// hide it from nixspawnctl's readers.
#[test]
fn state_directory_modes_ignore_the_umask() {
    privileged!();
    let tree = busybox_tree();
    for umask in ["000", "077"] {
        let name = unique_name("umask");
        let cmd = {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
                .arg(NIXSPAWN);
            c
        };
        let mut guest =
            Guest::start_with(cmd, tree.path(), &name, &["--pipe", "/bin/sleep", "1000"]);
        wait_for("the container to start", Duration::from_secs(10), || {
            ctl(&["status", &name]).status.success()
        });
        let dir = Path::new("/run/nixspawn").join(&name);
        let modes = [
            (dir.clone(), 0o755),
            (dir.join("state.json"), 0o644),
            (dir.join("root"), 0o755),
        ];
        let seen: Vec<(String, u32)> = modes
            .iter()
            .map(|(p, _)| (p.display().to_string(), mode_of(p)))
            .collect();
        eprintln!("umask {umask}: {seen:?}");
        guest.signal(Signal::SIGTERM);
        guest.wait_exit(Duration::from_secs(10));
        for ((p, want), (_, got)) in modes.iter().zip(&seen) {
            assert_eq!(
                *got,
                *want,
                "umask {umask}: {} has mode {got:o}, not {want:o}",
                p.display()
            );
        }
        assert_cleaned_up(&name, None);
    }
}

/// A symlink planted at the state file's old temporary path (to a host
/// file) while the guest runs: the next state write must not go through
/// it, and state.json must stay a regular file with the new state.
#[test]
fn state_writes_do_not_follow_a_planted_symlink() {
    privileged!();
    let ft = flood_tree();
    let name = unique_name("plant");
    let scratch = tempfile::tempdir().unwrap();
    let trigger = scratch.path().join("trigger");
    std::fs::create_dir(&trigger).unwrap();
    let sentinel = scratch.path().join("sentinel");
    std::fs::write(&sentinel, "host data\n").unwrap();
    let bind = format!("--bind={}:/trigger", trigger.display());
    let mut guest = Guest::start(
        ft.tree.path(),
        &name,
        &[
            "--pipe",
            &ft.bind,
            &bind,
            "/bin/sh",
            "-c",
            "while [ ! -e /trigger/go ]; do sleep 0.05; done; exec /flood status planted-test wait",
        ],
    );
    wait_for("the container to start", Duration::from_secs(10), || {
        ctl(&["status", &name]).status.success()
    });
    let dir = Path::new("/run/nixspawn").join(&name);
    for planted in [".state.json.tmp", "state.json.tmp"] {
        let _ = std::os::unix::fs::symlink(&sentinel, dir.join(planted));
    }
    std::fs::write(trigger.join("go"), "").unwrap();
    wait_for(
        "the launcher to write the new status",
        Duration::from_secs(10),
        || {
            let out = ctl(&["status", &name, "--json"]);
            String::from_utf8_lossy(&out.stdout).contains("planted-test")
                || std::fs::read_to_string(&sentinel).is_ok_and(|s| s.contains("planted-test"))
        },
    );
    let state_is_file =
        std::fs::symlink_metadata(dir.join("state.json")).is_ok_and(|m| m.file_type().is_file());
    let sentinel_now = std::fs::read_to_string(&sentinel).unwrap();
    guest.signal(Signal::SIGTERM);
    guest.wait_exit(Duration::from_secs(10));
    assert_eq!(
        sentinel_now, "host data\n",
        "the launcher wrote through the planted symlink"
    );
    assert!(state_is_file, "state.json is not a regular file any more");
    assert_cleaned_up(&name, None);
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "host data\n");
}

/// A second `--keep-unit` launcher in a unit whose payload cgroup holds a
/// running guest must not take that cgroup over: before, it "reset" the
/// payload as left over, killing the first guest. Now it is refused in one
/// line and the first guest runs on to its end.
#[test]
fn a_second_keep_unit_launcher_does_not_kill_the_first_guest() {
    privileged!();
    let tree = busybox_tree();
    let unit = UnitCgroup::new("twice");
    let launch = |name: &str, script: &str| {
        let mut cmd = unit.command(NIXSPAWN);
        cmd.args(["-q", "--register=no", "--keep-unit", "-x", "--console=pipe"])
            .args(["-M", name, "-D"])
            .arg(tree.path())
            .args(["/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let (first_name, second_name) = (unique_name("first"), unique_name("second"));
    let first = launch(&first_name, "touch /tmp/up; sleep 3; echo survived")
        .spawn()
        .unwrap();
    wait_for(
        "the first guest in the payload cgroup",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(unit.path.join("payload/cgroup.events"))
                .is_ok_and(|e| e.contains("populated 1"))
        },
    );
    let second = launch(&second_name, "echo second").output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{} already runs machine {first_name}",
            unit.path.display()
        )),
        "{err}"
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        (
            first.status.code(),
            String::from_utf8_lossy(&first.stdout).as_ref()
        ),
        (Some(0), "survived\n"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_cleaned_up(&first_name, None);
    assert_cleaned_up(&second_name, None);
    unit.assert_left_clean();
    // A payload holding processes no launcher claimed (another runtime's
    // guest): refused too, and they are left alone.
    std::fs::create_dir(unit.path.join("payload")).unwrap();
    let mut foreign = unit.command("/bin/sleep");
    let mut foreign = foreign.arg("30").spawn().unwrap();
    wait_for(
        "the foreign process in its unit",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(unit.path.join("cgroup.procs"))
                .is_ok_and(|p| p.contains(&foreign.id().to_string()))
        },
    );
    std::fs::write(
        unit.path.join("payload/cgroup.procs"),
        foreign.id().to_string(),
    )
    .unwrap();
    let third_name = unique_name("third");
    let third = launch(&third_name, "echo third").output().unwrap();
    let err = String::from_utf8_lossy(&third.stderr);
    assert_eq!(third.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("holds another container's processes"), "{err}");
    assert!(
        foreign.try_wait().unwrap().is_none(),
        "the foreign process in the payload was killed"
    );
    let _ = foreign.kill();
    let _ = foreign.wait();
    assert_cleaned_up(&third_name, None);
}

/// How one round of two `--keep-unit` launchers started together ended.
#[derive(Debug, Default)]
struct RaceTally {
    /// One guest ran to its end, the other launcher refused in one line
    /// naming the unit and the running machine.
    one_ran_one_refused: usize,
    /// One guest ran, the other launcher refused with another message
    /// (the payload check, which only sees a guest already running).
    refused_otherwise: usize,
    /// Both guests ran to their end (two guests in one payload).
    both_ran: usize,
    /// A guest was killed or its launcher failed while booting it.
    harmed: usize,
}

/// The race the payload check leaves open: two `--keep-unit` launchers in
/// one unit, held at a barrier (a pipe both read) and released together,
/// both find the payload empty. Then one reset the payload under the
/// other's guest, or both guests shared it and the first to end killed
/// the other. Exactly one guest must run, unharmed, and the other
/// launcher refuse in one line naming the unit and that machine; nothing
/// may be left.
#[test]
fn two_keep_unit_launchers_started_together_run_one_guest() {
    privileged!();
    let tree = busybox_tree();
    let rounds = 25;
    let mut tally = RaceTally::default();
    let mut seen = Vec::new();
    for round in 0..rounds {
        let unit = UnitCgroup::new("race");
        let names = [unique_name("racea"), unique_name("raceb")];
        let (gate, release) = std::io::pipe().unwrap();
        let children: Vec<Child> = names
            .iter()
            .map(|name| {
                // Into the unit, then wait at the barrier (end of file on
                // stdin) before exec'ing the launcher.
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c")
                    .arg(format!(
                        "echo $$ > {}/cgroup.procs && read x; exec \"$0\" \"$@\" </dev/null",
                        unit.path.display()
                    ))
                    .arg(NIXSPAWN)
                    .args(["-q", "--register=no", "--keep-unit", "-x", "--console=pipe"])
                    .args(["-M", name, "-D"])
                    .arg(tree.path())
                    .args(["/bin/sh", "-c", "sleep 1; echo survived"])
                    .stdin(gate.try_clone().unwrap())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                cmd.spawn().unwrap()
            })
            .collect();
        drop(gate);
        wait_for(
            "both launchers in the unit",
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(unit.path.join("cgroup.procs"))
                    .is_ok_and(|p| p.lines().count() == 2)
            },
        );
        // Let both reach the barrier's read, then open it for both at once.
        std::thread::sleep(Duration::from_millis(30));
        drop(release);
        let outputs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let ran =
            |o: &std::process::Output| o.status.code() == Some(0) && o.stdout == b"survived\n";
        let unit_name = unit.path.display().to_string();
        let refused_naming = |o: &std::process::Output, winner: &str| {
            let err = String::from_utf8_lossy(&o.stderr);
            o.status.code() == Some(1)
                && err.lines().count() == 1
                && err.contains(&unit_name)
                && err.contains(winner)
        };
        let summary: Vec<String> = outputs
            .iter()
            .map(|o| {
                format!(
                    "{:?} {:?} {:?}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .collect();
        match (ran(&outputs[0]), ran(&outputs[1])) {
            (true, true) => {
                tally.both_ran += 1;
                seen.push(format!("round {round}: {summary:?}"));
            }
            (true, false) | (false, true) => {
                let (w, l) = if ran(&outputs[0]) { (0, 1) } else { (1, 0) };
                if refused_naming(&outputs[l], &names[w]) {
                    tally.one_ran_one_refused += 1;
                } else if outputs[l].status.code() == Some(1) && outputs[l].stdout.is_empty() {
                    tally.refused_otherwise += 1;
                    seen.push(format!("round {round}: {summary:?}"));
                } else {
                    tally.harmed += 1;
                    seen.push(format!("round {round}: {summary:?}"));
                }
            }
            (false, false) => {
                tally.harmed += 1;
                seen.push(format!("round {round}: {summary:?}"));
            }
        }
        for name in &names {
            assert_cleaned_up(name, None);
            let lock = Path::new("/run/nixspawn/.units");
            let left: Vec<_> = std::fs::read_dir(lock)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(name)))
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "unit locks left: {left:?}");
        }
        unit.assert_left_clean();
    }
    for s in &seen {
        eprintln!("{s}");
    }
    eprintln!("{rounds} rounds: {tally:?}");
    assert_eq!(
        tally.one_ran_one_refused,
        rounds,
        "every round must run one guest and refuse the other launcher: {tally:?}\n{}",
        seen.join("\n")
    );
}
