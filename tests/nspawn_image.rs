//! Privileged: `--image=` (issue 16, group C). Disk images are built here
//! (mkfs.ext4 -d, mkfs.erofs, mksquashfs, sfdisk; GPT and MBR tables)
//! from a copy of the bookworm tree or a busybox tree, and booted under
//! nixspawn and systemd-nspawn 252 with the same argv: the same mounts,
//! os-release and running state. Bad images and refused options fail in one line with no
//! loop device, mount or state left behind, also after SIGKILL.
//!
//! systemd-nspawn 252 insists on talking to udev for `--image` (it refuses
//! without /run/udev/control), and this host runs none: its side runs in a
//! mount namespace of its own with a private /run and a systemd-udevd
//! there that has no rules (it only records devices), stopped after.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const NSPAWN: &str = "systemd-nspawn";

/// The DPS partition types used here (x86-64).
const ROOT: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
const USR: &str = "8484680c-9521-48c6-9c11-b0720656f69e";
const HOME: &str = "933ac7e1-2eb4-4f13-b844-0e14e2aef915";

/// Runs "$@" next to a rule-less udevd in a private mount namespace.
const WITH_UDEV: &str = r#"
set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /usr/lib/udev/rules.d
if [ -d /etc/udev/rules.d ]; then mount -t tmpfs tmpfs /etc/udev/rules.d; fi
udevd=/lib/systemd/systemd-udevd
[ -x $udevd ] || udevd=/usr/lib/systemd/systemd-udevd
$udevd 2>/dev/null & u=$!
i=0; while [ ! -S /run/udev/control ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
set +e
"$@"; rc=$?
kill $u; wait $u 2>/dev/null
exit $rc
"#;

fn require_tools() {
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("mkfs.ext4", "e2fsprogs"),
        ("mkfs.erofs", "erofs-utils"),
        ("mksquashfs", "squashfs-tools"),
        ("sfdisk", "fdisk"),
        ("losetup", "mount"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is missing: apt-get install {package} (integration/setup-host.sh does)"
        );
    }
    assert!(
        [
            "/lib/systemd/systemd-udevd",
            "/usr/lib/systemd/systemd-udevd"
        ]
        .iter()
        .any(|p| Path::new(p).exists()),
        "systemd-udevd is missing (systemd-nspawn 252 needs it for --image): apt-get install udev (integration/setup-host.sh does)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run(Command::new("sh").args(["-c", script]))
}

/// `losetup -a` lines that name a file under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let out = run(Command::new("losetup").arg("-a"));
    let dir = dir.to_string_lossy();
    out.lines()
        .filter(|l| l.contains(dir.as_ref()))
        .map(str::to_owned)
        .collect()
}

/// No loop device names a file under `dir` (`what` says after which run).
fn assert_no_loops(dir: &Path, what: &str) {
    assert_eq!(loops_under(dir), Vec::<String>::new(), "{what}");
}

/// nixspawn (quiet, unregistered, piped console) with `opts` then
/// `argv`, as the guest `name`.
fn image_guest(name: &str, opts: &[&str], argv: &[&str]) -> Guest {
    let mut cmd = Command::new(NIXSPAWN);
    cmd.args(["-q", "--register=no", "--console=pipe"])
        .args(opts);
    Guest::launch(cmd, name, argv)
}

/// SIGKILL the launcher of `guest` (named `name`, on an image under
/// `dir`): its loop devices and its state directory go.
fn kill_and_see_released(mut guest: Guest, dir: &Path, name: &str) {
    guest.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = guest.wait_exit(Duration::from_secs(20));
    wait_for("the loop device to go", Duration::from_secs(20), || {
        loops_under(dir).is_empty()
    });
    wait_for("the state to go", Duration::from_secs(20), || {
        !Path::new("/run/nixspawn").join(name).exists()
    });
}

/// A file of `bytes` zero bytes (sparse) at `out`, for a disk.
fn empty_disk(out: &Path, bytes: u64) {
    let file = std::fs::File::create(out).unwrap();
    file.set_len(bytes).unwrap();
}

