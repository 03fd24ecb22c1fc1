//! nspawn's value syntax for the launcher's typed options, shared by the
//! command line and `.nspawn` files so that both read a value the same way
//! and refuse it in the same words: systemd's booleans, the fixed choices
//! (`--console`, `--register`, `--link-journal`, ...) as tables that clap
//! also lists for `--help` and shell completion, and value parsers that
//! return the runtime spec's own types.

use std::ffi::OsStr;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use nixspawn_runtime::Uuid;
use nixspawn_runtime::spec::journal::LinkJournal;
use nixspawn_runtime::spec::{signals, userns};

/// Why a value was refused: the reason alone ("expected yes or no"); the
/// caller names the option or setting and the value around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

impl From<nixspawn_runtime::Error> for Invalid {
    /// The runtime's value errors name their option themselves
    /// ("invalid --private-users ..."); only the reason is kept, so that a
    /// settings file's key can stand where the option would.
    fn from(e: nixspawn_runtime::Error) -> Invalid {
        match e {
            nixspawn_runtime::Error::InvalidValue { reason, .. } => Invalid(reason),
            other => Invalid(other.to_string()),
        }
    }
}

/// One value of a fixed choice: its name (what `--help` lists and the
/// canonical argv writes), the other spellings nspawn takes for it, hidden.
pub struct Spelling<T: 'static> {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub value: T,
}

/// A fixed set of spellings: parses with clap (possible values and all,
/// for `--help` and completions) and from settings files alike.
#[derive(Clone, Copy)]
pub struct Choice<T: 'static>(pub &'static [Spelling<T>]);

impl<T: Copy + PartialEq> Choice<T> {
    pub fn parse(&self, text: &str) -> Option<T> {
        self.0
            .iter()
            .find(|s| s.name == text || s.aliases.contains(&text))
            .map(|s| s.value)
    }

    pub fn parse_or_explain(&self, text: &str) -> Result<T, Invalid> {
        self.parse(text)
            .ok_or_else(|| Invalid(format!("expected {}", self.expected())))
    }

    /// The canonical spelling of `value`.
    pub fn name(&self, value: T) -> &'static str {
        self.0
            .iter()
            .find(|s| s.value == value)
            .map_or("", |s| s.name)
    }

    /// "a, b or c": the names, as a refusal lists them.
    pub fn expected(&self) -> String {
        one_of(self.0.iter().map(|s| s.name))
    }

    fn possible_values(&self) -> impl Iterator<Item = PossibleValue> + '_ {
        self.0
            .iter()
            .map(|s| PossibleValue::new(s.name).aliases(s.aliases.iter().copied()))
    }
}

impl<T: Copy + PartialEq + Send + Sync + 'static> TypedValueParser for Choice<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        // clap's own refusal for a value outside the set, which carries the
        // valid names for our one-line message.
        let text = PossibleValuesParser::new(self.possible_values()).parse_ref(cmd, arg, value)?;
        self.parse(&text)
            .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(Choice::possible_values(self)))
    }
}

/// "a", "a or b", "a, b or c".
pub fn one_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// systemd's booleans (parse_boolean), case as given.
pub const YES_NO: Choice<bool> = Choice(&[
    Spelling {
        name: "yes",
        aliases: &["1", "y", "true", "t", "on"],
        value: true,
    },
    Spelling {
        name: "no",
        aliases: &["0", "n", "false", "f", "off"],
        value: false,
    },
]);

pub fn parse_bool(text: &str) -> Option<bool> {
    YES_NO.parse(text)
}

/// `--console=`: the runtime's modes, plus `autopipe`, which becomes one
/// of them once it is known whether stdin and stdout are terminals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    Interactive,
    ReadOnly,
    Passive,
    Pipe,
    Autopipe,
}

pub const CONSOLE: Choice<Console> = Choice(&[
    Spelling {
        name: "interactive",
        aliases: &[],
        value: Console::Interactive,
    },
    Spelling {
        name: "read-only",
        aliases: &[],
        value: Console::ReadOnly,
    },
    Spelling {
        name: "passive",
        aliases: &[],
        value: Console::Passive,
    },
    Spelling {
        name: "pipe",
        aliases: &[],
        value: Console::Pipe,
    },
    Spelling {
        name: "autopipe",
        aliases: &[],
        value: Console::Autopipe,
    },
]);

