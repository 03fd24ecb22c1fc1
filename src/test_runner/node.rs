//! One node of a run: its nixspawn process (started, watched, stopped,
//! crashed, rebooted), commands run in it through the runtime's namespace
//! entry (`nixspawn-test __entry`: one long-lived process per boot that
//! entered once and forks each command), and its boot timeline.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nixspawn_runtime::MachineName;
use nixspawn_runtime::ctl::entry::{Entry, Running};
use nixspawn_runtime::state;

use super::description::NodeDescription;

/// CLOCK_MONOTONIC in microseconds: the guests' clock too (no time
/// namespace), so systemd's *TimestampMonotonic values compare with it.
pub fn monotonic_usec() -> u64 {
    let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return 0;
    };
    (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1000
}

fn realtime_usec() -> u64 {
    let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME) else {
        return 0;
    };
    (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1000
}

/// A point of a boot timeline (monotonic microseconds).
#[derive(Debug, Clone)]
pub struct Mark {
    pub label: String,
    pub at: u64,
}

/// Spawns nixspawn processes from one thread that lives as long as the
/// run: their parent-death signal fires when the spawning thread ends.
#[derive(Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Spawn>,
    die_with_runner: bool,
}

/// A command, whether it dies with the runner, and where its child goes.
type Spawn = (Command, bool, mpsc::Sender<std::io::Result<Child>>);

impl Spawner {
    pub fn new(die_with_runner: bool) -> Spawner {
        let (tx, rx) = mpsc::channel::<Spawn>();
        std::thread::spawn(move || {
            for (mut cmd, dying, reply) in rx {
                if dying {
                    nixspawn_runtime::os::die_with_parent(&mut cmd, libc::SIGKILL);
                }
                let _ = reply.send(cmd.spawn());
            }
            // Keep the thread (and so the children's parent-death signal)
            // until the process ends.
            loop {
                std::thread::park();
            }
        });
        Spawner {
            tx,
            die_with_runner,
        }
    }

    fn spawn_with(&self, cmd: Command, dying: bool) -> Result<Child> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send((cmd, dying, tx))
            .map_err(|_| anyhow!("the spawner thread is gone"))?;
        Ok(rx
            .recv()
            .map_err(|_| anyhow!("the spawner thread is gone"))??)
    }

    /// A node's nixspawn: it dies with the runner unless the run keeps it.
    fn spawn(&self, cmd: Command) -> Result<Child> {
        self.spawn_with(cmd, self.die_with_runner)
    }

    /// A helper that always dies with the runner.
    fn spawn_dying(&self, cmd: Command) -> Result<Child> {
        self.spawn_with(cmd, true)
    }
}

/// A guest's bash and its login environment.
type Shell = (String, Vec<(String, String)>);

#[derive(Default)]
struct Life {
    /// The launcher's PID while it runs.
    pid: Option<i32>,
    /// The launcher's last exit, once it ended.
    exited: Option<ExitStatus>,
    /// Boots the launcher will have done when the current one is ready.
    boot: u32,
    /// The last boot whose READY=1 was seen.
    ready_boot: u32,
    /// /etc/hosts written for this boot.
    hosts_for_boot: u32,
    /// The guest's login environment (after /etc/profile) and its bash,
    /// read once per boot so commands need not source the profile.
    shell: Option<Shell>,
    marks: Vec<Mark>,
    /// The long-lived namespace entry of the current boot.
    entry: Option<Arc<EntryProcess>>,
    /// A generation counter: one per start, so a stale reaper is ignored.
    generation: u64,
}

pub struct Node {
    pub name: String,
    /// The vlans it is on, in order (eth1, eth2, ...).
    pub vlans: Vec<u8>,
    pub machine: String,
    pub console_log: PathBuf,
    argv: Vec<String>,
    nixspawn: PathBuf,
    self_exe: PathBuf,
    hosts: PathBuf,
    spawner: Spawner,
    keep: bool,
    life: Mutex<Life>,
    changed: Condvar,
    /// The write end of the pipe commands get as stderr, made at the
    /// first command; a thread of ours copies it into the console log.
    stderr: std::sync::OnceLock<OwnedFd>,
}

/// What a command returned.
pub struct Outcome {
    pub rc: i32,
    pub stdout: Vec<u8>,
    pub timed_out: bool,
}

