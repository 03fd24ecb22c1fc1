//! nixspawn's runtime: a container spec in, a running (and finally
//! cleaned-up) container out. No command line and no printing here; the
//! binaries in `src/` do that.

mod bus;
pub mod capabilities;
pub mod cgroup;
mod channel;
mod child;
pub mod closure;
pub mod console;
pub mod container;
pub mod credentials;
mod devfs;
pub mod devices;
pub mod enter;
pub mod environment;
pub mod error;
mod hostlink;
pub mod identity;
pub mod idmap;
mod janitor;
pub mod journal;
pub mod lockfile;
pub mod machined;
pub mod mounts;
pub mod notify;
pub mod process;
mod procfs;
pub mod resolve;
mod rootfs;
pub mod runhost;
mod scope;
pub mod seccomp;
pub mod signals;
pub mod spec;
pub mod state;
mod store;
mod supervise;
pub mod sys;
mod sysfs;
pub mod update;
pub mod userns;
mod varlink;

pub use child::INIT_CANDIDATES;
pub use container::{Event, Observer, Outcome, run};
pub use error::{Error, Result};
pub use identity::{MachineName, Uuid};
pub use spec::{ConsoleMode, Payload, Register, Spec, StoreSpec};
