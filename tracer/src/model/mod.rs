//! The pure per-thread model: state updated by events, a classifier that
//! reads it, advice apart, and display rows built from it.
//!
//! It eats [`Event`]s (live, replayed or modelled) and never touches the
//! kernel. Per thread it assembles split-lock episodes (trap, optional
//! `split_lock_warn`, sleep result, semaphore result, return) and keeps
//! sliding-window rates and totals (this file); [`classify`] reads that
//! state without changing it and returns the verdict with its evidence;
//! [`advice`] holds the mitigations; [`rows`] builds the display rows;
//! verdict changes are tracked once, here ([`Model::verdict_changes`]).
//!
//! Thresholds and hysteresis (also in docs/classifier.md):
//! * LIVELOCK (confirmed) is entered after [`LIVELOCK_STREAK`] consecutive
//!   episodes at the same IP whose punishment sleep or semaphore wait was
//!   interrupted, with no completed episode in between.
//! * LIVELOCK (inferred, tracepoint-only) is entered after
//!   [`LIVELOCK_STREAK`] consecutive #AC VM exits at the same guest RIP each
//!   followed by an EINTR return of KVM_RUN sooner than
//!   [`PUNISHMENT_MIN_NS`] (an uninterrupted punishment sleeps at least
//!   10 ms) with no other KVM_RUN return in between; a KVM_RUN return
//!   without an #AC exit in its run breaks the streak.
//! * LIVELOCK is left only on a completed episode (or, inferred, an #AC exit
//!   that was not cut short) or after [`QUIET_HOLD_NS`] without a trap.
//! * KILLED and KVM ERROR are sticky for the life of the thread.

pub mod advice;
mod classify;
pub mod kicks;
pub mod punish;
pub mod rate;
mod rows;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use tracer_common::{BUS_ADRALN, KVM_RUN_EINTR, SI_TIMER, SIGBUS, kvm_exit_reason, vmx};
pub use tracer_events::thread::format_ts;

pub use self::advice::LIVELOCK_MITIGATIONS;
use tracer_events::{ProcessInfo, ThreadRow, ThreadTotals, Verdict, VerdictChange};

use self::{
    kicks::{KickKey, Kicks},
    rate::{SlidingSum, WINDOW_NS},
};
use crate::events::{Comm, Event, EventBody, TrapSource, kvm_exit_reason_name};

/// Consecutive interrupted episodes (or cut-short #AC exits) that make a livelock.
pub const LIVELOCK_STREAK: u32 = 3;
/// Without a trap for this long a LIVELOCK or THROTTLED thread calms down.
pub const QUIET_HOLD_NS: u64 = 2_000_000_000;
/// The punishment sleep is `msleep_interruptible(10)`: an uninterrupted one
/// lasts at least 10 ms (kernel.md §1.3/§1.5).
pub const PUNISHMENT_MIN_NS: u64 = 10_000_000;
/// How long a thread that recovered after a mitigation shows RECOVERING.
pub const RECOVERY_HOLD_NS: u64 = 10_000_000_000;
/// A thread without any event for this long leaves the model.
pub const THREAD_EXPIRY_NS: u64 = 30_000_000_000;
/// Most threads kept; the least recently seen go first (the in-kernel
/// counter map's size too).
pub const MAX_THREADS: usize = tracer_common::MAX_THREADS as usize;

/// How a punishment step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Completed (full sleep / semaphore acquired).
    Completed,
    /// Interrupted by a signal (ms left, or -EINTR).
    Interrupted,
}

/// One split-lock handling, from trap to return.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitLockEpisode {
    /// Trap time.
    pub start_ns: u64,
    /// Faulting IP.
    pub ip: u64,
    /// Guest or host task.
    pub source: TrapSource,
    /// `split_lock_warn` was seen.
    pub warned: bool,
    /// Punishment sleep result, with ms left when interrupted.
    pub sleep: Option<(StepOutcome, u64)>,
    /// Semaphore wait result.
    pub semaphore: Option<StepOutcome>,
    /// Handler result (`false` = SIGBUS follows).
    pub handled: Option<bool>,
    /// Time in the handler.
    pub duration_ns: u64,
}

