//! The face and peak-frame front end: per sampled frame, detect faces (BlazeFace), follow the main
//! face, cut an eye-aligned crop for the face encoders (MAE, VideoMAE), score its expression
//! (FER mini-Xception) and pick the emotion peak frame for the global encoder.
//!
//! Emotion-LLaMA makes its face crops offline with OpenFace (a Windows binary) and feeds the global
//! encoder the first frame; here it all runs online, in Rust, with real pretrained weights shipped in
//! `assets/face/`. `[front_end.face]` in a recipe turns it on; `emollama probe --faces FILE` shows it.

pub mod align;
pub mod blazeface;
pub mod detection;
pub mod expression;
pub mod ops;
pub mod peak;
pub mod timeline;
pub mod track;

use candle_core::Device;
use serde::{Deserialize, Serialize};

pub use align::CropWindow;
pub use blazeface::BlazeFace;
pub use detection::Detection;
pub use expression::{FER_LABELS, MiniXception};
pub use peak::PeakBy;
pub use timeline::{Segment, Timeline, TimelineError};

use crate::media::{DecodedClip, FrameSampling, MediaError, VideoFrames};

#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error("face model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("no face found in any of the {frames} sampled frames (front_end.face.missing = \"drop\"); use \"nearest\" or \"full_frame\" to keep such clips")]
    NoFace { frames: usize },
    #[error("front_end.face: {0}")]
    Options(String),
}

/// What a frame without the main face becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissingFace {
    /// The window of the nearest frame that has the face, cut from this frame (a face that is
    /// briefly missed or turned away stays in place); the whole clip without a face → `full_frame`.
    #[default]
    Nearest,
    /// The largest centred square of the frame.
    FullFrame,
    /// The frame is left out; its slot repeats the nearest kept crop (encoders need a fixed count).
    /// A clip with no face at all is an error (skipped or fatal by `data.on_error`).
    Drop,
}

/// `[front_end.face]` in a recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaceOptions {
    /// `blazeface` (MediaPipe BlazeFace short range, 128x128; faces within ~2 m of the camera).
    pub detector: String,
    /// Face probability threshold (MediaPipe: 0.5).
    pub min_score: f32,
    /// Added on each side of the face box, as a fraction of its larger side.
    pub margin: f32,
    /// Rotate crops so the eyes are level.
    pub align: bool,
    pub missing: MissingFace,
    /// `fer` (FER2013 mini-Xception) or `none`; `peak = "expression"` needs `fer`.
    pub scorer: String,
    pub peak: PeakBy,
    /// Frames are decoded for detection with their longer side at most this (pixels).
    pub detect_max_side: u32,
}

impl Default for FaceOptions {
    fn default() -> Self {
        Self {
            detector: "blazeface".into(),
            min_score: 0.5,
            margin: 0.25,
            align: true,
            missing: MissingFace::Nearest,
            scorer: "fer".into(),
            peak: PeakBy::Expression,
            detect_max_side: 640,
        }
    }
}

impl FaceOptions {
    /// Problems as (`field`, message) pairs, for the recipe validator.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.detector != "blazeface" {
            out.push(("front_end.face.detector", format!("`{}`: expected `blazeface`", self.detector)));
        }
        if !["fer", "none"].contains(&self.scorer.as_str()) {
            out.push(("front_end.face.scorer", format!("`{}`: expected `fer` or `none`", self.scorer)));
        }
        if self.peak == PeakBy::Expression && self.scorer == "none" {
            out.push(("front_end.face.peak", "`expression` needs the expression scorer: set scorer = \"fer\" or peak = \"motion\"".into()));
        }
        if !(self.min_score > 0.0 && self.min_score < 1.0) {
            out.push(("front_end.face.min_score", format!("{}: expected a probability in (0, 1)", self.min_score)));
        }
        if !(0.0..=2.0).contains(&self.margin) {
            out.push(("front_end.face.margin", format!("{}: expected 0 ..= 2 (a fraction of the face box)", self.margin)));
        }
        if !(64..=4096).contains(&self.detect_max_side) {
            out.push(("front_end.face.detect_max_side", format!("{}: expected 64 ..= 4096 pixels", self.detect_max_side)));
        }
        out
    }
}

