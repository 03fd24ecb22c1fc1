//! Ownership for guests in a user namespace: idmapped mounts (the tree on
//! disk stays owned by host ids, the guest sees them as its own) and the
//! chown fallback.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::spec::userns::{RANGE, UidRange};
use crate::sys::{self, Forked};

/// The host id nspawn gives the launcher's own writes through an idmapped
/// mount (UID_MAPPED_ROOT): host root must map to something in the mount.
const MAPPED_ROOT: u32 = 2_147_483_646;

/// A user namespace that only describes a mapping (ids [0, range) of the
/// filesystem appear as host [shift, shift+range); host root writes as
/// MAPPED_ROOT), for MOUNT_ATTR_IDMAP.
pub fn mapping_userns(range: UidRange) -> Result<OwnedFd> {
    userns_with_map(&format!(
        "0 {} {}\n{MAPPED_ROOT} 0 1\n",
        range.shift, range.range
    ))
}

/// A user namespace with exactly these uid_map/gid_map lines, alive only
/// as long as the returned descriptor.
pub fn userns_with_map(map: &str) -> Result<OwnedFd> {
    let (rx, tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::syscall("pipe2", e))?;
    match sys::clone3(libc::CLONE_NEWUSER as u64, libc::SIGCHLD, None)
        .map_err(|e| Error::syscall("clone3(CLONE_NEWUSER)", e))?
    {
        Forked::Child => {
            // Wait until the parent has what it needs, then go.
            drop(tx);
            let _ = nix::unistd::read(&rx, &mut [0u8; 1]);
            sys::exit_now(0)
        }
        Forked::Parent { pid, pidfd } => {
            drop(rx);
            // /proc may be of another PID namespace than ours (the
            // container process, before its pivot): the pidfd's fdinfo
            // names the child as that /proc knows it.
            let pid = pidfd
                .as_ref()
                .and_then(|fd| pid_in_proc(fd.as_fd()))
                .unwrap_or(pid);
            let result = (|| {
                for file in ["uid_map", "gid_map"] {
                    let p = format!("/proc/{pid}/{file}");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|mut f| f.write_all(map.as_bytes()))
                        .map_err(|e| Error::io("writing", &p, e))?;
                }
                let p = format!("/proc/{pid}/ns/user");
                std::fs::File::open(&p)
                    .map(OwnedFd::from)
                    .map_err(|e| Error::io("opening", &p, e))
            })();
            drop(tx);
            if let Some(pidfd) = pidfd {
                let _ = sys::pidfd_wait(pidfd.as_fd(), sys::Wait::Block);
            }
            result
        }
    }
}

/// The PID a pidfd refers to, as the mounted /proc numbers it.
fn pid_in_proc(pidfd: std::os::fd::BorrowedFd<'_>) -> Option<i32> {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|p| *p > 0)
}

