//! Golden renderings of modelled recordings (the model's kernel paths are
//! in `simulate.rs`), and the Perfetto export decoded back.

use std::path::Path;

use super::{Replay, ReplayResult, ftrace, render_json, render_table};
use tracer_events::{
    EndReason, EventBody, Record, Summary, Verdict, reader::RecordingReader,
    writer::RecordingWriter,
};

use crate::simulate::{self, ProbeSet, Scenario};

/// A livelocked vCPU (1 ms timer) and a throttled one (50 ms) on a HZ=250
/// host, recorded through the real writer.
fn write_recording(path: &Path, duration_ms: u64, probes: ProbeSet) {
    let mut stuck = Scenario::seed_001(250, 1.0, duration_ms);
    stuck.probes = probes;
    let mut slow = Scenario::seed_001(250, 50.0, duration_ms).with_identity(4242, 4251, "haos", 1);
    slow.probes = probes;
    let scenarios = [stuck, slow];
    let mut events: Vec<_> = scenarios
        .iter()
        .flat_map(|scenario| simulate::run(scenario).events)
        .collect();
    events.sort_by_key(|event| (event.ts_ns, event.tid));
    let start = events[0].ts_ns;
    let metadata = simulate::modelled_metadata(&scenarios, probes, start);
    let writer = RecordingWriter::create(path, false, metadata, 1 << 20).unwrap();
    for event in &events {
        writer.event(event.clone());
    }
    writer.finish(Summary::new(
        events.last().unwrap().ts_ns,
        EndReason::Duration,
    ));
}

struct Replayed {
    metadata: tracer_events::Metadata,
    records: Vec<Record>,
    result: ReplayResult,
    end_ns: u64,
}

fn replay(path: &Path) -> Replayed {
    let mut reader = RecordingReader::open(path).unwrap();
    let mut replay = Replay::new(reader.metadata.clone());
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().unwrap() {
        replay.apply(&record);
        records.push(record);
    }
    Replayed {
        metadata: reader.metadata,
        records,
        result: replay.finish(),
        end_ns: replay.end_ns(),
    }
}

#[test]
fn table_report_of_a_modelled_livelock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_recording(&path, 3000, ProbeSet::Full);
    let replayed = replay(&path);
    let table = render_table(&replayed.result, replayed.metadata.clock.start_ns);
    insta::assert_snapshot!(table);
    // Same file, same output.
    let again = replay(&path);
    assert_eq!(
        render_table(&again.result, again.metadata.clock.start_ns),
        table
    );
}

#[test]
fn json_summary_of_a_modelled_livelock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_recording(&path, 3000, ProbeSet::Full);
    let replayed = replay(&path);
    let json = render_json(&replayed.metadata, &replayed.result, &[]);
    let threads = json["threads"].as_array().unwrap();
    assert_eq!(threads[0]["verdict"], "livelock");
    assert_eq!(threads[1]["verdict"], "throttled");
    insta::assert_json_snapshot!(json);
}

#[test]
fn ftrace_report_of_a_modelled_livelock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_recording(&path, 40, ProbeSet::Full);
    let replayed = replay(&path);
    let mut text = ftrace::header(&replayed.metadata);
    for record in &replayed.records {
        if let Record::Event(event) = record {
            text.push_str(&ftrace::event_line(event));
            text.push('\n');
        }
    }
    text.push_str(&ftrace::footer(&replayed.result, &[]));
    insta::assert_snapshot!(text);
}

#[test]
fn tracepoint_only_recording_reports_an_inferred_livelock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_recording(&path, 1000, ProbeSet::TracepointOnly);
    let replayed = replay(&path);
    let stuck = replayed
        .result
        .rows
        .iter()
        .find(|row| row.tid == 4250)
        .unwrap();
    assert_eq!(stuck.verdict, Verdict::Livelock);
    assert!(!stuck.confirmed);
    assert!(
        render_table(&replayed.result, replayed.metadata.clock.start_ns)
            .contains("LIVELOCK (inferred)")
    );
}

