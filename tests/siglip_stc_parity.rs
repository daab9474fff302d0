//! VideoLLaMA2's visual path against its references, on the tiny fixtures written by
//! `tools/fixtures/make_siglip_stc_fixtures.py`: the SigLIP vision tower against transformers 4.46.3's
//! `SiglipVisionModel` (every hidden state and `last_hidden_state`, directly and through `emollama extract`
//! on the saved model directory, bare and as a whole `SiglipModel` checkpoint), its preprocessing against
//! `SiglipImageProcessor`, and `stc_connector_v35` against VideoLLaMA2's own `STCConnectorV35` (timm 1.0.3).
//! Tolerance 1e-4 in f32.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{encoder_fixture, load_tensors as load, max_diff, media, repo};
use emollama::model::encoders::siglip::{SiglipVisionConfig, SiglipVisionModel};
use emollama::model::stc::{StcConfig, StcConnectorV35};

const TOL: f32 = 1e-4;

fn siglip_dir() -> PathBuf {
    encoder_fixture("siglip")
}

fn stc_dir() -> PathBuf {
    repo().join("tests/fixtures/stc")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn extract(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_emollama")).arg("extract").args(args).current_dir(repo()).output().expect("run emollama");
    assert!(out.status.success(), "emollama extract {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The number of hidden states in the reference (embeddings + layers).
fn reference_states(r: &HashMap<String, Tensor>) -> usize {
    (0..).map_while(|i| r.get(&format!("hidden_states.{i}"))).count()
}

/// Every `hidden_states.N` of `got` against the reference; returns the per-state differences.
fn check_states(what: &str, got: &HashMap<String, Tensor>, r: &HashMap<String, Tensor>) -> Vec<f32> {
    let n = reference_states(r);
    assert_eq!(n, 4, "the fixture has the embeddings and 3 layers");
    let diffs: Vec<f32> = (0..n)
        .map(|i| {
            let key = format!("hidden_states.{i}");
            let d = max_diff(got.get(&key).unwrap_or_else(|| panic!("{what}: no `{key}`")), &r[&key]);
            assert!(d <= TOL, "{what}: {key} differs from transformers by {d}");
            d
        })
        .collect();
    let shown: Vec<String> = diffs.iter().map(|d| format!("{d:.3e}")).collect();
    println!("{what}: max abs difference per hidden state [{}]", shown.join(", "));
    diffs
}

#[test]
fn siglip_hidden_states_match_transformers() {
    let dir = siglip_dir();
    let r = load(&dir.join("reference.safetensors"));
    let cfg: SiglipVisionConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config")).expect("config json");
    assert_eq!(cfg.image_size % cfg.patch_size, 4, "the fixture must exercise the unpadded convolution's floor");
    // SAFETY: the committed fixture is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu) }.expect("weights");
    let model = SiglipVisionModel::new(&cfg, vb.pp("vision_model")).expect("model");
    let x = &r["pixel_values"];
    let states: HashMap<String, Tensor> = model.forward(x).expect("forward").into_iter().enumerate().map(|(i, t)| (format!("hidden_states.{i}"), t)).collect();
    check_states("SigLIP (direct)", &states, &r);
    let d = max_diff(&model.forward_last(x).expect("last"), &r["last_hidden_state"]);
    println!("SigLIP (direct): last_hidden_state (post_layernorm) {d:.3e}");
    assert!(d <= TOL, "last_hidden_state differs by {d}");
}

#[test]
fn siglip_through_extract_matches_transformers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let r = load(&siglip_dir().join("reference.safetensors"));
    let input = tmp.path().join("in.safetensors");
    r["pixel_values"].save_safetensors("pixel_values", &input).expect("save");

    // The model directory as `save_pretrained` wrote it (names under `vision_model.`).
    let out = tmp.path().join("all.safetensors");
    extract(&["--encoder", s(&siglip_dir()), "--input", s(&input), "--out", s(&out), "--pooling", "none"]);
    check_states("SigLIP (extract, HF directory)", &load(&out), &r);

    // Its default feature there is VideoLLaMA2's: layer -2, every token, no post-layernorm.
    let out = tmp.path().join("tokens.safetensors");
    extract(&["--encoder", s(&siglip_dir()), "--input", s(&input), "--out", s(&out)]);
    let d = max_diff(&load(&out)["features"], &r["hidden_states.2"]);
    println!("SigLIP (extract, layer -2 tokens): {d:.3e}");
    assert!(d <= TOL, "layer -2 tokens differ by {d}");

    // As google/siglip-so400m-patch14-384 is published: a whole SiglipModel (text tower beside the
    // vision one, the vision config nested).
    let whole = tmp.path().join("siglip-model");
    std::fs::create_dir(&whole).expect("mkdir");
    let mut tensors = load(&siglip_dir().join("model.safetensors"));
    tensors.insert("text_model.embeddings.position_embedding.weight".into(), Tensor::zeros((4, 32), DType::F32, &Device::Cpu).expect("zeros"));
    tensors.insert("logit_scale".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).expect("zeros"));
    candle_core::safetensors::save(&tensors, whole.join("model.safetensors")).expect("save");
    let vision: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(siglip_dir().join("config.json")).expect("config")).expect("json");
    let config = serde_json::json!({"architectures": ["SiglipModel"], "model_type": "siglip", "initializer_factor": 1.0, "text_config": {"hidden_size": 32, "model_type": "siglip_text_model"}, "vision_config": vision});
    std::fs::write(whole.join("config.json"), config.to_string()).expect("config");
    std::fs::copy(siglip_dir().join("preprocessor_config.json"), whole.join("preprocessor_config.json")).expect("copy");
    let out = tmp.path().join("whole.safetensors");
    extract(&["--encoder", s(&whole), "--input", s(&input), "--out", s(&out), "--pooling", "none"]);
    check_states("SigLIP (extract, whole SiglipModel)", &load(&out), &r);
}

