//! What happened to each thread over a whole recording, built while it is
//! replayed: totals, peak rates, the time spent in each verdict and the
//! worst and final verdicts. The rows at the end of a replay say only how
//! the last second looked (a finished recording ends IDLE); this is the
//! rest of the story.
//!
//! It is fed by [`super::Replay`]: the rows classified at every
//! [`REPLAY_TICK_NS`] tick and at the end (for totals, identity and peak
//! rates), and every verdict change (for the time in each verdict). A
//! thread that leaves the model (silent for the expiry time) and comes back
//! later keeps one story, its totals summed over both stays.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracer_events::{KickRow, SignalKind, ThreadRow, ThreadTotals, Verdict, VerdictChange};

#[cfg(doc)]
use super::REPLAY_TICK_NS;

/// Threads a replay keeps a story for; further threads are only counted
/// (a hostile recording could name a million).
pub const MAX_STORIES: usize = crate::model::MAX_THREADS;

/// Distinct kicks kept per story (more than the model's per-thread bound:
/// a thread seen twice may have met different senders).
pub const MAX_STORY_KICKS: usize = 2 * crate::model::kicks::MAX_KICKS;

/// A verdict with whether any of its time was confirmed by the kprobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictSeen {
    /// The verdict.
    pub verdict: Verdict,
    /// `false` when inferred from tracepoints only.
    pub confirmed: bool,
}

/// Time a thread spent in one verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictTime {
    /// The verdict (confirmed or inferred alike).
    pub verdict: Verdict,
    /// Nanoseconds in it, summed over every stretch.
    pub ns: u64,
}

/// One kick (signal, kind, sender) summed over the recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KickTotal {
    /// Its name (`SIGUSR1`).
    pub signal: String,
    /// How it was sent.
    pub kind: SignalKind,
    /// Who sent it, when the kind says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Signals of this kick.
    pub count: u64,
    /// Punishments (or, inferred, #AC exits) it cut short.
    pub cut: u64,
}

/// One thread over the whole recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadStory {
    /// Thread id.
    pub tid: u32,
    /// Process id (the latest seen).
    pub pid: u32,
    /// VM label, when known.
    #[serde(default)]
    pub vm: Option<String>,
    /// vCPU index.
    #[serde(default)]
    pub vcpu: Option<u32>,
    /// comm (the latest seen).
    pub comm: String,
    /// Totals over the whole recording.
    pub totals: ThreadTotals,
    /// The signals that reached it, most frequent first (the model keeps
    /// the most frequent kicks of a thread, so rare ones may be missing).
    #[serde(default)]
    pub kicks: Vec<KickTotal>,
    /// Most split-lock traps (or, tracepoint-only, #AC VM exits) in one
    /// replay tick, per second: ticks are one second apart, the thread's
    /// first and last stretch may be shorter and are not scaled up.
    pub peak_traps_per_s: f64,
    /// Most EINTR returns of KVM_RUN in one replay tick, per second (as
    /// `peak_traps_per_s`).
    pub peak_eintr_per_s: f64,
    /// Its most severe verdict (the table's order: LIVELOCK first).
    pub worst: Option<VerdictSeen>,
    /// Its verdict when last classified.
    #[serde(rename = "final")]
    pub last: Option<VerdictSeen>,
    /// When it left the model before the end (silent too long), if it did
    /// and did not come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_ns: Option<u64>,
    /// Time in each verdict, most severe first; sums to the time from its
    /// first verdict to the end (or to when it left).
    pub time_in_verdict: Vec<VerdictTime>,
    /// Verdict changes it had.
    pub verdict_changes: u64,
}

impl ThreadStory {
    /// Nanoseconds spent in `verdict`.
    pub fn time_in(&self, verdict: Verdict) -> u64 {
        self.time_in_verdict
            .iter()
            .find(|time| time.verdict == verdict)
            .map_or(0, |time| time.ns)
    }
}

