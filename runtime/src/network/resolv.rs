//! `--resolv-conf=` and `--timezone=`: which action systemd-nspawn's
//! `auto` picks (decided by the launcher, which sees the host), and
//! carrying it out on the assembled root before the guest starts. Files
//! are reached through the tree's /etc resolved inside the root, so a
//! tree's links never lead a write onto the host.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{Owner, Target};
use crate::guest::rootfs::resolve::{self, Create};
use crate::spec::network::{ResolvConf, ResolvSource, Timezone};

/// What to do with the guest's /etc/resolv.conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvAction {
    Off,
    Delete,
    /// Write into the file (an existing symlink stays as it is).
    Copy(ResolvSource),
    /// Replace whatever is there, symlinks included.
    Replace(ResolvSource),
    /// Bind the source read-only over it (a copy if that fails).
    Bind(ResolvSource),
}

/// What to do with the guest's /etc/localtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimezoneAction {
    Off,
    Delete,
    Copy,
    Bind,
    /// A relative link to the guest's own zone file of this name.
    Symlink,
}

/// `--resolv-conf=auto` and friends, as systemd-nspawn decides: nothing
/// for a private network; resolved's stub where it listens; the host's
/// file; else none. `etc_writable`: not `--read-only` (bind, not copy).
pub fn resolv_action(
    mode: ResolvConf,
    private_network: bool,
    etc_writable: bool,
    stub_listening: impl FnOnce() -> bool,
) -> ResolvAction {
    match mode {
        ResolvConf::Off => ResolvAction::Off,
        ResolvConf::Delete => ResolvAction::Delete,
        ResolvConf::Copy(s) => ResolvAction::Copy(s),
        ResolvConf::Replace(s) => ResolvAction::Replace(s),
        ResolvConf::Bind(s) => ResolvAction::Bind(s),
        ResolvConf::Auto => {
            let source = if private_network {
                return ResolvAction::Off;
            } else if Path::new(ResolvSource::Stub.path()).exists() && stub_listening() {
                ResolvSource::Stub
            } else if Path::new(ResolvSource::Host.path()).exists() {
                ResolvSource::Host
            } else if etc_writable {
                return ResolvAction::Delete;
            } else {
                return ResolvAction::Off;
            };
            if etc_writable {
                ResolvAction::Copy(source)
            } else {
                ResolvAction::Bind(source)
            }
        }
    }
}

/// `--timezone=auto` and friends, from the host's /etc/localtime.
pub fn timezone_action(mode: Timezone, etc_writable: bool) -> TimezoneAction {
    match mode {
        Timezone::Off => TimezoneAction::Off,
        Timezone::Delete => TimezoneAction::Delete,
        Timezone::Copy => TimezoneAction::Copy,
        Timezone::Bind => TimezoneAction::Bind,
        Timezone::Symlink => TimezoneAction::Symlink,
        Timezone::Auto => match std::fs::symlink_metadata("/etc/localtime") {
            Err(_) if etc_writable => TimezoneAction::Delete,
            Err(_) => TimezoneAction::Off,
            Ok(_) if !etc_writable => TimezoneAction::Bind,
            Ok(m) if m.file_type().is_symlink() => TimezoneAction::Symlink,
            Ok(_) => TimezoneAction::Copy,
        },
    }
}

/// Whether systemd-resolved's stub listener answers on this host (its
/// `DNSStubListener` is yes or udp), asked on the system bus.
pub fn resolved_stub_listening() -> bool {
    use dbus::arg::{RefArg, Variant};
    let Ok(bus) = crate::host::bus::Bus::system() else {
        return false;
    };
    let answer: std::result::Result<(Variant<Box<dyn RefArg>>,), _> = bus.call(
        "org.freedesktop.resolve1",
        "/org/freedesktop/resolve1",
        "org.freedesktop.DBus.Properties",
        "Get",
        ("org.freedesktop.resolve1.Manager", "DNSStubListener"),
    );
    matches!(answer, Ok((v,)) if matches!(v.0.as_str(), Some("yes" | "udp")))
}

/// The guest's /etc, resolved inside the root (None: the tree has none,
/// as an empty NixOS state directory before its activation).
fn guest_etc(root: &Path) -> Option<OwnedFd> {
    resolve::open_in(root, Path::new("/etc"), Create::Nothing).ok()
}

fn io(what: &'static str, path: &str, e: nix::errno::Errno) -> Error {
    Error::io(what, PathBuf::from(path), e.into())
}

