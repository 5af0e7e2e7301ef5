//! `tracer-testkit`: the test and benchmark generators, kept out of the
//! shipped `tracer` binary (built only with the `testkit` feature):
//! `simulate` writes a modelled recording (never a captured one) of a vCPU
//! that runs healthy, then livelocks; `signal-storm` makes threads take
//! POSIX timer signals at a rate.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracer::{
    cli::{parse_duration_millis, parse_duration_seconds},
    simulate::{ProbeSet, Scenario},
};

/// Test and benchmark generators of the split-lock tracer.
#[derive(Debug, Parser)]
#[command(name = "tracer-testkit", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a modelled recording (never a captured one) of a vCPU that runs healthy, then livelocks.
    Simulate(SimulateArgs),
    /// Threads taking POSIX timer signals at a rate (JSON counts on stdout).
    SignalStorm(SignalStormArgs),
}

/// Probe set of a modelled recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModelledProbes {
    /// kprobes and tracepoints.
    Full,
    /// Tracepoints only.
    TracepointOnly,
}

/// `tracer-testkit simulate` (used by `cargo xtask bench` for the verdict
/// latency).
#[derive(Debug, Args)]
struct SimulateArgs {
    /// Output file.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Overwrite an existing file.
    #[arg(long = "force")]
    force: bool,
    /// Probes the modelled tracer had.
    #[arg(long = "probes", value_enum, default_value = "full")]
    probes: ModelledProbes,
    /// VMM timer period.
    #[arg(long = "period", default_value = "1ms", value_parser = parse_duration_millis)]
    period: Duration,
    /// Kernel HZ.
    #[arg(long = "hz", default_value_t = 250)]
    hz: u32,
    /// Time before the punishment starts (`kernel.split_lock_mitigate` 0, then 1).
    #[arg(long = "healthy", default_value = "5s", value_parser = parse_duration_seconds)]
    healthy: Duration,
    /// Whole length of the run.
    #[arg(short = 'd', long = "duration", default_value = "10s", value_parser = parse_duration_seconds)]
    duration: Duration,
    /// Process id of the modelled VMM.
    #[arg(long = "pid", default_value_t = 4242)]
    pid: u32,
    /// Thread id of the modelled vCPU thread.
    #[arg(long = "tid", default_value_t = 4250)]
    tid: u32,
    /// Name of the modelled VM.
    #[arg(long = "vm-name", default_value = "haos")]
    vm_name: String,
    /// vCPU index of the modelled thread.
    #[arg(long = "vcpu", default_value_t = 0)]
    vcpu: u32,
}

/// `tracer-testkit signal-storm` (used by `cargo xtask bench`).
#[derive(Debug, Args)]
struct SignalStormArgs {
    /// Threads, each with its own timer.
    #[arg(long = "threads", default_value_t = 1)]
    threads: u32,
    /// Total signals per second over all threads (default: as fast as possible).
    #[arg(long = "rate")]
    rate: Option<f64>,
    /// How long the timers run (`10s`, plain seconds).
    #[arg(short = 'd', long = "duration", default_value = "10s", value_parser = parse_duration_seconds)]
    duration: Duration,
    /// Signal number (SIGUSR1 = 10).
    #[arg(long = "signal", default_value_t = libc::SIGUSR1)]
    signal: i32,
    /// Name the threads `vcpuN`, as cloud-hypervisor names its vCPU
    /// threads, so the tracer tracks and records them; without it they are
    /// `storm-N` and the tracer only counts their signals per CPU.
    #[arg(long = "vcpu-names")]
    vcpu_names: bool,
}

fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    let mut scenario = Scenario::seed_001(
        args.hz,
        args.period.as_secs_f64() * 1e3,
        u64::try_from(args.duration.as_millis()).unwrap_or(u64::MAX),
    )
    .with_identity(args.pid, args.tid, &args.vm_name, args.vcpu);
    let healthy_ns = u64::try_from(args.healthy.as_nanos()).unwrap_or(u64::MAX);
    scenario.mitigate = vec![(0, false), (healthy_ns, true)];
    scenario.probes = match args.probes {
        ModelledProbes::Full => ProbeSet::Full,
        ModelledProbes::TracepointOnly => ProbeSet::TracepointOnly,
    };
    let events = tracer::simulate::write_recording(
        &args.output,
        args.force,
        std::slice::from_ref(&scenario),
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
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Simulate(args) => simulate(&args),
        Command::SignalStorm(args) => {
            let report = tracer::storm::run(&tracer::storm::StormConfig {
                threads: args.threads,
                rate: args.rate,
                duration: args.duration,
                signal: args.signal,
                vcpu_names: args.vcpu_names,
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}
