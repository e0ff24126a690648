//! Kernel parity: every [`Device`] method on the same seeded random inputs on two devices (the
//! CPU engine as reference, the CUDA device as candidate), compared output by output.
//!
//! Kernels one by one, then whole layers composing them as the models do. Outputs go to a sink as
//! they are computed and each section runs under `catch_unwind`, so a GPU run that faults or is
//! killed still reports every comparison made before.
//!
//! The error of one output is normwise, `max_i |got_i - want_i| / max_i |want_i|`, so values near
//! zero do not inflate it. [`outputs`] is generic over the device, so the harness itself is tested
//! here as CPU against CPU; `scripts/gpu-check.sh` runs it against a GPU (`vlmix-cuda-check`).

use std::any::Any;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use vlmix_cuda::Cuda;
use vlmix_engine::device::{AdamWStep, AttnShape, Device, GeluKind, Gemm, ZLossTerm};
use vlmix_engine::layers::{
    Attention, AttentionGrads, AttentionParams, LinearGrads, LinearParams, LmHead, NormGrads, NormKind, NormParams,
    SwiGlu, SwiGluGrads, SwiGluParams,
};
use vlmix_engine::safetensors_io::{write_f32_tensors, F32View, SafetensorsFile};

/// One compared output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub output: String,
    pub len: usize,
    pub error: f64,
    pub tolerance: f64,
    pub ok: bool,
}

/// Normwise relative error of `got` against `want` (0 for two empty or all-zero outputs, infinite
/// for a length mismatch or a non-finite value).
pub fn normwise_error(want: &[f32], got: &[f32]) -> f64 {
    if want.len() != got.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (&w, &g) in want.iter().zip(got) {
        if !g.is_finite() || !w.is_finite() {
            return f64::INFINITY;
        }
        diff = diff.max((w as f64 - g as f64).abs());
        scale = scale.max((w as f64).abs());
    }
    if diff == 0.0 {
        0.0
    } else {
        diff / scale.max(f64::MIN_POSITIVE)
    }
}

/// Seeded uniform values in `[-scale, scale]` (splitmix64), the same on every machine.
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Shapes of one parity run: several blocks per kernel, a head_dim that is not a power of two's
/// multiple of the block, causal and full attention.
const BATCH: usize = 3;
const SEQ: usize = 40;
const HEADS: usize = 4;
const HEAD_DIM: usize = 24;
const WIDTH: usize = HEADS * HEAD_DIM;
const ROWS: usize = BATCH * SEQ;
const HIDDEN: usize = 80;
const VOCAB: usize = 1000;

/// Hands named outputs of one device to a sink.
struct Out<'a, D: Device> {
    dev: &'a D,
    sink: &'a mut dyn FnMut(String, Vec<f32>),
}

impl<D: Device> Out<'_, D> {
    fn up(&self, host: &[f32]) -> D::Owned {
        self.dev.upload(host)
    }

    fn save(&mut self, name: &str, buf: &D::Buf) {
        let host = self.dev.to_host(buf).into_owned();
        (self.sink)(name.to_string(), host);
    }

    fn value(&mut self, name: &str, v: f64) {
        (self.sink)(name.to_string(), vec![v as f32]);
    }
}

fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    random(n, seed, 1.0).iter().map(|&x| ((x + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32).collect()
}

/// Every kernel's outputs on `dev`, on inputs that depend only on the seeds below. Panics if a
/// section does (the reference device's outputs must be complete).
pub fn outputs<D: Device>(dev: &D) -> Vec<(String, Vec<f32>)> {
    let mut all = Vec::new();
    let panics = each_output(dev, &mut |name, v| all.push((name, v)));
    assert!(panics.is_empty(), "parity sections panicked: {}", panics.join("; "));
    all
}

/// Every kernel's outputs on `dev`, handed to `sink` as computed; returns the sections that
/// panicked, as `section: message` (their earlier outputs were handed over).
pub fn each_output<D: Device>(dev: &D, sink: &mut dyn FnMut(String, Vec<f32>)) -> Vec<String> {
    type Section<D> = fn(&mut Out<D>);
    let sections: [(&str, Section<D>); 8] = [
        ("memory and elementwise", memory_and_elementwise),
        ("products", products),
        ("embedding and norms", embedding_and_norms),
        ("wide norms", wide_norms),
        ("attention", attention),
        ("activations, loss, optimizer", activations_loss_optimizer),
        ("wide cross-entropy", wide_cross_entropy),
        ("layers", layers),
    ];
    let mut panics = Vec::new();
    for (name, section) in sections {
        guarded(name, &mut panics, || section(&mut Out { dev, sink: &mut *sink }));
    }
    panics
}

/// Runs `f`, recording a panic as `name: message`.
fn guarded(name: &str, panics: &mut Vec<String>, f: impl FnOnce()) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        panics.push(format!("{name}: {}", panic_message(&*p)));
    }
}

pub fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// Prefix of the CUDA plain attention's outputs, compared with the reference's outputs of the same
/// name without it (the CPU's attention is the plain algorithm).
pub const PLAIN: &str = "plain ";

/// The CUDA plain attention path (which flash attention hands unsupported head dimensions to) on
/// the `attention` section's inputs, against the CPU, not only against flash.
pub fn plain_attention_outputs(cuda: &Cuda, sink: &mut dyn FnMut(String, Vec<f32>)) -> Vec<String> {
    let mut panics = Vec::new();
    guarded("plain attention", &mut panics, || {
        let mut o = Out { dev: cuda, sink };
        let n = ROWS * WIDTH;
        let (q, k, v, dout) = attention_inputs(&o);
        for causal in [true, false] {
            let shape = AttnShape { batch: BATCH, seq: SEQ, heads: HEADS, head_dim: HEAD_DIM, causal };
            let tag = if causal { "causal" } else { "full" };
            let (mut probs, mut out) = (cuda.zeros(shape.probs_len()), cuda.zeros(n));
            cuda.plain_attention_forward(shape, &q, &k, &v, &mut probs, &mut out);
            o.save(&format!("{PLAIN}attention {tag} forward"), &out);
            let (mut dq, mut dk, mut dv) = attention_grads(&o);
            cuda.plain_attention_backward(shape, &q, &k, &v, &probs, &dout, &mut dq, &mut dk, &mut dv);
            o.save(&format!("{PLAIN}attention {tag} backward dq"), &dq);
            o.save(&format!("{PLAIN}attention {tag} backward dk"), &dk);
            o.save(&format!("{PLAIN}attention {tag} backward dv"), &dv);
        }
    });
    panics
}

fn memory_and_elementwise<D: Device>(o: &mut Out<D>) {
    let d = o.dev;
    let n = ROWS * WIDTH;
    let (a, b) = (o.up(&random(n, 1, 1.0)), o.up(&random(n, 2, 1.0)));
    let mut x = d.zeros(n);
    d.fill(d.slice_mut(&mut x, 10..n - 3), 0.25);
    o.save("fill", &x);
    d.copy(d.slice(&a, 0..n / 2), d.slice_mut(&mut x, n / 2..n));
    o.save("copy", &x);
    d.upload_into(&random(100, 6, 1.0), d.slice_mut(&mut x, 7..107));
    o.save("upload_into", &x);
    let mut out = d.zeros(n);
    d.add(&a, &b, &mut out);
    o.save("add", &out);
    d.add_assign(&mut out, &a);
    o.save("add_assign", &out);
    d.scale(&mut out, -0.75);
    o.save("scale", &out);
    let bias = o.up(&random(WIDTH, 3, 1.0));
    d.add_bias(&mut out, &bias);
    o.save("add_bias", &out);
    let mut dbias = o.up(&random(WIDTH, 4, 1.0));
    d.bias_backward(&a, &mut dbias);
    o.save("bias_backward", &dbias);
    let sum = d.sum_squares(&[&a, d.slice(&b, 5..n)]);
    o.value("sum_squares", sum);
    let rows = [7, 0, 119, 7, 33];
    let mut gathered = d.zeros(rows.len() * WIDTH);
    d.gather_rows(&a, &rows, &mut gathered);
    o.save("gather_rows", &gathered);
    let mut target = o.up(&random(n, 5, 1.0));
    d.scatter_rows(&gathered, &[3, 1, 100, 50, 2], &mut target);
    o.save("scatter_rows", &target);
    d.zero_rows(&mut target, &rows, WIDTH);
    o.save("zero_rows", &target);
}

