//! The probe set, and loading/attaching it one probe at a time.
//!
//! A probe that cannot attach never stops the others; each gets a status
//! with the reason, and the set as a whole decides the [`TracingMode`].

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{KProbe, RawTracePoint, TracePoint},
};
use serde::{Deserialize, Serialize};

use crate::kernel::kallsyms::Kallsyms;

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

/// One probe of the tracer.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// Kind.
    pub kind: ProbeKind,
    /// Kernel function, or `category:event` for tracepoints.
    pub target: &'static str,
    /// What the probe contributes (shown in the probe table).
    pub role: &'static str,
}

/// Every probe, in attach order.
pub const PROBES: [ProbeSpec; 10] = [
    ProbeSpec {
        program: "signal_generate_raw",
        kind: ProbeKind::RawTracepoint,
        target: "signal_generate",
        role: "timer signals to vCPU threads, SIGBUS/BUS_ADRALN (skipped runs are counted)",
    },
    ProbeSpec {
        program: "signal_generate",
        kind: ProbeKind::Tracepoint,
        target: "signal:signal_generate",
        role: "the same through perf, when the raw tracepoint cannot attach",
    },
    ProbeSpec {
        program: "kvm_userspace_exit",
        kind: ProbeKind::Tracepoint,
        target: "kvm:kvm_userspace_exit",
        role: "KVM_RUN returns: EINTR, internal error, failed entry, shutdown",
    },
    ProbeSpec {
        program: "kvm_exit",
        kind: ProbeKind::Tracepoint,
        target: "kvm:kvm_exit",
        role: "guest #AC VM exits with guest RIP (VMX)",
    },
    ProbeSpec {
        program: "handle_guest_split_lock",
        kind: ProbeKind::Kprobe,
        target: "handle_guest_split_lock",
        role: "guest split-lock trap and its IP",
    },
    ProbeSpec {
        program: "handle_guest_split_lock_ret",
        kind: ProbeKind::Kretprobe,
        target: "handle_guest_split_lock",
        role: "end of the guest trap window; false = SIGBUS",
    },
    ProbeSpec {
        program: "handle_user_split_lock",
        kind: ProbeKind::Kprobe,
        target: "handle_user_split_lock",
        role: "host process split-lock trap",
    },
    ProbeSpec {
        program: "handle_user_split_lock_ret",
        kind: ProbeKind::Kretprobe,
        target: "handle_user_split_lock",
        role: "end of the host trap window",
    },
    ProbeSpec {
        program: "msleep_interruptible_ret",
        kind: ProbeKind::Kretprobe,
        target: "msleep_interruptible",
        role: "punishment sleep: completed (0) or interrupted (> 0)",
    },
    ProbeSpec {
        program: "down_interruptible_ret",
        kind: ProbeKind::Kretprobe,
        target: "down_interruptible",
        role: "buslock semaphore: acquired or interrupted",
    },
];

/// The optional misery-path probe; resolved through kallsyms because the
/// function is static and may carry a compiler suffix.
pub const SPLIT_LOCK_WARN: ProbeSpec = ProbeSpec {
    program: "split_lock_warn",
    kind: ProbeKind::Kprobe,
    target: "split_lock_warn",
    role: "misery path entered (optional detail)",
};

/// Result of trying one probe.
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

    /// The mode the attached set allows, or `None` if nothing useful attached.
    pub fn mode(&self) -> Option<TracingMode> {
        let kprobes = self.attached("handle_guest_split_lock")
            && self.attached("handle_guest_split_lock_ret")
            && self.attached("msleep_interruptible_ret");
        let tracepoints = self.attached("kvm_userspace_exit") || self.attached("kvm_exit");
        if kprobes {
            Some(TracingMode::Full)
        } else if tracepoints {
            Some(TracingMode::TracepointOnly)
        } else {
            None
        }
    }

    /// Number of programs that could be attached here: every program but a
    /// fallback whose primary is attached (the perf counters the programs
    /// read are not programs).
    pub fn usable_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.kind != ProbeKind::PerfCounter)
            .filter(|entry| {
                !FALLBACKS
                    .iter()
                    .any(|(fallback, primary)| entry.program == *fallback && self.attached(primary))
            })
            .count()
    }

    /// Number of attached programs.
    pub fn attached_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.kind != ProbeKind::PerfCounter)
            .filter(|entry| entry.status.is_attached())
            .count()
    }
}

