"""Plain-PyTorch re-implementation of the OpenLM decoder (mlfoundations/open_lm, open_lm/model.py).

Same math and parameter names as OpenLM, without xformers or open_lm installed, so vlmix's Rust
engine can be checked against it. Only the pieces vlmix uses are here: rotary positions, optional
QK-norm, SwiGLU feed-forward, gain-only LayerNorm, LayerNorm with bias or RMSNorm, an optional
post-embedding norm, tied or untied output, and both z-loss and weight-decay rules (vlmix's and
open_lm's: open_lm/losses.py, open_lm/main.py).
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-5
ROPE_BASE = 10000.0


@dataclass
class LmConfig:
    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    norm: str = "gain_only_layer_norm"  # or "rms_norm"
    tied: bool = False
    qk_norm: bool = True
    z_loss: float = 0.0
    post_embed_norm: bool = False
    z_rule: str = "masked"  # or "openlm": z * mean(lse)^2 over all positions (open_lm/losses.py)
    decay: str = "matrices"  # or "openlm": every parameter (open_lm/main.py)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        # OpenLM/LLaMA rule: 8d/3 rounded up to a multiple of 256.
        return 256 * ((int(2 * 4 * self.d_model / 3) + 256 - 1) // 256)


class GainOnlyLayerNorm(nn.Module):
    """OpenLM's `gain_only_layer_norm`: LayerNorm with a weight and no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, NORM_EPS)


class RmsNorm(nn.Module):
    """OpenLM's `rms_norm` (eps set to 1e-5 as every vlmix norm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "gain_only_layer_norm":
        return GainOnlyLayerNorm(dim)
    if kind == "rms_norm":
        return RmsNorm(dim)
    if kind == "layer_norm":  # open_lm's default_layer_norm: torch.nn.LayerNorm, gain and bias
        return nn.LayerNorm(dim, eps=NORM_EPS)
    raise ValueError(f"unknown norm {kind!r}")


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@functools.lru_cache(maxsize=8)
def rotary_tables(seq: int, head_dim: int, dtype: torch.dtype):
    """cos/sin of pos * 10000^(-2j/head_dim), duplicated over both halves, shaped (1, seq, 1, head_dim).

    Computed in float64 and cached (OpenLM caches them too), then cast to the activations' dtype.
    """
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[None, :, None, :].to(dtype), emb.sin()[None, :, None, :].to(dtype)


def apply_rotary(x):
    """GPT-NeoX rotate-half rotary on x of shape (batch, seq, heads, head_dim), positions 0..seq-1."""
    cos, sin = rotary_tables(x.shape[1], x.shape[3], x.dtype)
    return x * cos + rotate_half(x) * sin


class CustomAttn(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.q_norm = make_norm(cfg.norm, d) if cfg.qk_norm else nn.Identity()
        self.k_norm = make_norm(cfg.norm, d) if cfg.qk_norm else nn.Identity()

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(b, s, self.n_heads, self.head_dim)
        k = k.view(b, s, self.n_heads, self.head_dim)
        v = v.view(b, s, self.n_heads, self.head_dim)
        q, k = apply_rotary(q), apply_rotary(k)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(d, 2 * hidden, bias=False)
        self.w3 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.attention_norm = make_norm(cfg.norm, cfg.d_model)
        self.attention = CustomAttn(cfg)
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model)
        self.feed_forward = SwiGLU(cfg.d_model, cfg.ffn_hidden)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab, cfg.d_model)
        if cfg.post_embed_norm:
            self.post_embed_norm = make_norm(cfg.norm, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model)
        if not cfg.tied:
            self.output = nn.Linear(cfg.d_model, cfg.vocab, bias=False)

    def forward(self, input_ids):
        x = self.tok_embeddings(input_ids)
        if self.cfg.post_embed_norm:
            x = self.post_embed_norm(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        weight = self.tok_embeddings.weight if self.cfg.tied else self.output.weight
        return F.linear(x, weight)

    def decayed_parameter_names(self):
        """Names AdamW decays: every one under open_lm's rule, else matrices except the input embedding."""
        if self.cfg.decay == "openlm":
            return [n for n, _ in self.named_parameters()]
        return [n for n, p in self.named_parameters() if p.ndim >= 2 and not n.startswith("tok_embeddings")]


def trunc_normal_(t: torch.Tensor, std: float, gen: torch.Generator):
    """OpenLM's init: normal(0, std) truncated to +-3 std (resampled by inverse CDF, seeded)."""
    with torch.no_grad():
        lo, hi = 0.5 * (1 + math.erf(-3 / math.sqrt(2))), 0.5 * (1 + math.erf(3 / math.sqrt(2)))
        u = torch.rand(t.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
        t.copy_((torch.special.ndtri(u) * std).to(t.dtype))


def openlm_init_(model: Transformer, gen: torch.Generator, norm_gain_noise: float = 0.0):
    """OpenLM's initialisation (trunc-normal 1/sqrt(fan_in), depth-scaled output projections).

    `norm_gain_noise` > 0 sets every norm gain to 1 + noise*randn, so that gradients through the
    gains are exercised by parity tests (OpenLM itself starts gains at 1).
    """
    d = model.cfg.d_model
    std = 1.0 / math.sqrt(d)
    for i, layer in enumerate(model.layers):
        depth = math.sqrt(2 * (i + 1))
        trunc_normal_(layer.attention.in_proj.weight, std, gen)
        trunc_normal_(layer.attention.out_proj.weight, std / depth, gen)
        trunc_normal_(layer.feed_forward.w12.weight, std, gen)
        trunc_normal_(layer.feed_forward.w3.weight, 1.0 / math.sqrt(model.cfg.ffn_hidden) / depth, gen)
    if not model.cfg.tied:
        trunc_normal_(model.output.weight, std, gen)
    trunc_normal_(model.tok_embeddings.weight, std, gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                base = 0.0 if name.endswith(".bias") else 1.0  # norm biases start at 0, gains at 1
                p.copy_((base + norm_gain_noise * noise).to(p.dtype))


def masked_lm_loss(logits, targets, loss_mask, z_loss: float, z_rule: str = "masked"):
    """`masked`: sum_t mask_t * (CE_t + z * lse_t^2) / sum_t mask_t.
    `openlm` (open_lm/losses.py CrossEntropyLossWithZLoss): masked mean of CE_t + z * mean_t(lse_t)^2,
    the mean over every position, masked ones included."""
    logits = logits.reshape(-1, logits.shape[-1])
    lse = torch.logsumexp(logits, dim=-1)
    ce = lse - logits.gather(1, targets.reshape(-1, 1)).squeeze(1)
    mask = loss_mask.reshape(-1).to(logits.dtype)
    if z_rule == "openlm":
        return (ce * mask).sum() / mask.sum() + z_loss * lse.mean().pow(2)
    per_token = ce + z_loss * lse.pow(2)
    return (per_token * mask).sum() / mask.sum()
