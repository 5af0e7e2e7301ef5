//! Watching host settings while tracing: `kernel.split_lock_mitigate` (the
//! classifier depends on it), CPU 0's microcode revision (a late load
//! changes it) and the kernel's global kprobes switch (off, the confirming
//! probes go quiet while still attached) are read every interval through the host root (a fake root
//! in tests), and a change becomes a [`MitigationChange`] for the model,
//! the header, the recording and the metrics.

use tracer_events::{KPROBES_ENABLED, MICROCODE_REVISION, MitigationChange, SPLIT_LOCK_MITIGATE};

use crate::{kernel::host::HostRoot, live::MitigationNote};

/// Reads one watched setting under a host root (`None`: absent or unreadable).
type ReadSetting = fn(&HostRoot) -> Option<u32>;

/// The settings watched, each with its reader.
const WATCHED: [(&str, ReadSetting); 3] = [
    (SPLIT_LOCK_MITIGATE, HostRoot::split_lock_mitigate),
    (MICROCODE_REVISION, HostRoot::microcode_revision),
    (KPROBES_ENABLED, HostRoot::kprobes_enabled),
];

/// Polls the watched settings under a host root.
#[derive(Debug)]
pub struct MitigationWatch {
    host: HostRoot,
    /// The last reading of each [`WATCHED`] setting, in its order.
    values: [Option<u32>; WATCHED.len()],
    read_ns: u64,
}

impl MitigationWatch {
    /// Reads the values in force at `now_ns`.
    pub fn new(host: HostRoot, now_ns: u64) -> Self {
        let values = WATCHED.map(|(_, read)| read(&host));
        Self {
            host,
            values,
            read_ns: now_ns,
        }
    }

    /// `kernel.split_lock_mitigate` as last read.
    pub fn value(&self) -> Option<u32> {
        self.value_of(SPLIT_LOCK_MITIGATE)
    }

    /// A watched setting as last read (`None` also for a setting not watched).
    pub fn value_of(&self, setting: &str) -> Option<u32> {
        WATCHED
            .iter()
            .position(|(name, _)| *name == setting)
            .and_then(|index| self.values[index])
    }

    /// Reads them again at `now_ns`; the changes, in [`WATCHED`] order.
    pub fn poll(&mut self, now_ns: u64) -> Vec<MitigationChange> {
        let since_ns = std::mem::replace(&mut self.read_ns, now_ns);
        let mut changes = Vec::new();
        for ((setting, read), last) in WATCHED.iter().zip(&mut self.values) {
            let value = read(&self.host);
            if value == *last {
                continue;
            }
            let from = std::mem::replace(last, value);
            changes.push(MitigationChange {
                ts_ns: now_ns,
                setting: (*setting).to_owned(),
                since_ns,
                from,
                to: value,
            });
        }
        changes
    }
}

/// `HH:MM:SS` local time of a Unix time in ns.
pub fn wall_clock(unix_ns: i64) -> String {
    // Typed by inference from localtime_r's parameter (`time_t`, whose
    // alias libc deprecates on musl while its width changes there).
    let seconds = (unix_ns / 1_000_000_000) as _;
    // SAFETY: localtime_r fills the tm it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&raw const seconds, &raw mut tm) }.is_null() {
        return format!("{seconds} s");
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// The header's note: `split_lock_mitigate 1 → 0 at 12:03:04`, with the
/// recording's CLOCK_REALTIME − CLOCK_MONOTONIC offset.
pub fn header_note(change: &MitigationChange, realtime_offset_ns: i64) -> MitigationNote {
    MitigationNote {
        setting: change.setting.clone(),
        text: format!(
            "{} at {}",
            change.describe(),
            wall_clock((change.ts_ns as i64).saturating_add(realtime_offset_ns))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake host root holding `files` (absolute path, content).
    fn fake_root(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, text) in files {
            write(&root, path, text);
        }
        root
    }

    /// Writes one file under the fake root (a value changed by the host).
    fn write(root: &tempfile::TempDir, path: &str, text: &str) {
        let path = root.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const SYSCTL: &str = "/proc/sys/kernel/split_lock_mitigate";
    const MICROCODE: &str = "/sys/devices/system/cpu/cpu0/microcode/version";
    const KPROBES: &str = "/sys/kernel/debug/kprobes/enabled";

    #[test]
    fn a_change_under_a_fake_root_is_seen_once() {
        let root = fake_root(&[(SYSCTL, "1\n")]);
        let mut watch = MitigationWatch::new(HostRoot::new(root.path()), 100);
        assert_eq!(watch.value(), Some(1));
        assert_eq!(watch.value_of(MICROCODE_REVISION), None);
        assert_eq!(watch.poll(200), []);
        write(&root, SYSCTL, "0\n");
        let changes = watch.poll(300);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let change = &changes[0];
        assert_eq!((change.since_ns, change.ts_ns), (200, 300));
        assert_eq!((change.from, change.to), (Some(1), Some(0)));
        assert_eq!(change.describe(), "split_lock_mitigate 1 → 0");
        assert_eq!(watch.poll(400), []);
        std::fs::remove_file(root.path().join(SYSCTL.trim_start_matches('/'))).unwrap();
        assert_eq!(watch.poll(500)[0].to, None);
    }

    /// A late microcode load (`echo 1 > /sys/devices/system/cpu/microcode/reload`)
    /// changes the revision sysfs reports; the sysctl is untouched.
    #[test]
    fn a_late_microcode_load_is_a_change_of_its_own() {
        let root = fake_root(&[(SYSCTL, "1\n"), (MICROCODE, "0x24000023\n")]);
        let mut watch = MitigationWatch::new(HostRoot::new(root.path()), 100);
        assert_eq!(watch.value_of(MICROCODE_REVISION), Some(0x2400_0023));
        write(&root, MICROCODE, "0x24000024\n");
        let changes = watch.poll(200);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].setting, MICROCODE_REVISION);
        assert_eq!(changes[0].describe(), "microcode 0x24000023 → 0x24000024");
        assert_eq!(watch.value(), Some(1));
        assert_eq!(watch.value_of(MICROCODE_REVISION), Some(0x2400_0024));
    }

    /// `echo 0 > /sys/kernel/debug/kprobes/enabled` while tracing.
    #[test]
    fn kprobes_switched_off_is_seen() {
        let root = fake_root(&[(KPROBES, "1\n")]);
        let mut watch = MitigationWatch::new(HostRoot::new(root.path()), 100);
        assert_eq!(watch.value_of(KPROBES_ENABLED), Some(1));
        write(&root, KPROBES, "0\n");
        let changes = watch.poll(200);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].describe(), "kprobes_enabled 1 → 0");
        assert_eq!(watch.value(), None);
    }
}
