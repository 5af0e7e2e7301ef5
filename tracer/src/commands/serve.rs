//! `tracer serve`: headless, with Prometheus metrics on `--listen` and
//! verdict changes logged on stderr; optionally recording.

use crate::{
    cli::ServeArgs,
    runner::runtime,
    sinks::metrics::{MetricsPublisher, log_json, serve_http},
};

/// Runs `tracer serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<i32> {
    let runtime = runtime()?;
    let _inside = runtime.enter();
    let (mut runner, _) = super::start_runner(
        &args.trace,
        args.interval,
        args.record.as_deref(),
        &args.output,
    )?;
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