/// A story being written, with what is needed to continue it.
#[derive(Clone, Debug)]
struct Tracker {
    story: ThreadStory,
    /// Totals of its earlier stays in the model.
    base: ThreadTotals,
    /// Kicks of its earlier stays.
    base_kicks: Vec<KickTotal>,
    /// Totals and kicks of its current stay, as the rows last said.
    current: ThreadTotals,
    current_kicks: Vec<KickRow>,
    /// Traps and EINTR exits (whole recording) at the previous tick.
    traps_at_tick: u64,
    eintr_at_tick: u64,
    /// The verdict it is in and since when.
    verdict: Option<(Verdict, u64)>,
    /// When the rows last had it.
    seen_ns: u64,
    /// It was in the rows at the last classification.
    present: bool,
}

/// Every thread's story, kept by [`super::Replay`].
#[derive(Clone, Debug, Default)]
pub struct Stories {
    trackers: BTreeMap<u32, Tracker>,
    /// Threads seen after [`MAX_STORIES`] were kept (each counted once;
    /// beyond [`MAX_NOT_KEPT_TRACKED`] distinct ones, further sightings
    /// are counted in `not_kept_beyond`).
    not_kept: std::collections::HashSet<u32>,
    not_kept_beyond: u64,
}

/// Distinct threads without a story remembered to count each once (4 MiB).
pub const MAX_NOT_KEPT_TRACKED: usize = 1 << 20;

/// Traps as the model counts them for rates: handler entries when the
/// kprobes see them, otherwise #AC VM exits.
fn trap_count(totals: &ThreadTotals) -> u64 {
    if totals.traps > 0 {
        totals.traps
    } else {
        totals.ac_vm_exits
    }
}

/// `a + b`, field by field (saturating).
fn add_totals(a: &ThreadTotals, b: &ThreadTotals) -> ThreadTotals {
    ThreadTotals {
        traps: a.traps.saturating_add(b.traps),
        warns: a.warns.saturating_add(b.warns),
        interrupted_episodes: a
            .interrupted_episodes
            .saturating_add(b.interrupted_episodes),
        completed_episodes: a.completed_episodes.saturating_add(b.completed_episodes),
        sleeps_interrupted: a.sleeps_interrupted.saturating_add(b.sleeps_interrupted),
        sleeps_completed: a.sleeps_completed.saturating_add(b.sleeps_completed),
        semaphore_interrupted: a
            .semaphore_interrupted
            .saturating_add(b.semaphore_interrupted),
        timer_signals: a.timer_signals.saturating_add(b.timer_signals),
        other_signals: a.other_signals.saturating_add(b.other_signals),
        cut_without_signal: a.cut_without_signal.saturating_add(b.cut_without_signal),
        userspace_exits: a.userspace_exits.saturating_add(b.userspace_exits),
        eintr_exits: a.eintr_exits.saturating_add(b.eintr_exits),
        error_exits: a.error_exits.saturating_add(b.error_exits),
        ac_vm_exits: a.ac_vm_exits.saturating_add(b.ac_vm_exits),
    }
}

/// The model's totals only grow during one stay: a smaller count is a new
/// thread state (the thread expired, or its tid was reused).
fn restarted(before: &ThreadTotals, now: &ThreadTotals) -> bool {
    now.traps < before.traps
        || now.userspace_exits < before.userspace_exits
        || now.ac_vm_exits < before.ac_vm_exits
        || now.timer_signals + now.other_signals < before.timer_signals + before.other_signals
}

/// Adds `kicks` into `into`, merging equal (signal, kind, sender), keeping
/// at most [`MAX_STORY_KICKS`] (the most frequent).
fn merge_kicks<'a>(into: &mut Vec<KickTotal>, kicks: impl IntoIterator<Item = &'a KickTotal>) {
    for kick in kicks {
        if let Some(kept) = into.iter_mut().find(|kept| {
            kept.signal == kick.signal && kept.kind == kick.kind && kept.sender == kick.sender
        }) {
            kept.count = kept.count.saturating_add(kick.count);
            kept.cut = kept.cut.saturating_add(kick.cut);
        } else {
            into.push(kick.clone());
        }
    }
    into.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.kind.cmp(&b.kind)));
    into.truncate(MAX_STORY_KICKS);
}

