//! Diagnostic: can the frame encoder learn valence (face) directly with a classification head?
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Module, Optimizer, VarBuilder, VarMap};
use emollama::data::loader::{decode_all, DecodeSpec};
use emollama::data::Sample;
use emollama::media::FrameSampling;
use emollama::model::cnn::{CnnConfig, TinyCnn};
use emollama::recipe::OnError;

fn main() -> anyhow::Result<()> {
    let cfg = emollama::data::synth::SynthConfig { train: std::env::var("NTRAIN").ok().and_then(|v| v.parse().ok()).unwrap_or(600), ..Default::default() };
    let ds = emollama::data::synth::generate(&cfg, &std::path::PathBuf::from("/root/.cache/emollama"), false)?;
    let samples: Vec<Sample> = ds.items.iter().map(|it| Sample { id: it.id.clone(), split: it.split.clone(), media: ds.dir.join(&it.file), transcript: None, label: Some(it.valence.clone()), description: None, reasoning: None }).collect();
    let spec = DecodeSpec { sampling: FrameSampling::Uniform { n: 2 }, width: 64, height: 64, audio_len: 100, on_error: OnError::Fail, threads: 2, show_progress: false };
    let (dec, _) = decode_all(samples, &spec)?;
    let cls = |v: &str| match v { "flat" => 0u32, "up" => 1, _ => 2 };
    let to_t = |items: &[&(Sample, emollama::data::loader::DecodedMedia)]| -> anyhow::Result<(Tensor, Tensor)> {
        let mut px = Vec::new(); let mut y = Vec::new();
        for (s, m) in items { for c in 0..3 { for p in 0..64 * 64 { px.push(m.frames[p * 3 + c] as f32 / 127.5 - 1.0); } } y.push(cls(s.label.as_deref().unwrap_or(""))); }
        Ok((Tensor::from_vec(px, (items.len(), 3, 64, 64), &Device::Cpu)?, Tensor::new(y, &Device::Cpu)?))
    };
    let train: Vec<_> = dec.iter().filter(|(s, _)| s.split == "train").collect();
    let test: Vec<_> = dec.iter().filter(|(s, _)| s.split == "test").collect();
    let (xt, yt) = to_t(&test)?;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let cnn = TinyCnn::new(&CnnConfig { image_size: 64, stem_patch: 4, stem_channels: 32, channels: vec![64, 64], hidden_size: 64, num_channels: 3, pool: std::env::var("POOL").unwrap_or("mean".into()) }, vb.pp("c"))?;
    let head = candle_nn::linear(64, 3, vb.pp("h"))?;
    let mut opt = candle_nn::AdamW::new(vm.all_vars(), candle_nn::ParamsAdamW { lr: 1e-3, ..Default::default() })?;
    for step in 0..std::env::var("STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(300) {
        let idx: Vec<_> = (0..32).map(|k| train[(step * 32 + k * 7) % train.len()]).collect();
        let (x, y) = to_t(&idx)?;
        let loss = candle_nn::loss::cross_entropy(&head.forward(&cnn.forward(&x)?)?, &y)?;
        opt.backward_step(&loss)?;
        if step % 50 == 49 {
            let pred = head.forward(&cnn.forward(&xt)?)?.argmax(D::Minus1)?;
            let acc = pred.eq(&yt)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
            println!("step {} loss {:.3} test acc {:.3}", step + 1, loss.to_scalar::<f32>()?, acc);
        }
    }
    Ok(())
}
