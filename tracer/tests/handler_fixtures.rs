//! The classifier on kernel events: recordings the real `tracer record`
//! made inside the `cargo xtask vm-test` guests (Debian 6.1 and 6.12 under
//! QEMU TCG) while the kernel's own split-lock handlers ran, driven by the
//! fixture module (the trap is the test's; everything after it is the
//! kernel's code). `fixtures/handlers/provenance.json` says, per recording,
//! the kernel, scenario, date, the driver's thread ids and the ground truth
//! counted from the guest kernel's own tracefs kprobe events (see
//! docs/vm-test.md). Each recording is replayed through the public replay
//! API and its verdict, confirmation, IP and counts are asserted against
//! that ground truth and against what the scenario must produce.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tracer::report::{Replay, ReplayResult};
use tracer_events::{RecordingReader, ThreadRow, Verdict, VerdictChange};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/handlers")
}

fn provenance() -> Vec<Value> {
    let path = fixtures().join("provenance.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn replay(file: &str) -> ReplayResult {
    let path = fixtures().join(file);
    let mut reader =
        RecordingReader::open(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let mut replay = Replay::new(reader.metadata.clone());
    while let Some(record) = reader
        .next_record()
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    {
        replay.apply(&record);
    }
    replay.finish()
}

fn tids(entry: &Value) -> Vec<u32> {
    entry["driver_tids"]
        .as_array()
        .expect("driver_tids")
        .iter()
        .map(|tid| tid.as_u64().expect("tid") as u32)
        .collect()
}

/// The row of the driver thread the scenario judges (the one that takes
/// the signals: the last driver thread).
fn judged_row<'a>(result: &'a ReplayResult, entry: &Value) -> Option<&'a ThreadRow> {
    let tid = *tids(entry).last().expect("a driver thread");
    result.rows.iter().find(|row| row.tid == tid)
}

/// The judged thread's first change into a confirmed LIVELOCK.
fn confirmed_livelock_change<'a>(
    result: &'a ReplayResult,
    entry: &Value,
) -> Option<&'a VerdictChange> {
    let tid = *tids(entry).last().expect("a driver thread");
    result
        .changes
        .iter()
        .find(|change| change.tid == tid && change.to == Verdict::Livelock && change.confirmed)
}

/// What classifier.md's rule gives on the ground-truth episode sequence
/// (tracefs): LIVELOCK when the last 3 or more episodes were interrupted,
/// else THROTTLED (a completed episode ends a livelock).
fn final_verdict_by_rule(entry: &Value) -> Verdict {
    match entry["ground_truth"]["final_verdict_by_rule"].as_str() {
        Some("livelock") => Verdict::Livelock,
        Some("throttled") => Verdict::Throttled,
        other => panic!("{}: final_verdict_by_rule {other:?}", entry["file"]),
    }
}

fn ever_livelock(result: &ReplayResult, entry: &Value) -> bool {
    let tids = tids(entry);
    result
        .changes
        .iter()
        .any(|change| tids.contains(&change.tid) && change.to == Verdict::Livelock)
}

fn entries(scenario: &str) -> Vec<Value> {
    let found: Vec<Value> = provenance()
        .into_iter()
        .filter(|entry| entry["scenario"] == scenario)
        .collect();
    assert!(
        found.len() >= 2,
        "{scenario}: expected a capture per kernel (6.1 and 6.12), found {}",
        found.len()
    );
    found
}

fn ip(entry: &Value) -> u64 {
    let text = entry["ip"].as_str().expect("ip");
    u64::from_str_radix(text.trim_start_matches("0x"), 16).expect("hex ip")
}

fn truth(entry: &Value, key: &str) -> u64 {
    entry["ground_truth"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("ground_truth.{key} in {}", entry["file"]))
}