/// Partition `out` with sfdisk (`opts`) as `script` says.
fn sfdisk(out: &Path, opts: &[&str], script: &str) {
    let done = output_with_stdin(Command::new("sfdisk").args(opts).arg(out), script);
    assert!(
        done.status.success(),
        "sfdisk {script}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// Copy the filesystem image `image` into `disk` at sector `start`.
fn copy_into(disk: &Path, image: &Path, start: u64) {
    run(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=512", "conv=notrunc", "status=none"])
        .arg(format!("seek={start}")));
}

/// A GPT disk at `out` holding the filesystem images `parts` (type GUID,
/// image file, label), in order.
fn gpt(out: &Path, parts: &[(&str, &Path, &str)]) {
    let sectors: Vec<u64> = parts
        .iter()
        .map(|(_, f, _)| std::fs::metadata(f).unwrap().len().div_ceil(512))
        .collect();
    let total: u64 = 2048 + sectors.iter().sum::<u64>() + 2048 + 8 * parts.len() as u64;
    empty_disk(out, total * 512);
    let mut script = String::from("label: gpt\n");
    for (i, ((ty, _, label), n)) in parts.iter().zip(&sectors).enumerate() {
        let start = if i == 0 { "start=2048, " } else { "" };
        script.push_str(&format!("{start}size={n}, type={ty}, name=\"{label}\"\n"));
    }
    sfdisk(out, &["-q"], &script);
    let json = run(Command::new("sfdisk").arg("-J").arg(out));
    let starts: Vec<u64> = json
        .split("\"start\":")
        .skip(1)
        .map(|s| {
            s.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(starts.len(), parts.len(), "{json}");
    for ((_, f, _), start) in parts.iter().zip(starts) {
        copy_into(out, f, start);
    }
}

/// An ext4 image of `tree` at `out`.
fn ext4(tree: &Path, out: &Path, size: &str) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(tree)
        .arg(out)
        .arg(size));
}

/// Run `argv` (after the launcher's own name) under `launcher` in a unit
/// cgroup of its own, nspawn next to its udevd; (code, stdout, stderr).
fn launch(launcher: &str, argv: &[&str]) -> (i32, String, String) {
    launch_env(launcher, argv, &[])
}

fn launch_env(launcher: &str, argv: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let unit = UnitCgroup::new("img");
    let mut cmd = if launcher == NSPAWN {
        let mut c = unit.command("unshare");
        c.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            WITH_UDEV,
            "sh",
        ])
        .arg(NSPAWN);
        c
    } else {
        unit.command(launcher)
    };
    cmd.args(["-q", "--register=no", "--keep-unit"]);
    if !argv.iter().any(|a| a.starts_with("--console")) {
        cmd.arg("--console=pipe");
    }
    cmd.args(argv)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Both launchers with the same argv: both succeed and print the same.
fn same(argv: &[&str]) -> String {
    same_env(argv, &[])
}

fn same_env(argv: &[&str], env: &[(&str, &str)]) -> String {
    both(argv, |launcher| {
        let (code, out, err) = launch_env(launcher, argv, env);
        assert_eq!(code, 0, "{launcher} {argv:?}: {err}\n{out}");
        out
    })
}

/// `LOOK` in `image` booted as machine `machine`, the same under both.
fn look_in(image: &Path, machine: &str) -> String {
    same(&[
        "-i",
        image.to_str().unwrap(),
        "-M",
        machine,
        "sh",
        "-c",
        LOOK,
    ])
}

/// What the guest sees of its disk: its mounts from the image, a marker
/// from /home, its os-release.
const LOOK: &str = r#"findmnt -rno TARGET,FSTYPE,OPTIONS | grep -Ev '^/(proc|sys|dev|run|tmp)' | sort
cat /home/marker/here 2>/dev/null || echo no-home
. /etc/os-release; echo "$PRETTY_NAME""#;

/// A unit that reports the booted guest's state and mounts into /report,
/// then powers it off.
const REPORT_UNIT: &str = "[Unit]
After=multi-user.target
[Service]
Type=simple
ExecStart=/bin/sh -c 'state=$(systemctl is-system-running --wait); { echo state=$state; findmnt -rno TARGET,FSTYPE,OPTIONS / /usr /home; } > /report/out; systemctl --no-block poweroff'
[Install]
WantedBy=multi-user.target
";

/// A copy of the bookworm tree without /usr (`root`), with the report
/// unit enabled, and a /home marker tree.
struct Trees {
    dir: tempfile::TempDir,
}

impl Trees {
    fn new() -> Trees {
        let bookworm = tree("bookworm");
        let dir = tempfile::Builder::new()
            .prefix("nixspawn-img-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        for e in std::fs::read_dir(&bookworm).unwrap() {
            let e = e.unwrap();
            if e.file_name() == "usr" {
                std::fs::create_dir(root.join("usr")).unwrap();
            } else {
                run(Command::new("cp").arg("-a").arg(e.path()).arg(&root));
            }
        }
        let units = root.join("etc/systemd/system");
        std::fs::write(units.join("i16-report.service"), REPORT_UNIT).unwrap();
        let wants = units.join("multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink("../i16-report.service", wants.join("i16-report.service"))
            .unwrap();
        std::fs::create_dir_all(root.join("report")).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("marker")).unwrap();
        std::fs::write(home.join("marker/here"), "home-partition\n").unwrap();
        Trees { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The GPT disk: root (ext4, empty /usr), /usr (erofs), /home (ext4).
    fn gpt_disk(&self) -> PathBuf {
        let bookworm = tree("bookworm");
        ext4(&self.path("root"), &self.path("root.fs"), "200M");
        run(Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(self.path("usr.fs"))
            .arg(bookworm.join("usr")));
        ext4(&self.path("home"), &self.path("home.fs"), "8M");
        let disk = self.path("disk.raw");
        gpt(
            &disk,
            &[
                (ROOT, &self.path("root.fs"), "root-x86-64"),
                (USR, &self.path("usr.fs"), "usr-x86-64"),
                (HOME, &self.path("home.fs"), "home"),
            ],
        );
        disk
    }

    /// One ext4 filesystem holding the whole tree (/usr copied in after
    /// the GPT's root was made).
    fn single_ext4(&self) -> PathBuf {
        let bookworm = tree("bookworm");
        let usr = self.path("root/usr");
        std::fs::remove_dir(&usr).unwrap();
        run(Command::new("cp")
            .arg("-a")
            .arg(bookworm.join("usr"))
            .arg(self.path("root")));
        let image = self.path("single.raw");
        ext4(&self.path("root"), &image, "600M");
        image
    }
}

/// Boot `image` under `launcher` to multi-user; the report unit's answer.
fn boot_report(launcher: &str, image: &Path, report: &Path) -> String {
    let _ = std::fs::remove_file(report.join("out"));
    let bind = format!("--bind={}:/report", report.display());
    // Unique: the GPT and the MBR tests boot at the same time.
    let machine = unique_name("i16-boot");
    let (code, out, err) = launch(
        launcher,
        &[
            "-i",
            image.to_str().unwrap(),
            "-M",
            &machine,
            "--console=pipe",
            &bind,
            "-b",
        ],
    );
    assert_eq!(code, 0, "{launcher} -b -i: {err}\n{out}");
    std::fs::read_to_string(report.join("out"))
        .unwrap_or_else(|e| panic!("{launcher}: no report ({e}); console:\n{out}\n{err}"))
}

/// `image` booted under both launchers reports the same, and `running`.
fn boots_the_same(image: &Path, report: &Path, what: &str) {
    let ours = boot_report(NIXSPAWN, image, report);
    let theirs = boot_report(NSPAWN, image, report);
    assert_eq!(ours, theirs, "{what}");
    assert!(ours.starts_with("state=running\n"), "{ours}");
}

/// The GPT disk and the one-filesystem image of the same bookworm tree
/// boot under both launchers the same: the same mounts (/usr a read-only
/// erofs partition, /home its own), os-release and `running` state, and
/// neither leaves a loop device attached.
#[test]
fn gpt_and_single_filesystem_images_boot_as_under_nspawn() {
    privileged!();
    require_tools();
    let trees = Trees::new();
    let disk = trees.gpt_disk();
    let report = trees.path("report");
    std::fs::create_dir(&report).unwrap();

    let look = look_in(&disk, "i16-gpt");
    assert!(
        look.starts_with(
            "/ ext4 rw,nodev,relatime\n/home ext4 rw,nodev,relatime\n/usr erofs ro,nodev,"
        ),
        "{look}"
    );
    assert!(look.contains("/usr erofs ro,"), "{look}");
    assert!(look.contains("home-partition"), "{look}");
    boots_the_same(&disk, &report, "booted GPT disk");

    let single = trees.single_ext4();
    let look = look_in(&single, "i16-one");
    assert!(look.starts_with("/ ext4 rw,nodev,relatime\n"), "{look}");
    assert!(look.contains("no-home"), "{look}");
    boots_the_same(&single, &report, "booted one-filesystem image");

    assert_no_loops(trees.dir.path(), "");
}

/// A small image of a busybox tree: `kind` is ext4, squashfs or erofs.
fn busybox_image(dir: &Path, kind: &str) -> PathBuf {
    let tree = busybox_tree();
    for d in ["home", "srv", "var", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(tree.path().join(d)).unwrap();
    }
    for applet in ["sort", "grep", "touch", "cut"] {
        let _ = std::os::unix::fs::symlink("busybox", tree.path().join("usr/bin").join(applet));
    }
    let image = dir.join(format!("bb-{kind}.raw"));
    match kind {
        "ext4" => ext4(tree.path(), &image, "16M"),
        "squashfs" => {
            run(Command::new("mksquashfs")
                .arg(tree.path())
                .arg(&image)
                .args(["-quiet", "-noappend", "-no-progress"]));
        }
        _ => {
            run(Command::new("mkfs.erofs")
                .arg("--quiet")
                .arg(&image)
                .arg(tree.path()));
        }
    }
    image
}

/// squashfs and erofs images are read-only roots under both launchers.
#[test]
fn squashfs_and_erofs_images_are_read_only_roots() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    for kind in ["squashfs", "erofs"] {
        let image = busybox_image(dir.path(), kind);
        let out = same(&[
            "-i",
            image.to_str().unwrap(),
            "-M",
            "i16-ro",
            "--console=pipe",
            "sh",
            "-c",
            "mount | grep ' on / ' | cut -d' ' -f5; touch /x 2>/dev/null && echo wrote || echo refused",
        ]);
        assert_eq!(out, format!("{kind}\nrefused\n"), "{kind}");
    }
    assert_no_loops(dir.path(), "");
}

/// Run nixspawn with `argv`, which must fail: its one line of stderr.
fn refused(argv: &[&str]) -> String {
    let (code, out, err) = launch(NIXSPAWN, argv);
    assert_ne!(code, 0, "{argv:?} was taken: {out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{argv:?}: not one line: {err}");
    lines[0].to_owned()
}

/// Bad images and policies: one line each, naming what is wrong, and no
/// loop device, state directory or lock left.
#[test]
fn bad_images_and_policies_fail_in_one_line_leaving_nothing() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = dir.path();
    let name = "i16-bad";
    let check = |argv: &[&str], want: &str| {
        let mut full = vec!["-M", name];
        full.extend_from_slice(argv);
        full.extend_from_slice(&["--console=pipe", "true"]);
        let line = refused(&full);
        assert!(line.contains(want), "{argv:?}: {line:?} lacks {want:?}");
        assert_no_loops(d, &format!("{argv:?}"));
        assert!(!Path::new("/run/nixspawn").join(name).exists(), "{argv:?}");
    };

    let zeros = d.join("zeros.raw");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    check(&["-i", zeros.to_str().unwrap()], "not a disk image");

    let mbr = d.join("mbr.raw");
    std::fs::write(&mbr, vec![0u8; 4 << 20]).unwrap();
    sh(&format!(
        "echo 'label: dos\nstart=2048, type=83' | sfdisk -q {}",
        mbr.display()
    ));
    check(&["-i", mbr.to_str().unwrap()], "not marked bootable");

    let bb = busybox_image(d, "ext4");
    let homeonly = d.join("homeonly.raw");
    gpt(&homeonly, &[(HOME, &bb, "home")]);
    check(&["-i", homeonly.to_str().unwrap()], "has no root partition");

    let disk = d.join("disk.raw");
    gpt(&disk, &[(ROOT, &bb, "root"), (HOME, &bb, "home")]);
    let disk = disk.to_str().unwrap();
    check(
        &["-i", disk, "--image-policy=root=unprotected:home=absent"],
        "forbids the unprotected partition the image has (home partition)",
    );
    check(
        &["-i", disk, "--image-policy=root=verity"],
        "forbids the unprotected partition the image has (root partition)",
    );
    check(
        &[
            "-i",
            disk,
            "--image-policy=root=unprotected:srv=unprotected:=unused+absent",
        ],
        "requires a srv partition; the image has none",
    );
    check(
        &[
            "-i",
            disk,
            "--image-policy=root=unprotected+read-only-on:=unused+absent",
        ],
        "read-only flag on",
    );
    check(
        &["-i", disk, "--image-policy=root=sometimes"],
        "unknown partition policy flag",
    );
    check(&["-i", disk, "-D", "/"], "exclude each other");
    check(&["-i", d.to_str().unwrap()], "is a directory");
    check(
        &["-i", &format!("{}/missing.raw", d.display())],
        "cannot be resolved",
    );

    // An allowed policy that leaves /home unused: booted without it.
    let (code, out, err) = launch(
        NIXSPAWN,
        &[
            "-M",
            name,
            "-i",
            disk,
            "--image-policy=root=unprotected:home=unused:=unused+absent",
            "--console=pipe",
            "sh",
            "-c",
            "grep -c ' /home ' /proc/self/mounts || true",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "0\n"), "{err}");
    let (code, out, err) = launch(
        NIXSPAWN,
        &[
            "-M",
            name,
            "-i",
            disk,
            "--console=pipe",
            "sh",
            "-c",
            "grep -c ' /home ' /proc/self/mounts",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
    assert_no_loops(d, "");
}

/// What this kernel and host lack: refused in one line naming it.
#[test]
fn options_needing_what_the_host_lacks_are_refused_by_name() {
    privileged!();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = busybox_image(dir.path(), "ext4");
    let image = image.to_str().unwrap();
    let dm = Path::new("/dev/mapper/control").exists();
    for opt in [
        "--root-hash=0123abcd",
        "--root-hash-sig=base64:AAAA",
        "--verity-data=/x.verity",
    ] {
        let line = refused(&["-M", "i16-vr", "-i", image, opt, "true"]);
        let want = if dm {
            "not implemented"
        } else {
            "this kernel has no device-mapper"
        };
        assert!(line.contains(want), "{opt}: {line}");
    }
    for (opt, missing) in [
        ("--private-users-delegate=1", "systemd-nsresourced"),
        ("--forward-journal=/tmp/j", "systemd-journal-remote"),
    ] {
        let line = refused(&["-M", "i16-vr", "-i", image, opt, "true"]);
        assert!(line.contains(missing), "{opt}: {line}");
    }
    let line = refused(&[
        "-M",
        "i16-vr",
        "--mstack=/var/lib/machines/x.mstack",
        "true",
    ]);
    assert!(line.contains("--mstack"), "{line}");
    let line = refused(&["-M", "i16-vr", "-D", "/", "--image-policy=*", "true"]);
    assert!(line.contains("only makes sense with --image"), "{line}");
    assert_no_loops(dir.path(), "");
}

/// A writable image is locked: a second container on it is refused while
/// the first runs; after SIGKILL of the first launcher the loop devices
/// and mounts go (AUTOCLEAR, the guest dies with it) and the image can be
/// used again.
#[test]
fn an_image_is_locked_and_released_after_sigkill() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = busybox_image(dir.path(), "ext4");
    let image = image.to_str().unwrap();
    let name = unique_name("i16-kill");
    let guest = image_guest(&name, &["-i", image], &["sleep", "1000"]);
    wait_for("the image's loop device", Duration::from_secs(20), || {
        loops_under(dir.path()).len() == 1
    });
    wait_for("the guest's state", Duration::from_secs(20), || {
        Path::new("/run/nixspawn").join(&name).exists()
    });
    let line = refused(&["-M", "i16-second", "-i", image, "--console=pipe", "true"]);
    assert!(line.contains("in use by another container"), "{line}");
    assert_eq!(
        loops_under(dir.path()).len(),
        1,
        "the refused run attached one"
    );

    kill_and_see_released(guest, dir.path(), &name);
    let (code, out, err) = launch(
        NIXSPAWN,
        &[
            "-M",
            "i16-again",
            "-i",
            image,
            "--console=pipe",
            "sh",
            "-c",
            "echo again",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "again\n"), "{err}");
    assert!(loops_under(dir.path()).is_empty());
}

/// The bundle's config.json for `bundle_tree` (data: a host directory
/// bound in).
fn oci_config(data: &Path, extra: &str) -> String {
    format!(
        r#"{{
  "ociVersion": "1.0.0",
  "process": {{
    "terminal": false,
    "user": {{"uid": 0, "gid": 0}},
    "args": ["sh", "-c", "echo host=$(hostname) cwd=$(pwd) id=$(id -u):$(id -g) FOO=$FOO; env | grep -c ^PATH=; mount | grep -E ' /(data|scratch) ' | cut -d' ' -f3,5; cat /data/file"],
    "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FOO=bar"],
    "cwd": "/tmp"
  }},
  "root": {{"path": "rootfs", "readonly": false}},
  "hostname": "ocihost",
  "mounts": [
    {{"destination": "/proc", "type": "proc", "source": "proc"}},
    {{"destination": "/data", "type": "bind", "source": "{}", "options": ["rbind"]}},
    {{"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}}
  ],
  "annotations": {{"org.example.ignored": "yes"}},
  "linux": {{"namespaces": [{{"type": "pid"}}, {{"type": "mount"}}, {{"type": "ipc"}}, {{"type": "uts"}}]}}{extra}
}}"#,
        data.display()
    )
}

/// An OCI bundle around a busybox tree: the same process, environment,
/// working directory, hostname and mounts under both launchers. (nspawn
/// 252 reads bundles only with the unified cgroup hierarchy on this
/// hybrid host: SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1, given to both.)
#[test]
fn an_oci_bundle_runs_as_under_nspawn() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let tree = busybox_tree();
    let rootfs = bundle.join("rootfs");
    run(Command::new("cp").arg("-a").arg(tree.path()).arg(&rootfs));
    for applet in ["cut", "hostname", "id", "pwd", "env", "mount"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("usr/bin").join(applet));
    }
    for d in ["data", "scratch", "tmp", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), "from the host\n").unwrap();
    std::fs::write(bundle.join("config.json"), oci_config(&data, "")).unwrap();
    let arg = format!("--oci-bundle={}", bundle.display());
    let out = same_env(
        &[&arg, "-M", "i16-oci"],
        &[("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")],
    );
    assert!(
        out.starts_with("host=ocihost cwd=/tmp id=0:0 FOO=bar\n1\n/data ")
            && out.ends_with("/scratch tmpfs\nfrom the host\n"),
        "{out}"
    );
    let _ = std::fs::remove_dir(Path::new("/run/systemd/nspawn/propagate/i16-oci"));

    // A key nixspawn does not honour: one line naming it.
    std::fs::write(
        bundle.join("config.json"),
        oci_config(&data, ",\n  \"hooks\": {\"prestart\": []}"),
    )
    .unwrap();
    let line = refused(&[&arg, "-M", "i16-oci", "true"]);
    assert!(
        line.contains("hooks is not supported by nixspawn"),
        "{line}"
    );
}

