//! Replaying a recording through the live model, and its renderings: the
//! live table, JSON, ftrace-style text and Perfetto.

pub mod ftrace;
#[cfg(feature = "perfetto")]
pub mod perfetto;
pub mod story;
pub mod table;

use std::collections::BTreeMap;

use serde::Serialize;

use tracer_events::{
    Event, KPROBES_ENABLED, LossCounts, LostCause, LostRecord, MICROCODE_REVISION, Metadata,
    MitigationChange, Record, SPLIT_LOCK_MITIGATE, Summary, ThreadRow, Verdict, VerdictChange,
    apply_loss,
};

use crate::{
    live::ViewStatus,
    model::{MAX_THREADS, Model},
    probes::plan,
};

use self::story::{Stories, ThreadStory};

/// Besides after every event (for the event's thread), a replay classifies
/// every thread this often (recorded time), so verdicts that change by
/// silence (LIVELOCK -> IDLE) are found too.
pub const REPLAY_TICK_NS: u64 = 1_000_000_000;

/// When the replay classifies next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextTick {
    /// Before the first record.
    NotStarted,
    /// At this recorded time.
    At(u64),
    /// Never again: the next tick would pass `u64::MAX`.
    Exhausted,
}

/// The model driven by a recording.
pub struct Replay {
    /// The recording's metadata.
    pub metadata: Metadata,
    model: Model,
    /// The next classification tick.
    next_tick: NextTick,
    /// Every verdict change, in time order.
    pub changes: Vec<VerdictChange>,
    /// Every mitigation change, in time order.
    pub mitigations: Vec<MitigationChange>,
    /// Every mitigation change (the list above stops at [`MAX_LOST_KEYS`]).
    pub mitigations_seen: u64,
    /// The latest mitigation change, also past the list's end.
    pub last_mitigation: Option<MitigationChange>,
    /// `kernel.split_lock_mitigate` in force: the metadata's, then each change's.
    split_lock_mitigate: Option<u32>,
    /// CPU 0's microcode revision in force, likewise.
    microcode_revision: Option<u32>,
    /// The kprobes switch in force: unknown at start (the metadata does not
    /// hold it), then each change's.
    kprobes_enabled: Option<u32>,
    /// Lost records summed by cause and detail.
    pub lost: BTreeMap<(LostCause, Option<String>), u64>,
    /// The summary record, if the recording has one.
    pub summary: Option<Summary>,
    /// Events replayed.
    pub events: u64,
    /// First event time.
    pub first_ts: Option<u64>,
    /// Last event time.
    pub last_ts: u64,
    /// Every thread's story so far.
    stories: Stories,
}

/// What a replay ends with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayResult {
    /// Header values, as the live view shows them.
    pub status: ViewStatus,
    /// Rows at the end of the recording (all threads with activity).
    pub rows: Vec<ThreadRow>,
    /// Verdict changes.
    pub changes: Vec<VerdictChange>,
    /// Mitigation changes (`mitigation` records).
    #[serde(default)]
    pub mitigations: Vec<MitigationChange>,
    /// Losses (from the summary, else summed from `lost` records).
    pub losses: LossCounts,
    /// Events traced but not written by the recorder.
    pub events_not_written: u64,
    /// Threads the replay dropped because more than [`MAX_THREADS`] were
    /// active at once (the least recently seen go first): their rows and
    /// verdicts are missing, or restart when they are seen again.
    #[serde(default)]
    pub threads_not_kept: u64,
    /// Every thread over the whole recording: totals, peak rates, time in
    /// each verdict, worst and final verdicts.
    #[serde(default)]
    pub stories: Vec<ThreadStory>,
    /// Threads without a story (more than [`story::MAX_STORIES`]).
    #[serde(default)]
    pub stories_not_kept: u64,
}

/// Distinct (cause, detail) pairs of `lost` records kept apart; further
/// details are summed under [`OTHER_DETAILS`] (a hostile recording could
/// otherwise grow the map by a line each).
pub const MAX_LOST_KEYS: usize = 1024;
/// The detail losses beyond [`MAX_LOST_KEYS`] are summed under.
pub const OTHER_DETAILS: &str = "(other details)";

