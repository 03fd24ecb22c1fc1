//! Privileged: systemd credentials reach the guest's services, on a
//! read-only ramfs, and their values appear nowhere we write.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const SET_VALUE: &str = "hello\nworld";
const FILE_VALUE: &str = "s3cr3t-from-a-file";

/// Boot with two credentials (one set, one loaded) and check them inside.
fn guest_receives_credentials(mut cmd_args: Vec<String>, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dbpass");
    std::fs::write(&file, FILE_VALUE).unwrap();
    cmd_args.extend([
        "--debug".to_owned(),
        "--set-credential=greeting:hello\\nworld".to_owned(),
        format!("--load-credential=dbpass:{}", file.display()),
    ]);
    let args: Vec<&str> = cmd_args.iter().map(String::as_str).collect();
    let mut guest = Guest::launch(std::process::Command::new(NIXSPAWN), name, &args);
    guest.wait_ready();

    let listing = guest.sh("stat -c '%a %u:%g %n' /run/host/credentials /run/host/credentials/*");
    assert_eq!(
        listing,
        "500 0:0 /run/host/credentials\n400 0:0 /run/host/credentials/dbpass\n400 0:0 /run/host/credentials/greeting\n"
    );
    assert_eq!(
        guest.sh("stat -f -c %T /run/host/credentials").trim(),
        "ramfs"
    );
    let mount = guest.sh("grep ' /run/host/credentials ' /proc/self/mountinfo");
    assert_eq!(mount.lines().count(), 1, "one mount, not a stack: {mount}");
    assert!(
        mount
            .split(' ')
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{mount}"
    );
    assert!(
        mount.contains(" - ramfs ramfs ro"),
        "the ramfs itself is read-only too: {mount}"
    );
    assert_ne!(
        guest
            .exec(&["/bin/sh", "-c", "echo x > /run/host/credentials/new"])
            .0,
        0,
        "read-only for the guest's root"
    );
    assert!(
        guest
            .sh("tr '\\0' '\\n' < /proc/1/environ")
            .lines()
            .any(|l| l == "CREDENTIALS_DIRECTORY=/run/host/credentials")
    );
    // A service gets them with LoadCredential=, from the system's credentials.
    for (id, value) in [("dbpass", FILE_VALUE), ("greeting", SET_VALUE)] {
        let script = format!(
            "systemd-run --quiet --wait --pipe -p LoadCredential={id} /bin/sh -c 'cat $CREDENTIALS_DIRECTORY/{id}'"
        );
        assert_eq!(guest.sh(&script), value, "service reading {id}");
    }

    // The values are in no file we write: state, status, console and --debug output.
    let state =
        std::fs::read_to_string(Path::new("/run/nixspawn").join(name).join("state.json")).unwrap();
    let status = String::from_utf8_lossy(&ctl(&["status", name, "--json"]).stdout).into_owned();
    guest.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(guest.wait_exit(Duration::from_secs(60)), 0);
    let console = guest.console();
    assert!(
        console.contains("install credentials"),
        "--debug output is in the log: {console}"
    );
    for text in [&state, &status, &console] {
        for secret in [FILE_VALUE, "hello\nworld", "hello\\nworld"] {
            assert!(
                !text.contains(secret),
                "a credential value leaked into:\n{text}"
            );
        }
    }
    assert_cleaned_up(name, None);
}

/// An ephemeral boot of a Debian fixture tree.
fn debian_boot_args(suite: &str) -> Vec<String> {
    vec![
        "-x".into(),
        "-b".into(),
        "-D".into(),
        tree(suite).display().to_string(),
    ]
}

#[test]
fn bookworm_guest_receives_credentials() {
    privileged!();
    guest_receives_credentials(debian_boot_args("bookworm"), &unique_name("cred-bookworm"));
}

#[test]
fn sid_guest_receives_credentials() {
    privileged!();
    guest_receives_credentials(debian_boot_args("sid"), &unique_name("cred-sid"));
}

#[test]
fn nixos_toplevel_receives_credentials() {
    privileged!();
    let fx = nixos();
    guest_receives_credentials(
        vec![format!("--toplevel={}", fx.systemd)],
        &unique_name("cred-nixos"),
    );
}

#[test]
fn bad_credentials_are_refused_before_anything_starts() {
    privileged!();
    let tree = busybox_tree();
    let d = tree.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 1024 * 1024 + 1]).unwrap();
    let big_arg = format!("--load-credential=big:{}", big.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--load-credential=pw:/nonexistent/secret"],
            "credential pw: /nonexistent/secret",
        ),
        (vec!["--set-credential=a/b:x"], "credential a/b"),
        (vec!["--set-credential=..:x"], "credential .."),
        (
            vec!["--set-credential=dup:1", "--set-credential=dup:2"],
            "credential dup: given more than once",
        ),
        (vec![&big_arg], "more than the limit"),
        (vec!["--set-credential=esc:\\q"], "unknown escape"),
    ];
    for (extra, needle) in cases {
        let name = unique_name("badcred");
        let mut args = vec!["-M", name.as_str(), "-D", d, "--pipe"];
        args.extend_from_slice(&extra);
        args.push("/bin/true");
        let (code, _, err) = run_nixspawn(&args, "");
        assert_eq!(code, 1, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err:?} lacks {needle:?}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err:?}");
        assert!(!err.contains("Spawning"), "nothing was started: {err}");
        assert_cleaned_up(&name, None);
    }
}

#[test]
fn credentials_under_a_user_namespace_belong_to_the_guests_root() {
    privileged!();
    let mut args = debian_boot_args("bookworm");
    args.insert(0, "-U".into());
    guest_receives_credentials(args, &unique_name("cred-userns"));
}
