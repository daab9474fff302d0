//! SigLIP's vision tower as HF `SiglipVisionModel` runs it (VideoLLaMA2's visual encoder,
//! `google/siglip-so400m-patch14-384`): a valid-padding patch convolution plus a learned position table (no
//! CLS token), pre-norm blocks with tanh-GELU MLPs, and `post_layernorm`. The attention-pooling `head` is
//! not loaded: the features are hidden states (VideoLLaMA2 takes `hidden_states[-2]`, every patch token).
//!
//! Names as transformers 4.46 writes them under `vision_model.` (re-rooted at load): `embeddings.
//! patch_embedding.*`, `embeddings.position_embedding.weight`, `encoder.layers.N.{self_attn.{q,k,v,out}_proj,
//! layer_norm1, layer_norm2, mlp.fc1, mlp.fc2}.*`, `post_layernorm.*`.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Activation, LayerNorm, Module, VarBuilder};
use serde::{Deserialize, Serialize};

use super::vit_block::{QkvBias, SIGLIP, VitBlockSpec, VitEncoder};
use super::vit_mae::{check_image, last_state};
use crate::accel::Linear;
use crate::model::hf_config::KeyError;

/// `config.json` keys of a SigLIP vision config that never change the hidden states (beyond
/// [`crate::model::hf_config::COMMON_IGNORED`]), with the reason.
pub const HF_IGNORED: &[(&str, &str)] = &[
    ("vision_use_head", "the attention-pooling head is not loaded: the features are hidden states"),
    ("initializer_factor", "initialisation of new weights only"),
];

/// The fields of HF `SiglipVisionConfig`, with its defaults. Every key changes the computation and is
/// implemented, except `attention_dropout`, which is off at inference (the tower is frozen, in eval mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiglipVisionConfig {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_image")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    /// HF's default `gelu_pytorch_tanh`: the tanh approximation.
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Dropout of the attention probabilities: training only.
    #[serde(default)]
    pub attention_dropout: f64,
}

fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image() -> usize {
    224
}
fn d_patch() -> usize {
    16
}
fn d_act() -> Activation {
    Activation::GeluPytorchTanh
}
fn d_eps() -> f64 {
    1e-6
}

impl SiglipVisionConfig {
    /// Patches per side: the convolution is unpadded, so a size that is not a multiple of the patch
    /// loses its last pixels (384 / 14 → 27, the last 6 rows and columns unused).
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Tokens per image (no CLS token): 729 for so400m-patch14-384.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || self.grid_size() == 0 {
            candle_core::bail!("SigLIP image_size {} holds no patch of patch_size {}", self.image_size, self.patch_size);
        }
        self.block().validate("SigLIP")
    }

    /// HF `SiglipEncoderLayer`: the pre-norm block with one bias per projection.
    fn block(&self) -> VitBlockSpec {
        VitBlockSpec {
            hidden_size: self.hidden_size,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
            bias: QkvBias::PerProjection,
            names: &SIGLIP,
        }
    }
}

/// The vision part of an HF `config.json`: the file itself for a `SiglipVisionModel` (`model_type`
/// `siglip_vision_model`), its `vision_config` for a whole `SiglipModel` (`model_type` `siglip`, as
/// `google/siglip-so400m-patch14-384` is published), as `SiglipVisionConfig.from_pretrained` reads it.
pub fn vision_config(path: &std::path::Path, json: serde_json::Value) -> std::result::Result<serde_json::Value, KeyError> {
    let nested = json.get("model_type").and_then(|v| v.as_str()) == Some("siglip") || json.get("vision_config").is_some();
    if !nested {
        return Ok(json);
    }
    match json.get("vision_config") {
        Some(v @ serde_json::Value::Object(_)) => Ok(v.clone()),
        Some(v) => Err(KeyError::new(path, "vision_config", format!("{v} is not a JSON object"))),
        None => Err(KeyError::new(path, "vision_config", "missing: a `siglip` config.json holds the vision tower's configuration there")),
    }
}

