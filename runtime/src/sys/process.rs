//! Processes: clone3 and fork (for a single-threaded caller), leaving at
//! once, and the signal state a new program starts with.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::check;

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

/// Set in every child of [`clone3`] and [`fork`], which never start threads.
static IN_FORKED_CHILD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Refuse to fork a process with more than one thread: the child would
/// get only the calling thread, and any lock another thread held (the
/// allocator's, say) would stay locked in it forever.
fn single_threaded() -> io::Result<()> {
    // A child of our own fork or clone has one thread by construction (and
    // may no longer see its own /proc: it may have joined a guest's mount
    // namespace).
    if IN_FORKED_CHILD.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .or_else(|_| std::fs::read_to_string("/proc/self/stat"))?;
    // Field 20 (num_threads), counted after the parenthesised command name.
    let threads = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(17))
        .and_then(|n| n.parse::<u64>().ok());
    match threads {
        Some(1) => Ok(()),
        Some(n) => Err(io::Error::other(format!(
            "refusing to fork a process with {n} threads (its child could inherit a held lock)"
        ))),
        None => Err(io::Error::other(
            "cannot read the thread count in /proc/self/stat",
        )),
    }
}

/// Check now that this process has one thread and remember it, for a
/// process that will never start another and is about to lose sight of
/// its own /proc (it joins a guest's mount namespace), as the long-lived
/// entry does before it enters.
pub fn settle_single_threaded() -> io::Result<()> {
    single_threaded()?;
    IN_FORKED_CHILD.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// clone3(2) with a pidfd and, optionally, straight into a cgroup. Refused
/// in a multi-threaded process: the child runs ordinary Rust code until it
/// execs or exits.
pub fn clone3(
    flags: u64,
    exit_signal: libc::c_int,
    cgroup: Option<BorrowedFd<'_>>,
) -> io::Result<Forked> {
    single_threaded()?;
    let mut pidfd: libc::c_int = -1;
    let mut args = libc::clone_args {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: u64::from(exit_signal.cast_unsigned()),
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    if let Some(cg) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::from(cg.as_raw_fd().cast_unsigned());
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
        0 => {
            IN_FORKED_CHILD.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Forked::Child)
        }
        pid => {
            // SAFETY: CLONE_PIDFD made the kernel store a fresh descriptor here.
            let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
            Ok(Forked::Parent {
                pid: libc::pid_t::try_from(pid)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?,
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
    single_threaded()?;
    // SAFETY: the process is single-threaded (checked), so the child can
    // run any code.
    let ret = unsafe { libc::fork() };
    match check(ret.into())? {
        0 => {
            IN_FORKED_CHILD.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Forked::Child)
        }
        pid => Ok(Forked::Parent {
            pid: libc::pid_t::try_from(pid)
                .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?,
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

/// The current thread's real uid (never fails).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() == 0 }
}

/// Fork a helper that holds none of this process's descriptors but 0-2
/// and `keep`, and runs `body` with them; the helper never comes back to
/// the caller's frames: it exits with `body`'s status (1 if it panics).
///
/// Sound because `body` is a plain function and `arg` plain data (`Copy`,
/// so no owned descriptor): the descriptors the helper closes belong to
/// values it never drops, and only `keep` is handed on. Returns the
/// helper's PID in the caller.
pub fn fork_helper<A: Copy>(
    keep: Vec<OwnedFd>,
    arg: A,
    body: fn(Vec<OwnedFd>, A) -> i32,
) -> io::Result<libc::pid_t> {
    match fork()? {
        Forked::Parent { pid, .. } => Ok(pid),
        Forked::Child => {
            let raw: Vec<_> = keep.iter().map(|fd| fd.as_raw_fd()).collect();
            if super::fd::close_all_but(&raw).is_err() {
                exit_now(1);
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(keep, arg)))
                .unwrap_or(1);
            exit_now(code)
        }
    }
}

/// See `os::die_with_parent`.
pub fn set_pdeathsig_on_spawn(cmd: &mut std::process::Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes the
    // prctl system call (async-signal-safe, no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::c_ulong::from(signal.cast_unsigned()),
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// personality(2): set the execution domain (`PER_LINUX32` makes uname(2)
/// report i686); returns the previous one.
pub fn set_personality(persona: libc::c_ulong) -> io::Result<()> {
    // SAFETY: personality(2) takes a plain integer and touches no memory
    // of ours.
    let ret = unsafe { libc::personality(persona) };
    check(ret.into()).map(|_| ())
}

/// setrlimit(2) for `resource` (a RLIMIT_* number); where raising the
/// hard limit is not allowed (no CAP_SYS_RESOURCE), the closest limits
/// that are, as systemd's setrlimit_closest() does.
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let set = |soft, hard| {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `limit` is a valid rlimit that outlives the call, which
        // only reads it.
        let ret = unsafe { libc::setrlimit(resource as _, &limit) };
        check(ret.into()).map(|_| ())
    };
    match set(soft, hard) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut now = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into `now`, a valid rlimit.
            check(unsafe { libc::getrlimit(resource as _, &mut now) }.into())?;
            let hard = hard.min(now.rlim_max);
            set(soft.min(hard), hard)
        }
        other => other,
    }
}

/// Wait for one of `wanted` (blocked by the caller; real-time ones
/// included, which nix's `Signal` cannot name), at most `timeout` if one is
/// given; its number, or None once the time is up.
pub fn wait_for_signal(
    wanted: &[libc::c_int],
    timeout: Option<std::time::Duration>,
) -> io::Result<Option<libc::c_int>> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    // SAFETY: the sigset_t is initialised by sigemptyset before any other
    // use; sigtimedwait may be given a null siginfo pointer, and a null
    // timeout (wait for ever) or one pointing at `ts`, which outlives it.
    let ret = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &s in wanted {
            libc::sigaddset(&mut set, s);
        }
        let ts = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        libc::sigtimedwait(&set, std::ptr::null_mut(), ts)
    };
    match check(ret.into()) {
        Ok(_) => Ok(Some(ret)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Block every signal (real-time ones included) in the calling thread.
pub fn block_all_signals() -> io::Result<()> {
    // SAFETY: the set is filled by sigfillset before sigprocmask reads it;
    // the old mask is not asked for.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut set);
        let ret = libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        check(ret.into()).map(|_| ())
    }
}

/// Overwrite this process's command line and environment as /proc shows
/// them (the strings the kernel placed on the initial stack, between the
/// addresses /proc/self/stat gives) with `cmdline` and `environ` (each a
/// run of NUL-terminated strings, cut to fit), the rest zeroed. For
/// `--as-pid2`'s stub init, which would otherwise show the guest the
/// launcher's argv and environment in /proc/1; it never reads its own.
pub fn replace_cmdline_and_environ(cmdline: &[u8], environ: &[u8]) -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 48-51 (arg_start, arg_end, env_start, env_end); `fields`
    // starts at field 3.
    let field = |n: usize| -> io::Result<usize> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("no address range in /proc/self/stat"))
    };
    for (start, end, text) in [
        (field(48)?, field(49)?, cmdline),
        (field(50)?, field(51)?, environ),
    ] {
        let Some(len) = end.checked_sub(start).filter(|l| *l > 0) else {
            continue;
        };
        let n = text.len().min(len - 1);
        // SAFETY: [start, end) is the part of our initial stack the kernel
        // filled with argv's or envp's strings, mapped and writable for
        // the life of the process; we write only inside it, and leave its
        // last byte NUL so every string in it stays terminated.
        unsafe {
            let base = start as *mut u8;
            std::ptr::copy_nonoverlapping(text.as_ptr(), base, n);
            std::ptr::write_bytes(base.add(n), 0, len - n);
        }
    }
    Ok(())
}
