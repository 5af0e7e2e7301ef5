//! The one collection loop: it owns the tracing session (probes, ring
//! buffer, in-kernel counters), the per-thread model and the host view, and
//! feeds every event and every interval tick to the [`Sink`]s a command
//! picked (live view, JSON lines, progress line, recorder, metrics). Stop
//! handling (duration, SIGINT, SIGTERM, SIGHUP, a sink's quit request)
//! lives here and nowhere else.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracer_events::{
    CountedThread, EndReason, Event, LossCounts, MitigationChange, ProbeReport, ThreadRow,
    TracingMode, VerdictChange, redact::Redactor,
};

use crate::{
    cli::TraceArgs,
    kernel::host::HostRoot,
    live::{MitigationNote, ViewStatus},
    mitigation::{MitigationWatch, header_note},
    model::Model,
    probes::plan,
    session::{SessionOptions, TraceSession},
    symbols::Symbolizer,
};

/// What every sink sees at an interval tick.
pub struct Tick<'a> {
    /// CLOCK_MONOTONIC now.
    pub now_ns: u64,
    /// The header values.
    pub status: &'a ViewStatus,
    /// Every thread with activity (quiet vCPU threads included), stuck
    /// first, with the kernel's exact counters attached.
    pub rows: &'a [ThreadRow],
    /// The model (process identities, thread state).
    pub model: &'a Model,
    /// Losses so far.
    pub losses: &'a LossCounts,
    /// The probes and how they attached.
    pub probes: &'a ProbeReport,
    /// Verdicts that changed since the previous tick (tracked once, by the
    /// model).
    pub changes: &'a [VerdictChange],
    /// Mitigation settings that changed since the previous tick.
    pub mitigations: &'a [MitigationChange],
}

/// What every sink sees when the run ends.
pub struct End<'a> {
    /// The last tick's view of the end.
    pub tick: Tick<'a>,
    /// Why the run ended.
    pub ended_by: EndReason,
    /// Threads the in-kernel counters know that have no row.
    pub counted_threads: Vec<CountedThread>,
    /// The host (for the VMs at the end).
    pub host: &'a HostRoot,
    /// The redactor, when identities are redacted.
    pub redactor: Option<&'a mut Redactor>,
}

/// A consumer of the collection loop. Every method but [`Sink::tick`] has
/// a default that does nothing.
pub trait Sink {
    /// One decoded event, after the model applied it. Called on the hot
    /// path: a sink that does not need events leaves the default.
    fn event(&mut self, _event: &Event) {}

    /// Adds what only this sink knows to the header values (before any
    /// sink's [`Sink::tick`] sees them).
    fn status(&self, _status: &mut ViewStatus) {}

    /// One interval tick.
    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()>;

    /// The run ended (after the ring was drained); returns the exit code
    /// this sink wants (the largest of all sinks' codes wins).
    fn finish(&mut self, _end: &mut End<'_>) -> anyhow::Result<i32> {
        Ok(0)
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    tracer_events::clock_ns(libc::CLOCK_MONOTONIC)
}

/// The tokio runtime every tracing command runs in.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// A started session with its model, waiting for sinks.
pub struct Runner {
    session: TraceSession,
    host: HostRoot,
    model: Model,
    interval: Duration,
    duration: Option<Duration>,
    redactor: Option<Redactor>,
    sinks: Vec<Box<dyn Sink>>,
    quit: Option<tokio::sync::mpsc::Receiver<()>>,
    mitigation: MitigationWatch,
    mitigation_note: Option<MitigationNote>,
    mitigation_changes: u64,
    realtime_offset_ns: i64,
    symbolizer: Symbolizer,
}

impl Runner {
    /// Starts the session (loads and attaches the probes).
    pub fn start(trace: &TraceArgs, interval: Duration) -> anyhow::Result<Self> {
        let options = SessionOptions {
            pid: trace.pid,
            ring_bytes: trace.ring_mib.map(|mib| mib << 20),
            no_raw_tracepoint: trace.no_raw_tracepoint,
            ebpf_log: crate::ebpf_log::wanted_level(
                trace.ebpf_log,
                std::env::var("RUST_LOG").ok().as_deref(),
            )
            .to_level(),
        };
        // A bad symbol file fails before any probe is loaded.
        let symbols = trace.symbols.load()?;
        let host = HostRoot::live();
        if let Some(pid) = trace.pid
            && !host.exists(&format!("/proc/{pid}"))
        {
            eprintln!(
                "tracer: warning: no process {pid} exists now; tracing -p {pid} anyway (nothing is seen unless it starts)"
            );
        }
        let mut session = TraceSession::start(&options)?;
        // The vCPU threads running now are counted from the start, so the
        // first kick to each is not lost.
        let vcpus: Vec<(u32, u32, Option<u32>)> = host
            .vm_threads()
            .iter()
            .filter(|vm| trace.pid.is_none_or(|pid| pid == vm.pid))
            .flat_map(|vm| {
                vm.vcpus
                    .iter()
                    .map(|vcpu| (vcpu.tid, vm.pid, Some(vcpu.index)))
            })
            .collect();
        session.track_threads(&vcpus)?;
        let mut model = Model::new();
        model.set_host(host.kernel_release().as_deref(), host.split_lock_mitigate());
        let mitigation = MitigationWatch::new(host.clone(), monotonic_now_ns());
        let realtime_offset_ns = tracer_events::ClockInfo::now().realtime_offset_ns;
        let mut symbolizer = Symbolizer::new(symbols);
        symbolizer.set_vms(&host.vm_threads());
        Ok(Self {
            session,
            host,
            model,
            interval,
            duration: trace.duration,
            redactor: None,
            sinks: Vec::new(),
            quit: None,
            mitigation,
            mitigation_note: None,
            mitigation_changes: 0,
            realtime_offset_ns,
            symbolizer,
        })
    }