impl Replay {
    /// A replay of a recording with `metadata`.
    pub fn new(metadata: Metadata) -> Self {
        let mut model = Model::new();
        model.set_host(
            metadata.host.kernel_release.as_deref(),
            metadata.host.split_lock_mitigate,
        );
        for vm in &metadata.vms {
            model.set_process_info(vm.pid, vm.info.clone());
        }
        let split_lock_mitigate = metadata.host.split_lock_mitigate;
        let microcode_revision = metadata
            .host
            .cpu
            .as_ref()
            .and_then(|cpu| cpu.microcode)
            .and_then(|revision| u32::try_from(revision).ok());
        Self {
            metadata,
            model,
            split_lock_mitigate,
            microcode_revision,
            kprobes_enabled: None,
            next_tick: NextTick::NotStarted,
            changes: Vec::new(),
            mitigations: Vec::new(),
            mitigations_seen: 0,
            last_mitigation: None,
            lost: BTreeMap::new(),
            summary: None,
            events: 0,
            first_ts: None,
            last_ts: 0,
            stories: Stories::default(),
        }
    }

    /// Feeds one record.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Event(event) => self.event(event),
            Record::Lost(lost) => self.lost_record(lost),
            Record::Mitigation(change) => {
                self.advance_to(change.ts_ns);
                self.model.mitigation_changed(change);
                // A hostile recording could repeat it for ever: the model
                // follows every one, the list keeps the first MAX_LOST_KEYS;
                // the count and the latest are kept apart.
                if self.mitigations.len() < MAX_LOST_KEYS {
                    self.mitigations.push(change.clone());
                }
                self.mitigations_seen = self.mitigations_seen.saturating_add(1);
                match change.setting.as_str() {
                    SPLIT_LOCK_MITIGATE => self.split_lock_mitigate = change.to,
                    MICROCODE_REVISION => self.microcode_revision = change.to,
                    KPROBES_ENABLED => self.kprobes_enabled = change.to,
                    _ => {}
                }
                self.last_mitigation = Some(change.clone());
            }
            Record::Summary(summary) => {
                self.advance_to(summary.ts_ns);
                for vm in &summary.vms {
                    if !self.model.processes().contains_key(&vm.pid) {
                        self.model.set_process_info(vm.pid, vm.info.clone());
                    }
                }
                self.summary = Some((**summary).clone());
            }
            Record::Meta(_) => {}
        }
    }

    fn lost_record(&mut self, lost: &LostRecord) {
        let mut key = (lost.cause, lost.detail.clone());
        if self.lost.len() >= MAX_LOST_KEYS && !self.lost.contains_key(&key) {
            key.1 = Some(OTHER_DETAILS.to_owned());
        }
        let total = self.lost.entry(key).or_default();
        *total = total.saturating_add(lost.count);
    }

    fn event(&mut self, event: &Event) {
        self.advance_to(event.ts_ns);
        self.first_ts.get_or_insert(event.ts_ns);
        self.last_ts = self.last_ts.max(event.ts_ns);
        self.events += 1;
        self.model.apply(event);
        if let Some(change) = self
            .model
            .verdict_change_of(event.subject_tid(), event.ts_ns)
        {
            self.stories.change(&change);
            self.changes.push(change);
        }
    }

    /// Classifies at every tick up to `ts_ns`. The reader bounds every
    /// `ts_ns`, and the arithmetic here is checked anyway: a tick past
    /// `u64::MAX` ends the ticking instead of wrapping round to 0 (which
    /// looped for ever on a `ts_ns` of `u64::MAX`).
    fn advance_to(&mut self, ts_ns: u64) {
        if self.next_tick == NextTick::NotStarted {
            self.next_tick = ts_ns
                .checked_add(REPLAY_TICK_NS)
                .map_or(NextTick::Exhausted, NextTick::At);
        }
        let NextTick::At(next) = self.next_tick else {
            return;
        };
        if ts_ns < next {
            return;
        }
        let mut tick = Some(next);
        while let Some(now) = tick.filter(|now| *now <= ts_ns) {
            self.classify_at(now);
            self.model.expire(now, |_| false);
            tick = now.checked_add(REPLAY_TICK_NS);
            // Skip a stretch without threads in one step.
            if let Some(next) = tick
                && self.model.thread_count() == 0
                && next <= ts_ns
            {
                tick = next.checked_add((ts_ns - next) / REPLAY_TICK_NS * REPLAY_TICK_NS);
            }
        }
        self.next_tick = tick.map_or(NextTick::Exhausted, NextTick::At);
    }

    fn classify_at(&mut self, ts_ns: u64) -> Vec<ThreadRow> {
        let rows = self.model.rows(ts_ns, true);
        self.stories.classified(ts_ns, &rows);
        let changes = self.model.verdict_changes(ts_ns, &rows);
        for change in &changes {
            self.stories.change(change);
        }
        self.changes.extend(changes);
        rows
    }

    /// End time: the summary's, else the last event's.
    pub fn end_ns(&self) -> u64 {
        self.summary
            .as_ref()
            .map_or(self.last_ts, |summary| summary.ts_ns.max(self.last_ts))
    }

    /// Classifies at the end and returns the table's content.
    pub fn finish(&mut self) -> ReplayResult {
        let end = self.end_ns();
        let mut rows = self.classify_at(end);
        rows.retain(|row| {
            !(matches!(row.verdict, Verdict::Idle)
                && row.totals.traps == 0
                && row.totals.userspace_exits == 0)
        });
        if let Some(summary) = &self.summary {
            for row in &mut rows {
                row.kernel = summary
                    .threads
                    .iter()
                    .find(|recorded| recorded.tid == row.tid)
                    .and_then(|recorded| recorded.kernel.clone());
            }
        }
        let losses = self.summary.as_ref().map_or_else(
            || {
                let mut losses = LossCounts::default();
                for ((cause, detail), count) in &self.lost {
                    apply_loss(
                        &mut losses,
                        &LostRecord {
                            ts_ns: 0,
                            cause: *cause,
                            detail: detail.clone(),
                            count: *count,
                        },
                    );
                }
                losses
            },
            |summary| summary.losses.clone(),
        );
        let events_not_written = self.summary.as_ref().map_or_else(
            || {
                self.lost
                    .iter()
                    .filter(|((cause, _), _)| *cause == LostCause::RecorderQueueFull)
                    .map(|(_, count)| count)
                    .sum()
            },
            |summary| summary.events_not_written,
        );
        let elapsed_ns = end.saturating_sub(self.metadata.clock.start_ns);
        let status = ViewStatus {
            mode: self.metadata.mode,
            probes_attached: self.metadata.probes.attached_count(),
            probes_total: plan::usable_count(&self.metadata.probes),
            events_per_s: if elapsed_ns > 0 {
                self.events as f64 / (elapsed_ns as f64 / 1e9)
            } else {
                0.0
            },
            lost_ring: losses.ring_total(),
            lost_undecodable: losses.undecodable_total(),
            lost_kernel_skipped: losses.kernel_skipped_total(),
            counter_map_full: losses.counter_map_full,
            signals_to_other_threads: self
                .summary
                .as_ref()
                .map(|summary| summary.signals_to_other_threads)
                .unwrap_or_default(),
            window_map_full: losses.window_map_full,
            recorder_not_written: events_not_written,
            ebpf_log_messages: 0,
            elapsed_s: elapsed_ns as f64 / 1e9,
            split_lock_mitigate: self.split_lock_mitigate,
            microcode_revision: self.microcode_revision,
            kprobes_enabled: self.kprobes_enabled,
            mitigation_change: self.last_mitigation.as_ref().map(|change| {
                crate::mitigation::header_note(change, self.metadata.clock.realtime_offset_ns)
            }),
            mitigation_changes: self.mitigations_seen,
        };
        ReplayResult {
            status,
            rows,
            changes: self.changes.clone(),
            mitigations: self.mitigations.clone(),
            losses,
            events_not_written,
            threads_not_kept: self.model.threads_evicted(),
            stories: self.stories.finish(end),
            stories_not_kept: self.stories.not_kept(),
        }
    }
}

