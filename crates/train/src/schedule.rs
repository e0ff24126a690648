//! Learning-rate schedules of the three stages, as the paper uses them.
//!
//! Text pre-training uses linear warmup then cosine decay over the *planned* run, so a checkpoint at
//! fraction X of the run carries the LR the full run would have had at X. A cooldown branched from X
//! continues from that LR and decays over its own token budget (the paper's "continued schedule");
//! branches from 0 % or 100 % would start at ~0 LR, so they get a fresh warmup + cosine instead.

use serde::{Deserialize, Serialize};

/// Linear warmup to `peak`, then cosine decay to `floor` at `total_steps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    pub peak: f64,
    pub floor: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl WarmupCosine {
    pub fn lr(&self, step: u64) -> f64 {
        if self.warmup_steps > 0 && step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps.min(step)) as f64 / decay_steps as f64).min(1.0);
        self.floor + 0.5 * (self.peak - self.floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Cosine decay from `start` (the LR the text run had at the branch point) to `floor`, no warmup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContinuedCosine {
    pub start: f64,
    pub floor: f64,
    pub total_steps: u64,
}

impl ContinuedCosine {
    pub fn lr(&self, step: u64) -> f64 {
        let progress = (step as f64 / self.total_steps.max(1) as f64).min(1.0);
        self.floor + 0.5 * (self.start - self.floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The schedule a stage runs under; stored in checkpoints so a resumed run continues identically.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    WarmupCosine(WarmupCosine),
    ContinuedCosine(ContinuedCosine),
}

impl Schedule {
    pub fn lr(&self, step: u64) -> f64 {
        match self {
            Schedule::WarmupCosine(s) => s.lr(step),
            Schedule::ContinuedCosine(s) => s.lr(step),
        }
    }

    pub fn total_steps(&self) -> u64 {
        match self {
            Schedule::WarmupCosine(s) => s.total_steps,
            Schedule::ContinuedCosine(s) => s.total_steps,
        }
    }

    /// True for a schedule with its own warmup (the paper's hollow markers in the cooldown plots).
    pub fn is_fresh(&self) -> bool {
        matches!(self, Schedule::WarmupCosine(_))
    }
}

/// Steps of a stage that consumes `tokens` in batches of `batch` sequences of `seq` positions.
pub fn steps_for(tokens: u64, batch: usize, seq: usize) -> u64 {
    (tokens / (batch * seq) as u64).max(1)
}

/// A cooldown's schedule before its length is known: the stage counts its steps from its token
/// budget ([`crate::stages::cooldown`]), then asks [`CooldownSchedule::over`] for the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CooldownSchedule {
    /// The text run the branch leaves.
    pub text: WarmupCosine,
    /// Where it leaves it (0: scratch, 1: the finished run).
    pub fraction: f64,
    /// Peak and warmup of the fresh schedule of the endpoints (whose floor is the text run's).
    pub fresh_peak: f64,
    pub fresh_warmup_steps: u64,
}

impl CooldownSchedule {
    /// The endpoints (0 and 1) get a fresh warmup + cosine; interior branch points continue the
    /// text LR.
    pub fn is_fresh(&self) -> bool {
        self.fraction <= 0.0 || self.fraction >= 1.0
    }

    /// The schedule of a cooldown of `steps` steps.
    pub fn over(&self, steps: u64) -> Schedule {
        let text = &self.text;
        if self.is_fresh() {
            Schedule::WarmupCosine(WarmupCosine {
                peak: self.fresh_peak,
                floor: text.floor,
                warmup_steps: self.fresh_warmup_steps,
                total_steps: steps,
            })
        } else {
            let branch_step = (self.fraction * text.total_steps as f64).round() as u64;
            Schedule::ContinuedCosine(ContinuedCosine {
                start: text.lr(branch_step),
                floor: text.floor,
                total_steps: steps,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> WarmupCosine {
        WarmupCosine { peak: 3e-3, floor: 3e-5, warmup_steps: 10, total_steps: 110 }
    }

    #[test]
    fn warmup_is_linear_then_cosine_reaches_floor() {
        let s = text();
        assert!((s.lr(0) - 3e-4).abs() < 1e-12);
        assert!((s.lr(9) - 3e-3).abs() < 1e-12);
        assert!((s.lr(10) - 3e-3).abs() < 1e-12);
        // Halfway through the decay the cosine is at the midpoint between peak and floor.
        assert!((s.lr(60) - (3e-3 + 3e-5) / 2.0).abs() < 1e-12);
        assert!((s.lr(110) - 3e-5).abs() < 1e-12);
        assert!((s.lr(500) - 3e-5).abs() < 1e-12);
    }

    #[test]
    fn interior_branch_continues_from_the_text_lr() {
        let s = text();
        let cd = CooldownSchedule { text: s.clone(), fraction: 0.8, fresh_peak: 3e-3, fresh_warmup_steps: 5 }.over(50);
        let branch_lr = s.lr(88);
        assert!(!cd.is_fresh());
        assert!((cd.lr(0) - branch_lr).abs() < 1e-15);
        assert!(cd.lr(25) < branch_lr);
        assert!((cd.lr(50) - 3e-5).abs() < 1e-12);
    }

    #[test]
    fn endpoints_get_a_fresh_warmup() {
        for fraction in [0.0, 1.0] {
            let cd = CooldownSchedule { text: text(), fraction, fresh_peak: 3e-3, fresh_warmup_steps: 5 }.over(50);
            assert!(cd.is_fresh());
            assert_eq!(cd.total_steps(), 50);
            assert!((cd.lr(4) - 3e-3).abs() < 1e-12);
        }
    }
}
