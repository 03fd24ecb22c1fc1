//! The value syntax of environments: `-E NAME=VALUE` assignments and
//! os-release files. PID 1's environment is built in `guest::environment`.

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
