//! The `report` table: the story of the whole recording per thread (a
//! summary table that fits 80 columns, then each thread's totals and time
//! in each verdict), the state at its end when something was still
//! happening, the mitigation changes and the complete verdict history.

use std::fmt::Write as _;

use comfy_table::{Cell, ContentArrangement, Table, TableComponent, presets::UTF8_HORIZONTAL_ONLY};
use tracer_events::{
    Verdict, VerdictChange,
    text::{escape, push_line, rate},
};

use super::{
    ReplayResult,
    story::{ThreadStory, VerdictSeen},
    threads_not_kept_note,
};
use crate::{live, model::LIVELOCK_MITIGATIONS};

/// Width the summary table is laid out for.
pub const TABLE_WIDTH: u16 = 80;

/// Seconds from `start_ns`, for the text.
fn seconds(ts_ns: u64, start_ns: u64) -> f64 {
    ts_ns.saturating_sub(start_ns) as f64 / 1e9
}

/// `LIVELOCK`, `LIVELOCK*` when inferred (the table's legend says so).
fn verdict_cell(seen: Option<VerdictSeen>) -> String {
    seen.map_or_else(
        || "-".to_owned(),
        |seen| {
            format!(
                "{}{}",
                seen.verdict.label(),
                if seen.confirmed { "" } else { "*" }
            )
        },
    )
}

/// `100 (haos)`, or the pid when the VM is not known.
fn vm_label(story: &ThreadStory) -> String {
    story.vm.as_ref().map_or_else(
        || format!("pid {}", story.pid),
        |vm| escape(vm).into_owned(),
    )
}

fn summary_table(stories: &[ThreadStory]) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_HORIZONTAL_ONLY)
        .remove_style(TableComponent::HorizontalLines)
        .remove_style(TableComponent::MiddleIntersections)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(TABLE_WIDTH)
        .force_no_tty();
    table.set_header([
        "tid", "VM", "vCPU", "verdict", "traps", "peak/s", "EINTR", "peak/s",
    ]);
    for story in stories {
        table.add_row(vec![
            Cell::new(story.tid),
            Cell::new(vm_label(story)),
            Cell::new(
                story
                    .vcpu
                    .map_or_else(|| "-".into(), |vcpu| vcpu.to_string()),
            ),
            Cell::new(if story.worst == story.last {
                verdict_cell(story.worst)
            } else {
                format!(
                    "{} -> {}",
                    verdict_cell(story.worst),
                    verdict_cell(story.last)
                )
            }),
            Cell::new(story.totals.traps.max(story.totals.ac_vm_exits)),
            Cell::new(rate(story.peak_traps_per_s)),
            Cell::new(story.totals.eintr_exits),
            Cell::new(rate(story.peak_eintr_per_s)),
        ]);
    }
    table.to_string()
}

/// Appends `items` after `lead`, joined by ", ", starting a new line
/// (indented as the first) before an item that would pass [`TABLE_WIDTH`].
fn push_wrapped(out: &mut String, lead: &str, items: &[String]) {
    let indent = " ".repeat(lead.chars().count());
    let mut line = lead.to_owned();
    for (index, item) in items.iter().enumerate() {
        let sep = if index + 1 < items.len() { "," } else { "" };
        let fresh = line.chars().count() == lead.chars().count()
            || line.chars().count() == indent.chars().count();
        if !fresh
            && line.chars().count() + 1 + item.chars().count() + sep.len() > TABLE_WIDTH.into()
        {
            out.push_str(&line);
            out.push('\n');
            line.clone_from(&indent);
        } else if !fresh {
            line.push(' ');
        }
        line.push_str(item);
        line.push_str(sep);
    }
    out.push_str(&line);
    out.push('\n');
}

