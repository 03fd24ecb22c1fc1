//! `--background=`: paint a background color behind the guest's console
//! output on the caller's terminal, the way systemd-nspawn's pty relay
//! does (256+): set it when the relay starts, erase each new line in it,
//! put it back after a carriage return and after any SGR sequence of the
//! guest's that resets the background, and reset everything at the end.
//!
//! Hand-written: it is a few states over the relayed bytes, and it must
//! keep the guest's sequences byte for byte (a terminal-emulator crate
//! parses them into actions and would have us re-encode them).

use crate::spec::terminal::Background;

const ESC: u8 = 0x1b;
/// Longest CSI parameter string we look into; a longer one is passed on
/// untouched (a guest cannot make us buffer without bound).
const MAX_CSI: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Text,
    /// Just after a `\n`: the next byte starts a line to paint.
    LineStart,
    /// Just after a `\r`.
    AfterReturn,
    Escape,
    /// Inside `ESC [`, collecting parameters.
    Csi,
    /// Inside `ESC ]`, up to its terminator.
    Osc,
}

pub(crate) struct Tint {
    sgr: String,
    state: State,
    csi: Vec<u8>,
    csi_overlong: bool,
}

impl Tint {
    pub(crate) fn new(background: &Background) -> Tint {
        Tint {
            sgr: background.sgr().to_owned(),
            state: State::Text,
            csi: Vec::new(),
            csi_overlong: false,
        }
    }

    /// Written once, before the guest's first byte: the color, and the
    /// current line erased in it.
    pub(crate) fn start(&self) -> Vec<u8> {
        format!("\x1b[{}m\x1b[K", self.sgr).into_bytes()
    }

    /// Written when the relay ends, however the guest ended: attributes
    /// back to normal, and the rest of the screen erased in them.
    pub(crate) const END: &'static [u8] = b"\x1b[0m\x1b[J";

    /// `data` as it goes to the terminal, painted.
    pub(crate) fn paint(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 16);
        for &b in data {
            match self.state {
                State::LineStart => {
                    out.extend_from_slice(format!("\x1b[{}m\x1b[K", self.sgr).as_bytes());
                }
                State::AfterReturn => {
                    out.extend_from_slice(format!("\x1b[{}m", self.sgr).as_bytes());
                }
                State::Escape if b == b'[' => {
                    self.csi.clear();
                    self.csi_overlong = false;
                    self.state = State::Csi;
                    out.push(b);
                    continue;
                }
                State::Escape if b == b']' => {
                    self.state = State::Osc;
                    out.push(b);
                    continue;
                }
                State::Csi => {
                    if (0x20..=0x3f).contains(&b) {
                        if self.csi.len() < MAX_CSI {
                            self.csi.push(b);
                        } else {
                            self.csi_overlong = true;
                        }
                    } else {
                        if b == b'm' && !self.csi_overlong && resets_background(&self.csi) {
                            out.push(b';');
                            out.extend_from_slice(self.sgr.as_bytes());
                        }
                        self.state = State::Text;
                    }
                    out.push(b);
                    continue;
                }
                State::Osc => {
                    // BEL or ESC (of ESC \) ends it; so does any other control.
                    if b < 0x20 {
                        self.state = State::Text;
                    }
                    out.push(b);
                    continue;
                }
                State::Text | State::Escape => {}
            }
            out.push(b);
            self.state = match b {
                b'\n' => State::LineStart,
                b'\r' => State::AfterReturn,
                ESC => State::Escape,
                _ => State::Text,
            };
        }
        out
    }
}

/// Whether an SGR parameter string leaves the background at the
/// terminal's default: its last background-affecting parameter is a reset
/// (`0`, empty, `49`) rather than a color (`40`..`48`). The operands of
/// extended colors (`38;5;N`, `48;2;R;G;B`, `58;...`) are skipped.
fn resets_background(params: &[u8]) -> bool {
    let text = String::from_utf8_lossy(params);
    let mut tokens = text.split(';');
    let mut resets = false;
    while let Some(t) = tokens.next() {
        match t {
            "" | "0" | "00" | "49" => resets = true,
            "40" | "41" | "42" | "43" | "44" | "45" | "46" | "47" => resets = false,
            "38" | "48" | "58" => {
                if t == "48" {
                    resets = false;
                }
                let skip = match tokens.next() {
                    Some("5" | "05") => 1,
                    Some("2" | "02") => 3,
                    _ => 0,
                };
                for _ in 0..skip {
                    tokens.next();
                }
            }
            _ => {}
        }
    }
    resets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tint() -> Tint {
        Tint::new(&Background::parse("44").unwrap().unwrap())
    }

    #[test]
    fn lines_are_painted_and_resets_put_the_color_back() {
        let mut t = tint();
        assert_eq!(t.start(), b"\x1b[44m\x1b[K");
        assert_eq!(t.paint(b"a\r\nb"), b"a\r\x1b[44m\n\x1b[44m\x1b[Kb".to_vec());
        // The guest's reset gets our color appended; its own color stays.
        assert_eq!(t.paint(b"\x1b[0m"), b"\x1b[0;44m".to_vec());
        assert_eq!(t.paint(b"\x1b[m"), b"\x1b[;44m".to_vec());
        assert_eq!(t.paint(b"\x1b[1;41m"), b"\x1b[1;41m".to_vec());
        assert_eq!(t.paint(b"\x1b[48;5;49m"), b"\x1b[48;5;49m".to_vec());
        assert_eq!(t.paint(b"\x1b[38;5;0m"), b"\x1b[38;5;0m".to_vec());
        // Split across reads, and other CSI sequences left alone.
        assert_eq!(t.paint(b"\x1b["), b"\x1b[".to_vec());
        assert_eq!(t.paint(b"49m"), b"49;44m".to_vec());
        assert_eq!(t.paint(b"\x1b[2J"), b"\x1b[2J".to_vec());
        // A window title's text is not looked into.
        assert_eq!(t.paint(b"\x1b]0;x\ny\x07"), b"\x1b]0;x\ny\x07".to_vec());
        assert_eq!(Tint::END, b"\x1b[0m\x1b[J");
    }

    #[test]
    fn an_endless_csi_is_passed_on_untouched() {
        let mut t = tint();
        let mut long = b"\x1b[".to_vec();
        long.extend(std::iter::repeat_n(b'0', 1000));
        long.push(b'm');
        assert_eq!(t.paint(&long), long);
    }
}
