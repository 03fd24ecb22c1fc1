//! Lock files as systemd keeps them (and shares with us for UID ranges):
//! an OFD write lock on the whole file; its holder unlinks the file before
//! letting go, and whoever locks a file that is already unlinked
//! (st_nlink == 0) drops it and tries again. A lock file is only ever
//! removed by its holder, so clearing one never races a fresh claim, and
//! one left by a dead holder is cleared by locking it first.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result};

/// struct flock's small fields are shorts; the constants that go in them are ints.
fn short(v: libc::c_int) -> libc::c_short {
    libc::c_short::try_from(v).expect("lock constants fit in a short")
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: short(kind),
        l_whence: short(libc::SEEK_SET),
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Take the write lock on `file` without waiting: Ok(false) if another
/// open file description holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    match nix::fcntl::fcntl(
        file,
        nix::fcntl::FcntlArg::F_OFD_SETLK(&whole_file(libc::F_WRLCK)),
    ) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn open(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

/// Lock `path`, creating it if needed: Ok(None) if someone holds it.
pub fn acquire(path: &Path) -> Result<Option<File>> {
    loop {
        let f = open(path, true).map_err(|e| Error::io("opening", path, e))?;
        if !try_lock(&f).map_err(|e| Error::io("locking", path, e))? {
            return Ok(None);
        }
        // Unlinked by its previous holder between our open and our lock.
        if f.metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .nlink()
            == 0
        {
            continue;
        }
        return Ok(Some(f));
    }
}

/// Lock `path` with `label` in it, atomically: the file appears at `path`
/// already locked and labelled (made unnamed, then linked), so whoever
/// finds it held can always read who holds it. Ok(Err(label)) names the
/// holder if someone has it; a dead holder's file is cleared and taken.
pub fn acquire_labelled(path: &Path, label: &str) -> Result<std::result::Result<File, String>> {
    use std::io::{Read, Write};
    let dir = path.parent().unwrap_or(Path::new("/"));
    loop {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| Error::io("creating a lock file in", dir, e))?;
        f.write_all(label.as_bytes())
            .map_err(|e| Error::io("writing a lock file in", dir, e))?;
        // Nobody else can reach this file yet: the lock is ours.
        if !try_lock(&f).map_err(|e| Error::io("locking", path, e))? {
            return Err(Error::io("locking", path, io::ErrorKind::WouldBlock.into()));
        }
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
        match nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            proc_path.as_str(),
            nix::fcntl::AT_FDCWD,
            path,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        ) {
            Ok(()) => return Ok(Ok(f)),
            Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(Error::io("linking", path, e.into())),
        }
        let mut existing = match open(path, false) {
            Ok(e) => e,
            // Released between our link and our look: try again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("opening", path, e)),
        };
        if try_lock(&existing).map_err(|e| Error::io("locking", path, e))? {
            // A dead holder's (or one just released, already unlinked):
            // ours to remove while we hold it, then claim afresh.
            release(path, existing);
            continue;
        }
        let mut holder = String::new();
        let _ = existing.read_to_string(&mut holder);
        return Ok(Err(holder));
    }
}

/// Lock `path`, creating it if needed, waiting for whoever holds it.
pub fn acquire_blocking(path: &Path) -> Result<File> {
    loop {
        let f = open(path, true).map_err(|e| Error::io("opening", path, e))?;
        loop {
            match nix::fcntl::fcntl(
                &f,
                nix::fcntl::FcntlArg::F_OFD_SETLKW(&whole_file(libc::F_WRLCK)),
            ) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::io("locking", path, e.into())),
            }
        }
        if f.metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .nlink()
            > 0
        {
            return Ok(f);
        }
    }
}

/// Whether `path` is still the file `held` (so that its holder, and only
/// its holder, may remove it).
pub fn names(path: &Path, held: &File) -> bool {
    match (std::fs::symlink_metadata(path), held.metadata()) {
        (Ok(p), Ok(h)) => p.dev() == h.dev() && p.ino() == h.ino() && h.nlink() > 0,
        _ => false,
    }
}

/// Let go of a held lock: unlink it first (if `path` is still it).
pub fn release(path: &Path, held: File) {
    if names(path, &held) {
        let _ = std::fs::remove_file(path);
    }
    drop(held);
}

/// Whether some process holds the lock on `path` (without taking it, so
/// a look never makes a claimant fail).
pub fn is_held(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut probe = whole_file(libc::F_WRLCK);
    match nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => probe.l_type != short(libc::F_UNLCK),
        Err(_) => false,
    }
}

/// Remove `path` if nobody holds it (a claim its holder died before
/// releasing, or never got to lock). Never creates it.
pub fn clear_if_unheld(path: &Path) {
    let Ok(f) = open(path, false) else {
        return;
    };
    if try_lock(&f).unwrap_or(false) {
        release(path, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_and_clean_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = acquire(&p).unwrap().expect("free");
        assert!(is_held(&p));
        assert!(acquire(&p).unwrap().is_none(), "a second open is refused");
        clear_if_unheld(&p);
        assert!(p.exists(), "a held lock is never cleared");
        release(&p, held);
        assert!(!p.exists());
        assert!(!is_held(&p));
    }

    #[test]
    fn a_dead_holders_file_is_cleared_and_a_replaced_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        std::fs::write(&p, "").unwrap();
        clear_if_unheld(&p);
        assert!(!p.exists(), "an unheld file is cleared");
        let old = acquire(&p).unwrap().unwrap();
        // Someone else's file now stands at the path: not ours to remove.
        std::fs::remove_file(&p).unwrap();
        let new = acquire(&p).unwrap().unwrap();
        release(&p, old);
        assert!(p.exists() && is_held(&p));
        release(&p, new);
        assert!(!p.exists());
    }

    #[test]
    fn a_labelled_lock_names_its_holder_and_is_never_seen_unlabelled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = acquire_labelled(&p, "first").unwrap().expect("free");
        assert!(is_held(&p));
        assert_eq!(
            acquire_labelled(&p, "second").unwrap().unwrap_err(),
            "first"
        );
        release(&p, held);
        assert!(!p.exists());
        // A dead holder's file, unheld: cleared and taken.
        std::fs::write(&p, "dead").unwrap();
        let held = acquire_labelled(&p, "third")
            .unwrap()
            .expect("stale file taken");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "third");
        release(&p, held);
        assert!(!p.exists());
    }
}
