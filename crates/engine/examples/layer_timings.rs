//! Forward / backward time of every layer at the reference training shapes (batch 8, seq 256,
//! d 256, 4 heads, SwiGLU hidden 768, vocab 8192), and the full-step estimate they add up to.
//! `cargo run --release -p vlmix-engine --example layer_timings [reps]`

use std::time::Instant;

use vlmix_engine::layers::*;
use vlmix_engine::{Cpu, Device};

const BATCH: usize = 8;
const SEQ: usize = 256;
const D: usize = 256;
const HEADS: usize = 4;
const HIDDEN: usize = 768;
const VOCAB: usize = 8192;
const LAYERS: usize = 4;

fn filled(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

/// Best-of-`reps` milliseconds of `f` (after one warm-up call).
fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

struct Row {
    name: &'static str,
    per_step: usize,
    fwd: f64,
    bwd: f64,
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let dev = Cpu::new()?;
    let rows = BATCH * SEQ;
    println!("threads: {}, OpenBLAS core: {}", rayon::current_num_threads(), vlmix_engine::blas::corename());
    let x = filled(rows * D, 1);
    let dy = filled(rows * D, 2);
    let mut y = vec![0.0; rows * D];
    let mut dx = vec![0.0; rows * D];
    let mut table = Vec::new();

    let ids: Vec<u32> = (0..rows as u32).map(|i| i.wrapping_mul(7919) % VOCAB as u32).collect();
    let emb = Embedding { vocab: VOCAB, width: D };
    let w_emb = filled(VOCAB * D, 3);
    let mut g_emb = vec![0.0; VOCAB * D];
    table.push(Row {
        name: "embedding",
        per_step: 1,
        fwd: time_ms(reps, || emb.forward(&dev, &w_emb, &ids, &mut y).unwrap()),
        bwd: time_ms(reps, || emb.backward(&dev, &ids, &dy, &mut g_emb)),
    });

    let norm = Norm { kind: NormKind::LayerNorm, width: D, eps: 1e-5 };
    let w_norm = vec![1.0; D];
    let mut g_norm = vec![0.0; D];
    let p_norm = NormParams::<Cpu> { weight: &w_norm, bias: None };
    let mut norm_acts = norm.acts(&dev, rows);
    norm.forward(&dev, &p_norm, &x, &mut norm_acts, &mut y);
    table.push(Row {
        name: "layernorm (gain)",
        per_step: 2 * LAYERS + 1,
        fwd: time_ms(reps, || norm.forward(&dev, &p_norm, &x, &mut norm_acts, &mut y)),
        bwd: time_ms(reps, || {
            norm.backward(
                &dev,
                &p_norm,
                &x,
                &norm_acts,
                &dy,
                &mut dx,
                &mut NormGrads { weight: &mut g_norm, bias: None },
            )
        }),
    });

    let attn = Attention::openlm(D, HEADS, NormKind::LayerNorm, 1e-5);
    let (w_in, w_out) = (filled(3 * D * D, 4), filled(D * D, 5));
    let (mut g_in, mut g_out, mut g_qn, mut g_kn) =
        (vec![0.0; 3 * D * D], vec![0.0; D * D], vec![0.0; D], vec![0.0; D]);
    let p_attn = AttentionParams::<Cpu> {
        in_proj: LinearParams { weight: &w_in, bias: None },
        q_norm: Some(NormParams { weight: &w_norm, bias: None }),
        k_norm: Some(NormParams { weight: &w_norm, bias: None }),
        out_proj: LinearParams { weight: &w_out, bias: None },
    };
    let mut attn_acts = attn.acts(&dev, BATCH, SEQ);
    let mut attn_scratch = attn.scratch(&dev, rows);
    attn.forward(&dev, &p_attn, &x, BATCH, SEQ, &mut attn_acts, &mut y);
    table.push(Row {
        name: "attention (qk-norm, rope, causal)",
        per_step: LAYERS,
        fwd: time_ms(reps, || attn.forward(&dev, &p_attn, &x, BATCH, SEQ, &mut attn_acts, &mut y)),
        bwd: time_ms(reps, || {
            let mut g = AttentionGrads::<Cpu> {
                in_proj: LinearGrads { weight: &mut g_in, bias: None },
                q_norm: Some(NormGrads { weight: &mut g_qn, bias: None }),
                k_norm: Some(NormGrads { weight: &mut g_kn, bias: None }),
                out_proj: LinearGrads { weight: &mut g_out, bias: None },
            };
            attn.backward(&dev, &p_attn, &x, BATCH, SEQ, &attn_acts, &dy, &mut dx, &mut g, &mut attn_scratch)
        }),
    });

    let mlp = SwiGlu { width: D, hidden: HIDDEN };
    let (w12, w3) = (filled(2 * HIDDEN * D, 6), filled(D * HIDDEN, 7));
    let (mut g12, mut g3) = (vec![0.0; 2 * HIDDEN * D], vec![0.0; D * HIDDEN]);
    let p_mlp = SwiGluParams::<Cpu> { w12: &w12, w3: &w3 };
    let mut mlp_acts = mlp.acts(&dev, rows);
    let mut mlp_scratch = mlp.scratch(&dev, rows);
    mlp.forward(&dev, &p_mlp, &x, &mut mlp_acts, &mut y);
    table.push(Row {
        name: "swiglu mlp",
        per_step: LAYERS,
        fwd: time_ms(reps, || mlp.forward(&dev, &p_mlp, &x, &mut mlp_acts, &mut y)),
        bwd: time_ms(reps, || {
            let mut g = SwiGluGrads::<Cpu> { w12: &mut g12, w3: &mut g3 };
            mlp.backward(&dev, &p_mlp, &x, &mlp_acts, &dy, &mut dx, &mut g, &mut mlp_scratch)
        }),
    });

    let mut acc = x.clone();
    table.push(Row {
        name: "residual add",
        per_step: 2 * LAYERS,
        fwd: time_ms(reps, || dev.add(&x, &dy, &mut y)),
        bwd: time_ms(reps, || dev.add_assign(&mut acc, &dy)),
    });

    let head = Linear { in_dim: D, out_dim: VOCAB, bias: false };
    let w_head = filled(VOCAB * D, 8);
    let mut g_head = vec![0.0; VOCAB * D];
    let p_head = LinearParams::<Cpu> { weight: &w_head, bias: None };
    let mut logits = vec![0.0; rows * VOCAB];
    let dlogits = filled(rows * VOCAB, 9);
    table.push(Row {
        name: "output projection",
        per_step: 1,
        fwd: time_ms(reps, || head.forward(&dev, &p_head, &x, &mut logits)),
        bwd: time_ms(reps, || {
            head.backward(
                &dev,
                &p_head,
                &x,
                &dlogits,
                Some(&mut dx),
                &mut LinearGrads { weight: &mut g_head, bias: None },
            )
        }),
    });

    let ce = CrossEntropy { vocab: VOCAB, z_loss: 1e-4, z_rule: ZLossRule::Masked };
    let targets: Vec<u32> = ids.iter().map(|i| (i + 1) % VOCAB as u32).collect();
    let mask = vec![1.0; rows];
    let mut nll = vec![0.0; rows];
    let base_logits = filled(rows * VOCAB, 10);
    let t_copy = time_ms(reps, || dev.copy(&base_logits, &mut logits));
    let t_ce = time_ms(reps, || {
        dev.copy(&base_logits, &mut logits);
        ce.forward_backward(&dev, &mut logits, &targets, &mask, 1.0, &mut nll).unwrap();
    });
    table.push(Row { name: "cross-entropy (+ dlogits)", per_step: 1, fwd: (t_ce - t_copy).max(0.0), bwd: 0.0 });

    println!(
        "{:<36} {:>9} {:>9} {:>6} {:>10}",
        "layer (ms, best of reps)", "forward", "backward", "x/step", "step share"
    );
    let step: f64 = table.iter().map(|r| (r.fwd + r.bwd) * r.per_step as f64).sum();
    for r in &table {
        let share = (r.fwd + r.bwd) * r.per_step as f64;
        println!("{:<36} {:>9.3} {:>9.3} {:>6} {:>9.1}%", r.name, r.fwd, r.bwd, r.per_step, 100.0 * share / step);
    }
    println!("estimated step (layers only, no optimizer): {step:.1} ms = {:.0} tokens/s", rows as f64 / step * 1e3);

    let unfused_head: f64 = table
        .iter()
        .filter(|r| r.name.starts_with("output") || r.name.starts_with("cross"))
        .map(|r| r.fwd + r.bwd)
        .sum();
    let mut best_fused = f64::INFINITY;
    for chunk_rows in [64, 128, 256, 512, 1024] {
        let fused = LmHead { width: D, vocab: VOCAB, z_loss: 1e-4, chunk_rows };
        let mut scratch = fused.scratch(&dev, rows);
        let t = time_ms(reps, || {
            fused
                .forward_backward(&dev, &w_head, &x, &targets, &mask, 1.0, &mut dx, &mut g_head, &mut scratch)
                .unwrap();
        });
        best_fused = best_fused.min(t);
        println!("fused lm head + cross-entropy, chunk {chunk_rows:5} rows: {t:9.3} ms (unfused {unfused_head:.3} ms)");
    }
    let fused_step = step - unfused_head + best_fused;
    println!("estimated step with the fused head: {fused_step:.1} ms = {:.0} tokens/s", rows as f64 / fused_step * 1e3);
    Ok(())
}