/// How a frame's crop was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "from")]
pub enum CropSource {
    Face,
    /// The window of this (sampled) frame index.
    Nearest(usize),
    FullFrame,
    /// Dropped; the slot repeats the crop of this frame index.
    Dropped(usize),
}

/// The front end's account of one sampled frame.
#[derive(Debug, Clone, Serialize)]
pub struct FrameFaces {
    pub timestamp_s: f64,
    /// Every face found, in pixels of the decoded frame.
    pub detections: Vec<Detection>,
    /// Index of the main face in `detections`.
    pub main: Option<usize>,
    pub crop: CropSource,
    pub window: CropWindow,
    /// Expression probabilities of the main face (`FER_LABELS` order), when scored.
    pub expression: Option<[f32; 7]>,
}

/// The front end's result for one clip.
#[derive(Debug, Clone)]
pub struct ClipFaces {
    pub frames: Vec<FrameFaces>,
    /// One RGB crop per sampled frame (`crop_w × crop_h`).
    pub crops: Vec<Vec<u8>>,
    pub crop_w: usize,
    pub crop_h: usize,
    /// The emotion peak frame (index into `frames`); `None` when no frame has a face.
    pub peak: Option<usize>,
    pub frame_w: usize,
    pub frame_h: usize,
}

impl ClipFaces {
    pub fn faces_found(&self) -> usize {
        self.frames.iter().filter(|f| f.main.is_some()).count()
    }
}

/// The loaded front end (models on the CPU; they are small).
pub struct FaceFrontEnd {
    opts: FaceOptions,
    detector: BlazeFace,
    scorer: Option<MiniXception>,
}

