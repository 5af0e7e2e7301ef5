//! Feeds arbitrary host snapshots to `tracer doctor --root`: any set of
//! files (cpuinfo, cmdline, kallsyms, tracefs formats, BTF, logs, /proc of
//! VMs, ...) with any content must give a report, never a panic, a hang or
//! unbounded memory (libFuzzer's RSS limit and timeout catch the last two).
//!
//! Input: entries of `[u16 LE path length][path][u32 LE content length]
//! [content]`, a path relative to the snapshot root; lengths past the end
//! are cut to what is there. `cargo xtask fuzz` builds the seeds in this
//! framing from the host snapshots under tracer/tests/fixtures/hosts/.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tracer::{
    doctor::{self, Logs},
    kernel::host::HostRoot,
};

/// Most entries of one input (a snapshot holds a few dozen files).
const MAX_ENTRIES: usize = 256;

/// A relative path without `.`/`..` components, or `None`.
fn safe_relative(raw: &[u8]) -> Option<PathBuf> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut path = PathBuf::new();
    for component in text.split('/').filter(|part| !part.is_empty()) {
        if component == "." || component == ".." || component.len() > 64 {
            return None;
        }
        path.push(component);
    }
    (path.components().count() > 0 && path.components().count() <= 10).then_some(path)
}

/// Splits `data` into (path, content) entries.
fn entries(mut data: &[u8]) -> Vec<(PathBuf, &[u8])> {
    let mut out = Vec::new();
    let take = |data: &mut &[u8], len: usize| -> Vec<u8> {
        let len = len.min(data.len());
        let (head, tail) = data.split_at(len);
        *data = tail;
        head.to_vec()
    };
    while data.len() >= 2 && out.len() < MAX_ENTRIES {
        let path_len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        data = &data[2..];
        let path = take(&mut data, path_len);
        let Some(header) = data.get(..4) else {
            break;
        };
        let content_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        data = &data[4..];
        let content_len = content_len.min(data.len());
        let (content, rest) = data.split_at(content_len);
        data = rest;
        if let Some(path) = safe_relative(&path) {
            out.push((path, content));
        }
    }
    out
}

/// Writes the snapshot under a fresh root for this process.
fn write_root(root: &Path, files: &[(PathBuf, &[u8])]) {
    let _ = std::fs::remove_dir_all(root);
    let _ = std::fs::create_dir_all(root);
    for (path, content) in files {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            // A path that needs a file as a directory fails: skipped.
            if std::fs::create_dir_all(parent).is_err() {
                continue;
            }
        }
        let _ = std::fs::write(&target, content);
    }
}

fuzz_target!(|data: &[u8]| {
    let root = std::env::temp_dir().join(format!("doctor-fuzz-{}", std::process::id()));
    write_root(&root, &entries(data));
    let host = HostRoot::new(&root);
    let logs = Logs::read(&host);
    let report = doctor::run(&host, &logs);
    let _ = tracer::commands::doctor::render(&report, 120);
    let _ = serde_json::to_string(&report);
    let _ = report.exit_code();
});
