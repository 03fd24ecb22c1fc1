//! The seccomp filter systemd-nspawn puts on its payload: nspawn's allow
//! list (capability-gated parts included only when the capability is kept),
//! EPERM for every other syscall the kernel headers name, ENOSYS for
//! numbers nobody knows (so libc falls back, as for clone3), and
//! EAFNOSUPPORT for audit netlink sockets (not for i386, as with nspawn) —
//! for x86-64, x32 and i386 on an x86-64 build, for aarch64 on an aarch64
//! build. Any other architecture a process might use is killed; a build for
//! an architecture without tables refuses to run the payload unfiltered
//! unless told to (SYSTEMD_SECCOMP=0).
//!
//! Building the program is a walk over a few hundred names (microseconds);
//! no library compiles it at launch.

pub mod bpf;
pub mod extra;

use std::collections::HashSet;

use caps::Capability;

use crate::error::{Error, Result};

/// An errno as seccomp returns it (the low 16 bits of the action).
fn errno(e: i32) -> u16 {
    u16::try_from(e).expect("errno values fit in 16 bits")
}
use crate::spec::filter::Adjustments;
use crate::spec::syscalls::{self, groups, table};
use bpf::{Action, Arch, Insn, Table};
use syscalls::name_index;

/// The allowed syscalls: one flag per entry of [`table::NAMES`].
pub struct Allowed(Vec<bool>);

impl Allowed {
    pub fn contains(&self, name: &str) -> bool {
        name_index(name).is_some_and(|i| self.0[i])
    }
}

/// Names allowed by nspawn's list under `caps`, with the user's additions,
/// minus exact-name removals (a removed group name drops that group only
/// where it is listed by name, as systemd does). Names none of our ABIs
/// has (other architectures' calls in systemd's groups) are skipped.
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
    let mut out = vec![false; table::NAMES.len()];
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

/// The actions for one ABI. `audit_rule`: socket() refuses audit netlink
/// sockets with EAFNOSUPPORT. Not for i386, as with nspawn, whose audit rule
/// misses i386 (seen side by side with the 32-bit probe): there glibc's
/// socket() is socketcall(), whose arguments a filter cannot read, so the
/// rule could only ever catch the rare direct call.
fn table(abi: &[(u16, u32)], allowed: &Allowed, audit_rule: bool) -> Table {
    let socket = name_index("socket").filter(|_| audit_rule);
    let actions = abi
        .iter()
        .map(|&(i, nr)| {
            let i = usize::from(i);
            let action = match (Some(i) == socket, allowed.0[i]) {
                (true, true) => Action::SocketNoAudit { otherwise: None },
                (true, false) => Action::SocketNoAudit {
                    otherwise: Some(errno(libc::EPERM)),
                },
                (false, true) => Action::Allow,
                (false, false) => Action::Errno(errno(libc::EPERM)),
            };
            (nr, action)
        })
        .collect();
    Table {
        actions,
        default: Action::Errno(errno(libc::ENOSYS)),
    }
}

/// The machines nixspawn has system call tables for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostArch {
    /// x86-64 with its x32 and i386 ABIs.
    X86_64,
    Aarch64,
}