impl SplitLockEpisode {
    /// The misery path was cut short by a signal.
    pub fn interrupted(&self) -> bool {
        matches!(self.sleep, Some((StepOutcome::Interrupted, _)))
            || self.semaphore == Some(StepOutcome::Interrupted)
    }

    /// Detection was disabled so the instruction could complete: either the
    /// whole punishment ran, or no punishment applies (mitigate=0, or the
    /// sleep probe is absent and the handler took at least the full sleep).
    pub fn completed(&self) -> bool {
        self.handled == Some(true) && !self.interrupted()
    }
}

/// Finished episodes kept per thread for the live view's detail pane.
pub const RECENT_EPISODES: usize = 8;

/// A finished episode as the detail pane's timeline shows it: the trap,
/// what the punishment did, what cut it short and how KVM_RUN returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// The episode.
    pub episode: SplitLockEpisode,
    /// The signal generated for the thread inside the handler window
    /// (`SIGUSR1 timer`), when the punishment was cut short.
    pub cut_by: Option<String>,
    /// The next KVM_RUN return after it: (time, errno), 0 = no error.
    pub kvm_run: Option<(u64, i32)>,
}

#[derive(Clone, Debug, Default)]
struct Windows {
    traps: SlidingSum,
    ac_exits: SlidingSum,
    interrupted: SlidingSum,
    episodes: SlidingSum,
    eintr: SlidingSum,
    punished_ns: SlidingSum,
}

/// The windows of a thread that traps or runs a vCPU, allocated on first
/// use: most threads the tracer sees only receive timer signals, and at
/// 10,000 of them the inline windows were most of the tracer's memory
/// (measured by `cargo xtask bench`).
#[derive(Clone, Debug, Default)]
struct LazyWindows(Option<Box<Windows>>);

impl LazyWindows {
    fn get(&mut self) -> &mut Windows {
        self.0.get_or_insert_with(Box::default)
    }

    fn sum(&self, now_ns: u64, pick: fn(&Windows) -> &SlidingSum) -> u64 {
        self.0
            .as_deref()
            .map_or(0, |windows| pick(windows).sum_at(now_ns))
    }

    fn per_second(&self, now_ns: u64, pick: fn(&Windows) -> &SlidingSum) -> f64 {
        self.0
            .as_deref()
            .map_or(0.0, |windows| pick(windows).per_second_at(now_ns))
    }
}

/// Tracepoint-only inference state.
#[derive(Clone, Debug, Default)]
struct AcExitTracker {
    /// Last #AC exit not yet followed by a KVM_RUN return: (time, rip).
    pending: Option<(u64, u64)>,
    /// Consecutive cut-short #AC exits at `rip`.
    streak: u32,
    rip: u64,
    /// An #AC exit that was not cut short (punishment completed).
    last_completed_ns: Option<u64>,
}

/// Everything the model knows about one thread.
#[derive(Clone, Debug)]
pub struct ThreadState {
    /// Thread id.
    pub tid: u32,
    /// Process id (0 until an event ran in the thread's context).
    pub tgid: u32,
    /// comm.
    pub comm: Comm,
    /// vCPU index, from `CPU N/KVM` or kvm_exit's vcpu_id.
    pub vcpu: Option<u32>,
    /// Evidence it runs KVM_RUN.
    pub is_vcpu: bool,
    /// Totals since first seen.
    pub totals: ThreadTotals,
    /// First event time.
    pub first_seen_ns: u64,
    /// Last event time.
    pub last_seen_ns: u64,
    /// Sequence number of the thread's latest event in the model's
    /// eviction queue (only the entry with this number is current).
    touched: u64,
    windows: LazyWindows,
    /// Signals to this thread in the window (kept for every thread).
    signals: SlidingSum,
    episode: Option<SplitLockEpisode>,
    last_episode: Option<SplitLockEpisode>,
    /// The last [`RECENT_EPISODES`] finished episodes, oldest first.
    recent: VecDeque<EpisodeRecord>,
    interrupted_streak: u32,
    streak_ip: Option<u64>,
    last_trap_ns: Option<u64>,
    last_ip: Option<u64>,
    last_completed_ns: Option<u64>,
    kicks: Kicks,
    /// The first signal generated for the thread inside the open handler
    /// window (or, inferred, between an #AC exit and the KVM_RUN return).
    window_signal: Option<KickKey>,
    ac: AcExitTracker,
    livelock: Option<LivelockState>,
    /// When the last livelock ended on a completed punishment.
    livelock_ended_ns: Option<u64>,
    recovery: Option<Recovery>,
    killed: Option<String>,
    kvm_error: Option<String>,
    failed_entry_reason: Option<u32>,
}

