//! Masked softmax cross-entropy with z-loss, fused with its gradient: one pass computes the row
//! maximum, one pass the exponentials (kept in place when the gradient is wanted) and one pass
//! scales them into `dlogits`, so no `[rows, vocab]` buffer is allocated.

use rayon::prelude::*;

use super::math::exp;
use super::par::rows_per_task;
use crate::device::LossStats;

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
    let rows = targets.len();
    assert!(vocab > 0 && logits.len() == rows * vocab, "cross_entropy: logits are not [targets, vocab]");
    assert!(mask.len() == rows && nll.len() >= rows, "cross_entropy: mask / nll length");
    let mask_sum: f64 = mask.iter().map(|&m| m as f64).sum();
    let inv_mask_sum = if mask_sum > 0.0 { (1.0 / mask_sum) as f32 } else { 0.0 };
    let per = rows_per_task(rows, vocab);
    let (loss_sum, nll_sum) = logits
        .par_chunks_mut(per * vocab)
        .zip(nll[..rows].par_chunks_mut(per))
        .zip(targets.par_chunks(per).zip(mask.par_chunks(per)))
        .map(|((block, nll), (targets, mask))| {
            let mut loss_sum = 0.0f64;
            let mut nll_sum = 0.0f64;
            for (((row, nll), &target), &m) in block.chunks_exact_mut(vocab).zip(nll).zip(targets).zip(mask) {
                let target = target as usize;
                assert!(target < vocab, "cross_entropy: target {target} >= vocab {vocab}");
                let target_logit = row[target];
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let sum: f32 = match grad_scale {
                    Some(_) => {
                        let mut s = 0.0f32;
                        for x in row.iter_mut() {
                            *x = exp(*x - max);
                            s += *x;
                        }
                        s
                    }
                    None => row.iter().map(|&x| exp(x - max)).sum(),
                };
                let lse = max + sum.ln();
                *nll = lse - target_logit;
                loss_sum += m as f64 * (*nll as f64 + z_loss as f64 * lse as f64 * lse as f64);
                nll_sum += m as f64 * *nll as f64;
                if let Some(scale) = grad_scale {
                    let row_scale = scale * m * inv_mask_sum;
                    let coef = row_scale * (1.0 + 2.0 * z_loss * lse) / sum;
                    row.iter_mut().for_each(|x| *x *= coef);
                    row[target] -= row_scale;
                }
            }
            (loss_sum, nll_sum)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let loss = if mask_sum > 0.0 { (loss_sum / mask_sum) as f32 } else { 0.0 };
    LossStats { loss, nll_sum, mask_sum }
}
