//! Reading Hugging Face `config.json` files as transformers 4.x and 5.x write them, without silent
//! defaults: every key is either read by the model's config struct, or on a list of keys deliberately
//! ignored (with the reason, next to each struct), or refused when it is set to a value that would change
//! the results and that we do not implement. Keys on none of the lists are named in a warning: a newer
//! transformers may have added them, and a key we do not know might change results.
//!
//! Renamed keys (5.x `rope_parameters` for 4.x `rope_theta` / `rope_scaling`, VideoMAE's `qv_bias` for
//! `qkv_bias`, `dtype` for `torch_dtype`) are read under both names; both present and different is an error
//! naming the two.

use std::path::Path;

use serde_json::{Map, Value};

/// A key of a `config.json` that cannot be used as written.
#[derive(Debug, thiserror::Error)]
#[error("`{path}`: key `{key}`: {detail}")]
pub struct KeyError {
    pub path: String,
    pub key: String,
    pub detail: String,
}

impl KeyError {
    pub fn new(path: &Path, key: &str, detail: impl Into<String>) -> Self {
        Self { path: path.display().to_string(), key: key.to_string(), detail: detail.into() }
    }
}

/// Keys that transformers' `PretrainedConfig` writes for every model and that never change an inference
/// result (metadata, output switches, training and generation settings).
pub const COMMON_IGNORED: &[(&str, &str)] = &[
    ("_name_or_path", "metadata"),
    ("model_type", "the architecture: chosen from it when a model directory is resolved, else checked against the manifest's"),
    ("architectures", "metadata: the head class; the encoder/decoder body is what is loaded"),
    ("transformers_version", "metadata"),
    ("torch_dtype", "storage dtype (4.x name): each tensor carries its own dtype, and runs choose theirs"),
    ("dtype", "storage dtype (5.x name): each tensor carries its own dtype, and runs choose theirs"),
    ("id2label", "classification-head labels: no head is loaded"),
    ("label2id", "classification-head labels: no head is loaded"),
    ("problem_type", "classification-head loss"),
    ("output_hidden_states", "output switch: emollama returns what the caller asks for"),
    ("output_attentions", "output switch"),
    ("return_dict", "output switch"),
    ("torchscript", "export switch"),
    ("is_encoder_decoder", "structure flag, fixed per architecture"),
    ("is_decoder", "structure flag, fixed per architecture"),
    ("add_cross_attention", "only for encoder-decoder wrappers"),
    ("chunk_size_feed_forward", "feed-forward chunking computes the same values"),
    ("use_cache", "KV caching gives the same values; generation always caches"),
    ("initializer_range", "initialisation of new weights only"),
    ("pad_token_id", "padding id: positions are masked, not read"),
    ("tie_encoder_decoder", "encoder-decoder wrappers only"),
    ("pruned_heads", "must be empty: pruned checkpoints have smaller tensors, which fail to load by shape"),
    ("tokenizer_class", "metadata"),
    ("prefix", "generation metadata"),
    ("task_specific_params", "generation metadata"),
    ("finetuning_task", "metadata"),
    ("max_length", "generation setting (generation_config.json); runs set their own"),
    ("min_length", "generation setting"),
    ("do_sample", "generation setting"),
    ("early_stopping", "generation setting"),
    ("num_beams", "generation setting"),
    ("num_beam_groups", "generation setting"),
    ("diversity_penalty", "generation setting"),
    ("temperature", "generation setting"),
    ("top_k", "generation setting"),
    ("top_p", "generation setting"),
    ("typical_p", "generation setting"),
    ("repetition_penalty", "generation setting"),
    ("length_penalty", "generation setting"),
    ("no_repeat_ngram_size", "generation setting"),
    ("encoder_no_repeat_ngram_size", "generation setting"),
    ("bad_words_ids", "generation setting"),
    ("num_return_sequences", "generation setting"),
    ("output_scores", "generation setting"),
    ("return_dict_in_generate", "generation setting"),
    ("forced_bos_token_id", "generation setting"),
    ("forced_eos_token_id", "generation setting"),
    ("remove_invalid_values", "generation setting"),
    ("exponential_decay_length_penalty", "generation setting"),
    ("suppress_tokens", "generation setting"),
    ("begin_suppress_tokens", "generation setting"),
    ("decoder_start_token_id", "encoder-decoder generation"),
    ("sep_token_id", "tokenizer metadata"),
    ("cross_attention_hidden_size", "encoder-decoder wrappers only"),
    ("tf_legacy_loss", "training loss"),
    ("use_bfloat16", "storage dtype (TF/Flax)"),
    ("gradient_checkpointing", "training memory setting; same values"),
];

