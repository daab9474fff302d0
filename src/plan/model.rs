//! The recipe's model built through the shape recorder ([`crate::model::shapes`]): every parameter's
//! name and shape from the constructors the run uses, with no weights read and no tensor memory behind
//! them. Configurations come from weights already on this machine when they are, else from the
//! manifests' `[config]` (for the real models: their published `config.json` values).

use std::path::Path;

use candle_core::DType;
use serde::Serialize;

use super::PlanError;
use crate::media::FrameSampling;
use crate::media::fbank::FbankOptions;
use crate::model::cnn::{CnnConfig, TinyCnn};
use crate::model::emotion_llama::EmotionLlamaEncoders;
use crate::model::encoders::{self, FrozenEncoder};
use crate::model::hub::{self, LocalWeights};
use crate::model::llama::{Llama, LlamaConfig};
use crate::model::lora::LoraConfig;
use crate::model::multimodal::{EmotionModel, FrameEncoder};
use crate::model::prompt::{ChatTemplate, Template};
use crate::model::shapes::{ParamShape, recorder};
use crate::model::vit::{TinyVit, VitConfig};
use crate::model::wave::{TinyWave, WaveConfig};
use crate::recipe::Recipe;
use crate::registry::{Registry, TokenizerSpec, Weights};

/// The LLM as the plan sees it.
#[derive(Debug, Clone)]
pub struct LlmInfo {
    pub name: String,
    pub config: LlamaConfig,
    /// Where the configuration came from (weights on this machine, or the manifest).
    pub config_from: String,
    /// Pretrained weights stay frozen (outside the optimiser); random ones train.
    pub pretrained: bool,
    pub template: ChatTemplate,
    /// A word-level vocabulary built from the run's texts (tokens per word are then exact).
    pub word_level: bool,
    pub lora: Option<LoraConfig>,
}

/// One encoder of the model.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderInfo {
    /// Parameter prefix: `encoder.global`, `encoder.video`, ...
    pub prefix: String,
    pub plugin: String,
    pub architecture: String,
    pub hidden_size: usize,
    /// Square frame side the encoder takes, when it is a visual one.
    pub image_size: Option<usize>,
    /// Frozen by construction (Emotion-LLaMA's encoders: outputs detached, pretrained weights outside
    /// the optimiser); the tiny encoders of the plain layout train like any parameter.
    pub frozen: bool,
}

/// Multimodal tokens one sample puts into the LLM, by where they go and which modality makes them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MultimodalTokens {
    /// At `<VideoHere>` (from the visual encoders).
    pub video_here: usize,
    /// At `<FeatureHere>` from the visual encoders.
    pub feature_visual: usize,
    /// At `<FeatureHere>` from the audio encoder.
    pub feature_audio: usize,
}

impl MultimodalTokens {
    /// (`<VideoHere>`, `<FeatureHere>`) tokens with the modalities a stage feeds.
    pub fn with(&self, video: bool, audio: bool) -> (usize, usize) {
        let v = if video { self.video_here } else { 0 };
        let f = if video { self.feature_visual } else { 0 } + if audio { self.feature_audio } else { 0 };
        (v, f)
    }
}

/// Everything the recorder saw.
#[derive(Debug, Clone)]
pub struct ModelShapes {
    pub params: Vec<ParamShape>,
    pub llm: LlmInfo,
    /// `emotion_llama` (four frozen encoders) or `plain` (tiny per-frame and waveform encoders).
    pub layout: &'static str,
    pub encoders: Vec<EncoderInfo>,
    pub tokens: MultimodalTokens,
    pub warnings: Vec<String>,
}

