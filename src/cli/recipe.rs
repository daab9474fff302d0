//! `emollama recipe check|show|lock|diff`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use emollama::recipe::{LoadedRecipe, diff, lock};

/// Check, show, lock or compare recipes.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate a recipe; exits non-zero with every problem found. Warns about remote bases
    /// without a sha256 pin and prints the pin to add.
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
    /// Write RECIPE.lock: the sha256 of every base (local path or remote URI) and of the manifests and
    /// dataset cards the recipe names. `run` refuses the recipe once they no longer match.
    Lock {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Compare two resolved recipes (or two run directories' recipe.resolved.toml) key by key: only
    /// what differs, with where each value came from (file:line, environment variable, --set).
    Diff { a: PathBuf, b: PathBuf },
}

impl Args {
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Check { recipe, sets } => {
                let (loaded, _) = super::load_checked(&recipe, &sets)?;
                let files = loaded.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
                println!("ok: `{}` ({} stage(s), files: {files})", recipe.display(), loaded.recipe.stages.len());
                warn_unpinned(&loaded);
            }
            Command::Show { recipe, sets } => {
                let (loaded, _) = super::load_checked(&recipe, &sets)?;
                print!("{}", loaded.to_toml().map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            Command::Lock { recipe, sets } => {
                let (loaded, registry) = super::load_checked(&recipe, &sets)?;
                let now = lock::compute(&loaded, &registry)?;
                let path = lock::write(&recipe, &now)?;
                println!(
                    "wrote {}: {} base(s), {} manifest(s), {} dataset card(s)",
                    path.display(),
                    now.bases.len(),
                    now.manifests.len(),
                    now.dataset_cards.len()
                );
                warn_unpinned(&loaded);
            }
            Command::Diff { a, b } => {
                let (la, na) = load_side(&a)?;
                let (lb, nb) = load_side(&b)?;
                let diffs = diff::diff(&la, &lb).map_err(|e| anyhow::anyhow!("{e}"))?;
                super::write_stdout(&diff::render(&na, &nb, &diffs), "the diff")?;
            }
        }
        Ok(())
    }
}

/// Each remote base read without a pin: a warning with the pin to add (the content may change under
/// the recipe otherwise).
fn warn_unpinned(loaded: &LoadedRecipe) {
    for f in loaded.unpinned_remote() {
        let parent = f.named_by.as_deref().unwrap_or("the recipe");
        if emollama::recipe::remote::is_remote_uri(parent) {
            // The pin belongs in a file this user may not own.
            eprintln!(
                "warning: remote base {} (sha256 {}) is not pinned by {parent}, which names it, so its content may change under this recipe; ask the maintainers of {parent} to pin it, and lock this recipe (`emollama recipe lock`)",
                f.name, f.sha256
            );
        } else {
            eprintln!(
                "warning: remote base {} is not pinned, so its content may change under this recipe; pin it in the `extends` of {parent}:\n  {{ uri = \"{}\", sha256 = \"{}\" }}",
                f.name, f.name, f.sha256
            );
        }
    }
    for f in loaded.file_records.iter().filter(|f| f.from_cache) {
        eprintln!("warning: remote base {} was read from the local cache (its server could not be reached)", f.name);
    }
}

/// A recipe file (loaded as `run` would: environment included), or a run directory (its
/// `recipe.resolved.toml`, without environment overrides: the file is what the run used).
fn load_side(p: &Path) -> Result<(LoadedRecipe, String)> {
    if p.is_dir() {
        let resolved = p.join("recipe.resolved.toml");
        if !resolved.is_file() {
            bail!("`{}` is a directory without recipe.resolved.toml: name a recipe file or a run directory (runs/<name>-<timestamp>)", p.display());
        }
        let loaded = emollama::recipe::load::load_recipe_with_env(&resolved, &[], &[])
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("reading the run directory `{}`", p.display()))?;
        return Ok((loaded, format!("{} (run directory)", p.display())));
    }
    Ok((super::load(p, &[])?, p.display().to_string()))
}