/// `-x` with an image: the image is only read (nspawn 252 copies the
/// whole image first; we put the overlay's tmpfs on it, as for trees), so
/// its bytes do not change, and two ephemeral runs share it.
#[test]
fn ephemeral_runs_share_an_image_and_never_write_it() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = busybox_image(dir.path(), "ext4");
    let before = std::fs::read(&image).unwrap();
    let image = image.to_str().unwrap();
    let name = unique_name("i16-eph");
    let mut guest = image_guest(
        &name,
        &["-x", "-i", image],
        &["sh", "-c", "touch /first; sleep 1000"],
    );
    wait_for("the first guest", Duration::from_secs(20), || {
        Path::new("/run/nixspawn").join(&name).exists()
    });
    let (code, out, err) = launch(
        NIXSPAWN,
        &[
            "-M",
            "i16-eph2",
            "-x",
            "-i",
            image,
            "sh",
            "-c",
            "touch /second && ls / | grep -E '^(first|second)$'",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "second\n"), "{err}");
    guest.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = guest.wait_exit(Duration::from_secs(20));
    wait_for("the loop devices to go", Duration::from_secs(20), || {
        loops_under(dir.path()).is_empty()
    });
    assert!(
        std::fs::read(image).unwrap() == before,
        "the image's bytes changed"
    );
}

