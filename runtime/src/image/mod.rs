//! `--image=`: a raw disk image (a file or block device) as the guest's
//! root, as systemd-nspawn dissects it: a bare filesystem is the root; a
//! GPT disk gives its partitions by the Discoverable Partitions
//! Specification's types (root, and /usr, /home, /srv, /var, /var/tmp,
//! /boot and /efi mounted where it says), filtered by `--image-policy=`;
//! an MBR disk gives its one bootable Linux partition as the root (and a
//! type 0xEA partition as /boot), as nspawn 252 takes it.
//!
//! Every partition used gets its own loop device (LOOP_CONFIGURE with the
//! partition's offset and size, and LO_FLAGS_AUTOCLEAR) and a detached
//! mount (fsopen/fsmount), the partitions' mounts moved onto the root's
//! detached tree. Nothing is mounted in the host's namespace: the
//! container's mount namespace binds the tree, and once it and the
//! launcher's descriptors are gone — at exit, or when the launcher is
//! SIGKILLed and the guest dies with it — the mounts go, and with the last
//! of them the kernel detaches the loop devices (AUTOCLEAR).
//!
//! One loop device per partition rather than one with LO_FLAGS_PARTSCAN:
//! partition nodes appear asynchronously (through udev on most hosts),
//! while an offset and a size limit give a ready device at once.

pub mod gpt;
pub mod mbr;
pub mod probe;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::spec::image::{Designator, ImageSpec};
use probe::FsType;

/// The image, attached and mounted in a detached tree, for the
/// container's life.
pub struct Attached {
    /// The image file, locked (shared when read-only) against a second
    /// container writing the same filesystem.
    _lock: Flock<File>,
    /// The root's detached mount, the other partitions mounted in it.
    root: OwnedFd,
    /// Where the tree is reached by path: our descriptor of it in /proc.
    path: PathBuf,
    /// What was used, for `--debug` and tests: (where, device, fs type).
    pub used: Vec<(String, String, &'static str)>,
    /// The root is mounted read-only (asked for, or a read-only
    /// filesystem, partition or file).
    pub root_read_only: bool,
}

impl Attached {
    /// The tree's path (`/proc/PID/fd/N`), valid while this value lives
    /// and reachable from every process of the launch.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attached({}, {:?})", self.path.display(), self.root)
    }
}

/// One partition (or the whole image) to mount.
#[derive(Debug, Clone)]
struct Part {
    designator: Designator,
    number: Option<u32>,
    offset: u64,
    size: u64,
    fs: FsType,
    read_only: bool,
}

impl Part {
    fn describe(&self) -> String {
        match self.number {
            Some(n) => format!("partition {n} ({})", self.designator.name()),
            None => "the filesystem".to_owned(),
        }
    }
}

fn image_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether the kernel offers device-mapper (for `--root-hash` and
/// friends): the control node, or the misc device's entry in /proc.
pub fn device_mapper_available() -> bool {
    Path::new("/dev/mapper/control").exists()
        || std::fs::read_to_string("/proc/misc").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
        })
}

/// Open, lock, dissect, attach and mount the image. `ephemeral`
/// (`--ephemeral`): the image is only read, under the overlay's tmpfs
/// (where nspawn copies the whole image first), and may be shared.
pub fn attach(spec: &ImageSpec, ephemeral: bool) -> Result<Attached> {
    let path = &spec.path;
    let spec = &ImageSpec {
        read_only: spec.read_only || ephemeral,
        ..spec.clone()
    };
    let (file, writable) = open_image(path, spec.read_only)?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    let size = if meta.file_type().is_block_device() {
        crate::sys::block_device_size(file.as_fd())
            .map_err(|e| Error::io("BLKGETSIZE64", path, e))?
    } else if meta.is_file() {
        meta.len()
    } else {
        return Err(image_error(path, "not a regular file or block device"));
    };
    let how = if writable {
        FlockArg::LockExclusiveNonblock
    } else {
        FlockArg::LockSharedNonblock
    };
    let lock = Flock::lock(file, how).map_err(|(_, _)| {
        image_error(
            path,
            "in use by another container (lock held); stop it first",
        )
    })?;
    let parts = dissect(path, &lock, size, spec, !writable)?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| Error::io("opening", "/dev/loop-control", e))?;

    let mut used = Vec::new();
    let mut root: Option<OwnedFd> = None;
    let mut boot_taken = false;
    for part in &parts {
        let Some(root_fd) = &root else {
            let (device, mount) = mount_part(path, &lock, &control, part)?;
            used.push(("/".to_owned(), device, part.fs.kernel_name()));
            root = Some(mount);
            continue;
        };
        let target = match part.designator {
            Designator::Esp => match esp_place(root_fd, boot_taken) {
                Some(t) => t,
                None => continue,
            },
            d => target_of(d),
        };
        let (device, mount) = mount_part(path, &lock, &control, part)?;
        place(path, root_fd, target, mount, part)?;
        used.push((format!("/{target}"), device, part.fs.kernel_name()));
        boot_taken |= part.designator == Designator::Xbootldr;
    }
    let root = root.ok_or_else(|| image_error(path, "nothing to mount"))?;
    let root_read_only = parts.first().is_some_and(|p| p.read_only);
    let tree = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        root.as_raw_fd()
    ));
    Ok(Attached {
        _lock: lock,
        root,
        path: tree,
        used,
        root_read_only,
    })
}

