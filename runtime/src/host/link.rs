//! What the guest is to a systemd host: a transient scope (without
//! `--keep-unit`) and a machine registered with systemd-machined, made
//! again for every boot as systemd-nspawn does. Without a service manager
//! and machined there is no link, and the cgroups are ours alone.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::host::bus::Bus;
use crate::host::machined::{self, Reach, Via};
use crate::host::scope::{self, Scope, ScopeRequest};
use crate::launcher::janitor::claim::{Claim, JanitorLink};
use crate::spec::mounts::CustomMount;
use crate::spec::{Register, Spec};

pub(crate) struct HostLink<'a> {
    spec: &'a Spec,
    bus: Bus,
    /// Told of each scope and registration, to undo them if we die.
    janitor: JanitorLink,
    /// Register with machined (a failure is fatal under `--register=yes`).
    register: bool,
    /// The scope unit to allocate per boot (none under `--keep-unit`).
    scope_unit: Option<String>,
    scope: Option<Scope>,
    registered: Option<Via>,
}

/// Whether the host's service manager is systemd (as sd_booted() decides).
fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

impl<'a> HostLink<'a> {
    /// Connect to the host if registration or a scope is wanted and possible.
    /// `Ok(None)` means standalone; the reason, if worth saying, is in the notice.
    pub fn open(
        spec: &'a Spec,
        janitor: &JanitorLink,
        notice: &mut dyn FnMut(String),
    ) -> Result<Option<Self>> {
        let reach = if spec.register == Register::No {
            None
        } else {
            Some(machined::probe())
        };
        let register = matches!(reach, Some(Reach::Available { .. }));
        if spec.register == Register::Yes && !register {
            return Err(Error::Bus {
                step: format!(
                    "registering {} with systemd-machined (--register=yes)",
                    spec.machine
                ),
                message: reach.map_or_else(String::new, |r| r.explain()),
            });
        }
        let allocate_scope = !spec.keep_unit && systemd_booted();
        if !register && !allocate_scope {
            return Ok(None);
        }
        let bus = match Bus::system() {
            Ok(bus) => bus,
            Err(e) if spec.register == Register::Yes => return Err(e),
            Err(e) => {
                notice(format!("{e}; running without a scope or registration"));
                return Ok(None);
            }
        };
        Ok(Some(HostLink {
            spec,
            bus,
            janitor: janitor.try_clone()?,
            register,
            scope_unit: allocate_scope.then(|| {
                scope::unit_name(
                    &spec.machine,
                    if machined::has_varlink() {
                        scope::Naming::Own
                    } else {
                        scope::Naming::Machined
                    },
                )
            }),
            scope: None,
            registered: None,
        }))
    }

    /// The scope unit whose cgroup holds the guest, if we allocate one.
    pub fn scope_unit(&self) -> Option<&str> {
        self.scope_unit.as_deref()
    }

    /// Before a boot: start the scope (its cgroup is where `expected` says).
    pub fn begin_boot(&mut self, expected: &Path) -> Result<()> {
        let spec = self.spec;
        let Some(unit) = &self.scope_unit else {
            return Ok(());
        };
        let req = ScopeRequest {
            machine: &spec.machine,
            unit: unit.clone(),
            kill_signal: spec.kill_signal,
            device_binds: device_binds(&spec.mounts),
            slice: spec.process.slice.as_deref(),
            properties: &spec.process.properties,
        };
        let scope = Scope::start(&self.bus, &req)?;
        self.janitor
            .note(&Claim::Scope(Some(scope.unit.clone())), None)?;
        if scope.cgroup != expected {
            let got = scope.cgroup.clone();
            self.finish_scope(scope);
            return Err(Error::Bus {
                step: format!("starting {unit}"),
                message: format!(
                    "systemd put it at cgroup {}, not {}",
                    got.display(),
                    expected.display()
                ),
            });
        }
        self.scope = Some(scope);
        Ok(())
    }

    /// The guest's PID 1 is running in its cgroup: drop the scope's
    /// placeholder and register the machine.
    pub fn guest_started(
        &mut self,
        leader: i32,
        pidfd: BorrowedFd<'_>,
        ifindices: &[u32],
        notice: &mut dyn FnMut(String),
    ) -> Result<()> {
        if let Some(scope) = &mut self.scope {
            scope.release_placeholder();
        }
        if !self.register {
            return Ok(());
        }
        let spec = self.spec;
        let machine = machined::Machine {
            name: &spec.machine,
            uuid: &spec.uuid,
            root: spec
                .directory
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            ifindices: ifindices.iter().map(|&i| i.cast_signed()).collect(),
        };
        match machined::register(&self.bus, &machine, leader, pidfd) {
            Ok(via) => {
                self.registered = Some(via);
                self.janitor.note(&Claim::Registered(Some(via)), None)
            }
            Err(e) if spec.register != Register::Yes => {
                notice(format!("{e}; continuing unregistered"));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The bus socket, while systemd may ask us to stop the scope.
    pub fn stop_request_fd(&self) -> Option<BorrowedFd<'_>> {
        self.scope.as_ref().map(|_| self.bus.fd())
    }

    /// Whether systemd (and nobody else) asked us, the scope's
    /// controller, to stop the guest.
    pub fn stop_requested(&mut self) -> bool {
        let Some(scope) = &mut self.scope else {
            return false;
        };
        let mut asked = false;
        for m in self.bus.drain_signals() {
            asked |= scope.is_stop_request(&m);
        }
        asked
    }

    /// After a boot: unregister and let go of the scope.
    pub fn end_boot(&mut self) {
        if let Some(via) = self.registered.take() {
            // Said first: a janitor must never unregister a machine that
            // may no longer be ours.
            let _ = self.janitor.note(&Claim::Registered(None), None);
            machined::unregister(Some(&self.bus), &self.spec.machine, via);
        }
        if let Some(scope) = self.scope.take() {
            self.finish_scope(scope);
        }
    }

    fn finish_scope(&self, scope: Scope) {
        let _ = self.janitor.note(&Claim::Scope(None), None);
        scope.finish(&self.bus);
    }
}

impl Drop for HostLink<'_> {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            self.finish_scope(scope);
        }
    }
}

/// Device nodes bound into the guest, which the scope's device policy must allow.
fn device_binds(mounts: &[CustomMount]) -> Vec<(PathBuf, bool)> {
    use std::os::unix::fs::FileTypeExt;
    mounts
        .iter()
        .filter_map(|m| match m {
            CustomMount::Bind {
                source, read_only, ..
            } => std::fs::metadata(source)
                .ok()
                .filter(|md| md.file_type().is_char_device() || md.file_type().is_block_device())
                .map(|_| (source.clone(), *read_only)),
            _ => None,
        })
        .collect()
}
