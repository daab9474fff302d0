//! GGUF files (llama.cpp): the decoder config from the metadata, the weights under HF names, and the
//! tokenizer rebuilt from `tokenizer.ggml.*` with the tokenizers crate.
//!
//! llama.cpp's converter permutes the rows of `attn_q` / `attn_k` of `llama` models so that its rotary
//! kernel can rotate adjacent pairs; the model here rotates halves (HF layout), so those rows are put
//! back in HF order on load: for dense tensors after dequantizing, for quantized ones by moving whole
//! rows of blocks (quantization blocks never cross a row). LoRA adapters trained on a GGUF base are
//! therefore in HF layout too, and PEFT can read them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};

use super::llama::QuantStore;
use super::llm_config::{LlamaConfig, OneOrMany};
use super::tokenizer::TextTokenizer;
use super::weights::TensorStore;

#[derive(Debug, thiserror::Error)]
#[error("`{path}`: {detail}")]
pub struct GgufError {
    pub path: String,
    pub detail: String,
}

/// An opened GGUF file: metadata and tensor index (tensor data is read on demand).
pub struct GgufFile {
    pub path: PathBuf,
    content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let mut f = std::fs::File::open(path).map_err(|e| err(path, e))?;
        let content = Content::read(&mut f).map_err(|e| err(path, format!("not a readable GGUF file: {e}")))?;
        Ok(Self { path: path.to_path_buf(), content })
    }

    fn e(&self, detail: impl ToString) -> GgufError {
        err(&self.path, detail)
    }

    fn meta(&self, key: &str) -> Result<&Value, GgufError> {
        self.content.metadata.get(key).ok_or_else(|| self.e(format!("metadata `{key}` is missing")))
    }

    fn meta_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.meta(key)?.to_u32().map_err(|e| self.e(format!("metadata `{key}`: {e}")))
    }

    fn meta_str(&self, key: &str) -> Option<String> {
        self.content.metadata.get(key).and_then(|v| v.to_string().ok().cloned())
    }

    pub fn architecture(&self) -> Result<String, GgufError> {
        self.meta_str("general.architecture").ok_or_else(|| self.e("metadata `general.architecture` is missing"))
    }

    /// The decoder config in HF terms.
    pub fn config(&self) -> Result<LlamaConfig, GgufError> {
        let arch = self.architecture()?;
        if !super::llm_config::MODEL_TYPES.contains(&arch.as_str()) {
            return Err(self.e(format!("unknown architecture `{arch}`; supported: {}", super::llm_config::MODEL_TYPES.join(", "))));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let heads = self.meta_u32(&k("attention.head_count"))? as usize;
        let hidden = self.meta_u32(&k("embedding_length"))? as usize;
        let vocab = match self.content.metadata.get("tokenizer.ggml.tokens") {
            Some(Value::Array(v)) => v.len(),
            _ => self.meta_u32(&k("vocab_size"))? as usize,
        };
        let rope_dim = self.meta_u32(&k("rope.dimension_count")).map(|d| d as usize).unwrap_or(hidden / heads);
        let cfg = LlamaConfig {
            model_type: arch.clone(),
            hidden_size: hidden,
            intermediate_size: self.meta_u32(&k("feed_forward_length"))? as usize,
            num_hidden_layers: self.meta_u32(&k("block_count"))? as usize,
            num_attention_heads: heads,
            num_key_value_heads: Some(self.meta_u32(&k("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads)),
            head_dim: Some(rope_dim),
            vocab_size: vocab,
            rms_norm_eps: self.meta(&k("attention.layer_norm_rms_epsilon"))?.to_f32().map_err(|e| self.e(e))? as f64,
            rope_theta: self.content.metadata.get(&k("rope.freq_base")).and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0) as f64,
            rope_scaling: self.rope_scaling(&arch)?,
            max_position_embeddings: self.meta_u32(&k("context_length")).map(|v| v as usize).unwrap_or(2048),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: false,
            bos_token_id: self.meta_u32("tokenizer.ggml.bos_token_id").ok(),
            eos_token_id: self.meta_u32("tokenizer.ggml.eos_token_id").ok().map(OneOrMany::One),
        };
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(self.e("rope_freqs (LLaMA-3 rope scaling stored as a tensor) is not supported"));
        }
        cfg.validate().map_err(|m| self.e(m))?;
        Ok(cfg)
    }

    /// llama.cpp's rotary scaling metadata (`{arch}.rope.scaling.type` = none | linear | yarn, with
    /// `.factor`, `.original_context_length`, `.attn_factor`) in HF terms; other types are refused by name.
    fn rope_scaling(&self, arch: &str) -> Result<Option<super::llm_config::RopeScaling>, GgufError> {
        let key = format!("{arch}.rope.scaling.type");
        let Some(kind) = self.meta_str(&key) else { return Ok(None) };
        let num = |s: &str| self.content.metadata.get(&format!("{arch}.rope.scaling.{s}")).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_u32().ok().map(f64::from)));
        let mut scaling: super::llm_config::RopeScaling = match kind.as_str() {
            "none" => return Ok(None),
            "linear" | "yarn" => serde_json::from_value(serde_json::json!({ "rope_type": kind })).map_err(|e| self.e(e))?,
            other => return Err(self.e(format!("metadata `{key}` = `{other}` is not supported (none, linear, yarn)"))),
        };
        scaling.factor = num("factor").unwrap_or(1.0);
        if kind == "yarn" {
            scaling.original_max_position_embeddings = num("original_context_length").map(|v| v as usize);
            // llama.cpp multiplies its own YaRN scale by attn_factor; HF's attention_factor replaces it.
            // Only the neutral value maps without doubt.
            if let Some(a) = num("attn_factor").filter(|a| *a != 1.0) {
                return Err(self.e(format!("metadata `{arch}.rope.scaling.attn_factor` = {a} is not supported (1)")));
            }
        }
        Ok(Some(scaling))
    }

    /// The default system prompt of the embedded chat template, if it has one
    /// (`<|im_start|>system\n...<|im_end|>` for ChatML models).
    pub fn default_system_prompt(&self) -> Option<String> {
        let t = self.meta_str("tokenizer.chat_template")?;
        let start = t.find("<|im_start|>system\n")? + "<|im_start|>system\n".len();
        let end = t[start..].find("<|im_end|>")? + start;
        Some(t[start..end].to_string())
    }

    fn read(&self, name: &str, dev: &Device) -> Result<QTensor, GgufError> {
        let mut f = std::fs::File::open(&self.path).map_err(|e| self.e(e))?;
        self.content.tensor(&mut f, name, dev).map_err(|e| self.e(format!("tensor `{name}`: {e}")))
    }

    /// Every tensor under its HF name, with q/k rows in HF order: matrices quantized (`quant`, keyed
    /// `prefix + name`) when `keep_quantized`, everything else dequantized to f32 in the store.
    pub fn load(&self, cfg: &LlamaConfig, prefix: &str, keep_quantized: bool, dev: &Device) -> Result<(TensorStore, QuantStore), GgufError> {
        let mut dense = HashMap::new();
        let mut quant = QuantStore::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for gguf_name in names {
            let Some(hf) = hf_name(gguf_name) else {
                tracing::debug!(tensor = %gguf_name, "GGUF tensor not used by the model");
                continue;
            };
            let mut q = self.read(gguf_name, dev)?;
            let heads = if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") {
                Some(cfg.num_attention_heads)
            } else if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") {
                Some(cfg.kv_heads())
            } else {
                None
            };
            let permuted = cfg.model_type == "llama" && heads.is_some();
            let is_matrix = q.shape().rank() == 2 && !hf.contains("embed_tokens");
            let quantized = !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            if keep_quantized && is_matrix && quantized {
                if let (true, Some(h)) = (permuted, heads) {
                    q = unpermute_quantized(&q, h, dev).map_err(|e| self.e(format!("tensor `{gguf_name}`: {e}")))?;
                }
                if !has_simd_kernel(q.dtype()) {
                    // candle's CPU matmul for these types is scalar code (~5x slower than llama.cpp); Q8_0
                    // has an AVX kernel and represents a 4/5-bit block almost exactly (error < 0.4 % of the
                    // block's largest value), at twice the memory of Q4_1.
                    let t = q.dequantize(dev).map_err(|e| self.e(format!("tensor `{gguf_name}`: {e}")))?;
                    q = QTensor::quantize(&t, GgmlDType::Q8_0).map_err(|e| self.e(format!("tensor `{gguf_name}`: {e}")))?;
                }
                quant.insert(format!("{prefix}{hf}"), std::sync::Arc::new(q));
                continue;
            }
            // Tied embeddings are also the output matrix: keep a quantized copy for a fast lm_head.
            if keep_quantized && hf == "model.embed_tokens.weight" && quantized && cfg.tie_word_embeddings {
                let t = q.dequantize(dev).map_err(|e| self.e(e))?;
                dense.insert(hf.clone(), t);
                quant.insert(format!("{prefix}{hf}"), std::sync::Arc::new(q));
                continue;
            }
            let mut t = q.dequantize(dev).map_err(|e| self.e(format!("tensor `{gguf_name}`: {e}")))?;
            if let (true, Some(h)) = (permuted, heads) {
                t = unpermute_dense(&t, h).map_err(|e| self.e(format!("tensor `{gguf_name}`: {e}")))?;
            }
            dense.insert(hf, t.to_dtype(DType::F32).map_err(|e| self.e(e))?);
        }
        Ok((TensorStore::Memory { origin: self.path.clone(), tensors: dense }, quant))
    }

    /// The tokenizer stored in the metadata: `tokenizer.ggml.model = gpt2` (byte-level BPE with merges:
    /// SmolLM2, Qwen2) or `llama` (SentencePiece BPE with byte fallback, scores and no merges: LLaMA-2).
    pub fn tokenizer(&self) -> Result<TextTokenizer, GgufError> {
        let model = self.meta_str("tokenizer.ggml.model").unwrap_or_default();
        let strings = |key: &str| -> Result<Vec<String>, GgufError> {
            match self.meta(key)? {
                Value::Array(v) => v.iter().map(|x| x.to_string().cloned().map_err(|e| self.e(format!("`{key}`: {e}")))).collect(),
                _ => Err(self.e(format!("metadata `{key}` is not an array"))),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match self.content.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(v)) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), i.into());
            // 3 = control, 4 = user-defined: matched whole, before BPE.
            if let Some(&ty @ (3 | 4)) = types.get(i) {
                added.push(serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == 3}));
            }
        }
        let id = |key: &str| self.meta_u32(key).ok();
        let json = match model.as_str() {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?;
                let pre = self.meta_str("tokenizer.ggml.pre").unwrap_or_default();
                let byte_level = |use_regex: bool| serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
                let pre_tokenizer = match pre.as_str() {
                    "smollm" => serde_json::json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                    "qwen2" => serde_json::json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false}, byte_level(false)]}),
                    other => {
                        tracing::warn!(pre = other, "GGUF pre-tokenizer not known; using GPT-2 byte-level splitting");
                        byte_level(true)
                    }
                };
                serde_json::json!({
                    "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                    "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
                    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                        "vocab": vocab, "merges": merges}
                })
            }
            "llama" => {
                let scores: Vec<f32> = match self.meta("tokenizer.ggml.scores")? {
                    Value::Array(v) => v.iter().map(|x| x.to_f32().unwrap_or(0.0)).collect(),
                    _ => return Err(self.e("metadata `tokenizer.ggml.scores` is not an array")),
                };
                let unk = id("tokenizer.ggml.unknown_token_id").and_then(|i| tokens.get(i as usize)).cloned();
                serde_json::json!({
                    "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]},
                    "pre_tokenizer": null, "post_processor": null,
                    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
                    "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                        "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                        "vocab": vocab, "merges": sentencepiece_merges(&tokens, &scores, &types)}
                })
            }
            other => {
                return Err(self.e(format!(
                    "tokenizer model `{other}` in the GGUF metadata is not supported (`gpt2` byte-level BPE and `llama` SentencePiece are); give the model's tokenizer.json in the manifest's [tokenizer]"
                )));
            }
        };
        let inner = tokenizers::Tokenizer::from_str(&json.to_string()).map_err(|e| self.e(format!("rebuilding the tokenizer: {e}")))?;
        let eos = id("tokenizer.ggml.eos_token_id").ok_or_else(|| self.e("metadata `tokenizer.ggml.eos_token_id` is missing"))?;
        let add_bos = self.content.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(model == "llama");
        let bos = id("tokenizer.ggml.bos_token_id").filter(|_| add_bos);
        Ok(TextTokenizer::with_specials(inner, bos, eos, id("tokenizer.ggml.padding_token_id").unwrap_or(eos), id("tokenizer.ggml.unknown_token_id").unwrap_or(eos)))
    }
}

