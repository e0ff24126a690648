//! The OpenLM decoder: forward, backward and scoring over the engine's layers.
//!
//! The token embedding (optionally normed: `post_embed_norm`), pre-norm blocks
//! `h = x + attn(norm(x)); x' = h + swiglu(norm(h))`, a final norm and the output projection (or the
//! tied embedding). Parameters live in a caller-owned `ParamStore` so
//! a VLM can keep the LM, projector and encoder in one store with one optimizer and checkpoint.

use super::config::{LmConfig, ZLossRule};
use super::init::Initializer;
use super::input::LmInput;
use super::layers::LmLayers;
use super::weights::{register, BlockIds, LmParamIds, NormIds};
use super::workspace::{activation_lens, Workspace};
use anyhow::{bail, Context, Result};
use std::borrow::Cow;
use vlmix_engine::device::ensure_available;
use vlmix_engine::layers::{
    AttentionGrads, AttentionParams, CachedKv, LinearGrads, LinearParams, NormGrads, NormParams, SwiGluGrads,
    SwiGluParams,
};
use vlmix_engine::params::{Grads, ParamStore, Values};
use vlmix_engine::{Cpu, Device, LossStats};

/// Per layer, the keys and values of one sequence's first `len` positions ([`Lm::prefix_caches`]).
pub struct PrefixCache<D: Device = Cpu> {
    layers: Vec<CachedKv<D>>,
    len: usize,
}

impl<D: Device> PrefixCache<D> {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct Lm<D: Device = Cpu> {
    config: LmConfig,
    dev: D,
    layers: LmLayers,
    ids: LmParamIds,
    work: Option<Workspace<D>>,
}

fn norm_params<D: Device>(v: Values<'_, D>, n: NormIds) -> NormParams<'_, D> {
    NormParams { weight: v.get(n.weight), bias: n.bias.map(|b| v.get(b)) }
}

fn norm_grads<'a, D: Device>(g: &'a mut Grads<'_, D>, n: NormIds) -> NormGrads<'a, D> {
    match n.bias {
        Some(bias) => {
            let [weight, bias] = g.get_many_mut([n.weight, bias]);
            NormGrads { weight, bias: Some(bias) }
        }
        None => NormGrads { weight: g.get_mut(n.weight), bias: None },
    }
}

fn attention_params<'a, D: Device>(v: Values<'a, D>, b: &BlockIds) -> AttentionParams<'a, D> {
    AttentionParams {
        in_proj: LinearParams { weight: v.get(b.in_proj), bias: None },
        q_norm: b.q_norm.map(|n| norm_params(v, n)),
        k_norm: b.k_norm.map(|n| norm_params(v, n)),
        out_proj: LinearParams { weight: v.get(b.out_proj), bias: None },
    }
}

