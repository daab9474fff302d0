//! `emollama recipe check|show`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

/// Check or show recipes.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate a recipe; exits non-zero with every problem found.
    Check {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Print the fully resolved recipe as TOML.
    Show {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

impl Args {
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Check { recipe, sets } => {
                let (loaded, _) = super::load_checked(&recipe, &sets)?;
                let files = loaded.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
                println!("ok: `{}` ({} stage(s), files: {files})", recipe.display(), loaded.recipe.stages.len());
            }
            Command::Show { recipe, sets } => {
                let (loaded, _) = super::load_checked(&recipe, &sets)?;
                print!("{}", loaded.to_toml().map_err(|e| anyhow::anyhow!("{e}"))?);
            }
        }
        Ok(())
    }
}
