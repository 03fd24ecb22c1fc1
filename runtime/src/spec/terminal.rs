//! The caller's terminal while the guest's console is relayed to it:
//! `--background=COLOR` (systemd-nspawn 256 and later), the tint the relay
//! paints behind the guest's output until the console closes.

use std::fmt;

/// Longest color taken. Generous for `48;2;R;G;B` and `48:2::R:G:B`; the
/// bound keeps what we re-insert after every line and reset small.
const MAX_LEN: usize = 32;

/// An ANSI X3.64 SGR background color (`41`, `48;5;17`, `48;2;0;0;80`):
/// the parameters of `ESC [ ... m`. Only digits, `;` and `:` get in, so
/// whatever we write around the guest's output cannot be more than a
/// color change on the caller's terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Background(String);

impl Background {
    /// nspawn's value: empty turns the tint off (None).
    pub fn parse(text: &str) -> Result<Option<Background>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_LEN {
            return Err(format!(
                "an SGR background color is at most {MAX_LEN} characters"
            ));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b';' || b == b':')
        {
            return Err(
                "expected an ANSI SGR background color such as 44, 48;5;17 or 48;2;0;0;80 (empty: no tint)"
                    .to_owned(),
            );
        }
        if !text.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            return Err("an SGR color starts with a number, such as 44".to_owned());
        }
        Ok(Some(Background(text.to_owned())))
    }

    /// The SGR parameters, as given.
    pub fn sgr(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Background;

    #[test]
    fn colors_in_and_escapes_out() {
        for ok in ["41", "48;5;17", "48;2;0;0;80", "48:2::0:0:80", "100"] {
            assert_eq!(Background::parse(ok).unwrap().unwrap().sgr(), ok);
        }
        assert_eq!(Background::parse("").unwrap(), None);
        for bad in ["blue", "\x1b[41m", "41m", ";41", "4 1", &"4".repeat(33)] {
            assert!(Background::parse(bad).is_err(), "{bad:?}");
        }
    }
}
