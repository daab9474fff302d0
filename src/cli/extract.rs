//! `emollama extract`: a frozen encoder's features for files, folders, datasets or preprocessed tensors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use emollama::extract::{self, ExtractOptions, Format};
use emollama::model::encoders::FrozenEncoder;
use emollama::model::encoders::features::Pooling;
use emollama::registry::Registry;

/// Features of a frozen encoder (HuBERT, ViT-MAE, VideoMAE, EVA ViT-g) for a media file, a folder,
/// a recipe's dataset, or a safetensors file of preprocessed input; resumable.
#[derive(clap::Args)]
pub struct Args {
    /// A registered encoder (`emollama registry list`), a manifest .toml, or an HF model directory.
    #[arg(long)]
    encoder: String,
    /// A media file, a folder of them, a recipe .toml (its dataset), or a .safetensors file holding
    /// `input_values` (batch, samples) or `pixel_values` (batch, [frames,] 3, H, W). Files and folders
    /// may be remote: s3://bucket/prefix, http(s)://.
    #[arg(long)]
    input: String,
    /// Output .safetensors file (or a folder with --format npy).
    #[arg(long)]
    out: PathBuf,
    /// none | mean | cls | mean_patch | merge4 | tokens (default: the manifest's). `none` writes every
    /// hidden state as `hidden_states.N`; `tokens` the selected layers' tokens of every frame.
    #[arg(long)]
    pooling: Option<String>,
    /// Hidden states summed into the feature, e.g. `-1` or `-4,-3,-2,-1` (default: the manifest's).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    layers: Option<Vec<i64>>,
    /// Run audio in chunks of this many seconds (MERBench: 10); 0 = whole utterance.
    #[arg(long)]
    chunk_seconds: Option<f64>,
    /// safetensors (one file) or npy (a folder of per-sample .npy files, MERTools style).
    #[arg(long, default_value = "safetensors")]
    format: String,
    /// Frames for visual encoders: `uniform:N`, `midpoints:N`, `first`, `fps:F`, `segments:SxC` (default: the manifest's).
    #[arg(long)]
    frames: Option<String>,
    /// Resample audio that is not at the encoder's rate or not mono (otherwise an error).
    #[arg(long)]
    resample: bool,
    /// Seed of random weights (encoders whose manifest says `source = "random"`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let show_progress = super::show_progress(true, self.no_progress);
        let registry = Registry::discover(Path::new(".")).ok();
        let (manifest_path, manifest) = extract::resolve_encoder(registry.as_ref(), &self.encoder)?;
        let mut spec = manifest.features.clone();
        if let Some(p) = &self.pooling {
            spec.pooling = Pooling::from_name(p).with_context(|| format!("--pooling `{p}`: expected one of {}", Pooling::NAMES.join(", ")))?;
        }
        if let Some(l) = self.layers {
            spec.layers = l;
        }
        if let Some(c) = self.chunk_seconds {
            if !c.is_finite() || c < 0.0 {
                bail!("--chunk-seconds {c}: expected a number of seconds >= 0");
            }
            spec.chunk_seconds = (c > 0.0).then_some(c);
        }
        let format = Format::from_name(&self.format).with_context(|| format!("--format `{}`: expected safetensors or npy", self.format))?;
        let frames = self.frames.as_deref().map(super::parse_sampling).transpose()?;
        let mut m = manifest.clone();
        m.features = spec.clone();
        let t0 = std::time::Instant::now();
        let enc = FrozenEncoder::load(&manifest_path, &m, self.seed, &candle_core::Device::Cpu)?;
        tracing::info!(encoder = %enc.name, architecture = %enc.architecture, seconds = format!("{:.1}", t0.elapsed().as_secs_f64()), "encoder loaded");
        let opts = ExtractOptions { spec, format, out: self.out.clone(), frames, resample: self.resample, frame_batch: 8, show_progress };
        let storage = emollama::storage::Storage::new(Default::default(), &emollama::storage::cache_root(""))?;
        if self.input.ends_with(".safetensors") {
            if format != Format::Safetensors {
                bail!("--format npy is for media inputs; a preprocessed tensor file gives one safetensors file");
            }
            let input = storage.local(&emollama::storage::Location::parse(&self.input)?)?;
            let n = extract::extract_tensor_file(&enc, &input, &opts)?;
            println!("{n} tensors from `{}` -> {}", self.input, self.out.display());
            return Ok(());
        }
        let items = extract::list_inputs_at(&self.input, &storage, show_progress)?;
        let s = extract::extract_items(&enc, &items, &opts)?;
        println!("{} samples extracted, {} already done; {} tensors in {}", s.extracted, s.skipped_done, s.keys, s.out.display());
        Ok(())
    }
}
