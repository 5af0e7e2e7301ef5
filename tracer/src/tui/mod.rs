//! The full-screen live view: what it shows ([`Screen`], one per interval
//! tick), what the operator did to it ([`ViewState`]: selection, filter,
//! sort, grouping, detail pane) and the keys that change it. Drawing is
//! [`render::draw`], a pure function of the two, so it is snapshot-tested
//! with ratatui's test backend; the terminal side is
//! [`crate::sinks::tui`].

pub mod render;

use std::collections::{BTreeMap, HashMap, VecDeque};

use tracer_events::{ProcessInfo, ThreadRow, Verdict};

use crate::{live::ViewStatus, model::EpisodeRecord};

/// How far back the sparklines of the detail pane go.
pub const HISTORY_NS: u64 = 60_000_000_000;

/// Host facts the header shows, read once at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostHeader {
    /// Hostname.
    pub hostname: String,
    /// Kernel release.
    pub kernel: String,
    /// `split_lock_detect=` boot mode (`warn (default)`, `off`, ...).
    pub split_lock_detect: String,
}

/// Per-thread rates sampled at every tick, for the sparklines.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: HashMap<u32, VecDeque<(u64, f64, f64)>>,
    /// The time of the latest tick recorded.
    latest_ns: u64,
}

impl History {
    /// Adds every row's traps/s and EINTR/s at `now_ns`; forgets samples
    /// older than [`HISTORY_NS`] and threads without a row.
    pub fn record(&mut self, now_ns: u64, rows: &[ThreadRow]) {
        self.latest_ns = self.latest_ns.max(now_ns);
        let tids: std::collections::HashSet<u32> = rows.iter().map(|row| row.tid).collect();
        self.samples.retain(|tid, _| tids.contains(tid));
        for row in rows {
            let samples = self.samples.entry(row.tid).or_default();
            samples.push_back((now_ns, row.traps_per_s, row.eintr_per_s));
            while samples
                .front()
                .is_some_and(|(ts, _, _)| now_ns.saturating_sub(*ts) > HISTORY_NS)
            {
                samples.pop_front();
            }
        }
    }

    /// The traps/s and EINTR/s of `tid` over the last [`HISTORY_NS`] up to
    /// the latest tick, in `buckets` equal slices of time, oldest first:
    /// each slice holds the peak of the samples in it, and a slice without
    /// a sample the value of the slice before it (a rate holds until the
    /// next tick), so the line spans a minute whatever the refresh
    /// interval. Slices before the thread's first sample are 0.
    pub fn series(&self, tid: u32, buckets: usize) -> (Vec<f64>, Vec<f64>) {
        if buckets == 0 {
            return (Vec::new(), Vec::new());
        }
        let Some(samples) = self.samples.get(&tid) else {
            return (vec![0.0; buckets], vec![0.0; buckets]);
        };
        let buckets_u64 = buckets.max(1) as u64;
        let start = self.latest_ns.saturating_sub(HISTORY_NS);
        let slice_ns = (HISTORY_NS / buckets_u64).max(1);
        let mut traps = vec![None; buckets];
        let mut eintr = vec![None; buckets];
        for &(ts, trap_rate, eintr_rate) in samples {
            // The latest sample belongs to the last slice.
            let index = (ts.saturating_sub(start) / slice_ns).min(buckets_u64 - 1) as usize;
            let peak = |slot: &mut Option<f64>, value: f64| {
                *slot = Some(slot.map_or(value, |old: f64| old.max(value)));
            };
            peak(&mut traps[index], trap_rate);
            peak(&mut eintr[index], eintr_rate);
        }
        let carry = |slices: Vec<Option<f64>>| {
            let mut last = 0.0;
            slices
                .into_iter()
                .map(|slot| {
                    if let Some(value) = slot {
                        last = value;
                    }
                    last
                })
                .collect()
        };
        (carry(traps), carry(eintr))
    }
}

/// Everything one interval tick gives the view.
#[derive(Clone, Debug, Default)]
pub struct Screen {
    /// Host facts.
    pub host: HostHeader,
    /// Header values.
    pub status: ViewStatus,
    /// Every thread with activity, stuck first.
    pub rows: Vec<ThreadRow>,
    /// Process identities (VM names, VMIDs).
    pub processes: BTreeMap<u32, ProcessInfo>,
    /// QEMU `-cpu` model per VM pid, when known.
    pub cpu_models: BTreeMap<u32, String>,
    /// The last finished episodes of each row's thread.
    pub episodes: HashMap<u32, Vec<EpisodeRecord>>,
    /// Rates over the last minute.
    pub history: History,
    /// CLOCK_MONOTONIC of the tick.
    pub now_ns: u64,
}

