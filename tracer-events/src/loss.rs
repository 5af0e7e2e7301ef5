//! What was lost, and the `lost` records that carry it into a recording.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a tracepoint layout could not be read (the probe is then skipped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutProblem {
    /// `category:event`.
    pub event: String,
    /// The error.
    pub reason: String,
}

/// Counts of what was lost, per cause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossCounts {
    /// Ring-buffer reservation failures per event kind name (kernel side).
    pub ring_full: BTreeMap<String, u64>,
    /// Records that could not be decoded, per error text.
    pub undecodable: BTreeMap<String, u64>,
    /// Failed inserts into the in-kernel per-thread counter map (its counts
    /// for those threads are then short; events still went to the ring).
    pub counter_map_full: u64,
    /// Failed inserts into the split-lock window map: those episodes'
    /// sleep and semaphore results were not reported.
    pub window_map_full: u64,
    /// Program runs the kernel skipped because another BPF program was
    /// already running on that CPU (`recursion_misses`, e.g. a timer IRQ
    /// generating a signal while a tracepoint program ran), per program.
    pub recursion_misses: BTreeMap<String, u64>,
    /// Timer signals the kernel generated without running the signal
    /// program and without a recursion miss, by its own perf count of the
    /// tracepoint (`signal_check`), per program (`signal_generate`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_by_kernel: BTreeMap<String, u64>,
}

impl LossCounts {
    /// Total ring-buffer drops.
    pub fn ring_total(&self) -> u64 {
        saturating_sum(self.ring_full.values())
    }

    /// Total undecodable records.
    pub fn undecodable_total(&self) -> u64 {
        saturating_sum(self.undecodable.values())
    }

    /// Total program runs the kernel skipped for recursion.
    pub fn recursion_total(&self) -> u64 {
        saturating_sum(self.recursion_misses.values())
    }

    /// Total runs the kernel skipped without counting a recursion miss.
    pub fn skipped_by_kernel_total(&self) -> u64 {
        saturating_sum(self.skipped_by_kernel.values())
    }

    /// Every program run the kernel skipped, counted either way.
    pub fn kernel_skipped_total(&self) -> u64 {
        self.recursion_total()
            .saturating_add(self.skipped_by_kernel_total())
    }

    /// Everything lost.
    pub fn total(&self) -> u64 {
        self.ring_total()
            .saturating_add(self.undecodable_total())
            .saturating_add(self.kernel_skipped_total())
    }

    /// Records one record that could not be decoded, keyed by why.
    pub fn count_undecodable(&mut self, error: &impl std::fmt::Display) {
        *self.undecodable.entry(error.to_string()).or_default() += 1;
    }
}

/// Signals the eBPF programs counted per CPU but neither recorded nor gave
/// per-thread state, because their target is not a thread the tracer
/// tracks (not a vCPU thread, not a thread that entered a split-lock
/// handler, not a SIGBUS/BUS_ADRALN target). Not a loss: the tracer leaves
/// them out on purpose, and they are in no loss total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntrackedSignals {
    /// Timer signals (`SI_TIMER`).
    pub timer: u64,
    /// Any other signal.
    pub other: u64,
}

impl UntrackedSignals {
    /// Both kinds together.
    pub fn total(&self) -> u64 {
        self.timer.saturating_add(self.other)
    }

    /// Nothing counted (serde's skip test).
    pub fn is_zero(&self) -> bool {
        self.total() == 0
    }
}

/// What was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostCause {
    /// The eBPF program could not reserve ring-buffer space (detail: event kind).
    RingFull,
    /// A record could not be decoded (detail: error).
    Undecodable,
    /// The kernel skipped a program run (`recursion_misses`; detail: program).
    RecursionMiss,
    /// The kernel generated a timer signal without running the signal
    /// program and without a recursion miss, by its own perf count of the
    /// tracepoint (detail: program).
    SkippedByKernel,
    /// The in-kernel per-thread counter map was full.
    CounterMapFull,
    /// The split-lock window map was full (sleep/semaphore results missed).
    WindowMapFull,
    /// The recorder's queue was full: events traced but not written. (A
    /// failed write ends the file at its last complete line; nothing can be
    /// recorded after it, so `tracer record` reports that on stderr and in
    /// its exit status.)
    RecorderQueueFull,
}

