//! `tracer live`: the full-screen view on a terminal, a plain table per
//! interval on a pipe, or JSON lines; optionally recording.

use std::io::IsTerminal as _;

use crate::{
    cli::LiveArgs,
    runner::runtime,
    sinks::{RowFilter, json::JsonLines, terminal::TerminalView, tui::TuiView},
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
    } else if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        let (view, quit) = TuiView::start(filter, runner.host())?;
        runner.stop_on(quit);
        runner.add_sink(Box::new(view));
    } else {
        runner.add_sink(Box::new(TerminalView::new(filter)));
    }
    runtime.block_on(runner.run())
}
