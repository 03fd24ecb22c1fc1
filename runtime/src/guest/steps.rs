//! The container process's setup as a plan: which steps, in which order,
//! decided from the spec alone (no system access), so that the decisions
//! — what runs in the outer process and what only the guest's own PID 1
//! may do, what is sealed before the guest's user namespace exists, what an
//! ephemeral run skips — are unit-tested without root. `Setup` (setup.rs)
//! carries the steps out; a recording `Ops` stands in for it in tests.

use crate::error::Result;
use crate::spec::Spec;
use crate::spec::filesystem::Volatile;

/// One step of the container process's setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// PDEATHSIG, and end if the launcher is already gone.
    DieWithLauncher,
    /// Wait until the launcher registered us and moved us into `payload`.
    AwaitPlacement,
    /// `--network-namespace-path`: join it before /sys is mounted (sysfs
    /// shows the namespace of whoever mounts it); PID 1 under a user
    /// namespace inherits it.
    JoinNetworkNamespace,
    UnshareCgroupNamespace,
    /// Make every mount private (nothing propagates to the host).
    IsolateMounts,
    /// The tree (or an empty tmpfs) on the mount point; `ephemeral` puts
    /// an overlay with a tmpfs upper layer on it, `idmapped` uses the
    /// launcher's idmapped clone of the tree.
    AssembleRoot {
        ephemeral: bool,
        idmapped: bool,
    },
    LoopbackUp,
    MountRunAndTmp,
    /// /run/host: os-release, container-manager, notify socket, the
    /// inaccessible nodes.
    PopulateRunHost,
    MountDev,
    ResolveProcAndSys,
    /// The guest's own /proc, `/proc/sys/net` writable with a private
    /// network; `masked`: nspawn's read-only and masked entries (all but
    /// `--nested-sandbox`).
    MountProc {
        private_network: bool,
        masked: bool,
    },
    /// A read-only /sys of the guest's network namespace, with cgroup2.
    MountSys,
    /// A read-only bind of the host's /sys (under a user namespace on the
    /// host's network, where no new sysfs may be mounted).
    BindHostSys,
    MountPtsAndMqueue,
    /// Full /proc and /sys pinned at /run/host, so the guest's PID 1 (in a
    /// user namespace) may mount its own.
    PinApiFilesystems,
    /// /nix/store: the closure only (one overlay, or a bind per path), or
    /// the host's whole store; `idmapped` takes it from the launcher's
    /// idmapped clone of the store (the overlay has its layers idmapped).
    MountStore {
        kind: StoreKind,
        idmapped: bool,
    },
    /// The user's `--bind`/`--tmpfs` number `n` (in the spec's order).
    CustomMount(usize),
    /// /etc/localtime and /etc/resolv.conf as `--timezone=`/`--resolv-conf=`
    /// decided, in systemd-nspawn's order, after the user's mounts (a bind
    /// over either stacks up on them).
    SetUpTimezone,
    SetUpResolvConf,
    LinkJournal,
    /// The per-path store's tmpfs read-only (before the guest's user
    /// namespace exists, so the kernel locks the flag there).
    SealStore,
    LinkProfile,
    PassNixDaemon,
    InstallCredentials,
    /// /run/host read-only.
    SealRunHost,
    SetHostname,
    CreateConsole,
    /// Under a user namespace, PID 1's first steps.
    WaitForIdMaps,
    BecomeGuestRoot,
    /// Tell the outer process our /proc and /sys are up; wait for the pins
    /// to be gone.
    WaitForPins,
    HandOverConsole,
    ShareMounts,
    /// The launcher made this boot's links (it can only once the guest's
    /// network namespace exists, which under a user namespace PID 1 makes).
    AwaitNetworkLinks,
    /// The last steps before exec, in the pivoted root.
    AttachConsole,
    Chdir,
    /// The init (`--boot`) or command to exec, looked up while all
    /// capabilities are still held.
    FindPayload,
    InstallSeccomp,
    /// `--restrict-address-families` and `--suppress-sync`: filters of
    /// their own on top of the main one.
    InstallProcessFilters,
    /// OOM score, CPU affinity, personality, resource limits: set by the
    /// process PID 1 comes from, with the host's privileges, and inherited.
    ApplyProcessLimits,
    /// `--user`: become the guest user found with the payload.
    SwitchUser,
    DropCapabilities,
    NoNewPrivileges,
    CloseDescriptors,
    ResetSignals,
}

