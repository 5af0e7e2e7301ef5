//! A tracing session: the loaded eBPF object, its probes, the ring-buffer
//! reader and the in-kernel counters. Dropping the session detaches every
//! program and frees every map.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    sync::Arc,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::io::unix::AsyncFd;
use tracer_common::{
    CONFIG_GLOBAL, EVENT_KIND_SLOTS, EventKind, PROGRAM_FAILURE_SLOTS, ProgramFailure,
    ThreadCounters, TracerConfig, UNTRACKED_SIGNAL_SLOTS, UntrackedSignal, map_names,
};
use tracer_events::{
    KernelCounts, LayoutProblem, LossCounts, ProbeReport, TracingMode, UntrackedSignals,
};

use crate::{
    ebpf_log::{self, EbpfLogCounts, EbpfLogger},
    events::{Event, decode},
    kernel::{
        kallsyms::Kallsyms,
        tracefs::{self, EventFormat},
    },
    probes::{self, AttachContext, plan},
    signal_check::TimerSignalCounters,
};

/// Options of a session.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Trace only this process (0 or `None` = all).
    pub pid: Option<u32>,
    /// Ring-buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: Option<u32>,
    /// Take signals through the perf tracepoint even where the raw one
    /// would attach (`--no-raw-tracepoint`, for comparisons).
    pub no_raw_tracepoint: bool,
    /// The most verbose level the eBPF programs log at
    /// ([`crate::ebpf_log`]; `None` = off, the programs carry no logging
    /// code after verification).
    pub ebpf_log: Option<log::Level>,
}

/// How much of the ring one batch copies before decoding it: the batch's
/// whole memory (plus one record), whatever the ring's size.
const RAW_BATCH_BYTES: usize = 256 * 1024;

/// Appends one ring record to a drain's batch, behind its length.
fn push_record(batch: &mut BytesMut, record: &[u8]) {
    batch.put_u32_ne(record.len() as u32);
    batch.extend_from_slice(record);
}

/// The records [`push_record`] put in `batch`, in order.
fn batch_records(mut batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if batch.remaining() < 4 {
            return None;
        }
        let len = (batch.get_u32_ne() as usize).min(batch.len());
        let (record, rest) = batch.split_at(len);
        batch = rest;
        Some(record)
    })
}

/// A running tracing session.
pub struct TraceSession {
    ebpf: Ebpf,
    ring: AsyncFd<RingBuf<MapData>>,
    /// Which probes attached, and why others did not.
    pub probes: ProbeReport,
    /// The mode the probe set allows.
    pub mode: TracingMode,
    /// Tracepoint layouts that could not be read.
    pub layout_problems: Vec<LayoutProblem>,
    /// tracefs mount point used.
    pub tracefs: Option<PathBuf>,
    /// Size of the event ring buffer in bytes.
    pub ring_bytes: u32,
    /// Undecodable-record counts (kernel drops are read from the map).
    undecodable: LossCounts,
    /// Raw records of a drain, each behind its length, up to
    /// [`RAW_BATCH_BYTES`]: the ring is emptied at copy speed (each
    /// record's space goes back to the kernel as soon as it is copied) and
    /// decoded from here. Reused: no allocation per event or per drain.
    raw: BytesMut,
    /// The kernel's own count of timer signals.
    timer_signal_counters: TimerSignalCounters,
    /// What the eBPF programs logged (zero when logging is off).
    pub ebpf_log: Arc<EbpfLogCounts>,
}

/// Checks for root or CAP_BPF + CAP_PERFMON (and CAP_SYS_ADMIN for older kernels).
pub fn check_privileges() -> anyhow::Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    bail!(
        "tracing needs root, or CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8); run with sudo"
    )
}

fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer. Failure is fine on kernels
    // that account BPF memory to the memory cgroup (5.11+).
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const limit) };
}

