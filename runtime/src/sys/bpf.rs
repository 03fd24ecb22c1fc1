//! Loading BPF: seccomp filters (classic BPF) and cgroup device programs
//! (eBPF), attached, detached and found by id.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// A struct's size as the bpf() ABI takes it.
fn size_u32(n: usize) -> u32 {
    u32::try_from(n).expect("bpf attribute structs are small")
}

use super::{check, owned};

/// Install a seccomp filter on the calling thread (no_new_privs untouched:
/// the caller must hold CAP_SYS_ADMIN).
pub fn seccomp_install(prog: &[crate::security::seccomp::bpf::Insn]) -> io::Result<()> {
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: Insn is #[repr(C)] with sock_filter's layout; fprog points at
    // `len` valid instructions that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    check(ret).map(drop)
}

/// One eBPF instruction (struct bpf_insn): opcode, destination register in
/// the low and source register in the high nibble, offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The part of union bpf_attr that BPF_PROG_LOAD reads.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The part of union bpf_attr that BPF_PROG_ATTACH/DETACH read.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> libc::c_long {
    // SAFETY: attr is a valid prefix of union bpf_attr for `cmd`, of the
    // size passed; the kernel zero-extends what it does not get.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_u32(std::mem::size_of::<T>()),
        )
    }
}

/// Load a BPF_PROG_TYPE_CGROUP_DEVICE program. On a verifier error the
/// message carries its log.
pub fn bpf_load_device_program(insns: &[BpfInsn], name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(insns.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        ..Default::default()
    };
    match owned(bpf(BPF_PROG_LOAD, &mut attr)) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = owned(bpf(BPF_PROG_LOAD, &mut attr));
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            Err(match last {
                Some(l) => io::Error::new(e.kind(), format!("{e} (verifier: {l})")),
                None => e,
            })
        }
    }
}

/// Attach a device program to a cgroup (a directory descriptor), next to
/// any others (BPF_F_ALLOW_MULTI: every program attached here and above
/// must allow an access, and those below may only narrow it).
pub fn bpf_attach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd().cast_unsigned(),
        attach_bpf_fd: prog.as_raw_fd().cast_unsigned(),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    check(bpf(BPF_PROG_ATTACH, &mut attr)).map(drop)
}

/// Detach that program from that cgroup again.
pub fn bpf_detach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd().cast_unsigned(),
        attach_bpf_fd: prog.as_raw_fd().cast_unsigned(),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
    };
    check(bpf(BPF_PROG_DETACH, &mut attr)).map(drop)
}

/// The kernel's id of a loaded program (stable while it is attached
/// anywhere, unlike a descriptor).
pub fn bpf_program_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // The head of struct bpf_prog_info: its type, then its id.
    let mut info = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd().cast_unsigned(),
        info_len: size_u32(std::mem::size_of_val(&info)),
        info: info.as_mut_ptr() as u64,
    };
    check(bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr))?;
    Ok(info[1])
}

/// A descriptor for the program with this id.
pub fn bpf_program_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ByIdAttr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = ByIdAttr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    owned(bpf(BPF_PROG_GET_FD_BY_ID, &mut attr))
}
