//! eBPF programs of the split-lock tracer.
//!
//! Two layers, on purpose:
//! 1. exact per-thread counters in `THREAD_COUNTERS`, updated first, so they
//!    stay exact when the ring buffer is full;
//! 2. a detailed record per event in the `EVENTS` ring buffer, whose
//!    reservation failures are counted per CPU and per kind in `RING_DROPS`
//!    (other program failures in `PROGRAM_FAILURES`).
//!
//! Conditions an operator or a kernel developer needs to see when something
//! is off (a refused map insert, an unreadable field, a full ring, a handler
//! return without its entry, a window a missed return left open) are counted
//! as above and also logged through aya-log. The loader sets aya-log's
//! level global to 0 unless `--ebpf-log` or `RUST_LOG` asks for the
//! messages; the level is read-only data, so the verifier drops the logging
//! code and the programs run as if it were not there.
//!
//! Only what matters gets per-thread state and ring events: threads seen
//! in a KVM exit, threads that entered a split-lock handler, threads that
//! took a vCPU thread's name, SIGBUS/BUS_ADRALN targets, and the vCPU
//! threads the loader found in /proc at start. A signal to any other thread
//! only bumps a per-CPU count (`UNTRACKED_SIGNALS`), so a host full of
//! timers that are not vCPUs costs little more than a counting tool.
//!
//! The punishment primitives (`msleep_interruptible`, `down_interruptible`)
//! are called from all over the kernel; their return probes only report while
//! the current thread is inside a split-lock handler (`SPLIT_LOCK_WINDOW`,
//! set by the handler's entry probe and cleared by its return probe).
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomics offer no
// `fetch_add`; the intrinsic lowers to the BPF atomic add instruction.
// Allowed on the stable toolchain by the RUSTC_BOOTSTRAP=1 the build sets.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic add on the BPF target, see above")]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_CPU, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_RB_RING_SIZE, bpf_perf_event_value,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_perf_event_read_value, bpf_probe_read_kernel,
    },
    macros::{kprobe, kretprobe, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerfEventArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::{info, warn};
use tracer_common::{
    BUS_ADRALN, COMM_LEN, EVENT_KIND_SLOTS, EventHeader, EventKind, FIELD_ABSENT, KVM_RUN_EINTR,
    KvmExitEvent, KvmUserspaceExitEvent, MAX_THREADS, PROGRAM_FAILURE_SLOTS, ProgramFailure,
    PunishmentReturnEvent, SI_TIMER, SIGBUS, SignalGenerateEvent, SplitLockReturnEvent,
    SplitLockTrapEvent, ThreadCounters, TimerSignalTally, TracerConfig, UNTRACKED_SIGNAL_SLOTS,
    UntrackedSignal, kvm_exit_reason, vmx,
};

/// Filled in by the loader (field offsets read from tracefs at start-up).
#[unsafe(no_mangle)]
static TRACER_CONFIG: TracerConfig = TracerConfig::UNSET;

/// Default ring size; the loader may override it.

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(tracer_common::DEFAULT_RING_BYTES, 0);

#[map(name = "RING_DROPS")]
static RING_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_KIND_SLOTS, 0);

#[map(name = "PROGRAM_FAILURES")]
static PROGRAM_FAILURES: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROGRAM_FAILURE_SLOTS, 0);

#[map(name = "UNTRACKED_SIGNALS")]
static UNTRACKED_SIGNALS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(UNTRACKED_SIGNAL_SLOTS, 0);

#[map(name = "THREAD_COUNTERS")]
static THREAD_COUNTERS: LruHashMap<u32, ThreadCounters> =
    LruHashMap::with_max_entries(MAX_THREADS, 0);

#[map(name = "SPLIT_LOCK_WINDOW")]
static SPLIT_LOCK_WINDOW: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU perf counting events on `signal:signal_generate` (`code == -2`),
/// opened by the loader; empty where it could not open them.
#[map(name = "TIMER_SIGNAL_HITS")]
static TIMER_SIGNAL_HITS: PerfEventArray<u32> = PerfEventArray::new(0);

