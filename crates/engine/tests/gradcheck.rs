//! Finite-difference gradient checks for every layer: input gradients and every parameter gradient.
//! Each check uses the scalar `sum(y * r)` for a fixed random `r`, so `dy = r`.

mod common;

use common::{check_grads, cpu, project, rand_vec, Tensors};
use vlmix_engine::layers::*;
use vlmix_engine::{Cpu, GeluKind};

fn get<'a>(t: &'a Tensors, name: &str) -> &'a [f32] {
    &t.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no tensor {name}")).1
}

fn opt<'a>(t: &'a Tensors, name: &str) -> Option<&'a [f32]> {
    t.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_slice())
}

fn zeros_like(t: &Tensors) -> Vec<Vec<f32>> {
    t.iter().map(|(_, v)| vec![0.0; v.len()]).collect()
}

/// Mutable references to the gradients of `names` (in that order; absent names give `None`).
fn grads_mut<'a, const N: usize>(
    t: &Tensors,
    grads: &'a mut [Vec<f32>],
    names: [&str; N],
) -> [Option<&'a mut [f32]>; N] {
    let mut slots: Vec<Option<&'a mut [f32]>> = grads.iter_mut().map(|g| Some(g.as_mut_slice())).collect();
    names.map(|n| t.iter().position(|(name, _)| *name == n).and_then(|i| slots[i].take()))
}

#[test]
fn linear_with_and_without_bias() {
    let dev = cpu();
    for bias in [false, true] {
        let layer = Linear { in_dim: 5, out_dim: 3, bias };
        let rows = 4;
        let mut t = vec![("x", rand_vec(rows * 5, 1, 1.0)), ("w", rand_vec(15, 2, 0.5))];
        if bias {
            t.push(("b", rand_vec(3, 3, 0.5)));
        }
        let r = rand_vec(rows * 3, 4, 1.0);
        let run = |t: &Tensors| {
            let mut y = vec![0.0; rows * 3];
            layer.forward(&dev, &LinearParams::<Cpu> { weight: get(t, "w"), bias: opt(t, "b") }, get(t, "x"), &mut y);
            y
        };
        let mut g = zeros_like(&t);
        let [dx, dw, db] = grads_mut(&t, &mut g, ["x", "w", "b"]);
        let p = LinearParams::<Cpu> { weight: get(&t, "w"), bias: opt(&t, "b") };
        layer.backward(&dev, &p, get(&t, "x"), &r, dx, &mut LinearGrads { weight: dw.unwrap(), bias: db });
        check_grads(&format!("linear bias={bias}"), &mut t, &g, 64, &|t| project(&run(t), &r));
    }
}

#[test]
fn norms_all_kinds() {
    let dev = cpu();
    for kind in [NormKind::LayerNorm, NormKind::LayerNormBias, NormKind::RmsNorm] {
        let width = 7;
        let rows = 5;
        let layer = Norm { kind, width, eps: 1e-5 };
        let x: Vec<f32> = rand_vec(rows * width, 11, 2.0).iter().map(|v| v + 0.3).collect();
        let mut t = vec![("x", x), ("w", rand_vec(width, 12, 1.0).iter().map(|v| v + 1.0).collect())];
        if kind.has_bias() {
            t.push(("b", rand_vec(width, 13, 0.5)));
        }
        let r = rand_vec(rows * width, 14, 1.0);
        let run = |t: &Tensors| {
            let mut acts = layer.acts(&dev, rows);
            let mut y = vec![0.0; rows * width];
            layer.forward(
                &dev,
                &NormParams::<Cpu> { weight: get(t, "w"), bias: opt(t, "b") },
                get(t, "x"),
                &mut acts,
                &mut y,
            );
            (y, acts)
        };
        let (_, acts) = run(&t);
        let mut g = zeros_like(&t);
        let [dx, dw, db] = grads_mut(&t, &mut g, ["x", "w", "b"]);
        let p = NormParams::<Cpu> { weight: get(&t, "w"), bias: opt(&t, "b") };
        layer.backward(
            &dev,
            &p,
            get(&t, "x"),
            &acts,
            &r,
            dx.unwrap(),
            &mut NormGrads { weight: dw.unwrap(), bias: db },
        );
        check_grads(&format!("{kind:?}"), &mut t, &g, 64, &|t| project(&run(t).0, &r));
    }
}