/// `--register=`: a boolean or `auto`.
pub const REGISTER: Choice<nixspawn_runtime::Register> = {
    use nixspawn_runtime::Register;
    Choice(&[
        Spelling {
            name: "yes",
            aliases: YES_NO.0[0].aliases,
            value: Register::Yes,
        },
        Spelling {
            name: "no",
            aliases: YES_NO.0[1].aliases,
            value: Register::No,
        },
        Spelling {
            name: "auto",
            aliases: &[],
            value: Register::Auto,
        },
    ])
};

/// `--link-journal=` and `LinkJournal=`.
pub const LINK_JOURNAL: Choice<LinkJournal> = Choice(&[
    Spelling {
        name: "no",
        aliases: &[],
        value: LinkJournal::No,
    },
    Spelling {
        name: "auto",
        aliases: &[],
        value: LinkJournal::Auto,
    },
    Spelling {
        name: "host",
        aliases: &[],
        value: LinkJournal::Host,
    },
    Spelling {
        name: "guest",
        aliases: &[],
        value: LinkJournal::Guest,
    },
    Spelling {
        name: "try-host",
        aliases: &[],
        value: LinkJournal::TryHost,
    },
    Spelling {
        name: "try-guest",
        aliases: &[],
        value: LinkJournal::TryGuest,
    },
]);

/// `--private-users-ownership=` and `PrivateUsersOwnership=`.
pub const OWNERSHIP: Choice<userns::Ownership> = Choice(&[
    Spelling {
        name: "off",
        aliases: &["no", "false"],
        value: userns::Ownership::Off,
    },
    Spelling {
        name: "chown",
        aliases: &[],
        value: userns::Ownership::Chown,
    },
    Spelling {
        name: "map",
        aliases: &[],
        value: userns::Ownership::Map,
    },
    Spelling {
        name: "auto",
        aliases: &[],
        value: userns::Ownership::Auto,
    },
]);

/// `--private-users=`: no, yes, pick, identity or SHIFT[:RANGE].
pub fn private_users(text: &str) -> Result<userns::Mode, Invalid> {
    Ok(userns::parse_mode(text)?)
}

/// `--bind-user-shell=`: yes, no or an absolute path.
pub fn bind_user_shell(text: &str) -> Result<nixspawn_runtime::spec::bind_user::Shell, Invalid> {
    Ok(nixspawn_runtime::spec::bind_user::parse_shell(text)?)
}

/// The spelling of a `--bind-user-shell=` value that parses back to it.
pub fn bind_user_shell_name(shell: &nixspawn_runtime::spec::bind_user::Shell) -> String {
    use nixspawn_runtime::spec::bind_user::Shell;
    match shell {
        Shell::Omit => "no".into(),
        Shell::Copy => "yes".into(),
        Shell::Path(p) => p.clone(),
    }
}

/// The spelling of a `--private-users=` value that parses back to it.
pub fn private_users_name(mode: userns::Mode) -> String {
    match mode {
        userns::Mode::No => "no".into(),
        userns::Mode::FromTree => "yes".into(),
        userns::Mode::Pick => "pick".into(),
        userns::Mode::Identity => "identity".into(),
        userns::Mode::Fixed(r) => format!("{}:{}", r.shift, r.range),
    }
}

/// `-E NAME=VALUE` as given; `-E NAME` takes NAME's value from our own
/// environment (empty if unset), as systemd-nspawn does.
pub fn setenv(text: &str) -> Result<String, Invalid> {
    Ok(setenv_from(text, |k| std::env::var(k).ok()))
}

fn setenv_from(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    if text.contains('=') {
        text.to_owned()
    } else {
        format!("{text}={}", lookup(text).unwrap_or_default())
    }
}

/// A signal as systemd spells it: SIGTERM, TERM, SIGRTMIN+3 or a number.
pub fn signal(text: &str) -> Result<i32, Invalid> {
    Ok(signals::parse(text)?)
}

/// `--background=`: an SGR background color, or empty for none (kept as
/// given; the spec holds the checked value).
pub fn background(text: &str) -> Result<String, Invalid> {
    nixspawn_runtime::spec::terminal::Background::parse(text).map_err(Invalid)?;
    Ok(text.to_owned())
}

