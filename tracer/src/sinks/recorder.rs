//! The recorder: every event, every loss and the final per-thread totals
//! and verdicts, through the crash-safe writer of `tracer-events`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tracer_events::{
    ClockInfo, Event, FORMAT_NAME, FORMAT_VERSION, LossCounts, Metadata, Summary, ThreadRow,
    TracerIdentity, apply_loss, loss_records,
    writer::{self, DEFAULT_QUEUE_RECORDS, RecordingWriter},
};

use crate::{
    live::ViewStatus,
    model::MAX_THREADS,
    runner::{End, Runner, Sink, Tick},
};

/// The output file, created before tracing starts so a bad path fails
/// first. Dropped without becoming a [`Recorder`] (the session or the
/// metadata write failed), it removes the file it created.
pub struct PendingRecording {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl PendingRecording {
    /// Creates `path` (mode 0600, never through a symlink; an existing
    /// file only with `force`).
    pub fn create(path: &Path, force: bool) -> anyhow::Result<Self> {
        let file = writer::create_output(path, force).context("creating the recording")?;
        Ok(Self {
            file: Some(file),
            path: path.to_owned(),
        })
    }

    /// Writes the metadata of `runner`'s session and starts recording.
    pub fn start(
        mut self,
        runner: &mut Runner,
        pid_filter: Option<u32>,
    ) -> anyhow::Result<Recorder> {
        let session = runner.session();
        let host = runner.host();
        let mut metadata = Metadata {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            tracer: TracerIdentity {
                version: env!("CARGO_PKG_VERSION").into(),
                git_commit: crate::version::GIT_COMMIT.into(),
                // args_os: a path argument need not be UTF-8 (env::args
                // panicked on one).
                command_line: std::env::args_os()
                    .map(|arg| arg.to_string_lossy().into_owned())
                    .collect(),
            },
            host: host.facts(),
            probes: session.probes.clone(),
            mode: Some(session.mode),
            layout_problems: session.layout_problems.clone(),
            clock: ClockInfo::now(),
            vms: host.vm_threads(),
            pid_filter,
            ring_bytes: session.ring_bytes,
            redacted: false,
            guest_symbols: runner.guest_symbol_infos(),
        };
        if let Some(redactor) = runner.redactor() {
            redactor.metadata(&mut metadata);
        }
        let file = self.file.take().context("recording already started")?;
        let writer = RecordingWriter::start(file, &self.path, metadata, DEFAULT_QUEUE_RECORDS)
            .with_context(|| format!("writing {}", self.path.display()))?;
        // Started: the file is the recording's now.
        self.path = PathBuf::new();
        Ok(Recorder {
            writer: Some(writer),
            reported_losses: LossCounts::default(),
            last_rows: BTreeMap::new(),
        })
    }
}

impl Drop for PendingRecording {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The recorder sink.
pub struct Recorder {
    writer: Option<RecordingWriter>,
    reported_losses: LossCounts,
    /// Latest row of every thread seen, so the summary keeps threads the
    /// model has since expired.
    last_rows: BTreeMap<u32, ThreadRow>,
}

impl Recorder {
    /// The live count of event lines written (for a progress line).
    pub fn events_written(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.writer
            .as_ref()
            .map(RecordingWriter::events_written_counter)
            .unwrap_or_default()
    }

    fn remember(&mut self, rows: &[ThreadRow]) {
        for row in rows {
            if self.last_rows.len() < MAX_THREADS || self.last_rows.contains_key(&row.tid) {
                self.last_rows.insert(row.tid, row.clone());
            }
        }
    }

    /// Records the growth of the loss counters. During tracing this never
    /// waits: a record that finds the queue full stays unreported and goes
    /// out with a later interval; at the end (`wait`) every one is written.
    fn losses(&mut self, losses: &LossCounts, now: u64, wait: bool) {
        let Some(writer) = &self.writer else { return };
        for record in loss_records(&self.reported_losses, losses, now) {
            if wait {
                writer.lost(record.clone());
            } else if !writer.try_lost(record.clone()) {
                return;
            }
            apply_loss(&mut self.reported_losses, &record);
        }
    }
}

impl Sink for Recorder {
    fn event(&mut self, event: &Event) {
        if let Some(writer) = &self.writer {
            writer.event(event.clone());
        }
    }

    fn status(&self, status: &mut ViewStatus) {
        status.recorder_not_written = self.writer.as_ref().map_or(0, RecordingWriter::not_written);
    }

    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        if let Some(writer) = &self.writer {
            for change in tick.mitigations {
                writer.mitigation(change.clone());
            }
        }
        self.losses(tick.losses, tick.now_ns, false);
        self.remember(tick.rows);
        Ok(())
    }

    fn finish(&mut self, end: &mut End<'_>) -> anyhow::Result<i32> {
        self.losses(end.tick.losses, end.tick.now_ns, true);
        self.remember(end.tick.rows);
        let Some(writer) = self.writer.take() else {
            return Ok(0);
        };
        let threads: Vec<ThreadRow> = std::mem::take(&mut self.last_rows).into_values().collect();
        // Threads with a row (also those the model has since expired) are
        // not repeated as counted-only threads.
        let counted_threads = end
            .counted_threads
            .iter()
            .filter(|counted| threads.iter().all(|row| row.tid != counted.tid))
            .cloned()
            .collect();
        let mut summary = Summary {
            counted_threads,
            losses: end.tick.losses.clone(),
            signals_to_other_threads: end.tick.status.signals_to_other_threads,
            threads,
            vms: end.host.vm_threads(),
            ..Summary::new(end.tick.now_ns, end.ended_by)
        };
        if let Some(redactor) = end.redactor.as_deref_mut() {
            redactor.summary(&mut summary);
        }
        let path = writer.path().to_owned();
        let outcome = writer.finish(summary);
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
}
