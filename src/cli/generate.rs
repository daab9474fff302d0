//! `emollama generate`: chat with an LLM.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use emollama::registry::Registry;

/// Chat with an LLM (a registry name such as `smollm2-135m-instruct`, an HF model directory or a .gguf
/// file): prints one answer per --prompt, batched.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    llm: String,
    /// A user message (repeat for a batch).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Greedy decoding (default: sampling with --temperature and --top-p).
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Replace the model's default system prompt.
    #[arg(long)]
    system: Option<String>,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Dequantize GGUF weights to f32 instead of running the quantized matmuls.
    #[arg(long)]
    dequantize: bool,
    /// Write the first generated position's logits (prompts x vocab, f32) to this safetensors file.
    #[arg(long)]
    logits_out: Option<PathBuf>,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let registry = Registry::discover(Path::new("."))?;
        let mut chat = emollama::model::chat::ChatModel::load(&registry, &self.llm, self.adapter.as_deref(), !self.dequantize)?;
        if let Some(s) = self.system {
            chat.template.system = Some(s);
        }
        let ids = self.prompt.iter().map(|p| chat.prompt_ids(p, self.raw)).collect::<std::result::Result<Vec<_>, _>>()?;
        if let Some(path) = &self.logits_out {
            let logits = chat.first_step_logits(&ids)?;
            logits.save_safetensors("logits", path).with_context(|| format!("writing --logits-out `{}`", path.display()))?;
        }
        let opts = emollama::model::generate::GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            stop_tokens: Vec::new(),
        };
        let t0 = std::time::Instant::now();
        let generated = chat.generate_ids(&ids, &opts, self.seed)?;
        let secs = t0.elapsed().as_secs_f64();
        let tokens: usize = generated.iter().map(Vec::len).sum();
        let answers = generated.iter().map(|g| chat.tokenizer.decode(g)).collect::<std::result::Result<Vec<_>, _>>()?;
        for (i, a) in answers.iter().enumerate() {
            if answers.len() > 1 {
                println!("[{i}] {a}");
            } else {
                println!("{a}");
            }
        }
        tracing::info!(llm = %chat.spec.name, weights = %chat.spec.describe(), tokens, seconds = format!("{secs:.2}"), "generated");
        Ok(())
    }
}
