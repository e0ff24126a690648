//! Masked softmax cross-entropy with z-loss, fused with its gradient: one pass finds the row
//! maximum, one computes the exponentials (in place when the gradient is wanted) and one scales
//! them into `dlogits`, so no `[rows, vocab]` buffer is allocated.

use rayon::prelude::*;

use super::math::{exp_shifted_in_place, exp_shifted_sum, max};
use super::par::rows_per_task;
use super::simd::multiversion;
use crate::device::LossStats;

/// What the gradient pass needs: the caller's scale and `1 / sum(mask)`.
#[derive(Clone, Copy)]
struct GradScale {
    scale: f32,
    inv_mask_sum: f32,
}

multiversion! {
    /// One block of rows; returns `(sum mask*(nll + z lse^2), sum mask*nll)`.
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
                let coef = row_scale * (1.0 + 2.0 * z_loss * lse) / sum;
                row.iter_mut().for_each(|x| *x *= coef);
                row[target] -= row_scale;
            }
        }
        (loss_sum, nll_sum)
    }
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    logits: &mut [f32],
    vocab: usize,
    targets: &[u32],
    mask: &[f32],
    z_loss: f32,
    grad_scale: Option<f32>,
    nll: &mut [f32],
) -> LossStats {
    let n = targets.len();
    assert!(vocab > 0 && logits.len() == n * vocab, "cross_entropy: logits are not [targets, vocab]");
    assert!(mask.len() == n && nll.len() >= n, "cross_entropy: mask / nll length");
    let mask_sum: f64 = mask.iter().map(|&m| m as f64).sum();
    let inv_mask_sum = if mask_sum > 0.0 { (1.0 / mask_sum) as f32 } else { 0.0 };
    let grad = grad_scale.map(|scale| GradScale { scale, inv_mask_sum });
    let per = rows_per_task(n, vocab);
    let (loss_sum, nll_sum) = logits
        .par_chunks_mut(per * vocab)
        .zip(nll[..n].par_chunks_mut(per))
        .zip(targets.par_chunks(per).zip(mask.par_chunks(per)))
        .map(|((block, nll), (targets, mask))| rows(block, nll, targets, mask, vocab, z_loss, grad))
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let loss = if mask_sum > 0.0 { (loss_sum / mask_sum) as f32 } else { 0.0 };
    LossStats { loss, nll_sum, mask_sum }
}
