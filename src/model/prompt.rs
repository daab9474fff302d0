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
    /// Recipe names; `auto` is the LLM manifest's template.
    pub const NAMES: [&'static str; 3] = ["auto", "llama2", "chatml"];

    /// The recipe's choice; `auto` is `manifest`, the LLM manifest's template.
    pub fn chosen(choice: crate::recipe::PromptTemplate, manifest: Template) -> Template {
        match choice {
            crate::recipe::PromptTemplate::Auto => manifest,
            crate::recipe::PromptTemplate::Llama2 => Self::Llama2,
            crate::recipe::PromptTemplate::Chatml => Self::Chatml,
        }
    }

    /// A concrete template (`auto` is resolved by the caller).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama2" => Some(Self::Llama2),
            "chatml" => Some(Self::Chatml),
            _ => None,
        }
    }

    /// One user turn, ready for the assistant's answer. LLaMA-2's `<s>` is the tokenizer's BOS token,
    /// added outside the text.
    pub fn wrap(self, system: Option<&str>, user: &str) -> String {
        match (self, system) {
            (Self::Llama2, None) => format!("[INST] {user} [/INST]"),
            (Self::Llama2, Some(s)) => format!("[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{user} [/INST]"),
            (Self::Chatml, None) => format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
            (Self::Chatml, Some(s)) => format!("<|im_start|>system\n{s}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
        }
    }
}

/// How the user turn lays out the multimodal tokens, the transcript and the instruction: the family's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TurnLayout {
    /// Emotion-LLaMA's `<video><VideoHere></video> <feature><FeatureHere></feature> {transcript} [task] {instruction}`.
    #[default]
    EmotionLlama,
    /// VideoLLaMA2's `<video>\n{question}`: every multimodal token (video, then audio) where `<video>` is,
    /// then the transcript line and the instruction.
    VideoLlama2,
    /// The clip's words and the instruction, no media tokens.
    Text,
}

impl TurnLayout {
    pub fn of(family: crate::recipe::Family) -> Self {
        match family {
            crate::recipe::Family::VideoLlama2Av => Self::VideoLlama2,
            _ => Self::EmotionLlama,
        }
    }

    /// The recipe's `prompt.turn`, `auto` being the family's.
    pub fn chosen(r: &crate::recipe::Recipe) -> Self {
        match r.prompt.turn {
            crate::recipe::PromptTurn::Auto => Self::of(r.model.family()),
            crate::recipe::PromptTurn::EmotionLlama => Self::EmotionLlama,
            crate::recipe::PromptTurn::Videollama2 => Self::VideoLlama2,
            crate::recipe::PromptTurn::Text => Self::Text,
        }
    }
}

/// A template with the model's system prompt (ChatML models have a default one; Emotion-LLaMA's
/// LLaMA-2 prompt has none) and the family's user-turn layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    pub kind: Template,
    pub system: Option<String>,
    pub turn: TurnLayout,
}

impl ChatTemplate {
    pub fn wrap(&self, user: &str) -> String {
        self.kind.wrap(self.system.as_deref(), user)
    }

    /// The wrapped prompt of one sample: its transcript (if given), the task's name and instruction.
    pub fn prompt(&self, transcript: Option<&str>, task: &str, instruction: &str) -> String {
        self.prompt_with(ClipText { cues: None, transcript }, task, instruction)
    }

    /// [`Self::prompt`] with the clip's cue sentences (`[prompt] cues`) before the transcript line.
    pub fn prompt_with(&self, clip: ClipText, task: &str, instruction: &str) -> String {
        match self.turn {
            TurnLayout::EmotionLlama => self.wrap(&emotion_llama_turn(&clip.line(), task, instruction)),
            TurnLayout::VideoLlama2 => self.wrap(&videollama2_turn(&clip.line(), instruction)),
            TurnLayout::Text => self.wrap(&format!("{}{instruction}", clip.line())),
        }
    }

    pub fn with_turn(mut self, turn: TurnLayout) -> Self {
        self.turn = turn;
        self
    }
}

/// What the user turn says about the clip in words: its cues (the face and voice described) and what
/// the person says.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipText<'a> {
    pub cues: Option<&'a str>,
    pub transcript: Option<&'a str>,
}

impl ClipText<'_> {
    /// `{cues} The person in video says: {transcript}. ` (each part only when given).
    pub fn line(&self) -> String {
        let mut s = self.cues.map(|c| format!("{c} ")).unwrap_or_default();
        if let Some(t) = self.transcript {
            s += &format!("The person in video says: {t}. ");
        }
        s
    }
}