/// Builds the recipe's model through the shape recorder.
pub fn shapes(recipe: &Recipe, registry: &Registry) -> Result<ModelShapes, PlanError> {
    let mut warnings = Vec::new();
    let llm = resolve_llm(recipe, registry, &mut warnings)?;
    let cerr = |what: &str| {
        let what = what.to_string();
        move |e: candle_core::Error| PlanError::Build { component: what.clone(), detail: e.to_string() }
    };
    let (vb, rec) = recorder(DType::F32);
    let llama = Llama::load(&llm.config, llm.lora.as_ref(), None, vb.pp("llm")).map_err(cerr(&format!("LLM `{}`", llm.name)))?;
    let hidden = llm.config.hidden_size;
    let m = &recipe.model;
    let (layout, encoders, tokens) = if m.family() == crate::recipe::Family::VideoLlama2Av {
        videollama2_av(recipe, registry, &vb, hidden)?
    } else if !m.global_encoder.is_empty() {
        let mut infos = Vec::new();
        let mut frozen = |plugin: &str, view: &str| -> Result<Option<FrozenEncoder>, PlanError> {
            if plugin.is_empty() {
                return Ok(None);
            }
            let (enc, info) = frozen_encoder(registry, plugin, view, &vb)?;
            infos.push(info);
            Ok(Some(enc))
        };
        let global = frozen(&m.global_encoder, "global")?.ok_or_else(|| PlanError::Build { component: "model.global_encoder".into(), detail: "empty".into() })?;
        let local = frozen(&m.local_encoder, "local")?;
        let temporal = frozen(&m.temporal_encoder, "temporal")?;
        let audio = frozen(&m.audio_encoder, "audio")?;
        let tokens = MultimodalTokens {
            video_here: merged_patch_tokens(&global)?,
            feature_visual: 1 + usize::from(local.is_some()) + usize::from(temporal.is_some()),
            feature_audio: usize::from(audio.is_some()),
        };
        EmotionLlamaEncoders::new(global, local, temporal, audio, m.projector, hidden, vb.clone()).map_err(cerr("Emotion-LLaMA projectors"))?;
        ("emotion_llama", infos, tokens)
    } else {
        let mut infos = Vec::new();
        let mut tokens = MultimodalTokens::default();
        let video = match m.video_encoder.as_str() {
            "" => None,
            name => {
                let (path, man) = registry.encoder(name)?;
                let vb = vb.pp("encoder.video");
                let frames = frame_count(&recipe.data.frames);
                let (enc, spatial, size) = match man.architecture.as_str() {
                    "tiny_cnn" => {
                        let cfg: CnnConfig = crate::model::build::arch_config(man, path, "tiny_cnn").map_err(plugin_err(name))?;
                        let side = cfg.image_size / (cfg.stem_patch.max(1) << cfg.channels.len());
                        (FrameEncoder::Cnn(TinyCnn::new(&cfg, vb).map_err(cerr(name))?), side * side, cfg.image_size)
                    }
                    _ => {
                        let cfg: VitConfig = crate::model::build::arch_config(man, path, "tiny_vit").map_err(plugin_err(name))?;
                        let side = cfg.image_size / cfg.patch_size.max(1);
                        (FrameEncoder::Vit(TinyVit::new(&cfg, vb).map_err(cerr(name))?), side * side, cfg.image_size)
                    }
                };
                match frames {
                    Some(n) => tokens.video_here = spatial + n,
                    None => warnings.push(format!("data.frames {:?}: the frame count depends on each clip's length, so the visual tokens per sample are counted without the per-frame ones", recipe.data.frames)),
                }
                tokens.feature_visual = 1;
                infos.push(EncoderInfo { prefix: "encoder.video".into(), plugin: name.into(), architecture: man.architecture.clone(), hidden_size: enc.hidden_size(), image_size: Some(size), frozen: false });
                Some(enc)
            }
        };
        let audio = match m.audio_encoder.as_str() {
            "" => None,
            name => {
                let (path, man) = registry.encoder(name)?;
                let cfg: WaveConfig = crate::model::build::arch_config(man, path, "tiny_wave").map_err(plugin_err(name))?;
                tokens.feature_audio = 1;
                infos.push(EncoderInfo { prefix: "encoder.audio".into(), plugin: name.into(), architecture: man.architecture.clone(), hidden_size: cfg.hidden_size, image_size: None, frozen: false });
                Some(TinyWave::new(&cfg, vb.pp("encoder.audio")).map_err(cerr(name))?)
            }
        };
        EmotionModel::new(llama, video, audio, m.projector, vb.clone(), None, 0).map_err(cerr("projectors"))?;
        ("plain", infos, tokens)
    };
    if llm.config.vocab_size == 0 {
        warnings.push(format!(
            "LLM `{}` has vocab_size 0: its vocabulary is built from the run's texts, so the embedding and LM head ({} parameters per vocabulary entry) are not counted",
            llm.name,
            if llm.config.tie_word_embeddings { hidden } else { 2 * hidden }
        ));
    }
    Ok(ModelShapes { params: rec.take(), llm, layout, encoders, tokens, warnings })
}

