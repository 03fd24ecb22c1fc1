//! `--image=`: a disk image as the guest's root, and `--image-policy=`
//! (systemd.image-policy(7)'s syntax, as systemd 262 reads it): which
//! Discoverable Partitions may or must be there and be used.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The partition designators of the Discoverable Partitions Specification
/// that an image policy names (architecture-agnostic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Designator {
    Root,
    Usr,
    Home,
    Srv,
    Esp,
    Xbootldr,
    Swap,
    RootVerity,
    RootVeritySig,
    UsrVerity,
    UsrVeritySig,
    Tmp,
    Var,
}

impl Designator {
    pub const ALL: [Designator; 13] = [
        Designator::Root,
        Designator::Usr,
        Designator::Home,
        Designator::Srv,
        Designator::Esp,
        Designator::Xbootldr,
        Designator::Swap,
        Designator::RootVerity,
        Designator::RootVeritySig,
        Designator::UsrVerity,
        Designator::UsrVeritySig,
        Designator::Tmp,
        Designator::Var,
    ];

    /// The name in policy strings and messages.
    pub fn name(self) -> &'static str {
        match self {
            Designator::Root => "root",
            Designator::Usr => "usr",
            Designator::Home => "home",
            Designator::Srv => "srv",
            Designator::Esp => "esp",
            Designator::Xbootldr => "xbootldr",
            Designator::Swap => "swap",
            Designator::RootVerity => "root-verity",
            Designator::RootVeritySig => "root-verity-sig",
            Designator::UsrVerity => "usr-verity",
            Designator::UsrVeritySig => "usr-verity-sig",
            Designator::Tmp => "tmp",
            Designator::Var => "var",
        }
    }

    fn from_name(s: &str) -> Option<Designator> {
        Designator::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// What a policy allows for one partition (systemd.image-policy(7)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub unprotected: bool,
    pub verity: bool,
    pub signed: bool,
    pub encrypted: bool,
    pub unused: bool,
    pub absent: bool,
    /// `read-only-on`/`read-only-off`: None when neither or both are given
    /// (the GPT flag is not dictated).
    pub read_only: Option<bool>,
    /// `growfs-on`/`growfs-off`, likewise.
    pub growfs: Option<bool>,
}

impl Flags {
    /// `open`'s use flags, the read-only and growfs words kept.
    fn allow_every_use(&mut self) {
        *self = Flags {
            read_only: self.read_only,
            growfs: self.growfs,
            ..Flags::OPEN
        };
    }

    const OPEN: Flags = Flags {
        unprotected: true,
        verity: true,
        signed: true,
        encrypted: true,
        unused: true,
        absent: true,
        read_only: None,
        growfs: None,
    };
    const IGNORE: Flags = Flags {
        unprotected: false,
        verity: false,
        signed: false,
        encrypted: false,
        unused: true,
        absent: true,
        read_only: None,
        growfs: None,
    };

    fn parse(s: &str) -> Result<Flags, String> {
        let mut f = Flags::default();
        let (mut ro_on, mut ro_off, mut gf_on, mut gf_off) = (false, false, false, false);
        for word in s.split('+').filter(|w| !w.is_empty()) {
            match word {
                "unprotected" => f.unprotected = true,
                "verity" => f.verity = true,
                "signed" => f.signed = true,
                "encrypted" => f.encrypted = true,
                "unused" => f.unused = true,
                "absent" => f.absent = true,
                "open" => {
                    f.allow_every_use();
                }
                "ignore" => {
                    (f.unused, f.absent) = (true, true);
                }
                "read-only-on" => ro_on = true,
                "read-only-off" => ro_off = true,
                "growfs-on" => gf_on = true,
                "growfs-off" => gf_off = true,
                other => return Err(format!("unknown partition policy flag {other:?}")),
            }
        }
        // None of the use flags: the policy says nothing, which is `open`.
        if !(f.unprotected || f.verity || f.signed || f.encrypted || f.unused || f.absent) {
            f.allow_every_use();
        }
        f.read_only = (ro_on != ro_off).then_some(ro_on);
        f.growfs = (gf_on != gf_off).then_some(gf_on);
        Ok(f)
    }

    /// A partition found on the image and without Verity or LUKS (all this
    /// kernel can mount: it has no device-mapper) may be used.
    pub fn allows_unprotected_use(&self) -> bool {
        self.unprotected
    }
}

