//! The separate, small seccomp filters systemd-nspawn stacks on top of its
//! main one: `--restrict-address-families` (socket(2) of a family not
//! allowed fails with EAFNOSUPPORT) and `--suppress-sync` (the @sync calls
//! succeed doing nothing; open/openat with O_SYNC or O_DSYNC fail with
//! EINVAL, openat2 with ENOSYS, since its flags cannot be read by a
//! filter; the calls on a descriptor only for one that is not negative,
//! as 252.39 does). Each is its own program, installed after the main one: the
//! kernel runs all and the most severe answer wins, so these only ever
//! turn an allowed call into an error (or a no-op).
//!
//! Hand-written for the same reason as the main program (`bpf`): no
//! library is needed to emit a few dozen instructions.

use crate::spec::process::AddressFamilies;
use crate::spec::syscalls::{name_index, table};

use super::bpf::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, Insn, RET_ALLOW};

const LD_ABS_W: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RET_ERRNO: u32 = 0x0005_0000;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | u32::try_from(e).expect("a small errno")
}

/// What one rule does with a matching system call.
#[derive(Debug, Clone)]
enum Body {
    /// Always return this.
    Return(u32),
    /// Return `ret` if argument `arg` has all bits of `flag` set.
    FlagSet { arg: u32, flag: u32, ret: u32 },
    /// socket(2): EAFNOSUPPORT unless the family (argument 0) is allowed.
    Families(AddressFamilies),
    /// Return `ret` if argument 0, a descriptor, is not negative (a bad
    /// fd still gets the kernel's EBADF, as with nspawn 252's rule).
    FdNotNegative(u32),
}

/// The instructions for one rule's body; falling off its end means "no
/// decision" (the next rule's check).
fn body(b: &Body) -> Vec<Insn> {
    match b {
        Body::Return(r) => vec![insn(RET_K, 0, 0, *r)],
        Body::FlagSet { arg, flag, ret } => vec![
            insn(LD_ABS_W, 0, 0, off_arg_low(*arg)),
            insn(AND_K, 0, 0, *flag),
            insn(JEQ_K, 0, 1, *flag),
            insn(RET_K, 0, 0, *ret),
        ],
        Body::FdNotNegative(ret) => vec![
            insn(LD_ABS_W, 0, 0, off_arg_low(0)),
            insn(AND_K, 0, 0, 0x8000_0000),
            insn(JEQ_K, 0, 1, 0),
            insn(RET_K, 0, 0, *ret),
        ],
        Body::Families(f) => {
            let (listed, set) = match f {
                AddressFamilies::Allow(s) => (RET_ALLOW, s),
                AddressFamilies::Deny(s) => (errno(libc::EAFNOSUPPORT), s),
            };
            let other = if listed == RET_ALLOW {
                errno(libc::EAFNOSUPPORT)
            } else {
                RET_ALLOW
            };
            let n = set.len();
            let mut out = vec![insn(LD_ABS_W, 0, 0, off_arg_low(0))];
            for (i, fam) in set.iter().enumerate() {
                let to_listed = u8::try_from(n - i).expect("fewer than 255 families");
                out.push(insn(JEQ_K, to_listed, 0, (*fam).cast_unsigned()));
            }
            out.push(insn(RET_K, 0, 0, other));
            out.push(insn(RET_K, 0, 0, listed));
            out
        }
    }
}

/// The number of `name` in an ABI's table.
fn nr(abi: &[(u16, u32)], name: &str) -> Option<u32> {
    let i = name_index(name)?;
    abi.iter().find(|(n, _)| usize::from(*n) == i).map(|p| p.1)
}

/// Rules as (syscall name, body), for every ABI of an x86-64 (or aarch64)
/// machine: a linear program, reloading the number before each rule.
fn program(rules: &[(&str, Body)]) -> Vec<Insn> {
    let block = |abis: &[&[(u16, u32)]]| {
        let mut out = Vec::new();
        for abi in abis {
            for (name, b) in rules {
                let Some(n) = nr(abi, name) else { continue };
                let b = body(b);
                out.push(insn(LD_ABS_W, 0, 0, OFF_NR));
                let skip = u8::try_from(b.len()).expect("a short body");
                out.push(insn(JEQ_K, 0, skip, n));
                out.extend(b);
            }
        }
        out.push(insn(RET_K, 0, 0, RET_ALLOW));
        out
    };
    let arches: Vec<(u32, Vec<Insn>)> = if cfg!(target_arch = "aarch64") {
        vec![(super::bpf::AUDIT_ARCH_AARCH64, block(&[table::AARCH64]))]
    } else {
        vec![
            (AUDIT_ARCH_X86_64, block(&[table::X86_64, table::X32])),
            (AUDIT_ARCH_I386, block(&[table::I386])),
        ]
    };
    let mut prog = vec![insn(LD_ABS_W, 0, 0, OFF_ARCH)];
    // Dispatch: for arch i, "jeq arch, 0, 1; ja block_i".
    let dispatch_len = arches.len() * 2 + 1;
    let mut offset = 0usize;
    for (i, (arch, block)) in arches.iter().enumerate() {
        prog.push(insn(JEQ_K, 0, 1, *arch));
        // From after this ja to the block's start.
        let after_ja = 1 + 2 * (i + 1);
        let target = 1 + dispatch_len + offset;
        prog.push(insn(
            JA,
            0,
            0,
            u32::try_from(target - after_ja).expect("a short program"),
        ));
        offset += block.len();
    }
    // Another architecture: the main filter decides (it kills).
    prog.push(insn(RET_K, 0, 0, RET_ALLOW));
    for (_, block) in arches {
        prog.extend(block);
    }
    prog
}

