//! Writer and reader on a stream of sample events (KVM_RUN returns and
//! the timer signals behind them): round trip, interruption, corruption,
//! versions and file safety.

use std::{io::Read as _, io::Write as _, os::unix::fs::PermissionsExt as _, path::Path};

use crate::{
    ClockInfo, EndReason, Event, EventBody, FORMAT_NAME, FORMAT_VERSION, HostFacts, LostCause,
    LostRecord, Metadata, ProbeReport, Record, Summary, TracerIdentity,
    reader::{ReadError, RecordingReader},
    writer::{CreateError, RecordingWriter, Replacement, create_output},
};

/// Sample events, not a model of anything: `count` pairs of a timer
/// signal to tid 11 and an EINTR return of KVM_RUN, 1 ms apart.
fn sample_events(count: u64) -> Vec<Event> {
    (0..count)
        .flat_map(|i| {
            let ts_ns = 1_000_000_000 + i * 1_000_000;
            let event = |ts_ns, body| Event {
                ts_ns,
                cpu: 0,
                tgid: 10,
                tid: 11,
                comm: "CPU 0/KVM".into(),
                body,
                symbol: None,
            };
            [
                event(
                    ts_ns,
                    EventBody::Signal {
                        sig: 10,
                        errno: 0,
                        code: -2,
                        target_tid: 11,
                        group: Some(0),
                        result: Some(0),
                    },
                ),
                event(
                    ts_ns + 1_000,
                    EventBody::UserspaceExit {
                        reason: 10,
                        errno: -4,
                    },
                ),
            ]
        })
        .collect()
}

pub(crate) fn sample_metadata() -> Metadata {
    Metadata {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        tracer: TracerIdentity {
            version: "test".into(),
            git_commit: "test".into(),
            command_line: vec!["format_tests".into()],
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
            start_ns: 1_000_000_000,
        },
        vms: Vec::new(),
        pid_filter: None,
        ring_bytes: 1 << 22,
        redacted: false,
        guest_symbols: Vec::new(),
    }
}

struct SampleRun {
    events: Vec<Event>,
}

fn write_modelled(path: &Path, finish: bool) -> Vec<Event> {
    let run = SampleRun {
        events: sample_events(250),
    };
    let metadata = sample_metadata();
    let writer = RecordingWriter::create(path, false, metadata, 1 << 16).unwrap();
    for event in &run.events {
        writer.event(event.clone());
    }
    writer.lost(LostRecord {
        ts_ns: run.events.last().unwrap().ts_ns,
        cause: LostCause::RingFull,
        detail: Some("signal_generate".into()),
        count: 2,
    });
    if finish {
        let outcome = writer.finish(Summary::new(
            run.events.last().unwrap().ts_ns + 1,
            EndReason::Duration,
        ));
        assert_eq!(outcome.events_written, run.events.len() as u64);
        assert_eq!(outcome.write_error, None);
    } else {
        drop(writer);
    }
    run.events
}

fn read_all(path: &Path) -> Result<(Vec<Record>, Vec<String>), ReadError> {
    let mut reader = RecordingReader::open(path)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok((records, reader.warnings))
}

