//! Carrying out the setup plan (`steps`) for real: each step calls the
//! module that knows how (the root filesystem, the API filesystems, the
//! store, credentials, security), and what a step makes — a mount's
//! descriptor, the notify socket, the console — is kept here for the steps
//! after it. In the outer process every mount lands on what was resolved
//! (its descriptor); the guest's PID 1, already pivoted, works by path.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use caps::Capability;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

use crate::error::{Error, Result};
use crate::guest::apifs::{devfs, procfs, runhost, sysfs};
use crate::guest::rootfs::mounts::{MountContext, Mounted, Owner, Target};
use crate::guest::rootfs::resolve::Create;
use crate::guest::steps::{Ops, Step, StoreKind};
use crate::guest::{Plan, credentials, environment, exec, rootfs};
use crate::handshake::{ContainerEnd, InnerEnd};
use crate::nixos::store;
use crate::security::{capabilities, seccomp};
use crate::sys;

/// Where the guest's filesystem was assembled (paths resolved inside it),
/// for the guest's PID 1 to find after pivoting. The outer process itself
/// works through the mounts' descriptors, never these paths.
#[derive(Debug, Clone)]
pub(crate) struct Assembled {
    pub root: PathBuf,
    pub host: PathBuf,
    pub dev: PathBuf,
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Assembled {
    /// The same places as seen after pivoting into the root.
    pub fn pivoted(&self) -> Assembled {
        let inside = |p: &Path| Path::new("/").join(p.strip_prefix(&self.root).unwrap_or(p));
        Assembled {
            root: PathBuf::from("/"),
            host: inside(&self.host),
            dev: inside(&self.dev),
            proc: inside(&self.proc),
            sys: inside(&self.sys),
        }
    }
}

/// The setup in progress.
pub(crate) struct Setup<'a> {
    plan: &'a Plan<'a>,
    end: &'a ContainerEnd,
    owner: Owner,
    /// Set once the root is assembled (or, for PID 1, from the outer one).
    pub at: Option<Assembled>,
    root: Option<PathBuf>,
    run: Option<Mounted>,
    host: Option<Mounted>,
    /// The notify socket's listening end, to hand to the launcher.
    pub notify: Option<OwnedFd>,
    dev: Option<Mounted>,
    proc: Option<Target>,
    sys: Option<Target>,
    store: Option<Mounted>,
    /// The console's pty: master (for the launcher) and peer (ours).
    pub console: Option<(OwnedFd, OwnedFd)>,
    /// PID 1's end of its pair with the outer process.
    pub outer: Option<InnerEnd>,
    payload: Option<exec::Payload>,
    /// `--user`'s guest user, found with the payload (None: root).
    user: Option<crate::guest::process::GuestUser>,
}

impl<'a> Setup<'a> {
    /// The outer process's setup (or a plain guest's PID 1's).
    pub fn new(plan: &'a Plan<'a>, end: &'a ContainerEnd) -> Self {
        Setup {
            plan,
            end,
            owner: Owner(plan.userns.map(|u| u.range.shift)),
            at: None,
            root: None,
            run: None,
            host: None,
            notify: None,
            dev: None,
            proc: None,
            sys: None,
            store: None,
            console: None,
            outer: None,
            payload: None,
            user: None,
        }
    }

    /// PID 1's setup in its own namespaces: the root is already pivoted.
    pub fn pid1(plan: &'a Plan<'a>, end: &'a ContainerEnd, at: Assembled, outer: InnerEnd) -> Self {
        let mut s = Setup::new(plan, end);
        s.root = Some(at.root.clone());
        s.at = Some(at);
        s.outer = Some(outer);
        s
    }

