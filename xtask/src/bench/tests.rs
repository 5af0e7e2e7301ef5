//! The benchmark's reading of recordings and of the tracer's JSON.

use std::{collections::HashSet, io::Write as _, path::Path};

use tracer_events::{
    ClockInfo, CountedThread, EndReason, Event, EventBody, FORMAT_NAME, FORMAT_VERSION, HostFacts,
    KernelCounts, LostCause, LostRecord, Metadata, ProbeReport, Record, Summary, TracerIdentity,
    TrapSource, Verdict,
};

use super::{
    ReportJson, StormReport, kernel_counts, observer::bpftrace_timer_counts, pattern_onset,
    read_recording,
};

fn metadata() -> Metadata {
    Metadata {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        tracer: TracerIdentity {
            version: "test".into(),
            git_commit: "test".into(),
            command_line: vec!["xtask-test".into()],
        },
        host: HostFacts::default(),
        probes: ProbeReport {
            entries: Vec::new(),
        },
        mode: None,
        layout_problems: Vec::new(),
        clock: ClockInfo {
            name: "CLOCK_MONOTONIC".into(),
            realtime_offset_ns: 0,
            start_ns: 0,
        },
        vms: Vec::new(),
        pid_filter: None,
        ring_bytes: 1 << 22,
        redacted: false,
        guest_symbols: Vec::new(),
    }
}

fn event(ts_ns: u64, tid: u32, body: EventBody) -> Record {
    Record::Event(Event {
        ts_ns,
        cpu: 0,
        tgid: 10,
        tid,
        comm: "storm".into(),
        body,
        symbol: None,
    })
}

fn signal(ts_ns: u64, target_tid: u32) -> Record {
    // The context is whoever the timer interrupted, not the target.
    event(
        ts_ns,
        1,
        EventBody::Signal {
            sig: 10,
            errno: 0,
            code: -2,
            target_tid,
            group: Some(0),
            result: Some(0),
        },
    )
}

fn trap(ts_ns: u64) -> Record {
    event(
        ts_ns,
        11,
        EventBody::SplitLockTrap {
            source: TrapSource::Guest,
            ip: 0x1000,
        },
    )
}

fn vm_exit(ts_ns: u64) -> Record {
    event(
        ts_ns,
        11,
        EventBody::VmExit {
            exit_reason: 0x11,
            isa: 1,
            guest_rip: 0x1000,
            info1: 0,
            info2: 0,
            intr_info: 0,
            error_code: 0,
            vcpu_id: 0,
        },
    )
}

fn write(path: &Path, records: &[Record]) {
    let mut file = std::fs::File::create(path).unwrap();
    writeln!(
        file,
        "{}",
        serde_json::to_string(&Record::Meta(Box::new(metadata()))).unwrap()
    )
    .unwrap();
    for record in records {
        writeln!(file, "{}", serde_json::to_string(record).unwrap()).unwrap();
    }
}

fn summary() -> Summary {
    let mut summary = Summary::new(100, EndReason::Signal);
    summary.events_not_written = 4;
    summary.losses.ring_full.insert("signal_generate".into(), 7);
    summary.counted_threads = vec![CountedThread {
        tid: 11,
        tgid: 10,
        kernel: KernelCounts {
            timer_signals: 3,
            ..KernelCounts::default()
        },
    }];
    summary
}

#[test]
fn read_recording_counts_the_signals_aimed_at_the_storm_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storm.jsonl");
    write(
        &path,
        &[
            signal(1, 11),
            signal(2, 12),
            signal(3, 11),
            // Not a storm thread.
            signal(4, 99),
            // Runs in tid 11 but is no signal.
            event(
                5,
                11,
                EventBody::UserspaceExit {
                    reason: 10,
                    errno: -4,
                },
            ),
            Record::Lost(LostRecord {
                ts_ns: 6,
                cause: LostCause::RingFull,
                detail: Some("signal_generate".into()),
                count: 7,
            }),
            signal(7, 11),
            Record::Summary(Box::new(summary())),
        ],
    );
    let counts = read_recording(&path, &HashSet::from([11, 12])).unwrap();
    let mut recorded: Vec<(u32, u64)> = counts.recorded.into_iter().collect();
    recorded.sort_unstable();
    assert_eq!(recorded, [(11, 3), (12, 1)]);
    assert_eq!(*counts.summary, summary());
}

#[test]
fn read_recording_without_a_summary_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.jsonl");
    write(&path, &[signal(1, 11)]);
    let error = read_recording(&path, &HashSet::from([11])).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("no summary"), "{text}");
}

#[test]
fn read_recording_reports_a_corrupt_line_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.jsonl");
    write(&path, &[signal(1, 11)]);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(file, "{{\"type\":\"event\",\"target_tid\":11}}").unwrap();
    let error = read_recording(&path, &HashSet::from([11])).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains(&format!("{}:3:", path.display())), "{text}");
}

