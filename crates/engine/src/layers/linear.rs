//! Fully connected layer `y = x W^T (+ b)` with `W` stored `[out, in]` (PyTorch layout).

use super::rows_of;
use crate::{Device, Gemm};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub in_dim: usize,
    pub out_dim: usize,
    pub bias: bool,
}

pub struct LinearParams<'a, D: Device> {
    /// `[out_dim, in_dim]`.
    pub weight: &'a D::Buf,
    /// `[out_dim]`, present exactly when the layer has a bias.
    pub bias: Option<&'a D::Buf>,
}

pub struct LinearGrads<'a, D: Device> {
    pub weight: &'a mut D::Buf,
    pub bias: Option<&'a mut D::Buf>,
}

impl Linear {
    fn check_params<D: Device>(&self, dev: &D, weight: &D::Buf, has_bias: bool) {
        assert_eq!(dev.len(weight), self.in_dim * self.out_dim, "linear {self:?}: weight is not [out, in]");
        assert_eq!(has_bias, self.bias, "linear {self:?}: bias given iff the layer has one");
    }

    /// `x` is `[rows, in_dim]`, `y` is `[rows, out_dim]`.
    pub fn forward<D: Device>(&self, dev: &D, p: &LinearParams<D>, x: &D::Buf, y: &mut D::Buf) {
        self.check_params(dev, p.weight, p.bias.is_some());
        let rows = rows_of(dev, x, self.in_dim, "linear");
        assert_eq!(dev.len(y), rows * self.out_dim, "linear {self:?}: y is not [rows, out]");
        dev.gemm(Gemm::new(false, true, rows, self.out_dim, self.in_dim), x, p.weight, y);
        if let Some(b) = p.bias {
            assert_eq!(dev.len(b), self.out_dim, "linear {self:?}: bias is not [out]");
            dev.add_bias(y, b);
        }
    }

    /// Writes `dx` when given (skip it for a first layer); accumulates the weight and bias grads.
    pub fn backward<D: Device>(
        &self,
        dev: &D,
        p: &LinearParams<D>,
        x: &D::Buf,
        dy: &D::Buf,
        dx: Option<&mut D::Buf>,
        g: &mut LinearGrads<D>,
    ) {
        self.check_params(dev, p.weight, g.bias.is_some());
        let rows = rows_of(dev, x, self.in_dim, "linear backward");
        assert_eq!(dev.len(dy), rows * self.out_dim, "linear backward {self:?}: dy is not [rows, out]");
        assert_eq!(dev.len(g.weight), self.in_dim * self.out_dim, "linear backward {self:?}: dweight shape");
        if let Some(dx) = dx {
            dev.gemm(Gemm::new(false, false, rows, self.in_dim, self.out_dim), dy, p.weight, dx);
        }
        dev.gemm(Gemm::new(true, false, self.out_dim, self.in_dim, rows).accumulate(), dy, x, g.weight);
        if let Some(db) = g.bias.as_deref_mut() {
            dev.bias_backward(dy, db);
        }
    }
}
