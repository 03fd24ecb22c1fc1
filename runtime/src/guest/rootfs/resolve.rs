//! Paths inside the guest root, resolved as the guest will see them and
//! never out of it: a hostile tree whose /run, /proc or a bind target is a
//! symlink to a host path must not make us create, write or mount anything
//! on the host. Every component is resolved with openat2(RESOLVE_IN_ROOT)
//! (symlinks are followed as if the root were "/"), what is missing is
//! created relative to an already resolved parent (mkdirat, or
//! openat(O_CREAT|O_EXCL|O_NOFOLLOW)), and the result is the canonical path
//! of the resolved directory or file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::sys;

/// What to do when the path does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: it must exist.
    Nothing,
    /// A directory (and any missing parents, 0755) with this mode.
    Dir(u32),
    /// An empty regular file with this mode (parents as above).
    File(u32),
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::io("path", p, io::ErrorKind::InvalidInput.into()))
}

/// The guest path as a relative path of plain components.
fn relative(guest_path: &Path) -> PathBuf {
    normalize(guest_path)
}

fn open_in_root(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(if rel.as_os_str().is_empty() {
        b".".as_slice()
    } else {
        rel.as_os_str().as_bytes()
    })
    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    sys::openat2(
        root.as_fd(),
        &c,
        libc::O_PATH,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
    )
}

/// How many dangling symlinks one resolution may create the targets of
/// (the kernel's own limit for links in a path is 40).
const MAX_LINKS: u32 = 40;

fn open_or_create(root: &OwnedFd, root_path: &Path, rel: &Path, create: Create) -> Result<OwnedFd> {
    open_or_create_bounded(root, root_path, rel, create, MAX_LINKS)
}

fn open_or_create_bounded(
    root: &OwnedFd,
    root_path: &Path,
    rel: &Path,
    create: Create,
    links: u32,
) -> Result<OwnedFd> {
    let shown = || Path::new("/").join(rel);
    match open_in_root(root, rel) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create != Create::Nothing => {}
        Err(e) => {
            return Err(Error::io(
                "resolving inside the root",
                root_path.join(rel),
                e,
            ));
        }
    }
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(Error::io(
            "resolving inside the root",
            root_path.to_path_buf(),
            io::ErrorKind::NotFound.into(),
        ));
    };
    let parent_fd = open_or_create_bounded(root, root_path, parent, Create::Dir(0o755), links)?;
    let name_c = cstr(Path::new(name))?;
    let made = match create {
        Create::Nothing => unreachable!("returned above when nothing is to be created"),
        Create::Dir(mode) => nix::sys::stat::mkdirat(
            parent_fd.as_fd(),
            name_c.as_c_str(),
            nix::sys::stat::Mode::from_bits_truncate(mode),
        ),
        Create::File(mode) => nix::fcntl::openat(
            parent_fd.as_fd(),
            name_c.as_c_str(),
            nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_EXCL
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(mode),
        )
        .map(drop),
    };
    match made {
        Ok(()) => {
            return open_in_root(root, rel)
                .map_err(|e| Error::io("resolving inside the root", shown(), e));
        }
        Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(Error::io("creating inside the root", shown(), e.into())),
    }
    // It exists but does not resolve: a symlink whose target is missing.
    // As systemd-nspawn does, create the target — inside the root, where
    // the guest will look for it (an absolute target is relative to it).
    let dangling = || Error::BadTree {
        path: root_path.to_path_buf(),
        reason: format!(
            "{} cannot be resolved inside the tree (symlink loop or too many links)",
            shown().display()
        ),
    };
    let target = nix::fcntl::readlinkat(&parent_fd, name_c.as_c_str()).map_err(|_| dangling())?;
    if links == 0 {
        return Err(dangling());
    }
    let target = Path::new(&target);
    let next = if target.is_absolute() {
        relative(target)
    } else {
        relative(&parent.join(target))
    };
    open_or_create_bounded(root, root_path, &normalize(&next), create, links - 1)?;
    open_in_root(root, rel).map_err(|_| dangling())
}

