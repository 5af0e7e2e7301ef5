//! `tracer serve` scraped by a real Prometheus server (Debian's package)
//! while the KVM reproducer runs: the counters that arrive through
//! Prometheus' query API equal the reproducer's own counts.

mod common;

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{assert_counted, have_kvm, have_root, skip, split_lock_repro, tkill_repro};
use tracer::repro::{self, TimerMode};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> Result<String, String> {
    ureq::get(url)
        .call()
        .map_err(|error| error.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|error| error.to_string())
}

fn wait_for(url: &str, what: &str) {
    let started = Instant::now();
    while get(url).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not come up at {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Largest value of `query` over the last minute, through the HTTP API.
fn query_max(prometheus: &str, query: &str) -> Option<f64> {
    let expression = format!("max_over_time({query}[1m])");
    let url = format!(
        "{prometheus}/api/v1/query?query={}",
        expression
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let body: serde_json::Value = serde_json::from_str(&get(&url).ok()?).ok()?;
    let value = body["data"]["result"].get(0)?["value"][1]
        .as_str()?
        .to_owned();
    value.parse().ok()
}

#[test]
fn prometheus_scrapes_the_vcpu_counters_of_the_reproducer() {
    let name = "prometheus_scrape";
    if !have_root(name) || !have_kvm(name) {
        return;
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            name,
            "Debian's prometheus package is not installed (cargo xtask test installs it with apt-get)",
        );
        return;
    }
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/alerts.yml"
    );
    let check = Command::new("promtool")
        .args(["check", "rules", rules])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    let tracer_port = free_port();
    let serve = Killed(
        Command::new(TRACER)
            .args(["serve", "-i", "250ms", "--listen"])
            .arg(format!("127.0.0.1:{tracer_port}"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(
        &format!("http://127.0.0.1:{tracer_port}/healthz"),
        "tracer serve",
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: split-lock-tracer\n    static_configs:\n      - targets: ['127.0.0.1:{tracer_port}']\n"
        ),
    )
    .unwrap();
    let prometheus_port = free_port();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");
    wait_for(&format!("{prometheus}/-/ready"), "prometheus");
    // Prometheus delays its first scrape (target discovery is applied a few
    // seconds after start): wait until it has scraped the tracer once.
    let started = Instant::now();
    while query_max(&prometheus, "up{job=\"split-lock-tracer\"}") != Some(1.0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prometheus never scraped tracer serve"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let report = repro::run(&split_lock_repro(
        Duration::from_millis(1),
        Duration::from_millis(1500),
        1,
        TimerMode::PerRun,
    ))
    .unwrap();
    let vcpu = &report.vcpus[0];
    let selector = format!("{{tid=\"{}\",vcpu=\"0\",pid=\"{}\"}}", vcpu.tid, report.pid);
    // Wait until a scrape after the run's end reached Prometheus.
    let started = Instant::now();
    let (signals, eintr) = loop {
        let signals = query_max(
            &prometheus,
            &format!("split_lock_tracer_timer_signals_total{selector}"),
        );
        let eintr = query_max(
            &prometheus,
            &format!("split_lock_tracer_eintr_exits_total{selector}"),
        );
        if let (Some(signals), Some(eintr)) = (signals, eintr)
            && (signals as u64 >= vcpu.signals_consumed
                || started.elapsed() > Duration::from_secs(8))
        {
            break (signals as u64, eintr as u64);
        }
        if started.elapsed() > Duration::from_secs(20) {
            let targets = get(&format!("{prometheus}/api/v1/targets")).unwrap_or_default();
            let series = get(&format!(
                "{prometheus}/api/v1/query?query=split_lock_tracer_timer_signals_total"
            ))
            .unwrap_or_default();
            let metrics =
                get(&format!("http://127.0.0.1:{tracer_port}/metrics")).unwrap_or_default();
            panic!(
                "the vCPU series never reached Prometheus; targets: {targets}; series: {series}; metrics: {metrics}"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let lost =
        query_max(&prometheus, "sum(split_lock_tracer_lost_events_total)").unwrap_or(0.0) as u64;
    assert_counted(
        "timer signals via Prometheus",
        signals,
        vcpu.signals_consumed,
        lost,
    );
    assert_counted(
        "EINTR exits via Prometheus",
        eintr,
        vcpu.eintr_returns,
        lost,
    );
    let verdict = query_max(
        &prometheus,
        &format!(
            "split_lock_tracer_vcpu_verdict{{tid=\"{}\",verdict=\"ok\"}}",
            vcpu.tid
        ),
    );
    assert_eq!(verdict, Some(1.0));

    // QEMU's kick: the main thread pthread_kills the vCPU thread every
    // millisecond. Every kick reaches Prometheus as a tkill SIGUSR1 kick,
    // exactly (the kernel's counter; tkill signals are not timer signals,
    // so no skip tally covers them).
    let report = repro::run(&tkill_repro(
        Duration::from_millis(1),
        Duration::from_millis(1500),
        1,
    ))
    .unwrap();
    let vcpu = &report.vcpus[0];
    assert!(vcpu.kicks_sent > 500, "{vcpu:?}");
    let query = format!(
        "split_lock_tracer_kick_signals_total{{tid=\"{}\",vcpu=\"0\",pid=\"{}\",signal=\"SIGUSR1\",kind=\"tkill\"}}",
        vcpu.tid, report.pid
    );
    let started = Instant::now();
    let kicks = loop {
        let kicks = query_max(&prometheus, &query);
        if kicks.is_some_and(|kicks| kicks as u64 >= vcpu.kicks_sent)
            || started.elapsed() > Duration::from_secs(15)
        {
            break kicks;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        kicks.map(|kicks| kicks as u64),
        Some(vcpu.kicks_sent),
        "{query}"
    );
    drop(serve);
}

/// Connections a client opens and never uses cannot take `serve` down:
/// more idle connections than its limit are opened at once, each one is
/// closed by the server within the header-read timeout, and `/healthz`
/// answers again within that time (before, idle connections were kept for
/// ever and enough of them exhausted its descriptors).
#[test]
fn idle_connections_are_closed_and_healthz_keeps_answering() {
    let name = "idle_connections_are_closed_and_healthz_keeps_answering";
    if !have_root(name) {
        return;
    }
    let port = free_port();
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let _serve = Killed(
        Command::new(TRACER)
            .args(["serve", "-i", "200ms", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while get(&healthz).as_deref() != Ok("ok\n") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let limit = tracer::sinks::metrics::MAX_CONNECTIONS;
    let timeout = tracer::sinks::metrics::HEADER_READ_TIMEOUT;
    let mut idle: Vec<std::net::TcpStream> = (0..limit + 100)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let opened = Instant::now();
    // Every idle connection is closed by the server (EOF on read) within
    // the timeout and a little slack.
    let slack = Duration::from_secs(3);
    for stream in &mut idle {
        let left = (timeout + slack).saturating_sub(opened.elapsed());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut byte = [0u8; 1];
        match std::io::Read::read(stream, &mut byte) {
            Ok(0) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "an idle connection was still open {:?} after it was opened: {other:?}",
                opened.elapsed()
            ),
        }
    }
    // And the server answers again while the clients still hold their
    // (now closed) sockets.
    let answered = Instant::now();
    while get(&healthz).as_deref() != Ok("ok\n") {
        assert!(
            answered.elapsed() < slack,
            "/healthz did not answer after the idle connections were closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(idle);
}
