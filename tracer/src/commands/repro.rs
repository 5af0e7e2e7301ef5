//! `tracer repro`: the KVM split-lock reproducer.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use anyhow::{Context as _, bail};

use crate::{
    cli::ReproArgs,
    repro::{
        self, ReproConfig, ReproReport,
        sweep::{self, SweepHost, SweepRange},
        sweep_trace::SweepTracer,
    },
};

/// Runs one period or a sweep and prints per-period progress.
pub fn run(args: &ReproArgs) -> anyhow::Result<i32> {
    let template = ReproConfig {
        period: args.period,
        duration: args.duration,
        vcpus: args.vcpus,
        signal: args.signal,
        guest: args.guest,
        timer_mode: args.timer_mode,
        kick: args.kick,
    };
    if let Some(range) = args.sweep {
        return run_sweep(args, range, &template);
    }
    if !args.json {
        announce(&template);
    }
    let report = repro::run(&template)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", render(std::slice::from_ref(&report)));
        println!("{NOTE}");
    }
    Ok(0)
}

const NOTE: &str = "On a host with split-lock detection (warn) and kernel.split_lock_mitigate=1, periods below the \
     punishment sleep show 0 iterations; here every period that shows progress was not livelocked.";

fn announce(config: &ReproConfig) {
    eprintln!(
        "repro: pid {} period {:?} for {:?} on {} vCPU(s)...",
        std::process::id(),
        config.period,
        config.duration,
        config.vcpus
    );
}

fn run_sweep(args: &ReproArgs, range: SweepRange, template: &ReproConfig) -> anyhow::Result<i32> {
    let periods = range.periods(args.step)?;
    let table_paths = args
        .table
        .as_ref()
        .map(|csv| {
            if csv.extension().is_some_and(|ext| ext == "json") {
                bail!(
                    "--table takes the CSV path ({} ends in .json; the JSON table is written beside the CSV)",
                    csv.display()
                );
            }
            Ok((csv.clone(), csv.with_extension("json")))
        })
        .transpose()?;
    // Refuse existing outputs before a sweep of minutes, not after it.
    let outputs = args
        .plot
        .iter()
        .chain(table_paths.iter().flat_map(|(csv, json)| [csv, json]));
    let mut seen = std::collections::HashSet::new();
    for path in outputs {
        if !seen.insert(path) {
            bail!("{} is given for two outputs of the sweep", path.display());
        }
        if !args.force && std::fs::symlink_metadata(path).is_ok() {
            bail!("{} exists (use --force to replace it)", path.display());
        }
        // A directory that does not exist fails now, not after the sweep.
        let parent = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            bail!("{}: no directory {}", path.display(), parent.display());
        }
    }
    // The tracer's own probes count what the reproducer cannot see.
    let mut tracer = match SweepTracer::start() {
        Ok(tracer) => Some(tracer),
        Err(error) => {
            eprintln!(
                "repro: the sweep runs without the tracer's probes (no #AC, punishment or verdict columns): {error:#}"
            );
            None
        }
    };
    let table = sweep::run(
        template,
        &periods,
        SweepHost::read(),
        tracer.as_mut(),
        |period| {
            if !args.json {
                announce(&ReproConfig {
                    period,
                    ..template.clone()
                });
            }
        },
    )?;
    if args.json {
        for report in &table.reports {
            println!("{}", serde_json::to_string(report)?);
        }
    } else {
        println!("{}", render(&table.reports));
        for line in table.caption() {
            println!("{line}");
        }
        for (column, reason) in &table.unavailable {
            println!("{column}: {reason}");
        }
    }
    if let Some((csv, json)) = &table_paths {
        sweep::write_output(csv, &table.to_csv(), args.force)?;
        let mut text = serde_json::to_string_pretty(&table).context("encoding the sweep table")?;
        text.push('\n');
        sweep::write_output(json, &text, args.force)?;
        eprintln!("repro: wrote {} and {}", csv.display(), json.display());
    }
    if let Some(plot) = &args.plot {
        sweep::write_output(plot, &table.to_svg()?, args.force)?;
        eprintln!("repro: wrote {}", plot.display());
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
