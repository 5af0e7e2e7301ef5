//! `tracer record` and `tracer report` as a user runs them: the real binary
//! recording real tracepoint events from the KVM reproducer, stopped by
//! SIGINT, SIGTERM or SIGKILL; a real full filesystem; bad input.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{assert_counted, have_kvm, have_root, skip, split_lock_repro, tkill_repro};
use tracer::{
    report::Replay,
    repro::{self, ReproReport, TimerMode},
    simulate::{self, ProbeSet, Scenario},
};
use tracer_events::{
    EndReason, LossCounts, Record, Summary, ThreadRow, Verdict, reader::RecordingReader,
    writer::RecordingWriter,
};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

/// Starts `tracer record` and waits until its metadata line is written,
/// which happens after every probe is attached.
fn start_recorder(path: &Path) -> Child {
    let child = Command::new(TRACER)
        .args(["record", "-o"])
        .arg(path)
        .args(["-d", "60s", "-i", "10s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tracer record");
    let started = Instant::now();
    while !std::fs::read_to_string(path).is_ok_and(|text| text.contains('\n')) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tracer record did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

fn run_repro(period: Duration, vcpus: u32, mode: TimerMode) -> ReproReport {
    repro::run(&split_lock_repro(
        period,
        Duration::from_millis(1500),
        vcpus,
        mode,
    ))
    .expect("reproducer")
}

struct Replayed {
    records: Vec<Record>,
    warnings: Vec<String>,
    rows: Vec<ThreadRow>,
    summary: Option<Summary>,
}

fn replay(path: &Path) -> Replayed {
    let mut reader = RecordingReader::open(path).expect("recording opens");
    let mut replay = Replay::new(reader.metadata.clone());
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().expect("recording parses") {
        replay.apply(&record);
        records.push(record);
    }
    let result = replay.finish();
    Replayed {
        records,
        warnings: reader.warnings,
        rows: result.rows,
        summary: replay.summary,
    }
}

fn recursion_misses(losses: &LossCounts, program: &str) -> u64 {
    losses.recursion_misses.get(program).copied().unwrap_or(0)
}

fn round_trip(period: Duration, vcpus: u32) {
    let name = format!("record_report_round_trip_{}ms", period.as_millis());
    if !have_root(&name) || !have_kvm(&name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hang.jsonl");
    let recorder = start_recorder(&path);
    let report = run_repro(period, vcpus, TimerMode::Periodic);
    std::thread::sleep(Duration::from_millis(300));
    signal(&recorder, libc::SIGINT);
    let output = recorder.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");

    let replayed = replay(&path);
    assert!(replayed.warnings.is_empty(), "{:?}", replayed.warnings);
    let summary = replayed.summary.expect("summary record");
    assert_eq!(summary.ended_by, EndReason::Signal);
    assert_eq!(summary.events_not_written, 0);
    assert_eq!(summary.losses.ring_total(), 0, "{:?}", summary.losses);
    let event_lines = replayed
        .records
        .iter()
        .filter(|record| matches!(record, Record::Event(_)))
        .count() as u64;
    assert_eq!(summary.events_written, event_lines);
    let signal_misses = recursion_misses(&summary.losses, "signal_generate")
        + recursion_misses(&summary.losses, "signal_generate_raw")
        + summary.losses.skipped_by_kernel_total();
    let exit_misses = recursion_misses(&summary.losses, "kvm_userspace_exit");

    for vcpu in &report.vcpus {
        // What the recorder's live model said at the end ...
        let live = summary
            .threads
            .iter()
            .find(|row| row.tid == vcpu.tid)
            .unwrap_or_else(|| panic!("vCPU {} missing from the summary", vcpu.tid));
        // ... and what the replay says: the same model on the same events.
        let replayed_row = replayed
            .rows
            .iter()
            .find(|row| row.tid == vcpu.tid)
            .expect("vCPU in the replay");
        assert_eq!(replayed_row.totals, live.totals);
        assert_eq!(replayed_row.pid, report.pid);
        assert_eq!(replayed_row.vcpu, Some(vcpu.index));
        assert_eq!(live.verdict, Verdict::Ok, "{:?}", live.evidence);
        // Against the reproducer's own counts.
        assert_counted(
            "timer signals",
            live.totals.timer_signals,
            vcpu.signals_consumed,
            signal_misses,
        );
        assert_counted(
            "EINTR exits",
            live.totals.eintr_exits,
            vcpu.eintr_returns,
            exit_misses,
        );
        assert_counted(
            "KVM_RUN returns",
            live.totals.userspace_exits,
            vcpu.kvm_runs,
            exit_misses,
        );
        // And the kernel's own counters, recorded in the summary.
        let kernel = live.kernel.as_ref().expect("kernel counts in the summary");
        assert_eq!(kernel.timer_signals, live.totals.timer_signals);
        assert_eq!(kernel.eintr_exits, live.totals.eintr_exits);
        // The period the recorder measured is the configured one.
        let measured = live.timer_period_ms.or(replayed_row.timer_period_ms);
        let configured = period.as_secs_f64() * 1e3;
        match measured {
            Some(measured) => assert!(
                (measured - configured).abs() <= configured * 0.1,
                "measured period {measured:.3} ms, configured {configured:.3} ms"
            ),
            None => panic!("no timer period measured for tid {}", vcpu.tid),
        }
    }

    // The CLI renders the same numbers.
    let json = Command::new(TRACER)
        .args(["report", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(json.status.success());
    let document: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for vcpu in &report.vcpus {
        let row = document["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["tid"] == vcpu.tid)
            .expect("vCPU row in report --format json");
        let live = summary
            .threads
            .iter()
            .find(|row| row.tid == vcpu.tid)
            .unwrap();
        assert_eq!(row["totals"]["timer_signals"], live.totals.timer_signals);
        assert_eq!(row["totals"]["eintr_exits"], live.totals.eintr_exits);
    }
}

#[test]
fn record_report_round_trip_1ms_one_vcpu() {
    round_trip(Duration::from_millis(1), 1);
}

#[test]
fn record_report_round_trip_20ms_two_vcpus() {
    round_trip(Duration::from_millis(20), 2);
}

#[test]
fn sigterm_ends_a_recording_with_its_summary() {
    if !have_root("sigterm_recording") || !have_kvm("sigterm_recording") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("term.jsonl");
    let recorder = start_recorder(&path);
    run_repro(Duration::from_millis(5), 1, TimerMode::PerRun);
    signal(&recorder, libc::SIGTERM);
    let output = recorder.wait_with_output().unwrap();
    assert!(output.status.success());
    let replayed = replay(&path);
    assert_eq!(replayed.summary.unwrap().ended_by, EndReason::Signal);
}

#[test]
fn sigkill_leaves_a_recording_that_parses_to_its_last_complete_line() {
    if !have_root("sigkill_recording") || !have_kvm("sigkill_recording") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.jsonl");
    let mut recorder = start_recorder(&path);
    let report = run_repro(Duration::from_millis(1), 1, TimerMode::PerRun);
    // Longer than the writer's flush interval: what was traced is on disk.
    std::thread::sleep(Duration::from_millis(600));
    signal(&recorder, libc::SIGKILL);
    recorder.wait().unwrap();
    let replayed = replay(&path);
    assert!(replayed.summary.is_none());
    assert!(
        replayed
            .warnings
            .iter()
            .any(|w| w.contains("no summary record")),
        "{:?}",
        replayed.warnings
    );
    let tid = report.vcpus[0].tid;
    let row = replayed
        .rows
        .iter()
        .find(|row| row.tid == tid)
        .expect("vCPU row");
    assert!(
        row.totals.eintr_exits * 100 >= report.vcpus[0].eintr_returns * 99,
        "flushed {} of {} EINTR exits before SIGKILL",
        row.totals.eintr_exits,
        report.vcpus[0].eintr_returns
    );
    // The CLI agrees: a warning, exit 0.
    let out = Command::new(TRACER)
        .arg("report")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no summary record"));
}

/// A real full filesystem: a 192 KiB tmpfs, mounted on a temporary
/// directory that is removed after the unmount.
struct SmallTmpfs {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=192k", "tracer-test"])
            .arg(dir.path())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(Self {
            mount_point: dir.path().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

#[test]
fn a_full_disk_keeps_every_complete_line_and_counts_the_rest() {
    if !have_root("full_disk") {
        return;
    }
    let fs = match SmallTmpfs::mount() {
        Ok(fs) => fs,
        Err(reason) => {
            skip("full_disk", &reason);
            return;
        }
    };
    let path = fs.mount_point.join("full.jsonl");
    let scenario = Scenario::seed_001(250, 1.0, 4000);
    let run = simulate::run(&scenario);
    let metadata = simulate::modelled_metadata(&[scenario], ProbeSet::Full, 0);
    let writer = RecordingWriter::create(&path, false, metadata, 1 << 20).unwrap();
    for event in &run.events {
        writer.event(event.clone());
    }
    let outcome = writer.finish(Summary::new(1, EndReason::Duration));
    let error = outcome.write_error.clone().expect("the disk filled");
    assert!(error.contains("No space left"), "{error}");
    assert_eq!(
        outcome.events_written + outcome.write_dropped + outcome.queue_dropped,
        run.events.len() as u64,
        "{outcome:?}"
    );
    let replayed = replay(&path);
    let lines = replayed
        .records
        .iter()
        .filter(|record| matches!(record, Record::Event(_)))
        .count() as u64;
    assert_eq!(lines, outcome.events_written);
    assert!(replayed.warnings.iter().all(|w| !w.contains("incomplete")));
}

/// `tracer report --format FORMAT FILE`'s standard output; it must succeed.
fn report_stdout(file: &Path, format: &str) -> String {
    let output = Command::new(TRACER)
        .args(["report", "--format", format])
        .arg(file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn report_exit(args: &[&str], file: &Path) -> (i32, String) {
    let out = Command::new(TRACER)
        .arg("report")
        .arg(file)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn report_rejects_bad_input_with_exit_code_2_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    let scenario = Scenario::seed_001(250, 1.0, 50);
    let run = simulate::run(&scenario);
    let writer = RecordingWriter::create(
        &good,
        false,
        simulate::modelled_metadata(&[scenario], ProbeSet::Full, 0),
        1 << 16,
    )
    .unwrap();
    for event in &run.events {
        writer.event(event.clone());
    }
    drop(writer);
    let text = std::fs::read_to_string(&good).unwrap();
    assert_eq!(report_exit(&[], &good).0, 0);

    let foreign = dir.path().join("foreign.txt");
    std::fs::write(&foreign, "hello\n").unwrap();
    let (code, stderr) = report_exit(&[], &foreign);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("foreign.txt:1: not a recording"),
        "{stderr}"
    );

    let version = dir.path().join("v2.jsonl");
    std::fs::write(
        &version,
        text.replacen("\"version\":1,", "\"version\":2,", 1),
    )
    .unwrap();
    let (code, stderr) = report_exit(&[], &version);
    assert_eq!(code, 2);
    assert!(stderr.contains("format version 2"), "{stderr}");

    let corrupt = dir.path().join("corrupt.jsonl");
    let mut lines: Vec<&str> = text.lines().collect();
    lines[6] = "{\"type\":\"event\"";
    std::fs::write(&corrupt, lines.join("\n") + "\n").unwrap();
    let (code, stderr) = report_exit(&[], &corrupt);
    assert_eq!(code, 2);
    assert!(stderr.contains("corrupt.jsonl:7:"), "{stderr}");
    // The streamed formats have written the lines before the bad one by
    // then: the partial output is removed, not left as if whole.
    for format in ["ftrace", "perfetto", "json"] {
        let partial = dir.path().join(format!("partial.{format}"));
        let (code, stderr) = report_exit(
            &["--format", format, "-o", partial.to_str().unwrap()],
            &corrupt,
        );
        assert_eq!(code, 2, "{format}: {stderr}");
        assert!(
            !partial.exists(),
            "{format}: {} left behind",
            partial.display()
        );
    }
    // A file replaced with --force stays as it was when the report fails
    // part-way: the report is renamed into place only when whole.
    for format in ["ftrace", "perfetto", "json"] {
        let kept = dir.path().join(format!("kept.{format}"));
        std::fs::write(&kept, "earlier report").unwrap();
        let (code, stderr) = report_exit(
            &["--format", format, "--force", "-o", kept.to_str().unwrap()],
            &corrupt,
        );
        assert_eq!(code, 2, "{format}: {stderr}");
        assert_eq!(
            std::fs::read_to_string(&kept).unwrap(),
            "earlier report",
            "{format}"
        );
    }
    // The recording itself is never the output, also with --force and
    // through a hard link.
    let copy = dir.path().join("copy.jsonl");
    std::fs::copy(&good, &copy).unwrap();
    let hard_link = dir.path().join("hard-link.txt");
    std::fs::hard_link(&copy, &hard_link).unwrap();
    for output in [&copy, &hard_link] {
        let (code, stderr) = report_exit(&["--force", "-o", output.to_str().unwrap()], &copy);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("is the recording being read"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), text);
    }
    // A whole report replaces the file, with mode 0600.
    let replaced = dir.path().join("kept.ftrace");
    std::fs::set_permissions(
        &replaced,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let (code, stderr) = report_exit(
        &[
            "--format",
            "ftrace",
            "--force",
            "-o",
            replaced.to_str().unwrap(),
        ],
        &good,
    );
    assert_eq!(code, 0, "{stderr}");
    let meta = std::fs::metadata(&replaced).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&replaced)
            .unwrap()
            .contains("# tracer:")
    );
    // No temporary file is left beside the outputs, failed or whole.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A reader that goes away early (`| head`) is not an error: the text
    // of this recording (megabytes) is far more than a pipe holds, so the
    // tracer meets the closed pipe while it streams.
    let long = dir.path().join("long.jsonl");
    let scenario = Scenario::seed_001(250, 0.05, 2000);
    let run = simulate::run(&scenario);
    let writer = RecordingWriter::create(
        &long,
        false,
        simulate::modelled_metadata(&[scenario], ProbeSet::Full, 0),
        1 << 16,
    )
    .unwrap();
    for event in &run.events {
        writer.event(event.clone());
    }
    drop(writer);
    assert!(std::fs::metadata(&long).unwrap().len() > 1 << 20);
    let mut child = Command::new(TRACER)
        .args(["report", "--format", "ftrace"])
        .arg(&long)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0_u8; 64];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("stdout") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );

    let (code, stderr) = report_exit(&["--format", "perfetto"], &good);
    assert_eq!(code, 2);
    assert!(stderr.contains("-o FILE"), "{stderr}");

    let (code, _) = report_exit(&[], &dir.path().join("missing.jsonl"));
    assert_eq!(code, 1);

    // Perfetto to a file that exists is refused without --force.
    let existing = dir.path().join("out.pftrace");
    std::fs::write(&existing, "keep").unwrap();
    let out = existing.to_str().unwrap();
    let (code, stderr) = report_exit(&["--format", "perfetto", "-o", out], &good);
    assert_ne!(code, 0);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
    let (code, _) = report_exit(&["--format", "perfetto", "-o", out, "--force"], &good);
    assert_eq!(code, 0);
}

#[test]
fn record_refuses_to_clobber_or_follow_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing.jsonl");
    std::fs::write(&existing, "precious").unwrap();
    let out = Command::new(TRACER)
        .args(["record", "-d", "1s", "-o"])
        .arg(&existing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&existing, &link).unwrap();
    let out = Command::new(TRACER)
        .args(["record", "-d", "1s", "--force", "-o"])
        .arg(&link)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "precious");
}

/// QEMU's kick, recorded: the reproducer's main thread `pthread_kill`s
/// each vCPU thread with SIGUSR1 every 1 ms. The vCPU threads are created
/// after the tracer started and are kicked before their first KVM_RUN
/// returns (the guest never exits by itself), so this also proves that no
/// kick before a new vCPU thread's first sign of life is lost. Ground
/// truth: the reproducer's count of successful `pthread_kill` calls; each
/// generates one `signal_generate` (a standard signal still pending is not
/// queued twice, but the kernel still reports the attempt).
#[test]
fn record_report_round_trip_tkill_kicks_two_vcpus() {
    let name = "record_report_round_trip_tkill";
    if !have_root(name) || !have_kvm(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tkill.jsonl");
    let recorder = start_recorder(&path);
    let report = repro::run(&tkill_repro(
        Duration::from_millis(1),
        Duration::from_millis(1500),
        2,
    ))
    .expect("reproducer");
    std::thread::sleep(Duration::from_millis(300));
    signal(&recorder, libc::SIGINT);
    let output = recorder.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replayed = replay(&path);
    let summary = replayed.summary.expect("summary record");
    assert_eq!(summary.losses.total(), 0, "{:?}", summary.losses);
    assert_eq!(summary.events_not_written, 0);
    for vcpu in &report.vcpus {
        assert!(vcpu.kicks_sent > 500, "{vcpu:?}");
        let tkills = replayed
            .records
            .iter()
            .filter(|record| {
                matches!(record, Record::Event(event) if matches!(
                    event.body,
                    tracer_events::EventBody::Signal { target_tid, code: -6, sig: 10, .. }
                        if target_tid == vcpu.tid
                ) && event.tgid == report.pid)
            })
            .count() as u64;
        assert_eq!(
            tkills, vcpu.kicks_sent,
            "tkill signals recorded for {vcpu:?}"
        );
        let row = replayed
            .rows
            .iter()
            .find(|row| row.tid == vcpu.tid)
            .expect("vCPU row");
        let kick = row.kicks.first().expect("a kick on the vCPU row");
        assert_eq!(kick.kind, tracer_events::SignalKind::Tkill);
        assert_eq!(kick.signal, "SIGUSR1");
        assert_eq!(kick.count, vcpu.kicks_sent);
        // The kicking thread is the one that ran the reproducer (here the
        // test's thread; in `tracer repro` the main thread).
        let sender = kick.sender.as_deref().unwrap_or_default();
        assert!(
            sender.ends_with(&format!("pid {})", report.pid))
                || sender.ends_with(&format!("(pid {}, main thread)", report.pid)),
            "{sender}"
        );
        let period = kick.period_ms.expect("kick period");
        assert!((0.9..=1.3).contains(&period), "kick period {period} ms");
        assert_eq!(row.totals.other_signals, vcpu.kicks_sent);
        assert_eq!(row.totals.eintr_exits, vcpu.eintr_returns);
        let kernel = row.kernel.as_ref().expect("kernel counts");
        assert_eq!(kernel.other_signals, vcpu.kicks_sent);
    }
}

#[test]
fn sighup_ends_a_recording_with_its_summary() {
    // The ssh session to the hanging host drops: SIGHUP ends the recording
    // like SIGTERM (it exited 129 without a summary).
    if !have_root("sighup_recording") || !have_kvm("sighup_recording") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hup.jsonl");
    let recorder = start_recorder(&path);
    run_repro(Duration::from_millis(5), 1, TimerMode::PerRun);
    signal(&recorder, libc::SIGHUP);
    let output = recorder.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let replayed = replay(&path);
    assert_eq!(replayed.summary.unwrap().ended_by, EndReason::Signal);
}

/// Runs the tracer with `args`; fails the test after `limit`.
fn tracer_within(args: &[&std::ffi::OsStr], limit: Duration) -> (i32, String) {
    let mut child = Command::new(TRACER)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("tracer {args:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(Into::into).collect()
}

fn refs(args: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    args.iter().map(std::ffi::OsString::as_os_str).collect()
}

#[test]
fn outputs_refuse_device_nodes_and_fifos_and_leave_them_unchanged() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    simulate::write_recording(
        &good,
        false,
        &[Scenario::seed_001(250, 1.0, 50)],
        ProbeSet::Full,
    )
    .unwrap();
    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let null_mode = std::fs::metadata("/dev/null").unwrap().permissions().mode();
    for target in [Path::new("/dev/null"), fifo.as_path()] {
        let target = target.to_str().unwrap();
        for args in [
            os(&["record", "-d", "1s", "--force", "-o", target]),
            os(&["report", good.to_str().unwrap(), "--force", "-o", target]),
        ] {
            let (code, stderr) = tracer_within(&refs(&args), Duration::from_secs(30));
            assert_ne!(code, 0, "{args:?}");
            assert!(stderr.contains("not a regular file"), "{args:?}: {stderr}");
        }
    }
    assert_eq!(
        std::fs::metadata("/dev/null").unwrap().permissions().mode(),
        null_mode
    );
    assert_eq!(
        std::fs::metadata(&fifo).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn bad_arguments_are_refused_before_any_file_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.jsonl");
    let out = out.to_str().unwrap();
    for args in [
        &["record", "-i", "0", "-o", out][..],
        &["record", "-i", "1ns", "-o", out],
        &["record", "-d", "0", "-o", out],
        &["live", "-i", "0", "--record", out],
        &["serve", "-i", "0", "--record", out],
    ] {
        let (code, stderr) = tracer_within(&refs(&os(args)), Duration::from_secs(30));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("minimum of 10 ms") || stderr.contains("greater than zero"),
            "{args:?}: {stderr}"
        );
        assert!(!Path::new(out).exists(), "{args:?} created the output");
    }
}

#[test]
fn a_non_utf8_output_path_records_or_fails_cleanly() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"rec-\xff\xfe.jsonl"));
    let mut args = os(&["record", "-d", "1s", "-i", "1s", "-o"]);
    args.push(path.clone().into_os_string());
    let (code, stderr) = tracer_within(&refs(&args), Duration::from_mins(1));
    assert_ne!(code, 101, "panicked: {stderr}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(code, 0, "{stderr}");
        let replayed = replay(&path);
        assert!(replayed.summary.is_some());
    } else {
        // Tracing cannot start without root: nothing is left behind.
        assert_ne!(code, 0);
        assert!(!path.exists(), "a failed start left {}", path.display());
    }
}

#[test]
fn report_of_endless_or_hostile_input_ends_with_exit_2() {
    let (code, stderr) =
        tracer_within(&refs(&os(&["report", "/dev/zero"])), Duration::from_mins(1));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("/dev/zero:1: a record line of at most 64 MiB"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    simulate::write_recording(
        &good,
        false,
        &[Scenario::seed_001(250, 1.0, 50)],
        ProbeSet::Full,
    )
    .unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut event: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    event["ts_ns"] = serde_json::json!(u64::MAX);
    lines[3] = event.to_string();
    let bad = dir.path().join("max-ts.jsonl");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    for format in ["table", "json", "ftrace"] {
        let args = os(&["report", bad.to_str().unwrap(), "--format", format]);
        let (code, stderr) = tracer_within(&refs(&args), Duration::from_secs(30));
        assert_eq!(code, 2, "{format}: {stderr}");
        assert!(
            stderr.contains("max-ts.jsonl:4: an event's ts_ns within the recording's time range"),
            "{format}: {stderr}"
        );
    }
}

/// `sysctl kernel.split_lock_mitigate=0` applied in the middle of a
/// modelled livelock: the value is polled through a fake host root as the
/// live tracer polls the real one, the change is written as its own
/// record, and `report` shows it and the vCPU recovering.
#[test]
fn a_mitigation_applied_mid_run_is_recorded_and_the_livelock_recovers() {
    use tracer::{kernel::host::HostRoot, mitigation::MitigationWatch};
    let dir = tempfile::tempdir().unwrap();
    let sysctl = dir.path().join("root/proc/sys/kernel/split_lock_mitigate");
    std::fs::create_dir_all(sysctl.parent().unwrap()).unwrap();
    std::fs::write(&sysctl, "1\n").unwrap();
    let mut scenario = Scenario::seed_001(250, 1.0, 6000);
    let change_after_ns = 3_000_000_000;
    scenario.mitigate = vec![(0, true), (change_after_ns, false)];
    let events = simulate::run(&scenario).events;
    let start = events[0].ts_ns;
    let change_at = scenario.start_ns + change_after_ns;
    let metadata =
        simulate::modelled_metadata(std::slice::from_ref(&scenario), ProbeSet::Full, start);
    let path = dir.path().join("mitigated.jsonl");
    let writer = RecordingWriter::create(&path, false, metadata, events.len() + 16).unwrap();
    // And a late microcode load a second later: its own record, shown but
    // not a reason for any verdict.
    let microcode = dir
        .path()
        .join("root/sys/devices/system/cpu/cpu0/microcode/version");
    std::fs::create_dir_all(microcode.parent().unwrap()).unwrap();
    std::fs::write(&microcode, "0x24000023\n").unwrap();
    let microcode_at = change_at + 1_000_000_000;
    let mut watch = MitigationWatch::new(HostRoot::new(dir.path().join("root")), start);
    let mut next_poll = start + 1_000_000_000;
    let (mut applied, mut loaded) = (false, false);
    let mut changes = Vec::new();
    let end = events.last().unwrap().ts_ns;
    for event in events {
        if !applied && event.ts_ns >= change_at {
            std::fs::write(&sysctl, "0\n").unwrap();
            applied = true;
        }
        if !loaded && event.ts_ns >= microcode_at {
            std::fs::write(&microcode, "0x24000024\n").unwrap();
            loaded = true;
        }
        while event.ts_ns >= next_poll {
            for change in watch.poll(next_poll) {
                changes.push(change.clone());
                writer.mitigation(change);
            }
            next_poll += 1_000_000_000;
        }
        writer.event(event);
    }
    let settings: Vec<&str> = changes.iter().map(|c| c.setting.as_str()).collect();
    assert_eq!(settings, ["kernel.split_lock_mitigate", "microcode"]);
    let outcome = writer.finish(Summary::new(end, EndReason::Duration));
    assert!(outcome.write_error.is_none());
    let text = std::fs::read_to_string(&path).unwrap();
    let record = text
        .lines()
        .find(|line| line.contains(r#""type":"mitigation""#))
        .expect("a mitigation record");
    assert!(
        record.contains(r#""from":1"#) && record.contains(r#""to":0"#),
        "{record}"
    );

    let report = |format: &str| report_stdout(&path, format);
    let table = report("table");
    assert!(table.contains("mitigation changes"), "{table}");
    assert!(table.contains("split_lock_mitigate 1 → 0"), "{table}");
    assert!(table.contains("-> RECOVERING"), "{table}");
    let recovering = table
        .lines()
        .find(|line| line.contains("-> RECOVERING"))
        .unwrap();
    assert!(
        recovering.contains("completed a punishment within"),
        "{recovering}"
    );
    let ftrace = report("ftrace");
    assert!(
        ftrace.contains("# MITIGATION split_lock_mitigate 1 → 0"),
        "{ftrace}"
    );
    assert!(
        ftrace.contains("# MITIGATION microcode 0x24000023 → 0x24000024"),
        "{ftrace}"
    );
    let json: serde_json::Value = serde_json::from_str(&report("json")).unwrap();
    assert_eq!(json["mitigation_changes"][0]["to"], 0, "{json}");
    assert_eq!(json["mitigation_changes"][1]["to"], 0x2400_0024, "{json}");
    // The sysctl in force stays the sysctl's value after the microcode change.
    assert_eq!(json["status"]["split_lock_mitigate"], 0, "{json}");
    assert_eq!(json["status"]["microcode_revision"], 0x2400_0024, "{json}");
    assert_eq!(json["status"]["mitigation_changes"], 2, "{json}");
    #[cfg(feature = "perfetto")]
    {
        use perfetto_protos::{trace::Trace, track_event::track_event::Type};
        use protobuf::Message as _;
        let trace_path = dir.path().join("mitigated.pftrace");
        let output = Command::new(TRACER)
            .args(["report", "--format", "perfetto", "-o"])
            .arg(&trace_path)
            .arg(&path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let trace = Trace::parse_from_bytes(&std::fs::read(&trace_path).unwrap()).unwrap();
        let instants: Vec<(u64, String)> = trace
            .packet
            .iter()
            .filter(|packet| packet.has_track_event())
            .filter(|packet| packet.track_event().type_() == Type::TYPE_INSTANT)
            .filter(|packet| packet.track_event().name().starts_with("MITIGATION"))
            .map(|packet| (packet.timestamp(), packet.track_event().name().to_owned()))
            .collect();
        let expected: Vec<(u64, String)> = changes
            .iter()
            .map(|change| (change.ts_ns, format!("MITIGATION {}", change.describe())))
            .collect();
        assert_eq!(instants, expected);
    }
    let verdicts: Vec<&str> = json["verdict_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|change| change["to"].as_str())
        .collect();
    let livelock = verdicts.iter().position(|v| *v == "livelock").unwrap();
    let recovered = verdicts.iter().position(|v| *v == "recovering").unwrap();
    assert!(livelock < recovered, "{verdicts:?}");
    // The same recording without the records: no recovery is claimed; and
    // with only the microcode record, the verdicts are exactly those of
    // the recording without any (a microcode load is shown, not judged).
    let verdicts_of = |name: &str, keep: &dyn Fn(&str) -> bool| {
        let variant = dir.path().join(name);
        let mut kept = String::new();
        for line in text.lines().filter(|line| keep(line)) {
            kept.push_str(line);
            kept.push('\n');
        }
        std::fs::write(&variant, kept).unwrap();
        let table = report_stdout(&variant, "table");
        let json: serde_json::Value =
            serde_json::from_str(&report_stdout(&variant, "json")).unwrap();
        (table, json["verdict_changes"].clone())
    };
    let is_mitigation = |line: &str| line.contains(r#""type":"mitigation""#);
    let (table, plain) = verdicts_of("plain.jsonl", &|line| !is_mitigation(line));
    assert!(!table.contains("RECOVERING"), "{table}");
    let (table, microcode_only) = verdicts_of("microcode.jsonl", &|line| {
        !is_mitigation(line) || line.contains(r#""setting":"microcode""#)
    });
    assert!(!table.contains("RECOVERING"), "{table}");
    assert!(
        table.contains("microcode 0x24000023 → 0x24000024"),
        "{table}"
    );
    assert_eq!(microcode_only, plain);
}

/// Counts of one thread's modelled events, taken from the generator's
/// output itself (not from the model).
#[derive(Debug, Default, PartialEq, Eq)]
struct Counted {
    traps: u64,
    warns: u64,
    sleeps_interrupted: u64,
    sleeps_completed: u64,
    semaphore_interrupted: u64,
    signals: u64,
    eintr_exits: u64,
    /// Most traps and EINTR exits in one replay tick: the ticks are 1 s
    /// apart from the first record, an event at a tick falls in the next.
    peak_traps: u64,
    peak_eintr: u64,
}

fn count_events(events: &[tracer::events::Event], tid: u32, first_ns: u64) -> Counted {
    use std::collections::BTreeMap;
    use tracer::events::{EventBody, TrapSource};
    let mut counted = Counted::default();
    let mut traps_per_tick: BTreeMap<u64, u64> = BTreeMap::new();
    let mut eintr_per_tick: BTreeMap<u64, u64> = BTreeMap::new();
    for event in events.iter().filter(|event| event.subject_tid() == tid) {
        let tick = (event.ts_ns - first_ns) / tracer::report::REPLAY_TICK_NS;
        match &event.body {
            EventBody::SplitLockTrap {
                source: TrapSource::Warn,
                ..
            } => counted.warns += 1,
            EventBody::SplitLockTrap { .. } => {
                counted.traps += 1;
                *traps_per_tick.entry(tick).or_default() += 1;
            }
            EventBody::SleepReturn { remaining_ms: 0 } => counted.sleeps_completed += 1,
            EventBody::SleepReturn { .. } => counted.sleeps_interrupted += 1,
            EventBody::SemaphoreReturn { retval } if *retval != 0 => {
                counted.semaphore_interrupted += 1;
            }
            EventBody::Signal { .. } => counted.signals += 1,
            EventBody::UserspaceExit { errno: -4, .. } => {
                counted.eintr_exits += 1;
                *eintr_per_tick.entry(tick).or_default() += 1;
            }
            _ => {}
        }
    }
    counted.peak_traps = traps_per_tick.values().copied().max().unwrap_or(0);
    counted.peak_eintr = eintr_per_tick.values().copied().max().unwrap_or(0);
    counted
}

/// A finished recording that ends quiet (the VM was stopped before the
/// recorder): the rows at its end are IDLE, yet `report` tells the whole
/// story: totals equal to the generator's counts, peak rates, the time in
/// each verdict covering the recording, the worst verdict, and every
/// verdict change the JSON has, in order.
#[test]
fn report_of_a_recording_that_ends_quiet_tells_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    let stuck = Scenario::seed_001(250, 1.0, 4000);
    let slow = Scenario::seed_001(250, 50.0, 4000).with_identity(4242, 4251, "haos", 1);
    let scenarios = [stuck, slow];
    let mut events: Vec<_> = scenarios
        .iter()
        .flat_map(|scenario| simulate::run(scenario).events)
        .collect();
    events.sort_by_key(|event| (event.ts_ns, event.tid));
    let first = events[0].ts_ns;
    let last = events.last().unwrap().ts_ns;
    // Stopped 5 s after the guest went quiet: longer than any hold.
    let end = last + 5_000_000_000;
    let path = dir.path().join("quiet-end.jsonl");
    let metadata = simulate::modelled_metadata(&scenarios, ProbeSet::Full, first);
    let writer = RecordingWriter::create(&path, false, metadata, events.len() + 16).unwrap();
    for event in &events {
        writer.event(event.clone());
    }
    assert!(
        writer
            .finish(Summary::new(end, EndReason::Duration))
            .write_error
            .is_none()
    );

    // The replay, in process.
    let mut reader = RecordingReader::open(&path).unwrap();
    let mut replay = Replay::new(reader.metadata.clone());
    while let Some(record) = reader.next_record().unwrap() {
        replay.apply(&record);
    }
    let result = replay.finish();
    assert!(
        result.rows.iter().all(|row| row.verdict == Verdict::Idle),
        "the end is quiet: {:?}",
        result.rows
    );
    assert_eq!(result.stories.len(), 2, "{:?}", result.stories);
    for (tid, worst) in [(4250, Verdict::Livelock), (4251, Verdict::Throttled)] {
        let story = result
            .stories
            .iter()
            .find(|story| story.tid == tid)
            .unwrap();
        let counted = count_events(&events, tid, first);
        assert!(counted.traps > 100, "{counted:?}");
        let totals = &story.totals;
        assert_eq!(
            Counted {
                traps: totals.traps,
                warns: totals.warns,
                sleeps_interrupted: totals.sleeps_interrupted,
                sleeps_completed: totals.sleeps_completed,
                semaphore_interrupted: totals.semaphore_interrupted,
                signals: totals.timer_signals + totals.other_signals,
                eintr_exits: totals.eintr_exits,
                peak_traps: story.peak_traps_per_s as u64,
                peak_eintr: story.peak_eintr_per_s as u64,
            },
            counted,
            "tid {tid}"
        );
        assert_eq!(
            story.kicks.iter().map(|kick| kick.count).sum::<u64>(),
            counted.signals,
            "{:?}",
            story.kicks
        );
        assert_eq!(story.worst.unwrap().verdict, worst, "{story:?}");
        assert_eq!(story.last.unwrap().verdict, Verdict::Idle, "{story:?}");
        assert!(story.time_in(worst) > 2_000_000_000, "{story:?}");
        assert!(story.time_in(Verdict::Idle) > 0, "{story:?}");
        let spent: u64 = story.time_in_verdict.iter().map(|time| time.ns).sum();
        let span = end - first;
        assert!(
            span.abs_diff(spent) <= tracer::report::REPLAY_TICK_NS,
            "tid {tid}: {spent} ns in verdicts, recording {span} ns"
        );
        let changes = result.changes.iter().filter(|c| c.tid == tid).count();
        assert_eq!(story.verdict_changes, changes as u64);
    }

    // The command's table and JSON.
    let report = |format: &str| report_stdout(&path, format);
    let table = report("table");
    let json: serde_json::Value = serde_json::from_str(&report("json")).unwrap();
    let stories = json["thread_stories"].as_array().unwrap();
    assert_eq!(stories[0]["tid"], 4250, "{json}");
    assert_eq!(stories[0]["worst"]["verdict"], "livelock", "{json}");
    assert_eq!(stories[0]["final"]["verdict"], "idle", "{json}");
    let stuck = count_events(&events, 4250, first);
    assert_eq!(stories[0]["totals"]["traps"], stuck.traps, "{json}");
    let row = table
        .lines()
        .find(|line| line.trim_start().starts_with("4250 "))
        .unwrap_or_else(|| panic!("a summary row for 4250:\n{table}"));
    assert!(row.contains("LIVELOCK -> IDLE"), "{row}");
    assert!(row.contains(&format!(" {} ", stuck.traps)), "{row}");
    assert!(row.contains(&format!(" {} ", stuck.peak_traps)), "{row}");
    assert!(
        table.contains(&format!(
            "sleeps interrupted {}, completed {}",
            stuck.sleeps_interrupted, stuck.sleeps_completed
        )),
        "{table}"
    );
    assert!(table.contains("mitigations for LIVELOCK"), "{table}");
    // The summary and the per-thread totals fit 80 columns.
    for line in table
        .lines()
        .skip_while(|line| !line.starts_with("whole recording"))
        .take_while(|line| !line.starts_with("mitigations for"))
    {
        assert!(line.chars().count() <= 80, "wider than 80: {line}");
    }
    // The history: every change of the JSON, in order.
    let history: Vec<&str> = table
        .lines()
        .skip_while(|line| !line.starts_with("verdict history"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .collect();
    let changes = json["verdict_changes"].as_array().unwrap();
    assert!(changes.len() >= 4, "{changes:?}");
    assert_eq!(history.len(), changes.len(), "{table}");
    let start = json["status"]["elapsed_s"].as_f64().unwrap();
    assert!(start > 8.0, "{start}");
    for (line, change) in history.iter().zip(changes) {
        let label = |value: &serde_json::Value| {
            let verdict: Verdict = serde_json::from_value(value.clone()).unwrap();
            verdict.label()
        };
        let expected = format!(
            "tid {} vCPU {}: {} -> {}",
            change["tid"],
            change["vcpu"],
            if change["from"].is_null() {
                "(new)"
            } else {
                label(&change["from"])
            },
            label(&change["to"])
        );
        let seconds = (change["ts_ns"].as_u64().unwrap() - first) as f64 / 1e9;
        let at: f64 = line.split_whitespace().next().unwrap().parse().unwrap();
        assert!((at - seconds).abs() < 0.0015, "{line} vs {change}");
        assert!(
            line.replace(" (inferred)", "").contains(&expected),
            "{line} vs {expected}"
        );
    }
}
