//! From samples to model inputs: the task's prompt and answer, and media tensors.

use candle_core::{Device, Result, Tensor};

use crate::data::Sample;
use crate::data::loader::DecodedMedia;
use crate::model::multimodal::{MediaBatch, TokenizedPrompt};
use crate::model::prompt::{self, ChatTemplate};
use crate::model::tokenizer::{TextTokenizer, TokenizerError};

/// The answer text of `task` for `sample`, if the sample has it.
pub fn answer_for(sample: &Sample, task: &str) -> Option<String> {
    let raw = match task {
        "emotion" => sample.label.clone(),
        "description" => sample.description.clone(),
        "reason" | "reason_v2" => sample.reasoning.clone(),
        _ => None,
    }?;
    Some(prompt::normalise_answer(&raw))
}

/// Builds the full prompt string for one sample and task.
pub fn prompt_text(sample: &Sample, task: &str, instruction: &str, template: &ChatTemplate, with_transcript: bool) -> String {
    let transcript = if with_transcript { sample.transcript.as_deref() } else { None };
    template.wrap(&prompt::emotion_llama_instruction(transcript, task, instruction))
}

pub fn tokenize(tok: &TextTokenizer, prompt: &str, answer: Option<&str>) -> std::result::Result<TokenizedPrompt, TokenizerError> {
    let answer_ids = match answer {
        Some(a) => tok.encode(a)?,
        None => Vec::new(),
    };
    TokenizedPrompt::from_segments(&prompt::split_placeholders(prompt), answer_ids, |t| tok.encode(t))
}

/// An evaluation prompt in Emotion-LLaMA's `eval_emotion.py` layout: `<s>` as text before the template
/// (a second BOS after the model's own), all multimodal tokens at `<VideoHere>`.
pub fn tokenize_reference_eval(tok: &TextTokenizer, prompt: &str) -> std::result::Result<TokenizedPrompt, TokenizerError> {
    let text = format!("<s>{prompt}");
    TokenizedPrompt::from_segments(&prompt::split_reference_eval(&text), Vec::new(), |t| tok.encode(t))
}

/// Pixel normalisation and audio length shared by a batch.
#[derive(Debug, Clone)]
pub struct MediaLayout {
    pub width: usize,
    pub height: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Stacks decoded media into tensors: frames (batch, n, 3, h, w) normalised, audio (batch, samples).
pub fn media_batch(items: &[&DecodedMedia], layout: &MediaLayout, device: &Device) -> Result<MediaBatch> {
    let n = items.first().map(|m| m.num_frames).unwrap_or(0);
    let (h, w) = (layout.height, layout.width);
    let mut frames = Vec::with_capacity(items.len() * n * 3 * h * w);
    for m in items {
        if m.num_frames != n {
            candle_core::bail!("samples in a batch have {} and {n} frames", m.num_frames);
        }
        for f in 0..n {
            normalise_into(&mut frames, &m.frames[f * h * w * 3..(f + 1) * h * w * 3], h * w, layout);
        }
    }
    // The front end's global frames, when every sample has one.
    let global = match items.iter().map(|m| m.global.as_deref()).collect::<Option<Vec<&[u8]>>>() {
        Some(gs) if !gs.is_empty() => {
            let mut g = Vec::with_capacity(gs.len() * 3 * h * w);
            for img in gs {
                if img.len() != h * w * 3 {
                    candle_core::bail!("a global frame has {} bytes, expected {h}x{w}x3", img.len());
                }
                normalise_into(&mut g, img, h * w, layout);
            }
            Some(Tensor::from_vec(g, (items.len(), 3, h, w), device)?)
        }
        _ => None,
    };
    let audio_len = items.first().map(|m| m.audio.len()).unwrap_or(0);
    let mut audio = Vec::with_capacity(items.len() * audio_len);
    for m in items {
        audio.extend_from_slice(&m.audio);
    }
    Ok(MediaBatch {
        frames: Tensor::from_vec(frames, (items.len(), n, 3, h, w), device)?,
        global,
        audio: Tensor::from_vec(audio, (items.len(), audio_len), device)?,
    })
}

/// HWC bytes → CHW floats, normalised per channel, appended to `out`.
fn normalise_into(out: &mut Vec<f32>, hwc: &[u8], pixels: usize, layout: &MediaLayout) {
    for c in 0..3 {
        let (mean, std) = (layout.mean[c], layout.std[c]);
        out.extend((0..pixels).map(|p| (hwc[p * 3 + c] as f32 / 255.0 - mean) / std));
    }
}
