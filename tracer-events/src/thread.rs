//! Per-thread results as recorded and shown: the verdict, the totals, the
//! display row of a thread, and the kernel's own per-thread counts.

use serde::{Deserialize, Serialize};

/// What a thread is doing, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Punish-interrupt livelock: no forward progress.
    Livelock,
    /// Killed by SIGBUS after a split-lock trap (split_lock_detect=fatal).
    Killed,
    /// KVM_RUN returned an internal error, failed entry or shutdown.
    KvmError,
    /// Was livelocked when a mitigation was applied, and has since
    /// completed a punishment or stopped trapping (shown for a while).
    Recovering,
    /// Split-lock traps that complete their punishment: slowed, progressing.
    Throttled,
    /// Active, no split-lock trouble.
    Ok,
    /// Nothing seen in the window.
    Idle,
}

impl Verdict {
    /// Label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Livelock => "LIVELOCK",
            Self::Killed => "KILLED",
            Self::KvmError => "KVM ERROR",
            Self::Recovering => "RECOVERING",
            Self::Throttled => "THROTTLED",
            Self::Ok => "OK",
            Self::Idle => "IDLE",
        }
    }
}

/// Totals since the thread was first seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadTotals {
    /// Split-lock traps (guest or host).
    pub traps: u64,
    /// `split_lock_warn` entries.
    pub warns: u64,
    /// Episodes whose punishment was interrupted.
    pub interrupted_episodes: u64,
    /// Episodes that completed.
    pub completed_episodes: u64,
    /// Punishment sleeps interrupted.
    pub sleeps_interrupted: u64,
    /// Punishment sleeps that slept their full time (absent in recordings
    /// replayed by older versions).
    #[serde(default)]
    pub sleeps_completed: u64,
    /// Semaphore waits interrupted.
    pub semaphore_interrupted: u64,
    /// SI_TIMER signals aimed at the thread.
    pub timer_signals: u64,
    /// Other signals aimed at the thread.
    pub other_signals: u64,
    /// Punishments (or, inferred, #AC exits) cut short with no signal
    /// generated for the thread inside the window (e.g. TIF_NOTIFY_SIGNAL
    /// or task work, or a lost signal event).
    #[serde(default)]
    pub cut_without_signal: u64,
    /// KVM_RUN returns.
    pub userspace_exits: u64,
    /// KVM_RUN EINTR returns.
    pub eintr_exits: u64,
    /// Error returns (internal error, failed entry, shutdown, exception).
    pub error_exits: u64,
    /// #AC VM exits.
    pub ac_vm_exits: u64,
}

/// Formats a monotonic timestamp as seconds with µs.
pub fn format_ts(ts_ns: u64) -> String {
    format!(
        "{}.{:06}",
        ts_ns / 1_000_000_000,
        (ts_ns % 1_000_000_000) / 1000
    )
}

/// One row of the live table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadRow {
    /// Process id.
    pub pid: u32,
    /// VM label (`VMID (name)`), when known.
    pub vm: Option<String>,
    /// vCPU index.
    pub vcpu: Option<u32>,
    /// Thread id.
    pub tid: u32,
    /// comm.
    pub comm: String,
    /// Split-lock traps per second (window).
    pub traps_per_s: f64,
    /// Last trap IP.
    pub last_ip: Option<u64>,
    /// `last_ip` as a guest symbol (`function+0xoffset`), when resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ip_symbol: Option<String>,
    /// Share of episodes interrupted in the window, percent.
    pub interrupted_pct: Option<f64>,
    /// Signals per second (window).
    pub signals_per_s: f64,
    /// Typical SI_TIMER period (interquartile mean of the last 32 intervals), ms.
    pub timer_period_ms: Option<f64>,
    /// The signals that reach the thread, by signal, kind and sender, most
    /// frequent first (timer, tkill, kill, sigqueue, kernel).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kicks: Vec<KickRow>,
    /// EINTR returns of KVM_RUN per second.
    pub eintr_per_s: f64,
    /// Share of wall time inside split-lock handling, percent.
    pub punished_pct: f64,
    /// Verdict.
    pub verdict: Verdict,
    /// false when inferred from tracepoints only.
    pub confirmed: bool,
    /// Evidence lines.
    pub evidence: Vec<String>,
    /// Totals since first seen.
    pub totals: ThreadTotals,
    /// The kernel's own exact counts for this thread (live sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelCounts>,
}

