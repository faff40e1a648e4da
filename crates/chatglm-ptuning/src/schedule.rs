//! Learning-rate schedule: Hugging Face's `get_linear_schedule_with_warmup` (the Trainer default).

/// Linear warm-up from 0 to the peak rate, then linear decay to 0 at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    /// Peak learning rate (`--learning_rate`).
    pub peak: f64,
    /// Warm-up optimizer steps.
    pub warmup_steps: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
}

impl LinearSchedule {
    /// The multiplier `lr_lambda(step)` of the reference.
    pub fn factor(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        let remaining = self.total_steps.saturating_sub(step) as f64;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        (remaining / span).max(0.0)
    }

    /// Rate used by the optimizer update number `step` (0-based: the first update uses `lr(0)`).
    pub fn lr(&self, step: u64) -> f64 {
        self.peak * self.factor(step)
    }

    /// Warm-up steps from `--warmup_steps` (wins when > 0) or `--warmup_ratio`, as the reference.
    pub fn warmup_from(warmup_steps: u64, warmup_ratio: f64, total_steps: u64) -> u64 {
        if warmup_steps > 0 {
            warmup_steps
        } else {
            (warmup_ratio * total_steps as f64).ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_decay_and_warmup() {
        let s = LinearSchedule {
            peak: 0.02,
            warmup_steps: 0,
            total_steps: 4,
        };
        let lrs: Vec<f64> = (0..5).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, vec![0.02, 0.015, 0.01, 0.005, 0.0]);
        let w = LinearSchedule {
            peak: 1.0,
            warmup_steps: 2,
            total_steps: 6,
        };
        let f: Vec<f64> = (0..7).map(|i| w.factor(i)).collect();
        assert_eq!(f, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(LinearSchedule::warmup_from(0, 0.1, 25), 3);
        assert_eq!(LinearSchedule::warmup_from(7, 0.1, 25), 7);
    }
}
