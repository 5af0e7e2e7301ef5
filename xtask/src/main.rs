//! Developer and set-up tasks.
//!
//! `cargo xtask setup` installs what building the eBPF object needs and is
//! idempotent; `run` and `test` call it first, so on a fresh Debian 12 machine
//! with only Rust installed the README's two commands work as they are.

mod bench;
mod dist;
mod setup;
mod vm_test;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Tasks.
#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the pinned toolchain's rust-src, llvm-22-dev and bpf-linker when missing.
    Setup,
    /// Set up, build in release mode and run the tracer (arguments after `--` go to it).
    Run {
        /// Arguments for the tracer.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, and run every test.
    Test {
        /// Skip rustfmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Seconds of fuzzing of the recording parser (0 = none).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
        /// Skip booting Debian kernels under QEMU (`vm-test`).
        #[arg(long)]
        no_vm: bool,
        /// Skip the short benchmark run (`bench --quick`).
        #[arg(long)]
        no_bench: bool,
    },
    /// Measure the tracer's cost, loss, CPU, memory and verdict latency against bpftrace and perf (target/bench/).
    Bench {
        /// One short repetition of every section (checks the benchmark runs; numbers not comparable).
        #[arg(long)]
        quick: bool,
    },
    /// Build the static musl binary and the Debian package into target/dist/.
    Dist,
    /// Boot Debian's 6.1 and 6.12 kernels under QEMU and check every probe there.
    VmTest,
    /// Fuzz the recording parser and replay with cargo-fuzz (libFuzzer).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Run { args } => setup::run().and_then(|()| run_tracer(&args)),
        Task::Test {
            no_lint,
            fuzz_seconds,
            no_vm,
            no_bench,
        } => setup::run().and_then(|()| {
            setup::test_prerequisites();
            test(no_lint, fuzz_seconds, no_vm, no_bench)
        }),
        Task::Bench { quick } => setup::run().and_then(|()| {
            bench::run(if quick {
                bench::BenchOptions::QUICK
            } else {
                bench::BenchOptions::FULL
            })
        }),
        Task::Dist => setup::run().and_then(|()| dist::run().map(|_| ())),
        Task::VmTest => setup::run().and_then(|()| vm_test::run(false)),
        Task::Fuzz { seconds } => setup::run().and_then(|()| fuzz(seconds)),
    };
    if let Err(error) = result {
        eprintln!("xtask: {error:#}");
        std::process::exit(1);
    }
}

/// Runs a command, echoing it, and fails when it fails.
pub(crate) fn run_command(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run_tracer(args: &[String]) -> anyhow::Result<()> {
    run_command(cargo().args(["build", "--release", "--package", "tracer"]))?;
    let binary = setup::workspace_root()?.join("target/release/tracer");
    let status = Command::new(&binary)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// The host-side packages (the eBPF crate only builds for the BPF target).
const HOST_PACKAGES: [&str; 6] = [
    "--package",
    "tracer",
    "--package",
    "tracer-common",
    "--package",
    "xtask",
];

/// cargo-fuzz release installed by `fuzz`.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Runs the `recording_reader` fuzz target for `seconds`, starting from the
/// committed seeds. cargo-fuzz passes nightly-only flags, so the stable
/// toolchain runs with `RUSTC_BOOTSTRAP=1`, as the eBPF build does.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    // libfuzzer-sys compiles libFuzzer's C++ sources.
    setup::apt_package("g++", "c++", "--version");
    let installed = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION));
    if !installed {
        run_command(cargo().args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    let root = setup::workspace_root()?;
    let corpus = root.join("target/fuzz-corpus/recording_reader");
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    run_command(
        cargo()
            .current_dir(root.join("fuzz"))
            .env("RUSTC_BOOTSTRAP", "1")
            // No sanitizer: the target is safe Rust, where libFuzzer's
            // coverage guidance plus panics and debug assertions find the
            // bugs; ASan would triple the build time for nothing.
            .args([
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                "--debug-assertions",
                "recording_reader",
            ])
            .arg(&corpus)
            .arg(root.join("fuzz/seeds"))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-max_len=65536",
            ]),
    )?;
    println!("fuzz: recording_reader ran {seconds} s without a crash");
    Ok(())
}

