//! A guest's users as `nixspawnctl shell USER@NAME` needs them: looked up
//! in the guest's own /etc/passwd and /etc/group, read through the leader's
//! root with every path resolved inside it (a guest's /etc/passwd that is a
//! symlink to a host file reads the guest's file of that name, never the
//! host's).

use std::path::Path;

use crate::ctl::enter::GuestUser;
use crate::error::{Error, Result};
use crate::state::State;

/// A passwd entry: the user plus its login shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub user: GuestUser,
    pub shell: String,
}

/// Largest passwd or group file we read.
const LIMIT: u64 = 4 << 20;

/// Look `name` up in the guest of `state`.
pub fn lookup(state: &State, name: &str) -> Result<Account> {
    let (passwd, group) = state.through_root(|root| {
        let read = |p: &str| {
            crate::guest::rootfs::resolve::read_in_root(root, Path::new(p), LIMIT)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        (read("/etc/passwd"), read("/etc/group").unwrap_or_default())
    })?;
    let passwd = passwd?;
    account(&passwd, &group, name).ok_or_else(|| Error::InvalidValue {
        what: "user",
        value: name.to_owned(),
        reason: format!("is not in {}'s /etc/passwd", state.name),
    })
}

/// The entry for `name` in passwd text, with its groups from group text.
pub fn account(passwd: &str, group: &str, name: &str) -> Option<Account> {
    let f: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == name)?;
    let uid = f[2].parse().ok()?;
    let gid: u32 = f[3].parse().ok()?;
    let mut groups = vec![gid];
    for g in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
        if g.len() >= 4
            && g[3].split(',').any(|m| m == name)
            && let Ok(id) = g[2].parse()
            && !groups.contains(&id)
        {
            groups.push(id);
        }
    }
    let home = if f[5].is_empty() { "/" } else { f[5] };
    let shell = if f[6].is_empty() { "/bin/sh" } else { f[6] };
    Some(Account {
        name: name.to_owned(),
        user: GuestUser {
            uid,
            gid,
            groups,
            home: home.to_owned(),
        },
        shell: shell.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_has_its_shell_home_and_groups() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:100::/home/alice:/run/current-system/sw/bin/zsh\nbob:x:1001:1001::::\n";
        let group = "users:x:100:\nwheel:x:1:alice,bob\naudio:x:17:bob,alice\n";
        let a = account(passwd, group, "alice").unwrap();
        assert_eq!(
            (a.user.uid, a.user.gid, a.user.groups.clone()),
            (1000, 100, vec![100, 1, 17])
        );
        assert_eq!(
            (a.user.home.as_str(), a.shell.as_str()),
            ("/home/alice", "/run/current-system/sw/bin/zsh")
        );
        let b = account(passwd, group, "bob").unwrap();
        assert_eq!((b.user.home.as_str(), b.shell.as_str()), ("/", "/bin/sh"));
        assert!(account(passwd, group, "carol").is_none());
        assert!(account(passwd, group, "ali").is_none());
    }
}
