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

use std::collections::HashSet;

use caps::Capability;

use crate::error::{Error, Result};
use bpf::{Action, Insn, Table};

/// `--system-call-filter` additions and removals.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Adjustments {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// The index of a syscall name in [`syscalls::NAMES`].
fn name_index(name: &str) -> Option<usize> {
    syscalls::NAMES.binary_search(&name).ok()
}

/// Is `name` a syscall (on some x86 ABI) or a group?
pub fn is_known(name: &str) -> bool {
    if name.starts_with('@') {
        groups::group(name).is_some()
    } else {
        name_index(name).is_some()
    }
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

/// The allowed syscalls: one flag per entry of [`syscalls::NAMES`].
pub struct Allowed(Vec<bool>);

impl Allowed {
    pub fn contains(&self, name: &str) -> bool {
        name_index(name).is_some_and(|i| self.0[i])
    }
}

/// Names allowed by nspawn's list under `caps`, with the user's additions,
/// minus exact-name removals (a removed group name drops that group only
/// where it is listed by name, as systemd does). Names no x86 ABI has
/// (other architectures' calls in systemd's groups) are skipped.
pub fn allowed_names(caps: &HashSet<Capability>, adjust: &Adjustments) -> Allowed {
    fn add(name: &str, deny: &[String], out: &mut [bool]) {
        if deny.iter().any(|d| d == name) {
            return;
        }
        if let Some(members) = groups::group(name) {
            for m in members {
                add(m, deny, out);
            }
        } else if let Some(i) = name_index(name) {
            out[i] = true;
        }
    }
    let mut out = vec![false; syscalls::NAMES.len()];
    for (cap, name) in groups::NSPAWN_ALLOW {
        if cap.is_none_or(|c| caps.contains(&c)) {
            add(name, &adjust.deny, &mut out);
        }
    }
    for name in &adjust.allow {
        add(name, &adjust.deny, &mut out);
    }
    Allowed(out)
}

fn table(abi: &[(u16, u32)], allowed: &Allowed) -> Table {
    let socket = name_index("socket");
    let actions = abi
        .iter()
        .map(|&(i, nr)| {
            let i = usize::from(i);
            let action = match (Some(i) == socket, allowed.0[i]) {
                (true, true) => Action::SocketNoAudit { otherwise: None },
                (true, false) => Action::SocketNoAudit {
                    otherwise: Some(libc::EPERM as u16),
                },
                (false, true) => Action::Allow,
                (false, false) => Action::Errno(libc::EPERM as u16),
            };
            (nr, action)
        })
        .collect();
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

    fn nr(abi: &[(u16, u32)], name: &str) -> u32 {
        let i = name_index(name).unwrap_or_else(|| panic!("{name}"));
        abi.iter()
            .find(|(n, _)| usize::from(*n) == i)
            .unwrap_or_else(|| panic!("{name} on this ABI"))
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
    fn program_is_small_and_quick_to_build() {
        let caps = crate::capabilities::guest_set(false);
        let start = std::time::Instant::now();
        let prog = program(&caps, &Adjustments::default());
        let took = start.elapsed();
        let again = std::time::Instant::now();
        let _ = program(&caps, &Adjustments::default());
        eprintln!(
            "{} instructions, built in {took:?} (then {:?})",
            prog.len(),
            again.elapsed()
        );
        assert!(prog.len() < 1024, "{} instructions", prog.len());
    }

    #[test]
    fn tables_are_sorted() {
        assert!(syscalls::NAMES.windows(2).all(|w| w[0] < w[1]));
        for t in [syscalls::X86_64, syscalls::X32, syscalls::I386] {
            assert!(
                t.windows(2).all(|w| w[0].1 < w[1].1),
                "sorted by number, unique"
            );
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
