//! The container process: runs between clone3 and execve, in the new
//! namespaces, and assembles what the guest sees. Errors go back to the
//! launcher over the channel; this process never returns.

pub mod apifs;
pub mod credentials;
pub mod environment;
pub mod journal;
pub mod rootfs;

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

use crate::error::Failure;
use crate::error::{Error, Result};
use crate::guest::apifs::{devfs, procfs, runhost, sysfs};
use crate::guest::rootfs::mounts::{MountContext, Owner, Target};
use crate::guest::rootfs::resolve::Create;
use crate::handshake::{ContainerEnd, InnerEnd, inner_pair};
use crate::nixos::store;
use crate::security::{capabilities, seccomp};
use crate::spec::{ConsoleMode, Payload, Spec};
use crate::sys;
use crate::sys::Forked;

/// Where systemd-nspawn looks for an init with --boot.
pub const INIT_CANDIDATES: &[&str] = &[
    "/usr/lib/systemd/systemd",
    "/lib/systemd/systemd",
    "/sbin/init",
];

pub(crate) struct Plan<'a> {
    pub spec: &'a Spec,
    pub mount_point: PathBuf,
    /// An empty directory outside the root for assembling the store.
    pub store_staging: PathBuf,
    /// The closure-only store as one detached overlay mount, if the
    /// launcher could make it (else one bind per path is made here).
    pub store_overlay: Option<&'a OwnedFd>,
    /// What the payload keeps (decided once by the launcher).
    pub capabilities: &'a std::collections::HashSet<caps::Capability>,
    pub userns: Option<&'a crate::userns::Plan>,
    /// Started in the scope's root: wait until the launcher registered the
    /// machine and moved us into `payload` before taking a cgroup namespace.
    pub await_placement: bool,
}

/// Run the setup and exec the payload; report failure and exit otherwise.
pub(crate) fn run(plan: &Plan<'_>, end: ContainerEnd) -> ! {
    // A panic here must not unwind into the launcher's copied stack frames.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| setup_and_exec(plan, &end)));
    let failure = match result {
        Ok(Err((step, e))) => Failure::new(step, &e),
        Ok(Ok(never)) => match never {},
        Err(_) => Failure {
            step: "setup".to_owned(),
            errno: None,
            path: None,
            message: "the container process panicked".to_owned(),
        },
    };
    let _ = end.send_failure(failure);
    sys::exit_now(1)
}

enum Never {}

type StepResult<T> = std::result::Result<T, (String, Error)>;

/// Run one named setup step, timed for `--debug`.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> StepResult<T> {
    let start = std::time::Instant::now();
    let r = f();
    tracing::debug!(target: "nixspawn::child", "{name}: {} µs{}", start.elapsed().as_micros(), if r.is_err() { " (failed)" } else { "" });
    r.map_err(|e| (name.to_owned(), e))
}

/// Where the guest's filesystem was assembled (paths resolved inside it),
/// for the guest's PID 1 to find after pivoting. The outer process itself
/// works through the mounts' descriptors, never these paths.
struct Assembled {
    root: PathBuf,
    host: PathBuf,
    dev: PathBuf,
    proc: PathBuf,
    sys: PathBuf,
}