/// A livelock that a mitigation change may end: set on the threads
/// livelocked when the change is seen.
#[derive(Clone, Debug)]
struct Recovery {
    /// The change happened after this (the previous reading).
    since_ns: u64,
    /// `split_lock_mitigate 1 → 0`.
    change: String,
    /// When the livelock ended (a completed punishment), if it has.
    ended_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct LivelockState {
    since_ns: u64,
    confirmed: bool,
}

/// vCPU index of a QEMU vCPU thread name (`CPU 3/KVM` -> 3).
pub fn vcpu_index_from_comm(comm: &str) -> Option<u32> {
    comm.strip_prefix("CPU ")?
        .strip_suffix("/KVM")?
        .parse()
        .ok()
}

impl ThreadState {
    fn new(tid: u32, ts_ns: u64) -> Self {
        Self {
            tid,
            tgid: 0,
            comm: Comm::default(),
            vcpu: None,
            is_vcpu: false,
            totals: ThreadTotals::default(),
            first_seen_ns: ts_ns,
            last_seen_ns: ts_ns,
            touched: 0,
            windows: LazyWindows::default(),
            signals: SlidingSum::default(),
            episode: None,
            last_episode: None,
            recent: VecDeque::new(),
            interrupted_streak: 0,
            streak_ip: None,
            last_trap_ns: None,
            last_ip: None,
            last_completed_ns: None,
            kicks: Kicks::default(),
            window_signal: None,
            ac: AcExitTracker::default(),
            livelock: None,
            livelock_ended_ns: None,
            recovery: None,
            killed: None,
            kvm_error: None,
            failed_entry_reason: None,
        }
    }

    /// Whether the thread gets a row: a vCPU thread, a thread that took a
    /// split-lock trap, or one that was killed for it. (Other threads are
    /// only signal targets.)
    pub fn has_row(&self) -> bool {
        self.is_vcpu || self.totals.traps > 0 || self.killed.is_some()
    }

    /// The last finished episodes, oldest first (at most [`RECENT_EPISODES`]).
    pub fn recent_episodes(&self) -> impl Iterator<Item = &EpisodeRecord> {
        self.recent.iter()
    }

    fn close_episode(&mut self, episode: SplitLockEpisode, end_ns: u64) {
        let interrupted = episode.interrupted();
        if self.recent.len() >= RECENT_EPISODES {
            self.recent.pop_front();
        }
        self.recent.push_back(EpisodeRecord {
            episode: episode.clone(),
            cut_by: self
                .window_signal
                .filter(|_| interrupted)
                .map(|key| self.kicks.describe(key)),
            kvm_run: None,
        });
        self.windows.get().episodes.add(end_ns, 1);
        self.windows
            .get()
            .punished_ns
            .add(end_ns, end_ns.saturating_sub(episode.start_ns));
        if interrupted {
            self.totals.interrupted_episodes += 1;
            self.attribute_cut();
            self.windows.get().interrupted.add(end_ns, 1);
            if self.streak_ip == Some(episode.ip) {
                self.interrupted_streak += 1;
            } else {
                self.streak_ip = Some(episode.ip);
                self.interrupted_streak = 1;
            }
            if self.interrupted_streak >= LIVELOCK_STREAK && self.livelock.is_none() {
                self.livelock = Some(LivelockState {
                    since_ns: end_ns,
                    confirmed: true,
                });
            }
        } else if episode.completed() {
            self.totals.completed_episodes += 1;
            self.interrupted_streak = 0;
            self.streak_ip = None;
            self.last_completed_ns = Some(end_ns);
            if self.livelock.take().is_some() {
                self.livelock_ended_ns = Some(end_ns);
                if let Some(recovery) = &mut self.recovery {
                    recovery.ended_ns.get_or_insert(end_ns);
                }
            }
        }
        self.last_episode = Some(episode);
    }

