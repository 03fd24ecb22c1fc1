//! `nixspawn`'s command line: systemd-nspawn's spelling and meaning for
//! every option implemented; every other nspawn option is refused by name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use nixspawn_runtime::host::machined::{self, Reach};
use nixspawn_runtime::nixos::closure::{self, ClosureSource};
use nixspawn_runtime::security::seccomp;
use nixspawn_runtime::spec::journal::LinkJournal;
use nixspawn_runtime::spec::mounts::CustomMount;
use nixspawn_runtime::spec::{capabilities, credentials, userns};
use nixspawn_runtime::{
    ConsoleMode, MachineName, Payload, Register, Spec, StoreSpec, Uuid, os, spec::environment,
    spec::signals,
};

use crate::nspawn_settings;

#[derive(Debug, PartialEq, Eq, Parser)]
#[command(
    name = "nixspawn",
    version,
    about = "Boot a systemd OS tree or a NixOS system in a container (systemd-nspawn compatible)",
    trailing_var_arg = true,
    // getopt's rule, as nspawn's: an option given again overrides itself.
    args_override_self = true
)]
pub struct Args {
    /// Root directory of the container's OS tree
    #[arg(short = 'D', long = "directory", value_name = "PATH")]
    pub directory: Option<PathBuf>,

    /// Boot the tree's init (systemd) as PID 1; extra arguments go to init
    #[arg(short = 'b', long)]
    pub boot: bool,

    /// Machine name (default: the directory's name)
    #[arg(short = 'M', long = "machine", value_name = "NAME")]
    pub machine: Option<String>,

    /// Run on a throw-away overlay of the tree; the tree is not modified
    #[arg(short = 'x', long)]
    pub ephemeral: bool,

    /// The container's UUID (default: the tree's machine-id, else random)
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,

    /// Host name inside the container (default: the machine name)
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Set an environment variable for PID 1
    #[arg(short = 'E', long = "setenv", value_name = "NAME=VALUE")]
    pub setenv: Vec<String>,

    /// interactive, read-only, passive, pipe or autopipe
    #[arg(long, value_name = "MODE")]
    pub console: Option<String>,

    /// Same as --console=pipe
    #[arg(short = 'P', long)]
    pub pipe: bool,

    /// Do not print informational messages
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Give the container its own network namespace (only lo)
    #[arg(long)]
    pub private_network: bool,

    /// Signal that asks PID 1 to stop (default SIGRTMIN+3 with --boot)
    #[arg(long, value_name = "SIGNAL")]
    pub kill_signal: Option<String>,

    /// Report readiness only when the guest sends READY=1 (yes|no)
    #[arg(long, value_name = "BOOL")]
    pub notify_ready: Option<String>,

    /// Run in the calling service's cgroup instead of a scope of our own
    #[arg(long)]
    pub keep_unit: bool,

    /// Register with systemd-machined: yes, no or auto
    #[arg(long, value_name = "MODE")]
    pub register: Option<String>,

    /// Bind-mount a host path: SRC[:DST[:OPTIONS]]
    #[arg(long, value_name = "SPEC")]
    pub bind: Vec<String>,

    /// Bind-mount a host path read-only: SRC[:DST[:OPTIONS]]
    #[arg(long = "bind-ro", value_name = "SPEC")]
    pub bind_ro: Vec<String>,

    /// Mount a tmpfs: PATH[:OPTIONS]
    #[arg(long, value_name = "SPEC")]
    pub tmpfs: Vec<String>,

    /// Working directory of PID 1 inside the container
    #[arg(long, value_name = "PATH")]
    pub chdir: Option<PathBuf>,

    /// User namespacing: no, yes, pick, identity or SHIFT[:RANGE]
    #[arg(long, value_name = "MODE")]
    pub private_users: Option<String>,

    /// Same as --private-users=pick --private-users-ownership=auto
    #[arg(short = 'U')]
    pub pick_users: bool,

    /// How the tree's ownership meets the user namespace: off, chown, map or auto
    #[arg(long, value_name = "MODE")]
    pub private_users_ownership: Option<String>,

    /// Journal linking (only "no" and "auto" are implemented so far)
    #[arg(long, value_name = "MODE")]
    pub link_journal: Option<String>,