/// One kind of signal reaching a thread: e.g. QEMU's SIGUSR1 via tkill
/// from its main thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KickRow {
    /// Signal number.
    pub sig: i32,
    /// Its name (`SIGUSR1`, `SIGRTMIN+0`).
    pub signal: String,
    /// How it was sent.
    pub kind: crate::SignalKind,
    /// Who sent it, when the kind says (`qemu-system-x86 (pid 1234, main
    /// thread)`); none for timers and the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Signals since first seen.
    pub count: u64,
    /// Per second in the window.
    pub per_s: f64,
    /// Typical interval (interquartile mean of the last 32), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<f64>,
    /// Punishment sleeps or semaphore waits this signal cut short (it was
    /// generated for the thread inside the handler window), or, inferred,
    /// #AC exits it cut short.
    pub cut: u64,
}

/// Exact per-thread counts kept by the eBPF programs in a map, independent
/// of ring-buffer delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounts {
    /// Guest split-lock traps.
    pub guest_traps: u64,
    /// Host split-lock traps.
    pub user_traps: u64,
    /// Punishment sleeps interrupted.
    pub sleeps_interrupted: u64,
    /// Punishment sleeps completed.
    pub sleeps_completed: u64,
    /// Semaphore waits interrupted.
    pub semaphore_interrupted: u64,
    /// SI_TIMER signals.
    pub timer_signals: u64,
    /// Other signals.
    pub other_signals: u64,
    /// All VM exits.
    pub vm_exits: u64,
    /// #AC VM exits.
    pub ac_vm_exits: u64,
    /// KVM_RUN returns.
    pub userspace_exits: u64,
    /// KVM_RUN EINTR returns.
    pub eintr_exits: u64,
    /// KVM_RUN error returns.
    pub error_exits: u64,
}

impl ThreadRow {
    /// A vCPU thread without trouble, traps, signals or EINTR returns in
    /// the window (shown only with `--all`).
    pub fn is_quiet(&self) -> bool {
        matches!(self.verdict, Verdict::Ok | Verdict::Idle)
            && self.totals.traps == 0
            && self.eintr_per_s == 0.0
            && self.signals_per_s == 0.0
    }

    /// A row with nothing counted yet: no rates, no totals, no evidence.
    pub fn empty(pid: u32, vcpu: Option<u32>, tid: u32, verdict: Verdict, confirmed: bool) -> Self {
        Self {
            pid,
            vm: None,
            vcpu,
            tid,
            comm: String::new(),
            traps_per_s: 0.0,
            last_ip: None,
            last_ip_symbol: None,
            interrupted_pct: None,
            signals_per_s: 0.0,
            timer_period_ms: None,
            kicks: Vec::new(),
            eintr_per_s: 0.0,
            punished_pct: 0.0,
            verdict,
            confirmed,
            evidence: Vec::new(),
            totals: ThreadTotals::default(),
            kernel: None,
        }
    }

    /// The signals cell of the tables and the live view: the rate, and
    /// for the most frequent kick in the window its period and how it is
    /// sent (`906 (1.1 ms timer)`, `20 (50.0 ms tkill)`).
    pub fn signals_cell(&self) -> String {
        let signals = crate::text::rate(self.signals_per_s);
        let kick = self.kicks.iter().find(|kick| kick.per_s > 0.0);
        match kick.and_then(|kick| kick.period_ms.map(|period| (kick, period))) {
            Some((kick, period)) => {
                format!("{signals} ({period:.1} ms {})", kick.kind.short_label())
            }
            None => signals,
        }
    }

    /// `LIVELOCK` or `LIVELOCK?` for inferred verdicts.
    pub fn verdict_label(&self) -> String {
        if self.confirmed {
            self.verdict.label().to_owned()
        } else {
            format!("{} (inferred)", self.verdict.label())
        }
    }
}

/// A thread's verdict changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerdictChange {
    /// When (CLOCK_MONOTONIC: the event that changed it, an interval tick, or the end).
    pub ts_ns: u64,
    /// Thread id.
    pub tid: u32,
    /// Process id.
    pub pid: u32,
    /// vCPU index.
    pub vcpu: Option<u32>,
    /// Previous verdict (`None` = first seen).
    pub from: Option<Verdict>,
    /// Whether the previous verdict was confirmed.
    #[serde(default)]
    pub from_confirmed: bool,
    /// New verdict.
    pub to: Verdict,
    /// Confirmed by kprobes (false = inferred).
    pub confirmed: bool,
    /// First evidence line.
    pub reason: Option<String>,
}
