//! The signals that reach a thread, kept per signal, kind and sender: their
//! count, rate and period, and how many punishments each cut short.

use tracer_events::{Comm, Event, KickRow, SignalKind, event::signal_name};

use super::rate::{IntervalTracker, SlidingSum};

/// Distinct kicks kept per thread; a thread that receives more kinds keeps
/// the most frequent (QEMU vCPU threads see one or two).
pub const MAX_KICKS: usize = 4;

/// What identifies a kick: signal, kind and, where the kind has one, the
/// sending thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KickKey {
    /// Signal number.
    pub sig: i32,
    /// How it was sent.
    pub kind: SignalKind,
    /// Sending thread (0 for timers and the kernel).
    pub sender_tid: u32,
}

impl KickKey {
    /// The key of a signal event (`code` its si_code).
    pub fn of(event: &Event, sig: i32, code: i32) -> Self {
        let kind = SignalKind::from_code(code);
        Self {
            sig,
            kind,
            sender_tid: if kind.current_task_sends() {
                event.tid
            } else {
                0
            },
        }
    }
}

/// One kick's history.
#[derive(Clone, Debug)]
struct KickState {
    key: KickKey,
    sender_tgid: u32,
    sender_comm: Comm,
    count: u64,
    window: SlidingSum,
    intervals: IntervalTracker,
    cut: u64,
}

/// The kicks of one thread, bounded by [`MAX_KICKS`].
#[derive(Clone, Debug, Default)]
pub struct Kicks(Vec<KickState>);

impl Kicks {
    /// Records one signal event (`sig`, `code`) for the thread.
    pub fn record(&mut self, event: &Event, sig: i32, code: i32) -> KickKey {
        let key = KickKey::of(event, sig, code);
        let index = if let Some(index) = self.0.iter().position(|kick| kick.key == key) {
            index
        } else {
            if self.0.len() >= MAX_KICKS
                && let Some(rarest) = (0..self.0.len()).min_by_key(|&i| self.0[i].count)
            {
                self.0.swap_remove(rarest);
            }
            // One kick at a time: most threads only ever get one kind, and
            // Vec's first growth would make room for four (about 1.1 KiB
            // more per thread, 11 MiB at 10,000 vCPU threads, measured
            // with heaptrack in `cargo xtask bench`'s memory run).
            self.0.reserve_exact(1);
            self.0.push(KickState {
                key,
                sender_tgid: event.tgid,
                sender_comm: event.comm,
                count: 0,
                window: SlidingSum::default(),
                intervals: IntervalTracker::default(),
                cut: 0,
            });
            self.0.len() - 1
        };
        let kick = &mut self.0[index];
        kick.count += 1;
        kick.window.add(event.ts_ns, 1);
        kick.intervals.record(event.ts_ns);
        key
    }

    /// Counts one punishment (or #AC exit) that `key` cut short; `false`
    /// when that kick is no longer kept.
    pub fn cut(&mut self, key: KickKey) -> bool {
        match self.0.iter_mut().find(|kick| kick.key == key) {
            Some(kick) => {
                kick.cut += 1;
                true
            }
            None => false,
        }
    }

    /// The kick that cut the most punishments short, if any did.
    pub fn main_cutter(&self) -> Option<KickRow> {
        self.0
            .iter()
            .filter(|kick| kick.cut > 0)
            .max_by_key(|kick| kick.cut)
            .map(|kick| row(kick, None))
    }

    /// Period of the most frequent kick in the window, ms.
    pub fn main_period_ms(&self, now_ns: u64) -> Option<f64> {
        self.0
            .iter()
            .filter(|kick| kick.window.sum_at(now_ns) > 0)
            .max_by_key(|kick| kick.window.sum_at(now_ns))
            .and_then(|kick| kick.intervals.typical_ms())
    }

    /// Typical period of one kind of kick seen in the window, ms.
    pub fn period_of_kind_ms(&self, kind: SignalKind, now_ns: u64) -> Option<f64> {
        self.0
            .iter()
            .filter(|kick| kick.key.kind == kind && kick.window.sum_at(now_ns) > 0)
            .max_by_key(|kick| kick.count)
            .and_then(|kick| kick.intervals.typical_ms())
    }

    /// `SIGUSR1 timer` or `SIGUSR1 tkill from qemu (pid 1234, main
    /// thread)`: what the detail pane says cut an episode short.
    pub fn describe(&self, key: KickKey) -> String {
        let sender = self
            .0
            .iter()
            .find(|kick| kick.key == key)
            .and_then(sender_label)
            .map(|sender| format!(" from {sender}"))
            .unwrap_or_default();
        format!(
            "{} {}{sender}",
            signal_name(key.sig),
            key.kind.short_label()
        )
    }

    /// Rows for display, most frequent first.
    pub fn rows(&self, now_ns: u64) -> Vec<KickRow> {
        let mut rows: Vec<KickRow> = self.0.iter().map(|kick| row(kick, Some(now_ns))).collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.sig.cmp(&b.sig)));
        rows
    }
}

/// `qemu-system-x86 (pid 1234, main thread)` or `worker (tid 1240 of pid 1234)`.
fn sender_label(kick: &KickState) -> Option<String> {
    if kick.key.sender_tid == 0 {
        return None;
    }
    Some(if kick.key.sender_tid == kick.sender_tgid {
        format!(
            "{} (pid {}, main thread)",
            kick.sender_comm, kick.sender_tgid
        )
    } else {
        format!(
            "{} (tid {} of pid {})",
            kick.sender_comm, kick.key.sender_tid, kick.sender_tgid
        )
    })
}

fn row(kick: &KickState, now_ns: Option<u64>) -> KickRow {
    KickRow {
        sig: kick.key.sig,
        signal: signal_name(kick.key.sig),
        kind: kick.key.kind,
        sender: sender_label(kick),
        count: kick.count,
        per_s: now_ns.map_or(0.0, |now| kick.window.per_second_at(now)),
        period_ms: kick.intervals.typical_ms(),
        cut: kick.cut,
    }
}