#[cfg(feature = "perfetto")]
#[test]
fn perfetto_export_decodes_back_with_tracks_slices_instants_and_counters() {
    use perfetto_protos::{trace::Trace, track_event::track_event::Type};
    use protobuf::Message as _;

    use super::perfetto::PerfettoBuilder;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_recording(&path, 1500, ProbeSet::Full);
    let replayed = replay(&path);
    let mut builder = PerfettoBuilder::new(&replayed.metadata, Vec::new());
    let mut traps = 0;
    let mut signals = 0;
    for record in &replayed.records {
        if let Record::Event(event) = record {
            builder.event(event);
            match event.body {
                EventBody::SplitLockTrap { source, .. }
                    if source != crate::events::TrapSource::Warn =>
                {
                    traps += 1;
                }
                EventBody::Signal { .. } => signals += 1,
                _ => {}
            }
        }
    }
    let (bytes, written) = builder
        .finish(&replayed.result.changes, replayed.end_ns)
        .unwrap();
    assert_eq!(written, bytes.len() as u64);
    let trace = Trace::parse_from_bytes(&bytes).expect("valid Perfetto protobuf");
    let threads: Vec<_> = trace
        .packet
        .iter()
        .filter(|packet| packet.has_track_descriptor())
        .filter_map(|packet| packet.track_descriptor().thread.as_ref())
        .map(|thread| (thread.pid(), thread.tid(), thread.thread_name().to_owned()))
        .collect();
    assert_eq!(
        threads,
        vec![
            (4242, 4250, "CPU 0/KVM".into()),
            (4242, 4251, "CPU 1/KVM".into())
        ]
    );
    let events: Vec<_> = trace
        .packet
        .iter()
        .filter(|packet| packet.has_track_event())
        .map(|packet| (packet.timestamp(), packet.track_event()))
        .collect();
    let count = |kind: Type| {
        events
            .iter()
            .filter(|(_, event)| event.type_() == kind)
            .count()
    };
    assert_eq!(count(Type::TYPE_SLICE_BEGIN), traps);
    assert_eq!(count(Type::TYPE_SLICE_END), traps);
    let signal_instants = events
        .iter()
        .filter(|(_, event)| event.name().starts_with("SI_TIMER SIGUSR1"))
        .count();
    assert_eq!(signal_instants, signals);
    assert!(count(Type::TYPE_COUNTER) > 0);
    assert!(
        events
            .iter()
            .any(|(_, event)| event.name() == "verdict LIVELOCK"),
        "a verdict instant"
    );
    // Counter tracks sum to the traps.
    let trap_counter_total: i64 = events
        .iter()
        .filter(|(_, event)| event.type_() == Type::TYPE_COUNTER && event.track_uuid() >> 40 == 3)
        .map(|(_, event)| event.counter_value())
        .sum();
    assert_eq!(trap_counter_total, traps as i64);
    // Every packet carries the monotonic clock and one sequence.
    assert!(
        trace
            .packet
            .iter()
            .all(|packet| packet.timestamp_clock_id() == 3
                && packet.trusted_packet_sequence_id() == 1)
    );
}

/// A vCPU-looking KVM_RUN return from thread `tid` at `ts_ns`.
fn exit_of(tid: u32, ts_ns: u64) -> tracer_events::Event {
    tracer_events::Event {
        ts_ns,
        cpu: tid % 2,
        tgid: tid,
        tid,
        comm: "CPU 0/KVM".into(),
        body: EventBody::UserspaceExit {
            reason: 2,
            errno: 0,
        },
        symbol: None,
    }
}

#[test]
fn a_million_threads_stay_bounded_evict_in_constant_time_and_are_counted() {
    const THREADS: u32 = 1_000_000;
    let start = 1_000_000_000_000;
    let metadata = simulate::modelled_metadata(&[], ProbeSet::Full, start);
    let mut replay = Replay::new(metadata);
    let began = std::time::Instant::now();
    // 1 µs apart: all within one expiry period, so only the limit drops them.
    for tid in 1..=THREADS {
        replay.apply(&Record::Event(exit_of(tid, start + u64::from(tid) * 1_000)));
    }
    let result = replay.finish();
    let elapsed = began.elapsed();
    let kept = crate::model::MAX_THREADS as u64;
    assert_eq!(result.threads_not_kept, u64::from(THREADS) - kept);
    assert_eq!(result.rows.len() as u64, kept);
    // The newest are the ones kept.
    assert!(
        result
            .rows
            .iter()
            .all(|row| row.tid > THREADS - kept as u32)
    );
    // A min over the map per eviction took 16.7 s for 300k threads in a
    // release build; a queue takes well under a second, a few in debug.
    assert!(elapsed < std::time::Duration::from_mins(1), "{elapsed:?}");
    eprintln!("replayed {THREADS} threads in {elapsed:?}");
    let table = render_table(&result, start);
    assert!(
        table.contains("983616 threads not kept: more than 16384 threads were active at once"),
        "{table}"
    );
    let json = render_json(&replay.metadata, &result, &[]);
    assert_eq!(json["threads_not_kept"], 983_616);
    assert!(ftrace::footer(&result, &[]).contains("# 983616 threads not kept"));
}

