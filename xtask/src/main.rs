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

fn test(no_lint: bool) -> anyhow::Result<()> {
    if !no_lint {
        run_command(cargo().args(["fmt", "--all", "--check"]))?;
        run_command(cargo().args([
            "clippy",
            "--package",
            "tracer",
            "--package",
            "tracer-common",
            "--package",
            "xtask",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // One test at a time: the live tests each attach a tracer session and
    // run a KVM guest, as one operator would on one host.
    run_command(cargo().args([
        "test",
        "--package",
        "tracer",
        "--package",
        "tracer-common",
        "--package",
        "xtask",
        "--",
        "--test-threads=1",
    ]))?;
    Ok(())
}
