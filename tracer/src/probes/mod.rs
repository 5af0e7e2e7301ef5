//! Loading and attaching the probe [`plan`] one probe at a time.
//!
//! A probe that cannot attach never stops the others; each gets a status
//! with the reason, and [`plan::mode`] turns what attached into the tracing mode.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{KProbe, RawTracePoint, TracePoint},
};
use tracer_events::{ProbeKind, ProbeReport, ProbeReportEntry, ProbeStatus};

use self::plan::{PLAN, ProbeSpec};
use crate::kernel::kallsyms::Kallsyms;

pub mod plan;

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

/// Loads and attaches every probe independently.
pub fn attach_all(ebpf: &mut Ebpf, context: &AttachContext<'_>) -> ProbeReport {
    let mut entries = Vec::new();
    for spec in &PLAN {
        let replaced_by = spec.fallback_for.filter(|primary| {
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
            // Opened by `signal_check`, never in the plan.
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
