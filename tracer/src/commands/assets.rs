//! `tracer generate-assets DIR` (hidden): man pages and shell completions
//! generated from the CLI definition, for `cargo xtask dist`.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::Cli;

/// Writes `man/tracer.1`, `man/tracer-<sub>.1` and `completions/*`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for path in [&man, &completions] {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    }
    let command = Cli::command();
    clap_mangen::generate_to(command.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "tracer", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    Ok(())
}
