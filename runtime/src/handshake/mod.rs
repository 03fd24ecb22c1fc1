//! The handshake between the launcher and the container process, step by
//! step. Each side has an end with one method per step; a wait accepts only
//! the message its step expects (or the peer's report of a failure), names
//! what it waited for when the peer is gone or says something else, and
//! hands descriptors over in named fields, never by position.
//!
//! Without a user namespace (one container process, which becomes PID 1):
//! 1. launcher → container `Placed` (only where a systemd host's scope must
//!    see the process registered before it takes its cgroup namespace);
//! 2. container → launcher `Handles`: the notify socket, the console's pty
//!    master if there is a console;
//! 3. launcher → container `NetworkReady` (only with links to set up: the
//!    launcher makes them in the container's network namespace, while the
//!    container sets up its root, and the payload must find them there);
//! 4. the container end closes when the payload is exec'd (close-on-exec).
//!
//! With a user namespace (an outer process with the host's privileges
//! assembles the root and clones PID 1 into the guest's namespaces):
//! 1. outer → launcher `Handles`: the notify socket;
//! 2. outer → launcher `Pid1`: PID 1's pidfd and the outer mount namespace;
//! 3. launcher → PID 1 `MapsWritten` (its ID maps are written, it is
//!    placed in its cgroup);
//! 4. PID 1 → outer `Mounted` (its own /proc and /sys are up), outer →
//!    PID 1 `Unpinned` (the host's /proc and /sys pins are gone) over a
//!    second pair between the two container processes;
//! 5. PID 1 → launcher `Console`: the pty master, which only it can make;
//! 6. launcher → PID 1 `NetworkReady` (as step 3 above);
//! 7. the container end closes when PID 1 exec'd and the outer one exited.
//!
//! Any step may instead bring `Failed`: the step's name, the errno and path
//! where there are, and the message.

pub(crate) mod channel;

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::error::{Error, Result};
use crate::error::{Failure, HandshakeError};
use channel::Channel;

/// Messages from the container processes to the launcher.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum ToLauncher {
    /// Descriptors: the notify socket, then the pty master if `console`.
    Handles {
        console: bool,
    },
    /// Descriptors: PID 1's pidfd, then the outer mount namespace.
    Pid1 {
        pid: i32,
    },
    /// Descriptor: the pty master.
    Console,
    /// Something that went wrong and was ignored, as nspawn warns and goes
    /// on (a resolv.conf or timezone it could not set up). May come before
    /// any other message; the launcher collects them.
    Warning(String),
    Failed(Failure),
}

/// Messages from the launcher to the container processes.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum ToContainer {
    Placed,
    MapsWritten,
    NetworkReady,
}

/// Between the outer process and PID 1 under a user namespace.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Between {
    /// PID 1 mounted its own /proc and /sys: the pins can go.
    Mounted,
    /// The pins are gone.
    Unpinned,
}

/// What the container process handed over at step `Handles`.
pub(crate) struct Handles {
    pub notify: OwnedFd,
    pub console: Option<OwnedFd>,
}

/// What the outer process handed over at step `Pid1`.
pub(crate) struct Pid1 {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The outer process's mount namespace, of which the guest's is a
    /// locked copy (`nixspawnctl update` mounts there).
    pub outer_mounts: OwnedFd,
}

/// The launcher's end.
pub(crate) struct LauncherEnd {
    channel: Channel,
    /// Warnings received so far, in order, for `take_warnings`.
    warnings: std::cell::RefCell<Vec<String>>,
}

/// The container processes' end.
pub(crate) struct ContainerEnd(Channel);

/// A connected pair of ends, close-on-exec both.
pub(crate) fn pair() -> Result<(LauncherEnd, ContainerEnd)> {
    let (a, b) = channel::pair()?;
    Ok((
        LauncherEnd {
            channel: a,
            warnings: Default::default(),
        },
        ContainerEnd(b),
    ))
}

