//! Training memory per stage and dtype: exact for weights and optimiser state, an estimate for
//! activations.
//!
//! - Frozen weights: frozen parameters × the dtype's bytes (f32 4, bf16 / f16 2), except the encoders'
//!   norms, biases, convolutions and position embeddings, kept in f32 (4 bytes).
//! - Trainable state: trainable parameters × 16 bytes, whatever the dtype, because the trainable
//!   parameters and the optimiser stay f32 (`runtime.dtype`): weights 4 + gradients 4 + AdamW's two
//!   moments 8.
//! - Activations (estimate) for one micro-batch of `b` sequences of `T` tokens through an LLM of `L`
//!   layers, width `h`, MLP width `i`, `a` heads and vocabulary `V`, kept for the backward pass:
//!
//!   `b·T·L·(10·h + 4·i + 2·a·T)·s + b·T·V·8`
//!
//!   per layer and token: the two residual inputs and their RMS-normed copies (4h), q, k, v (3h), the
//!   rotated q and k (2h), the attention output (h); the MLP's gate, up, SiLU(gate) and product (4i); the
//!   attention scores and probabilities (2·a·T, no fused attention kernel); `s` is the dtype's bytes. The
//!   logits and their gradient are f32 (8 bytes per vocabulary entry), and in bf16 / f16 the loss head's
//!   weight is cast to f32 for them (`V·h·4`). Gradients flow back through every
//!   layer even with the base frozen (to reach LoRA and the projectors), so all layers count. The frozen
//!   encoders run without gradient (or not at all, with the feature cache) and are left out.

use serde::Serialize;

use crate::model::llama::LlamaConfig;

pub const DTYPES: [&str; 3] = ["f32", "bf16", "f16"];

/// Bytes per element of a dtype name.
pub fn dtype_bytes(dtype: &str) -> u64 {
    match dtype {
        "bf16" | "f16" => 2,
        _ => 4,
    }
}

/// One stage at one dtype.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    pub stage: String,
    pub dtype: String,
    pub frozen_weights: u64,
    /// Frozen parameters kept in f32 whatever the dtype (the encoders' norms, biases, convolutions and
    /// position embeddings), included in `frozen_weights`.
    pub frozen_f32_params: u64,
    /// Trainable weights, gradients and AdamW moments (f32).
    pub trainable_state: u64,
    /// Estimate (see the module doc).
    pub activations: u64,
    pub total: u64,
    /// The micro-batch and sequence length the activation estimate is for.
    pub batch_size: usize,
    pub seq_len: usize,
}

/// Bytes of activations kept for backward (the formula in the module doc).
pub fn activation_bytes(cfg: &LlamaConfig, batch: usize, seq: usize, dtype: &str, checkpointing: bool) -> u64 {
    let (b, t) = (batch as u64, seq as u64);
    let (l, h, i, a, v) = (cfg.num_hidden_layers as u64, cfg.hidden_size as u64, cfg.intermediate_size as u64, cfg.num_attention_heads as u64, cfg.vocab_size as u64);
    let s = dtype_bytes(dtype);
    let layer = b * t * (10 * h + 4 * i + 2 * a * t) * s;
    // The loss head runs in f32 (`Llama::lm_head_f32`): in bf16 / f16 its weight is cast for the product.
    let logits = b * t * v * 8 + if s < 4 { v * h * 4 } else { 0 };
    if checkpointing { b * t * l * h * s + 2 * layer + logits } else { l * layer + logits }
}

pub struct StageLoad<'a> {
    pub stage: &'a str,
    pub trainable: u64,
    /// Frozen parameters kept in the run's dtype (the LLM's, the encoders' weight matrices).
    pub frozen: u64,
    /// Frozen parameters kept in f32 (the encoders' others).
    pub frozen_f32: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    /// `runtime.activation_checkpointing`.
    pub checkpointing: bool,
}

/// The estimate of one stage at `dtype`.
pub fn estimate(cfg: &LlamaConfig, load: &StageLoad, dtype: &str) -> MemoryEstimate {
    let frozen_weights = load.frozen * dtype_bytes(dtype) + load.frozen_f32 * 4;
    let trainable_state = load.trainable * 16;
    let activations = activation_bytes(cfg, load.batch_size, load.seq_len, dtype, load.checkpointing);
    MemoryEstimate {
        stage: load.stage.to_string(),
        dtype: dtype.to_string(),
        frozen_weights,
        frozen_f32_params: load.frozen_f32,
        trainable_state,
        activations,
        total: frozen_weights + trainable_state + activations,
        batch_size: load.batch_size,
        seq_len: load.seq_len,
    }
}

/// `13.5 GB` (decimal units, as GPU memory is sold).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        _ => format!("{bytes} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama2_7b() -> LlamaConfig {
        LlamaConfig { hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32, vocab_size: 32000, ..LlamaConfig::default() }
    }

    /// The arithmetic by hand for Emotion-LLaMA's sizes: LLaMA-2-7B frozen in bf16, the 74,993,664 trainable
    /// parameters in f32 with AdamW, one 600-token sequence.
    #[test]
    fn memory_arithmetic() {
        let cfg = llama2_7b();
        let load = StageLoad { stage: "s", trainable: 74_993_664, frozen: 6_738_415_616, frozen_f32: 0, batch_size: 1, seq_len: 600, checkpointing: false };
        let m = estimate(&cfg, &load, "bf16");
        assert_eq!(m.frozen_weights, 13_476_831_232);
        assert_eq!(m.trainable_state, 74_993_664 * 16);
        // 600 · 32 · (40960 + 44032 + 2·32·600) · 2 + 600 · 32000 · 8
        let per_token_layer = 10 * 4096 + 4 * 11008 + 2 * 32 * 600;
        assert_eq!(per_token_layer, 123_392);
        assert_eq!(m.activations, 600 * 32 * 123_392 * 2 + 600 * 32_000 * 8 + 32_000 * 4096 * 4);
        assert_eq!(m.total, m.frozen_weights + m.trainable_state + m.activations);
        let f32 = estimate(&cfg, &load, "f32");
        assert_eq!(f32.frozen_weights, 2 * m.frozen_weights);
        assert_eq!(f32.trainable_state, m.trainable_state, "trainable state is f32 at every dtype");
        assert_eq!(estimate(&cfg, &load, "f16"), MemoryEstimate { dtype: "f16".into(), ..m });
        // Twice the batch: twice the activations.
        let b2 = estimate(&cfg, &StageLoad { batch_size: 2, ..load }, "bf16");
        let head = 32_000 * 4096 * 4;
        assert_eq!(b2.activations - head, 2 * (m.activations - head));
        assert_eq!(human(13_476_831_232), "13.5 GB");
        // Encoders stay f32; checkpointing keeps each layer's input plus one layer (and its gradients).
        let ck = estimate(&cfg, &StageLoad { frozen_f32: 1_000, checkpointing: true, ..load }, "bf16");
        assert_eq!(ck.frozen_weights, m.frozen_weights + 4_000);
        assert_eq!(ck.activations, 600 * 32 * 4096 * 2 + 2 * 600 * 123_392 * 2 + 600 * 32_000 * 8 + 32_000 * 4096 * 4);
    }
}
