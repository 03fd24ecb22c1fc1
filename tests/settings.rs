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
        err.contains("BindReadOnly= is privileged and ignored in an untrusted settings file"),
        "{err}"
    );
}

#[test]
fn unsupported_settings_are_refused_by_name() {
    let tree = busybox_tree();
    let name = unique_name("badsettings");
    let _file = SettingsFile::write(
        Path::new("/run/systemd/nspawn"),
        &name,
        "[Exec]\nBoot=no\n[Network]\nVirtualEthernet=yes\n",
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
            "/run/systemd/nspawn/{name}.nspawn:4: [Network] VirtualEthernet="
        )),
        "{err}"
    );
    assert_cleaned_up(&name, None);
}
