//! `just bench`: times forward and backward of each part of a quick-start training step (batch 16,
//! 4 frames of 64x64, 2 s of audio, ~100 LLM positions) on random inputs, median of 5 runs.
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use emollama::model::cnn::{CnnConfig, TinyCnn};
use emollama::model::llama::{Llama, LlamaConfig};
use emollama::model::vit::{TinyVit, VitConfig};
use emollama::model::wave::{TinyWave, WaveConfig};

fn median_ms(mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?; // warm-up
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[2])
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cnn = TinyCnn::new(&CnnConfig { image_size: 64, stem_patch: 4, stem_channels: 32, channels: vec![64, 64], hidden_size: 64, num_channels: 3, pool: "flatten".into() }, vb.pp("c"))?;
    let vit = TinyVit::new(&VitConfig { image_size: 64, patch_size: 16, num_channels: 3, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, layer_norm_eps: 1e-6 }, vb.pp("v"))?;
    let wave = TinyWave::new(&WaveConfig { frame_size: 160, merge: 4, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, max_positions: 256, layer_norm_eps: 1e-5 }, vb.pp("a"))?;
    let llm = Llama::new(&LlamaConfig { hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: Some(2), vocab_size: 261, max_position_embeddings: 256, ..LlamaConfig::default() }, vb.pp("l"))?;
    let frames = Tensor::randn(0f32, 1., (64, 3, 64, 64), &dev)?;
    let audio = Tensor::randn(0f32, 0.1, (16, 32000), &dev)?;
    let embeds = Tensor::randn(0f32, 1., (16, 100, 128), &dev)?;
    let valid = Tensor::ones((16, 100), DType::U8, &dev)?;
    println!("{:>28} {:>10}", "part (fwd + bwd)", "ms");
    type Part<'a> = (&'a str, Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>);
    let rows: [Part; 4] = [
        ("tiny_cnn, 64 frames", Box::new(|| cnn.forward(&frames))),
        ("tiny_vit, 64 frames", Box::new(|| vit.forward(&frames))),
        ("tiny_wave, 16 x 2 s", Box::new(|| wave.forward(&audio))),
        ("tiny-llama, 16 x 100 tok", Box::new(|| llm.forward_embeds(&embeds, &valid))),
    ];
    for (name, f) in rows {
        let ms = median_ms(|| f()?.sum_all()?.backward().map(|_| ()))?;
        println!("{name:>28} {ms:>10.1}");
    }
    Ok(())
}
