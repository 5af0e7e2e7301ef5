//! `tracer serve`: headless, with Prometheus metrics on `--listen` and
//! verdict changes logged on stderr; optionally recording.

use crate::{
    cli::ServeArgs,
    runner::{Runner, runtime},
    sinks::{
        metrics::{MetricsPublisher, log_json, serve_http},
        recorder::PendingRecording,
    },
};

/// Runs `tracer serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<i32> {
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
    let metrics = MetricsPublisher::new();
    let endpoint_state = metrics.published();
    runner.add_sink(Box::new(metrics));
    runtime.block_on(async {
        let server = serve_http(args.listen, endpoint_state).await?;
        let result = runner.run().await;
        server.abort();
        log_json("stopped", serde_json::json!({"ok": result.is_ok()}));
        result
    })
}
