//! ViT-MAE's encoder as HF `ViTMAEModel` runs it at inference (the local face view in Emotion-LLaMA), with
//! the pre-norm blocks of `vit_block`; and the patch and input helpers VideoMAE and SigLIP share.
//!
//! HF's `random_masking` keeps `(1 - mask_ratio)` of the patches in a random order even at mask_ratio 0;
//! a feature extractor wants every patch in raster order, so `mask_ratio` is read but ignored here.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Activation, LayerNorm, Module, VarBuilder};

use super::vit_block::{HF_VIT, QkvBias, VitBlockSpec, VitEncoder};
use crate::accel::Linear;
use serde::{Deserialize, Serialize};

/// `config.json` keys of ViT-MAE that never change the encoder's output (beyond
/// [`crate::model::hf_config::COMMON_IGNORED`]), with the reason.
pub const HF_IGNORED: &[(&str, &str)] = &[
    ("attention_probs_dropout_prob", "dropout: off at inference"),
    ("hidden_dropout_prob", "dropout: off at inference"),
    ("decoder_hidden_size", "the pre-training decoder is not loaded"),
    ("decoder_intermediate_size", "the pre-training decoder is not loaded"),
    ("decoder_num_attention_heads", "the pre-training decoder is not loaded"),
    ("decoder_num_hidden_layers", "the pre-training decoder is not loaded"),
    ("norm_pix_loss", "pre-training loss"),
    ("interpolate_pos_encoding", "checked by the input size: inputs must have image_size"),
];

/// The fields of HF `ViTMAEConfig` (`config.json`) the encoder reads; decoder and training keys are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViTMAEConfig {
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_num_channels")]
    pub num_channels: usize,
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
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// Pre-training only: the encoder here always keeps every patch.
    #[serde(default = "default_mask_ratio")]
    pub mask_ratio: f64,
}

/// Checks an HF `config.json` object before it is read: unknown keys are named in a warning (and returned).
pub fn check_hf_keys(path: &std::path::Path, obj: &serde_json::Map<String, serde_json::Value>) -> std::result::Result<Vec<String>, crate::model::hf_config::KeyError> {
    Ok(crate::model::hf_config::warn_unknown_for::<ViTMAEConfig>(path, obj, HF_IGNORED))
}

pub(crate) fn default_image_size() -> usize {
    224
}
pub(crate) fn default_patch_size() -> usize {
    16
}
pub(crate) fn default_num_channels() -> usize {
    3
}
pub(crate) fn default_hidden_size() -> usize {
    768
}
pub(crate) fn default_num_layers() -> usize {
    12
}
pub(crate) fn default_num_heads() -> usize {
    12
}
pub(crate) fn default_intermediate_size() -> usize {
    3072
}
pub(crate) fn default_layer_norm_eps() -> f64 {
    1e-12
}
pub(crate) fn yes() -> bool {
    true
}
fn default_mask_ratio() -> f64 {
    0.75
}

impl ViTMAEConfig {
    /// Patches per side of the (square) image.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patch tokens per image (the CLS token not included).
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    fn block(&self) -> VitBlockSpec {
        VitBlockSpec {
            hidden_size: self.hidden_size,
            num_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            eps: self.layer_norm_eps,
            act: self.hidden_act,
            bias: if self.qkv_bias { QkvBias::PerProjection } else { QkvBias::None },
            names: &HF_VIT,
        }
    }

    fn validate(&self) -> Result<()> {
        check_patching(self.image_size, self.patch_size, "ViT-MAE")?;
        self.block().validate("ViT-MAE")?;
        if !self.hidden_size.is_multiple_of(4) {
            candle_core::bail!(
                "ViT-MAE hidden_size {} must be a multiple of 4 (the 2-D sin-cos position table splits it into \
                 sin and cos halves of the row and column codes)",
                self.hidden_size
            );
        }
        Ok(())
    }
}

pub(crate) fn check_patching(image_size: usize, patch_size: usize, model: &str) -> Result<()> {
    if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
        candle_core::bail!("{model} image_size {image_size} is not a multiple of patch_size {patch_size}");
    }
    Ok(())
}

/// Checks that a (…, C, H, W) input has the configured channels and square size.
pub(crate) fn check_image(c: usize, h: usize, w: usize, channels: usize, size: usize, model: &str) -> Result<()> {
    if c != channels {
        candle_core::bail!("{model} input has {c} channels, the config expects num_channels {channels}");
    }
    if h != size || w != size {
        candle_core::bail!("{model} input frames are {h}x{w} pixels, the config expects image_size {size}x{size}");
    }
    Ok(())
}