/// VideoLLaMA2.1-AV's towers through the recorder: SigLIP (frozen), BEATs (trainable, `encoder.audio`),
/// the STC connector and the audio projector. Video tokens: the connector's grid over the sampled frames;
/// audio tokens: BEATs' patches over the fbank of the selected (padded) audio.
fn videollama2_av(recipe: &Recipe, registry: &Registry, vb: &candle_nn::VarBuilder, hidden: usize) -> Result<(&'static str, Vec<EncoderInfo>, MultimodalTokens), PlanError> {
    use crate::model::encoders::beats::{Beats, BeatsConfig};
    let m = &recipe.model;
    let cerr = |what: String| move |e: candle_core::Error| PlanError::Build { component: what.clone(), detail: e.to_string() };
    let mut infos = Vec::new();
    let mut tokens = MultimodalTokens::default();
    let siglip = match m.video_encoder.as_str() {
        "" => None,
        name => {
            let (enc, info) = frozen_encoder(registry, name, "video", vb)?;
            infos.push(info);
            let side = enc.image_size.unwrap_or(0) / siglip_patch(&enc).max(1);
            match frame_count(&recipe.data.frames) {
                Some(n) => tokens.video_here = crate::model::stc::StcConfig::new(enc.hidden_size, hidden).output_tokens(n, side * side),
                None => return Err(PlanError::Build { component: "data.frames".into(), detail: "VideoLLaMA2's connector takes a fixed number of frames: use `{ mode = \"midpoints\", n = 16 }`".into() }),
            }
            Some(enc)
        }
    };
    let beats = match m.audio_encoder.as_str() {
        "" => None,
        name => {
            let (path, man) = registry.encoder(name)?;
            let cfg: BeatsConfig = crate::model::build::arch_config(man, path, "beats").map_err(plugin_err(name))?;
            let beats = Beats::new(&cfg, vb.pp("encoder.audio")).map_err(cerr(format!("encoder `{name}`")))?;
            let seconds = man.preprocess.audio_clips.map_or(f64::from(recipe.data.audio_seconds), |c| c.pad_to_seconds);
            // BEATs' Kaldi frames at the manifest's rate, then patches over the mel bins.
            let samples = (seconds * f64::from(man.preprocess.sample_rate)) as usize;
            let fbank = FbankOptions { sample_frequency: f64::from(man.preprocess.sample_rate), ..FbankOptions::beats() };
            let (tp, fp) = cfg.patch_grid(fbank.frames_for(samples), fbank.num_mel_bins);
            tokens.feature_audio = tp * fp;
            infos.push(EncoderInfo { prefix: "encoder.audio".into(), plugin: name.into(), architecture: man.architecture.clone(), hidden_size: cfg.encoder_embed_dim, image_size: None, frozen: false });
            Some((beats, man.preprocess.audio_clips, man.preprocess.sample_rate))
        }
    };
    crate::model::videollama2_av::VideoLlama2AvEncoders::new(siglip, beats, m.projector, hidden, vb.clone()).map_err(cerr("VideoLLaMA2-AV connector and projector".into()))?;
    Ok(("videollama2_av", infos, tokens))
}

/// SigLIP's patch size (the video tower's token grid is image / patch per side).
fn siglip_patch(enc: &FrozenEncoder) -> usize {
    match &enc.model {
        encoders::Model::Siglip(s) => s.config().patch_size,
        _ => 1,
    }
}

fn plugin_err(name: &str) -> impl Fn(crate::model::build::BuildError) -> PlanError + '_ {
    move |e| PlanError::Build { component: format!("encoder `{name}`"), detail: e.to_string() }
}

/// Frames a sampling gives per clip, when that does not depend on the clip.
fn frame_count(f: &FrameSampling) -> Option<usize> {
    match f {
        FrameSampling::Uniform { n } | FrameSampling::Midpoints { n } => Some(*n),
        FrameSampling::Segments { segments, consecutive } => Some(segments * consecutive),
        FrameSampling::First => Some(1),
        _ => None,
    }
}

/// The global view's tokens at `<VideoHere>`: EVA's patch grid merged by four (MiniGPT-v2's
/// `view(bs, 256, 5632)` at 448 px / patch 14).
fn merged_patch_tokens(global: &FrozenEncoder) -> Result<usize, PlanError> {
    match &global.model {
        encoders::Model::Eva { vit, .. } => {
            let c = vit.config();
            let grid = c.img_size / c.patch_size.max(1);
            Ok(grid * grid / 4)
        }
        _ => Err(PlanError::Build { component: global.name.clone(), detail: "the global encoder must be an eva_vit".into() }),
    }
}