    fn apply(&mut self, event: &Event) {
        self.last_seen_ns = self.last_seen_ns.max(event.ts_ns);
        if event.in_subject_context() {
            self.tgid = event.tgid;
            if self.comm != event.comm {
                self.comm = event.comm;
                if let Some(index) = vcpu_index_from_comm(&event.comm.as_str()) {
                    self.vcpu = Some(index);
                    self.is_vcpu = true;
                }
            }
        }
        let ts = event.ts_ns;
        match &event.body {
            EventBody::SplitLockTrap {
                source: TrapSource::Warn,
                ip,
            } => {
                self.totals.warns += 1;
                if let Some(episode) = &mut self.episode {
                    episode.warned = true;
                } else {
                    // Warn without a seen handler entry (entry probe missing).
                    self.begin_episode(ts, *ip, TrapSource::Warn);
                }
            }
            EventBody::SplitLockTrap { source, ip } => {
                if let Some(previous) = self.episode.take() {
                    // Return lost (kretprobe missed): close what we have.
                    self.close_episode(previous, ts);
                }
                if *source == TrapSource::Guest {
                    self.is_vcpu = true;
                }
                self.begin_episode(ts, *ip, *source);
            }
            EventBody::SleepReturn { remaining_ms } => {
                if let Some(episode) = &mut self.episode {
                    let outcome = if *remaining_ms > 0 {
                        self.totals.sleeps_interrupted += 1;
                        StepOutcome::Interrupted
                    } else {
                        self.totals.sleeps_completed += 1;
                        StepOutcome::Completed
                    };
                    episode.sleep = Some((outcome, *remaining_ms));
                }
            }
            EventBody::SemaphoreReturn { retval } => {
                if let Some(episode) = &mut self.episode {
                    let outcome = if *retval == 0 {
                        StepOutcome::Completed
                    } else {
                        self.totals.semaphore_interrupted += 1;
                        StepOutcome::Interrupted
                    };
                    episode.semaphore = Some(outcome);
                }
            }
            EventBody::SplitLockReturn {
                handled,
                duration_ns,
                ..
            } => {
                if let Some(mut episode) = self.episode.take() {
                    episode.handled = Some(*handled);
                    episode.duration_ns = *duration_ns;
                    self.close_episode(episode, ts);
                }
                if !handled {
                    self.killed.get_or_insert_with(|| {
                        "split-lock handler returned false: SIGBUS (split_lock_detect=fatal)".into()
                    });
                }
            }
            EventBody::Signal { sig, code, .. } => {
                self.signals.add(ts, 1);
                if *code == SI_TIMER {
                    self.totals.timer_signals += 1;
                } else {
                    self.totals.other_signals += 1;
                }
                let key = self.kicks.record(event, *sig, *code);
                let window_open = self.episode.is_some() || self.ac.pending.is_some();
                if window_open && self.window_signal.is_none() {
                    self.window_signal = Some(key);
                }
                if *sig == SIGBUS && *code == BUS_ADRALN {
                    self.killed = Some(format!("SIGBUS (BUS_ADRALN) sent at {}", format_ts(ts)));
                }
            }
            EventBody::UserspaceExit { reason, errno } => {
                self.apply_userspace_exit(ts, *reason, *errno);
            }
            EventBody::VmExit {
                exit_reason,
                guest_rip,
                vcpu_id,
                intr_info,
                isa,
                ..
            } => {
                self.is_vcpu = true;
                self.vcpu.get_or_insert(*vcpu_id);
                if *exit_reason & vmx::EXIT_REASON_FAILED_VMENTRY != 0 {
                    self.failed_entry_reason = Some(*exit_reason);
                } else if *isa == vmx::ISA_VMX
                    && *intr_info & vmx::INTR_INFO_MATCH_MASK == vmx::INTR_INFO_AC
                {
                    self.apply_ac_exit(ts, *guest_rip);
                }
            }
        }
    }

    /// No trap for [`QUIET_HOLD_NS`] before `now_ns`: a livelock has ended.
    fn quiet_at(&self, now_ns: u64) -> bool {
        self.last_trap_ns
            .is_none_or(|last| now_ns.saturating_sub(last) > QUIET_HOLD_NS)
    }

