//! The fuzz targets (cargo-fuzz, libFuzzer): the recording parser and
//! replay, and doctor's readers.
//!
//! Their instrumented build is a fourth build of every dependency, minutes
//! on a two-core CI machine. `cargo xtask test` starts it in the background
//! at its first step ([`Build::start`]) under `SCHED_IDLE`, so it runs only
//! on the CPU time the foreground leaves idle (the tail of each build, the
//! tests that wait on a guest) and never takes CPU from a test; the fuzz
//! runs then wait for it.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
    thread::JoinHandle,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{cargo, run_command, setup};

/// cargo-fuzz release installed by [`install`].
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// The build options of every cargo-fuzz call: a background build and the
/// runs after it must agree, or the runs would build everything again.
///
/// No sanitizer: the targets are safe Rust, where libFuzzer's coverage
/// guidance plus panics and debug assertions find the bugs; ASan would
/// triple the build time for nothing. cargo-fuzz's default of one codegen
/// unit per crate stays: 16 were tried and made the build slower (200 s
/// against 185 s on a clean clone here) and halved the executions per
/// second.
const BUILD_OPTIONS: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];

/// [`Build::running`] once the build was dropped.
const STOPPED: i32 = -1;

/// How many lines of a failed background build's log are repeated.
const LOG_TAIL_LINES: usize = 30;

/// A cargo-fuzz call in the fuzz crate; cargo-fuzz passes nightly-only
/// flags, so the stable toolchain runs with `RUSTC_BOOTSTRAP=1`, as the
/// eBPF build does.
fn cargo_fuzz(root: &Path, subcommand: &str) -> Command {
    let mut command = cargo();
    command
        .current_dir(root.join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", subcommand])
        .args(BUILD_OPTIONS);
    command
}

/// Installs what the fuzz build needs that is missing. `g++` comes through
/// apt, which must not run beside another apt call: call this in the
/// foreground. cargo-fuzz itself is installed by [`install_cargo_fuzz`].
pub fn install_system_packages() {
    // libfuzzer-sys compiles libFuzzer's C++ sources.
    setup::apt_package("g++", "c++", "--version");
}

/// Whether the pinned cargo-fuzz is installed.
fn cargo_fuzz_installed() -> bool {
    cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION))
}

/// The command that installs the pinned cargo-fuzz.
fn install_cargo_fuzz() -> Command {
    let mut command = cargo();
    command.args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]);
    command
}

/// Makes `command` (and every process it starts: cargo's rustc and linker
/// children inherit the policy) run under `SCHED_IDLE`.
fn idle_priority(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only
    // sched_setscheduler, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The instrumented build of every fuzz target, running in the background.
/// Dropped before [`run`] waited for it (the foreground failed), it stops
/// the build.
#[derive(Debug)]
pub struct Build {
    worker: Option<JoinHandle<anyhow::Result<()>>>,
    /// The process group of the command running now (0: none; [`STOPPED`]:
    /// start nothing more).
    running: Arc<AtomicI32>,
    log: PathBuf,
    started: Instant,
}

impl Build {
    /// Installs cargo-fuzz when missing and builds every fuzz target, both
    /// under `SCHED_IDLE`, on a thread of their own; their output goes to
    /// `target/fuzz-build.log` so that it does not interleave with the
    /// foreground's. Call [`install_system_packages`] first.
    pub fn start() -> anyhow::Result<Self> {
        let root = setup::workspace_root()?;
        let log = root.join("target/fuzz-build.log");
        std::fs::create_dir_all(root.join("target"))?;
        let output = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!(
            "xtask: fuzz build started in the background (SCHED_IDLE), output in {}",
            log.display()
        );
        let running = Arc::new(AtomicI32::new(0));
        let slot = Arc::clone(&running);
        let worker = std::thread::spawn(move || {
            if !cargo_fuzz_installed() {
                run_in_background(install_cargo_fuzz(), &output, &slot)?;
            }
            run_in_background(cargo_fuzz(&root, "build"), &output, &slot)
        });
        Ok(Self {
            worker: Some(worker),
            running,
            log,
            started: Instant::now(),
        })
    }

    /// Waits for the build; on failure repeats the end of its log.
    fn wait(mut self) -> anyhow::Result<()> {
        let waited = Instant::now();
        let worker = self
            .worker
            .take()
            .context("the fuzz build was waited for twice")?;
        let result = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the fuzz build thread panicked"))?;
        eprintln!(
            "xtask: fuzz build ended {:.1} s after its start (the fuzz runs waited {:.1} s for it)",
            self.started.elapsed().as_secs_f64(),
            waited.elapsed().as_secs_f64()
        );
        if let Err(error) = result {
            let lines: Vec<String> = File::open(&self.log)
                .map(|file| BufReader::new(file).lines().map_while(Result::ok).collect())
                .unwrap_or_default();
            eprintln!("xtask: the last lines of {}:", self.log.display());
            for line in &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..] {
                eprintln!("    {line}");
            }
            return Err(error);
        }
        Ok(())
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        if self.worker.is_none() {
            return;
        }
        // STOPPED keeps the worker from starting a command after this.
        let group = self.running.swap(STOPPED, Ordering::SeqCst);
        if group > 0 {
            // SAFETY: kill has no memory preconditions; the group is the
            // build's own (process_group(0) at its spawn).
            unsafe { libc::kill(-group, libc::SIGTERM) };
        }
    }
}

