//! `emollama run`: a recipe's data, training stages and evaluation into `runs/<name>-<timestamp>/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use emollama::recipe::LoadedRecipe;
use emollama::recipe::lock::{self, LockRecord};
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
    /// Rewrite RECIPE.lock from the bases, manifests and dataset cards as they are now, instead of
    /// refusing a recipe whose lock no longer matches.
    #[arg(long)]
    relock: bool,
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
        let (mut loaded, registry) = super::load_checked(&recipe, &self.sets)?;
        loaded.lock = Some(check_lock(&recipe, &loaded, &registry, self.relock)?);
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

/// The recipe's lock, checked: a lock file that no longer matches is an error naming every change,
/// unless `relock` (then it is rewritten). Without a lock file the run records what it used.
fn check_lock(recipe: &Path, loaded: &LoadedRecipe, registry: &Registry, relock: bool) -> Result<LockRecord> {
    let now = lock::compute(loaded, registry)?;
    let existing = match lock::read(recipe) {
        Ok(l) => l,
        // A lock this build cannot read is replaced when asked to.
        Err(e) if relock => {
            tracing::warn!(error = %e, "replacing the unreadable lock file");
            None
        }
        Err(e) => return Err(e.into()),
    };
    match existing {
        Some(locked) => {
            let changes = lock::differences(&locked, &now);
            if changes.is_empty() {
                return Ok(LockRecord { file: Some(lock::lock_path(recipe)), lock: now });
            }
            if !relock {
                bail!(
                    "`{}` no longer matches its lock {}:\n  {}\nreview the changes, then run `emollama recipe lock {}` (or pass --relock)",
                    recipe.display(),
                    lock::lock_path(recipe).display(),
                    changes.join("\n  "),
                    recipe.display()
                );
            }
            let path = lock::write(recipe, &now)?;
            tracing::warn!(lock = %path.display(), changes = %changes.join("; "), "lock rewritten (--relock)");
            Ok(LockRecord { file: Some(path), lock: now })
        }
        None if relock => {
            let path = lock::write(recipe, &now)?;
            tracing::info!(lock = %path.display(), "lock written (--relock)");
            Ok(LockRecord { file: Some(path), lock: now })
        }
        None => Ok(LockRecord { file: None, lock: now }),
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