/// An MBR disk of `mib` MiB at `out` laid out by the sfdisk `script`
/// (after `label: dos`), partition N then filled with the image `fill`.
fn mbr_disk(out: &Path, mib: u64, script: &str, fill: &[(u32, &Path)]) {
    empty_disk(out, mib << 20);
    sfdisk(
        out,
        &["-q", "--no-reread", "--no-tell-kernel"],
        &format!("label: dos\n{script}"),
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("-J").arg(out))).unwrap();
    let node_prefix = out.to_str().unwrap();
    for (number, image) in fill {
        let part = json["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| {
                p["node"].as_str().unwrap().strip_prefix(node_prefix) == Some(&number.to_string())
            })
            .unwrap_or_else(|| panic!("no partition {number}: {json}"));
        let start = part["start"].as_u64().unwrap();
        assert!(
            part["size"].as_u64().unwrap() * 512 >= std::fs::metadata(image).unwrap().len(),
            "partition {number} is smaller than {}",
            image.display()
        );
        copy_into(out, image, start);
    }
}

/// A 16 MiB ext4 image of a busybox tree whose /marker says `marker`.
fn marked_fs(dir: &Path, marker: &str) -> PathBuf {
    let tree = busybox_tree();
    for d in ["boot", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(tree.path().join(d)).unwrap();
    }
    for applet in ["cut", "sort"] {
        let _ = std::os::unix::fs::symlink("busybox", tree.path().join("usr/bin").join(applet));
    }
    std::fs::write(tree.path().join("marker"), format!("{marker}\n")).unwrap();
    let image = dir.join(format!("{marker}.fs"));
    ext4(tree.path(), &image, "16M");
    image
}

