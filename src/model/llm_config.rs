//! The decoder configuration: the fields of HF `LlamaConfig` / `Qwen2Config` (`config.json`) that the model
//! reads. Manifests write it strictly (unknown keys are typos). `config.json` files are read as transformers
//! 4.x and 5.x write them (`rope_parameters` or `rope_theta` + `rope_scaling`): every key is read, on
//! [`HF_IGNORED`] with its reason, or refused when set to something that changes results and that the model
//! does not implement ([`LlamaConfig::from_hf_file`]); other keys are named in a warning.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::hf_config::{self, KeyError, refuse_unless};

/// Decoder architectures this implementation runs (HF `model_type`).
pub const MODEL_TYPES: [&str; 2] = ["llama", "qwen2"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    /// `llama` or `qwen2` (q/k/v projections with bias).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no GQA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// 0 = taken from the tokenizer at build time.
    #[serde(default)]
    pub vocab_size: usize,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// LLaMA's `attention_bias`: bias on q, k, v and o (Qwen2 has q/k/v bias regardless).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// One id or several (LLaMA-3 lists two).
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
}

/// `eos_token_id` is an integer or a list in HF configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `config.json` keys of LLaMA / Qwen2 that never change an inference result (beyond
/// [`hf_config::COMMON_IGNORED`]), with the reason.
pub const HF_IGNORED: &[(&str, &str)] = &[
    ("attention_dropout", "dropout: off at inference, and training keeps the reference's no-dropout LLM"),
    ("pretraining_tp", "tensor-parallel slicing of the same products (transformers 5 ignores it too)"),
    ("max_window_layers", "only with use_sliding_window, which is refused unless off"),
    ("bos_token_id", "read from the tokenizer"),
    ("rope_parameters", "read (transformers 5), mapped to rope_theta / rope_scaling"),
    ("hidden_act", "checked: silu only"),
    ("use_sliding_window", "checked: refused unless off"),
    ("sliding_window", "checked: refused when a window shorter than max_position_embeddings is in use"),
    ("layer_types", "checked: every layer must be full_attention"),
    ("mlp_bias", "checked: refused unless false"),
    ("partial_rotary_factor", "checked: refused unless 1"),
];

/// `model_type` values of multimodal checkpoints whose language model is one of [`MODEL_TYPES`] under the
/// standard names (`model.layers.*`, `lm_head.*`), with the type they are read as; their other modules'
/// tensors are not the LLM's and are never asked for.
pub const MODEL_TYPE_ALIASES: &[(&str, &str)] = &[("videollama2_qwen2", "qwen2")];

/// VideoLLaMA2's multimodal `config.json` keys: the vision tower, connectors and audio tower, which are the
/// recipe's encoders and projectors, not the LLM; `emollama import videollama2-av` checks them against the
/// recipe.
pub const VIDEOLLAMA2_KEYS: &[(&str, &str)] = &[
    ("mm_vision_tower", "the recipe's video encoder (checked by `emollama import videollama2-av`)"),
    ("mm_vision_select_layer", "the video encoder's feature layer (checked by `emollama import videollama2-av`)"),
    ("mm_vision_select_feature", "the video encoder's tokens (checked by `emollama import videollama2-av`)"),
    ("mm_hidden_size", "the video encoder's width (checked by `emollama import videollama2-av`)"),
    ("mm_projector_type", "the STC connector (checked by `emollama import videollama2-av`)"),
    ("num_frames", "the recipe's frame sampling (checked by `emollama import videollama2-av`)"),
    ("mm_audio_tower", "the recipe's audio encoder (checked by `emollama import videollama2-av`)"),
    ("mm_projector_a_type", "the audio projector (checked by `emollama import videollama2-av`)"),
    ("mm_hidden_size_a", "the audio encoder's width (checked by `emollama import videollama2-av`)"),
    ("hidden_size_a", "the audio projector's output, the LLM width (checked by `emollama import videollama2-av`)"),
    ("image_aspect_ratio", "image preprocessing of the image path; videos are resized (the recipe's [data])"),
    ("mm_use_im_start_end", "training flags of the reference trainer"),
    ("mm_use_im_patch_token", "training flags of the reference trainer"),
    ("tune_mm_mlp_adapter", "training flags of the reference trainer (the recipe's trainable sets)"),
    ("freeze_mm_mlp_adapter", "training flags of the reference trainer (the recipe's trainable sets)"),
    ("tune_audio_tower", "training flags of the reference trainer (the recipe's trainable sets)"),
    ("mm_projector_lr", "training flags of the reference trainer (the recipe's learning rates)"),
    ("use_mm_proj", "always true for these models"),
    ("tokenizer_model_max_length", "the tokenizer's truncation length in training (the recipe's [data])"),
    ("tokenizer_padding_side", "padding side in training; batches here carry attention masks"),
];