    /// The livelock in force at `now_ns`: none after a quiet spell, and no
    /// inferred one on a host that does not punish (a short #AC-to-EINTR
    /// gap proves nothing there).
    fn effective_livelock(&self, now_ns: u64, misery_possible: bool) -> Option<LivelockState> {
        self.livelock
            .filter(|_| !self.quiet_at(now_ns))
            .filter(|state| misery_possible || state.confirmed)
    }

    /// The recovery shown at `now_ns`: (change, seconds it took at most),
    /// while within [`RECOVERY_HOLD_NS`] of its end. A livelock ends on a
    /// completed punishment or when the thread stops trapping.
    fn recovered_at(&self, now_ns: u64, misery_possible: bool) -> Option<(&str, u64)> {
        let recovery = self.recovery.as_ref()?;
        let ended = recovery.ended_ns.or_else(|| {
            (self.effective_livelock(now_ns, misery_possible).is_none() && self.quiet_at(now_ns))
                .then(|| self.last_trap_ns.unwrap_or(recovery.since_ns))
        })?;
        let ended = ended.max(recovery.since_ns);
        (now_ns.saturating_sub(ended) <= RECOVERY_HOLD_NS)
            .then(|| (recovery.change.as_str(), ended - recovery.since_ns))
    }

    /// A mitigation changed (seen at `ts_ns`, after a reading at
    /// `since_ns`): a thread livelocked then, or whose livelock ended since
    /// that reading, is watched for its recovery.
    fn mitigation_changed(&mut self, since_ns: u64, ts_ns: u64, change: &str) {
        let livelocked = self.livelock.is_some() && !self.quiet_at(ts_ns);
        let ended_since = self.livelock_ended_ns.filter(|ended| *ended > since_ns);
        if livelocked || ended_since.is_some() {
            self.recovery = Some(Recovery {
                since_ns,
                change: change.to_owned(),
                ended_ns: if livelocked { None } else { ended_since },
            });
        }
    }

    /// A trap after a quiet spell starts afresh: the old livelock is over.
    fn trap_seen(&mut self, ts: u64) {
        if self.quiet_at(ts) {
            self.livelock = None;
        }
    }

    /// The open window's signal cut a punishment short: count it for that
    /// kick, or as cut without a signal.
    fn attribute_cut(&mut self) {
        match self.window_signal.take() {
            Some(key) => {
                self.kicks.cut(key);
            }
            None => self.totals.cut_without_signal += 1,
        }
    }

    fn begin_episode(&mut self, ts: u64, ip: u64, source: TrapSource) {
        self.trap_seen(ts);
        self.window_signal = None;
        self.totals.traps += 1;
        self.windows.get().traps.add(ts, 1);
        self.last_trap_ns = Some(ts);
        self.last_ip = Some(ip);
        self.episode = Some(SplitLockEpisode {
            start_ns: ts,
            ip,
            source,
            warned: source == TrapSource::Warn,
            sleep: None,
            semaphore: None,
            handled: None,
            duration_ns: 0,
        });
    }

    fn apply_ac_exit(&mut self, ts: u64, rip: u64) {
        self.trap_seen(ts);
        if self.totals.traps == 0 {
            self.window_signal = None;
        }
        self.totals.ac_vm_exits += 1;
        self.windows.get().ac_exits.add(ts, 1);
        self.last_ip = Some(rip);
        self.last_trap_ns = Some(self.last_trap_ns.map_or(ts, |last| last.max(ts)));
        if let Some((previous_ts, _)) = self.ac.pending.take() {
            // Two #AC exits without a KVM_RUN return in between: the handler
            // returned into the guest, i.e. the punishment was not cut short.
            self.ac.streak = 0;
            self.ac.last_completed_ns = Some(ts);
            if self.totals.traps == 0 {
                // No kprobe episodes: count the punishment's minimum length.
                self.windows
                    .get()
                    .punished_ns
                    .add(ts, ts.saturating_sub(previous_ts).min(PUNISHMENT_MIN_NS));
            }
            if self.livelock.is_some_and(|state| !state.confirmed) {
                self.livelock = None;
            }
        }
        self.ac.pending = Some((ts, rip));
    }

