//! The recording format: versioned JSON Lines (docs/trace-format.md).
//!
//! Line 1 is a [`Metadata`] record, then one record per event, `lost`
//! records whenever something was dropped, and a final [`Summary`]. Every
//! line is one JSON object with a `type` field.

pub mod reader;
pub mod redact;
pub mod writer;

use serde::{Deserialize, Serialize};

use crate::{
    events::Event,
    kernel::host::{HostFacts, VmThreads},
    model::{KernelCounts, ThreadRow},
    probes::{ProbeReport, TracingMode},
    session::{LayoutProblem, LossCounts},
};

/// Value of the metadata's `format` field.
pub const FORMAT_NAME: &str = "split-lock-tracer-recording";
/// Version of the format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The tracer that wrote the recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracerIdentity {
    /// Crate version.
    pub version: String,
    /// Git commit the binary was built from.
    pub git_commit: String,
    /// argv.
    pub command_line: Vec<String>,
}

/// The clock of every `ts_ns` in the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockInfo {
    /// Always `CLOCK_MONOTONIC` (what `bpf_ktime_get_ns` reads).
    pub name: String,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC at start, in ns: add it to a
    /// `ts_ns` for Unix time.
    pub realtime_offset_ns: i64,
    /// CLOCK_MONOTONIC at start.
    pub start_ns: u64,
}

impl ClockInfo {
    /// Reads both clocks now.
    pub fn now() -> Self {
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        Self {
            name: "CLOCK_MONOTONIC".into(),
            realtime_offset_ns: realtime as i64 - monotonic as i64,
            start_ns: monotonic,
        }
    }
}

/// Nanoseconds of a clock.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(clock, &raw mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The first record: everything needed to interpret the events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// Who wrote it.
    pub tracer: TracerIdentity,
    /// Host facts at start.
    pub host: HostFacts,
    /// Probe outcomes.
    pub probes: ProbeReport,
    /// Tracing mode the probes allowed.
    pub mode: Option<TracingMode>,
    /// Tracepoint layouts that could not be read.
    #[serde(default)]
    pub layout_problems: Vec<LayoutProblem>,
    /// Time base.
    pub clock: ClockInfo,
    /// VMs and their vCPU index -> tid maps at start.
    pub vms: Vec<VmThreads>,
    /// Process filter (`-p`).
    #[serde(default)]
    pub pid_filter: Option<u32>,
    /// Ring buffer size in bytes.
    pub ring_bytes: u32,
    /// Whether hostname, VM names and command lines were replaced.
    #[serde(default)]
    pub redacted: bool,
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

/// Why the recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `-d` elapsed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal,
    /// `q` pressed.
    Quit,
}

/// The last record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// CLOCK_MONOTONIC at the end.
    pub ts_ns: u64,
    /// Why it ended.
    pub ended_by: EndReason,
    /// Event lines written.
    pub events_written: u64,
    /// Events traced but not written (queue full or write failure).
    pub events_not_written: u64,
    /// Kernel-side and decoding losses over the whole session.
    pub losses: LossCounts,
    /// Per-thread totals and verdicts at the end (with the kernel's own counts).
    pub threads: Vec<ThreadRow>,
    /// Threads the eBPF programs counted that have no row (timer signals to
    /// threads that are neither vCPUs nor split-locking), with the kernel's
    /// exact counts: every `signal` event in the file is covered by a row's
    /// or one of these threads' counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_threads: Vec<CountedThread>,
    /// VMs at the end.
    pub vms: Vec<VmThreads>,
}

/// A thread known only from the in-kernel counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CountedThread {
    /// Thread id.
    pub tid: u32,
    /// Thread group id, once an event ran in the thread itself (0 before).
    pub tgid: u32,
    /// The kernel's counts.
    pub kernel: KernelCounts,
}

impl Summary {
    /// A summary with nothing counted yet (the writer fills in its counts).
    pub fn new(ts_ns: u64, ended_by: EndReason) -> Self {
        Self {
            ts_ns,
            ended_by,
            events_written: 0,
            events_not_written: 0,
            losses: LossCounts::default(),
            threads: Vec::new(),
            counted_threads: Vec::new(),
            vms: Vec::new(),
        }
    }
}

/// One line of a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first line.
    Meta(Box<Metadata>),
    /// One traced event.
    Event(Event),
    /// Something was dropped.
    Lost(LostRecord),
    /// The last line.
    Summary(Box<Summary>),
}

/// Adds a `lost` record's count to the totals it came from (the inverse of
/// [`loss_records`]).
pub fn apply_loss(totals: &mut LossCounts, record: &LostRecord) {
    let detail = record.detail.clone().unwrap_or_default();
    match record.cause {
        LostCause::RingFull => *totals.ring_full.entry(detail).or_default() += record.count,
        LostCause::Undecodable => *totals.undecodable.entry(detail).or_default() += record.count,
        LostCause::RecursionMiss => {
            *totals.recursion_misses.entry(detail).or_default() += record.count;
        }
        LostCause::SkippedByKernel => {
            *totals.skipped_by_kernel.entry(detail).or_default() += record.count;
        }
        LostCause::CounterMapFull => totals.counter_map_full += record.count,
        LostCause::WindowMapFull => totals.window_map_full += record.count,
        LostCause::RecorderQueueFull => {}
    }
}

/// `lost` records for the growth of `now` over `before`.
pub fn loss_records(before: &LossCounts, now: &LossCounts, ts_ns: u64) -> Vec<LostRecord> {
    fn keyed(
        out: &mut Vec<LostRecord>,
        cause: LostCause,
        before: &std::collections::BTreeMap<String, u64>,
        now: &std::collections::BTreeMap<String, u64>,
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

#[cfg(test)]
mod format_tests;
