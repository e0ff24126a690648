//! Multi-head self-attention as OpenLM's `CustomAttn` computes it, plus a ViT mode.
//!
//! OpenLM: `in_proj` (rows q, k, v) -> `q_norm`/`k_norm` over the full width (before the head
//! split) -> rotary embeddings (GPT-NeoX rotate-half, base 10000) -> causal softmax attention with
//! scale `1/sqrt(head_dim)` -> `out_proj`. ViT (SigLIP): biases on both projections, no QK-norm,
//! no rotary, non-causal.
//!
//! The three projections of `in_proj` run as three products into separate q, k, v buffers so each
//! is contiguous for the norm and attention kernels; the weight is still one `[3*inner, width]`
//! tensor, as OpenLM stores it.

use super::linear::{Linear, LinearGrads, LinearParams};
use super::norm::{Norm, NormActs, NormGrads, NormKind, NormParams};
use super::{rows_of, BufLen, Role};
use crate::{AttnShape, Device, Gemm, SavedAttention};

/// Rotary base used by OpenLM (and GPT-NeoX).
pub const ROPE_BASE: f32 = 10_000.0;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    /// Model width: rows of the input and output.
    pub width: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub rotary: bool,
    /// Norm applied to q and k over `heads * head_dim` before the head split (OpenLM's QK-norm).
    pub qk_norm: Option<NormKind>,
    pub norm_eps: f32,
    /// Biases on `in_proj` and `out_proj` (ViTs have them, OpenLM does not).
    pub bias: bool,
}

pub struct AttentionParams<'a, D: Device> {
    /// Weight `[3*inner, width]` (rows: q, k, v), bias `[3*inner]`.
    pub in_proj: LinearParams<'a, D>,
    /// `[inner]` gains (and biases for `LayerNormBias`), present exactly when `qk_norm` is set.
    pub q_norm: Option<NormParams<'a, D>>,
    pub k_norm: Option<NormParams<'a, D>>,
    /// Weight `[width, inner]`, bias `[width]`.
    pub out_proj: LinearParams<'a, D>,
}

pub struct AttentionGrads<'a, D: Device> {
    pub in_proj: LinearGrads<'a, D>,
    pub q_norm: Option<NormGrads<'a, D>>,
    pub k_norm: Option<NormGrads<'a, D>>,
    pub out_proj: LinearGrads<'a, D>,
}

/// What forward saves for backward. Allocate with [`Attention::acts`].
pub struct AttentionActs<D: Device> {
    /// q and k straight out of `in_proj` (inputs of the QK-norm; empty without it).
    q_raw: D::Owned,
    k_raw: D::Owned,
    /// q, k after norm and rotary; v as projected. `[rows, inner]`.
    q: D::Owned,
    k: D::Owned,
    v: D::Owned,
    q_norm: NormActs<D>,
    k_norm: NormActs<D>,
    /// What the device's attention keeps for the backward ([`Device::attention_saved_len`]:
    /// probabilities on the CPU, log-sum-exps under flash attention).
    saved: D::Owned,
    /// Attention output before `out_proj`, `[rows, inner]` (also the flash backward's `out`).
    att: D::Owned,
    /// Rotary table `[max_seq, head_dim]`: cos of the `head_dim/2` frequencies, then their sin.
    rope: D::Owned,
    max_seq: usize,
}

/// Keys and values (after QK-norm and rotary, `[len, inner]`) of a sequence's first `len`
/// positions, kept so rows continuing it skip recomputing them (a prefix cache for scoring many
/// answers to one prompt, and for decoding).
pub struct CachedKv<D: Device> {
    pub k: D::Owned,
    pub v: D::Owned,
    pub len: usize,
}

/// Backward temporaries; one can serve every attention layer of the same shape.
pub struct AttentionScratch<D: Device> {
    datt: D::Owned,
    dq: D::Owned,
    dk: D::Owned,
    dv: D::Owned,
}

impl Attention {
    /// OpenLM's attention: causal, rotary, QK-norm of the model's norm kind, no biases.
    pub fn openlm(width: usize, heads: usize, norm: NormKind, norm_eps: f32) -> Self {
        assert!(heads > 0 && width.is_multiple_of(heads), "attention: width {width} is not divisible by {heads} heads");
        Attention {
            width,
            heads,
            head_dim: width / heads,
            causal: true,
            rotary: true,
            qk_norm: Some(norm),
            norm_eps,
            bias: false,
        }
    }