/// An MBR disk of the bookworm tree: partition 1 (bootable, Linux) holds
/// the whole tree; an extended partition holds a logical Linux partition
/// without the bootable flag (a /home filesystem), which nspawn ignores.
/// Both launchers give the same mounts, os-release and `running` state
/// (the root a loop device of its own at the partition's offset), and no
/// loop device is left after either.
#[test]
fn an_mbr_disk_boots_as_under_nspawn() {
    privileged!();
    require_tools();
    let trees = Trees::new();
    let single = trees.single_ext4();
    ext4(&trees.path("home"), &trees.path("home.fs"), "8M");
    let disk = trees.path("mbr.raw");
    let root_sectors = std::fs::metadata(&single).unwrap().len().div_ceil(512);
    mbr_disk(
        &disk,
        640,
        &format!(
            "start=2048, size={root_sectors}, type=83, bootable\ntype=5\nsize=16384, type=83\n"
        ),
        &[(1, &single), (5, &trees.path("home.fs"))],
    );
    let report = trees.path("report");
    std::fs::create_dir(&report).unwrap();

    let look = look_in(&disk, "i16-mbr");
    assert!(
        look.starts_with("/ ext4 rw,nodev,relatime\n") && look.contains("no-home"),
        "{look}"
    );
    assert!(look.contains("Debian GNU/Linux 12 (bookworm)"), "{look}");
    boots_the_same(&disk, &report, "booted MBR disk");
    assert_no_loops(trees.dir.path(), "");
}

