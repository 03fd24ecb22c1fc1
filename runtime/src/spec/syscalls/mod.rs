//! The system call names and groups of systemd's syntax (`SystemCallFilter=`,
//! `--system-call-filter=`): every name with its number on each ABI we
//! build filters for (`table`, generated), and systemd's groups with the
//! allow list nspawn builds from them (`groups`). Data only; the filter is
//! built in `security::seccomp`.

pub mod groups;
pub mod table;

/// The index of a syscall name in [`table::NAMES`].
pub(crate) fn name_index(name: &str) -> Option<usize> {
    table::NAMES.binary_search(&name).ok()
}

/// Is `name` a syscall (on some ABI we have a table for) or a group?
pub fn is_known(name: &str) -> bool {
    if name.starts_with('@') {
        groups::group(name).is_some()
    } else {
        name_index(name).is_some()
    }
}
