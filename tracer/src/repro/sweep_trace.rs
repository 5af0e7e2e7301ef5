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
    /// This host's kernel release and `kernel.split_lock_mitigate`, for
    /// the model of each run.
    host: (Option<String>, Option<u32>),
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
            host: {
                let host = HostRoot::live();
                (host.kernel_release(), host.split_lock_mitigate())
            },
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
        // Events are applied as they are drained: memory stays bounded by
        // one drain, whatever the period and the duration.
        let mut events = Vec::new();
        let mut replay = RunReplay::new(&self.host);
        let session = &mut self.session;
        let report = std::thread::scope(|scope| {
            let run = scope.spawn(work);
            self.runtime.block_on(async {
                while !run.is_finished() {
                    session.wait_events(&mut events, POLL).await?;
                    replay.feed(&mut events);
                }
                let mut quiet_since = std::time::Instant::now();
                while quiet_since.elapsed() < QUIET {
                    if session.wait_events(&mut events, POLL).await? > 0 {
                        quiet_since = std::time::Instant::now();
                    }
                    replay.feed(&mut events);
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
        let (verdict, interrupted_punishments) = replay.finish(&tids);
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

/// One run's events applied to a fresh model as they arrive, the model
/// asked for every thread's verdict every [`CLASSIFY_EVERY_NS`] of trace
/// time and at the last event; the worst verdict of each thread is kept.
struct RunReplay {
    model: Model,
    next_tick: Option<u64>,
    last_ts: Option<u64>,
    worst: std::collections::HashMap<u32, (Verdict, bool)>,
}

impl RunReplay {
    fn new((kernel_release, split_lock_mitigate): &(Option<String>, Option<u32>)) -> Self {
        let mut model = Model::new();
        model.set_host(kernel_release.as_deref(), *split_lock_mitigate);
        Self {
            model,
            next_tick: None,
            last_ts: None,
            worst: std::collections::HashMap::new(),
        }
    }

    /// Applies and empties `events`.
    fn feed(&mut self, events: &mut Vec<Event>) {
        for event in events.drain(..) {
            let next = *self
                .next_tick
                .get_or_insert(event.ts_ns.saturating_add(CLASSIFY_EVERY_NS));
            let mut tick = next;
            while event.ts_ns >= tick {
                self.judge(tick);
                tick = tick.saturating_add(CLASSIFY_EVERY_NS);
            }
            self.next_tick = Some(tick);
            self.model.apply(&event);
            self.last_ts = Some(event.ts_ns);
        }
    }

    fn judge(&mut self, now_ns: u64) {
        for row in self.model.rows(now_ns, true) {
            let seen = (row.verdict, row.confirmed);
            let worst = self.worst.entry(row.tid).or_insert(seen);
            if seen.0 < worst.0 {
                *worst = seen;
            }
        }
    }

    /// The worst verdict's label over `tids` and their interrupted
    /// punishments.
    fn finish(mut self, tids: &[u32]) -> (String, u64) {
        if let Some(last) = self.last_ts {
            self.judge(last);
        }
        let interrupted = tids
            .iter()
            .filter_map(|&tid| self.model.thread(tid))
            .map(|thread| thread.totals.interrupted_episodes)
            .sum();
        let worst = tids
            .iter()
            .filter_map(|tid| self.worst.get(tid))
            .min_by_key(|(verdict, _)| *verdict);
        let label = worst.map_or_else(
            || "-".to_owned(),
            |&(verdict, confirmed)| {
                if confirmed {
                    verdict.label().to_owned()
                } else {
                    format!("{} (inferred)", verdict.label())
                }
            },
        );
        (label, interrupted)
    }
}
