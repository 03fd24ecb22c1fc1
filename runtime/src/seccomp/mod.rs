//! The seccomp filter systemd-nspawn puts on its payload: nspawn's allow
//! list (capability-gated parts included only when the capability is kept),
//! EPERM for every other syscall the kernel headers name, ENOSYS for
//! numbers nobody knows (so libc falls back, as for clone3), and
//! EAFNOSUPPORT for audit netlink sockets — for x86-64, x32 and i386.
//!
//! Building the program is a walk over a few hundred names (microseconds);
//! no library compiles it at launch.

pub mod bpf;
pub mod groups;
mod syscalls;

use std::collections::{BTreeMap, HashSet};

use caps::Capability;

use crate::error::{Error, Result};
use bpf::{Action, Insn, Table};

/// `--system-call-filter` additions and removals.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Adjustments {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// Is `name` a syscall (on some x86 ABI) or a group?
pub fn is_known(name: &str) -> bool {
    if name.starts_with('@') {
        return groups::group(name).is_some();
    }
    [syscalls::X86_64, syscalls::X32, syscalls::I386]
        .iter()
        .any(|t| t.binary_search_by(|(n, _)| n.cmp(&name)).is_ok())
}

impl Adjustments {
    /// One `--system-call-filter=` value: space-separated names, all added,
    /// or all removed with a leading `~`. Unknown names are refused.
    pub fn add_option(&mut self, value: &str) -> Result<()> {
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let names: Vec<&str> = list.split_whitespace().collect();
        if names.is_empty() {
            return Err(Error::InvalidValue {
                what: "--system-call-filter",
                value: value.to_owned(),
                reason: "no system call named".into(),
            });
        }
        for name in names {
            if !is_known(name) {
                return Err(Error::InvalidValue {
                    what: "--system-call-filter",
                    value: value.to_owned(),
                    reason: format!("unknown system call or group {name:?}"),
                });
            }
            if deny {
                &mut self.deny
            } else {
                &mut self.allow
            }
            .push(name.to_owned());
        }
        Ok(())
    }
}

/// Names allowed by nspawn's list under `caps`, with the user's additions,
/// minus exact-name removals (a removed group name drops that group only
/// where it is listed by name, as systemd does).
pub fn allowed_names(caps: &HashSet<Capability>, adjust: &Adjustments) -> HashSet<&'static str> {
    fn add(name: &str, deny: &[String], out: &mut HashSet<&'static str>) {
        if deny.iter().any(|d| d == name) {
            return;
        }
        if let Some(members) = groups::group(name) {
            for m in members {
                add(m, deny, out);
            }
        } else if let Some(static_name) = static_name(name) {
            out.insert(static_name);
        }
    }
    let mut out = HashSet::new();
    for (cap, name) in groups::NSPAWN_ALLOW {
        if cap.is_none_or(|c| caps.contains(&c)) {
            add(name, &adjust.deny, &mut out);
        }
    }
    for name in &adjust.allow {
        add(name, &adjust.deny, &mut out);
    }
    out
}

/// The 'static spelling of a syscall name, if any ABI has it.
fn static_name(name: &str) -> Option<&'static str> {
    [syscalls::X86_64, syscalls::X32, syscalls::I386]
        .iter()
        .find_map(|t| {
            t.binary_search_by(|(n, _)| n.cmp(&name))
                .ok()
                .map(|i| t[i].0)
        })
}

