//! What a recording says about the host: kernel, CPU, sysctls, KVM module
//! parameters, and the VMs with their vCPU threads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cpuinfo::CpuInfo;

/// The host facts a recording's metadata (and `doctor`) start from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `/proc/sys/kernel/hostname`.
    pub hostname: Option<String>,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_release: Option<String>,
    /// `/proc/sys/kernel/version` (build number and date).
    pub kernel_version: Option<String>,
    /// `/proc/cmdline`.
    pub cmdline: Option<String>,
    /// `kernel.split_lock_mitigate`, absent before 6.2 (and its 6.1 backport).
    pub split_lock_mitigate: Option<u32>,
    /// First processor of `/proc/cpuinfo`.
    pub cpu: Option<CpuInfo>,
    /// Why `cpu` is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_error: Option<String>,
    /// `/sys/module/{kvm,kvm_intel,kvm_amd}/parameters/*`, module -> name -> value.
    pub kvm_parameters: BTreeMap<String, BTreeMap<String, String>>,
}

/// One VMM process and its vCPU threads (`CPU N/KVM`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmThreads {
    /// Process id.
    pub pid: u32,
    /// Identity from the command line.
    pub info: ProcessInfo,
    /// QEMU `-cpu` model, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    /// vCPU threads, by index.
    pub vcpus: Vec<VcpuThread>,
}

/// One vCPU thread of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuThread {
    /// vCPU index (`N` of `CPU N/KVM`).
    pub index: u32,
    /// Thread id.
    pub tid: u32,
}

/// Process-level identity supplied from outside the model (e.g. /proc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// VM name (`-name`), if any.
    pub name: Option<String>,
    /// Proxmox VMID (`-id`), if any.
    pub vmid: Option<String>,
    /// Executable name.
    pub comm: Option<String>,
}

impl ProcessInfo {
    /// `VM 100 (guest-name)`, `name`, or the comm.
    pub fn label(&self) -> Option<String> {
        match (&self.vmid, &self.name) {
            (Some(vmid), Some(name)) => Some(format!("{vmid} ({name})")),
            (Some(vmid), None) => Some(vmid.clone()),
            (None, Some(name)) => Some(name.clone()),
            (None, None) => self.comm.clone(),
        }
    }
}
