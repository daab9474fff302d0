//! One input transform per encoder: on a real clip, the pixels a run feeds each Emotion-LLaMA encoder
//! (the decoder of a run with the model's views, then the batch) equal, tensor for tensor, what
//! `emollama extract` feeds the same encoder. The encoders are the tiny random-weight manifests, with the
//! local one at another size (32) than the others (64), so every view has its own size and filter.

mod common;

use candle_core::{DType, Device, IndexOp};
use candle_nn::{VarBuilder, VarMap};
use emollama::data::loader::{DecodeSpec, decode_one};
use emollama::feed::batch::media_batch;
use emollama::media::{FrameSampling, GlobalFrame, ViewRole};
use emollama::model::emotion_llama::EmotionLlamaEncoders;
use emollama::model::encoders::FrozenEncoder;
use emollama::registry::Registry;

use common::{max_diff, media, media_sample, repo};

fn encoder(registry: &Registry, name: &str, image_size: Option<i64>) -> FrozenEncoder {
    let (path, manifest) = registry.encoder(name).expect("registered");
    let mut m = manifest.clone();
    if let Some(s) = image_size {
        m.config.insert("image_size".into(), toml::Value::Integer(s));
    }
    FrozenEncoder::load(path, &m, 7, &Device::Cpu).expect("load")
}

fn spec(views: Vec<emollama::media::PixelView>, sampling: FrameSampling, global_frame: GlobalFrame) -> DecodeSpec {
    let cache = tempfile::tempdir().expect("tempdir").keep();
    DecodeSpec {
        sampling,
        width: 64,
        height: 64,
        views,
        audio_len: 16000,
        on_error: emollama::recipe::OnError::Fail,
        threads: 1,
        show_progress: false,
        storage: emollama::storage::Storage::new(Default::default(), &cache).expect("storage"),
        face: None,
        global_frame,
    }
}

#[test]
fn a_run_feeds_each_emotion_llama_encoder_what_extract_feeds_it() {
    let registry = Registry::discover(&repo()).expect("registry");
    let global = encoder(&registry, "eva-vit-tiny", None);
    let local = encoder(&registry, "vit-mae-tiny", Some(32));
    let temporal = encoder(&registry, "videomae-tiny", None);
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    let el = EmotionLlamaEncoders::new(global, Some(local), Some(temporal), None, emollama::recipe::ProjectorKind::Linear, 16, vb).expect("encoders");
    let views = el.views();
    let roles: Vec<ViewRole> = views.iter().map(|v| v.role).collect();
    assert_eq!(roles, [ViewRole::Global, ViewRole::Local, ViewRole::Temporal]);
    assert_eq!((views[0].transform.width, views[1].transform.width, views[2].transform.width), (64, 32, 64));

    // Reload the encoders as `extract` does (the same manifests) and compare per view.
    let extract_global = encoder(&registry, "eva-vit-tiny", None);
    let extract_local = encoder(&registry, "vit-mae-tiny", Some(32));
    let extract_temporal = encoder(&registry, "videomae-tiny", None);
    let clip = "WolfgangLanger_Pexels.mp4"; // 640x360: every view resizes
    let sampling = FrameSampling::Segments { segments: 8, consecutive: 2 };
    for (global_frame, index) in [(GlobalFrame::First, 0), (GlobalFrame::Middle, 8)] {
        let decoded = decode_one(&media_sample(clip), &spec(views.clone(), sampling.clone(), global_frame)).expect("decode");
        let batch = media_batch(&[&decoded], &views, &Device::Cpu).expect("batch");
        let path = media(clip);
        let fed = |role| batch.view(role).expect("view").i(0).expect("sample 0");

        let extracted = emollama::extract::read_frames(&extract_global, &path, &sampling).expect("extract global");
        let want = extracted.i(index).expect("frame");
        assert_eq!(fed(ViewRole::Global).dims(), &[3, 64, 64]);
        assert_eq!(max_diff(&fed(ViewRole::Global), &want), 0.0, "global view ({global_frame})");

        let extracted = emollama::extract::read_frames(&extract_local, &path, &sampling).expect("extract local");
        assert_eq!(fed(ViewRole::Local).dims(), &[16, 3, 32, 32]);
        assert_eq!(max_diff(&fed(ViewRole::Local), &extracted), 0.0, "local view");

        let extracted = emollama::extract::read_frames(&extract_temporal, &path, &sampling).expect("extract temporal");
        assert_eq!(fed(ViewRole::Temporal).dims(), &[16, 3, 64, 64]);
        assert_eq!(max_diff(&fed(ViewRole::Temporal), &extracted), 0.0, "temporal view");

        // And the encoders' outputs on those pixels are the extracted features' inputs: the run's
        // temporal feature equals the encoder applied to extract's clip.
        let features = el.features(&batch, true, false).expect("features");
        let direct = match extract_temporal.features(&extracted.unsqueeze(0).expect("clip"), &extract_temporal.features).expect("features") {
            emollama::model::encoders::FeatureOutput::Pooled(emollama::model::encoders::features::Pooled::One(t)) => t,
            other => panic!("unexpected output {other:?}"),
        };
        assert!(max_diff(features.temporal.as_ref().expect("temporal"), &direct) < 1e-5);
    }
}