    /// The running session.
    pub fn session(&self) -> &TraceSession {
        &self.session
    }

    /// The live host.
    pub fn host(&self) -> &HostRoot {
        &self.host
    }

    /// The guest symbol files, for the recording's metadata.
    pub fn guest_symbol_infos(&self) -> Vec<tracer_events::SymbolFileInfo> {
        self.symbolizer.infos()
    }

    /// Replaces VM names with placeholders everywhere (model, sinks),
    /// numbered from the VMs running now; returns the redactor for the
    /// recording's metadata.
    pub fn redact(&mut self) -> &mut Redactor {
        let vms = self.host.vm_threads();
        self.redactor.insert(Redactor::new(&vms))
    }

    /// The redactor, when [`Runner::redact`] was called.
    pub fn redactor(&mut self) -> Option<&mut Redactor> {
        self.redactor.as_mut()
    }

    /// Adds a sink.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// Ends the run when `quit` receives (e.g. `q` in the live view).
    pub fn stop_on(&mut self, quit: tokio::sync::mpsc::Receiver<()>) {
        self.quit = Some(quit);
    }

    /// The tracing mode the attached probes allow.
    pub fn mode(&self) -> TracingMode {
        self.session.mode
    }

    /// Runs until the duration elapses, a signal arrives or a sink asks
    /// to quit; returns the largest exit code the sinks asked for.
    pub async fn run(mut self) -> anyhow::Result<i32> {
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let (_keep_open, idle) = tokio::sync::mpsc::channel::<()>(1);
        let mut quit = self.quit.take().unwrap_or(idle);
        let started = Instant::now();
        let deadline = self.duration.map(|duration| started + duration);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.tick().await;
        let mut events = Vec::with_capacity(4096);
        let mut events_this_interval = 0u64;
        let mut last_tick = Instant::now();
        let ended_by = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let elapsed = last_tick.elapsed().as_secs_f64().max(1e-3);
                    self.tick(events_this_interval as f64 / elapsed, started)?;
                    events_this_interval = 0;
                    last_tick = Instant::now();
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        break EndReason::Duration;
                    }
                }
                result = self.session.wait_events(&mut events, crate::session::RING_POLL) => {
                    result?;
                    events_this_interval += events.len() as u64;
                    self.apply(&mut events);
                }
                _ = quit.recv() => break EndReason::Quit,
                _ = sigterm.recv() => break EndReason::Signal,
                _ = sigint.recv() => break EndReason::Signal,
                _ = sighup.recv() => break EndReason::Signal,
            }
        };
        // What is still in the ring belongs to the run.
        self.session.drain(&mut events);
        self.apply(&mut events);
        self.finish(ended_by, started)
    }

    fn apply(&mut self, events: &mut Vec<Event>) {
        for mut event in events.drain(..) {
            self.symbolizer.symbolize(&mut event);
            self.model.apply(&event);
            for sink in &mut self.sinks {
                sink.event(&event);
            }
        }
    }

    fn status(
        &self,
        losses: &LossCounts,
        events_per_s: f64,
        started: Instant,
    ) -> anyhow::Result<ViewStatus> {
        let mut status = ViewStatus {
            mode: Some(self.session.mode),
            probes_attached: self.session.probes.attached_count(),
            probes_total: plan::usable_count(&self.session.probes),
            events_per_s,
            lost_ring: losses.ring_total(),
            lost_undecodable: losses.undecodable_total(),
            lost_kernel_skipped: losses.kernel_skipped_total(),
            counter_map_full: losses.counter_map_full,
            signals_to_other_threads: self.session.untracked_signals()?,
            window_map_full: losses.window_map_full,
            recorder_not_written: 0,
            ebpf_log_messages: self
                .session
                .ebpf_log
                .messages
                .load(std::sync::atomic::Ordering::Relaxed),
            elapsed_s: started.elapsed().as_secs_f64(),
            split_lock_mitigate: self.mitigation.value(),
            microcode_revision: self.mitigation.value_of(tracer_events::MICROCODE_REVISION),
            kprobes_enabled: self.mitigation.value_of(tracer_events::KPROBES_ENABLED),
            mitigation_change: self.mitigation_note.clone(),
            mitigation_changes: self.mitigation_changes,
        };
        for sink in &self.sinks {
            sink.status(&mut status);
        }
        Ok(status)
    }

    /// Every thread's row at `now`, with the kernel's exact counters.
    fn rows(&mut self, now_ns: u64) -> anyhow::Result<Vec<ThreadRow>> {
        let kernel_counts = self.session.thread_counters()?;
        let mut rows = self.model.rows(now_ns, true);
        for row in &mut rows {
            row.kernel = kernel_counts
                .get(&row.tid)
                .map(crate::session::kernel_counts);
            self.symbolizer.annotate_row(row);
        }
        Ok(rows)
    }

    fn tick(&mut self, events_per_s: f64, started: Instant) -> anyhow::Result<()> {
        let now_ns = monotonic_now_ns();
        for pid in self.model.unnamed_pids() {
            let mut info = self.host.process_info(pid);
            // Bound by the real VMID and name, before redaction.
            self.symbolizer.set_process(pid, &info);
            if let Some(redactor) = &mut self.redactor {
                redactor.process(&mut info);
            }
            self.model.set_process_info(pid, info);
        }
        let host = &self.host;
        self.model.expire(now_ns, |tid| host.thread_gone(tid));
        let mitigations = self.mitigation.poll(now_ns);
        for change in &mitigations {
            self.model.mitigation_changed(change);
            self.mitigation_note = Some(header_note(change, self.realtime_offset_ns));
            self.mitigation_changes += 1;
        }
        let losses = self.session.losses()?;
        let status = self.status(&losses, events_per_s, started)?;
        let rows = self.rows(now_ns)?;
        let changes = self.model.verdict_changes(now_ns, &rows);
        let tick = Tick {
            now_ns,
            status: &status,
            rows: &rows,
            model: &self.model,
            losses: &losses,
            probes: &self.session.probes,
            changes: &changes,
            mitigations: &mitigations,
        };
        for sink in &mut self.sinks {
            sink.tick(&tick)?;
        }
        Ok(())
    }

    fn finish(mut self, ended_by: EndReason, started: Instant) -> anyhow::Result<i32> {
        let now_ns = monotonic_now_ns();
        let losses = self.session.losses()?;
        let status = self.status(&losses, 0.0, started)?;
        let rows = self.rows(now_ns)?;
        let changes = self.model.verdict_changes(now_ns, &rows);
        let with_row: std::collections::HashSet<u32> = rows.iter().map(|row| row.tid).collect();
        let counted_threads = self
            .session
            .thread_counters()?
            .iter()
            .filter(|(tid, _)| !with_row.contains(tid))
            .map(|(&tid, counters)| CountedThread {
                tid,
                tgid: counters.tgid,
                kernel: crate::session::kernel_counts(counters),
            })
            .collect();
        let mut end = End {
            tick: Tick {
                now_ns,
                status: &status,
                rows: &rows,
                model: &self.model,
                losses: &losses,
                probes: &self.session.probes,
                changes: &changes,
                mitigations: &[],
            },
            ended_by,
            counted_threads,
            host: &self.host,
            redactor: self.redactor.as_mut(),
        };
        let mut code = 0;
        for sink in &mut self.sinks {
            code = code.max(sink.finish(&mut end)?);
        }
        Ok(code)
    }
}
