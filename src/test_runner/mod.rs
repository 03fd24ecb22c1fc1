//! `nixspawn-test`: boots the nodes of a test description as nixspawn
//! containers on private vlans and runs the test script (the NixOS test
//! driver's Python dialect) against them with our own driver module
//! (`driver.py`, embedded), which asks this process to start, enter and
//! stop nodes over a unix socket.
//!
//! - `description`: the JSON test description;
//! - `network`: the run's namespaces, bridges, veths and addresses;
//! - `node`: one node's nixspawn, its commands and its timeline;
//! - `server`: the socket the driver talks to;
//! - `report`: boot timelines as text and SVG.

pub mod description;
pub mod network;
pub mod node;
pub mod report;
pub mod server;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

use description::Description;
use node::{Node, NodeSetup, Spawner};

pub const DRIVER: &str = include_str!("driver.py");

/// Exit status on the global timeout: the driver's (it SIGTERMs itself).
pub const EXIT_TIMEOUT: u8 = 143;

pub struct Options {
    pub description: PathBuf,
    pub output_dir: Option<PathBuf>,
    pub keep: bool,
    pub interactive: bool,
    pub junit: Option<PathBuf>,
    pub global_timeout: Option<f64>,
    pub nixspawn: Option<PathBuf>,
}

fn is_tty() -> bool {
    nixspawn_runtime::os::isatty(std::io::stderr())
}

/// On a terminal, what starts a line over the status line (clears it).
pub fn clear_line() -> &'static str {
    if is_tty() { "\r\x1b[K" } else { "" }
}

