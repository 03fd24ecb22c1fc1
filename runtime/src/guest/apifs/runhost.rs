//! /run, /tmp and the /run/host interface directory systemd reads to learn
//! about its container manager.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, bind, socket};
use nix::sys::stat::{Mode, SFlag, mknod};

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{
    Mounted, Owner, Target, bind_onto, bind_sealed, ensure_dir, ensure_file, mount_fs_in_root,
    remount, write_file,
};
use crate::spec::identity::Uuid;

/// The value of `$container` and /run/host/container-manager. Guests
/// condition units on it (ConditionVirtualization=), so we announce the
/// manager whose interface we implement.
pub const CONTAINER_MANAGER: &str = "systemd-nspawn";

/// Mount /run and /tmp; returns /run's mount.
pub(crate) fn mount_run_and_tmp(root: &Path, owner: Owner) -> Result<Mounted> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME;
    let run = mount_fs_in_root(
        root,
        "/run",
        "tmpfs",
        0o755,
        flags,
        Some(&owner.tmpfs("mode=0755,size=20%,nr_inodes=800k")),
    )?;
    mount_fs_in_root(
        root,
        "/tmp",
        "tmpfs",
        0o1777,
        flags,
        Some(&owner.tmpfs("mode=01777,size=10%,nr_inodes=400k")),
    )?;
    Ok(run)
}

/// Populate /run/host in the guest's /run (everything but the final
/// read-only remount). Returns its mount (later steps work through it)
/// and the bound notify socket.
pub(crate) fn populate(run: &Mounted, uuid: &Uuid, owner: Owner) -> Result<(Mounted, OwnedFd)> {
    let dir = run.path().join("host");
    ensure_dir(&dir, 0o755)?;
    // A mount point of its own from the start, so sealing it later is a
    // remount rather than a bind that would copy what is mounted below.
    let mut target = Target::ours(&dir)?;
    target.set_shown(run.shown().join("host"));
    let mounted = bind_onto(&dir, &target, false, false)?;
    let host = mounted.path();
    let inacc = host.join("inaccessible");
    ensure_dir(&inacc, 0o755)?;
    let nodes: [(&str, SFlag, u64); 5] = [
        ("reg", SFlag::S_IFREG, 0),
        ("fifo", SFlag::S_IFIFO, 0),
        ("sock", SFlag::S_IFSOCK, 0),
        ("chr", SFlag::S_IFCHR, nix::sys::stat::makedev(0, 0)),
        ("blk", SFlag::S_IFBLK, nix::sys::stat::makedev(0, 0)),
    ];
    let mut made = Vec::new();
    for (name, kind, dev) in nodes {
        let p = inacc.join(name);
        match mknod(&p, kind, Mode::empty(), dev) {
            Ok(()) => made.push(name),
            // A block node needs the host's CAP_MKNOD (a character 0:0
            // node, a whiteout, does not): without it, as in a Nix
            // uid-range sandbox, the guest goes without
            // inaccessible/blk — systemd only uses it to mask block
            // devices, which such a guest cannot open anyway.
            Err(nix::errno::Errno::EPERM) if kind == SFlag::S_IFBLK => {}
            Err(e) => return Err(Error::io("mknod", &p, e.into())),
        }
    }
    let dir = inacc.join("dir");
    ensure_dir(&dir, 0)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o000))
        .map_err(|e| Error::io("chmod", &dir, e))?;

    let os_release = host.join("os-release");
    ensure_file(&os_release, 0o444)?;
    let host_release = ["/etc/os-release", "/usr/lib/os-release"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if let Some(src) = host_release {
        bind_sealed(Path::new(src), &os_release)?;
    }
    // Where machinectl's bind and copy-to look (nixspawnctl binds with the
    // new mount API straight onto the target); as nspawn's, mode 0600.
    let incoming = host.join("incoming");
    ensure_dir(&incoming, 0o600)?;
    std::fs::set_permissions(
        &incoming,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| Error::io("chmod", &incoming, e))?;
    // Bound over /proc/kmsg: the guest must not drain the host's kernel log.
    let kmsg = kmsg_fifo(&host);
    mknod(&kmsg, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
        .map_err(|e| Error::io("mkfifo", &kmsg, e.into()))?;
    write_file(
        &host.join("container-manager"),
        format!("{CONTAINER_MANAGER}\n").as_bytes(),
        0o444,
    )?;
    write_file(
        &host.join("container-uuid"),
        format!("{uuid}\n").as_bytes(),
        0o444,
    )?;
    let boot_id = Uuid::random()?;
    write_file(
        &host.join("proc-sys-kernel-random-boot-id"),
        format!("{boot_id}\n").as_bytes(),
        0o444,
    )?;

    let notify_path = host.join("notify");
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| Error::syscall("socket(AF_UNIX, SOCK_DGRAM)", e))?;
    let addr = UnixAddr::new(&notify_path)
        .map_err(|e| Error::io("notify socket address", &notify_path, e.into()))?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr)
        .map_err(|e| Error::io("binding", &notify_path, e.into()))?;
    std::fs::set_permissions(
        &notify_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o200),
    )
    .map_err(|e| Error::io("chmod", &notify_path, e))?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
        .map_err(|e| Error::syscall("setsockopt(SO_PASSCRED)", e))?;
    // Everything here is the guest root's, but the os-release bind: that
    // is the host's file.
    let mut ours = vec![
        host.clone(),
        inacc.clone(),
        dir.clone(),
        notify_path.clone(),
        incoming,
        kmsg,
    ];
    ours.extend(made.iter().map(|name| inacc.join(name)));
    ours.extend(
        [
            "container-manager",
            "container-uuid",
            "proc-sys-kernel-random-boot-id",
        ]
        .map(|f| host.join(f)),
    );
    for p in &ours {
        owner.chown(p)?;
    }
    Ok((mounted, sock))
}

/// The FIFO the guest sees as /proc/kmsg (nspawn's `proc-kmsg`).
pub(crate) fn kmsg_fifo(host: &Path) -> PathBuf {
    host.join("proc-kmsg")
}

/// The mode-0 regular file used to mask /proc entries.
pub(crate) fn inaccessible_file(host: &Path) -> PathBuf {
    host.join("inaccessible/reg")
}

/// Under a user namespace: a full /proc and /sys of the host's at
/// /run/host/{proc,sys}. The kernel lets a user namespace mount procfs or
/// sysfs only while a fully visible one exists in its mount namespace; the
/// outer process unmounts these (shared, so the guest's copies follow) once
/// the guest has mounted its own.
pub(crate) fn pin_api_filesystems(host: &Path) -> Result<()> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for (fstype, dir, extra) in [
        ("proc", "proc", MsFlags::empty()),
        ("sysfs", "sys", MsFlags::MS_RDONLY),
    ] {
        let target = host.join(dir);
        crate::guest::rootfs::mounts::mount_fs_on_dir(fstype, &target, 0o555, flags | extra, None)
            .map_err(|e| match fstype {
                "sysfs" => crate::guest::apifs::sysfs::explain(e),
                _ => e,
            })?;
        crate::guest::rootfs::mounts::propagation(&target, MsFlags::MS_SHARED)?;
    }
    Ok(())
}

/// The guest may read /run/host but not change it.
pub(crate) fn seal(host: &Path) -> Result<()> {
    remount(
        host,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}
