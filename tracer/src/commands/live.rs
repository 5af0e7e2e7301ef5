//! `tracer live`: trace, model and redraw every interval.

use std::{
    io::{IsTerminal as _, Read as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{LiveArgs, OutputArgs, RecordArgs, ServeArgs, TraceArgs},
    kernel::host::HostRoot,
    live::{self, Style, ViewStatus},
    model::{KernelCounts, Model, ThreadRow, Verdict},
    recording::{
        ClockInfo, CountedThread, EndReason, FORMAT_NAME, FORMAT_VERSION, Metadata, Summary,
        TracerIdentity, apply_loss, loss_records,
        redact::Redactor,
        writer::{self, DEFAULT_QUEUE_RECORDS, RecordingWriter},
    },
    session::{LossCounts, SessionOptions, TraceSession},
};

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn terminal_width() -> u16 {
    // SAFETY: TIOCGWINSZ fills a winsize struct.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut size) } == 0;
    if ok && size.ws_col > 20 {
        size.ws_col
    } else {
        160
    }
}

/// Puts the terminal in non-canonical, no-echo mode so `q` quits without
/// Enter; restores it on drop.
struct RawStdin(Option<libc::termios>);

impl RawStdin {
    fn enable() -> Self {
        if !std::io::stdin().is_terminal() {
            return Self(None);
        }
        // SAFETY: termios calls on stdin with valid pointers.
        unsafe {
            let mut original: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &raw mut original) != 0 {
                return Self(None);
            }
            let mut raw = original;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const raw);
            Self(Some(original))
        }
    }
}

impl Drop for RawStdin {
    fn drop(&mut self) {
        if let Some(original) = self.0 {
            // SAFETY: restoring the saved attributes.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const original) };
        }
    }
}

/// How each interval is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// Redrawn in place on a terminal.
    Interactive,
    /// One plain table per interval (pipes, logs).
    Plain,
    /// One JSON object per interval.
    Json,
    /// One progress line per interval on stderr (`record`).
    Progress,
    /// Nothing on stdout; metrics published, verdict changes logged (`serve`).
    Headless,
}

/// What `serve` publishes each interval, shared with the HTTP handlers.
#[derive(Default)]
struct Published {
    metrics: String,
    /// Last verdict per tid, to log changes.
    verdicts: std::collections::HashMap<u32, Verdict>,
    ticks: u64,
}

/// One structured log line on stderr.
fn log_json(event: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({
        "ts": crate::recording::clock_ns(libc::CLOCK_REALTIME) / 1_000_000,
        "event": event,
    });
    if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    eprintln!("{line}");
}

/// What one tracing run does.
struct TraceLoop<'a> {
    trace: &'a TraceArgs,
    interval: Duration,
    vm: Option<&'a str>,
    all: bool,
    view: View,
    record: Option<(&'a std::path::Path, &'a OutputArgs)>,
    publish: Option<std::sync::Arc<std::sync::Mutex<Published>>>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Runs the live view.
pub fn run(args: &LiveArgs) -> anyhow::Result<i32> {
    let view = if args.json {
        View::Json
    } else if std::io::stdout().is_terminal() {
        View::Interactive
    } else {
        View::Plain
    };
    let config = TraceLoop {
        trace: &args.trace,
        interval: args.interval,
        vm: args.vm.as_deref(),
        all: args.all,
        view,
        record: args.record.as_deref().map(|path| (path, &args.output)),
        publish: None,
    };
    runtime()?.block_on(config.run())
}

/// Runs `tracer serve`.
pub fn serve(args: &ServeArgs) -> anyhow::Result<i32> {
    let published = std::sync::Arc::new(std::sync::Mutex::new(Published::default()));
    let config = TraceLoop {
        trace: &args.trace,
        interval: args.interval,
        vm: None,
        all: true,
        view: View::Headless,
        record: None,
        publish: Some(std::sync::Arc::clone(&published)),
    };
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        if !args.listen.ip().is_loopback() {
            log_json(
                "warning",
                serde_json::json!({"message": format!("listening on {}, reachable from other hosts", args.listen)}),
            );
        }
        let metrics_state = std::sync::Arc::clone(&published);
        let health_state = std::sync::Arc::clone(&published);
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let state = std::sync::Arc::clone(&metrics_state);
                    async move {
                        let text = state.lock().map(|p| p.metrics.clone()).unwrap_or_default();
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        )
                    }
                }),
            )
            .route(
                "/healthz",
                axum::routing::get(move || {
                    let state = std::sync::Arc::clone(&health_state);
                    async move {
                        let ticks = state.lock().map_or(0, |p| p.ticks);
                        if ticks > 0 {
                            (axum::http::StatusCode::OK, "ok\n")
                        } else {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                        }
                    }
                }),
            );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        log_json("listening", serde_json::json!({"address": args.listen.to_string()}));
        let result = config.run().await;
        server.abort();
        log_json("stopped", serde_json::json!({"ok": result.is_ok()}));
        result
    })
}