/// A frozen encoder under `encoder.<view>`, configured from its weights' `config.json` when that is on
/// this machine, else from its manifest alone.
fn frozen_encoder(registry: &Registry, plugin: &str, view: &str, vb: &candle_nn::VarBuilder) -> Result<(FrozenEncoder, EncoderInfo), PlanError> {
    let (path, m) = registry.encoder(plugin)?;
    let config_json = match hub::resolve_cached(plugin, path, &m.weights) {
        Some(LocalWeights::HfDir(d)) => Some(d.join("config.json")).filter(|p| p.is_file()),
        _ => None,
    };
    let prefix = format!("encoder.{view}");
    let enc = FrozenEncoder::build(path, m, config_json.as_deref(), vb.pp(&prefix)).map_err(|e| PlanError::Build { component: format!("encoder `{plugin}`"), detail: e.to_string() })?;
    let info = EncoderInfo { prefix, plugin: plugin.into(), architecture: m.architecture.clone(), hidden_size: enc.hidden_size, image_size: enc.image_size, frozen: true };
    Ok((enc, info))
}

/// The LLM's configuration without downloading anything: from weights on this machine, else the
/// manifest's `[config]`.
fn resolve_llm(recipe: &Recipe, registry: &Registry, warnings: &mut Vec<String>) -> Result<LlmInfo, PlanError> {
    let name = recipe.model.llm.as_str();
    let known = registry.llms.contains_key(name);
    let (config, config_from, pretrained, template, system, default_lora, word_level) = if known || !Path::new(name).exists() {
        let (path, m) = registry.llm(name)?;
        let pretrained = !matches!(m.weights, Weights::Random);
        let local = hub::resolve_cached(name, path, &m.weights).map(|l| local_config(name, &l)).transpose()?;
        let (config, from) = match (local, &m.config) {
            (Some((c, from)), manifest) => {
                if manifest.as_ref().is_some_and(|mc| mc != &c) {
                    warnings.push(format!("LLM `{name}`: the manifest's [config] differs from the weights' config; the weights' is used (as a run does)"));
                }
                (c, from)
            }
            (None, Some(c)) if pretrained => (c.clone(), format!("manifest `{}` [config] (the weights are not on this machine)", path.display())),
            (None, Some(c)) => (c.clone(), format!("manifest `{}` [config]", path.display())),
            (None, None) => return Err(PlanError::NoLlmConfig { llm: name.into(), manifest: path.display().to_string() }),
        };
        let template = Template::from_name(&m.template).ok_or_else(|| PlanError::Build {
            component: format!("LLM `{name}` (`{}`)", path.display()),
            detail: format!("unknown template `{}`; known: {}", m.template, Template::NAMES.join(", ")),
        })?;
        (config, from, pretrained, template, m.system_prompt.clone(), m.lora.clone(), matches!(m.tokenizer, TokenizerSpec::CorpusWordLevel))
    } else {
        let p = Path::new(name);
        let local = if p.is_dir() { LocalWeights::HfDir(p.to_path_buf()) } else { LocalWeights::Gguf(p.to_path_buf()) };
        let (config, from) = local_config(name, &local)?;
        let template = if config.model_type == "qwen2" { Template::Chatml } else { Template::Llama2 };
        (config, from, true, template, None, None, false)
    };
    config.validate().map_err(|detail| PlanError::Build { component: format!("LLM `{name}`"), detail })?;
    let kind = Template::chosen(recipe.prompt.template, template);
    let lora = recipe.model.lora.clone().or(default_lora.filter(|_| pretrained));
    Ok(LlmInfo {
        name: name.into(),
        config,
        config_from,
        pretrained,
        template: ChatTemplate { kind, system: system.filter(|_| kind == Template::Chatml), turn: crate::model::prompt::TurnLayout::chosen(recipe) },
        word_level,
        lora,
    })
}

fn local_config(name: &str, local: &LocalWeights) -> Result<(LlamaConfig, String), PlanError> {
    let cerr = |detail: String| PlanError::Build { component: format!("LLM `{name}`"), detail };
    match local {
        LocalWeights::HfDir(d) => {
            let p = d.join("config.json");
            let c = LlamaConfig::from_hf_file(&p).map_err(|e| cerr(e.to_string()))?;
            Ok((c, p.display().to_string()))
        }
        LocalWeights::Gguf(p) => {
            let c = crate::model::gguf::GgufFile::open(p).and_then(|g| g.config()).map_err(|e| cerr(e.to_string()))?;
            Ok((c, format!("{} (GGUF metadata)", p.display())))
        }
        LocalWeights::File(p) => Err(cerr(format!("`{}`: an LLM needs an HF model directory or a .gguf file", p.display()))),
    }
}
