//! Uncertainty of scores: 95 % percentile-bootstrap intervals over items (and over seeds where a
//! configuration has several runs), seeded so a report is reproducible bit for bit.
//!
//! Bootstrap rather than Wilson: item credit is not always 0/1 (VQA accuracy gives partial
//! credit), group scores average tasks of different sizes, and comparisons between models are
//! paired by item. One resampling scheme covers all of them: a task's items are drawn once per
//! resample and shared by every arm, so item difficulty cancels out of a difference.

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Bootstrap resamples per interval: the 2.5 % / 97.5 % quantiles move by < 0.002 between seeds.
pub const RESAMPLES: usize = 2000;
/// Every interval starts from this seed, so reruns of a report draw the same resamples.
pub const SEED: u64 = 11;

/// A 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// Whether 0 lies outside the interval: the sign of the quantity is resolved.
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// The interval shifted by `by` (a chance level subtracted from an accuracy's interval).
    pub fn shifted(self, by: f64) -> Self {
        Self { lo: self.lo + by, hi: self.hi + by }
    }
}

/// One run's per-item credit, `[task][item]`; every run of a comparison lists the same tasks and,
/// per task, the same items in the same order.
pub type RunItems = Vec<Vec<f64>>;

/// One side of a comparison: the runs (seeds) of one configuration.
pub struct Arm<'a> {
    pub runs: &'a [&'a RunItems],
    /// +1 or -1: the statistic is the weighted sum of the arms' group means.
    pub weight: f64,
}

