//! The observers the benchmark compares: the tracer (`record`, `live`),
//! bpftrace counting the same tracepoints, and `perf record` writing them.
//! Each is started, waited for until attached where it says so, and
//! stopped with SIGINT; its CPU time comes from `wait4`, its peak RSS from
//! `VmHWM` in `/proc/PID/status`, read until it exits. (`wait4`'s
//! `ru_maxrss` is no use here: the kernel starts a child's maximum at the
//! high-water mark of the address space it replaced at exec, the spawning
//! xtask's, so every observer would seem at least as large as the xtask.)

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The bpftrace peer: counts, per thread, the events the tracer takes from
/// the same tracepoints (timer and tkill signals by target and si_code,
/// KVM_RUN returns, VM exits).
const BPFTRACE_SCRIPT: &str = r#"
BEGIN { printf("attached\n"); }
tracepoint:signal:signal_generate /args->code == -2 || args->code == -6/ { @signals[args->pid, args->code] = count(); }
tracepoint:kvm:kvm_userspace_exit { @exits[tid, args->errno] = count(); }
tracepoint:kvm:kvm_exit { @vmexits[tid] = count(); }
"#;

/// How long `perf record` gets to open its events: it does not say when it
/// has (measured here: well under a second).
const PERF_SETTLE: Duration = Duration::from_secs(1);

/// Who observes the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObserverKind {
    /// `tracer record -o FILE`.
    TracerRecord,
    /// `tracer record --ebpf-log -o FILE`: the eBPF programs loaded with
    /// their logging on (nothing to log in a healthy run).
    TracerRecordEbpfLog,
    /// `tracer live --json` into a pipe that is read and discarded.
    TracerLive,
    /// bpftrace counting the same events per thread.
    Bpftrace,
    /// `perf record -a` of the same tracepoints.
    PerfRecord,
}

impl ObserverKind {
    /// Row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::TracerRecord => "(b) tracer record",
            Self::TracerRecordEbpfLog => "(b2) tracer record --ebpf-log",
            Self::TracerLive => "(c) tracer live --json to a pipe",
            Self::Bpftrace => "(d) bpftrace counting the same events",
            Self::PerfRecord => "(e) perf record -a of the same tracepoints",
        }
    }
}

/// A running observer.
pub struct Observer {
    child: Child,
    /// Spawn to attached, where the observer tells.
    pub startup: Option<Duration>,
    /// The recording (`tracer record`) or perf.data.
    pub output: Option<PathBuf>,
    stdout: Arc<Mutex<String>>,
}

/// What an observer cost and left behind.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// User + system CPU seconds over its whole life.
    pub cpu_s: f64,
    /// Peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// Spawn to attached.
    pub startup: Option<Duration>,
    /// Its output file, if any.
    pub output: Option<PathBuf>,
    /// What it printed (bpftrace's maps).
    pub stdout: String,
}

/// Options of a tracer observer.
#[derive(Clone, Debug, Default)]
pub struct TracerOptions {
    /// `--ring-mib`.
    pub ring_mib: Option<u32>,
    /// `--no-raw-tracepoint`: signals through the perf tracepoint.
    pub perf_tracepoint: bool,
}

impl TracerOptions {
    fn apply(&self, command: &mut Command) {
        if let Some(mib) = self.ring_mib {
            command.args(["--ring-mib", &mib.to_string()]);
        }
        if self.perf_tracepoint {
            command.arg("--no-raw-tracepoint");
        }
    }
}

/// How long an observer may take to stop after the first SIGINT.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Starts `kind` and waits until it is attached (or, for perf, settled).
pub fn start(
    kind: ObserverKind,
    tracer: &Path,
    work: &Path,
    options: &TracerOptions,
) -> anyhow::Result<Observer> {
    let started = Instant::now();
    let stdout = Arc::new(Mutex::new(String::new()));
    match kind {
        ObserverKind::TracerRecord | ObserverKind::TracerRecordEbpfLog => {
            let file = work.join("bench.jsonl");
            let _ = std::fs::remove_file(&file);
            let mut command = Command::new(tracer);
            if kind == ObserverKind::TracerRecordEbpfLog {
                command.arg("record").arg("--ebpf-log");
            } else {
                command.arg("record");
            }
            command.args(["-d", "1h", "-i", "1h", "-o"]).arg(&file);
            options.apply(&mut command);
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting tracer record")?;
            // The metadata line is written once every probe is attached.
            wait_until(&mut child, "tracer record", || {
                std::fs::read_to_string(&file).is_ok_and(|text| text.contains('\n'))
            })?;
            Ok(Observer {
                child,
                startup: Some(started.elapsed()),
                output: Some(file),
                stdout,
            })
        }
        ObserverKind::TracerLive => {
            let mut command = Command::new(tracer);
            command.args(["live", "--json", "-i", "1s", "-d", "1h"]);
            options.apply(&mut command);
            let mut child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting tracer live")?;
            // The first line comes one interval after attaching: wait for
            // it, but it is not a start-up time.
            let first = drain_lines(&mut child, Arc::clone(&stdout), |_| true, false)?;
            first
                .recv_timeout(Duration::from_mins(1))
                .context("tracer live printed nothing in 60 s")?;
            Ok(Observer {
                child,
                startup: None,
                output: None,
                stdout,
            })
        }
        ObserverKind::Bpftrace => {
            let mut child = Command::new("bpftrace")
                .arg("-e")
                .arg(BPFTRACE_SCRIPT)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            let attached = drain_lines(
                &mut child,
                Arc::clone(&stdout),
                |line| line.contains("attached"),
                true,
            )?;
            attached
                .recv_timeout(Duration::from_mins(1))
                .context("bpftrace did not attach in 60 s")?;
            Ok(Observer {
                child,
                startup: Some(started.elapsed()),
                output: None,
                stdout,
            })
        }
        ObserverKind::PerfRecord => {
            let file = work.join("perf.data");
            let _ = std::fs::remove_file(&file);
            let mut child = Command::new("perf")
                .args(["record", "-a", "-q", "-o"])
                .arg(&file)
                .args([
                    "-e",
                    "signal:signal_generate",
                    "--filter",
                    "code == -2",
                    "-e",
                    "kvm:kvm_userspace_exit",
                    "-e",
                    "kvm:kvm_exit",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf record")?;
            std::thread::sleep(PERF_SETTLE);
            if let Some(status) = child.try_wait()? {
                bail!("perf record exited early with {status}");
            }
            Ok(Observer {
                child,
                startup: None,
                output: Some(file),
                stdout,
            })
        }
    }
}

/// Reads the child's stdout on a thread into `sink`; the receiver gets one
/// message at the first line for which `ready` holds.
fn drain_lines(
    child: &mut Child,
    sink: Arc<Mutex<String>>,
    ready: fn(&str) -> bool,
    keep: bool,
) -> anyhow::Result<mpsc::Receiver<()>> {
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut told = false;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if !told && ready(&line) {
                let _ = tx.send(());
                told = true;
            }
            if keep && let Ok(mut sink) = sink.lock() {
                sink.push_str(&line);
                sink.push('\n');
            }
        }
    });
    Ok(rx)
}

