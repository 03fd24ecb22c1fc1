//! systemd credentials for the guest: `--set-credential=ID:VALUE` and
//! `--load-credential=ID:PATH`, read by the privileged launcher before the
//! container exists and delivered on a ramfs (never swapped, never on disk)
//! at /run/host/credentials, read-only, files 0400 owned by the guest's root.
//!
//! Values are secrets: they appear in no message, log, Debug output or
//! state file. Errors name the credential's id and the path, never the value.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// systemd's limits: one credential, and all of them together.
pub const MAX_SIZE: usize = 1024 * 1024;
pub const MAX_TOTAL_SIZE: usize = 1024 * 1024;

/// One credential. Its Debug form leaves the value out.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub(crate) value: Vec<u8>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credential {{ id: {:?}, value: <{} bytes, not shown> }}",
            self.id,
            self.value.len()
        )
    }
}

impl Credential {
    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

fn bad(id: &str, reason: impl Into<String>) -> Error {
    Error::Credential {
        id: id.to_owned(),
        reason: reason.into(),
    }
}

/// A credential id must be usable as a file name: 1-255 bytes, no '/',
/// not "." or "..", printable ASCII.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 255 {
        return Err(bad(id, "the id must be 1-255 characters"));
    }
    if id == "." || id == ".." || id.contains('/') {
        return Err(bad(
            id,
            "the id must be a plain file name (no '/', not '.' or '..')",
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(id, "the id must be printable ASCII without spaces"));
    }
    Ok(())
}

fn checked(id: &str, value: Vec<u8>) -> Result<Credential> {
    validate_id(id)?;
    if value.len() > MAX_SIZE {
        return Err(bad(
            id,
            format!(
                "the value is {} bytes, more than the limit of {MAX_SIZE}",
                value.len()
            ),
        ));
    }
    Ok(Credential {
        id: id.to_owned(),
        value,
    })
}

/// `ID:VALUE`, VALUE C-unescaped ("\n", "\x00", "\\", ...).
pub fn parse_set(arg: &str) -> Result<Credential> {
    let (id, value) = arg
        .split_once(':')
        .ok_or_else(|| bad(arg.split(':').next().unwrap_or(""), "expected ID:VALUE"))?;
    checked(id, unescape(value).map_err(|reason| bad(id, reason))?)
}

/// `ID:PATH` (or `ID`): a file, an AF_UNIX stream socket to read from, a
/// directory (each file in it becomes `ID_FILENAME`), or a bare name looked
/// up in our own `$CREDENTIALS_DIRECTORY` and then the credstores.
pub fn load(arg: &str) -> Result<Vec<Credential>> {
    let (id, path) = arg.split_once(':').unwrap_or((arg, ""));
    validate_id(id)?;
    // `ID` and `ID:` inherit the credential of the same name.
    let path = if path.is_empty() { id } else { path };
    let path = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        validate_id(path).map_err(|_| {
            bad(
                id,
                format!("{path:?} is neither an absolute path nor a credential name"),
            )
        })?;
        find_inherited(path).ok_or_else(|| {
            bad(id, format!("no credential {path:?} in $CREDENTIALS_DIRECTORY, /etc/credstore, /run/credstore or /usr/lib/credstore"))
        })?
    };
    let meta = std::fs::metadata(&path).map_err(|e| bad(id, format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .map_err(|e| bad(id, format!("{}: {e}", path.display())))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let sub = format!("{id}_{}", e.file_name().to_string_lossy());
            out.push(checked(&sub, read_file(&sub, &e.path())?)?);
        }
        return Ok(out);
    }
    let value = if meta.file_type().is_socket() {
        read_socket(id, &path)?
    } else {
        read_file(id, &path)?
    };
    Ok(vec![checked(id, value)?])
}

fn find_inherited(name: &str) -> Option<PathBuf> {
    let own = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    own.into_iter()
        .chain(["/etc/credstore", "/run/credstore", "/usr/lib/credstore"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

fn read_file(id: &str, path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| bad(id, format!("{}: {e}", path.display())))?;
    read_limited(id, path, f)
}

fn read_socket(id: &str, path: &Path) -> Result<Vec<u8>> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| bad(id, format!("{}: {e}", path.display())))?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    read_limited(id, path, s)
}

