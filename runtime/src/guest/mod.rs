//! The container process: runs between clone3 and execve, in the new
//! namespaces, and assembles what the guest sees. `steps` is the plan,
//! `setup` carries it out, `exec` ends it; this module drives the stages
//! (the outer process and, under a user namespace, the guest's PID 1) and
//! their hand-overs. Errors go back to the launcher over the handshake;
//! this process never returns.

pub mod apifs;
pub(crate) mod bind_user;
pub mod credentials;
pub mod environment;
pub(crate) mod exec;
pub mod journal;
pub(crate) mod process;
pub mod rootfs;
pub(crate) mod setup;
pub(crate) mod steps;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Error, Failure};
use crate::handshake::{ContainerEnd, InnerEnd, inner_pair};
use crate::spec::Spec;
use crate::sys::{self, Forked};
use setup::{Assembled, Setup};
use steps::Shape;

pub use exec::INIT_CANDIDATES;

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
    /// The network namespace to join, links to wait for, resolv.conf and
    /// timezone (see `launcher::network`).
    pub network: &'a crate::launcher::network::GuestNetwork,
}

impl Plan<'_> {
    /// What the step plan depends on besides the spec.
    fn shape(&self) -> Shape {
        use crate::network::resolv::{ResolvAction, TimezoneAction};
        Shape {
            userns: self.userns.is_some(),
            idmapped: self.userns.is_some_and(|u| u.mapping.is_some()),
            await_placement: self.await_placement,
            await_links: self.network.await_links,
            resolv_conf: self.network.resolv != ResolvAction::Off,
            timezone: self.network.timezone != TimezoneAction::Off,
            store_overlay: self.store_overlay.is_some(),
        }
    }
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

/// Run one named step of the stages' own (hand-overs, the pivot, the clone).
fn step<T>(name: &str, f: impl FnOnce() -> crate::error::Result<T>) -> StepResult<T> {
    f().map_err(|e| (name.to_owned(), e))
}

/// Everything that needs the host's privileges; with a user namespace this
/// runs in the outer process, which then hands over to the guest's PID 1.
fn setup_and_exec(plan: &Plan<'_>, end: &ContainerEnd) -> StepResult<Never> {
    let spec = plan.spec;
    let shape = plan.shape();
    let mut setup = Setup::new(plan, end);
    steps::drive(&mut setup, &steps::outer(spec, shape))?;
    let notify = step("hand over the notify socket", || {
        setup
            .notify
            .take()
            .ok_or_else(|| Error::Protocol("no notify socket was made".into()))
    })?;
    let root = step("switch root", || Ok(setup.root()?.to_path_buf()))?;

    if plan.userns.is_none() {
        step("hand over the notify socket and console", || {
            end.send_handles(
                notify.as_fd(),
                setup.console.as_ref().map(|(master, _)| master.as_fd()),
            )
        })?;
        drop(notify);
        step("switch root", || rootfs::switch_root(&root))?;
        return finish(setup);
    }

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
    step("switch root", || rootfs::switch_root(&root))?;
    let at = step("switch root", || {
        setup
            .at
            .as_ref()
            .map(Assembled::pivoted)
            .ok_or_else(|| Error::Protocol("the root was never assembled".into()))
    })?;
    drop(setup);
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
            pid1(plan, end, at, inner_end)
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
/// create the console, and finish.
fn pid1(plan: &Plan<'_>, end: &ContainerEnd, at: Assembled, outer: InnerEnd) -> StepResult<Never> {
    let mut setup = Setup::pid1(plan, end, at, outer);
    steps::drive(&mut setup, &steps::inner(plan.spec))?;
    finish(setup)
}

/// In the pivoted root: the last steps (console, working directory,
/// payload, seccomp, capabilities, descriptors, signals), then exec.
fn finish(mut setup: Setup<'_>) -> StepResult<Never> {
    let spec: &Spec = setup.spec();
    let shape = setup.plan().shape();
    steps::drive(&mut setup, &steps::last(spec, shape))?;
    let payload = step("exec the payload", || setup.payload())?;
    if spec.process.as_pid2 {
        return Err((
            "exec the payload".to_owned(),
            payload.exec_as_pid2(spec.console, &spec.uuid),
        ));
    }
    Err(("exec the payload".to_owned(), payload.exec()))
}
