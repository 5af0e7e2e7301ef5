//! `tracer repro`: the KVM split-lock reproducer.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::{
    cli::ReproArgs,
    repro::{self, ReproConfig, ReproReport},
};

/// Runs one period or a sweep and prints per-period progress.
pub fn run(args: &ReproArgs) -> anyhow::Result<i32> {
    let periods: Vec<std::time::Duration> = match args.sweep {
        Some((from, to)) => (from..=to)
            .step_by(args.step.max(1) as usize)
            .map(std::time::Duration::from_millis)
            .collect(),
        None => vec![args.period],
    };
    let mut reports = Vec::new();
    for period in periods {
        let config = ReproConfig {
            period,
            duration: args.duration,
            vcpus: args.vcpus,
            signal: args.signal,
            guest: args.guest,
            timer_mode: args.timer_mode,
            kick: args.kick,
        };
        if !args.json {
            eprintln!(
                "repro: pid {} period {:?} for {:?} on {} vCPU(s)...",
                std::process::id(),
                period,
                args.duration,
                args.vcpus
            );
        }
        let report = repro::run(&config)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        reports.push(report);
    }
    if !args.json {
        println!("{}", render(&reports));
        println!(
            "On a host with split-lock detection (warn) and kernel.split_lock_mitigate=1, periods below the \
             punishment sleep show 0 iterations; here every period that shows progress was not livelocked."
        );
    }
    Ok(0)
}

/// Per-period, per-vCPU table.
pub fn render(reports: &[ReproReport]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "period",
        "vCPU",
        "tid",
        "KVM_RUN",
        "EINTR",
        "signals",
        "other exits",
        "guest iterations",
        "iter/ms",
    ]);
    for report in reports {
        for vcpu in &report.vcpus {
            let other = vcpu
                .other_exits
                .iter()
                .map(|(name, count)| format!("{name}={count}"))
                .collect::<Vec<_>>()
                .join(" ");
            let per_ms =
                vcpu.guest_iterations as f64 / (report.elapsed_us as f64 / 1000.0).max(1e-9);
            table.add_row([
                format!("{:.3} ms", report.period_us as f64 / 1000.0),
                vcpu.index.to_string(),
                vcpu.tid.to_string(),
                vcpu.kvm_runs.to_string(),
                vcpu.eintr_returns.to_string(),
                vcpu.signals_consumed.to_string(),
                if other.is_empty() { "-".into() } else { other },
                vcpu.guest_iterations.to_string(),
                format!("{per_ms:.1}"),
            ]);
        }
    }
    table
}