impl std::fmt::Debug for FaceFrontEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceFrontEnd").field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl FaceFrontEnd {
    pub fn new(opts: &FaceOptions) -> Result<Self, FaceError> {
        if let Some((field, msg)) = opts.problems().into_iter().next() {
            return Err(FaceError::Options(format!("{field}: {msg}")));
        }
        let dev = Device::Cpu;
        let mut cfg = blazeface::BlazeFaceConfig::short_range();
        cfg.min_score = opts.min_score;
        let detector = BlazeFace::shipped(cfg, &dev)?;
        let scorer = if opts.scorer == "fer" { Some(MiniXception::fer(&dev)?) } else { None };
        Ok(Self { opts: opts.clone(), detector, scorer })
    }

    pub fn options(&self) -> &FaceOptions {
        &self.opts
    }

    /// The decode size for detection: the stream's size scaled so its longer side is at most
    /// `detect_max_side`, even sides.
    pub fn detect_size(&self, w: u32, h: u32) -> (u32, u32) {
        let max = self.opts.detect_max_side;
        let long = w.max(h).max(1);
        if long <= max {
            return (w.max(2) & !1, h.max(2) & !1);
        }
        let s = f64::from(max) / f64::from(long);
        let even = |v: u32| (((f64::from(v) * s).round() as u32).max(2)) & !1;
        (even(w), even(h))
    }

    /// The detection decode size of the media file at `path` ([`Self::detect_size`] of its video stream).
    pub fn detect_size_of(&self, path: &std::path::Path) -> Result<(u32, u32), crate::media::MediaError> {
        let info = crate::media::probe(path)?;
        match info.video() {
            Some(v) => Ok(self.detect_size(v.width.unwrap_or(0), v.height.unwrap_or(0))),
            None => Err(crate::media::MediaError::NoVideoStream { path: path.to_path_buf(), streams: info.streams.iter().map(|s| s.kind.clone()).collect::<Vec<_>>().join(", ") }),
        }
    }

    /// Decodes the media file at `path` (the sampled frames at [`Self::detect_size_of`], and its audio)
    /// and runs the front end on the frames: per-frame detections, expression probabilities and times,
    /// the peak frame, and `crop_w × crop_h` crops. A front-end failure is a `NoFace` error naming the file.
    pub fn process_file(&self, path: &std::path::Path, sampling: &FrameSampling, crop_w: usize, crop_h: usize) -> Result<(DecodedClip, ClipFaces), MediaError> {
        let (w, h) = self.detect_size_of(path)?;
        let clip = crate::media::decode_clip(path, sampling, w, h)?;
        let faces = self.process(&clip.video, crop_w, crop_h).map_err(|e| MediaError::NoFace { path: path.to_path_buf(), detail: e.to_string() })?;
        Ok((clip, faces))
    }

    /// Runs the front end on sampled frames; crops are `crop_w × crop_h`.
    pub fn process(&self, video: &VideoFrames, crop_w: usize, crop_h: usize) -> Result<ClipFaces, FaceError> {
        let (w, h) = (video.width as usize, video.height as usize);
        let n = video.frames.len();
        let frames: Vec<&[u8]> = video.frames.iter().map(|f| f.as_slice()).collect();
        let detections = self.detector.detect(&frames, w, h)?;
        let main = track::main_faces(&detections, w as f32, h as f32);
        let has_face: Vec<bool> = main.iter().map(Option::is_some).collect();
        let nearest = track::nearest_with_face(&has_face);
        let window_of = |i: usize| -> Option<CropWindow> {
            main[i].and_then(|m| detections[i].get(m)).map(|d| CropWindow::for_face(d, self.opts.margin, self.opts.align))
        };
        if !has_face.iter().any(|&f| f) && self.opts.missing == MissingFace::Drop {
            return Err(FaceError::NoFace { frames: n });
        }
        let mut report = Vec::with_capacity(n);
        let mut crops = Vec::with_capacity(n);
        for i in 0..n {
            let (source, window) = match (window_of(i), self.opts.missing, nearest[i]) {
                (Some(win), _, _) => (CropSource::Face, win),
                (None, MissingFace::Nearest, Some(j)) => (CropSource::Nearest(j), window_of(j).unwrap_or(CropWindow::full_frame(w, h))),
                (None, MissingFace::Drop, Some(j)) => (CropSource::Dropped(j), window_of(j).unwrap_or(CropWindow::full_frame(w, h))),
                _ => (CropSource::FullFrame, CropWindow::full_frame(w, h)),
            };
            // A dropped frame's slot repeats the kept frame's own crop.
            let src = match source {
                CropSource::Dropped(j) => j,
                _ => i,
            };
            crops.push(align::crop(frames[src], w, h, &window, crop_w, crop_h));
            report.push(FrameFaces { timestamp_s: video.timestamps.get(i).copied().unwrap_or(0.0), detections: detections[i].clone(), main: main[i], crop: source, window, expression: None });
        }
        if let Some(scorer) = &self.scorer {
            // The scorer sees the tight, aligned face (no margin), as FER2013's faces are framed.
            let size = scorer.input_size();
            let faces: Vec<(usize, Vec<u8>)> = (0..n)
                .filter_map(|i| {
                    let d = main[i].and_then(|m| detections[i].get(m))?;
                    Some((i, align::crop(frames[i], w, h, &CropWindow::for_face(d, 0.0, self.opts.align), size, size)))
                })
                .collect();
            let refs: Vec<&[u8]> = faces.iter().map(|(_, c)| c.as_slice()).collect();
            for ((i, _), p) in faces.iter().zip(scorer.score_rgb(&refs, size, size)?) {
                report[*i].expression = Some(p);
            }
        }
        let peak = match self.opts.peak {
            PeakBy::Expression => peak::argmax(&report.iter().map(|f| f.expression.as_ref().map(expression::intensity)).collect::<Vec<_>>()),
            PeakBy::Motion => {
                let faces: Vec<Option<&Detection>> = (0..n).map(|i| main[i].and_then(|m| detections[i].get(m))).collect();
                peak::argmax(&peak::motion_energy(&faces))
            }
        };
        Ok(ClipFaces { frames: report, crops, crop_w, crop_h, peak, frame_w: w, frame_h: h })
    }
}
