//! `tracer doctor`: the host's split-lock and KVM configuration and the four
//! known failure modes, each check with its status, the value read, where it
//! was read and what to do. Everything is read through a [`HostRoot`], so a
//! captured snapshot (`--root`) is checked exactly like the live host.

pub mod collect;
pub mod logs;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use tracer_events::{CpuInfo, ProbeKind, TracingMode};

use self::logs::{LogPattern, LogScan};
use crate::{
    kernel::{bounded, host::HostRoot, kallsyms::Kallsyms},
    model::punish::{DETECTION_SINCE, MISERY_SINCE, parse_release},
    probes::plan,
};

/// Outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Status {
    /// Fine.
    #[serde(rename = "PASS")]
    Pass,
    /// A risk, or a reduced capability.
    #[serde(rename = "WARN")]
    Warn,
    /// A known failure mode is present.
    #[serde(rename = "FAIL")]
    Fail,
    /// Not applicable here, or not readable (the value says why).
    #[serde(rename = "N/A")]
    NotApplicable,
}

impl Status {
    /// `PASS`, `WARN`, `FAIL`, `N/A`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::NotApplicable => "N/A",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable identifier (`microcode`, `tdp_mmu`, ...).
    pub id: String,
    /// What is checked.
    pub title: String,
    /// Outcome.
    pub status: Status,
    /// The value read, or why nothing could be read.
    pub value: String,
    /// Where it was read.
    pub source: String,
    /// What to do, when something should be done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// Every check, plus the tracing mode `tracer live` would run in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// Root the files were read from.
    pub root: String,
    /// Checks in display order.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// 1 when any check failed, else 0.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.checks.iter().any(|check| check.status == Status::Fail))
    }

    /// A check by id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.id == id)
    }
}

/// Where the logs came from and what they contain.
#[derive(Clone, Debug, Default)]
pub struct Logs {
    /// Scanned lines.
    pub scan: LogScan,
    /// Sources read (e.g. `dmesg`, `journalctl -b`, `<root>/doctor/dmesg.txt`).
    pub sources: Vec<String>,
    /// Sources that could not be read, with the reason.
    pub unavailable: Vec<String>,
    /// Matching lines per snapshot file ([`DMESG_FILE`], [`JOURNAL_FILE`]),
    /// what `--collect` saves.
    pub captured: Vec<(&'static str, Vec<String>)>,
}

/// File names of captured logs inside a snapshot (`--collect`/`--root`).
pub const DMESG_FILE: &str = "/doctor/dmesg.txt";
/// Captured journal lines.
pub const JOURNAL_FILE: &str = "/doctor/journal.txt";

/// Runs `program` and keeps the last [`bounded::LOG_TAIL_CAP`] bytes of
/// its output (a journal of years is gigabytes) and 4 KiB of its errors.
fn run_tail(
    program: &str,
    args: &[&str],
) -> std::io::Result<(std::process::ExitStatus, String, String)> {
    use std::process::Stdio;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || bounded::read_stream_tail(stderr, 4096).unwrap_or_default())
    });
    let stdout = match child.stdout.take() {
        Some(stdout) => bounded::read_stream_tail(stdout, bounded::LOG_TAIL_CAP),
        None => Ok(String::new()),
    };
    let status = child.wait()?;
    let stderr = stderr
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    Ok((status, stdout?, stderr))
}

impl Logs {
    /// Reads the logs: `dmesg` and `journalctl -b` on the live host, the
    /// captured files under a snapshot root.
    pub fn read(host: &HostRoot) -> Self {
        let mut logs = Self::default();
        if host.is_live() {
            for (name, file, program, args) in [
                ("dmesg", DMESG_FILE, "dmesg", &[][..]),
                (
                    "journalctl -b",
                    JOURNAL_FILE,
                    "journalctl",
                    &["-b", "--no-pager", "-q", "-o", "short-iso"][..],
                ),
            ] {
                match run_tail(program, args) {
                    Ok((status, stdout, _)) if status.success() => {
                        logs.add(file, &stdout);
                        logs.sources.push(name.to_owned());
                    }
                    Ok((status, _, stderr)) => logs
                        .unavailable
                        .push(format!("{name}: exit {status}: {}", stderr.trim())),
                    Err(error) => logs.unavailable.push(format!("{name}: {error}")),
                }
            }
        } else {
            for file in [DMESG_FILE, JOURNAL_FILE] {
                match host.read_tail(file, bounded::LOG_TAIL_CAP) {
                    Ok(text) => {
                        logs.add(file, &text);
                        logs.sources.push(host.path(file).display().to_string());
                    }
                    Err(error) => logs
                        .unavailable
                        .push(format!("{}: {error}", host.path(file).display())),
                }
            }
        }
        logs
    }

