//! The OpenLM decoder: forward, backward and scoring over the engine's layers.
//!
//! The token embedding (optionally normed: `post_embed_norm`), pre-norm blocks
//! `h = x + attn(norm(x)); x' = h + swiglu(norm(h))`, a final norm and the output projection (or the
//! tied embedding). Parameters live in a caller-owned `ParamStore` so
//! a VLM can keep the LM, projector and encoder in one store with one optimizer and checkpoint.

use super::config::LmConfig;
use super::init::Initializer;
use super::input::LmInput;
use super::layers::LmLayers;
use super::weights::{register, BlockIds, LmParamIds, NormIds};
use super::workspace::Workspace;
use crate::memory::{ensure_available, TrainShape};
use anyhow::{bail, Context, Result};
use vlmix_engine::layers::{
    AttentionGrads, AttentionParams, LinearGrads, LinearParams, NormGrads, NormParams, SwiGluGrads, SwiGluParams,
};
use vlmix_engine::params::{Grads, ParamStore, Values};
use vlmix_engine::{Cpu, Device, LossStats};

pub struct Lm {
    config: LmConfig,
    dev: Cpu,
    layers: LmLayers,
    ids: LmParamIds,
    work: Option<Workspace>,
}

fn norm_params(v: Values<'_>, n: NormIds) -> NormParams<'_, Cpu> {
    NormParams { weight: v.get(n.weight), bias: n.bias.map(|b| v.get(b)) }
}

fn norm_grads<'a>(g: &'a mut Grads<'_>, n: NormIds) -> NormGrads<'a, Cpu> {
    match n.bias {
        Some(bias) => {
            let [weight, bias] = g.get_many_mut([n.weight, bias]);
            NormGrads { weight, bias: Some(bias) }
        }
        None => NormGrads { weight: g.get_mut(n.weight), bias: None },
    }
}

fn attention_params<'a>(v: Values<'a>, b: &BlockIds) -> AttentionParams<'a, Cpu> {
    AttentionParams {
        in_proj: LinearParams { weight: v.get(b.in_proj), bias: None },
        q_norm: b.q_norm.map(|n| norm_params(v, n)),
        k_norm: b.k_norm.map(|n| norm_params(v, n)),
        out_proj: LinearParams { weight: v.get(b.out_proj), bias: None },
    }
}

fn attention_grads<'a>(g: &'a mut Grads<'_>, b: &BlockIds) -> AttentionGrads<'a, Cpu> {
    let linear = |weight| LinearGrads { weight, bias: None };
    match (b.q_norm, b.k_norm) {
        (Some(NormIds { weight: qw, bias: Some(qb) }), Some(NormIds { weight: kw, bias: Some(kb) })) => {
            let [in_proj, qw, qb, kw, kb, out_proj] = g.get_many_mut([b.in_proj, qw, qb, kw, kb, b.out_proj]);
            let (q_norm, k_norm) = (NormGrads { weight: qw, bias: Some(qb) }, NormGrads { weight: kw, bias: Some(kb) });
            AttentionGrads {
                in_proj: linear(in_proj),
                q_norm: Some(q_norm),
                k_norm: Some(k_norm),
                out_proj: linear(out_proj),
            }
        }
        (Some(q), Some(k)) => {
            let [in_proj, q_norm, k_norm, out_proj] = g.get_many_mut([b.in_proj, q.weight, k.weight, b.out_proj]);
            let norm = |weight| NormGrads { weight, bias: None };
            AttentionGrads {
                in_proj: linear(in_proj),
                q_norm: Some(norm(q_norm)),
                k_norm: Some(norm(k_norm)),
                out_proj: linear(out_proj),
            }
        }
        _ => {
            let [in_proj, out_proj] = g.get_many_mut([b.in_proj, b.out_proj]);
            AttentionGrads { in_proj: linear(in_proj), q_norm: None, k_norm: None, out_proj: linear(out_proj) }
        }
    }
}

