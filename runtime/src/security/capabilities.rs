//! Dropping the payload's capabilities to the set it keeps
//! (`spec::capabilities` decides which).

use std::collections::HashSet;

use caps::{CapSet, Capability};

use crate::error::{Error, Result};

/// Restrict the calling thread to `keep` in every set; the bounding set
/// makes it stick across exec. Capabilities we do not hold ourselves (a
/// host whose root lacks some) cannot be passed on and are left out.
pub(crate) fn restrict_to(keep: &HashSet<Capability>) -> Result<()> {
    let held = caps::read(None, CapSet::Permitted).unwrap_or_default();
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
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, keep).map_err(err("capset"))?;
    }
    Ok(())
}
