//! The command line: one module per command, each a clap `Args` struct with `run(self)`; `main.rs` parses
//! and dispatches. Helpers shared by several commands live here.

pub mod annotate;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod extract;
pub mod generate;
pub mod import;
pub mod judge;
pub mod merge;
pub mod predict;
pub mod probe;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod run;
pub mod score;
pub mod serve;

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, bail};
use emollama::media::FrameSampling;
use emollama::recipe::{LoadedRecipe, load_recipe};
use emollama::registry::Registry;

/// The registries found from the recipe's location, after validating the (possibly adjusted) recipe.
pub fn checked_registry(loaded: &LoadedRecipe, path: &Path) -> Result<Registry> {
    let registry = Registry::discover(recipe_dir(path))?;
    let errors = emollama::validate::validate(loaded, &registry);
    if !errors.is_empty() {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        bail!("recipe `{}` is invalid:\n{}", path.display(), text.join("\n"));
    }
    Ok(registry)
}

/// The folder registries are discovered from: the recipe's own.
pub fn recipe_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Loads a recipe (its errors already name file, line and key).
pub fn load(path: &Path, sets: &[String]) -> Result<LoadedRecipe> {
    load_recipe(path, sets).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads, then validates against the registries found from the recipe's location.
pub fn load_checked(path: &Path, sets: &[String]) -> Result<(LoadedRecipe, Registry)> {
    let loaded = load(path, sets)?;
    let registry = checked_registry(&loaded, path)?;
    Ok((loaded, registry))
}

/// Progress bars: on when the recipe allows them, not hidden by a flag, and stderr is a terminal.
pub fn show_progress(recipe_allows: bool, hidden: bool) -> bool {
    recipe_allows && !hidden && std::io::stderr().is_terminal()
}

/// Writes to stdout; a closed pipe (`| head`) is an error, not a panic.
pub fn write_stdout(text: &str, what: &str) -> Result<()> {
    std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()).with_context(|| format!("writing {what}"))
}

/// `uniform:N`, `midpoints:N`, `first`, `fps:F`, `segments:SxC`.
pub fn parse_sampling(spec: &str) -> Result<FrameSampling> {
    let (kind, arg) = spec.split_once(':').unwrap_or((spec, ""));
    Ok(match kind {
        "first" => FrameSampling::First,
        "uniform" => FrameSampling::Uniform { n: arg.parse().with_context(|| format!("--frames `{spec}`: expected uniform:N with N a count"))? },
        "midpoints" => FrameSampling::Midpoints { n: arg.parse().with_context(|| format!("--frames `{spec}`: expected midpoints:N with N a count"))? },
        "segments" => {
            let parsed = arg.split_once('x').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            let (segments, consecutive) = parsed.with_context(|| format!("--frames `{spec}`: expected segments:SxC, e.g. segments:8x2"))?;
            FrameSampling::Segments { segments, consecutive }
        }
        "fps" => FrameSampling::Fps { fps: arg.parse().with_context(|| format!("--frames `{spec}`: expected fps:F with F frames per second"))?, max_frames: None },
        _ => bail!("--frames `{spec}`: expected `uniform:N`, `midpoints:N`, `first`, `fps:F` or `segments:SxC`"),
    })
}

/// The exit status of a batch command (`predict`, `annotate`): 0 when every item was done, 3 when some
/// failed (`Ok(failed)`, each with its error line), 1 when nothing could run.
pub fn batch_status(outcome: anyhow::Result<usize>) -> std::process::ExitCode {
    match outcome {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