    fn add(&mut self, file: &'static str, text: &str) {
        // The journal repeats the kernel log; with dmesg read, count kernel
        // lines once.
        let deduplicated;
        let text = if file == JOURNAL_FILE && self.captured.iter().any(|(f, _)| *f == DMESG_FILE) {
            deduplicated = text
                .lines()
                .filter(|line| !line.contains(" kernel: "))
                .collect::<Vec<_>>()
                .join("\n");
            deduplicated.as_str()
        } else {
            text
        };
        let mut scan = LogScan::default();
        scan.add(text);
        self.captured.push((file, scan.matched_lines));
        self.scan.add(text);
    }

    fn source(&self) -> String {
        if self.sources.is_empty() {
            "kernel log".into()
        } else {
            self.sources.join(", ")
        }
    }
}

/// `split_lock_detect=` on the kernel command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// Not given: the kernel's default, warn.
    Default,
    /// `off`.
    Off,
    /// `warn`.
    Warn,
    /// `fatal`.
    Fatal,
    /// `ratelimit:N` (bus-lock #DB rate limit, no #AC).
    Ratelimit(String),
    /// Something else.
    Unknown(String),
}

/// Parses `split_lock_detect=` from a kernel command line.
pub fn boot_mode(cmdline: &str) -> BootMode {
    let Some(value) = cmdline
        .split_whitespace()
        .rev()
        .find_map(|parameter| parameter.strip_prefix("split_lock_detect="))
    else {
        return BootMode::Default;
    };
    match value {
        "off" => BootMode::Off,
        "warn" => BootMode::Warn,
        "fatal" => BootMode::Fatal,
        other => match other.strip_prefix("ratelimit:") {
            Some(rate) => BootMode::Ratelimit(rate.to_owned()),
            None => BootMode::Unknown(other.to_owned()),
        },
    }
}

/// Jasper Lake / Elkhart Lake microcode below which "KVM internal error.
/// Suberror: 3" was reported and fixed by updating (kernel.md §4.1: Intel
/// microcode-20230214 moved 06-9c-00 from 0x24000023 to 0x24000024 and
/// 06-96-01 from 0x16 to 0x17).
pub const MICROCODE_FIXES: [(u32, &str, u64); 2] = [
    (0x9c, "Jasper Lake (e.g. N5095, N5105, N6005)", 0x2400_0024),
    (0x96, "Elkhart Lake (e.g. J6412)", 0x17),
];

fn check(
    id: &str,
    title: &str,
    status: Status,
    value: impl Into<String>,
    source: impl Into<String>,
    advice: Option<String>,
) -> Check {
    Check {
        id: id.into(),
        title: title.into(),
        status,
        value: value.into(),
        source: source.into(),
        advice,
    }
}

struct Facts {
    release: Option<String>,
    version: Option<(u32, u32)>,
    mitigate: Option<u32>,
    cmdline: Option<String>,
    cpu: Result<CpuInfo, String>,
}

impl Facts {
    fn read(host: &HostRoot) -> Self {
        let release = host.kernel_release();
        let cpu = match host.read("/proc/cpuinfo") {
            Ok(text) => CpuInfo::parse(&text).map_err(|error| format!("unparsable: {error}")),
            Err(error) => Err(error.to_string()),
        };
        Self {
            version: release.as_deref().and_then(parse_release),
            release,
            mitigate: host.split_lock_mitigate(),
            cmdline: host.read_trimmed("/proc/cmdline").ok(),
            cpu,
        }
    }

    /// Whether the CPU traps split locks (`split_lock_detect` flag); `None` = unknown.
    fn cpu_traps(&self) -> Option<bool> {
        self.cpu.as_ref().ok().map(|cpu| cpu.split_lock_detect)
    }
}

