//! Mount helpers for assembling the guest root, and the user's own mounts
//! (`--bind`, `--bind-ro`, `--tmpfs`) with systemd-nspawn's syntax.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::error::{Error, Result};
use crate::guest::rootfs::resolve::{self, Create};
use crate::spec::mounts::{BindIdmap, CustomMount, OverlayPath};

/// Who owns what the launcher creates for the guest: host root, or under a
/// user namespace the guest's root (the host id its range starts at).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Owner(pub Option<u32>);

impl Owner {
    /// tmpfs options, with uid=/gid= of the guest's root if shifted.
    pub fn tmpfs(&self, base: &str) -> String {
        match self.0 {
            Some(id) => format!("{base},uid={id},gid={id}"),
            None => base.to_owned(),
        }
    }

    /// Give `path` (not following a final symlink) to the guest's root.
    pub fn chown(&self, path: &Path) -> Result<()> {
        let Some(id) = self.0 else { return Ok(()) };
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(nix::unistd::Uid::from_raw(id)),
            Some(nix::unistd::Gid::from_raw(id)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io("chown", path, e.into()))
    }
}

/// A place in the guest's root to mount onto, resolved once and held by
/// descriptor: the mount lands on exactly what was resolved, whatever is
/// done meanwhile to the path it was found by (a directory of the tree
/// renamed and replaced by a link to a host directory, say).
pub(crate) struct Target {
    fd: OwnedFd,
    shown: PathBuf,
}

impl Target {
    /// Resolve (creating it as asked) `guest_path` inside `root`.
    pub fn resolve(root: &Path, guest_path: &Path, create: Create) -> Result<Target> {
        let (fd, shown) = resolve::held_in_root(root, guest_path, create)?;
        Ok(Target { fd, shown })
    }

