//! The Prometheus exposition of the model (`tracer serve`): per-vCPU
//! counters and the current verdict, and the tracer's own health. A fresh
//! registry is encoded from the current rows each interval, so the series of
//! threads that left the model disappear (bounded cardinality).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use tracer_events::{LossCounts, ProbeReport, ThreadRow, TracingMode, Verdict};

use crate::live::ViewStatus;

/// Labels of a per-thread series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThreadLabels {
    /// VM name (or process comm).
    pub vm: String,
    /// Proxmox VMID, empty when unknown.
    pub vmid: String,
    /// Process id.
    pub pid: String,
    /// vCPU index, empty when unknown.
    pub vcpu: String,
    /// Thread id.
    pub tid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    vm: String,
    vmid: String,
    pid: String,
    vcpu: String,
    tid: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KickLabels {
    vm: String,
    vmid: String,
    pid: String,
    vcpu: String,
    tid: String,
    signal: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
    kind: String,
    target: String,
}

const VERDICTS: [Verdict; 7] = [
    Verdict::Livelock,
    Verdict::Killed,
    Verdict::KvmError,
    Verdict::Recovering,
    Verdict::Throttled,
    Verdict::Ok,
    Verdict::Idle,
];

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Livelock => "livelock",
        Verdict::Killed => "killed",
        Verdict::KvmError => "kvm_error",
        Verdict::Recovering => "recovering",
        Verdict::Throttled => "throttled",
        Verdict::Ok => "ok",
        Verdict::Idle => "idle",
    }
}

/// Process identity that labels a row: (vm, vmid).
pub type VmIdentity = (String, String);

