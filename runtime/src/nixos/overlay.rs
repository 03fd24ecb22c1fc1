//! The closure-only /nix/store as one read-only overlay mount, whatever the
//! closure's size: the guest's systemd sees one mount unit, not one per
//! store path, and the kernel holds one mount, not thousands.
//!
//! Two lower layers and no upper one (so the overlay is read-only down to
//! its superblock). The lower one is the host's store directory itself.
//! The top one is a private tmpfs, never attached anywhere, holding a
//! directory `store` marked opaque (it hides the host store's listing)
//! with one entry per closure path: a directory carrying the redirect
//! `/NAME` (`redirect_dir=follow` looks it up at the root of the host's
//! store), a metacopy file with the same redirect for a regular-file store
//! path, or the symlink itself. The guest gets the overlay's `store`
//! directory as a mount of its own, so its mount table names neither
//! layer; the layers are passed by descriptor, so not even their paths
//! reach the overlay's options. A name outside the closure does not exist
//! there, by name or through `..`. Under a user namespace both layers are
//! idmapped (an overlay mount itself cannot be), so the store belongs to
//! the guest's root.
//!
//! Where the kernel refuses any of it (inside a user namespace, as in Nix's
//! build sandbox; before Linux 6.15; a closure path that is a mount point
//! of its own, which a layer would hide), [`build`] says why, and the
//! caller falls back to one bind mount per store path.
//!
//! Facts and experiments behind this: `design-17.md` of the project's
//! notes (kernel `Documentation/filesystems/overlayfs.rst`: redirects,
//! lower-only overlays, layers by descriptor, changes to layers).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use crate::nixos::closure::STORE;
use crate::spec::closure::{Entry, EntryKind};
use crate::spec::mounts::CustomMount;
use crate::sys;
use crate::sys::FsContext;

/// Where one of the user's mounts below /nix/store lands when it is not a
/// path of the closure: the read-only overlay must already have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    /// Relative to the store, plain names only (`HASH-name/sub`).
    pub path: PathBuf,
    pub directory: bool,
}

/// What the overlay shows: the closure's paths and mount points for the
/// user's mounts.
pub struct Layout<'a> {
    pub paths: &'a [Entry],
    pub mount_points: &'a [MountPoint],
}

pub struct Options<'a> {
    /// Under a user namespace with mapped ownership: the user namespace
    /// both layers are idmapped through.
    pub idmap: Option<BorrowedFd<'a>>,
    /// Otherwise, who owns /nix/store itself (the guest's root under a
    /// user namespace with chown ownership; the paths stay the host's).
    pub owner: Option<u32>,
    /// A path relative to the store that must exist through the overlay
    /// (the toplevel's `init`): proof that redirects are followed, which a
    /// kernel ignoring them would not show any other way.
    pub probe: &'a Path,
}

/// Why the store cannot be one overlay here.
#[derive(Debug)]
pub enum Unavailable {
    /// A closure path is, or contains, a mount point of its own.
    Submount(PathBuf),
    /// The top layer cannot carry `trusted.overlay.*` attributes.
    TrustedXattr(io::Error),
    /// `fsopen("overlay")` failed.
    NoOverlayfs(io::Error),
    /// overlayfs refused a layer or the mount.
    Refused {
        step: &'static str,
        source: io::Error,
        kernel: Option<String>,
    },
    /// The probe path is missing through the overlay.
    Probe(PathBuf),
    /// Some other step failed.
    Failed { step: String, source: io::Error },
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::Submount(p) => write!(
                f,
                "{} is a mount point of its own, which an overlay layer would hide",
                p.display()
            ),
            Unavailable::TrustedXattr(e) => {
                write!(
                    f,
                    "cannot set trusted.overlay.opaque on its top layer ({})",
                    describe(e)
                )?;
                match e.raw_os_error() {
                    Some(libc::EPERM) => {
                        f.write_str(": not in the initial user namespace (Nix's build sandbox?)")
                    }
                    Some(libc::EOPNOTSUPP) => f.write_str(": tmpfs without extended attributes"),
                    _ => Ok(()),
                }
            }
            Unavailable::NoOverlayfs(e) => {
                write!(
                    f,
                    "the kernel has no overlayfs (fsopen(\"overlay\"): {})",
                    describe(e)
                )
            }
            Unavailable::Refused {
                step,
                source,
                kernel,
            } => {
                write!(f, "overlayfs refused {step} ({}", describe(source))?;
                if let Some(k) = kernel {
                    write!(f, "; {k}")?;
                }
                f.write_str(")")?;
                match source.raw_os_error() {
                    Some(libc::EINVAL) => {
                        f.write_str(": layers by descriptor need Linux 6.15 or later")
                    }
                    Some(libc::EPERM) => {
                        f.write_str(": redirects need CAP_SYS_ADMIN in the initial user namespace")
                    }
                    _ => Ok(()),
                }
            }
            Unavailable::Probe(p) => write!(
                f,
                "the overlay does not follow its redirects ({} is missing through it)",
                Path::new(STORE).join(p).display()
            ),
            Unavailable::Failed { step, source } => write!(f, "{step}: {}", describe(source)),
        }
    }
}

