//! Learning-rate schedules: linear warm-up, then constant, cosine or linear decay to `min_lr`.

use crate::recipe::{LrSchedule, Stage};

/// Learning rate for optimiser step `step` (0-based) of `stage`.
pub fn lr_at(stage: &Stage, step: usize) -> f64 {
    if stage.warmup_steps > 0 && step < stage.warmup_steps {
        return stage.lr * (step + 1) as f64 / stage.warmup_steps as f64;
    }
    let decay_steps = stage.steps.saturating_sub(stage.warmup_steps).max(1);
    let progress = ((step - stage.warmup_steps.min(step)) as f64 / decay_steps as f64).clamp(0.0, 1.0);
    match stage.lr_schedule {
        LrSchedule::Constant => stage.lr,
        LrSchedule::Cosine => stage.min_lr + 0.5 * (stage.lr - stage.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()),
        LrSchedule::Linear => stage.lr + (stage.min_lr - stage.lr) * progress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_reaches_min_lr() {
        let s = Stage { steps: 110, warmup_steps: 10, lr: 1e-3, min_lr: 1e-5, lr_schedule: LrSchedule::Cosine, ..Stage::default() };
        assert!((lr_at(&s, 0) - 1e-4).abs() < 1e-12);
        assert!((lr_at(&s, 9) - 1e-3).abs() < 1e-12);
        assert!((lr_at(&s, 10) - 1e-3).abs() < 1e-12);
        assert!((lr_at(&s, 60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-12);
        assert!((lr_at(&s, 110) - 1e-5).abs() < 1e-12);
        let c = Stage { lr_schedule: LrSchedule::Constant, ..s.clone() };
        assert_eq!(lr_at(&c, 100), 1e-3);
        let l = Stage { lr_schedule: LrSchedule::Linear, ..s };
        assert!((lr_at(&l, 60) - (1e-3 + 1e-5) / 2.0).abs() < 1e-12);
    }
}
