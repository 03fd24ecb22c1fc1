//! `--system-call-filter=` and `SystemCallFilter=`: names and groups added
//! to or removed from systemd-nspawn's allow list. Names are checked
//! against the syscall and group tables (data in `security::seccomp`);
//! building and installing the filter is `security::seccomp`'s business.

use crate::error::{Error, Result};
use crate::spec::syscalls::is_known;

/// `--system-call-filter` additions and removals.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Adjustments {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Adjustments {
    /// One `--system-call-filter=` value: space-separated names, all added,
    /// or all removed with a leading `~`. Unknown names are refused.
    pub fn add_option(&mut self, value: &str) -> Result<()> {
        let (deny, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let names: Vec<&str> = list.split_whitespace().collect();
        if names.is_empty() {
            return Err(Error::InvalidValue {
                what: "--system-call-filter",
                value: value.to_owned(),
                reason: "no system call named".into(),
            });
        }
        for name in names {
            if !is_known(name) {
                return Err(Error::InvalidValue {
                    what: "--system-call-filter",
                    value: value.to_owned(),
                    reason: format!("unknown system call or group {name:?}"),
                });
            }
            if deny {
                &mut self.deny
            } else {
                &mut self.allow
            }
            .push(name.to_owned());
        }
        Ok(())
    }
}
