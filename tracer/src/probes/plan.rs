//! The probe plan: one declarative table of every probe the tracer uses,
//! what it needs from the kernel, what it stands in for, and which tracing
//! mode it enables. The loader, `tracer probes`, `doctor`'s readiness
//! checks and the vm-test matrix all read this table, and the tracing-mode
//! rule ([`mode`]) exists only here.

use tracer_events::{ProbeKind, ProbeReport, TracingMode};

/// What a probe is needed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Every probe marked so must attach for [`TracingMode::Full`]
    /// (confirmed verdicts).
    Full,
    /// Any one probe marked so enables [`TracingMode::TracepointOnly`]
    /// (verdicts inferred from #AC exits and EINTR returns).
    Inference,
    /// Adds detail or coverage; no mode depends on it.
    Optional,
}

/// One probe of the tracer.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// Kind.
    pub kind: ProbeKind,
    /// Kernel function (resolved through kallsyms, compiler suffixes
    /// allowed), or `category:event` for perf tracepoints, or the bare
    /// event name for raw tracepoints.
    pub target: &'static str,
    /// What the probe contributes (shown in the probe table).
    pub role: &'static str,
    /// What it is needed for.
    pub need: Need,
    /// The program this one stands in for: attached only when that one
    /// could not be.
    pub fallback_for: Option<&'static str>,
}

impl ProbeSpec {
    /// The tracefs event directory (`category/event`) of a tracepoint
    /// probe, perf or raw.
    pub fn tracefs_event(&self) -> Option<String> {
        match self.kind {
            ProbeKind::Tracepoint => Some(self.target.replace(':', "/")),
            ProbeKind::RawTracepoint => PLAN
                .iter()
                .find(|spec| spec.fallback_for == Some(self.program))
                .map(|perf| perf.target.replace(':', "/")),
            _ => None,
        }
    }

    /// Whether the probe is a kprobe or kretprobe (needs CONFIG_KPROBES and
    /// the symbol in kallsyms).
    pub fn is_kprobe(&self) -> bool {
        matches!(self.kind, ProbeKind::Kprobe | ProbeKind::Kretprobe)
    }
}

/// Every probe, in attach order (a fallback after the probe it stands in
/// for).
pub const PLAN: [ProbeSpec; 12] = [
    ProbeSpec {
        program: "signal_generate_raw",
        kind: ProbeKind::RawTracepoint,
        target: "signal_generate",
        role: "timer signals to vCPU threads, SIGBUS/BUS_ADRALN (skipped runs are counted)",
        need: Need::Optional,
        fallback_for: None,
    },
    ProbeSpec {
        program: "signal_generate",
        kind: ProbeKind::Tracepoint,
        target: "signal:signal_generate",
        role: "the same through perf, when the raw tracepoint cannot attach",
        need: Need::Optional,
        fallback_for: Some("signal_generate_raw"),
    },
    ProbeSpec {
        program: "kvm_userspace_exit",
        kind: ProbeKind::Tracepoint,
        target: "kvm:kvm_userspace_exit",
        role: "KVM_RUN returns: EINTR, internal error, failed entry, shutdown",
        need: Need::Inference,
        fallback_for: None,
    },
    ProbeSpec {
        program: "kvm_exit",
        kind: ProbeKind::Tracepoint,
        target: "kvm:kvm_exit",
        role: "guest #AC VM exits with guest RIP (VMX)",
        need: Need::Inference,
        fallback_for: None,
    },
    ProbeSpec {
        program: "task_rename",
        kind: ProbeKind::Tracepoint,
        target: "task:task_rename",
        role: "vCPU threads (CPU N/KVM, fc_vcpu N, vcpuN, ...) tracked from their naming, so no kick before their first KVM_RUN return is lost",
        need: Need::Optional,
        fallback_for: None,
    },
    ProbeSpec {
        program: "handle_guest_split_lock",
        kind: ProbeKind::Kprobe,
        target: "handle_guest_split_lock",
        role: "guest split-lock trap and its IP",
        need: Need::Full,
        fallback_for: None,
    },
    ProbeSpec {
        program: "handle_guest_split_lock_ret",
        kind: ProbeKind::Kretprobe,
        target: "handle_guest_split_lock",
        role: "end of the guest trap window; false = SIGBUS",
        need: Need::Full,
        fallback_for: None,
    },
    ProbeSpec {
        program: "handle_user_split_lock",
        kind: ProbeKind::Kprobe,
        target: "handle_user_split_lock",
        role: "host process split-lock trap",
        need: Need::Optional,
        fallback_for: None,
    },
    ProbeSpec {
        program: "handle_user_split_lock_ret",
        kind: ProbeKind::Kretprobe,
        target: "handle_user_split_lock",
        role: "end of the host trap window",
        need: Need::Optional,
        fallback_for: None,
    },
    ProbeSpec {
        program: "msleep_interruptible_ret",
        kind: ProbeKind::Kretprobe,
        target: "msleep_interruptible",
        role: "punishment sleep: completed (0) or interrupted (> 0)",
        need: Need::Full,
        fallback_for: None,
    },
    ProbeSpec {
        program: "down_interruptible_ret",
        kind: ProbeKind::Kretprobe,
        target: "down_interruptible",
        role: "buslock semaphore: acquired or interrupted",
        need: Need::Optional,
        fallback_for: None,
    },
    ProbeSpec {
        program: "split_lock_warn",
        kind: ProbeKind::Kprobe,
        target: "split_lock_warn",
        role: "misery path entered (optional detail; static, may carry a compiler suffix)",
        need: Need::Optional,
        fallback_for: None,
    },
];

