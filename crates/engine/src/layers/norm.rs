//! Normalisation over the last dimension: LayerNorm gain-only (OpenLM), LayerNorm with bias (ViTs),
//! RMSNorm.

use super::{rows_of, BufLen};
use crate::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) * rstd * weight`, OpenLM's `gain_only_layer_norm`.
    LayerNorm,
    /// `(x - mean) * rstd * weight + bias`, `torch.nn.LayerNorm`.
    LayerNormBias,
    /// `x * rsqrt(mean(x^2) + eps) * weight`.
    RmsNorm,
}

impl NormKind {
    pub fn has_bias(self) -> bool {
        self == NormKind::LayerNormBias
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Norm {
    pub kind: NormKind,
    pub width: usize,
    pub eps: f32,
}

pub struct NormParams<'a, D: Device> {
    /// `[width]`.
    pub weight: &'a D::Buf,
    /// `[width]`, present exactly for [`NormKind::LayerNormBias`].
    pub bias: Option<&'a D::Buf>,
}

pub struct NormGrads<'a, D: Device> {
    pub weight: &'a mut D::Buf,
    pub bias: Option<&'a mut D::Buf>,
}

/// Per-row statistics saved for the backward.
pub struct NormActs<D: Device> {
    pub mean: D::Owned,
    pub rstd: D::Owned,
}

impl Norm {
    /// The buffers [`acts`](Self::acts) allocates: mean, rstd.
    pub fn acts_lens(&self, max_rows: usize) -> [BufLen; 2] {
        [BufLen::saved(max_rows); 2]
    }

    pub fn acts<D: Device>(&self, dev: &D, max_rows: usize) -> NormActs<D> {
        let [mean, rstd] = self.acts_lens(max_rows).map(|b| dev.zeros(b.len));
        NormActs { mean, rstd }
    }

    fn check<D: Device>(&self, dev: &D, weight: &D::Buf, has_bias: bool) {
        assert_eq!(dev.len(weight), self.width, "norm {self:?}: weight is not [width]");
        assert_eq!(has_bias, self.kind.has_bias(), "norm {self:?}: bias given iff the kind has one");
    }

    /// `x` and `out` are `[rows, width]`.
    pub fn forward<D: Device>(&self, dev: &D, p: &NormParams<D>, x: &D::Buf, acts: &mut NormActs<D>, out: &mut D::Buf) {
        self.check(dev, p.weight, p.bias.is_some());
        let rows = rows_of(dev, x, self.width, "norm");
        assert!(dev.len(&acts.rstd) >= rows, "norm: acts sized for {} rows, got {rows}", dev.len(&acts.rstd));
        let mean = dev.slice_mut(&mut acts.mean, 0..rows);
        match self.kind {
            NormKind::RmsNorm => {
                dev.rmsnorm_forward(x, p.weight, self.eps, out, dev.slice_mut(&mut acts.rstd, 0..rows))
            }
            _ => {
                dev.layernorm_forward(x, p.weight, p.bias, self.eps, out, mean, dev.slice_mut(&mut acts.rstd, 0..rows))
            }
        }
    }

    /// Writes `dx`, accumulates `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(
        &self,
        dev: &D,
        p: &NormParams<D>,
        x: &D::Buf,
        acts: &NormActs<D>,
        dout: &D::Buf,
        dx: &mut D::Buf,
        g: &mut NormGrads<D>,
    ) {
        self.check(dev, p.weight, g.bias.is_some());
        let rows = rows_of(dev, x, self.width, "norm backward");
        let rstd = dev.slice(&acts.rstd, 0..rows);
        match self.kind {
            NormKind::RmsNorm => dev.rmsnorm_backward(dout, x, p.weight, rstd, dx, g.weight),
            _ => {
                let mean = dev.slice(&acts.mean, 0..rows);
                dev.layernorm_backward(dout, x, p.weight, mean, rstd, dx, g.weight, g.bias.as_deref_mut())
            }
        }
    }
}
