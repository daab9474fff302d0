//! Parameters grouped into components (by name prefix), and what each stage trains of them.
//!
//! A parameter trains in a stage when the stage's `trainable` globs match its name (the trainer's
//! rule, [`crate::train::optim::glob_match`]) and it can train at all: pretrained LLM weights are
//! loaded outside the optimiser, and Emotion-LLaMA's encoders are frozen by construction (their outputs
//! are detached), whatever the globs say.

use serde::Serialize;

use super::model::ModelShapes;
use crate::model::shapes::numel;
use crate::recipe::Stage;
use crate::train::optim::glob_match;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Llm,
    Lora,
    Encoder,
    Projector,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorShape {
    /// The name under the component, e.g. `weight`, `0.bias`.
    pub name: String,
    pub shape: Vec<usize>,
}

/// One group of parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    /// The parameter-name prefix: `llm`, `llm.lora` (every `*.lora_*`), `encoder.global`,
    /// `encoder.global.ln_vision`, `projector.llama_proj`, ...
    pub name: String,
    /// What it is, for people.
    pub what: String,
    pub kind: ComponentKind,
    pub params: u64,
    pub tensors: usize,
    /// Trainable parameters of this component in each stage, in recipe order.
    pub trainable: Vec<u64>,
    /// Why no stage trains it, when that holds by construction.
    pub frozen_because: Option<String>,
    /// Tensor shapes, for projectors (other components have too many tensors to list).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shapes: Vec<TensorShape>,
}

/// The component a parameter name belongs to.
fn group_of(name: &str) -> (String, ComponentKind) {
    let first_two = |rest: &str| rest.split('.').next().unwrap_or_default().to_string();
    if name.starts_with("llm.") {
        if name.contains(".lora_") { ("llm.lora".into(), ComponentKind::Lora) } else { ("llm".into(), ComponentKind::Llm) }
    } else if let Some(rest) = name.strip_prefix("encoder.") {
        let view = first_two(rest);
        // MiniGPT-v2's `ln_vision` is its own module beside EVA (reference §1.2).
        if rest[view.len()..].starts_with(".ln_vision.") {
            (format!("encoder.{view}.ln_vision"), ComponentKind::Encoder)
        } else {
            (format!("encoder.{view}"), ComponentKind::Encoder)
        }
    } else if let Some(rest) = name.strip_prefix("projector.") {
        (format!("projector.{}", first_two(rest)), ComponentKind::Projector)
    } else {
        (first_two(name), ComponentKind::Other)
    }
}

/// Groups `shapes.params` in first-seen order and counts what each stage trains.
pub fn components(shapes: &ModelShapes, stages: &[Stage]) -> Vec<Component> {
    let mut out: Vec<Component> = Vec::new();
    for (name, dims) in &shapes.params {
        let (group, kind) = group_of(name);
        let idx = match out.iter().position(|c| c.name == group) {
            Some(i) => i,
            None => {
                let frozen_because = frozen_because(shapes, &group, kind);
                out.push(Component {
                    what: describe(shapes, &group, kind),
                    name: group.clone(),
                    kind,
                    params: 0,
                    tensors: 0,
                    trainable: vec![0; stages.len()],
                    frozen_because,
                    shapes: Vec::new(),
                });
                out.len() - 1
            }
        };
        let c = &mut out[idx];
        let n = numel(dims) as u64;
        c.params += n;
        c.tensors += 1;
        if kind == ComponentKind::Projector {
            c.shapes.push(TensorShape { name: name[group.len() + 1..].to_string(), shape: dims.clone() });
        }
        if c.frozen_because.is_none() {
            for (k, stage) in stages.iter().enumerate() {
                if stage.trainable.iter().any(|g| glob_match(g, name)) {
                    c.trainable[k] += n;
                }
            }
        }
    }
    for c in out.iter_mut().filter(|c| c.kind == ComponentKind::Projector) {
        c.what = projector_what(&c.shapes);
    }
    out
}

fn frozen_because(shapes: &ModelShapes, group: &str, kind: ComponentKind) -> Option<String> {
    match kind {
        ComponentKind::Llm if shapes.llm.pretrained => Some("pretrained weights, loaded outside the optimiser".into()),
        ComponentKind::Encoder => {
            let enc = shapes.encoders.iter().find(|e| group == e.prefix || group.starts_with(&format!("{}.", e.prefix)))?;
            enc.frozen.then(|| "frozen encoder: its outputs are detached".into())
        }
        _ => None,
    }
}

fn describe(shapes: &ModelShapes, group: &str, kind: ComponentKind) -> String {
    let llm = &shapes.llm;
    match kind {
        ComponentKind::Llm => {
            let c = &llm.config;
            let origin = if llm.pretrained { "pretrained" } else { "trained from scratch" };
            format!("{} ({}): {} layers x {}, MLP {}, {} heads, vocab {}; {origin}", llm.name, c.model_type, c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads, c.vocab_size)
        }
        ComponentKind::Lora => match &llm.lora {
            Some(l) => format!("LoRA r={} alpha={} (scaling {}) on {}", l.r, l.lora_alpha, l.scaling(), l.target_modules.join(", ")),
            None => "LoRA".into(),
        },
        ComponentKind::Encoder if group.ends_with(".ln_vision") => "ln_vision: MiniGPT-v2's LayerNorm after EVA".into(),
        ComponentKind::Encoder => match shapes.encoders.iter().find(|e| e.prefix == group) {
            Some(e) => format!("{} `{}`, width {}", e.architecture, e.plugin, e.hidden_size),
            None => "encoder".into(),
        },
        ComponentKind::Projector => String::new(),
        ComponentKind::Other => "other parameters".into(),
    }
}

/// `linear 5632 -> 4096`, `mlp 1024 -> 4096 -> 4096` from the weight shapes (`[out, in]`).
fn projector_what(shapes: &[TensorShape]) -> String {
    // VideoLLaMA2's STC connector: RegNet stages `s1`/`s2`, the 3-D `sampler`, the `readout` MLP.
    if let Some(first) = shapes.iter().find(|s| s.name == "s1.b1.conv1.conv.weight") {
        let out = shapes.iter().find(|s| s.name.starts_with("readout.") && s.name.ends_with("weight") && s.shape.len() == 2).map_or(first.shape[0], |s| s.shape[0]);
        return format!("stc_connector_v35 {} -> {out}", first.shape[1]);
    }
    let weights: Vec<&TensorShape> = shapes.iter().filter(|s| s.name.ends_with("weight") && s.shape.len() == 2).collect();
    match weights.as_slice() {
        [w] => format!("linear {} -> {}", w.shape[1], w.shape[0]),
        [a, b] => format!("mlp {} -> {} -> {}", a.shape[1], a.shape[0], b.shape[0]),
        _ => "projector".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_group_by_prefix() {
        assert_eq!(group_of("llm.model.layers.0.self_attn.q_proj.weight"), ("llm".into(), ComponentKind::Llm));
        assert_eq!(group_of("llm.model.layers.0.self_attn.q_proj.lora_A.weight"), ("llm.lora".into(), ComponentKind::Lora));
        assert_eq!(group_of("encoder.global.blocks.0.attn.qkv.weight"), ("encoder.global".into(), ComponentKind::Encoder));
        assert_eq!(group_of("encoder.global.ln_vision.weight"), ("encoder.global.ln_vision".into(), ComponentKind::Encoder));
        assert_eq!(group_of("projector.feats_llama_proj1.bias"), ("projector.feats_llama_proj1".into(), ComponentKind::Projector));
    }
}
