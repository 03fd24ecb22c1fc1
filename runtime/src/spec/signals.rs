//! Signal names as systemd spells them (SIGTERM, TERM, SIGRTMIN+3, 15).

use crate::error::{Error, Result};

const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

pub fn rtmin() -> i32 {
    libc::SIGRTMIN()
}

pub fn parse(s: &str) -> Result<i32> {
    let bad = |reason: &str| Error::InvalidValue {
        what: "signal",
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad("out of range"))
        };
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    if let Some((_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Ok(*n);
    }
    let rt = |base: i32, off: &str, sign: i32| -> Result<i32> {
        let off: i32 = if off.is_empty() {
            0
        } else {
            off.parse().map_err(|_| bad("bad real-time offset"))?
        };
        let n = base + sign * off;
        if (rtmin()..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad("real-time signal out of range"))
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(
            rtmin(),
            rest.strip_prefix('+')
                .unwrap_or(if rest.is_empty() { "" } else { "x" }),
            1,
        );
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(
            libc::SIGRTMAX(),
            rest.strip_prefix('-')
                .unwrap_or(if rest.is_empty() { "" } else { "x" }),
            1 - 2,
        );
    }
    Err(bad(
        "unknown signal name (try SIGTERM, SIGRTMIN+3 or a number)",
    ))
}

pub fn name(sig: i32) -> String {
    if let Some((n, _)) = NAMES.iter().find(|(_, v)| *v == sig) {
        return format!("SIG{n}");
    }
    if sig >= rtmin() && sig <= libc::SIGRTMAX() {
        return format!("SIGRTMIN+{}", sig - rtmin());
    }
    // Numbers glibc reserves below SIGRTMIN (32, 33): the number itself.
    sig.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse("9").unwrap(), 9);
        assert_eq!(parse("SIGRTMIN+3").unwrap(), rtmin() + 3);
        assert_eq!(parse("RTMIN").unwrap(), rtmin());
        assert_eq!(parse("SIGRTMAX-1").unwrap(), libc::SIGRTMAX() - 1);
        assert_eq!(name(rtmin() + 4), "SIGRTMIN+4");
        assert_eq!(name(libc::SIGINT), "SIGINT");
        // Every number parses and its name parses back to it (found by fuzzing for 11).
        for sig in 1..=libc::SIGRTMAX() {
            assert_eq!(parse(&name(sig)).unwrap(), sig, "{sig} -> {}", name(sig));
        }
        for bad in ["", "SIGFOO", "RTMIN+100", "0", "RTMINX", "-3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