pub struct NodeSetup<'a> {
    pub name: &'a str,
    pub machine: String,
    pub description: &'a NodeDescription,
    pub namespace_path: String,
    pub out_dir: &'a Path,
    pub nixspawn: PathBuf,
    pub self_exe: PathBuf,
    pub hosts: PathBuf,
    pub spawner: Spawner,
    pub keep: bool,
}

impl Node {
    pub fn new(s: NodeSetup<'_>) -> Node {
        let d = s.description;
        let mut argv = vec![
            "-q".to_owned(),
            format!("--machine={}", s.machine),
            format!("--hostname={}", s.name),
            "--console=read-only".into(),
            format!("--network-namespace-path={}", s.namespace_path),
        ];
        if let Some(t) = &d.tree {
            argv.push(format!("--directory={}", t.display()));
            if d.ephemeral.unwrap_or(true) {
                argv.push("--ephemeral".into());
            }
        }
        match &d.toplevel {
            // Its init is PID 1 (nixspawn refuses --boot with it).
            Some(t) => argv.push(format!("--toplevel={}", t.display())),
            None => argv.push("--boot".into()),
        }
        argv.extend(d.options.iter().cloned());
        Node {
            name: s.name.to_owned(),
            vlans: d.vlans(),
            console_log: s.out_dir.join(format!("{}.console.log", s.name)),
            machine: s.machine,
            argv,
            nixspawn: s.nixspawn,
            self_exe: s.self_exe,
            hosts: s.hosts,
            spawner: s.spawner,
            keep: s.keep,
            life: Mutex::new(Life::default()),
            changed: Condvar::new(),
            stderr: std::sync::OnceLock::new(),
        }
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    fn machine_name(&self) -> Result<MachineName> {
        Ok(MachineName::new(&self.machine)?)
    }

    pub fn marks(&self) -> Vec<Mark> {
        self.life.lock().unwrap().marks.clone()
    }

    pub fn mark(&self, label: &str, at: u64) {
        self.life.lock().unwrap().marks.push(Mark {
            label: label.to_owned(),
            at,
        });
    }

    /// The node's console log, for appending (the launcher's output, and
    /// commands' stderr as the driver shows it).
    fn open_console_log(&self) -> Result<File> {
        File::options()
            .create(true)
            .append(true)
            .open(&self.console_log)
            .with_context(|| format!("opening {}", self.console_log.display()))
    }

    /// Commands' stderr: a pipe into the console log, never the log's own
    /// descriptor, which is a host file a guest's root could reopen read-write
    /// through /proc/self/fd/2, chmod, or learn the host path of.
    fn stderr_pipe(&self) -> Result<BorrowedFd<'_>> {
        if let Some(w) = self.stderr.get() {
            return Ok(w.as_fd());
        }
        let mut log = self.open_console_log()?;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        if self.stderr.set(w).is_ok() {
            // For the run's life: a daemon may hold the pipe as long.
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut File::from(r), &mut log);
            });
        }
        Ok(self.stderr.get().expect("set").as_fd())
    }

    pub fn running(&self) -> bool {
        self.life.lock().unwrap().pid.is_some()
    }

    /// Launch nixspawn (returns at once; `wait_booted` waits).
    pub fn start(self: &Arc<Self>) -> Result<()> {
        let mut life = self.life.lock().unwrap();
        if life.pid.is_some() {
            return Ok(());
        }
        let console = self.open_console_log()?;
        let mut cmd = Command::new(&self.nixspawn);
        cmd.args(&self.argv)
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            // Out of the terminal's process group: ^C is for the script.
            .process_group(0);
        let launched = monotonic_usec();
        let mut child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("{}: running {}", self.name, self.nixspawn.display()))?;
        life.generation += 1;
        let generation = life.generation;
        life.pid = Some(child.id() as i32);
        life.exited = None;
        life.boot = 1;
        life.ready_boot = 0;
        life.hosts_for_boot = 0;
        life.shell = None;
        life.entry = None;
        life.marks = vec![Mark {
            label: "launch".into(),
            at: launched,
        }];
        drop(life);
        self.watch_ready(generation);
        let me = Arc::clone(self);
        std::thread::spawn(move || {
            let status = child.wait();
            let mut life = me.life.lock().unwrap();
            if life.generation == generation {
                life.pid = None;
                life.exited = status.ok();
            }
            me.changed.notify_all();
        });
        Ok(())
    }

    /// Note READY=1 of each boot for the timeline when it happens, not
    /// when the script first asks, and wake `wait_booted`. The state file
    /// is read when the launcher replaces it (inotify on its directory),
    /// not polled: ten booting nodes polled every 5 ms cost the run
    /// thousands of reads.
    fn watch_ready(self: &Arc<Self>, generation: u64) {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let me = Arc::clone(self);
        std::thread::spawn(move || {
            let Ok(name) = me.machine_name() else { return };
            let dir = state::StateDir::path_for(&name);
            // (Without inotify, the state is polled.)
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok();
            let mut watching = false;
            let mut noted = 0;
            loop {
                let current = {
                    let l = me.life.lock().unwrap();
                    l.generation == generation && l.pid.is_some()
                };
                if !current {
                    return;
                }
                if let Some(inotify) = &inotify {
                    if !watching {
                        // (The launcher makes the directory soon after its start.)
                        watching = inotify
                            .add_watch(
                                &dir,
                                AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
                            )
                            .is_ok();
                    }
                    let _ = inotify.read_events();
                }
                if let Ok(st) = state::load(&name)
                    && st.ready
                    && st.phase == "running"
                    && st.boot_count > noted
                {
                    me.note_ready(&st, st.boot_count);
                    noted = st.boot_count;
                    me.life.lock().unwrap().ready_boot = noted;
                    me.changed.notify_all();
                }
                if let Some(inotify) = inotify.as_ref().filter(|_| watching) {
                    // A change, or now and then to see whether the launcher ended.
                    let mut fds = [nix::poll::PollFd::new(
                        inotify.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
    }

    /// Wait until the current boot sent READY=1 and /etc/hosts is in place.
    pub fn wait_booted(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut life = self.life.lock().unwrap();
        loop {
            if life.pid.is_none() {
                bail!(
                    "{} is not running{}",
                    self.name,
                    life.exited.map_or(String::new(), |s| format!(
                        " (nixspawn exited: {s}; see {})",
                        self.console_log.display()
                    ))
                );
            }
            if life.ready_boot >= life.boot {
                break;
            }
            let now = Instant::now();
            if now > deadline {
                bail!(
                    "{} did not report READY=1 within {}s",
                    self.name,
                    timeout.as_secs()
                );
            }
            life = self.changed.wait_timeout(life, deadline - now).unwrap().0;
        }
        drop(life);
        self.write_hosts()
    }

    fn note_ready(&self, st: &state::State, boot: u32) {
        let now = monotonic_usec();
        let mut l = self.life.lock().unwrap();
        // The state records PID 1's start in wall-clock time.
        let offset = realtime_usec().saturating_sub(now);
        let exec = st.started_usec.saturating_sub(offset);
        let suffix = if boot > 1 {
            format!(" (boot {boot})")
        } else {
            String::new()
        };
        if !l
            .marks
            .iter()
            .any(|m| m.label == format!("PID 1 exec{suffix}"))
        {
            l.marks.push(Mark {
                label: format!("PID 1 exec{suffix}"),
                at: exec,
            });
            l.marks.push(Mark {
                label: format!("READY=1{suffix}"),
                at: now,
            });
        }
    }

    fn write_hosts(&self) -> Result<()> {
        let boot = self.life.lock().unwrap().boot;
        if self.life.lock().unwrap().hosts_for_boot == boot {
            return Ok(());
        }
        // A new boot: a new PID 1 to enter (the old entry ended with the old one).
        self.life.lock().unwrap().entry = None;
        // /etc/hosts may be a link into a read-only store (NixOS): replace
        // it. The same command reads the guest's bash and its login
        // environment (one start of the guest's shell per boot, not two).
        let o = self.exec(
            "rm -f /etc/hosts; cat > /etc/hosts; command -v bash || true; printf '\\0'; env -0 || true",
            Some(Duration::from_secs(60)),
            Some(&self.hosts),
            None,
        )?;
        if o.rc != 0 {
            bail!(
                "{}: writing /etc/hosts failed (exit code {})",
                self.name,
                o.rc
            );
        }
        let shell = parse_shell(&o.stdout);
        let mut l = self.life.lock().unwrap();
        l.hosts_for_boot = boot;
        l.shell = shell;
        Ok(())
    }

    /// The command line and environment `command` runs with.
    fn command_line(&self, command: &str) -> (Vec<String>, Vec<(String, String)>) {
        let life = self.life.lock().unwrap();
        if let Some((bash, env)) = &life.shell {
            // The profile's environment as read at boot: no profile to
            // source per command.
            let mut env = env.clone();
            env.push(("TERM".into(), "dumb".into()));
            if let Some(words) = plain_words(command, &env) {
                // What bash puts in the environment of the last command
                // it execs (SHLVL back to 0 for the exec; $_ comes from
                // the entry, which resolves the program).
                env.push(("PWD".into(), "/".into()));
                env.push(("SHLVL".into(), "0".into()));
                return (words, env);
            }
            let argv = vec![
                bash.clone(),
                "-c".into(),
                format!("set -euo pipefail; {command}"),
            ];
            return (argv, env);
        }
        // /etc/profile for the guest's PATH (NixOS puts its tools there),
        // then the command in bash with the driver's shell options (sh
        // where there is no bash).
        let wrapper = "[ -r /etc/profile ] && . /etc/profile >/dev/null 2>&1; \
             if command -v bash >/dev/null 2>&1; then exec bash -c \"set -euo pipefail; $1\"; \
             else exec sh -c \"set -eu; $1\"; fi";
        let argv = ["/bin/sh", "-c", wrapper, "nixspawn-test", command]
            .map(String::from)
            .to_vec();
        (argv, vec![("TERM".into(), "dumb".into())])
    }

    /// The entry of the current boot, started if there is none yet.
    fn entry(&self) -> Result<Arc<EntryProcess>> {
        if let Some(e) = &self.life.lock().unwrap().entry {
            return Ok(Arc::clone(e));
        }
        // Started without holding the node's lock (entering takes a few
        // milliseconds, more on a guest in trouble); a racing twin is
        // dropped (and killed).
        let generation = self.life.lock().unwrap().generation;
        let (entry, theirs) = Entry::pair(&self.machine)?;
        let log = self.open_console_log()?;
        let mut cmd = Command::new(&self.self_exe);
        cmd.arg("__entry").arg(&self.machine).env_clear();
        // Where the nodes' state is, when not /run/nixspawn (a Nix build
        // sandbox). Commands get only the environment each request names.
        if let Some(dir) = std::env::var_os(nixspawn_runtime::state::RUNTIME_DIR_ENV) {
            cmd.env(nixspawn_runtime::state::RUNTIME_DIR_ENV, dir);
        }
        cmd.stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        let child = self
            .spawner
            .spawn_dying(cmd)
            .context("starting the namespace entry")?;
        let process = Arc::new(EntryProcess {
            entry,
            child: Mutex::new(child),
        });
        process.entry.wait_ready(Duration::from_secs(30))?;
        let mut life = self.life.lock().unwrap();
        if let Some(e) = &life.entry {
            return Ok(Arc::clone(e));
        }
        if life.generation == generation {
            life.entry = Some(Arc::clone(&process));
        }
        Ok(process)
    }

    /// Start `command` through the entry, once more with a new entry if
    /// the old one ended (the guest rebooted by itself).
    fn start_command(
        &self,
        command: &str,
        stdin: Option<BorrowedFd<'_>>,
        stdout: Option<BorrowedFd<'_>>,
    ) -> Result<Running> {
        let stderr = self.stderr_pipe()?;
        let (argv, env) = self.command_line(command);
        let entry = self.entry()?;
        match entry.entry.run(&argv, &env, stdin, stdout, stderr) {
            Ok(r) => Ok(r),
            Err(_) if entry.ended() && self.running() => {
                let mut life = self.life.lock().unwrap();
                if life.entry.as_ref().is_some_and(|x| Arc::ptr_eq(x, &entry)) {
                    life.entry = None;
                }
                drop(life);
                Ok(self
                    .entry()?
                    .entry
                    .run(&argv, &env, stdin, stdout, stderr)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Run `command` in the guest: stdout captured (or written to
    /// `stdout_file`), stderr to the console log, the exit status exact.
    /// The command gets pipes only, no descriptor of a host file.
    /// A timeout stops the command (SIGTERM, SIGKILL 5 s later) and gives
    /// 124, as `timeout(1)` would. Output is read until its end or, once
    /// the command ended, 100 ms more: a background process that keeps
    /// the command's stdout open does not hold the answer back.
    pub fn exec(
        &self,
        command: &str,
        timeout: Option<Duration>,
        stdin: Option<&Path>,
        stdout_file: Option<&Path>,
    ) -> Result<Outcome> {
        if !self.running() {
            bail!("{} is not running", self.name);
        }
        let input: Option<OwnedFd> = match stdin {
            Some(p) => {
                let mut file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
                std::thread::spawn(move || {
                    // Ends at the file's end, or when the command closed
                    // its stdin (EPIPE).
                    let _ = std::io::copy(&mut file, &mut File::from(w));
                });
                Some(r)
            }
            None => None,
        };
        let mut file = match stdout_file {
            Some(p) => Some(File::create(p).with_context(|| format!("creating {}", p.display()))?),
            None => None,
        };
        let to_file = file.is_some();
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let (eof_tx, eof_rx) = mpsc::channel();
        let (r, output) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        {
            let buffer = Arc::clone(&buffer);
            std::thread::spawn(move || {
                let mut out = File::from(r);
                let mut chunk = [0u8; 16384];
                while let Ok(n) = out.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    match &mut file {
                        Some(f) => {
                            if std::io::Write::write_all(f, &chunk[..n]).is_err() {
                                break;
                            }
                        }
                        None => buffer.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = eof_tx.send(());
            });
        }
        let started = self.start_command(
            command,
            input.as_ref().map(|i| i.as_fd()),
            Some(output.as_fd()),
        );
        drop(output);
        drop(input);
        let running = match started {
            Ok(r) => r,
            Err(e) if !self.running() => {
                bail!("{} stopped while running `{command}` ({e:#})", self.name)
            }
            Err(e) => return Err(e),
        };
        let mut timed_out = false;
        let mut status = running.wait(timeout);
        if let Ok(None) = status {
            timed_out = true;
            let _ = running.signal(libc::SIGTERM);
            status = running.wait(Some(Duration::from_secs(5)));
            if let Ok(None) = status {
                let _ = running.signal(libc::SIGKILL);
                status = running.wait(None);
            }
        }
        let status = match status {
            Ok(s) => s.unwrap_or(124),
            Err(e) if !self.running() => {
                bail!("{} stopped while running `{command}` ({e:#})", self.name)
            }
            Err(e) => return Err(e.into()),
        };
        // What the command wrote before it ended, without waiting for a
        // background process that keeps its stdout open (a file being
        // copied out gets longer to be written whole).
        let _ = eof_rx.recv_timeout(Duration::from_millis(if to_file { 10_000 } else { 100 }));
        let stdout = std::mem::take(&mut *buffer.lock().unwrap());
        let rc = if timed_out { 124 } else { status };
        Ok(Outcome {
            rc,
            stdout,
            timed_out,
        })
    }

    /// Run `command` and do not wait for it (`check_output=False`).
    pub fn exec_detached(&self, command: &str) -> Result<()> {
        if !self.running() {
            bail!("{} is not running", self.name);
        }
        // (Dropping the answer leaves the command running, unreported;
        // stdin and stdout are the guest's /dev/null.)
        self.start_command(command, None, None)?;
        Ok(())
    }

    fn signal_launcher(&self, sig: libc::c_int) -> Result<()> {
        let st = state::load(&self.machine_name()?)?;
        let pidfd = st.open_supervisor()?;
        nixspawn_runtime::os::pidfd_send_signal(std::os::fd::AsFd::as_fd(&pidfd), sig)
            .with_context(|| format!("signalling {}'s nixspawn", self.name))
    }

    fn signal_leader(&self, sig: libc::c_int) -> Result<()> {
        let st = state::load(&self.machine_name()?)?;
        let pidfd = st.open_leader()?;
        nixspawn_runtime::os::pidfd_send_signal(std::os::fd::AsFd::as_fd(&pidfd), sig)
            .with_context(|| format!("signalling {}'s PID 1", self.name))
    }

    /// Wait for the launcher to end; its status.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Result<Option<ExitStatus>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut life = self.life.lock().unwrap();
        while life.pid.is_some() {
            match deadline {
                None => life = self.changed.wait(life).unwrap(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        bail!(
                            "{} did not stop within {}s",
                            self.name,
                            timeout.unwrap().as_secs()
                        );
                    }
                    life = self.changed.wait_timeout(life, d - now).unwrap().0;
                }
            }
        }
        Ok(life.exited)
    }

    /// Power off as `poweroff` in the guest would, and wait for the end.
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        if !self.running() {
            return Ok(());
        }
        // SIGRTMIN+4 to PID 1 is systemd's poweroff request; fall back to
        // the launcher's SIGTERM (also a clean poweroff) if PID 1 is between boots.
        if self
            .signal_leader(nixspawn_runtime::spec::signals::rtmin() + 4)
            .is_err()
        {
            self.signal_launcher(libc::SIGTERM)?;
        }
        self.wait_exit(Some(timeout))?;
        Ok(())
    }

    /// Stop abruptly: the launcher is killed, its janitor takes the guest.
    pub fn crash(&self) -> Result<()> {
        self.life.lock().unwrap().entry = None;
        let pid = self.life.lock().unwrap().pid;
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.wait_exit(Some(Duration::from_secs(30)))?;
        self.wait_name_free(Duration::from_secs(30))
    }

    /// Until the janitor released the name (the state directory is gone).
    fn wait_name_free(&self, timeout: Duration) -> Result<()> {
        let name = self.machine_name()?;
        let deadline = Instant::now() + timeout;
        while state::load(&name).is_ok() || state::lock_path(&name).exists() {
            if Instant::now() > deadline {
                bail!("{}: the machine name was not released", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Reboot as `reboot` in the guest would; the next command waits for
    /// the new boot.
    pub fn reboot(&self) -> Result<()> {
        let st = state::load(&self.machine_name()?)?;
        self.life.lock().unwrap().boot = st.boot_count + 1;
        self.signal_leader(libc::SIGINT)
    }

    /// At the end of the run: a clean poweroff, then force.
    pub fn stop(&self, timeout: Duration) {
        if self.keep || !self.running() {
            return;
        }
        let _ = self.signal_launcher(libc::SIGTERM);
        if self.wait_exit(Some(timeout)).is_err() {
            let _ = self.crash();
        }
    }
}

/// The guest's bash and its environment after /etc/profile, from the
/// output of `command -v bash; printf '\0'; env -0`; None where it has
/// no bash (then every command sources the profile) or no `env -0`.
fn parse_shell(stdout: &[u8]) -> Option<Shell> {
    let text = String::from_utf8_lossy(stdout).into_owned();
    let (bash, env) = text.split_once('\0')?;
    let bash = bash.trim();
    if !bash.starts_with('/') || !env.ends_with('\0') {
        return None;
    }
    let skip = ["SHLVL", "PWD", "OLDPWD", "_", "TERM"];
    let env = env
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| !k.is_empty() && !skip.contains(k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((bash.to_owned(), env))
}

/// A node's entry process and our end of its socket; killed when the
/// last command that uses it let go.
pub struct EntryProcess {
    entry: Entry,
    child: Mutex<Child>,
}

impl EntryProcess {
    fn ended(&self) -> bool {
        matches!(self.child.lock().unwrap().try_wait(), Ok(Some(_)))
    }
}

impl Drop for EntryProcess {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Bash's builtins and reserved words: a command starting with one of
/// these goes to bash even when it is plain words.
const SHELL_WORDS: &[&str] = &[
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
    ".",
    ":",
    "[",
    "[[",
    "]]",
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "case",
    "esac",
    "for",
    "select",
    "while",
    "until",
    "do",
    "done",
    "in",
    "function",
    "time",
    "coproc",
    "{",
    "}",
    "!",
];

/// `command` as an argv when bash would run it as exactly that: words of
/// characters bash gives no meaning to, separated by spaces, the first
/// neither an assignment nor a builtin or reserved word (`true` and
/// `false` alone excepted: the programs do what the builtins do). Then
/// it is run without bash, whose start is most of a short command's cost.
pub fn plain_words(command: &str, env: &[(String, String)]) -> Option<Vec<String>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_./:,+@%=-".contains(c);
    let words: Vec<String> = command
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    let first = words.first()?;
    if !words.iter().all(|w| w.chars().all(plain))
        || first.contains('=')
        || env.iter().any(|(k, _)| k == "BASH_ENV" || k == "ENV")
    {
        return None;
    }
    if (first == "true" || first == "false") && words.len() == 1 {
        return Some(words);
    }
    if SHELL_WORDS.contains(&first.as_str()) || first == "true" || first == "false" {
        return None;
    }
    Some(words)
}
