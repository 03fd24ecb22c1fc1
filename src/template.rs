//! `--template=DIR`: populate a missing `-D` directory from a template
//! tree before the container starts, as systemd-nspawn does — a btrfs
//! snapshot where the template is a subvolume, else a copy (reflinked
//! where the filesystem can). An existing directory is left as it is. The
//! tree's identity (machine-id, hostname) is copied unmodified, as
//! nspawn's manual says. Nothing is left behind on failure: the copy is
//! made under a temporary name beside the target and renamed into place
//! only when complete.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// btrfs's statfs magic, and the inode number of a subvolume's root.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
const BTRFS_SUBVOLUME_ROOT_INO: u64 = 256;

/// Make `directory` from `template` unless it exists.
pub fn populate(template: &Path, directory: &Path, ephemeral: bool) -> Result<()> {
    if ephemeral {
        bail!("--template= may not be combined with --ephemeral");
    }
    let meta = std::fs::metadata(template)
        .with_context(|| format!("--template={}: cannot be read", template.display()))?;
    if !meta.is_dir() {
        bail!("--template={}: not a directory", template.display());
    }
    if std::fs::symlink_metadata(directory).is_ok() {
        // As nspawn: an existing directory is not populated again.
        return Ok(());
    }
    let (Some(parent), Some(name)) = (directory.parent(), directory.file_name()) else {
        bail!("--template: {} cannot be created", directory.display());
    };
    let partial: PathBuf = parent.join(format!(".#{}.nixspawn-template", name.to_string_lossy()));
    let _ = remove_partial(&partial);
    let made = if is_subvolume(template, &meta) {
        snapshot(template, &partial)
    } else {
        copy(template, &partial)
    };
    let done = made.and_then(|()| {
        std::fs::rename(&partial, directory)
            .with_context(|| format!("renaming {} to {}", partial.display(), directory.display()))
    });
    if done.is_err() {
        let _ = remove_partial(&partial);
    }
    done.with_context(|| {
        format!(
            "could not populate {} from template {}",
            directory.display(),
            template.display()
        )
    })
}

/// Whether `template` is the root of a btrfs subvolume.
fn is_subvolume(template: &Path, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.ino() == BTRFS_SUBVOLUME_ROOT_INO
        && nix::sys::statfs::statfs(template)
            .is_ok_and(|s| s.filesystem_type().0 == BTRFS_SUPER_MAGIC)
}

/// A writable snapshot. The btrfs ioctls are left to btrfs-progs rather
/// than hand-written: the tool is what any btrfs host has, and the
/// snapshot's quota and permission rules are its business.
fn snapshot(template: &Path, to: &Path) -> Result<()> {
    run(Command::new("btrfs")
        .args(["subvolume", "snapshot"])
        .arg(template)
        .arg(to))
}

/// A copy of everything (ownership, modes, links, devices, xattrs, ACLs,
/// hard links), reflinked where possible, not crossing into sub-mounts
/// (as nspawn's snapshot excludes them). GNU cp does all of that; a
/// hand-written walker would have to redo each case.
fn copy(template: &Path, to: &Path) -> Result<()> {
    run(Command::new("cp")
        .args([
            "-a",
            "--reflink=auto",
            "--one-file-system",
            "--no-target-directory",
        ])
        .arg(template)
        .arg(to))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            err.lines().next().unwrap_or("(no message)")
        );
    }
    Ok(())
}

/// Remove a partial copy (a snapshot is a subvolume: deleted as one).
fn remove_partial(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if std::fs::remove_dir_all(path).is_err() {
        run(Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(path))?;
    }
    Ok(())
}