/// Runs `command` under `SCHED_IDLE` in a process group of its own, its
/// output into `log`, publishing the group in `running` while it runs.
fn run_in_background(mut command: Command, log: &File, running: &AtomicI32) -> anyhow::Result<()> {
    idle_priority(&mut command);
    command
        .process_group(0)
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .stdin(Stdio::null());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let group = i32::try_from(child.id()).context("process id out of range")?;
    if running
        .compare_exchange(0, group, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // The build was dropped meanwhile.
        // SAFETY: as in Build's drop.
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let _ = child.wait();
        bail!("the fuzz build was stopped");
    }
    let status = child.wait();
    let _ = running.compare_exchange(group, 0, Ordering::SeqCst, Ordering::SeqCst);
    let status = status.with_context(|| format!("waiting for {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Runs each fuzz target for `seconds`: `recording_reader` from the
/// committed seeds, `doctor_readers` from the host snapshots under
/// tracer/tests/fixtures/hosts/ (framed as that target reads them). With a
/// background `build`, waits for it first; without, builds in the
/// foreground.
pub fn run(seconds: u64, build: Option<Build>) -> anyhow::Result<()> {
    if let Some(build) = build {
        build.wait()?;
    } else {
        install_system_packages();
        if !cargo_fuzz_installed() {
            run_command(&mut install_cargo_fuzz())?;
        }
    }
    let root = setup::workspace_root()?;
    let doctor_seeds = root.join("target/fuzz-seeds/doctor_readers");
    write_doctor_seeds(&root.join("tracer/tests/fixtures/hosts"), &doctor_seeds)?;
    // doctor_readers writes its snapshots under the temporary directory.
    let scratch = root.join("target/fuzz-tmp");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    for (target, seeds, max_len) in [
        ("recording_reader", root.join("fuzz/seeds"), 65_536),
        ("doctor_readers", doctor_seeds, 262_144),
    ] {
        let corpus = root.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        run_command(
            cargo_fuzz(&root, "run")
                .env("TMPDIR", &scratch)
                .arg(target)
                .arg(&corpus)
                .arg(&seeds)
                .args([
                    "--",
                    &format!("-max_total_time={seconds}"),
                    &format!("-max_len={max_len}"),
                    // A doctor run on a hostile snapshot must end quickly.
                    "-timeout=10",
                ]),
        )?;
        println!("fuzz: {target} ran {seconds} s without a crash");
    }
    Ok(())
}

/// One seed per host snapshot under `hosts`: every file as
/// `[u16 LE path length][path][u32 LE content length][content]`, the
/// framing of fuzz/fuzz_targets/doctor_readers.rs.
fn write_doctor_seeds(hosts: &Path, out: &Path) -> anyhow::Result<()> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), files)?;
            } else if entry.file_type()?.is_file() {
                files.push(entry.path());
            }
        }
        Ok(())
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for host in std::fs::read_dir(hosts).with_context(|| format!("reading {}", hosts.display()))? {
        let host = host?.path();
        if !host.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        walk(&host, &mut files).with_context(|| format!("reading {}", host.display()))?;
        files.sort();
        let mut seed = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&host)?.to_string_lossy().into_owned();
            let content =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let (Ok(path_len), Ok(content_len)) =
                (u16::try_from(relative.len()), u32::try_from(content.len()))
            else {
                continue;
            };
            seed.extend_from_slice(&path_len.to_le_bytes());
            seed.extend_from_slice(relative.as_bytes());
            seed.extend_from_slice(&content_len.to_le_bytes());
            seed.extend_from_slice(&content);
        }
        let name = host
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        let target = out.join(name.unwrap_or_else(|| "host".to_owned()));
        std::fs::write(&target, seed).with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(())
}