/// Runs `tracer record`.
pub fn record(args: &RecordArgs) -> anyhow::Result<i32> {
    let config = TraceLoop {
        trace: &args.trace,
        interval: args.interval,
        vm: None,
        all: true,
        view: View::Progress,
        record: Some((&args.output, &args.options)),
        publish: None,
    };
    runtime()?.block_on(config.run())
}

fn keep_row(row: &ThreadRow, pid: Option<u32>, vm: Option<&str>, model: &Model) -> bool {
    if let Some(pid) = pid
        && row.pid != pid
    {
        return false;
    }
    if let Some(wanted) = vm {
        let info = model.processes().get(&row.pid);
        let matches = info.is_some_and(|info| {
            info.name.as_deref() == Some(wanted) || info.vmid.as_deref() == Some(wanted)
        });
        if !matches {
            return false;
        }
    }
    true
}

/// The recorder side of a run.
struct Recorder {
    writer: RecordingWriter,
    redactor: Option<Redactor>,
    reported_losses: LossCounts,
    /// Latest row of every thread seen, so the summary keeps threads the
    /// model has since expired.
    last_rows: std::collections::BTreeMap<u32, ThreadRow>,
}

impl Recorder {
    fn start(
        file: std::fs::File,
        path: &std::path::Path,
        options: &OutputArgs,
        session: &TraceSession,
        host: &HostRoot,
        pid_filter: Option<u32>,
    ) -> anyhow::Result<Self> {
        let vms = host.vm_threads();
        let mut metadata = Metadata {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            tracer: TracerIdentity {
                version: env!("CARGO_PKG_VERSION").into(),
                git_commit: crate::version::GIT_COMMIT.into(),
                command_line: std::env::args().collect(),
            },
            host: host.facts(),
            probes: session.probes.clone(),
            mode: Some(session.mode),
            layout_problems: session.layout_problems.clone(),
            clock: ClockInfo::now(),
            vms,
            pid_filter,
            ring_bytes: session.ring_bytes,
            redacted: false,
        };
        let mut redactor = options.redact.then(|| Redactor::new(&metadata.vms));
        if let Some(redactor) = &mut redactor {
            redactor.metadata(&mut metadata);
        }
        let writer = RecordingWriter::start(file, path, metadata, DEFAULT_QUEUE_RECORDS)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            writer,
            redactor,
            reported_losses: LossCounts::default(),
            last_rows: std::collections::BTreeMap::new(),
        })
    }

    fn remember(&mut self, rows: &[ThreadRow]) {
        for row in rows {
            if self.last_rows.len() < crate::model::MAX_THREADS
                || self.last_rows.contains_key(&row.tid)
            {
                self.last_rows.insert(row.tid, row.clone());
            }
        }
    }

    /// Records the growth of the loss counters. During tracing this never
    /// waits: a record that finds the queue full stays unreported and goes
    /// out with a later interval; at the end (`wait`) every one is written.
    fn losses(&mut self, losses: &LossCounts, now: u64, wait: bool) {
        for record in loss_records(&self.reported_losses, losses, now) {
            if wait {
                self.writer.lost(record.clone());
            } else if !self.writer.try_lost(record.clone()) {
                return;
            }
            apply_loss(&mut self.reported_losses, &record);
        }
    }
}