    /// Traps in the window: handler entries when the kprobes see them,
    /// otherwise #AC VM exits (tracepoint-only).
    fn traps_in_window(&self, now_ns: u64) -> u64 {
        if self.totals.traps > 0 {
            self.windows.sum(now_ns, |w| &w.traps)
        } else {
            self.windows.sum(now_ns, |w| &w.ac_exits)
        }
    }

    fn apply_userspace_exit(&mut self, ts: u64, reason: u32, errno: i32) {
        self.is_vcpu = true;
        if let Some(last) = self.recent.back_mut()
            && last.kvm_run.is_none()
        {
            last.kvm_run = Some((ts, errno));
        }
        self.totals.userspace_exits += 1;
        if let Some((ac_ts, rip)) = self.ac.pending.take() {
            // Inference is for threads the kprobes do not see; with kprobes
            // the episodes themselves say whether the sleep was cut short.
            let cut_short = self.totals.traps == 0
                && errno == KVM_RUN_EINTR
                && ts.saturating_sub(ac_ts) < PUNISHMENT_MIN_NS;
            if self.totals.traps == 0 {
                self.windows
                    .get()
                    .punished_ns
                    .add(ts, ts.saturating_sub(ac_ts));
            }
            if cut_short {
                self.attribute_cut();
                if self.ac.rip == rip && self.ac.streak > 0 {
                    self.ac.streak += 1;
                } else {
                    self.ac.rip = rip;
                    self.ac.streak = 1;
                }
                if self.ac.streak >= LIVELOCK_STREAK && self.livelock.is_none() {
                    self.livelock = Some(LivelockState {
                        since_ns: ts,
                        confirmed: false,
                    });
                }
            } else {
                self.ac.streak = 0;
                self.ac.last_completed_ns = Some(ts);
                if self.livelock.is_some_and(|state| !state.confirmed) {
                    self.livelock = None;
                }
            }
        } else {
            // A KVM_RUN without an #AC exit: the guest ran (or never
            // entered), so the cut-short #AC exits around it are not
            // consecutive. On a host that does not punish
            // (split_lock_mitigate=0) detection stays off for two jiffies
            // after each trap and a fast timer ends the runs in between:
            // without this reset those would look like a livelock.
            self.ac.streak = 0;
        }
        if errno == KVM_RUN_EINTR {
            self.totals.eintr_exits += 1;
            self.windows.get().eintr.add(ts, 1);
        } else if kvm_exit_reason::is_error(reason, errno) {
            self.totals.error_exits += 1;
            let detail = match (reason, self.failed_entry_reason) {
                (kvm_exit_reason::FAIL_ENTRY, Some(hw)) => {
                    format!("{} (hardware error 0x{hw:x})", kvm_exit_reason_name(reason))
                }
                _ => kvm_exit_reason_name(reason).to_owned(),
            };
            self.kvm_error = Some(format!("{detail} at {}", format_ts(ts)));
        } else if errno == 0 && reason == kvm_exit_reason::EXCEPTION && self.killed.is_some() {
            self.totals.error_exits += 1;
        }
    }
}

/// The whole model: threads by tid, plus process identities.
#[derive(Debug, Default)]
pub struct Model {
    /// Boxed: the map's table has room for more threads than it holds
    /// (16,384 slots for 10,000), and an empty slot of a 776-byte state
    /// costs as much as a full one (5 MiB at 10,000 threads, measured with
    /// heaptrack in `cargo xtask bench`'s memory run).
    threads: HashMap<u32, Box<ThreadState>>,
    processes: BTreeMap<u32, ProcessInfo>,
    events: u64,
    latest_ns: u64,
    /// Whether the host can punish with the interruptible sleep
    /// ([`punish::misery_possible`]; `None` = unknown, treated as possible).
    misery: Option<bool>,
    /// The host's kernel release, which decides `misery` where the sysctl
    /// is absent.
    kernel_release: Option<String>,
    /// The verdict last reported per thread, for [`Model::verdict_changes`]
    /// and [`Model::verdict_change_of`].
    reported: HashMap<u32, (Verdict, bool)>,
    /// Eviction order: (tid, sequence number) per applied event, oldest
    /// first. An entry is current when it carries its thread's `touched`;
    /// older entries are skipped when met and dropped in bulk when the
    /// queue grows past [`QUEUE_SLACK`] times the threads.
    recency: VecDeque<(u32, u64)>,
    /// Sequence number of the latest event.
    sequence: u64,
    /// Threads dropped because [`MAX_THREADS`] were tracked.
    evicted: u64,
}

/// The eviction queue is compacted when it holds this many entries per
/// tracked thread (amortised O(1) per event, at most
/// `QUEUE_SLACK * MAX_THREADS` entries of 16 bytes: 1 MiB).
const QUEUE_SLACK: usize = 4;

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of events applied.
    pub fn events_applied(&self) -> u64 {
        self.events
    }

