//! Gradient accumulation over micro-batches, normalised as one pass over the global batch would be.
//!
//! The loss is a mean over unmasked tokens, and fine-tuning masks leave micro-batches with different
//! token counts, so each micro-batch's mean is weighted by its share of the batch's unmasked tokens
//! (`grad_scale = m_i / M`): the accumulated gradient and the returned loss equal the full batch's
//! mean over all its unmasked tokens, whatever the micro-batch size.

use std::ops::Range;

use anyhow::Result;
use vlmix_engine::LossStats;

/// Runs `step(sequences, grad_scale)` over consecutive ranges of at most `micro` of the sequences
/// `rows` of a `batch`-sequence batch and returns their part of the batch's mean loss.
/// `mask_sum(range)` is the loss-mask sum of those sequences; ranges without unmasked tokens are
/// skipped (their gradient is zero). `rows` is the whole batch in a single process and this rank's
/// slice in a data-parallel job (the trainer's `World::shard`); either way each range is weighted
/// by the whole batch's tokens, so gradients and loss are this rank's part of a sum over ranks.
pub fn accumulate(
    batch: usize,
    rows: Range<usize>,
    micro: usize,
    mask_sum: impl Fn(Range<usize>) -> f64,
    mut step: impl FnMut(Range<usize>, f32) -> Result<LossStats>,
) -> Result<f32> {
    let total = mask_sum(0..batch);
    if total <= 0.0 {
        return Ok(0.0);
    }
    let mut loss = 0.0f64;
    for start in rows.clone().step_by(micro.max(1)) {
        let range = start..(start + micro.max(1)).min(rows.end);
        let share = mask_sum(range.clone()) / total;
        if share > 0.0 {
            loss += step(range, share as f32)?.loss as f64 * share;
        }
    }
    Ok(loss as f32)
}

/// Sum of `mask` over sequences `range` of length `seq`.
pub fn mask_sum(mask: &[f32], seq: usize, range: Range<usize>) -> f64 {
    mask[range.start * seq..range.end * seq].iter().map(|&m| m as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_unmasked_tokens_and_empty_ranges_are_skipped() {
        // Four sequences of two positions; the third has no unmasked token.
        let mask = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let mut calls = Vec::new();
        let loss = accumulate(
            4,
            0..4,
            1,
            |r| mask_sum(&mask, 2, r),
            |r, scale| {
                calls.push((r.start, scale));
                Ok(LossStats { loss: r.start as f32, nll_sum: 0.0, mask_sum: 0.0 })
            },
        )
        .unwrap();
        assert_eq!(calls, vec![(0, 0.4), (1, 0.2), (3, 0.4)]);
        // Mean of per-sequence means weighted by tokens: (0*2 + 1*1 + 3*2) / 5.
        assert!((loss - 7.0 / 5.0).abs() < 1e-6, "{loss}");
        let whole = accumulate(
            4,
            0..4,
            8,
            |r| mask_sum(&mask, 2, r),
            |r, scale| {
                assert_eq!((r, scale), (0..4, 1.0));
                Ok(LossStats { loss: 2.5, nll_sum: 0.0, mask_sum: 0.0 })
            },
        );
        assert_eq!(whole.unwrap(), 2.5);
        assert_eq!(accumulate(4, 0..4, 2, |_| 0.0, |_, _| unreachable!("nothing to learn from")).unwrap(), 0.0);
        // A rank's slice runs only its sequences, weighted by the whole batch's tokens.
        let mut ranges = Vec::new();
        let part = accumulate(
            4,
            2..4,
            1,
            |r| mask_sum(&mask, 2, r),
            |r, scale| {
                ranges.push((r.clone(), scale));
                Ok(LossStats { loss: 1.0, nll_sum: 0.0, mask_sum: 0.0 })
            },
        )
        .unwrap();
        assert_eq!(ranges, vec![(3..4, 0.4)]);
        assert!((part - 0.4).abs() < 1e-6, "{part}");
    }
}
