//! Typed events: what the tracer decodes from its ring buffer, and the unit
//! the model, the recorder and the exporters work on.

use serde::{Deserialize, Serialize};
use tracer_common::COMM_LEN;

use crate::symbols::ResolvedSymbol;

/// Which kernel function saw a split-lock trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapSource {
    /// `handle_guest_split_lock`: a KVM guest's #AC.
    Guest,
    /// `handle_user_split_lock`: a host task's #AC.
    User,
    /// `split_lock_warn`: the misery path (called by either).
    Warn,
}

/// What happened, per event kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    /// Entry of a split-lock handler.
    SplitLockTrap {
        /// Which handler.
        source: TrapSource,
        /// Instruction pointer of the split-locked instruction.
        ip: u64,
    },
    /// Return of `handle_guest_split_lock`/`handle_user_split_lock`.
    SplitLockReturn {
        /// Which handler (never `Warn`).
        source: TrapSource,
        /// `true` = handled in warn mode; `false` = SIGBUS follows.
        handled: bool,
        /// Time spent in the handler, 0 when the entry was not seen.
        duration_ns: u64,
    },
    /// `msleep_interruptible` returned inside a split-lock handler.
    SleepReturn {
        /// Milliseconds left: 0 = full punishment, > 0 = interrupted.
        remaining_ms: u64,
    },
    /// `down_interruptible` returned inside a split-lock handler.
    SemaphoreReturn {
        /// 0 = acquired, -4 = interrupted (-EINTR).
        retval: i32,
    },
    /// `signal:signal_generate`.
    Signal {
        /// Signal number.
        sig: i32,
        /// siginfo errno.
        errno: i32,
        /// siginfo code (-2 = SI_TIMER).
        code: i32,
        /// Thread the signal was generated for.
        target_tid: u32,
        /// Group flag, when the kernel records it.
        group: Option<i32>,
        /// TRACE_SIGNAL_* result, when the kernel records it.
        result: Option<i32>,
    },
    /// `kvm:kvm_userspace_exit`.
    UserspaceExit {
        /// `kvm_run.exit_reason`.
        reason: u32,
        /// KVM_RUN return value (-4 = -EINTR).
        errno: i32,
    },
    /// `kvm:kvm_exit` (#AC or failed entry only).
    VmExit {
        /// Full exit reason.
        exit_reason: u32,
        /// 1 = VMX, 2 = SVM.
        isa: u32,
        /// Guest RIP.
        guest_rip: u64,
        /// Exit qualification.
        info1: u64,
        /// IDT-vectoring info.
        info2: u64,
        /// Interruption info.
        intr_info: u32,
        /// Exception error code.
        error_code: u32,
        /// vCPU index.
        vcpu_id: u32,
    },
}

/// A task's `comm`, kept inline as the kernel's 16 NUL-padded bytes so
/// decoding an event allocates nothing; serialised as a string.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Comm {
    bytes: [u8; COMM_LEN],
}

impl Comm {
    /// From the kernel's NUL-padded bytes.
    pub fn from_bytes(bytes: [u8; COMM_LEN]) -> Self {
        Self { bytes }
    }

    fn len(&self) -> usize {
        self.bytes.iter().position(|&b| b == 0).unwrap_or(COMM_LEN)
    }

    /// The text (borrowed unless it is not valid UTF-8).
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes[..self.len()])
    }

    /// Whether the comm is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes[0] == 0
    }
}

impl From<&str> for Comm {
    /// Truncates to the kernel's 15 characters, as the kernel does.
    fn from(text: &str) -> Self {
        let mut bytes = [0u8; COMM_LEN];
        let len = text.len().min(COMM_LEN - 1);
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Self { bytes }
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Comm {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::from(text.as_ref()))
    }
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// CPU the event was recorded on.
    pub cpu: u32,
    /// Process id of the current task.
    pub tgid: u32,
    /// Thread id of the current task.
    pub tid: u32,
    /// comm of the current task.
    pub comm: Comm,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
    /// The guest symbol of the event's guest IP (`split_lock_trap.ip` of
    /// a guest trap, `vm_exit.guest_rip`), when `--guest-symbols` resolved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<Box<ResolvedSymbol>>,
}

impl Event {
    /// The thread the event is about: the target of a signal, otherwise the
    /// current task (a signal's context is whoever the timer interrupted).
    pub fn subject_tid(&self) -> u32 {
        match self.body {
            EventBody::Signal { target_tid, .. } => target_tid,
            _ => self.tid,
        }
    }

    /// Whether the event ran in the subject thread's own context, so `tgid`
    /// and `comm` describe the subject.
    pub fn in_subject_context(&self) -> bool {
        !matches!(self.body, EventBody::Signal { .. }) || self.subject_tid() == self.tid
    }
}

