//! `--dry-run`: the plan with an estimated time per node from a throughput measured here and now.

use std::time::Instant;

use anyhow::Result;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::params::ParamStore;
use vlmix_models::lm::{Lm, LmConfig, LmInput};

use crate::config::StudyConfig;
use crate::plan::{NodeKind, Plan};
use crate::runner::{model_config, steps_for};

/// Training positions per second of `model` at `batch`, from a few full steps on synthetic tokens.
pub fn measure_throughput(model: &LmConfig, batch: usize) -> Result<f64> {
    let mut params = ParamStore::new();
    let mut lm = Lm::new(model.clone(), &mut params, 0)?;
    let mut optimizer = AdamW::new(AdamWConfig::default(), &params);
    let n = batch * model.seq_len;
    let tokens: Vec<u32> = (0..n).map(|i| (i * 7919 % model.vocab) as u32).collect();
    let mask = vec![1.0; n];
    let mut step = |params: &mut ParamStore| -> Result<()> {
        params.zero_grad();
        lm.forward_backward(params, &LmInput::tokens(batch, model.seq_len, &tokens), &tokens, &mask, 1.0, None)?;
        optimizer.step(params, 1e-4);
        Ok(())
    };
    step(&mut params)?;
    let reps = 3;
    let start = Instant::now();
    for _ in 0..reps {
        step(&mut params)?;
    }
    Ok((reps * n) as f64 / start.elapsed().as_secs_f64())
}

pub fn print_estimate(config: &StudyConfig, plan: &Plan, layout: &DataLayout) -> Result<()> {
    let vocab = TextTokenizer::load(&layout.tokenizer_json()).map(|t| t.vocab_size()).unwrap_or(LmConfig::preset(&config.model.preset)?.vocab);
    let model = model_config(config, vocab)?;
    let rate = measure_throughput(&model, config.pretrain.batch_size)?;
    let seq = model.seq_len;
    // Fine-tuning and evaluation sizes depend on the data; these are upper-bound style guesses.
    let finetune_positions_per_epoch = config.finetune.max_examples.unwrap_or(20_000) as u64 * seq as u64;
    let eval_positions = 3 * (config.eval.vision_tasks.len() + 4 * config.eval.text_tasks.len()) as u64 * config.eval.max_items_per_task as u64 * seq as u64;
    let text_eval_positions = 3 * (4 * config.eval.text_tasks.len()) as u64 * config.eval.max_items_per_task as u64 * seq as u64;
    println!("model: d_model {} layers {} heads {} seq {} vocab {} ({:.2}M parameters)", model.d_model, model.n_layers, model.n_heads, seq, model.vocab, model.param_count().total as f64 / 1e6);
    println!("measured training throughput here: {rate:.0} positions/s\n");
    println!("{:<48} {:>12} {:>10}", "node", "positions", "est. time");
    let mut total = 0.0;
    for node in &plan.nodes {
        let positions = match &node.kind {
            NodeKind::ImageCorpus => 0,
            NodeKind::Pretrain => steps_for(config.pretrain.tokens, config.pretrain.batch_size, seq) * (config.pretrain.batch_size * seq) as u64,
            NodeKind::Cooldown { .. } => steps_for(config.cooldown.tokens, config.cooldown.batch_size, seq) * (config.cooldown.batch_size * seq) as u64,
            NodeKind::Finetune { epochs, .. } => *epochs as u64 * finetune_positions_per_epoch,
            // Forward only: about a third of a training step's work.
            NodeKind::Eval { .. } => eval_positions / 3,
            NodeKind::EvalTextBaseline => text_eval_positions / 3,
        };
        let secs = positions as f64 / rate;
        total += secs;
        println!("{:<48} {:>12} {:>9.0}s", node.id, positions, secs);
    }
    println!("\n{} nodes, estimated {:.1} min on this machine (plus one-time image feature caching)", plan.nodes.len(), total / 60.0);
    Ok(())
}
