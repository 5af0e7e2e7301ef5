//! The split-lock tracer's recording format (docs/trace-format.md).
//!
//! A recording is versioned JSON Lines: a [`Metadata`] line, one line per
//! [`Event`], `lost` lines whenever something was dropped, and a final
//! [`Summary`]. This crate holds the typed records and their serde, the
//! streaming [`reader`] whose errors name the file and line, and the
//! crash-safe [`writer`]. It has no dependency on aya or on the kernel, so
//! the benchmark, the fuzz target and any other post-processing can read
//! recordings without building the tracer.
// A declared dependency nothing uses fails CI (clippy -D warnings); tests
// link the dev-dependencies too, so the check is on the non-test build.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod cpuinfo;
pub mod event;
pub mod host;
pub mod loss;
pub mod probe;
pub mod reader;
pub mod record;
pub mod redact;
pub mod symbols;
pub mod text;
pub mod thread;
pub mod writer;

pub use cpuinfo::CpuInfo;
pub use event::{Comm, Event, EventBody, SignalKind, TrapSource};
pub use host::{HostFacts, ProcessInfo, VcpuThread, VmThreads};
pub use loss::{
    LayoutProblem, LossCounts, LostCause, LostRecord, UntrackedSignals, apply_loss, loss_records,
};
pub use probe::{ProbeKind, ProbeReport, ProbeReportEntry, ProbeStatus, TracingMode};
pub use reader::{ReadError, RecordingReader};
pub use record::{
    ClockInfo, CountedThread, EndReason, FORMAT_NAME, FORMAT_VERSION, KPROBES_ENABLED,
    MICROCODE_REVISION, Metadata, MitigationChange, Record, SPLIT_LOCK_MITIGATE, Summary,
    TracerIdentity, clock_ns,
};
pub use symbols::{ResolvedSymbol, SymbolFileInfo};
pub use thread::{KernelCounts, KickRow, ThreadRow, ThreadTotals, Verdict, VerdictChange};

#[cfg(test)]
mod format_tests;
