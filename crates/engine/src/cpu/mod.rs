//! The CPU device: OpenBLAS for matrix products, rayon-parallel fused loops for everything else.
//!
//! One thread pool (rayon's) does all the work: OpenBLAS runs single-threaded and `gemm` splits
//! large products across rayon threads itself. Mixing two pools on few cores costs more than it
//! gives, because OpenBLAS's idle workers spin while rayon runs the elementwise kernels, and the
//! small per-head attention products run best as independent single-threaded calls.

mod activation;
mod adamw;
mod attention;
mod cross_entropy;
mod elementwise;
mod embedding;
mod gemm;
mod math;
mod norm;
mod par;
mod rope;
pub mod simd;

pub use cross_entropy::target_log_probs;

use std::borrow::Cow;
use std::ops::Range;

use crate::blas;
use crate::device::{
    AdamWStep, AttnShape, Device, DeviceMemory, GeluKind, Gemm, LossStats, OnDevice, SavedAttention, ZLossTerm,
};

/// The CPU device. Cheap to construct; all state is global (OpenBLAS and the rayon pool).
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    _loaded: (),
}

impl Cpu {
    /// Loads OpenBLAS (error names the fix when it is missing) and makes it single-threaded; checks
    /// that a SIMD level forced by `VLMIX_SIMD` is one this CPU has.
    pub fn new() -> anyhow::Result<Self> {
        blas::init().map_err(anyhow::Error::msg)?;
        blas::set_num_threads(1);
        simd::try_level()?;
        Ok(Cpu { _loaded: () })
    }
}

impl Device for Cpu {
    type Buf = [f32];
    type Owned = Vec<f32>;

    fn memory(&self) -> DeviceMemory {
        // The attention backward keeps one [seq, seq] buffer per rayon thread (`attention.rs`).
        DeviceMemory {
            saved_attention: SavedAttention::Probabilities,
            attention_workers: rayon::current_num_threads(),
            available_from: "MemAvailable",
        }
    }

    fn available_memory(&self) -> anyhow::Result<u64> {
        crate::machine::available_memory()
    }

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn upload(&self, host: &[f32]) -> Vec<f32> {
        host.to_vec()
    }

    fn download(&self, buf: &[f32], host: &mut [f32]) {
        host.copy_from_slice(buf);
    }

    fn len(&self, buf: &[f32]) -> usize {
        buf.len()
    }