impl Step {
    /// The step's name in messages and `--debug` timings.
    pub fn name(self) -> &'static str {
        match self {
            Step::DieWithLauncher => "die with the launcher",
            Step::AwaitPlacement => "wait for registration",
            Step::JoinNetworkNamespace => "join the network namespace",
            Step::UnshareCgroupNamespace => "unshare the cgroup namespace",
            Step::IsolateMounts => "isolate mounts from the host",
            Step::AssembleRoot { .. } => "assemble the root",
            Step::LoopbackUp => "bring up lo",
            Step::MountRunAndTmp => "mount /run and /tmp",
            Step::PopulateRunHost => "populate /run/host",
            Step::MountDev => "mount /dev",
            Step::ResolveProcAndSys => "resolve /proc and /sys",
            Step::MountProc { .. } => "mount /proc",
            Step::MountSys => "mount /sys",
            Step::BindHostSys => "bind /sys",
            Step::MountPtsAndMqueue => "mount /dev/pts and /dev/mqueue",
            Step::PinApiFilesystems => "pin /proc and /sys",
            Step::MountStore { .. } => "mount the store",
            Step::CustomMount(_) => "apply custom mounts",
            Step::SetUpTimezone => "set up the timezone",
            Step::SetUpResolvConf => "set up resolv.conf",
            Step::LinkJournal => "link the journal",
            Step::SealStore => "seal the store",
            Step::LinkProfile => "link the system profile",
            Step::PassNixDaemon => "pass the nix-daemon socket",
            Step::InstallCredentials => "install credentials",
            Step::SealRunHost => "seal /run/host",
            Step::SetHostname => "set the hostname",
            Step::CreateConsole => "create the console",
            Step::WaitForIdMaps => "wait for the ID maps",
            Step::BecomeGuestRoot => "become the guest's root",
            Step::WaitForPins => "wait for the pins to go",
            Step::HandOverConsole => "hand over the console",
            Step::ShareMounts => "share mounts",
            Step::AwaitNetworkLinks => "wait for the network links",
            Step::AttachConsole => "attach the console",
            Step::Chdir => "chdir",
            Step::FindPayload => "find the payload",
            Step::InstallSeccomp => "install the seccomp filter",
            Step::InstallProcessFilters => "install the address family and sync filters",
            Step::ApplyProcessLimits => {
                "apply the resource limits, OOM score, affinity and personality"
            }
            Step::SwitchUser => "switch to the --user user",
            Step::DropCapabilities => "drop capabilities",
            Step::NoNewPrivileges => "set no_new_privs",
            Step::CloseDescriptors => "close descriptors",
            Step::ResetSignals => "reset signals",
        }
    }
}

/// Which /nix/store the guest gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// The host's whole store (`--shared-store`), bound read-only.
    Shared,
    /// The closure as the launcher's one read-only overlay mount, attached
    /// as it is: read-only down to its superblock, nothing to seal.
    Overlay,
    /// The closure as one bind per path on a tmpfs (the launcher could not
    /// make the overlay and said why); the tmpfs is sealed after the
    /// user's mounts, which may need mount points in it.
    PerPath,
}

/// What the plan depends on besides the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The guest gets a user namespace of its own (outer process + PID 1).
    pub userns: bool,
    /// The launcher prepared idmapped clones of the tree and store.
    pub idmapped: bool,
    /// Wait for placement in a systemd scope before the cgroup namespace.
    pub await_placement: bool,
    /// The launcher makes links in the guest's network namespace.
    pub await_links: bool,
    /// `--resolv-conf=`/`--timezone=` came out as something to do.
    pub resolv_conf: bool,
    pub timezone: bool,
    /// The launcher made the closure-only store as one overlay mount.
    pub store_overlay: bool,
}

/// Who carries the steps out: the real setup, or a recorder in tests.
pub(crate) trait Ops {
    fn run(&mut self, step: Step) -> Result<()>;
}

