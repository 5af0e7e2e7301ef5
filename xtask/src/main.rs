//! Developer and set-up tasks.
//!
//! `cargo xtask setup` installs what building the eBPF object needs and is
//! idempotent; `run` and `test` call it first, so on a fresh Debian 12 machine
//! with only Rust installed the README's two commands work as they are.

mod setup;

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
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Run { args } => setup::run().and_then(|()| run_tracer(&args)),
        Task::Test { no_lint } => setup::run()
            .and_then(|()| setup::test_prerequisites())
            .and_then(|()| test(no_lint)),
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

fn test(no_lint: bool) -> anyhow::Result<()> {
    if !no_lint {
        run_command(cargo().args(["fmt", "--all", "--check"]))?;
        run_command(cargo().arg("clippy").args(HOST_PACKAGES).args([
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // One test at a time: the live tests each attach a tracer session and
    // run a KVM guest, as one operator would on one host.
    let mut command = cargo();
    command
        .arg("test")
        .args(HOST_PACKAGES)
        .args(["--", "--test-threads=1"]);
    let (passed, failed) = run_tests_counting(&mut command)?;
    // The closing line CI reads: the totals of every test binary.
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums the `test result:` lines.
fn run_tests_counting(command: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};

    eprintln!("xtask: running {command:?}");
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let stdout = child.stdout.take().context("test stdout")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
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
    Ok((passed, failed))
}
