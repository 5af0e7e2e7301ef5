//! Types shared by the split-lock tracer's eBPF programs and its userspace.
//!
//! Every record the eBPF side writes into the ring buffer starts with an
//! [`EventHeader`]; its `kind` says which of the `*Event` structs follows.
//! All types are `#[repr(C)]`, contain no padding holes the verifier would
//! reject reading, and are `aya::Pod` when the `user` feature is on.
#![no_std]
// A declared dependency nothing uses fails CI (see tracer/src/lib.rs).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// `si_code` of a POSIX timer signal (`SI_TIMER`, include/uapi/asm-generic/siginfo.h).
pub const SI_TIMER: i32 = -2;
/// Signal number of SIGBUS on x86-64.
pub const SIGBUS: i32 = 7;
/// `si_code` of SIGBUS for a misaligned access (`BUS_ADRALN`), as sent by
/// `handle_guest_split_lock`/`handle_user_split_lock` in fatal mode.
pub const BUS_ADRALN: i32 = 1;
/// `errno` of a KVM_RUN interrupted by a signal (`-EINTR`).
pub const KVM_RUN_EINTR: i32 = -4;

/// `kvm_run.exit_reason` values used by the tracer (include/uapi/linux/kvm.h).
pub mod kvm_exit_reason {
    /// `KVM_EXIT_EXCEPTION`: an exception went to userspace (split_lock_detect=fatal).
    pub const EXCEPTION: u32 = 1;
    /// `KVM_EXIT_SHUTDOWN`: the guest triple-faulted.
    pub const SHUTDOWN: u32 = 8;
    /// `KVM_EXIT_FAIL_ENTRY`: VM entry failed (e.g. hardware error 0x80000021).
    pub const FAIL_ENTRY: u32 = 9;
    /// `KVM_EXIT_INTR`: KVM_RUN returned because a signal was pending.
    pub const INTR: u32 = 10;
    /// `KVM_EXIT_INTERNAL_ERROR` (e.g. suberror 3, delivery event).
    pub const INTERNAL_ERROR: u32 = 17;

    /// Whether a KVM_RUN return (`errno` 0) with this reason means the vCPU
    /// cannot go on: internal error, failed entry or shutdown.
    pub const fn is_error(reason: u32, errno: i32) -> bool {
        errno == 0 && matches!(reason, INTERNAL_ERROR | FAIL_ENTRY | SHUTDOWN)
    }
}

/// VMX facts used to recognise a split-lock #AC VM exit in `kvm:kvm_exit`.
pub mod vmx {
    /// `isa` field value of `kvm:kvm_exit` on Intel VMX (`KVM_ISA_VMX`).
    pub const ISA_VMX: u32 = 1;
    /// `EXIT_REASON_EXCEPTION_NMI`.
    pub const EXIT_REASON_EXCEPTION_NMI: u32 = 0;
    /// Bit 31 of the exit reason: the VM entry failed.
    pub const EXIT_REASON_FAILED_VMENTRY: u32 = 0x8000_0000;
    /// Mask of the valid bit, interruption type and vector in `intr_info`.
    pub const INTR_INFO_MATCH_MASK: u32 = 0x8000_07ff;
    /// Valid, hardware exception (type 3), vector 17 (#AC).
    pub const INTR_INFO_AC: u32 = 0x8000_0311;
}

/// Default size of the `EVENTS` ring buffer (4 MiB).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;

/// Field offset value meaning "this kernel's tracepoint has no such field".
pub const FIELD_ABSENT: u32 = u32::MAX;

