//! The container process: runs between clone3 and execve, in the new
//! namespaces, and assembles what the guest sees. Errors go back to the
//! launcher over the channel; this process never returns.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

use crate::channel::{Channel, ToParent};
use crate::error::{Error, Result};
use crate::spec::{ConsoleMode, Payload, Spec};
use crate::{
    capabilities, credentials, devfs, environment, procfs, rootfs, runhost, seccomp, store, sys,
    sysfs,
};

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
    pub term: Option<String>,
}

/// Run the setup and exec the payload; report failure and exit otherwise.
pub(crate) fn run(plan: &Plan<'_>, channel: Channel) -> ! {
    // A panic here must not unwind into the launcher's copied stack frames.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        setup_and_exec(plan, &channel)
    }));
    let (step, message) = match result {
        Ok(Err((step, e))) => (step, e.to_string()),
        Ok(Ok(never)) => match never {},
        Err(_) => (
            "setup".to_owned(),
            "the container process panicked".to_owned(),
        ),
    };
    let _ = channel.send(&ToParent::Failed { step, message }, &[]);
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

fn setup_and_exec(plan: &Plan<'_>, channel: &Channel) -> StepResult<Never> {
    let spec = plan.spec;
    step("die with the launcher", || die_with_parent(channel))?;
    step("unshare the cgroup namespace", || {
        sys::unshare(libc::CLONE_NEWCGROUP)
            .map_err(|e| Error::syscall("unshare(CLONE_NEWCGROUP)", e))
    })?;
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());

    step("isolate mounts from the host", || {
        rootfs::isolate_from_host()
    })?;
    let root = step("assemble the root", || {
        rootfs::assemble(spec.directory.as_deref(), &plan.mount_point, spec.ephemeral)
    })?;
    if spec.private_network {
        step("bring up lo", loopback_up)?;
    }
    step("mount /run and /tmp", || runhost::mount_run_and_tmp(&root))?;
    let (host, notify) = step("populate /run/host", || {
        runhost::populate(&root, &spec.uuid)
    })?;
    step("mount /proc", || {
        procfs::mount_proc(&root, &host, spec.private_network)
    })?;
    step("mount /sys", || sysfs::mount_sys(&root))?;
    let dev = step("mount /dev", || devfs::mount_dev(&root))?;
    let console = if spec.console.has_pty() {
        Some(step("create the console", || devfs::make_console(&dev))?)
    } else {
        None
    };
    if let Some(store) = &spec.store {
        step("mount the store", || {
            store::mount_store(&root, &plan.store_staging, store)
        })?;
    }
    for m in &spec.mounts {
        step("apply custom mounts", || m.apply(&root))?;
    }
    if let Some(store) = &spec.store {
        step("seal the store", || store::seal_store(&root, store))?;
        step("link the system profile", || {
            store::link_profile(&root, &store.toplevel)
        })?;
        if store.nix_daemon {
            step("pass the nix-daemon socket", || {
                store::pass_nix_daemon(&root)
            })?;
        }
    }
    if !spec.credentials.is_empty() {
        step("install credentials", || {
            credentials::install(&host, &spec.credentials)
        })?;
    }
    step("seal /run/host", || runhost::seal(&host))?;
    step("set the hostname", || {
        nix::unistd::sethostname(&spec.hostname).map_err(|e| Error::syscall("sethostname", e))
    })?;

    let mut handles: Vec<BorrowedFd<'_>> = vec![notify.as_fd()];
    if let Some((master, _)) = &console {
        handles.push(master.as_fd());
    }
    step("hand over the console", || {
        channel.send(
            &ToParent::Handles {
                console: console.is_some(),
            },
            &handles,
        )
    })?;
    drop(notify);

    step("switch root", || rootfs::switch_root(&root))?;
    step("attach the console", || {
        attach_stdio(console.map(|(_, peer)| peer), spec.console)
    })?;
    let cwd = spec
        .working_directory
        .clone()
        .unwrap_or_else(|| PathBuf::from("/"));
    step("chdir", || {
        nix::unistd::chdir(&cwd).map_err(|e| Error::io("chdir", &cwd, e.into()))
    })?;
    let env = environment::for_pid1(spec, plan.term.as_deref());
    let (path, argv) = step("find the payload", || resolve_payload(spec, &env))?;
    let caps = spec.capabilities();
    if spec.seccomp {
        // Before dropping capabilities: without no_new_privs, loading a
        // filter needs CAP_SYS_ADMIN (which --drop-capability may take).
        let prog = seccomp::program(&caps, &spec.syscall_filter);
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
    step("unblock signals", || {
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
fn die_with_parent(channel: &Channel) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| Error::syscall("prctl(PR_SET_PDEATHSIG)", e))?;
    let mut fds = [nix::poll::PollFd::new(
        channel.as_fd(),
        nix::poll::PollFlags::empty(),
    )];
    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO);
    if fds[0]
        .revents()
        .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP))
    {
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
