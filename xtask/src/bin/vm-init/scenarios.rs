//! The handler scenarios of `cargo xtask vm-test`, guest side.
//!
//! For each scenario PID 1 arms the guest kernel's own tracefs kprobe
//! events (the ground truth), starts the real `tracer record`, runs the
//! driver (`/init driver ...`, see `driver.rs`) as a child process, stops
//! both and ships the raw material to the host on the console: the
//! driver's counts, the tracefs trace text and buffer statistics, the
//! recording and `tracer report --format json`. The host
//! (`xtask/src/vm_scenarios.rs`) does all the counting and judging; nothing
//! here interprets the tracer's output.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::{Value, json};

const TRACEFS: &str = "/sys/kernel/tracing";
const MITIGATE: &str = "/proc/sys/kernel/split_lock_mitigate";

/// One scenario: the driver's arguments and how the tracer records it.
struct Scenario {
    name: &'static str,
    driver: &'static [&'static str],
    /// `tracer record -p 1` (PID 1 is not the driver).
    filter_other_pid: bool,
    /// Run with `kernel.split_lock_mitigate = 0`.
    mitigate_off: bool,
    /// Trap at the fixture module's `slt_ioctl` (a guest kernel address the
    /// guest's kallsyms names) instead of the driver's own code.
    ip_in_module: bool,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "livelock-timer",
        driver: &["trap=user", "duration_ms=600", "thread=timer:1000"],
        filter_other_pid: false,
        mitigate_off: false,
        ip_in_module: false,
    },
    Scenario {
        name: "livelock-tkill",
        driver: &["trap=user", "duration_ms=600", "thread=tkill:1000"],
        filter_other_pid: false,
        mitigate_off: false,
        ip_in_module: false,
    },
    Scenario {
        name: "throttled",
        driver: &["trap=user", "duration_ms=1500", "thread=timer:50000"],
        filter_other_pid: false,
        mitigate_off: false,
        ip_in_module: false,
    },
    Scenario {
        name: "semaphore",
        driver: &[
            "trap=user",
            "duration_ms=2000",
            "thread=none",
            "thread=oneshot:17000",
        ],
        filter_other_pid: false,
        mitigate_off: false,
        ip_in_module: false,
    },
    Scenario {
        name: "mitigate-off",
        // Without the sleep a request takes tens of microseconds: a bound
        // on the calls keeps the recording small.
        driver: &[
            "trap=user",
            "calls=1000",
            "duration_ms=600",
            "thread=timer:1000",
        ],
        filter_other_pid: false,
        mitigate_off: true,
        ip_in_module: false,
    },
    Scenario {
        name: "killed",
        driver: &["trap=guest", "calls=20", "duration_ms=5000"],
        filter_other_pid: false,
        mitigate_off: false,
        ip_in_module: true,
    },
    Scenario {
        name: "filtered",
        driver: &["trap=user", "duration_ms=600", "thread=timer:1000"],
        filter_other_pid: true,
        mitigate_off: false,
        ip_in_module: false,
    },
];

fn write(path: &str, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("writing {text:?} to {path}: {error}"))
}

fn tracefs(file: &str, text: &str) -> Result<(), String> {
    write(&format!("{TRACEFS}/{file}"), text)
}

/// Name of `split_lock_warn` in /proc/kallsyms (the compiler may suffix it).
fn warn_symbol() -> Option<String> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").ok()?;
    kallsyms.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
        (kind.eq_ignore_ascii_case("t")
            && (name == "split_lock_warn" || name.starts_with("split_lock_warn."))
            && name.rsplit('.').next() != Some("cold"))
        .then(|| name.to_owned())
    })
}

/// The ground-truth probes, in the guest kernel's own kprobe_events syntax.
/// `handle_user_split_lock`'s first argument is the `pt_regs` pointer
/// (%di); `ip` is its 17th 8-byte word (offset 128), `flags` the 19th.
fn kprobe_definitions(warn: &str) -> String {
    format!(
        "p:slt/user_entry handle_user_split_lock ip=+128(%di):x64 flags=+144(%di):x64\n\
         r:slt/user_return handle_user_split_lock ret=$retval:u8\n\
         p:slt/guest_entry handle_guest_split_lock ip=%di:x64\n\
         r:slt/guest_return handle_guest_split_lock ret=$retval:u8\n\
         p:slt/warn {warn} ip=%di:x64\n\
         r:slt/msleep_return msleep_interruptible ret=$retval:u64\n\
         r:slt/down_return down_interruptible ret=$retval:s32\n"
    )
}