/// Runs every check against `host` and `logs`.
pub fn run(host: &HostRoot, logs: &Logs) -> DoctorReport {
    let facts = Facts::read(host);
    let mut checks = vec![
        kernel_check(&facts),
        boot_mode_check(&facts, logs),
        misery_check(&facts),
        cpu_check(&facts),
        microcode_check(&facts),
        tdp_mmu_check(host, &facts, logs),
    ];
    checks.extend(log_checks(logs));
    checks.push(vms_check(host, logs));
    checks.extend(readiness_checks(host));
    DoctorReport {
        root: host.root().display().to_string(),
        checks,
    }
}

fn kernel_check(facts: &Facts) -> Check {
    let source = "/proc/sys/kernel/osrelease";
    match (&facts.release, facts.version) {
        (Some(release), Some(version)) => {
            let era = if version >= MISERY_SINCE {
                "split-lock misery mode (5.19+): a trapping task sleeps 10 ms and waits on a semaphore, interruptibly"
            } else if version >= DETECTION_SINCE {
                "split-lock detection without the misery sleep (5.7-5.18)"
            } else {
                "no split-lock detection (before 5.7)"
            };
            check(
                "kernel",
                "kernel release",
                Status::Pass,
                format!("{release}: {era}"),
                source,
                None,
            )
        }
        (Some(release), None) => check(
            "kernel",
            "kernel release",
            Status::NotApplicable,
            format!("{release:?}: not a release number"),
            source,
            None,
        ),
        (None, _) => check(
            "kernel",
            "kernel release",
            Status::NotApplicable,
            "unreadable",
            source,
            None,
        ),
    }
}

fn boot_mode_check(facts: &Facts, logs: &Logs) -> Check {
    let title = "split_lock_detect= boot mode";
    let Some(cmdline) = &facts.cmdline else {
        return check(
            "split_lock_detect",
            title,
            Status::NotApplicable,
            "unreadable",
            "/proc/cmdline",
            None,
        );
    };
    let logged = logs
        .scan
        .get(LogPattern::DetectionMode)
        .example
        .map_or_else(
            || "; boot log: no detection-mode line".into(),
            |line| format!("; boot log: \"{line}\""),
        );
    let source = format!("/proc/cmdline, {}", logs.source());
    match boot_mode(cmdline) {
        BootMode::Off => check(
            "split_lock_detect",
            title,
            Status::Pass,
            format!("off (no split-lock traps){logged}"),
            source,
            None,
        ),
        BootMode::Fatal => check(
            "split_lock_detect",
            title,
            Status::Warn,
            format!("fatal: split-locking host tasks get SIGBUS, guests get #AC injected{logged}"),
            source,
            Some("guests that split-lock will crash; boot with split_lock_detect=warn (or off) unless that is intended".into()),
        ),
        BootMode::Ratelimit(rate) => check(
            "split_lock_detect",
            title,
            Status::Pass,
            format!("ratelimit:{rate} (bus-lock #DB rate limit, no #AC punishment){logged}"),
            source,
            None,
        ),
        BootMode::Warn | BootMode::Default => check(
            "split_lock_detect",
            title,
            Status::Pass,
            format!(
                "{} (warn: trap, log once per task, punish){logged}",
                if boot_mode(cmdline) == BootMode::Default { "not set, default" } else { "warn" }
            ),
            source,
            None,
        ),
        BootMode::Unknown(value) => check(
            "split_lock_detect",
            title,
            Status::Warn,
            format!("split_lock_detect={value}: not a value the kernel knows (off, warn, fatal, ratelimit:N); it falls back to warn{logged}"),
            source,
            Some("fix the parameter".into()),
        ),
    }
}