    /// A ViT encoder's attention: non-causal, biases, no rotary, no QK-norm.
    pub fn vit(width: usize, heads: usize) -> Self {
        assert!(heads > 0 && width.is_multiple_of(heads), "attention: width {width} is not divisible by {heads} heads");
        Attention {
            width,
            heads,
            head_dim: width / heads,
            causal: false,
            rotary: false,
            qk_norm: None,
            norm_eps: 0.0,
            bias: true,
        }
    }

    /// `heads * head_dim`.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn in_proj(&self) -> Linear {
        Linear { in_dim: self.width, out_dim: 3 * self.inner(), bias: self.bias }
    }

    pub fn out_proj(&self) -> Linear {
        Linear { in_dim: self.inner(), out_dim: self.width, bias: self.bias }
    }

    /// The QK-norm layer, if any (width `inner`).
    pub fn qk_norm(&self) -> Option<Norm> {
        self.qk_norm.map(|kind| Norm { kind, width: self.inner(), eps: self.norm_eps })
    }

    fn shape(&self, batch: usize, seq: usize) -> AttnShape {
        AttnShape { batch, seq, heads: self.heads, head_dim: self.head_dim, causal: self.causal }
    }

    /// The buffers [`acts`](Self::acts) allocates on a device whose attention saves `saved`
    /// ([`crate::DeviceMemory::saved_attention`]): q_raw, k_raw, q, k, v, the QK-norms' mean and
    /// rstd, saved, att, the rotary table.
    pub fn acts_lens(&self, saved: SavedAttention, max_batch: usize, max_seq: usize) -> [BufLen; 12] {
        let rows = max_batch * max_seq;
        let n = rows * self.inner();
        let norm_len = if self.qk_norm.is_some() { n } else { 0 };
        let norm_rows = if self.qk_norm.is_some() { rows } else { 0 };
        // The QK-norms' statistics: what `Norm::acts` allocates for `norm_rows` rows (any kind).
        let norm = Norm { kind: NormKind::LayerNorm, width: self.inner(), eps: self.norm_eps };
        let ([q_mean, q_rstd], [k_mean, k_rstd]) = (norm.acts_lens(norm_rows), norm.acts_lens(norm_rows));
        [
            BufLen::saved(norm_len),
            BufLen::saved(norm_len),
            BufLen::saved(n),
            BufLen::saved(n),
            BufLen::saved(n),
            q_mean,
            q_rstd,
            k_mean,
            k_rstd,
            BufLen { role: Role::SavedAttention, len: saved.len(self.shape(max_batch, max_seq)) },
            BufLen::saved(n),
            BufLen::saved(max_seq * self.head_dim),
        ]
    }

    pub fn acts<D: Device>(&self, dev: &D, max_batch: usize, max_seq: usize) -> AttentionActs<D> {
        let lens = self.acts_lens(dev.memory().saved_attention, max_batch, max_seq);
        let [q_raw, k_raw, q, k, v, q_mean, q_rstd, k_mean, k_rstd, saved, att] =
            std::array::from_fn(|i| dev.zeros(lens[i].len));
        let rope_rows = lens[11].len / self.head_dim;
        AttentionActs {
            q_raw,
            k_raw,
            q,
            k,
            v,
            q_norm: NormActs { mean: q_mean, rstd: q_rstd },
            k_norm: NormActs { mean: k_mean, rstd: k_rstd },
            saved,
            att,
            rope: dev.upload(&rope_table(rope_rows, &rope_inv_freq(self.head_dim))),
            max_seq,
        }
    }

    /// The buffers [`scratch`](Self::scratch) allocates: datt, dq, dk, dv.
    pub fn scratch_lens(&self, max_rows: usize) -> [BufLen; 4] {
        [BufLen::scratch(max_rows * self.inner()); 4]
    }

    pub fn scratch<D: Device>(&self, dev: &D, max_rows: usize) -> AttentionScratch<D> {
        let [datt, dq, dk, dv] = self.scratch_lens(max_rows).map(|b| dev.zeros(b.len));
        AttentionScratch { datt, dq, dk, dv }
    }

    /// `x`, `y`: `[batch*seq, width]`, sequences contiguous.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<D: Device>(
        &self,
        dev: &D,
        p: &AttentionParams<D>,
        x: &D::Buf,
        batch: usize,
        seq: usize,
        acts: &mut AttentionActs<D>,
        y: &mut D::Buf,
    ) {
        let rows = rows_of(dev, x, self.width, "attention");
        assert_eq!(rows, batch * seq, "attention: {rows} rows are not batch {batch} x seq {seq}");
        assert!(seq <= acts.max_seq && rows * self.inner() <= dev.len(&acts.q), "attention: acts too small");
        let inner = self.inner();
        let n = rows * inner;
        let shape = self.shape(batch, seq);
        let project = |j: usize, out: &mut D::Buf| self.project(dev, p, x, rows, j, out);
        let q = dev.slice_mut(&mut acts.q, 0..n);
        let k = dev.slice_mut(&mut acts.k, 0..n);
        match self.qk_norm() {
            Some(norm) => {
                let (qn, kn) = (
                    p.q_norm.as_ref().expect("attention: q_norm params"),
                    p.k_norm.as_ref().expect("attention: k_norm params"),
                );
                let q_raw = dev.slice_mut(&mut acts.q_raw, 0..n);
                project(0, q_raw);
                norm.forward(dev, qn, q_raw, &mut acts.q_norm, q);
                let k_raw = dev.slice_mut(&mut acts.k_raw, 0..n);
                project(1, k_raw);
                norm.forward(dev, kn, k_raw, &mut acts.k_norm, k);
            }
            None => {
                assert!(p.q_norm.is_none() && p.k_norm.is_none(), "attention: q/k norm params given without qk_norm");
                project(0, q);
                project(1, k);
            }
        }
        let v = dev.slice_mut(&mut acts.v, 0..n);
        project(2, v);
        if self.rotary {
            dev.rope(q, &acts.rope, shape, false);
            dev.rope(k, &acts.rope, shape, false);
        }
        let saved = dev.slice_mut(&mut acts.saved, 0..dev.attention_saved_len(shape));
        let att = dev.slice_mut(&mut acts.att, 0..n);
        dev.attention_forward(shape, q, k, v, saved, att);
        self.out_proj().forward(dev, &p.out_proj, att, y);
    }

    /// `out = x in_proj[j]^T (+ bias[j])` for `rows` rows: part `j` of the input projection (0 q,
    /// 1 k, 2 v), each into its own contiguous buffer.
    fn project<D: Device>(&self, dev: &D, p: &AttentionParams<D>, x: &D::Buf, rows: usize, j: usize, out: &mut D::Buf) {
        let (inner, width) = (self.inner(), self.width);
        assert_eq!(p.in_proj.bias.is_some(), self.bias, "attention: in_proj bias given iff the layer has biases");
        assert_eq!(dev.len(p.in_proj.weight), 3 * inner * width, "attention: in_proj weight is not [3*inner, width]");
        let w = dev.slice(p.in_proj.weight, j * inner * width..(j + 1) * inner * width);
        dev.gemm(Gemm::new(false, true, rows, inner, width), x, w, out);
        if let Some(b) = p.in_proj.bias {
            dev.add_bias(out, dev.slice(b, j * inner..(j + 1) * inner));
        }
    }

    /// Keys and values of `row`'s first `len` positions, as the last [`forward`](Self::forward) over
    /// `seq`-position rows left them (after QK-norm and rotary): what continuations of that row
    /// attend to ([`forward_continuing`](Self::forward_continuing)).
    pub fn cached_kv<D: Device>(
        &self,
        dev: &D,
        acts: &AttentionActs<D>,
        seq: usize,
        row: usize,
        len: usize,
    ) -> CachedKv<D> {
        assert!(len <= seq, "attention: a cached prefix of {len} positions is longer than its rows of {seq}");
        let rows: Vec<usize> = (row * seq..row * seq + len).collect();
        let take = |from: &D::Owned| {
            let mut kept = dev.zeros(len * self.inner());
            dev.gather_rows(from, &rows, &mut kept);
            kept
        };
        CachedKv { k: take(&acts.k), v: take(&acts.v), len }
    }

    /// Forward only, for rows that continue cached prefixes: row `r` of `x` (`[rows * cont,
    /// width]`) holds positions `prefixes[r].len ..` of a sequence whose earlier keys and values are
    /// `prefixes[r]`. Only the continuation positions are projected and attend (to the prefix keys
    /// copied in before them), so a continuation sees exactly what a forward over the whole
    /// sequence shows it. `acts` must fit `rows x (longest prefix + cont)`; nothing is saved for a
    /// backward.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_continuing<D: Device>(
        &self,
        dev: &D,
        p: &AttentionParams<D>,
        x: &D::Buf,
        prefixes: &[&CachedKv<D>],
        cont: usize,
        acts: &mut AttentionActs<D>,
        y: &mut D::Buf,
    ) {
        assert!(self.causal, "attention: only causal rows continue a prefix");
        let (inner, width) = (self.inner(), self.width);
        let n_rows = prefixes.len();
        assert_eq!(rows_of(dev, x, width, "attention"), n_rows * cont, "attention: x is not rows x cont");
        let seq = prefixes.iter().map(|c| c.len).max().unwrap_or(0) + cont;
        let shape = self.shape(n_rows, seq);
        assert!(seq <= acts.max_seq && shape.rows() * inner <= dev.len(&acts.q), "attention: acts too small");
        // Continuation positions, each at its prefix's length onwards; the rest of a row is padding
        // after every query of interest, which the causal mask hides.
        let starts: Vec<usize> = prefixes.iter().map(|c| c.len).collect();
        let at = shape.continuation_rows(&starts, cont);
        let project = |j: usize| {
            let mut out = dev.zeros(at.len() * inner);
            self.project(dev, p, x, at.len(), j, &mut out);
            out
        };
        let n = shape.rows() * inner;
        let (q, k, v) =
            (dev.slice_mut(&mut acts.q, 0..n), dev.slice_mut(&mut acts.k, 0..n), dev.slice_mut(&mut acts.v, 0..n));
        for (j, full, norm) in [(0, &mut *q, p.q_norm.as_ref()), (1, &mut *k, p.k_norm.as_ref())] {
            let mut projected = project(j);
            if let (Some(layer), Some(params)) = (self.qk_norm(), norm) {
                let mut normed = dev.zeros(at.len() * inner);
                let mut stats = layer.acts(dev, at.len());
                layer.forward(dev, params, &projected, &mut stats, &mut normed);
                projected = normed;
            }
            dev.fill(&mut *full, 0.0);
            dev.scatter_rows(&projected, &at, &mut *full);
        }
        if self.rotary {
            dev.rope(q, &acts.rope, shape, false);
            dev.rope(k, &acts.rope, shape, false);
        }
        dev.fill(&mut *v, 0.0);
        dev.scatter_rows(&project(2), &at, &mut *v);
        for (r, cached) in prefixes.iter().enumerate() {
            let rows: Vec<usize> = (r * seq..r * seq + cached.len).collect();
            dev.scatter_rows(&cached.k, &rows, &mut *k);
            dev.scatter_rows(&cached.v, &rows, &mut *v);
        }
        let mut continued = dev.zeros(at.len() * inner);
        dev.attention_continuing(shape, &starts, cont, q, k, v, &mut continued);
        self.out_proj().forward(dev, &p.out_proj, &continued, y);
    }

    /// Writes `dx`; accumulates every parameter gradient in `g`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<D: Device>(
        &self,
        dev: &D,
        p: &AttentionParams<D>,
        x: &D::Buf,
        batch: usize,
        seq: usize,
        acts: &AttentionActs<D>,
        dy: &D::Buf,
        dx: &mut D::Buf,
        g: &mut AttentionGrads<D>,
        scratch: &mut AttentionScratch<D>,
    ) {
        let rows = rows_of(dev, x, self.width, "attention backward");
        assert_eq!(rows, batch * seq, "attention backward: {rows} rows are not batch {batch} x seq {seq}");
        let (inner, width) = (self.inner(), self.width);
        let n = rows * inner;
        let shape = self.shape(batch, seq);
        let att = dev.slice(&acts.att, 0..n);
        let datt = dev.slice_mut(&mut scratch.datt, 0..n);
        self.out_proj().backward(dev, &p.out_proj, att, dy, Some(&mut *datt), &mut g.out_proj);

        let (q, k, v) = (dev.slice(&acts.q, 0..n), dev.slice(&acts.k, 0..n), dev.slice(&acts.v, 0..n));
        let dq = dev.slice_mut(&mut scratch.dq, 0..n);
        let dk = dev.slice_mut(&mut scratch.dk, 0..n);
        let dv = dev.slice_mut(&mut scratch.dv, 0..n);
        let saved = dev.slice(&acts.saved, 0..dev.attention_saved_len(shape));
        dev.attention_backward(shape, q, k, v, att, saved, datt, dq, dk, dv);
        if self.rotary {
            dev.rope(dq, &acts.rope, shape, true);
            dev.rope(dk, &acts.rope, shape, true);
        }

        // Back through in_proj, one third at a time: dx = sum_j dproj_j W_j; dW_j += dproj_j^T x.
        let project_back = |j: usize, dproj: &D::Buf, g: &mut LinearGrads<D>, dx: &mut D::Buf| {
            let w = dev.slice(p.in_proj.weight, j * inner * width..(j + 1) * inner * width);
            let gemm = Gemm::new(false, false, rows, width, inner);
            dev.gemm(if j == 0 { gemm } else { gemm.accumulate() }, dproj, w, dx);
            let dw = dev.slice_mut(g.weight, j * inner * width..(j + 1) * inner * width);
            dev.gemm(Gemm::new(true, false, inner, width, rows).accumulate(), dproj, x, dw);
            if let Some(db) = g.bias.as_deref_mut() {
                dev.bias_backward(dproj, dev.slice_mut(db, j * inner..(j + 1) * inner));
            }
        };
        match self.qk_norm() {
            Some(norm) => {
                let (qn, kn) = (
                    p.q_norm.as_ref().expect("attention: q_norm params"),
                    p.k_norm.as_ref().expect("attention: k_norm params"),
                );
                let q_raw = dev.slice(&acts.q_raw, 0..n);
                norm.backward(
                    dev,
                    qn,
                    q_raw,
                    &acts.q_norm,
                    dq,
                    datt,
                    g.q_norm.as_mut().expect("attention: q_norm grads"),
                );
                project_back(0, datt, &mut g.in_proj, dx);
                let k_raw = dev.slice(&acts.k_raw, 0..n);
                norm.backward(
                    dev,
                    kn,
                    k_raw,
                    &acts.k_norm,
                    dk,
                    datt,
                    g.k_norm.as_mut().expect("attention: k_norm grads"),
                );
                project_back(1, datt, &mut g.in_proj, dx);
            }
            None => {
                project_back(0, dq, &mut g.in_proj, dx);
                project_back(1, dk, &mut g.in_proj, dx);
            }
        }
        project_back(2, dv, &mut g.in_proj, dx);
    }
}

