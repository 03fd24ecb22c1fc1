//! `--private-users=` and `--private-users-ownership=` as systemd-nspawn
//! spells them, and the host UID/GID range a guest's user namespace maps.
//! Picking and locking a range is the launcher's (`crate::userns`).

use crate::error::{Error, Result};

/// A container's range when none is given, and the alignment of every range.
pub const RANGE: u32 = 0x0001_0000;

/// `--private-users=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    No,
    /// `identity`: 0 → 0 for 65536 ids.
    Identity,
    /// `yes`: the shift is the owner of the tree's root directory.
    FromTree,
    /// `pick`: a free range, chosen and locked here.
    Pick,
    /// `SHIFT[:RANGE]`.
    Fixed(UidRange),
}

/// Host ids [shift, shift+range) are the guest's [0, range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UidRange {
    pub shift: u32,
    pub range: u32,
}

impl UidRange {
    /// The line for /proc/PID/uid_map and gid_map.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.shift, self.range)
    }
}

/// `--private-users-ownership=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    Off,
    Chown,
    Map,
    Auto,
}

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        what,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

pub fn parse_mode(value: &str) -> Result<Mode> {
    Ok(match value {
        "no" | "false" | "0" | "off" => Mode::No,
        "yes" | "true" | "1" | "on" => Mode::FromTree,
        "pick" => Mode::Pick,
        "identity" => Mode::Identity,
        _ => {
            let (shift, range) = value.split_once(':').unwrap_or((value, ""));
            let num = |s: &str| {
                s.parse::<u32>().map_err(|_| {
                    invalid(
                        "--private-users",
                        value,
                        "expected no, yes, pick, identity or SHIFT[:RANGE]",
                    )
                })
            };
            let shift = num(shift)?;
            let range = if range.is_empty() { RANGE } else { num(range)? };
            fixed(value, shift, range)?
        }
    })
}

fn fixed(value: &str, shift: u32, range: u32) -> Result<Mode> {
    if !shift.is_multiple_of(RANGE) || !range.is_multiple_of(RANGE) || range == 0 {
        return Err(invalid(
            "--private-users",
            value,
            format!(
                "the shift and the range must be non-zero multiples of 65536 (0x10000); {shift:#x}:{range:#x} is not"
            ),
        ));
    }
    if u64::from(shift) + u64::from(range) > u64::from(u32::MAX) {
        return Err(invalid(
            "--private-users",
            value,
            "the range runs past the last id",
        ));
    }
    Ok(Mode::Fixed(UidRange { shift, range }))
}

pub fn parse_ownership(value: &str) -> Result<Ownership> {
    Ok(match value {
        "off" | "no" | "false" => Ownership::Off,
        "chown" => Ownership::Chown,
        "map" => Ownership::Map,
        "auto" => Ownership::Auto,
        _ => {
            return Err(invalid(
                "--private-users-ownership",
                value,
                "expected off, chown, map or auto",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("no").unwrap(), Mode::No);
        assert_eq!(parse_mode("pick").unwrap(), Mode::Pick);
        assert_eq!(parse_mode("yes").unwrap(), Mode::FromTree);
        assert_eq!(parse_mode("identity").unwrap(), Mode::Identity);
        assert_eq!(
            parse_mode("131072").unwrap(),
            Mode::Fixed(UidRange {
                shift: 131072,
                range: 65536
            })
        );
        assert_eq!(
            parse_mode("131072:131072").unwrap(),
            Mode::Fixed(UidRange {
                shift: 131072,
                range: 131072
            })
        );
        for bad in [
            "131073",
            "131072:100",
            "131072:0",
            "x",
            "-1",
            "4294901760:131072",
        ] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
        assert!(
            parse_mode("131073")
                .unwrap_err()
                .to_string()
                .contains("multiples of 65536")
        );
        assert_eq!(
            UidRange {
                shift: 524288,
                range: 65536
            }
            .map_line(),
            "0 524288 65536\n"
        );
    }
}
