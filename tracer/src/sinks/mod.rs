//! The consumers of the collection loop ([`crate::runner::Sink`]), one per
//! file: the full-screen live view on a terminal, the plain table on a pipe, JSON lines on stdout,
//! `record`'s progress line, the recorder, and the metrics publisher.

pub mod json;
pub mod metrics;
pub mod progress;
pub mod recorder;
pub mod terminal;
pub mod tui;

use tracer_events::ThreadRow;

use crate::model::Model;

/// Which rows a view shows (`--all`, `-p`, `--vm`).
#[derive(Clone, Debug, Default)]
pub struct RowFilter {
    /// Include quiet vCPU threads.
    pub all: bool,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only this VM (name or VMID).
    pub vm: Option<String>,
}

impl RowFilter {
    /// The rows to show, in order.
    pub fn apply(&self, rows: &[ThreadRow], model: &Model) -> Vec<ThreadRow> {
        rows.iter()
            .filter(|row| self.all || !row.is_quiet())
            .filter(|row| self.pid.is_none_or(|pid| row.pid == pid))
            .filter(|row| {
                self.vm.as_deref().is_none_or(|wanted| {
                    model.processes().get(&row.pid).is_some_and(|info| {
                        info.name.as_deref() == Some(wanted) || info.vmid.as_deref() == Some(wanted)
                    })
                })
            })
            .cloned()
            .collect()
    }
}
