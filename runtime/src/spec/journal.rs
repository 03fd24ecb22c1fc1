//! `--link-journal=` as systemd-nspawn spells it. Linking the journal is
//! the guest setup's business (`guest::journal`).

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkJournal {
    No,
    #[default]
    Auto,
    Host,
    Guest,
    TryHost,
    TryGuest,
}

impl LinkJournal {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "no" => LinkJournal::No,
            "auto" => LinkJournal::Auto,
            "host" => LinkJournal::Host,
            "guest" => LinkJournal::Guest,
            "try-host" => LinkJournal::TryHost,
            "try-guest" => LinkJournal::TryGuest,
            _ => {
                return Err(Error::InvalidValue {
                    what: "--link-journal",
                    value: s.to_string(),
                    reason: "expected no, auto, host, guest, try-host or try-guest".into(),
                });
            }
        })
    }

    pub(crate) fn tolerant(self) -> bool {
        matches!(
            self,
            LinkJournal::Auto | LinkJournal::TryHost | LinkJournal::TryGuest
        )
    }

    /// The journal lives in the tree, the host links to it.
    pub(crate) fn in_guest(self) -> bool {
        matches!(self, LinkJournal::Guest | LinkJournal::TryGuest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(
            LinkJournal::parse("try-guest").unwrap(),
            LinkJournal::TryGuest
        );
        assert!(LinkJournal::parse("maybe").is_err());
    }
}
