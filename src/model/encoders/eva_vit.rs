//! EVA-CLIP ViT-g/14, the global-view image encoder of Emotion-LLaMA / MiniGPT-v2, in the LAVIS
//! `eva_vit.py` layout so `eva_vit_g.pth` loads unchanged (`VarBuilder::from_pth`) as well as safetensors.
//!
//! Pre-norm ViT: conv patch embedding, CLS token, absolute position embedding, `depth` blocks of
//! attention (one fused `attn.qkv.weight`, separate `q_bias`/`v_bias`, zero k bias) and a GELU MLP. No
//! final norm: MiniGPT-v2 applies its own `ln_vision` ([`LnVision`]) and then merges 4 consecutive patch
//! tokens into one ([`merge_patches`]).
//!
//! The checkpoint's `pos_embed` is stored for the pre-training resolution (16×16 grid at 224 px) and is
//! resized at load to this model's grid with PyTorch's bicubic interpolation, as LAVIS
//! `interpolate_pos_embed` does ([`interpolate_pos_embed`]).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Module, VarBuilder};

use crate::accel::Linear;
use serde::{Deserialize, Serialize};

fn default_img_size() -> usize {
    448
}
fn default_layer_norm_eps() -> f64 {
    1e-6
}
fn default_checkpoint_grid() -> usize {
    16
}

/// Sizes of the EVA ViT (LAVIS `VisionTransformer` arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaVitConfig {
    /// Square input side in pixels (448 in MiniGPT-v2 / Emotion-LLaMA).
    #[serde(default = "default_img_size")]
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// MLP hidden width. LAVIS passes `mlp_ratio=4.3637`; `int(1408 * 4.3637)` = 6144.
    pub mlp_hidden: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Grid side the checkpoint's `pos_embed` was trained at (16 for eva_vit_g.pth). Only used when the
    /// weights do not say it themselves (e.g. a fresh `VarMap`); a stored `pos_embed` is read at its own size.
    #[serde(default = "default_checkpoint_grid")]
    pub checkpoint_grid: usize,
}

impl EvaVitConfig {
    /// LAVIS `create_eva_vit_g(img_size=448)`: 39 blocks of width 1408, 16 heads, MLP 6144, patch 14.
    pub fn eva_vit_g() -> Self {
        Self {
            img_size: 448,
            patch_size: 14,
            embed_dim: 1408,
            depth: 39,
            num_heads: 16,
            mlp_hidden: 6144,
            layer_norm_eps: 1e-6,
            checkpoint_grid: 16,
        }
    }

    /// Patches per side (32 for ViT-g at 448 px).
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size.max(1)
    }

    /// Tokens per image: the patches plus the CLS token (1025 for ViT-g at 448 px).
    pub fn num_tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || self.img_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            candle_core::bail!(
                "EVA ViT config: img_size {} must be a positive multiple of patch_size {}",
                self.img_size,
                self.patch_size
            );
        }
        if self.num_heads == 0 || self.embed_dim == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            candle_core::bail!(
                "EVA ViT config: embed_dim {} must be a positive multiple of num_heads {}",
                self.embed_dim,
                self.num_heads
            );
        }
        if self.checkpoint_grid == 0 || self.mlp_hidden == 0 {
            candle_core::bail!("EVA ViT config: checkpoint_grid and mlp_hidden must be positive");
        }
        Ok(())
    }
}

/// PyTorch's cubic convolution kernel (`A = -0.75`, as in `upsample_bicubic2d`), the 4 weights for a
/// sample at fractional offset `t` from the left neighbour.
fn torch_cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Source taps (clamped to the border) and weights of each output index, for
/// `F.interpolate(mode='bicubic', align_corners=False)` with an explicit output size.
fn torch_bicubic_taps(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f64; 4])> {
    let scale = in_size as f64 / out_size as f64;
    let last = in_size as i64 - 1;
    (0..out_size)
        .map(|o| {
            // Cubic mode does not clamp the source coordinate to 0 (unlike linear).
            let real = scale * (o as f64 + 0.5) - 0.5;
            let base = real.floor();
            let w = torch_cubic_weights(real - base);
            let base = base as i64;
            let idx = [0i64, 1, 2, 3].map(|k| (base - 1 + k).clamp(0, last) as usize);
            (idx, w)
        })
        .collect()
}