fn wait_until(child: &mut Child, what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
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
    Ok(())
}

impl Observer {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGINT, reaps it and returns what it cost.
    pub fn stop(self) -> anyhow::Result<Stopped> {
        let pid = self.child.id() as i32;
        let mut peak_kib = vm_hwm_kib(self.child.id()).unwrap_or(0);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        // A SIGINT can go unanswered (seen once with bpftrace after a
        // 10,000-thread storm: it went on waiting in epoll): ask again every
        // second, and kill it after STOP_GRACE rather than hang the run.
        let asked = Instant::now();
        let mut last_ask = asked;
        // Its high-water mark until it is gone (a zombie has no address
        // space), then the reap with its CPU time.
        let usage = loop {
            if last_ask.elapsed() >= Duration::from_secs(1) {
                let signal = if asked.elapsed() >= STOP_GRACE {
                    eprintln!("xtask: bench: pid {pid} ignored SIGINT for {STOP_GRACE:?}: SIGKILL");
                    libc::SIGKILL
                } else {
                    libc::SIGINT
                };
                // SAFETY: signalling our own child (not reaped yet).
                unsafe { libc::kill(pid, signal) };
                last_ask = Instant::now();
            }
            let mut status = 0;
            // SAFETY: an all-zero rusage is valid.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: reaping our own child into valid pointers.
            match unsafe { libc::wait4(pid, &raw mut status, libc::WNOHANG, &raw mut usage) } {
                0 => {}
                reaped if reaped == pid => break usage,
                _ => bail!("wait4 {pid}: {}", std::io::Error::last_os_error()),
            }
            if let Some(kib) = vm_hwm_kib(self.child.id()) {
                peak_kib = peak_kib.max(kib);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // The reader thread sees EOF once the child is gone.
        std::thread::sleep(Duration::from_millis(50));
        let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
        let stdout = self.stdout.lock().map(|s| s.clone()).unwrap_or_default();
        Ok(Stopped {
            cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            peak_rss_kib: peak_kib,
            startup: self.startup,
            output: self.output,
            stdout,
        })
    }
}

/// The peak resident set of `pid`'s address space since its exec, KiB
/// (`VmHWM`); `None` once it has exited.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// CPU time (ns) of every thread of `pid` so far, from
/// `/proc/PID/task/*/schedstat` (nanosecond resolution).
pub fn cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let tasks = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let path = entry?.path().join("schedstat");
        // A thread may be gone between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|field| field.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

/// bpftrace's timer-signal counts per target thread (`@signals[tid, -2]`)
/// from its final map dump.
pub fn bpftrace_timer_counts(stdout: &str) -> std::collections::HashMap<u32, u64> {
    stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("@signals[")?;
            let (key, count) = rest.split_once("]:")?;
            let (tid, code) = key.split_once(',')?;
            (code.trim() == "-2").then_some(())?;
            Some((tid.trim().parse().ok()?, count.trim().parse().ok()?))
        })
        .collect()
}

/// In-kernel cost of the loaded programs named `signal_generate*` (the
/// tracer's and bpftrace's timer-signal programs): runs and nanoseconds per
/// run, from `bpftool prog show --json` with `kernel.bpf_stats_enabled=1`.
pub fn signal_program_cost() -> Option<(u64, f64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .ok()?;
    let programs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let (runs, nanos) = programs
        .as_array()?
        .iter()
        .filter(|program| {
            program["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("signal_generate"))
        })
        .fold((0, 0), |(runs, nanos), program| {
            (
                runs + program["run_cnt"].as_u64().unwrap_or(0),
                nanos + program["run_time_ns"].as_u64().unwrap_or(0),
            )
        });
    (runs > 0).then(|| (runs, nanos as f64 / runs as f64))
}

/// Turns the kernel's per-program run statistics on for as long as it lives
/// and restores the previous setting after.
pub struct BpfStats {
    previous: Option<String>,
}

impl BpfStats {
    const SYSCTL: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    /// Enables `kernel.bpf_stats_enabled`.
    pub fn enable() -> Self {
        let previous = std::fs::read_to_string(Self::SYSCTL).ok();
        let _ = std::fs::write(Self::SYSCTL, "1");
        Self { previous }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            let _ = std::fs::write(Self::SYSCTL, previous.trim());
        }
    }
}