    /// Timestamp of the newest event applied.
    pub fn latest_ns(&self) -> u64 {
        self.latest_ns
    }

    /// Number of threads tracked.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// A watched setting changed. For `kernel.split_lock_mitigate` the
    /// classifier judges from now on by the new value (as
    /// [`Model::set_host`]), and the threads livelocked when it happened
    /// are watched for their recovery; other settings (the microcode
    /// revision, the kprobes switch) do not change a verdict.
    pub fn mitigation_changed(&mut self, change: &tracer_events::MitigationChange) {
        if change.setting != tracer_events::SPLIT_LOCK_MITIGATE {
            return;
        }
        let text = change.describe();
        for thread in self.threads.values_mut() {
            thread.mitigation_changed(change.since_ns, change.ts_ns, &text);
        }
        self.misery = punish::misery_possible(change.to, self.kernel_release.as_deref());
    }

    /// The host the events come from: its kernel release and
    /// `kernel.split_lock_mitigate` (`None`: absent or unreadable) decide
    /// whether it punishes split locks with the interruptible sleep.
    pub fn set_host(&mut self, kernel_release: Option<&str>, split_lock_mitigate: Option<u32>) {
        self.kernel_release = kernel_release.map(str::to_owned);
        self.misery = punish::misery_possible(split_lock_mitigate, kernel_release);
    }

    /// Sets what is known about a process.
    pub fn set_process_info(&mut self, pid: u32, info: ProcessInfo) {
        self.processes.insert(pid, info);
    }

    /// Known process identities.
    pub fn processes(&self) -> &BTreeMap<u32, ProcessInfo> {
        &self.processes
    }

