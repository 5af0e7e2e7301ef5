//! Kernel and VMM log lines doctor looks for: split-lock and bus-lock
//! traps (kernel), `KVM internal error` and `entry failed, hardware error`
//! (QEMU, in the journal), and the boot-time detection mode.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One kind of log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogPattern {
    /// `x86/split lock detection: #AC: <comm>/<pid> took a split_lock trap at address: ...`
    SplitLockTrap,
    /// `... #DB: <comm>/<pid> took a bus_lock trap at address: ...`
    BusLockTrap,
    /// QEMU: `KVM internal error. Suberror: N`.
    KvmInternalError,
    /// QEMU: `KVM: entry failed, hardware error 0x...`.
    EntryFailed,
    /// Boot: `x86/split lock detection: <mode>` (not a trap line).
    DetectionMode,
}

impl LogPattern {
    /// Every pattern.
    pub const ALL: [Self; 5] = [
        Self::SplitLockTrap,
        Self::BusLockTrap,
        Self::KvmInternalError,
        Self::EntryFailed,
        Self::DetectionMode,
    ];

    /// The text that identifies the line.
    pub fn needle(self) -> &'static str {
        match self {
            Self::SplitLockTrap => "took a split_lock trap",
            Self::BusLockTrap => "took a bus_lock trap",
            Self::KvmInternalError => "KVM internal error",
            Self::EntryFailed => "entry failed, hardware error",
            Self::DetectionMode => "x86/split lock detection:",
        }
    }

    fn matches(self, line: &str) -> bool {
        match self {
            Self::DetectionMode => {
                line.contains(self.needle()) && !line.contains(" took a ") && !line.contains("trap")
            }
            _ => line.contains(self.needle()),
        }
    }
}

/// What the logs say about one pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFinding {
    /// Matching lines.
    pub count: u64,
    /// Timestamp of the first match, as the log printed it.
    pub first: Option<String>,
    /// Timestamp of the last match.
    pub last: Option<String>,
    /// Tasks named in trap lines (`CPU 1/KVM/3302738`).
    pub tasks: BTreeSet<String>,
    /// The last matching line's message.
    pub example: Option<String>,
}

impl LogFinding {
    /// Tasks that are QEMU vCPU threads (`CPU N/KVM/<tid>`): guests.
    pub fn guest_tasks(&self) -> Vec<&String> {
        self.tasks
            .iter()
            .filter(|task| task.starts_with("CPU ") && task.contains("/KVM/"))
            .collect()
    }
}

/// Splits a log line into (timestamp, message): dmesg `[  12.345678] msg`
/// or journal `2025-01-02T03:04:05+0000 host unit: msg`.
fn split_timestamp(line: &str) -> (Option<String>, &str) {
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix('[')
        && let Some((stamp, message)) = rest.split_once(']')
    {
        return (Some(stamp.trim().to_owned()), message.trim_start());
    }
    let mut parts = trimmed.splitn(2, ' ');
    let first = parts.next().unwrap_or_default();
    if first.len() >= 19 && first.as_bytes().get(4) == Some(&b'-') && first.contains('T') {
        return (Some(first.to_owned()), parts.next().unwrap_or_default());
    }
    (None, trimmed)
}

/// The task of a trap line: `#AC: CPU 1/KVM/3302738 took a ...` -> `CPU 1/KVM/3302738`.
fn trap_task(message: &str) -> Option<String> {
    let start = message.find("#AC: ").or_else(|| message.find("#DB: "))? + 5;
    let end = message[start..].find(" took a ")? + start;
    Some(message[start..end].to_owned())
}

/// Findings per pattern over one or more logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogScan {
    /// Per pattern.
    pub findings: std::collections::BTreeMap<LogPattern, LogFinding>,
    /// Lines kept (the ones any pattern matched), for `--collect`.
    #[serde(skip)]
    pub matched_lines: Vec<String>,
}

impl LogScan {
    /// Scans log text.
    pub fn add(&mut self, text: &str) {
        for line in text.lines() {
            let mut kept = false;
            for pattern in LogPattern::ALL {
                if !pattern.matches(line) {
                    continue;
                }
                kept = true;
                let (stamp, message) = split_timestamp(line);
                let finding = self.findings.entry(pattern).or_default();
                finding.count += 1;
                if finding.first.is_none() {
                    finding.first.clone_from(&stamp);
                }
                finding.last = stamp;
                finding.example = Some(message.to_owned());
                if let Some(task) = trap_task(message) {
                    finding.tasks.insert(task);
                }
            }
            if kept {
                self.matched_lines.push(line.to_owned());
            }
        }
    }

    /// The finding for a pattern (empty when none matched).
    pub fn get(&self, pattern: LogPattern) -> LogFinding {
        self.findings.get(&pattern).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmesg_and_journal_lines() {
        let mut scan = LogScan::default();
        scan.add(
            "[    0.123456] x86/split lock detection: #AC: crashing the kernel on kernel split_locks and warning on user-space split_locks\n\
[75982.292657] x86/split lock detection: #AC: CPU 1/KVM/3302738 took a split_lock trap at address: 0xbff4b050\n\
[75990.000001] x86/split lock detection: #AC: CPU 1/KVM/3302738 took a split_lock trap at address: 0xbff4b050\n\
[80000.1] unrelated\n",
        );
        scan.add("2025-03-01T10:00:00+0100 pve QEMU[1234]: KVM internal error. Suberror: 3\n");
        let traps = scan.get(LogPattern::SplitLockTrap);
        assert_eq!(traps.count, 2);
        assert_eq!(traps.first.as_deref(), Some("75982.292657"));
        assert_eq!(traps.last.as_deref(), Some("75990.000001"));
        assert_eq!(traps.guest_tasks(), vec!["CPU 1/KVM/3302738"]);
        let mode = scan.get(LogPattern::DetectionMode);
        assert_eq!(mode.count, 1);
        assert!(mode.example.unwrap().contains("warning on user-space"));
        let internal = scan.get(LogPattern::KvmInternalError);
        assert_eq!(internal.first.as_deref(), Some("2025-03-01T10:00:00+0100"));
        assert_eq!(scan.matched_lines.len(), 4);
        assert_eq!(scan.get(LogPattern::EntryFailed).count, 0);
    }
}
