//! Helpers shared by the library's unit tests.

use candle_core::{Device, Result, Tensor};

/// Uniform in [-√3, √3) (unit variance) from a seeded stream: tests whose bounds hold for these draws, not
/// with a probability.
pub fn seeded_uniform(shape: &[usize], seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.732f32..1.732)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}