#[test]
fn embedding_with_repeated_ids() {
    let dev = cpu();
    let layer = Embedding { vocab: 6, width: 4 };
    let ids = [3u32, 1, 3, 5, 0, 3];
    let mut t = vec![("table", rand_vec(24, 21, 1.0))];
    let r = rand_vec(ids.len() * 4, 22, 1.0);
    let run = |t: &Tensors| {
        let mut y = vec![0.0; ids.len() * 4];
        layer.forward(&dev, get(t, "table"), &ids, &mut y).unwrap();
        y
    };
    let mut g = zeros_like(&t);
    layer.backward(&dev, &ids, &r, &mut g[0]);
    check_grads("embedding", &mut t, &g, 64, &|t| project(&run(t), &r));
    let mut y = vec![0.0; 4];
    let err = layer.forward(&dev, get(&t, "table"), &[6], &mut y).unwrap_err().to_string();
    assert!(err.contains("token id 6 at position 0"), "{err}");
}

fn attention_case(layer: Attention, batch: usize, seq: usize, max_coords: usize) {
    let dev = cpu();
    let (d, inner) = (layer.width, layer.inner());
    let rows = batch * seq;
    let mut t = vec![("x", rand_vec(rows * d, 31, 1.0)), ("in_w", rand_vec(3 * inner * d, 32, 0.6))];
    if layer.bias {
        t.push(("in_b", rand_vec(3 * inner, 33, 0.3)));
    }
    if let Some(kind) = layer.qk_norm {
        t.push(("qn_w", rand_vec(inner, 34, 0.5).iter().map(|v| v + 1.0).collect()));
        t.push(("kn_w", rand_vec(inner, 35, 0.5).iter().map(|v| v + 1.0).collect()));
        if kind.has_bias() {
            t.push(("qn_b", rand_vec(inner, 36, 0.3)));
            t.push(("kn_b", rand_vec(inner, 37, 0.3)));
        }
    }
    t.push(("out_w", rand_vec(d * inner, 38, 0.6)));
    if layer.bias {
        t.push(("out_b", rand_vec(d, 39, 0.3)));
    }
    let r = rand_vec(rows * d, 40, 1.0);
    fn params<'a>(t: &'a Tensors, layer: &Attention) -> AttentionParams<'a, Cpu> {
        let norm = |w: &str, b: &str| layer.qk_norm.map(|_| NormParams { weight: get(t, w), bias: opt(t, b) });
        AttentionParams {
            in_proj: LinearParams { weight: get(t, "in_w"), bias: opt(t, "in_b") },
            q_norm: norm("qn_w", "qn_b"),
            k_norm: norm("kn_w", "kn_b"),
            out_proj: LinearParams { weight: get(t, "out_w"), bias: opt(t, "out_b") },
        }
    }
    let run = |t: &Tensors| {
        let mut acts = layer.acts(&dev, batch, seq);
        let mut y = vec![0.0; rows * d];
        layer.forward(&dev, &params(t, &layer), get(t, "x"), batch, seq, &mut acts, &mut y);
        (y, acts)
    };
    let (_, acts) = run(&t);
    let mut g = zeros_like(&t);
    let names = ["x", "in_w", "in_b", "qn_w", "qn_b", "kn_w", "kn_b", "out_w", "out_b"];
    let [dx, in_w, in_b, qn_w, qn_b, kn_w, kn_b, out_w, out_b] = grads_mut(&t, &mut g, names);
    let mut grads = AttentionGrads::<Cpu> {
        in_proj: LinearGrads { weight: in_w.unwrap(), bias: in_b },
        q_norm: qn_w.map(|w| NormGrads { weight: w, bias: qn_b }),
        k_norm: kn_w.map(|w| NormGrads { weight: w, bias: kn_b }),
        out_proj: LinearGrads { weight: out_w.unwrap(), bias: out_b },
    };
    let mut scratch = layer.scratch(&dev, rows);
    layer.backward(
        &dev,
        &params(&t, &layer),
        get(&t, "x"),
        batch,
        seq,
        &acts,
        &r,
        dx.unwrap(),
        &mut grads,
        &mut scratch,
    );
    check_grads(&format!("{layer:?}"), &mut t, &g, max_coords, &|t| project(&run(t).0, &r));
}

