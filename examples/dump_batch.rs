//! Diagnostic: decode a few synth samples exactly as a run does and dump the model's input frames.
use emollama::data::loader::{decode_all, DecodeSpec};
use emollama::data::Sample;
use emollama::media::FrameSampling;
use emollama::recipe::OnError;
use emollama::train::batch::{media_batch, MediaLayout};

fn main() -> anyhow::Result<()> {
    let cfg = emollama::data::synth::SynthConfig { train: 2400, val: 120, test: 240, ..Default::default() };
    let ds = emollama::data::synth::generate(&cfg, &std::path::PathBuf::from("/root/.cache/emollama"), false)?;
    let samples: Vec<Sample> = ds.items.iter().take(6).map(|it| Sample { id: it.id.clone(), split: it.split.clone(), media: ds.dir.join(&it.file), transcript: None, label: Some(it.label.clone()), description: None, reasoning: None }).collect();
    let spec = DecodeSpec { sampling: FrameSampling::Uniform { n: 4 }, width: 64, height: 64, audio_len: 32000, on_error: OnError::Fail, threads: 2, show_progress: false };
    let (dec, _) = decode_all(samples, &spec)?;
    let refs: Vec<_> = dec.iter().map(|(_, m)| m).collect();
    let mb = media_batch(&refs, &MediaLayout { width: 64, height: 64, mean: [0.5; 3], std: [0.5; 3] }, &candle_core::Device::Cpu)?;
    println!("frames {:?} audio {:?}", mb.frames.dims(), mb.audio.dims());
    let f = mb.frames.to_dtype(candle_core::DType::F32)?;
    let mut raw = Vec::new();
    for (i, (s, _)) in dec.iter().enumerate() {
        let img = f.get(i)?.get(0)?; // (3, 64, 64)
        let v = img.permute((1, 2, 0))?.flatten_all()?.to_vec1::<f32>()?;
        raw.extend(v.iter().map(|x| ((x * 0.5 + 0.5) * 255.0).clamp(0.0, 255.0) as u8));
        println!("{} {} mean {:.3}", s.id, s.label.as_deref().unwrap_or(""), v.iter().sum::<f32>() / v.len() as f32);
    }
    std::fs::write("/tmp/batch.rgb", raw)?;
    // Do the encoders produce sample-specific tokens?
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu);
    let cnn = emollama::model::cnn::TinyCnn::new(&emollama::model::cnn::CnnConfig { image_size: 64, stem_patch: 4, stem_channels: 32, channels: vec![64, 64], hidden_size: 64, num_channels: 3, pool: "flatten".into() }, vb.pp("c"))?;
    let (pooled, tokens) = cnn.forward_with_tokens(&mb.frames.reshape((24, 3, 64, 64))?)?;
    let pooled = pooled.reshape((6, 4, 64))?.mean(1)?;
    let tokens = tokens.reshape((6, 4, 16, 64))?.mean(1)?.flatten_from(1)?;
    for (name, t) in [("pooled", pooled), ("tokens", tokens)] {
        let v: Vec<Vec<f32>> = t.to_vec2()?;
        println!("{name}:");
        for a in &v { println!("  {}", v.iter().map(|b| format!("{:6.2}", a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt())).collect::<Vec<_>>().join(" ")); }
    }
    Ok(())
}

#[allow(dead_code)]
fn unused() {}
