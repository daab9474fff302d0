//! Tokens per sample, without a tokenizer.
//!
//! Exact: BOS and the multimodal tokens (from the model's layout, e.g. Emotion-LLaMA's 256 merged EVA
//! patches at `<VideoHere>` and [local, temporal, audio, CLS] at `<FeatureHere>`).
//!
//! Estimated:
//! - Known text (chat template, Emotion-LLaMA's instruction scaffold, the instructions, label words) is
//!   split as the word-level tokenizer splits it (`\w+|[^\w\s]+`). With a word-level vocabulary that
//!   count is exact. With a pretrained subword tokenizer (LLaMA's SentencePiece) a word counts one token
//!   per [`SUBWORD_CHARS`] characters begun and each punctuation character one token: common English
//!   words are single pieces there, markup such as `[/INST]` splits into its symbols.
//! - Unknown text is budgeted in words at 4 tokens per 3 words (the usual English ratio of LLaMA-family
//!   tokenizers): the transcript gets an allowance of [`TRANSCRIPT_WORDS`] words (nothing in the code
//!   bounds it), a free-text answer [`ANSWER_WORDS`] words (the cap `normalise_answer` applies, as the
//!   reference's `blip_caption`).

use serde::Serialize;

use super::model::LlmInfo;
use crate::model::prompt::{self, Segment, Template};

/// Characters per subword token for a known word (see the module doc).
pub const SUBWORD_CHARS: usize = 10;
/// Words allowed for a transcript.
pub const TRANSCRIPT_WORDS: usize = 40;
/// Words of a free-text answer at most (`normalise_answer` keeps 200).
pub const ANSWER_WORDS: usize = 200;

/// One task's sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskTokens {
    pub task: String,
    pub bos: usize,
    /// Multimodal tokens at `<VideoHere>` (exact).
    pub video_here: usize,
    /// Multimodal tokens at `<FeatureHere>` (exact).
    pub feature_here: usize,
    /// Template, instruction scaffold and the longest instruction of the task's pool (estimate).
    pub prompt_text: usize,
    /// The transcript line: its fixed words plus the allowance (estimate); 0 without transcripts.
    pub transcript: usize,
    /// Answer budget including EOS (estimate): the longest label for `emotion`, else [`ANSWER_WORDS`]
    /// words; for evaluation, `max_new_tokens`.
    pub answer: usize,
    pub total: usize,
}

/// What a task's sequence is made of.
pub struct TaskInput<'a> {
    pub task: &'a str,
    pub instructions: &'a [String],
    pub transcript: bool,
    pub labels: &'a [String],
    /// (`<VideoHere>`, `<FeatureHere>`) tokens.
    pub multimodal: (usize, usize),
    /// Generation budget instead of the training answer (evaluation).
    pub generate: Option<usize>,
    /// Emotion-LLaMA's evaluation layout: a literal `<s>` before the prompt, `<FeatureHere>` as text.
    pub reference_layout: bool,
}

/// Estimated tokens of known text.
pub fn text_tokens(text: &str, word_level: bool) -> usize {
    crate::model::tokenizer::words(text)
        .iter()
        .map(|piece| {
            let chars = piece.chars().count();
            let is_word = piece.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_');
            match (word_level, is_word) {
                (true, _) => 1,
                (false, true) => chars.div_ceil(SUBWORD_CHARS),
                (false, false) => chars,
            }
        })
        .sum()
}

/// Tokens budgeted for `words` words of unknown text.
pub fn word_budget(words: usize) -> usize {
    (words * 4).div_ceil(3)
}

/// The sequence of one sample of `input.task`.
pub fn task_tokens(llm: &LlmInfo, input: &TaskInput) -> TaskTokens {
    let word_level = llm.word_level;
    let bos = usize::from(word_level || llm.template.kind == Template::Llama2);
    let empty = [String::new()];
    let pool = if input.instructions.is_empty() { &empty[..] } else { input.instructions };
    let prompt_text = pool
        .iter()
        .map(|instruction| {
            let p = llm.template.prompt(None, input.task, instruction);
            let segments = if input.reference_layout { prompt::split_reference_eval(&format!("<s>{p}")) } else { prompt::split_placeholders(&p) };
            segments.iter().map(|s| if let Segment::Text(t) = s { text_tokens(t, word_level) } else { 0 }).sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    let transcript = if input.transcript { text_tokens("The person in video says: .", word_level) + word_budget(TRANSCRIPT_WORDS) } else { 0 };
    let answer = match input.generate {
        Some(n) => n,
        None if input.task == "emotion" => 1 + input.labels.iter().map(|l| text_tokens(&prompt::normalise_answer(l), word_level)).max().unwrap_or(1),
        None => 1 + word_budget(ANSWER_WORDS),
    };
    let (video_here, feature_here) = input.multimodal;
    TaskTokens {
        task: input.task.to_string(),
        bos,
        video_here,
        feature_here,
        prompt_text,
        transcript,
        answer,
        total: bos + video_here + feature_here + prompt_text + transcript + answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_text_counts_words_and_symbols() {
        // `[` `inst` `]` `<` `video` `></` `video` `>`: 8 word-level pieces; subword 10 (`></` is three symbols).
        assert_eq!(text_tokens("[INST] <video></video>", true), 8);
        assert_eq!(text_tokens("[INST] <video></video>", false), 10);
        assert_eq!(text_tokens("representations", false), 2);
        assert_eq!(word_budget(3), 4);
    }
}