/// `--restrict-address-families`.
pub fn address_families(f: &AddressFamilies) -> Vec<Insn> {
    program(&[("socket", Body::Families(f.clone()))])
}

/// `--suppress-sync=yes`.
pub fn suppress_sync() -> Vec<Insn> {
    let o_dsync = libc::O_DSYNC as u32;
    // Success without doing anything; for the calls on a descriptor only
    // if it is not negative (a negative one still fails with EBADF), as
    // systemd-nspawn 252 (252.39) does.
    let mut rules: Vec<(&str, Body)> = [
        "fdatasync",
        "fsync",
        "sync_file_range",
        "sync_file_range2",
        "syncfs",
    ]
    .iter()
    .map(|n| (*n, Body::FdNotNegative(RET_ERRNO)))
    .collect();
    rules.push(("msync", Body::Return(RET_ERRNO)));
    rules.push(("sync", Body::Return(RET_ERRNO)));
    // O_SYNC includes O_DSYNC's bit: one test catches both.
    rules.push((
        "open",
        Body::FlagSet {
            arg: 1,
            flag: o_dsync,
            ret: errno(libc::EINVAL),
        },
    ));
    rules.push((
        "openat",
        Body::FlagSet {
            arg: 2,
            flag: o_dsync,
            ret: errno(libc::EINVAL),
        },
    ));
    rules.push(("openat2", Body::Return(errno(libc::ENOSYS))));
    program(&rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for what these programs use (the main one's
    /// evaluator has no ALU).
    fn run(prog: &[Insn], arch: u32, nr: u32, args: [u32; 6]) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_ABS_W => {
                    a = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        k => args[((k - 16) / 8) as usize],
                    }
                }
                AND_K => a &= i.k,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                JA => pc += i.k as usize,
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn families_and_sync() {
        let f = AddressFamilies::parse("AF_UNIX AF_NETLINK").unwrap();
        let p = address_families(&f);
        let socket = nr(table::X86_64, "socket").unwrap();
        let eafno = errno(libc::EAFNOSUPPORT);
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, socket, [1, 1, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, socket, [16, 3, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, socket, [2, 1, 0, 0, 0, 0]),
            eafno
        );
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 0, [2, 0, 0, 0, 0, 0]), RET_ALLOW);
        let i386_socket = nr(table::I386, "socket").unwrap();
        assert_eq!(
            run(&p, AUDIT_ARCH_I386, i386_socket, [10, 1, 0, 0, 0, 0]),
            eafno
        );
        let p = address_families(&AddressFamilies::parse("~AF_INET6").unwrap());
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, socket, [10, 1, 0, 0, 0, 0]),
            eafno
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, socket, [2, 1, 0, 0, 0, 0]),
            RET_ALLOW
        );
        let x32_socket = nr(table::X32, "socket").unwrap();
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, x32_socket, [10, 1, 0, 0, 0, 0]),
            eafno
        );

        let p = suppress_sync();
        let fsync = nr(table::X86_64, "fsync").unwrap();
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, fsync, [3, 0, 0, 0, 0, 0]),
            RET_ERRNO
        );
        let openat = nr(table::X86_64, "openat").unwrap();
        let o_sync = libc::O_SYNC as u32 | libc::O_WRONLY as u32;
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, openat, [0, 0, o_sync, 0, 0, 0]),
            errno(libc::EINVAL)
        );
        assert_eq!(
            run(
                &p,
                AUDIT_ARCH_X86_64,
                openat,
                [0, 0, libc::O_WRONLY as u32, 0, 0, 0]
            ),
            RET_ALLOW
        );
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 0, [0; 6]), RET_ALLOW);
    }
}