    /// .nspawn settings files: yes, no, override or trusted
    #[arg(long, value_name = "MODE")]
    pub settings: Option<String>,

    /// Keep these capabilities too (CAP_NAME[,CAP_NAME...] or "all")
    #[arg(long, value_name = "CAPS")]
    pub capability: Vec<String>,

    /// Take these capabilities away (CAP_NAME[,CAP_NAME...])
    #[arg(long = "drop-capability", value_name = "CAPS")]
    pub drop_capability: Vec<String>,

    /// Set no_new_privs for the payload (yes|no; default no: setuid programs work)
    #[arg(long = "no-new-privileges", value_name = "BOOL")]
    pub no_new_privileges: Option<String>,

    /// Add system calls or @groups to the filter; with a leading ~, remove them
    #[arg(
        long = "system-call-filter",
        value_name = "LIST",
        allow_hyphen_values = true
    )]
    pub system_call_filter: Vec<String>,

    /// Pass a credential: ID:VALUE (C escapes such as \n and \x00 allowed)
    #[arg(long = "set-credential", value_name = "ID:VALUE")]
    pub set_credential: Vec<String>,

    /// Pass a credential read now from a file, socket or directory: ID:PATH
    #[arg(long = "load-credential", value_name = "ID:PATH")]
    pub load_credential: Vec<String>,

    /// Boot this NixOS system toplevel: its init is PID 1, its closure the store
    #[arg(long, value_name = "STOREPATH")]
    pub toplevel: Option<PathBuf>,

    /// With --toplevel: take the closure from a closureInfo store-paths file
    #[arg(long, value_name = "FILE")]
    pub closure_file: Option<PathBuf>,

    /// With --toplevel: bind the whole host /nix/store instead of the closure
    #[arg(long)]
    pub shared_store: bool,

    /// With --toplevel: pass the host's nix-daemon socket and database in
    #[arg(long)]
    pub nix_daemon: bool,

    /// Trace and time every setup step on stderr
    #[arg(long)]
    pub debug: bool,

    /// Command (or, with --boot, init arguments)
    #[arg(value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// systemd-nspawn options nixspawn does not implement (yet). They are
/// refused by name rather than reported as unknown.
pub const UNIMPLEMENTED: &[&str] = &[
    "-n",
    "-p",
    "-i",
    "-a",
    "-u",
    "-S",
    "-L",
    "-Z",
    "--template",
    "--image",
    "--image-policy",
    "--mstack",
    "--oci-bundle",
    "--read-only",
    "--volatile",
    "--root-hash",
    "--root-hash-sig",
    "--verity-data",
    "--pivot-root",
    "--as-pid2",
    "--user",
    "--uid",
    "--private-users-delegate",
    "--network-interface",
    "--network-macvlan",
    "--network-ipvlan",
    "--network-veth",
    "--network-veth-extra",
    "--network-bridge",
    "--network-zone",
    "--network-namespace-path",
    "--port",
    "--ambient-capability",
    "--restrict-address-families",
    "--rlimit",
    "--oom-score-adjust",
    "--cpu-affinity",
    "--personality",
    "--resolv-conf",
    "--timezone",
    "--overlay",
    "--overlay-ro",
    "--inaccessible",
    "--bind-user",
    "--bind-user-shell",
    "--slice",
    "--property",
    "--selinux-context",
    "--selinux-apifs-context",
    "--suppress-sync",
    "--forward-journal",
    "--kill-signal-delay",
    "--background",
    "--no-ask-password",
    "--no-pager",
    "--toplevel",
    "--shared-store",
    "--closure-file",
    "--nix-daemon",
];

/// Why an argv was not taken.
#[derive(Debug)]
pub enum ArgvError {
    /// `--help` or `--version`: clap prints it and exits 0.
    Info(clap::Error),
    /// Refused: one line naming the argument that is wrong.
    Refused(String),
}

impl std::fmt::Display for ArgvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgvError::Info(e) => write!(f, "{e}"),
            ArgvError::Refused(line) => f.write_str(line),
        }
    }
}

