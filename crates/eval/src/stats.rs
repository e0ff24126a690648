//! Uncertainty of scores, in the two parts a reviewer asks about: which items were drawn (the
//! benchmark's noise) and which seed trained the model (training noise).
//!
//! - One model's task accuracy: Wilson's score interval when every item scores 0 or 1 (it stays
//!   informative at 0 % and 100 %), else a percentile bootstrap over items (VQA gives partial credit).
//! - A contrast between two configurations ([`contrast`]): the point estimate compares seed-matched
//!   runs where the arms share seeds (seed-0 branches share projector init, data order and the
//!   fine-tuning subset); its item variance comes from a paired bootstrap over items (a task's items
//!   are drawn once per resample and shared by both arms, so item difficulty cancels; items about
//!   the same image, in one task or two, are drawn together: [`Design`]); its seed
//!   variance is `sigma_seed^2 (1/n_a + 1/n_b)`, with `sigma_seed^2` pooled from replicate runs of
//!   one configuration on the same items ([`SeedNoise`]). The interval is `estimate +- t * se` with
//!   Welch-Satterthwaite degrees of freedom, so a seed variance estimated from three runs widens it
//!   as it should. Runs are never resampled: a bootstrap over three seeds underestimates their
//!   variance by (n-1)/n.
//! - Several findings at once: Holm's step-down adjustment ([`holm`]).
//!
//! Every resampling is seeded, so a report is reproducible bit for bit.

use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// Bootstrap resamples per interval: the 2.5 % / 97.5 % quantiles move by < 0.002 between seeds.
pub const RESAMPLES: usize = 2000;
/// Every interval starts from this seed, so reruns of a report draw the same resamples.
pub const SEED: u64 = 11;
/// Two-sided level of every interval and test.
pub const ALPHA: f64 = 0.05;

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

    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }
}

/// One run's per-item values, `[task][item]`; every run of a comparison lists the same tasks and,
/// per task, the same items in the same order.
pub type RunItems = Vec<Vec<f64>>;

/// One run of a configuration: the seed that trained it and its per-item values.
#[derive(Debug, Clone, Copy)]
pub struct SeedRun<'a> {
    pub seed: u64,
    pub items: &'a RunItems,
}

/// How a run's items become the one number a contrast compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// Mean over tasks of each task's mean item value (accuracy, or accuracy minus the blind
    /// control's): tasks of different sizes weigh the same, as in the stable score.
    GroupMean,
    /// Natural log of the summed item values (held-out nats per sequence): a difference of two runs
    /// is the log of their bits-per-byte ratio, since both score the same bytes.
    LogTotal,
}

impl Statistic {
    pub fn of(self, run: &RunItems) -> f64 {
        let all: Vec<Vec<usize>> = run.iter().map(|items| (0..items.len()).collect()).collect();
        self.of_draw(run, &all)
    }

    fn of_draw(self, run: &RunItems, draws: &[Vec<usize>]) -> f64 {
        match self {
            Statistic::GroupMean => {
                let tasks = run
                    .iter()
                    .zip(draws)
                    .map(|(items, draw)| draw.iter().map(|&i| items[i]).sum::<f64>() / draw.len() as f64);
                tasks.sum::<f64>() / run.len() as f64
            }
            Statistic::LogTotal => {
                run.iter().zip(draws).map(|(items, draw)| draw.iter().map(|&i| items[i]).sum::<f64>()).sum::<f64>().ln()
            }
        }
    }
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Training noise of a statistic: the variance between runs that differ only in their seed, scored on
/// the same items (so item noise is held fixed), pooled over every configuration with replicates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedNoise {
    pub variance: f64,
    /// Degrees of freedom: the sum over configurations of (runs - 1).
    pub df: usize,
}

impl SeedNoise {
    /// Pooled sample variance of each group's run statistics; None without any replicate.
    pub fn pooled(groups: &[Vec<f64>]) -> Option<Self> {
        let df: usize = groups.iter().map(|g| g.len().saturating_sub(1)).sum();
        let squares = |g: &Vec<f64>| {
            let m = mean(g);
            g.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        };
        (df > 0).then(|| Self { variance: groups.iter().map(squares).sum::<f64>() / df as f64, df })
    }

