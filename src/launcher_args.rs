//! `nixspawn`'s command line: systemd-nspawn's spelling and meaning for
//! every option implemented, each value typed as the runtime spec wants it
//! (and refused in one line naming the option and value); every other
//! nspawn option is refused by name. Also where a `.nspawn` file's
//! settings meet the command line (`Args::merge`). Turning the result into
//! a runtime `Spec` is `launcher_spec`'s.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, ValueHint};
use nixspawn_runtime::spec::journal::LinkJournal;
use nixspawn_runtime::spec::{signals, userns};
use nixspawn_runtime::{Register, Uuid};

use crate::nspawn_settings::{self, Group, Setting};
use crate::process_opts;
use crate::values::{self, Console};

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
    #[arg(short = 'D', long = "directory", value_name = "PATH", value_hint = ValueHint::DirPath)]
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
    #[arg(long, value_name = "UUID", value_parser = values::uuid)]
    pub uuid: Option<Uuid>,

    /// Host name inside the container (default: the machine name)
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Set an environment variable for PID 1 (NAME alone: its value here, as nspawn)
    #[arg(short = 'E', long = "setenv", value_name = "NAME[=VALUE]", value_parser = values::setenv)]
    pub setenv: Vec<String>,

    /// How the console is set up (default: interactive on a terminal, else read-only)
    #[arg(long, value_name = "MODE", value_parser = values::CONSOLE)]
    pub console: Option<Console>,

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
    #[arg(long, value_name = "SIGNAL", value_parser = values::signal)]
    pub kill_signal: Option<i32>,

    /// Report readiness only when the guest sends READY=1
    #[arg(long, value_name = "BOOL", value_parser = values::YES_NO)]
    pub notify_ready: Option<bool>,

    /// Run in the calling service's cgroup instead of a scope of our own
    #[arg(long)]
    pub keep_unit: bool,

    /// Register with systemd-machined (default: auto, where it is reachable)
    #[arg(long, value_name = "MODE", value_parser = values::REGISTER)]
    pub register: Option<Register>,

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

    /// User namespacing: no, yes, pick, identity or SHIFT[:RANGE] (alone: yes)
    #[arg(long, value_name = "MODE", value_parser = values::private_users,
          num_args = 0..=1, require_equals = true, default_missing_value = "yes")]
    pub private_users: Option<userns::Mode>,

    /// Same as --private-users=pick --private-users-ownership=auto
    #[arg(short = 'U')]
    pub pick_users: bool,

    /// How the tree's ownership meets the user namespace
    #[arg(long, value_name = "MODE", value_parser = values::OWNERSHIP)]
    pub private_users_ownership: Option<userns::Ownership>,

    /// Share the guest's persistent journal (/var/log/journal/MACHINE-ID) with the host, for journalctl -M (default: auto)
    #[arg(long, value_name = "MODE", value_parser = values::LINK_JOURNAL)]
    pub link_journal: Option<LinkJournal>,

    /// Whether to read .nspawn settings files, and how far to trust one beside the tree
    #[arg(long, value_name = "MODE", value_parser = nspawn_settings::MODE)]
    pub settings: Option<nspawn_settings::Mode>,

    /// Keep these capabilities too (CAP_NAME[,CAP_NAME...] or "all")
    #[arg(long, value_name = "CAPS")]
    pub capability: Vec<String>,

    /// Take these capabilities away (CAP_NAME[,CAP_NAME...])
    #[arg(long = "drop-capability", value_name = "CAPS")]
    pub drop_capability: Vec<String>,

    /// Set no_new_privs for the payload (default no: setuid programs work)
    #[arg(long = "no-new-privileges", value_name = "BOOL", value_parser = values::YES_NO)]
    pub no_new_privileges: Option<bool>,

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
    #[arg(long, value_name = "STOREPATH", value_hint = ValueHint::DirPath)]
    pub toplevel: Option<PathBuf>,

    /// With --toplevel: take the closure from a closureInfo store-paths file
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub closure_file: Option<PathBuf>,

    /// With --toplevel: bind the whole host /nix/store instead of the closure
    #[arg(long)]
    pub shared_store: bool,

    /// With --toplevel: pass the host's nix-daemon socket and database in
    #[arg(long)]
    pub nix_daemon: bool,

    /// Leave the guest's /proc unmasked so it can run sandboxes of its own
    /// (Nix builds); needs -U with a range other than identity
    #[arg(long)]
    pub nested_sandbox: bool,

    /// Trace and time every setup step on stderr
    #[arg(long)]
    pub debug: bool,

    // ---- network options (issue 13): systemd-nspawn's, plus --network-address.
    // Their values are checked in launcher_spec, in systemd-nspawn's words.
    /// Create a veth pair: ve-NAME on the host, host0 in the container
    #[arg(short = 'n', long = "network-veth")]
    pub network_veth: bool,

    /// An extra veth pair: HOSTIF[:CONTAINERIF]
    #[arg(long = "network-veth-extra", value_name = "HOSTIF[:CONTAINERIF]")]
    pub network_veth_extra: Vec<String>,

    /// A veth whose host side (vb-NAME) is a port of this existing bridge
    #[arg(long = "network-bridge", value_name = "BRIDGE")]
    pub network_bridge: Option<String>,

    /// A veth whose host side is a port of the bridge vz-ZONE (made as needed)
    #[arg(long = "network-zone", value_name = "ZONE")]
    pub network_zone: Option<String>,

    /// Move host interfaces into the container: IF[:NEWNAME] (space-separated list)
    #[arg(long = "network-interface", value_name = "IF[:NEW]")]
    pub network_interface: Vec<String>,

    /// A macvlan on a host interface in the container: IF[:NEWNAME]
    #[arg(long = "network-macvlan", value_name = "IF[:NEW]")]
    pub network_macvlan: Vec<String>,

    /// An ipvlan on a host interface in the container: IF[:NEWNAME]
    #[arg(long = "network-ipvlan", value_name = "IF[:NEW]")]
    pub network_ipvlan: Vec<String>,

    /// Run in this existing network namespace (a /proc/PID/ns/net or /run/netns/NAME)
    #[arg(long = "network-namespace-path", value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub network_namespace_path: Option<PathBuf>,

    /// Forward a host port to the container: [tcp:|udp:]HOSTPORT[:CONTAINERPORT]
    #[arg(short = 'p', long = "port", value_name = "[PROTO:]HOST[:CONTAINER]")]
    pub port: Vec<String>,

    /// nixspawn: address both ends of host0's link: HOST[/PREFIX],GUEST[/PREFIX]
    #[arg(long = "network-address", value_name = "HOST,GUEST")]
    pub network_address: Vec<String>,

    /// The container's /etc/resolv.conf: off, copy-host, replace-stub, bind-uplink, ..., auto
    #[arg(long = "resolv-conf", value_name = "MODE")]
    pub resolv_conf: Option<String>,

    /// The container's /etc/localtime: off, copy, bind, symlink, delete or auto
    #[arg(long = "timezone", value_name = "MODE")]
    pub timezone: Option<String>,
    // ---- end of network options ----
    // ---- process options (issue 16, group A): systemd-nspawn's; values
    // checked in process_opts, which turns them into the spec's Process.
    /// Run the payload as this user of the container (its passwd)
    #[arg(short = 'u', long = "user", alias = "uid", value_name = "USER")]
    pub user: Option<String>,

    /// A stub init is PID 1, the command runs as PID 2
    #[arg(short = 'a', long = "as-pid2")]
    pub as_pid2: bool,

    /// A resource limit for the payload: NAME=SOFT[:HARD] (or infinity)
    #[arg(long = "rlimit", value_name = "NAME=SOFT[:HARD]", value_parser = process_opts::rlimit)]
    pub rlimit: Vec<String>,

    /// The payload's OOM score adjustment (-1000...1000)
    #[arg(long = "oom-score-adjust", value_name = "N", allow_negative_numbers = true,
          value_parser = process_opts::oom_score_adjust)]
    pub oom_score_adjust: Option<i32>,

    /// The payload's CPU affinity: CPUs and ranges, e.g. 0,2-3
    #[arg(long = "cpu-affinity", value_name = "LIST", value_parser = process_opts::cpu_affinity)]
    pub cpu_affinity: Option<String>,

    /// The architecture uname(2) reports in the container: x86 or x86-64
    #[arg(long, value_name = "ARCH", value_parser = process_opts::personality)]
    pub personality: Option<nixspawn_runtime::spec::process::Personality>,

    /// Pass these capabilities in the inheritable and ambient sets
    #[arg(long = "ambient-capability", value_name = "CAPS", value_parser = process_opts::ambient_capability)]
    pub ambient_capability: Vec<String>,

    /// Address families socket(2) may use: AF_... list, ~list, or none
    #[arg(long = "restrict-address-families", value_name = "FAMILIES",
          value_parser = process_opts::address_families)]
    pub restrict_address_families: Option<String>,

    /// Make sync(2), fsync(2), ... no-ops and O_SYNC opens fail
    #[arg(long = "suppress-sync", value_name = "BOOL", value_parser = values::YES_NO)]
    pub suppress_sync: Option<bool>,

    /// Same as --link-journal=try-guest
    #[arg(short = 'j')]
    pub link_journal_try_guest: bool,

    /// Accepted, as nspawn's: nixspawn pipes nothing through a pager
    #[arg(long = "no-pager")]
    pub no_pager: bool,

    /// Accepted, as nspawn's: nixspawn never asks for a password (no polkit prompt)
    #[arg(long = "no-ask-password")]
    pub no_ask_password: bool,

    /// An SELinux context for the payload (refused: this host has no SELinux)
    #[arg(short = 'Z', long = "selinux-context", value_name = "CONTEXT")]
    pub selinux_context: Option<String>,

    /// An SELinux context for the API filesystems (refused: no SELinux)
    #[arg(short = 'L', long = "selinux-apifs-context", value_name = "CONTEXT")]
    pub selinux_apifs_context: Option<String>,
    /// Put the container's scope in this slice (default machine.slice)
    #[arg(short = 'S', long = "slice", value_name = "SLICE", value_parser = process_opts::slice)]
    pub slice: Option<String>,

    /// Set a property of the container's scope: NAME=VALUE (systemd hosts)
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = process_opts::property)]
    pub property: Vec<String>,
    // ---- end of process options ----
    // ---- image options (issue 16, group C) ----
    /// Disk image (raw file or block device: one filesystem or a GPT disk) as the root
    #[arg(short = 'i', long = "image", value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub image: Option<PathBuf>,

    /// Which partitions of the image may or must be used (systemd.image-policy(7))
    #[arg(long = "image-policy", value_name = "POLICY", value_parser = values::image_policy)]
    pub image_policy: Option<nixspawn_runtime::spec::image::ImagePolicy>,

    /// dm-verity root hash of the image (refused: needs device-mapper)
    #[arg(long = "root-hash", value_name = "HASH")]
    pub root_hash: Option<String>,

    /// dm-verity root hash signature (refused: needs device-mapper)
    #[arg(long = "root-hash-sig", value_name = "SIG")]
    pub root_hash_sig: Option<String>,

    /// dm-verity data file (refused: needs device-mapper)
    #[arg(long = "verity-data", value_name = "PATH")]
    pub verity_data: Option<PathBuf>,

    /// Delegate N more UID ranges to the guest (systemd 260; refused: needs systemd-nsresourced)
    #[arg(long = "private-users-delegate", value_name = "N")]
    pub private_users_delegate: Option<String>,

    /// Forward the guest's journal to the host (refused: needs systemd-journal-remote)
    #[arg(long = "forward-journal", value_name = "FILE|DIR")]
    pub forward_journal: Option<String>,

    /// OCI runtime bundle (config.json and its root filesystem) to run
    #[arg(long = "oci-bundle", value_name = "PATH", value_hint = ValueHint::DirPath)]
    pub oci_bundle: Option<PathBuf>,

    /// Boot an .mstack directory (systemd 260; refused: not implemented)
    #[arg(long = "mstack", value_name = "PATH")]
    pub mstack: Option<PathBuf>,
    // ---- end of image options ----
    // ---- filesystem options (issue 16): systemd-nspawn's, values checked
    // in launcher_spec (overlays, masks, pivot) or by their parsers.
    /// Mount the tree read-only (not the API filesystems nor --bind/--tmpfs)
    #[arg(long)]
    pub read_only: bool,

    /// Volatile root: no, yes (tmpfs root, /usr read-only), state (tmpfs /var) or overlay (alone: yes)
    #[arg(long, value_name = "MODE", value_parser = values::volatile,
          num_args = 0..=1, require_equals = true, default_missing_value = "yes")]
    pub volatile: Option<nixspawn_runtime::spec::filesystem::Volatile>,

    /// An overlay mount: [+]LOWER[:[+]LOWER...]:[+]UPPER:DEST (empty UPPER: a tmpfs)
    #[arg(long, value_name = "PATHS")]
    pub overlay: Vec<String>,

    /// A read-only overlay mount: [+]LOWER[:[+]LOWER...]:DEST
    #[arg(long = "overlay-ro", value_name = "PATHS")]
    pub overlay_ro: Vec<String>,

    /// Mask a path with an inaccessible node of its type
    #[arg(long, value_name = "PATH")]
    pub inaccessible: Vec<String>,

    /// Make this directory of the tree the root: NEW[:OLD], the old root kept at OLD
    #[arg(long = "pivot-root", value_name = "PATH[:PATH]")]
    pub pivot_root: Option<String>,

    /// Populate a missing -D from this template tree (a copy, or a btrfs snapshot)
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub template: Option<PathBuf>,

    /// Same as --private-users-ownership=chown (its obsolete spelling)
    #[arg(long = "private-users-chown")]
    pub private_users_chown: bool,
    // ---- end of filesystem options ----
    // ---- terminal options ----
    /// Tint the terminal's background with this ANSI SGR color while the console is relayed (empty: none)
    #[arg(long, value_name = "COLOR", value_parser = values::background)]
    pub background: Option<String>,
    // ---- end of terminal options ----
    // ---- bind-user options (issue 16): systemd-nspawn's ----
    /// Bind a host user's home into the container and map the user (needs -U)
    #[arg(long = "bind-user", value_name = "NAME")]
    pub bind_user: Vec<String>,

    /// The bound users' shell: yes (the host's), no, or a path
    #[arg(long = "bind-user-shell", value_name = "yes|no|PATH",
          value_parser = values::bind_user_shell)]
    pub bind_user_shell: Option<nixspawn_runtime::spec::bind_user::Shell>,
    // ---- end of bind-user options ----
    /// Command (or, with --boot, init arguments)
    #[arg(value_name = "COMMAND", value_hint = ValueHint::CommandWithArguments)]
    pub command: Vec<String>,
}