impl Lm {
    /// Registers a freshly initialised LM (OpenLM init, seeded) in `params`.
    pub fn new(config: LmConfig, params: &mut ParamStore, seed: u64) -> Result<Self> {
        config.validate()?;
        let dev = Cpu::new()?;
        let ids = register(&config, params, &mut Initializer::new(seed))?;
        Ok(Self { layers: LmLayers::new(&config), config, dev, ids, work: None })
    }

    pub fn config(&self) -> &LmConfig {
        &self.config
    }

    pub fn param_ids(&self) -> &LmParamIds {
        &self.ids
    }

    /// Allocates activations for batches up to `batch x seq` now (otherwise the first call does),
    /// after checking the machine has the memory (an error with the numbers, not an abort).
    pub fn reserve(&mut self, batch: usize, seq: usize) -> Result<()> {
        if !self.work.as_ref().is_some_and(|w| w.fits(batch, seq)) {
            let (b, s) = match &self.work {
                Some(w) => (w.max_batch.max(batch), w.max_seq.max(seq)),
                None => (batch, seq),
            };
            self.work = None;
            let parts = TrainShape::text(self.config.clone()).lm_activation_parts(b, s);
            let bytes = parts.iter().fold(0u64, |a, p| a.saturating_add(p.bytes));
            ensure_available(&format!("the LM's activations for batch {b} x seq {s}"), bytes)?;
            self.work = Some(Workspace::new(&self.dev, &self.config, &self.layers, b, s));
        }
        Ok(())
    }

    /// Frees the activation buffers (they are re-allocated by the next call).
    pub fn release_workspace(&mut self) {
        self.work = None;
    }

    /// Forward pass up to the logits (left in the workspace): of every position, or with
    /// `last_only` of each sequence's last position (`[batch, vocab]`, for generation).
    fn forward(&mut self, params: &ParamStore, input: &LmInput, last_only: bool) -> Result<()> {
        input.validate(self.config.d_model, self.config.seq_len)?;
        self.reserve(input.batch, input.seq)?;
        let (dev, layers, ids) = (&self.dev, &self.layers, &self.ids);
        let ws = self.work.as_mut().expect("reserved above");
        let (rows, d) = (input.rows(), self.config.d_model);
        let n = rows * d;
        let v = params.values();

        // Token embeddings (image rows injected), through the post-embedding norm when there is one.
        let embedded = match ids.post_embed_norm {
            Some(_) => &mut ws.embedded[..n],
            None => &mut ws.residual[0][..n],
        };
        layers.embedding.forward(dev, v.get(ids.tok_embeddings), input.tokens, embedded)?;
        if let Some(inj) = &input.injected {
            for (i, &row) in inj.rows.iter().enumerate() {
                embedded[row * d..(row + 1) * d].copy_from_slice(&inj.values[i * d..(i + 1) * d]);
            }
        }
        if let Some(post) = ids.post_embed_norm {
            layers.norm.forward(
                dev,
                &norm_params(v, post),
                &ws.embedded[..n],
                &mut ws.post_embed_norm,
                &mut ws.residual[0][..n],
            );
        }
        for (l, b) in ids.blocks.iter().enumerate() {
            let (before, after) = ws.residual.split_at_mut(l + 1);
            let (x, x_next) = (&before[l][..n], &mut after[0][..n]);
            let acts = &mut ws.blocks[l];
            let branch = &mut ws.d_branch[..n];
            let h = &mut acts.h[..n];
            layers.norm.forward(
                dev,
                &norm_params(v, b.attention_norm),
                x,
                &mut acts.attention_norm,
                &mut acts.attention_norm_out[..n],
            );
            layers.attention.forward(
                dev,
                &attention_params(v, b),
                &acts.attention_norm_out[..n],
                input.batch,
                input.seq,
                &mut acts.attention,
                branch,
            );
            dev.add(x, branch, h);
            layers.norm.forward(dev, &norm_params(v, b.ffn_norm), h, &mut acts.ffn_norm, &mut acts.ffn_norm_out[..n]);
            let ffn = SwiGluParams { w12: v.get(b.w12), w3: v.get(b.w3) };
            layers.feed_forward.forward(dev, &ffn, &acts.ffn_norm_out[..n], &mut acts.feed_forward, branch);
            dev.add(h, branch, x_next);
        }
        let last = &ws.residual[ids.blocks.len()][..n];
        layers.norm.forward(dev, &norm_params(v, ids.norm), last, &mut ws.final_norm, &mut ws.final_norm_out[..n]);
        let output = LinearParams { weight: v.get(ids.output_weight()), bias: None };
        if last_only {
            // The rows before each sequence's last are not needed: compact the last rows first.
            for b in 0..input.batch {
                let last_row = (b + 1) * input.seq - 1;
                ws.final_norm_out.copy_within(last_row * d..(last_row + 1) * d, b * d);
            }
            let nd = input.batch * d;
            layers.output.forward(
                dev,
                &output,
                &ws.final_norm_out[..nd],
                &mut ws.logits[..input.batch * self.config.vocab],
            );
        } else {
            layers.output.forward(dev, &output, &ws.final_norm_out[..n], &mut ws.logits[..rows * self.config.vocab]);
        }
        Ok(())
    }

