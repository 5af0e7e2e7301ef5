//! Modelled event streams: what the tracer's probes would report for a
//! vCPU thread whose guest split-locks, on a host whose kernel punishes it.
//!
//! These are *models* of the kernel paths (shared/reference/kernel.md), used
//! to test the classifier and to measure its latency. They are never
//! presented as kernel events. Each step names the kernel function it models:
//!
//! 1. `KVM_RUN` enters the guest; the guest's locked RMW across a cache line
//!    raises #AC, VMX exits (`kvm:kvm_exit`, exit reason 0, intr_info
//!    0x80000b11; kernel.md §2.3) and `handle_exception_nmi` calls
//!    `handle_guest_split_lock(rip)` (§2.1).
//! 2. In warn mode it calls `split_lock_warn(ip)`; with
//!    `split_lock_mitigate=1` that sleeps in `msleep_interruptible(10)`:
//!    `msecs_to_jiffies(10)+1` jiffies, ending on a jiffy boundary (§1.3,
//!    §1.5). A pending signal ends the sleep early with ms left > 0 and the
//!    function returns *without* disabling detection.
//! 3. Otherwise `down_interruptible(&buslock_sem)`, then detection is off on
//!    this core for 2 jiffies (`schedule_delayed_work_on(cpu, work, 2)`), so
//!    the guest re-executes the instruction and makes progress.
//! 4. Before re-entry `xfer_to_guest_mode_handle_work` sees the pending
//!    signal: KVM_RUN returns -EINTR with `KVM_EXIT_INTR`
//!    (`kvm:kvm_userspace_exit`, §2.1/§2.4).
//! 5. In fatal mode `handle_guest_split_lock` returns false after
//!    `force_sig_fault(SIGBUS, BUS_ADRALN)`, and KVM exits to userspace with
//!    `KVM_EXIT_EXCEPTION` (§1.3, §2.1).
//!
//! The VMM is the seed 001 one: a one-shot timer of `period` armed before
//! every KVM_RUN, SIGUSR1 via SIGEV_THREAD_ID (`signal:signal_generate`
//! with code SI_TIMER, §3).

use tracer_events::{
    ClockInfo, Event, EventBody, FORMAT_NAME, FORMAT_VERSION, HostFacts, Metadata, ProbeKind,
    ProbeReport, ProbeReportEntry, ProbeStatus, ProcessInfo, TracerIdentity, TracingMode,
    TrapSource, VcpuThread, VmThreads,
};

use crate::probes::plan::PLAN;

/// Host split-lock detection mode (`split_lock_detect=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectMode {
    /// `warn`: the misery path.
    Warn,
    /// `fatal`: SIGBUS.
    Fatal,
}

/// Which probes the modelled tracer has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSet {
    /// kprobes and tracepoints.
    Full,
    /// Tracepoints only (no kprobes on the host kernel).
    TracepointOnly,
}

/// How the modelled VMM kicks its vCPU thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// A POSIX timer (SI_TIMER; the signal's context is whatever task the
    /// timer interrupt hit, modelled as the vCPU thread).
    Timer,
    /// `pthread_kill` from the VMM's main thread (SI_TKILL), as QEMU does:
    /// the signal's context is the sender.
    Tkill,
}

/// Parameters of a modelled run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Kernel HZ.
    pub hz: u32,
    /// VMM timer period.
    pub period_ns: u64,
    /// Length of the run.
    pub duration_ns: u64,
    /// `kernel.split_lock_mitigate`, possibly changed mid-run: (from_ns, value).
    pub mitigate: Vec<(u64, bool)>,
    /// Detection mode.
    pub mode: DetectMode,
    /// Probes present.
    pub probes: ProbeSet,
    /// Guest RIP of the split-locking instruction.
    pub rip: u64,
    /// Time one guest loop iteration takes when detection is off.
    pub iteration_ns: u64,
    /// Start time (CLOCK_MONOTONIC).
    pub start_ns: u64,
    /// Process id of the VMM.
    pub pid: u32,
    /// Thread id of the vCPU thread.
    pub tid: u32,
    /// The VM's name (`-name`).
    pub vm_name: String,
    /// The VM's Proxmox VMID (`-id`).
    pub vmid: String,
    /// vCPU index (the thread's comm is `CPU <vcpu>/KVM`).
    pub vcpu: u32,
    /// How the VMM kicks the vCPU (the kick's period is `period_ns`).
    pub kick: Kick,
}

