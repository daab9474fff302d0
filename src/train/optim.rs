//! AdamW with two parameter groups (decay / no decay), trainable selection by glob, gradient clipping.

use candle_core::backprop::GradStore;
use candle_core::{Result, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

/// `*` matches any run of characters (dots included); everything else is literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(pos) = rest.find(part) else { return false };
            rest = &rest[pos + part.len()..];
        }
    }
    true
}

/// Emotion-LLaMA's rule (from MiniGPT-4's `get_optimizer_params`): matrices decay; biases, norms and
/// other 1-D parameters do not.
pub fn decays(name: &str, var: &Var) -> bool {
    var.rank() >= 2 && !name.ends_with(".bias") && !name.contains("norm")
}

/// The named trainable variables of `varmap` matched by any of `globs`, sorted by name.
pub fn select(varmap: &VarMap, globs: &[String]) -> Vec<(String, Var)> {
    let data = match varmap.data().lock() {
        Ok(d) => d,
        Err(p) => p.into_inner(),
    };
    let mut out: Vec<(String, Var)> =
        data.iter().filter(|(n, _)| globs.iter().any(|g| glob_match(g, n))).map(|(n, v)| (n.clone(), v.clone())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Gradient norm before clipping, and per module group.
pub type GradNorms = (f64, std::collections::BTreeMap<String, f64>);

pub struct GroupedAdamW {
    /// One AdamW per (weight decay on/off, learning-rate scale) group, with its scale.
    optimizers: Vec<(AdamW, f64)>,
    vars: Vec<Var>,
    /// Module group of each var (`encoder.video`, `projector.audio`, `llm`, ...), for per-group norms.
    groups: Vec<String>,
}

/// The module group a parameter belongs to: its first two name components (`llm` alone for the LLM).
pub fn group_of(name: &str) -> String {
    let mut parts = name.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(first), Some(second)) if first != "llm" => format!("{first}.{second}"),
        (first, _) => first.unwrap_or(name).to_string(),
    }
}

impl GroupedAdamW {
    /// `lr_scale`: glob → factor on the learning rate (the first matching glob in sorted order wins;
    /// unmatched parameters use 1).
    pub fn new(vars: &[(String, Var)], lr: f64, weight_decay: f64, lr_scale: &std::collections::BTreeMap<String, f64>) -> Result<Self> {
        let scale_of = |name: &str| lr_scale.iter().find(|(g, _)| glob_match(g, name)).map(|(_, f)| *f).unwrap_or(1.0);
        let mut groups: Vec<((bool, u64), Vec<Var>)> = Vec::new();
        for (name, var) in vars {
            let key = (decays(name, var), scale_of(name).to_bits());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, vs)) => vs.push(var.clone()),
                None => groups.push((key, vec![var.clone()])),
            }
        }
        let mut optimizers = Vec::with_capacity(groups.len());
        for ((decay, scale_bits), vs) in groups {
            let scale = f64::from_bits(scale_bits);
            let params = ParamsAdamW { lr: lr * scale, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: if decay { weight_decay } else { 0.0 } };
            optimizers.push((AdamW::new(vs, params)?, scale));
        }
        Ok(Self {
            optimizers,
            vars: vars.iter().map(|(_, v)| v.clone()).collect(),
            groups: vars.iter().map(|(n, _)| group_of(n)).collect(),
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        for (opt, scale) in &mut self.optimizers {
            opt.set_learning_rate(lr * *scale);
        }
    }

    /// Clips the global gradient norm to `max_norm` (0 = no clipping), steps, and returns the norm before
    /// clipping with the per-group norms.
    pub fn step(&mut self, grads: &mut GradStore, max_norm: f64) -> Result<GradNorms> {
        let mut sq = 0.0f64;
        let mut per_group = std::collections::BTreeMap::<String, f64>::new();
        for (v, group) in self.vars.iter().zip(&self.groups) {
            if let Some(g) = grads.get(v.as_tensor()) {
                let s = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                sq += s;
                *per_group.entry(group.clone()).or_default() += s;
            }
        }
        per_group.values_mut().for_each(|v| *v = v.sqrt());
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for v in &self.vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g * scale)?);
                }
            }
        }
        for (opt, _) in &mut self.optimizers {
            opt.step(grads)?;
        }
        Ok((norm, per_group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_module_prefixes() {
        assert_eq!(group_of("llm.model.layers.0.mlp.up_proj.weight"), "llm");
        assert_eq!(group_of("encoder.video.stem.weight"), "encoder.video");
        assert_eq!(group_of("projector.audio.bias"), "projector.audio");
    }

    #[test]
    fn globs_match_dotted_names() {
        assert!(glob_match("*", "llm.model.norm.weight"));
        assert!(glob_match("projector.*", "projector.audio.weight"));
        assert!(!glob_match("projector.*", "llm.projector.weight"));
        assert!(glob_match("llm.*.lora_*", "llm.model.layers.0.q_proj.lora_A"));
        assert!(glob_match("encoder.audio.*", "encoder.audio.blocks.0.norm1.bias"));
        assert!(!glob_match("encoder.audio.*", "encoder.video.cls_token"));
    }
}