/// nspawn 252's rules for MBR partitions, each layout under both
/// launchers: the bootable Linux partition is the root (a non-bootable
/// one is ignored), also a logical one (ours only: see below); a 0xEA
/// partition is /boot; a
/// disk whose only Linux partition is not bootable, or with two bootable
/// ones, is refused by both (ours in one line naming why). No loop device
/// is left after any run.
#[test]
fn mbr_partition_rules_are_nspawns() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = dir.path();
    let a = marked_fs(d, "fs-a");
    let b = marked_fs(d, "fs-b");
    let script = "cat /marker; mount | grep -E ' on /(boot)? ' | cut -d' ' -f3,5 | sort";
    let disk = d.join("rules.raw");
    let disk_s = disk.to_str().unwrap();
    let argv = ["-M", "i16-mbr-rules", "-i", disk_s, "sh", "-c", script];

    // Taken: both launchers boot the same partition the same way.
    for (layout, fill, want) in [
        (
            "size=32768, type=83\nsize=32768, type=83, bootable\n",
            vec![(1, a.as_path()), (2, b.as_path())],
            "fs-b\n/ ext4\n",
        ),
        (
            "size=32768, type=ea\nsize=32768, type=83, bootable\n",
            vec![(1, a.as_path()), (2, b.as_path())],
            "fs-b\n/ ext4\n/boot ext4\n",
        ),
    ] {
        mbr_disk(&disk, 80, layout, &fill);
        let out = same(&argv);
        assert_eq!(out, want, "{layout}");
        assert_no_loops(d, layout);
    }

    // A bootable logical partition is a root candidate like a primary
    // one (nspawn 252's rule), but 252 itself cannot open it: it adds the
    // extended partition's device over the whole container itself, and
    // the kernel then refuses the logical partition inside it as
    // overlapping (EBUSY, which 252 takes for "the kernel was quicker"),
    // so its open fails with ENOENT. Ours alone.
    mbr_disk(
        &disk,
        80,
        "size=32768, type=83\ntype=5\nsize=32768, type=83, bootable\n",
        &[(1, &a), (5, &b)],
    );
    let (code, out, err) = launch(NIXSPAWN, &argv);
    assert_eq!((code, out.as_str()), (0, "fs-b\n/ ext4\n"), "{err}");
    assert_no_loops(d, "");

    // Refused by both.
    for (layout, fill, why) in [
        (
            "size=32768, type=83\n",
            vec![(1, a.as_path())],
            "MBR partition 1 is Linux (0x83) but not marked bootable",
        ),
        (
            "size=32768, type=83, bootable\nsize=32768, type=83, bootable\n",
            vec![(1, a.as_path()), (2, b.as_path())],
            "several bootable Linux (0x83) MBR partitions (1, 2)",
        ),
        (
            "size=32768, type=b\n",
            vec![(1, a.as_path())],
            "without a Linux partition (type 0x83) to boot (partitions 1: 0x0b)",
        ),
    ] {
        mbr_disk(&disk, 80, layout, &fill);
        let line = refused(&argv);
        assert!(
            line.contains(why) && line.contains(disk_s),
            "{layout}: {line}"
        );
        let (code, out, err) = launch(NSPAWN, &argv);
        assert_ne!(code, 0, "nspawn took {layout}: {out}{err}");
        assert_no_loops(d, layout);
    }
}

