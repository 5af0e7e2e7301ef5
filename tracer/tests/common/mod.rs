//! Helpers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a subset")]

use std::{io::Write as _, path::PathBuf};

/// The seed's reproducer as the live tests run it: a guest looping on a
/// split-locked `lock bts`, kicked by a SIGUSR1 timer of `period`.
pub fn split_lock_repro(
    period: std::time::Duration,
    duration: std::time::Duration,
    vcpus: u32,
    timer_mode: tracer::repro::TimerMode,
) -> tracer::repro::ReproConfig {
    tracer::repro::ReproConfig {
        period,
        duration,
        vcpus,
        signal: libc::SIGUSR1,
        guest: tracer::repro::GuestProgram::SplitLockLoop,
        timer_mode,
        kick: tracer::repro::Kick::Timer,
    }
}

/// The same reproducer kicked as QEMU kicks: its main thread
/// `pthread_kill`s each vCPU thread with SIGUSR1 every `period`.
pub fn tkill_repro(
    period: std::time::Duration,
    duration: std::time::Duration,
    vcpus: u32,
) -> tracer::repro::ReproConfig {
    tracer::repro::ReproConfig {
        kick: tracer::repro::Kick::Tkill,
        ..split_lock_repro(period, duration, vcpus, tracer::repro::TimerMode::PerRun)
    }
}

/// Path of a fixture file.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// Prints a skip line straight to the process's stderr. libtest captures
/// only the print macros, so this line shows even for passing tests.
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// True when running as root; otherwise prints a skip line.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(
            test,
            "needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs",
        );
    }
    root
}

/// True when /dev/kvm works; otherwise prints a skip line.
pub fn have_kvm(test: &str) -> bool {
    match tracer::repro::kvm_available() {
        Ok(()) => true,
        Err(reason) => {
            skip(test, &format!("needs a working /dev/kvm ({reason})"));
            false
        }
    }
}

/// What a capture saw.
pub struct Capture<T> {
    /// Result of the work closure.
    pub work: T,
    /// Every decoded event.
    pub events: Vec<tracer::events::Event>,
    /// Losses reported by the session.
    pub losses: tracer_events::LossCounts,
    /// In-kernel per-thread counters at the end.
    pub counters: std::collections::BTreeMap<u32, tracer_common::ThreadCounters>,
    /// Probe report.
    pub probes: tracer_events::ProbeReport,
    /// Signals to untracked threads the programs counted per CPU.
    pub untracked: tracer_events::UntrackedSignals,
}

/// Starts a tracing session, runs `work` on its own thread, and collects
/// every event until the work is done and the ring has been quiet for 300 ms.
pub fn capture<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Capture<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut session =
            tracer::session::TraceSession::start(&tracer::session::SessionOptions::default())
                .expect("tracing session");
        let worker = std::thread::spawn(work);
        let mut events = Vec::new();
        while !worker.is_finished() {
            session
                .wait_events(&mut events, std::time::Duration::from_millis(50))
                .await
                .unwrap();
        }
        let work = worker.join().expect("work thread");
        let mut quiet_since = std::time::Instant::now();
        while quiet_since.elapsed() < std::time::Duration::from_millis(300) {
            let added = session
                .wait_events(&mut events, std::time::Duration::from_millis(50))
                .await
                .unwrap();
            if added > 0 {
                quiet_since = std::time::Instant::now();
            }
        }
        Capture {
            work,
            events,
            losses: session.losses().unwrap(),
            counters: session.thread_counters().unwrap(),
            probes: session.probes.clone(),
            untracked: session.untracked_signals().unwrap(),
        }
    })
}

/// Checks a count the tracer saw against the ground truth. The tracer may
/// see fewer only by the program runs it reports the kernel skipped
/// (`counted_misses`: recursion misses, and timer signals its perf count of
/// the tracepoint shows the program never ran for), which are printed as a
/// NOTE.
pub fn assert_counted(what: &str, seen: u64, truth: u64, counted_misses: u64) {
    assert!(
        seen <= truth,
        "{what}: saw {seen}, more than the {truth} that happened"
    );
    let shortfall = truth - seen;
    assert!(
        shortfall <= counted_misses,
        "{what}: saw {seen} of {truth}, {} lost beyond the {counted_misses} the tracer reported the kernel skipped",
        shortfall - counted_misses
    );
    if shortfall > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "NOTE {what}: {shortfall} of {truth} skipped by the kernel, all of them reported ({counted_misses} reported)"
        );
    }
}