/// Whether this kernel can attach kprobes at all, and if not why.
pub fn kprobe_support(tracefs: Option<&Path>) -> Result<(), String> {
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe/type");
    let events = tracefs.map(|dir| dir.join("kprobe_events"));
    if pmu.exists() || events.as_deref().is_some_and(Path::exists) {
        return Ok(());
    }
    Err(format!(
        "kprobes unavailable on this kernel: no {} and no kprobe_events in tracefs (CONFIG_KPROBES off?)",
        pmu.display()
    ))
}

/// Symbols the kernel refuses to kprobe (`/sys/kernel/debug/kprobes/blacklist`).
fn blacklisted(symbol: &str) -> bool {
    std::fs::read_to_string("/sys/kernel/debug/kprobes/blacklist").is_ok_and(|text| {
        text.lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .any(|name| name == symbol)
    })
}

/// Inputs of [`attach_all`].
pub struct AttachContext<'a> {
    /// Parsed kallsyms, if it could be read.
    pub kallsyms: Option<&'a Kallsyms>,
    /// tracefs mount point, if any.
    pub tracefs: Option<&'a Path>,
    /// Kprobe support verdict from [`kprobe_support`].
    pub kprobes: Result<(), String>,
    /// Tracepoints whose format could not be read, with the reason; they
    /// are not attached (their programs would read unknown offsets).
    pub unreadable_formats: Vec<(String, String)>,
    /// Whether `task_struct.pid`'s offset is known (the raw-tracepoint
    /// `signal_generate` program needs it), and if not why.
    pub task_pid_offset: Result<u32, String>,
}

/// Perf tracepoint programs that stand in for a raw tracepoint program.
const FALLBACKS: [(&str, &str); 1] = [("signal_generate", "signal_generate_raw")];

/// Loads and attaches every probe independently.
pub fn attach_all(ebpf: &mut Ebpf, context: &AttachContext<'_>) -> ProbeReport {
    let mut entries = Vec::new();
    for spec in PROBES.iter().chain(std::iter::once(&SPLIT_LOCK_WARN)) {
        let replaced_by = FALLBACKS
            .iter()
            .find(|(fallback, _)| *fallback == spec.program)
            .map(|(_, primary)| *primary)
            .filter(|primary| {
                entries.iter().any(|entry: &ProbeReportEntry| {
                    entry.program == *primary && entry.status.is_attached()
                })
            });
        let status = match spec.kind {
            _ if replaced_by.is_some() => ProbeStatus::Unavailable {
                reason: format!(
                    "not needed: {} (raw tracepoint) is attached",
                    replaced_by.unwrap_or_default()
                ),
            },
            ProbeKind::RawTracepoint => attach_raw_tracepoint(ebpf, spec, context),
            ProbeKind::Tracepoint => match context
                .unreadable_formats
                .iter()
                .find(|(event, _)| event == spec.target)
            {
                Some((_, reason)) => ProbeStatus::Unavailable {
                    reason: format!("format not usable: {reason}"),
                },
                None => attach_tracepoint(ebpf, spec, context.tracefs),
            },
            ProbeKind::Kprobe | ProbeKind::Kretprobe => attach_kprobe(ebpf, spec, context),
            // Opened by `signal_check`, never listed in PROBES.
            ProbeKind::PerfCounter => ProbeStatus::Failed {
                reason: "perf counters are not programs".to_owned(),
            },
        };
        entries.push(ProbeReportEntry {
            program: spec.program.to_owned(),
            kind: spec.kind,
            target: spec.target.to_owned(),
            role: spec.role.to_owned(),
            status,
        });
    }
    ProbeReport { entries }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The program `spec` names, as its concrete type.
fn program_of<'a, T>(ebpf: &'a mut Ebpf, spec: &ProbeSpec) -> Result<&'a mut T, ProbeStatus>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| ProbeStatus::Failed {
            reason: format!("program {} missing from the eBPF object", spec.program),
        })?;
    program.try_into().map_err(|error| ProbeStatus::Failed {
        reason: error_chain(&error),
    })
}

