//! Behaviour of the LM beyond PyTorch parity: gradients reach every parameter, injected
//! embeddings (the VLM's image tokens) act exactly like token embeddings and get their gradient
//! back, gradient accumulation, and clear errors on bad input.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vlmix_engine::nonfinite::ensure_finite;
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{InjectedEmbeddings, Lm, LmConfig, LmInput, NormKind, WeightDecayRule, ZLossRule};

const BATCH: usize = 2;
const SEQ: usize = 16;

fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()
}

fn tiny(tied: bool, norm: NormKind) -> (Lm, ParamStore) {
    let mut config = LmConfig::preset("tiny").unwrap();
    config.tied_embeddings = tied;
    config.norm = norm;
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let lm = Lm::new(config, &mut params, 42).unwrap();
    (lm, params)
}

#[test]
fn every_trainable_parameter_receives_a_nonzero_gradient() {
    for (tied, norm) in [(false, NormKind::GainOnlyLayerNorm), (true, NormKind::RmsNorm)] {
        let (mut lm, mut params) = tiny(tied, norm);
        let vocab = lm.config().vocab;
        let input = tokens(1, BATCH * SEQ, vocab);
        let targets = tokens(2, BATCH * SEQ, vocab);
        let stats = lm
            .forward_backward(
                &mut params,
                &LmInput::tokens(BATCH, SEQ, &input),
                &targets,
                &[1.0; BATCH * SEQ],
                1.0,
                None,
            )
            .unwrap();
        assert!(stats.loss.is_finite() && (stats.loss - (vocab as f32).ln()).abs() < 1.0, "loss {}", stats.loss);
        assert_eq!(params.numel(true), lm.config().param_count().total);
        let mut all = lm.param_ids().all();
        all.sort();
        assert_eq!(all, params.ids().collect::<Vec<_>>(), "LmParamIds::all lists every parameter once");
        for id in params.ids() {
            let info = params.info(id);
            let g = params.grad(id);
            assert!(g.iter().all(|x| x.is_finite()), "{}: non-finite gradient", info.name);
            let nonzero = g.iter().filter(|&&x| x != 0.0).count();
            assert!(nonzero > 0, "tied={tied}: {} has an all-zero gradient", info.name);
        }
    }
}

#[test]
fn injected_embeddings_equal_token_embeddings_and_get_their_gradient() {
    let (mut lm, mut params) = tiny(false, NormKind::GainOnlyLayerNorm);
    let (vocab, d) = (lm.config().vocab, lm.config().d_model);
    let input = tokens(3, BATCH * SEQ, vocab);
    let targets = tokens(4, BATCH * SEQ, vocab);
    let mask: Vec<f32> = (0..BATCH * SEQ).map(|r| if r % SEQ < 4 { 0.0 } else { 1.0 }).collect();
    let table_id = lm.param_ids().tok_embeddings;

    let plain =
        lm.forward_backward(&mut params, &LmInput::tokens(BATCH, SEQ, &input), &targets, &mask, 1.0, None).unwrap();
    let table_grad_plain = params.grad(table_id).to_vec();

    // The first 4 positions of each sequence (an "image prefix") come in as vectors equal to the
    // embeddings of their tokens; the token ids there are replaced by 0 and must not matter.
    let rows: Vec<usize> = (0..BATCH).flat_map(|b| (0..4).map(move |t| b * SEQ + t)).collect();
    let table = params.value(table_id);
    let values: Vec<f32> =
        rows.iter().flat_map(|&r| table[input[r] as usize * d..(input[r] as usize + 1) * d].to_vec()).collect();
    let mut masked_ids = input.clone();
    rows.iter().for_each(|&r| masked_ids[r] = 0);
    let injected = LmInput {
        batch: BATCH,
        seq: SEQ,
        tokens: &masked_ids,
        injected: Some(InjectedEmbeddings { rows: &rows, values: &values[..] }),
    };
    params.zero_grad();
    let mut d_injected = vec![0.0f32; rows.len() * d];
    let with = lm.forward_backward(&mut params, &injected, &targets, &mask, 1.0, Some(&mut d_injected)).unwrap();
    assert_eq!(with.loss, plain.loss);

    // What the table received plus what the injected vectors received is what the table got before.
    let mut table_grad = params.grad(table_id).to_vec();
    for (i, &r) in rows.iter().enumerate() {
        let t = input[r] as usize;
        for j in 0..d {
            table_grad[t * d + j] += d_injected[i * d + j];
        }
    }
    let worst = table_grad.iter().zip(&table_grad_plain).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = table_grad_plain.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-5 * scale, "table gradient differs by {worst} (scale {scale})");
    assert!(d_injected.iter().any(|&x| x != 0.0));

    // And the injected gradient is the derivative of the loss (central finite differences).
    for (i, j) in [(0usize, 3usize), (5, 17), (7, 63)] {
        let eps = 1e-2f32;
        let loss_at = |delta: f32, lm: &mut Lm| {
            let mut v = values.clone();
            v[i * d + j] += delta;
            let input = LmInput { injected: Some(InjectedEmbeddings { rows: &rows, values: &v[..] }), ..injected };
            lm.loss(&params, &input, &targets, &mask).unwrap().loss as f64
        };
        let numeric = (loss_at(eps, &mut lm) - loss_at(-eps, &mut lm)) / (2.0 * eps as f64);
        let analytic = d_injected[i * d + j] as f64;
        assert!(
            (numeric - analytic).abs() < 2e-3 * analytic.abs().max(1e-2),
            "row {i} col {j}: {numeric} vs {analytic}"
        );
    }
}

