//! The tracer's own probes around every run of a sweep: a tracing session
//! limited to this process (`-p` in the kernel), its events fed to a fresh
//! model per run, so that each row gets the #AC exits, the interrupted
//! punishments and the verdict the tracer saw, and a second count of the
//! EINTR returns and kicks, independent of the reproducer's own.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracer_events::{TracingMode, Verdict};

use super::ReproReport;
use crate::{
    events::Event,
    kernel::host::HostRoot,
    model::Model,
    session::{SessionOptions, TraceSession},
};

/// How often the model is asked for its verdict while a run is replayed
/// (the live view's refresh, in trace time).
const CLASSIFY_EVERY_NS: u64 = 250_000_000;
/// How long the ring must stay empty after a run before its events are
/// taken as complete.
const QUIET: Duration = Duration::from_millis(300);
/// How long one wait for events lasts while a run is going on.
const POLL: Duration = Duration::from_millis(50);

/// What the tracer saw of one run's vCPU threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracedRun {
    /// Split-lock #AC VM exits (the kernel's per-thread counter).
    pub ac_exits: u64,
    /// Punishments cut short by a signal (the model's episodes; inferred
    /// from #AC exits and EINTR returns without kprobes).
    pub interrupted_punishments: u64,
    /// KVM_RUN returns with EINTR (the kernel's per-thread counter).
    pub eintr_exits: u64,
    /// Signals generated for the vCPU threads (the kernel's counter).
    pub signals: u64,
    /// The worst verdict the model gave a vCPU thread during the run
    /// (`LIVELOCK`, `OK (inferred)`, ...).
    pub verdict: String,
    /// Events lost during the run: ring drops and undecodable records of
    /// this process, and the program runs the kernel skipped, which are
    /// counted host-wide (a skipped run's target is unknown), so an upper
    /// bound of what the run lost.
    pub lost: u64,
}

/// A tracing session kept open over a whole sweep.
pub struct SweepTracer {
    runtime: tokio::runtime::Runtime,
    session: TraceSession,
    misery_possible: Option<bool>,
}

impl SweepTracer {
    /// Loads and attaches the probes, for this process only.
    ///
    /// # Errors
    /// Without the privileges, or when the probes cannot be loaded.
    pub fn start() -> anyhow::Result<Self> {
        crate::session::check_privileges()?;
        let runtime = crate::runner::runtime()?;
        let session = {
            let _context = runtime.enter();
            TraceSession::start(&SessionOptions {
                pid: Some(std::process::id()),
                ..SessionOptions::default()
            })?
        };
        Ok(Self {
            runtime,
            session,
            misery_possible: HostRoot::live().misery_possible(),
        })
    }

    /// The session's tracing mode (`full` with kprobes, else
    /// `tracepoint-only`).
    pub fn mode(&self) -> TracingMode {
        self.session.mode
    }

    /// Runs `work` (one reproducer run) on its own thread while the ring
    /// is drained, then tells what the probes saw of its vCPU threads.
    ///
    /// # Errors
    /// The run failed, or the session could not be read.
    pub fn trace(
        &mut self,
        work: impl FnOnce() -> anyhow::Result<ReproReport> + Send,
    ) -> anyhow::Result<(ReproReport, TracedRun)> {
        let lost_before = self.session.losses()?.total();
        let mut events = Vec::new();
        let session = &mut self.session;
        let report = std::thread::scope(|scope| {
            let run = scope.spawn(work);
            self.runtime.block_on(async {
                while !run.is_finished() {
                    session.wait_events(&mut events, POLL).await?;
                }
                let mut quiet_since = std::time::Instant::now();
                while quiet_since.elapsed() < QUIET {
                    if session.wait_events(&mut events, POLL).await? > 0 {
                        quiet_since = std::time::Instant::now();
                    }
                }
                anyhow::Ok(())
            })?;
            run.join()
                .map_err(|_| anyhow::anyhow!("the reproducer's thread panicked"))?
        })?;
        let counters = self.session.thread_counters()?;
        let lost = self.session.losses()?.total().saturating_sub(lost_before);
        let tids: Vec<u32> = report.vcpus.iter().map(|vcpu| vcpu.tid).collect();
        let sum = |field: fn(&tracer_common::ThreadCounters) -> u64| -> u64 {
            tids.iter()
                .filter_map(|tid| counters.get(tid))
                .map(field)
                .sum()
        };
        let (verdict, interrupted_punishments) = classify(&events, &tids, self.misery_possible);
        Ok((
            report,
            TracedRun {
                ac_exits: sum(|counts| counts.kvm_exits_split_lock),
                interrupted_punishments,
                eintr_exits: sum(|counts| counts.userspace_exits_eintr),
                signals: sum(|counts| counts.timer_signals + counts.other_signals),
                verdict,
                lost,
            },
        ))
    }
}

/// Replays one run's events through a fresh model, asking for the vCPU
/// threads' verdicts every [`CLASSIFY_EVERY_NS`] of trace time and at the
/// last event; returns the worst verdict's label and the interrupted
/// punishments of those threads.
fn classify(events: &[Event], tids: &[u32], misery_possible: Option<bool>) -> (String, u64) {
    let mut model = Model::new();
    model.set_misery_possible(misery_possible);
    let mut worst: Option<(Verdict, bool)> = None;
    let mut judge = |model: &Model, now_ns: u64| {
        for &tid in tids {
            if let Some(seen) = model.verdict_of(tid, now_ns)
                && worst.is_none_or(|(verdict, _)| seen.0 < verdict)
            {
                worst = Some(seen);
            }
        }
    };
    let mut next_tick = events.first().map_or(0, |event| event.ts_ns) + CLASSIFY_EVERY_NS;
    for event in events {
        while event.ts_ns >= next_tick {
            judge(&model, next_tick);
            next_tick += CLASSIFY_EVERY_NS;
        }
        model.apply(event);
    }
    if let Some(last) = events.last() {
        judge(&model, last.ts_ns);
    }
    let interrupted = tids
        .iter()
        .filter_map(|&tid| model.thread(tid))
        .map(|thread| thread.totals.interrupted_episodes)
        .sum();
    let label = worst.map_or_else(
        || "-".to_owned(),
        |(verdict, confirmed)| {
            if confirmed {
                verdict.label().to_owned()
            } else {
                format!("{} (inferred)", verdict.label())
            }
        },
    );
    (label, interrupted)
}