#[test]
fn pattern_onset_is_the_first_pattern_event_from_the_punishment_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modelled.jsonl");
    write(
        &path,
        &[
            trap(5),
            vm_exit(6),
            signal(11, 11),
            vm_exit(12),
            trap(15),
            vm_exit(16),
            Record::Summary(Box::new(Summary::new(20, EndReason::Duration))),
        ],
    );
    assert_eq!(pattern_onset(&path, "full", 10).unwrap(), Some(15));
    assert_eq!(
        pattern_onset(&path, "tracepoint-only", 10).unwrap(),
        Some(12)
    );
    assert_eq!(pattern_onset(&path, "full", 5).unwrap(), Some(5));
    assert_eq!(pattern_onset(&path, "full", 16).unwrap(), None);
}

/// The benchmark's view of `tracer report --format json`, against the
/// tracer's own snapshot of that document.
#[test]
fn report_json_reads_the_tracers_json_summary() {
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../tracer/src/report/snapshots/tracer__report__tests__json_summary_of_a_modelled_livelock.snap",
    );
    let text = std::fs::read_to_string(&snapshot)
        .unwrap_or_else(|error| panic!("{}: {error}", snapshot.display()));
    // insta's header is `---`, metadata, `---`.
    let json = text
        .splitn(3, "---\n")
        .nth(2)
        .unwrap_or_else(|| panic!("{}: no insta header", snapshot.display()));
    let report: ReportJson = serde_json::from_str(json).unwrap();
    assert!(!report.verdict_changes.is_empty());
    let first_livelock = report
        .verdict_changes
        .iter()
        .find(|change| change.to == Verdict::Livelock)
        .expect("the modelled livelock reaches LIVELOCK");
    assert!(first_livelock.ts_ns > 0);
}

#[test]
fn storm_report_reads_what_the_storm_prints() {
    // `tracer signal-storm`'s document (storm::StormReport) as printed.
    let json = r#"{"elapsed_us":2000000,"target_rate":null,"interval_ns":0,"signal":10,
        "threads":[{"tid":101,"signals":400000},{"tid":102,"signals":410000}],
        "signals_total":810000,"signals_per_s":405000.0}"#;
    let report: StormReport = serde_json::from_str(json).unwrap();
    assert_eq!(
        report
            .threads
            .iter()
            .map(|t| (t.tid, t.signals))
            .collect::<Vec<_>>(),
        [(101, 400_000), (102, 410_000)]
    );
    assert!((report.signals_per_s - 405_000.0).abs() < f64::EPSILON);
}

#[test]
fn read_recording_counts_tkill_kicks_and_eintr_returns_of_the_vcpu_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kicks.jsonl");
    let kick = |ts_ns, target_tid, code| {
        event(
            ts_ns,
            1,
            EventBody::Signal {
                sig: 10,
                errno: 0,
                code,
                target_tid,
                group: Some(0),
                result: Some(0),
            },
        )
    };
    let exit = |ts_ns, tid, errno| event(ts_ns, tid, EventBody::UserspaceExit { reason: 0, errno });
    let mut with_row = summary();
    with_row.threads = Vec::new();
    write(
        &path,
        &[
            kick(1, 11, -6),
            kick(2, 11, -6),
            // A timer signal and a kick to another thread are not kicks of 11.
            kick(3, 11, -2),
            kick(4, 99, -6),
            exit(5, 11, -4),
            // Not EINTR, and not a storm thread.
            exit(6, 11, 0),
            exit(7, 99, -4),
            Record::Summary(Box::new(with_row)),
        ],
    );
    let tids: HashSet<u32> = [11].into_iter().collect();
    let counted = read_recording(&path, &tids).unwrap();
    assert_eq!(counted.kicks.get(&11), Some(&2));
    // Every signal to 11 is a recorded signal, the timer one too.
    assert_eq!(counted.recorded.get(&11), Some(&3));
    assert_eq!(counted.eintr.get(&11), Some(&1));
    assert_eq!(counted.kicks.len() + counted.eintr.len(), 2);
    let kernel = kernel_counts(&counted.summary);
    assert_eq!(kernel[&11].timer_signals, 3);
}

#[test]
fn bpftrace_timer_counts_reads_only_the_timer_signals_of_its_map_dump() {
    let dump = "attached\n\n@signals[1234, -2]: 17\n@signals[1234, -6]: 5\n@signals[99, -2]: 1\n@exits[1234, -4]: 3\n";
    let counts = bpftrace_timer_counts(dump);
    assert_eq!(counts.len(), 2);
    assert_eq!(counts[&1234], 17);
    assert_eq!(counts[&99], 1);
}
