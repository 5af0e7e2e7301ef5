//! Typed events: decoded from ring-buffer records, and the unit the model,
//! the recorder and the exporters work on.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracer_common::{
    COMM_LEN, EventHeader, EventKind, KvmExitEvent, KvmUserspaceExitEvent, PunishmentReturnEvent,
    SignalGenerateEvent, SplitLockReturnEvent, SplitLockTrapEvent,
};

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

/// Why a ring-buffer record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header.
    #[error("record of {0} bytes is shorter than the {1}-byte header")]
    Truncated(usize, usize),
    /// Unknown kind value.
    #[error("unknown event kind {0}")]
    UnknownKind(u16),
    /// Size does not match the kind.
    #[error("{kind} record has {found} bytes, expected {expected}")]
    WrongSize {
        /// Kind name.
        kind: &'static str,
        /// Actual size.
        found: usize,
        /// Expected size.
        expected: usize,
    },
}

fn read_record<T: Copy>(bytes: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if bytes.len() != expected {
        return Err(DecodeError::WrongSize {
            kind: kind.name(),
            found: bytes.len(),
            expected,
        });
    }
    // SAFETY: length checked above; every type read here is a #[repr(C)] POD
    // from tracer-common, valid for any bit pattern.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

fn optional(value: i32) -> Option<i32> {
    (value != -1).then_some(value)
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header_len = size_of::<EventHeader>();
    if bytes.len() < header_len {
        return Err(DecodeError::Truncated(bytes.len(), header_len));
    }
    // SAFETY: length checked; POD.
    let header: EventHeader = unsafe { bytes.as_ptr().cast::<EventHeader>().read_unaligned() };
    let kind = EventKind::from_raw(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let body = match kind {
        EventKind::GuestSplitLockEntry
        | EventKind::UserSplitLockEntry
        | EventKind::SplitLockWarn => {
            let record: SplitLockTrapEvent = read_record(bytes, kind)?;
            let source = match kind {
                EventKind::GuestSplitLockEntry => TrapSource::Guest,
                EventKind::UserSplitLockEntry => TrapSource::User,
                _ => TrapSource::Warn,
            };
            EventBody::SplitLockTrap {
                source,
                ip: record.ip,
            }
        }
        EventKind::GuestSplitLockReturn | EventKind::UserSplitLockReturn => {
            let record: SplitLockReturnEvent = read_record(bytes, kind)?;
            EventBody::SplitLockReturn {
                source: if kind == EventKind::GuestSplitLockReturn {
                    TrapSource::Guest
                } else {
                    TrapSource::User
                },
                handled: record.handled != 0,
                duration_ns: record.duration_ns,
            }
        }
        EventKind::MsleepInterruptibleReturn => {
            let record: PunishmentReturnEvent = read_record(bytes, kind)?;
            EventBody::SleepReturn {
                remaining_ms: record.retval as u64,
            }
        }
        EventKind::DownInterruptibleReturn => {
            let record: PunishmentReturnEvent = read_record(bytes, kind)?;
            EventBody::SemaphoreReturn {
                retval: record.retval as i32,
            }
        }
        EventKind::SignalGenerate => {
            let record: SignalGenerateEvent = read_record(bytes, kind)?;
            EventBody::Signal {
                sig: record.sig,
                errno: record.errno,
                code: record.code,
                target_tid: record.target_tid as u32,
                group: optional(record.group),
                result: optional(record.result),
            }
        }
        EventKind::KvmUserspaceExit => {
            let record: KvmUserspaceExitEvent = read_record(bytes, kind)?;
            EventBody::UserspaceExit {
                reason: record.reason,
                errno: record.errno,
            }
        }
        EventKind::KvmExit => {
            let record: KvmExitEvent = read_record(bytes, kind)?;
            EventBody::VmExit {
                exit_reason: record.exit_reason,
                isa: record.isa,
                guest_rip: record.guest_rip,
                info1: record.info1,
                info2: record.info2,
                intr_info: record.intr_info,
                error_code: record.error_code,
                vcpu_id: record.vcpu_id,
            }
        }
    };
    Ok(Event {
        ts_ns: header.timestamp_ns,
        cpu: header.cpu,
        tgid: header.tgid,
        tid: header.tid,
        comm: Comm::from_bytes(header.comm),
        body,
    })
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

    fn header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..9].copy_from_slice(b"CPU 0/KVM");
        EventHeader {
            timestamp_ns: 42,
            kind: kind as u16,
            reserved: 0,
            cpu: 1,
            tgid: 100,
            tid: 101,
            comm,
        }
    }

    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a POD value.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_signal_with_missing_optional_fields() {
        let record = SignalGenerateEvent {
            header: header(EventKind::SignalGenerate),
            sig: 10,
            errno: 0,
            code: -2,
            target_tid: 101,
            group: -1,
            result: 0,
        };
        let event = decode(&bytes_of(&record)).unwrap();
        assert_eq!(event.comm, "CPU 0/KVM");
        assert_eq!(
            event.body,
            EventBody::Signal {
                sig: 10,
                errno: 0,
                code: -2,
                target_tid: 101,
                group: None,
                result: Some(0)
            }
        );
    }

    #[test]
    fn rejects_short_unknown_and_mismatched_records() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Truncated(8, 40)));
        let mut unknown = bytes_of(&header(EventKind::KvmExit));
        unknown[8] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
        let short_exit = bytes_of(&header(EventKind::KvmExit));
        assert!(matches!(
            decode(&short_exit),
            Err(DecodeError::WrongSize {
                kind: "kvm_exit",
                found: 40,
                expected: 88
            })
        ));
    }

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

    #[test]
    fn json_round_trip_keeps_every_field() {
        let record = KvmExitEvent {
            header: header(EventKind::KvmExit),
            exit_reason: 0,
            isa: 1,
            guest_rip: 0xffff_ffff_8102_38b0,
            info1: 0,
            info2: 0,
            intr_info: 0x8000_0b11,
            error_code: 0,
            vcpu_id: 3,
            reserved: 0,
        };
        let event = decode(&bytes_of(&record)).unwrap();
        let line = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, event);
        assert!(line.contains("\"event\":\"vm_exit\""), "{line}");
    }
}
