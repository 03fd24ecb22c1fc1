//! Privileged: .nspawn settings files reach the guest, trusted and
//! untrusted, with the command line's precedence and --settings modes.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A settings file that is removed (with the directory, if we made it)
/// even when the test fails.
struct SettingsFile {
    path: PathBuf,
    made_dir: Option<PathBuf>,
}

impl SettingsFile {
    fn write(dir: &Path, machine: &str, text: &str) -> SettingsFile {
        let made_dir = (!dir.exists()).then(|| dir.to_path_buf());
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{machine}.nspawn"));
        std::fs::write(&path, text).unwrap();
        SettingsFile { path, made_dir }
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(d) = &self.made_dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn settings_text(bind_src: &Path) -> String {
    format!(
        "[Exec]\nParameters=/bin/sh -c \"echo $GREETING; hostname; cat /extra/file; grep -c . /proc/self/status >/dev/null && echo done\"\n\
         Environment=GREETING=from-settings\nHostname=settings-host\n\
         [Files]\nBindReadOnly={}:/extra\n",
        bind_src.display()
    )
}

#[test]
fn trusted_untrusted_no_and_override() {
    privileged!();
    let tree = busybox_tree();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("file"), "bound-by-settings\n").unwrap();
    let d = tree.path().to_str().unwrap();

    // Trusted: /run/systemd/nspawn/NAME.nspawn, everything applies.
    let name = unique_name("settings");
    let _file = SettingsFile::write(
        Path::new("/run/systemd/nspawn"),
        &name,
        &settings_text(src.path()),
    );
    let (code, out, err) = run_nixspawn(&["-q", "--pipe", "-M", &name, "-D", d], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "from-settings\nsettings-host\nbound-by-settings\ndone\n"
    );

    // The command line wins over the file...
    let (code, out, err) = run_nixspawn(
        &[
            "-q",
            "--pipe",
            "-M",
            &name,
            "-D",
            d,
            "--hostname=cli-host",
            "-E",
            "GREETING=from-cli",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from-cli\ncli-host\nbound-by-settings\ndone\n");
    // ...unless --settings=override.
    let (_, out, _) = run_nixspawn(
        &[
            "-q",
            "--pipe",
            "-M",
            &name,
            "-D",
            d,
            "--settings=override",
            "--hostname=cli-host",
        ],
        "",
    );
    assert_eq!(out.lines().nth(1), Some("settings-host"));
    // --settings=no ignores the file: the default command is a shell reading stdin.
    let (code, out, _) = run_nixspawn(
        &["-q", "--pipe", "-M", &name, "-D", d, "--settings=no"],
        "echo plain\n",
    );
    assert_eq!((code, out.as_str()), (0, "plain\n"));

    // Untrusted: next to the tree; the bind is ignored with a warning.
    let beside_name = tree
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let _beside = SettingsFile::write(
        tree.path().parent().unwrap(),
        &beside_name,
        &settings_text(src.path()).replace("cat /extra/file", "ls /extra 2>/dev/null | wc -l"),
    );
    let (code, out, err) = run_nixspawn(&["-q", "--pipe", "-D", d], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "from-settings\nsettings-host\n0\ndone\n",
        "the untrusted file's bind was ignored"
    );
    assert!(
        err.contains(&format!(
            "Ignoring TemporaryFileSystem=, Bind= and BindReadOnly= settings, file {} is not trusted.",
            _beside.path.display()
        )),
        "{err}"
    );
}

#[test]
fn unsupported_settings_are_refused_by_name() {
    privileged!();
    let tree = busybox_tree();
    let name = unique_name("badsettings");
    let _file = SettingsFile::write(
        Path::new("/run/systemd/nspawn"),
        &name,
        "[Exec]\nBoot=no\n[Exec]\nPrivateUsersDelegate=2\n",
    );
    let (code, _, err) = run_nixspawn(
        &[
            "-q",
            "--pipe",
            "-M",
            &name,
            "-D",
            tree.path().to_str().unwrap(),
            "/bin/true",
        ],
        "",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "/run/systemd/nspawn/{name}.nspawn:4: [Exec] PrivateUsersDelegate="
        )),
        "{err}"
    );
    assert_cleaned_up(&name, None);
}

/// What the guest reports about each setting a settings file may try to
/// change, then the probe's syscall results and capability sets.
const REPORT: &str = "\
echo uuid=$([ \"$container_uuid\" = 0c1e8a2f-3b4d-4e5f-8a6b-7c8d9e0f1a2b ] && echo from-file || echo other); \
read _ outside _ < /proc/self/uid_map; echo userns=$([ \"$outside\" = 0 ] && echo no || echo yes); \
echo binds=$(ls /bound 2>/dev/null | wc -l); \
echo netdevs=$(wc -l < /proc/net/dev); \
echo journal-mounts=$(grep -c /var/log/journal /proc/self/mountinfo); \
touch /written-by-guest; \
exec /probe";

/// Run a tree (with its settings file next to it) under `launcher`, as a
/// unit would, and return (stdout, the "Ignoring ..." warnings).
fn run_beside(launcher: &str, tree: &Path, opts: &[&str]) -> (String, Vec<String>) {
    let unit = UnitCgroup::new("settings");
    let out = unit
        .command(launcher)
        .args(["-q", "--register=no", "--keep-unit", "-D"])
        .arg(tree)
        .args(opts)
        .args(["/bin/sh", "-c", REPORT])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    remove_nspawn_leftovers(tree);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{launcher} {opts:?}: {stderr}");
    let warnings = stderr
        .lines()
        .map(|l| l.trim_start_matches("nixspawn: "))
        .filter(|l| l.starts_with("Ignoring "))
        .map(str::to_owned)
        .collect();
    (console_text(&out.stdout), warnings)
}

fn field<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix('=').or_else(|| r.strip_prefix(':')))
                .map(str::trim)
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{report}"))
}

