//! The guest's device policy, enforced by nixspawn itself on every host:
//! systemd-nspawn's closed list (the standard nodes, /dev/console's and
//! every other pty, net/tun, fuse, and device nodes bound in) and nothing
//! else, so a guest's root can neither mknod nor open a host disk. Under
//! systemd, nspawn leaves this to its scope's DevicePolicy=closed; a host
//! without systemd (or `--keep-unit` under a unit without it) had none.
//!
//! Two layers, as systemd has them: a BPF_PROG_TYPE_CGROUP_DEVICE program
//! on the payload's parent in the cgroup v2 hierarchy (the kernel checks
//! it for every task of the subtree, on hybrid hosts too), and, where the
//! host mounts the v1 `devices` controller, its allow list. Both sit on a
//! cgroup the guest cannot see or write: the payload's parent.
//!
//! The program is a few dozen instructions written out here (see
//! [`program`]): a crate that loads BPF (aya, libbpf-rs) expects an ELF
//! object built by a BPF toolchain, which this one tiny, fixed-shape
//! filter does not warrant.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::spec::mounts::CustomMount;
use crate::sys::{self, BpfInsn};

/// Block or character device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    Block,
    Char,
}

/// Access bits, as the kernel passes them to a device program.
pub const MKNOD: u8 = 1;
pub const READ: u8 = 2;
pub const WRITE: u8 = 4;

/// One allowed device (or range of them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    pub kind: Kind,
    /// Majors from .0 to .1 (inclusive); None: any.
    pub major: Option<(u32, u32)>,
    /// None: any minor.
    pub minor: Option<u32>,
    /// MKNOD | READ | WRITE.
    pub access: u8,
}

impl Rule {
    fn device(kind: Kind, major: u32, minor: u32, access: u8) -> Rule {
        Rule {
            kind,
            major: Some((major, major)),
            minor: Some(minor),
            access,
        }
    }

    /// The lines for the v1 controller's devices.allow ("c 1:3 rwm").
    fn v1_lines(&self) -> Vec<String> {
        let kind = match self.kind {
            Kind::Block => 'b',
            Kind::Char => 'c',
        };
        let minor = self.minor.map_or("*".to_owned(), |m| m.to_string());
        let mut access = String::new();
        for (bit, c) in [(READ, 'r'), (WRITE, 'w'), (MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        match self.major {
            None => vec![format!("{kind} *:{minor} {access}")],
            Some((lo, hi)) => (lo..=hi)
                .map(|major| format!("{kind} {major}:{minor} {access}"))
                .collect(),
        }
    }
}

/// A host node's device number, or the well-known one if the host lacks it.
fn node(path: &str, fallback: (u32, u32)) -> (u32, u32) {
    fs::metadata(path)
        .ok()
        .filter(|m| m.file_type().is_char_device())
        .map(|m| {
            let rdev = m.rdev();
            (
                device_number(nix::sys::stat::major(rdev)),
                device_number(nix::sys::stat::minor(rdev)),
            )
        })
        .unwrap_or(fallback)
}

/// The majors of the pty peers (/dev/pts/N): what /proc/devices calls "pts".
fn pts_majors() -> (u32, u32) {
    let majors: Vec<u32> = fs::read_to_string("/proc/devices")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (major, name) = l.trim().split_once(' ')?;
            (name == "pts").then(|| major.parse().ok()).flatten()
        })
        .collect();
    match (majors.iter().min(), majors.iter().max()) {
        (Some(lo), Some(hi)) => (*lo, *hi),
        // UNIX98_PTY_SLAVE_MAJOR and the seven after it.
        _ => (136, 143),
    }
}