impl Scenario {
    /// The seed 001 set-up with a timer of `period_ms` on a host of `hz`.
    pub fn seed_001(hz: u32, period_ms: f64, duration_ms: u64) -> Self {
        Self {
            hz,
            period_ns: (period_ms * 1e6) as u64,
            duration_ns: duration_ms * 1_000_000,
            mitigate: vec![(0, true)],
            mode: DetectMode::Warn,
            probes: ProbeSet::Full,
            rip: 0xffff_ffff_8102_38b0,
            iteration_ns: 200,
            start_ns: 1_000_000_000_000,
            pid: 4242,
            tid: 4250,
            vm_name: "haos".into(),
            vmid: "100".into(),
            vcpu: 0,
            kick: Kick::Timer,
        }
    }

    /// The same scenario for another vCPU thread: process, thread, VM and
    /// vCPU index as given.
    #[must_use]
    pub fn with_identity(mut self, pid: u32, tid: u32, vm_name: &str, vcpu: u32) -> Self {
        self.pid = pid;
        self.tid = tid;
        vm_name.clone_into(&mut self.vm_name);
        self.vcpu = vcpu;
        self
    }

    fn mitigate_at(&self, ts: u64) -> bool {
        self.mitigate
            .iter()
            .rev()
            .find(|(from, _)| ts >= self.start_ns + from)
            .is_none_or(|(_, on)| *on)
    }
}

/// What the modelled run produced.
#[derive(Clone, Debug)]
pub struct SimulatedRun {
    /// Events in time order.
    pub events: Vec<Event>,
    /// Guest loop iterations completed.
    pub guest_iterations: u64,
    /// KVM_RUN calls.
    pub kvm_runs: u64,
}

struct Emitter<'a> {
    scenario: &'a Scenario,
    comm: tracer_events::Comm,
    events: Vec<Event>,
}

impl Emitter<'_> {
    fn push(&mut self, ts_ns: u64, body: EventBody) {
        self.events.push(Event {
            ts_ns,
            cpu: 1,
            tgid: self.scenario.pid,
            tid: self.scenario.tid,
            comm: self.comm,
            body,
            symbol: None,
        });
    }

    /// The kick signal to the vCPU thread, in the context that generates
    /// it: the vCPU itself for a timer (as modelled), the VMM's main thread
    /// for a tkill.
    fn push_kick(&mut self, ts_ns: u64) {
        let (code, tid, comm) = match self.scenario.kick {
            Kick::Timer => (-2, self.scenario.tid, self.comm),
            Kick::Tkill => (-6, self.scenario.pid, "qemu-system-x86".into()),
        };
        self.events.push(Event {
            ts_ns,
            cpu: 1,
            tgid: self.scenario.pid,
            tid,
            comm,
            body: EventBody::Signal {
                sig: 10,
                errno: 0,
                code,
                target_tid: self.scenario.tid,
                group: Some(0),
                result: Some(0),
            },
            symbol: None,
        });
    }

    fn push_kprobe(&mut self, ts_ns: u64, body: EventBody) {
        if self.scenario.probes == ProbeSet::Full {
            self.push(ts_ns, body);
        }
    }
}

const ENTRY_LATENCY_NS: u64 = 5_000;
const EXIT_LATENCY_NS: u64 = 20_000;
const VMM_TURNAROUND_NS: u64 = 30_000;

