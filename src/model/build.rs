//! Building the multimodal model from a recipe's plugin names.

use candle_core::Device;
use candle_nn::{VarBuilder, VarMap};

use super::lora::LoraConfig;

use super::llm_load::LlmSpec;
use super::cnn::{CnnConfig, TinyCnn};
use super::emotion_llama::EmotionLlamaEncoders;
use super::encoders::beats::{Beats, BeatsConfig};
use super::videollama2_av::VideoLlama2AvEncoders;
use super::encoders::FrozenEncoder;
use super::multimodal::{EmotionModel, FrameEncoder};
use super::tokenizer::TextTokenizer;
use super::vit::{TinyVit, VitConfig};
use super::wave::{TinyWave, WaveConfig};
use crate::media::{PixelTransform, PixelView, ViewRole};
use crate::recipe::{Family, Recipe};
use crate::registry::{EncoderManifest, Registry, RegistryError, Weights};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("plugin `{plugin}` (`{path}`): {message}")]
    Plugin { plugin: String, path: String, message: String },
    #[error("building the model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Llm(#[from] Box<super::llm_load::LlmError>),
}

/// The built model plus what each of its image encoders is fed.
pub struct Built {
    pub model: EmotionModel,
    /// The LoRA adapter in use: the recipe's, or the LLM manifest's default for a pretrained LLM.
    pub lora: Option<super::lora::LoraConfig>,
    /// One per image encoder: which frames it takes and its own transform (size, filter, mean, std).
    pub views: Vec<PixelView>,
}

/// Creates the model: the LLM from `llm` (pretrained weights stay outside `varmap`, frozen), and every
/// trainable parameter in `varmap` (names `llm.*` for random or LoRA weights, `encoder.{video,audio}.*`,
/// `projector.*`), initialised deterministically from `seed`.
pub fn build_model(recipe: &Recipe, registry: &Registry, llm: &LlmSpec, tokenizer: &TextTokenizer, varmap: &VarMap, seed: u64, device: &Device) -> Result<Built, BuildError> {
    if llm.config.vocab_size == 0 {
        return Err(BuildError::Plugin { plugin: llm.name.clone(), path: String::new(), message: "vocab_size 0: set it from the tokenizer before building".into() });
    }
    llm.check_tokenizer(tokenizer).map_err(Box::new)?;
    match recipe.model.family() {
        Family::EmotionLlama => {
            let el = emotion_llama_encoders(recipe, registry, llm.config.hidden_size, varmap, seed, device)?;
            return assemble_emotion_llama(recipe, llm, tokenizer, el, varmap, seed, device);
        }
        Family::VideoLlama2Av => {
            let av = videollama2_av_encoders(recipe, registry, llm.config.hidden_size, varmap, seed, device)?;
            let views = av.views();
            let (llm_model, _, lora) = build_llm(recipe, llm, varmap, seed, device)?;
            return Ok(Built { model: EmotionModel::with_videollama2_av(llm_model, av, tokenizer.bos, tokenizer.eos), lora, views });
        }
        Family::Plain | Family::Auto => {}
    }
    let (llm_model, vb, lora) = build_llm(recipe, llm, varmap, seed, device)?;
    let mut views = Vec::new();
    let video = match recipe.model.video_encoder.as_str() {
        "" => None,
        name => {
            let (path, m) = registry.encoder(name)?;
            check_random_weights(name, path, &m.weights)?;
            views.push(PixelView { role: ViewRole::Frames, transform: frame_transform(m, recipe) });
            let vb = vb.pp("encoder.video");
            Some(match m.architecture.as_str() {
                "tiny_cnn" => FrameEncoder::Cnn(TinyCnn::new(&arch_config::<CnnConfig>(m, path, "tiny_cnn")?, vb)?),
                _ => FrameEncoder::Vit(TinyVit::new(&arch_config::<VitConfig>(m, path, "tiny_vit")?, vb)?),
            })
        }
    };
    let audio = match recipe.model.audio_encoder.as_str() {
        "" => None,
        name => {
            let (path, m) = registry.encoder(name)?;
            check_random_weights(name, path, &m.weights)?;
            let cfg: WaveConfig = arch_config(m, path, "tiny_wave")?;
            Some(TinyWave::new(&cfg, vb.pp("encoder.audio"))?)
        }
    };
    let model = EmotionModel::new(llm_model, video, audio, recipe.model.projector, vb.clone(), tokenizer.bos, tokenizer.eos)?;
    Ok(Built { model, lora, views })
}