/// `text` quoted, with anything that is not printable escaped: argv is the
/// caller's, and a refusal stays one line on the terminal whatever it holds.
fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// One line for a clap refusal, as nspawn's getopt gives one, naming the
/// argument (clap's own message spans lines and embeds argv raw).
fn refusal(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    // clap names a known option as "--machine <NAME>" (the name is
    // enough) and an unknown one as given.
    let arg = text(ContextKind::InvalidArg);
    let name = arg.as_deref().map(|a| match e.kind() {
        ErrorKind::UnknownArgument => a.to_owned(),
        _ => a.split(' ').next().unwrap_or(a).to_owned(),
    });
    // clap reports a missing value as an empty invalid one.
    let value = text(ContextKind::InvalidValue).filter(|v| !v.is_empty());
    let line = match (e.kind(), name, value) {
        (ErrorKind::UnknownArgument, Some(a), _) => {
            let name = a.split('=').next().unwrap_or(&a);
            if UNIMPLEMENTED.contains(&name) {
                format!("the systemd-nspawn option {name} is not implemented by nixspawn yet")
            } else {
                let hint = text(ContextKind::SuggestedArg)
                    .map(|s| format!(" (did you mean {}?)", quoted(&s)))
                    .unwrap_or_default();
                format!("unknown option {}{hint}", quoted(&a))
            }
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(a), Some(v)) => {
            format!("invalid value {} for {a}", quoted(&v))
        }
        (ErrorKind::InvalidValue | ErrorKind::NoEquals, Some(a), None) => {
            format!("{a} needs a value")
        }
        (ErrorKind::InvalidUtf8, _, _) => "an argument is not valid UTF-8".to_owned(),
        (kind, Some(a), _) => format!("{a}: {kind}"),
        (kind, None, _) => kind.to_string(),
    };
    format!("{line}; see nixspawn --help")
}

/// Parse argv without printing or exiting (for tests and fuzzing).
pub fn try_parse(argv: &[String]) -> Result<Args, ArgvError> {
    Args::try_parse_from(argv).map_err(|e| match e.kind() {
        clap::error::ErrorKind::DisplayHelp
        | clap::error::ErrorKind::DisplayVersion
        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ArgvError::Info(e),
        _ => ArgvError::Refused(refusal(&e)),
    })
}

/// Parse argv: `--help` and `--version` print and exit; anything refused
/// comes back as one line (an nspawn option we lack is named as such).
pub fn parse(argv: &[String]) -> Result<Args> {
    match try_parse(argv) {
        Ok(a) => Ok(a),
        Err(ArgvError::Info(e)) => e.exit(),
        Err(ArgvError::Refused(line)) => bail!(line),
    }
}

