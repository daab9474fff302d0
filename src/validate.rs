//! Checks a loaded recipe against the registries: every name resolves, sizes agree, values make sense.
//! Each problem names the recipe file and line of the key and lists the known names.

use crate::recipe::LoadedRecipe;
use crate::recipe::load::validation_error;
use crate::registry::{self, Registry};
use crate::RecipeError;

/// A check that only a real run needs: a plan (`run --dry-run`) reads no data and no checkpoint, so it
/// reports these as warnings, while `run` and `recipe check` report them as errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferred {
    /// A dataset card whose source format this build cannot read yet.
    SourceFormat { key: String, dataset: String, source: String },
    /// A stage's `init` checkpoint that does not exist (yet: e.g. the output of an earlier run).
    InitMissing { key: String, stage: String, path: String },
    /// A dataset with no root in its card nor in the recipe's `data.roots`.
    NoRoot { key: String, dataset: String },
}

impl Deferred {
    /// The recipe key the problem belongs to.
    pub fn key(&self) -> &str {
        match self {
            Self::SourceFormat { key, .. } | Self::InitMissing { key, .. } | Self::NoRoot { key, .. } => key,
        }
    }

    /// The message `run` and `recipe check` give.
    pub fn message(&self) -> String {
        match self {
            Self::SourceFormat { dataset, source, .. } => match registry::check_builtin("source", source, &crate::data::sources::SOURCES) {
                Err(e) => format!("dataset card `{dataset}`: {e}"),
                Ok(()) => format!("dataset card `{dataset}`: source `{source}`"),
            },
            Self::InitMissing { path, .. } => format!("`{path}` is neither `previous`, `none` nor an existing checkpoint file or directory"),
            Self::NoRoot { dataset, .. } => format!(
                "dataset `{dataset}` has no root: point `root` in datasets/{dataset}.toml or `data.roots.{dataset}` in the recipe at your copy (a path, s3://bucket/prefix, http(s)://)"
            ),
        }
    }
}

/// All problems found (empty = valid).
pub fn validate(loaded: &LoadedRecipe, reg: &Registry) -> Vec<RecipeError> {
    let (mut errs, deferred) = validate_for_plan(loaded, reg);
    errs.extend(deferred.iter().map(|d| validation_error(loaded, d.key(), d.message())));
    errs
}

/// The problems a plan cannot go past, and apart from them the [`Deferred`] ones only a run needs.
pub fn validate_for_plan(loaded: &LoadedRecipe, reg: &Registry) -> (Vec<RecipeError>, Vec<Deferred>) {
    let r = &loaded.recipe;
    let mut errs = Vec::new();
    let mut deferred = Vec::new();
    let mut err = |key: &str, msg: String| errs.push(validation_error(loaded, key, msg));

    for (name, root) in &r.data.roots {
        if let Err(e) = crate::storage::Location::parse(root) {
            err(&format!("data.roots.{name}"), e.to_string());
        }
        if reg.dataset(name).is_err() {
            err(&format!("data.roots.{name}"), format!("no dataset card `{name}` (datasets/{name}.toml)"));
        }
    }
    if r.eval.calibrate && r.model.use_av {
        err("eval.calibrate", "calibrating the class scores needs a content-free prompt, which media tokens are not: set `model.use_av = false` (a text-only model such as recipes/zero_shot.toml), or `eval.calibrate = false`".into());
    }
    if r.prompt.turn == crate::recipe::PromptTurn::Text && r.model.use_av {
        err("prompt.turn", "`text` has no place for the media tokens: set `model.use_av = false`, or another turn layout".into());
    }
    match reg.dataset(&r.data.dataset) {
        Ok((_, card)) => {
            deferred.extend(source_unavailable("data.dataset".into(), card, &r.data.roots));
            if r.eval.enabled && !card.splits.contains(&r.eval.split) {
                err("eval.split", format!("dataset `{}` has no split `{}` (splits: {})", card.name, r.eval.split, card.splits.join(", ")));
            }
        }
        Err(e) => err("data.dataset", e.to_string()),
    }
    if let Err(e) = reg.llm(&r.model.llm) {
        err("model.llm", e.to_string());
    }
    for (key, name, modality) in [("model.video_encoder", &r.model.video_encoder, "video"), ("model.audio_encoder", &r.model.audio_encoder, "audio")] {
        if name.is_empty() {
            continue;
        }
        match reg.encoder(name) {
            Ok((_, m)) if m.modality != modality => err(key, format!("encoder plugin `{name}` is a {} encoder, not {modality}", m.modality)),
            Ok(_) => {}
            Err(e) => err(key, e.to_string()),
        }
    }
    match r.model.family {
        crate::recipe::Family::VideoLlama2Av => validate_videollama2_av(r, reg, &mut err),
        crate::recipe::Family::Plain if !r.model.global_encoder.is_empty() => err("model.global_encoder", "model.family = \"plain\" takes no global encoder: empty it, or set family = \"emotion_llama\"".into()),
        crate::recipe::Family::EmotionLlama if r.model.global_encoder.is_empty() => err("model.global_encoder", "model.family = \"emotion_llama\" needs the global encoder (an eva_vit encoder)".into()),
        _ => {}
    }
    if r.model.family() != crate::recipe::Family::VideoLlama2Av && (!r.model.global_encoder.is_empty() || !r.model.local_encoder.is_empty() || !r.model.temporal_encoder.is_empty()) {
        validate_emotion_llama(r, reg, &mut err);
    }
    if let Some(face) = &r.front_end.face {
        for (key, msg) in face.problems() {
            err(key, msg);
        }
    }
    validate_stages(r, reg, &mut err, &mut deferred);
    if r.checkpoint.keep_last == 0 {
        err("checkpoint.keep_last", "must be at least 1 (the newest checkpoint is what a resume continues from)".into());
    }
    if r.validation.enabled
        && let Ok((_, card)) = reg.dataset(&r.data.dataset)
        && !card.splits.contains(&r.validation.split)
    {
        err("validation.split", format!("dataset `{}` has no split `{}` (splits: {})", card.name, r.validation.split, card.splits.join(", ")));
    }
    if r.eval.enabled {
        for m in &r.eval.metrics {
            if let Err(e) = registry::check_builtin("metric", m, &crate::eval::metrics::NAMES) {
                err("eval.metrics", e.to_string());
            }
        }
    }
    if !r.eval.checkpoint.is_empty() && !r.stages.is_empty() {
        err("eval.checkpoint", "evaluates given parameters, so the recipe must not train: remove the [[stage]] tables, or run `emollama eval RECIPE --checkpoint PATH`, which skips them".into());
    }
    if let crate::media::FrameSampling::Uniform { n: 0 } = r.data.frames {
        err("data.frames", "uniform sampling needs n >= 1".into());
    }
    (errs, deferred)
}

