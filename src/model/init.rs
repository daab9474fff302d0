//! Seeded parameter initialisation.
//!
//! candle's CPU RNG cannot be seeded, so a `VarMap` initialises differently on every run. This backend
//! creates each parameter in the `VarMap` from the same `Init` hints, but draws the values from a ChaCha
//! stream keyed by (seed, parameter name): a run is reproducible and independent of build order.
//!
//! [`SeededTensors`] makes frozen weights the same way (`[weights] source = "seeded"`): plain tensors,
//! not variables, created directly in the requested dtype in chunks of [`CHUNK`] values (each chunk its
//! own stream, keyed by name and chunk index, generated in parallel), so a 7B model in bf16 never
//! exists in f32.

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, RngCore, SeedableRng};
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

/// What an init hint draws from, in f64 (a Kaiming hint takes its fans from `fans`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Distribution {
    Const(f64),
    Uniform { lo: f64, up: f64 },
    /// Kaiming's uniform: ±√3·std (the bound is computed in each path's own precision).
    KaimingUniform { std: f64 },
    Normal { mean: f64, std: f64 },
}

impl Distribution {
    fn of(init: Init, fans: &Shape) -> Self {
        match init {
            Init::Const(c) => Self::Const(c),
            Init::Uniform { lo, up } => Self::Uniform { lo, up },
            Init::Randn { mean, stdev } => Self::Normal { mean, std: stdev },
            Init::Kaiming { dist, fan, non_linearity } => {
                let std = non_linearity.gain() / (fan.for_shape(fans).max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => Self::KaimingUniform { std },
                    NormalOrUniform::Normal => Self::Normal { mean: 0.0, std },
                }
            }
        }
    }
}

/// `count.elem_count()` values of `init` (a Kaiming hint takes its fans from `fans`).
fn values(init: Init, count: &Shape, fans: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = count.elem_count();
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| (0..n).map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32).collect();
    match Distribution::of(init, fans) {
        Distribution::Const(c) => vec![c as f32; n],
        Distribution::Uniform { lo, up } => uniform(rng, lo, up),
        Distribution::KaimingUniform { std } => {
            let b = 3f64.sqrt() * std;
            uniform(rng, -b, b)
        }
        Distribution::Normal { mean, std } => (0..n).map(|_| (mean + std * normal(rng)) as f32).collect(),
    }
}

/// Values per independently seeded chunk of a [`SeededTensors`] tensor.
pub const CHUNK: usize = 1 << 20;

/// Frozen random weights keyed by (seed, name): `[weights] source = "seeded"`.
pub struct SeededTensors {
    pub seed: u64,
}

impl SeededTensors {
    pub fn builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Self { seed }), dtype, device.clone())
    }
}

/// What a pretrained-like weight asked for without an init gets: HF's `initializer_range` normal.
pub const UNHINTED: Init = Init::Randn { mean: 0.0, stdev: 0.02 };

/// The tensor `name` of shape `shape` drawn from `init`, in `dtype`, without an f32 copy of the whole.
/// A tensor requested without an init hint (`Const(0)`, what `VarBuilder::get` passes) that is not a bias
/// is drawn from [`UNHINTED`] instead: zeros there (patch embeddings, fused q/k/v, a weight-normed conv's
/// `weight_g`, where zeros make 0/0) are nothing like a trained model.
pub fn seeded_tensor(seed: u64, name: &str, shape: &Shape, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
    use rayon::prelude::*;
    let init = match init {
        Init::Const(c) if c == 0.0 && !name.ends_with("bias") => UNHINTED,
        other => other,
    };
    let n = shape.elem_count();
    let chunk = |i: usize| -> Vec<f32> {
        let len = CHUNK.min(n - i * CHUNK);
        fast_values(init, len, shape, &mut rng_for(seed, &format!("{name}#{i}")))
    };
    let chunks = n.div_ceil(CHUNK);
    let t = match dtype {
        DType::BF16 => Tensor::from_vec((0..chunks).into_par_iter().flat_map_iter(|i| chunk(i).into_iter().map(half::bf16::from_f32)).collect::<Vec<_>>(), shape.clone(), dev)?,
        DType::F16 => Tensor::from_vec((0..chunks).into_par_iter().flat_map_iter(|i| chunk(i).into_iter().map(half::f16::from_f32)).collect::<Vec<_>>(), shape.clone(), dev)?,
        _ => Tensor::from_vec((0..chunks).into_par_iter().flat_map_iter(chunk).collect::<Vec<_>>(), shape.clone(), dev)?.to_dtype(dtype)?,
    };
    Ok(t)
}