#[map(name = "TIMER_SIGNAL_TALLY")]
static TIMER_SIGNAL_TALLY: PerCpuArray<TimerSignalTally> = PerCpuArray::with_max_entries(1, 0);

/// `-EEXIST`, what a `BPF_NOEXIST` insert of a present key returns.
const EEXIST: i32 = 17;

/// x86-64 `struct pt_regs`: `ip` is the 17th 8-byte slot (r15 .. orig_ax, ip).
const PT_REGS_IP_OFFSET: usize = 16 * 8;

/// One field of the loader's [`TracerConfig`] (`config!(kvm_exit)`,
/// `config!(filter_tgid)`): a volatile read, so the compiler cannot fold
/// the compile-time default, of that field only (reading the whole
/// configuration copied all of it to the stack on every call, on every
/// signal).
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: a plain read of a global the loader rewrote before load.
        unsafe { core::ptr::read_volatile(&raw const TRACER_CONFIG.$($field).+) }
    };
}

#[inline(always)]
fn current_ids() -> (u32, u32) {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

#[inline(always)]
fn header(kind: EventKind, now: u64, tgid: u32, tid: u32) -> EventHeader {
    EventHeader {
        timestamp_ns: now,
        kind: kind as u16,
        reserved: 0,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        tgid,
        tid,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn count_in_slot(array: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while preemption is off.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count_failure(failure: ProgramFailure) {
    count_in_slot(&PROGRAM_FAILURES, failure as u32);
}

/// The counter map refused an entry for `tid`.
#[inline(always)]
fn count_counter_failure<C: EbpfContext>(ctx: &C, tid: u32) {
    count_failure(ProgramFailure::CounterInsert);
    warn!(
        ctx,
        "THREAD_COUNTERS refused an entry for tid {}: its counts are missing", tid
    );
}

/// An event lost because one of its fields (`what`) could not be read.
#[inline(always)]
fn count_unreadable<C: EbpfContext>(ctx: &C, what: &'static str) {
    count_failure(ProgramFailure::FieldRead);
    warn!(ctx, "{} could not be read: the event was dropped", what);
}

#[inline(always)]
fn count_drop<C: EbpfContext>(ctx: &C, kind: EventKind) {
    count_in_slot(&RING_DROPS, kind as u32);
    warn!(
        ctx,
        "event ring full: an event of kind {} was dropped", kind as u16
    );
}

/// The reader is woken once this share of the ring (1/8) holds unread data;
/// below it, it finds the events on its next poll (`RING_POLL` in the
/// session, 50 ms). A wakeup per event costs the reader more than the event
/// itself (measured by `cargo xtask bench`: CPU at 1k events/s).
const WAKEUP_SHARE_SHIFT: u32 = 3;

/// Writes `event` into the ring buffer or counts the drop.
#[inline(always)]
fn emit<C: EbpfContext, T: 'static>(ctx: &C, kind: EventKind, event: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(event);
            let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
            let size = EVENTS.query(u64::from(BPF_RB_RING_SIZE));
            let wakeup = if unread >= size >> WAKEUP_SHARE_SHIFT {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(u64::from(wakeup));
        }
        None => count_drop(ctx, kind),
    }
}

#[inline(always)]
fn bump(field: &mut u64) {
    // SAFETY: the map value lives as long as the program runs; the atomic add
    // keeps concurrent updates from several CPUs (signals are generated on
    // any CPU) exact.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, 1) };
}

/// Returns the counters of `tid`, creating them when `create` is set.
#[inline(always)]
fn counters(tid: u32, create: bool) -> Option<&'static mut ThreadCounters> {
    if let Some(ptr) = THREAD_COUNTERS.get_ptr_mut(tid) {
        // SAFETY: pointer into a map value, valid for the program's run.
        return Some(unsafe { &mut *ptr });
    }
    if !create {
        return None;
    }
    let fresh = ThreadCounters {
        first_seen_ns: now_ns(),
        ..ThreadCounters::default()
    };
    // Another CPU may win the race; either way the entry exists afterwards.
    let _ = THREAD_COUNTERS.insert(tid, fresh, u64::from(BPF_NOEXIST));
    // SAFETY: as above.
    THREAD_COUNTERS
        .get_ptr_mut(tid)
        .map(|ptr| unsafe { &mut *ptr })
}

/// Counters of the current thread, with its tgid recorded.
#[inline(always)]
fn own_counters<C: EbpfContext>(
    ctx: &C,
    tgid: u32,
    tid: u32,
    now: u64,
) -> Option<&'static mut ThreadCounters> {
    let Some(counters) = counters(tid, true) else {
        count_counter_failure(ctx, tid);
        return None;
    };
    counters.tgid = tgid;
    counters.last_seen_ns = now;
    Some(counters)
}

