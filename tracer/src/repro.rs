//! `tracer repro`: the seed 001 reproducer as a product feature.
//!
//! A KVM VM (through `/dev/kvm`) whose vCPUs run a 16-bit real-mode guest that
//! loops on `lock bts` over a 64-byte cache-line boundary and counts its
//! iterations in guest memory. Each vCPU thread (named `CPU N/KVM` like QEMU's)
//! arms a POSIX timer (`timer_create(CLOCK_MONOTONIC, SIGEV_THREAD_ID)`) that
//! kicks it with a signal which is blocked in the thread but unblocked inside
//! KVM_RUN through `KVM_SET_SIGNAL_MASK`; after each `EINTR` the pending signal
//! is consumed with `sigtimedwait` and a zero timeout. On a host with
//! split-lock detection in warn mode and `kernel.split_lock_mitigate=1`,
//! periods shorter than the punishment sleep give zero guest progress.

pub mod sweep;
pub mod sweep_trace;

use std::{
    collections::BTreeMap,
    ptr::NonNull,
    sync::{
        Arc, Barrier,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Guest physical address where the guest code is loaded and starts.
const CODE_GPA: u64 = 0x1000;
/// Offset (inside the vCPU's data segment) of the iteration counter.
const COUNTER_OFFSET: u64 = 0x3000;
/// Each vCPU's data segment starts `index * DATA_STRIDE` bytes apart.
const DATA_STRIDE: u64 = 0x1000;
/// Guest memory size.
const GUEST_MEMORY_BYTES: usize = 1 << 20;
/// Most vCPUs the memory layout supports.
pub const MAX_VCPUS: u32 = 64;
/// `_IOW(KVMIO, 0x8b, struct kvm_signal_mask)`: the struct is 4 bytes (len).
const KVM_SET_SIGNAL_MASK: libc::c_ulong = 0x4004_ae8b;

/// 16-bit real-mode guest programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GuestProgram {
    /// `lock bts dword [0x203e], eax` (bytes 0x203e..0x2041 straddle the
    /// 64-byte line at 0x2040), `inc dword [0x3000]`, jump back.
    SplitLockLoop,
    /// 32-bit protected mode with a zero-limit IDT, then `ud2`: #UD cannot
    /// be delivered, nor #GP, nor #DF, so the vCPU triple-faults and KVM_RUN
    /// returns KVM_EXIT_SHUTDOWN (an error exit for the tracer).
    TripleFault,
}

impl GuestProgram {
    fn code(self) -> &'static [u8] {
        match self {
            // f0 66 0f ab 06 3e 20   lock bts dword [0x203e], eax
            // 66 ff 06 00 30         inc dword [0x3000]
            // eb f2                  jmp short -14 (back to the lock bts)
            Self::SplitLockLoop => &[
                0xf0, 0x66, 0x0f, 0xab, 0x06, 0x3e, 0x20, 0x66, 0xff, 0x06, 0x00, 0x30, 0xeb, 0xf2,
            ],
            // 0f 0b                  ud2
            // f4                     hlt (never reached)
            Self::TripleFault => &[0x0f, 0x0b, 0xf4],
        }
    }
}

/// How the timer is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TimerMode {
    /// A fresh one-shot timeout before every KVM_RUN (the seed's VMM).
    PerRun,
    /// One periodic timer for the whole run.
    Periodic,
}

/// How the vCPU threads are kicked out of KVM_RUN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kick {
    /// A POSIX timer per vCPU thread (`SIGEV_THREAD_ID`, si_code SI_TIMER):
    /// the seed's demo VMM.
    #[default]
    Timer,
    /// The main thread `pthread_kill`s every vCPU thread each period
    /// (si_code SI_TKILL): how QEMU kicks (SIGUSR1), and rust-vmm VMMs
    /// (SIGRTMIN-based).
    Tkill,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ReproConfig {
    /// Timer period.
    pub period: Duration,
    /// How long to run each period.
    pub duration: Duration,
    /// Number of vCPUs (one thread each).
    pub vcpus: u32,
    /// Signal used to kick the vCPU.
    pub signal: i32,
    /// Guest program.
    pub guest: GuestProgram,
    /// Timer arming mode (timer kicks only).
    pub timer_mode: TimerMode,
    /// How the vCPUs are kicked.
    pub kick: Kick,
}