/// The steps of the process cloned by the launcher, up to (not including)
/// the hand-over of its handles: everything that needs the host's
/// privileges. Without a user namespace this is also the guest's PID 1.
pub(crate) fn outer(spec: &Spec, shape: Shape) -> Vec<Step> {
    let plain = !shape.userns;
    let mut s = vec![Step::DieWithLauncher];
    if shape.await_placement && plain {
        s.push(Step::AwaitPlacement);
    }
    if spec.network.namespace_path.is_some() {
        s.push(Step::JoinNetworkNamespace);
    }
    if plain {
        s.push(Step::UnshareCgroupNamespace);
    }
    s.extend([
        Step::IsolateMounts,
        Step::AssembleRoot {
            // -x with --volatile=yes|state: the volatile layout alone
            // (nspawn lays it over its copy of the tree: the same view).
            ephemeral: matches!(
                (spec.ephemeral, spec.filesystem.volatile),
                (true, Volatile::No) | (_, Volatile::Overlay)
            ),
            idmapped: shape.idmapped && spec.directory.is_some(),
        },
    ]);
    if spec.private_network && plain {
        s.push(Step::LoopbackUp);
    }
    s.extend([
        Step::MountRunAndTmp,
        Step::PopulateRunHost,
        Step::MountDev,
        Step::ResolveProcAndSys,
    ]);
    if plain {
        s.extend([
            Step::MountProc {
                private_network: spec.private_network,
                masked: true,
            },
            Step::MountSys,
            Step::MountPtsAndMqueue,
        ]);
    } else {
        s.push(Step::PinApiFilesystems);
    }
    if let Some(kind) = store_kind(spec, shape) {
        s.push(Step::MountStore {
            kind,
            idmapped: shape.idmapped,
        });
    }
    s.extend((0..spec.mounts.len()).map(Step::CustomMount));
    if shape.timezone {
        s.push(Step::SetUpTimezone);
    }
    if shape.resolv_conf {
        s.push(Step::SetUpResolvConf);
    }
    // An ephemeral run's journal goes with it, as with nspawn.
    if spec.directory.is_some() && !spec.ephemeral {
        s.push(Step::LinkJournal);
    }
    if let Some(store) = &spec.store {
        if let Some(StoreKind::PerPath) = store_kind(spec, shape) {
            s.push(Step::SealStore);
        }
        s.push(Step::LinkProfile);
        if store.nix_daemon {
            s.push(Step::PassNixDaemon);
        }
    }
    if !spec.credentials.is_empty() {
        s.push(Step::InstallCredentials);
    }
    s.push(Step::SealRunHost);
    if plain {
        s.push(Step::SetHostname);
        if spec.console.has_pty() {
            s.push(Step::CreateConsole);
        }
    }
    s.push(Step::ApplyProcessLimits);
    s
}

/// Which store the guest gets, if any.
fn store_kind(spec: &Spec, shape: Shape) -> Option<StoreKind> {
    spec.store.as_ref().map(|store| match &store.closure {
        None => StoreKind::Shared,
        Some(_) if shape.store_overlay => StoreKind::Overlay,
        Some(_) => StoreKind::PerPath,
    })
}

/// The steps of the guest's PID 1 in its own user namespace, once cloned
/// by the outer process, up to the final ones.
pub(crate) fn inner(spec: &Spec) -> Vec<Step> {
    let mut s = vec![
        Step::DieWithLauncher,
        Step::WaitForIdMaps,
        Step::BecomeGuestRoot,
        // The uid change cleared PDEATHSIG: again.
        Step::DieWithLauncher,
        Step::UnshareCgroupNamespace,
    ];
    if spec.private_network {
        s.push(Step::LoopbackUp);
    }
    // Only the guest's own procfs may go unmasked: the outer process's
    // (no user namespace) keeps nspawn's masks whatever is asked.
    s.push(Step::MountProc {
        private_network: spec.private_network,
        masked: !spec.nested_sandbox,
    });
    s.push(if spec.private_network {
        Step::MountSys
    } else {
        Step::BindHostSys
    });
    s.extend([
        Step::WaitForPins,
        Step::MountPtsAndMqueue,
        Step::SetHostname,
    ]);
    if spec.console.has_pty() {
        s.extend([Step::CreateConsole, Step::HandOverConsole]);
    }
    s.push(Step::ShareMounts);
    s
}

