//! Member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The raw-tracepoint `signal_generate` program gets the target task as a
//! `struct task_struct *` and needs the byte offset of its `pid`, which
//! differs between kernel builds. The BTF is memory-mapped and only the one
//! struct is resolved (parsing all of it would cost tens of MiB). Kernels
//! that cannot map the sysfs file (Debian's 6.1 and 6.12 say ENODEV;
//! 6.18 can) get an error here, and the perf tracepoint program is used.

use std::path::{Path, PathBuf};

use btf_rs::{Backend, Btf, Type};
use thiserror::Error;

/// The running kernel's BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why an offset could not be found.
#[derive(Debug, Error)]
pub enum BtfError {
    /// The file could not be opened or parsed (a kernel without
    /// CONFIG_DEBUG_INFO_BTF has none).
    #[error("cannot read BTF from {path}: {reason}")]
    Read {
        /// File path.
        path: PathBuf,
        /// The parser's error.
        reason: String,
    },
    /// No struct of that name.
    #[error("{path}: no struct {name}")]
    NoStruct {
        /// File path.
        path: PathBuf,
        /// Struct name.
        name: String,
    },
    /// The struct has no such direct member, or it is a bitfield.
    #[error("{path}: struct {name} has no byte-aligned member {member}")]
    NoMember {
        /// File path.
        path: PathBuf,
        /// Struct name.
        name: String,
        /// Member name.
        member: String,
    },
}

/// Byte offset of the direct member `member` of `struct name` in the BTF
/// file at `path`.
///
/// # Errors
/// See [`BtfError`].
pub fn member_offset(path: &Path, name: &str, member: &str) -> Result<u32, BtfError> {
    let read_error = |reason: String| BtfError::Read {
        path: path.to_owned(),
        reason,
    };
    let btf = Btf::from_file_with_backend(path, Backend::Mmap)
        .map_err(|error| read_error(error.to_string()))?;
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| BtfError::NoStruct {
            path: path.to_owned(),
            name: name.to_owned(),
        })?;
    let mut found_struct = false;
    for candidate in types {
        let Type::Struct(object) = candidate else {
            continue;
        };
        found_struct = true;
        for field in &object.members {
            if btf
                .resolve_name(field)
                .is_ok_and(|field_name| field_name == member)
                && field.bitfield_size().is_none_or(|bits| bits == 0)
                && field.bit_offset() % 8 == 0
            {
                return Ok(field.bit_offset() / 8);
            }
        }
    }
    if found_struct {
        Err(BtfError::NoMember {
            path: path.to_owned(),
            name: name.to_owned(),
            member: member.to_owned(),
        })
    } else {
        Err(BtfError::NoStruct {
            path: path.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Byte offset of `pid` in `struct task_struct` on the running kernel.
///
/// # Errors
/// See [`BtfError`].
pub fn task_pid_offset() -> Result<u32, BtfError> {
    member_offset(Path::new(VMLINUX_BTF), "task_struct", "pid")
}
