//! Thin wrappers over the syscalls that `nix` does not cover (clone3,
//! pidfds, the fd-based mount API, pty peers, close_range). Every `unsafe`
//! block of the crate lives here; everything returned is an owned fd.

pub mod fsmount;

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// clone3 flag (Linux 5.7); libc's constant has the wrong width.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Which side of a fork/clone the caller is on.
pub enum Forked {
    Parent {
        pid: libc::pid_t,
        pidfd: Option<OwnedFd>,
    },
    Child,
}

/// clone3(2) with a pidfd and, optionally, straight into a cgroup.
///
/// The caller must be single-threaded: the child runs ordinary Rust code
/// until it execs.
pub fn clone3(
    flags: u64,
    exit_signal: libc::c_int,
    cgroup: Option<BorrowedFd<'_>>,
) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    let mut args = libc::clone_args {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: exit_signal as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    if let Some(cg) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: args is a valid clone_args of the size we pass; with a zero
    // stack the child continues on a copy of our stack like fork(2).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match check(ret)? {
        0 => Ok(Forked::Child),
        pid => {
            // SAFETY: CLONE_PIDFD made the kernel store a fresh descriptor here.
            let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
            Ok(Forked::Parent {
                pid: pid as libc::pid_t,
                pidfd,
            })
        }
    }
}

/// Put every signal's disposition back to SIG_DFL (but SIGKILL and
/// SIGSTOP, which have no other): ignored signals survive execve, and the
/// Rust runtime ignores SIGPIPE. Raw rt_sigaction, because glibc refuses
/// the two real-time signals it keeps for itself, which a caller may still
/// have ignored.
pub fn reset_signal_dispositions() -> io::Result<()> {
    // An all-zero kernel sigaction is SIG_DFL with no flags and an empty
    // mask, whatever the architecture's field order.
    let default = [0u64; 4];
    let sigset_size = std::mem::size_of::<u64>();
    let mut first_error = Ok(());
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid, zeroed kernel sigaction that
        // outlives the call; a null old-action pointer is allowed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                sigset_size,
            )
        };
        if let (Err(e), Ok(())) = (check(ret), &first_error) {
            first_error = Err(e);
        }
    }
    first_error
}

/// Plain fork(2), for helpers that need no namespaces.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: callers are single-threaded, so the child can run any code.
    let ret = unsafe { libc::fork() };
    match check(ret.into())? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as libc::pid_t,
            pidfd: None,
        }),
    }
}

/// Leave immediately without running destructors or atexit handlers (for
/// forked children that must not flush their parent's buffers).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a null siginfo is allowed and means "as kill(2) would send it".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Exited(i32),
    Signaled(i32),
}

/// waitid(P_PIDFD, WEXITED); retries on EINTR.
pub fn pidfd_wait(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Option<ExitKind>> {
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
        // SAFETY: info is a valid out pointer; P_PIDFD takes the fd as id.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid filled a SIGCHLD siginfo (or left it zeroed for WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitKind::Exited(status),
            _ => ExitKind::Signaled(status),
        }));
    }
}

/// How the child behind `pidfd` ended, if it has, leaving it a zombie
/// (waitid with WNOWAIT): its PID stays taken until [`pidfd_wait`].
pub fn pidfd_peek_exit(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitKind>> {
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid initial value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: info is a valid out pointer; P_PIDFD takes the fd as id.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                flags,
            )
        };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // SAFETY: waitid filled a SIGCHLD siginfo (or left it zeroed for WNOHANG).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        return Ok(Some(match info.si_code {
            libc::CLD_EXITED => ExitKind::Exited(status),
            _ => ExitKind::Signaled(status),
        }));
    }
}

/// setns(2) with a pidfd and several namespace flags at once (Linux 5.8+),
/// or with a namespace descriptor and its one flag.
pub fn setns_pidfd(pidfd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with an fd we borrow for its duration.
    check(unsafe { libc::setns(pidfd.as_raw_fd(), flags) }.into()).map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    check(unsafe { libc::unshare(flags) }.into()).map(drop)
}

/// open_tree(2): a detached copy of the mount at `path` (OPEN_TREE_CLONE).
pub fn open_tree(
    dirfd: Option<BorrowedFd<'_>>,
    path: &CStr,
    flags: libc::c_uint,
) -> io::Result<OwnedFd> {
    let dirfd = dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: path is NUL-terminated and lives across the call.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) })
}