#[test]
fn round_trip_keeps_every_event_and_the_summary_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    let events = write_modelled(&path, true);
    let (records, warnings) = read_all(&path).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let read_events: Vec<_> = records
        .iter()
        .filter_map(|record| match record {
            Record::Event(event) => Some(event.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(read_events, events);
    let Some(Record::Summary(summary)) = records.last() else {
        panic!("last record is not the summary");
    };
    assert_eq!(summary.events_written, events.len() as u64);
    assert!(
        records
            .iter()
            .any(|record| matches!(record, Record::Lost(lost) if lost.count == 2))
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn dropped_writer_still_leaves_complete_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    let events = write_modelled(&path, false);
    let (records, warnings) = read_all(&path).unwrap();
    assert_eq!(records.len(), events.len() + 1);
    assert!(warnings[0].contains("no summary record"), "{warnings:?}");
}

#[test]
fn a_cut_last_line_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    let events = write_modelled(&path, true);
    let text = std::fs::read_to_string(&path).unwrap();
    // Cut in the middle of the 11th event line (line 12).
    let cut_at = text.match_indices('\n').nth(11).unwrap().0 - 7;
    std::fs::write(&path, &text[..cut_at]).unwrap();
    let (records, warnings) = read_all(&path).unwrap();
    assert_eq!(records.len(), 10);
    assert_eq!(records[9], Record::Event(events[9].clone()));
    assert!(
        warnings[0].contains(":12: last line is incomplete"),
        "{warnings:?}"
    );
}

#[test]
fn a_corrupt_line_names_its_number_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_modelled(&path, true);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[4] = "{\"type\":\"event\",\"ts_ns\":\"yesterday\"}";
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let error = read_all(&path).unwrap_err();
    assert!(error.is_bad_input());
    let message = error.to_string();
    assert!(
        message.contains("rec.jsonl:5: a JSON record with \"type\" event, lost or summary"),
        "{message}"
    );

    lines[4] = "not json at all";
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    assert!(read_all(&path).unwrap_err().to_string().contains(":5:"));
}

#[test]
fn wrong_version_and_foreign_files_are_rejected_on_line_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_modelled(&path, true);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("\"version\":1,", "\"version\":99,", 1)).unwrap();
    let error = read_all(&path).unwrap_err();
    assert!(
        matches!(error, ReadError::WrongVersion { found: 99, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(":1: recording format version 99, this tracer reads version 1")
    );

    std::fs::write(&path, "CPU 0/KVM-4250 [001] 1.000000: kvm_exit: ...\n").unwrap();
    let error = read_all(&path).unwrap_err();
    assert!(matches!(error, ReadError::NotARecording { .. }), "{error}");

    std::fs::write(&path, "{\"type\":\"meta\",\"format\":\"perf.data\"}\n").unwrap();
    assert!(matches!(
        read_all(&path).unwrap_err(),
        ReadError::NotARecording { .. }
    ));

    std::fs::write(&path, "").unwrap();
    assert!(matches!(
        read_all(&path).unwrap_err(),
        ReadError::Empty { .. }
    ));

    let missing = read_all(&dir.path().join("absent.jsonl")).unwrap_err();
    assert!(!missing.is_bad_input());
}

#[test]
fn lines_after_the_summary_or_a_second_meta_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_modelled(&path, true);
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap().to_owned();
    let mut appended = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(appended, "{first}").unwrap();
    let error = read_all(&path).unwrap_err().to_string();
    assert!(
        error.contains("nothing after the summary record"),
        "{error}"
    );
}

#[test]
fn output_files_are_never_clobbered_or_followed() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing");
    std::fs::write(&existing, "precious").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        create_output(&existing, false),
        Err(CreateError::Exists(_))
    ));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "precious");

    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&existing, &link).unwrap();
    assert!(matches!(
        create_output(&link, false),
        Err(CreateError::Symlink(_))
    ));
    assert!(matches!(
        create_output(&link, true),
        Err(CreateError::Symlink(_))
    ));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "precious");

    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    assert!(matches!(
        create_output(&dangling, false),
        Err(CreateError::Symlink(_))
    ));
    assert!(!dir.path().join("nowhere").exists());

    drop(create_output(&existing, true).unwrap());
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "");
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "--force tightens an overwritten file's mode");
}

