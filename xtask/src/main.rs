//! Developer and set-up tasks.
//!
//! `cargo xtask setup` installs what building the eBPF object needs and is
//! idempotent; `run` and `test` call it first, so on a fresh Debian 12 machine
//! with only Rust installed the README's two commands work as they are.
// A declared dependency nothing uses fails CI (clippy -D warnings); tests
// link the dev-dependencies too, so the check is on the non-test build.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod bench;
mod dist;
mod fuzz;
mod setup;
mod vm_scenarios;
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
        /// Seconds of fuzzing of each target, the recording parser and
        /// doctor's readers (0 = none).
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
    /// Build the static binary and the Debian package into target/dist/.
    Dist,
    /// Boot Debian's 6.1 and 6.12 kernels under QEMU, check every probe there and run the handler scenarios.
    VmTest {
        /// Copy the scenarios' recordings and the guests' format files into tracer/tests/fixtures.
        #[arg(long)]
        save_fixtures: bool,
    },
    /// Fuzz the recording parser and replay, and doctor's readers, with
    /// cargo-fuzz (libFuzzer).
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
        Task::VmTest { save_fixtures } => {
            setup::run().and_then(|()| vm_test::run(false, save_fixtures))
        }
        Task::Fuzz { seconds } => setup::run().and_then(|()| fuzz::run(seconds, None)),
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

pub(crate) fn cargo() -> Command {
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
const HOST_PACKAGES: [&str; 8] = [
    "--package",
    "tracer",
    "--package",
    "tracer-common",
    "--package",
    "tracer-events",
    "--package",
    "xtask",
];

/// Features of the tests' (and clippy's) build: the generators of
/// `tracer-testkit`, which the integration tests that need them require.
const TEST_FEATURES: [&str; 2] = ["--features", "tracer/testkit"];

fn test(no_lint: bool, fuzz_seconds: u64, no_vm: bool, no_bench: bool) -> anyhow::Result<()> {
    // How long each phase took, printed at the end: CI has 30 minutes on
    // two cores, and this is where a slow phase shows.
    let mut phases: Vec<(&str, std::time::Duration)> = Vec::new();
    let mut clock = std::time::Instant::now();
    // Each phase's time is printed as it ends too, so a run cut off at
    // CI's limit still shows where the time went.
    let mut lap = |name: &'static str, phases: &mut Vec<_>| {
        let took = clock.elapsed();
        println!("phase: {name}: {:.1} s", took.as_secs_f64());
        phases.push((name, took));
        clock = std::time::Instant::now();
    };
    // The fuzz targets' instrumented build runs beside everything up to
    // the fuzz runs, on the CPU time the foreground leaves idle.
    let fuzz_build = if fuzz_seconds > 0 {
        fuzz::install_system_packages();
        Some(fuzz::Build::start()?)
    } else {
        None
    };
    if !no_lint {
        run_command(cargo().args(["fmt", "--all", "--check"]))?;
        // With the test features, so the testkit and the tests that need
        // it are linted too.
        run_command(
            cargo()
                .arg("clippy")
                .args(HOST_PACKAGES)
                .args(TEST_FEATURES)
                .args(["--all-targets", "--", "-D", "warnings"]),
        )?;
    }
    lap("fmt and clippy", &mut phases);
    // The static binary and the .deb, so the tests can run them in an
    // environment without any build tools.
    let outputs = dist::run()?;
    lap("dist (static binary, .deb)", &mut phases);
    // One test at a time: the live tests each attach a tracer session and
    // run a KVM guest, as one operator would on one host.
    let mut command = cargo();
    command
        .env("TRACER_STATIC_BINARY", &outputs.binary)
        .env("TRACER_DEB", &outputs.deb)
        .args(["test", "--no-fail-fast"])
        .args(HOST_PACKAGES)
        .args(TEST_FEATURES)
        .args(["--", "--test-threads=1"]);
    let outcome = run_tests_counting(command)?;
    lap("cargo test (build and run)", &mut phases);
    let fuzz_result = match fuzz_build {
        Some(build) => fuzz::run(fuzz_seconds, Some(build)),
        None => Ok(()),
    };
    lap("fuzz (rest of the build, and run)", &mut phases);
    // kprobes on real distribution kernels: this machine's kernel has none.
    let vm_result = if no_vm {
        println!("SKIP vm-test: --no-vm given");
        Ok(())
    } else {
        vm_test::run(true, false)
    };
    lap("vm-test", &mut phases);
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
    lap("bench --quick", &mut phases);
    let total: std::time::Duration = phases.iter().map(|(_, took)| *took).sum();
    for (name, took) in &phases {
        println!("phase: {name}: {:.1} s", took.as_secs_f64());
    }
    println!("phase: total: {:.1} s", total.as_secs_f64());
    // The closing lines CI reads: the skipped and the failed tests by name
    // (their output is far above by now) and the totals of every test
    // binary, skipped tests counted apart from passed ones.
    for name in &outcome.skipped_names {
        println!("SKIPPED test: {name}");
    }
    for name in &outcome.failed_names {
        println!("FAILED test: {name}");
    }
    for (name, tail) in &outcome.failure_tails {
        println!("--- the last lines {name} printed:");
        for line in tail {
            println!("    {line}");
        }
    }
    let TestOutcome {
        passed,
        failed,
        skipped_names,
        ..
    } = outcome;
    let skipped = skipped_names.len();
    println!("tests: {passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    fuzz_result.and(vm_result).and(bench_result)
}

/// What `cargo test` reported over all its test binaries.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestOutcome {
    /// Passed tests, without those that printed a SKIP line.
    passed: u64,
    failed: u64,
    /// Tests that printed `SKIP <test>: <reason>` and then passed, in the
    /// order they ran.
    skipped_names: Vec<String>,
    /// Failed tests by name, in the order they came.
    failed_names: Vec<String>,
    /// The last lines of each failed test's captured output (its panic
    /// message among them), from libtest's `---- <name> stdout ----` blocks.
    failure_tails: Vec<(String, Vec<String>)>,
}