/// A detached clone of the mount tree at `path`, idmapped through `userns`
/// (and read-only if asked), ready to be moved into place.
pub fn idmapped_clone(
    path: &Path,
    userns: &OwnedFd,
    recursive: bool,
    read_only: bool,
) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::io("path", path, std::io::ErrorKind::InvalidInput.into()))?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let fd = sys::open_tree(None, &c, flags).map_err(|e| Error::io("open_tree", path, e))?;
    let mut set = sys::MOUNT_ATTR_IDMAP;
    if read_only {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr_with(fd.as_fd(), recursive, set, 0, Some(userns.as_fd())).map_err(|e| {
        Error::Idmap {
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    Ok(fd)
}

/// The extended attribute that marks a tree whose ownership is being
/// shifted: "TARGET FROM..." (decimal host ids), set before the walk and
/// removed after the root, the record of a finished shift, was changed.
/// In the trusted namespace: only host root can read or set it, never a
/// guest, whatever it owns. Filesystems without extended attributes get a
/// file in [`CHOWN_MARK_DIR`] instead.
const CHOWN_MARK: &std::ffi::CStr = c"trusted.nixspawn.chown";

/// Where the mark goes instead on a filesystem without extended attributes
/// (ramfs, some FUSE): a file per tree root (device and inode), on the host.
const CHOWN_MARK_DIR: &str = "/run/nixspawn-chown";

/// The shift an interrupted `chown` walk of `tree` was making, if any: the
/// range to prefer for the run that finishes it.
pub fn chown_in_progress(tree: &Path) -> Option<u32> {
    let root = open_tree_root(tree).ok()?;
    read_mark(&root).ok().flatten().map(|(target, _)| target)
}

fn unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// The host-side mark file for the tree root `root`.
fn mark_file(root: &OwnedFd) -> std::io::Result<std::path::PathBuf> {
    let st = nix::sys::stat::fstat(root)?;
    Ok(crate::state::run_path(CHOWN_MARK_DIR).join(format!("{}-{}", st.st_dev, st.st_ino)))
}

fn get_mark(root: &OwnedFd) -> std::io::Result<Option<Vec<u8>>> {
    match sys::get_xattr(root.as_fd(), CHOWN_MARK) {
        Err(e) if unsupported(&e) => match std::fs::read(mark_file(root)?) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        other => other,
    }
}

fn set_mark(root: &OwnedFd, value: &[u8]) -> std::io::Result<()> {
    match sys::set_xattr(root.as_fd(), CHOWN_MARK, value) {
        Err(e) if unsupported(&e) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(crate::state::run_path(CHOWN_MARK_DIR))?;
            let file = mark_file(root)?;
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, value)?;
            std::fs::rename(&tmp, &file)
        }
        other => other,
    }
}

fn remove_mark(root: &OwnedFd) -> std::io::Result<()> {
    match sys::remove_xattr(root.as_fd(), CHOWN_MARK) {
        Err(e) if unsupported(&e) => match std::fs::remove_file(mark_file(root)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        other => other,
    }
}

fn open_tree_root(tree: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        tree,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::io("opening", tree, e.into()))
}

fn read_mark(root: &OwnedFd) -> std::io::Result<Option<(u32, Vec<u32>)>> {
    let Some(value) = get_mark(root)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&value);
    let mut ids = text.split_whitespace().map(|w| w.parse::<u32>());
    match (ids.next(), ids.collect::<std::result::Result<Vec<_>, _>>()) {
        (Some(Ok(target)), Ok(from)) => Ok(Some((target, from))),
        // Unreadable (only host root could have written it): start over
        // from what the root says.
        _ => Ok(Some((u32::MAX, Vec::new()))),
    }
}

/// Shift the ownership of the tree onto `range` on disk, once: a tree whose
/// root directory already belongs to the shift is left alone (the root is
/// the record, as with systemd-nspawn's chown mode). Ids below the range's
/// size, and those at the base the root's owner names (an earlier shift
/// for a tree used with another range), move to the new range.
///
/// The walk runs as host root on a tree someone else may own, so it goes by
/// descriptor and changes only what it holds open: every entry is opened
/// O_PATH|O_NOFOLLOW relative to its already open directory (a directory
/// or link swapped in meanwhile changes nothing outside), owners are
/// changed on the descriptor, setuid bits are put back on that inode and
/// never through a link, and nothing on another mount (another filesystem
/// or a bind, which can show host files of the same one) is touched. The
/// tree is marked busy first and the root changed last, so a walk that is
/// killed is finished by the next run rather than taken as done.
pub fn chown_tree(tree: &Path, range: UidRange) -> Result<bool> {
    let root = open_tree_root(tree)?;
    let st = nix::sys::stat::fstat(&root).map_err(|e| Error::io("stat", tree, e.into()))?;
    let mark_err = |e: std::io::Error| Error::BadTree {
        path: tree.to_path_buf(),
        reason: format!("cannot record a shift of its ownership in progress: {e}"),
    };
    let pending = read_mark(&root).map_err(mark_err)?;
    if pending.is_none() && st.st_uid == range.shift {
        return Ok(false);
    }
    // Where the ids may be now: unshifted, at the base the root's owner
    // names, and, after an interrupted walk, wherever that walk was
    // moving them from and to.
    let mut from = vec![0, st.st_uid - st.st_uid % RANGE];
    if let Some((target, earlier)) = &pending {
        from.extend(earlier.iter().copied());
        from.push(*target);
    }
    from.retain(|b| *b != range.shift && *b != u32::MAX);
    from.sort_unstable();
    from.dedup();
    let mark = std::iter::once(range.shift)
        .chain(from.iter().copied())
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    set_mark(&root, mark.as_bytes()).map_err(mark_err)?;

    let walk = Walk {
        dev: st.st_dev,
        mount: sys::mount_id(root.as_fd()).map_err(|e| Error::io("statx", tree, e))?,
        range,
        from,
    };
    walk.dir(&root, tree)?;
    walk.change(&root, &st, tree)?;
    remove_mark(&root).map_err(|e| Error::io("marking", tree, e))?;
    Ok(true)
}