    pub fn sd(&self) -> f64 {
        self.variance.sqrt()
    }

    /// 95 % interval of the seed standard deviation: `sqrt(df s^2 / chi2_df(q))` at q = 0.975 and 0.025.
    pub fn sd_interval(&self) -> Interval {
        let chi = ChiSquared::new(self.df as f64).expect("df > 0");
        let scaled = self.df as f64 * self.variance;
        Interval {
            lo: (scaled / chi.inverse_cdf(1.0 - ALPHA / 2.0)).sqrt(),
            hi: (scaled / chi.inverse_cdf(ALPHA / 2.0)).sqrt(),
        }
    }
}

/// The difference `a - b` between two configurations, with both kinds of noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub estimate: f64,
    /// Variance of the estimate over item resamples (paired).
    pub item_variance: f64,
    /// `sigma_seed^2 (1/n_a + 1/n_b)`; None when no replicate measured the seed noise.
    pub seed_variance: Option<f64>,
    /// Welch-Satterthwaite degrees of freedom of the total variance (infinite when items alone).
    pub df: f64,
    /// `estimate +- t_{0.975, df} * se`.
    pub ci: Interval,
    /// Runs averaged on each side.
    pub runs: (usize, usize),
    /// Whether the estimate compares only the seeds both arms share.
    pub seed_matched: bool,
}

impl Contrast {
    pub fn se(&self) -> f64 {
        (self.item_variance + self.seed_variance.unwrap_or(0.0)).sqrt()
    }

    fn cdf(&self, x: f64) -> f64 {
        if self.df.is_finite() {
            StudentsT::new(0.0, 1.0, self.df).expect("df > 0").cdf(x)
        } else {
            Normal::standard().cdf(x)
        }
    }

    /// P-value of "the difference is 0", two-sided.
    pub fn p_two_sided(&self) -> f64 {
        let se = self.se();
        if se == 0.0 {
            return if self.estimate == 0.0 { 1.0 } else { 0.0 };
        }
        (2.0 * (1.0 - self.cdf((self.estimate / se).abs()))).min(1.0)
    }

    /// P-value of "a is not greater than b" (H0: d <= 0), one-sided.
    pub fn p_greater(&self) -> f64 {
        self.p_non_inferior(0.0)
    }

    /// P-value of "a is worse than b by `margin` or more" (H0: d <= -margin), one-sided: small when
    /// a is shown non-inferior.
    pub fn p_non_inferior(&self, margin: f64) -> f64 {
        let se = self.se();
        if se == 0.0 {
            return if self.estimate > -margin { 0.0 } else { 1.0 };
        }
        1.0 - self.cdf((self.estimate + margin) / se)
    }
}

fn t_quantile(df: f64, q: f64) -> f64 {
    if df.is_finite() {
        StudentsT::new(0.0, 1.0, df).expect("df > 0").inverse_cdf(q)
    } else {
        Normal::standard().inverse_cdf(q)
    }
}

/// What one bootstrap draw picks: units of items that share an image (every item about one photo,
/// across tasks, so two tasks asking about it are not counted as independent evidence), stratified
/// by the set of tasks a unit spans, so each task keeps its size in expectation and exactly where no
/// image is shared (then this is the plain per-task item bootstrap).
#[derive(Debug, Clone, PartialEq)]
pub struct Design {
    /// `strata[s][unit][task]`: the item indices of each unit, per task.
    strata: Vec<Vec<Unit>>,
    sizes: Vec<usize>,
}

/// One resampling unit: its item indices per task.
type Unit = Vec<Vec<usize>>;

impl Design {
    /// Every item its own unit, stratified by task.
    pub fn by_item(sizes: &[usize]) -> Self {
        let keys: Vec<Vec<String>> = sizes.iter().map(|&n| vec![String::new(); n]).collect();
        Self::by_key(&keys)
    }