fn load_failed(error: &aya::programs::ProgramError) -> ProbeStatus {
    ProbeStatus::Failed {
        reason: format!("load: {}", error_chain(error)),
    }
}

fn attach_tracepoint(ebpf: &mut Ebpf, spec: &ProbeSpec, tracefs: Option<&Path>) -> ProbeStatus {
    let (category, name) = spec
        .target
        .split_once(':')
        .expect("tracepoint targets are category:name");
    if let Some(tracefs) = tracefs {
        let dir: PathBuf = tracefs.join("events").join(category).join(name);
        if !dir.is_dir() {
            let hint = if category == "kvm" {
                " (kvm module not loaded? `modprobe kvm_intel` or `kvm_amd`)"
            } else {
                ""
            };
            return ProbeStatus::Unavailable {
                reason: format!("tracepoint {} does not exist{hint}", spec.target),
            };
        }
    }
    let program: &mut TracePoint = match program_of(ebpf, spec) {
        Ok(program) => program,
        Err(status) => return status,
    };
    if let Err(error) = program.load() {
        return load_failed(&error);
    }
    match program.attach(category, name) {
        Ok(_) => ProbeStatus::Attached {
            target: spec.target.to_owned(),
        },
        Err(error) => ProbeStatus::Failed {
            reason: format!("attach: {}", error_chain(&error)),
        },
    }
}

fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    context: &AttachContext<'_>,
) -> ProbeStatus {
    let program: &mut RawTracePoint = match program_of(ebpf, spec) {
        Ok(program) => program,
        Err(status) => return status,
    };
    // Load even where it will not attach: it proves the verifier accepts it.
    if let Err(error) = program.load() {
        return load_failed(&error);
    }
    if let Err(reason) = &context.task_pid_offset {
        return ProbeStatus::Unavailable {
            reason: format!("loaded; task_struct.pid offset unknown: {reason}"),
        };
    }
    match program.attach(spec.target) {
        Ok(_) => ProbeStatus::Attached {
            target: spec.target.to_owned(),
        },
        Err(error) => ProbeStatus::Unavailable {
            reason: format!("attach: {}", error_chain(&error)),
        },
    }
}

fn attach_kprobe(ebpf: &mut Ebpf, spec: &ProbeSpec, context: &AttachContext<'_>) -> ProbeStatus {
    let program: &mut KProbe = match program_of(ebpf, spec) {
        Ok(program) => program,
        Err(status) => return status,
    };
    // Load even where attach is impossible: it proves the verifier accepts it.
    if let Err(error) = program.load() {
        return load_failed(&error);
    }
    let target = match context.kallsyms {
        Some(kallsyms) => match kallsyms.resolve_probe_target(spec.target) {
            Some(symbol) => symbol.name.clone(),
            None => {
                return ProbeStatus::Unavailable {
                    reason: format!(
                        "symbol {} not in kallsyms (inlined, compiled out, or not an Intel/bus-lock kernel)",
                        spec.target
                    ),
                };
            }
        },
        None => spec.target.to_owned(),
    };
    if let Err(reason) = &context.kprobes {
        return ProbeStatus::Unavailable {
            reason: format!("loaded; {reason}"),
        };
    }
    if blacklisted(&target) {
        return ProbeStatus::Unavailable {
            reason: format!("{target} is on the kernel's kprobe blacklist"),
        };
    }
    match program.attach(&target, 0) {
        Ok(_) => ProbeStatus::Attached { target },
        Err(error) => ProbeStatus::Failed {
            reason: format!("attach {target}: {}", error_chain(&error)),
        },
    }
}