#[test]
fn gradient_accumulation_matches_the_full_batch() {
    let (mut lm, mut params) = tiny(false, NormKind::GainOnlyLayerNorm);
    let vocab = lm.config().vocab;
    let input = tokens(5, BATCH * SEQ, vocab);
    let targets = tokens(6, BATCH * SEQ, vocab);
    let ones = vec![1.0f32; BATCH * SEQ];
    lm.forward_backward(&mut params, &LmInput::tokens(BATCH, SEQ, &input), &targets, &ones, 1.0, None).unwrap();
    let full: Vec<Vec<f32>> = params.ids().map(|id| params.grad(id).to_vec()).collect();
    params.zero_grad();
    for half in 0..2 {
        let r = half * SEQ..(half + 1) * SEQ;
        lm.forward_backward(
            &mut params,
            &LmInput::tokens(1, SEQ, &input[r.clone()]),
            &targets[r],
            &ones[..SEQ],
            0.5,
            None,
        )
        .unwrap();
    }
    for (id, want) in params.ids().zip(&full) {
        let got = params.grad(id);
        let scale = want.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5 * scale, "{}: accumulated gradient off by {worst}", params.info(id).name);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (mut lm, mut params) = tiny(false, NormKind::GainOnlyLayerNorm);
    let vocab = lm.config().vocab as u32;
    let mut ids = vec![1u32; BATCH * SEQ];
    let ones = vec![1.0f32; BATCH * SEQ];
    ids[5] = vocab;
    let err = lm
        .forward_backward(&mut params, &LmInput::tokens(BATCH, SEQ, &ids), &ids, &ones, 1.0, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("token id {vocab} at position 5")), "{err}");
    let long = vec![1u32; 65];
    let err = lm.logits(&params, &LmInput::tokens(1, 65, &long)).unwrap_err().to_string();
    assert!(err.contains("exceeds the model's seq_len 64"), "{err}");
    let err = lm.logits(&params, &LmInput::tokens(2, SEQ, &long[..SEQ])).unwrap_err().to_string();
    assert!(err.contains("16 token ids for batch 2 x seq 16"), "{err}");
    let rows = [3usize, 3];
    let values = vec![0.0f32; 2 * 64];
    let input = LmInput {
        batch: 1,
        seq: SEQ,
        tokens: &long[..SEQ],
        injected: Some(InjectedEmbeddings { rows: &rows, values: &values[..] }),
    };
    let err = lm.logits(&params, &input).unwrap_err().to_string();
    assert!(err.contains("strictly increasing"), "{err}");
}

#[test]
fn nan_weights_give_a_nan_loss_that_stops_the_run() {
    let (mut lm, mut params) = tiny(false, NormKind::GainOnlyLayerNorm);
    let id = lm.param_ids().blocks[0].w3;
    params.value_mut(id)[0] = f32::NAN;
    let ids = vec![1u32; SEQ];
    let stats = lm.forward_backward(&mut params, &LmInput::tokens(1, SEQ, &ids), &ids, &[1.0; SEQ], 1.0, None).unwrap();
    let err = ensure_finite("loss", stats.loss, 12).unwrap_err().to_string();
    assert!(err.contains("loss is NaN at step 12"), "{err}");
}

