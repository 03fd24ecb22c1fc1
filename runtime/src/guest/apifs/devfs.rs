//! A minimal /dev: a small tmpfs with the standard nodes, a private devpts
//! instance, /dev/shm, /dev/mqueue, and the console pty.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag, mknod};

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{
    Mounted, Owner, bind, ensure_dir, ensure_file, mount_fs, mount_fs_in_root, mount_fs_on_dir,
};
use crate::sys;

/// Nodes every container gets.
const NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Nodes a container gets only if the host lets us open them.
const OPTIONAL_NODES: &[&str] = &["fuse", "net/tun"];

/// Mount /dev with its nodes, links and /dev/shm, owned by `owner`, and
/// return the mount (the guest's /dev). devpts and mqueue come from
/// [`mount_pts_and_mqueue`]: under a user namespace only the guest's own
/// process may mount them.
pub(crate) fn mount_dev(root: &Path, owner: Owner) -> Result<Mounted> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    let mounted = mount_fs_in_root(
        root,
        "/dev",
        "tmpfs",
        0o755,
        flags,
        Some(&owner.tmpfs("mode=0755,size=4m,nr_inodes=64k")),
    )?;
    // Everything below goes into the new tmpfs through its descriptor.
    let dev = mounted.path();

    let openable = |name: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(Path::new("/dev").join(name))
            .is_ok()
    };
    // As nspawn, each node also gets its /dev/char/MAJ:MIN link.
    let char_dir = dev.join("char");
    ensure_dir(&char_dir, 0o755)?;
    owner.chown(&char_dir)?;
    for name in NODES
        .iter()
        .chain(OPTIONAL_NODES.iter().filter(|n| openable(n)))
    {
        // A bound host node is the host's, and chowning it would change
        // the host's: only nodes we made are given to the guest's root.
        let (node, rdev) = copy_node(name, &dev)?;
        if node == Node::Made {
            owner.chown(&dev.join(name))?;
        }
        let link = char_dir.join(char_link_name(rdev));
        std::os::unix::fs::symlink(Path::new("..").join(name), &link)
            .map_err(|e| Error::io("symlink", &link, e))?;
        owner.chown(&link)?;
    }
    if dev.join("net").exists() {
        owner.chown(&dev.join("net"))?;
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
        owner.chown(&p)?;
    }
    let shm = dev.join("shm");
    let shm_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME;
    mount_fs_on_dir(
        "tmpfs",
        &shm,
        0o1777,
        shm_flags,
        Some(&owner.tmpfs("mode=01777,size=10%,nr_inodes=400k")),
    )?;
    ensure_dir(&dev.join("pts"), 0o755)?;
    owner.chown(&dev.join("pts"))?;
    ensure_dir(&dev.join("mqueue"), 0o755)?;
    owner.chown(&dev.join("mqueue"))?;
    Ok(mounted)
}

/// The guest's own devpts instance and POSIX message queue filesystem.
pub(crate) fn mount_pts_and_mqueue(dev: &Path) -> Result<()> {
    mount_fs(
        "devpts",
        &dev.join("pts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs(
        "mqueue",
        &dev.join("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
}

/// `MAJ:MIN` of a device number.
fn char_link_name(rdev: u64) -> String {
    format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    )
}

/// How a device node got into the guest's /dev.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    /// mknod: a node of our own.
    Made,
    /// The host's node bound onto an empty file, where mknod is refused
    /// (a user namespace without the host's CAP_MKNOD, such as a Nix
    /// `uid-range` build sandbox).
    Bound,
}

/// A copy of the host's `/dev/NAME`: how it was made, and its device number.
fn copy_node(name: &str, dev: &Path) -> Result<(Node, u64)> {
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
    match mknod(
        &dst,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(meta.mode() & 0o777),
        meta.rdev(),
    ) {
        Ok(()) => Ok((Node::Made, meta.rdev())),
        Err(nix::errno::Errno::EPERM) => {
            ensure_file(&dst, 0o000)?;
            bind(&host, &dst, false, false)?;
            Ok((Node::Bound, meta.rdev()))
        }
        Err(e) => Err(Error::io("mknod", &dst, e.into())),
    }
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
    // Its mount point is made only here: without a console (--console=pipe)
    // the guest has no /dev/console at all, as under nspawn.
    let console = dev.join("console");
    ensure_file(&console, 0o600)?;
    bind(&dev.join(format!("pts/{n}")), &console, false, false)?;
    Ok((master, peer))
}

#[cfg(test)]
mod tests {
    #[test]
    fn char_links_are_named_major_colon_minor() {
        assert_eq!(super::char_link_name(nix::sys::stat::makedev(1, 3)), "1:3");
        assert_eq!(
            super::char_link_name(nix::sys::stat::makedev(10, 200)),
            "10:200"
        );
    }
}
