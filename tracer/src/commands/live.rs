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
    let full_screen =
        !args.json && std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if args.json {
        runner.add_sink(Box::new(JsonLines::new(filter)));
    } else if full_screen {
        // The full-screen view owns the terminal: the eBPF programs'
        // messages are counted in its header and printed after it ends.
        runner.session().ebpf_log.hold_stderr(true);
        let (view, quit) = TuiView::start(filter, runner.host())?;
        runner.stop_on(quit);
        runner.add_sink(Box::new(view));
    } else {
        runner.add_sink(Box::new(TerminalView::new(filter)));
    }
    let ebpf_log = std::sync::Arc::clone(&runner.session().ebpf_log);
    let code = runtime.block_on(runner.run());
    let messages = ebpf_log.messages.load(std::sync::atomic::Ordering::Relaxed);
    if full_screen && messages > 0 {
        for line in ebpf_log.recent() {
            eprintln!("{line}");
        }
        eprintln!("tracer: the eBPF programs logged {messages} messages (the last ones above)");
    }
    code
}
