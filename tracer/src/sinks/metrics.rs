//! `tracer serve`'s publisher: each interval it encodes the rows as
//! Prometheus text for `/metrics`, marks `/healthz` ready, and logs verdict
//! changes as JSON lines on stderr. The HTTP endpoint is [`serve_http`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

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
    Ok(tokio::spawn(accept_loop(listener, app)))
}

/// Connections served at once; further ones are closed as they arrive
/// until a slot frees.
pub const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing (a scrape
/// takes milliseconds).
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Accepts connections and serves one request on each (no keep-alive: a
/// Prometheus scrape every few seconds does not need it, and an idle
/// connection cannot hold a slot): at most [`MAX_CONNECTIONS`] at once,
/// each closed when its headers take longer than [`HEADER_READ_TIMEOUT`]
/// or it lives longer than [`CONNECTION_DEADLINE`]. So connections left
/// open by clients free their slots within seconds and `/healthz` keeps
/// answering.
async fn accept_loop(listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let service = hyper_util::service::TowerToHyperService::new(app);
    loop {
        // Out of descriptors or a connection reset before accept: try
        // again shortly rather than end the server.
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
            drop(slot);
        });
    }
}
