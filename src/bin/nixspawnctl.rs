//! nixspawnctl: list, inspect, enter and stop containers started by
//! nixspawn on this host (no machined needed; state in /run/nixspawn).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use nixspawn_cli::terminal_safe;
use nixspawn_runtime::ctl::{files, users};
use nixspawn_runtime::nixos::closure::ClosureSource;
use nixspawn_runtime::state::{self, State};
use nixspawn_runtime::{MachineName, ctl::enter, nixos::update, os, spec::signals};

#[derive(Debug, Parser)]
#[command(
    name = "nixspawnctl",
    version,
    about = "Manage containers started by nixspawn"
)]
struct Cli {
    /// Print machine-readable JSON
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List running containers
    List,
    /// Show one container's state
    Status { name: String },
    /// Run a command inside a container (all its namespaces and its cgroup)
    Exec {
        name: String,
        /// Set an environment variable for the command
        #[arg(short = 'E', long = "setenv", value_name = "NAME=VALUE")]
        setenv: Vec<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Ask the guest to power off (SIGRTMIN+4 to its PID 1, as machinectl does)
    Poweroff { name: String },
    /// Ask the guest to reboot (SIGINT to its PID 1, as machinectl does)
    Reboot { name: String },
    /// Stop the container as SIGTERM to its launcher does, and wait for it to end
    Stop {
        name: String,
        /// Seconds to wait before giving up
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
    /// Give a running NixOS guest a new toplevel: mount the store paths it
    /// lacks (closure-only store), repoint its system profile, and run the new
    /// switch-to-configuration. No restart.
    Update {
        name: String,
        /// The new system toplevel
        #[arg(long, value_name = "STOREPATH", value_hint = clap::ValueHint::DirPath)]
        toplevel: PathBuf,
        /// What switch-to-configuration is to do
        #[arg(long, value_enum, default_value_t = Action::Switch)]
        action: Action,
        /// Take the closure from a closureInfo store-paths file instead of the Nix database
        #[arg(long, value_name = "FILE")]
        closure_file: Option<PathBuf>,
    },
    // --- shell, login, copy-to, copy-from, bind, logs (issue 16) ---
    /// Open a login shell (or run CMD) as USER (default root) in the guest:
    /// the user's shell from the guest's passwd, HOME, USER, LOGNAME, SHELL,
    /// the caller's TERM, the home directory as working directory; a pty
    /// when stdin and stdout are terminals. Returns the command's status.
    Shell {
        /// [USER@]NAME
        #[arg(value_name = "[USER@]NAME")]
        target: String,
        /// Set an environment variable for the command
        #[arg(short = 'E', long = "setenv", value_name = "NAME=VALUE")]
        setenv: Vec<String>,
        /// Enter directly, without a PAM session through the guest's
        /// systemd (what happens anyway when its PID 1 is not systemd)
        #[arg(long)]
        no_pam: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Attach to the guest's getty (container-getty@N.service) on a new pty;
    /// type ^] three times within a second to leave
    Login { name: String },
    /// Copy a file or directory from the host into the guest (GUEST defaults
    /// to HOST; it must not exist)
    CopyTo {
        name: String,
        #[arg(value_hint = clap::ValueHint::AnyPath)]
        host: PathBuf,
        guest: Option<PathBuf>,
    },
    /// Copy a file or directory from the guest to the host (HOST defaults to
    /// GUEST; it must not exist)
    CopyFrom {
        name: String,
        guest: PathBuf,
        #[arg(value_hint = clap::ValueHint::AnyPath)]
        host: Option<PathBuf>,
    },
    /// Bind-mount a host directory or file into the running guest (GUEST
    /// defaults to HOSTPATH)
    Bind {
        name: String,
        #[arg(value_hint = clap::ValueHint::AnyPath)]
        host: PathBuf,
        guest: Option<PathBuf>,
        /// Make the mount read-only
        #[arg(long)]
        read_only: bool,
        /// Create the mount point in the guest if it is missing
        #[arg(long)]
        mkdir: bool,
    },
    /// Show the guest's journal (its /var/log/journal, else /run/log/journal)
    /// with the host's journalctl; further arguments go to journalctl
    Logs {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        journalctl_args: Vec<String>,
    },
    /// Write man pages and shell completions for nixspawn and nixspawnctl
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write man/ and completions/ into
        dir: PathBuf,
    },
    // --- end of issue 16's verbs ---
    /// Wait until the guest has reported READY=1
    WaitReady {
        name: String,
        /// Seconds to wait before giving up
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// switch-to-configuration's actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Action {
    Switch,
    Test,
    Boot,
    DryActivate,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Test => "test",
            Action::Boot => "boot",
            Action::DryActivate => "dry-activate",
        }
    }
}

fn name(s: &str) -> Result<MachineName> {
    Ok(MachineName::new(s)?)
}

/// Signal the guest's PID 1, after checking the PID still names it.
fn signal_leader(st: &State, sig: i32) -> Result<()> {
    let pidfd = st.open_leader()?;
    os::pidfd_send_signal(std::os::fd::AsFd::as_fd(&pidfd), sig).with_context(|| {
        format!(
            "sending {} to PID {}",
            signals::name(sig),
            st.leader.unwrap_or(0)
        )
    })
}

fn wait_until(timeout: u64, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut pause = Duration::from_millis(1);
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout}s waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

fn print_status(st: &State) {
    let since = st.started_usec / 1_000_000;
    println!("{} ({})", st.name, st.uuid);
    println!(
        "     State: {}{} (boot {})",
        st.phase,
        if st.ready { ", ready" } else { "" },
        st.boot_count
    );
    if let Some(s) = &st.status {
        println!("    Status: {}", terminal_safe(s));
    }
    println!("     Since: {since} (seconds since the epoch)");
    if let Some(l) = st.leader {
        let comm = std::fs::read_to_string(format!("/proc/{l}/comm")).unwrap_or_default();
        println!(
            "    Leader: {l} ({})",
            terminal_safe(comm.trim_end_matches('\n'))
        );
    }
    println!("Supervisor: {}", st.supervisor);
    println!(
        "      Root: {}{}",
        st.root_description(),
        if st.ephemeral { " (ephemeral)" } else { "" }
    );
    if let Some(t) = &st.toplevel {
        println!("  Toplevel: {} (booted)", t.display());
        if let Some(l) = st.leader
            && let Ok(now) =
                std::fs::read_link(format!("/proc/{l}/root/nix/var/nix/profiles/system"))
        {
            println!("   Profile: {}", terminal_safe(&now.to_string_lossy()));
        }
        println!(
            "     Store: {}",
            if st.closure_only && st.store_overlay {
                "closure only (one overlay mount)"
            } else if st.closure_only {
                "closure only (one bind mount per path)"
            } else {
                "shared with the host"
            }
        );
    }
    if let Some(r) = st.uid_range {
        println!(
            "  UID Shift: {} (range {}, host {}-{})",
            r.shift,
            r.range,
            r.shift,
            r.shift + (r.range - 1)
        );
    }
    println!("    Cgroup: {}", st.cgroup.display());
    if let Some(sig) = st.kill_signal {
        println!("KillSignal: {}", signals::name(sig));
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::List => {
            let all = state::list()?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<24} {:>8} {:<10} ROOT", "MACHINE", "LEADER", "STATE");
                for st in &all {
                    let phase = if st.ready && st.phase == "running" {
                        "ready"
                    } else {
                        st.phase.as_str()
                    };
                    let leader = st
                        .leader
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<24} {:>8} {:<10} {}",
                        st.name.as_str(),
                        leader,
                        phase,
                        st.root_description()
                    );
                }
                println!("\n{} machines listed.", all.len());
            }
        }
        Command::Status { name: n } => {
            let st = state::load(&name(&n)?)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
        }
        Command::Exec {
            name: n,
            setenv,
            command,
        } => {
            let st = state::load(&name(&n)?)?;
            // The caller's terminal type, as machinectl passes it; -E may
            // still say otherwise.
            let mut env: Vec<(String, String)> = std::env::var("TERM")
                .map(|term| ("TERM".to_owned(), term))
                .into_iter()
                .collect();
            for s in &setenv {
                env.push(nixspawn_runtime::spec::environment::parse_assignment(s)?);
            }
            return Ok(enter::exec(&st, &command, &env)?);
        }
        Command::Poweroff { name: n } => {
            signal_leader(&state::load(&name(&n)?)?, signals::rtmin() + 4)?
        }
        Command::Reboot { name: n } => signal_leader(&state::load(&name(&n)?)?, libc::SIGINT)?,
        Command::Stop { name: n, timeout } => {
            let n = name(&n)?;
            let st = state::load(&n)?;
            let launcher = st.open_supervisor()?;
            os::pidfd_send_signal(std::os::fd::AsFd::as_fd(&launcher), libc::SIGTERM)
                .with_context(|| format!("signalling the launcher (PID {})", st.supervisor))?;
            wait_until(timeout, &format!("{n} to stop"), || {
                Ok(state::load(&n).is_err())
            })?;
        }
        Command::Update {
            name: n,
            toplevel,
            action,
            closure_file,
        } => {
            let st = state::load(&name(&n)?)?;
            if st.toplevel.is_none() {
                bail!("{n} was not started with --toplevel; there is no NixOS system to update");
            }
            let source = closure_file.map_or(ClosureSource::Database, ClosureSource::File);
            let action = action.as_str();
            let done = update::update(&st, &toplevel, &source, action)?;
            if cli.json {
                let added: Vec<String> = done
                    .added
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "added": added, "switch_status": done.switch_status })
                );
            } else {
                eprintln!(
                    "{n}: {} store paths added; switch-to-configuration {action} exited {}",
                    done.added.len(),
                    done.switch_status
                );
            }
            return Ok(done.switch_status);
        }
        Command::Shell {
            target,
            setenv,
            no_pam,
            command,
        } => return shell(&target, &setenv, no_pam, command),
        Command::Login { name: n } => {
            return Ok(enter::login(&state::load(&name(&n)?)?)?);
        }
        Command::CopyTo {
            name: n,
            host,
            guest,
        } => {
            let guest = guest.unwrap_or_else(|| host.clone());
            files::copy_to(&state::load(&name(&n)?)?, &host, &guest)?;
        }
        Command::CopyFrom {
            name: n,
            guest,
            host,
        } => {
            let host = host.unwrap_or_else(|| guest.clone());
            files::copy_from(&state::load(&name(&n)?)?, &guest, &host)?;
        }
        Command::Bind {
            name: n,
            host,
            guest,
            read_only,
            mkdir,
        } => {
            let guest = guest.unwrap_or_else(|| host.clone());
            files::bind(&state::load(&name(&n)?)?, &host, &guest, read_only, mkdir)?;
        }
        Command::Logs {
            name: n,
            journalctl_args,
        } => return logs(&state::load(&name(&n)?)?, &journalctl_args),
        Command::GenerateDocs { dir } => generate_docs(&dir)?,
        Command::WaitReady { name: n, timeout } => {
            let n = name(&n)?;
            wait_until(timeout, &format!("{n} to report READY=1"), || {
                Ok(state::load(&n).is_ok_and(|s| s.ready))
            })?;
        }
    }
    Ok(0)
}

