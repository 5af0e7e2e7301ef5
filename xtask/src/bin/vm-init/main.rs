//! PID 1 of the `cargo xtask vm-test` guests: a static program that mounts
//! what the tracer needs, loads the kvm modules, runs the real `tracer`
//! against the booted distribution kernel, runs the handler scenarios
//! (`scenarios.rs`, with the fixture module and `/init driver`), prints one
//! `VMTEST-RESULT` JSON line on the console and powers off.
//!
//! Run as `/init driver ...` (not PID 1) it is the scenarios' driver
//! (`driver.rs`).

mod driver;
mod scenarios;

use std::{
    ffi::CString,
    io::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

fn mount(source: &str, target: &str, fstype: &str) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    let c = |text: &str| CString::new(text).expect("no NUL");
    let (source_c, target_c, fstype_c) = (c(source), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {fstype} on {target}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses .ko.xz/.ko.zst.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

fn load_module(path: &str, params: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let compressed = std::path::Path::new(path)
        .extension()
        .is_some_and(|ext| !ext.eq_ignore_ascii_case("ko"));
    let flags = if compressed {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    let params = CString::new(params).map_err(|_| format!("{path}: NUL in parameters"))?;
    // SAFETY: finit_module with an open fd and a NUL-terminated parameter string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            params.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{path}: {}", std::io::Error::last_os_error()))
    }
}

fn run_json(args: &[&str]) -> Value {
    match Command::new("/tracer").args(args).output() {
        Ok(out) => json!({
            "exit": out.status.code(),
            "stdout": serde_json::from_slice::<Value>(&out.stdout)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out.stdout).into_owned())),
            "stderr": String::from_utf8_lossy(&out.stderr),
        }),
        Err(error) => json!({"error": error.to_string()}),
    }
}

/// Sends this thread SI_TIMER SIGUSR1 every 10 ms for `duration` and
/// consumes each with sigtimedwait; returns how many arrived.
fn timer_signals(duration: Duration) -> Result<u64, String> {
    // SAFETY: plain libc calls on this thread with valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        let mut event: libc::sigevent = std::mem::zeroed();
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = libc::SIGUSR1;
        event.sigev_notify_thread_id = libc::gettid();
        let mut timer: libc::timer_t = std::ptr::null_mut();
        if libc::timer_create(libc::CLOCK_MONOTONIC, &raw mut event, &raw mut timer) != 0 {
            return Err(format!("timer_create: {}", std::io::Error::last_os_error()));
        }
        let period = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        libc::timer_settime(timer, 0, &raw const spec, std::ptr::null_mut());
        let started = Instant::now();
        let mut received = 0;
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        while started.elapsed() < duration {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            if libc::sigtimedwait(&raw const set, &raw mut info, &raw const timeout)
                == libc::SIGUSR1
            {
                received += 1;
            }
        }
        libc::timer_delete(timer);
        Ok(received)
    }
}

/// The kernel's log so far (non-blocking reads of /dev/kmsg).
fn read_kmsg() -> String {
    use std::fmt::Write as _;
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return String::new();
    };
    let mut log = String::new();
    let mut record = vec![0_u8; 8192];
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                // "level,seq,usec,flags;text": keep the time and the text.
                let line = String::from_utf8_lossy(&record[..n]);
                let (prefix, text) = line.split_once(';').unwrap_or(("", &line));
                let usec = prefix.split(',').nth(2).unwrap_or("0");
                let _ = writeln!(log, "[{usec}] {}", text.trim_end());
            }
            // EPIPE: records were overwritten since; the next read goes on.
            Err(error) if error.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => break,
        }
    }
    log
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("driver") {
        std::process::exit(driver::run(&args[1..]));
    }
    let mut result = json!({});
    let mut mounts = Vec::new();
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("tracefs", "/sys/kernel/tracing", "tracefs"),
        ("debugfs", "/sys/kernel/debug", "debugfs"),
    ] {
        if let Err(error) = mount(source, target, fstype) {
            mounts.push(error);
        }
    }
    result["mount_errors"] = json!(mounts);
    result["kernel"] = json!(
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    result["split_lock_mitigate"] = json!(
        std::fs::read_to_string("/proc/sys/kernel/split_lock_mitigate")
            .ok()
            .map(|v| v.trim().to_owned())
    );
    let mut modules = Vec::new();
    for module in std::fs::read_to_string("/modules/order")
        .unwrap_or_default()
        .lines()
    {
        let path = format!("/modules/{module}");
        modules.push(json!({"module": module, "loaded": load_module(&path, "").err().map_or(Value::Bool(true), Value::String)}));
    }
    result["modules"] = json!(modules);
    result["kprobe_pmu"] =
        json!(std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists());
    result["probes"] = run_json(&["probes", "--json"]);
    // A real session in full mode: record while this thread (init: not a
    // vCPU, never split-locking) takes timer signals, then replay it with
    // report. The tracer only counts such signals (the summary's
    // `signals_to_other_threads`), it records none of them.
    let recorder = Command::new("/tracer")
        .args(["record", "-o", "/tmp/rec.jsonl", "-d", "8s", "-i", "10s"])
        .spawn();
    match recorder {
        Ok(mut child) => {
            let started = Instant::now();
            while !std::fs::read_to_string("/tmp/rec.jsonl").is_ok_and(|t| t.contains('\n'))
                && started.elapsed() < Duration::from_mins(2)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let sent = timer_signals(Duration::from_secs(2));
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let status = child.wait().map(|s| s.code());
            let report = run_json(&["report", "/tmp/rec.jsonl", "--format", "json"]);
            let recording = std::fs::read_to_string("/tmp/rec.jsonl").unwrap_or_default();
            let sleep_returns = recording
                .lines()
                .filter(|l| l.contains("\"event\":\"sleep_return\""))
                .count();
            let seen = recording
                .lines()
                .filter(|l| {
                    l.contains("\"event\":\"signal\"")
                        && l.contains("\"code\":-2")
                        && l.contains("\"target_tid\":1,")
                })
                .count();
            let untracked_timer = recording
                .lines()
                .filter(|l| l.starts_with("{\"type\":\"summary\""))
                .find_map(|l| {
                    serde_json::from_str::<Value>(l).ok()?["signals_to_other_threads"]["timer"]
                        .as_u64()
                });
            result["record"] = json!({
                "exit": format!("{status:?}"),
                "signals_sent": sent.as_ref().ok(),
                "signal_error": sent.err(),
                "si_timer_events_for_init": seen,
                "untracked_timer_signals": untracked_timer,
                "sleep_return_events": sleep_returns,
                "report_exit": report["exit"].clone(),
                "report_mode": report["stdout"]["mode"].clone(),
            });
        }
        Err(error) => result["record"] = json!({"error": error.to_string()}),
    }
    // Kernel messages would tear the file lines the scenarios print on the
    // console: keep them in the ring buffer (shipped as dmesg.txt).
    let _ = std::fs::write("/proc/sys/kernel/printk", "1");
    let release = result["kernel"].as_str().unwrap_or("unknown").to_owned();
    if let Some(handlers) = scenarios::run(&release, &load_module) {
        result["handlers"] = handlers;
    }
    scenarios::emit_file(&format!("{release}/dmesg.txt"), read_kmsg().as_bytes());
    println!("VMTEST-RESULT {result}");
    let _ = std::io::stdout().flush();
    // SAFETY: PID 1 powers the guest off; nothing else to do.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
}