/// Print a guest's console lines as the driver prints serial lines:
/// `name # line`, dim on a terminal.
fn follow_console(name: String, path: PathBuf, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let dim = is_tty();
        let mut partial = Vec::new();
        // Opened once and read on from where it stopped (not reopened on
        // every round: ten nodes poll it twenty times a second).
        let mut file = None;
        loop {
            let last = stop.load(Ordering::Relaxed);
            if file.is_none() {
                file = std::fs::File::open(&path).ok();
            }
            if let Some(f) = &mut file {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf)
                    && n > 0
                {
                    partial.extend_from_slice(&buf);
                    while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=i).collect();
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                        let text = nixspawn_cli_safe(text.trim_end_matches('\r'));
                        if dim {
                            eprintln!("\r\x1b[K\x1b[2m{name} # {text}\x1b[0m");
                        } else {
                            eprintln!("{name} # {text}");
                        }
                    }
                }
            }
            if last {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

fn nixspawn_cli_safe(s: &str) -> String {
    // The console carries the guest's own escape sequences (colours):
    // CSI sequences are dropped, any other control character escaped, so
    // a line stays one line and cannot drive the terminal.
    let mut plain = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    crate::terminal_safe(&plain)
}

/// Where `nixspawn` is: next to us, else on PATH.
fn find_nixspawn(given: Option<PathBuf>) -> PathBuf {
    if let Some(p) = given {
        return p;
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
        && dir.join("nixspawn").is_file()
    {
        return dir.join("nixspawn");
    }
    PathBuf::from("nixspawn")
}

/// Run a test; the process's exit status.
pub fn run(opts: Options) -> Result<u8> {
    // Termination requests are taken by a thread of ours (so the nodes go
    // down cleanly); children start with an empty mask again.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;

    let (desc, script) = Description::load(&opts.description)?;
    let started = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix("nixspawn-test.")
        .tempdir()
        .context("making a scratch directory")?;
    let (out_dir, remove_out) = match &opts.output_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (std::fs::canonicalize(d)?, false)
        }
        None => (scratch.path().join("out"), true),
    };
    std::fs::create_dir_all(&out_dir)?;
    let driver = scratch.path().join("nixspawn_test_driver.py");
    std::fs::write(&driver, DRIVER)?;
    let script_path = match &desc.test_script_file {
        Some(f) => std::fs::canonicalize(f)?,
        None => {
            let p = scratch.path().join("test-script.py");
            std::fs::write(&p, &script)?;
            p
        }
    };

    let names: Vec<(String, Vec<u8>)> = desc
        .nodes
        .iter()
        .map(|(n, d)| (n.clone(), d.vlans()))
        .collect();
    let net = network::build(&names).context("setting up the vlans")?;
    let hosts = scratch.path().join("hosts");
    std::fs::write(&hosts, network::hosts_file(&net))?;

    let prefix = desc.machine_prefix.clone().unwrap_or_default();
    let spawner = Spawner::new(!opts.keep);
    let self_exe = std::env::current_exe().context("finding nixspawn-test's own path")?;
    let nixspawn = find_nixspawn(opts.nixspawn.clone());
    let stop_following = Arc::new(AtomicBool::new(false));
    let mut nodes = BTreeMap::new();
    for (name, d) in &desc.nodes {
        let n = Arc::new(Node::new(NodeSetup {
            name,
            machine: format!("{prefix}{name}"),
            description: d,
            namespace_path: net.nodes[name].namespace_path(),
            out_dir: &out_dir,
            nixspawn: nixspawn.clone(),
            self_exe: self_exe.clone(),
            hosts: hosts.clone(),
            spawner: spawner.clone(),
            keep: opts.keep,
        }));
        std::fs::write(&n.console_log, b"")?;
        follow_console(
            name.clone(),
            n.console_log.clone(),
            Arc::clone(&stop_following),
        );
        nodes.insert(name.clone(), n);
    }

    let socket = scratch.path().join("driver.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    let status = Arc::new(server::Status::default());
    let server = Arc::new(server::Server {
        nodes: nodes.clone(),
        script_path,
        progress: true,
        status: Arc::clone(&status),
    });
    server.serve(listener);
    // The live status line, on a terminal only (and not under the prompt).
    let stop_status = Arc::new(AtomicBool::new(false));
    let status_line =
        (is_tty() && !opts.interactive).then(|| status.show(Arc::clone(&stop_status)));

    eprintln!(
        "nixspawn-test: {} node(s), logs in {}",
        nodes.len(),
        out_dir.display()
    );
    let mut python = Command::new("python3");
    python
        .arg("-u")
        .arg(&driver)
        .env("NIXSPAWN_TEST_SOCKET", &socket)
        .env("NIXSPAWN_TEST_OUT", &out_dir)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    if let Some(j) = &opts.junit {
        let j = if j.is_relative() {
            std::env::current_dir()?.join(j)
        } else {
            j.clone()
        };
        python.env("NIXSPAWN_TEST_JUNIT", j);
    }
    if opts.interactive {
        python.env("NIXSPAWN_TEST_INTERACTIVE", "1");
    }
    if !opts.interactive {
        // Spawned by this (the main) thread, which lives as long as we do.
        nixspawn_runtime::os::die_with_parent(&mut python, libc::SIGKILL);
    }
    let mut child = python.spawn().context("running python3")?;
    let python_pid = nix::unistd::Pid::from_raw(child.id() as i32);

    // The global timeout and termination requests end the script.
    let (tx, rx) = std::sync::mpsc::channel::<Ending>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            while let Ok(sig) = mask.wait() {
                if sig != Signal::SIGINT {
                    let _ = tx.send(Ending::Signal(sig));
                    return;
                }
            }
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(Ending::Exited(child.wait()));
    });
    let timeout = opts
        .global_timeout
        .or(desc.global_timeout)
        .unwrap_or(description::DEFAULT_GLOBAL_TIMEOUT);
    let ending = if opts.interactive {
        rx.recv().ok()
    } else {
        rx.recv_timeout(Duration::from_secs_f64(timeout)).ok()
    };
    let code = match ending {
        Some(Ending::Exited(Ok(s))) => status_code(s),
        Some(Ending::Exited(Err(e))) => {
            eprintln!("nixspawn-test: waiting for python3: {e}");
            1
        }
        Some(Ending::Signal(sig)) => {
            eprintln!("nixspawn-test: {sig}; test terminating...");
            let _ = nix::sys::signal::kill(python_pid, Signal::SIGKILL);
            EXIT_TIMEOUT
        }
        None => {
            eprintln!("timeout reached; test terminating...");
            let _ = nix::sys::signal::kill(python_pid, Signal::SIGKILL);
            EXIT_TIMEOUT
        }
    };

    stop_status.store(true, Ordering::Relaxed);
    if let Some(t) = status_line {
        let _ = t.join();
    }
    if code != 0 {
        failure_report(&nodes);
    }
    let rows: Vec<(String, Vec<node::Mark>)> = nodes
        .values()
        .map(|n| (n.name.clone(), n.marks()))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    if !rows.is_empty() {
        eprint!("boot timeline:\n{}", report::text(&rows));
        let svg = out_dir.join("timeline.svg");
        std::fs::write(&svg, report::svg(&rows))?;
        eprintln!("boot timeline drawn in {}", svg.display());
    }

    // Down in parallel: each a clean poweroff, forced after a while.
    let stoppers: Vec<_> = nodes
        .values()
        .map(|n| {
            let n = Arc::clone(n);
            std::thread::spawn(move || n.stop(Duration::from_secs(30)))
        })
        .collect();
    for s in stoppers {
        let _ = s.join();
    }
    stop_following.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(60));
    if opts.keep {
        keep_network(&net, &prefix)?;
        for n in nodes.values() {
            eprintln!(
                "{}: left running as {} (nixspawnctl exec {} -- ...)",
                n.name, n.machine, n.machine
            );
        }
    }
    drop(net);
    let kept = opts.keep || code != 0;
    if remove_out && kept {
        // Keep the logs of a failed or kept run.
        let keep_dir =
            std::env::temp_dir().join(format!("nixspawn-test-logs.{}", std::process::id()));
        let _ = std::fs::rename(&out_dir, &keep_dir);
        eprintln!("nixspawn-test: logs kept in {}", keep_dir.display());
    }
    eprintln!(
        "nixspawn-test: {} in {:.2}s",
        if code == 0 { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}

enum Ending {
    Exited(std::io::Result<ExitStatus>),
    Signal(Signal),
}

fn status_code(s: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    }
}