/// Rotary inverse frequencies `ROPE_BASE^(-2j/head_dim)` for j < head_dim/2, computed as PyTorch
/// does (in f32): what open_lm stores in every `attention.pos_embed.inv_freq` buffer.
pub fn rope_inv_freq(head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / ROPE_BASE.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Rotary table `[seq, head_dim]` of `inv_freq` (f32 angles, as PyTorch computes them).
fn rope_table(seq: usize, inv_freq: &[f32]) -> Vec<f32> {
    let (half, head_dim) = (inv_freq.len(), 2 * inv_freq.len());
    let mut table = vec![0.0f32; seq * head_dim];
    for pos in 0..seq {
        for (i, &f) in inv_freq.iter().enumerate() {
            let angle = pos as f32 * f;
            table[pos * head_dim + i] = (angle as f64).cos() as f32;
            table[pos * head_dim + half + i] = (angle as f64).sin() as f32;
        }
    }
    table
}

impl<D: Device> AttentionActs<D> {
    /// Rotates by `inv_freq` (`head_dim / 2` values) instead of the exact frequencies: a model
    /// trained with rounded ones (open_lm under FSDP bf16 buffers) keeps its own.
    pub fn set_rope_inv_freq(&mut self, dev: &D, inv_freq: &[f32]) {
        let head_dim = 2 * inv_freq.len();
        let len = dev.len(&self.rope);
        assert!(
            head_dim > 0 && len.is_multiple_of(head_dim),
            "attention: rotary table of {len} values is not rows of head_dim {head_dim}"
        );
        self.rope = dev.upload(&rope_table(len / head_dim, inv_freq));
    }
}