#[test]
fn siglip_preprocessing_matches_siglip_image_processor() {
    let dir = siglip_dir();
    let p = load(&dir.join("preprocess.safetensors"));
    let (_, manifest) = emollama::extract::resolve_encoder(None, s(&dir)).expect("HF directory");
    assert_eq!(manifest.architecture, "siglip");
    let enc = emollama::model::encoders::FrozenEncoder::load(&dir.join("config.json"), &manifest, 0, &Device::Cpu).expect("load");
    let transform = enc.pixel_transform().expect("an image encoder");
    let src = &p["src"];
    let (h, w, _) = src.dims3().expect("(h, w, 3)");
    let bytes = src.flatten_all().and_then(|t| t.to_vec1::<u8>()).expect("u8 image");
    let got = transform.apply(&[bytes], w, h, &Device::Cpu).expect("transform");
    let d = max_diff(&got, &p["pixel_values"]);
    println!("SigLIP preprocessing ({w}x{h} → 36x36 bicubic, mean = std = 0.5): {d:.3e}");
    // Pillow's bicubic bytes are reproduced exactly; the rest is f32 vs f64-then-f32 arithmetic.
    assert!(d <= 1e-5, "pixel values differ from SiglipImageProcessor by {d}");
}

#[test]
fn siglip_tiny_manifest_extracts_every_sampled_frames_tokens() {
    let video = media("carphone_pristine.mp4");
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("siglip.safetensors");
    extract(&["--encoder", "siglip-tiny", "--input", s(&video), "--out", s(&out)]);
    // 16 frames sampled as VideoLLaMA2 does, 4x4 tokens of width 32 each, unpooled.
    assert_eq!(load(&out)["carphone_pristine"].dims(), &[16, 16, 32]);
}

#[test]
fn midpoints_sampling_picks_videollama2s_frames_of_real_clips() {
    use emollama::media::{self, FrameSampling};
    media::init();
    for clip in ["carphone_pristine.mp4", "WolfgangLanger_Pexels.mp4"] {
        let path = media(clip);
        let info = media::probe(&path).expect("probe");
        let frames = info.video_frame_count.expect("frame count") as usize;
        let fps = info.video().and_then(|v| v.fps).expect("fps");
        let times = media::sampled_frame_times(&path, &FrameSampling::Midpoints { n: 16 }).expect("decode");
        // decord's `get_batch(frame_sample(len(vr), num_frames=16))`: frame k is shown at k / fps.
        let want = emollama::media::sample::midpoint_indices(frames, 16);
        let got: Vec<usize> = times.iter().map(|t| (t * fps).round() as usize).collect();
        assert_eq!(got, want, "{clip}: {frames} frames at {fps} fps");
    }
}

