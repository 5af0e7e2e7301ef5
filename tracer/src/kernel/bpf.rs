//! The two bpf(2) commands aya does not expose: a program's
//! `recursion_misses` (BPF_OBJ_GET_INFO_BY_FD) and storing a perf event of
//! the tracer's own in a PERF_EVENT_ARRAY (BPF_MAP_UPDATE_ELEM). The
//! attribute union is aya-obj's generated one.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};

/// Runs `cmd` with `attr`.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a whole `bpf_attr`, zeroed where the command does
    // not use it, and every pointer in it is valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: a union of plain integer structs; all zeroes is valid and is
    // what the kernel requires of unused bytes.
    unsafe { std::mem::zeroed() }
}

/// `recursion_misses` of a loaded program (5.12+; older kernels leave it 0).
pub fn program_recursion_misses(program: BorrowedFd<'_>) -> std::io::Result<u64> {
    // SAFETY: bpf_prog_info is a plain C struct; zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = program.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = (&raw mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.recursion_misses)
}

/// Stores perf event `event` at index `key` of PERF_EVENT_ARRAY `map` (aya's
/// `PerfEventArray` only stores the output buffers it opens itself).
pub fn perf_event_array_set(
    map: BorrowedFd<'_>,
    key: u32,
    event: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let value = event.as_raw_fd() as u32;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = (&raw const key) as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = (&raw const value) as u64;
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr)?;
    Ok(())
}