/// HF's fixed 2-D sin-cos table with a zero row for the CLS token, (1 + grid², dim). The first half of
/// each row encodes the patch's column and the second half its row (HF's meshgrid puts w first), each
/// as `[sin(pos·ω_k), cos(pos·ω_k)]` with ω_k = 10000^(-k / (dim/4)). Computed in f64 as HF's numpy does.
pub fn sincos_2d_position_table(dim: usize, grid: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64)).collect();
    let mut table = vec![0f64; dim]; // CLS row
    for row in 0..grid {
        for col in 0..grid {
            for pos in [col, row] {
                table.extend(omega.iter().map(|w| (pos as f64 * w).sin()));
                table.extend(omega.iter().map(|w| (pos as f64 * w).cos()));
            }
        }
    }
    Tensor::from_vec(table, (1 + grid * grid, dim), dev)?.to_dtype(dtype)
}

/// A convolution whose stride equals its kernel is a matmul over flattened patches: the checkpoint's
/// (out, in, k…) weight flattened to (out, in·k…), applied to patches flattened in the same order.
pub(crate) fn patch_projection(kernel: &[usize], hidden: usize, vb: VarBuilder) -> Result<Linear> {
    let mut shape = vec![hidden];
    shape.extend_from_slice(kernel);
    let weight = vb.get(shape, "weight")?;
    let bias = vb.get(hidden, "bias")?;
    Ok(Linear::new(weight.flatten_from(1)?, Some(bias)))
}

/// The final hidden state, or the error for an (impossible) empty list.
pub(crate) fn last_state(mut states: Vec<Tensor>) -> Result<Tensor> {
    match states.pop() {
        Some(t) => Ok(t),
        None => candle_core::bail!("internal: empty hidden-state list"),
    }
}

/// HF `ViTMAEModel` (encoder only, every patch kept in raster order).
#[derive(Debug, Clone)]
pub struct ViTMAEModel {
    cfg: ViTMAEConfig,
    cls_token: Tensor,
    /// (1, 1 + patches, hidden); row 0 is the CLS token's.
    position_embeddings: Tensor,
    patch: Linear,
    encoder: VitEncoder,
    layernorm: LayerNorm,
}

impl ViTMAEModel {
    /// `vb` at the model root (`embeddings.cls_token`, `encoder.layer.0…`, `layernorm.weight`). The fixed
    /// position table is read from `embeddings.position_embeddings` when the checkpoint has it, otherwise
    /// computed as HF initialises it.
    pub fn new(cfg: &ViTMAEConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let rows = cfg.num_patches() + 1;
        let position_embeddings = if emb.contains_tensor("position_embeddings") {
            emb.get((1, rows, h), "position_embeddings")?
        } else {
            sincos_2d_position_table(h, cfg.grid_size(), vb.dtype(), vb.device())?.unsqueeze(0)?
        };
        let p = cfg.patch_size;
        Ok(Self {
            cfg: cfg.clone(),
            cls_token: emb.get((1, 1, h), "cls_token")?,
            position_embeddings,
            patch: patch_projection(&[cfg.num_channels, p, p], h, emb.pp("patch_embeddings").pp("projection"))?,
            encoder: VitEncoder::new(&cfg.block(), cfg.num_hidden_layers, vb.pp("encoder"))?,
            layernorm: candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("layernorm"))?,
        })
    }

    pub fn config(&self) -> &ViTMAEConfig {
        &self.cfg
    }

    /// (B, C, H, W) → (B, 1 + patches, hidden): CLS + patch embeddings with their positions.
    fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = match pixel_values.dims() {
            &[b, c, h, w] => (b, c, h, w),
            d => candle_core::bail!("ViT-MAE expects pixel_values of shape (batch, channels, height, width), got {d:?}"),
        };
        check_image(c, h, w, self.cfg.num_channels, self.cfg.image_size, "ViT-MAE")?;
        let (p, g) = (self.cfg.patch_size, self.cfg.grid_size());
        let patches = pixel_values
            .to_dtype(self.cls_token.dtype())?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, g * g, c * p * p))?;
        let x = self.patch.forward(&patches)?;
        let rows = self.position_embeddings.dim(1)?;
        let x = x.broadcast_add(&self.position_embeddings.narrow(1, 1, rows - 1)?)?;
        let cls = (&self.cls_token + self.position_embeddings.narrow(1, 0, 1)?)?;
        Tensor::cat(&[&cls.broadcast_as((b, 1, self.cfg.hidden_size))?, &x], 1)
    }

    /// Every hidden state as HF `output_hidden_states`: the embeddings, then each layer's output
    /// (`num_hidden_layers + 1` tensors of (B, 1 + patches, hidden)); the final layernorm is not applied.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        self.encoder.forward(self.embed(pixel_values)?)
    }

    /// HF `last_hidden_state`: the last layer's output after the final `layernorm`.
    pub fn forward_last(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.final_layernorm(&last_state(self.forward(pixel_values)?)?)
    }

    /// The final `layernorm`, for callers that already have the hidden states from `forward`.
    pub fn final_layernorm(&self, hidden: &Tensor) -> Result<Tensor> {
        self.layernorm.forward(hidden)
    }
}