/// Checks an HF vision `config.json` object before it is read: unknown keys are named in a warning (and
/// returned).
pub fn check_hf_keys(path: &std::path::Path, obj: &serde_json::Map<String, serde_json::Value>) -> std::result::Result<Vec<String>, KeyError> {
    Ok(crate::model::hf_config::warn_unknown_for::<SiglipVisionConfig>(path, obj, HF_IGNORED))
}

/// HF `SiglipVisionModel` without its pooling head.
#[derive(Debug, Clone)]
pub struct SiglipVisionModel {
    cfg: SiglipVisionConfig,
    /// The patch convolution as a matmul over flattened (c, ky, kx) patches.
    patch: Linear,
    /// (1, patches, hidden), always f32 (a bf16 run keeps only the Linear matrices in bf16).
    position_embedding: Tensor,
    encoder: VitEncoder,
    post_layernorm: LayerNorm,
}

impl SiglipVisionModel {
    /// `vb` at the vision transformer's root (`embeddings.*`, `encoder.layers.N.*`, `post_layernorm.*`).
    pub fn new(cfg: &SiglipVisionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let emb = vb.pp("embeddings");
        let position_embedding = emb.pp("position_embedding").get((cfg.num_patches(), h), "weight")?.to_dtype(DType::F32)?.unsqueeze(0)?;
        Ok(Self {
            cfg: cfg.clone(),
            patch: super::vit_mae::patch_projection(&[cfg.num_channels, p, p], h, emb.pp("patch_embedding"))?,
            position_embedding,
            encoder: VitEncoder::new(&cfg.block(), cfg.num_hidden_layers, vb.pp("encoder"))?,
            post_layernorm: candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
        })
    }

    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// (B, C, S, S) → (B, patches, hidden): HF's `SiglipVisionEmbeddings` without position interpolation.
    fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = match pixel_values.dims() {
            &[b, c, h, w] => (b, c, h, w),
            d => candle_core::bail!("SigLIP expects pixel_values of shape (batch, channels, height, width), got {d:?}"),
        };
        check_image(c, h, w, self.cfg.num_channels, self.cfg.image_size, "SigLIP")?;
        let (p, g) = (self.cfg.patch_size, self.cfg.grid_size());
        // The unpadded convolution never reads the pixels past the last whole patch.
        let x = pixel_values.to_dtype(DType::F32)?.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?;
        let patches = x.reshape((b, c, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, g * g, c * p * p))?;
        self.patch.forward(&patches)?.broadcast_add(&self.position_embedding)
    }

    /// Every hidden state as HF `output_hidden_states`: the embeddings, then each layer's output
    /// (`num_hidden_layers + 1` tensors of (B, patches, hidden)); `post_layernorm` is not applied.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        self.encoder.forward(self.embed(pixel_values)?)
    }

    /// The hidden states `0..=last` only (VideoLLaMA2's layer −2 skips the last layer's work).
    pub fn forward_upto(&self, pixel_values: &Tensor, last: usize) -> Result<Vec<Tensor>> {
        self.encoder.forward_upto(self.embed(pixel_values)?, last)
    }

    /// HF `last_hidden_state`: the last layer's output after `post_layernorm`.
    pub fn forward_last(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.post_layernorm.forward(&last_state(self.forward(pixel_values)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::vit_mae::test_util::{random_weights, vb};
    use super::*;
    use candle_core::Device;

    fn tiny(image_size: usize) -> SiglipVisionConfig {
        let json = format!(r#"{{"image_size": {image_size}, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64}}"#);
        match serde_json::from_str(&json) {
            Ok(c) => c,
            Err(e) => panic!("config: {e}"),
        }
    }

    fn model(cfg: &SiglipVisionConfig) -> (SiglipVisionModel, std::collections::HashMap<String, Tensor>) {
        let w = random_weights(|vb| SiglipVisionModel::new(cfg, vb).map(|_| ()));
        match SiglipVisionModel::new(cfg, vb(w.clone())) {
            Ok(m) => (m, w),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn config_defaults_follow_hf() {
        let cfg = tiny(32);
        assert_eq!(cfg.hidden_act, Activation::GeluPytorchTanh);
        assert_eq!(cfg.layer_norm_eps, 1e-6);
        assert_eq!(cfg.num_channels, 3);
        let so400m: SiglipVisionConfig = serde_json::from_str(r#"{"image_size": 384, "patch_size": 14, "hidden_size": 1152}"#).expect("config");
        assert_eq!(so400m.num_patches(), 729);
    }

    #[test]
    fn nested_vision_config_is_taken_from_a_siglip_model_config() {
        let p = std::path::Path::new("config.json");
        let full = serde_json::json!({"model_type": "siglip", "text_config": {"hidden_size": 1}, "vision_config": {"hidden_size": 1152, "patch_size": 14}});
        let v = vision_config(p, full).expect("vision config");
        assert_eq!(v.get("hidden_size"), Some(&serde_json::json!(1152)));
        let bare = serde_json::json!({"model_type": "siglip_vision_model", "hidden_size": 32});
        assert_eq!(vision_config(p, bare.clone()).expect("bare"), bare);
        let e = vision_config(p, serde_json::json!({"model_type": "siglip"})).expect_err("missing").to_string();
        assert!(e.contains("vision_config"), "{e}");
    }

    #[test]
    fn patches_past_the_last_whole_one_are_dropped_like_the_valid_convolution() -> Result<()> {
        // 36 / 8 → a 4x4 grid; the last 4 rows and columns are never read (as 384 / 14 drops 6).
        let cfg = tiny(36);
        let (m, w) = model(&cfg);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 36, 36), &Device::Cpu)?;
        let states = m.forward(&x)?;
        assert_eq!(states.len(), 4);
        assert_eq!(states[0].dims(), &[2, 16, 32]);
        // Reference: candle's conv2d with stride = kernel, no padding, on the full image.
        let conv = x.conv2d(&w["embeddings.patch_embedding.weight"], 0, 8, 1, 1)?;
        let conv = conv.broadcast_add(&w["embeddings.patch_embedding.bias"].reshape((1, 32, 1, 1))?)?;
        let want = conv.flatten_from(2)?.transpose(1, 2)?.broadcast_add(&w["embeddings.position_embedding.weight"].unsqueeze(0)?)?;
        let d = (&states[0] - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        // Pixels outside the grid change nothing.
        let mask = Tensor::ones((36, 36), DType::F32, &Device::Cpu)?.narrow(0, 0, 32)?.pad_with_zeros(0, 0, 4)?;
        let y = m.forward(&x.broadcast_mul(&mask)?)?;
        assert_eq!((&y[3] - &states[3])?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        // Only the states up to the one asked for are computed, and they are the same.
        let upto = m.forward_upto(&x, 2)?;
        assert_eq!(upto.len(), 3);
        assert_eq!((&upto[2] - &states[2])?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn wrong_input_and_missing_tensor_are_errors() {
        let cfg = tiny(32);
        let (m, mut w) = model(&cfg);
        let x = Tensor::zeros((1, 3, 32, 40), DType::F32, &Device::Cpu).expect("zeros");
        let e = m.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("32x40") && e.contains("image_size 32x32"), "{e}");
        let key = "encoder.layers.2.self_attn.v_proj.bias";
        assert!(w.remove(key).is_some());
        let e = SiglipVisionModel::new(&cfg, vb(w)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(key), "{e}");
        let mut bad = tiny(32);
        bad.num_attention_heads = 5;
        assert!(SiglipVisionModel::new(&bad, vb(Default::default())).is_err());
    }
}
