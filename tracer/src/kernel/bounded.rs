//! Bounded reads of host files: regular files only (a FIFO, a device node
//! or a socket in a snapshot is refused without blocking), with a size cap
//! per kind of file, so `doctor --root DIR` stays within a few hundred MiB
//! and ends whatever DIR holds (a symlink to /dev/zero, a 500 MB cpuinfo, a
//! FIFO). Every /proc and /sys file the tracer reads is a regular file.

use std::{
    fs::File,
    io::{Read, Seek as _, SeekFrom},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

/// Cap of a small /proc or /sys file (cmdline, osrelease, a module
/// parameter, a task's comm): 1 MiB.
pub const SMALL_FILE_CAP: u64 = 1 << 20;
/// Cap of /proc/cpuinfo (16 MiB: about 1.5 KiB a CPU, for 8192 CPUs).
pub const CPUINFO_CAP: u64 = 16 << 20;
/// Cap of /proc/kallsyms (64 MiB: a distribution kernel with its modules
/// has 10-20 MiB); it is read line by line, keeping a handful of symbols.
pub const KALLSYMS_CAP: u64 = 64 << 20;
/// How much of a log's end is read (16 MiB).
pub const LOG_TAIL_CAP: u64 = 16 << 20;

/// The cap of an absolute host path.
pub fn cap_of(absolute: &str) -> u64 {
    match absolute {
        "/proc/cpuinfo" => CPUINFO_CAP,
        "/proc/kallsyms" => KALLSYMS_CAP,
        _ => SMALL_FILE_CAP,
    }
}

/// Opens `path` for reading if it is a regular file (after following
/// symlinks). The open is non-blocking, so a FIFO without a writer cannot
/// hang it; the check is on the opened descriptor.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "not a regular file ({})",
                tracer_events::writer::file_kind(file_type)
            ),
        ));
    }
    Ok(file)
}

/// A reader that fails once more than `cap` bytes are read from `inner`.
pub struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
}

impl<R: Read> Capped<R> {
    /// At most `cap` bytes of `inner`; more is an error.
    pub fn new(inner: R, cap: u64) -> Self {
        Self {
            inner,
            left: cap,
            cap,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    format!("larger than {} bytes", self.cap),
                )),
            };
        }
        let len = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..len])?;
        self.left -= read as u64;
        Ok(read)
    }
}

/// Reads a regular file of at most `cap` bytes as text (invalid UTF-8
/// replaced). Larger is an error: no /proc or /sys file is.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    Capped::new(open_regular(path)?, cap).read_to_end(&mut bytes)?;
    Ok(into_text(bytes))
}

/// Reads the last `cap` bytes of a regular file (a log) as text, from the
/// first complete line on when the start was skipped.
pub fn read_tail(path: &Path, cap: u64) -> std::io::Result<String> {
    let mut file = open_regular(path)?;
    let len = file.metadata()?.len();
    let skipped = len > cap;
    if skipped {
        file.seek(SeekFrom::Start(len - cap))?;
    }
    let mut bytes = Vec::new();
    // A file that grows meanwhile is still read only up to the cap.
    file.take(cap).read_to_end(&mut bytes)?;
    if skipped && let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
        bytes.drain(..=newline);
    }
    Ok(into_text(bytes))
}

/// Keeps the last `cap` bytes of a stream (a program's output), from the
/// first complete line on when the start was dropped.
pub fn read_stream_tail(mut input: impl Read, cap: u64) -> std::io::Result<String> {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut dropped = false;
    loop {
        let read = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        kept.extend_from_slice(&chunk[..read]);
        if kept.len() > cap.saturating_mul(2) {
            kept.drain(..kept.len() - cap);
            dropped = true;
        }
    }
    if kept.len() > cap {
        kept.drain(..kept.len() - cap);
        dropped = true;
    }
    if dropped && let Some(newline) = kept.iter().position(|&b| b == b'\n') {
        kept.drain(..=newline);
    }
    Ok(into_text(kept))
}

fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_oversized_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let error = read_capped(Path::new("/dev/zero"), SMALL_FILE_CAP).unwrap_err();
        assert!(error.to_string().contains("a character device"), "{error}");
        let link = dir.path().join("cpuinfo");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_capped(&link, CPUINFO_CAP).is_err());
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let error = read_capped(&fifo, SMALL_FILE_CAP).unwrap_err();
        assert!(error.to_string().contains("a FIFO"), "{error}");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        let error = read_capped(&big, 1024).unwrap_err();
        assert!(
            error.to_string().contains("larger than 1024 bytes"),
            "{error}"
        );
        assert_eq!(read_capped(&big, 2048).unwrap().len(), 2048);
    }

    #[test]
    fn tails_keep_the_last_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let text: String = (0..1000)
            .map(|i| format!("line {i}\n"))
            .collect::<Vec<_>>()
            .concat();
        std::fs::write(&log, &text).unwrap();
        let tail = read_tail(&log, 100).unwrap();
        assert!(tail.len() <= 100);
        assert!(tail.starts_with("line "), "{tail}");
        assert!(tail.ends_with("line 999\n"));
        assert_eq!(read_tail(&log, 1 << 20).unwrap(), text);
        let streamed = read_stream_tail(text.as_bytes(), 100).unwrap();
        assert_eq!(streamed, tail);
        // An endless stream of zeros keeps only the cap.
        let zeros = read_stream_tail(std::io::repeat(0).take(10 << 20), 1 << 16).unwrap();
        assert!(zeros.len() <= 1 << 16);
    }
}
