//! Host facts read from /proc and /sys, always relative to a root directory
//! so a captured snapshot (`doctor --root`) reads the same way as the host.

use std::path::{Path, PathBuf};

use crate::model::ProcessInfo;

/// A view of a host's files under `root` (`/` for the live host).
#[derive(Clone, Debug)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    /// The live host.
    pub fn live() -> Self {
        Self::new("/")
    }

    /// Files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of an absolute host path under the root.
    pub fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    /// Reads a file as text.
    pub fn read(&self, absolute: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.path(absolute))
    }

    /// Reads a file and trims it.
    pub fn read_trimmed(&self, absolute: &str) -> std::io::Result<String> {
        self.read(absolute).map(|text| text.trim().to_owned())
    }

    /// `/proc/sys/kernel/split_lock_mitigate`, if present.
    pub fn split_lock_mitigate(&self) -> Option<u32> {
        self.read_trimmed("/proc/sys/kernel/split_lock_mitigate")
            .ok()?
            .parse()
            .ok()
    }

    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub fn kernel_release(&self) -> Option<String> {
        self.read_trimmed("/proc/sys/kernel/osrelease").ok()
    }

    /// Whether the host's split-lock handling can punish with an
    /// interruptible sleep: `Some(false)` when the sysctl says 0 or the
    /// kernel predates the misery mode (5.19), `None` when unknown.
    pub fn misery_possible(&self) -> Option<bool> {
        if let Some(value) = self.split_lock_mitigate() {
            return Some(value != 0);
        }
        let (major, minor) = parse_release(&self.kernel_release()?)?;
        // 5.19 .. 6.1-early: misery always on, no sysctl; before 5.19: none.
        Some((major, minor) >= (5, 19))
    }

    /// Identity of a QEMU (or other VMM) process from its command line.
    pub fn process_info(&self, pid: u32) -> ProcessInfo {
        let comm = self.read_trimmed(&format!("/proc/{pid}/comm")).ok();
        let cmdline = self
            .read(&format!("/proc/{pid}/cmdline"))
            .map(|text| text.split('\0').map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut info = qemu_identity(&cmdline);
        info.comm = comm;
        info
    }

    /// Whether a thread id no longer exists.
    pub fn thread_gone(&self, tid: u32) -> bool {
        !self.path(&format!("/proc/{tid}")).exists()
    }
}

/// `(major, minor)` of a release string like `6.8.12-4-pve`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Extracts `-name` and `-id` (Proxmox VMID) from a QEMU command line.
pub fn qemu_identity(args: &[String]) -> ProcessInfo {
    let mut info = ProcessInfo::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-name" => {
                if let Some(value) = iter.next() {
                    // `-name guest=web,debug-threads=on` or `-name web,...`
                    let first = value.split(',').next().unwrap_or(value);
                    let name = value
                        .split(',')
                        .find_map(|part| part.strip_prefix("guest="))
                        .unwrap_or(first);
                    info.name = Some(name.to_owned());
                }
            }
            "-id" => info.vmid = iter.next().cloned(),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn proxmox_and_libvirt_command_lines() {
        let proxmox = qemu_identity(&args(
            "/usr/bin/kvm -id 100 -name haos,debug-threads=on -no-shutdown -cpu host,+kvm_pv_eoi",
        ));
        assert_eq!(proxmox.vmid.as_deref(), Some("100"));
        assert_eq!(proxmox.name.as_deref(), Some("haos"));
        assert_eq!(proxmox.label().as_deref(), Some("100 (haos)"));
        let libvirt = qemu_identity(&args(
            "qemu-system-x86_64 -name guest=web01,debug-threads=on -S",
        ));
        assert_eq!(libvirt.name.as_deref(), Some("web01"));
        assert_eq!(libvirt.vmid, None);
        assert_eq!(
            qemu_identity(&args("firecracker --api-sock x")),
            ProcessInfo::default()
        );
    }

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.8.12-4-pve"), Some((6, 8)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("garbage"), None);
    }
}
