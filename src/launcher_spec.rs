//! From `nixspawn`'s arguments to the runtime's `Spec`, with deciding kept
//! apart from asking the system:
//! 1. [`Place::find`] (reads the filesystem): where the root is, what the
//!    machine is called, and the settings file that applies to it;
//! 2. [`Plan::new`] (pure): the settings merged in, every value checked,
//!    every default decided;
//! 3. [`Facts::probe`] (asks the system): machined's reachability, the
//!    closure from the Nix database, credential files, the tree's
//!    machine-id, whether stdio is a terminal, `TERM` and `SYSTEMD_SECCOMP`;
//! 4. [`Plan::into_spec`] (pure): plan and facts into the `Spec`.
//!
//! So a bad value is refused before anything is probed, and steps 2 and 4
//! are tested without root or a system to ask.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nixspawn_runtime::host::machined::{self, Reach};
use nixspawn_runtime::nixos::closure::{self, ClosureSource};
use nixspawn_runtime::security::seccomp;
use nixspawn_runtime::spec::credentials::{self, Credential};
use nixspawn_runtime::spec::filesystem::{Filesystem, PivotRoot};
use nixspawn_runtime::spec::filter::Adjustments;
use nixspawn_runtime::spec::image::{ImagePolicy, ImageSpec};
use nixspawn_runtime::spec::journal::LinkJournal;
use nixspawn_runtime::spec::mounts::{BindAccess, CustomMount, OverlayPath};
use nixspawn_runtime::spec::network::Network;
use nixspawn_runtime::spec::{capabilities, environment, signals, userns};
use nixspawn_runtime::{ConsoleMode, MachineName, Payload, Register, Spec, StoreSpec, Uuid};

use crate::launcher_args::Args;
use crate::nspawn_settings::{self, Entry, Trust};
use crate::values::{self, Console};

/// Where machines live when only `-M` names one, as for systemd-nspawn.
const MACHINES: &str = "/var/lib/machines";

/// The argv through every step: the `Spec` to run, and what the launcher
/// itself does besides.
pub fn to_spec(args: Args) -> Result<(Spec, Options)> {
    let place = Place::find(&args)?;
    let plan = Plan::new(args, place)?;
    let facts = Facts::probe(&plan)?;
    plan.into_spec(facts)
}

/// What the launcher does besides running the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub quiet: bool,
    pub debug: bool,
    /// One informational line about machined registration, for `--register=auto`.
    pub register_notice: Option<String>,
    /// nspawn's warnings for settings an untrusted file was not allowed to make.
    pub warnings: Vec<String>,
}

/// A settings file found for the machine, read and split into entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsFile {
    pub path: PathBuf,
    pub trust: Trust,
    pub entries: Vec<Entry>,
}

/// Step 1: the facts about the filesystem that the plan is built on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The tree (canonical), or None for a toplevel's empty tmpfs root.
    pub directory: Option<PathBuf>,
    /// `--toplevel`, resolved to its store path.
    pub toplevel: Option<PathBuf>,
    pub machine: MachineName,
    pub settings: Option<SettingsFile>,
    /// `--image=` (canonical); then there is no directory.
    pub image: Option<PathBuf>,
    /// `--oci-bundle=`, read; its root is the directory.
    pub oci: Option<crate::oci_bundle::Bundle>,
}

impl Place {
    pub fn find(args: &Args) -> Result<Place> {
        check_store_options(args)?;
        refuse_unavailable(args)?;
        let toplevel = args
            .toplevel
            .as_deref()
            .map(closure::resolve_toplevel)
            .transpose()?;
        let image = image_path(args)?;
        // As nspawn: the machine name and the settings file beside the
        // image come from the path as given (made absolute), not from
        // where its symlinks lead.
        let image_as_given = args
            .image
            .as_deref()
            .filter(|_| image.is_some())
            .map(std::path::absolute)
            .transpose()
            .context("--image: cannot make the path absolute")?;
        let oci = oci_bundle(args)?;
        let directory = match (&args.directory, &args.machine, &toplevel) {
            (None, _, _) if oci.is_some() => oci.as_ref().map(|b| b.root.clone()),
            (Some(d), _, _) => Some(d.clone()),
            (None, _, _) if image.is_some() => None,
            // A toplevel without -D boots on an empty tmpfs root.
            (None, _, Some(_)) => None,
            (None, Some(m), None) => Some(Path::new(MACHINES).join(m)),
            (None, None, None) => Some(
                std::env::current_dir()
                    .context("no -D given and the current directory is unusable")?,
            ),
        };
        if let (Some(template), Some(d)) = (&args.template, &directory) {
            crate::template::populate(template, d, args.ephemeral)?;
        }
        let directory = directory
            .map(|d| {
                std::fs::canonicalize(&d)
                    .with_context(|| format!("directory {}: cannot be resolved", d.display()))
            })
            .transpose()?;
        let mut machine = match (&image_as_given, &args.machine) {
            (Some(given), None) => image_machine_name(given)?,
            _ => machine_name(
                args.machine.as_deref(),
                directory.as_deref(),
                toplevel.as_deref(),
            )?,
        };
        // As nspawn, the settings file is the one named before the suffix
        // below (a fixed file name must match an ephemeral run too).
        let settings_name = machine.to_string();
        // As nspawn: an ephemeral run named after its tree gets a random
        // suffix, so that many can run from one tree at once.
        if args.ephemeral && args.machine.is_none() {
            machine = ephemeral_name(&machine, random_u64()?)?;
        }
        let mode = args.settings.unwrap_or_default();
        // As nspawn: the untrusted file sits beside the image when there
        // is one (`/x/foo.raw` → `/x/foo.nspawn`), else beside the tree.
        let beside = image_as_given.as_deref().or(directory.as_deref());
        let settings = nspawn_settings::find(&settings_name, beside, mode)
            .map(|(path, trust)| -> Result<SettingsFile> {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let entries = nspawn_settings::parse(&text, &path)?;
                Ok(SettingsFile {
                    path,
                    trust,
                    entries,
                })
            })
            .transpose()?;
        Ok(Place {
            directory,
            toplevel,
            machine,
            settings,
            image,
            oci,
        })
    }
}

/// `--oci-bundle=`, checked against what excludes it, read.
fn oci_bundle(args: &Args) -> Result<Option<crate::oci_bundle::Bundle>> {
    let Some(bundle) = &args.oci_bundle else {
        return Ok(None);
    };
    for (given, flag) in [
        (args.directory.is_some(), "--directory"),
        (args.image.is_some(), "--image"),
        (args.toplevel.is_some(), "--toplevel"),
    ] {
        if given {
            bail!("{flag} and --oci-bundle exclude each other: the bundle names its root");
        }
    }
    crate::oci_bundle::read(bundle).map(Some)
}

