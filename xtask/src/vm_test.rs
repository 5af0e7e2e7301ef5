//! `cargo xtask vm-test`: boots Debian's 6.1 and 6.12 kernels under QEMU
//! (TCG) with an initramfs holding the static tracer and `vm-init`, and
//! reports per kernel and probe whether it attached, the tracing mode, and
//! a real recording made in the guest. Kernel packages are cached under
//! `target/vm-test/cache`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{dist, run_command, setup};

/// Kernel series booted, as Debian package name prefixes.
const SERIES: [(&str, &str); 2] = [("6.1", "linux-image-6.1.0-"), ("6.12", "linux-image-6.12.")];

fn newest_package(prefix: &str) -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .arg("pkgnames")
        .arg(prefix)
        .output()
        .context("apt-cache pkgnames")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|name| {
            name.ends_with("-amd64")
                && !name.contains("-rt-")
                && !name.contains("-cloud-")
                && !name.contains("-dbg")
                && !name.ends_with("-unsigned")
        })
        .map(str::to_owned)
        .collect();
    // Sort by the numbers in the name (6.1.0-50 after 6.1.0-9).
    names.sort_by_key(|name| {
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|part| part.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    names
        .pop()
        .with_context(|| format!("no {prefix}*-amd64 package known to apt (apt-get update?)"))
}

fn cached_deb(cache: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let find = || {
        std::fs::read_dir(cache).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| {
                    path.file_name().is_some_and(|name| {
                        name.to_string_lossy().starts_with(&format!("{package}_"))
                    })
                })
        })
    };
    if let Some(path) = find() {
        eprintln!("xtask: {package}: cached");
        return Ok(path);
    }
    run_command(
        Command::new("apt-get")
            .current_dir(cache)
            .args(["download", package]),
    )
    .or_else(|_| {
        run_command(Command::new("apt-get").arg("update"))?;
        run_command(
            Command::new("apt-get")
                .current_dir(cache)
                .args(["download", package]),
        )
    })
    .with_context(|| format!("downloading {package}"))?;
    find().with_context(|| format!("{package} downloaded but not found in {}", cache.display()))
}

fn find_file(dir: &Path, matches: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, matches) {
                return Some(found);
            }
        } else if path
            .file_name()
            .is_some_and(|name| matches(&name.to_string_lossy()))
        {
            return Some(path);
        }
    }
    None
}

fn module_file(root: &Path, name: &str) -> Option<PathBuf> {
    find_file(&root.join("lib/modules"), &|file| {
        file == format!("{name}.ko") || file.starts_with(&format!("{name}.ko."))
    })
    .or_else(|| {
        find_file(&root.join("usr/lib/modules"), &|file| {
            file == format!("{name}.ko") || file.starts_with(&format!("{name}.ko."))
        })
    })
}

fn write_initramfs(out: &Path, files: &[(String, Vec<u8>, u32)]) -> anyhow::Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let mut inode = 1;
    for dir in ["proc", "sys", "dev", "tmp", "modules"] {
        let builder = cpio::newc::Builder::new(dir)
            .ino(inode)
            .mode(0o040_755)
            .nlink(2);
        inode += 1;
        let entry = builder.write(&mut writer, 0);
        entry.finish().context("cpio directory entry")?;
    }
    for (name, data, mode) in files {
        let builder = cpio::newc::Builder::new(name)
            .ino(inode)
            .mode(0o100_000 | mode)
            .nlink(1);
        inode += 1;
        let mut entry = builder.write(
            &mut writer,
            u32::try_from(data.len()).context("file too large for cpio")?,
        );
        std::io::Write::write_all(&mut entry, data)?;
        entry.finish().context("cpio file entry")?;
    }
    let writer = cpio::newc::trailer(writer).context("cpio trailer")?;
    std::io::Write::flush(&mut { writer })?;
    Ok(())
}

struct KernelResult {
    series: String,
    package: String,
    result: Option<Value>,
    console_tail: String,
}

