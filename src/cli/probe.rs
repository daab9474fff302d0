//! `emollama probe`: a media file's streams and sampled frames, optionally through the face front end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use emollama::media::{self, FrameSampling};

/// Print a media file's streams, duration, frame count and the frames a sampling would pick.
#[derive(clap::Args)]
pub struct Args {
    /// A media file: a path, file://, s3://bucket/key or http(s):// URL (fetched into the cache).
    file: String,
    /// Take the sampling from this recipe's `data.frames`.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Sampling: `uniform:N`, `first`, `fps:F` or `segments:SxC` (default: uniform:8, or the recipe's).
    #[arg(long)]
    frames: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Run the face front end on the sampled frames (the recipe's `[front_end.face]` options, else
    /// the defaults) and write a contact sheet PNG: to this path, or `<file stem>.faces.png`.
    /// With `--json`, print per sampled frame the timestamp, boxes, keypoints, scores and crop.
    #[arg(long, num_args = 0..=1, value_name = "PNG")]
    faces: Option<Option<PathBuf>>,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let recipe = match &self.recipe {
            Some(r) => Some(super::load(r, &[])?.recipe),
            None => None,
        };
        let sampling = match (&self.frames, &recipe) {
            (Some(spec), _) => super::parse_sampling(spec)?,
            (None, Some(r)) => r.data.frames.clone(),
            (None, None) => FrameSampling::Uniform { n: 8 },
        };
        media::init();
        let storage = emollama::storage::Storage::new(Default::default(), &emollama::storage::cache_root(""))?;
        let uri = self.file;
        let file = storage.local(&emollama::storage::Location::parse(&uri)?)?;
        if let Some(out) = self.faces {
            return probe_faces(&file, &uri, &sampling, recipe.as_ref(), out, self.json);
        }
        let info = media::probe(&file)?;
        let picked = media::probe::sampled_frame_times(&file, &sampling).ok();
        if self.json {
            let v = serde_json::json!({"probe": info, "sampling": sampling, "targets_s": info.sample_times(&sampling), "picked_s": picked});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", info.render_text());
            println!("sampling {sampling:?}");
            println!("  target times (s): {}", fmt_times(&info.sample_times(&sampling)));
            if let Some(p) = picked {
                println!("  picked frames (s): {}", fmt_times(&p));
            }
        }
        Ok(())
    }
}

fn fmt_times(t: &[f64]) -> String {
    t.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ")
}

/// `probe --faces`: the face front end on the sampled frames; a contact sheet PNG, and JSON or a table.
fn probe_faces(file: &Path, uri: &str, sampling: &FrameSampling, recipe: Option<&emollama::recipe::Recipe>, out: Option<PathBuf>, json: bool) -> Result<()> {
    use emollama::media::face::{CropSource, FER_LABELS, FaceFrontEnd};
    let opts = recipe.and_then(|r| r.front_end.face.clone()).unwrap_or_default();
    let (crop_w, crop_h) = recipe.map(|r| (r.data.width as usize, r.data.height as usize)).unwrap_or((224, 224));
    let fe = FaceFrontEnd::new(&opts)?;
    let (w, h) = fe.detect_size_of(file)?;
    let video = media::decode_video(file, sampling, w, h)?;
    let clip = fe.process(&video, crop_w, crop_h).with_context(|| format!("face front end on `{uri}`"))?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{}.faces.png", file.file_stem().and_then(|s| s.to_str()).unwrap_or("probe"))));
    let png = emollama::report::face_sheet::contact_sheet(&video, &clip, &format!("{uri}: {} of {} sampled frames with a face", clip.faces_found(), clip.frames.len()))?;
    std::fs::write(&out, png).with_context(|| format!("writing the contact sheet `{}`", out.display()))?;
    if json {
        let frames: Vec<serde_json::Value> = clip
            .frames
            .iter()
            .map(|f| {
                serde_json::json!({
                    "timestamp_s": f.timestamp_s,
                    "detections": f.detections,
                    "main": f.main,
                    "crop": f.crop,
                    "window": f.window,
                    "expression": f.expression.map(|p| FER_LABELS.iter().zip(p).map(|(l, v)| (l.to_string(), v)).collect::<std::collections::BTreeMap<_, _>>()),
                })
            })
            .collect();
        let v = serde_json::json!({"file": uri, "frame_size": [w, h], "crop_size": [crop_w, crop_h], "options": opts, "peak": clip.peak, "frames": frames, "contact_sheet": out});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{uri}: frames decoded at {w}x{h}, crops {crop_w}x{crop_h}");
        for (i, f) in clip.frames.iter().enumerate() {
            let main = f.main.and_then(|m| f.detections.get(m));
            let face = match main {
                Some(d) => format!("face {:.0},{:.0}-{:.0},{:.0} score {:.3}", d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3], d.score),
                None => match f.crop {
                    CropSource::Nearest(j) => format!("no face (window of #{j})"),
                    CropSource::Dropped(j) => format!("no face (dropped, repeats #{j})"),
                    _ => "no face (full frame)".to_string(),
                },
            };
            let expr = f.expression.map(|p| {
                let (label, v) = emollama::media::face::expression::top(&p);
                format!("  {label} {v:.2}")
            });
            let peak = if clip.peak == Some(i) { "  <- peak" } else { "" };
            println!("  #{i:<2} t={:7.3}s  {} detection(s)  {face}{}{peak}", f.timestamp_s, f.detections.len(), expr.unwrap_or_default());
        }
        println!("contact sheet: {}", out.display());
    }
    Ok(())
}