    /// Pids of threads whose process has no identity yet.
    pub fn unnamed_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .threads
            .values()
            .map(|thread| thread.tgid)
            .filter(|pid| *pid != 0 && !self.processes.contains_key(pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &Event) {
        self.events += 1;
        self.latest_ns = self.latest_ns.max(event.ts_ns);
        let tid = event.subject_tid();
        let reused = event.in_subject_context()
            && self
                .threads
                .get(&tid)
                .is_some_and(|thread| thread.tgid != 0 && thread.tgid != event.tgid);
        if reused {
            // Same tid, another process: a new thread, not its predecessor.
            self.threads.remove(&tid);
        }
        if !self.threads.contains_key(&tid) && self.threads.len() >= MAX_THREADS {
            self.evict_least_recent();
        }
        self.sequence += 1;
        let thread = self
            .threads
            .entry(tid)
            .or_insert_with(|| Box::new(ThreadState::new(tid, event.ts_ns)));
        thread.touched = self.sequence;
        thread.apply(event);
        self.recency.push_back((tid, self.sequence));
        if self.recency.len() > QUEUE_SLACK * self.threads.len().max(1024) {
            let threads = &self.threads;
            self.recency
                .retain(|(tid, seen)| threads.get(tid).is_some_and(|t| t.touched == *seen));
        }
    }

    /// Drops the thread whose latest event is the oldest (in the order
    /// events arrived): amortised O(1), each queue entry is looked at once.
    fn evict_least_recent(&mut self) {
        while let Some((tid, seen)) = self.recency.pop_front() {
            if self
                .threads
                .get(&tid)
                .is_some_and(|thread| thread.touched == seen)
            {
                self.threads.remove(&tid);
                self.evicted += 1;
                return;
            }
        }
    }

    /// Threads dropped so far because [`MAX_THREADS`] were tracked.
    pub fn threads_evicted(&self) -> u64 {
        self.evicted
    }

    /// Drops threads silent for [`THREAD_EXPIRY_NS`] and those `is_gone` reports dead.
    pub fn expire(&mut self, now_ns: u64, is_gone: impl Fn(u32) -> bool) {
        self.threads.retain(|tid, thread| {
            now_ns.saturating_sub(thread.last_seen_ns) <= THREAD_EXPIRY_NS
                && !(now_ns.saturating_sub(thread.last_seen_ns) > WINDOW_NS && is_gone(*tid))
        });
        let live: std::collections::BTreeSet<u32> = self.threads.values().map(|t| t.tgid).collect();
        self.processes.retain(|pid, _| live.contains(pid));
    }

    /// A thread's verdict at `now_ns` without evidence (cheap enough to
    /// ask after every event).
    pub fn verdict_of(&self, tid: u32, now_ns: u64) -> Option<(Verdict, bool)> {
        let misery_possible = self.misery != Some(false);
        self.threads
            .get(&tid)
            .map(|thread| thread.verdict(now_ns, misery_possible))
    }

    /// A thread's verdict with its evidence at `now_ns`.
    pub fn classify_thread(&self, tid: u32, now_ns: u64) -> Option<(Verdict, bool, Vec<String>)> {
        let misery_possible = self.misery != Some(false);
        self.threads
            .get(&tid)
            .map(|thread| thread.classify(now_ns, misery_possible))
    }

    /// Records that `tid`'s verdict is `now` at `ts_ns`; returns the change
    /// when it differs from the one last reported.
    fn report_verdict(
        &mut self,
        ts_ns: u64,
        tid: u32,
        now: (Verdict, bool),
        reason: impl FnOnce(&mut Self) -> Option<String>,
    ) -> Option<VerdictChange> {
        let before = self.reported.insert(tid, now);
        if before == Some(now) {
            return None;
        }
        let reason = reason(self);
        let thread = self.threads.get(&tid);
        Some(VerdictChange {
            ts_ns,
            tid,
            pid: thread.map_or(0, |thread| thread.tgid),
            vcpu: thread.and_then(|thread| thread.vcpu),
            from: before.map(|(verdict, _)| verdict),
            from_confirmed: before.is_none_or(|(_, confirmed)| confirmed),
            to: now.0,
            confirmed: now.1,
            reason,
        })
    }

    /// The verdict changes of every thread in `rows` (built at `now_ns`)
    /// since they were last reported; threads without a row are forgotten.
    /// The one place verdict changes are tracked: live, serve and report
    /// all ask it.
    pub fn verdict_changes(&mut self, now_ns: u64, rows: &[ThreadRow]) -> Vec<VerdictChange> {
        let changes = rows
            .iter()
            .filter_map(|row| {
                self.report_verdict(now_ns, row.tid, (row.verdict, row.confirmed), |_| {
                    row.evidence.first().cloned()
                })
            })
            .collect();
        if self.reported.len() > rows.len() {
            let kept: std::collections::HashSet<u32> = rows.iter().map(|row| row.tid).collect();
            self.reported.retain(|tid, _| kept.contains(tid));
        }
        changes
    }

    /// The verdict change of one thread at `now_ns` (after one of its
    /// events), if its verdict differs from the one last reported.
    pub fn verdict_change_of(&mut self, tid: u32, now_ns: u64) -> Option<VerdictChange> {
        if !self
            .threads
            .get(&tid)
            .is_some_and(|thread| thread.has_row())
        {
            return None;
        }
        let now = self.verdict_of(tid, now_ns)?;
        if self.reported.get(&tid) == Some(&now) {
            return None;
        }
        self.report_verdict(now_ns, tid, now, |model| {
            model
                .classify_thread(tid, now_ns)
                .and_then(|(_, _, evidence)| evidence.into_iter().next())
        })
    }

    /// A thread's state.
    pub fn thread(&self, tid: u32) -> Option<&ThreadState> {
        self.threads.get(&tid).map(|thread| &**thread)
    }
}

#[cfg(test)]
mod tests;
