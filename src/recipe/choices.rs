//! The recipe's closed sets as enums: serde names them in recipes (an unknown value gets the loader's
//! "expected one of … did you mean" error with file:line), and each has the methods its users need.

use serde::{Deserialize, Serialize};

/// `name()` and `Display` with the recipe spelling of each variant.
macro_rules! recipe_names {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// The value as a recipe spells it.
            pub fn name(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
            /// Every value, as recipes spell them.
            pub const NAMES: &'static [&'static str] = &[$($s),+];
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// `runtime.dtype`: the dtype of the frozen LLM weights and of the LLM's activations (trainable
/// parameters and the optimiser state stay f32 master copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunDtype {
    /// bf16 on CUDA and on CPUs with native bf16 (AMX-BF16 or AVX512_BF16), else f32.
    Auto,
    #[default]
    F32,
    Bf16,
    /// Trains with dynamic loss scaling.
    F16,
}
recipe_names!(RunDtype { Auto => "auto", F32 => "f32", Bf16 => "bf16", F16 => "f16" });

impl RunDtype {
    /// The dtype on a CUDA device (`on_cuda`) or this machine's CPU (`auto` resolved).
    pub fn resolve(self, on_cuda: bool) -> candle_core::DType {
        use candle_core::DType;
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
            Self::Auto if on_cuda || crate::accel::cpu_has_bf16() => DType::BF16,
            Self::Auto => DType::F32,
        }
    }
}

/// `runtime.inference_precision`: the frozen encoders' matmul arithmetic on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InferencePrecision {
    /// bf16 when the CPU has AMX or AVX512_BF16 and the build has oneDNN, else f32.
    #[default]
    Auto,
    F32,
    Bf16,
}
recipe_names!(InferencePrecision { Auto => "auto", F32 => "f32", Bf16 => "bf16" });

/// `runtime.distributed`: data-parallel training over several processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distributed {
    /// From the launcher: `mpi` under `mpirun` (or `srun` with PMI), `nccl` under `torchrun` / Slurm on
    /// CUDA, else one process.
    #[default]
    Auto,
    None,
    /// Open MPI (CPU clusters; any device).
    Mpi,
    /// NCCL between CUDA devices (build feature `nccl`).
    Nccl,
}
recipe_names!(Distributed { Auto => "auto", None => "none", Mpi => "mpi", Nccl => "nccl" });

/// `model.family`: which architecture family the encoders, connector and token layout follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `emotion_llama` when `model.global_encoder` is set, else `plain` (recipes written before the key).
    #[default]
    Auto,
    /// Trainable per-frame and waveform encoders (the tiny quick-start layout).
    Plain,
    /// Emotion-LLaMA: four frozen encoders (EVA, MAE, VideoMAE, HuBERT), linear projectors, LLaMA-2 prompt.
    EmotionLlama,
    /// VideoLLaMA2.1-AV: SigLIP (frozen) → `stc_connector_v35`, BEATs → `mlp2x_gelu`, video then audio
    /// tokens at `<video>` in the Qwen2 ChatML turn.
    #[serde(rename = "videollama2_av")]
    VideoLlama2Av,
}
recipe_names!(Family { Auto => "auto", Plain => "plain", EmotionLlama => "emotion_llama", VideoLlama2Av => "videollama2_av" });

/// `prompt.turn`: how the user turn lays out the media tokens, the clip's words (cues, transcript) and
/// the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptTurn {
    /// The family's: `videollama2` for `videollama2_av`, else `emotion_llama`.
    #[default]
    Auto,
    /// `<video><VideoHere></video> <feature><FeatureHere></feature> {words} [task] {instruction}`.
    EmotionLlama,
    /// `<VideoHere><FeatureHere>\n{words}{instruction}`.
    Videollama2,
    /// `{words}{instruction}`: no media tokens (`model.use_av = false`), e.g. the zero-shot model.
    Text,
}
recipe_names!(PromptTurn { Auto => "auto", EmotionLlama => "emotion_llama", Videollama2 => "videollama2", Text => "text" });

/// `model.projector`: the encoder-to-LLM projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectorKind {
    /// One `nn.Linear` with bias (Emotion-LLaMA's).
    #[default]
    Linear,
    /// Linear, GELU, linear (LLaVA's `mlp2x_gelu`).
    Mlp,
}
recipe_names!(ProjectorKind { Linear => "linear", Mlp => "mlp" });