fn table(abi: &[(&'static str, u32)], allowed: &HashSet<&'static str>) -> Table {
    let mut actions = BTreeMap::new();
    for &(name, nr) in abi {
        let action = if !allowed.contains(name) {
            Action::Errno(libc::EPERM as u16)
        } else if name == "socket" {
            Action::SocketNoAudit
        } else {
            Action::Allow
        };
        actions.insert(nr, action);
    }
    Table {
        actions,
        default: Action::Errno(libc::ENOSYS as u16),
    }
}

/// The program for a payload that keeps `caps`.
pub fn program(caps: &HashSet<Capability>, adjust: &Adjustments) -> Vec<Insn> {
    let allowed = allowed_names(caps, adjust);
    bpf::program(
        &table(syscalls::X86_64, &allowed),
        &table(syscalls::X32, &allowed),
        &table(syscalls::I386, &allowed),
    )
}

/// Install the program on the calling thread (without no_new_privs: setuid
/// programs in the guest must keep working; we hold CAP_SYS_ADMIN).
pub(crate) fn install(prog: &[Insn]) -> Result<()> {
    crate::sys::seccomp_install(prog)
        .map_err(|e| Error::syscall("seccomp(SECCOMP_SET_MODE_FILTER)", e))
}

#[cfg(test)]
mod tests {
    use super::bpf::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, RET_ALLOW, X32_SYSCALL_BIT, evaluate};
    use super::*;

    fn nr(abi: &[(&str, u32)], name: &str) -> u32 {
        abi.iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name}"))
            .1
    }

    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;

    #[test]
    fn nspawn_default_policy() {
        let caps = crate::capabilities::guest_set(false);
        let prog = program(&caps, &Adjustments::default());
        let x = |name| evaluate(&prog, AUDIT_ARCH_X86_64, nr(syscalls::X86_64, name), [0; 6]);
        for allowed in [
            "read",
            "openat",
            "mount",
            "unshare",
            "clone3",
            "ptrace",
            "reboot",
            "ioctl",
            "socket",
            "pivot_root",
            "seccomp",
        ] {
            assert_eq!(x(allowed), RET_ALLOW, "{allowed}");
        }
        for denied in [
            "kexec_load",
            "init_module",
            "swapon",
            "open_by_handle_at",
            "keyctl",
            "clock_settime",
            "mlock",
            "bpf",
            "perf_event_open",
            "acct",
            "syslog",
        ] {
            assert_eq!(x(denied), EPERM, "{denied}");
        }
        assert_eq!(
            evaluate(&prog, AUDIT_ARCH_X86_64, 1000, [0; 6]),
            ENOSYS,
            "unknown numbers get ENOSYS"
        );
        // The same policy for 32-bit and x32 programs.
        assert_eq!(
            evaluate(
                &prog,
                AUDIT_ARCH_I386,
                nr(syscalls::I386, "kexec_load"),
                [0; 6]
            ),
            EPERM
        );
        assert_eq!(
            evaluate(
                &prog,
                AUDIT_ARCH_I386,
                nr(syscalls::I386, "socketcall"),
                [0; 6]
            ),
            RET_ALLOW
        );
        assert_eq!(
            evaluate(
                &prog,
                AUDIT_ARCH_X86_64,
                nr(syscalls::X32, "kexec_load"),
                [0; 6]
            ),
            EPERM
        );
        assert_eq!(
            evaluate(&prog, AUDIT_ARCH_X86_64, nr(syscalls::X32, "read"), [0; 6]),
            RET_ALLOW
        );
        assert!(nr(syscalls::X32, "read") >= X32_SYSCALL_BIT);
        let audit = [
            libc::AF_NETLINK as u64,
            3,
            libc::NETLINK_AUDIT as u64,
            0,
            0,
            0,
        ];
        assert_eq!(
            evaluate(
                &prog,
                AUDIT_ARCH_X86_64,
                nr(syscalls::X86_64, "socket"),
                audit
            ),
            0x0005_0000 | libc::EAFNOSUPPORT as u32
        );
    }

    #[test]
    fn capabilities_and_adjustments_change_the_policy() {
        let mut caps = crate::capabilities::guest_set(false);
        caps.insert(Capability::CAP_SYS_TIME);
        caps.insert(Capability::CAP_IPC_LOCK);
        caps.remove(&Capability::CAP_SYS_PTRACE);
        let mut adjust = Adjustments::default();
        adjust.add_option("@keyring bpf").unwrap();
        adjust.add_option("~mount @chown").unwrap();
        let allowed = allowed_names(&caps, &adjust);
        assert!(
            allowed.contains("clock_settime") && allowed.contains("mlock"),
            "capability-gated groups"
        );
        assert!(!allowed.contains("ptrace"), "ptrace needs CAP_SYS_PTRACE");
        assert!(
            allowed.contains("process_vm_readv"),
            "still in @ipc, as in nspawn"
        );
        assert!(
            allowed.contains("keyctl") && allowed.contains("bpf"),
            "additions"
        );
        assert!(
            !allowed.contains("mount"),
            "exact-name removal reaches into groups"
        );
        assert!(!allowed.contains("chown"), "a group removed by name");
        assert!(Adjustments::default().add_option("nosuchcall").is_err());
        assert!(Adjustments::default().add_option("@nosuchgroup").is_err());
        assert!(Adjustments::default().add_option("~").is_err());
    }

    #[test]
    fn tables_are_sorted_for_lookup() {
        for t in [syscalls::X86_64, syscalls::X32, syscalls::I386] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        }
        for (_, members) in groups::GROUPS {
            for m in *members {
                assert!(
                    m.starts_with('@') && groups::group(m).is_some() || !m.starts_with('@'),
                    "{m}"
                );
            }
        }
    }
}
