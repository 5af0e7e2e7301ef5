//! Decoding the eBPF programs' ring-buffer records (tracer-common's ABI)
//! into the typed events of `tracer-events`, which the rest of the tracer
//! works on.

use thiserror::Error;
use tracer_common::{
    EventHeader, EventKind, KvmExitEvent, KvmUserspaceExitEvent, PunishmentReturnEvent,
    SignalGenerateEvent, SplitLockReturnEvent, SplitLockTrapEvent,
};
pub use tracer_events::event::{
    Comm, Event, EventBody, TrapSource, kvm_exit_reason_name, signal_code_name, signal_name,
};

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
        symbol: None,
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::COMM_LEN;

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