fn boot(
    series: &str,
    package: &str,
    deb: &Path,
    work: &Path,
    tracer: &Path,
    init: &Path,
) -> anyhow::Result<KernelResult> {
    let root = work.join(package);
    if !root.join("boot").is_dir() {
        std::fs::create_dir_all(&root)?;
        run_command(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    let vmlinuz = find_file(&root.join("boot"), &|name| name.starts_with("vmlinuz-"))
        .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
    let mut files = vec![
        ("init".to_owned(), std::fs::read(init)?, 0o755),
        ("tracer".to_owned(), std::fs::read(tracer)?, 0o755),
    ];
    let mut order = String::new();
    for module in ["irqbypass", "kvm", "kvm-intel"] {
        if let Some(path) = module_file(&root, module) {
            let name = path
                .file_name()
                .context("module name")?
                .to_string_lossy()
                .into_owned();
            files.push((format!("modules/{name}"), std::fs::read(&path)?, 0o644));
            let _ = writeln!(order, "{name}");
        }
    }
    files.push(("modules/order".into(), order.into_bytes(), 0o644));
    let initramfs = work.join(format!("{package}.cpio"));
    write_initramfs(&initramfs, &files)?;
    eprintln!("xtask: booting {package} under QEMU (TCG)");
    let output = Command::new("timeout")
        .arg("600")
        .arg("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "1536",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=4"])
        .stdin(Stdio::null())
        .output()
        .context("starting qemu-system-x86_64")?;
    let console = String::from_utf8_lossy(&output.stdout).into_owned();
    let result = console
        .lines()
        .find_map(|line| {
            line.split_once("VMTEST-RESULT ")
                .map(|(_, json)| json.trim().to_owned())
        })
        .and_then(|json| serde_json::from_str(&json).ok());
    let tail: Vec<&str> = console.lines().rev().take(25).collect();
    Ok(KernelResult {
        series: series.to_owned(),
        package: package.to_owned(),
        result,
        console_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

fn ensure_qemu() -> anyhow::Result<()> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok()
    {
        return Ok(());
    }
    run_command(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "qemu-system-x86",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing qemu-system-x86 (manual fix: `apt-get install qemu-system-x86`)")
}

/// Boots every kernel series and prints the matrix; fails when a probe that
/// the kernel offers did not attach or the guest's recording is wrong. With
/// `skip_missing`, a machine that cannot get QEMU or the kernel packages
/// prints `SKIP vm-test: <reason>` instead of failing.
pub fn run(skip_missing: bool) -> anyhow::Result<()> {
    let skip = |error: anyhow::Error| {
        if skip_missing {
            println!("SKIP vm-test: {error:#}");
            Ok(())
        } else {
            Err(error)
        }
    };
    if let Err(error) = ensure_qemu() {
        return skip(error);
    }
    let outputs = dist::run()?;
    let root = setup::workspace_root()?;
    let init = dist::build_static("xtask", Some("vm-init"))?;
    let work = root.join("target/vm-test");
    let cache = work.join("cache");
    std::fs::create_dir_all(&cache)?;
    let mut kernels = Vec::new();
    for (series, prefix) in SERIES {
        let fetched = newest_package(prefix).and_then(|package| {
            let deb = cached_deb(&cache, &package)?;
            Ok((series, package, deb))
        });
        match fetched {
            Ok(kernel) => kernels.push(kernel),
            Err(error) => {
                return skip(error.context(format!("getting the Debian {series} kernel")));
            }
        }
    }
    // The guests boot side by side: TCG is slow, and each guest mostly
    // keeps one host core busy.
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|(series, package, deb)| {
                let (work, tracer, init) = (&work, &outputs.binary, &init);
                scope.spawn(move || boot(series, package, deb, work, tracer, init))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("boot thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut table =
        String::from("| kernel | probe | kind | attached | detail |\n|---|---|---|---|---|\n");
    let mut summary = String::from(
        "| kernel | split_lock_mitigate | kprobes | mode | recording in the guest |\n|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for kernel in &results {
        let Some(result) = &kernel.result else {
            failures.push(format!(
                "{}: no VMTEST-RESULT line; console tail:\n{}",
                kernel.package, kernel.console_tail
            ));
            continue;
        };
        let release = result["kernel"].as_str().unwrap_or("?");
        let entries = result["probes"]["stdout"]["probes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if entries.is_empty() {
            failures.push(format!(
                "{release}: tracer probes printed no entries: {}",
                result["probes"]
            ));
        }
        for entry in &entries {
            let status = entry["status"].as_str().unwrap_or("?");
            let detail = entry["attached_to"]
                .as_str()
                .or(entry["reason"].as_str())
                .unwrap_or("")
                .replace('|', "/");
            let _ = writeln!(
                table,
                "| {release} | {} | {} | {} | {detail} |",
                entry["target"].as_str().unwrap_or("?"),
                entry["kind"].as_str().unwrap_or("?"),
                if status == "attached" { "yes" } else { "no" }
            );
            // A probe whose symbol exists must attach on a kprobe kernel.
            if status == "failed" {
                failures.push(format!("{release}: {} failed: {detail}", entry["target"]));
            }
        }
        let record = &result["record"];
        let sent = record["signals_sent"].as_u64().unwrap_or(0);
        let seen = record["si_timer_events_for_init"].as_u64().unwrap_or(0);
        let mode = record["report_mode"].as_str().unwrap_or("none").to_owned();
        if sent == 0 || seen != sent {
            failures.push(format!("{release}: the guest took {sent} SI_TIMER signals, the recording has {seen}: {record}"));
        }
        if record["sleep_return_events"].as_u64() != Some(0) {
            failures.push(format!("{release}: msleep_interruptible returns outside a split-lock window were reported: {record}"));
        }
        let _ = writeln!(
            summary,
            "| {release} ({}) | {} | {} | {mode} | {seen} of {sent} SI_TIMER signals recorded, 0 sleep returns outside a split-lock handler |",
            kernel.series,
            result["split_lock_mitigate"]
                .as_str()
                .map_or("absent".to_owned(), |v| format!("present ({v})")),
            if result["kprobe_pmu"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
        );
    }
    let report = format!("{summary}\n{table}");
    println!("{report}");
    std::fs::write(work.join("matrix.md"), &report)?;
    if !failures.is_empty() {
        bail!("vm-test failed:\n{}", failures.join("\n"));
    }
    println!(
        "vm-test: {} kernels booted, matrix in {}",
        results.len(),
        work.join("matrix.md").display()
    );
    Ok(())
}