fn stc() -> (StcConfig, StcConnectorV35) {
    let dir = stc_dir();
    let cfg: StcConfig = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config")).expect("config json");
    // SAFETY: the committed fixture is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("connector.safetensors")], DType::F32, &Device::Cpu) }.expect("weights");
    let m = StcConnectorV35::new(&cfg, vb.pp("mm_projector")).expect("connector");
    (cfg, m)
}

#[test]
fn stc_connector_matches_videollama2() {
    let (cfg, m) = stc();
    assert_eq!((cfg.mm_hidden_size, cfg.hidden_size, cfg.depth, cfg.mlp_depth, cfg.downsample), (24, 32, 4, 2, [2, 2, 2]));
    let r = load(&stc_dir().join("reference.safetensors"));
    for case in ["even", "odd"] {
        let x = &r[&format!("x_{case}")];
        let y = m.forward(x).expect("forward");
        let (_, t, n, _) = x.dims4().expect("4-D input");
        assert_eq!(y.dims()[1], cfg.output_tokens(t, n));
        let d = max_diff(&y, &r[&format!("y_{case}")]);
        println!("stc_connector_v35 ({t} frames of {n} tokens → {} tokens): max abs difference {d:.3e}", y.dims()[1]);
        assert!(d <= TOL, "{case}: output differs from STCConnectorV35 by {d}");
    }
}

#[test]
fn stc_connector_reads_exactly_the_reference_state_dict() {
    let (cfg, _) = stc();
    let map = VarMap::new();
    StcConnectorV35::new(&cfg, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu).pp("mm_projector")).expect("build");
    let ours: BTreeSet<String> = map.data().lock().expect("varmap").keys().cloned().collect();
    let theirs: BTreeSet<String> = load(&stc_dir().join("connector.safetensors")).into_keys().collect();
    assert_eq!(ours, theirs, "names: ours only {:?}, reference only {:?}", ours.difference(&theirs).collect::<Vec<_>>(), theirs.difference(&ours).collect::<Vec<_>>());
    // Shapes too: each of our variables has the shape of the reference tensor of its name.
    let r = load(&stc_dir().join("connector.safetensors"));
    for (k, v) in map.data().lock().expect("varmap").iter() {
        assert_eq!(v.as_tensor().dims(), r[k].dims(), "{k}");
    }
}

#[test]
fn siglip_config_keys_are_all_known() {
    use emollama::model::encoders::siglip::{check_hf_keys, vision_config};
    let p = siglip_dir().join("config.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).expect("config")).expect("json");
    let obj = json.as_object().expect("object");
    assert_eq!(check_hf_keys(&p, obj).expect("keys"), Vec::<String>::new());
    // The published so400m config.json: a whole SiglipModel, the tower's shape in `vision_config`.
    let whole = serde_json::json!({"architectures": ["SiglipModel"], "initializer_factor": 1.0, "model_type": "siglip",
        "text_config": {"hidden_size": 1152, "model_type": "siglip_text_model"}, "torch_dtype": "float32",
        "transformers_version": "4.37.0.dev0", "vision_config": {"hidden_size": 1152, "image_size": 384,
        "intermediate_size": 4304, "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14}});
    let vision = vision_config(&p, whole).expect("vision_config");
    assert_eq!(check_hf_keys(&p, vision.as_object().expect("object")).expect("keys"), Vec::<String>::new());
    let cfg: SiglipVisionConfig = serde_json::from_value(vision).expect("config");
    assert_eq!((cfg.num_patches(), cfg.layer_norm_eps, cfg.hidden_act), (729, 1e-6, candle_nn::Activation::GeluPytorchTanh));
    // An activation that is not implemented is refused, not replaced.
    assert!(serde_json::from_str::<SiglipVisionConfig>(r#"{"hidden_act": "quick_gelu"}"#).is_err());
}