/// A group of rows: one VM (by VMM pid) or the host's own processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    /// A VM, by its VMM's pid.
    Vm(u32),
    /// Host processes that split-lock.
    Host,
}

/// What a line of the table stands for (kept across ticks for the selection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LineKey {
    /// A group line.
    Group(GroupKey),
    /// A thread line.
    Thread(u32),
}

/// A group line's aggregates.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSummary {
    /// Which group.
    pub key: GroupKey,
    /// `100 (haos)`, or `host processes`.
    pub label: String,
    /// Threads in the group (vCPU threads for a VM).
    pub threads: usize,
    /// The worst verdict of its threads.
    pub worst: Verdict,
    /// Summed split-lock traps/s.
    pub traps_per_s: f64,
    /// Summed interrupted punishments/s.
    pub interrupted_per_s: f64,
    /// Summed EINTR returns/s.
    pub eintr_per_s: f64,
    /// Whether its thread lines are shown.
    pub expanded: bool,
}

/// One line of the table.
#[derive(Clone, Debug)]
pub enum Line<'a> {
    /// A group.
    Group(GroupSummary),
    /// A thread, indented under its group when grouped.
    Thread(&'a ThreadRow, bool),
}

impl Line<'_> {
    /// The line's identity.
    pub fn key(&self) -> LineKey {
        match self {
            Line::Group(group) => LineKey::Group(group.key),
            Line::Thread(row, _) => LineKey::Thread(row.tid),
        }
    }
}

/// The column the table is sorted by (`s` cycles, `S` reverses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortColumn {
    /// Stuck first, then by activity (traps/s + EINTR/s).
    #[default]
    Verdict,
    /// VM name, then vCPU.
    Name,
    /// Thread id (a group by its pid).
    Tid,
    /// Split-lock traps/s.
    Traps,
    /// Interrupted punishments/s.
    Interrupted,
    /// EINTR returns/s.
    Eintr,
}

impl SortColumn {
    fn next(self) -> Self {
        match self {
            Self::Verdict => Self::Name,
            Self::Name => Self::Tid,
            Self::Tid => Self::Traps,
            Self::Traps => Self::Interrupted,
            Self::Interrupted => Self::Eintr,
            Self::Eintr => Self::Verdict,
        }
    }

    /// The column title the sort marker goes on.
    pub fn title(self) -> &'static str {
        match self {
            Self::Verdict => "VERDICT",
            Self::Name => "NAME",
            Self::Tid => "TID",
            Self::Traps => "TRAPS/s",
            Self::Interrupted => "INTR/s",
            Self::Eintr => "EINTR/s",
        }
    }
}

/// A key press, as the view understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Arrow left (collapse).
    Left,
    /// Arrow right (expand).
    Right,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// Home.
    Home,
    /// End.
    End,
    /// Enter.
    Enter,
    /// Escape.
    Escape,
    /// Backspace.
    Backspace,
    /// Ctrl-C.
    Interrupt,
    /// A printable character.
    Char(char),
}

/// What a key asks of the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Redraw.
    Redraw,
    /// Quit the live view.
    Quit,
}

/// What the operator did to the view.
#[derive(Clone, Debug, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent toggles, one per key (S, p, g, ?, /)"
)]
pub struct ViewState {
    /// The selected line.
    pub selected: Option<LineKey>,
    /// First table line on screen.
    pub offset: usize,
    /// The filter text (`/`).
    pub filter: String,
    /// Typing a filter.
    pub editing_filter: bool,
    /// Sort column.
    pub sort: SortColumn,
    /// Reverse the sort (`S`).
    pub reversed: bool,
    /// Refresh paused (`p`).
    pub paused: bool,
    /// Flat list instead of groups (`g`).
    pub ungrouped: bool,
    /// The help overlay (`?`).
    pub help: bool,
    /// The thread whose detail pane is open.
    pub detail: Option<u32>,
    /// First line of the detail pane on screen.
    pub detail_scroll: u16,
    /// Groups expanded or collapsed by hand (others: expanded when stuck).
    pub expanded: HashMap<GroupKey, bool>,
    /// Table lines that fit on screen at the last draw (for PgUp/PgDn).
    pub page: usize,
}

/// Whether a verdict means the thread is not progressing.
pub fn is_stuck(verdict: Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Livelock | Verdict::Killed | Verdict::KvmError
    )
}

/// Interrupted punishments/s of a row.
pub fn interrupted_per_s(row: &ThreadRow) -> f64 {
    row.interrupted_pct
        .map_or(0.0, |pct| row.traps_per_s * pct / 100.0)
}

fn activity(row: &ThreadRow) -> f64 {
    row.traps_per_s + row.eintr_per_s
}

