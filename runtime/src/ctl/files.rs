//! Files into and out of a running guest (`nixspawnctl copy-to`,
//! `copy-from`, `bind`), as machinectl does them: a helper process joins
//! the guest's mount namespace (whose root is then the guest's root) and
//! resolves the guest's side there, with openat2(RESOLVE_IN_ROOT) and then
//! descriptor by descriptor with O_NOFOLLOW, so no guest symlink ever
//! leads to a host path. The host's side is opened by the caller before
//! the helper joins. Ownership follows machined: under a user namespace
//! what is copied in belongs to the guest's root and what is copied out to
//! the host's root; without one, owners are kept.

use std::ffi::{CStr, CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

use crate::error::{Error, Result};
use crate::guest::rootfs::resolve::{self, Create};
use crate::state::State;
use crate::sys::{self, Forked};

/// Split a path into its parent and a plain last component.
fn split(path: &Path, what: &'static str) -> Result<(PathBuf, CString)> {
    let bad = |reason: &str| Error::InvalidValue {
        what,
        value: path.display().to_string(),
        reason: reason.into(),
    };
    let name = path
        .file_name()
        .filter(|n| *n != OsStr::new(".") && *n != OsStr::new(".."))
        .ok_or_else(|| bad("names no file (it must end in a file name)"))?;
    let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = CString::new(name.as_bytes()).map_err(|_| bad("contains a NUL byte"))?;
    Ok((
        if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent
        },
        name,
    ))
}

/// Run `work` in a child that joined the leader's mount namespace; its
/// error comes back as one line.
fn in_guest_mounts(state: &State, work: impl FnOnce() -> Result<()>) -> Result<()> {
    let leader = state.open_leader()?;
    let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::syscall("pipe2", e))?;
    match sys::clone3(0, libc::SIGCHLD, None).map_err(|e| Error::syscall("clone3", e))? {
        Forked::Child => {
            drop(rx);
            let r = sys::setns_pidfd(leader.as_fd(), libc::CLONE_NEWNS)
                .map_err(|e| Error::syscall("setns(CLONE_NEWNS)", e))
                .and_then(|()| work());
            match r {
                Ok(()) => sys::exit_now(0),
                Err(e) => {
                    let _ = std::fs::File::from(tx).write_all(e.to_string().as_bytes());
                    sys::exit_now(1)
                }
            }
        }
        Forked::Parent { pidfd, .. } => {
            drop(tx);
            let mut msg = String::new();
            let _ = std::fs::File::from(rx).read_to_string(&mut msg);
            let exit = match pidfd {
                Some(fd) => sys::pidfd_wait(fd.as_fd(), sys::Wait::Block)
                    .map_err(|e| Error::syscall("waitid", e))?,
                None => None,
            };
            if exit == Some(sys::ExitKind::Exited(0)) && msg.is_empty() {
                Ok(())
            } else {
                Err(Error::Enter {
                    name: state.name.to_string(),
                    step: "work in its mount namespace".into(),
                    message: if msg.is_empty() {
                        format!("the helper ended with {exit:?}")
                    } else {
                        msg
                    },
                })
            }
        }
    }
}

/// The guest directory `dir`, resolved inside the guest's root (we are in
/// its mount namespace), as an O_PATH descriptor.
fn guest_dir(dir: &Path, create: Create) -> Result<OwnedFd> {
    resolve::open_in(Path::new("/"), dir, create)
}

/// Who owns the copies: None keeps the source's owners.
type Owner = Option<(u32, u32)>;

/// Copy `name` in `from` to `to_name` in `to`, recursively, never
/// following a symlink (links are copied as links); fails if the target
/// exists.
fn copy_entry(
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
    to_name: &CStr,
    owner: Owner,
) -> Result<()> {
    let shown = || PathBuf::from(OsStr::from_bytes(name.to_bytes()));
    let st = nix::sys::stat::fstatat(from, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("stat", shown(), e.into()))?;
    let kind = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
    let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
    let io = |what, e: nix::errno::Errno| Error::io(what, shown(), e.into());
    if kind == SFlag::S_IFDIR {
        nix::sys::stat::mkdirat(to, to_name, Mode::from_bits_truncate(0o700))
            .map_err(|e| io("mkdir", e))?;
        let open_dir = |at: BorrowedFd<'_>, n: &CStr, extra: OFlag| {
            nix::fcntl::openat(
                at,
                n,
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra,
                Mode::empty(),
            )
        };
        let src = open_dir(from, name, OFlag::O_RDONLY).map_err(|e| io("opening", e))?;
        let dst = open_dir(to, to_name, OFlag::O_PATH).map_err(|e| io("opening the copy", e))?;
        let mut dir =
            nix::dir::Dir::from_fd(src.try_clone().map_err(|e| Error::io("dup", shown(), e))?)
                .map_err(|e| io("reading", e))?;
        let names: Vec<CString> = dir
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        for n in names {
            copy_entry(src.as_fd(), &n, dst.as_fd(), &n, owner)?;
        }
        nix::sys::stat::fchmodat(
            dst.as_fd(),
            c".",
            mode,
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| io("chmod", e))?;
    } else if kind == SFlag::S_IFREG {
        let src = nix::fcntl::openat(
            from,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("opening", e))?;
        let dst = nix::fcntl::openat(
            to,
            to_name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io("creating the copy of", e))?;
        let (mut src, mut dst) = (std::fs::File::from(src), std::fs::File::from(dst));
        std::io::copy(&mut src, &mut dst).map_err(|e| Error::io("copying", shown(), e))?;
        nix::sys::stat::fchmod(&dst, mode).map_err(|e| io("chmod", e))?;
    } else if kind == SFlag::S_IFLNK {
        let target = nix::fcntl::readlinkat(from, name).map_err(|e| io("readlink", e))?;
        nix::unistd::symlinkat(target.as_os_str(), to, to_name).map_err(|e| io("symlink", e))?;
    } else if kind == SFlag::S_IFIFO {
        nix::sys::stat::mknodat(to, to_name, SFlag::S_IFIFO, mode, 0)
            .map_err(|e| io("mkfifo", e))?;
    } else {
        return Err(Error::InvalidValue {
            what: "file to copy",
            value: shown().display().to_string(),
            reason: "is a device node or socket, which are not copied".into(),
        });
    }
    let (uid, gid) = owner.unwrap_or((st.st_uid, st.st_gid));
    nix::unistd::fchownat(
        to,
        to_name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io("chown", e))
}