/// A parsed `--image-policy=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePolicy {
    listed: BTreeMap<Designator, Flags>,
    default: Flags,
    /// The string as given (for messages).
    text: String,
}

impl ImagePolicy {
    /// systemd-nspawn's own default (262's container policy): every data
    /// partition may be used or be absent; swap and the Verity partitions
    /// are ignored.
    pub fn container_default() -> ImagePolicy {
        let mut listed = BTreeMap::new();
        for d in [
            Designator::Root,
            Designator::Usr,
            Designator::Home,
            Designator::Srv,
            Designator::Esp,
            Designator::Xbootldr,
            Designator::Tmp,
            Designator::Var,
        ] {
            listed.insert(d, Flags::OPEN);
        }
        ImagePolicy {
            listed,
            default: Flags::IGNORE,
            text: "(nspawn's default)".into(),
        }
    }

    /// Parse systemd.image-policy(7)'s syntax: `*`, `-`, `~`, or
    /// `PART=FLAG+FLAG:PART=...:=DEFAULTFLAGS`.
    pub fn parse(s: &str) -> Result<ImagePolicy, String> {
        let text = s.to_owned();
        let s = match s {
            "*" => "=open",
            "-" => "=unused+absent",
            "~" => "=absent",
            other => other,
        };
        let mut listed = BTreeMap::new();
        let mut default = None;
        for rule in s.split(':').filter(|r| !r.is_empty()) {
            let (name, flags) = rule
                .split_once('=')
                .ok_or_else(|| format!("rule {rule:?} lacks '=' (PARTITION=FLAGS)"))?;
            let flags = Flags::parse(flags)?;
            if name.is_empty() {
                if default.replace(flags).is_some() {
                    return Err("the default (=FLAGS) is given twice".into());
                }
                continue;
            }
            let d =
                Designator::from_name(name).ok_or_else(|| format!("unknown partition {name:?}"))?;
            if listed.insert(d, flags).is_some() {
                return Err(format!("partition {name} is listed twice"));
            }
        }
        Ok(ImagePolicy {
            listed,
            default: default.unwrap_or(Flags::IGNORE),
            text,
        })
    }

    /// The flags for one partition.
    pub fn flags(&self, d: Designator) -> Flags {
        self.listed.get(&d).copied().unwrap_or(self.default)
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `--image=` and what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// A raw file or block device: one filesystem, or a GPT disk.
    pub path: PathBuf,
    /// Mount everything read-only (`--read-only`; squashfs and erofs are
    /// read-only anyway).
    pub read_only: bool,
    pub policy: ImagePolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_policies() {
        let all = ImagePolicy::parse("*").unwrap();
        assert!(all.flags(Designator::Swap).unprotected);
        let none = ImagePolicy::parse("-").unwrap();
        assert!(!none.flags(Designator::Root).unprotected);
        assert!(none.flags(Designator::Root).unused && none.flags(Designator::Root).absent);
        let deny = ImagePolicy::parse("~").unwrap();
        let f = deny.flags(Designator::Home);
        assert!(f.absent && !f.unused && !f.unprotected);
    }

    #[test]
    fn rules_defaults_and_read_only() {
        let p =
            ImagePolicy::parse("root=unprotected+read-only-on:home=absent:=unused+absent").unwrap();
        assert!(p.flags(Designator::Root).unprotected);
        assert_eq!(p.flags(Designator::Root).read_only, Some(true));
        assert!(!p.flags(Designator::Home).unprotected);
        assert!(p.flags(Designator::Srv).unused);
        // Neither use flag given: open. Both read-only flags: not dictated.
        let q = ImagePolicy::parse("usr=read-only-on+read-only-off").unwrap();
        assert!(q.flags(Designator::Usr).unprotected);
        assert_eq!(q.flags(Designator::Usr).read_only, None);
        // Unlisted without a default: unused+absent.
        assert!(!q.flags(Designator::Root).unprotected);
    }

    #[test]
    fn bad_policies() {
        for bad in [
            "root",
            "roots=open",
            "root=sometimes",
            "root=open:root=absent",
            "=a:=b",
        ] {
            assert!(ImagePolicy::parse(bad).is_err(), "{bad}");
        }
    }
}