#[test]
fn attention_openlm_causal_rotary_qk_layernorm() {
    attention_case(Attention::openlm(8, 2, NormKind::LayerNorm, 1e-5), 2, 5, 200);
}

#[test]
fn attention_openlm_spans_several_causal_blocks() {
    // seq 70 crosses the 64-row query blocks of the causal kernel.
    attention_case(Attention::openlm(8, 2, NormKind::LayerNorm, 1e-5), 2, 70, 48);
}

#[test]
fn attention_qk_rmsnorm_and_layernorm_bias() {
    attention_case(Attention::openlm(12, 3, NormKind::RmsNorm, 1e-5), 1, 6, 200);
    attention_case(Attention::openlm(8, 2, NormKind::LayerNormBias, 1e-5), 1, 6, 200);
}

#[test]
fn attention_vit_noncausal_with_biases() {
    attention_case(Attention::vit(8, 2), 2, 7, 200);
}

#[test]
fn swiglu_mlp() {
    let dev = cpu();
    let layer = SwiGlu { width: 6, hidden: 5 };
    let rows = 4;
    let mut t = vec![("x", rand_vec(rows * 6, 51, 1.0)), ("w12", rand_vec(60, 52, 0.7)), ("w3", rand_vec(30, 53, 0.7))];
    let r = rand_vec(rows * 6, 54, 1.0);
    let run = |t: &Tensors| {
        let mut acts = layer.acts(&dev, rows);
        let mut y = vec![0.0; rows * 6];
        layer.forward(
            &dev,
            &SwiGluParams::<Cpu> { w12: get(t, "w12"), w3: get(t, "w3") },
            get(t, "x"),
            &mut acts,
            &mut y,
        );
        (y, acts)
    };
    let (_, acts) = run(&t);
    let mut g = zeros_like(&t);
    let [dx, w12, w3] = grads_mut(&t, &mut g, ["x", "w12", "w3"]);
    let p = SwiGluParams::<Cpu> { w12: get(&t, "w12"), w3: get(&t, "w3") };
    let mut grads = SwiGluGrads { w12: w12.unwrap(), w3: w3.unwrap() };
    layer.backward(&dev, &p, get(&t, "x"), &acts, &r, dx.unwrap(), &mut grads, &mut layer.scratch(&dev, rows));
    check_grads("swiglu", &mut t, &g, 64, &|t| project(&run(t).0, &r));
}

