//! `tracer live --json`: one JSON object per interval on stdout.

use std::io::Write as _;

use super::RowFilter;
use crate::runner::{Sink, Tick};

/// Writes `{"status": ..., "rows": [...]}` per interval.
pub struct JsonLines {
    filter: RowFilter,
}

impl JsonLines {
    /// A sink showing the rows `filter` keeps.
    pub fn new(filter: RowFilter) -> Self {
        Self { filter }
    }
}

impl Sink for JsonLines {
    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        let rows = self.filter.apply(tick.rows, tick.model);
        let line = serde_json::json!({ "status": tick.status, "rows": rows });
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        Ok(())
    }
}
