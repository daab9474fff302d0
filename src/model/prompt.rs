//! Prompt assembly in Emotion-LLaMA's layout, and splitting at the multimodal placeholders.
//!
//! The instruction string reproduces `FeatureFaceDataset.__getitem__`:
//! `<video><VideoHere></video> <feature><FeatureHere></feature> {character_line} [{task}] {instruction} `
//! with `character_line = "The person in video says: {transcript}. "`, wrapped by the chat template.
//! `<video>`, `</video>`, `<feature>`, `</feature>` are plain text; the two `...Here` markers are where
//! projected visual tokens (`<VideoHere>`) and pooled feature tokens (`<FeatureHere>`) are spliced.

use serde::{Deserialize, Serialize};

pub const VIDEO_PLACEHOLDER: &str = "<VideoHere>";
pub const FEATURE_PLACEHOLDER: &str = "<FeatureHere>";

/// Chat wrapping of one user turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// `[INST] {} [/INST]` (LLaMA-2-chat, Emotion-LLaMA).
    Llama2,
    /// `<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n` (Qwen2, SmolLM2).
    Chatml,
}

impl Template {
    pub const NAMES: [&'static str; 2] = ["llama2", "chatml"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama2" => Some(Self::Llama2),
            "chatml" => Some(Self::Chatml),
            _ => None,
        }
    }

    pub fn wrap(self, user: &str) -> String {
        match self {
            Self::Llama2 => format!("[INST] {user} [/INST]"),
            Self::Chatml => format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
        }
    }
}

/// The Emotion-LLaMA user turn for one sample and task.
pub fn emotion_llama_instruction(transcript: Option<&str>, task: &str, instruction: &str) -> String {
    let character_line = match transcript {
        Some(t) => format!("The person in video says: {t}. "),
        None => String::new(),
    };
    format!("<video>{VIDEO_PLACEHOLDER}</video> <feature>{FEATURE_PLACEHOLDER}</feature> {character_line} [{task}] {instruction} ")
}

/// A piece of a prompt: text, or a placeholder for multimodal tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Video,
    Feature,
}

/// Splits a prompt at the placeholders, keeping their order.
pub fn split_placeholders(prompt: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = prompt;
    loop {
        let next = [(VIDEO_PLACEHOLDER, Segment::Video), (FEATURE_PLACEHOLDER, Segment::Feature)]
            .into_iter()
            .filter_map(|(p, seg)| rest.find(p).map(|i| (i, p.len(), seg)))
            .min_by_key(|(i, _, _)| *i);
        match next {
            Some((i, len, seg)) => {
                if i > 0 {
                    out.push(Segment::Text(rest[..i].to_string()));
                }
                out.push(seg);
                rest = &rest[i + len..];
            }
            None => {
                if !rest.is_empty() {
                    out.push(Segment::Text(rest.to_string()));
                }
                return out;
            }
        }
    }
}

/// Answer text as Emotion-LLaMA's `blip_caption` processor leaves it: lower case, `.!"()*#:;~` as spaces,
/// whitespace collapsed.
pub fn normalise_answer(text: &str) -> String {
    let replaced: String = text
        .to_lowercase()
        .chars()
        .map(|c| if ".!\"()*#:;~".contains(c) { ' ' } else { c })
        .collect();
    replaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_reference_prompt_string() {
        let instr = "Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt.";
        let p = Template::Llama2.wrap(&emotion_llama_instruction(Some("Oh my."), "emotion", instr));
        assert_eq!(
            p,
            "[INST] <video><VideoHere></video> <feature><FeatureHere></feature> The person in video says: Oh my..  [emotion] Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt.  [/INST]"
        );
        let segs = split_placeholders(&p);
        assert_eq!(segs.len(), 5);
        assert_eq!(segs[0], Segment::Text("[INST] <video>".into()));
        assert_eq!(segs[1], Segment::Video);
        assert_eq!(segs[2], Segment::Text("</video> <feature>".into()));
        assert_eq!(segs[3], Segment::Feature);
    }

    #[test]
    fn normalises_answers_like_blip_caption() {
        assert_eq!(normalise_answer("Oh my! She is  Happy."), "oh my she is happy");
    }
}