/// Each stage's tasks, modalities, optimiser numbers, name, init and data mixture.
fn validate_stages(r: &crate::recipe::Recipe, reg: &Registry, err: &mut dyn FnMut(&str, String), deferred: &mut Vec<Deferred>) {
    for (i, s) in r.stages.iter().enumerate() {
        if s.tasks.is_empty() {
            err(&format!("stage[{i}].tasks"), "a stage needs at least one task".into());
        }
        if s.batch_size == 0 {
            err(&format!("stage[{i}].batch_size"), "must be at least 1".into());
        }
        if !(s.lr > 0.0 && s.lr.is_finite()) {
            err(&format!("stage[{i}].lr"), format!("must be a positive number, got {}", s.lr));
        }
        if r.stages[..i].iter().any(|p| p.name == s.name) {
            err(&format!("stage[{i}].name"), format!("stage name `{}` is used twice", s.name));
        }
        if s.grad_accum == 0 {
            err(&format!("stage[{i}].grad_accum"), "must be at least 1".into());
        }
        if !(s.epochs >= 0.0 && s.epochs.is_finite()) {
            err(&format!("stage[{i}].epochs"), format!("must be 0 (use `steps`) or a positive number, got {}", s.epochs));
        }
        if s.epochs == 0.0 && s.steps == 0 {
            err(&format!("stage[{i}].steps"), "a stage needs `steps` >= 1 or `epochs` > 0".into());
        }
        if !crate::recipe::STAGE_INITS.contains(&s.init.as_str()) && !std::path::Path::new(&s.init).exists() {
            deferred.push(Deferred::InitMissing { key: format!("stage[{i}].init"), stage: s.name.clone(), path: s.init.clone() });
        }
        for (j, d) in s.data.iter().enumerate() {
            let key = format!("stage[{i}].data[{j}]");
            let name = if d.dataset.is_empty() { &r.data.dataset } else { &d.dataset };
            match reg.dataset(name) {
                Ok((_, card)) => {
                    if !card.splits.contains(&d.split) {
                        err(&format!("{key}.split"), format!("dataset `{name}` has no split `{}` (splits: {})", d.split, card.splits.join(", ")));
                    }
                    if !d.dataset.is_empty() {
                        deferred.extend(source_unavailable(format!("{key}.dataset"), card, &r.data.roots));
                    }
                }
                Err(e) => err(&format!("{key}.dataset"), e.to_string()),
            }
            if !(d.weight > 0.0 && d.weight.is_finite()) {
                err(&format!("{key}.weight"), format!("must be a positive number, got {}", d.weight));
            }
            // Instruction pools are keyed by task name (the tasks themselves are an enum of the schema).
            for t in d.instructions.keys() {
                if let Err(e) = registry::check_builtin("task", t, registry::TASKS) {
                    err(&format!("{key}.instructions"), e.to_string());
                }
            }
        }
    }
}