/// A busybox tree with the probe and, if given, a machine ID, and `text`
/// as the settings file next to it (both removed on drop).
fn tree_with_settings(
    probe: &Path,
    machine_id: Option<&str>,
    text: &str,
) -> (tempfile::TempDir, SettingsFile) {
    let tree = busybox_tree();
    std::fs::copy(probe, tree.path().join("probe")).unwrap();
    if let Some(id) = machine_id {
        std::fs::write(tree.path().join("etc/machine-id"), format!("{id}\n")).unwrap();
    }
    let name = tree
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let file = SettingsFile::write(tree.path().parent().unwrap(), &name, text);
    (tree, file)
}

/// The attack: a file next to the tree that opens up three of the calls
/// nspawn's filter refuses. As under systemd-nspawn, they stay refused.
#[test]
fn an_untrusted_file_cannot_widen_the_syscall_filter() {
    privileged!();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    let (tree, file) = tree_with_settings(
        &probe,
        None,
        "[Exec]\nSystemCallFilter=open_by_handle_at bpf swapon\n",
    );
    let (ours, our_warnings) = run_beside(NIXSPAWN, tree.path(), &[]);
    let (theirs, their_warnings) = run_beside("systemd-nspawn", tree.path(), &[]);
    for call in ["open_by_handle_at", "bpf", "swapon"] {
        assert_eq!(field(&ours, call), "EPERM", "{call} reachable:\n{ours}");
    }
    let expected = [format!(
        "Ignoring SystemCallFilter= settings, file {} is not trusted.",
        file.path.display()
    )];
    assert_eq!(their_warnings, expected);
    assert_eq!(our_warnings, expected);
    assert_eq!(ours, theirs);
}

