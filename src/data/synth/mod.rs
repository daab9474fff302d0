//! Synthetic dataset generator (source `synth`): the project's embedded default dataset.
//!
//! Every clip is a real MP4 (video + AAC audio) rendered deterministically from the seed:
//! - the FACE carries valence (mouth flat / smile / frown with slanted brows),
//! - the VOICE carries arousal (calm: low, slow, soft; aroused: high, fast, loud),
//! - the TRANSCRIPT carries only a weak valence hint,
//!
//! so (valence, arousal) identifies each of the six [`CLASSES`] exactly while no single modality does.
//! Each clip also gets a coarse cue description (stage-1 target) and a one-sentence reasoning ending
//! in the label (stage-2 target).

pub mod face;
pub mod text;
pub mod voice;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use face::{FaceParams, render_face_frames};
pub use voice::{VoiceParams, synth_voice};

use crate::media::{self, VideoCodec};

/// The six MER classes, in label-index order.
pub const CLASSES: [&str; 6] = ["neutral", "angry", "happy", "sad", "worried", "surprise"];

/// Bumped whenever generated content changes; part of the fingerprint (and so of the cache path).
pub const GENERATOR_VERSION: &str = "synth-v3";

/// Split names in manifest order.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Valence group, carried by the face (mouth curve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Valence {
    /// Flat mouth: neutral, worried.
    Flat,
    /// Smile: happy, surprise.
    Up,
    /// Frown and slanted brows: sad, angry.
    Down,
}

/// Arousal group, carried by the voice (pitch, tempo, loudness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arousal {
    /// Low, slow, soft: neutral, happy, sad.
    Calm,
    /// High, fast, loud: angry, worried, surprise.
    Aroused,
}

impl Valence {
    pub const ALL: [Valence; 3] = [Valence::Flat, Valence::Up, Valence::Down];
    pub fn as_str(self) -> &'static str {
        match self {
            Valence::Flat => "flat",
            Valence::Up => "up",
            Valence::Down => "down",
        }
    }
}

impl Arousal {
    pub const ALL: [Arousal; 2] = [Arousal::Calm, Arousal::Aroused];
    pub fn as_str(self) -> &'static str {
        match self {
            Arousal::Calm => "calm",
            Arousal::Aroused => "aroused",
        }
    }
}

/// (valence, arousal) of a class index into [`CLASSES`] (indices ≥ 6 are treated as `surprise`).
pub fn class_affect(class: usize) -> (Valence, Arousal) {
    match class {
        0 => (Valence::Flat, Arousal::Calm),    // neutral
        1 => (Valence::Down, Arousal::Aroused), // angry
        2 => (Valence::Up, Arousal::Calm),      // happy
        3 => (Valence::Down, Arousal::Calm),    // sad
        4 => (Valence::Flat, Arousal::Aroused), // worried
        _ => (Valence::Up, Arousal::Aroused),   // surprise
    }
}

/// Inverse of [`class_affect`].
pub fn class_from_affect(valence: Valence, arousal: Arousal) -> usize {
    match (valence, arousal) {
        (Valence::Flat, Arousal::Calm) => 0,
        (Valence::Down, Arousal::Aroused) => 1,
        (Valence::Up, Arousal::Calm) => 2,
        (Valence::Down, Arousal::Calm) => 3,
        (Valence::Flat, Arousal::Aroused) => 4,
        (Valence::Up, Arousal::Aroused) => 5,
    }
}

/// Generator settings; every field takes part in the fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub seed: u64,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub duration_s: f32,
    pub sample_rate: u32,
    pub codec: VideoCodec,
    /// Probability that a transcript comes from the valence hint pool instead of the generic pool.
    pub text_hint_prob: f32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            train: 600,
            val: 60,
            test: 120,
            width: 64,
            height: 64,
            fps: 8,
            duration_s: 2.0,
            sample_rate: 16000,
            codec: VideoCodec::H264,
            text_hint_prob: 0.5,
        }
    }
}

