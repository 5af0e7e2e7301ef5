//! `tracer doctor --collect DIR`: copy exactly the files doctor read into a
//! directory that `tracer doctor --root DIR` checks the same way, for a bug
//! report. `--redact` removes what identifies the host.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::{DoctorReport, Logs};
use tracer_events::redact::{REDACTED, redact_kernel_cmdline};

use crate::kernel::{
    bounded,
    host::{FileSeen, HostRoot},
};

/// Symbols whose kallsyms lines are kept (doctor looks for nothing else).
const KEPT_SYMBOLS: [&str; 5] = [
    "handle_guest_split_lock",
    "handle_user_split_lock",
    "split_lock_warn",
    "msleep_interruptible",
    "down_interruptible",
];

/// QEMU options kept in a redacted command line (with their value).
const KEPT_QEMU_OPTIONS: [&str; 5] = ["-id", "-name", "-cpu", "-smp", "-machine"];

/// What `--collect` wrote.
#[derive(Debug, Serialize)]
pub struct Manifest {
    /// Tracer that collected.
    pub tracer_version: String,
    /// Whether identifying data was removed.
    pub redacted: bool,
    /// Host paths copied, relative to the directory.
    pub files: Vec<String>,
    /// The report doctor gave on the live host while collecting.
    pub report: DoctorReport,
}

fn kallsyms_excerpt(text: &str) -> String {
    use std::fmt::Write as _;
    text.lines()
        .filter(|line| {
            line.split_whitespace().nth(2).is_some_and(|name| {
                KEPT_SYMBOLS
                    .iter()
                    .any(|kept| name == *kept || name.starts_with(&format!("{kept}.")))
            })
        })
        .fold(String::new(), |mut out, line| {
            // Zero the address: it reveals the KASLR base; doctor needs names.
            let mut fields = line.splitn(2, ' ');
            let address = fields.next().unwrap_or_default();
            let _ = writeln!(
                out,
                "{} {}",
                "0".repeat(address.len()),
                fields.next().unwrap_or_default()
            );
            out
        })
}

fn redact_qemu_cmdline(raw: &str, vm_names: &mut Vec<String>) -> String {
    let args: Vec<&str> = raw.split('\0').filter(|arg| !arg.is_empty()).collect();
    let mut out: Vec<String> = Vec::new();
    if let Some(program) = args.first() {
        out.push(program.rsplit('/').next().unwrap_or(program).to_owned());
    }
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        if *arg == "-enable-kvm" {
            out.push((*arg).to_owned());
        } else if KEPT_QEMU_OPTIONS.contains(arg) {
            let Some(value) = iter.next() else { break };
            out.push((*arg).to_owned());
            if *arg == "-name" {
                vm_names.push((*value).to_owned());
                out.push(format!("vm-{}", vm_names.len()));
            } else {
                out.push((*value).to_owned());
            }
        }
    }
    out.push(REDACTED.into());
    out.join("\0") + "\0"
}

