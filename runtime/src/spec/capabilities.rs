//! The capability set a guest gets: systemd-nspawn's list, plus
//! CAP_NET_ADMIN when the guest has its own network namespace.

use std::collections::HashSet;

use caps::Capability;

use crate::error::{Error, Result};

/// The capabilities systemd-nspawn retains for its payload.
pub const DEFAULT: &[Capability] = &[
    Capability::CAP_AUDIT_CONTROL,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_IPC_OWNER,
    Capability::CAP_KILL,
    Capability::CAP_LEASE,
    Capability::CAP_LINUX_IMMUTABLE,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_BROADCAST,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETUID,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_BOOT,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SYS_NICE,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYS_RESOURCE,
    Capability::CAP_SYS_TTY_CONFIG,
];

/// The set for a guest with these properties.
pub fn guest_set(private_network: bool) -> HashSet<Capability> {
    let mut set: HashSet<Capability> = DEFAULT.iter().copied().collect();
    if private_network {
        set.insert(Capability::CAP_NET_ADMIN);
    }
    set
}

/// Bitmask form, as /proc/PID/status prints CapBnd.
pub fn mask(set: &HashSet<Capability>) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// The set of a bit mask.
pub fn from_mask(mask: u64) -> HashSet<Capability> {
    caps::all()
        .into_iter()
        .filter(|c| mask & c.bitmask() != 0)
        .collect()
}

/// `CAP_NAME[,CAP_NAME...]` or `all`, as `--capability=` takes them.
pub fn parse_list(what: &'static str, value: &str) -> Result<HashSet<Capability>> {
    if value.trim() == "all" {
        return Ok(caps::all());
    }
    let mut out = HashSet::new();
    for name in value.split([',', ' ']).filter(|n| !n.is_empty()) {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let cap: Capability = full.parse().map_err(|_| Error::InvalidValue {
            what,
            value: value.to_owned(),
            reason: format!("unknown capability {name:?}"),
        })?;
        out.insert(cap);
    }
    if out.is_empty() {
        return Err(Error::InvalidValue {
            what,
            value: value.to_owned(),
            reason: "no capability named".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(guest_set(false).len(), 26);
        assert!(guest_set(true).contains(&Capability::CAP_NET_ADMIN));
        assert!(!guest_set(false).contains(&Capability::CAP_SYS_MODULE));
        // CAP_SYS_ADMIN is bit 21, CAP_MKNOD bit 27.
        assert_ne!(mask(&guest_set(false)) & (1 << 21), 0);
        assert_ne!(mask(&guest_set(false)) & (1 << 27), 0);
        assert_eq!(from_mask(mask(&guest_set(true))), guest_set(true));
    }

    #[test]
    fn capability_lists() {
        let set = parse_list("--capability", "CAP_SYS_TIME,cap_ipc_lock").unwrap();
        assert!(set.contains(&Capability::CAP_SYS_TIME) && set.contains(&Capability::CAP_IPC_LOCK));
        assert_eq!(
            parse_list("--capability", "all").unwrap().len(),
            caps::all().len()
        );
        assert!(parse_list("--capability", "CAP_NOPE").is_err());
        assert!(parse_list("--capability", ",").is_err());
    }
}