/// The probe of a program name.
pub fn spec(program: &str) -> Option<&'static ProbeSpec> {
    PLAN.iter().find(|spec| spec.program == program)
}

/// The kernel functions the kprobes need, each once, in plan order.
pub fn kprobe_symbols() -> Vec<&'static str> {
    let mut symbols: Vec<&'static str> = Vec::new();
    for spec in PLAN.iter().filter(|spec| spec.is_kprobe()) {
        if !symbols.contains(&spec.target) {
            symbols.push(spec.target);
        }
    }
    symbols
}

/// The tracefs events (`category/event`) the tracepoint probes need, each
/// once, in plan order.
pub fn tracefs_events() -> Vec<String> {
    let mut events: Vec<String> = Vec::new();
    for event in PLAN.iter().filter_map(ProbeSpec::tracefs_event) {
        if !events.contains(&event) {
            events.push(event);
        }
    }
    events
}

/// The tracing mode a set of usable probes allows: [`TracingMode::Full`]
/// when every [`Need::Full`] probe is usable, [`TracingMode::TracepointOnly`]
/// when any [`Need::Inference`] probe is, `None` otherwise. The only place
/// this rule is written: live sessions ask it of what attached, `doctor`
/// of what the host offers.
pub fn mode(usable: impl Fn(&ProbeSpec) -> bool) -> Option<TracingMode> {
    let full = PLAN
        .iter()
        .filter(|spec| spec.need == Need::Full)
        .all(&usable);
    let inference = PLAN
        .iter()
        .filter(|spec| spec.need == Need::Inference)
        .any(&usable);
    if full {
        Some(TracingMode::Full)
    } else if inference {
        Some(TracingMode::TracepointOnly)
    } else {
        None
    }
}

/// The mode of the probes that attached.
pub fn attached_mode(report: &ProbeReport) -> Option<TracingMode> {
    mode(|spec| report.attached(spec.program))
}

/// Number of programs that could be attached here: every program but a
/// fallback whose primary is attached (the perf counters the programs read
/// are not programs).
pub fn usable_count(report: &ProbeReport) -> usize {
    report
        .entries
        .iter()
        .filter(|entry| entry.kind != ProbeKind::PerfCounter)
        .filter(|entry| {
            !spec(&entry.program)
                .and_then(|spec| spec.fallback_for)
                .is_some_and(|primary| report.attached(primary))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_needs_every_full_probe_and_inference_any_tracepoint() {
        assert_eq!(mode(|_| true), Some(TracingMode::Full));
        assert_eq!(mode(|_| false), None);
        assert_eq!(
            mode(|spec| spec.program == "kvm_exit"),
            Some(TracingMode::TracepointOnly)
        );
        // msleep_interruptible's return missing: no confirmation possible.
        assert_eq!(
            mode(|spec| spec.program != "msleep_interruptible_ret"),
            Some(TracingMode::TracepointOnly)
        );
        // Optional probes change nothing.
        assert_eq!(
            mode(|spec| spec.need != Need::Optional),
            Some(TracingMode::Full)
        );
    }

    #[test]
    fn every_fallback_names_an_earlier_probe_and_programs_are_unique() {
        for (index, spec) in PLAN.iter().enumerate() {
            assert_eq!(
                PLAN.iter()
                    .filter(|other| other.program == spec.program)
                    .count(),
                1
            );
            if let Some(primary) = spec.fallback_for {
                let position = PLAN.iter().position(|other| other.program == primary);
                assert!(position.is_some_and(|p| p < index), "{}", spec.program);
            }
        }
        assert_eq!(
            kprobe_symbols(),
            [
                "handle_guest_split_lock",
                "handle_user_split_lock",
                "msleep_interruptible",
                "down_interruptible",
                "split_lock_warn"
            ]
        );
        assert_eq!(
            tracefs_events(),
            [
                "signal/signal_generate",
                "kvm/kvm_userspace_exit",
                "kvm/kvm_exit",
                "task/task_rename"
            ]
        );
    }
}