/// What one vCPU thread did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuReport {
    /// vCPU index.
    pub index: u32,
    /// Host thread id.
    pub tid: u32,
    /// KVM_RUN calls.
    pub kvm_runs: u64,
    /// KVM_RUN returns with EINTR.
    pub eintr_returns: u64,
    /// Other KVM_RUN returns, by exit name.
    pub other_exits: BTreeMap<String, u64>,
    /// Kick signals consumed with sigtimedwait.
    pub signals_consumed: u64,
    /// Kicks the main thread sent this vCPU with `pthread_kill` (tkill
    /// kicks only; a standard signal still pending when the next one is
    /// sent is not queued twice, so it can exceed `signals_consumed`).
    #[serde(default)]
    pub kicks_sent: u64,
    /// Timer overruns reported in the consumed siginfo.
    pub timer_overruns: u64,
    /// Guest loop iterations (read from guest memory).
    pub guest_iterations: u64,
    /// Why the thread stopped early, if it did.
    pub stopped_by: Option<String>,
}

/// Result of one period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReproReport {
    /// Process id.
    pub pid: u32,
    /// Timer period in microseconds.
    pub period_us: u64,
    /// Wall time actually run, microseconds.
    pub elapsed_us: u64,
    /// Per-vCPU results.
    pub vcpus: Vec<VcpuReport>,
}

impl ReproReport {
    /// Guest iterations per millisecond over all vCPUs.
    pub fn iterations_per_ms(&self) -> f64 {
        let total: u64 = self.vcpus.iter().map(|vcpu| vcpu.guest_iterations).sum();
        total as f64 / (self.elapsed_us as f64 / 1000.0).max(1e-9)
    }
}

/// Guest memory mapping, unmapped on drop.
struct GuestMemory {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; threads only read disjoint counters
// through volatile reads while the guest writes them.
unsafe impl Send for GuestMemory {}
// SAFETY: as above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    fn new(len: usize) -> anyhow::Result<Self> {
        // SAFETY: anonymous private mapping, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of {len} bytes of guest memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            base: NonNull::new(ptr.cast()).ok_or_else(|| anyhow!("mmap returned null"))?,
            len,
        })
    }

    fn write(&self, offset: u64, bytes: &[u8]) {
        assert!(offset as usize + bytes.len() <= self.len);
        // SAFETY: bounds checked; nothing runs in the guest yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(offset as usize),
                bytes.len(),
            );
        }
    }

    fn read_u32(&self, offset: u64) -> u32 {
        assert!(offset as usize + 4 <= self.len);
        u32::from_le_bytes(self.read_bytes(offset))
    }

    fn read_bytes(&self, offset: u64) -> [u8; 4] {
        // SAFETY: bounds checked; the guest may write concurrently, hence volatile.
        unsafe {
            self.base
                .as_ptr()
                .add(offset as usize)
                .cast::<[u8; 4]>()
                .read_volatile()
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping created in `new`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Whether `/dev/kvm` can be opened, and if not why.
pub fn kvm_available() -> Result<(), String> {
    Kvm::new()
        .map(drop)
        .map_err(|error| format!("/dev/kvm: {error}"))
}

/// Runs the reproducer for one period and returns what every vCPU did.
pub fn run(config: &ReproConfig) -> anyhow::Result<ReproReport> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        bail!("--vcpus must be between 1 and {MAX_VCPUS}");
    }
    if config.period.is_zero() {
        bail!("the timer period must be greater than zero");
    }
    let kvm = Kvm::new().context("opening /dev/kvm")?;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    let memory = Arc::new(GuestMemory::new(GUEST_MEMORY_BYTES)?);
    memory.write(CODE_GPA, config.guest.code());
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: GUEST_MEMORY_BYTES as u64,
        userspace_addr: memory.base.as_ptr() as u64,
    };
    // SAFETY: the region points at our mapping, which outlives the VM
    // (the Arc is held by every vCPU thread and by this function).
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
    let vcpus = (0..config.vcpus)
        .map(|index| create_vcpu(&vm, index, config.guest))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let start_barrier = Arc::new(Barrier::new(config.vcpus as usize + 1));
    // Each vCPU thread's tid, stored before it reaches the barrier.
    let tids: Arc<Vec<AtomicU32>> =
        Arc::new((0..config.vcpus).map(|_| AtomicU32::new(0)).collect());
    let started = Instant::now();
    let mut handles = Vec::new();
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let config = config.clone();
        let memory = Arc::clone(&memory);
        let barrier = Arc::clone(&start_barrier);
        let tids = Arc::clone(&tids);
        let handle = std::thread::Builder::new()
            .name(format!("CPU {index}/KVM"))
            .spawn(move || {
                tids[index].store(gettid(), Ordering::Release);
                vcpu_thread(index as u32, vcpu, &config, &memory, &barrier)
            })
            .context("spawning a vCPU thread")?;
        handles.push(handle);
    }
    start_barrier.wait();
    let tids: Vec<u32> = tids.iter().map(|tid| tid.load(Ordering::Acquire)).collect();
    let kicks_sent = match config.kick {
        Kick::Timer => vec![0; handles.len()],
        Kick::Tkill => kick_by_tkill(&handles, &tids, config, started),
    };
    let mut reports = Vec::new();
    for (handle, kicks) in handles.into_iter().zip(kicks_sent) {
        let mut report = handle
            .join()
            .map_err(|_| anyhow!("a vCPU thread panicked"))??;
        report.kicks_sent = kicks;
        reports.push(report);
    }
    let elapsed = started.elapsed();
    drop(vm);
    Ok(ReproReport {
        pid: std::process::id(),
        period_us: config.period.as_micros() as u64,
        elapsed_us: elapsed.as_micros() as u64,
        vcpus: reports,
    })
}