    pub fn spec(&self) -> &'a crate::spec::Spec {
        self.plan.spec
    }

    pub fn plan(&self) -> &'a Plan<'a> {
        self.plan
    }

    pub fn root(&self) -> Result<&Path> {
        self.root.as_deref().ok_or_else(|| missing("the root"))
    }

    fn at(&self) -> Result<&Assembled> {
        self.at
            .as_ref()
            .ok_or_else(|| missing("the assembled root"))
    }

    fn host_path(&self) -> Result<PathBuf> {
        match &self.host {
            Some(h) => Ok(h.path()),
            None => Ok(self.at()?.host.clone()),
        }
    }

    fn dev_path(&self) -> Result<PathBuf> {
        match &self.dev {
            Some(d) => Ok(d.path()),
            None => Ok(self.at()?.dev.clone()),
        }
    }

    /// The payload's path and argv, found by [`Step::Chdir`]'s successor.
    pub fn payload(&self) -> Result<&exec::Payload> {
        self.payload.as_ref().ok_or_else(|| missing("the payload"))
    }

    fn capabilities(&self) -> &HashSet<Capability> {
        self.plan.capabilities
    }
}

/// A step ran before the one that makes what it needs: a bug in the plan.
impl Setup<'_> {
    /// Hand the launcher a step's warning, or its error as one (`what`
    /// names what was not set up).
    fn warn_unless_done(&self, what: &str, done: Result<Option<String>>) -> Result<()> {
        let warning = match done {
            Ok(None) => return Ok(()),
            Ok(Some(w)) => w,
            Err(e) => format!("could not set up {what}, ignoring: {e}"),
        };
        self.end.send_warning(warning)
    }
}

fn missing(what: &str) -> Error {
    Error::Protocol(format!("setup step out of order: {what} is not there yet"))
}

