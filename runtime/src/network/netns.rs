//! Network namespaces of our own, made without moving the caller into
//! them: a short-lived thread unshares its network namespace and hands
//! back a descriptor of it. The namespace lives exactly as long as that
//! descriptor and whatever else joins it (a guest, a link's peer), so a
//! test runner that holds it takes it along when it dies, even by SIGKILL.

use std::os::fd::OwnedFd;

use crate::error::{Error, Result};
use crate::network::rtnl::Rtnl;

/// A new, empty network namespace with `lo` up.
pub fn create() -> Result<OwnedFd> {
    // unshare(CLONE_NEWNET) changes only the calling thread, which ends
    // right after: the caller's threads never leave their namespace.
    let ns = std::thread::spawn(|| -> Result<OwnedFd> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::syscall("unshare(CLONE_NEWNET)", e))?;
        let path = "/proc/thread-self/ns/net";
        Ok(std::fs::File::open(path)
            .map_err(|e| Error::io("opening", path, e))?
            .into())
    })
    .join()
    .map_err(|_| Error::Protocol("the namespace thread panicked".into()))??;
    let mut rtnl = Rtnl::open_in(std::os::fd::AsFd::as_fd(&ns)).map_err(Error::from)?;
    let lo = rtnl.require("lo").map_err(Error::from)?;
    rtnl.set_up(lo.index, None).map_err(Error::from)?;
    Ok(ns)
}
