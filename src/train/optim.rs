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

pub struct GroupedAdamW {
    decay: AdamW,
    no_decay: AdamW,
    vars: Vec<Var>,
}

impl GroupedAdamW {
    pub fn new(vars: &[(String, Var)], lr: f64, weight_decay: f64) -> Result<Self> {
        let params = |wd| ParamsAdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd };
        let (d, nd): (Vec<_>, Vec<_>) = vars.iter().partition(|(n, v)| decays(n, v));
        Ok(Self {
            decay: AdamW::new(d.into_iter().map(|(_, v)| v.clone()).collect(), params(weight_decay))?,
            no_decay: AdamW::new(nd.into_iter().map(|(_, v)| v.clone()).collect(), params(0.0))?,
            vars: vars.iter().map(|(_, v)| v.clone()).collect(),
        })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.decay.set_learning_rate(lr);
        self.no_decay.set_learning_rate(lr);
    }

    /// Clips the global gradient norm to `max_norm` (0 = no clipping), steps, and returns the norm before clipping.
    pub fn step(&mut self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let mut sq = 0.0f64;
        for v in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for v in &self.vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g * scale)?);
                }
            }
        }
        self.decay.step(grads)?;
        self.no_decay.step(grads)?;
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