/// Counts of every captured recording equal the guest kernel's tracefs
/// counts (the captures lost nothing; provenance says so).
#[test]
fn recorded_counts_equal_the_kernels_tracefs_counts() {
    for entry in provenance() {
        let file = entry["file"].as_str().expect("file");
        assert_eq!(entry["lost"], 0, "{file}: the capture reported losses");
        let result = replay(file);
        let tids = tids(&entry);
        let rows: Vec<&ThreadRow> = result
            .rows
            .iter()
            .filter(|row| tids.contains(&row.tid))
            .collect();
        if entry["scenario"] == "filtered" {
            assert!(rows.is_empty(), "{file}: driver rows in a -p recording");
            continue;
        }
        let sum = |pick: fn(&ThreadRow) -> u64| rows.iter().map(|row| pick(row)).sum::<u64>();
        assert_eq!(
            sum(|r| r.totals.traps),
            truth(&entry, "handler_entries"),
            "{file}: traps"
        );
        assert_eq!(
            sum(|r| r.totals.warns),
            truth(&entry, "warns"),
            "{file}: warns"
        );
        assert_eq!(
            sum(|r| r.totals.sleeps_interrupted),
            truth(&entry, "sleeps_interrupted"),
            "{file}: interrupted sleeps"
        );
        assert_eq!(
            sum(|r| r.totals.semaphore_interrupted),
            truth(&entry, "semaphore_interrupted"),
            "{file}: interrupted semaphore waits"
        );
        for row in &rows {
            assert_eq!(row.last_ip, Some(ip(&entry)), "{file}: tid {} IP", row.tid);
        }
    }
}

#[test]
fn timer_livelock_is_confirmed_with_its_evidence_on_both_kernels() {
    for entry in entries("livelock-timer") {
        let file = entry["file"].as_str().expect("file");
        let result = replay(file);
        let change = confirmed_livelock_change(&result, &entry)
            .unwrap_or_else(|| panic!("{file}: never a confirmed LIVELOCK"));
        let reason = change.reason.clone().unwrap_or_default();
        assert!(
            reason.contains(&format!("IP 0x{:x}", ip(&entry))),
            "{file}: {reason}"
        );
        let row = judged_row(&result, &entry).unwrap_or_else(|| panic!("{file}: no driver row"));
        assert_eq!(row.verdict, final_verdict_by_rule(&entry), "{file}");
        assert!(row.confirmed, "{file}: not confirmed");
        if row.verdict == Verdict::Livelock {
            let evidence = row.evidence.join("\n");
            assert!(
                evidence.contains("msleep_interruptible(10) returned"),
                "{file}: {evidence}"
            );
            assert!(evidence.contains("SI_TIMER"), "{file}: {evidence}");
        }
        let period = row.timer_period_ms.expect("a timer period");
        assert!((0.5..2.0).contains(&period), "{file}: period {period} ms");
        assert!(truth(&entry, "sleeps_interrupted") > 0, "{file}");
    }
}

#[test]
fn tkill_livelock_is_confirmed_on_both_kernels() {
    for entry in entries("livelock-tkill") {
        let file = entry["file"].as_str().expect("file");
        let result = replay(file);
        assert!(
            confirmed_livelock_change(&result, &entry).is_some(),
            "{file}: never a confirmed LIVELOCK"
        );
        let row = judged_row(&result, &entry).unwrap_or_else(|| panic!("{file}: no driver row"));
        assert_eq!(row.verdict, final_verdict_by_rule(&entry), "{file}");
        assert!(row.confirmed, "{file}: not confirmed");
    }
}

#[test]
fn completed_punishments_are_throttled_never_livelock() {
    for entry in entries("throttled") {
        let file = entry["file"].as_str().expect("file");
        let result = replay(file);
        let row = judged_row(&result, &entry).unwrap_or_else(|| panic!("{file}: no driver row"));
        assert_eq!(row.verdict, Verdict::Throttled, "{file}");
        assert!(
            !ever_livelock(&result, &entry),
            "{file}: LIVELOCK at some point"
        );
        assert!(truth(&entry, "sleeps_completed") > 0, "{file}");
    }
}

