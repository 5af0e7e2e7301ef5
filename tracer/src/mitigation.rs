//! Watching the mitigation settings while tracing: `kernel.split_lock_mitigate`
//! is read every interval through the host root (a fake root in tests), and a
//! change becomes a [`MitigationChange`] for the model, the header, the
//! recording and the metrics.

use tracer_events::{MitigationChange, SPLIT_LOCK_MITIGATE};

use crate::kernel::host::HostRoot;

/// Polls `kernel.split_lock_mitigate` under a host root.
#[derive(Debug)]
pub struct MitigationWatch {
    host: HostRoot,
    value: Option<u32>,
    read_ns: u64,
}

impl MitigationWatch {
    /// Reads the value in force at `now_ns`.
    pub fn new(host: HostRoot, now_ns: u64) -> Self {
        let value = host.split_lock_mitigate();
        Self {
            host,
            value,
            read_ns: now_ns,
        }
    }

    /// The value last read.
    pub fn value(&self) -> Option<u32> {
        self.value
    }

    /// Reads it again at `now_ns`; the change, when it differs.
    pub fn poll(&mut self, now_ns: u64) -> Option<MitigationChange> {
        let value = self.host.split_lock_mitigate();
        let since_ns = std::mem::replace(&mut self.read_ns, now_ns);
        if value == self.value {
            return None;
        }
        let from = std::mem::replace(&mut self.value, value);
        Some(MitigationChange {
            ts_ns: now_ns,
            setting: SPLIT_LOCK_MITIGATE.to_owned(),
            since_ns,
            from,
            to: value,
        })
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
pub fn header_note(change: &MitigationChange, realtime_offset_ns: i64) -> String {
    format!(
        "{} at {}",
        change.describe(),
        wall_clock((change.ts_ns as i64).saturating_add(realtime_offset_ns))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_under_a_fake_root_is_seen_once() {
        let root = tempfile::tempdir().unwrap();
        let sysctl = root.path().join("proc/sys/kernel");
        std::fs::create_dir_all(&sysctl).unwrap();
        std::fs::write(sysctl.join("split_lock_mitigate"), "1\n").unwrap();
        let mut watch = MitigationWatch::new(HostRoot::new(root.path()), 100);
        assert_eq!(watch.value(), Some(1));
        assert_eq!(watch.poll(200), None);
        std::fs::write(sysctl.join("split_lock_mitigate"), "0\n").unwrap();
        let change = watch.poll(300).expect("a change");
        assert_eq!((change.since_ns, change.ts_ns), (200, 300));
        assert_eq!((change.from, change.to), (Some(1), Some(0)));
        assert_eq!(change.describe(), "split_lock_mitigate 1 → 0");
        assert_eq!(watch.poll(400), None);
        std::fs::remove_file(sysctl.join("split_lock_mitigate")).unwrap();
        assert_eq!(watch.poll(500).map(|change| change.to), Some(None));
    }
}
