//! Whether our stdout takes colors, decided as systemd's tools decide it
//! (`SYSTEMD_COLORS`, `NO_COLOR`, `TERM=dumb`, a terminal on stdout): the
//! `--background=` tint is written only where this says yes.

/// systemd's order: `SYSTEMD_COLORS` (a boolean, or a color depth) first,
/// then `NO_COLOR`, then a dumb or missing terminal. The relay writes to
/// stdout, so that must be a terminal whatever the variables say.
pub fn stdout_takes_colors() -> bool {
    use std::io::IsTerminal;
    decide(
        std::io::stdout().is_terminal(),
        std::io::stderr().is_terminal(),
        |k| std::env::var(k).ok(),
    )
}

fn decide(stdout_tty: bool, stderr_tty: bool, env: impl Fn(&str) -> Option<String>) -> bool {
    if !stdout_tty {
        return false;
    }
    if let Some(v) = env("SYSTEMD_COLORS") {
        match v.as_str() {
            "16" | "256" | "24bit" => return true,
            _ => {
                if let Some(b) = crate::values::parse_bool(&v) {
                    return b;
                }
            }
        }
    }
    if env("NO_COLOR").is_some() {
        return false;
    }
    let dumb = env("TERM").is_none_or(|t| t == "dumb");
    !dumb && stderr_tty
}

#[cfg(test)]
mod tests {
    use super::decide;

    fn with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn as_systemd_decides() {
        let xterm = [("TERM", "xterm")];
        assert!(decide(true, true, with(&xterm)));
        assert!(!decide(false, true, with(&xterm)), "stdout is no terminal");
        assert!(!decide(true, true, with(&[("TERM", "dumb")])));
        assert!(!decide(true, true, with(&[])), "no TERM");
        assert!(!decide(
            true,
            true,
            with(&[("TERM", "xterm"), ("NO_COLOR", "")])
        ));
        assert!(!decide(
            true,
            true,
            with(&[("TERM", "xterm"), ("SYSTEMD_COLORS", "0")])
        ));
        assert!(decide(
            true,
            true,
            with(&[("TERM", "dumb"), ("SYSTEMD_COLORS", "256")])
        ));
        assert!(decide(
            true,
            false,
            with(&[("NO_COLOR", "1"), ("SYSTEMD_COLORS", "yes")])
        ));
        assert!(!decide(true, false, with(&xterm)), "stderr is no terminal");
    }
}
