//! Rendering of the live view: a pure function of the model's rows and the
//! session's status, snapshot-tested.

use std::fmt::Write as _;

use comfy_table::{Cell, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use tracer_events::{
    ThreadRow, TracingMode, UntrackedSignals, Verdict,
    text::{escape, rate},
};

use crate::model::LIVELOCK_MITIGATIONS;

/// The last change of a watched setting, as the header shows it. In JSON
/// (`live --json`, `report --format json`) it is the header's text alone,
/// as before the setting was kept beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct MitigationNote {
    /// Which setting changed (`tracer_events::SPLIT_LOCK_MITIGATE`, ...).
    pub setting: String,
    /// What the header says: `split_lock_mitigate 1 → 0 at 12:03:04`.
    pub text: String,
}

impl From<MitigationNote> for String {
    fn from(note: MitigationNote) -> Self {
        note.text
    }
}

/// What the header shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ViewStatus {
    /// The tracing mode (`None`: nothing useful attached); shown and
    /// serialised as `full`, `tracepoint-only` or `none`.
    #[serde(serialize_with = "mode_text::serialize")]
    pub mode: Option<TracingMode>,
    /// Attached probes.
    pub probes_attached: usize,
    /// All probes.
    pub probes_total: usize,
    /// Events per second over the last interval.
    pub events_per_s: f64,
    /// Ring-buffer drops so far.
    pub lost_ring: u64,
    /// Undecodable records so far.
    pub lost_undecodable: u64,
    /// Program runs the kernel skipped so far (recursion misses and the
    /// runs its own tracepoint count shows were skipped).
    pub lost_kernel_skipped: u64,
    /// Failed inserts into the in-kernel counter map.
    #[serde(default)]
    pub counter_map_full: u64,
    /// Signals to threads the tracer does not track, counted in the
    /// kernel and not recorded (not a loss).
    #[serde(default, skip_serializing_if = "UntrackedSignals::is_zero")]
    pub signals_to_other_threads: UntrackedSignals,
    /// Failed inserts into the split-lock window map.
    #[serde(default)]
    pub window_map_full: u64,
    /// Events traced but not written by the recorder (`--record`).
    #[serde(default)]
    pub recorder_not_written: u64,
    /// Messages the eBPF programs logged (`--ebpf-log`; 0 when off).
    #[serde(default)]
    pub ebpf_log_messages: u64,
    /// Seconds since start.
    pub elapsed_s: f64,
    /// `kernel.split_lock_mitigate` in force (`None`: the kernel has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_lock_mitigate: Option<u32>,
    /// CPU 0's microcode revision in force (`None`: not reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microcode_revision: Option<u32>,
    /// `/sys/kernel/debug/kprobes/enabled` in force (`None`: not readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kprobes_enabled: Option<u32>,
    /// The last change of a watched setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mitigation_change: Option<MitigationNote>,
    /// Changes of the watched settings seen so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mitigation_changes: u64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes the field by reference"
)]
fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// `ViewStatus.mode` as the text the header shows.
mod mode_text {
    use serde::Serializer;
    use tracer_events::TracingMode;

    #[expect(
        clippy::ref_option,
        clippy::trivially_copy_pass_by_ref,
        reason = "serde's serialize_with passes the field by reference"
    )]
    pub fn serialize<S: Serializer>(mode: &Option<TracingMode>, out: S) -> Result<S::Ok, S::Error> {
        match mode {
            Some(mode) => out.collect_str(mode),
            None => out.serialize_str("none"),
        }
    }
}

/// Renders the whole screen: header, table, footer.
pub fn render(status: &ViewStatus, rows: &[ThreadRow], width: u16) -> String {
    let mut out = header(status);
    out.push_str(&body(rows, width));
    out
}

/// The header lines: mode, probes, events/s, losses, run time.
pub fn header(status: &ViewStatus) -> String {
    let mut out = format!(
        "split-lock tracer | mode {} | probes {}/{} | {} events/s | lost: ring {} undecodable {} skipped by kernel {} | {:.0} s\n",
        status
            .mode
            .map_or_else(|| "none".to_owned(), |mode| mode.to_string()),
        status.probes_attached,
        status.probes_total,
        rate(status.events_per_s),
        status.lost_ring,
        status.lost_undecodable,
        status.lost_kernel_skipped,
        status.elapsed_s
    );
    if !status.signals_to_other_threads.is_zero() {
        let _ = writeln!(
            out,
            "signals to other threads (counted, not traced): {} timer, {} other",
            status.signals_to_other_threads.timer, status.signals_to_other_threads.other
        );
    }
    if status.counter_map_full + status.window_map_full > 0 {
        let _ = writeln!(
            out,
            "in-kernel maps full: {} counter inserts and {} split-lock window inserts failed (counts short)",
            status.counter_map_full, status.window_map_full
        );
    }
    if status.recorder_not_written > 0 {
        let _ = writeln!(
            out,
            "recorder: {} traced events not written (disk too slow or full)",
            status.recorder_not_written
        );
    }
    if status.ebpf_log_messages > 0 {
        let _ = writeln!(
            out,
            "eBPF programs logged {} messages (stderr, `tracer: ebpf`)",
            status.ebpf_log_messages
        );
    }
    out
}