/// A card whose source format this build does not have.
/// Also a card without a root (the recipe's `data.roots` may give it).
fn source_unavailable(key: String, card: &crate::data::DatasetCard, roots: &std::collections::BTreeMap<String, String>) -> Option<Deferred> {
    if !crate::data::sources::SOURCES.contains(&card.source.as_str()) {
        return Some(Deferred::SourceFormat { key, dataset: card.name.clone(), source: card.source.clone() });
    }
    let rooted = !card.root.trim().is_empty() || roots.get(&card.name).is_some_and(|r| !r.trim().is_empty());
    (card.source != "synth" && !rooted).then(|| Deferred::NoRoot { key, dataset: card.name.clone() })
}

/// VideoLLaMA2.1-AV's layout: a `siglip` video encoder and a `beats` audio encoder (either may be empty),
/// no Emotion-LLaMA views, the `mlp` (mlp2x_gelu) audio projector.
fn validate_videollama2_av(r: &crate::recipe::Recipe, reg: &Registry, err: &mut impl FnMut(&str, String)) {
    for (key, name) in [("model.global_encoder", &r.model.global_encoder), ("model.local_encoder", &r.model.local_encoder), ("model.temporal_encoder", &r.model.temporal_encoder)] {
        if !name.is_empty() {
            err(key, "must be empty with model.family = \"videollama2_av\" (its towers are video_encoder and audio_encoder)".into());
        }
    }
    if r.model.video_encoder.is_empty() && r.model.audio_encoder.is_empty() {
        err("model.video_encoder", "model.family = \"videollama2_av\" needs a video_encoder (siglip) or an audio_encoder (beats)".into());
    }
    if r.model.projector != crate::recipe::ProjectorKind::Mlp {
        err("model.projector", "VideoLLaMA2-AV's audio projector is `mlp` (mlp2x_gelu): set model.projector = \"mlp\"".into());
    }
    for (key, name, arch) in [("model.video_encoder", &r.model.video_encoder, "siglip"), ("model.audio_encoder", &r.model.audio_encoder, "beats")] {
        match reg.encoder(name) {
            _ if name.is_empty() => {}
            Ok((_, m)) if m.architecture != arch => err(key, format!("encoder `{name}` has architecture `{}`; model.family = \"videollama2_av\" takes `{arch}` here", m.architecture)),
            Ok(_) => {}
            Err(e) => err(key, e.to_string()),
        }
    }
}

/// Emotion-LLaMA's layout: a global encoder, no `video_encoder`, each view of its architecture, and the
/// frames the visual encoders take (when their manifests declare the size).
fn validate_emotion_llama(r: &crate::recipe::Recipe, reg: &Registry, err: &mut impl FnMut(&str, String)) {
    if r.model.global_encoder.is_empty() {
        err("model.global_encoder", "local_encoder / temporal_encoder need Emotion-LLaMA's layout: set global_encoder too (an eva_vit encoder)".into());
        return;
    }
    if !r.model.video_encoder.is_empty() {
        err("model.video_encoder", "must be empty with global_encoder set (Emotion-LLaMA's layout takes the global, local and temporal encoders instead)".into());
    }
    if r.model.global_frame == crate::media::GlobalFrame::Peak && r.front_end.face.is_none() {
        err("model.global_frame", "`peak` needs the face front end, which finds the emotion peak frame: add `[front_end.face]` (e.g. `--set front_end.face.detector=blazeface`)".into());
    }
    let frames = match r.data.frames {
        crate::media::FrameSampling::Uniform { n } | crate::media::FrameSampling::Midpoints { n } => Some(n),
        crate::media::FrameSampling::Segments { segments, consecutive } => Some(segments * consecutive),
        _ => None,
    };
    let views = [
        ("model.global_encoder", &r.model.global_encoder, "eva_vit"),
        ("model.local_encoder", &r.model.local_encoder, "vit_mae"),
        ("model.temporal_encoder", &r.model.temporal_encoder, "videomae"),
        ("model.audio_encoder", &r.model.audio_encoder, "hubert"),
    ];
    for (key, name, arch) in views {
        if name.is_empty() {
            continue;
        }
        match reg.encoder(name) {
            Ok((_, m)) if m.architecture != arch => err(key, format!("encoder `{name}` has architecture `{}`; this view takes `{arch}`", m.architecture)),
            Ok((_, m)) => {
                let clip = m.config.get("num_frames").and_then(|v| v.as_integer());
                if let (Some(t), Some(n)) = (clip, frames)
                    && t as usize != n
                {
                    err("data.frames", format!("encoder `{name}` takes clips of {t} frames but data.frames samples {n}"));
                }
            }
            Err(e) => err(key, e.to_string()),
        }
    }
}
