//! `emollama registry list`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use emollama::registry::Registry;

/// List the registries (architectures, plugins, datasets, tasks, metrics).
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every registry and its names.
    List {
        /// Project root holding plugins/ and datasets/ (default: found from the working directory).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Command::List { root } = self.command;
        let registry = match root {
            Some(r) => Registry::load(&r)?,
            None => Registry::discover(Path::new("."))?,
        };
        println!("project root: {}", registry.root.display());
        for (kind, names) in registry.listing() {
            println!("{kind:>22}: {}", if names.is_empty() { "(none)".to_string() } else { names.join(", ") });
        }
        Ok(())
    }
}