fn attention_grads<'a, D: Device>(g: &'a mut Grads<'_, D>, b: &BlockIds) -> AttentionGrads<'a, D> {
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

impl<D: Device> Lm<D> {
    /// Registers a freshly initialised LM (OpenLM init, seeded) in `params`; it computes on the
    /// store's device.
    pub fn new(config: LmConfig, params: &mut ParamStore<D>, seed: u64) -> Result<Self> {
        config.validate()?;
        let dev = params.device().clone();
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
            let lens = activation_lens(&self.config, self.dev.memory().saved_attention, b, s);
            let bytes = lens.iter().fold(0u64, |a, l| a.saturating_add(4 * l.len as u64));
            ensure_available(&self.dev, &format!("the LM's activations for batch {b} x seq {s}"), bytes)?;
            self.work = Some(Workspace::new(&self.dev, &self.config, &self.layers, b, s));
        }
        Ok(())
    }

    /// Forward pass up to the logits (left in the workspace): of every position, or with
    /// `output_rows` of those rows only (`[output_rows.len(), vocab]`): a sequence's last for
    /// generation, the scored continuation positions for ranking.
    ///
    /// With `continuing`, row `r` of `input` continues the sequence cached in `continuing[r]`: only
    /// its own positions run, their attention reading the cached keys and values.
    fn forward(
        &mut self,
        params: &ParamStore<D>,
        input: &LmInput<D>,
        continuing: Option<&[&PrefixCache<D>]>,
        output_rows: Option<&[usize]>,
    ) -> Result<()> {
        input.validate(&self.dev, self.config.d_model, self.config.seq_len)?;
        let attended = match continuing {
            None => input.seq,
            Some(prefixes) => {
                let longest = prefixes.iter().map(|c| c.len).max().unwrap_or(0);
                anyhow::ensure!(
                    prefixes.len() == input.batch && input.injected.is_none(),
                    "{} cached prefixes for {} continuation rows (continuations carry no injected rows)",
                    prefixes.len(),
                    input.batch
                );
                // Rows are padded to the widest continuation; only the positions read out must lie
                // inside the window (padding past it is computed and dropped).
                let outside = output_rows.unwrap_or_default().iter().find(|&&at| {
                    at / input.seq.max(1) >= prefixes.len()
                        || prefixes[at / input.seq].len + at % input.seq >= self.config.seq_len
                });
                if let Some(at) = outside {
                    bail!("continuation position {at} lies past its row or past the window of {}", self.config.seq_len);
                }
                longest + input.seq
            }
        };
        self.reserve(input.batch, attended)?;
        let (dev, layers, ids) = (&self.dev, &self.layers, &self.ids);
        let ws = self.work.as_mut().expect("reserved above");
        let (rows, d) = (input.rows(), self.config.d_model);
        let n = rows * d;
        let v = params.values();

        // Token embeddings (image rows injected), through the post-embedding norm when there is one.
        let embedded = match ids.post_embed_norm {
            Some(_) => dev.slice_mut(&mut ws.embedded, 0..n),
            None => dev.slice_mut(&mut ws.residual[0], 0..n),
        };
        layers.embedding.forward(dev, v.get(ids.tok_embeddings), input.tokens, &mut *embedded)?;
        if let Some(inj) = &input.injected {
            dev.scatter_rows(inj.values, inj.rows, embedded);
        }
        if let Some(post) = ids.post_embed_norm {
            layers.norm.forward(
                dev,
                &norm_params(v, post),
                dev.slice(&ws.embedded, 0..n),
                &mut ws.post_embed_norm,
                dev.slice_mut(&mut ws.residual[0], 0..n),
            );
        }
        for (l, b) in ids.blocks.iter().enumerate() {
            let (before, after) = ws.residual.split_at_mut(l + 1);
            let (x, x_next) = (dev.slice(&before[l], 0..n), dev.slice_mut(&mut after[0], 0..n));
            let acts = &mut ws.blocks[l];
            let branch = dev.slice_mut(&mut ws.d_branch, 0..n);
            let h = dev.slice_mut(&mut acts.h, 0..n);
            layers.norm.forward(
                dev,
                &norm_params(v, b.attention_norm),
                x,
                &mut acts.attention_norm,
                dev.slice_mut(&mut acts.attention_norm_out, 0..n),
            );
            let normed = dev.slice(&acts.attention_norm_out, 0..n);
            match continuing {
                None => layers.attention.forward(
                    dev,
                    &attention_params(v, b),
                    normed,
                    input.batch,
                    input.seq,
                    &mut acts.attention,
                    &mut *branch,
                ),
                Some(prefixes) => {
                    let cached: Vec<&CachedKv<D>> = prefixes.iter().map(|c| &c.layers[l]).collect();
                    let p = attention_params(v, b);
                    layers.attention.forward_continuing(
                        dev,
                        &p,
                        normed,
                        &cached,
                        input.seq,
                        &mut acts.attention,
                        branch,
                    );
                }
            }
            dev.add(x, branch, &mut *h);
            let ffn_norm_out = dev.slice_mut(&mut acts.ffn_norm_out, 0..n);
            layers.norm.forward(dev, &norm_params(v, b.ffn_norm), h, &mut acts.ffn_norm, &mut *ffn_norm_out);
            let ffn = SwiGluParams { w12: v.get(b.w12), w3: v.get(b.w3) };
            layers.feed_forward.forward(dev, &ffn, ffn_norm_out, &mut acts.feed_forward, &mut *branch);
            dev.add(h, branch, x_next);
        }
        let last = dev.slice(&ws.residual[ids.blocks.len()], 0..n);
        let final_norm_out = dev.slice_mut(&mut ws.final_norm_out, 0..n);
        layers.norm.forward(dev, &norm_params(v, ids.norm), last, &mut ws.final_norm, &mut *final_norm_out);
        let output = LinearParams { weight: v.get(ids.output_weight()), bias: None };
        if let Some(picked) = output_rows {
            // Only the picked rows are projected; they are gathered into `d_branch`, the blocks'
            // scratch, free from here until the backward's blocks.
            anyhow::ensure!(picked.iter().all(|&r| r < rows), "an output row lies outside the {rows} positions");
            let gathered = dev.slice_mut(&mut ws.d_branch, 0..picked.len() * d);
            dev.gather_rows(final_norm_out, picked, &mut *gathered);
            layers.output.forward(
                dev,
                &output,
                gathered,
                dev.slice_mut(&mut ws.logits, 0..picked.len() * self.config.vocab),
            );
        } else {
            layers.output.forward(
                dev,
                &output,
                final_norm_out,
                dev.slice_mut(&mut ws.logits, 0..rows * self.config.vocab),
            );
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
        params: &mut ParamStore<D>,
        input: &LmInput<D>,
        targets: &[u32],
        loss_mask: &[f32],
        grad_scale: f32,
        injected_grad: Option<&mut D::Buf>,
    ) -> Result<LossStats> {
        let injected_rows = input.injected.map_or(0, |i| i.rows.len());
        match &injected_grad {
            Some(g) if self.dev.len(g) != injected_rows * self.config.d_model => {
                bail!(
                    "injected_grad has {} values, expected {injected_rows} rows x {}",
                    self.dev.len(g),
                    self.config.d_model
                )
            }
            None if injected_rows > 0 => bail!("injected embeddings need an injected_grad buffer for their gradient"),
            _ => {}
        }
        // Rows the loss leaves out (image tokens, prompts, padding: a third to most of a cooldown's
        // or fine-tune's rows) get neither loss nor gradient, so only the others are projected to the
        // vocabulary, the largest product of a small model. Exact unless the z-loss covers every row.
        let rows = input.rows();
        let exact = self.config.z_loss_rule == ZLossRule::Masked || self.config.z_loss == 0.0;
        let picked = if exact && loss_mask.len() == rows && targets.len() == rows {
            let kept: Vec<usize> = (0..rows).filter(|&r| loss_mask[r] != 0.0).collect();
            (!kept.is_empty() && kept.len() < rows).then_some(kept)
        } else {
            None
        };
        self.forward(params, input, None, picked.as_deref())?;
        let (dev, layers, ids) = (&self.dev, &self.layers, &self.ids);
        let ws = self.work.as_mut().expect("forward reserved it");
        let (d, vocab) = (self.config.d_model, self.config.vocab);
        let n = rows * d;
        let (targets, loss_mask): (Cow<[u32]>, Cow<[f32]>) = match &picked {
            Some(kept) => (kept.iter().map(|&r| targets[r]).collect(), kept.iter().map(|&r| loss_mask[r]).collect()),
            None => (Cow::Borrowed(targets), Cow::Borrowed(loss_mask)),
        };
        let projected = picked.as_ref().map_or(rows, Vec::len);
        let logits = dev.slice_mut(&mut ws.logits, 0..projected * vocab);
        let nll = dev.slice_mut(&mut ws.nll, 0..projected);
        let stats = layers.loss.forward_backward(dev, &mut *logits, &targets, &loss_mask, grad_scale, nll)?;

        let (v, mut g) = params.split();
        let d_residual = dev.slice_mut(&mut ws.d_residual, 0..n);
        let d_norm = dev.slice_mut(&mut ws.d_norm, 0..n);
        let d_branch = dev.slice_mut(&mut ws.d_branch, 0..n);
        let output = LinearParams { weight: v.get(ids.output_weight()), bias: None };
        let mut output_grad = LinearGrads { weight: g.get_mut(ids.output_weight()), bias: None };
        match &picked {
            None => layers.output.backward(
                dev,
                &output,
                dev.slice(&ws.final_norm_out, 0..n),
                logits,
                Some(&mut *d_norm),
                &mut output_grad,
            ),
            Some(kept) => {
                // The forward gathered the kept rows' inputs into `d_branch`; their gradient goes
                // through `d_residual` (written only by the norm's backward below) into `d_norm`.
                let k = kept.len() * d;
                let d_kept = dev.slice_mut(d_residual, 0..k);
                layers.output.backward(
                    dev,
                    &output,
                    dev.slice(d_branch, 0..k),
                    logits,
                    Some(&mut *d_kept),
                    &mut output_grad,
                );
                dev.fill(d_norm, 0.0);
                dev.scatter_rows(d_kept, kept, d_norm);
            }
        }
        let last = dev.slice(&ws.residual[ids.blocks.len()], 0..n);
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
                dev.slice(&acts.ffn_norm_out, 0..n),
                &acts.feed_forward,
                d_residual,
                d_norm,
                &mut ffn_grad,
                &mut ws.ffn_scratch,
            );
            layers.norm.backward(
                dev,
                &norm_params(v, b.ffn_norm),
                dev.slice(&acts.h, 0..n),
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
                dev.slice(&acts.attention_norm_out, 0..n),
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
                dev.slice(&ws.residual[l], 0..n),
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
                    dev.slice(&ws.embedded, 0..n),
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
            dev.gather_rows(d_embedded, inj.rows, out);
            // Injected positions have no token: nothing may flow into the embedding table.
            dev.zero_rows(d_embedded, inj.rows, d);
        }
        layers.embedding.backward(dev, input.tokens, d_embedded, g.get_mut(ids.tok_embeddings));
        Ok(stats)
    }

    /// The masked loss without gradients (validation).
    pub fn loss(
        &mut self,
        params: &ParamStore<D>,
        input: &LmInput<D>,
        targets: &[u32],
        loss_mask: &[f32],
    ) -> Result<LossStats> {
        self.forward(params, input, None, None)?;
        let (dev, ws) = (&self.dev, self.work.as_mut().expect("forward reserved it"));
        let rows = input.rows();
        let logits = dev.slice_mut(&mut ws.logits, 0..rows * self.config.vocab);
        self.layers.loss.forward(dev, logits, targets, loss_mask, dev.slice_mut(&mut ws.nll, 0..rows))
    }

    /// `-log p(targets[r] | prefix)` at every position `r` (`[batch * seq]`): what evaluation
    /// sums over continuation tokens to score choices.
    pub fn token_nll(&mut self, params: &ParamStore<D>, input: &LmInput<D>, targets: &[u32]) -> Result<&D::Buf> {
        let mask = vec![1.0f32; input.rows()];
        self.loss(params, input, targets, &mask).context("scoring tokens")?;
        Ok(self.dev.slice(&self.work.as_ref().expect("forward reserved it").nll, 0..input.rows()))
    }

    /// Logits `[batch * seq, vocab]` of every position.
    pub fn logits(&mut self, params: &ParamStore<D>, input: &LmInput<D>) -> Result<&D::Buf> {
        self.forward(params, input, None, None)?;
        Ok(self
            .dev
            .slice(&self.work.as_ref().expect("forward reserved it").logits, 0..input.rows() * self.config.vocab))
    }

    /// Logits `[batch, vocab]` of each sequence's last position only: what greedy or sampled
    /// generation needs, without the output projection of every other position.
    pub fn next_token_logits(&mut self, params: &ParamStore<D>, input: &LmInput<D>) -> Result<&D::Buf> {
        let last_rows: Vec<usize> = (1..=input.batch).map(|b| b * input.seq - 1).collect();
        self.logits_at(params, input, &last_rows)
    }

    /// Logits `[rows.len(), vocab]` of the positions `rows` (indices into `batch * seq`) only: what
    /// ranking continuations needs, at a fraction of the output projection's cost.
    pub fn logits_at(&mut self, params: &ParamStore<D>, input: &LmInput<D>, rows: &[usize]) -> Result<&D::Buf> {
        self.forward(params, input, None, Some(rows))?;
        Ok(self.dev.slice(&self.work.as_ref().expect("forward reserved it").logits, 0..rows.len() * self.config.vocab))
    }

    /// Runs `input` (each row a sequence's first `lens[r]` positions, padded to `input.seq`) and
    /// keeps every row's keys and values for [`logits_continuing`](Self::logits_continuing); the
    /// logits `[rows.len(), vocab]` at positions `rows` are returned beside them.
    pub fn prefix_caches(
        &mut self,
        params: &ParamStore<D>,
        input: &LmInput<D>,
        lens: &[usize],
        rows: &[usize],
    ) -> Result<(Vec<PrefixCache<D>>, &D::Buf)> {
        anyhow::ensure!(
            lens.len() == input.batch && lens.iter().all(|&len| len <= input.seq),
            "prefix lengths {lens:?} do not fit {} rows of {}",
            input.batch,
            input.seq
        );
        self.forward(params, input, None, Some(rows))?;
        let ws = self.work.as_ref().expect("forward reserved it");
        let caches = lens
            .iter()
            .enumerate()
            .map(|(row, &len)| PrefixCache {
                layers: ws
                    .blocks
                    .iter()
                    .map(|b| self.layers.attention.cached_kv(&self.dev, &b.attention, input.seq, row, len))
                    .collect(),
                len,
            })
            .collect();
        Ok((caches, self.dev.slice(&ws.logits, 0..rows.len() * self.config.vocab)))
    }

    /// Logits `[rows.len(), vocab]` at positions `rows` (indices into `batch * seq`) of rows that
    /// continue cached sequences: row `r` of `input` holds the `input.seq` tokens after
    /// `prefixes[r]`. The same logits a forward over each whole sequence gives, without
    /// recomputing the prefix (scoring many answers to one prompt, decoding token by token).
    pub fn logits_continuing(
        &mut self,
        params: &ParamStore<D>,
        input: &LmInput<D>,
        prefixes: &[&PrefixCache<D>],
        rows: &[usize],
    ) -> Result<&D::Buf> {
        self.forward(params, input, Some(prefixes), Some(rows))?;
        Ok(self.dev.slice(&self.work.as_ref().expect("forward reserved it").logits, 0..rows.len() * self.config.vocab))
    }

    /// The device this LM computes on.
    pub fn device(&self) -> &D {
        &self.dev
    }
}