/// What produced a ring-buffer record. Stored as `u16` in [`EventHeader::kind`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// kprobe `handle_guest_split_lock(ip)`: a guest took a split-lock #AC.
    GuestSplitLockEntry = 1,
    /// kretprobe `handle_guest_split_lock`: `true` = handled (warn mode).
    GuestSplitLockReturn = 2,
    /// kprobe `handle_user_split_lock(regs, error_code)`: a host task's #AC.
    UserSplitLockEntry = 3,
    /// kretprobe `handle_user_split_lock`.
    UserSplitLockReturn = 4,
    /// kprobe `split_lock_warn(ip)`: the misery path was entered.
    SplitLockWarn = 5,
    /// kretprobe `msleep_interruptible` inside a split-lock window.
    MsleepInterruptibleReturn = 6,
    /// kretprobe `down_interruptible` inside a split-lock window.
    DownInterruptibleReturn = 7,
    /// tracepoint `signal:signal_generate` (filtered).
    SignalGenerate = 8,
    /// tracepoint `kvm:kvm_userspace_exit`.
    KvmUserspaceExit = 9,
    /// tracepoint `kvm:kvm_exit`, filtered to #AC and failed-entry exits.
    KvmExit = 10,
}

/// Number of slots in the per-CPU `RING_DROPS` array: one per [`EventKind`]
/// value (ring-buffer reservation failures only).
pub const EVENT_KIND_SLOTS: u32 = 16;

/// What else a program can fail at, counted per CPU in `PROGRAM_FAILURES`
/// (indexed by the value): these are not ring drops.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramFailure {
    /// An insert into `THREAD_COUNTERS` failed: that thread's exact counts
    /// are short (its events still went to the ring).
    CounterInsert = 0,
    /// An insert into `SPLIT_LOCK_WINDOW` failed: the punishment results of
    /// that episode go unreported.
    WindowInsert = 1,
    /// A field of the event could not be read: the program returned early
    /// and the event is lost (userspace reports it with the undecodable
    /// records).
    FieldRead = 2,
}

/// Number of slots in `PROGRAM_FAILURES`.
pub const PROGRAM_FAILURE_SLOTS: u32 = 3;

/// Signals to threads the programs do not track (neither vCPUs, nor
/// threads that entered a split-lock handler, nor SIGBUS/BUS_ADRALN
/// targets): counted per CPU in `UNTRACKED_SIGNALS`, indexed by the value,
/// and neither recorded nor given per-thread state. Not a loss: the tracer
/// leaves them out on purpose.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UntrackedSignal {
    /// `si_code == SI_TIMER` (a POSIX timer's signal).
    Timer = 0,
    /// Any other signal.
    Other = 1,
}

/// Number of slots in `UNTRACKED_SIGNALS`.
pub const UNTRACKED_SIGNAL_SLOTS: u32 = 2;

/// Most threads the in-kernel per-thread counter map holds, and the most
/// the userspace model keeps (the least recently seen go first in both).
pub const MAX_THREADS: u32 = 16_384;

impl EventKind {
    /// Every kind, in numeric order.
    pub const ALL: [Self; 10] = [
        Self::GuestSplitLockEntry,
        Self::GuestSplitLockReturn,
        Self::UserSplitLockEntry,
        Self::UserSplitLockReturn,
        Self::SplitLockWarn,
        Self::MsleepInterruptibleReturn,
        Self::DownInterruptibleReturn,
        Self::SignalGenerate,
        Self::KvmUserspaceExit,
        Self::KvmExit,
    ];

    /// Decodes the raw `u16` stored in a header.
    pub fn from_raw(raw: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u16 == raw)
    }

    /// Short stable name used in exports and drop reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::GuestSplitLockEntry => "handle_guest_split_lock",
            Self::GuestSplitLockReturn => "handle_guest_split_lock_ret",
            Self::UserSplitLockEntry => "handle_user_split_lock",
            Self::UserSplitLockReturn => "handle_user_split_lock_ret",
            Self::SplitLockWarn => "split_lock_warn",
            Self::MsleepInterruptibleReturn => "msleep_interruptible_ret",
            Self::DownInterruptibleReturn => "down_interruptible_ret",
            Self::SignalGenerate => "signal_generate",
            Self::KvmUserspaceExit => "kvm_userspace_exit",
            Self::KvmExit => "kvm_exit",
        }
    }
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// An [`EventKind`] as `u16`.
    pub kind: u16,
    /// Reserved, zero.
    pub reserved: u16,
    /// CPU the program ran on.
    pub cpu: u32,
    /// Thread group id (process id) of the current task.
    pub tgid: u32,
    /// Thread id of the current task.
    pub tid: u32,
    /// `comm` of the current task, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// Entry of a split-lock handler: `handle_guest_split_lock`,
