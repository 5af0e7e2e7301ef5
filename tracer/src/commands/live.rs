//! `tracer live`: the live table (or JSON lines), optionally recording.

use crate::{
    cli::LiveArgs,
    runner::runtime,
    sinks::{RowFilter, json::JsonLines, terminal::TerminalView},
};

/// Runs the live view.
pub fn run(args: &LiveArgs) -> anyhow::Result<i32> {
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let (mut runner, _) = super::start_runner(
        &args.trace,
        args.interval,
        args.record.as_deref(),
        &args.output,
    )?;
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
