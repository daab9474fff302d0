//! From samples to model inputs: the task's prompt and answer, and media tensors.

use candle_core::{Device, Result, Tensor};

use crate::data::Sample;
use crate::recipe::Task;
use crate::data::loader::DecodedMedia;
use crate::media::PixelView;
use crate::model::multimodal::{MediaBatch, TokenizedPrompt};
use crate::model::prompt::{self, ChatTemplate};
use crate::model::tokenizer::{TextTokenizer, TokenizerError};

/// The answer text of `task` for `sample`, if the sample has it.
pub fn answer_for(sample: &Sample, task: Task) -> Option<String> {
    let raw = match task {
        Task::Emotion => sample.label.clone(),
        Task::Description => sample.description.clone(),
        Task::Reason | Task::ReasonV2 => sample.reasoning.clone(),
    }?;
    Some(prompt::normalise_answer(&raw))
}

/// Builds the full prompt string for one sample and task: its cue sentences when the run computed them
/// (`[prompt] cues`), its transcript when `with_transcript`.
pub fn prompt_text(sample: &Sample, task: Task, instruction: &str, template: &ChatTemplate, with_transcript: bool) -> String {
    let transcript = if with_transcript { sample.transcript.as_deref() } else { None };
    template.prompt_with(prompt::ClipText { cues: sample.cues.as_deref(), transcript }, task.name(), instruction)
}

/// The content-free prompt of contextual calibration (`eval.calibrate`): as [`prompt_text`] with the clip's
/// words (its cues, its transcript, as the recipe includes them) replaced by "N/A".
pub fn content_free_text(r: &crate::recipe::Recipe, task: Task, instruction: &str, template: &ChatTemplate) -> String {
    let na = crate::model::class_scores::CONTENT_FREE;
    // The cue sentences keep their frame ("Face: ... Voice: ..."), with nothing in it.
    let cues = format!("Face: {na}. Voice: {na}.");
    let clip = prompt::ClipText { cues: r.prompt.cues.then_some(cues.as_str()), transcript: r.prompt.transcript.included().then_some(na) };
    template.prompt_with(clip, task.name(), instruction)
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

/// An evaluation prompt in the recipe's `prompt.eval_layout` (as training lays it out, or the reference's).
pub fn tokenize_eval(tok: &TextTokenizer, prompt: &str, layout: crate::recipe::EvalLayout) -> std::result::Result<TokenizedPrompt, TokenizerError> {
    match layout {
        crate::recipe::EvalLayout::Reference => tokenize_reference_eval(tok, prompt),
        crate::recipe::EvalLayout::Training => tokenize(tok, prompt, None),
    }
}

/// Stacks decoded media into tensors: each view (batch, n, 3, h, w), the global one (batch, 3, h, w),
/// normalised by its encoder's transform; audio (batch, samples). `views` are the decoder's, in order.
pub fn media_batch(items: &[&DecodedMedia], views: &[PixelView], device: &Device) -> Result<MediaBatch> {
    let b = items.len();
    let n = items.first().map(|m| m.num_frames).unwrap_or(0);
    if let Some(m) = items.iter().find(|m| m.num_frames != n) {
        candle_core::bail!("samples in a batch have {} and {n} frames", m.num_frames);
    }
    let mut pixels = Vec::with_capacity(views.len());
    for (k, v) in views.iter().enumerate() {
        let t = &v.transform;
        let frames = if v.role.single_frame() { 1 } else { n };
        let mut data = Vec::with_capacity(b * frames * t.frame_bytes());
        for m in items {
            let px = m.pixels.get(k).map(Vec::as_slice).unwrap_or_default();
            if px.len() != frames * t.frame_bytes() {
                candle_core::bail!("the {} view has {} bytes, expected {frames} frames of {}x{}x3", v.role.name(), px.len(), t.height, t.width);
            }
            t.normalise_into(&mut data, px);
        }
        let x = if v.role.single_frame() {
            Tensor::from_vec(data, (b, 3, t.height, t.width), device)?
        } else {
            Tensor::from_vec(data, (b, n, 3, t.height, t.width), device)?
        };
        pixels.push((v.role, x));
    }
    let audio_len = items.first().map(|m| m.audio.len()).unwrap_or(0);
    let mut audio = Vec::with_capacity(b * audio_len);
    for m in items {
        audio.extend_from_slice(&m.audio);
    }
    let audio_lengths = items.iter().map(|m| m.audio_valid).collect();
    Ok(MediaBatch { pixels, audio: Tensor::from_vec(audio, (b, audio_len), device)?, audio_lengths })
}