/// An MBR entry: boot indicator, type, first sector, sectors.
type RawEntry = (u8, u8, u32, u32);

/// Write MBR entry `i` of the 512-byte sector 0 of `disk`.
fn mbr_entry(disk: &Path, i: u64, boot: u8, kind: u8, start: u32, count: u32) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let mut e = [0u8; 16];
    e[0] = boot;
    e[4] = kind;
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&count.to_le_bytes());
    f.write_all_at(&e, 446 + 16 * i).unwrap();
    f.write_all_at(&[0x55, 0xAA], 510).unwrap();
}

/// Bad MBR tables, written byte by byte over a disk whose partition 1
/// holds a good filesystem: a partition past the image's end, two
/// overlapping partitions, a boot indicator that is neither 0 nor 0x80,
/// an extended partition linking to itself. Each is refused in one line
/// naming the image and what is wrong, and leaves no loop device.
#[test]
fn bad_mbr_tables_fail_in_one_line_leaving_nothing() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = dir.path();
    let a = marked_fs(d, "fs-a");
    let disk = d.join("bad.raw");
    let disk_s = disk.to_str().unwrap();
    let cases: [(&[RawEntry], &str); 5] = [
        (
            &[(0x80, 0x83, 2048, 200_000)],
            "MBR partition 1 (sectors 2048..202047) lies outside the image (sectors 1..81919)",
        ),
        (
            &[(0x80, 0x83, 2048, 32768), (0, 0x83, 30000, 8192)],
            "MBR partition 1 and partition 2 overlap (sectors 2048..34815 and 30000..38191)",
        ),
        (
            &[(0x81, 0x83, 2048, 32768)],
            "MBR entry 1 has boot indicator 0x81",
        ),
        (
            &[(0x80, 0x83, 2048, 32768), (0, 0x05, 40960, 8192)],
            "loops",
        ),
        (&[(0, 0xEE, 1, 81919)], "protective MBR"),
    ];
    for (entries, why) in cases {
        mbr_disk(&disk, 40, "size=32768, type=83, bootable\n", &[(1, &a)]);
        for i in 0..4 {
            mbr_entry(&disk, i, 0, 0, 0, 0);
        }
        for (i, &(boot, kind, start, count)) in entries.iter().enumerate() {
            mbr_entry(&disk, i as u64, boot, kind, start, count);
        }
        if entries.iter().any(|e| e.1 == 0x05) {
            // The extended partition's boot record: a logical partition
            // and a link back to this very record.
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            let mut ebr = [0u8; 512];
            ebr[446 + 4] = 0x83;
            ebr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
            ebr[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
            ebr[462 + 4] = 0x05;
            ebr[462 + 12..462 + 16].copy_from_slice(&1u32.to_le_bytes());
            ebr[510] = 0x55;
            ebr[511] = 0xAA;
            f.write_all_at(&ebr, 40960 * 512).unwrap();
        }
        let line = refused(&["-M", "i16-mbr-bad", "-i", disk_s, "true"]);
        assert!(
            line.contains(why) && line.contains(disk_s),
            "{entries:?}: {line:?} lacks {why:?}"
        );
        assert_no_loops(d, &format!("{entries:?}"));
        assert!(!Path::new("/run/nixspawn/i16-mbr-bad").exists());
        // 252 refuses a partition past the end too (EINVAL adding its
        // device); an overlapping one it does not use it boots past,
        // where we refuse the table.
        if why.contains("lies outside the image") {
            let (code, out, err) = launch(NSPAWN, &["-M", "i16-mbr-bad", "-i", disk_s, "true"]);
            assert_ne!(code, 0, "nspawn took it: {out}{err}");
            assert_no_loops(d, "nspawn's");
        }
    }
}