    /// Items grouped by `keys[task][item]` (an image key); an empty key stands alone.
    pub fn by_key(keys: &[Vec<String>]) -> Self {
        let mut units: Vec<(String, Unit)> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (task, task_keys) in keys.iter().enumerate() {
            for (item, key) in task_keys.iter().enumerate() {
                let key = if key.is_empty() { format!("\0{task}:{item}") } else { key.clone() };
                let at = *index.entry(key.clone()).or_insert_with(|| {
                    units.push((key, vec![Vec::new(); keys.len()]));
                    units.len() - 1
                });
                units[at].1[task].push(item);
            }
        }
        let mut strata: Vec<(Vec<bool>, Vec<Unit>)> = Vec::new();
        for (_, unit) in units {
            let span: Vec<bool> = unit.iter().map(|items| !items.is_empty()).collect();
            match strata.iter_mut().find(|(s, _)| *s == span) {
                Some((_, members)) => members.push(unit),
                None => strata.push((span, vec![unit])),
            }
        }
        Self {
            strata: strata.into_iter().map(|(_, units)| units).collect(),
            sizes: keys.iter().map(Vec::len).collect(),
        }
    }

    /// One resample: `draws[task]` is the item indices drawn for each task.
    fn draw(&self, rng: &mut ChaCha8Rng, draws: &mut [Vec<usize>]) {
        draws.iter_mut().for_each(Vec::clear);
        for units in &self.strata {
            for _ in 0..units.len() {
                let unit = &units[rng.gen_range(0..units.len())];
                for (draw, items) in draws.iter_mut().zip(unit) {
                    draw.extend_from_slice(items);
                }
            }
        }
    }
}

fn check_items(runs: &[&RunItems]) -> Result<Vec<usize>> {
    let first = runs.first().ok_or_else(|| anyhow::anyhow!("nothing to compare"))?;
    let sizes: Vec<usize> = first.iter().map(Vec::len).collect();
    for run in runs {
        let other: Vec<usize> = run.iter().map(Vec::len).collect();
        ensure!(
            other == sizes,
            "runs compared item by item must score the same tasks and items ({sizes:?} vs {other:?})"
        );
    }
    ensure!(!sizes.is_empty() && sizes.iter().all(|&n| n > 0), "a task without items has no interval");
    Ok(sizes)
}

/// Resamples items by `design` (`draws[task]`), the same draw for every run: paired.
fn item_resamples<T>(design: &Design, sizes: &[usize], mut stat: impl FnMut(&[Vec<usize>]) -> T) -> Result<Vec<T>> {
    ensure!(
        design.sizes == sizes,
        "the resampling design covers {:?} items per task, the runs {sizes:?}",
        design.sizes
    );
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut draws: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
    Ok((0..RESAMPLES)
        .map(|_| {
            design.draw(&mut rng, &mut draws);
            stat(&draws)
        })
        .collect())
}

fn variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len().max(2) - 1) as f64
}

