//! Masked softmax cross-entropy with z-loss, fused with its gradient: one pass finds the row
//! maximum, one computes the exponentials (in place when the gradient is wanted) and one scales
//! them into `dlogits`, so no `[rows, vocab]` buffer is allocated. [`target_log_probs`] is the
//! same log-softmax read at one index per row, for scorers holding logits on the host.

use rayon::prelude::*;

use super::math::{exp_shifted_in_place, exp_shifted_sum, max};
use super::par::rows_per_task;
use super::simd::multiversion;
use crate::device::{LossStats, ZLossTerm};

/// What the gradient pass needs: the caller's scale, `1 / sum(mask)`, and the z-loss gradient's
/// weight on every row's softmax under open_lm's rule (`scale * 2 z mean_lse / rows`).
#[derive(Clone, Copy)]
struct GradScale {
    scale: f32,
    inv_mask_sum: f32,
    squared_mean: f32,
}

multiversion! {
    /// One block of rows; returns `(sum mask*(nll + z lse^2), sum mask*nll)`; `z_loss` is the
    /// per-row (masked) coefficient, 0 under open_lm's rule, whose gradient comes in `grad`.
    fn rows(block: &mut [f32], nll: &mut [f32], targets: &[u32], mask: &[f32], vocab: usize, z_loss: f32, grad: Option<GradScale>) -> (f64, f64) {
        let mut loss_sum = 0.0f64;
        let mut nll_sum = 0.0f64;
        for (((row, nll), &target), &m) in block.chunks_exact_mut(vocab).zip(nll).zip(targets).zip(mask) {
            let target = target as usize;
            assert!(target < vocab, "cross_entropy: target {target} >= vocab {vocab}");
            let target_logit = row[target];
            let row_max = max(row);
            let sum = match grad {
                Some(_) => exp_shifted_in_place(row, row_max),
                None => exp_shifted_sum(row, row_max),
            };
            let lse = row_max + sum.ln();
            *nll = lse - target_logit;
            loss_sum += m as f64 * (*nll as f64 + z_loss as f64 * lse as f64 * lse as f64);
            nll_sum += m as f64 * *nll as f64;
            if let Some(g) = grad {
                let row_scale = g.scale * m * g.inv_mask_sum;
                let coef = (row_scale * (1.0 + 2.0 * z_loss * lse) + g.squared_mean) / sum;
                row.iter_mut().for_each(|x| *x *= coef);
                row[target] -= row_scale;
            }
        }
        (loss_sum, nll_sum)
    }
}

multiversion! {
    /// `log p(target)` under one row of logits and whether `target` is the row's first maximum
    /// (as torch.argmax picks it).
    fn target_log_prob(row: &[f32], target: u32) -> (f64, bool) {
        let target = target as usize;
        let row_max = max(row);
        let lse = row_max as f64 + (exp_shifted_sum(row, row_max) as f64).ln();
        let greedy = row[target] == row_max && row[..target].iter().all(|&x| x < row_max);
        (row[target] as f64 - lse, greedy)
    }
}

/// `(log p(target), target is the argmax)` for each `(row, target)` of `picks`, rows of `logits`
/// (`[rows, vocab]`, host memory) read in parallel: how an evaluator scores continuations. A row
/// may be picked more than once (one prompt's last logits score the first token of each answer).
pub fn target_log_probs(logits: &[f32], vocab: usize, picks: &[(usize, u32)]) -> Vec<(f64, bool)> {
    assert!(vocab > 0 && logits.len().is_multiple_of(vocab), "target_log_probs: logits are not [rows, vocab]");
    let rows = logits.len() / vocab;
    let outside = picks.iter().find(|&&(row, target)| row >= rows || target as usize >= vocab);
    assert!(outside.is_none(), "target_log_probs: pick {outside:?} outside [{rows}, {vocab}]");
    picks
        .par_iter()
        .with_min_len(rows_per_task(picks.len(), vocab))
        .map(|&(row, target)| target_log_prob(&logits[row * vocab..][..vocab], target))
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    logits: &mut [f32],
    vocab: usize,
    targets: &[u32],
    mask: &[f32],
    z_loss: ZLossTerm,
    grad_scale: Option<f32>,
    nll: &mut [f32],
) -> LossStats {
    let n = targets.len();
    assert!(vocab > 0 && logits.len() == n * vocab, "cross_entropy: logits are not [targets, vocab]");
    assert!(mask.len() == n && nll.len() >= n, "cross_entropy: mask / nll length");
    let mask_sum: f64 = mask.iter().map(|&m| m as f64).sum();
    let inv_mask_sum = if mask_sum > 0.0 { (1.0 / mask_sum) as f32 } else { 0.0 };
    let (masked_z, squared_mean) = match z_loss {
        ZLossTerm::Masked(z) => (z, None),
        ZLossTerm::SquaredMean { z, mean_lse } => (0.0, Some((z, mean_lse))),
    };
    let grad = grad_scale.map(|scale| GradScale {
        scale,
        inv_mask_sum,
        squared_mean: squared_mean.map_or(0.0, |(z, m)| scale * 2.0 * z * m / n.max(1) as f32),
    });
    let per = rows_per_task(n, vocab);
    let (loss_sum, nll_sum) = logits
        .par_chunks_mut(per * vocab)
        .zip(nll[..n].par_chunks_mut(per))
        .zip(targets.par_chunks(per).zip(mask.par_chunks(per)))
        .map(|((block, nll), (targets, mask))| rows(block, nll, targets, mask, vocab, masked_z, grad))
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let mut loss = if mask_sum > 0.0 { (loss_sum / mask_sum) as f32 } else { 0.0 };
    if let Some((z, mean_lse)) = squared_mean {
        loss += z * mean_lse * mean_lse;
    }
    LossStats { loss, nll_sum, mask_sum }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log-softmax at the target in f64, and the first maximum's index.
    fn reference(row: &[f32], target: usize) -> (f64, usize) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let first_max = row.iter().position(|&x| x as f64 == max).unwrap();
        (row[target] as f64 - lse, first_max)
    }

    #[test]
    fn target_log_probs_match_an_f64_log_softmax_and_torch_argmax() {
        let vocab = 1003; // not a multiple of the SIMD lanes
        let mut logits: Vec<f32> = (0..4 * vocab).map(|i| ((i * 7919 % 1000) as f32 / 50.0) - 10.0).collect();
        logits[2 * vocab + 5] = 40.0; // row 2: a tie for the maximum at 5 and 9
        logits[2 * vocab + 9] = 40.0;
        let picks = [(0, 0), (1, 17), (2, 5), (2, 9), (3, 1002), (0, 640)];
        let got = target_log_probs(&logits, vocab, &picks);
        for (&(row, target), &(logprob, greedy)) in picks.iter().zip(&got) {
            let (want, first_max) = reference(&logits[row * vocab..][..vocab], target as usize);
            assert!((logprob - want).abs() < 1e-5, "row {row} target {target}: {logprob} vs {want}");
            assert_eq!(greedy, first_max == target as usize, "row {row} target {target}");
        }
        assert_eq!(got.iter().filter(|&&(_, greedy)| greedy).count(), 1, "only the first of a tie is the argmax");
    }
}
