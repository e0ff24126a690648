//! Two-layer GELU MLP with biases (`fc1` -> GELU -> `fc2`): ViT blocks and the VLM projector.

use super::linear::{Linear, LinearGrads, LinearParams};
use super::{rows_of, BufLen};
use crate::{Device, GeluKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeluMlp {
    pub in_dim: usize,
    pub hidden: usize,
    pub out_dim: usize,
    pub gelu: GeluKind,
}

pub struct GeluMlpParams<'a, D: Device> {
    /// Weight `[hidden, in_dim]`, bias `[hidden]`.
    pub fc1: LinearParams<'a, D>,
    /// Weight `[out_dim, hidden]`, bias `[out_dim]`.
    pub fc2: LinearParams<'a, D>,
}

pub struct GeluMlpGrads<'a, D: Device> {
    pub fc1: LinearGrads<'a, D>,
    pub fc2: LinearGrads<'a, D>,
}

pub struct GeluMlpActs<D: Device> {
    /// `fc1` output before GELU, `[rows, hidden]`.
    pre: D::Owned,
    /// After GELU, `[rows, hidden]`.
    act: D::Owned,
}

/// Backward temporaries; one can serve every MLP of the same shape.
pub struct GeluMlpScratch<D: Device> {
    dact: D::Owned,
    dpre: D::Owned,
}

impl GeluMlp {
    pub fn fc1(&self) -> Linear {
        Linear { in_dim: self.in_dim, out_dim: self.hidden, bias: true }
    }

    pub fn fc2(&self) -> Linear {
        Linear { in_dim: self.hidden, out_dim: self.out_dim, bias: true }
    }

    /// The buffers [`acts`](Self::acts) allocates: pre, act.
    pub fn acts_lens(&self, max_rows: usize) -> [BufLen; 2] {
        [BufLen::saved(max_rows * self.hidden); 2]
    }

    pub fn acts<D: Device>(&self, dev: &D, max_rows: usize) -> GeluMlpActs<D> {
        let [pre, act] = self.acts_lens(max_rows).map(|b| dev.zeros(b.len));
        GeluMlpActs { pre, act }
    }

    /// The buffers [`scratch`](Self::scratch) allocates: dact, dpre.
    pub fn scratch_lens(&self, max_rows: usize) -> [BufLen; 2] {
        [BufLen::scratch(max_rows * self.hidden); 2]
    }

    pub fn scratch<D: Device>(&self, dev: &D, max_rows: usize) -> GeluMlpScratch<D> {
        let [dact, dpre] = self.scratch_lens(max_rows).map(|b| dev.zeros(b.len));
        GeluMlpScratch { dact, dpre }
    }

    /// `x`: `[rows, in_dim]`, `y`: `[rows, out_dim]`.
    pub fn forward<D: Device>(
        &self,
        dev: &D,
        p: &GeluMlpParams<D>,
        x: &D::Buf,
        acts: &mut GeluMlpActs<D>,
        y: &mut D::Buf,
    ) {
        let rows = rows_of(dev, x, self.in_dim, "gelu mlp");
        let pre = dev.slice_mut(&mut acts.pre, 0..rows * self.hidden);
        let act = dev.slice_mut(&mut acts.act, 0..rows * self.hidden);
        self.fc1().forward(dev, &p.fc1, x, pre);
        dev.gelu_forward(self.gelu, pre, act);
        self.fc2().forward(dev, &p.fc2, act, y);
    }

    /// Writes `dx` when given (a projector's input is a frozen encoder's output); accumulates `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(
        &self,
        dev: &D,
        p: &GeluMlpParams<D>,
        x: &D::Buf,
        acts: &GeluMlpActs<D>,
        dy: &D::Buf,
        dx: Option<&mut D::Buf>,
        g: &mut GeluMlpGrads<D>,
        scratch: &mut GeluMlpScratch<D>,
    ) {
        let rows = rows_of(dev, x, self.in_dim, "gelu mlp backward");
        let pre = dev.slice(&acts.pre, 0..rows * self.hidden);
        let act = dev.slice(&acts.act, 0..rows * self.hidden);
        let dact = dev.slice_mut(&mut scratch.dact, 0..rows * self.hidden);
        let dpre = dev.slice_mut(&mut scratch.dpre, 0..rows * self.hidden);
        self.fc2().backward(dev, &p.fc2, act, dy, Some(&mut *dact), &mut g.fc2);
        dev.gelu_backward(self.gelu, pre, dact, dpre);
        self.fc1().backward(dev, &p.fc1, x, dpre, dx, &mut g.fc1);
    }
}