fn kick_total(row: &KickRow) -> KickTotal {
    KickTotal {
        signal: row.signal.clone(),
        kind: row.kind,
        sender: row.sender.clone(),
        count: row.count,
        cut: row.cut,
    }
}

impl Tracker {
    fn new(row: &ThreadRow, now_ns: u64) -> Self {
        Self {
            story: ThreadStory {
                tid: row.tid,
                pid: row.pid,
                vm: None,
                vcpu: None,
                comm: String::new(),
                totals: ThreadTotals::default(),
                kicks: Vec::new(),
                peak_traps_per_s: 0.0,
                peak_eintr_per_s: 0.0,
                worst: None,
                last: None,
                left_ns: None,
                time_in_verdict: Vec::new(),
                verdict_changes: 0,
            },
            base: ThreadTotals::default(),
            base_kicks: Vec::new(),
            current: ThreadTotals::default(),
            current_kicks: Vec::new(),
            traps_at_tick: 0,
            eintr_at_tick: 0,
            verdict: None,
            seen_ns: now_ns,
            present: true,
        }
    }

    /// Folds the current stay into the earlier ones.
    fn end_stay(&mut self) {
        self.base = add_totals(&self.base, &self.current);
        let kicks: Vec<KickTotal> = self.current_kicks.iter().map(kick_total).collect();
        merge_kicks(&mut self.base_kicks, &kicks);
        self.current = ThreadTotals::default();
        self.current_kicks.clear();
    }

    /// The rows classified at `now_ns` have the thread as `row`.
    fn observe(&mut self, row: &ThreadRow, now_ns: u64) {
        if restarted(&self.current, &row.totals)
            || (row.pid != self.story.pid && row.pid != 0 && self.story.pid != 0)
        {
            self.end_stay();
        }
        self.current = row.totals.clone();
        self.current_kicks.clone_from(&row.kicks);
        self.story.pid = row.pid;
        if row.vm.is_some() {
            self.story.vm.clone_from(&row.vm);
        }
        if row.vcpu.is_some() {
            self.story.vcpu = row.vcpu;
        }
        self.story.comm.clone_from(&row.comm);
        self.story.totals = add_totals(&self.base, &self.current);
        let mut kicks = self.base_kicks.clone();
        let current: Vec<KickTotal> = self.current_kicks.iter().map(kick_total).collect();
        merge_kicks(&mut kicks, &current);
        self.story.kicks = kicks;
        let traps = trap_count(&self.base).saturating_add(trap_count(&self.current));
        let eintr = self.story.totals.eintr_exits;
        let tick_s = super::REPLAY_TICK_NS as f64 / 1e9;
        self.story.peak_traps_per_s = self
            .story
            .peak_traps_per_s
            .max(traps.saturating_sub(self.traps_at_tick) as f64 / tick_s);
        self.story.peak_eintr_per_s = self
            .story
            .peak_eintr_per_s
            .max(eintr.saturating_sub(self.eintr_at_tick) as f64 / tick_s);
        self.traps_at_tick = traps;
        self.eintr_at_tick = eintr;
        self.seen_ns = now_ns;
        self.present = true;
        self.story.left_ns = None;
    }

    /// Adds the time in the current verdict up to `until_ns`.
    fn close_verdict(&mut self, until_ns: u64) {
        if let Some((verdict, since)) = self.verdict.take() {
            let ns = until_ns.saturating_sub(since);
            if let Some(time) = self
                .story
                .time_in_verdict
                .iter_mut()
                .find(|time| time.verdict == verdict)
            {
                time.ns = time.ns.saturating_add(ns);
            } else {
                self.story.time_in_verdict.push(VerdictTime { verdict, ns });
                self.story.time_in_verdict.sort_by_key(|time| time.verdict);
            }
        }
    }

