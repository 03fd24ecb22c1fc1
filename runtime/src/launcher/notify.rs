//! sd_notify: reading the guest's messages on /run/host/notify, and
//! passing our own upwards when we run under a service manager.

use std::os::fd::BorrowedFd;

/// What the guest's PID 1 told us in one datagram.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
    pub exit_status: Option<i32>,
    pub shutdown_verb: Option<String>,
    /// X_SYSTEMD_SIGNALS_LEVEL=2: PID 1 has installed its signal handlers.
    pub signals_ready: bool,
}

pub fn parse(data: &[u8]) -> Message {
    let mut m = Message::default();
    for line in String::from_utf8_lossy(data).lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "READY" => m.ready |= v == "1",
            "STOPPING" => m.stopping |= v == "1",
            "STATUS" => m.status = Some(v.to_owned()),
            "EXIT_STATUS" => m.exit_status = v.parse().ok(),
            "X_SYSTEMD_SHUTDOWN" => m.shutdown_verb = Some(v.to_owned()),
            "X_SYSTEMD_SIGNALS_LEVEL" => m.signals_ready |= v.parse::<u32>().is_ok_and(|l| l >= 2),
            _ => {}
        }
    }
    m
}

/// The longest message we read; longer ones are cut (systemd's own limit
/// for notify messages is 4096 bytes).
pub const MAX_MESSAGE: usize = 8192;

/// Receive one datagram; returns the sender's PID (as we see it) and the
/// payload, or None when nothing is queued. Every descriptor that came
/// with it is closed: the guest may send any number (FDSTORE=1 and
/// worse), and we keep none.
pub fn receive(sock: BorrowedFd<'_>) -> Option<(Option<i32>, Vec<u8>)> {
    let mut buf = [0u8; MAX_MESSAGE];
    let datagram = crate::sys::recv_datagram(sock, &mut buf).ok()??;
    drop(datagram.fds);
    let len = datagram.len.min(buf.len());
    Some((datagram.pid, buf[..len].to_vec()))
}

/// Send a message to the service manager that started us ($NOTIFY_SOCKET),
/// if any. Failures are ignored, as sd_notify callers do.
pub fn notify_manager(text: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
            let _ = sock.send_to_addr(text.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(text.as_bytes(), &path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_messages() {
        let m = parse(b"READY=1\nSTATUS=Ready.\n");
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("Ready."));
        let m = parse(b"EXIT_STATUS=7\nX_SYSTEMD_SHUTDOWN=exit");
        assert_eq!(m.exit_status, Some(7));
        assert_eq!(m.shutdown_verb.as_deref(), Some("exit"));
        assert!(parse(b"X_SYSTEMD_SIGNALS_LEVEL=2").signals_ready);
        assert!(!parse(b"READY=0\ngarbage").ready);
    }
}
