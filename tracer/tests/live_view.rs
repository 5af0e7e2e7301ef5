//! `tracer live` against the real KVM reproducer: the numbers it prints are
//! the ones the guest's VMM counted, and the screen a person sees in a
//! terminal (tmux) shows the vCPU row and quits on `q`.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{assert_counted, have_kvm, have_root, skip, split_lock_repro};
use tracer::repro::{self, TimerMode};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

#[test]
fn json_lines_totals_equal_the_reproducers_counts() {
    if !have_root("live json") || !have_kvm("live json") {
        return;
    }
    let pid = std::process::id();
    let mut live = Command::new(TRACER)
        .args([
            "live",
            "--json",
            "--all",
            "-i",
            "500ms",
            "-d",
            "5s",
            "-p",
            &pid.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(live.stdout.take().unwrap()).lines();
    // The first line means the probes are attached.
    let first = lines.next().expect("a first JSON line").unwrap();
    assert!(first.contains("\"status\""), "{first}");
    let report = repro::run(&split_lock_repro(
        Duration::from_millis(2),
        Duration::from_secs(2),
        1,
        TimerMode::PerRun,
    ))
    .unwrap();
    let vcpu = &report.vcpus[0];
    // The thread has exited: it leaves the view once silent for the window,
    // so take the last line that still shows it (after its last event).
    let tid_field = format!("\"tid\":{}", vcpu.tid);
    let last: serde_json::Value = lines
        .map(Result::unwrap)
        .filter(|line| line.contains(&tid_field))
        .last()
        .map(|line| serde_json::from_str(&line).unwrap())
        .expect("a JSON line with the vCPU row");
    assert!(live.wait().unwrap().success());
    let rows = last["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|row| row["tid"] == vcpu.tid)
        .unwrap_or_else(|| panic!("no row for tid {}: {last}", vcpu.tid));
    let recursion = last["status"]["lost_kernel_skipped"].as_u64().unwrap();
    assert_eq!(last["status"]["lost_ring"], 0);
    let eintr = row["totals"]["eintr_exits"].as_u64().unwrap();
    let signals = row["totals"]["timer_signals"].as_u64().unwrap();
    assert_eq!(last["status"]["counter_map_full"], 0);
    // The kernel-side counters are exact whatever happens to the ring.
    assert_eq!(row["kernel"]["eintr_exits"].as_u64(), Some(eintr), "{row}");
    assert_eq!(
        row["kernel"]["timer_signals"].as_u64(),
        Some(signals),
        "{row}"
    );
    assert_counted("EINTR exits", eintr, vcpu.eintr_returns, recursion);
    assert_counted("timer signals", signals, vcpu.signals_consumed, recursion);
    assert_eq!(row["pid"], pid);
    assert_eq!(row["vcpu"], 0);
    assert_eq!(row["comm"], "CPU 0/KVM");
    // No split-lock detection on this machine: never a split-lock verdict.
    assert!(
        matches!(row["verdict"].as_str(), Some("ok" | "idle")),
        "{row}"
    );
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("running tmux")
}

#[test]
fn terminal_screen_shows_the_vcpu_and_q_quits() {
    if !have_root("live tmux") || !have_kvm("live tmux") {
        return;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        skip(
            "live tmux",
            "tmux is not installed (cargo xtask test installs it)",
        );
        return;
    }
    let session = format!("tracer-live-{}", std::process::id());
    let pid = std::process::id();
    let worker = std::thread::spawn(|| {
        repro::run(&split_lock_repro(
            Duration::from_millis(3),
            Duration::from_secs(6),
            1,
            TimerMode::PerRun,
        ))
        .unwrap()
    });
    let command = format!("{TRACER} live -i 500ms -p {pid}");
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "200",
        "-y",
        "40",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut screen = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let capture = tmux(&["capture-pane", "-p", "-t", &session]);
        screen = String::from_utf8_lossy(&capture.stdout).into_owned();
        if screen.contains(" OK ") {
            break;
        }
    }
    let report_tid_line = screen.lines().find(|line| line.contains("┆ 0    ┆"));
    assert!(screen.contains("split-lock tracer | mode"), "{screen}");
    assert!(screen.contains("(q to quit)"), "{screen}");
    assert!(
        report_tid_line.is_some_and(|line| line.contains(" OK ")),
        "{screen}"
    );
    tmux(&["send-keys", "-t", &session, "q"]);
    let gone = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        !tmux(&["has-session", "-t", &session]).status.success()
    });
    if !gone {
        tmux(&["kill-session", "-t", &session]);
    }
    let report = worker.join().unwrap();
    assert!(gone, "q did not quit the live view");
    assert!(
        screen.contains(&report.vcpus[0].tid.to_string()),
        "{screen}"
    );
}