/// Every setting systemd-nspawn 252 refuses to take from an untrusted
/// file (one next to the tree), each in the way that would matter: more
/// capabilities, another machine ID, a user namespace, host binds, the
/// host's journal directory, a private network, a wider syscall filter,
/// and the ones nixspawn does not implement at all. Both launchers must
/// ignore each, say so in the same words, and run the same guest.
#[test]
fn untrusted_settings_are_ignored_as_systemd_nspawn_ignores_them() {
    privileged!();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("file"), "host data\n").unwrap();
    let text = format!(
        "[Exec]\n\
         Ephemeral=yes\n\
         Capability=CAP_SYS_TIME CAP_SYS_MODULE\n\
         DropCapability=CAP_SYS_PTRACE\n\
         MachineID=0c1e8a2f3b4d4e5f8a6b7c8d9e0f1a2b\n\
         PrivateUsers=pick\n\
         SystemCallFilter=open_by_handle_at bpf swapon\n\
         LinkJournal=host\n\
         AmbientCapability=CAP_SYS_TIME\n\
         LimitNOFILE=100\n\
         LimitCPU=10\n\
         OOMScoreAdjust=100\n\
         CPUAffinity=0\n\
         [Files]\n\
         Bind={}:/bound\n\
         TemporaryFileSystem=/tmp2\n\
         PrivateUsersOwnership=chown\n\
         BindUser=root\n\
         [Network]\n\
         Private=yes\n\
         VirtualEthernet=yes\n\
         Port=80\n",
        src.path().display()
    );
    // A machine ID of its own, so that LinkJournal= would have something to link.
    let machine_id = format!(
        "{:032x}",
        u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15
    );
    let (tree, file) = tree_with_settings(&probe, Some(&machine_id), &text);
    let journal = Path::new("/var/log/journal").join(&machine_id);
    let written = tree.path().join("written-by-guest");

    let (ours, our_warnings) = run_beside(NIXSPAWN, tree.path(), &[]);
    assert!(written.exists(), "Ephemeral= was obeyed by nixspawn");
    std::fs::remove_file(&written).unwrap();
    let (theirs, their_warnings) = run_beside("systemd-nspawn", tree.path(), &[]);
    assert!(written.exists(), "Ephemeral= was obeyed by systemd-nspawn");
    assert!(
        !journal.exists(),
        "an untrusted LinkJournal= made {} on the host",
        journal.display()
    );

    let p = file.path.display();
    let expected: Vec<String> = [
        format!("Ignoring ephemeral setting, file {p} is not trusted."),
        format!("Ignoring Capability= setting, file {p} is not trusted."),
        format!("Ignoring AmbientCapability= setting, file {p} is not trusted."),
        format!("Ignoring MachineID= setting, file {p} is not trusted."),
        format!(
            "Ignoring TemporaryFileSystem=, Bind= and BindReadOnly= settings, file {p} is not trusted."
        ),
        format!("Ignoring network settings, file {p} is not trusted."),
        format!("Ignoring Port= setting, file {p} is not trusted."),
        format!("Ignoring PrivateUsers= and PrivateUsersChown= settings, file {p} is not trusted."),
        format!("Ignoring bind user setting, file {p} is not trusted."),
        format!("Ignoring SystemCallFilter= settings, file {p} is not trusted."),
        format!("Ignoring LimitCPU= setting, file '{p}' is not trusted."),
        format!("Ignoring LimitNOFILE= setting, file '{p}' is not trusted."),
        format!("Ignoring OOMScoreAdjust= setting, file '{p}' is not trusted."),
        format!("Ignoring CPUAffinity= setting, file '{p}' is not trusted."),
        format!("Ignoring journal link setting, file '{p}' is not trusted."),
    ]
    .into();
    assert_eq!(their_warnings, expected, "systemd-nspawn's own warnings");
    assert_eq!(our_warnings, expected, "nixspawn's warnings");

    // The attack: the file tried to open up these calls.
    for call in ["open_by_handle_at", "bpf", "swapon"] {
        assert_eq!(field(&ours, call), "EPERM", "{call} reachable:\n{ours}");
    }
    assert_eq!(field(&ours, "uuid"), "other");
    assert_eq!(field(&ours, "userns"), "no");
    assert_eq!(field(&ours, "binds"), "0");
    assert_eq!(field(&ours, "journal-mounts"), "0");
    assert_ne!(
        field(&ours, "netdevs"),
        "3",
        "a private network has only lo"
    );
    let bnd = u64::from_str_radix(field(&ours, "CapBnd").trim(), 16).unwrap();
    assert_eq!(bnd & (1 << 25 | 1 << 16), 0, "CAP_SYS_TIME/SYS_MODULE kept");
    assert_eq!(bnd & (1 << 19), 0, "DropCapability= applies to any file");
    assert_eq!(ours, theirs, "the guests differ");
}

/// An untrusted file may still narrow the syscall filter (removals only),
/// as with systemd-nspawn.
#[test]
fn untrusted_settings_may_narrow_the_syscall_filter() {
    privileged!();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    let (tree, _file) =
        tree_with_settings(&probe, None, "[Exec]\nSystemCallFilter=~mount umount2\n");
    let (ours, our_warnings) = run_beside(NIXSPAWN, tree.path(), &[]);
    let (theirs, their_warnings) = run_beside("systemd-nspawn", tree.path(), &[]);
    assert!(their_warnings.is_empty() && our_warnings.is_empty());
    assert_eq!(field(&ours, "mount"), "EPERM", "{ours}");
    assert_eq!(field(&ours, "umount2"), "EPERM", "{ours}");
    assert_eq!(ours, theirs);
}

/// The same privileged settings from a trusted file (`--settings=trusted`)
/// do apply, under both launchers alike.
#[test]
fn trusted_privileged_settings_apply_as_under_systemd_nspawn() {
    privileged!();
    let scratch = tempfile::tempdir().unwrap();
    let probe = build_probe(scratch.path());
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("file"), "host data\n").unwrap();
    let text = format!(
        "[Exec]\n\
         Capability=CAP_SYS_TIME\n\
         MachineID=0c1e8a2f3b4d4e5f8a6b7c8d9e0f1a2b\n\
         SystemCallFilter=bpf swapon\n\
         [Files]\n\
         Bind={}:/bound\n\
         [Network]\n\
         Private=yes\n",
        src.path().display()
    );
    let (tree, _file) = tree_with_settings(&probe, None, &text);
    let (ours, our_warnings) = run_beside(NIXSPAWN, tree.path(), &["--settings=trusted"]);
    let (theirs, _) = run_beside("systemd-nspawn", tree.path(), &["--settings=trusted"]);
    assert!(our_warnings.is_empty(), "{our_warnings:?}");
    assert_eq!(field(&ours, "uuid"), "from-file");
    assert_eq!(field(&ours, "binds"), "1");
    assert_eq!(field(&ours, "netdevs"), "3", "only lo: {ours}");
    assert_ne!(field(&ours, "bpf"), "EPERM", "{ours}");
    assert_eq!(ours, theirs, "the guests differ");
}
