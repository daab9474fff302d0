//! Decoding samples into in-memory media, in parallel, with a progress bar and the recipe's error policy.

use std::sync::{Arc, Mutex};

use crate::media::{self, FrameSampling, MediaError};
use crate::recipe::OnError;

use super::Sample;

/// A sample's decoded media, each pixel view at its encoder's size.
#[derive(Debug, Clone)]
pub struct DecodedMedia {
    /// Per view of [`DecodeSpec::views`] (same order): its frames as interleaved RGB bytes, back to back,
    /// at that view's size (`num_frames` of them; one for the global view). With the face front end the
    /// per-frame views hold the face crops and the global view the whole first / middle / peak frame.
    pub pixels: Vec<Vec<u8>>,
    pub num_frames: usize,
    /// Exactly `audio_len` samples (16 kHz mono), padded with silence or cut.
    pub audio: Vec<f32>,
    /// How many of `audio`'s samples are the file's (the rest is padding): the track length the
    /// audio clip selection spreads its clips over.
    pub audio_valid: usize,
    /// The file had no audio stream (the audio is silence).
    pub audio_missing: bool,
    /// With the face front end: sampled frames where the main face was found, and the peak frame.
    pub faces: Option<FaceSummary>,
}

/// What the face front end found in a clip: the main face's track over the sampled frames.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaceSummary {
    pub frames_with_face: usize,
    /// The emotion peak frame (index among the sampled frames).
    pub peak: Option<usize>,
    /// The sampled frames' times, in seconds.
    pub frame_times_s: Vec<f64>,
    /// The main face's mean box over the frames where it was found, as fractions of the frame:
    /// `[xmin, ymin, xmax, ymax]`.
    pub mean_box: Option<[f32; 4]>,
    /// The main face's mean detection score.
    pub mean_score: Option<f32>,
    /// The expression network's most probable label at the peak frame (when it scores faces).
    pub peak_expression: Option<String>,
}

impl FaceSummary {
    pub fn of(faces: &crate::media::face::ClipFaces) -> Self {
        let main: Vec<&crate::media::face::Detection> = faces.frames.iter().filter_map(|f| f.main.and_then(|m| f.detections.get(m))).collect();
        let n = main.len() as f32;
        let (fw, fh) = (faces.frame_w.max(1) as f32, faces.frame_h.max(1) as f32);
        let mean_box = (!main.is_empty()).then(|| {
            let mut b = [0f32; 4];
            for d in &main {
                for (k, v) in d.bbox.iter().enumerate() {
                    b[k] += v / if k % 2 == 0 { fw } else { fh } / n;
                }
            }
            b
        });
        let peak_expression = faces.peak.and_then(|p| faces.frames.get(p)).and_then(|f| f.expression).map(|probs| {
            let best = probs.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
            crate::media::face::expression::FER_LABELS[best].to_string()
        });
        Self {
            frames_with_face: faces.faces_found(),
            peak: faces.peak,
            frame_times_s: faces.frames.iter().map(|f| f.timestamp_s).collect(),
            mean_box,
            mean_score: (!main.is_empty()).then(|| main.iter().map(|d| d.score).sum::<f32>() / n),
            peak_expression,
        }
    }
}

/// How to decode.
#[derive(Debug, Clone)]
pub struct DecodeSpec {
    pub sampling: FrameSampling,
    /// The face crops' size (`data.width` x `data.height`); each view then resizes them to its encoder's.
    pub width: u32,
    pub height: u32,
    /// What each encoder is fed (the model's views); frames are decoded at the file's own size and
    /// transformed once per view, exactly as `extract` does.
    pub views: Vec<crate::media::PixelView>,
    pub audio_len: usize,
    pub on_error: OnError,
    pub threads: usize,
    pub show_progress: bool,
    /// Where remote media are fetched from (through the read-through cache).
    pub storage: Arc<crate::storage::Storage>,
    /// The face front end (`[front_end.face]`), shared by the decoder threads.
    pub face: Option<Arc<crate::media::face::FaceFrontEnd>>,
    /// `model.global_frame`: which whole frame the front end keeps.
    pub global_frame: crate::media::GlobalFrame,
}

/// A sample whose media could not be used.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub id: String,
    pub media: crate::storage::Location,
    pub reason: String,
}

/// Decoded samples, and the ones skipped by the error policy.
pub type Decoded = (Vec<(Sample, DecodedMedia)>, Vec<Skipped>);