impl SynthConfig {
    /// SHA-256 hex of the canonical JSON of the config plus [`GENERATOR_VERSION`].
    pub fn fingerprint(&self) -> String {
        // Serialising a plain struct of numbers and a unit enum cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(GENERATOR_VERSION.as_bytes());
        h.update(b"\n");
        h.update(json.as_bytes());
        hex::encode(h.finalize())
    }

    /// Total number of clips over all splits.
    pub fn total(&self) -> usize {
        self.train.saturating_add(self.val).saturating_add(self.test)
    }

    /// Checks value ranges; the encoder needs even frame sizes (yuv420p).
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |field: &'static str, reason: String| Err(SynthError::InvalidConfig { field, reason });
        if self.total() == 0 {
            return bad("train", "train + val + test must be > 0".into());
        }
        if self.total() > 1_000_000 {
            return bad("train", format!("train + val + test = {} exceeds 1000000", self.total()));
        }
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if !(16..=1024).contains(&v) || v % 2 != 0 {
                return bad(field, format!("{v} must be even and within 16..=1024"));
            }
        }
        if !(1..=60).contains(&self.fps) {
            return bad("fps", format!("{} must be within 1..=60", self.fps));
        }
        if !(self.duration_s.is_finite() && (0.25..=60.0).contains(&self.duration_s)) {
            return bad("duration_s", format!("{} must be within 0.25..=60", self.duration_s));
        }
        if !(8000..=48000).contains(&self.sample_rate) {
            return bad("sample_rate", format!("{} must be within 8000..=48000", self.sample_rate));
        }
        if !(self.text_hint_prob.is_finite() && (0.0..=1.0).contains(&self.text_hint_prob)) {
            return bad("text_hint_prob", format!("{} must be within 0..=1", self.text_hint_prob));
        }
        Ok(())
    }

    /// Name of the dataset directory under the cache root.
    pub fn dir_name(&self) -> String {
        format!("synth-{}", self.fingerprint())
    }
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthItem {
    /// `synth_00042`
    pub id: String,
    /// `train` | `val` | `test`
    pub split: String,
    pub label: String,
    pub transcript: String,
    /// Coarse cue description without any class word (stage-1 target).
    pub description: String,
    /// One sentence ending in the label (stage-2 target).
    pub reasoning: String,
    /// Clip path relative to the dataset directory, e.g. `clips/synth_00042.mp4`.
    pub file: String,
    /// `flat` | `up` | `down`
    pub valence: String,
    /// `calm` | `aroused`
    pub arousal: String,
}

/// A generated (or reused) dataset.
#[derive(Debug, Clone)]
pub struct SynthDataset {
    pub dir: PathBuf,
    pub items: Vec<SynthItem>,
}

impl SynthDataset {
    /// Items of one split, in manifest order.
    pub fn split<'a>(&'a self, split: &'a str) -> impl Iterator<Item = &'a SynthItem> + 'a {
        self.items.iter().filter(move |i| i.split == split)
    }

    /// Absolute path of an item's clip.
    pub fn clip_path(&self, item: &SynthItem) -> PathBuf {
        self.dir.join(&item.file)
    }

    /// Path of the manifest.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }
}

/// Errors of the generator; each names the path involved and the cause.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synth config: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding clip {}: {source}", path.display())]
    Media {
        path: PathBuf,
        #[source]
        source: media::MediaError,
    },
    #[error("manifest {} line {line}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("generating {}: worker thread panicked", path.display())]
    WorkerPanic { path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SynthError + 'a {
    move |source| SynthError::Io { op, path: path.to_path_buf(), source }
}

/// File name of the manifest inside the dataset directory.
pub const MANIFEST: &str = "manifest.jsonl";

/// Everything needed to render one clip, derived from the config alone.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPlan {
    pub item: SynthItem,
    pub class: usize,
    pub face: FaceParams,
    pub voice: VoiceParams,
}

/// SplitMix64 finaliser, used to derive independent per-item / per-purpose seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed for purpose `domain` of item `index` under the dataset seed.
pub fn derive_seed(seed: u64, domain: u64, index: u64) -> u64 {
    mix(mix(mix(seed) ^ domain) ^ index)
}

const DOMAIN_SPLIT: u64 = 1;
const DOMAIN_VOICE: u64 = 2;
const DOMAIN_FACE: u64 = 3;
const DOMAIN_TEXT: u64 = 4;