/// Open read-write unless asked for read-only or refused (a read-only
/// file or medium is used read-only, as nspawn does).
fn open_image(path: &Path, read_only: bool) -> Result<(File, bool)> {
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)
    };
    if !read_only {
        match open(true) {
            Ok(f) => return Ok((f, true)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EROFS | libc::EPERM)
                ) => {}
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                return Err(image_error(
                    path,
                    "is a directory; use -D for a directory tree",
                ));
            }
            Err(e) => return Err(Error::io("opening", path, e)),
        }
    }
    open(false)
        .map(|f| (f, false))
        .map_err(|e| Error::io("opening", path, e))
}

/// Where a DPS partition goes, relative to the root.
fn target_of(d: Designator) -> &'static str {
    match d {
        Designator::Usr => "usr",
        Designator::Home => "home",
        Designator::Srv => "srv",
        Designator::Var => "var",
        // The DPS's "temporary data" partition is /var/tmp.
        Designator::Tmp => "var/tmp",
        Designator::Xbootldr => "boot",
        _ => "efi",
    }
}

/// As nspawn: the ESP goes to /efi if the tree has one, else to /boot if
/// that is an empty directory and XBOOTLDR is not mounted there, else
/// nowhere.
fn esp_place(root: &OwnedFd, boot_taken: bool) -> Option<&'static str> {
    let base = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()));
    if base.join("efi").is_dir() {
        return Some("efi");
    }
    let boot_empty = std::fs::read_dir(base.join("boot")).is_ok_and(|mut d| d.next().is_none());
    (!boot_taken && boot_empty).then_some("boot")
}

/// Mount `mount` at `target` inside the root's detached tree.
fn place(image: &Path, root: &OwnedFd, target: &str, mount: OwnedFd, part: &Part) -> Result<()> {
    let shown = PathBuf::from(format!("/proc/self/fd/{}/{target}", root.as_raw_fd()));
    if !shown.is_dir() {
        std::fs::create_dir_all(&shown).map_err(|e| {
            image_error(
                image,
                format!(
                    "{} goes to /{target}, which the root lacks and cannot get ({e})",
                    part.describe()
                ),
            )
        })?;
    }
    let c_target = CString::new(target).map_err(|_| image_error(image, "bad target"))?;
    crate::sys::move_mount_fd(mount.as_fd(), Some(root.as_fd()), &c_target).map_err(|e| {
        Error::Mount {
            what: format!("{} of {}", part.describe(), image.display()),
            target: PathBuf::from("/").join(target),
            source: e,
        }
    })
}

/// A loop device over one part, and its filesystem's detached mount.
fn mount_part(image: &Path, file: &File, control: &File, part: &Part) -> Result<(String, OwnedFd)> {
    let mut flags = crate::sys::LO_FLAGS_AUTOCLEAR;
    if part.read_only {
        flags |= crate::sys::LO_FLAGS_READ_ONLY;
    }
    let (device, loop_fd) = attach_loop(control, file, part.offset, part.size, flags)?;
    let fs_name = part.fs.kernel_name();
    let c_fs = CString::new(fs_name).unwrap_or_default();
    let mount_err = |e: std::io::Error, ctx: Option<String>| {
        let why = match (e.raw_os_error(), ctx) {
            (Some(libc::ENODEV), _) => format!("this kernel has no {fs_name} filesystem"),
            (_, Some(m)) => format!("{e} ({m})"),
            (_, None) => e.to_string(),
        };
        image_error(
            image,
            format!(
                "mounting {} ({fs_name}) from {device}: {why}",
                part.describe()
            ),
        )
    };
    let fs = crate::sys::FsContext::open(&c_fs).map_err(|e| mount_err(e, None))?;
    let source = CString::new(device.as_str()).unwrap_or_default();
    fs.set_string(c"source", &source)
        .map_err(|e| mount_err(e, fs.messages()))?;
    if part.read_only {
        fs.set_flag(c"ro")
            .map_err(|e| mount_err(e, fs.messages()))?;
    }
    fs.create().map_err(|e| mount_err(e, fs.messages()))?;
    // nodev, as nspawn mounts an image's partitions.
    let mut attrs = crate::sys::MOUNT_ATTR_NODEV;
    if part.read_only {
        attrs |= crate::sys::MOUNT_ATTR_RDONLY;
    }
    let mount = fs.mount(attrs).map_err(|e| mount_err(e, fs.messages()))?;
    // The mount holds the device now; our descriptor may go (AUTOCLEAR
    // detaches it when the last mount does).
    drop(loop_fd);
    Ok((device, mount))
}