/// Apply ".." lexically (never above the root), as RESOLVE_IN_ROOT does.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Resolve (and create, as asked) `guest_path` below `root`; returns an
/// O_PATH descriptor of it.
pub fn open_in(root: &Path, guest_path: &Path, create: Create) -> Result<OwnedFd> {
    let root_fd: OwnedFd = std::fs::File::open(root)
        .map_err(|e| Error::io("opening the root", root, e))?
        .into();
    open_or_create(&root_fd, root, &relative(guest_path), create)
}

/// Resolve (and create, as asked) `guest_path` below `root`; returns the
/// canonical host-side path, which lies inside `root`.
pub fn in_root(root: &Path, guest_path: &Path, create: Create) -> Result<PathBuf> {
    held_in_root(root, guest_path, create).map(|(_, path)| path)
}

/// As [`in_root`], with the O_PATH descriptor of what was resolved: to
/// act on exactly that, whatever is done to the path meanwhile.
pub fn held_in_root(root: &Path, guest_path: &Path, create: Create) -> Result<(OwnedFd, PathBuf)> {
    let fd = open_in(root, guest_path, create)?;
    let path = resolved_path(&fd)?;
    if !path.starts_with(root) {
        return Err(Error::BadTree {
            path: root.to_path_buf(),
            reason: format!(
                "{} resolved to {}, outside the root",
                guest_path.display(),
                path.display()
            ),
        });
    }
    Ok((fd, path))
}

/// Read a small file of the guest's (at most `limit` bytes), resolving its
/// path inside `root`: a tree's /etc/machine-id that is a symlink to a host
/// file reads the tree's file of that name, never the host's.
pub fn read_in_root(root: &Path, guest_path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let root_fd: OwnedFd = std::fs::File::open(root)
        .map_err(|e| Error::io("opening the root", root, e))?
        .into();
    let rel = cstr(&relative(guest_path))?;
    let fd = sys::openat2(
        root_fd.as_fd(),
        &rel,
        libc::O_RDONLY,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| {
        Error::io(
            "opening inside the root",
            root.join(relative(guest_path)),
            e,
        )
    })?;
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Error::io("reading", guest_path, e))?;
    Ok(out)
}

/// Does `guest_path` exist inside `root` (symlinks resolved within it)?
///
/// Only the descriptor is asked for, not the host-side path: an image's
/// root is reached through /proc/PID/fd/N, whose files' paths the kernel
/// shows relative to the image's detached mount, not below that path.
pub fn exists_in_root(root: &Path, guest_path: &Path) -> bool {
    open_in(root, guest_path, Create::Nothing).is_ok()
}

/// The canonical path an O_PATH descriptor refers to.
fn resolved_path(fd: &OwnedFd) -> Result<PathBuf> {
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    std::fs::read_link(&link).map_err(|e| Error::io("reading", link, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let outside = host.path().join("outside");
        std::os::unix::fs::symlink(&outside, root.path().join("run")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("etc-link")).unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("loop", root.path().join("loop")).unwrap();

        // An absolute link resolves inside the root; what is missing there is created there.
        let run = in_root(root.path(), Path::new("/run/host"), Create::Dir(0o755));
        let run = run.unwrap();
        assert!(
            run.starts_with(root.path()) && run.ends_with("outside/host"),
            "{run:?}"
        );
        assert!(!outside.exists(), "nothing was created outside the root");
        assert_eq!(
            in_root(root.path(), Path::new("/etc-link"), Create::Nothing).unwrap(),
            root.path().join("etc")
        );
        let file = in_root(
            root.path(),
            Path::new("/etc-link/new-file"),
            Create::File(0o644),
        )
        .unwrap();
        assert_eq!(file, root.path().join("etc/new-file"));
        assert!(
            in_root(root.path(), Path::new("/loop/x"), Create::Dir(0o755)).is_err(),
            "a symlink loop is an error"
        );
        assert_eq!(
            in_root(root.path(), Path::new("/a/b/../c"), Create::Dir(0o700)).unwrap(),
            root.path().join("a/c")
        );
    }
}