/// An MBR disk's partition gets a loop device of its own (at the
/// partition's offset), which goes when the launcher is SIGKILLed.
#[test]
fn an_mbr_partitions_loop_device_goes_after_sigkill() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let a = marked_fs(dir.path(), "fs-a");
    let disk = dir.path().join("kill.raw");
    mbr_disk(
        &disk,
        40,
        "start=4096, size=32768, type=83, bootable\n",
        &[(1, &a)],
    );
    let name = unique_name("i16-mbr-kill");
    let guest = image_guest(
        &name,
        &["-i", disk.to_str().unwrap()],
        &["sh", "-c", "cat /marker; sleep 1000"],
    );
    wait_for(
        "the partition's loop device",
        Duration::from_secs(20),
        || loops_under(dir.path()).len() == 1,
    );
    let attached = loops_under(dir.path());
    assert!(
        attached[0].contains(", offset 2097152, sizelimit 16777216"),
        "{attached:?}"
    );
    kill_and_see_released(guest, dir.path(), &name);
}

/// A `.nspawn` file beside the image, as nspawn finds it: `NAME.raw`'s is
/// `NAME.nspawn`, `NAME.img`'s is `NAME.img.nspawn` (only `.raw` leaves
/// the machine name), `-M OTHER`'s is `OTHER.nspawn`, all next to the
/// image. Beside the image it is untrusted: its Environment= and
/// Hostname= apply, its Bind= is ignored (and applies with
/// `--settings=trusted`). Through a symlink, the link's name and place
/// count, not its target's. The same answers under both launchers.
#[test]
fn a_settings_file_beside_the_image_is_read_as_by_nspawn() {
    privileged!();
    require_tools();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = dir.path();
    let data = d.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("file"), "from-host\n").unwrap();
    let settings = |tag: &str| {
        format!(
            "[Exec]\nEnvironment=BESIDE={tag}\nHostname=host-{tag}\n[Files]\nBind={}:/data\n",
            data.display()
        )
    };
    let fs = busybox_image(d, "ext4");
    let script = "echo $BESIDE; hostname; cat /data/file 2>/dev/null || echo no-bind";
    for (image, file, machine, extra, tag, want) in [
        (
            "i16set.raw",
            "i16set.nspawn",
            None,
            None,
            "raw",
            "raw\nhost-raw\nno-bind\n",
        ),
        (
            "i16set.img",
            "i16set.img.nspawn",
            None,
            None,
            "img",
            "img\nhost-img\nno-bind\n",
        ),
        (
            "i16set.raw",
            "i16set-m.nspawn",
            Some("i16set-m"),
            None,
            "m",
            "m\nhost-m\nno-bind\n",
        ),
        (
            "i16set.raw",
            "i16set.nspawn",
            None,
            Some("--settings=trusted"),
            "trusted",
            "trusted\nhost-trusted\nfrom-host\n",
        ),
    ] {
        let image = d.join(image);
        std::fs::copy(&fs, &image).unwrap();
        std::fs::write(d.join(file), settings(tag)).unwrap();
        let mut argv = vec!["-i", image.to_str().unwrap()];
        if let Some(m) = machine {
            argv.extend(["-M", m]);
        }
        argv.extend(extra);
        argv.extend(["sh", "-c", script]);
        let out = same(&argv);
        assert_eq!(out, want, "{image:?} {file} {machine:?} {extra:?}");
        std::fs::remove_file(d.join(file)).unwrap();
        std::fs::remove_file(&image).unwrap();
    }
    // A symlink to an image elsewhere: the machine is named after the
    // link and its settings file is the one beside the link.
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(&fs, elsewhere.join("i16set-real.raw")).unwrap();
    let link = d.join("i16set-link.raw");
    std::os::unix::fs::symlink("elsewhere/i16set-real.raw", &link).unwrap();
    std::fs::write(
        d.join("i16set-link.nspawn"),
        "[Exec]\nEnvironment=BESIDE=link\n",
    )
    .unwrap();
    std::fs::write(
        elsewhere.join("i16set-real.nspawn"),
        "[Exec]\nEnvironment=BESIDE=real\n",
    )
    .unwrap();
    let out = same(&[
        "-i",
        link.to_str().unwrap(),
        "sh",
        "-c",
        "echo $BESIDE; hostname",
    ]);
    assert_eq!(out, "link\ni16set-link\n");
    assert_no_loops(d, "");
}
