//! Dropping the payload's capabilities to the set it keeps
//! (`spec::capabilities` decides which).

use std::collections::HashSet;

use caps::{CapSet, Capability};

use crate::error::{Error, Result};

/// Restrict the calling thread to `keep` in every set; the bounding set
/// makes it stick across exec. Capabilities we do not hold ourselves (a
/// host whose root lacks some) cannot be passed on and are left out.
/// `ambient` (`--ambient-capability`, a part of `keep`) goes into the
/// ambient set; a payload that is not root (`--user`) keeps only those,
/// as nspawn's does.
pub(crate) fn restrict_to(
    keep: &HashSet<Capability>,
    ambient: &HashSet<Capability>,
    root: bool,
) -> Result<()> {
    let held = caps::read(None, CapSet::Permitted).unwrap_or_default();
    // After a switch to another user (with PR_SET_KEEPCAPS) the effective
    // set is empty: raise what we hold to be allowed to drop the rest.
    if !root {
        caps::set(None, CapSet::Effective, &held).map_err(|e| Error::Syscall {
            syscall: "capset",
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let keep: HashSet<Capability> = keep.intersection(&held).copied().collect();
    let keep = &keep;
    let err = |what: &'static str| {
        move |e: caps::errors::CapsError| Error::Syscall {
            syscall: what,
            source: std::io::Error::other(e.to_string()),
        }
    };
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err("prctl(PR_CAPBSET_DROP)"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"))?;
    let ambient: HashSet<Capability> = ambient.intersection(keep).copied().collect();
    let sets = if root { keep } else { &ambient };
    let inheritable: HashSet<Capability> = if root { keep.clone() } else { ambient.clone() };
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(err("capset"))?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, sets).map_err(err("capset"))?;
    }
    for cap in &ambient {
        caps::raise(None, CapSet::Ambient, *cap).map_err(err("prctl(PR_CAP_AMBIENT_RAISE)"))?;
    }
    Ok(())
}