impl Assembled {
    /// The same places as seen after pivoting into the root.
    fn pivoted(&self) -> Assembled {
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

/// Everything that needs the host's privileges; with a user namespace this
/// runs in the outer process, which then hands over to the inner one.
fn setup_and_exec(plan: &Plan<'_>, end: &ContainerEnd) -> StepResult<Never> {
    let spec = plan.spec;
    let owner = Owner(plan.userns.map(|u| u.range.shift));
    step("die with the launcher", || die_with_parent(end))?;
    if plan.await_placement {
        step("wait for registration", || end.wait_placed())?;
    }
    if plan.userns.is_none() {
        step("unshare the cgroup namespace", || {
            sys::unshare(libc::CLONE_NEWCGROUP)
                .map_err(|e| Error::syscall("unshare(CLONE_NEWCGROUP)", e))
        })?;
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());

    step("isolate mounts from the host", rootfs::isolate_from_host)?;
    let idmapped_root = plan.userns.and_then(|u| u.root.as_ref());
    let root = step("assemble the root", || {
        rootfs::assemble(
            spec.directory.as_deref(),
            &plan.mount_point,
            spec.ephemeral,
            owner,
            idmapped_root,
        )
    })?;
    if spec.private_network && plan.userns.is_none() {
        step("bring up lo", loopback_up)?;
    }
    // Every mount below lands on exactly what was resolved in the tree
    // (its descriptor), and what is done inside our own mounts goes
    // through theirs: a directory of the tree swapped for a link to the
    // host meanwhile can redirect nothing.
    let run = step("mount /run and /tmp", || {
        runhost::mount_run_and_tmp(&root, owner)
    })?;
    let (host, notify) = step("populate /run/host", || {
        runhost::populate(&run, &spec.uuid, owner)
    })?;
    drop(run);
    let dev = step("mount /dev", || devfs::mount_dev(&root, owner))?;
    let (proc, sys) = step("resolve /proc and /sys", || {
        Ok((
            Target::resolve(&root, Path::new("/proc"), Create::Dir(0o555))?,
            Target::resolve(&root, Path::new("/sys"), Create::Dir(0o555))?,
        ))
    })?;
    let at = Assembled {
        root,
        host: host.shown().to_path_buf(),
        dev: dev.shown().to_path_buf(),
        proc: proc.shown().to_path_buf(),
        sys: sys.shown().to_path_buf(),
    };
    let root = &at.root;
    if plan.userns.is_none() {
        step("mount /proc", || {
            procfs::mount_proc_on(&proc, &host.path(), spec.private_network)
        })?;
        step("mount /sys", || sysfs::mount_sys_on(&sys))?;
        step("mount /dev/pts and /dev/mqueue", || {
            devfs::mount_pts_and_mqueue(&dev.path())
        })?;
    } else {
        step("pin /proc and /sys", || {
            runhost::pin_api_filesystems(&host.path())
        })?;
    }
    drop((proc, sys));
    let mut store_mount = None;
    if let Some(store) = &spec.store {
        let idmapped_store = plan.userns.and_then(|u| u.store.as_ref());
        store_mount = step("mount the store", || {
            store::mount_store(
                root,
                &plan.store_staging,
                store,
                owner,
                idmapped_store,
                plan.store_overlay,
            )
        })?;
    }
    let ctx = MountContext {
        owner,
        mapping: plan
            .userns
            .and_then(|u| u.mapping.as_ref().map(|m| (u.range, m))),
    };
    for m in &spec.mounts {
        step("apply custom mounts", || m.apply(root, &ctx))?;
    }
    // Not for ephemeral runs, whose journal goes with them (as nspawn).
    if let (Some(tree), false) = (&spec.directory, spec.ephemeral) {
        step("link the journal", || {
            crate::guest::journal::link(spec.link_journal, root, tree, owner)
        })?;
    }
    if let Some(store) = &spec.store {
        // Under a user namespace this happens before the guest's namespaces
        // exist, so the kernel locks the flag there: its root cannot undo
        // it. `nixspawnctl update` adds paths through this (the outer)
        // mount namespace, which the launcher keeps, and from which they
        // propagate into the guest's, locked as well.
        step("seal the store", || store::seal_store(store_mount.as_ref()))?;
        step("link the system profile", || {
            store::link_profile(root, &store.toplevel)
        })?;
        if store.nix_daemon {
            step("pass the nix-daemon socket", || {
                store::pass_nix_daemon(root)
            })?;
        }
    }
    if !spec.credentials.is_empty() {
        step("install credentials", || {
            credentials::install(&host.path(), &spec.credentials, owner)
        })?;
    }
    step("seal /run/host", || runhost::seal(&host.path()))?;

    let Some(_) = plan.userns else {
        step("set the hostname", || {
            nix::unistd::sethostname(&spec.hostname).map_err(|e| Error::syscall("sethostname", e))
        })?;
        let console = if spec.console.has_pty() {
            Some(step("create the console", || {
                devfs::make_console(&dev.path())
            })?)
        } else {
            None
        };
        step("hand over the notify socket and console", || {
            end.send_handles(
                notify.as_fd(),
                console.as_ref().map(|(master, _)| master.as_fd()),
            )
        })?;
        drop(notify);
        step("switch root", || rootfs::switch_root(root))?;
        return finish_and_exec(plan, console.map(|(_, peer)| peer));
    };

    // The guest's own namespaces, owned by its user namespace. We pivot
    // first (in the guest's namespace the root would be locked to its
    // parent), then clone PID 1 as the launcher's child (CLONE_PARENT), so
    // the launcher can write its ID maps and wait for it. Once it has
    // mounted its own /proc and /sys, the pins go and this process ends.
    step("hand over the notify socket", || {
        end.send_handles(notify.as_fd(), None)
    })?;
    drop(notify);
    // This mount namespace, owned by the host's user namespace: the guest's
    // mounts are locked copies of its shared mounts and keep receiving
    // what is mounted on them here (`nixspawnctl update`).
    let outer_mounts: OwnedFd = step("open the outer mount namespace", || {
        std::fs::File::open("/proc/self/ns/mnt")
            .map(OwnedFd::from)
            .map_err(|e| Error::io("opening", "/proc/self/ns/mnt", e))
    })?;
    step("switch root", || rootfs::switch_root(root))?;
    let at = at.pivoted();
    let (outer, inner_end) = step("pair with PID 1", inner_pair)?;
    let mut flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC) as u64;
    if spec.private_network {
        flags |= libc::CLONE_NEWNET as u64;
    }
    // With CLONE_PARENT the exit signal is inherited (SIGCHLD) and must be 0 here.
    flags |= libc::CLONE_PARENT as u64;
    match step("clone the guest's PID 1", || {
        sys::clone3(flags, 0, None).map_err(|e| Error::syscall("clone3(CLONE_NEWUSER)", e))
    })? {
        Forked::Child => {
            drop(outer);
            inner(plan, end, &at, inner_end)
        }
        Forked::Parent { pid, pidfd } => {
            drop(inner_end);
            let pidfd = pidfd.ok_or_else(|| {
                (
                    "clone the guest's PID 1".to_owned(),
                    Error::Protocol("no pidfd".into()),
                )
            })?;
            step("hand over PID 1", || {
                end.send_pid1(pid, pidfd.as_fd(), outer_mounts.as_fd())
            })?;
            // PID 1 failed (it reports to the launcher itself) if it ends
            // before it mounted its /proc and /sys.
            if !step("wait for PID 1's /proc and /sys", || outer.wait_mounted())? {
                sys::exit_now(0);
            }
            step("drop the /proc and /sys pins", || {
                for pin in ["proc", "sys"] {
                    let p = at.host.join(pin);
                    nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH)
                        .map_err(|e| Error::io("unmounting", &p, e.into()))?;
                }
                Ok(())
            })?;
            let _ = outer.send_unpinned();
            sys::exit_now(0)
        }
    }
}