/// On failure: every running node's failed units and journal tail.
fn failure_report(nodes: &BTreeMap<String, Arc<Node>>) {
    let threads: Vec<_> = nodes
        .values()
        .filter(|n| n.running())
        .map(|n| {
            let n = Arc::clone(n);
            std::thread::spawn(move || {
                let mut text = String::new();
                for (title, cmd) in [
                    (
                        "failed units",
                        "systemctl --failed --no-pager --no-legend --plain",
                    ),
                    (
                        "journal tail",
                        "journalctl --no-pager -n 30 -o short-monotonic",
                    ),
                ] {
                    text.push_str(&format!("{}: {title}:\n", n.name));
                    match n.exec(cmd, Some(Duration::from_secs(15)), None, None) {
                        Ok(o) => {
                            let out = String::from_utf8_lossy(&o.stdout);
                            if out.trim().is_empty() {
                                text.push_str(&format!("{}:   (none)\n", n.name));
                            }
                            for l in BufReader::new(out.as_bytes()).lines().map_while(Result::ok) {
                                text.push_str(&format!(
                                    "{}:   {}\n",
                                    n.name,
                                    crate::terminal_safe(&l)
                                ));
                            }
                        }
                        Err(e) => text.push_str(&format!("{}:   ({e:#})\n", n.name)),
                    }
                }
                text
            })
        })
        .collect();
    eprintln!("!!! failure report");
    for t in threads {
        if let Ok(text) = t.join() {
            eprint!("{text}");
        }
    }
}

/// With --keep the vlans outlive us: the run's namespace is pinned at
/// /run/netns (the nodes hold their own).
fn keep_network(net: &network::RunNetwork, prefix: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = Path::new("/run/netns");
    std::fs::create_dir_all(dir)?;
    let pin = dir.join(format!("{prefix}nixspawn-test-{}", std::process::id()));
    std::fs::write(&pin, b"")?;
    nix::mount::mount(
        Some(Path::new(&format!(
            "/proc/self/fd/{}",
            net.run_ns.as_raw_fd()
        ))),
        &pin,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("pinning the vlans at {}", pin.display()))?;
    eprintln!(
        "nixspawn-test: vlans kept in network namespace {} (umount and remove it when done)",
        pin.display()
    );
    Ok(())
}

/// `nixspawn-test __entry MACHINE`, its socket as stdin: a node's
/// long-lived namespace entry (`nixspawn_runtime::ctl::entry`), a process
/// of its own so its forks happen single-threaded.
pub fn entry(machine: &str) -> u8 {
    let r = (|| -> Result<()> {
        let st = nixspawn_runtime::state::load(&nixspawn_runtime::MachineName::new(machine)?)?;
        let control = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .context("taking the entry's socket")?;
        Ok(nixspawn_runtime::ctl::entry::serve(&st, control)?)
    })();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "nixspawn-test: entering {machine}: {}",
                crate::error_line(&e)
            );
            1
        }
    }
}