fn products<D: Device>(o: &mut Out<D>) {
    let d = o.dev;
    let (m, n, k) = (37, 53, 70);
    let a = o.up(&random(m * k + 200, 10, 1.0));
    let b = o.up(&random(k * n + 200, 11, 1.0));
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let mut c = o.up(&random(m * n, 12, 1.0));
        d.gemm(Gemm::new(ta, tb, m, n, k), &a, &b, &mut c);
        o.save(&format!("gemm {}{}", if ta { "T" } else { "N" }, if tb { "T" } else { "N" }), &c);
    }
    // Column blocks of wider matrices, alpha and accumulation.
    let g = Gemm::new(false, true, 20, 30, 16).strides(64, 48, 40).alpha(0.5).accumulate();
    let (a, b) = (o.up(&random(20 * 64, 13, 1.0)), o.up(&random(30 * 48, 14, 1.0)));
    let mut c = o.up(&random(20 * 40, 15, 1.0));
    d.gemm(g, d.slice(&a, 3..20 * 64), d.slice(&b, 5..30 * 48), &mut c);
    o.save("gemm strided alpha beta", &c);
}

fn embedding_and_norms<D: Device>(o: &mut Out<D>) {
    let d = o.dev;
    let tokens = ids(ROWS, VOCAB, 20);
    let table = o.up(&random(VOCAB * WIDTH, 21, 1.0));
    let mut x = d.zeros(ROWS * WIDTH);
    d.embedding_forward(&tokens, &table, &mut x);
    o.save("embedding_forward", &x);
    let dout = o.up(&random(ROWS * WIDTH, 22, 1.0));
    let mut dtable = o.up(&random(VOCAB * WIDTH, 23, 0.1));
    let repeated: Vec<u32> = tokens.iter().map(|t| t % 17).collect();
    d.embedding_backward(&repeated, &dout, &mut dtable);
    o.save("embedding_backward (repeated ids)", &dtable);

    norms(o, ROWS, WIDTH, "");
}

/// Widths whose rows take several warps (256 threads at 1024) and the 1024-thread blocks (beyond
/// 2048), as the models' widths do; the base section's width fits one warp.
fn wide_norms<D: Device>(o: &mut Out<D>) {
    for width in [1024, 3000] {
        norms(o, 6, width, &format!(" width {width}"));
    }
}

/// LayerNorm (with and without bias) and RMSNorm on `[rows, width]`, forward and backward; output
/// names end in `suffix`.
fn norms<D: Device>(o: &mut Out<D>, rows: usize, width: usize, suffix: &str) {
    let d = o.dev;
    let dout = o.up(&random(rows * width, 22, 1.0));
    let x = o.up(&random(rows * width, 24, 2.0).iter().map(|v| v + 0.5).collect::<Vec<_>>());
    let (w, bias) = (o.up(&random(width, 25, 1.0)), o.up(&random(width, 26, 1.0)));
    for with_bias in [true, false] {
        let tag = if with_bias { "layernorm" } else { "layernorm (no bias)" };
        let (mut out, mut mean, mut rstd) = (d.zeros(rows * width), d.zeros(rows), d.zeros(rows));
        d.layernorm_forward(&x, &w, with_bias.then_some(&*bias), 1e-5, &mut out, &mut mean, &mut rstd);
        o.save(&format!("{tag} forward{suffix}"), &out);
        o.save(&format!("{tag} mean{suffix}"), &mean);
        o.save(&format!("{tag} rstd{suffix}"), &rstd);
        let mut dx = d.zeros(rows * width);
        let (mut dw, mut db) = (o.up(&random(width, 27, 1.0)), o.up(&random(width, 28, 1.0)));
        let dbias = if with_bias { Some(&mut *db) } else { None };
        d.layernorm_backward(&dout, &x, &w, &mean, &rstd, &mut dx, &mut dw, dbias);
        o.save(&format!("{tag} backward dx{suffix}"), &dx);
        o.save(&format!("{tag} backward dweight{suffix}"), &dw);
        if with_bias {
            o.save(&format!("{tag} backward dbias{suffix}"), &db);
        }
    }
    let (mut out, mut rstd) = (d.zeros(rows * width), d.zeros(rows));
    d.rmsnorm_forward(&x, &w, 1e-6, &mut out, &mut rstd);
    o.save(&format!("rmsnorm forward{suffix}"), &out);
    o.save(&format!("rmsnorm rstd{suffix}"), &rstd);
    let (mut dx, mut dw) = (d.zeros(rows * width), o.up(&random(width, 29, 1.0)));
    d.rmsnorm_backward(&dout, &x, &w, &rstd, &mut dx, &mut dw);
    o.save(&format!("rmsnorm backward dx{suffix}"), &dx);
    o.save(&format!("rmsnorm backward dweight{suffix}"), &dw);
}

