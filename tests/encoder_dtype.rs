//! Frozen encoders keep their weight matrices in the run's dtype (`FrozenEncoder::load_in`): with bf16
//! matrices every encoder fixture gives the f32 model's hidden states up to bf16 rounding of the weights
//! (cosine ≥ 0.999 on every hidden state), and not bit for bit (the matrices really are bf16).

mod common;

use candle_core::{DType, Device, Tensor};
use emollama::model::encoders::FrozenEncoder;
use emollama::registry::EncoderManifest;

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.flatten_all().expect("flat").to_dtype(DType::F64).expect("f64"), b.flatten_all().expect("flat").to_dtype(DType::F64).expect("f64"));
    let dot = (&a * &b).expect("mul").sum_all().expect("sum").to_scalar::<f64>().expect("scalar");
    let n = |t: &Tensor| t.sqr().expect("sqr").sum_all().expect("sum").to_scalar::<f64>().expect("scalar").sqrt();
    dot / (n(&a) * n(&b))
}

#[test]
fn bf16_weight_matrices_match_f32_encoders() {
    let dir = tempfile::tempdir().expect("tempdir");
    // (fixture, architecture, modality, input key in reference.safetensors)
    let cases = [("vit_mae", "vit_mae", "video", "pixel_values"), ("videomae/mean_pooling", "videomae", "video", "pixel_values"), ("hubert-layer", "hubert", "audio", "input_values"), ("eva_vit", "eva_vit", "video", "pixel_values")];
    for (folder, arch, modality, input) in cases {
        let fixture = common::encoder_fixture(folder);
        let manifest = format!("name = \"t\"\narchitecture = \"{arch}\"\nmodality = \"{modality}\"\n[config]\n[weights]\nsource = \"path\"\npath = {:?}\n", fixture.display().to_string());
        let path = dir.path().join(format!("{arch}.toml"));
        std::fs::write(&path, &manifest).expect("manifest");
        let m: EncoderManifest = toml::from_str(&manifest).expect("manifest");
        let x = common::load_tensors(&fixture.join("reference.safetensors")).remove(input).expect("input");
        let f32 = FrozenEncoder::load(&path, &m, 0, &Device::Cpu).expect("f32").hidden_states(&x).expect("f32 forward");
        let bf16 = FrozenEncoder::load_in(&path, &m, 0, DType::BF16, &Device::Cpu).expect("bf16").hidden_states(&x).expect("bf16 forward");
        assert_eq!(f32.len(), bf16.len());
        let mut identical = true;
        for (i, (a, b)) in f32.iter().zip(&bf16).enumerate() {
            assert_eq!(b.dtype(), DType::F32, "{folder}: activations stay f32");
            let c = cosine(a, b);
            assert!(c >= 0.999, "{folder}: hidden state {i} at cosine {c}");
            identical &= common::max_diff(a, b) == 0.0;
        }
        assert!(!identical, "{folder}: bf16 matrices changed nothing");
    }
}
