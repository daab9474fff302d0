//! The decoder configuration: the fields of HF `LlamaConfig` / `Qwen2Config` (`config.json`) that the model
//! reads. Manifests write it strictly (unknown keys are typos); `config.json` files are read leniently
//! (their many training-only keys are ignored) after the architecture is checked.

use std::path::Path;

use serde::{Deserialize, Serialize};

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

/// HF `rope_scaling`: `linear` (positions divided by `factor`) or `llama3` (frequency-dependent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
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
    #[error("`{path}`: unknown architecture `{found}`; supported model_type values: {}", MODEL_TYPES.join(", "))]
    Architecture { path: String, found: String },
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
            match s.rope_type.as_str() {
                "linear" | "default" => {}
                "llama3" if s.low_freq_factor.is_some() && s.high_freq_factor.is_some() && s.original_max_position_embeddings.is_some() => {}
                "llama3" => return Err("rope_scaling `llama3` needs low_freq_factor, high_freq_factor and original_max_position_embeddings".into()),
                other => return Err(format!("rope_scaling type `{other}` is not supported (linear, llama3)")),
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
        let model_type = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("").to_string();
        if !MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(ConfigError::Architecture { path: p, found: model_type });
        }
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()).filter(|a| *a != "silu") {
            return Err(err(format!("hidden_act `{act}` is not supported (silu)")));
        }
        let known = serde_json::to_value(LlamaConfig::default()).map_err(|e| err(e.to_string()))?;
        let known = known.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        v.retain(|k, val| known.contains(k) && !val.is_null());
        if let Some(serde_json::Value::Object(rs)) = v.get_mut("rope_scaling") {
            // Old configs say `type`, new ones `rope_type`, some both.
            if rs.contains_key("rope_type") {
                rs.remove("type");
            }
            rs.retain(|k, _| ["rope_type", "type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"].contains(&k.as_str()));
        }
        let cfg: LlamaConfig = serde_json::from_value(serde_json::Value::Object(v)).map_err(|e| err(e.to_string()))?;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Rotary inverse frequencies (f32, as HF computes them), after `rope_scaling`.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let base: Vec<f32> = (0..d / 2).map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / d as f32)).collect();
        let Some(s) = &self.rope_scaling else { return base };
        let factor = s.factor as f32;
        match s.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / factor).collect(),
            "llama3" => {
                let (lo, hi) = (s.low_freq_factor.unwrap_or(1.0) as f32, s.high_freq_factor.unwrap_or(4.0) as f32);
                let old = s.original_max_position_embeddings.unwrap_or(8192) as f32;
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
}