fn attention<D: Device>(o: &mut Out<D>) {
    let d = o.dev;
    let n = ROWS * WIDTH;
    let half = HEAD_DIM / 2;
    let mut table = vec![0.0f32; SEQ * HEAD_DIM];
    for pos in 0..SEQ {
        for j in 0..half {
            let angle = pos as f32 * 10_000f32.powf(-2.0 * j as f32 / HEAD_DIM as f32);
            table[pos * HEAD_DIM + j] = angle.cos();
            table[pos * HEAD_DIM + half + j] = angle.sin();
        }
    }
    let table = o.up(&table);
    let (q, k, v, dout) = attention_inputs(o);
    for causal in [true, false] {
        let shape = AttnShape { batch: BATCH, seq: SEQ, heads: HEADS, head_dim: HEAD_DIM, causal };
        let tag = if causal { "causal" } else { "full" };
        let mut x = d.zeros(n);
        d.copy(&q, &mut x);
        d.rope(&mut x, &table, shape, false);
        o.save(&format!("rope ({tag} pass)"), &x);
        d.rope(&mut x, &table, shape, true);
        o.save(&format!("rope inverse ({tag} pass)"), &x);
        // The saved buffer is the device's own (probabilities on the CPU, log-sum-exps under
        // flash attention), so only what the layers read from attention is compared.
        let (mut saved, mut out) = (d.zeros(d.attention_saved_len(shape)), d.zeros(n));
        d.attention_forward(shape, &q, &k, &v, &mut saved, &mut out);
        o.save(&format!("attention {tag} forward"), &out);
        let (mut dq, mut dk, mut dv) = attention_grads(o);
        d.attention_backward(shape, &q, &k, &v, &out, &saved, &dout, &mut dq, &mut dk, &mut dv);
        o.save(&format!("attention {tag} backward dq"), &dq);
        o.save(&format!("attention {tag} backward dk"), &dk);
        o.save(&format!("attention {tag} backward dv"), &dv);
    }
}

/// `q`, `k`, `v`, `dout` of the attention sections.
fn attention_inputs<D: Device>(o: &Out<D>) -> (D::Owned, D::Owned, D::Owned, D::Owned) {
    let n = ROWS * WIDTH;
    (o.up(&random(n, 30, 1.0)), o.up(&random(n, 31, 1.0)), o.up(&random(n, 32, 1.0)), o.up(&random(n, 33, 1.0)))
}

/// The gradients' initial contents (overwritten: a kernel that accumulates instead shows).
fn attention_grads<D: Device>(o: &Out<D>) -> (D::Owned, D::Owned, D::Owned) {
    let n = ROWS * WIDTH;
    (o.up(&random(n, 34, 1.0)), o.up(&random(n, 35, 1.0)), o.up(&random(n, 36, 1.0)))
}

