//! One module per subcommand; each exposes `run(args) -> anyhow::Result<i32>`
//! returning the process exit code.

pub mod assets;
pub mod doctor;
pub mod live;
pub mod probes;
pub mod record;
pub mod report;
pub mod repro;
pub mod serve;

use crate::cli::Command;

/// Runs a parsed subcommand and returns the exit code.
pub fn run(command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Live(args) => live::run(&args),
        Command::Record(args) => record::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::GenerateAssets { dir } => assets::generate(&dir).map(|()| 0),
        Command::Doctor(args) => doctor::run(&args),
        Command::Probes(args) => probes::run(&args),
        Command::Repro(args) => repro::run(&args),
    }
}