#[test]
fn token_nll_scores_match_the_loss() {
    let (mut lm, params) = tiny(true, NormKind::RmsNorm);
    let vocab = lm.config().vocab;
    let input = tokens(7, BATCH * SEQ, vocab);
    let targets = tokens(8, BATCH * SEQ, vocab);
    let nll: f64 =
        lm.token_nll(&params, &LmInput::tokens(BATCH, SEQ, &input), &targets).unwrap().iter().map(|&x| x as f64).sum();
    let stats = lm.loss(&params, &LmInput::tokens(BATCH, SEQ, &input), &targets, &[1.0; BATCH * SEQ]).unwrap();
    assert!((stats.nll_sum - nll).abs() < 1e-3, "{} vs {nll}", stats.nll_sum);
    // Logits of a shorter batch are a prefix-consistent causal computation.
    let full = lm.logits(&params, &LmInput::tokens(1, SEQ, &input[..SEQ])).unwrap().to_vec();
    let prefix = lm.logits(&params, &LmInput::tokens(1, 4, &input[..4])).unwrap().to_vec();
    let worst = prefix.iter().zip(&full[..prefix.len()]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "causality: prefix logits differ by {worst}");
    // Next-token logits are the last position's row of the full logits (up to GEMM blocking).
    let both = LmInput::tokens(BATCH, SEQ, &input);
    let all = lm.logits(&params, &both).unwrap().to_vec();
    let next = lm.next_token_logits(&params, &both).unwrap().to_vec();
    for b in 0..BATCH {
        let last = (b + 1) * SEQ - 1;
        let worst = next[b * vocab..(b + 1) * vocab]
            .iter()
            .zip(&all[last * vocab..(last + 1) * vocab])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "sequence {b}: next-token logits differ by {worst}");
    }
    // Logits at picked positions (any order, repeats allowed) are those rows of the full logits.
    let picked = [SEQ + 2, 0, BATCH * SEQ - 1, 0];
    let at = lm.logits_at(&params, &both, &picked).unwrap().to_vec();
    for (i, &row) in picked.iter().enumerate() {
        let worst = at[i * vocab..(i + 1) * vocab]
            .iter()
            .zip(&all[row * vocab..(row + 1) * vocab])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "position {row}: picked logits differ by {worst}");
    }
    assert!(lm.logits_at(&params, &both, &[BATCH * SEQ]).is_err(), "a row past the batch is refused");
}

#[test]
fn bench_reports_consistent_numbers() {
    use vlmix_models::lm::bench::{bench_train, BenchOptions};
    let model = LmConfig::preset("tiny").unwrap();
    let r = bench_train(
        vlmix_engine::Cpu::new().unwrap(),
        &BenchOptions { model: model.clone(), model_name: "tiny".into(), batch: 2, steps: 2, warmup: 1 },
    )
    .unwrap();
    assert!(r.tokens_per_s > 0.0 && r.final_loss.is_finite() && r.peak_rss_mb > 1.0, "{r:?}");
    assert!((r.gflops - r.tokens_per_s * model.train_flops_per_token(64) / 1e9).abs() < 1e-9 * r.gflops.max(1.0));
    assert!((r.step_ms * r.tokens_per_s / 1000.0 - 128.0).abs() < 1e-6, "step time and throughput disagree");
    let json: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
    for key in [
        "engine",
        "tokens_per_s",
        "gflops",
        "peak_rss_mb",
        "step_ms",
        "steps",
        "warmup",
        "final_loss",
        "threads",
        "cpu",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}, a field shared with reference/bench_train.py");
    }
}

/// open_lm's variants (LayerNorm with bias, the post-embedding norm, z-loss over all positions):
/// central differences of the loss agree with the analytic gradient.
#[test]
fn open_lm_variants_match_finite_differences() {
    let mut config = LmConfig::preset("tiny").unwrap();
    (config.vocab, config.seq_len, config.norm, config.post_embed_norm) = (50, 8, NormKind::LayerNorm, true);
    (config.z_loss, config.z_loss_rule) = (0.05, ZLossRule::OpenLm);
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let mut lm = Lm::new(config, &mut params, 5).unwrap();
    // Gains and biases away from 1 and 0, so every path through them matters.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for id in params.ids().collect::<Vec<_>>() {
        if params.info(id).shape.len() == 1 {
            let bias = params.info(id).name.ends_with(".bias");
            params.value_mut(id).iter_mut().for_each(|v| *v = if bias { 0.0 } else { 1.0 } + rng.gen_range(-0.3..0.3));
        }
    }
    let (batch, seq) = (2, 8);
    let input = tokens(8, batch * seq, 50);
    let targets = tokens(9, batch * seq, 50);
    let mask: Vec<f32> = (0..batch * seq).map(|r| if r % seq < 3 { 0.0 } else { 1.0 }).collect();
    let ids = LmInput::tokens(batch, seq, &input);
    params.zero_grad();
    lm.forward_backward(&mut params, &ids, &targets, &mask, 1.0, None).unwrap();
    let names = [
        "post_embed_norm.weight",
        "post_embed_norm.bias",
        "layers.0.attention_norm.bias",
        "layers.0.attention.q_norm.bias",
        "layers.1.attention.k_norm.bias",
        "layers.1.ffn_norm.bias",
        "norm.bias",
        "tok_embeddings.weight",
    ];
    for name in names {
        let id = params.id(name).unwrap_or_else(|| panic!("{name} is registered"));
        let analytic = params.grad(id).to_vec();
        for i in (0..analytic.len()).step_by(analytic.len().div_ceil(5)) {
            let original = params.value(id)[i];
            let mut loss_at = |value: f32| {
                params.value_mut(id)[i] = value;
                lm.loss(&params, &ids, &targets, &mask).unwrap().loss as f64
            };
            let h = 1e-2f32;
            let numeric = (loss_at(original + h) - loss_at(original - h)) / (2.0 * h as f64);
            params.value_mut(id)[i] = original;
            let a = analytic[i] as f64;
            assert!(
                (a - numeric).abs() <= 2e-3 + 5e-2 * numeric.abs(),
                "{name}[{i}]: analytic {a} vs numeric {numeric}"
            );
        }
    }
}