impl TraceLoop<'_> {
    async fn run(self) -> anyhow::Result<i32> {
        // Create the output first, so a bad path fails before tracing starts.
        let output = match self.record {
            Some((path, options)) => Some(
                writer::create_output(path, options.force)
                    .with_context(|| "creating the recording".to_owned())?,
            ),
            None => None,
        };
        let options = SessionOptions {
            pid: self.trace.pid,
            ring_bytes: self.trace.ring_mib.map(|mib| mib << 20),
            no_raw_tracepoint: self.trace.no_raw_tracepoint,
        };
        let session = match TraceSession::start(&options) {
            Ok(session) => session,
            Err(error) => {
                if let (Some(_), Some((path, _))) = (&output, self.record) {
                    let _ = std::fs::remove_file(path);
                }
                return Err(error);
            }
        };
        let host = HostRoot::live();
        let recorder = match (output, self.record) {
            (Some(file), Some((path, options))) => Some(Recorder::start(
                file,
                path,
                options,
                &session,
                &host,
                self.trace.pid,
            )?),
            _ => None,
        };
        self.trace_loop(session, host, recorder).await
    }

    async fn trace_loop(
        &self,
        mut session: TraceSession,
        host: HostRoot,
        mut recorder: Option<Recorder>,
    ) -> anyhow::Result<i32> {
        let mut model = Model::new();
        model.set_misery_possible(host.misery_possible());
        let interactive = self.view == View::Interactive;
        let _raw = interactive.then(RawStdin::enable);
        let (quit_tx, mut quit_rx) = tokio::sync::mpsc::channel::<()>(1);
        if interactive {
            let quit_tx = quit_tx.clone();
            std::thread::spawn(move || {
                let mut byte = [0u8; 1];
                while std::io::stdin().read(&mut byte).is_ok_and(|n| n == 1) {
                    if byte[0] == b'q' || byte[0] == b'Q' {
                        let _ = quit_tx.blocking_send(());
                        return;
                    }
                }
            });
        }
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let started = Instant::now();
        let deadline = self.trace.duration.map(|duration| started + duration);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.tick().await;
        let mut events = Vec::with_capacity(4096);
        let mut events_this_interval = 0u64;
        let mut last_tick = Instant::now();
        let ended_by;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = monotonic_now_ns();
                    for pid in model.unnamed_pids() {
                        let mut info = host.process_info(pid);
                        if let Some(redactor) = recorder.as_mut().and_then(|r| r.redactor.as_mut()) {
                            redactor.process(&mut info);
                        }
                        model.set_process_info(pid, info);
                    }
                    model.expire(now, |tid| host.thread_gone(tid));
                    let losses = session.losses()?;
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.losses(&losses, now, false);
                    }
                    let status = ViewStatus {
                        mode: session.mode.to_string(),
                        probes_attached: session.probes.attached_count(),
                        probes_total: session.probes.usable_count(),
                        events_per_s: events_this_interval as f64 / last_tick.elapsed().as_secs_f64().max(1e-3),
                        lost_ring: losses.ring_total(),
                        lost_undecodable: losses.undecodable_total(),
                        lost_kernel_skipped: losses.kernel_skipped_total(),
                        counter_map_full: losses.counter_map_full,
                        window_map_full: losses.window_map_full,
                        recorder_not_written: recorder.as_ref().map_or(0, |r| r.writer.not_written()),
                        elapsed_s: started.elapsed().as_secs_f64(),
                    };
                    events_this_interval = 0;
                    last_tick = Instant::now();
                    let all_rows = rows_with_kernel_counts(&mut model, &session, now)?;
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.remember(&all_rows);
                    }
                    if let Some(published) = &self.publish {
                        publish(published, &all_rows, &status, &losses, &session, &model);
                    }
                    let rows: Vec<ThreadRow> = all_rows
                        .into_iter()
                        .filter(|row| self.all || !row.is_quiet())
                        .filter(|row| keep_row(row, self.trace.pid, self.vm, &model))
                        .collect();
                    self.show(&status, &rows, recorder.as_ref())?;
                    if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        ended_by = EndReason::Duration;
                        break;
                    }
                }
                result = session.wait_events(&mut events, crate::session::RING_POLL) => {
                    result?;
                    events_this_interval += events.len() as u64;
                    for event in events.drain(..) {
                        model.apply(&event);
                        if let Some(recorder) = &recorder {
                            recorder.writer.event(event);
                        }
                    }
                }
                _ = quit_rx.recv() => { ended_by = EndReason::Quit; break; }
                _ = sigterm.recv() => { ended_by = EndReason::Signal; break; }
                _ = sigint.recv() => { ended_by = EndReason::Signal; break; }
            }
        }
        // What is still in the ring belongs to the recording.
        session.drain(&mut events);
        for event in events.drain(..) {
            model.apply(&event);
            if let Some(recorder) = &recorder {
                recorder.writer.event(event);
            }
        }
        let code = match recorder {
            Some(recorder) => finish_recording(recorder, &session, &host, &mut model, ended_by)?,
            None => 0,
        };
        drop(session);
        Ok(code)
    }

    fn show(
        &self,
        status: &ViewStatus,
        rows: &[ThreadRow],
        recorder: Option<&Recorder>,
    ) -> anyhow::Result<()> {
        if self.view == View::Headless {
            return Ok(());
        }
        if self.view == View::Progress {
            let worst = rows
                .iter()
                .map(|row| row.verdict)
                .min()
                .unwrap_or(Verdict::Idle);
            let written = recorder.map_or(0, |r| r.writer.events_written());
            eprintln!(
                "recording {:.0} s: {} events written, {} not written, lost: ring {} undecodable {} skipped by kernel {} | {} threads, worst verdict {}",
                status.elapsed_s,
                written,
                status.recorder_not_written,
                status.lost_ring,
                status.lost_undecodable,
                status.lost_kernel_skipped,
                rows.len(),
                worst.label()
            );
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        match self.view {
            View::Json => {
                let line = serde_json::json!({ "status": status, "rows": rows });
                writeln!(stdout, "{line}")?;
            }
            View::Interactive => {
                let screen = live::render(status, rows, Style::Color, terminal_width());
                writeln!(stdout, "\x1b[H\x1b[2J{screen}(q to quit)")?;
            }
            View::Plain | View::Progress | View::Headless => {
                let screen = live::render(status, rows, Style::Plain, 200);
                writeln!(stdout, "{screen}")?;
            }
        }
        stdout.flush()?;
        Ok(())
    }
}