/// Write `content` to `name` in `dir`: in place (O_TRUNC, never through a
/// symlink: Ok(false) then), or replacing whatever is there atomically.
fn write_file(dir: &OwnedFd, name: &str, content: &[u8], replace: bool) -> Result<bool> {
    use std::io::Write;
    let shown = format!("/etc/{name}");
    let target = if replace {
        format!(".#{name}.nixspawn")
    } else {
        name.to_owned()
    };
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    flags |= if replace {
        OFlag::O_EXCL
    } else {
        OFlag::O_TRUNC
    };
    if replace {
        let _ = nix::unistd::unlinkat(
            dir,
            target.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    let fd = match nix::fcntl::openat(dir, target.as_str(), flags, Mode::from_bits_truncate(0o644))
    {
        Ok(fd) => fd,
        // An existing symlink stays (as with nspawn's copy modes).
        Err(nix::errno::Errno::ELOOP) if !replace => return Ok(false),
        Err(e) => return Err(io("writing", &shown, e)),
    };
    let mut f = std::fs::File::from(fd);
    f.write_all(content)
        .map_err(|e| Error::io("writing", PathBuf::from(&shown), e))?;
    // The mode, whatever the umask.
    let _ = nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(0o644));
    drop(f);
    if replace {
        nix::fcntl::renameat(dir, target.as_str(), dir, name)
            .map_err(|e| io("replacing", &shown, e))?;
    }
    Ok(true)
}

fn chown(dir: &OwnedFd, name: &str, owner: Owner) {
    if let Some(id) = owner.0 {
        let _ = nix::unistd::fchownat(
            dir,
            name,
            Some(nix::unistd::Uid::from_raw(id)),
            Some(nix::unistd::Gid::from_raw(id)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
}

fn delete(dir: &OwnedFd, name: &str) -> Result<()> {
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("removing", &format!("/etc/{name}"), e)),
    }
}

/// Bind `source` (a host file) read-only, nosuid, nodev over the guest's
/// `guest_path` (its links followed inside the root; created if missing).
fn bind_file(root: &Path, guest_path: &str, source: &Path) -> Result<()> {
    let target = Target::resolve(root, Path::new(guest_path), Create::File(0o644))?;
    let clone = crate::guest::rootfs::mounts::clone_tree(source, false)?;
    crate::sys::mount_setattr(
        clone.as_fd(),
        false,
        crate::sys::MOUNT_ATTR_RDONLY
            | crate::sys::MOUNT_ATTR_NOSUID
            | crate::sys::MOUNT_ATTR_NODEV,
        0,
    )
    .map_err(|e| Error::Mount {
        what: format!("read-only bind of {}", source.display()),
        target: target.shown().to_path_buf(),
        source: e,
    })?;
    target.attach(clone).map(drop)
}

/// Whether `e` says the guest's /etc is read-only (`--read-only`,
/// `--volatile=state`).
fn is_read_only(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.raw_os_error() == Some(libc::EROFS))
        || e.to_string().contains("Read-only file system")
}

/// Carry out the resolv.conf action on the assembled root. Returns a
/// warning line where nspawn warns and goes on.
pub(crate) fn apply_resolv(
    root: &Path,
    action: ResolvAction,
    owner: Owner,
) -> Result<Option<String>> {
    let source = match action {
        ResolvAction::Off => return Ok(None),
        ResolvAction::Copy(s) | ResolvAction::Replace(s) | ResolvAction::Bind(s) => Some(s),
        ResolvAction::Delete => None,
    };
    let Some(etc) = guest_etc(root) else {
        return Ok(None);
    };
    let Some(source) = source else {
        return delete(&etc, "resolv.conf").map(|()| None);
    };
    if let ResolvAction::Bind(_) = action
        && bind_file(root, "/etc/resolv.conf", Path::new(source.path())).is_ok()
    {
        return Ok(None);
    }
    let content = match std::fs::read(source.path()) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Some(format!(
                "Failed to copy {} to the container's /etc/resolv.conf, ignoring: {e}",
                source.path()
            )));
        }
    };
    let replace = matches!(action, ResolvAction::Replace(_));
    // A read-only /etc without the file to bind over: nspawn warns.
    match write_file(&etc, "resolv.conf", &content, replace) {
        Ok(true) => chown(&etc, "resolv.conf", owner),
        Ok(false) => {}
        Err(e) if is_read_only(&e) => {
            return Ok(Some(format!(
                "Failed to set up /etc/resolv.conf in the container, ignoring: {e}"
            )));
        }
        Err(e) => return Err(e),
    }
    Ok(None)
}