#[test]
fn semaphore_interruptions_follow_the_streak_rule() {
    for entry in entries("semaphore") {
        let file = entry["file"].as_str().expect("file");
        assert!(truth(&entry, "semaphore_interrupted") >= 1, "{file}");
        let result = replay(file);
        let streak = entry["ground_truth"]["longest_interrupted_streak"]
            .as_u64()
            .expect("longest_interrupted_streak");
        assert_eq!(
            ever_livelock(&result, &entry),
            streak >= 3,
            "{file}: LIVELOCK at some point, against the ground-truth streak {streak}"
        );
        let row = judged_row(&result, &entry).unwrap_or_else(|| panic!("{file}: no driver row"));
        assert_eq!(row.verdict, final_verdict_by_rule(&entry), "{file}");
    }
}

#[test]
fn without_the_misery_mode_there_is_no_livelock() {
    for entry in entries("mitigate-off") {
        let file = entry["file"].as_str().expect("file");
        assert_eq!(
            truth(&entry, "sleeps_completed") + truth(&entry, "sleeps_interrupted"),
            0,
            "{file}"
        );
        let result = replay(file);
        assert!(!ever_livelock(&result, &entry), "{file}");
        let row = judged_row(&result, &entry).unwrap_or_else(|| panic!("{file}: no driver row"));
        assert_ne!(row.verdict, Verdict::Livelock, "{file}");
    }
}

#[test]
fn an_unhandled_guest_split_lock_is_killed() {
    for entry in entries("killed") {
        let file = entry["file"].as_str().expect("file");
        assert_eq!(
            truth(&entry, "returns_false"),
            truth(&entry, "handler_entries"),
            "{file}"
        );
        let result = replay(file);
        let row = judged_row(&result, &entry).unwrap_or_else(|| panic!("{file}: no driver row"));
        assert_eq!(row.verdict, Verdict::Killed, "{file}");
        assert!(row.confirmed, "{file}");
    }
}

#[test]
fn a_pid_filter_keeps_the_driver_out() {
    for entry in entries("filtered") {
        let file = entry["file"].as_str().expect("file");
        assert!(
            truth(&entry, "handler_entries") > 0,
            "{file}: the kernel ran no handler"
        );
        let result = replay(file);
        let tids = tids(&entry);
        assert!(
            result.rows.iter().all(|row| !tids.contains(&row.tid)),
            "{file}: the driver shows up despite -p"
        );
    }
}

/// The guest-trap capture trapped at the fixture module's `slt_ioctl`, a
/// guest kernel address: `tracer report --guest-symbols` with the module's
/// lines of that guest's /proc/kallsyms (captured beside the recording)
/// names it, in the JSON row and in the ftrace text.
#[test]
fn the_guest_trap_ip_is_named_with_the_guests_kallsyms() {
    for entry in entries("killed") {
        let file = entry["file"].as_str().expect("file");
        let recording = fixtures().join(file);
        let kernel = entry["kernel"].as_str().expect("kernel");
        let kallsyms = fixtures().join(kernel).join("kallsyms-splitlock_trap.txt");
        let report = |format: &str| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracer"))
                .arg("report")
                .arg(&recording)
                .arg("--guest-symbols")
                .arg(&kallsyms)
                .args(["--format", format])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{file}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let json: Value = serde_json::from_str(&report("json")).unwrap();
        let tid = u64::from(*tids(&entry).last().expect("a driver thread"));
        let row = json["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["tid"] == tid)
            .unwrap_or_else(|| panic!("{file}: no driver row"));
        assert_eq!(row["last_ip"], ip(&entry), "{file}");
        assert_eq!(
            row["last_ip_symbol"], "slt_ioctl+0x0 [splitlock_trap]",
            "{file}"
        );
        assert!(
            report("ftrace").contains("sym=slt_ioctl+0x0 [splitlock_trap]"),
            "{file}: ftrace text without the name"
        );
    }
}
