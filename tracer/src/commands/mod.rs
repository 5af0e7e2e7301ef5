//! One module per subcommand; each exposes `run(args) -> anyhow::Result<i32>`
//! returning the process exit code.

pub mod assets;
pub mod doctor;
pub mod live;
pub mod probes;
pub mod report;
pub mod repro;

use crate::cli::Command;

/// Runs a parsed subcommand and returns the exit code.
pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Live(args) => live::run(&args),
        Command::Record(args) => live::record(&args),
        Command::Report(args) => report::run(&args),
        Command::Serve(args) => live::serve(&args),
        Command::GenerateAssets { dir } => assets::generate(&dir).map(|()| 0),
        Command::Doctor(args) => doctor::run(&args),
        Command::Probes(args) => probes::run(&args),
        Command::Repro(args) => repro::run(&args),
        Command::Simulate(args) => simulate(&args),
        Command::SignalStorm(args) => {
            let report = crate::storm::run(&crate::storm::StormConfig {
                threads: args.threads,
                rate: args.rate,
                duration: args.duration,
                signal: args.signal,
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(0)
        }
    }
}

/// Writes the modelled recording and prints, as JSON, where the pattern
/// starts in it (the model's ground truth for the verdict latency).
fn simulate(args: &crate::cli::SimulateArgs) -> anyhow::Result<i32> {
    use crate::simulate::{ProbeSet, Scenario};
    let mut scenario = Scenario::seed_001(
        args.hz,
        args.period.as_secs_f64() * 1e3,
        u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX),
    );
    let healthy_ns = u64::try_from(args.healthy.as_nanos()).unwrap_or(u64::MAX);
    scenario.mitigate = vec![(0, false), (healthy_ns, true)];
    scenario.probes = match args.probes {
        crate::cli::ModelledProbes::Full => ProbeSet::Full,
        crate::cli::ModelledProbes::TracepointOnly => ProbeSet::TracepointOnly,
    };
    let events = crate::simulate::write_recording(
        &args.output,
        args.force,
        &[scenario.clone()],
        scenario.probes,
    )?;
    println!(
        "{}",
        serde_json::json!({
            "file": args.output,
            "events": events,
            "tid": scenario.tid,
            "punishment_from_ns": scenario.start_ns + healthy_ns,
        })
    );
    Ok(0)
}