/// `handle_user_split_lock` or `split_lock_warn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitLockTrapEvent {
    /// Common header.
    pub header: EventHeader,
    /// Instruction pointer of the split-locked instruction (guest RIP for KVM).
    pub ip: u64,
}

/// Return of `handle_guest_split_lock` / `handle_user_split_lock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitLockReturnEvent {
    /// Common header.
    pub header: EventHeader,
    /// The bool result: 1 = handled (warn mode), 0 = not handled (SIGBUS follows).
    pub handled: u64,
    /// Nanoseconds since the matching entry (0 when the entry was not seen).
    pub duration_ns: u64,
}

/// Return of a punishment primitive called inside a split-lock window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunishmentReturnEvent {
    /// Common header.
    pub header: EventHeader,
    /// Raw return value: remaining ms for `msleep_interruptible`, 0 or
    /// `-EINTR` for `down_interruptible`.
    pub retval: i64,
}

/// `signal:signal_generate`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalGenerateEvent {
    /// Common header (the *sender's* context; often an interrupted task).
    pub header: EventHeader,
    /// Signal number.
    pub sig: i32,
    /// `errno` field of the siginfo.
    pub errno: i32,
    /// `si_code` (SI_TIMER = -2 for POSIX timers).
    pub code: i32,
    /// Target thread id (the `pid` field of the tracepoint).
    pub target_tid: i32,
    /// 1 when sent to the whole thread group, -1 when the kernel lacks the field.
    pub group: i32,
    /// `TRACE_SIGNAL_*` result (0 delivered, 2 already pending...), -1 when absent.
    pub result: i32,
}

/// `kvm:kvm_userspace_exit`: a KVM_RUN ioctl returned to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmUserspaceExitEvent {
    /// Common header.
    pub header: EventHeader,
    /// `kvm_run.exit_reason`.
    pub reason: u32,
    /// Return value of KVM_RUN (`-4` = -EINTR).
    pub errno: i32,
}

/// `kvm:kvm_exit` for a split-lock #AC exit or a failed VM entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmExitEvent {
    /// Common header.
    pub header: EventHeader,
    /// Full exit reason (bit 31 = failed VM entry on VMX).
    pub exit_reason: u32,
    /// 1 = VMX, 2 = SVM.
    pub isa: u32,
    /// Guest RIP at the exit (the faulting instruction for #AC).
    pub guest_rip: u64,
    /// Exit qualification.
    pub info1: u64,
    /// IDT-vectoring information.
    pub info2: u64,
    /// VM-exit interruption information (0x80000b11 for #AC with error code).
    pub intr_info: u32,
    /// Exception error code.
    pub error_code: u32,
    /// vCPU index inside the VM.
    pub vcpu_id: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Exact per-thread counts kept in the kernel, keyed by thread id.