/// `--image=`, checked against what excludes it, canonical.
fn image_path(args: &Args) -> Result<Option<PathBuf>> {
    let Some(image) = &args.image else {
        return Ok(None);
    };
    if args.directory.is_some() {
        bail!("--directory and --image exclude each other: the root is one or the other");
    }
    if args.toplevel.is_some() {
        bail!("--toplevel and --image exclude each other: the root is the store or the image");
    }
    std::fs::canonicalize(image)
        .map(Some)
        .with_context(|| format!("image {}: cannot be resolved", image.display()))
}

/// As nspawn: an image is named after its file, without `.raw`.
fn image_machine_name(image: &Path) -> Result<MachineName> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("cannot name a container after {}", image.display()))?;
    Ok(MachineName::from_directory_name(
        name.strip_suffix(".raw").unwrap_or(name),
    )?)
}

/// The options of newer nspawns that need what this host lacks: one line
/// each saying what is missing (looked for, not assumed).
fn refuse_unavailable(args: &Args) -> Result<()> {
    for (given, name) in [
        (args.root_hash.is_some(), "--root-hash"),
        (args.root_hash_sig.is_some(), "--root-hash-sig"),
        (args.verity_data.is_some(), "--verity-data"),
    ] {
        if !given {
            continue;
        }
        if nixspawn_runtime::image::device_mapper_available() {
            bail!("{name}: dm-verity images are not implemented by nixspawn yet");
        }
        bail!(
            "{name} needs dm-verity, and this kernel has no device-mapper (no /dev/mapper/control, none in /proc/misc; modules cannot be loaded here)"
        );
    }
    if args.private_users_delegate.is_some() {
        let socket = Path::new("/run/systemd/io.systemd.NamespaceResource");
        if socket.exists() {
            bail!(
                "--private-users-delegate: delegation through systemd-nsresourced is not implemented by nixspawn yet"
            );
        }
        bail!(
            "--private-users-delegate needs systemd-nsresourced (systemd 260) to allocate the delegated UID ranges, and this host has none ({} is missing)",
            socket.display()
        );
    }
    if args.forward_journal.is_some() {
        let remote = [
            "/usr/lib/systemd/systemd-journal-remote",
            "/lib/systemd/systemd-journal-remote",
        ];
        if remote.iter().any(|p| Path::new(p).exists()) {
            bail!(
                "--forward-journal: forwarding through systemd-journal-remote is not implemented by nixspawn yet"
            );
        }
        bail!(
            "--forward-journal needs systemd-journal-remote on the host (not installed: no {}) and a guest journald of systemd 256 or later",
            remote[0]
        );
    }
    if args.mstack.is_some() {
        bail!(
            "--mstack (systemd 260's .mstack layer directories) is not implemented by nixspawn yet; use --directory or --image"
        );
    }
    if args.image.is_none() && args.image_policy.is_some() {
        bail!("--image-policy only makes sense with --image");
    }
    Ok(())
}

/// `--toplevel`'s companions make sense only with it and together; checked
/// before the toplevel is even looked at.
fn check_store_options(args: &Args) -> Result<()> {
    if args.toplevel.is_none() {
        for (set, flag) in [
            (args.shared_store, "--shared-store"),
            (args.closure_file.is_some(), "--closure-file"),
            (args.nix_daemon, "--nix-daemon"),
        ] {
            if set {
                bail!("{flag} only makes sense with --toplevel=STOREPATH");
            }
        }
        return Ok(());
    }
    if args.boot {
        bail!("--toplevel runs the toplevel's init as PID 1; drop --boot");
    }
    if args.shared_store && args.closure_file.is_some() {
        bail!(
            "--shared-store and --closure-file contradict each other: the shared store is the whole host store"
        );
    }
    Ok(())
}

/// The filesystem options: `--read-only`, `--volatile`, `--pivot-root`
/// as the root's layout, and the overlays and masks appended to the
/// custom mounts (a writable overlay's work directory named after the
/// machine, beside its upper layer).
fn filesystem(
    args: &Args,
    directory: Option<&Path>,
    machine: &MachineName,
    mounts: &mut Vec<CustomMount>,
) -> Result<Filesystem> {
    let volatile = args.volatile.unwrap_or_default();
    for (list, read_only) in [(&args.overlay, false), (&args.overlay_ro, true)] {
        for o in list {
            let mut m = CustomMount::parse_overlay(o, read_only)?;
            if let CustomMount::Overlay {
                upper: Some(upper),
                read_only: false,
                work,
                ..
            } = &mut m
            {
                let mut host = upper
                    .host_path(directory)
                    .with_context(|| format!("--overlay={o}: a + path needs a directory (-D)"))?;
                // A `+` upper lives in the tree, whose links must not lead
                // the work directory (made and removed on the host) out
                // of it.
                if let (OverlayPath::InRoot(_), Some(tree)) = (&*upper, directory) {
                    host = std::fs::canonicalize(&host)
                        .with_context(|| format!("--overlay={o}: {}", host.display()))?;
                    if !host.starts_with(tree) || host == tree {
                        bail!(
                            "--overlay={o}: the upper directory {} is not inside the tree",
                            host.display()
                        );
                    }
                }
                let (Some(parent), Some(name)) = (host.parent(), host.file_name()) else {
                    bail!("--overlay={o}: the upper directory cannot be the root");
                };
                *work =
                    Some(parent.join(format!(".#{}.nixspawn-{machine}", name.to_string_lossy())));
            }
            mounts.push(m);
        }
    }
    for i in &args.inaccessible {
        mounts.push(CustomMount::parse_inaccessible(i)?);
    }
    let pivot_root = args
        .pivot_root
        .as_deref()
        .map(PivotRoot::parse)
        .transpose()?;
    Ok(Filesystem {
        read_only: args.read_only,
        volatile,
        pivot_root,
    })
}

/// `-M`, else the directory's name, else the toplevel's name.
fn machine_name(
    given: Option<&str>,
    directory: Option<&Path>,
    toplevel: Option<&Path>,
) -> Result<MachineName> {
    Ok(match (given, directory, toplevel) {
        (Some(m), _, _) => MachineName::new(m)?,
        (None, Some(dir), _) => MachineName::from_directory_name(
            dir.file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow!("cannot name a container after /"))?,
        )?,
        (None, None, Some(toplevel)) => MachineName::from_directory_name(toplevel_name(toplevel))?,
        (None, None, None) => bail!("no -M, -D or --toplevel to name the container after"),
    })
}

/// `NAME-XXXXXXXXXXXXXXXX` (16 hex digits), the name shortened so the
/// whole stays a valid machine name.
fn ephemeral_name(base: &MachineName, suffix: u64) -> Result<MachineName> {
    let base = base.as_str();
    let base = base.get(..base.len().min(64 - 17)).unwrap_or(base);
    Ok(MachineName::new(&format!(
        "{}-{suffix:016x}",
        base.trim_end_matches(['.', '-'])
    ))?)
}