/// Rotary scaling types (HF `rope_type`), besides `default`.
pub const ROPE_TYPES: [&str; 5] = ["default", "linear", "dynamic", "yarn", "llama3"];

/// HF rotary scaling (4.x `rope_scaling`, 5.x `rope_parameters` without `rope_theta`): `linear`
/// (positions divided by `factor`), `dynamic` (NTK: changes the base only beyond `max_position_embeddings`,
/// which the model never reaches, so it equals the default table there), `yarn` (ramped interpolation plus a
/// cos/sin scale) or `llama3` (frequency-dependent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    /// llama3 and yarn; defaults to `max_position_embeddings` (as transformers 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// yarn: the cos/sin scale; default from `factor` (and `mscale` / `mscale_all_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// yarn ramp bounds (defaults 32 and 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_fast: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_slow: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    /// yarn: round the ramp bounds outwards (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
}

impl RopeScaling {
    fn new(rope_type: &str) -> Self {
        Self {
            rope_type: rope_type.to_string(),
            factor: 1.0,
            low_freq_factor: None,
            high_freq_factor: None,
            original_max_position_embeddings: None,
            attention_factor: None,
            beta_fast: None,
            beta_slow: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: None,
        }
    }
}

/// The keys a rotary dictionary may hold (4.x `rope_scaling` or 5.x `rope_parameters`).
const ROPE_KEYS: [&str; 14] = [
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "truncate",
    "partial_rotary_factor",
];

