//! Masked softmax cross-entropy with z-loss, fused with its gradient written over the logits
//! (llm.c's `fused_classifier`): one block per row. The per-row NLL and log-sum-exp come back to
//! the host, which sums the loss in f64 in row order, as the CPU engine does.

use super::buf::CudaBuf;
use super::compile::Family;
use super::launch::{self, launch};
use super::Inner;
use vlmix_engine::device::{LossStats, ZLossTerm};

pub const FAMILY: Family = Family { name: "cross_entropy", src: SRC, kernels: &["cross_entropy"] };

const SRC: &str = r#"
/* want_grad: overwrite the row with scale * dloss/dlogits, where row_scale = scale * mask / sum(mask)
   and squared_mean is open_lm's z-loss weight on every row's softmax. */
extern "C" __global__ void cross_entropy(float* logits, int vocab, const u32* targets, const float* mask, float z_loss,
                                         int want_grad, float scale, float inv_mask_sum, float squared_mean,
                                         float* nll, float* lse_out) {
    i64 row = blockIdx.x;
    float* x = logits + row * vocab;
    u32 t = targets[row];
    /* every thread reads the target logit before the reductions' barriers; writes come after them */
    float target_logit = x[t];
    float m = NEG_INF;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, x[j]);
    m = block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(x[j] - m);
    s = block_sum(s);
    float lse = m + logf(s);
    if (threadIdx.x == 0) { nll[row] = lse - target_logit; lse_out[row] = lse; }
    if (want_grad) {
        float row_scale = scale * mask[row] * inv_mask_sum;
        float coef = (row_scale * (1.0f + 2.0f * z_loss * lse) + squared_mean) / s;
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
            float g = expf(x[j] - m) * coef;
            x[j] = j == (int)t ? g - row_scale : g;
        }
    }
}
"#;

/// The scalars of one call, as the CPU engine derives them: `(masked z, inv_mask_sum,
/// squared_mean weight, mask_sum)`.
pub fn scalars(mask: &[f32], z_loss: ZLossTerm, grad_scale: Option<f32>) -> (f32, f32, f32, f64) {
    let n = mask.len();
    let mask_sum: f64 = mask.iter().map(|&m| m as f64).sum();
    let inv_mask_sum = if mask_sum > 0.0 { (1.0 / mask_sum) as f32 } else { 0.0 };
    let (masked_z, squared_mean) = match z_loss {
        ZLossTerm::Masked(z) => (z, 0.0),
        ZLossTerm::SquaredMean { z, mean_lse } => {
            (0.0, grad_scale.map_or(0.0, |s| s * 2.0 * z * mean_lse / n.max(1) as f32))
        }
    };
    (masked_z, inv_mask_sum, squared_mean, mask_sum)
}

/// The loss from per-row NLL and log-sum-exp, summed in row order in f64.
pub fn loss_stats(nll: &[f32], lse: &[f32], mask: &[f32], z_loss: ZLossTerm, mask_sum: f64) -> LossStats {
    let masked_z = match z_loss {
        ZLossTerm::Masked(z) => z as f64,
        ZLossTerm::SquaredMean { .. } => 0.0,
    };
    let (mut loss_sum, mut nll_sum) = (0.0f64, 0.0f64);
    for ((&nll, &lse), &m) in nll.iter().zip(lse).zip(mask) {
        loss_sum += m as f64 * (nll as f64 + masked_z * lse as f64 * lse as f64);
        nll_sum += m as f64 * nll as f64;
    }
    let mut loss = if mask_sum > 0.0 { (loss_sum / mask_sum) as f32 } else { 0.0 };
    if let ZLossTerm::SquaredMean { z, mean_lse } = z_loss {
        loss += z * mean_lse * mean_lse;
    }
    LossStats { loss, nll_sum, mask_sum }
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    dev: &Inner,
    logits: &mut CudaBuf,
    vocab: usize,
    targets: &[u32],
    mask: &[f32],
    z_loss: ZLossTerm,
    grad_scale: Option<f32>,
    nll: &mut CudaBuf,
) -> LossStats {
    let n = targets.len();
    assert!(vocab > 0 && logits.len() == n * vocab, "cross_entropy: logits are not [targets, vocab]");
    assert!(mask.len() == n && nll.len() >= n, "cross_entropy: mask / nll length");
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        panic!("cross_entropy: target {t} >= vocab {vocab}");
    }
    let (masked_z, inv_mask_sum, squared_mean, mask_sum) = scalars(mask, z_loss, grad_scale);
    if n == 0 {
        return loss_stats(&[], &[], &[], z_loss, mask_sum);
    }
    let (t_dev, m_dev) = (dev.upload_temp(targets), dev.upload_temp(mask));
    let lse_dev = dev.temp_bytes(n * 4);
    let (x, v, t, m, z) = (logits.addr(), vocab as i32, t_dev.addr, m_dev.addr, masked_z);
    let (want, scale, nl, ls) = (grad_scale.is_some() as i32, grad_scale.unwrap_or(0.0), nll.addr(), lse_dev.addr);
    let cfg = launch::rows(n, vocab);
    launch!(dev, FAMILY, "cross_entropy", cfg, x, v, t, m, z, want, scale, inv_mask_sum, squared_mean, nl, ls);
    let (mut nll_host, mut lse_host) = (vec![0.0f32; n], vec![0.0f32; n]);
    dev.download_raw(nll.addr(), &mut nll_host);
    dev.download_raw(lse_dev.addr, &mut lse_host);
    loss_stats(&nll_host, &lse_host, mask, z_loss, mask_sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_matches_the_definition() {
        // Two rows, the second masked out: loss = nll0 + z lse0^2.
        let s = loss_stats(&[2.0, 5.0], &[3.0, 4.0], &[1.0, 0.0], ZLossTerm::Masked(0.1), 1.0);
        assert!((s.loss - (2.0 + 0.1 * 9.0)).abs() < 1e-6, "{s:?}");
        assert_eq!((s.nll_sum, s.mask_sum), (2.0, 1.0));
        let s = loss_stats(&[2.0], &[3.0], &[1.0], ZLossTerm::SquaredMean { z: 0.5, mean_lse: 2.0 }, 1.0);
        assert!((s.loss - (2.0 + 0.5 * 4.0)).abs() < 1e-6, "{s:?}");
        assert_eq!(loss_stats(&[1.0], &[1.0], &[0.0], ZLossTerm::Masked(0.0), 0.0).loss, 0.0);
    }

    #[test]
    fn scalars_follow_the_z_loss_rule() {
        let (z, inv, sq, sum) = scalars(&[1.0, 1.0, 0.0, 2.0], ZLossTerm::Masked(1e-4), Some(2.0));
        assert_eq!((z, inv, sq, sum), (1e-4, 0.25, 0.0, 4.0));
        let (z, _, sq, _) = scalars(&[1.0; 4], ZLossTerm::SquaredMean { z: 0.5, mean_lse: 3.0 }, Some(2.0));
        assert_eq!((z, sq), (0.0, 2.0 * 2.0 * 0.5 * 3.0 / 4.0));
        assert_eq!(scalars(&[1.0], ZLossTerm::SquaredMean { z: 0.5, mean_lse: 3.0 }, None).2, 0.0);
    }
}