/// The zone the host's /etc/localtime links to (`Europe/Berlin`).
fn host_zone() -> Option<String> {
    let target: PathBuf = std::fs::read_link("/etc/localtime").ok()?;
    let t = target.to_str()?;
    let (_, zone) = t.split_once("/zoneinfo/")?;
    (!zone.is_empty()).then(|| zone.to_owned())
}

/// Carry out the timezone action on the assembled root.
pub(crate) fn apply_timezone(
    root: &Path,
    action: &TimezoneAction,
    owner: Owner,
) -> Result<Option<String>> {
    if *action == TimezoneAction::Off {
        return Ok(None);
    }
    let Some(etc) = guest_etc(root) else {
        return Ok(None);
    };
    let mut action = action.clone();
    if action == TimezoneAction::Symlink {
        let Some(zone) = host_zone() else {
            return Ok(Some(
                "/etc/localtime does not point into /usr/share/zoneinfo/, not updating the container's timezone".into(),
            ));
        };
        let current: Option<OsString> = nix::fcntl::readlinkat(&etc, "localtime").ok();
        if current.as_ref().and_then(|c| c.to_str()).is_some_and(|c| {
            c.strip_suffix(zone.as_str())
                .is_some_and(|rest| rest.ends_with("zoneinfo/"))
        }) {
            return Ok(None);
        }
        if resolve::exists_in_root(root, &Path::new("/usr/share/zoneinfo").join(&zone)) {
            delete(&etc, "localtime")?;
            let link = format!("../usr/share/zoneinfo/{zone}");
            nix::unistd::symlinkat(link.as_str(), &etc, "localtime")
                .map_err(|e| io("linking", "/etc/localtime", e))?;
            chown(&etc, "localtime", owner);
            return Ok(None);
        }
        action = TimezoneAction::Bind;
    }
    match action {
        TimezoneAction::Delete => delete(&etc, "localtime").map(|()| None),
        TimezoneAction::Bind
            if bind_file(root, "/etc/localtime", Path::new("/etc/localtime")).is_ok() =>
        {
            Ok(None)
        }
        _ => {
            let content = match std::fs::read("/etc/localtime") {
                Ok(c) => c,
                Err(e) => {
                    return Ok(Some(format!(
                        "Failed to copy /etc/localtime to the container, ignoring: {e}"
                    )));
                }
            };
            match write_file(&etc, "localtime", &content, true) {
                Ok(_) => chown(&etc, "localtime", owner),
                Err(e) if is_read_only(&e) => {
                    return Ok(Some(format!(
                        "Failed to set up /etc/localtime in the container, ignoring: {e}"
                    )));
                }
                Err(e) => return Err(e),
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_nspawn() {
        assert_eq!(
            resolv_action(ResolvConf::Auto, true, true, || true),
            ResolvAction::Off,
            "a private network gets no DNS configuration"
        );
        let host = if Path::new("/etc/resolv.conf").exists() {
            ResolvAction::Copy(ResolvSource::Host)
        } else {
            ResolvAction::Delete
        };
        if !Path::new(ResolvSource::Stub.path()).exists() {
            assert_eq!(resolv_action(ResolvConf::Auto, false, true, || true), host);
        }
        assert_eq!(
            resolv_action(ResolvConf::Bind(ResolvSource::Uplink), true, true, || false),
            ResolvAction::Bind(ResolvSource::Uplink),
            "an explicit mode applies whatever the network"
        );
        assert_eq!(timezone_action(Timezone::Copy, true), TimezoneAction::Copy);
    }

    #[test]
    fn files_are_written_inside_the_root_only() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let etc_fd = guest_etc(root.path()).unwrap();
        // A link out of the tree stays a link and the host file untouched.
        let victim = host.path().join("victim");
        std::fs::write(&victim, "host").unwrap();
        std::os::unix::fs::symlink(&victim, etc.join("resolv.conf")).unwrap();
        assert!(!write_file(&etc_fd, "resolv.conf", b"guest", false).unwrap());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host");
        // Replacing takes the link away, again without writing through it.
        assert!(write_file(&etc_fd, "resolv.conf", b"guest", true).unwrap());
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "guest"
        );
        assert!(!etc.join("resolv.conf").is_symlink());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host");
        delete(&etc_fd, "resolv.conf").unwrap();
        delete(&etc_fd, "resolv.conf").unwrap();
        assert!(!etc.join("resolv.conf").exists());
    }
}