/// Runs the model.
pub fn run(scenario: &Scenario) -> SimulatedRun {
    let jiffy = 1_000_000_000 / u64::from(scenario.hz);
    // msleep_interruptible(10): msecs_to_jiffies(10) + 1 jiffies.
    let sleep_jiffies = 10_000_000_u64.div_ceil(jiffy) + 1;
    let end = scenario.start_ns + scenario.duration_ns;
    let mut out = Emitter {
        scenario,
        comm: format!("CPU {}/KVM", scenario.vcpu).as_str().into(),
        events: Vec::new(),
    };
    let mut iterations = 0;
    let mut runs = 0;
    // Time until which detection is disabled on this core.
    let mut detection_off_until = 0;
    let mut now = scenario.start_ns;
    while now < end {
        runs += 1;
        let timer = now + scenario.period_ns;
        let mut t = now + ENTRY_LATENCY_NS;
        // Guest runs until the timer fires.
        let signal_at = loop {
            if t >= timer {
                break timer;
            }
            if t < detection_off_until {
                // Detection off: the guest iterates until it comes back on or the timer fires.
                let until = detection_off_until.min(timer);
                iterations += (until - t) / scenario.iteration_ns;
                t = until;
                continue;
            }
            // The split-locked instruction traps.
            out.push(
                t,
                EventBody::VmExit {
                    exit_reason: 0,
                    isa: 1,
                    guest_rip: scenario.rip,
                    info1: 0,
                    info2: 0,
                    intr_info: 0x8000_0b11,
                    error_code: 0,
                    vcpu_id: 0,
                },
            );
            out.push_kprobe(
                t + 1_000,
                EventBody::SplitLockTrap {
                    source: TrapSource::Guest,
                    ip: scenario.rip,
                },
            );
            if scenario.mode == DetectMode::Fatal {
                let sigbus = t + 3_000;
                out.push(
                    sigbus,
                    EventBody::Signal {
                        sig: 7,
                        errno: 0,
                        code: 1,
                        target_tid: scenario.tid,
                        group: Some(0),
                        result: Some(0),
                    },
                );
                out.push_kprobe(
                    sigbus + 500,
                    EventBody::SplitLockReturn {
                        source: TrapSource::Guest,
                        handled: false,
                        duration_ns: 2_500,
                    },
                );
                out.push(
                    sigbus + EXIT_LATENCY_NS,
                    EventBody::UserspaceExit {
                        reason: 1,
                        errno: 0,
                    },
                );
                return SimulatedRun {
                    events: out.events,
                    guest_iterations: iterations,
                    kvm_runs: runs,
                };
            }
            out.push_kprobe(
                t + 2_000,
                EventBody::SplitLockTrap {
                    source: TrapSource::Warn,
                    ip: scenario.rip,
                },
            );
            let trap = t + 2_000;
            if scenario.mitigate_at(trap) {
                // Sleep ends on the jiffy boundary sleep_jiffies after the current one.
                let wake = (trap / jiffy + sleep_jiffies) * jiffy;
                if timer < wake {
                    // The signal interrupts the sleep: return without disabling detection.
                    let left_jiffies = wake.div_ceil(jiffy) - timer / jiffy;
                    let left_ms = left_jiffies * jiffy / 1_000_000;
                    out.push_kick(timer);
                    out.push_kprobe(
                        timer + 3_000,
                        EventBody::SleepReturn {
                            remaining_ms: left_ms.max(1),
                        },
                    );
                    out.push_kprobe(
                        timer + 4_000,
                        EventBody::SplitLockReturn {
                            source: TrapSource::Guest,
                            handled: true,
                            duration_ns: timer + 4_000 - t - 1_000,
                        },
                    );
                    out.push(
                        timer + EXIT_LATENCY_NS,
                        EventBody::UserspaceExit {
                            reason: 10,
                            errno: -4,
                        },
                    );
                    now = timer + EXIT_LATENCY_NS + VMM_TURNAROUND_NS;
                    break 0;
                }
                out.push_kprobe(wake, EventBody::SleepReturn { remaining_ms: 0 });
                out.push_kprobe(wake + 1_000, EventBody::SemaphoreReturn { retval: 0 });
                out.push_kprobe(
                    wake + 2_000,
                    EventBody::SplitLockReturn {
                        source: TrapSource::Guest,
                        handled: true,
                        duration_ns: wake + 2_000 - t - 1_000,
                    },
                );
                t = wake + 2_000;
            } else {
                out.push_kprobe(
                    trap + 1_000,
                    EventBody::SplitLockReturn {
                        source: TrapSource::Guest,
                        handled: true,
                        duration_ns: 2_000,
                    },
                );
                t = trap + 1_000;
            }
            // Detection off for 2 jiffies; the instruction completes.
            detection_off_until = (t / jiffy + 2) * jiffy;
            iterations += 1;
            t += scenario.iteration_ns;
        };
        if signal_at == 0 {
            continue;
        }
        // The timer fired while the guest was running: a plain signal exit.
        out.push_kick(signal_at);
        out.push(
            signal_at + EXIT_LATENCY_NS,
            EventBody::UserspaceExit {
                reason: 10,
                errno: -4,
            },
        );
        now = signal_at + EXIT_LATENCY_NS + VMM_TURNAROUND_NS;
    }
    SimulatedRun {
        events: out.events,
        guest_iterations: iterations,
        kvm_runs: runs,
    }
}