fn create_vcpu(vm: &VmFd, index: u32, guest: GuestProgram) -> anyhow::Result<VcpuFd> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .with_context(|| format!("KVM_CREATE_VCPU {index}"))?;
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    match guest {
        GuestProgram::SplitLockLoop => {
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            let data_base = u64::from(index) * DATA_STRIDE;
            for segment in [&mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
                segment.base = data_base;
                segment.selector = (data_base >> 4) as u16;
            }
        }
        GuestProgram::TripleFault => {
            // Flat 32-bit protected mode straight from the segment caches.
            let flat = |selector: u16, type_: u8| kvm_bindings::kvm_segment {
                base: 0,
                limit: 0xffff_ffff,
                selector,
                type_,
                present: 1,
                dpl: 0,
                db: 1,
                s: 1,
                l: 0,
                g: 1,
                avl: 0,
                unusable: 0,
                padding: 0,
            };
            sregs.cs = flat(0x8, 0xb);
            for segment in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.ss,
                &mut sregs.fs,
                &mut sregs.gs,
            ] {
                *segment = flat(0x10, 0x3);
            }
            sregs.cr0 |= 1;
            sregs.idt.base = 0;
            sregs.idt.limit = 0;
        }
    }
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_GPA,
        rflags: 0x2,
        rsp: 0xff0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
    Ok(vcpu)
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// A POSIX timer that signals one thread (`SIGEV_THREAD_ID`).
pub(crate) struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    /// A CLOCK_MONOTONIC timer that signals the calling thread.
    pub(crate) fn for_current_thread(signal: i32) -> anyhow::Result<Self> {
        // SAFETY: zeroed sigevent is valid; we set the fields we use.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        event.sigev_notify_thread_id = gettid() as i32;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &raw mut event, &raw mut timer) } != 0
        {
            bail!("timer_create: {}", std::io::Error::last_os_error());
        }
        Ok(Self(timer))
    }

    pub(crate) fn arm(&self, value: Duration, interval: Duration) -> anyhow::Result<()> {
        let spec = libc::itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(value),
        };
        // SAFETY: valid timer and pointers.
        if unsafe { libc::timer_settime(self.0, 0, &raw const spec, std::ptr::null_mut()) } != 0 {
            bail!("timer_settime: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl ThreadTimer {
    /// Arms a one-shot expiry at `deadline` on CLOCK_MONOTONIC
    /// (`TIMER_ABSTIME`: a deadline already past fires at once).
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn arm_at(&self, deadline: Duration) -> anyhow::Result<()> {
        let spec = libc::itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(deadline),
        };
        // SAFETY: valid timer and pointers.
        let rc = unsafe {
            libc::timer_settime(
                self.0,
                libc::TIMER_ABSTIME,
                &raw const spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            bail!("timer_settime: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: deleting the timer we created.
        unsafe { libc::timer_delete(self.0) };
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: duration.as_secs().try_into().unwrap_or(i64::MAX as _),
        tv_nsec: libc::c_long::from(duration.subsec_nanos() as i32),
    }
}

pub(crate) fn signal_set(signal: i32) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, signal);
        set
    }
}

