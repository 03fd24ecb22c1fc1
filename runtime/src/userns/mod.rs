//! User namespaces for guests: the host range a guest gets (`range`), how
//! its tree and store appear owned by it (`idmap`: idmapped mounts, or a
//! one-time chown), and the plan the launcher hands the container process.

pub mod idmap;
pub mod range;

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::cgroup::CgroupLayout;
use crate::error::{Error, Result};
use crate::launcher::events::{Event, Observer};
use crate::launcher::janitor::claim::JanitorLink;
use crate::spec::Spec;
use crate::spec::userns::{Mode, Ownership, RANGE, UidRange};
use range::RangeLock;

/// What the launcher prepared for a guest in a user namespace.
pub(crate) struct Plan {
    pub range: UidRange,
    /// The user namespace mapping [0, range) onto the range, for idmapped
    /// mounts (None with chown or off ownership).
    pub mapping: Option<OwnedFd>,
    /// A detached idmapped clone of the tree.
    pub root: Option<OwnedFd>,
    /// A detached read-only idmapped clone of the host store.
    pub store: Option<OwnedFd>,
}

impl Plan {
    fn unmapped(range: UidRange) -> Plan {
        Plan {
            range,
            mapping: None,
            root: None,
            store: None,
        }
    }

    /// Fresh idmapped clones for the next boot (a boot attaches them, and
    /// only the launcher's mount namespace may clone them again).
    pub fn refresh_mounts(&mut self, spec: &Spec) -> Result<()> {
        if let Some(mapping) = &self.mapping {
            (self.root, self.store) = idmapped_mounts(spec, mapping)?;
        }
        Ok(())
    }
}

