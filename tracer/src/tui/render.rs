//! Drawing the live view: a pure function of the [`ViewState`] and the
//! [`Screen`] (the selection scroll is the only state it writes back).

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line as TextLine, Span},
    widgets::{Block, Borders, Clear, Paragraph, Row, Table, Wrap},
};
use tracer_events::{
    SPLIT_LOCK_MITIGATE, ThreadRow, Verdict,
    text::{escape, rate},
};

use super::{GroupSummary, Line, Screen, ViewState, interrupted_per_s, is_stuck, vm_label};
use crate::model::{LIVELOCK_MITIGATIONS, StepOutcome, format_ts};

/// The footer: the keys.
pub const FOOTER: &str =
    "↑↓ move  Enter detail  / filter  s/S sort  g group  p pause  ? help  q quit";

/// `text` cut to `width` columns, with an ellipsis when cut.
pub fn truncate(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

fn verdict_style(verdict: Verdict) -> Style {
    match verdict {
        Verdict::Livelock | Verdict::Killed | Verdict::KvmError => {
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
        }
        Verdict::Throttled => Style::default().fg(Color::Yellow),
        Verdict::Recovering => Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD),
        Verdict::Ok => Style::default().fg(Color::Green),
        Verdict::Idle => Style::default().fg(Color::DarkGray),
    }
}

/// A table column: title, how much it matters (higher drops first on a
/// narrow terminal), widest it gets, right-aligned or not.
struct Column {
    title: &'static str,
    drop_rank: u8,
    max: usize,
    right: bool,
}

const COLUMNS: [Column; 9] = [
    Column {
        title: "NAME",
        drop_rank: 0,
        max: 34,
        right: false,
    },
    Column {
        title: "TID",
        drop_rank: 4,
        max: 10,
        right: true,
    },
    Column {
        title: "VERDICT",
        drop_rank: 0,
        max: 19,
        right: false,
    },
    Column {
        title: "TRAPS/s",
        drop_rank: 3,
        max: 8,
        right: true,
    },
    Column {
        title: "INTR/s",
        drop_rank: 5,
        max: 8,
        right: true,
    },
    Column {
        title: "EINTR/s",
        drop_rank: 3,
        max: 8,
        right: true,
    },
    Column {
        title: "SIGNALS/s",
        drop_rank: 6,
        max: 24,
        right: false,
    },
    Column {
        title: "LAST IP",
        drop_rank: 7,
        max: 18,
        right: false,
    },
    Column {
        title: "PUNISHED%",
        drop_rank: 8,
        max: 9,
        right: true,
    },
];

fn group_cells(group: &GroupSummary) -> [String; 9] {
    let marker = if group.expanded { "▾" } else { "▸" };
    let unit = if matches!(group.key, super::GroupKey::Vm(_)) {
        "vCPUs"
    } else {
        "thr"
    };
    [
        format!("{marker} {}", escape(&group.label)),
        format!("{} {unit}", group.threads),
        group.worst.label().to_owned(),
        rate(group.traps_per_s),
        rate(group.interrupted_per_s),
        rate(group.eintr_per_s),
        String::new(),
        String::new(),
        String::new(),
    ]
}

fn thread_cells(row: &ThreadRow, indented: bool, screen: &Screen) -> [String; 9] {
    let who = match row.vcpu {
        Some(vcpu) => format!("vCPU {vcpu}"),
        None => escape(&row.comm).into_owned(),
    };
    let name = if indented {
        format!("  {who}")
    } else if row.vcpu.is_some() {
        format!("{} {who}", escape(&vm_label(row.pid, &screen.processes)))
    } else {
        format!("{who} pid {}", row.pid)
    };
    let signals = row.signals_cell();
    [
        name,
        row.tid.to_string(),
        row.verdict_label(),
        rate(row.traps_per_s),
        rate(interrupted_per_s(row)),
        rate(row.eintr_per_s),
        signals,
        row.last_ip
            .map_or_else(|| "-".into(), |ip| format!("0x{ip:x}")),
        format!("{:.0}", row.punished_pct),
    ]
}