#[inline(always)]
fn filtered_out(tgid: u32) -> bool {
    let filter = config!(filter_tgid);
    filter != 0 && filter != tgid
}

// ---------------------------------------------------------------------------
// Split-lock handlers (kprobes; optional, they need CONFIG_KPROBES).

fn split_lock_entry<C: EbpfContext>(ctx: &C, kind: EventKind, ip: u64) {
    let (tgid, tid) = current_ids();
    if filtered_out(tgid) {
        return;
    }
    let now = now_ns();
    // A handler's entry opens the window; `split_lock_warn` runs inside the
    // handler and only opens it when the entry probe is missing, so the
    // episode's duration is measured from the handler's entry, not from the
    // warn. A handler entry that finds a window open replaces it: the
    // return of the previous one was missed.
    let opened = match SPLIT_LOCK_WINDOW.insert(tid, now, u64::from(BPF_NOEXIST)) {
        Err(error) if error == -EEXIST && !matches!(kind, EventKind::SplitLockWarn) => {
            info!(
                ctx,
                "split-lock handler entry on tid {} found the previous window open (its return was missed)",
                tid
            );
            SPLIT_LOCK_WINDOW.insert(tid, now, 0)
        }
        Err(error) if error == -EEXIST => Ok(()),
        other => other,
    };
    if let Err(error) = opened {
        count_failure(ProgramFailure::WindowInsert);
        warn!(
            ctx,
            "SPLIT_LOCK_WINDOW refused an entry for tid {} (error {}): its sleeps are not attributed",
            tid,
            error
        );
    }
    if let Some(counters) = own_counters(ctx, tgid, tid, now) {
        match kind {
            EventKind::GuestSplitLockEntry => bump(&mut counters.guest_split_lock_traps),
            EventKind::UserSplitLockEntry => bump(&mut counters.user_split_lock_traps),
            _ => bump(&mut counters.split_lock_warns),
        }
    }
    emit(
        ctx,
        kind,
        SplitLockTrapEvent {
            header: header(kind, now, tgid, tid),
            ip,
        },
    );
}

fn split_lock_return<C: EbpfContext>(ctx: &C, kind: EventKind, handled: u64) {
    let (tgid, tid) = current_ids();
    if filtered_out(tgid) {
        return;
    }
    let now = now_ns();
    let entered = SPLIT_LOCK_WINDOW.get_ptr(tid).map(|ptr| {
        // SAFETY: pointer into a map value.
        unsafe { *ptr }
    });
    let _ = SPLIT_LOCK_WINDOW.remove(tid);
    if entered.is_none() {
        info!(
            ctx,
            "split-lock handler return on tid {} without its entry (the entry probe missed it): duration unknown",
            tid
        );
    }
    if handled == 0
        && let Some(counters) = own_counters(ctx, tgid, tid, now)
    {
        bump(&mut counters.split_lock_not_handled);
    }
    emit(
        ctx,
        kind,
        SplitLockReturnEvent {
            header: header(kind, now, tgid, tid),
            handled,
            duration_ns: entered.map_or(0, |start| now.saturating_sub(start)),
        },
    );
}