fn misery_check(facts: &Facts) -> Check {
    let id = "split_lock_mitigate";
    let title = "punishment sleep (kernel.split_lock_mitigate)";
    let source = "/proc/sys/kernel/split_lock_mitigate";
    let off_by_boot = facts.cmdline.as_deref().is_some_and(|cmdline| {
        matches!(boot_mode(cmdline), BootMode::Off | BootMode::Ratelimit(_))
    });
    let traps = facts.cpu_traps();
    let advice_sysctl = "sysctl -w kernel.split_lock_mitigate=0 (persist it in /etc/sysctl.d/), or boot with split_lock_detect=off, or make every VMM vCPU kick timer slower than the punishment (11 ms at HZ=1000, 16 ms at HZ=250)";
    let harmless = |value: String| {
        let why = if off_by_boot {
            "detection is off by boot parameter"
        } else if traps == Some(false) {
            "this CPU does not trap split locks (no split_lock_detect flag)"
        } else {
            ""
        };
        (!why.is_empty()).then(|| {
            check(
                id,
                title,
                Status::Pass,
                format!("{value}, but {why}"),
                source,
                None,
            )
        })
    };
    match (facts.mitigate, facts.version) {
        (Some(0), _) => check(
            id,
            title,
            Status::Pass,
            "0: traps are logged, no sleep, no semaphore: no livelock window",
            source,
            None,
        ),
        (Some(value), _) => harmless(format!("{value}: misery mode on")).unwrap_or_else(|| {
            check(
                id,
                title,
                Status::Warn,
                format!("{value}: every split-lock trap sleeps 10 ms interruptibly; a VMM timer signal faster than that makes a split-locking guest retry forever"),
                source,
                Some(advice_sysctl.into()),
            )
        }),
        (None, Some(version)) if version >= MISERY_SINCE => {
            harmless("absent, misery mode always on (5.19 to early 6.1)".into()).unwrap_or_else(|| {
                check(
                    id,
                    title,
                    Status::Warn,
                    "absent: this kernel always punishes (5.19 to early 6.1, before the sysctl); the livelock cannot be switched off at run time",
                    source,
                    Some("upgrade to a kernel with kernel.split_lock_mitigate (6.2+, or 6.1.y/6.0.y stable since Dec 2022), or boot with split_lock_detect=off".into()),
                )
            })
        }
        (None, Some(_)) => check(
            id,
            title,
            Status::Pass,
            "absent: kernels before 5.19 do not punish with a sleep",
            source,
            None,
        ),
        (None, None) => check(id, title, Status::NotApplicable, "unreadable, and no kernel release", source, None),
    }
}

fn cpu_check(facts: &Facts) -> Check {
    match &facts.cpu {
        Ok(cpu) => {
            let mut value = format!(
                "{} {} \"{}\" microcode {}; split_lock_detect: {}, bus_lock_detect: {}",
                cpu.vendor,
                cpu.signature(),
                cpu.model_name,
                cpu.microcode
                    .map_or_else(|| "not reported".to_owned(), |rev| format!("0x{rev:x}")),
                if cpu.split_lock_detect {
                    "yes (traps split locks)"
                } else {
                    "no (cannot trap split locks)"
                },
                if cpu.bus_lock_detect { "yes" } else { "no" },
            );
            if cpu.hypervisor {
                value.push_str("; this host is itself a guest (the kernel never enables split-lock detection in a guest)");
            }
            check(
                "cpu",
                "CPU and split-lock detection",
                Status::Pass,
                value,
                "/proc/cpuinfo",
                None,
            )
        }
        Err(error) => check(
            "cpu",
            "CPU and split-lock detection",
            Status::NotApplicable,
            error.clone(),
            "/proc/cpuinfo",
            None,
        ),
    }
}

fn microcode_check(facts: &Facts) -> Check {
    let id = "microcode";
    let title = "microcode vs \"KVM internal error. Suberror: 3\"";
    let source = "/proc/cpuinfo";
    let Ok(cpu) = &facts.cpu else {
        return check(
            id,
            title,
            Status::NotApplicable,
            "CPU unknown",
            source,
            None,
        );
    };
    let affected = (cpu.vendor == "GenuineIntel" && cpu.family == 6)
        .then(|| {
            MICROCODE_FIXES
                .iter()
                .find(|(model, _, _)| *model == cpu.model)
        })
        .flatten();
    let Some((_, family_name, fixed)) = affected else {
        return check(
            id,
            title,
            Status::NotApplicable,
            format!("{}: not a Jasper Lake or Elkhart Lake CPU", cpu.signature()),
            source,
            None,
        );
    };
    let advice = "install the intel-microcode package (Debian/Proxmox: enable the non-free-firmware component, apt install intel-microcode) and reboot; or update the BIOS";
    match cpu.microcode {
        Some(revision) if revision < *fixed => check(
            id,
            title,
            Status::Fail,
            format!(
                "{family_name}, microcode 0x{revision:x} < 0x{fixed:x}: random guest freezes with \"KVM internal error. Suberror: 3\" were reported with this microcode and went away after updating (community reports, not an Intel erratum)"
            ),
            source,
            Some(advice.into()),
        ),
        Some(revision) => check(
            id,
            title,
            Status::Pass,
            format!("{family_name}, microcode 0x{revision:x} >= 0x{fixed:x}"),
            source,
            None,
        ),
        None => check(
            id,
            title,
            Status::Warn,
            format!("{family_name}, microcode revision not reported"),
            source,
            Some(advice.into()),
        ),
    }
}