/// Shared by the unit tests of this module and `videomae`.
#[cfg(test)]
pub(crate) mod test_util {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    /// Every tensor a model creates when built from a random VarMap.
    pub fn random_weights(build: impl Fn(VarBuilder) -> candle_core::Result<()>) -> HashMap<String, Tensor> {
        let map = VarMap::new();
        if let Err(e) = build(VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)) {
            panic!("random init failed: {e}");
        }
        match map.data().lock() {
            Ok(d) => d.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect(),
            Err(e) => panic!("poisoned VarMap: {e}"),
        }
    }

    pub fn vb(weights: HashMap<String, Tensor>) -> VarBuilder<'static> {
        VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{random_weights, vb};
    use super::*;

    fn tiny() -> ViTMAEConfig {
        let json = r#"{"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "decoder_hidden_size": 16}"#;
        match serde_json::from_str(json) {
            Ok(c) => c,
            Err(e) => panic!("config: {e}"),
        }
    }

    fn model() -> ViTMAEModel {
        let cfg = tiny();
        let w = random_weights(|vb| ViTMAEModel::new(&cfg, vb).map(|_| ()));
        match ViTMAEModel::new(&cfg, vb(w)) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn config_defaults_follow_hf() {
        let cfg = tiny();
        assert_eq!(cfg.hidden_act, Activation::Gelu);
        assert!(cfg.qkv_bias);
        assert_eq!(cfg.num_channels, 3);
        assert_eq!(cfg.num_patches(), 16);
    }

    #[test]
    fn shapes() -> Result<()> {
        let m = model();
        let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
        let states = m.forward(&x)?;
        assert_eq!(states.len(), 3);
        assert_eq!(states[2].dims(), &[2, 17, 32]);
        assert_eq!(m.forward_last(&x)?.dims(), &[2, 17, 32]);
        Ok(())
    }

    #[test]
    fn wrong_image_size_is_an_error() -> Result<()> {
        let m = model();
        let x = Tensor::zeros((1, 3, 32, 48), DType::F32, &Device::Cpu)?;
        let e = m.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("32x48") && e.contains("image_size 32x32"), "{e}");
        let x = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu)?;
        let e = m.forward(&x).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("1 channels") && e.contains("num_channels 3"), "{e}");
        let x = Tensor::zeros((3, 32, 32), DType::F32, &Device::Cpu)?;
        assert!(m.forward(&x).is_err());
        Ok(())
    }

    #[test]
    fn missing_tensor_is_named() {
        let cfg = tiny();
        let mut w = random_weights(|vb| ViTMAEModel::new(&cfg, vb).map(|_| ()));
        let key = "encoder.layer.1.attention.attention.key.bias";
        assert!(w.remove(key).is_some());
        let e = ViTMAEModel::new(&cfg, vb(w)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(key), "{e}");
    }

    #[test]
    fn bad_config_is_an_error() {
        let mut cfg = tiny();
        cfg.patch_size = 7;
        let e = ViTMAEModel::new(&cfg, vb(Default::default())).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("image_size 32") && e.contains("patch_size 7"), "{e}");
    }

    #[test]
    fn sincos_table_layout() -> Result<()> {
        // dim 8, grid 2: quarter 2, ω = [1, 0.01]. Patch (row 1, col 0) is table row 1 + 2 = 3.
        let t = sincos_2d_position_table(8, 2, DType::F64, &Device::Cpu)?.to_vec2::<f64>()?;
        assert!(t[0].iter().all(|v| *v == 0.0));
        let want = [0.0, 0.0, 1.0, 1.0, 1f64.sin(), 0.01f64.sin(), 1f64.cos(), 0.01f64.cos()];
        for (a, b) in t[3].iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{:?}", t[3]);
        }
        Ok(())
    }
}
