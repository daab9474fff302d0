//! Activation checkpointing, which candle does not have: the forward pass keeps only a block's input;
//! the backward pass runs the block again with a graph and backpropagates through it, handing the
//! gradients of the block's trainable parameters to a [`CheckpointGrads`] store that the caller merges
//! after the outer backward ([`CheckpointGrads::merge_into`]). The LLM's activations then take one
//! block's worth of memory instead of all of them (`runtime.activation_checkpointing`).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::lora::DropoutRng;

/// The gradients of checkpointed blocks' parameters, filled during the outer backward pass.
#[derive(Debug, Clone, Default)]
pub struct CheckpointGrads(Arc<Mutex<Vec<(Tensor, Tensor)>>>);

impl CheckpointGrads {
    fn push(&self, param: &Tensor, grad: Tensor) -> Result<()> {
        self.0.lock().map_err(|_| candle_core::Error::Msg("checkpoint gradient store poisoned".into()))?.push((param.clone(), grad));
        Ok(())
    }

    /// Adds what the checkpointed blocks collected into `grads` (summed per parameter) and empties the store.
    pub fn merge_into(&self, grads: &mut GradStore) -> Result<()> {
        let taken = std::mem::take(&mut *self.0.lock().map_err(|_| candle_core::Error::Msg("checkpoint gradient store poisoned".into()))?);
        for (param, g) in taken {
            let sum = match grads.get(&param) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            grads.insert(&param, sum);
        }
        Ok(())
    }

    /// Forgets what was collected (a forward pass that was not backpropagated).
    pub fn clear(&self) {
        if let Ok(mut g) = self.0.lock() {
            g.clear();
        }
    }
}

/// The function a checkpoint recomputes: the block's forward pass from its input.
pub type BlockFn = Arc<dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync>;

/// Runs `block` on `x` keeping only `x` for the backward pass. `params`: the block's trainable
/// parameters (variables), whose gradients go to `grads`; `rng`: the dropout stream the block draws
/// from, rewound for the recomputation so it draws the same masks.
pub struct Checkpointed {
    pub block: BlockFn,
    pub params: Vec<Tensor>,
    pub grads: CheckpointGrads,
    pub rng: DropoutRng,
    /// The stream's state before this call's forward pass.
    rng_at_forward: Option<ChaCha8Rng>,
    /// The forward pass's values, handed to the graph node by `*_fwd`.
    output: Mutex<Option<Tensor>>,
}

impl Checkpointed {
    pub fn new(block: BlockFn, params: Vec<Tensor>, grads: CheckpointGrads, rng: DropoutRng) -> Self {
        Self { block, params, grads, rng, rng_at_forward: None, output: Mutex::new(None) }
    }

    pub fn apply(mut self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() {
            return (self.block)(x);
        }
        self.rng_at_forward = Some(lock(&self.rng)?.clone());
        // A fresh, exactly sized copy of the values: the forward pass's graph is dropped with `y`.
        let y = (self.block)(&x.detach())?.detach().affine(1.0, 0.0)?;
        *lock(&self.output)? = Some(y);
        x.apply_op1(self)
    }

    fn take_output(&self) -> Result<(Tensor, Shape)> {
        let y = lock(&self.output)?.take().ok_or_else(|| candle_core::Error::Msg("checkpoint: forward ran twice".into()))?;
        let shape = y.shape().clone();
        Ok((y, shape))
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| candle_core::Error::Msg("checkpoint: lock poisoned".into()))
}

impl CustomOp1 for Checkpointed {
    fn name(&self) -> &'static str {
        "checkpointed-block"
    }

    fn cpu_fwd(&self, _x: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.take_output()?;
        let (st, _) = y.storage_and_layout();
        match &*st {
            Storage::Cpu(c) => Ok((c.clone(), shape)),
            _ => candle_core::bail!("checkpoint: the block's output left the CPU"),
        }
    }

    fn cuda_fwd(&self, _x: &CudaStorage, _l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (y, shape) = self.take_output()?;
        let (st, l) = y.storage_and_layout();
        match &*st {
            Storage::Cuda(c) => Ok((c.try_clone(l)?, shape)),
            _ => candle_core::bail!("checkpoint: the block's output left the GPU"),
        }
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let input = Var::from_tensor(&x.detach())?;
        let y = {
            let later = match &self.rng_at_forward {
                Some(at) => Some(std::mem::replace(&mut *lock(&self.rng)?, at.clone())),
                None => None,
            };
            let y = (self.block)(input.as_tensor());
            if let Some(later) = later {
                *lock(&self.rng)? = later;
            }
            y?
        };
        // d/dy of sum(y · grad) is `grad`: backpropagating it gives the block's vector-Jacobian product.
        let grads = y.mul(&grad.detach())?.sum_all()?.backward()?;
        for p in &self.params {
            if let Some(g) = grads.get(p) {
                self.grads.push(p, g.clone())?;
            }
        }
        match grads.get(input.as_tensor()) {
            Some(g) => Ok(Some(g.clone())),
            None => Ok(Some(x.zeros_like()?)),
        }
    }
}