/// `statistic(a) - statistic(b)`, each side averaged over its runs (only the shared seeds where the
/// arms share any), with item and seed noise as the module docs say. `b` may be empty: then the
/// contrast is the level of `a` itself (a figure's error bar).
pub fn contrast<'a>(
    a: &[SeedRun<'a>],
    b: &[SeedRun<'a>],
    design: &Design,
    statistic: Statistic,
    noise: Option<SeedNoise>,
) -> Result<Contrast> {
    let shared: Vec<u64> = a.iter().map(|r| r.seed).filter(|s| b.iter().any(|r| r.seed == *s)).collect();
    let seed_matched = !shared.is_empty();
    let pick = |arm: &[SeedRun<'a>]| -> Vec<&'a RunItems> {
        arm.iter().filter(|r| !seed_matched || shared.contains(&r.seed)).map(|r| r.items).collect()
    };
    let (a_runs, b_runs) = (pick(a), pick(b));
    let all: Vec<&RunItems> = a_runs.iter().chain(&b_runs).copied().collect();
    let sizes = check_items(&all)?;
    ensure!(!a_runs.is_empty(), "a contrast needs at least one run on its first side");
    let side = |runs: &[&RunItems], draws: &[Vec<usize>]| -> f64 {
        if runs.is_empty() {
            0.0
        } else {
            runs.iter().map(|r| statistic.of_draw(r, draws)).sum::<f64>() / runs.len() as f64
        }
    };
    let full: Vec<Vec<usize>> = sizes.iter().map(|&n| (0..n).collect()).collect();
    let estimate = side(&a_runs, &full) - side(&b_runs, &full);
    let item_variance = variance(&item_resamples(design, &sizes, |draws| side(&a_runs, draws) - side(&b_runs, draws))?);
    let inverse_runs = 1.0 / a_runs.len() as f64 + if b_runs.is_empty() { 0.0 } else { 1.0 / b_runs.len() as f64 };
    let seed_variance = noise.map(|n| n.variance * inverse_runs);
    let total = item_variance + seed_variance.unwrap_or(0.0);
    // Beyond a million degrees of freedom t is the normal to 1e-6; statrs' t quantile search also
    // stops converging there.
    let df = match (noise, seed_variance) {
        (Some(n), Some(s)) if s > 0.0 => total * total / (s * s / n.df as f64),
        _ => f64::INFINITY,
    };
    let df = if df > 1e6 { f64::INFINITY } else { df };
    let half = t_quantile(df, 1.0 - ALPHA / 2.0) * total.sqrt();
    Ok(Contrast {
        estimate,
        item_variance,
        seed_variance,
        df,
        ci: Interval { lo: estimate - half, hi: estimate + half },
        runs: (a_runs.len(), b_runs.len()),
        seed_matched,
    })
}

/// How often each configuration has the highest statistic when items are resampled and each
/// configuration's mean is moved by a draw of its seed noise (`N(0, sigma^2 / runs)`): a reader's
/// "which point is best, and how sure is that".
pub fn best_frequencies(
    points: &[Vec<SeedRun>],
    design: &Design,
    statistic: Statistic,
    noise: Option<SeedNoise>,
) -> Result<Vec<f64>> {
    let all: Vec<&RunItems> = points.iter().flatten().map(|r| r.items).collect();
    let sizes = check_items(&all)?;
    ensure!(points.iter().all(|p| !p.is_empty()), "every point needs a run");
    let normal = Normal::standard();
    let mut noise_rng = ChaCha8Rng::seed_from_u64(SEED + 1);
    let winners = item_resamples(design, &sizes, |draws| {
        let scores = points.iter().map(|runs| {
            let level = runs.iter().map(|r| statistic.of_draw(r.items, draws)).sum::<f64>() / runs.len() as f64;
            let sd = noise.map_or(0.0, |n| (n.variance / runs.len() as f64).sqrt());
            level + sd * normal.inverse_cdf(noise_rng.gen_range(1e-12..1.0 - 1e-12))
        });
        scores.enumerate().max_by(|x, y| x.1.total_cmp(&y.1)).map_or(0, |(i, _)| i)
    })?;
    let wins = |point: usize| winners.iter().filter(|&&w| w == point).count() as f64 / RESAMPLES as f64;
    Ok((0..points.len()).map(wins).collect())
}

/// Holm's step-down adjusted p-values, in the input's order: comparing each with [`ALPHA`] keeps the
/// chance of any false claim among them at or below it.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut adjusted = vec![0.0; p.len()];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((p.len() - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// 95 % interval of a task's accuracy: Wilson's score interval when every item is 0 or 1, else a
/// percentile bootstrap over items.
pub fn accuracy_ci(items: &[f64]) -> Result<Interval> {
    ensure!(!items.is_empty(), "an accuracy without items has no interval");
    if !items.iter().all(|&x| x == 0.0 || x == 1.0) {
        return mean_ci(items);
    }
    let n = items.len() as f64;
    let p = mean(items);
    let z = Normal::standard().inverse_cdf(1.0 - ALPHA / 2.0);
    let (z2, denominator) = (z * z, 1.0 + z * z / n);
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Ok(Interval { lo: (centre - half).max(0.0), hi: (centre + half).min(1.0) })
}

/// 95 % percentile-bootstrap interval of a group mean over items, drawn by `design`.
pub fn group_ci(run: &RunItems, design: &Design) -> Result<Interval> {
    let sizes = check_items(&[run])?;
    let mut stats = item_resamples(design, &sizes, |draws| Statistic::GroupMean.of_draw(run, draws))?;
    stats.sort_by(f64::total_cmp);
    Ok(Interval { lo: quantile(&stats, ALPHA / 2.0), hi: quantile(&stats, 1.0 - ALPHA / 2.0) })
}

/// 95 % interval of the mean of one list of item credits.
pub fn mean_ci(items: &[f64]) -> Result<Interval> {
    group_ci(&vec![items.to_vec()], &Design::by_item(&[items.len()]))
}

/// 95 % interval of `mean(a) - mean(b)` over the same items, paired (percentile bootstrap).
pub fn paired_diff_ci(a: &[f64], b: &[f64]) -> Result<Interval> {
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    ensure!(a.len() == b.len(), "a paired difference needs the same items on both sides");
    mean_ci(&diff)
}

/// 95 % interval of `sum(a) / sum(b) - 1` over the same items (paired): the relative change of a
/// pooled total, such as held-out bits-per-byte over the same sequences (the bytes cancel).
pub fn paired_ratio_ci(a: &[f64], b: &[f64]) -> Result<Interval> {
    ensure!(a.len() == b.len() && !a.is_empty(), "a paired ratio needs the same non-empty items on both sides");
    let mut stats = item_resamples(&Design::by_item(&[a.len()]), &[a.len()], |draws| {
        let (sa, sb) = draws[0].iter().fold((0.0, 0.0), |(sa, sb), &i| (sa + a[i], sb + b[i]));
        sa / sb - 1.0
    })?;
    stats.sort_by(f64::total_cmp);
    Ok(Interval { lo: quantile(&stats, ALPHA / 2.0), hi: quantile(&stats, 1.0 - ALPHA / 2.0) })
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

    fn binary(n: usize, right: impl Fn(usize) -> bool) -> Vec<f64> {
        (0..n).map(|i| if right(i) { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn wilson_interval_of_a_proportion_and_at_the_edges() {
        // 120 of 300: Wilson (z = 1.96) gives centre 0.40127, half-width 0.05510 (worked by hand).
        let ci = accuracy_ci(&binary(300, |i| i % 5 < 2)).unwrap();
        assert!((ci.lo - 0.34617).abs() < 2e-4 && (ci.hi - 0.45637).abs() < 2e-4, "{ci:?}");
        // 0 of 300 is not [0, 0]: the upper end is z^2 / (n + z^2) = 0.0126.
        let zero = accuracy_ci(&[0.0; 300]).unwrap();
        assert!(zero.lo == 0.0 && (zero.hi - 0.01264).abs() < 1e-4, "{zero:?}");
        let one = accuracy_ci(&[1.0; 300]).unwrap();
        assert!((one.hi - 1.0).abs() < 1e-12 && (one.lo - (1.0 - 0.01264)).abs() < 1e-4, "{one:?}");
        // Partial credit falls back to the bootstrap.
        let partial = accuracy_ci(&[0.3, 0.6, 1.0, 0.0]).unwrap();
        assert!(partial.lo < partial.hi);
    }

    #[test]
    fn paired_ratio_interval_covers_a_uniform_rise_tightly() {
        let b: Vec<f64> = (0..100).map(|i| 10.0 + (i * 37 % 50) as f64).collect();
        let a: Vec<f64> = b.iter().map(|x| x * 1.03).collect();
        let ci = paired_ratio_ci(&a, &b).unwrap();
        assert!((ci.lo - 0.03).abs() < 1e-9 && (ci.hi - 0.03).abs() < 1e-9, "{ci:?}");
        let c: Vec<f64> = b.iter().enumerate().map(|(i, x)| x * if i % 2 == 0 { 1.05 } else { 0.95 }).collect();
        assert!(!paired_ratio_ci(&c, &b).unwrap().excludes_zero());
        assert!(paired_ratio_ci(&a[..3], &b).is_err(), "unpaired lengths are refused");
    }

    #[test]
    fn pairing_removes_shared_item_difficulty() {
        let a = binary(200, |i| i < 60);
        let b = binary(200, |i| i < 90);
        let ci = paired_diff_ci(&b, &a).unwrap();
        assert!(ci.excludes_zero() && ci.lo > 0.09 && ci.hi < 0.21, "{ci:?}");
        let (ra, rb) = (vec![a.clone()], vec![b.clone()]);
        let c = contrast(
            &[SeedRun { seed: 0, items: &rb }],
            &[SeedRun { seed: 0, items: &ra }],
            &Design::by_item(&[200]),
            Statistic::GroupMean,
            None,
        )
        .unwrap();
        assert!((c.estimate - 0.15).abs() < 1e-12 && c.df.is_infinite() && c.ci.excludes_zero(), "{c:?}");
    }

    #[test]
    fn pooled_seed_noise_and_its_chi_square_interval() {
        // Groups {1, 2, 3} and {5, 7}: squares 2 + 2 over df 2 + 1 = 3.
        let noise = SeedNoise::pooled(&[vec![1.0, 2.0, 3.0], vec![5.0, 7.0], vec![9.0]]).unwrap();
        assert_eq!(noise.df, 3);
        assert!((noise.variance - 4.0 / 3.0).abs() < 1e-12);
        // chi2_3 quantiles 0.2158 and 9.348: sd in [sqrt(4 / 9.348), sqrt(4 / 0.2158)].
        let ci = noise.sd_interval();
        assert!((ci.lo - 0.6541).abs() < 1e-3 && (ci.hi - 4.305).abs() < 1e-2, "{ci:?}");
        assert!(SeedNoise::pooled(&[vec![1.0], vec![2.0]]).is_none(), "no replicate, no estimate");
    }

    #[test]
    fn seed_noise_turns_a_clear_item_difference_into_cannot_tell() {
        // The same items: a is right on 30 more of 300 (+0.10, a tight item interval).
        let a = vec![binary(300, |i| i < 120)];
        let b = vec![binary(300, |i| i < 90)];
        let (ra, rb) = ([SeedRun { seed: 0, items: &a }], [SeedRun { seed: 0, items: &b }]);
        let items_only = contrast(&ra, &rb, &Design::by_item(&[300]), Statistic::GroupMean, None).unwrap();
        assert!(items_only.ci.lo > 0.05, "{items_only:?}");
        // Seeds of one configuration spread by sd 0.05 (three runs: df 2). One run per arm adds
        // 2 * 0.0025 to the item variance 0.1 * 0.9 / 300 = 0.0003: df = 0.0053^2 / (0.005^2 / 2)
        // = 2.25, t = 3.9, half-width 3.9 * sqrt(0.0053) = 0.28 > 0.10.
        let noise = SeedNoise { variance: 0.0025, df: 2 };
        let with_seeds = contrast(&ra, &rb, &Design::by_item(&[300]), Statistic::GroupMean, Some(noise)).unwrap();
        assert!((with_seeds.seed_variance.unwrap() - 0.005).abs() < 1e-12);
        assert!(with_seeds.df > 2.1 && with_seeds.df < 2.4, "{with_seeds:?}");
        let half = with_seeds.ci.half_width();
        assert!(!with_seeds.ci.excludes_zero() && half > 0.25 && half < 0.32, "{with_seeds:?}");
        assert!(with_seeds.p_two_sided() > ALPHA && items_only.p_two_sided() < 1e-3);
    }

    #[test]
    fn shared_seeds_are_compared_seed_for_seed() {
        let run = |right: usize| vec![binary(100, move |i| i < right)];
        let (a0, a1, a2, b0) = (run(50), run(70), run(90), run(40));
        let a = [SeedRun { seed: 0, items: &a0 }, SeedRun { seed: 1, items: &a1 }, SeedRun { seed: 2, items: &a2 }];
        let c = contrast(&a, &[SeedRun { seed: 0, items: &b0 }], &Design::by_item(&[100]), Statistic::GroupMean, None)
            .unwrap();
        assert!(c.seed_matched && c.runs == (1, 1) && (c.estimate - 0.10).abs() < 1e-12, "seed 0 vs seed 0: {c:?}");
        let b7 = [SeedRun { seed: 7, items: &b0 }];
        let c = contrast(&a, &b7, &Design::by_item(&[100]), Statistic::GroupMean, None).unwrap();
        assert!(!c.seed_matched && c.runs == (3, 1) && (c.estimate - 0.30).abs() < 1e-12, "all runs: {c:?}");
    }

    #[test]
    fn non_inferiority_p_values_read_the_margin() {
        let c = |estimate: f64, se: f64| Contrast {
            estimate,
            item_variance: se * se,
            seed_variance: None,
            df: f64::INFINITY,
            ci: Interval { lo: estimate - 1.96 * se, hi: estimate + 1.96 * se },
            runs: (1, 1),
            seed_matched: true,
        };
        // A significant drop of 0.005 inside a 0.02 margin: non-inferior.
        let drop = c(-0.005, 0.002);
        assert!(drop.p_two_sided() < ALPHA && drop.p_non_inferior(0.02) < 1e-6);
        assert!(c(-0.03, 0.002).p_non_inferior(0.02) > 0.99);
    }

    #[test]
    fn holm_adjusts_step_down_and_keeps_order() {
        let adjusted = holm(&[0.01, 0.04, 0.03, 0.5]);
        // Sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1, made monotone: 0.04, 0.09, 0.09, 0.5.
        let want = [0.04, 0.09, 0.09, 0.5];
        assert!(adjusted.iter().zip(want).all(|(a, w)| (a - w).abs() < 1e-12), "{adjusted:?}");
    }

    #[test]
    fn the_best_point_wins_most_resamples() {
        let run = |right: usize| vec![binary(300, move |i| i < right)];
        let (lo, hi) = (run(90), run(150));
        let points = vec![vec![SeedRun { seed: 0, items: &lo }], vec![SeedRun { seed: 0, items: &hi }]];
        let f = best_frequencies(&points, &Design::by_item(&[300]), Statistic::GroupMean, None).unwrap();
        assert!(f[1] > 0.99 && (f[0] + f[1] - 1.0).abs() < 1e-12, "{f:?}");
        // Huge seed noise makes it a coin toss.
        let f = best_frequencies(
            &points,
            &Design::by_item(&[300]),
            Statistic::GroupMean,
            Some(SeedNoise { variance: 100.0, df: 2 }),
        )
        .unwrap();
        assert!(f[1] > 0.4 && f[1] < 0.6, "{f:?}");
    }

    #[test]
    fn items_about_one_image_are_drawn_together() {
        // Two tasks ask about the same 100 images, each right on exactly the same images: they are one
        // piece of evidence, so the group mean's interval is as wide as one task's, not sqrt(2)
        // narrower as two independent tasks would make it.
        let one = binary(100, |i| i % 2 == 0);
        let run = vec![one.clone(), one.clone()];
        let keys: Vec<Vec<String>> = (0..2).map(|_| (0..100).map(|i| format!("img{i}")).collect()).collect();
        let shared = group_ci(&run, &Design::by_key(&keys)).unwrap();
        let single = group_ci(&vec![one], &Design::by_item(&[100])).unwrap();
        let independent = group_ci(&run, &Design::by_item(&[100, 100])).unwrap();
        assert!((shared.half_width() - single.half_width()).abs() < 0.01, "{shared:?} {single:?}");
        assert!(independent.half_width() < 0.8 * shared.half_width(), "{independent:?} {shared:?}");
        // Without shared keys the design is the per-task bootstrap, draw for draw.
        let distinct: Vec<Vec<String>> = (0..2).map(|t| (0..100).map(|i| format!("t{t}-{i}")).collect()).collect();
        assert_eq!(group_ci(&run, &Design::by_key(&distinct)).unwrap(), independent);
        assert!(group_ci(&run, &Design::by_item(&[100])).is_err(), "a design for other items is refused");
    }

    #[test]
    fn mismatched_items_are_refused() {
        let (a, b) = (vec![vec![1.0; 100]], vec![vec![1.0; 99]]);
        assert!(contrast(
            &[SeedRun { seed: 0, items: &a }],
            &[SeedRun { seed: 0, items: &b }],
            &Design::by_item(&[100]),
            Statistic::GroupMean,
            None
        )
        .is_err());
    }
}
