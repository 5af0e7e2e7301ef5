//! `tracer doctor`: run the checks, print them, exit 1 when one fails.

use std::fmt::Write as _;

use comfy_table::{Cell, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};

use tracer_events::text::escape;

use crate::{
    cli::DoctorArgs,
    doctor::{self, DoctorReport, Logs, Status, collect},
    kernel::host::HostRoot,
};

/// Renders the report as a table with the advice below it.
pub fn render(report: &DoctorReport, width: u16) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width)
        .force_no_tty()
        .set_header(["check", "status", "value", "source"]);
    // Values, sources and advice quote the host (cmdline, log lines, CPU
    // model, paths): escaped.
    for check in &report.checks {
        table.add_row(vec![
            Cell::new(escape(&check.title)),
            Cell::new(check.status.label()),
            Cell::new(escape(&check.value)),
            Cell::new(escape(&check.source)),
        ]);
    }
    let mut out = format!("tracer doctor: {}\n{table}\n", escape(&report.root));
    let advice: Vec<_> = report
        .checks
        .iter()
        .filter_map(|check| check.advice.as_ref().map(|advice| (check, advice)))
        .collect();
    if !advice.is_empty() {
        out.push_str("what to do:\n");
        for (check, advice) in advice {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                check.status.label(),
                escape(&check.title),
                escape(advice)
            );
        }
    }
    let failed = report
        .checks
        .iter()
        .filter(|check| check.status == Status::Fail)
        .count();
    let warned = report
        .checks
        .iter()
        .filter(|check| check.status == Status::Warn)
        .count();
    let _ = writeln!(out, "{failed} failed, {warned} warnings");
    out
}

/// Runs doctor.
pub fn run(args: &DoctorArgs) -> anyhow::Result<i32> {
    let host = match (&args.root, &args.collect) {
        (Some(root), _) => {
            if !root.is_dir() {
                eprintln!("tracer: --root {}: not a directory", root.display());
                return Ok(2);
            }
            HostRoot::new(root)
        }
        (None, Some(_)) => HostRoot::tracking("/"),
        (None, None) => HostRoot::live(),
    };
    let logs = Logs::read(&host);
    let report = doctor::run(&host, &logs);
    if let Some(dir) = &args.collect {
        let manifest = collect::collect(dir, args.redact, report.clone(), &host, &logs)?;
        eprintln!(
            "collected {} files into {}{}; check them with: tracer doctor --root {}",
            manifest.files.len(),
            dir.display(),
            if args.redact { " (redacted)" } else { "" },
            dir.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, 160));
    }
    Ok(report.exit_code())
}
