//! The live table on stdout: redrawn in place on a terminal (with `q` to
//! quit), or one plain table per interval on a pipe.

use std::io::{IsTerminal as _, Read as _, Write as _};

use super::RowFilter;
use crate::{
    live::{self, Style},
    runner::{Sink, Tick},
};

fn terminal_width() -> u16 {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut size) } == 0;
    if ok && size.ws_col > 20 {
        size.ws_col
    } else {
        160
    }
}

/// Puts the terminal in non-canonical, no-echo mode so `q` quits without
/// Enter; restores it on drop.
struct RawStdin(Option<libc::termios>);

impl RawStdin {
    fn enable() -> Self {
        if !std::io::stdin().is_terminal() {
            return Self(None);
        }
        // SAFETY: termios calls on stdin with valid pointers.
        unsafe {
            let mut original: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &raw mut original) != 0 {
                return Self(None);
            }
            let mut raw = original;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const raw);
            Self(Some(original))
        }
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        if let Some(original) = self.0 {
            // SAFETY: restoring the saved attributes.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const original) };
        }
    }
}

/// The live table.
pub struct TerminalView {
    filter: RowFilter,
    interactive: Option<RawStdin>,
}

impl TerminalView {
    /// Redrawn in place when stdout is a terminal, plain otherwise. On a
    /// terminal it also returns the receiver that fires when `q` is typed.
    pub fn new(filter: RowFilter) -> (Self, Option<tokio::sync::mpsc::Receiver<()>>) {
        if !std::io::stdout().is_terminal() {
            return (
                Self {
                    filter,
                    interactive: None,
                },
                None,
            );
        }
        let raw = RawStdin::enable();
        let (quit_tx, quit_rx) = tokio::sync::mpsc::channel::<()>(1);
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while std::io::stdin().read(&mut byte).is_ok_and(|n| n == 1) {
                if byte[0] == b'q' || byte[0] == b'Q' {
                    let _ = quit_tx.blocking_send(());
                    return;
                }
            }
        });
        (
            Self {
                filter,
                interactive: Some(raw),
            },
            Some(quit_rx),
        )
    }
}

impl Sink for TerminalView {
    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        let rows = self.filter.apply(tick.rows, tick.model);
        let mut stdout = std::io::stdout().lock();
        if self.interactive.is_some() {
            let screen = live::render(tick.status, &rows, Style::Color, terminal_width());
            writeln!(stdout, "\x1b[H\x1b[2J{screen}(q to quit)")?;
        } else {
            writeln!(
                stdout,
                "{}",
                live::render(tick.status, &rows, Style::Plain, 200)
            )?;
        }
        stdout.flush()?;
        Ok(())
    }
}
