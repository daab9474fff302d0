//! `emollama run`: a recipe's data, training stages and evaluation into `runs/<name>-<timestamp>/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use emollama::registry::Registry;
use emollama::run::Resume;

/// Run a recipe: data, training stages, evaluation; writes runs/<name>-<timestamp>/.
#[derive(clap::Args)]
pub struct Args {
    /// The recipe (optional with `--resume RUN_DIR`, which uses the run's saved recipe).
    recipe: Option<PathBuf>,
    /// Override a recipe key, e.g. `--set model.use_av=false` (repeatable; highest priority).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Hide progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Continue an interrupted run from its newest checkpoint: the newest one of this recipe, or
    /// the given run directory.
    #[arg(long, value_name = "RUN_DIR", num_args = 0..=1, default_missing_value = "", conflicts_with = "fresh")]
    resume: Option<String>,
    /// Start a new run directory even if an interrupted run of this recipe exists.
    #[arg(long)]
    fresh: bool,
    /// Print the plan (parameters trainable and frozen per stage, memory per dtype, tokens per
    /// sample, steps per stage) and exit: nothing is loaded, downloaded or written.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: the plan as JSON.
    #[arg(long, requires = "dry_run")]
    json: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let mode = match &self.resume {
            Some(d) if d.is_empty() => Resume::Latest,
            Some(d) => Resume::Dir(PathBuf::from(d)),
            None if self.fresh => Resume::Fresh,
            None => Resume::Auto,
        };
        let recipe = match (self.recipe, &mode) {
            (Some(r), _) => r,
            (None, Resume::Dir(d)) => d.join("recipe.resolved.toml"),
            (None, _) => bail!("name a recipe: `emollama run RECIPE` (or `emollama run --resume RUN_DIR`)"),
        };
        if self.dry_run {
            return print_plan(&recipe, &self.sets, self.json);
        }
        let (loaded, registry) = super::load_checked(&recipe, &self.sets)?;
        if loaded.recipe.runtime.threads > 0 {
            // SAFETY: set before any worker thread exists (tensor thread pools start lazily).
            unsafe { std::env::set_var("RAYON_NUM_THREADS", loaded.recipe.runtime.threads.to_string()) };
        }
        let show = super::show_progress(loaded.recipe.runtime.progress, self.no_progress);
        let summary = emollama::run::run(&loaded, &registry, show, &mode).with_context(|| format!("running `{}`", recipe.display()))?;
        if summary.leader {
            println!("{}", emollama::run::summary_table(&summary));
        }
        Ok(())
    }
}

/// `run --dry-run`: the recipe's plan; no run directory is created. Checks only a real run needs (data
/// sources not in this build, init checkpoints not there yet) become warnings in the plan.
fn print_plan(path: &Path, sets: &[String], json: bool) -> Result<()> {
    let loaded = super::load(path, sets)?;
    let registry = Registry::discover(super::recipe_dir(path))?;
    let plan = emollama::plan::plan(&loaded, &registry)?;
    let text = if json { serde_json::to_string_pretty(&plan)? + "\n" } else { plan.render() };
    super::write_stdout(&text, "the plan")
}