/// The rotary settings of a `config.json`: `rope_theta` and the scaling, from 5.x `rope_parameters` and/or
/// 4.x `rope_theta` + `rope_scaling`; where both layouts give a value and they differ, an error naming both.
fn rope_from_hf(path: &Path, v: &Map<String, Value>) -> Result<(Option<f64>, Option<RopeScaling>), KeyError> {
    let dict = |key: &str| -> Result<Option<&Map<String, Value>>, KeyError> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(other) => Err(KeyError::new(path, key, format!("{other} is not an object"))),
        }
    };
    let params = dict("rope_parameters")?;
    let legacy = dict("rope_scaling")?;
    if let Some(p) = params
        && !p.is_empty()
        && p.values().all(Value::is_object)
    {
        return Err(KeyError::new(path, "rope_parameters", "per-layer-type rotary settings are not supported (one rotary setting for every layer)"));
    }
    let legacy_theta = v.get("rope_theta").filter(|t| !t.is_null());
    let params_theta = params.and_then(|p| p.get("rope_theta")).filter(|t| !t.is_null());
    if let (Some(a), Some(b)) = (legacy_theta, params_theta)
        && !hf_config::same_number(a, b)
    {
        return Err(KeyError::new(path, "rope_parameters.rope_theta", format!("{b} disagrees with `rope_theta` = {a}; remove one")));
    }
    let theta = params_theta.or(legacy_theta).map(|t| t.as_f64().ok_or_else(|| KeyError::new(path, "rope_theta", format!("{t} is not a number")))).transpose()?;
    // The scaling dictionary: both layouts must agree on every key they both give.
    let type_of = |d: &Map<String, Value>| d.get("rope_type").or_else(|| d.get("type")).and_then(Value::as_str).unwrap_or("default").to_string();
    if let (Some(p), Some(l)) = (params, legacy) {
        if type_of(p) != type_of(l) {
            return Err(KeyError::new(path, "rope_parameters.rope_type", format!("`{}` disagrees with `rope_scaling` type `{}`; remove one", type_of(p), type_of(l))));
        }
        for (k, a) in l {
            if let Some(b) = p.get(k)
                && k != "type"
                && !hf_config::same_number(a, b)
            {
                return Err(KeyError::new(path, &format!("rope_parameters.{k}"), format!("{b} disagrees with `rope_scaling.{k}` = {a}; remove one")));
            }
        }
    }
    let Some(d) = params.or(legacy) else { return Ok((theta, None)) };
    let where_ = if params.is_some() { "rope_parameters" } else { "rope_scaling" };
    for k in d.keys() {
        if !ROPE_KEYS.contains(&k.as_str()) {
            return Err(KeyError::new(path, &format!("{where_}.{k}"), format!("not supported; rotary keys read: {}", ROPE_KEYS.join(", "))));
        }
    }
    refuse_unless(path, d, "partial_rotary_factor", |x| x.as_f64() == Some(1.0), "rotary embeddings over the whole head (partial_rotary_factor 1)")?;
    let rope_type = type_of(d);
    if !ROPE_TYPES.contains(&rope_type.as_str()) {
        return Err(KeyError::new(path, &format!("{where_}.rope_type"), format!("`{rope_type}` is not supported; supported: {}", ROPE_TYPES.join(", "))));
    }
    if rope_type == "default" {
        return Ok((theta, None));
    }
    let num = |k: &str| -> Result<Option<f64>, KeyError> {
        d.get(k).filter(|x| !x.is_null()).map(|x| x.as_f64().ok_or_else(|| KeyError::new(path, &format!("{where_}.{k}"), format!("{x} is not a number")))).transpose()
    };
    let mut s = RopeScaling::new(&rope_type);
    s.factor = num("factor")?.unwrap_or(1.0);
    s.low_freq_factor = num("low_freq_factor")?;
    s.high_freq_factor = num("high_freq_factor")?;
    // Phi-3-style configs keep the pretraining length at the top level; transformers 5 prefers it there.
    let top_original = v.get("original_max_position_embeddings").and_then(Value::as_f64);
    s.original_max_position_embeddings = top_original.or(num("original_max_position_embeddings")?).map(|x| x as usize);
    s.attention_factor = num("attention_factor")?;
    s.beta_fast = num("beta_fast")?;
    s.beta_slow = num("beta_slow")?;
    s.mscale = num("mscale")?;
    s.mscale_all_dim = num("mscale_all_dim")?;
    s.truncate = d.get("truncate").and_then(Value::as_bool);
    if rope_type == "yarn" && d.get("factor").is_none_or(Value::is_null) {
        // transformers: the ratio of the context length to the pretraining one.
        let max = v.get("max_position_embeddings").and_then(Value::as_f64);
        if let (Some(max), Some(orig)) = (max, s.original_max_position_embeddings) {
            s.factor = max / orig as f64;
        }
    }
    Ok((theta, Some(s)))
}

