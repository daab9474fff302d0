//! A text-only chat model for `emollama generate`: an LLM with its tokenizer, chat template and stop
//! tokens, optionally with a PEFT LoRA adapter.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use rand::SeedableRng;

use super::generate::{GenerateOptions, generate_ids_batch};
use super::llama::{KvCache, Llama};
use super::llm_load::{LlmError, LlmSpec};
use super::prompt::ChatTemplate;
use super::tokenizer::TextTokenizer;
use crate::registry::Registry;

pub struct ChatModel {
    pub spec: LlmSpec,
    pub llm: Llama,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    pub stop: Vec<u32>,
}

impl ChatModel {
    /// `quantized`: keep GGUF matrices quantized (fast CPU inference); otherwise everything is f32.
    pub fn load(registry: &Registry, name_or_path: &str, adapter: Option<&Path>, quantized: bool) -> Result<Self, LlmError> {
        let spec = LlmSpec::resolve(registry, name_or_path)?;
        let tokenizer = spec.tokenizer()?.ok_or_else(|| LlmError::Invalid {
            name: spec.name.clone(),
            detail: "its tokenizer is built from a training corpus: run a recipe with it instead".into(),
        })?;
        let llm = spec.build_with_adapter(adapter, quantized, &Device::Cpu)?;
        let template = spec.chat_template(spec.template);
        let stop = spec.stop_ids(&tokenizer);
        Ok(Self { spec, llm, tokenizer, template, stop })
    }

    /// Token ids of one user turn in the model's template (`raw`: the text as is), BOS first when the
    /// model uses one.
    pub fn prompt_ids(&self, user: &str, raw: bool) -> Result<Vec<u32>, LlmError> {
        let text = if raw { user.to_string() } else { self.template.wrap(user) };
        let mut ids: Vec<u32> = self.tokenizer.bos.into_iter().collect();
        ids.extend(self.tokenizer.encode(&text)?);
        Ok(ids)
    }

    /// Generates one answer per prompt (batched, left-padded), as token ids.
    pub fn generate_ids(&self, prompts: &[Vec<u32>], opts: &GenerateOptions, seed: u64) -> Result<Vec<Vec<u32>>, LlmError> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let berr = |source| LlmError::Build { name: self.spec.name.clone(), source };
        generate_ids_batch(&self.llm, prompts, self.tokenizer.pad, &self.stop, opts, &mut rng).map_err(berr)
    }

    /// As [`Self::generate_ids`], decoded.
    pub fn generate(&self, prompts: &[Vec<u32>], opts: &GenerateOptions, seed: u64) -> Result<Vec<String>, LlmError> {
        self.generate_ids(prompts, opts, seed)?.iter().map(|i| Ok(self.tokenizer.decode(i)?)).collect()
    }

    /// Logits (prompts, vocab) of the first generated token of each prompt, f32.
    pub fn first_step_logits(&self, prompts: &[Vec<u32>]) -> Result<Tensor, LlmError> {
        let berr = |source| LlmError::Build { name: self.spec.name.clone(), source };
        let rows = prompts
            .iter()
            .map(|p| -> candle_core::Result<Tensor> {
                let ids = Tensor::new(p.as_slice(), self.llm.device())?.unsqueeze(0)?;
                let valid = Tensor::ones((1, p.len()), DType::U8, self.llm.device())?;
                let logits = self.llm.forward_cached(&self.llm.embed(&ids)?, &valid, &mut KvCache::new())?;
                logits.i((0, p.len() - 1))?.to_dtype(DType::F32)
            })
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(berr)?;
        Tensor::stack(&rows, 0).map_err(berr)
    }
}