/// move_mount(2) of a detached mount fd onto a path.
pub fn move_mount_fd(
    from: BorrowedFd<'_>,
    to_dirfd: Option<BorrowedFd<'_>>,
    to: &CStr,
) -> io::Result<()> {
    let to_dirfd = to_dirfd.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    let empty = c"";
    // SAFETY: both paths are NUL-terminated and live across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to_dirfd,
            to.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// Mark every descriptor from `first` upwards close-on-exec.
pub fn cloexec_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only sets flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    check(ret).map(drop)
}

/// Close every descriptor above 2 but `keep`. Only for freshly forked
/// helpers (see [`close_from`]).
pub fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<libc::c_uint> = keep
        .iter()
        .filter_map(|&fd| libc::c_uint::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for k in keep {
        if k > first {
            // SAFETY: as for close_from; the range excludes the kept ones.
            check(unsafe { libc::syscall(libc::SYS_close_range, first, k - 1, 0) })?;
        }
        first = k + 1;
    }
    close_from(first)
}

/// Default dispositions for every signal and an empty signal mask, as a
/// program expects to start with (the Rust runtime ignores SIGPIPE, and
/// the caller blocks the signals it forwards).
pub fn reset_signal_handling() -> io::Result<()> {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction is plain data; SIG_DFL installs no handler, so
        // no Rust code can run in signal context because of this call.
        let ret = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        // Signals the C library reserves for itself refuse; that is fine.
        if ret < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: an empty, initialised set; the old mask is not wanted.
    let ret = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    check(ret.into()).map(drop)
}

/// Close every descriptor from `first` upwards. Only for freshly forked
/// helpers, whose descriptors are all inherited copies owned by nobody in
/// this process image.
pub fn close_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: see above; no OwnedFd in the calling image refers to these.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
    check(ret).map(drop)
}

/// Open the peer (slave) side of a pty master without a path lookup.
pub fn pty_peer(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as its integer argument.
    owned(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) }.into())
}

/// Number N of /dev/pts/N for a pty master.
pub fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) }.into())?;
    Ok(n)
}

pub fn pty_unlock(master: BorrowedFd<'_>) -> io::Result<()> {
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) }.into())
        .map(drop)
}

/// Make `tty` the controlling terminal of the calling session leader.
pub fn set_controlling_tty(tty: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer "steal" flag.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSCTTY, 0) }.into()).map(drop)
}

pub fn get_winsize(tty: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    check(unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }.into())?;
    Ok(ws)
}

pub fn set_winsize(tty: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one winsize.
    check(
        unsafe {
            libc::ioctl(
                tty.as_raw_fd(),
                libc::TIOCSWINSZ,
                ws as *const libc::winsize,
            )
        }
        .into(),
    )
    .map(drop)
}

/// Duplicate `fd` onto the standard descriptor `target` (0, 1 or 2),
/// which stays open across exec.
pub fn dup_onto_stdio(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 onto a standard descriptor; the old 0/1/2 (if any) is
    // replaced atomically and is not owned by any OwnedFd in this process.
    check(unsafe { libc::dup2(fd.as_raw_fd(), target) }.into()).map(drop)
}

/// Bring a network interface up through the classic ioctl (used for `lo`
/// in a private network namespace).
pub fn interface_up(sock: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.to_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) }.into())?;
    // SAFETY: the union member ifr_flags was just written by the kernel.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }.into()).map(drop)
}

/// The current thread's real uid (never fails).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() == 0 }
}

/// Borrow a standard descriptor that the process image owns for its whole life.
pub fn stdio(fd: RawFd) -> BorrowedFd<'static> {
    debug_assert!((0..=2).contains(&fd));
    // SAFETY: 0, 1 and 2 are never closed by this program.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Borrow a descriptor that `owner` holds open (a library's socket) for as
/// long as `owner` is borrowed.
pub fn borrow_fd<T: ?Sized>(fd: RawFd, _owner: &T) -> BorrowedFd<'_> {
    // SAFETY: the caller passes the object owning `fd`; the returned borrow
    // cannot outlive it, and the object closes the descriptor only on drop.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// True when the descriptor refers to a terminal.
pub fn isatty(fd: impl AsFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd.as_fd().as_raw_fd()) == 1 }
}

/// Take ownership of a descriptor that arrived in an SCM_RIGHTS message.
pub fn adopt_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel installed this descriptor in our table while
    // receiving the message; nothing else refers to it yet.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Close one inherited descriptor in a freshly forked helper (one that no