#[test]
fn weight_decay_rule_picks_the_decayed_parameters() {
    let mut config = LmConfig::preset("tiny").unwrap();
    config.norm = NormKind::LayerNorm;
    for (rule, all) in [(WeightDecayRule::OpenLm, true), (WeightDecayRule::Matrices, false)] {
        config.weight_decay_rule = rule;
        let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
        Lm::new(config.clone(), &mut params, 1).unwrap();
        for id in params.ids() {
            let info = params.info(id);
            let matrix = info.shape.len() == 2 && info.name != "tok_embeddings.weight";
            assert_eq!(info.flags.weight_decay, all || matrix, "{rule:?}: {}", info.name);
        }
    }
    assert_eq!(
        LmConfig::preset("openlm-79m").unwrap().weight_decay_rule,
        WeightDecayRule::OpenLm,
        "open_lm's rule for the open_lm presets"
    );
}

#[test]
fn continuing_cached_prefixes_gives_the_whole_sequences_logits() {
    // Two sequences with prefixes of different lengths (one padded), continued by 3 tokens each:
    // the continuation's logits must be those of one forward over each whole sequence.
    for (tied, norm) in [(false, NormKind::GainOnlyLayerNorm), (true, NormKind::RmsNorm)] {
        let (mut lm, params) = tiny(tied, norm);
        let vocab = lm.config().vocab;
        let (lens, cont) = ([9usize, 5], 3);
        let whole: Vec<Vec<u32>> =
            lens.iter().enumerate().map(|(r, &len)| tokens(20 + r as u64, len + cont, vocab)).collect();
        let longest = lens[0];
        let mut padded = Vec::new();
        for (seq, &len) in whole.iter().zip(&lens) {
            padded.extend_from_slice(&seq[..len]);
            padded.resize(padded.len() + longest - len, 0);
        }
        let last_of_prefix = [lens[0] - 1, longest + lens[1] - 1];
        let (caches, prefix_logits) =
            lm.prefix_caches(&params, &LmInput::tokens(2, longest, &padded), &lens, &last_of_prefix).unwrap();
        let prefix_logits = prefix_logits.to_vec();
        assert_eq!(caches.iter().map(|c| c.len()).collect::<Vec<_>>(), lens);
        let continuations: Vec<u32> = whole.iter().zip(&lens).flat_map(|(seq, &len)| seq[len..].to_vec()).collect();
        let rows: Vec<usize> = (0..2 * cont).collect();
        let refs: Vec<_> = caches.iter().collect();
        let continued =
            lm.logits_continuing(&params, &LmInput::tokens(2, cont, &continuations), &refs, &rows).unwrap().to_vec();
        for (r, seq) in whole.iter().enumerate() {
            let full = lm.logits(&params, &LmInput::tokens(1, seq.len(), seq)).unwrap().to_vec();
            let row_of = |at: usize| &full[at * vocab..(at + 1) * vocab];
            let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let at_prefix = worst(&prefix_logits[r * vocab..(r + 1) * vocab], row_of(lens[r] - 1));
            assert!(at_prefix < 1e-4, "sequence {r}: the prefix's last logits differ by {at_prefix}");
            for j in 0..cont {
                let k = r * cont + j;
                let diff = worst(&continued[k * vocab..(k + 1) * vocab], row_of(lens[r] + j));
                assert!(diff < 1e-4, "sequence {r}, continuation position {j}: logits differ by {diff}");
            }
        }
        let window = lm.config().seq_len;
        let too_long = vec![0; 2 * window];
        let input = LmInput::tokens(2, window, &too_long);
        assert!(lm.logits_continuing(&params, &input, &refs, &[window - 1]).is_err(), "past the window is refused");
        assert!(lm.logits_continuing(&params, &input, &refs, &[2 * window]).is_err(), "past the rows is refused");
    }
}