#[test]
fn gelu_mlp_erf_and_tanh() {
    let dev = cpu();
    for gelu in [GeluKind::Erf, GeluKind::Tanh] {
        let layer = GeluMlp { in_dim: 5, hidden: 7, out_dim: 4, gelu };
        let rows = 3;
        let mut t = vec![
            ("x", rand_vec(rows * 5, 61, 1.5)),
            ("w1", rand_vec(35, 62, 0.8)),
            ("b1", rand_vec(7, 63, 0.5)),
            ("w2", rand_vec(28, 64, 0.8)),
            ("b2", rand_vec(4, 65, 0.5)),
        ];
        let r = rand_vec(rows * 4, 66, 1.0);
        fn params<'a>(t: &'a Tensors) -> GeluMlpParams<'a, Cpu> {
            GeluMlpParams {
                fc1: LinearParams { weight: get(t, "w1"), bias: opt(t, "b1") },
                fc2: LinearParams { weight: get(t, "w2"), bias: opt(t, "b2") },
            }
        }
        let run = |t: &Tensors| {
            let mut acts = layer.acts(&dev, rows);
            let mut y = vec![0.0; rows * 4];
            layer.forward(&dev, &params(t), get(t, "x"), &mut acts, &mut y);
            (y, acts)
        };
        let (_, acts) = run(&t);
        let mut g = zeros_like(&t);
        let [dx, w1, b1, w2, b2] = grads_mut(&t, &mut g, ["x", "w1", "b1", "w2", "b2"]);
        let mut grads = GeluMlpGrads::<Cpu> {
            fc1: LinearGrads { weight: w1.unwrap(), bias: b1 },
            fc2: LinearGrads { weight: w2.unwrap(), bias: b2 },
        };
        layer.backward(&dev, &params(&t), get(&t, "x"), &acts, &r, dx, &mut grads, &mut layer.scratch(&dev, rows));
        check_grads(&format!("gelu mlp {gelu:?}"), &mut t, &g, 64, &|t| project(&run(t).0, &r));
    }
}

#[test]
fn cross_entropy_masked_with_z_loss() {
    let dev = cpu();
    for (z_loss, z_rule) in [(0.0, ZLossRule::Masked), (0.05, ZLossRule::Masked), (0.05, ZLossRule::OpenLm)] {
        let layer = CrossEntropy { vocab: 9, z_loss, z_rule };
        let rows = 5;
        let targets = [2u32, 0, 8, 2, 5];
        let mask = [1.0f32, 0.0, 1.0, 0.5, 1.0];
        let mut t = vec![("logits", rand_vec(rows * 9, 71, 3.0))];
        let mut nll = vec![0.0; rows];
        let loss = |t: &Tensors| {
            let mut logits = get(t, "logits").to_vec();
            let mut nll = vec![0.0; rows];
            layer.forward(&dev, &mut logits, &targets, &mask, &mut nll).unwrap().loss as f64
        };
        let mut g = vec![get(&t, "logits").to_vec()];
        let stats = layer.forward_backward(&dev, &mut g[0], &targets, &mask, 1.0, &mut nll).unwrap();
        assert!((stats.loss as f64 - loss(&t)).abs() < 1e-6, "forward_backward and forward disagree");
        // The value, from the definitions (see cross_entropy.rs).
        let logits = get(&t, "logits");
        let lse: Vec<f64> = logits.chunks(9).map(|r| r.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln()).collect();
        let ce: Vec<f64> = (0..rows).map(|r| lse[r] - logits[r * 9 + targets[r] as usize] as f64).collect();
        let mask_sum: f64 = mask.iter().map(|&m| m as f64).sum();
        let z = z_loss as f64;
        let want = match z_rule {
            ZLossRule::Masked => {
                (0..rows).map(|r| mask[r] as f64 * (ce[r] + z * lse[r] * lse[r])).sum::<f64>() / mask_sum
            }
            ZLossRule::OpenLm => {
                (0..rows).map(|r| mask[r] as f64 * ce[r]).sum::<f64>() / mask_sum
                    + z * (lse.iter().sum::<f64>() / rows as f64).powi(2)
            }
        };
        assert!((stats.loss as f64 - want).abs() < 1e-5, "{z_rule:?}: loss {} vs {want}", stats.loss);
        let masked_row_grad = g[0][9..18].iter().any(|&v| v != 0.0);
        assert_eq!(
            masked_row_grad,
            z_rule == ZLossRule::OpenLm && z_loss > 0.0,
            "a masked row gets a gradient only from open_lm's z-term"
        );
        check_grads(&format!("cross entropy z={z_loss} {z_rule:?}"), &mut t, &g, 64, &loss);
    }
}

