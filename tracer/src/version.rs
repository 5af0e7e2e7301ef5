//! Version information shown by `tracer --version` and stored in recordings.

/// Crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit the binary was built from ("unknown" outside a checkout).
pub const GIT_COMMIT: &str = env!("TRACER_GIT_COMMIT");
/// What `--version` prints.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRACER_GIT_COMMIT"),
    ")\nkernel features used: kprobe/kretprobe (optional), raw tracepoint signal_generate (BTF) \
     or tracepoint signal:signal_generate, \
     kvm:kvm_exit, kvm:kvm_userspace_exit, BPF ring buffer (5.8+), LRU hash, per-CPU array"
);
