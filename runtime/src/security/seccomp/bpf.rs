//! A classic-BPF seccomp program: dispatch on the audit architecture (and
//! for x86-64 on the x32 bit), kill the process for any architecture the
//! program has no table for, then binary-search the syscall number among
//! intervals that share one action — about a dozen instructions per
//! syscall whatever the policy's size.

/// What happens to one syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u16),
    /// socket(): EAFNOSUPPORT for (AF_NETLINK, *, NETLINK_AUDIT) — also when
    /// socket() itself is denied, as nspawn's separate, later audit filter
    /// decides then — and `otherwise` for every other socket.
    SocketNoAudit {
        otherwise: Option<u16>,
    },
}

pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// EM_AARCH64 (183), 64-bit, little-endian.
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// EM_ARM (40), little-endian: 32-bit programs on an arm64 kernel.
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const LD_ABS_W: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

pub const RET_ALLOW: u32 = 0x7fff_0000;
pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn ret(action: Action) -> u32 {
    match action {
        Action::Allow | Action::SocketNoAudit { otherwise: None } => RET_ALLOW,
        Action::Errno(e) | Action::SocketNoAudit { otherwise: Some(e) } => RET_ERRNO | u32::from(e),
    }
}

/// One instruction, as struct sock_filter lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The actions for one ABI: explicit numbers (sorted, unique), and what
/// every other number gets.
pub struct Table {
    pub actions: Vec<(u32, Action)>,
    pub default: Action,
}

impl Table {
    /// Maximal runs [start, next start) of one action over all u32 numbers.
    fn intervals(&self) -> Vec<(u32, Action)> {
        fn push(out: &mut Vec<(u32, Action)>, start: u32, action: Action) {
            if out.last().is_some_and(|l| l.0 == start) {
                out.pop();
            }
            if out.last().map(|l| l.1) != Some(action) {
                out.push((start, action));
            }
        }
        let mut out = Vec::new();
        push(&mut out, 0, self.default);
        for (i, &(nr, action)) in self.actions.iter().enumerate() {
            push(&mut out, nr, action);
            let next_is_adjacent = self
                .actions
                .get(i + 1)
                .is_some_and(|&(next, _)| next == nr.wrapping_add(1));
            if nr < u32::MAX && !next_is_adjacent {
                push(&mut out, nr + 1, self.default);
            }
        }
        out
    }
}

struct Emitter {
    prog: Vec<Insn>,
}

impl Emitter {
    fn push(&mut self, i: Insn) -> usize {
        self.prog.push(i);
        self.prog.len() - 1
    }

    /// An unconditional jump to be aimed later.
    fn jump(&mut self) -> usize {
        self.push(insn(JA, 0, 0, 0))
    }

    fn land(&mut self, jump: usize) {
        self.prog[jump].k = u32::try_from(self.prog.len() - jump - 1).expect("program fits in u32");
    }

    fn leaf(&mut self, action: Action) {
        if let Action::SocketNoAudit { .. } = action {
            // a0 == AF_NETLINK && a2 == NETLINK_AUDIT → EAFNOSUPPORT
            self.push(insn(LD_ABS_W, 0, 0, off_arg_low(0)));
            self.push(insn(JEQ_K, 0, 3, libc::AF_NETLINK as u32));
            self.push(insn(LD_ABS_W, 0, 0, off_arg_low(2)));
            self.push(insn(JEQ_K, 0, 1, libc::NETLINK_AUDIT as u32));
            self.push(insn(RET_K, 0, 0, RET_ERRNO | libc::EAFNOSUPPORT as u32));
        }
        self.push(insn(RET_K, 0, 0, ret(action)));
    }

    /// A search over sorted intervals with the syscall number in A.
    fn tree(&mut self, intervals: &[(u32, Action)]) {
        if intervals.len() == 1 {
            return self.leaf(intervals[0].1);
        }
        let mid = intervals.len() / 2;
        // A >= start of the right half: take the jump; else skip it.
        self.push(insn(JGE_K, 0, 1, intervals[mid].0));
        let to_right = self.jump();
        self.tree(&intervals[..mid]);
        self.land(to_right);
        self.tree(&intervals[mid..]);
    }
}

/// One audit architecture the program decides calls for.
pub enum Arch<'a> {
    /// One table for every number.
    Plain { audit_arch: u32, table: &'a Table },
    /// x86-64, whose audit architecture x32 shares: numbers with the x32
    /// bit set are x32's.
    X86_64 { x86_64: &'a Table, x32: &'a Table },
}

impl Arch<'_> {
    fn audit_arch(&self) -> u32 {
        match self {
            Arch::Plain { audit_arch, .. } => *audit_arch,
            Arch::X86_64 { .. } => AUDIT_ARCH_X86_64,
        }
    }
}

