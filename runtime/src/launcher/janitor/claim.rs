//! What the launcher tells its janitor, one claim at a time, and the link
//! it tells it over (see the janitor's module for what it does with them).

use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::handshake::channel::Channel;
use crate::host::machined::Via;
use crate::spec::identity::MachineName;

/// What the launcher tells the janitor, one claim at a time.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) enum Claim {
    /// About to lock the machine name at `lock`; its state is `state_dir`.
    Name {
        name: MachineName,
        lock: PathBuf,
        state_dir: PathBuf,
    },
    /// The name's lock is held (its descriptor comes with this).
    NameHeld,
    /// About to lock a UID range block's file.
    Range { path: PathBuf },
    /// That block is held (its descriptor comes with this).
    RangeHeld { path: PathBuf },
    /// About to claim a `--keep-unit` unit's cgroup by its lock file.
    Unit { path: PathBuf },
    /// That lock is held (its descriptor comes with this).
    UnitHeld { path: PathBuf },
    /// The guest's cgroups, about to be created.
    Cgroups(Box<CgroupLayout>),
    /// A transient scope started for this boot; None once it is let go.
    Scope(Option<String>),
    /// Registered with machined (and how); None once unregistering.
    Registered(Option<Via>),
    /// A step of the network setup (see `network::cleanup`); the guest's
    /// network namespace comes with `Netns(true)`.
    Network(crate::network::cleanup::NetClaim),
    /// An `--overlay`'s work directory, about to be made (removed with
    /// the guest).
    WorkDir(PathBuf),
    /// The launcher released everything itself.
    Done,
    /// The launcher could not release everything: release what is left.
    ReleaseRest,
}

/// The launcher's end: tells the janitor about claims.
pub(crate) struct JanitorLink {
    pub(super) channel: Channel,
}

impl JanitorLink {
    /// Report a claim; `fd` is the held lock's descriptor where there is one.
    pub fn note(&self, claim: &Claim, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        self.channel
            .send(claim, fd.as_slice())
            .map_err(|e| match e {
                Error::Protocol(what) => Error::Janitor(what),
                other => other,
            })
    }

    pub fn try_clone(&self) -> Result<JanitorLink> {
        Ok(JanitorLink {
            channel: self.channel.try_clone()?,
        })
    }
}
