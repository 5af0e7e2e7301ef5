//! The records of a recording: metadata, events, losses, summary.

use serde::{Deserialize, Serialize};

use crate::{
    event::Event,
    host::{HostFacts, VmThreads},
    loss::{LayoutProblem, LossCounts, LostRecord, UntrackedSignals},
    probe::{ProbeReport, TracingMode},
    symbols::SymbolFileInfo,
    thread::{KernelCounts, ThreadRow},
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
    /// Guest symbol files that resolved trapping IPs (`--guest-symbols`);
    /// `event.symbol.file` indexes this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_symbols: Vec<SymbolFileInfo>,
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
    /// Signals to threads the tracer does not track, counted in the kernel
    /// and not recorded (see [`UntrackedSignals`]).
    #[serde(default, skip_serializing_if = "UntrackedSignals::is_zero")]
    pub signals_to_other_threads: UntrackedSignals,
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
            signals_to_other_threads: UntrackedSignals::default(),
            vms: Vec::new(),
        }
    }
}

/// The sysctl [`MitigationChange`] records follow; the classifier uses it.
pub const SPLIT_LOCK_MITIGATE: &str = "kernel.split_lock_mitigate";

/// CPU 0's microcode revision (`/sys/devices/system/cpu/cpu0/microcode/version`),
/// which a late microcode load changes at run time: the fix for
/// "KVM internal error. Suberror: 3" on some CPUs. Shown, not classified.
pub const MICROCODE_REVISION: &str = "microcode";

/// Whether the kernel's kprobes are on (`/sys/kernel/debug/kprobes/enabled`,
/// which root can switch off for every kprobe at once): off, the confirming
/// probes stop firing while they stay attached. Shown, not classified.
pub const KPROBES_ENABLED: &str = "kprobes_enabled";

/// A watched host setting changed while tracing (the tracer polls them
/// every interval): e.g. `sysctl kernel.split_lock_mitigate=0` applied
/// during a livelock, or a late microcode load. Absent from recordings of
/// older tracers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MitigationChange {
    /// When the tracer saw the new value (CLOCK_MONOTONIC, the interval
    /// tick that read it: the change happened during the interval before).
    pub ts_ns: u64,
    /// Which setting ([`SPLIT_LOCK_MITIGATE`], [`MICROCODE_REVISION`],
    /// [`KPROBES_ENABLED`]).
    pub setting: String,
    /// The previous reading, which still had `from`: the change happened
    /// in (`since_ns`, `ts_ns`].
    pub since_ns: u64,
    /// The value before (`None`: unreadable or absent).
    pub from: Option<u32>,
    /// The value now (`None`: unreadable or absent).
    pub to: Option<u32>,
}

impl MitigationChange {
    /// `split_lock_mitigate 1 → 0`, `microcode 0x24000023 → 0x24000024`
    /// (`n/a` for an absent value).
    pub fn describe(&self) -> String {
        let hex = self.setting == MICROCODE_REVISION;
        let value = |value: Option<u32>| match value {
            None => "n/a".to_owned(),
            Some(v) if hex => format!("{v:#x}"),
            Some(v) => v.to_string(),
        };
        format!(
            "{} {} → {}",
            self.setting.trim_start_matches("kernel."),
            value(self.from),
            value(self.to)
        )
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
    /// A mitigation setting changed.
    Mitigation(MitigationChange),
    /// The last line.
    Summary(Box<Summary>),
}