/// systemd-nspawn's closed policy for a guest with these mounts: what its
/// scope's DevicePolicy=closed allows, its DeviceAllow= list (net/tun,
/// char-pts, the device nodes bound in), and /dev/fuse, which the guest's
/// /dev gets too.
pub fn closed_policy(mounts: &[CustomMount]) -> Vec<Rule> {
    let rwm = READ | WRITE | MKNOD;
    let mut rules: Vec<Rule> = [
        ("/dev/null", (1, 3)),
        ("/dev/zero", (1, 5)),
        ("/dev/full", (1, 7)),
        ("/dev/random", (1, 8)),
        ("/dev/urandom", (1, 9)),
        ("/dev/tty", (5, 0)),
        ("/dev/ptmx", (5, 2)),
        ("/dev/net/tun", (10, 200)),
        ("/dev/fuse", (10, 229)),
    ]
    .into_iter()
    .map(|(path, fallback)| {
        let (major, minor) = node(path, fallback);
        Rule::device(Kind::Char, major, minor, rwm)
    })
    .collect();
    // The inaccessible nodes (/run/host/inaccessible/{chr,blk}) are 0:0.
    rules.push(Rule::device(Kind::Char, 0, 0, rwm));
    rules.push(Rule::device(Kind::Block, 0, 0, rwm));
    rules.push(Rule {
        kind: Kind::Char,
        major: Some(pts_majors()),
        minor: None,
        access: READ | WRITE,
    });
    for m in mounts {
        let CustomMount::Bind {
            source, read_only, ..
        } = m
        else {
            continue;
        };
        let Ok(meta) = fs::metadata(source) else {
            continue;
        };
        let kind = if meta.file_type().is_char_device() {
            Kind::Char
        } else if meta.file_type().is_block_device() {
            Kind::Block
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let access = if *read_only { READ } else { READ | WRITE };
        rules.push(Rule::device(
            kind,
            device_number(nix::sys::stat::major(rdev)),
            device_number(nix::sys::stat::minor(rdev)),
            access,
        ));
    }
    rules
}

// eBPF opcodes (linux/bpf.h): class | operation | source.
const LDX_MEM_W: u8 = 0x61;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const AND64_K: u8 = 0x57;
const RSH64_K: u8 = 0x77;
const JNE_K: u8 = 0x55;
const JLT_K: u8 = 0xa5;
const JGT_K: u8 = 0x25;
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The device program: 1 (allow) if a rule matches the access, else 0.
///
/// The context (struct bpf_cgroup_dev_ctx) is three u32: access_type
/// (device type in the low 16 bits, 1 block and 2 char; access bits in the
/// high 16), major, minor. Registers: r3 type, r2 access, r4 major,
/// r5 minor; each rule is a run of compares that jump to the next rule on
/// mismatch.
pub fn program(rules: &[Rule]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(MOV64_X, 3, 2, 0, 0),
        insn(AND64_K, 3, 0, 0, 0xffff),
        insn(RSH64_K, 2, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Each compare jumps to the end of this rule; patched below.
        let mut block: Vec<(BpfInsn, bool)> = Vec::new();
        let kind = match rule.kind {
            Kind::Block => 1,
            Kind::Char => 2,
        };
        block.push((insn(JNE_K, 3, 0, 0, kind), true));
        match rule.major {
            Some((lo, hi)) if lo == hi => {
                block.push((insn(JNE_K, 4, 0, 0, lo.cast_signed()), true))
            }
            Some((lo, hi)) => {
                block.push((insn(JLT_K, 4, 0, 0, lo.cast_signed()), true));
                block.push((insn(JGT_K, 4, 0, 0, hi.cast_signed()), true));
            }
            None => {}
        }
        if let Some(minor) = rule.minor {
            block.push((insn(JNE_K, 5, 0, 0, minor.cast_signed()), true));
        }
        // Every bit asked for must be allowed: none left once masked.
        block.push((insn(MOV64_X, 6, 2, 0, 0), false));
        block.push((insn(AND64_K, 6, 0, 0, !i32::from(rule.access) & 0x7), false));
        block.push((insn(JNE_K, 6, 0, 0, 0), true));
        block.push((insn(MOV64_K, 0, 0, 0, 1), false));
        block.push((insn(EXIT, 0, 0, 0, 0), false));
        let len = block.len();
        for (i, (mut ins, jumps)) in block.into_iter().enumerate() {
            if jumps {
                ins.off = i16::try_from(len - i - 1)
                    .expect("a rule's block is a handful of instructions");
            }
            p.push(ins);
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

fn open_cgroup(dir: &Path) -> Result<OwnedFd> {
    fs::File::open(dir)
        .map(OwnedFd::from)
        .map_err(|e| Error::Cgroup {
            step: "opening",
            path: dir.to_path_buf(),
            source: e,
        })
}

/// Load the policy's program and attach it to the cgroup `dir`; returns
/// the program's id (to detach it from a cgroup that outlives the guest).
pub fn attach(dir: &Path, rules: &[Rule]) -> Result<u32> {
    let cgroup = open_cgroup(dir)?;
    let prog = sys::bpf_load_device_program(&program(rules), "nixspawn_devs").map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM | libc::ENOSYS) => {
                " (the guest's device policy is a cgroup BPF program; is nixspawn itself under a seccomp filter that refuses bpf()?)"
            }
            _ => "",
        };
        Error::syscall(
            "bpf(BPF_PROG_LOAD) of the device policy",
            io::Error::new(e.kind(), format!("{e}{hint}")),
        )
    })?;
    sys::bpf_attach_device_program(cgroup.as_fd(), prog.as_fd()).map_err(|e| Error::Cgroup {
        step: "attaching the device policy to",
        path: dir.to_path_buf(),
        source: e,
    })?;
    sys::bpf_program_id(prog.as_fd()).map_err(|e| Error::syscall("bpf(BPF_OBJ_GET_INFO_BY_FD)", e))
}