/// Sets up the tracefs probes; returns what was written.
fn setup_tracefs() -> Result<String, String> {
    let warn = warn_symbol().ok_or("no split_lock_warn in /proc/kallsyms")?;
    let definitions = kprobe_definitions(&warn);
    tracefs("tracing_on", "0")?;
    tracefs("trace_clock", "mono")?;
    tracefs("buffer_size_kb", "16384")?;
    for line in definitions.lines() {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{TRACEFS}/kprobe_events"))
            .map_err(|error| format!("{TRACEFS}/kprobe_events: {error}"))?;
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(|error| {
                let log =
                    std::fs::read_to_string(format!("{TRACEFS}/error_log")).unwrap_or_default();
                format!("kprobe_events: {line}: {error}; error_log: {log}")
            })?;
    }
    tracefs("events/slt/enable", "1")?;
    // The kernel's own tracepoint on MSR writes, for MSR_TEST_CTRL (0x33):
    // split_lock_warn clears the detection bit when it lets the
    // instruction run, the delayed work sets it again.
    let msr = tracefs("events/msr/write_msr/filter", "msr == 0x33")
        .and_then(|()| tracefs("events/msr/write_msr/enable", "1"))
        .map_or_else(
            |error| format!("msr:write_msr not used: {error}\n"),
            |()| "msr:write_msr if msr == 0x33\n".to_owned(),
        );
    // The kernel's own signal tracepoint, for SI_TIMER (-2) signals only:
    // the timer period the tracer reports is checked against it.
    let timer = tracefs("events/signal/signal_generate/filter", "code == -2")
        .and_then(|()| tracefs("events/signal/signal_generate/enable", "1"))
        .map_or_else(
            |error| format!("signal:signal_generate not used: {error}\n"),
            |()| "signal:signal_generate if code == -2\n".to_owned(),
        );
    Ok(format!("{definitions}{msr}{timer}"))
}

/// Gzips and base64-encodes `data` and prints it in `VMTEST-FILE` chunks.
pub fn emit_file(name: &str, data: &[u8]) {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = encoder.write_all(data);
    let compressed = encoder.finish().unwrap_or_default();
    let text = base64::engine::general_purpose::STANDARD.encode(compressed);
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(3000).collect();
    let mut out = std::io::stdout().lock();
    for (index, chunk) in chunks.iter().enumerate() {
        let _ = writeln!(
            out,
            "VMTEST-FILE {name} {index}/{} {}",
            chunks.len(),
            String::from_utf8_lossy(chunk)
        );
    }
    let _ = out.flush();
}

