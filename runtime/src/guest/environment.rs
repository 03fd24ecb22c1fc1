//! PID 1's environment, built as systemd-nspawn builds it: built-ins, then
//! the host's os-release identity, then the user's `-E` values (later wins).

use std::path::Path;

use crate::guest::apifs::runhost::CONTAINER_MANAGER;
use crate::spec::Spec;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Parse os-release text into (KEY, value) pairs, unquoting values.
pub fn parse_os_release(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return None;
            }
            Some((k.to_owned(), unquote(v)))
        })
        .collect()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let inner = if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        &v[1..v.len() - 1]
    } else {
        v
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn host_os_release() -> Vec<(String, String)> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| parse_os_release(&t))
        .unwrap_or_default()
}

/// The environment PID 1 starts with.
pub fn for_pid1(spec: &Spec, term: Option<&str>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    set("PATH", DEFAULT_PATH.to_owned());
    set("container", CONTAINER_MANAGER.to_owned());
    set("container_uuid", spec.uuid.to_string());
    set("NOTIFY_SOCKET", "/run/host/notify".to_owned());
    set("HOME", "/root".to_owned());
    set("USER", "root".to_owned());
    set("LOGNAME", "root".to_owned());
    // As nspawn: the caller's $TERM in every console mode, none without one.
    if let Some(term) = term {
        set("TERM", term.to_owned());
    }
    if !spec.is_boot() {
        set("LANG", "C.UTF-8".to_owned());
    }
    let host = host_os_release();
    for (key, var) in [
        ("ID", "id"),
        ("VERSION_ID", "version_id"),
        ("BUILD_ID", "build_id"),
        ("VARIANT_ID", "variant_id"),
    ] {
        if let Some((_, v)) = host.iter().find(|(k, _)| k == key) {
            set(&format!("container_host_{var}"), v.clone());
        }
    }
    if !spec.credentials.is_empty() {
        set(
            "CREDENTIALS_DIRECTORY",
            crate::guest::credentials::GUEST_DIR.to_owned(),
        );
    }
    if spec.store.as_ref().is_some_and(|s| s.nix_daemon) {
        set("NIX_REMOTE", "daemon".to_owned());
    }
    for (k, v) in &spec.environment {
        set(k, v.clone());
    }
    env
}

/// Validate a `-E NAME=VALUE` assignment.
pub fn parse_assignment(s: &str) -> crate::Result<(String, String)> {
    let bad = |reason: &str| crate::Error::InvalidValue {
        what: "--setenv",
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=VALUE"))?;
    if k.is_empty()
        || k.as_bytes()[0].is_ascii_digit()
        || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(bad(
            "the name must be letters, digits and '_', not starting with a digit",
        ));
    }
    if v.contains('\0') {
        return Err(bad("the value contains a NUL byte"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Does the tree look like an OS (systemd's os-release test)?
pub fn tree_os_release(root: &Path) -> Option<std::path::PathBuf> {
    ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .map(Path::new)
        .find(|p| crate::guest::rootfs::resolve::exists_in_root(root, p))
        .map(|p| root.join(p.strip_prefix("/").unwrap_or(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release() {
        let parsed = parse_os_release(
            "# c\nID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME='Debian \\\"x\\\"'\nbad line\n",
        );
        assert_eq!(parsed[0], ("ID".into(), "debian".into()));
        assert_eq!(parsed[1], ("VERSION_ID".into(), "12".into()));
        assert_eq!(parsed[2], ("PRETTY_NAME".into(), "Debian \"x\"".into()));
        assert_eq!(parsed.len(), 3);
    }

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignment("A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert!(parse_assignment("=x").is_err());
        assert!(parse_assignment("1A=x").is_err());
        assert!(parse_assignment("A-B=x").is_err());
        assert!(parse_assignment("noequals").is_err());
    }
}
