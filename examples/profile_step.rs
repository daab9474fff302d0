//! Times the parts of one training step of the tiny model on random inputs (a profiling aid).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use emollama::model::llama::{Llama, LlamaConfig};
use emollama::model::vit::{TinyVit, VitConfig};
use emollama::model::cnn::{CnnConfig, TinyCnn};
use emollama::model::wave::{TinyWave, WaveConfig};

fn time<T>(what: &str, f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<T> {
    let t = Instant::now();
    let r = f()?;
    println!("{what:>28}: {:8.1} ms", t.elapsed().as_secs_f64() * 1e3);
    Ok(r)
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let vit = TinyVit::new(&VitConfig { image_size: 64, patch_size: std::env::var("P").ok().and_then(|v| v.parse().ok()).unwrap_or(8), num_channels: 3, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, layer_norm_eps: 1e-6 }, vb.pp("v"))?;
    let wave = TinyWave::new(&WaveConfig { frame_size: 160, merge: 4, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_positions: 256, layer_norm_eps: 1e-5 }, vb.pp("a"))?;
    let llm = Llama::new(&LlamaConfig { hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: Some(2), vocab_size: 300, rms_norm_eps: 1e-6, rope_theta: 1e4, max_position_embeddings: 256, tie_word_embeddings: false }, vb.pp("l"))?;
    let cnn = TinyCnn::new(&CnnConfig { image_size: 64, stem_patch: 4, stem_channels: 32, channels: vec![64, 64], hidden_size: 64, num_channels: 3, pool: std::env::var("POOL").unwrap_or("mean".into()) }, vb.pp("c"))?;
    let frames = Tensor::randn(0f32, 1., (128, 3, 64, 64), &dev)?;
    let audio = Tensor::randn(0f32, 0.1, (16, 32000), &dev)?;
    let embeds = Tensor::randn(0f32, 1., (16, 80, 128), &dev)?;
    let valid = Tensor::ones((16, 80), DType::U8, &dev)?;
    for _ in 0..2 {
        let v = time("vit forward", || vit.forward(&frames))?;
        time("vit backward", || v.sum_all()?.backward())?;
        let c = time("cnn forward", || cnn.forward(&frames))?;
        time("cnn backward", || c.sum_all()?.backward())?;
        let a = time("wave forward", || wave.forward(&audio))?;
        time("wave backward", || a.sum_all()?.backward())?;
        let l = time("llm forward", || llm.forward_embeds(&embeds, &valid))?;
        time("llm backward", || l.sum_all()?.backward())?;
    }
    Ok(())
}
