//! What to do about a verdict: the mitigations and hints shown beside the
//! evidence, kept apart from the state and the classifier.

/// The mitigations for a LIVELOCK row.
pub const LIVELOCK_MITIGATIONS: [&str; 3] = [
    "sysctl kernel.split_lock_mitigate=0 (no sleep, no semaphore: no signal window)",
    "boot with split_lock_detect=off (no #AC traps at all)",
    "make the VMM's vCPU kick timer slower than the punishment sleep ((msecs_to_jiffies(10)+1) jiffies: 11 ms at HZ=1000, 16 ms at HZ=250)",
];

/// The likely cause and fix of a KVM error exit, by its reason text.
pub fn kvm_error_hint(reason: &str) -> String {
    if reason.contains("INTERNAL_ERROR") {
        "KVM internal error (e.g. Suberror 3): on Jasper/Elkhart Lake update CPU microcode (tracer doctor)".into()
    } else if reason.contains("FAIL_ENTRY") {
        "VM entry failed (e.g. hardware error 0x80000021): try kvm.tdp_mmu=N, update BIOS/microcode (tracer doctor)".into()
    } else {
        "guest triple-faulted (KVM_EXIT_SHUTDOWN)".into()
    }
}