fn want_fds(step: &'static str, fds: &[OwnedFd], want: usize) -> Result<()> {
    if fds.len() == want {
        Ok(())
    } else {
        Err(HandshakeError::Descriptors {
            step,
            want,
            got: fds.len(),
        }
        .into())
    }
}

impl LauncherEnd {
    /// The next message, which must be `expected`'s (or a failure report).
    fn next(&self, expected: &'static str) -> Result<(ToLauncher, Vec<OwnedFd>)> {
        match self.recv()? {
            None => Err(HandshakeError::PeerGone {
                peer: "container process",
                us: "launcher",
                expected,
            }
            .into()),
            Some((ToLauncher::Failed(f), _)) => Err(Error::Child(f)),
            Some(m) => Ok(m),
        }
    }

    fn unexpected(expected: &'static str, got: ToLauncher) -> Error {
        HandshakeError::Unexpected {
            us: "launcher",
            expected,
            got: format!("{got:?}"),
        }
        .into()
    }

    /// The next message that is not a warning (warnings are kept).
    fn recv(&self) -> Result<Option<(ToLauncher, Vec<OwnedFd>)>> {
        loop {
            match self.channel.recv::<ToLauncher>()? {
                Some((ToLauncher::Warning(w), _)) => self.warnings.borrow_mut().push(w),
                other => return Ok(other),
            }
        }
    }

    /// The warnings the container processes sent so far.
    pub fn take_warnings(&self) -> Vec<String> {
        self.warnings.take()
    }

    pub fn send_placed(&self) -> Result<()> {
        self.channel.send(&ToContainer::Placed, &[])
    }

    pub fn send_maps_written(&self) -> Result<()> {
        self.channel.send(&ToContainer::MapsWritten, &[])
    }

    pub fn send_network_ready(&self) -> Result<()> {
        self.channel.send(&ToContainer::NetworkReady, &[])
    }

    pub fn handles(&self) -> Result<Handles> {
        const STEP: &str = "the notify socket and console";
        match self.next(STEP)? {
            (ToLauncher::Handles { console }, mut fds) => {
                want_fds(STEP, &fds, 1 + usize::from(console))?;
                let console = console.then(|| fds.remove(1));
                Ok(Handles {
                    notify: fds.remove(0),
                    console,
                })
            }
            (other, _) => Err(Self::unexpected(STEP, other)),
        }
    }

    pub fn pid1(&self) -> Result<Pid1> {
        const STEP: &str = "PID 1's hand-over";
        match self.next(STEP)? {
            (ToLauncher::Pid1 { pid }, mut fds) => {
                want_fds(STEP, &fds, 2)?;
                let outer_mounts = fds.remove(1);
                Ok(Pid1 {
                    pid,
                    pidfd: fds.remove(0),
                    outer_mounts,
                })
            }
            (other, _) => Err(Self::unexpected(STEP, other)),
        }
    }

    pub fn console(&self) -> Result<OwnedFd> {
        const STEP: &str = "the console";
        match self.next(STEP)? {
            (ToLauncher::Console, mut fds) => {
                want_fds(STEP, &fds, 1)?;
                Ok(fds.remove(0))
            }
            (other, _) => Err(Self::unexpected(STEP, other)),
        }
    }

    /// The container end closed: the payload was exec'd.
    pub fn exec(&self) -> Result<()> {
        const STEP: &str = "the payload's exec";
        match self.recv()? {
            None => Ok(()),
            Some((ToLauncher::Failed(f), _)) => Err(Error::Child(f)),
            Some((other, _)) => Err(Self::unexpected(STEP, other)),
        }
    }
}

