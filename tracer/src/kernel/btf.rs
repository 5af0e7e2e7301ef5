//! Member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The raw-tracepoint `signal_generate` program gets the target task as a
//! `struct task_struct *` and needs the byte offset of its `pid`, which
//! differs between kernel builds. Only the one struct is resolved (parsing
//! all of it would cost tens of MiB).
//!
//! The sysfs file is *read*, never memory-mapped: mapping
//! `/sys/kernel/btf/vmlinux` works only on 6.16 and later kernels; Debian's
//! 6.1 and 6.12 (and the Proxmox 6.8/6.14 kernels) fail the `mmap` with
//! ENODEV while `read` works everywhere. The bytes go into an anonymous
//! memory file (memfd), which btf-rs maps so that it still parses lazily.

use std::{
    io::Write as _,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

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
    let btf = open_btf(path).map_err(read_error)?;
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

/// Reads the BTF file at `path` (a plain `read`, which every kernel's sysfs
/// file supports) into a memfd and lets btf-rs map the memfd.
fn open_btf(path: &Path) -> Result<Btf, String> {
    let bytes = std::fs::read(path).map_err(|error| error.to_string())?;
    // SAFETY: a NUL-terminated name and no flags; the fd is checked below.
    let fd = unsafe { libc::memfd_create(c"tracer-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        // No memfd (very old kernel or seccomp): parse from the bytes.
        return Btf::from_bytes(&bytes).map_err(|error| error.to_string());
    }
    // SAFETY: `fd` is a fresh descriptor this function owns.
    let mut memfd = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    memfd
        .write_all(&bytes)
        .map_err(|error| format!("copying into a memfd: {error}"))?;
    drop(bytes);
    Btf::from_file_with_backend(format!("/proc/self/fd/{fd}"), Backend::Mmap)
        .map_err(|error| error.to_string())
}

/// Byte offset of `pid` in `struct task_struct` on the running kernel.
///
/// # Errors
/// See [`BtfError`].
pub fn task_pid_offset() -> Result<u32, BtfError> {
    member_offset(Path::new(VMLINUX_BTF), "task_struct", "pid")
}