/// The LLM with the recipe's adapter (or the manifest's default for a pretrained LLM), dtype and
/// checkpointing; the `VarBuilder` for the other new parameters; the adapter in use.
fn build_llm(recipe: &Recipe, llm: &LlmSpec, varmap: &VarMap, seed: u64, device: &Device) -> Result<(super::llama::Llama, VarBuilder<'static>, Option<LoraConfig>), BuildError> {
    let lora = recipe.model.lora.as_ref().or(llm.default_lora.as_ref().filter(|_| llm.is_pretrained()));
    let dtype = recipe.runtime.dtype.resolve(device.is_cuda());
    let (model, vb) = llm.build(lora, varmap, seed, "llm.", false, dtype, device).map_err(Box::new)?;
    Ok((model.with_activation_checkpointing(recipe.runtime.activation_checkpointing), vb, lora.cloned()))
}

/// The Emotion-LLaMA model from its encoders (built first, see [`emotion_llama_encoders`]) and the LLM.
/// Built in two steps so a caller can run the encoders and release them before the LLM is loaded.
pub fn assemble_emotion_llama(recipe: &Recipe, llm: &LlmSpec, tokenizer: &TextTokenizer, el: EmotionLlamaEncoders, varmap: &VarMap, seed: u64, device: &Device) -> Result<Built, BuildError> {
    llm.check_tokenizer(tokenizer).map_err(Box::new)?;
    let views = el.views();
    let (llm_model, _, lora) = build_llm(recipe, llm, varmap, seed, device)?;
    let model = EmotionModel::with_emotion_llama(llm_model, el, tokenizer.bos, tokenizer.eos);
    Ok(Built { model, lora, views })
}

/// A trainable frame encoder's input: its `image_size` (else the recipe's `data.width` x `data.height`),
/// the manifest's filter, mean and std.
fn frame_transform(m: &EncoderManifest, recipe: &Recipe) -> PixelTransform {
    let side = m.config.get("image_size").and_then(|v| v.as_integer()).and_then(|s| usize::try_from(s).ok());
    let (width, height) = side.map_or((recipe.data.width as usize, recipe.data.height as usize), |s| (s, s));
    PixelTransform { width, height, filter: m.preprocess.resize, mean: m.preprocess.mean, std: m.preprocess.std }
}

/// Emotion-LLaMA's encoders and their projectors (to an LLM of width `hidden`): pretrained and seeded
/// weights load frozen outside the run's parameters; `random` ones (the tiny CPU variants) are
/// initialised in the run's `VarMap` under `encoder.<view>.` (frozen too: their outputs are detached).
/// The projectors are created in `varmap` from `seed`, by name, as if the LLM had been built first.
pub fn emotion_llama_encoders(recipe: &Recipe, registry: &Registry, hidden: usize, varmap: &VarMap, seed: u64, device: &Device) -> Result<EmotionLlamaEncoders, BuildError> {
    let vb = &super::init::SeededVarMap::builder(varmap, seed, candle_core::DType::F32, device);
    let load = |name: &str, view: &str, arch: &str| -> Result<Option<FrozenEncoder>, BuildError> {
        if name.is_empty() {
            return Ok(None);
        }
        let (path, m) = registry.encoder(name)?;
        let perr = |message: String| BuildError::Plugin { plugin: name.to_string(), path: path.display().to_string(), message };
        if m.architecture != arch {
            return Err(perr(format!("the {view} encoder must have architecture `{arch}` (this one is `{}`)", m.architecture)));
        }
        let enc = match m.weights {
            Weights::Random => FrozenEncoder::build(path, m, None, vb.pp(format!("encoder.{view}"))),
            _ => FrozenEncoder::load_in(path, m, seed, recipe.runtime.dtype.resolve(device.is_cuda()), device),
        };
        enc.map(Some).map_err(|e| perr(e.to_string()))
    };
    let model = &recipe.model;
    let global = load(&model.global_encoder, "global", "eva_vit")?.ok_or_else(|| BuildError::Plugin { plugin: String::new(), path: String::new(), message: "model.global_encoder is empty".into() })?;
    let local = load(&model.local_encoder, "local", "vit_mae")?;
    let temporal = load(&model.temporal_encoder, "temporal", "videomae")?;
    let audio = load(&model.audio_encoder, "audio", "hubert")?;
    Ok(EmotionLlamaEncoders::new(global, local, temporal, audio, model.projector, hidden, vb.clone())?)
}

