//! Projectors from encoder features to LLM hidden size (registry kinds `linear`, `mlp`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::accel::linear_in_dtype_of;

pub use crate::recipe::ProjectorKind;

/// `linear`: one `nn.Linear` with bias, as Emotion-LLaMA's `feats_llama_proj*`; `mlp`: Linear-GELU-Linear
/// as LLaVA-1.5's `mlp2x_gelu`.
#[derive(Debug, Clone)]
pub enum Projector {
    Linear(Linear),
    Mlp(Linear, Linear),
}

impl Projector {
    pub fn new(kind: ProjectorKind, input: usize, output: usize, vb: VarBuilder) -> Result<Self> {
        match kind {
            ProjectorKind::Linear => Ok(Self::Linear(candle_nn::linear(input, output, vb)?)),
            ProjectorKind::Mlp => Ok(Self::Mlp(candle_nn::linear(input, output, vb.pp("0"))?, candle_nn::linear(output, output, vb.pp("2"))?)),
        }
    }
}

impl Module for Projector {
    /// Computes in `x`'s dtype (the run's), from the f32 master weights.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Linear(l) => linear_in_dtype_of(l, x),
            Self::Mlp(a, b) => linear_in_dtype_of(b, &linear_in_dtype_of(a, x)?.gelu_erf()?),
        }
    }
}

