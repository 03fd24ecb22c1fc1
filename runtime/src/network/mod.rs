//! The guest's network, as systemd-nspawn sets it up: veth pairs with
//! nspawn's names and MACs, bridges and zones, moved links, macvlans and
//! ipvlans, port forwarding in nspawn's nftables layout, and the guest's
//! resolv.conf and timezone; all over netlink from here (no `ip` or `nft`
//! processes). The module is usable on its own: a multi-node test runner
//! can make its own [`plan::Plan`]s and carry them out against a private
//! network namespace of its own as the host side.
//!
//! - `names`: interface names, shortening and MACs (pure functions);
//! - `netlink`, `rtnl`, `nft`: the netlink clients;
//! - `netns`: private network namespaces held by a descriptor;
//! - `plan`: options → links, carried out for one boot;
//! - `ports`: `-p`, following the guest's addresses;
//! - `cleanup`: what the janitor hears of, and undoing it;
//! - `resolv`: `--resolv-conf` and `--timezone`.

pub mod cleanup;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod plan;
pub mod ports;
pub mod resolv;
pub mod rtnl;
