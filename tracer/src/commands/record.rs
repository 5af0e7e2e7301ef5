//! `tracer record`: every event, loss and verdict to a file, with a
//! progress line on stderr.

use crate::{cli::RecordArgs, runner::runtime, sinks::progress::ProgressLine};

/// Runs `tracer record`.
pub fn run(args: &RecordArgs) -> anyhow::Result<i32> {
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let (mut runner, written) = super::start_runner(
        &args.trace,
        args.interval,
        Some(&args.output),
        &args.options,
    )?;
    runner.add_sink(Box::new(ProgressLine::new(written.unwrap_or_default())));
    runtime.block_on(runner.run())
}