/// VideoLLaMA2.1-AV's towers, connector and audio projector (to an LLM of width `hidden`). SigLIP is frozen:
/// pretrained weights load outside the run's parameters, random ones under `encoder.video.` (their outputs
/// detached). BEATs is trainable like the reference's stages 2 and 3: its parameters are the run's, under
/// `encoder.audio.`, from its checkpoint when the manifest names one (else from `seed`). The connector
/// (`projector.video.`) and the audio projector (`projector.audio.`) are new, from `seed`.
pub fn videollama2_av_encoders(recipe: &Recipe, registry: &Registry, hidden: usize, varmap: &VarMap, seed: u64, device: &Device) -> Result<VideoLlama2AvEncoders, BuildError> {
    let vb = super::init::SeededVarMap::builder(varmap, seed, candle_core::DType::F32, device);
    let m = &recipe.model;
    let siglip = match m.video_encoder.as_str() {
        "" => None,
        name => {
            let (path, man) = registry.encoder(name)?;
            let perr = |message: String| BuildError::Plugin { plugin: name.to_string(), path: path.display().to_string(), message };
            if man.architecture != "siglip" {
                return Err(perr(format!("model.family = \"videollama2_av\" takes a `siglip` video encoder (this one is `{}`)", man.architecture)));
            }
            let enc = match man.weights {
                Weights::Random => FrozenEncoder::build(path, man, None, vb.pp("encoder.video")),
                _ => FrozenEncoder::load_in(path, man, seed, recipe.runtime.dtype.resolve(device.is_cuda()), device),
            };
            Some(enc.map_err(|e| perr(e.to_string()))?)
        }
    };
    let beats = match m.audio_encoder.as_str() {
        "" => None,
        name => {
            let (path, man) = registry.encoder(name)?;
            let perr = |message: String| BuildError::Plugin { plugin: name.to_string(), path: path.display().to_string(), message };
            let cfg: BeatsConfig = arch_config(man, path, "beats")?;
            if !matches!(man.weights, Weights::Random) {
                let n = preload_beats(name, path, man, varmap, device).map_err(perr)?;
                tracing::info!(encoder = name, tensors = n, "BEATs weights loaded as trainable parameters (encoder.audio.*)");
            }
            let beats = Beats::new(&cfg, vb.pp("encoder.audio")).map_err(|e| perr(e.to_string()))?;
            Some((beats, man.preprocess.audio_clips, man.preprocess.sample_rate))
        }
    };
    Ok(VideoLlama2AvEncoders::new(siglip, beats, m.projector, hidden, vb.clone())?)
}

/// Puts a BEATs checkpoint's tensors into `varmap` under `encoder.audio.`, where building BEATs then finds
/// them. The AudioSet classifier (`predictor.*`) is not on the feature path and stays out.
fn preload_beats(name: &str, path: &std::path::Path, man: &EncoderManifest, varmap: &VarMap, device: &Device) -> Result<usize, String> {
    let local = super::hub::resolve(name, path, &man.weights).map_err(|e| e.to_string())?.ok_or("the manifest names no weights")?;
    let ckpt = super::encoders::checkpoint::Checkpoint::read(&local, device).map_err(|e| e.to_string())?.rooted_at("patch_embedding.weight", &[]).map_err(|e| e.to_string())?;
    let data = varmap.data();
    let mut data = data.lock().map_err(|_| "the parameter map is poisoned".to_string())?;
    let mut n = 0;
    for (k, t) in ckpt.tensors {
        if k.starts_with("predictor.") {
            continue;
        }
        let var = candle_core::Var::from_tensor(&t.to_dtype(candle_core::DType::F32).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        data.insert(format!("encoder.audio.{k}"), var);
        n += 1;
    }
    Ok(n)
}

pub(crate) fn arch_config<T: serde::de::DeserializeOwned>(m: &EncoderManifest, path: &std::path::Path, want: &str) -> Result<T, BuildError> {
    let err = |message: String| BuildError::Plugin { plugin: m.name.clone(), path: path.display().to_string(), message };
    if m.architecture != want {
        return Err(err(format!("architecture `{}` cannot be used here (expected `{want}`)", m.architecture)));
    }
    toml::Value::Table(m.config.clone()).try_into().map_err(|e: toml::de::Error| err(format!("[config]: {e}")))
}

/// Pretrained weights for these tiny architectures do not exist yet; say so instead of silently
/// training from scratch.
fn check_random_weights(name: &str, path: &std::path::Path, w: &Weights) -> Result<(), BuildError> {
    match w {
        Weights::Random => Ok(()),
        other => Err(BuildError::Plugin {
            plugin: name.to_string(),
            path: path.display().to_string(),
            message: format!("weights {other:?}: loading pretrained weights into this architecture is not supported yet; use `source = \"random\"`"),
        }),
    }
}