/// Open the host directory `dir` (the caller's own path).
fn host_dir(dir: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening", dir, e.into()))
}

/// `copy-to`: the host's `host` to the guest's `guest` (which must not exist).
pub fn copy_to(state: &State, host: &Path, guest: &Path) -> Result<()> {
    let (hparent, hname) = split(host, "host path")?;
    let (gparent, gname) = split(guest, "guest path")?;
    let src = host_dir(&hparent)?;
    let owner = state.uid_range.map(|r| (r.shift, r.shift));
    in_guest_mounts(state, || {
        let dst = guest_dir(&gparent, Create::Nothing)?;
        copy_entry(src.as_fd(), &hname, dst.as_fd(), &gname, owner)
    })
}

/// `copy-from`: the guest's `guest` to the host's `host` (which must not exist).
pub fn copy_from(state: &State, guest: &Path, host: &Path) -> Result<()> {
    let (hparent, hname) = split(host, "host path")?;
    let (gparent, gname) = split(guest, "guest path")?;
    let dst = host_dir(&hparent)?;
    let owner = state.uid_range.map(|_| (0, 0));
    in_guest_mounts(state, || {
        let src = guest_dir(&gparent, Create::Nothing)?;
        copy_entry(src.as_fd(), &gname, dst.as_fd(), &hname, owner)
    })
}

/// `bind`: the host's `host` mounted on the guest's `guest` (created with
/// `mkdir`), read-only if asked. The mount is made detached on the host
/// (open_tree) and moved onto the target the helper resolved in the
/// guest's mount namespace.
pub fn bind(state: &State, host: &Path, guest: &Path, read_only: bool, mkdir: bool) -> Result<()> {
    let meta = std::fs::metadata(host).map_err(|e| Error::io("stat", host, e))?;
    let c = CString::new(host.as_os_str().as_bytes())
        .map_err(|_| Error::io("path", host, std::io::ErrorKind::InvalidInput.into()))?;
    let flags =
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as libc::c_uint;
    let tree = sys::open_tree(None, &c, flags).map_err(|e| Error::Mount {
        what: format!("bind of {}", host.display()),
        target: guest.to_path_buf(),
        source: e,
    })?;
    if read_only {
        sys::mount_setattr(tree.as_fd(), true, sys::MOUNT_ATTR_RDONLY, 0).map_err(|e| {
            Error::Mount {
                what: format!("read-only bind of {}", host.display()),
                target: guest.to_path_buf(),
                source: e,
            }
        })?;
    }
    let create = match (mkdir, meta.is_dir()) {
        (false, _) => Create::Nothing,
        (true, true) => Create::Dir(0o755),
        (true, false) => Create::File(0o644),
    };
    let guest = guest.to_path_buf();
    in_guest_mounts(state, || {
        let target = guest_dir(&guest, create)?;
        let st = nix::sys::stat::fstat(&target).map_err(|e| Error::io("stat", &guest, e.into()))?;
        let is_dir = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR;
        if is_dir != meta.is_dir() {
            return Err(Error::InvalidValue {
                what: "bind target",
                value: guest.display().to_string(),
                reason: "is not of the source's kind (directory or file)".into(),
            });
        }
        sys::move_mount_onto(tree.as_fd(), target.as_fd()).map_err(|e| Error::Mount {
            what: "the bind".into(),
            target: guest.clone(),
            source: e,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_a_parent_and_a_plain_name() {
        let (p, n) = split(Path::new("/etc/motd"), "p").unwrap();
        assert_eq!((p.as_path(), n.as_c_str()), (Path::new("/etc"), c"motd"));
        let (p, n) = split(Path::new("motd"), "p").unwrap();
        assert_eq!((p.as_path(), n.as_c_str()), (Path::new("."), c"motd"));
        for bad in ["/", "/etc/.."] {
            assert!(split(Path::new(bad), "p").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tree_is_copied_with_links_as_links_and_never_over_a_file() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let t = from.path().join("t");
        std::fs::create_dir_all(t.join("d")).unwrap();
        std::fs::write(t.join("d/f"), "data").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", t.join("link")).unwrap();
        let open = |p: &Path| host_dir(p).unwrap();
        copy_entry(
            open(from.path()).as_fd(),
            c"t",
            open(to.path()).as_fd(),
            c"u",
            None,
        )
        .unwrap();
        let u = to.path().join("u");
        assert_eq!(std::fs::read_to_string(u.join("d/f")).unwrap(), "data");
        assert_eq!(
            std::fs::read_link(u.join("link")).unwrap(),
            Path::new("/etc/shadow")
        );
        let again = copy_entry(
            open(from.path()).as_fd(),
            c"t",
            open(to.path()).as_fd(),
            c"u",
            None,
        );
        assert!(again.is_err(), "an existing target is not overwritten");
    }
}