#[test]
fn backward_accumulates_parameter_grads_and_overwrites_input_grads() {
    let dev = cpu();
    let layer = Norm { kind: NormKind::LayerNormBias, width: 4, eps: 1e-5 };
    let x = rand_vec(8, 81, 1.0);
    let (w, b) = (rand_vec(4, 82, 1.0), rand_vec(4, 83, 1.0));
    let dy = rand_vec(8, 84, 1.0);
    let p = NormParams::<Cpu> { weight: &w, bias: Some(&b) };
    let mut acts = layer.acts(&dev, 2);
    let mut y = vec![0.0; 8];
    layer.forward(&dev, &p, &x, &mut acts, &mut y);
    let (mut dx, mut dw, mut db) = (vec![7.0; 8], vec![0.0; 4], vec![0.0; 4]);
    layer.backward(&dev, &p, &x, &acts, &dy, &mut dx, &mut NormGrads { weight: &mut dw, bias: Some(&mut db) });
    let (dx1, dw1, db1) = (dx.clone(), dw.clone(), db.clone());
    layer.backward(&dev, &p, &x, &acts, &dy, &mut dx, &mut NormGrads { weight: &mut dw, bias: Some(&mut db) });
    assert_eq!(dx, dx1, "input gradient must be overwritten");
    for (a, b) in dw.iter().zip(&dw1).chain(db.iter().zip(&db1)) {
        assert!((a - 2.0 * b).abs() <= 1e-6 * b.abs().max(1.0), "parameter gradient must accumulate");
    }
}

#[test]
fn lm_head_fused_chunks_match_linear_plus_cross_entropy() {
    let dev = cpu();
    let (rows, width, vocab) = (7, 5, 11);
    let targets = [1u32, 10, 4, 4, 0, 7, 2];
    let mask = [1.0f32, 0.0, 1.0, 0.5, 1.0, 1.0, 0.0];
    let mut t = vec![("x", rand_vec(rows * width, 91, 1.0)), ("w", rand_vec(vocab * width, 92, 1.0))];
    // chunk 3 does not divide 7 rows: exercises the ragged last chunk and per-chunk mask scaling.
    let head = LmHead { width, vocab, z_loss: 0.01, chunk_rows: 3 };
    let mut scratch = head.scratch(&dev, rows);
    let mut g = zeros_like(&t);
    let [dx, dw] = grads_mut(&t, &mut g, ["x", "w"]);
    let stats = head
        .forward_backward(
            &dev,
            get(&t, "w"),
            get(&t, "x"),
            &targets,
            &mask,
            1.0,
            dx.unwrap(),
            dw.unwrap(),
            &mut scratch,
        )
        .unwrap();
    let unfused = |t: &Tensors| {
        let mut logits = vec![0.0; rows * vocab];
        Linear { in_dim: width, out_dim: vocab, bias: false }.forward(
            &dev,
            &LinearParams::<Cpu> { weight: get(t, "w"), bias: None },
            get(t, "x"),
            &mut logits,
        );
        let mut nll = vec![0.0; rows];
        CrossEntropy { vocab, z_loss: 0.01, z_rule: ZLossRule::Masked }
            .forward(&dev, &mut logits, &targets, &mask, &mut nll)
            .unwrap()
            .loss as f64
    };
    assert!((stats.loss as f64 - unfused(&t)).abs() < 1e-5, "fused loss {} vs unfused {}", stats.loss, unfused(&t));
    check_grads("lm head", &mut t, &g, 64, &unfused);
    let fwd = head.forward(&dev, get(&t, "w"), get(&t, "x"), &targets, &mask, &mut scratch).unwrap();
    assert_eq!(fwd.loss, stats.loss);
}