/// An error as strerror says it, without Rust's "(os error N)".
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}

fn failed(step: impl Into<String>) -> impl FnOnce(Errno) -> Unavailable {
    let step = step.into();
    move |e| Unavailable::Failed {
        step,
        source: e.into(),
    }
}

/// The one-line notice for a launch that falls back to per-path binds.
pub fn fallback_notice(paths: usize, why: &Unavailable) -> String {
    format!(
        "closure-only /nix/store: one bind mount per store path ({paths} mounts), not one overlay: {why}"
    )
}

/// Mount points the user's mounts need below /nix/store, outside the
/// closure's paths (inside one, a mount lands on what the host's path has).
pub fn mount_points(paths: &[Entry], mounts: &[CustomMount]) -> Vec<MountPoint> {
    let names: HashSet<&OsStr> = paths.iter().map(|e| e.name.as_os_str()).collect();
    let mut out: Vec<MountPoint> = Vec::new();
    for m in mounts {
        let (target, directory) = match m {
            CustomMount::Bind { source, target, .. } => (
                target,
                std::fs::metadata(source).map_or(true, |m| m.is_dir()),
            ),
            CustomMount::Tmpfs { target, .. } | CustomMount::Overlay { target, .. } => {
                (target, true)
            }
            // Masks only what exists: nothing to make.
            CustomMount::Inaccessible { .. } => continue,
        };
        let Ok(rel) = target.strip_prefix(STORE) else {
            continue;
        };
        let path: PathBuf = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let Some(Component::Normal(first)) = path.components().next() else {
            continue;
        };
        if names.contains(first) || out.iter().any(|p| p.path == path) {
            continue;
        }
        out.push(MountPoint { path, directory });
    }
    out
}

/// The overlay for `layout`, as a detached read-only mount of its `store`
/// directory, ready to be attached at the guest's /nix/store.
pub fn build(layout: &Layout<'_>, opts: &Options<'_>) -> Result<OwnedFd, Unavailable> {
    check_submounts(layout.paths)?;
    let mut top = TopLayer::create(opts.owner.filter(|_| opts.idmap.is_none()))?;
    let host = nix::fcntl::open(
        STORE,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed(format!("opening {STORE}")))?;
    {
        // Modes are exactly what is asked for, whatever the caller's umask.
        let _umask = UmaskCleared::new();
        for entry in layout.paths {
            top.add_path(entry, &host)?;
        }
        for mp in layout.mount_points {
            top.add_mount_point(mp)?;
        }
    }
    let files = layout
        .paths
        .iter()
        .any(|e| matches!(e.kind, EntryKind::File));
    let upper = layer(Some(top.mount.as_fd()), opts.idmap, "the top layer")?;
    drop(top);
    let lower = layer(None, opts.idmap, "the host's store")?;
    let overlay = mount_overlay(&upper.dir, &lower.dir, files)?;
    drop((upper, lower));
    let probe = Path::new("store").join(opts.probe);
    nix::sys::stat::fstatat(&overlay, &probe, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|_| Unavailable::Probe(opts.probe.to_path_buf()))?;
    sys::open_tree(
        Some(overlay.as_fd()),
        c"store",
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| Unavailable::Failed {
        step: "open_tree(the overlay's store)".into(),
        source: e,
    })
}