/// Metadata for a recording of modelled events: every field says so
/// (`hostname` "modelled-host", tracer command line `simulate`), so a
/// modelled recording can never pass for a captured one.
pub fn modelled_metadata(scenarios: &[Scenario], probes: ProbeSet, start_ns: u64) -> Metadata {
    let entries = PLAN
        .iter()
        .map(|spec| {
            let tracepoint = matches!(spec.kind, ProbeKind::Tracepoint | ProbeKind::RawTracepoint);
            ProbeReportEntry {
                program: spec.program.to_owned(),
                kind: spec.kind,
                target: spec.target.to_owned(),
                role: spec.role.to_owned(),
                status: if spec.program == "signal_generate" {
                    ProbeStatus::Unavailable {
                        reason: "not needed: signal_generate_raw (raw tracepoint) is attached"
                            .into(),
                    }
                } else if tracepoint || probes == ProbeSet::Full {
                    ProbeStatus::Attached {
                        target: spec.target.to_owned(),
                    }
                } else {
                    ProbeStatus::Unavailable {
                        reason: "modelled: kprobes absent".into(),
                    }
                },
            }
        })
        .collect();
    Metadata {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        tracer: TracerIdentity {
            version: "modelled".into(),
            git_commit: "modelled".into(),
            command_line: vec!["simulate".into()],
        },
        host: HostFacts {
            hostname: Some("modelled-host".into()),
            kernel_release: Some("6.8.12-4-pve".into()),
            kernel_version: Some("modelled".into()),
            cmdline: Some("split_lock_detect=warn".into()),
            split_lock_mitigate: Some(1),
            ..HostFacts::default()
        },
        probes: ProbeReport { entries },
        mode: Some(match probes {
            ProbeSet::Full => TracingMode::Full,
            ProbeSet::TracepointOnly => TracingMode::TracepointOnly,
        }),
        layout_problems: Vec::new(),
        clock: ClockInfo {
            name: "CLOCK_MONOTONIC".into(),
            realtime_offset_ns: 0,
            start_ns,
        },
        vms: modelled_vms(scenarios),
        pid_filter: None,
        ring_bytes: tracer_common::DEFAULT_RING_BYTES,
        redacted: false,
        guest_symbols: Vec::new(),
    }
}

/// The VMs of `scenarios`, by pid, each with its vCPU threads.
fn modelled_vms(scenarios: &[Scenario]) -> Vec<VmThreads> {
    let mut vms: Vec<VmThreads> = Vec::new();
    for scenario in scenarios {
        let vcpu = VcpuThread {
            index: scenario.vcpu,
            tid: scenario.tid,
        };
        match vms.iter_mut().find(|vm| vm.pid == scenario.pid) {
            Some(vm) if !vm.vcpus.contains(&vcpu) => vm.vcpus.push(vcpu),
            Some(_) => {}
            None => vms.push(VmThreads {
                pid: scenario.pid,
                info: ProcessInfo {
                    name: Some(scenario.vm_name.clone()),
                    vmid: Some(scenario.vmid.clone()),
                    comm: Some("kvm".into()),
                },
                cpu_model: Some("host".into()),
                vcpus: vec![vcpu],
            }),
        }
    }
    vms.sort_by_key(|vm| vm.pid);
    vms
}

/// Writes the modelled runs of `scenarios` (merged in time order) through
/// the real recording writer, with [`modelled_metadata`]; returns the
/// number of events.
///
/// # Errors
/// The file cannot be created (exists without `force`, symlink, I/O).
pub fn write_recording(
    path: &std::path::Path,
    force: bool,
    scenarios: &[Scenario],
    probes: ProbeSet,
) -> anyhow::Result<usize> {
    use tracer_events::{EndReason, Summary, writer::RecordingWriter};
    let mut events: Vec<Event> = scenarios
        .iter()
        .flat_map(|scenario| run(scenario).events)
        .collect();
    events.sort_by_key(|event| (event.ts_ns, event.tid));
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        anyhow::bail!("the scenarios produced no events");
    };
    let (start, end) = (first.ts_ns, last.ts_ns);
    let metadata = modelled_metadata(scenarios, probes, start);
    // Room for every event: a modelled recording drops nothing.
    let writer = RecordingWriter::create(path, force, metadata, events.len() + 16)?;
    let count = events.len();
    for event in events {
        writer.event(event);
    }
    let outcome = writer.finish(Summary::new(end, EndReason::Duration));
    if let Some(error) = outcome.write_error {
        anyhow::bail!("writing {}: {error}", path.display());
    }
    Ok(count)
}