    /// A directory or file of ours (inside a mount we made), by path.
    pub fn ours(path: &Path) -> Result<Target> {
        let fd = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::io("opening", path, e.into()))?;
        Ok(Target {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// Where it is, as a path (for messages and the guest's view).
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// A path to exactly what was resolved (/proc/self/fd/N).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Say where it is in terms of the guest's root (for one of ours that
    /// was opened through a descriptor path).
    pub fn set_shown(&mut self, shown: PathBuf) {
        self.shown = shown;
    }

    /// Give it to the guest's root (the descriptor's inode, never a path).
    pub fn chown(&self, owner: Owner) -> Result<()> {
        let Some(id) = owner.0 else { return Ok(()) };
        nix::unistd::fchownat(
            &self.fd,
            c"",
            Some(nix::unistd::Uid::from_raw(id)),
            Some(nix::unistd::Gid::from_raw(id)),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| Error::io("chown", &self.shown, e.into()))
    }

    /// Attach the detached mount `mount` here.
    pub fn attach(&self, mount: OwnedFd) -> Result<Mounted> {
        crate::sys::move_mount_onto(mount.as_fd(), self.fd.as_fd()).map_err(|e| Error::Mount {
            what: "a prepared mount".into(),
            target: self.shown.clone(),
            source: e,
        })?;
        Ok(Mounted {
            fd: mount,
            shown: self.shown.clone(),
        })
    }
}

/// A mount we made, held by the descriptor of its root. What is done
/// inside it goes through [`Mounted::path`] (/proc/self/fd/N, which leads
/// into this very mount), never back through the tree's directories.
pub(crate) struct Mounted {
    fd: OwnedFd,
    shown: PathBuf,
}

impl Mounted {
    /// A path into this mount that does not depend on the tree.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Where it is mounted, as resolved (for messages and the guest's view).
    pub fn shown(&self) -> &Path {
        &self.shown
    }
}

/// The MOUNT_ATTR_* flags for these mount(2) flags.
fn attrs(flags: MsFlags) -> u64 {
    use crate::sys::*;
    [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_STRICTATIME, MOUNT_ATTR_STRICTATIME),
        (MsFlags::MS_NOATIME, MOUNT_ATTR_NOATIME),
        (MsFlags::MS_NODIRATIME, MOUNT_ATTR_NODIRATIME),
    ]
    .into_iter()
    .filter(|(ms, _)| flags.contains(*ms))
    .fold(0, |a, (_, attr)| a | attr)
}

/// A fresh `fstype` (with mount(8)-style `data` options) on `target`.
pub(crate) fn mount_new(
    fstype: &str,
    target: &Target,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<Mounted> {
    let what = || {
        format!(
            "{fstype}{}",
            data.map(|d| format!(" ({d})")).unwrap_or_default()
        )
    };
    let c = std::ffi::CString::new(fstype).map_err(|_| {
        Error::io(
            "filesystem type",
            target.shown(),
            io::ErrorKind::InvalidInput.into(),
        )
    })?;
    let fd =
        crate::sys::new_mount(&c, data.unwrap_or(""), attrs(flags)).map_err(|e| Error::Mount {
            what: what(),
            target: target.shown().to_path_buf(),
            source: e,
        })?;
    target.attach(fd)
}

/// Bind `src` onto `target` (recursive and read-only as asked, as
/// [`bind`] does).
pub(crate) fn bind_onto(
    src: &Path,
    target: &Target,
    recursive: bool,
    read_only: bool,
) -> Result<Mounted> {
    let fd = clone_tree(src, recursive)?;
    if read_only {
        crate::sys::mount_setattr(fd.as_fd(), recursive, crate::sys::MOUNT_ATTR_RDONLY, 0)
            .map_err(|e| Error::Mount {
                what: format!("read-only bind of {}", src.display()),
                target: target.shown().to_path_buf(),
                source: e,
            })?;
    }
    target.attach(fd)
}

/// Mount a filesystem of `fstype` on `target`.
pub(crate) fn mount_fs(
    fstype: &str,
    target: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(Some(fstype), target, Some(fstype), flags, data).map_err(|e| Error::Mount {
        what: format!(
            "{fstype}{}",
            data.map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        target: target.to_path_buf(),
        source: e.into(),
    })
}

/// Create `target` (with `mode`) if missing and mount a fresh `fstype` on it.
pub(crate) fn mount_fs_on_dir(
    fstype: &str,
    target: &Path,
    mode: u32,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    ensure_dir(target, mode)?;
    mount_fs(fstype, target, flags, data)
}

/// Resolve `guest_path` inside `root` (creating the directory with `mode`
/// if missing, never leaving the root) and mount a fresh `fstype` on
/// exactly what was resolved.
pub(crate) fn mount_fs_in_root(
    root: &Path,
    guest_path: &str,
    fstype: &str,
    mode: u32,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<Mounted> {
    let target = Target::resolve(root, Path::new(guest_path), Create::Dir(mode))?;
    mount_new(fstype, &target, flags, data)
}

/// Bind `src` onto `dst`, optionally recursive and/or read-only. A
/// read-only bind is read-only all the way down (the mounts below `src`
/// too) before it is attached, so there is no moment at which it is
/// writable, and under a user namespace the kernel locks it that way.
pub(crate) fn bind(src: &Path, dst: &Path, recursive: bool, read_only: bool) -> Result<()> {
    let attrs = if read_only {
        crate::sys::MOUNT_ATTR_RDONLY
    } else {
        0
    };
    bind_with(src, dst, recursive, attrs)
}

/// A read-only, nosuid, nodev, noexec bind of a single file (nspawn's
/// flags for what it binds in of the host's: os-release, the boot id).
pub(crate) fn bind_sealed(src: &Path, dst: &Path) -> Result<()> {
    use crate::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
    bind_with(
        src,
        dst,
        false,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    )
}

/// Bind `src` onto `dst` with the MOUNT_ATTR_* `attrs` set.
fn bind_with(src: &Path, dst: &Path, recursive: bool, attrs: u64) -> Result<()> {
    let fd = clone_tree(src, recursive)?;
    if attrs != 0 {
        crate::sys::mount_setattr(std::os::fd::AsFd::as_fd(&fd), recursive, attrs, 0).map_err(
            |e| Error::Mount {
                what: format!("read-only bind of {}", src.display()),
                target: dst.to_path_buf(),
                source: e,
            },
        )?;
    }
    attach(&fd, dst)
}

/// A detached copy of the mount tree at `src` (OPEN_TREE_CLONE), with the
/// mounts below it if `recursive`.
pub(crate) fn clone_tree(src: &Path, recursive: bool) -> Result<std::os::fd::OwnedFd> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(src.as_os_str()))
        .map_err(|_| Error::io("path", src, io::ErrorKind::InvalidInput.into()))?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    crate::sys::open_tree(None, &c, flags).map_err(|e| Error::Mount {
        what: format!("bind of {}", src.display()),
        target: src.to_path_buf(),
        source: e,
    })
}

/// Change the per-mount flags of the bind mount at `target`, keeping the
/// nosuid/nodev/noexec it already had.
pub(crate) fn remount(target: &Path, extra: MsFlags) -> Result<()> {
    let kept = nix::sys::statvfs::statvfs(target)
        .map(|s| {
            use nix::sys::statvfs::FsFlags;
            let f = s.flags();
            let mut m = MsFlags::empty();
            for (fs, ms) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if f.contains(fs) {
                    m |= ms;
                }
            }
            m
        })
        .unwrap_or(MsFlags::empty());
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | kept | extra,
        None::<&str>,
    )
    .map_err(|e| Error::Mount {
        what: "remount".into(),
        target: target.to_path_buf(),
        source: e.into(),
    })
}