/// `prompt.instruction_set`: the default instruction pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstructionSet {
    /// 6 labels, with the `description` task.
    #[default]
    Emollama,
    /// The reference's pools verbatim (the 9-label emotion prompt, the 5 reason prompts).
    EmotionLlama,
}
recipe_names!(InstructionSet { Emollama => "emollama", EmotionLlama => "emotion_llama" });

/// `prompt.eval_layout`: where the multimodal tokens go at evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalLayout {
    /// As trained: visual tokens at `<VideoHere>`, pooled ones at `<FeatureHere>`, one BOS.
    #[default]
    Training,
    /// Emotion-LLaMA's `eval_emotion.py`: every multimodal token at `<VideoHere>`, `<FeatureHere>` left as
    /// text, a literal `<s>` after BOS.
    Reference,
}
recipe_names!(EvalLayout { Training => "training", Reference => "reference" });

/// A stage's `modalities`: which media reach the LLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Video,
    Audio,
}
recipe_names!(Modality { Video => "video", Audio => "audio" });

impl Modality {
    pub const ALL: [Modality; 2] = [Modality::Video, Modality::Audio];
}

/// A task: what the answer is (a stage's `tasks`, `eval.task`, `validation.task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The emotion label.
    Emotion,
    /// The facial expression and tone of voice.
    Description,
    /// The reasoning that ends in the label (Emotion-LLaMA's coarse stage).
    Reason,
    /// Emotion-LLaMA's tag for the fine-grained reasoning (stage 2); its target is the same field as `reason`.
    ReasonV2,
}
recipe_names!(Task { Emotion => "emotion", Description => "description", Reason => "reason", ReasonV2 => "reason_v2" });

/// `validation.metric`: what picks the best checkpoint (higher is better).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationMetric {
    #[default]
    WeightedF1,
    Accuracy,
    MacroF1,
}
recipe_names!(ValidationMetric { WeightedF1 => "weighted_f1", Accuracy => "accuracy", MacroF1 => "macro_f1" });

/// `prompt.transcript`: whether the prompt carries "The person in video says: …", and where the words
/// come from: `true` (the dataset's transcripts), `false` (none) or `"asr"` (speech-to-text of each clip's
/// audio, cached per clip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TranscriptSetting {
    Off,
    #[default]
    Dataset,
    Asr,
}

impl TranscriptSetting {
    /// Whether the prompt carries a transcript line.
    pub fn included(self) -> bool {
        self != Self::Off
    }

    pub fn asr(self) -> bool {
        self == Self::Asr
    }
}

impl Serialize for TranscriptSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_bool(false),
            Self::Dataset => s.serialize_bool(true),
            Self::Asr => s.serialize_str("asr"),
        }
    }
}

impl<'de> Deserialize<'de> for TranscriptSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TranscriptSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true (the dataset's transcripts), false (none) or \"asr\" (speech-to-text)")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v { TranscriptSetting::Dataset } else { TranscriptSetting::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "asr" => Ok(TranscriptSetting::Asr),
                    "true" => Ok(TranscriptSetting::Dataset),
                    "false" => Ok(TranscriptSetting::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        #[derive(Deserialize)]
        struct W<T> {
            v: T,
        }
        fn check<T: for<'de> Deserialize<'de> + std::fmt::Display>(names: &[&str]) {
            for n in names {
                let w: W<T> = toml::from_str(&format!("v = \"{n}\"")).expect("known name");
                assert_eq!(w.v.to_string(), *n);
            }
        }
        check::<RunDtype>(RunDtype::NAMES);
        check::<InferencePrecision>(InferencePrecision::NAMES);
        check::<ProjectorKind>(ProjectorKind::NAMES);
        check::<InstructionSet>(InstructionSet::NAMES);
        check::<EvalLayout>(EvalLayout::NAMES);
        check::<Modality>(Modality::NAMES);
        check::<Task>(Task::NAMES);
        check::<ValidationMetric>(ValidationMetric::NAMES);
        assert!(toml::from_str::<W<RunDtype>>("v = \"fp16\"").is_err());
    }
}