/// The loss over the reference model's vocabulary: 1024-thread blocks, as every model's loss runs
/// (the base section's vocabulary takes 256).
fn wide_cross_entropy<D: Device>(o: &mut Out<D>) {
    let (rows, vocab) = (12, 8192);
    let targets = ids(rows, vocab, 45);
    let mask: Vec<f32> = (0..rows).map(|r| if r == 5 { 0.0 } else { 1.0 }).collect();
    let (mut l, mut nll) = (o.up(&random(rows * vocab, 46, 8.0)), o.dev.zeros(rows));
    let stats = o.dev.cross_entropy(&mut l, vocab, &targets, &mask, ZLossTerm::Masked(1e-4), Some(1.0), &mut nll);
    o.save("cross_entropy vocab 8192 logits/dlogits", &l);
    o.save("cross_entropy vocab 8192 nll", &nll);
    o.value("cross_entropy vocab 8192 loss", stats.loss as f64);
}

fn activations_loss_optimizer<D: Device>(o: &mut Out<D>) {
    let d = o.dev;
    let gate_up = o.up(&random(ROWS * 2 * HIDDEN, 40, 3.0));
    let dout = o.up(&random(ROWS * HIDDEN, 41, 1.0));
    let mut out = d.zeros(ROWS * HIDDEN);
    d.swiglu_forward(HIDDEN, &gate_up, &mut out);
    o.save("swiglu forward", &out);
    let mut dgu = d.zeros(ROWS * 2 * HIDDEN);
    d.swiglu_backward(HIDDEN, &gate_up, &dout, &mut dgu);
    o.save("swiglu backward", &dgu);
    let x = o.up(&random(ROWS * HIDDEN, 42, 4.0));
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        d.gelu_forward(kind, &x, &mut out);
        o.save(&format!("gelu {kind:?} forward"), &out);
        d.gelu_backward(kind, &x, &dout, &mut out);
        o.save(&format!("gelu {kind:?} backward"), &out);
    }

    let targets = ids(ROWS, VOCAB, 43);
    let mask: Vec<f32> = (0..ROWS).map(|r| if r % 5 == 3 { 0.0 } else { 1.0 }).collect();
    let logits = random(ROWS * VOCAB, 44, 8.0);
    let terms = [
        ("masked z-loss", ZLossTerm::Masked(1e-4), Some(0.5)),
        ("open_lm z-loss", ZLossTerm::SquaredMean { z: 1e-4, mean_lse: 7.5 }, Some(1.0)),
        ("no gradient", ZLossTerm::Masked(0.0), None),
    ];
    for (tag, z, grad) in terms {
        let (mut l, mut nll) = (o.up(&logits), d.zeros(ROWS));
        let stats = d.cross_entropy(&mut l, VOCAB, &targets, &mask, z, grad, &mut nll);
        o.save(&format!("cross_entropy {tag} logits/dlogits"), &l);
        o.save(&format!("cross_entropy {tag} nll"), &nll);
        o.value(&format!("cross_entropy {tag} loss"), stats.loss as f64);
        o.value(&format!("cross_entropy {tag} nll_sum"), stats.nll_sum);
    }

    let n = 5000;
    for decay in [Some(0.999), None] {
        let step = AdamWStep {
            neg_step_size: -1e-3 / (1.0 - 0.9f32.powi(3)),
            bias_correction2_sqrt: (1.0 - 0.95f32.powi(3)).sqrt(),
            one_minus_beta1: 0.1,
            beta2: 0.95,
            one_minus_beta2: 0.05,
            eps: 1e-8,
            decay,
        };
        let (mut p, g) = (o.up(&random(n, 50, 1.0)), o.up(&random(n, 51, 1.0)));
        let (mut m, mut v) =
            (o.up(&random(n, 52, 0.1)), o.up(&random(n, 53, 0.1).iter().map(|x| x.abs()).collect::<Vec<_>>()));
        d.adamw_step(&step, &mut p, &g, &mut m, &mut v);
        let tag = if decay.is_some() { "adamw (decay)" } else { "adamw" };
        o.save(&format!("{tag} param"), &p);
        o.save(&format!("{tag} exp_avg"), &m);
        o.save(&format!("{tag} exp_avg_sq"), &v);
    }
}

