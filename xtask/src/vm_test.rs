//! `cargo xtask vm-test`: boots Debian's 6.1 and 6.12 kernels under QEMU
//! (TCG) with an initramfs holding the static tracer and `vm-init`, and
//! reports per kernel and probe whether it attached, the tracing mode, and
//! a real recording made in the guest. Kernel packages are cached under
//! `target/vm-test/cache`.
//!
//! With the matching `linux-headers` it also builds the test fixture module
//! `xtask/vm-test-module` (cached per kernel version and source hash) and
//! runs the handler scenarios: the kernel's own split-lock handlers, called
//! at a known IP by the fixture, traced by the real `tracer record` and
//! checked against the guest kernel's tracefs kprobe events and the
//! driver's own counts (`vm_scenarios.rs`; docs/vm-test.md).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use sha2::Digest as _;

use crate::{dist, run_command, setup, vm_scenarios};

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

/// The fixture module's sources, relative to the workspace root.
const MODULE_SOURCES: [&str; 3] = [
    "xtask/vm-test-module/splitlock_trap.c",
    "xtask/vm-test-module/Kbuild",
    "xtask/vm-test-module/Makefile",
];

/// Packages `linux-headers-<version>` depends on that the build needs
/// (`-common`, `linux-kbuild-*`), by apt's own dependency list.
fn header_packages(version: &str) -> anyhow::Result<Vec<String>> {
    let headers = format!("linux-headers-{version}");
    let out = Command::new("apt-cache")
        .args(["depends", &headers])
        .output()
        .context("apt-cache depends")?;
    let mut packages = vec![headers.clone()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends: ")
        else {
            continue;
        };
        if name.starts_with("linux-headers-") || name.starts_with("linux-kbuild-") {
            packages.push(name.trim().to_owned());
        }
    }
    if packages.len() < 3 {
        bail!(
            "apt-cache depends {headers}: no -common and linux-kbuild dependencies (is {headers} known to apt?)"
        );
    }
    Ok(packages)
}

