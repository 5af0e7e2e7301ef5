//! `tracer probes`: try every probe, print the table, detach.

use comfy_table::{Cell, Color, Table, presets::UTF8_FULL_CONDENSED};

use tracer_events::{ProbeReport, ProbeStatus};

use crate::{
    cli::ProbesArgs,
    probes::plan,
    session::{SessionOptions, attach_probes},
};

/// Runs the command; exit code 0 when a useful mode is available, 1 otherwise.
pub fn run(args: &ProbesArgs) -> anyhow::Result<i32> {
    let attached = attach_probes(&SessionOptions::default())?;
    let mode = plan::attached_mode(&attached.report);
    if args.json {
        let value = serde_json::json!({
            "mode": mode,
            "probes": attached.report.entries,
            "layout_problems": attached.layout_problems,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", render(&attached.report));
        match mode {
            Some(mode) => println!(
                "mode: {mode} ({} of {} probes attached)",
                attached.report.attached_count(),
                plan::usable_count(&attached.report)
            ),
            None => println!("mode: none: no useful probe can attach on this kernel"),
        }
    }
    drop(attached);
    Ok(i32::from(mode.is_none()))
}

/// Renders the probe table.
pub fn render(report: &ProbeReport) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["probe", "kind", "target", "status", "reason / role"]);
    for entry in &report.entries {
        let (status, color, detail) = match &entry.status {
            ProbeStatus::Attached { target } => {
                let detail = if target == &entry.target {
                    entry.role.clone()
                } else {
                    format!("{} (as {target})", entry.role)
                };
                ("attached", Color::Green, detail)
            }
            ProbeStatus::Unavailable { reason } => ("unavailable", Color::Yellow, reason.clone()),
            ProbeStatus::Failed { reason } => ("FAILED", Color::Red, reason.clone()),
        };
        table.add_row([
            Cell::new(&entry.program),
            Cell::new(entry.kind),
            Cell::new(&entry.target),
            Cell::new(status).fg(color),
            Cell::new(detail),
        ]);
    }
    table
}
