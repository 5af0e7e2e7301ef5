//! `tracer live`: the live table (or JSON lines), optionally recording.

use crate::{
    cli::LiveArgs,
    runner::{Runner, runtime},
    sinks::{RowFilter, json::JsonLines, recorder::PendingRecording, terminal::TerminalView},
};

/// Runs the live view.
pub fn run(args: &LiveArgs) -> anyhow::Result<i32> {
    let recording = args
        .record
        .as_deref()
        .map(|path| PendingRecording::create(path, args.output.force))
        .transpose()?;
    // The session registers its ring buffer with the runtime: start it inside.
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let mut runner = Runner::start(&args.trace, args.interval)?;
    if let Some(pending) = recording {
        if args.output.redact {
            runner.redact();
        }
        let recorder = pending.start(&mut runner, args.trace.pid)?;
        runner.add_sink(Box::new(recorder));
    }
    let filter = RowFilter {
        all: args.all,
        pid: args.trace.pid,
        vm: args.vm.clone(),
    };
    if args.json {
        runner.add_sink(Box::new(JsonLines::new(filter)));
    } else {
        let (view, quit) = TerminalView::new(filter);
        if let Some(quit) = quit {
            runner.stop_on(quit);
        }
        runner.add_sink(Box::new(view));
    }
    runtime.block_on(runner.run())
}