/// The `report` table: the story of the whole recording per thread, the
/// state at its end, mitigation changes and the verdict history
/// ([`table::render`]).
pub fn render_table(result: &ReplayResult, start_ns: u64) -> String {
    table::render(result, start_ns)
}

/// The line that says threads were dropped, when some were.
pub fn threads_not_kept_note(result: &ReplayResult) -> Option<String> {
    (result.threads_not_kept > 0).then(|| {
        format!(
            "{} threads not kept: more than {MAX_THREADS} threads were active at once, the least recently seen were dropped (their rows and verdict changes are missing or restart)",
            result.threads_not_kept
        )
    })
}

/// The `--format json` document.
pub fn render_json(
    metadata: &Metadata,
    result: &ReplayResult,
    warnings: &[String],
) -> serde_json::Value {
    serde_json::json!({
        "format_version": metadata.version,
        "kernel_release": metadata.host.kernel_release,
        "mode": metadata.mode,
        "status": result.status,
        "losses": result.losses,
        "events_not_written": result.events_not_written,
        "threads_not_kept": result.threads_not_kept,
        "threads": result.rows,
        "verdict_changes": result.changes,
        "thread_stories": result.stories,
        "thread_stories_not_kept": result.stories_not_kept,
        "mitigation_changes": result.mitigations,
        "warnings": warnings,
    })
}

#[cfg(test)]
mod tests;