/// Human names for the KVM exit reasons the tracer cares about.
pub fn kvm_exit_reason_name(reason: u32) -> &'static str {
    match reason {
        0 => "KVM_EXIT_UNKNOWN",
        1 => "KVM_EXIT_EXCEPTION",
        2 => "KVM_EXIT_IO",
        3 => "KVM_EXIT_HYPERCALL",
        4 => "KVM_EXIT_DEBUG",
        5 => "KVM_EXIT_HLT",
        6 => "KVM_EXIT_MMIO",
        7 => "KVM_EXIT_IRQ_WINDOW_OPEN",
        8 => "KVM_EXIT_SHUTDOWN",
        9 => "KVM_EXIT_FAIL_ENTRY",
        10 => "KVM_EXIT_INTR",
        17 => "KVM_EXIT_INTERNAL_ERROR",
        24 => "KVM_EXIT_SYSTEM_EVENT",
        33 => "KVM_EXIT_X86_BUS_LOCK",
        _ => "KVM_EXIT_OTHER",
    }
}

/// How a signal was sent, from its `si_code` (kernel.md §3): what kicks a
/// vCPU thread differs by VMM (QEMU: SIGUSR1 via `pthread_kill`, i.e.
/// tkill; rust-vmm VMMs: SIGRTMIN-based via tkill; the seed's demo VMM: a
/// POSIX timer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// `SI_TIMER`: a POSIX timer (`timer_create`, e.g. `SIGEV_THREAD_ID`).
    Timer,
    /// `SI_TKILL`: `tkill`/`tgkill`, which `pthread_kill` uses.
    Tkill,
    /// `SI_USER`: `kill`.
    Kill,
    /// `SI_QUEUE`: `sigqueue`.
    Queue,
    /// `SI_KERNEL` or a fault code: sent by the kernel.
    Kernel,
    /// Any other code (`SI_MESGQ`, `SI_ASYNCIO`, `SI_SIGIO`, ...).
    Other,
}

impl SignalKind {
    /// The kind of an `si_code`.
    pub fn from_code(code: i32) -> Self {
        match code {
            -2 => Self::Timer,
            -6 => Self::Tkill,
            0 => Self::Kill,
            -1 => Self::Queue,
            code if code > 0 => Self::Kernel,
            _ => Self::Other,
        }
    }

    /// Whether the event's current task is the sender (for a timer or the
    /// kernel it is whatever task the signal interrupted).
    pub fn current_task_sends(self) -> bool {
        matches!(self, Self::Tkill | Self::Kill | Self::Queue)
    }

    /// One word for tables: `timer`, `tkill`, `kill`, `sigqueue`, `kernel`, `other`.
    pub fn short_label(self) -> &'static str {
        match self {
            Self::Timer => "timer",
            Self::Tkill => "tkill",
            Self::Kill => "kill",
            Self::Queue => "sigqueue",
            Self::Kernel => "kernel",
            Self::Other => "other",
        }
    }

    /// How the evidence names it: `via tkill`, `via a POSIX timer`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timer => "a POSIX timer (SI_TIMER)",
            Self::Tkill => "tkill (SI_TKILL, pthread_kill)",
            Self::Kill => "kill (SI_USER)",
            Self::Queue => "sigqueue (SI_QUEUE)",
            Self::Kernel => "the kernel",
            Self::Other => "another source",
        }
    }
}

/// Human name of a signal's si_code.
pub fn signal_code_name(code: i32) -> &'static str {
    match code {
        0 => "SI_USER",
        0x80 => "SI_KERNEL",
        -1 => "SI_QUEUE",
        -2 => "SI_TIMER",
        -6 => "SI_TKILL",
        _ => "other",
    }
}

/// Conventional name of a signal number (x86-64).
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        7 => "SIGBUS",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        14 => "SIGALRM",
        15 => "SIGTERM",
        17 => "SIGCHLD",
        19 => "SIGSTOP",
        _ if (34..=64).contains(&sig) => return format!("SIGRTMIN+{}", sig - 34),
        _ => return format!("SIG{sig}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_truncates_like_the_kernel_and_survives_json() {
        let long = Comm::from("qemu-system-x86_64");
        assert_eq!(long, "qemu-system-x86");
        assert_eq!(long.as_str().len(), 15);
        let back: Comm = serde_json::from_str(&serde_json::to_string(&long).unwrap()).unwrap();
        assert_eq!(back, long);
        assert!(Comm::default().is_empty());
        let mut odd = [0u8; COMM_LEN];
        odd[..3].copy_from_slice(&[b'a', 0xff, b'b']);
        assert_eq!(Comm::from_bytes(odd).as_str(), "a\u{fffd}b");
    }
}
