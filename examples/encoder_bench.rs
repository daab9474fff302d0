//! Times each Emotion-LLaMA encoder's forward pass (and VideoLLaMA2's SigLIP tower) at its real size
//! (random weights, f32) on the inputs
//! `emollama extract` feeds it; the candle side of `just bench` (PyTorch's is
//! tools/bench/encoders_torch.py). Threads: RAYON_NUM_THREADS. Prints one JSON line per encoder.
//!     RAYON_NUM_THREADS=2 cargo run --release --example encoder_bench -- [repeats] [names...]

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use emollama::model::encoders::FrozenEncoder;
use emollama::registry::{EncoderManifest, Weights};

/// Real sizes: chinese-hubert-large, ViT-MAE-L/16, VideoMAE-L/16, EVA ViT-g/14 at 448, SigLIP so400m/14 at 384,
/// and VideoLLaMA2-AV's BEATs iter3+ on the fbank of its 30 s input (the fbank itself is not timed).
fn manifests() -> Vec<(&'static str, &'static str, &'static str, Vec<usize>, &'static str)> {
    vec![
        (
            "hubert-large",
            "hubert",
            "hidden_size = 1024\nnum_hidden_layers = 24\nnum_attention_heads = 16\nintermediate_size = 4096\nfeat_extract_norm = \"layer\"\ndo_stable_layer_norm = true\nconv_bias = true",
            vec![1, 160_000],
            "10 s of 16 kHz audio",
        ),
        (
            "vit-mae-large",
            "vit_mae",
            "hidden_size = 1024\nnum_hidden_layers = 24\nnum_attention_heads = 16\nintermediate_size = 4096\nmask_ratio = 0.0",
            vec![16, 3, 224, 224],
            "16 face crops at 224x224",
        ),
        (
            "videomae-large",
            "videomae",
            "hidden_size = 1024\nnum_hidden_layers = 24\nnum_attention_heads = 16\nintermediate_size = 4096",
            vec![1, 16, 3, 224, 224],
            "one 16-frame clip at 224x224",
        ),
        (
            "eva-vit-g",
            "eva_vit",
            "img_size = 448\npatch_size = 14\nembed_dim = 1408\ndepth = 39\nnum_heads = 16\nmlp_hidden = 6144\ncheckpoint_grid = 16",
            vec![1, 3, 448, 448],
            "one frame at 448x448",
        ),
        (
            "siglip-so400m",
            "siglip",
            "hidden_size = 1152\nintermediate_size = 4304\nnum_hidden_layers = 27\nnum_attention_heads = 16\nimage_size = 384\npatch_size = 14",
            vec![16, 3, 384, 384],
            "16 frames at 384x384",
        ),
        (
            "beats-iter3-plus",
            "beats",
            // BEATsConfig() defaults.
            "embed_dim = 512\nencoder_layers = 12\nencoder_embed_dim = 768\nencoder_ffn_embed_dim = 3072\nencoder_attention_heads = 12\nconv_pos = 128\nconv_pos_groups = 16\nnum_buckets = 320\nmax_distance = 800",
            vec![1, 2998, 128],
            "30 s of 16 kHz audio as 2998 fbank frames (1496 tokens)",
        ),
    ]
}

fn main() -> anyhow::Result<()> {
    emollama::accel::init_process();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--precision candle|f32|bf16`: candle's own ops, or the oneDNN path at that precision.
    let mode = match args.iter().position(|a| a == "--precision") {
        Some(i) if i + 1 < args.len() => {
            let m = args.remove(i + 1);
            args.remove(i);
            m
        }
        _ => "f32".to_string(),
    };
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    match mode.as_str() {
        "candle" => emollama::accel::set_enabled(false),
        "f32" => emollama::accel::set_inference(emollama::accel::Precision::F32, threads),
        "bf16" => emollama::accel::set_inference(emollama::accel::Precision::Bf16, threads),
        other => anyhow::bail!("--precision {other}: expected candle, f32 or bf16"),
    }
    let repeats: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let only: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let dev = Device::Cpu;
    for (name, arch, config, shape, what) in manifests() {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let m = EncoderManifest {
            name: name.into(),
            architecture: arch.into(),
            modality: if matches!(arch, "hubert" | "beats") { "audio" } else { "video" }.into(),
            description: String::new(),
            config: toml::from_str(config)?,
            weights: Weights::Random,
            preprocess: Default::default(),
            features: Default::default(),
        };
        let varmap = VarMap::new();
        let vb = emollama::model::init::SeededVarMap::builder(&varmap, 0, DType::F32, &dev);
        let enc = FrozenEncoder::build(Path::new("bench.toml"), &m, None, vb)?;
        let x = Tensor::randn(0f32, 1.0, shape, &dev)?;
        enc.final_output(&x)?; // warm-up
        let mut runs = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let t0 = Instant::now();
            let y = enc.final_output(&x)?;
            y.sum_all()?.to_scalar::<f32>()?; // the work is done, not just queued
            runs.push(t0.elapsed().as_secs_f64());
        }
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        println!("{}", serde_json::json!({"name": name, "median_s": median, "runs": runs, "input": what, "precision": mode, "backend": emollama::accel::backend(), "bf16_arith": emollama::accel::bf16_arith().name()}));
    }
    Ok(())
}
