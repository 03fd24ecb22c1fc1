//! A classic-BPF seccomp program for x86: dispatch on the ABI (x86-64,
//! x32, i386), then binary-search the syscall number among intervals that
//! share one action — about a dozen instructions per syscall whatever the
//! policy's size.

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

/// The whole program: x86-64 (and x32, which shares its audit arch) and
/// i386; any other architecture cannot run here and is allowed, as
/// libseccomp's per-arch filters do.
pub fn program(x86_64: &Table, x32: &Table, i386: &Table) -> Vec<Insn> {
    let mut e = Emitter { prog: Vec::new() };
    e.push(insn(LD_ABS_W, 0, 0, OFF_ARCH));
    e.push(insn(JEQ_K, 0, 1, AUDIT_ARCH_X86_64));
    let to_x86_64 = e.jump();
    e.push(insn(JEQ_K, 0, 1, AUDIT_ARCH_I386));
    let to_i386 = e.jump();
    e.push(insn(RET_K, 0, 0, RET_ALLOW));

    e.land(to_x86_64);
    e.push(insn(LD_ABS_W, 0, 0, OFF_NR));
    e.push(insn(JGE_K, 0, 1, X32_SYSCALL_BIT));
    let to_x32 = e.jump();
    e.tree(&x86_64.intervals());
    e.land(to_x32);
    e.tree(&x32.intervals());

    e.land(to_i386);
    e.push(insn(LD_ABS_W, 0, 0, OFF_NR));
    e.tree(&i386.intervals());
    e.prog
}

/// Run `prog` on (arch, nr, args) as the kernel would: the return value.
/// For tests and for `nixspawn --debug` explanations.
pub fn evaluate(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let load = |off: u32| -> u32 {
        match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            o if (16..64).contains(&o) && (o - 16) % 8 == 0 => args[((o - 16) / 8) as usize] as u32,
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
        let prog = program(&x86_64, &x32, &i386);
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
    }
}
