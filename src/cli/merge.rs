//! `emollama merge`: fold a LoRA adapter into its base LLM.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use emollama::registry::Registry;

/// Merge a PEFT LoRA adapter into its base LLM and write an HF model directory (config.json +
/// model.safetensors, f32) that transformers and `--llm PATH` load without peft.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    llm: String,
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let registry = Registry::discover(Path::new("."))?;
        let spec = emollama::model::llm_load::LlmSpec::resolve(&registry, &self.llm)?;
        let model = spec.build_with_adapter(Some(&self.adapter), false, &candle_core::Device::Cpu)?;
        let n = model.export_merged(&self.out).with_context(|| format!("writing the merged model to `{}`", self.out.display()))?;
        // The tokenizer travels with the model: copied, or rebuilt from GGUF metadata.
        if let Some(t) = spec.tokenizer_json() {
            std::fs::copy(&t, self.out.join("tokenizer.json")).with_context(|| format!("copying `{}`", t.display()))?;
        } else if let Ok(Some(tok)) = spec.tokenizer() {
            tok.save(&self.out.join("tokenizer.json"))?;
        }
        println!("merged {} into {} tensors: {}", self.adapter.display(), n, self.out.display());
        Ok(())
    }
}
