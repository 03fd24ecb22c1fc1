//! /proc for the guest: its own procfs, with the kernel knobs read-only and
//! the host-revealing files masked, as systemd-nspawn sets it up.

use std::path::Path;

use nix::mount::MsFlags;

use crate::error::Result;
use crate::guest::apifs::runhost::{inaccessible_file, kmsg_fifo};
use crate::guest::rootfs::mounts::{Target, bind, bind_sealed, clone_tree, mount_fs, mount_new};

/// Overmounted with a mode-0 file: they leak host kernel state.
const MASKED: &[&str] = &["kallsyms", "kcore", "keys", "sysrq-trigger", "timer_list"];
/// Bound read-only onto themselves.
const READ_ONLY: &[&str] = &["acpi", "apm", "asound", "bus", "fs", "irq", "scsi"];

const FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// nspawn's masks over /proc. Without them (`--nested-sandbox`) the procfs
/// has no mounts below it, which is what the kernel requires before a user
/// namespace of the guest's may mount a procfs of its own (else the new
/// one would be "too revealing": it would show what the masks hide).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Masks {
    /// `/proc/sys/net` stays writable: the guest owns its network namespace.
    pub private_network: bool,
}

/// Mount /proc on `proc` (the guest's /proc, resolved and held); `host`
/// leads into /run/host (its boot id and masking file).
pub(crate) fn mount_proc_on(proc: &Target, host: &Path, masks: Option<Masks>) -> Result<()> {
    let mounted = mount_new("proc", proc, FLAGS, None)?;
    match masks {
        Some(m) => restrict(&mounted.path(), host, m.private_network),
        None => Ok(()),
    }
}

/// Mount /proc at the path `proc` (inside the guest's root, after it
/// pivoted there); `host` is /run/host.
pub(crate) fn mount_proc(proc: &Path, host: &Path, masks: Option<Masks>) -> Result<()> {
    mount_fs("proc", proc, FLAGS, None)?;
    match masks {
        Some(m) => restrict(proc, host, m.private_network),
        None => Ok(()),
    }
}

/// The read-only and masked parts of the procfs at `proc`.
fn restrict(proc: &Path, host: &Path, private_network: bool) -> Result<()> {
    let proc = proc.to_path_buf();

    let sys = proc.join("sys");
    bind(&sys, &sys, true, true)?;
    if private_network {
        // The guest owns its network namespace, so it may tune it: a
        // clone of /proc/sys/net with the read-only flag it inherited from
        // /proc/sys taken off again (a bind of a read-only mount is
        // read-only too).
        let net = sys.join("net");
        let writable = clone_tree(&net, true)?;
        crate::sys::mount_setattr(
            std::os::fd::AsFd::as_fd(&writable),
            true,
            0,
            crate::sys::MOUNT_ATTR_RDONLY,
        )
        .map_err(|e| crate::error::Error::Mount {
            what: "a writable bind of /proc/sys/net".into(),
            target: net.clone(),
            source: e,
        })?;
        crate::guest::rootfs::mounts::attach(&writable, &net)?;
    }
    // Our own boot id, so the guest's journal has its own boots.
    let boot_id = sys.join("kernel/random/boot_id");
    bind_sealed(&host.join("proc-sys-kernel-random-boot-id"), &boot_id)?;
    // A FIFO of ours instead of the host's kernel log, as nspawn gives.
    let kmsg = proc.join("kmsg");
    if kmsg.exists() {
        bind(&kmsg_fifo(host), &kmsg, false, false)?;
    }
    let mask = inaccessible_file(host);
    for name in MASKED {
        let p = proc.join(name);
        if p.exists() {
            bind(&mask, &p, false, true)?;
        }
    }
    for name in READ_ONLY {
        let p = proc.join(name);
        if p.exists() {
            bind(&p, &p, true, true)?;
        }
    }
    Ok(())
}