/// A closure path that is a mount point, or has one below it, in our mount
/// namespace: a layer is one mount and would show what is beneath instead.
fn check_submounts(paths: &[Entry]) -> Result<(), Unavailable> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| Unavailable::Failed {
            step: "reading /proc/self/mountinfo".into(),
            source: e,
        })?;
    let names: HashSet<&OsStr> = paths.iter().map(|e| e.name.as_os_str()).collect();
    for m in parse_mountinfo(&text) {
        if let Ok(rel) = m.mount_point.strip_prefix(STORE)
            && let Some(Component::Normal(first)) = rel.components().next()
            && names.contains(first)
        {
            return Err(Unavailable::Submount(m.mount_point));
        }
    }
    Ok(())
}

/// One line of /proc/PID/mountinfo, as much of it as we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountInfo {
    pub id: u64,
    pub parent: u64,
    pub mount_point: PathBuf,
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let point = f.nth(2)?;
            Some(MountInfo {
                id,
                parent,
                mount_point: PathBuf::from(OsString::from_vec(unescape(point))),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |j: usize| b.get(j).is_some_and(|c| (b'0'..=b'7').contains(c));
        let escaped = (b[i] == b'\\' && octal(i + 1) && octal(i + 2) && octal(i + 3))
            .then(|| {
                u8::try_from(
                    u32::from(b[i + 1] - b'0') * 64
                        + u32::from(b[i + 2] - b'0') * 8
                        + u32::from(b[i + 3] - b'0'),
                )
                .ok()
            })
            .flatten();
        if let Some(v) = escaped {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The overlay's private top layer while it is filled.
struct TopLayer {
    /// The tmpfs's detached mount.
    mount: OwnedFd,
    /// Its `store` directory.
    store: OwnedFd,
    /// `/NAME`, reused for every redirect.
    redirect: Vec<u8>,
}

const OPAQUE: &std::ffi::CStr = c"trusted.overlay.opaque";
const REDIRECT: &std::ffi::CStr = c"trusted.overlay.redirect";
const METACOPY: &std::ffi::CStr = c"trusted.overlay.metacopy";

impl TopLayer {
    fn create(owner: Option<u32>) -> Result<TopLayer, Unavailable> {
        let io_failed = |step: &str| {
            let step = step.to_owned();
            move |e: io::Error| Unavailable::Failed { step, source: e }
        };
        let ctx = FsContext::open(c"tmpfs").map_err(io_failed("fsopen(tmpfs)"))?;
        ctx.set_string(c"source", c"nixspawn-store-top")
            .and_then(|()| ctx.set_string(c"mode", c"0755"))
            .and_then(|()| ctx.create())
            .map_err(io_failed("creating the top layer's tmpfs"))?;
        let mount = ctx
            .mount(sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV)
            .map_err(io_failed("fsmount(tmpfs)"))?;
        let dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let root = nix::fcntl::openat(&mount, ".", dir, Mode::empty())
            .map_err(failed("opening the top layer"))?;
        nix::sys::stat::mkdirat(&root, "store", Mode::from_bits_truncate(0o755))
            .map_err(failed("mkdir store in the top layer"))?;
        let store = nix::fcntl::openat(&root, "store", dir, Mode::empty())
            .map_err(failed("opening the top layer's store"))?;
        // Opaque: the host store's own listing stays out of the merge.
        sys::set_xattr(store.as_fd(), OPAQUE, b"y").map_err(Unavailable::TrustedXattr)?;
        // A merged directory's mode and owner are the top layer's; 0755 as
        // the per-path store's tmpfs had, whatever the umask.
        nix::sys::stat::fchmod(&store, Mode::from_bits_truncate(0o755))
            .map_err(failed("chmod the top layer's store"))?;
        if let Some(id) = owner {
            nix::unistd::fchown(
                &store,
                Some(nix::unistd::Uid::from_raw(id)),
                Some(nix::unistd::Gid::from_raw(id)),
            )
            .map_err(failed("chown the top layer's store"))?;
        }
        Ok(TopLayer {
            mount,
            store,
            redirect: Vec::with_capacity(256),
        })
    }

    fn set_redirect(&self, fd: BorrowedFd<'_>, name: &OsStr) -> Result<(), Unavailable> {
        sys::set_xattr(fd, REDIRECT, &self.redirect).map_err(|e| Unavailable::Failed {
            step: format!("setting the redirect of {}", Path::new(name).display()),
            source: e,
        })
    }

    /// One closure path. Its kind was learnt when the closure was checked;
    /// a regular file's mode and size are what the guest's `stat` shows.
    fn add_path(&mut self, entry: &Entry, host: &OwnedFd) -> Result<(), Unavailable> {
        let name = entry.name.as_os_str();
        let shown = || Path::new(STORE).join(name).display().to_string();
        self.redirect.clear();
        self.redirect.push(b'/');
        self.redirect.extend_from_slice(name.as_bytes());
        match &entry.kind {
            EntryKind::Directory => {
                nix::sys::stat::mkdirat(&self.store, name, Mode::from_bits_truncate(0o555))
                    .map_err(failed(format!("mkdir {} in the top layer", shown())))?;
                let d = nix::fcntl::openat(
                    &self.store,
                    name,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(failed(format!("opening {} in the top layer", shown())))?;
                self.set_redirect(d.as_fd(), name)
            }
            EntryKind::File => {
                let st = nix::sys::stat::fstatat(host, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(failed(format!("stat {}", shown())))?;
                let f = nix::fcntl::openat(
                    &self.store,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(st.st_mode & 0o7777),
                )
                .map_err(failed(format!("creating {} in the top layer", shown())))?;
                nix::unistd::ftruncate(&f, st.st_size)
                    .map_err(failed(format!("sizing {} in the top layer", shown())))?;
                sys::set_xattr(f.as_fd(), METACOPY, b"").map_err(|e| Unavailable::Failed {
                    step: format!("marking {} metacopy", shown()),
                    source: e,
                })?;
                self.set_redirect(f.as_fd(), name)
            }
            EntryKind::Symlink(target) => {
                nix::unistd::symlinkat(target.as_path(), &self.store, name)
                    .map_err(failed(format!("symlink {} in the top layer", shown())))
            }
        }
    }

    /// A plain directory (or empty file) for a mount, with the directories
    /// leading to it: nothing of the host's store behind any of them.
    fn add_mount_point(&self, mp: &MountPoint) -> Result<(), Unavailable> {
        let shown = Path::new(STORE).join(&mp.path).display().to_string();
        let mut dir = self.store.try_clone().map_err(|e| Unavailable::Failed {
            step: "dup".into(),
            source: e,
        })?;
        let mut parts = mp.path.components().peekable();
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            if last && !mp.directory {
                return nix::fcntl::openat(
                    &dir,
                    part.as_os_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map(drop)
                .map_err(failed(format!("creating mount point {shown}")));
            }
            match nix::sys::stat::mkdirat(&dir, part.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(failed(format!("creating mount point {shown}"))(e)),
            }
            dir = nix::fcntl::openat(
                &dir,
                part.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(failed(format!("opening mount point {shown}")))?;
        }
        Ok(())
    }
}

/// An overlay layer: a detached mount and its root opened as a directory.
struct Layer {
    /// Keeps the detached mount alive: when the last descriptor open_tree
    /// returned is closed, the kernel dissolves the mount, and overlayfs
    /// refuses a layer that is mounted nowhere ("failed to clone lowerpath").
    _mount: OwnedFd,
    /// For `fsconfig(FSCONFIG_SET_FD)`.
    dir: OwnedFd,
}

/// A read-only (and idmapped, if asked) private clone of the mount `from`
/// (None: the host's /nix/store, not the mounts below it).
fn layer(
    from: Option<BorrowedFd<'_>>,
    idmap: Option<BorrowedFd<'_>>,
    what: &str,
) -> Result<Layer, Unavailable> {
    let io_failed = |step: String| move |e: io::Error| Unavailable::Failed { step, source: e };
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    let path = match from {
        Some(_) => {
            flags |= libc::AT_EMPTY_PATH as libc::c_uint;
            c""
        }
        None => c"/nix/store",
    };
    let clone =
        sys::open_tree(from, path, flags).map_err(io_failed(format!("open_tree({what})")))?;
    let mut set = sys::MOUNT_ATTR_RDONLY;
    if idmap.is_some() {
        set |= sys::MOUNT_ATTR_IDMAP;
    }
    sys::mount_setattr_with(clone.as_fd(), false, set, 0, idmap)
        .map_err(io_failed(format!("mount_setattr({what})")))?;
    // Linux 6.13 and 6.14 take no O_PATH descriptor as a layer.
    let dir = nix::fcntl::openat(
        &clone,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed(format!("opening {what}")))?;
    Ok(Layer { _mount: clone, dir })
}

/// The overlay itself: top layer over the host's store, read-only.
fn mount_overlay(upper: &OwnedFd, lower: &OwnedFd, files: bool) -> Result<OwnedFd, Unavailable> {
    let ctx = FsContext::open(c"overlay").map_err(Unavailable::NoOverlayfs)?;
    let refused = |step: &'static str| {
        let ctx = &ctx;
        move |e: io::Error| Unavailable::Refused {
            step,
            source: e,
            kernel: ctx.messages(),
        }
    };
    ctx.set_string(c"source", c"nixspawn-store")
        .map_err(refused("its source name"))?;
    ctx.set_fd(c"lowerdir+", upper.as_fd())
        .map_err(refused("the top layer (lowerdir+ by descriptor)"))?;
    ctx.set_fd(c"lowerdir+", lower.as_fd())
        .map_err(refused("the host's store (lowerdir+ by descriptor)"))?;
    // Explicit: without it the kernel's configured default decides.
    ctx.set_string(c"redirect_dir", c"follow")
        .map_err(refused("redirect_dir=follow"))?;
    if files {
        ctx.set_string(c"metacopy", c"on")
            .map_err(refused("metacopy=on"))?;
    }
    // st_dev/st_ino as without it by default, whatever the kernel's default.
    ctx.set_string(c"xino", c"off")
        .map_err(refused("xino=off"))?;
    ctx.create().map_err(refused("the layers"))?;
    ctx.mount(sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV)
        .map_err(refused("fsmount"))
}

/// The process's umask set to 0 for as long as this lives (the launcher
/// and nixspawnctl are single-threaded where stores are built).
struct UmaskCleared(Mode);

impl UmaskCleared {
    fn new() -> UmaskCleared {
        UmaskCleared(nix::sys::stat::umask(Mode::empty()))
    }
}

impl Drop for UmaskCleared {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}

/// The overlay's content, recorded in the state directory for `nixspawnctl
/// update`, which builds the next overlay from it: the closure the guest
/// was given comes from here, never from what the guest shows (a guest
/// could mount a directory of names over its store and have them added).
///
/// Text, one entry per line: `d NAME`, `f NAME`, `l NAME TARGET` for store
/// paths, `m d PATH`/`m f PATH` for mount points; `\`, newline and space
/// inside a field written as `\\`, `\n`, `\s`.
pub mod record {
    use super::*;

    pub const FILE: &str = "store-paths";

    fn escape(out: &mut Vec<u8>, field: &[u8]) {
        for &b in field {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b' ' => out.extend_from_slice(b"\\s"),
                b => out.push(b),
            }
        }
    }

    fn unescape(field: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(field.len());
        let mut it = field.iter();
        while let Some(&b) = it.next() {
            if b != b'\\' {
                out.push(b);
                continue;
            }
            out.push(match it.next() {
                Some(b'\\') => b'\\',
                Some(b'n') => b'\n',
                Some(b's') => b' ',
                _ => return Err("a bad escape".into()),
            });
        }
        Ok(out)
    }

    pub fn encode(paths: &[Entry], mount_points: &[MountPoint]) -> Vec<u8> {
        let mut out = Vec::with_capacity(paths.len() * 64);
        for e in paths {
            out.extend_from_slice(match e.kind {
                EntryKind::Directory => b"d ",
                EntryKind::File => b"f ",
                EntryKind::Symlink(_) => b"l ",
            });
            escape(&mut out, e.name.as_bytes());
            if let EntryKind::Symlink(target) = &e.kind {
                out.push(b' ');
                escape(&mut out, target.as_os_str().as_bytes());
            }
            out.push(b'\n');
        }
        for mp in mount_points {
            out.extend_from_slice(if mp.directory { b"m d " } else { b"m f " });
            escape(&mut out, mp.path.as_os_str().as_bytes());
            out.push(b'\n');
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<(Vec<Entry>, Vec<MountPoint>), String> {
        let mut paths = Vec::new();
        let mut mount_points = Vec::new();
        for (n, line) in data.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let os = |f: &[u8]| unescape(f).map(OsString::from_vec);
            let bad = || format!("line {}: {:?}", n + 1, String::from_utf8_lossy(line));
            let kind = match fields.as_slice() {
                [b"d", name] => (os(name)?, EntryKind::Directory),
                [b"f", name] => (os(name)?, EntryKind::File),
                [b"l", name, target] => (os(name)?, EntryKind::Symlink(os(target)?.into())),
                [b"m", kind @ (b"d" | b"f"), path] => {
                    mount_points.push(MountPoint {
                        path: os(path)?.into(),
                        directory: *kind == b"d",
                    });
                    continue;
                }
                _ => return Err(bad()),
            };
            paths.push(Entry {
                name: kind.0,
                kind: kind.1,
            });
        }
        Ok((paths, mount_points))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: EntryKind) -> Entry {
        Entry {
            name: name.into(),
            kind,
        }
    }

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
                    97 22 0:40 /store /nix/store/abc\\040def ro - overlay x ro\n\
                    broken\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                MountInfo {
                    id: 22,
                    parent: 1,
                    mount_point: "/proc".into()
                },
                MountInfo {
                    id: 97,
                    parent: 22,
                    mount_point: "/nix/store/abc def".into()
                },
            ]
        );
        // Only what fits a byte is an escape; the rest stays as written.
        assert_eq!(unescape("a\\134b\\777\\01"), b"a\\b\\777\\01");
    }

    #[test]
    fn mount_points_outside_the_closure_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let paths = [entry("aaa-in", EntryKind::Directory)];
        let bind = |source: &Path, target: &str| CustomMount::Bind {
            source: source.into(),
            target: target.into(),
            read_only: true,
            recursive: false,
            idmap: crate::spec::mounts::BindIdmap::None,
        };
        let mounts = [
            bind(dir.path(), "/nix/store/aaa-in/etc"),
            bind(dir.path(), "/nix/store/bbb-out"),
            bind(&file, "/nix/store/ccc-file"),
            bind(dir.path(), "/nix/store/./ddd-deep/x/"),
            bind(dir.path(), "/nix/store"),
            bind(dir.path(), "/nix/storefront"),
            bind(dir.path(), "/srv"),
            CustomMount::Tmpfs {
                target: "/nix/store/eee-tmp".into(),
                options: String::new(),
            },
        ];
        let got = mount_points(&paths, &mounts);
        let want = [
            ("bbb-out", true),
            ("ccc-file", false),
            ("ddd-deep/x", true),
            ("eee-tmp", true),
        ]
        .map(|(p, d)| MountPoint {
            path: p.into(),
            directory: d,
        });
        assert_eq!(got, want);
    }

    #[test]
    fn record_round_trip() {
        let paths = vec![
            entry("aaa-dir", EntryKind::Directory),
            entry("bbb-file", EntryKind::File),
            entry("ccc-link", EntryKind::Symlink("/nix/store/aaa-dir".into())),
            entry("odd name\\with\nnewline", EntryKind::Symlink("a b".into())),
        ];
        let mps = vec![
            MountPoint {
                path: "ddd-mp/sub dir".into(),
                directory: true,
            },
            MountPoint {
                path: "eee-file".into(),
                directory: false,
            },
        ];
        let data = record::encode(&paths, &mps);
        assert_eq!(data.split(|b| *b == b'\n').count(), 7);
        assert_eq!(record::decode(&data).unwrap(), (paths, mps));
        assert!(record::decode(b"x aaa\n").is_err());
        assert!(record::decode(b"d a\\qb\n").is_err());
        assert!(record::decode(b"l only-name\n").is_err());
    }

    #[test]
    fn reasons_name_the_cause_and_the_fix() {
        let eperm = || io::Error::from_raw_os_error(libc::EPERM);
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let cases = [
            (
                Unavailable::Submount("/nix/store/aaa-x/sub".into()),
                "/nix/store/aaa-x/sub is a mount point of its own, which an overlay layer would hide",
            ),
            (
                Unavailable::TrustedXattr(eperm()),
                "cannot set trusted.overlay.opaque on its top layer (Operation not permitted): not in the initial user namespace (Nix's build sandbox?)",
            ),
            (
                Unavailable::Refused {
                    step: "the layers",
                    source: einval(),
                    kernel: None,
                },
                "overlayfs refused the layers (Invalid argument): layers by descriptor need Linux 6.15 or later",
            ),
            (
                Unavailable::Probe("aaa-sys/init".into()),
                "the overlay does not follow its redirects (/nix/store/aaa-sys/init is missing through it)",
            ),
        ];
        for (why, text) in cases {
            assert_eq!(why.to_string(), text);
        }
        assert_eq!(
            fallback_notice(1504, &Unavailable::Probe("x/init".into())),
            "closure-only /nix/store: one bind mount per store path (1504 mounts), not one overlay: the overlay does not follow its redirects (/nix/store/x/init is missing through it)"
        );
    }
}