fn one() -> f64 {
    1.0
}
fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            model_type: default_model_type(),
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: None,
            head_dim: None,
            vocab_size: 0,
            rms_norm_eps: default_rms_eps(),
            rope_theta: default_rope_theta(),
            rope_scaling: None,
            max_position_embeddings: default_max_pos(),
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: None,
            eos_token_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("`{path}`: {detail}")]
    File { path: String, detail: String },
    #[error("`{path}`: unknown architecture `{found}`; supported model_type values: {}, and {}", MODEL_TYPES.join(", "), MODEL_TYPE_ALIASES.iter().map(|(a, b)| format!("{a} (read as {b})")).collect::<Vec<_>>().join(", "))]
    Architecture { path: String, found: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Bias on q, k, v.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    /// Bias on the output projection.
    pub fn o_bias(&self) -> bool {
        self.model_type == "llama" && self.attention_bias
    }

    /// Structural checks the model relies on (a bad config fails here, not as a shape error later).
    pub fn validate(&self) -> Result<(), String> {
        if !MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Err(format!("unknown model_type `{}`; supported: {}", self.model_type, MODEL_TYPES.join(", ")));
        }
        if self.num_attention_heads == 0 || self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!("num_attention_heads {} must be a positive multiple of num_key_value_heads {}", self.num_attention_heads, self.kv_heads()));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for rotary embeddings", self.head_dim()));
        }
        if let Some(s) = &self.rope_scaling {
            if !(s.factor.is_finite() && s.factor > 0.0) {
                return Err(format!("rope scaling factor {} must be positive", s.factor));
            }
            match s.rope_type.as_str() {
                "linear" | "default" | "dynamic" | "yarn" => {}
                "llama3" if s.low_freq_factor.is_some() && s.high_freq_factor.is_some() => {}
                "llama3" => return Err("rope scaling `llama3` needs low_freq_factor and high_freq_factor".into()),
                other => return Err(format!("rope scaling type `{other}` is not supported ({})", ROPE_TYPES.join(", "))),
            }
            if s.rope_type != "yarn" && (s.attention_factor.is_some() || s.beta_fast.is_some() || s.beta_slow.is_some() || s.mscale.is_some() || s.mscale_all_dim.is_some()) {
                return Err(format!("rope scaling `{}`: attention_factor, beta_fast, beta_slow, mscale and mscale_all_dim belong to yarn", s.rope_type));
            }
        }
        Ok(())
    }

    /// Reads an HF `config.json`, keeping the fields above and checking `model_type`.
    pub fn from_hf_file(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let err = |detail: String| ConfigError::File { path: p.clone(), detail };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).map_err(|e| err(format!("not a JSON object: {e}")))?;
        let mut model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("").to_string();
        let alias = MODEL_TYPE_ALIASES.iter().find(|(a, _)| *a == model_type);
        if let Some((_, base)) = alias {
            model_type = base.to_string();
            v.insert("model_type".into(), Value::String(model_type.clone()));
        }
        if !MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(ConfigError::Architecture { path: p, found: model_type });
        }
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()).filter(|a| *a != "silu") {
            return Err(err(format!("hidden_act `{act}` is not supported (silu)")));
        }
        Self::refuse_unimplemented(path, &v)?;
        let known = hf_config::struct_keys(&LlamaConfig::default());
        // The optional fields serialise as null; they are read all the same.
        let ignored: Vec<(&str, &str)> = HF_IGNORED.iter().chain(if alias.is_some() { VIDEOLLAMA2_KEYS } else { &[] }).copied().collect();
        hf_config::warn_unknown(path, &v, &known, &ignored);
        let (theta, scaling) = rope_from_hf(path, &v)?;
        v.retain(|k, val| known.contains(k) && !val.is_null() && k != "rope_theta" && k != "rope_scaling");
        if let Some(t) = theta {
            v.insert("rope_theta".into(), t.into());
        }
        let mut cfg: LlamaConfig = serde_json::from_value(Value::Object(v)).map_err(|e| err(e.to_string()))?;
        cfg.rope_scaling = scaling;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Keys that change results in ways this model does not implement, unless they have their neutral value.
    fn refuse_unimplemented(path: &Path, v: &Map<String, Value>) -> Result<(), KeyError> {
        refuse_unless(path, v, "mlp_bias", |x| x == &Value::Bool(false), "MLP projections without bias (mlp_bias false)")?;
        refuse_unless(path, v, "partial_rotary_factor", |x| x.as_f64() == Some(1.0), "rotary embeddings over the whole head (partial_rotary_factor 1)")?;
        refuse_unless(
            path,
            v,
            "layer_types",
            |x| x.as_array().is_some_and(|a| a.iter().all(|t| t.as_str() == Some("full_attention"))),
            "full attention in every layer (layer_types all `full_attention`)",
        )?;
        // Qwen2: a window in use masks keys further back than `sliding_window` in the upper layers.
        let max_pos = v.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let window_covers_all = v.get("sliding_window").and_then(Value::as_u64).is_none_or(|w| w >= max_pos);
        if !window_covers_all {
            refuse_unless(path, v, "use_sliding_window", |x| x == &Value::Bool(false), "full attention (use_sliding_window false, or a sliding_window of at least max_position_embeddings)")?;
        }
        Ok(())
    }

    /// The scale of the rotary cos/sin tables: yarn's attention factor, else 1.
    pub fn rope_attention_factor(&self) -> f32 {
        let Some(s) = self.rope_scaling.as_ref().filter(|s| s.rope_type == "yarn") else { return 1.0 };
        // The YaRN paper's mscale: 0.1·m·ln(factor) + 1 (1 for factor ≤ 1).
        let mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
        let f = match (s.attention_factor, s.mscale, s.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => mscale(s.factor, m) / mscale(s.factor, all),
            _ => mscale(s.factor, 1.0),
        };
        f as f32
    }

    /// Rotary inverse frequencies (f32, as HF computes them), after `rope_scaling`.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let base: Vec<f32> = (0..d / 2).map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / d as f32)).collect();
        let Some(s) = &self.rope_scaling else { return base };
        let factor = s.factor as f32;
        let original = s.original_max_position_embeddings.unwrap_or(self.max_position_embeddings);
        match s.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / factor).collect(),
            // Dynamic NTK changes the base only for sequences longer than max_position_embeddings; the
            // rotary table ends there, so within it the frequencies are the default ones.
            "dynamic" => base,
            "yarn" => {
                // Dimensions that rotate fewer than beta_slow times over the pretraining length are
                // interpolated (divided by the factor), those that rotate more than beta_fast times kept, with
                // a linear ramp between (transformers' _compute_yarn_parameters).
                let (dim, theta) = (d as f64, self.rope_theta);
                let correction_dim = |rotations: f64| dim * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
                let (mut low, mut high) = (correction_dim(s.beta_fast.unwrap_or(32.0)), correction_dim(s.beta_slow.unwrap_or(1.0)));
                if s.truncate.unwrap_or(true) {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0) as f32, high.min(dim - 1.0) as f32);
                if low == high {
                    high += 0.001;
                }
                (0..d / 2)
                    .map(|i| {
                        let pos_freq = (self.rope_theta as f32).powf((2 * i) as f32 / d as f32);
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (1.0 / (factor * pos_freq)) * (1.0 - extrapolation) + (1.0 / pos_freq) * extrapolation
                    })
                    .collect()
            }
            "llama3" => {
                let (lo, hi) = (s.low_freq_factor.unwrap_or(1.0) as f32, s.high_freq_factor.unwrap_or(4.0) as f32);
                let old = original as f32;
                let (lo_wavelen, hi_wavelen) = (old / lo, old / hi);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < hi_wavelen {
                            f
                        } else if wavelen > lo_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_config_files_and_rejects_unknown_architectures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.json");
        std::fs::write(&p, r#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":96,"use_sliding_window":false,
            "rope_scaling":null,"eos_token_id":[2,3],"hidden_act":"silu"}"#).expect("write");
        let cfg = LlamaConfig::from_hf_file(&p).expect("parse");
        assert!(cfg.qkv_bias() && !cfg.o_bias());
        assert_eq!(cfg.eos_token_id.map(|e| e.ids()), Some(vec![2, 3]));
        std::fs::write(&p, r#"{"model_type":"mistral","hidden_size":64}"#).expect("write");
        let e = LlamaConfig::from_hf_file(&p).expect_err("mistral").to_string();
        assert!(e.contains("config.json") && e.contains("mistral") && e.contains("qwen2"), "{e}");
        std::fs::write(&p, "{not json").expect("write");
        assert!(LlamaConfig::from_hf_file(&p).expect_err("bad json").to_string().contains("config.json"));
    }

    const BASE: &str = r#""model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"max_position_embeddings":128"#;

    fn read(extra: &str) -> Result<LlamaConfig, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let p = dir.path().join("config.json");
        std::fs::write(&p, format!("{{{BASE},{extra}}}")).map_err(|e| e.to_string())?;
        LlamaConfig::from_hf_file(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn both_rope_layouts_read_the_same_and_conflicts_name_both_keys() {
        let v4 = read(r#""rope_theta":500000.0,"rope_scaling":{"type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32}"#).expect("4.x layout");
        let v5 = read(r#""rope_parameters":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32,"rope_theta":500000.0}"#).expect("5.x layout");
        assert_eq!(v4, v5);
        assert_eq!(v5.rope_theta, 500000.0);
        // Both layouts, agreeing: fine; disagreeing: an error naming both keys.
        read(r#""rope_theta":500000.0,"rope_parameters":{"rope_type":"default","rope_theta":500000}"#).expect("agreeing layouts");
        let e = read(r#""rope_theta":10000.0,"rope_parameters":{"rope_type":"default","rope_theta":500000.0}"#).expect_err("theta conflict");
        assert!(e.contains("rope_parameters.rope_theta") && e.contains("`rope_theta`"), "{e}");
        let e = read(r#""rope_scaling":{"type":"linear","factor":2.0},"rope_parameters":{"rope_type":"linear","factor":4.0}"#).expect_err("factor conflict");
        assert!(e.contains("rope_parameters.factor") && e.contains("rope_scaling.factor"), "{e}");
        // No rotary key at all: HF's default theta.
        assert_eq!(read(r#""vocab_size":96"#).expect("no rope keys").rope_theta, 10_000.0);
    }

    #[test]
    fn yarn_scale_and_defaults_follow_transformers() {
        let c = read(r#""rope_parameters":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32,"rope_theta":10000.0}"#).expect("yarn");
        assert!((c.rope_attention_factor() - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        // No factor: max_position_embeddings / original.
        let c = read(r#""rope_parameters":{"rope_type":"yarn","original_max_position_embeddings":32,"rope_theta":10000.0}"#).expect("yarn without factor");
        assert_eq!(c.rope_scaling.map(|s| s.factor), Some(4.0));
        // llama3 without original_max_position_embeddings: max_position_embeddings (transformers 5).
        let c = read(r#""rope_parameters":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"rope_theta":500000.0}"#).expect("llama3");
        assert_eq!(c.inv_freq().len(), 8);
        assert_eq!(read(r#""rope_theta":500000.0"#).expect("default").rope_attention_factor(), 1.0);
    }

    #[test]
    fn settings_the_model_does_not_implement_are_refused_by_name() {
        for (extra, key) in [
            (r#""rope_parameters":{"rope_type":"longrope","rope_theta":10000.0,"long_factor":[1.0]}"#, "long_factor"),
            (r#""rope_parameters":{"rope_type":"su","rope_theta":10000.0}"#, "rope_type"),
            (r#""rope_parameters":{"rope_type":"default","rope_theta":10000.0,"partial_rotary_factor":0.5}"#, "partial_rotary_factor"),
            (r#""mlp_bias":true"#, "mlp_bias"),
            (r#""model_type":"qwen2","use_sliding_window":true,"sliding_window":16"#, "use_sliding_window"),
            (r#""layer_types":["full_attention","sliding_attention"]"#, "layer_types"),
            (r#""rope_parameters":{"full_attention":{"rope_type":"default"},"sliding_attention":{"rope_type":"default"}}"#, "rope_parameters"),
            (r#""rope_scaling":{"type":"linear","factor":2.0,"attention_factor":1.5}"#, "attention_factor"),
        ] {
            let e = read(extra).expect_err(key);
            assert!(e.contains(key) && e.contains("config.json"), "{key}: {e}");
        }
        // A window at least as long as the context is no window: accepted.
        read(r#""model_type":"qwen2","use_sliding_window":true,"sliding_window":4096"#).expect("window covers the context");
        read(r#""mlp_bias":false,"layer_types":["full_attention","full_attention"],"pretraining_tp":1"#).expect("neutral values");
    }
}