/// One thread's totals, kicks and time in each verdict, in lines that
/// fit [`TABLE_WIDTH`] (a sender's name from the traced system may not).
fn thread_details(out: &mut String, story: &ThreadStory, start_ns: u64) {
    let totals = &story.totals;
    push_line(
        out,
        &format!(
            "tid {} ({}, pid {}): worst {}, final {}",
            story.tid,
            story.comm,
            story.pid,
            verdict_cell(story.worst),
            verdict_cell(story.last),
        ),
    );
    if let Some(left) = story.left_ns {
        let _ = writeln!(
            out,
            "  left the replay at {:.3} s (silent too long)",
            seconds(left, start_ns)
        );
    }
    let _ = writeln!(
        out,
        "  traps {}, warns {}, #AC VM exits {}, cut without a signal {}",
        totals.traps, totals.warns, totals.ac_vm_exits, totals.cut_without_signal
    );
    let _ = writeln!(
        out,
        "  punishments interrupted {}, completed {}",
        totals.interrupted_episodes, totals.completed_episodes
    );
    let _ = writeln!(
        out,
        "  sleeps interrupted {}, completed {}; semaphore EINTR {}",
        totals.sleeps_interrupted, totals.sleeps_completed, totals.semaphore_interrupted
    );
    let _ = writeln!(
        out,
        "  signals {} (timer {}, other {})",
        totals.timer_signals + totals.other_signals,
        totals.timer_signals,
        totals.other_signals
    );
    let _ = writeln!(
        out,
        "  KVM_RUN returns {}: EINTR {}, errors {}",
        totals.userspace_exits, totals.eintr_exits, totals.error_exits
    );
    for kick in &story.kicks {
        push_line(
            out,
            &format!(
                "  kick {} via {}: {} signals, cut {} punishments short",
                kick.signal,
                kick.kind.short_label(),
                kick.count,
                kick.cut
            ),
        );
        if let Some(sender) = &kick.sender {
            push_line(out, &format!("    from {sender}"));
        }
    }
    let spent: Vec<String> = story
        .time_in_verdict
        .iter()
        .map(|time| format!("{} {:.3} s", time.verdict.label(), time.ns as f64 / 1e9))
        .collect();
    if !spent.is_empty() {
        push_wrapped(out, "  time in verdict: ", &spent);
    }
}

/// One verdict change as a history line.
fn change_line(change: &VerdictChange, start_ns: u64) -> String {
    let from = change.from.map_or_else(
        || "(new)".to_owned(),
        |verdict| {
            if change.from_confirmed {
                verdict.label().to_owned()
            } else {
                format!("{} (inferred)", verdict.label())
            }
        },
    );
    format!(
        "  {:>9.3}  tid {} vCPU {}: {} -> {}{}{}",
        seconds(change.ts_ns, start_ns),
        change.tid,
        change
            .vcpu
            .map_or_else(|| "-".into(), |vcpu| vcpu.to_string()),
        from,
        change.to.label(),
        if change.confirmed { "" } else { " (inferred)" },
        change
            .reason
            .as_ref()
            .map_or_else(String::new, |reason| format!(": {reason}"))
    )
}

/// Renders the `report` table of `result` (times in seconds from `start_ns`).
pub fn render(result: &ReplayResult, start_ns: u64) -> String {
    let mut out = live::header(&result.status);
    if let Some(note) = threads_not_kept_note(result) {
        out.push_str(&note);
        out.push('\n');
    }
    if result.stories.is_empty() {
        out.push_str("no vCPU or split-locking thread in the recording\n");
    } else {
        let _ = writeln!(
            out,
            "whole recording, {:.3} s (verdict: worst -> final; peak/s: most in 1 s):",
            result.status.elapsed_s
        );
        out.push_str(&summary_table(&result.stories));
        out.push('\n');
        if result.stories.iter().any(|story| {
            [story.worst, story.last]
                .iter()
                .flatten()
                .any(|v| !v.confirmed)
        }) {
            out.push_str("* inferred from tracepoints only (no kprobes)\n");
        }
        for story in &result.stories {
            thread_details(&mut out, story, start_ns);
        }
        if result.stories_not_kept > 0 {
            let _ = writeln!(
                out,
                "{} more threads have no summary (more than {} threads)",
                result.stories_not_kept,
                super::story::MAX_STORIES
            );
        }
    }
    let active_at_end = result.rows.iter().any(|row| row.verdict != Verdict::Idle);
    if active_at_end {
        out.push_str("at the end of the recording:\n");
        out.push_str(&live::body(&result.rows, 200));
    }
    let livelocked_at_end = result
        .rows
        .iter()
        .any(|row| row.verdict == Verdict::Livelock);
    let livelocked = result.stories.iter().any(|story| {
        story
            .worst
            .is_some_and(|worst| worst.verdict == Verdict::Livelock)
    });
    if livelocked && !livelocked_at_end {
        out.push_str("mitigations for LIVELOCK (any one):\n");
        for mitigation in LIVELOCK_MITIGATIONS {
            let _ = writeln!(out, "  * {mitigation}");
        }
    }
    if !result.mitigations.is_empty() {
        out.push_str("mitigation changes (seconds from start):\n");
        for change in &result.mitigations {
            let line = format!(
                "  {:>9.3}  {} (seen between {:.3} and {:.3})",
                seconds(change.ts_ns, start_ns),
                change.describe(),
                seconds(change.since_ns, start_ns),
                seconds(change.ts_ns, start_ns),
            );
            push_line(&mut out, &line);
        }
    }
    if !result.changes.is_empty() {
        out.push_str("verdict history (seconds from start):\n");
        for change in &result.changes {
            push_line(&mut out, &change_line(change, start_ns));
        }
    }
    out
}
