//! `emollama data ...`: the command-line edge of [`emollama::data::inspect`].

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use emollama::data::inspect::{self, OpenOptions, Opened};
use emollama::registry::Registry;

/// Inspect and pre-fetch datasets (local, S3, HTTP) and export MER submission CSVs.
#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

impl DataArgs {
    pub fn run(self) -> Result<()> {
        dispatch(self.command)
    }
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// List a dataset's samples: id, split, label, media location.
    Ls {
        #[command(flatten)]
        at: DatasetArgs,
        /// Only this split.
        #[arg(long)]
        split: Option<String>,
        /// One JSON object per sample.
        #[arg(long)]
        json: bool,
    },
    /// Per split: samples, label counts, transcripts / descriptions / reasoning / valence / open-set
    /// labels present, and which media files exist (one listing of the root).
    Stat {
        #[command(flatten)]
        at: DatasetArgs,
        /// Skip the media listing (faster on large remote datasets).
        #[arg(long)]
        no_media: bool,
        #[arg(long)]
        json: bool,
    },
    /// Fetch a dataset's remote media into the local read-through cache (in parallel).
    Pull {
        #[command(flatten)]
        at: DatasetArgs,
        #[arg(long)]
        split: Option<String>,
    },
    /// Upload a local dataset (its root, or the generated synthetic set) to DEST, e.g. s3://bucket/prefix,
    /// keeping its layout; then point `data.roots.<name>` at DEST.
    Push {
        #[command(flatten)]
        at: DatasetArgs,
        dest: String,
    },
    /// Write the MER challenge CSV (`name, discrete, valence`) from a run's predictions.jsonl, or from a
    /// dataset split's labels.
    Export {
        /// Output format: mer-submission.
        #[arg(long, default_value = "mer-submission")]
        format: String,
        /// A run's predictions.jsonl (or the run directory).
        #[arg(long, conflicts_with = "dataset")]
        predictions: Option<PathBuf>,
        /// Dataset whose labels to export (with --split).
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        split: Option<String>,
        #[arg(long)]
        recipe: Option<PathBuf>,
        #[arg(long)]
        root: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct DatasetArgs {
    /// Dataset card name (`datasets/<name>.toml`).
    dataset: String,
    /// Take dataset roots (`data.roots`), storage options and synth settings from this recipe.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Read the dataset from this root instead (a path, file://, s3://bucket/prefix, http(s)://).
    #[arg(long)]
    root: Option<String>,
    #[arg(long)]
    no_progress: bool,
}

fn open(dataset: &str, recipe: Option<&Path>, root: Option<&str>, progress: bool) -> Result<Opened> {
    open_with(dataset, recipe, root, progress).map(|(o, _)| o)
}

fn open_with<'a>(dataset: &str, recipe: Option<&Path>, root: Option<&'a str>, progress: bool) -> Result<(Opened, OpenOptions<'a>)> {
    let (registry, mut o) = match recipe {
        Some(path) => {
            let loaded = emollama::recipe::load_recipe(path, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
            let start = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let r = loaded.recipe;
            let o = OpenOptions {
                roots: r.data.roots.clone(),
                root: None,
                storage: r.storage.clone(),
                synth: r.data.synth.clone(),
                cache_root: emollama::storage::cache_root(&r.runtime.cache_dir),
                show_progress: progress,
            };
            (Registry::discover(start)?, o)
        }
        None => (
            Registry::discover(Path::new("."))?,
            OpenOptions {
                roots: Default::default(),
                root: None,
                storage: Default::default(),
                synth: Default::default(),
                cache_root: emollama::storage::cache_root(""),
                show_progress: progress,
            },
        ),
    };
    o.root = root;
    let opened = inspect::open(&registry, dataset, &o).with_context(|| format!("opening dataset `{dataset}`"))?;
    Ok((opened, o))
}

fn dispatch(cmd: DataCommand) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    match cmd {
        DataCommand::Ls { at, split, json } => {
            let o = open(&at.dataset, at.recipe.as_deref(), at.root.as_deref(), tty && !at.no_progress)?;
            let mut out = String::new();
            for s in o.split(split.as_deref())? {
                if json {
                    out += &serde_json::to_string(s)?;
                } else {
                    out += &format!("{}\t{}\t{}\t{}", s.id, s.split, s.label.as_deref().unwrap_or("-"), s.media);
                }
                out.push('\n');
            }
            super::write_stdout(&out, "to standard output")
        }
        DataCommand::Stat { at, no_media, json } => {
            let o = open(&at.dataset, at.recipe.as_deref(), at.root.as_deref(), tty && !at.no_progress)?;
            let stats = inspect::stat(&o, !no_media)?;
            if json {
                return super::write_stdout(&(serde_json::to_string_pretty(&serde_json::json!({"dataset": o.card.name, "root": o.root.as_ref().map(|r| r.to_string()), "splits": stats}))? + "\n"), "to standard output");
            }
            let mut t = comfy_table::Table::new();
            t.set_header(vec!["split", "samples", "labels", "transcripts", "descriptions", "reasoning", "valence", "open-set", "media found"]);
            for s in &stats {
                let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k} {v}")).chain((s.unlabelled > 0).then(|| format!("(none) {}", s.unlabelled))).collect();
                let media = match (s.media_found, s.media_bytes) {
                    (Some(n), Some(b)) => format!("{n} ({:.1} MB)", b as f64 / 1e6),
                    _ => "-".into(),
                };
                t.add_row(vec![s.split.clone(), s.samples.to_string(), labels.join(", "), s.transcripts.to_string(), s.descriptions.to_string(), s.reasoning.to_string(), s.valence.to_string(), s.openset.to_string(), media]);
            }
            let root = o.root.as_ref().map(|r| r.to_string()).unwrap_or_else(|| "(generated)".into());
            super::write_stdout(&format!("dataset {} at {root}\n{t}\n", o.card.name), "to standard output")
        }
        DataCommand::Pull { at, split } => {
            let o = open(&at.dataset, at.recipe.as_deref(), at.root.as_deref(), tty && !at.no_progress)?;
            let samples = o.split(split.as_deref())?;
            let rep = inspect::pull(&o, &samples, tty && !at.no_progress);
            println!("{} samples: {} remote files in the cache ({}), {} local, {} failed", rep.samples, rep.cached, rep.cache_dir.display(), rep.local, rep.failed.len());
            for (id, e) in rep.failed.iter().take(20) {
                eprintln!("  {id}: {e}");
            }
            if !rep.failed.is_empty() {
                bail!("{} of {} media files could not be fetched; run `emollama data pull` again to retry them", rep.failed.len(), rep.samples);
            }
            Ok(())
        }
        DataCommand::Push { at, dest } => {
            let (o, opts) = open_with(&at.dataset, at.recipe.as_deref(), at.root.as_deref(), tty && !at.no_progress)?;
            let dest_loc = emollama::storage::Location::parse(&dest)?;
            let n = inspect::push(&o, &opts, &dest_loc)?;
            println!("{n} files -> {dest}; read it with --set data.roots.{}={dest}", o.card.name);
            Ok(())
        }
        DataCommand::Export { format, predictions, dataset, split, recipe, root, out } => {
            if format != "mer-submission" {
                bail!("--format `{format}`: expected mer-submission");
            }
            let rows = match (predictions, dataset) {
                (Some(p), _) => {
                    let p = if p.is_dir() { p.join("predictions.jsonl") } else { p };
                    inspect::rows_from_predictions(&p)?
                }
                (None, Some(d)) => {
                    let o = open(&d, recipe.as_deref(), root.as_deref(), tty)?;
                    let samples = o.split(split.as_deref())?;
                    inspect::rows_from_samples(&samples)
                }
                (None, None) => bail!("name what to export: --predictions FILE (a run's predictions.jsonl) or --dataset NAME [--split S]"),
            };
            let csv = inspect::submission_csv(&rows);
            match out {
                Some(path) => {
                    std::fs::write(&path, csv).with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("{} rows -> {}", rows.len(), path.display());
                    Ok(())
                }
                None => super::write_stdout(&csv, "to standard output"),
            }
        }
    }
}