fn random_u64() -> Result<u64> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(u64::from_ne_bytes(b))
}

/// A toplevel's name without its hash (`nixos-system-web-24.11`).
fn toplevel_name(toplevel: &Path) -> &str {
    let name = toplevel
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("nixos");
    name.get(33..).unwrap_or(name)
}

/// A NixOS toplevel and where its store comes from, before the closure is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePlan {
    pub toplevel: PathBuf,
    /// Where the closure comes from; None for the whole host store.
    pub closure: Option<ClosureSource>,
    pub nix_daemon: bool,
}

/// Step 2: everything the command line and the settings file decide, each
/// value checked. What only the system can answer is left to [`Facts`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub directory: Option<PathBuf>,
    pub ephemeral: bool,
    pub image: Option<ImageSpec>,
    pub filesystem: Filesystem,
    pub store: Option<StorePlan>,
    pub machine: MachineName,
    pub hostname: String,
    /// Given (`--uuid`, `MachineID=`): used unless the tree has a machine-id.
    pub uuid: Option<Uuid>,
    pub payload: Payload,
    pub environment: Vec<(String, String)>,
    /// None: interactive on a terminal, else read-only (nspawn's default).
    pub console: Option<Console>,
    /// `--private-network`, or implied by a network option.
    pub private_network: bool,
    pub network: Network,
    pub kill_signal: Option<i32>,
    pub notify_ready: bool,
    pub keep_unit: bool,
    /// What was asked for; whether machined is there decides the rest.
    pub register: Register,
    pub link_journal: LinkJournal,
    pub mounts: Vec<CustomMount>,
    pub private_users: userns::Mode,
    pub ownership: userns::Ownership,
    pub added_capabilities: HashSet<caps::Capability>,
    pub dropped_capabilities: HashSet<caps::Capability>,
    pub syscall_filter: Adjustments,
    pub no_new_privileges: bool,
    pub nested_sandbox: bool,
    /// `--set-credential`s, parsed.
    pub credentials: Vec<Credential>,
    /// `--load-credential`s, to be read by the probe.
    pub load_credentials: Vec<String>,
    pub working_directory: Option<PathBuf>,
    /// `--user`, `--as-pid2`, `--rlimit`, ... (issue 16, group A).
    pub process: nixspawn_runtime::spec::process::Process,
    /// `--background=` (empty: none).
    pub background: Option<nixspawn_runtime::spec::terminal::Background>,
    /// `--bind-user=`, resolved on the host.
    pub bind_users: Vec<nixspawn_runtime::spec::bind_user::BoundUser>,
    pub quiet: bool,
    pub debug: bool,
    pub warnings: Vec<String>,
}