/// Detach the program `id` from the cgroup `dir` (nothing to do if either
/// is gone).
pub fn detach(dir: &Path, id: u32) -> Result<()> {
    let Ok(cgroup) = fs::File::open(dir).map(OwnedFd::from) else {
        return Ok(());
    };
    let Ok(prog) = sys::bpf_program_by_id(id) else {
        return Ok(());
    };
    match sys::bpf_detach_device_program(cgroup.as_fd(), prog.as_fd()) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(Error::Cgroup {
            step: "detaching the device policy from",
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The host's v1 `devices` hierarchy, if it mounts one (hybrid and legacy
/// hosts) where we may create cgroups, and this process's cgroup in it.
/// Inside a container the v1 hierarchies are usually read-only: there the
/// v2 program alone holds the policy, as it does on a pure v2 host.
pub fn v1_hierarchy() -> Option<(PathBuf, PathBuf)> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, _, options) = (r.next()?, r.next()?, r.next()?);
        if fstype != "cgroup" || !options.split(',').any(|o| o == "devices") {
            return None;
        }
        let mut l = left.split(' ');
        let point = l.nth(4)?;
        if l.next()?.split(',').any(|o| o == "ro") {
            return None;
        }
        Some(PathBuf::from(crate::cgroup::hierarchy::unescape(point)))
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "devices")
            .then(|| PathBuf::from(path))
    })?;
    Some((mount, own))
}

/// Write the policy into a v1 devices cgroup: deny everything, allow the
/// rules (a v1 cgroup can only narrow what its parent allows).
pub fn v1_restrict(dir: &Path, rules: &[Rule]) -> Result<()> {
    let write = |file: &str, line: &str| {
        let p = dir.join(file);
        fs::write(&p, line).map_err(|e| Error::Cgroup {
            step: "writing the device policy to",
            path: p,
            source: e,
        })
    };
    write("devices.deny", "a")?;
    for rule in rules {
        for line in rule.v1_lines() {
            write("devices.allow", &line)?;
        }
    }
    Ok(())
}

/// Create `dir` and any missing parents below `mount`; returns those it
/// made, outermost first.
pub fn v1_make(mount: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut d = dir.to_path_buf();
    while d != mount && !d.exists() {
        missing.push(d.clone());
        if !d.pop() {
            break;
        }
    }
    missing.reverse();
    for d in &missing {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Cgroup {
                    step: "creating",
                    path: d.clone(),
                    source: e,
                });
            }
        }
    }
    Ok(missing)
}

