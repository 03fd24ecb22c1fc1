//! `--bind-user=` and `--bind-user-shell=` as systemd-nspawn has them: a
//! host user (and its private group) resolved on the host, given an id in
//! the container from nspawn's 60514–60577 range, its home bound at
//! /run/host/home/NAME and JSON user and group records for the guest's
//! nss-systemd. Mapping the id and writing the records are the launcher's
//! (`crate::userns`, `crate::guest::bind_user`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The container ids nspawn hands bound users (its "container UID" range).
pub const MAP_UID_MIN: u32 = 60514;
pub const MAP_UID_MAX: u32 = 60577;

/// Where the records go in the guest (nss-systemd reads it).
pub const USERDB_DIR: &str = "/run/host/userdb";
/// Where the homes are bound in the guest.
pub const HOME_DIR: &str = "/run/host/home";

/// `--bind-user-shell=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Shell {
    /// `no` (the default): no shell in the record (the guest's default).
    #[default]
    Omit,
    /// `yes`: the host user's shell.
    Copy,
    /// An absolute path.
    Path(String),
}

pub fn parse_shell(value: &str) -> Result<Shell> {
    Ok(match value {
        "no" | "false" | "0" | "off" => Shell::Omit,
        "yes" | "true" | "1" | "on" => Shell::Copy,
        p if p.starts_with('/') => Shell::Path(p.to_owned()),
        _ => {
            return Err(Error::InvalidValue {
                what: "--bind-user-shell",
                value: value.to_owned(),
                reason: "expected yes, no or an absolute path".into(),
            });
        }
    })
}

/// A host user bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundUser {
    pub name: String,
    pub host_uid: u32,
    pub host_gid: u32,
    /// Its uid and gid in the container.
    pub id: u32,
    /// The home on the host.
    pub home: PathBuf,
    pub shell: Option<String>,
    /// The host's password hash (nspawn passes it on, privileged).
    pub hashed_password: Option<String>,
}

impl BoundUser {
    /// The home as the guest sees it.
    pub fn container_home(&self) -> PathBuf {
        Path::new(HOME_DIR).join(&self.name)
    }

    /// The public user record, one line.
    pub fn user_record(&self) -> String {
        let mut fields = vec![
            ("userName", self.name.as_str().into()),
            ("uid", self.id.into()),
            ("gid", self.id.into()),
            (
                "homeDirectory",
                self.container_home().to_string_lossy().into_owned().into(),
            ),
            ("service", "io.systemd.NSpawn".into()),
        ];
        if let Some(shell) = &self.shell {
            fields.push(("shell", shell.as_str().into()));
        }
        object(&fields)
    }

    /// The privileged part (the password hash), if there is one.
    pub fn privileged_record(&self) -> Option<String> {
        let hash = self.hashed_password.as_ref()?;
        let inner = serde_json::json!({ "hashedPassword": [hash] });
        Some(object(&[("privileged", inner)]))
    }

    /// The group record (the user's private group).
    pub fn group_record(&self) -> String {
        object(&[
            ("groupName", self.name.as_str().into()),
            ("gid", self.id.into()),
            ("service", "io.systemd.NSpawn".into()),
        ])
    }

    /// Refuse a user whose host ids fall inside the container's range:
    /// they would be mapped twice.
    pub fn check_range(&self, shift: u32, range: u32) -> Result<()> {
        let inside = |id: u32| id >= shift && u64::from(id) < u64::from(shift) + u64::from(range);
        if inside(self.host_uid) || inside(self.host_gid) {
            return Err(Error::InvalidValue {
                what: "--bind-user",
                value: self.name.clone(),
                reason: format!(
                    "its uid {} / gid {} is inside the container's range {shift}..{}; pick another range with --private-users=",
                    self.host_uid,
                    self.host_gid,
                    u64::from(shift) + u64::from(range) - 1
                ),
            });
        }
        Ok(())
    }
}

/// The id map lines for a user namespace mapping [0, range) onto `shift`,
/// with each bound user's container id split out onto its host id.
pub fn map_lines(shift: u32, range: u32, users: &[(u32, u32)]) -> String {
    let mut users = users.to_vec();
    users.sort_unstable();
    let mut out = String::new();
    let mut next = 0u32;
    for (inside, host) in users {
        if inside > next {
            out += &format!("{next} {} {}\n", shift + next, inside - next);
        }
        out += &format!("{inside} {host} 1\n");
        next = inside + 1;
    }
    if next < range {
        out += &format!("{next} {} {}\n", shift + next, range - next);
    }
    out
}

