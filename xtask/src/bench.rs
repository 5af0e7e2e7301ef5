//! `cargo xtask bench`: the tracer's cost on a fixed KVM workload against
//! bpftrace counting the same events, measured in the same run with
//! alternating repetitions, and start-up time against bpftrace's. Results go
//! to `target/bench/` (markdown and JSON) with the machine's identity.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{dist, setup};

/// The bpftrace peer: counts, per thread, the same events the tracer
/// records for this workload (SI_TIMER signals, KVM_RUN returns).
const BPFTRACE_SCRIPT: &str = r#"
BEGIN { printf("attached\n"); }
tracepoint:signal:signal_generate /args->code == -2/ { @timer[args->pid] = count(); }
tracepoint:kvm:kvm_userspace_exit { @exits[tid, args->errno] = count(); }
tracepoint:kvm:kvm_exit { @vmexits[tid] = count(); }
"#;

const REPETITIONS: usize = 3;
const WORKLOAD_SECONDS: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Untraced,
    TracerRecord,
    TracerLive,
    Bpftrace,
}

impl Condition {
    fn label(self) -> &'static str {
        match self {
            Self::Untraced => "(a) untraced",
            Self::TracerRecord => "(b) tracer record",
            Self::TracerLive => "(c) tracer live --json to a pipe",
            Self::Bpftrace => "(d) bpftrace counting the same events",
        }
    }
}

/// A traced observer process and, where measured, how long it took from
/// start to all probes attached.
struct Observer {
    child: Child,
    startup: Option<Duration>,
}

fn wait_ready(child: &mut Child, ready: &dyn Fn() -> bool, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early with {status}");
        }
        if started.elapsed() > Duration::from_mins(1) {
            bail!("{what} did not become ready in 60 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(started.elapsed())
}

fn start_observer(
    condition: Condition,
    tracer: &Path,
    work: &Path,
) -> anyhow::Result<Option<Observer>> {
    let started = Instant::now();
    match condition {
        Condition::Untraced => Ok(None),
        Condition::TracerRecord | Condition::TracerLive => {
            let file = work.join("bench.jsonl");
            let _ = std::fs::remove_file(&file);
            let mut command = Command::new(tracer);
            if condition == Condition::TracerRecord {
                command
                    .args(["record", "-d", "600s", "-i", "60s", "-o"])
                    .arg(&file);
                command.stdout(Stdio::null());
            } else {
                // live writes its first line only after an interval; readiness
                // is taken from a parallel record-less probe of attach time
                // below (the same session start).
                command.args(["live", "--json", "-i", "1s", "-d", "600s"]);
                command.stdout(Stdio::piped());
            }
            let mut child = command
                .stderr(Stdio::null())
                .spawn()
                .context("starting tracer")?;
            if condition == Condition::TracerRecord {
                let startup = wait_ready(
                    &mut child,
                    &|| std::fs::read_to_string(&file).is_ok_and(|t| t.contains('\n')),
                    "tracer record",
                )?;
                Ok(Some(Observer {
                    child,
                    startup: Some(startup),
                }))
            } else {
                // Wait for the first JSON line: attached and one interval.
                let stdout = child.stdout.take().context("live stdout")?;
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    use std::io::BufRead as _;
                    let mut lines = std::io::BufReader::new(stdout).lines();
                    if lines.next().is_some() {
                        let _ = tx.send(());
                    }
                    // Keep draining like a pipe reader would.
                    for _ in lines {}
                });
                rx.recv_timeout(Duration::from_mins(1))
                    .context("tracer live printed nothing")?;
                // Its first line comes one interval after attaching: not a
                // start-up time (record's is the same session start).
                Ok(Some(Observer {
                    child,
                    startup: None,
                }))
            }
        }
        Condition::Bpftrace => {
            let mut child = Command::new("bpftrace")
                .arg("-e")
                .arg(BPFTRACE_SCRIPT)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            let stdout = child.stdout.take().context("bpftrace stdout")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if line.contains("attached") {
                        let _ = tx.send(());
                    }
                }
            });
            rx.recv_timeout(Duration::from_mins(1))
                .context("bpftrace did not attach")?;
            Ok(Some(Observer {
                child,
                startup: Some(started.elapsed()),
            }))
        }
    }
}

/// What one observer cost: CPU seconds, peak RSS KiB, start-up time.
type ObserverCost = (f64, u64, Option<Duration>);

/// Stops an observer with SIGINT and returns its CPU seconds and peak RSS (KiB).
fn stop_observer(observer: Observer) -> anyhow::Result<ObserverCost> {
    let Observer { child, startup } = observer;
    let pid = child.id() as i32;
    // SAFETY: signalling and reaping our own child with wait4.
    unsafe {
        libc::kill(pid, libc::SIGINT);
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::wait4(pid, &raw mut status, 0, &raw mut usage) < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        let cpu = usage.ru_utime.tv_sec as f64
            + usage.ru_utime.tv_usec as f64 / 1e6
            + usage.ru_stime.tv_sec as f64
            + usage.ru_stime.tv_usec as f64 / 1e6;
        Ok((cpu, usage.ru_maxrss as u64, startup))
    }
}

