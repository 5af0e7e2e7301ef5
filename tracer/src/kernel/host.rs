//! Host facts read from /proc and /sys, always relative to a root directory
//! so a captured snapshot (`doctor --root`) reads the same way as the host.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tracer_events::{CpuInfo, HostFacts, ProcessInfo, VcpuThread, VmThreads};

use super::bounded;

/// The kvm modules whose parameters matter here.
pub const KVM_MODULES: [&str; 3] = ["kvm", "kvm_intel", "kvm_amd"];

/// What a tracking [`HostRoot`] remembers of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSeen {
    /// Only its existence was checked.
    Exists,
    /// Its content as it was read (the whole capped file, or its tail):
    /// `doctor --collect` copies this, not what the file holds later, so
    /// the snapshot is what doctor judged even if the host changed since
    /// (a VM that exited, a log that rotated).
    Read(String),
    /// Read as a stream (too large to keep, e.g. kallsyms): copied from
    /// the file again.
    Streamed,
    /// The read failed (doctor reported it N/A): nothing to copy.
    Unreadable,
}

/// A view of a host's files under `root` (`/` for the live host).
#[derive(Clone, Debug)]
pub struct HostRoot {
    root: PathBuf,
    /// Absolute host paths used so far, when tracking (`doctor --collect`).
    reads: Option<std::sync::Arc<std::sync::Mutex<BTreeMap<String, FileSeen>>>>,
}

impl HostRoot {
    /// The live host.
    pub fn live() -> Self {
        Self::new("/")
    }