/// `--volatile=`: a boolean, `state` or `overlay`.
pub fn volatile(text: &str) -> Result<nixspawn_runtime::spec::filesystem::Volatile, Invalid> {
    Ok(nixspawn_runtime::spec::filesystem::Volatile::parse(text)?)
}

/// 32 hex digits, with or without dashes, not all zeros.
pub fn uuid(text: &str) -> Result<Uuid, Invalid> {
    Ok(Uuid::parse(text)?)
}

/// `--image-policy=`: systemd.image-policy(7)'s syntax.
pub fn image_policy(text: &str) -> Result<nixspawn_runtime::spec::image::ImagePolicy, Invalid> {
    nixspawn_runtime::spec::image::ImagePolicy::parse(text).map_err(Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_setenv_name_takes_the_launchers_value() {
        let env = |k: &str| (k == "SET").then(|| "v=1".to_owned());
        assert_eq!(setenv_from("A=b", env), "A=b");
        assert_eq!(setenv_from("SET", env), "SET=v=1");
        assert_eq!(setenv_from("UNSET", env), "UNSET=");
    }

    #[test]
    fn booleans_take_systemds_spellings_and_nothing_else() {
        for yes in ["1", "yes", "y", "true", "t", "on"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "no", "n", "false", "f", "off"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for neither in ["", "maybe", "2", " yes", "YES!"] {
            assert_eq!(parse_bool(neither), None, "{neither:?}");
        }
        assert_eq!(
            YES_NO.parse_or_explain("maybe").unwrap_err().0,
            "expected yes or no"
        );
    }

    #[test]
    fn every_spelling_parses_back_from_its_canonical_name() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(choice: Choice<T>) {
            for s in choice.0 {
                assert_eq!(choice.parse(s.name), Some(s.value), "{}", s.name);
                for alias in s.aliases {
                    assert_eq!(choice.parse(alias), Some(s.value), "{alias}");
                }
                assert_eq!(choice.parse(choice.name(s.value)), Some(s.value));
            }
        }
        check(YES_NO);
        check(CONSOLE);
        check(REGISTER);
        check(LINK_JOURNAL);
        check(OWNERSHIP);
    }

    #[test]
    fn the_tables_agree_with_the_runtimes_own_parsers() {
        for s in LINK_JOURNAL.0 {
            assert_eq!(LinkJournal::parse(s.name).unwrap(), s.value);
        }
        for s in OWNERSHIP.0 {
            for text in std::iter::once(&s.name).chain(s.aliases) {
                assert_eq!(userns::parse_ownership(text).unwrap(), s.value);
            }
        }
    }

    #[test]
    fn refusals_list_the_choices_as_a_sentence() {
        assert_eq!(one_of([]), "");
        assert_eq!(one_of(["a"]), "a");
        assert_eq!(one_of(["a", "b"]), "a or b");
        assert_eq!(one_of(["a", "b", "c"]), "a, b or c");
        assert_eq!(
            OWNERSHIP.parse_or_explain("sideways").unwrap_err().0,
            "expected off, chown, map or auto"
        );
        assert_eq!(
            LINK_JOURNAL.expected(),
            "no, auto, host, guest, try-host or try-guest"
        );
    }

    #[test]
    fn private_users_values_round_trip_and_keep_the_runtimes_reason() {
        for text in ["no", "yes", "pick", "identity", "131072", "131072:131072"] {
            let mode = private_users(text).unwrap();
            assert_eq!(private_users(&private_users_name(mode)).unwrap(), mode);
        }
        let err = private_users("131073").unwrap_err().0;
        assert!(err.contains("multiples of 65536"), "{err}");
        assert!(!err.contains("--private-users"), "the reason alone: {err}");
    }

    #[test]
    fn signals_and_uuids_give_the_reason_alone() {
        assert_eq!(signal("SIGRTMIN+3").unwrap(), signals::rtmin() + 3);
        assert!(
            signal("SIGFOO")
                .unwrap_err()
                .0
                .contains("unknown signal name")
        );
        assert!(uuid("0").unwrap_err().0.contains("32 hexadecimal digits"));
        assert!(uuid(&"0".repeat(32)).unwrap_err().0.contains("all zeros"));
    }
}