/// BPE merges for a SentencePiece vocabulary, which stores scores instead (as transformers derives them):
/// every split of a normal piece into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's score, highest first (ties: vocabulary order).
fn sentencepiece_merges(tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types.get(i).is_some_and(|&t| t != 1) {
            continue;
        }
        let mut local: Vec<(usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| Some((*index.get(&piece[..at])?, *index.get(&piece[at..])?)))
            .collect();
        local.sort_unstable();
        let score = scores.get(i).copied().unwrap_or(0.0);
        for (l, r) in local {
            merges.push((score, merges.len(), l, r));
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    merges.into_iter().map(|(_, _, l, r)| (tokens[l].clone(), tokens[r].clone())).collect()
}

/// Quantized types with a SIMD CPU dot product: candle's (0.11 `quantized/avx.rs`) or ours (Q4_1,
/// `accel::quant_gemv`).
fn has_simd_kernel(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0 | GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K | GgmlDType::Q8K)
}

/// Qwen2's pre-tokenizer split (as in its tokenizer.json).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn err(path: &Path, detail: impl ToString) -> GgufError {
    GgufError { path: path.display().to_string(), detail: detail.to_string() }
}

/// llama.cpp tensor names → HF names.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Inverse of llama.cpp's q/k permutation on the first dimension: GGUF row `h·d + 2i + j` is HF row
/// `h·d + j·d/2 + i`.
fn hf_row_of(gguf_row: usize, head_dim: usize) -> usize {
    let (h, r) = (gguf_row / head_dim, gguf_row % head_dim);
    h * head_dim + (r % 2) * (head_dim / 2) + r / 2
}

