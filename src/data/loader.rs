//! Decoding samples into in-memory media, in parallel, with a progress bar and the recipe's error policy.

use std::sync::{Arc, Mutex};

use crate::media::{self, FrameSampling, MediaError};
use crate::recipe::OnError;

use super::Sample;

/// A sample's decoded media at the recipe's sizes.
#[derive(Debug, Clone)]
pub struct DecodedMedia {
    /// `frames × height × width × 3` RGB bytes.
    pub frames: Vec<u8>,
    pub num_frames: usize,
    /// Exactly `audio_len` samples (16 kHz mono), padded with silence or cut.
    pub audio: Vec<f32>,
    /// The file had no audio stream (the audio is silence).
    pub audio_missing: bool,
    /// With the face front end: the global view's whole frame (`height × width × 3`), while
    /// `frames` hold the face crops.
    pub global: Option<Vec<u8>>,
    /// With the face front end: sampled frames where the main face was found, and the peak frame.
    pub faces: Option<FaceSummary>,
}

/// What the face front end found in a clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FaceSummary {
    pub frames_with_face: usize,
    pub peak: Option<usize>,
}

/// How to decode.
#[derive(Debug, Clone)]
pub struct DecodeSpec {
    pub sampling: FrameSampling,
    pub width: u32,
    pub height: u32,
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
    let clip = media::decode_clip(&path, &spec.sampling, spec.width, spec.height)?;
    let num_frames = clip.video.frames.len();
    let mut frames = Vec::with_capacity(num_frames * (spec.width * spec.height * 3) as usize);
    for f in &clip.video.frames {
        frames.extend_from_slice(f);
    }
    let mut audio = clip.audio.samples;
    audio.resize(spec.audio_len, 0.0);
    Ok(DecodedMedia { frames, num_frames, audio, audio_missing: clip.audio.missing, global: None, faces: None })
}

/// Decodes at the detection size, runs the face front end: `frames` become the eye-aligned face crops
/// at the recipe's size, `global` the whole first / middle / peak frame at that size.
fn decode_with_faces(path: &std::path::Path, spec: &DecodeSpec, face: &crate::media::face::FaceFrontEnd) -> Result<DecodedMedia, MediaError> {
    let (dw, dh) = face.detect_size_of(path)?;
    let clip = media::decode_clip(path, &spec.sampling, dw, dh)?;
    let (cw, ch) = (spec.width as usize, spec.height as usize);
    let faces = face.process(&clip.video, cw, ch).map_err(|e| MediaError::NoFace { path: path.to_path_buf(), detail: e.to_string() })?;
    let n = faces.crops.len();
    let global = match clip.video.frames.get(spec.global_frame.index(n, faces.peak)) {
        Some(f) => Some(media::resize::resize_rgb(f, dw as usize, dh as usize, cw, ch, media::resize::Filter::Bilinear).map_err(|e| MediaError::decode(path, e.to_string()))?),
        None => None,
    };
    let mut audio = clip.audio.samples;
    audio.resize(spec.audio_len, 0.0);
    Ok(DecodedMedia {
        frames: faces.crops.concat(),
        num_frames: n,
        audio,
        audio_missing: clip.audio.missing,
        global,
        faces: Some(FaceSummary { frames_with_face: faces.faces_found(), peak: faces.peak }),
    })
}