/// `bool handle_guest_split_lock(unsigned long ip)`, called by kvm_intel on a guest #AC.
#[kprobe]
pub fn handle_guest_split_lock(ctx: ProbeContext) -> u32 {
    split_lock_entry(
        &ctx,
        EventKind::GuestSplitLockEntry,
        ctx.arg::<u64>(0).unwrap_or(0),
    );
    0
}

#[kretprobe]
pub fn handle_guest_split_lock_ret(ctx: RetProbeContext) -> u32 {
    split_lock_return(
        &ctx,
        EventKind::GuestSplitLockReturn,
        ctx.ret::<u64>() & 0xff,
    );
    0
}

/// `bool handle_user_split_lock(struct pt_regs *regs, long error_code)`.
#[kprobe]
pub fn handle_user_split_lock(ctx: ProbeContext) -> u32 {
    let ip = ctx.arg::<u64>(0).map_or(0, |regs| {
        // SAFETY: bpf_probe_read_kernel validates the address.
        unsafe { bpf_probe_read_kernel((regs as usize + PT_REGS_IP_OFFSET) as *const u64) }
            .unwrap_or(0)
    });
    split_lock_entry(&ctx, EventKind::UserSplitLockEntry, ip);
    0
}

#[kretprobe]
pub fn handle_user_split_lock_ret(ctx: RetProbeContext) -> u32 {
    split_lock_return(
        &ctx,
        EventKind::UserSplitLockReturn,
        ctx.ret::<u64>() & 0xff,
    );
    0
}

/// `static void split_lock_warn(unsigned long ip)`: the misery path.
#[kprobe]
pub fn split_lock_warn(ctx: ProbeContext) -> u32 {
    split_lock_entry(
        &ctx,
        EventKind::SplitLockWarn,
        ctx.arg::<u64>(0).unwrap_or(0),
    );
    0
}

fn punishment_return<C: EbpfContext>(ctx: &C, kind: EventKind, retval: i64) {
    let (tgid, tid) = current_ids();
    // Only inside a split-lock handler: these functions run everywhere.
    if SPLIT_LOCK_WINDOW.get_ptr(tid).is_none() {
        return;
    }
    let now = now_ns();
    if let Some(counters) = own_counters(ctx, tgid, tid, now) {
        let field = match (kind, retval) {
            (EventKind::MsleepInterruptibleReturn, 0) => &mut counters.sleeps_completed,
            (EventKind::MsleepInterruptibleReturn, _) => &mut counters.sleeps_interrupted,
            (_, 0) => &mut counters.semaphore_acquired,
            _ => &mut counters.semaphore_interrupted,
        };
        bump(field);
    }
    emit(
        ctx,
        kind,
        PunishmentReturnEvent {
            header: header(kind, now, tgid, tid),
            retval,
        },
    );
}

/// `unsigned long msleep_interruptible(unsigned int msecs)`: remaining ms.
#[kretprobe]
pub fn msleep_interruptible_ret(ctx: RetProbeContext) -> u32 {
    punishment_return(
        &ctx,
        EventKind::MsleepInterruptibleReturn,
        ctx.ret::<u64>() as i64,
    );
    0
}

/// `int down_interruptible(struct semaphore *sem)`: 0 or -EINTR.
#[kretprobe]
pub fn down_interruptible_ret(ctx: RetProbeContext) -> u32 {
    punishment_return(
        &ctx,
        EventKind::DownInterruptibleReturn,
        i64::from(ctx.ret::<u64>() as i32),
    );
    0
}

// ---------------------------------------------------------------------------
// Tracepoints (always available where the kvm and signal events exist).

