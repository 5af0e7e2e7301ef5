//! `--redact`: stable placeholders for the hostname, VM names and command
//! lines, so a recording can go into a public bug report.
//!
//! Placeholders are assigned in a fixed order (VMs by pid), so the same
//! host state always redacts the same way and names stay consistent across
//! the metadata, the events' process identities and the summary.

use std::collections::BTreeMap;

use crate::{
    host::{ProcessInfo, VmThreads},
    record::{Metadata, Summary},
};

/// Kernel command-line parameters kept when redacting: they decide how
/// split locks and KVM behave; everything else (root=, UUIDs, paths) goes.
const KEPT_KERNEL_PARAMETERS: [&str; 9] = [
    "split_lock_detect",
    "split_lock_mitigate",
    "kvm.",
    "kvm_intel.",
    "kvm_amd.",
    "mitigations",
    "isolcpus",
    "nohz_full",
    "preempt",
];

/// Placeholder text.
pub const REDACTED: &str = "<redacted>";

/// Maps real VM names to placeholders.
#[derive(Debug, Default)]
pub struct Redactor {
    names: BTreeMap<String, String>,
}

impl Redactor {
    /// A redactor whose VM placeholders follow `vms` (sorted by pid).
    pub fn new(vms: &[VmThreads]) -> Self {
        let mut redactor = Self::default();
        let mut sorted: Vec<&VmThreads> = vms.iter().collect();
        sorted.sort_by_key(|vm| vm.pid);
        for vm in sorted {
            if let Some(name) = &vm.info.name {
                redactor.placeholder(name);
            }
        }
        redactor
    }

    fn placeholder(&mut self, name: &str) -> String {
        let next = self.names.len() + 1;
        self.names
            .entry(name.to_owned())
            .or_insert_with(|| format!("vm-{next}"))
            .clone()
    }

    /// Redacts one process identity.
    pub fn process(&mut self, info: &mut ProcessInfo) {
        if let Some(name) = info.name.take() {
            info.name = Some(self.placeholder(&name));
        }
    }

    fn vms(&mut self, vms: &mut [VmThreads]) {
        for vm in vms {
            self.process(&mut vm.info);
        }
    }

    /// Redacts the metadata in place.
    pub fn metadata(&mut self, metadata: &mut Metadata) {
        metadata.redacted = true;
        if metadata.host.hostname.is_some() {
            metadata.host.hostname = Some("host-1".into());
        }
        if let Some(cmdline) = &metadata.host.cmdline {
            metadata.host.cmdline = Some(redact_kernel_cmdline(cmdline));
        }
        if let Some(program) = metadata.tracer.command_line.first().cloned() {
            let program = program.rsplit('/').next().unwrap_or(&program).to_owned();
            metadata.tracer.command_line = vec![program, REDACTED.into()];
        }
        self.vms(&mut metadata.vms);
        // A guest-symbol file is named for a VM and lives at a path that
        // can name it too: the VM key goes through the same placeholders,
        // the path keeps only its file name.
        for file in &mut metadata.guest_symbols {
            if let Some(vm) = file.vm.take() {
                file.vm = Some(self.placeholder(&vm));
            }
            let name = file.path.rsplit('/').next().unwrap_or_default();
            file.path = format!("{REDACTED}/{name}");
        }
    }

    /// Redacts the VMs of a summary in place (its rows were built from
    /// process identities that went through [`Redactor::process`]).
    pub fn summary(&mut self, summary: &mut Summary) {
        self.vms(&mut summary.vms);
    }
}

/// Keeps only the split-lock/KVM-relevant parameters of a kernel command line.
pub fn redact_kernel_cmdline(cmdline: &str) -> String {
    let mut dropped = 0usize;
    let mut kept: Vec<&str> = Vec::new();
    for parameter in cmdline.split_whitespace() {
        if KEPT_KERNEL_PARAMETERS
            .iter()
            .any(|prefix| parameter.starts_with(prefix))
        {
            kept.push(parameter);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        kept.push(REDACTED);
    }
    kept.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_cmdline_keeps_only_relevant_parameters() {
        assert_eq!(
            redact_kernel_cmdline(
                "BOOT_IMAGE=/vmlinuz-6.8.12-4-pve root=/dev/mapper/pve-root ro quiet split_lock_detect=warn kvm.tdp_mmu=0"
            ),
            "split_lock_detect=warn kvm.tdp_mmu=0 <redacted>"
        );
        assert_eq!(redact_kernel_cmdline("mitigations=off"), "mitigations=off");
    }

    #[test]
    fn vm_names_get_stable_placeholders_by_pid() {
        let vm = |pid, name: &str| VmThreads {
            pid,
            info: ProcessInfo {
                name: Some(name.into()),
                vmid: Some(pid.to_string()),
                comm: None,
            },
            cpu_model: None,
            vcpus: Vec::new(),
        };
        let vms = [vm(300, "mail"), vm(100, "haos")];
        let mut redactor = Redactor::new(&vms);
        let mut haos = vms[1].info.clone();
        redactor.process(&mut haos);
        assert_eq!(haos.label().as_deref(), Some("100 (vm-1)"));
        let mut mail = vms[0].info.clone();
        redactor.process(&mut mail);
        assert_eq!(mail.name.as_deref(), Some("vm-2"));
        let mut late = ProcessInfo {
            name: Some("late-vm".into()),
            ..ProcessInfo::default()
        };
        redactor.process(&mut late);
        assert_eq!(late.name.as_deref(), Some("vm-3"));
        // A guest-symbol file keyed by the VM's name gets the same
        // placeholder, and its path keeps only the file name.
        let mut metadata = crate::format_tests::sample_metadata();
        metadata.guest_symbols = vec![crate::SymbolFileInfo {
            vm: Some("mail".into()),
            path: "/srv/mail-vm/guest-kallsyms.txt".into(),
            sha256: String::new(),
            kaslr_offset: 0,
            symbols: 1,
        }];
        redactor.metadata(&mut metadata);
        assert_eq!(metadata.guest_symbols[0].vm.as_deref(), Some("vm-2"));
        assert_eq!(
            metadata.guest_symbols[0].path,
            format!("{REDACTED}/guest-kallsyms.txt")
        );
    }
}
