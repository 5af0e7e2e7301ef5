//! The live table on a pipe: one plain table per interval (on a terminal
//! `live` uses the full-screen view, [`super::tui`]).

use std::io::Write as _;

use super::RowFilter;
use crate::{
    live,
    runner::{Sink, Tick},
};

/// The plain live table.
pub struct TerminalView {
    filter: RowFilter,
}

impl TerminalView {
    /// One plain table per interval on stdout.
    pub fn new(filter: RowFilter) -> Self {
        Self { filter }
    }
}

impl Sink for TerminalView {
    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        let rows = self.filter.apply(tick.rows, tick.model);
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", live::render(tick.status, &rows, 200))?;
        stdout.flush()?;
        Ok(())
    }
}