/// What a program on a perf tracepoint returns: non-zero lets the kernel go
/// on to the perf events other tools opened on the same tracepoint (zero
/// would hide every `kvm:kvm_exit` from `perf kvm stat`, say, for as long
/// as the tracer is attached: the BPF program runs first and its result
/// gates the rest of the tracepoint's perf delivery). The entry points are
/// written out, section name and all, because aya-ebpf's `#[tracepoint]`
/// macro returns 0 whatever the function returns.
const PASS_TO_PERF: u32 = 1;

#[inline(always)]
fn read_i32(ctx: &TracePointContext, offset: u32) -> Option<i32> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: the offset comes from the event's tracefs format file.
    unsafe { ctx.read_at::<i32>(offset as usize) }.ok()
}

#[inline(always)]
fn read_u32(ctx: &TracePointContext, offset: u32) -> u32 {
    read_i32(ctx, offset).map_or(0, |value| value as u32)
}

#[inline(always)]
fn read_u64(ctx: &TracePointContext, offset: u32) -> u64 {
    if offset == FIELD_ABSENT {
        return 0;
    }
    // SAFETY: as in read_i32.
    unsafe { ctx.read_at::<u64>(offset as usize) }.unwrap_or(0)
}

/// Counts this run of a signal program for a timer signal and, at the
/// CPU's first run and whenever `compare` is set, compares the CPU's runs
/// with the kernel's perf count of the same tracepoint (see
/// [`TimerSignalTally`]). Without a counter on this CPU it only counts.
/// The comparison is skipped for signals to untracked threads (the perf
/// read is the dearest part of a run that only counts): the reader makes
/// the same comparison with the current counts whenever it looks
/// (`signal_check`), so the reported count of skipped runs is never more
/// than the truth, may fall short while signals arrive, and is exact once
/// they stop (as at the end of a recording).
#[inline(always)]
fn tally_timer_signal(compare: bool) {
    let Some(tally) = TIMER_SIGNAL_TALLY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot; the kernel does not nest a program inside
    // itself on one CPU (it counts a recursion miss instead).
    let tally = unsafe { &mut *tally };
    tally.runs += 1;
    if tally.started != 0 && !compare {
        return;
    }
    let mut value = bpf_perf_event_value {
        counter: 0,
        enabled: 0,
        running: 0,
    };
    // SAFETY: the map pointer is the map definition itself (PerfEventArray
    // is a transparent wrapper of it); `value` is a valid buffer of the
    // size passed.
    let status = unsafe {
        bpf_perf_event_read_value(
            (&raw const TIMER_SIGNAL_HITS).cast_mut().cast(),
            u64::from(BPF_F_CURRENT_CPU),
            &raw mut value,
            size_of::<bpf_perf_event_value>() as u32,
        )
    };
    if status != 0 {
        return;
    }
    let difference = value.counter.wrapping_sub(tally.runs) as i64;
    if tally.started == 0 {
        tally.baseline = difference;
        tally.started = 1;
    }
    tally.skipped = difference.wrapping_sub(tally.baseline);
}