/// Builds (or takes from the cache) the fixture module for the kernel of
/// `image_package` (`linux-image-<version>`), against exactly that
/// version's Debian headers.
fn fixture_module(root: &Path, cache: &Path, image_package: &str) -> anyhow::Result<PathBuf> {
    let version = image_package
        .strip_prefix("linux-image-")
        .with_context(|| format!("{image_package}: not a linux-image package"))?;
    let mut hash = sha2::Sha256::new();
    for source in MODULE_SOURCES {
        let path = root.join(source);
        hash.update(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    let digest = hash.finalize()[..6]
        .iter()
        .fold(String::new(), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        });
    let built = cache.join(format!("splitlock_trap-{version}-{digest}.ko"));
    if built.is_file() {
        eprintln!("xtask: fixture module for {version}: cached");
        return Ok(built);
    }
    let tree = cache.join(format!("headers-{version}"));
    let build_dir = tree.join(format!("usr/src/linux-headers-{version}"));
    if !build_dir.join(".config").is_file() {
        for package in header_packages(version)? {
            let deb = cached_deb(cache, &package)?;
            run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        }
        // Debian's per-flavour Makefile includes the -common tree by its
        // installed path; point it into the cache instead.
        let makefile = build_dir.join("Makefile");
        let text = std::fs::read_to_string(&makefile)
            .with_context(|| format!("reading {}", makefile.display()))?;
        let text = text.replace(
            "include /usr/src/",
            &format!("include {}/usr/src/", tree.display()),
        );
        std::fs::write(&makefile, text)
            .with_context(|| format!("writing {}", makefile.display()))?;
    }
    let kernel_makefile = std::fs::read_to_string(build_dir.join("Makefile")).unwrap_or_default();
    let compiler = if kernel_makefile.contains("gcc-12")
        || std::fs::read_to_string(build_dir.join(".kernelvariables"))
            .unwrap_or_default()
            .contains("gcc-12")
    {
        "gcc-12"
    } else {
        "gcc"
    };
    if Command::new(compiler).arg("--version").output().is_err() {
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", compiler, "make"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("installing {compiler} for the fixture module"))?;
    }
    let module_dir = cache.join(format!("module-build-{version}"));
    let _ = std::fs::remove_dir_all(&module_dir);
    std::fs::create_dir_all(&module_dir)
        .with_context(|| format!("creating {}", module_dir.display()))?;
    for source in MODULE_SOURCES {
        let from = root.join(source);
        let name = from.file_name().context("source name")?;
        std::fs::copy(&from, module_dir.join(name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    // No BTF for the module: it would need pahole, and nothing reads it.
    run_command(
        Command::new("make")
            .arg("-C")
            .arg(&build_dir)
            .arg(format!("M={}", module_dir.display()))
            .arg("CONFIG_DEBUG_INFO_BTF_MODULES=")
            .arg("modules"),
    )
    .with_context(|| {
        format!(
            "building the fixture module against {}",
            build_dir.display()
        )
    })?;
    std::fs::copy(module_dir.join("splitlock_trap.ko"), &built)
        .with_context(|| format!("copying the built module to {}", built.display()))?;
    Ok(built)
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
    for dir in ["proc", "sys", "dev", "tmp", "modules", "fixture"] {
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
    /// Guest files that did not arrive whole.
    broken_files: Vec<String>,
    boot_seconds: f64,
}

/// Reassembles the guest's `VMTEST-FILE <name> <i>/<n> <base64>` lines
/// (gzip inside) under `out`; returns the names that did not arrive whole.
fn save_guest_files(console: &str, out: &Path) -> anyhow::Result<Vec<String>> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut parts: std::collections::BTreeMap<String, (usize, Vec<Option<String>>)> =
        std::collections::BTreeMap::new();
    for line in console.lines() {
        let Some((_, rest)) = line.split_once("VMTEST-FILE ") else {
            continue;
        };
        let mut fields = rest.trim_end().splitn(3, ' ');
        let (Some(name), Some(position), Some(data)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((index, count)) = position
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        else {
            continue;
        };
        let entry = parts
            .entry(name.to_owned())
            .or_insert_with(|| (count, vec![None; count]));
        if index < entry.1.len() {
            entry.1[index] = Some(data.to_owned());
        }
    }
    let mut broken = Vec::new();
    for (name, (_, chunks)) in parts {
        let whole: Option<String> = chunks.into_iter().collect();
        let decoded = whole.and_then(|text| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?;
            let mut data = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut data)
                .ok()?;
            Some(data)
        });
        let Some(data) = decoded else {
            broken.push(name);
            continue;
        };
        if name.contains("..") {
            broken.push(name);
            continue;
        }
        let path = out.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(broken)
}

fn boot(
    series: &str,
    package: &str,
    deb: &Path,
    work: &Path,
    tracer: &Path,
    init: &Path,
    fixture: Option<&Path>,
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
    if let Some(module) = fixture {
        files.push((
            "fixture/splitlock_trap.ko".into(),
            std::fs::read(module).with_context(|| format!("reading {}", module.display()))?,
            0o644,
        ));
    }
    let initramfs = work.join(format!("{package}.cpio"));
    write_initramfs(&initramfs, &files)?;
    eprintln!("xtask: booting {package} under QEMU (TCG)");
    let started = std::time::Instant::now();
    let output = Command::new("timeout")
        .arg("1500")
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
    let boot_seconds = started.elapsed().as_secs_f64();
    let console = String::from_utf8_lossy(&output.stdout).into_owned();
    let _ = std::fs::write(work.join(format!("{package}.console")), &console);
    let broken_files = save_guest_files(&console, &work.join("guest"))?;
    let result = console
        .lines()
        .find_map(|line| {
            line.split_once("VMTEST-RESULT ")
                .map(|(_, json)| json.trim().to_owned())
        })
        .and_then(|json| serde_json::from_str(&json).ok());
    let tail: Vec<&str> = console
        .lines()
        .filter(|line| !line.contains("VMTEST-FILE "))
        .rev()
        .take(25)
        .collect();
    Ok(KernelResult {
        series: series.to_owned(),
        package: package.to_owned(),
        result,
        console_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        broken_files,
        boot_seconds,
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
/// the kernel offers did not attach, the guest's recording is wrong, or a
/// handler scenario fails. With `skip_missing`, a machine that cannot get
/// QEMU or the kernel packages prints `SKIP vm-test: <reason>` instead of
/// failing (and one that cannot build the fixture module, `SKIP vm-test
/// scenarios: <reason>`). `save_fixtures` copies the scenarios' recordings
/// and the guests' format files into tracer/tests/fixtures/handlers.
pub fn run(skip_missing: bool, save_fixtures: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
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
        let fetched = fetched.map(|(series, package, deb)| {
            let module = fixture_module(&root, &cache, &package);
            (series, package, deb, module)
        });
        match fetched {
            Ok(kernel) => kernels.push(kernel),
            Err(error) => {
                return skip(error.context(format!("getting the Debian {series} kernel")));
            }
        }
    }
    let _ = std::fs::remove_dir_all(work.join("guest"));
    // The guests boot side by side: TCG is slow, and each guest mostly
    // keeps one host core busy.
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|(series, package, deb, module)| {
                let (work, tracer, init) = (&work, &outputs.binary, &init);
                let module = module.as_ref().ok().map(PathBuf::as_path);
                scope.spawn(move || boot(series, package, deb, work, tracer, init, module))
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
    let mut scenario_results = Vec::new();
    let mut handler_notes = String::new();
    for ((_, _, _, module), kernel) in kernels.iter().zip(&results) {
        if let Err(error) = module {
            let line = format!(
                "SKIP vm-test scenarios on {}: fixture module: {error:#}",
                kernel.package
            );
            println!("{line}");
            let _ = writeln!(handler_notes, "{line}");
            if !skip_missing {
                failures.push(line);
            }
        }
    }
    for kernel in &results {
        for name in &kernel.broken_files {
            failures.push(format!(
                "{}: guest file {name} did not arrive whole",
                kernel.package
            ));
        }
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
        // init is not a thread the tracer tracks: its signals are counted
        // per CPU (with any other untracked timer signal of the guest) and
        // never recorded.
        let counted = record["untracked_timer_signals"].as_u64().unwrap_or(0);
        if sent == 0 || seen != 0 || counted < sent {
            failures.push(format!("{release}: init took {sent} SI_TIMER signals; expected none recorded and at least {sent} counted as signals to other threads, the recording has {seen} and counted {counted}: {record}"));
        }
        if record["sleep_return_events"].as_u64() != Some(0) {
            failures.push(format!("{release}: msleep_interruptible returns outside a split-lock window were reported: {record}"));
        }
        let _ = writeln!(
            summary,
            "| {release} ({}) | {} | {} | {mode} | init's {sent} SI_TIMER signals: {seen} recorded, {counted} counted as signals to other threads; 0 sleep returns outside a split-lock handler |",
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
        let handlers = &result["handlers"];
        if handlers.is_null() {
            continue;
        }
        if let Some(error) = handlers["error"].as_str() {
            failures.push(format!(
                "{release}: handler scenarios could not start: {error}"
            ));
            continue;
        }
        let _ = writeln!(
            handler_notes,
            "{release}: fixture module loaded with `{}`; scenarios took {:.0} s of guest time; guest booted and ran for {:.0} s",
            handlers["params"].as_str().unwrap_or(""),
            handlers["scenarios_wall_s"].as_f64().unwrap_or(0.0),
            kernel.boot_seconds
        );
        for guest in handlers["scenarios"].as_array().into_iter().flatten() {
            let evaluated =
                vm_scenarios::evaluate(release, guest, &work.join("guest"), &outputs.binary);
            if evaluated["pass"] != true {
                let failed: Vec<String> = evaluated["checks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|check| check["pass"] != true)
                    .map(|check| {
                        format!(
                            "{}: {}",
                            check["check"].as_str().unwrap_or("?"),
                            check["detail"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                failures.push(format!(
                    "{release} scenario {}: {}",
                    evaluated["scenario"].as_str().unwrap_or("?"),
                    failed.join("; ")
                ));
            }
            scenario_results.push(evaluated);
        }
    }
    let scenarios_path = work.join("scenarios.json");
    std::fs::write(
        &scenarios_path,
        serde_json::to_string_pretty(&scenario_results)?,
    )
    .with_context(|| format!("writing {}", scenarios_path.display()))?;
    if save_fixtures && !scenario_results.is_empty() {
        save_handler_fixtures(&root, &work, &scenario_results)?;
    }
    let handler_table = if scenario_results.is_empty() {
        String::new()
    } else {
        format!(
            "\n## Handler scenarios\n\nThe trap is the test's (the fixture module calls the kernel's handler at IP X); everything after it is the kernel's own code. Ground truth: the guest kernel's tracefs kprobe events and the driver's own counts.\n\n{}\n{handler_notes}",
            vm_scenarios::table(&scenario_results)
        )
    };
    let report = format!("{summary}\n{table}{handler_table}");
    println!("{report}");
    std::fs::write(work.join("matrix.md"), &report)?;
    if !failures.is_empty() {
        bail!("vm-test failed:\n{}", failures.join("\n"));
    }
    println!(
        "vm-test: {} kernels booted, {} handler scenarios passed, matrix in {}, scenarios in {} ({:.0} s)",
        results.len(),
        scenario_results.len(),
        work.join("matrix.md").display(),
        scenarios_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Copies each scenario's (redacted) recording and the guests' tracefs
/// format files into tracer/tests/fixtures/handlers, with a provenance
/// file the fixture tests read.
fn save_handler_fixtures(root: &Path, work: &Path, results: &[Value]) -> anyhow::Result<()> {
    let fixtures = root.join("tracer/tests/fixtures/handlers");
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut provenance = Vec::new();
    for result in results {
        let kernel = result["kernel"].as_str().unwrap_or("?");
        let scenario = result["scenario"].as_str().unwrap_or("?");
        let from = work
            .join("guest")
            .join(kernel)
            .join(scenario)
            .join("recording.jsonl");
        let to_dir = fixtures.join(kernel);
        std::fs::create_dir_all(&to_dir)
            .with_context(|| format!("creating {}", to_dir.display()))?;
        let to = to_dir.join(format!("{scenario}.jsonl"));
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        let formats = work.join("guest").join(kernel).join("formats");
        if formats.is_dir() {
            copy_tree(
                &formats,
                &root
                    .join("tracer/tests/fixtures/tracefs")
                    .join(kernel)
                    .join("events"),
            )?;
        }
        let kallsyms = work
            .join("guest")
            .join(kernel)
            .join("kallsyms-splitlock_trap.txt");
        if kallsyms.is_file() {
            std::fs::copy(&kallsyms, to_dir.join("kallsyms-splitlock_trap.txt"))
                .with_context(|| format!("copying {}", kallsyms.display()))?;
        }
        provenance.push(serde_json::json!({
            "file": format!("{kernel}/{scenario}.jsonl"),
            "kernel": kernel,
            "scenario": scenario,
            "date": date,
            "captured_by": "cargo xtask vm-test --save-fixtures (QEMU TCG guest; trap by the fixture module, everything after it the kernel's own handler)",
            "verdict": result["verdict"],
            "confirmed": result["confirmed"],
            "ever_livelock": result["ever_livelock"],
            "ip": result["ip_expected"],
            "driver_pid": result["driver"]["pid"],
            "driver_tids": result["driver"]["threads"].as_array().map(|threads| threads.iter().map(|t| t["tid"].clone()).collect::<Vec<_>>()),
            "traps": result["traps_recorded"],
            "warns": result["warns_recorded"],
            "sleeps_interrupted": result["sleeps_interrupted"],
            "sleeps_completed": result["sleeps_completed"],
            "semaphore_interrupted": result["semaphore_interrupted"],
            "semaphore_acquired": result["semaphore_acquired"],
            "lost": result["lost"],
            "ground_truth": result["ground_truth"],
            "pass": result["pass"],
        }));
    }
    let path = fixtures.join("provenance.json");
    std::fs::write(&path, serde_json::to_string_pretty(&provenance)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("vm-test: fixtures saved under {}", fixtures.display());
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