fn test(no_lint: bool, fuzz_seconds: u64, no_vm: bool, no_bench: bool) -> anyhow::Result<()> {
    if !no_lint {
        run_command(cargo().args(["fmt", "--all", "--check"]))?;
        run_command(cargo().arg("clippy").args(HOST_PACKAGES).args([
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // The static binary and the .deb, so the tests can run them in an
    // environment without any build tools.
    let outputs = dist::run()?;
    // One test at a time: the live tests each attach a tracer session and
    // run a KVM guest, as one operator would on one host.
    let mut command = cargo();
    command
        .env("TRACER_STATIC_BINARY", &outputs.binary)
        .env("TRACER_DEB", &outputs.deb)
        .args(["test", "--no-fail-fast"])
        .args(HOST_PACKAGES)
        .args(["--", "--test-threads=1"]);
    let outcome = run_tests_counting(&mut command)?;
    let fuzz_result = if fuzz_seconds > 0 {
        fuzz(fuzz_seconds)
    } else {
        Ok(())
    };
    // kprobes on real distribution kernels: this machine's kernel has none.
    let vm_result = if no_vm {
        println!("SKIP vm-test: --no-vm given");
        Ok(())
    } else {
        vm_test::run(true)
    };
    // The benchmark's every section, briefly: it must keep working from a
    // clean checkout (its numbers come from the full `cargo xtask bench`).
    // SAFETY: geteuid has no preconditions.
    let bench_result = if no_bench {
        println!("SKIP bench --quick: --no-bench given");
        Ok(())
    } else if unsafe { libc::geteuid() } != 0 {
        println!("SKIP bench --quick: needs root (BPF, bpftrace, perf -a)");
        Ok(())
    } else {
        bench::run(bench::BenchOptions::QUICK)
    };
    // The closing lines CI reads: the failed tests by name (their output is
    // far above by now) and the totals of every test binary.
    for name in &outcome.failed_names {
        println!("FAILED test: {name}");
    }
    for (name, tail) in &outcome.failure_tails {
        println!("--- the last lines {name} printed:");
        for line in tail {
            println!("    {line}");
        }
    }
    let TestOutcome { passed, failed, .. } = outcome;
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    fuzz_result.and(vm_result).and(bench_result)
}

/// What `cargo test` reported over all its test binaries.
struct TestOutcome {
    passed: u64,
    failed: u64,
    /// `test <name> ... FAILED` lines, in the order they came.
    failed_names: Vec<String>,
    /// The last lines of each failed test's captured output (its panic
    /// message among them), from libtest's `---- <name> stdout ----` blocks.
    failure_tails: Vec<(String, Vec<String>)>,
}

/// How many lines of a failed test's output the closing summary repeats.
const FAILURE_TAIL_LINES: usize = 20;

/// Runs `cargo test`, echoing its output, sums the `test result:` lines and
/// keeps the names of failed tests.
fn run_tests_counting(command: &mut Command) -> anyhow::Result<TestOutcome> {
    use std::io::{BufRead as _, BufReader};

    eprintln!("xtask: running {command:?}");
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take().context("test stdout")?;
    let (mut passed, mut failed) = (0, 0);
    let mut failed_names = Vec::new();
    let mut failure_tails: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_failure_block = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            failure_tails.push((name.to_owned(), Vec::new()));
            in_failure_block = true;
            continue;
        }
        if line == "failures:" || line.starts_with("test result: ") {
            in_failure_block = false;
        }
        if in_failure_block && let Some((_, tail)) = failure_tails.last_mut() {
            if tail.len() == FAILURE_TAIL_LINES {
                tail.remove(0);
            }
            tail.push(line.clone());
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            failed_names.push(name.to_owned());
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|number| number.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && failed == 0 {
        bail!("{command:?} failed with {status}");
    }
    Ok(TestOutcome {
        passed,
        failed,
        failed_names,
        failure_tails,
    })
}
