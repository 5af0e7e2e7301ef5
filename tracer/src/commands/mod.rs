//! One module per subcommand; each exposes `run(args) -> anyhow::Result<i32>`
//! returning the process exit code.

pub mod assets;
pub mod doctor;
pub mod live;
pub mod probes;
pub mod record;
pub mod report;
pub mod repro;
pub mod serve;

use std::path::Path;

use crate::{
    cli::{Command, OutputArgs, TraceArgs},
    runner::Runner,
    sinks::recorder::PendingRecording,
};

/// What live, record and serve start the same way: the output file first
/// (a bad path fails before tracing, and it is removed if the session
/// cannot start), then the runner, with the recorder as its first sink when
/// `record` is given. Must run inside the tokio runtime (the session
/// registers its ring buffer with it). Returns the runner and, when
/// recording, the live count of event lines written.
pub fn start_runner(
    trace: &TraceArgs,
    interval: std::time::Duration,
    record: Option<&Path>,
    output: &OutputArgs,
) -> anyhow::Result<(Runner, Option<std::sync::Arc<std::sync::atomic::AtomicU64>>)> {
    let pending = record
        .map(|path| PendingRecording::create(path, output.force))
        .transpose()?;
    let mut runner = Runner::start(trace, interval)?;
    let written = match pending {
        Some(pending) => {
            if output.redact {
                runner.redact();
            }
            let recorder = pending.start(&mut runner, trace.pid)?;
            let written = recorder.events_written();
            runner.add_sink(Box::new(recorder));
            Some(written)
        }
        None => None,
    };
    Ok((runner, written))
}

/// Runs a parsed subcommand and returns the exit code.
pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Live(args) => live::run(&args),
        Command::Record(args) => record::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::GenerateAssets { dir } => assets::generate(&dir).map(|()| 0),
        Command::Doctor(args) => doctor::run(&args),
        Command::Probes(args) => probes::run(&args),
        Command::Repro(args) => repro::run(&args),
    }
}
