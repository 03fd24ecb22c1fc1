//! A minimal /dev: a small tmpfs with the standard nodes, a private devpts
//! instance, /dev/shm, /dev/mqueue, and the console pty.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag, mknod};

use crate::error::{Error, Result};
use crate::mounts::{bind, ensure_dir, ensure_file, mount_fs_in_root, mount_fs_on_dir};
use crate::sys;

/// Nodes every container gets.
const NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Nodes a container gets only if the host lets us open them.
const OPTIONAL_NODES: &[&str] = &["fuse", "net/tun"];

/// Mount /dev and return where it is (the guest's /dev, resolved).
pub(crate) fn mount_dev(root: &Path) -> Result<PathBuf> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    let dev = mount_fs_in_root(
        root,
        "/dev",
        "tmpfs",
        0o755,
        flags,
        Some("mode=0755,size=4m"),
    )?;

    for name in NODES {
        copy_node(name, &dev)?;
    }
    for name in OPTIONAL_NODES {
        let host = Path::new("/dev").join(name);
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&host)
            .is_ok()
        {
            copy_node(name, &dev)?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(target, &p).map_err(|e| Error::io("symlink", &p, e))?;
    }

    let pts = dev.join("pts");
    mount_fs_on_dir(
        "devpts",
        &pts,
        0o755,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    mount_fs_on_dir(
        "tmpfs",
        &shm,
        0o1777,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=01777"),
    )?;
    let mqueue = dev.join("mqueue");
    mount_fs_on_dir(
        "mqueue",
        &mqueue,
        0o755,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    Ok(dev)
}

fn copy_node(name: &str, dev: &Path) -> Result<()> {
    let host = Path::new("/dev").join(name);
    let meta = std::fs::metadata(&host).map_err(|e| Error::io("stat", &host, e))?;
    if !meta.file_type().is_char_device() {
        return Err(Error::BadTree {
            path: host,
            reason: "is not a character device on the host".into(),
        });
    }
    let dst = dev.join(name);
    if let Some(parent) = dst.parent() {
        ensure_dir(parent, 0o755)?;
    }
    mknod(
        &dst,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(meta.mode() & 0o777),
        meta.rdev(),
    )
    .map_err(|e| Error::io("mknod", &dst, e.into()))
}

/// The console: a pty of the guest's own devpts, its peer bound onto
/// /dev/console. Returns (master, peer).
pub(crate) fn make_console(dev: &Path) -> Result<(OwnedFd, OwnedFd)> {
    let ptmx = dev.join("pts/ptmx");
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&ptmx)
        .map_err(|e| Error::io("opening", &ptmx, e))?
        .into();
    sys::pty_unlock(master.as_fd()).map_err(|e| Error::syscall("ioctl(TIOCSPTLCK)", e))?;
    let n = sys::pty_number(master.as_fd()).map_err(|e| Error::syscall("ioctl(TIOCGPTN)", e))?;
    let peer =
        sys::pty_peer(master.as_fd()).map_err(|e| Error::syscall("ioctl(TIOCGPTPEER)", e))?;
    let console = dev.join("console");
    ensure_file(&console, 0o600)?;
    bind(&dev.join(format!("pts/{n}")), &console, false, false)?;
    Ok((master, peer))
}