/// Reads the tracepoint layouts of the running kernel into a config.
pub fn read_config(
    tracefs: Option<&std::path::Path>,
    pid: Option<u32>,
) -> (TracerConfig, Vec<LayoutProblem>) {
    let mut config = TracerConfig::UNSET;
    config.filter_tgid = pid.unwrap_or(0);
    let mut problems = Vec::new();
    let Some(tracefs) = tracefs else {
        problems.push(LayoutProblem {
            event: "*".into(),
            reason: "tracefs not available".into(),
        });
        return (config, problems);
    };
    let mut problem = |event: &str, error: &dyn std::fmt::Display| {
        problems.push(LayoutProblem {
            event: event.into(),
            reason: error.to_string(),
        });
    };
    match EventFormat::read(tracefs, "signal", "signal_generate")
        .and_then(|format| format.signal_generate_layout())
    {
        Ok(layout) => config.signal_generate = layout,
        Err(error) => problem("signal:signal_generate", &error),
    }
    match EventFormat::read(tracefs, "kvm", "kvm_userspace_exit")
        .and_then(|format| format.kvm_userspace_exit_layout())
    {
        Ok(layout) => config.kvm_userspace_exit = layout,
        Err(error) => problem("kvm:kvm_userspace_exit", &error),
    }
    match EventFormat::read(tracefs, "kvm", "kvm_exit").and_then(|format| format.kvm_exit_layout())
    {
        Ok(layout) => config.kvm_exit = layout,
        Err(error) => problem("kvm:kvm_exit", &error),
    }
    match EventFormat::read(tracefs, "task", "task_rename")
        .and_then(|format| format.task_rename_layout())
    {
        Ok(layout) => config.task_rename = layout,
        Err(error) => problem("task:task_rename", &error),
    }
    (config, problems)
}

/// The loaded object with every probe tried; the start of any session.
pub struct AttachedProbes {
    /// The loaded object (programs detach when it drops).
    pub ebpf: Ebpf,
    /// Which probes attached, and why others did not.
    pub report: ProbeReport,
    /// Tracepoint layouts that could not be read.
    pub layout_problems: Vec<LayoutProblem>,
    /// tracefs mount point used.
    pub tracefs: Option<PathBuf>,
    /// The kernel's count of timer signals, for the skipped-run check.
    pub timer_signal_counters: TimerSignalCounters,
}

