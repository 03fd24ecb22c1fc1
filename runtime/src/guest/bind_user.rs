//! `--bind-user`: in the container process, the records nss-systemd reads
//! from /run/host/userdb and the mount points for the homes in
//! /run/host/home (the homes themselves are custom binds, mounted later).

use std::path::Path;

use crate::error::{Error, Result};
use crate::guest::rootfs::mounts::{Owner, ensure_dir, write_file};
use crate::spec::bind_user::BoundUser;

/// Fill /run/host/home and /run/host/userdb (`host` is /run/host), all
/// owned by the guest's root as nspawn makes them: NAME.user,
/// NAME.user-privileged (0600), NAME.group and links by id to each.
pub(crate) fn install(host: &Path, users: &[BoundUser], owner: Owner) -> Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let home = host.join("home");
    let userdb = host.join("userdb");
    for dir in [&home, &userdb] {
        ensure_dir(dir, 0o755)?;
        owner.chown(dir)?;
    }
    for user in users {
        let mount_point = home.join(&user.name);
        ensure_dir(&mount_point, 0o755)?;
        owner.chown(&mount_point)?;
        let mut records = vec![
            (".group", user.id, user.group_record(), 0o644),
            (".user", user.id, user.user_record(), 0o644),
        ];
        if let Some(p) = user.privileged_record() {
            records.push((".user-privileged", user.id, p, 0o600));
        }
        for (suffix, id, text, mode) in records {
            let file = format!("{}{suffix}", user.name);
            let path = userdb.join(&file);
            write_file(&path, text.as_bytes(), mode)?;
            owner.chown(&path)?;
            let link = userdb.join(format!("{id}{suffix}"));
            std::os::unix::fs::symlink(&file, &link)
                .map_err(|e| Error::io("creating link", &link, e))?;
            owner.chown(&link)?;
        }
    }
    Ok(())
}
