//! A signal storm: threads that each own a POSIX timer
//! (`timer_create(CLOCK_MONOTONIC, SIGEV_THREAD_ID)`) and take its signals
//! with `sigtimedwait`, at a chosen total rate or as fast as the machine
//! delivers them. The benchmark's second workload (`cargo xtask bench`): every
//! signal is one `signal:signal_generate` event with `SI_TIMER` for the
//! tracer, and each thread's own count is the ground truth its counters and
//! recordings are compared with. Named like vCPU threads (`vcpu_names`),
//! the threads are tracked and recorded; otherwise the tracer only counts
//! their signals per CPU (a host full of timers that are not vCPUs).
//!
//! Counting is exact because nothing is left in flight: each thread arms a
//! one-shot expiry at an absolute deadline (`start + k * interval`, so the
//! rate holds while the thread keeps up and a late thread catches up at
//! once), takes its signal, and arms the next one only while the next
//! deadline is inside the run. A periodic timer would not do: a signal still
//! queued when the timer is disarmed or deleted is dropped by newer kernels
//! after `signal_generate` reported it.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::repro::{ThreadTimer, gettid, signal_set};

/// Interval used when no rate is asked for: each deadline is already past
/// when it is armed, so the next signal follows at once.
const AS_FAST_AS_POSSIBLE: Duration = Duration::from_nanos(1);
/// How long a thread waits in one `sigtimedwait` call before trying again.
const POLL: Duration = Duration::from_millis(100);
/// Stack of each storm thread: it only loops on `sigtimedwait`.
const THREAD_STACK_BYTES: usize = 64 * 1024;
/// Time between creating the threads and the first deadline, so that
/// thousands of threads are all waiting when the run begins.
const START_DELAY: Duration = Duration::from_millis(100);

/// What to run.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// Number of threads, each with its own timer.
    pub threads: u32,
    /// Total signals per second over all threads; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// How long the timers run.
    pub duration: Duration,
    /// Signal number.
    pub signal: i32,
    /// Name the threads as cloud-hypervisor names its vCPU threads
    /// (`vcpuN`), so that the tracer tracks them from their name on, as it
    /// would a VMM's vCPU thread before its first KVM_RUN; otherwise they
    /// are `storm-N`, threads the tracer only counts per CPU.
    pub vcpu_names: bool,
}

/// One storm thread's ground truth.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormThread {
    /// Kernel thread id.
    pub tid: u32,
    /// Signals the thread took (= `signal_generate` events for it).
    pub signals: u64,
}

/// Result of a storm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormReport {
    /// Wall-clock time from the first deadline to the last thread's end.
    pub elapsed_us: u64,
    /// Rate asked for (signals/s over all threads), if any.
    pub target_rate: Option<f64>,
    /// Per-thread interval between deadlines.
    pub interval_ns: u64,
    /// Signal number.
    pub signal: i32,
    /// Per thread, in creation order.
    pub threads: Vec<StormThread>,
    /// Sum of `signals`.
    pub signals_total: u64,
    /// `signals_total` per second of `elapsed_us`.
    pub signals_per_s: f64,
}

/// Runs the storm and returns each thread's counts.
///
/// # Errors
/// A thread cannot be created or its timer cannot be armed.
pub fn run(config: &StormConfig) -> anyhow::Result<StormReport> {
    if config.threads == 0 {
        bail!("a storm needs at least one thread");
    }
    let interval = match config.rate {
        Some(rate) if rate > 0.0 && rate.is_finite() => {
            Duration::from_secs_f64(f64::from(config.threads) / rate).max(AS_FAST_AS_POSSIBLE)
        }
        Some(rate) => bail!("the rate must be a positive number, got {rate}"),
        None => AS_FAST_AS_POSSIBLE,
    };
    // Block the signal before the threads exist so that they inherit the
    // mask: it is only ever taken by sigtimedwait, never by a default
    // action (SIGUSR1 terminates).
    let set = signal_set(config.signal);
    // SAFETY: an all-zero sigset_t is valid; pthread_sigmask fills it.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid set pointers.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, &raw mut old) };
    if rc != 0 {
        bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
    }
    let result = run_threads(config, interval);
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut()) };
    result
}

/// When the threads start and stop (CLOCK_MONOTONIC), shared once all exist.
#[derive(Clone, Copy, Debug, Default)]
struct RunWindow {
    start: Duration,
    end: Duration,
    abort: bool,
}

fn monotonic_now() -> Duration {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

fn run_threads(config: &StormConfig, interval: Duration) -> anyhow::Result<StormReport> {
    let count = config.threads as usize;
    // The threads wait for the run window: a read lock held for writing
    // until all exist (or one could not be created: `abort`).
    let window = Arc::new(RwLock::new(RunWindow::default()));
    let mut held = window
        .write()
        .map_err(|_| anyhow::anyhow!("run window lock poisoned"))?;
    let mut handles = Vec::with_capacity(count);
    for index in 0..count {
        let window = Arc::clone(&window);
        let signal = config.signal;
        // Spread the deadlines of slow timers over one interval so that
        // thousands of threads do not all fire in the same tick.
        let offset = interval.mul_f64(index as f64 / count as f64);
        let spawned = std::thread::Builder::new()
            .name(if config.vcpu_names {
                format!("vcpu{index}")
            } else {
                format!("storm-{index}")
            })
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || storm_thread(signal, offset, interval, &window))
            .with_context(|| format!("creating storm thread {index} of {count}"));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                held.abort = true;
                drop(held);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(error);
            }
        }
    }
    let start = monotonic_now() + START_DELAY;
    *held = RunWindow {
        start,
        end: start + config.duration,
        abort: false,
    };
    drop(held);
    std::thread::sleep(START_DELAY);
    let started = Instant::now();
    let mut threads = Vec::with_capacity(count);
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(thread)) => threads.push(thread),
            Ok(Err(error)) => failure = Some(error),
            Err(_) => failure = Some(anyhow::anyhow!("a storm thread panicked")),
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let elapsed = started.elapsed();
    let signals_total = threads.iter().map(|t| t.signals).sum::<u64>();
    Ok(StormReport {
        elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        target_rate: config.rate,
        interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
        signal: config.signal,
        signals_total,
        signals_per_s: signals_total as f64 / elapsed.as_secs_f64(),
        threads,
    })
}

fn storm_thread(
    signal: i32,
    offset: Duration,
    interval: Duration,
    window: &RwLock<RunWindow>,
) -> anyhow::Result<StormThread> {
    let tid = gettid();
    let timer = ThreadTimer::for_current_thread(signal)?;
    let window = *window
        .read()
        .map_err(|_| anyhow::anyhow!("run window lock poisoned"))?;
    let mut signals = 0;
    if window.abort {
        return Ok(StormThread { tid, signals });
    }
    let set = signal_set(signal);
    let poll = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::c_long::from(POLL.subsec_nanos() as i32),
    };
    let mut deadline = window.start + offset;
    while deadline < window.end {
        timer.arm_at(deadline)?;
        // SAFETY: valid pointers; the siginfo is not needed.
        while unsafe { libc::sigtimedwait(&raw const set, std::ptr::null_mut(), &raw const poll) }
            != signal
        {}
        signals += 1;
        deadline = if interval == AS_FAST_AS_POSSIBLE {
            monotonic_now()
        } else {
            deadline + interval
        };
    }
    Ok(StormThread { tid, signals })
}
