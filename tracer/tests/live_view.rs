//! `tracer live` against the real KVM reproducer: the numbers it prints are
//! the ones the guest's VMM counted, and the screen a person sees in a
//! terminal (tmux) shows the vCPU row and quits on `q`.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{assert_counted, have_kvm, have_root, skip, split_lock_repro, tkill_repro};
use tracer::repro::{self, ReproReport, TimerMode};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// `tracer live --json` while the reproducer runs, kicked by `kick`: the
/// last line that shows the vCPU row, and the reproducer's report.
fn live_json_last_row(
    name: &str,
    config: &repro::ReproConfig,
) -> Option<(serde_json::Value, ReproReport)> {
    if !have_root(name) || !have_kvm(name) {
        return None;
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
    let report = repro::run(config).unwrap();
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
    assert_eq!(last["status"]["lost_ring"], 0);
    assert_eq!(last["status"]["counter_map_full"], 0);
    let row = last["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["tid"] == vcpu.tid)
        .unwrap_or_else(|| panic!("no row for tid {}: {last}", vcpu.tid))
        .clone();
    assert_eq!(row["pid"], pid);
    assert_eq!(row["vcpu"], 0);
    assert_eq!(row["comm"], "CPU 0/KVM");
    // No split-lock detection on this machine: never a split-lock verdict.
    assert!(
        matches!(row["verdict"].as_str(), Some("ok" | "idle")),
        "{row}"
    );
    let recursion = last["status"]["lost_kernel_skipped"].as_u64().unwrap();
    let eintr = row["totals"]["eintr_exits"].as_u64().unwrap();
    // The kernel-side counters are exact whatever happens to the ring.
    assert_eq!(row["kernel"]["eintr_exits"].as_u64(), Some(eintr), "{row}");
    assert_counted("EINTR exits", eintr, vcpu.eintr_returns, recursion);
    Some((
        serde_json::json!({ "row": row, "recursion": recursion }),
        report,
    ))
}

#[test]
fn json_lines_totals_equal_the_reproducers_counts() {
    let Some((seen, report)) = live_json_last_row(
        "live json",
        &split_lock_repro(
            Duration::from_millis(2),
            Duration::from_secs(2),
            1,
            TimerMode::PerRun,
        ),
    ) else {
        return;
    };
    let (row, vcpu) = (&seen["row"], &report.vcpus[0]);
    let signals = row["totals"]["timer_signals"].as_u64().unwrap();
    assert_eq!(
        row["kernel"]["timer_signals"].as_u64(),
        Some(signals),
        "{row}"
    );
    assert_counted(
        "timer signals",
        signals,
        vcpu.signals_consumed,
        seen["recursion"].as_u64().unwrap(),
    );
}

/// The same with QEMU's kick: the main thread `pthread_kill`s the vCPU
/// thread every 2 ms. Every kick it sent is on the row, exactly, as a
/// tkill SIGUSR1 kick with its period (tkill signals are not timer signals,
/// so the perf-count skip tally does not cover them: equality, no bounds).
#[test]
fn json_lines_show_every_tkill_kick_of_the_reproducer() {
    let Some((seen, report)) = live_json_last_row(
        "live json tkill",
        &tkill_repro(Duration::from_millis(2), Duration::from_secs(2), 1),
    ) else {
        return;
    };
    let (row, vcpu) = (&seen["row"], &report.vcpus[0]);
    assert!(vcpu.kicks_sent > 300, "{vcpu:?}");
    let parsed: tracer_events::ThreadRow = serde_json::from_value(row.clone()).unwrap();
    let kick = parsed.kicks.first().expect("a kick on the vCPU row");
    assert_eq!(kick.kind, tracer_events::SignalKind::Tkill, "{row}");
    assert_eq!(kick.signal, "SIGUSR1");
    assert_eq!(kick.count, vcpu.kicks_sent, "{row}");
    let period = kick.period_ms.expect("kick period");
    assert!((1.8..=2.6).contains(&period), "kick period {period} ms");
    assert_eq!(parsed.totals.other_signals, vcpu.kicks_sent);
    assert_eq!(
        parsed.kernel.as_ref().map(|kernel| kernel.other_signals),
        Some(vcpu.kicks_sent)
    );
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("running tmux")
}

/// Captures the pane until `done` holds for the screen (or 8 s pass).
fn wait_for_screen(session: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut screen = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let capture = tmux(&["capture-pane", "-p", "-t", session]);
        screen = String::from_utf8_lossy(&capture.stdout).into_owned();
        if done(&screen) {
            break;
        }
    }
    screen
}

fn keys(session: &str, keys: &[&str]) {
    for key in keys {
        let sent = tmux(&["send-keys", "-t", session, key]);
        assert!(sent.status.success(), "{sent:?}");
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn terminal_view_at_80x24_answers_the_keys_and_restores_the_terminal() {
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
    let dir = tempfile::tempdir().unwrap();
    let session = format!("tracer-live-{}", std::process::id());
    let pid = std::process::id();
    let worker = std::thread::spawn(|| {
        repro::run(&split_lock_repro(
            Duration::from_millis(3),
            Duration::from_secs(12),
            2,
            TimerMode::PerRun,
        ))
        .unwrap()
    });
    // The shell records the terminal state before and after the view, and
    // stays so the pane can be read once the view is gone.
    let dir_path = dir.path().display();
    let command = format!(
        "stty -g > {dir_path}/before; {TRACER} live -i 500ms -p {pid}; echo $? > {dir_path}/rc; stty -g > {dir_path}/after; echo VIEW-ENDED; sleep 30"
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        "sh",
        "-c",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    let finish = |session: &str| {
        tmux(&["kill-session", "-t", session]);
    };
    // A collapsed VM line for this process with its two vCPU threads.
    let screen = wait_for_screen(&session, |screen| screen.contains("2 vCPUs"));
    let lines: Vec<&str> = screen.lines().collect();
    let checks = [
        lines
            .first()
            .is_some_and(|line| line.starts_with("split-lock tracer │")),
        lines
            .get(1)
            .is_some_and(|line| line.contains("split_lock_mitigate")),
        screen.contains(&format!("pid {pid}")),
        screen.contains("2 vCPUs"),
        lines.iter().any(|line| line.contains("q quit")),
        lines.iter().all(|line| line.chars().count() <= 80),
    ];
    if checks.iter().any(|ok| !ok) {
        finish(&session);
        panic!("{checks:?}\n{screen}");
    }
    // Enter expands the VM; Down selects vCPU 0; Enter opens its pane.
    keys(&session, &["Enter"]);
    let expanded = wait_for_screen(&session, |screen| screen.contains("vCPU 1"));
    keys(&session, &["Down", "Enter"]);
    let detail = wait_for_screen(&session, |screen| screen.contains("(Esc closes"));
    // Esc closes it; / filters on vCPU 1's thread name.
    keys(&session, &["Escape", "/", "1/KVM", "Enter"]);
    let filtered = wait_for_screen(&session, |screen| {
        screen.contains("filter: 1/KVM") && !screen.contains("vCPU 0")
    });
    // Esc clears the filter; s sorts by the next column.
    keys(&session, &["Escape", "s"]);
    let sorted = wait_for_screen(&session, |screen| screen.contains("NAME▼"));
    keys(&session, &["q"]);
    let ended = wait_for_screen(&session, |screen| screen.contains("VIEW-ENDED"));
    finish(&session);
    let report = worker.join().unwrap();
    assert!(
        expanded.contains("vCPU 0") && expanded.contains("vCPU 1"),
        "{expanded}"
    );
    // Down selected one of the VM's vCPU rows: which comes first depends
    // on their activity (the view sorts by it, and it can change between
    // two refreshes), so the pane must show one of the reproducer's vCPU
    // threads with its own index (the order itself is unit-tested in tui).
    let opened = report
        .vcpus
        .iter()
        .find(|vcpu| detail.contains(&format!("thread {} (Esc closes", vcpu.tid)))
        .unwrap_or_else(|| panic!("no vCPU thread of the reproducer: {expanded}\n{detail}"));
    assert!(
        detail.contains(&format!("CPU {}/KVM", opened.index)),
        "{detail}"
    );
    assert!(
        filtered.contains("vCPU 1") && !filtered.contains("vCPU 0"),
        "{filtered}"
    );
    assert!(
        sorted.contains("NAME▼") && sorted.contains("vCPU 0"),
        "{sorted}"
    );
    // q left the alternate screen: the shell's line is back, the view gone.
    assert!(ended.contains("VIEW-ENDED"), "{ended}");
    assert!(!ended.contains("split-lock tracer │"), "{ended}");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(read("rc").trim(), "0");
    assert_eq!(read("before"), read("after"), "stty state changed");
}