/// How many lines of a failed test's output the closing summary repeats.
const FAILURE_TAIL_LINES: usize = 20;

/// Reads `cargo test`'s output (stdout and stderr in one stream, in the
/// order written) line by line.
///
/// With one test thread libtest writes `test <name> ... ` and flushes before
/// the test runs, and the result (`ok`, `FAILED`, `ignored`) after it, so a
/// test's direct stderr writes (the `SKIP` lines of `tests/common`) land
/// between the two: `test <name> ... SKIP <test>: <reason>`, then `ok` on a
/// line of its own. The totals come from the `test result:` lines; a test
/// that printed a SKIP line and then passed counts as skipped, not passed.
#[derive(Debug, Default)]
struct TestCounter {
    /// Sums of the `test result:` lines.
    passed_total: u64,
    failed: u64,
    /// The test whose result is still to come, and whether it printed SKIP.
    running: Option<(String, bool)>,
    skipped_names: Vec<String>,
    failed_names: Vec<String>,
    failure_tails: Vec<(String, Vec<String>)>,
    in_failure_block: bool,
}

impl TestCounter {
    fn line(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.failure_tails.push((name.to_owned(), Vec::new()));
            self.in_failure_block = true;
            return;
        }
        if line == "failures:" || line.starts_with("test result: ") {
            self.in_failure_block = false;
        }
        if self.in_failure_block
            && let Some((_, tail)) = self.failure_tails.last_mut()
        {
            if tail.len() == FAILURE_TAIL_LINES {
                tail.remove(0);
            }
            tail.push(line.to_owned());
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
            self.passed_total += count(" passed");
            self.failed += count(" failed");
            self.running = None;
            return;
        }
        let rest = match line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        {
            Some((name, rest)) => {
                self.running = Some((name.to_owned(), false));
                rest
            }
            None => line,
        };
        let Some((name, skipped)) = &mut self.running else {
            return;
        };
        if rest.starts_with("SKIP ") {
            *skipped = true;
        } else if rest == "ok" {
            if *skipped {
                self.skipped_names.push(std::mem::take(name));
            }
            self.running = None;
        } else if rest == "FAILED" {
            self.failed_names.push(std::mem::take(name));
            self.running = None;
        } else if rest.starts_with("ignored") {
            self.running = None;
        }
    }

    fn finish(self) -> TestOutcome {
        TestOutcome {
            passed: self
                .passed_total
                .saturating_sub(self.skipped_names.len() as u64),
            failed: self.failed,
            skipped_names: self.skipped_names,
            failed_names: self.failed_names,
            failure_tails: self.failure_tails,
        }
    }
}