/// systemd-nspawn options nixspawn does not implement (yet), as 252 and
/// 262 spell them (obsolete spellings included). They are refused by name
/// rather than reported as unknown.
pub const UNIMPLEMENTED: &[&str] = &["--share-system"];

/// Options people reach for that systemd-nspawn does not have (in any
/// version up to 262), each with what it does have instead.
pub const NOT_IN_NSPAWN: &[(&str, &str)] = &[(
    "--kill-signal-delay",
    "systemd-nspawn has no --kill-signal-delay: --kill-signal= is sent on the first SIGTERM, and a second SIGTERM kills the container at once",
)];

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
        // (and one with an optional value as "--private-users[=<MODE>]")
        _ => a.split([' ', '[']).next().unwrap_or(a).to_owned(),
    });
    // clap reports a missing value as an empty invalid one.
    let value = text(ContextKind::InvalidValue).filter(|v| !v.is_empty());
    // Why the value is wrong: what our value parser said, or the choices.
    let reason = match (e.kind(), e.get(ContextKind::ValidValue)) {
        (ErrorKind::ValueValidation, _) => std::error::Error::source(e).map(|s| s.to_string()),
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => Some(format!(
            "expected {}",
            values::one_of(valid.iter().map(String::as_str))
        )),
        _ => None,
    };
    let line = match (e.kind(), name, value) {
        (ErrorKind::UnknownArgument, Some(a), _) => {
            let name = a.split('=').next().unwrap_or(&a);
            if let Some((_, why)) = NOT_IN_NSPAWN.iter().find(|(n, _)| *n == name) {
                (*why).to_owned()
            } else if UNIMPLEMENTED.contains(&name) {
                format!("the systemd-nspawn option {name} is not implemented by nixspawn yet")
            } else {
                let hint = text(ContextKind::SuggestedArg)
                    .map(|s| format!(" (did you mean {}?)", quoted(&s)))
                    .unwrap_or_default();
                format!("unknown option {}{hint}", quoted(&a))
            }
        }
        (ErrorKind::InvalidValue | ErrorKind::NoEquals, Some(a), None) => {
            format!("{a} needs a value")
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(a), v) => {
            let v = quoted(v.as_deref().unwrap_or_default());
            // The reason says what would do; no need to send to --help.
            return match reason {
                Some(why) => format!("invalid value {v} for {a}: {}", crate::terminal_safe(&why)),
                None => format!("invalid value {v} for {a}; see nixspawn --help"),
            };
        }
        (ErrorKind::InvalidUtf8, _, _) => "an argument is not valid UTF-8".to_owned(),
        (kind, Some(a), _) => format!("{a}: {kind}"),
        (kind, None, _) => kind.to_string(),
    };
    format!("{line}; see nixspawn --help")
}