/// `shell [USER@]NAME [CMD...]`.
fn shell(target: &str, setenv: &[String], no_pam: bool, command: Vec<String>) -> Result<i32> {
    let (user, machine) = match target.split_once('@') {
        Some((u, m)) if !u.is_empty() => (u, m),
        Some((_, m)) => ("root", m),
        None => ("root", target),
    };
    let st = state::load(&name(machine)?)?;
    let account = users::lookup(&st, user)?;
    if !no_pam && guest_systemd_listens(&st)? {
        return shell_session(&st, &account, setenv, command);
    }
    let mut env = vec![
        ("HOME".to_owned(), account.user.home.clone()),
        ("USER".to_owned(), account.name.clone()),
        ("LOGNAME".to_owned(), account.name.clone()),
        ("SHELL".to_owned(), account.shell.clone()),
    ];
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".to_owned(), term));
    }
    for s in setenv {
        env.push(nixspawn_runtime::spec::environment::parse_assignment(s)?);
    }
    // No command: the user's shell as a login shell ("-bash").
    let (argv, argv0) = if command.is_empty() {
        let base = account.shell.rsplit('/').next().unwrap_or("sh");
        (vec![account.shell.clone()], Some(format!("-{base}")))
    } else {
        (command, None)
    };
    let opts = enter::ExecOptions {
        user: Some(account.user.clone()),
        argv0,
    };
    Ok(enter::exec_with(&st, &argv, &env, &opts)?)
}

