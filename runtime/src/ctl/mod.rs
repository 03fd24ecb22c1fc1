//! What `nixspawnctl` drives inside a running container: entering it to
//! run a command with the guest's namespaces, cgroup and restrictions
//! (`enter`: exec, shell, login; `entry`: one long-lived entry forking
//! many commands), moving files in and out and binding host
//! paths in (`files`), and the guest's users (`users`).

pub mod enter;
pub mod entry;
pub mod files;
pub mod users;
