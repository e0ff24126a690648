//! SwiGLU feed-forward as OpenLM computes it: `w12` -> split into gate, up -> `silu(gate) * up` -> `w3`.

use super::linear::{Linear, LinearGrads, LinearParams};
use super::{rows_of, BufLen};
use crate::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwiGlu {
    pub width: usize,
    pub hidden: usize,
}

pub struct SwiGluParams<'a, D: Device> {
    /// `[2*hidden, width]`, rows: gate then up.
    pub w12: &'a D::Buf,
    /// `[width, hidden]`.
    pub w3: &'a D::Buf,
}

pub struct SwiGluGrads<'a, D: Device> {
    pub w12: &'a mut D::Buf,
    pub w3: &'a mut D::Buf,
}

pub struct SwiGluActs<D: Device> {
    /// `[rows, 2*hidden]`.
    gate_up: D::Owned,
    /// `silu(gate) * up`, `[rows, hidden]`.
    hidden: D::Owned,
}

/// Backward temporaries; one can serve every SwiGLU layer of the same shape.
pub struct SwiGluScratch<D: Device> {
    dhidden: D::Owned,
    dgate_up: D::Owned,
}

impl SwiGlu {
    fn w12(&self) -> Linear {
        Linear { in_dim: self.width, out_dim: 2 * self.hidden, bias: false }
    }

    fn w3(&self) -> Linear {
        Linear { in_dim: self.hidden, out_dim: self.width, bias: false }
    }

    /// The buffers [`acts`](Self::acts) allocates: gate_up, hidden.
    pub fn acts_lens(&self, max_rows: usize) -> [BufLen; 2] {
        [BufLen::saved(max_rows * 2 * self.hidden), BufLen::saved(max_rows * self.hidden)]
    }

    pub fn acts<D: Device>(&self, dev: &D, max_rows: usize) -> SwiGluActs<D> {
        let [gate_up, hidden] = self.acts_lens(max_rows).map(|b| dev.zeros(b.len));
        SwiGluActs { gate_up, hidden }
    }

    /// The buffers [`scratch`](Self::scratch) allocates: dhidden, dgate_up.
    pub fn scratch_lens(&self, max_rows: usize) -> [BufLen; 2] {
        [BufLen::scratch(max_rows * self.hidden), BufLen::scratch(max_rows * 2 * self.hidden)]
    }

    pub fn scratch<D: Device>(&self, dev: &D, max_rows: usize) -> SwiGluScratch<D> {
        let [dhidden, dgate_up] = self.scratch_lens(max_rows).map(|b| dev.zeros(b.len));
        SwiGluScratch { dhidden, dgate_up }
    }

    /// `x`, `y`: `[rows, width]`.
    pub fn forward<D: Device>(
        &self,
        dev: &D,
        p: &SwiGluParams<D>,
        x: &D::Buf,
        acts: &mut SwiGluActs<D>,
        y: &mut D::Buf,
    ) {
        let rows = rows_of(dev, x, self.width, "swiglu");
        let gate_up = dev.slice_mut(&mut acts.gate_up, 0..rows * 2 * self.hidden);
        let hidden = dev.slice_mut(&mut acts.hidden, 0..rows * self.hidden);
        self.w12().forward(dev, &LinearParams { weight: p.w12, bias: None }, x, gate_up);
        dev.swiglu_forward(self.hidden, gate_up, hidden);
        self.w3().forward(dev, &LinearParams { weight: p.w3, bias: None }, hidden, y);
    }

    /// Writes `dx`, accumulates `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(
        &self,
        dev: &D,
        p: &SwiGluParams<D>,
        x: &D::Buf,
        acts: &SwiGluActs<D>,
        dy: &D::Buf,
        dx: &mut D::Buf,
        g: &mut SwiGluGrads<D>,
        scratch: &mut SwiGluScratch<D>,
    ) {
        let rows = rows_of(dev, x, self.width, "swiglu backward");
        let gate_up = dev.slice(&acts.gate_up, 0..rows * 2 * self.hidden);
        let hidden = dev.slice(&acts.hidden, 0..rows * self.hidden);
        let dhidden = dev.slice_mut(&mut scratch.dhidden, 0..rows * self.hidden);
        let dgate_up = dev.slice_mut(&mut scratch.dgate_up, 0..rows * 2 * self.hidden);
        let mut g3 = LinearGrads { weight: &mut *g.w3, bias: None };
        self.w3().backward(dev, &LinearParams { weight: p.w3, bias: None }, hidden, dy, Some(&mut *dhidden), &mut g3);
        dev.swiglu_backward(self.hidden, gate_up, dhidden, dgate_up);
        let mut g12 = LinearGrads { weight: &mut *g.w12, bias: None };
        self.w12().backward(dev, &LinearParams { weight: p.w12, bias: None }, x, dgate_up, Some(dx), &mut g12);
    }
}