    fn slice<'a>(&self, buf: &'a [f32], range: Range<usize>) -> &'a [f32] {
        &buf[range]
    }

    fn slice_mut<'a>(&self, buf: &'a mut [f32], range: Range<usize>) -> &'a mut [f32] {
        &mut buf[range]
    }

    fn split_at_mut<'a>(&self, buf: &'a mut [f32], mid: usize) -> (&'a mut [f32], &'a mut [f32]) {
        buf.split_at_mut(mid)
    }

    fn fill(&self, buf: &mut [f32], value: f32) {
        elementwise::fill(buf, value);
    }

    fn copy(&self, src: &[f32], dst: &mut [f32]) {
        elementwise::copy(src, dst);
    }

    fn upload_into(&self, host: &[f32], buf: &mut [f32]) {
        buf.copy_from_slice(host);
    }

    fn upload_vec(&self, host: Vec<f32>) -> Vec<f32> {
        host
    }

    fn to_host<'a>(&self, buf: &'a [f32]) -> Cow<'a, [f32]> {
        Cow::Borrowed(buf)
    }

    fn on_device<'a>(&self, host: &'a [f32]) -> OnDevice<'a, Self> {
        OnDevice::Borrowed(host)
    }

    fn gather_rows(&self, src: &[f32], rows: &[usize], dst: &mut [f32]) {
        elementwise::gather_rows(src, rows, dst);
    }

    fn scatter_rows(&self, src: &[f32], rows: &[usize], dst: &mut [f32]) {
        elementwise::scatter_rows(src, rows, dst);
    }

    fn zero_rows(&self, buf: &mut [f32], rows: &[usize], width: usize) {
        elementwise::zero_rows(buf, rows, width);
    }

    fn gemm(&self, g: Gemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        gemm::gemm(g, a, b, c);
    }

    fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) {
        elementwise::add(a, b, out);
    }

    fn add_assign(&self, acc: &mut [f32], x: &[f32]) {
        elementwise::add_assign(acc, x);
    }

    fn add_bias(&self, y: &mut [f32], bias: &[f32]) {
        elementwise::add_bias(y, bias);
    }

    fn bias_backward(&self, dy: &[f32], dbias: &mut [f32]) {
        elementwise::bias_backward(dy, dbias);
    }

    fn scale(&self, x: &mut [f32], s: f32) {
        elementwise::scale(x, s);
    }

    fn sum_squares(&self, bufs: &[&[f32]]) -> f64 {
        elementwise::sum_squares(bufs)
    }

    fn adamw_step(
        &self,
        step: &AdamWStep,
        param: &mut [f32],
        grad: &[f32],
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
    ) {
        adamw::step(step, param, grad, exp_avg, exp_avg_sq);
    }

    fn embedding_forward(&self, ids: &[u32], table: &[f32], out: &mut [f32]) {
        embedding::forward(ids, table, out);
    }

    fn embedding_backward(&self, ids: &[u32], dout: &[f32], dtable: &mut [f32]) {
        embedding::backward(ids, dout, dtable);
    }

    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(
        &self,
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        eps: f32,
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        norm::layernorm_forward(x, weight, bias, eps, out, mean, rstd);
    }

    fn layernorm_backward(
        &self,
        dout: &[f32],
        x: &[f32],
        weight: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        dweight: &mut [f32],
        dbias: Option<&mut [f32]>,
    ) {
        norm::layernorm_backward(dout, x, weight, mean, rstd, dx, dweight, dbias);
    }

    fn rmsnorm_forward(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32], rstd: &mut [f32]) {
        norm::rmsnorm_forward(x, weight, eps, out, rstd);
    }

    fn rmsnorm_backward(
        &self,
        dout: &[f32],
        x: &[f32],
        weight: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        dweight: &mut [f32],
    ) {
        norm::rmsnorm_backward(dout, x, weight, rstd, dx, dweight);
    }

    fn rope(&self, x: &mut [f32], cos_sin: &[f32], shape: AttnShape, inverse: bool) {
        rope::rope(x, cos_sin, shape, inverse);
    }

    fn attention_forward(&self, shape: AttnShape, q: &[f32], k: &[f32], v: &[f32], saved: &mut [f32], out: &mut [f32]) {
        attention::forward(shape, q, k, v, saved, out);
    }

    fn attention_continuing(
        &self,
        shape: AttnShape,
        starts: &[usize],
        cont: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) {
        attention::continuing(shape, starts, cont, q, k, v, out);
    }

    fn attention_backward(
        &self,
        shape: AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        _out: &[f32],
        saved: &[f32],
        dout: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        attention::backward(shape, q, k, v, saved, dout, dq, dk, dv);
    }

    fn swiglu_forward(&self, hidden: usize, gate_up: &[f32], out: &mut [f32]) {
        activation::swiglu_forward(hidden, gate_up, out);
    }

    fn swiglu_backward(&self, hidden: usize, gate_up: &[f32], dout: &[f32], dgate_up: &mut [f32]) {
        activation::swiglu_backward(hidden, gate_up, dout, dgate_up);
    }

    fn gelu_forward(&self, kind: GeluKind, x: &[f32], out: &mut [f32]) {
        activation::gelu_forward(kind, x, out);
    }

    fn gelu_backward(&self, kind: GeluKind, x: &[f32], dout: &[f32], dx: &mut [f32]) {
        activation::gelu_backward(kind, x, dout, dx);
    }

    fn cross_entropy(
        &self,
        logits: &mut [f32],
        vocab: usize,
        targets: &[u32],
        mask: &[f32],
        z_loss: ZLossTerm,
        grad_scale: Option<f32>,
        nll: &mut [f32],
    ) -> LossStats {
        cross_entropy::cross_entropy(logits, vocab, targets, mask, z_loss, grad_scale, nll)
    }
}