/// Plans every clip (labels, parameters, text) without rendering any media. Items are ordered
/// train, val, test with consecutive ids; labels are balanced round-robin per split and shuffled.
pub fn plan_items(cfg: &SynthConfig) -> Result<Vec<ClipPlan>, SynthError> {
    cfg.validate()?;
    let mut plans = Vec::with_capacity(cfg.total());
    let mut index = 0u64;
    for (s, (split, n)) in SPLITS.iter().zip([cfg.train, cfg.val, cfg.test]).enumerate() {
        let mut labels: Vec<usize> = (0..n).map(|i| i % CLASSES.len()).collect();
        labels.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, DOMAIN_SPLIT, s as u64)));
        for class in labels {
            plans.push(plan_clip(cfg, index, split, class));
            index += 1;
        }
    }
    Ok(plans)
}

fn plan_clip(cfg: &SynthConfig, index: u64, split: &str, class: usize) -> ClipPlan {
    let (valence, arousal) = class_affect(class);
    let label = CLASSES[class];
    let voice =
        VoiceParams::sample(arousal, &mut ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, DOMAIN_VOICE, index)));
    let face = FaceParams::sample(
        class,
        (voice.syllable_rate, voice.syllable_phase, voice.syllable_duty),
        &mut ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, DOMAIN_FACE, index)),
    );
    let mut trng = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, DOMAIN_TEXT, index));
    let t = text::clip_text(&mut trng, label, valence, arousal, cfg.text_hint_prob);
    let id = format!("synth_{index:05}");
    let item = SynthItem {
        file: format!("clips/{id}.mp4"),
        id,
        split: split.to_string(),
        label: label.to_string(),
        transcript: t.transcript,
        description: t.description,
        reasoning: t.reasoning,
        valence: valence.as_str().to_string(),
        arousal: arousal.as_str().to_string(),
    };
    ClipPlan { item, class, face, voice }
}

/// Reads a manifest (one [`SynthItem`] per line).
pub fn read_manifest(path: &Path) -> Result<Vec<SynthItem>, SynthError> {
    let f = fs::File::open(path).map_err(io_err("opening", path))?;
    let mut items = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io_err("reading", path))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line).map_err(|source| SynthError::Manifest {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        items.push(item);
    }
    Ok(items)
}

/// A complete dataset directory: the manifest matches the plan and every clip exists.
fn existing_complete(dir: &Path, plans: &[ClipPlan]) -> Option<Vec<SynthItem>> {
    let items = read_manifest(&dir.join(MANIFEST)).ok()?;
    let matches = items.len() == plans.len()
        && items.iter().zip(plans).all(|(a, b)| *a == b.item)
        && items.iter().all(|i| dir.join(&i.file).is_file());
    matches.then_some(items)
}

/// Removes temporary directories of earlier generations of this fingerprint whose process is gone.
fn remove_stale_temps(cache_root: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(cache_root) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let pid = rest.split('-').next().unwrap_or_default();
        let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
        if !alive && pid != std::process::id().to_string() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Renders and encodes one clip to `path`.
pub fn write_plan_clip(plan: &ClipPlan, cfg: &SynthConfig, path: &Path) -> Result<(), SynthError> {
    let frames = render_face_frames(&plan.face, cfg);
    let audio = synth_voice(&plan.voice, cfg);
    let spec = media::ClipSpec {
        width: cfg.width,
        height: cfg.height,
        fps: cfg.fps,
        frames: &frames,
        audio: &audio,
        sample_rate: cfg.sample_rate,
        codec: cfg.codec,
    };
    media::write_clip(path, &spec).map_err(|source| SynthError::Media { path: path.to_path_buf(), source })
}

fn progress_bar(n: usize, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("synth {bar:40} {pos}/{len} clips [{elapsed_precise}<{eta_precise}]")
    {
        pb.set_style(style);
    }
    pb
}

/// Number of encoding workers (the machine is shared: at most 4).
fn worker_count(n: usize) -> usize {
    std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1).clamp(1, 4).min(n.max(1))
}