/// Read at most one byte over the limit, so an oversized source is refused
/// without being read whole.
fn read_limited(id: &str, path: &Path, r: impl Read) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    r.take(MAX_SIZE as u64 + 1)
        .read_to_end(&mut value)
        .map_err(|e| bad(id, format!("{}: {e}", path.display())))?;
    if value.len() > MAX_SIZE {
        return Err(bad(
            id,
            format!(
                "{} holds more than the limit of {MAX_SIZE} bytes",
                path.display()
            ),
        ));
    }
    Ok(value)
}

/// Refuse duplicate ids and a total over the limit.
pub fn check_all(creds: &[Credential]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for c in creds {
        if !seen.insert(&c.id) {
            return Err(bad(&c.id, "given more than once"));
        }
        total += c.value.len();
    }
    if total > MAX_TOTAL_SIZE {
        return Err(Error::Credential {
            id: "(all)".into(),
            reason: format!("{total} bytes in total, more than the limit of {MAX_TOTAL_SIZE}"),
        });
    }
    Ok(())
}

/// C-style unescaping as systemd's cunescape does for these values.
pub fn unescape(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&c) = b.get(i + 1) else {
            return Err("a trailing backslash".into());
        };
        i += 2;
        out.push(match c {
            b'a' => 7,
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            b's' => b' ',
            b'\\' | b'"' | b'\'' => c,
            b'x' => {
                let (Some(h), Some(l)) = (
                    b.get(i).copied().and_then(hex),
                    b.get(i + 1).copied().and_then(hex),
                ) else {
                    return Err("\\x needs two hex digits".into());
                };
                i += 2;
                h * 16 + l
            }
            b'0'..=b'7' => {
                let digits: Vec<u8> = b[i - 1..].iter().take(3).copied().collect();
                if digits.len() < 3 || !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    return Err("an octal escape needs three digits".into());
                }
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                i += 2;
                u8::try_from(v).map_err(|_| "an octal escape above \\377".to_string())?
            }
            other => return Err(format!("unknown escape \\{}", other as char)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_credentials_unescape() {
        let c = parse_set("token:a\\nb\\x00c\\\\\\101").unwrap();
        assert_eq!(c.id, "token");
        assert_eq!(c.value, b"a\nb\0c\\A");
        assert_eq!(parse_set("empty:").unwrap().value, b"");
        assert_eq!(parse_set("colon:a:b").unwrap().value, b"a:b");
        for bad in [
            "novalue", ":x", "a/b:x", "..:x", "x:\\q", "x:\\", "x:\\x4", "x:\\400", "sp ace:x",
        ] {
            assert!(parse_set(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_stay_out_of_debug_and_errors() {
        let c = parse_set("pw:hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let dup = check_all(&[c.clone(), c]).unwrap_err().to_string();
        assert!(dup.contains("pw") && !dup.contains("hunter2"), "{dup}");
    }

    #[test]
    fn sizes_and_sources() {
        let big = format!("big:{}", "x".repeat(MAX_SIZE + 1));
        assert!(parse_set(&big).unwrap_err().to_string().contains("limit"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "1").unwrap();
        std::fs::write(dir.path().join("b"), "2").unwrap();
        let loaded = load(&format!("set:{}", dir.path().display())).unwrap();
        assert_eq!(
            loaded.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["set_a", "set_b"]
        );
        let file = dir.path().join("a");
        assert_eq!(
            load(&format!("one:{}", file.display())).unwrap()[0].value,
            b"1"
        );
        assert!(
            load("x:/nonexistent/file")
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/file")
        );
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![0u8; MAX_SIZE + 10]).unwrap();
        assert!(load(&format!("h:{}", huge.display())).is_err());
        let many: Vec<Credential> = (0..2)
            .map(|i| checked(&format!("c{i}"), vec![0; MAX_SIZE]).unwrap())
            .collect();
        assert!(check_all(&many).is_err(), "total over the limit");
    }
}