/// A free loop device bound to `size` bytes of `file` from `offset`.
fn attach_loop(
    control: &File,
    file: &File,
    offset: u64,
    size: u64,
    flags: u32,
) -> Result<(String, OwnedFd)> {
    // Another process may take the free device between our asking and
    // binding it (EBUSY): ask again.
    for _ in 0..64 {
        let n = crate::sys::loop_get_free(control.as_fd())
            .map_err(|e| Error::io("LOOP_CTL_GET_FREE", "/dev/loop-control", e))?;
        let device = format!("/dev/loop{n}");
        let dev = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&device)
        {
            Ok(d) => d,
            // Not yet created by devtmpfs: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(Error::io("opening", &device, e)),
        };
        match crate::sys::loop_configure(dev.as_fd(), file.as_fd(), offset, size, flags) {
            Ok(()) => return Ok((device, OwnedFd::from(dev))),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(Error::io("LOOP_CONFIGURE", &device, e)),
        }
    }
    Err(Error::io(
        "LOOP_CONFIGURE",
        "/dev/loop-control",
        std::io::Error::from_raw_os_error(libc::EBUSY),
    ))
}

/// nspawn's choice among several partitions of one type: the newest by
/// the version in their labels (runs of digits compare as numbers).
fn newer_label(a: &str, b: &str) -> bool {
    fn key(s: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let text_end = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (text, tail) = rest.split_at(text_end);
            let num_end = tail
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(tail.len());
            let (num, tail) = tail.split_at(num_end);
            out.push((text.to_owned(), num.parse().unwrap_or(0)));
            rest = tail;
        }
        out
    }
    key(a) > key(b)
}

/// The MBR partitions nspawn uses, as GPT entries of the types that mean
/// the same to the dissection below: a bootable Linux partition is a
/// generic root candidate, 0xEA is XBOOTLDR; nspawn ignores the rest
/// (and the Linux partitions without the bootable flag).
fn mbr_entries(parts: &[mbr::Partition]) -> Vec<gpt::Entry> {
    parts
        .iter()
        .filter_map(|p| {
            let type_guid = match p.kind {
                mbr::LINUX if p.bootable() => gpt::GENERIC_LINUX,
                mbr::XBOOTLDR => gpt::XBOOTLDR,
                _ => return None,
            };
            Some(gpt::Entry {
                number: p.number,
                type_guid: type_guid.to_owned(),
                offset: p.offset,
                size: p.size,
                attributes: 0,
                label: String::new(),
            })
        })
        .collect()
}

/// Why an MBR disk has no root, with the fix where there is one.
fn mbr_no_root(parts: &[mbr::Partition]) -> String {
    match parts.iter().find(|p| p.kind == mbr::LINUX) {
        Some(p) => format!(
            "MBR partition {} is Linux (0x83) but not marked bootable; systemd-nspawn boots only a bootable one (sfdisk --activate IMAGE {})",
            p.number, p.number
        ),
        None => {
            let kinds: Vec<String> = parts
                .iter()
                .map(|p| format!("{}: {:#04x}", p.number, p.kind))
                .collect();
            format!(
                "has an MBR table without a Linux partition (type 0x83) to boot (partitions {})",
                if kinds.is_empty() {
                    "none".to_owned()
                } else {
                    kinds.join(", ")
                }
            )
        }
    }
}