/// The Emotion-LLaMA user turn for one sample and task.
pub fn emotion_llama_instruction(transcript: Option<&str>, task: &str, instruction: &str) -> String {
    emotion_llama_turn(&ClipText { cues: None, transcript }.line(), task, instruction)
}

fn emotion_llama_turn(character_line: &str, task: &str, instruction: &str) -> String {
    format!("<video>{VIDEO_PLACEHOLDER}</video> <feature>{FEATURE_PLACEHOLDER}</feature> {character_line} [{task}] {instruction} ")
}

/// A piece of a prompt: text, or a placeholder for multimodal tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Video,
    Feature,
    /// Video and feature tokens together (the reference evaluation layout).
    AllMultimodal,
}

/// The VideoLLaMA2 user turn (`'<video>\n' + question`): the video then the audio tokens at `<video>`,
/// the question being the transcript line (when given) and the instruction.
pub fn videollama2_instruction(transcript: Option<&str>, instruction: &str) -> String {
    videollama2_turn(&ClipText { cues: None, transcript }.line(), instruction)
}

fn videollama2_turn(character_line: &str, instruction: &str) -> String {
    format!("{VIDEO_PLACEHOLDER}{FEATURE_PLACEHOLDER}\n{character_line}{instruction}")
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
/// whitespace collapsed, at most 200 words.
pub fn normalise_answer(text: &str) -> String {
    let replaced: String = text
        .to_lowercase()
        .chars()
        .map(|c| if ".!\"()*#:;~".contains(c) { ' ' } else { c })
        .collect();
    replaced.split_whitespace().take(200).collect::<Vec<_>>().join(" ")
}

/// Splits a prompt in Emotion-LLaMA's evaluation layout (`get_context_emb`): only at `<VideoHere>`, where
/// every multimodal token goes; `<FeatureHere>` stays in the text.
pub fn split_reference_eval(prompt: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut parts = prompt.split(VIDEO_PLACEHOLDER).peekable();
    while let Some(p) = parts.next() {
        if !p.is_empty() {
            out.push(Segment::Text(p.to_string()));
        }
        if parts.peek().is_some() {
            out.push(Segment::AllMultimodal);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_reference_prompt_string() {
        let instr = "Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise, fear, contempt, doubt.";
        let p = Template::Llama2.wrap(None, &emotion_llama_instruction(Some("Oh my."), "emotion", instr));
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
    fn chatml_has_the_reference_system_turn() {
        let t = ChatTemplate { kind: Template::Chatml, system: Some("You are a helpful assistant.".into()), turn: TurnLayout::EmotionLlama };
        assert_eq!(
            t.wrap("Hi"),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(Template::Llama2.wrap(Some("Be brief."), "Hi"), "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]");
    }

    #[test]
    fn reference_eval_layout_puts_everything_at_video_here() {
        let p = Template::Llama2.wrap(None, &emotion_llama_instruction(None, "emotion", "Which?"));
        let segs = split_reference_eval(&format!("<s>{p}"));
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0], Segment::Text("<s>[INST] <video>".into()));
        assert_eq!(segs[1], Segment::AllMultimodal);
        assert_eq!(segs[2], Segment::Text("</video> <feature><FeatureHere></feature>  [emotion] Which?  [/INST]".into()));
    }

    #[test]
    fn normalises_answers_like_blip_caption() {
        assert_eq!(normalise_answer("Oh my! She is  Happy."), "oh my she is happy");
        assert_eq!(normalise_answer(&"word ".repeat(250)).split(' ').count(), 200);
    }

    #[test]
    fn videollama2_turn_puts_every_multimodal_token_at_video_in_the_qwen2_chat_turn() {
        let t = ChatTemplate { kind: Template::Chatml, system: Some("You are a helpful assistant.".into()), turn: TurnLayout::VideoLlama2 };
        let p = t.prompt(Some("I won"), "emotion", "Which emotion?");
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<VideoHere><FeatureHere>\nThe person in video says: I won. Which emotion?<|im_end|>\n<|im_start|>assistant\n"
        );
        let segs = split_placeholders(&p);
        // Video then audio tokens back to back where VideoLLaMA2's `<video>` is.
        assert!(matches!(&segs[..3], [Segment::Text(_), Segment::Video, Segment::Feature]));
        assert_eq!(TurnLayout::of(crate::recipe::Family::VideoLlama2Av), TurnLayout::VideoLlama2);
        assert_eq!(TurnLayout::of(crate::recipe::Family::Auto), TurnLayout::EmotionLlama);
    }
}
