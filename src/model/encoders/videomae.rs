//! VideoMAE's encoder as HF `VideoMAEModel` runs it (the temporal view in Emotion-LLaMA): tubelet patch
//! embedding, a fixed sinusoidal position table, and the ViT blocks of `vit_block` with VideoMAE's
//! q/v-only attention bias.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Activation, LayerNorm, Module, VarBuilder};

use crate::accel::Linear;
use serde::{Deserialize, Serialize};

use super::vit_block::{HF_VIT, QkvBias, VitBlockSpec, VitEncoder};
use super::vit_mae::{
    check_image, check_patching, default_hidden_size, default_image_size,
    default_intermediate_size, default_layer_norm_eps, default_num_channels, default_num_heads, default_num_layers,
    default_patch_size, last_state, patch_projection, yes,
};

/// `config.json` keys of VideoMAE that never change the encoder's output: ViT-MAE's (the same dropouts,
/// pre-training decoder and loss keys), with the reasons there. transformers 5 writes `qv_bias` for 4.x's
/// `qkv_bias`: both are read ([`check_hf_keys`]).
pub const HF_IGNORED: &[(&str, &str)] = super::vit_mae::HF_IGNORED;

/// Checks an HF `config.json` object before it is read: transformers 5's `qv_bias` becomes `qkv_bias`
/// (both present and different is an error), unknown keys are named in a warning (and returned).
pub fn check_hf_keys(path: &std::path::Path, obj: &mut serde_json::Map<String, serde_json::Value>) -> std::result::Result<Vec<String>, crate::model::hf_config::KeyError> {
    use crate::model::hf_config;
    hf_config::rename(path, obj, "qkv_bias", "qv_bias")?;
    Ok(hf_config::warn_unknown_for::<VideoMAEConfig>(path, obj, HF_IGNORED))
}

/// The fields of HF `VideoMAEConfig` (`config.json`) the encoder reads; decoder and training keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoMAEConfig {
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
    #[serde(default = "default_num_frames")]
    pub num_frames: usize,
    /// Frames per tubelet (the temporal kernel and stride of the patch embedding).
    #[serde(default = "default_tubelet_size")]
    pub tubelet_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_num_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// HF `gelu` is the exact (erf) GELU.
    #[serde(default)]
    pub hidden_act: Activation,
    /// Separate `q_bias` and `v_bias` (the key projection never has a bias).
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// True: no final layernorm in the model (the classifier mean-pools, then applies its own `fc_norm`).
    #[serde(default = "yes")]
    pub use_mean_pooling: bool,
}

fn default_num_frames() -> usize {
    16
}
fn default_tubelet_size() -> usize {
    2
}

impl VideoMAEConfig {
    /// Patches per side of a frame.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per clip: tubelets in time × patches per frame.
    pub fn num_patches(&self) -> usize {
        (self.num_frames / self.tubelet_size) * self.grid_size() * self.grid_size()
    }

    fn block(&self) -> VitBlockSpec {
        VitBlockSpec {
            hidden_size: self.hidden_size,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
            bias: if self.qkv_bias { QkvBias::QueryValue } else { QkvBias::None },
            names: &HF_VIT,
        }
    }

    fn validate(&self) -> Result<()> {
        check_patching(self.image_size, self.patch_size, "VideoMAE")?;
        if self.tubelet_size == 0 || !self.num_frames.is_multiple_of(self.tubelet_size) {
            candle_core::bail!(
                "VideoMAE num_frames {} is not a multiple of tubelet_size {}",
                self.num_frames,
                self.tubelet_size
            );
        }
        self.block().validate("VideoMAE")
    }
}

/// HF `get_sinusoid_encoding_table(n, dim)`: entry (pos, j) is pos / 10000^(2⌊j/2⌋/dim), through sin
/// for even j and cos for odd j, computed in f64 as HF's numpy does. Shape (n, dim).
pub fn sinusoid_position_table(n: usize, dim: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut table = Vec::with_capacity(n * dim);
    for pos in 0..n {
        for j in 0..dim {
            let angle = pos as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            table.push(if j % 2 == 0 { angle.sin() } else { angle.cos() });
        }
    }
    Tensor::from_vec(table, (n, dim), dev)?.to_dtype(dtype)
}

/// The mean over tokens of a (B, tokens, hidden) state, (B, hidden): what `VideoMAEForVideoClassification`
/// computes from `last_hidden_state` when `use_mean_pooling` is set, before its `fc_norm` layernorm (a
/// classifier weight, not part of `VideoMAEModel`) and its linear head.
pub fn mean_pool(hidden: &Tensor) -> Result<Tensor> {
    if hidden.rank() != 3 {
        candle_core::bail!("mean_pool expects (batch, tokens, hidden), got {:?}", hidden.dims());
    }
    hidden.mean(1)
}

