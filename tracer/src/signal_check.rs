//! The signal programs checked against the kernel's own count: one perf
//! counting event per CPU on `signal:signal_generate`, filtered to timer
//! signals, which the programs read at their first run on a CPU and on
//! every run for a tracked thread, and the reader whenever it looks (see
//! [`tracer_common::TimerSignalTally`]). What the kernel generated without
//! running the program, and without counting a recursion miss, is then
//! counted rather than silently missing.
//!
//! Measured on the development machine (`docs/performance.md`): timer
//! signals raised in a timer interrupt that landed while particular
//! processes ran reached neither this tracer's programs nor bpftrace's,
//! with no recursion miss, while ftrace and perf counted them.

use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Map, PerCpuArray},
};
use perf_event_open_sys::{bindings, ioctls, perf_event_open};
use tracer_common::{TimerSignalTally, map_names};
use tracer_events::{ProbeKind, ProbeReportEntry, ProbeStatus};

use crate::kernel::bpf::perf_event_array_set;

/// The event the counters count, as shown in the probe table.
pub const TARGET: &str = "signal:signal_generate";
/// The perf filter: timer signals only (`SI_TIMER`), the ones the tally
/// compares.
pub const FILTER: &str = "code == -2";
/// The program name shown in the probe table for the counters.
pub const PROGRAM: &str = "timer_signal_hits";
/// The loss detail under which skipped runs are reported.
pub const SKIPPED_DETAIL: &str = "signal_generate";

/// The per-CPU counters, kept open so the reader can compare them with the
/// programs' runs itself (the programs only compare when they run: a skip
/// after a CPU's last timer signal would otherwise stay unseen).
#[derive(Debug, Default)]
pub struct TimerSignalCounters {
    per_cpu: Vec<(u32, OwnedFd)>,
    /// Whether the perf count excludes the hit a program run is for: true
    /// for the perf-tracepoint program (it runs before perf counts the
    /// hit), false for the raw tracepoint (attached after the counters, so
    /// the kernel calls perf's probe first). The reader, which sees the
    /// count after every hit, corrects for it.
    count_excludes_current_run: bool,
}

/// Opens the per-CPU counters and hands them to the programs; call it
/// before the signal programs attach (see
/// [`TimerSignalCounters::set_signal_program`]). Never fails the session:
/// without them, skipped runs are just not counted, and the returned entry
/// says why.
pub fn open_counters(
    ebpf: &mut Ebpf,
    tracefs: Option<&Path>,
) -> (ProbeReportEntry, TimerSignalCounters) {
    let (status, counters) = match try_open(ebpf, tracefs) {
        Ok(per_cpu) => (
            ProbeStatus::Attached {
                target: format!("{TARGET} if {FILTER}, counting on {} CPUs", per_cpu.len()),
            },
            TimerSignalCounters {
                per_cpu,
                count_excludes_current_run: false,
            },
        ),
        Err(reason) => (
            ProbeStatus::Unavailable { reason },
            TimerSignalCounters::default(),
        ),
    };
    let entry = ProbeReportEntry {
        program: PROGRAM.to_owned(),
        kind: ProbeKind::PerfCounter,
        target: TARGET.to_owned(),
        role: "kernel's count of timer signals: runs the kernel skipped without a recursion miss"
            .to_owned(),
        status,
    };
    (entry, counters)
}

fn try_open(ebpf: &mut Ebpf, tracefs: Option<&Path>) -> Result<Vec<(u32, OwnedFd)>, String> {
    let tracefs = tracefs.ok_or("tracefs not mounted")?;
    let id = tracepoint_id(tracefs, "signal", "signal_generate")?;
    let cpus =
        aya::util::online_cpus().map_err(|(path, error)| format!("reading {path}: {error}"))?;
    let Some(Map::PerfEventArray(map)) = ebpf.map_mut(map_names::TIMER_SIGNAL_HITS) else {
        return Err(format!(
            "map {} missing from the eBPF object",
            map_names::TIMER_SIGNAL_HITS
        ));
    };
    let mut per_cpu = Vec::with_capacity(cpus.len());
    for &cpu in &cpus {
        let counter = open_counter(id, cpu, Some(FILTER))?;
        perf_event_array_set(map.fd().as_fd(), cpu, counter.as_fd())
            .map_err(|error| format!("storing the CPU {cpu} counter in the map: {error}"))?;
        per_cpu.push((cpu, counter));
    }
    Ok(per_cpu)
}

/// The perf id of tracepoint `category:name` (tracefs `events/.../id`).
pub fn tracepoint_id(tracefs: &Path, category: &str, name: &str) -> Result<u64, String> {
    let id_path = tracefs.join("events").join(category).join(name).join("id");
    std::fs::read_to_string(&id_path)
        .map_err(|error| format!("reading {}: {error}", id_path.display()))?
        .trim()
        .parse()
        .map_err(|error| format!("{}: not a tracepoint id: {error}", id_path.display()))
}