/// The group mean of runs: mean over tasks of the task's mean credit, averaged over runs.
pub fn group_mean(runs: &[&RunItems]) -> f64 {
    let per_run = |run: &RunItems| run.iter().map(|items| mean(items)).sum::<f64>() / run.len().max(1) as f64;
    runs.iter().map(|r| per_run(r)).sum::<f64>() / runs.len().max(1) as f64
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// 95 % interval of `sum_k weight_k * group_mean(arm_k)`: items are resampled per task (the same
/// draw for every arm: paired), runs with replacement within each arm that has several.
pub fn bootstrap(arms: &[Arm]) -> Result<Interval> {
    let first = arms.first().and_then(|a| a.runs.first()).ok_or_else(|| anyhow::anyhow!("nothing to bootstrap"))?;
    let sizes: Vec<usize> = first.iter().map(Vec::len).collect();
    for arm in arms {
        ensure!(!arm.runs.is_empty(), "a bootstrap arm has no runs");
        for run in arm.runs {
            ensure!(
                run.iter().map(Vec::len).collect::<Vec<_>>() == sizes,
                "runs compared item by item must score the same tasks and items ({sizes:?} vs {:?})",
                run.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
    }
    ensure!(sizes.iter().all(|&n| n > 0), "a task without items has no interval");
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut stats = Vec::with_capacity(RESAMPLES);
    let mut draws: Vec<Vec<usize>> = sizes.iter().map(|&n| vec![0; n]).collect();
    let mut runs_drawn: Vec<usize> = Vec::new();
    for _ in 0..RESAMPLES {
        for (draw, &n) in draws.iter_mut().zip(&sizes) {
            draw.iter_mut().for_each(|d| *d = rng.gen_range(0..n));
        }
        let mut stat = 0.0;
        for arm in arms {
            runs_drawn.clear();
            match arm.runs.len() {
                1 => runs_drawn.push(0),
                r => runs_drawn.extend((0..r).map(|_| rng.gen_range(0..r))),
            }
            let mut total = 0.0;
            for &r in &runs_drawn {
                let run = arm.runs[r];
                let tasks: f64 = run
                    .iter()
                    .zip(&draws)
                    .map(|(items, draw)| draw.iter().map(|&i| items[i]).sum::<f64>() / draw.len() as f64)
                    .sum();
                total += tasks / run.len() as f64;
            }
            stat += arm.weight * total / runs_drawn.len() as f64;
        }
        stats.push(stat);
    }
    stats.sort_by(f64::total_cmp);
    Ok(Interval { lo: quantile(&stats, 0.025), hi: quantile(&stats, 0.975) })
}

/// 95 % interval of the mean of one list of item credits.
pub fn mean_ci(items: &[f64]) -> Result<Interval> {
    let run = vec![items.to_vec()];
    bootstrap(&[Arm { runs: &[&run], weight: 1.0 }])
}

/// 95 % interval of `mean(a) - mean(b)` over the same items, paired.
pub fn paired_diff_ci(a: &[f64], b: &[f64]) -> Result<Interval> {
    let (a, b) = (vec![a.to_vec()], vec![b.to_vec()]);
    bootstrap(&[Arm { runs: &[&a], weight: 1.0 }, Arm { runs: &[&b], weight: -1.0 }])
}

/// 95 % interval of `sum(a) / sum(b) - 1` over the same items (paired): the relative change of a
/// pooled total, such as held-out bits-per-byte over the same sequences (the bytes cancel).
pub fn paired_ratio_ci(a: &[f64], b: &[f64]) -> Result<Interval> {
    ensure!(a.len() == b.len() && !a.is_empty(), "a paired ratio needs the same non-empty items on both sides");
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut stats: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let (mut sa, mut sb) = (0.0, 0.0);
            for _ in 0..a.len() {
                let i = rng.gen_range(0..a.len());
                sa += a[i];
                sb += b[i];
            }
            sa / sb - 1.0
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    Ok(Interval { lo: quantile(&stats, 0.025), hi: quantile(&stats, 0.975) })
}

/// Linear interpolation between order statistics (NumPy's default quantile).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_of_a_proportion_matches_the_normal_approximation() {
        // 120 of 300 correct: p = 0.4, standard error sqrt(0.4 * 0.6 / 300) = 0.0283.
        let items: Vec<f64> = (0..300).map(|i| if i % 5 < 2 { 1.0 } else { 0.0 }).collect();
        let ci = mean_ci(&items).unwrap();
        assert!((ci.lo - (0.4 - 1.96 * 0.0283)).abs() < 0.01 && (ci.hi - (0.4 + 1.96 * 0.0283)).abs() < 0.01, "{ci:?}");
        assert_eq!(ci, mean_ci(&items).unwrap(), "seeded: the same interval every time");
    }

    #[test]
    fn paired_ratio_interval_covers_a_uniform_rise_tightly() {
        // Every sequence's loss rises by 3 %, on very different sequence sizes: the pooled ratio is
        // exactly 1.03 in every resample.
        let b: Vec<f64> = (0..100).map(|i| 10.0 + (i * 37 % 50) as f64).collect();
        let a: Vec<f64> = b.iter().map(|x| x * 1.03).collect();
        let ci = paired_ratio_ci(&a, &b).unwrap();
        assert!((ci.lo - 0.03).abs() < 1e-9 && (ci.hi - 0.03).abs() < 1e-9, "{ci:?}");
        // Noisy changes around no change: the interval holds 0.
        let c: Vec<f64> = b.iter().enumerate().map(|(i, x)| x * if i % 2 == 0 { 1.05 } else { 0.95 }).collect();
        assert!(!paired_ratio_ci(&c, &b).unwrap().excludes_zero());
        assert!(paired_ratio_ci(&a[..3], &b).is_err(), "unpaired lengths are refused");
    }

    #[test]
    fn pairing_removes_shared_item_difficulty() {
        // b is right on the same items as a plus 30 more: a constant, fully paired difference.
        let a: Vec<f64> = (0..200).map(|i| if i < 60 { 1.0 } else { 0.0 }).collect();
        let b: Vec<f64> = (0..200).map(|i| if i < 90 { 1.0 } else { 0.0 }).collect();
        let ci = paired_diff_ci(&b, &a).unwrap();
        assert!(ci.excludes_zero() && ci.lo > 0.09 && ci.hi < 0.21, "{ci:?}");
        let same = paired_diff_ci(&a, &a).unwrap();
        assert_eq!((same.lo, same.hi), (0.0, 0.0));
    }

    #[test]
    fn seeds_widen_the_interval_and_mismatched_items_are_refused() {
        let run = |shift: usize| -> RunItems {
            vec![(0..100).map(|i| if (i + shift).is_multiple_of(2) { 1.0 } else { 0.0 }).collect()]
        };
        let (r0, r1) = (run(0), vec![vec![1.0; 100]]);
        let one = bootstrap(&[Arm { runs: &[&r0], weight: 1.0 }]).unwrap();
        let two = bootstrap(&[Arm { runs: &[&r0, &r1], weight: 1.0 }]).unwrap();
        assert!(two.hi - two.lo > one.hi - one.lo, "{one:?} {two:?}");
        let short = vec![vec![1.0; 99]];
        assert!(bootstrap(&[Arm { runs: &[&r0], weight: 1.0 }, Arm { runs: &[&short], weight: -1.0 }]).is_err());
    }
}
