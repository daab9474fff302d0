//! Weights from a Hugging Face repository through hf-hub, against a local server speaking the Hub's
//! `resolve` protocol (HF_ENDPOINT): the standard layout (config, index, shards) is fetched into
//! HF_HUB_CACHE with HF_TOKEN sent, the model built from it matches transformers, and a second resolution
//! with HF_HUB_OFFLINE=1 needs no server.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, IndexOp, Tensor};
use emollama::model::hub::LocalWeights;
use emollama::registry::Weights;

use common::hub::serve;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm/tiny-llama-hf")
}

#[test]
fn downloads_an_hf_repository_through_hf_endpoint_then_works_offline() -> anyhow::Result<()> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let endpoint = serve(fixture_dir(), log.clone())?;
    let cache = tempfile::tempdir()?;
    // SAFETY: nextest runs each test in its own process; nothing else reads these variables concurrently.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &endpoint);
        std::env::set_var("HF_HUB_CACHE", cache.path());
        std::env::set_var("HF_TOKEN", "hf_secret");
        std::env::remove_var("HF_HUB_OFFLINE");
    }
    let weights = Weights::Hf { repo: "org/tiny".into(), revision: "main".into(), files: vec![], checkpoint: None };
    let got = emollama::model::hub::resolve("tiny", Path::new("plugins/llms/tiny.toml"), &weights)?;
    let Some(LocalWeights::HfDir(dir)) = got else { anyhow::bail!("expected an HF directory, got {got:?}") };
    assert!(dir.starts_with(cache.path()), "{} is not in HF_HUB_CACHE", dir.display());
    let requests = log.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    for f in ["config.json", "model.safetensors.index.json", "model-00001-of-00004.safetensors", "model-00004-of-00004.safetensors"] {
        assert!(requests.iter().any(|r| r.contains(f) && r.contains("Bearer hf_secret")), "{f} not fetched with the token: {requests:?}");
    }

    // The downloaded model is the fixture model: same logits as transformers.
    let (cfg, store) = emollama::model::weights::open_hf_model(&dir)?;
    let vm = candle_nn::VarMap::new();
    let vb = emollama::model::weights::PretrainedBackend::builder(Arc::new(store), "", &vm, 0, DType::F32, &Device::Cpu);
    let model = emollama::model::llama::Llama::load(&cfg, None, None, vb)?;
    let r = candle_core::safetensors::load(fixture_dir().join("reference.safetensors"), &Device::Cpu)?;
    let ids = r["input_ids"].i(0)?.to_dtype(DType::U32)?.unsqueeze(0)?;
    let logits = model.forward_embeds(&model.embed(&ids)?, &Tensor::ones((1, 12), DType::U8, &Device::Cpu)?)?;
    let d = (logits.i(0)? - r["logits"].i(0)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(d < 1e-4, "logits differ by {d}");

    // Offline: the same resolution from the cache alone, the server unused.
    let before = log.lock().map_err(|_| anyhow::anyhow!("lock"))?.len();
    unsafe {
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    }
    let again = emollama::model::hub::resolve("tiny", Path::new("plugins/llms/tiny.toml"), &weights)?;
    assert_eq!(again, Some(LocalWeights::HfDir(dir)));
    assert_eq!(log.lock().map_err(|_| anyhow::anyhow!("lock"))?.len(), before, "offline mode must not touch the network");
    Ok(())
}

/// `source = "url"`: downloaded once into the models cache, checked against the manifest's sha256; a
/// mismatch is an error that keeps nothing.
#[test]
fn url_weights_are_checked_and_cached() -> anyhow::Result<()> {
    use sha2::Digest;
    let served = tempfile::tempdir()?;
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(served.path().join("w.gguf"), &bytes)?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let endpoint = serve(served.path().to_path_buf(), log.clone())?;
    let cache = tempfile::tempdir()?;
    // SAFETY: nextest runs each test in its own process.
    unsafe { std::env::set_var("EMOLLAMA_CACHE", cache.path()) };
    let url = format!("{endpoint}/org/tiny/resolve/main/w.gguf");
    let bad = Weights::Url { url: url.clone(), sha256: Some("00".repeat(32)) };
    let e = emollama::model::hub::resolve("w", Path::new("x.toml"), &bad).expect_err("sha mismatch").to_string();
    assert!(e.contains(&url) && e.contains("does not match"), "{e}");
    assert!(!cache.path().join("models/w/w.gguf").exists(), "a file with the wrong checksum must not be kept");
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let good = Weights::Url { url, sha256: Some(sha) };
    let got = emollama::model::hub::resolve("w", Path::new("x.toml"), &good)?;
    assert_eq!(got, Some(LocalWeights::Gguf(cache.path().join("models/w/w.gguf"))));
    let n = log.lock().map_err(|_| anyhow::anyhow!("lock"))?.len();
    emollama::model::hub::resolve("w", Path::new("x.toml"), &good)?;
    assert_eq!(log.lock().map_err(|_| anyhow::anyhow!("lock"))?.len(), n, "the second resolution uses the cache");

    // An encoder checkpoint (.pth) without a pinned hash: downloaded once, its hash recorded beside it.
    std::fs::write(served.path().join("enc.pth"), &bytes[..1000])?;
    let unpinned = Weights::Url { url: format!("{endpoint}/org/tiny/resolve/main/enc.pth"), sha256: None };
    let got = emollama::model::hub::resolve("enc", Path::new("x.toml"), &unpinned)?;
    assert_eq!(got, Some(LocalWeights::File(cache.path().join("models/enc/enc.pth"))));
    let stamp = std::fs::read_to_string(cache.path().join("models/enc/enc.pth.sha256"))?;
    assert_eq!(stamp, hex::encode(sha2::Sha256::digest(&bytes[..1000])));
    Ok(())
}