/// Column widths for `cells` in `width` columns: sized from the content,
/// the least important columns dropped until the rest fit, then NAME
/// shrunk. `None` marks a dropped column.
fn layout_columns(cells: &[[String; 9]], width: usize) -> [Option<usize>; 9] {
    let mut widths: [Option<usize>; 9] = std::array::from_fn(|index| {
        let column = &COLUMNS[index];
        let content = cells
            .iter()
            .map(|line| line[index].chars().count())
            .max()
            .unwrap_or(0);
        Some(
            content
                .max(column.title.chars().count() + 1)
                .min(column.max),
        )
    });
    let total = |widths: &[Option<usize>; 9]| {
        let shown: Vec<usize> = widths.iter().flatten().copied().collect();
        shown.iter().sum::<usize>() + shown.len().saturating_sub(1)
    };
    while total(&widths) > width {
        let droppable = (0..9)
            .filter(|&index| widths[index].is_some() && COLUMNS[index].drop_rank > 0)
            .max_by_key(|&index| (COLUMNS[index].drop_rank, index));
        match droppable {
            Some(index) => widths[index] = None,
            None => break,
        }
    }
    let over = total(&widths).saturating_sub(width);
    if over > 0
        && let Some(name) = widths[0].as_mut()
    {
        *name = name.saturating_sub(over).max(4);
    }
    widths
}

fn header_lines(screen: &Screen, state: &ViewState) -> Vec<TextLine<'static>> {
    let status = &screen.status;
    let mode = status
        .mode
        .map_or_else(|| "none".to_owned(), |mode| mode.to_string());
    let first = format!(
        "split-lock tracer │ {} │ {} │ {mode} {}/{} probes │ {:.0} s",
        escape(&screen.host.hostname),
        escape(&screen.host.kernel),
        status.probes_attached,
        status.probes_total,
        status.elapsed_s,
    );
    let value = status
        .split_lock_mitigate
        .map_or_else(|| "n/a".to_owned(), |value| value.to_string());
    // The last change says the sysctl's value when it was the sysctl's;
    // after another setting's change (microcode) both are shown.
    let mitigate = match &status.mitigation_change {
        Some(note) if note.setting == SPLIT_LOCK_MITIGATE => escape(&note.text).into_owned(),
        Some(note) => format!("split_lock_mitigate {value} │ {}", escape(&note.text)),
        None => format!("split_lock_mitigate {value}"),
    };
    let second = format!(
        "{mitigate} │ detect {} │ {} ev/s │ lost {} │ skipped {}",
        screen.host.split_lock_detect,
        rate(status.events_per_s),
        status.lost_ring + status.lost_undecodable,
        status.lost_kernel_skipped,
    );
    let mut third = Vec::new();
    if state.paused {
        third.push("PAUSED (p resumes)".to_owned());
    }
    if !state.filter.is_empty() && !state.editing_filter {
        third.push(format!("filter: {}", state.filter));
    }
    if status.kprobes_enabled == Some(0) {
        // Stays up whatever changed after: with kprobes off the confirming
        // probes are attached but silent.
        third.push("kprobes OFF (/sys/kernel/debug/kprobes/enabled): nothing confirmed".to_owned());
    }
    if !status.signals_to_other_threads.is_zero() {
        third.push(format!(
            "{} signals to other threads (counted only)",
            status.signals_to_other_threads.total()
        ));
    }
    if status.counter_map_full + status.window_map_full > 0 {
        third.push(format!(
            "in-kernel maps full: {} + {} inserts failed",
            status.counter_map_full, status.window_map_full
        ));
    }
    if status.recorder_not_written > 0 {
        third.push(format!(
            "recorder: {} events not written",
            status.recorder_not_written
        ));
    }
    if status.ebpf_log_messages > 0 {
        third.push(format!("eBPF log: {} messages", status.ebpf_log_messages));
    }
    let stuck = screen
        .rows
        .iter()
        .filter(|row| is_stuck(row.verdict))
        .count();
    let summary = format!(
        "{} threads, {stuck} stuck{}",
        screen.rows.len(),
        if third.is_empty() {
            String::new()
        } else {
            format!(" │ {}", third.join(" │ "))
        }
    );
    let bold = Style::default().add_modifier(Modifier::BOLD);
    vec![
        TextLine::from(Span::styled(first, bold)),
        TextLine::from(second),
        TextLine::from(Span::styled(
            summary,
            if stuck > 0 {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            },
        )),
    ]
}

