//! What a recording says about its probes: each probe's kind, target and
//! outcome, and the tracing mode they allowed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a probe attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// Function entry (needs CONFIG_KPROBES).
    Kprobe,
    /// Function return (needs CONFIG_KPROBES).
    Kretprobe,
    /// Static tracepoint (through perf).
    Tracepoint,
    /// Static tracepoint, raw (`BPF_PROG_TYPE_RAW_TRACEPOINT`).
    RawTracepoint,
    /// Per-CPU perf counting events the programs read (no program of
    /// their own).
    PerfCounter,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kprobe => "kprobe",
            Self::Kretprobe => "kretprobe",
            Self::Tracepoint => "tracepoint",
            Self::RawTracepoint => "raw_tracepoint",
            Self::PerfCounter => "perf counter",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProbeStatus {
    /// Attached to `target`.
    Attached {
        /// The exact symbol or event attached to (may differ from the
        /// requested target, e.g. `split_lock_warn.constprop.0`).
        #[serde(rename = "attached_to")]
        target: String,
    },
    /// Not attached because the kernel cannot offer it (expected on some hosts).
    Unavailable {
        /// Why.
        reason: String,
    },
    /// Loading or attaching failed unexpectedly.
    Failed {
        /// The error.
        reason: String,
    },
}

impl ProbeStatus {
    /// Whether the probe is active.
    pub fn is_attached(&self) -> bool {
        matches!(self, Self::Attached { .. })
    }
}

/// Status line of one probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReportEntry {
    /// Program name.
    pub program: String,
    /// Kind.
    pub kind: ProbeKind,
    /// Requested target.
    pub target: String,
    /// What it contributes.
    pub role: String,
    /// Outcome.
    #[serde(flatten)]
    pub status: ProbeStatus,
}

/// What the attached probe set can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TracingMode {
    /// Split-lock handlers and punishment results are probed: verdicts are confirmed.
    Full,
    /// Only tracepoints: livelock verdicts are inferred from #AC exits and EINTR returns.
    TracepointOnly,
}

impl fmt::Display for TracingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::TracepointOnly => "tracepoint-only",
        })
    }
}

/// Outcome of attaching the whole set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// One entry per probe.
    pub entries: Vec<ProbeReportEntry>,
}

impl ProbeReport {
    /// Whether `program` attached.
    pub fn attached(&self, program: &str) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.program == program && entry.status.is_attached())
    }

    /// Number of attached programs (the perf counters the programs read
    /// are not programs).
    pub fn attached_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.kind != ProbeKind::PerfCounter)
            .filter(|entry| entry.status.is_attached())
            .count()
    }
}
