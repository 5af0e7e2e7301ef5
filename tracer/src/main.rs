//! `tracer`: parse the command line, run the subcommand, exit with its code.

use clap::Parser as _;
use tracer::cli::Cli;

fn main() {
    tracer::heap::return_large_blocks_to_the_kernel();
    let cli = Cli::parse();
    // No subcommand is `tracer live` with its defaults (clap's, not a copy).
    let command = match cli.command {
        Some(command) => command,
        None => Cli::parse_from(["tracer", "live"])
            .command
            .expect("`live` is a subcommand"),
    };
    let code = match tracer::commands::run(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tracer: {error:#}");
            1
        }
    };
    std::process::exit(code);
}
