//! Machine names and UUIDs: validated once, then trusted everywhere.

use std::fmt;
use std::io::Read;

use crate::error::{Error, Result};

/// A machine name as systemd accepts one: a valid host name of at most 64
/// characters (letters, digits, '-', '_', '.'), usable as a path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineName(String);

impl MachineName {
    pub fn new(name: &str) -> Result<Self> {
        let bad = |reason| {
            Err(Error::InvalidName {
                name: name.to_owned(),
                reason,
            })
        };
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.len() > 64 {
            return bad("it is longer than 64 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad("only letters, digits, '-', '_' and '.' are allowed");
        }
        if name.starts_with(['.', '-']) || name.ends_with(['.', '-']) || name.contains("..") {
            return bad("it must not start or end with '.' or '-', nor contain '..'");
        }
        Ok(MachineName(name.to_owned()))
    }

    /// Derive a name from a directory's last component, dropping what a
    /// name may not hold (as systemd-nspawn does for `-D` without `-M`).
    pub fn from_directory_name(component: &str) -> Result<Self> {
        let cleaned: String = component
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(64)
            .collect();
        let trimmed = cleaned.trim_matches(['.', '-']);
        MachineName::new(if trimmed.is_empty() {
            "container"
        } else {
            trimmed
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MachineName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        MachineName::new(&s)
    }
}

impl From<MachineName> for String {
    fn from(n: MachineName) -> String {
        n.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 128-bit id, printed as systemd prints machine ids (32 hex digits) or
/// as a dashed UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// A random version-4 UUID.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| Error::io("reading", "/dev/urandom", e))?;
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Ok(Uuid(b))
    }

    /// Parse 32 hex digits, with or without the four dashes.
    pub fn parse(s: &str) -> Result<Self> {
        let hex: String = s.trim().chars().filter(|&c| c != '-').collect();
        let bad = || Error::InvalidValue {
            what: "UUID",
            value: s.to_owned(),
            reason: "expected 32 hexadecimal digits, optionally as 8-4-4-4-12".into(),
        };
        let dashed_ok = s.trim().len() == 32 || s.trim().len() == 36;
        // All ASCII hex digits before any slicing: lengths are in bytes.
        if hex.len() != 32 || !dashed_ok || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        if b == [0; 16] {
            return Err(Error::InvalidValue {
                what: "UUID",
                value: s.to_owned(),
                reason: "it is all zeros".into(),
            });
        }
        Ok(Uuid(b))
    }

    /// 32 lower-case hex digits, the form of /etc/machine-id.
    pub fn simple(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.simple();
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &s[..8],
            &s[8..12],
            &s[12..16],
            &s[16..20],
            &s[20..]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(MachineName::new("debian-bookworm").is_ok());
        assert!(MachineName::new("a.b_c").is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            "-x",
            "x.",
            "a..b",
            "with space",
            &"x".repeat(65),
        ] {
            assert!(MachineName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            MachineName::from_directory_name("debian sid!")
                .unwrap()
                .as_str(),
            "debiansid"
        );
        assert_eq!(
            MachineName::from_directory_name("...").unwrap().as_str(),
            "container"
        );
    }

    #[test]
    fn uuids() {
        let u = Uuid::parse("0123456789abcdef0123456789ABCDEF").unwrap();
        assert_eq!(u.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(Uuid::parse(&u.to_string()).unwrap(), u);
        assert!(Uuid::parse("xyz").is_err());
        assert!(Uuid::parse("00000000000000000000000000000000").is_err());
        assert!(Uuid::parse("0123456789abcdef0123456789abcdef0").is_err());
        // Found by fuzzing: 32 bytes, but not 32 characters.
        assert!(Uuid::parse("~\u{544}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}\u{2}~~z..").is_err());
        assert!(Uuid::parse("0123456789abcdef0123456789abcdeé").is_err());
        let r = Uuid::random().unwrap();
        assert_eq!(r.0[6] >> 4, 4);
    }
}