pub fn unpermute_dense(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    t.reshape((heads, hd / 2, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

fn unpermute_quantized(q: &QTensor, heads: usize, dev: &Device) -> candle_core::Result<QTensor> {
    let (rows, cols) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    if data.len() != rows * row_bytes {
        candle_core::bail!("unexpected data size {} for {rows} rows of {row_bytes} bytes", data.len());
    }
    let hd = rows / heads;
    let mut out = vec![0u8; data.len()];
    for g in 0..rows {
        let h = hf_row_of(g, hd);
        out[h * row_bytes..(h + 1) * row_bytes].copy_from_slice(&data[g * row_bytes..(g + 1) * row_bytes]);
    }
    QTensor::new(QStorage::from_data(std::borrow::Cow::Owned(out), dev, dtype)?, (rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(hf_name("blk.3.attn_q.weight").as_deref(), Some("model.layers.3.self_attn.q_proj.weight"));
        assert_eq!(hf_name("blk.0.ffn_down.weight").as_deref(), Some("model.layers.0.mlp.down_proj.weight"));
        assert_eq!(hf_name("blk.0.attn_k.bias").as_deref(), Some("model.layers.0.self_attn.k_proj.bias"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    /// llama.cpp's permutation (reshape (heads, 2, d/2, cols), swap axes 1 and 2) followed by ours is
    /// the identity, for dense and for quantized rows.
    #[test]
    fn unpermute_inverts_llama_cpp_permutation() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (heads, hd, cols) = (3, 8, 64);
        let w = Tensor::arange(0f32, (heads * hd * cols) as f32, &dev)?.reshape((heads * hd, cols))?;
        let permuted = w.reshape((heads, 2, hd / 2, cols))?.transpose(1, 2)?.contiguous()?.reshape((heads * hd, cols))?;
        let back = unpermute_dense(&permuted, heads)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        let q = QTensor::quantize(&permuted, candle_core::quantized::GgmlDType::Q8_0)?;
        let qb = unpermute_quantized(&q, heads, &dev)?.dequantize(&dev)?;
        let direct = unpermute_dense(&q.dequantize(&dev)?, heads)?;
        assert_eq!(qb.to_vec2::<f32>()?, direct.to_vec2::<f32>()?);
        Ok(())
    }
}
