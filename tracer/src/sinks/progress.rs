//! `tracer record`'s progress line on stderr, once per interval.

use tracer_events::Verdict;

use crate::runner::{Sink, Tick};

/// Prints events written, losses, threads and the worst verdict.
#[derive(Debug, Default)]
pub struct ProgressLine {
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ProgressLine {
    /// A progress line reading the recorder's written-events count.
    pub fn new(written: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Self { written }
    }
}

impl Sink for ProgressLine {
    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        let status = tick.status;
        let (threads, worst) = tick
            .rows
            .iter()
            .fold((0usize, Verdict::Idle), |(count, worst), row| {
                (count + 1, worst.min(row.verdict))
            });
        eprintln!(
            "recording {:.0} s: {} events written, {} not written, lost: ring {} undecodable {} skipped by kernel {} | {threads} threads, worst verdict {}",
            status.elapsed_s,
            self.written.load(std::sync::atomic::Ordering::Relaxed),
            status.recorder_not_written,
            status.lost_ring,
            status.lost_undecodable,
            status.lost_kernel_skipped,
            worst.label()
        );
        Ok(())
    }
}
