"""Check the LM fixtures against FIXTURES.md with an independent numpy forward (no torch, no autograd).

Guards the documentation that the Rust side is written from: split order, QK-norm placement, rotary
layout, causal mask, SwiGLU halves, tied output and the masked z-loss.

Usage: python reference/check_lm_fixtures.py [--fixtures crates/models/tests/fixtures]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def forward(c, W, inputs):
    d, heads, t, eps = c["d_model"], c["n_heads"], c["seq_len"], c["norm_eps"]
    dh, hidden = d // heads, c["ffn_hidden"]

    def norm(x, w):
        if c["norm"] == "rms_norm":
            return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * w
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w

    inv = c["rope_base"] ** (-2 * np.arange(dh // 2) / dh)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):
        rotated = np.concatenate([-x[..., dh // 2:], x[..., : dh // 2]], -1)
        return x * cos[None, :, None] + rotated * sin[None, :, None]

    x = W["tok_embeddings.weight"][inputs]
    b = x.shape[0]
    causal = np.tril(np.ones((t, t), dtype=bool))
    for i in range(c["n_layers"]):
        p = f"layers.{i}."
        qkv = norm(x, W[p + "attention_norm.weight"]) @ W[p + "attention.in_proj.weight"].T
        q = norm(qkv[..., :d], W[p + "attention.q_norm.weight"]).reshape(b, t, heads, dh)
        k = norm(qkv[..., d: 2 * d], W[p + "attention.k_norm.weight"]).reshape(b, t, heads, dh)
        v = qkv[..., 2 * d:].reshape(b, t, heads, dh)
        s = np.einsum("bqhd,bkhd->bhqk", rope(q), rope(k)) / np.sqrt(dh)
        s = np.where(causal[None, None], s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, t, d) @ W[p + "attention.out_proj.weight"].T
        g = norm(x, W[p + "ffn_norm.weight"]) @ W[p + "feed_forward.w12.weight"].T
        gate, up = g[..., :hidden], g[..., hidden:]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ W[p + "feed_forward.w3.weight"].T
    out = W["tok_embeddings.weight"] if c["tied"] else W["output.weight"]
    return norm(x, W["norm.weight"]) @ out.T


def masked_loss(c, logits, targets, mask):
    top = logits.max(-1)
    lse = np.log(np.exp(logits - top[..., None]).sum(-1)) + top
    ce = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return (mask * (ce + c["z_loss"] * lse**2)).sum() / mask.sum()


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=root / "crates/models/tests/fixtures")
    args = ap.parse_args()
    for case in sorted(args.fixtures.glob("lm_parity_*")):
        c = json.loads((case / "config.json").read_text())
        W = {k: v.astype(np.float64) for k, v in load_file(case / "init.safetensors").items()}
        batch, ref = load_file(case / "batch.safetensors"), load_file(case / "forward.safetensors")
        logits = forward(c, W, batch["inputs"])
        loss = masked_loss(c, logits, batch["targets"], batch["loss_mask"].astype(np.float64))
        rel = np.abs(logits - ref["logits"]).max() / np.abs(ref["logits"]).max()
        loss_rel = abs(loss - float(ref["loss"])) / abs(float(ref["loss"]))
        print(f"{case.name}: logits max rel {rel:.1e}, loss rel {loss_rel:.1e}")
        if rel > 1e-6 or loss_rel > 1e-6:
            raise SystemExit(f"{case.name}: fixture disagrees with the documented semantics")


if __name__ == "__main__":
    main()