/// Set the propagation of `target` (and below, with MS_REC).
pub(crate) fn propagation(target: &Path, flags: MsFlags) -> Result<()> {
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| Error::Mount {
        what: format!("propagation {flags:?}"),
        target: target.to_path_buf(),
        source: e.into(),
    })
}

/// Create a directory (and parents) if missing.
pub(crate) fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io("creating directory", path, e)),
    }
}

/// Create an empty regular file (and its parents) if missing, to bind onto.
pub(crate) fn ensure_file(path: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        ensure_dir(parent, 0o755)?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("creating file", path, e)),
    }
}

/// Write a small file with an exact mode.
pub(crate) fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io("creating file", path, e))?;
    f.write_all(content)
        .map_err(|e| Error::io("writing", path, e))?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

/// What the user's mounts need under a user namespace.
pub(crate) struct MountContext<'a> {
    pub owner: Owner,
    /// The guest's range, and the user namespace mapping [0, range) onto it.
    pub mapping: Option<(crate::spec::userns::UidRange, &'a std::os::fd::OwnedFd)>,
    /// The inaccessible nodes (in /run/host), for `--inaccessible`.
    pub inaccessible: Option<PathBuf>,
}

impl CustomMount {
    /// Mount it below the assembled (not yet pivoted) root.
    pub(crate) fn apply(&self, root: &Path, ctx: &MountContext<'_>) -> Result<()> {
        match self {
            CustomMount::Bind {
                source,
                target,
                read_only,
                recursive,
                idmap,
            } => {
                let meta = fs::metadata(source).map_err(|e| Error::io("bind source", source, e))?;
                let create = if meta.is_dir() {
                    Create::Dir(0o755)
                } else {
                    Create::File(0o644)
                };
                let dst = Target::resolve(root, target, create)?;
                let userns = match (idmap, ctx.mapping) {
                    (BindIdmap::None, _) => {
                        return bind_onto(source, &dst, *recursive, *read_only).map(drop);
                    }
                    (BindIdmap::Idmap, None) => {
                        return Err(Error::InvalidValue {
                            what: "bind option",
                            value: format!("{}:{}", source.display(), target.display()),
                            reason: "idmap needs a user namespace (--private-users)".into(),
                        });
                    }
                    // As nspawn: without a user namespace the guest's root
                    // is the host's, so the source's owner appears as 0.
                    (BindIdmap::RootIdmap, None) => {
                        use std::os::unix::fs::MetadataExt;
                        crate::userns::idmap::userns_with_map(&format!("{} 0 1\n", meta.uid()))?
                    }
                    (BindIdmap::Idmap, Some((_, mapping))) => {
                        mapping.try_clone().map_err(|e| Error::syscall("dup", e))?
                    }
                    (BindIdmap::RootIdmap, Some((range, _))) => {
                        use std::os::unix::fs::MetadataExt;
                        crate::userns::idmap::userns_with_map(&format!(
                            "{} {} 1\n",
                            meta.uid(),
                            range.shift
                        ))?
                    }
                };
                let fd =
                    crate::userns::idmap::idmapped_clone(source, &userns, *recursive, *read_only)?;
                dst.attach(fd).map(drop)
            }
            CustomMount::Tmpfs { target, options } => {
                let dst = Target::resolve(root, target, Create::Dir(0o755))?;
                // As nspawn: nodev and strictatime, then the flags among
                // the options (nosuid, ro, ...); the rest goes to tmpfs.
                let (flags, data) = crate::spec::mounts::split_mount_flags(
                    MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
                    options,
                );
                mount_new("tmpfs", &dst, flags, Some(&ctx.owner.tmpfs(&data))).map(drop)
            }
            CustomMount::Overlay {
                lower,
                upper,
                target,
                read_only,
                work,
            } => apply_overlay(root, lower, upper.as_ref(), target, *read_only, work, ctx),
            CustomMount::Inaccessible { target } => {
                // As nspawn: the path must exist (a symlink is followed,
                // inside the root), and is covered by a read-only bind of
                // the node of its type.
                let dst = Target::resolve(root, target, Create::Nothing)?;
                let meta =
                    fs::metadata(dst.path()).map_err(|e| Error::io("stat", dst.shown(), e))?;
                use std::os::unix::fs::FileTypeExt;
                let t = meta.file_type();
                let node = if t.is_dir() {
                    "dir"
                } else if t.is_fifo() {
                    "fifo"
                } else if t.is_socket() {
                    "sock"
                } else if t.is_char_device() {
                    "chr"
                } else if t.is_block_device() {
                    "blk"
                } else {
                    "reg"
                };
                let nodes = ctx
                    .inaccessible
                    .as_ref()
                    .ok_or_else(|| Error::InvalidValue {
                        what: "--inaccessible",
                        value: target.display().to_string(),
                        reason: "no inaccessible nodes to mount from".into(),
                    })?;
                bind_onto(&nodes.join(node), &dst, false, true).map(drop)
            }
        }
    }
}