impl ContainerEnd {
    fn wait(&self, expected: ToContainer, what: &'static str) -> Result<()> {
        match self.0.recv::<ToContainer>()? {
            Some((got, _)) if got == expected => Ok(()),
            Some((got, _)) => Err(HandshakeError::Unexpected {
                us: "container process",
                expected: what,
                got: format!("{got:?}"),
            }
            .into()),
            None => Err(HandshakeError::PeerGone {
                peer: "launcher",
                us: "container process",
                expected: what,
            }
            .into()),
        }
    }

    pub fn wait_placed(&self) -> Result<()> {
        self.wait(ToContainer::Placed, "its placement in the payload cgroup")
    }

    pub fn wait_maps_written(&self) -> Result<()> {
        self.wait(ToContainer::MapsWritten, "its ID maps")
    }

    pub fn wait_network_ready(&self) -> Result<()> {
        self.wait(ToContainer::NetworkReady, "its network links")
    }

    pub fn send_handles(
        &self,
        notify: BorrowedFd<'_>,
        console: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let mut fds = vec![notify];
        fds.extend(console);
        self.0.send(
            &ToLauncher::Handles {
                console: console.is_some(),
            },
            &fds,
        )
    }

    pub fn send_pid1(
        &self,
        pid: i32,
        pidfd: BorrowedFd<'_>,
        outer_mounts: BorrowedFd<'_>,
    ) -> Result<()> {
        self.0
            .send(&ToLauncher::Pid1 { pid }, &[pidfd, outer_mounts])
    }

    pub fn send_console(&self, master: BorrowedFd<'_>) -> Result<()> {
        self.0.send(&ToLauncher::Console, &[master])
    }

    pub fn send_warning(&self, text: String) -> Result<()> {
        self.0.send(&ToLauncher::Warning(text), &[])
    }

    pub fn send_failure(&self, failure: Failure) -> Result<()> {
        self.0.send(&ToLauncher::Failed(failure), &[])
    }

    /// Has the launcher closed its end (it died)?
    pub fn launcher_gone(&self) -> bool {
        self.0.peer_closed()
    }
}

/// The outer process's end of its pair with PID 1 (user namespaces only).
pub(crate) struct OuterEnd(Channel);
/// PID 1's end of that pair.
pub(crate) struct InnerEnd(Channel);

pub(crate) fn inner_pair() -> Result<(OuterEnd, InnerEnd)> {
    let (a, b) = channel::pair()?;
    Ok((OuterEnd(a), InnerEnd(b)))
}

fn wait_between(
    ch: &Channel,
    expected: Between,
    us: &'static str,
    peer: &'static str,
    what: &'static str,
) -> Result<()> {
    match ch.recv::<Between>()? {
        Some((got, _)) if got == expected => Ok(()),
        Some((got, _)) => Err(HandshakeError::Unexpected {
            us,
            expected: what,
            got: format!("{got:?}"),
        }
        .into()),
        None => Err(HandshakeError::PeerGone {
            peer,
            us,
            expected: what,
        }
        .into()),
    }
}