    /// One forward and backward pass: returns the masked loss and *adds* `grad_scale * dloss/dp`
    /// to every parameter gradient (use `grad_scale = 1/k` to average k accumulated micro-batches).
    ///
    /// With injected embeddings, `injected_grad` (`[injected rows, d_model]`) receives
    /// `grad_scale * dloss/d(embedding)` (overwritten, not accumulated).
    pub fn forward_backward(
        &mut self,
        params: &mut ParamStore,
        input: &LmInput,
        targets: &[u32],
        loss_mask: &[f32],
        grad_scale: f32,
        injected_grad: Option<&mut [f32]>,
    ) -> Result<LossStats> {
        let injected_rows = input.injected.map_or(0, |i| i.rows.len());
        match &injected_grad {
            Some(g) if g.len() != injected_rows * self.config.d_model => {
                bail!("injected_grad has {} values, expected {injected_rows} rows x {}", g.len(), self.config.d_model)
            }
            None if injected_rows > 0 => bail!("injected embeddings need an injected_grad buffer for their gradient"),
            _ => {}
        }
        self.forward(params, input, false)?;
        let (dev, layers, ids) = (&self.dev, &self.layers, &self.ids);
        let ws = self.work.as_mut().expect("forward reserved it");
        let (rows, d, vocab) = (input.rows(), self.config.d_model, self.config.vocab);
        let n = rows * d;
        let logits = &mut ws.logits[..rows * vocab];
        let stats = layers.loss.forward_backward(dev, logits, targets, loss_mask, grad_scale, &mut ws.nll[..rows])?;

        let (v, mut g) = params.split();
        let d_residual = &mut ws.d_residual[..n];
        let d_norm = &mut ws.d_norm[..n];
        let d_branch = &mut ws.d_branch[..n];
        let output = LinearParams { weight: v.get(ids.output_weight()), bias: None };
        let mut output_grad = LinearGrads { weight: g.get_mut(ids.output_weight()), bias: None };
        layers.output.backward(
            dev,
            &output,
            &ws.final_norm_out[..n],
            &ws.logits[..rows * vocab],
            Some(&mut *d_norm),
            &mut output_grad,
        );
        let last = &ws.residual[ids.blocks.len()][..n];
        layers.norm.backward(
            dev,
            &norm_params(v, ids.norm),
            last,
            &ws.final_norm,
            d_norm,
            d_residual,
            &mut norm_grads(&mut g, ids.norm),
        );

        for (l, b) in ids.blocks.iter().enumerate().rev() {
            let acts = &ws.blocks[l];
            let ffn = SwiGluParams { w12: v.get(b.w12), w3: v.get(b.w3) };
            let [w12, w3] = g.get_many_mut([b.w12, b.w3]);
            let mut ffn_grad = SwiGluGrads { w12, w3 };
            layers.feed_forward.backward(
                dev,
                &ffn,
                &acts.ffn_norm_out[..n],
                &acts.feed_forward,
                d_residual,
                d_norm,
                &mut ffn_grad,
                &mut ws.ffn_scratch,
            );
            layers.norm.backward(
                dev,
                &norm_params(v, b.ffn_norm),
                &acts.h[..n],
                &acts.ffn_norm,
                d_norm,
                d_branch,
                &mut norm_grads(&mut g, b.ffn_norm),
            );
            dev.add_assign(d_residual, d_branch);

            let mut attn_grad = attention_grads(&mut g, b);
            layers.attention.backward(
                dev,
                &attention_params(v, b),
                &acts.attention_norm_out[..n],
                input.batch,
                input.seq,
                &acts.attention,
                d_residual,
                d_norm,
                &mut attn_grad,
                &mut ws.attention_scratch,
            );
            layers.norm.backward(
                dev,
                &norm_params(v, b.attention_norm),
                &ws.residual[l][..n],
                &acts.attention_norm,
                d_norm,
                d_branch,
                &mut norm_grads(&mut g, b.attention_norm),
            );
            dev.add_assign(d_residual, d_branch);
        }

        // Back through the post-embedding norm: the embeddings' gradient lands in d_branch.
        let d_embedded = match ids.post_embed_norm {
            Some(post) => {
                layers.norm.backward(
                    dev,
                    &norm_params(v, post),
                    &ws.embedded[..n],
                    &ws.post_embed_norm,
                    d_residual,
                    d_branch,
                    &mut norm_grads(&mut g, post),
                );
                d_branch
            }
            None => d_residual,
        };
        if let (Some(inj), Some(out)) = (&input.injected, injected_grad) {
            for (i, &row) in inj.rows.iter().enumerate() {
                let src = &mut d_embedded[row * d..(row + 1) * d];
                out[i * d..(i + 1) * d].copy_from_slice(src);
                // Injected positions have no token: nothing may flow into the embedding table.
                src.fill(0.0);
            }
        }
        layers.embedding.backward(dev, input.tokens, d_embedded, g.get_mut(ids.tok_embeddings));
        Ok(stats)
    }