/// The keys a config struct reads: the fields of its default value serialised to JSON.
pub fn struct_keys<T: serde::Serialize>(value: &T) -> Vec<String> {
    serde_json::to_value(value).ok().and_then(|v| v.as_object().map(|o| o.keys().cloned().collect())).unwrap_or_default()
}

/// [`warn_unknown`] for a config struct `T` whose every field has a serde default (the encoders'): the keys
/// it reads are those of `T` built from `{}`.
pub fn warn_unknown_for<T: serde::de::DeserializeOwned + serde::Serialize>(path: &Path, obj: &Map<String, Value>, ignored: &[(&str, &str)]) -> Vec<String> {
    // Fails only if a field lost its default: then every key is named in the warning, none dropped silently.
    let read = serde_json::from_value::<T>(Value::Object(Map::new())).map(|d| struct_keys(&d)).unwrap_or_default();
    warn_unknown(path, obj, &read, ignored)
}

/// Warns about (and returns) the keys of `obj` that are neither read nor ignored.
pub fn warn_unknown(path: &Path, obj: &Map<String, Value>, read: &[String], ignored: &[(&str, &str)]) -> Vec<String> {
    let known = |k: &str| read.iter().any(|r| r == k) || ignored.iter().chain(COMMON_IGNORED).any(|(i, _)| *i == k);
    let unknown: Vec<String> = obj.keys().filter(|k| !known(k)).cloned().collect();
    if !unknown.is_empty() {
        tracing::warn!(
            file = %path.display(),
            keys = %unknown.join(", "),
            "config keys that emollama does not read; if one of them changes the model's results, they will differ from transformers"
        );
    }
    unknown
}

/// `key` must be absent, `null`, or satisfy `neutral`; otherwise it changes results in a way we do not
/// implement, and the error says what is supported.
pub fn refuse_unless(path: &Path, obj: &Map<String, Value>, key: &str, neutral: impl Fn(&Value) -> bool, supported: &str) -> Result<(), KeyError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if neutral(v) => Ok(()),
        Some(v) => Err(KeyError::new(path, key, format!("{v} is not supported; {supported}"))),
    }
}

/// Moves `new` (the 5.x name) to `old` (the name the struct reads). Both present with different values is
/// an error naming the two.
pub fn rename(path: &Path, obj: &mut Map<String, Value>, old: &str, new: &str) -> Result<(), KeyError> {
    let Some(v) = obj.remove(new) else { return Ok(()) };
    match obj.get(old) {
        Some(o) if !o.is_null() && o != &v => Err(KeyError::new(path, new, format!("{v} disagrees with `{old}` = {o}; they are two names of one setting (transformers 5 and 4); remove one"))),
        _ => {
            obj.insert(old.to_string(), v);
            Ok(())
        }
    }
}

/// Numbers equal as JSON numbers (1 and 1.0 alike).
pub fn same_number(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).expect("json object")
    }

    #[test]
    fn renamed_keys_are_read_under_both_names_and_conflicts_name_both() {
        let p = Path::new("config.json");
        let mut o = obj(r#"{"qv_bias": false}"#);
        rename(p, &mut o, "qkv_bias", "qv_bias").expect("rename");
        assert_eq!(o.get("qkv_bias"), Some(&Value::Bool(false)));
        let mut o = obj(r#"{"qv_bias": false, "qkv_bias": true}"#);
        let e = rename(p, &mut o, "qkv_bias", "qv_bias").expect_err("conflict").to_string();
        assert!(e.contains("qv_bias") && e.contains("qkv_bias") && e.contains("config.json"), "{e}");
    }

    #[test]
    fn refusals_name_the_key_and_unknown_keys_are_returned() {
        let p = Path::new("m/config.json");
        let o = obj(r#"{"mlp_bias": true, "hidden_size": 4, "brand_new": 1, "use_cache": true}"#);
        let e = refuse_unless(p, &o, "mlp_bias", |v| v == &Value::Bool(false), "MLP projections without bias").expect_err("refused").to_string();
        assert!(e.contains("m/config.json") && e.contains("mlp_bias") && e.contains("without bias"), "{e}");
        assert_eq!(warn_unknown(p, &o, &["hidden_size".into(), "mlp_bias".into()], &[]), vec!["brand_new".to_string()]);
    }
}