/// Loads the eBPF object and tries every probe on its own.
pub fn attach_probes(options: &SessionOptions) -> anyhow::Result<AttachedProbes> {
    check_privileges()?;
    raise_memlock_limit();
    let tracefs = tracefs::ensure_mounted().ok();
    let (mut config, layout_problems) = read_config(tracefs.as_deref(), options.pid);
    let task_pid_offset = if options.no_raw_tracepoint {
        Err("not used: --no-raw-tracepoint".to_owned())
    } else {
        crate::kernel::btf::task_pid_offset().map_err(|error| error.to_string())
    };
    if let Ok(offset) = task_pid_offset {
        config.task_pid_offset = offset;
        // For `-p`: signals are kept only when aimed at the process.
        if let Ok(tgid) = crate::kernel::btf::member_offset(
            std::path::Path::new(crate::kernel::btf::VMLINUX_BTF),
            "task_struct",
            "tgid",
        ) {
            config.task_tgid_offset = tgid;
        }
    }
    let mut loader = EbpfLoader::new();
    loader.override_global(CONFIG_GLOBAL, &config, true);
    let log_level = ebpf_log::loader_level(
        options
            .ebpf_log
            .map_or(log::LevelFilter::Off, |level| level.to_level_filter()),
    );
    loader.override_global(aya_log::LEVEL, &log_level, true);
    if let Some(bytes) = options.ring_bytes {
        loader.map_max_entries(map_names::EVENTS, bytes);
    }
    if crate::EBPF_OBJECT.is_empty() {
        bail!("this tracer was built without the `ebpf` feature: no eBPF object to load");
    }
    let mut ebpf = loader
        .load(crate::EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let wanted = plan::kprobe_symbols();
    let kallsyms = Kallsyms::read_for(std::path::Path::new("/proc/kallsyms"), &wanted).ok();
    let context = AttachContext {
        kallsyms: kallsyms.as_ref(),
        tracefs: tracefs.as_deref(),
        kprobes: probes::kprobe_support(tracefs.as_deref()),
        unreadable_formats: layout_problems
            .iter()
            .map(|problem| (problem.event.clone(), problem.reason.clone()))
            .collect(),
        task_pid_offset,
    };
    // The counters first: then the raw tracepoint attaches after perf's
    // probe on signal_generate, which fixes the order the kernel calls them.
    let (counter_entry, mut timer_signal_counters) =
        crate::signal_check::open_counters(&mut ebpf, tracefs.as_deref());
    let mut report = probes::attach_all(&mut ebpf, &context);
    timer_signal_counters.set_signal_program(report.attached("signal_generate"));
    report.entries.push(counter_entry);
    Ok(AttachedProbes {
        ebpf,
        report,
        layout_problems,
        tracefs,
        timer_signal_counters,
    })
}

/// `undecodable` detail for events the eBPF programs dropped because a
/// field could not be read in the kernel.
pub const FIELD_READ_FAILED_DETAIL: &str = "in kernel: event field unreadable";

/// How often the reader looks at the ring without being woken: the eBPF
/// programs wake it only when an eighth of the ring holds unread data, so
/// events reach the model at most this late.
pub const RING_POLL: std::time::Duration = std::time::Duration::from_millis(50);

impl TraceSession {
    /// Loads the eBPF object, attaches every probe it can, and starts the
    /// ring-buffer reader. Fails when nothing useful attached. Must be
    /// called inside a tokio runtime.
    pub fn start(options: &SessionOptions) -> anyhow::Result<Self> {
        let AttachedProbes {
            mut ebpf,
            report,
            layout_problems,
            tracefs,
            timer_signal_counters,
        } = attach_probes(options)?;
        let ebpf_log = Arc::new(EbpfLogCounts::default());
        if let Some(level) = options.ebpf_log {
            start_ebpf_logger(&mut ebpf, level, Arc::clone(&ebpf_log))?;
        }
        let mode = plan::attached_mode(&report).ok_or_else(|| {
            anyhow!(
                "no useful probe attached (need the kvm tracepoints or the split-lock kprobes):\n{}",
                report
                    .entries
                    .iter()
                    .map(|entry| format!("  {} {}: {:?}", entry.kind, entry.target, entry.status))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        let ring = ebpf
            .take_map(map_names::EVENTS)
            .ok_or_else(|| anyhow!("map {} missing", map_names::EVENTS))?;
        let ring = RingBuf::try_from(ring).context("opening the event ring buffer")?;
        // SAFETY: the RingBuf owns its map fd, which stays open and the same
        // for as long as the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|error| anyhow!("registering the ring buffer with tokio: {error}"))?;
        Ok(Self {
            ebpf,
            ring,
            probes: report,
            mode,
            layout_problems,
            tracefs,
            ring_bytes: options
                .ring_bytes
                .unwrap_or(tracer_common::DEFAULT_RING_BYTES),
            undecodable: LossCounts::default(),
            // One record past the limit fits without growing.
            raw: BytesMut::with_capacity(RAW_BATCH_BYTES + 4096),
            timer_signal_counters,
            ebpf_log,
        })
    }

    /// Starts counting these threads in the kernel before any event of
    /// theirs: a vCPU thread is otherwise tracked only from its first
    /// KVM_RUN return, and the signals sent to it before that (the first
    /// kick after the tracer starts) would be lost. Existing entries are
    /// left as they are. Returns how many threads were added.
    pub fn track_threads(&mut self, threads: &[(u32, u32, Option<u32>)]) -> anyhow::Result<usize> {
        let map = self
            .ebpf
            .map_mut(map_names::THREAD_COUNTERS)
            .ok_or_else(|| anyhow!("map {} missing", map_names::THREAD_COUNTERS))?;
        let mut counters: HashMap<_, u32, ThreadCounters> = HashMap::try_from(map)?;
        let now = tracer_events::clock_ns(libc::CLOCK_MONOTONIC);
        let mut added = 0;
        for &(tid, tgid, vcpu) in threads {
            let fresh = ThreadCounters {
                tgid,
                vcpu_id_plus_one: vcpu.map_or(0, |index| index + 1),
                first_seen_ns: now,
                last_seen_ns: now,
                ..ThreadCounters::default()
            };
            // BPF_NOEXIST: a thread the programs already count keeps its counts.
            match counters.insert(tid, fresh, u64::from(aya_obj::generated::BPF_NOEXIST)) {
                Ok(()) => added += 1,
                Err(aya::maps::MapError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(error) => {
                    return Err(anyhow!("seeding {}: {error}", map_names::THREAD_COUNTERS));
                }
            }
        }
        Ok(added)
    }

    /// Waits until events are available (or `timeout` passes), then appends
    /// every available event to `out`. Returns the number appended.
    pub async fn wait_events(
        &mut self,
        out: &mut Vec<Event>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<usize> {
        match tokio::time::timeout(timeout, self.ring.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                guard.clear_ready();
            }
            Err(_elapsed) => {}
        }
        Ok(self.drain(out))
    }

    /// Appends every event currently in the ring to `out` without waiting:
    /// copies the ring's records into the batch, up to [`RAW_BATCH_BYTES`]
    /// at a time (so the batch stays that small whatever the ring's size),
    /// and decodes each batch.
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        let before = out.len();
        loop {
            let ring = self.ring.get_mut();
            self.raw.clear();
            while self.raw.len() < RAW_BATCH_BYTES {
                let Some(item) = ring.next() else { break };
                push_record(&mut self.raw, &item);
            }
            if self.raw.is_empty() {
                break;
            }
            for record in batch_records(&self.raw) {
                match decode(record) {
                    Ok(event) => out.push(event),
                    Err(error) => self.undecodable.count_undecodable(&error),
                }
            }
        }
        out.len() - before
    }

    /// Size in bytes of each loaded program as the kernel translated it
    /// (after the verifier removed dead code, such as the logging code
    /// when the programs' log level is 0); programs whose size the kernel
    /// does not tell are left out.
    pub fn translated_sizes(&self) -> BTreeMap<String, u32> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let size = program.info().ok()?.size_translated()?;
                Some((name.to_owned(), size))
            })
            .collect()
    }

    /// Raw fd of the ring buffer (for diagnostics).
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }

    /// Everything lost so far: kernel ring drops per kind, undecodable records.
    pub fn losses(&self) -> anyhow::Result<LossCounts> {
        let mut losses = self.undecodable.clone();
        losses.recursion_misses = self.recursion_misses();
        if let Some(skipped) = self
            .timer_signal_counters
            .skipped(&self.ebpf)
            .filter(|&n| n > 0)
        {
            losses
                .skipped_by_kernel
                .insert(crate::signal_check::SKIPPED_DETAIL.to_owned(), skipped);
        }
        let drops = self.per_cpu_totals(map_names::RING_DROPS, EVENT_KIND_SLOTS)?;
        for (slot, total) in drops.into_iter().enumerate() {
            if total > 0 {
                let name = EventKind::from_raw(slot as u16).map_or("unknown", EventKind::name);
                losses.ring_full.insert(name.to_owned(), total);
            }
        }
        let failures = self.per_cpu_totals(map_names::PROGRAM_FAILURES, PROGRAM_FAILURE_SLOTS)?;
        let failed = |failure: ProgramFailure| failures[failure as usize];
        losses.counter_map_full = failed(ProgramFailure::CounterInsert);
        losses.window_map_full = failed(ProgramFailure::WindowInsert);
        if failed(ProgramFailure::FieldRead) > 0 {
            losses.undecodable.insert(
                FIELD_READ_FAILED_DETAIL.to_owned(),
                failed(ProgramFailure::FieldRead),
            );
        }
        Ok(losses)
    }

    /// Signals to threads the programs do not track, counted per CPU.
    pub fn untracked_signals(&self) -> anyhow::Result<UntrackedSignals> {
        let slots = self.per_cpu_totals(map_names::UNTRACKED_SIGNALS, UNTRACKED_SIGNAL_SLOTS)?;
        Ok(UntrackedSignals {
            timer: slots[UntrackedSignal::Timer as usize],
            other: slots[UntrackedSignal::Other as usize],
        })
    }

    /// Each slot of a per-CPU `u64` array, summed over the CPUs.
    fn per_cpu_totals(&self, name: &str, slots: u32) -> anyhow::Result<Vec<u64>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        (0..slots)
            .map(|slot| Ok(array.get(&slot, 0)?.iter().sum()))
            .collect()
    }

    /// Per-program counts of runs the kernel skipped for recursion.
    pub fn recursion_misses(&self) -> BTreeMap<String, u64> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let fd = program.fd().ok()?;
                let misses = crate::kernel::bpf::program_recursion_misses(fd.as_fd()).ok()?;
                (misses > 0).then(|| (name.to_owned(), misses))
            })
            .collect()
    }

    /// Exact per-thread counters kept in the kernel.
    pub fn thread_counters(&self) -> anyhow::Result<BTreeMap<u32, ThreadCounters>> {
        let map = self
            .ebpf
            .map(map_names::THREAD_COUNTERS)
            .ok_or_else(|| anyhow!("map {} missing", map_names::THREAD_COUNTERS))?;
        let counters: HashMap<_, u32, ThreadCounters> = HashMap::try_from(map)?;
        let mut out = BTreeMap::new();
        for entry in &counters {
            let (tid, value) = entry?;
            out.insert(tid, value);
        }
        Ok(out)
    }
}

