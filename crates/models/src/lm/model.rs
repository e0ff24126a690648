//! The OpenLM decoder: forward, backward and scoring over the engine's layers.
//!
//! Pre-norm blocks `h = x + attn(norm(x)); x' = h + swiglu(norm(h))`, a final norm and the
//! output projection (or the tied embedding). Parameters live in a caller-owned `ParamStore` so
//! a VLM can keep the LM, projector and encoder in one store with one optimizer and checkpoint.

use super::config::LmConfig;
use super::init::Initializer;
use super::input::LmInput;
use super::layers::LmLayers;
use super::weights::{register, BlockIds, LmParamIds};
use super::workspace::Workspace;
use anyhow::{bail, Context, Result};
use vlmix_engine::layers::{AttentionGrads, AttentionParams, LinearGrads, LinearParams, NormGrads, NormParams, SwiGluGrads, SwiGluParams};
use vlmix_engine::params::{Grads, ParamId, ParamStore, Values};
use vlmix_engine::{Cpu, Device, LossStats};

pub struct Lm {
    config: LmConfig,
    dev: Cpu,
    layers: LmLayers,
    ids: LmParamIds,
    work: Option<Workspace>,
}

fn norm_params(v: Values<'_>, id: ParamId) -> NormParams<'_, Cpu> {
    NormParams { weight: v.get(id), bias: None }
}

fn attention_params<'a>(v: Values<'a>, b: &BlockIds) -> AttentionParams<'a, Cpu> {
    AttentionParams {
        in_proj: LinearParams { weight: v.get(b.in_proj), bias: None },
        q_norm: b.q_norm.map(|id| norm_params(v, id)),
        k_norm: b.k_norm.map(|id| norm_params(v, id)),
        out_proj: LinearParams { weight: v.get(b.out_proj), bias: None },
    }
}

fn attention_grads<'a>(g: &'a mut Grads<'_>, b: &BlockIds) -> AttentionGrads<'a, Cpu> {
    let linear = |weight| LinearGrads { weight, bias: None };
    let norm = |weight| NormGrads { weight, bias: None };
    match (b.q_norm, b.k_norm) {
        (Some(q), Some(k)) => {
            let [in_proj, q_norm, k_norm, out_proj] = g.get_many_mut([b.in_proj, q, k, b.out_proj]);
            AttentionGrads { in_proj: linear(in_proj), q_norm: Some(norm(q_norm)), k_norm: Some(norm(k_norm)), out_proj: linear(out_proj) }
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

    /// Allocates activations for batches up to `batch x seq` now (otherwise the first call does).
    pub fn reserve(&mut self, batch: usize, seq: usize) {
        if !self.work.as_ref().is_some_and(|w| w.fits(batch, seq)) {
            let (b, s) = match &self.work {
                Some(w) => (w.max_batch.max(batch), w.max_seq.max(seq)),
                None => (batch, seq),
            };
            self.work = None;
            self.work = Some(Workspace::new(&self.dev, &self.config, &self.layers, b, s));
        }
    }

    /// Frees the activation buffers (they are re-allocated by the next call).
    pub fn release_workspace(&mut self) {
        self.work = None;
    }

    /// Forward pass up to the logits (left in the workspace): of every position, or with
    /// `last_only` of each sequence's last position (`[batch, vocab]`, for generation).
    fn forward(&mut self, params: &ParamStore, input: &LmInput, last_only: bool) -> Result<()> {
        input.validate(self.config.d_model, self.config.seq_len)?;
        self.reserve(input.batch, input.seq);
        let (dev, layers, ids) = (&self.dev, &self.layers, &self.ids);
        let ws = self.work.as_mut().expect("reserved above");
        let (rows, d) = (input.rows(), self.config.d_model);
        let n = rows * d;
        let v = params.values();

        let x0 = &mut ws.residual[0][..n];
        layers.embedding.forward(dev, v.get(ids.tok_embeddings), input.tokens, x0)?;
        if let Some(inj) = &input.injected {
            for (i, &row) in inj.rows.iter().enumerate() {
                x0[row * d..(row + 1) * d].copy_from_slice(&inj.values[i * d..(i + 1) * d]);
            }
        }
        for (l, b) in ids.blocks.iter().enumerate() {
            let (before, after) = ws.residual.split_at_mut(l + 1);
            let (x, x_next) = (&before[l][..n], &mut after[0][..n]);
            let acts = &mut ws.blocks[l];
            let branch = &mut ws.d_branch[..n];
            let h = &mut acts.h[..n];
            layers.norm.forward(dev, &norm_params(v, b.attention_norm), x, &mut acts.attention_norm, &mut acts.attention_norm_out[..n]);
            layers.attention.forward(dev, &attention_params(v, b), &acts.attention_norm_out[..n], input.batch, input.seq, &mut acts.attention, branch);
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
            layers.output.forward(dev, &output, &ws.final_norm_out[..nd], &mut ws.logits[..input.batch * self.config.vocab]);
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
        layers.output.backward(dev, &output, &ws.final_norm_out[..n], &ws.logits[..rows * vocab], Some(&mut *d_norm), &mut output_grad);
        let last = &ws.residual[ids.blocks.len()][..n];
        let mut norm_grad = NormGrads { weight: g.get_mut(ids.norm), bias: None };
        layers.norm.backward(dev, &norm_params(v, ids.norm), last, &ws.final_norm, d_norm, d_residual, &mut norm_grad);

        for (l, b) in ids.blocks.iter().enumerate().rev() {
            let acts = &ws.blocks[l];
            let ffn = SwiGluParams { w12: v.get(b.w12), w3: v.get(b.w3) };
            let [w12, w3] = g.get_many_mut([b.w12, b.w3]);
            let mut ffn_grad = SwiGluGrads { w12, w3 };
            layers.feed_forward.backward(dev, &ffn, &acts.ffn_norm_out[..n], &acts.feed_forward, d_residual, d_norm, &mut ffn_grad, &mut ws.ffn_scratch);
            let mut norm_grad = NormGrads { weight: g.get_mut(b.ffn_norm), bias: None };
            layers.norm.backward(dev, &norm_params(v, b.ffn_norm), &acts.h[..n], &acts.ffn_norm, d_norm, d_branch, &mut norm_grad);
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
            let mut norm_grad = NormGrads { weight: g.get_mut(b.attention_norm), bias: None };
            layers.norm.backward(dev, &norm_params(v, b.attention_norm), &ws.residual[l][..n], &acts.attention_norm, d_norm, d_branch, &mut norm_grad);
            dev.add_assign(d_residual, d_branch);
        }

        if let (Some(inj), Some(out)) = (&input.injected, injected_grad) {
            for (i, &row) in inj.rows.iter().enumerate() {
                let src = &mut d_residual[row * d..(row + 1) * d];
                out[i * d..(i + 1) * d].copy_from_slice(src);
                // Injected positions have no token: nothing may flow into the embedding table.
                src.fill(0.0);
            }
        }
        layers.embedding.backward(dev, input.tokens, d_residual, g.get_mut(ids.tok_embeddings));
        Ok(stats)
    }

    /// The masked loss without gradients (validation).
    pub fn loss(&mut self, params: &ParamStore, input: &LmInput, targets: &[u32], loss_mask: &[f32]) -> Result<LossStats> {
        self.forward(params, input, false)?;
        let ws = self.work.as_mut().expect("forward reserved it");
        let rows = input.rows();
        self.layers.loss.forward(&self.dev, &mut ws.logits[..rows * self.config.vocab], targets, loss_mask, &mut ws.nll[..rows])
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