impl HostArch {
    /// The architecture this program was built for, if it has tables.
    pub fn of_build() -> Option<HostArch> {
        if cfg!(target_arch = "x86_64") {
            Some(HostArch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(HostArch::Aarch64)
        } else {
            None
        }
    }
}

/// Refuse, in one line, to build a filter where we have no tables.
pub fn check_supported() -> Result<HostArch> {
    HostArch::of_build().ok_or(Error::SeccompUnsupported {
        arch: std::env::consts::ARCH,
    })
}

/// The program for a payload that keeps `caps`, on `arch`.
pub fn program_for(arch: HostArch, caps: &HashSet<Capability>, adjust: &Adjustments) -> Vec<Insn> {
    let allowed = allowed_names(caps, adjust);
    match arch {
        HostArch::X86_64 => bpf::program(&[
            Arch::X86_64 {
                x86_64: &table(table::X86_64, &allowed, true),
                x32: &table(table::X32, &allowed, true),
            },
            Arch::Plain {
                audit_arch: bpf::AUDIT_ARCH_I386,
                table: &table(table::I386, &allowed, false),
            },
        ]),
        HostArch::Aarch64 => bpf::program(&[Arch::Plain {
            audit_arch: bpf::AUDIT_ARCH_AARCH64,
            table: &table(table::AARCH64, &allowed, true),
        }]),
    }
}

/// The program for a payload that keeps `caps`, on the machine we run on.
pub fn program(caps: &HashSet<Capability>, adjust: &Adjustments) -> Result<Vec<Insn>> {
    Ok(program_for(check_supported()?, caps, adjust))
}

/// Install the program on the calling thread (without no_new_privs: setuid
/// programs in the guest must keep working; we hold CAP_SYS_ADMIN).
pub(crate) fn install(prog: &[Insn]) -> Result<()> {
    crate::sys::seccomp_install(prog)
        .map_err(|e| Error::syscall("seccomp(SECCOMP_SET_MODE_FILTER)", e))
}

#[cfg(test)]
mod tests {
    use super::bpf::{
        AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM, AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, RET_ALLOW,
        RET_KILL_PROCESS, X32_SYSCALL_BIT, evaluate,
    };
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
        let caps = crate::spec::capabilities::guest_set(false);
        let prog = program_for(HostArch::X86_64, &caps, &Adjustments::default());
        let x = |name| evaluate(&prog, AUDIT_ARCH_X86_64, nr(table::X86_64, name), [0; 6]);
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
                nr(table::I386, "kexec_load"),
                [0; 6]
            ),
            EPERM
        );
        assert_eq!(
            evaluate(
                &prog,
                AUDIT_ARCH_I386,
                nr(table::I386, "socketcall"),
                [0; 6]
            ),
            RET_ALLOW
        );
        assert_eq!(
            evaluate(
                &prog,
                AUDIT_ARCH_X86_64,
                nr(table::X32, "kexec_load"),
                [0; 6]
            ),
            EPERM
        );
        assert_eq!(
            evaluate(&prog, AUDIT_ARCH_X86_64, nr(table::X32, "read"), [0; 6]),
            RET_ALLOW
        );
        assert!(nr(table::X32, "read") >= X32_SYSCALL_BIT);
        let audit = [
            libc::AF_NETLINK as u64,
            3,
            libc::NETLINK_AUDIT as u64,
            0,
            0,
            0,
        ];
        assert_eq!(
            evaluate(&prog, AUDIT_ARCH_X86_64, nr(table::X86_64, "socket"), audit),
            0x0005_0000 | libc::EAFNOSUPPORT as u32
        );
    }

    #[test]
    fn capabilities_and_adjustments_change_the_policy() {
        let mut caps = crate::spec::capabilities::guest_set(false);
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
        let caps = crate::spec::capabilities::guest_set(false);
        let start = std::time::Instant::now();
        let prog = program(&caps, &Adjustments::default()).unwrap();
        let took = start.elapsed();
        let again = std::time::Instant::now();
        let _ = program(&caps, &Adjustments::default());
        eprintln!(
            "{} instructions, built in {took:?} (then {:?})",
            prog.len(),
            again.elapsed()
        );
        assert!(prog.len() < 1024, "{} instructions", prog.len());
        let arm = program_for(HostArch::Aarch64, &caps, &Adjustments::default());
        assert!(arm.len() < 1024, "aarch64: {} instructions", arm.len());
    }

    #[test]
    fn tables_are_sorted() {
        assert!(table::NAMES.windows(2).all(|w| w[0] < w[1]));
        for t in [table::X86_64, table::X32, table::I386, table::AARCH64] {
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

    /// The verdict for every name `abi` has, under `prog` for `arch`.
    fn verdicts(
        prog: &[Insn],
        arch: u32,
        abi: &[(u16, u32)],
    ) -> std::collections::BTreeMap<&'static str, u32> {
        abi.iter()
            .map(|&(i, nr)| {
                (
                    table::NAMES[usize::from(i)],
                    evaluate(prog, arch, nr, [0; 6]),
                )
            })
            .collect()
    }

    #[test]
    fn aarch64_gets_the_same_policy_by_name() {
        for (caps, adjust) in [
            (
                crate::spec::capabilities::guest_set(false),
                Adjustments::default(),
            ),
            (caps::all(), {
                let mut a = Adjustments::default();
                a.add_option("@keyring bpf").unwrap();
                a.add_option("~mount @chown").unwrap();
                a
            }),
        ] {
            let x86 = program_for(HostArch::X86_64, &caps, &adjust);
            let arm = program_for(HostArch::Aarch64, &caps, &adjust);
            let on_x86 = verdicts(&x86, AUDIT_ARCH_X86_64, table::X86_64);
            let on_arm = verdicts(&arm, AUDIT_ARCH_AARCH64, table::AARCH64);
            let mut compared = 0;
            for (name, verdict) in &on_arm {
                if let Some(x) = on_x86.get(name) {
                    assert_eq!(verdict, x, "{name}: aarch64 and x86-64 differ");
                    compared += 1;
                }
            }
            let only_arm: Vec<_> = on_arm.keys().filter(|n| !on_x86.contains_key(*n)).collect();
            eprintln!(
                "{compared} names compared; only on aarch64: {only_arm:?}; {} instructions",
                arm.len()
            );
            assert!(compared > 250, "{compared}");
        }
        let caps = crate::spec::capabilities::guest_set(false);
        let arm = program_for(HostArch::Aarch64, &caps, &Adjustments::default());
        let a = |name| evaluate(&arm, AUDIT_ARCH_AARCH64, nr(table::AARCH64, name), [0; 6]);
        for allowed in [
            "openat",
            "read",
            "mount",
            "clone3",
            "newfstatat",
            "renameat",
        ] {
            assert_eq!(a(allowed), RET_ALLOW, "{allowed}");
        }
        for denied in [
            "kexec_load",
            "init_module",
            "swapon",
            "bpf",
            "keyctl",
            "acct",
        ] {
            assert_eq!(a(denied), EPERM, "{denied}");
        }
        assert_eq!(evaluate(&arm, AUDIT_ARCH_AARCH64, 1000, [0; 6]), ENOSYS);
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
                &arm,
                AUDIT_ARCH_AARCH64,
                nr(table::AARCH64, "socket"),
                audit
            ),
            0x0005_0000 | libc::EAFNOSUPPORT as u32
        );
    }

    #[test]
    fn other_architectures_are_killed() {
        let caps = crate::spec::capabilities::guest_set(false);
        let x86 = program_for(HostArch::X86_64, &caps, &Adjustments::default());
        let arm = program_for(HostArch::Aarch64, &caps, &Adjustments::default());
        // An x86 process whose audit architecture is anything unexpected.
        for arch in [AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM, 0x4000_003e, 0, u32::MAX] {
            for nr in [0, 1, 59, 1000] {
                assert_eq!(
                    evaluate(&x86, arch, nr, [0; 6]),
                    RET_KILL_PROCESS,
                    "{arch:#x}"
                );
            }
        }
        // 32-bit ARM (or x86) programs on arm64: no table, so no way through.
        for arch in [AUDIT_ARCH_ARM, AUDIT_ARCH_X86_64, AUDIT_ARCH_I386] {
            for nr in [0, 3, 63, 1000] {
                assert_eq!(
                    evaluate(&arm, arch, nr, [0; 6]),
                    RET_KILL_PROCESS,
                    "{arch:#x}"
                );
            }
        }
        assert_eq!(check_supported().ok(), HostArch::of_build());
    }
}
