//! A signal storm: threads that each own a POSIX timer
//! (`timer_create(CLOCK_MONOTONIC, SIGEV_THREAD_ID)`) and take its signals
//! with `sigtimedwait`, at a chosen total rate or as fast as the machine
//! delivers them. The benchmark's second workload (`cargo xtask bench`): every
//! signal is one `signal:signal_generate` event with `SI_TIMER` for the
//! tracer, and each thread's own count is the ground truth its counters and
//! recordings are compared with.
//!
//! Counting is exact: a periodic POSIX timer whose signal is still queued
//! does not queue another one (the kernel counts an overrun instead), so
//! every generated signal is dequeued once; at the end each thread deletes its
//! timer and takes the signal that may still be pending.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::repro::{ThreadTimer, consume_pending, gettid, signal_set, timer_overrun};

/// Interval used when no rate is asked for: the kernel delivers as fast as
/// the thread takes the signals.
const AS_FAST_AS_POSSIBLE: Duration = Duration::from_micros(1);
/// How long a thread waits for a signal before looking at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Stack of each storm thread: it only loops on `sigtimedwait`.
const THREAD_STACK_BYTES: usize = 64 * 1024;

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
}

/// One storm thread's ground truth.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormThread {
    /// Kernel thread id.
    pub tid: u32,
    /// Signals the thread dequeued (= `signal_generate` events for it).
    pub signals: u64,
    /// Expiries folded into earlier signals (`si_overrun`): the rate asked
    /// for was more than the thread could take.
    pub overruns: u64,
}

/// Result of a storm.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormReport {
    /// Wall-clock time from arming to the last thread's end.
    pub elapsed_us: u64,
    /// Rate asked for (signals/s over all threads), if any.
    pub target_rate: Option<f64>,
    /// Per-thread interval the timers were armed with.
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
        Some(rate) if rate > 0.0 => {
            Duration::from_secs_f64(f64::from(config.threads) / rate).max(AS_FAST_AS_POSSIBLE)
        }
        Some(rate) => bail!("the rate must be positive, got {rate}"),
        None => AS_FAST_AS_POSSIBLE,
    };
    // Block the signal before the threads exist so that they inherit the
    // mask: an expiry before a thread's first sigtimedwait stays pending
    // instead of running the default action (SIGUSR1 terminates).
    let set = signal_set(config.signal);
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

fn run_threads(config: &StormConfig, interval: Duration) -> anyhow::Result<StormReport> {
    let count = config.threads as usize;
    // The threads start together: each takes a read lock that is held for
    // writing until all exist (or one could not be created, with `stop` set).
    let start = Arc::new(RwLock::new(()));
    let held = start
        .write()
        .map_err(|_| anyhow::anyhow!("start lock poisoned"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(count);
    for index in 0..count {
        let thread_start = Arc::clone(&start);
        let thread_stop = Arc::clone(&stop);
        let signal = config.signal;
        // Spread the first expiries over one interval so that thousands of
        // slow timers do not all fire in the same tick.
        let first = interval.mul_f64((index + 1) as f64 / count as f64);
        let handle = std::thread::Builder::new()
            .name(format!("storm-{index}"))
            .stack_size(THREAD_STACK_BYTES)
            .spawn(move || storm_thread(signal, first, interval, &thread_start, &thread_stop))
            .with_context(|| format!("creating storm thread {index}"));
        match handle {
            Ok(handle) => handles.push(handle),
            Err(error) => {
                // Release the threads already waiting, then report.
                stop.store(true, Ordering::Relaxed);
                drop(held);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(error);
            }
        }
    }
    drop(held);
    let started = Instant::now();
    std::thread::sleep(config.duration);
    stop.store(true, Ordering::Relaxed);
    let mut threads = Vec::with_capacity(count);
    for handle in handles {
        let thread = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a storm thread panicked"))??;
        threads.push(thread);
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
    first: Duration,
    interval: Duration,
    start: &RwLock<()>,
    stop: &AtomicBool,
) -> anyhow::Result<StormThread> {
    let tid = gettid();
    let timer = ThreadTimer::for_current_thread(signal)?;
    drop(start.read());
    if stop.load(Ordering::Relaxed) {
        return Ok(StormThread {
            tid,
            signals: 0,
            overruns: 0,
        });
    }
    timer.arm(first, interval)?;
    let set = signal_set(signal);
    let poll = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::c_long::from(POLL.subsec_nanos() as i32),
    };
    let mut signals = 0;
    let mut overruns = 0;
    // SAFETY: an all-zero siginfo_t is valid; the kernel fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid pointers.
        let rc = unsafe { libc::sigtimedwait(&raw const set, &raw mut info, &raw const poll) };
        if rc == signal {
            signals += 1;
            overruns += timer_overrun(&info);
        }
    }
    drop(timer);
    let (pending, pending_overruns) = consume_pending(signal);
    Ok(StormThread {
        tid,
        signals: signals + pending,
        overruns: overruns + pending_overruns,
    })
}