/// HF `VideoMAEModel` (no masking: every tubelet is kept).
#[derive(Debug, Clone)]
pub struct VideoMAEModel {
    cfg: VideoMAEConfig,
    /// (1, tokens, hidden): HF's fixed table, or a learned one when the checkpoint has it.
    position_embeddings: Tensor,
    patch: Linear,
    encoder: VitEncoder,
    /// Only when `use_mean_pooling` is false.
    layernorm: Option<LayerNorm>,
}

impl VideoMAEModel {
    /// `vb` at the model root (`embeddings.patch_embeddings.projection.weight`, `encoder.layer.0…`, and
    /// `layernorm.weight` unless `use_mean_pooling`). HF keeps the position table out of checkpoints and
    /// recomputes it; a checkpoint that stores `embeddings.position_embeddings` (1, tokens, hidden) wins.
    pub fn new(cfg: &VideoMAEConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let position_embeddings = if emb.contains_tensor("position_embeddings") {
            emb.get((1, cfg.num_patches(), h), "position_embeddings")?
        } else {
            sinusoid_position_table(cfg.num_patches(), h, vb.dtype(), vb.device())?.unsqueeze(0)?
        };
        let (t, p) = (cfg.tubelet_size, cfg.patch_size);
        let patch = patch_projection(&[cfg.num_channels, t, p, p], h, emb.pp("patch_embeddings").pp("projection"))?;
        let layernorm = if cfg.use_mean_pooling {
            None
        } else {
            Some(candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm"))?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            position_embeddings,
            patch,
            encoder: VitEncoder::new(&cfg.block(), cfg.num_hidden_layers, vb.pp("encoder"))?,
            layernorm,
        })
    }

    pub fn config(&self) -> &VideoMAEConfig {
        &self.cfg
    }

