//! Tokenizers (tokenizers crate): a pretrained model's `tokenizer.json`, one rebuilt from GGUF metadata
//! ([`super::gguf`]), or, for the tiny LLM trained from scratch, a word-level vocabulary built from the
//! run's training texts, prompts and labels (saved with the run).

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use tokenizers::Tokenizer;

pub const UNK: &str = "<unk>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const PAD: &str = "<pad>";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer: {0}")]
    Build(String),
    #[error("tokenizer file `{path}`: {detail}")]
    File { path: String, detail: String },
}

/// A tokenizer plus the ids of its special tokens.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Prepended to every sequence when the model expects it (LLaMA-2: `<s>`; ChatML models: none).
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: u32,
    pub unk: u32,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TextTokenizer(vocab={})", self.vocab_size())
    }
}

/// Splits like the tokenizer's pre-tokenizer (`\w+|[^\w\s]+`), lowercased, to collect a vocabulary.
pub(crate) fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_word: Option<bool> = None;
    for ch in text.to_lowercase().chars() {
        if ch.is_whitespace() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur_word = None;
            continue;
        }
        let is_word = ch.is_alphanumeric() || ch == '_';
        if cur_word.is_some_and(|w| w != is_word) && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur_word = Some(is_word);
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl TextTokenizer {
    /// Builds a word-level vocabulary (sorted, so deterministic) over `corpus`.
    pub fn from_corpus<'a>(corpus: impl IntoIterator<Item = &'a str>) -> Result<Self, TokenizerError> {
        let mut vocab_words = BTreeSet::new();
        for text in corpus {
            vocab_words.extend(words(text));
        }
        let specials = [UNK, BOS, EOS, PAD];
        let mut vocab = serde_json::Map::new();
        for (i, s) in specials.iter().enumerate() {
            vocab.insert(s.to_string(), (i as u32).into());
        }
        for w in vocab_words {
            let id = vocab.len() as u32;
            vocab.entry(w).or_insert_with(|| id.into());
        }
        let added: Vec<_> = specials
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
        });
        let inner = Tokenizer::from_str(&json.to_string()).map_err(|e| TokenizerError::Build(e.to_string()))?;
        Self::wrap(inner)
    }

    /// A corpus tokenizer saved by a run (special tokens `<s>`, `</s>`, `<pad>`, `<unk>`).
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::File { path: path.display().to_string(), detail: e.to_string() })?;
        Self::wrap(inner)
    }

    /// A pretrained `tokenizer.json` with the special ids from the model's config: `bos` (added only when
    /// `add_bos`), `eos`, and pad / unk looked up by their usual names or falling back to `eos`.
    pub fn from_pretrained_file(path: &Path, bos: Option<u32>, add_bos: bool, eos: u32) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::File { path: path.display().to_string(), detail: e.to_string() })?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let pad = find(&["<pad>", "<|endoftext|>"]).unwrap_or(eos);
        let unk = find(&["<unk>"]).unwrap_or(eos);
        Ok(Self::with_specials(inner, bos.filter(|_| add_bos), eos, pad, unk))
    }

    pub fn with_specials(inner: Tokenizer, bos: Option<u32>, eos: u32, pad: u32, unk: u32) -> Self {
        Self { inner, bos, eos, pad, unk }
    }

    fn wrap(inner: Tokenizer) -> Result<Self, TokenizerError> {
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| TokenizerError::Build(format!("special token {t} missing")));
        Ok(Self { bos: Some(id(BOS)?), eos: id(EOS)?, pad: id(PAD)?, unk: id(UNK)?, inner })
    }

    /// The id of a token (special tokens included), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner
            .save(path, false)
            .map_err(|e| TokenizerError::File { path: path.display().to_string(), detail: e.to_string() })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Text → ids, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Build(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids → text, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(|e| TokenizerError::Build(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_known_words_and_maps_unknown_to_unk() {
        let tok = TextTokenizer::from_corpus(["the face shows a smile", "[INST] so the state is happy"]).expect("build");
        let ids = tok.encode("The face shows a smile").expect("encode");
        assert_eq!(ids.len(), 5);
        assert_eq!(tok.decode(&ids).expect("decode"), "the face shows a smile");
        let ids = tok.encode("[INST] zebra").expect("encode");
        assert_eq!(ids.len(), 4, "[ INST ] zebra");
        assert_eq!(ids[3], tok.unk);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("tokenizer.json");
        tok.save(&p).expect("save");
        let again = TextTokenizer::from_file(&p).expect("load");
        assert_eq!(again.encode("so the state is happy").expect("e"), tok.encode("so the state is happy").expect("e"));
        assert_eq!((again.bos, again.eos), (tok.bos, tok.eos));
    }
}
