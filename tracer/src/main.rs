//! `tracer`: parse the command line, run the subcommand, exit with its code.

use clap::Parser as _;
use tracer::cli::{Cli, Command, LiveArgs, OutputArgs, TraceArgs};

fn main() {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        Command::Live(LiveArgs {
            trace: TraceArgs {
                pid: None,
                duration: None,
                ring_mib: None,
                no_raw_tracepoint: false,
            },
            interval: std::time::Duration::from_secs(1),
            vm: None,
            all: false,
            json: false,
            record: None,
            output: OutputArgs::default(),
        })
    });
    let code = match tracer::commands::run(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tracer: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