/// The whole program. A process of any architecture not in `arches` (a
/// 32-bit ARM program on arm64, say) is killed at its first system call:
/// a filter that knows no numbers for it must not let them through.
pub fn program(arches: &[Arch<'_>]) -> Vec<Insn> {
    let mut e = Emitter { prog: Vec::new() };
    e.push(insn(LD_ABS_W, 0, 0, OFF_ARCH));
    let mut entries = Vec::new();
    for arch in arches {
        e.push(insn(JEQ_K, 0, 1, arch.audit_arch()));
        entries.push(e.jump());
    }
    e.push(insn(RET_K, 0, 0, RET_KILL_PROCESS));

    for (arch, entry) in arches.iter().zip(entries) {
        e.land(entry);
        e.push(insn(LD_ABS_W, 0, 0, OFF_NR));
        match arch {
            Arch::Plain { table, .. } => e.tree(&table.intervals()),
            Arch::X86_64 { x86_64, x32 } => {
                e.push(insn(JGE_K, 0, 1, X32_SYSCALL_BIT));
                let to_x32 = e.jump();
                e.tree(&x86_64.intervals());
                e.land(to_x32);
                e.tree(&x32.intervals());
            }
        }
    }
    e.prog
}

/// Run `prog` on (arch, nr, args) as the kernel would: the return value.
/// The low 32 bits of an argument, as a classic BPF load of
/// `seccomp_data.args[n]` at its (little-endian) offset reads it.
fn low_half(v: u64) -> u32 {
    let b = v.to_le_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// For tests and for `nixspawn --debug` explanations.
pub fn evaluate(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let load = |off: u32| -> u32 {
        match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            o if (16..64).contains(&o) && (o - 16) % 8 == 0 => {
                low_half(args[((o - 16) / 8) as usize])
            }
            o => panic!("load from offset {o}"),
        }
    };
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_ABS_W => a = load(i.k),
            JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JGE_K => pc += usize::from(if a >= i.k { i.jt } else { i.jf }),
            JA => pc += i.k as usize,
            RET_K => return i.k,
            c => panic!("unknown opcode {c:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(u32, Action)], default: Action) -> Table {
        Table {
            actions: pairs.to_vec(),
            default,
        }
    }

    #[test]
    fn intervals_merge_runs_and_fill_gaps() {
        let t = table(
            &[
                (0, Action::Allow),
                (1, Action::Allow),
                (3, Action::Errno(1)),
                (4, Action::Allow),
            ],
            Action::Errno(38),
        );
        assert_eq!(
            t.intervals(),
            vec![
                (0, Action::Allow),
                (2, Action::Errno(38)),
                (3, Action::Errno(1)),
                (4, Action::Allow),
                (5, Action::Errno(38))
            ]
        );
    }

    #[test]
    fn program_decides_per_abi() {
        let enosys = Action::Errno(38);
        let mut big: Vec<(u32, Action)> = (0..400)
            .map(|n| {
                (
                    n,
                    if n % 3 == 0 {
                        Action::Allow
                    } else {
                        Action::Errno(1)
                    },
                )
            })
            .collect();
        big[41] = (41, Action::SocketNoAudit { otherwise: None });
        let x86_64 = table(&big, enosys);
        let x32 = table(&[(X32_SYSCALL_BIT, Action::Allow)], enosys);
        let i386 = table(
            &[
                (1, Action::Errno(1)),
                (2, Action::Allow),
                (3, Action::SocketNoAudit { otherwise: Some(1) }),
            ],
            enosys,
        );
        let prog = program(&[
            Arch::X86_64 {
                x86_64: &x86_64,
                x32: &x32,
            },
            Arch::Plain {
                audit_arch: AUDIT_ARCH_I386,
                table: &i386,
            },
        ]);
        assert!(prog.len() < 4096, "fits the kernel's limit: {}", prog.len());
        let run = |arch, nr| evaluate(&prog, arch, nr, [0; 6]);
        for n in 0..400 {
            // 41 is socket, allowed but for audit sockets.
            let want = if n == 41 || n % 3 == 0 {
                RET_ALLOW
            } else {
                RET_ERRNO | 1
            };
            assert_eq!(run(AUDIT_ARCH_X86_64, n), want, "x86-64 {n}");
        }
        assert_eq!(run(AUDIT_ARCH_X86_64, 400), RET_ERRNO | 38);
        assert_eq!(run(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT), RET_ALLOW);
        assert_eq!(run(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT + 1), RET_ERRNO | 38);
        assert_eq!(run(AUDIT_ARCH_I386, 1), RET_ERRNO | 1);
        assert_eq!(run(AUDIT_ARCH_I386, 2), RET_ALLOW);
        assert_eq!(run(AUDIT_ARCH_I386, 0), RET_ERRNO | 38);
        let audit = [
            libc::AF_NETLINK as u64,
            3,
            libc::NETLINK_AUDIT as u64,
            0,
            0,
            0,
        ];
        assert_eq!(
            evaluate(&prog, AUDIT_ARCH_X86_64, 41, audit),
            RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
        let route = [
            libc::AF_NETLINK as u64,
            3,
            libc::NETLINK_ROUTE as u64,
            0,
            0,
            0,
        ];
        assert_eq!(evaluate(&prog, AUDIT_ARCH_X86_64, 41, route), RET_ALLOW);
        assert_eq!(
            evaluate(&prog, AUDIT_ARCH_I386, 3, audit),
            RET_ERRNO | libc::EAFNOSUPPORT as u32
        );
        assert_eq!(evaluate(&prog, AUDIT_ARCH_I386, 3, route), RET_ERRNO | 1);
        // Architectures without a table fail closed, whatever the number.
        for arch in [AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM, 0, 0xdead_beef] {
            for nr in [0, 2, 41, 1000] {
                assert_eq!(evaluate(&prog, arch, nr, [0; 6]), RET_KILL_PROCESS);
            }
        }
    }
}