fn draw_table(frame: &mut Frame<'_>, area: Rect, state: &mut ViewState, screen: &Screen) {
    let lines = state.lines(screen);
    let cells: Vec<[String; 9]> = lines
        .iter()
        .map(|line| match line {
            Line::Group(group) => group_cells(group),
            Line::Thread(row, indented) => thread_cells(row, *indented, screen),
        })
        .collect();
    let widths = layout_columns(&cells, usize::from(area.width));
    let shown: Vec<usize> = (0..9).filter(|&index| widths[index].is_some()).collect();
    let height = usize::from(area.height.saturating_sub(1));
    state.page = height;
    let selected = state.selected_index(&lines);
    if let Some(selected) = selected {
        if selected < state.offset {
            state.offset = selected;
        } else if height > 0 && selected >= state.offset + height {
            state.offset = selected + 1 - height;
        }
    }
    state.offset = state.offset.min(lines.len().saturating_sub(height.max(1)));
    let cell_text = |index: usize, text: &str| {
        let width = widths[index].unwrap_or(0);
        let text = truncate(text, width);
        if COLUMNS[index].right {
            format!("{text:>width$}")
        } else {
            text
        }
    };
    let header = Row::new(shown.iter().map(|&index| {
        let title = COLUMNS[index].title;
        let marked = if title == state.sort.title() {
            format!("{title}{}", if state.reversed { "▲" } else { "▼" })
        } else {
            title.to_owned()
        };
        cell_text(index, &marked)
    }))
    .style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let body: Vec<Row<'_>> = lines
        .iter()
        .zip(&cells)
        .enumerate()
        .skip(state.offset)
        .take(height)
        .map(|(position, (line, cells))| {
            let verdict = match line {
                Line::Group(group) => group.worst,
                Line::Thread(row, _) => row.verdict,
            };
            let row = Row::new(shown.iter().map(|&index| {
                let text = cell_text(index, &cells[index]);
                if index == 2 {
                    ratatui::widgets::Cell::from(text).style(verdict_style(verdict))
                } else {
                    ratatui::widgets::Cell::from(text)
                }
            }));
            let mut style = Style::default();
            if matches!(line, Line::Group(_)) {
                style = style.add_modifier(Modifier::BOLD);
            }
            if Some(position) == selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            row.style(style)
        })
        .collect();
    let constraints: Vec<Constraint> = shown
        .iter()
        .map(|&index| Constraint::Length(widths[index].unwrap_or(0) as u16))
        .collect();
    if lines.is_empty() {
        let text = if state.filter.is_empty() {
            "no vCPU or split-locking thread active (start with --all to list quiet vCPU threads)"
                .to_owned()
        } else {
            format!(
                "nothing matches the filter \"{}\" (Esc clears it)",
                state.filter
            )
        };
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    frame.render_widget(
        Table::new(body, constraints)
            .header(header)
            .column_spacing(1),
        area,
    );
}

/// `▁▂▃▅▇` bars of `values` scaled to their maximum, the last `width`.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let values = &values[values.len().saturating_sub(width)..];
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|value| {
            if max <= 0.0 || *value <= 0.0 {
                ' '
            } else {
                let level = ((value / max) * 7.0).round() as usize;
                BARS[level.min(7)]
            }
        })
        .collect()
}