///
/// These are updated before any ring-buffer reservation, so they stay exact
/// when the ring overflows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCounters {
    /// Thread group id, once an event ran in the thread's own context (0 before).
    pub tgid: u32,
    /// Last known vCPU index + 1 (0 = unknown).
    pub vcpu_id_plus_one: u32,
    /// `handle_guest_split_lock` entries.
    pub guest_split_lock_traps: u64,
    /// `handle_user_split_lock` entries.
    pub user_split_lock_traps: u64,
    /// `split_lock_warn` entries.
    pub split_lock_warns: u64,
    /// Split-lock handlers that returned false (SIGBUS follows).
    pub split_lock_not_handled: u64,
    /// `msleep_interruptible` returns of 0 inside a window (full punishment).
    pub sleeps_completed: u64,
    /// `msleep_interruptible` returns > 0 inside a window (interrupted).
    pub sleeps_interrupted: u64,
    /// `down_interruptible` returns of 0 inside a window.
    pub semaphore_acquired: u64,
    /// `down_interruptible` returns != 0 inside a window.
    pub semaphore_interrupted: u64,
    /// SI_TIMER signals generated for this thread.
    pub timer_signals: u64,
    /// Other signals generated for this thread.
    pub other_signals: u64,
    /// SIGBUS with BUS_ADRALN generated for this thread.
    pub sigbus_adraln: u64,
    /// All `kvm_exit` events of this thread.
    pub kvm_exits: u64,
    /// `kvm_exit` events that were split-lock #AC exits.
    pub kvm_exits_split_lock: u64,
    /// All `kvm_userspace_exit` events.
    pub userspace_exits: u64,
    /// `kvm_userspace_exit` with errno -EINTR.
    pub userspace_exits_eintr: u64,
    /// `kvm_userspace_exit` with reason INTERNAL_ERROR, FAIL_ENTRY or SHUTDOWN.
    pub userspace_exits_error: u64,
    /// Timestamp of the first counted event.
    pub first_seen_ns: u64,
    /// Timestamp of the last counted event.
    pub last_seen_ns: u64,
}

/// Offsets (from the start of the raw tracepoint record) of `signal:signal_generate` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalGenerateLayout {
    /// `int sig`.
    pub sig: u32,
    /// `int errno`.
    pub errno: u32,
    /// `int code`.
    pub code: u32,
    /// `pid_t pid` (target).
    pub pid: u32,
    /// `int group`, or [`FIELD_ABSENT`].
    pub group: u32,
    /// `int result`, or [`FIELD_ABSENT`].
    pub result: u32,
}

/// Offsets of `kvm:kvm_userspace_exit` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmUserspaceExitLayout {
    /// `__u32 reason`.
    pub reason: u32,
    /// `int errno`.
    pub errno: u32,
}

/// Offsets of `kvm:kvm_exit` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmExitLayout {
    /// `unsigned int exit_reason`.
    pub exit_reason: u32,
    /// `unsigned long guest_rip`.
    pub guest_rip: u32,
    /// `u32 isa`.
    pub isa: u32,
    /// `u64 info1`.
    pub info1: u32,
    /// `u64 info2`.
    pub info2: u32,
    /// `u32 intr_info`.
    pub intr_info: u32,
    /// `u32 error_code`.
    pub error_code: u32,
    /// `unsigned int vcpu_id`.
    pub vcpu_id: u32,
}

/// Everything the loader tells the eBPF programs before load, as one global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracerConfig {
    /// Only trace this thread group (0 = all). Signals are filtered by target
    /// thread instead, since their context is the sender.
    pub filter_tgid: u32,
    /// Byte offset of `pid` in `struct task_struct` (from the kernel's BTF),
    /// for the raw-tracepoint `signal_generate` program; [`FIELD_ABSENT`]
    /// when unknown (then only the perf tracepoint program is used).
    pub task_pid_offset: u32,
    /// Byte offset of `tgid` in `struct task_struct`: with a filter, the raw
    /// tracepoint program keeps only signals aimed at the filtered process;
    /// [`FIELD_ABSENT`] when unknown (then a signal passes the filter only
    /// when its target already showed up as a thread of that process).
    pub task_tgid_offset: u32,
    /// `signal:signal_generate` layout on the running kernel.
    pub signal_generate: SignalGenerateLayout,
    /// `kvm:kvm_userspace_exit` layout on the running kernel.
    pub kvm_userspace_exit: KvmUserspaceExitLayout,
    /// `kvm:kvm_exit` layout on the running kernel.
    pub kvm_exit: KvmExitLayout,
    /// `task:task_rename` layout on the running kernel.
    pub task_rename: TaskRenameLayout,
}

/// Offsets of `task:task_rename` fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRenameLayout {
    /// `pid_t pid` (the renamed task), or [`FIELD_ABSENT`] on kernels that
    /// dropped it (then the renamed task is the current one).
    pub pid: u32,
    /// `char newcomm[16]`.
    pub newcomm: u32,
}