/// Every thread's row at `now`, with the kernel's exact counters attached.
fn rows_with_kernel_counts(
    model: &mut Model,
    session: &TraceSession,
    now: u64,
) -> anyhow::Result<Vec<ThreadRow>> {
    let kernel_counts = session.thread_counters()?;
    Ok(model
        .rows(now, true)
        .into_iter()
        .map(|mut row| {
            row.kernel = kernel_counts.get(&row.tid).map(KernelCounts::from);
            row
        })
        .collect())
}

fn publish(
    published: &std::sync::Mutex<Published>,
    rows: &[ThreadRow],
    status: &ViewStatus,
    losses: &LossCounts,
    session: &TraceSession,
    model: &Model,
) {
    let identity = |pid: u32| {
        let info = model.processes().get(&pid);
        (
            info.and_then(|info| info.name.clone().or_else(|| info.comm.clone()))
                .unwrap_or_default(),
            info.and_then(|info| info.vmid.clone()).unwrap_or_default(),
        )
    };
    let text = crate::metrics::encode_metrics(rows, identity, status, losses, &session.probes);
    let Ok(mut published) = published.lock() else {
        return;
    };
    published.metrics = text;
    published.ticks += 1;
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        seen.insert(row.tid);
        let before = published.verdicts.insert(row.tid, row.verdict);
        let notable = |verdict: Verdict| {
            matches!(
                verdict,
                Verdict::Livelock | Verdict::Killed | Verdict::KvmError | Verdict::Throttled
            )
        };
        if before != Some(row.verdict) && (notable(row.verdict) || before.is_some_and(notable)) {
            log_json(
                "verdict",
                serde_json::json!({
                    "pid": row.pid, "tid": row.tid, "vcpu": row.vcpu, "vm": row.vm,
                    "from": before.map(Verdict::label), "to": row.verdict_label(),
                    "evidence": row.evidence,
                }),
            );
        }
    }
    published.verdicts.retain(|tid, _| seen.contains(tid));
}

fn finish_recording(
    mut recorder: Recorder,
    session: &TraceSession,
    host: &HostRoot,
    model: &mut Model,
    ended_by: EndReason,
) -> anyhow::Result<i32> {
    let now = monotonic_now_ns();
    let losses = session.losses()?;
    recorder.losses(&losses, now, true);
    let rows = rows_with_kernel_counts(model, session, now)?;
    recorder.remember(&rows);
    let threads: Vec<ThreadRow> = std::mem::take(&mut recorder.last_rows)
        .into_values()
        .collect();
    let with_row: std::collections::HashSet<u32> = threads.iter().map(|row| row.tid).collect();
    let counted_threads = session
        .thread_counters()?
        .iter()
        .filter(|(tid, _)| !with_row.contains(tid))
        .map(|(&tid, counters)| CountedThread {
            tid,
            tgid: counters.tgid,
            kernel: KernelCounts::from(counters),
        })
        .collect();
    let mut summary = Summary {
        counted_threads,
        losses,
        threads,
        vms: host.vm_threads(),
        ..Summary::new(now, ended_by)
    };
    if let Some(redactor) = recorder.redactor.as_mut() {
        redactor.summary(&mut summary);
    }
    let path = recorder.writer.path().to_owned();
    let outcome = recorder.writer.finish(summary);
    eprintln!(
        "recorded {} events to {} ({} lines); {} traced events not written",
        outcome.events_written,
        path.display(),
        outcome.lines,
        outcome.queue_dropped + outcome.write_dropped
    );
    if let Some(error) = outcome.write_error {
        eprintln!(
            "tracer: writing {} failed: {error}; the file is complete up to line {}; {} events were not written",
            path.display(),
            outcome.lines,
            outcome.write_dropped
        );
        return Ok(1);
    }
    Ok(0)
}