/// Blocks `signal` in this thread and returns the kernel sigset (8 bytes)
/// to use inside KVM_RUN: the thread's mask with `signal` unblocked.
fn block_signal_outside_kvm_run(signal: i32) -> anyhow::Result<[u8; 8]> {
    let set = signal_set(signal);
    // SAFETY: valid set pointers.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, &raw mut old) };
    if rc != 0 {
        bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
    }
    // glibc's sigset_t starts with the kernel's 64-bit mask (little endian).
    // SAFETY: sigset_t is at least 8 bytes.
    let mut mask = unsafe { std::ptr::read_unaligned((&raw const old).cast::<u64>()) };
    mask &= !(1u64 << (signal - 1));
    Ok(mask.to_le_bytes())
}

fn set_kvm_signal_mask(vcpu: &VcpuFd, sigset: [u8; 8]) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    // struct kvm_signal_mask { __u32 len; __u8 sigset[]; }
    let mut buffer = [0u8; 12];
    buffer[..4].copy_from_slice(&8u32.to_ne_bytes());
    buffer[4..].copy_from_slice(&sigset);
    // SAFETY: valid vCPU fd and a buffer of the size the kernel reads.
    let rc = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_SET_SIGNAL_MASK as _, buffer.as_ptr()) };
    if rc != 0 {
        bail!("KVM_SET_SIGNAL_MASK: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Consumes every pending `signal` without waiting; returns (count, overruns).
fn consume_pending(signal: i32) -> (u64, u64) {
    let set = signal_set(signal);
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut consumed = 0;
    let mut overruns = 0;
    loop {
        // SAFETY: valid pointers.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::sigtimedwait(&raw const set, &raw mut info, &raw const zero) };
        if rc != signal {
            return (consumed, overruns);
        }
        consumed += 1;
        overruns += timer_overrun(&info);
    }
}

/// `si_overrun` of a POSIX timer's signal.
fn timer_overrun(info: &libc::siginfo_t) -> u64 {
    // si_overrun sits right after si_tid (int) in the timer union:
    // offset 16 (si_signo, si_errno, si_code, pad) + 4.
    // SAFETY: siginfo_t is 128 bytes.
    let overrun = unsafe {
        std::ptr::read_unaligned(std::ptr::from_ref(info).cast::<u8>().add(20).cast::<i32>())
    };
    u64::try_from(overrun).unwrap_or(0)
}

fn exit_name(exit: &VcpuExit<'_>) -> String {
    match exit {
        VcpuExit::Shutdown => "KVM_EXIT_SHUTDOWN".into(),
        VcpuExit::Hlt => "KVM_EXIT_HLT".into(),
        VcpuExit::FailEntry(reason, cpu) => format!("KVM_EXIT_FAIL_ENTRY(0x{reason:x}, cpu {cpu})"),
        VcpuExit::InternalError => "KVM_EXIT_INTERNAL_ERROR".into(),
        VcpuExit::Intr => "KVM_EXIT_INTR".into(),
        other => format!("{other:?}")
            .split('(')
            .next()
            .unwrap_or("other")
            .to_owned(),
    }
}

/// QEMU's kick, from this (the main) thread: every period `tgkill` each
/// vCPU thread (what QEMU's `pthread_kill` does, si_code SI_TKILL) until
/// the run's end and every vCPU thread has returned; returns the kicks sent
/// per vCPU. The system call itself, not `pthread_kill`: glibc's returns 0
/// without sending anything to a thread that has begun to exit (its
/// `pthread_kill` implementation checks the thread's exiting flag), so a
/// kick racing a vCPU thread's exit was counted as sent although the
/// kernel never generated it (1 in 2.3 million at the fastest kick rate).
/// `tgkill` either generates the signal (and the kernel traces it) or
/// fails with ESRCH once the thread is gone.
fn kick_by_tkill(
    handles: &[std::thread::JoinHandle<anyhow::Result<VcpuReport>>],
    tids: &[u32],
    config: &ReproConfig,
    started: Instant,
) -> Vec<u64> {
    // SAFETY: no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut sent = vec![0u64; handles.len()];
    let deadline = started + config.duration;
    let mut next = Instant::now() + config.period;
    // Until every vCPU thread has left: one still inside KVM_RUN after the
    // deadline returns only when kicked (the guest never exits by itself).
    while next < deadline || handles.iter().any(|handle| !handle.is_finished()) {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for ((handle, &tid), sent) in handles.iter().zip(tids).zip(&mut sent) {
            if handle.is_finished() {
                continue;
            }
            // SAFETY: tgkill takes plain integers; the tid is checked
            // against this process by the kernel, so a reused tid in
            // another process cannot be hit.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid as libc::pid_t, config.signal) }
                == 0
            {
                *sent += 1;
            }
        }
        next += config.period;
    }
    sent
}

fn vcpu_thread(
    index: u32,
    mut vcpu: VcpuFd,
    config: &ReproConfig,
    memory: &GuestMemory,
    barrier: &Barrier,
) -> anyhow::Result<VcpuReport> {
    let mut report = VcpuReport {
        index,
        tid: gettid(),
        ..VcpuReport::default()
    };
    let prepared = (|| -> anyhow::Result<Option<ThreadTimer>> {
        let inside_mask = block_signal_outside_kvm_run(config.signal)?;
        set_kvm_signal_mask(&vcpu, inside_mask)?;
        match config.kick {
            Kick::Timer => ThreadTimer::for_current_thread(config.signal).map(Some),
            Kick::Tkill => Ok(None),
        }
    })();
    barrier.wait();
    let timer = prepared?;
    let deadline = Instant::now() + config.duration;
    if let Some(timer) = &timer
        && config.timer_mode == TimerMode::Periodic
    {
        timer.arm(config.period, config.period)?;
    }
    let counter_gpa = u64::from(index) * DATA_STRIDE + COUNTER_OFFSET;
    while Instant::now() < deadline {
        if let Some(timer) = &timer
            && config.timer_mode == TimerMode::PerRun
        {
            timer.arm(config.period, Duration::ZERO)?;
        }
        report.kvm_runs += 1;
        let outcome = vcpu.run();
        match outcome {
            Err(error) if error.errno() == libc::EINTR => report.eintr_returns += 1,
            Err(error) => {
                report.stopped_by = Some(format!("KVM_RUN failed: {error}"));
                break;
            }
            Ok(exit) => {
                let name = exit_name(&exit);
                *report.other_exits.entry(name.clone()).or_default() += 1;
                if matches!(
                    exit,
                    VcpuExit::Shutdown
                        | VcpuExit::FailEntry(..)
                        | VcpuExit::InternalError
                        | VcpuExit::Hlt
                ) {
                    report.stopped_by = Some(name);
                    break;
                }
            }
        }
        // Consume before re-arming: since Linux 6.13 re-arming or deleting a
        // POSIX timer drops its still-pending signal at dequeue time.
        let (consumed, overruns) = consume_pending(config.signal);
        report.signals_consumed += consumed;
        report.timer_overruns += overruns;
    }
    // A signal may still be pending from the last expiry: take it first.
    let (consumed, overruns) = consume_pending(config.signal);
    report.signals_consumed += consumed;
    report.timer_overruns += overruns;
    if let Some(timer) = timer {
        timer.arm(Duration::ZERO, Duration::ZERO)?;
    }
    report.guest_iterations = u64::from(memory.read_u32(counter_gpa));
    Ok(report)
}