/// The in-kernel per-thread counters as the recording and the views keep them.
pub fn kernel_counts(counters: &ThreadCounters) -> KernelCounts {
    KernelCounts {
        guest_traps: counters.guest_split_lock_traps,
        user_traps: counters.user_split_lock_traps,
        sleeps_interrupted: counters.sleeps_interrupted,
        sleeps_completed: counters.sleeps_completed,
        semaphore_interrupted: counters.semaphore_interrupted,
        timer_signals: counters.timer_signals,
        other_signals: counters.other_signals,
        vm_exits: counters.kvm_exits,
        ac_vm_exits: counters.kvm_exits_split_lock,
        userspace_exits: counters.userspace_exits,
        eintr_exits: counters.userspace_exits_eintr,
        error_exits: counters.userspace_exits_error,
    }
}

/// Forwards the eBPF programs' log records to [`EbpfLogger`] from a task
/// of the session's runtime, as they arrive.
fn start_ebpf_logger(
    ebpf: &mut Ebpf,
    level: log::Level,
    counts: Arc<EbpfLogCounts>,
) -> anyhow::Result<()> {
    let logger = aya_log::EbpfLogger::init_with_logger(
        ebpf,
        EbpfLogger::new(level.to_level_filter(), counts),
    )
    .context("opening the eBPF log ring (aya-log)")?;
    // SAFETY: the logger owns its ring's map fd, which stays open and the
    // same for as long as the AsyncFd owns the logger.
    let mut logger =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
            .context("registering the eBPF log ring with tokio")?;
    tokio::spawn(async move {
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch gives back exactly the records put in, lengths and bytes,
    /// an empty one and one of the ring's largest sizes among them.
    #[test]
    fn a_batch_returns_every_record_as_it_was_copied() {
        let records: Vec<Vec<u8>> = vec![
            (0..40).collect(),
            Vec::new(),
            vec![0xab; 4096],
            (0..=255).cycle().take(1001).collect(),
        ];
        let mut batch = BytesMut::new();
        for record in &records {
            push_record(&mut batch, record);
        }
        let back: Vec<&[u8]> = batch_records(&batch).collect();
        assert_eq!(back.len(), records.len());
        for (got, want) in back.iter().zip(&records) {
            assert_eq!(*got, want.as_slice());
        }
        assert_eq!(batch_records(&[]).count(), 0);
    }
}