/// Bicubic resize of `planes` images of `in_h × in_w` (row-major, plane after plane) to `out_h × out_w`,
/// matching PyTorch `F.interpolate(mode='bicubic', align_corners=False)` (computed in f64).
fn torch_bicubic_planes(src: &[f32], planes: usize, in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    let ty = torch_bicubic_taps(in_h, out_h);
    let tx = torch_bicubic_taps(in_w, out_w);
    let mut out = Vec::with_capacity(planes * out_h * out_w);
    for p in 0..planes {
        let plane = &src[p * in_h * in_w..(p + 1) * in_h * in_w];
        for (iy, wy) in &ty {
            for (ix, wx) in &tx {
                let mut acc = 0.0f64;
                for (yy, wyk) in iy.iter().zip(wy) {
                    let row = &plane[yy * in_w..(yy + 1) * in_w];
                    let r: f64 = ix.iter().zip(wx).map(|(&xx, wxk)| f64::from(row[xx]) * wxk).sum();
                    acc += wyk * r;
                }
                out.push(acc as f32);
            }
        }
    }
    out
}

/// LAVIS `interpolate_pos_embed`: `pos_embed` (1, 1 + g², D) → (1, 1 + new_grid², D). The CLS entry is
/// kept, the g×g grid is resized bicubically (PyTorch, align_corners=False). Unchanged if g == new_grid.
pub fn interpolate_pos_embed(pos_embed: &Tensor, new_grid: usize) -> Result<Tensor> {
    let (one, n, d) = pos_embed.dims3()?;
    let old_grid = (n.saturating_sub(1) as f64).sqrt().round() as usize;
    if one != 1 || n < 2 || old_grid * old_grid + 1 != n {
        candle_core::bail!(
            "pos_embed has shape {:?}, expected (1, 1 + g*g, embed_dim): a CLS entry and a square grid",
            pos_embed.dims()
        );
    }
    if new_grid == 0 {
        candle_core::bail!("cannot interpolate pos_embed to an empty grid");
    }
    if old_grid == new_grid {
        return Ok(pos_embed.clone());
    }
    let dtype = pos_embed.dtype();
    let cls = pos_embed.narrow(1, 0, 1)?;
    // (1, g*g, D) -> (D, g*g) planes.
    let grid = pos_embed.narrow(1, 1, n - 1)?.squeeze(0)?.t()?.to_dtype(DType::F32)?.contiguous()?;
    let src = grid.flatten_all()?.to_vec1::<f32>()?;
    let out = torch_bicubic_planes(&src, d, old_grid, old_grid, new_grid, new_grid);
    let grid = Tensor::from_vec(out, (d, new_grid * new_grid), pos_embed.device())?
        .t()?
        .unsqueeze(0)?
        .to_dtype(dtype)?;
    Tensor::cat(&[cls, grid], 1)
}