/// Is the guest's PID 1 a systemd we can ask for a service (its private
/// bus socket is there)? Looked up inside the guest's root.
fn guest_systemd_listens(st: &State) -> Result<bool> {
    use nixspawn_runtime::guest::rootfs::resolve::{Create, open_in};
    let private = std::path::Path::new("/run/systemd/private");
    Ok(st.through_root(|root| open_in(root, private, Create::Nothing).is_ok())?)
}

/// `shell` as machinectl's: a transient service of the guest's own systemd
/// with `PAMName=login` (the guest's PAM session: pam_env, limits,
/// loginuid, a logind session where it has pam_systemd), as USER in their
/// home, on a pty of the guest when we are on a terminal (`systemd-run
/// --pty`, inside our own pty from the guest's devpts), else over pipes
/// (`--pipe`); its exit status is the command's. systemd-run is the
/// guest's own, run as its root through our namespace entry: no bus from
/// the host into the guest is needed.
fn shell_session(
    st: &State,
    account: &users::Account,
    setenv: &[String],
    command: Vec<String>,
) -> Result<i32> {
    use std::io::IsTerminal;
    let on_tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut argv: Vec<String> = [
        "systemd-run",
        "--quiet",
        "--wait",
        "--collect",
        "--service-type=exec",
        "--property=PAMName=login",
        "--property=WorkingDirectory=-~",
    ]
    .map(String::from)
    .into();
    argv.push(format!("--uid={}", account.name));
    argv.push(format!("--description=Shell for User {}", account.name));
    if let Ok(term) = std::env::var("TERM") {
        argv.push(format!("--setenv=TERM={term}"));
    }
    for s in setenv {
        let (k, v) = nixspawn_runtime::spec::environment::parse_assignment(s)?;
        argv.push(format!("--setenv={k}={v}"));
    }
    argv.push(if on_tty { "--pty" } else { "--pipe" }.into());
    argv.push("--".into());
    if command.is_empty() {
        // A login shell; systemd-run cannot set argv[0] ("-bash").
        argv.extend([account.shell.clone(), "-l".into()]);
    } else {
        argv.extend(command);
    }
    Ok(enter::exec(st, &argv, &[])?)
}