/// A `lost` record: `count` more of `cause` since the previous one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRecord {
    /// When the loss was noticed (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Cause.
    pub cause: LostCause,
    /// Event kind, program or error text, where the cause has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// New losses since the previous record of this cause and detail.
    pub count: u64,
}

/// Adds a `lost` record's count to the totals it came from (the inverse of
/// [`loss_records`]).
///
/// Sums saturate: a recording's counts are bounded on read
/// (`reader::MAX_COUNT`), and a sum of bounded counts never reaches
/// `u64::MAX`, but no input makes this wrap.
pub fn apply_loss(totals: &mut LossCounts, record: &LostRecord) {
    let detail = record.detail.clone().unwrap_or_default();
    let add = |total: &mut u64| *total = total.saturating_add(record.count);
    match record.cause {
        LostCause::RingFull => add(totals.ring_full.entry(detail).or_default()),
        LostCause::Undecodable => add(totals.undecodable.entry(detail).or_default()),
        LostCause::RecursionMiss => add(totals.recursion_misses.entry(detail).or_default()),
        LostCause::SkippedByKernel => add(totals.skipped_by_kernel.entry(detail).or_default()),
        LostCause::CounterMapFull => add(&mut totals.counter_map_full),
        LostCause::WindowMapFull => add(&mut totals.window_map_full),
        LostCause::RecorderQueueFull => {}
    }
}

fn saturating_sum<'a>(counts: impl Iterator<Item = &'a u64>) -> u64 {
    counts.fold(0, |sum, count| sum.saturating_add(*count))
}

/// `lost` records for the growth of `now` over `before`.
pub fn loss_records(before: &LossCounts, now: &LossCounts, ts_ns: u64) -> Vec<LostRecord> {
    fn keyed(
        out: &mut Vec<LostRecord>,
        cause: LostCause,
        before: &BTreeMap<String, u64>,
        now: &BTreeMap<String, u64>,
        ts_ns: u64,
    ) {
        for (detail, count) in now {
            let delta = count.saturating_sub(before.get(detail).copied().unwrap_or(0));
            if delta > 0 {
                out.push(LostRecord {
                    ts_ns,
                    cause,
                    detail: Some(detail.clone()),
                    count: delta,
                });
            }
        }
    }
    let mut out = Vec::new();
    keyed(
        &mut out,
        LostCause::RingFull,
        &before.ring_full,
        &now.ring_full,
        ts_ns,
    );
    keyed(
        &mut out,
        LostCause::Undecodable,
        &before.undecodable,
        &now.undecodable,
        ts_ns,
    );
    keyed(
        &mut out,
        LostCause::RecursionMiss,
        &before.recursion_misses,
        &now.recursion_misses,
        ts_ns,
    );
    keyed(
        &mut out,
        LostCause::SkippedByKernel,
        &before.skipped_by_kernel,
        &now.skipped_by_kernel,
        ts_ns,
    );
    for (cause, old, new) in [
        (
            LostCause::CounterMapFull,
            before.counter_map_full,
            now.counter_map_full,
        ),
        (
            LostCause::WindowMapFull,
            before.window_map_full,
            now.window_map_full,
        ),
    ] {
        if new > old {
            out.push(LostRecord {
                ts_ns,
                cause,
                detail: None,
                count: new - old,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_records_report_only_growth() {
        let mut before = LossCounts::default();
        before.ring_full.insert("signal_generate".into(), 3);
        let mut now = before.clone();
        now.ring_full.insert("signal_generate".into(), 5);
        now.ring_full.insert("kvm_exit".into(), 1);
        now.window_map_full = 2;
        now.skipped_by_kernel.insert("signal_generate".into(), 4);
        let records = loss_records(&before, &now, 7);
        assert_eq!(records.len(), 4);
        assert!(records.iter().any(|r| r.cause == LostCause::SkippedByKernel
            && r.detail.as_deref() == Some("signal_generate")
            && r.count == 4));
        assert!(records.iter().any(|r| r.cause == LostCause::RingFull
            && r.detail.as_deref() == Some("signal_generate")
            && r.count == 2));
        assert!(
            records
                .iter()
                .any(|r| r.cause == LostCause::WindowMapFull && r.count == 2)
        );
        assert!(loss_records(&now, &now, 8).is_empty());
        let mut rebuilt = before.clone();
        for record in &records {
            apply_loss(&mut rebuilt, record);
        }
        assert_eq!(rebuilt, now);
    }
}
