//! `tracer doctor` on captured and constructed host snapshots (see
//! fixtures/README.md), on broken snapshots, and `--collect` round trips.

mod common;

use std::{collections::BTreeMap, path::Path, process::Command};

use common::fixture;
use tracer::{
    doctor::{self, DoctorReport, Logs, Status},
    kernel::host::HostRoot,
};

const TRACER: &str = env!("CARGO_BIN_EXE_tracer");

fn doctor_on(root: &Path) -> DoctorReport {
    let host = HostRoot::new(root);
    doctor::run(&host, &Logs::read(&host))
}

fn statuses(report: &DoctorReport) -> BTreeMap<String, Status> {
    report
        .checks
        .iter()
        .map(|check| (check.id.clone(), check.status))
        .collect()
}

fn expect(host: &str, expected: &[(&str, Status)], exit_code: i32) -> DoctorReport {
    let report = doctor_on(&fixture(&format!("hosts/{host}")));
    let got = statuses(&report);
    for (id, status) in expected {
        assert_eq!(
            got.get(*id),
            Some(status),
            "{host}: check {id}: {:#?}",
            report.check(id)
        );
    }
    assert_eq!(report.exit_code(), exit_code, "{host}");
    report
}

#[test]
fn affected_n5105_proxmox_host() {
    let report = expect(
        "n5105-proxmox-8-affected",
        &[
            ("microcode", Status::Fail),
            ("log_internal_error", Status::Fail),
            ("log_split_lock", Status::Warn),
            ("split_lock_mitigate", Status::Warn),
            ("vms", Status::Warn),
            ("mode", Status::Pass),
        ],
        1,
    );
    let microcode = report.check("microcode").unwrap();
    assert!(
        microcode.value.contains("0x24000023 < 0x24000024"),
        "{microcode:?}"
    );
    assert!(
        microcode
            .advice
            .as_deref()
            .unwrap()
            .contains("intel-microcode")
    );
    let traps = report.check("log_split_lock").unwrap();
    assert!(traps.value.contains("CPU 1/KVM/3302738"), "{traps:?}");
    assert!(
        traps.value.contains("1 line(s)"),
        "journal kernel lines are not counted twice: {traps:?}"
    );
    let vms = report.check("vms").unwrap();
    assert!(
        vms.value
            .contains("100 (haos): -cpu host, 2 vCPU thread(s), split-lock traps logged"),
        "{vms:?}"
    );
}

#[test]
fn elkhart_lake_j6412_with_old_microcode() {
    let report = expect(
        "j6412-old-microcode",
        &[
            ("microcode", Status::Fail),
            ("split_lock_mitigate", Status::Pass),
            ("tdp_mmu", Status::Warn),
        ],
        1,
    );
    assert!(
        report
            .check("microcode")
            .unwrap()
            .value
            .contains("0x16 < 0x17")
    );
    // 5.15 has detection but no misery sleep.
    assert!(
        report
            .check("split_lock_mitigate")
            .unwrap()
            .value
            .contains("before 5.19")
    );
}

#[test]
fn old_cpu_on_5_15_with_tdp_mmu_and_a_failed_entry() {
    let report = expect(
        "old-cpu-5.15-tdp-mmu",
        &[
            ("tdp_mmu", Status::Fail),
            ("log_entry_failed", Status::Fail),
            ("microcode", Status::NotApplicable),
            ("symbols", Status::Warn),
            ("mode", Status::Warn),
        ],
        1,
    );
    assert!(
        report
            .check("tdp_mmu")
            .unwrap()
            .advice
            .as_deref()
            .unwrap()
            .contains("kvm.tdp_mmu=N")
    );
}

#[test]
fn healthy_host_passes() {
    let report = expect(
        "healthy-6.12-tiger-lake",
        &[
            ("split_lock_mitigate", Status::Pass),
            ("tdp_mmu", Status::Pass),
            ("microcode", Status::NotApplicable),
            ("mode", Status::Pass),
        ],
        0,
    );
    assert!(
        report
            .checks
            .iter()
            .all(|check| check.status != Status::Fail)
    );
}