impl OuterEnd {
    /// Ok(false) when PID 1 went away first (it reported its own failure).
    pub fn wait_mounted(&self) -> Result<bool> {
        match wait_between(
            &self.0,
            Between::Mounted,
            "outer process",
            "guest's PID 1",
            "/proc and /sys of the guest",
        ) {
            Ok(()) => Ok(true),
            Err(Error::Handshake(HandshakeError::PeerGone { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn send_unpinned(&self) -> Result<()> {
        self.0.send(&Between::Unpinned, &[])
    }
}

impl InnerEnd {
    pub fn send_mounted(&self) -> Result<()> {
        self.0.send(&Between::Mounted, &[])
    }

    pub fn wait_unpinned(&self) -> Result<()> {
        wait_between(
            &self.0,
            Between::Unpinned,
            "guest's PID 1",
            "outer process",
            "the removal of /run/host/{proc,sys}",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn file() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn handles_arrive_in_named_slots() {
        let (launcher, container) = pair().unwrap();
        let (notify, console) = (file(), file());
        container
            .send_handles(notify.as_fd(), Some(console.as_fd()))
            .unwrap();
        let h = launcher.handles().unwrap();
        assert!(h.console.is_some());
        container.send_handles(notify.as_fd(), None).unwrap();
        assert!(launcher.handles().unwrap().console.is_none());
    }

    #[test]
    fn end_of_file_is_the_exec_and_a_gone_peer_elsewhere() {
        let (launcher, container) = pair().unwrap();
        drop(container);
        launcher.exec().unwrap();
        let (launcher, container) = pair().unwrap();
        drop(container);
        let e = launcher.handles().err().unwrap();
        assert!(
            matches!(
                e,
                Error::Handshake(HandshakeError::PeerGone {
                    expected: "the notify socket and console",
                    ..
                })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("went away"), "{e}");
    }

    #[test]
    fn warnings_may_come_before_any_step_and_are_kept_in_order() {
        let (launcher, container) = pair().unwrap();
        container.send_warning("first".into()).unwrap();
        container.send_handles(file().as_fd(), None).unwrap();
        container.send_warning("second".into()).unwrap();
        launcher.handles().unwrap();
        drop(container);
        launcher.exec().unwrap();
        assert_eq!(launcher.take_warnings(), ["first", "second"]);
        assert!(launcher.take_warnings().is_empty());
    }

    #[test]
    fn a_message_out_of_order_is_named() {
        let (launcher, container) = pair().unwrap();
        container.send_console(file().as_fd()).unwrap();
        let e = launcher.handles().err().unwrap();
        assert!(
            matches!(e, Error::Handshake(HandshakeError::Unexpected { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("notify socket"), "{e}");
        // And the other way round.
        launcher.send_maps_written().unwrap();
        let e = container.wait_placed().err().unwrap();
        assert!(e.to_string().contains("MapsWritten"), "{e}");
    }

    #[test]
    fn descriptors_are_counted() {
        let (launcher, container) = pair().unwrap();
        // A Pid1 message with one descriptor instead of two.
        container
            .0
            .send(&ToLauncher::Pid1 { pid: 7 }, &[file().as_fd()])
            .unwrap();
        let e = launcher.pid1().err().unwrap();
        assert!(
            matches!(
                e,
                Error::Handshake(HandshakeError::Descriptors {
                    want: 2,
                    got: 1,
                    ..
                })
            ),
            "{e}"
        );
    }

    #[test]
    fn failures_carry_step_errno_and_path() {
        let (launcher, container) = pair().unwrap();
        let cause = Error::io(
            "mounting",
            "/run/x",
            std::io::Error::from_raw_os_error(libc::EPERM),
        );
        container
            .send_failure(Failure::new("mount /run", &cause))
            .unwrap();
        match launcher.handles() {
            Err(Error::Child(f)) => {
                assert_eq!(f.step, "mount /run");
                assert_eq!(f.errno, Some(libc::EPERM));
                assert_eq!(f.path.as_deref(), Some(std::path::Path::new("/run/x")));
                assert!(f.message.contains("/run/x"), "{}", f.message);
            }
            other => panic!("{:?}", other.err()),
        }
        // A failure is accepted in place of any step, also the exec.
        container
            .send_failure(Failure::new("exec", &cause))
            .unwrap();
        assert!(matches!(launcher.exec(), Err(Error::Child(_))));
    }

    #[test]
    fn the_two_container_processes_step_together() {
        let (outer, inner) = inner_pair().unwrap();
        inner.send_mounted().unwrap();
        assert!(outer.wait_mounted().unwrap());
        outer.send_unpinned().unwrap();
        inner.wait_unpinned().unwrap();
        drop(inner);
        // PID 1 gone before it mounted: not an error of the outer process.
        assert!(!outer.wait_mounted().unwrap());
        let (outer, inner) = inner_pair().unwrap();
        drop(outer);
        assert!(inner.wait_unpinned().is_err());
    }
}