#[test]
fn a_replacement_touches_the_path_only_when_committed() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("report.txt");
    std::fs::write(&existing, "earlier").unwrap();
    let link = dir.path().join("link.txt");
    std::os::unix::fs::symlink(&existing, &link).unwrap();
    assert!(matches!(
        Replacement::create(&existing, false),
        Err(CreateError::Exists(_))
    ));
    assert!(matches!(
        Replacement::create(&link, true),
        Err(CreateError::Symlink(_))
    ));
    assert!(matches!(
        Replacement::create(dir.path(), true),
        Err(CreateError::NotRegular { .. })
    ));
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };

    // Dropped unfinished: the path keeps its content, the temporary goes.
    let mut unfinished = Replacement::create(&existing, true).unwrap();
    unfinished.write_all(b"half").unwrap();
    assert_eq!(names().len(), 3, "{:?}", names());
    drop(unfinished);
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "earlier");
    assert_eq!(names(), ["link.txt", "report.txt"]);

    let mut whole = Replacement::create(&existing, true).unwrap();
    whole.write_all(b"whole").unwrap();
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "earlier");
    whole.commit().unwrap();
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "whole");
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(names(), ["link.txt", "report.txt"]);

    // Without --force, a file that appeared meanwhile is kept.
    let late = dir.path().join("late.txt");
    let mut racing = Replacement::create(&late, false).unwrap();
    racing.write_all(b"report").unwrap();
    std::fs::write(&late, "appeared").unwrap();
    assert!(matches!(racing.commit(), Err(CreateError::Exists(_))));
    assert_eq!(std::fs::read_to_string(&late).unwrap(), "appeared");
    assert_eq!(names(), ["late.txt", "link.txt", "report.txt"]);
}

#[test]
fn a_full_queue_is_counted_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    let run = SampleRun {
        events: sample_events(1000),
    };
    let metadata = sample_metadata();
    // A queue of one record: most events find it full.
    let writer = RecordingWriter::create(&path, false, metadata, 1).unwrap();
    for event in &run.events {
        writer.event(event.clone());
    }
    // The queue-full records are stamped with the clock: so is the summary.
    let outcome = writer.finish(Summary::new(
        crate::clock_ns(libc::CLOCK_MONOTONIC),
        EndReason::Signal,
    ));
    assert!(outcome.queue_dropped > 0, "{outcome:?}");
    let (records, _) = read_all(&path).unwrap();
    let written = records
        .iter()
        .filter(|record| matches!(record, Record::Event(_)))
        .count() as u64;
    let recorded_drops: u64 = records
        .iter()
        .filter_map(|record| match record {
            Record::Lost(lost) if lost.cause == LostCause::RecorderQueueFull => Some(lost.count),
            _ => None,
        })
        .sum();
    assert_eq!(written, outcome.events_written);
    assert_eq!(written + recorded_drops, run.events.len() as u64);
    let Some(Record::Summary(summary)) = records.last() else {
        panic!("no summary");
    };
    assert_eq!(summary.events_not_written, recorded_drops);
}

