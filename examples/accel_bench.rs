//! The matmul micro-benchmark of `just bench`: the machine's peak (a 2048³ product through oneDNN with
//! packed weights) and the encoders' large Linear layers through `accel::Linear` and through candle,
//! in f32 and bf16, as GFLOP/s; then the encoders' f32 attention at their real shapes through
//! `accel::attention` (the AVX-512 kernel where the CPU has it) and through oneDNN's blocks. Prints one JSON
//! line per measurement (attention rows carry `"attention": true`).
//!     RAYON_NUM_THREADS=2 cargo run --release --example accel_bench -- [repeats]

use std::time::Instant;

use candle_core::{Device, Module, Tensor};
use emollama::accel::{self, Precision};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of `f` over `repeats` runs after two warm-ups.
fn time(repeats: usize, f: impl Fn() -> candle_core::Result<Tensor>) -> anyhow::Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut runs = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let y = f()?;
        std::hint::black_box(&y);
        runs.push(t.elapsed().as_secs_f64());
    }
    Ok(median(runs))
}

fn main() -> anyhow::Result<()> {
    emollama::accel::init_process();
    let repeats: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let dev = Device::Cpu;
    // (name, M, K, N): the peak shape and the encoders' largest Linear layers at their real sizes.
    let shapes = [
        ("peak 2048x2048x2048", 2048, 2048, 2048),
        ("ViT-MAE-L fc1 (16 crops)", 16 * 197, 1024, 4096),
        ("ViT-MAE-L fc2 (16 crops)", 16 * 197, 4096, 1024),
        ("VideoMAE-L fc1 (16 frames)", 1568, 1024, 4096),
        ("EVA-g fc1 (448)", 1025, 1408, 6144),
        ("HuBERT-L fc1 (10 s)", 499, 1024, 4096),
    ];
    for (name, m, k, n) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, n, &dev)?;
        let flops = 2.0 * (m * k * n) as f64;
        let candle = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        accel::set_enabled(false);
        let t_candle = time(repeats, || candle.forward(&x))?;
        accel::set_enabled(true);
        let mut row = serde_json::json!({"name": name, "m": m, "k": k, "n": n, "candle_f32_gflops": flops / t_candle / 1e9});
        for p in [Precision::F32, Precision::Bf16] {
            accel::set_inference(p, threads);
            let lin = accel::Linear::new(w.clone(), Some(b.clone()));
            let t = time(repeats, || lin.forward(&x))?;
            row[format!("emollama_{}_gflops", p.name())] = serde_json::json!(flops / t / 1e9);
        }
        row["backend"] = serde_json::json!(accel::backend());
        row["cpu_native_bf16"] = serde_json::json!(accel::cpu_has_bf16());
        println!("{row}");
    }
    // (name, batch, tokens): 16 heads of 64 in each encoder.
    let attention = [("VideoMAE-L (16 frames)", 1, 1568), ("HuBERT-L (10 s)", 1, 499), ("ViT-MAE-L (16 crops)", 16, 197)];
    accel::set_inference(Precision::F32, threads);
    for (name, b, t) in attention {
        let (h, d) = (16, 64);
        let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * h * d), &dev)?;
        let [q, k, v] = accel::split_fused_qkv(&qkv, h)?;
        let flops = 4.0 * (b * h * t * t * d) as f64;
        let t_ours = time(repeats, || accel::attention(&q, &k, &v, 0.125))?;
        let mut row = serde_json::json!({"attention": true, "name": name, "batch": b, "tokens": t, "heads": h, "head_dim": d,
            "emollama_f32_gflops": flops / t_ours / 1e9, "avx512_kernel": accel::attention_avx512::available()});
        #[cfg(feature = "onednn")]
        {
            let t_onednn = time(repeats, || accel::onednn::fused_attention(&q, &k, &v, 0.125, accel::Arith::F32))?;
            row["onednn_f32_gflops"] = serde_json::json!(flops / t_onednn / 1e9);
        }
        println!("{row}");
    }
    Ok(())
}
