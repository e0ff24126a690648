//! Scaled dot-product attention saving probabilities: per batch row, one strided-batched cuBLASLt
//! product over all heads for the scores, a softmax kernel over `[heads, seq, seq]`, one product
//! for the output; the backward mirrors it with a per-batch `[heads, seq, seq]` scratch for
//! `dP`/`dS`.
//!
//! The saved probabilities are `[batch, heads, seq, seq]`: 2 GiB per layer for the 1.4B model at
//! seq 2048 and batch 8. So `Cuda`'s trait attention runs flash attention (`flash.rs`, saving
//! `[batch, heads, seq]` log-sum-exps) wherever its kernels take the head dimension, and this path
//! only for the others (and as the reference `vlmix-cuda-check attention` compares flash against).

use super::buf::CudaBuf;
use super::compile::Family;
use super::gemm::Batch;
use super::launch::{self, launch};
use super::Inner;
use vlmix_engine::device::{AttnShape, Gemm};

pub const FAMILY: Family = Family { name: "attention", src: SRC, kernels: &["softmax_forward", "softmax_backward"] };

const SRC: &str = r#"
/* One block per row of [rows, t] scores; query position i = row % t. Masked entries become 0. */
extern "C" __global__ void softmax_forward(float* p, int t, int causal) {
    i64 row = blockIdx.x;
    int valid = causal ? (int)(row % t) + 1 : t;
    float* x = p + row * t;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) m = fmaxf(m, x[j]);
    m = block_max(m);
    float s = 0.0f;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) { float e = expf(x[j] - m); x[j] = e; s += e; }
    float inv = 1.0f / block_sum(s);
    for (int j = threadIdx.x; j < t; j += blockDim.x) x[j] = j < valid ? x[j] * inv : 0.0f;
}

/* dS = P * (dP - rowsum(P * dP)) * scale, in place over dP. */
extern "C" __global__ void softmax_backward(const float* p, float* ds, int t, int causal, float scale) {
    i64 row = blockIdx.x;
    int valid = causal ? (int)(row % t) + 1 : t;
    const float* pr = p + row * t;
    float* d = ds + row * t;
    float s = 0.0f;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) s += pr[j] * d[j];
    float dot = block_sum(s);
    for (int j = threadIdx.x; j < t; j += blockDim.x) d[j] = j < valid ? pr[j] * (d[j] - dot) * scale : 0.0f;
}
"#;

fn check(shape: AttnShape, bufs: &[(&str, &CudaBuf)], probs: &CudaBuf) {
    let len = shape.rows() * shape.width();
    for (name, buf) in bufs {
        assert_eq!(buf.len(), len, "attention: {name} is not [batch*seq, heads*head_dim] for {shape:?}");
    }
    assert!(probs.len() >= shape.probs_len(), "attention: probs shorter than batch*heads*seq*seq for {shape:?}");
}

/// The per-batch-row products, heads batched: `(scores, P V, dS K, dS^T Q and P^T dO)`.
pub struct Products {
    pub scores: (Gemm, Batch),
    pub pv: (Gemm, Batch),
    pub ds_k: (Gemm, Batch),
    pub transposed: (Gemm, Batch),
}

pub fn products(shape: AttnShape) -> Products {
    let (t, d, hd, h) = (shape.seq, shape.width(), shape.head_dim, shape.heads);
    let scale = 1.0 / (hd as f32).sqrt();
    // Operands: heads hd apart in a row of width d; probabilities t*t apart.
    let heads = |stride_a, stride_b, stride_c| Batch { count: h, stride_a, stride_b, stride_c };
    Products {
        // S = scale Q K^T (and dP = dO V^T)
        scores: (Gemm::new(false, true, t, t, hd).alpha(scale).strides(d, d, t), heads(hd, hd, t * t)),
        // O = P V
        pv: (Gemm::new(false, false, t, hd, t).strides(t, d, d), heads(t * t, hd, hd)),
        // dQ = dS K
        ds_k: (Gemm::new(false, false, t, hd, t).strides(t, d, d), heads(t * t, hd, hd)),
        // dK = dS^T Q, dV = P^T dO
        transposed: (Gemm::new(true, false, t, hd, t).strides(t, d, d), heads(t * t, hd, hd)),
    }
}