/// What to mount, root first: a bare filesystem, or the GPT's partitions
/// that the DPS and the policy make ours, or the one bootable Linux
/// partition of an MBR disk (and its XBOOTLDR, type 0xEA).
fn dissect(
    path: &Path,
    file: &File,
    size: u64,
    spec: &ImageSpec,
    file_ro: bool,
) -> Result<Vec<Part>> {
    let policy = &spec.policy;
    let forbid = |d: Designator, what: &str| {
        image_error(
            path,
            format!(
                "image policy {:?} forbids {what} ({} partition)",
                policy.text(),
                d.name()
            ),
        )
    };
    if let Some(fs) = probe::probe(file, 0) {
        let flags = policy.flags(Designator::Root);
        if !flags.allows_unprotected_use() {
            return Err(forbid(Designator::Root, "an unprotected root filesystem"));
        }
        return Ok(vec![Part {
            designator: Designator::Root,
            number: None,
            offset: 0,
            size: 0,
            fs,
            read_only: spec.read_only || file_ro || fs.read_only(),
        }]);
    }
    let (entries, mbr) = match gpt::read(file, size).map_err(|e| image_error(path, e))? {
        Some(e) => (e, None),
        None => match mbr::read(file, size).map_err(|e| image_error(path, e))? {
            Some(parts) => (mbr_entries(&parts), Some(parts)),
            None => {
                return Err(image_error(
                    path,
                    "not a disk image: no partition table (GPT or MBR) and no filesystem nixspawn knows (ext4, btrfs, xfs, squashfs, erofs)",
                ));
            }
        },
    };

    // The chosen partition of each type, and the generic Linux ones.
    let mut chosen: std::collections::BTreeMap<Designator, &gpt::Entry> = Default::default();
    let mut generic = Vec::new();
    for e in &entries {
        if e.type_guid == gpt::GENERIC_LINUX {
            if e.attributes & gpt::ATTR_NO_AUTO == 0 {
                generic.push(e);
            }
            continue;
        }
        let Some(d) = gpt::designator(&e.type_guid) else {
            continue;
        };
        match chosen.get(&d) {
            Some(prev) if !newer_label(&e.label, &prev.label) => {}
            _ => {
                chosen.insert(d, e);
            }
        }
    }
    // The policy over what is and is not there.
    for d in Designator::ALL {
        let flags = policy.flags(d);
        match chosen.get(&d) {
            None if !flags.absent && d != Designator::Root => {
                return Err(image_error(
                    path,
                    format!(
                        "image policy {:?} requires a {} partition; the image has none",
                        policy.text(),
                        d.name()
                    ),
                ));
            }
            Some(_) if !flags.unprotected && !flags.unused => {
                return Err(forbid(d, "the unprotected partition the image has"));
            }
            Some(e) if flags.unprotected => {
                if let Some(want) = flags.read_only {
                    let has = e.attributes & gpt::ATTR_READ_ONLY != 0;
                    if has != want {
                        return Err(image_error(
                            path,
                            format!(
                                "image policy {:?} requires the {} partition's read-only flag {}",
                                policy.text(),
                                d.name(),
                                if want { "on" } else { "off" }
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    let usable = |d: Designator| policy.flags(d).unprotected;

    let root = match chosen.get(&Designator::Root) {
        Some(e) if usable(Designator::Root) => *e,
        Some(_) => {
            return Err(image_error(
                path,
                "the image policy leaves the root partition unused; nothing to boot",
            ));
        }
        None if generic.len() == 1 && usable(Designator::Root) => generic[0],
        None if generic.len() > 1 => {
            let numbers: Vec<String> = generic.iter().map(|e| e.number.to_string()).collect();
            return Err(image_error(
                path,
                if mbr.is_some() {
                    format!(
                        "several bootable Linux (0x83) MBR partitions ({}): which is the root is ambiguous; leave the bootable flag on one",
                        numbers.join(", ")
                    )
                } else {
                    format!(
                        "no root partition and several generic Linux partitions ({}): which is the root is ambiguous",
                        numbers.join(", ")
                    )
                },
            ));
        }
        None => {
            if !policy.flags(Designator::Root).absent {
                return Err(image_error(
                    path,
                    format!(
                        "image policy {:?} requires a root partition; the image has none",
                        policy.text()
                    ),
                ));
            }
            if let Some(parts) = &mbr {
                return Err(image_error(path, mbr_no_root(parts)));
            }
            return Err(image_error(
                path,
                "has no root partition (GPT type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 for x86-64) and no single generic Linux partition",
            ));
        }
    };
    let make = |d: Designator, e: &gpt::Entry| -> Result<Part> {
        let fs = probe::probe(file, e.offset).ok_or_else(|| {
            image_error(
                path,
                format!(
                    "partition {} ({}) holds no filesystem nixspawn can mount",
                    e.number,
                    d.name()
                ),
            )
        })?;
        Ok(Part {
            designator: d,
            number: Some(e.number),
            offset: e.offset,
            size: e.size,
            fs,
            read_only: spec.read_only
                || file_ro
                || fs.read_only()
                || e.attributes & gpt::ATTR_READ_ONLY != 0,
        })
    };
    let mut parts = vec![make(Designator::Root, root)?];
    for d in [
        Designator::Usr,
        Designator::Home,
        Designator::Srv,
        Designator::Var,
        Designator::Tmp,
        Designator::Xbootldr,
        Designator::Esp,
    ] {
        if let Some(e) = chosen.get(&d)
            && usable(d)
            && e.attributes & gpt::ATTR_NO_AUTO == 0
        {
            parts.push(make(d, e)?);
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_compare_by_version() {
        assert!(newer_label("root-10", "root-9"));
        assert!(!newer_label("root-1.2", "root-1.10"));
        assert!(newer_label("b", "a"));
    }
}