/// What both `signal_generate` programs do with one generated signal. Only
/// signals to tracked threads (those with counters: vCPU threads, threads
/// that entered a split-lock handler, threads with a vCPU thread's name,
/// the vCPU threads the loader found at start) and SIGBUS/BUS_ADRALN (which
/// starts tracking its target) get counted per thread and recorded; every
/// other signal only bumps this CPU's `UNTRACKED_SIGNALS` slot, the cost
/// of a counting tool. With a process filter (`-p`), only signals aimed at
/// a thread of that process count at all: by the target's `target_tgid`
/// where the program could read it, else by the process the counters
/// already saw the target in.
#[inline(always)]
fn on_signal<C: EbpfContext>(
    ctx: &C,
    sig: i32,
    code: i32,
    target: i32,
    target_tgid: impl FnOnce() -> Option<u32>,
    rest: impl FnOnce() -> SignalRest,
) {
    let is_timer = code == SI_TIMER;
    let is_sigbus = sig == SIGBUS && code == BUS_ADRALN;
    let known = counters(target as u32, false);
    if is_timer {
        // Before the filter: the tally compares with the kernel's count of
        // every timer signal.
        tally_timer_signal(known.is_some());
    }
    let filter = config!(filter_tgid);
    if filter != 0 {
        let in_process = match target_tgid() {
            Some(tgid) => tgid == filter,
            None => known.as_ref().is_some_and(|known| known.tgid == filter),
        };
        if !in_process {
            return;
        }
    }
    let now = now_ns();
    let tracked = match known {
        Some(counters) => Some(counters),
        // A SIGBUS/BUS_ADRALN target is tracked from this signal on.
        None if is_sigbus => counters(target as u32, true),
        None => None,
    };
    match tracked {
        Some(counters) => {
            counters.last_seen_ns = now;
            if is_timer {
                bump(&mut counters.timer_signals);
            } else {
                bump(&mut counters.other_signals);
            }
            if is_sigbus {
                bump(&mut counters.sigbus_adraln);
            }
        }
        None if !is_sigbus => {
            let slot = if is_timer {
                UntrackedSignal::Timer
            } else {
                UntrackedSignal::Other
            };
            count_in_slot(&UNTRACKED_SIGNALS, slot as u32);
            return;
        }
        // The counter map refused the entry: the event still goes out, and
        // the failure is counted.
        None => count_counter_failure(ctx, target as u32),
    }
    let (tgid, tid) = current_ids();
    let rest = rest();
    emit(
        ctx,
        EventKind::SignalGenerate,
        SignalGenerateEvent {
            header: header(EventKind::SignalGenerate, now, tgid, tid),
            sig,
            errno: rest.errno,
            code,
            target_tid: target,
            group: rest.group,
            result: rest.result,
        },
    );
}

/// The fields of a signal only a recorded one needs (read only then).
struct SignalRest {
    errno: i32,
    group: i32,
    result: i32,
}

/// `signal:signal_generate` through perf: the fallback when the raw
/// tracepoint cannot be used (no BTF for `task_struct.pid`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/signal/signal_generate")]
pub fn signal_generate(ctx: *mut c_void) -> u32 {
    on_signal_tracepoint(&TracePointContext::new(ctx));
    PASS_TO_PERF
}

#[inline(always)]
fn on_signal_tracepoint(ctx: &TracePointContext) {
    let layout = config!(signal_generate);
    let (Some(sig), Some(code), Some(target)) = (
        read_i32(ctx, layout.sig),
        read_i32(ctx, layout.code),
        read_i32(ctx, layout.pid),
    ) else {
        count_unreadable(ctx, "signal_generate sig, code or pid");
        return;
    };
    on_signal(
        ctx,
        sig,
        code,
        target,
        || None,
        || SignalRest {
            errno: read_i32(ctx, layout.errno).unwrap_or(0),
            group: read_i32(ctx, layout.group).unwrap_or(-1),
            result: read_i32(ctx, layout.result).unwrap_or(-1),
        },
    );
}

/// `kernel_siginfo` offsets (the UAPI siginfo header: si_signo, si_errno,
/// si_code, all int).
const SIGINFO_ERRNO_OFFSET: usize = 4;
const SIGINFO_CODE_OFFSET: usize = 8;
/// `SEND_SIG_NOINFO` and `SEND_SIG_PRIV`: special `info` pointer values.
const SEND_SIG_PRIV: u64 = 1;
/// `si_code` of a user signal and of a kernel one.
const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;