/// The last steps before exec, in the pivoted root. The filter goes on
/// before the capabilities are dropped: without no_new_privs loading it
/// needs CAP_SYS_ADMIN, which `--drop-capability` may take.
pub(crate) fn last(spec: &Spec, shape: Shape) -> Vec<Step> {
    let mut s = Vec::new();
    if shape.await_links {
        s.push(Step::AwaitNetworkLinks);
    }
    s.extend([Step::AttachConsole, Step::Chdir, Step::FindPayload]);
    if spec.seccomp {
        s.push(Step::InstallSeccomp);
    }
    // As nspawn: these go on even without the main filter.
    if spec.process.address_families.is_some() || spec.process.suppress_sync {
        s.push(Step::InstallProcessFilters);
    }
    if spec.process.user.is_some() {
        s.push(Step::SwitchUser);
    }
    s.push(Step::DropCapabilities);
    if spec.no_new_privileges {
        s.push(Step::NoNewPrivileges);
    }
    s.extend([Step::CloseDescriptors, Step::ResetSignals]);
    s
}

/// Carry `steps` out in order, timing each for `--debug`; the first
/// failure comes back with the step's name.
pub(crate) fn drive(
    ops: &mut dyn Ops,
    steps: &[Step],
) -> std::result::Result<(), (String, crate::error::Error)> {
    for &step in steps {
        let start = std::time::Instant::now();
        let r = ops.run(step);
        tracing::debug!(target: "nixspawn::child", "{}: {} µs{}", step.name(), start.elapsed().as_micros(), if r.is_err() { " (failed)" } else { "" });
        r.map_err(|e| (step.name().to_owned(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::mounts::CustomMount;
    use crate::spec::{ConsoleMode, StoreSpec};

    /// Records the steps it is asked to run, failing at `fail_at`.
    struct Recorder {
        ran: Vec<Step>,
        fail_at: Option<Step>,
    }

    impl Ops for Recorder {
        fn run(&mut self, step: Step) -> Result<()> {
            self.ran.push(step);
            if self.fail_at == Some(step) {
                return Err(crate::error::Error::io(
                    "mounting",
                    "/x",
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ));
            }
            Ok(())
        }
    }

    fn spec() -> Spec {
        crate::spec::tests::minimal()
    }

    const PLAIN: Shape = Shape {
        userns: false,
        idmapped: false,
        await_placement: false,
        await_links: false,
        resolv_conf: false,
        timezone: false,
        store_overlay: false,
    };
    const USERNS: Shape = Shape {
        userns: true,
        idmapped: true,
        await_placement: true,
        await_links: false,
        resolv_conf: false,
        timezone: false,
        store_overlay: false,
    };

    fn pos(steps: &[Step], step: Step) -> usize {
        steps
            .iter()
            .position(|s| *s == step)
            .unwrap_or_else(|| panic!("{step:?} missing from {steps:?}"))
    }

    #[test]
    fn a_plain_guest_mounts_its_own_api_filesystems_and_is_pid_1() {
        let s = outer(&spec(), PLAIN);
        assert_eq!(s[0], Step::DieWithLauncher);
        assert!(s.contains(&Step::UnshareCgroupNamespace));
        assert!(s.contains(&Step::MountProc {
            private_network: false,
            masked: true
        }));
        assert!(s.contains(&Step::MountSys));
        assert!(!s.contains(&Step::PinApiFilesystems));
        assert!(s.contains(&Step::SetHostname));
        assert!(s.contains(&Step::CreateConsole), "interactive by default");
        assert!(pos(&s, Step::MountRunAndTmp) < pos(&s, Step::PopulateRunHost));
        assert_eq!(s[s.len() - 2], Step::CreateConsole);
        // Inherited by PID 1 from here, set with the host's privileges.
        assert_eq!(*s.last().unwrap(), Step::ApplyProcessLimits);
    }

    #[test]
    fn under_a_user_namespace_the_outer_process_only_pins_what_pid_1_mounts() {
        let s = outer(&spec(), USERNS);
        for absent in [
            Step::UnshareCgroupNamespace,
            Step::AwaitPlacement,
            Step::MountSys,
            Step::MountPtsAndMqueue,
            Step::SetHostname,
            Step::CreateConsole,
            Step::MountProc {
                private_network: false,
                masked: true,
            },
        ] {
            assert!(!s.contains(&absent), "{absent:?} in {s:?}");
        }
        assert!(s.contains(&Step::PinApiFilesystems));
        let i = inner(&spec());
        assert_eq!(
            &i[..5],
            &[
                Step::DieWithLauncher,
                Step::WaitForIdMaps,
                Step::BecomeGuestRoot,
                Step::DieWithLauncher,
                Step::UnshareCgroupNamespace
            ]
        );
        // The host's /sys is bound where no sysfs of our own may be mounted.
        assert!(i.contains(&Step::BindHostSys));
        assert!(
            pos(
                &i,
                Step::MountProc {
                    private_network: false,
                    masked: true
                }
            ) < pos(&i, Step::WaitForPins)
        );
        assert!(pos(&i, Step::WaitForPins) < pos(&i, Step::MountPtsAndMqueue));
        assert_eq!(*i.last().unwrap(), Step::ShareMounts);
    }

    #[test]
    fn a_private_network_brings_lo_up_where_the_namespace_is_made() {
        let mut sp = spec();
        sp.private_network = true;
        assert!(outer(&sp, PLAIN).contains(&Step::LoopbackUp));
        assert!(!outer(&sp, USERNS).contains(&Step::LoopbackUp));
        let i = inner(&sp);
        assert!(i.contains(&Step::LoopbackUp));
        assert!(i.contains(&Step::MountSys) && !i.contains(&Step::BindHostSys));
        assert!(i.contains(&Step::MountProc {
            private_network: true,
            masked: true
        }));
    }

    #[test]
    fn the_store_is_sealed_by_the_outer_process_before_the_guest_exists() {
        let mut sp = spec();
        sp.store = Some(StoreSpec {
            toplevel: "/nix/store/00000000000000000000000000000000-x".into(),
            closure: Some(Vec::new()),
            nix_daemon: true,
        });
        for shape in [PLAIN, USERNS] {
            let s = outer(&sp, shape);
            let mount = pos(
                &s,
                Step::MountStore {
                    kind: StoreKind::PerPath,
                    idmapped: shape.idmapped,
                },
            );
            assert!(mount < pos(&s, Step::SealStore));
            assert!(pos(&s, Step::SealStore) < pos(&s, Step::SealRunHost));
            assert!(s.contains(&Step::PassNixDaemon));
        }
        assert!(!inner(&sp).contains(&Step::SealStore));
    }

    #[test]
    fn an_overlay_store_is_attached_as_it_is_and_never_sealed() {
        let mut sp = spec();
        sp.store = Some(StoreSpec {
            toplevel: "/nix/store/00000000000000000000000000000000-x".into(),
            closure: Some(Vec::new()),
            nix_daemon: false,
        });
        sp.mounts = vec![
            CustomMount::parse_bind(
                "/tmp:/nix/store/y",
                crate::spec::mounts::BindAccess::ReadOnly,
            )
            .unwrap(),
        ];
        for shape in [PLAIN, USERNS] {
            let shape = Shape {
                store_overlay: true,
                ..shape
            };
            let s = outer(&sp, shape);
            let mount = pos(
                &s,
                Step::MountStore {
                    kind: StoreKind::Overlay,
                    idmapped: shape.idmapped,
                },
            );
            // The user's mounts on the store land in the overlay's mount
            // points; its superblock is read-only, so no seal follows.
            assert!(mount < pos(&s, Step::CustomMount(0)));
            assert!(!s.contains(&Step::SealStore));
            assert!(pos(&s, Step::CustomMount(0)) < pos(&s, Step::LinkProfile));
        }
        // Without a closure there is no overlay, whatever the launcher says.
        sp.store.as_mut().unwrap().closure = None;
        let shape = Shape {
            store_overlay: true,
            ..PLAIN
        };
        let s = outer(&sp, shape);
        assert!(s.contains(&Step::MountStore {
            kind: StoreKind::Shared,
            idmapped: false
        }));
        assert!(!s.contains(&Step::SealStore));
    }

    #[test]
    fn custom_mounts_follow_the_store_in_the_users_order() {
        let mut sp = spec();
        sp.mounts = vec![
            CustomMount::parse_tmpfs("/a").unwrap(),
            CustomMount::parse_bind("/tmp:/b", crate::spec::mounts::BindAccess::ReadOnly).unwrap(),
        ];
        let s = outer(&sp, PLAIN);
        assert!(pos(&s, Step::CustomMount(0)) < pos(&s, Step::CustomMount(1)));
        assert!(pos(&s, Step::ResolveProcAndSys) < pos(&s, Step::CustomMount(0)));
    }

    #[test]
    fn ephemeral_runs_link_no_journal_and_credentials_go_in_before_the_seal() {
        let mut sp = spec();
        sp.directory = Some("/srv/tree".into());
        assert!(outer(&sp, PLAIN).contains(&Step::LinkJournal));
        sp.ephemeral = true;
        let s = outer(&sp, PLAIN);
        assert!(!s.contains(&Step::LinkJournal));
        assert!(s.contains(&Step::AssembleRoot {
            ephemeral: true,
            idmapped: false
        }));
        sp.credentials = vec![crate::spec::credentials::parse_set("a:b").unwrap()];
        let s = outer(&sp, PLAIN);
        assert!(pos(&s, Step::InstallCredentials) < pos(&s, Step::SealRunHost));
        // An empty root has no tree to idmap.
        sp.directory = None;
        assert!(outer(&sp, USERNS).contains(&Step::AssembleRoot {
            ephemeral: true,
            idmapped: false
        }));
    }

    #[test]
    fn volatile_overlay_is_the_ephemeral_overlay_and_other_modes_replace_it() {
        let mut sp = spec();
        sp.directory = Some("/srv/tree".into());
        let overlaid = |sp: &Spec| {
            outer(sp, PLAIN).contains(&Step::AssembleRoot {
                ephemeral: true,
                idmapped: false,
            })
        };
        for (ephemeral, volatile, expected) in [
            (false, Volatile::No, false),
            (true, Volatile::No, true),
            (false, Volatile::Overlay, true),
            (true, Volatile::Overlay, true),
            // As nspawn's volatile modes over its copy: the same view.
            (true, Volatile::Yes, false),
            (true, Volatile::State, false),
            (false, Volatile::State, false),
        ] {
            sp.ephemeral = ephemeral;
            sp.filesystem.volatile = volatile;
            assert_eq!(overlaid(&sp), expected, "-x {ephemeral} {volatile:?}");
        }
    }

    #[test]
    fn a_pipe_console_makes_no_pty_and_placement_is_awaited_first() {
        let mut sp = spec();
        sp.console = ConsoleMode::Pipe;
        let shape = Shape {
            await_placement: true,
            ..PLAIN
        };
        let s = outer(&sp, shape);
        assert!(!s.contains(&Step::CreateConsole));
        assert_eq!(
            &s[..3],
            &[
                Step::DieWithLauncher,
                Step::AwaitPlacement,
                Step::UnshareCgroupNamespace
            ]
        );
        assert!(!inner(&sp).contains(&Step::HandOverConsole));
    }

    #[test]
    fn network_steps_join_first_set_up_etc_after_the_users_mounts_and_wait_for_links_last() {
        let mut sp = spec();
        sp.private_network = true;
        sp.mounts = vec![
            CustomMount::parse_bind(
                "/tmp:/etc/resolv.conf",
                crate::spec::mounts::BindAccess::ReadOnly,
            )
            .unwrap(),
        ];
        sp.directory = Some("/srv/tree".into());
        let net = Shape {
            await_links: true,
            resolv_conf: true,
            timezone: true,
            ..PLAIN
        };
        // Nothing about the network without a reason.
        let s = outer(&sp, PLAIN);
        for absent in [
            Step::JoinNetworkNamespace,
            Step::SetUpTimezone,
            Step::SetUpResolvConf,
        ] {
            assert!(!s.contains(&absent), "{absent:?} in {s:?}");
        }
        assert!(!last(&sp, PLAIN).contains(&Step::AwaitNetworkLinks));
        // systemd-nspawn's order: the user's mounts, timezone, resolv.conf;
        // all before the tree's journal link and /run/host is sealed.
        for shape in [
            net,
            Shape {
                userns: true,
                ..net
            },
        ] {
            let s = outer(&sp, shape);
            assert!(pos(&s, Step::CustomMount(0)) < pos(&s, Step::SetUpTimezone));
            assert!(pos(&s, Step::SetUpTimezone) < pos(&s, Step::SetUpResolvConf));
            assert!(pos(&s, Step::SetUpResolvConf) < pos(&s, Step::LinkJournal));
            assert!(pos(&s, Step::SetUpResolvConf) < pos(&s, Step::SealRunHost));
            assert!(!inner(&sp).contains(&Step::SetUpResolvConf));
            // The links come before anything of the payload's.
            assert_eq!(last(&sp, shape)[0], Step::AwaitNetworkLinks);
        }
        // A private network: lo up and /proc/sys/net writable where the
        // namespace is made; the launcher's links are awaited only there.
        assert!(outer(&sp, net).contains(&Step::LoopbackUp));
        assert!(outer(&sp, net).contains(&Step::MountProc {
            private_network: true,
            masked: true
        }));
        // --network-namespace-path: joined before /sys is mounted and before
        // the cgroup namespace, after placement; under a user namespace by
        // the outer process (PID 1 inherits it), which mounts no /sys.
        sp.private_network = false;
        sp.network.namespace_path = Some("/run/netns/x".into());
        let placed = Shape {
            await_placement: true,
            ..PLAIN
        };
        let s = outer(&sp, placed);
        assert_eq!(
            &s[..4],
            &[
                Step::DieWithLauncher,
                Step::AwaitPlacement,
                Step::JoinNetworkNamespace,
                Step::UnshareCgroupNamespace
            ]
        );
        assert!(pos(&s, Step::JoinNetworkNamespace) < pos(&s, Step::MountSys));
        assert!(!s.contains(&Step::LoopbackUp));
        let s = outer(&sp, USERNS);
        assert!(pos(&s, Step::JoinNetworkNamespace) < pos(&s, Step::PinApiFilesystems));
        assert!(!inner(&sp).contains(&Step::JoinNetworkNamespace));
        assert!(inner(&sp).contains(&Step::BindHostSys));
    }

    #[test]
    fn the_filter_goes_on_before_capabilities_are_dropped() {
        let mut sp = spec();
        let l = last(&sp, PLAIN);
        assert!(pos(&l, Step::FindPayload) < pos(&l, Step::InstallSeccomp));
        assert!(pos(&l, Step::InstallSeccomp) < pos(&l, Step::DropCapabilities));
        assert!(!l.contains(&Step::NoNewPrivileges));
        assert_eq!(*l.last().unwrap(), Step::ResetSignals);
        sp.seccomp = false;
        sp.no_new_privileges = true;
        let l = last(&sp, PLAIN);
        assert!(!l.contains(&Step::InstallSeccomp));
        assert!(pos(&l, Step::DropCapabilities) < pos(&l, Step::NoNewPrivileges));
    }

    #[test]
    fn a_nested_sandbox_unmasks_only_the_guests_own_proc() {
        let mut sp = spec();
        sp.nested_sandbox = true;
        let i = inner(&sp);
        assert!(i.contains(&Step::MountProc {
            private_network: false,
            masked: false
        }));
        assert!(
            !i.iter()
                .any(|s| matches!(s, Step::MountProc { masked: true, .. }))
        );
        // Without a user namespace the outer process is PID 1: its /proc
        // keeps the masks (the launcher refuses the option there anyway).
        assert!(outer(&sp, PLAIN).contains(&Step::MountProc {
            private_network: false,
            masked: true
        }));
        assert!(
            !outer(&sp, USERNS)
                .iter()
                .any(|s| matches!(s, Step::MountProc { .. }))
        );
        // /sys is untouched by the option.
        assert!(i.contains(&Step::BindHostSys));
    }

    #[test]
    fn the_first_failure_stops_the_plan_and_names_its_step() {
        let mut r = Recorder {
            ran: Vec::new(),
            fail_at: Some(Step::MountDev),
        };
        let steps = outer(&spec(), PLAIN);
        let (step, err) = drive(&mut r, &steps).unwrap_err();
        assert_eq!(step, "mount /dev");
        assert_eq!(err.errno(), Some(libc::EPERM));
        assert_eq!(*r.ran.last().unwrap(), Step::MountDev);
        assert!(r.ran.len() < steps.len());
    }
}
