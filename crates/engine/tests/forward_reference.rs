//! Forward semantics against independent f64 reference implementations written from the OpenLM /
//! PyTorch definitions (gradient checks alone cannot catch a wrong but self-consistent forward).

mod common;

use common::{cpu, rand_vec};
use vlmix_engine::layers::*;
use vlmix_engine::{AttnShape, Cpu, Device, GeluKind, Gemm};

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

/// `x [rows, inn] @ w[out, inn]^T + b`.
fn linear_ref(x: &[f64], w: &[f32], b: Option<&[f32]>, rows: usize, inn: usize, out: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for o in 0..out {
            let s: f64 = (0..inn).map(|i| x[r * inn + i] * w[o * inn + i] as f64).sum();
            y[r * out + o] = s + b.map_or(0.0, |b| b[o] as f64);
        }
    }
    y
}

fn layernorm_ref(x: &[f64], w: &[f32], width: usize, eps: f64) -> Vec<f64> {
    x.chunks(width)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / width as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
            row.iter().zip(w).map(move |(v, w)| (v - mean) / (var + eps).sqrt() * *w as f64).collect::<Vec<_>>()
        })
        .collect()
}

/// OpenLM CustomAttn, literally: in_proj, chunk, q/k norm, view heads, rotary (rotate_half with
/// cos/sin of cat(freqs, freqs)), softmax(q k^T / sqrt(hd)) with optional causal mask, out_proj.
#[allow(clippy::too_many_arguments)]
fn attention_ref(
    layer: &Attention,
    x: &[f32],
    batch: usize,
    seq: usize,
    in_w: &[f32],
    in_b: Option<&[f32]>,
    qn: Option<&[f32]>,
    kn: Option<&[f32]>,
    out_w: &[f32],
    out_b: Option<&[f32]>,
) -> Vec<f64> {
    let (d, h, hd) = (layer.width, layer.heads, layer.head_dim);
    let inner = h * hd;
    let rows = batch * seq;
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let qkv = linear_ref(&x64, in_w, in_b, rows, d, 3 * inner);
    let part = |j: usize| -> Vec<f64> {
        (0..rows).flat_map(|r| qkv[r * 3 * inner + j * inner..r * 3 * inner + (j + 1) * inner].to_vec()).collect()
    };
    let (mut q, mut k, v) = (part(0), part(1), part(2));
    if let (Some(qn), Some(kn)) = (qn, kn) {
        q = layernorm_ref(&q, qn, inner, layer.norm_eps as f64);
        k = layernorm_ref(&k, kn, inner, layer.norm_eps as f64);
    }
    if layer.rotary {
        for t in [&mut q, &mut k] {
            for r in 0..rows {
                let pos = (r % seq) as f64;
                for head in 0..h {
                    let base = r * inner + head * hd;
                    let orig: Vec<f64> = t[base..base + hd].to_vec();
                    for i in 0..hd {
                        let f = i % (hd / 2);
                        let angle = pos / 10000f64.powf(2.0 * f as f64 / hd as f64);
                        let rot = if i < hd / 2 { -orig[i + hd / 2] } else { orig[i - hd / 2] };
                        t[base + i] = orig[i] * angle.cos() + rot * angle.sin();
                    }
                }
            }
        }
    }
    let mut att = vec![0.0; rows * inner];
    for b in 0..batch {
        for head in 0..h {
            for i in 0..seq {
                let qi = &q[(b * seq + i) * inner + head * hd..][..hd];
                let keys = if layer.causal { i + 1 } else { seq };
                let scores: Vec<f64> = (0..keys)
                    .map(|j| {
                        qi.iter().zip(&k[(b * seq + j) * inner + head * hd..][..hd]).map(|(a, c)| a * c).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let p = (s - max).exp() / z;
                    for c in 0..hd {
                        att[(b * seq + i) * inner + head * hd + c] += p * v[(b * seq + j) * inner + head * hd + c];
                    }
                }
            }
        }
    }
    linear_ref(&att, out_w, out_b, rows, inner, d)
}

#[test]
fn attention_matches_openlm_definition() {
    let dev = cpu();
    for (layer, batch, seq) in
        [(Attention::openlm(16, 2, NormKind::LayerNorm, 1e-5), 2, 70), (Attention::vit(12, 3), 2, 9)]
    {
        let (d, inner) = (layer.width, layer.inner());
        let x = rand_vec(batch * seq * d, 1, 1.0);
        let in_w = rand_vec(3 * inner * d, 2, 0.5);
        let out_w = rand_vec(d * inner, 3, 0.5);
        let in_b = layer.bias.then(|| rand_vec(3 * inner, 4, 0.2));
        let out_b = layer.bias.then(|| rand_vec(d, 5, 0.2));
        let qn = layer.qk_norm.map(|_| rand_vec(inner, 6, 0.5).iter().map(|v| v + 1.0).collect::<Vec<_>>());
        let kn = layer.qk_norm.map(|_| rand_vec(inner, 7, 0.5).iter().map(|v| v + 1.0).collect::<Vec<_>>());
        let p = AttentionParams::<Cpu> {
            in_proj: LinearParams { weight: &in_w, bias: in_b.as_deref() },
            q_norm: qn.as_deref().map(|w| NormParams { weight: w, bias: None }),
            k_norm: kn.as_deref().map(|w| NormParams { weight: w, bias: None }),
            out_proj: LinearParams { weight: &out_w, bias: out_b.as_deref() },
        };
        let mut acts = layer.acts(&dev, batch, seq);
        let mut y = vec![0.0; batch * seq * d];
        layer.forward(&dev, &p, &x, batch, seq, &mut acts, &mut y);
        let want = attention_ref(
            &layer,
            &x,
            batch,
            seq,
            &in_w,
            in_b.as_deref(),
            qn.as_deref(),
            kn.as_deref(),
            &out_w,
            out_b.as_deref(),
        );
        assert_close(&format!("{layer:?}"), &y, &want, 2e-5);
    }
}

#[test]
fn attention_of_continuations_is_the_whole_rows_attention_at_their_positions() {
    // Rows longer than one causal block (64), continuations starting at the first position, inside
    // the first block, across the block edge and at the end: the CPU scores only those queries.
    let dev = cpu();
    let shape = AttnShape { batch: 4, seq: 70, heads: 2, head_dim: 8, causal: true };
    let (starts, cont) = ([0, 33, 62, 66], 4);
    let n = shape.rows() * shape.width();
    let (q, k, v) = (rand_vec(n, 11, 1.0), rand_vec(n, 12, 1.0), rand_vec(n, 13, 1.0));
    let mut saved = dev.zeros(dev.attention_saved_len(shape));
    let mut whole = vec![0.0; n];
    dev.attention_forward(shape, &q, &k, &v, &mut saved, &mut whole);
    let mut got = vec![0.0; shape.batch * cont * shape.width()];
    dev.attention_continuing(shape, &starts, cont, &q, &k, &v, &mut got);
    for (b, &start) in starts.iter().enumerate() {
        for j in 0..cont {
            let want = &whole[(b * shape.seq + start + j) * shape.width()..][..shape.width()];
            let row = &got[(b * cont + j) * shape.width()..][..shape.width()];
            for (g, w) in row.iter().zip(want) {
                assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "row {b} query {j}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn gelu_matches_pytorch() {
    let dev = cpu();
    let x = [-3.0f32, -1.0, -0.25, 0.5, 1.0, 2.5];
    // torch.nn.functional.gelu(x) and gelu(x, approximate="tanh"), torch 2.5.1.
    let erf = [-0.0040502, -0.1586553, -0.1003234, 0.3457312, 0.8413447, 2.4844759];
    let tanh = [-0.0036374, -0.158808, -0.1003246, 0.345714, 0.841192, 2.4849157];
    for (kind, want) in [(GeluKind::Erf, erf), (GeluKind::Tanh, tanh)] {
        let mut y = vec![0.0; 6];
        dev.gelu_forward(kind, &x, &mut y);
        // 1e-6: torch's own f32 erf is ~5e-7 off at x = -3 (true value -0.00404969).
        assert_close(&format!("gelu {kind:?}"), &y, &want, 1e-6);
    }
}

#[test]
fn swiglu_is_silu_of_gate_times_up() {
    let dev = cpu();
    let (rows, hidden) = (3, 4);
    let gu = rand_vec(rows * 2 * hidden, 9, 3.0);
    let mut y = vec![0.0; rows * hidden];
    dev.swiglu_forward(hidden, &gu, &mut y);
    let want: Vec<f64> = (0..rows * hidden)
        .map(|i| {
            let (r, j) = (i / hidden, i % hidden);
            let g = gu[r * 2 * hidden + j] as f64;
            let u = gu[r * 2 * hidden + hidden + j] as f64;
            g / (1.0 + (-g).exp()) * u
        })
        .collect();
    assert_close("swiglu", &y, &want, 1e-6);
}

#[test]
fn rmsnorm_and_layernorm_bias_match_definition() {
    let dev = cpu();
    let (rows, width) = (3, 10);
    let x = rand_vec(rows * width, 10, 2.0);
    let w = rand_vec(width, 11, 1.0);
    let b = rand_vec(width, 12, 1.0);
    let mut y = vec![0.0; rows * width];
    let rms = Norm { kind: NormKind::RmsNorm, width, eps: 1e-5 };
    rms.forward(&dev, &NormParams::<Cpu> { weight: &w, bias: None }, &x, &mut rms.acts(&dev, rows), &mut y);
    let want: Vec<f64> = x
        .chunks(width)
        .flat_map(|row| {
            let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / width as f64;
            row.iter().zip(&w).map(move |(v, w)| *v as f64 / (ms + 1e-5).sqrt() * *w as f64).collect::<Vec<_>>()
        })
        .collect();
    assert_close("rmsnorm", &y, &want, 1e-5);
    let ln = Norm { kind: NormKind::LayerNormBias, width, eps: 1e-5 };
    ln.forward(&dev, &NormParams::<Cpu> { weight: &w, bias: Some(&b) }, &x, &mut ln.acts(&dev, rows), &mut y);
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let want: Vec<f64> =
        layernorm_ref(&x64, &w, width, 1e-5).iter().enumerate().map(|(i, v)| v + b[i % width] as f64).collect();
    assert_close("layernorm bias", &y, &want, 1e-5);
}

#[test]
fn cross_entropy_matches_definition() {
    let dev = cpu();
    let (rows, vocab, z) = (4, 11, 1e-2f32);
    let logits = rand_vec(rows * vocab, 13, 4.0);
    let targets = [3u32, 10, 0, 3];
    let mask = [1.0f32, 0.25, 0.0, 1.0];
    let mut nll = vec![0.0; rows];
    let stats = CrossEntropy { vocab, z_loss: z, z_rule: ZLossRule::Masked }
        .forward(&dev, &mut logits.clone(), &targets, &mask, &mut nll)
        .unwrap();
    let (mut num, mut den, mut nll_sum) = (0.0f64, 0.0f64, 0.0f64);
    for r in 0..rows {
        let row: Vec<f64> = logits[r * vocab..(r + 1) * vocab].iter().map(|&v| v as f64).collect();
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        let ce = lse - row[targets[r] as usize];
        assert!((nll[r] as f64 - ce).abs() < 1e-5, "row {r} nll");
        num += mask[r] as f64 * (ce + z as f64 * lse * lse);
        nll_sum += mask[r] as f64 * ce;
        den += mask[r] as f64;
    }
    assert!((stats.loss as f64 - num / den).abs() < 1e-5, "loss {} vs {}", stats.loss, num / den);
    assert!((stats.nll_sum - nll_sum).abs() < 1e-5 && stats.mask_sum == den);
    let zero = CrossEntropy { vocab, z_loss: z, z_rule: ZLossRule::Masked }
        .forward(&dev, &mut logits.clone(), &targets, &[0.0; 4], &mut nll)
        .unwrap();
    assert_eq!(zero.loss, 0.0, "an all-zero mask gives loss 0, not NaN");
    let bad = CrossEntropy { vocab, z_loss: z, z_rule: ZLossRule::Masked }.forward(
        &dev,
        &mut logits.clone(),
        &[3, 11, 0, 3],
        &mask,
        &mut nll,
    );
    assert!(bad.unwrap_err().to_string().contains("target token 11 at position 1"));
}

#[test]
fn threaded_gemm_split_matches_naive_for_all_layouts() {
    let dev = cpu();
    // Big enough to be split across threads, both along m (m >= n) and along n, with strides.
    for (m, n, k) in [(300usize, 200usize, 90usize), (150, 420, 70)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let pad = 3;
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let a = rand_vec(ar * (ac + pad), 20, 1.0);
            let b = rand_vec(br * (bc + pad), 21, 1.0);
            let mut c = rand_vec(m * (n + pad), 22, 1.0);
            let c0 = c.clone();
            let g = Gemm::new(ta, tb, m, n, k).strides(ac + pad, bc + pad, n + pad).alpha(0.5).accumulate();
            dev.gemm(g, &a, &b, &mut c);
            for i in 0..m {
                for j in 0..n + pad {
                    let want = if j < n {
                        let dot: f64 = (0..k)
                            .map(|p| {
                                let x = if ta { a[p * (ac + pad) + i] } else { a[i * (ac + pad) + p] };
                                let y = if tb { b[j * (bc + pad) + p] } else { b[p * (bc + pad) + j] };
                                x as f64 * y as f64
                            })
                            .sum();
                        0.5 * dot + c0[i * (n + pad) + j] as f64
                    } else {
                        c0[i * (n + pad) + j] as f64
                    };
                    let got = c[i * (n + pad) + j] as f64;
                    assert!((got - want).abs() < 1e-3, "ta={ta} tb={tb} m={m} n={n} [{i},{j}]: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn non_finite_logits_give_a_non_finite_loss() {
    // The training loop stops on a NaN/inf loss; the fused kernels must not hide one.
    let dev = cpu();
    let (rows, vocab) = (3, 40);
    for bad in [f32::NAN, f32::INFINITY] {
        let mut logits = rand_vec(rows * vocab, 30, 2.0);
        logits[vocab + 17] = bad;
        let mut nll = vec![0.0; rows];
        let ce = CrossEntropy { vocab, z_loss: 1e-4, z_rule: ZLossRule::Masked };
        let stats = ce.forward_backward(&dev, &mut logits, &[1, 2, 3], &[1.0; 3], 1.0, &mut nll).unwrap();
        assert!(!stats.loss.is_finite(), "loss {} from a {bad} logit", stats.loss);
    }
}

#[test]
fn row_moves_and_reductions_match_definition() {
    let dev = cpu();
    let (width, src) = (3, (0..12).map(|v| v as f32).collect::<Vec<_>>());
    let mut gathered = vec![0.0; 2 * width];
    dev.gather_rows(&src, &[3, 1], &mut gathered);
    assert_eq!(gathered, [9.0, 10.0, 11.0, 3.0, 4.0, 5.0]);
    let mut dst = vec![-1.0; 12];
    dev.scatter_rows(&gathered, &[0, 2], &mut dst);
    assert_eq!(dst, [9.0, 10.0, 11.0, -1.0, -1.0, -1.0, 3.0, 4.0, 5.0, -1.0, -1.0, -1.0]);
    dev.zero_rows(&mut dst, &[2], width);
    dev.gather_rows(&src, &[], &mut []);
    dev.scatter_rows(&[], &[], &mut dst);
    assert_eq!(&dst[6..9], &[0.0; 3]);
    assert_eq!(dev.sum_squares(&[&[3.0, 4.0], &[12.0]]), 169.0);
    let mut x = vec![1.0, -2.0];
    dev.scale(&mut x, 0.5);
    assert_eq!(x, [0.5, -1.0]);
}