/// `text` wrapped to `width` columns: the first line after `first`, the
/// rest after `rest` (a hanging indent, so a wrapped bullet stays one
/// visible item at 80 columns).
fn hanging(text: &str, width: usize, first: &str, rest: &str) -> Vec<TextLine<'static>> {
    // No hyphenation: a command or a `-cpu` model must not break inside
    // a hyphenated word, where a copied line would no longer run.
    let options = textwrap::Options::new(width.max(rest.len() + 8))
        .initial_indent(first)
        .subsequent_indent(rest)
        .word_splitter(textwrap::WordSplitter::NoHyphenation);
    textwrap::wrap(text, options)
        .into_iter()
        .map(|line| TextLine::from(line.into_owned()))
        .collect()
}

/// The detail pane's text for `row`.
pub fn detail_text(row: &ThreadRow, screen: &Screen, width: usize) -> Vec<TextLine<'static>> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut out = vec![TextLine::from(vec![
        Span::styled(row.verdict_label(), verdict_style(row.verdict)),
        Span::raw(format!(
            "  {} │ tid {} │ pid {} │ {}",
            escape(&row.comm),
            row.tid,
            row.pid,
            escape(&vm_label(row.pid, &screen.processes))
        )),
    ])];
    for line in &row.evidence {
        out.extend(hanging(&escape(line), width, "  • ", "    "));
    }
    let totals = &row.totals;
    let totals_text = format!(
        "{} traps, {} interrupted / {} completed punishments, {} EINTR, {} signals",
        totals.traps.max(totals.ac_vm_exits),
        totals.interrupted_episodes,
        totals.completed_episodes,
        totals.eintr_exits,
        totals.timer_signals + totals.other_signals
    );
    out.extend(hanging(&totals_text, width, "  totals: ", "          "));
    if row.verdict == Verdict::Livelock {
        out.push(TextLine::from(Span::styled("mitigations (any one)", bold)));
        let commands = [
            "$ sysctl -w kernel.split_lock_mitigate=0".to_owned(),
            "$ add split_lock_detect=off to GRUB_CMDLINE_LINUX (/etc/default/grub), update-grub, reboot".to_owned(),
            screen.cpu_models.get(&row.pid).map_or_else(
                || "(in the VMM's configuration)".to_owned(),
                |model| format!("(this VM runs -cpu {})", escape(model)),
            ),
        ];
        for (mitigation, command) in LIVELOCK_MITIGATIONS.iter().zip(commands) {
            out.extend(hanging(mitigation, width, "  * ", "    "));
            out.extend(hanging(&command, width, "      ", "        "));
        }
    }
    let spark_width = width.saturating_sub(24).clamp(8, 60);
    let (traps, eintr) = screen.history.series(row.tid, spark_width);
    let peak = |values: &[f64]| values.iter().copied().fold(0.0_f64, f64::max);
    out.push(TextLine::from(Span::styled(
        format!(
            "last minute (peak of each {:.1} s)",
            crate::tui::HISTORY_NS as f64 / 1e9 / spark_width as f64
        ),
        bold,
    )));
    out.push(TextLine::from(format!(
        "  traps/s {:>6} │{}│",
        rate(peak(&traps)),
        sparkline(&traps, spark_width)
    )));
    out.push(TextLine::from(format!(
        "  EINTR/s {:>6} │{}│",
        rate(peak(&eintr)),
        sparkline(&eintr, spark_width)
    )));
    let episodes = screen.episodes.get(&row.tid).map_or(&[][..], Vec::as_slice);
    if !episodes.is_empty() {
        out.push(TextLine::from(Span::styled(
            "last episodes (trap time, IP, punishment, cut by, KVM_RUN)",
            bold,
        )));
        for record in episodes.iter().rev() {
            let episode = &record.episode;
            let sleep = match episode.sleep {
                Some((StepOutcome::Interrupted, left)) => format!("cut, {left}ms left"),
                Some((StepOutcome::Completed, _)) => "slept".to_owned(),
                None => match episode.semaphore {
                    Some(StepOutcome::Interrupted) => "semaphore -EINTR".to_owned(),
                    Some(StepOutcome::Completed) => "semaphore taken".to_owned(),
                    None if episode.completed() => "completed".to_owned(),
                    None => "no punishment seen".to_owned(),
                },
            };
            let by = record
                .cut_by
                .as_deref()
                .map(|by| format!(", {}", escape(by)))
                .unwrap_or_default();
            let run = match record.kvm_run {
                Some((_, 0)) => " → ok".to_owned(),
                Some((_, errno)) if errno == tracer_common::KVM_RUN_EINTR => " → -EINTR".to_owned(),
                Some((_, errno)) => format!(" → errno {errno}"),
                None => String::new(),
            };
            out.push(TextLine::from(format!(
                "  {} 0x{:x} {sleep}{by}{run}",
                format_ts(episode.start_ns),
                episode.ip
            )));
        }
    }
    out
}