/// Raw tracepoint `signal_generate(sig, info, task, group, result)`: the
/// same as the perf tracepoint program, without the perf dispatch. Through
/// perf the kernel skipped a few events per 100,000 at timer-interrupt
/// rates without counting a miss (measured by `cargo xtask bench`); a raw
/// tracepoint run the kernel skips is counted in the program's
/// `recursion_misses`.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate_raw(ctx: RawTracePointContext) -> i32 {
    let pid_offset = config!(task_pid_offset);
    if pid_offset == FIELD_ABSENT {
        return 0;
    }
    let sig: u64 = ctx.arg(0);
    let info: u64 = ctx.arg(1);
    let task: u64 = ctx.arg(2);
    let group: u64 = ctx.arg(3);
    let result: u64 = ctx.arg(4);
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an Err.
    let Ok(target) =
        (unsafe { bpf_probe_read_kernel((task + u64::from(pid_offset)) as *const i32) })
    else {
        count_unreadable(&ctx, "signal_generate target task_struct.pid");
        return 0;
    };
    let has_siginfo = info > SEND_SIG_PRIV;
    let code = if has_siginfo {
        // SAFETY: as above. An unreadable si_code would turn a timer signal
        // into some other one: the event is counted lost instead.
        let read =
            unsafe { bpf_probe_read_kernel((info as usize + SIGINFO_CODE_OFFSET) as *const i32) };
        let Ok(code) = read else {
            count_unreadable(&ctx, "signal_generate siginfo si_code");
            return 0;
        };
        code
    } else if info == SEND_SIG_PRIV {
        SI_KERNEL
    } else {
        SI_USER
    };
    let tgid_offset = config!(task_tgid_offset);
    on_signal(
        &ctx,
        sig as i32,
        code,
        target,
        || {
            (tgid_offset != FIELD_ABSENT)
                .then(|| {
                    // SAFETY: as above.
                    unsafe { bpf_probe_read_kernel((task + u64::from(tgid_offset)) as *const u32) }
                        .ok()
                })
                .flatten()
        },
        || SignalRest {
            // SAFETY: as above; an unreadable si_errno is recorded as 0.
            errno: if has_siginfo {
                unsafe {
                    bpf_probe_read_kernel((info as usize + SIGINFO_ERRNO_OFFSET) as *const i32)
                }
                .unwrap_or(0)
            } else {
                0
            },
            group: group as i32,
            result: result as i32,
        },
    );
    0
}

/// The thread names VMMs give their vCPU threads (QEMU `CPU 0/KVM`,
/// Firecracker `fc_vcpu 0`, cloud-hypervisor `vcpu0`, crosvm
/// `crosvm_vcpu0`, kvmtool `kvm-vcpu-0`).
const VCPU_COMM_PREFIXES: [&[u8]; 5] = [b"CPU ", b"fc_vcpu", b"vcpu", b"crosvm_vcpu", b"kvm-vcpu-"];