/// A counting (never sampling) perf event on tracepoint `id`, on `cpu`,
/// all tasks, with an optional tracepoint filter.
pub fn open_counter(id: u64, cpu: u32, filter: Option<&str>) -> Result<OwnedFd, String> {
    let mut attr = bindings::perf_event_attr {
        type_: bindings::PERF_TYPE_TRACEPOINT,
        size: size_of::<bindings::perf_event_attr>() as u32,
        config: id,
        ..Default::default()
    };
    // SAFETY: a valid attr; pid -1 with a CPU means every task on it.
    let fd = unsafe {
        perf_event_open(
            &raw mut attr,
            -1,
            cpu as i32,
            -1,
            libc::c_ulong::from(bindings::PERF_FLAG_FD_CLOEXEC),
        )
    };
    if fd < 0 {
        return Err(format!(
            "perf_event_open on CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor this function owns.
    let counter = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(filter) = filter {
        let text = CString::new(filter).map_err(|_| format!("NUL in filter `{filter}`"))?;
        // SAFETY: our descriptor and a NUL-terminated string the kernel copies.
        if unsafe { ioctls::SET_FILTER(counter.as_raw_fd(), text.as_ptr().cast_mut()) } < 0 {
            return Err(format!(
                "setting filter `{filter}` on CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(counter)
}

impl TimerSignalCounters {
    /// Tells which signal program attached: `perf_tracepoint` for the
    /// `signal:signal_generate` program, false for the raw tracepoint.
    pub fn set_signal_program(&mut self, perf_tracepoint: bool) {
        self.count_excludes_current_run = perf_tracepoint;
    }

    /// Timer signals the kernel generated without running the signal
    /// program, summed over CPUs; `None` without counters or when the tally
    /// map cannot be read.
    ///
    /// Per CPU, the larger of what the program computed at its last run and
    /// what the counter says now: the counter is read before the tally, so
    /// a signal arriving in between adds to the runs, never to the hits,
    /// and the reader's figure can only fall short, never overcount. Both
    /// figures only grow, so the loss records made from them stay exact or
    /// short. Negative figures (the perf count behind the program) count as
    /// zero.
    pub fn skipped(&self, ebpf: &Ebpf) -> Option<u64> {
        if self.per_cpu.is_empty() {
            return None;
        }
        let hits: Vec<Option<u64>> = self
            .per_cpu
            .iter()
            .map(|(_, counter)| read_count(counter))
            .collect();
        let map = ebpf.map(map_names::TIMER_SIGNAL_TALLY)?;
        let tally: PerCpuArray<_, TimerSignalTally> = PerCpuArray::try_from(map).ok()?;
        let per_cpu = tally.get(&0, 0).ok()?;
        Some(
            self.per_cpu
                .iter()
                .zip(hits)
                .filter_map(|((cpu, _), hits)| {
                    per_cpu
                        .get(*cpu as usize)
                        .map(|tally| skipped_on_cpu(tally, hits, self.count_excludes_current_run))
                })
                .sum(),
        )
    }
}

/// One CPU's skipped timer signals: the larger of the program's figure at
/// its last run and the one from the counter's current value `hits` (read
/// before `tally`). Where the program's perf reads exclude the hit it runs
/// for, its baseline is one lower than the reader's view of the same state.
fn skipped_on_cpu(
    tally: &TimerSignalTally,
    hits: Option<u64>,
    count_excludes_current_run: bool,
) -> u64 {
    let by_program = u64::try_from(tally.skipped).unwrap_or(0);
    let by_reader = match hits {
        Some(hits) if tally.started != 0 => {
            let difference = hits.wrapping_sub(tally.runs) as i64;
            let skipped = difference
                .wrapping_sub(tally.baseline)
                .wrapping_sub(i64::from(count_excludes_current_run));
            u64::try_from(skipped).unwrap_or(0)
        }
        _ => 0,
    };
    by_program.max(by_reader)
}

/// The current value of a counting perf event.
pub fn read_count(counter: &OwnedFd) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: reading 8 bytes into a u64 from our own descriptor.
    let read = unsafe {
        libc::read(
            counter.as_raw_fd(),
            (&raw mut value).cast(),
            size_of::<u64>(),
        )
    };
    (read == size_of::<u64>() as isize).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 50 runs so far; at the first run the count was 100 ahead of the runs.
    fn tally(skipped: i64) -> TimerSignalTally {
        TimerSignalTally {
            runs: 50,
            baseline: 100,
            skipped,
            started: 1,
        }
    }

    #[test]
    fn a_skip_after_the_last_run_shows_from_the_counter() {
        // The program saw 2 skips at its last run; the counter has moved on
        // by one hit the program never ran for.
        assert_eq!(skipped_on_cpu(&tally(2), Some(153), false), 3);
        // Through the perf tracepoint the program's reads lag one hit.
        assert_eq!(skipped_on_cpu(&tally(2), Some(153), true), 2);
        assert_eq!(skipped_on_cpu(&tally(2), Some(154), true), 3);
    }

    #[test]
    fn a_run_between_the_two_reads_never_counts_as_a_skip() {
        // Counter read at 150 (no skips), then a run landed before the tally
        // read (51 runs): the reader's figure falls short and the program's
        // own figure stands.
        let mut later = tally(0);
        later.runs = 51;
        assert_eq!(skipped_on_cpu(&later, Some(150), false), 0);
        later.skipped = 1;
        assert_eq!(skipped_on_cpu(&later, Some(150), false), 1);
    }

    #[test]
    fn no_baseline_or_no_counter_leaves_the_programs_figure() {
        let fresh = TimerSignalTally::default();
        assert_eq!(skipped_on_cpu(&fresh, Some(1_000), false), 0);
        assert_eq!(skipped_on_cpu(&tally(4), None, false), 4);
        // A perf count behind the program is an inconsistency, not a skip.
        assert_eq!(skipped_on_cpu(&tally(-3), Some(120), false), 0);
    }
}