#[derive(Debug, Clone)]
struct Attention {
    /// Bias `cat(q_bias, zeros, v_bias)`: LAVIS keeps no k bias.
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let qkv_weight = vb.get((3 * d, d), "qkv.weight")?;
        let q_bias = vb.get(d, "q_bias")?;
        let v_bias = vb.get(d, "v_bias")?;
        let k_bias = q_bias.zeros_like()?;
        let qkv_bias = Tensor::cat(&[q_bias, k_bias, v_bias], 0)?;
        Ok(Self {
            qkv: Linear::new(qkv_weight, Some(qkv_bias)),
            proj: crate::accel::linear(d, d, vb.pp("proj"))?,
            num_heads: cfg.num_heads,
            head_dim: d / cfg.num_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let [q, k, v] = crate::accel::split_fused_qkv(&self.qkv.forward(x)?, self.num_heads)?;
        let out = crate::accel::attention(&q, &k, &v, (self.head_dim as f64).powf(-0.5))?;
        debug_assert_eq!(out.dims(), &[b, n, c]);
        self.proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.embed_dim, cfg.layer_norm_eps);
        Ok(Self {
            norm1: candle_nn::layer_norm(d, eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: candle_nn::layer_norm(d, eps, vb.pp("norm2"))?,
            fc1: crate::accel::linear(d, cfg.mlp_hidden, vb.pp("mlp.fc1"))?.with_gelu_erf(),
            fc2: crate::accel::linear(cfg.mlp_hidden, d, vb.pp("mlp.fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&crate::accel::layer_norm(x, &self.norm1)?)?)?;
        // fc1 carries the exact GELU (fused on the fast path).
        let h = self.fc2.forward(&self.fc1.forward(&crate::accel::layer_norm(&x, &self.norm2)?)?)?;
        x + h
    }
}

/// The EVA ViT-g image encoder (LAVIS `VisionTransformer` as built by `create_eva_vit_g`).
#[derive(Debug, Clone)]
pub struct EvaVit {
    cfg: EvaVitConfig,
    patch_embed: Conv2d,
    cls_token: Tensor,
    /// Already interpolated to this model's grid: (1, 1 + grid², D).
    pos_embed: Tensor,
    blocks: Vec<Block>,
}

impl EvaVit {
    /// Builds the encoder from LAVIS tensor names at the root of `vb` (`cls_token`, `pos_embed`,
    /// `patch_embed.proj`, `blocks.N...`). `pos_embed` is read at whatever grid it was stored and resized.
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let conv_cfg = Conv2dConfig { stride: cfg.patch_size, ..Default::default() };
        let patch_embed = candle_nn::conv2d(3, d, cfg.patch_size, conv_cfg, vb.pp("patch_embed.proj"))?;
        let cls_token = vb.get((1, 1, d), "cls_token")?;
        let stored = if vb.contains_tensor("pos_embed") {
            // Backends that cannot report a stored shape (zeros) fall back to the configured grid.
            vb.get_unchecked("pos_embed").ok()
        } else {
            None
        };
        let pos_embed = match stored {
            Some(p) => {
                let dims = p.dims();
                if dims.len() != 3 || dims[0] != 1 || dims[2] != d {
                    candle_core::bail!(
                        "tensor `pos_embed` has shape {dims:?}, expected (1, 1 + g*g, {d}) for embed_dim {d}"
                    );
                }
                p
            }
            None => {
                let g = cfg.checkpoint_grid;
                vb.get((1, 1 + g * g, d), "pos_embed")?
            }
        };
        let pos_embed = interpolate_pos_embed(&pos_embed, cfg.grid())?;
        let blocks = (0..cfg.depth).map(|i| Block::new(cfg, vb.pp(format!("blocks.{i}")))).collect::<Result<_>>()?;
        Ok(Self { cfg: cfg.clone(), patch_embed, cls_token, pos_embed, blocks })
    }

    pub fn config(&self) -> &EvaVitConfig {
        &self.cfg
    }

    /// The position embedding in use (after interpolation to this model's grid).
    pub fn pos_embed(&self) -> &Tensor {
        &self.pos_embed
    }

    /// `pixel_values` (B, 3, img_size, img_size) → every hidden state, each (B, 1 + grid², D): the patch +
    /// position embedding output, then each block's output. The last one is the encoder output (no final
    /// norm, as in LAVIS).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.embed(pixel_values)?;
        let mut hidden = Vec::with_capacity(self.blocks.len() + 1);
        hidden.push(x.clone());
        for block in &self.blocks {
            x = block.forward(&x)?;
            hidden.push(x.clone());
        }
        Ok(hidden)
    }

    /// Only the last block's output, (B, 1 + grid², D).
    pub fn forward_last(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(pixel_values)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let s = self.cfg.img_size;
        let dims = pixel_values.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] != s || dims[3] != s || dims[0] == 0 {
            candle_core::bail!(
                "EVA ViT expects pixel values of shape (batch, 3, {s}, {s}) (RGB resized to {s}x{s}), got {dims:?}"
            );
        }
        let b = dims[0];
        let x = self.patch_embed.forward(&pixel_values.to_dtype(self.cls_token.dtype())?)?;
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls_token.expand((b, 1, self.cfg.embed_dim))?;
        Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)
    }
}

/// MiniGPT-v2's `ln_vision`: a LayerNorm (eps 1e-5) over the ViT output, its own module and weights
/// (`ln_vision.weight/bias` in the MiniGPT checkpoint); identity when the weights are absent.
#[derive(Debug, Clone)]
pub struct LnVision(Option<LayerNorm>);

impl LnVision {
    pub const EPS: f64 = 1e-5;

    /// Loads `weight`/`bias` (shape `dim`) from `vb`.
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Some(candle_nn::layer_norm(dim, Self::EPS, vb)?)))
    }

    pub fn identity() -> Self {
        Self(None)
    }

    /// [`LnVision::new`] if `vb` holds `weight`, else the identity.
    pub fn load_or_identity(dim: usize, vb: VarBuilder) -> Result<Self> {
        if vb.contains_tensor("weight") { Self::new(dim, vb) } else { Ok(Self::identity()) }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.0 {
            Some(ln) => ln.forward(x),
            None => Ok(x.clone()),
        }
    }
}

