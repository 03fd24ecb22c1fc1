//! What `nixspawnctl` drives inside a running container: entering it to
//! run a command with the guest's namespaces, cgroup and restrictions.

pub mod enter;