/// `logs NAME [ARGS...]`: the host's journalctl on the guest's journal
/// directory, resolved inside the guest's root and passed as a descriptor
/// (`-D /proc/self/fd/N`), so a guest's symlink cannot point it at the
/// host's own journal directory.
fn logs(st: &State, args: &[String]) -> Result<i32> {
    use nixspawn_runtime::guest::rootfs::resolve::{Create, open_in};
    let dir = st
        .through_root(|root| {
            ["/var/log/journal", "/run/log/journal"]
                .iter()
                .find_map(|d| open_in(root, std::path::Path::new(d), Create::Nothing).ok())
        })?
        .with_context(|| format!("{} has no /var/log/journal or /run/log/journal", st.name))?;
    os::inheritable(std::os::fd::AsFd::as_fd(&dir))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
    let status = std::process::Command::new("journalctl")
        .arg(format!("--directory=/proc/self/fd/{fd}"))
        .args(args)
        .status()
        .context("running journalctl (is systemd's journalctl installed on the host?)")?;
    Ok(status.code().unwrap_or(1))
}

/// Man pages (section 1, a page per subcommand) and bash, zsh and fish
/// completions for both binaries, from their clap definitions.
fn generate_docs(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for cmd in [
        Cli::command(),
        nixspawn_cli::launcher_args::Args::command().name("nixspawn"),
    ] {
        clap_mangen::generate_to(cmd.clone(), &man)
            .with_context(|| format!("writing man pages into {}", man.display()))?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut cmd = cmd.clone();
            let bin = cmd.get_name().to_owned();
            clap_complete::generate_to(shell, &mut cmd, bin, &completions)
                .with_context(|| format!("writing completions into {}", completions.display()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("nixspawnctl: {}", nixspawn_cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn update_actions_are_switch_to_configurations_own() {
        for (text, action) in [
            ("switch", Action::Switch),
            ("test", Action::Test),
            ("boot", Action::Boot),
            ("dry-activate", Action::DryActivate),
        ] {
            let cli = Cli::try_parse_from([
                "nixspawnctl",
                "update",
                "web",
                "--toplevel",
                "/x",
                "--action",
                text,
            ])
            .unwrap();
            let Command::Update { action: got, .. } = cli.command else {
                panic!("{text}: not an update");
            };
            assert_eq!((got, got.as_str()), (action, text));
        }
        let cli =
            Cli::try_parse_from(["nixspawnctl", "update", "web", "--toplevel", "/x"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Update {
                action: Action::Switch,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from([
                "nixspawnctl",
                "update",
                "web",
                "--toplevel",
                "/x",
                "--action",
                "reboot"
            ])
            .is_err()
        );
    }

    #[test]
    fn exec_keeps_the_command_whole() {
        let cli = Cli::try_parse_from([
            "nixspawnctl",
            "exec",
            "web",
            "-E",
            "A=1",
            "--",
            "ls",
            "-l",
            "--all",
        ])
        .unwrap();
        let Command::Exec {
            name,
            setenv,
            command,
        } = cli.command
        else {
            panic!("not an exec");
        };
        assert_eq!(
            (name.as_str(), setenv, command),
            (
                "web",
                vec!["A=1".to_owned()],
                vec!["ls".to_owned(), "-l".into(), "--all".into()]
            )
        );
        assert!(
            Cli::try_parse_from(["nixspawnctl", "exec", "web"]).is_err(),
            "a command is required"
        );
    }
}