/// The group a row belongs to: its VM, or the host processes.
pub fn group_of(row: &ThreadRow, processes: &BTreeMap<u32, ProcessInfo>) -> GroupKey {
    let named_vm = processes
        .get(&row.pid)
        .is_some_and(|info| info.vmid.is_some() || info.name.is_some());
    if row.vcpu.is_some() || named_vm {
        GroupKey::Vm(row.pid)
    } else {
        GroupKey::Host
    }
}

/// The VM label of a process: `100 (haos)`, or its comm.
pub fn vm_label(pid: u32, processes: &BTreeMap<u32, ProcessInfo>) -> String {
    processes
        .get(&pid)
        .and_then(ProcessInfo::label)
        .map_or_else(
            || format!("pid {pid}"),
            |label| format!("{label} pid {pid}"),
        )
}

impl ViewState {
    fn matches(&self, row: &ThreadRow, screen: &Screen) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        let wanted = self.filter.to_lowercase();
        let info = screen.processes.get(&row.pid);
        let texts = [
            info.and_then(|info| info.name.clone()),
            info.and_then(|info| info.vmid.clone()),
            row.vm.clone(),
            Some(row.comm.clone()),
            Some(row.pid.to_string()),
            Some(row.tid.to_string()),
            Some(row.verdict_label()),
        ];
        texts
            .iter()
            .flatten()
            .any(|text| text.to_lowercase().contains(&wanted))
    }

    fn compare_rows(&self, a: &ThreadRow, b: &ThreadRow) -> std::cmp::Ordering {
        let by_activity = || activity(b).total_cmp(&activity(a));
        let order = match self.sort {
            SortColumn::Verdict => a.verdict.cmp(&b.verdict).then_with(by_activity),
            SortColumn::Name => (a.vm.as_deref(), a.vcpu, a.comm.as_str()).cmp(&(
                b.vm.as_deref(),
                b.vcpu,
                b.comm.as_str(),
            )),
            SortColumn::Tid => a.tid.cmp(&b.tid),
            SortColumn::Traps => b.traps_per_s.total_cmp(&a.traps_per_s),
            SortColumn::Interrupted => interrupted_per_s(b).total_cmp(&interrupted_per_s(a)),
            SortColumn::Eintr => b.eintr_per_s.total_cmp(&a.eintr_per_s),
        }
        .then(a.tid.cmp(&b.tid));
        if self.reversed {
            order.reverse()
        } else {
            order
        }
    }

    fn compare_groups(&self, a: &GroupSummary, b: &GroupSummary) -> std::cmp::Ordering {
        let activity = |group: &GroupSummary| group.traps_per_s + group.eintr_per_s;
        let order = match self.sort {
            SortColumn::Verdict => a
                .worst
                .cmp(&b.worst)
                .then_with(|| activity(b).total_cmp(&activity(a))),
            SortColumn::Name => a.label.cmp(&b.label),
            SortColumn::Tid => a.key.cmp(&b.key),
            SortColumn::Traps => b.traps_per_s.total_cmp(&a.traps_per_s),
            SortColumn::Interrupted => b.interrupted_per_s.total_cmp(&a.interrupted_per_s),
            SortColumn::Eintr => b.eintr_per_s.total_cmp(&a.eintr_per_s),
        }
        .then(a.key.cmp(&b.key));
        // The host processes stay after the VMs whatever the sort.
        let host_last = (a.key == GroupKey::Host).cmp(&(b.key == GroupKey::Host));
        host_last.then(if self.reversed {
            order.reverse()
        } else {
            order
        })
    }

    /// The table's lines, in order, for `screen`.
    pub fn lines<'a>(&self, screen: &'a Screen) -> Vec<Line<'a>> {
        let mut rows: Vec<&ThreadRow> = screen
            .rows
            .iter()
            .filter(|row| self.matches(row, screen))
            .collect();
        rows.sort_by(|a, b| self.compare_rows(a, b));
        if self.ungrouped {
            return rows
                .into_iter()
                .map(|row| Line::Thread(row, false))
                .collect();
        }
        let mut groups: BTreeMap<GroupKey, Vec<&ThreadRow>> = BTreeMap::new();
        for row in rows {
            groups
                .entry(group_of(row, &screen.processes))
                .or_default()
                .push(row);
        }
        let mut summaries: Vec<(GroupSummary, Vec<&ThreadRow>)> = groups
            .into_iter()
            .map(|(key, members)| {
                let worst = members
                    .iter()
                    .map(|row| row.verdict)
                    .min()
                    .unwrap_or(Verdict::Idle);
                let expanded = self.expanded.get(&key).copied().unwrap_or_else(|| {
                    !self.filter.is_empty() || is_stuck(worst) || key == GroupKey::Host
                });
                let summary = GroupSummary {
                    key,
                    label: match key {
                        GroupKey::Vm(pid) => vm_label(pid, &screen.processes),
                        GroupKey::Host => "host processes".into(),
                    },
                    threads: members.len(),
                    worst,
                    traps_per_s: members.iter().map(|row| row.traps_per_s).sum(),
                    interrupted_per_s: members.iter().map(|row| interrupted_per_s(row)).sum(),
                    eintr_per_s: members.iter().map(|row| row.eintr_per_s).sum(),
                    expanded,
                };
                (summary, members)
            })
            .collect();
        summaries.sort_by(|(a, _), (b, _)| self.compare_groups(a, b));
        let mut lines = Vec::new();
        for (summary, members) in summaries {
            let expanded = summary.expanded;
            lines.push(Line::Group(summary));
            if expanded {
                lines.extend(members.into_iter().map(|row| Line::Thread(row, true)));
            }
        }
        lines
    }

    /// Index of the selected line in `lines` (the first line when the
    /// selection is gone).
    pub fn selected_index(&self, lines: &[Line<'_>]) -> Option<usize> {
        if lines.is_empty() {
            return None;
        }
        Some(
            self.selected
                .and_then(|key| lines.iter().position(|line| line.key() == key))
                .unwrap_or(0),
        )
    }

    fn select(&mut self, lines: &[Line<'_>], index: usize) {
        if let Some(line) = lines.get(index.min(lines.len().saturating_sub(1))) {
            self.selected = Some(line.key());
        }
    }

    /// Applies a key; `screen` is what is on screen now.
    pub fn handle(&mut self, input: Input, screen: &Screen) -> Action {
        if input == Input::Interrupt {
            return Action::Quit;
        }
        if self.editing_filter {
            match input {
                Input::Enter => self.editing_filter = false,
                Input::Escape => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                Input::Backspace => {
                    self.filter.pop();
                }
                Input::Char(c) if !c.is_control() => self.filter.push(c),
                _ => {}
            }
            self.offset = 0;
            return Action::Redraw;
        }
        if self.help {
            if input == Input::Char('q') {
                return Action::Quit;
            }
            self.help = false;
            return Action::Redraw;
        }
        let lines = self.lines(screen);
        let current = self.selected_index(&lines).unwrap_or(0);
        let page = self.page.max(1);
        if self.detail.is_some() {
            match input {
                Input::Enter | Input::Escape | Input::Left => self.detail = None,
                Input::Up => self.detail_scroll = self.detail_scroll.saturating_sub(1),
                Input::Down => self.detail_scroll = self.detail_scroll.saturating_add(1),
                Input::PageUp => self.detail_scroll = self.detail_scroll.saturating_sub(10),
                Input::PageDown => self.detail_scroll = self.detail_scroll.saturating_add(10),
                Input::Home => self.detail_scroll = 0,
                Input::Char('q') => return Action::Quit,
                Input::Char('?') => self.help = true,
                Input::Char('p') => self.paused = !self.paused,
                _ => {}
            }
            return Action::Redraw;
        }
        match input {
            Input::Up => self.select(&lines, current.saturating_sub(1)),
            Input::Down => self.select(&lines, current + 1),
            Input::PageUp => self.select(&lines, current.saturating_sub(page)),
            Input::PageDown => self.select(&lines, current + page),
            Input::Home => self.select(&lines, 0),
            Input::End => self.select(&lines, lines.len().saturating_sub(1)),
            Input::Enter | Input::Right | Input::Left => match lines.get(current) {
                Some(Line::Group(group)) => {
                    let expand = match input {
                        Input::Right => true,
                        Input::Left => false,
                        _ => !group.expanded,
                    };
                    self.expanded.insert(group.key, expand);
                    self.selected = Some(LineKey::Group(group.key));
                }
                Some(Line::Thread(row, _)) if input == Input::Enter => {
                    self.detail = Some(row.tid);
                    self.detail_scroll = 0;
                    self.selected = Some(LineKey::Thread(row.tid));
                }
                Some(Line::Thread(row, true)) if input == Input::Left => {
                    let key = group_of(row, &screen.processes);
                    self.expanded.insert(key, false);
                    self.selected = Some(LineKey::Group(key));
                }
                _ => {}
            },
            Input::Escape => self.filter.clear(),
            Input::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            Input::Char('s') => self.sort = self.sort.next(),
            Input::Char('S') => self.reversed = !self.reversed,
            Input::Char('p') => self.paused = !self.paused,
            Input::Char('g') => self.ungrouped = !self.ungrouped,
            Input::Char('?') => self.help = true,
            Input::Char('q' | 'Q') => return Action::Quit,
            _ => {}
        }
        Action::Redraw
    }
}

#[cfg(test)]
mod tests;