/// Runs `cargo test` with its stdout and stderr in one pipe (so a test's
/// SKIP line stays beside its result), echoing it, and counts the tests.
fn run_tests_counting(mut command: Command) -> anyhow::Result<TestOutcome> {
    use std::io::{BufRead as _, BufReader};

    let shown = format!("{command:?}");
    eprintln!("xtask: running {shown}");
    let (reader, writer) = std::io::pipe().context("creating the test output pipe")?;
    command
        .stdout(writer.try_clone().context("duplicating the pipe")?)
        .stderr(writer);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    // The command holds the pipe's write ends: dropped, the pipe ends when
    // cargo exits.
    drop(command);
    let mut counter = TestCounter::default();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        counter.line(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    let outcome = counter.finish();
    if !status.success() && outcome.failed == 0 {
        bail!("{shown} failed with {status}");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::{TestCounter, TestOutcome};

    fn count(output: &str) -> TestOutcome {
        let mut counter = TestCounter::default();
        for line in output.lines() {
            counter.line(line);
        }
        counter.finish()
    }

    #[test]
    fn a_test_that_printed_skip_and_passed_counts_as_skipped() {
        let outcome = count(
            "running 4 tests
test live::attaches ... SKIP attaches: needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs
ok
test live::counts ... ok
test live::kvm ... SKIP kvm tracepoint: tracefs is not mounted
SKIP kvm: needs a working /dev/kvm (absent)
ok
test live::slow ... ignored, takes minutes

test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s
",
        );
        assert_eq!(
            outcome,
            TestOutcome {
                passed: 1,
                failed: 0,
                skipped_names: vec!["live::attaches".into(), "live::kvm".into()],
                failed_names: Vec::new(),
                failure_tails: Vec::new(),
            }
        );
    }

    #[test]
    fn a_test_that_printed_skip_and_failed_counts_as_failed() {
        let outcome = count(
            "running 2 tests
test a::skips_then_panics ... SKIP part: no tracefs
FAILED
test a::fails ... FAILED

failures:

---- a::skips_then_panics stdout ----

thread 'a::skips_then_panics' panicked at tracer/tests/a.rs:3:5:
boom

---- a::fails stdout ----
assertion failed

failures:
    a::fails
    a::skips_then_panics

test result: FAILED. 0 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
",
        );
        assert_eq!(outcome.passed, 0);
        assert_eq!(outcome.failed, 2);
        assert!(outcome.skipped_names.is_empty());
        assert_eq!(outcome.failed_names, ["a::skips_then_panics", "a::fails"]);
        assert_eq!(outcome.failure_tails.len(), 2);
        assert_eq!(outcome.failure_tails[0].0, "a::skips_then_panics");
        assert!(outcome.failure_tails[0].1.iter().any(|line| line == "boom"));
    }

    #[test]
    fn totals_add_up_over_test_binaries_and_ignore_cargo_lines() {
        let outcome = count(
            "   Compiling tracer v0.1.0 (/work/main/tracer)
     Running unittests src/lib.rs (target/debug/deps/tracer-0123)

running 2 tests
test x ... ok
test y ... SKIP y: needs root
ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/recording.rs (target/debug/deps/recording-4567)

running 3 tests
test z1 ... ok
test z2 ... ok
test z3 ... FAILED

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

   Doc-tests tracer_events

running 1 test
test tracer-events/src/lib.rs - reader (line 5) ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
",
        );
        assert_eq!(
            (outcome.passed, outcome.failed, outcome.skipped_names.len()),
            (4, 1, 1)
        );
        assert_eq!(outcome.failed_names, ["z3"]);
    }
}
