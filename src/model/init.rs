//! Seeded parameter initialisation.
//!
//! candle's CPU RNG cannot be seeded, so a `VarMap` initialises differently on every run. This backend
//! creates each parameter in the `VarMap` from the same `Init` hints, but draws the values from a ChaCha
//! stream keyed by (seed, parameter name): a run is reproducible and independent of build order.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    pub fn new(varmap: &VarMap, seed: u64) -> Self {
        Self { varmap: varmap.clone(), seed }
    }

    /// A `VarBuilder` whose new parameters land in `varmap`, seeded by `seed`.
    pub fn builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Self { varmap: varmap.clone(), seed }), dtype, device.clone())
    }
}

fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut key = [0u8; 32];
    key.copy_from_slice(&digest);
    ChaCha8Rng::from_seed(key)
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller; u1 in (0, 1] avoids ln(0).
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn values(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| (0..n).map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32).collect();
    let gauss = |rng: &mut ChaCha8Rng, mean: f64, std: f64| (0..n).map(|_| (mean + std * normal(rng)) as f32).collect();
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => gauss(rng, mean, stdev),
        Init::Kaiming { dist, fan, non_linearity } => {
            let fan = match fan {
                FanInOut::FanIn | FanInOut::FanOut => fan.for_shape(shape),
            };
            let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(rng, -b, b)
                }
                NormalOrUniform::Normal => gauss(rng, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if self.varmap.data().lock().map(|d| d.contains_key(name)).unwrap_or(false) {
            return self.varmap.get(s, name, h, dtype, dev);
        }
        let t = Tensor::from_vec(values(h, &s, &mut rng_for(self.seed, name)), s.clone(), dev)?.to_dtype(dtype)?;
        self.varmap.get(s, name, Init::Const(0.0), dtype, dev)?;
        let data = self.varmap.data().lock().map_err(|_| candle_core::Error::Msg("varmap lock poisoned".into()))?;
        match data.get(name) {
            Some(var) => {
                var.set(&t)?;
                Ok(var.as_tensor().clone())
            }
            None => candle_core::bail!("parameter {name} vanished from the varmap"),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        SimpleBackend::get_unchecked(&self.varmap, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&self.varmap, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_parameters_different_seed_different() -> Result<()> {
        let make = |seed| -> Result<Vec<f32>> {
            let vm = VarMap::new();
            let vb = SeededVarMap::builder(&vm, seed, DType::F32, &Device::Cpu);
            let l = candle_nn::linear(8, 4, vb.pp("l"))?;
            l.weight().flatten_all()?.to_vec1::<f32>()
        };
        assert_eq!(make(1)?, make(1)?);
        assert_ne!(make(1)?, make(2)?);
        Ok(())
    }
}