fn tdp_mmu_check(host: &HostRoot, facts: &Facts, logs: &Logs) -> Check {
    let id = "tdp_mmu";
    let title = "TDP MMU vs \"entry failed, hardware error 0x80000021\"";
    let source = "/sys/module/kvm/parameters/tdp_mmu";
    let entry_failed = logs.scan.get(LogPattern::EntryFailed);
    let advice = "boot with kvm.tdp_mmu=N (or `options kvm tdp_mmu=N` in /etc/modprobe.d/), or disable SMM for the affected (Windows) guests; a 6.2+ kernel has the SMM interrupt-shadow fix (fb28875fd7da); BIOS/microcode updates helped on some machines";
    let Ok(value) = host.read_trimmed(source) else {
        return check(
            id,
            title,
            if entry_failed.count > 0 {
                Status::Fail
            } else {
                Status::NotApplicable
            },
            "kvm module not loaded (no parameter file)",
            source,
            (entry_failed.count > 0).then(|| advice.into()),
        );
    };
    let on = matches!(value.as_str(), "Y" | "1" | "y");
    let affected_kernel = facts
        .version
        .is_some_and(|version| ((5, 15)..(6, 2)).contains(&version));
    if entry_failed.count > 0 {
        return check(
            id,
            title,
            Status::Fail,
            format!(
                "tdp_mmu={value}; {} \"entry failed, hardware error\" line(s) in {} (last: {})",
                entry_failed.count,
                logs.source(),
                entry_failed.example.unwrap_or_default()
            ),
            format!("{source}, {}", logs.source()),
            Some(advice.into()),
        );
    }
    if on && affected_kernel {
        return check(
            id,
            title,
            Status::Warn,
            format!(
                "tdp_mmu={value} on {}: 5.15 to 6.1 kernels with the TDP MMU (default since 5.15) killed SMM-using guests with 0x80000021 on some Intel CPUs",
                facts.release.clone().unwrap_or_default()
            ),
            source,
            Some(advice.into()),
        );
    }
    check(
        id,
        title,
        Status::Pass,
        format!("tdp_mmu={value}"),
        source,
        None,
    )
}

