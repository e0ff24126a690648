"""PyTorch twin of `vlmix bench score`: multiple-choice scoring, whole rows against a KV cache.

Workload (same shapes as vlmix's, random ids and random OpenLM-init weights): `--items` items, each a
prompt of `--prefix` tokens and `--choices` answers of `--choice-len` tokens; an answer's score is
the sum of its tokens' log-probabilities after the prompt. Model: the mini study's (`cpu-small` with
4 heads and seq_len 128: vocab 8192, d 128, 4 layers, gain-only LayerNorm, QK-norm, untied).

Two methods, both at most 64 rows a forward pass (vlmix's evaluator limit), only scored positions
projected to the vocabulary:
  full:   one row per answer, prompt + answer (what lm-evaluation-harness runs), batched;
  cached: 64 prompts a pass, keeping every layer's rotated keys and values (a hand-written
          past_key_values); their last logits score each answer's first token, then the rest of each
          answer runs as rows attending to its prompt's keys and values, 64 rows a pass.

Eager float32 under `torch.inference_mode()`, `torch.set_num_threads(2)`. FLOP count as vlmix's:
PaLM's forward, 2 N per position (N = block parameters) + 4 L d per key attended + 2 V d per scored
position. One untimed item through each method first.

Prints one JSON line on stdout (the fields of `vlmix bench score --json`); `--json PATH` also writes it.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_train import cpu_name, write_atomically
from openlm import LmConfig, Transformer, openlm_init_, rotary_tables, rotate_half

ROWS = 64
# vlmix presets (crates/models/src/lm/config.rs) before the --n-heads / --seq-len overrides.
PRESETS = {
    "cpu-small": dict(vocab=8192, d_model=128, n_layers=4),
    "reference": dict(vocab=8192, d_model=256, n_layers=4),
}


def rotary(x, offset: int):
    """Rotary positions offset..offset+seq-1 on x of shape (batch, seq, heads, head_dim)."""
    cos, sin = rotary_tables(offset + x.shape[1], x.shape[3], x.dtype)
    cos, sin = cos[:, offset:], sin[:, offset:]
    return x * cos + rotate_half(x) * sin


def block(layer, x, past=None):
    """One block over x (batch, seq, d) continuing `past` = (keys, values) of the positions before
    (batch, heads, len, head_dim), or from position 0; returns the output and this call's keys/values."""
    attn = layer.attention
    b, s, _ = x.shape
    q, k, v = attn.in_proj(layer.attention_norm(x)).chunk(3, dim=-1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    offset = 0 if past is None else past[0].shape[2]
    q = rotary(q.view(b, s, attn.n_heads, attn.head_dim), offset).transpose(1, 2)
    k = rotary(k.view(b, s, attn.n_heads, attn.head_dim), offset).transpose(1, 2)
    v = v.view(b, s, attn.n_heads, attn.head_dim).transpose(1, 2)
    if past is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        keys, values = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        mask = torch.ones(s, offset + s, dtype=torch.bool).tril(offset)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    h = x + attn.out_proj(out.transpose(1, 2).reshape(b, s, -1))
    return h + layer.feed_forward(layer.ffn_norm(h)), (k, v)


def log_probs(model, hidden, positions, targets):
    """log p(targets) at flat `positions` of hidden (batch, seq, d), float64."""
    x = model.norm(hidden.reshape(-1, hidden.shape[-1])[positions])
    logits = F.linear(x, model.output.weight)
    return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1).double()


def forward_flops(cfg: LmConfig, n_blocks: int, start: int, end: int, scored: int) -> float:
    keys = sum(range(start + 1, end + 1))
    return 2.0 * n_blocks * (end - start) + 4.0 * cfg.n_layers * cfg.d_model * keys + 2.0 * cfg.vocab * cfg.d_model * scored


class Work:
    def __init__(self):
        self.positions, self.passes, self.flops = 0, 0, 0.0


def score_full(model, cfg, n_blocks, prompts, answers, items):
    """prompts (N, P), answers (N, K, C); scores (len(items) * K,) of whole rows, ROWS rows a pass."""
    _, k_choices, c = answers.shape
    p = prompts.shape[1]
    rows = [(i, k) for i in items for k in range(k_choices)]
    scores, work = [], Work()
    for start in range(0, len(rows), ROWS):
        part = rows[start:start + ROWS]
        idx = torch.tensor([i for i, _ in part])
        ans = answers[idx, torch.tensor([k for _, k in part])]
        tokens = torch.cat([prompts[idx], ans[:, :c - 1]], dim=1)
        x = model.tok_embeddings(tokens)
        for layer in model.layers:
            x = layer(x)
        seq = tokens.shape[1]
        positions = (torch.arange(len(part))[:, None] * seq + p - 1 + torch.arange(c)).reshape(-1)
        scores.append(log_probs(model, x, positions, ans.reshape(-1)).view(len(part), c).sum(1))
        work.positions += len(part) * seq
        work.passes += 1
        work.flops += len(part) * forward_flops(cfg, n_blocks, 0, seq, c)
    return torch.cat(scores), work