/// Resolve `--private-users` and `--private-users-ownership`: the range
/// (picked and locked, or checked free), the ownership (idmapped clones of
/// the tree and store, or a one-time chown), and the payload cgroup handed
/// to the guest's root so its systemd can manage it.
pub(crate) fn prepare(
    spec: &Spec,
    cgroups: &CgroupLayout,
    observer: &mut dyn Observer,
    janitor: &JanitorLink,
) -> Result<Option<(Plan, Option<RangeLock>)>> {
    let busy = |range: UidRange| Error::InvalidValue {
        what: "--private-users",
        value: format!("{}:{}", range.shift, range.range),
        reason: format!(
            "the range overlaps one in use by another container (locks in {})",
            crate::state::run_path(range::LOCK_DIR).display()
        ),
    };
    let own = range::OwnMap::read()?;
    let locked = |range: UidRange| -> Result<(UidRange, Option<RangeLock>)> {
        // Checked here rather than left to the kernel, whose EPERM on
        // writing the child's uid_map (or EINVAL delegating the cgroup)
        // names neither the range nor what fits.
        if !own.holds(range) {
            return Err(own.refusal(format!("{}:{}", range.shift, range.range)));
        }
        let lock = range::lock(range, janitor)?.ok_or_else(|| busy(range))?;
        Ok((range, Some(lock)))
    };
    let tree = spec.directory.as_deref();
    // An unmasked /proc is safe only where the guest's root is not the
    // host's: mapped to host uid 0 (no -U, or identity), it could write
    // /proc/sysrq-trigger and kernel-wide sysctls, which the kernel lets
    // uid 0 do by ownership.
    let nested = |shift: Option<u32>| -> Result<()> {
        if spec.nested_sandbox && shift.is_none_or(|s| s == 0) {
            return Err(Error::InvalidValue {
                what: "--nested-sandbox",
                value: match shift {
                    None => "without --private-users".into(),
                    Some(_) => "with a range starting at 0".into(),
                },
                reason: "an unmasked /proc needs a guest root that is not the host's root; add -U (--private-users=pick)".into(),
            });
        }
        Ok(())
    };
    let (range, lock) = match spec.private_users {
        Mode::No => {
            nested(None)?;
            if let Some(user) = spec.bind_users.first() {
                return Err(Error::InvalidValue {
                    what: "--bind-user",
                    value: user.name.clone(),
                    reason: "needs a user namespace; add -U (--private-users=pick)".into(),
                });
            }
            return Ok(None);
        }
        Mode::Identity => (
            UidRange {
                shift: 0,
                range: RANGE,
            },
            None,
        ),
        Mode::Fixed(range) => locked(range)?,
        Mode::FromTree => {
            let tree = tree.ok_or_else(|| Error::InvalidValue {
                what: "--private-users",
                value: "yes".into(),
                reason: "takes the range from the tree's owner, and there is no tree (use pick)"
                    .into(),
            })?;
            locked(UidRange {
                shift: range::tree_shift(tree)?,
                range: RANGE,
            })?
        }
        Mode::Pick => {
            // A chown walk that was cut short is finished in its own range.
            let tree_shift = tree
                .and_then(|t| idmap::chown_in_progress(t).or_else(|| range::tree_shift(t).ok()));
            let (range, lock) = range::pick(spec.machine.as_str(), tree_shift, janitor)?;
            (range, Some(lock))
        }
    };
    nested(Some(range.shift))?;
    for user in &spec.bind_users {
        user.check_range(range.shift, range.range)?;
    }
    let mut plan = Plan::unmapped(range);
    // Identity and pre-shifted trees need no ownership work.
    let ownership = if range.shift == 0 || spec.private_users == Mode::FromTree {
        Ownership::Off
    } else if spec.ownership == Ownership::Auto && tree.is_some_and(already_shifted) {
        // A tree shifted by chown (nspawn's PrivateUsers=pick, or its auto
        // where idmaps fail): an idmap on top would show it all as nobody.
        // Chown keeps it (same range) or moves it (another), as nspawn does.
        Ownership::Chown
    } else {
        spec.ownership
    };
    let map = |plan: &mut Plan| -> Result<()> {
        let mapping = idmap::mapping_userns(range)?;
        (plan.root, plan.store) = idmapped_mounts(spec, &mapping)?;
        plan.mapping = Some(mapping);
        Ok(())
    };
    match ownership {
        Ownership::Off => {}
        Ownership::Map => map(&mut plan)?,
        Ownership::Chown => chown(tree, range)?,
        Ownership::Auto => match map(&mut plan) {
            Ok(()) => {}
            Err(Error::Idmap { path, source }) => {
                observer.event(Event::Notice(&format!(
                    "{} does not support idmapped mounts ({source}); shifting the tree's ownership with chown instead",
                    path.display()
                )));
                plan = Plan::unmapped(range);
                chown(tree, range)?;
            }
            Err(e) => return Err(e),
        },
    }
    cgroups.delegate_to(range.shift)?;
    Ok(Some((plan, lock)))
}

/// Detached idmapped clones of the tree and the store, for one boot (a
/// boot attaches them; a reboot needs fresh ones, made here in the
/// launcher's mount namespace, the only one allowed to clone them).
fn idmapped_mounts(
    spec: &Spec,
    mapping: &std::os::fd::OwnedFd,
) -> Result<(Option<std::os::fd::OwnedFd>, Option<std::os::fd::OwnedFd>)> {
    let root = spec
        .directory
        .as_deref()
        .map(|tree| idmap::idmapped_clone(tree, mapping, true, false))
        .transpose()?;
    let store = match &spec.store {
        Some(store) => Some(idmap::idmapped_clone(
            Path::new(crate::nixos::closure::STORE),
            mapping,
            store.closure.is_none(),
            true,
        )?),
        None => None,
    };
    Ok((root, store))
}

/// Is the tree's root owned by the root of a shifted range?
fn already_shifted(tree: &Path) -> bool {
    range::tree_shift(tree).is_ok_and(|shift| shift != 0)
}

fn chown(tree: Option<&Path>, range: UidRange) -> Result<()> {
    if let Some(tree) = tree {
        idmap::chown_tree(tree, range)?;
    }
    Ok(())
}