    /// (B, T, C, H, W) → (B, tokens, hidden), tokens ordered (tubelet, row, column) as HF's conv3d output.
    fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, frames, c, h, w) = match pixel_values.dims() {
            &[b, t, c, h, w] => (b, t, c, h, w),
            d => candle_core::bail!(
                "VideoMAE expects pixel_values of shape (batch, frames, channels, height, width), got {d:?}"
            ),
        };
        let cfg = &self.cfg;
        let ts = cfg.tubelet_size;
        if frames % ts != 0 {
            candle_core::bail!("VideoMAE clip of {frames} frames is not divisible into tubelets of tubelet_size {ts} frames");
        }
        if frames != cfg.num_frames {
            candle_core::bail!(
                "VideoMAE clip has {frames} frames, the config expects num_frames {} (the position table covers {} \
                 tokens)",
                cfg.num_frames,
                cfg.num_patches()
            );
        }
        check_image(c, h, w, cfg.num_channels, cfg.image_size, "VideoMAE")?;
        let (p, g, gt) = (cfg.patch_size, cfg.grid_size(), frames / ts);
        // (B, gt, ts, C, gh, p, gw, p) → (B, gt, gh, gw, C, ts, p, p): the conv3d weight's (C, t, kh, kw) order.
        let patches = pixel_values
            .to_dtype(self.position_embeddings.dtype())?
            .reshape(vec![b, gt, ts, c, g, p, g, p])?
            .permute(vec![0, 1, 4, 6, 3, 2, 5, 7])?
            .reshape((b, gt * g * g, c * ts * p * p))?;
        self.patch.forward(&patches)?.broadcast_add(&self.position_embeddings)
    }

    /// Every hidden state as HF `output_hidden_states`: the embeddings, then each layer's output
    /// (`num_hidden_layers + 1` tensors of (B, tokens, hidden)); the final layernorm is not applied.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        self.encoder.forward(self.embed(pixel_values)?)
    }

    /// HF `last_hidden_state`: the last layer's output, through the final `layernorm` when
    /// `use_mean_pooling` is false (unchanged otherwise).
    pub fn forward_last(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.final_layernorm(&last_state(self.forward(pixel_values)?)?)
    }

    /// The model's final `layernorm` if it has one, for callers that already have the hidden states.
    pub fn final_layernorm(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.layernorm {
            Some(ln) => crate::accel::layer_norm(hidden, ln),
            None => Ok(hidden.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::vit_mae::test_util::{random_weights, vb};
    use super::*;

    fn tiny(use_mean_pooling: bool) -> VideoMAEConfig {
        let json = r#"{"image_size": 32, "patch_size": 8, "num_frames": 4, "tubelet_size": 2, "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "norm_pix_loss": true}"#;
        let mut cfg: VideoMAEConfig = match serde_json::from_str(json) {
            Ok(c) => c,
            Err(e) => panic!("config: {e}"),
        };
        cfg.use_mean_pooling = use_mean_pooling;
        cfg
    }

    fn model(use_mean_pooling: bool) -> VideoMAEModel {
        let cfg = tiny(use_mean_pooling);
        let w = random_weights(|vb| VideoMAEModel::new(&cfg, vb).map(|_| ()));
        match VideoMAEModel::new(&cfg, vb(w)) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    fn clip(dims: &[usize]) -> Tensor {
        match Tensor::zeros(dims, DType::F32, &Device::Cpu) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(m: &VideoMAEModel, dims: &[usize]) -> String {
        m.forward(&clip(dims)).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn config_defaults_follow_hf() {
        let cfg = tiny(true);
        assert!(cfg.qkv_bias);
        assert_eq!(cfg.hidden_act, Activation::Gelu);
        assert_eq!(cfg.num_patches(), 32);
    }

    #[test]
    fn shapes_and_pooling() -> Result<()> {
        let m = model(true);
        let states = m.forward(&clip(&[2, 4, 3, 32, 32]))?;
        assert_eq!(states.len(), 3);
        assert_eq!(states[0].dims(), &[2, 32, 32]);
        assert_eq!(mean_pool(&states[2])?.dims(), &[2, 32]);
        assert!(mean_pool(&clip(&[2, 32])).is_err());
        let m = model(false);
        assert_eq!(m.forward_last(&clip(&[1, 4, 3, 32, 32]))?.dims(), &[1, 32, 32]);
        Ok(())
    }

    #[test]
    fn frames_not_divisible_by_tubelet_is_an_error() {
        let e = err(&model(true), &[1, 5, 3, 32, 32]);
        assert!(e.contains("5 frames") && e.contains("tubelet_size 2"), "{e}");
    }

    #[test]
    fn frame_count_other_than_config_is_an_error() {
        let e = err(&model(true), &[1, 6, 3, 32, 32]);
        assert!(e.contains("6 frames") && e.contains("num_frames 4"), "{e}");
    }

    #[test]
    fn wrong_image_size_is_an_error() {
        let m = model(true);
        let e = err(&m, &[1, 4, 3, 24, 32]);
        assert!(e.contains("24x32") && e.contains("image_size 32x32"), "{e}");
        let e = err(&m, &[1, 4, 4, 32, 32]);
        assert!(e.contains("4 channels") && e.contains("num_channels 3"), "{e}");
        let e = err(&m, &[4, 3, 32, 32]);
        assert!(e.contains("(batch, frames, channels, height, width)"), "{e}");
    }

    #[test]
    fn missing_tensor_is_named() {
        let cfg = tiny(false);
        for key in ["encoder.layer.0.attention.attention.v_bias", "layernorm.bias"] {
            let mut w = random_weights(|vb| VideoMAEModel::new(&cfg, vb).map(|_| ()));
            assert!(w.remove(key).is_some(), "{key} not created");
            let e = VideoMAEModel::new(&cfg, vb(w)).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn no_final_layernorm_with_mean_pooling() {
        let w = random_weights(|vb| VideoMAEModel::new(&tiny(true), vb).map(|_| ()));
        assert!(!w.keys().any(|k| k.starts_with("layernorm.")));
        assert!(!w.keys().any(|k| k.contains("position_embeddings")));
    }

    #[test]
    fn learned_position_table_is_used() -> Result<()> {
        let cfg = tiny(true);
        let mut w = random_weights(|vb| VideoMAEModel::new(&cfg, vb).map(|_| ()));
        let fixed = VideoMAEModel::new(&cfg, vb(w.clone()))?.forward(&clip(&[1, 4, 3, 32, 32]))?;
        w.insert("embeddings.position_embeddings".into(), Tensor::ones((1, 32, 32), DType::F32, &Device::Cpu)?);
        let learned = VideoMAEModel::new(&cfg, vb(w))?.forward(&clip(&[1, 4, 3, 32, 32]))?;
        let d = (&fixed[0] - &learned[0])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d > 0.1, "the learned table was ignored");
        Ok(())
    }

    #[test]
    fn sinusoid_table_values() -> Result<()> {
        let t = sinusoid_position_table(3, 4, DType::F64, &Device::Cpu)?.to_vec2::<f64>()?;
        // pos 2: angles [2, 2, 2/100, 2/100].
        let want = [2f64.sin(), 2f64.cos(), 0.02f64.sin(), 0.02f64.cos()];
        for (a, b) in t[2].iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{:?}", t[2]);
        }
        Ok(())
    }
}