/// A one-line JSON object with its keys in the order given (nspawn's
/// order; serde_json's map would sort them), and a newline.
fn object(fields: &[(&str, serde_json::Value)]) -> String {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(*k)))
        .collect::<Vec<_>>()
        .join(",");
    format!("{{{body}}}\n")
}

fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        what: "--bind-user",
        value: name.to_owned(),
        reason: reason.into(),
    }
}

/// The entries of a colon-separated database file of the tree (passwd,
/// group), as (name, id). A missing file has none; a link is not followed
/// (the tree is the guest's).
fn tree_entries(tree: Option<&Path>, file: &str) -> Vec<(String, u32)> {
    let Some(tree) = tree else { return Vec::new() };
    let p = tree.join(file);
    if p.symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Vec::new();
    }
    std::fs::read_to_string(&p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?.to_owned();
            let id = f.nth(1)?.parse().ok()?;
            Some((name, id))
        })
        .collect()
}

/// The host's password hash for `name` from /etc/shadow, if it has one.
fn host_hash(name: &str) -> Option<String> {
    let shadow = std::fs::read_to_string("/etc/shadow").ok()?;
    shadow.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name)
            .then(|| f.next().map(str::to_owned))
            .flatten()
            .filter(|h| !h.is_empty())
    })
}

/// Resolve the `--bind-user=` names on the host and give each a container
/// id that the tree's /etc/passwd and /etc/group do not use, as nspawn does.
pub fn resolve(names: &[String], shell: &Shell, tree: Option<&Path>) -> Result<Vec<BoundUser>> {
    let passwd = tree_entries(tree, "etc/passwd");
    let group = tree_entries(tree, "etc/group");
    let mut next = MAP_UID_MIN;
    let mut out: Vec<BoundUser> = Vec::new();
    for name in names {
        if out.iter().any(|u| &u.name == name) {
            return Err(invalid(name, "given twice"));
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| invalid(name, format!("cannot look the user up: {e}")))?
            .ok_or_else(|| invalid(name, "no such user on the host"))?;
        let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
        if uid == 0 {
            return Err(invalid(name, "binding root is not supported"));
        }
        if uid == 65534 {
            return Err(invalid(name, "binding nobody is not supported"));
        }
        let grp = nix::unistd::Group::from_gid(user.gid)
            .map_err(|e| invalid(name, format!("cannot look its group up: {e}")))?
            .ok_or_else(|| invalid(name, format!("its group {gid} does not exist on the host")))?;
        if grp.name != *name {
            return Err(invalid(
                name,
                format!(
                    "its primary group is {:?}; only users with a private group of the same name can be bound",
                    grp.name
                ),
            ));
        }
        if passwd.iter().any(|(n, _)| n == name) {
            return Err(invalid(name, "the user already exists in the container"));
        }
        if group.iter().any(|(n, _)| n == name) {
            return Err(invalid(name, "the group already exists in the container"));
        }
        while passwd.iter().any(|(_, id)| *id == next) || group.iter().any(|(_, id)| *id == next) {
            next += 1;
        }
        if next > MAP_UID_MAX {
            return Err(invalid(
                name,
                format!("no free container id in {MAP_UID_MIN}..{MAP_UID_MAX}"),
            ));
        }
        let shell = match shell {
            Shell::Omit => None,
            Shell::Copy => Some(user.shell.to_string_lossy().into_owned()),
            Shell::Path(p) => Some(p.clone()),
        }
        .filter(|s| !s.is_empty());
        out.push(BoundUser {
            name: name.clone(),
            host_uid: uid,
            host_gid: gid,
            id: next,
            home: user.dir,
            shell,
            hashed_password: host_hash(name),
        });
        next += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_split_the_range() {
        assert_eq!(map_lines(524288, 65536, &[]), "0 524288 65536\n");
        assert_eq!(
            map_lines(524288, 65536, &[(60515, 1001), (60514, 1000)]),
            "0 524288 60514\n60514 1000 1\n60515 1001 1\n60516 584804 5020\n"
        );
    }

    #[test]
    fn shells() {
        assert_eq!(parse_shell("no").unwrap(), Shell::Omit);
        assert_eq!(parse_shell("yes").unwrap(), Shell::Copy);
        assert_eq!(
            parse_shell("/bin/zsh").unwrap(),
            Shell::Path("/bin/zsh".into())
        );
        assert!(parse_shell("zsh").is_err());
    }
}