fn log_checks(logs: &Logs) -> Vec<Check> {
    let source = logs.source();
    if logs.sources.is_empty() {
        return vec![check(
            "logs",
            "kernel and VMM logs",
            Status::NotApplicable,
            format!("no log readable: {}", logs.unavailable.join("; ")),
            source,
            None,
        )];
    }
    let describe = |pattern: LogPattern| {
        let finding = logs.scan.get(pattern);
        let mut text = format!("{} line(s)", finding.count);
        if let (Some(first), Some(last)) = (&finding.first, &finding.last) {
            let _ = write!(text, ", first {first}, last {last}");
        }
        if !finding.tasks.is_empty() {
            let tasks: Vec<&String> = finding.tasks.iter().take(8).collect();
            let _ = write!(
                text,
                "; tasks: {}",
                tasks
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let guests = finding.guest_tasks().len();
            if guests > 0 {
                let _ = write!(text, " ({guests} guest vCPU thread(s))");
            }
        }
        (finding.count, text)
    };
    let (traps, traps_text) = describe(LogPattern::SplitLockTrap);
    let (bus, bus_text) = describe(LogPattern::BusLockTrap);
    let (internal, internal_text) = describe(LogPattern::KvmInternalError);
    let (entry, entry_text) = describe(LogPattern::EntryFailed);
    vec![
        check(
            "log_split_lock",
            "log: split_lock trap",
            if traps > 0 { Status::Warn } else { Status::Pass },
            traps_text + if traps > 0 { " (logged once per task since 5.19: the count is tasks, not traps)" } else { "" },
            source.clone(),
            (traps > 0).then(|| "a task or guest split-locks: run `tracer live` while it happens to see whether it is throttled or livelocked".into()),
        ),
        check(
            "log_bus_lock",
            "log: bus_lock trap",
            if bus > 0 { Status::Warn } else { Status::Pass },
            bus_text,
            source.clone(),
            None,
        ),
        check(
            "log_internal_error",
            "log: KVM internal error",
            if internal > 0 { Status::Fail } else { Status::Pass },
            internal_text,
            source.clone(),
            (internal > 0).then(|| "Suberror 3 on Jasper/Elkhart Lake: see the microcode check".into()),
        ),
        check(
            "log_entry_failed",
            "log: entry failed, hardware error",
            if entry > 0 { Status::Fail } else { Status::Pass },
            entry_text,
            source,
            (entry > 0).then(|| "0x80000021: see the tdp_mmu check".into()),
        ),
    ]
}

fn vms_check(host: &HostRoot, logs: &Logs) -> Check {
    let vms = host.vm_threads();
    if vms.is_empty() {
        return check(
            "vms",
            "running VMs",
            Status::NotApplicable,
            "no process with QEMU vCPU threads (CPU N/KVM)",
            "/proc/*/task/*/comm",
            None,
        );
    }
    let trapping: Vec<String> = logs
        .scan
        .get(LogPattern::SplitLockTrap)
        .guest_tasks()
        .iter()
        .map(|task| task.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    let mut advice = None;
    let descriptions: Vec<String> = vms
        .iter()
        .map(|vm| {
            let label = vm.info.label().unwrap_or_else(|| "?".into());
            let cpu = vm.cpu_model.clone().unwrap_or_else(|| "default".into());
            let split_locking = vm
                .vcpus
                .iter()
                .any(|vcpu| trapping.contains(&vcpu.tid.to_string()));
            if split_locking && cpu == "host" {
                advice = Some("a guest with -cpu host took split-lock traps; a Proxmox user reported that switching that VM to kvm64 stopped them (seed 000); `tracer live --vm ID` shows whether it is livelocked".to_owned());
            }
            format!(
                "pid {} {label}: -cpu {cpu}, {} vCPU thread(s){}",
                vm.pid,
                vm.vcpus.len(),
                if split_locking { ", split-lock traps logged" } else { "" }
            )
        })
        .collect();
    check(
        "vms",
        "running VMs",
        if advice.is_some() {
            Status::Warn
        } else {
            Status::Pass
        },
        descriptions.join("; "),
        "/proc/*/cmdline, /proc/*/task/*/comm",
        advice,
    )
}

/// Where tracefs is under the root, if anywhere.
fn tracefs_dir(host: &HostRoot) -> Option<&'static str> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|dir| host.exists(&format!("{dir}/events")))
}

fn readiness_checks(host: &HostRoot) -> Vec<Check> {
    let mut checks = Vec::new();
    if host.is_live() {
        checks.push(match crate::session::check_privileges() {
            Ok(()) => check(
                "privileges",
                "privileges to trace",
                Status::Pass,
                "root or CAP_BPF+CAP_PERFMON",
                "geteuid, /proc/self/status",
                None,
            ),
            Err(error) => check(
                "privileges",
                "privileges to trace",
                Status::Fail,
                error.to_string(),
                "geteuid, /proc/self/status",
                Some("run as root".into()),
            ),
        });
    } else {
        checks.push(check(
            "privileges",
            "privileges to trace",
            Status::NotApplicable,
            "snapshot: not the running host",
            "--root",
            None,
        ));
    }
    let btf = host.exists("/sys/kernel/btf/vmlinux");
    checks.push(check(
        "btf",
        "kernel BTF",
        if btf {
            Status::Pass
        } else {
            Status::NotApplicable
        },
        if btf {
            "present"
        } else {
            "absent (not needed: tracepoint offsets come from tracefs)"
        },
        "/sys/kernel/btf/vmlinux",
        None,
    ));
    let tracefs = tracefs_dir(host);
    let kprobes = host.exists("/sys/bus/event_source/devices/kprobe/type")
        || tracefs.is_some_and(|dir| host.exists(&format!("{dir}/kprobe_events")));
    checks.push(check(
        "kprobes",
        "kprobe support",
        if kprobes { Status::Pass } else { Status::Warn },
        if kprobes {
            "available"
        } else {
            "unavailable (no kprobe PMU, no kprobe_events): verdicts will be inferred"
        },
        "/sys/bus/event_source/devices/kprobe/type, tracefs kprobe_events",
        (!kprobes).then(|| "a kernel with CONFIG_KPROBES=y gives confirmed verdicts".into()),
    ));
    let wanted = plan::kprobe_symbols();
    // Streamed, keeping only the wanted symbols: memory stays small for a
    // kallsyms of millions of lines, and the read stops at its cap.
    let kallsyms = host
        .open_capped("/proc/kallsyms")
        .map_err(|error| format!("{}: {error}", host.path("/proc/kallsyms").display()))
        .and_then(|file| {
            Kallsyms::from_reader(file, &host.path("/proc/kallsyms"), &wanted)
                .map_err(|error| error.to_string())
        });
    let symbol_present = |name: &str| {
        kallsyms
            .as_ref()
            .is_ok_and(|k| k.resolve_probe_target(name).is_some())
    };
    let symbols = match &kallsyms {
        Ok(_) => {
            let missing: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|name| !symbol_present(name))
                .collect();
            if missing.is_empty() {
                check(
                    "symbols",
                    "split-lock symbols",
                    Status::Pass,
                    "all present",
                    "/proc/kallsyms",
                    None,
                )
            } else {
                check("symbols", "split-lock symbols", Status::Warn, format!("missing: {}", missing.join(", ")), "/proc/kallsyms", Some("without handle_guest_split_lock there is no guest split-lock handling to probe (AMD, or a kernel without it)".into()))
            }
        }
        Err(error) => check(
            "symbols",
            "split-lock symbols",
            Status::NotApplicable,
            error.clone(),
            "/proc/kallsyms",
            None,
        ),
    };
    checks.push(symbols);
    let events = plan::tracefs_events();
    // Without tracefs mounted the live host still has the events (the
    // tracer mounts it at start); a snapshot without it has none.
    let event_present = |event: &str| match tracefs {
        Some(dir) => host.exists(&format!("{dir}/events/{event}/format")),
        None => host.is_live(),
    };
    let present: Vec<&str> = events
        .iter()
        .map(String::as_str)
        .filter(|event| event_present(event))
        .collect();
    checks.push(match tracefs {
        Some(dir) => {
            let status = if present.len() == events.len() {
                Status::Pass
            } else {
                Status::Warn
            };
            check(
                "tracepoints",
                "tracepoints",
                status,
                format!(
                    "{} of {}: {}",
                    present.len(),
                    events.len(),
                    present.join(", ")
                ),
                format!("{dir}/events"),
                (status == Status::Warn).then(|| {
                    "load the kvm module (modprobe kvm_intel) for the kvm tracepoints".into()
                }),
            )
        }
        None => check(
            "tracepoints",
            "tracepoints",
            if host.is_live() {
                Status::Warn
            } else {
                Status::NotApplicable
            },
            "tracefs not mounted (tracer mounts it at start)",
            "/sys/kernel/tracing",
            None,
        ),
    });
    // The probe plan's own rule, asked of what this host offers.
    let usable = |spec: &plan::ProbeSpec| match spec.kind {
        ProbeKind::Kprobe | ProbeKind::Kretprobe => kprobes && symbol_present(spec.target),
        ProbeKind::Tracepoint | ProbeKind::RawTracepoint => spec
            .tracefs_event()
            .is_some_and(|event| event_present(&event)),
        ProbeKind::PerfCounter => false,
    };
    let (status, mode) = match plan::mode(usable) {
        Some(TracingMode::Full) => (
            Status::Pass,
            "full: split-lock handlers and punishment results are probed; verdicts confirmed",
        ),
        Some(TracingMode::TracepointOnly) => (
            Status::Warn,
            "tracepoint-only: livelock verdicts are inferred from #AC exits and EINTR returns",
        ),
        None => (
            Status::Warn,
            "none: neither kprobes nor the kvm tracepoints are usable",
        ),
    };
    checks.push(check(
        "mode",
        "tracer live would run in",
        status,
        mode,
        "the checks above",
        None,
    ));
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_modes() {
        assert_eq!(boot_mode("quiet"), BootMode::Default);
        assert_eq!(boot_mode("split_lock_detect=off quiet"), BootMode::Off);
        assert_eq!(
            boot_mode("split_lock_detect=warn split_lock_detect=fatal"),
            BootMode::Fatal
        );
        assert_eq!(
            boot_mode("split_lock_detect=ratelimit:100"),
            BootMode::Ratelimit("100".into())
        );
        assert_eq!(
            boot_mode("split_lock_detect=maybe"),
            BootMode::Unknown("maybe".into())
        );
    }
}
