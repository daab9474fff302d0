//! The VideoLLaMA2-AV family at tiny sizes (random SigLIP, BEATs and Qwen2-layout LLM): switching from the
//! quick start is a recipe change, it trains end to end from the raw video (the STC connector, the audio
//! projector and BEATs learn; SigLIP stays frozen), and the dry run of the published 7B-AV configuration
//! counts the reference's parameters per component.

use std::process::Command;

mod common;

use common::repo;

fn emollama() -> Command {
    Command::new(env!("CARGO_BIN_EXE_emollama"))
}

#[test]
fn the_family_switch_is_a_recipe_change_and_it_trains_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = repo().join("recipes/quickstart_videollama2_av_tiny.toml");
    // The family's recipe differs from the quick start in [model] (and the frame sampling) only.
    let text = std::fs::read_to_string(&base).expect("recipe");
    let tables: Vec<&str> = text.lines().filter(|l| l.starts_with('[') && !l.starts_with("[[stage")).collect();
    assert_eq!(tables, ["[data]", "[model]"], "{}", base.display());
    let body = format!(
        r#"extends = [{base:?}]
name = "vl2-mini"

[runtime]
runs_dir = {runs:?}
cache_dir = {cache:?}

[data.synth]
seed = 7
train = 48
val = 4
test = 6

[[stage]]
name = "coarse"
tasks = ["emotion"]
steps = 12
batch_size = 6
lr = 2e-3
warmup_steps = 2
log_every = 3
trainable = ["llm.*", "projector.*", "encoder.audio.*"]

[eval]
max_new_tokens = 6
"#,
        base = base.display().to_string(),
        runs = dir.path().join("runs").display().to_string(),
        cache = dir.path().join("cache").display().to_string(),
    );
    let recipe = dir.path().join("vl2.toml");
    std::fs::write(&recipe, body).expect("write recipe");
    let out = emollama().args(["run", recipe.to_str().expect("utf8"), "--no-progress"]).output().expect("spawn");
    assert!(out.status.success(), "run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let run = std::fs::read_dir(dir.path().join("runs")).expect("runs").flatten().map(|e| e.path()).find(|p| p.is_dir()).expect("a run");
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("log.jsonl")).expect("log").lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    let losses: Vec<f64> = log.iter().filter(|l| l["kind"] == "train").filter_map(|l| l["loss"].as_f64()).collect();
    assert!(losses.len() >= 4 && losses[losses.len() - 1] < losses[0], "loss did not fall: {losses:?}");

    // What trained: the connector (the reference's mm_projector names), the audio projector, BEATs; not SigLIP.
    let ckpt = common::load_tensors(&run.join("checkpoints/01-coarse.safetensors"));
    let initial = common::load_tensors(&run.join("checkpoints/01-coarse.safetensors"));
    for p in ["projector.video.s1.b1.conv2.conv.weight", "projector.video.sampler.0.weight", "projector.video.readout.2.bias", "projector.audio.0.weight", "encoder.audio.encoder.layers.0.self_attn.q_proj.weight"] {
        assert!(ckpt.contains_key(p), "{p} not in the trained set: {:?}", ckpt.keys().take(20).collect::<Vec<_>>());
    }
    assert!(!ckpt.keys().any(|k| k.starts_with("encoder.video.")), "SigLIP is frozen");
    assert_eq!(initial.len(), ckpt.len());
    // 16 midpoint frames of 4x4 SigLIP tokens -> 8 x 2 x 2 connector tokens; the sampler is Conv3d (2, 2, 2).
    assert_eq!(ckpt["projector.video.sampler.0.weight"].dims(), &[128, 128, 2, 2, 2]);
    assert_eq!(ckpt["projector.audio.0.weight"].dims(), &[128, 32]);
    let preds = std::fs::read_to_string(run.join("predictions.jsonl")).expect("predictions");
    assert_eq!(preds.lines().count(), 6);
}

/// The dry run of the published VideoLLaMA2.1-7B-AV configuration: the components' parameter counts
/// derived from the reference's shapes (videollama2_mer.md A.2, A.5–A.8).
#[test]
fn dry_run_counts_the_published_7b_av_parameters() {
    let out = emollama().args(["run", "--dry-run", "--json", repo().join("recipes/videollama2_av_mer2024.toml").to_str().expect("utf8")]).output().expect("spawn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let count = |name: &str| -> u64 {
        plan["components"].as_array().expect("components").iter().find(|c| c["name"] == name).and_then(|c| c["params"].as_u64()).unwrap_or_else(|| panic!("no component {name}: {}", plan["components"]))
    };
    // SigLIP-so400m vision tower: patch conv 1152·3·14·14 + 1152, 729 positions · 1152, 27 layers of
    // (4 · (1152² + 1152) attention + 2 · 2 · 1152 norms + 1152·4304 + 4304 + 4304·1152 + 1152 MLP) and the
    // post-layernorm; the attention-pooling head is not built (VideoLLaMA2 takes layer −2).
    let layer = 4 * (1152 * 1152 + 1152) + 4 * 1152 + 1152 * 4304 + 4304 + 4304 * 1152 + 1152;
    let embeddings = 1152 * 3 * 14 * 14 + 1152 + 729 * 1152;
    assert_eq!(count("encoder.video"), (embeddings + 27 * layer + 2 * 1152) as u64);
    assert_eq!(count("encoder.video"), 412_987_248);
    // Qwen2-7B: 7,615,616,512 (28 layers of 3584, MLP 18944, GQA 28/4 heads, q/k/v biases, untied 152064 vocab).
    assert_eq!(count("llm"), 7_615_616_512);
    // BEATs (BEATsConfig defaults, no AudioSet head): 90,311,792.
    assert_eq!(count("encoder.audio"), 90_311_792);
    // mlp2x_gelu 768 -> 3584 -> 3584: 768·3584 + 3584 + 3584² + 3584 (the 31.2 MB bf16 mm_projector_a.bin).
    assert_eq!(count("projector.audio"), 768 * 3584 + 3584 + 3584 * 3584 + 3584);
    // stc_connector_v35 1152 -> 3584 (A.5): two RegStages of 4 blocks, the (2,2,2) Conv3d, the readout.
    assert_eq!(count("projector.video"), 376_889_248);
    // Multimodal tokens: 8 · 13 · 13 = 1352 video, 187 · 8 = 1496 audio.
    let tokens = &plan["stages"][0]["tokens"][0];
    assert_eq!((tokens["video_here"].as_u64(), tokens["feature_here"].as_u64(), tokens["bos"].as_u64()), (Some(1352), Some(1496), Some(0)), "{tokens}");
    // The reference's AV-stage trainable set (LLM through LoRA here, see the recipe), SigLIP frozen.
    let stage = &plan["stages"][0];
    let trainable = stage["trainable_params"].as_u64().expect("trainable");
    assert_eq!(trainable, 20_185_088 + 90_311_792 + 376_889_248 + 15_604_736);
}
