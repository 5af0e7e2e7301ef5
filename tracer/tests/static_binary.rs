//! The shipped artefacts: the static binary from `cargo xtask dist` runs in
//! a root that holds nothing but itself and the /proc and /sys mounts, and
//! traces the real KVM guest there; the .deb holds what it should.
//! `cargo xtask test` builds both and passes their paths in
//! TRACER_STATIC_BINARY and TRACER_DEB.

mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{assert_counted, have_kvm, have_root, skip, split_lock_repro};
use tracer::repro::{self, TimerMode};
use tracer_events::{Record, reader::RecordingReader};

fn artefact(variable: &str, test: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map(PathBuf::from);
    if path.is_none() {
        skip(
            test,
            &format!(
                "{variable} is not set: `cargo xtask test` builds it with `cargo xtask dist` and sets it"
            ),
        );
    }
    path
}

/// An empty root with only the binary, /proc and /sys; unmounted on drop.
struct BareRoot {
    dir: tempfile::TempDir,
}

impl BareRoot {
    fn new(binary: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["proc", "sys", "tmp"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let target = dir.path().join("tracer");
        std::fs::copy(binary, &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        assert!(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(&proc)
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("mount")
                .arg("--rbind")
                .arg("/sys")
                .arg(&sys)
                .status()
                .unwrap()
                .success()
        );
        // Keep unmounts inside the bare root from reaching the host's /sys.
        let _ = Command::new("mount")
            .arg("--make-rslave")
            .arg(&sys)
            .status();
        Self { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        // Found before the environment is cleared (coreutils' chroot).
        let chroot = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("coreutils chroot");
        let mut command = Command::new(chroot);
        command
            .arg(self.dir.path())
            .arg("/tracer")
            .args(args)
            .env_clear();
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

impl Drop for BareRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("sys"))
            .status();
        let _ = Command::new("umount")
            .arg(self.dir.path().join("proc"))
            .status();
    }
}

#[test]
fn static_binary_runs_in_a_root_without_build_tools() {
    let name = "static_binary_bare_root";
    let Some(binary) = artefact("TRACER_STATIC_BINARY", name) else {
        return;
    };
    if !have_root(name) {
        return;
    }
    let root = BareRoot::new(&binary);
    // Nothing else is in the root: a dynamically linked binary could not
    // even start (no ld.so, no libc).
    let entries: Vec<_> = std::fs::read_dir(root.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 4, "{entries:?}");

    let version = root.run(&["--version"]);
    assert!(version.status.success(), "{version:?}");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")) && version.contains("commit"),
        "{version}"
    );
    assert!(version.contains("kernel features used"), "{version}");

    let probes = root.run(&["probes", "--json"]);
    assert!(
        probes.status.success(),
        "{}",
        String::from_utf8_lossy(&probes.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&probes.stdout).unwrap();
    assert!(report["mode"].is_string(), "{report:#}");
    assert!(
        !report["probes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );

    let doctor = root.run(&["doctor", "--json"]);
    assert!(matches!(doctor.status.code(), Some(0 | 1)), "{doctor:?}");
    let doctor: tracer::doctor::DoctorReport = serde_json::from_slice(&doctor.stdout).unwrap();
    assert!(doctor.check("cpu").is_some());

    if !have_kvm(name) {
        return;
    }
    let mut record = root
        .command(&["record", "-o", "/tmp/bare.jsonl", "-d", "30s", "-i", "10s"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let file = root.dir.path().join("tmp/bare.jsonl");
    let started = Instant::now();
    while !std::fs::read_to_string(&file).is_ok_and(|text| text.contains('\n')) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "record did not start in the bare root"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = repro::run(&split_lock_repro(
        Duration::from_millis(2),
        Duration::from_secs(1),
        1,
        TimerMode::PerRun,
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child (chroot execs the tracer in place).
    unsafe { libc::kill(record.id() as i32, libc::SIGINT) };
    let status = record.wait().unwrap();
    assert!(status.success());
    let mut reader = RecordingReader::open(&file).unwrap();
    let vcpu = &report.vcpus[0];
    let mut summary = None;
    while let Some(record) = reader.next_record().unwrap() {
        if let Record::Summary(s) = record {
            summary = Some(s);
        }
    }
    let summary = summary.expect("summary");
    let row = summary
        .threads
        .iter()
        .find(|row| row.tid == vcpu.tid)
        .expect("the vCPU thread");
    let misses = summary.losses.kernel_skipped_total();
    assert_counted(
        "EINTR exits in the bare root",
        row.totals.eintr_exits,
        vcpu.eintr_returns,
        misses,
    );
    assert_counted(
        "timer signals in the bare root",
        row.totals.timer_signals,
        vcpu.signals_consumed,
        misses,
    );
}

#[test]
fn debian_package_holds_binary_man_pages_completions_and_unit() {
    let Some(deb) = artefact("TRACER_DEB", "debian_package") else {
        return;
    };
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in [
        "./usr/bin/tracer",
        "./usr/share/man/man1/tracer.1.gz",
        "./usr/share/man/man1/tracer-record.1.gz",
        "./usr/share/bash-completion/completions/tracer",
        "./usr/share/zsh/vendor-completions/_tracer",
        "./usr/share/fish/vendor_completions.d/tracer.fish",
        "./lib/systemd/system/split-lock-tracer.service",
    ] {
        assert!(
            listing.contains(path),
            "{path} missing from the package:\n{listing}"
        );
    }
    let info = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .args(["Package", "Version", "Architecture"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Package: split-lock-tracer") && info.contains("Architecture: amd64"),
        "{info}"
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
    let version = Command::new(dir.path().join("usr/bin/tracer"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let unit = std::fs::read_to_string(
        dir.path()
            .join("lib/systemd/system/split-lock-tracer.service"),
    )
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tracer serve"), "{unit}");
}