/// `n` values of `init` in f32 arithmetic, both outputs of each Box-Muller pair used: several times
/// faster than [`values`] (which keeps the f64 stream trained models were initialised from), for the
/// billions of values of a seeded real-size model.
fn fast_values(init: Init, n: usize, fans: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    // A uniform in [0, 1) with 24 random bits.
    let unit = |rng: &mut ChaCha8Rng| (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0);
    let (normal, a, b) = match Distribution::of(init, fans) {
        Distribution::Const(c) => return vec![c as f32; n],
        Distribution::Uniform { lo, up } => (false, lo as f32, up as f32),
        Distribution::KaimingUniform { std } => (false, -3f32.sqrt() * std as f32, 3f32.sqrt() * std as f32),
        Distribution::Normal { mean, std } => (true, mean as f32, std as f32),
    };
    let mut out = Vec::with_capacity(n + 1);
    if !normal {
        out.extend((0..n).map(|_| a + (b - a) * unit(rng)));
        return out;
    }
    while out.len() < n {
        let u1 = 1.0 - unit(rng);
        let r = (-2.0 * u1.ln()).sqrt() * b;
        let (sin, cos) = (std::f32::consts::TAU * unit(rng)).sin_cos();
        out.push(a + r * cos);
        out.push(a + r * sin);
    }
    out.truncate(n);
    out
}

impl SimpleBackend for SeededTensors {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        seeded_tensor(self.seed, name, &s, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("seeded weights: `{name}` was asked for without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if self.varmap.data().lock().map(|d| d.contains_key(name)).unwrap_or(false) {
            return self.varmap.get(s, name, h, dtype, dev);
        }
        let t = Tensor::from_vec(values(h, &s, &s, &mut rng_for(self.seed, name)), s.clone(), dev)?.to_dtype(dtype)?;
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

    #[test]
    fn seeded_tensors_are_reproducible_made_in_their_dtype_and_follow_the_hint() -> Result<()> {
        let dev = Device::Cpu;
        // Over a chunk boundary: 1.5 chunks.
        let shape = Shape::from((3, CHUNK / 2));
        let hint = Init::Randn { mean: 0.0, stdev: 0.02 };
        let a = seeded_tensor(9, "w", &shape, hint, DType::BF16, &dev)?;
        assert_eq!(a.dtype(), DType::BF16);
        let f = seeded_tensor(9, "w", &shape, hint, DType::F32, &dev)?;
        let diff = (a.to_dtype(DType::F32)? - f.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "bf16 values are the f32 draws rounded");
        let v = f.flatten_all()?.to_vec1::<f32>()?;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(mean.abs() < 1e-4 && (std - 0.02).abs() < 1e-4, "mean {mean}, std {std}");
        // The chunks are independent draws, and so are other names and seeds.
        let chunk = |i: usize| v[i * CHUNK..i * CHUNK + 8].to_vec();
        assert_ne!(chunk(0), chunk(1));
        assert_ne!(seeded_tensor(9, "w2", &shape, hint, DType::F32, &dev)?.flatten_all()?.narrow(0, 0, 8)?.to_vec1::<f32>()?, chunk(0));
        assert_ne!(seeded_tensor(8, "w", &shape, hint, DType::F32, &dev)?.flatten_all()?.narrow(0, 0, 8)?.to_vec1::<f32>()?, chunk(0));
        // A Kaiming hint takes its fan from the whole tensor, not the chunk.
        let k = seeded_tensor(1, "k", &Shape::from((4, 4096)), candle_nn::init::DEFAULT_KAIMING_NORMAL, DType::F32, &dev)?;
        let kv = k.flatten_all()?.to_vec1::<f32>()?;
        let kstd = (kv.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / kv.len() as f64).sqrt();
        // candle's default hint: normal, fan-in, ReLU gain √2.
        assert!((kstd - 2f64.sqrt() / 64.0).abs() < 1e-3, "kaiming std {kstd}");
        // Asked for without a hint: a normal of std 0.02 (HF's initializer_range), biases zero.
        let w = seeded_tensor(3, "proj.weight", &Shape::from((64, 64)), Init::Const(0.0), DType::F32, &dev)?.flatten_all()?.to_vec1::<f32>()?;
        let wstd = (w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!((wstd - 0.02).abs() < 2e-3, "unhinted std {wstd}");
        assert!(seeded_tensor(3, "proj.bias", &Shape::from(64), Init::Const(0.0), DType::F32, &dev)?.to_vec1::<f32>()?.iter().all(|&x| x == 0.0));
        // Frozen: plain tensors.
        let vb = SeededTensors::builder(9, DType::BF16, &dev);
        let t = vb.get_with_hints((3, CHUNK / 2), "w", hint)?;
        assert!(!t.is_variable());
        assert_eq!(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