fn counter_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<ThreadLabels, Counter> {
    let family = Family::<ThreadLabels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

/// Encodes the current state in the Prometheus text format.
pub fn encode_metrics(
    rows: &[ThreadRow],
    identity: impl Fn(u32) -> VmIdentity,
    status: &ViewStatus,
    losses: &LossCounts,
    probes: &ProbeReport,
) -> String {
    let mut registry = Registry::with_prefix("split_lock_tracer");
    let traps = counter_family(
        &mut registry,
        "split_lock_traps",
        "Split-lock traps (guest #AC handled by handle_guest_split_lock, or host task) of the thread",
    );
    let sleeps = counter_family(
        &mut registry,
        "sleeps_interrupted",
        "Punishment sleeps (msleep_interruptible) cut short by a signal",
    );
    let semaphores = counter_family(
        &mut registry,
        "semaphore_waits_interrupted",
        "Punishment semaphore waits (down_interruptible) cut short by a signal",
    );
    let ac_exits = counter_family(
        &mut registry,
        "ac_vm_exits",
        "#AC (alignment check) VM exits of the vCPU",
    );
    let timer_signals = counter_family(
        &mut registry,
        "timer_signals",
        "SI_TIMER signals generated for the thread",
    );
    let eintr = counter_family(&mut registry, "eintr_exits", "KVM_RUN returns with -EINTR");
    let errors = counter_family(
        &mut registry,
        "kvm_error_exits",
        "KVM_RUN returns with KVM_EXIT_INTERNAL_ERROR, FAIL_ENTRY or SHUTDOWN",
    );
    let period = Family::<ThreadLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "timer_period_seconds",
        "Typical interval between SI_TIMER signals to the thread",
        period.clone(),
    );
    let kick_signals = Family::<KickLabels, Counter>::default();
    registry.register(
        "kick_signals",
        "Signals to the thread by signal and kind (timer, tkill, kill, sigqueue, kernel), at most 4 per thread",
        kick_signals.clone(),
    );
    let kick_cuts = Family::<KickLabels, Counter>::default();
    registry.register(
        "kick_cut_punishments",
        "Punishments (or, inferred, #AC exits) this signal cut short: generated for the thread inside the handler window",
        kick_cuts.clone(),
    );
    let kick_period = Family::<KickLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "kick_period_seconds",
        "Typical interval between these signals to the thread",
        kick_period.clone(),
    );
    let verdicts = Family::<VerdictLabels, Gauge>::default();
    registry.register(
        "vcpu_verdict",
        "1 for the thread's current verdict (livelock, killed, kvm_error, throttled, ok, idle), 0 for the others",
        verdicts.clone(),
    );
    for row in rows {
        let (vm, vmid) = identity(row.pid);
        let labels = ThreadLabels {
            vm: vm.clone(),
            vmid: vmid.clone(),
            pid: row.pid.to_string(),
            vcpu: row.vcpu.map(|vcpu| vcpu.to_string()).unwrap_or_default(),
            tid: row.tid.to_string(),
        };
        // The kernel's exact per-thread counts where the session has them
        // (they miss nothing the ring dropped); the model's totals otherwise.
        let totals = &row.totals;
        let exact = row.kernel.as_ref();
        let pick = |kernel: fn(&tracer_events::KernelCounts) -> u64, model: u64| {
            exact.map_or(model, kernel)
        };
        traps
            .get_or_create(&labels)
            .inc_by(pick(|k| k.guest_traps + k.user_traps, totals.traps));
        sleeps
            .get_or_create(&labels)
            .inc_by(pick(|k| k.sleeps_interrupted, totals.sleeps_interrupted));
        semaphores.get_or_create(&labels).inc_by(pick(
            |k| k.semaphore_interrupted,
            totals.semaphore_interrupted,
        ));
        ac_exits
            .get_or_create(&labels)
            .inc_by(pick(|k| k.ac_vm_exits, totals.ac_vm_exits));
        timer_signals
            .get_or_create(&labels)
            .inc_by(pick(|k| k.timer_signals, totals.timer_signals));
        eintr
            .get_or_create(&labels)
            .inc_by(pick(|k| k.eintr_exits, totals.eintr_exits));
        errors
            .get_or_create(&labels)
            .inc_by(pick(|k| k.error_exits, totals.error_exits));
        if let Some(ms) = row.timer_period_ms {
            period.get_or_create(&labels).set(ms / 1e3);
        }
        for kick in &row.kicks {
            let kick_labels = KickLabels {
                vm: labels.vm.clone(),
                vmid: labels.vmid.clone(),
                pid: labels.pid.clone(),
                vcpu: labels.vcpu.clone(),
                tid: labels.tid.clone(),
                signal: kick.signal.clone(),
                kind: kick.kind.short_label().into(),
            };
            kick_signals.get_or_create(&kick_labels).inc_by(kick.count);
            kick_cuts.get_or_create(&kick_labels).inc_by(kick.cut);
            if let Some(ms) = kick.period_ms {
                kick_period.get_or_create(&kick_labels).set(ms / 1e3);
            }
        }
        for verdict in VERDICTS {
            verdicts
                .get_or_create(&VerdictLabels {
                    vm: vm.clone(),
                    vmid: vmid.clone(),
                    pid: labels.pid.clone(),
                    vcpu: labels.vcpu.clone(),
                    tid: labels.tid.clone(),
                    verdict: verdict_name(verdict).into(),
                })
                .set(i64::from(row.verdict == verdict));
        }
    }
    let lost = Family::<CauseLabels, Counter>::default();
    registry.register(
        "lost_events",
        "Events the tracer lost, by cause (ring_full, undecodable, recursion_miss, skipped_by_kernel, counter_map_full, window_map_full)",
        lost.clone(),
    );
    for (cause, count) in [
        ("ring_full", losses.ring_total()),
        ("undecodable", losses.undecodable_total()),
        ("recursion_miss", losses.recursion_total()),
        ("skipped_by_kernel", losses.skipped_by_kernel_total()),
        ("counter_map_full", losses.counter_map_full),
        ("window_map_full", losses.window_map_full),
    ] {
        lost.get_or_create(&CauseLabels {
            cause: cause.into(),
        })
        .inc_by(count);
    }
    let untracked = Family::<KindLabels, Counter>::default();
    registry.register(
        "signals_to_other_threads",
        "Signals to threads the tracer does not track (not vCPUs, not split-locking), counted in the kernel and not traced, by kind (timer, other)",
        untracked.clone(),
    );
    for (kind, count) in [
        ("timer", status.signals_to_other_threads.timer),
        ("other", status.signals_to_other_threads.other),
    ] {
        untracked
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc_by(count);
    }
    let events = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    events.set(status.events_per_s);
    registry.register(
        "events_per_second",
        "Events received per second over the last interval",
        events,
    );
    let ebpf_log = Counter::<u64>::default();
    ebpf_log.inc_by(status.ebpf_log_messages);
    registry.register(
        "ebpf_log_messages",
        "Messages the eBPF programs logged (--ebpf-log or RUST_LOG; 0 when off)",
        ebpf_log,
    );
    let attached = Family::<ProbeLabels, Gauge>::default();
    registry.register(
        "probe_attached",
        "1 when the probe is attached",
        attached.clone(),
    );
    for entry in &probes.entries {
        attached
            .get_or_create(&ProbeLabels {
                probe: entry.program.clone(),
                kind: entry.kind.to_string(),
                target: entry.target.clone(),
            })
            .set(i64::from(entry.status.is_attached()));
    }
    let full = Gauge::<i64>::default();
    full.set(i64::from(status.mode == Some(TracingMode::Full)));
    registry.register(
        "mode_full",
        "1 in full mode (kprobes: confirmed verdicts), 0 in tracepoint-only mode",
        full,
    );
    // The watched host settings: a series only where the host has the file.
    for (name, help, value) in [
        (
            "split_lock_mitigate",
            "kernel.split_lock_mitigate as last read (polled every interval)",
            status.split_lock_mitigate,
        ),
        (
            "microcode_revision",
            "CPU 0's microcode revision as last read (polled every interval)",
            status.microcode_revision,
        ),
        (
            "kprobes_enabled",
            "/sys/kernel/debug/kprobes/enabled as last read (0: the confirming probes are silent)",
            status.kprobes_enabled,
        ),
    ] {
        if let Some(value) = value {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::from(value));
            registry.register(name, help, gauge);
        }
    }
    let changes = Counter::<u64>::default();
    changes.inc_by(status.mitigation_changes);
    registry.register(
        "mitigation_changes",
        "Changes of the watched settings (kernel.split_lock_mitigate, microcode revision, kprobes_enabled) seen while tracing",
        changes,
    );
    let mut out = String::new();
    encode(&mut out, &registry).expect("encoding to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::Model,
        simulate::{self, Scenario},
    };

    #[test]
    fn livelocked_vcpu_series() {
        let mut model = Model::new();
        for event in simulate::run(&Scenario::seed_001(250, 1.0, 3000)).events {
            model.apply(&event);
        }
        let now = model.latest_ns();
        let rows = model.rows(now, true);
        let status = ViewStatus {
            mode: Some(TracingMode::Full),
            probes_attached: 10,
            probes_total: 10,
            events_per_s: 12.5,
            elapsed_s: 3.0,
            ..ViewStatus::default()
        };
        let text = encode_metrics(
            &rows,
            |_| ("haos".into(), "100".into()),
            &status,
            &LossCounts::default(),
            &ProbeReport {
                entries: Vec::new(),
            },
        );
        let labels = r#"vm="haos",vmid="100",pid="4242",vcpu="0",tid="4250""#;
        let traps = rows[0].totals.traps;
        assert!(traps > 2000);
        assert!(
            text.contains(&format!(
                "split_lock_tracer_split_lock_traps_total{{{labels}}} {traps}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "split_lock_tracer_vcpu_verdict{{{labels},verdict=\"livelock\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "split_lock_tracer_vcpu_verdict{{{labels},verdict=\"ok\"}} 0\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("split_lock_tracer_lost_events_total{cause=\"ring_full\"} 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        // A thread that left the model leaves the exposition.
        let empty = encode_metrics(
            &[],
            |_| (String::new(), String::new()),
            &status,
            &LossCounts::default(),
            &ProbeReport {
                entries: Vec::new(),
            },
        );
        assert!(!empty.contains("tid=\"4250\""));
    }

    /// What serve exposes after `sysctl kernel.split_lock_mitigate=0` and a
    /// late microcode load: the values in force and the count of changes.
    #[test]
    fn mitigation_settings_and_their_changes() {
        let probes = ProbeReport {
            entries: Vec::new(),
        };
        let encode = |status: &ViewStatus| {
            encode_metrics(
                &[],
                |_| (String::new(), String::new()),
                status,
                &LossCounts::default(),
                &probes,
            )
        };
        let before = encode(&ViewStatus {
            split_lock_mitigate: Some(1),
            ..ViewStatus::default()
        });
        assert!(
            before.contains("split_lock_tracer_split_lock_mitigate 1\n"),
            "{before}"
        );
        assert!(
            before.contains("split_lock_tracer_mitigation_changes_total 0\n"),
            "{before}"
        );
        assert!(
            !before.contains("split_lock_tracer_microcode_revision"),
            "{before}"
        );
        assert!(
            !before.contains("split_lock_tracer_kprobes_enabled"),
            "{before}"
        );
        let after = encode(&ViewStatus {
            split_lock_mitigate: Some(0),
            microcode_revision: Some(0x2400_0024),
            kprobes_enabled: Some(0),
            mitigation_changes: 3,
            ..ViewStatus::default()
        });
        assert!(
            after.contains("split_lock_tracer_split_lock_mitigate 0\n"),
            "{after}"
        );
        assert!(
            after.contains(&format!(
                "split_lock_tracer_microcode_revision {}\n",
                0x2400_0024
            )),
            "{after}"
        );
        assert!(
            after.contains("split_lock_tracer_kprobes_enabled 0\n"),
            "{after}"
        );
        assert!(
            after.contains("split_lock_tracer_mitigation_changes_total 3\n"),
            "{after}"
        );
        // A kernel without the sysctl: no series rather than a made-up value.
        let absent = encode(&ViewStatus::default());
        assert!(
            !absent.contains("split_lock_tracer_split_lock_mitigate "),
            "{absent}"
        );
    }
}