/// Whole layers, composing the kernels as the models do: OpenLM attention (QK-norm, rotary,
/// causal) and the SwiGLU MLP forward and backward with every gradient, and the chunked LM head
/// with its loss.
fn layers<D: Device>(o: &mut Out<D>) {
    let d = o.dev;
    let n = ROWS * WIDTH;
    let (x, dy) = (o.up(&random(n, 60, 1.0)), o.up(&random(n, 61, 1.0)));

    let att = Attention::openlm(WIDTH, HEADS, NormKind::LayerNorm, 1e-5);
    let (in_proj, out_proj) = (o.up(&random(3 * WIDTH * WIDTH, 62, 0.2)), o.up(&random(WIDTH * WIDTH, 63, 0.2)));
    let (qn, kn) = (o.up(&random(WIDTH, 64, 1.0)), o.up(&random(WIDTH, 65, 1.0)));
    let p = AttentionParams {
        in_proj: LinearParams { weight: &*in_proj, bias: None },
        q_norm: Some(NormParams { weight: &*qn, bias: None }),
        k_norm: Some(NormParams { weight: &*kn, bias: None }),
        out_proj: LinearParams { weight: &*out_proj, bias: None },
    };
    let (mut acts, mut scratch) = (att.acts(d, BATCH, SEQ), att.scratch(d, ROWS));
    let mut y = d.zeros(n);
    att.forward(d, &p, &x, BATCH, SEQ, &mut acts, &mut y);
    o.save("layer attention forward", &y);
    let mut dx = d.zeros(n);
    let (mut g_in, mut g_out) = (d.zeros(3 * WIDTH * WIDTH), d.zeros(WIDTH * WIDTH));
    let (mut g_qn, mut g_kn) = (d.zeros(WIDTH), d.zeros(WIDTH));
    let mut g = AttentionGrads {
        in_proj: LinearGrads { weight: &mut *g_in, bias: None },
        q_norm: Some(NormGrads { weight: &mut *g_qn, bias: None }),
        k_norm: Some(NormGrads { weight: &mut *g_kn, bias: None }),
        out_proj: LinearGrads { weight: &mut *g_out, bias: None },
    };
    att.backward(d, &p, &x, BATCH, SEQ, &acts, &dy, &mut dx, &mut g, &mut scratch);
    o.save("layer attention backward dx", &dx);
    o.save("layer attention backward in_proj", &g_in);
    o.save("layer attention backward q_norm", &g_qn);
    o.save("layer attention backward k_norm", &g_kn);
    o.save("layer attention backward out_proj", &g_out);

    let mlp = SwiGlu { width: WIDTH, hidden: HIDDEN };
    let (w12, w3) = (o.up(&random(2 * HIDDEN * WIDTH, 66, 0.2)), o.up(&random(WIDTH * HIDDEN, 67, 0.2)));
    let p = SwiGluParams { w12: &*w12, w3: &*w3 };
    let (mut acts, mut scratch) = (mlp.acts(d, ROWS), mlp.scratch(d, ROWS));
    mlp.forward(d, &p, &x, &mut acts, &mut y);
    o.save("layer swiglu forward", &y);
    let (mut g12, mut g3) = (d.zeros(2 * HIDDEN * WIDTH), d.zeros(WIDTH * HIDDEN));
    let mut g = SwiGluGrads { w12: &mut *g12, w3: &mut *g3 };
    mlp.backward(d, &p, &x, &acts, &dy, &mut dx, &mut g, &mut scratch);
    o.save("layer swiglu backward dx", &dx);
    o.save("layer swiglu backward w12", &g12);
    o.save("layer swiglu backward w3", &g3);

    // Chunks smaller than the rows, so several chunks accumulate the weight gradient.
    let head = LmHead { chunk_rows: 48, ..LmHead::new(WIDTH, VOCAB, 1e-4) };
    let weight = o.up(&random(VOCAB * WIDTH, 68, 0.2));
    let targets = ids(ROWS, VOCAB, 69);
    let mask: Vec<f32> = (0..ROWS).map(|r| if r % 7 == 2 { 0.0 } else { 1.0 }).collect();
    let mut scratch = head.scratch(d, ROWS);
    let mut dweight = d.zeros(VOCAB * WIDTH);
    let stats = head
        .forward_backward(d, &weight, &x, &targets, &mask, 0.5, &mut dx, &mut dweight, &mut scratch)
        .expect("lm head: valid targets");
    o.value("layer lm head loss", stats.loss as f64);
    o.save("layer lm head dx", &dx);
    o.save("layer lm head dweight", &dweight);
}