fn wait_for_meta(path: &str) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_mins(2) {
        if std::fs::read_to_string(path).is_ok_and(|text| text.contains('\n')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn tracefs_stats() -> String {
    let mut stats = String::new();
    let cpus = std::fs::read_dir(format!("{TRACEFS}/per_cpu"))
        .map_or(0, |entries| entries.filter_map(Result::ok).count());
    for cpu in 0..cpus {
        let text = std::fs::read_to_string(format!("{TRACEFS}/per_cpu/cpu{cpu}/stats"))
            .unwrap_or_default();
        let _ = writeln!(stats, "cpu{cpu}:\n{text}");
    }
    stats
}

fn run_one(kernel: &str, scenario: &Scenario, module_ip: Option<u64>) -> Value {
    let dir = format!("{kernel}/{}", scenario.name);
    let recording = format!("/tmp/{}.jsonl", scenario.name);
    let mut notes = Vec::new();
    if scenario.mitigate_off
        && let Err(error) = write(MITIGATE, "0")
    {
        notes.push(error);
    }
    let mitigate = std::fs::read_to_string(MITIGATE)
        .ok()
        .map(|value| value.trim().to_owned());
    for (file, text) in [("tracing_on", "0"), ("trace", ""), ("tracing_on", "1")] {
        if let Err(error) = tracefs(file, text) {
            notes.push(error);
        }
    }
    let mut record = Command::new("/tracer");
    record.args([
        "record", "-o", &recording, "--redact", "-d", "300s", "-i", "10s",
    ]);
    if scenario.filter_other_pid {
        record.args(["-p", "1"]);
    }
    let mut tracer = match record.stdout(Stdio::null()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(error) => {
            return json!({"scenario": scenario.name, "error": format!("tracer record: {error}")});
        }
    };
    if !wait_for_meta(&recording) {
        notes.push("the recording had no meta line after 2 min".to_owned());
    }
    let started = Instant::now();
    let mut driver = Command::new("/init");
    driver.arg("driver").args(scenario.driver);
    if scenario.ip_in_module
        && let Some(ip) = module_ip
    {
        driver.arg(format!("ip=0x{ip:x}"));
    }
    let driver = driver.stderr(Stdio::inherit()).output();
    let driver_wall_ms = started.elapsed().as_secs_f64() * 1e3;
    // Let the tracer's reader drain the ring (it polls every 50 ms).
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let mut tracer_stderr = String::new();
    if let Some(mut stderr) = tracer.stderr.take() {
        let _ = stderr.read_to_string(&mut tracer_stderr);
    }
    let tracer_status = tracer.wait().map(|status| status.code());
    if let Err(error) = tracefs("tracing_on", "0") {
        notes.push(error);
    }
    if scenario.mitigate_off
        && let Err(error) = write(MITIGATE, "1")
    {
        notes.push(error);
    }
    let report = Command::new("/tracer")
        .args(["report", &recording, "--format", "json"])
        .output();
    let driver_json = match &driver {
        Ok(out) => serde_json::from_slice::<Value>(&out.stdout).unwrap_or_else(
            |_| json!({"error": "unparsable", "stdout": String::from_utf8_lossy(&out.stdout)}),
        ),
        Err(error) => json!({"error": error.to_string()}),
    };
    let trace = std::fs::read(format!("{TRACEFS}/trace")).unwrap_or_default();
    emit_file(&format!("{dir}/trace.txt"), &trace);
    emit_file(
        &format!("{dir}/tracefs-stats.txt"),
        tracefs_stats().as_bytes(),
    );
    emit_file(
        &format!("{dir}/recording.jsonl"),
        &std::fs::read(&recording).unwrap_or_default(),
    );
    if let Ok(out) = &report {
        emit_file(&format!("{dir}/report.json"), &out.stdout);
    }
    let _ = std::fs::remove_file(&recording);
    json!({
        "scenario": scenario.name,
        "driver_args": scenario.driver,
        "filter_pid": scenario.filter_other_pid.then_some(1),
        "split_lock_mitigate": mitigate,
        "driver": driver_json,
        "driver_wall_ms": driver_wall_ms,
        "tracer_exit": format!("{tracer_status:?}"),
        "tracer_stderr": tracer_stderr,
        "report_exit": report.as_ref().ok().and_then(|out| out.status.code()),
        "report_stderr": report.as_ref().map(|out| String::from_utf8_lossy(&out.stderr).into_owned()).unwrap_or_default(),
        "notes": notes,
    })
}

/// Event formats the tracer reads, and the ground-truth probes' own.
const FORMATS: [&str; 11] = [
    "msr/write_msr",
    "signal/signal_generate",
    "kvm/kvm_exit",
    "kvm/kvm_userspace_exit",
    "slt/user_entry",
    "slt/user_return",
    "slt/guest_entry",
    "slt/guest_return",
    "slt/warn",
    "slt/msleep_return",
    "slt/down_return",
];

/// Loads the fixture module, runs every scenario and returns the summary
/// for the `VMTEST-RESULT` line (`None` when the module is not in the
/// initramfs).
pub fn run(kernel: &str, load_module: &dyn Fn(&str, &str) -> Result<(), String>) -> Option<Value> {
    let module = "/fixture/splitlock_trap.ko";
    if !std::path::Path::new(module).exists() {
        return None;
    }
    let address = std::fs::read_to_string("/proc/kallsyms")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split_whitespace();
                let (address, _, name) = (fields.next()?, fields.next()?, fields.next()?);
                (name == "handle_user_split_lock").then(|| address.to_owned())
            })
        });
    let params = address.map_or_else(String::new, |address| format!("user_handler=0x{address}"));
    if let Err(error) = load_module(module, &params) {
        return Some(json!({"module": module, "params": params, "error": error}));
    }
    let probes = match setup_tracefs() {
        Ok(definitions) => definitions,
        Err(error) => return Some(json!({"module": module, "params": params, "error": error})),
    };
    for event in FORMATS {
        if let Ok(text) = std::fs::read(format!("{TRACEFS}/events/{event}/format")) {
            emit_file(&format!("{kernel}/formats/{event}/format"), &text);
        }
    }
    // The module's lines of /proc/kallsyms, for the host to name the
    // guest-trap scenario's IP with `--guest-symbols` (the whole file is
    // megabytes; these lines are all that IP needs).
    let mut module_lines = String::new();
    for line in std::fs::read_to_string("/proc/kallsyms")
        .unwrap_or_default()
        .lines()
        .filter(|line| line.ends_with("[splitlock_trap]"))
    {
        module_lines.push_str(line);
        module_lines.push('\n');
    }
    emit_file(
        &format!("{kernel}/kallsyms-splitlock_trap.txt"),
        module_lines.as_bytes(),
    );
    let module_ip = module_lines.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
        (kind.eq_ignore_ascii_case("t") && name == "slt_ioctl")
            .then(|| u64::from_str_radix(address, 16).ok())
            .flatten()
    });
    let started = Instant::now();
    let results: Vec<Value> = SCENARIOS
        .iter()
        .map(|scenario| run_one(kernel, scenario, module_ip))
        .collect();
    Some(json!({
        "module": module,
        "params": params,
        "tracefs_probes": probes,
        "scenarios": results,
        "scenarios_wall_s": started.elapsed().as_secs_f64(),
        "module_ip": module_ip,
    }))
}