/// Parse argv without printing or exiting (for tests and fuzzing).
pub fn try_parse(argv: &[String]) -> Result<Args, ArgvError> {
    use clap::{CommandFactory, FromArgMatches};
    let sorted = |e: clap::Error| match e.kind() {
        clap::error::ErrorKind::DisplayHelp
        | clap::error::ErrorKind::DisplayVersion
        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ArgvError::Info(e),
        _ => ArgvError::Refused(refusal(&e)),
    };
    let matches = Args::command().try_get_matches_from(argv).map_err(sorted)?;
    let mut args = Args::from_arg_matches(&matches).map_err(sorted)?;
    args.later_spelling_wins(&matches);
    Ok(args)
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

/// Set `slot` from a settings file unless the command line did (or the
/// file overrides it).
fn fill<T>(slot: &mut Option<T>, value: T, over: bool) {
    if over || slot.is_none() {
        *slot = Some(value);
    }
}

impl Args {
    /// `-j` and `--link-journal=`, `-U` and `--private-users=`,
    /// `--private-users-chown` and `--private-users-ownership=` each set
    /// one thing, and nspawn's getopt loop lets the later one win; clap
    /// keeps both, so forget the earlier.
    fn later_spelling_wins(&mut self, matches: &clap::ArgMatches) {
        let at = |id: &str| {
            (matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
                .then(|| matches.indices_of(id).and_then(|i| i.max()))
                .flatten()
        };
        // Some(true): the flag came last; Some(false): the option did.
        let flag_last = |option: &str, flag: &str| match (at(option), at(flag)) {
            (Some(o), Some(f)) => Some(f > o),
            _ => None,
        };
        match flag_last("link_journal", "link_journal_try_guest") {
            Some(true) => self.link_journal = None,
            Some(false) => self.link_journal_try_guest = false,
            None => {}
        }
        match flag_last("private_users", "pick_users") {
            Some(true) => self.private_users = None,
            Some(false) => self.pick_users = false,
            None => {}
        }
        match flag_last("private_users_ownership", "private_users_chown") {
            Some(true) => self.private_users_ownership = None,
            Some(false) => self.private_users_chown = false,
            None => {}
        }
    }

    /// The canonical argv for these arguments (`--long=VALUE` for every
    /// value, the command after `--`): parsing it gives them back.
    pub fn to_argv(&self) -> Vec<String> {
        let mut out = vec!["nixspawn".to_owned()];
        let mut opt = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push(format!("--{name}={v}"));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        let yes_no = |b: Option<bool>| b.map(|b| values::YES_NO.name(b).to_owned());
        opt("directory", path(&self.directory));
        opt("machine", self.machine.clone());
        opt("uuid", self.uuid.map(|u| u.to_string()));
        opt("hostname", self.hostname.clone());
        opt(
            "console",
            self.console.map(|c| values::CONSOLE.name(c).to_owned()),
        );
        opt("kill-signal", self.kill_signal.map(signals::name));
        opt("background", self.background.clone());
        opt("notify-ready", yes_no(self.notify_ready));
        opt(
            "register",
            self.register.map(|r| values::REGISTER.name(r).to_owned()),
        );
        opt("chdir", path(&self.chdir));
        opt(
            "private-users",
            self.private_users.map(values::private_users_name),
        );
        opt(
            "private-users-ownership",
            self.private_users_ownership
                .map(|o| values::OWNERSHIP.name(o).to_owned()),
        );
        opt(
            "link-journal",
            self.link_journal
                .map(|l| values::LINK_JOURNAL.name(l).to_owned()),
        );
        opt(
            "settings",
            self.settings
                .map(|m| nspawn_settings::MODE.name(m).to_owned()),
        );
        opt("no-new-privileges", yes_no(self.no_new_privileges));
        opt("toplevel", path(&self.toplevel));
        opt("closure-file", path(&self.closure_file));
        opt("network-bridge", self.network_bridge.clone());
        opt("network-zone", self.network_zone.clone());
        opt("network-namespace-path", path(&self.network_namespace_path));
        opt("resolv-conf", self.resolv_conf.clone());
        opt("timezone", self.timezone.clone());
        opt("user", self.user.clone());
        opt(
            "oom-score-adjust",
            self.oom_score_adjust.map(|n| n.to_string()),
        );
        opt("cpu-affinity", self.cpu_affinity.clone());
        opt("personality", self.personality.map(|p| p.name().to_owned()));
        opt(
            "restrict-address-families",
            self.restrict_address_families.clone(),
        );
        opt("suppress-sync", yes_no(self.suppress_sync));
        opt("slice", self.slice.clone());
        opt("selinux-context", self.selinux_context.clone());
        opt("selinux-apifs-context", self.selinux_apifs_context.clone());
        opt("image", path(&self.image));
        opt(
            "image-policy",
            self.image_policy.as_ref().map(|p| p.text().to_owned()),
        );
        opt("root-hash", self.root_hash.clone());
        opt("root-hash-sig", self.root_hash_sig.clone());
        opt("verity-data", path(&self.verity_data));
        opt(
            "private-users-delegate",
            self.private_users_delegate.clone(),
        );
        opt("forward-journal", self.forward_journal.clone());
        opt("mstack", path(&self.mstack));
        opt("oci-bundle", path(&self.oci_bundle));
        opt("volatile", self.volatile.map(|v| v.name().to_owned()));
        opt("pivot-root", self.pivot_root.clone());
        opt("template", path(&self.template));
        opt(
            "bind-user-shell",
            self.bind_user_shell
                .as_ref()
                .map(values::bind_user_shell_name),
        );
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
            ("network-veth-extra", &self.network_veth_extra),
            ("network-interface", &self.network_interface),
            ("network-macvlan", &self.network_macvlan),
            ("network-ipvlan", &self.network_ipvlan),
            ("port", &self.port),
            ("network-address", &self.network_address),
            ("rlimit", &self.rlimit),
            ("ambient-capability", &self.ambient_capability),
            ("property", &self.property),
            ("overlay", &self.overlay),
            ("overlay-ro", &self.overlay_ro),
            ("inaccessible", &self.inaccessible),
            ("bind-user", &self.bind_user),
        ] {
            for v in values {
                opt(name, Some(v.clone()));
            }
        }
        for (name, set) in [
            ("--boot", self.boot),
            ("--ephemeral", self.ephemeral),
            ("--pipe", self.pipe),
            ("--quiet", self.quiet),
            ("--private-network", self.private_network),
            ("--network-veth", self.network_veth),
            ("--keep-unit", self.keep_unit),
            ("-U", self.pick_users),
            ("--shared-store", self.shared_store),
            ("--nix-daemon", self.nix_daemon),
            ("--nested-sandbox", self.nested_sandbox),
            ("--debug", self.debug),
            ("--as-pid2", self.as_pid2),
            ("-j", self.link_journal_try_guest),
            ("--no-pager", self.no_pager),
            ("--no-ask-password", self.no_ask_password),
            ("--read-only", self.read_only),
            ("--private-users-chown", self.private_users_chown),
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

    /// Forget the command line's network options (not `--port`).
    fn clear_network(&mut self) {
        self.private_network = false;
        self.network_veth = false;
        self.network_bridge = None;
        self.network_zone = None;
        self.network_namespace_path = None;
        self.network_veth_extra.clear();
        self.network_interface.clear();
        self.network_macvlan.clear();
        self.network_ipvlan.clear();
    }

    /// Whether the command line set `group`, which then wins over a
    /// settings file (nspawn's settings mask).
    pub fn sets(&self, group: Group) -> bool {
        match group {
            Group::Ephemeral => self.ephemeral,
            Group::Capability => !self.capability.is_empty() || !self.drop_capability.is_empty(),
            Group::MachineId => self.uuid.is_some(),
            Group::CustomMounts => {
                !self.bind.is_empty()
                    || !self.bind_ro.is_empty()
                    || !self.tmpfs.is_empty()
                    || !self.overlay.is_empty()
                    || !self.overlay_ro.is_empty()
                    || !self.inaccessible.is_empty()
            }
            Group::Network => {
                self.private_network
                    || self.network_veth
                    || self.network_bridge.is_some()
                    || self.network_zone.is_some()
                    || self.network_namespace_path.is_some()
                    || !self.network_veth_extra.is_empty()
                    || !self.network_interface.is_empty()
                    || !self.network_macvlan.is_empty()
                    || !self.network_ipvlan.is_empty()
            }
            Group::Port => !self.port.is_empty(),
            Group::Userns => {
                self.private_users.is_some()
                    || self.pick_users
                    || self.private_users_ownership.is_some()
                    || self.private_users_chown
            }
            Group::SystemCallFilter => !self.system_call_filter.is_empty(),
            Group::LinkJournal => self.link_journal.is_some() || self.link_journal_try_guest,
            Group::AmbientCapability => !self.ambient_capability.is_empty(),
            Group::Limit(i) => self.rlimit.iter().any(|r| {
                nixspawn_runtime::spec::process::parse_rlimit(r).is_ok_and(|(n, _)| n == i)
            }),
            Group::OomScoreAdjust => self.oom_score_adjust.is_some(),
            Group::CpuAffinity => self.cpu_affinity.is_some(),
            Group::BindUser => !self.bind_user.is_empty(),
            Group::BindUserShell => self.bind_user_shell.is_some(),
        }
    }

    /// Merge a settings file's `settings` (already without what the
    /// command line set, see [`Args::sets`]): a value fills what the
    /// command line left open, a list replaces one the command line did
    /// not give; under `--settings=override` the file wins throughout.
    pub fn merge(&mut self, settings: &[Setting], mode: nspawn_settings::Mode) {
        let over = mode == nspawn_settings::Mode::Override;
        // Taking capabilities away is allowed to any file, but the command
        // line's capability options win as a whole.
        let caps_on_command_line = !self.capability.is_empty() || !self.drop_capability.is_empty();
        let mut binds = Vec::new();
        let mut binds_ro = Vec::new();
        let mut tmpfs = Vec::new();
        let mut overlays = Vec::new();
        let mut overlays_ro = Vec::new();
        let mut inaccessible = Vec::new();
        let mut bind_users = Vec::new();
        let mut env = Vec::new();
        let mut caps = Vec::new();
        let mut drop_caps = Vec::new();
        let mut filters = Vec::new();
        let mut ambient = Vec::new();
        let mut limits = Vec::new();
        let mut properties = Vec::new();
        // The first [Network] setting (or Port=) taken from the file
        // replaces what the command line said about it as a whole, as
        // nspawn's merge does (which matters under override).
        let mut network_taken = false;
        let mut ports_taken = false;
        for setting in settings {
            if setting.is_network() && !std::mem::replace(&mut network_taken, true) {
                self.clear_network();
            }
            if matches!(setting, Setting::Port(_)) && !std::mem::replace(&mut ports_taken, true) {
                self.port.clear();
            }
            match setting {
                Setting::Boot(b) => {
                    if over || !self.boot {
                        self.boot = *b;
                    }
                }
                Setting::Ephemeral(b) => self.ephemeral = *b,
                Setting::Parameters(words) => {
                    if over || self.command.is_empty() {
                        self.command = words.clone();
                    }
                }
                Setting::Environment(words) => env.extend(words.iter().cloned()),
                Setting::WorkingDirectory(d) => {
                    if over || self.chdir.is_none() {
                        self.chdir = Some(d.clone());
                    }
                }
                Setting::Capability(c) => caps.push(c.clone()),
                Setting::DropCapability(c) => {
                    if over || !caps_on_command_line {
                        drop_caps.push(c.clone());
                    }
                }
                Setting::NoNewPrivileges(b) => fill(&mut self.no_new_privileges, *b, over),
                Setting::KillSignal(s) => fill(&mut self.kill_signal, *s, over),
                Setting::MachineId(u) => self.uuid = Some(*u),
                Setting::PrivateUsers(m) => {
                    self.private_users = Some(*m);
                    self.pick_users = false;
                }
                Setting::PrivateUsersOwnership(o) => self.private_users_ownership = Some(*o),
                Setting::NotifyReady(b) => fill(&mut self.notify_ready, *b, over),
                Setting::SystemCallFilter(f) => filters.push(f.clone()),
                Setting::Hostname(h) => fill(&mut self.hostname, h.clone(), over),
                Setting::LinkJournal(l) => self.link_journal = Some(*l),
                Setting::Bind(words) => binds.extend(words.iter().cloned()),
                Setting::BindReadOnly(words) => binds_ro.extend(words.iter().cloned()),
                Setting::TemporaryFileSystem(words) => tmpfs.extend(words.iter().cloned()),
                Setting::Overlay(words) => overlays.extend(words.iter().cloned()),
                Setting::OverlayReadOnly(words) => overlays_ro.extend(words.iter().cloned()),
                Setting::Inaccessible(words) => inaccessible.extend(words.iter().cloned()),
                Setting::BindUser(words) => bind_users.extend(words.iter().cloned()),
                Setting::BindUserShell(v) => fill(&mut self.bind_user_shell, v.clone(), over),
                Setting::ReadOnly(b) => {
                    if over || !self.read_only {
                        self.read_only = *b;
                    }
                }
                Setting::Volatile(v) => fill(&mut self.volatile, *v, over),
                Setting::PivotRoot(p) => fill(&mut self.pivot_root, p.clone(), over),
                Setting::PrivateNetwork(b) => self.private_network = *b,
                Setting::VirtualEthernet(b) => self.network_veth = *b,
                Setting::VirtualEthernetExtra(v) => self.network_veth_extra.push(v.clone()),
                Setting::Interface(v) => self.network_interface.push(v.clone()),
                Setting::MacVlan(v) => self.network_macvlan.push(v.clone()),
                Setting::IpVlan(v) => self.network_ipvlan.push(v.clone()),
                Setting::Bridge(v) => self.network_bridge = Some(v.clone()),
                Setting::Zone(v) => self.network_zone = Some(v.clone()),
                Setting::NamespacePath(p) => self.network_namespace_path = Some(p.clone()),
                Setting::Port(v) => self.port.push(v.clone()),
                Setting::ResolvConf(v) => fill(&mut self.resolv_conf, v.clone(), over),
                Setting::Timezone(v) => fill(&mut self.timezone, v.clone(), over),
                Setting::User(u) => fill(&mut self.user, u.clone(), over),
                Setting::ProcessTwo(b) => {
                    if over || !(self.as_pid2 || self.boot) {
                        self.as_pid2 = *b;
                    }
                }
                Setting::Limit(v) => limits.push(v.clone()),
                Setting::OomScoreAdjust(n) => self.oom_score_adjust = Some(*n),
                Setting::CpuAffinity(v) => self.cpu_affinity = Some(v.clone()),
                Setting::Personality(p) => fill(&mut self.personality, *p, over),
                Setting::AmbientCapability(c) => ambient.push(c.clone()),
                Setting::RestrictAddressFamilies(v) => {
                    fill(&mut self.restrict_address_families, v.clone(), over)
                }
                Setting::SuppressSync(b) => fill(&mut self.suppress_sync, *b, over),
                Setting::Slice(v) => fill(&mut self.slice, v.clone(), over),
                Setting::Property(v) => properties.push(v.clone()),
            }
        }
        for (from_file, slot) in [
            (binds, &mut self.bind),
            (binds_ro, &mut self.bind_ro),
            (tmpfs, &mut self.tmpfs),
            (overlays, &mut self.overlay),
            (overlays_ro, &mut self.overlay_ro),
            (inaccessible, &mut self.inaccessible),
            (bind_users, &mut self.bind_user),
            (env, &mut self.setenv),
            (caps, &mut self.capability),
            (drop_caps, &mut self.drop_capability),
            (filters, &mut self.system_call_filter),
            (ambient, &mut self.ambient_capability),
            (properties, &mut self.property),
        ] {
            if !from_file.is_empty() && (over || slot.is_empty()) {
                *slot = from_file;
            }
        }
        // Each Limit*= reached here only if the command line did not set
        // that limit (or under override): later --rlimit uses win, so the
        // file's go after the command line's.
        self.rlimit.extend(limits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn argv(s: &str) -> Vec<String> {
        std::iter::once("nixspawn")
            .chain(s.split_whitespace())
            .map(String::from)
            .collect()
    }

    fn refused(args: &[&str]) -> String {
        let argv: Vec<String> = std::iter::once("nixspawn")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        match try_parse(&argv) {
            Err(ArgvError::Refused(line)) => line,
            other => panic!("{argv:?} gave {other:?}"),
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        // clap's own checks (conflicting names, value hints, ...), which it
        // otherwise runs only in debug builds when parsing.
        Args::command().debug_assert();
    }

    #[test]
    fn a_bare_private_users_means_yes_and_keeps_the_command_apart() {
        let a = parse(&argv("--private-users -D /tmp /bin/true")).unwrap();
        assert_eq!(a.private_users, Some(userns::Mode::FromTree));
        assert_eq!(a.command, ["/bin/true"]);
        let a = parse(&argv("-D /tmp --private-users=pick")).unwrap();
        assert_eq!(a.private_users, Some(userns::Mode::Pick));
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
            "-q -q --machine=a --machine=b --bind=/x --bind=/y -D /tmp --kill-signal=TERM --kill-signal=9 /bin/true",
        ))
        .unwrap();
        assert!(a.quiet);
        assert_eq!(a.machine.as_deref(), Some("b"), "the last value wins");
        assert_eq!(a.kill_signal, Some(9), "typed values too");
        assert_eq!(a.bind, ["/x", "/y"], "list options accumulate");
    }

    #[test]
    fn nspawn_spellings() {
        let a = parse(&argv("--directory=/tmp --machine=m1 -b --kill-signal=SIGRTMIN+3 --notify-ready=yes --keep-unit --bind-ro=/nix/store -E A=b"))
            .unwrap();
        assert!(a.boot && a.keep_unit);
        assert_eq!(a.machine.as_deref(), Some("m1"));
        assert_eq!(a.bind_ro, ["/nix/store"]);
        assert_eq!(a.kill_signal, Some(signals::rtmin() + 3));
        assert_eq!(a.notify_ready, Some(true));
    }

    #[test]
    fn typed_values_take_every_spelling_nspawn_takes() {
        let a = parse(&argv(
            "--console=read-only --register=off --notify-ready=1 --no-new-privileges=t \
             --private-users=identity --private-users-ownership=false --link-journal=try-host \
             --settings=trusted --uuid=01234567-89ab-cdef-0123-456789abcdef",
        ))
        .unwrap();
        assert_eq!(a.console, Some(Console::ReadOnly));
        assert_eq!(a.register, Some(Register::No));
        assert_eq!(a.notify_ready, Some(true));
        assert_eq!(a.no_new_privileges, Some(true));
        assert_eq!(a.private_users, Some(userns::Mode::Identity));
        assert_eq!(a.private_users_ownership, Some(userns::Ownership::Off));
        assert_eq!(a.link_journal, Some(LinkJournal::TryHost));
        assert_eq!(a.settings, Some(nspawn_settings::Mode::Trusted));
        assert_eq!(
            a.uuid,
            Some(Uuid::parse("0123456789abcdef0123456789abcdef").unwrap())
        );
        let a = parse(&argv(
            "--register=auto --settings=0 --private-users=131072:131072",
        ))
        .unwrap();
        assert_eq!(a.register, Some(Register::Auto));
        assert_eq!(a.settings, Some(nspawn_settings::Mode::No));
        assert_eq!(
            a.private_users,
            Some(userns::Mode::Fixed(userns::UidRange {
                shift: 131072,
                range: 131072
            }))
        );
    }

    #[test]
    fn unimplemented_options_are_named() {
        // The one left: an obsolete spelling nspawn still names.
        let err = parse(&argv("-D /tmp --share-system /bin/true"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--share-system") && err.contains("not implemented by nixspawn yet"),
            "an option before the command is never the command: {err}"
        );
    }

    #[test]
    fn background_takes_sgr_colors_and_kill_signal_delay_is_not_nspawns() {
        let a = parse(&argv("-D /tmp --background=48;5;17 /bin/true")).unwrap();
        assert_eq!(a.background.as_deref(), Some("48;5;17"));
        let a = parse(&argv("-D /tmp --background= /bin/true")).unwrap();
        assert_eq!(a.background.as_deref(), Some(""), "empty: no tint");
        let got = refused(&["--background=\x1b]0;pwned\x07"]);
        assert!(
            got.starts_with(
                "invalid value \"\\u{1b}]0;pwned\\u{7}\" for --background: expected an ANSI SGR"
            ),
            "{got}"
        );
        assert!(!got.contains('\n'), "{got}");
        for v in ["--kill-signal-delay=5", "--kill-signal-delay"] {
            let got = refused(&[v]);
            assert!(
                got.starts_with("systemd-nspawn has no --kill-signal-delay: ")
                    && !got.contains('\n'),
                "{got}"
            );
        }
    }

    #[test]
    fn our_own_options_are_not_listed_as_nspawns_unimplemented_ones() {
        let cmd = Args::command();
        for arg in cmd.get_arguments() {
            let long = arg.get_long().map(|l| format!("--{l}"));
            let short = arg.get_short().map(|s| format!("-{s}"));
            for name in long.iter().chain(short.iter()) {
                assert!(!UNIMPLEMENTED.contains(&name.as_str()), "{name}");
            }
        }
    }

    #[test]
    fn refusals_are_one_line_naming_the_argument() {
        for (argv, needle) in [
            (&["--nosuch"][..], "unknown option \"--nosuch\""),
            (&["--x\n\x1b[2Jfake"], "unknown option \"--x"),
            (&["--machine"], "--machine needs a value"),
            (&["-D"], "--directory needs a value"),
            (&["--console"], "--console needs a value"),
            (&["--bind-user-shell"], "--bind-user-shell needs a value"),
            (
                &["--bind-user-shell=sh"],
                "expected yes, no or an absolute path",
            ),
            (&["--port"], "--port needs a value"),
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
    fn bad_values_are_refused_naming_option_value_and_reason() {
        for (arg, line) in [
            (
                "--console=bogus",
                "invalid value \"bogus\" for --console: expected interactive, read-only, passive, pipe or autopipe",
            ),
            (
                "--kill-signal=SIGFOO",
                "invalid value \"SIGFOO\" for --kill-signal: unknown signal name (try SIGTERM, SIGRTMIN+3 or a number)",
            ),
            (
                "--notify-ready=maybe",
                "invalid value \"maybe\" for --notify-ready: expected yes or no",
            ),
            (
                "--no-new-privileges=maybe",
                "invalid value \"maybe\" for --no-new-privileges: expected yes or no",
            ),
            (
                "--register=sometimes",
                "invalid value \"sometimes\" for --register: expected yes, no or auto",
            ),
            (
                "--private-users=sideways",
                "invalid value \"sideways\" for --private-users: expected no, yes, pick, identity or SHIFT[:RANGE]",
            ),
            (
                "--private-users-ownership=sideways",
                "invalid value \"sideways\" for --private-users-ownership: expected off, chown, map or auto",
            ),
            (
                "--link-journal=sometimes",
                "invalid value \"sometimes\" for --link-journal: expected no, auto, host, guest, try-host or try-guest",
            ),
            (
                "--settings=sometimes",
                "invalid value \"sometimes\" for --settings: expected yes, no, override or trusted",
            ),
            (
                "--uuid=xyz",
                "invalid value \"xyz\" for --uuid: expected 32 hexadecimal digits, optionally as 8-4-4-4-12",
            ),
            (
                "--kill-signal=",
                "invalid value \"\" for --kill-signal: unknown signal name",
            ),
        ] {
            let got = refused(&[arg]);
            assert!(got.starts_with(line), "{arg}: {got}");
        }
        let got = refused(&["--private-users=131073"]);
        assert!(got.contains("multiples of 65536"), "{got}");
        let got = refused(&["--kill-signal=\x1b[2J"]);
        assert!(
            got.starts_with("invalid value \"\\u{1b}[2J\" for --kill-signal")
                && !got.contains(|c: char| c.is_control()),
            "{got:?}"
        );
    }

    #[test]
    fn j_and_link_journal_the_last_one_wins() {
        for (line, want) in [
            ("-j --link-journal=host", LinkJournal::Host),
            ("--link-journal=host -j", LinkJournal::TryGuest),
            ("-j --link-journal=no -j", LinkJournal::TryGuest),
            (
                "--link-journal=no -j --link-journal=guest",
                LinkJournal::Guest,
            ),
            ("-j", LinkJournal::TryGuest),
            ("--link-journal=try-host", LinkJournal::TryHost),
        ] {
            let a = parse(&argv(line)).unwrap();
            let got = match (a.link_journal, a.link_journal_try_guest) {
                (Some(l), false) => l,
                (None, true) => LinkJournal::TryGuest,
                other => panic!("{line}: both kept: {other:?}"),
            };
            assert_eq!(got, want, "{line}");
            assert!(a.sets(Group::LinkJournal), "{line}");
        }
    }

    #[test]
    fn u_and_private_users_and_the_chown_spellings_the_last_one_wins() {
        use userns::{Mode, Ownership};
        let users = |line: &str| {
            let a = parse(&argv(line)).unwrap();
            assert!(a.sets(Group::Userns), "{line}");
            match (a.private_users, a.pick_users) {
                (Some(m), false) => m,
                (None, true) => Mode::Pick,
                other => panic!("{line}: both kept: {other:?}"),
            }
        };
        assert_eq!(users("-U --private-users=no"), Mode::No);
        assert_eq!(users("--private-users=no -U"), Mode::Pick);
        let owner = |line: &str| {
            let a = parse(&argv(line)).unwrap();
            match (a.private_users_ownership, a.private_users_chown) {
                (Some(o), false) => o,
                (None, true) => Ownership::Chown,
                other => panic!("{line}: both kept: {other:?}"),
            }
        };
        assert_eq!(
            owner("--private-users-chown --private-users-ownership=map"),
            Ownership::Map
        );
        assert_eq!(
            owner("--private-users-ownership=map --private-users-chown"),
            Ownership::Chown
        );
    }

    #[test]
    fn process_options_parse_with_nspawns_spellings_and_refuse_bad_values() {
        let a = parse(&argv(
            "--uid=tester --as-pid2 --oom-score-adjust -500 --slice=web -j --suppress-sync=1",
        ))
        .unwrap();
        assert_eq!(a.user.as_deref(), Some("tester"));
        assert!(a.as_pid2 && a.link_journal_try_guest);
        assert_eq!(a.oom_score_adjust, Some(-500));
        assert_eq!(
            a.slice.as_deref(),
            Some("web.slice"),
            "mangled as nspawn does"
        );
        assert_eq!(a.suppress_sync, Some(true));
        assert!(a.sets(Group::LinkJournal) && a.sets(Group::OomScoreAdjust));
        assert!(
            parse(&argv("--rlimit=NOFILE=5"))
                .unwrap()
                .sets(Group::Limit(7))
        );
        assert!(
            !parse(&argv("--rlimit=NOFILE=5"))
                .unwrap()
                .sets(Group::Limit(6))
        );
        for (arg, line) in [
            (
                "--rlimit=RLIMIT_BOGUS=1",
                "invalid value \"RLIMIT_BOGUS=1\" for --rlimit: unknown resource limit",
            ),
            (
                "--oom-score-adjust=1001",
                "invalid value \"1001\" for --oom-score-adjust: expected an integer in -1000...1000",
            ),
            (
                "--cpu-affinity=2-1",
                "invalid value \"2-1\" for --cpu-affinity: the range",
            ),
            (
                "--personality=arm64",
                "invalid value \"arm64\" for --personality: expected x86 or x86-64",
            ),
            (
                "--ambient-capability=all",
                "invalid value \"all\" for --ambient-capability",
            ),
            (
                "--restrict-address-families=AF_NOPE",
                "invalid value \"AF_NOPE\" for --restrict-address-families: unknown address family",
            ),
            ("--slice=a/b", "invalid value \"a/b\" for --slice"),
            (
                "--property=Bogus=1",
                "invalid value \"Bogus=1\" for --property: Bogus is not a property",
            ),
        ] {
            let got = refused(&[arg]);
            assert!(got.starts_with(line), "{arg}: {got}");
        }
    }

    #[test]
    fn accepted_argv_round_trips() {
        for line in [
            "-D /tmp -M m -b -x -q -U --bind=/a:/b --bind=/c -E A=b --system-call-filter=~@mount /sbin/init --log-level=debug",
            "--directory=/ --console=pipe --private-network -- -x",
            "--machine=-weird --setenv=X= --capability=all --private-users=pick /bin/sh -c --",
            "--kill-signal=15 --notify-ready=on --register=auto --uuid=0123456789ABCDEF0123456789ABCDEF",
            "--private-users=131072:65536 --private-users-ownership=no --link-journal=guest --settings=override --no-new-privileges=0",
            "--console=autopipe --kill-signal=SIGRTMIN+4 --register=1 --settings=trusted",
            "-D / -n -p 80 -p udp:53:5353 --network-zone=z --network-veth-extra=a:b --network-interface=eth1 --network-macvlan=eth2:mv0 --network-address=10.0.0.1,10.0.0.2 --resolv-conf=copy-host --timezone=off",
            "-D / --network-bridge=br0 --network-ipvlan=eth0 --network-namespace-path=/run/netns/x",
            "-D / -u tester -a --rlimit=RLIMIT_NOFILE=1:2 --rlimit=CORE=infinity --oom-score-adjust=-5 --cpu-affinity=0,2-3 --personality=x86 --ambient-capability=CAP_CHOWN --restrict-address-families=~AF_INET6 --suppress-sync=yes -j --no-pager --no-ask-password -S web --property=MemoryMax=1G",
        ] {
            let a = parse(&argv(line)).unwrap();
            let again = try_parse(&a.to_argv()).unwrap();
            assert_eq!(again, a, "{line} -> {:?}", a.to_argv());
        }
    }

    fn merged(cli: &str, settings: &[Setting], mode: nspawn_settings::Mode) -> Args {
        let mut a = parse(&argv(cli)).unwrap();
        a.merge(settings, mode);
        a
    }

    fn file() -> Vec<Setting> {
        vec![
            Setting::Boot(true),
            Setting::Environment(vec!["A=1".into(), "B=two words".into()]),
            Setting::KillSignal(signals::rtmin() + 3),
            Setting::Capability("CAP_SYS_TIME".into()),
            Setting::SystemCallFilter("@keyring bpf".into()),
            Setting::BindReadOnly(vec!["/nix/store".into(), "/etc/hosts:/etc/hosts".into()]),
            Setting::PrivateNetwork(true),
        ]
    }

    #[test]
    fn settings_fill_what_the_command_line_left_open() {
        use nspawn_settings::Mode;
        let a = merged(
            "-D /tmp --kill-signal=SIGTERM --bind-ro=/opt",
            &file(),
            Mode::Yes,
        );
        assert!(a.boot && a.private_network);
        assert_eq!(a.setenv, ["A=1", "B=two words"]);
        assert_eq!(a.kill_signal, Some(libc::SIGTERM), "the command line wins");
        assert_eq!(
            a.bind_ro,
            ["/opt"],
            "a list given on the command line wins whole"
        );
        assert_eq!(a.capability, ["CAP_SYS_TIME"]);
        assert_eq!(a.system_call_filter, ["@keyring bpf"]);

        let a = merged(
            "-D /tmp --kill-signal=SIGTERM --bind-ro=/opt",
            &file(),
            Mode::Override,
        );
        assert_eq!(
            a.kill_signal,
            Some(signals::rtmin() + 3),
            "override: the file wins"
        );
        assert_eq!(a.bind_ro, ["/nix/store", "/etc/hosts:/etc/hosts"]);
    }

    #[test]
    fn settings_merge_value_by_value_as_before() {
        use nspawn_settings::Mode;
        // The first of a file's values fills an open slot; the command
        // line's own value is never replaced without override.
        let settings = [
            Setting::Hostname("one".into()),
            Setting::Hostname("two".into()),
            Setting::NotifyReady(true),
            Setting::NoNewPrivileges(true),
            Setting::WorkingDirectory("/srv".into()),
            Setting::Parameters(vec!["-c".into(), "true".into()]),
        ];
        let a = merged("--notify-ready=no /bin/sh", &settings, Mode::Yes);
        assert_eq!(a.hostname.as_deref(), Some("one"));
        assert_eq!(a.notify_ready, Some(false));
        assert_eq!(a.no_new_privileges, Some(true));
        assert_eq!(a.chdir, Some(PathBuf::from("/srv")));
        assert_eq!(
            a.command,
            ["/bin/sh"],
            "a command given wins over Parameters="
        );
        let a = merged("--notify-ready=no /bin/sh", &settings, Mode::Override);
        assert_eq!(a.hostname.as_deref(), Some("two"), "override: the last one");
        assert_eq!(a.notify_ready, Some(true));
        assert_eq!(a.command, ["-c", "true"]);
        let a = merged("", &settings, Mode::Yes);
        assert_eq!(
            a.command,
            ["-c", "true"],
            "Parameters= fills an empty command"
        );

        // PrivateUsers= replaces -U; the ownership follows the file's last word.
        let a = merged(
            "-U",
            &[
                Setting::PrivateUsers(userns::Mode::Identity),
                Setting::PrivateUsersOwnership(userns::Ownership::Chown),
                Setting::PrivateUsersOwnership(userns::Ownership::Off),
            ],
            Mode::Yes,
        );
        assert!(!a.pick_users);
        assert_eq!(a.private_users, Some(userns::Mode::Identity));
        assert_eq!(a.private_users_ownership, Some(userns::Ownership::Off));

        // Boot=no does not undo -b; Boot=yes sets it.
        assert!(merged("-b", &[Setting::Boot(false)], Mode::Yes).boot);
        assert!(!merged("-b", &[Setting::Boot(false)], Mode::Override).boot);
        assert!(merged("", &[Setting::Boot(true)], Mode::Yes).boot);
    }

    #[test]
    fn a_files_network_section_replaces_the_command_lines_as_a_whole() {
        use nspawn_settings::Mode;
        let file = [
            Setting::ResolvConf("copy-host".into()),
            Setting::Timezone("off".into()),
            Setting::Zone("web".into()),
            Setting::Port("tcp:8080:80".into()),
            Setting::Port("53".into()),
            Setting::VirtualEthernetExtra("x0:y0".into()),
            Setting::MacVlan("eth1".into()),
        ];
        let a = merged("-D /tmp", &file, Mode::Yes);
        assert_eq!(a.network_zone.as_deref(), Some("web"));
        assert_eq!(a.port, ["tcp:8080:80", "53"]);
        assert_eq!(a.network_veth_extra, ["x0:y0"]);
        assert_eq!(a.network_macvlan, ["eth1"]);
        assert_eq!(a.resolv_conf.as_deref(), Some("copy-host"));
        assert_eq!(a.timezone.as_deref(), Some("off"));
        // What the command line set is masked before the merge (see
        // `sets`): a network option masks the section, -p masks Port=.
        let cli = parse(&argv("-D /tmp -n -p 1:2 --timezone=copy")).unwrap();
        assert!(cli.sets(Group::Network) && cli.sets(Group::Port));
        assert!(!parse(&argv("-D /tmp")).unwrap().sets(Group::Network));
        assert!(
            parse(&argv("-D /tmp --network-namespace-path=/x"))
                .unwrap()
                .sets(Group::Network)
        );
        let a = merged("-D /tmp --timezone=copy", &file, Mode::Yes);
        assert_eq!(
            a.timezone.as_deref(),
            Some("copy"),
            "not privileged: filled"
        );
        // Under override the file's section replaces the command line's:
        // -n goes, its zone comes; its ports replace -p's.
        let a = merged(
            "-D /tmp -n -p 1:2 --network-interface=eth9",
            &file,
            Mode::Override,
        );
        assert!(!a.network_veth && a.network_interface.is_empty());
        assert_eq!(a.network_zone.as_deref(), Some("web"));
        assert_eq!(a.port, ["tcp:8080:80", "53"]);
    }

    #[test]
    fn dropped_capabilities_yield_to_any_capability_option() {
        use nspawn_settings::Mode;
        let drop = [Setting::DropCapability("CAP_SYS_PTRACE".into())];
        assert_eq!(
            merged("", &drop, Mode::Yes).drop_capability,
            ["CAP_SYS_PTRACE"]
        );
        let a = merged("--capability=CAP_SYS_TIME", &drop, Mode::Yes);
        assert!(a.drop_capability.is_empty(), "{:?}", a.drop_capability);
        let a = merged("--capability=CAP_SYS_TIME", &drop, Mode::Override);
        assert_eq!(a.drop_capability, ["CAP_SYS_PTRACE"]);
        assert_eq!(a.capability, ["CAP_SYS_TIME"], "the file named none to add");
    }

    #[test]
    fn the_settings_mask_follows_the_command_line() {
        let a = parse(&argv("")).unwrap();
        for g in [
            Group::Ephemeral,
            Group::Capability,
            Group::MachineId,
            Group::CustomMounts,
            Group::Network,
            Group::Userns,
            Group::SystemCallFilter,
            Group::LinkJournal,
            Group::Port,
            Group::Limit(0),
        ] {
            assert!(!a.sets(g), "{g:?}");
        }
        for (line, g) in [
            ("-x", Group::Ephemeral),
            ("--drop-capability=CAP_CHOWN", Group::Capability),
            ("--uuid=0123456789abcdef0123456789abcdef", Group::MachineId),
            ("--tmpfs=/x", Group::CustomMounts),
            ("--private-network", Group::Network),
            ("-U", Group::Userns),
            ("--private-users-ownership=map", Group::Userns),
            ("--system-call-filter=bpf", Group::SystemCallFilter),
            ("--link-journal=no", Group::LinkJournal),
        ] {
            assert!(parse(&argv(line)).unwrap().sets(g), "{line}");
        }
    }
}
