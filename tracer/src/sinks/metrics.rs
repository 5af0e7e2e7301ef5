//! `tracer serve`'s publisher: each interval it encodes the rows as
//! Prometheus text for `/metrics`, marks `/healthz` ready, and logs verdict
//! changes as JSON lines on stderr. The HTTP endpoint is [`serve_http`].

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tracer_events::Verdict;

use crate::runner::{Sink, Tick};

/// What the HTTP handlers read, replaced every interval.
#[derive(Debug, Default)]
pub struct Published {
    metrics: String,
    ticks: u64,
}

/// One structured log line on stderr.
pub fn log_json(event: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({
        "ts": tracer_events::clock_ns(libc::CLOCK_REALTIME) / 1_000_000,
        "event": event,
    });
    if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    eprintln!("{line}");
}

/// The metrics sink.
#[derive(Debug, Default)]
pub struct MetricsPublisher {
    published: Arc<Mutex<Published>>,
}

impl MetricsPublisher {
    /// A publisher with nothing published yet (`/healthz` says starting).
    pub fn new() -> Self {
        Self::default()
    }

    /// What the HTTP handlers read.
    pub fn published(&self) -> Arc<Mutex<Published>> {
        Arc::clone(&self.published)
    }
}

/// Verdicts worth a log line when a thread enters or leaves them.
fn notable(verdict: Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Livelock | Verdict::Killed | Verdict::KvmError | Verdict::Throttled
    )
}

impl Sink for MetricsPublisher {
    fn tick(&mut self, tick: &Tick<'_>) -> anyhow::Result<()> {
        let identity = |pid: u32| {
            let info = tick.model.processes().get(&pid);
            (
                info.and_then(|info| info.name.clone().or_else(|| info.comm.clone()))
                    .unwrap_or_default(),
                info.and_then(|info| info.vmid.clone()).unwrap_or_default(),
            )
        };
        let text = crate::metrics::encode_metrics(
            tick.rows,
            identity,
            tick.status,
            tick.losses,
            tick.probes,
        );
        if let Ok(mut published) = self.published.lock() {
            published.metrics = text;
            published.ticks += 1;
        }
        for change in tick.changes {
            let entered_or_left = notable(change.to) || change.from.is_some_and(notable);
            if change.from == Some(change.to) || !entered_or_left {
                continue;
            }
            let row = tick.rows.iter().find(|row| row.tid == change.tid);
            log_json(
                "verdict",
                serde_json::json!({
                    "pid": change.pid, "tid": change.tid, "vcpu": change.vcpu,
                    "vm": row.and_then(|row| row.vm.clone()),
                    "from": change.from.map(Verdict::label),
                    "to": row.map_or_else(|| change.to.label().to_owned(), tracer_events::ThreadRow::verdict_label),
                    "evidence": row.map(|row| row.evidence.clone()).unwrap_or_default(),
                }),
            );
        }
        Ok(())
    }
}

/// Serves `/metrics` and `/healthz` from `published` on `listener` until
/// the returned task is aborted.
pub async fn serve_http(
    listen: std::net::SocketAddr,
    published: Arc<Mutex<Published>>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    if !listen.ip().is_loopback() {
        log_json(
            "warning",
            serde_json::json!({"message": format!("listening on {listen}, reachable from other hosts")}),
        );
    }
    let metrics_state = Arc::clone(&published);
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let state = Arc::clone(&metrics_state);
                async move {
                    let text = state.lock().map(|p| p.metrics.clone()).unwrap_or_default();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let state = Arc::clone(&published);
                async move {
                    if state.lock().map_or(0, |p| p.ticks) > 0 {
                        (axum::http::StatusCode::OK, "ok\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    log_json(
        "listening",
        serde_json::json!({"address": listen.to_string()}),
    );
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}