impl TracerConfig {
    /// A configuration with every field absent; the loader fills it in.
    pub const UNSET: Self = Self {
        filter_tgid: 0,
        task_pid_offset: FIELD_ABSENT,
        task_tgid_offset: FIELD_ABSENT,
        signal_generate: SignalGenerateLayout {
            sig: FIELD_ABSENT,
            errno: FIELD_ABSENT,
            code: FIELD_ABSENT,
            pid: FIELD_ABSENT,
            group: FIELD_ABSENT,
            result: FIELD_ABSENT,
        },
        kvm_userspace_exit: KvmUserspaceExitLayout {
            reason: FIELD_ABSENT,
            errno: FIELD_ABSENT,
        },
        kvm_exit: KvmExitLayout {
            exit_reason: FIELD_ABSENT,
            guest_rip: FIELD_ABSENT,
            isa: FIELD_ABSENT,
            info1: FIELD_ABSENT,
            info2: FIELD_ABSENT,
            intr_info: FIELD_ABSENT,
            error_code: FIELD_ABSENT,
            vcpu_id: FIELD_ABSENT,
        },
        task_rename: TaskRenameLayout {
            pid: FIELD_ABSENT,
            newcomm: FIELD_ABSENT,
        },
    };
}

/// Names of the maps in the eBPF object, shared so neither side can drift.
/// Per-CPU tally that checks the signal programs against the kernel's own
/// count of `signal:signal_generate` timer signals (a perf counting event per
/// CPU, filtered to `code == -2`, read by the program itself).
///
/// At its first timer signal on a CPU the program takes hits − runs (the
/// perf count minus its own runs) as the baseline; afterwards `skipped` =
/// (hits − runs) − baseline: timer signals the kernel generated on that CPU
/// without running the program and without counting a recursion miss. Both
/// counts are taken in the same place on every run, so whether the perf
/// count already includes the current hit cancels out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerSignalTally {
    /// Timer signals the program ran for on this CPU.
    pub runs: u64,
    /// hits − runs at the first run.
    pub baseline: i64,
    /// Skipped timer signals as of the last run (negative would mean the
    /// perf count fell behind the program: an inconsistency, shown as 0).
    pub skipped: i64,
    /// 1 once the baseline is taken.
    pub started: u64,
}

pub mod map_names {
    /// `RingBuf` of events.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<u64>` of ring reservation failures, indexed by [`super::EventKind`].
    pub const RING_DROPS: &str = "RING_DROPS";
    /// `PerCpuArray<u64>` of other program failures, indexed by [`super::ProgramFailure`].
    pub const PROGRAM_FAILURES: &str = "PROGRAM_FAILURES";
    /// `PerCpuArray<u64>` of signals to untracked threads, indexed by [`super::UntrackedSignal`].
    pub const UNTRACKED_SIGNALS: &str = "UNTRACKED_SIGNALS";
    /// `LruHashMap<u32 tid, ThreadCounters>`.
    pub const THREAD_COUNTERS: &str = "THREAD_COUNTERS";
    /// `LruHashMap<u32 tid, u64 entry timestamp>`: threads inside a split-lock handler.
    pub const SPLIT_LOCK_WINDOW: &str = "SPLIT_LOCK_WINDOW";
    /// `PerfEventArray` of per-CPU counting events on `signal:signal_generate`.
    pub const TIMER_SIGNAL_HITS: &str = "TIMER_SIGNAL_HITS";
    /// `PerCpuArray<TimerSignalTally>` (one slot).
    pub const TIMER_SIGNAL_TALLY: &str = "TIMER_SIGNAL_TALLY";
}

/// Name of the global holding the [`TracerConfig`].
pub const CONFIG_GLOBAL: &str = "TRACER_CONFIG";

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all impls): #[repr(C)] types made only of integers and byte
    // arrays, laid out without implicit padding, valid for every bit pattern.
    unsafe impl aya::Pod for super::ThreadCounters {}
    unsafe impl aya::Pod for super::TracerConfig {}
    unsafe impl aya::Pod for super::TimerSignalTally {}
}