impl Args {
    /// The canonical argv for these arguments (`--long=VALUE` for every
    /// value, the command after `--`): parsing it gives them back.
    pub fn to_argv(&self) -> Vec<String> {
        let mut out = vec!["nixspawn".to_owned()];
        let mut opt = |name: &str, value: Option<&str>| {
            if let Some(v) = value {
                out.push(format!("--{name}={v}"));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        opt("directory", path(&self.directory).as_deref());
        opt("machine", self.machine.as_deref());
        opt("uuid", self.uuid.as_deref());
        opt("hostname", self.hostname.as_deref());
        opt("console", self.console.as_deref());
        opt("kill-signal", self.kill_signal.as_deref());
        opt("notify-ready", self.notify_ready.as_deref());
        opt("register", self.register.as_deref());
        opt("chdir", path(&self.chdir).as_deref());
        opt("private-users", self.private_users.as_deref());
        opt(
            "private-users-ownership",
            self.private_users_ownership.as_deref(),
        );
        opt("link-journal", self.link_journal.as_deref());
        opt("settings", self.settings.as_deref());
        opt("no-new-privileges", self.no_new_privileges.as_deref());
        opt("toplevel", path(&self.toplevel).as_deref());
        opt("closure-file", path(&self.closure_file).as_deref());
        for (name, values) in [
            ("setenv", &self.setenv),
            ("bind", &self.bind),
            ("bind-ro", &self.bind_ro),
            ("tmpfs", &self.tmpfs),
            ("capability", &self.capability),
            ("drop-capability", &self.drop_capability),
            ("system-call-filter", &self.system_call_filter),
            ("set-credential", &self.set_credential),
            ("load-credential", &self.load_credential),
        ] {
            for v in values {
                opt(name, Some(v));
            }
        }
        for (name, set) in [
            ("--boot", self.boot),
            ("--ephemeral", self.ephemeral),
            ("--pipe", self.pipe),
            ("--quiet", self.quiet),
            ("--private-network", self.private_network),
            ("--keep-unit", self.keep_unit),
            ("-U", self.pick_users),
            ("--shared-store", self.shared_store),
            ("--nix-daemon", self.nix_daemon),
            ("--debug", self.debug),
        ] {
            if set {
                out.push(name.to_owned());
            }
        }
        if !self.command.is_empty() {
            out.push("--".to_owned());
            out.extend(self.command.iter().cloned());
        }
        out
    }
}

pub fn parse_bool(what: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => bail!("invalid {what} value {v:?}: expected yes or no"),
    }
}

fn default_console() -> ConsoleMode {
    if os::isatty(std::io::stdin()) && os::isatty(std::io::stdout()) {
        ConsoleMode::Interactive
    } else {
        ConsoleMode::ReadOnly
    }
}

fn console_mode(args: &Args) -> Result<ConsoleMode> {
    if args.pipe {
        return Ok(ConsoleMode::Pipe);
    }
    Ok(match args.console.as_deref() {
        None => default_console(),
        Some("interactive") => ConsoleMode::Interactive,
        Some("read-only") => ConsoleMode::ReadOnly,
        Some("passive") => ConsoleMode::Passive,
        Some("pipe") => ConsoleMode::Pipe,
        Some("autopipe") => {
            if os::isatty(std::io::stdin()) && os::isatty(std::io::stdout()) {
                ConsoleMode::Interactive
            } else {
                ConsoleMode::Pipe
            }
        }
        Some(other) => bail!(
            "invalid --console mode {other:?}: expected interactive, read-only, passive, pipe or autopipe"
        ),
    })
}

/// The tree's /etc/machine-id, if it holds a valid id.
fn tree_machine_id(dir: &Path) -> Option<Uuid> {
    let text = nixspawn_runtime::guest::rootfs::resolve::read_in_root(
        dir,
        Path::new("/etc/machine-id"),
        64,
    )
    .ok()?;
    Uuid::parse(String::from_utf8_lossy(&text).trim()).ok()
}

/// A toplevel's name without its hash (`nixos-system-web-24.11`).
fn toplevel_name(toplevel: &Path) -> &str {
    let name = toplevel
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("nixos");
    name.get(33..).unwrap_or(name)
}

/// `--toplevel` and its companions, with the closure resolved now: a bad
/// toplevel or an undeterminable closure fails before anything is set up.
fn store_spec(args: &Args) -> Result<Option<StoreSpec>> {
    let Some(toplevel) = &args.toplevel else {
        for (set, flag) in [
            (args.shared_store, "--shared-store"),
            (args.closure_file.is_some(), "--closure-file"),
            (args.nix_daemon, "--nix-daemon"),
        ] {
            if set {
                bail!("{flag} only makes sense with --toplevel=STOREPATH");
            }
        }
        return Ok(None);
    };
    if args.boot {
        bail!("--toplevel runs the toplevel's init as PID 1; drop --boot");
    }
    if args.shared_store && args.closure_file.is_some() {
        bail!(
            "--shared-store and --closure-file contradict each other: the shared store is the whole host store"
        );
    }
    let toplevel = closure::resolve_toplevel(toplevel)?;
    let closure = if args.shared_store {
        None
    } else {
        let source = args
            .closure_file
            .clone()
            .map_or(ClosureSource::Database, ClosureSource::File);
        Some(closure::compute(&toplevel, &source)?)
    };
    Ok(Some(StoreSpec {
        toplevel,
        closure,
        nix_daemon: args.nix_daemon,
    }))
}

/// What the launcher does besides building the spec.
pub struct Options {
    pub quiet: bool,
    pub debug: bool,
    /// One informational line about machined registration, for `--register=auto`.
    pub register_notice: Option<String>,
}

/// Decide `--register`: `no` is silent; `auto` registers where machined is
/// reachable and otherwise says in one line why it does not; `yes` fails
/// up front, naming what is missing.
fn register_mode(register: Option<&str>) -> Result<(Register, Option<String>)> {
    let wanted = match register {
        None | Some("auto") => None,
        Some(v) => Some(parse_bool("--register", v)?),
    };
    if wanted == Some(false) {
        return Ok((Register::No, None));
    }
    let reach = machined::probe();
    if let Reach::Available { .. } = reach {
        let mode = if wanted == Some(true) {
            Register::Yes
        } else {
            Register::Auto
        };
        return Ok((mode, None));
    }
    let why = reach.explain();
    if wanted == Some(true) {
        bail!(
            "--register=yes: cannot register with systemd-machined: {why}; use --register=no or --register=auto to run unregistered"
        );
    }
    Ok((
        Register::No,
        Some(format!("Not registering with systemd-machined: {why}.")),
    ))
}

pub fn to_spec(mut args: Args) -> Result<(Spec, Options)> {
    let settings_mode = nspawn_settings::Mode::parse(args.settings.as_deref())?;
    let store = store_spec(&args)?;
    let directory = match (&args.directory, &args.machine, &store) {
        (Some(d), _, _) => Some(d.clone()),
        // A toplevel without -D boots on an empty tmpfs root.
        (None, _, Some(_)) => None,
        (None, Some(m), None) => Some(PathBuf::from("/var/lib/machines").join(m)),
        (None, None, None) => Some(
            std::env::current_dir().context("no -D given and the current directory is unusable")?,
        ),
    };
    let directory = directory
        .map(|d| {
            std::fs::canonicalize(&d)
                .with_context(|| format!("directory {}: cannot be resolved", d.display()))
        })
        .transpose()?;
    let machine = match (&args.machine, &directory, &store) {
        (Some(m), _, _) => MachineName::new(m)?,
        (None, Some(dir), _) => MachineName::from_directory_name(
            dir.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("cannot name a container after /"))?,
        )?,
        (None, None, Some(store)) => {
            MachineName::from_directory_name(toplevel_name(&store.toplevel))?
        }
        (None, None, None) => unreachable!("without a toplevel there is always a directory"),
    };
    if let Some((path, trusted)) =
        nspawn_settings::find(machine.as_str(), directory.as_deref(), settings_mode)
    {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let entries = nspawn_settings::parse(&text, &path)?;
        for warning in nspawn_settings::apply(&entries, &path, trusted, settings_mode, &mut args)? {
            eprintln!("nixspawn: {warning}");
        }
    }
    let link_journal = match args.link_journal.as_deref() {
        None => LinkJournal::default(),
        Some(mode) => LinkJournal::parse(mode)?,
    };
    let (register, register_notice) = register_mode(args.register.as_deref())?;