    /// Files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            reads: None,
        }
    }

    /// Files under `root`, remembering every file read (see [`Self::files_read`]).
    pub fn tracking(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            reads: Some(std::sync::Arc::default()),
        }
    }

    /// Absolute host paths used so far, with what was seen of each
    /// (empty unless tracking).
    pub fn files_read(&self) -> Vec<(String, FileSeen)> {
        self.reads.as_ref().map_or_else(Vec::new, |reads| {
            reads
                .lock()
                .map(|map| {
                    map.iter()
                        .map(|(path, seen)| (path.clone(), seen.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Remembers what was seen of `absolute`: a read's content replaces a
    /// mere existence check or an earlier failure, and the first content
    /// read is kept (it is what the first check judged).
    fn note(&self, absolute: &str, seen: FileSeen) {
        if let Some(reads) = &self.reads
            && let Ok(mut map) = reads.lock()
        {
            let entry = map.entry(absolute.to_owned()).or_insert(FileSeen::Exists);
            let keep = matches!(
                (&*entry, &seen),
                (FileSeen::Read(_), _)
                    | (_, FileSeen::Exists)
                    | (FileSeen::Streamed, FileSeen::Unreadable)
            );
            let replace = !keep;
            if replace {
                *entry = seen;
            }
        }
    }

    /// Notes the outcome of reading `absolute` and passes it on.
    fn noted(&self, absolute: &str, read: std::io::Result<String>) -> std::io::Result<String> {
        if self.reads.is_some() {
            self.note(
                absolute,
                match &read {
                    Ok(text) => FileSeen::Read(text.clone()),
                    Err(_) => FileSeen::Unreadable,
                },
            );
        }
        read
    }

    /// Whether this is the live host (`/`).
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Lists a directory (absolute host path): entry names, sorted.
    pub fn list(&self, absolute: &str) -> std::io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(absolute))?
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether an absolute host path exists under the root.
    pub fn exists(&self, absolute: &str) -> bool {
        self.note(absolute, FileSeen::Exists);
        self.path(absolute).exists()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of an absolute host path under the root.
    pub fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    /// Reads a regular file as text, up to its kind's cap
    /// ([`bounded::cap_of`]); a FIFO, device or oversized file is an error.
    pub fn read(&self, absolute: &str) -> std::io::Result<String> {
        self.noted(
            absolute,
            bounded::read_capped(&self.path(absolute), bounded::cap_of(absolute)),
        )
    }

    /// Reads the last `cap` bytes of a regular file (a log).
    pub fn read_tail(&self, absolute: &str, cap: u64) -> std::io::Result<String> {
        self.noted(absolute, bounded::read_tail(&self.path(absolute), cap))
    }

    /// Opens a regular file for streaming, failing once more than its
    /// kind's cap is read.
    pub fn open_capped(&self, absolute: &str) -> std::io::Result<bounded::Capped<std::fs::File>> {
        self.note(absolute, FileSeen::Streamed);
        let file = bounded::open_regular(&self.path(absolute))?;
        Ok(bounded::Capped::new(file, bounded::cap_of(absolute)))
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

    /// CPU 0's microcode revision from sysfs (`0x24000024`), if the
    /// microcode driver exposes it.
    pub fn microcode_revision(&self) -> Option<u32> {
        let text = self
            .read_trimmed("/sys/devices/system/cpu/cpu0/microcode/version")
            .ok()?;
        u32::from_str_radix(text.trim_start_matches("0x"), 16).ok()
    }

    /// `/sys/kernel/debug/kprobes/enabled` (1 or 0), where debugfs is mounted.
    pub fn kprobes_enabled(&self) -> Option<u32> {
        self.read_trimmed("/sys/kernel/debug/kprobes/enabled")
            .ok()?
            .parse()
            .ok()
    }

    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub fn kernel_release(&self) -> Option<String> {
        self.read_trimmed("/proc/sys/kernel/osrelease").ok()
    }

    /// Identity of a QEMU (or other VMM) process from its command line.
    pub fn process_info(&self, pid: u32) -> ProcessInfo {
        let comm = self.read_trimmed(&format!("/proc/{pid}/comm")).ok();
        let cmdline = self.process_cmdline(pid);
        let mut info = qemu_identity(&cmdline);
        info.comm = comm;
        info
    }

    /// Every fact of [`HostFacts`]; unreadable files leave their field empty.
    pub fn facts(&self) -> HostFacts {
        let (cpu, cpu_error) = match self.read("/proc/cpuinfo") {
            Ok(text) => match CpuInfo::parse(&text) {
                Ok(cpu) => (Some(cpu), None),
                Err(error) => (None, Some(format!("/proc/cpuinfo: {error}"))),
            },
            Err(error) => (None, Some(format!("/proc/cpuinfo: {error}"))),
        };
        HostFacts {
            hostname: self.read_trimmed("/proc/sys/kernel/hostname").ok(),
            kernel_release: self.kernel_release(),
            kernel_version: self.read_trimmed("/proc/sys/kernel/version").ok(),
            cmdline: self.read_trimmed("/proc/cmdline").ok(),
            split_lock_mitigate: self.split_lock_mitigate(),
            cpu,
            cpu_error,
            kvm_parameters: KVM_MODULES
                .iter()
                .filter_map(|module| {
                    let parameters = self.module_parameters(module);
                    (!parameters.is_empty()).then(|| ((*module).to_owned(), parameters))
                })
                .collect(),
        }
    }

    /// `/sys/module/MODULE/parameters/*` as name -> value (empty when absent).
    pub fn module_parameters(&self, module: &str) -> BTreeMap<String, String> {
        let dir = format!("/sys/module/{module}/parameters");
        let Ok(names) = self.list(&dir) else {
            return BTreeMap::new();
        };
        names
            .into_iter()
            .filter_map(|name| {
                let value = self.read_trimmed(&format!("{dir}/{name}")).ok()?;
                Some((name, value))
            })
            .collect()
    }

    /// Command line of a process, split at NULs.
    pub fn process_cmdline(&self, pid: u32) -> Vec<String> {
        self.read(&format!("/proc/{pid}/cmdline"))
            .map(|text| {
                text.split('\0')
                    .filter(|arg| !arg.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every process with at least one `CPU N/KVM` thread, by pid.
    pub fn vm_threads(&self) -> Vec<VmThreads> {
        let Ok(entries) = std::fs::read_dir(self.path("/proc")) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        let mut vms = Vec::new();
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(self.path(&format!("/proc/{pid}/task"))) else {
                continue;
            };
            let mut vcpus = Vec::new();
            for task in tasks.filter_map(Result::ok) {
                let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse::<u32>().ok())
                else {
                    continue;
                };
                let Ok(comm) =
                    bounded::read_capped(&task.path().join("comm"), bounded::SMALL_FILE_CAP)
                else {
                    continue;
                };
                if let Some(index) = crate::model::vcpu_index_from_comm(comm.trim()) {
                    // Only vCPU threads go into a `--collect` snapshot (not
                    // every thread of the host).
                    self.note(
                        &format!("/proc/{pid}/task/{tid}/comm"),
                        FileSeen::Read(comm.clone()),
                    );
                    vcpus.push(VcpuThread { index, tid });
                }
            }
            if vcpus.is_empty() {
                continue;
            }
            vcpus.sort_unstable_by_key(|vcpu| (vcpu.index, vcpu.tid));
            let args = self.process_cmdline(pid);
            vms.push(VmThreads {
                pid,
                info: self.process_info(pid),
                cpu_model: qemu_cpu_model(&args),
                vcpus,
            });
        }
        vms
    }

    /// Whether a thread id no longer exists.
    pub fn thread_gone(&self, tid: u32) -> bool {
        !self.path(&format!("/proc/{tid}")).exists()
    }
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

/// The `-cpu` model of a QEMU command line (`host`, `kvm64`, ...), without its flags.
pub fn qemu_cpu_model(args: &[String]) -> Option<String> {
    let position = args.iter().position(|arg| arg == "-cpu")?;
    let value = args.get(position + 1)?;
    Some(value.split(',').next().unwrap_or(value).to_owned())
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
        assert_eq!(
            qemu_cpu_model(&args("/usr/bin/kvm -id 100 -cpu kvm64,+sep -m 2048")).as_deref(),
            Some("kvm64")
        );
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
}