    /// The masked loss without gradients (validation).
    pub fn loss(
        &mut self,
        params: &ParamStore,
        input: &LmInput,
        targets: &[u32],
        loss_mask: &[f32],
    ) -> Result<LossStats> {
        self.forward(params, input, false)?;
        let ws = self.work.as_mut().expect("forward reserved it");
        let rows = input.rows();
        self.layers.loss.forward(
            &self.dev,
            &mut ws.logits[..rows * self.config.vocab],
            targets,
            loss_mask,
            &mut ws.nll[..rows],
        )
    }

    /// `-log p(targets[r] | prefix)` at every position `r` (`[batch * seq]`): what evaluation
    /// sums over continuation tokens to score choices.
    pub fn token_nll(&mut self, params: &ParamStore, input: &LmInput, targets: &[u32]) -> Result<&[f32]> {
        let mask = vec![1.0f32; input.rows()];
        self.loss(params, input, targets, &mask).context("scoring tokens")?;
        Ok(&self.work.as_ref().expect("forward reserved it").nll[..input.rows()])
    }

    /// Logits `[batch * seq, vocab]` of every position.
    pub fn logits(&mut self, params: &ParamStore, input: &LmInput) -> Result<&[f32]> {
        self.forward(params, input, false)?;
        Ok(&self.work.as_ref().expect("forward reserved it").logits[..input.rows() * self.config.vocab])
    }

    /// Logits `[batch, vocab]` of each sequence's last position only: what greedy or sampled
    /// generation needs, without the output projection of every other position.
    pub fn next_token_logits(&mut self, params: &ParamStore, input: &LmInput) -> Result<&[f32]> {
        self.forward(params, input, true)?;
        Ok(&self.work.as_ref().expect("forward reserved it").logits[..input.batch * self.config.vocab])
    }
}
