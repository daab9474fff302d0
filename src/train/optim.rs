//! AdamW with per-parameter weight decay (the reference rule) and checkpointable state, trainable
//! selection by glob, gradient clipping, loss scaling.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarMap;

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
pub type GradNorms = (f64, BTreeMap<String, f64>);

/// One trainable parameter with its AdamW moments.
struct Slot {
    name: String,
    var: Var,
    /// First and second moment estimates (f32, the parameter's shape).
    m: Tensor,
    v: Tensor,
    weight_decay: f64,
    lr_scale: f64,
    /// Module group (`encoder.video`, `projector.audio`, `llm`, ...), for per-group norms.
    group: String,
}

/// AdamW (decoupled weight decay, bias-corrected moments: PyTorch's and candle's update) with per-parameter
/// weight decay by the reference rule and learning-rate scales. Its moments and step count are plain
/// tensors and a number, so a checkpoint holds them and a resumed run continues bit for bit.
pub struct GroupedAdamW {
    slots: Vec<Slot>,
    lr: f64,
    /// Optimiser steps taken (the bias-correction exponent).
    t: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
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
        let slots = vars
            .iter()
            .map(|(name, var)| {
                let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
                Ok(Slot {
                    name: name.clone(),
                    var: var.clone(),
                    m: zeros()?,
                    v: zeros()?,
                    weight_decay: if decays(name, var) { weight_decay } else { 0.0 },
                    lr_scale: scale_of(name),
                    group: group_of(name),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { slots, lr, t: 0, beta1: 0.9, beta2: 0.999, eps: 1e-8 })
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Optimiser steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    /// Clips the global gradient norm to `max_norm` (0 = no clipping), steps, and returns the norm before
    /// clipping with the per-group norms.
    pub fn step(&mut self, grads: &GradStore, max_norm: f64) -> Result<GradNorms> {
        let mut sq = 0.0f64;
        let mut per_group = BTreeMap::<String, f64>::new();
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                let s = g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
                sq += s;
                *per_group.entry(slot.group.clone()).or_default() += s;
            }
        }
        per_group.values_mut().for_each(|v| *v = v.sqrt());
        let norm = sq.sqrt();
        let clip = if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 };
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let (scale_m, scale_v) = (1.0 / (1.0 - b1.powi(self.t as i32)), 1.0 / (1.0 - b2.powi(self.t as i32)));
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let g = if clip != 1.0 { (g.to_dtype(DType::F32)? * clip)? } else { g.to_dtype(DType::F32)? };
            let lr = self.lr * slot.lr_scale;
            slot.m = ((&slot.m * b1)? + (&g * (1.0 - b1))?)?;
            slot.v = ((&slot.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&slot.m * scale_m)? / ((&slot.v * scale_v)?.sqrt()? + self.eps)?)?;
            let theta = slot.var.as_tensor().to_dtype(DType::F32)?;
            let decayed = if slot.weight_decay > 0.0 { (theta * (1.0 - lr * slot.weight_decay))? } else { theta };
            let next = (decayed - (update * lr)?)?;
            slot.var.set(&next.to_dtype(slot.var.dtype())?)?;
        }
        Ok((norm, per_group))
    }

    /// The moments as tensors named `m.<param>` / `v.<param>`, for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::with_capacity(self.slots.len() * 2);
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores the moments and step count written by [`Self::state_tensors`]; every parameter must be
    /// present with its shape (a checkpoint of another configuration is refused).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, t: u64) -> std::result::Result<(), String> {
        for s in &mut self.slots {
            for (key, dst) in [(format!("m.{}", s.name), &mut s.m), (format!("v.{}", s.name), &mut s.v)] {
                let src = tensors.get(&key).ok_or_else(|| format!("optimiser state has no `{key}`"))?;
                if src.dims() != dst.dims() {
                    return Err(format!("optimiser state `{key}` has shape {:?}, the parameter {:?}", src.dims(), dst.dims()));
                }
                *dst = src.to_dtype(DType::F32).map_err(|e| e.to_string())?.to_device(s.var.device()).map_err(|e| e.to_string())?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Divides the gradients of `vars` by `scale` in place; returns whether they are all finite.
pub fn unscale(grads: &mut GradStore, vars: &[(String, Var)], scale: f64) -> Result<bool> {
    let mut finite = true;
    for (_, v) in vars {
        if let Some(g) = grads.remove(v.as_tensor()) {
            let g = (g / scale)?;
            finite &= g.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?.is_finite();
            grads.insert(v.as_tensor(), g);
        }
    }
    Ok(finite)
}

/// Dynamic loss scaling for f16 training (PyTorch's `GradScaler` rule): the loss is multiplied by
/// `scale` before backward; a step whose gradients overflow is skipped and halves the scale, and
/// `growth_interval` clean steps in a row double it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub growth_interval: u64,
    pub clean_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self { scale: 65536.0, growth_interval: 2000, clean_steps: 0 }
    }
}

