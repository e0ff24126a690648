//! Masked cross-entropy with optional z-loss (OpenLM uses 1e-4), by one of two rules:
//! - `masked`: `loss = sum_t mask_t * (CE_t + z * lse_t^2) / sum_t mask_t`;
//! - `openlm` (open_lm's `CrossEntropyLossWithZLoss`): `sum_t mask_t CE_t / sum_t mask_t +
//!   z * (sum_t lse_t / rows)^2`, the z-term over every row, masked ones included.
//!
//! The mask is f32 so answer-only fine-tuning (0/1) and per-token weights both fit.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::rows_of;
use crate::{Device, LossStats, ZLossTerm};

/// Which positions the z-loss averages over (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZLossRule {
    /// The same positions as the cross-entropy: `z * lse_t^2` in the masked mean.
    #[default]
    Masked,
    /// open_lm's (`losses.py`): `z * mean_t(lse_t)^2` over all positions, masked ones included
    /// (the square of the mean, not the mean of squares).
    #[serde(rename = "openlm")]
    OpenLm,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    pub vocab: usize,
    pub z_loss: f32,
    pub z_rule: ZLossRule,
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
        let z = self.z_term(dev, logits, targets, nll);
        Ok(dev.cross_entropy(logits, self.vocab, targets, mask, z, None, nll))
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
        let z = self.z_term(dev, logits, targets, nll);
        Ok(dev.cross_entropy(logits, self.vocab, targets, mask, z, Some(grad_scale), nll))
    }

    /// The z-term of one pass; open_lm's rule needs the mean log-sum-exp of all rows first, which a
    /// loss-only pass gives (`lse_t = nll_t + logit_t[target_t]`).
    fn z_term<D: Device>(&self, dev: &D, logits: &mut D::Buf, targets: &[u32], nll: &mut D::Buf) -> ZLossTerm {
        if self.z_rule == ZLossRule::Masked || self.z_loss == 0.0 {
            return ZLossTerm::Masked(self.z_loss);
        }
        let rows = targets.len();
        let all = vec![1.0f32; rows];
        dev.cross_entropy(logits, self.vocab, targets, &all, ZLossTerm::Masked(0.0), None, nll);
        let mut host = vec![0.0f32; rows];
        dev.download(dev.slice(nll, 0..rows), &mut host);
        let mut sum: f64 = host.iter().map(|&n| n as f64).sum();
        let mut target_logit = [0.0f32];
        for (r, &t) in targets.iter().enumerate() {
            let at = r * self.vocab + t as usize;
            dev.download(dev.slice(logits, at..at + 1), &mut target_logit);
            sum += target_logit[0] as f64;
        }
        ZLossTerm::SquaredMean { z: self.z_loss, mean_lse: (sum / rows.max(1) as f64) as f32 }
    }
}