#[test]
fn this_machine_snapshot_taken_with_collect() {
    expect(
        "this-machine-6.18-nested",
        &[
            ("cpu", Status::Pass),
            ("kprobes", Status::Warn),
            ("mode", Status::Warn),
            ("split_lock_mitigate", Status::Pass),
        ],
        0,
    );
}

#[test]
fn an_empty_or_broken_root_gives_not_applicable_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let report = doctor_on(dir.path());
    for id in [
        "kernel",
        "cpu",
        "microcode",
        "tdp_mmu",
        "logs",
        "vms",
        "symbols",
    ] {
        assert_eq!(
            report.check(id).map(|check| check.status),
            Some(Status::NotApplicable),
            "{id}: {:?}",
            report.check(id)
        );
    }
    // Unreadable files (a directory where a file belongs) and garbage.
    std::fs::create_dir_all(dir.path().join("proc/cpuinfo")).unwrap();
    std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
    std::fs::write(dir.path().join("proc/sys/kernel/osrelease"), "banana\n").unwrap();
    std::fs::write(dir.path().join("proc/kallsyms"), "not kallsyms\n").unwrap();
    let report = doctor_on(dir.path());
    assert_eq!(report.check("cpu").unwrap().status, Status::NotApplicable);
    assert!(
        report
            .check("kernel")
            .unwrap()
            .value
            .contains("not a release number")
    );
    assert_eq!(report.exit_code(), 0);
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(TRACER).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn cli_exit_codes_table_and_json() {
    let affected = fixture("hosts/n5105-proxmox-8-affected");
    let (code, table) = cli(&["doctor", "--root", affected.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(table.contains("FAIL"), "{table}");
    assert!(table.contains("what to do:"), "{table}");
    let healthy = fixture("hosts/healthy-6.12-tiger-lake");
    let (code, json) = cli(&["doctor", "--json", "--root", healthy.to_str().unwrap()]);
    assert_eq!(code, 0);
    let report: DoctorReport = serde_json::from_str(&json).unwrap();
    assert_eq!(report.exit_code(), 0);
    let (code, _) = cli(&["doctor", "--root", "/nonexistent/snapshot"]);
    assert_eq!(code, 2);
}

#[test]
fn collect_then_root_reproduces_the_live_report() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot");
    let (code, live) = cli(&[
        "doctor",
        "--json",
        "--collect",
        snapshot.to_str().unwrap(),
        "--redact",
    ]);
    assert!(code == 0 || code == 1, "exit {code}");
    let live: DoctorReport = serde_json::from_str(&live).unwrap();
    let (_, replayed) = cli(&["doctor", "--json", "--root", snapshot.to_str().unwrap()]);
    let replayed: DoctorReport = serde_json::from_str(&replayed).unwrap();
    for (before, after) in live.checks.iter().zip(&replayed.checks) {
        if before.id == "privileges" {
            assert_eq!(after.status, Status::NotApplicable);
            continue;
        }
        assert_eq!(
            (before.status, &before.value),
            (after.status, &after.value),
            "check {} differs between the host and its snapshot",
            before.id
        );
    }
    // Redacted: no full kernel command line, no kallsyms addresses.
    if let Ok(kallsyms) = std::fs::read_to_string(snapshot.join("proc/kallsyms")) {
        assert!(
            kallsyms.lines().all(|line| line.starts_with("0000")),
            "{kallsyms}"
        );
    }
    if let Ok(cmdline) = std::fs::read_to_string(snapshot.join("proc/cmdline")) {
        let real = std::fs::read_to_string("/proc/cmdline").unwrap();
        assert!(cmdline.len() <= real.len() + 12);
    }
    // A second collect into the same directory is refused.
    let (code, _) = cli(&["doctor", "--collect", snapshot.to_str().unwrap()]);
    assert_ne!(code, 0);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs `tracer doctor --root root`; fails the test after 60 s. Returns
/// the exit code, stdout and the child's peak RSS in KiB.
fn doctor_bounded(root: &Path) -> (i32, String, i64) {
    use std::os::unix::process::ExitStatusExt as _;
    #[expect(
        clippy::zombie_processes,
        reason = "reaped with wait4 below, which also gives its peak RSS"
    )]
    let mut child = Command::new(TRACER)
        .args(["doctor", "--root", root.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let started = std::time::Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data, written by the kernel.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child.
        let done = unsafe { libc::wait4(pid, &raw mut status, libc::WNOHANG, &raw mut usage) };
        if done == pid {
            let status = std::process::ExitStatus::from_raw(status);
            return (
                status.code().unwrap_or(-1),
                reader.join().unwrap(),
                usage.ru_maxrss,
            );
        }
        if started.elapsed() > std::time::Duration::from_mins(1) {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("doctor --root {} hangs", root.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn hostile_snapshots_end_quickly_in_bounded_memory() {
    const FILES: [&str; 4] = [
        "proc/cpuinfo",
        "proc/kallsyms",
        "proc/cmdline",
        "doctor/dmesg.txt",
    ];
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    copy_tree(&fixture("hosts/n5105-proxmox-8-affected"), &pristine);
    let (code, _, baseline_kib) = doctor_bounded(&pristine);
    assert_eq!(code, 1);
    let mut worst_kib = 0;
    for (variant, file) in ["zero", "huge", "fifo"]
        .into_iter()
        .flat_map(|variant| FILES.map(|file| (variant, file)))
    {
        let root = dir
            .path()
            .join(format!("{variant}-{}", file.replace('/', "-")));
        copy_tree(&pristine, &root);
        let path = root.join(file);
        std::fs::remove_file(&path).unwrap();
        match variant {
            "zero" => std::os::unix::fs::symlink("/dev/zero", &path).unwrap(),
            // 500 MB without a newline (sparse: cheap to make).
            "huge" => std::fs::File::create(&path)
                .unwrap()
                .set_len(500_000_000)
                .unwrap(),
            _ => {
                let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
            }
        }
        let (code, out, kib) = doctor_bounded(&root);
        assert!(
            code == 0 || code == 1,
            "{variant} {file}: exit {code}\n{out}"
        );
        assert!(out.contains("failed,"), "{variant} {file}: {out}");
        worst_kib = worst_kib.max(kib);
        // Far below the 5.8-9.4 GB these took: a few hundred MiB at most.
        assert!(kib < 300 * 1024, "{variant} {file}: peak RSS {kib} KiB");
        std::fs::remove_dir_all(&root).unwrap();
    }
    // 10 million kallsyms lines: streamed, a handful kept.
    let root = dir.path().join("long-kallsyms");
    copy_tree(&pristine, &root);
    let mut kallsyms =
        std::io::BufWriter::new(std::fs::File::create(root.join("proc/kallsyms")).unwrap());
    for i in 0..10_000_000u32 {
        std::io::Write::write_all(&mut kallsyms, format!("0 t f{i:x}\n").as_bytes()).unwrap();
    }
    drop(kallsyms);
    let (code, out, kib) = doctor_bounded(&root);
    assert!(code == 0 || code == 1, "long kallsyms: exit {code}\n{out}");
    assert!(kib < 300 * 1024, "long kallsyms: peak RSS {kib} KiB");
    worst_kib = worst_kib.max(kib);
    eprintln!(
        "doctor peak RSS: {baseline_kib} KiB on the fixture, worst {worst_kib} KiB on hostile ones"
    );
}

#[test]
fn collect_refuses_a_symlinked_directory() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = Command::new(TRACER)
        .args(["doctor", "--collect", link.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}