/// Copies what doctor read on the live host into `dir`.
pub fn collect(
    dir: &Path,
    redact: bool,
    report: DoctorReport,
    host: &HostRoot,
    logs: &Logs,
) -> anyhow::Result<Manifest> {
    // Never through a symlink: the snapshot would land wherever it points
    // (and what exists there is not ours to fill).
    if std::fs::symlink_metadata(dir).is_ok_and(|meta| meta.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link; give a new directory (symlinks are not followed)",
            dir.display()
        );
    }
    if dir.exists() && std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_some()) {
        bail!(
            "{} exists and is not empty; give a new directory",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut vm_names = Vec::new();
    for (absolute, seen) in host.files_read() {
        let source = Path::new(&absolute);
        let target = dir.join(absolute.trim_start_matches('/'));
        let text = match seen {
            // Only its existence was checked: an empty file says the same
            // (a directory stays a directory).
            FileSeen::Exists => {
                if source.is_dir() {
                    std::fs::create_dir_all(&target)
                        .with_context(|| format!("creating {}", target.display()))?;
                } else if source.exists() {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&target, "")
                        .with_context(|| format!("writing {}", target.display()))?;
                    files.push(absolute);
                }
                continue;
            }
            // What doctor read, not what the file holds now.
            FileSeen::Read(text) => text,
            FileSeen::Streamed => {
                let Ok(text) = bounded::read_capped(source, bounded::cap_of(&absolute)) else {
                    continue;
                };
                text
            }
            // The read failed for doctor too (N/A): nothing to copy.
            FileSeen::Unreadable => continue,
        };
        let content = if absolute == "/proc/kallsyms" {
            kallsyms_excerpt(&text)
        } else if redact && absolute == "/proc/cmdline" {
            redact_kernel_cmdline(text.trim()) + "\n"
        } else if redact && absolute.starts_with("/proc/") && absolute.ends_with("/cmdline") {
            redact_qemu_cmdline(&text, &mut vm_names)
        } else {
            text
        };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, content)
            .with_context(|| format!("writing {}", target.display()))?;
        files.push(absolute);
    }
    for (file, lines) in &logs.captured {
        let target = dir.join(file.trim_start_matches('/'));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        if redact {
            for (index, name) in vm_names.iter().enumerate() {
                text = text.replace(name.as_str(), &format!("vm-{}", index + 1));
            }
        }
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
        files.push((*file).to_owned());
    }
    let manifest = Manifest {
        tracer_version: crate::version::LONG_VERSION.replace('\n', " "),
        redacted: redact,
        files,
        report,
    };
    let manifest_path = dir.join("doctor/manifest.json");
    std::fs::create_dir_all(dir.join("doctor"))?;
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snapshot holds what doctor read, not what the host holds when
    /// the copy is made: a file that changed or went away in between (a
    /// VM's `/proc/PID/cmdline` when it exits) is copied as doctor saw it.
    #[test]
    fn the_snapshot_holds_what_doctor_read_even_if_the_host_changed_since() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("proc/sys/kernel")).unwrap();
        let cmdline = "BOOT_IMAGE=/vmlinuz split_lock_detect=warn\n";
        std::fs::write(root.path().join("proc/cmdline"), cmdline).unwrap();
        std::fs::write(
            root.path().join("proc/sys/kernel/split_lock_mitigate"),
            "1\n",
        )
        .unwrap();
        let host = HostRoot::tracking(root.path());
        let logs = Logs::read(&host);
        let report = crate::doctor::run(&host, &logs);
        std::fs::remove_file(root.path().join("proc/cmdline")).unwrap();
        std::fs::write(
            root.path().join("proc/sys/kernel/split_lock_mitigate"),
            "0\n",
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("snapshot");
        let manifest = collect(&dir, false, report, &host, &logs).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("proc/cmdline")).unwrap(),
            cmdline
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("proc/sys/kernel/split_lock_mitigate")).unwrap(),
            "1\n"
        );
        assert!(manifest.files.iter().any(|file| file == "/proc/cmdline"));
    }

    #[test]
    fn kallsyms_excerpt_keeps_names_and_hides_addresses() {
        let text = "ffffffff81001000 T _stext\nffffffff81044a10 t split_lock_warn.constprop.0\nffffffff81044b00 T handle_guest_split_lock\n";
        assert_eq!(
            kallsyms_excerpt(text),
            "0000000000000000 t split_lock_warn.constprop.0\n0000000000000000 T handle_guest_split_lock\n"
        );
    }

    #[test]
    fn qemu_command_lines_keep_only_what_doctor_reads() {
        let mut names = Vec::new();
        let raw = [
            "/usr/bin/kvm",
            "-id",
            "100",
            "-name",
            "secret-mail,debug-threads=on",
            "-drive",
            "file=/dev/pve/vm-100-disk-0",
            "-cpu",
            "host,+kvm_pv_eoi",
            "",
        ]
        .join("\0");
        let redacted = redact_qemu_cmdline(&raw, &mut names);
        assert_eq!(
            redacted,
            [
                "kvm",
                "-id",
                "100",
                "-name",
                "vm-1",
                "-cpu",
                "host,+kvm_pv_eoi",
                "<redacted>",
                ""
            ]
            .join("\0")
        );
        assert_eq!(names, vec!["secret-mail,debug-threads=on"]);
    }
}