/// OwnedFd of the helper's image will ever drop, since it exits via _exit).
pub fn close_inherited(fd: RawFd) {
    // SAFETY: see above; closing an unused or invalid number is harmless.
    unsafe { libc::close(fd) };
}

/// struct mount_attr (linux/mount.h), MOUNT_ATTR_SIZE_VER0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// mount_setattr(2) on a mount fd (AT_EMPTY_PATH), optionally recursive.
pub fn mount_setattr(
    mount: BorrowedFd<'_>,
    recursive: bool,
    set: u64,
    clear: u64,
) -> io::Result<()> {
    mount_setattr_with(mount, recursive, set, clear, None)
}

/// mount_setattr(2), with MOUNT_ATTR_IDMAP's user namespace if given.
pub fn mount_setattr_with(
    mount: BorrowedFd<'_>,
    recursive: bool,
    set: u64,
    clear: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let userns_fd = userns.map_or(0, |fd| fd.as_raw_fd() as u64);
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    let empty = c"";
    // SAFETY: attr is a valid mount_attr of the size we pass; the path is
    // an empty NUL-terminated string, as AT_EMPTY_PATH requires.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(drop)
}

/// A detached copy (OPEN_TREE_CLONE) of the mount at `path`, close-on-exec.
pub fn clone_mount(path: &CStr) -> io::Result<OwnedFd> {
    open_tree(None, path, libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC)
}

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

/// struct open_how (linux/openat2.h).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(2): open `path` below `dirfd` with resolve restrictions.
pub fn openat2(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: how is a valid open_how of the size passed; path is NUL-terminated.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })
}

/// The id of the mount `fd` is on (statx STATX_MNT_ID, Linux 5.8): two
/// places on one filesystem but different mounts (a bind) differ here,
/// where st_dev does not.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: statx is plain data; zeroed is a valid initial value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH)
    // and stx a valid out pointer.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    check(ret.into())?;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    Ok(stx.stx_mnt_id)
}

/// fgetxattr(2): the value of `name` on `fd`, None if it has none.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes and name NUL-terminated.
    let ret = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    match check(ret as libc::c_long) {
        Ok(n) => {
            buf.truncate(n as usize);
            Ok(Some(buf))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// fsetxattr(2).
pub fn set_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: value is valid for value.len() bytes and name NUL-terminated.
    let ret = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret.into()).map(drop)
}

/// fremovexattr(2); a missing attribute is no error.
pub fn remove_xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: name is NUL-terminated.
    let ret = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
    match check(ret.into()) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        other => other.map(drop),
    }
}

/// pidfd_getfd(2): a copy of descriptor `fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is a fresh
    // descriptor of ours (close-on-exec, as the kernel sets it).
    owned(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) })
}

/// The CLONE_NEW* type of a namespace descriptor (ioctl NS_GET_NSTYPE).
pub fn namespace_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) }.into()).map(|t| t as libc::c_int)
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
            std::mem::size_of::<T>() as libc::c_uint,
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
            attr.log_size = log.len() as u32;
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
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    check(bpf(BPF_PROG_ATTACH, &mut attr)).map(drop)
}

/// Detach that program from that cgroup again.
pub fn bpf_detach_device_program(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
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
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
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

pub const MOUNT_ATTR_STRICTATIME: u64 = 0x0000_0020;

/// move_mount(2) of a detached mount onto exactly what `to` refers to (an
/// O_PATH descriptor of the target, MOVE_MOUNT_T_EMPTY_PATH): whatever
/// happens to the path the target was found by meanwhile.
pub fn move_mount_onto(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    let empty = c"";
    // SAFETY: both paths are empty NUL-terminated strings, as the
    // *_EMPTY_PATH flags require; the descriptors are borrowed for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(ret).map(drop)
}

/// A new, detached filesystem mount (fsopen + fsconfig + fsmount): `fstype`
/// with `options` ("key=value" or "flag", comma-separated, as mount(8)
/// takes them) and MOUNT_ATTR_* `attrs`. The descriptor is its root.
pub fn new_mount(fstype: &CStr, options: &str, attrs: u64) -> io::Result<OwnedFd> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_FLAG: libc::c_uint = 0;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    // SAFETY: fstype is NUL-terminated and lives across the call.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    let config = |cmd: libc::c_uint, key: Option<&CStr>, value: Option<&CStr>| {
        let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: key and value are NUL-terminated or null, as `cmd` wants.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                ptr(key),
                ptr(value),
                0,
            )
        })
        .map(drop)
    };
    let cstring =
        |s: &str| std::ffi::CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
    // Named after its type, as mount(8) and nspawn name such mounts.
    config(FSCONFIG_SET_STRING, Some(c"source"), Some(fstype))?;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some((key, value)) => config(
                FSCONFIG_SET_STRING,
                Some(&cstring(key)?),
                Some(&cstring(value)?),
            )?,
            None => config(FSCONFIG_SET_FLAG, Some(&cstring(option)?), None)?,
        }
    }
    config(FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: plain syscall with integer arguments.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attrs as libc::c_uint,
        )
    })
}