impl Ops for Setup<'_> {
    fn run(&mut self, step: Step) -> Result<()> {
        let spec = self.plan.spec;
        let owner = self.owner;
        match step {
            Step::DieWithLauncher => die_with_parent(self.end),
            Step::AwaitPlacement => self.end.wait_placed(),
            Step::JoinNetworkNamespace => {
                let netns = self.plan.network.namespace.as_ref();
                let netns = netns.ok_or_else(|| missing("the network namespace"))?;
                nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::syscall("setns(CLONE_NEWNET)", e))
            }
            Step::UnshareCgroupNamespace => sys::unshare(libc::CLONE_NEWCGROUP)
                .map_err(|e| Error::syscall("unshare(CLONE_NEWCGROUP)", e)),
            Step::IsolateMounts => {
                nix::sys::stat::umask(nix::sys::stat::Mode::empty());
                rootfs::isolate_from_host()
            }
            Step::AssembleRoot {
                ephemeral,
                idmapped,
            } => {
                let clone = self.plan.userns.and_then(|u| u.root.as_ref());
                let root = rootfs::assemble(
                    spec.directory.as_deref(),
                    &self.plan.mount_point,
                    ephemeral,
                    &spec.filesystem,
                    owner,
                    clone.filter(|_| idmapped),
                )?;
                self.root = Some(root);
                Ok(())
            }
            Step::LoopbackUp => loopback_up(),
            Step::MountRunAndTmp => {
                self.run = Some(runhost::mount_run_and_tmp(self.root()?, owner)?);
                Ok(())
            }
            Step::PopulateRunHost => {
                let run = self.run.take().ok_or_else(|| missing("/run"))?;
                let (host, notify) = runhost::populate(&run, &spec.uuid, owner)?;
                crate::guest::bind_user::install(&host.path(), &spec.bind_users, owner)?;
                (self.host, self.notify) = (Some(host), Some(notify));
                Ok(())
            }
            Step::MountDev => {
                self.dev = Some(devfs::mount_dev(self.root()?, owner)?);
                Ok(())
            }
            Step::ResolveProcAndSys => {
                let root = self.root()?.to_path_buf();
                let proc = Target::resolve(&root, Path::new("/proc"), Create::Dir(0o555))?;
                let sys = Target::resolve(&root, Path::new("/sys"), Create::Dir(0o555))?;
                let shown = |m: &Option<Mounted>, what| {
                    m.as_ref()
                        .map(|m| m.shown().to_path_buf())
                        .ok_or_else(|| missing(what))
                };
                self.at = Some(Assembled {
                    root,
                    host: shown(&self.host, "/run/host")?,
                    dev: shown(&self.dev, "/dev")?,
                    proc: proc.shown().to_path_buf(),
                    sys: sys.shown().to_path_buf(),
                });
                (self.proc, self.sys) = (Some(proc), Some(sys));
                Ok(())
            }
            Step::MountProc {
                private_network,
                masked,
            } => {
                let masks = masked.then_some(procfs::Masks { private_network });
                match &self.proc {
                    Some(proc) => procfs::mount_proc_on(proc, &self.host_path()?, masks),
                    // PID 1, pivoted: the pinned /proc at /run/host allows it.
                    None => {
                        let at = self.at()?;
                        procfs::mount_proc(&at.proc, &at.host, masks)
                    }
                }
            }
            Step::MountSys => match &self.sys {
                Some(sys) => sysfs::mount_sys_on(sys),
                None => sysfs::mount_sys(&self.at()?.sys),
            },
            Step::BindHostSys => {
                let at = self.at()?;
                sysfs::bind_host_sys(&at.sys, &at.host.join("sys"))
            }
            Step::MountPtsAndMqueue => devfs::mount_pts_and_mqueue(&self.dev_path()?),
            Step::PinApiFilesystems => runhost::pin_api_filesystems(&self.host_path()?),
            Step::MountStore {
                kind: StoreKind::Overlay,
                ..
            } => {
                let overlay = self
                    .plan
                    .store_overlay
                    .ok_or_else(|| missing("the store overlay"))?;
                store::attach_overlay(self.root()?, overlay)
            }
            Step::MountStore { idmapped, .. } => {
                let store = spec.store.as_ref().ok_or_else(|| missing("a store"))?;
                let clone = self.plan.userns.and_then(|u| u.store.as_ref());
                self.store = store::mount_store(
                    self.root()?,
                    &self.plan.store_staging,
                    store,
                    owner,
                    clone.filter(|_| idmapped),
                )?;
                Ok(())
            }
            Step::CustomMount(n) => {
                let m = spec.mounts.get(n).ok_or_else(|| missing("that mount"))?;
                let ctx = MountContext {
                    owner,
                    mapping: self
                        .plan
                        .userns
                        .and_then(|u| u.mapping.as_ref().map(|m| (u.range, m))),
                    inaccessible: self.host.as_ref().map(|h| h.path().join("inaccessible")),
                };
                m.apply(self.root()?, &ctx)
            }
            // As nspawn: what cannot be done is a warning, not a failure.
            Step::SetUpTimezone => {
                let done = crate::network::resolv::apply_timezone(
                    self.root()?,
                    &self.plan.network.timezone,
                    owner,
                );
                self.warn_unless_done("the container's /etc/localtime", done)
            }
            Step::SetUpResolvConf => {
                let done = crate::network::resolv::apply_resolv(
                    self.root()?,
                    self.plan.network.resolv,
                    owner,
                );
                self.warn_unless_done("the container's /etc/resolv.conf", done)
            }
            Step::LinkJournal => {
                let tree = spec.directory.as_ref().ok_or_else(|| missing("a tree"))?;
                crate::guest::journal::link(spec.link_journal, self.root()?, tree, owner)
            }
            // Under a user namespace this happens before the guest's
            // namespaces exist, so the kernel locks the flag there: its root
            // cannot undo it. `nixspawnctl update` adds paths through the
            // outer mount namespace, which the launcher keeps, and from
            // which they propagate into the guest's, locked as well.
            Step::SealStore => store::seal_store(self.store.as_ref()),
            Step::LinkProfile => {
                let store = spec.store.as_ref().ok_or_else(|| missing("a store"))?;
                store::link_profile(self.root()?, &store.toplevel)
            }
            Step::PassNixDaemon => store::pass_nix_daemon(self.root()?),
            Step::InstallCredentials => {
                credentials::install(&self.host_path()?, &spec.credentials, owner)
            }
            Step::SealRunHost => runhost::seal(&self.host_path()?),
            Step::SetHostname => nix::unistd::sethostname(&spec.hostname)
                .map_err(|e| Error::syscall("sethostname", e)),
            Step::CreateConsole => {
                self.console = Some(devfs::make_console(&self.dev_path()?)?);
                Ok(())
            }
            Step::WaitForIdMaps => self.end.wait_maps_written(),
            Step::BecomeGuestRoot => become_guest_root(),
            Step::WaitForPins => {
                let outer = self
                    .outer
                    .as_ref()
                    .ok_or_else(|| missing("the outer process"))?;
                outer.send_mounted()?;
                outer.wait_unpinned()
            }
            Step::HandOverConsole => {
                let (master, _) = self
                    .console
                    .as_ref()
                    .ok_or_else(|| missing("the console"))?;
                self.end.send_console(master.as_fd())
            }
            Step::ShareMounts => crate::guest::rootfs::mounts::propagation(
                Path::new("/"),
                nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC,
            ),
            Step::AwaitNetworkLinks => self.end.wait_network_ready(),
            Step::AttachConsole => {
                // The master went to the launcher; the peer is the console.
                let peer = self.console.take().map(|(_, peer)| peer);
                // With --as-pid2 the payload, not the stub, takes the
                // console as its controlling terminal (after the fork).
                exec::attach_stdio(peer, spec.console, !spec.process.as_pid2)
            }
            Step::Chdir => {
                let cwd = spec
                    .working_directory
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/"));
                nix::unistd::chdir(&cwd).map_err(|e| Error::io("chdir", &cwd, e.into()))
            }
            Step::FindPayload => {
                // The host's os-release, bound in by PopulateRunHost.
                let host =
                    std::fs::read_to_string(environment::HOST_OS_RELEASE).unwrap_or_default();
                if let Some(user) = &spec.process.user {
                    self.user = crate::guest::process::lookup(user)?;
                }
                let env = environment::for_pid1_as(
                    spec,
                    &host,
                    self.user
                        .as_ref()
                        .map(|u| (u.given.as_str(), u.home.as_path())),
                );
                self.payload = Some(exec::Payload::resolve(spec, env)?);
                Ok(())
            }
            Step::InstallSeccomp => {
                let prog = seccomp::program(self.capabilities(), &spec.syscall_filter)?;
                seccomp::install(&prog)
            }
            Step::InstallProcessFilters => {
                let p = &spec.process;
                if let Some(f) = &p.address_families {
                    seccomp::install(&seccomp::extra::address_families(f))?;
                }
                if p.suppress_sync {
                    seccomp::install(&seccomp::extra::suppress_sync())?;
                }
                Ok(())
            }
            Step::ApplyProcessLimits => crate::guest::process::apply_limits(&spec.process),
            Step::SwitchUser => match &self.user {
                Some(user) => {
                    crate::guest::process::switch_user(user, spec.console.has_pty())?;
                    // A credential change clears PDEATHSIG: again.
                    die_with_parent(self.end)
                }
                None => Ok(()),
            },
            Step::DropCapabilities => capabilities::restrict_to(
                self.capabilities(),
                &spec.process.ambient,
                self.user.is_none(),
            ),
            Step::NoNewPrivileges => nix::sys::prctl::set_no_new_privs()
                .map_err(|e| Error::syscall("prctl(PR_SET_NO_NEW_PRIVS)", e)),
            Step::CloseDescriptors => {
                sys::cloexec_from(3).map_err(|e| Error::syscall("close_range", e))
            }
            // As nspawn: PID 1 starts with every signal at its default and
            // none blocked, whatever the launcher (or its caller) ignored
            // or blocked; and with the usual umask.
            Step::ResetSignals => {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
                sys::reset_signal_dispositions().map_err(|e| Error::syscall("rt_sigaction", e))?;
                sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                    .map_err(|e| Error::syscall("sigprocmask", e))
            }
        }
    }
}

/// PDEATHSIG, then make sure the launcher did not die before it was set.
pub(crate) fn die_with_parent(end: &ContainerEnd) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| Error::syscall("prctl(PR_SET_PDEATHSIG)", e))?;
    if end.launcher_gone() {
        sys::exit_now(1);
    }
    Ok(())
}

fn become_guest_root() -> Result<()> {
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(|e| Error::syscall("setresgid", e))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(|e| Error::syscall("setresuid", e))?;
    nix::unistd::setgroups(&[]).map_err(|e| Error::syscall("setgroups", e))
}

fn loopback_up() -> Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::syscall("socket(AF_INET)", e))?;
    sys::interface_up(sock.as_fd(), c"lo").map_err(|e| Error::syscall("ioctl(SIOCSIFFLAGS, lo)", e))
}