/// MiniGPT-v2's token merge: `tokens` (B, 1 + N, D) with the CLS token first → (`patch_tokens`
/// (B, N / group, group·D), `cls` (B, D)). Each merged token concatenates `group` raster-consecutive
/// patch tokens (`x[:, 1:, :].reshape(B, N / group, group * D)`).
pub fn merge_patches(tokens: &Tensor, group: usize) -> Result<(Tensor, Tensor)> {
    let (b, t, d) = tokens.dims3()?;
    if t < 2 {
        candle_core::bail!("merge_patches needs a CLS token and at least one patch token, got {t} tokens");
    }
    let n = t - 1;
    if group == 0 || n % group != 0 {
        candle_core::bail!("cannot merge {n} patch tokens in groups of {group}: the count must be a multiple of the group");
    }
    let patches = tokens.narrow(1, 1, n)?.contiguous()?.reshape((b, n / group, group * d))?;
    let cls = tokens.narrow(1, 0, 1)?.squeeze(1)?;
    Ok((patches, cls))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn tiny() -> EvaVitConfig {
        EvaVitConfig {
            img_size: 28,
            patch_size: 14,
            embed_dim: 8,
            depth: 1,
            num_heads: 2,
            mlp_hidden: 16,
            layer_norm_eps: 1e-6,
            checkpoint_grid: 1,
        }
    }

    fn model(cfg: &EvaVitConfig) -> EvaVit {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        EvaVit::new(cfg, vb).unwrap()
    }

    #[test]
    fn runs_and_shapes() {
        let cfg = tiny();
        let m = model(&cfg);
        let x = Tensor::zeros((2, 3, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let hs = m.forward(&x).unwrap();
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[1].dims(), &[2, 5, 8]);
        assert_eq!(m.pos_embed().dims(), &[1, 5, 8]);
    }

    #[test]
    fn wrong_image_size_is_an_error() {
        let m = model(&tiny());
        for shape in [vec![1, 3, 27, 28], vec![1, 1, 28, 28], vec![3, 28, 28], vec![0, 3, 28, 28]] {
            let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
            let e = m.forward(&x).unwrap_err().to_string();
            assert!(e.contains("(batch, 3, 28, 28)"), "{e}");
        }
    }

    #[test]
    fn bad_config_is_an_error() {
        let mut cfg = tiny();
        cfg.img_size = 30;
        let vm = VarMap::new();
        let e = EvaVit::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap_err();
        assert!(e.to_string().contains("multiple of patch_size"), "{e}");
        let mut cfg = tiny();
        cfg.num_heads = 3;
        let e = EvaVit::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap_err();
        assert!(e.to_string().contains("num_heads"), "{e}");
    }

    #[test]
    fn merge_checks_group() {
        let x = Tensor::arange(0f32, 2. * 9. * 2., &Device::Cpu).unwrap().reshape((2, 9, 2)).unwrap();
        let (p, c) = merge_patches(&x, 4).unwrap();
        assert_eq!(p.dims(), &[2, 2, 8]);
        assert_eq!(c.to_vec2::<f32>().unwrap(), vec![vec![0., 1.], vec![18., 19.]]);
        assert_eq!(p.get(0).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap(), (10..18).map(|v| v as f32).collect::<Vec<_>>());
        assert!(merge_patches(&x, 3).unwrap_err().to_string().contains("multiple of the group"));
        assert!(merge_patches(&x, 0).is_err());
        let one = Tensor::zeros((1, 1, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(merge_patches(&one, 4).is_err());
    }

    #[test]
    fn pos_embed_interpolation_checks_shape_and_keeps_constants() {
        let bad = Tensor::zeros((1, 6, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(interpolate_pos_embed(&bad, 4).unwrap_err().to_string().contains("square grid"));
        // A constant grid stays constant (weights sum to 1, border clamped).
        let p = Tensor::ones((1, 10, 4), DType::F32, &Device::Cpu).unwrap();
        let q = interpolate_pos_embed(&p, 5).unwrap();
        assert_eq!(q.dims(), &[1, 26, 4]);
        let v = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| (x - 1.0).abs() < 1e-6));
    }

    #[test]
    fn eva_vit_g_sizes() {
        let c = EvaVitConfig::eva_vit_g();
        assert_eq!((c.grid(), c.num_tokens(), c.embed_dim / c.num_heads), (32, 1025, 88));
        let json = serde_json::json!({"patch_size": 14, "embed_dim": 1408, "depth": 39, "num_heads": 16, "mlp_hidden": 6144});
        let parsed: EvaVitConfig = serde_json::from_value(json).unwrap();
        assert_eq!(parsed, c);
    }
}