#[test]
fn a_replay_of_the_largest_timestamp_ends() {
    // The reader rejects such a value; the replay must still not wrap its
    // tick (it looped for ever at 100 % CPU).
    let metadata = simulate::modelled_metadata(&[], ProbeSet::Full, 0);
    let mut replay = Replay::new(metadata);
    replay.apply(&Record::Event(exit_of(7, 5_000_000_000)));
    replay.apply(&Record::Event(exit_of(7, u64::MAX)));
    replay.apply(&Record::Event(exit_of(7, u64::MAX)));
    let result = replay.finish();
    assert_eq!(result.rows.len(), 1);
    assert_eq!(replay.end_ns(), u64::MAX);
}

#[test]
fn a_comm_with_terminal_escapes_is_escaped_in_text_and_exact_in_json() {
    // Any process can set its comm: title, clear screen, a forged line.
    let hostile = "\x1b]0;x\x07\x1b[2J\nfake";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_recording(&path, 300, ProbeSet::Full);
    // Rename the livelocked vCPU thread in every event, as the kernel would
    // report it after a prctl(PR_SET_NAME).
    let text = std::fs::read_to_string(&path).unwrap();
    let hostile_json = serde_json::to_string(hostile).unwrap();
    std::fs::write(&path, text.replace("\"CPU 0/KVM\"", &hostile_json)).unwrap();
    let replayed = replay(&path);
    let mut ftrace_text = ftrace::header(&replayed.metadata);
    for record in &replayed.records {
        if let Record::Event(event) = record {
            ftrace_text.push_str(&ftrace::event_line(event));
            ftrace_text.push('\n');
        }
    }
    ftrace_text.push_str(&ftrace::footer(&replayed.result, &[]));
    let table = render_table(&replayed.result, replayed.metadata.clock.start_ns);
    for (name, output) in [("ftrace", &ftrace_text), ("table", &table)] {
        assert!(!output.contains('\x1b'), "{name} holds a raw ESC");
        assert!(!output.contains('\x07'), "{name} holds a raw BEL");
        assert!(
            !output.lines().any(|line| line.starts_with("fake")),
            "{name} has a forged line"
        );
    }
    assert!(
        ftrace_text.contains("\\x1b]0;x\\x07\\x1b[2J\\x0afake-"),
        "{ftrace_text}"
    );
    assert!(table.contains("\\x1b]0;x\\x07"), "{table}");
    let json = render_json(&replayed.metadata, &replayed.result, &[]);
    let comms: Vec<&str> = json["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| row["comm"].as_str())
        .collect();
    assert!(comms.contains(&hostile), "{comms:?}");
}

#[test]
fn a_non_vcpu_thread_with_timer_signals_never_shows_up_in_verdict_changes() {
    // Timer signals to an ordinary thread (tid 31337, never running in its
    // own context): it appeared in verdict changes with pid 0.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec.jsonl");
    write_recording(&path, 300, ProbeSet::Full);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let summary = lines.pop().unwrap();
    let meta: tracer_events::Metadata = match serde_json::from_str(&lines[0]).unwrap() {
        Record::Meta(meta) => *meta,
        _ => unreachable!(),
    };
    let start = meta.clock.start_ns;
    let mut with_signals: Vec<(u64, String)> = lines[1..]
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            (value["ts_ns"].as_u64().unwrap(), line.clone())
        })
        .collect();
    for i in 0..200u64 {
        let ts_ns = start + i * 1_000_000;
        let signal = tracer_events::Event {
            ts_ns,
            cpu: 1,
            tgid: 0,
            tid: 0,
            comm: "swapper/1".into(),
            body: EventBody::Signal {
                sig: 14,
                errno: 0,
                code: -2,
                target_tid: 31_337,
                group: Some(0),
                result: Some(0),
            },
            symbol: None,
        };
        with_signals.push((
            ts_ns,
            serde_json::to_string(&Record::Event(signal)).unwrap(),
        ));
    }
    with_signals.sort_by_key(|(ts, _)| *ts);
    let mut out = vec![lines[0].clone()];
    out.extend(with_signals.into_iter().map(|(_, line)| line));
    out.push(summary);
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
    let replayed = replay(&path);
    assert!(!replayed.result.changes.is_empty());
    for change in &replayed.result.changes {
        assert_ne!(change.tid, 31_337, "{change:?}");
        assert_ne!(change.pid, 0, "{change:?}");
    }
    let json = render_json(&replayed.metadata, &replayed.result, &[]);
    assert!(
        json["verdict_changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|change| change["pid"] != 0)
    );
}