/// One datagram read from a socket: how long it really was, the sender's
/// PID (with SO_PASSCRED) and every descriptor that came with it, owned so
/// that dropping them closes them.
#[derive(Debug)]
pub struct Datagram {
    /// The datagram's full length (more than the buffer if it was cut).
    pub len: usize,
    pub pid: Option<libc::pid_t>,
    pub fds: Vec<OwnedFd>,
    /// The control data did not fit: what the kernel could not hand over
    /// it has already closed, what it did is in `fds`.
    pub control_truncated: bool,
}

/// SCM_PIDFD (Linux 6.5): a pidfd of the sender, with SO_PASSPIDFD; libc
/// does not name it yet.
const SCM_PIDFD: libc::c_int = 0x04;

/// Room for credentials and a full SCM_RIGHTS message (SCM_MAX_FD = 253
/// descriptors) with plenty to spare for SCM_PIDFD or a security label.
const CONTROL_WORDS: usize = 1024;

/// recvmsg(2) without waiting: Ok(None) when nothing is queued. The data
/// goes to `buf`; descriptors are received close-on-exec.
pub fn recv_datagram(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Datagram>> {
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    let len = loop {
        // SAFETY: msg points at the iovec and control buffer above, both
        // valid for their stated lengths for the duration of the call.
        let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if ret >= 0 {
            break ret as usize;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    };
    let mut out = Datagram {
        len,
        pid: None,
        fds: Vec::new(),
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    };
    // The kernel shrank msg_controllen to what it wrote; walk all of it.
    // SAFETY: CMSG_FIRSTHDR/NXTHDR only read msg and the control buffer it
    // points to, and return null past msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: c points at a complete cmsghdr inside the control buffer.
        let hdr = unsafe { std::ptr::read_unaligned(c) };
        // SAFETY: CMSG_DATA points just past the header inside the buffer;
        // CMSG_LEN(0) is the header's size.
        let (data, header) = unsafe { (libc::CMSG_DATA(c), libc::CMSG_LEN(0) as usize) };
        let payload = (hdr.cmsg_len as usize).saturating_sub(header);
        if hdr.cmsg_level == libc::SOL_SOCKET {
            match hdr.cmsg_type {
                libc::SCM_RIGHTS | SCM_PIDFD => {
                    let n = payload / std::mem::size_of::<libc::c_int>();
                    for i in 0..n {
                        // SAFETY: the kernel wrote n ints after the header.
                        let fd =
                            unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                        if fd >= 0 {
                            // SAFETY: installed in our table by this recvmsg; nobody else owns it.
                            out.fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                libc::SCM_CREDENTIALS if payload >= std::mem::size_of::<libc::ucred>() => {
                    // SAFETY: a complete ucred follows the header.
                    let cred = unsafe { std::ptr::read_unaligned(data.cast::<libc::ucred>()) };
                    out.pid = Some(cred.pid);
                }
                _ => {}
            }
        }
        // SAFETY: as CMSG_FIRSTHDR above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok(Some(out))
}

/// NS_GET_ID (Linux 6.18): a namespace's 64-bit ID, which unlike its
/// inode number is never handed to another namespace.
const NS_GET_ID: libc::c_ulong = 0x8008_b70d;

/// The ID of the namespace `ns` (an open /proc/PID/ns/* file).
pub fn namespace_id(ns: BorrowedFd<'_>) -> io::Result<u64> {
    let mut id: u64 = 0;
    // SAFETY: NS_GET_ID writes one u64 to the pointer it is given.
    check(unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_ID, &mut id) }.into())?;
    Ok(id)
}
