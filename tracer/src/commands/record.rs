//! `tracer record`: every event, loss and verdict to a file, with a
//! progress line on stderr.

use crate::{
    cli::RecordArgs,
    runner::{Runner, runtime},
    sinks::{progress::ProgressLine, recorder::PendingRecording},
};

/// Runs `tracer record`.
pub fn run(args: &RecordArgs) -> anyhow::Result<i32> {
    // The file first, so a bad path fails before tracing starts; it is
    // removed again if the session cannot start.
    let pending = PendingRecording::create(&args.output, args.options.force)?;
    // The session registers its ring buffer with the runtime: start it inside.
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let mut runner = Runner::start(&args.trace, args.interval)?;
    if args.options.redact {
        runner.redact();
    }
    let recorder = pending.start(&mut runner, args.trace.pid)?;
    let progress = ProgressLine::new(recorder.events_written());
    runner.add_sink(Box::new(recorder));
    runner.add_sink(Box::new(progress));
    runtime.block_on(runner.run())
}