fn workload(tracer: &Path) -> anyhow::Result<Value> {
    let out = Command::new(tracer)
        .args(["repro", "--period", "1ms", "--json", "-d"])
        .arg(format!("{WORKLOAD_SECONDS}s"))
        .output()
        .context("running tracer repro")?;
    if !out.status.success() {
        bail!(
            "tracer repro failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("repro JSON")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn machine() -> Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": model,
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
    })
}

/// Runs the benchmark.
pub fn run() -> anyhow::Result<()> {
    setup::apt_package("bpftrace", "bpftrace", "--version");
    let have_bpftrace = Command::new("bpftrace").arg("--version").output().is_ok();
    let outputs = dist::run()?;
    let tracer: PathBuf = outputs.binary;
    let root = setup::workspace_root()?;
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work)?;
    let mut conditions = vec![
        Condition::Untraced,
        Condition::TracerRecord,
        Condition::TracerLive,
    ];
    if have_bpftrace {
        conditions.push(Condition::Bpftrace);
    }
    let mut runs: Vec<(Condition, f64, f64, Option<ObserverCost>)> = Vec::new();
    for repetition in 0..REPETITIONS {
        for &condition in &conditions {
            eprintln!(
                "xtask: bench repetition {} {}",
                repetition + 1,
                condition.label()
            );
            let observer = start_observer(condition, &tracer, &work)?;
            let result = workload(&tracer)?;
            let stats = observer.map(stop_observer).transpose()?;
            let vcpu = &result["vcpus"][0];
            let elapsed = result["elapsed_us"].as_f64().unwrap_or(1.0) / 1e6;
            let runs_per_s = vcpu["kvm_runs"].as_f64().unwrap_or(0.0) / elapsed;
            let iterations_per_s = vcpu["guest_iterations"].as_f64().unwrap_or(0.0) / elapsed;
            runs.push((condition, runs_per_s, iterations_per_s, stats));
        }
    }
    let summarise = |condition: Condition| {
        let mut kvm: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == condition)
            .map(|r| r.1)
            .collect();
        let mut iterations: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == condition)
            .map(|r| r.2)
            .collect();
        let mut cpu: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == condition)
            .filter_map(|r| r.3.map(|s| s.0))
            .collect();
        let rss = runs
            .iter()
            .filter(|r| r.0 == condition)
            .filter_map(|r| r.3.map(|s| s.1))
            .max();
        let mut startup: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == condition)
            .filter_map(|r| r.3.and_then(|s| s.2).map(|d| d.as_secs_f64()))
            .collect();
        json!({
            "condition": condition.label(),
            "kvm_runs_per_s": median(&mut kvm),
            "guest_iterations_per_s": median(&mut iterations),
            "observer_cpu_s": (!cpu.is_empty()).then(|| median(&mut cpu)),
            "observer_peak_rss_kib": rss,
            "startup_s": (!startup.is_empty()).then(|| median(&mut startup)),
        })
    };
    let results: Vec<Value> = conditions.iter().map(|&c| summarise(c)).collect();
    let base = results[0]["guest_iterations_per_s"].as_f64().unwrap_or(1.0);
    let ratio = |index: usize| {
        results
            .get(index)
            .and_then(|r| r["guest_iterations_per_s"].as_f64())
            .map(|v| v / base)
    };
    let mut table = format!(
        "Workload: `tracer repro --period 1ms -d {WORKLOAD_SECONDS}s` (1 vCPU, per-run 1 ms SIGUSR1 timer: every KVM_RUN ends in a signal and an EINTR exit), {REPETITIONS} alternating repetitions, medians. Machine: {}.\n\n| condition | KVM_RUN/s | guest iterations/s | throughput vs untraced | observer CPU s | observer peak RSS MiB | start-up s |\n|---|---|---|---|---|---|---|\n",
        machine()
    );
    for (index, result) in results.iter().enumerate() {
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.3} | {} | {} | {} |",
            result["condition"].as_str().unwrap_or(""),
            result["kvm_runs_per_s"].as_f64().unwrap_or(0.0),
            result["guest_iterations_per_s"].as_f64().unwrap_or(0.0),
            ratio(index).unwrap_or(0.0),
            result["observer_cpu_s"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.3}")),
            result["observer_peak_rss_kib"]
                .as_u64()
                .map_or("-".into(), |v| format!("{:.1}", v as f64 / 1024.0)),
            result["startup_s"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    if let (Some(tracer_ratio), Some(bpftrace_ratio)) = (ratio(1), ratio(3)) {
        let _ = writeln!(
            table,
            "\nOverhead (1 - throughput ratio): tracer record {:.1}%, bpftrace {:.1}%; (b)/(d) throughput ratio {:.3}.",
            (1.0 - tracer_ratio) * 100.0,
            (1.0 - bpftrace_ratio) * 100.0,
            tracer_ratio / bpftrace_ratio
        );
    } else {
        table.push_str("\nbpftrace unavailable: no peer column.\n");
    }
    println!("{table}");
    std::fs::write(work.join("results.md"), &table)?;
    std::fs::write(
        work.join("results.json"),
        serde_json::to_string_pretty(&json!({"machine": machine(), "results": results}))?,
    )?;
    println!("bench: results in {}", work.display());
    Ok(())
}