/// An overlay's directory as a path the overlay may be given: a host path
/// as it is, one in the guest's root resolved inside it.
fn layer(root: &Path, p: &OverlayPath) -> Result<PathBuf> {
    match p {
        OverlayPath::Host(p) => Ok(p.clone()),
        OverlayPath::InRoot(p) => resolve::in_root(root, p, Create::Nothing),
    }
}

/// `--overlay`/`--overlay-ro` as nspawn mounts them: lowerdir is the
/// lower paths top first; read-only, the upper is just the top lower
/// layer; writable, the work directory is the launcher's, beside the
/// upper (the same filesystem, as overlayfs needs); without an upper a
/// detached tmpfs holds both (gone with the last reference to it).
fn apply_overlay(
    root: &Path,
    lower: &[OverlayPath],
    upper: Option<&OverlayPath>,
    target: &Path,
    read_only: bool,
    work: &Option<PathBuf>,
    ctx: &MountContext<'_>,
) -> Result<()> {
    let mut lowers = lower
        .iter()
        .map(|p| layer(root, p))
        .collect::<Result<Vec<_>>>()?;
    lowers.reverse();
    let upper = upper.map(|u| layer(root, u)).transpose()?;
    // Named in the error, which overlayfs's ENOENT would not.
    for l in lowers.iter().chain(&upper) {
        fs::metadata(l).map_err(|e| Error::io("overlay layer", l, e))?;
    }
    let dst = Target::resolve(root, target, Create::Dir(0o755))?;
    let mount_err = |e: io::Error| Error::Mount {
        what: "overlay".into(),
        target: dst.shown().to_path_buf(),
        source: e,
    };
    let escape = |p: &Path| crate::guest::rootfs::escape_overlay(p);
    let list = |ps: &[PathBuf]| ps.iter().map(|p| escape(p)).collect::<Vec<_>>().join(":");
    if read_only || upper.is_some() {
        let (flags, data) = match (read_only, upper) {
            (true, upper) => {
                let mut all: Vec<PathBuf> = upper.into_iter().collect();
                all.extend(lowers);
                (MsFlags::MS_RDONLY, format!("lowerdir={}", list(&all)))
            }
            (false, Some(upper)) => {
                let work = work.as_ref().ok_or_else(|| Error::InvalidValue {
                    what: "--overlay",
                    value: upper.display().to_string(),
                    reason: "no work directory was made for the upper layer".into(),
                })?;
                (
                    MsFlags::empty(),
                    format!(
                        "lowerdir={},upperdir={},workdir={}",
                        list(&lowers),
                        escape(&upper),
                        escape(work)
                    ),
                )
            }
            (false, None) => unreachable!("checked above"),
        };
        // By the descriptor's path, so the overlay lands on what was resolved.
        return mount(
            Some("overlay"),
            &dst.path(),
            Some("overlay"),
            flags,
            Some(data.as_str()),
        )
        .map_err(|e| mount_err(e.into()));
    }
    // A tmpfs upper: detached, its directories reached through its
    // descriptor, the layers handed to overlayfs by descriptor too.
    let tmpfs =
        crate::sys::new_mount(c"tmpfs", &ctx.owner.tmpfs("mode=0755"), 0).map_err(mount_err)?;
    let base = PathBuf::from(format!("/proc/self/fd/{}", tmpfs.as_raw_fd()));
    let (up, wk) = (base.join("upper"), base.join("work"));
    for d in [&up, &wk] {
        ensure_dir(d, 0o755)?;
        ctx.owner.chown(d)?;
    }
    let open = |p: &Path| -> Result<OwnedFd> {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::io("opening", p, e.into()))
    };
    let fs = crate::sys::FsContext::open(c"overlay").map_err(mount_err)?;
    fs.set_string(c"source", c"overlay").map_err(mount_err)?;
    // The lower layers by path (as the other overlays name them, and
    // mountinfo shows them), the tmpfs's directories by descriptor.
    let lowerdir = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
        std::ffi::OsStr::new(&list(&lowers)),
    ))
    .map_err(|_| mount_err(io::ErrorKind::InvalidInput.into()))?;
    fs.set_string(c"lowerdir", &lowerdir).map_err(mount_err)?;
    fs.set_fd(c"upperdir", open(&up)?.as_fd())
        .map_err(mount_err)?;
    fs.set_fd(c"workdir", open(&wk)?.as_fd())
        .map_err(mount_err)?;
    fs.create().map_err(mount_err)?;
    let fd = fs.mount(0).map_err(mount_err)?;
    dst.attach(fd).map(drop)
}

/// move_mount a detached mount onto `target`.
pub(crate) fn attach(fd: &OwnedFd, target: &Path) -> Result<()> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))
        .map_err(|_| Error::io("path", target, std::io::ErrorKind::InvalidInput.into()))?;
    crate::sys::move_mount_fd(std::os::fd::AsFd::as_fd(fd), None, &c).map_err(|e| Error::Mount {
        what: "a prepared mount".into(),
        target: target.to_path_buf(),
        source: e,
    })
}
