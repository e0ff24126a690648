//! Masked cross-entropy with optional z-loss (OpenLM uses 1e-4):
//! `loss = sum_t mask_t * (CE_t + z * lse_t^2) / sum_t mask_t`.
//! The mask is f32 so answer-only fine-tuning (0/1) and per-token weights both fit.

use anyhow::{bail, Result};

use super::rows_of;
use crate::{Device, LossStats};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    pub vocab: usize,
    pub z_loss: f32,
}

impl CrossEntropy {
    fn check<D: Device>(&self, dev: &D, logits: &D::Buf, targets: &[u32], mask: &[f32], nll: &D::Buf) -> Result<()> {
        let rows = rows_of(dev, logits, self.vocab, "cross entropy");
        if targets.len() != rows || mask.len() != rows {
            bail!("cross entropy: {rows} logit rows but {} targets and {} mask values", targets.len(), mask.len());
        }
        if let Some((pos, t)) = targets.iter().enumerate().find(|(_, &t)| t as usize >= self.vocab) {
            bail!("target token {t} at position {pos} is outside the vocabulary of {}", self.vocab);
        }
        if let Some((pos, m)) = mask.iter().enumerate().find(|(_, m)| !(m.is_finite() && **m >= 0.0)) {
            bail!("loss mask value {m} at position {pos} is not a finite non-negative number");
        }
        assert!(dev.len(nll) >= rows, "cross entropy: nll buffer shorter than {rows} rows");
        Ok(())
    }

    /// Loss only; `logits` (`[rows, vocab]`) are left unchanged. Per-row NLL goes to `nll`.
    pub fn forward<D: Device>(
        &self,
        dev: &D,
        logits: &mut D::Buf,
        targets: &[u32],
        mask: &[f32],
        nll: &mut D::Buf,
    ) -> Result<LossStats> {
        self.check(dev, logits, targets, mask, nll)?;
        Ok(dev.cross_entropy(logits, self.vocab, targets, mask, self.z_loss, None, nll))
    }

    /// Loss, and `logits` overwritten with `grad_scale * dloss/dlogits` (use `grad_scale` = 1/k to
    /// average over k accumulated micro-batches).
    pub fn forward_backward<D: Device>(
        &self,
        dev: &D,
        logits: &mut D::Buf,
        targets: &[u32],
        mask: &[f32],
        grad_scale: f32,
        nll: &mut D::Buf,
    ) -> Result<LossStats> {
        self.check(dev, logits, targets, mask, nll)?;
        Ok(dev.cross_entropy(logits, self.vocab, targets, mask, self.z_loss, Some(grad_scale), nll))
    }
}