/// PID 1 in the guest's user namespace: wait for the ID maps, become its
/// root, mount what only it may (/proc, /sys, cgroup2, devpts, mqueue),
/// create the console, pivot and exec.
fn inner(
    plan: &Plan<'_>,
    end: &ContainerEnd,
    at: &Assembled,
    outer: InnerEnd,
) -> StepResult<Never> {
    let spec = plan.spec;
    step("die with the launcher", || die_with_parent(end))?;
    step("wait for the ID maps", || end.wait_maps_written())?;
    step("become the guest's root", || {
        let root_gid = nix::unistd::Gid::from_raw(0);
        let root_uid = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid)
            .map_err(|e| Error::syscall("setresgid", e))?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid)
            .map_err(|e| Error::syscall("setresuid", e))?;
        nix::unistd::setgroups(&[]).map_err(|e| Error::syscall("setgroups", e))
    })?;
    // The uid change cleared the parent-death signal: set it again (and
    // make sure the launcher did not die in between).
    step("die with the launcher as the guest's root", || {
        die_with_parent(end)
    })?;
    step("unshare the cgroup namespace", || {
        sys::unshare(libc::CLONE_NEWCGROUP)
            .map_err(|e| Error::syscall("unshare(CLONE_NEWCGROUP)", e))
    })?;
    if spec.private_network {
        step("bring up lo", loopback_up)?;
    }
    // The pinned /proc and /sys are what allow these.
    step("mount /proc", || {
        procfs::mount_proc(&at.proc, &at.host, spec.private_network)
    })?;
    if spec.private_network {
        step("mount /sys", || sysfs::mount_sys(&at.sys))?;
    } else {
        step("bind /sys", || {
            sysfs::bind_host_sys(&at.sys, &at.host.join("sys"))
        })?;
    }
    step("wait for the pins to go", || {
        outer.send_mounted()?;
        outer.wait_unpinned()
    })?;
    step("mount /dev/pts and /dev/mqueue", || {
        devfs::mount_pts_and_mqueue(&at.dev)
    })?;
    step("set the hostname", || {
        nix::unistd::sethostname(&spec.hostname).map_err(|e| Error::syscall("sethostname", e))
    })?;
    let console = if spec.console.has_pty() {
        let (master, peer) = step("create the console", || devfs::make_console(&at.dev))?;
        step("hand over the console", || end.send_console(master.as_fd()))?;
        Some(peer)
    } else {
        None
    };
    step("share mounts", || {
        crate::guest::rootfs::mounts::propagation(
            Path::new("/"),
            nix::mount::MsFlags::MS_SHARED | nix::mount::MsFlags::MS_REC,
        )
    })?;
    finish_and_exec(plan, console)
}