impl LossScaler {
    /// After a backward pass: whether the (scaled) gradients are all finite, updating the scale. A
    /// `false` means skip this optimiser step.
    pub fn update(&mut self, grads_finite: bool) -> bool {
        if !grads_finite {
            self.scale = (self.scale / 2.0).max(1.0);
            self.clean_steps = 0;
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps >= self.growth_interval {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
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

    /// The update matches candle's AdamW (PyTorch's rule), so replacing it changed no result.
    #[test]
    fn matches_candle_adamw() -> Result<()> {
        use candle_nn::Optimizer;
        let dev = candle_core::Device::Cpu;
        let init = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev)?;
        let ours = Var::from_tensor(&init)?;
        let theirs = Var::from_tensor(&init)?;
        let mut opt = GroupedAdamW::new(&[("w.weight".into(), ours.clone())], 0.1, 0.05, &BTreeMap::new())?;
        let params = candle_nn::ParamsAdamW { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
        let mut reference = candle_nn::AdamW::new(vec![theirs.clone()], params)?;
        for _ in 0..5 {
            let g1 = ours.as_tensor().sqr()?.sum_all()?.backward()?;
            opt.step(&g1, 0.0)?;
            let g2 = theirs.as_tensor().sqr()?.sum_all()?.backward()?;
            reference.step(&g2)?;
        }
        let diff = (ours.as_tensor() - theirs.as_tensor())?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "ours and candle's AdamW differ by {diff}");
        Ok(())
    }

    #[test]
    fn state_round_trip_continues_identically() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let init = Tensor::new(&[1.0f32, -2.0, 3.0], &dev)?.reshape((1, 3))?;
        let run = |split: Option<usize>| -> Result<Vec<f32>> {
            let var = Var::from_tensor(&init)?;
            let mut opt = GroupedAdamW::new(&[("a.weight".into(), var.clone())], 0.05, 0.01, &BTreeMap::new())?;
            for i in 0..6 {
                if Some(i) == split {
                    let (state, t) = (opt.state_tensors(), opt.steps_taken());
                    opt = GroupedAdamW::new(&[("a.weight".into(), var.clone())], 0.05, 0.01, &BTreeMap::new())?;
                    opt.load_state(&state, t).map_err(candle_core::Error::Msg)?;
                }
                let g = (var.as_tensor().powf(3.0)?.sum_all()?).backward()?;
                opt.step(&g, 1.0)?;
            }
            var.as_tensor().flatten_all()?.to_vec1::<f32>()
        };
        assert_eq!(run(None)?, run(Some(3))?);
        Ok(())
    }

    #[test]
    fn loss_scaler_halves_on_overflow_and_grows_after_clean_steps() {
        let mut s = LossScaler { scale: 1024.0, growth_interval: 3, clean_steps: 0 };
        assert!(!s.update(false));
        assert_eq!(s.scale, 512.0);
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 512.0);
        assert!(s.update(true));
        assert_eq!(s.scale, 1024.0);
    }
}
