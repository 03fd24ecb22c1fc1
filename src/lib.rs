//! Command-line front ends shared by the `nixspawn` and `nixspawnctl`
//! binaries. For `nixspawn`, in the order argv flows through them:
//! `values` (nspawn's value syntax), `nspawn_settings` (`.nspawn` files as
//! typed settings), `launcher_args` (argv as typed options, settings merged
//! in) and `launcher_spec` (those into the runtime's `Spec`, the system
//! probed in a step of its own).

pub mod launcher_args;
pub mod launcher_spec;
pub mod nspawn_settings;
pub mod oci_bundle;
pub mod process_opts;
pub mod template;
pub mod terminal_colors;
pub mod test_runner;
pub mod values;

/// `text` with every control character (C0, DEL, C1) written as `\xNN`:
/// for what reaches the administrator's terminal from outside our control
/// (a guest's STATUS=, a path or value in an error), so it is one line and
/// cannot carry escape sequences (title changes, cursor moves, fake lines).
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// An error as the binaries print it: its whole chain on one line.
pub fn error_line(e: &anyhow::Error) -> String {
    // The runtime's errors already end in their source's text ("bind
    // source /x: No such file..."); anyhow's `{:#}` would say it twice.
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    terminal_safe(&line)
}

#[cfg(test)]
mod tests {
    use super::{error_line, terminal_safe};

    #[test]
    fn a_source_the_message_already_ends_in_is_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::from(nixspawn_runtime::Error::Io {
            what: "opening",
            path: "/x".into(),
            source: io,
        });
        assert_eq!(
            error_line(&e),
            "opening /x: No such file or directory (os error 2)"
        );
        let e = e.context("reading the tree");
        assert_eq!(
            error_line(&e),
            "reading the tree: opening /x: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(terminal_safe("plain text: ok"), "plain text: ok");
        assert_eq!(
            terminal_safe("\x1b[2J\u{9b}1m\x07\r\n\x7f"),
            r"\x1b[2J\x9b1m\x07\x0d\x0a\x7f"
        );
        assert_eq!(terminal_safe("Grüße"), "Grüße");
    }
}