pub fn forward(
    dev: &Inner,
    shape: AttnShape,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    probs: &mut CudaBuf,
    out: &mut CudaBuf,
) {
    check(shape, &[("q", q), ("k", k), ("v", v), ("out", out)], probs);
    if shape.rows() == 0 || shape.heads == 0 {
        return;
    }
    let (t, d, h) = (shape.seq, shape.width(), shape.heads);
    let p = products(shape);
    let bytes = |elems: usize| 4 * elems as u64;
    for b in 0..shape.batch {
        let (x, pb) = (bytes(b * t * d), probs.addr() + bytes(b * h * t * t));
        dev.gemms.run(dev, &p.scores.0, p.scores.1, q.addr() + x, k.addr() + x, pb);
    }
    let (pp, tt, causal) = (probs.addr(), t as i32, shape.causal as i32);
    launch!(dev, FAMILY, "softmax_forward", launch::rows(shape.batch * h * t, t), pp, tt, causal);
    for b in 0..shape.batch {
        let (x, pb) = (bytes(b * t * d), probs.addr() + bytes(b * h * t * t));
        dev.gemms.run(dev, &p.pv.0, p.pv.1, pb, v.addr() + x, out.addr() + x);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    dev: &Inner,
    shape: AttnShape,
    q: &CudaBuf,
    k: &CudaBuf,
    v: &CudaBuf,
    probs: &CudaBuf,
    dout: &CudaBuf,
    dq: &mut CudaBuf,
    dk: &mut CudaBuf,
    dv: &mut CudaBuf,
) {
    check(shape, &[("q", q), ("k", k), ("v", v), ("dout", dout), ("dq", dq), ("dk", dk), ("dv", dv)], probs);
    if shape.rows() == 0 || shape.heads == 0 {
        return;
    }
    let (t, d, h) = (shape.seq, shape.width(), shape.heads);
    let p = products(shape);
    let bytes = |elems: usize| 4 * elems as u64;
    let ds = dev.temp_bytes(4 * h * t * t);
    let (dsp, tt, causal, scale) = (ds.addr, t as i32, shape.causal as i32, 1.0 / (shape.head_dim as f32).sqrt());
    // dP = dO V^T has the scores' shape, without the scale (applied in the softmax backward).
    let dp = Gemm { alpha: 1.0, ..p.scores.0 };
    for b in 0..shape.batch {
        let (x, pb) = (bytes(b * t * d), probs.addr() + bytes(b * h * t * t));
        dev.gemms.run(dev, &dp, p.scores.1, dout.addr() + x, v.addr() + x, dsp);
        launch!(dev, FAMILY, "softmax_backward", launch::rows(h * t, t), pb, dsp, tt, causal, scale);
        dev.gemms.run(dev, &p.ds_k.0, p.ds_k.1, dsp, k.addr() + x, dq.addr() + x);
        dev.gemms.run(dev, &p.transposed.0, p.transposed.1, dsp, q.addr() + x, dk.addr() + x);
        dev.gemms.run(dev, &p.transposed.0, p.transposed.1, pb, dout.addr() + x, dv.addr() + x);
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm;
    use super::*;

    #[test]
    fn head_batches_stay_inside_one_batch_row() {
        let shape = AttnShape { batch: 2, seq: 16, heads: 4, head_dim: 8, causal: true };
        let p = products(shape);
        let row = shape.seq * shape.width();
        for (g, batch) in [p.scores, p.pv, p.ds_k, p.transposed] {
            let (a, b, c) = gemm::extents(&g, batch);
            let probs = shape.heads * shape.seq * shape.seq;
            for (ext, what) in [(a, "A"), (b, "B"), (c, "C")] {
                assert!(ext == row || ext == probs, "{what} spans {ext}, neither a batch row nor its probs");
            }
        }
        assert!((p.scores.0.alpha - 1.0 / 8f32.sqrt()).abs() < 1e-7);
    }
}