/// A device's major or minor number as the device program compares it
/// (Linux's are 12 and 20 bits wide).
fn device_number(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the program over one access the way the kernel would, in a
    /// tiny interpreter of the opcodes it uses.
    fn run(prog: &[BpfInsn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [kind | (access << 16), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = u64::from(i.imm.cast_unsigned());
            pc += 1;
            let jump = |cond: bool, pc: &mut usize| {
                if cond {
                    *pc = pc
                        .checked_add_signed(isize::from(i.off))
                        .expect("a jump inside the program");
                }
            };
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[usize::from(i.off.cast_unsigned()) / 4]),
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = imm,
                AND64_K => r[dst] &= imm,
                RSH64_K => r[dst] >>= imm,
                JNE_K => jump(r[dst] != imm, &mut pc),
                JLT_K => jump(r[dst] < imm, &mut pc),
                JGT_K => jump(r[dst] > imm, &mut pc),
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_exactly_the_rules() {
        let rules = vec![
            Rule::device(Kind::Char, 1, 3, READ | WRITE | MKNOD),
            Rule {
                kind: Kind::Char,
                major: Some((136, 143)),
                minor: None,
                access: READ | WRITE,
            },
            Rule::device(Kind::Block, 7, 0, READ),
        ];
        let p = program(&rules);
        let (blk, chr) = (1, 2);
        let (m, r, w) = (u32::from(MKNOD), u32::from(READ), u32::from(WRITE));
        assert_eq!(run(&p, chr, r | w, 1, 3), 1, "/dev/null rw");
        assert_eq!(run(&p, chr, m, 1, 3), 1, "/dev/null mknod");
        assert_eq!(run(&p, chr, r, 1, 5), 0, "another minor");
        assert_eq!(
            run(&p, blk, r, 1, 3),
            0,
            "a block device with null's number"
        );
        assert_eq!(run(&p, chr, r | w, 136, 4), 1, "a pty");
        assert_eq!(run(&p, chr, r | w, 143, 0), 1, "the last pty major");
        assert_eq!(run(&p, chr, r, 144, 0), 0, "past the pty majors");
        assert_eq!(run(&p, chr, r, 135, 0), 0, "before them");
        assert_eq!(run(&p, chr, m, 136, 4), 0, "no mknod of ptys");
        assert_eq!(run(&p, blk, r, 7, 0), 1, "a bound disk, read");
        assert_eq!(run(&p, blk, w, 7, 0), 0, "a read-only bound disk, written");
        assert_eq!(run(&p, blk, r | m, 7, 0), 0, "mknod of it");
        assert_eq!(run(&p, blk, r, 8, 0), 0, "another disk");
    }

    #[test]
    fn v1_lines() {
        assert_eq!(
            Rule::device(Kind::Char, 1, 3, READ | WRITE | MKNOD).v1_lines(),
            ["c 1:3 rwm"]
        );
        let pts = Rule {
            kind: Kind::Char,
            major: Some((136, 137)),
            minor: None,
            access: READ | WRITE,
        };
        assert_eq!(pts.v1_lines(), ["c 136:* rw", "c 137:* rw"]);
    }

    #[test]
    fn the_closed_policy_has_the_standard_nodes_and_bound_devices() {
        let mounts = vec![
            CustomMount::parse_bind("/dev/null:/x", crate::spec::mounts::BindAccess::ReadOnly)
                .unwrap(),
        ];
        let rules = closed_policy(&mounts);
        assert!(rules.contains(&Rule::device(Kind::Char, 1, 9, READ | WRITE | MKNOD)));
        assert!(rules.contains(&Rule::device(Kind::Char, 1, 3, READ)));
        assert!(
            !rules
                .iter()
                .any(|r| r.kind == Kind::Block && r.major != Some((0, 0)))
        );
    }
}