def score_cached(model, cfg, n_blocks, prompts, answers, items):
    """As score_full, by prompts run once into per-layer keys/values and answers continuing them."""
    _, k_choices, c = answers.shape
    p = prompts.shape[1]
    scores, work = [], Work()
    for start in range(0, len(items), ROWS):
        group = torch.tensor(items[start:start + ROWS])
        x, caches = model.tok_embeddings(prompts[group]), []
        for layer in model.layers:
            x, kv = block(layer, x, None)
            caches.append(kv)
        first = torch.arange(len(group)) * p + p - 1
        x_last = model.norm(x.reshape(-1, x.shape[-1])[first])
        lp = F.linear(x_last, model.output.weight).log_softmax(-1).double()
        group_scores = lp.gather(1, answers[group, :, 0]).reshape(-1)  # item-major, like rows below
        work.positions += len(group) * p
        work.passes += 1
        work.flops += len(group) * forward_flops(cfg, n_blocks, 0, p, 1)
        if c > 1:
            rows = [(r, k) for r in range(len(group)) for k in range(k_choices)]
            rest = []
            for s in range(0, len(rows), ROWS):
                part = rows[s:s + ROWS]
                r_idx = torch.tensor([r for r, _ in part])
                ans = answers[group[r_idx], torch.tensor([k for _, k in part])]
                x = model.tok_embeddings(ans[:, :c - 1])
                for layer, (keys, values) in zip(model.layers, caches):
                    x, _ = block(layer, x, (keys.index_select(0, r_idx), values.index_select(0, r_idx)))
                positions = torch.arange(len(part) * (c - 1))
                rest.append(log_probs(model, x, positions, ans[:, 1:].reshape(-1)).view(len(part), c - 1).sum(1))
                work.positions += len(part) * (c - 1)
                work.passes += 1
                work.flops += len(part) * forward_flops(cfg, n_blocks, p, p + c - 1, c - 1)
            group_scores = group_scores + torch.cat(rest)
        scores.append(group_scores)
    return torch.cat(scores), work


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--n-heads", type=int, default=4, help="attention heads (the mini study's 4)")
    ap.add_argument("--seq-len", type=int, default=128, help="context length (the mini study's 128)")
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--prefix", type=int, default=64, help="prompt tokens per item")
    ap.add_argument("--choices", type=int, default=10, help="answers per item")
    ap.add_argument("--choice-len", type=int, default=3, help="tokens per answer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the result JSON here")
    args = ap.parse_args()
    if min(args.items, args.prefix, args.choices, args.choice_len) < 1:
        ap.error("items, prefix, choices and choice length must all be at least 1")
    if args.prefix + args.choice_len - 1 > args.seq_len:
        ap.error(f"a prompt of {args.prefix} tokens and answers of {args.choice_len} do not fit seq_len {args.seq_len}")

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    cfg = LmConfig(n_heads=args.n_heads, seq_len=args.seq_len, norm="gain_only_layer_norm", tied=False,
                   qk_norm=True, z_loss=1e-4, **PRESETS[args.model])
    model = Transformer(cfg)
    openlm_init_(model, gen)
    model.eval()
    n_blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("layers.", "norm.")))
    prompts = torch.randint(0, cfg.vocab, (args.items, args.prefix), generator=gen)
    answers = torch.randint(0, cfg.vocab, (args.items, args.choices, args.choice_len), generator=gen)

    def timed(method):
        start = time.perf_counter()
        scores, work = method(model, cfg, n_blocks, prompts, answers, list(range(args.items)))
        seconds = time.perf_counter() - start
        return scores, {
            "items_per_s": args.items / seconds,
            "positions_per_s": work.positions / seconds,
            "positions": work.positions,
            "passes": work.passes,
            "seconds": seconds,
            "gflops": work.flops / seconds / 1e9,
        }

    with torch.inference_mode():
        score_full(model, cfg, n_blocks, prompts, answers, [0])
        score_cached(model, cfg, n_blocks, prompts, answers, [0])
        full_scores, full = timed(score_full)
        cached_scores, cached = timed(score_cached)
    result = {
        "engine": "pytorch",
        "model": f"{args.model} (n_heads {args.n_heads}, seq_len {args.seq_len})",
        "items": args.items,
        "prefix": args.prefix,
        "choices": args.choices,
        "choice_len": args.choice_len,
        "rows_per_pass": ROWS,
        "full": full,
        "cached": cached,
        "speedup": cached["items_per_s"] / full["items_per_s"],
        "max_score_diff": float((full_scores - cached_scores).abs().max()),
        "flops_formula": "PaLM forward: 2*N_blocks per position + 4*L*d per key attended + 2*V*d per scored position",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "device": "cpu",
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        write_atomically(args.json, line + "\n")


if __name__ == "__main__":
    main()