/// The table of `rows`, the evidence of the stuck ones and, for a
/// livelock, the mitigations: plain text (a pipe, a report; a terminal
/// gets the full-screen view, `crate::tui`).
pub fn body(rows: &[ThreadRow], width: u16) -> String {
    let mut out = String::new();
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width);
    table.force_no_tty();
    table.set_header([
        "VM (pid)",
        "vCPU",
        "tid",
        "traps/s",
        "last IP",
        "intr %",
        "signals/s (period)",
        "EINTR/s",
        "punished %",
        "verdict",
    ]);
    for row in rows {
        // The VM name and comm come from the traced system: escaped.
        let vm = match &row.vm {
            Some(label) => format!("{} ({})", escape(label), row.pid),
            None => format!(
                "{} ({})",
                if row.comm.is_empty() { "?" } else { "-" },
                row.pid
            ),
        };
        let signals = row.signals_cell();
        let verdict = Cell::new(row.verdict_label());
        table.add_row(vec![
            Cell::new(vm),
            Cell::new(row.vcpu.map_or_else(|| "-".into(), |vcpu| vcpu.to_string())),
            Cell::new(row.tid),
            Cell::new(rate(row.traps_per_s)),
            Cell::new(match (&row.last_ip_symbol, row.last_ip) {
                (Some(symbol), _) => escape(symbol).into_owned(),
                (None, Some(ip)) => format!("0x{ip:x}"),
                (None, None) => "-".into(),
            }),
            Cell::new(
                row.interrupted_pct
                    .map_or_else(|| "-".into(), |pct| format!("{pct:.0}")),
            ),
            Cell::new(signals),
            Cell::new(rate(row.eintr_per_s)),
            Cell::new(format!("{:.0}", row.punished_pct)),
            verdict,
        ]);
    }
    if rows.is_empty() {
        out.push_str(
            "no vCPU or split-locking thread active (use --all to list quiet vCPU threads)\n",
        );
    } else {
        out.push_str(&table.to_string());
        out.push('\n');
    }
    let stuck: Vec<&ThreadRow> = rows
        .iter()
        .filter(|row| {
            matches!(
                row.verdict,
                Verdict::Livelock | Verdict::Killed | Verdict::KvmError
            )
        })
        .collect();
    for row in &stuck {
        let _ = writeln!(
            out,
            "{} tid {} ({}):",
            row.verdict_label(),
            row.tid,
            escape(&row.comm)
        );
        for line in &row.evidence {
            let _ = writeln!(out, "  - {}", escape(line));
        }
    }
    if stuck.iter().any(|row| row.verdict == Verdict::Livelock) {
        out.push_str("mitigations for LIVELOCK (any one):\n");
        for mitigation in LIVELOCK_MITIGATIONS {
            let _ = writeln!(out, "  * {mitigation}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tracer_events::ProcessInfo;

    use super::*;
    use crate::{
        model::Model,
        simulate::{self, ProbeSet, Scenario},
    };

    fn status() -> ViewStatus {
        ViewStatus {
            mode: Some(TracingMode::Full),
            probes_attached: 10,
            probes_total: 10,
            events_per_s: 2010.0,
            elapsed_s: 12.0,
            ..ViewStatus::default()
        }
    }

    fn rows_for(scenarios: &[Scenario]) -> Vec<ThreadRow> {
        let mut model = Model::new();
        let mut events: Vec<_> = scenarios
            .iter()
            .flat_map(|scenario| simulate::run(scenario).events)
            .collect();
        events.sort_by_key(|event| event.ts_ns);
        for event in &events {
            model.apply(event);
        }
        model.set_process_info(
            4242,
            ProcessInfo {
                name: Some("haos".into()),
                vmid: Some("100".into()),
                comm: Some("kvm".into()),
            },
        );
        let now = model.latest_ns();
        model.rows(now, true)
    }

    #[test]
    fn the_status_json_carries_the_header_text_of_a_setting_change() {
        let changed = ViewStatus {
            mitigation_change: Some(MitigationNote {
                setting: tracer_events::SPLIT_LOCK_MITIGATE.to_owned(),
                text: "split_lock_mitigate 1 → 0 at 12:03:04".to_owned(),
            }),
            mitigation_changes: 1,
            ..status()
        };
        let json = serde_json::to_value(&changed).unwrap();
        assert_eq!(
            json["mitigation_change"],
            "split_lock_mitigate 1 → 0 at 12:03:04"
        );
        assert_eq!(json["mode"], "full");
        assert!(
            serde_json::to_value(status())
                .unwrap()
                .get("mitigation_change")
                .is_none()
        );
    }

    #[test]
    fn livelocked_and_throttled_vcpus() {
        let stuck = Scenario::seed_001(250, 1.0, 3000);
        let slow = Scenario::seed_001(250, 50.0, 3000).with_identity(4242, 4251, "haos", 1);
        let screen = render(&status(), &rows_for(&[stuck, slow]), 160);
        insta::assert_snapshot!(screen);
    }

    #[test]
    fn tracepoint_only_inferred() {
        let mut stuck = Scenario::seed_001(1000, 2.0, 3000);
        stuck.probes = ProbeSet::TracepointOnly;
        let mut view = status();
        view.mode = Some(TracingMode::TracepointOnly);
        view.probes_attached = 3;
        let screen = render(&view, &rows_for(&[stuck]), 160);
        insta::assert_snapshot!(screen);
    }

    #[test]
    fn full_in_kernel_maps_are_shown() {
        let mut view = status();
        assert!(!render(&view, &[], 120).contains("maps full"));
        view.window_map_full = 3;
        let screen = render(&view, &[], 120);
        assert!(
            screen.contains("0 counter inserts and 3 split-lock window inserts failed"),
            "{screen}"
        );
    }

    #[test]
    fn empty_view_says_what_to_do() {
        let screen = render(&status(), &[], 120);
        assert!(screen.contains("use --all"), "{screen}");
    }
}