/// Decodes every sample. Under `OnError::Skip` unreadable samples are dropped and returned in the
/// second list; under `OnError::Fail` the first error stops the run.
pub fn decode_all(samples: Vec<Sample>, spec: &DecodeSpec) -> Result<Decoded, MediaError> {
    media::init();
    let bar = crate::progress::bar(samples.len() as u64, "decode", spec.show_progress);
    let results: Mutex<Vec<Option<Result<DecodedMedia, MediaError>>>> = Mutex::new((0..samples.len()).map(|_| None).collect());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = spec.threads.clamp(1, 8);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(sample) = samples.get(i) else { break };
                    let r = decode_one(sample, spec);
                    if let Ok(mut g) = results.lock() {
                        g[i] = Some(r);
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let results = results.into_inner().unwrap_or_default();
    let mut ok = Vec::with_capacity(samples.len());
    let mut skipped = Vec::new();
    for (sample, r) in samples.into_iter().zip(results) {
        match r {
            Some(Ok(m)) => ok.push((sample, m)),
            Some(Err(e)) if spec.on_error == OnError::Skip && !e.is_outage() => {
                tracing::warn!(sample = %sample.id, error = %e, "skipping sample");
                skipped.push(Skipped { id: sample.id, media: sample.media, reason: e.to_string() });
            }
            Some(Err(e)) => return Err(e),
            None => skipped.push(Skipped { id: sample.id, media: sample.media, reason: "not decoded".into() }),
        }
    }
    Ok((ok, skipped))
}

pub fn decode_one(sample: &Sample, spec: &DecodeSpec) -> Result<DecodedMedia, MediaError> {
    let path = spec.storage.local(&sample.media).map_err(|e| MediaError::Fetch { path: sample.media.to_string().into(), detail: e.to_string(), outage: e.is_outage() })?;
    if let Some(face) = &spec.face {
        return decode_with_faces(&path, spec, face);
    }
    // No view (an audio-only model): the frames are not used, so they are decoded small.
    let (w, h) = if spec.views.is_empty() { (spec.width, spec.height) } else { media::frame_size(&path)? };
    let clip = media::decode_clip(&path, &spec.sampling, w, h)?;
    let n = clip.video.frames.len();
    let size = (w as usize, h as usize);
    let frames = Frames { frames: &clip.video.frames, size };
    let pixels = view_pixels(&path, &spec.views, frames, frames, spec.global_frame.index(n, None))?;
    let audio_valid = clip.audio.samples.len().min(spec.audio_len);
    let mut audio = clip.audio.samples;
    audio.resize(spec.audio_len, 0.0);
    Ok(DecodedMedia { pixels, num_frames: n, audio, audio_valid, audio_missing: clip.audio.missing, faces: None })
}

/// Decoded frames of one size.
#[derive(Clone, Copy)]
struct Frames<'a> {
    frames: &'a [Vec<u8>],
    size: (usize, usize),
}

/// Each view's pixels: the per-frame views from `per_frame`, the global view from `whole[global]`, each
/// through its encoder's transform.
fn view_pixels(path: &std::path::Path, views: &[crate::media::PixelView], per_frame: Frames, whole: Frames, global: usize) -> Result<Vec<Vec<u8>>, MediaError> {
    views
        .iter()
        .map(|v| {
            let err = |e: candle_core::Error| MediaError::decode(path, format!("the {} view: {e}", v.role.name()));
            let t = &v.transform;
            if v.role.single_frame() {
                let f = whole.frames.get(global).ok_or_else(|| MediaError::decode(path, "no sampled frame for the global view"))?;
                return t.resize(f, whole.size.0, whole.size.1).map_err(err);
            }
            let mut out = Vec::with_capacity(per_frame.frames.len() * t.frame_bytes());
            for f in per_frame.frames {
                out.extend(t.resize(f, per_frame.size.0, per_frame.size.1).map_err(err)?);
            }
            Ok(out)
        })
        .collect()
}

/// Decodes at the detection size and runs the face front end: the per-frame views take the eye-aligned
/// face crops (made at the recipe's size), the global view the whole first / middle / peak frame.
fn decode_with_faces(path: &std::path::Path, spec: &DecodeSpec, face: &crate::media::face::FaceFrontEnd) -> Result<DecodedMedia, MediaError> {
    let (cw, ch) = (spec.width as usize, spec.height as usize);
    let (clip, faces) = face.process_file(path, &spec.sampling, cw, ch)?;
    let (dw, dh) = (clip.video.width, clip.video.height);
    let n = faces.crops.len();
    let crops = Frames { frames: &faces.crops, size: (cw, ch) };
    let whole = Frames { frames: &clip.video.frames, size: (dw as usize, dh as usize) };
    let pixels = view_pixels(path, &spec.views, crops, whole, spec.global_frame.index(n, faces.peak))?;
    let audio_valid = clip.audio.samples.len().min(spec.audio_len);
    let mut audio = clip.audio.samples;
    audio.resize(spec.audio_len, 0.0);
    Ok(DecodedMedia {
        pixels,
        num_frames: n,
        audio,
        audio_valid,
        audio_missing: clip.audio.missing,
        faces: Some(FaceSummary::of(&faces)),
    })
}
