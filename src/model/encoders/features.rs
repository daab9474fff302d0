//! From hidden states to the feature a recipe or `emollama extract` uses: which layers, how pooled.
//!
//! The references differ only in these choices: Emotion-LLaMA's audio feature is the last HuBERT layer
//! averaged over time (`layers = [-1]`), MERBench sums the last four layers over 10 s chunks
//! (`layers = [-4, -3, -2, -1]`, `chunk_seconds = 10`), the MAE face feature is one vector per frame averaged
//! over the frames, and MiniGPT-v2 keeps EVA's patch tokens (merged by four) and its CLS token.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// How the tokens (time steps or patches) of one input become a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Every hidden state, unpooled (`hidden_states.N` in `emollama extract`).
    None,
    /// Mean over all tokens (time steps for audio, tubelets for VideoMAE).
    #[default]
    Mean,
    /// The CLS token (token 0).
    Cls,
    /// Mean over the patch tokens, CLS excluded (MAE's `global_pool`).
    MeanPatch,
    /// MiniGPT-v2: the patch tokens merged by four (1024 → 256 tokens of 4·D), plus the CLS token.
    Merge4,
    /// The selected layers' tokens as they are, one set per frame (VideoLLaMA2: SigLIP's layer −2, all
    /// 729 patch tokens of each of 16 frames, for the STC connector).
    Tokens,
}

impl Pooling {
    pub const NAMES: [&'static str; 6] = ["none", "mean", "cls", "mean_patch", "merge4", "tokens"];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "mean" => Self::Mean,
            "cls" => Self::Cls,
            "mean_patch" => Self::MeanPatch,
            "merge4" => Self::Merge4,
            "tokens" => Self::Tokens,
            _ => return None,
        })
    }
}

/// `[features]` of an encoder manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Hidden states summed into the feature, Python-style indices into the list of all hidden states
    /// (`-1` = last layer's output). Empty: the model's final output (after its final norm, if any).
    #[serde(default)]
    pub layers: Vec<i64>,
    #[serde(default)]
    pub pooling: Pooling,
    /// Audio: run the encoder on chunks of this many seconds (the last zero-padded) and concatenate
    /// the frames (MERBench). None: the whole utterance at once.
    #[serde(default)]
    pub chunk_seconds: Option<f64>,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        Self { layers: Vec::new(), pooling: Pooling::Mean, chunk_seconds: None }
    }
}

/// Resolves Python-style layer indices against `count` hidden states.
pub fn resolve_layers(layers: &[i64], count: usize) -> std::result::Result<Vec<usize>, String> {
    layers
        .iter()
        .map(|&l| {
            let i = if l < 0 { count as i64 + l } else { l };
            if i < 0 || i >= count as i64 {
                Err(format!("layer {l} is out of range: the encoder has {count} hidden states (embeddings + {} layers)", count.saturating_sub(1)))
            } else {
                Ok(i as usize)
            }
        })
        .collect()
}

/// The sum of the chosen hidden states, (batch, tokens, dim).
pub fn select_layers(hidden: &[Tensor], layers: &[usize]) -> Result<Tensor> {
    let mut it = layers.iter();
    let Some(&first) = it.next() else { candle_core::bail!("no layers selected") };
    let mut acc = hidden[first].clone();
    for &l in it {
        acc = (acc + &hidden[l])?;
    }
    Ok(acc)
}

/// A pooled feature: one tensor, or (for `Merge4`) the merged patch tokens and the CLS token.
#[derive(Debug, Clone)]
pub enum Pooled {
    /// (batch, dim) or (batch, tokens, dim).
    One(Tensor),
    /// (batch, tokens/4, 4·dim) and (batch, dim).
    Merged { patches: Tensor, cls: Tensor },
}

/// Pools (batch, tokens, dim) tokens.
pub fn pool(tokens: &Tensor, pooling: Pooling) -> Result<Pooled> {
    let (_, t, _) = tokens.dims3()?;
    Ok(match pooling {
        Pooling::None | Pooling::Tokens => Pooled::One(tokens.clone()),
        Pooling::Mean => Pooled::One(tokens.mean(1)?),
        Pooling::Cls => Pooled::One(tokens.narrow(1, 0, 1)?.squeeze(1)?),
        Pooling::MeanPatch => {
            if t < 2 {
                candle_core::bail!("mean_patch pooling needs a CLS token and at least one patch token (got {t} tokens)");
            }
            Pooled::One(tokens.narrow(1, 1, t - 1)?.mean(1)?)
        }
        Pooling::Merge4 => {
            let (patches, cls) = super::eva_vit::merge_patches(tokens, 4)?;
            Pooled::Merged { patches, cls }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layers_resolve_python_style_and_reject_out_of_range() {
        assert_eq!(resolve_layers(&[-4, -3, -2, -1], 25), Ok(vec![21, 22, 23, 24]));
        assert_eq!(resolve_layers(&[0], 3), Ok(vec![0]));
        let e = resolve_layers(&[-5], 3).expect_err("out of range");
        assert!(e.contains("-5") && e.contains("3 hidden states"), "{e}");
    }

    #[test]
    fn merge4_concatenates_raster_consecutive_patches() -> Result<()> {
        // 1 CLS + 8 patches of width 2; patch k holds [k, k].
        let mut v = vec![-1.0f32, -1.0];
        for k in 0..8 {
            v.extend([k as f32, k as f32]);
        }
        let t = Tensor::from_vec(v, (1, 9, 2), &Device::Cpu)?;
        let (patches, cls) = crate::model::encoders::eva_vit::merge_patches(&t, 4)?;
        assert_eq!(patches.dims(), &[1, 2, 8]);
        assert_eq!(patches.get(0)?.get(1)?.to_vec1::<f32>()?, vec![4., 4., 5., 5., 6., 6., 7., 7.]);
        assert_eq!(cls.to_vec2::<f32>()?, vec![vec![-1.0, -1.0]]);
        assert!(crate::model::encoders::eva_vit::merge_patches(&t.narrow(1, 0, 8)?, 4).is_err());
        Ok(())
    }

    #[test]
    fn pooling_modes() -> Result<()> {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], (1, 3, 2), &Device::Cpu)?;
        let one = |p| match pool(&t, p) {
            Ok(Pooled::One(x)) => x.flatten_all().and_then(|x| x.to_vec1::<f32>()),
            _ => Err(candle_core::Error::Msg("expected one tensor".into())),
        };
        assert_eq!(one(Pooling::Mean)?, vec![3.0, 4.0]);
        assert_eq!(one(Pooling::Cls)?, vec![1.0, 2.0]);
        assert_eq!(one(Pooling::MeanPatch)?, vec![4.0, 5.0]);
        assert_eq!(one(Pooling::None)?.len(), 6);
        assert_eq!(one(Pooling::Tokens)?.len(), 6);
        assert_eq!(Pooling::from_name("tokens"), Some(Pooling::Tokens));
        Ok(())
    }
}
