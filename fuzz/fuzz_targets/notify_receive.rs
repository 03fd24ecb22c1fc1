//! The notify socket's real receive path: datagrams with random payloads,
//! descriptors (up to the kernel's 253 per message) and credentials, sent
//! over a real socketpair and read by `notify::receive`, as the launcher
//! reads /run/host/notify. Every datagram comes out whole (or cut at
//! MAX_MESSAGE) with the sender's PID, and no descriptor is left open.
//!
//! Input: a sequence of records `[fds: u8][creds: u8][len: u16 LE][len bytes]`.
#![no_main]
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixCredentials, sendmsg,
    setsockopt, socketpair, sockopt,
};
use nixspawn_runtime::launcher::notify;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fuzz_target!(|data: &[u8]| {
    let before = open_fds();
    {
        let (rx, tx): (OwnedFd, OwnedFd) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        setsockopt(&rx, sockopt::PassCred, &true).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut rest = data;
        let mut sent = 0;
        while rest.len() >= 4 && sent < 16 {
            let nfds = usize::from(rest[0]).min(253);
            let explicit_creds = rest[1] & 1 == 1;
            let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            rest = &rest[4..];
            let payload = &rest[..len.min(rest.len())];
            rest = &rest[payload.len()..];
            let fds = vec![null.as_raw_fd(); nfds];
            let creds = UnixCredentials::new();
            let mut cmsgs = Vec::new();
            if nfds > 0 {
                cmsgs.push(ControlMessage::ScmRights(&fds));
            }
            if explicit_creds {
                cmsgs.push(ControlMessage::ScmCredentials(&creds));
            }
            if sendmsg::<()>(
                tx.as_raw_fd(),
                &[IoSlice::new(payload)],
                &cmsgs,
                MsgFlags::empty(),
                None,
            )
            .is_err()
            {
                continue;
            }
            sent += 1;
            let (pid, got) = notify::receive(rx.as_fd()).expect("a queued datagram is received");
            assert_eq!(pid, Some(std::process::id() as i32), "the sender's PID");
            let want = &payload[..payload.len().min(notify::MAX_MESSAGE)];
            assert_eq!(got, want, "the payload, cut at MAX_MESSAGE");
            // The parser copes with whatever came.
            let _ = notify::parse(&got);
        }
        assert!(notify::receive(rx.as_fd()).is_none(), "nothing else queued");
    }
    assert_eq!(open_fds(), before, "a received descriptor was left open");
});