struct Walk {
    dev: libc::dev_t,
    mount: u64,
    range: UidRange,
    /// The bases ids move from.
    from: Vec<u32>,
}

impl Walk {
    fn shift(&self, id: u32) -> u32 {
        self.from
            .iter()
            .find(|base| id >= **base && id - **base < self.range.range)
            .map_or(id, |base| self.range.shift + (id - base))
    }

    /// Everything below the open directory `dir` (shown as `shown`).
    fn dir(&self, dir: &OwnedFd, shown: &Path) -> Result<()> {
        use nix::fcntl::OFlag;
        let listing = dir
            .try_clone()
            .map_err(|e| Error::io("duplicating", shown, e))
            .and_then(|fd| {
                nix::dir::Dir::from_fd(fd).map_err(|e| Error::io("listing", shown, e.into()))
            })?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| Error::io("listing", shown, e.into()))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        for name in names {
            let path = shown.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let fd = match nix::fcntl::openat(
                dir,
                name.as_c_str(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            ) {
                Ok(fd) => fd,
                // Gone meanwhile: nothing to change.
                Err(nix::errno::Errno::ENOENT) => continue,
                Err(e) => return Err(Error::io("opening", &path, e.into())),
            };
            let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::io("stat", &path, e.into()))?;
            let mount = sys::mount_id(fd.as_fd()).map_err(|e| Error::io("statx", &path, e))?;
            if st.st_dev != self.dev || mount != self.mount {
                // A mount inside the tree: not the tree's to change.
                continue;
            }
            self.change(&fd, &st, &path)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                // The very directory just changed, opened for listing.
                let sub = nix::fcntl::openat(
                    &fd,
                    c".",
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| Error::io("opening", &path, e.into()))?;
                self.dir(&sub, &path)?;
            }
        }
        Ok(())
    }

    /// Shift the owner of the inode `fd` holds (described by `st`).
    fn change(&self, fd: &OwnedFd, st: &nix::sys::stat::FileStat, shown: &Path) -> Result<()> {
        let (uid, gid) = (self.shift(st.st_uid), self.shift(st.st_gid));
        if (uid, gid) == (st.st_uid, st.st_gid) {
            return Ok(());
        }
        nix::unistd::fchownat(
            fd,
            c"",
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| Error::io("chown", shown, e.into()))?;
        // chown clears setuid/setgid bits: put them back, on this inode
        // (through /proc/self/fd, as an O_PATH descriptor takes no fchmod;
        // never for a link, whose magic link would lead to its target).
        let kind = st.st_mode & libc::S_IFMT;
        if kind != libc::S_IFLNK && st.st_mode & 0o6000 != 0 {
            let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
            std::fs::set_permissions(
                &proc,
                std::os::unix::fs::PermissionsExt::from_mode(st.st_mode & 0o7777),
            )
            .map_err(|e| Error::io("chmod", shown, e))?;
        }
        Ok(())
    }
}
