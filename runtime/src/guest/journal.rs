//! `--link-journal`: make the guest's persistent journal
//! (/var/log/journal/MACHINE-ID) visible on the host, so `journalctl -m`
//! and `journalctl -M` find it, following systemd-nspawn's rules:
//! - `host`: the directory lives on the host and is bound into the guest;
//! - `guest`: it lives in the tree and the host gets a symlink to it;
//! - `try-host`/`try-guest`: the same, skipped quietly when impossible;
//! - `auto`: bind the host's directory if it already exists;
//! - `no`, and every ephemeral run: nothing.
//!
//! The id is the tree's own /etc/machine-id; a tree without one (the
//! guest then takes `$container_uuid` for this boot only) is skipped unless
//! `host` or `guest` demanded a link.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{Owner, Target, bind_onto};
use crate::guest::rootfs::resolve::{self, Create};
use crate::spec::journal::LinkJournal;

/// Where journald keeps persistent journals, on the host and in the guest.
const JOURNAL_DIR: &str = "/var/log/journal";

/// The 32-hex-digit id in a machine-id file, if it holds one.
fn machine_id(text: &str) -> Option<String> {
    let id = text.trim();
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then(|| id.to_ascii_lowercase())
}

/// Set up the link for the guest mounted at `root` (before the switch
/// into it). `tree` is the guest's directory on the host.
pub(crate) fn link(mode: LinkJournal, root: &Path, tree: &Path, owner: Owner) -> Result<()> {
    if mode == LinkJournal::No {
        return Ok(());
    }
    let skip_or = |reason: String| {
        if mode.tolerant() {
            tracing::debug!("not linking the journal: {reason}");
            Ok(())
        } else {
            Err(Error::Journal { reason })
        }
    };
    let text = resolve::read_in_root(root, Path::new("/etc/machine-id"), 64)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let Some(id) = machine_id(&text) else {
        return skip_or(format!(
            "{} has no machine ID in /etc/machine-id; give it one (systemd-machine-id-setup --root={}) or use --link-journal=try-host|try-guest|no",
            tree.display(),
            tree.display()
        ));
    };
    let host_id = fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if machine_id(&host_id).as_deref() == Some(id.as_str()) {
        return skip_or(format!(
            "{} has the host's own machine ID {id}",
            tree.display()
        ));
    }
    let guest_dir = Path::new(JOURNAL_DIR).join(&id);
    let on_host = guest_dir.clone();
    let in_tree = tree.join(guest_dir.strip_prefix("/").unwrap_or(&guest_dir));
    let make_guest_dir = || {
        Target::resolve(root, &guest_dir, Create::Dir(0o755)).and_then(|t| {
            t.chown(owner)?;
            Ok(t)
        })
    };

    match fs::read_link(&on_host) {
        Ok(target) => {
            let ours = target == in_tree;
            if ours && (mode.in_guest() || mode == LinkJournal::Auto) {
                make_guest_dir()?;
                return Ok(());
            }
            fs::remove_file(&on_host).map_err(|e| Error::io("removing", &on_host, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // A real directory on the host: bound below (not for `guest`).
            if mode.in_guest() {
                return skip_or(format!(
                    "{} is a directory on the host, not a link into the guest",
                    on_host.display()
                ));
            }
        }
        Err(e) => return Err(Error::io("reading the link", &on_host, e)),
    }

    if mode.in_guest() {
        if let Err(e) = std::os::unix::fs::symlink(&in_tree, &on_host) {
            return skip_or(format!(
                "linking {} to {}: {e}",
                on_host.display(),
                in_tree.display()
            ));
        }
        make_guest_dir()?;
        return Ok(());
    }
    if matches!(mode, LinkJournal::Host | LinkJournal::TryHost) {
        // Only the id's own directory: a host without a persistent journal
        // is not given one here.
        match fs::create_dir(&on_host) {
            Ok(()) => owner.chown(&on_host)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return skip_or(format!("creating {}: {e}", on_host.display())),
        }
    } else if !on_host.is_dir() {
        return Ok(());
    }
    let target = make_guest_dir()?;
    bind_onto(&on_host, &target, false, false).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids() {
        assert_eq!(
            machine_id("0123456789ABCDEF0123456789abcdef\n").as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(machine_id(""), None);
        assert_eq!(machine_id("uninitialized\n"), None);
        assert_eq!(machine_id(&"0".repeat(32)), None);
    }
}