fn draw_detail(frame: &mut Frame<'_>, area: Rect, state: &ViewState, screen: &Screen) {
    let Some(tid) = state.detail else { return };
    let block = Block::default()
        .borders(Borders::TOP)
        .title(format!(" thread {tid} (Esc closes, ↑↓ scroll) "));
    let text = match screen.rows.iter().find(|row| row.tid == tid) {
        Some(row) => detail_text(row, screen, usize::from(area.width)),
        None => vec![TextLine::from(format!(
            "thread {tid} has left the view (exited or silent)"
        ))],
    };
    frame.render_widget(
        Paragraph::new(text)
            .block(block)
            .wrap(Wrap { trim: false })
            .scroll((state.detail_scroll, 0)),
        area,
    );
}

const HELP: [(&str, &str); 12] = [
    ("↑ ↓", "move the selection"),
    ("PgUp PgDn", "move a page"),
    ("Home End", "first / last line"),
    ("Enter", "VM: expand or collapse; thread: detail pane"),
    ("→ ←", "expand / collapse a VM"),
    ("/", "filter by VM name, VMID, pid, tid or verdict"),
    ("Esc", "close the pane, clear the filter"),
    ("s S", "next sort column / reverse"),
    ("g", "group by VM or list threads"),
    ("p", "pause or resume the refresh"),
    ("?", "this help"),
    ("q Ctrl-C", "quit"),
];

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let width = area.width.min(64);
    let height = area.height.min(HELP.len() as u16 + 4);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let mut text: Vec<TextLine<'_>> = HELP
        .iter()
        .map(|(keys, what)| TextLine::from(format!(" {keys:<10} {what}")))
        .collect();
    text.push(TextLine::from(" any key closes this help"));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" keys ")),
        popup,
    );
}

/// Draws the whole view into `frame`.
pub fn draw(frame: &mut Frame<'_>, state: &mut ViewState, screen: &Screen) {
    let area = frame.area();
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let width = usize::from(area.width);
    let header_text: Vec<TextLine<'_>> = header_lines(screen, state)
        .into_iter()
        .map(|line| {
            let text: String = line
                .spans
                .iter()
                .map(|span| span.content.as_ref())
                .collect();
            let style = line
                .spans
                .first()
                .map(|span| span.style)
                .unwrap_or_default();
            TextLine::from(Span::styled(truncate(&text, width), style))
        })
        .collect();
    frame.render_widget(Paragraph::new(header_text), header);
    if state.detail.is_some() {
        if body.height >= 30 {
            let [table, detail] =
                Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)])
                    .areas(body);
            draw_table(frame, table, state, screen);
            draw_detail(frame, detail, state, screen);
        } else {
            draw_detail(frame, body, state, screen);
        }
    } else {
        draw_table(frame, body, state, screen);
    }
    let footer_text = if state.editing_filter {
        format!("filter: {}▏  Enter applies  Esc clears", state.filter)
    } else {
        FOOTER.to_owned()
    };
    frame.render_widget(
        Paragraph::new(truncate(&footer_text, width))
            .style(Style::default().add_modifier(Modifier::REVERSED)),
        footer,
    );
    if state.help {
        draw_help(frame, body);
    }
}