#[inline(always)]
fn has_prefix(comm: &[u8; COMM_LEN], prefix: &[u8]) -> bool {
    let mut index = 0;
    while index < prefix.len() && index < COMM_LEN {
        if comm[index] != prefix[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// `task:task_rename`: a thread that takes a vCPU thread's name is counted
/// from then on, so the signals sent to it before its first KVM_RUN return
/// (a VMM's first kick) are not lost. No event: the thread's KVM_RUN
/// returns say it is a vCPU.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/task/task_rename")]
pub fn task_rename(ctx: *mut c_void) -> u32 {
    on_task_rename(&TracePointContext::new(ctx));
    PASS_TO_PERF
}

#[inline(always)]
fn on_task_rename(ctx: &TracePointContext) {
    let layout = config!(task_rename);
    if layout.newcomm == FIELD_ABSENT {
        return;
    }
    // SAFETY: the offset comes from the event's tracefs format.
    let Ok(comm) = (unsafe { ctx.read_at::<[u8; COMM_LEN]>(layout.newcomm as usize) }) else {
        count_unreadable(ctx, "task_rename newcomm");
        return;
    };
    if !VCPU_COMM_PREFIXES
        .iter()
        .any(|prefix| has_prefix(&comm, prefix))
    {
        return;
    }
    let (tgid, tid) = current_ids();
    let renamed = read_i32(ctx, layout.pid).map_or(tid, |pid| pid as u32);
    // The renaming thread's group is the renamed one's only when it renames
    // itself (pthread_setname_np from the new thread, as QEMU and Rust's
    // std do); otherwise the group is learnt from the thread's own events.
    let own = renamed == tid;
    if own && filtered_out(tgid) {
        return;
    }
    match counters(renamed, true) {
        Some(counters) => {
            if own {
                counters.tgid = tgid;
            }
            counters.last_seen_ns = now_ns();
        }
        None => count_counter_failure(ctx, renamed),
    }
}

/// `kvm:kvm_userspace_exit`: every return of KVM_RUN, in the vCPU thread.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/kvm/kvm_userspace_exit")]
pub fn kvm_userspace_exit(ctx: *mut c_void) -> u32 {
    on_kvm_userspace_exit(&TracePointContext::new(ctx));
    PASS_TO_PERF
}

#[inline(always)]
fn on_kvm_userspace_exit(ctx: &TracePointContext) {
    let (tgid, tid) = current_ids();
    if filtered_out(tgid) {
        return;
    }
    let layout = config!(kvm_userspace_exit);
    let reason = read_u32(ctx, layout.reason);
    let errno = read_i32(ctx, layout.errno).unwrap_or(0);
    let now = now_ns();
    if let Some(counters) = own_counters(ctx, tgid, tid, now) {
        bump(&mut counters.userspace_exits);
        if errno == KVM_RUN_EINTR {
            bump(&mut counters.userspace_exits_eintr);
        } else if kvm_exit_reason::is_error(reason, errno) {
            bump(&mut counters.userspace_exits_error);
        }
    }
    emit(
        ctx,
        EventKind::KvmUserspaceExit,
        KvmUserspaceExitEvent {
            header: header(EventKind::KvmUserspaceExit, now, tgid, tid),
            reason,
            errno,
        },
    );
}

/// `kvm:kvm_exit`: counted always; recorded for split-lock #AC exits (VMX
/// exit reason 0 with a valid hardware-exception #AC in `intr_info`) and for
/// failed VM entries.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/kvm/kvm_exit")]
pub fn kvm_exit(ctx: *mut c_void) -> u32 {
    on_kvm_exit(&TracePointContext::new(ctx));
    PASS_TO_PERF
}

#[inline(always)]
fn on_kvm_exit(ctx: &TracePointContext) {
    let (tgid, tid) = current_ids();
    if filtered_out(tgid) {
        return;
    }
    let layout = config!(kvm_exit);
    let exit_reason = read_u32(ctx, layout.exit_reason);
    let isa = read_u32(ctx, layout.isa);
    let intr_info = read_u32(ctx, layout.intr_info);
    let vcpu_id = read_u32(ctx, layout.vcpu_id);
    let split_lock = isa == vmx::ISA_VMX
        && exit_reason == vmx::EXIT_REASON_EXCEPTION_NMI
        && intr_info & vmx::INTR_INFO_MATCH_MASK == vmx::INTR_INFO_AC;
    let failed_entry = isa == vmx::ISA_VMX && exit_reason & vmx::EXIT_REASON_FAILED_VMENTRY != 0;
    let now = now_ns();
    if let Some(counters) = own_counters(ctx, tgid, tid, now) {
        counters.vcpu_id_plus_one = vcpu_id.wrapping_add(1);
        bump(&mut counters.kvm_exits);
        if split_lock {
            bump(&mut counters.kvm_exits_split_lock);
        }
    }
    if !(split_lock || failed_entry) {
        return;
    }
    emit(
        ctx,
        EventKind::KvmExit,
        KvmExitEvent {
            header: header(EventKind::KvmExit, now, tgid, tid),
            exit_reason,
            isa,
            guest_rip: read_u64(ctx, layout.guest_rip),
            info1: read_u64(ctx, layout.info1),
            info2: read_u64(ctx, layout.info2),
            intr_info,
            error_code: read_u32(ctx, layout.error_code),
            vcpu_id,
            reserved: 0,
        },
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
