//! Learning-rate schedules: linear warm-up, then constant, cosine or linear decay to `min_lr`.

use crate::recipe::{LrSchedule, Stage};

/// Learning rate for optimiser step `step` (0-based) of `stage`.
pub fn lr_at(stage: &Stage, step: usize) -> f64 {
    if stage.lr_schedule == LrSchedule::ReferenceCosine {
        if step < stage.warmup_steps {
            return stage.warmup_start_lr + (stage.lr - stage.warmup_start_lr) * step as f64 / stage.warmup_steps as f64;
        }
        let t = step as f64 / stage.steps.max(1) as f64;
        return stage.min_lr + (stage.lr - stage.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
    }
    if stage.warmup_steps > 0 && step < stage.warmup_steps {
        return stage.lr * (step + 1) as f64 / stage.warmup_steps as f64;
    }
    let decay_steps = stage.steps.saturating_sub(stage.warmup_steps).max(1);
    let progress = ((step - stage.warmup_steps.min(step)) as f64 / decay_steps as f64).clamp(0.0, 1.0);
    match stage.lr_schedule {
        LrSchedule::Constant => stage.lr,
        LrSchedule::Cosine => stage.min_lr + 0.5 * (stage.lr - stage.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()),
        LrSchedule::Linear => stage.lr + (stage.min_lr - stage.lr) * progress,
        LrSchedule::ReferenceCosine => unreachable!("handled above"),
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

    /// Emotion-LLaMA stage 1 (reference §2.2): 1e-6 → 1e-5 over 1000 steps, cosine over 30 000 to 1e-6.
    #[test]
    fn reference_cosine_is_the_lavis_formula() {
        let s = Stage {
            steps: 30_000,
            warmup_steps: 1000,
            warmup_start_lr: 1e-6,
            lr: 1e-5,
            min_lr: 1e-6,
            lr_schedule: LrSchedule::ReferenceCosine,
            ..Stage::default()
        };
        assert_eq!(lr_at(&s, 0), 1e-6);
        assert!((lr_at(&s, 500) - 5.5e-6).abs() < 1e-15);
        let at = |t: f64| 1e-6 + 9e-6 * 0.5 * (1.0 + (std::f64::consts::PI * t / 30_000.0).cos());
        assert!((lr_at(&s, 1000) - at(1000.0)).abs() < 1e-15);
        assert!((lr_at(&s, 15_000) - 5.5e-6).abs() < 1e-15);
        assert!((lr_at(&s, 29_999) - at(29_999.0)).abs() < 1e-15);
        // Stage 2: lr 1e-6 everywhere.
        let c = Stage { lr: 1e-6, ..s };
        assert!((0..30_000).step_by(997).all(|t| (lr_at(&c, t) - 1e-6).abs() < 1e-18));
    }
}