/// Compares `got` output by output against `reference` (by name); `tolerance(name)` gives each
/// bound. An output the reference lacks fails with an infinite error.
pub fn compare(
    reference: &HashMap<String, Vec<f32>>,
    got: Vec<(String, Vec<f32>)>,
    tolerance: impl Fn(&str) -> f64,
) -> Vec<Outcome> {
    got.into_iter().map(|(name, g)| compare_one(reference, name, &g, &tolerance)).collect()
}

/// One output against the reference's of the same name (less [`PLAIN`]).
pub fn compare_one(
    reference: &HashMap<String, Vec<f32>>,
    name: String,
    got: &[f32],
    tolerance: impl Fn(&str) -> f64,
) -> Outcome {
    let key = name.strip_prefix(PLAIN).unwrap_or(&name);
    let error = reference.get(key).map_or(f64::INFINITY, |w| normwise_error(w, got));
    let tolerance = tolerance(key);
    Outcome { ok: error <= tolerance, output: name, len: got.len(), error, tolerance }
}

/// Runs every kernel on both devices and compares each output.
pub fn run<R: Device, C: Device>(reference: &R, candidate: &C, tolerance: impl Fn(&str) -> f64) -> Vec<Outcome> {
    let want: HashMap<String, Vec<f32>> = outputs(reference).into_iter().collect();
    compare(&want, outputs(candidate), tolerance)
}

/// Writes a device's outputs (the CPU engine's, on a machine with OpenBLAS) for a GPU machine
/// that has none.
pub fn write_reference(path: &Path, outputs: &[(String, Vec<f32>)]) -> anyhow::Result<()> {
    let views = outputs.iter().map(|(name, v)| (name.clone(), F32View { shape: vec![v.len()], data: v }));
    let meta = HashMap::from([("what".to_string(), "vlmix CUDA kernel parity reference (CPU engine)".to_string())]);
    write_f32_tensors(path, views, Some(meta))
}

pub fn read_reference(path: &Path) -> anyhow::Result<HashMap<String, Vec<f32>>> {
    let file = SafetensorsFile::open(path)?;
    file.names().into_iter().map(|name| Ok((name.clone(), file.f32(&name)?.data))).collect()
}

/// Outputs that pass through a matrix product (rounded to bf16 under bf16 precision).
pub fn uses_products(output: &str) -> bool {
    ["gemm", "attention", "layer"].iter().any(|p| output.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normwise_error_scales_by_the_largest_reference_value() {
        assert_eq!(normwise_error(&[1.0, -4.0], &[1.0, -4.0]), 0.0);
        assert!((normwise_error(&[1.0, -4.0], &[1.2, -4.0]) - 0.05).abs() < 1e-6);
        assert_eq!(normwise_error(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(normwise_error(&[1.0], &[f32::NAN]), f64::INFINITY);
        assert_eq!(normwise_error(&[], &[]), 0.0);
    }

    #[test]
    fn random_is_seeded_and_bounded() {
        let a = random(1000, 7, 2.0);
        assert_eq!(a, random(1000, 7, 2.0));
        assert_ne!(a, random(1000, 8, 2.0));
        assert!(a.iter().all(|x| x.abs() <= 2.0));
        let mean = a.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.2, "mean {mean}");
    }
}