/// Generates (or reuses) the dataset under `cache_root/synth-<fingerprint>/`: `clips/*.mp4` and
/// `manifest.jsonl` (one [`SynthItem`] per line). Everything is written into a temporary sibling
/// directory, the manifest last, and then renamed into place, so an interrupted generation is redone
/// rather than half-used. Deterministic: the same config gives a byte-identical manifest and the same
/// pixel and audio content.
pub fn generate(cfg: &SynthConfig, cache_root: &Path, show_progress: bool) -> Result<SynthDataset, SynthError> {
    let plans = plan_items(cfg)?;
    let dir_name = cfg.dir_name();
    let dir = cache_root.join(&dir_name);
    if let Some(items) = existing_complete(&dir, &plans) {
        tracing::debug!(dir = %dir.display(), "reusing synth dataset");
        return Ok(SynthDataset { dir, items });
    }
    fs::create_dir_all(cache_root).map_err(io_err("creating", cache_root))?;
    let tmp_prefix = format!(".{dir_name}.tmp-");
    remove_stale_temps(cache_root, &tmp_prefix);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = cache_root.join(format!("{tmp_prefix}{}-{nanos}", std::process::id()));
    let result = generate_into(cfg, &plans, &tmp, show_progress).and_then(|()| {
        if dir.exists() {
            // Incomplete or stale leftover (no valid manifest): replace it.
            if let Some(items) = existing_complete(&dir, &plans) {
                // Someone else finished first.
                let _ = fs::remove_dir_all(&tmp);
                return Ok(items);
            }
            fs::remove_dir_all(&dir).map_err(io_err("removing incomplete", &dir))?;
        }
        match fs::rename(&tmp, &dir) {
            Ok(()) => Ok(plans.iter().map(|p| p.item.clone()).collect()),
            Err(e) => match existing_complete(&dir, &plans) {
                Some(items) => {
                    let _ = fs::remove_dir_all(&tmp);
                    Ok(items)
                }
                None => Err(SynthError::Io { op: "renaming into place", path: dir.clone(), source: e }),
            },
        }
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let items = result?;
    tracing::info!(dir = %dir.display(), clips = items.len(), "generated synth dataset");
    Ok(SynthDataset { dir, items })
}

fn generate_into(cfg: &SynthConfig, plans: &[ClipPlan], tmp: &Path, show_progress: bool) -> Result<(), SynthError> {
    let clips = tmp.join("clips");
    fs::create_dir_all(&clips).map_err(io_err("creating", &clips))?;
    let pb = progress_bar(plans.len(), show_progress);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<(usize, SynthError)>> = Mutex::new(None);
    let workers = worker_count(plans.len());
    let panicked = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(plan) = plans.get(i) else { break };
                        let path = tmp.join(&plan.item.file);
                        if let Err(e) = write_plan_clip(plan, cfg, &path) {
                            failed.store(true, Ordering::Relaxed);
                            let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            // Keep the error of the lowest index for a deterministic report.
                            if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                                *slot = Some((i, e));
                            }
                            break;
                        }
                        pb.inc(1);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).filter(Result::is_err).count() > 0
    });
    pb.finish_and_clear();
    if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if panicked {
        return Err(SynthError::WorkerPanic { path: tmp.to_path_buf() });
    }
    // Manifest last, via a temporary file in the same directory.
    let manifest = tmp.join(MANIFEST);
    let part = tmp.join(format!("{MANIFEST}.part"));
    let mut body = String::new();
    for p in plans {
        // SynthItem holds only strings: serialisation cannot fail.
        body.push_str(&serde_json::to_string(&p.item).unwrap_or_default());
        body.push('\n');
    }
    let mut f = fs::File::create(&part).map_err(io_err("creating", &part))?;
    f.write_all(body.as_bytes()).map_err(io_err("writing", &part))?;
    f.sync_all().map_err(io_err("syncing", &part))?;
    drop(f);
    fs::rename(&part, &manifest).map_err(io_err("renaming", &manifest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SynthConfig {
        SynthConfig { train: 60, val: 12, test: 18, ..SynthConfig::default() }
    }

    #[test]
    fn class_mapping_is_a_bijection_matching_the_design() {
        let expect = [
            ("neutral", Valence::Flat, Arousal::Calm),
            ("angry", Valence::Down, Arousal::Aroused),
            ("happy", Valence::Up, Arousal::Calm),
            ("sad", Valence::Down, Arousal::Calm),
            ("worried", Valence::Flat, Arousal::Aroused),
            ("surprise", Valence::Up, Arousal::Aroused),
        ];
        for (c, (name, v, a)) in expect.iter().enumerate() {
            assert_eq!(CLASSES[c], *name);
            assert_eq!(class_affect(c), (*v, *a));
            assert_eq!(class_from_affect(*v, *a), c);
        }
    }

    #[test]
    fn plan_is_deterministic_balanced_and_seed_dependent() {
        let cfg = small();
        let a = plan_items(&cfg).unwrap();
        let b = plan_items(&cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 90);
        for (split, n) in [("train", 60), ("val", 12), ("test", 18)] {
            let items: Vec<_> = a.iter().filter(|p| p.item.split == split).collect();
            assert_eq!(items.len(), n);
            for c in CLASSES {
                assert_eq!(items.iter().filter(|p| p.item.label == c).count(), n / 6, "{split} {c}");
            }
        }
        for (i, p) in a.iter().enumerate() {
            assert_eq!(p.item.id, format!("synth_{i:05}"));
            assert_eq!(p.item.file, format!("clips/synth_{i:05}.mp4"));
            let (v, ar) = class_affect(p.class);
            assert_eq!(p.item.label, CLASSES[p.class]);
            assert_eq!((p.item.valence.as_str(), p.item.arousal.as_str()), (v.as_str(), ar.as_str()));
            assert_eq!((p.face.valence, p.voice.arousal), (v, ar));
            assert_eq!(p.face.syllable_rate, p.voice.syllable_rate);
        }
        let labels: Vec<_> = a.iter().take(12).map(|p| p.class).collect();
        assert_ne!(labels, (0..12).map(|i| i % 6).collect::<Vec<_>>(), "labels should be shuffled");
        let other = plan_items(&SynthConfig { seed: 1, ..cfg.clone() }).unwrap();
        assert_ne!(a, other);
        assert_ne!(cfg.fingerprint(), SynthConfig { seed: 1, ..cfg }.fingerprint());
    }

    #[test]
    fn fingerprint_is_stable_hex() {
        let f = SynthConfig::default().fingerprint();
        assert_eq!(f.len(), 64);
        assert!(f.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(f, SynthConfig::default().fingerprint());
        assert_ne!(f, SynthConfig { text_hint_prob: 0.4, ..SynthConfig::default() }.fingerprint());
    }

    #[test]
    fn config_serde_defaults_and_validation() {
        let c: SynthConfig = serde_json::from_str(r#"{"seed": 3, "train": 12}"#).unwrap();
        assert_eq!(c, SynthConfig { seed: 3, train: 12, ..SynthConfig::default() });
        assert!(serde_json::from_str::<SynthConfig>(r#"{"seeds": 3}"#).is_err());
        for bad in [
            SynthConfig { width: 63, ..SynthConfig::default() },
            SynthConfig { fps: 0, ..SynthConfig::default() },
            SynthConfig { duration_s: f32::NAN, ..SynthConfig::default() },
            SynthConfig { text_hint_prob: 1.5, ..SynthConfig::default() },
            SynthConfig { train: 0, val: 0, test: 0, ..SynthConfig::default() },
        ] {
            assert!(matches!(plan_items(&bad), Err(SynthError::InvalidConfig { .. })), "{bad:?}");
        }
    }

    #[test]
    fn transcripts_and_descriptions_never_contain_labels() {
        let plans = plan_items(&SynthConfig::default()).unwrap();
        for p in &plans {
            for w in p.item.transcript.split_whitespace().chain(p.item.description.split_whitespace()) {
                assert!(!CLASSES.contains(&w), "label word {w:?} in {:?}", p.item);
            }
            let words: Vec<&str> = p.item.reasoning.split_whitespace().collect();
            assert_eq!(words.last(), Some(&p.item.label.as_str()));
            assert!(words[..words.len() - 1].iter().all(|w| !CLASSES.contains(w)));
        }
    }
}