/// In the pivoted root: console, working directory, payload, seccomp,
/// capabilities, and exec.
fn finish_and_exec(plan: &Plan<'_>, console: Option<OwnedFd>) -> StepResult<Never> {
    let spec = plan.spec;
    step("attach the console", || attach_stdio(console, spec.console))?;
    let cwd = spec
        .working_directory
        .clone()
        .unwrap_or_else(|| PathBuf::from("/"));
    step("chdir", || {
        nix::unistd::chdir(&cwd).map_err(|e| Error::io("chdir", &cwd, e.into()))
    })?;
    let env = environment::for_pid1(spec);
    let (path, argv) = step("find the payload", || resolve_payload(spec, &env))?;
    let caps = plan.capabilities.clone();
    if spec.seccomp {
        // Before dropping capabilities: without no_new_privs, loading a
        // filter needs CAP_SYS_ADMIN (which --drop-capability may take).
        let prog = step("build the seccomp filter", || {
            seccomp::program(&caps, &spec.syscall_filter)
        })?;
        step("install the seccomp filter", || seccomp::install(&prog))?;
    }
    step("drop capabilities", || capabilities::restrict_to(&caps))?;
    if spec.no_new_privileges {
        step("set no_new_privs", || {
            nix::sys::prctl::set_no_new_privs()
                .map_err(|e| Error::syscall("prctl(PR_SET_NO_NEW_PRIVS)", e))
        })?;
    }
    step("close descriptors", || {
        sys::cloexec_from(3).map_err(|e| Error::syscall("close_range", e))
    })?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // As nspawn: PID 1 starts with every signal at its default and none
    // blocked, whatever the launcher (or its caller) ignored or blocked.
    step("reset signals", || {
        sys::reset_signal_dispositions().map_err(|e| Error::syscall("rt_sigaction", e))?;
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(|e| Error::syscall("sigprocmask", e))
    })?;
    let env: Vec<CString> = env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let err = nix::unistd::execve(&path, &argv, &env).unwrap_err();
    Err((
        "exec the payload".to_owned(),
        Error::io(
            "execve",
            PathBuf::from(path.to_string_lossy().into_owned()),
            err.into(),
        ),
    ))
}

/// PDEATHSIG, then make sure the launcher did not die before it was set.
fn die_with_parent(end: &ContainerEnd) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| Error::syscall("prctl(PR_SET_PDEATHSIG)", e))?;
    if end.launcher_gone() {
        sys::exit_now(1);
    }
    Ok(())
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

fn attach_stdio(peer: Option<OwnedFd>, mode: ConsoleMode) -> Result<()> {
    nix::unistd::setsid().map_err(|e| Error::syscall("setsid", e))?;
    let Some(peer) = peer else {
        debug_assert_eq!(mode, ConsoleMode::Pipe);
        return Ok(());
    };
    sys::set_controlling_tty(peer.as_fd()).map_err(|e| Error::syscall("ioctl(TIOCSCTTY)", e))?;
    for target in 0..=2 {
        sys::dup_onto_stdio(peer.as_fd(), target).map_err(|e| Error::syscall("dup2", e))?;
    }
    Ok(())
}

fn executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
}

/// The path to exec and its argv, resolved inside the (pivoted) guest.
fn resolve_payload(spec: &Spec, env: &[(String, String)]) -> Result<(CString, Vec<CString>)> {
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| Error::InvalidValue {
            what: "argument",
            value: s.to_owned(),
            reason: "contains a NUL byte".into(),
        })
    };
    match &spec.payload {
        Payload::Boot { args } => {
            let init = INIT_CANDIDATES
                .iter()
                .find(|c| executable(Path::new(c)))
                .ok_or_else(|| Error::NoInit {
                    root: spec.root_description(),
                    candidates: INIT_CANDIDATES.join(", "),
                })?;
            let mut argv = vec![cstr(init)?];
            for a in args {
                argv.push(cstr(a)?);
            }
            Ok((cstr(init)?, argv))
        }
        Payload::Command { argv } => {
            let first = &argv[0];
            let path = if first.contains('/') {
                PathBuf::from(first)
            } else {
                let search = env
                    .iter()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or(environment::DEFAULT_PATH);
                search
                    .split(':')
                    .map(|d| Path::new(d).join(first))
                    .find(|p| executable(p))
                    .ok_or_else(|| Error::CommandNotFound {
                        command: first.clone(),
                        search_path: search.to_owned(),
                    })?
            };
            let path = cstr(&path.to_string_lossy())?;
            let argv = argv.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
            Ok((path, argv))
        }
    }
}