#[test]
fn device_nodes_fifos_sockets_and_directories_are_never_opened_or_chmod_ed() {
    use std::os::unix::fs::FileTypeExt as _;
    let dir = tempfile::tempdir().unwrap();
    // /dev/null: opened for writing and chmod-ed 0600 by an earlier
    // `record -o /dev/null --force`, which locks users out of it.
    let null = Path::new("/dev/null");
    let before = std::fs::metadata(null).unwrap().permissions().mode();
    for force in [false, true] {
        let error = create_output(null, force).unwrap_err();
        assert!(
            matches!(
                error,
                CreateError::NotRegular {
                    kind: "a character device",
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("not a regular file"), "{error}");
    }
    assert_eq!(
        std::fs::metadata(null).unwrap().permissions().mode(),
        before
    );

    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let socket_path = dir.path().join("socket");
    let _socket = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    for (path, kind) in [
        (&fifo, "a FIFO"),
        (&socket_path, "a socket"),
        (&subdir, "a directory"),
    ] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        for force in [false, true] {
            // Returns at once: a FIFO without a reader must not block.
            match create_output(path, force) {
                Err(CreateError::NotRegular { kind: found, .. }) => assert_eq!(found, kind),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode(), mode);
    }
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(subdir.is_dir());
}

/// A recording with one event line replaced by `line`, then read.
fn read_with_line(index: usize, line: &str) -> Result<(Vec<Record>, Vec<String>), ReadError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_modelled(&path, true);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[index] = line.to_owned();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    read_all(&path)
}

fn event_line(ts_ns: u64, cpu: u32) -> String {
    let mut event = sample_events(1).remove(0);
    event.ts_ns = ts_ns;
    event.cpu = cpu;
    serde_json::to_string(&Record::Event(event)).unwrap()
}

#[test]
fn a_timestamp_out_of_the_recording_range_is_an_error_naming_the_line() {
    // u64::MAX made `report` loop for ever (the replay tick wrapped).
    let error = read_with_line(4, &event_line(u64::MAX, 0)).unwrap_err();
    assert!(error.is_bad_input());
    let message = error.to_string();
    assert!(
        message.contains("rec.jsonl:5: an event's ts_ns within the recording's time range"),
        "{message}"
    );
    assert!(message.contains("found 18446744073709551615"), "{message}");
    // Losses are stamped after the metadata's clock was read.
    let lost = serde_json::to_string(&Record::Lost(LostRecord {
        ts_ns: 999_999_999,
        cause: LostCause::RingFull,
        detail: None,
        count: 1,
    }))
    .unwrap();
    let error = read_with_line(4, &lost).unwrap_err().to_string();
    assert!(
        error.contains(":5: a lost record's ts_ns within the recording's time range 1000000000..="),
        "{error}"
    );
    // Just after the start and a little before it are fine.
    read_with_line(1, &event_line(1_000_000_000 - 500_000_000, 0)).unwrap();
}

#[test]
fn a_cpu_going_back_in_time_is_an_error_but_interleaved_cpus_are_not() {
    // Line 6 is an event at 1.002 s on CPU 0: 2 s before it on CPU 0 is
    // reordering no interruption explains.
    let error = read_with_line(6, &event_line(1_000_000_000 + 250_000_000_000, 0))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(":8: ts_ns of CPU 0's events in order"),
        "{error}"
    );
    // Another CPU's clock view is independent of CPU 0's order, and a step
    // back within the tolerance (a nested program) is accepted.
    read_with_line(6, &event_line(1_000_000_000, 3)).unwrap();
    read_with_line(6, &event_line(1_000_000_000 + 1_000_000, 0)).unwrap();
}

#[test]
fn counts_beyond_bounds_and_a_summary_before_the_events_are_errors() {
    let lost = |count: u64| {
        serde_json::to_string(&Record::Lost(LostRecord {
            ts_ns: 1_100_000_000,
            cause: LostCause::RingFull,
            detail: None,
            count,
        }))
        .unwrap()
    };
    let error = read_with_line(3, &lost(u64::MAX)).unwrap_err().to_string();
    assert!(
        error.contains(":4: a lost record's count at most"),
        "{error}"
    );
    read_with_line(3, &lost(1_000)).unwrap();

    // An event 5 s after the start on CPU 1, then the summary at 1.25 s.
    let error = read_with_line(3, &event_line(6_000_000_000, 1))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the summary's ts_ns not before the last record's (6000000000)"),
        "{error}"
    );
}

#[test]
fn an_endless_line_is_an_error_not_unbounded_memory() {
    // `tracer report /dev/zero`: no newline ever. The reader stops after
    // MAX_LINE_BYTES with the line's number.
    let meta = serde_json::to_string(&Record::Meta(Box::new(sample_metadata()))).unwrap() + "\n";
    let input =
        std::io::BufReader::new(std::io::Cursor::new(meta.into_bytes()).chain(std::io::repeat(0)));
    let mut reader = RecordingReader::new(Path::new("zero"), input).unwrap();
    let error = reader.next_record().unwrap_err().to_string();
    assert!(
        error.contains("zero:2: a record line of at most 64 MiB"),
        "{error}"
    );
    let error = RecordingReader::new(
        Path::new("/dev/zero"),
        std::io::BufReader::new(std::io::repeat(0)),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        error.contains("/dev/zero:1: a record line of at most 64 MiB"),
        "{error}"
    );
}
