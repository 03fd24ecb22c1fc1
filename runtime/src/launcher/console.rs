//! The launcher's side of the console: copy the guest's pty to our stdout,
//! our stdin to the pty (interactive), keep the terminal raw meanwhile, and
//! watch for the ^]^]^] escape.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::termios::{self, SetArg, Termios};

use crate::launcher::tint::Tint;
use crate::spec::ConsoleMode;
use crate::spec::terminal::Background;
use crate::sys;

const ESCAPE: u8 = 0x1d; // ^]
const ESCAPE_COUNT: usize = 3;
const ESCAPE_WINDOW: Duration = Duration::from_secs(1);

/// Puts our terminal in raw mode for as long as it lives.
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    pub fn enter() -> Option<Self> {
        let stdin = sys::stdio(0);
        if !sys::isatty(stdin) {
            return None;
        }
        let saved = termios::tcgetattr(stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(sys::stdio(0), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The pty master plus what we do with its traffic.
pub struct Console {
    pub master: OwnedFd,
    /// A peer we hold open so the master never sees a hangup while the
    /// guest has the console closed (systemd opens it only to write).
    _peer: OwnedFd,
    mode: ConsoleMode,
    escapes: Vec<Instant>,
    /// Read-only relay: a `\r` held back from the last read, in case the
    /// next starts with `\n`.
    held_cr: std::cell::Cell<bool>,
    /// `--background=`: painted behind what we relay, reset when we end.
    tint: std::cell::RefCell<Option<Tint>>,
}

impl Drop for Console {
    /// However the guest ended (or failed to start), the terminal gets its
    /// own colors back.
    fn drop(&mut self) {
        if self.tint.get_mut().is_some() {
            write_all(sys::stdio(1), Tint::END);
        }
    }
}

/// What the relay wants the launcher to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// The user typed ^] three times within a second.
    Kill,
}

impl Console {
    pub fn new(master: OwnedFd, mode: ConsoleMode) -> std::io::Result<Self> {
        let peer = sys::pty_peer(master.as_fd())?;
        nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let c = Console {
            master,
            _peer: peer,
            mode,
            escapes: Vec::new(),
            held_cr: std::cell::Cell::new(false),
            tint: std::cell::RefCell::new(None),
        };
        c.sync_size();
        Ok(c)
    }

    /// Paint `background` behind the guest's output from now until this
    /// console is dropped. Only for the modes that write to our stdout.
    pub fn set_background(&mut self, background: &Background) {
        if !matches!(self.mode, ConsoleMode::Interactive | ConsoleMode::ReadOnly) {
            return;
        }
        let tint = Tint::new(background);
        write_all(sys::stdio(1), &tint.start());
        *self.tint.get_mut() = Some(tint);
    }

    /// Our stdout gets `data`, painted if there is a tint.
    fn relay(&self, data: &[u8]) {
        match self.tint.borrow_mut().as_mut() {
            Some(t) => write_all(sys::stdio(1), &t.paint(data)),
            None => write_all(sys::stdio(1), data),
        }
    }

    pub fn reads_stdin(&self) -> bool {
        self.mode == ConsoleMode::Interactive
    }

    /// Copy our terminal's size to the pty.
    pub fn sync_size(&self) {
        for fd in [0, 1] {
            if let Ok(ws) = sys::get_winsize(sys::stdio(fd)) {
                let _ = sys::set_winsize(self.master.as_fd(), &ws);
                return;
            }
        }
    }

    /// Move what the guest wrote, up to `limit` bytes, to our stdout (or
    /// nowhere, passive). The rest waits for the next call: a guest that
    /// writes without end must not keep the caller from anything else.
    pub fn drain_output(&self, limit: usize) {
        let mut buf = [0u8; 16 * 1024];
        let mut moved = 0;
        while moved < limit {
            let want = buf.len().min(limit - moved);
            match nix::unistd::read(&self.master, &mut buf[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    moved += n;
                    match self.mode {
                        ConsoleMode::Passive => {}
                        ConsoleMode::ReadOnly => {
                            let (out, held) = plain_newlines(&buf[..n], self.held_cr.get());
                            self.held_cr.set(held);
                            self.relay(&out);
                        }
                        _ => self.relay(&buf[..n]),
                    }
                }
            }
        }
    }

    /// Forward what is available on our stdin.
    pub fn forward_input(&mut self) -> Action {
        let mut buf = [0u8; 4096];
        let n = match nix::unistd::read(sys::stdio(0), &mut buf) {
            Ok(n) if n > 0 => n,
            _ => return Action::Continue,
        };
        let now = Instant::now();
        for &b in &buf[..n] {
            if b == ESCAPE {
                self.escapes
                    .retain(|t| now.duration_since(*t) < ESCAPE_WINDOW);
                self.escapes.push(now);
                if self.escapes.len() >= ESCAPE_COUNT {
                    return Action::Kill;
                }
            } else {
                self.escapes.clear();
            }
        }
        write_all(self.master.as_fd(), &buf[..n]);
        Action::Continue
    }
}

/// The guest's pty turns `\n` into `\r\n` (systemd resets the console to
/// do so). Nobody types into a read-only console, and its output usually
/// lands in a log, a pipe or a Nix build log (which shows a line ending
/// in `\r\n` as empty): so there, `\r\n` becomes `\n`, as `--pipe` would
/// have written it. A lone `\r` (a progress line) stays. A terminal shows
/// the same either way (its own output processing adds the `\r`). Returns
/// the bytes to write and whether a final `\r` is held for the next read.
fn plain_newlines(data: &[u8], held_cr: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(data.len() + 1);
    let mut held = held_cr;
    for &b in data {
        if held && b != b'\n' {
            out.push(b'\r');
        }
        held = b == b'\r';
        if !held {
            out.push(b);
        }
    }
    (out, held)
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(100u16));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plain_newlines;

    #[test]
    fn crlf_becomes_lf_across_reads_and_lone_crs_stay() {
        assert_eq!(
            plain_newlines(b"a\r\nb\r\n", false),
            (b"a\nb\n".to_vec(), false)
        );
        assert_eq!(
            plain_newlines(b"50%\r60%", false),
            (b"50%\r60%".to_vec(), false)
        );
        // A read ending in \r holds it; the next decides.
        assert_eq!(plain_newlines(b"x\r", false), (b"x".to_vec(), true));
        assert_eq!(plain_newlines(b"\ny", true), (b"\ny".to_vec(), false));
        assert_eq!(plain_newlines(b"y", true), (b"\ry".to_vec(), false));
        assert_eq!(plain_newlines(b"\r\r\n", false), (b"\r\n".to_vec(), false));
    }
}