impl Plan {
    /// Merge the place's settings file into `args` and decide everything
    /// that needs nothing but them.
    pub fn new(mut args: Args, place: Place) -> Result<Plan> {
        let mut warnings = Vec::new();
        if let Some(file) = &place.settings {
            let mode = args.settings.unwrap_or_default();
            let over = mode == nspawn_settings::Mode::Override;
            // What the command line set wins, unless --settings=override;
            // decided before anything from the file is merged.
            let masked = |g| !over && args.sets(g);
            let settings = nspawn_settings::read(&file.entries, &file.path, file.trust, &masked)?;
            args.merge(&settings.values, mode);
            warnings = settings.warnings;
        }
        let Place {
            directory,
            toplevel,
            machine,
            settings: _,
            image,
            oci,
        } = place;
        // The bundle's process, hostname and mounts, where the command
        // line says nothing (as nspawn: the command line wins).
        if let Some(b) = oci {
            if args.command.is_empty() {
                args.command = b.args;
            }
            args.hostname = args.hostname.or(b.hostname);
            args.chdir = args.chdir.or(b.cwd);
            let given = std::mem::take(&mut args.setenv);
            args.setenv = b.env.into_iter().chain(given).collect();
            args.bind.extend(b.binds);
            args.bind_ro.extend(b.binds_ro);
            args.tmpfs.extend(b.tmpfs);
            args.private_network |= b.private_network;
            if b.no_new_privileges {
                args.no_new_privileges.get_or_insert(true);
            }
        }
        let image = image.map(|path| ImageSpec {
            path,
            // --read-only: the loop devices and mounts too, as nspawn.
            read_only: args.read_only,
            policy: args
                .image_policy
                .clone()
                .unwrap_or_else(ImagePolicy::container_default),
        });

        let hostname = args.hostname.clone().unwrap_or_else(|| machine.to_string());
        if hostname.is_empty() || hostname.len() > 64 || hostname.contains(['/', '\0', ' ']) {
            bail!(
                "invalid --hostname {hostname:?}: a host name is 1-64 characters without '/' or spaces"
            );
        }
        let payload = if let Some(toplevel) = &toplevel {
            let mut argv = vec![toplevel.join("init").to_string_lossy().into_owned()];
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
        let kill_signal = match args.kill_signal {
            Some(s) => Some(s),
            None if args.boot || toplevel.is_some() => Some(signals::rtmin() + 3),
            None => None,
        };
        let mut mounts = Vec::new();
        for b in &args.bind {
            mounts.push(CustomMount::parse_bind(b, BindAccess::ReadWrite)?);
        }
        for b in &args.bind_ro {
            mounts.push(CustomMount::parse_bind(b, BindAccess::ReadOnly)?);
        }
        for t in &args.tmpfs {
            mounts.push(CustomMount::parse_tmpfs(t)?);
        }
        let filesystem = filesystem(&args, directory.as_deref(), &machine, &mut mounts)?;
        let bind_users = bind_users(&args, directory.as_deref(), &mut mounts)?;
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
        let credentials = args
            .set_credential
            .iter()
            .map(|c| credentials::parse_set(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut added_capabilities = HashSet::new();
        for c in &args.capability {
            added_capabilities.extend(capabilities::parse_list("--capability", c)?);
        }
        let mut dropped_capabilities = HashSet::new();
        for c in &args.drop_capability {
            dropped_capabilities.extend(capabilities::parse_list("--drop-capability", c)?);
        }
        let mut syscall_filter = Adjustments::default();
        for f in &args.system_call_filter {
            syscall_filter.add_option(f)?;
        }
        let private_users = match (args.private_users, args.pick_users) {
            (Some(mode), _) => mode,
            (None, true) => userns::Mode::Pick,
            (None, false) => userns::Mode::No,
        };
        let ownership = match args.private_users_ownership {
            Some(o) => o,
            None if args.private_users_chown => userns::Ownership::Chown,
            // As nspawn: pick implies auto; otherwise the tree is taken as it is.
            None if private_users == userns::Mode::Pick => userns::Ownership::Auto,
            None => userns::Ownership::Off,
        };
        let console = if args.pipe {
            Some(Console::Pipe)
        } else {
            args.console
        };
        crate::process_opts::check_selinux(&args)?;
        let process = crate::process_opts::plan(&args, args.boot, &{
            let mut keep =
                capabilities::guest_set(args.private_network || network(&args)?.implies_private());
            keep.extend(added_capabilities.iter().copied());
            keep.retain(|c| !dropped_capabilities.contains(c));
            keep
        })?;
        let network = network(&args)?;
        let private_network = args.private_network || network.implies_private();
        network.verify(private_network)?;
        let store = toplevel.map(|toplevel| StorePlan {
            toplevel,
            closure: (!args.shared_store).then(|| {
                args.closure_file
                    .clone()
                    .map_or(ClosureSource::Database, ClosureSource::File)
            }),
            nix_daemon: args.nix_daemon,
        });
        Ok(Plan {
            directory,
            ephemeral: args.ephemeral,
            image,
            filesystem,
            store,
            machine,
            hostname,
            uuid: args.uuid,
            payload,
            environment,
            console,
            private_network,
            network,
            kill_signal,
            notify_ready: args.notify_ready.unwrap_or(false),
            keep_unit: args.keep_unit,
            register: args.register.unwrap_or_default(),
            link_journal: match (args.link_journal, args.link_journal_try_guest) {
                (Some(l), _) => l,
                (None, true) => LinkJournal::TryGuest,
                (None, false) => LinkJournal::default(),
            },
            mounts,
            private_users,
            ownership,
            added_capabilities,
            dropped_capabilities,
            syscall_filter,
            no_new_privileges: args.no_new_privileges.unwrap_or(false),
            nested_sandbox: args.nested_sandbox,
            credentials,
            load_credentials: args.load_credential,
            working_directory: args.chdir,
            process,
            background: args
                .background
                .as_deref()
                .map_or(
                    Ok(None),
                    nixspawn_runtime::spec::terminal::Background::parse,
                )
                .map_err(|e| anyhow!("invalid value for --background: {e}"))?,
            bind_users,
            quiet: args.quiet,
            debug: args.debug,
            warnings,
        })
    }

    /// Step 4: the plan completed with the system's answers.
    pub fn into_spec(self, facts: Facts) -> Result<(Spec, Options)> {
        let why_not = |reach: Option<&Reach>| {
            reach.map_or_else(|| "its bus was not probed".to_owned(), Reach::explain)
        };
        let (register, register_notice) = match (self.register, facts.machined.as_ref()) {
            (Register::No, _) => (Register::No, None),
            (wanted, Some(Reach::Available { .. })) => (wanted, None),
            (Register::Yes, reach) => bail!(
                "--register=yes: cannot register with systemd-machined: {}; use --register=no or --register=auto to run unregistered",
                why_not(reach)
            ),
            (Register::Auto, reach) => (
                Register::No,
                Some(format!(
                    "Not registering with systemd-machined: {}.",
                    why_not(reach)
                )),
            ),
        };
        let console = match self.console {
            None if facts.terminal => ConsoleMode::Interactive,
            None => ConsoleMode::ReadOnly,
            Some(Console::Interactive) => ConsoleMode::Interactive,
            Some(Console::ReadOnly) => ConsoleMode::ReadOnly,
            Some(Console::Passive) => ConsoleMode::Passive,
            Some(Console::Pipe) => ConsoleMode::Pipe,
            Some(Console::Autopipe) if facts.terminal => ConsoleMode::Interactive,
            Some(Console::Autopipe) => ConsoleMode::Pipe,
        };
        let mut credentials = self.credentials;
        credentials.extend(facts.loaded_credentials);
        credentials::check_all(&credentials)?;
        let spec = Spec {
            private_users: self.private_users,
            ownership: self.ownership,
            added_capabilities: self.added_capabilities,
            dropped_capabilities: self.dropped_capabilities,
            syscall_filter: self.syscall_filter,
            seccomp: facts.seccomp,
            no_new_privileges: self.no_new_privileges,
            nested_sandbox: self.nested_sandbox,
            credentials,
            directory: self.directory,
            store: facts.store,
            ephemeral: self.ephemeral,
            image: self.image,
            filesystem: self.filesystem,
            machine: self.machine,
            hostname: self.hostname,
            uuid: facts.uuid,
            payload: self.payload,
            environment: self.environment,
            console,
            term: facts.term,
            private_network: self.private_network,
            network: self.network,
            kill_signal: self.kill_signal,
            notify_ready: self.notify_ready,
            keep_unit: self.keep_unit,
            register,
            link_journal: self.link_journal,
            mounts: self.mounts,
            working_directory: self.working_directory,
            process: self.process,
            // The relay paints only what it writes to our stdout.
            background: self
                .background
                .filter(|_| matches!(console, ConsoleMode::Interactive | ConsoleMode::ReadOnly)),
            bind_users: self.bind_users,
        };
        Ok((
            spec,
            Options {
                quiet: self.quiet,
                debug: self.debug,
                register_notice,
                warnings: self.warnings,
            },
        ))
    }
}

/// `--bind-user=`: the users resolved on the host (ids checked against the
/// tree's databases) and their homes bound at /run/host/home/NAME, after
/// the user's own mounts as nspawn adds them.
fn bind_users(
    args: &Args,
    tree: Option<&std::path::Path>,
    mounts: &mut Vec<CustomMount>,
) -> Result<Vec<nixspawn_runtime::spec::bind_user::BoundUser>> {
    use nixspawn_runtime::spec::bind_user;
    if args.bind_user.is_empty() {
        return Ok(Vec::new());
    }
    let no_userns = match args.private_users {
        Some(m) => m == userns::Mode::No,
        None => !args.pick_users,
    };
    if no_userns {
        bail!("--bind-user= needs a user namespace; add -U (--private-users=pick)");
    }
    let users = bind_user::resolve(
        &args.bind_user,
        &args.bind_user_shell.clone().unwrap_or_default(),
        tree,
    )?;
    for u in &users {
        mounts.push(CustomMount::Bind {
            source: u.home.clone(),
            target: u.container_home(),
            read_only: false,
            recursive: true,
            idmap: nixspawn_runtime::spec::mounts::BindIdmap::None,
        });
    }
    Ok(users)
}

/// The network options as the runtime takes them, each value checked as
/// systemd-nspawn checks it (and refused in its words).
fn network(args: &Args) -> Result<Network> {
    use nixspawn_runtime::spec::network::{
        AddressPair, IfacePair, PairKind, Port, ResolvConf, Timezone, VethExtra, parse_bridge,
        parse_zone,
    };
    let mut net = Network {
        veth: args.network_veth,
        bridge: args
            .network_bridge
            .as_deref()
            .map(parse_bridge)
            .transpose()?,
        zone: match args.network_zone.as_deref() {
            Some(z) => parse_zone(z)?,
            None => None,
        },
        namespace_path: args.network_namespace_path.clone(),
        ..Network::default()
    };
    for v in &args.network_veth_extra {
        net.veth_extra.push(VethExtra::parse(v)?);
    }
    for (list, kind, out) in [
        (
            &args.network_interface,
            PairKind::Interface,
            &mut net.interfaces,
        ),
        (&args.network_macvlan, PairKind::MacVlan, &mut net.macvlans),
        (&args.network_ipvlan, PairKind::IpVlan, &mut net.ipvlans),
    ] {
        for v in list {
            out.extend(IfacePair::parse_list(kind, v)?);
        }
    }
    for p in &args.port {
        Port::parse_into(&mut net.ports, p)?;
    }
    for a in &args.network_address {
        net.addresses.push(AddressPair::parse(a)?);
    }
    if let Some(r) = &args.resolv_conf {
        net.resolv_conf = ResolvConf::parse(r)?;
    }
    if let Some(t) = &args.timezone {
        net.timezone = Timezone::parse(t)?;
    }
    Ok(net)
}

/// Step 3: the system's answers to what the plan leaves open.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Whether machined can be reached; None when registration is off and
    /// it was not asked.
    pub machined: Option<Reach>,
    /// The toplevel's store, its closure read (from the Nix database or a
    /// closureInfo file).
    pub store: Option<StoreSpec>,
    /// What `--load-credential` read, in order.
    pub loaded_credentials: Vec<Credential>,
    /// The tree's /etc/machine-id, else the UUID given, else a random one.
    pub uuid: Uuid,
    /// Whether stdin and stdout are both terminals.
    pub terminal: bool,
    /// Whether to install the seccomp filter: `SYSTEMD_SECCOMP=0` turns it off.
    pub seccomp: bool,
    /// The caller's `TERM`, for PID 1 on a console pty.
    pub term: Option<String>,
}

impl Facts {
    pub fn probe(plan: &Plan) -> Result<Facts> {
        use std::io::IsTerminal;
        // As systemd-nspawn: SYSTEMD_SECCOMP=0 turns the filter off.
        let seccomp = std::env::var("SYSTEMD_SECCOMP")
            .map_or(true, |v| values::parse_bool(&v).unwrap_or(true));
        if seccomp {
            // Never an unfiltered payload by accident: where we have no
            // tables, only SYSTEMD_SECCOMP=0 lets it run.
            seccomp::check_supported()?;
        }
        let store = plan
            .store
            .as_ref()
            .map(|s| -> Result<StoreSpec> {
                Ok(StoreSpec {
                    toplevel: s.toplevel.clone(),
                    closure: s
                        .closure
                        .as_ref()
                        .map(|source| closure::compute(&s.toplevel, source))
                        .transpose()?,
                    nix_daemon: s.nix_daemon,
                })
            })
            .transpose()?;
        let machined = (plan.register != Register::No).then(machined::probe);
        // Read now, in the privileged launcher; the guest never sees the paths.
        let mut loaded_credentials = Vec::new();
        for c in &plan.load_credentials {
            loaded_credentials.extend(credentials::load(c)?);
        }
        // As nspawn: the tree's own machine-id wins; --uuid (MachineID=)
        // applies only while it is unpopulated.
        let uuid = match (
            plan.directory.as_deref().and_then(tree_machine_id),
            plan.uuid,
        ) {
            (Some(tree), _) => tree,
            (None, Some(given)) => given,
            (None, None) => Uuid::random()?,
        };
        Ok(Facts {
            machined,
            store,
            loaded_credentials,
            uuid,
            terminal: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
            seccomp,
            term: std::env::var("TERM").ok(),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher_args;
    use nixspawn_runtime::spec::journal::LinkJournal;

    fn args(line: &str) -> Args {
        let argv: Vec<String> = std::iter::once("nixspawn")
            .chain(line.split_whitespace())
            .map(String::from)
            .collect();
        launcher_args::parse(&argv).unwrap()
    }

    /// A tree at /srv/web named web, without a settings file: what
    /// `Place::find` gives for `-D /srv/web`, without looking.
    fn place() -> Place {
        Place {
            directory: Some("/srv/web".into()),
            toplevel: None,
            machine: MachineName::new("web").unwrap(),
            settings: None,
            image: None,
            oci: None,
        }
    }

    fn plan(line: &str) -> Plan {
        Plan::new(args(line), place()).unwrap()
    }

    fn refusal(line: &str) -> String {
        format!("{:#}", Plan::new(args(line), place()).unwrap_err())
    }

    fn uuid() -> Uuid {
        Uuid::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    /// A host without machined, not on a terminal.
    fn facts() -> Facts {
        Facts {
            machined: None,
            store: None,
            loaded_credentials: Vec::new(),
            uuid: uuid(),
            terminal: false,
            seccomp: true,
            term: Some("xterm-256color".into()),
        }
    }

    fn spec(line: &str) -> Spec {
        plan(line).into_spec(facts()).unwrap().0
    }

    #[test]
    fn network_options_as_nspawn_takes_them() {
        let s = spec("-D / -M t --network-zone=z -p 8080:80");
        assert!(s.private_network, "a zone makes the network private");
        assert!(s.network.has_veth());
        assert_eq!(s.network.zone.as_deref(), Some("z"));
        assert_eq!(s.network.ports.len(), 1);
        let s = spec("-D / -M t --network-namespace-path=/run/netns/x");
        assert!(!s.private_network, "a namespace path alone is not private");
        let s = spec("-D / -M t --network-macvlan=eth0");
        assert!(s.private_network && !s.network.has_veth());
        for (line, want) in [
            (
                "-D / -M t -p 80",
                "Cannot use --port= without private networking.",
            ),
            (
                "-D / -M t --network-bridge=br0 --network-zone=z",
                "--network-bridge= and --network-zone= may not be combined.",
            ),
            (
                "-D / -M t -n --network-namespace-path=/x",
                "--network-namespace-path= cannot be combined with other network options.",
            ),
            (
                "-D / -M t --network-zone=abcdefghijklm",
                "Network zone name not valid: vz-abcdefghijklm",
            ),
            (
                "-D / -M t -n -p tcp:80 -p 80",
                "Duplicate port specification: 80",
            ),
            (
                "-D / -M t --network-veth-extra=a:b:c",
                "Failed to parse --network-veth-extra= parameter: a:b:c",
            ),
            (
                "-D / -M t --resolv-conf=bogus",
                "Failed to parse /etc/resolv.conf mode: bogus",
            ),
        ] {
            assert_eq!(refusal(line), want, "{line}");
        }
    }

    fn unreachable_bus() -> Reach {
        Reach::NoSystemBus {
            socket: "/run/dbus/system_bus_socket".into(),
        }
    }

    #[test]
    fn boot_and_command_payloads_and_their_kill_signals() {
        let s = spec("-b -- --log-level=debug");
        assert_eq!(
            s.payload,
            Payload::Boot {
                args: vec!["--log-level=debug".into()]
            }
        );
        assert_eq!(s.kill_signal, Some(signals::rtmin() + 3));
        let s = spec("/bin/true x");
        assert_eq!(
            s.payload,
            Payload::Command {
                argv: vec!["/bin/true".into(), "x".into()]
            }
        );
        assert_eq!(s.kill_signal, None, "a command is killed at once");
        assert_eq!(
            spec("").payload,
            Payload::Command {
                argv: vec!["/bin/sh".into()]
            },
            "nothing to run: a shell, as nspawn"
        );
        assert_eq!(
            spec("-b --kill-signal=SIGTERM").kill_signal,
            Some(libc::SIGTERM)
        );
    }

    #[test]
    fn a_toplevel_runs_its_init_with_the_closure_from_where_it_was_asked() {
        let toplevel =
            PathBuf::from("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web");
        let at = |line: &str| {
            Plan::new(
                args(line),
                Place {
                    directory: None,
                    toplevel: Some(toplevel.clone()),
                    machine: MachineName::new("web").unwrap(),
                    settings: None,
                    image: None,
                    oci: None,
                },
            )
            .unwrap()
        };
        let p = at("--toplevel=./result x");
        assert_eq!(
            p.payload,
            Payload::Command {
                argv: vec![format!("{}/init", toplevel.display()), "x".into()]
            }
        );
        assert_eq!(p.kill_signal, Some(signals::rtmin() + 3));
        assert_eq!(
            p.store,
            Some(StorePlan {
                toplevel: toplevel.clone(),
                closure: Some(ClosureSource::Database),
                nix_daemon: false
            })
        );
        let p = at("--toplevel=./result --closure-file=/tmp/paths --nix-daemon");
        let store = p.store.unwrap();
        assert_eq!(
            store.closure,
            Some(ClosureSource::File("/tmp/paths".into()))
        );
        assert!(store.nix_daemon);
        let p = at("--toplevel=./result --shared-store");
        assert_eq!(p.store.unwrap().closure, None, "the whole host store");
    }

    #[test]
    fn store_options_need_a_toplevel_and_agree_with_each_other() {
        for (line, needle) in [
            (
                "--shared-store",
                "--shared-store only makes sense with --toplevel",
            ),
            (
                "--nix-daemon",
                "--nix-daemon only makes sense with --toplevel",
            ),
            (
                "--closure-file=/x",
                "--closure-file only makes sense with --toplevel",
            ),
            ("--toplevel=/nix/store/x -b", "drop --boot"),
            (
                "--toplevel=/nix/store/x --shared-store --closure-file=/x",
                "contradict each other",
            ),
        ] {
            let err = check_store_options(&args(line)).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
        check_store_options(&args("--toplevel=/nix/store/x --nix-daemon --shared-store")).unwrap();
        check_store_options(&args("-b -D /")).unwrap();
    }

    #[test]
    fn machine_names_come_from_m_the_directory_or_the_toplevel() {
        let name = |m: Option<&str>, d: Option<&str>, t: Option<&str>| {
            machine_name(m, d.map(Path::new), t.map(Path::new)).map(|n| n.to_string())
        };
        assert_eq!(name(Some("a"), Some("/srv/b"), None).unwrap(), "a");
        assert_eq!(name(None, Some("/srv/b.d"), None).unwrap(), "b.d");
        assert_eq!(
            name(
                None,
                None,
                Some("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-25.05")
            )
            .unwrap(),
            "nixos-system-web-25.05",
            "the hash is not part of the name"
        );
        assert!(
            name(None, Some("/"), None)
                .unwrap_err()
                .to_string()
                .contains("after /")
        );
        assert!(
            name(Some("bad/name"), None, None)
                .unwrap_err()
                .to_string()
                .contains("invalid machine name")
        );
    }

    #[test]
    fn ephemeral_runs_named_after_their_tree_get_nspawns_random_suffix() {
        let n = |s: &str| MachineName::new(s).unwrap();
        assert_eq!(
            ephemeral_name(&n("tree"), 0xd9a4895b4a52d075)
                .unwrap()
                .as_str(),
            "tree-d9a4895b4a52d075"
        );
        assert_eq!(
            ephemeral_name(&n("t"), 1).unwrap().as_str(),
            "t-0000000000000001"
        );
        let long = "a".repeat(64);
        let named = ephemeral_name(&n(&long), u64::MAX).unwrap();
        assert_eq!(named.as_str().len(), 64);
        assert!(named.as_str().ends_with("-ffffffffffffffff"));
    }

    #[test]
    fn hostnames_default_to_the_machine_and_are_checked() {
        assert_eq!(spec("").hostname, "web");
        assert_eq!(spec("--hostname=db").hostname, "db");
        let long = format!("--hostname={}", "h".repeat(65));
        for line in ["--hostname=a/b", long.as_str()] {
            assert!(refusal(line).contains("invalid --hostname"), "{line}");
        }
    }

    #[test]
    fn user_namespace_defaults_follow_nspawn() {
        let s = spec("-U");
        assert_eq!(s.private_users, userns::Mode::Pick);
        assert_eq!(
            s.ownership,
            userns::Ownership::Auto,
            "-U implies ownership auto"
        );
        let s = spec("--private-users=pick");
        assert_eq!(s.ownership, userns::Ownership::Auto, "so does pick");
        let s = spec("--private-users=131072");
        assert_eq!(s.ownership, userns::Ownership::Off);
        let s = spec("-U --private-users-ownership=chown");
        assert_eq!(s.ownership, userns::Ownership::Chown);
        let s = spec("-U --private-users=identity");
        assert_eq!(
            s.private_users,
            userns::Mode::Identity,
            "the explicit mode wins over -U"
        );
        let s = spec("");
        assert_eq!(
            (s.private_users, s.ownership),
            (userns::Mode::No, userns::Ownership::Off)
        );
    }

    #[test]
    fn consoles_follow_the_terminal_as_nspawn_decides() {
        let on_terminal = Facts {
            terminal: true,
            ..facts()
        };
        let console = |line: &str, facts: Facts| plan(line).into_spec(facts).unwrap().0.console;
        assert_eq!(console("", on_terminal.clone()), ConsoleMode::Interactive);
        assert_eq!(console("", facts()), ConsoleMode::ReadOnly);
        assert_eq!(
            console("--console=autopipe", on_terminal.clone()),
            ConsoleMode::Interactive
        );
        assert_eq!(console("--console=autopipe", facts()), ConsoleMode::Pipe);
        assert_eq!(
            console("--console=passive", on_terminal.clone()),
            ConsoleMode::Passive
        );
        assert_eq!(
            console("--console=interactive", facts()),
            ConsoleMode::Interactive
        );
        assert_eq!(
            console("--console=read-only --pipe", on_terminal),
            ConsoleMode::Pipe,
            "-P wins"
        );
    }

    #[test]
    fn registration_follows_what_machined_answers() {
        let with = |line: &str, machined: Option<Reach>| {
            plan(line).into_spec(Facts {
                machined,
                ..facts()
            })
        };
        let available = || Reach::Available {
            socket: "/run/dbus/system_bus_socket".into(),
        };
        assert_eq!(plan("").register, Register::Auto, "auto by default");
        let (s, o) = with("--register=no", None).unwrap();
        assert_eq!(
            (s.register, o.register_notice),
            (Register::No, None),
            "no is silent"
        );
        let (s, o) = with("", Some(available())).unwrap();
        assert_eq!((s.register, o.register_notice), (Register::Auto, None));
        let (s, _) = with("--register=yes", Some(available())).unwrap();
        assert_eq!(s.register, Register::Yes);
        let (s, o) = with("--register=auto", Some(unreachable_bus())).unwrap();
        assert_eq!(s.register, Register::No);
        let notice = o.register_notice.unwrap();
        assert!(
            notice.starts_with("Not registering with systemd-machined: no system D-Bus")
                && notice.contains("/run/dbus/system_bus_socket"),
            "{notice}"
        );
        let err = with("--register=yes", Some(unreachable_bus()))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "--register=yes: cannot register with systemd-machined: no system D-Bus"
            ) && err.contains("use --register=no or --register=auto"),
            "{err}"
        );
        // Facts made by hand without machined's answer: yes still fails.
        let err = with("--register=yes", None).unwrap_err().to_string();
        assert!(err.contains("not probed"), "{err}");
        let (s, o) = with("", None).unwrap();
        assert_eq!(s.register, Register::No);
        assert!(o.register_notice.is_some());
    }

    #[test]
    fn filesystem_options_reach_the_spec() {
        use nixspawn_runtime::spec::filesystem::Volatile;
        let s = spec(
            "--read-only --volatile=state --overlay=/l:/u:/m --overlay-ro=+/a:/b \
             --inaccessible=/x --pivot-root=/n:/o --private-users-chown -U",
        );
        assert!(s.filesystem.read_only);
        assert_eq!(s.filesystem.volatile, Volatile::State);
        assert_eq!(
            s.filesystem.pivot_root,
            Some(PivotRoot::parse("/n:/o").unwrap())
        );
        assert_eq!(s.ownership, userns::Ownership::Chown);
        assert_eq!(
            s.mounts,
            [
                CustomMount::Overlay {
                    lower: vec![OverlayPath::Host("/l".into())],
                    upper: Some(OverlayPath::Host("/u".into())),
                    target: "/m".into(),
                    read_only: false,
                    work: Some("/.#u.nixspawn-web".into()),
                },
                CustomMount::parse_overlay("+/a:/b", true).unwrap(),
                CustomMount::parse_inaccessible("/x").unwrap(),
            ]
        );
        // A bare --volatile is yes.
        assert_eq!(plan("--volatile").filesystem.volatile, Volatile::Yes);
        assert!(refusal("--overlay=/only").contains("at least two"));
        assert!(refusal("--pivot-root=rel").contains("--pivot-root"));
        assert!(refusal("--inaccessible=rel").contains("--inaccessible"));
        // A settings file: ReadOnly=/Volatile=/PivotRoot= fill what the
        // command line left; its masks and overlays are custom mounts.
        let mut a = args("--volatile=yes");
        let file = "[Files]\nReadOnly=yes\nVolatile=state\nInaccessible=/y\n[Exec]\nPivotRoot=/p\n";
        let entries = nspawn_settings::parse(file, Path::new("t.nspawn")).unwrap();
        let set =
            nspawn_settings::read(&entries, Path::new("t.nspawn"), Trust::Trusted, &|_| false)
                .unwrap();
        a.merge(&set.values, nspawn_settings::Mode::Yes);
        assert!(a.read_only);
        assert_eq!(a.volatile, Some(Volatile::Yes), "the command line wins");
        assert_eq!(a.inaccessible, ["/y"]);
        assert_eq!(a.pivot_root.as_deref(), Some("/p"));
        let untrusted =
            nspawn_settings::read(&entries, Path::new("t.nspawn"), Trust::Untrusted, &|_| {
                false
            })
            .unwrap();
        assert!(
            !untrusted
                .values
                .iter()
                .any(|v| matches!(v, nspawn_settings::Setting::Inaccessible(_))),
            "Inaccessible= is privileged"
        );
        assert_eq!(untrusted.warnings.len(), 1, "{:?}", untrusted.warnings);
    }

    #[test]
    fn every_value_reaches_the_spec() {
        let s = spec(
            "-x --uuid=fedcba9876543210fedcba9876543210 -E A=1 -E B= --private-network \
             --notify-ready=yes --keep-unit --bind=/a:/b --bind-ro=/c --tmpfs=/d \
             --chdir=/srv --link-journal=try-guest --capability=CAP_SYS_TIME \
             --drop-capability=CAP_CHOWN,CAP_FOWNER --system-call-filter=~@mount \
             --no-new-privileges=yes --set-credential=k:v",
        );
        assert!(s.ephemeral && s.private_network && s.notify_ready && s.keep_unit);
        assert!(s.no_new_privileges && s.seccomp);
        assert_eq!(s.directory, Some(PathBuf::from("/srv/web")));
        assert_eq!(s.uuid, uuid(), "the probe's answer: it keeps a given UUID");
        assert_eq!(
            s.environment,
            [("A".into(), "1".into()), ("B".into(), String::new())]
        );
        assert_eq!(
            s.mounts,
            [
                CustomMount::parse_bind("/a:/b", BindAccess::ReadWrite).unwrap(),
                CustomMount::parse_bind("/c", BindAccess::ReadOnly).unwrap(),
                CustomMount::parse_tmpfs("/d").unwrap(),
            ]
        );
        assert_eq!(s.working_directory, Some(PathBuf::from("/srv")));
        assert_eq!(s.link_journal, LinkJournal::TryGuest);
        assert_eq!(
            s.added_capabilities,
            [caps::Capability::CAP_SYS_TIME].into()
        );
        assert_eq!(
            s.dropped_capabilities,
            [caps::Capability::CAP_CHOWN, caps::Capability::CAP_FOWNER].into()
        );
        assert_eq!(s.syscall_filter.deny, ["@mount"]);
        assert_eq!(s.credentials.len(), 1);
        assert_eq!(
            s.term.as_deref(),
            Some("xterm-256color"),
            "TERM comes from the caller"
        );
        let (_, o) = plan("-q --debug").into_spec(facts()).unwrap();
        assert!(o.quiet && o.debug);
    }

    #[test]
    fn bad_values_are_refused_before_anything_is_probed() {
        for (line, needle) in [
            ("--bind=relative", "not an absolute path"),
            ("--bind-ro=/a:/b:bogus", "unknown option \"bogus\""),
            ("--tmpfs=x", "--tmpfs"),
            ("-E 1bad=x", "the name must be letters"),
            (
                "--chdir=srv",
                "invalid --chdir srv: must be an absolute path",
            ),
            ("--capability=CAP_NOPE", "unknown capability"),
            ("--drop-capability=nope", "--drop-capability"),
            (
                "--system-call-filter=nosuchcall",
                "unknown system call or group \"nosuchcall\"",
            ),
            ("--set-credential=novalue", "expected ID:VALUE"),
        ] {
            let err = refusal(line);
            assert!(err.contains(needle), "{line}: {err}");
            assert!(!err.contains('\n'), "{line}: one line: {err:?}");
        }
    }

    #[test]
    fn loaded_credentials_follow_the_set_ones_and_duplicates_are_refused() {
        let loaded = credentials::parse_set("b:2").unwrap();
        let (s, _) = plan("--set-credential=a:1")
            .into_spec(Facts {
                loaded_credentials: vec![loaded.clone()],
                ..facts()
            })
            .unwrap();
        let ids: Vec<&str> = s.credentials.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let err = plan("--set-credential=b:1")
            .into_spec(Facts {
                loaded_credentials: vec![loaded],
                ..facts()
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("given more than once"), "{err}");
    }

    #[test]
    fn a_settings_file_is_merged_and_its_warnings_kept_for_the_launcher() {
        let path = PathBuf::from("/srv/web.nspawn");
        let text = "[Exec]\nHostname=from-file\nKillSignal=SIGUSR1\nPrivateUsers=pick\n\
                    [Files]\nBind=/x\n[Network]\nPrivate=yes\n";
        let with_file = |line: &str, trust| {
            let mut place = place();
            place.settings = Some(SettingsFile {
                entries: nspawn_settings::parse(text, &path).unwrap(),
                path: path.clone(),
                trust,
            });
            Plan::new(args(line), place)
        };
        let p = with_file("--kill-signal=SIGTERM", Trust::Trusted).unwrap();
        assert_eq!(p.hostname, "from-file");
        assert_eq!(p.kill_signal, Some(libc::SIGTERM), "the command line wins");
        assert_eq!(p.private_users, userns::Mode::Pick);
        assert_eq!(p.ownership, userns::Ownership::Auto);
        assert!(p.private_network);
        assert_eq!(p.mounts.len(), 1);
        assert!(p.warnings.is_empty());

        let p = with_file("--private-network", Trust::Untrusted).unwrap();
        assert_eq!(p.hostname, "from-file", "any file may name the host");
        assert_eq!(p.private_users, userns::Mode::No);
        assert!(p.mounts.is_empty());
        assert_eq!(
            p.warnings,
            [
                "Ignoring TemporaryFileSystem=, Bind= and BindReadOnly= settings, file /srv/web.nspawn is not trusted.",
                "Ignoring PrivateUsers= and PrivateUsersChown= settings, file /srv/web.nspawn is not trusted.",
            ],
            "nothing about the network: the command line set it"
        );
        let (_, o) = p.into_spec(facts()).unwrap();
        assert_eq!(o.warnings.len(), 2, "the launcher prints them");

        let p = with_file("--settings=override --hostname=cli", Trust::Trusted).unwrap();
        assert_eq!(p.hostname, "from-file", "override: the file wins");
        let bad = "[Exec]\nHostname=a b\n";
        let mut place = place();
        place.settings = Some(SettingsFile {
            entries: nspawn_settings::parse(bad, &path).unwrap(),
            path: path.clone(),
            trust: Trust::Trusted,
        });
        let err = Plan::new(args(""), place).unwrap_err().to_string();
        assert!(err.contains("invalid --hostname \"a b\""), "{err}");
    }

    #[test]
    fn place_finds_the_tree_its_name_and_the_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("nixspawn-unit-place-{}", std::process::id());
        let tree = dir.path().join(&name);
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(
            dir.path().join(format!("{name}.nspawn")),
            "[Exec]\nHostname=beside\n",
        )
        .unwrap();
        // Through a path with `..`: the place is the canonical tree.
        let dotted = tree.join("..").join(&name);
        let p = Place::find(&args(&format!("-D {}", dotted.display()))).unwrap();
        assert_eq!(
            p.directory.as_deref(),
            Some(tree.canonicalize().unwrap().as_path())
        );
        assert_eq!(p.machine.as_str(), name);
        let file = p.settings.unwrap();
        assert_eq!(file.trust, Trust::Untrusted);
        assert_eq!(file.entries.len(), 1);
        let p = Place::find(&args(&format!("-D {} --settings=no", tree.display()))).unwrap();
        assert_eq!(p.settings, None);
        let err = format!(
            "{:#}",
            Place::find(&args(&format!("-D {}/missing", dir.path().display()))).unwrap_err()
        );
        assert!(err.contains("missing: cannot be resolved"), "{err}");
        let err = format!(
            "{:#}",
            Place::find(&args("-M nixspawn-unit-no-such-machine")).unwrap_err()
        );
        assert!(
            err.contains("/var/lib/machines/nixspawn-unit-no-such-machine"),
            "-M alone looks in /var/lib/machines: {err}"
        );
    }

    #[test]
    fn the_probe_asks_only_what_the_plan_leaves_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/machine-id"),
            "fedcba9876543210fedcba9876543210\n",
        )
        .unwrap();
        let mut p = plan("--register=no");
        p.directory = Some(dir.path().to_owned());
        let facts = Facts::probe(&p).unwrap();
        assert!(
            facts.machined.is_none(),
            "--register=no does not look for machined"
        );
        assert_eq!(
            facts.uuid,
            Uuid::parse("fedcba9876543210fedcba9876543210").unwrap(),
            "the tree's machine-id"
        );
        assert!(facts.store.is_none() && facts.loaded_credentials.is_empty());

        p.uuid = Some(uuid());
        assert_eq!(
            Facts::probe(&p).unwrap().uuid,
            Uuid::parse("fedcba9876543210fedcba9876543210").unwrap(),
            "the tree's machine-id wins over a given UUID"
        );

        std::fs::write(dir.path().join("etc/machine-id"), "uninitialized\n").unwrap();
        assert_eq!(
            Facts::probe(&p).unwrap().uuid,
            uuid(),
            "a given UUID fills an unpopulated machine-id"
        );
        p.uuid = None;
        let random = Facts::probe(&p).unwrap().uuid;
        assert_ne!(random, Facts::probe(&p).unwrap().uuid, "random without one");

        let cred = dir.path().join("cred");
        std::fs::write(&cred, "secret").unwrap();
        p.load_credentials = vec![format!("token:{}", cred.display())];
        let facts = Facts::probe(&p).unwrap();
        assert_eq!(facts.loaded_credentials.len(), 1);
        assert_eq!(facts.loaded_credentials[0].id, "token");
    }
}