    let hostname = args.hostname.clone().unwrap_or_else(|| machine.to_string());
    if hostname.is_empty() || hostname.len() > 64 || hostname.contains(['/', '\0', ' ']) {
        bail!(
            "invalid --hostname {hostname:?}: a host name is 1-64 characters without '/' or spaces"
        );
    }
    let uuid = match &args.uuid {
        Some(u) => Uuid::parse(u)?,
        None => match directory.as_deref().and_then(tree_machine_id) {
            Some(id) => id,
            None => Uuid::random()?,
        },
    };
    let payload = if let Some(store) = &store {
        let mut argv = vec![store.toplevel.join("init").to_string_lossy().into_owned()];
        argv.extend(args.command.iter().cloned());
        Payload::Command { argv }
    } else if args.boot {
        Payload::Boot {
            args: args.command.clone(),
        }
    } else if args.command.is_empty() {
        // systemd-nspawn runs a shell when given nothing to run.
        Payload::Command {
            argv: vec!["/bin/sh".into()],
        }
    } else {
        Payload::Command {
            argv: args.command.clone(),
        }
    };
    let kill_signal = match &args.kill_signal {
        Some(s) => Some(signals::parse(s)?),
        None if args.boot || store.is_some() => Some(signals::rtmin() + 3),
        None => None,
    };
    let notify_ready = match &args.notify_ready {
        Some(v) => parse_bool("--notify-ready", v)?,
        None => false,
    };
    let mut mounts = Vec::new();
    for b in &args.bind {
        mounts.push(CustomMount::parse_bind(b, false)?);
    }
    for b in &args.bind_ro {
        mounts.push(CustomMount::parse_bind(b, true)?);
    }
    for t in &args.tmpfs {
        mounts.push(CustomMount::parse_tmpfs(t)?);
    }
    let environment = args
        .setenv
        .iter()
        .map(|s| environment::parse_assignment(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(c) = &args.chdir
        && !c.is_absolute()
    {
        bail!("invalid --chdir {}: must be an absolute path", c.display());
    }
    // Read now, in the privileged launcher; the guest never sees the paths.
    let mut credentials = Vec::new();
    for c in &args.set_credential {
        credentials.push(credentials::parse_set(c)?);
    }
    for c in &args.load_credential {
        credentials.extend(credentials::load(c)?);
    }
    credentials::check_all(&credentials)?;
    let mut added_capabilities = std::collections::HashSet::new();
    for c in &args.capability {
        added_capabilities.extend(capabilities::parse_list("--capability", c)?);
    }
    let mut dropped_capabilities = std::collections::HashSet::new();
    for c in &args.drop_capability {
        dropped_capabilities.extend(capabilities::parse_list("--drop-capability", c)?);
    }
    let mut syscall_filter = nixspawn_runtime::spec::filter::Adjustments::default();
    for f in &args.system_call_filter {
        syscall_filter.add_option(f)?;
    }
    let no_new_privileges = match &args.no_new_privileges {
        Some(v) => parse_bool("--no-new-privileges", v)?,
        None => false,
    };
    // As systemd-nspawn: SYSTEMD_SECCOMP=0 turns the filter off.
    let seccomp = std::env::var("SYSTEMD_SECCOMP")
        .map_or(true, |v| parse_bool("SYSTEMD_SECCOMP", &v).unwrap_or(true));
    if seccomp {
        // Never an unfiltered payload by accident: where we have no
        // tables, only SYSTEMD_SECCOMP=0 lets it run.
        seccomp::check_supported()?;
    }
    let private_users = match (&args.private_users, args.pick_users) {
        (Some(v), _) => userns::parse_mode(v)?,
        (None, true) => userns::Mode::Pick,
        (None, false) => userns::Mode::No,
    };
    let ownership = match &args.private_users_ownership {
        Some(v) => userns::parse_ownership(v)?,
        // As nspawn: pick implies auto; otherwise the tree is taken as it is.
        None if private_users == userns::Mode::Pick => userns::Ownership::Auto,
        None => userns::Ownership::Off,
    };
    let spec = Spec {
        // The caller's terminal type, as systemd-nspawn passes it to PID 1.
        term: std::env::var("TERM").ok(),
        private_users,
        ownership,
        added_capabilities,
        dropped_capabilities,
        syscall_filter,
        seccomp,
        no_new_privileges,
        credentials,
        directory,
        store,
        ephemeral: args.ephemeral,
        machine,
        hostname,
        uuid,
        payload,
        environment,
        console: console_mode(&args)?,
        private_network: args.private_network,
        kill_signal,
        notify_ready,
        keep_unit: args.keep_unit,
        register,
        link_journal,
        mounts,
        working_directory: args.chdir.clone(),
    };
    Ok((
        spec,
        Options {
            quiet: args.quiet,
            debug: args.debug,
            register_notice,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        std::iter::once("nixspawn")
            .chain(s.split_whitespace())
            .map(String::from)
            .collect()
    }

    #[test]
    fn command_after_options_is_kept_whole() {
        let a = parse(&argv("-D /tmp -q /bin/sh -c -x")).unwrap();
        assert_eq!(a.command, ["/bin/sh", "-c", "-x"]);
        assert!(a.quiet);
        assert!(!a.ephemeral);
    }

    #[test]
    fn repeated_options_behave_as_with_getopt() {
        let a = parse(&argv(
            "-q -q --machine=a --machine=b --bind=/x --bind=/y -D /tmp /bin/true",
        ))
        .unwrap();
        assert!(a.quiet);
        assert_eq!(a.machine.as_deref(), Some("b"), "the last value wins");
        assert_eq!(a.bind, ["/x", "/y"], "list options accumulate");
    }

    #[test]
    fn nspawn_spellings() {
        let a = parse(&argv("--directory=/tmp --machine=m1 -b --kill-signal=SIGRTMIN+3 --notify-ready=yes --keep-unit --bind-ro=/nix/store -E A=b"))
            .unwrap();
        assert!(a.boot && a.keep_unit);
        assert_eq!(a.machine.as_deref(), Some("m1"));
        assert_eq!(a.bind_ro, ["/nix/store"]);
    }

    #[test]
    fn unimplemented_options_are_named() {
        let err = parse(&argv("-D /tmp --network-veth -b"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--network-veth") && err.contains("not implemented"),
            "{err}"
        );
        let err = parse(&argv("-D /tmp --port=80 -b"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--port"), "{err}");
        let err = parse(&argv("-D /tmp --network-veth /bin/true"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--network-veth"),
            "an option before the command is never the command: {err}"
        );
    }

    #[test]
    fn refusals_are_one_line_naming_the_argument() {
        let refused = |argv: &[&str]| {
            let argv: Vec<String> = std::iter::once("nixspawn")
                .chain(argv.iter().copied())
                .map(String::from)
                .collect();
            match try_parse(&argv) {
                Err(ArgvError::Refused(line)) => line,
                other => panic!("{argv:?} gave {other:?}"),
            }
        };
        for (argv, needle) in [
            (&["--nosuch"][..], "unknown option \"--nosuch\""),
            (&["--x\n\x1b[2Jfake"], "unknown option \"--x"),
            (&["--machine"], "--machine needs a value"),
            (&["-D"], "--directory needs a value"),
            (&["--network-veth"], "--network-veth is not implemented"),
            (&["--bootx"], "did you mean"),
        ] {
            let line = refused(argv);
            assert!(line.contains(needle), "{argv:?}: {line}");
            assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
        }
        assert!(matches!(
            try_parse(&argv("--help")),
            Err(ArgvError::Info(_))
        ));
    }

    #[test]
    fn accepted_argv_round_trips() {
        for line in [
            "-D /tmp -M m -b -x -q -U --bind=/a:/b --bind=/c -E A=b --system-call-filter=~@mount /sbin/init --log-level=debug",
            "--directory=/ --console=pipe --private-network -- -x",
            "--machine=-weird --setenv=X= --capability=all --private-users=pick /bin/sh -c --",
        ] {
            let a = parse(&argv(line)).unwrap();
            let again = try_parse(&a.to_argv()).unwrap();
            assert_eq!(again, a, "{line} -> {:?}", a.to_argv());
        }
    }

    #[test]
    fn spec_defaults() {
        let (spec, _) = to_spec(parse(&argv("-D / -M root-test -b")).unwrap()).unwrap();
        assert_eq!(spec.kill_signal, Some(signals::rtmin() + 3));
        assert_eq!(spec.hostname, "root-test");
        let (spec, _) = to_spec(parse(&argv("-D / -M t /bin/true")).unwrap()).unwrap();
        assert_eq!(spec.kill_signal, None);
        assert!(to_spec(parse(&argv("-D / -M t --register=yes")).unwrap()).is_err());
        let (spec, _) = to_spec(parse(&argv("-D / -M t -U")).unwrap()).unwrap();
        assert_eq!(spec.private_users, userns::Mode::Pick);
        assert_eq!(
            spec.ownership,
            userns::Ownership::Auto,
            "-U implies ownership auto"
        );
        let (spec, _) = to_spec(parse(&argv("-D / -M t --private-users=131072")).unwrap()).unwrap();
        assert_eq!(spec.ownership, userns::Ownership::Off);
        assert!(to_spec(parse(&argv("-D / -M t --private-users=131073")).unwrap()).is_err());
        assert!(
            to_spec(parse(&argv("-D / -M t --private-users-ownership=sideways")).unwrap()).is_err()
        );
        assert!(to_spec(parse(&argv("-D / -M t --console=bogus")).unwrap()).is_err());
        assert!(to_spec(parse(&argv("-D / -M bad/name")).unwrap()).is_err());
    }
}