    fn change(&mut self, change: &VerdictChange) {
        self.close_verdict(change.ts_ns);
        self.verdict = Some((change.to, change.ts_ns));
        let seen = VerdictSeen {
            verdict: change.to,
            confirmed: change.confirmed,
        };
        self.story.last = Some(seen);
        self.story.worst = Some(match self.story.worst {
            Some(worst) if worst.verdict < seen.verdict => worst,
            Some(worst) if worst.verdict == seen.verdict => VerdictSeen {
                verdict: worst.verdict,
                confirmed: worst.confirmed || seen.confirmed,
            },
            _ => seen,
        });
        self.story.verdict_changes += 1;
    }
}

impl Stories {
    /// The rows classified at `now_ns` (every thread with a row): updates
    /// their stories; a thread missing from them has left the model.
    pub fn classified(&mut self, now_ns: u64, rows: &[ThreadRow]) {
        for row in rows {
            if !self.trackers.contains_key(&row.tid) {
                if self.trackers.len() >= MAX_STORIES {
                    self.count_not_kept(row.tid);
                    continue;
                }
                self.trackers.insert(row.tid, Tracker::new(row, now_ns));
            }
            if let Some(tracker) = self.trackers.get_mut(&row.tid) {
                tracker.observe(row, now_ns);
            }
        }
        for tracker in self.trackers.values_mut() {
            if tracker.present && tracker.seen_ns != now_ns {
                tracker.present = false;
                tracker.close_verdict(tracker.seen_ns);
                tracker.story.left_ns = Some(tracker.seen_ns);
                tracker.end_stay();
            }
        }
    }

    /// A verdict change (after an event or at a classification).
    pub fn change(&mut self, change: &VerdictChange) {
        if let Some(tracker) = self.trackers.get_mut(&change.tid) {
            tracker.change(change);
        } else if self.trackers.len() < MAX_STORIES {
            // First seen through its change: the rows at the next
            // classification fill in the rest.
            let row = ThreadRow::empty(
                change.pid,
                change.vcpu,
                change.tid,
                change.to,
                change.confirmed,
            );
            let mut tracker = Tracker::new(&row, change.ts_ns);
            tracker.story.vcpu = change.vcpu;
            tracker.change(change);
            self.trackers.insert(change.tid, tracker);
        } else {
            self.count_not_kept(change.tid);
        }
    }

    fn count_not_kept(&mut self, tid: u32) {
        if self.not_kept.len() < MAX_NOT_KEPT_TRACKED {
            self.not_kept.insert(tid);
        } else if !self.not_kept.contains(&tid) {
            self.not_kept_beyond += 1;
        }
    }

    /// Threads seen after [`MAX_STORIES`] were kept: they have no story.
    pub fn not_kept(&self) -> u64 {
        self.not_kept.len() as u64 + self.not_kept_beyond
    }

    /// The stories at `end_ns` (after the last classification), worst
    /// verdict first, then by process, vCPU and thread. Threads without a
    /// trap, a KVM_RUN return or a verdict other than IDLE are left out.
    pub fn finish(&self, end_ns: u64) -> Vec<ThreadStory> {
        let mut stories: Vec<ThreadStory> = self
            .trackers
            .values()
            .map(|tracker| {
                let mut tracker = tracker.clone();
                if tracker.present {
                    tracker.close_verdict(end_ns);
                }
                tracker.story
            })
            .filter(|story| {
                story.totals.traps > 0
                    || story.totals.ac_vm_exits > 0
                    || story.totals.userspace_exits > 0
                    || story
                        .worst
                        .is_some_and(|worst| worst.verdict != Verdict::Idle)
            })
            .collect();
        stories.sort_by_key(|story| {
            (
                story.worst.map_or(Verdict::Idle, |worst| worst.verdict),
                story.pid,
                story.vcpu.unwrap_or(u32::MAX),
                story.tid,
            )
        });
        stories
    }
}
