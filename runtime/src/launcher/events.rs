//! What a launch reports to its caller: events while it runs (for the
//! binary to print) and how the guest ended (for its exit status).

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// PID 1 exited with this status (`systemctl exit N`, or a command).
    Exited(i32),
    /// poweroff or halt (the kernel ended PID 1 with SIGINT).
    PoweredOff,
    /// reboot (SIGHUP); only returned under `--keep-unit`, else we restart.
    Rebooted,
    /// Killed by a signal other than the two above.
    Killed(i32),
}

impl Outcome {
    /// The launcher's exit status, as systemd-nspawn maps it.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Exited(133) => 1,
            Outcome::Exited(n) => n,
            Outcome::PoweredOff => 0,
            Outcome::Rebooted => 133,
            Outcome::Killed(_) => 1,
        }
    }
}

/// What happens during a run, for the caller to report.
#[derive(Debug)]
pub enum Event<'a> {
    /// Something the user should know that is not an error.
    Notice(&'a str),
    /// Something went wrong and was ignored, as nspawn warns and goes on
    /// (shown even where notices are not, as nspawn's `-q` still shows
    /// warnings).
    Warning(&'a str),
    /// Checks passed and resources are claimed; the guest is about to start.
    Spawning,
    Started {
        leader: i32,
    },
    Ready,
    Status(&'a str),
    Stopping,
    Rebooting,
    /// The user typed the console escape; the guest is being killed.
    EscapeKill,
}

pub trait Observer {
    fn event(&mut self, event: Event<'_>);
}

impl<F: FnMut(Event<'_>)> Observer for F {
    fn event(&mut self, event: Event<'_>) {
        self(event)
    }
}
